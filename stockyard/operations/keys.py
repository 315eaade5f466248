"""Client keys and project budgets: create, change, revoke, list — for the CLI and the admin API.

Inputs arrive as text (CLI flags) or JSON values (API) and are validated here, once, into
a 400 that names the field. Money arrives as decimal text (``"10.50"``) and is stored as
integer µ¢; the key itself is returned once by :func:`create_key` and never stored.
Everywhere else, including the audit log, a key is named by its id and prefix.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from typing import Any, Mapping

from ..budgets import PERIODS, period_key, spent_uc
from ..keys import PREFIX_LEN, KeyRecord, hash_key, new_key_id, new_secret
from ..limits import MAX_MONEY_UC, MAX_RATE_LIMIT, whole_number
from ..pricing import format_usd, microcents_from_usd
from ..store import storable
from ..times import FORMAT_HELP, now_iso, parse_utc, to_iso
from . import Operations, conflict, invalid, not_found

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,63}$")
CLEAR = ("", "none", "never", "null")  # how the CLI says "remove this limit"
KEY_FIELDS = ("name", "project", "models", "expires", "budget_usd", "budget_period", "rpm", "tpm")


# -- validation ------------------------------------------------------------------------------


def _clears(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in CLEAR)


def check_name(value: Any, what: str = "name") -> str:
    if not isinstance(value, str) or not _NAME.match(value.strip()):
        raise invalid(
            f"{what} must be 1-64 letters, digits or . _ @ : + - (starting with a letter or digit), got {value!r}", what
        )
    name = value.strip()
    if name.lower().startswith("sk-") or (what == "name" and name.startswith("key_")):
        raise invalid(
            f"{what} may not start with 'sk-'{' or key_' if what == 'name' else ''} "
            "(that looks like a key or a key id)",
            what,
        )
    return name


def check_project(value: Any) -> str | None:
    return None if _clears(value) else check_name(value, "project")


def check_models(value: Any) -> tuple[str, ...] | None:
    """A list, or comma-separated text; empty means any model."""
    if _clears(value):
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(m, str) for m in items):
        raise invalid("models must be a list of model names (or comma-separated text)", "models")
    models = tuple(dict.fromkeys(m.strip() for m in items if m.strip()))
    for m in models:
        # storable: no NUL or lone surrogate (PostgreSQL's text has none, nor has a model's name)
        if len(m) > 200 or any(c.isspace() for c in m) or not storable(m):
            raise invalid(f"model name {m!r} is not valid", "models")
    return models or None


def check_expires(value: Any, now: float | None = None) -> str | None:
    """A date (the key stops working at 00:00 UTC that day) or an ISO time; must be in the future."""
    if _clears(value):
        return None
    try:
        moment = parse_utc(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise invalid(f"expires must be {FORMAT_HELP}, got {value!r}", "expires")
    if moment.timestamp() <= (time.time() if now is None else now):
        raise invalid(f"expires {value!r} is in the past", "expires")
    return to_iso(moment)


def check_budget_usd(value: Any) -> int | None:
    if _clears(value):
        return None
    if type(value) is int:
        value = str(value)
    if not isinstance(value, str):
        raise invalid('budget_usd must be a decimal amount of US dollars as text, like "10.50"', "budget_usd")
    try:
        amount = microcents_from_usd(value)
    except ValueError as exc:
        raise invalid(f"budget: {exc}", "budget_usd") from None
    if amount > MAX_MONEY_UC:
        raise invalid(f"budget_usd must be at most {format_usd(MAX_MONEY_UC, 2)}, got {value!r}", "budget_usd")
    return amount


def check_period(value: Any, what: str = "budget_period") -> str:
    if value not in PERIODS:
        raise invalid(f"{what} must be one of {', '.join(PERIODS)}, got {value!r}", what)
    return value


def check_limit(value: Any, what: str) -> int | None:
    if _clears(value):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    try:
        return whole_number(value, 1, MAX_RATE_LIMIT)
    except ValueError:
        raise invalid(
            f"{what} must be a whole number above 0, at most {MAX_RATE_LIMIT:_} (or 'none' to remove "
            f"the limit), got {value!r}",
            what,
        ) from None


def _budget(
    usd: Any, period: Any, current: tuple[int | None, str | None] = (None, None)
) -> tuple[int | None, str | None]:
    """(budget µ¢, period) from what was given, on top of the key's current values."""
    if usd is _UNSET and period is _UNSET:
        return current
    if usd is not _UNSET and _clears(usd):
        if period is not _UNSET and not _clears(period):
            raise invalid("budget_period given while removing the budget", "budget_period")
        return None, None
    amount = current[0] if usd is _UNSET else check_budget_usd(usd)
    if period is _UNSET or _clears(period):
        if current[1] is None:
            raise invalid("budget_period (day, month or total) is required with a budget", "budget_period")
        return amount, current[1]
    if amount is None:
        raise invalid("budget_usd is required with budget_period", "budget_usd")
    return amount, check_period(period)


_UNSET: Any = object()


# -- reading ---------------------------------------------------------------------------------


def find_key(conn: sqlite3.Connection, ident: str) -> KeyRecord | None:
    """By id (key_…), else the live key of that name, else the newest revoked one."""
    if not isinstance(ident, str) or not ident.strip():
        return None
    ident = ident.strip()
    row = conn.execute(
        "SELECT * FROM client_keys WHERE id = ? OR name = ? "
        "ORDER BY id = ? DESC, revoked_at IS NULL DESC, rowid DESC LIMIT 1",
        (ident, ident, ident),
    ).fetchone()
    return KeyRecord.from_row(row) if row else None


def _require_key(conn: sqlite3.Connection, ident: str) -> KeyRecord:
    record = find_key(conn, ident)
    if record is None:
        raise not_found(f"client key {ident!r}")
    return record


def _spend(conn: sqlite3.Connection, scope: str, period: str | None, now_ms: int) -> dict[str, Any]:
    """Spend in the budget's current period (month to date when there is no budget)."""
    period = period or "month"
    key = period_key(period, now_ms)
    amount = spent_uc(conn, scope, period, key)
    return {"spend_uc": amount, "spend": format_usd(amount, 2), "spend_period": key}


def describe_key(conn: sqlite3.Connection, record: KeyRecord, now_ms: int | None = None) -> dict[str, Any]:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    out = record.public()
    out["budget"] = None if record.budget_uc is None else format_usd(record.budget_uc, 2)
    out.update(_spend(conn, f"key:{record.id}", record.budget_period, now_ms))
    return out


def list_keys(conn: sqlite3.Connection, include_revoked: bool = True) -> list[dict[str, Any]]:
    now_ms = int(time.time() * 1000)
    rows = conn.execute("SELECT * FROM client_keys ORDER BY rowid").fetchall()
    records = [KeyRecord.from_row(r) for r in rows]
    return [describe_key(conn, r, now_ms) for r in records if include_revoked or not r.revoked_at]


def get_key(conn: sqlite3.Connection, ident: str) -> dict[str, Any]:
    return describe_key(conn, _require_key(conn, ident))


# -- changing --------------------------------------------------------------------------------


def _details(record: KeyRecord) -> dict[str, Any]:
    """What the audit log keeps about a key: its id and prefix, never the key."""
    public = record.public()
    return {
        k: public[k]
        for k in ("name", "prefix", "project", "models", "expires_at", "budget_uc", "budget_period", "rpm", "tpm")
    }


def create_key(ops: Operations, fields: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """A new key from ``fields`` (see KEY_FIELDS); returns (its description, the key — shown once)."""
    unknown = set(fields) - set(KEY_FIELDS)
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(sorted(unknown))}; use {', '.join(KEY_FIELDS)}")
    if "name" not in fields:
        raise invalid("name is required", "name")
    budget_uc, period = _budget(fields.get("budget_usd", _UNSET), fields.get("budget_period", _UNSET))
    secret = new_secret()
    record = KeyRecord(
        id=new_key_id(),
        name=check_name(fields["name"]),
        prefix=secret[:PREFIX_LEN],
        hash=hash_key(secret),
        project=check_project(fields.get("project")),
        models=check_models(fields.get("models")),
        expires_at=check_expires(fields.get("expires")),
        budget_uc=budget_uc,
        budget_period=period,
        rpm=check_limit(fields.get("rpm"), "rpm"),
        tpm=check_limit(fields.get("tpm"), "tpm"),
        created_at=now_iso(),
    )

    def apply(conn: sqlite3.Connection) -> dict[str, Any]:
        _refuse_live_name(conn, record.name)
        conn.execute(
            "INSERT INTO client_keys (id, name, prefix, hash, project, models, expires_at, budget_uc, "
            "budget_period, rpm, tpm, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.name,
                record.prefix,
                record.hash,
                record.project,
                json.dumps(list(record.models)) if record.models else None,
                record.expires_at,
                record.budget_uc,
                record.budget_period,
                record.rpm,
                record.tpm,
                record.created_at,
            ),
        )
        return describe_key(
            conn, KeyRecord.from_row(conn.execute("SELECT * FROM client_keys WHERE id = ?", (record.id,)).fetchone())
        )

    described = ops.change("keys.create", f"key:{record.id}", _details(record), apply)
    return described, secret


def _refuse_live_name(conn: sqlite3.Connection, name: str, except_id: str | None = None) -> None:
    row = conn.execute(
        "SELECT id FROM client_keys WHERE name = ? AND revoked_at IS NULL AND id IS NOT ?", (name, except_id)
    ).fetchone()
    if row:
        raise conflict(f"a live key named {name!r} exists already ({row[0]}); pick another name or revoke it")


def update_key(ops: Operations, ident: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Change some of a key's settings; None or 'none' removes a limit."""
    unknown = set(fields) - set(KEY_FIELDS)
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(sorted(unknown))}; use {', '.join(KEY_FIELDS)}")
    if not fields:
        raise invalid("nothing to change: give at least one of " + ", ".join(KEY_FIELDS))
    record = _require_key(ops.store.read(), ident)
    changes: dict[str, Any] = {}
    if "name" in fields:
        changes["name"] = check_name(fields["name"])
    if "project" in fields:
        changes["project"] = check_project(fields["project"])
    if "models" in fields:
        changes["models"] = check_models(fields["models"])
    if "expires" in fields:
        changes["expires_at"] = check_expires(fields["expires"])
    for limit in ("rpm", "tpm"):
        if limit in fields:
            changes[limit] = check_limit(fields[limit], limit)
    if "budget_usd" in fields or "budget_period" in fields:
        changes["budget_uc"], changes["budget_period"] = _budget(
            fields.get("budget_usd", _UNSET),
            fields.get("budget_period", _UNSET),
            (record.budget_uc, record.budget_period),
        )
    columns = {k: (json.dumps(list(v)) if k == "models" and v else v) for k, v in changes.items()}

    def apply(conn: sqlite3.Connection) -> dict[str, Any]:
        current = _require_key(conn, record.id)
        if current.revoked_at:
            raise conflict(f"client key {record.id} is revoked; create a new key instead")
        if (current.budget_uc, current.budget_period) != (record.budget_uc, record.budget_period):
            raise conflict(f"client key {record.id} changed meanwhile; try again")
        if "name" in changes:
            _refuse_live_name(conn, changes["name"], except_id=record.id)
        sets = ", ".join(f"{column} = ?" for column in columns)
        conn.execute(f"UPDATE client_keys SET {sets} WHERE id = ?", (*columns.values(), record.id))
        return describe_key(conn, _require_key(conn, record.id))

    audit_changes = {k: (list(v) if k == "models" and v else v) for k, v in changes.items()}
    return ops.change("keys.update", f"key:{record.id}", {"prefix": record.prefix, "changed": audit_changes}, apply)


def revoke_key(ops: Operations, ident: str) -> dict[str, Any]:
    """Revoke a key for good: the next request with it gets a 401 (the row stays, naming its traces)."""
    record = _require_key(ops.store.read(), ident)

    def apply(conn: sqlite3.Connection) -> dict[str, Any]:
        current = _require_key(conn, record.id)
        if current.revoked_at:
            raise conflict(f"client key {record.id} was revoked already, at {current.revoked_at}")
        conn.execute("UPDATE client_keys SET revoked_at = ? WHERE id = ?", (now_iso(), record.id))
        return describe_key(conn, _require_key(conn, record.id))

    return ops.change("keys.revoke", f"key:{record.id}", {"name": record.name, "prefix": record.prefix}, apply)


# -- project budgets -------------------------------------------------------------------------


def set_project_budget(ops: Operations, project: Any, budget_usd: Any, period: Any) -> dict[str, Any]:
    name = check_name(project, "project")
    if _clears(budget_usd):
        raise invalid("budget_usd is required (to remove a project budget, clear it)", "budget_usd")
    amount = check_budget_usd(budget_usd)
    period = check_period(period, "period")

    def apply(conn: sqlite3.Connection) -> dict[str, Any]:
        conn.execute(
            "INSERT INTO project_budgets (project, budget_uc, period, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (project) DO UPDATE SET budget_uc = excluded.budget_uc, "
            "period = excluded.period, updated_at = excluded.updated_at",
            (name, amount, period, now_iso()),
        )
        return get_project(conn, name)

    return ops.change(
        "projects.budget.set", f"project:{name}", {"project": name, "budget_uc": amount, "period": period}, apply
    )


def clear_project_budget(ops: Operations, project: Any) -> dict[str, Any]:
    name = check_name(project, "project")

    def apply(conn: sqlite3.Connection) -> dict[str, Any]:
        if conn.execute("DELETE FROM project_budgets WHERE project = ?", (name,)).rowcount == 0:
            raise not_found(f"budget for project {name!r}")
        return get_project(conn, name)

    return ops.change("projects.budget.clear", f"project:{name}", {"project": name}, apply)


def get_project(conn: sqlite3.Connection, project: str, now_ms: int | None = None) -> dict[str, Any]:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    row = conn.execute("SELECT budget_uc, period FROM project_budgets WHERE project = ?", (project,)).fetchone()
    keys = conn.execute(
        "SELECT count(*) FROM client_keys WHERE project = ? AND revoked_at IS NULL", (project,)
    ).fetchone()[0]
    out: dict[str, Any] = {
        "project": project,
        "live_keys": keys,
        "budget_uc": row["budget_uc"] if row else None,
        "budget": format_usd(row["budget_uc"], 2) if row else None,
        "budget_period": row["period"] if row else None,
    }
    out.update(_spend(conn, f"project:{project}", out["budget_period"], now_ms))
    return out


def list_projects(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Projects named by a key or a budget."""
    # Sorted here, by code point (UTF-8 byte order): PostgreSQL's ORDER BY follows the database's
    # collation ('a-web' before 'B-web' in en_US), SQLite's bytes, and both stores list alike.
    names = sorted(
        r[0]
        for r in conn.execute(
            "SELECT project FROM client_keys WHERE project IS NOT NULL UNION SELECT project FROM project_budgets"
        )
    )
    now_ms = int(time.time() * 1000)
    return [get_project(conn, n, now_ms) for n in names]

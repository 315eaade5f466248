"""Changing modules: enable, disable, configure — validated, audited, in one transaction.

The ``modules`` table holds only what an operator set; the code holds the defaults. The row
is read inside the write transaction, so two concurrent ``set`` calls never lose a change.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .. import modules as registry
from ..modules import ConfigError, ModuleRow
from ..times import now_iso
from . import Operations, invalid


def load_rows(conn: sqlite3.Connection) -> dict[str, ModuleRow]:
    """Every stored row (a row whose JSON cannot be read counts as an invalid config)."""
    rows = {}
    for name, enabled, config, updated_at in conn.execute("SELECT name, enabled, config, updated_at FROM modules"):
        try:
            parsed = json.loads(config)
        except ValueError:
            parsed = config  # check_config reports it
        rows[name] = ModuleRow(name, bool(enabled), parsed, updated_at)
    return rows


def view(cls: type, row: ModuleRow | None, status: dict | None = None) -> dict[str, Any]:
    """What the API and the CLI show for one module."""
    stored = row.config if row is not None and isinstance(row.config, dict) else {}
    out = {
        **registry.describe(cls),
        "enabled": row.enabled if row is not None else registry.default_enabled(cls),
        "config": registry.effective_config(cls, stored),
        "set": sorted(stored),
        "updated_at": row.updated_at if row is not None else None,
    }
    if status is not None:
        out["status"] = status
    return out


def list_modules(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = load_rows(conn)
    return [view(cls, rows.get(cls.name)) for cls in registry.ORDER]


def show(conn: sqlite3.Connection, name: str) -> dict[str, Any]:
    cls = registry.find(name)
    return view(cls, load_rows(conn).get(name))


def _read(conn: sqlite3.Connection, cls: type[registry.Module]) -> ModuleRow | None:
    return load_rows(conn).get(cls.name)


def _write(conn: sqlite3.Connection, name: str, enabled: bool, config: dict) -> None:
    conn.execute(
        "INSERT INTO modules (name, enabled, config, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(name) DO UPDATE SET enabled = excluded.enabled, config = excluded.config, "
        "updated_at = excluded.updated_at",
        (name, int(enabled), json.dumps(config, ensure_ascii=False), now_iso()),
    )


def checked(cls: type, config: Any) -> dict:
    try:
        return registry.check_config(cls, config)
    except ConfigError as exc:
        raise invalid(str(exc), param=exc.field) from None


def set_enabled(ops: Operations, name: str, enabled: bool) -> dict[str, Any]:
    """Switch a module on or off (its options are kept)."""
    cls = registry.find(name)

    def apply(conn: sqlite3.Connection) -> dict:
        row = _read(conn, cls)
        config = row.config if row is not None and isinstance(row.config, dict) else {}
        _write(conn, name, enabled, config)
        return view(cls, _read(conn, cls))

    return ops.change("module.enable" if enabled else "module.disable", f"module:{name}", {"enabled": enabled}, apply)


def configure(
    ops: Operations, name: str, changes: dict[str, Any], *, replace: bool = False, enabled: bool | None = None
) -> dict[str, Any]:
    """Set options: merged into what is stored (a None value goes back to the default), or,
    with ``replace``, instead of it. Dict options given as ``{"sub": value}`` by the CLI's
    ``KEY.SUB=VALUE`` are merged by the caller before this."""
    cls = registry.find(name)
    if not isinstance(changes, dict):
        raise invalid(f"{name}: configuration must be a JSON object")
    cleaned = checked(cls, {k: v for k, v in changes.items() if v is not None})
    reset = sorted(k for k, v in changes.items() if v is None)
    for key in reset:
        if key != "overrides" and key not in registry.schema_of(cls):
            raise invalid(f"{name}.{key}: is not an option of {name}", param=f"{name}.{key}")

    def apply(conn: sqlite3.Connection) -> dict:
        row = _read(conn, cls)
        stored = row.config if row is not None and isinstance(row.config, dict) else {}
        config = dict(cleaned) if replace else {**stored, **cleaned}
        for key in reset:
            config.pop(key, None)
        config = checked(cls, config)
        on = enabled if enabled is not None else (row.enabled if row is not None else registry.default_enabled(cls))
        _write(conn, name, on, config)
        return view(cls, _read(conn, cls))

    details: dict[str, Any] = {"set": cleaned}
    if reset:
        details["reset"] = reset
    if replace:
        details["replace"] = True
    if enabled is not None:
        details["enabled"] = enabled
    return ops.change("module.configure", f"module:{name}", details, apply)

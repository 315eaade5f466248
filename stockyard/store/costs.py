"""Cost reports from ``rollups_daily`` alone — never a scan of the traces.

The rollups are written in the same transaction as each trace, so a report's total is
the exact integer sum of the traces' ``cost_uc``. Days are UTC; ``since`` and ``until``
are both inclusive. Requests whose cost is unknown (a model with no price) are counted
in ``unknown_cost`` and add nothing to the money columns.
"""

from __future__ import annotations

import csv
import sqlite3
from datetime import date
from typing import Any, TextIO

from ..pricing import format_usd
from ..times import parse_day

GROUPS = {
    "day": "day",
    "model": "model",
    "provider": "provider",
    "key": "key_id",
    "project": "project",
    "user": "end_user",
}
TAG_PREFIX = "tag:"  # by=tag:NAME groups by the values of the tag NAME
BY_HELP = "day, model, provider, key, project, user or tag:NAME"
COUNTS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "unknown_cost",
    "cost_uc",
)


def check_range(since: str | None, until: str | None) -> tuple[date | None, date | None]:
    """Parse the day range (ValueError with a clear message on a bad one)."""
    first = parse_day(since, "since") if since else None
    last = parse_day(until, "until") if until else None
    if first and last and first > last:
        raise ValueError(f"since ({first}) is after until ({last})")
    return first, last


def report(
    conn: sqlite3.Connection, by: str = "day", since: str | None = None, until: str | None = None
) -> dict[str, Any]:
    """Totals grouped ``by`` day, model, provider, key, project, end user or a tag's values, plus
    the grand total (for a tag: of the requests that carried it)."""
    table, column, where, args = _source(by)
    first, last = check_range(since, until)
    sums = ", ".join(f"SUM({c}) AS {c}" for c in COUNTS)
    if first:
        where.append("day >= ?")
        args.append(first.isoformat())
    if last:
        where.append("day <= ?")
        args.append(last.isoformat())
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    order = "name" if by == "day" else "cost_uc DESC, name"
    rows = [
        dict(r)
        for r in conn.execute(
            f"SELECT {column} AS name, {sums} FROM {table}{clause} GROUP BY {column} ORDER BY {order}", args
        )
    ]
    # The total is summed from the same rows: a second SELECT would read a later snapshot
    # (the writer commits between statements), and the report would not add up.
    total = {c: sum(int(r[c] or 0) for r in rows) for c in COUNTS}
    names = _key_names(conn) if by == "key" else {}
    out_rows = []
    for r in rows:
        name = r.pop("name") or None
        row: dict[str, Any] = {by: name}
        if by == "key":
            row["key_name"], row["key_prefix"] = names.get(name or "", (None, None))
        row.update(_money(r))
        out_rows.append(row)
    return {
        "by": by,
        "since": first.isoformat() if first else None,
        "until": last.isoformat() if last else None,
        "rows": out_rows,
        "total": _money(total),
    }


def _source(by: str) -> tuple[str, str, list[str], list[Any]]:
    """(rollup table, group column, filters, their arguments) for a ``by`` (ValueError if unknown)."""
    if by.startswith(TAG_PREFIX) and by[len(TAG_PREFIX) :]:
        return "rollups_tags", "value", ["name = ?"], [by[len(TAG_PREFIX) :]]
    if by not in GROUPS:
        raise ValueError(f"by must be one of {BY_HELP}, got {by[:80]!r}")
    return ("rollups_users" if by == "user" else "rollups_daily"), GROUPS[by], [], []


def _money(sums: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {c: int(sums.get(c) or 0) for c in COUNTS}
    out["cost_usd"] = format_usd(out["cost_uc"], 2)
    return out


def _key_names(conn: sqlite3.Connection) -> dict[str, tuple[str, str]]:
    return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, name, prefix FROM client_keys")}


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet shows as text: client-chosen names (models, keys, projects) starting
    like a formula get a leading ``'``. ui/format.js ``csvCell`` applies the same rule."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(result: dict[str, Any], out: TextIO) -> None:
    """The report as CSV: one row per group, then a TOTAL row."""
    by = result["by"]
    head = [by, *(["key_name", "key_prefix"] if by == "key" else []), *COUNTS, "cost_usd"]
    writer = csv.writer(out)
    writer.writerow(head)
    for row in result["rows"]:
        writer.writerow([csv_cell(row.get(c)) for c in head])
    total = {by: "TOTAL", **result["total"]}
    writer.writerow([csv_cell(total.get(c)) for c in head])

"""Cost reports from ``rollups_daily`` alone — never a scan of the traces.

The rollups are written in the same transaction as each trace, so a report's total is
the exact integer sum of the traces' ``cost_uc``. Days are UTC; ``since`` and ``until``
are both inclusive. Requests whose cost is unknown (a model with no price) are counted
in ``unknown_cost`` and add nothing to the money columns.
"""

from __future__ import annotations

import csv
import sqlite3
from calendar import monthrange
from dataclasses import dataclass
from datetime import date
from typing import Any, TextIO

from ..pricing import format_usd
from ..times import parse_day
from .db import dialect_of
from .traces import ROLLUP_COUNTS

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
COUNTS = ROLLUP_COUNTS  # the rollup tables' count columns: what every report row sums


def check_range(since: str | None, until: str | None) -> tuple[date | None, date | None]:
    """Parse the day range (ValueError with a clear message on a bad one)."""
    first = parse_day(since, "since") if since else None
    last = parse_day(until, "until") if until else None
    if first and last and first > last:
        raise ValueError(f"since ({first}) is after until ({last})")
    return first, last


MAX_GROUPS = 2


def check_groups(by: str) -> list[str]:
    """``day`` or ``day,model``: one or two of GROUPS, different (ValueError naming them otherwise)."""
    groups = [g.strip() for g in by.split(",")]

    def known(g: str) -> bool:
        return g in GROUPS or (g.startswith(TAG_PREFIX) and len(g) > len(TAG_PREFIX))

    if not 1 <= len(groups) <= MAX_GROUPS or len(set(groups)) != len(groups) or not all(known(g) for g in groups):
        raise ValueError(f"by must be one or two (comma-separated) of {BY_HELP}, got {by[:100]!r}")
    return groups


OTHER = "(other)"  # with top=N: the name of the row that sums every group not in the top N
MAX_TOP = 1000
# A report by a group the clients choose (end user, tag value) asked for over the API without top
# keeps this many: one row per end user or Codex session of a key behind a public app could be
# millions (the CLI, the operator's own process, lists them all).
USERS_TOP = MAX_TOP
# A report by day and another group over the API answers whole days, at most this many rows a page
# (one day more than that alone): 90 days of 1,000 users would be 90,000 rows, ~1.5 s to make and
# megabytes to send. The console's chart (365 days of top=10) fits one page.
PAGE_ROWS = 5_000


def client_chosen(group: str) -> bool:
    """A group whose values whoever sends requests chooses: the end user, a tag's values."""
    return group == "user" or group.startswith(TAG_PREFIX)


def ranked_group(groups: list[str]) -> int:
    """Where the group ``top`` ranks sits in ``by``: the client-chosen one (a report has at most
    one), wherever it is, so every such report is bounded; else the last."""
    return next((i for i, g in enumerate(groups) if client_chosen(g)), len(groups) - 1)


def check_top(top: int | None, groups: list[str]) -> int | None:
    """``top``: a count of the ranked group's largest members to keep (ValueError otherwise)."""
    if top is None:
        return None
    if not 1 <= top <= MAX_TOP:
        raise ValueError(f"top must be between 1 and {MAX_TOP}, got {top}")
    if groups[ranked_group(groups)] == "day":
        raise ValueError(
            "top keeps the largest groups of the end user or tag in by, else of the last of by "
            "(e.g. by=day,model), which cannot be day"
        )
    return top


def report(
    conn: sqlite3.Connection,
    by: str = "day",
    since: str | None = None,
    until: str | None = None,
    top: int | None = None,
    bounded: bool = False,
    page: str | None = None,
    page_rows: int | None = None,
) -> dict[str, Any]:
    """Totals grouped ``by`` day, model, provider, key, project, end user or a tag's values — or
    two of them, ``day,model`` (a chart's buckets and series in one read) — plus the grand total
    (for a tag: of the requests that carried it).

    ``top=N`` keeps the N groups of the ranked group (:func:`ranked_group`: the end user or the
    tag wherever it is in ``by``, else the last) that cost most over the range and sums the rest
    into one row per other group (per day for ``day,user`` and ``user,day``), named :data:`OTHER`
    and marked ``"other": true`` (every row has ``other`` then): a chart's series without one row
    per user per day. The rows still add up to the same total, to the micro-cent.

    ``bounded``: a report by a client-chosen group (end user, tag), asked without ``top``, is
    made as with ``top=USERS_TOP`` and says so (``"top_default": true``).

    ``page_rows``: the report says ``"has_more"`` and the ``"next_page"`` to ask for; one by day
    and another group holds whole days from ``page`` (a day of the range; None: its first) while
    its rows stay within ``page_rows`` (one day at least), and totals the page's rows
    (:func:`_page`). A top report still ranks over the whole range."""
    groups = check_groups(by)
    top = check_top(top, groups)
    top_default = bounded and top is None and any(client_chosen(g) for g in groups)
    if top_default:
        top = USERS_TOP
    first, last = check_range(since, until)
    sources, columns = _source(groups, first, last)
    next_page = None
    if page_rows is not None and len(groups) > 1 and "day" in groups:
        days, next_page = _page(conn, groups, columns, first, last, page, page_rows, top)
        window, _ = _source(groups, *days)  # the page's days; the ranking stays the range's
        sources = _Sources(window.rows, sources.ranked, window.totals)
    elif page is not None:
        raise ValueError("page pages a report by day and another group (e.g. by=day,user)")
    collate = _BYTE_ORDER[dialect_of(conn)]
    names = [_name(c, collate) for c in columns]
    sums = ", ".join(f"SUM({c}) AS {c}" for c in COUNTS)
    n, at = len(groups), ranked_group(groups)
    if top:
        found = _with_top(conn, top, sources, columns, names, groups)
    else:
        rows = sources.rows
        names_sql = ", ".join(f"{name} AS g{i}" for i, name in enumerate(names))
        group_by = ", ".join(f"g{i}" for i in range(n))
        order = ", ".join(_order(i, g, n, name) for i, (g, name) in enumerate(zip(groups, names)))
        sql = f"{rows.select(f'{names_sql}, {sums}')} GROUP BY {group_by} ORDER BY {order}"
        # SUMs of NOT NULL integer columns over non-empty groups: ints already, on both stores
        found = [(r[:n], r[n:]) for r in conn.execute(sql, rows.args)]
    # The total is summed from the same rows: a second SELECT would read a later snapshot
    # (the writer commits between statements), and the report would not add up.
    counts = [c for _, c in found]
    total = dict(zip(COUNTS, (sum(column) for column in zip(*counts)))) if counts else dict.fromkeys(COUNTS, 0)
    keyed = "key" in groups
    key_names = _key_names(conn) if keyed else {}
    cost = COUNTS.index("cost_uc")
    out_rows = []
    for r, sums_of_row in found:  # one dict per row, built in one pass: 100k+ rows for by=day,user
        row: dict[str, Any] = {group: name or None for group, name in zip(groups, r)}
        if keyed:
            row["key_name"], row["key_prefix"] = key_names.get(row["key"] or "", (None, None))
        if top:
            row["other"] = r[at] is None
            if row["other"]:
                row[groups[at]] = OTHER
        row.update(zip(COUNTS, sums_of_row))
        row["cost_usd"] = format_usd(sums_of_row[cost], 2)
        out_rows.append(row)
    return {
        "by": ",".join(groups),
        "groups": groups,
        "since": first.isoformat() if first else None,
        "until": last.isoformat() if last else None,
        "top": top,
        "top_default": top_default,
        "rows": out_rows,
        "total": _money(total),
        **({"has_more": next_page is not None, "next_page": next_page} if page_rows is not None else {}),
    }


def _page(
    conn: sqlite3.Connection,
    groups: list[str],
    columns: list[str],
    first: date | None,
    last: date | None,
    page: str | None,
    rows_max: int,
    top: int | None,
) -> tuple[tuple[date | None, date | None], str | None]:
    """A page of a report by day and another group: its first and last day, and the day the next
    page starts at (None: the last page). Its days are whole, as many as keep its rows within
    ``rows_max`` (the first day whatever its rows), counted per day: the groups each day has; in a
    top report ``top`` + 1, or fewer when the ranked group has fewer members in the days left
    (counting each day's end users would read every user's rows: an end user report's days come
    from its per-day totals, a row a day)."""
    start = first
    if page is not None:
        start = parse_day(page, "page")
        if (first and start < first) or (last and start > last):
            raise ValueError(f"page must be a day of the report's range (its next_page), got {page[:20]!r}")
    left, _ = _source(groups, start, last)
    if top:
        ranked, name = left.ranked, columns[ranked_group(groups)]
        (members,) = conn.execute(
            f"SELECT COUNT(*) FROM ({ranked.select(f'DISTINCT {name}')}) AS m", ranked.args
        ).fetchone()
        table, most = left.totals, min(top + 1, members)
        counts = ((day, most) for (day,) in conn.execute(f"{table.select('DISTINCT day')} ORDER BY day", table.args))
    else:
        table, other = left.rows, next(c for c in columns if c != "day")
        sql = f"SELECT day, COUNT(*) FROM ({table.select(f'DISTINCT day, {other}')}) AS d GROUP BY day ORDER BY day"
        counts = ((day, n) for day, n in conn.execute(sql, table.args))
    held, last_day = 0, None
    for day, n in counts:
        if last_day is not None and held + n > rows_max:
            return (start, parse_day(last_day)), day
        held, last_day = held + n, day
    return (start, last), None


def _with_top(
    conn: sqlite3.Connection,
    top: int,
    sources: _Sources,
    columns: list[str],
    names: list[str],
    groups: list[str],
) -> list[tuple[tuple, list[int]]]:
    """The rows of a ``top`` report, ordered as :func:`_order` orders the others, the rest of
    each other group as a row whose ranked name is None (listed after the named).

    One statement (one snapshot): the ``top`` largest of the ranked group over the range; their
    rows, read through the key or an index on that column where there is one (a few hundred
    rows, not a sort of the whole range); and each other group's totals. The rest is those
    totals minus the kept rows, in integers, so the report adds up exactly.
    """
    at = ranked_group(groups)
    ranked_column = columns[at]
    kept_names = ", ".join(ranked_column if i == at else name for i, name in enumerate(names))
    rest_names = ", ".join("NULL" if i == at else name for i, name in enumerate(names))
    others = [name for i, name in enumerate(names) if i != at]
    sums = ", ".join(f"SUM({c})" for c in COUNTS)
    ranked, kept_rows, other_totals = sources.ranked, sources.rows, sources.totals
    sql = (
        f"WITH top AS ({ranked.select(f'{names[at]} AS g')} GROUP BY g "  # g: rollups_tags has a name
        "ORDER BY SUM(cost_uc) DESC, g LIMIT ?) "
        f"{kept_rows.select(f'0, {kept_names}, {sums}', f'{ranked_column} IN (SELECT g FROM top)')} "
        f"GROUP BY {kept_names} "
        f"UNION ALL {other_totals.select(f'1, {rest_names}, {sums}')}"
        + (f" GROUP BY {', '.join(others)}" if others else "")
    )
    found: list[tuple[tuple, list[int]]] = []
    rests: dict[tuple, list[int]] = {}
    for part, *r in conn.execute(sql, [*ranked.args, top, *kept_rows.args, *other_totals.args]):
        head, counts = tuple(r[: len(groups)]), [int(v or 0) for v in r[len(groups) :]]
        if part == 0:
            found.append((head, counts))
        else:
            rests[_without(head, at)] = counts
    for head, counts in found:  # the rest: each other group's totals minus its kept rows
        key = _without(head, at)
        rests[key] = [t - c for t, c in zip(rests.get(key) or [0] * len(COUNTS), counts)]
    found += [((*key[:at], None, *key[at:]), rest) for key, rest in rests.items() if any(rest)]
    return _sorted(found, groups)


def _without(head: tuple, at: int) -> tuple:
    """A row's names but the ranked group's: the other groups it is summed within."""
    return head[:at] + head[at + 1 :]


def _sorted(found: list[tuple[tuple, list[int]]], groups: list[str]) -> list[tuple[tuple, list[int]]]:
    """A top report's rows in :func:`_order`'s order (days in order, other groups by spend, an
    outer group by its whole spend, in byte order at a tie), each ``(other)`` after the named.
    Sorted per outer group: a 1,000-user report by day has 90,000 rows."""
    cost = COUNTS.index("cost_uc")

    def by_spend(name: Any, spend: int) -> tuple:
        return (name is None, -spend, name or "")

    if len(groups) == 1:
        return sorted(found, key=lambda r: by_spend(r[0][0], r[1][cost]))
    by_outer: dict[Any, list[tuple[tuple, list[int]]]] = {}
    for row in found:
        by_outer.setdefault(row[0][0], []).append(row)
    if groups[0] == "day":
        outers = sorted(by_outer)
    else:
        spend = {k: sum(c[cost] for _, c in rows) for k, rows in by_outer.items()}
        outers = sorted(by_outer, key=lambda k: by_spend(k, spend[k]))
    inner = (lambda r: r[0][1]) if groups[1] == "day" else (lambda r: by_spend(r[0][1], r[1][cost]))
    return [row for k in outers for row in sorted(by_outer[k], key=inner)]


def _name(column: str, collate: str) -> str:
    """A group column as a report selects it: past its index (see _INDEX_FIRST), in byte order."""
    name = f"{column} || ''" if column in _INDEX_FIRST else column
    return f"({name}){collate}" if collate else name


# Names in one order on both stores, byte order: SQLite compares text as bytes, PostgreSQL by the
# database's collation (en_US puts 'alice' before 'Bob'), so the same report would list ties —
# and keep a different group at a tie for top=N — on each. "C" is PostgreSQL's byte order (and
# UTF-8's byte order is Python's, which sorts a top report's rows).
_BYTE_ORDER = {"sqlite": "", "postgresql": ' COLLATE "C"'}


# Columns an index of rollups_daily starts with (key_id, project: for a key's or a project's
# budget). Grouped by such a column, SQLite reads the whole table through that index, a row lookup
# each and the day range ignored, to get the groups in order; grouped by `column || ''` (the same
# text) it reads the days asked for by the primary key (day first) and sorts the groups itself:
# a third less for a report by key over 90 days (issue 18, bench/README.md). rollups_users is
# keyed by end_user first (schema 0019), so a report by user groups it as it reads, unsorted.
_INDEX_FIRST = {"key_id", "project"}


@dataclass(frozen=True)
class _Rows:
    """The rollup rows a report reads: ``FROM sql``, filtered by ``where`` (ANDed). ``args`` are
    the statement's arguments in order: the ones ``sql`` names, then the filters'."""

    sql: str
    where: tuple[str, ...] = ()
    args: tuple[Any, ...] = ()

    def select(self, what: str, also: str = "") -> str:
        conds = (*self.where, also) if also else self.where
        return f"SELECT {what} FROM {self.sql}" + (f" WHERE {' AND '.join(conds)}" if conds else "")


@dataclass(frozen=True)
class _Sources:
    """What a report reads: its rows; for ``top``, where the last group is ranked over the range
    and where each outer group's totals are summed (the same rows, but for end users: see
    :func:`_source`)."""

    rows: _Rows
    ranked: _Rows
    totals: _Rows


def _within(
    column: str, first: date | None, last: date | None, width: int = 10
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The filters (and their arguments) of rows whose ``column`` — the first ``width`` characters of
    an ISO date: 10 a day, 7 a month — is in the range, both ends included (an open end: None)."""
    where, args = [], []
    if first:
        where.append(f"{column} >= ?")
        args.append(first.isoformat()[:width])
    if last:
        where.append(f"{column} <= ?")
        args.append(last.isoformat()[:width])
    return tuple(where), tuple(args)


def _source(groups: list[str], first: date | None, last: date | None) -> tuple[_Sources, list[str]]:
    """What a report of checked groups over ``first``..``last`` reads, and its group columns.

    ``user`` reads the end users' rollups (with day, key and project), ``tag:NAME``
    ``rollups_tags`` (with day), the rest ``rollups_daily``. A report by user without day reads
    the whole months of its range from ``rollups_users_months`` (schema 0028); a top report
    by user with day sums its days' totals from ``rollups_users_days``.
    """
    where, args = _within("day", first, last)
    tags = [g for g in groups if g.startswith(TAG_PREFIX)]
    if tags:
        if any(g not in ("day", tags[0]) for g in groups):
            raise ValueError("a tag report groups by the tag alone or with day (by=day,tag:NAME)")
        tagged = _Rows("rollups_tags", ("name = ?", *where), (tags[0][len(TAG_PREFIX) :], *args))
        return _Sources(tagged, tagged, tagged), ["value" if g in tags else "day" for g in groups]
    columns = [GROUPS[g] for g in groups]
    if "user" not in groups:
        daily = _Rows("rollups_daily", where, args)
        return _Sources(daily, daily, daily), columns
    if any(g not in ("day", "key", "project", "user") for g in groups):
        raise ValueError("an end-user report groups by user alone or with day, key or project")
    by_month = _user_rows(first, last)
    if "day" not in groups:
        return _Sources(by_month, by_month, by_month), columns
    by_day = _Rows("rollups_users", where, args)
    return _Sources(by_day, by_month, _Rows("rollups_users_days", where, args)), columns


def _user_rows(first: date | None, last: date | None) -> _Rows:
    """The end users' rollup rows of the range, without their days: a range of whole months (or
    open at an end: all time, "since the first of the month") reads ``rollups_users_months``, a row
    per user, key and project a month; any other range reads ``rollups_users`` (one row a day).

    Days at the ends of a range are not read from the days table beside the months: that table is
    keyed by user first, so each end would scan it all, and the two sources' rows would have to be
    sorted together to be grouped — it measured slower than the days alone (bench/README.md)."""
    whole = (first is None or first.day == 1) and (last is None or last.day == monthrange(last.year, last.month)[1])
    if not whole:
        return _Rows("rollups_users", *_within("day", first, last))
    return _Rows("rollups_users_months", *_within("month", first, last, width=7))


def _order(i: int, group: str, n: int, name: str) -> str:
    """Days in order; other groups by spend, biggest first (an outer group by its whole spend:
    partitioned by its expression, since PostgreSQL takes no output name inside a window)."""
    if group == "day":
        return f"g{i}"
    if i < n - 1:
        return f"SUM(SUM(cost_uc)) OVER (PARTITION BY {name}) DESC, g{i}"
    return f"cost_uc DESC, g{i}"


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
    groups = result["groups"]
    head = [*groups, *(["key_name", "key_prefix"] if "key" in groups else []), *COUNTS, "cost_usd"]
    writer = csv.writer(out)
    writer.writerow(head)
    for row in result["rows"]:
        writer.writerow([csv_cell(row.get(c)) for c in head])
    total = {groups[0]: "TOTAL", **result["total"]}
    writer.writerow([csv_cell(total.get(c)) for c in head])

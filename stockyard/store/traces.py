"""Writing traces (with their bodies and the daily rollup) and reading them back.

A trace row stays small; bodies go to ``trace_bodies`` compressed and capped. The
rollup for (day, key, project, provider, model) is updated in the same transaction as
the trace, so cost reports never scan traces and always equal the sum of them.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import sqlite3
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from ..context import Attempt, RequestContext, is_refusal
from . import search as search_index
from .db import dialect_of, insert_many

_COLUMNS = (
    "id",
    "ts",
    "ts_ms",
    "client_addr",
    "endpoint",
    "dialect",
    "provider",
    "model",
    "served_model",
    "stream",
    "status",
    "outcome",
    "latency_us",
    "ttfb_us",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "usage_estimated",
    "cost_uc",
    "cost_status",
    "upstream_request_id",
    "error_type",
    "error_message",
    "key_id",
    "project",
    "parent_id",
    "attempt",
    "cache_hit",
    "cost_saved_uc",
    "end_user",
    "tags",
    "key_name",
    "served_mode",
)
INSERT_TRACE = f"INSERT INTO traces ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_INSERT_BODY = (
    "INSERT INTO trace_bodies (trace_id, request, response, request_truncated, response_truncated) "
    "VALUES (?, ?, ?, ?, ?)"
)
# SQLite (schema 0018): each indexed body names its search row, so the delete trigger finds that
# row by its rowid (FTS5 cannot look its trace_id column up: by trace_id a delete read the whole index).
_INSERT_BODY_LINKED = (
    "INSERT INTO trace_bodies (trace_id, request, response, request_truncated, response_truncated, search_rowid) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
# The count columns of every rollup table (rollups_daily, rollups_users, rollups_tags), summed
# on write here and on read by the cost reports (store/costs.py), in the order reports print them.
ROLLUP_COUNTS = (
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


def _upsert(table: str, dims: tuple[str, ...]) -> str:
    """Add traces to a rollup row of ``table`` keyed by ``dims`` (their requests and counts)."""
    columns = (*dims, *ROLLUP_COUNTS)
    # Qualified with the table: PostgreSQL finds a bare column name ambiguous next to excluded.
    added = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in ROLLUP_COUNTS)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['?'] * len(columns))}) "
        f"ON CONFLICT ({', '.join(dims)}) DO UPDATE SET {added}"
    )


_ROLLUP = _upsert("rollups_daily", ("day", "key_id", "project", "provider", "model"))
_ROLLUP_USERS = _upsert("rollups_users", ("day", "key_id", "project", "end_user"))
_ROLLUP_TAGS = _upsert("rollups_tags", ("day", "name", "value"))
# rollups_users summed per month (per user, key, project) and per day (every user together),
# schema 0028: long reports by user read these (store/costs.py).
_ROLLUP_USER_MONTHS = _upsert("rollups_users_months", ("month", "key_id", "project", "end_user"))
_ROLLUP_USER_DAYS = _upsert("rollups_users_days", ("day",))
# What budgets spent on answers of unknown cost, beyond the rollups' known costs (schema 0033).
_UNPRICED = (
    "INSERT INTO budget_unpriced (day, key_id, project, end_user, spent_uc) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (day, key_id, project, end_user) DO UPDATE SET spent_uc = budget_unpriced.spent_uc + excluded.spent_uc"
)


_LATENCY = """
INSERT INTO latency_minutes (minute, bucket, count) VALUES (?, ?, ?)
ON CONFLICT (minute, bucket) DO UPDATE SET count = latency_minutes.count + excluded.count
"""
LATENCY_BASE = 1.1  # histogram buckets grow by 10%: a percentile is known within 10%


def latency_bucket(latency_us: int) -> int:
    """The histogram bucket of a latency: b with 1.1^b <= µs < 1.1^(b+1) (0 for under 1.1 µs)."""
    return max(0, int(math.log(max(latency_us, 1)) / math.log(LATENCY_BASE)))


def latency_percentiles(
    conn: sqlite3.Connection, since_ms: int, until_ms: int, ps: tuple[int, ...] = (50, 90, 99)
) -> dict[str, int | None]:
    """Nearest-rank percentiles (µs, each the upper edge of its bucket) and the request count,
    from the per-minute histograms of ``[since_ms, until_ms)`` (whole minutes)."""
    rows = conn.execute(
        "SELECT bucket, SUM(count) FROM latency_minutes WHERE minute >= ? AND minute < ? GROUP BY bucket "
        "ORDER BY bucket",
        (since_ms // 60_000, -(-until_ms // 60_000)),
    ).fetchall()
    total = sum(n for _, n in rows)
    out: dict[str, int | None] = {"requests": total}
    for p in ps:
        rank, seen, value = max(1, math.ceil(total * p / 100)), 0, None
        for bucket, n in rows:
            seen += n
            if seen >= rank:
                value = round(LATENCY_BASE ** (bucket + 1))
                break
        out[f"p{p}_us"] = value if total else None
    return out


def iso_utc(ms: int) -> str:
    """ISO 8601 UTC with milliseconds; the year padded to four digits (``%Y`` leaves year 1 as ``1``)."""
    t = time.gmtime(ms / 1000)
    return f"{t.tm_year:04d}" + time.strftime("-%m-%dT%H:%M:%S", t) + f".{ms % 1000:03d}Z"


@dataclass
class TraceRow:
    """Everything one attempt leaves behind, detached from the live request."""

    id: str
    ts: str
    ts_ms: int
    client_addr: str | None
    endpoint: str
    dialect: str
    provider: str | None
    model: str | None
    served_model: str | None
    stream: int
    status: int
    outcome: str
    latency_us: int
    ttfb_us: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    usage_estimated: int
    cost_uc: int | None
    cost_status: str
    upstream_request_id: str | None
    error_type: str | None
    error_message: str | None
    key_id: str | None
    project: str | None
    parent_id: str | None
    attempt: int
    cache_hit: int
    cost_saved_uc: int | None
    end_user: str | None = None
    tags: str | None = None  # JSON object
    key_name: str | None = None
    served_mode: str | None = None  # the mode its answer says served it (priority, flex, fast, us): its cost's
    unpriced_spent_uc: int = 0  # what budgets spent beyond its cost (unknown): ``budget_unpriced``, not a column
    rollup_model: str | None = None  # the model its rollup row goes under when not its own (not a column)
    request_body: bytes | None = None
    response_body: bytes | None = None
    request_truncated: bool = False
    response_truncated: bool = False

    packed: tuple[bytes | None, bytes | None] | None = field(default=None, repr=False, compare=False)

    def values(self) -> tuple:
        """The ``traces`` row, in INSERT_TRACE's column order."""
        return _VALUES(self)

    def pack(self) -> None:
        """Compress the bodies now: the tracer calls this on the request's thread (after
        scrubbing), so the one writer thread spends its time on inserts only."""
        self.packed = (_pack(self.request_body), _pack(self.response_body))

    def held_bytes(self) -> int:
        """The bytes this row holds while it waits for the writer: its bodies, plain and packed."""
        return sum(len(b) for b in (self.request_body, self.response_body, *(self.packed or ())) if b)

    def drop_bodies(self) -> None:
        """Keep the trace without its bodies (the writer held all it may: ``Writer.room``)."""
        self.request_body = self.response_body = self.packed = None
        self.request_truncated = self.response_truncated = False

    def body_row(self) -> tuple:
        """The ``trace_bodies`` row (packed here if the tracer did not)."""
        if self.packed is None:
            self.pack()
        assert self.packed is not None
        request, response = self.packed
        return (self.id, request, response, int(self.request_truncated), int(self.response_truncated))

    def write(self, conn: sqlite3.Connection, *, v9: bool = True, v18: bool = True, v28: bool = True) -> None:
        """The writer job: trace, bodies, their search index, rollup and latency histogram in the
        caller's transaction. The writer hands a batch of these to :meth:`write_many` at once.

        ``v9=False`` only for a database older than schema 0009 (search, latency), ``v18=False``
        older than 0018 (bodies linked to their search rows), ``v28=False`` older than 0028 (the
        end users' rollups by month and by day): upgrade tests.
        """
        TraceRow.write_many(conn, [self], v9=v9, v18=v18, v28=v28)

    @staticmethod
    def write_many(
        conn: sqlite3.Connection, rows: list["TraceRow"], *, v9: bool = True, v18: bool = True, v28: bool = True
    ) -> None:
        """Many traces as :meth:`write` would write them one by one, in a few statements: rows,
        bodies and search index as multi-row inserts, the rollups summed per rollup row first
        (one upsert per row a batch touches, not one per trace)."""
        insert_many(conn, INSERT_TRACE, [r.values() for r in rows])
        stored = [r for r in rows if r.request_body is not None or r.response_body is not None]
        if stored:
            texts = (
                [(r.id, text) for r in stored if (text := search_index.body_text(r.request_body, r.response_body))]
                if v9
                else []
            )
            if v9 and v18 and dialect_of(conn) == "sqlite":
                linked = search_index.index_linked(conn, texts)
                insert_many(conn, _INSERT_BODY_LINKED, [(*r.body_row(), linked.get(r.id)) for r in stored])
            else:
                insert_many(conn, _INSERT_BODY, [r.body_row() for r in stored])
                if texts:
                    insert_many(conn, search_index.INSERT, texts)
        sums = RollupSums(latency=v9, user_totals=v28)
        for r in rows:
            sums.add(r)
        sums.write(conn)


_VALUES = operator.attrgetter(*_COLUMNS)


class RollupSums:
    """What traces add to the daily rollups — by key/project/provider/model, by end user, by each
    of their tags — and to the latency histograms, summed per rollup row in memory, then upserted
    once each. Every rollup row stays the sum of its traces; a refusal (``context.is_refusal``)
    adds to the row of its day, key and project with no provider and no model, and to no
    end user's or tag's row."""

    def __init__(self, latency: bool = True, user_totals: bool = True) -> None:
        self.latency = latency
        self.user_totals = user_totals  # the end users' sums by month and by day (schema 0028)
        # rollup row → the counts of each trace in it (summed column by column when written)
        self.daily: dict[tuple, list[tuple[int, ...]]] = {}
        self.users: dict[tuple, list[tuple[int, ...]]] = {}
        self.tags: dict[tuple, list[tuple[int, ...]]] = {}
        self.minutes: dict[tuple[int, int], int] = {}
        self.unpriced: dict[tuple, int] = {}  # (day, key, project, end user) → µ¢ budgets spent beyond cost

    def add(self, r: TraceRow) -> None:
        day = r.ts[:10]
        counts = (  # in ROLLUP_COUNTS order
            1,  # requests
            int(r.status >= 400 or r.outcome != "ok"),
            r.prompt_tokens or 0,
            r.completion_tokens or 0,
            r.cached_tokens or 0,
            r.cache_write_tokens or 0,
            r.reasoning_tokens or 0,
            int(r.cost_status == "unknown"),
            r.cost_uc or 0,
        )
        key_id, project = r.key_id or "", r.project or ""
        if r.parent_id is None and is_refusal(r.outcome, r.provider):
            # Stockyard's own refusal (rate limit, budget, a bad request…): no provider, cost 0. Its
            # model, end user and tags are the client's words, and rollups are kept for ever, so it
            # is counted per day, key and project only (under no provider and no model).
            self.daily.setdefault((day, key_id, project, "", ""), []).append(counts)
            return
        model = r.rollup_model or r.served_model or r.model or ""
        self.daily.setdefault((day, key_id, project, r.provider or "", model), []).append(counts)
        self.users.setdefault((day, key_id, project, r.end_user or ""), []).append(counts)
        if r.unpriced_spent_uc:
            where = (day, key_id, project, r.end_user or "")
            self.unpriced[where] = self.unpriced.get(where, 0) + r.unpriced_spent_uc
        if r.tags:
            for name, value in _tag_items(r.tags):
                self.tags.setdefault((day, name, value), []).append(counts)
        if self.latency and r.parent_id is None and r.outcome == "ok":
            minute = (r.ts_ms // 60_000, latency_bucket(r.latency_us))
            self.minutes[minute] = self.minutes.get(minute, 0) + 1

    def write(self, conn: sqlite3.Connection) -> None:
        """Upsert the sums (in the caller's transaction, the one of the traces), and the end users'
        sums again per month and per day (schema 0028), so that each stays the sum of the traces."""
        users = _summed(self.users)
        for sql, rows in ((_ROLLUP, _summed(self.daily)), (_ROLLUP_USERS, users), (_ROLLUP_TAGS, _summed(self.tags))):
            if rows:
                insert_many(conn, sql, rows)
        if users and self.user_totals:
            months: dict[tuple, list[tuple]] = {}
            days: dict[tuple, list[tuple]] = {}
            for row in users:  # (day, key_id, project, end_user, *counts)
                months.setdefault((row[0][:7], *row[1:4]), []).append(row[4:])
                days.setdefault(row[:1], []).append(row[4:])
            insert_many(conn, _ROLLUP_USER_MONTHS, _summed(months))
            insert_many(conn, _ROLLUP_USER_DAYS, _summed(days))
        if self.unpriced:
            insert_many(conn, _UNPRICED, [(*k, n) for k, n in self.unpriced.items()])
        if self.minutes:
            insert_many(conn, _LATENCY, [(*k, n) for k, n in self.minutes.items()])


def _summed(rows: dict[tuple, list[tuple]]) -> list[tuple]:
    """Each rollup row's key with its counts summed column by column (one row's counts as they are)."""
    return [(*k, *(v[0] if len(v) == 1 else map(sum, zip(*v)))) for k, v in rows.items()]


@functools.lru_cache(maxsize=1024)
def _tag_items(tags: str) -> tuple[tuple[str, Any], ...]:
    """A trace's tags (a JSON object) as (name, value) pairs; the same few sets come again and again."""
    return tuple(json.loads(tags).items())


STORED_BELOW = 512  # bytes: a shorter body is kept as a stored (uncompressed) zlib block
# Bodies, conversation items and responses are deflated at level 1: on a ~100 KB agent body it took
# 12% less of the proxy's CPU per request than level 3 (bench/README.md, "Agent bodies"), for a
# compressed body 8-19% larger — ~2% of what the trace adds to the file, whose search index keeps the
# text uncompressed.
ZLIB_LEVEL = 1


def _pack(data: bytes | None) -> bytes | None:
    """A body as a zlib stream: compressed, or a short one as one stored block (see ``_stored``)."""
    if data is None:
        return None
    return _stored(data) if len(data) < STORED_BELOW else zlib.compress(data, ZLIB_LEVEL)


def _stored(data: bytes) -> bytes:
    """``data`` as a zlib stream of one stored block: the bytes ``zlib.compress(data, 0)`` makes
    (so every reader, older versions too, decompresses it as before), without calling deflate.

    Deflate lets go of the GIL, and under load each of those costs a hand-off to another thread
    and back: two per request for bodies that compression shrinks by ~100 bytes. Measured in
    bench/README.md ("Profile, issue 18"); ``adler32`` of a short buffer keeps the GIL.
    """
    n = len(data)
    head = b"\x78\x01\x01" + n.to_bytes(2, "little") + (n ^ 0xFFFF).to_bytes(2, "little")
    return head + data + zlib.adler32(data).to_bytes(4, "big")


def _unpack(data: bytes | None) -> str | None:
    return None if data is None else zlib.decompress(data).decode("utf-8", "replace")


CLIENT_TEXT_CAP = 256  # bytes of a client- or provider-chosen name kept in a trace row


def cap_text(text: str | None, limit: int = CLIENT_TEXT_CAP) -> str | None:
    """``text`` cut to ``limit`` UTF-8 bytes (whole characters): a model name cannot grow the database.

    Stored as :func:`clean_text` stores it (its ``?`` takes a byte as the character it stands for).
    """
    cleaned = clean_text(text)
    return None if cleaned is None else cleaned.encode()[:limit].decode("utf-8", "ignore")


def clean_text(text: str | None) -> str | None:
    """``text`` as both stores can hold it, the same in each: a lone surrogate (valid in JSON, no
    UTF-8 form) and a NUL (PostgreSQL's text has none; SQLite's would show as a NUL only there)
    become ``?``. A trace quotes the client's words (a model name, an id in an error); its row
    must be written whatever they are, or the request goes unrecorded."""
    if text is None:
        return None
    if text.isascii():
        return text.replace("\x00", "?")
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "?")


def trace_row_from(
    ctx: RequestContext,
    attempt: Attempt | None = None,
    *,
    store_bodies: bool,
    cap: int,
    parent_id: str | None = None,
    number: int = 1,
) -> TraceRow:
    """Freeze a request into its trace record, or one failed ``attempt`` of it into a row of its own.

    A failed attempt's row has its own id, start and duration; the request body is on the
    request's row only.
    """
    a = attempt or ctx.attempt
    if attempt is None:
        trace_id, ts_ms, started, raw = ctx.trace_id, ctx.ts_ms, ctx.started, ctx.raw
        latency_us = ctx.elapsed_us()
    else:
        trace_id, ts_ms, started, raw = attempt.trace_id, attempt.ts_ms, attempt.started, b""
        latency_us = int(((attempt.ended or time.perf_counter()) - attempt.started) * 1_000_000)
    u = a.usage
    request_body = response_body = None
    req_trunc = False
    if store_bodies:
        request_body = raw[:cap]
        req_trunc = len(raw) > cap
        response_body = bytes(a.response_body)
    return TraceRow(
        id=trace_id,
        ts=iso_utc(ts_ms),
        ts_ms=ts_ms,
        client_addr=ctx.client_addr,
        endpoint=ctx.endpoint,
        dialect=ctx.dialect,
        provider=a.provider.name if a.provider else None,
        model=cap_text(ctx.model),
        served_model=cap_text(a.served_model or a.upstream_model),
        stream=int(ctx.stream),
        status=a.status,
        outcome=a.outcome,
        latency_us=latency_us,
        ttfb_us=int((a.ttfb - started) * 1_000_000) if a.ttfb else None,
        prompt_tokens=u.prompt_tokens if u else None,
        completion_tokens=u.completion_tokens if u else None,
        cached_tokens=u.cached_tokens if u else None,
        cache_write_tokens=u.cache_write_tokens if u else None,
        reasoning_tokens=u.reasoning_tokens if u else None,
        usage_estimated=int(a.usage_estimated),
        cost_uc=a.cost_uc,
        cost_status=a.cost_status,
        upstream_request_id=cap_text(a.upstream_request_id),
        error_type=clean_text(a.error_type),
        error_message=clean_text(a.error_message),
        key_id=ctx.key_id,
        project=ctx.project,
        parent_id=parent_id,
        attempt=number,
        cache_hit=int(ctx.cache_hit) if attempt is None else 0,
        cost_saved_uc=ctx.cost_saved_uc if attempt is None else None,
        end_user=ctx.end_user,
        tags=json.dumps(ctx.tags, ensure_ascii=False, sort_keys=True) if ctx.tags else None,
        key_name=getattr(ctx.key, "name", None),
        served_mode=a.served_mode,
        unpriced_spent_uc=ctx.unpriced_spent_uc if attempt is None else 0,
        rollup_model=a.rollup_model,
        request_body=request_body,
        response_body=response_body,
        request_truncated=req_trunc,
        response_truncated=a.response_truncated,
    )


# -- reading ----------------------------------------------------------------------------------

# The tag filter each database spells its own way (keyed by store.db.dialect_of): the trace's JSON
# object has that name with that value. The search filter is search.FILTER.
_TAG_FILTER = {
    "sqlite": "EXISTS (SELECT 1 FROM json_each(t.tags) AS j WHERE j.key = ? AND j.value = ?)",
    "postgresql": "((t.tags::jsonb) ->> ?) = ?",
}


def list_traces(
    conn: sqlite3.Connection,
    *,
    limit: int = 50,
    cursor: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    model: str | None = None,
    provider: str | None = None,
    status: int | None = None,
    key: str | None = None,
    outcome: str | None = None,
    user: str | None = None,
    tag: tuple[str, str] | None = None,
    search: str | None = None,
) -> list[dict[str, Any]]:
    """Newest first; ``cursor`` is the id of the last trace of the previous page; ``tag`` is (name, value).

    ``search`` keeps traces whose stored request or response body has every word of it.
    """
    dialect = dialect_of(conn)
    where: list[str] = []
    args: list[Any] = []
    if tag is not None:
        where.append(_TAG_FILTER[dialect])
        args.extend(tag)
    for clause, value in (
        ("t.id < ?", cursor),
        ("t.ts_ms >= ?", since_ms),
        ("t.ts_ms < ?", until_ms),
        ("(t.model = ? OR t.served_model = ?)", model),
        ("t.provider = ?", provider),
        ("t.status = ?", status),
        ("t.key_id = ?", key),
        ("t.outcome = ?", outcome),
        ("t.end_user = ?", user),
        (search_index.FILTER[dialect], search_index.filter_arg(dialect, search or "")),
    ):
        if value is not None:
            where.append(clause)
            args.extend([value] * clause.count("?"))
    sql = f"SELECT t.*, {_KEY_NAME} AS key_name_now FROM traces t"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY t.id DESC LIMIT ?"
    args.append(limit)
    return [_with_key_name(r) for r in conn.execute(sql, args)]


# The key's name as it is now: for traces written before they recorded the name (schema 0008).
_KEY_NAME = "(SELECT name FROM client_keys WHERE client_keys.id = t.key_id)"


def _with_key_name(row: Any) -> dict[str, Any]:
    """A trace row with ``key_name``: the name the key had at the request, else its name now."""
    out = dict(row)
    now = out.pop("key_name_now", None)
    out["key_name"] = out.get("key_name") or now
    return out


def get_trace(conn: sqlite3.Connection, trace_id: str) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT t.*, {_KEY_NAME} AS key_name_now FROM traces t WHERE t.id = ?", (trace_id,)).fetchone()
    if row is None:
        return None
    trace = _with_key_name(row)
    body = conn.execute("SELECT * FROM trace_bodies WHERE trace_id = ?", (trace_id,)).fetchone()
    trace["request_body"] = _unpack(body["request"]) if body else None
    trace["response_body"] = _unpack(body["response"]) if body else None
    trace["request_truncated"] = bool(body["request_truncated"]) if body else False
    trace["response_truncated"] = bool(body["response_truncated"]) if body else False
    trace["attempts"] = [
        dict(r) for r in conn.execute("SELECT * FROM traces WHERE parent_id = ? ORDER BY attempt", (trace_id,))
    ]
    return trace

"""Helpers for the operations tests: load generation, generic table comparison, sample rows.

Everything here works from the schema the database has (``sqlite_master``, ``table_info``,
``foreign_key_list``), so tables added by later migrations are covered without edits.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import operator
import re
import sqlite3
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

from stockyard import audit, vault
from stockyard.context import new_trace_id
from stockyard.store import search as search_index
from stockyard.store import traces as traces_module
from stockyard.store.traces import TraceRow, iso_utc

CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


# -- load ---------------------------------------------------------------------------------------


class Load:
    """Client threads sending chat requests on keep-alive connections until stopped.

    ``answered`` holds the trace id of every request that got a 200 — what a client
    was promised is recorded.
    """

    def __init__(self, port: int, threads: int = 8, body: str = CHAT) -> None:
        self.port, self.body = port, body
        self.answered: list[str] = []
        self.failures: list[str] = []
        self.stop_event = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(30)

    def _loop(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            while not self.stop_event.is_set():
                conn.request("POST", "/v1/chat/completions", self.body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.answered.append(resp.getheader("x-stockyard-trace-id"))
                else:
                    self.failures.append(str(resp.status))
        except (OSError, http.client.HTTPException) as exc:
            if not self.stop_event.is_set():
                self.failures.append(repr(exc))
        finally:
            conn.close()


# -- reading databases --------------------------------------------------------------------------


def open_plain(path: Path | str) -> sqlite3.Connection:
    """A plain connection from the test process (what an operator's sqlite3 shell would do)."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    return conn


def integrity(path: Path | str) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def user_tables(conn: sqlite3.Connection) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]


def table_rows(conn: sqlite3.Connection, table: str, cols: Iterable[str] | None = None) -> list[tuple]:
    """Every row of ``table`` (only ``cols`` if given), sorted: a comparable picture of its content.

    The search index keeps no text since schema 0027 (and cannot be scanned): its rows are each
    linked body's id and the text the index was given for it (what its delete trigger gives back)."""
    cols = list(cols or columns(conn, table))
    if table == "trace_search" and "content = ''" in _table_sql(conn, table):
        linked = conn.execute("SELECT trace_id, request, response FROM trace_bodies WHERE search_rowid IS NOT NULL")
        found = {"trace_id": 0, "body": 1}
        rows = [tuple((r[0], search_index.stored_text(r[1], r[2]))[found[c]] for c in cols) for r in linked]
    else:
        select = ", ".join(f'"{c}"' for c in cols)
        rows = [tuple(r) for r in conn.execute(f'SELECT {select} FROM "{table}"')]
    return sorted(rows, key=lambda r: tuple((v is None, type(v).__name__, v) for v in r))


def _table_sql(conn: sqlite3.Connection, table: str) -> str:
    return conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0] or ""


def database_picture(path: Path | str) -> dict[str, list[tuple]]:
    conn = open_plain(path)
    try:
        return {t: table_rows(conn, t) for t in user_tables(conn)}
    finally:
        conn.close()


# Rows a starting or stopping server adds by itself; everything else must match exactly.
SERVER_AUDIT_ACTIONS = {"server.start", "server.stop", "migration.apply", "audit.keyed"}
META_KEYS_THAT_MOVE = {"readyz"}


def assert_same_content(
    src: Path | str, dst: Path | str, *, dst_ran_a_server: bool = False, audit_may_add: Iterable[str] = ()
) -> dict[str, int]:
    """Every table of ``src`` is in ``dst`` with the same rows; returns row counts per table.

    When ``dst`` has since run a server, its audit log may continue after ``src``'s (server
    start/stop entries only) and meta's ``readyz`` stamp may differ.
    """
    a, b = open_plain(src), open_plain(dst)
    counts = {}
    try:
        assert user_tables(a) == user_tables(b), "the same tables"
        for table in user_tables(a):
            rows_a, rows_b = table_rows(a, table), table_rows(b, table)
            counts[table] = len(rows_a)
            if (dst_ran_a_server or audit_may_add) and table == "audit_log":
                ordered_a = [tuple(r) for r in a.execute("SELECT * FROM audit_log ORDER BY seq")]
                ordered_b = [tuple(r) for r in b.execute("SELECT * FROM audit_log ORDER BY seq")]
                assert ordered_b[: len(ordered_a)] == ordered_a, "the audit log continues the source's"
                extra = {
                    r["action"] for r in b.execute("SELECT action FROM audit_log WHERE seq > ?", (len(ordered_a),))
                }
                allowed = set(audit_may_add) | (SERVER_AUDIT_ACTIONS if dst_ran_a_server else set())
                assert extra <= allowed, extra
            elif table == "meta":  # a backup's content digest is the backup file's, never a database's
                moves = {"backup_digest"} | (set(META_KEYS_THAT_MOVE) if dst_ran_a_server else set())
                kept_a, kept_b = ([r for r in rows if r[0] not in moves] for rows in (rows_a, rows_b))
                assert kept_a == kept_b, "meta (vault salt, settings) is the same"
            else:
                assert rows_a == rows_b, f"table {table}: {len(rows_a)} rows in source, {len(rows_b)} in copy"
    finally:
        a.close()
        b.close()
    return counts


def verify_audit(path: Path | str, secret: str | None, expect_head: str | None = None) -> audit.VerifyResult:
    conn = open_plain(path)
    try:
        key = audit.chain_key(secret, vault.read_salt(conn)) if secret else None
        return audit.verify(conn, key, expect_head)
    finally:
        conn.close()


# -- writing sample rows ------------------------------------------------------------------------


def sample_trace(ts_ms: int, *, body: bytes | None = b'{"messages": "sample"}', **fields: Any) -> TraceRow:
    values: dict[str, Any] = dict(
        id=new_trace_id(ts_ms),
        ts=iso_utc(ts_ms),
        ts_ms=ts_ms,
        client_addr="127.0.0.1",
        endpoint="chat",
        dialect="openai",
        provider="openai",
        model="gpt-4o-mini",
        served_model="gpt-4o-mini-2024-07-18",
        stream=0,
        status=200,
        outcome="ok",
        latency_us=1234,
        ttfb_us=900,
        prompt_tokens=12,
        completion_tokens=5,
        cached_tokens=0,
        cache_write_tokens=0,
        reasoning_tokens=0,
        usage_estimated=0,
        cost_uc=4_800,
        cost_status="exact",
        upstream_request_id="req_1",
        error_type=None,
        error_message=None,
        key_id=None,
        project=None,
        parent_id=None,
        attempt=1,
        cache_hit=0,
        cost_saved_uc=None,
        request_body=body,
        response_body=body,
    )
    values.update(fields)
    return TraceRow(**values)


@contextlib.contextmanager
def _trace_columns(present: list[str]) -> Iterator[None]:
    """The product's trace writer, for a while, writing only the ``present`` columns (an older schema's)."""
    saved = traces_module.INSERT_TRACE, traces_module._VALUES
    traces_module.INSERT_TRACE = f"INSERT INTO traces ({', '.join(present)}) VALUES ({', '.join('?' * len(present))})"
    traces_module._VALUES = operator.attrgetter(*present)
    try:
        yield
    finally:
        traces_module.INSERT_TRACE, traces_module._VALUES = saved


def schema_columns(conn: sqlite3.Connection) -> contextlib.AbstractContextManager[None]:
    """The product's trace writer, for a while, writing only the columns this database's ``traces`` has."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(traces)")}
    return _trace_columns([c for c in traces_module._COLUMNS if c in columns])


def write_trace(conn: sqlite3.Connection, row: TraceRow, v9: bool = True) -> None:
    """``row.write``, on a database of any schema version: columns and rollups it does not have yet are left out."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(traces)")}
    if "end_user" in columns:
        v18 = "search_rowid" in {r[1] for r in conn.execute("PRAGMA table_info(trace_bodies)")}
        v28 = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'rollups_users_months'").fetchone() is not None
        with _trace_columns([c for c in traces_module._COLUMNS if c in columns]):  # before 0031: no served_mode
            row.write(conn, v9=v9, v18=v18, v28=v28)
        return
    present = [c for c in traces_module._COLUMNS if c in columns]  # the columns of its schema
    conn.execute(
        f"INSERT INTO traces ({', '.join(present)}) VALUES ({', '.join('?' * len(present))})",
        [getattr(row, c) for c in present],
    )
    conn.execute(
        "INSERT INTO trace_bodies (trace_id, request, response) VALUES (?, ?, ?)",
        (row.id, zlib.compress(row.request_body or b""), zlib.compress(row.response_body or b"")),
    )
    counts = (int(row.status >= 400), row.prompt_tokens or 0, row.completion_tokens or 0, 0, 0, 0, row.cost_uc or 0, 0)
    conn.execute(traces_module._ROLLUP, (row.ts[:10], "", "", row.provider, row.served_model, 1, *counts))


def write_known_rows(conn: sqlite3.Connection, secret: str | None, now_ms: int | None = None) -> None:
    """Realistic rows through the product's own writers: traces (+bodies, rollups), audit, salt."""
    now_ms = now_ms or int(time.time() * 1000)
    conn.execute("BEGIN IMMEDIATE")
    v9 = "trace_search" in user_tables(conn)  # the search index and latency histograms: schema 0009 on
    for i in range(5):
        write_trace(conn, sample_trace(now_ms - i * 60_000, end_user="sample-user", tags='{"team": "a"}'), v9=v9)
    salt_is_new = vault.read_salt(conn) is None
    key = audit.chain_key(secret, vault.get_or_create_salt(conn)) if secret else None
    audit.ensure_keyed_tail(conn, actor="cli:test", key=key, salt_is_new=salt_is_new)
    audit.append(conn, actor="cli:test", action="test.sample", target="upgrade", details={"n": 1}, key=key)
    conn.execute("COMMIT")


def _sample_value(decl_type: str, table: str, column: str, attempt: int) -> Any:
    t = (decl_type or "").upper()
    if "INT" in t:
        return 1 + attempt
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return 1.5
    if "BLOB" in t:
        return b"\x00sample"
    return ["sample", "{}", "0"][attempt] if attempt < 3 else f"{table}.{column}"


def fill_generic(conn: sqlite3.Connection, table: str, attempts: int = 3, _depth: int = 0) -> None:
    """Insert one plausible row into ``table`` from its declared columns and foreign keys.

    Parents referenced by foreign keys get a row first. A table whose constraints defeat
    this must get a builder in the test that calls this (the assertion says which).
    """
    fks = {fk[3]: (fk[2], fk[4]) for fk in conn.execute(f'PRAGMA foreign_key_list("{table}")')}
    info = list(conn.execute(f'PRAGMA table_info("{table}")'))
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0] or ""
    last_error: Exception | None = None
    for attempt in range(attempts):
        values: dict[str, Any] = {}
        for _cid, name, decl, _notnull, default, pk in info:
            if name in fks:
                parent, parent_col = fks[name]
                if parent == table:
                    continue
                row = conn.execute(f'SELECT "{parent_col or "rowid"}" FROM "{parent}" LIMIT 1').fetchone()
                if row is None and _depth < 5:
                    fill_generic(conn, parent, attempts, _depth + 1)
                    row = conn.execute(f'SELECT "{parent_col or "rowid"}" FROM "{parent}" LIMIT 1').fetchone()
                values[name] = row[0] if row else None
            elif pk and "INT" in (decl or "").upper() and len([c for c in info if c[5]]) == 1:
                continue  # rowid alias: let SQLite number it
            elif default is None:  # columns with a default keep it
                allowed = re.search(rf'CHECK\s*\(\s*"?{re.escape(name)}"?\s+IN\s*\(\s*([^,)]+)', sql, re.I)
                values[name] = (
                    conn.execute(f"SELECT {allowed.group(1)}").fetchone()[0]
                    if allowed
                    else _sample_value(decl, table, name, attempt)
                )
                if pk:
                    values[name] = (
                        f"sample-{table}-{attempt}-{time.monotonic_ns()}"
                        if not isinstance(values[name], int)
                        else 10_000 + time.monotonic_ns() % 1_000_000
                    )
        cols = ", ".join(f'"{c}"' for c in values)
        marks = ", ".join("?" for _ in values)
        try:
            conn.execute("SAVEPOINT fill")
            conn.execute(f'INSERT INTO "{table}" ({cols}) VALUES ({marks})', list(values.values()))
            conn.execute("RELEASE fill")
            return
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK TO fill")
            conn.execute("RELEASE fill")
            last_error = exc
    raise AssertionError(
        f"could not make a sample row for table {table!r} ({last_error}); "
        "add a builder for it to ROW_BUILDERS in tests/test_upgrades.py"
    )

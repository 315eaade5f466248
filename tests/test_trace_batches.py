"""The writer writes a batch of traces together (multi-row inserts, rollups summed per row first):
the database must end up exactly as if each trace had been written on its own, on both stores."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockyard.dburl import parse_postgres
from stockyard.store import Store, Writer, db
from stockyard.store.backends import Backend, PostgresBackend, SqliteBackend
from stockyard.store.pg import PgConnection
from stockyard.store.traces import TraceRow, iso_utc

DAY_MS = 86_400_000
START_MS = 1_795_000_000_000
TABLES = {  # table → its columns in a stable order
    "traces": "id, ts_ms, key_id, project, end_user, tags, cost_uc, status, outcome, parent_id",
    "trace_bodies": "trace_id, request, response, request_truncated, response_truncated",
    "trace_search": "trace_id, body",
    "rollups_daily": "day, key_id, project, provider, model, requests, errors, prompt_tokens, completion_tokens, "
    "cached_tokens, cache_write_tokens, reasoning_tokens, cost_uc, unknown_cost",
    "rollups_users": "day, key_id, project, end_user, requests, errors, prompt_tokens, cost_uc, unknown_cost",
    "rollups_tags": "day, name, value, requests, errors, prompt_tokens, cost_uc, unknown_cost",
    "latency_minutes": "minute, bucket, count",
}


def mixed(n: int) -> list[TraceRow]:
    """Traces over two days and a few minutes: keys, no key, users, tags, errors, unknown costs,
    retried attempts, rows with and without bodies, and many sharing one rollup row."""
    rows = []
    for i in range(n):
        ms = START_MS + (i % 2) * DAY_MS + (i % 5) * 60_000 + i
        error, unknown = i % 7 == 3, i % 11 == 5
        rows.append(
            TraceRow(
                id=f"tr_{ms:012x}{i:04d}", ts=iso_utc(ms), ts_ms=ms, client_addr="127.0.0.1", endpoint="chat",
                dialect="openai", provider=("openai", "anthropic", None)[i % 3], model="gpt-4o-mini",
                served_model=None if i % 4 == 0 else f"served-{i % 3}", stream=i % 2, status=502 if error else 200,
                outcome="upstream_error" if error else "ok", latency_us=1_000 + 3_000 * (i % 9), ttfb_us=None,
                prompt_tokens=None if error else 10 + i, completion_tokens=None if error else i % 13,
                cached_tokens=i % 3, cache_write_tokens=0, reasoning_tokens=i % 2, usage_estimated=0,
                cost_uc=None if unknown or error else 100 * i, cost_status="unknown" if unknown else "exact",
                upstream_request_id=None, error_type=None, error_message=None,
                key_id=None if i % 6 == 0 else f"key_{i % 4}", project=None if i % 5 == 0 else "p1",
                parent_id=f"tr_parent{i}" if i % 8 == 1 else None, attempt=1, cache_hit=0, cost_saved_uc=None,
                end_user=None if i % 3 == 0 else f"user-{i % 5}",
                tags=json.dumps({"team": f"t{i % 3}", "env": "prod"}) if i % 2 else None,
                request_body=None if i % 5 == 2 else f'{{"q": "question {i} \\u00fc"}}'.encode(),
                response_body=None if i % 5 in (2, 3) else f"answer {i}".encode(),
            )
        )  # fmt: skip
    return rows


def source(conn, table: str) -> str:
    """Where a table's rows are read: SQLite's search index keeps no text (schema 0027), so its
    rows are each linked body's id and the text its delete trigger hands back for it."""
    if table != "trace_search" or db.dialect_of(conn) == "postgresql":
        return table
    return (
        "(SELECT trace_id, stockyard_search_text(request, response) AS body FROM trace_bodies"
        " WHERE search_rowid IS NOT NULL)"
    )


def contents(backend: Backend) -> dict[str, list[tuple]]:
    store = Store(backend)
    try:
        conn = store.read()
        return {
            table: [tuple(r) for r in conn.execute(f"SELECT {columns} FROM {source(conn, table)} ORDER BY {columns}")]
            for table, columns in TABLES.items()
        }
    finally:
        store.close()


@pytest.fixture
def second(database, request, tmp_path) -> Backend:
    """A second fresh database of the same kind as ``database``."""
    if isinstance(database, SqliteBackend):
        return SqliteBackend(tmp_path / "one-by-one.db")
    return PostgresBackend(parse_postgres(request.getfixturevalue("pg_cluster").database(), {}))


def test_a_batch_of_mixed_traces_equals_writing_them_one_by_one(database, second, monkeypatch):
    calls: list[int] = []
    write_many = TraceRow.write_many

    def counted(conn: Any, rows: list[TraceRow], **kw: Any) -> None:
        calls.append(len(rows))
        write_many(conn, rows, **kw)

    monkeypatch.setattr(TraceRow, "write_many", staticmethod(counted))
    rows = mixed(300)
    for backend in (database, second):
        backend.open_and_migrate()
    one_by_one = Store(second)
    for row in rows:
        one_by_one.write(row.write)  # a transaction per trace: write_many of one row
    one_by_one.close()
    writer = Writer(database, maxsize=1000, batch_max=1000)
    calls.clear()
    for n, row in enumerate(rows):
        row.pack()  # as the tracer does
        writer.submit(row.write)
        if n == 199:  # another kind of job between traces
            writer.submit(lambda conn: conn.execute("INSERT INTO meta (key, value) VALUES ('between', '1')"))
    writer.start()  # everything queued: one batch, traces written 200 and 100 at a time
    writer.call(lambda conn: None)
    writer.stop()
    assert calls == [200, 100]
    batched = contents(database)
    assert batched == contents(second)
    assert len(batched["traces"]) == 300 and len(batched["trace_search"]) == 240
    assert sum(r[5] for r in batched["rollups_daily"]) == 300 and len(batched["rollups_daily"]) < 100
    # And each rollup row is the sum of its traces, counted independently of the writer's code.
    spend: dict[Any, int] = {}
    for r in rows:
        day = r.ts[:10]
        spend[day, r.key_id or ""] = spend.get((day, r.key_id or ""), 0) + (r.cost_uc or 0)
    by_key: dict[Any, int] = {}
    for r in batched["rollups_daily"]:
        by_key[r[0], r[1]] = by_key.get((r[0], r[1]), 0) + r[12]
    assert by_key == spend


def test_a_bad_trace_in_a_batch_leaves_the_others_and_their_rollups(database):
    """A trace the database refuses (its id taken) is dropped alone: the batch is redone trace by
    trace and the rollups count only the traces written."""
    database.open_and_migrate()
    rows = mixed(40)
    writer = Writer(database, maxsize=100, batch_max=100)
    for row in rows:
        writer.submit(row.write)
    writer.submit(rows[7].write)  # the same id again
    writer.start()
    writer.call(lambda conn: None)
    writer.stop()
    assert writer.stats.written == 40 + 1  # the 40 traces, and the call
    got = contents(database)
    assert len(got["traces"]) == 40
    assert sum(r[5] for r in got["rollups_daily"]) == 40
    assert sum(r[12] for r in got["rollups_daily"]) == sum(r.cost_uc or 0 for r in rows)


def test_refusals_make_no_rollup_rows_of_their_own_model_user_or_tags(database):
    """Was: every refused request (a rate limit's 429, a spent budget, a bad request) made a
    ``rollups_users`` row for its end user, a ``rollups_tags`` row per tag and a ``rollups_daily``
    row for its model — rows kept for ever, named by whatever the client made up. A refusal costs
    nothing: it is counted in its day, key and project's row alone (no provider, no model)."""
    database.open_and_migrate()
    base = mixed(1)[0]
    day, ms = base.ts[:10], base.ts_ms
    refusals = [
        replace(
            base,
            id=f"tr_{ms:012x}r{i:03d}",
            provider=None,
            served_model=None,
            model=f"made-up-{i}",
            status=429,
            outcome="rejected",
            error_type="rate_limit_exceeded",
            prompt_tokens=None,
            completion_tokens=None,
            cost_uc=None,
            cost_status="none",
            key_id="key_a",
            project="p1",
            parent_id=None,
            end_user=f"user-{i}",
            tags=json.dumps({f"tag{j}-{i}": "v" * 500 for j in range(16)}),
        )
        for i in range(50)
    ]
    answered = replace(
        base, id=f"tr_{ms:012x}a000", provider="openai", served_model="gpt-4o-mini", status=200, outcome="ok",
        cost_uc=700, cost_status="exact", key_id="key_a", project="p1", parent_id=None, end_user="alice",
        tags=json.dumps({"team": "search"}),
    )  # fmt: skip
    # Refused after a provider was chosen (a batch file's line checked against the key): not a refusal
    # before any provider, so counted like any request that reached one.
    checked = replace(answered, id=f"tr_{ms:012x}c000", status=403, outcome="rejected", cost_uc=0, end_user="bob")
    store = Store(database)
    for row in (*refusals, answered, checked):
        store.write(row.write)
    store.close()
    got = contents(database)
    assert len(got["traces"]) == 52  # each refusal written here is a trace (how many are: tracing.Tracer)
    assert [r[:4] for r in got["rollups_users"]] == [(day, "key_a", "p1", "alice"), (day, "key_a", "p1", "bob")]
    assert [r[:3] for r in got["rollups_tags"]] == [(day, "team", "search")]
    daily = {r[:5]: r[5:] for r in got["rollups_daily"]}
    assert set(daily) == {(day, "key_a", "p1", "", ""), (day, "key_a", "p1", "openai", "gpt-4o-mini")}
    requests, errors, *_, cost, unknown = daily[day, "key_a", "p1", "", ""]
    assert (requests, errors, cost, unknown) == (50, 50, 0, 0)
    assert daily[day, "key_a", "p1", "openai", "gpt-4o-mini"][:2] == (2, 1)


def test_postgresql_multi_row_inserts_come_in_power_of_two_chunks(pg_url):
    """300 rows of an upsert: chunks of 256, 32, 8 and 4 rows, every row in, a few prepared statements."""
    backend = PostgresBackend(parse_postgres(pg_url, {}))
    backend.open_and_migrate()
    conn = backend.connect()
    assert isinstance(conn, PgConnection)
    try:
        conn.insert_many(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(f"k{i:03d}", str(i)) for i in range(300)],
        )
        assert conn.execute("SELECT count(*), min(key), max(key) FROM meta WHERE key LIKE 'k%'").fetchone() == (
            300,
            "k000",
            "k299",
        )
        assert sum("INSERT INTO meta" in s for s in conn._prepared) == 4
    finally:
        conn.close()


ODD_TEXTS = ["plain", "back\\slash", "\\N", "tab\there", "new\nline", "cr\rlf\r\n", "ü € 🦙", "", "\\x00ff", "\\."]


def test_postgresql_plain_multi_row_inserts_go_as_one_copy_and_store_what_inserts_store(pg_url):
    """A plain INSERT of many rows goes as one ``COPY … FROM STDIN`` (text format, encoded by
    ``pg._copy_rows``): the rows read back exactly as a row-by-row INSERT stores them — backslashes,
    tabs, line ends, ``\\N`` as text, NULL, big and negative integers, flags, bytes of every value —
    with no prepared statement; a row the table refuses fails the whole COPY, as the INSERT did."""
    import sqlite3

    backend = PostgresBackend(parse_postgres(pg_url, {}))
    backend.open_and_migrate()
    conn = backend.connect()
    assert isinstance(conn, PgConnection)
    columns = (
        "id, ts, ts_ms, client_addr, endpoint, dialect, model, stream, status, outcome, latency_us, cost_uc, "
        "error_message"
    )
    marks = ", ".join("?" * len(columns.split(", ")))
    sql = f"INSERT INTO traces ({columns}) VALUES ({marks})"
    rows = [
        (
            f"tr_copy{i:03d}", "2026-12-06T00:00:00.000Z", 2**53 + i, "::1", ODD_TEXTS[i % len(ODD_TEXTS)], "openai",
            ODD_TEXTS[(i + 3) % len(ODD_TEXTS)], i % 2 == 0, 200, "ok", -i, None if i % 4 == 0 else 10**15 + i,
            None if i % 3 == 0 else ODD_TEXTS[(i + 5) % len(ODD_TEXTS)],
        )
        for i in range(40)
    ]  # fmt: skip
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.insert_many(sql, rows)
        conn.execute("COMMIT")
        assert not any("INSERT INTO traces" in s for s in conn._prepared)  # it went as a COPY
        got = conn.execute(f"SELECT {columns} FROM traces WHERE id LIKE 'tr_copy%' ORDER BY id").fetchall()
        for i in range(3):  # the same rows one by one, for comparison
            conn.execute(sql, (f"tr_one{i:03d}", *rows[i][1:]))
        one = conn.execute(f"SELECT {columns} FROM traces WHERE id LIKE 'tr_one%' ORDER BY id").fetchall()
        assert [tuple(r)[1:] for r in one] == [tuple(r)[1:] for r in got[:3]]
        assert [tuple(r) for r in got] == [(*r[:7], int(r[7]), *r[8:]) for r in rows]
        bodies = [(f"tr_copy{i:03d}", bytes(range(256))[i:] + b"\\\t\n", None, 0, i % 2) for i in range(20)]
        conn.execute("BEGIN IMMEDIATE")
        conn.insert_many(
            "INSERT INTO trace_bodies (trace_id, request, response, request_truncated, response_truncated) "
            "VALUES (?, ?, ?, ?, ?)",
            bodies,
        )
        conn.execute("COMMIT")
        stored = conn.execute(
            "SELECT trace_id, request, response, request_truncated, response_truncated FROM trace_bodies "
            "WHERE trace_id LIKE 'tr_copy%' ORDER BY trace_id"
        ).fetchall()
        assert [tuple(r) for r in stored] == bodies
        conn.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.IntegrityError):
            conn.insert_many(sql, [(f"tr_new{i:03d}", *rows[0][1:]) for i in range(20)] + [rows[5]])  # taken
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT count(*) FROM traces WHERE id LIKE 'tr_new%'").fetchone()[0] == 0
    finally:
        conn.close()


def test_postgresql_multi_row_insert_or_ignore_keeps_the_rows_there_and_adds_the_rest(pg_url):
    """``INSERT OR IGNORE`` goes as multi-row INSERTs too (``Ownership.claim_new``: a batch's results
    may name thousands of objects); was Unportable. A row whose key is there keeps its value."""
    backend = PostgresBackend(parse_postgres(pg_url, {}))
    backend.open_and_migrate()
    conn = backend.connect()
    try:
        conn.execute("INSERT INTO meta (key, value) VALUES ('i001', 'first')")
        sql = "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)"
        conn.insert_many(sql, [(f"i{i:03d}", "again") for i in range(300)])
        rows = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'i%'").fetchall())
        assert len(rows) == 300 and rows["i001"] == "first" and rows["i299"] == "again"
    finally:
        conn.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(), st.integers(), st.booleans()), max_size=30))
def test_postgresql_binds_texts_integers_flags_and_null_as_pg8000s_converters_do(values):
    """The writer's bind parameters (the rollup upserts' ~25 per trace) are made in one pass by
    ``pg._bound``: the same text pg8000's converters make after ``_value_in`` (a flag as 0/1)."""
    from pg8000.converters import PY_TYPES, make_params

    from stockyard.store.pg import _bound, _value_in

    assert _bound(values) == make_params(PY_TYPES, tuple(_value_in(v) for v in values))


def test_postgresql_bind_leaves_other_types_to_pg8000s_converters(pg_url):
    """A value of another type (a float, bytes, a subclass of int or str) makes ``_bound`` step
    aside: the statement's values go through pg8000's converters, as before, and are stored so."""
    import enum

    from stockyard.store.pg import _bound

    class Level(enum.IntEnum):
        HIGH = 3

    class Name(str):
        pass

    for odd in (1.5, b"\x00", Level.HIGH, Name("n")):
        assert _bound(["text", 1, odd]) is None
    backend = PostgresBackend(parse_postgres(pg_url, {}))
    backend.open_and_migrate()
    conn = backend.connect()
    try:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("float", 1.5))
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (Name("flag"), True))
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("big", -(2**63)))
        got = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('float', 'flag', 'big')").fetchall())
        assert got == {"float": "1.5", "flag": "1", "big": str(-(2**63))}
    finally:
        conn.close()

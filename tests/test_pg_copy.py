"""The PostgreSQL writer appends traces, bodies and search text with a binary COPY: every value
must come back exactly as a one-row INSERT stores it, and a batch COPY refuses is redone trace by
trace like a batch of INSERTs. Connections send each message at once (TCP_NODELAY)."""

from __future__ import annotations

import dataclasses
import socket
import zlib

import pytest
from test_trace_batches import contents, mixed

from stockyard.dburl import parse_postgres
from stockyard.store import Writer
from stockyard.store.backends import PostgresBackend
from stockyard.store.pg import PgConnection, copy_binary
from stockyard.store.traces import TraceRow, get_trace, list_traces

# Text that an escaping COPY format would have to get right: tabs, newlines, CR, backslashes,
# the text format's NULL marker, quotes, non-ASCII and astral characters, an empty string.
AWKWARD = ["a\tb", "line1\nline2\r\n", "back\\slash \\N \\x41", "\\N", "'quoted' \"double\"", "ü € 𝄞 😀", ""]


def awkward_rows() -> list[TraceRow]:
    rows = mixed(len(AWKWARD) * 2)
    out = []
    for i, row in enumerate(rows):
        text = AWKWARD[i % len(AWKWARD)]
        out.append(
            dataclasses.replace(
                row,
                error_message=text,
                upstream_request_id=text or None,
                tags=None,
                cost_uc=[-(2**40), 2**40 + 7, 0, None][i % 4],
                request_body=f'{{"q": "{text} word{i}"}}'.encode(),
                response_body=text.encode() + bytes(range(1, 128)) + b"\xff\xfe" if i % 2 else None,
                request_truncated=bool(i % 3),
            )
        )
    return out


def pg_backend(cluster) -> PostgresBackend:
    backend = PostgresBackend(parse_postgres(cluster.database(), {}))
    backend.open_and_migrate()
    return backend


def write_all(backend: PostgresBackend, rows: list[TraceRow], *, copy: bool) -> None:
    conn = backend.connect()
    try:
        if not copy:
            conn.copy_in = None  # type: ignore[assignment]  # the multi-row INSERT path
        conn.execute("BEGIN IMMEDIATE")
        TraceRow.write_many(conn, rows)
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_copy_stores_every_value_as_insert_does(pg_cluster):
    rows = awkward_rows()
    copied, inserted = pg_backend(pg_cluster), pg_backend(pg_cluster)
    write_all(copied, rows, copy=True)
    write_all(inserted, rows, copy=False)
    assert contents(copied) == contents(inserted)
    conn = copied.connect()
    try:
        for row in rows:
            got = get_trace(conn, row.id)
            assert got is not None
            assert (got["error_message"], got["upstream_request_id"], got["cost_uc"]) == (
                row.error_message,
                row.upstream_request_id,
                row.cost_uc,
            )
            assert got["request_body"] == row.request_body.decode()  # type: ignore[union-attr]
            assert got["request_truncated"] == row.request_truncated
            stored = conn.execute("SELECT response FROM trace_bodies WHERE trace_id = ?", (row.id,)).fetchone()[0]
            assert (zlib.decompress(stored) if stored else None) == row.response_body
        found = list_traces(conn, search="word3")
        assert [t["id"] for t in found] == [rows[3].id]
    finally:
        conn.close()


def test_the_writer_appends_traces_with_copy_not_insert(pg_url):
    backend = PostgresBackend(parse_postgres(pg_url, {}))
    backend.open_and_migrate()
    writer = Writer(backend, maxsize=100, batch_max=100)
    for row in mixed(50):
        writer.submit(row.write)
    writer.start()
    prepared = writer.call(lambda conn: list(conn._prepared))
    writer.stop()
    assert not [s for s in prepared if "INTO traces" in s or "INTO trace_bodies" in s or "INTO trace_search" in s]
    assert any("INTO rollups_daily" in s for s in prepared)  # upserts stay INSERT … ON CONFLICT
    assert len(contents(backend)["traces"]) == 50


def test_a_trace_copy_refuses_is_dropped_alone(pg_url):
    """PostgreSQL text cannot hold NUL: COPY refuses the whole batch, the writer redoes it trace by
    trace, and only that trace is lost (with its rollup counts), as with INSERT."""
    backend = PostgresBackend(parse_postgres(pg_url, {}))
    backend.open_and_migrate()
    rows = mixed(30)
    rows[11] = dataclasses.replace(rows[11], error_message="nul\x00here")
    writer = Writer(backend, maxsize=100, batch_max=100)
    for row in rows:
        writer.submit(row.write)
    writer.start()
    writer.call(lambda conn: None)
    writer.stop()
    got = contents(backend)
    assert len(got["traces"]) == 29 and rows[11].id not in {r[0] for r in got["traces"]}
    assert sum(r[5] for r in got["rollups_daily"]) == 29
    assert len(got["trace_search"]) == sum(
        1 for i, r in enumerate(rows) if i != 11 and (r.request_body or r.response_body)
    )


def test_copy_refuses_a_value_it_has_no_binary_form_for(pg_url):
    with pytest.raises(TypeError):
        copy_binary([(1.5,)])
    backend = PostgresBackend(parse_postgres(pg_url, {}))
    backend.open_and_migrate()
    conn = backend.connect()
    assert isinstance(conn, PgConnection)
    try:
        conn.copy_in("meta", ("key", "value"), [])  # nothing to send: no round trip, no error
        conn.copy_in("meta", ("key", "value"), [("a", "1"), ("b", "2\t\n")])
        assert conn.execute("SELECT key, value FROM meta WHERE key IN ('a', 'b') ORDER BY key").fetchall() == [
            ("a", "1"),
            ("b", "2\t\n"),
        ]
    finally:
        conn.close()


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_connections_send_each_message_at_once(pg_cluster, sslmode):
    """TCP_NODELAY, as libpq sets it: with Nagle's algorithm the tail of a large message (a COPY,
    a multi-row upsert) waited for the server's delayed ACK, ~0.1 ms of idle time per trace."""
    url = pg_cluster.database().replace("sslmode=disable", f"sslmode={sslmode}")
    conn = PostgresBackend(parse_postgres(url, {})).connect()
    assert isinstance(conn, PgConnection)
    try:
        assert conn._conn._usock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        conn._reopen()  # a connection opened again after PostgreSQL restarted: the same
        assert conn._conn._usock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        conn.close()

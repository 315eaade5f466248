"""A lock another session holds bounds a PostgreSQL statement's wait as SQLite's busy timeout does.

Was: on SQLite every statement waits at most ``STOCKYARD_BUSY_TIMEOUT_MS`` for a lock another
connection holds, on PostgreSQL without bound. While another session held the advisory write lock
(another replica, ``BEGIN IMMEDIATE``) or a table (``LOCK TABLE``, the ``VACUUM FULL`` maintenance
takes), the writer thread waited for ever: an admin change waited out ``Writer.call``'s 30 s and
was a 500, its write committing later; a request reading the held table hung as long.

Now every connection sets ``lock_timeout`` to the busy timeout: a held lock ends the wait with
SQLSTATE 55P03. The writer keeps its fire-and-forget records waiting and retries them (as for a
lost database), so no trace is lost; the writes and reads of requests fail at once as a 503
``database_unavailable`` in the client's shape (on SQLite too, where a busy database was a 500);
``/readyz`` is 503 while writes fail. Real parts: a PostgreSQL cluster, a second pg8000 session
holding the lock, server processes of the built pyz, the mock upstream.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Callable

import pg8000.native
import pytest
from conftest import TEST_STORE, ServerProcess, mock_env, wait_for

from stockyard.dburl import parse_postgres
from stockyard.store.pg import MIGRATE_LOCK_KEY, WRITE_LOCK_KEY

BUSY_MS = 1000
ADMIN = "admin-key-for-pglock-tests-0123456789"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
BOUND_S = 8.0  # a held lock is answered within this (the busy timeout is 1 s), never waited out


def session(pg_url: str) -> pg8000.native.Connection:
    """A second session on the server's database, as another replica or an operator's psql."""
    return pg8000.native.Connection(**parse_postgres(pg_url, {}).connect_args())


def hold_write_lock(conn: pg8000.native.Connection) -> None:
    """The advisory lock every write transaction of every replica queues on (``BEGIN IMMEDIATE``)."""
    conn.run(f"SELECT pg_advisory_lock({WRITE_LOCK_KEY})")


def hold_traces_table(conn: pg8000.native.Connection) -> None:
    """What ``VACUUM FULL traces`` takes: readers and writers of the table wait."""
    conn.run("BEGIN")
    conn.run("LOCK TABLE traces IN ACCESS EXCLUSIVE MODE")


HOLDS: dict[str, Callable[[pg8000.native.Connection], None]] = {
    "the advisory write lock": hold_write_lock,
    "LOCK TABLE traces": hold_traces_table,
}


def timed(server: ServerProcess, method: str, path: str, body=None, headers=None) -> tuple[int, dict, bytes]:
    began = time.monotonic()
    status, head, data = server.request(method, path, body, headers)
    took = time.monotonic() - began
    assert took < BOUND_S, f"{method} {path} took {took:.1f} s under a held lock ({status})"
    return status, head, data


@pytest.mark.parametrize("hold", list(HOLDS))
def test_a_held_lock_is_a_bounded_wait_and_no_trace_is_lost(pyz_path, cache_home, mock, pg_url, hold):
    """With another session holding ``hold``: proxied requests are answered (200, at once: a trace
    is fire-and-forget, and the writer keeps it waiting: ``writer_waiting_records``); an admin
    change is a 503 ``database_unavailable`` within the bound, not a 500 after 30 s; a read of the
    held table is that 503 too; ``/readyz`` is 503. Once the lock is let go, every trace of those
    requests is stored, the admin change works and ``/readyz`` is 200."""
    env = mock_env(cache_home, mock, STOCKYARD_BUSY_TIMEOUT_MS=str(BUSY_MS), STOCKYARD_ADMIN_KEY=ADMIN)
    server = ServerProcess(pyz_path, pg_url, env)
    server.keys = server.create_keys({"alice": []})
    server.start()
    holder = session(pg_url)
    try:
        status, head, _ = server.request("POST", "/v1/chat/completions", CHAT, server.auth("alice"))
        assert status == 200
        before = server.trace(head["x-stockyard-trace-id"])["id"]  # a trace stored before the hold

        HOLDS[hold](holder)
        traces = []
        for _ in range(4):
            status, head, body = timed(server, "POST", "/v1/chat/completions", CHAT, server.auth("alice"))
            assert status == 200, body
            traces.append(head["x-stockyard-trace-id"])
        wait_for(lambda: server.metric("writer_waiting_records") > 0, 15, "the traces to wait for the lock")

        status, _, body = timed(server, "POST", "/api/keys", {"name": "bob"}, ADMIN_AUTH)
        assert status == 503, body
        error = json.loads(body)["error"]
        assert error["code"] == "database_unavailable", error
        assert "another session holds a lock" in error["message"], error
        assert "SQLSTATE" not in error["message"] and "lock timeout" not in error["message"]  # the log's

        status, _, body = timed(server, "GET", f"/api/traces/{before}", headers=ADMIN_AUTH)
        if hold == "LOCK TABLE traces":  # the read waits for the table: refused after the busy timeout
            assert status == 503 and json.loads(body)["error"]["code"] == "database_unavailable", body
        else:  # an advisory lock holds no reader
            assert status == 200 and json.loads(body)["id"] == before, body

        wait_for(lambda: timed(server, "GET", "/readyz")[0] == 503, 15, "/readyz to report the held database")
    finally:
        holder.close()  # lets go of what it held

    rows = wait_for(
        lambda: len(found := server.db_rows(f"SELECT id FROM traces WHERE id IN ({','.join('?' * len(traces))})",
                                             tuple(traces))) == len(traces) and found,
        30,
        "every trace of the requests answered meanwhile",
    )  # fmt: skip
    assert sorted(r["id"] for r in rows) == sorted(traces)
    status, _, body = server.request("POST", "/api/keys", {"name": "bob"}, ADMIN_AUTH)
    assert status == 201, body
    wait_for(lambda: server.request("GET", "/readyz")[0] == 200, 15, "/readyz to be ready again")
    assert server.metric("records_dropped_total") == 0
    server.stop()
    assert "Traceback" not in server.log, server.log


def test_a_replica_starting_waits_for_another_ones_migration_past_the_busy_timeout(pyz_path, cache_home, mock, pg_url):
    """The migration lock is the one lock a starting server waits for without the busy timeout:
    another replica migrating (here: a session holding the lock for twice the busy timeout) is
    waited for, then the server starts — not one failed start per replica started beside it."""
    env = mock_env(cache_home, mock, STOCKYARD_BUSY_TIMEOUT_MS=str(BUSY_MS))
    first = ServerProcess(pyz_path, pg_url, env).start()  # the schema exists: the lock is all the next one meets
    first.stop()
    holder = session(pg_url)
    holder.run(f"SELECT pg_advisory_lock({MIGRATE_LOCK_KEY})")
    server = ServerProcess(pyz_path, pg_url, env)
    started = threading.Thread(target=server.start, kwargs={"timeout": 60}, daemon=True)
    waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    try:
        started.start()
        wait_for(lambda: holder.run(waiting)[0][0] > 0, 20, "the server to wait for the migration lock")
        time.sleep(2 * BUSY_MS / 1000)  # what is tested: a wait past the busy timeout (not a synchronisation)
        assert server.proc is not None and server.proc.poll() is None, server.log
        assert holder.run(waiting)[0][0] > 0, server.log
    finally:
        holder.close()
    started.join(60)
    try:
        assert server.port, server.log
        assert server.request("GET", "/readyz")[0] == 200
    finally:
        server.stop()
    assert "Traceback" not in server.log, server.log


@pytest.mark.skipif(TEST_STORE == "postgresql", reason="it holds an SQLite file (the others name PostgreSQL)")
def test_on_sqlite_an_admin_change_on_a_held_database_is_a_503(pyz_path, cache_home, mock, tmp_path):
    """The same answer on SQLite: an admin change while another process holds the file (``BEGIN
    EXCLUSIVE``) fails after the busy timeout as a 503 ``database_unavailable`` (was a 500 and a
    traceback in the log), and works once the file is let go."""
    env = mock_env(cache_home, mock, STOCKYARD_BUSY_TIMEOUT_MS=str(BUSY_MS), STOCKYARD_ADMIN_KEY=ADMIN)
    server = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    lock = sqlite3.connect(server.db, isolation_level=None, timeout=5)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        status, _, body = timed(server, "POST", "/api/keys", {"name": "bob"}, ADMIN_AUTH)
        assert status == 503, body
        error = json.loads(body)["error"]
        assert error["code"] == "database_unavailable", error
        assert "another session holds a lock" in error["message"], error
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    status, _, body = server.request("POST", "/api/keys", {"name": "bob"}, ADMIN_AUTH)
    assert status == 201, body
    server.stop()
    assert "Traceback" not in server.log, server.log

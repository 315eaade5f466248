"""A server's read connections on PostgreSQL are a bounded pool (store/pgpool.py).

Before, each request thread kept a connection of its own: a burst of 1,000 budgeted streams opened
one per thread, PostgreSQL's max_connections (100 by default) ran out, and budget loads, rate counts
and settlements failed ("sorry, too many clients already"). Now a thread takes a connection for a
statement (or a transaction) and gives it back.
"""

from __future__ import annotations

import gc
import signal
import sqlite3
import threading
import time

import pytest
from conftest import wait_for

from stockyard.dburl import parse_postgres
from stockyard.store import Store, pgpool
from stockyard.store.backends import PostgresBackend

OTHERS = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"


@pytest.fixture
def backend(pg_url):
    backend = PostgresBackend(parse_postgres(pg_url, {}))
    backend.open_and_migrate()
    return backend


@pytest.fixture
def small_pool():
    before = pgpool.READERS_MAX, pgpool.WAIT_S
    yield pgpool
    pgpool.READERS_MAX, pgpool.WAIT_S = before


def test_three_hundred_threads_reading_at_once_share_the_pools_connections(backend, pg_cluster):
    admin = pg_cluster.admin(backend.url.database)
    wait_for(lambda: admin.run(OTHERS) == [[0]], what="the migration's session to end")
    store = Store(backend)
    start = threading.Barrier(300)
    pids: set[int] = set()
    errors: list[BaseException] = []
    most = [0]

    def request() -> None:  # what a budgeted request's thread does: statements and a short transaction
        start.wait()
        try:
            for _ in range(3):
                pids.add(store.read().execute("SELECT pg_backend_pid()").fetchone()[0])
            conn = store.read()
            conn.execute("BEGIN")
            inside = {conn.execute("SELECT pg_backend_pid()").fetchone()[0] for _ in range(3)}
            conn.execute("COMMIT")
            assert len(inside) == 1  # a transaction keeps its connection to its end
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.end_reads()

    threads = [threading.Thread(target=request) for _ in range(300)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        most[0] = max(most[0], admin.run(OTHERS)[0][0])
        time.sleep(0.01)  # sampling the server's sessions while the threads run, not waiting for them
    assert errors == []
    assert len(pids) <= pgpool.READERS_MAX and most[0] <= pgpool.READERS_MAX
    store.close()
    wait_for(lambda: admin.run(OTHERS) == [[0]], what="closing the store to close the pool's connections")
    admin.close()


def test_a_full_pool_waits_for_a_connection_and_then_says_the_database_is_busy(backend, small_pool):
    small_pool.READERS_MAX, small_pool.WAIT_S = 1, 0.3
    store = Store(backend)
    conn = store.read()
    conn.execute("BEGIN")  # holds the pool's one connection
    got: list[object] = []

    def other() -> None:
        try:
            got.append(store.read().execute("SELECT 7").fetchone()[0])
        except sqlite3.OperationalError as exc:
            got.append(exc)

    waiter = threading.Thread(target=other)
    waiter.start()
    waiter.join()
    assert isinstance(got[0], sqlite3.OperationalError) and getattr(got[0], "database_failed", False)
    assert "STOCKYARD_PG_CONNECTIONS" in str(got[0])

    released = threading.Event()
    waiter = threading.Thread(target=lambda: (released.wait(), other()))
    small_pool.WAIT_S = 10.0
    waiter.start()
    released.set()
    conn.execute("COMMIT")  # the connection goes back: the waiting thread gets it
    waiter.join()
    assert got[1] == 7
    store.close()


def test_a_thread_that_ends_inside_a_transaction_gives_its_connection_back_rolled_back(backend, small_pool):
    small_pool.READERS_MAX, small_pool.WAIT_S = 1, 5.0
    store = Store(backend)

    def forgetful() -> None:
        conn = store.read()
        conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        conn.execute("INSERT INTO meta (key, value) VALUES ('left', 'open')")

    thread = threading.Thread(target=forgetful)
    thread.start()
    thread.join()
    del thread
    gc.collect()
    conn = store.read()
    assert conn.execute("SELECT count(*) FROM meta WHERE key = 'left'").fetchone()[0] == 0
    assert not conn.in_transaction
    store.close()


def test_a_connection_that_broke_is_not_given_to_the_next_thread(backend, pg_cluster, small_pool):
    small_pool.READERS_MAX = 2
    store = Store(backend)
    admin = pg_cluster.admin(backend.url.database)
    first = store.read().execute("SELECT pg_backend_pid()").fetchone()[0]
    admin.run(f"SELECT pg_terminate_backend({first})")
    seen = []
    thread = threading.Thread(target=lambda: seen.append(store.read().execute("SELECT pg_backend_pid()").fetchone()[0]))
    thread.start()
    thread.join()
    assert seen and seen[0] != first
    store.close()
    admin.close()


def test_the_pools_size_is_read_from_stockyard_pg_connections():
    from stockyard import config

    assert config.load({}, {}).pg_connections == 20
    assert config.load({}, {"STOCKYARD_PG_CONNECTIONS": "64"}).pg_connections == 64
    for bad in ("0", "-3", "many"):
        with pytest.raises(ValueError, match="STOCKYARD_PG_CONNECTIONS must be a positive whole number"):
            config.load({}, {"STOCKYARD_PG_CONNECTIONS": bad})


class Interrupted(BaseException):
    """What a signal handler raises in the middle of a statement (as KeyboardInterrupt does)."""


def test_a_statement_interrupted_midway_never_hands_its_answer_to_the_next_statement(backend, small_pool):
    small_pool.READERS_MAX = 1  # the next statement gets the very connection the interrupted one used
    store = Store(backend)

    def interrupt(signum, frame):
        raise Interrupted

    before = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # while PostgreSQL sleeps, before it answers
        with pytest.raises(Interrupted):
            store.read().execute("SELECT 'first answer', pg_sleep(2)")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
    assert store.read().execute("SELECT 'second answer'").fetchone()[0] == "second answer"
    assert not store.read().in_transaction
    store.close()


def test_a_statement_interrupted_inside_a_transaction_never_hands_its_answer_on(backend, small_pool):
    small_pool.READERS_MAX = 1
    store = Store(backend)
    conn = store.read()

    def interrupt(signum, frame):
        raise Interrupted

    before = signal.signal(signal.SIGALRM, interrupt)
    try:
        conn.execute("BEGIN")
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            conn.execute("SELECT 'first answer', pg_sleep(1)")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
    if conn.in_transaction:  # what a caller's error path does
        conn.execute("ROLLBACK")
    store.end_reads()
    answers = [store.read().execute(f"SELECT 'answer {n}'").fetchone()[0] for n in range(3)]
    assert answers == ["answer 0", "answer 1", "answer 2"]
    assert not store.read().in_transaction
    store.close()


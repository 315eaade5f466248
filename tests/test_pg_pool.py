"""A server's read connections on PostgreSQL are a bounded pool (store/pgpool.py).

Before, each request thread kept a connection of its own: a burst of 1,000 budgeted streams opened
one per thread, PostgreSQL's max_connections (100 by default) ran out, and budget loads, rate counts
and settlements failed ("sorry, too many clients already"). Now a thread takes a connection for a
statement (or a transaction) and gives it back.
"""

from __future__ import annotations

import gc
import itertools
import os
import signal
import sqlite3
import threading
import time

import pytest
from conftest import wait_for

from stockyard.dburl import parse_postgres
from stockyard.store import Store, pgpool
from stockyard.store.backends import PostgresBackend

# client sessions only: an autovacuum worker on this database shows there too (backend_type tells them apart)
OTHERS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND backend_type = 'client backend'"
)


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
    read_in_a_thread(store, got).join()
    assert isinstance(got[0], sqlite3.OperationalError) and getattr(got[0], "database_failed", False)
    assert "STOCKYARD_PG_CONNECTIONS" in str(got[0])

    small_pool.WAIT_S = 10.0
    waiter = read_in_a_thread(store, got)
    conn.execute("COMMIT")  # the connection goes back: the waiting thread gets it
    waiter.join()
    assert got[1] == "answer"
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


@pytest.fixture
def limited(pg_cluster):
    """A database whose role may open 2 sessions: a server whose STOCKYARD_PG_CONNECTIONS is more
    than PostgreSQL allows it (max_connections, a role's or database's CONNECTION LIMIT)."""
    admin = pg_cluster.admin()
    name = f"limited{next(_names)}"
    admin.run(f"CREATE ROLE {name} LOGIN PASSWORD 'pw{name}' CONNECTION LIMIT 2")
    admin.run(f"CREATE DATABASE {name} OWNER {name} TEMPLATE template0")
    backend = PostgresBackend(parse_postgres(f"postgresql://{name}:pw{name}@127.0.0.1:{pg_cluster.port}/{name}", {}))
    backend.open_and_migrate()
    # The migration's session counts against the limit until its backend has exited, a moment after
    # it closed: a test's second session could be refused then (a loaded machine's CI run hung so).
    sessions = f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{name}'"
    wait_for(lambda: admin.run(sessions)[0][0] == 0, 30, "the migration's session to end")
    admin.close()
    return backend


_names = itertools.count(1)


def hold_sessions(store: Store, count: int) -> tuple[threading.Event, list[threading.Thread]]:
    """``count`` threads each in a read transaction (a session each) until the event is set."""
    ready, release = threading.Barrier(count + 1, timeout=30), threading.Event()

    def holder() -> None:
        try:
            conn = store.read()
            conn.execute("BEGIN")
            conn.execute("SELECT 1")
        except BaseException:
            ready.abort()  # the test fails at its wait below, not waits for ever
            raise
        ready.wait()
        release.wait()
        conn.execute("COMMIT")

    holders = [threading.Thread(target=holder) for _ in range(count)]
    for t in holders:
        t.start()
    ready.wait()
    return release, holders


def read_in_a_thread(store: Store, out: list) -> threading.Thread:
    """A thread reading one value: its answer, or its error, goes into ``out``."""

    def read() -> None:
        try:
            out.append(store.read().execute("SELECT 'answer'").fetchone()[0])
        except sqlite3.Error as exc:
            out.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    return thread


def test_a_pool_bigger_than_postgresql_allows_waits_for_a_connection_given_back(limited, small_pool, caplog):
    small_pool.READERS_MAX, small_pool.WAIT_S = 5, 10.0  # 5 wanted, 2 allowed
    store = Store(limited)
    release, holders = hold_sessions(store, 2)
    got: list[object] = []
    waiter = read_in_a_thread(store, got)
    wait_for(lambda: "PostgreSQL refused a read connection" in caplog.text, what="PostgreSQL to refuse a third")
    assert "too many connections" in caplog.text and "reads on the 2 it has open" in caplog.text
    release.set()
    waiter.join()
    for t in holders:
        t.join()
    assert got == ["answer"]  # it waited for a connection given back, not failed at once
    assert store.read().execute("SELECT 1").fetchone()[0] == 1
    store.close()


def test_a_pool_that_postgresql_refuses_says_so_in_its_busy_error(limited, small_pool):
    small_pool.READERS_MAX, small_pool.WAIT_S = 5, 0.5
    store = Store(limited)
    release, holders = hold_sessions(store, 2)
    got: list[object] = []
    read_in_a_thread(store, got).join()
    release.set()
    for t in holders:
        t.join()
    assert len(got) == 1 and isinstance(got[0], sqlite3.OperationalError)
    assert getattr(got[0], "database_failed", False) and getattr(got[0], "lock_timeout", False)  # a 503
    assert "all 2 PostgreSQL read connections" in str(got[0]) and "too many connections" in str(got[0])
    assert store._pool.refusals >= 1
    for _ in range(3):  # the refusals left the pool's count of open connections right: all 2 serve
        read_in_a_thread(store, got).join()
    assert got[1:] == ["answer"] * 3
    store.close()


def test_a_rate_limit_is_never_passed_uncounted_because_the_pool_was_busy(backend, small_pool):
    """Was: a burst that kept the read connections busy past the busy timeout had its rate counts
    fail, and each such request went through uncounted: one server with a pool of 1, a key at rpm 5
    and 400 requests at once let 608 through. A limit still fails open when the database is lost."""
    from stockyard.store.shared import SharedRateLimiter

    small_pool.READERS_MAX, small_pool.WAIT_S = 1, 0.3
    store = Store(backend)
    limiter = SharedRateLimiter(store)
    release, holders = hold_sessions(store, 1)  # the pool's one connection, held
    try:
        with pytest.raises(sqlite3.OperationalError, match="STOCKYARD_PG_CONNECTIONS") as refused:
            limiter.admit("key_burst", 5, None, 0)
        assert getattr(refused.value, "database_failed", False)  # the client's 503 database_unavailable
    finally:
        release.set()
        for t in holders:
            t.join()
    assert limiter.admit("key_burst", 5, None, 0).live  # counted once the pool has a connection again
    store.close()


def test_closing_the_store_while_threads_hold_connections_leaves_no_session(backend, pg_cluster, small_pool):
    small_pool.READERS_MAX = 3
    admin = pg_cluster.admin(backend.url.database)
    wait_for(lambda: admin.run(OTHERS) == [[0]], what="the migration's session to end")
    store = Store(backend)
    release, holders = hold_sessions(store, 2)  # two in transactions on other threads
    store.read().execute("SELECT 1")  # and one idle in the pool
    assert admin.run(OTHERS) == [[3]]
    store.close()
    wait_for(lambda: admin.run(OTHERS) == [[2]], what="the idle one to close (those in use close when given back)")
    release.set()
    for t in holders:
        t.join()
    wait_for(lambda: admin.run(OTHERS) == [[0]], what="the connections given back after close to close")
    assert store._pool._open == 0
    admin.close()


def test_idle_connections_of_a_restarted_postgresql_are_replaced_before_use(small_pool):
    from pgcluster import Cluster

    small_pool.READERS_MAX = 3
    cluster = Cluster().start()
    try:
        backend = PostgresBackend(parse_postgres(cluster.database(), {}))
        backend.open_and_migrate()
        store = Store(backend)
        release, holders = hold_sessions(store, 3)
        release.set()
        for t in holders:
            t.join()  # three idle in the pool now
        cluster.stop_server()
        cluster.start_server()
        got: list[object] = []

        def snapshot_read() -> None:  # a transaction first, as the configuration reload's
            try:
                conn = store.read()
                conn.execute("BEGIN")
                got.append(conn.execute("SELECT 'answer'").fetchone()[0])
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                got.append(exc)

        readers = [threading.Thread(target=snapshot_read) for _ in range(3)]
        for t in readers:
            t.start()
        readers += [read_in_a_thread(store, got) for _ in range(3)]
        for t in readers:
            t.join()
        assert got == ["answer"] * 6
        assert store._pool._open <= 3
        store.close()
    finally:
        cluster.stop()


def test_a_connection_that_breaks_inside_a_transaction_is_closed_and_not_held(backend, pg_cluster, small_pool):
    small_pool.READERS_MAX = 1
    store = Store(backend)
    admin = pg_cluster.admin(backend.url.database)
    conn = store.read()
    conn.execute("BEGIN")
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    admin.run(f"SELECT pg_terminate_backend({pid})")
    wait_for(lambda: admin.run(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") == [[0]], what="its end")
    with pytest.raises(sqlite3.OperationalError) as lost:
        conn.execute("SELECT 1")
    assert getattr(lost.value, "database_failed", False)
    assert not conn.in_transaction  # nothing for the caller to roll back: the connection went back, closed
    assert store._pool._open == 0
    assert store.read().execute("SELECT pg_backend_pid()").fetchone()[0] != pid  # the pool's one slot is free
    store.close()
    admin.close()


def test_a_connection_whose_rollback_is_interrupted_is_still_counted_out_of_the_pool(backend, small_pool):
    """Giving back a connection in a transaction rolls it back first (``PooledReads.close``, a
    thread's end). Was: an exception out of that ROLLBACK (a signal's, while PostgreSQL was slow
    to answer) left the connection neither idle nor closed, and the pool counted it open for ever:
    with STOCKYARD_PG_CONNECTIONS=1, every read after was a 503."""
    small_pool.READERS_MAX, small_pool.WAIT_S = 1, 0.5
    store = Store(backend)
    reads = store.read()
    reads.execute("BEGIN")
    pid = reads.execute("SELECT pg_backend_pid()").fetchone()[0]

    def interrupt(signum, frame):
        raise Interrupted

    before = signal.signal(signal.SIGALRM, interrupt)
    os.kill(pid, signal.SIGSTOP)  # the backend answers nothing until continued
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            reads.close()  # gives the connection back: its ROLLBACK waits for the stopped backend
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
        os.kill(pid, signal.SIGCONT)
    assert store._pool.open == 0
    got: list[object] = []
    read_in_a_thread(store, got).join()
    assert got == ["answer"]
    store.close()


def test_a_peek_waits_briefly_for_a_busy_pool_not_the_busy_timeout(backend, small_pool):
    """/metrics reads the database's size with ``Store.peek``: while a burst holds every read connection
    a scrape answers (its gauge NaN) in a fraction of a second, not after the busy timeout (10 s, the
    Prometheus scrape timeout's default: the scrape failed just when the server was busiest)."""
    small_pool.READERS_MAX, small_pool.WAIT_S = 1, 30.0
    store = Store(backend)
    conn = store.read()
    conn.execute("BEGIN")  # holds the pool's one connection
    got: list[object] = []

    def scrape() -> None:
        started = time.monotonic()
        try:
            store.peek(backend.size_bytes, wait_s=0.2)
        except sqlite3.OperationalError as exc:
            got.append((time.monotonic() - started, exc))

    scraper = threading.Thread(target=scrape)
    scraper.start()
    scraper.join()
    waited, error = got[0]
    assert waited < 5 and getattr(error, "pool_busy", False) and "0.2 s" in str(error)
    conn.execute("COMMIT")
    assert store.peek(backend.size_bytes) > 0  # free again: the pool's connection, given back after
    assert store.pool.open == 1
    store.close()


def test_a_bursts_idle_connections_close_but_the_last_given_back(backend, pg_cluster, monkeypatch):
    """Was: every connection a burst opened stayed open for good — up to ``STOCKYARD_PG_CONNECTIONS``
    server processes a replica, or a session-mode pooler's sessions, held while no request needed
    them. Now those idle ``IDLE_CLOSE_S`` close, as another is given back or by the writer's tick on
    a server no request reaches (``close_idle``); the last given back stays warm."""
    admin = pg_cluster.admin(backend.url.database)
    wait_for(lambda: admin.run(OTHERS) == [[0]], what="the migration's session to end")
    pool = pgpool.ReadPool(backend.connect)
    burst = [pool.take() for _ in range(5)]
    for conn in burst:
        pool.give(conn)
    assert pool.open == 5 and admin.run(OTHERS) == [[5]]  # idle for less than IDLE_CLOSE_S: kept
    monkeypatch.setattr(pgpool, "IDLE_CLOSE_S", 0.0)
    pool.close_idle()  # the writer's tick: no request came
    assert pool.open == 1
    wait_for(lambda: admin.run(OTHERS) == [[1]], what="PostgreSQL to see four sessions end")
    again = [pool.take() for _ in range(3)]
    for conn in again:
        pool.give(conn)  # each given back closes those idle below it: the last alone stays
    assert pool.open == 1
    warm = pool.take()
    assert warm is again[-1]  # the last given back, taken first
    pool.give(warm)
    pool.close()

"""The writer thread: batches commit together, a bad job is isolated, waited-for jobs see their commit."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from conftest import wait_for

from stockyard.store import Store, Writer, db


@pytest.fixture()
def writer(database):
    database.open_and_migrate()
    w = Writer(database, maxsize=100).start()
    yield w
    w.stop()


def sqlite_writer(path, maxsize: int = 100):
    conn, _ = db.open_and_migrate(path / "w.db")
    conn.close()
    return Writer(path / "w.db", maxsize=maxsize).start()


def put(key: str):
    return lambda conn: conn.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", (key,))


def test_bad_job_does_not_sink_its_batch(writer, database):
    for i in range(20):
        writer.submit(put(f"k{i}"))
    writer.submit(lambda conn: conn.execute("INSERT INTO no_such_table VALUES (1)"))
    writer.submit(put("k1"))  # duplicate key: IntegrityError, isolated
    writer.call(put("last"))
    rows = Store(database).read().execute("SELECT count(*) FROM meta WHERE key LIKE 'k%'").fetchone()[0]
    assert rows == 20 and writer.stats.written >= 21


def test_call_raises_the_jobs_error_and_rolls_it_back(writer, database):
    def bad(conn):
        conn.execute("INSERT INTO meta (key, value) VALUES ('half', 'done')")
        raise ValueError("validation failed")

    with pytest.raises(ValueError, match="validation failed"):
        writer.call(bad)
    assert Store(database).read().execute("SELECT count(*) FROM meta WHERE key = 'half'").fetchone()[0] == 0


def test_full_queue_drops_and_counts(tmp_path):
    conn, _ = db.open_and_migrate(tmp_path / "q.db")
    conn.close()
    w = Writer(tmp_path / "q.db", maxsize=3)  # not started: nothing drains the queue
    accepted = [w.submit(put(f"x{i}")) for i in range(5)]
    assert accepted == [True, True, True, False, False] and w.stats.dropped == 2


def test_database_failure_fails_the_batch_and_marks_unhealthy(tmp_path):
    writer = sqlite_writer(tmp_path)  # PRAGMA max_page_count: an SQLite way to fill the disk
    writer.call(lambda conn: conn.execute("PRAGMA max_page_count = 1"))  # this connection can no longer grow
    writer.submit(lambda conn: conn.execute("INSERT INTO meta (key, value) VALUES ('big', ?)", ("x" * 4_000_000,)))
    with pytest.raises(sqlite3.Error):
        writer.call(put("after"))
    assert not writer.healthy and writer.stats.dropped >= 1
    writer.stop()


def test_postgresql_lost_connection_is_replaced_and_a_stopped_server_fails_batches_until_back():
    from pgcluster import Cluster

    from stockyard.dburl import parse_postgres
    from stockyard.store.backends import PostgresBackend

    pg_cluster = Cluster().start()  # its own server: this test stops it
    backend = PostgresBackend(parse_postgres(pg_cluster.database(), {}))
    backend.open_and_migrate()
    w = Writer(backend, maxsize=100).start()
    try:
        w.call(put("before"))
        admin = pg_cluster.admin(backend.url.database)
        admin.run(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        admin.close()
        w.call(put("after"))  # the batch found its connection closed, and ran again on a new one
        assert w.healthy and w.stats.failed_batches == 0
        keys = [r[0] for r in Store(backend).read().execute("SELECT key FROM meta WHERE key IN ('before', 'after')")]
        assert sorted(keys) == ["after", "before"]
        pg_cluster.stop_server()
        with pytest.raises(sqlite3.Error, match="cannot open the database postgresql://stockyard:\\*\\*\\*@"):
            w.call(put("down"))  # no server at all: the batch fails, the writer is unhealthy
        assert not w.healthy
        pg_cluster.start_server()
        w.call(put("back"))
        assert w.healthy
    finally:
        w.stop()
        pg_cluster.stop()


def test_a_full_queue_makes_senders_wait_while_the_database_keeps_up(tmp_path):
    """Records come faster than the database takes them: the sender waits for room (traffic
    slows to the database's pace) instead of the record being dropped."""
    writer = sqlite_writer(tmp_path)
    try:
        writer.queue.maxsize = 2
        busy, release = threading.Event(), threading.Event()
        writer.submit(lambda conn: (busy.set(), release.wait(30)))  # the database is slow for a moment
        busy.wait(10)
        assert writer.submit(put("a")) and writer.submit(put("b"))  # the queue is full now
        accepted: list[bool] = []
        sender = threading.Thread(target=lambda: accepted.append(writer.submit(put("c"))))
        sender.start()
        wait_for(lambda: writer.stats.waited_full == 1, what="the sender waiting for room")
        release.set()
        sender.join(10)
        writer.call(put("last"))
        assert accepted == [True] and writer.stats.dropped == 0
        rows = writer.call(lambda conn: conn.execute("SELECT count(*) FROM meta WHERE key IN ('a','b','c')").fetchone())
        assert rows[0] == 3
    finally:
        writer.stop()


def test_a_full_queue_drops_at_once_while_the_database_fails(tmp_path):
    writer = sqlite_writer(tmp_path)
    try:
        writer.queue.maxsize = 1
        release = threading.Event()
        writer.submit(lambda conn: release.wait(30))
        writer.healthy = False  # as after a failed batch (disk full, PostgreSQL lost)
        while writer.submit(put("x")):
            pass
        assert writer.stats.dropped == 1 and writer.stats.waited_full == 0
        release.set()
    finally:
        writer.stop()


def lingering_writer(path, linger_s: float) -> Writer:
    conn, _ = db.open_and_migrate(path / "w.db")
    conn.close()
    return Writer(path / "w.db", maxsize=100, linger_s=linger_s).start()


def committed(w: Writer, job) -> None:
    """Submit ``job`` and wait for its commit."""
    done = threading.Event()
    assert w.submit(job, done.set)
    assert done.wait(10)


def test_rows_queued_while_the_writer_lingers_commit_in_one_batch(tmp_path):
    """After a batch that emptied the queue the writer waits a moment instead of waking for every
    row (a wake-up per row is a futex and a GIL hand-off on a busy server): what came meanwhile is
    one transaction."""
    w = lingering_writer(tmp_path, linger_s=0.5)
    try:
        committed(w, put("first"))  # the writer lingers from here
        before = w.stats.batches
        dones = [threading.Event() for _ in range(10)]
        for i, done in enumerate(dones):
            assert w.submit(put(f"k{i}"), done.set)
        assert all(d.wait(10) for d in dones)
        assert w.stats.batches == before + 1
    finally:
        w.stop()


def test_a_caller_waiting_for_its_commit_or_a_stop_ends_a_linger_at_once(tmp_path):
    w = lingering_writer(tmp_path, linger_s=60)
    committed(w, put("first"))  # the writer lingers for a minute from here
    started = time.monotonic()
    assert w.call(lambda conn: conn.execute("SELECT count(*) FROM meta WHERE key = 'first'").fetchone()[0]) == 1
    assert w.submit(put("queued during the linger"))  # after the call's batch: lingering again
    w.stop()
    assert time.monotonic() - started < 30, "call() or stop() waited for the linger"
    conn, _ = db.open_and_migrate(tmp_path / "w.db")
    assert conn.execute("SELECT count(*) FROM meta WHERE key = 'queued during the linger'").fetchone()[0] == 1
    conn.close()


def test_text_the_database_cannot_encode_fails_its_record_not_the_database(writer, database):
    """A lone surrogate (valid JSON, ``\\ud800``) has no UTF-8 form: on PostgreSQL pg8000's encoding
    error was taken for a lost connection, so the writer held the record and retried it every
    second for ever, and every write meanwhile waited or failed ("the database is unreachable").
    It is the record's fault, as on SQLite: that record fails, the writer goes on."""
    writer.submit(put("lone \ud800"))  # a record nobody waits for, first in its batch
    writer.call(put("after"))
    with pytest.raises(UnicodeEncodeError):  # as SQLite raises it: a request's 400 (errors.REFUSALS)
        writer.call(put("waited \ud800"))
    writer.call(put("last"))
    assert writer.healthy and writer.stats.failed_batches == 0
    keys = {r[0] for r in Store(database).read().execute("SELECT key FROM meta")}
    assert {"after", "last"} <= keys


def test_a_job_queued_after_the_writer_stopped_fails_at_once(tmp_path):
    """Was: ``later`` after the writer thread stopped queued a job nothing would ever run, so its
    future never resolved (``call`` waited out its 30 s, a settle its bound) and ``submit`` said True
    for a record that was lost. Now each fails at once: the future with the writer's stopped error,
    ``call`` raising it, ``submit`` False and counted as dropped; nothing is written."""
    writer = sqlite_writer(tmp_path)
    writer.call(put("before"))
    writer.stop()
    started = time.monotonic()
    future = writer.later(put("later"))
    assert isinstance(future.exception(timeout=2), sqlite3.OperationalError), future
    assert "writer has stopped" in str(future.exception())
    with pytest.raises(sqlite3.OperationalError, match="writer has stopped"):
        writer.call(put("call"), timeout=5)
    assert writer.submit(put("submit")) is False and writer.stats.dropped == 1
    assert time.monotonic() - started < 1.0  # told at once, not at a timeout
    assert not writer.depth  # nothing left queued for a thread that is gone
    conn = db.connect(tmp_path / "w.db")
    try:
        rows = conn.execute("SELECT key FROM meta WHERE key IN ('before', 'later', 'call', 'submit')").fetchall()
        assert [r[0] for r in rows] == ["before"]
    finally:
        conn.close()


def test_jobs_queued_while_the_writer_stops_are_each_run_or_refused(tmp_path):
    """Senders racing a stop: every future resolves (committed, or the stopped error), none left
    for a thread that is gone — a put that lands after the thread's last look at the queue is
    refused by its sender."""
    writer = sqlite_writer(tmp_path)
    futures: list = []
    going = threading.Event()

    def send(n: int) -> None:
        for i in range(300):
            futures.append(writer.later(put(f"s{n}-{i}"), urgent=False))
            if i == 20:
                going.set()

    senders = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for t in senders:
        t.start()
    going.wait(5)
    writer.stop()
    for t in senders:
        t.join(10)
    assert len(futures) == 1200
    outcomes = [f.exception(timeout=5) for f in futures]  # a TimeoutError here: a future nobody resolves
    assert all(e is None or "writer has stopped" in str(e) for e in outcomes), {repr(e) for e in outcomes}
    assert outcomes.count(None) >= 21 and not writer.depth


def test_a_caller_that_stops_waiting_for_its_commit_hears_the_databases_failure_not_a_bugs(tmp_path):
    """Was: ``Writer.call`` ended its wait in a bare ``TimeoutError``, which the request waiting for the
    write (an admin change) answered as a 500 ``internal error`` — while the write could still commit.
    It is ``WriteTimedOut`` now: the database's failure, the client's 503 ``database_unavailable``
    saying the change may still be made. Here another connection holds the file (``BEGIN
    EXCLUSIVE``, under the 10 s busy timeout) past the caller's 0.5 s; once let go, the write commits."""
    from stockyard.errors import database_refusal
    from stockyard.store.writer import WriteTimedOut

    writer = sqlite_writer(tmp_path)
    lock = sqlite3.connect(tmp_path / "w.db", isolation_level=None, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        began = time.monotonic()
        with pytest.raises(WriteTimedOut) as caught:
            writer.call(put("late"), timeout=0.5)
        assert time.monotonic() - began < 3
        refusal = database_refusal(caught.value)
        assert refusal is not None and refusal.status == 503 and refusal.code == "database_unavailable"
        assert "may still" in refusal.message
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    reader = sqlite3.connect(tmp_path / "w.db")
    assert wait_for(lambda: reader.execute("SELECT value FROM meta WHERE key = 'late'").fetchall()) == [("v",)]
    reader.close()
    writer.stop()


def test_a_caller_whose_write_finds_no_room_in_the_queue_hears_the_databases_failure(tmp_path):
    """Was: a queue that stayed full for the caller's whole wait raised a bare ``queue.Full`` out of
    ``Writer.call``, which an admin change answered as a 500. It is the database's failure (it
    takes writes slower than they come): the 503 ``database_unavailable``, the write never queued."""
    from stockyard.errors import database_refusal

    conn, _ = db.open_and_migrate(tmp_path / "w.db")
    conn.close()
    writer = Writer(tmp_path / "w.db", maxsize=1).start()
    lock = sqlite3.connect(tmp_path / "w.db", isolation_level=None, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        stuck = writer.later(put("stuck"))
        wait_for(lambda: writer.depth == 0, what="the writer took the first job (it waits for the lock)")
        writer.submit(put("fills the queue"))
        began = time.monotonic()
        with pytest.raises(Exception) as caught:
            writer.call(put("no room"), timeout=0.5)
        assert time.monotonic() - began < 3 and not stuck.done()
        refusal = database_refusal(caught.value)
        assert refusal is not None and refusal.status == 503 and refusal.code == "database_unavailable", caught
        assert "may still" not in refusal.message  # it was never queued
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert stuck.result(timeout=15) is not None
    writer.stop()


def test_a_job_raising_timeouterror_is_re_raised_as_it_came(writer):
    """``WriteTimedOut`` is the caller's wait running out, never a job's own TimeoutError."""
    from stockyard.store.writer import WriteTimedOut

    def job(conn):
        raise TimeoutError("the job's own")

    with pytest.raises(TimeoutError, match="the job's own") as caught:
        writer.call(job, timeout=5)
    assert not isinstance(caught.value, WriteTimedOut)


def test_on_postgresql_nothing_commits_ahead_of_records_waiting_for_a_held_lock(pg_url, monkeypatch):
    """Was: records waiting for a held (or lost) database were tried again only at the top of the
    writer's loop, so a batch that arrived once their retry was due committed ahead of them when it
    needed no held table: the writer called itself writable again (``/readyz`` 200) while traces
    still waited, and an admin change got through or not by the luck of timing. Now the records
    waiting are tried first; still held, the new batch is held behind them and its caller told at
    once (the lock's failure, ``lock_timeout``). Real parts: another session's ``LOCK TABLE meta``
    past a 300 ms busy timeout; the new write goes to a table nobody holds."""
    import pg8000.native

    from stockyard.dburl import parse_postgres
    from stockyard.store.backends import PostgresBackend

    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 300)  # STOCKYARD_BUSY_TIMEOUT_MS, as serve sets it
    backend = PostgresBackend(parse_postgres(pg_url, {}))
    backend.open_and_migrate()
    setup = backend.connect()
    setup.execute("CREATE TABLE side (v text)")
    setup.close()
    writer = Writer(backend, maxsize=100, idle_after_s=30).start()  # it waits in its queue between batches
    holder = pg8000.native.Connection(**backend.url.connect_args())
    try:
        holder.run("BEGIN")
        holder.run("LOCK TABLE meta IN ACCESS EXCLUSIVE MODE")
        writer.submit(put("first"))
        wait_for(lambda: writer.waiting == 1, what="the record to wait for the held table")
        wait_for(lambda: time.monotonic() >= writer._retry_at, what="its retry to be due")
        with pytest.raises(sqlite3.OperationalError, match="held by another session") as caught:
            writer.call(lambda conn: conn.execute("INSERT INTO side (v) VALUES ('second')"), timeout=5)
        assert getattr(caught.value, "lock_timeout", False) and not writer.healthy
        assert writer.waiting == 1
    finally:
        holder.close()
    wait_for(lambda: time.monotonic() >= writer._retry_at, what="the next retry to be due")
    writer.call(put("third"))  # the record waiting goes first, then this one
    assert writer.waiting == 0 and writer.healthy
    conn = backend.connect()
    assert sorted(r[0] for r in conn.execute("SELECT key FROM meta WHERE key IN ('first', 'third')")) == [
        "first",
        "third",
    ]
    assert conn.execute("SELECT count(*) FROM side").fetchone()[0] == 0
    conn.close()
    writer.stop()


def test_queued_records_hold_at_most_max_bytes_and_a_sender_waits_for_room(tmp_path):
    """Memory of queued records is bounded by bytes, not only by count: 10,000 agent bodies of
    100 KB took a GB while the disk was behind. A sender whose record does not fit waits for the
    writer to commit (traffic slows to the disk's pace), and the bytes are free once committed."""
    writer = sqlite_writer(tmp_path)
    writer.max_bytes = 1000
    try:
        assert writer.room(5000)  # a record alone always fits
        busy, release = threading.Event(), threading.Event()
        writer.submit(lambda conn: (busy.set(), release.wait(30)))
        busy.wait(10)
        assert writer.submit(put("a"), size=600) and writer.held_bytes == 600
        assert writer.room(400)  # fits beside it
        fitted: list[bool] = []
        sender = threading.Thread(target=lambda: fitted.append(writer.room(600)))
        sender.start()
        wait_for(lambda: writer.stats.waited_bytes == 1, what="the sender waiting for room")
        assert not fitted
        release.set()
        sender.join(10)
        assert fitted == [True]
        writer.call(put("last"))
        assert writer.held_bytes == 0
    finally:
        writer.stop()


def test_room_is_refused_when_the_writer_stays_behind_or_the_database_fails(tmp_path, monkeypatch):
    from stockyard.store import writer as writer_module

    monkeypatch.setattr(writer_module, "FULL_WAIT_S", 0.2)
    writer = sqlite_writer(tmp_path)
    writer.max_bytes = 1000
    release = threading.Event()
    try:
        writer.submit(lambda conn: release.wait(30))
        writer.submit(put("a"), size=900)
        assert not writer.room(200) and writer.stats.waited_bytes == 1
        writer.healthy = False  # as after a failed batch: no waiting at all
        assert not writer.room(200) and writer.stats.waited_bytes == 1
        writer.healthy = True
        release.set()
        writer.call(put("last"))
        assert writer.held_bytes == 0 and writer.room(200)
    finally:
        release.set()
        writer.stop()


def test_one_owner_holds_at_most_a_quarter_and_another_still_fits(tmp_path, monkeypatch):
    """One sender's records (``owner``: a client key, an address) may hold a quarter of ``max_bytes``:
    past it that sender waits and is refused, while another's record still fits the rest. An
    owner's first record always fits, and its share is free again once its records are committed."""
    from stockyard.store import writer as writer_module

    monkeypatch.setattr(writer_module, "FULL_WAIT_S", 0.2)
    writer = sqlite_writer(tmp_path)
    writer.max_bytes = 1000  # a share of 250
    release = threading.Event()
    try:
        writer.submit(lambda conn: release.wait(30))  # the writer is behind
        assert writer.room(400, "key:a")  # its first, alone
        writer.submit(put("a"), size=400, owner="key:a")
        assert not writer.room(10, "key:a") and writer.stats.waited_bytes == 1  # past its quarter
        assert writer.room(250, "key:b") and writer.room(250)  # another's fits, and an ownerless one
        writer.submit(put("b"), size=250, owner="key:b")
        assert not writer.room(1, "key:b")  # its quarter is full too
        release.set()
        writer.call(put("last"))
        assert writer.held_bytes == 0 and writer.room(250, "key:a") and writer.room(250, "key:b")
    finally:
        release.set()
        writer.stop()


def test_bytes_of_records_dropped_or_refused_are_freed(tmp_path):
    conn, _ = db.open_and_migrate(tmp_path / "q.db")
    conn.close()
    w = Writer(tmp_path / "q.db", maxsize=1, max_bytes=10_000)  # not started: nothing drains the queue
    assert w.submit(put("a"), size=100) and not w.submit(put("b"), size=200)
    assert w.held_bytes == 100  # the dropped one's bytes are not counted
    w.start()
    w.stop()
    assert w.held_bytes == 0


def test_a_stop_on_a_full_queue_behind_a_stuck_database_ends_within_its_timeout_and_counts_what_it_left(
    tmp_path, caplog
):
    """Was: ``stop`` put its marker on the queue with no timeout, so a full queue behind a thread
    stuck on a lost database hung the server's stop for good. Now the stop gives up after its
    timeout (the shutdown grace): the records still queued are dropped, counted and said in one
    line, a waiter is told at once, and a record sent afterwards is refused without a wait."""
    writer = sqlite_writer(tmp_path, maxsize=2)
    stuck, release = threading.Event(), threading.Event()
    writer.submit(lambda conn: (stuck.set(), release.wait(60)))  # a write the database never answers
    assert stuck.wait(10)
    assert writer.submit(put("a")) and writer.submit(put("b"))  # the queue is full now
    stopper = threading.Thread(target=writer.stop, kwargs={"timeout": 0.5})
    started = time.monotonic()
    stopper.start()
    stopper.join(20)
    try:
        assert not stopper.is_alive(), "the stop waited for room on a full queue"
        assert time.monotonic() - started < 5
        assert writer.stats.dropped == 2 and writer.depth == 0
        assert "2 queued records dropped at the stop" in caplog.text
        sent = time.monotonic()
        assert not writer.submit(put("late")) and time.monotonic() - sent < 1
        with pytest.raises(sqlite3.OperationalError, match="writer has stopped"):
            writer.call(put("late call"), timeout=5)
    finally:
        release.set()
    wait_for(lambda: not writer._thread.is_alive(), 10, "the writer thread to end once the database answers")
    kept = Store(tmp_path / "w.db").read().execute("SELECT key FROM meta WHERE key IN ('a', 'b')").fetchall()
    assert kept == [], "records counted as dropped were written after all"


def test_a_done_callback_that_raises_leaves_the_writer_running(writer, database):
    """Was: ``done`` ran unguarded after the commit, so one that raised ended the writer thread, and
    every later write was refused (``WriterStopped``) until a restart. Now it is logged and the
    writer goes on."""
    writer.submit(put("first"), done=lambda: 1 / 0)
    writer.call(put("second"), timeout=5)
    rows = Store(database).read().execute("SELECT key FROM meta WHERE key IN ('first', 'second')").fetchall()
    assert sorted(r[0] for r in rows) == ["first", "second"] and writer.stats.written >= 2


def test_on_postgresql_a_deferred_step_that_raises_fails_its_job_not_the_writer(pg_url):
    """Was: a step a job defers to its transaction's end (``conn.before_commit``: the shared budget
    ledger's settlements) ran in the fast path's commit outside any guard: an unexpected error there
    (not the database's) escaped the batch and ended the writer thread — every later write refused.
    Now the batch runs again job by job, where that job alone fails with its error and the others commit."""
    from stockyard.dburl import parse_postgres
    from stockyard.store.backends import PostgresBackend

    backend = PostgresBackend(parse_postgres(pg_url, {}))
    backend.open_and_migrate()
    w = Writer(backend, maxsize=100, linger_s=0.05).start()
    try:

        def defers_a_bug(conn):
            conn.execute("INSERT INTO meta (key, value) VALUES ('deferred', 'v')")
            conn.before_commit.append(lambda c: [][1])

        w.submit(put("before"))
        failed = w.later(defers_a_bug, urgent=False)
        w.submit(put("beside"))
        with pytest.raises(IndexError):
            failed.result(timeout=10)
        w.call(put("after"), timeout=10)
        conn = backend.connect()
        keys = sorted(
            r[0] for r in conn.execute("SELECT key FROM meta WHERE key IN ('before', 'deferred', 'beside', 'after')")
        )
        conn.close()
        assert keys == ["after", "before", "beside"]
    finally:
        w.stop()

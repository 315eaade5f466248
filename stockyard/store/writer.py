"""The one writer thread: drains a bounded queue into SQLite in batched transactions.

Request threads never write. They hand the writer a *job* — a function of a connection —
and go on. Jobs that a caller must see committed (admin changes, settlements) come with a
:class:`concurrent.futures.Future` that resolves after the COMMIT. When a job fails, the batch
is redone with each job in its own SAVEPOINT, so one bad job never takes its batch down with
it. Neighbouring jobs ``obj.write`` of a class with a ``write_many`` (traces) are written
together in one call.

Housekeeping runs on the same thread, between batches, so it never competes with the
writes for the lock: *idle tasks* (retention) when the queue has been empty for a while,
*periodic tasks* (snapshots) when due, and the WAL upkeep — a TRUNCATE checkpoint when
idle and a size check — so the -wal file stays bounded.
"""

from __future__ import annotations

import logging
import queue
import random
import sqlite3
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import audit
from ..limits import HeldBytes
from . import db, files
from .backends import Backend, backend_for

log = logging.getLogger("stockyard.writer")

Job = Callable[[sqlite3.Connection], Any]
IdleTask = Callable[[sqlite3.Connection], Any]  # returns truthy while it has more to do
_STOP = object()
_MORE_IDLE_WORK_S = 0.02  # how long the queue must be empty before the next idle step
WAL_CHECK_EVERY_S = 10.0
IDLE_RERUN_S = 60.0  # a server with no writes at all still ages its traces out
FAILURE_LOG_EVERY_S = 10.0
RETRY_LOST_S = 1.0  # PostgreSQL lost: how often the records waiting for it are tried again
FULL_WAIT_S = 2.0  # a full queue, the database working: how long a sender waits for room
MAX_BYTES = 64 << 20  # what queued records may hold (their bodies): a count alone let 10,000 agent bodies take a GB
OWNER_SHARE = 4  # one owner's records (a client key's, an address's) may hold a quarter of MAX_BYTES (room)
LINGER_S = 0.005  # after a batch that emptied the queue, the next rows gather this long (see _linger)
# A batch PostgreSQL aborted for a deadlock or a serialization failure runs again after this (to twice it,
# at random): the other transaction, woken by the abort, takes its locks first. Row locks are no queue:
# run again at once, the batch could lock a row the other was about to take and deadlock again.
RERUN_AFTER_S = 0.05


@dataclass
class _Periodic:
    task: Callable[[sqlite3.Connection], None]
    every_s: float
    due: float


# SQLite primary result codes that mean the database, not the job, is at fault.
_DATABASE_FAILURES = {5, 6, 8, 10, 11, 13, 14, 26}  # BUSY LOCKED READONLY IOERR CORRUPT FULL CANTOPEN NOTADB


def database_failed(exc: BaseException) -> bool:
    """The database, not the job, is at fault (full, read-only, I/O error, PostgreSQL gone)."""
    if getattr(exc, "database_failed", False):  # set by the PostgreSQL connection
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and (code & 0xFF) in _DATABASE_FAILURES


# SQLSTATEs of a transaction PostgreSQL aborted for a conflict with another (deadlock_detected,
# serialization_failure): nothing of it was applied, so it can run again as it was.
TRANSIENT_SQLSTATES = ("40P01", "40001")


def transient(exc: BaseException) -> bool:
    """The database aborted the transaction for a conflict with another (PostgreSQL): try it again."""
    return getattr(exc, "sqlstate", None) in TRANSIENT_SQLSTATES


def begin(conn: Any) -> None:
    """Open a write transaction whose jobs may defer steps to its end (``conn.before_commit``: a
    PostgreSQL connection's; the shared budget ledger's rows, taken there in one order)."""
    conn.execute("BEGIN IMMEDIATE")
    if hasattr(conn, "before_commit"):
        conn.before_commit = []


def run_deferred(conn: Any) -> None:
    """Run the steps the transaction's jobs deferred to its end (in the transaction); more may be deferred
    after (the writer's isolated jobs run theirs one job at a time)."""
    steps = getattr(conn, "before_commit", None)
    if steps:
        conn.before_commit = []
        for step in steps:
            step(conn)


def commit(conn: Any) -> None:
    """Run what was deferred, then commit; the connection defers nothing after (its steps would never run)."""
    run_deferred(conn)
    conn.execute("COMMIT")
    drop_deferred(conn)


def discard_deferred(conn: Any) -> None:
    """A job rolled back to its savepoint: its deferred steps go; the transaction defers on."""
    if getattr(conn, "before_commit", None) is not None:
        conn.before_commit = []


def drop_deferred(conn: Any) -> None:
    """The transaction ended (committed or rolled back): nothing is deferred on the connection any more."""
    if getattr(conn, "before_commit", None) is not None:
        conn.before_commit = None


def _write_many(job: Job) -> Callable[[sqlite3.Connection, list], None] | None:
    """``Cls.write_many`` for a job that is ``obj.write`` of a class that has one (traces), else None."""
    owner = getattr(job, "__self__", None)
    if owner is None or getattr(job, "__name__", None) != "write":
        return None
    return getattr(type(owner), "write_many", None)


def _runs(batch: list[_Item]) -> list[tuple[Callable[[sqlite3.Connection, list], None] | None, list[_Item]]]:
    """The batch cut into runs of neighbouring jobs one ``write_many`` call can write together
    (traces: a few multi-row statements and one rollup upsert per row touched, instead of six
    statements per trace); every other job is a run of its own. The order stays the queue's."""
    runs: list[tuple[Callable[[sqlite3.Connection, list], None] | None, list[_Item]]] = []
    for item in batch:
        many = _write_many(item.job)
        if runs and many is not None and runs[-1][0] is many:
            runs[-1][1].append(item)
        else:
            runs.append((many, [item]))
    return runs


class WriterStopped(sqlite3.OperationalError):
    """A job queued after the writer thread stopped (a server shutting down): nothing runs it, so its
    caller is told at once rather than waiting out a timeout for a commit that never comes."""

    def __init__(self) -> None:
        super().__init__("the database writer has stopped (the server is shutting down): not written")


class WriteTimedOut(TimeoutError):
    """A write's caller stopped waiting for its commit (``Writer.call``): the database's failure
    (a request's 503, ``errors.database_refusal``), not a bug's 500. The write may still commit."""

    database_failed = True


class WriterFull(queue.Full):
    """A write found no room in the writer's queue for its caller's whole wait (``Writer.call``):
    the database takes writes slower than they come — its failure (a request's 503), not a bug's
    500. The write was never queued."""

    database_failed = True


def held_by_lock(exc: BaseException) -> bool:
    """The database failed because another connection held a lock past the busy timeout (SQLite's
    BUSY or LOCKED, PostgreSQL's 55P03), not because it is lost, full or broken."""
    if getattr(exc, "lock_timeout", False):  # set by the PostgreSQL connection (and _hold)
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and (code & 0xFF) in (5, 6)


class _JobFailed(Exception):
    """A job raised on the fast path: redo the batch with each job isolated."""


@dataclass
class _Item:
    job: Job
    future: Future | None = None
    done: Callable[[], None] | None = None  # called once the job is committed
    result: Any = None
    error: BaseException | None = None
    size: int = 0  # bytes the job holds, counted in Writer.held_bytes until it leaves the writer
    owner: str | None = None  # whose they are (a client key, an address): counted in its share too


@dataclass
class WriterStats:
    written: int = 0
    batches: int = 0  # transactions committed
    dropped: int = 0
    failed_batches: int = 0
    last_error: str | None = None
    last_ok_monotonic: float = field(default_factory=time.monotonic)
    checkpoints: int = 0
    wal_bytes: int = 0
    dropped_waiting: int = 0  # oldest records dropped because too many waited for a lost database
    waited_full: int = 0  # submissions that found the queue full and waited for room
    waited_bytes: int = 0  # senders that found max_bytes held and waited for room (room)


class Writer:
    """Owns the server's only write connection."""

    def __init__(
        self,
        database: Path | str | Backend,
        maxsize: int = 10_000,
        batch_max: int = 512,
        idle_after_s: float = 1.0,
        linger_s: float = LINGER_S,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.backend = backend_for(database)
        self.path = Path(getattr(self.backend, "path", ""))
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        # the sizes of the records queued, in a batch or waiting, in all and by owner (see room)
        self.bytes = HeldBytes(max_bytes, share=max_bytes // OWNER_SHARE)
        self.batch_max = batch_max
        self.idle_after_s = idle_after_s
        self.stats = WriterStats()
        self.healthy = True
        self._idle_tasks: list[IdleTask] = []
        self._periodic: list[_Periodic] = []
        self._wal_path = files.wal_path(self.path) if self.backend.wal else None
        self._next_wal_check = time.monotonic() + WAL_CHECK_EVERY_S
        self._failure_logged_at = 0.0
        self._lost_since_log = 0
        # PostgreSQL lost: records wait here (bounded by maxsize, oldest dropped) until it is back.
        self._waiting: deque[_Item] = deque()
        self._retry_at = 0.0
        self._held_by_lock = False  # the last failed batch met a lock another session held
        self.linger_s = linger_s
        self._urgent = threading.Event()  # a caller waits (call, stop): end a linger now
        self._closed = False  # the thread has ended: a job queued now fails at once (_refuse_leftovers)
        self._thread = threading.Thread(target=self._run, name="stockyard-writer", daemon=True)
        self._conn: sqlite3.Connection | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Writer":
        self._conn = self.backend.connect()
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Drain what is queued, then close the connection — within ``timeout`` (the server's
        shutdown grace) in all: a thread stuck on a database that stopped answering, with the
        queue full behind it, must not hold the process's stop for good. What it left then is
        dropped, counted and said (:meth:`_give_up`)."""
        if not self._thread.is_alive():
            return
        deadline = time.monotonic() + timeout
        self._urgent.set()
        try:
            self.queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass  # no room for the marker: the thread is not taking records
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._give_up(timeout)

    def _give_up(self, timeout: float) -> None:
        """The stop's time is up with the thread still in a write: nothing more is queued (a
        sender is refused at once), what is queued is dropped (a waiter told at once) and said in
        one line; once its write returns, the thread ends without taking another record."""
        self._closed = True
        dropped = self._refuse_leftovers()
        log.error(
            "the database writer did not finish within %gs of the stop (%s): %d queued records dropped at the stop",
            timeout,
            self.stats.last_error or "a write still waiting for the database",
            dropped,
        )
        self._drop_waiting()  # and the records waiting for a lost database (PostgreSQL), said in theirs

    def add_idle_task(self, task: IdleTask) -> None:
        """Run ``task(conn)`` when the queue has been empty for a while (retention).

        A task does one small step per call and returns truthy while it has more to do;
        the next step then runs as soon as the queue is empty again, so a large backlog
        drains quickly without ever making a write wait for more than one step.
        """
        self._idle_tasks.append(task)

    def add_periodic_task(
        self, task: Callable[[sqlite3.Connection], None], every_s: float, first_in_s: float = 0.0
    ) -> None:
        """Run ``task(conn)`` between batches every ``every_s`` seconds (snapshots), busy or not."""
        self._periodic.append(_Periodic(task, every_s, time.monotonic() + first_in_s))

    # -- submitting ------------------------------------------------------------------------
    def submit(self, job: Job, done: Callable[[], None] | None = None, size: int = 0, owner: str | None = None) -> bool:
        """Queue a fire-and-forget job; ``done`` runs in the writer thread once it is committed.

        A full queue while the database works means it takes records slower than they come: the
        sender waits for room (up to ``FULL_WAIT_S``), so traffic slows to the database's pace
        instead of losing its records (a trace is queued after its answer was sent). While the
        database fails, the job is dropped at once and counted (False): the proxy keeps serving.
        ``size``: the bytes the job holds (a trace's bodies), counted in ``held_bytes`` until it
        leaves the writer (and in ``owner``'s share); a sender with a large record asks :meth:`room` first.
        """
        item = _Item(job, done=done, size=size, owner=owner)
        if self._closed:
            return self._dropped("the writer has stopped")
        self.bytes.add(size, owner)
        try:
            self.queue.put_nowait(item)
            return self._queued(item)
        except queue.Full:
            pass
        if self._may_wait():
            self.stats.waited_full += 1
            try:
                self.queue.put(item, timeout=FULL_WAIT_S)
                return self._queued(item)
            except queue.Full:
                pass
        self._release([item])
        return self._dropped("writer queue full")

    def room(self, size: int, owner: str | None = None) -> bool:
        """Whether a record holding ``size`` bytes fits what the writer may hold (``max_bytes``), and
        what ``owner``'s records may (a quarter of it: ``OWNER_SHARE``).

        Over it, while the database works, the sender waits for the writer to catch up (up to
        ``FULL_WAIT_S``), as for a full queue; False if it did not (or the database fails): the
        caller keeps less (a trace goes without its bodies) so memory stays bounded however large
        the bodies and however far behind the disk. The share keeps one sender of large bodies
        from taking all of it: its own records go without theirs, not everyone's. A record alone
        always fits, and an owner's first.
        """
        if self.bytes.fits(size, owner):
            return True
        if not self._may_wait():
            return False
        self.stats.waited_bytes += 1
        return self.bytes.fits(size, owner, FULL_WAIT_S)

    def _may_wait(self) -> bool:
        """A sender may wait for room: the database works and the writer runs (not on its own thread)."""
        return self.healthy and self._thread.is_alive() and threading.current_thread() is not self._thread

    @property
    def held_bytes(self) -> int:
        return self.bytes.held

    @property
    def max_bytes(self) -> int:
        """What queued records may hold in all (``STOCKYARD_WRITER_QUEUE_MB``); an owner a quarter of it."""
        return self.bytes.total

    @max_bytes.setter
    def max_bytes(self, total: int) -> None:
        self.bytes.total, self.bytes.share = total, total // OWNER_SHARE

    def _release(self, items: list[_Item]) -> None:
        """The records left the writer (committed, refused or dropped): their bytes are free."""
        for item in items:
            size, item.size = item.size, 0  # freed once
            self.bytes.give(size, item.owner)

    def call(self, job: Job, timeout: float = 30.0) -> Any:
        """Run ``job(conn)`` in the writer and wait for its commit; re-raises its error
        (``WriterFull`` when the queue had no room within ``timeout``, ``WriteTimedOut`` after it)."""
        try:
            future = self.later(job, timeout)
        except queue.Full:
            raise WriterFull(
                f"the database writer's queue stayed full for {timeout:g} s ({self.depth} waiting)"
            ) from None
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            if future.done():  # the job's own TimeoutError, re-raised as it came
                raise
            raise WriteTimedOut(f"the database did not commit the write in {timeout:g} s (it may still)") from None

    def later(self, job: Job, timeout: float = 30.0, urgent: bool = True) -> Future:
        """``call`` without the wait: the future of ``job(conn)``'s result, resolved once committed
        (or with its error), in the writer thread — for a caller that must not wait (the stream relay).
        ``urgent``: end a linger now (a stream's bytes wait for it); else it is committed with the
        rows that gather meanwhile, as a trace is (what an answer keeps, waited for by nobody's bytes)."""
        future: Future = Future()
        if self._closed:
            future.set_exception(WriterStopped())
            return future
        item = _Item(job, future)
        self.queue.put(item, timeout=timeout)
        self._queued(item)
        if urgent:
            self._urgent.set()
        return future

    def _queued(self, item: _Item) -> bool:
        """After a put: True, unless the thread ended meanwhile (its last look at the queue may have
        come before the put), when what is left queued is refused here — this item with it."""
        if self._closed:
            self._refuse_leftovers()
            return item.error is None
        return True

    def _refuse_leftovers(self) -> int:
        """Fail what is queued once the thread has ended (or a stop gave up on it): each waiter told
        at once (WriterStopped), each fire-and-forget record counted as dropped (their number
        returned). The thread runs it as it ends; a sender whose put came after that runs it too
        (``_queued``), so no job waits for a thread that is gone."""
        dropped = 0
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return dropped
            if item is _STOP:
                continue
            item.error = WriterStopped()
            self._release([item])
            if item.future is not None:
                item.future.set_exception(item.error)
            else:
                dropped += 1
                self._dropped("the writer has stopped")

    def _dropped(self, why: str) -> bool:
        """A fire-and-forget record not queued: counted, and logged at the 1st, 10th, 100th and every
        1000th, never once per record."""
        self.stats.dropped += 1
        if self.stats.dropped in (1, 10, 100) or self.stats.dropped % 1000 == 0:
            log.warning("%s: %d records dropped so far", why, self.stats.dropped)
        return False

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    @property
    def waiting(self) -> int:
        """Records waiting for a lost database to come back."""
        return len(self._waiting)

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve()
        finally:  # stopped (or failed): what is queued now, and whatever comes later, is refused at once
            self._closed = True
            self._refuse_leftovers()
            self._drop_waiting()

    def _drop_waiting(self) -> None:
        """The thread ends with records still waiting for a lost database: they are lost with it,
        so they are counted as dropped, said in one line, and their bytes freed."""
        if not self._waiting:
            return
        left = list(self._waiting)
        self._waiting.clear()
        self._release(left)
        self.stats.dropped += len(left)
        log.warning(
            "%d records waiting for the database were dropped at the stop (%s)", len(left), self.stats.last_error
        )

    def _serve(self) -> None:
        assert self._conn is not None
        stopping = False
        idle_done = True  # idle tasks already ran since the last batch
        more_idle = False  # an idle task said it has more to do
        last_idle_run = time.monotonic()
        while not stopping and not self._closed:  # closed: a stop gave up waiting (_give_up)
            self._run_due_tasks()
            self._retry_waiting()
            try:
                first = self.queue.get(timeout=_MORE_IDLE_WORK_S if more_idle else self.idle_after_s)
            except queue.Empty:
                if not idle_done or more_idle or time.monotonic() - last_idle_run >= IDLE_RERUN_S:
                    more_idle = self._run_idle_tasks()
                    if not more_idle:
                        self._checkpoint("TRUNCATE")
                    idle_done = True
                    last_idle_run = time.monotonic()
                continue
            batch: list[_Item] = []
            item = first
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    batch.append(item)
                if len(batch) >= self.batch_max:
                    break
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
            if batch and self._waiting:
                self._retry_waiting()  # when it is time: the records waiting go first, in order
            if batch and self._waiting:
                # the database is still lost (or held): no round trip per batch, and nothing is
                # committed ahead of the records waiting (a write that needs no held table included)
                self._hold(batch)
            elif batch:
                self._commit(batch)
                idle_done = False
                if len(batch) < self.batch_max and not stopping and self.linger_s > 0:
                    self._linger()
            self._retry_waiting()
        if not self._closed:
            self._run_idle_tasks()
        if self._conn is not None:
            self._conn.close()

    def _linger(self) -> None:
        """After a batch that emptied the queue, let the next rows gather for ``linger_s``.

        Waiting in ``queue.get`` instead, the writer is woken by every row a request thread
        queues (a futex wake and a GIL hand-off each, ~75 µs of CPU per request under load,
        bench/README.md); after a linger it takes what came meanwhile in one batch. A caller
        that waits for its commit (``call``) or a stop ends the linger at once.
        """
        if self._urgent.wait(self.linger_s):
            self._urgent.clear()

    def _commit(self, batch: list[_Item]) -> None:
        """Commit a batch: optimistically in one go; if a job fails, again job by job.

        The fast path has no per-job SAVEPOINT (they cost more than a trace insert); the
        slow path isolates each job so one bad job never takes the others with it.
        """
        for retry in (True, False):
            try:
                self._reconnect_if_lost()
                try:
                    self._run_jobs(batch, isolated=False)
                except _JobFailed:
                    for item in batch:
                        item.result, item.error = None, None
                    self._run_jobs(batch, isolated=True)
                break
            except sqlite3.Error as exc:
                self._rollback()
                if retry and (getattr(self._conn, "broken", False) or transient(exc)):
                    # PostgreSQL closed the connection (a restart, a failover, an idle timeout), or aborted
                    # the transaction for a deadlock or a serialization failure: it was rolled back
                    # whole, so the batch runs once more (on a new connection when it broke).
                    if transient(exc):
                        log.info("a batch of %d records ran again after %s", len(batch), exc)
                        time.sleep(RERUN_AFTER_S * (1 + random.random()))
                    for item in batch:
                        item.result, item.error = None, None
                    continue
                self._batch_failed(batch, exc)
                return
            except Exception as exc:  # a defect, not the database's: this batch is lost, the writer goes on
                log.exception("a batch of %d records failed on an unexpected error", len(batch))
                self._rollback()
                self._batch_failed(batch, exc)
                return
        if not self.healthy:
            log.warning(
                "database writable again after %d failed batches; %d records dropped in all",
                self.stats.failed_batches,
                self.stats.dropped,
            )
            self._failure_logged_at = 0.0
        self.healthy = True
        self.stats.batches += 1
        self.stats.last_ok_monotonic = time.monotonic()
        self._release(batch)
        for item in batch:
            if item.error is None:
                self.stats.written += 1
                if item.done is not None:
                    self._tell_done(item.done)
            elif item.future is None:
                log.error("dropped a record the database refused: %s", item.error)
            if item.future is not None:
                if item.error is not None:
                    item.future.set_exception(item.error)
                else:
                    item.future.set_result(item.result)

    @staticmethod
    def _tell_done(done: Callable[[], None]) -> None:
        """A committed record's callback; one that fails is logged, never the end of the writer thread."""
        try:
            done()
        except Exception:
            log.exception("the callback of a committed record failed")

    def _reconnect_if_lost(self) -> None:
        """A PostgreSQL connection whose socket broke is replaced before the next batch."""
        if self._conn is not None and getattr(self._conn, "broken", False):
            self._conn.close()
            self._conn = None
        if self._conn is None:
            self._conn = self.backend.connect()

    def _run_jobs(self, batch: list[_Item], *, isolated: bool) -> None:
        conn = self._conn
        assert conn is not None
        audit.take_appended()
        begin(conn)
        if not isolated:
            for many, run in _runs(batch):
                try:
                    if many is None or len(run) == 1:
                        run[0].result = run[0].job(conn)
                    else:
                        many(conn, [item.job.__self__ for item in run])  # type: ignore[attr-defined]
                except Exception as exc:
                    self._isolate_unless_database(exc)
            try:
                run_deferred(conn)  # the jobs' steps deferred to the end: one that fails is found job by job
            except Exception as exc:
                self._isolate_unless_database(exc)
            self._commit_durably_if_audited(conn)
            return
        for item in batch:
            conn.execute("SAVEPOINT job")
            try:
                item.result = item.job(conn)
                run_deferred(conn)  # its own deferred steps, within its savepoint
                conn.execute("RELEASE job")
            except Exception as exc:  # one bad job must not sink the batch
                if database_failed(exc) or transient(exc):
                    raise
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                discard_deferred(conn)
                item.error = exc
        self._commit_durably_if_audited(conn)

    def _isolate_unless_database(self, exc: Exception) -> None:
        """A job failed in the batch's one transaction: the batch runs again job by job (``_JobFailed``),
        unless the database is at fault (full, read-only, I/O error, a deadlock: the whole batch fails,
        or runs again as it was)."""
        if database_failed(exc) or transient(exc):
            raise exc
        self._rollback()
        raise _JobFailed() from exc

    @staticmethod
    def _commit_durably_if_audited(conn: Any) -> None:
        """Commit (:func:`commit`: the deferred steps first); a batch holding an audit entry (an admin
        change, never a proxied request's trace) is flushed to disk before its callers are answered
        (``db.sync_wal``)."""
        commit(conn)
        if audit.take_appended():
            db.sync_wal(conn)

    def _rollback(self) -> None:
        conn = self._conn
        if conn is not None:
            drop_deferred(conn)
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _hold(self, batch: list[_Item]) -> None:
        """While the database is lost, callers waiting for a commit are told at once and
        fire-and-forget records join the waiting ones (the oldest go when there are too many)."""
        held = self._held_by_lock
        why = "held by another session" if held else "unreachable"
        error: Any = sqlite3.OperationalError(f"the database is {why}: {self.stats.last_error}")
        error.database_failed, error.lock_timeout = True, held
        for item in batch:
            if item.future is not None:
                item.future.set_exception(error)
            else:
                self._waiting.append(item)
        self._trim_waiting()

    def _trim_waiting(self) -> None:
        while len(self._waiting) > self.queue.maxsize:
            self._release([self._waiting.popleft()])
            self.stats.dropped_waiting += 1
            self.stats.dropped += 1

    def _retry_waiting(self) -> None:
        """Try the waiting records again (oldest first, a batch at a time) once it is time."""
        while self._waiting and time.monotonic() >= self._retry_at:
            chunk = [self._waiting.popleft() for _ in range(min(self.batch_max, len(self._waiting)))]
            self._commit(chunk)

    def _batch_failed(self, batch: list[_Item], exc: Exception) -> None:
        """The database refused the whole batch (disk full, read-only): count, log, go on.
        PostgreSQL lost (a restart, the network) or held (a lock another session holds past the
        busy timeout: 55P03): the records wait for it instead, retried every ``RETRY_LOST_S``, and
        callers waiting for a commit are told at once meanwhile (``_hold``)."""
        self.healthy = False
        self.stats.failed_batches += 1
        self.stats.last_error = str(exc)
        self._held_by_lock = held_by_lock(exc)
        if self.backend.dialect == "postgresql" and getattr(exc, "database_failed", False):
            self._retry_at = time.monotonic() + RETRY_LOST_S
            keep = [item for item in batch if item.future is None]
            for item in batch:
                if item.future is not None:
                    item.future.set_exception(exc)
            self._waiting.extendleft(reversed(keep))  # they are older than any still waiting
            self._trim_waiting()
            now = time.monotonic()
            if now - self._failure_logged_at >= FAILURE_LOG_EVERY_S:
                log.error(
                    "database %s (%s): %d records wait for it (at most %d, then the oldest are "
                    "dropped); /readyz reports 503 until writes succeed again",
                    "held by another session's lock" if self._held_by_lock else "unreachable",
                    exc,
                    len(self._waiting),
                    self.queue.maxsize,
                )
                self._failure_logged_at = now
            return
        self._release(batch)
        lost = 0
        for item in batch:
            if item.future is not None:
                item.future.set_exception(exc)
            else:
                lost += 1
        self.stats.dropped += lost
        self._lost_since_log += lost
        now = time.monotonic()
        if now - self._failure_logged_at >= FAILURE_LOG_EVERY_S:  # one line per 10 s, not per batch
            log.error(
                "database write failed (%s): %d records dropped (%d in all); /readyz reports 503 "
                "until writes succeed again",
                exc,
                self._lost_since_log,
                self.stats.dropped,
            )
            self._failure_logged_at = now
            self._lost_since_log = 0

    def _run_idle_tasks(self) -> bool:
        """One step of each idle task; True if any has more to do."""
        if self._conn is None:
            return False
        more = False
        for task in self._idle_tasks:
            try:
                more = bool(task(self._conn)) or more
            except Exception as exc:
                log.warning("idle task %s failed: %s", getattr(task, "__name__", task), exc)
        return more

    def _run_due_tasks(self) -> None:
        """Periodic tasks that are due, and the WAL size check."""
        if self._conn is None:
            return
        now = time.monotonic()
        for p in self._periodic:
            if now >= p.due:
                try:
                    p.task(self._conn)
                except Exception as exc:
                    log.error("periodic task %s failed: %s", getattr(p.task, "__name__", p.task), exc)
                p.due = time.monotonic() + p.every_s
        if now >= self._next_wal_check:
            self._next_wal_check = now + WAL_CHECK_EVERY_S
            self._check_wal()

    def _checkpoint(self, mode: str) -> bool:
        """Copy the WAL into the database; TRUNCATE also empties the -wal file. True if complete."""
        if not self.backend.wal or self._conn is None:
            return True
        # TRUNCATE waits for readers through the busy handler: wait briefly, not the full
        # busy timeout, so queued writes are not held up; the next idle period tries again.
        self._conn.execute("PRAGMA busy_timeout=200")
        try:
            busy, _log_frames, _done = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:
            log.debug("checkpoint (%s) failed: %s", mode, exc)
            return False
        finally:
            self._conn.execute(f"PRAGMA busy_timeout={db.BUSY_TIMEOUT_MS}")
        self.stats.checkpoints += 1
        self.stats.wal_bytes = files.file_size(self._wal_path) if self._wal_path else 0
        return busy == 0

    def _check_wal(self) -> None:
        """Under constant load the writer is never idle: keep the WAL bounded anyway.

        SQLite's automatic checkpoints normally keep it small; a reader that holds a read
        transaction for a long time can stop them, and that is worth a log line.
        """
        if not self.backend.wal:
            return
        size = files.file_size(self._wal_path) if self._wal_path else 0
        self.stats.wal_bytes = size
        if size > db.WAL_SIZE_LIMIT_BYTES and not self._checkpoint("PASSIVE"):
            log.warning(
                "the WAL file is %d MB and cannot be checkpointed: a long-running reader holds an old snapshot",
                size // (1024 * 1024),
            )

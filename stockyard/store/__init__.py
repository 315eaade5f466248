"""Storage: one database (an SQLite file or PostgreSQL), one writer thread, per-thread readers.

:class:`Store` is what the rest of the code holds, whichever database runs
(:mod:`.backends`). In the server its writes go through the
writer thread; in a CLI process (no writer) they run directly in a ``BEGIN IMMEDIATE``
transaction. Either way a write is a function of a connection, so operations are written
once and work in both places.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, TypeVar

from .. import audit
from . import db
from .backends import Backend, backend_for
from .pgpool import PooledReads, ReadPool
from .writer import Writer, begin, commit, drop_deferred

__all__ = ["Store", "Writer", "db", "backend_for", "storable"]

T = TypeVar("T")
PEEK_WAIT_S = 0.5  # how long /metrics waits for a pooled read connection (Store.peek)


def storable(ident: str) -> bool:
    """Whether a stored row could have this id (a client names a response, conversation or file
    by it): PostgreSQL's text holds no NUL and UTF-8 no lone surrogate (valid JSON escapes,
    ``\\u0000``, ``\\ud800``), and no id Stockyard or a provider made has either; such an id is
    unknown without asking the store, which would fail on it (a 500)."""
    try:
        ident.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in ident


class Store:
    def __init__(self, database: Path | str | Backend, writer: Writer | None = None) -> None:
        self.backend = backend_for(database)
        self.path = Path(getattr(self.backend, "path", ""))
        self.writer = writer
        self._local = threading.local()
        self._direct_lock = threading.Lock()
        self._direct: sqlite3.Connection | None = None
        # PostgreSQL: a bounded pool of read connections, taken per statement or transaction
        # (pgpool.py); each thread's reads go through a PooledReads of its own.
        self._pool = ReadPool(self.backend.connect) if self.backend.pooled_readers else None

    @property
    def pool(self) -> ReadPool | None:
        """The PostgreSQL read pool (its counts for /metrics); None on SQLite."""
        return self._pool

    def read(self) -> sqlite3.Connection:
        """This thread's read connection (opened on first use); on PostgreSQL, its pooled reads."""
        conn: Any = getattr(self._local, "conn", None)
        if conn is None:
            conn = PooledReads(self._pool) if self._pool is not None else self.backend.connect()
            self._local.conn = conn
        return conn

    def peek(self, query: Callable[[Any], T], wait_s: float = PEEK_WAIT_S) -> T:
        """``query(conn)`` on a read connection free now or within ``wait_s`` (on SQLite, this
        thread's own): for /metrics, which must answer while a burst holds every pooled connection,
        not after the busy timeout. A pool still busy raises the database-busy error."""
        if self._pool is None:
            return query(self.read())
        conn = self._pool.take(wait_s)
        try:
            return query(conn)
        finally:
            self._pool.give(conn)

    def end_reads(self) -> None:
        """This thread is done with its work (a server thread may serve another connection next):
        a read transaction left open would keep its old snapshot into the next. Never raises: a
        connection that cannot roll back (its database went away) is closed, and the next read opens one."""
        conn = getattr(self._local, "conn", None)
        if conn is None or not conn.in_transaction or getattr(conn, "broken", False):
            return
        try:
            conn.execute("ROLLBACK")
        except Exception:
            self._local.conn = None
            try:
                conn.close()
            except Exception:
                pass

    def close_reads(self) -> None:
        """This thread ends: its read connection is closed now, not when the garbage collector gets to
        it (a burst of threads that ended left their files open beside the next burst's). Never raises."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        try:
            conn.close()
        except Exception:
            pass

    def write(self, job: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``job(conn)`` in a write transaction and return its result once committed."""
        if self.writer is not None:
            return self.writer.call(job)
        with self._direct_lock:
            if self._direct is not None and getattr(self._direct, "broken", False):
                self._direct.close()
                self._direct = None
            if self._direct is None:
                self._direct = self.backend.connect()
            conn = self._direct
            audit.take_appended()
            begin(conn)
            try:
                result = job(conn)
                commit(conn)
            except BaseException:
                drop_deferred(conn)
                conn.execute("ROLLBACK")
                raise
            if audit.take_appended():
                db.sync_wal(conn)  # the audit chain's commits are durable before anyone is told
            return result

    def checkpoint_now(self) -> None:
        """Copy the -wal file into the database and empty it, after a write made without the server's
        writer (an erase from the CLI): a running server checkpoints after its own writes only, so
        until then the database file keeps the pages as they were before this write. Best effort: a
        reader holding an old snapshot leaves it to the server's next checkpoint. Nothing on PostgreSQL."""
        if self.writer is not None or self._direct is None:
            return  # the writer checkpoints when idle; no direct write, nothing to copy
        with self._direct_lock:
            try:
                self._direct.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                pass

    def write_later(
        self, job: Callable[[sqlite3.Connection], Any], queue_wait: float = 30.0, urgent: bool = True
    ) -> Future:
        """``write`` without the wait: the future of its result (``Writer.later``, ``urgent`` as
        there); run now, its future already resolved, when no writer runs. ``queue_wait``: how long
        a full queue may keep the caller (0 on the stream relay's thread: a full queue is then the
        future's ``queue.Full``, not a wait)."""
        future: Future = Future()
        if self.writer is not None:
            try:
                return self.writer.later(job, queue_wait, urgent)
            except queue.Full:  # said so in the log line or trace note of what it failed
                future.set_exception(queue.Full(f"the database writer's queue is full ({self.writer.depth} waiting)"))
                return future
        try:
            future.set_result(self.write(job))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def submit(
        self,
        job: Callable[[sqlite3.Connection], Any],
        done: Callable[[], None] | None = None,
        size: int = 0,
        owner: str | None = None,
    ) -> bool:
        """Fire-and-forget write (traces); direct when no writer runs. ``done`` runs once it is committed;
        ``size``: the bytes the job holds while queued, ``owner``'s (``Writer.submit``)."""
        if self.writer is not None:
            return self.writer.submit(job, done, size, owner)
        self.write(job)
        if done is not None:
            done()
        return True

    def room(self, size: int, owner: str | None = None) -> bool:
        """Whether ``owner``'s record of ``size`` bytes may be queued whole (``Writer.room``; always
        without a writer)."""
        return self.writer is None or self.writer.room(size, owner)

    def close(self) -> None:
        self.close_reads()
        if self._pool is not None:
            self._pool.close()
        if self._direct is not None:
            self._direct.close()
            self._direct = None

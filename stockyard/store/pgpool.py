"""A server's read connections on PostgreSQL: a bounded pool, taken per statement or transaction.

On SQLite each thread opens the file for itself (cheap, and no limit). On PostgreSQL a connection
is a server process, and the server allows ``max_connections`` (100 by default) across every
replica: a thread each, a burst of 1,000 budgeted streams opened 1,000 and most of their budget
loads, rate counts and settlements failed ("too many clients already"). So :meth:`Store.read
<stockyard.store.Store.read>` gives a thread :class:`PooledReads`, which takes a connection from
the store's :class:`ReadPool` for one statement (autocommit) and gives it back, or keeps it from a
``BEGIN`` to its ``COMMIT``/``ROLLBACK``. At most ``STOCKYARD_PG_CONNECTIONS`` are open; a thread
that finds them all busy waits up to the busy timeout, then gets a database-busy error (a 503).
The writer, the LISTEN connection, the configuration watcher, the server lock and the lease keeper
have their own.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Any, Callable, Iterable, Sequence

from .pg import TOO_MANY_CONNECTIONS

log = logging.getLogger("stockyard.store")

READERS_MAX = 20  # STOCKYARD_PG_CONNECTIONS: read connections a server keeps open at most
WAIT_S = 10.0  # how long a thread waits for one (STOCKYARD_BUSY_TIMEOUT_MS)
RETRY_S = 1.0  # after PostgreSQL refused a connection, how long before the pool asks for another
# A connection idle this long is closed (ReadPool.close_idle), but the last given back: a burst's do
# not hold PostgreSQL's server processes (or a session-mode pooler's sessions) for ever
IDLE_CLOSE_S = 60.0


def configure(readers: int, wait_ms: int) -> None:
    """Set the pool's size and wait from the server's settings, before any store opens one."""
    global READERS_MAX, WAIT_S
    READERS_MAX, WAIT_S = readers, wait_ms / 1000


class ReadPool:
    """At most READERS_MAX connections of one backend, the last given back taken first (a few
    stay warm; the rest stay open, idle, for the next burst, until idle IDLE_CLOSE_S: :meth:`close_idle`).
    PostgreSQL may allow fewer (``max_connections`` reached by other clients, a role's ``CONNECTION
    LIMIT``): a refused connection holds the pool at those it has for RETRY_S, and threads wait for
    one given back."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._idle: list[tuple[Any, float]] = []  # (connection, when it was given back), the last on top
        self._open = 0
        self._closed = False
        self._cond = threading.Condition()
        self._cap, self._cap_until = 0, 0.0  # the connections PostgreSQL allowed at its last refusal, until when
        self.refusals = 0  # connections PostgreSQL refused (too many connections)
        self.busy = 0  # threads that waited out WAIT_S for a connection (each a database-busy error)

    @property
    def open(self) -> int:
        """Connections open now, idle or in use (/metrics)."""
        return self._open

    def take(self, wait_s: float | None = None) -> Any:
        """A connection: idle, or newly opened below the limit, or the first given back within
        ``wait_s`` (WAIT_S, the busy timeout); else the database-busy error."""
        wait = WAIT_S if wait_s is None else wait_s
        deadline = time.monotonic() + wait
        while True:
            with self._cond:
                if self._wait_for_room(deadline, wait):
                    return self._idle.pop()[0]
                self._open += 1
            try:
                return self._connect()
            except BaseException as exc:
                self._forget()
                if getattr(exc, "sqlstate", "") != TOO_MANY_CONNECTIONS:
                    raise
                self._refused(exc)

    def _wait_for_room(self, deadline: float, wait: float) -> bool:
        """Under the lock: True when an idle connection waits, False when one may be opened;
        busy once ``deadline`` passes with neither."""
        while not self._idle:
            now = time.monotonic()
            capped = now < self._cap_until
            if self._open < (self._cap if capped else READERS_MAX):
                return False
            left = deadline - now
            if left <= 0:
                self.busy += 1
                raise _busy(self._open if capped else READERS_MAX, capped, wait)
            self._cond.wait(min(left, self._cap_until - now) if capped else left)
        return True

    def _refused(self, exc: BaseException) -> None:
        """PostgreSQL has no connection to spare: make do with those open for a while."""
        with self._cond:
            capped = time.monotonic() < self._cap_until
            self._cap, self._cap_until = self._open, time.monotonic() + RETRY_S
            self.refusals += 1
        if not capped:
            log.warning(
                "PostgreSQL refused a read connection (%s): this server reads on the %d it has open "
                "(STOCKYARD_PG_CONNECTIONS is %d; raise max_connections or lower it)",
                exc,
                self._cap,
                READERS_MAX,
            )

    def give(self, conn: Any) -> None:
        """A connection back: idle again, or closed if it broke (or its transaction cannot end,
        whatever the ROLLBACK raised: the connection still leaves the pool's count)."""
        try:
            if conn.in_transaction and not conn.broken:  # its thread ended inside a transaction
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            conn.broken = True
        finally:
            self._put_back(conn)

    def _put_back(self, conn: Any) -> None:
        with self._cond:
            keep = not conn.broken and not self._closed
            if keep:
                self._idle.append((conn, time.monotonic()))
                self._cond.notify()
        if not keep:
            conn.close()
            self._forget()
        else:
            self.close_idle()

    def close_idle(self) -> None:
        """Close the connections idle IDLE_CLOSE_S or longer but the last given back: that one is
        taken first, so those below it are what the traffic no longer needs (a burst's, which would
        hold PostgreSQL's server processes, or a session-mode pooler's sessions, for ever). Run as
        each one is given back, and by the writer every IDLE_CLOSE_S for a server no request reaches."""
        stale_before = time.monotonic() - IDLE_CLOSE_S
        with self._cond:
            stale = 0
            while stale < len(self._idle) - 1 and self._idle[stale][1] <= stale_before:
                stale += 1
            closing, self._idle = self._idle[:stale], self._idle[stale:]
            self._open -= stale
            if stale:
                self._cond.notify_all()
        for conn, _ in closing:
            conn.close()

    def _forget(self) -> None:
        with self._cond:
            self._open -= 1
            self._cond.notify()

    def close(self) -> None:
        """Close the idle connections; those in use close when given back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for conn, _ in idle:
            conn.close()


def _busy(count: int, refused: bool, wait: float) -> sqlite3.OperationalError:
    why = " (PostgreSQL refused more: too many connections)" if refused else ""
    message = f"all {count} PostgreSQL read connections of this server stayed busy for {wait:g} s{why}"
    if count == 0:  # other clients hold every connection PostgreSQL allows
        message = f"PostgreSQL refused every read connection of this server for {wait:g} s (too many connections)"
    error: Any = sqlite3.OperationalError(f"{message} (STOCKYARD_PG_CONNECTIONS)")
    error.database_failed = True  # a 503 database_unavailable, as a lock held past the busy timeout
    error.lock_timeout = True  # nothing is wrong with any connection
    error.pool_busy = True  # this server's own burst: a rate limit refuses rather than passes uncounted
    return error


class PooledReads:
    """What ``Store.read()`` gives a thread on PostgreSQL: the sqlite3-like connection its callers
    use, each statement on a connection of the pool, a transaction on one connection to its end."""

    dialect = "postgresql"
    row_factory = None  # accepted and ignored, as by PgConnection
    broken = False  # a connection that broke goes back to the pool (closed there), never stays here

    def __init__(self, pool: ReadPool) -> None:
        self._pool = pool
        self._held: Any = None  # the connection of an open transaction

    @property
    def in_transaction(self) -> bool:
        return self._held is not None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._on(lambda conn: conn.execute(sql, params))

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Any:
        return self._on(lambda conn: conn.executemany(sql, seq))

    def insert_many(self, sql: str, seq: Sequence[Sequence[Any]]) -> None:
        self._on(lambda conn: conn.insert_many(sql, seq))

    def _on(self, run: Callable[[Any], Any]) -> Any:
        conn = self._held if self._held is not None else self._pool.take()
        try:
            return run(conn)
        finally:
            if conn.in_transaction and not conn.broken:
                self._held = conn
            else:
                self._held = None
                self._pool.give(conn)

    def close(self) -> None:
        """Give back a connection still held (rolled back there)."""
        held, self._held = self._held, None
        if held is not None:
            self._pool.give(held)

    def __del__(self) -> None:  # the thread ended inside a transaction (its thread-local went)
        try:
            self.close()
        except Exception:
            log.debug("giving back a read connection of an ended thread failed", exc_info=True)

"""The two databases behind :class:`~stockyard.store.Store`: an SQLite file or PostgreSQL.

A backend knows how to open a connection, bring the schema up to date, keep the server lock
(SQLite: one server per file; PostgreSQL: any number of replicas) and make the budget ledger
and rate limiter that fit (in memory, or shared through the database); everything else (jobs,
reads, the writer thread) is the same code for both, over connections that speak the same subset of the sqlite3 API
(:mod:`stockyard.store.pg` for PostgreSQL). :func:`backend_for` picks one from the
``--db`` value.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from ..dburl import PostgresURL
from . import db, files
from .lock import SERVER, DatabaseBusy, DatabaseLock

log = logging.getLogger("stockyard")


class SqliteBackend:
    """One SQLite file in WAL mode (the default)."""

    dialect = "sqlite"
    wal = True  # the writer keeps the -wal file bounded (checkpoints)
    pooled_readers = False  # opening a file is cheap: each thread its own, as always

    def __init__(self, path: Path | str, group: Path | None = None) -> None:
        self.path = Path(path)
        # A worker of ``serve --workers N``: the parent holds the file's lock for the group, and
        # the budgets and rate windows, which the workers call (``group``: the group's folder,
        # with the parent's socket; see groupstate.py).
        self.group = group
        self._state: Any = None

    def __str__(self) -> str:
        return str(self.path)

    def connect(self, readonly: bool = False) -> Any:
        return db.connect(self.path, readonly=readonly)

    def open_and_migrate(self) -> list[db.Migration]:
        """Create or upgrade the file (backed up beside it first)."""
        conn, applied = db.open_and_migrate(self.path)
        conn.close()
        return applied

    def server_lock(self) -> Any:
        return HeldByParent() if self.group else DatabaseLock(self.path, SERVER).acquire()

    def changes(self) -> Any:
        """Configuration changes of other processes arrive by the watcher's poll only."""
        from .changes import Polling

        return Polling()

    def ledger(self, store: Any, load: Any, *args: Any) -> Any:
        """Budgets in this process's memory: one server per file (the lock) holds the only ledger;
        a group's workers call the one their parent holds."""
        if self.group:
            from ..groupstate import RemoteLedger

            return RemoteLedger(self.group_state(), load, *args)
        from ..budgets import Ledger

        return Ledger(load, *args)

    def rate_limiter(self, store: Any) -> Any:
        """Sliding windows in this process's memory (one server per file), or the group parent's."""
        if self.group:
            from ..groupstate import RemoteRateLimiter

            return RemoteRateLimiter(self.group_state())
        from ..modules.ratelimit import RateLimiter

        return RateLimiter()

    def shared_rate_limiter(self, store: Any) -> Any:
        """Windows other processes count in too (deployments' quotas): a group's, else none."""
        return self.rate_limiter(store) if self.group else None

    def group_state(self) -> Any:
        """This worker's connections to the group's shared state (one pool per process)."""
        from ..groupstate import StateClient

        if self._state is None:
            assert self.group is not None
            self._state = StateClient(self.group)
        return self._state

    def secure_files(self, extra: list[Path]) -> list[str]:
        """Tighten the modes of the database files; one line per file changed."""
        return files.secure_existing(self.path, extra)

    def size_bytes(self, conn: Any) -> int:
        """The database file's size (metrics)."""
        return files.file_size(self.path)

    def wal_bytes(self) -> int:
        return files.file_size(files.wal_path(self.path))

    def disk_bytes(self, conn: Any) -> int:
        """What the database takes on disk, -wal and -shm included (/api/status)."""
        return files.disk_bytes(self.path)


class HeldByParent:
    """The server lock of a worker: its group's parent holds the ``flock`` for all of them."""

    def keep(self) -> None:
        pass

    def release(self) -> None:
        pass


class PostgresBackend:
    """A PostgreSQL database, reached with the bundled pg8000."""

    dialect = "postgresql"
    wal = False  # PostgreSQL manages its own WAL
    pooled_readers = True  # a server process each: a bounded pool (pgpool.py, Store.read)

    def __init__(self, url: PostgresURL) -> None:
        self.url = url
        self._shared_sessions: bool | None = None  # found on first use (shared_sessions)

    def __str__(self) -> str:
        return self.url.masked()

    @property
    def shared_sessions(self) -> bool:
        """Does the URL reach PostgreSQL through a pooler in transaction mode (:func:`.pg.shares_sessions`)?
        Asked once per process, on the first connection."""
        if self._shared_sessions is None:
            from .pg import _error, shares_sessions

            try:
                self._shared_sessions = shares_sessions(self.url)
            except sqlite3.Error:
                raise
            except Exception as exc:  # PostgreSQL unreachable: as opening a connection fails
                error = _error(exc)
                unreachable: Any = type(error)(f"cannot open the database {self}: {error}")
                unreachable.database_failed = True
                unreachable.sqlstate = getattr(error, "sqlstate", "")
                raise unreachable from None
        return self._shared_sessions

    def connect(self, readonly: bool = False) -> Any:
        from .pg import PgConnection

        return PgConnection(self.url, self.shared_sessions)

    def open_and_migrate(self) -> list[db.Migration]:
        """Migrate in one transaction under a transaction advisory lock: N servers starting at once
        migrate exactly once (the others wait, then find nothing pending), and no lock outlives the
        transaction (a session lock taken through a pooler in transaction mode stays on a pooled
        server session: the next start on another one waits for ever). The wait has no busy
        timeout: another server's migration takes as long as it takes, and a start that gave up
        after 10 s would fail every replica started beside it. The commit waits for its WAL to be
        flushed whatever ``synchronous_commit`` says: the servers build on the schema it makes (one
        asynchronous commit of all the migrations, lost to a crash soon after, lost the whole schema)."""
        from .pg import MIGRATE_LOCK_KEY

        conn = self.connect()
        try:
            conn.executescript(
                "BEGIN; SET LOCAL lock_timeout = 0; SET LOCAL synchronous_commit = on; "
                f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK_KEY})"
            )
            try:
                pending = db.pending_migrations(conn)  # read under the lock: none once another server applied them
                for m in pending:
                    conn.executescript(db.migration_script(self.dialect, m))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction and not conn.broken:
                    conn.execute("ROLLBACK")
                raise
            return pending
        finally:
            conn.close()

    def server_lock(self) -> "PostgresServerLock | Unlocked":
        if self.shared_sessions:
            log.warning(
                "database %s is reached through a pooler in transaction mode (PgBouncer's pool_mode = transaction, "
                "a managed pooled URL): statements run unprepared and the busy timeout is set per transaction; "
                "no server lock is held and configuration changes reach this server by polling "
                "(STOCKYARD_CONFIG_POLL), not LISTEN — both need a session of their own. For them use the "
                "pooler's session mode or a direct URL to PostgreSQL",
                self,
            )
            return Unlocked()
        return PostgresServerLock(self).acquire()

    def changes(self) -> Any:
        """Configuration changes arrive at once by LISTEN/NOTIFY (the poll stays as the fallback);
        through a pooler in transaction mode by the poll alone: the LISTEN would be made on a pooled
        server session that this client no longer reads, and no notification would ever arrive."""
        from .changes import Listening, Polling

        return Polling() if self.shared_sessions else Listening(self.url)

    def ledger(self, store: Any, load: Any, *args: Any) -> Any:
        """Budgets in the database, shared by every replica (:mod:`.shared`)."""
        from .shared import SharedLedger

        return SharedLedger(store, load, *args)

    def rate_limiter(self, store: Any) -> Any:
        """Per-second request and token counts in the database, shared by every replica."""
        from .shared import SharedRateLimiter

        return SharedRateLimiter(store)

    def shared_rate_limiter(self, store: Any) -> Any:
        """Every replica counts in the database's windows."""
        return self.rate_limiter(store)

    def secure_files(self, extra: list[Path]) -> list[str]:
        return []  # no database file here

    def size_bytes(self, conn: Any) -> int:
        return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])

    def wal_bytes(self) -> int:
        return 0  # the server's WAL is PostgreSQL's to manage

    def disk_bytes(self, conn: Any) -> int:
        return self.size_bytes(conn)


class Unlocked:
    """No server lock: through a pooler in transaction mode a session advisory lock would stay
    on a pooled server session after this server stopped, and the next check of it would see
    another session's (``PostgresBackend.server_lock`` says so when the server starts)."""

    def keep(self) -> None:
        pass

    def release(self) -> None:
        pass


class PostgresServerLock:
    """Any number of servers (replicas) per PostgreSQL database: budgets and rate limits are
    shared through it (:mod:`.shared`). Each server holds this *shared* advisory lock on its own
    connection, so a command that must run alone can tell servers are running by failing to take
    it exclusively (``pg_try_advisory_lock(KEY)``). The server's death closes the connection and
    frees its share."""

    KEY = 0x5354_4F43_4B59_0003

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        self._conn: Any = None

    def acquire(self) -> "PostgresServerLock":
        conn = self.backend.connect()
        if not conn.execute(f"SELECT pg_try_advisory_lock_shared({self.KEY})").fetchone()[0]:
            conn.close()
            raise DatabaseBusy(f"{self.backend} is held by a command that must run alone (restore, move): wait for it")
        self._conn = conn
        return self

    def keep(self) -> None:
        """Still held? A restart of PostgreSQL (or a terminated session) drops the lock with its
        connection: take it again (DatabaseBusy while a command holds the database alone; the
        connection error while PostgreSQL is away, and the next pass tries again)."""
        if self._conn is None:  # an earlier pass lost it and could not take it again
            self.acquire()
            return
        try:  # this connection takes no other advisory lock; a reconnected one holds none
            held = self._conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            ).fetchone()[0]
            if held:
                return
            if self._conn.execute(f"SELECT pg_try_advisory_lock_shared({self.KEY})").fetchone()[0]:
                log.warning("database lock: taken again after the connection holding it was lost")
                return
        except sqlite3.Error:
            pass
        self.release()
        self.acquire()

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


Backend = SqliteBackend | PostgresBackend


def backend_for(database: Path | str | PostgresURL | Backend) -> Backend:
    """The backend for a ``--db`` value: a PostgresURL is PostgreSQL, a path is SQLite."""
    if isinstance(database, (SqliteBackend, PostgresBackend)):
        return database
    if isinstance(database, PostgresURL):
        return PostgresBackend(database)
    return SqliteBackend(database)

"""The two databases behind :class:`~stockyard.store.Store`: an SQLite file or PostgreSQL.

A backend knows how to open a connection, bring the schema up to date, and keep the
"one server on this database" lock; everything else (jobs, reads, the writer thread) is
the same code for both, over connections that speak the same subset of the sqlite3 API
(:mod:`stockyard.store.pg` for PostgreSQL). :func:`backend_for` picks one from the
``--db`` value.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from ..dburl import PostgresURL
from . import db, files
from .lock import SERVER, DatabaseBusy, DatabaseLock

log = logging.getLogger("stockyard")
REPLICAS_PREVIEW = "STOCKYARD_PREVIEW_REPLICAS"  # "1": no one-server lock on PostgreSQL (until rate limits are shared)


class SqliteBackend:
    """One SQLite file in WAL mode (the default)."""

    dialect = "sqlite"
    wal = True  # the writer keeps the -wal file bounded (checkpoints)
    reuse_readers = False  # opening a file is cheap: each thread its own, as always

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

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
        return DatabaseLock(self.path, SERVER).acquire()

    def ledger(self, store: Any, load: Any, *args: Any) -> Any:
        """Budgets in this process's memory: one server per file (the lock) holds the only ledger."""
        from ..budgets import Ledger

        return Ledger(load, *args)

    def rate_limiter(self, store: Any) -> Any:
        """Sliding windows in this process's memory (one server per file)."""
        from ..modules.ratelimit import RateLimiter

        return RateLimiter()

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


class PostgresBackend:
    """A PostgreSQL database, reached with the bundled pg8000."""

    dialect = "postgresql"
    wal = False  # PostgreSQL manages its own WAL
    reuse_readers = True  # a finished thread's connection serves the next one (Store.read)

    def __init__(self, url: PostgresURL) -> None:
        self.url = url

    def __str__(self) -> str:
        return self.url.masked()

    def connect(self, readonly: bool = False) -> Any:
        from .pg import PgConnection

        return PgConnection(self.url)

    def open_and_migrate(self) -> list[db.Migration]:
        """Migrate under an advisory lock: N servers starting at once migrate exactly once
        (the others wait, then find nothing pending)."""
        from .pg import MIGRATE_LOCK_KEY

        conn = self.connect()
        try:
            conn.execute(f"SELECT pg_advisory_lock({MIGRATE_LOCK_KEY})")
            try:
                return db.migrate(conn)
            finally:
                conn.execute(f"SELECT pg_advisory_unlock({MIGRATE_LOCK_KEY})")
        finally:
            conn.close()

    def server_lock(self) -> "PostgresServerLock":
        return PostgresServerLock(self).acquire()

    def ledger(self, store: Any, load: Any, *args: Any) -> Any:
        """Budgets in the database, shared by every replica (:mod:`.shared`)."""
        from .shared import SharedLedger

        return SharedLedger(store, load, *args)

    def rate_limiter(self, store: Any) -> Any:
        """Per-second request and token counts in the database, shared by every replica."""
        from .shared import SharedRateLimiter

        return SharedRateLimiter(store)

    def secure_files(self, extra: list[Path]) -> list[str]:
        return []  # no database file here

    def size_bytes(self, conn: Any) -> int:
        return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])

    def wal_bytes(self) -> int:
        return 0  # the server's WAL is PostgreSQL's to manage

    def disk_bytes(self, conn: Any) -> int:
        return self.size_bytes(conn)


class PostgresServerLock:
    """One server per PostgreSQL database, for now: a session advisory lock held on its own
    connection. Budgets and rate limits still live in each server's memory; until they are
    shared through the database, a second server would enforce them a second time. The
    server's death closes the connection and frees the lock."""

    KEY = 0x5354_4F43_4B59_0003

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        self._conn: Any = None

    def acquire(self) -> "PostgresServerLock":
        if os.environ.get(REPLICAS_PREVIEW) == "1":
            return self  # budgets are shared already; rate limits not yet (tests of the shared budgets)
        conn = self.backend.connect()
        taken = conn.execute(f"SELECT pg_try_advisory_lock({self.KEY})").fetchone()[0]
        if not taken:
            conn.close()
            raise DatabaseBusy(
                f"another Stockyard server is already using {self.backend}; two servers on one "
                "database would each enforce budgets and rate limits on their own - stop it first"
            )
        self._conn = conn
        return self

    def keep(self) -> None:
        """Still held? A restart of PostgreSQL (or a terminated session) drops the lock with its
        connection: take it again, or raise DatabaseBusy when another server took it meanwhile."""
        if self._conn is None and os.environ.get(REPLICAS_PREVIEW) == "1":
            return
        try:  # this connection takes no other advisory lock; a reconnected one holds none
            held = self._conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            ).fetchone()[0]
            if held:
                return
            if self._conn.execute(f"SELECT pg_try_advisory_lock({self.KEY})").fetchone()[0]:
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

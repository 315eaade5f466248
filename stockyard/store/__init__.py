"""Storage: one database (an SQLite file or PostgreSQL), one writer thread, per-thread readers.

:class:`Store` is what the rest of the code holds, whichever database runs
(:mod:`.backends`). In the server its writes go through the
writer thread; in a CLI process (no writer) they run directly in a ``BEGIN IMMEDIATE``
transaction. Either way a write is a function of a connection, so operations are written
once and work in both places.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

from . import db
from .backends import Backend, backend_for
from .writer import Writer

__all__ = ["Store", "Writer", "db", "backend_for"]


class Store:
    def __init__(self, database: Path | str | Backend, writer: Writer | None = None) -> None:
        self.backend = backend_for(database)
        self.path = Path(getattr(self.backend, "path", ""))
        self.writer = writer
        self._local = threading.local()
        self._direct_lock = threading.Lock()
        self._direct: sqlite3.Connection | None = None

    def read(self) -> sqlite3.Connection:
        """This thread's read connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(conn, "broken", False):  # PostgreSQL went away: a new connection
            conn.close()
            conn = None
        if conn is None:
            conn = self.backend.connect()
            self._local.conn = conn
        return conn

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
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = job(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return result

    def submit(self, job: Callable[[sqlite3.Connection], Any], done: Callable[[], None] | None = None) -> bool:
        """Fire-and-forget write (traces); direct when no writer runs. ``done`` runs once it is committed."""
        if self.writer is not None:
            return self.writer.submit(job, done)
        self.write(job)
        if done is not None:
            done()
        return True

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        if self._direct is not None:
            self._direct.close()
            self._direct = None

"""An advisory lock beside the database: "a server is using this file".

A running server holds a *shared* ``flock`` on ``<db>.lock`` from start to stop;
``restore`` and ``migrate`` need it *exclusively*, so they refuse while any server runs
(and a server refuses to start in the middle of a restore). The kernel drops the lock
when the process dies, even by ``kill -9``, so a crash never leaves a stale lock behind.
The lock file also carries the pid of the last server, only to make the refusal readable.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from . import files


class DatabaseBusy(Exception):
    """Another process holds the database lock in a conflicting mode."""


def lock_path(db_path: Path | str) -> Path:
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + ".lock")


class DatabaseLock:
    """``with DatabaseLock(db, exclusive=True): ...`` or ``acquire()`` / ``release()``."""

    def __init__(self, db_path: Path | str, *, exclusive: bool) -> None:
        self.db_path = Path(db_path)
        self.path = lock_path(db_path)
        self.exclusive = exclusive
        self._fd: int | None = None

    def acquire(self) -> "DatabaseLock":
        """Take the lock without waiting; DatabaseBusy (saying who holds it) if it is taken."""
        files.make_folder(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, files.FILE_MODE)
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            if self.exclusive:
                who = f" (pid {holder})" if holder else ""
                raise DatabaseBusy(f"a Stockyard server{who} is using {self.db_path}; stop it first") from None
            raise DatabaseBusy(f"{self.db_path} is being restored or migrated by another "
                               "stockyard command; start the server when it has finished") from None
        if not self.exclusive:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DatabaseLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None

"""An advisory lock beside the database: "one process owns this file's server-side state".

A running server holds an exclusive ``flock`` on ``<db>.lock`` (beside the file the path
resolves to: a symlink names the same database) from start to stop, and so
do ``restore`` and ``migrate`` while they work. So a second server on the same file
refuses to start (two servers would each keep their own budget ledger and rate-limit
counters in memory, and together let through twice what a key allows), restore and
migrate refuse while a server runs, and a server refuses to start in the middle of a
restore. Other CLI commands (keys, prices, …) take no lock: they write through SQLite and
a running server picks their changes up.

The kernel drops the lock when the process dies, even by ``kill -9``, so a crash never
leaves a stale lock behind: the file may stay, but nobody holds it. The file carries the
pid and role of its holder, only to make the refusal readable.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from . import files

SERVER, RESTORE, MIGRATE = "server", "restore", "migrate"
_DOING = {RESTORE: "restored", MIGRATE: "migrated"}


class DatabaseBusy(Exception):
    """Another process holds the database lock."""


def lock_path(db_path: Path | str) -> Path:
    """``<db>.lock`` beside the file itself: the database named through a symlink (or a symlinked
    folder) is the same database, and must meet the same lock."""
    db_path = Path(db_path).resolve()
    return db_path.with_name(db_path.name + ".lock")


class DatabaseLock:
    """``with DatabaseLock(db, RESTORE): ...`` or ``acquire()`` / ``release()``.

    ``role`` says who holds it: ``server``, ``restore`` or ``migrate``.
    """

    def __init__(self, db_path: Path | str, role: str) -> None:
        self.db_path = Path(db_path)
        self.path = lock_path(db_path)
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> "DatabaseLock":
        """Take the lock without waiting; DatabaseBusy (saying who holds it) if it is taken."""
        files.make_folder(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, files.FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, role = _read_holder(fd)
            os.close(fd)
            raise DatabaseBusy(self._refusal(pid, role)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.role}\n".encode(), 0)
        self._fd = fd
        return self

    def _refusal(self, pid: int | None, role: str | None) -> str:
        who = f"pid {pid}" if pid else "pid unknown"
        if role in _DOING:
            return (
                f"{self.db_path} is being {_DOING[role]} by another stockyard command ({who}); "
                f"{'start the server' if self.role == SERVER else 'try again'} when it has finished"
            )
        if self.role == SERVER:
            return (
                f"another Stockyard server ({who}) is already using {self.db_path}; two servers on one "
                "database would each enforce budgets and rate limits on their own - stop it first, "
                "or give this one another --db"
            )
        return f"a Stockyard server ({who}) is using {self.db_path}; stop it first"

    def keep(self) -> None:
        """Nothing to do: the kernel holds a file lock until release or death."""

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DatabaseLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> tuple[int | None, str | None]:
    """(pid, role) from the lock file; (None, None) when unreadable (e.g. being rewritten)."""
    try:
        words = os.pread(fd, 64, 0).decode().split()
        return (int(words[0]) if words else None), (words[1] if len(words) > 1 else SERVER)
    except (OSError, ValueError, UnicodeDecodeError):
        return None, None

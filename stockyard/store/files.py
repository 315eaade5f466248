"""The database's files: which they are, their sizes, and their modes.

The database and every copy of it are readable by their owner only.

Every prompt and answer Stockyard records sits in these files, so the data folder is
created 0700 and every file 0600 — the database (SQLite gives its -wal, -shm and journal
files the database file's own mode), the lock file, snapshots, backups and the copies
kept before a migration or a restore. Files left readable by an older version are made
private when the server starts or ``migrate`` runs. A folder the user chose is never
changed (it may hold other things); a warning says when others can enter it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from ..config import DEFAULT_DB

FILE_MODE = 0o600
FOLDER_MODE = 0o700
_umask_lock = threading.Lock()


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files created inside are private whatever the process umask (threads take turns)."""
    with _umask_lock:
        old = os.umask(0o077)
        try:
            yield
        finally:
            os.umask(old)


def make_folder(folder: Path) -> None:
    """Create ``folder`` (and missing parents) 0700 if it does not exist; an existing one is left alone."""
    if folder.is_dir():
        return
    with private_umask():
        folder.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (SQLite then mirrors that mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass


def copy_beside(dest: Path, kind: str) -> Path:
    """The name a copy of ``dest`` is written under before it is renamed over it,
    ``.<dest name>.<kind>-<pid>-<thread>``, once the copies of processes that are gone are removed
    (:func:`remove_orphaned_copies`, which reads the pid back from this name)."""
    remove_orphaned_copies(dest, kind)
    made = dest.with_name(f".{dest.name}.{kind}-{os.getpid()}-{threading.get_ident()}")
    _MADE.add(str(made.resolve()))
    return made


# The copy names this process handed out: one of its pid that is not among them was a former process's
# with the same pid (a container's server is pid 1 at every start).
_MADE: set[str] = set()


def remove_orphaned_copies(dest: Path, kind: str) -> None:
    """Delete ``.<dest name>.<kind>-<pid>-…`` files (a copy being written, then renamed to ``dest``)
    whose process is gone: one killed while writing left a whole copy of the database there,
    and the next process, with another pid, would never reuse it. A live process's is kept."""
    prefix = f".{dest.name}.{kind}-"
    for start in (prefix, "." + prefix):  # and a copy of a copy (an older restore's ``..NAME.restore-…``)
        for leftover in dest.parent.glob(f"{glob.escape(start)}*"):
            pid = leftover.name[len(start) :].split("-", 1)[0]
            if pid.isdigit() and (not process_alive(int(pid)) or _former(int(pid), leftover)):
                leftover.unlink(missing_ok=True)


def _former(pid: int, leftover: Path) -> bool:
    """Whether a copy named with this process's ``pid`` (or its -wal, -shm, -journal) was left by a
    former process that had that pid: none of this one's names begins it."""
    name = str(leftover.resolve())
    return pid == os.getpid() and not any(name.startswith(made) for made in _MADE)


def private_temp_folder(kind: str) -> tempfile.TemporaryDirectory:
    """A 0700 folder in the system temp folder for a copy of the data, ``stockyard-<kind>-<pid>-…``,
    once those of this user's processes that are gone are removed: one killed while it worked
    left a whole copy of a database there, and no later process would ever reuse it."""
    prefix = f"stockyard-{kind}-"
    for leftover in Path(tempfile.gettempdir()).glob(f"{glob.escape(prefix)}*"):
        pid = leftover.name[len(prefix) :].split("-", 1)[0]
        try:
            ours = leftover.lstat().st_uid == os.getuid() and leftover.is_dir() and not leftover.is_symlink()
        except OSError:
            continue
        if ours and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-")


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a child not yet reaped counts: its pid is still taken)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: alive
        return True
    return True


def database_files(db_path: Path) -> list[Path]:
    """The files beside the database that Stockyard writes: its own, its lock, its kept copies."""
    names = [db_path.name + suffix for suffix in ("", "-wal", "-shm", "-journal", ".lock")]
    found = [db_path.with_name(n) for n in names]
    for pattern in (".pre-v*.bak", ".before-restore-*"):
        found += sorted(db_path.parent.glob(db_path.name + pattern))
    return found


def live_files(db_path: Path) -> list[Path]:
    """The files a database in use owns (through symlinks too): the file, its -wal, -shm and
    -journal, and the lock a server holds on ``<db>.lock`` (``lock.lock_path``). A copy renamed over
    one of them would replace it under the server — over the lock, let a second server in."""
    live = db_path.resolve()
    return [live.with_name(live.name + end) for end in ("", "-wal", "-shm", "-journal", ".lock")]


def wal_path(db_path: Path) -> Path:
    """The write-ahead log SQLite keeps beside ``db_path``."""
    return db_path.with_name(db_path.name + "-wal")


def file_size(path: Path) -> int:
    """Bytes in ``path``; 0 when it does not exist (a WAL between checkpoints, a file not created yet)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def disk_bytes(db_path: Path) -> int:
    """What the database takes on disk: the file and its write-ahead log."""
    return file_size(db_path) + file_size(wal_path(db_path))


def tighten(paths: list[Path]) -> list[str]:
    """Make each existing file in ``paths`` 0600 if group or others may access it; returns what changed."""
    changed = []
    for path in paths:
        try:
            mode = stat.S_IMODE(path.lstat().st_mode)
            if not path.is_file() or path.is_symlink() or not mode & 0o077:
                continue
            os.chmod(path, FILE_MODE)
        except FileNotFoundError:
            continue
        changed.append(f"{path.name} ({mode:04o})")
    return changed


def open_folder_warning(folder: Path) -> str | None:
    """A warning when group or others may enter the data folder (it is not changed: the user chose it)."""
    try:
        mode = stat.S_IMODE(folder.stat().st_mode)
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (
        f"folder {folder} is open to other users (mode {mode:04o}); the database files in it are "
        f"private, but consider `chmod 700 {folder}`"
    )


def secure_existing(db_path: Path, extra: list[Path] | None = None) -> list[str]:
    """Tighten the database's files (and ``extra``, e.g. the snapshot); returns lines for the log.

    The default folder ``~/.stockyard`` is Stockyard's own, so it is made 0700 too; a
    folder the user chose is only warned about.
    """
    lines = []
    changed = tighten(database_files(db_path) + list(extra or []))
    if changed:
        lines.append(
            f"made {len(changed)} file(s) private (mode 0600); other users could read them: {', '.join(changed)}"
        )
    folder = db_path.parent
    warning = open_folder_warning(folder)
    if warning and folder == Path(DEFAULT_DB).expanduser().parent:
        mode = stat.S_IMODE(folder.stat().st_mode)
        os.chmod(folder, FOLDER_MODE)
        lines.append(f"made folder {folder} private (mode 0700, was {mode:04o})")
    elif warning:
        lines.append(warning)
    return lines

"""Opening connections and applying migrations.

Every connection in Stockyard comes from :func:`connect`, so every connection has the
same pragmas. Migrations are numbered SQL files in ``migrations/``; each runs in one
transaction and is recorded with a checksum of its text.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import logging
import os
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import files

log = logging.getLogger("stockyard.store")

BUSY_TIMEOUT_MS = 10_000  # STOCKYARD_BUSY_TIMEOUT_MS in a server (set_busy_timeout)
# The WAL file is cut back to this size whenever it restarts, so one burst of writes does
# not leave a huge -wal file behind for good (the writer also truncates it when idle).
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
# A new database's page size. Trace rows with their bodies and search text are a few KB each:
# with 16 KB pages the writer commits ~25% more traces per CPU second than with SQLite's 4 KB
# default (fewer pages and overflow chains to write, the file a third smaller), reports read the
# same, a lookup by id costs ~2 us more (bench/README.md, "Page size"). An existing file keeps its
# size until ``stockyard migrate --repack`` rewrites it (:func:`repack`).
PAGE_SIZE_BYTES = 16384
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class SchemaError(Exception):
    """The database cannot be used by this version of the code."""


def set_busy_timeout(ms: int) -> None:
    """The busy timeout of every connection this process opens from now on (``serve`` sets
    ``STOCKYARD_BUSY_TIMEOUT_MS`` before it opens any): how long a statement waits for a lock
    another process holds before it fails with ``database is locked``."""
    global BUSY_TIMEOUT_MS
    BUSY_TIMEOUT_MS = ms


def connect(path: Path | str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open a connection with Stockyard's pragmas (WAL, NORMAL sync, busy timeout, FKs).

    Connections are in autocommit mode; writers open transactions explicitly with
    ``BEGIN IMMEDIATE`` so that two processes never deadlock on an upgrade. A new database
    (and its folder) is created private: see :mod:`files`.
    """
    path = Path(path)
    if readonly:
        roll_back_crashed_write(path)
        conn = sqlite3.connect(
            f"file:{path}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
    else:
        files.make_folder(path.parent)
        if not path.exists():  # (no descriptor spent on each connection of an existing file)
            files.create_private(path)
        with files.private_umask():  # and whatever SQLite creates while opening (-wal, -shm)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
            if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
                # Only a brand-new file can choose its page size and auto_vacuum without a full
                # VACUUM (repack does that for an old one).
                _choose_layout(conn)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    _functions(conn)
    return conn


def roll_back_crashed_write(path: Path) -> None:
    """Put back what a write killed midway left in a rollback journal (``<path>-journal``), where
    one is left: a read-only connection cannot, and refuses to read past it ("attempt to write a
    readonly database"). A new database is written in rollback mode until :func:`connect` makes it
    WAL (its layout, then the switch), and ``migrate --repack`` vacuums in it: a ``keys create`` killed
    then left every later command's read-only look at the file (``_needs_upgrade``, ``migrate
    --check``) failing until a server started. A plain read-write open rolls it back, as SQLite does
    for any writer; without write access the read-only connection says why, as before."""
    journal = path.with_name(path.name + "-journal")
    try:
        if journal.stat().st_size == 0 or not path.exists():
            return
    except OSError:  # none (the usual case: WAL)
        return
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a hot journal is rolled back here
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.debug("could not roll back %s: %s", journal, exc)


def _functions(conn: sqlite3.Connection) -> None:
    """The SQL functions Stockyard's own triggers and migrations call (the search index's delete
    trigger: store/search.py). Trusted explicitly: an SQLite built with ``trusted_schema`` off
    refuses an application function in a trigger, and then no body could leave."""
    from . import search  # imports this module

    search.register(conn)
    conn.execute("PRAGMA trusted_schema=ON")


def _choose_layout(conn: sqlite3.Connection) -> None:
    """What a file is made with (page size first: auto_vacuum writes the header). With
    INCREMENTAL, retention can hand freed pages back to the file system."""
    conn.execute(f"PRAGMA page_size={PAGE_SIZE_BYTES}")
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")


def layout(conn: sqlite3.Connection) -> tuple[int, bool]:
    """The file's page size, and whether retention can shrink it (incremental auto_vacuum)."""
    return conn.execute("PRAGMA page_size").fetchone()[0], conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2


def repack(conn: sqlite3.Connection) -> None:
    """Rewrite the whole file as a new one is made: :data:`PAGE_SIZE_BYTES` pages, incremental vacuum.

    One VACUUM, with the server stopped. WAL mode cannot change its page size, so the VACUUM runs
    with a rollback journal (a crash midway leaves the old file whole) and WAL is set back after.
    """
    conn.execute("PRAGMA journal_mode=DELETE")
    try:
        _choose_layout(conn)
        conn.execute("VACUUM")
    finally:
        conn.execute("PRAGMA journal_mode=WAL")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def dialect_of(conn: Any) -> str:
    """``sqlite`` or ``postgresql`` (a :class:`~stockyard.store.pg.PgConnection`)."""
    return getattr(conn, "dialect", "sqlite")


def insert_many(conn: Any, sql: str, rows: list[tuple]) -> None:
    """``executemany`` of a one-row INSERT; on PostgreSQL as multi-row INSERTs (one round trip
    per chunk, not per row). Rows of an upsert must have distinct keys (PostgreSQL refuses a
    statement that updates one row twice)."""
    many = getattr(conn, "insert_many", None)
    (many or conn.executemany)(sql, rows)


def put_meta(conn: Any, key: str, value: str) -> None:
    """Set one ``meta`` row (in the caller's transaction)."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def available_migrations(dialect: str = "sqlite") -> list[Migration]:
    """The migrations shipped with this code, in order (works inside the zipapp).

    PostgreSQL has its own files under ``migrations/postgresql/`` with the same numbers:
    one schema version means the same tables in both databases, but for the PostgreSQL replicas'
    shared budgets and rate windows (``store/shared.py``), which 0014 drops from SQLite and 0015
    (``budget_settled``) makes on PostgreSQL only.
    """
    return list(_shipped(dialect))


@functools.cache
def _shipped(dialect: str) -> tuple[Migration, ...]:
    """The migrations' files, read once a process: a ``--workers`` group's parent reads them before
    it forks, so a worker started again later reads nothing from a pyz an upgrade wrote over in
    place (:func:`stockyard.cli.serve.preload` reads both dialects' at start)."""
    found = []
    folder = importlib.resources.files("stockyard.store.migrations")
    if dialect != "sqlite":
        folder = folder.joinpath(dialect)
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    return tuple(found)


def code_schema_version(dialect: str = "sqlite") -> int:
    migrations = available_migrations(dialect)
    return migrations[-1].version if migrations else 0


_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
    "name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)"
)


def applied_migrations(conn: sqlite3.Connection) -> dict[int, str]:
    """Version → checksum of what this database has applied (empty for a new file).

    Only reads, so it also works on a read-only connection (``migrate --check``, backups).
    """
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone()
    if not exists:
        return {}
    return {row[0]: row[1] for row in conn.execute("SELECT version, checksum FROM schema_migrations")}


def schema_version(conn: sqlite3.Connection) -> int:
    applied = applied_migrations(conn)
    return max(applied) if applied else 0


def pending_migrations(conn: sqlite3.Connection) -> list[Migration]:
    """Migrations this database still needs; raises SchemaError if it cannot be used."""
    applied = applied_migrations(conn)
    shipped = available_migrations(dialect_of(conn))
    newest = shipped[-1].version if shipped else 0
    if applied and max(applied) > newest:
        raise SchemaError(
            f"database schema version {max(applied)} is newer than this Stockyard "
            f"(knows up to {newest}); upgrade stockyard.pyz or restore an older backup"
        )
    for m in shipped:
        if m.version in applied and applied[m.version] != m.checksum:
            raise SchemaError(
                f"migration {m.version:04d}_{m.name} was applied from different SQL "
                f"(checksum mismatch); this database was changed by another build"
            )
    return [m for m in shipped if m.version not in applied]


_NOW = {
    "sqlite": "strftime('%Y-%m-%dT%H:%M:%fZ','now')",
    "postgresql": """to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')""",
}
_BEGIN = {"sqlite": "BEGIN IMMEDIATE", "postgresql": "BEGIN"}  # PostgreSQL: under the migration lock


def migration_script(dialect: str, m: Migration) -> str:
    """One migration and its bookkeeping row, without BEGIN/COMMIT: for a caller that runs
    several inside its own transaction (``migrate-store`` builds a whole schema in one)."""
    record = (
        "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES "
        f"({m.version}, '{m.name}', '{m.checksum}', {_NOW[dialect]});"
    )
    return f"{_SCHEMA_TABLE};\n{m.sql}\n;{record}"


def apply_migration(conn: sqlite3.Connection, m: Migration) -> None:
    """Apply one migration and its bookkeeping row in a single transaction (on SQLite with the
    functions the schema calls, whatever opened the connection)."""
    apply_migrations(conn, [m])


def apply_migrations(conn: sqlite3.Connection, ms: list[Migration]) -> None:
    """Apply migrations and their bookkeeping rows in a single transaction: all or none."""
    dialect = dialect_of(conn)
    if dialect == "sqlite":
        _functions(conn)
    scripts = "\n".join(migration_script(dialect, m) for m in ms)
    try:
        conn.executescript(f"{_BEGIN[dialect]};\n{scripts}\nCOMMIT;")
    except Exception:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def migrate(
    conn: sqlite3.Connection, before: Callable[[int, list[Migration]], None] | None = None, upto: int | None = None
) -> list[Migration]:
    """Bring the schema up to date (or up to ``upto``); returns what was applied.

    ``before(current_version, pending)`` runs first when an existing database is about to
    change, so the caller can take a backup.
    """
    current = schema_version(conn)  # read first: what is pending is then never older than it
    pending = [m for m in pending_migrations(conn) if upto is None or m.version <= upto]
    if not pending:
        return []
    if current == 0:  # a new database: its whole schema in one transaction (one commit, not forty: ~0.1 s)
        try:
            apply_migrations(conn, pending)
            return pending
        except Exception:
            if schema_version(conn) == 0:
                raise
        # Another process made this new database while this one waited for the write lock (a `keys
        # create` beside a starting server): what it applied is not run again ('table meta already
        # exists'), only what it left, if anything.
        pending = [m for m in pending_migrations(conn) if upto is None or m.version <= upto]
    elif before is not None:
        before(current, pending)
    for m in pending:
        apply_migration(conn, m)
    return pending


def backup_to(conn: sqlite3.Connection, dest: Path | str, finish: Callable[[Path], None] | None = None) -> None:
    """Write a consistent copy of the live database to ``dest`` (temp file, fsync, rename).

    The sqlite3 backup API copies every page as of one read snapshot, so the copy is
    consistent even while the server writes. The copy is switched to rollback-journal
    mode: a single self-contained file that any tool can open read-only (Stockyard puts
    it back in WAL mode when it opens it). ``finish`` completes the copy before it is
    renamed into place (a backup's content digest).
    """
    dest = Path(dest)
    tmp = files.copy_beside(dest, "tmp")  # (those of a process killed while copying removed)
    tmp.unlink(missing_ok=True)
    try:
        write_copy(conn, tmp)
        if finish is not None:
            finish(tmp)
        replace_file(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_copy(conn: sqlite3.Connection, path: Path) -> None:
    """The backup API's copy of ``conn`` written straight into ``path`` (a new file, renamed by the
    caller): for a working file that is already a temporary name of its own (a restore's), so no
    second temporary copy is made beside it for a crash to leave behind."""
    files.create_private(path)  # the copy holds every prompt: owner-only, like the database
    target = sqlite3.connect(path, isolation_level=None)
    try:
        conn.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")
    finally:
        target.close()


def sync_wal(conn: Any) -> None:
    """Make the transaction just committed on ``conn`` survive a power cut, as ``synchronous=FULL``
    would: flush the -wal file to disk. For the audit chain's commits only (``audit.take_appended``):
    ``synchronous=NORMAL`` leaves the last commits to the next checkpoint, and a chain position handed
    out before a power cut took it would read as tampering. Nothing to do on PostgreSQL."""
    if dialect_of(conn) != "sqlite":
        return
    name = conn.execute("PRAGMA database_list").fetchone()[2]
    try:
        fd = os.open(f"{name}-wal", os.O_RDONLY)
    except FileNotFoundError:  # not in WAL mode: the commit itself was synced
        return
    except OSError as exc:  # out of descriptors: committed all the same, durable at the next checkpoint
        log.warning("an audited commit was not flushed to disk at once: %s", exc)
        return
    try:
        os.fdatasync(fd)
    except OSError as exc:
        log.warning("an audited commit was not flushed to disk at once: %s", exc)
    finally:
        os.close(fd)


def edit_copy(path: Path) -> sqlite3.Connection:
    """A connection to a copy being prepared (not the live database): no WAL, no pragmas of the
    server, so it stays one self-contained file."""
    return sqlite3.connect(path, isolation_level=None)


def replace_file(tmp: Path | str, dest: Path | str) -> None:
    """Make ``tmp`` durable and rename it over ``dest``: readers see the old file or the new one."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    dir_fd = os.open(Path(dest).parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def open_copy(path: Path | str) -> sqlite3.Connection:
    """Open a backup or snapshot for inspection without changing it or creating files beside it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    # A copy may come from anyone: never run SQL functions its own views or triggers name.
    conn.execute("PRAGMA trusted_schema = OFF")
    return conn


def schema_objects(conn: sqlite3.Connection) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(type, name) → (table, SQL) of every table, index, view and trigger in ``sqlite_master``.

    SQLite's own statistics tables (``ANALYZE``, ``PRAGMA optimize``) are left out."""
    found: dict[tuple[str, str], tuple[str, str | None]] = {}
    for type_, name, table, sql in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"):
        if type_ == "table" and name in ("sqlite_stat1", "sqlite_stat2", "sqlite_stat3", "sqlite_stat4"):
            continue
        found[(type_, name)] = (table, sql)
    return found


def migrated_schema(versions: Iterable[int]) -> dict[tuple[str, str], tuple[str, str | None]]:
    """``schema_objects`` of a fresh in-memory database given exactly these shipped migrations."""
    wanted = set(versions)
    ref = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for m in available_migrations("sqlite"):
            if m.version in wanted:
                apply_migration(ref, m)
        return schema_objects(ref)
    finally:
        ref.close()


def unexpected_schema(conn: sqlite3.Connection) -> list[str]:
    """Schema objects in ``conn`` that its migrations do not make, or make differently.

    The answer for a file to be trusted (a backup to restore): a trigger, view, table or
    index someone added, or one whose SQL was changed, would be carried into the live
    database. Empty when the schema is exactly what a fresh migration makes."""
    expected = migrated_schema(applied_migrations(conn))
    found = schema_objects(conn)
    odd = []
    for (type_, name), (table, sql) in sorted(found.items()):
        if (type_, name) not in expected:
            odd.append(f"{type_} {name!r} (not made by Stockyard)")
        elif expected[(type_, name)] != (table, sql):
            odd.append(f"{type_} {name!r} (its SQL differs from Stockyard's)")
    odd.extend(f"{type_} {name!r} (missing)" for type_, name in sorted(set(expected) - set(found)))
    return odd


def open_and_migrate(path: Path | str, keep_backups: int = 3) -> tuple[sqlite3.Connection, list[Migration]]:
    """Open (creating if needed) and migrate; back up an existing database before changing it."""
    path = Path(path)
    conn = connect(path)

    def backup_first(current: int, pending: list[Migration]) -> None:
        dest = path.with_name(f"{path.name}.pre-v{current:04d}.bak")
        backup_to(conn, dest)
        old = sorted(path.parent.glob(f"{path.name}.pre-v*.bak"))
        for stale in old[:-keep_backups]:
            stale.unlink(missing_ok=True)

    applied = migrate(conn, before=backup_first)
    return conn, applied

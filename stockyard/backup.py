"""Backups, snapshots and restore: the ways a database file leaves or enters Stockyard safely.

A plain ``cp`` of the live WAL database is not a backup (measured: 31 of 60 copies taken
during writes were corrupt). Every copy here comes from the sqlite3 backup API through
:func:`db.backup_to` (one read snapshot, temp file, fsync, atomic rename), is checked, and
lands under its final name only when complete. A restore goes the other way: it checks
the source, sets the current file aside and swaps the new one in with one rename, and
only while no server holds the database lock.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import Callable

from . import audit, doctor, vault
from .operations import Operations
from .store import Store, db, files, move
from .store.backends import PostgresBackend
from .store.lock import RESTORE, DatabaseBusy, DatabaseLock, lock_path

log = logging.getLogger("stockyard.backup")


class BackupError(Exception):
    """A copy could not be made, or a file is not fit to restore."""


@dataclass(frozen=True)
class Inspection:
    """What a database file holds, read without changing it."""

    path: Path
    size_bytes: int
    integrity: str  # "ok" or SQLite's first complaints
    schema_version: int
    audit_seq: int
    audit_head: str

    @property
    def ok(self) -> bool:
        return self.integrity == "ok"


DIGEST_META_KEY = "backup_digest"
_DIGEST_LABEL = "sha256-rows-v1:"


def content_digest(path: Path, cancel: threading.Event | None = None) -> str:
    """SHA-256 of every row of every table of the file at ``path`` (and its schema), read through
    SQLite: SQLite keeps no page checksums, so a byte flipped inside a row passes its integrity
    check; this digest, written into a backup as it is made, does not. Its own ``meta`` row is left
    out, and each table is read in its own key order (``NOT INDEXED``), so a copy reads the same.
    ``cancel`` set ends the reading (``sqlite3.OperationalError``): a server's stop need not wait for it."""
    conn = db.open_copy(path)
    if cancel is not None:
        conn.set_progress_handler(cancel.is_set, 10_000)  # checked every 10,000 SQLite steps
    conn.row_factory, conn.text_factory = None, bytes  # the stored bytes, even ones that are not UTF-8
    digest = hashlib.sha256()
    try:
        tables = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name"
        ).fetchall()
        schema = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        digest.update(repr(schema).encode())
        for name, _ in tables:
            quoted = '"' + name.decode().replace('"', '""') + '"'
            skip = " WHERE key != ?" if name == b"meta" else ""
            digest.update(b"\0table " + name + b"\0")
            for row in conn.execute(f"SELECT * FROM {quoted} NOT INDEXED{skip}", (DIGEST_META_KEY,) if skip else ()):
                digest.update(repr(row).encode())
    finally:
        conn.close()
    return _DIGEST_LABEL + digest.hexdigest()


def seal(path: Path, cancel: threading.Event | None = None) -> None:
    """Write the content digest into the copy at ``path`` (a backup being made, not yet renamed)."""
    value = content_digest(path, cancel)
    conn = db.edit_copy(path)
    try:
        db.put_meta(conn, DIGEST_META_KEY, value)
    finally:
        conn.close()


def check_digest(path: Path, shown: Path) -> str | None:
    """Refuse a copy whose rows no longer match the digest it was sealed with; a warning (returned)
    for a backup made before backups carried one, which is restorable as it always was."""
    conn = db.open_copy(path)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (DIGEST_META_KEY,)).fetchone()
    finally:
        conn.close()
    if row is None:
        return (
            f"{shown} carries no content digest (made by an older Stockyard, or a snapshot), "
            "so damage inside a row could not be checked"
        )
    if row[0] != content_digest(path):
        raise BackupError(
            f"{shown} does not match the content digest it was written with: rows changed after the backup "
            "was made (damage on disk, or an edit); nothing was changed: restore another backup"
        )
    return None


def utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB" if size >= 1024 * 1024 else f"{size / 1024:.1f} kB"


def inspect(path: Path | str, shown: Path | None = None) -> Inspection:
    """Integrity, schema version and audit head of a backup or snapshot file (``shown``: the
    name to give it, when ``path`` is a restore's private copy of it)."""
    path = Path(path)
    shown = shown or path
    try:
        conn = db.open_copy(path)
    except FileNotFoundError as exc:
        raise BackupError(str(exc)) from None
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check(5)")]
        integrity = "ok" if problems == ["ok"] else "; ".join(problems)
        version = db.schema_version(conn)
        has_audit = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_log'").fetchone()
        seq, head = audit.head(conn) if has_audit else (0, audit.GENESIS)
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{shown} is not a usable Stockyard database: {exc}") from None
    finally:
        conn.close()
    return Inspection(shown, path.stat().st_size, integrity, version, seq, head)


def refuse_live_source(path: Path) -> None:
    """A restore's source may not be a database in use: a file being written."""
    _refuse_database_in_use(path, "make a copy of it with `stockyard backup` and restore that")
    if files.file_size(files.wal_path(path)) > 0:
        raise BackupError(
            f"{path} has a -wal file beside it, so it is a live (or crashed) database, "
            "not a backup; make a copy with `stockyard backup` first"
        )


def copy_in(source: Path, tmp: Path) -> None:
    """The one read of a restore's source: its bytes into ``tmp`` (a private new file), which is
    then checked, upgraded and swapped in. Checking the source and copying it in with two reads let
    a file replaced between them be checked in one version and restored in another."""
    files.create_private(tmp)
    try:
        with open(source, "rb") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1024 * 1024)
    except FileNotFoundError:
        raise BackupError(f"no such file: {source}") from None
    except IsADirectoryError:
        raise BackupError(f"{source} is a folder, not a backup file") from None


def check_restorable(path: Path | str, shown: Path | None = None) -> Inspection:
    """Inspect ``path`` and refuse a file this code cannot run on (damaged, newer, foreign)."""
    path = Path(path)
    info = inspect(path, shown)
    named = info.path
    if not info.ok:
        raise BackupError(f"{named} is damaged (integrity check: {info.integrity})")
    conn = db.open_copy(path)
    try:
        has_schema = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if not has_schema:
            raise BackupError(f"{named} is not a Stockyard database (no schema_migrations table)")
        db.pending_migrations(conn)  # raises SchemaError for a newer or differently-built schema
        odd = db.unexpected_schema(conn)
        if odd:
            listed = "; ".join(odd[:5]) + (f"; and {len(odd) - 5} more" if len(odd) > 5 else "")
            raise BackupError(
                f"{named} carries schema objects Stockyard's migrations do not make, so it is refused "
                f"and nothing was changed: {listed}"
            )
    finally:
        conn.close()
    return info


def check_audit_chain(path: Path, secret: str | None, shown: Path | None = None) -> None:
    """Refuse a backup whose audit log does not verify: an altered or missing entry is a damaged
    page or a change someone hid in the copy, and the restore would seal it with a keyed entry.
    What is about the secret (none set, another one) is left to the restore's own audit entry,
    which says what to set."""
    shown = shown or path
    conn = db.open_copy(path)
    try:
        salt = vault.read_salt(conn)
        result = audit.verify_with_secret(conn, secret if salt else None)
    except (sqlite3.Error, vault.VaultError) as exc:
        raise BackupError(f"{shown}: its audit log cannot be read ({exc}); nothing was changed") from None
    finally:
        conn.close()
    if not result.ok and result.broken_seq is not None and not result.other_secret:
        raise BackupError(
            f"{shown}: its audit log does not verify ({result.reason}), so it is damaged or was altered; "
            "nothing was changed: restore another backup"
        )


def vault_tokens(conn: sqlite3.Connection) -> list[tuple[str, str, bytes]]:
    """(what, token, associated data) of every encrypted value: provider and deployment keys,
    webhook URLs and signing secrets."""
    keys = doctor.stored_provider_keys(conn)  # providers' and deployments' own
    found = [(f"provider {name!r}", token, vault.aad_for(row_id, name)) for row_id, name, token in keys]
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'webhooks'").fetchone():
        from .operations.webhooks import aad_for  # (operations import this module's callers)

        for hook_id, url, secret in conn.execute("SELECT id, url_token, secret_token FROM webhooks"):
            found.append((f"webhook {hook_id}", url, aad_for(hook_id, "url")))
            found.append((f"webhook {hook_id}", secret, aad_for(hook_id)))
    return found


def undecryptable(path: Path, secret: str | None) -> list[str]:
    """What in the database at ``path`` will not decrypt with ``secret`` (the one the restored
    database will run with): a damaged token restored silently and failed at the first request."""
    conn = db.open_copy(path)
    try:
        tokens = vault_tokens(conn)
        salt = vault.read_salt(conn)
    finally:
        conn.close()
    if not tokens:
        return []
    if not secret or salt is None:
        return sorted({what for what, _, _ in tokens})
    box = vault.Vault(secret, salt)
    broken = []
    for what, token, aad in tokens:
        try:
            box.decrypt(token, aad)
        except vault.VaultError:
            broken.append(what)
    return sorted(set(broken))


def check_keys(path: Path, shown: Path, secret: str | None, *, accept_broken: bool) -> str | None:
    """Refuse a backup whose stored keys will not decrypt with this secret, naming them; with
    ``accept_broken`` (the only copy there is) the same words come back as a warning."""
    broken = undecryptable(path, secret)
    if not broken:
        return None
    said = (
        f"{shown}: the stored key(s) of {', '.join(broken)} do not decrypt with this STOCKYARD_ENCRYPTION_KEY "
        "(damaged in the backup, or stored under another secret), so they would fail at their first request"
    )
    if accept_broken:
        return f"{said}; store them again (`stockyard providers add`, `webhooks add`)"
    raise BackupError(f"{said}; nothing was changed: restore another backup, or run again with --accept-broken-keys")


def resolve_destination(dest: Path | str, live: Path | str | None) -> Path:
    """A directory gets a time-stamped file name; the live database file itself is refused."""
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / f"stockyard-{utc_stamp()}.db"
    if live is not None and dest.resolve() in files.live_files(Path(live)):
        raise BackupError(f"{dest} is the live database (or one of its files); choose another destination")
    if not dest.parent.is_dir():
        raise BackupError(f"folder {dest.parent} does not exist")
    _refuse_database_in_use(dest, "choose another destination")
    return dest


def _refuse_database_in_use(path: Path, then: str) -> None:
    """The database of a running server (its lock held) is neither replaced by a backup (the server
    would go on writing to the file it has open, without a name) nor restored from (a file being
    written, which an idle server's emptied -wal does not give away)."""
    if not lock_path(path).exists():
        return
    try:
        with DatabaseLock(path, RESTORE):
            pass
    except DatabaseBusy as exc:
        raise BackupError(f"{path} is a live database, not a backup: {exc}; {then}") from None


def not_written(where: Path, exc: Exception) -> BackupError:
    """A copy that could not be written — a full disk, most often: SQLite's own words alone
    (``disk I/O error``) leave an operator guessing whether the live database was hurt."""
    return BackupError(
        f"could not write {where}: {exc} (is the disk under {where.parent} full?); nothing was left "
        "there, and the database in use was not changed"
    )


def create_backup(conn: sqlite3.Connection, dest: Path) -> Inspection:
    """Copy the database behind ``conn`` to ``dest`` and check the copy."""
    try:
        db.backup_to(conn, dest, finish=seal)
    except (OSError, sqlite3.Error) as exc:
        raise not_written(dest, exc) from None
    info = inspect(dest)
    if not info.ok:
        raise BackupError(
            f"the copy at {dest} failed its integrity check ({info.integrity}); "
            "the live database may be damaged: run `stockyard doctor`"
        )
    return info


def create_postgres_backup(
    backend: PostgresBackend, dest: Path, *, secret: str | None, progress: Callable[[str], None]
) -> Inspection:
    """A PostgreSQL database as one self-contained SQLite file: migrate-store's copy (one
    consistent read, the audit chain checked in it before it is renamed into place), then the
    same checks as any backup."""
    try:
        move.postgres_to_sqlite(backend, dest, secret=secret, progress=progress, replace=True)
    except move.MoveError as exc:
        raise BackupError(str(exc)) from None
    info = inspect(dest)
    if not info.ok:
        raise BackupError(f"the copy at {dest} failed its integrity check ({info.integrity})")
    try:
        seal(dest)  # after the rename: a crash here leaves a whole backup without a digest (restorable)
    except (OSError, sqlite3.Error) as exc:
        raise not_written(dest, exc) from None
    return info


class Snapshotter:
    """Keeps one consistent snapshot file fresh, on a schedule: the copy made by the writer thread,
    sealed and renamed into place by a thread of its own.

    The snapshot is replaced by an atomic rename, so ``cp`` of it (by cron) always reads
    one complete, consistent database — never a file being written. It carries a content
    digest, as a backup does; reading every row for it takes seconds on a large database, so
    the writer does not wait for it: a snapshot due while the last is still being sealed is
    skipped (and said), and the next one comes at its time.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.taken = 0
        self.failures = 0
        self.skipped = 0
        self.last_ok_unix: float | None = None
        self.last_duration_s = 0.0
        self.last_size_bytes = 0
        self._sealing: threading.Thread | None = None
        self._abandon = threading.Event()  # the server stops: end a sealing still in progress

    def run(self, conn: sqlite3.Connection) -> None:
        """The writer's part: the copy into a temporary file, then the sealing handed on."""
        if self._sealing is not None and self._sealing.is_alive():
            self.skipped += 1
            log.warning("snapshot to %s skipped: the previous one is still being sealed", self.path)
            return
        started = time.monotonic()
        try:
            _refuse_database_in_use(self.path, "the snapshot was not written: choose another --snapshot path")
            tmp = self._copy(conn)
        except (OSError, sqlite3.Error, BackupError) as exc:
            self._failed(exc)
            return
        self._sealing = threading.Thread(
            target=self._seal, args=(tmp, started), name="stockyard-snapshot-seal", daemon=True
        )
        self._sealing.start()

    def stop(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a sealing in progress (after the writer stopped: no new one
        starts); past it, abandon it — the digest interrupted, its temporary file removed, the
        previous snapshot kept."""
        sealing = self._sealing
        if sealing is None:
            return
        sealing.join(timeout)
        if sealing.is_alive():
            self._abandon.set()
            sealing.join(ABANDON_WAIT_S)

    def _copy(self, conn: sqlite3.Connection) -> Path:
        """The consistent copy, into ``.<name>.tmp-PID-…`` beside the snapshot (removed on failure)."""
        tmp = files.copy_beside(self.path, "tmp")
        tmp.unlink(missing_ok=True)
        try:
            db.write_copy(conn, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _seal(self, tmp: Path, started: float) -> None:
        """The sealing thread: digest the copy, then rename it over the snapshot."""
        try:
            seal(tmp, self._abandon)
            db.replace_file(tmp, self.path)
        except (OSError, sqlite3.Error) as exc:
            tmp.unlink(missing_ok=True)
            if self._abandon.is_set():
                log.warning("snapshot to %s abandoned at the stop: the previous one is kept", self.path)
            else:
                self._failed(exc)
            return
        self.last_duration_s = time.monotonic() - started
        self.last_size_bytes = self.path.stat().st_size
        self.last_ok_unix = time.time()
        self.taken += 1
        if self.taken == 1 or self.failures:
            log.info("snapshot written to %s (%s in %.2fs)", self.path, _mb(self.last_size_bytes), self.last_duration_s)

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        log.error("snapshot to %s failed: %s", self.path, exc)


ABANDON_WAIT_S = 5.0  # a sealing told to stop ends within the next 10,000 SQLite steps


@dataclass(frozen=True)
class Restored:
    source: Inspection
    schema_from: int
    schema_to: int
    previous: Path | None  # where the replaced database was kept
    warnings: tuple[str, ...] = ()


KEEP_PREVIOUS = 3  # copies set aside by restore that are kept (restore --keep-previous)
_ASIDE = re.compile(r"\.before-restore-(\d{8}T\d{6}Z)(?:-(\d+))?")


def restore(
    db_path: Path | str,
    source: Path | str,
    *,
    actor: str,
    secret: str | None,
    accept_broken_keys: bool = False,
    keep_previous: int = KEEP_PREVIOUS,
) -> Restored:
    """Put the database in ``source`` in place of ``db_path`` while no server runs.

    The new file is prepared beside the database (copied, upgraded to this code's schema,
    the restore audited in it), made durable, and renamed into place; the old file is
    first hard-linked aside as ``<db>.before-restore-<UTC stamp>``. At every moment the
    database path holds either the old database or the new one.
    """
    db_path, source = Path(db_path).resolve(), Path(source).expanduser()  # a symlink's target, not the link
    if source.resolve() == db_path:
        raise BackupError("the source is the database itself")
    if keep_previous < 0:  # not "no limit": read as 0 it removed every copy set aside
        raise BackupError(f"keep_previous must be 0 or more, got {keep_previous}")
    with DatabaseLock(db_path, RESTORE):
        refuse_live_source(source)
        tmp = files.copy_beside(db_path, "restore")  # (those of a restore killed half way removed)
        try:
            info, schema_to, warnings = _ready_copy(source, tmp, actor, secret, accept_broken_keys)
            previous = _set_aside(db_path)
            db.replace_file(tmp, db_path)
            _prune_set_aside(db_path, keep_previous)
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
                leftover.unlink(missing_ok=True)
    return Restored(info, info.schema_version, schema_to, previous, warnings)


def _ready_copy(
    source: Path, tmp: Path, actor: str, secret: str | None, accept_broken_keys: bool
) -> tuple[Inspection, int, tuple[str, ...]]:
    """The backup read once into ``tmp`` (a restore's private copy), checked, upgraded and audited there,
    its keys checked to decrypt: what it was, the schema it is at now, the warnings to show."""
    try:
        copy_in(source, tmp)
    except OSError as exc:
        raise not_written(tmp, exc) from None
    info, warning = _check_copy(tmp, source, secret)
    try:
        schema_to = _prepare(source, tmp, info, actor=actor, secret=secret)
    except (OSError, sqlite3.Error) as exc:
        raise not_written(tmp, exc) from None
    keys = check_keys(tmp, source, secret, accept_broken=accept_broken_keys)
    return info, schema_to, tuple(w for w in (warning, keys) if w)


def restore_postgres(
    backend: PostgresBackend,
    source: Path | str,
    *,
    actor: str,
    secret: str | None,
    progress: Callable[[str], None],
    accept_broken_keys: bool = False,
) -> Restored:
    """Load a backup into an EMPTY PostgreSQL database: the same checks, upgrade and audit entry
    as on SQLite, made in a private temporary copy, which ``migrate-store``'s copy then moves in
    (one transaction: on failure the database is left empty). A database with tables is
    refused: nothing is ever replaced under running servers."""
    source = Path(source).expanduser()
    conn = backend.connect()
    try:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchone()[0]
    finally:
        conn.close()
    if tables:
        raise BackupError(
            f"{backend} is not empty: on PostgreSQL, restore loads a backup into an EMPTY database "
            "(create one, point --db at it, then start the servers on it)"
        )
    refuse_live_source(source)
    with files.private_temp_folder("restore") as folder:  # 0700: the copy holds every prompt
        tmp = Path(folder) / "restore.db"
        info, schema_to, warnings = _ready_copy(source, tmp, actor, secret, accept_broken_keys)
        try:
            move.sqlite_to_postgres(tmp, backend, secret=secret, progress=progress)
        except move.MoveError as exc:
            raise BackupError(str(exc)) from None
    return Restored(info, info.schema_version, schema_to, None, warnings)


def _check_copy(tmp: Path, source: Path, secret: str | None) -> tuple[Inspection, str | None]:
    """Every check of a backup, made on the restore's own copy of it (named as ``source``); the
    digest's warning, if any."""
    info = check_restorable(tmp, source)
    check_audit_chain(tmp, secret, source)
    return info, check_digest(tmp, source)


def _prepare(source: Path, tmp: Path, info: Inspection, *, actor: str, secret: str | None) -> int:
    """Upgrade the checked copy ``tmp`` of ``source`` and audit the restore inside it. Returns its schema."""
    conn = db.connect(tmp)
    try:
        conn.execute("DELETE FROM meta WHERE key = ?", (DIGEST_META_KEY,))  # the backup's, not the database's
        db.migrate(conn)
        schema_to = db.schema_version(conn)
    finally:
        conn.close()
    store = Store(tmp)
    try:
        Operations(store, actor, secret).audit_event(
            "backup.restore",
            "database",
            {
                "source": str(source),
                "source_schema": info.schema_version,
                "schema": schema_to,
                "source_audit_head": info.audit_head,
            },
        )
    except audit.AuditError as exc:
        raise BackupError(
            f"cannot record the restore in the backup's audit log, so nothing was changed: {exc}"
        ) from None
    finally:
        store.close()
    return schema_to


def _set_aside(db_path: Path) -> Path | None:
    """Keep the current database as ``<db>.before-restore-<stamp>`` (with its WAL, if any)."""
    if not db_path.exists():
        return None
    wal = files.wal_path(db_path)
    if files.file_size(wal) > 0:
        _fold_wal(db_path)
    aside = db_path.with_name(f"{db_path.name}.before-restore-{utc_stamp()}")
    n = 1
    while aside.exists():  # two restores within one second
        n += 1
        aside = db_path.with_name(f"{db_path.name}.before-restore-{utc_stamp()}-{n}")
    try:
        os.link(db_path, aside)
    except OSError:  # a file system without hard links
        shutil.copy2(db_path, aside)
    if files.file_size(wal) > 0:  # could not fold it in (a reader, damage): keep the pair, the copy first,
        os.replace(wal, files.wal_path(aside))  # so the committed writes in it never belong to no database
    files.tighten([aside, files.wal_path(aside)])  # a file from an older version may be 0644
    for stale in (wal, db_path.with_name(db_path.name + "-shm")):
        stale.unlink(missing_ok=True)
    return aside


def _prune_set_aside(db_path: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` copies set aside by earlier restores (each a whole
    database: kept for ever they filled the disk), once this restore has succeeded."""
    found = []
    for path in db_path.parent.glob(glob_escape(db_path.name) + ".before-restore-*"):
        match = _ASIDE.fullmatch(path.name[len(db_path.name) :])
        if match:
            found.append(((match.group(1), int(match.group(2) or 1)), path))
    for _, path in sorted(found, reverse=True)[keep:]:
        for old in (path, files.wal_path(path)):
            try:
                old.unlink(missing_ok=True)
            except OSError as exc:  # the restore itself succeeded: say so, not fail it
                log.warning("could not remove %s, an older copy set aside by restore: %s", old, exc)


def _fold_wal(db_path: Path) -> None:
    """Checkpoint a leftover WAL (from a crash) into the file before it is set aside."""
    try:
        conn = db.connect(db_path)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.warning("could not checkpoint %s before setting it aside: %s", db_path, exc)

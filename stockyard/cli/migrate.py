"""``stockyard migrate [--check]``: what an upgrade changes in the database, and doing it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import audit
from ..config import encryption_secret
from ..dburl import PostgresURL
from ..operations import Operations
from ..store import Store, db, files
from ..store.backends import PostgresBackend
from ..store.lock import MIGRATE, DatabaseBusy, DatabaseLock
from .common import CommandError, database, nothing_yet, runs


def register(sub) -> None:
    p = sub.add_parser(
        "migrate",
        help="show or apply pending schema upgrades",
        description="Bring the database up to this Stockyard's schema (the server also does this "
        "when it starts). A backup named <db>.pre-vNNNN.bak is written first. A database "
        "created by an old version without incremental vacuum is converted once (a full "
        "VACUUM), so retention can shrink the file. Needs the server stopped. On PostgreSQL: "
        "under the migration lock (servers starting meanwhile wait, then find nothing to do); no "
        "backup is written there: take one first with `stockyard backup DEST`.",
    )
    p.add_argument("--check", action="store_true", help="only say what would change; exit status 1 if anything would")
    runs(p, run)


def run(args: argparse.Namespace) -> int:
    found = database(args)
    if isinstance(found, PostgresURL):
        return run_postgres(PostgresBackend(found), args.check)
    path = found
    if not path.exists():
        raise nothing_yet(path)
    if args.check:
        return check(path)
    try:
        with DatabaseLock(path, MIGRATE):
            return apply(path)
    except DatabaseBusy as exc:
        raise CommandError(f"{exc} (a starting server applies migrations itself)") from None


def _plan(path: Path) -> tuple[int, list[db.Migration], bool]:
    conn = db.connect(path, readonly=True)
    try:
        pending = db.pending_migrations(conn)
        return db.schema_version(conn), pending, conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2
    finally:
        conn.close()


def check(path: Path) -> int:
    current, pending, needs_vacuum = _plan(path)
    code = db.code_schema_version()
    print(f"database {path}: schema v{current}, this Stockyard knows v{code}")
    for m in pending:
        print(f"  would apply {m.version:04d}_{m.name}")
    if pending and current > 0:
        print(f"  a backup would be written first: {path.name}.pre-v{current:04d}.bak")
    if needs_vacuum:
        size = path.stat().st_size // (1024 * 1024)
        print(
            f"  would convert the file to incremental vacuum (one VACUUM, rewrites about {size} MB; "
            "needs that much free space)"
        )
    if not pending and not needs_vacuum:
        print("  up to date")
        return 0
    return 1


def apply(path: Path) -> int:
    for line in files.secure_existing(path):
        print(f"file permissions: {line}")
    current, _, needs_vacuum = _plan(path)
    conn, applied = db.open_and_migrate(path)
    try:
        if needs_vacuum:
            before = path.stat().st_size
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")
            print(f"converted to incremental vacuum: {before} → {path.stat().st_size} bytes")
    finally:
        conn.close()
    ops = Operations(Store(path), audit.actor_cli(), encryption_secret())
    try:
        for m in applied:
            ops.audit_event("migration.apply", f"schema:{m.version:04d}", {"name": m.name})
        if needs_vacuum:
            ops.audit_event("database.vacuum", "database", {"auto_vacuum": "incremental"})
    finally:
        ops.store.close()
    if applied:
        print(
            f"applied {', '.join(f'{m.version:04d}_{m.name}' for m in applied)}; "
            f"backup of schema v{current} at {path.name}.pre-v{current:04d}.bak"
        )
    elif not needs_vacuum:
        print(f"database {path}: schema v{current}, up to date")
    return 0


def run_postgres(backend: PostgresBackend, check_only: bool) -> int:
    """The same on PostgreSQL: the plan, or the migrations applied under the advisory lock
    every starting server takes (exactly once, however many start meanwhile), audited."""
    code = db.code_schema_version(backend.dialect)
    conn = backend.connect()
    try:
        try:
            current, pending = db.schema_version(conn), db.pending_migrations(conn)
        except db.SchemaError as exc:
            raise CommandError(str(exc)) from None
    finally:
        conn.close()
    if check_only:
        print(f"database {backend}: schema v{current}, this Stockyard knows v{code}")
        for m in pending:
            print(f"  would apply {m.version:04d}_{m.name}")
        if pending and current > 0:
            print("  no backup is written on PostgreSQL: take one first with `stockyard backup DEST`")
        if not pending:
            print("  up to date")
        return 1 if pending else 0
    applied = backend.open_and_migrate()
    if applied:
        ops = Operations(Store(backend), audit.actor_cli(), encryption_secret())
        try:
            for m in applied:
                ops.audit_event("migration.apply", f"schema:{m.version:04d}", {"name": m.name})
        finally:
            ops.store.close()
        print(f"applied {', '.join(f'{m.version:04d}_{m.name}' for m in applied)} to {backend}")
    else:
        print(f"database {backend}: schema v{current}, up to date")
    return 0

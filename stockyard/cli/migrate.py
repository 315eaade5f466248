"""``stockyard migrate [--check]``: what an upgrade changes in the database, and doing it."""

from __future__ import annotations

import argparse
import sqlite3
from dataclasses import dataclass
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
        "created by an old version without incremental vacuum is rewritten once (a full "
        "VACUUM), so retention can shrink the file. Needs the server stopped. On PostgreSQL: "
        "under the migration lock (servers starting meanwhile wait, then find nothing to do); no "
        "backup is written there: take one first with `stockyard backup DEST`.",
    )
    p.add_argument("--check", action="store_true", help="only say what would change; exit status 1 if anything would")
    p.add_argument(
        "--repack",
        action="store_true",
        help=f"also rewrite the file with {db.PAGE_SIZE_BYTES // 1024} KB pages if its pages are smaller "
        "(one VACUUM; the writer commits ~25%% more traces per CPU second; SQLite only)",
    )
    runs(p, run)


def run(args: argparse.Namespace) -> int:
    found = database(args)
    if isinstance(found, PostgresURL):
        if args.repack:
            raise CommandError("--repack rewrites an SQLite file; PostgreSQL keeps its own pages")
        return run_postgres(PostgresBackend(found), args.check)
    path = found
    if not path.exists():
        raise nothing_yet(path)
    if args.check:
        return check(path, args.repack)
    try:
        with DatabaseLock(path, MIGRATE):
            return apply(path, args.repack)
    except DatabaseBusy as exc:
        raise CommandError(f"{exc} (a starting server applies migrations itself)") from None


@dataclass(frozen=True)
class Plan:
    """What ``migrate`` would do to an SQLite file."""

    current: int
    pending: list[db.Migration]
    page_size: int
    incremental: bool

    def rewrite(self, repack: bool) -> bool:
        """A file that cannot shrink is always rewritten; one with small pages when asked."""
        return not self.incremental or (repack and self.page_size < db.PAGE_SIZE_BYTES)


def _plan(path: Path) -> Plan:
    conn = db.connect(path, readonly=True)
    try:
        return Plan(db.schema_version(conn), db.pending_migrations(conn), *db.layout(conn))
    finally:
        conn.close()


def check(path: Path, repack: bool) -> int:
    plan = _plan(path)
    code = db.code_schema_version()
    print(f"database {path}: schema v{plan.current}, this Stockyard knows v{code}")
    for m in plan.pending:
        print(f"  would apply {m.version:04d}_{m.name}")
    if plan.pending and plan.current > 0:
        print(f"  a backup would be written first: {path.name}.pre-v{plan.current:04d}.bak")
    rewrite = plan.rewrite(repack)
    if rewrite:
        size = path.stat().st_size // (1024 * 1024)
        print(
            f"  would rewrite the file with incremental vacuum and {_kb(db.PAGE_SIZE_BYTES)} pages "
            f"(one VACUUM, rewrites about {size} MB; needs that much free space twice)"
        )
    elif plan.page_size < db.PAGE_SIZE_BYTES:
        print(
            f"  its pages are {_kb(plan.page_size)} ({_kb(db.PAGE_SIZE_BYTES)} in a new database): "
            "`stockyard migrate --repack` rewrites it, optional"
        )
    if not plan.pending and not rewrite:
        print("  up to date")
        return 0
    return 1


def _kb(size: int) -> str:
    return f"{size // 1024} KB"


def apply(path: Path, repack: bool) -> int:
    for line in files.secure_existing(path):
        print(f"file permissions: {line}")
    plan = _plan(path)
    rewrite = plan.rewrite(repack)
    conn, applied = db.open_and_migrate(path)
    try:
        if rewrite:
            before = path.stat().st_size
            try:
                db.repack(conn)
            except sqlite3.OperationalError as exc:  # another program's connection (a reader counts)
                raise CommandError(
                    f"could not rewrite {path}: another process has it open ({exc}); close it and "
                    "run `stockyard migrate` again" + (" (the schema upgrade is done)" if applied else "")
                ) from None
            print(
                f"rewrote the file with incremental vacuum and {_kb(db.PAGE_SIZE_BYTES)} pages: "
                f"{before} → {path.stat().st_size} bytes"
            )
    finally:
        conn.close()
    ops = Operations(Store(path), audit.actor_cli(), encryption_secret())
    try:
        for m in applied:
            ops.audit_event("migration.apply", f"schema:{m.version:04d}", {"name": m.name})
        if rewrite:
            details = {"auto_vacuum": "incremental", "page_size": db.PAGE_SIZE_BYTES}
            ops.audit_event("database.vacuum", "database", details)
    finally:
        ops.store.close()
    if applied:
        print(
            f"applied {', '.join(f'{m.version:04d}_{m.name}' for m in applied)}; "
            f"backup of schema v{plan.current} at {path.name}.pre-v{plan.current:04d}.bak"
        )
    elif not rewrite:
        print(f"database {path}: schema v{plan.current}, up to date")
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

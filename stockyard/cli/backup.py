"""``stockyard backup DEST``: a consistent, checked copy of the live database, audited."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import audit
from ..backup import BackupError, create_backup, create_postgres_backup, resolve_destination
from ..config import encryption_secret
from ..dburl import PostgresURL
from ..operations import Operations
from ..store import Store, backend_for, db
from ..store.backends import PostgresBackend
from .common import CommandError, database, nothing_yet, runs


def register(sub) -> None:
    p = sub.add_parser(
        "backup",
        help="copy the database safely, even while the server runs",
        description="Write a consistent copy of the database to DEST (a file, or a folder for a "
        "time-stamped file) using SQLite's backup API, check it (integrity, schema "
        "version), print its size and audit head, and record the backup in the audit "
        "log. Safe while the server runs; a plain cp of the live file is not. On PostgreSQL "
        "the copy is a self-contained SQLite file (as migrate-store --to sqlite: writes), "
        "its audit chain checked against the database's.",
    )
    p.add_argument("dest", metavar="DEST", help="file to write (replaced atomically) or existing folder")
    runs(p, run)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    live = database(args)
    if isinstance(live, Path) and not live.exists():
        raise nothing_yet(live)
    try:
        if isinstance(live, PostgresURL):
            dest = resolve_destination(args.dest, None)
            info = create_postgres_backup(PostgresBackend(live), dest, secret=encryption_secret(), progress=_progress)
        else:
            dest = resolve_destination(args.dest, live)
            conn = db.connect(live)
            try:
                db.pending_migrations(conn)  # refuses a database newer than this code
                info = create_backup(conn, dest)
            finally:
                conn.close()
    except BackupError as exc:
        raise CommandError(str(exc)) from None
    print(f"backup written: {info.path}")
    print(f"  size        {info.size_bytes} bytes")
    print(f"  schema      v{info.schema_version}, integrity {info.integrity}")
    print(f"  audit head  {info.audit_head} ({info.audit_seq} entries)")
    store = Store(backend_for(live))
    try:
        Operations(store, audit.actor_cli(), encryption_secret()).audit_event(
            "backup.create",
            str(info.path),
            {
                "bytes": info.size_bytes,
                "schema": info.schema_version,
                "audit_seq": info.audit_seq,
                "audit_head": info.audit_head,
            },
        )
    except Exception as exc:
        raise CommandError(f"the backup is complete, but it could not be recorded in the audit log: {exc}") from None
    finally:
        store.close()
    return 0

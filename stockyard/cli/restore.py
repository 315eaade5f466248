"""``stockyard restore SRC``: put a backup or snapshot in place of the database (server stopped)."""

from __future__ import annotations

import argparse
import sys

from .. import audit
from ..backup import KEEP_PREVIOUS, BackupError, restore, restore_postgres
from ..config import encryption_secret
from ..dburl import PostgresURL
from ..store.backends import PostgresBackend
from ..store.lock import DatabaseBusy
from .common import CommandError, database, kept_count, runs


def register(sub) -> None:
    p = sub.add_parser(
        "restore",
        help="replace the database with a backup (server must be stopped)",
        description="Check SRC (integrity, schema not newer than this Stockyard), keep the current "
        "database aside as <db>.before-restore-<UTC time>, and swap SRC in atomically. "
        "Refuses while a server is using the database. An older backup is upgraded "
        "(SRC itself is never changed). The restore is recorded in the restored "
        "database's audit log, so STOCKYARD_ENCRYPTION_KEY must be the one it was made with. On "
        "PostgreSQL, SRC is loaded into an EMPTY database (nothing is replaced under running servers).",
    )
    p.add_argument("source", metavar="SRC", help="a file written by `stockyard backup` or a snapshot")
    p.add_argument(
        "--accept-broken-keys",
        action="store_true",
        help="restore even if stored provider keys or webhook secrets in SRC do not decrypt with "
        "STOCKYARD_ENCRYPTION_KEY (they are named; store them again afterwards)",
    )
    p.add_argument(
        "--keep-previous",
        type=kept_count,
        default=KEEP_PREVIOUS,
        metavar="N",
        help=f"after a restore that succeeded, keep the newest N <db>.before-restore-* copies and "
        f"remove older ones (default {KEEP_PREVIOUS}; 0 keeps none, not even this one's)",
    )
    runs(p, run)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    target = database(args)
    actor, secret = audit.actor_cli(), encryption_secret()
    try:
        if isinstance(target, PostgresURL):
            done = restore_postgres(
                PostgresBackend(target),
                args.source,
                actor=actor,
                secret=secret,
                progress=_progress,
                accept_broken_keys=args.accept_broken_keys,
            )
        else:
            done = restore(
                target,
                args.source,
                actor=actor,
                secret=secret,
                accept_broken_keys=args.accept_broken_keys,
                keep_previous=args.keep_previous,
            )
    except (BackupError, DatabaseBusy) as exc:
        raise CommandError(str(exc)) from None
    for warning in done.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    src = done.source
    print(f"restored {src.path} into {target}")
    print(
        f"  schema      v{done.schema_from}"
        + (f" (upgraded to v{done.schema_to})" if done.schema_to != done.schema_from else "")
    )
    print(f"  audit head  {src.audit_head} ({src.audit_seq} entries in the backup)")
    if done.previous is not None and done.previous.exists():  # (--keep-previous 0 removes it)
        print(f"  previous database kept as {done.previous}")
    return 0

"""``stockyard migrate-store --to URL``: move a whole database between SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..config import encryption_secret
from ..dburl import PostgresURL, is_url, parse_postgres
from ..store import move
from ..store.backends import PostgresBackend
from ..store.lock import MIGRATE, DatabaseBusy, DatabaseLock
from .common import CommandError, database, nothing_yet, runs


def register(sub) -> None:
    p = sub.add_parser(
        "migrate-store",
        help="copy the database into PostgreSQL, or PostgreSQL into a new SQLite file",
        description="Copy every table of the database (--db or STOCKYARD_DB) into another store: an SQLite "
        "file into an EMPTY PostgreSQL database (--to postgresql://…; stop the server first), or a "
        "PostgreSQL database into a new SQLite file (--to sqlite:PATH). Ids, the audit chain and the "
        "encrypted provider keys move as they are (keep the same STOCKYARD_ENCRYPTION_KEY). One "
        "transaction: on failure the target is left empty (PostgreSQL) or absent (SQLite).",
    )
    p.add_argument("--to", required=True, metavar="URL", help="postgresql://user@host:port/db?sslmode=… or sqlite:PATH")
    runs(p, run)


def _target(raw: str) -> PostgresURL | Path:
    if is_url(raw):
        return parse_postgres(raw, os.environ)
    if raw.startswith("sqlite:") and raw[len("sqlite:") :]:
        return Path(raw[len("sqlite:") :]).expanduser()
    raise CommandError("--to takes a postgresql://… URL or sqlite:PATH", code=2)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    source, target = database(args), _target(args.to)
    secret = encryption_secret()
    try:
        if isinstance(source, Path) and isinstance(target, PostgresURL):
            if not source.exists():
                raise nothing_yet(source)
            with DatabaseLock(source, MIGRATE):  # no server writes the file while it is copied
                _progress(f"copying {source} into {target}")
                counts = move.sqlite_to_postgres(source, PostgresBackend(target), secret=secret, progress=_progress)
        elif isinstance(source, PostgresURL) and isinstance(target, Path):
            _progress(f"copying {source} into {target}")
            counts = move.postgres_to_sqlite(PostgresBackend(source), target, secret=secret, progress=_progress)
        else:
            kind = "PostgreSQL" if isinstance(source, PostgresURL) else "SQLite"
            raise CommandError(
                f"the source {source} is {kind} already: migrate-store copies SQLite into PostgreSQL "
                "(--to postgresql://…) or PostgreSQL into SQLite (--to sqlite:PATH)",
                code=2,
            )
    except DatabaseBusy as exc:
        raise CommandError(str(exc)) from None
    except move.MoveError as exc:
        raise CommandError(str(exc)) from None
    print(f"copied {sum(counts.values())} rows in {len(counts)} tables from {source} into {target}")
    return 0

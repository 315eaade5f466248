"""Helpers every CLI command shares: --db, opening the store, printing tables and JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TextIO

from .. import audit, vault
from ..config import ENCRYPTION_KEY_VAR, encryption_secret, resolve_database
from ..dburl import PostgresURL
from ..limits import SQLITE_INT_MAX, whole_number
from ..operations import Operations
from ..store import Store, backend_for, db


class CommandError(Exception):
    """A one-line failure for the user."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def actions(sub: Any, name: str, *, help: str, description: str) -> Any:
    """A command made of actions (``stockyard keys create``): the sub-parsers for its
    actions, of which one must be given."""
    command = sub.add_parser(name, help=help, description=description)
    group = command.add_subparsers(dest=f"{name}_command", metavar="ACTION")
    group.required = True
    return group


def runs(
    parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], Any], *, json: bool = False, **defaults: Any
) -> None:
    """Finish a command's parser: ``--json`` for one that can answer in JSON (after its own
    options), ``--db`` for every one, and ``func`` to run it (``defaults`` set on its args)."""
    if json:
        parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--db",
        metavar="PATH|URL",
        help="database file, or a postgresql://user@host:port/db?sslmode=… URL "
        "(default: $STOCKYARD_DB or ~/.stockyard/stockyard.db)",
    )
    parser.set_defaults(func=func, **defaults)


def count_arg(text: str) -> int:
    """A count option (``--limit``): a whole number SQLite can hold, 1 or more; argparse reports the rest."""
    try:
        return whole_number(int(text.strip()), 1, SQLITE_INT_MAX)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {SQLITE_INT_MAX}, got {text!r}") from None


def kept_count(text: str) -> int:
    """A count of things kept (``--keep-previous``): 0 or more. A negative one, "no limit" by habit,
    would otherwise read as 0 and remove them all."""
    try:
        return whole_number(int(text.strip()), 0, SQLITE_INT_MAX)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more, got {text!r}") from None


def database(args: argparse.Namespace) -> Path | PostgresURL:
    """``--db``, then ``STOCKYARD_DB``, then the default: a file, or a PostgreSQL URL."""
    return resolve_database(getattr(args, "db", None), os.environ)


def nothing_yet(path: Path) -> CommandError:
    """The one line every command that only reads gives on a fresh install (exit code 1)."""
    return CommandError(
        f"nothing yet: there is no database at {path}; it is created by `stockyard serve` "
        "or by the first configuration change (e.g. `stockyard keys create`). "
        "If it lives elsewhere, pass --db or set STOCKYARD_DB"
    )


def open_store(args: argparse.Namespace, *, must_exist: bool = True) -> Store:
    """The database for a CLI command, migrated; writes run directly (no server writer).

    Commands that only read pass ``must_exist`` (the default) and say there is nothing yet
    when there is no file; commands that change something go through :func:`open_ops`,
    which creates it.
    """
    found = database(args)
    if isinstance(found, PostgresURL):
        return _open_postgres(found, must_exist)
    path = found
    if must_exist and not path.exists():
        raise nothing_yet(path)
    if path.exists() and _needs_upgrade(path):
        raise CommandError(
            f"{path} needs a schema upgrade first: run `stockyard migrate` (with the server "
            "stopped), or start the server, which upgrades it"
        )
    conn, _ = db.open_and_migrate(path)  # a new file: its schema from scratch
    conn.close()
    return Store(path)


def _open_postgres(url: PostgresURL, must_exist: bool) -> Store:
    """The same rules on PostgreSQL: nothing yet in an empty database, an old schema is migrate's job."""
    backend = backend_for(url)
    conn = backend.connect()
    try:
        version = db.schema_version(conn)
        pending = db.pending_migrations(conn)
    finally:
        conn.close()
    if must_exist and version == 0:
        raise CommandError(
            f"nothing yet: the database {url} has no Stockyard tables; they are created by `stockyard serve` "
            "or by the first configuration change (e.g. `stockyard keys create`)"
        )
    if version > 0 and pending:
        raise CommandError(f"{url} needs a schema upgrade first: start the server, which upgrades it")
    backend.open_and_migrate()
    return Store(backend)


def _needs_upgrade(path: Path) -> bool:
    """An existing database older than this code: upgrading it is `migrate`'s (audited, locked) job."""
    conn = db.connect(path, readonly=True)
    try:
        return db.schema_version(conn) > 0 and bool(db.pending_migrations(conn))
    finally:
        conn.close()


def open_ops(args: argparse.Namespace, *, create: bool = True, encrypts: str | None = None) -> Operations:
    """The operations layer for a change made from the CLI, attributed to the OS user.

    Whoever can write the database file is an administrator; a running server picks the
    change up by itself. Every command that changes configuration (keys, projects, prices,
    providers, modules) makes the database if there is none yet — the same way a first
    ``serve`` does — so configuration can exist before the first start, and the proxy is
    never open. Commands that act on an existing database only (``reload``, ``audit note``)
    pass ``create=False`` and say there is nothing yet. A change that stores a secret encrypted
    names it in ``encrypts``: without the key it is refused first (:func:`require_secret`).
    """
    secret = require_secret(encrypts) if encrypts else encryption_secret()
    return Operations(open_store(args, must_exist=not create), audit.actor_cli(), secret)


def require_secret(what: str) -> str:
    """STOCKYARD_ENCRYPTION_KEY for a change that stores ``what`` encrypted, else the refusal
    saying what to set — before any database is opened, so a refused command leaves no new
    database behind (an empty file, or a PostgreSQL database's tables)."""
    secret = encryption_secret()
    if not secret:
        raise CommandError(
            f"{ENCRYPTION_KEY_VAR} is not set, and {what} is stored encrypted with it; nothing was changed. "
            + vault.SECRET_HOWTO
        )
    return secret


def print_json_lines(rows: Iterable[dict[str, Any]], out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up per call, so redirected stdout is honoured
    for row in rows:
        out.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")


def print_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], out: TextIO | None = None, empty: str = "(none)"
) -> None:
    """A readable fixed-width table: columns are (key, heading)."""
    out = out or sys.stdout
    if not rows:
        out.write(empty + "\n")
        return
    cells = [[_cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
    out.write("  ".join(h.ljust(w) for (_, h), w in zip(columns, widths)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def print_json(value: Any, out=sys.stdout) -> None:
    """One JSON document (for results that are not a listing)."""
    out.write(json.dumps(value, default=str, ensure_ascii=False, indent=2) + "\n")

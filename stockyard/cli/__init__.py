"""The ``stockyard`` command line: one sub-command group per file, registered here.

Every command takes ``--db`` (or ``STOCKYARD_DB``). Errors are one line on stderr and a
non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sqlite3
import sys

from ..audit import AuditError
from ..operations import Refused
from ..store.db import SchemaError
from ..store.lock import DatabaseBusy
from ..vault import VaultError
from . import common

# One module per command, each with register(subparsers); the command is the module's name with
# "-" for "_", and this order is the order in --help. A command imports only its own module (and
# what that needs): `stockyard keys list` does not load the server, the backup or the TOML config.
COMMANDS = [
    "serve",
    "traces",
    "responses",
    "conversations",
    "costs",
    "export",
    "webhooks",
    "keys",
    "projects",
    "prices",
    "providers",
    "models",
    "modules",
    "config",
    "audit",
    "backup",
    "restore",
    "migrate",
    "migrate_store",
    "reload",
    "doctor",
    "version",
]

EPILOG = """\
environment:
  STOCKYARD_DB              database file (default ~/.stockyard/stockyard.db), or postgresql://…
  STOCKYARD_DB_PASSWORD_FILE  the PostgreSQL password, from a file (or PGPASSWORD, or the URL)
  STOCKYARD_HOST, _PORT     listen address for serve (default 127.0.0.1:4200)
  STOCKYARD_ADMIN_KEY       bearer token for the admin API under /api/
  STOCKYARD_ENCRYPTION_KEY  secret for stored provider keys and the keyed audit chain
  OPENAI_API_KEY, ANTHROPIC_API_KEY, ...  providers (see the README)

examples:
  python3 stockyard.pyz serve
  python3 stockyard.pyz traces --limit 5
  python3 stockyard.pyz keys create --name my-app --budget-usd 20 --budget-period month
  python3 stockyard.pyz costs --by model --since 2024-05-01
  python3 stockyard.pyz audit verify
  python3 stockyard.pyz doctor

Run `stockyard COMMAND --help` for a command's options."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or for ``command`` alone when it names one."""
    modules = [m for m in COMMANDS if m.replace("_", "-") == command] or COMMANDS
    parser = argparse.ArgumentParser(
        prog="stockyard",
        description="Stockyard: a self-hosted LLM proxy with traces, costs, budgets and an audit "
        "log in one SQLite file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in modules:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        wait_for_locks_as_set()
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `stockyard audit export --csv | head`
        sys.stderr.close()
        return 0
    except common.CommandError as exc:
        print(f"stockyard: {exc}", file=sys.stderr)
        return exc.code
    except (SchemaError, Refused, DatabaseBusy, AuditError, VaultError, ValueError, sqlite3.Error, OSError) as exc:
        print(f"stockyard: {exc}{_disk_hint(exc)}", file=sys.stderr)
        return 1


def wait_for_locks_as_set() -> None:
    """Every command waits for a lock another process holds (a server's write, a restore) as long as
    ``STOCKYARD_BUSY_TIMEOUT_MS`` says, as ``serve`` does: a script that set it for its servers gets
    its commands' "database is locked" at the same bound, not the default's 10 s."""
    import os

    from ..config import busy_timeout
    from ..store import db

    db.set_busy_timeout(busy_timeout(os.environ.get("STOCKYARD_BUSY_TIMEOUT_MS")))


_SQLITE_IOERR, _SQLITE_FULL = 10, 13


def _disk_hint(exc: BaseException) -> str:
    """What SQLite's bare ``disk I/O error`` / ``database or disk is full`` leaves out: where to look,
    and that the database is not half changed (SQLite rolls back what it could not write)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or code & 0xFF not in (_SQLITE_IOERR, _SQLITE_FULL):
        return ""
    return (
        " (is the disk under the database full?); what the command was writing when it failed was "
        "rolled back, and the database file stays whole"
    )

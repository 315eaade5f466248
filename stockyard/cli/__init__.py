"""The ``stockyard`` command line: one sub-command group per file, registered here.

Every command takes ``--db`` (or ``STOCKYARD_DB``). Errors are one line on stderr and a
non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys

from ..audit import AuditError
from ..errors import ProxyError
from ..store.db import SchemaError
from ..store.lock import DatabaseBusy
from . import backup, common, migrate, restore, serve, traces, version

# Each module has register(subparsers); order here is the order in --help.
COMMANDS = [serve, traces, backup, restore, migrate, version]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stockyard",
        description="Stockyard: a self-hosted LLM proxy with traces, costs, budgets and an audit log in one SQLite file.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except common.CommandError as exc:
        print(f"stockyard: {exc}", file=sys.stderr)
        return exc.code
    except (SchemaError, ProxyError, DatabaseBusy, AuditError, ValueError, sqlite3.Error, OSError) as exc:
        message = exc.message if isinstance(exc, ProxyError) else str(exc)
        print(f"stockyard: {message}", file=sys.stderr)
        return 1

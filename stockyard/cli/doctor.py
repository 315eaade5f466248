"""``stockyard doctor``: one line per check, with the fix; exit 1 when something fails."""

from __future__ import annotations

import argparse
import os
import sys

from .. import doctor
from .common import database, print_json_lines, runs

_MARK = {doctor.OK: "ok  ", doctor.WARN: "warn", doctor.FAIL: "fail"}


def register(sub) -> None:
    p = sub.add_parser(
        "doctor",
        help="check the installation and say how to fix problems",
        description="Check the database (integrity, WAL mode, schema version, size), the "
        "encryption secret (set? does it open what is stored?), the audit chain, "
        "the providers configured in the environment, and the listen address. "
        "Changes nothing. Exit 1 if any check fails. On PostgreSQL: that it answers, the schema "
        "version and the size, then the same secret, audit chain, provider and listen checks.",
    )
    p.add_argument("--host", help="the listen address to check (default: $STOCKYARD_HOST or 127.0.0.1)")
    runs(p, run, json=True)


def run(args: argparse.Namespace) -> int:
    checks = doctor.run(database(args), os.environ, host=args.host)
    if args.json:
        print_json_lines(c.as_dict() for c in checks)
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            fix = f"  → fix: {c.fix}" if c.fix and c.status != doctor.OK else ""
            print(f"{_MARK[c.status]}  {c.name.ljust(width)}  {c.message}{fix}")
    failed = sum(c.status == doctor.FAIL for c in checks)
    warned = sum(c.status == doctor.WARN for c in checks)
    if not args.json:
        summary = (
            f"{failed} check(s) failed, {warned} warning(s)"
            if failed
            else f"all checks passed ({warned} warning(s))"
            if warned
            else "all checks passed"
        )
        print(summary, file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0

"""``stockyard audit``: check, show, export and annotate the hash-chained audit log."""

from __future__ import annotations

import argparse
import json
import re
import sys

from .. import audit
from ..config import encryption_secret
from ..operations import maintenance
from ..times import FORMAT_HELP, parse_utc, to_iso
from .common import (
    CommandError,
    count_arg,
    open_ops,
    open_store,
    print_json_lines,
    print_table,
    runs,
)

_HASH = re.compile(r"^[0-9a-f]{64}$")


def register(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="verify, list, export or annotate the audit log",
        description="Every administrative change is recorded in a hash-chained audit log. With "
        "STOCKYARD_ENCRYPTION_KEY set the chain is keyed, so the file alone is not "
        "enough to rewrite it; record `stockyard audit head` elsewhere to catch a "
        "truncated tail later with `verify --expect-head`.",
    )
    p.set_defaults(func=lambda args: _usage(p))
    actions = p.add_subparsers(dest="audit_command", metavar="ACTION", title="actions")

    v = actions.add_parser(
        "verify",
        help="check the whole chain (exit 1 if broken)",
        description="Walk the chain and print 'ok, N entries, head HASH' (exit 0) or the first broken entry (exit 1).",
    )
    v.add_argument(
        "--expect-head", metavar="HASH", help="a head recorded earlier: fail if the log no longer contains it"
    )
    runs(v, run_verify, json=True)

    h = actions.add_parser(
        "head",
        help="print the newest entry's hash",
        description="Print the head hash, to keep somewhere the database "
        "is not (a ticket, a backup note, another host).",
    )
    runs(h, run_head, json=True)

    ls = actions.add_parser(
        "list",
        help="show recent entries",
        description="Show the newest entries (oldest first), optionally only those since a time or of one action.",
    )
    ls.add_argument("--since", metavar="TIME", help=f"only entries at or after TIME: {FORMAT_HELP}")
    ls.add_argument("--action", help="only this action, e.g. admin.auth_failed")
    ls.add_argument("--limit", type=count_arg, default=50, help="at most this many, the newest (default 50)")
    runs(ls, run_list, json=True)

    ex = actions.add_parser(
        "export",
        help="write the whole log to stdout",
        description="Write every entry, fields exactly as stored, so the export can be verified independently.",
    )
    ex.add_argument("--csv", action="store_true", required=True, help="CSV with a header row")
    runs(ex, run_export)

    n = actions.add_parser(
        "note",
        help="add an operator note",
        description="Append a note to the audit log, e.g. the start and end "
        "of a maintenance window. A running server shows it at once.",
    )
    n.add_argument("text", help="the note (quote it)")
    runs(n, run_note)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_verify(args: argparse.Namespace) -> int:
    expect = args.expect_head
    if expect is not None and not _HASH.match(expect):
        raise CommandError(
            "--expect-head must be a head hash: 64 lowercase hex characters (from `stockyard audit head`)", code=2
        )
    conn = open_store(args).read()
    result = audit.verify_with_secret(conn, encryption_secret(), expect)
    if args.json:
        print_json_lines([result.as_dict()])
    elif result.ok:
        print(result.reason)
    else:
        print(f"audit log does NOT verify: {result.reason}")
    return 0 if result.ok else 1


def run_head(args: argparse.Namespace) -> int:
    seq, hash_ = audit.head(open_store(args).read())
    if args.json:
        print_json_lines([{"seq": seq, "hash": hash_}])
    else:
        print(hash_)
    return 0


def run_list(args: argparse.Namespace) -> int:
    since = None
    if args.since:
        try:
            since = to_iso(parse_utc(args.since))
        except ValueError as exc:
            raise CommandError(f"--since: {exc}", code=2) from None
    rows = audit.list_entries(open_store(args).read(), since=since, action=args.action, limit=args.limit, last=True)
    if args.json:
        print_json_lines(rows)
        return 0
    for row in rows:
        row["details"] = json.dumps(row["details"], ensure_ascii=False, separators=(",", ":"))
    print_table(
        rows,
        [
            ("seq", "SEQ"),
            ("ts", "TIME (UTC)"),
            ("actor", "ACTOR"),
            ("action", "ACTION"),
            ("target", "TARGET"),
            ("details", "DETAILS"),
        ],
        empty="no audit entries match",
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    audit.export_csv(open_store(args).read(), sys.stdout)
    return 0


def run_note(args: argparse.Namespace) -> int:
    entry = maintenance.add_note(open_ops(args, create=False), args.text)
    print(f"noted as entry {entry.seq}, head {entry.hash}")
    return 0

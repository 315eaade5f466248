"""``stockyard export traces``: traces as JSON lines or CSV for analytics tools, streamed."""

from __future__ import annotations

import argparse
import sys

from ..store import export
from ..times import FORMAT_HELP, parse_utc, to_ms
from .common import actions, open_store, runs


def utc_ms(text: str) -> int:
    try:
        return to_ms(parse_utc(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub) -> None:
    group = actions(
        sub,
        "export",
        help="stream traces out for analytics",
        description="Stream recorded data to stdout for DuckDB, ClickHouse or a warehouse (constant memory).",
    )
    p = group.add_parser(
        "traces",
        help="traces as JSON lines or CSV",
        description="Every trace row (failed attempts included, linked by parent_id) from --since up to "
        "--until, oldest first. Costs are integer micro-cents (1e-8 USD).",
    )
    p.add_argument("--since", type=utc_ms, required=True, metavar="TIME", help=f"first time, {FORMAT_HELP}")
    p.add_argument("--until", type=utc_ms, metavar="TIME", help="stop before this time (default: now)")
    p.add_argument("--format", choices=export.FORMATS, default="jsonl", help="jsonl (default) or csv")
    p.add_argument("--bodies", action="store_true", help="add the stored request and response bodies (as text)")
    runs(p, run)


def run(args: argparse.Namespace) -> int:
    if args.until is not None and args.until <= args.since:
        print("stockyard: --until must be later than --since", file=sys.stderr)
        return 2
    rows = export.iter_traces(open_store(args).read(), since_ms=args.since, until_ms=args.until, bodies=args.bodies)
    export.write(rows, sys.stdout, args.format, args.bodies)
    return 0

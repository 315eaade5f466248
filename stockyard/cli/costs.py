"""``stockyard costs``: spend by day, model, provider, key, project, end user or tag, from the daily rollups."""

from __future__ import annotations

import argparse
import sys

from ..store import costs
from .common import open_store, print_json, print_table, runs


def register(sub) -> None:
    p = sub.add_parser(
        "costs",
        help="spend report from the daily rollups",
        description="Requests, tokens and exact cost grouped by day, model, provider, key, "
        "project, end user or the values of a tag (--by tag:team). Days are UTC; --since and "
        "--until are inclusive. Totals equal the sum of the traces' costs exactly.",
    )
    p.add_argument(
        "--by",
        default="day",
        metavar="|".join([*costs.GROUPS, "tag:NAME"]),
        help="how to group (default: day); two at once with a comma, e.g. day,model",
    )
    p.add_argument(
        "--top",
        type=int,
        metavar="N",
        help=f"keep the N groups of the end user or tag (wherever it is in --by), else of the last of --by, "
        f"that cost most over the range, the rest summed per other group (per day for --by day,user) "
        f"into one row named {costs.OTHER}; without it the CLI lists every group (/api/costs keeps "
        f"{costs.USERS_TOP} of a user or tag report)",
    )
    p.add_argument("--since", metavar="DATE", help="first day, e.g. 2026-11-01")
    p.add_argument("--until", metavar="DATE", help="last day, e.g. 2026-11-30")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="the report as one JSON object (rows and total)")
    fmt.add_argument("--csv", action="store_true", help="the report as CSV, with a TOTAL row")
    runs(p, run)


def run(args: argparse.Namespace) -> int:
    result = costs.report(open_store(args).read(), args.by, args.since, args.until, top=args.top)
    if args.json:
        print_json(result)
        return 0
    if args.csv:
        costs.write_csv(result, sys.stdout)
        return 0
    groups = result["groups"]
    rows = [dict(r) for r in result["rows"]]
    if "key" in groups:
        for r in rows:
            r["key"] = f"{r['key_name']} ({r['key']})" if r.get("key_name") else r["key"]
    rows.append({groups[0]: "TOTAL", **result["total"]})
    for r in rows:
        r["tokens"] = f"{r['prompt_tokens']}/{r['completion_tokens']}"
        for g in groups:
            if r.get(g) is None and r[groups[0]] != "TOTAL":
                r[g] = "(none)"
    print_table(
        rows,
        [
            *((g, g.upper()) for g in groups),
            ("requests", "REQUESTS"),
            ("errors", "ERRORS"),
            ("tokens", "TOKENS IN/OUT"),
            ("cached_tokens", "CACHED"),
            ("reasoning_tokens", "REASONING"),
            ("unknown_cost", "UNPRICED"),
            ("cost_usd", "COST"),
        ],
    )
    return 0

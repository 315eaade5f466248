"""``stockyard traces``: recent requests, newest first."""

from __future__ import annotations

import argparse

from ..operations.maintenance import erase_bodies
from ..store import traces as trace_store
from .common import count_arg, open_ops, open_store, print_json, print_json_lines, print_table, runs


def register(sub) -> None:
    p = sub.add_parser("traces", help="list recent requests", description="List recent proxied requests, newest first.")
    p.add_argument("--limit", type=count_arg, default=20, help="how many (default 20)")
    p.add_argument("--user", help="only this end user's requests")
    p.add_argument("--tag", metavar="NAME=VALUE", type=_tag, help="only requests with this tag, e.g. team=search")
    p.add_argument(
        "--search", metavar="TEXT", help="only traces whose stored request or response has every word of TEXT"
    )
    p.add_argument(
        "--erase-body",
        metavar="TRACE_ID",
        action="append",
        help="delete the stored request and response bodies of this trace, and the stored response and "
        "conversation items its request made (repeatable; the trace row, its tokens and cost stay; audited) "
        "instead of listing",
    )
    runs(p, run, json=True)


def _tag(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--tag must be NAME=VALUE, got {text!r}")
    return name, value


def run(args: argparse.Namespace) -> int:
    if args.erase_body:
        return _erase(args)
    store = open_store(args)
    rows = trace_store.list_traces(store.read(), limit=args.limit, user=args.user, tag=args.tag, search=args.search)
    if args.json:
        print_json_lines(rows)
        return 0
    for r in rows:
        r["latency"] = f"{r['latency_us'] / 1000:.1f}ms"
        r["tokens"] = (
            f"{r['prompt_tokens'] or 0}/{r['completion_tokens'] or 0}" if r["prompt_tokens"] is not None else None
        )
    print_table(
        rows,
        [
            ("id", "ID"),
            ("ts", "TIME (UTC)"),
            ("endpoint", "ENDPOINT"),
            ("key_name", "KEY"),
            ("provider", "PROVIDER"),
            ("model", "MODEL"),
            ("end_user", "USER"),
            ("status", "STATUS"),
            ("outcome", "OUTCOME"),
            ("latency", "LATENCY"),
            ("tokens", "TOKENS IN/OUT"),
            ("cost_uc", "COST µ¢"),
        ],
        empty="no traces match" if args.search else "no traces yet",
    )
    return 0


def _erase(args: argparse.Namespace) -> int:
    erased = erase_bodies(open_ops(args, create=False), args.erase_body)
    items = sum(erased.conversation_items.values())
    if args.json:
        print_json({"erased": erased.bodies, "responses": erased.responses, "conversation_items": items})
        return 0
    asked = len(dict.fromkeys(args.erase_body))
    rest = " (the rest had none)" if len(erased.bodies) < asked else ""
    print(f"erased the stored bodies of {len(erased.bodies)} of {asked} trace(s){rest}")
    if erased.responses or items:
        print(
            f"and what their requests stored: {len(erased.responses)} response(s), "
            f"{items} conversation item(s) in {len(erased.conversation_items)} conversation(s)"
        )
    return 0

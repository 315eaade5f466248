"""``stockyard keys``: client keys — create (shown once), list, update, revoke."""

from __future__ import annotations

import argparse
import sys

from ..operations import keys as key_ops
from .common import actions, open_ops, open_store, print_json, print_json_lines, print_table, runs

LIMIT_HELP = "; 'none' removes it"


def register(sub) -> None:
    keys = actions(
        sub,
        "keys",
        help="client keys: create, list, update, revoke",
        description="Client keys (sk-sy-…) that applications send as Authorization: Bearer or "
        "x-api-key. Once any key exists, every proxy request needs one. A running "
        "server picks up changes within a second.",
    )

    c = keys.add_parser(
        "create",
        help="make a key and print it once",
        description="Make a client key. The key is printed once on stdout (notes go to stderr); only its hash is kept.",
    )
    c.add_argument("--name", required=True, help="a unique name, e.g. ci-bot")
    _add_settings(c)
    runs(c, create, json=True)

    ls = keys.add_parser(
        "list",
        help="list keys with their limits and spend",
        description="Keys with project, limits, spend in the current budget period "
        "(month to date for keys without a budget) and last use.",
    )
    ls.add_argument("--live", action="store_true", help="leave out revoked keys")
    runs(ls, list_, json=True)

    u = keys.add_parser(
        "update",
        help="change a key's settings",
        description="Change some settings of a key, named by id or name; 'none' removes a limit.",
    )
    u.add_argument("key", metavar="ID|NAME")
    u.add_argument("--name", help="a new name")
    _add_settings(u, update=True)
    runs(u, update, json=True)

    r = keys.add_parser(
        "revoke",
        help="revoke a key for good",
        description="Revoke a key: its next request gets a 401. The record stays, so its "
        "traces and costs still name it.",
    )
    r.add_argument("key", metavar="ID|NAME")
    runs(r, revoke, json=True)


def _add_settings(p: argparse.ArgumentParser, update: bool = False) -> None:
    clear = LIMIT_HELP if update else ""
    p.add_argument("--project", help=f"project the key belongs to (its costs and project budget){clear}")
    p.add_argument(
        "--models",
        metavar="M1,M2",
        help="allowed models (a trailing * matches a prefix; provider/model allows one provider, "
        f"a bare name only the provider routing picks for it){clear}",
    )
    p.add_argument(
        "--expires",
        metavar="DATE",
        help=f"expiry: a UTC date (the key stops at 00:00 that day) "
        f"or an ISO time{'; never removes it' if update else ''}",
    )
    p.add_argument("--budget-usd", metavar="USD", help=f"spend limit in US dollars, e.g. 25 or 0.50{clear}")
    p.add_argument("--budget-period", metavar="day|month|total", help="what the budget covers (UTC)")
    p.add_argument("--rpm", metavar="N", help=f"requests per minute{clear}")
    p.add_argument(
        "--tpm",
        metavar="N",
        help=f"tokens per minute (input estimate + max_tokens × n, corrected to real usage){clear}",
    )


def _fields(args: argparse.Namespace) -> dict:
    names = ("name", "project", "models", "expires", "budget_usd", "budget_period", "rpm", "tpm")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def create(args: argparse.Namespace) -> int:
    described, secret = key_ops.create_key(open_ops(args), _fields(args))
    if args.json:
        print_json({**described, "key": secret})
        return 0
    print(secret)
    print(
        f"created {described['id']} {described['name']!r}{_limits_note(described)}. "
        "This is the only time the key is shown: store it now.",
        file=sys.stderr,
    )
    return 0


def _limits_note(d: dict) -> str:
    parts = [
        f"project {d['project']}" if d["project"] else "",
        f"budget {d['budget']}/{d['budget_period']}" if d["budget"] else "",
        f"{d['rpm']} rpm" if d["rpm"] else "",
        f"{d['tpm']} tpm" if d["tpm"] else "",
    ]
    text = ", ".join(p for p in parts if p)
    return f" ({text})" if text else ""


def list_(args: argparse.Namespace) -> int:
    rows = key_ops.list_keys(open_store(args).read(), include_revoked=not args.live)
    if args.json:
        print_json_lines(rows)
        return 0
    for r in rows:
        r["models_text"] = ",".join(r["models"]) if r["models"] else None
        r["budget_text"] = f"{r['budget']}/{r['budget_period']}" if r["budget"] else None
        r["spend_text"] = f"{r['spend']} ({r['spend_period']})"
    print_table(
        rows,
        [
            ("id", "ID"),
            ("name", "NAME"),
            ("prefix", "PREFIX"),
            ("project", "PROJECT"),
            ("status", "STATUS"),
            ("models_text", "MODELS"),
            ("budget_text", "BUDGET"),
            ("spend_text", "SPEND"),
            ("rpm", "RPM"),
            ("tpm", "TPM"),
            ("expires_at", "EXPIRES"),
            ("last_used_at", "LAST USED"),
        ],
        empty="no client keys (the proxy is open on loopback until one is made)",
    )
    return 0


def update(args: argparse.Namespace) -> int:
    described = key_ops.update_key(open_ops(args), args.key, _fields(args))
    _show(args, described, "updated")
    return 0


def revoke(args: argparse.Namespace) -> int:
    described = key_ops.revoke_key(open_ops(args), args.key)
    _show(args, described, "revoked")
    return 0


def _show(args: argparse.Namespace, described: dict, verb: str) -> None:
    if args.json:
        print_json(described)
    else:
        print(f"{verb} {described['id']} {described['name']!r} ({described['prefix']}…){_limits_note(described)}")

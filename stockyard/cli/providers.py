"""``stockyard providers``: list, add, set-key, remove, rotate-secret, capabilities.

Keys are read from stdin (``--key-stdin``) so they never sit in the shell history or the
process list, and they are never printed back: listings show the last four characters.
"""

from __future__ import annotations

import argparse
import getpass
import itertools
import os
import sys

from .. import audit, vault
from ..config import ENCRYPTION_KEY_VAR, encryption_secret
from ..operations import providers as provider_ops
from ..providers import KINDS
from ..providers.adapters import field_tables
from .common import CommandError, open_ops, open_store, print_json_lines, print_table, runs

PROVIDER_KEY = "a provider key"  # what --key-stdin stores encrypted (refusals name it)


def register(sub) -> None:
    p = sub.add_parser(
        "providers",
        help="list and change providers (keys stored encrypted)",
        description="Providers from environment variables are listed as 'env' and never "
        "stored; providers added here live in the database and override an "
        "env provider of the same name. Storing a key needs "
        f"{ENCRYPTION_KEY_VAR}.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")

    def usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)

    ls = actions.add_parser(
        "list",
        help="list providers (never their keys)",
        description="List every provider — from the environment and the database — with its "
        "kind, base URL, models and the last 4 characters of its key.",
    )
    runs(ls, run_list, json=True)

    caps = actions.add_parser(
        "capabilities",
        help="what each translating provider kind does with each request field",
        description="For each provider kind whose requests are translated (anthropic, gemini), every "
        "OpenAI request field: translated, emulated by Stockyard, or refused with a 400 naming it "
        "(dropped instead when the request sends 'x-stockyard-drop-unsupported: true'). "
        "Other kinds receive every field as sent.",
    )
    runs(caps, run_capabilities, json=True)

    add = actions.add_parser(
        "add",
        help="add a database provider",
        description="Add a provider stored in the database. Its key (--key-stdin) is "
        "encrypted with STOCKYARD_ENCRYPTION_KEY; a running server uses it within a second.",
    )
    add.add_argument("name", help="lower-case letters, digits, '-' and '_' (up to 40)")
    add.add_argument("--kind", required=True, metavar="KIND", help=" | ".join(KINDS))
    add.add_argument("--base-url", metavar="URL", help="http(s) URL (default: the kind's own, where it has one)")
    add.add_argument(
        "--models", metavar="LIST", help="comma-separated model names or prefixes it serves, e.g. gpt-4o,llama-"
    )
    add.add_argument("--api-version", metavar="V", help="API version (Azure)")
    add.add_argument("--key-stdin", action="store_true", help="read the provider's API key from stdin")
    add.add_argument(
        "--responses",
        action="store_true",
        help="an openai-compatible provider that speaks the Responses API (/v1/responses is passed through)",
    )
    runs(add, run_add)

    set_key = actions.add_parser(
        "set-key",
        help="store (or replace) a database provider's key",
        description="Read a key from standard input and store it encrypted for this provider.",
    )
    set_key.add_argument("name")
    set_key.add_argument(
        "--key-stdin",
        action="store_true",
        required=True,
        help="read the key from stdin (required: keys are never passed as arguments)",
    )
    runs(set_key, run_set_key)

    rm = actions.add_parser(
        "remove",
        help="remove a database provider and its stored key",
        description="Remove a database provider and its stored key (environment providers "
        "are changed by editing the environment).",
    )
    rm.add_argument("name")
    runs(rm, run_remove)

    rotate = actions.add_parser(
        "rotate-secret",
        help=f"re-encrypt every stored key under a new {ENCRYPTION_KEY_VAR}",
        description=f"Reads the current secret from {ENCRYPTION_KEY_VAR} and the new one from stdin, "
        "re-encrypts every stored provider key and records the rotation in the audit "
        f"log, in one transaction. Afterwards run Stockyard with the new {ENCRYPTION_KEY_VAR}.",
    )
    runs(rotate, run_rotate)


def read_secret(prompt: str) -> str:
    """One secret from stdin: a hidden prompt on a terminal, else the piped text (stripped)."""
    if sys.stdin.isatty():
        value = getpass.getpass(prompt)
    else:
        value = sys.stdin.read()
    value = value.strip()
    if not value:
        raise CommandError("nothing was read from stdin")
    return value


def _models(text: str | None) -> list[str] | None:
    return None if text is None else [m.strip() for m in text.split(",")]


def _brief(models: list[str], show: int = 3) -> str:
    if len(models) <= show:
        return ",".join(models) or "-"
    return ",".join(models[:show]) + f",… (+{len(models) - show})"


def run_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    rows = provider_ops.listing(store.read(), os.environ, encryption_secret())
    if args.json:
        print_json_lines(rows)
        return 0
    for r in rows:
        r["models_brief"] = _brief(r["models"])
    print_table(
        rows,
        [
            ("id", "ID"),
            ("name", "NAME"),
            ("kind", "KIND"),
            ("source", "SOURCE"),
            ("base_url", "BASE URL"),
            ("key", "KEY"),
            ("key_status", "KEY STATUS"),
            ("models_brief", "MODELS"),
        ],
        empty="no providers: set OPENAI_API_KEY (or another provider's variables) or run `stockyard providers add`",
    )
    broken = [r for r in rows if r["key_error"]]
    for r in broken:
        print(f"provider {r['name']!r}: key cannot be decrypted: {r['key_error']}", file=sys.stderr)
    return 0


def run_capabilities(args: argparse.Namespace) -> int:
    rows = field_tables()
    if args.json:
        print_json_lines(rows)
        return 0
    for (kind, endpoint), group in itertools.groupby(rows, key=lambda r: (r["kind"], r["endpoint"])):
        print(f"{kind} ({endpoint}):")
        print_table(list(group), [("field", "FIELD"), ("how", "HOW"), ("note", "NOTE")])
        print()
    return 0


def run_add(args: argparse.Namespace) -> int:
    ops = open_ops(args, encrypts=PROVIDER_KEY if args.key_stdin else None)  # before the first `serve` too
    key = read_secret("provider key: ") if args.key_stdin else None
    row_id = provider_ops.add(
        ops,
        args.name,
        args.kind,
        base_url=args.base_url,
        models=_models(args.models),
        api_version=args.api_version,
        api_key=key,
        responses=args.responses,
    )
    hint = f", key {vault.last4(key)} stored encrypted" if key else ", no key"
    print(f"added provider {args.name!r} (id {row_id}, {args.kind}{hint})")
    return 0


def run_set_key(args: argparse.Namespace) -> int:
    ops = open_ops(args, encrypts=PROVIDER_KEY)
    key = read_secret("provider key: ")
    provider_ops.update(ops, args.name, api_key=key)
    print(f"stored a new key for {args.name!r} ({vault.last4(key)}, encrypted)")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    provider_ops.remove(open_ops(args), args.name)
    print(f"removed provider {args.name!r}")
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    store = open_store(args)  # nothing to rotate without a database
    old = encryption_secret()
    if not old:
        raise CommandError(f"{ENCRYPTION_KEY_VAR} must hold the current secret; the new one is read from stdin")
    new = read_secret("new secret: ")
    if sys.stdin.isatty() and getpass.getpass("new secret again: ").strip() != new:
        raise CommandError("the two entries differ; nothing was changed")
    result = provider_ops.rotate_secret(store, audit.actor_cli(), old, new)
    print(
        f"re-encrypted {result.keys} provider key(s) (key id {result.old_key_id} → {result.new_key_id}) "
        "and recorded vault.rotate in the audit log."
    )
    print(
        f"From now on run Stockyard — server and CLI — with the NEW {ENCRYPTION_KEY_VAR}; restart a running "
        "server with it now (until then it keeps serving the keys it already holds, but cannot "
        "record changes). To verify the audit entries written before the rotation, give the OLD secret in "
        "STOCKYARD_PREVIOUS_ENCRYPTION_KEYS (comma-separated) to `audit verify`, `doctor` and the server."
    )
    return 0

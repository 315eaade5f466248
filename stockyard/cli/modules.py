"""``stockyard modules``: list, show, enable, disable and configure the request chain's modules.

A change is written to the database (validated, audited); a running server picks it up
within half a second and applies it from the next request.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .. import modules as registry
from ..operations import modules as module_ops
from .common import CommandError, open_ops, open_store, print_json_lines, print_table, runs


def register(sub) -> None:
    p = sub.add_parser(
        "modules",
        help="list, switch and configure the request chain's modules",
        description="The modules of the request chain (in order): "
        + ", ".join(registry.names())
        + ". Changes apply from the next request.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB")

    v = verbs.add_parser(
        "list",
        help="every module, in chain order, on or off",
        description="List every module in chain order, whether it is on, and its options.",
    )
    runs(v, run_list, json=True)

    v = verbs.add_parser(
        "show",
        help="one module: state, options in effect, what each option means",
        description="Show one module: whether it is on, the options in effect, and what each means.",
    )
    v.add_argument("name", metavar="NAME")
    v.add_argument("--json", action="store_true", help="as one JSON object")
    runs(v, run_show)

    for verb, on in (("enable", True), ("disable", False)):
        v = verbs.add_parser(
            verb,
            help=f"switch a module {'on' if on else 'off'}",
            description=f"Switch a module {'on' if on else 'off'} (audited; applies from the next request).",
        )
        v.add_argument("name", metavar="NAME")
        runs(v, run_switch, on=on)

    v = verbs.add_parser(
        "set",
        help="set options: KEY=VALUE (KEY.SUB=VALUE for one entry of an object), "
        "or the whole configuration with --config",
        description="Set module options. Lists take a,b,c or JSON; objects take JSON, or "
        "KEY.SUB=VALUE for one entry (e.g. alias: aliases.fast=groq/llama-3.3-70b). "
        "--config replaces every option with the JSON object given.",
    )
    v.add_argument("name", metavar="NAME")
    v.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    v.add_argument("--config", metavar="JSON", help="the module's whole configuration, as a JSON object")
    runs(v, run_set)

    v = verbs.add_parser(
        "reset",
        help="put options (all, when none are named) back to their defaults",
        description="Put the named options (all, when none are named) back to their defaults.",
    )
    v.add_argument("name", metavar="NAME")
    v.add_argument("keys", nargs="*", metavar="KEY")
    runs(v, run_reset)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_list(args: argparse.Namespace) -> int:
    rows = module_ops.list_modules(open_store(args).read())
    if args.json:
        print_json_lines(rows)
        return 0
    for r in rows:
        r["set_options"] = ", ".join(r["set"]) or None
    print_table(
        rows,
        [("position", "#"), ("name", "NAME"), ("enabled", "ON"), ("set_options", "SET"), ("summary", "WHAT IT DOES")],
    )
    return 0


def run_show(args: argparse.Namespace) -> int:
    view = module_ops.show(open_store(args).read(), args.name)
    if args.json:
        print(json.dumps(view, ensure_ascii=False, indent=2))
        return 0
    print_view(view)
    return 0


def print_view(view: dict[str, Any]) -> None:
    state = "on" if view["enabled"] else "off"
    print(f"{view['name']}: {state} (position {view['position']} in the chain)")
    print(f"  {view['summary']}")
    for key, value in view["config"].items():
        schema = view["options"].get(key)
        note = "" if key in view["set"] else "  (default)"
        print(f"  {key} = {json.dumps(value, ensure_ascii=False)}{note}")
        if schema:
            print(f"      {schema['type']}: {schema['help']}")


def run_switch(args: argparse.Namespace) -> int:
    view = module_ops.set_enabled(open_ops(args), args.name, args.on)
    print(f"module {view['name']} is {'on' if view['enabled'] else 'off'}")
    return 0


def run_set(args: argparse.Namespace) -> int:
    cls = registry.find(args.name)
    if args.config is not None and args.assignments:
        raise CommandError("give KEY=VALUE pairs or --config, not both")
    if args.config is not None:
        try:
            config = json.loads(args.config)
        except ValueError as exc:
            raise CommandError(f"--config is not valid JSON: {exc}") from None
        view = module_ops.configure(open_ops(args), args.name, config, replace=True)
    else:
        if not args.assignments:
            raise CommandError("nothing to set: give KEY=VALUE pairs or --config JSON")
        ops = open_ops(args)
        current = module_ops.show(ops.store.read(), args.name)["config"]
        changes: dict[str, Any] = {}
        for assignment in args.assignments:
            key, value = registry.parse_assignment(cls, assignment)
            if "." in assignment.partition("=")[0]:  # one entry of an object option
                value = {**changes.get(key, current.get(key) or {}), **value}
            changes[key] = value
        view = module_ops.configure(ops, args.name, changes)
    print_view(view)
    return 0


def run_reset(args: argparse.Namespace) -> int:
    if args.keys:
        view = module_ops.configure(open_ops(args), args.name, {key: None for key in args.keys})
    else:
        view = module_ops.configure(open_ops(args), args.name, {}, replace=True)
    print_view(view)
    return 0

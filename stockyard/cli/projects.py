"""``stockyard projects``: projects (named by client keys) and their budgets."""

from __future__ import annotations

import argparse

from ..operations import keys as key_ops
from .common import CommandError, actions, open_ops, open_store, print_json, print_json_lines, print_table, runs


def register(sub) -> None:
    projects = actions(
        sub,
        "projects",
        help="projects and their budgets",
        description="A project groups client keys (keys create --project P). A project budget "
        "limits the spend of all its keys together, on top of each key's own budget.",
    )

    ls = projects.add_parser(
        "list",
        help="projects with their budgets and spend",
        description="Projects named by a key or a budget, with live keys, budget and "
        "spend in the budget's current period (month to date without one).",
    )
    runs(ls, list_, json=True)

    b = projects.add_parser(
        "budget",
        help="show, set or clear a project's budget",
        description="Without options, show the budget. --budget-usd with --period sets it; --clear removes it.",
    )
    b.add_argument("project", metavar="PROJECT")
    b.add_argument("--budget-usd", metavar="USD", help="spend limit in US dollars, e.g. 100")
    b.add_argument("--period", metavar="day|month|total", help="what the budget covers (UTC)")
    b.add_argument("--clear", action="store_true", help="remove the project's budget")
    runs(b, budget, json=True)


def list_(args: argparse.Namespace) -> int:
    rows = key_ops.list_projects(open_store(args).read())
    if args.json:
        print_json_lines(rows)
        return 0
    for r in rows:
        r["budget_text"] = f"{r['budget']}/{r['budget_period']}" if r["budget"] else None
        r["spend_text"] = f"{r['spend']} ({r['spend_period']})"
    print_table(
        rows,
        [("project", "PROJECT"), ("live_keys", "LIVE KEYS"), ("budget_text", "BUDGET"), ("spend_text", "SPEND")],
        empty="no projects yet",
    )
    return 0


def budget(args: argparse.Namespace) -> int:
    if args.clear:
        if args.budget_usd is not None or args.period is not None:
            raise CommandError("--clear takes no --budget-usd or --period")
        result = key_ops.clear_project_budget(open_ops(args), args.project)
    elif args.budget_usd is not None or args.period is not None:
        result = key_ops.set_project_budget(open_ops(args), args.project, args.budget_usd, args.period)
    else:
        result = key_ops.get_project(open_store(args).read(), key_ops.check_name(args.project, "project"))
    if args.json:
        print_json(result)
    elif result["budget"]:
        print(
            f"project {result['project']}: budget {result['budget']}/{result['budget_period']}, "
            f"spent {result['spend']} ({result['spend_period']})"
        )
    else:
        print(f"project {result['project']}: no budget, spent {result['spend']} ({result['spend_period']})")
    return 0

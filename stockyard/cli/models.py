"""``stockyard models``: models clients name and the deployments that serve them.

A deployment's own key is read from stdin (``--key-stdin``), stored encrypted, and never
printed back: listings show its last four characters.
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import vault
from ..deployments import STRATEGIES
from ..operations import models as model_ops
from .common import actions, open_ops, open_store, print_json_lines, print_table, runs
from .providers import read_secret

DEPLOYMENT_KEY = "a deployment's key"  # what --key-stdin stores encrypted (refusals name it)


def register(sub) -> None:
    acts = actions(
        sub,
        "models",
        help="models served by several deployments (keys, weights, priorities, limits, strategy)",
        description="A model clients name can be served by deployments: provider + upstream model + "
        "optional own key + weight + priority + rpm/tpm limits. Its strategy picks among the lowest "
        f"priority that is usable ({', '.join(STRATEGIES)}). A name without deployments routes as before.",
    )
    ls = acts.add_parser("list", help="models and their deployments", description="List models and deployments.")
    runs(ls, run_list, json=True)

    add = acts.add_parser("add", help="add a model", description="Add a model (then give it deployments).")
    add.add_argument("name", help="the model name clients send, e.g. gpt-4o or chat-prod")
    _model_options(add)
    runs(add, run_add)

    set_ = acts.add_parser("set", help="change a model's strategy or fallbacks", description="Change a model.")
    set_.add_argument("name")
    _model_options(set_)
    runs(set_, run_set)

    rm = acts.add_parser("remove", help="remove a model and its deployments", description="Remove a model.")
    rm.add_argument("name")
    runs(rm, run_remove)

    deploy = acts.add_parser(
        "deploy",
        help="add a deployment to a model (creates the model when missing)",
        description="Add a deployment: where the model is served. Several keys of one provider are "
        "several deployments, each with --key-stdin.",
    )
    deploy.add_argument("model", help="the model clients name")
    deploy.add_argument("--provider", required=True, help="a provider name (from the environment or the database)")
    deploy.add_argument("--upstream-model", required=True, metavar="NAME", help="the model name sent to the provider")
    deploy.add_argument("--name", help="the deployment's name (default: the provider's, numbered when taken)")
    _deployment_options(deploy)
    runs(deploy, run_deploy)

    change = acts.add_parser("change-deployment", help="change a deployment", description="Change a deployment.")
    change.add_argument("model")
    change.add_argument("name")
    change.add_argument("--provider")
    change.add_argument("--upstream-model", metavar="NAME")
    change.add_argument("--remove-key", action="store_true", help="use the provider's key again")
    _deployment_options(change)
    runs(change, run_change)

    undeploy = acts.add_parser("undeploy", help="remove a deployment", description="Remove a deployment.")
    undeploy.add_argument("model")
    undeploy.add_argument("name")
    runs(undeploy, run_undeploy)


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", choices=STRATEGIES, help="how a deployment is picked (default weighted)")
    p.add_argument("--fallbacks", metavar="LIST", help="comma-separated models tried after every deployment")
    p.add_argument("--context-fallback", metavar="MODEL", help="the larger-context model for 'context too long'")


def _deployment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weight", type=int, help="share for the weighted strategy (default 1)")
    p.add_argument("--priority", type=int, help="lower first; higher only when all lower are unusable (default 0)")
    p.add_argument("--rpm", type=int, help="requests per minute this deployment takes (0: no limit)")
    p.add_argument("--tpm", type=int, help="tokens per minute this deployment takes (0: no limit)")
    p.add_argument("--key-stdin", action="store_true", help="read the deployment's own API key from stdin")


def _model_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.strategy is not None:
        fields["strategy"] = args.strategy
    if args.fallbacks is not None:
        fields["fallbacks"] = [f.strip() for f in args.fallbacks.split(",") if f.strip()]
    if args.context_fallback is not None:
        fields["context_fallback"] = args.context_fallback
    return fields


def _deployment_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in ("provider", "name", "weight", "priority"):
        if getattr(args, name, None) is not None:
            fields[name] = getattr(args, name)
    if args.upstream_model is not None:
        fields["model"] = args.upstream_model
    for limit in ("rpm", "tpm"):
        value = getattr(args, limit)
        if value is not None:
            fields[limit] = value or None
    if args.key_stdin:
        fields["api_key"] = read_secret("deployment key: ")
    elif getattr(args, "remove_key", False):
        fields["api_key"] = None
    return fields


def run_list(args: argparse.Namespace) -> int:
    models = model_ops.rows(open_store(args).read())
    if args.json:
        print_json_lines(models)
        return 0
    table = _table(models)
    print_table(
        table,
        [
            ("model", "MODEL"),
            ("strategy", "STRATEGY"),
            ("name", "DEPLOYMENT"),
            ("provider", "PROVIDER"),
            ("upstream", "UPSTREAM MODEL"),
            ("weight", "WEIGHT"),
            ("priority", "PRIORITY"),
            ("limits", "LIMITS"),
            ("key", "KEY"),
        ],
        empty="no models: add one with `stockyard models deploy MODEL --provider P --upstream-model M`",
    )
    return 0


def _table(models: list[dict]) -> list[dict]:
    out = []
    for m in models:
        for d in m["deployments"] or [{}]:
            out.append(
                {
                    "model": m["name"],
                    "strategy": m["strategy"],
                    "name": d.get("name", "-"),
                    "provider": d.get("provider", "-"),
                    "upstream": d.get("model", "-"),
                    "weight": d.get("weight", "-"),
                    "priority": d.get("priority", "-"),
                    "limits": f"{d.get('rpm') or '-'} rpm / {d.get('tpm') or '-'} tpm" if d else "-",
                    "key": d.get("key") or ("(provider's)" if d else "-"),
                }
            )
    return out


def run_add(args: argparse.Namespace) -> int:
    model_ops.add_model(open_ops(args), args.name, **{"strategy": "weighted", **_model_fields(args)})
    print(f"added model {args.name!r}")
    return 0


def run_set(args: argparse.Namespace) -> int:
    model_ops.update_model(open_ops(args), args.name, **_model_fields(args))
    print(f"changed model {args.name!r}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    model_ops.remove_model(open_ops(args), args.name)
    print(f"removed model {args.name!r} and its deployments")
    return 0


def run_deploy(args: argparse.Namespace) -> int:
    ops = open_ops(args, encrypts=DEPLOYMENT_KEY if args.key_stdin else None)
    fields = _deployment_fields(args)
    name = model_ops.add_deployment(ops, args.model, fields)
    key = fields.get("api_key")
    hint = f", own key {vault.last4(key)} stored encrypted" if key else ""
    print(f"added deployment {name!r} to model {args.model!r}{hint}")
    return 0


def run_change(args: argparse.Namespace) -> int:
    ops = open_ops(args, encrypts=DEPLOYMENT_KEY if args.key_stdin else None)  # before the key is read
    fields = _deployment_fields(args)
    fields.pop("name")  # the positional: which deployment, not a new name
    model_ops.update_deployment(ops, args.model, args.name, fields)
    print(f"changed deployment {args.name!r} of model {args.model!r}")
    return 0


def run_undeploy(args: argparse.Namespace) -> int:
    model_ops.remove_deployment(open_ops(args), args.model, args.name)
    print(f"removed deployment {args.name!r} from model {args.model!r}")
    return 0

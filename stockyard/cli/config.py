"""``stockyard config``: configuration as code — export, plan, apply (see :mod:`stockyard.configfile`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import audit, configfile, vault
from ..operations import Operations, Refused
from ..operations import models as model_ops
from ..operations import providers as provider_ops
from .common import CommandError, actions, open_ops, open_store, require_secret, runs


def register(sub) -> None:
    config = actions(
        sub,
        "config",
        help="configuration as code: export, plan, apply a TOML file",
        description="Providers, modules, prices and project budgets as one TOML file to keep in git. "
        "The file never holds a key: api_key_env names the environment variable a provider's key "
        "comes from. A running server picks an applied file up within a second.",
    )
    e = config.add_parser(
        "export",
        help="write the configuration as TOML",
        description="Write the database's "
        "configuration as a TOML file (stdout, or --out FILE). No secrets are written.",
    )
    e.add_argument("--out", metavar="FILE", help="write to FILE (created 0600) instead of stdout")
    runs(e, export)
    p = config.add_parser(
        "plan",
        help="show what applying FILE would change",
        description="Compare FILE with "
        "the database and print the changes applying it would make; exit 0 when there are "
        "none, 2 when there are some.",
    )
    p.add_argument("file", metavar="FILE")
    runs(p, plan)
    a = config.add_parser(
        "apply",
        help="make the database match FILE",
        description="Apply FILE: every change "
        "in one transaction (all or nothing), each audited. What the file's sections do not "
        "name is removed (providers, prices, project budgets) or reset (modules).",
    )
    a.add_argument("file", metavar="FILE")
    runs(a, apply)


def export(args: argparse.Namespace) -> int:
    conn = open_store(args).read()
    text = configfile.export(configfile.current(conn), configfile.key_env(conn))
    if args.out:
        path = Path(args.out)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _desired(file: str) -> configfile.Desired:
    """FILE read, the variables its ``api_key_env`` names set, and the secret their keys are
    stored with: checked before any database is opened, so a refused file leaves none behind."""
    try:
        desired = configfile.read(file)
    except configfile.ConfigFileError as exc:
        raise CommandError(str(exc)) from None
    missing = configfile.missing_variables(desired, os.environ)
    if missing:
        raise CommandError(f"{file}: api_key_env names variables that are not set: {', '.join(missing)}")
    if desired.key_env:
        require_secret(f"a provider key {file} names by api_key_env")
    return desired


def _prepare(ops: Operations, desired: configfile.Desired) -> list[configfile.Change]:
    """The changes that make the database match ``desired`` (its stored keys read to compare)."""
    conn = ops.store.read()
    try:
        keys = {p.name: p.api_key for p in provider_ops.stored(conn, ops.secret)} if desired.key_env else {}
        if desired.key_env:  # deployments' own keys, as "model/deployment"
            keys.update({f"{m}/{d}": k for (m, d), k in model_ops.stored_keys(conn, ops.secret).items()})
    except vault.VaultError as exc:
        raise CommandError(str(exc)) from None
    return configfile.plan(configfile.current(conn), desired, os.environ, keys)


def plan(args: argparse.Namespace) -> int:
    desired = _desired(args.file)
    changes = _prepare(open_ops(args), desired)
    for change in changes:
        print(change.line())
    print(f"{len(changes)} change{'s' if len(changes) != 1 else ''}" if changes else "no changes")
    return 2 if changes else 0


def apply(args: argparse.Namespace) -> int:
    desired = _desired(args.file)
    apply_file(open_ops(args), args.file, desired)
    return 0


def apply_file(ops: Operations, file: str, desired: configfile.Desired | None = None) -> list[configfile.Change]:
    """Apply a file (``config apply`` and ``serve --config``), ``desired`` when it was read
    already; prints what changed."""
    if desired is None:
        desired = _desired(file)
    changes = _prepare(ops, desired)
    if not changes:
        print(f"{file}: no changes")
        return changes
    try:
        configfile.apply(ops, desired, changes, os.environ, str(file))
    except Refused as exc:
        raise CommandError(f"{file}: {exc.message} (nothing was changed)") from None
    except (vault.VaultError, audit.AuditError) as exc:
        raise CommandError(f"{file}: {exc} (nothing was changed)") from None
    for change in changes:
        print(change.line())
    print(f"{file}: applied {len(changes)} change{'s' if len(changes) != 1 else ''}")
    return changes

"""``stockyard reload``: tell running servers to rebuild their configuration now."""

from __future__ import annotations

import argparse

from ..operations import maintenance
from .common import open_ops, runs


def register(sub) -> None:
    p = sub.add_parser(
        "reload",
        help="make running servers reload their configuration",
        description="Bump the configuration version (an audited change). Every server using "
        "this database rebuilds its providers, keys and modules within a second. "
        "Changes made with stockyard commands do this by themselves; use it after "
        "restoring or editing the database with other tools.",
    )
    runs(p, run)


def run(args: argparse.Namespace) -> int:
    version = maintenance.reload_config(open_ops(args, create=False))
    print(f"configuration version {version}: running servers reload within a second")
    return 0

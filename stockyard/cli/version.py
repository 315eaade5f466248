"""``stockyard version``: the version, the build's content hash, the crypto library."""

from __future__ import annotations

import argparse

from ..buildinfo import build_info, crypto_version


def register(sub) -> None:
    p = sub.add_parser(
        "version",
        help="print the version and build hash",
        description="Print Stockyard's version, the build's content hash and the cryptography version.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = build_info()
    print(f"stockyard {info['version']} (build {info['hash']}, cryptography {crypto_version() or 'not available'})")
    return 0

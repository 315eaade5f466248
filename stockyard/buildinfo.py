"""What this build is: stockyard version, build hash, bundled cryptography version.

build_zipapp.py writes stockyard/_build.json into the pyz; a dev checkout has none and
reports the hash "dev".
"""

from __future__ import annotations

import json
import pkgutil

import stockyard


def build_info() -> dict[str, str]:
    """{"version": ..., "hash": ...} from the pyz's _build.json, or the package version and "dev"."""
    try:
        data = pkgutil.get_data("stockyard", "_build.json")
    except OSError:
        data = None
    if data:
        info = json.loads(data)
        return {"version": str(info["version"]), "hash": str(info["hash"])}
    return {"version": stockyard.__version__, "hash": "dev"}


def crypto_version() -> str | None:
    """The importable cryptography's version, or None when it is missing or its native part cannot load."""
    try:
        import cryptography
        from cryptography.hazmat.bindings import _rust  # noqa: F401  (proves the .so and _cffi_backend load)
    except (ImportError, OSError):
        return None
    return cryptography.__version__

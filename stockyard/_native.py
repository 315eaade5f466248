"""Make the `cryptography` bundled in stockyard.pyz importable.

Python cannot load extension modules (`.so`) from inside a zip. build_zipapp.py puts
cryptography and cffi's `_cffi_backend` (one per CPython version) under `_native/` in
the pyz, with `_native/MANIFEST.json` naming each file's sha256 and an overall hash.
`bootstrap()` unpacks them once into `${XDG_CACHE_HOME:-~/.cache}/stockyard/native-<hash>`
and puts that folder first on sys.path, so an installed cryptography cannot shadow the
bundled one. Later starts only read the manifest and check that the folder exists.

Unpacking goes to a temp folder that is then renamed into place, so a reader never sees a
half-written folder and several processes starting at once are safe: one rename wins, the
others delete their copy and use the winner's.

Outside a zip (a dev checkout) bootstrap() does nothing.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import sys

# hashlib, shutil, tempfile and zipfile are imported only when unpacking: a warm start
# reads one small file and checks one path.

NATIVE = "_native/"
MANIFEST = "MANIFEST.json"

_active: str | None = None


class NativeError(Exception):
    """The bundled native modules could not be made importable."""


def bootstrap() -> None:
    """Unpack the bundled native modules if needed and put them on sys.path; exit with one line on failure."""
    global _active
    archive = _archive()
    if archive is None or _active is not None:
        return
    try:
        manifest = _read_manifest(archive)
        if manifest is None or _backend_name(manifest) is None:
            return  # no bundle, or none for this Python: use whatever is installed
        folder = _ensure_unpacked(archive, manifest)
    except (OSError, ValueError, KeyError, NativeError) as exc:
        hint = " (set XDG_CACHE_HOME to a writable folder)" if isinstance(exc, OSError) else ""
        sys.stderr.write(f"stockyard: error: cannot unpack bundled cryptography from {archive}: {exc}{hint}\n")
        raise SystemExit(1) from None
    sys.path.insert(0, folder)
    _active = folder


def native_folder() -> str | None:
    """The folder bootstrap() put on sys.path, or None (dev checkout, or no bundle for this Python)."""
    return _active


def _archive() -> str | None:
    """Path of the zip this module was imported from, or None when imported from plain files."""
    return getattr(globals().get("__loader__"), "archive", None)


def _read_manifest(archive: str) -> dict | None:
    """The build's _native/MANIFEST.json, read straight from the zip, or None if the zip has none."""
    try:
        data = globals()["__loader__"].get_data(os.path.join(archive, NATIVE + MANIFEST))
    except OSError:
        return None
    return json.loads(data)


def _backend_name(manifest: dict) -> str | None:
    """The bundled `_cffi_backend` file this interpreter can load, if any."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        name = "_cffi_backend" + suffix
        if name in manifest["files"]:
            return name
    return None


def cache_root() -> str:
    """`${XDG_CACHE_HOME:-~/.cache}/stockyard`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "stockyard")


def _ensure_unpacked(archive: str, manifest: dict) -> str:
    """Return the cache folder for this manifest's hash, unpacking into it first if it does not exist yet."""
    root = cache_root()
    final = os.path.join(root, "native-" + manifest["hash"])
    if _complete(final):
        return final
    import shutil
    import tempfile

    os.makedirs(root, mode=0o700, exist_ok=True)
    _sweep_stale(root)
    if os.path.isdir(final) and not _complete(final):
        _discard(final, root)  # damaged by hand: the atomic rename never leaves an incomplete one
    temp = tempfile.mkdtemp(prefix=".native-tmp-", dir=root)
    try:
        _unpack(archive, manifest, temp)
        os.rename(temp, final)
    except OSError:
        shutil.rmtree(temp, ignore_errors=True)
        if _complete(final):
            return final  # another process won the race
        raise
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return final


def _complete(folder: str) -> bool:
    """A folder is complete when its manifest, written last, is there."""
    return os.path.isfile(os.path.join(folder, MANIFEST))


def _sweep_stale(root: str) -> None:
    """Delete temp folders left by processes killed mid-unpack (older than an hour, so never a live one)."""
    import shutil
    import time

    for entry in os.scandir(root):
        if entry.name.startswith((".native-tmp-", ".native-trash-")) and time.time() - entry.stat().st_mtime > 3600:
            shutil.rmtree(entry.path, ignore_errors=True)


def _discard(folder: str, root: str) -> None:
    """Move a broken folder out of the way (rename first, so no one reads it half-deleted) and delete it."""
    import shutil
    import tempfile

    trash = tempfile.mkdtemp(prefix=".native-trash-", dir=root)
    try:
        os.rename(folder, os.path.join(trash, "old"))
    except OSError:
        pass  # someone else moved it already
    shutil.rmtree(trash, ignore_errors=True)


def _unpack(archive: str, manifest: dict, folder: str) -> None:
    """Copy every file named in the manifest out of the zip, checking each sha256; the manifest goes last."""
    import hashlib
    import zipfile

    with zipfile.ZipFile(archive) as pyz:
        for name, digest in sorted(manifest["files"].items()):
            parts = name.split("/")
            if name.startswith("/") or ".." in parts:
                raise NativeError(f"unsafe file name in manifest: {name!r}")
            data = pyz.read(NATIVE + name)
            if hashlib.sha256(data).hexdigest() != digest:
                raise NativeError(f"{name} does not match its manifest hash; the pyz is damaged")
            target = os.path.join(folder, *parts)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as out:
                out.write(data)
        with open(os.path.join(folder, MANIFEST), "wb") as out:
            out.write(pyz.read(NATIVE + MANIFEST))

#!/usr/bin/env python3
"""Build dist/stockyard.pyz: the stockyard package plus a bundled `cryptography` and `pg8000`.

Native extension modules cannot be imported from inside a zip, so the build puts
`cryptography` (abi3, one wheel) and cffi's `_cffi_backend` (one file per CPython
version) under `_native/` in the zip, with a manifest of their hashes. At start,
`stockyard._native.bootstrap()` unpacks them once into a cache folder named after
that hash.

The PostgreSQL driver `pg8000` and its dependencies are pure Python: their packages go
at the top of the zip, where zipimport finds them with no unpacking (`PURE_WHEELS`).

Usage: python3 build_zipapp.py [--out dist/stockyard.pyz]

Wheels are downloaded once into build/wheels/ and reused, so a rebuild is offline.
The same inputs give the same bytes: members are sorted and carry a fixed date.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import json
import marshal
import os
import platform
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# The one place where bundled versions are pinned.
CRYPTOGRAPHY_VERSION = "50.0.2"
CFFI_VERSION = "2.1.1"
CFFI_PYTHONS = ("3.11", "3.12", "3.13")  # a wheel for each is required
CFFI_OPTIONAL_PYTHONS = ("3.14",)  # bundled when a wheel exists
# pg8000 and the pure-Python packages it imports (pg8000 needs scramp ==1.5.0 and python-dateutil;
# scramp needs asn1crypto; python-dateutil 2.9 needs six; 2.9 rather than 4.x, which adds tzdata).
PURE_WHEELS = {
    "pg8000": "1.31.6",
    "scramp": "1.5.0",
    "asn1crypto": "1.5.1",
    "python-dateutil": "2.9.0.post0",
    "six": "1.17.0",
}

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "stockyard"
WHEELS = ROOT / "build" / "wheels"
NATIVE = "_native/"
BUILD_JSON = "stockyard/_build.json"
SHEBANG = b"#!/usr/bin/env python3\n"
FIXED_DATE = (1980, 1, 1, 0, 0, 0)

MAIN_PY = """\
import stockyard.pyzimport
stockyard.pyzimport.install()
import stockyard._native as n
n.bootstrap()
from stockyard.__main__ import main
raise SystemExit(main())
"""


class BuildError(Exception):
    """A build step failed; the message says which and why."""


def platform_tags() -> list[str]:
    """Manylinux tags for this machine's arch, oldest glibc first so pip prefers the most portable wheel."""
    arch = platform.machine()
    return [f"manylinux_2_17_{arch}", f"manylinux2014_{arch}", f"manylinux_2_28_{arch}", f"manylinux_2_34_{arch}"]


def fetch_wheel(project: str, version: str, python: str, abi: str) -> Path | None:
    """Return the cached wheel for (project, python, abi), downloading it with pip when missing."""
    py = "cp" + python.replace(".", "")
    pattern = f"{project}-{version}-{py if abi != 'abi3' else 'cp*'}-{abi}-*_{platform.machine()}.whl"
    cached = sorted(WHEELS.glob(pattern))
    if cached:
        return cached[0]
    WHEELS.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--no-deps",
        "--dest",
        str(WHEELS),
        "--python-version",
        python,
        "--implementation",
        "cp",
        "--abi",
        abi,
    ]
    for tag in platform_tags():
        command += ["--platform", tag]
    command.append(f"{project}=={version}")
    print(f"downloading {project}=={version} for CPython {python} ...", flush=True)
    if subprocess.run(command).returncode != 0:
        return None
    cached = sorted(WHEELS.glob(pattern))
    return cached[0] if cached else None


def fetch_pure_wheel(project: str, version: str) -> Path:
    """The cached ``py*-none-any`` wheel of a pure-Python project, downloaded with pip when missing."""
    pattern = f"{project.replace('-', '_')}-{version}-py*-none-any.whl"
    cached = sorted(WHEELS.glob(pattern))
    if not cached:
        WHEELS.mkdir(parents=True, exist_ok=True)
        print(f"downloading {project}=={version} ...", flush=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
        command += ["--only-binary=:all:", "--no-deps", "--dest", str(WHEELS), f"{project}=={version}"]
        subprocess.run(command)
        cached = sorted(WHEELS.glob(pattern))
    if not cached:
        raise BuildError(f"no {project}=={version} wheel in {WHEELS} and pip could not download it")
    return cached[0]


def pure_members(project: str, wheel: Path) -> dict[str, bytes]:
    """A pure wheel's modules at the top of the zip (importable as they are), its license under licenses/."""
    members: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as whl:
        for name in whl.namelist():
            top, _, rest = name.partition("/")
            if name.endswith("/") or "__pycache__" in name:
                continue
            if top.endswith(".dist-info"):
                if rest.startswith("licenses/") or rest.startswith("LICENSE"):
                    members[f"licenses/{project}/{name.rsplit('/', 1)[1]}"] = whl.read(name)
            elif name.endswith(".py") or rest:  # a package's files, or a single module (six.py)
                members[name] = whl.read(name)
    if not any(name.endswith(".py") for name in members):
        raise BuildError(f"{wheel.name} holds no Python code")
    return members


def driver_members() -> dict[str, bytes]:
    """pg8000 and its dependencies, from the versions pinned in PURE_WHEELS."""
    members: dict[str, bytes] = {}
    for project, version in PURE_WHEELS.items():
        members.update(pure_members(project, fetch_pure_wheel(project, version)))
    return members


def require_wheel(project: str, version: str, python: str, abi: str) -> Path:
    """Like fetch_wheel, but a missing wheel stops the build."""
    wheel = fetch_wheel(project, version, python, abi)
    if wheel is None:
        raise BuildError(
            f"no {project}=={version} wheel for CPython {python} ({abi}) in {WHEELS} and pip could not download it"
        )
    return wheel


def cryptography_members(wheel: Path) -> dict[str, bytes]:
    """The whole cryptography/ package and its license files, under _native/."""
    members: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as whl:
        for name in whl.namelist():
            if name.endswith("/"):
                continue
            if name.startswith("cryptography/"):
                members[NATIVE + name] = whl.read(name)
            elif ".dist-info/licenses/" in name:
                members[NATIVE + "licenses/cryptography/" + name.rsplit("/", 1)[1]] = whl.read(name)
    if NATIVE + "cryptography/__init__.py" not in members:
        raise BuildError(f"{wheel.name} holds no cryptography package")
    return members


def cffi_backend_members(wheel: Path) -> dict[str, bytes]:
    """Only `_cffi_backend.*.so` and the license: cryptography's rust binding imports it;
    cffi's Python part is not needed."""
    members: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as whl:
        for name in whl.namelist():
            if name.startswith("_cffi_backend.") and name.endswith(".so"):
                members[NATIVE + name] = whl.read(name)
            elif ".dist-info/licenses/" in name and not name.endswith("/"):
                members[NATIVE + "licenses/cffi/" + name.rsplit("/", 1)[1]] = whl.read(name)
    if not any(name.startswith(NATIVE + "_cffi_backend.") for name in members):
        raise BuildError(f"{wheel.name} holds no _cffi_backend extension")
    return members


def native_members() -> dict[str, bytes]:
    """Everything under _native/, plus _native/MANIFEST.json naming each file's sha256 and an overall hash."""
    members = cryptography_members(require_wheel("cryptography", CRYPTOGRAPHY_VERSION, CFFI_PYTHONS[0], "abi3"))
    for python in CFFI_PYTHONS:
        members.update(
            cffi_backend_members(require_wheel("cffi", CFFI_VERSION, python, "cp" + python.replace(".", "")))
        )
    for python in CFFI_OPTIONAL_PYTHONS:
        wheel = fetch_wheel("cffi", CFFI_VERSION, python, "cp" + python.replace(".", ""))
        if wheel is None:
            print(
                f"note: no cffi {CFFI_VERSION} wheel for CPython {python}; "
                "that Python will use an installed cryptography"
            )
        else:
            members.update(cffi_backend_members(wheel))
    files = {name[len(NATIVE) :]: hashlib.sha256(data).hexdigest() for name, data in sorted(members.items())}
    manifest = {
        "hash": content_hash({name: bytes.fromhex(digest) for name, digest in files.items()}),
        "cryptography": CRYPTOGRAPHY_VERSION,
        "cffi": CFFI_VERSION,
        "files": files,
    }
    members[NATIVE + "MANIFEST.json"] = json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"
    return members


def package_members(root: Path = ROOT) -> dict[str, bytes]:
    """Every file of root/stockyard/ (code and data) except bytecode caches."""
    members: dict[str, bytes] = {}
    for path in sorted((root / "stockyard").rglob("*")):
        relative = path.relative_to(root).as_posix()
        if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc" or relative == BUILD_JSON:
            continue
        members[relative] = path.read_bytes()
    if "stockyard/__main__.py" not in members:
        raise BuildError("stockyard/__main__.py is missing")
    return members


def bytecode_members(members: dict[str, bytes]) -> dict[str, bytes]:
    """`x.pyc` beside each `x.py` at the top of the zip, compiled for the Python that builds.

    zipimport never writes bytecode, so without these every start compiles every module again
    (most of the start time). Hash-based and unchecked: the pair is built together and never
    drifts, so nothing is re-read at import. Another Python finds a foreign magic number in them
    and compiles the source, as before.
    """
    out: dict[str, bytes] = {}
    for name, source in members.items():
        if name.endswith(".py") and not name.startswith(NATIVE) and name != "__main__.py":
            code = compile(source, name, "exec", dont_inherit=True)
            out[name + "c"] = importlib.util.MAGIC_NUMBER + struct.pack("<I", 0b01)
            out[name + "c"] += importlib.util.source_hash(source) + marshal.dumps(code)
    return out


def read_version() -> str:
    """`__version__` from stockyard/__init__.py, read without importing the package."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise BuildError("stockyard/__init__.py defines no __version__")


def content_hash(members: dict[str, bytes]) -> str:
    """First 16 hex chars of a sha256 over sorted member names and contents (length-prefixed, so unambiguous)."""
    digest = hashlib.sha256()
    for name in sorted(members):
        data = members[name]
        digest.update(f"{len(name)}:{name}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def write_zip(out: Path, members: dict[str, bytes]) -> None:
    """Write members in sorted order with a fixed date, atomically (temp file, then rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            raw.write(SHEBANG)
            with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as pyz:
                for name in sorted(members):
                    info = zipfile.ZipInfo(name, date_time=FIXED_DATE)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    pyz.writestr(info, members[name])
        os.chmod(temp, 0o755)
        os.replace(temp, out)
    except BaseException:
        os.unlink(temp)
        raise


def build(out: Path) -> Path:
    """Collect all members, stamp stockyard/_build.json, write the zip."""
    members = {"__main__.py": MAIN_PY.encode()}
    members.update(package_members())
    members.update(native_members())
    members.update(driver_members())
    members.update(bytecode_members(members))
    build_json = {"version": read_version(), "hash": content_hash(members)}
    members[BUILD_JSON] = json.dumps(build_json, sort_keys=True).encode() + b"\n"
    write_zip(out, members)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the stockyard zipapp.")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "dist" / "stockyard.pyz", help="output file (default: dist/stockyard.pyz)"
    )
    args = parser.parse_args(argv)
    try:
        out = build(args.out)
    except BuildError as exc:
        print(f"build_zipapp: error: {exc}", file=sys.stderr)
        return 1
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

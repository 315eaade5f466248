"""stockyard.pyzimport: modules and package files served from one open zip.

The unit tests build a small zip of their own in a temp folder (a package with bytecode for
this Python, bytecode for another Python, data files stored and deflated, a nested folder) and
load from it with the real Finder; the last tests run the built pyz, whose `__main__` installs it.
"""

from __future__ import annotations

import http.client
import importlib.resources
import importlib.util
import marshal
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from test_pyz import PYTHONS, clean_env, find_python

from stockyard import pyzimport

PYC_FLAGS = struct.pack("<I", 0b01)  # hash-based, unchecked: what build_zipapp writes


def pyc(source: str, name: str, magic: bytes = importlib.util.MAGIC_NUMBER) -> bytes:
    code = compile(source, name, "exec", dont_inherit=True)
    return magic + PYC_FLAGS + importlib.util.source_hash(source.encode()) + marshal.dumps(code)


@pytest.fixture
def archive(tmp_path: Path) -> pyzimport.Archive:
    path = tmp_path / "small.pyz"
    with open(path, "wb") as out:
        out.write(b"#!/usr/bin/env python3\n")  # as the pyz starts: the zip behind a shebang
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("pzt/__init__.py", "KIND = 'package'\n")
            zf.writestr("pzt/good.py", "VALUE = 'source'\n")
            zf.writestr("pzt/good.pyc", pyc("VALUE = 'bytecode'\n", "pzt/good.py"))
            zf.writestr("pzt/foreign.py", "VALUE = 'source'\n\ndef fail():\n    raise ValueError('from foreign')\n")
            zf.writestr("pzt/foreign.pyc", pyc("VALUE = 'bytecode'\n", "pzt/foreign.py", magic=b"\x00\x00\r\n"))
            zf.writestr("pzt/data/a.txt", "deflated text\n")
            zf.writestr(zipfile.ZipInfo("pzt/data/b.bin"), bytes(range(256)) * 4, zipfile.ZIP_STORED)
            zf.writestr("pzt/data/sub/c.txt", "nested\n")
            zf.writestr("_native/pzt_native.py", "VALUE = 'unpacked elsewhere'\n")
            zf.writestr("big/a.bin", os.urandom(300_000), zipfile.ZIP_STORED)
            zf.writestr("big/b.bin", os.urandom(300_000), zipfile.ZIP_STORED)
    return pyzimport.Archive(str(path))


def load(finder: pyzimport.Finder, name: str) -> ModuleType:
    """A module from the finder, as the import system loads it (not put in sys.modules)."""
    spec = finder.find_spec(name)
    assert spec is not None and spec.loader is finder
    module = importlib.util.module_from_spec(spec)
    finder.exec_module(module)
    return module


def test_bytecode_for_this_python_runs_and_another_pythons_falls_back_to_the_source(archive) -> None:
    finder = pyzimport.Finder(archive)
    good, foreign = load(finder, "pzt.good"), load(finder, "pzt.foreign")
    assert good.VALUE == "bytecode"  # the .pyc beside it, not a compile of the source
    assert foreign.VALUE == "source"  # a foreign magic number: compiled from the source
    assert good.__file__ == f"{archive.path}/pzt/good.py"
    assert not finder.is_package("pzt.good") and finder.is_package("pzt")
    package = load(finder, "pzt")
    assert package.KIND == "package" and package.__path__ == [f"{archive.path}/pzt"]


def test_modules_not_in_the_archive_and_the_native_folder_are_left_to_python(archive) -> None:
    finder = pyzimport.Finder(archive)
    assert finder.find_spec("json") is None and finder.find_spec("pzt.missing") is None
    assert finder.find_spec("_native.pzt_native") is None


def test_tracebacks_show_the_source_line(archive) -> None:
    """linecache asks the loader for the source of a module inside the zip."""
    import linecache
    import traceback

    finder = pyzimport.Finder(archive)
    module = load(finder, "pzt.foreign")
    with pytest.raises(ValueError) as caught:
        module.fail()
    linecache.clearcache()
    assert "raise ValueError('from foreign')" in "".join(traceback.format_exception(caught.value))
    assert finder.get_source("pzt.good") == "VALUE = 'source'\n"


def test_package_files_through_importlib_resources(archive) -> None:
    finder = pyzimport.Finder(archive)
    package = load(finder, "pzt")
    root = importlib.resources.files(package)
    names = ["__init__.py", "data", "foreign.py", "foreign.pyc", "good.py", "good.pyc"]
    assert sorted(entry.name for entry in root.iterdir()) == names
    data = root.joinpath("data")
    assert data.is_dir() and not data.is_file()
    assert [entry.name for entry in data.iterdir()] == ["a.txt", "b.bin", "sub"]
    assert (data / "a.txt").read_text("utf-8") == "deflated text\n"
    assert data.joinpath("b.bin").read_bytes() == bytes(range(256)) * 4  # a stored member
    assert data.joinpath("sub", "c.txt").is_file() and data.joinpath("sub", "c.txt").read_bytes() == b"nested\n"
    with data.joinpath("a.txt").open("rb") as handle:
        assert handle.read() == b"deflated text\n"
    with pytest.raises(FileNotFoundError):
        data.joinpath("nothing.txt").read_bytes()


def test_get_data_reads_a_member_by_its_path_and_refuses_others(archive) -> None:
    finder = pyzimport.Finder(archive)
    assert finder.get_data(f"{archive.path}/pzt/data/a.txt") == b"deflated text\n"
    for path in (f"{archive.path}/pzt/data/none.txt", "/etc/passwd", f"{archive.path}x/pzt/data/a.txt"):
        with pytest.raises(FileNotFoundError):
            finder.get_data(path)


def test_a_damaged_member_header_is_an_error_not_wrong_bytes(archive, tmp_path: Path) -> None:
    raw = bytearray(Path(archive.path).read_bytes())
    with zipfile.ZipFile(archive.path) as zf:
        offset = zf.getinfo("pzt/data/a.txt").header_offset
    raw[offset : offset + 4] = b"XXXX"
    damaged = tmp_path / "damaged.pyz"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(OSError, match="damaged zip entry pzt/data/a.txt"):
        pyzimport.Archive(str(damaged)).read("pzt/data/a.txt")


def test_forked_processes_reading_at_once_never_see_each_others_bytes(archive) -> None:
    """`--workers` forks after the archive is open: a shared file position (seek, then read) would
    hand one process the bytes the other asked for. Reads by offset cannot."""
    want_a, want_b = archive.read("big/a.bin"), archive.read("big/b.bin")
    pid = os.fork()
    if pid == 0:  # the child reads one member while the parent reads the other
        code = 0 if all(archive.read("big/a.bin") == want_a for _ in range(300)) else 1
        os._exit(code)
    parent_ok = all(archive.read("big/b.bin") == want_b for _ in range(300))
    _, status = os.waitpid(pid, 0)
    assert parent_ok and os.waitstatus_to_exitcode(status) == 0


def test_the_pyz_imports_through_one_open_archive(pyz_path: Path, tmp_path: Path) -> None:
    """The pyz's entry point installs the finder before anything else of Stockyard loads."""
    check = (
        "import runpy, sys\n"
        f"sys.argv = [{str(pyz_path)!r}, 'version']\n"
        "try:\n"
        f"    runpy.run_path({str(pyz_path)!r}, run_name='__main__')\n"
        "except SystemExit as done:\n"
        "    code = done.code\n"
        "print(code, type(sys.modules['stockyard.cli'].__loader__).__name__, sys.modules['stockyard.cli'].__file__)\n"
    )
    env = clean_env(tmp_path)
    done = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-3:] == ["0", "Finder", f"{pyz_path}/stockyard/cli/__init__.py"]


@pytest.mark.parametrize("version", PYTHONS)
def test_the_pyz_serves_on_each_python(version: str, pyz_path: Path, tmp_path: Path) -> None:
    """On the build's Python the bytecode runs, on the others the source is compiled; on each the
    migrations and the console's files are read through the finder and the server answers."""
    python = find_python(version)
    if python is None:
        pytest.skip(f"CPython {version} is not installed on this machine")
    proc = subprocess.Popen(
        [python, str(pyz_path), "serve", "--port", "0", "--db", str(tmp_path / "s.db")],
        env=clean_env(tmp_path / "cache"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        port = 0
        for line in proc.stdout:
            if b"listening on http://127.0.0.1:" in line:
                port = int(line.split(b"127.0.0.1:")[1].split()[0].rstrip(b"/"))
                break
        assert port, "the server did not say where it listens"
        answers = {}
        for path in ("/readyz", "/ui/app.js"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", path)
            resp = conn.getresponse()
            answers[path] = (resp.status, resp.read())
            conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert answers["/readyz"][0] == 200
    app_js = Path(__file__).resolve().parents[1] / "stockyard" / "ui" / "app.js"
    assert answers["/ui/app.js"] == (200, app_js.read_bytes())

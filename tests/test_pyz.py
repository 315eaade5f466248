"""The zipapp: it builds reproducibly and runs, with its bundled cryptography, on Pythons that have none.

Every run points XDG_CACHE_HOME at a fresh temp folder, so nothing depends on the user's cache.
The session fixture `pyz_path` (the built dist/stockyard.pyz) comes from conftest.py.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHONS = ("3.11", "3.12", "3.13")

AES_GCM_CHECK = (
    "import sys; sys.path.insert(0, {pyz!r}); import stockyard._native as n; n.bootstrap(); "
    "from cryptography.hazmat.primitives.ciphers.aead import AESGCM; import os; "
    "k=AESGCM.generate_key(256); a=AESGCM(k); n=os.urandom(12); "
    "assert a.decrypt(n,a.encrypt(n,b'x',b'ad'),b'ad')==b'x'; print('ok')"
)
BUILD_INFO_CHECK = (
    "import sys, json; sys.path.insert(0, {pyz!r}); import stockyard._native as n; n.bootstrap(); "
    "from stockyard.buildinfo import build_info, crypto_version; import cryptography; "
    "print(json.dumps({{'info': build_info(), 'crypto': crypto_version(), 'file': cryptography.__file__}}))"
)


def _load_build_script():
    spec = importlib.util.spec_from_file_location("build_zipapp", ROOT / "build_zipapp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _load_build_script()


def build(out: Path) -> Path:
    subprocess.run([sys.executable, str(ROOT / "build_zipapp.py"), "--out", str(out)], check=True, capture_output=True)
    return out


def stockyard_version() -> str:
    return BUILD.read_version()


def clean_env(cache: Path) -> dict[str, str]:
    """The environment for a child Python: our cache folder, no inherited Python path settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["XDG_CACHE_HOME"] = str(cache)
    return env


def run(python: str, args: list[str], cache: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([python, *args], env=clean_env(cache), capture_output=True, text=True, timeout=120, **kwargs)


def find_python(version: str) -> str | None:
    """An interpreter that really is CPython `version` (pyenv shims for inactive versions exist but fail)."""
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [
        shutil.which(f"python{version}"),
        *sorted(glob.glob(f"{pyenv}/versions/{version}.*/bin/python{version}")),
    ]
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


@pytest.fixture(params=PYTHONS)
def bare_venv_python(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The python of a fresh venv without pip or cryptography, for each supported CPython."""
    base = find_python(request.param)
    if base is None:
        pytest.skip(f"CPython {request.param} is not installed on this machine")
    venv = tmp_path / f"venv{request.param}"
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    assert run(python, ["-c", "import cryptography"], tmp_path).returncode != 0, "venv should have no cryptography"
    return python


def test_pyz_runs_in_bare_venv(bare_venv_python: str, pyz_path: Path, tmp_path: Path) -> None:
    result = run(bare_venv_python, [str(pyz_path), "version"], tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_aes_gcm_works_from_pyz_in_bare_venv(bare_venv_python: str, pyz_path: Path, tmp_path: Path) -> None:
    result = run(bare_venv_python, ["-c", AES_GCM_CHECK.format(pyz=str(pyz_path))], tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_build_info_from_pyz(bare_venv_python: str, pyz_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = run(bare_venv_python, ["-c", BUILD_INFO_CHECK.format(pyz=str(pyz_path))], cache)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["info"]["version"] == stockyard_version()
    assert re.fullmatch(r"[0-9a-f]{16}", report["info"]["hash"])
    assert report["crypto"] == BUILD.CRYPTOGRAPHY_VERSION
    assert report["file"].startswith(str(cache / "stockyard" / "native-"))


CLI_WIRED = (ROOT / "stockyard" / "cli.py").exists() or (ROOT / "stockyard" / "cli" / "version.py").exists()


@pytest.mark.skipif(not CLI_WIRED, reason="the CLI's `version` command is not wired yet")
def test_version_command_prints_versions(bare_venv_python: str, pyz_path: Path, tmp_path: Path) -> None:
    result = run(bare_venv_python, [str(pyz_path), "version"], tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert f"stockyard {stockyard_version()}" in result.stdout
    assert f"cryptography {BUILD.CRYPTOGRAPHY_VERSION}" in result.stdout


def test_bundled_cryptography_wins_over_installed(pyz_path: Path, tmp_path: Path) -> None:
    """An interpreter with its own cryptography still imports the bundled one."""
    cache = tmp_path / "cache"
    result = run(sys.executable, ["-c", BUILD_INFO_CHECK.format(pyz=str(pyz_path))], cache)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["crypto"] == BUILD.CRYPTOGRAPHY_VERSION
    assert report["file"].startswith(str(cache / "stockyard" / "native-"))


def test_concurrent_cold_starts_share_one_folder(pyz_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    command = [sys.executable, "-c", AES_GCM_CHECK.format(pyz=str(pyz_path))]
    processes = [
        subprocess.Popen(command, env=clean_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert out.strip() == "ok"
    entries = sorted(os.listdir(cache / "stockyard"))
    assert len(entries) == 1 and entries[0].startswith("native-"), entries


def test_warm_start_reuses_folder(pyz_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    command = ["-c", AES_GCM_CHECK.format(pyz=str(pyz_path))]
    assert run(sys.executable, command, cache).returncode == 0
    (folder,) = (cache / "stockyard").iterdir()
    marker = folder / "marker"
    marker.write_text("still here")
    assert run(sys.executable, command, cache).returncode == 0
    assert marker.exists()


def test_damaged_cache_folder_is_replaced(pyz_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    command = ["-c", AES_GCM_CHECK.format(pyz=str(pyz_path))]
    assert run(sys.executable, command, cache).returncode == 0
    (folder,) = (cache / "stockyard").iterdir()
    (folder / "MANIFEST.json").unlink()
    shutil.rmtree(folder / "cryptography")
    result = run(sys.executable, command, cache)
    assert result.returncode == 0, result.stderr
    assert os.listdir(cache / "stockyard") == [folder.name]


def test_unwritable_cache_fails_with_one_line(pyz_path: Path, tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    result = run(sys.executable, [str(pyz_path), "version"], not_a_folder)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("stockyard: error: cannot unpack bundled cryptography")


def test_bootstrap_is_noop_in_checkout(tmp_path: Path) -> None:
    code = (
        "import sys; before = list(sys.path); import stockyard._native as n; n.bootstrap(); "
        "assert n.native_folder() is None and sys.path == before; print('ok')"
    )
    result = run(sys.executable, ["-c", code], tmp_path / "cache", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "cache").exists()


def test_build_is_reproducible(pyz_path: Path, tmp_path: Path) -> None:
    """A second build, in another process at another time, is the run's own pyz byte for byte (one
    build here, not two: the run built the first)."""
    assert build(tmp_path / "again.pyz").read_bytes() == pyz_path.read_bytes()


def test_pyz_contents(pyz_path: Path) -> None:
    with zipfile.ZipFile(pyz_path) as pyz:
        names = pyz.namelist()
        build_json = json.loads(pyz.read("stockyard/_build.json"))
        manifest = json.loads(pyz.read("_native/MANIFEST.json"))
        infos = pyz.infolist()
    assert names == sorted(names)
    assert "__main__.py" in names and "stockyard/__main__.py" in names
    assert not [n for n in names if "__pycache__" in n]
    code = [n for n in names if n.endswith(".py") and not n.startswith("_native/") and n != "__main__.py"]
    assert sorted(n for n in names if n.endswith(".pyc")) == sorted(n + "c" for n in code)  # zipimport loads these
    assert {"stockyard/__init__.py", "stockyard/_native.py", "stockyard/buildinfo.py"} <= set(names)
    assert "_native/cryptography/hazmat/bindings/_rust.abi3.so" in names
    for version in PYTHONS:
        tag = version.replace(".", "")
        assert any(re.fullmatch(rf"_native/_cffi_backend\.cpython-{tag}-.*\.so", n) for n in names), version
    assert set(manifest["files"]) == {n[len("_native/") :] for n in names if n.startswith("_native/")} - {
        "MANIFEST.json"
    }
    assert build_json["version"] == stockyard_version()
    assert all(info.date_time == (1980, 1, 1, 0, 0, 0) and info.compress_type == zipfile.ZIP_DEFLATED for info in infos)


def test_package_files_are_collected_except_bytecode(tmp_path: Path) -> None:
    files = [
        "stockyard/__init__.py",
        "stockyard/__main__.py",
        "stockyard/store/migrations/0001_core.sql",
        "stockyard/data/prices.json",
        "stockyard/static/app.css",
    ]
    for name in [*files, "stockyard/__pycache__/x.cpython-311.pyc", "stockyard/store/old.pyc", "stockyard/_build.json"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    assert sorted(BUILD.package_members(tmp_path)) == sorted(files)


def test_losing_the_rename_race_uses_the_winner(pyz_path: Path, tmp_path: Path) -> None:
    """Deterministic version of the race: another process renames its folder into place while we unpack."""
    code = (
        "import sys; sys.path.insert(0, {pyz!r}); import stockyard._native as n\n"
        "unpack = n._unpack\n"
        "def racing_unpack(archive, manifest, folder):\n"
        "    unpack(archive, manifest, folder)\n"
        "    n._unpack = unpack\n"
        "    n._ensure_unpacked(archive, manifest)  # the other process wins\n"
        "n._unpack = racing_unpack\n"
        "n.bootstrap()\n"
        "from cryptography.hazmat.primitives.kdf.hkdf import HKDF\n"
        "print(n.native_folder())\n"
    ).format(pyz=str(pyz_path))
    cache = tmp_path / "cache"
    result = run(sys.executable, ["-c", code], cache)
    assert result.returncode == 0, result.stderr
    entries = os.listdir(cache / "stockyard")
    assert len(entries) == 1 and result.stdout.strip() == str(cache / "stockyard" / entries[0])


def test_modules_load_from_the_bundled_bytecode(pyz_path: Path, tmp_path: Path) -> None:
    """The build's Python runs the .pyc beside each module (its code names the member, not the
    pyz path a compile at import would give): nothing is compiled at start."""
    check = f"import sys; sys.path.insert(0, {str(pyz_path)!r}); import stockyard.times as t; "
    check += "print(t.__file__, t.to_ms.__code__.co_filename)"
    done = run(sys.executable, ["-c", check], tmp_path)
    assert done.returncode == 0, done.stderr
    module_file, code_file = done.stdout.split()
    assert module_file.startswith(str(pyz_path)) and code_file == "stockyard/times.py"


def test_a_command_loads_its_own_module_only(pyz_path: Path, tmp_path: Path) -> None:
    """`stockyard keys list` imports the keys command, not the server, the TOML configuration or the
    backup (every CLI run paid for all of them: ~0.15 s of a 0.45 s command here)."""
    check = f"import sys; sys.path.insert(0, {str(pyz_path)!r}); from stockyard.cli import main; "
    check += "code = main(['keys', 'list', '--db', 'nowhere.db']); "
    check += "print(code, *sorted(m for m in sys.modules if m.startswith('stockyard.cli.')), "
    check += "*(m for m in ('stockyard.server', 'stockyard.configfile', 'stockyard.backup') if m in sys.modules))"
    done = run(sys.executable, ["-c", check], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "stockyard.cli.common", "stockyard.cli.keys"]
    assert "no database at" in done.stderr


def test_server_with_environment_keys_does_not_load_cryptography(pyz_path: Path, tmp_path: Path) -> None:
    """cryptography (~7 MiB resident) is loaded only to encrypt or decrypt: a server whose provider
    keys come from the environment answers without it mapped."""
    from conftest import ServerProcess, base_env

    env = {**base_env(tmp_path / "cache"), "OPENAI_API_KEY": "sk-env-only", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    server = ServerProcess(pyz_path, tmp_path / "s.db", env, spawned=True).start()
    try:
        assert server.request("GET", "/healthz")[0] == 200
        assert server.proc is not None
        maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    finally:
        server.stop()
    assert "_cffi_backend" not in maps and "_rust.abi3" not in maps


def test_a_pyz_replaced_under_a_running_server_is_never_read(pyz_path: Path, tmp_path: Path) -> None:
    """Was: the console's files and the price table (on every configuration reload) were read
    from the pyz when first needed, so an upgrade that replaced it under a running server broke
    both ('bad local file header'): new keys answered 401 and /readyz 503 until a restart."""
    from conftest import ServerProcess, base_env, wait_for

    running = tmp_path / "stockyard.pyz"
    shutil.copy(pyz_path, running)
    server = ServerProcess(running, tmp_path / "s.db", base_env(tmp_path / "cache"), spawned=True).start()
    try:
        # the next version, written over it in place: every member at another offset
        with zipfile.ZipFile(pyz_path) as old, zipfile.ZipFile(running, "w", zipfile.ZIP_DEFLATED) as new:
            new.writestr("padding.bin", os.urandom(1 << 20))
            for info in old.infolist():
                new.writestr(info, old.read(info))
        status, _, body = server.request("GET", "/ui/app.js")
        assert status == 200 and body == (ROOT / "stockyard" / "ui" / "app.js").read_bytes()
        made = subprocess.run(
            [sys.executable, str(pyz_path), "keys", "create", "--name", "after-upgrade", "--db", str(server.db)],
            env=server.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        key = re.search(r"sk-sy-[A-Za-z0-9_-]+", made.stdout).group(0)
        wait_for(
            lambda: server.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})[0] == 200,
            20,
            "the running server to take the new key",
        )
        assert server.request("GET", "/readyz")[0] == 200
    finally:
        server.stop()

"""Review36: an attacker's and a bad day's review of the stop that brought realtime limits, restore's
``--keep-previous``, the webhook outbox and the workers' ledger resync. Each test names the hole it
closes and failed on the code it was written against; every process is a real ``stockyard.pyz``."""

from __future__ import annotations

import shutil
from pathlib import Path

import clirun
import pytest
from conftest import TEST_STORE, base_env

SECRET = "review36-encryption-secret-0123456789abcdef"
sqlite_only = pytest.mark.skipif(TEST_STORE == "postgresql", reason="SQLite files: restore of one file")


def run(pyz: Path, args: list, env: dict, stdin: str | None = None):
    return clirun.run(pyz, list(map(str, args)), env, stdin)


@pytest.fixture(scope="module")
def env(cache_home) -> dict:
    return {**base_env(cache_home), "STOCKYARD_ENCRYPTION_KEY": SECRET}


@pytest.fixture(scope="module")
def made(pyz_path, env, tmp_path_factory) -> tuple[Path, Path]:
    """A live database (one client key) and a backup of it, made once."""
    folder = tmp_path_factory.mktemp("review36")
    live, backup = folder / "live.db", folder / "backup.db"
    assert run(pyz_path, ["keys", "create", "--name", "alice", "--db", live], env).returncode == 0
    done = run(pyz_path, ["backup", backup, "--db", live], env)
    assert done.returncode == 0, done.stderr
    return live, backup


def set_aside(live: Path) -> list[str]:
    return sorted(p.name for p in live.parent.iterdir() if ".before-restore-" in p.name)


@sqlite_only
def test_a_negative_keep_previous_is_refused_and_removes_nothing(pyz_path, env, made, tmp_path):
    """Hole: ``restore --keep-previous -1`` (the usual spelling of "no limit") was taken as 0: the restore
    went through and removed every copy earlier restores set aside, and this one's too — the operator's
    way back gone. Now a count below 0 is refused before anything is read or changed."""
    live = tmp_path / "db" / "stockyard.db"
    live.parent.mkdir()
    shutil.copy(made[0], live)
    assert run(pyz_path, ["restore", made[1], "--db", live], env).returncode == 0
    kept = set_aside(live)
    assert len(kept) == 1
    refused = run(pyz_path, ["restore", made[1], "--keep-previous", "-1", "--db", live], env)
    assert refused.returncode == 2, refused.stdout
    assert "--keep-previous" in refused.stderr and "0 or more" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert set_aside(live) == kept

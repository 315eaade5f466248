"""File modes: the data folder is 0700 and every file holding prompts is 0600, whatever the umask.

Real servers and CLI commands from the pyz, started with the common umask 022 (under
which files would otherwise be created 0644, readable by every local user).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEST_STORE, ServerProcess, mock_env, wait_for

from stockyard.store import db

SECRET = "file-modes-test-secret-0123456789abcdef"

# The modes of the SQLite file (its folder, -wal, -shm, .lock, snapshots, restore): on PostgreSQL,
# where a test's database path stands for a database of the server's, there is no such file.
SQLITE_ONLY = pytest.mark.skipif(
    TEST_STORE == "postgresql", reason="SQLite only: the modes of the database file, its folder and copies of it"
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def umask_022():
    """Children inherit the umask: make it the usual permissive one for these tests."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def env(cache_home, mock) -> dict[str, str]:
    return mock_env(cache_home, mock, OPENAI_API_KEY="sk-test-modes-0123456789", STOCKYARD_ENCRYPTION_KEY=SECRET)


def chat(server: ServerProcess) -> None:
    status, _, body = server.request(
        "POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert status == 200, body


@SQLITE_ONLY
def test_a_new_install_creates_a_private_folder_and_private_files(pyz_path, env, tmp_path):
    folder = tmp_path / "fresh" / "data"  # does not exist yet: Stockyard creates it
    db_path = folder / "stockyard.db"
    snapshot = tmp_path / "snapshot.db"
    server = ServerProcess(pyz_path, db_path, env, ["--snapshot", str(snapshot), "--snapshot-every", "1s"])
    server.start()
    try:
        chat(server)
        wait_for(lambda: server.db_rows("SELECT id FROM traces"), what="the trace committed")
        wait_for(snapshot.exists, 15, "the first snapshot")
        wal, shm = db_path.with_name("stockyard.db-wal"), db_path.with_name("stockyard.db-shm")
        assert wal.exists() and shm.exists()
        backup = tmp_path / "backup.db"
        done = server.cli("backup", str(backup))
        assert done.returncode == 0, done.stderr
        assert mode(folder) == 0o700
        for path in (db_path, wal, shm, db_path.with_name("stockyard.db.lock"), snapshot, backup):
            assert mode(path) == 0o600, f"{path.name} is {mode(path):04o}"
        assert "file permissions" not in server.log  # nothing to fix on a new install
    finally:
        server.stop()


@SQLITE_ONLY
def test_files_left_readable_by_an_older_version_are_made_private_at_start(pyz_path, env, tmp_path):
    folder = tmp_path / "old"
    db_path = folder / "stockyard.db"
    snapshot = tmp_path / "snapshot.db"
    first = ServerProcess(pyz_path, db_path, env).start()
    chat(first)
    first.stop()
    shutil.copyfile(db_path, snapshot)
    shutil.copyfile(db_path, db_path.with_name("stockyard.db.pre-v0001.bak"))
    readable = [
        db_path,
        db_path.with_name("stockyard.db.lock"),
        db_path.with_name("stockyard.db.pre-v0001.bak"),
        snapshot,
    ]
    for path in readable:
        path.chmod(0o644)  # what an older Stockyard left behind
    folder.chmod(0o755)  # a folder the user chose and opened: not ours to change

    server = ServerProcess(pyz_path, db_path, env, ["--snapshot", str(snapshot), "--snapshot-every", "1h"])
    server.start()
    try:
        for path in readable:
            assert mode(path) == 0o600, f"{path.name} is {mode(path):04o}"
        assert mode(folder) == 0o755
        lines = [line for line in server.log.splitlines() if "file permissions" in line]
        assert len(lines) == 2, server.log
        assert "made 4 file(s) private" in lines[0] and "stockyard.db (0644)" in lines[0]
        assert f"folder {folder} is open to other users (mode 0755)" in lines[1]
        chat(server)
        wait_for(lambda: db_path.with_name("stockyard.db-wal").exists(), what="the WAL file")
        assert mode(db_path.with_name("stockyard.db-wal")) == 0o600
        assert mode(db_path.with_name("stockyard.db-shm")) == 0o600
    finally:
        server.stop()
    # once fixed, a restart says nothing more about the files
    again = ServerProcess(pyz_path, db_path, env).start()
    again.stop()
    assert "made" not in "".join(line for line in again.log_lines if "file permissions" in line)


def test_migrate_makes_the_database_and_its_pre_migration_backup_private(pyz_path, env, tmp_path):
    db_path = tmp_path / "stockyard.db"
    conn = db.connect(db_path)
    db.migrate(conn, upto=1)
    conn.close()
    db_path.chmod(0o644)
    done = subprocess.run(
        [sys.executable, str(pyz_path), "migrate", "--db", str(db_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "file permissions: made 1 file(s) private" in done.stdout
    backup = db_path.with_name("stockyard.db.pre-v0001.bak")
    assert mode(db_path) == 0o600 and mode(backup) == 0o600


@SQLITE_ONLY
def test_restore_keeps_every_copy_private(pyz_path, env, tmp_path):
    db_path = tmp_path / "live" / "stockyard.db"
    first = ServerProcess(pyz_path, db_path, env).start()
    chat(first)
    done = first.cli("backup", str(tmp_path / "b.db"))
    first.stop()
    assert done.returncode == 0, done.stderr
    db_path.chmod(0o644)  # the current file, from an older version
    restored = subprocess.run(
        [sys.executable, str(pyz_path), "restore", str(tmp_path / "b.db"), "--db", str(db_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert restored.returncode == 0, restored.stderr
    aside = list(db_path.parent.glob("stockyard.db.before-restore-*"))
    assert len(aside) == 1
    for path in (db_path, aside[0]):
        assert mode(path) == 0o600, f"{path.name} is {mode(path):04o}"


@SQLITE_ONLY
def test_the_default_folder_is_ours_and_made_private(pyz_path, env, tmp_path):
    home = tmp_path / "home"
    folder = home / ".stockyard"
    folder.mkdir(parents=True, mode=0o755)
    folder.chmod(0o755)  # as an older Stockyard created it
    server = ServerProcess(pyz_path, folder / "stockyard.db", {**env, "HOME": str(home)}).start()
    server.stop()
    assert mode(folder) == 0o700
    assert f"file permissions: made folder {folder} private (mode 0700, was 0755)" in server.log


def test_on_postgresql_a_backup_is_a_private_file(pyz_path, env, tmp_path, pg_url):
    """PostgreSQL's counterpart (it runs on either suite run): the one file Stockyard writes from a
    PostgreSQL database, a backup (an SQLite file holding every prompt), is 0600 under the umask 022."""
    server = ServerProcess(pyz_path, pg_url, env).start()
    try:
        chat(server)
        wait_for(lambda: server.db_rows("SELECT id FROM traces"), what="the trace committed")
        backup = tmp_path / "backup.db"
        done = server.cli("backup", str(backup))
        assert done.returncode == 0, done.stderr
        assert mode(backup) == 0o600, f"{mode(backup):04o}"
        assert not list(tmp_path.glob("backup.db-*")), "no -wal or -shm left beside it"
    finally:
        server.stop()

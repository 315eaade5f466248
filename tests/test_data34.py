"""Review data34: the risks the data33 crash review left in ``backup`` and ``restore``.

Each process here is a real ``python3 stockyard.pyz`` of the built pyz on real SQLite files; one
live database and one backup are made per module and copied for each test. Each test names the
hole it closes and failed on the code it was written against.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import clirun
import pytest
from conftest import TEST_STORE, base_env
from test_attack_data33 import integrity

pytestmark = pytest.mark.skipif(TEST_STORE == "postgresql", reason="SQLite files: backup and restore of one file")

SECRET = "data34-encryption-secret-0123456789abcdef"
BASE_URL = b"http://127.0.0.1:9/data34-v1"


def run(pyz: Path, args: list, env: dict, stdin: str | None = None):
    return clirun.run(pyz, list(map(str, args)), env, stdin)


@pytest.fixture(scope="module")
def env(cache_home) -> dict:
    return {**base_env(cache_home), "STOCKYARD_ENCRYPTION_KEY": SECRET}


@pytest.fixture(scope="module")
def made(pyz_path, env, tmp_path_factory) -> tuple[Path, Path]:
    """A live database (a client key, a provider key) and a backup of it, made once."""
    folder = tmp_path_factory.mktemp("data34")
    live, backup = folder / "live.db", folder / "backup.db"
    assert run(pyz_path, ["keys", "create", "--name", "alice", "--db", live], env).returncode == 0
    added = run(
        pyz_path,
        ["providers", "add", "vllm", "--kind", "openai-compatible", "--base-url", BASE_URL.decode()]
        + ["--models", "llama-", "--key-stdin", "--db", live],
        env,
        "sk-provider-data34-abcdef123456",
    )
    assert added.returncode == 0, added.stderr
    done = run(pyz_path, ["backup", backup, "--db", live], env)
    assert done.returncode == 0, done.stderr
    return live, backup


@pytest.fixture
def copies(made, tmp_path) -> tuple[Path, Path]:
    """This test's own copy of the live database and of the backup."""
    live, backup = tmp_path / "db" / "stockyard.db", tmp_path / "backup.db"
    live.parent.mkdir()
    shutil.copy(made[0], live)
    shutil.copy(made[1], backup)
    return live, backup


def flip_in_provider_row(backup: Path) -> None:
    """Flip one byte of the provider row's base URL in the file itself: the damage SQLite's
    integrity check cannot see (no page checksums), in a row the audit chain does not cover."""
    data = bytes(backup.read_bytes())
    at = data.find(BASE_URL)
    while at >= 0:
        trial = bytearray(data)
        trial[at + len(BASE_URL) - 1] ^= 0x01
        backup.write_bytes(trial)
        conn = sqlite3.connect(backup)
        try:
            url = conn.execute("SELECT base_url FROM providers WHERE name = 'vllm'").fetchone()[0]
        finally:
            conn.close()
        if url.encode() != BASE_URL:
            assert integrity(backup) == "ok"
            return
        at = data.find(BASE_URL, at + 1)
    raise AssertionError("no copy of the base URL that reads back from the providers row")


def test_a_byte_flipped_in_a_row_of_a_backup_is_refused_and_the_live_database_untouched(pyz_path, env, copies):
    """Hole: SQLite keeps no page checksums, so one flipped byte inside a row's payload passes
    ``PRAGMA integrity_check``; a row outside the audit chain (a provider's base URL here) then
    restored silently, damaged. A backup now carries a digest of its content, which ``restore``
    checks before it swaps anything in: the damaged backup is refused, the live database is the
    same bytes, and no copy is left beside it."""
    live, backup = copies
    flip_in_provider_row(backup)
    before = live.read_bytes()
    done = run(pyz_path, ["restore", backup, "--db", live], env)
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr
    assert "digest" in done.stderr and "nothing was changed" in done.stderr, done.stderr
    assert live.read_bytes() == before
    assert [p.name for p in live.parent.iterdir() if p.name.startswith(".")] == []


def test_a_backup_without_a_digest_still_restores_with_a_warning(pyz_path, env, copies):
    """A backup made before backups carried a digest (its ``meta`` row removed here) restores as it
    did, saying that its content could not be checked; the restored database verifies."""
    live, backup = copies
    conn = sqlite3.connect(backup)
    try:
        assert conn.execute("DELETE FROM meta WHERE key = 'backup_digest'").rowcount == 1
        conn.commit()
    finally:
        conn.close()
    done = run(pyz_path, ["restore", backup, "--db", live], env)
    assert done.returncode == 0, done.stderr
    assert "warning" in done.stderr and "no content digest" in done.stderr, done.stderr
    assert run(pyz_path, ["audit", "verify", "--db", live], env).returncode == 0


def test_a_good_backup_restores_without_a_warning_and_leaves_no_digest_in_the_live_database(pyz_path, env, copies):
    """The digest belongs to the backup file: the restored (live) database does not keep it."""
    live, backup = copies
    done = run(pyz_path, ["restore", backup, "--db", live], env)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr, done.stderr
    conn = sqlite3.connect(live)
    try:
        assert conn.execute("SELECT count(*) FROM meta WHERE key = 'backup_digest'").fetchone()[0] == 0
    finally:
        conn.close()


def damage_provider_token(db_path: Path) -> None:
    """One character of the stored provider key's token changed (still base64, so it reads as a
    token): what a damaged page or a careless edit leaves."""
    conn = sqlite3.connect(db_path)
    try:
        token = conn.execute("SELECT key_token FROM providers WHERE name = 'vllm'").fetchone()[0]
        last = token[-5]
        conn.execute(
            "UPDATE providers SET key_token = ? WHERE name = 'vllm'",
            (token[:-5] + ("A" if last != "A" else "B") + token[-4:],),
        )
        conn.commit()
    finally:
        conn.close()


def test_a_backup_whose_provider_key_does_not_decrypt_is_refused_naming_the_provider(pyz_path, env, copies, tmp_path):
    """Hole: a provider-key token damaged in the database before the backup was made (so the backup's
    digest and audit chain both hold) restored silently; the provider then failed at its first
    request. Now restore decrypts every stored token with the secret it runs with before the swap:
    it refuses, naming the provider, and changes nothing; ``--accept-broken-keys`` restores anyway
    with the same words as a warning."""
    live, _ = copies
    damaged, backup = tmp_path / "damaged.db", tmp_path / "damaged-backup.db"
    shutil.copy(live, damaged)
    damage_provider_token(damaged)
    made = run(pyz_path, ["backup", backup, "--db", damaged], env)
    assert made.returncode == 0, made.stderr
    before = live.read_bytes()
    refused = run(pyz_path, ["restore", backup, "--db", live], env)
    assert refused.returncode == 1, refused.stdout
    assert "provider 'vllm'" in refused.stderr and "nothing was changed" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert live.read_bytes() == before
    accepted = run(pyz_path, ["restore", backup, "--accept-broken-keys", "--db", live], env)
    assert accepted.returncode == 0, accepted.stderr
    assert "warning" in accepted.stderr and "provider 'vllm'" in accepted.stderr, accepted.stderr


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace to see which files a process opens")
def test_restore_reads_the_backup_once_and_swaps_in_the_copy_it_checked(pyz_path, env, copies, tmp_path):
    """Hole: restore opened the backup file once to check it (integrity, schema, audit chain,
    digest: several opens) and again to copy it in, so a file replaced between the two (another
    cron copy landing, someone's edit) was checked in one version and swapped in as another. Now
    it copies the backup once, to a private file beside the database, and checks, upgrades and swaps
    in that same copy: the process opens the backup exactly once (seen with strace), and what it
    swapped in is the backup's content."""
    live, backup = copies
    trace = tmp_path / "opens.txt"
    cmd = ["strace", "-f", "-e", "trace=open,openat", "-o", str(trace), sys.executable, str(pyz_path)]
    done = subprocess.run(
        [*cmd, "restore", str(backup), "--db", str(live)], env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip("ptrace is not allowed here")
    assert done.returncode == 0, done.stderr
    opens = [line for line in trace.read_text().splitlines() if f'"{backup}"' in line and "ENOENT" not in line]
    assert len(opens) == 1, opens
    assert run(pyz_path, ["audit", "verify", "--db", live], env).returncode == 0


def set_aside(live: Path) -> list[str]:
    return sorted(p.name for p in live.parent.iterdir() if ".before-restore-" in p.name)


def test_only_the_newest_copies_set_aside_by_restore_are_kept_and_only_after_a_restore_succeeded(pyz_path, env, copies):
    """Hole: each restore kept the replaced database as ``<db>.before-restore-<stamp>`` and none was
    ever removed: a whole database more per restore, every prompt in each, until the disk filled.
    Now a restore that succeeded keeps the newest three (``--keep-previous N``) and removes older
    ones; a refused restore removes none."""
    live, backup = copies
    seen: list[list[str]] = []
    for _ in range(4):
        done = run(pyz_path, ["restore", backup, "--db", live], env)
        assert done.returncode == 0, done.stderr
        seen.append(set_aside(live))
    assert len(seen[2]) == 3 and len(seen[3]) == 3, seen
    assert seen[0][0] not in seen[3] and set(seen[2]) - {seen[0][0]} <= set(seen[3]), "the oldest one went"
    flip_in_provider_row(backup)
    refused = run(pyz_path, ["restore", backup, "--keep-previous", "1", "--db", live], env)
    assert refused.returncode == 1
    assert set_aside(live) == seen[3]


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace to see the order of writes and syncs")
def test_an_audited_change_is_on_disk_before_the_command_answers(pyz_path, env, copies, tmp_path):
    """Hole: connections run with ``synchronous=NORMAL``, so a commit's WAL frames reach the disk
    only at the next checkpoint: ``keys create`` printed its answer (the change done, a new chain
    head ``audit head`` would hand out) with the audit entry still in the page cache, synced only as
    the process closed the database. A power cut between them loses the entry, and a head recorded
    elsewhere (``audit verify --expect-head``) then reads as a truncated, tampered chain. Now a
    transaction that appends to the audit chain is flushed (fdatasync of the -wal) before anyone is
    told: seen here, in strace's order of system calls, between the entry's WAL writes and the answer."""
    live, _ = copies
    trace = tmp_path / "calls.txt"
    cmd = ["strace", "-f", "-y", "-e", "trace=pwrite64,write,fdatasync,fsync", "-o", str(trace)]
    done = subprocess.run(
        [*cmd, sys.executable, str(pyz_path), "keys", "create", "--name", "bob", "--db", str(live)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip("ptrace is not allowed here")
    assert done.returncode == 0, done.stderr
    calls = trace.read_text().splitlines()
    answered = next(i for i, line in enumerate(calls) if " write(1" in line)
    wal = f"{live}-wal>"
    last_frame = max(i for i, line in enumerate(calls[:answered]) if "pwrite64(" in line and wal in line)
    synced = [line for line in calls[last_frame:answered] if "sync(" in line and wal in line]
    assert synced, "\n".join(calls[last_frame - 2 : answered + 2])

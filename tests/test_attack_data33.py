"""Review data33: an operator's crash review of the commands that move or rewrite the data —
``backup``, ``restore``, ``migrate`` and the disk that fills up under them.

Each process here is a real ``python3 stockyard.pyz`` of the built pyz on real SQLite files. A crash
"at a step" is a SIGKILL delivered by ``strace`` as the process enters the n-th call of one system
call (``-e inject=SYSCALL:signal=KILL:when=N``): the same point every run, no timing guessed. A full
disk is ``RLIMIT_FSIZE`` (writes past the limit fail with EFBIG, as they do with ENOSPC).

Each test names the hole it closes and failed on the code it was written against.
"""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import clirun
import pytest
from conftest import TEST_STORE, ServerProcess, base_env, mock_env, wait_for

pytestmark = pytest.mark.skipif(
    TEST_STORE == "postgresql", reason="SQLite files: backup, restore and migrate of one database file"
)

SECRET = "data33-encryption-secret-0123456789abcdef"


def strace_works() -> bool:
    """Whether this machine lets a process trace its child (ptrace may be off in a container)."""
    if not shutil.which("strace"):
        return False
    done = subprocess.run(["strace", "-f", "-o", "/dev/null", "true"], capture_output=True)
    return done.returncode == 0


needs_strace = pytest.mark.skipif(not strace_works(), reason="needs strace (ptrace) to kill at a system call")


def killed_at(pyz: Path, args: list[str], env: dict, syscall: str, nth: int) -> subprocess.CompletedProcess:
    """Run ``python3 stockyard.pyz ARGS``, SIGKILLed as it (or any of its threads) enters the
    ``nth`` ``syscall``; a run that ends before it exits as it would have."""
    inject = ["-e", f"trace={syscall}", "-e", f"inject={syscall}:signal=KILL:when={nth}"]
    cmd = ["strace", "-f", "-o", "/dev/null", *inject, sys.executable, str(pyz), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def run(pyz: Path, args: list[str], env: dict) -> subprocess.CompletedProcess:
    return clirun.run(pyz, list(map(str, args)), env)


def integrity(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def env(cache_home) -> dict:
    return {**base_env(cache_home), "STOCKYARD_ENCRYPTION_KEY": SECRET}


@pytest.fixture
def live_and_backup(pyz_path, env, tmp_path) -> tuple[Path, Path]:
    """A live database with a client key and a provider key, and a backup of it."""
    live, backup = tmp_path / "live" / "stockyard.db", tmp_path / "backups" / "b.db"
    backup.parent.mkdir()
    assert run(pyz_path, ["keys", "create", "--name", "alice", "--db", live], env).returncode == 0
    added = clirun.run(
        pyz_path,
        ["providers", "add", "vllm", "--kind", "openai-compatible", "--base-url", "http://127.0.0.1:9/v1"]
        + ["--models", "llama-", "--key-stdin", "--db", str(live)],
        env,
        "sk-provider-data33-abcdef123456",
    )
    assert added.returncode == 0, added.stderr
    assert run(pyz_path, ["backup", backup, "--db", live], env).returncode == 0
    return live, backup


def hidden(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


@needs_strace
def test_a_restore_killed_while_copying_the_backup_in_leaves_no_copy_behind(pyz_path, env, live_and_backup):
    """Hole: ``restore`` copied the backup into its working file ``.NAME.restore-PID-T`` through the
    backup helper, which writes a temporary copy of its own beside it first
    (``..NAME.restore-PID-T.tmp-PID-T``) and renames it. A restore killed while that copy was written
    (at its first fdatasync here) left it — the whole backup, every prompt in it — beside the live
    database for good: the next restore removed only leftovers named ``.NAME.restore-…``. The
    live database stayed whole; the copy stayed too."""
    live, backup = live_and_backup
    done = killed_at(pyz_path, ["restore", str(backup), "--db", str(live)], env, "fdatasync", 1)
    assert done.returncode == -9, done.stderr
    assert hidden(live.parent), "killed before the copy began"
    assert integrity(live) == "ok"
    again = run(pyz_path, ["restore", backup, "--db", live], env)
    assert again.returncode == 0, again.stderr
    assert hidden(live.parent) == []
    assert run(pyz_path, ["audit", "verify", "--db", live], env).returncode == 0


def on_a_full_disk(
    pyz: Path, args: list, env: dict, limit: int = 64 * 1024, stdin: str | None = None
) -> subprocess.CompletedProcess:
    """Run ``python3 stockyard.pyz ARGS`` in a process whose writes past ``limit`` bytes of a file
    fail (``RLIMIT_FSIZE``: EFBIG, as ENOSPC on a full disk)."""

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, str(pyz), *map(str, args)]
    return subprocess.run(cmd, env=env, input=stdin, capture_output=True, text=True, preexec_fn=limited, timeout=120)


def test_a_full_disk_under_backup_and_restore_says_which_file_and_that_nothing_changed(
    pyz_path, env, live_and_backup, tmp_path
):
    """Hole: a backup or restore that met a full disk ended with ``stockyard: disk I/O error`` (or
    ``database or disk is full``) and nothing else: no word of which file — the backup being
    written, or the live database? — nor whether anything had changed, so an operator at 3 a.m. could
    only guess whether the live database was now damaged. Now the answer names the file it could
    not write and says the database in use was not changed (which holds: checked here)."""
    live, backup = live_and_backup
    dest = tmp_path / "backups" / "full.db"
    before = live.read_bytes()
    for args, target in ((["backup", dest], dest), (["restore", backup], live)):
        done = on_a_full_disk(pyz_path, [*args, "--db", live], env)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert str(target.parent) in done.stderr, done.stderr
        assert "disk" in done.stderr and "not changed" in done.stderr, done.stderr
        assert live.read_bytes() == before
        assert not dest.exists()
        assert hidden(live.parent) == [] and hidden(dest.parent) == []


@pytest.fixture
def in_postgresql(pyz_path, env, live_and_backup, pg_url) -> str:
    """``live_and_backup``'s database moved into an empty PostgreSQL database (its URL)."""
    live, _ = live_and_backup
    moved = run(pyz_path, ["migrate-store", "--db", live, "--to", pg_url], env)
    assert moved.returncode == 0, moved.stderr
    return pg_url


@needs_strace
def test_a_restore_into_postgresql_killed_half_way_leaves_no_copy_in_the_temp_folder(
    pyz_path, env, live_and_backup, pg_url, tmp_path
):
    """Hole: a restore into PostgreSQL prepares the backup in a private folder of the system temp
    folder (``stockyard-restore-XXXX/restore.db``) and removes it when done; killed half way, it
    left that folder — a whole copy of the backup, every prompt and the encrypted provider keys —
    there for good, one more after each such crash, and the next restore did not remove it. Now
    the folder carries its process id and the next restore removes those of processes that are gone."""
    _, backup = live_and_backup
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**env, "TMPDIR": str(temp)}
    done = killed_at(pyz_path, ["restore", str(backup), "--db", pg_url], env, "fdatasync", 1)
    assert done.returncode == -9, done.stderr
    assert list(temp.glob("stockyard-restore-*/restore.db")), "killed before the copy was made"
    again = run(pyz_path, ["restore", backup, "--db", pg_url], env)
    assert again.returncode == 0, again.stderr
    assert list(temp.iterdir()) == []
    assert run(pyz_path, ["audit", "verify", "--db", pg_url], env).returncode == 0


def test_a_full_disk_under_a_copy_out_of_postgresql_says_which_file(pyz_path, env, in_postgresql, tmp_path):
    """Hole: ``backup`` of a PostgreSQL database, or ``migrate-store --to sqlite:PATH``, that met a full
    disk ended with ``stockyard: disk I/O error`` alone. Now it names the file it could not write
    and says the PostgreSQL database was not changed."""
    out = tmp_path / "out"
    out.mkdir()
    for args in (["backup", out / "pg.db"], ["migrate-store", "--to", f"sqlite:{out / 'pg.db'}"]):
        done = on_a_full_disk(pyz_path, [*args, "--db", in_postgresql], env)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert f"could not write {out}" in done.stderr and "not changed" in done.stderr, done.stderr
        assert list(out.iterdir()) == []
    assert run(pyz_path, ["audit", "verify", "--db", in_postgresql], env).returncode == 0


def test_a_backup_from_before_a_rotation_is_refused_with_the_new_secret_and_says_which_one(
    pyz_path, env, live_and_backup
):
    """Hole: a backup holds no secret, and after ``providers rotate-secret`` one made before it
    is keyed (audit chain, provider keys) with the old secret. Restoring it with the new one was
    refused — rightly, nothing changed — but told the operator to "use the secret this installation
    was set up with", which after a rotation reads as the one now in use: the very secret that had
    just been refused. The refusal now says that a backup from before a rotation takes the secret of
    its time; with that one it restores, its provider key decrypts and its chain verifies."""
    live, backup = live_and_backup
    new = "data33-the-next-secret-0123456789abcdef"
    rotated = clirun.run(pyz_path, ["providers", "rotate-secret", "--db", str(live)], env, new + "\n")
    assert rotated.returncode == 0, rotated.stderr
    before = live.read_bytes()
    refused = run(pyz_path, ["restore", backup, "--db", live], {**env, "STOCKYARD_ENCRYPTION_KEY": new})
    assert refused.returncode == 1
    assert "nothing was changed" in refused.stderr and "rotate-secret" in refused.stderr, refused.stderr
    assert "set up with" not in refused.stderr
    assert live.read_bytes() == before
    restored = run(pyz_path, ["restore", backup, "--db", live], env)  # the secret of the backup's time
    assert restored.returncode == 0, restored.stderr
    assert run(pyz_path, ["audit", "verify", "--db", live], env).returncode == 0
    checked = run(pyz_path, ["doctor", "--db", live], {**env, "OPENAI_API_KEY": "sk-data33-123456789"})
    assert checked.returncode == 0 and "decrypts all 1 stored provider key(s)" in checked.stdout, checked.stdout


@needs_strace
def test_a_rotation_whose_answer_a_crash_cut_is_not_reported_as_tampering(pyz_path, env, live_and_backup):
    """Hole: ``providers rotate-secret`` killed right after its commit (before it printed a word)
    leaves an operator who cannot tell whether the rotation happened. Checking with ``doctor``
    under either secret then said of the (whole, unaltered) audit chain that "the log was changed
    outside Stockyard" — a false alarm of tampering, from an operator-side crash — because an entry
    keyed with a secret it was not given read as a forged one. Now an entry keyed with another
    secret points at the secret first (the current one, or the old one in
    STOCKYARD_PREVIOUS_ENCRYPTION_KEYS after a rotation); an entry that was altered still reads as
    tampering. With the right secrets the chain verifies and the stored key decrypts."""
    live, _ = live_and_backup
    new = "data33-the-next-secret-0123456789abcdef"
    args = ["providers", "rotate-secret", "--db", str(live)]
    inject = ["-e", "trace=write", "-e", "inject=write:signal=KILL:when=1"]  # its first output: after the commit
    cut = subprocess.run(
        ["strace", "-f", "-o", "/dev/null", *inject, sys.executable, str(pyz_path), *args],
        env=env,
        input=new + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cut.returncode == -9 and cut.stdout == "", cut.stderr
    for secret in (SECRET, new):  # the operator does not know which one holds now
        checked = run(pyz_path, ["doctor", "--db", live], {**env, "STOCKYARD_ENCRYPTION_KEY": secret})
        assert checked.returncode == 1
        chain = next(line for line in checked.stdout.splitlines() if line.split()[1:3] == ["audit", "chain"])
        assert "changed outside Stockyard" not in chain.split("→ fix:")[1].split(";")[0], chain
        assert "STOCKYARD_PREVIOUS_ENCRYPTION_KEYS" in chain, chain
    both = {**env, "STOCKYARD_ENCRYPTION_KEY": new, "STOCKYARD_PREVIOUS_ENCRYPTION_KEYS": SECRET}
    assert run(pyz_path, ["doctor", "--db", live], both).returncode == 0
    conn = sqlite3.connect(live)
    try:  # a real forgery still reads as one
        conn.execute("UPDATE audit_log SET target = 'someone-else' WHERE seq = 2")
        conn.commit()
    finally:
        conn.close()
    forged = run(pyz_path, ["doctor", "--db", live], both)
    assert forged.returncode == 1 and "changed outside Stockyard" in forged.stdout, forged.stdout


def test_a_backup_whose_audit_log_does_not_verify_is_refused_before_anything_changes(
    pyz_path, env, live_and_backup, tmp_path
):
    """Hole: ``restore`` checked a backup's integrity and schema, and that its audit log's tail was
    keyed with the secret, but not the chain itself: a backup with an altered entry (a damaged page,
    or someone hiding what they did in the copy) was swapped in for the good database and sealed with
    a keyed ``backup.restore`` entry, and only a later ``audit verify`` on the live database said the
    log was broken. Now such a backup is refused with the entry that fails, and nothing changes."""
    live, backup = live_and_backup
    altered = tmp_path / "altered.db"
    shutil.copy(backup, altered)
    conn = sqlite3.connect(altered)
    try:
        conn.execute("UPDATE audit_log SET target = 'someone-else' WHERE seq = 2")
        conn.commit()
    finally:
        conn.close()
    before = live.read_bytes()
    refused = run(pyz_path, ["restore", altered, "--db", live], env)
    assert refused.returncode == 1
    assert "entry 2 was altered" in refused.stderr and "nothing was changed" in refused.stderr, refused.stderr
    assert live.read_bytes() == before and hidden(live.parent) == []
    assert [p.name for p in live.parent.iterdir() if "before-restore" in p.name] == []


def test_a_backup_or_snapshot_named_as_the_lock_file_is_refused(pyz_path, cache_home, mock, tmp_path):
    """Hole: ``backup DEST`` and ``--snapshot`` refused the database and its -wal and -shm, but not
    its lock file ``<db>.lock`` (nor a -journal): ``backup /var/lib/stockyard/stockyard.db.lock`` (one
    Tab too far) renamed a copy over the lock the running server held, so a second server started
    on the same database, and ``restore`` or ``migrate`` would no longer have been refused under it.
    Now those names are refused like the database itself, and the lock still keeps a second server out."""
    env = mock_env(cache_home, mock, STOCKYARD_ENCRYPTION_KEY=SECRET)
    live = tmp_path / "stockyard.db"
    server = ServerProcess(pyz_path, live, env).start()
    try:
        for name in ("stockyard.db.lock", "stockyard.db-journal"):
            done = server.cli("backup", str(tmp_path / name))
            assert done.returncode == 1 and "the live database" in done.stderr, done.stderr
        second = clirun.run(pyz_path, ["serve", "--port", "0", "--db", str(live)], env, timeout=30)
        assert second.returncode == 1 and "already using" in second.stderr, second.stdout + second.stderr
    finally:
        assert server.stop() == 0
    snap = clirun.run(pyz_path, ["serve", "--db", str(live), "--snapshot", str(tmp_path / "stockyard.db.lock")], env)
    assert snap.returncode != 0 and "is the database (or one of its files)" in snap.stdout + snap.stderr


def test_an_erase_from_the_cli_leaves_no_copy_in_the_file_while_a_quiet_server_runs(
    pyz_path, cache_home, mock, tmp_path
):
    """Hole: ``traces --erase-body`` from the CLI zeroes the body in a page it writes to the -wal
    file; the database file itself kept the body's bytes until a checkpoint copied that page in.
    The server's writer checkpoints a second after its own writes go idle, but a CLI write is not
    its own: on a quiet server the secret stayed readable in ``stockyard.db`` for up to a minute
    after the erase said it was done (and ``cp`` of the file, or a disk image, took it along).
    The erase now checkpoints the WAL itself before it answers."""
    secret = "sk-leaked-data33-" + os.urandom(8).hex()
    live = tmp_path / "stockyard.db"
    server = ServerProcess(pyz_path, live, mock_env(cache_home, mock)).start()
    try:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"my key is {secret}"}]}
        status, headers, _ = server.request("POST", "/v1/chat/completions", body)
        assert status == 200
        trace_id = headers["x-stockyard-trace-id"]
        server.trace(trace_id)
        wal = tmp_path / "stockyard.db-wal"
        wait_for(lambda: wal.exists() and wal.stat().st_size == 0, 15, "the writer's idle checkpoint")
        assert secret.encode() in live.read_bytes(), "the body is stored as written (short: uncompressed)"
        erased = server.cli("traces", "--erase-body", trace_id)
        assert erased.returncode == 0, erased.stderr
        holding = [p.name for p in tmp_path.iterdir() if p.is_file() and secret.encode() in p.read_bytes()]
        assert holding == []
    finally:
        assert server.stop() == 0


def test_a_full_disk_under_a_rotation_or_an_erase_says_so_and_changes_nothing(pyz_path, env, live_and_backup):
    """Hole: ``providers rotate-secret`` or ``traces --erase-body`` on a database whose disk is full
    answered ``stockyard: disk I/O error`` and nothing more, about the live database itself: whether
    it was now damaged, half rotated or half erased, the operator could not tell. Now the answer says
    the disk may be full and that what the command was writing was rolled back; and so it was: the
    database is whole, its provider key still decrypts with the old secret, its chain verifies."""
    live, _ = live_and_backup
    before = live.read_bytes()
    new = "data33-the-next-secret-0123456789abcdef"
    trace_id = "tr_0190f3a1b2c3d4e5f6a7b8c9"
    for args, stdin in ((["providers", "rotate-secret"], new + "\n"), (["traces", "--erase-body", trace_id], None)):
        done = on_a_full_disk(pyz_path, [*args, "--db", live], env, limit=4096, stdin=stdin)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "full" in done.stderr and "rolled back" in done.stderr, done.stderr
    assert integrity(live) == "ok" and live.read_bytes() == before
    assert run(pyz_path, ["audit", "verify", "--db", live], env).returncode == 0
    checked = run(pyz_path, ["doctor", "--db", live], {**env, "OPENAI_API_KEY": "sk-data33-123456789"})
    assert checked.returncode == 0 and "decrypts all 1 stored provider key(s)" in checked.stdout, checked.stdout


def rows_seen_afresh(path: Path) -> int:
    """The ``meta`` rows named ``data33`` as a new process opening ``path`` sees them."""
    code = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
    code += "print(c.execute(\"SELECT count(*) FROM meta WHERE key = 'data33'\").fetchone()[0])"
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@needs_strace
def test_a_restore_killed_while_setting_aside_a_database_it_could_not_fold_keeps_its_wal(
    pyz_path, env, live_and_backup
):
    """Hole: a restore keeps the current database aside, folding its -wal file in first; when that
    cannot be done (another program reads the database, so the checkpoint cannot finish) it moved
    the -wal file to the kept copy's name and only then made the kept copy. Killed between the two
    (or a Ctrl-C), the live database had lost its -wal — the committed writes in it — and no kept
    copy had them either: a ``-wal`` file beside no database. Now the copy is made first and the
    -wal moved after it, so at every moment the committed writes belong to a database."""
    live, backup = live_and_backup
    writer = sqlite3.connect(live, isolation_level=None)
    reader = sqlite3.connect(live, isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM meta").fetchone()  # an older snapshot: no checkpoint gets past it
        writer.execute("INSERT INTO meta (key, value) VALUES ('data33', 'committed, in the -wal file')")
        assert (live.parent / "stockyard.db-wal").stat().st_size > 0
        held = {**env, "STOCKYARD_BUSY_TIMEOUT_MS": "1000"}  # its checkpoint waits for the reader that long
        done = killed_at(pyz_path, ["restore", str(backup), "--db", str(live)], held, "link", 1)
        assert done.returncode == -9, done.stderr
        assert rows_seen_afresh(live) == 1, "the committed row is still the live database's"
    finally:
        reader.close()
        writer.close()


def test_a_backup_over_the_database_of_another_running_server_is_refused(pyz_path, cache_home, mock, tmp_path):
    """Hole: ``backup DEST`` replaces DEST atomically, whatever it is: named after the database of
    another server that runs (``backup /var/lib/stockyard/stockyard.db --db /tmp/test.db``, the two
    paths swapped), it renamed the copy over that server's file. The server kept writing to the file
    it had open, now without a name: every trace and change it made from then on was gone at its
    next start. Now a DEST whose lock a running server holds is refused, and that server's writes land.
    The other way round, ``restore SRC`` of such a database read a file being written (its -wal
    emptied by the idle server's checkpoint, nothing said "live"): refused the same way."""
    env = mock_env(cache_home, mock, STOCKYARD_ENCRYPTION_KEY=SECRET)
    busy, other = tmp_path / "busy" / "stockyard.db", tmp_path / "other.db"
    assert run(pyz_path, ["keys", "create", "--name", "bob", "--db", other], env).returncode == 0
    server = ServerProcess(pyz_path, busy, env).start()
    try:
        inode = busy.stat().st_ino
        done = run(pyz_path, ["backup", busy, "--db", other], env)
        assert done.returncode == 1 and "is using" in done.stderr, done.stderr
        assert busy.stat().st_ino == inode
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "after the backup"}]}
        status, headers, _ = server.request("POST", "/v1/chat/completions", body)
        assert status == 200
        server.trace(headers["x-stockyard-trace-id"])  # written to the file that bears the name
        wal = busy.with_name("stockyard.db-wal")
        wait_for(
            lambda: wal.stat().st_size == 0, 15, "the idle server's checkpoint"
        )  # nothing says "live" but the lock
        done = run(pyz_path, ["restore", busy, "--db", other], env)
        assert done.returncode == 1 and "is using" in done.stderr, done.stderr
    finally:
        assert server.stop() == 0


def test_a_snapshot_over_the_database_of_another_running_server_is_not_written(pyz_path, cache_home, mock, tmp_path):
    """Hole: ``--snapshot PATH`` is renamed over PATH on every refresh; PATH naming the database of
    another server that runs (two services on one machine, one path pasted into the wrong unit),
    each snapshot replaced that server's file under it, and what it wrote from then on went to a
    file without a name. Now such a snapshot is not written, and the log says why, each time."""
    env = mock_env(cache_home, mock)
    first = ServerProcess(pyz_path, tmp_path / "a" / "stockyard.db", env).start()
    try:
        inode = first.db.stat().st_ino
        args = ["--snapshot", str(first.db), "--snapshot-every", "1s"]
        second = ServerProcess(pyz_path, tmp_path / "b" / "stockyard.db", env, args).start()
        try:
            wait_for(lambda: "is a live database" in second.log, 20, "the refused snapshot")
        finally:
            assert second.stop() == 0
        assert first.db.stat().st_ino == inode
    finally:
        assert first.stop() == 0

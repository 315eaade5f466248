"""Backups, snapshots, restore and moving a server: the "one file, copy it" promise, under load.

One server (module-scoped) with a keyed audit log and a snapshot every second serves
the whole module; each test drives load at it while it copies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time

import clirun
import pytest
from conftest import TEST_STORE, ServerProcess, base_env, mock_env, wait_for
from ops_helpers import Load, assert_same_content, integrity, open_plain, verify_audit

from stockyard import audit
from stockyard.backup import Snapshotter, check_digest
from stockyard.store import db

pytestmark = pytest.mark.skipif(
    TEST_STORE == "postgresql",
    reason="SQLite only: the database file's snapshots, backup, restore, moving (PostgreSQL's: test_migrate_store.py)",
)

SECRET = "backup-test-encryption-secret-0123456789"
HEAD = re.compile(r"audit head\s+([0-9a-f]{64}) \((\d+) entries")


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    folder = tmp_path_factory.mktemp("backup")
    env = mock_env(
        cache_home,
        mock,
        OPENAI_API_KEY="sk-test-backup-123456",
        STOCKYARD_ENCRYPTION_KEY=SECRET,
        STOCKYARD_LOG_REQUESTS="0",
    )
    srv = ServerProcess(
        pyz_path,
        folder / "live" / "stockyard.db",
        env,
        ["--snapshot", str(folder / "snapshot.db"), "--snapshot-every", "1s"],
    ).start()
    srv.snapshot = folder / "snapshot.db"
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log
    assert not list(folder.glob(".snapshot.db.tmp-*")), "a stop leaves no snapshot being sealed behind"


def run(pyz, *args, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return clirun.run(pyz, list(map(str, args)), env, timeout=timeout)


def trace_count(path) -> int:
    conn = open_plain(path)
    try:
        return conn.execute("SELECT count(*) FROM traces").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def backups(server, tmp_path_factory):
    """Three backups taken one after another while clients keep the server busy."""
    folder = tmp_path_factory.mktemp("backups")
    with Load(server.port, threads=6) as load:
        wait_for(lambda: len(load.answered) >= 50, 20, "load")
        results = [server.cli("backup", str(folder / f"b{i}.db")) for i in range(3)]
    assert not load.failures
    return [(folder / f"b{i}.db", r) for i, r in enumerate(results)]


def test_backup_under_load_is_consistent_checked_and_audited(server, backups):
    heads = []
    for path, r in backups:
        assert r.returncode == 0, r.stderr
        assert f"backup written: {path}" in r.stdout and "integrity ok" in r.stdout
        assert f"size        {path.stat().st_size} bytes" in r.stdout
        assert integrity(path) == "ok"
        head = HEAD.search(r.stdout).group(1)
        check = verify_audit(path, SECRET, expect_head=head)
        assert check.ok and check.head == head, check.reason
        assert open(path, "rb").read(20)[18:20] == b"\x01\x01", "a single self-contained file (no WAL needed)"
        assert not os.path.exists(f"{path}-wal")
        heads.append(head)
    counts = [trace_count(path) for path, _ in backups]
    assert 0 < counts[0] <= counts[1] <= counts[2]
    rows = server.db_rows("SELECT target, details, actor FROM audit_log WHERE action = 'backup.create' ORDER BY seq")
    assert [r["target"] for r in rows][:3] == [str(path) for path, _ in backups]
    assert [json.loads(r["details"])["audit_head"] for r in rows][:3] == heads
    assert rows[0]["actor"].startswith("cli:")


def test_backup_to_a_folder_is_time_stamped_and_the_live_file_is_refused(server, tmp_path):
    r = server.cli("backup", str(tmp_path))
    assert r.returncode == 0, r.stderr
    (made,) = tmp_path.glob("stockyard-*.db")
    assert re.fullmatch(r"stockyard-\d{8}T\d{6}Z\.db", made.name)
    r = server.cli("backup", str(server.db))
    assert r.returncode == 1 and "is the live database" in r.stderr


def test_snapshot_is_refreshed_and_safe_to_cp_at_any_moment(server, tmp_path):
    """What cron does: cp the snapshot while the server writes. Every copy must be whole."""
    wait_for(server.snapshot.exists, 10, "first snapshot")
    copies = []
    with Load(server.port, threads=4):
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            dst = tmp_path / f"cp{len(copies)}.db"
            shutil.copyfile(server.snapshot, dst)
            copies.append(dst)
            time.sleep(0.03)  # cron's cp at arbitrary moments: a copy every 30 ms while the load runs
    bad = [c.name for c in copies if integrity(c) != "ok"]
    assert not bad, f"{len(bad)} of {len(copies)} copies of the snapshot are damaged"
    assert len({trace_count(c) for c in copies}) >= 2, "the snapshot was refreshed while the load ran"
    # a temp file exists only while a snapshot is being written: none may stay behind
    wait_for(lambda: not list(server.snapshot.parent.glob(".snapshot.db.tmp-*")), 10, "no temp files left behind")
    _, _, body = server.request("GET", "/metrics")
    last = float(re.search(rb"^stockyard_snapshot_last_success_seconds (\S+)$", body, re.M).group(1))
    assert time.time() - last < 10


def count_of(path, query: str) -> int:
    conn = open_plain(path)
    try:
        return conn.execute(query).fetchone()[0]
    finally:
        conn.close()


def flip_in_a_trace_row(path) -> None:
    """Flip one byte of a trace's client address in the file itself (a column no index holds): the
    damage SQLite's integrity check cannot see, in a row the audit chain does not cover."""
    data, needle, query = path.read_bytes(), b"127.0.0.1", "SELECT count(*) FROM traces WHERE client_addr = '127.0.0.1'"
    before = count_of(path, query)
    at = data.find(needle)
    while at >= 0:
        trial = bytearray(data)
        trial[at + len(needle) - 1] ^= 0x01
        path.write_bytes(trial)
        if count_of(path, query) < before:
            assert integrity(path) == "ok"
            return
        at = data.find(needle, at + 1)
    raise AssertionError("no copy of the client address that reads back from a trace row")


def test_a_snapshot_carries_a_content_digest_that_restore_checks(server, pyz_path, cache_home, tmp_path):
    """Gap: ``--snapshot`` files were written without the content digest backups carry (to keep the
    writer's pause short), so a snapshot restored with a warning and a byte flipped inside one of
    its rows restored silently. The writer still only makes the copy; another thread seals it
    before the rename: the snapshot restores with no warning, and the damaged one is refused."""
    with Load(server.port, threads=2) as load:
        wait_for(lambda: len(load.answered) >= 10, 20, "load")
    copy = tmp_path / "snap.db"

    def copied_with_traces() -> bool:
        if not server.snapshot.exists():
            return False
        shutil.copyfile(server.snapshot, copy)  # what cron does
        return trace_count(copy) > 0

    wait_for(copied_with_traces, 20, "a snapshot with traces")
    env = {**base_env(cache_home), "STOCKYARD_ENCRYPTION_KEY": SECRET}
    r = run(pyz_path, "restore", copy, "--db", tmp_path / "good" / "stockyard.db", env=env)
    assert r.returncode == 0, r.stderr
    assert "digest" not in r.stderr and "warning" not in r.stderr, r.stderr

    flip_in_a_trace_row(copy)
    target = tmp_path / "bad" / "stockyard.db"
    r = run(pyz_path, "restore", copy, "--db", target, env=env)
    assert r.returncode == 1, r.stdout
    assert "does not match the content digest" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not target.exists()


def test_a_snapshot_due_while_one_is_sealed_is_skipped_and_a_stop_waits_or_abandons(tmp_path, caplog):
    """The sealing (a read of every row) runs beside the writer, one at a time: a snapshot due
    meanwhile is skipped and said; a stop with time left waits for the sealing (the snapshot then
    carries its digest), a stop with none abandons it: its temp file removed, the last snapshot kept.
    A real database file of some 35 MB, so that its sealing takes a while (about half a second)."""
    live, path = tmp_path / "live.db", tmp_path / "snap.db"
    conn = db.connect(live)
    db.migrate(conn)
    conn.execute("CREATE TABLE filler (x BLOB)")
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 150000) "
        "INSERT INTO filler SELECT randomblob(200) FROM n"
    )
    temp_files = lambda: list(tmp_path.glob(".snap.db.tmp-*"))  # noqa: E731
    snap = Snapshotter(path)
    try:
        snap.run(conn)
        snap.run(conn)  # due again while the first is being sealed
        assert snap.skipped == 1 and "skipped: the previous one is still being sealed" in caplog.text
        snap.stop(60)
        assert snap.taken == 1 and snap.failures == 0 and not temp_files()
        first = path.read_bytes()
        snap.run(conn)
        snap.stop(0)  # no time left: the sealing in progress is abandoned
    finally:
        conn.close()
    assert "abandoned at the stop" in caplog.text and snap.taken == 1
    assert not temp_files() and path.read_bytes() == first, "the last snapshot kept, no temp file left"
    assert check_digest(path, path) is None, "the snapshot waited for carries its digest, and it matches"


def test_wal_is_truncated_when_the_writer_is_idle(server):
    with Load(server.port, threads=4) as load:
        wait_for(lambda: len(load.answered) >= 200, 20, "load")
    wal = server.db.with_name(server.db.name + "-wal")
    wait_for(lambda: wal.stat().st_size == 0, 10, "the WAL truncated after the load")


def test_restore_refuses_while_the_server_runs(server, backups):
    r = server.cli("restore", str(backups[-1][0]))
    assert r.returncode == 1 and "is using" in r.stderr and "stop it first" in r.stderr
    assert not list(server.db.parent.glob("*.before-restore-*"))
    r = server.cli("migrate")
    assert r.returncode == 1 and "is using" in r.stderr


def test_restore_swaps_in_the_backup_and_keeps_the_previous_file(backups, pyz_path, cache_home, tmp_path):
    backup = backups[-1][0]
    env = {**base_env(cache_home), "STOCKYARD_ENCRYPTION_KEY": SECRET}
    target = tmp_path / "site" / "stockyard.db"

    r = run(pyz_path, "restore", backup, "--db", target, env=env)
    assert r.returncode == 0, r.stderr
    assert "restored" in r.stdout and "previous database" not in r.stdout
    assert_same_content(backup, target, audit_may_add={"backup.restore"})

    # The current database crashed with unmerged writes in its WAL; restoring over it keeps them aside.
    subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA wal_autocheckpoint=0');"
                "c.execute(\"INSERT INTO meta VALUES ('crashed', '1')\"); c.commit(); os._exit(0)"
            ),
            str(target),
        ],
        check=True,
    )
    assert os.path.getsize(f"{target}-wal") > 0
    r = run(pyz_path, "restore", backup, "--db", target, env=env)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(f"{target}-wal") and not os.path.exists(f"{target}-shm"), "no stale WAL"
    (aside,) = target.parent.glob("stockyard.db.before-restore-*")
    assert f"previous database kept as {aside}" in r.stdout
    assert open_plain(aside).execute("SELECT value FROM meta WHERE key = 'crashed'").fetchone() is not None
    assert open_plain(target).execute("SELECT value FROM meta WHERE key = 'crashed'").fetchone() is None
    assert integrity(target) == "ok"
    check = verify_audit(target, SECRET)
    assert check.ok, check.reason
    actions = [row[0] for row in open_plain(target).execute("SELECT action FROM audit_log ORDER BY seq")]
    assert actions[-1] == "backup.restore"
    assert not list(target.parent.glob(".stockyard.db.restore-*")), "no temp files left behind"


def damaged(src, dst):
    data = open(src, "rb").read()
    open(dst, "wb").write(data[: len(data) // 2])
    return dst


def newer(src, dst):
    shutil.copyfile(src, dst)
    with sqlite3.connect(dst) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (9999, 'future', 'x', '2099-01-01')")
    return dst


def foreign(src, dst):
    with sqlite3.connect(dst) as conn:
        conn.execute("CREATE TABLE notes (x)")
    return dst


def with_trigger(src, dst):
    """A trigger that undoes every key revocation once it is in the live database."""
    shutil.copyfile(src, dst)
    with sqlite3.connect(dst) as conn:
        conn.execute(
            "CREATE TRIGGER keep_keys AFTER UPDATE OF revoked_at ON client_keys WHEN NEW.revoked_at IS NOT NULL "
            "BEGIN UPDATE client_keys SET revoked_at = NULL WHERE id = NEW.id; END"
        )
    conn.close()
    return dst


def with_view(src, dst):
    shutil.copyfile(src, dst)
    with sqlite3.connect(dst) as conn:
        conn.execute("CREATE VIEW keys_view AS SELECT * FROM client_keys")
    conn.close()
    return dst


def with_changed_index(src, dst):
    """An index of Stockyard's name, rebuilt with other SQL."""
    shutil.copyfile(src, dst)
    with sqlite3.connect(dst) as conn:
        name, table = conn.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name LIMIT 1"
        ).fetchone()
        conn.execute(f'DROP INDEX "{name}"')
        column = conn.execute(f'PRAGMA table_info("{table}")').fetchall()[0][1]
        conn.execute(f'CREATE INDEX "{name}" ON "{table}" ("{column}") WHERE "{column}" IS NOT NULL')
    conn.close()
    return dst


def forged_chain(src, dst):
    """The audit chain rewritten without the secret (all one can do with the file alone)."""
    shutil.copyfile(src, dst)
    conn = sqlite3.connect(dst, isolation_level=None)
    prev = audit.GENESIS
    for seq, ts, actor, action, target, details in conn.execute(
        "SELECT seq, ts, actor, action, target, details FROM audit_log ORDER BY seq"
    ).fetchall():
        h = audit.entry_hash(seq, ts, actor, action, target, details, prev, audit.MAC_PLAIN, None)
        conn.execute(
            "UPDATE audit_log SET prev_hash = ?, hash = ?, mac = ? WHERE seq = ?", (prev, h, audit.MAC_PLAIN, seq)
        )
        prev = h
    conn.close()
    return dst


def live_with_wal(src, dst):
    shutil.copyfile(src, dst)
    open(f"{dst}-wal", "wb").write(b"\x00" * 100)
    return dst


REFUSALS = [
    (damaged, "not a usable Stockyard database"),
    (newer, "is newer than this Stockyard"),
    (foreign, "is not a Stockyard database"),
    (live_with_wal, "has a -wal file beside it"),
    (with_trigger, "trigger 'keep_keys' (not made by Stockyard)"),
    (with_view, "view 'keys_view' (not made by Stockyard)"),
    (with_changed_index, "(its SQL differs from Stockyard's)"),
    (forged_chain, "chain tail is not keyed: rewritten without the secret"),
]


def test_restore_refuses_a_bad_source_and_changes_nothing(backups, pyz_path, cache_home, tmp_path):
    backup = backups[-1][0]
    env = {**base_env(cache_home), "STOCKYARD_ENCRYPTION_KEY": SECRET}
    procs = []
    for make, message in REFUSALS:
        folder = tmp_path / make.__name__
        folder.mkdir()
        target = folder / "stockyard.db"
        shutil.copyfile(backup, target)
        source = make(backup, folder / "source.db")
        proc = subprocess.Popen(
            [sys.executable, str(pyz_path), "restore", str(source), "--db", str(target)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append((proc, message, target))
    for proc, message, target in procs:
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 1 and message in stderr, stderr
        assert "Traceback" not in stderr
        assert open(target, "rb").read() == open(backup, "rb").read(), "the database is untouched"
        assert not list(target.parent.glob("*.before-restore-*"))


def test_restore_with_another_encryption_key_is_refused(backups, pyz_path, cache_home, tmp_path):
    backup = backups[-1][0]
    target = tmp_path / "stockyard.db"
    r = run(
        pyz_path,
        "restore",
        backup,
        "--db",
        target,
        env={**base_env(cache_home), "STOCKYARD_ENCRYPTION_KEY": "not-the-same-secret-at-all-000"},
    )
    assert r.returncode == 1 and "different STOCKYARD_ENCRYPTION_KEY" in r.stderr and "nothing was changed" in r.stderr
    assert not target.exists()


def test_moving_to_a_new_server_is_copying_two_files(server, pyz_path, tmp_path, cache_home, mock):
    """stockyard.pyz + a backup in an empty folder, the same encryption key: everything is there —
    traces, costs, a client key, a stored provider key (decryptable), module config, the audit chain."""
    backup = tmp_path / "backup.db"
    with Load(server.port, threads=4) as load:
        wait_for(lambda: len(load.answered) >= 30, 20, "load")
    # Configuration worth moving (last test of the module: the key turns authentication on).
    added = server.cli(
        "providers",
        "add",
        "moved",
        "--kind",
        "openai-compatible",
        "--base-url",
        mock.url + "/v1",
        "--models",
        "moved-",
        "--key-stdin",
        input="sk-moved-provider-key-0123456789",
    )
    assert added.returncode == 0, added.stderr
    assert server.cli("modules", "enable", "cache").returncode == 0
    created = server.cli("keys", "create", "--name", "mover", "--json")
    assert created.returncode == 0, created.stderr
    client_key = json.loads(created.stdout)["key"]
    assert server.cli("backup", str(backup)).returncode == 0
    new_host = tmp_path / "new-host"
    new_host.mkdir()
    shutil.copyfile(pyz_path, new_host / "stockyard.pyz")
    shutil.copyfile(backup, new_host / "stockyard.db")
    assert sorted(os.listdir(new_host)) == ["stockyard.db", "stockyard.pyz"]

    env = mock_env(cache_home, mock, OPENAI_API_KEY="sk-test-backup-123456", STOCKYARD_ENCRYPTION_KEY=SECRET)
    moved = ServerProcess(new_host / "stockyard.pyz", new_host / "stockyard.db", env).start()
    try:
        assert moved.request("GET", "/readyz")[0] == 200
        counts = assert_same_content(backup, new_host / "stockyard.db", dst_ran_a_server=True)
        assert counts["traces"] >= 30 and counts["rollups_daily"] >= 1 and counts["trace_bodies"] >= 30
        assert counts["audit_log"] >= 2 and counts["client_keys"] == 1 and counts["providers"] == 1
        check = verify_audit(new_host / "stockyard.db", SECRET)
        assert check.ok, check.reason
        auth = {"Authorization": f"Bearer {client_key}"}
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        assert moved.request("POST", "/v1/chat/completions", chat)[0] == 401, "the client key moved: auth is on"
        status, headers, _ = moved.request("POST", "/v1/chat/completions", chat, headers=auth)
        assert status == 200 and moved.trace(headers["x-stockyard-trace-id"])["key_id"]
        mock.clear()
        status, _, _ = moved.request("POST", "/v1/chat/completions", {**chat, "model": "moved-model"}, headers=auth)
        assert status == 200, "the stored provider key decrypts on the new host"
        assert mock.last("/chat/completions").headers["authorization"] == "Bearer sk-moved-provider-key-0123456789"
        listed = json.loads(moved.cli("modules", "show", "cache", "--json").stdout)
        assert listed["enabled"] is True
    finally:
        moved.stop()
    assert "Traceback" not in moved.log


def test_a_moved_database_without_its_secret_still_serves_and_says_why(server, pyz_path, tmp_path, cache_home, mock):
    """Forgetting STOCKYARD_ENCRYPTION_KEY on the new host: env providers keep working, the log says what is wrong."""
    backup = tmp_path / "backup.db"
    assert server.cli("backup", str(backup)).returncode == 0
    env = mock_env(cache_home, mock, OPENAI_API_KEY="sk-test-backup-123456")
    forgot = ServerProcess(pyz_path, backup, env).start()
    try:
        assert "STOCKYARD_ENCRYPTION_KEY" in forgot.log  # the keyed audit log cannot be written without it
        status, _, _ = forgot.request(
            "POST",
            "/v1/chat/completions",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-stockyard-cache": "bypass"},
        )
        assert status in (200, 401), "still serving (401 once the source had a client key)"
    finally:
        forgot.stop()
    assert "Traceback" not in forgot.log

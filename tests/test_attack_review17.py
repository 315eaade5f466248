"""Review 17: an attacker's and an operator's look where earlier rounds looked least — the
``serve --workers N`` group and its signals, the configuration file, webhooks and OTLP export,
backup, restore, retention and the vault — with real parts: server processes of the built pyz
(alone and as a group), the mock upstream, real SQLite files and raw sockets.

Each test names the hole it closes and failed on the code it was written against.
"""

from __future__ import annotations

import http.client
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import astuple
from pathlib import Path

import clirun
import pytest
from conftest import TEST_STORE, ServerProcess, base_env, mock_env, wait_for
from mock_upstream import MockUpstream

from stockyard.budgets import Budget
from stockyard.groupstate import StateServer

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def slow_request(port: int, answers: list) -> None:
    """One chat request; its status and trace id land in ``answers``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(CHAT), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        answers.append((resp.status, resp.getheader("x-stockyard-trace-id")))
    except (OSError, http.client.HTTPException) as exc:
        answers.append((None, repr(exc)))
    finally:
        conn.close()


def hang_up_during_a_request(server: ServerProcess, mock: MockUpstream) -> tuple[list, int]:
    """SIGHUP to the server while a request waits at the (slowed) mock: the request's answer,
    and the server's exit status."""
    answers: list = []
    before = len(mock.requests)
    mock.delay_ms = 400
    try:
        client = threading.Thread(target=slow_request, args=(server.port, answers))
        client.start()
        wait_for(lambda: len(mock.requests) > before, what="the request at the mock")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        client.join(30)
        return answers, server.proc.wait(30)
    finally:
        mock.delay_ms = 0
        server.stop()


@pytest.mark.serial
def test_a_hangup_stops_a_server_as_sigterm_does_and_keeps_the_answered_trace(pyz_path, cache_home, mock, tmp_path):
    """Hole: SIGHUP (the terminal of a foreground ``serve`` closing, or an operator's
    ``kill -HUP`` expecting a daemon's usual answer) had its default disposition and killed the
    process at once: the request in flight was cut, the traces in the writer's queue were lost
    and the database was left without its ``server.stop``. It now stops as SIGTERM does."""
    server = ServerProcess(pyz_path, tmp_path / "hup.db", mock_env(cache_home, mock), spawned=True).start()
    answers, code = hang_up_during_a_request(server, mock)
    assert code == 0, server.log
    assert [status for status, _ in answers] == [200], answers
    server.trace(answers[0][1])
    assert "received SIGHUP: finishing in-flight requests" in server.log
    assert "stopped; database closed" in server.log
    actions = [r["action"] for r in server.db_rows("SELECT action FROM audit_log ORDER BY seq")]
    assert actions[-1] == "server.stop"


@pytest.mark.serial
def test_a_hangup_stops_a_group_cleanly_and_leaves_no_private_folder(pyz_path, cache_home, mock, tmp_path):
    """Hole: SIGHUP killed a ``--workers`` group's parent outright: its private folder (the
    shared budget state's socket, the published metrics) stayed in the temp folder for ever,
    and the workers, orphaned, served on unsupervised with no budget state to call until they
    noticed. The parent now passes the stop on to every worker as for SIGTERM."""
    with tempfile.TemporaryDirectory(prefix="sy17-") as short:  # a Unix socket's path has ~100 bytes
        env = mock_env(cache_home, mock, TMPDIR=short)
        server = ServerProcess(pyz_path, tmp_path / "group.db", env, ["--workers", "2"], spawned=True).start()
        answers, code = hang_up_during_a_request(server, mock)
        left = [p.name for p in Path(short).iterdir()]
    assert code == 0, server.log
    assert [status for status, _ in answers] == [200], answers
    assert server.log.count("stopped; database closed") == 2, server.log
    assert not left


def test_a_config_file_that_is_a_pipe_is_refused_not_waited_on(pyz_path, cache_home, tmp_path):
    """Hole: ``config plan``/``apply`` and ``serve --config`` read the named file whole before
    checking its size: a named pipe (or a symlink to one, or to ``/dev/zero``) left where the
    file was kept the command waiting for ever, or reading without end. Only a regular file
    is read now, and never past the size limit."""
    pipe = tmp_path / "stockyard.toml"
    os.mkfifo(pipe)
    link = tmp_path / "linked.toml"
    link.symlink_to(pipe)
    env = base_env(cache_home)
    for path in (pipe, link):
        done = clirun.run(pyz_path, ["config", "plan", str(path), "--db", str(tmp_path / "c.db")], env, timeout=15)
        assert done.returncode != 0
        assert "not a regular file" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.skipif(TEST_STORE == "postgresql", reason="snapshots are of an SQLite file")
def test_a_snapshot_cut_by_a_crash_leaves_no_copy_of_the_database_behind(pyz_path, cache_home, mock, tmp_path):
    """Hole: a snapshot (or ``stockyard backup``) is written to ``.NAME.tmp-PID-THREAD`` and
    renamed; a process killed (SIGKILL, OOM) while writing it left that whole copy of the
    database — every prompt — beside the snapshot for good, one more after each such crash
    (the next process has another pid), until the disk was full. The next copy to the same
    place now removes those whose process is gone, never one a live process is writing."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    snapshot = tmp_path / "snap.db"
    crashed = tmp_path / f".snap.db.tmp-{dead.pid}-140000000000"
    crashed.write_bytes(b"SQLite format 3\0" + b"\0" * 1024 * 1024)
    writing = tmp_path / f".snap.db.tmp-{os.getpid()}-140000000000"  # a live process's copy in progress
    writing.write_bytes(b"SQLite format 3\0")
    env = mock_env(cache_home, mock)
    args = ["--snapshot", str(snapshot), "--snapshot-every", "1s"]
    server = ServerProcess(pyz_path, tmp_path / "live.db", env, args).start()
    try:
        wait_for(snapshot.exists, what="the first snapshot")
    finally:
        assert server.stop() == 0
    assert not crashed.exists()
    assert writing.exists()


@pytest.mark.skipif(TEST_STORE == "postgresql", reason="it restores an SQLite file")
def test_a_restore_cut_by_a_crash_leaves_no_copy_behind_after_the_next(pyz_path, cache_home, tmp_path):
    """Hole: ``restore`` prepares the new database as ``.NAME.restore-PID`` (with its -wal)
    beside the live one; a restore killed half way left that whole copy there for good. The
    next restore of the database now removes it (it holds the lock: no other restore runs)."""
    env = {**base_env(cache_home), "STOCKYARD_ENCRYPTION_KEY": "review17-secret-0123456789abcdef"}
    live, backup = tmp_path / "live.db", tmp_path / "backup.db"
    assert clirun.run(pyz_path, ["keys", "create", "--name", "alice", "--db", str(live)], env).returncode == 0
    assert clirun.run(pyz_path, ["backup", str(backup), "--db", str(live)], env).returncode == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    crashed = [tmp_path / f".live.db.restore-{dead.pid}{end}" for end in ("", "-wal")]
    for path in crashed:
        path.write_bytes(b"SQLite format 3\0" + b"\0" * 65536)
    done = clirun.run(pyz_path, ["restore", str(backup), "--db", str(live)], env)
    assert done.returncode == 0, done.stderr
    assert not [path.name for path in crashed if path.exists()]


def test_a_reserve_read_after_its_dead_worker_was_reaped_holds_nothing(tmp_path):
    """Hole: a worker killed right after sending ``reserve`` leaves the call in the parent's
    socket buffer; when the parent's loop reaps the worker first (giving back its holds), then
    reads the call, it made a hold for the dead worker that nothing would ever settle or give
    back: that much of the budget stayed held until the group restarted. The parent now makes
    no hold for a worker it has already reaped."""
    server = StateServer(str(tmp_path), lambda budget, key: 0, (80,))
    selector = selectors.DefaultSelector()
    server.attach(selector)
    budget = Budget("key:k17", "key 'k17'", 100, "total")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped, as the group's parent reaps a worker killed with SIGKILL
    try:
        killed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        killed.connect(server.path)
        killed.sendall(json.dumps(["reserve", dead.pid, [list(astuple(budget))], 60, 0]).encode() + b"\n")
        killed.close()
        server.forget(dead.pid)  # the loop reaped it before reading its last call
        while events := selector.select(0.5):  # the connection, its call, its end of file
            for key, _ in events:
                key.data()
        assert server.ledger.usage(budget, 0) in (None, (0, 0))
    finally:
        selector.close()
        server.close()


@pytest.mark.skipif(TEST_STORE == "postgresql", reason="it names an SQLite file by two paths")
def test_a_second_server_on_the_database_by_a_symlinked_path_is_refused(pyz_path, cache_home, mock, tmp_path):
    """Hole: the lock that keeps a second server (and a restore) off a database in use was the
    file ``<db as named>.lock``, so the same database named by another path — a symlink to it,
    or a path through a symlinked folder — took a lock of its own: two servers served one file,
    each keeping its own budgets and rate windows in memory (a key's budget spent twice over),
    and a restore went ahead under a running server. The lock is now beside the file itself."""
    real = tmp_path / "data"
    real.mkdir()
    (tmp_path / "linked").symlink_to(real, target_is_directory=True)
    (tmp_path / "alias.db").symlink_to(real / "live.db")
    env = mock_env(cache_home, mock)
    server = ServerProcess(pyz_path, real / "live.db", env).start()
    try:
        for other in (tmp_path / "alias.db", tmp_path / "linked" / "live.db"):
            second = clirun.run(pyz_path, ["serve", "--port", "0", "--db", str(other)], env, timeout=20)
            assert second.returncode != 0
            assert "another Stockyard server" in second.stderr, second.stderr
            restore = clirun.run(pyz_path, ["restore", str(tmp_path / "none.db"), "--db", str(other)], env)
            assert "is using" in restore.stderr, restore.stderr
    finally:
        assert server.stop() == 0


@pytest.mark.skipif(TEST_STORE == "postgresql", reason="it restores an SQLite file")
def test_a_restore_through_a_symlinked_database_path_restores_the_database(pyz_path, cache_home, tmp_path):
    """Hole: ``restore --db LINK``, LINK a symlink to the database, renamed the restored file
    over the symlink itself: it said the restore was done, yet the database the servers open by
    its real path was the old one, and the link now named a different file. The restore now
    replaces the file the path resolves to."""
    env = base_env(cache_home)
    real = tmp_path / "live.db"
    link = tmp_path / "link.db"
    link.symlink_to(real)
    backup = tmp_path / "backup.db"
    assert clirun.run(pyz_path, ["keys", "create", "--name", "alice", "--db", str(real)], env).returncode == 0
    assert clirun.run(pyz_path, ["backup", str(backup), "--db", str(real)], env).returncode == 0
    assert clirun.run(pyz_path, ["keys", "create", "--name", "bob", "--db", str(real)], env).returncode == 0
    done = clirun.run(pyz_path, ["restore", str(backup), "--db", str(link)], env)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink()
    listed = clirun.run(pyz_path, ["keys", "list", "--json", "--db", str(real)], env)
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["alice"], listed.stdout


def test_an_otlp_endpoint_with_a_password_in_it_is_refused_without_echoing_it(pyz_path, cache_home, tmp_path):
    """Hole: ``STOCKYARD_OTLP_ENDPOINT=https://user:token@collector`` was taken as it is: the
    standard library cannot send URL credentials (each export failed), and every failure was
    logged with the whole URL — the collector's token in the server's log. Credentials in the
    URL are refused at start, never echoed, pointing to ``STOCKYARD_OTLP_HEADERS``."""
    token = "otlp-token-never-logged-4f9a"
    env = {**base_env(cache_home), "STOCKYARD_OTLP_ENDPOINT": f"http://exporter:{token}@127.0.0.1:9"}
    done = clirun.run(pyz_path, ["serve", "--port", "0", "--db", str(tmp_path / "o.db")], env, timeout=20)
    assert done.returncode != 0
    assert "STOCKYARD_OTLP_HEADERS" in done.stderr, done.stderr
    assert token not in done.stdout + done.stderr


@pytest.mark.skipif(TEST_STORE == "postgresql", reason="snapshots are of an SQLite file")
def test_a_snapshot_path_that_is_the_database_is_refused_at_start(pyz_path, cache_home, tmp_path):
    """Hole: ``--snapshot`` naming the database itself (the same path, a symlink to it, or its
    ``-wal``) was accepted: every interval a copy was renamed over the live database file,
    unlinking the file the server's connections held open beneath them (SQLite's guarantees
    assume nobody replaces it). It is refused at start, as ``stockyard backup`` refuses the
    live file."""
    live = tmp_path / "live.db"
    (tmp_path / "alias.db").symlink_to(live)
    env = base_env(cache_home)
    for snapshot in (live, tmp_path / "alias.db", tmp_path / "live.db-wal"):
        args = ["serve", "--port", "0", "--db", str(live), "--snapshot", str(snapshot)]
        done = clirun.run(pyz_path, args, env, timeout=20)
        assert done.returncode != 0
        assert "is the database" in done.stderr, done.stderr

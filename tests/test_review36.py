"""Review36: an attacker's and a bad day's review of the stop that brought realtime limits, restore's
``--keep-previous``, the webhook outbox and the workers' ledger resync. Each test names the hole it
closes and failed on the code it was written against; every process is a real ``stockyard.pyz``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import TEST_STORE, ServerProcess, base_env, mock_env, open_database, wait_for
from module_helpers import ADMIN_KEY, chat, put_module
from test_data34 import run
from test_realtime import upgrade

SECRET = "review36-encryption-secret-0123456789abcdef"
sqlite_only = pytest.mark.skipif(TEST_STORE == "postgresql", reason="SQLite files: restore of one file")


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


def test_a_realtime_response_corrects_the_end_user_window_it_was_counted_in(pyz_path, cache_home, mock, tmp_path):
    """Hole: a Realtime response is counted in its end user's tpm window as it begins, and its tokens
    were put in the window the ``userlimits`` options name as it ENDS. An operator who gave the key its
    own end-user limit meanwhile (an override: window ``key:<id>|user`` instead of ``*|user``) had the
    response's tokens added to a window that never counted it — and never taken out again, as the
    window slid (only the entries in it are): the end user's HTTP requests refused for tokens it never
    used. Now the tokens go where the response was counted."""
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN_KEY)
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        srv.keys.update(srv.create_keys({"app": []}))
        key_id = srv.db_rows("SELECT id FROM client_keys WHERE name = 'app'")[0]["id"]
        put_module(srv, "userlimits", {"tpm": 1_000_000})
        raw = upgrade(srv, "app", extra="x-stockyard-user: uma\r\n")
        assert raw.status == 101 and raw.event()["type"] == "session.created"
        held = {"output_modalities": ["text"], "metadata": {"mock": "hold"}}  # done only once cancelled
        raw.send_json({"type": "response.create", "response": held})
        assert raw.until("response.output_text.delta")[0]["type"] == "response.created"
        put_module(srv, "userlimits", {"tpm": 1_000_000, "overrides": {f"key:{key_id}": {"tpm": 100}}})
        uma = {**srv.auth("app"), "x-stockyard-user": "uma"}
        first = chat(srv, headers=uma, max_tokens=1)
        assert first[0] == 200, first
        raw.send_json({"type": "response.cancel"})
        usage = raw.until("response.done")[-1]["response"]["usage"]
        assert usage["input_tokens"] + usage["output_tokens"] > 100  # alone more than the key's end-user tpm
        sql = "SELECT id FROM traces WHERE endpoint = 'realtime' AND end_user = 'uma'"
        wait_for(lambda: srv.db_rows(sql), 10, "the response billed")
        second = chat(srv, headers=uma, max_tokens=1)
        assert second[0] == 200, second  # the window holds the first chat's tokens, not the response's
        raw.close()
    finally:
        srv.stop()


@pytest.mark.skipif(TEST_STORE != "postgresql", reason="the replicas' shared rate windows: PostgreSQL's")
def test_two_replicas_sessions_creating_at_once_are_held_to_the_keys_rpm(pyz_path, cache_home, mock, tmp_path):
    """Hole: a client's ``response.create`` was checked against the key's rpm, then counted with no
    limit: sessions of a key with rpm 1 on two replicas that both checked before either counted were
    both sent on. Here both wait on the window's lock (another session holds it) after their check;
    let go, both were counted and both reached the provider. Now the count is the check (as an HTTP
    request's admission is): one goes on, the other is told ``rate_limit_exceeded``."""
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN_KEY)
    replicas = [ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start() for _ in range(2)]
    try:
        secret = replicas[0].create_keys({"one": ["--rpm", "1"]})["one"]
        key_id = replicas[0].db_rows("SELECT id FROM client_keys WHERE name = 'one'")[0]["id"]
        for srv in replicas:
            srv.keys["one"] = secret
            wait_for(lambda srv=srv: srv.request("GET", "/v1/models", headers=srv.auth("one"))[0] == 200, 10, "key")
        sessions = [upgrade(srv, "one", extra="OpenAI-Beta: review36-race\r\n") for srv in replicas]
        assert all(s.status == 101 and s.event()["type"] == "session.created" for s in sessions)
        other, watch = open_database(replicas[0].db), open_database(replicas[0].db)
        other.execute("START TRANSACTION")
        other.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"rate:{key_id}",))
        try:
            for raw in sessions:
                raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
            waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            wait_for(lambda: watch.execute(waiting).fetchone()[0] == 2, 10, "both counts waiting on the window")
        finally:
            other.execute("ROLLBACK")
            other.close()
            watch.close()
        ends = sorted(raw.until("response.done")[-1]["type"] for raw in sessions)
        for raw in sessions:
            raw.close()
        assert ends == ["error", "response.done"], ends
        assert [beta for beta, _ in mock.realtime_asked].count("review36-race") == 1
    finally:
        for srv in replicas:
            srv.stop()

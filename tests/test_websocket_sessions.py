"""The Responses API's WebSocket mode used as a coding agent uses it, for a long while: the server's
keys changing under an open socket, turns chained across the processes of a group or replicas,
keys refused mid-socket, the socket's limits at their ends (found by review ws26)."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ServerProcess, mock_env, open_database, wait_for
from mock_upstream import Reply
from test_attack_review16 import start
from test_responses_websocket import ADMIN, MODELS, Raw, create

from stockyard.keys import PREFIX_LEN, hash_key, new_key_id, new_secret

ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


def unseen_key(server: ServerProcess, name: str) -> str:
    """A client key in the database that the server has not seen: committed without the change
    counter that tells servers to reload, as a replica's or the CLI's key is before the server's
    next look (``STOCKYARD_CONFIG_POLL``). Its secret."""
    secret = new_secret()
    conn = open_database(server.db)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO client_keys (id, name, prefix, hash, created_at) VALUES (?, ?, ?, ?, ?)",
            (new_key_id(), name, secret[:PREFIX_LEN], hash_key(secret), "2026-01-01T00:00:00Z"),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return secret


@pytest.mark.parametrize("model", list(MODELS.values()))
def test_a_socket_continues_its_own_turn_after_the_server_learns_its_key(
    pyz_path, cache_home, mock, tmp_path_factory, model
):
    """A key made by the CLI is known to the server only at its next look (``STOCKYARD_CONFIG_POLL``; a
    replica: on PostgreSQL's notice). A socket opened meanwhile is served in open mode and its turn
    stored without a key; the server then learns the keys, and the socket's next turn, now its key's,
    named its own previous response and got a 404 (the row was nobody's). The socket's own turns
    made without a key become its key's once the key is known."""
    server = start(pyz_path, cache_home, mock, tmp_path_factory, "late-key")
    try:
        secret = unseen_key(server, "late")
        assert server.request("POST", "/v1/responses", {"model": model, "input": "open"})[0] == 200  # not known yet
        raw = Raw(server, secret)
        assert raw.status == 101
        raw.send_json(create(model, "first"))
        first = raw.until("response.completed")[-1]
        assert first["type"] == "response.completed", first
        status, _, _ = server.request("POST", "/api/keys", {"name": "another"}, headers=ADMIN_AUTH)
        assert status == 201  # the admin API's change reloads the keys at once: the CLI's key is known now
        assert server.request("POST", "/v1/responses", {"model": model, "input": "open"})[0] == 401
        raw.send_json(create(model, "second", previous_response_id=first["response"]["id"]))
        second = raw.until("response.completed")[-1]
        assert second["type"] == "response.completed", second
        status, _, _ = server.request(
            "GET", f"/v1/responses/{first['response']['id']}", headers={"Authorization": f"Bearer {secret}"}
        )
        assert status == 200  # the key's over HTTP too, on any process
        raw.close()
    finally:
        server.stop()
    assert "Traceback" not in server.log


# -- across processes: a workers group, PostgreSQL replicas ---------------------------------------------


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def completed(raw: Raw, body: dict) -> dict:
    """One turn on ``raw``: its completed response (the test fails on anything else)."""
    raw.send_json(body)
    last = raw.until("response.completed")[-1]
    assert last["type"] == "response.completed", last
    return last["response"]


def http_turn(server: ServerProcess, secret: str, body: dict) -> dict:
    """One turn over HTTP on a connection of its own (either worker may take it): its response."""
    status, _, answer = server.request("POST", "/v1/responses", body, headers=bearer(secret))
    assert status == 200, answer[:300]
    return json.loads(answer)


def sent_with(mock, marker: str) -> str:
    """What the provider was sent by the one call whose body carries ``marker``, as text."""
    found = [json.dumps(r.json) for r in list(mock.requests) if r.json and marker in json.dumps(r.json)]
    assert len(found) == 1, (marker, len(found))
    return found[0]


def refused(raw: Raw, body: dict) -> dict:
    """One turn on ``raw`` that must be refused: its ``error`` event."""
    raw.send_json(body)
    event = raw.event()
    assert event["type"] == "error", event
    return event


def interleaved_chain(servers: list[ServerProcess], secret: str, tag: str, n: int) -> None:
    """One key's chain that goes socket → HTTP → another socket → a local (``store: false``) turn on
    it, each on whichever process takes it; the other socket does not find that local turn."""
    model = "claude-haiku-4-5"  # translated: Stockyard keeps the conversation, so the last call shows it whole
    one, two = Raw(servers[n % len(servers)], secret), Raw(servers[(n + 1) % len(servers)], secret)
    try:
        previous = completed(one, create(model, f"{tag} chain {n} turn 0 "))["id"]
        body = {"model": model, "input": f"{tag} chain {n} turn 1 ", "previous_response_id": previous}
        previous = http_turn(servers[(n + 1) % len(servers)], secret, body)["id"]
        previous = completed(two, create(model, f"{tag} chain {n} turn 2 ", previous_response_id=previous))["id"]
        local = completed(two, create(model, f"{tag} chain {n} turn 3 ", previous_response_id=previous, store=False))
        error = refused(one, create(model, "not mine", previous_response_id=local["id"]))
        assert error["status"] == 404, error
        completed(
            one, create(model, f"{tag} chain {n} turn 4 ", previous_response_id=previous)
        )  # the stored one: found
    finally:
        one.close()
        two.close()


def check_interleaved(servers: list[ServerProcess], secret: str, mock, chains: int = 6) -> None:
    tag = os.urandom(4).hex()  # the mock is the session's: another test's chains are not these
    """``chains`` interleaved chains at once: each turn found the one before it, whatever process took it."""
    with ThreadPoolExecutor(chains) as pool:
        list(pool.map(lambda n: interleaved_chain(servers, secret, tag, n), range(chains)))
    for n in range(chains):
        last = sent_with(mock, f"{tag} chain {n} turn 3 ")
        assert all(f"{tag} chain {n} turn {t} " in last for t in range(3)), last[:500]
        assert f"{tag} chain {n} turn 3 " not in sent_with(mock, f"{tag} chain {n} turn 4 ")


def test_one_keys_sockets_and_http_turns_across_two_workers(pyz_path, cache_home, mock, tmp_path_factory):
    server = start(pyz_path, cache_home, mock, tmp_path_factory, "ws-workers", "--workers", "2")
    try:
        secret = server.create_keys({"agent": []})["agent"]
        wait_for(lambda: server.request("GET", "/v1/models", headers=bearer("sk-sy-nobody"))[0] == 401, what="keys on")
        check_interleaved([server], secret, mock)
    finally:
        server.stop()
    assert "Traceback" not in server.log


@pytest.mark.usefixtures("pg_cluster")
def test_one_keys_sockets_and_http_turns_across_two_replicas(pyz_path, cache_home, mock, pg_url):
    replicas = [replica(pyz_path, cache_home, mock, pg_url) for _ in range(2)]
    try:
        status, _, made = replicas[0].request("POST", "/api/keys", {"name": "agent"}, headers=ADMIN_AUTH)
        assert status == 201, made
        secret = json.loads(made)["key"]
        for r in replicas:
            wait_for(lambda r=r: r.request("GET", "/v1/models", headers=bearer(secret))[0] == 200, what="the key")
        check_interleaved(replicas, secret, mock)
    finally:
        for r in replicas:
            r.stop()
    assert not any("Traceback" in r.log for r in replicas)


def server_env(cache_home, mock, **extra: str) -> dict[str, str]:
    """A server's environment: the mock as its OpenAI and Anthropic providers, the admin key."""
    anthropic = {"ANTHROPIC_API_KEY": "sk-ant-test-0123456789abcdef", "ANTHROPIC_BASE_URL": mock.url}
    return mock_env(cache_home, mock, **anthropic, STOCKYARD_ADMIN_KEY=ADMIN, **extra)


def replica(pyz_path, cache_home, mock, pg_url: str, **extra: str) -> ServerProcess:
    return ServerProcess(pyz_path, pg_url, server_env(cache_home, mock, **extra)).start()  # type: ignore[arg-type]


@pytest.fixture
def pair(pyz_path, cache_home, mock, pg_url):
    """Two replicas on one PostgreSQL database."""
    replicas = [replica(pyz_path, cache_home, mock, pg_url) for _ in range(2)]
    yield replicas
    for r in replicas:
        r.stop()
    assert not any("Traceback" in r.log for r in replicas)


def replica_key(replicas: list[ServerProcess], **fields) -> tuple[str, str]:
    """A key made through the first replica's admin API, once every replica takes it: (id, secret)."""
    status, _, made = replicas[0].request("POST", "/api/keys", fields, headers=ADMIN_AUTH)
    assert status == 201, made
    key = json.loads(made)
    for r in replicas:
        wait_for(lambda r=r: r.request("GET", "/v1/models", headers=bearer(key["key"]))[0] == 200, what="the key")
    return key["id"], key["key"]


def alive(raw: Raw) -> None:
    raw.send_frame(0x9, b"alive")
    assert raw.frame() == (0xA, b"alive")


def test_a_budget_spent_over_both_replicas_refuses_the_sockets_next_turn(pair, mock):
    """Turns of one key on a socket on one replica and over HTTP on the other until the budget is
    spent: the socket's next turn is the 429 ``budget_exceeded`` event, the socket stays open, and
    the ledger's spend is exactly the traces' costs, nothing left held."""
    key_id, secret = replica_key(pair, name="thrifty", budget_usd="0.00005", budget_period="total")
    raw = Raw(pair[0], secret)
    turns, answered = 0, []
    while True:
        raw.send_json(create("gpt-4o-mini", f"socket turn {turns}", max_output_tokens=16))
        last = raw.until("response.completed")[-1]
        if last["type"] == "error":
            break
        turns += 1
        http = {"model": "gpt-4o-mini", "input": "http", "max_output_tokens": 16}
        answered.append(pair[1].request("POST", "/v1/responses", http, headers=bearer(secret))[0])
        assert turns < 50, "the budget never ran out"
    assert (last["status"], last["error"]["code"]) == (429, "budget_exceeded"), last
    assert turns >= 2, turns
    alive(raw)
    raw.close()

    def settled() -> tuple[list, list]:
        ledger = pair[1].db_rows("SELECT spent_uc, reserved_uc FROM budget_ledger WHERE scope = ?", (f"key:{key_id}",))
        traced = pair[1].db_rows(
            "SELECT COALESCE(SUM(cost_uc), 0) AS cost, COUNT(*) AS n FROM traces WHERE key_id = ? AND status = 200",
            (key_id,),
        )
        return ledger, traced

    ledger, traced = wait_for(lambda: (s := settled())[0] and s[0][0]["reserved_uc"] == 0 and s, what="settled")
    assert ledger[0]["spent_uc"] == traced[0]["cost"] > 0, (ledger, traced)
    assert set(answered) <= {200, 429}, answered
    assert traced[0]["n"] == turns + answered.count(200), (turns, answered, traced)


def test_an_rpm_reached_over_both_replicas_refuses_the_sockets_next_turn(pair, mock):
    _, secret = replica_key(pair, name="paced", rpm=4)
    raw = Raw(pair[0], secret)
    for i in range(2):
        completed(raw, create("gpt-4o-mini", f"socket {i}"))
        http_turn(pair[1], secret, {"model": "gpt-4o-mini", "input": f"http {i}"})
    calls = len(mock.requests)
    error = refused(raw, create("gpt-4o-mini", "one too many"))
    assert (error["status"], error["error"]["code"]) == (429, "rate_limit_exceeded"), error
    assert len(mock.requests) == calls
    alive(raw)
    raw.close()


def test_a_key_revoked_on_the_other_replica_ends_the_socket(pair, mock):
    """``keys revoke`` (the CLI, any process): the replica holding the socket hears of it, and the
    socket's next turn is the 401 event, then close 1008; nothing reaches the provider."""
    _, secret = replica_key(pair, name="leaving")
    raw = Raw(pair[0], secret)
    completed(raw, create("gpt-4o-mini", "before"))
    done = pair[1].cli("keys", "revoke", "leaving")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: pair[0].request("GET", "/v1/models", headers=bearer(secret))[0] == 401, what="the revocation")
    calls = len(mock.requests)
    error = refused(raw, create("gpt-4o-mini", "after"))
    assert error["status"] == 401, error
    assert raw.close_code() == 1008
    assert len(mock.requests) == calls
    raw.close()


# -- long sockets: the limits' ends, configuration changes, one worker stopped -----------------------------


def test_the_lifetime_and_idle_timeout_pass_while_a_turn_streams(pyz_path, cache_home, mock, tmp_path_factory):
    """A turn still streaming when the idle timeout (1 s) and the lifetime (2 s) pass is not cut: it
    ends whole, traced with its cost; then the lifetime's event and close 1000."""
    srv = start(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        "ws-ends",
        STOCKYARD_WEBSOCKET_IDLE_TIMEOUT="1",
        STOCKYARD_WEBSOCKET_LIFETIME="2",
        STOCKYARD_WEBSOCKET_PING_INTERVAL="0",
    )
    held = threading.Event()
    try:
        raw = Raw(srv, "anything")
        opened = time.monotonic()
        mock.enqueue(Reply(held_after=2, held=held))
        raw.send_json(create("gpt-4o-mini", "a long answer"))
        first = raw.event()
        assert first["type"] == "response.created", first
        raw.sock.settimeout(3.5)  # past both limits with the answer held mid-stream: nothing closes the socket
        got = []
        with pytest.raises(TimeoutError):
            while True:
                got.append(raw.frame())
        assert all(opcode == 0x1 for opcode, _ in got), got
        assert time.monotonic() - opened > 3
        raw.sock.settimeout(10)
        held.set()
        events = raw.until("response.completed")
        assert events[-1]["type"] == "response.completed", events[-1]
        limit = raw.event()
        assert limit["error"]["code"] == "websocket_connection_limit_reached", limit
        assert raw.close_code() == 1000
        raw.close()
        trace = wait_for(lambda: srv.db_rows("SELECT status, cost_uc FROM traces WHERE tags LIKE '%websocket%'"))
        assert trace[0]["status"] == 200 and trace[0]["cost_uc"] > 0, trace
    finally:
        held.set()
        mock.clear_replies()
        srv.stop()
    assert "Traceback" not in srv.log


def turn_of(raw: Raw, mock, body: dict, want: int | None = None) -> dict | None:
    """A turn on ``raw`` while a change made elsewhere is on its way to the socket's process: its
    last event if it is what the change makes of it (completed; or the ``want`` status, nothing then
    sent to the provider), else None (the old configuration still: try again)."""
    calls = len(mock.requests)
    raw.send_json(body)
    last = raw.until("response.completed")[-1]
    if last["type"] == "error" and last["status"] == want:
        assert len(mock.requests) == calls, last
        return last
    return last if want is None and last["type"] == "response.completed" else None


def with_keys(pyz_path, cache_home, mock, tmp_path_factory, name: str, keys: list[str], *args: str) -> ServerProcess:
    """A server (``args``: ``--workers 2``…) started with client keys made before it: every process knows them."""
    srv = ServerProcess(
        pyz_path, tmp_path_factory.mktemp(name) / "stockyard.db", server_env(cache_home, mock), list(args)
    )
    srv.keys = srv.create_keys({k: [] for k in keys})  # on its database before it starts: no process in open mode
    return srv.start()


def test_configuration_changes_reach_an_open_socket(pyz_path, cache_home, mock, tmp_path_factory):
    """Changes made while a socket is open apply from its next turn, as over HTTP: an alias turned on
    (by the CLI, another process: seen at the next look), the key's model allow-list narrowed (a 403
    event, the socket goes on)."""
    srv = with_keys(pyz_path, cache_home, mock, tmp_path_factory, "ws-config", ["agent"], "--workers", "2")
    try:
        raw = Raw(srv, srv.secret("agent"))
        completed(raw, create("gpt-4o-mini", "before"))
        assert srv.cli("modules", "set", "alias", "aliases.agent-model=anthropic/claude-haiku-4-5").returncode == 0
        assert srv.cli("modules", "enable", "alias").returncode == 0
        aliased = wait_for(lambda: turn_of(raw, mock, create("agent-model", "through the alias")), what="the alias")
        assert aliased["type"] == "response.completed" and "claude" in aliased["response"]["model"], aliased
        assert srv.cli("keys", "update", "agent", "--models", "claude-haiku-4-5").returncode == 0
        error = wait_for(lambda: turn_of(raw, mock, create("gpt-4o-mini", "not allowed now"), 403), what="the list")
        assert error["error"]["type"] == "permission_error", error
        alive(raw)
        raw.close()
    finally:
        srv.stop()
    assert "Traceback" not in srv.log

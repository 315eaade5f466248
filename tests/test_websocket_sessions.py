"""The Responses API's WebSocket mode used as a coding agent uses it, for a long while: the server's
keys changing under an open socket, turns chained across the processes of a group or replicas,
keys refused mid-socket, the socket's limits at their ends (found by review ws26)."""

from __future__ import annotations

import json
import os
import signal
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


def test_a_closed_sockets_turns_are_its_keys_once_the_key_is_known(pyz_path, cache_home, mock, tmp_path_factory):
    """The same, but the socket ends (its client leaves; an idle timeout, the lifetime) before another
    turn: the client goes on over HTTP or a new socket naming the response it was given. The turns the
    socket stored with no key are given to the key as it closes, if the server knows the key by then."""
    server = start(pyz_path, cache_home, mock, tmp_path_factory, "late-key-closed")
    try:
        secret = unseen_key(server, "late")
        raw = Raw(server, secret)
        first = completed(raw, create("claude-haiku-4-5", "first"))
        status, _, _ = server.request("POST", "/api/keys", {"name": "another"}, headers=ADMIN_AUTH)
        assert status == 201
        assert server.request("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "open"})[0] == 401
        raw.send_frame(0x8, b"\x03\xe8")
        assert raw.close_code() == 1000
        raw.close()
        wait_for(lambda: server.metric("websocket_connections_open") == 0, what="the socket ended")
        body = {"model": "claude-haiku-4-5", "input": "second", "previous_response_id": first["id"]}
        status, _, answer = server.request("POST", "/v1/responses", body, headers=bearer(secret))
        assert status == 200, answer[:300]
        assert "first" in json.dumps(mock.requests[-1].json)
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
    # the key made before the group starts: a worker that has not seen it yet would serve in open mode
    server = with_keys(pyz_path, cache_home, mock, tmp_path_factory, "ws-workers", ["agent"], "--workers", "2")
    try:
        check_interleaved([server], server.secret("agent"), mock)
    finally:
        server.stop()
    assert "Traceback" not in server.log


@pytest.mark.usefixtures("pg_cluster")
def test_one_keys_sockets_and_http_turns_across_two_replicas(pyz_path, cache_home, mock, pg_url):
    replicas = [replica(pyz_path, cache_home, mock, pg_url) for _ in range(2)]
    try:
        check_interleaved(replicas, replica_key(replicas, name="agent")[1], mock)
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
    for r in replicas:  # keys on there (a replica that has not heard of any yet takes any key: open mode)
        wait_for(lambda r=r: r.request("GET", "/v1/models", headers=bearer("sk-sy-nobody"))[0] == 401, what="keys on")
    return key["id"], key["key"]


def alive(raw: Raw) -> None:
    raw.send_frame(0x9, b"alive")
    assert raw.frame() == (0xA, b"alive")


def spend_until_refused(on: ServerProcess, http: ServerProcess, secret: str) -> tuple[int, list[int]]:
    """A socket turn on ``on``, an HTTP turn on ``http``, and again, until the socket's turn is the 429
    ``budget_exceeded`` event (the socket stays open): the socket turns answered, the HTTP statuses."""
    raw = Raw(on, secret)
    turns, answered = 0, []
    while True:
        raw.send_json(create("gpt-4o-mini", f"socket turn {turns}", max_output_tokens=16))
        last = raw.until("response.completed")[-1]
        if last["type"] == "error":
            break
        turns += 1
        body = {"model": "gpt-4o-mini", "input": "http", "max_output_tokens": 16}
        answered.append(http.request("POST", "/v1/responses", body, headers=bearer(secret))[0])
        assert turns < 50, "the budget never ran out"
    assert (last["status"], last["error"]["code"]) == (429, "budget_exceeded"), last
    assert turns >= 2 and set(answered) <= {200, 429}, (turns, answered)
    alive(raw)
    raw.close()
    return turns, answered


def test_a_budget_spent_over_both_replicas_refuses_the_sockets_next_turn(pair, mock):
    """Turns of one key on a socket on one replica and over HTTP on the other until the budget is
    spent: the socket's next turn is the 429 ``budget_exceeded`` event, the socket stays open, and
    the ledger's spend is exactly the traces' costs, nothing left held."""
    key_id, secret = replica_key(pair, name="thrifty", budget_usd="0.00005", budget_period="total")
    turns, answered = spend_until_refused(pair[0], pair[1], secret)

    def settled() -> tuple[list, list]:
        ledger = pair[1].db_rows("SELECT spent_uc, reserved_uc FROM budget_ledger WHERE scope = ?", (f"key:{key_id}",))
        traced = pair[1].db_rows(
            "SELECT COALESCE(SUM(cost_uc), 0) AS cost, COUNT(*) AS n FROM traces WHERE key_id = ? AND status = 200",
            (key_id,),
        )
        return ledger, traced

    def written() -> bool:  # settled (after each answer) and every answered turn's trace written (by either writer)
        ledger, traced = settled()
        return bool(ledger) and ledger[0]["reserved_uc"] == 0 and traced[0]["n"] == turns + answered.count(200)

    wait_for(written, what="settled and traced")
    ledger, traced = settled()
    assert ledger[0]["spent_uc"] == traced[0]["cost"] > 0, (ledger, traced)


def billed(server: ServerProcess, key_id: str, traced: int) -> dict[int, int]:
    """Once ``traced`` turns of the key are: its traces by status, each answered one costed exactly
    (from the provider's usage) and above nothing. (A 401 names no key: the key was refused.)"""
    sql = "SELECT status, cost_uc, cost_status FROM traces WHERE key_id = ?"
    rows = wait_for(lambda: len(r := server.db_rows(sql, (key_id,))) >= traced and r, what=f"{traced} traces")
    assert all(r["cost_status"] == "exact" and r["cost_uc"] > 0 for r in rows if r["status"] == 200), rows
    statuses: dict[int, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return statuses


def test_an_rpm_reached_over_both_replicas_refuses_the_sockets_next_turn(pair, mock):
    key_id, secret = replica_key(pair, name="paced", rpm=4)
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
    assert billed(pair[1], key_id, 5) == {200: 4, 429: 1}


def test_a_key_revoked_on_the_other_replica_ends_the_socket(pair, mock):
    """``keys revoke`` (the CLI, any process): the replica holding the socket hears of it, and the
    socket's next turn is the 401 event, then close 1008; nothing reaches the provider."""
    key_id, secret = replica_key(pair, name="leaving")
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
    assert billed(pair[1], key_id, 1) == {200: 1}


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


def with_keys(
    pyz_path, cache_home, mock, tmp_path_factory, name: str, keys: list[str] | dict[str, list[str]], *args: str
) -> ServerProcess:
    """A server (``args``: ``--workers 2``…) started with client keys made before it: every process knows them."""
    srv = ServerProcess(
        pyz_path, tmp_path_factory.mktemp(name) / "stockyard.db", server_env(cache_home, mock), list(args)
    )
    srv.keys = srv.create_keys(
        keys if isinstance(keys, dict) else {k: [] for k in keys}
    )  # on its database before it starts: no process in open mode
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


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def worker_holding(workers: set[int], port: int, raw: Raw) -> int:
    """The worker whose end of ``raw``'s connection it holds (by the socket's inode in /proc)."""
    client_port = raw.sock.getsockname()[1]
    inode = None
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port:
            inode = int(fields[9])
    assert inode is not None, client_port
    (holder,) = [pid for pid in workers if inode in socket_inodes(pid)]
    return holder


def test_sigterm_of_one_worker_closes_its_sockets_and_leaves_the_others(pyz_path, cache_home, mock, tmp_path_factory):
    """One worker of two told to stop (SIGTERM to it alone, as an orchestrator or a person might): its
    socket with a turn in flight ends that turn whole, then 1001, its idle ones 1001 at once; the
    other worker's sockets go on, a chain stored on the stopped worker continues on them, and the
    group replaces the worker."""
    from test_workers import workers_of

    srv = with_keys(pyz_path, cache_home, mock, tmp_path_factory, "ws-one-worker", ["agent"], "--workers", "2")
    held, started = threading.Event(), threading.Event()
    try:
        workers = wait_for(lambda: len(w := workers_of(srv)) == 2 and w, what="two workers")
        opened = [Raw(srv, srv.secret("agent")) for _ in range(12)]
        holders = {id(raw): worker_holding(workers, srv.port, raw) for raw in opened}
        assert len(set(holders.values())) == 2, "the kernel gave every socket to one worker"
        stopped = holders[id(opened[0])]
        mine = [raw for raw in opened if holders[id(raw)] == stopped]
        others = [raw for raw in opened if holders[id(raw)] != stopped]
        stored = completed(mine[0], create("claude-haiku-4-5", "kept on the stopped worker"))["id"]
        mock.enqueue(Reply(wait=held, hang_started=started))
        mine[0].send_json(create("gpt-4o-mini", "in flight at the stop"))
        assert started.wait(10)
        os.kill(stopped, signal.SIGTERM)
        assert [raw.close_code() for raw in mine[1:]] == [1001] * (len(mine) - 1)
        for raw in others:
            turn = create("claude-haiku-4-5", "on the other worker", previous_response_id=stored)
            completed(raw, turn)
            assert "kept on the stopped worker" in json.dumps(mock.requests[-1].json)
        held.set()
        assert mine[0].until("response.completed")[-1]["type"] == "response.completed"
        assert mine[0].close_code() == 1001
        for raw in opened:
            raw.close()
        wait_for(lambda: len(w := workers_of(srv)) == 2 and stopped not in w, what="the worker replaced")
        fresh = Raw(srv, srv.secret("agent"))
        completed(fresh, create("gpt-4o-mini", "after"))
        fresh.close()
    finally:
        held.set()
        srv.stop()
    assert "Traceback" not in srv.log


# -- limits: floods, long inputs, many sockets ---------------------------------------------------------------


def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_flood_of_small_messages_is_answered_one_event_each(pyz_path, cache_home, mock, tmp_path_factory):
    """10,000 small messages sent without waiting (not JSON, wrong types, creates while one is in
    flight): each is answered by one event, in order, the socket stays usable, memory stays flat."""
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "ws-flood")
    try:
        raw = Raw(srv, "anything")
        completed(raw, create("gpt-4o-mini", "warm"))
        before = rss_kb(srv.proc.pid)
        kinds = [b"not json", b"{}", b'{"type":"response.cancel"}', json.dumps(create("gpt-4o-mini", "x")).encode()]
        count = 10_000
        events: list[dict] = []

        def read_all() -> None:
            while len(events) < count:
                event = raw.event()
                if event["type"] in ("response.completed", "error"):
                    events.append(event)

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        began = time.monotonic()
        for i in range(count):
            raw.send_frame(0x1, kinds[i % len(kinds)])
        reader.join(120)
        took = time.monotonic() - began
        assert not reader.is_alive() and len(events) == count, len(events)
        codes: dict[str, int] = {}
        for event in events:
            key = event["type"] if event["type"] != "error" else event["error"]["code"]
            codes[key] = codes.get(key, 0) + 1
        after = rss_kb(srv.proc.pid)
        print(f"FLOOD {count} messages in {took:.1f} s; {codes}; RSS {before} -> {after} KB")
        completed(raw, create("gpt-4o-mini", "still here"))
        assert after - before < 30_000, (before, after)
        raw.close()
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


@pytest.mark.parametrize("model", list(MODELS.values()))
def test_a_turn_naming_1000_earlier_items(pyz_path, cache_home, mock, tmp_path_factory, model):
    """Codex sends the whole conversation as items: a turn whose input names 1,000 items of 20
    stored responses by ``item_reference`` (passed through: each id checked as this key's, 32 a
    statement; translated: each put in from the stored response, read once), then 1,000 plain items
    chained twice more as ``store: false`` on the socket. Each answered within seconds."""
    srv = with_keys(pyz_path, cache_home, mock, tmp_path_factory, "ws-items", ["agent", "other"])
    try:
        raw = Raw(srv, srv.secret("agent"))
        named = [completed(raw, create(model, f"stored {i}"))["output"][-1]["id"] for i in range(20)]
        refs = [{"type": "item_reference", "id": named[i % 20]} for i in range(1000)]
        began = time.monotonic()
        completed(raw, create(model, [*refs, {"role": "user", "content": "and now?"}]))
        took_refs = time.monotonic() - began
        sent = mock.requests[-1].json
        sent_items = sent.get("input") or sent.get("messages")
        assert len(sent_items) >= 1000 if model == MODELS["passthrough"] else len(sent_items) >= 2, len(sent_items)
        other = Raw(srv, srv.secret("other"))  # another key's names are refused, one statement for all
        error = refused(other, create(model, [*refs, {"role": "user", "content": "theirs"}]))
        assert error["status"] in (400, 404), error
        other.close()
        plain = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"item {i} " + "x" * 200} for i in range(1000)
        ]
        began = time.monotonic()
        previous = completed(raw, create(model, plain, store=False))["id"]
        for i in range(2):
            previous = completed(raw, create(model, f"more {i}", store=False, previous_response_id=previous))["id"]
        took_plain = time.monotonic() - began
        assert "item 0 " in json.dumps(mock.requests[-1].json)
        print(f"ITEMS {model}: 1000 references {took_refs:.2f} s; 1000 items chained 3 turns {took_plain:.2f} s")
        assert took_refs < 5 and took_plain < 10, (took_refs, took_plain)
        raw.close()
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def test_200_sockets_opened_and_closed_leave_no_threads_descriptors_or_memory(
    pyz_path, cache_home, mock, tmp_path_factory
):
    """Four waves of 50 sockets at once, each with a turn, closed by the client (half with a close
    frame, half by dropping the TCP connection): threads, descriptors and memory come back."""
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "ws-200")
    pid = srv.proc.pid

    def wave(n: int) -> None:
        opened = [Raw(srv, "anything") for _ in range(n)]
        assert {raw.status for raw in opened} == {101}
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda raw: completed(raw, create("gpt-4o-mini", "hi")), opened))
        for i, raw in enumerate(opened):
            if i % 2:
                raw.send_frame(0x8, b"\x03\xe8")
                assert raw.close_code() == 1000
            raw.close()
        wait_for(lambda: srv.metric("websocket_connections_open") == 0, what="every socket closed")

    def counts() -> tuple[int, int]:
        return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))

    try:
        wave(50)
        threads, fds = counts()
        rss = rss_kb(pid)
        for _ in range(3):
            wave(50)
        # the thread cache keeps finished connections' threads 30 s for the next (at most 256), and a
        # PostgreSQL read pool grows to its peak (8 turns at once here): a socket's left behind is 150 more
        wait_for(lambda: counts()[1] <= fds + 8, what=f"descriptors back near {fds}: {counts()}")
        # under load a wave can start before the last one's threads are back in the cache, which then holds more:
        # those end after the cache's 30 s idle, a thread left behind never does
        wait_for(lambda: counts()[0] <= threads + 8, 45, f"threads back near {threads}: {counts()}")
        after = counts()
        grown = rss_kb(pid) - rss
        print(f"SOCKETS 200: threads {threads} -> {after[0]}, fds {fds} -> {after[1]}, RSS +{grown} KB")
        assert after[0] <= threads + 8, (threads, after)
        assert grown < 20_000, grown
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def test_a_turn_still_streaming_at_the_end_of_the_grace(pyz_path, cache_home, mock, tmp_path_factory):
    """SIGTERM with a socket's turn held mid-stream past ``STOCKYARD_SHUTDOWN_GRACE``: the turn ends
    with ``response.failed`` (the server shut down), the socket with 1001, its trace is written, and
    the process exits 0."""
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "ws-grace", STOCKYARD_SHUTDOWN_GRACE="1")
    held = threading.Event()
    try:
        raw = Raw(srv, "anything")
        mock.enqueue(Reply(held_after=2, held=held))
        raw.send_json(create("gpt-4o-mini", "cut by the grace"))
        assert raw.event()["type"] == "response.created"
        srv.proc.send_signal(signal.SIGTERM)
        last = raw.until("response.failed")[-1]  # the Responses stream's own end, as over HTTP
        assert last["type"] == "response.failed", last
        assert "shut down" in last["response"]["error"]["message"], last
        assert raw.close_code() == 1001
        raw.close()
        assert srv.proc.wait(30) == 0
    finally:
        held.set()
        mock.clear_replies()
        srv.stop()
    traces = srv.db_rows("SELECT status FROM traces")
    assert len(traces) == 1, traces
    assert "Traceback" not in srv.log


def test_a_key_revoked_by_the_cli_ends_its_socket_on_a_workers_group(pyz_path, cache_home, mock, tmp_path_factory):
    """``keys revoke`` by the CLI while a socket of the key is open on one of two workers: that worker
    sees it at its next look (``STOCKYARD_CONFIG_POLL``); until then a turn is still served, from then
    on the turn is the 401 event and the socket closes (1008)."""
    srv = with_keys(pyz_path, cache_home, mock, tmp_path_factory, "ws-revoke", ["agent"], "--workers", "2")
    try:
        raw = Raw(srv, srv.secret("agent"))
        completed(raw, create("gpt-4o-mini", "before"))
        done = srv.cli("keys", "revoke", "agent")
        assert done.returncode == 0, done.stderr
        error = wait_for(lambda: turn_of(raw, mock, create("gpt-4o-mini", "after"), 401), what="the revocation")
        assert error["error"]["type"] == "authentication_error", error
        assert raw.close_code() == 1008
        raw.close()
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def test_a_budget_spent_over_a_workers_group_refuses_the_sockets_next_turn(
    pyz_path, cache_home, mock, tmp_path_factory
):
    """The same on ``--workers 2`` (the budget kept by the group's parent): the socket's turn is
    refused once the key's socket and HTTP turns, on either worker, spent it; never more is spent
    than the budget, and every answered turn is traced with its exact cost."""
    budget = {"thrifty": ["--budget-usd", "0.00005", "--budget-period", "total"]}
    srv = with_keys(pyz_path, cache_home, mock, tmp_path_factory, "ws-budget", budget, "--workers", "2")
    try:
        turns, answered = spend_until_refused(srv, srv, srv.secret("thrifty"))
        key_id = srv.db_rows("SELECT id FROM client_keys WHERE name = 'thrifty'")[0]["id"]
        statuses = billed(srv, key_id, turns + len(answered) + 1)
        assert statuses.get(200) == turns + answered.count(200), (statuses, turns, answered)
        spent = sum(r["cost_uc"] or 0 for r in srv.db_rows("SELECT cost_uc FROM traces WHERE key_id = ?", (key_id,)))
        assert 0 < spent <= 5_000, spent  # $0.00005 in micro-cents
    finally:
        srv.stop()
    assert "Traceback" not in srv.log

"""Review 16: the Responses API's WebSocket mode as an attacker (no key, a client key, another key's
ids) and as a real agent client (Codex's tool-call loop, the SDK's ``responses.connect()``), over
the built pyz, the mock upstream and raw sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import threading

import pytest
import rawhttp
from conftest import ServerProcess, mock_env, wait_for
from mock_upstream import Reply
from module_helpers import ADMIN_KEY, api, put_module
from test_responses_websocket import ADMIN, Raw, create, handshake

TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
GEMINI_KEY = "gemini-test-key-0123456789"


def start(pyz_path, cache_home, mock, tmp_path_factory, name: str, *args: str, **extra: str) -> ServerProcess:
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
        **{"STOCKYARD_ADMIN_KEY": ADMIN, **extra},
    )
    return ServerProcess(pyz_path, tmp_path_factory.mktemp(name) / "stockyard.db", env, list(args)).start()


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "ws16")
    made_keys(srv, {"alice": [], "bob": [], "mini": ["--models", "gpt-4o-mini"]})
    yield srv
    srv.stop()


def made_keys(server: ServerProcess, specs: dict[str, list[str]]) -> None:
    """Keys made now by the CLI, once the running server knows them (its key ring reloads; until
    then a server that had none is in open mode, where any key is taken)."""
    server.keys.update(server.create_keys(specs))

    def known() -> bool:
        if server.request("GET", "/v1/models", headers={"Authorization": "Bearer sk-sy-nobody"})[0] != 401:
            return False
        return all(server.request("GET", "/v1/models", headers=server.auth(name))[0] == 200 for name in specs)

    wait_for(known, what=f"the keys {sorted(specs)} known")


def fresh_key(server: ServerProcess, name: str, *args: str) -> str:
    made_keys(server, {name: list(args)})
    return server.secret(name)


def revoke(server: ServerProcess, name: str) -> None:
    done = server.cli("keys", "revoke", name)
    assert done.returncode == 0, done.stderr
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    wait_for(
        lambda: server.request("POST", "/v1/chat/completions", chat, server.auth(name))[0] == 401,
        what="the revocation",
    )


# -- the connection cap: a key's share ---------------------------------------------------------------


def test_one_key_cannot_take_every_websocket(pyz_path, cache_home, mock, tmp_path_factory):
    """Was: one client key could hold all ``STOCKYARD_WEBSOCKET_MAX_CONNECTIONS`` (each two threads) and
    every other key's handshake was a 503. Now a key holds a quarter of them at most (a 426, in
    OpenAI's shape, before the upgrade: its client goes on over HTTP), as the batch results readers
    are shared."""
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "wsshare", STOCKYARD_WEBSOCKET_MAX_CONNECTIONS="8")
    try:
        made_keys(srv, {"alice": [], "bob": []})
        alice = [Raw(srv, srv.secret("alice")) for _ in range(2)]
        assert [r.status for r in alice] == [101, 101]
        with rawhttp.connect(srv) as sock:
            sock.sendall(handshake(srv.secret("alice")).encode())
            status, head, body = rawhttp.read_response(sock)
        assert status == 426, (status, body)
        assert json.loads(body)["error"]["code"] == "too_many_websockets" and "upgrade" not in head
        bob = Raw(srv, srv.secret("bob"))  # another key's share is untouched
        assert bob.status == 101
        alice[0].send_frame(0x8, struct.pack("!H", 1000))
        assert alice[0].close_code() == 1000
        alice[0].close()
        again = wait_for(lambda: (r := Raw(srv, srv.secret("alice"))).status == 101 and r, what="alice's place freed")
        for r in [*alice[1:], bob, again]:
            r.close()
    finally:
        srv.stop()


# -- each turn's checks ---------------------------------------------------------------------------------


def test_a_warm_up_is_held_to_the_key_and_its_model_allow_list(server, mock):
    """Was: a ``generate: false`` warm-up never looked at the key: a key limited to gpt-4o-mini was
    answered for any model, and a revoked key's connection kept being answered (and kept alive)."""
    raw = Raw(server, server.secret("mini"))
    raw.send_json(create("claude-haiku-4-5", "warm", generate=False, store=False))
    error = raw.event()
    assert (error["type"], error["status"]) == ("error", 403), error
    raw.send_json(create("gpt-4o-mini", "warm", generate=False, store=False))  # its own model: answered
    assert raw.until("response.completed")[-1]["response"]["output"] == []
    raw.close()


def test_a_revoked_key_ends_its_connections(server, mock):
    """A key revoked while its connection is open: the next message (a turn or a warm-up) is the 401
    as an ``error`` event, then the connection closes (1008): was left open, every later message refused,
    the connection (and its share of the cap) held for the key until its lifetime."""
    fresh_key(server, "gone")
    turn, warm = Raw(server, server.secret("gone")), Raw(server, server.secret("gone"))
    turn.send_json(create("gpt-4o-mini", "before"))
    assert turn.until("response.completed")[-1]["type"] == "response.completed"
    revoke(server, "gone")
    calls = len(mock.requests)
    for raw, fields in [(turn, {}), (warm, {"generate": False, "store": False})]:
        raw.send_json(create("gpt-4o-mini", "after", **fields))
        error = raw.event()
        assert (error["type"], error["status"]) == ("error", 401), error
        assert error["error"]["type"] == "authentication_error"
        assert raw.close_code() == 1008
        raw.close()
    assert len(mock.requests) == calls


# -- Codex's tool-call loop on a store:false chain ------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash"])
def test_a_tool_call_loop_chained_on_the_socket_sends_the_call_with_its_output(server, mock, model):
    """As Codex runs it: turn 1 answers a ``function_call``; turn 2 sends only the
    ``function_call_output`` naming turn 1 by ``previous_response_id`` (``store: false``). The provider
    must get the call and its output paired, whether passed through or translated."""
    raw = Raw(server, server.secret("alice"))
    raw.send_json(create(model, "weather in Paris?", tools=TOOLS, store=False))
    first = raw.until("response.completed")[-1]["response"]
    calls = [o for o in first["output"] if o["type"] == "function_call"]
    assert len(calls) == 1, first
    call_id = calls[0]["call_id"]
    output = {"type": "function_call_output", "call_id": call_id, "output": "sunny"}
    raw.send_json({**create(model, [output], tools=TOOLS, store=False), "previous_response_id": first["id"]})
    second = raw.until("response.completed")[-1]
    assert second["type"] == "response.completed", second
    sent = mock.requests[-1].json
    text = json.dumps(sent)
    assert "weather in Paris?" in text and "sunny" in text
    if model == "gpt-4o-mini":
        kinds = [(i.get("type"), i.get("call_id")) for i in sent["input"] if isinstance(i, dict)]
        assert ("function_call", call_id) in kinds and ("function_call_output", call_id) in kinds, kinds
        assert kinds.index(("function_call", call_id)) < kinds.index(("function_call_output", call_id))
    elif model.startswith("claude"):
        blocks = [(m["role"], b) for m in sent["messages"] for b in m["content"] if isinstance(b, dict)]
        uses = [b["id"] for role, b in blocks if role == "assistant" and b["type"] == "tool_use"]
        results = [b["tool_use_id"] for role, b in blocks if role == "user" and b["type"] == "tool_result"]
        assert uses and uses == results, blocks
    else:
        parts = [(c["role"], p) for c in sent["contents"] for p in c["parts"]]
        assert any(role == "model" and "functionCall" in p for role, p in parts), parts
        assert any(role == "user" and "functionResponse" in p for role, p in parts), parts
    raw.close()


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
def test_a_store_false_turn_continuing_a_stored_response_can_be_continued(server, mock, model):
    """A connection resuming a stored conversation with ``store: false`` turns (an SDK client picking
    up an earlier session): was a 404 for the second, since the first, chained from a stored response,
    was kept neither there nor here. Now the connection keeps it, over the stored one it continues."""
    raw = Raw(server, server.secret("alice"))
    raw.send_json(create(model, "the stored question"))
    stored = raw.until("response.completed")[-1]["response"]["id"]
    other = Raw(server, server.secret("alice"))  # later, on another connection
    other.send_json(create(model, "the local question", previous_response_id=stored, store=False))
    local = other.until("response.completed")[-1]["response"]["id"]
    other.send_json(create(model, "the next question", previous_response_id=local, store=False))
    done = other.until("response.completed")[-1]
    assert done["type"] == "response.completed", done
    sent = json.dumps(mock.requests[-1].json)
    assert "the local question" in sent and "the next question" in sent
    if model.startswith("claude"):  # translated: the stored turn put in front by Stockyard
        assert "the stored question" in sent
    else:  # passed through: the provider keeps the stored one
        assert mock.requests[-1].json.get("previous_response_id") and "the stored question" not in sent
    for r in (raw, other):
        r.close()


def test_another_connections_local_response_is_not_found(server, mock):
    """A ``store: false`` response lives on its connection only: another connection of the same key
    naming it is a 404 ``error`` event, never that conversation."""
    one, two = Raw(server, server.secret("alice")), Raw(server, server.secret("alice"))
    one.send_json(create("gpt-4o-mini", "secret plans", store=False))
    first = one.until("response.completed")[-1]["response"]["id"]
    two.send_json(create("gpt-4o-mini", "what were they", store=False, previous_response_id=first))
    error = two.event()
    assert (error["type"], error["status"], error["error"]["param"]) == ("error", 404, "previous_response_id"), error
    for raw in (one, two):
        raw.close()


def test_a_key_over_its_rpm_is_refused_per_turn_and_the_connection_goes_on(server, mock):
    fresh_key(server, "slowpoke", "--rpm", "2")
    raw = Raw(server, server.secret("slowpoke"))
    for _ in range(2):
        raw.send_json(create("gpt-4o-mini", "hi"))
        assert raw.until("response.completed")[-1]["type"] == "response.completed"
    raw.send_json(create("gpt-4o-mini", "one too many"))
    error = raw.event()
    assert (error["type"], error["status"]) == ("error", 429), error
    raw.send_frame(0x9, b"alive")
    assert raw.frame() == (0xA, b"alive")
    raw.close()


# -- frames -----------------------------------------------------------------------------------------------


def test_a_character_split_across_fragments_and_odd_masks(server, mock):
    """A multi-byte character straddling two fragments, a ping between them, an all-zero mask and
    a 64-bit length for a small frame: one turn, the text whole."""
    raw = Raw(server, server.secret("alice"))
    data = json.dumps(create("gpt-4o-mini", "caf\u00e9 \U0001f600"), ensure_ascii=False).encode()
    cut = data.index("\U0001f600".encode()) + 2
    raw.send_frame(0x1, data[:cut], fin=False)
    raw.send_frame(0x9, b"between")
    mask = b"\0\0\0\0"
    rest = data[cut:]
    raw.sock.sendall(bytes([0x80, 0x80 | 127]) + struct.pack("!Q", len(rest)) + mask + rest)
    assert raw.frame() == (0xA, b"between")
    assert raw.until("response.completed")[-1]["type"] == "response.completed"
    assert "caf\u00e9 \U0001f600" in json.dumps(mock.requests[-1].json, ensure_ascii=False)
    raw.close()


@pytest.mark.parametrize(
    "payload, code",
    [(struct.pack("!H", 1000) + b"\xff", 1007), (struct.pack("!H", 999), 1002), (struct.pack("!H", 5000), 1002)],
)
def test_bad_close_frames(server, payload, code):
    raw = Raw(server, server.secret("alice"))
    raw.send_frame(0x8, payload)
    assert raw.close_code() == code
    raw.close()


def test_a_frame_just_over_the_cap_is_refused_before_it_is_read(pyz_path, cache_home, mock, tmp_path_factory):
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "wsedge", STOCKYARD_MAX_BODY_BYTES="4096")
    try:
        raw = Raw(srv, "anything")
        raw.sock.sendall(bytes([0x81, 0x80 | 126]) + struct.pack("!H", 4097) + b"\0\0\0\0")  # the header only
        assert raw.close_code() == 1009
        raw.close()
        raw = Raw(srv, "anything")
        body = json.dumps(create("gpt-4o-mini", "x")).encode()
        raw.send_frame(0x1, body + b" " * (4096 - len(body)))  # exactly the cap: taken
        assert raw.until("response.completed")[-1]["type"] == "response.completed"
        raw.close()
    finally:
        srv.stop()


# -- process-level: workers, SIGTERM, threads -------------------------------------------------------------


def tasks(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_closed_connections_leave_no_thread(pyz_path, cache_home, mock, tmp_path_factory):
    """Connections opened, used and closed, round after round: the process's thread count comes back
    to about what it was after the first round (each holds two threads while open, none after)."""
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "wsthreads")
    try:

        def round_of(n: int) -> None:
            opened = [Raw(srv, "anything") for _ in range(n)]
            for raw in opened:
                raw.send_json(create("gpt-4o-mini", "hi"))
                assert raw.until("response.completed")[-1]["type"] == "response.completed"
            for raw in opened:
                raw.send_frame(0x8, struct.pack("!H", 1000))
                assert raw.close_code() == 1000
                raw.close()

        round_of(4)  # the thread cache's threads and whatever starts on first use exist from here on
        before = tasks(srv.proc.pid)
        during = []
        for _ in range(3):
            round_of(4)
            during.append(tasks(srv.proc.pid))
        # a thread the cache started when a round came before the last one's threads were back waits
        # 30 s for work (threadcache): a few more may be idle; a thread kept per connection is 12 more
        wait_for(lambda: tasks(srv.proc.pid) <= before + 4, what=f"the task count back near {before} ({during})")
    finally:
        srv.stop()


def sigterm_closes_every_socket(srv: ServerProcess, opened: list[Raw]) -> None:
    """SIGTERM of the server (a group's parent: every worker): each socket closed with 1001, exit 0."""
    srv.proc.send_signal(signal.SIGTERM)
    assert [raw.close_code() for raw in opened] == [1001] * len(opened)
    for raw in opened:
        raw.close()
    assert srv.proc.wait(30) == 0


def test_sigterm_of_a_worker_group_closes_every_socket_with_1001(pyz_path, cache_home, mock, tmp_path_factory):
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "wsworkers", "--workers", "2")
    try:
        opened = [Raw(srv, "anything") for _ in range(6)]
        for raw in opened:
            raw.send_json(create("gpt-4o-mini", "hi"))
            assert raw.until("response.completed")[-1]["type"] == "response.completed"
        sigterm_closes_every_socket(srv, opened)
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def test_a_handshake_that_never_finishes_is_cut(pyz_path, cache_home, mock, tmp_path_factory):
    """No key, a handshake head never ended: cut at the request read deadline, as any HTTP request's,
    holding no WebSocket place meanwhile."""
    srv = start(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        "wsslow",
        STOCKYARD_WEBSOCKET_MAX_CONNECTIONS="1",
        STOCKYARD_REQUEST_READ_TIMEOUT="2",
    )
    try:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
        sock.sendall(handshake(None).encode()[:-4])  # no blank line: never finished
        other = Raw(srv, "anything")  # the one place is free meanwhile
        assert other.status == 101
        other.close()
        got = b""
        while data := sock.recv(1024):  # the server ends it (a 408 first, or nothing), well before 15 s
            got += data
        assert got == b"" or got.startswith(b"HTTP/1.1 408"), got
        sock.close()
    finally:
        srv.stop()


# -- the modules and the costs, as over HTTP ----------------------------------------------------------------


SECRET = "sk-proj-" + "A1b2C3d4E5f6G7h8J9k0" * 3


def websocket_traces(server: ServerProcess, count: int) -> list[dict]:
    sql = "SELECT * FROM traces WHERE tags LIKE '%websocket%' ORDER BY ts_ms"
    return wait_for(lambda: len(rows := server.db_rows(sql)) >= count and rows, what=f"{count} websocket traces")


def test_redaction_and_the_cache_apply_to_socket_turns(pyz_path, cache_home, mock, tmp_path_factory):
    """``redact`` in upstream mode: a secret in a turn's input, and in the conversation chained from it
    on the socket, never reaches the provider nor the stored trace; ``cache``: the same turn again is a
    hit, answered on the socket with no provider call and traced as one."""
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "wsmods", STOCKYARD_ADMIN_KEY=ADMIN_KEY)
    try:
        put_module(srv, "redact", {"mode": "upstream"})
        put_module(srv, "cache", {})
        raw = Raw(srv, "anything")
        raw.send_json(create("gpt-4o-mini", f"my key is {SECRET}", store=False))
        first = raw.until("response.completed")[-1]["response"]
        assert SECRET not in json.dumps(mock.requests[-1].json)
        raw.send_json(create("gpt-4o-mini", "and again", store=False, previous_response_id=first["id"]))
        assert raw.until("response.completed")[-1]["type"] == "response.completed"
        sent = json.dumps(mock.requests[-1].json)
        assert SECRET not in sent and "REDACTED" in sent and "and again" in sent
        calls = len(mock.requests)
        other = Raw(srv, "anything")
        other.send_json(create("gpt-4o-mini", "cache me", store=False))  # the cache takes store:false only
        assert other.until("response.completed")[-1]["type"] == "response.completed"

        wait_for(
            lambda: api(srv, "GET", "/api/modules/cache")[1]["status"]["entries"] >= 3,
            what="the answers cached (written after they went out)",
        )
        other.send_json(create("gpt-4o-mini", "cache me", store=False))
        hit = other.until("response.completed")
        assert hit[-1]["type"] == "response.completed" and hit[-1]["response"]["output"], hit
        assert len(mock.requests) == calls + 1  # the second was the cache's
        rows = websocket_traces(srv, 4)
        assert [r["cache_hit"] for r in rows][-2:] == [0, 1], rows
        stored = srv.db_rows("SELECT * FROM traces")
        assert SECRET not in json.dumps(stored, default=str)
        for r in (raw, other):
            r.close()
    finally:
        srv.stop()
    assert SECRET not in srv.log


def test_a_socket_turn_costs_what_the_same_http_stream_costs(server, mock):
    """To the micro-cent: the turn over the socket and the same ``POST /v1/responses`` streamed."""
    body = {"model": "gpt-4o-mini", "input": "price this exactly", "store": False}
    count = "SELECT count(*) AS n FROM traces WHERE endpoint = 'responses'"
    before = server.db_rows(count)[0]["n"]
    client = server.openai("bob")
    with client.responses.create(**body, stream=True) as stream:
        http_id = [e for e in stream if e.type == "response.completed"][0].response.id
    raw = Raw(server, server.secret("bob"))
    raw.send_json({"type": "response.create", **body})
    ws_id = raw.until("response.completed")[-1]["response"]["id"]
    raw.close()
    # both written (the writer commits each when it can: the HTTP turn's is not always first), then the newest two
    wait_for(lambda: server.db_rows(count)[0]["n"] == before + 2, what="both traces")
    rows = server.db_rows("SELECT tags, cost_uc FROM traces WHERE endpoint = 'responses' ORDER BY ts_ms DESC LIMIT 2")
    assert "websocket" in (rows[0]["tags"] or ""), rows
    assert http_id != ws_id and "websocket" not in (rows[1]["tags"] or "")
    assert rows[0]["cost_uc"] == rows[1]["cost_uc"] > 0, rows


@pytest.mark.parametrize("include", [[], ["reasoning.encrypted_content"]])
def test_a_thinking_claude_tool_loop_chained_on_the_socket(server, mock, include):
    """Claude with thinking on, a tool loop chained on the socket with ``store: false``: Anthropic refuses
    a tool result whose call's turn does not start with its thinking block, so the chain must carry it."""
    raw = Raw(server, server.secret("alice"))
    fields = {"tools": TOOLS, "store": False, "reasoning": {"effort": "low"}, "include": include}
    raw.send_json(create("claude-haiku-4-5", "weather in Paris?", **fields))
    first = raw.until("response.completed")[-1]["response"]
    call = [o for o in first["output"] if o["type"] == "function_call"][0]
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
    raw.send_json({**create("claude-haiku-4-5", [output], **fields), "previous_response_id": first["id"]})
    second = raw.until("response.completed")[-1]
    assert second["type"] == "response.completed", second
    sent = mock.requests[-1].json
    assert sent.get("thinking"), sent  # thinking was on
    assistant = [m for m in sent["messages"] if m["role"] == "assistant"][-1]
    assert assistant["content"][0]["type"] in ("thinking", "redacted_thinking"), assistant
    raw.close()


def test_a_key_whose_budget_is_spent_mid_connection_is_refused_per_turn(server, mock):
    fresh_key(server, "thrifty", "--budget-usd", "0.000001", "--budget-period", "total")
    raw = Raw(server, server.secret("thrifty"))
    raw.send_json(create("gpt-4o-mini", "spend it", max_output_tokens=16))
    first = raw.until("response.completed")[-1]
    refused = first if first["type"] == "error" else None
    if refused is None:  # the first turn fit: it spent the budget, the next does not
        raw.send_json(create("gpt-4o-mini", "once more", max_output_tokens=16))
        refused = raw.event()
    assert (refused["type"], refused["status"], refused["error"]["code"]) == ("error", 429, "budget_exceeded"), refused
    raw.send_frame(0x9, b"still open")
    assert raw.frame() == (0xA, b"still open")
    raw.close()


# -- the lifetime and the drain against a client that always has a turn in flight -----------------------


def back_to_back(raw: Raw, mock, turns: int) -> tuple[int, list[dict], int | None]:
    """Turns sent each the moment the last one's final event arrives, each taking the provider 0.6 s:
    how many completed, the events after the last, and the close code (None: never closed)."""
    done = 0
    for i in range(turns):
        mock.enqueue(Reply(hang_s=0.6))
        try:
            raw.send_json(create("gpt-4o-mini", f"turn {i}"))
        except OSError:
            break
        events = []
        while True:
            opcode, payload = raw.frame()
            if opcode == 0x8:
                return done, events, struct.unpack("!H", payload[:2])[0]
            events.append(json.loads(payload))
            if events[-1]["type"] in ("response.completed", "error"):
                break
        if events[-1]["type"] != "response.completed":
            return done, events, raw.close_code()
        done += 1
    return done, [], None


def test_the_lifetime_ends_a_connection_that_never_rests(pyz_path, cache_home, mock, tmp_path_factory):
    """Was: the lifetime was looked at only while no turn was in flight, so a client that sent each
    turn as the last one ended kept its connection past it, for ever. Now a turn sent past the
    lifetime is not taken: the ``websocket_connection_limit_reached`` event, then close 1000."""
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "wsnorest", STOCKYARD_WEBSOCKET_LIFETIME="2")
    try:
        raw = Raw(srv, "anything")
        done, events, code = back_to_back(raw, mock, 10)
        assert code == 1000 and done <= 5, (done, events, code)
        assert events[-1]["error"]["code"] == "websocket_connection_limit_reached", events
        raw.close()
    finally:
        mock.clear_replies()  # the turns not sent
        srv.stop()


def test_the_drain_ends_a_connection_that_never_rests(pyz_path, cache_home, mock, tmp_path_factory):
    """SIGTERM: the turn in flight ends, the next one is not taken, close 1001 (was: taken, and the
    next, until the grace ran out and the socket was cut)."""
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "wsdrainbusy")
    raw = Raw(srv, "anything")
    assert back_to_back(raw, mock, 1)[0] == 1
    srv.proc.send_signal(signal.SIGTERM)
    done, events, code = back_to_back(raw, mock, 10)
    assert code == 1001 and done <= 2, (done, events, code)
    raw.close()
    mock.clear_replies()
    assert srv.proc.wait(30) == 0


def test_on_postgresql_with_two_workers(pyz_path, cache_home, mock, pg_url):
    """Two workers sharing PostgreSQL: a response stored on one connection (whichever worker took it)
    is continued on others, a ``store: false`` chain stays on its connection, every turn is traced
    once; SIGTERM of the group closes every socket with 1001."""
    env = mock_env(cache_home, mock, ANTHROPIC_API_KEY="sk-ant-test-0123456789abcdef", ANTHROPIC_BASE_URL=mock.url)
    srv = ServerProcess(pyz_path, pg_url, env, ["--workers", "2"])
    srv.keys = srv.create_keys({"alice": []})
    srv.start()
    try:
        first = Raw(srv, srv.secret("alice"))
        first.send_json(create("claude-haiku-4-5", "stored on one worker"))  # translated: Stockyard stores it
        stored = first.until("response.completed")[-1]["response"]["id"]
        opened = [first, *(Raw(srv, srv.secret("alice")) for _ in range(5))]
        for i, raw in enumerate(opened):
            raw.send_json(create("claude-haiku-4-5", f"follow-up {i}", previous_response_id=stored, store=False))
            local = raw.until("response.completed")[-1]
            assert local["type"] == "response.completed", local
            assert "stored on one worker" in json.dumps(mock.requests[-1].json)
            local_id = local["response"]["id"]
            chained = create("claude-haiku-4-5", f"local {i}", previous_response_id=local_id, store=False)
            raw.send_json(chained)
            second = raw.until("response.completed")[-1]
            assert second["type"] == "response.completed", second
            assert f"follow-up {i}" in json.dumps(mock.requests[-1].json)
        rows = wait_for(
            lambda: len(r := srv.db_rows("SELECT id FROM traces WHERE tags LIKE '%websocket%'")) >= 13 and r,
            what="13 traces",
        )
        assert len(rows) == 13
        sigterm_closes_every_socket(srv, opened)
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def test_a_ping_flood_from_a_client_that_never_reads_frees_its_place(pyz_path, cache_home, mock, tmp_path_factory):
    """Pings sent without end, their pongs never read: nothing is buffered for the client in the server
    (a pong's write blocks, for ``STOCKYARD_IDLE_TIMEOUT`` at most), and once both directions stall
    in the kernel the connection is a silent one, ended by ``STOCKYARD_WEBSOCKET_IDLE_TIMEOUT``: the
    flood holds its place no longer than a client that says nothing."""
    srv = start(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        "wspings",
        STOCKYARD_WEBSOCKET_MAX_CONNECTIONS="1",
        STOCKYARD_IDLE_TIMEOUT="1",
        STOCKYARD_WEBSOCKET_IDLE_TIMEOUT="1.5",
    )
    try:
        flood = Raw(srv, "anything")
        flood.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ping = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125

        def send_pings() -> None:
            try:
                while True:
                    flood.sock.sendall(ping * 64)
            except OSError:
                pass  # the server ended the connection (or our own send timed out)

        threading.Thread(target=send_pings, daemon=True).start()
        with rawhttp.connect(srv) as sock:
            sock.sendall(handshake("anything").encode())
            assert rawhttp.read_response(sock)[0] == 426  # the one place is the flood's meanwhile
        fresh = wait_for(
            lambda: (r := Raw(srv, "anything")).status == 101 and r, timeout=20, what="the flood's place freed"
        )
        fresh.close()
        flood.close()
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def test_no_secret_in_the_log(server):
    """After every turn above on the module's server (refusals, revocations, errors included): no client
    key's secret, no provider key, and no traceback in the server's log."""
    secrets = [server.secret(name) for name in server.keys]
    assert secrets and not [s for s in secrets if s in server.log]
    assert "sk-ant-test-0123456789abcdef" not in server.log and GEMINI_KEY not in server.log
    assert "Traceback" not in server.log


def test_reasoning_items_on_a_chain_passed_through(server, mock):
    """Passed through with ``store: false``: a reasoning item the provider sent with its
    ``encrypted_content`` goes back whole (its id with it, which OpenAI requires), in its place before
    the call; one without it (nothing stored to name) is left out."""
    kept = {"type": "reasoning", "id": "rs_kept", "summary": [], "encrypted_content": "gAAAA-opaque"}
    bare = {"type": "reasoning", "id": "rs_bare", "summary": []}
    call = {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": "{}",
        "status": "completed",
    }
    usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
    response = {"id": "resp_reasoned", "object": "response", "model": "gpt-4o-mini", "usage": usage}
    mock.enqueue(
        Reply(
            sse=[
                json.dumps(
                    {"type": "response.created", "response": {**response, "status": "in_progress", "output": []}}
                ),
                json.dumps(
                    {
                        "type": "response.completed",
                        "response": {**response, "status": "completed", "output": [bare, kept, call]},
                    }
                ),
            ]
        )
    )
    raw = Raw(server, server.secret("alice"))
    raw.send_json(create("gpt-4o-mini", "think, then call", tools=TOOLS, store=False))
    first = raw.until("response.completed")[-1]["response"]
    assert first["id"] == "resp_reasoned", first
    output = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}
    raw.send_json({**create("gpt-4o-mini", [output], tools=TOOLS, store=False), "previous_response_id": first["id"]})
    assert raw.until("response.completed")[-1]["type"] == "response.completed"
    sent = mock.requests[-1].json["input"]
    kinds = [i.get("type", "message") for i in sent]
    assert kinds == ["message", "reasoning", "function_call", "function_call_output"], sent
    assert sent[1] == kept and "id" not in sent[2] and sent[2]["call_id"] == "call_1"
    raw.close()

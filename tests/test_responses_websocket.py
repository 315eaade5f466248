"""The Responses API's WebSocket mode (``ws://…/v1/responses``) through Stockyard: the official SDK's
``client.responses.connect()`` over the mock upstream, passed through (an OpenAI model) and
translated (a Claude model), several turns on one connection chained with ``store: false``, each
turn traced with its cost; and the protocol, the limits and the refusals over a raw socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import threading
import time

import clirun
import pytest
import rawhttp
from conftest import ServerProcess, base_env, mock_env, wait_for
from mock_upstream import TEXT, Reply
from openai import OpenAI

ADMIN = "admin-key-for-websocket-tests-0123456789"
MODELS = {"passthrough": "gpt-4o-mini", "translated": "claude-haiku-4-5"}
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example Sec-WebSocket-Key
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # and the Sec-WebSocket-Accept it gives for it


def start(pyz_path, cache_home, mock, tmp_path_factory, name: str, **extra: str) -> ServerProcess:
    env = mock_env(
        cache_home, mock, ANTHROPIC_API_KEY="sk-ant-test-0123456789abcdef", ANTHROPIC_BASE_URL=mock.url, **extra
    )
    env["STOCKYARD_ADMIN_KEY"] = ADMIN
    return ServerProcess(pyz_path, tmp_path_factory.mktemp(name) / "stockyard.db", env).start()


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "ws")
    srv.keys.update(srv.create_keys({"alice": [], "bob": []}))
    yield srv
    srv.stop()


@pytest.fixture(params=list(MODELS))
def model(request) -> str:
    return MODELS[request.param]


# -- a raw client ---------------------------------------------------------------------------------


def handshake(key: str | None, path: str = "/v1/responses", extra: str = "") -> str:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{auth}{extra}\r\n"
    )


class Raw:
    """A WebSocket client over a plain socket, to send what a library would not."""

    def __init__(self, server: ServerProcess, key: str | None, extra: str = "", path: str = "/v1/responses") -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.sock.sendall(handshake(key, path, extra).encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            assert data, self.buf
            self.buf += data
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head.decode()
        self.status = int(self.head.split(" ", 2)[1])

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> None:
        first = (0x80 if fin else 0) | opcode
        n = len(payload)
        length = bytes([n | (0x80 if masked else 0)]) if n < 126 else bytes([126 | (0x80 if masked else 0)])
        if n >= 126:
            length += struct.pack("!H", n) if n < 65536 else b""
            if n >= 65536:
                length = bytes([127 | (0x80 if masked else 0)]) + struct.pack("!Q", n)
        mask = os.urandom(4) if masked else b""
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if masked else payload
        self.sock.sendall(bytes([first]) + length + mask + body)

    def send_json(self, obj: dict) -> None:
        self.send_frame(0x1, json.dumps(obj).encode())

    def _need(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self) -> tuple[int, bytes]:
        b0, b1 = self._need(2)
        assert not b1 & 0x80, "a server's frames are never masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._need(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._need(8))[0]
        return b0 & 0x0F, self._need(n)

    def event(self) -> dict:
        opcode, payload = self.frame()
        assert opcode == 0x1, (opcode, payload)
        return json.loads(payload)

    def close_code(self) -> int:
        opcode, payload = self.frame()
        while opcode == 0x1:  # events before the close
            opcode, payload = self.frame()
        assert opcode == 0x8, (opcode, payload)
        return struct.unpack("!H", payload[:2])[0]

    def until(self, kind: str) -> list[dict]:
        events = [self.event()]
        while events[-1]["type"] not in (kind, "error"):
            events.append(self.event())
        return events

    def close(self) -> None:
        self.sock.close()


def create(model: str, text: str, **fields) -> dict:
    return {"type": "response.create", "model": model, "input": text, **fields}


# -- the official SDK -----------------------------------------------------------------------------


def sdk_turn(connection, **body) -> list:
    """One turn with the SDK's ``connection.response.create``: its events to the last."""
    connection.response.create(**body)
    events = []
    for event in connection:
        events.append(event)
        if event.type in ("response.completed", "response.failed", "error"):
            break
    return events


def test_sdk_turns_chained_on_one_connection_with_store_false(server, mock, model):
    """Three turns on one connection, each naming the last by ``previous_response_id`` with
    ``store: false``: the provider is sent the conversation whole each time (nothing was stored),
    every turn streams to ``response.completed`` and leaves a trace with its cost."""
    client: OpenAI = server.openai("alice")
    ids = []
    with client.responses.connect() as connection:
        previous = None
        for i, text in enumerate(["first question", "second question", "third question"]):
            fields = {"previous_response_id": previous} if previous else {}
            events = sdk_turn(connection, model=model, input=text, store=False, **fields)
            assert events[0].type == "response.created", events
            assert events[-1].type == "response.completed", events
            done = events[-1].response
            assert done.output_text == TEXT
            previous = done.id
            ids.append(done.id)
            sent = json.dumps(mock.requests[-1].json)
            assert "previous_response_id" not in sent  # chained here: the provider keeps nothing
            for earlier in ["first question", "second question", "third question"][: i + 1]:
                assert earlier in sent
            assert sent.count(TEXT) == i  # each earlier answer went back once
            if model == MODELS["passthrough"]:  # nothing is stored: no item may name one by its id
                assert all("id" not in item for item in mock.requests[-1].json["input"] if isinstance(item, dict))
    assert len(set(ids)) == 3
    rows = wait_for(
        lambda: (
            (
                r := server.db_rows(
                    "SELECT * FROM traces WHERE endpoint = 'responses' AND tags LIKE '%websocket%' ORDER BY ts_ms"
                )
            )
            and len([t for t in r if t["model"] == model]) >= 3
            and r
        )
    )
    mine = [t for t in rows if t["model"] == model][-3:]
    assert all(t["status"] == 200 and t["stream"] and t["cost_uc"] > 0 for t in mine), mine
    assert all(json.loads(t["tags"])["transport"] == "websocket" for t in mine)


def test_sdk_stored_responses_chain_as_over_http(server, mock):
    """With ``store`` on, the previous turn is the stored response, found as over HTTP (and
    retrievable over HTTP afterwards)."""
    client: OpenAI = server.openai("alice")
    with client.responses.connect() as connection:
        first = sdk_turn(connection, model="claude-haiku-4-5", input="remember 7")[-1].response
        second = sdk_turn(connection, model="claude-haiku-4-5", input="what was it", previous_response_id=first.id)
    assert second[-1].type == "response.completed", second
    assert "remember 7" in json.dumps(mock.requests[-1].json)
    assert client.responses.retrieve(second[-1].response.id).output_text == TEXT


def test_unknown_previous_response_is_an_error_event_and_the_connection_goes_on(server):
    raw = Raw(server, server.secret("alice"))
    assert raw.status == 101 and f"Sec-WebSocket-Accept: {ACCEPT}\r\n" in raw.head + "\r\n"
    raw.send_json(create("gpt-4o-mini", "hi", previous_response_id="resp_nothing_here", store=False))
    error = raw.event()
    assert error["type"] == "error" and error["status"] == 404, error
    assert error["error"]["param"] == "previous_response_id"
    raw.send_json(create("gpt-4o-mini", "hi again"))
    assert raw.until("response.completed")[-1]["type"] == "response.completed"
    raw.close()


def stored_turn(server, key: str, text: str) -> str:
    """The id of a response stored (``store`` on) for ``key`` by a turn over the SDK's connection."""
    with server.openai(key).responses.connect() as connection:
        return sdk_turn(connection, model="gpt-4o-mini", input=text)[-1].response.id


def test_another_keys_stored_response_is_not_found(server):
    first = stored_turn(server, "alice", "mine")
    raw = Raw(server, server.secret("bob"))
    raw.send_json(create("gpt-4o-mini", "theirs", previous_response_id=first))
    assert raw.event()["status"] == 404
    raw.close()


@pytest.mark.parametrize(
    "fields, param",
    [({"background": True}, "background"), ({"generate": "no"}, "generate"), ({"stream_id": "lane"}, "stream_id")],
)
def test_what_websocket_mode_does_not_serve_is_an_error_event(server, fields, param):
    raw = Raw(server, server.secret("alice"))
    raw.send_json(create("gpt-4o-mini", "hi", **fields))
    error = raw.event()
    assert (error["type"], error["status"], error["error"]["param"]) == ("error", 400, param), error
    raw.send_json(create("gpt-4o-mini", "hi", stream=False))  # stream is implicit: ignored
    assert raw.until("response.completed")[-1]["type"] == "response.completed"
    raw.close()


def test_a_warm_up_answers_an_id_at_once_and_the_turn_chained_from_it_sends_its_input(server, mock):
    """``generate: false`` (Codex warms a connection up so): was an error event. Now a response id
    with no output, answered without a provider call; the turn that names it sends its input."""
    raw = Raw(server, server.secret("alice"))
    calls = len(mock.requests)
    raw.send_json(create("gpt-4o-mini", "warm context", instructions="be brief", generate=False, store=False))
    events = raw.until("response.completed")
    assert [e["type"] for e in events] == ["response.created", "response.completed"], events
    warm = events[-1]["response"]
    assert warm["output"] == [] and warm["status"] == "completed" and warm["id"].startswith("resp_"), warm
    assert len(mock.requests) == calls  # nothing reached the provider
    raw.send_json(create("gpt-4o-mini", "the question", previous_response_id=warm["id"], store=False))
    assert raw.until("response.completed")[-1]["type"] == "response.completed"
    sent = mock.requests[-1].json
    assert json.dumps(sent["input"]).count("warm context") == 1 and "the question" in json.dumps(sent["input"])
    assert "previous_response_id" not in sent and "generate" not in sent
    raw.close()


def test_a_warm_up_chained_from_a_stored_response_is_refused(server):
    first = stored_turn(server, "alice", "stored turn")
    raw = Raw(server, server.secret("alice"))
    raw.send_json(create("gpt-4o-mini", "warm", previous_response_id=first, generate=False))
    error = raw.event()
    assert (error["type"], error["status"], error["error"]["param"]) == ("error", 400, "generate"), error
    raw.send_json(create("gpt-4o-mini", "hi"))  # the connection goes on
    assert raw.until("response.completed")[-1]["type"] == "response.completed"
    raw.close()


@pytest.mark.parametrize(
    "message, code",
    [(b"not json", "invalid_json"), (b"[1]", "invalid_json"), (b'{"type": "response.steer"}', "invalid_event")],
)
def test_a_message_that_is_not_a_create_is_an_error_event(server, message, code):
    raw = Raw(server, server.secret("alice"))
    raw.send_frame(0x1, message)
    error = raw.event()
    assert (error["status"], error["error"]["code"]) == (400, code), error
    raw.close()


def test_a_second_create_while_one_is_in_flight_is_refused(server, mock):
    held, started = threading.Event(), threading.Event()
    mock.enqueue(Reply(wait=held, hang_started=started))
    raw = Raw(server, server.secret("alice"))
    raw.send_json(create("gpt-4o-mini", "slow one"))
    assert started.wait(10)
    raw.send_json(create("gpt-4o-mini", "too soon"))
    error = raw.event()
    assert error["error"]["code"] == "response_already_in_flight", error
    raw.send_frame(0x9, b"still there?")  # answered while the turn waits for its provider
    assert raw.frame() == (0xA, b"still there?")
    held.set()
    events = raw.until("response.completed")
    assert events[-1]["type"] == "response.completed"
    assert "too soon" not in json.dumps(mock.requests[-1].json)
    raw.close()


# -- the handshake ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "sk-stockyard-wrong-0123456789"])
def test_no_key_or_a_wrong_one_is_the_http_401_never_a_socket(server, key):
    with rawhttp.connect(server) as sock:
        sock.sendall(handshake(key).encode())
        status, head, body = rawhttp.read_response(sock)
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    assert "upgrade" not in {k.lower() for k in head}


def test_other_paths_and_versions_are_refused(server):
    with rawhttp.connect(server) as sock:
        sock.sendall(handshake(server.secret("alice"), path="/v1/chat/completions").encode())
        status, _, body = rawhttp.read_response(sock)
    assert status == 426 and json.loads(body)["error"]["code"] == "websocket_not_supported"
    with rawhttp.connect(server) as sock:
        sock.sendall(handshake(server.secret("alice")).replace("Version: 13", "Version: 8").encode())
        status, head, _ = rawhttp.read_response(sock)
    assert status == 426 and head["sec-websocket-version"] == "13"
    with rawhttp.connect(server) as sock:
        sock.sendall(handshake(server.secret("alice")).replace(KEY, "short").encode())
        status, _, body = rawhttp.read_response(sock)
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_websocket_handshake"
    with rawhttp.connect(server) as sock:  # a web page's socket (cross-site WebSocket hijacking): refused
        sock.sendall(handshake(server.secret("alice"), extra="Origin: https://evil.example\r\n").encode())
        status, _, body = rawhttp.read_response(sock)
    assert status == 403 and json.loads(body)["error"]["code"] == "origin_not_allowed"
    status, head, _ = server.request("GET", "/v1/responses", headers=server.auth("alice"))
    assert status == 405 and head["allow"] == "POST"


def test_the_connection_cap(pyz_path, cache_home, mock, tmp_path_factory):
    """``STOCKYARD_WEBSOCKET_MAX_CONNECTIONS`` (3 here): a fourth handshake is a 426 before the
    upgrade, in OpenAI's shape, with no Upgrade offered (was a 503: Codex retried the socket before
    falling back; after a 426 it goes on over HTTP at once, and HTTP still serves it); a closed
    connection frees its place."""
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "wscap", STOCKYARD_WEBSOCKET_MAX_CONNECTIONS="3")
    try:
        assert (srv.metric("websocket_connections_open"), srv.metric("websocket_connections_refused_total")) == (0, 0)
        open_ = [Raw(srv, "anything") for _ in range(3)]
        assert [r.status for r in open_] == [101, 101, 101]
        assert srv.metric("websocket_connections_open") == 3
        with rawhttp.connect(srv) as sock:
            sock.sendall(handshake("anything").encode())
            status, head, body = rawhttp.read_response(sock)
            # the refused handshake's connection ends: frames a client sent right behind it are never read as HTTP
            assert head.get("connection") == "close" and sock.recv(1) == b"", head
        assert status == 426 and json.loads(body)["error"]["code"] == "too_many_websockets"
        assert "upgrade" not in head, head
        assert srv.metric("websocket_connections_refused_total") == 1
        answer = srv.openai("anything").responses.create(model="gpt-4o-mini", input="over HTTP")  # the fallback
        assert answer.status == "completed" and answer.output_text, answer
        open_[0].send_frame(0x8, struct.pack("!H", 1000))
        assert open_[0].close_code() == 1000
        open_[0].close()
        wait_for(lambda: srv.metric("websocket_connections_open") == 2, what="the closed connection's place given back")
        fourth = wait_for(lambda: (r := Raw(srv, "anything")).status == 101 and r, what="a place freed by a close")
        for r in [*open_[1:], fourth]:
            r.close()
    finally:
        srv.stop()


def test_the_websocket_cap_leaves_half_the_connection_cap_to_http(pyz_path, cache_home, mock, tmp_path_factory):
    """Was: ``STOCKYARD_WEBSOCKET_MAX_CONNECTIONS`` (64) was not bounded by ``STOCKYARD_MAX_CONNECTIONS``
    (4 here), though each socket holds one of those connections for its life: four sockets took every
    one and the next client, HTTP included, was refused at accept. Now the WebSocket cap is at most
    half of it: the third handshake is the 426, and the HTTP a refused client goes on over has room."""
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "wshalf", STOCKYARD_MAX_CONNECTIONS="4")
    try:
        open_ = [Raw(srv, "anything") for _ in range(2)]
        assert [r.status for r in open_] == [101, 101]
        with rawhttp.connect(srv) as sock:
            sock.sendall(handshake("anything").encode())
            status, _, body = rawhttp.read_response(sock)
        error = json.loads(body)["error"]
        assert (status, error["code"]) == (426, "too_many_websockets"), body
        assert "STOCKYARD_MAX_CONNECTIONS" in error["message"], error
        answer = srv.openai("anything").responses.create(model="gpt-4o-mini", input="over HTTP")
        assert answer.status == "completed", answer
        for r in open_:
            r.close()
    finally:
        srv.stop()


# -- frames -----------------------------------------------------------------------------------------


def test_ping_is_answered_and_close_is_echoed(server):
    raw = Raw(server, server.secret("alice"))
    raw.send_frame(0x9, b"hello")
    assert raw.frame() == (0xA, b"hello")
    raw.send_frame(0x8, struct.pack("!H", 1000) + b"bye")
    assert raw.close_code() == 1000
    assert raw.sock.recv(1) == b""  # the server closed the TCP connection after its close frame
    raw.close()


def test_many_empty_fragments_make_one_message(server):
    """A message in thousands of empty fragments is joined in one buffer (no object kept per
    fragment) and runs as one turn."""
    raw = Raw(server, server.secret("alice"))
    data = json.dumps(create("gpt-4o-mini", "in many pieces")).encode()
    raw.send_frame(0x1, data[:5], fin=False)
    empty = bytes([0x00, 0x80]) + b"\0\0\0\0"  # a masked continuation frame holding nothing
    raw.sock.sendall(empty * 20_000)
    raw.send_frame(0x0, data[5:], fin=True)
    assert raw.until("response.completed")[-1]["type"] == "response.completed"
    raw.close()


def test_fragmented_message_with_a_ping_between_is_one_turn(server):
    raw = Raw(server, server.secret("alice"))
    data = json.dumps(create("gpt-4o-mini", "in pieces")).encode()
    raw.send_frame(0x1, data[:10], fin=False)
    raw.send_frame(0x9, b"p")
    raw.send_frame(0x0, data[10:20], fin=False)
    raw.send_frame(0x0, data[20:], fin=True)
    assert raw.frame() == (0xA, b"p")
    assert raw.until("response.completed")[-1]["type"] == "response.completed"
    raw.close()


@pytest.mark.parametrize(
    "send, code",
    [
        (lambda r: r.send_frame(0x1, b'{"type": "x"}', masked=False), 1002),  # unmasked
        (lambda r: r.send_frame(0x1, b'"\xff\xfe"'), 1007),  # not UTF-8
        (lambda r: r.send_frame(0x2, b"\x00\x01"), 1003),  # binary
        (lambda r: r.send_frame(0x0, b"x"), 1002),  # a continuation with nothing begun
        (lambda r: r.send_frame(0x9, b"x" * 126), 1002),  # a control frame over 125 bytes
        (lambda r: r.send_frame(0x3, b"x"), 1002),  # an unknown opcode
        (lambda r: r.send_frame(0x8, b"\x03"), 1002),  # a close frame with half a code
        (lambda r: r.send_frame(0x8, struct.pack("!H", 1005)), 1002),  # a code no frame may carry
        (lambda r: r.send_frame(0x8, struct.pack("!H", 4001) + b"bye"), 4001),  # an application's code, echoed
        (lambda r: r.sock.sendall(bytes([0x81 | 0x40, 0x80]) + b"\0\0\0\0"), 1002),  # a reserved bit
    ],
)
def test_protocol_errors_close_with_their_code(server, send, code):
    raw = Raw(server, server.secret("alice"))
    send(raw)
    assert raw.close_code() == code
    raw.close()


def test_an_oversize_message_closes_with_1009_before_it_is_read(pyz_path, cache_home, mock, tmp_path_factory):
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "wsbig", STOCKYARD_MAX_BODY_BYTES="4096")
    try:
        raw = Raw(srv, "anything")  # no keys made: open mode
        assert raw.status == 101
        raw.sock.sendall(bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 1 << 40) + b"\0\0\0\0")  # announces 1 TiB
        assert raw.close_code() == 1009
        raw.close()
        raw = Raw(srv, "anything")
        raw.send_frame(0x1, b"x" * 3000, fin=False)
        raw.send_frame(0x0, b"x" * 3000, fin=True)  # together past the limit
        assert raw.close_code() == 1009
        raw.close()
        raw = Raw(srv, "anything")  # each message fits, the conversation chained on the socket does not
        raw.send_json(create("gpt-4o-mini", "a" * 2000, store=False))
        first = raw.until("response.completed")[-1]["response"]["id"]
        raw.send_json(create("gpt-4o-mini", "b" * 2500, store=False, previous_response_id=first))
        error = raw.event()
        assert (error["status"], error["error"]["code"]) == (400, "conversation_too_large"), error
        raw.close()
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def test_idle_and_lifetime_limits(pyz_path, cache_home, mock, tmp_path_factory):
    srv = start(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        "wslimits",
        STOCKYARD_WEBSOCKET_IDLE_TIMEOUT="1",
        STOCKYARD_WEBSOCKET_LIFETIME="2",  # past the idle timeout: only a client that keeps talking reaches it
        STOCKYARD_WEBSOCKET_PING_INTERVAL="0",  # never: the first frame is the close
    )
    try:
        raw = Raw(srv, "anything")
        opcode, payload = raw.frame()  # silent for a second: closed (and no ping before it)
        assert (opcode, struct.unpack("!H", payload[:2])[0]) == (0x8, 1000)
        raw.close()
        raw = Raw(srv, "anything")
        events = []

        def keep_talking() -> None:  # a fragment every half second: never idle (pings would not do), but
            try:  # the lifetime ends it
                raw.send_frame(0x1, b"{", fin=False)
                while True:
                    threading.Event().wait(0.5)
                    raw.send_frame(0x0, b" ", fin=False)
            except OSError:
                pass

        threading.Thread(target=keep_talking, daemon=True).start()
        while True:
            opcode, payload = raw.frame()
            if opcode == 0x1:
                events.append(json.loads(payload))
            if opcode == 0x8:
                break
        assert struct.unpack("!H", payload[:2])[0] == 1000
        assert events[-1]["error"]["code"] == "websocket_connection_limit_reached", events
        raw.close()
    finally:
        srv.stop()


def test_a_quiet_connection_is_pinged_and_pongs_do_not_keep_it_open(pyz_path, cache_home, mock, tmp_path_factory):
    """Was: the server never pinged, and a proxy in front (nginx: 60 s without a byte) dropped a socket
    that was quiet while its user thought. Now a ping goes out once ``STOCKYARD_WEBSOCKET_PING_INTERVAL``
    (0.2 s here) passed with no frame sent; a client that only answers them, and pings back, is still
    closed after ``STOCKYARD_WEBSOCKET_IDLE_TIMEOUT`` (2 s): pings and pongs are not its activity."""
    srv = start(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        "wsping",
        STOCKYARD_WEBSOCKET_PING_INTERVAL="0.2",
        STOCKYARD_WEBSOCKET_IDLE_TIMEOUT="2",
    )
    try:
        raw = Raw(srv, "anything")
        raw.sock.settimeout(5)  # each read waits for the server's next frame, 5 s at most
        opened, pings = time.monotonic(), []
        while (got := raw.frame())[0] != 0x8:
            opcode, payload = got
            assert opcode in (0x9, 0xA), got
            if opcode == 0x9:
                pings.append(time.monotonic() - opened)
                raw.send_frame(0xA, payload)  # answered, as a client library does
                raw.send_frame(0x9, b"still here")
        closed = time.monotonic() - opened
        assert struct.unpack("!H", got[1][:2])[0] == 1000
        assert len(pings) >= 3 and pings[0] < 1.5, pings
        assert 2 <= closed < 4.5, closed
        raw.close()
        raw = Raw(srv, "anything")  # a turn's events are frames sent: the ping comes after them, not between
        raw.sock.settimeout(5)
        raw.send_json(create("gpt-4o-mini", "hello"))
        while (got := raw.frame())[0] == 0x9:  # 0.2 s passed before the turn began (a loaded machine)
            raw.send_frame(0xA, got[1])
        kinds = []
        while got[0] == 0x1:
            kinds.append(json.loads(got[1])["type"])
            if kinds[-1] == "response.completed":
                break
            got = raw.frame()
        assert kinds and kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
        assert raw.frame()[0] == 0x9
        raw.close()
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


@pytest.mark.parametrize("value", ["soon", "-1", "1x"])
def test_a_bad_ping_interval_is_refused_at_start(pyz_path, cache_home, tmp_path, value):
    """``STOCKYARD_WEBSOCKET_PING_INTERVAL`` not a duration: ``serve`` refuses to start with one line
    naming the setting, never a traceback."""
    env = {**base_env(cache_home), "STOCKYARD_WEBSOCKET_PING_INTERVAL": value}
    done = clirun.run(pyz_path, ["serve", "--port", "0", "--db", str(tmp_path / "stockyard.db")], env, timeout=30)
    assert done.returncode != 0
    assert "STOCKYARD_WEBSOCKET_PING_INTERVAL" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_sigterm_lets_the_turn_in_flight_end_then_closes_with_1001(pyz_path, cache_home, mock, tmp_path_factory):
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "wsterm")
    held, started = threading.Event(), threading.Event()
    mock.enqueue(Reply(wait=held, hang_started=started))
    raw = Raw(srv, "anything")
    idle = Raw(srv, "anything")
    raw.send_json(create("gpt-4o-mini", "before the drain"))
    assert started.wait(10)
    srv.proc.send_signal(signal.SIGTERM)
    assert idle.close_code() == 1001  # no turn in flight: closed at once
    held.set()
    events = raw.until("response.completed")
    assert events[-1]["type"] == "response.completed"
    assert raw.close_code() == 1001
    assert srv.proc.wait(30) == 0
    assert "Traceback" not in srv.log


def test_handshake_and_a_turn_leave_no_traceback(server):
    assert "Traceback" not in server.log


def test_a_client_that_leaves_mid_turn_ends_the_upstream_call(server, mock):
    """The reader notices the socket close while the turn waits for its provider: the provider's
    connection is closed and the turn is traced ``client_disconnected``, billed the input the
    provider was sent as an estimate (gpt-4o-mini: 15 µ¢ an input token), no output."""
    started, hung_up = threading.Event(), threading.Event()
    mock.enqueue(Reply(hang_s=30, hang_started=started, hung_up=hung_up))
    raw = Raw(server, server.secret("alice"))
    raw.send_json(create("gpt-4o-mini", "leaving early", metadata={"probe": "leaves"}))
    assert started.wait(10)
    raw.sock.close()
    assert hung_up.wait(10)
    (trace,) = wait_for(
        lambda: server.db_rows("SELECT * FROM traces WHERE tags LIKE '%leaves%' AND outcome = 'client_disconnected'"),
        what="the turn traced client_disconnected",
    )
    assert trace["prompt_tokens"] > 0 and trace["completion_tokens"] == 0 and trace["usage_estimated"] == 1
    assert trace["cost_uc"] == trace["prompt_tokens"] * 15 and trace["cost_status"] == "estimate"


def test_a_client_that_does_not_read_is_not_buffered_for(pyz_path, cache_home, mock, tmp_path_factory):
    """Writes block on a client that stops reading, as an HTTP stream's do: the provider is not read
    on meanwhile, and after ``STOCKYARD_IDLE_TIMEOUT`` the write fails and the turn ends
    ``client_disconnected`` (the server held the socket buffers' worth, not the 24 MB answer)."""
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "wsslow", STOCKYARD_IDLE_TIMEOUT="1")
    delta = json.dumps({"type": "response.output_text.delta", "delta": "x" * 60_000})
    all_sent = threading.Event()
    mock.enqueue(Reply(sse=[delta] * 400, all_sent=all_sent))
    try:
        raw = Raw(srv, "anything")
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.send_json(create("gpt-4o-mini", "a long answer", metadata={"probe": "slow"}))
        rows = wait_for(
            lambda: srv.db_rows("SELECT outcome, status FROM traces WHERE tags LIKE '%slow%'"),
            timeout=30,
            what="the turn's trace",
        )
        assert rows[0]["outcome"] == "client_disconnected", rows
        assert not all_sent.is_set()  # the provider was not read to its end into memory
        raw.close()
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def test_the_next_turn_sent_the_moment_the_last_ends_is_taken(server):
    """A client answers ``response.completed`` with its next ``response.create`` at once (the SDK's
    tool loops do): the turn is no longer in flight from that event on, though its trace may not
    be written yet, so the next is never refused as ``response_already_in_flight``."""
    raw = Raw(server, server.secret("alice"))
    for i in range(10):
        raw.send_json(create("gpt-4o-mini", f"turn {i}"))
        events = raw.until("response.completed")
        assert events[-1]["type"] == "response.completed", events
    raw.close()

"""Memory that grows with what a client sends: each bound asserted on its structure or answer, not on RSS.

Measured against the real pyz before these bounds (bench-style, /proc/PID/status): one 32 MiB chat
body of ``{}`` values took the server from 37 MB to a 904 MB peak (872 MB still held after), and
four at once of 16 MiB each to 1.7 GB, 25 s of CPU each — a JSON value costs its parser 64-100
bytes however few bytes it took to send.
"""

from __future__ import annotations

import http.client
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ServerProcess, mock_env, served, wait_for

from stockyard.httpio import MAX_JSON_VALUES

CHAT = {"model": "gpt-4o-mini", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


def with_values(body: dict, field: str, item: str, count: int) -> bytes:
    """``body`` plus ``field``: a JSON array of ``count`` copies of ``item`` (raw JSON text)."""
    return (json.dumps(body)[:-1] + f', "{field}": [' + ",".join([item] * count) + "]}").encode()


def test_a_body_of_more_json_values_than_the_limit_is_a_413_before_it_is_parsed(openai_server: ServerProcess):
    """Was: parsed whole (3 MB of ``{}`` is ~1M dicts, ~70 MB; the 32 MiB body limit let one
    request take 900 MB), then relayed."""
    raw = with_values(CHAT, "x", "{}", MAX_JSON_VALUES)
    status, _, body = openai_server.request("POST", "/v1/chat/completions", raw=raw)
    assert status == 413, body[:300]
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and f"{MAX_JSON_VALUES:,}" in error["message"]
    raw = with_values({**CHAT, "model": "claude-x"}, "x", "[]", MAX_JSON_VALUES)
    status, _, body = openai_server.request(
        "POST", "/v1/messages", raw=raw, headers={"anthropic-version": "2023-06-01"}
    )
    assert status == 413 and json.loads(body)["type"] == "error", body[:300]


def test_commas_and_brackets_inside_strings_are_not_values(openai_server: ServerProcess):
    """Prose and code carry many commas and brackets in their strings: only the JSON's own count."""
    text = "a, b, [c], {d}, " * (MAX_JSON_VALUES // 3)
    body = {**CHAT, "messages": [{"role": "user", "content": text}]}
    status, _, answer = openai_server.request("POST", "/v1/chat/completions", body)
    assert status == 200, answer[:300]
    just_under = with_values(CHAT, "x", "1", MAX_JSON_VALUES - 100)
    status, _, answer = openai_server.request("POST", "/v1/chat/completions", raw=just_under)
    assert status == 200, answer[:300]


@pytest.fixture(scope="module")
def one_mib_server(pyz_path, cache_home, mock, tmp_path_factory):
    """Request bodies held at once bounded to 1 MiB in all."""
    env = mock_env(cache_home, mock, STOCKYARD_REQUEST_BODIES_MB="1")
    with served(pyz_path, tmp_path_factory, "bodies", env) as srv:
        yield srv


def begun_request(server: ServerProcess, length: int) -> socket.socket:
    """A chat request whose head says ``length`` bytes of body and whose body never comes."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"model": "gpt-4o-mini", ')
    return sock


def chat_of(size: int) -> bytes:
    """A chat body of ``size`` bytes."""
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": ""}]})
    return body.replace('"content": ""', '"content": "' + "x" * (size - len(body)) + '"').encode()


def test_request_bodies_held_at_once_are_bounded_in_bytes(one_mib_server: ServerProcess):
    """Was: bounded only by STOCKYARD_MAX_BODY_BYTES x STOCKYARD_MAX_CONNECTIONS (32 MiB x 1,024; one
    client key a quarter of them): 32 text bodies of 15 MB at once took the server to 1.3 GB, ~40 MB
    each. Past the bound a body waits for room, then is a 503 the SDKs retry; small ones pass."""
    server = one_mib_server
    held = begun_request(server, 700_000)
    try:
        wait_for(lambda: server.metric("request_bodies_bytes") == 700_000, what="the first body's bytes held")
        with ThreadPoolExecutor(2) as pool:  # each waits BODY_WAIT_S for room: the two waits at once
            sized = pool.submit(server.request, "POST", "/v1/chat/completions", raw=chat_of(4_000_000))
            chunked = pool.submit(chunked_chat, server, chat_of(600_000))
            status, headers, body = sized.result()
            assert status == 503, body[:300]
            assert json.loads(body)["error"]["code"] == "too_many_request_bodies" and headers["retry-after"] == "1"
            status, body = chunked.result()  # a chunked body is counted as it comes
            assert status == 503 and json.loads(body)["error"]["code"] == "too_many_request_bodies", body[:300]
        assert server.metric("request_bodies_refused_total") == 2
        status, _, body = server.request("POST", "/v1/chat/completions", raw=chat_of(2_000))
        assert status == 200, body[:300]  # a small body needs no room
    finally:
        held.close()
    wait_for(lambda: server.metric("request_bodies_bytes") == 0, what="the first body's bytes given back")
    status, _, body = server.request("POST", "/v1/chat/completions", raw=chat_of(600_000))
    assert status == 200, body[:300]
    status, _, body = server.request("POST", "/v1/chat/completions", raw=chat_of(1_500_000))
    assert status == 200, body[:300]  # alone, a body larger than the bound is served


def chunked_chat(server: ServerProcess, body: bytes) -> tuple[int, bytes]:
    """POST ``body`` as a chat, sent chunked in pieces of 50 KB; the answer's status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        pieces = (body[i : i + 50_000] for i in range(0, len(body), 50_000))
        conn.request("POST", "/v1/chat/completions", pieces, {"Content-Type": "application/json"}, encode_chunked=True)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def websocket(server: ServerProcess) -> socket.socket:
    """A Responses WebSocket, upgraded (open mode: no key)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(
        b"GET /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def frames_of(sock: socket.socket, size: int) -> list[tuple[int, bytes]]:
    """Send a ``response.create`` of about ``size`` bytes (masked with zeros: its bytes as they are);
    the frames the server sends until the turn ends (``response.completed`` or ``error``) or it closes."""
    data = json.dumps({"type": "response.create", "model": "gpt-4o-mini", "store": False, "input": "x" * size})
    sock.sendall(bytes([0x81, 0xFF]) + len(data).to_bytes(8, "big") + b"\0\0\0\0" + data.encode())
    reader = sock.makefile("rb")
    frames: list[tuple[int, bytes]] = []
    while not frames or (
        frames[-1][0] == 0x1 and json.loads(frames[-1][1])["type"] not in ("response.completed", "error")
    ):
        first, n = reader.read(2)
        if n == 126:
            n = int.from_bytes(reader.read(2), "big")
        elif n == 127:
            n = int.from_bytes(reader.read(8), "big")
        frames.append((first & 0x0F, reader.read(n)))
        if frames[-1][0] == 0x8:  # close
            break
    return frames


def test_a_websocket_message_is_counted_with_the_request_bodies(one_mib_server: ServerProcess):
    """Was: a Responses WebSocket message (up to STOCKYARD_MAX_BODY_BYTES, on each of 64 sockets) was
    outside every bound: 32 sockets sending 12 MiB each took the server to 1.5 GB. Now its frames are
    counted before their bytes are read, until its turn ends; with no room, the socket closes 1013."""
    server = one_mib_server
    held = begun_request(server, 700_000)
    try:
        wait_for(lambda: server.metric("request_bodies_bytes") == 700_000, what="the first body's bytes held")
        opcode, payload = frames_of(websocket(server), 600_000)[-1]
        assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1013, payload
    finally:
        held.close()
    wait_for(lambda: server.metric("request_bodies_bytes") == 0, what="the bytes given back")
    sock = websocket(server)
    opcode, payload = frames_of(sock, 600_000)[-1]
    assert json.loads(payload)["type"] == "response.completed"
    wait_for(lambda: server.metric("request_bodies_bytes") == 0, what="given back when the turn ended")
    sock.close()

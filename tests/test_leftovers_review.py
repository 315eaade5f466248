"""Leftovers of the last review, each through a real server and the mock upstream: a provider's download
that stalls midway leaves no provider connection open; Anthropic's stream relay passes every odd event
through."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading

import pytest
from conftest import ServerProcess, mock_env, wait_for
from mock_upstream import Reply
from rawhttp import read_until_close

CLAUDE = "claude-leftovers"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-leftovers-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_UPSTREAM_TIMEOUT="2",  # a provider that stops sending midway is given up on soon
    )
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp("leftovers") / "stockyard.db", env)
    srv.keys = srv.create_keys({"alice": [], "bob": []})
    srv.start()
    yield srv
    srv.stop()
    assert "sk-ant-test-leftovers" not in srv.log
    assert "Traceback" not in srv.log


def get_until_close(server: ServerProcess, path: str, key: str) -> bytes:
    """GET ``path`` over a raw socket with ``Connection: close``: everything until the server closes."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {key}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        return read_until_close(sock, timeout=30)
    finally:
        sock.close()


def test_a_download_the_provider_stops_sending_midway_closes_the_providers_connection(server, mock):
    """A file's content relayed as it arrives (``ProviderCalls._relay``) whose provider stops sending
    midway: once the read times out the client's answer is cut (no chunked end), and the provider's
    connection is closed too — the mock sees it closed while it still waits to send the rest."""
    made = server.openai("alice").files.create(file=("notes.jsonl", io.BytesIO(b'{"a": 1}\n')), purpose="batch")
    hung_up = threading.Event()
    mock.enqueue(Reply(sse=["first-part-of-the-file", "the-rest"], hang_after=1, hang_s=60, hung_up=hung_up))
    data = get_until_close(server, f"/v1/files/{made.id}/content", server.keys["alice"])
    assert data.startswith(b"HTTP/1.1 200 ") and b"first-part-of-the-file" in data
    assert b"the-rest" not in data and not data.endswith(b"0\r\n\r\n"), data[-200:]  # cut: never taken for whole
    wait_for(hung_up.is_set, timeout=10, what="the provider's connection closed")


def sse(kind: str, data: str) -> str:
    return f"event: {kind}\ndata: {data}"


def relayed_messages_stream(server: ServerProcess) -> tuple[bytes, dict]:
    """A streamed Messages request (its provider's answer queued on the mock); the body the client
    read whole (``http.client``: a stream cut midway raises) and the request's trace."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = {"model": CLAUDE, "max_tokens": 16, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": server.keys["alice"], "anthropic-version": "2023-06-01", "content-type": "application/json"}
    conn.request("POST", "/v1/messages", json.dumps(body), headers)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()[:300]
    data = resp.read()
    conn.close()
    return data, server.trace(resp.getheader("x-stockyard-trace-id"))


def as_sent(events: list[str]) -> bytes:
    """The bytes of ``events`` as the provider sent them (what a pass-through relays unchanged)."""
    return b"".join(event.encode() + b"\n\n" for event in events)


START = {
    "type": "message_start",
    "message": {"id": "msg_odd", "type": "message", "role": "assistant", "model": CLAUDE, "content": []},
}


def start_with(usage: object) -> str:
    return sse("message_start", json.dumps({**START, "message": {**START["message"], "usage": usage}}))


def test_anthropic_events_of_odd_shapes_are_relayed_unchanged_and_usage_read_where_it_can_be(server, mock):
    """Was: a ``message_start`` whose ``message`` was not an object (a string, a list) raised in the
    native relay's reader, and the stream was cut. A pass-through relay passes every event on as the
    provider sent it, odd or not (data that is not JSON, a JSON array, string or number, ``usage`` not an
    object, counts that are not non-negative integers, ``message`` missing) and learns usage only from
    the counts it can read: here the input count of one start and the output count of the last delta."""
    events = [
        sse("message_start", json.dumps({"type": "message_start", "message": "odd-message-text"})),
        sse("message_start", json.dumps({"type": "message_start", "message": ["a", 1]})),
        sse("message_start", json.dumps({"type": "message_start"})),
        start_with({"input_tokens": 11, "output_tokens": True, "cache_read_input_tokens": -7}),
        sse("content_block_start", json.dumps({"type": "content_block_start", "index": 0, "content_block": [1]})),
        sse(
            "content_block_delta",
            json.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hello"}}),
        ),
        sse("ping", '{"type": not json'),
        'data: ["type", 1]',
        'data: "type"',
        "data: 12",
        sse("message_delta", json.dumps({"type": "message_delta", "delta": "x", "usage": "lots"})),
        sse(
            "message_delta",
            json.dumps(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": 7, "cache_creation_input_tokens": 2.5},
                }
            ),
        ),
        sse("message_stop", json.dumps({"type": "message_stop"})),
    ]
    mock.enqueue(Reply(sse=events))
    data, trace = relayed_messages_stream(server)
    assert data == as_sent(events)  # every event, unchanged, and the stream ended whole
    assert trace["outcome"] == "ok" and trace["error_type"] is None, trace
    assert (trace["prompt_tokens"], trace["completion_tokens"], trace["usage_estimated"]) == (11, 7, 0), trace


def test_an_anthropic_stream_whose_usage_holds_no_count_it_can_read_is_estimated(server, mock):
    """Was: a usage object whose counts were a bool, a negative number and a string was taken as a
    usage of zero tokens, exactly: the request cost nothing. Now such a usage is not learned, and the
    stream is priced as one without usage is, from what it relayed (``usage_estimated``)."""
    events = [
        start_with({"input_tokens": True, "output_tokens": -3}),
        sse(
            "content_block_delta",
            json.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x" * 400}}),
        ),
        sse("message_delta", json.dumps({"type": "message_delta", "delta": {}, "usage": {"output_tokens": "12"}})),
        sse("message_stop", json.dumps({"type": "message_stop"})),
    ]
    mock.enqueue(Reply(sse=events))
    data, trace = relayed_messages_stream(server)
    assert data == as_sent(events)
    assert trace["outcome"] == "ok" and trace["usage_estimated"] == 1, trace
    assert trace["prompt_tokens"] >= 1 and trace["completion_tokens"] >= 100, trace

"""Leftovers of the last review, each through a real server and the mock upstream: a provider's download
that stalls midway leaves no provider connection open; Anthropic's stream relay passes every odd event
through; a claim a relayed stream makes while the database is held stalls that stream alone. (A failure
raised once an answer began: test_midstream_failures.)"""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading

import pytest
from conftest import ServerProcess, hold_database, mock_env, wait_for
from mock_upstream import Reply
from rawhttp import read_until_close

CLAUDE = "claude-leftovers"


def started(pyz_path, cache_home, mock, folder, secrets: tuple[str, ...] = (), **extra: str):
    """A server on the mock (Anthropic's too), keys alice and bob; once stopped, its log holds no
    provider key (nor any of ``secrets``, a part of a key in ``extra``) and no traceback."""
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-leftovers-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        **extra,
    )
    srv = ServerProcess(pyz_path, folder / "stockyard.db", env)
    srv.keys = srv.create_keys({"alice": [], "bob": []})
    srv.start()
    yield srv
    srv.stop()
    for secret in ("sk-ant-test-leftovers", *secrets):
        assert secret not in srv.log
    assert "Traceback" not in srv.log


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    yield from started(pyz_path, cache_home, mock, tmp_path_factory.mktemp("leftovers"))


@pytest.fixture(scope="module")
def impatient(pyz_path, cache_home, mock, tmp_path_factory):
    """A server that gives up on a provider that stops sending midway after 2 s."""
    yield from started(pyz_path, cache_home, mock, tmp_path_factory.mktemp("impatient"), STOCKYARD_UPSTREAM_TIMEOUT="2")


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


def test_a_download_the_provider_stops_sending_midway_closes_the_providers_connection(impatient, mock):
    """A file's content relayed as it arrives (``ProviderCalls._relay``) whose provider stops sending
    midway: once the read times out the client's answer is cut (no chunked end), and the provider's
    connection is closed too — the mock sees it closed while it still waits to send the rest."""
    made = impatient.openai("alice").files.create(file=("notes.jsonl", io.BytesIO(b'{"a": 1}\n')), purpose="batch")
    hung_up = threading.Event()
    mock.enqueue(Reply(sse=["first-part-of-the-file", "the-rest"], hang_after=1, hang_s=60, hung_up=hung_up))
    data = get_until_close(impatient, f"/v1/files/{made.id}/content", impatient.keys["alice"])
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
    stream is priced as one without usage is, from what it relayed (``usage_estimated``): its 400 bytes
    of text, at most the 16 tokens its ``max_tokens`` let the provider write (``estimate.relayed_at_most``)."""
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
    assert trace["prompt_tokens"] >= 1 and trace["completion_tokens"] == 16, trace


def post_stream(server: ServerProcess, route: str, body: dict, who: str) -> socket.socket:
    """A streamed request sent over a raw socket (a Messages one with Anthropic's headers, else with
    the key as a bearer); the socket, for the test to read the answer as it comes."""
    payload = json.dumps(body).encode()
    key = server.keys[who]
    auth = (
        f"x-api-key: {key}\r\nanthropic-version: 2023-06-01"
        if route == "/v1/messages"
        else f"Authorization: Bearer {key}"
    )
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(
        f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{auth}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def read_until(sock: socket.socket, marker: bytes, have: bytes = b"", timeout: float = 30.0) -> bytes:
    """What the server sent on ``sock`` until ``marker`` arrived (``have``: what was read before)."""
    sock.settimeout(timeout)
    data = have
    while marker not in data:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"{marker!r} did not come in {timeout}s: {data[-300:]!r}") from None
        assert chunk, f"the connection closed before {marker!r}: {data[-300:]!r}"
        data += chunk
    return data


def chat_chunk(text: str) -> str:
    delta = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    return json.dumps(
        {"id": "chatcmpl-b", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [delta]}
    )


WRITTEN = "file_leftovers_written_by_the_tool"
CODE_TOOL = {"type": "code_execution_20250825", "name": "code_execution"}
RESULT = {  # the code execution result block naming the file the tool wrote
    "type": "bash_code_execution_tool_result",
    "tool_use_id": "srvtoolu_1",
    "content": {
        "type": "bash_code_execution_result",
        "stdout": "",
        "stderr": "",
        "return_code": 0,
        "content": [{"type": "bash_code_execution_output", "file_id": WRITTEN}],
    },
}


def waiting_alone(
    server: ServerProcess, mock, route: str, body: dict, events: list[str], first: bytes, named: str
) -> str:
    """Relay a stream whose provider sends ``events`` (``first`` in the first of them, an event naming
    ``named`` — which the stream claims for alice — after it) while another process holds the database,
    beside another key's stream: that one must end while the database is still held, the claimed
    stream having sent nothing of ``named`` meanwhile; then, the database free, the claimed stream
    ends whole. ``named``'s kind in ``owned_objects``."""
    gate_other = threading.Event()
    mock.enqueue(Reply(sse=[chat_chunk("b-first"), chat_chunk("b-second"), "[DONE]"], held_after=1, held=gate_other))
    gate_claimed, all_sent = threading.Event(), threading.Event()
    mock.enqueue(Reply(sse=events, held_after=1, held=gate_claimed, all_sent=all_sent))
    chat = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    release = None
    other = post_stream(server, "/v1/chat/completions", chat, "bob")
    claimed = None
    try:
        other_got = read_until(other, b"b-first")  # (the mock answers in order: one request at a time)
        claimed = post_stream(server, route, body, "alice")
        claimed_got = read_until(claimed, first)  # both streams are on the relay thread now
        release = hold_database(server.db)
        gate_claimed.set()
        assert all_sent.wait(10)  # the event naming the object reached Stockyard: its claim waits for the lock
        gate_other.set()
        # the other stream ends while the database is held (the claim waits up to the 10 s busy timeout)
        other_got = read_until(other, b"0\r\n\r\n", other_got, timeout=8)
        assert b"b-second" in other_got and b"[DONE]" in other_got
        claimed.setblocking(False)
        try:
            claimed_got += claimed.recv(65536)
        except BlockingIOError:
            pass
        assert named.encode() not in claimed_got  # the event naming it waits for its claim
        claimed.setblocking(True)
    finally:
        gate_claimed.set()
        gate_other.set()
        if release is not None:
            release()
        other.close()
    assert claimed is not None
    try:
        claimed_got = read_until(claimed, b"0\r\n\r\n", claimed_got)
    finally:
        claimed.close()
    assert named.encode() in claimed_got
    rows = wait_for(lambda: server.db_rows("SELECT kind FROM owned_objects WHERE id = ?", (named,)), what="the claim")
    return rows[0]["kind"]


def test_a_claim_waiting_for_the_database_holds_its_own_stream_only(server, mock):
    """Was: the claim of a file Anthropic's code execution tool wrote, made when the event naming it
    passed the stream relay, ran on the relay's one thread: while another process held the database
    (up to its 10 s busy timeout) every established stream stalled. Now the claim is the writer's,
    and only the stream that made it waits for it: another stream relayed meanwhile ends while the
    database is still held, and the claimed stream goes on, its file claimed, once it is free."""
    start = {**START, "message": {**START["message"], "id": "msg_claimed", "usage": {"input_tokens": 5}}}
    events = [
        sse("message_start", json.dumps(start)),
        sse("content_block_start", json.dumps({"type": "content_block_start", "index": 0, "content_block": RESULT})),
        sse("content_block_stop", json.dumps({"type": "content_block_stop", "index": 0})),
        sse("message_delta", json.dumps({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 3}})),
        sse("message_stop", json.dumps({"type": "message_stop"})),
    ]
    ask = [{"role": "user", "content": "csv"}]
    body = {"model": CLAUDE, "max_tokens": 16, "stream": True, "tools": [CODE_TOOL], "messages": ask}
    assert waiting_alone(server, mock, "/v1/messages", body, events, b"msg_claimed", WRITTEN) == "anthropic_file"


def test_a_responses_container_claim_waiting_for_the_database_holds_its_own_stream_only(server, mock):
    """The same for the container a passed-through Responses stream's code interpreter ran in
    (``auto``: the provider made it for this request), claimed for the key at its item's
    ``response.output_item.done``, before the event goes on."""
    ran = "cntr_leftovers_auto"
    item = {"type": "code_interpreter_call", "id": "ci_1", "status": "completed", "code": "1", "container_id": ran}
    response = {"id": "resp_claimed", "object": "response", "model": "gpt-4o-mini", "output": []}
    usage = {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}
    done = {**response, "status": "completed", "output": [item], "usage": usage}
    events = [
        sse(
            "response.created",
            json.dumps({"type": "response.created", "response": {**response, "status": "in_progress"}}),
        ),
        sse(
            "response.output_item.done",
            json.dumps({"type": "response.output_item.done", "output_index": 0, "item": item}),
        ),
        sse("response.completed", json.dumps({"type": "response.completed", "response": done})),
    ]
    tools = [{"type": "code_interpreter", "container": {"type": "auto"}}]
    body = {"model": "gpt-4o-mini", "input": "plot", "stream": True, "tools": tools}
    assert waiting_alone(server, mock, "/v1/responses", body, events, b"resp_claimed", ran) == "container"

"""A failure after an answer began (one nobody planned for, or a refusal): the connection is cut (no
chunked end), one log line says so, the trace says ``stream_broken``, and the server goes on serving —
never an HTTP 500 (or 4xx) written into the middle of a body, never a traceback. Real triggers only,
through a real server and the mock upstream: the database refusing a write a stream makes midway.

A refusal (a ``ProxyError``) raised after the answer began is cut the same way (``Handler._cut``, its
trace ``stream_broken`` with the refusal's code: ``proxy.refused``), but it has no real trigger left:
its last one, a paused Claude turn whose follow-up could not be written (the answer so far held a lone
surrogate), now ends the answer incomplete (``test_leftovers15``), as a chat chunk holding one and a
chunk nested past the parser's depth had stopped being triggers before it."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
from typing import Callable

import anthropic
import pytest
from conftest import HELD_SAYS, ServerProcess, hold_database, mock_env, served, wait_for
from mock_upstream import Reply
from rawhttp import read_until_close, statuses
from test_anthropic_batches import CODE_TOOL

CLAUDE = "claude-midstream"
CUT = "its answer had begun"  # what the one log line of a cut answer says


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-midstream-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_BUSY_TIMEOUT_MS="1000",  # a claim the held database refuses fails after 1 s, not 10
    )
    keys = {"alice": [], "bob": []}
    with served(pyz_path, tmp_path_factory, "midstream", env, keys, never_logged=("sk-ant-test-midstream",)) as srv:
        yield srv


class _Bytes:
    """What a socket gave, for ``http.client`` to read again as a client would have."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


def client_read(data: bytes) -> bytes:
    """The body ``http.client`` reads from ``data`` (an answer as it came off the wire)."""
    resp = http.client.HTTPResponse(_Bytes(data))  # type: ignore[arg-type]
    resp.begin()
    return resp.read()


def stream_until(server: ServerProcess, who: str, body: dict, seen: bytes, then, route: str = "/v1/messages") -> bytes:
    """POST a streamed request (a Messages one, or one to ``route`` with the key as a bearer) over a
    raw socket; once ``seen`` arrived, ``then()``; then everything the server sends until it closes
    the connection."""
    payload = json.dumps(body).encode()
    key = server.keys[who]
    anthropic_key = f"x-api-key: {key}\r\nanthropic-version: 2023-06-01"
    sent_key = anthropic_key if route == "/v1/messages" else f"Authorization: Bearer {key}"
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(
            f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{sent_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        received = b""
        while seen not in received:
            chunk = sock.recv(65536)
            assert chunk, received[-300:]
            received += chunk
        then()
        return received + read_until_close(sock, timeout=30)
    finally:
        sock.close()


def trace_id_of(data: bytes) -> str:
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return next(
        line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("x-stockyard-trace-id:")
    )


def assert_cut(server: ServerProcess, data: bytes, marker: str, route: str = "/v1/messages") -> list[str]:
    """``data`` is one 200 answer its client sees incomplete (no chunked end, nothing after it), and
    the log has one line for it (naming ``route``) and no traceback; that line."""
    assert statuses(data) == [200], data[-400:]  # one answer: no 500 written into its body
    assert not data.endswith(b"0\r\n\r\n")
    with pytest.raises(http.client.IncompleteRead):
        client_read(data)
    said = wait_for(lambda: [line for line in server.log.splitlines() if CUT in line], what="the cut logged")
    assert len(said) == 1 and f"POST {route}" in said[0] and marker in said[0], said
    assert "Traceback" not in server.log
    return said


def still_serving(server: ServerProcess) -> None:
    answer = server.anthropic("bob").messages.create(
        model=CLAUDE, max_tokens=16, messages=[{"role": "user", "content": "still there?"}]
    )
    assert answer.content[0].text


@pytest.fixture(autouse=True)
def fresh_log(server):
    """Each test reads the log lines its own requests wrote."""
    server.log_lines.clear()


def test_a_database_refusing_a_claim_midstream_cuts_the_stream(server, mock):
    """Was: a streamed Messages answer whose code execution result names a written file claims that
    file for the key before the event goes on; when the database refused the claim (locked by another
    process past the busy timeout) the exception reached the dispatch, which wrote an HTTP 500 head
    and JSON into the middle of the chunked body and logged a traceback. Now the connection is cut
    there without the chunked end: the client sees a broken transfer, one log line names the route
    and the failure, the trace says ``stream_broken`` with the database's failure's code,
    ``database_unavailable``."""
    gate = threading.Event()
    mock.enqueue(Reply(held_after=1, held=gate))  # message_start, then the rest once the lock is held
    body = {
        "model": CLAUDE,
        "max_tokens": 16,
        "stream": True,
        "tools": [CODE_TOOL],
        "messages": [{"role": "user", "content": "write a csv"}],
    }
    releases: list[Callable[[], None]] = []

    def lock_then_open() -> None:
        releases.append(hold_database(server.db))
        gate.set()

    try:
        data = stream_until(server, "alice", body, b"message_start", lock_then_open)
    finally:
        gate.set()
        for release in releases:
            release()
    assert b"bash_code_execution_tool_result" not in data  # the event whose claim failed never went out
    (said,) = assert_cut(server, data, f"OperationalError: {HELD_SAYS}")
    trace = server.trace(trace_id_of(data))
    assert trace["outcome"] == "stream_broken" and trace["error_type"] == "database_unavailable", trace
    assert trace["status"] == 200 and HELD_SAYS in trace["error_message"]
    assert trace["id"] in said
    still_serving(server)


def test_the_sdk_raises_at_a_cut_stream_rather_than_end_it(server, mock):
    """The same cut as Anthropic's SDK sees it: the stream it iterates raises (an incomplete chunked
    read), rather than ending as if the answer were whole."""
    gate = threading.Event()
    mock.enqueue(Reply(held_after=1, held=gate))  # message_start, then the rest once the lock is held
    body = {"model": CLAUDE, "max_tokens": 16, "tools": [CODE_TOOL], "messages": [{"role": "user", "content": "csv"}]}
    release = None
    try:
        got = iter(server.anthropic("alice").messages.create(**body, stream=True))
        assert next(got).type == "message_start"
        release = hold_database(server.db)
        gate.set()
        with pytest.raises(anthropic.APIConnectionError):
            list(got)
    finally:
        gate.set()
        if release is not None:
            release()
    said = wait_for(lambda: [line for line in server.log.splitlines() if CUT in line], what="the cut logged")
    assert len(said) == 1 and HELD_SAYS in said[0] and "Traceback" not in server.log, said
    still_serving(server)


def test_a_failure_before_the_answer_began_is_the_clients_503_and_traced_as_an_error(server, mock):
    """The other side of the line: the same refused claim in an answer read whole (not streamed)
    fails before a byte of the answer went out, so the client gets its API's error, and the
    connection is not cut mid-answer. Was: its trace said ``ok`` (the status the provider gave); then
    ``error``, 500, ``internal_error``; now the database's failure is what it is, not a bug's 500:
    a 503 ``database_unavailable`` (test_pg_lock_timeout.py), traced ``error`` 503 with that code."""
    body = {"model": CLAUDE, "max_tokens": 16, "tools": [CODE_TOOL], "messages": [{"role": "user", "content": "csv"}]}
    release = hold_database(server.db)
    try:
        status, headers, answer = server.request("POST", "/v1/messages", body, {"x-api-key": server.keys["alice"]})
    finally:
        release()
    doc = json.loads(answer)
    assert status == 503 and doc["type"] == "error" and doc["error"]["type"] == "overloaded_error", answer
    assert "another session holds a lock" in doc["error"]["message"], answer
    assert CUT not in server.log
    accessed = wait_for(  # the 503 carries no trace id: the access log line names it
        lambda: [line for line in server.log.splitlines() if "POST /v1/messages 503" in line], what="the access line"
    )
    trace_id = accessed[0].split()[-1]
    trace = server.trace(trace_id)
    assert trace["outcome"] == "error" and trace["status"] == 503, trace
    assert trace["error_type"] == "database_unavailable", trace
    assert HELD_SAYS in trace["error_message"]
    still_serving(server)

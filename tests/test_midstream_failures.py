"""A failure after an answer began (one nobody planned for, or a refusal): the connection is cut (no
chunked end), one log line says so, the trace says ``stream_broken``, and the server goes on serving —
never an HTTP 500 (or 4xx) written into the middle of a body, never a traceback. Real triggers only,
through a real server and the mock upstream: the database refusing a write a stream makes midway, a
provider's paused answer whose follow-up cannot be written."""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import socket
import sqlite3
import threading

import openai
import pytest
from conftest import ServerProcess, mock_env, wait_for
from mock_upstream import Reply, anthropic_blocks_stream
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
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp("midstream") / "stockyard.db", env)
    srv.keys = srv.create_keys({"alice": [], "bob": []})
    srv.start()
    yield srv
    srv.stop()
    assert "sk-ant-test-midstream" not in srv.log


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
    and the failure, the trace says ``stream_broken``."""
    gate = threading.Event()
    mock.enqueue(Reply(held_after=1, held=gate))  # message_start, then the rest once the lock is held
    body = {
        "model": CLAUDE,
        "max_tokens": 16,
        "stream": True,
        "tools": [CODE_TOOL],
        "messages": [{"role": "user", "content": "write a csv"}],
    }
    lock = sqlite3.connect(server.db, isolation_level=None, timeout=0)

    def lock_then_open() -> None:
        lock.execute("BEGIN EXCLUSIVE")
        gate.set()

    try:
        data = stream_until(server, "alice", body, b"message_start", lock_then_open)
    finally:
        gate.set()
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    assert b"bash_code_execution_tool_result" not in data  # the event whose claim failed never went out
    (said,) = assert_cut(server, data, "OperationalError: database is locked")
    trace = server.trace(trace_id_of(data))
    assert trace["outcome"] == "stream_broken" and trace["error_type"] == "internal_error", trace
    assert trace["status"] == 200 and "database is locked" in trace["error_message"]
    assert trace["id"] in said
    still_serving(server)


def paused_with_a_lone_surrogate(note: str = "") -> Reply:
    """Claude's streamed answer to a searching chat request, paused (``pause_turn``), whose second
    text block is a lone UTF-16 surrogate escape (``"\\ud800"``, valid JSON). Its first words reach
    the client as they come, the surrogate too (escaped, as the provider wrote it: a stream of
    text the client's translation writes out is never refused for it, ``test_review14_leftovers``);
    but the follow-up call that would continue the turn sends the paused answer back to Claude, and a
    translated request is never written with a lone surrogate (the Messages API refuses one), so it
    is a refusal raised after the answer began: the provider's answer that cannot be translated
    (``shape_errors``' 502). The one real trigger of that path left."""
    blocks = [{"type": "text", "text": "first-words"}, {"type": "text", "text": "\ud800" + note}]
    events = anthropic_blocks_stream(blocks, 1, CLAUDE)
    return Reply(sse=[e.replace('"end_turn"', '"pause_turn"') for e in events])


SEARCHING = {  # a chat request Claude may pause: it searches (``web_search_options``)
    "model": CLAUDE,
    "max_tokens": 16,
    "stream": True,
    "web_search_options": {},
    "messages": [{"role": "user", "content": "hi"}],
}
CHAT = "/v1/chat/completions"


def test_a_provider_answer_its_translation_cannot_carry_on_midstream_cuts_the_stream(server, mock):
    """A provider's answer that makes a stream's translation fail after the stream began (a paused
    turn whose follow-up cannot be written: :func:`paused_with_a_lone_surrogate`; until the fourteenth
    review's leftovers, a chat chunk holding a lone surrogate, which a Messages client now gets
    escaped; a chunk nested deeper than the parser goes is skipped instead, ``test_relay_database``;
    Anthropic's own events of odd shapes are relayed as they are: ``test_leftovers_review``): the
    stream is cut, one line logged without the answer's text, the trace ``stream_broken``."""
    mock.enqueue(paused_with_a_lone_surrogate(" secret-looking-text-xyz"))
    # the answer's first chunk: its first words may go out with the cut's batch or not at all
    data = stream_until(server, "alice", SEARCHING, b'"role":"assistant"', lambda: None, route=CHAT)
    (said,) = assert_cut(server, data, "ProxyError", route=CHAT)
    assert "xyz" not in said
    trace = server.trace(trace_id_of(data))
    assert trace["outcome"] == "stream_broken" and trace["error_type"] == "bad_upstream_response", trace
    still_serving(server)


def test_the_sdk_raises_at_a_cut_stream_rather_than_end_it(server, mock):
    """The same cut as OpenAI's SDK sees it: the stream it iterates raises (an incomplete chunked
    read), rather than ending as if the answer were whole."""
    gate = threading.Event()
    reply = paused_with_a_lone_surrogate()
    mock.enqueue(dataclasses.replace(reply, held_after=3, held=gate))  # the rest once the first words were read
    client = server.openai("alice")
    try:
        got = iter(client.chat.completions.create(**SEARCHING))
        assert "first-words" in [c.choices[0].delta.content for c in (next(got), next(got)) if c.choices]
        gate.set()
        with pytest.raises(openai.APIConnectionError):
            list(got)
    finally:
        gate.set()
    said = wait_for(lambda: [line for line in server.log.splitlines() if CUT in line], what="the cut logged")
    assert len(said) == 1 and "ProxyError" in said[0] and "Traceback" not in server.log, said
    still_serving(server)


def test_a_failure_before_the_answer_began_is_still_the_clients_500_and_traced_as_an_error(server, mock):
    """The other side of the line: the same refused claim in an answer read whole (not streamed)
    fails before a byte of the answer went out, so the client gets its API's 500 as before, and the
    connection is not cut mid-answer. Was: its trace said ``ok`` (the status the provider gave); now
    ``error``, 500, ``internal_error``."""
    body = {"model": CLAUDE, "max_tokens": 16, "tools": [CODE_TOOL], "messages": [{"role": "user", "content": "csv"}]}
    lock = sqlite3.connect(server.db, isolation_level=None, timeout=0)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        status, headers, answer = server.request("POST", "/v1/messages", body, {"x-api-key": server.keys["alice"]})
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    doc = json.loads(answer)
    assert status == 500 and doc["type"] == "error" and doc["error"]["type"] == "api_error", answer
    assert CUT not in server.log
    accessed = wait_for(  # the 500 carries no trace id: the access log line names it
        lambda: [line for line in server.log.splitlines() if "POST /v1/messages 500" in line], what="the access line"
    )
    trace_id = accessed[0].split()[-1]
    trace = server.trace(trace_id)
    assert trace["outcome"] == "error" and trace["status"] == 500 and trace["error_type"] == "internal_error", trace
    assert "database is locked" in trace["error_message"]
    still_serving(server)


def test_a_refusal_raised_after_the_answer_began_cuts_the_stream(server, mock):
    """Was: a refusal (a ProxyError, or what ``errors.refusal_of`` turns into one) raised once a stream
    had begun was answered like one raised before it: its head and JSON written into the middle of
    the chunked body. The trigger here is real: a paused turn whose follow-up cannot be written
    (:func:`paused_with_a_lone_surrogate`; a chat chunk holding a lone surrogate was the trigger until
    a translation wrote it out escaped, and a chunk nested deeper than the parser goes before it became
    the provider's malformed event, skipped: ``test_relay_database``). It is cut as every failure
    after the answer began is: no chunked end, one log line, and the trace says ``stream_broken``
    with the refusal's status and code."""
    mock.enqueue(paused_with_a_lone_surrogate())
    # the answer's first chunk: its first words may go out with the cut's batch or not at all
    data = stream_until(server, "alice", SEARCHING, b'"role":"assistant"', lambda: None, route=CHAT)
    (said,) = assert_cut(server, data, "ProxyError", route=CHAT)
    assert b"bad_upstream_response" not in data  # no error written into the body, whatever went out before
    trace = server.trace(trace_id_of(data))
    assert trace["outcome"] == "stream_broken" and trace["error_type"] == "bad_upstream_response", trace
    assert trace["status"] == 200 and "502" in trace["error_message"], trace
    assert trace["id"] in said
    still_serving(server)

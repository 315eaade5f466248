"""The stream relay's one thread never waits on the database, and a provider's unreadable event is the
provider's: each through a real server, the mock upstream and another session holding the
database (``BEGIN EXCLUSIVE``).

A Responses stream's end keeps what it made (the response's row, the turn a ``conversation`` gets):
those writes are the writer's, and the client's bytes do not wait for them (nothing in the answer
names a row the key must own first), so neither the other streams nor the stream itself stalls while
the database is held; a kept write that fails is logged once and noted in the trace, never cuts the
answer that already went right. A provider's event nested past the parser's depth is handled as its
stream's non-JSON events are, and the trace names the provider. ``STOCKYARD_BUSY_TIMEOUT_MS`` (how long
a write waits for a held database: the impatient server's 1 s) is bounded at start."""

from __future__ import annotations

import json
import socket
import threading
import time

import clirun
import pytest
from conftest import HELD_SAYS, TEST_STORE, ServerProcess, base_env, database_arg, hold_database, mock_env, wait_for
from mock_upstream import Reply
from test_leftovers_review import chat_chunk, post_stream, read_until
from test_leftovers_review import started as leftovers_server

CLAUDE = "claude-relaydb"
BUSY_MS = 1000  # the impatient server's busy timeout: a write waits this long for a held database


def started(pyz_path, cache_home, mock, folder, **extra: str):
    """test_leftovers_review's server, Gemini's key on the mock too."""
    gemini = {"GEMINI_API_KEY": "AIza-relaydb-0123456789abcdefPROVIDERSECRET", "GEMINI_BASE_URL": mock.url}
    yield from leftovers_server(pyz_path, cache_home, mock, folder, ("PROVIDERSECRET",), **gemini, **extra)


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    yield from started(pyz_path, cache_home, mock, tmp_path_factory.mktemp("relaydb"))


@pytest.fixture(scope="module")
def impatient(pyz_path, cache_home, mock, tmp_path_factory):
    """A server whose writes give up on a held database after BUSY_MS."""
    folder = tmp_path_factory.mktemp("relaydb-impatient")
    yield from started(pyz_path, cache_home, mock, folder, STOCKYARD_BUSY_TIMEOUT_MS=str(BUSY_MS))


def call(server: ServerProcess, who: str, method: str, path: str, body=None) -> tuple[int, dict]:
    status, _, raw = server.request(method, path, body, headers=server.auth(who))
    return status, json.loads(raw) if raw else {}


def new_conversation(server: ServerProcess, who: str) -> str:
    status, made = call(server, who, "POST", "/v1/conversations", {"items": []})
    assert status == 200, made
    return made["id"]


def completed(data: bytes) -> dict:
    """The response a Responses stream's ``response.completed`` event carries."""
    body = data.split(b"\r\n\r\n", 1)[1]
    for line in body.split(b"\n"):
        if line.startswith(b"data:") and b'"response.completed"' in line:
            return json.loads(line[5:])["response"]
    raise AssertionError(f"no response.completed in {data[-400:]!r}")


def relayed_while_held(
    server: ServerProcess, mock, model: str, body: dict, then=lambda: None, kept_ends_held: bool = True
) -> bytes:
    """A streamed ``/v1/responses`` turn of alice's (``body``) and a chat stream of bob's, both on the
    relay thread, then another session takes the database (``hold_database``) and both providers send
    the rest: both streams end, whole, while it is held; ``then()`` still under the lock, let go on
    the way out. With ``kept_ends_held`` false alice's turn ends only once the database is let go
    (bob's stream still ends while it is held). What alice's client received."""
    gate_other = threading.Event()
    mock.enqueue(Reply(sse=[chat_chunk("b-first"), chat_chunk("b-second"), "[DONE]"], held_after=1, held=gate_other))
    gate_kept, all_sent = threading.Event(), threading.Event()
    mock.enqueue(Reply(held_after=1, held=gate_kept, all_sent=all_sent))
    chat = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    other = post_stream(server, "/v1/chat/completions", chat, "bob")
    kept: socket.socket | None = None
    release = None
    try:
        other_got = read_until(other, b"b-first")  # (the mock answers in order: one request at a time)
        kept = post_stream(server, "/v1/responses", {**body, "model": model, "stream": True}, "alice")
        kept_got = read_until(kept, b"response.created")  # both streams are on the relay thread now
        release = hold_database(server.db)
        gate_kept.set()
        assert all_sent.wait(10)  # the turn's end reached Stockyard: what it keeps waits for the lock
        gate_other.set()
        # both end while the database is held (a write waits for it up to the busy timeout, 10 s)
        other_got = read_until(other, b"0\r\n\r\n", other_got, timeout=8)
        assert b"b-second" in other_got and b"[DONE]" in other_got
        if not kept_ends_held:
            release()
            release = None
        kept_got = read_until(kept, b"0\r\n\r\n", kept_got, timeout=8)
        assert b"response.completed" in kept_got
        then()
    finally:
        gate_kept.set()
        gate_other.set()
        if release is not None:
            release()
        other.close()
        if kept is not None:
            kept.close()
    return kept_got


@pytest.mark.parametrize("model", ["gpt-4o-mini", CLAUDE], ids=["passed-through", "translated"])
def test_a_turn_kept_while_the_database_is_held_stalls_no_stream(server, mock, model):
    """Was: a Responses stream's ``response.completed`` kept the turn on the relay's one thread — its
    conversation's new items a write that waited for its commit, the response's row after a read —
    so while another process held the database (up to its 10 s busy timeout) every established
    stream stalled, this one and every other. Now those writes are the writer's and the bytes go on:
    both streams end while the database is held, and once it is free the response is kept (GET,
    ``previous_response_id``) and its turn is in the conversation."""
    conversation = new_conversation(server, "alice")
    # On PostgreSQL, where another replica may take alice's next request, her turn's end waits for its
    # writes (Conversations._before_the_end) — its own stream only: bob's still ends while it is held.
    body = {"input": "remember 7", "conversation": conversation}
    got = relayed_while_held(server, mock, model, body, kept_ends_held=TEST_STORE == "sqlite")
    response = completed(got)
    kept = wait_for(
        lambda: server.db_rows("SELECT key_id FROM responses WHERE id = ?", (response["id"],)), what="the kept row"
    )
    assert kept[0]["key_id"] is not None
    status, again = call(server, "alice", "GET", f"/v1/responses/{response['id']}")
    assert status == 200 and again["id"] == response["id"], again
    status, page = call(server, "alice", "GET", f"/v1/conversations/{conversation}/items?order=asc")
    assert status == 200, page
    assert [item.get("role") for item in page["data"]] == ["user", "assistant"], page
    assert page["data"][0]["content"][0]["text"] == "remember 7"
    status, next_turn = call(
        server,
        "alice",
        "POST",
        "/v1/responses",
        {"model": model, "input": "and?", "previous_response_id": response["id"]},
    )
    assert status == 200 and next_turn["status"] == "completed", next_turn


def test_a_kept_turn_the_database_refuses_never_cuts_the_answer(impatient, mock):
    """A turn whose keeping fails (the database held past the busy timeout): the client has its whole
    answer all the same, the failure is one log line (no traceback) and the trace notes it, and the
    server goes on. Was: the write waited on the relay's thread, and a failure logged a traceback."""
    server = impatient
    server.log_lines.clear()
    conversation = new_conversation(server, "alice")

    def refused() -> None:  # the writer gave up on the held database: what the turn keeps failed
        wait_for(lambda: "was not appended to conversation" in server.log, what="the failure logged")

    got = relayed_while_held(server, mock, "gpt-4o-mini", {"input": "hi", "conversation": conversation}, refused)
    assert got.endswith(b"0\r\n\r\n")  # the answer's chunked end: whole
    response = completed(got)
    said = [line for line in server.log.splitlines() if "was not appended to conversation" in line]
    assert len(said) == 1 and conversation in said[0] and HELD_SAYS in said[0], said
    trace_id = next(
        line.split(":", 1)[1].strip()
        for line in got.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        if line.lower().startswith("x-stockyard-trace-id:")
    )
    assert trace_id in said[0]
    trace = server.trace(trace_id)
    assert trace["outcome"] == "ok" and "was not appended" in (trace["error_message"] or ""), trace
    assert "Traceback" not in server.log
    status, page = call(server, "alice", "GET", f"/v1/conversations/{conversation}/items")
    assert status == 200 and page["data"] == [], page  # the gap the failure left
    status, again = call(server, "alice", "POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "still there?"})
    assert status == 200 and again["status"] == "completed", again
    assert response["id"] != again["id"]


# -- a provider's event nested past the parser's depth is the provider's --------------------------------


def nested_event(member: str, depth: int = 5000) -> dict:
    """A provider's chat chunk whose ``member`` nests ``depth`` arrays: valid JSON that Python's parser
    refuses with a RecursionError (as a string: ``json.dumps`` of it would recurse too)."""
    return {"id": "chatcmpl-deep", "object": "chat.completion.chunk", "choices": [], member: depth}


def deep(event: dict, member: str) -> str:
    depth = event[member]
    head = json.dumps({k: v for k, v in event.items() if k != member})[:-1]
    return head + (", " if len(event) > 1 else "") + f'"{member}": ' + "[" * depth + "]" * depth + "}"


def claude_events(nested_in_the_middle: str) -> list[str]:
    start = {
        "type": "message_start",
        "message": {"id": "msg_deep", "type": "message", "role": "assistant", "model": CLAUDE, "content": []},
    }
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}

    def text(words: str) -> str:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": words}}
        return f"event: content_block_delta\ndata: {json.dumps(delta)}"

    return [
        f"event: message_start\ndata: {json.dumps(start)}",
        f"event: content_block_start\ndata: {json.dumps(block)}",
        text("first-words "),
        nested_in_the_middle,
        text("last-words"),
        'event: content_block_stop\ndata: {"type": "content_block_stop", "index": 0}',
        'event: message_delta\ndata: {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, '
        '"usage": {"output_tokens": 3}}',
        'event: message_stop\ndata: {"type": "message_stop"}',
    ]


def chat_events() -> list[str]:
    return [chat_chunk("first-words "), deep(nested_event("usage"), "usage"), chat_chunk("last-words"), "[DONE]"]


DEEP_CLAUDE = "event: content_block_delta\ndata: " + deep(
    {"type": "content_block_delta", "index": 0, "delta": 5000}, "delta"
)


def gemini_events() -> list[str]:
    def text(words: str, **more: object) -> str:
        candidate = {"content": {"parts": [{"text": words}], "role": "model"}, **more}
        return json.dumps({"candidates": [candidate], "modelVersion": "gemini-2.5-flash"})

    usage = {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}
    nested = deep({"candidates": 5000}, "candidates")
    return [text("first-words "), nested, text("last-words", finishReason="STOP"), json.dumps({"usageMetadata": usage})]


GEMINI_SSE = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
CASES = {  # (route, model, the provider's events, the events before the nested one, the end the client must see)
    "chat over openai": ("/v1/chat/completions", "gpt-4o-mini", chat_events(), 1, b"[DONE]"),
    "messages over openai's chat": ("/v1/messages", "gpt-4o-mini", chat_events(), 1, b"message_stop"),
    "chat over claude": ("/v1/chat/completions", CLAUDE, claude_events(DEEP_CLAUDE), 3, b"[DONE]"),
    "gemini native": (GEMINI_SSE, "gemini-2.5-flash", gemini_events(), 1, b"usageMetadata"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_provider_event_nested_too_deep_is_the_providers_not_the_clients(server, mock, case):
    """Was: a provider's stream event nested deeper than the JSON parser goes raised RecursionError in
    the stream's reader (``OpenAIStream``, ``ChunkStream``, ``chat_chunks`` caught ValueError only),
    which was answered as the refusal of the client's body ("request body nests …", 400
    ``invalid_json``) and cut the stream. Now it is handled as that stream's other unreadable events
    are (relayed unread, or skipped), the answer goes on to its end, and the trace says the provider
    sent it."""
    route, model, events, before, end = CASES[case]
    server.log_lines.clear()
    gate = threading.Event()  # the nested event comes once the answer began
    mock.enqueue(Reply(sse=events, held_after=before, held=gate))
    body = {"model": model, "max_tokens": 16, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    if route == GEMINI_SSE:
        body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    sock = post_stream(server, route, body, "alice")
    try:
        got = read_until(sock, b"first-words")
        gate.set()
        got = read_until(sock, b"0\r\n\r\n", got, timeout=10)
    finally:
        gate.set()
        sock.close()
    assert end in got and b"first-words" in got and b"last-words" in got, got[-600:]
    assert b"invalid_json" not in got and b"request body" not in got
    trace_id = next(
        line.split(":", 1)[1].strip()
        for line in got.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        if line.lower().startswith("x-stockyard-trace-id:")
    )
    trace = server.trace(trace_id)
    provider = {CLAUDE: "anthropic", "gemini-2.5-flash": "gemini"}.get(model, "openai")
    assert trace["outcome"] == "ok" and trace["status"] == 200, trace
    assert f"provider {provider!r} sent a stream event nested too deeply" in trace["error_message"], trace
    assert "request body" not in server.log and "its answer had begun" not in server.log


@pytest.mark.parametrize("value", ["50", "600001", "ten", "-5"])
def test_a_busy_timeout_out_of_bounds_is_refused_at_start(pyz_path, cache_home, tmp_path, value):
    """``STOCKYARD_BUSY_TIMEOUT_MS`` out of 100..15000 (or not a number): ``serve`` refuses to start
    with one line naming the setting, never a traceback."""
    env = {**base_env(cache_home), "STOCKYARD_BUSY_TIMEOUT_MS": value}
    done = clirun.run(pyz_path, ["serve", "--port", "0", "--db", str(tmp_path / "stockyard.db")], env, timeout=30)
    assert done.returncode != 0
    assert "STOCKYARD_BUSY_TIMEOUT_MS" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_every_command_waits_for_a_lock_as_the_busy_timeout_says(pyz_path, cache_home, tmp_path):
    """Was: only ``serve`` read ``STOCKYARD_BUSY_TIMEOUT_MS``; every other command (``keys create``,
    ``restore`` …) met a lock another process held with the default's 10 s. Now each command waits
    as long as the setting says, and a bad value is refused by name, as ``serve`` refuses it."""
    env, db = base_env(cache_home), database_arg(tmp_path / "stockyard.db")
    assert clirun.run(pyz_path, ["keys", "create", "--name", "first", "--db", db], env).returncode == 0
    release = hold_database(tmp_path / "stockyard.db")
    try:
        started = time.monotonic()
        done = clirun.run(
            pyz_path, ["keys", "create", "--name", "held", "--db", db], {**env, "STOCKYARD_BUSY_TIMEOUT_MS": "300"}
        )
        waited = time.monotonic() - started
    finally:
        release()
    assert done.returncode == 1 and HELD_SAYS in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert waited < 5, waited  # the default would wait 10 s
    refused = clirun.run(pyz_path, ["keys", "list", "--db", db], {**env, "STOCKYARD_BUSY_TIMEOUT_MS": "ten"})
    assert refused.returncode == 1 and "STOCKYARD_BUSY_TIMEOUT_MS" in refused.stderr, refused.stderr

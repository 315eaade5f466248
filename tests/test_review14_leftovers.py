"""Three defects left by the fourteenth review, each through real parts.

1. A provider's text holding a lone UTF-16 surrogate (JSON's valid ``"\\ud800"`` escape) under a
   translation that re-encodes it was taken for the client's: the UnicodeEncodeError of writing it
   out as UTF-8 became the client's 400 ``invalid_json`` (or, once the answer began, a cut). Now the
   translated answer carries it escaped, as a pass-through relays the provider's own bytes.
2. ``Conversations.settle`` waited its bound for each write a request keeps, in turn: now one
   deadline for them all.
3. ``Writer.later`` (and ``call``) after the writer thread stopped queued a job nothing would run:
   its future was never resolved, and a caller waited out its timeout.
"""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from conftest import HELD_SAYS, ServerProcess, hold_database, wait_for
from mock_upstream import Reply, _gemini_response, anthropic_blocks_stream, anthropic_usage, gemini_usage
from test_leftovers_review import started

from stockyard.context import RequestContext
from stockyard.conversations import SETTLE_WAIT_S, Conversations
from stockyard.store import Store, Writer, db

TEXT = "a\ud800b"  # what the provider says: JSON spells it "a\ud800b", which no UTF-8 holds
CLAUDE = "claude-haiku-4-5"
GEMINI = "gemini-2.5-flash"
GPT = "gpt-4o-mini"
BOUND_S = 0.6  # settle's bound in the test of it: well under the busy timeout the held database makes writes wait


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    yield from started(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory.mktemp("leftovers14"),
        ("AIza-test-surrogates",),
        GEMINI_API_KEY="AIza-test-surrogates-0123456789abcdef",
        GEMINI_BASE_URL=mock.url,
        STOCKYARD_BUSY_TIMEOUT_MS="1000",  # a write the held database refuses fails after 1 s, not 10
    )


# --------------------------------------------------------------------------- what each provider answers


def openai_reply(stream: bool) -> Reply:
    """An OpenAI chat answer whose text is :data:`TEXT` (the mock writes JSON with ASCII escapes)."""
    if not stream:
        message = {"role": "assistant", "content": TEXT, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        doc = {"id": "chatcmpl-s1", "object": "chat.completion", "created": 1, "model": GPT, "choices": [choice]}
        return Reply(json={**doc, "usage": usage})

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if delta or finish else []
        doc = {"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1, "model": GPT, "choices": choices}
        return json.dumps({**doc, **({"usage": usage} if usage else {})})

    return Reply(
        sse=[
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": TEXT}),
            chunk({}, "stop"),
            chunk({}, usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}),
            "[DONE]",
        ]
    )


def claude_reply(stream: bool) -> Reply:
    """A Claude Messages answer whose text is :data:`TEXT`."""
    if stream:
        return Reply(sse=anthropic_blocks_stream([{"type": "text", "text": TEXT}], 1, CLAUDE))
    doc = {
        "id": "msg_s1",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": [{"type": "text", "text": TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": anthropic_usage(CLAUDE),
    }
    return Reply(json=doc)


def gemini_reply(stream: bool) -> Reply:
    """A Gemini answer whose text is :data:`TEXT` (streamed: one SSE event, as short answers come)."""
    doc = _gemini_response([{"text": TEXT}], GEMINI, 1, "STOP", gemini_usage(GEMINI))
    return Reply(sse=[json.dumps(doc)]) if stream else Reply(json=doc)


PROVIDERS = {GPT: openai_reply, CLAUDE: claude_reply, GEMINI: gemini_reply}


def assert_ok(server: ServerProcess, trace_id: str) -> None:
    trace = server.trace(trace_id)
    assert trace["outcome"] == "ok" and trace["status"] == 200, trace


# --------------------------------------------------------------------------- the three translated APIs


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_messages_client_answered_from_an_openai_chat_model_gets_the_lone_surrogate(server, mock, stream):
    """Was: the client's 400 ``invalid_json`` "request body holds text…" (whole), a cut (streamed)."""
    mock.enqueue(openai_reply(stream))
    client = server.anthropic("alice")
    ask = {"model": GPT, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    if not stream:
        raw = client.messages.with_raw_response.create(**ask)
        text = raw.parse().content[0].text
    else:
        raw = client.messages.with_raw_response.create(**ask, stream=True)
        events = list(raw.parse())
        assert events[-1].type == "message_stop", events
        text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == TEXT
    assert_ok(server, raw.headers["x-stockyard-trace-id"])


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_responses_client_answered_from_a_chat_only_provider_gets_the_lone_surrogate(server, mock, model, stream):
    """Was: the client's 400 (whole: the chat shape of Claude's or Gemini's answer could not be
    written), a cut (streamed)."""
    mock.enqueue(PROVIDERS[model](stream))
    client = server.openai("alice")
    if not stream:
        raw = client.responses.with_raw_response.create(model=model, input="hi")
        response = raw.parse()
        assert response.status == "completed" and response.output_text == TEXT
    else:
        raw = client.responses.with_raw_response.create(model=model, input="hi", stream=True)
        events = list(raw.parse())
        assert events[-1].type == "response.completed", events
        assert events[-1].response.output_text == TEXT
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT
    assert_ok(server, raw.headers["x-stockyard-trace-id"])


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_chat_client_answered_from_claude_or_gemini_gets_the_lone_surrogate(server, mock, model, stream):
    """Was: the client's 400 (whole), a cut (streamed)."""
    mock.enqueue(PROVIDERS[model](stream))
    client = server.openai("alice")
    ask = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if not stream:
        raw = client.chat.completions.with_raw_response.create(**ask)
        answer = raw.parse()
        assert answer.choices[0].message.content == TEXT and answer.choices[0].finish_reason == "stop"
    else:
        raw = client.chat.completions.with_raw_response.create(**ask, stream=True)
        chunks = list(raw.parse())
        assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks), chunks
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert_ok(server, raw.headers["x-stockyard-trace-id"])


# --------------------------------------------------------------------------- 2. settle: one deadline


def test_settle_waits_for_all_the_kept_writes_within_one_bound(tmp_path):
    """Was: ``Conversations.settle`` waited up to its bound for each write in turn, so a request that
    keeps two (its stored response, its conversation turn) waited twice the bound before its trace
    while the database was held. Now one deadline for them all. A real writer on a SQLite file
    another connection holds (its writes wait out the busy timeout, longer than the bound)."""
    path = tmp_path / "stockyard.db"
    db.open_and_migrate(path)[0].close()
    writer = Writer(path).start()
    lock = sqlite3.connect(path, isolation_level=None, timeout=0)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        conversations = Conversations(Store(path, writer), None, None, None, 1 << 20)  # type: ignore[arg-type]
        ctx = RequestContext("responses", "openai", "127.0.0.1", {})
        for what in ("the stored response was not kept", "the turn was not appended"):
            ctx.kept_later.append((what, writer.later(lambda conn: None, urgent=False)))
        started = time.monotonic()
        conversations.settle(ctx, wait_s=BOUND_S)
        took = time.monotonic() - started
        assert BOUND_S * 0.9 <= took < BOUND_S * 1.5, took  # was: twice the bound
        assert not ctx.kept_later
        said = ctx.attempt.error_message or ""
        assert said.count(f"not committed after {BOUND_S:g} s") == 2, said
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        writer.stop()


def test_a_responses_turn_a_held_database_cannot_keep_is_traced_within_the_bound(server, mock):
    """The same through a real server: a Responses turn that joins a conversation keeps two writes
    (its stored response, its turn appended); with the database held by another process they fail
    (the busy timeout, 1 s here), each one log line and a note in the trace, which is written once
    the database is free — within the settle bound in all, never a wait per write."""
    status, _, raw = server.request("POST", "/v1/conversations", {}, server.auth("alice"))
    assert status == 200, raw
    conversation = json.loads(raw)["id"]
    release = hold_database(server.db)
    started = time.monotonic()
    try:
        body = {"model": CLAUDE, "input": "hi", "conversation": conversation}
        status, headers, raw = server.request("POST", "/v1/responses", body, server.auth("alice"))
        assert status == 200 and json.loads(raw)["status"] == "completed", raw  # the answer went out first
        trace_id = headers["x-stockyard-trace-id"]

        def logged() -> list[str]:
            lines = [line for line in server.log.splitlines() if f"trace {trace_id}:" in line]
            return lines if len(lines) == 2 else []

        said = wait_for(logged, what="a line for each write not kept")
    finally:
        release()
    assert sorted("was not kept" in line for line in said) == [False, True], said  # one line each
    assert sorted("not appended to conversation" in line for line in said) == [False, True], said
    assert all(HELD_SAYS in line for line in said), said
    trace = server.trace(trace_id)
    assert time.monotonic() - started < SETTLE_WAIT_S
    assert trace["status"] == 200 and "was not kept" in trace["error_message"], trace
    assert "not appended to conversation" in trace["error_message"], trace

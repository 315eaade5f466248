"""Five small defects left by the fifteenth review, each through real parts.

1. A provider's text holding a lone UTF-16 surrogate (JSON's valid ``"\\ud800"`` escape) that Stockyard
   packs into a token of its own — Claude's thinking in a Responses reasoning item's
   ``encrypted_content`` (``reasoning.pack``), a model's summary in a compaction item's
   (``compaction.mint``) — failed to encode: the client's 400 ``invalid_json`` (whole) or a cut
   stream. Now packed as ``httpio.json_bytes`` writes it (escaped).
2. A Claude turn paused (``pause_turn``) whose answer holds a lone surrogate, streamed to a chat
   client: the follow-up call that would continue it could not be written (the Messages API refuses a
   lone surrogate in a request), a 502 raised after the answer began — a cut stream. Now the turn
   ends there as a paused turn Stockyard does not continue does: ``length``, ``[DONE]``, traced.
3. ``GET /api/traces/{id}`` and ``DELETE /api/traces/{id}/body`` answered an id that cannot be a trace's
   (a NUL, another shape) 404 — the erase a 400 for some, 404 for a NUL — where the other admin id
   routes answer such an id 400 naming it. Now both a 400 naming ``id``; a well-formed unknown id 404.
4. ``ConversationStore.find`` waited for a turn being appended to a conversation before it read whose
   the conversation is: another key naming it waited (and learnt by the wait that it is busy). Now
   the owner is checked first; only the owner's read waits for the append.
5. ``conversations.py`` said a full writer queue its own way in ``settle`` ("the writer's queue is
   full") beside the message ``Store.write_later`` gives the failure (with the queue's depth), and
   spelt the relay thread's no-wait rule twice: one message, one helper.
"""

from __future__ import annotations

import base64
import http.client
import json
import sqlite3
import threading

import pytest
from conftest import TEST_STORE, ServerProcess, hold_database, mock_env, served, wait_for
from mock_upstream import Reply, _event, anthropic_blocks_stream, anthropic_usage
from test_review14_leftovers import CLAUDE, TEXT, claude_reply  # Claude's answer holding TEXT

from stockyard.context import RequestContext
from stockyard.conversations import Conversations
from stockyard.providers import compaction, reasoning
from stockyard.store import Store, Writer, db

SENDABLE = "a?b"  # a summary holding it, as Stockyard mints it (a provider takes no lone surrogate)
SIGNATURE = "EqQBCkYIBRgCKkBsig-from-anthropic"
ADMIN_KEY = "admin-test-key-leftovers15-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-leftovers15-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_ADMIN_KEY=ADMIN_KEY,
        STOCKYARD_BUSY_TIMEOUT_MS="15000",  # a turn's append waits this long on a held database
    )
    with served(pyz_path, tmp_path_factory, "leftovers15", env, {"alice": [], "bob": []}) as srv:
        yield srv


def assert_ok(server: ServerProcess, trace_id: str) -> dict:
    trace = server.trace(trace_id)
    assert trace["outcome"] == "ok" and trace["status"] == 200, trace
    return trace


# --------------------------------------------------------------------------- 1. pack and mint


def claude_thinking(stream: bool) -> Reply:
    """Claude's answer: a signed thinking block whose text is :data:`TEXT`, then a word."""
    if stream:
        thinking = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": TEXT}, {"type": "signature_delta", "signature": SIGNATURE}]
        events = anthropic_blocks_stream([{"type": "text", "text": "done"}], 1, CLAUDE)
        head = [_event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": thinking})]
        head += [_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d}) for d in deltas]
        head.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        text = [e.replace('"index": 0', '"index": 1').replace('"index":0', '"index":1') for e in events[1:-2]]
        return Reply(sse=[events[0], *head, *text, *events[-2:]])
    doc = {
        "id": "msg_t1",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": [
            {"type": "thinking", "thinking": TEXT, "signature": SIGNATURE},
            {"type": "text", "text": "done"},
        ],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": anthropic_usage(CLAUDE),
    }
    return Reply(json=doc)


def packed_thinking(token: str) -> str:
    state = json.loads(base64.b64decode(token))
    assert state["stockyard"] == reasoning.VERSION, state
    (block,) = state["thinking_blocks"]
    assert block["signature"] == SIGNATURE, block
    return block["thinking"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_claudes_thinking_with_a_lone_surrogate_is_packed_into_the_reasoning_item(server, mock, stream):
    """Was: ``reasoning.pack`` encoded the thinking as UTF-8 and raised — the client's 400
    ``invalid_json`` (whole), a cut stream. Now the item carries it, escaped in the packing."""
    mock.enqueue(claude_thinking(stream))
    client = server.openai("alice")
    if not stream:
        raw = client.responses.with_raw_response.create(model=CLAUDE, input="hi")
        response = raw.parse()
    else:
        raw = client.responses.with_raw_response.create(model=CLAUDE, input="hi", stream=True)
        events = list(raw.parse())
        assert events[-1].type == "response.completed", events
        response = events[-1].response
    assert response.status == "completed" and response.output_text == "done"
    item = response.output[0]
    assert item.type == "reasoning" and item.summary[0].text == TEXT, item
    assert packed_thinking(item.encrypted_content) == TEXT
    assert_ok(server, raw.headers["x-stockyard-trace-id"])


def test_a_compaction_summary_with_a_lone_surrogate_is_minted(server, mock):
    """Was: ``compaction.mint`` raised on the model's summary — the client's 400 on ``/compact``."""
    mock.enqueue(claude_reply(False))
    client = server.openai("alice")
    raw = client.responses.with_raw_response.compact(model=CLAUDE, input="Plan a trip to Lisbon")
    *_, item = raw.parse().output
    assert item.type == "compaction" and item.encrypted_content.startswith(compaction.PREFIX), item
    body = item.encrypted_content[len(compaction.PREFIX) :]
    assert json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) == {"summary": SENDABLE}
    assert_ok(server, raw.headers["x-stockyard-trace-id"])
    # Was then: the token, escaped, came back refused ("not a compaction Stockyard made"). Sent back
    # now, its summary (the surrogate a ``?``) is what the model reads.
    mock.enqueue(claude_reply(False))
    back = [item.model_dump(exclude_none=True), {"role": "user", "content": "And the hotel?"}]
    raw = client.responses.with_raw_response.create(model=CLAUDE, input=back)
    assert raw.http_response.status_code == 200
    sent = mock.last("/v1/messages").json
    assert sent["messages"][0]["content"][0] == {"type": "text", "text": compaction.SUMMARY_HEADING + SENDABLE}


def test_a_streamed_compaction_summary_with_a_lone_surrogate_is_minted(server, mock):
    """Was: a cut stream (the token is minted at the stream's end, after the answer began)."""
    mock.enqueue(claude_reply(True))
    client = server.openai("alice")
    trigger = {"type": "compaction_trigger"}
    raw = client.responses.with_raw_response.create(
        model=CLAUDE, input=[{"role": "user", "content": "Plan a trip"}, trigger], store=False, stream=True
    )
    events = list(raw.parse())
    assert events[-1].type == "response.completed", events
    (item,) = events[-1].response.output
    assert item.type == "compaction" and item.encrypted_content.startswith(compaction.PREFIX), item
    body = item.encrypted_content[len(compaction.PREFIX) :]
    assert json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) == {"summary": SENDABLE}
    assert_ok(server, raw.headers["x-stockyard-trace-id"])


# --------------------------------------------------------------------------- 2. a paused turn


def paused_with_a_lone_surrogate() -> Reply:
    """Claude's streamed answer to a searching chat request, paused (``pause_turn``), whose second
    text block is :data:`TEXT`."""
    blocks = [{"type": "text", "text": "first-words"}, {"type": "text", "text": TEXT}]
    events = anthropic_blocks_stream(blocks, 1, CLAUDE)
    return Reply(sse=[e.replace('"end_turn"', '"pause_turn"') for e in events])


SEARCHING = {  # a chat request Claude may pause: it searches (``web_search_options``)
    "model": CLAUDE,
    "max_tokens": 16,
    "stream": True,
    "stream_options": {"include_usage": True},
    "web_search_options": {},
    "messages": [{"role": "user", "content": "hi"}],
}


def test_a_paused_turn_that_cannot_be_sent_back_ends_the_stream_cleanly(server, mock):
    """Was: a cut stream (the follow-up's body could not be encoded: ``shape_errors``' 502 after the
    answer began). Now no follow-up is sent (Anthropic would refuse it), the text goes out escaped, the
    answer ends ``length`` with its usage and ``[DONE]``, and the trace says why with the call's usage."""
    mock.enqueue(paused_with_a_lone_surrogate())
    calls = len([r for r in mock.requests if r.path.endswith("/v1/messages")])
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            json.dumps(SEARCHING),
            {**server.auth("alice"), "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        data = resp.read()  # a cut stream is http.client's IncompleteRead
        trace_id = resp.headers["x-stockyard-trace-id"]
    finally:
        conn.close()
    assert resp.status == 200, data
    events = [line[len(b"data: ") :] for line in data.split(b"\n\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]", data[-300:]
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "first-words" + TEXT
    assert b"\\ud800" in data  # escaped, as the provider wrote it
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == [
        "length"
    ]
    (usage,) = [c["usage"] for c in chunks if c.get("usage")]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0, usage
    assert len([r for r in mock.requests if r.path.endswith("/v1/messages")]) == calls + 1  # no follow-up
    trace = assert_ok(server, trace_id)
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert "finish_reason length" in trace["error_message"] and "surrogate" in trace["error_message"], trace


def test_a_paused_turn_that_cannot_be_sent_back_read_whole_is_the_answer_so_far(server, mock):
    """The same turn not streamed: was the client's 502 (before a byte went out); now its answer so
    far, ``length``."""
    blocks = [{"type": "text", "text": "first-words"}, {"type": "text", "text": TEXT}]
    doc = {
        "id": "msg_p1",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": blocks,
        "stop_reason": "pause_turn",
        "stop_sequence": None,
        "usage": anthropic_usage(CLAUDE),
    }
    mock.enqueue(Reply(json=doc))
    calls = len([r for r in mock.requests if r.path.endswith("/v1/messages")])
    ask = {k: v for k, v in SEARCHING.items() if k not in ("stream", "stream_options")}
    raw = server.openai("alice").chat.completions.with_raw_response.create(**ask)
    answer = raw.parse()
    assert answer.choices[0].message.content == "first-words" + TEXT
    assert answer.choices[0].finish_reason == "length"
    assert len([r for r in mock.requests if r.path.endswith("/v1/messages")]) == calls + 1  # no follow-up
    trace = assert_ok(server, raw.headers["x-stockyard-trace-id"])
    assert trace["prompt_tokens"] == answer.usage.prompt_tokens > 0, trace
    assert "surrogate" in trace["error_message"], trace


# --------------------------------------------------------------------------- 3. a trace id that cannot be one


@pytest.mark.parametrize(
    "ident",
    [
        "tr_0190f3a1b2c3d4e5f6a7b8c9%00",  # a NUL after a well-formed id
        "tr_0190f3a1b2c3%00d4e5f6a7b8c9",
        "tr_0190F3A1B2C3D4E5F6A7B8C9",  # upper case: no id Stockyard makes
        "tr_0190f3a1b2c3d4e5f6a7b8c9a",  # one digit too many
        "resp_0190f3a1b2c3d4e5f6a7b8c9",
        "tr_" + "0" * 500,
    ],
)
@pytest.mark.parametrize("method, tail", [("GET", ""), ("DELETE", "/body")])
def test_an_id_that_cannot_be_a_traces_is_a_400_naming_it(server, ident, method, tail):
    """Was: 404 (GET, and the erase of an id holding a NUL), as for a trace that is not there."""
    status, _, raw = server.request(method, f"/api/traces/{ident}{tail}", headers=ADMIN)
    assert status == 400, (status, raw[:300])
    error = json.loads(raw)["error"]
    assert error["param"] == "id" and error["message"].startswith("not a trace id: "), error
    assert "tr_0190f3a1b2c3d4e5f6a7b8c9" in error["message"]  # the shape ids have, named


@pytest.mark.parametrize("method, tail", [("GET", ""), ("DELETE", "/body")])
def test_a_well_formed_trace_id_of_no_trace_is_still_a_404(server, method, tail):
    status, _, raw = server.request(method, f"/api/traces/tr_0190f3a1b2c3d4e5f6a7b8c9{tail}", headers=ADMIN)
    assert status == 404, (status, raw[:300])


# --------------------------------------------------------------------------- 4. whose conversation, first


def test_another_keys_read_of_a_conversation_does_not_wait_for_its_append(server, mock):
    """Alice's turn joins her conversation; the database is held by another connection, so the
    writer cannot append the turn (it waits out the 15 s busy timeout). Bob naming the conversation
    gets its 404 at once — was: after the append's wait. Alice's own read still waits for it, and
    finds the turn once the database is free. On PostgreSQL, where another replica may take alice's
    next request, her answer itself waits for the append (Conversations._before_the_end): bob's 404
    comes while it still waits."""
    status, _, raw = server.request("POST", "/v1/conversations", {}, server.auth("alice"))
    assert status == 200, raw
    conversation = json.loads(raw)["id"]
    since = len(mock.requests)
    release = hold_database(server.db)
    got: dict[str, tuple[int, bytes]] = {}
    answered = {who: threading.Event() for who in ("turn", "alice", "bob")}

    def ask(who: str, method: str, path: str, body: dict | None = None) -> None:
        status, _, raw = server.request(method, path, body, server.auth("alice" if who == "turn" else who))
        got[who] = (status, raw)
        answered[who].set()

    items = f"/v1/conversations/{conversation}/items"
    turn = {"model": CLAUDE, "input": "hi", "conversation": conversation}
    asks = {"turn": ("POST", "/v1/responses", turn), "bob": ("GET", items), "alice": ("GET", items)}
    threads = {who: threading.Thread(target=ask, args=(who, *args), daemon=True) for who, args in asks.items()}
    try:
        threads["turn"].start()
        if TEST_STORE == "sqlite":  # the answer first: its append waits on the lock
            wait_for(answered["turn"].is_set, timeout=5, what="alice's answer")
        else:
            wait_for(lambda: len(mock.requests) > since, what="alice's turn at the provider")
        threads["bob"].start()
        wait_for(answered["bob"].is_set, timeout=5, what="bob's answer while the append is held")
        if TEST_STORE == "postgresql":
            assert not answered["turn"].is_set(), "alice's answer waits for its append"
        threads["alice"].start()  # (the database still held: bob did not wait for the append)
    finally:
        release()
    status, raw = got["bob"]
    assert status == 404 and json.loads(raw)["error"]["code"] == "not_found", raw
    wait_for(answered["turn"].is_set, timeout=15, what="alice's answer")
    status, raw = got["turn"]
    assert status == 200 and json.loads(raw)["status"] == "completed", raw
    wait_for(answered["alice"].is_set, timeout=15, what="alice's read once the append committed")
    status, raw = got["alice"]
    assert status == 200 and len(json.loads(raw)["data"]) == 2, raw  # her input and the answer: the turn


# --------------------------------------------------------------------------- 5. one message for a full queue


def test_settle_says_a_full_queue_as_the_store_does(tmp_path):
    """A real writer on a SQLite file another connection holds: its first job waits for the lock,
    two more fill its queue, and a write a request keeps (queued without a wait, as on the relay
    thread) fails at once with the store's ``queue.Full``. ``settle`` notes it in that message (the
    queue's depth with it), not a second wording of its own."""
    path = tmp_path / "stockyard.db"
    db.open_and_migrate(path)[0].close()
    writer = Writer(path, maxsize=2).start()
    lock = sqlite3.connect(path, isolation_level=None, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        stuck = writer.later(lambda c: c.execute("INSERT INTO meta (key, value) VALUES ('stuck', 'v')"))
        wait_for(lambda: writer.depth == 0, what="the writer took the first job (it waits for the lock)")
        assert not stuck.done()
        for i in range(2):
            writer.submit(lambda c, i=i: c.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", (f"k{i}",)))
        store = Store(path, writer)
        conversations = Conversations(store, None, None, None, 1 << 20)  # type: ignore[arg-type]
        ctx = RequestContext("responses", "openai", "127.0.0.1", {})
        ctx.kept_later.append(("the turn was not appended", store.write_later(lambda c: None, 0.0, urgent=False)))
        conversations.settle(ctx, wait_s=1.0)
        said = ctx.attempt.error_message or ""
        assert said == "the turn was not appended: Full: the database writer's queue is full (2 waiting)", said
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        writer.stop()

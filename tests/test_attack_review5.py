"""An attacker's review, part 5 (any key): what c24222e..6c78489 and after added — Responses
``item_reference`` resolution, Gemini's schema cleaning, Claude Code's ``user_id`` and the
Responses translation's new tool fields, and what a stream cut before its usage is billed. Each
test failed on the code it was written against (an answer many times the body limit, a 500 and a
traceback, or a conversation's history billed as a few tokens)."""

from __future__ import annotations

import json
import time

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import Reply

MAX_BODY = 4 * 1024 * 1024  # STOCKYARD_MAX_BODY_BYTES of this server: what a request may carry whole
CLAUDE = "claude-haiku-4-5"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-review5",
        ANTHROPIC_BASE_URL=mock.url,
        GEMINI_API_KEY="AIza-review5-0123456789abcdef",
        GEMINI_BASE_URL=mock.url,
        STOCKYARD_MAX_BODY_BYTES=str(MAX_BODY),
        STOCKYARD_ENCRYPTION_KEY="review5-encryption-secret-0123456789abcdef",
    )
    keys = {"alice": [], "bob": [], "budgeted": ["--budget-usd", "0.15", "--budget-period", "day"]}

    def add_local(srv: ServerProcess) -> None:
        added = srv.cli(
            "providers", "add", "local", "--kind", "openai-compatible", "--base-url", mock.url + "/v1",
            "--models", "local-", "--key-stdin", input="sk-local-review5",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr

    with served(pyz_path, tmp_path_factory, "attack5", env, keys, before_start=add_local) as srv:
        yield srv


def post(server: ServerProcess, who: str, path: str, body: dict) -> tuple[int, dict, bytes]:
    return server.request("POST", path, body, headers=server.auth(who))


def claude_says(text: str) -> Reply:
    """An Anthropic answer of ``text``, as the Messages API returns one."""
    return Reply(
        json={
            "id": "msg_review5",
            "type": "message",
            "role": "assistant",
            "model": CLAUDE,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 5},
        }
    )


def stored_answer(server: ServerProcess, mock, items: list | str, text: str = "ok") -> dict:
    """A translated response of alice's, kept by Stockyard (its output items can be referenced)."""
    mock.enqueue(claude_says(text))
    status, _, raw = post(server, "alice", "/v1/responses", {"model": CLAUDE, "input": items})
    assert status == 200, raw
    return json.loads(raw)


# -- 1. item_reference: what the references put in is bounded, and each stored response read once ---


def test_item_references_put_in_no_more_than_a_body_could_carry(server, mock):
    """Each reference to a stored output item was replaced by the item, however many times the
    body named it: 60 references (~6 KB) to a 200 KB answer made a 12 MB request in memory and
    upstream, past STOCKYARD_MAX_BODY_BYTES (4 MiB here), as a previous_response_id history may not."""
    first = stored_answer(server, mock, "write a long text", "x" * 200_000)
    reference = {"type": "item_reference", "id": first["output"][0]["id"]}
    before = len(mock.requests)
    status, _, raw = post(server, "alice", "/v1/responses", {"model": CLAUDE, "input": [reference] * 60})
    assert status == 400, raw[:300]
    error = json.loads(raw)["error"]
    assert (error["code"], error["param"]) == ("conversation_too_large", "input"), error
    assert len(mock.requests) == before  # nothing went upstream


def test_many_references_to_one_stored_response_are_resolved_in_linear_time(server, mock):
    """Each reference read and unpacked its stored response's whole row again (its input too):
    3,000 references to the answer of a 700 KB conversation parsed ~2 GB of JSON on one request."""
    turns = [{"role": "user", "content": f"turn {i}"} for i in range(14_000)]  # ~700 KB of input items
    first = stored_answer(server, mock, turns)
    wait_for(lambda: server.db_rows("SELECT id FROM responses WHERE id = ?", (first["id"],)), what="the row committed")
    reference = {"type": "item_reference", "id": first["output"][0]["id"]}
    body = {"model": CLAUDE, "input": [{"role": "user", "content": "again"}, *[reference] * 3000]}
    started = time.monotonic()
    status, _, raw = post(server, "alice", "/v1/responses", body)
    elapsed = time.monotonic() - started
    assert status == 200, raw[:300]
    print(f"ELAPSED {elapsed:.2f}")
    assert elapsed < 5, f"{elapsed:.1f} s"


# -- 2. Gemini's schema cleaning: $refs inlined without bound on what they expand to ----------------


def test_a_tool_schema_whose_refs_expand_past_a_bound_is_a_400(server, mock):
    """MAX_SCHEMA_REFS capped the $refs inlined (500), not what they expand to: one definition of
    1,000 properties referenced 100 times is a 40 KB body that became a 100,000-node schema (with
    20,000 properties and 500 refs, 600 KB became 295 MB of JSON, 2.6 GB of memory and ~30 s of CPU)."""
    big = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(1000)}}
    schema = {
        "type": "object",
        "$defs": {"Big": big},
        "properties": {f"r{i}": {"$ref": "#/$defs/Big"} for i in range(100)},
    }
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    body = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    before = len(mock.requests)
    status, _, raw = post(server, "alice", "/v1/chat/completions", body)
    assert status == 400, raw[:300]
    assert json.loads(raw)["error"]["code"] == "unsupported_schema"
    assert len(mock.requests) == before


def test_a_nested_pydantic_schema_still_reaches_gemini(server, mock):
    """The bound leaves ordinary nested models alone: a definition used in several places."""
    address = {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}
    schema = {
        "type": "object",
        "$defs": {"Address": address},
        "properties": {name: {"$ref": "#/$defs/Address"} for name in ("home", "work", "billing", "shipping")},
    }
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    body = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    status, _, raw = post(server, "alice", "/v1/chat/completions", body)
    assert status == 200, raw[:300]
    sent = mock.last(":generateContent").json["tools"][0]["functionDeclarations"][0]["parameters"]
    assert sent["properties"]["work"] == address


# -- 3. a lone UTF-16 surrogate in a field that is re-encoded: a 500 and a traceback -----------------

LONE = "\ud800"
SURROGATES = {
    # Claude Code's JSON user_id, over 64 characters: its SHA-256 for a chat provider (messages.chat_user)
    "messages-user-id-hashed": (
        "/v1/messages",
        {
            "model": "gpt-4o-mini",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"user_id": '{"device_id": "%s", "account_uuid": "a", "session_id": "s"}' % ("d" * 64 + LONE)},
        },
    ),
    # a namespaced call's namespace, a tool_search's description, a tool output (the Responses translation)
    "responses-namespace": (
        "/v1/responses",
        {
            "model": CLAUDE,
            "input": [
                {"role": "user", "content": "hi"},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}", "namespace": LONE},
                {"type": "function_call_output", "call_id": "c", "output": "x"},
            ],
        },
    ),
    "responses-tool-search": (
        "/v1/responses",
        {
            "model": CLAUDE,
            "input": "hi",
            "tools": [{"type": "tool_search", "execution": "client", "description": LONE}],
        },
    ),
    "responses-prompt-cache-options-gemini": (
        "/v1/responses",
        {"model": "gemini-2.5-flash", "input": "hi", "prompt_cache_options": LONE},
    ),
}


@pytest.mark.parametrize("route", list(SURROGATES))
def test_a_lone_surrogate_in_a_translated_field_is_a_400_not_a_500(server, route):
    """JSON may carry a lone \\ud800 escape; Python reads it, but cannot encode it as UTF-8 for
    the provider (UnicodeEncodeError): the client's malformed text, a 400 like a malformed body."""
    path, body = SURROGATES[route]
    mark = len(server.log_lines)
    status, _, raw = post(server, "alice", path, body)
    assert status == 400, (status, raw[:300])
    assert "surrogate" in raw.decode()
    assert "Traceback" not in "".join(server.log_lines[mark:])


# -- 4. a stream cut before its usage: the conversation it continued counts as input ----------------


def test_a_cut_stream_continuing_a_conversation_bills_its_history_as_input(server, mock):
    """A chat-only provider counts the prompt only at the stream's end. Cut before that (the
    client leaves after the first words, or the provider breaks), the input was billed as the
    body's bytes / 4 (a previous_response_id body: ~20 tokens), though the provider was sent, and
    bills, the whole conversation (~100,000 tokens here): a key could ask about a long
    conversation again and again for almost nothing. Budgets and tpm held the history already
    (estimate.input_tokens); the bill now counts it too."""
    model = "local-model"
    long_turn = [{"role": "user", "content": "y" * 400_000}]
    status, _, raw = post(server, "alice", "/v1/responses", {"model": model, "input": long_turn})
    assert status == 200, raw[:300]
    previous = json.loads(raw)["id"]
    mock.enqueue(Reply(cut_after=2))  # the answer's first chunks, then the connection drops: no usage
    body = {"model": model, "input": "and then?", "previous_response_id": previous, "stream": True}
    status, headers, raw = post(server, "alice", "/v1/responses", body)
    assert status == 200 and b"output_text.delta" in raw, raw[:300]
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["outcome"] == "stream_broken", trace["outcome"]
    assert trace["prompt_tokens"] >= 100_000, trace["prompt_tokens"]


# -- 5. output_config.effort of another type on a Gemini model: a 500 --------------------------------


@pytest.mark.parametrize("effort", [[], {}, ["high"]], ids=["list", "object", "list-of-one"])
def test_a_messages_effort_that_is_not_a_string_is_a_400(server, effort):
    """``value not in EFFORTS`` raised TypeError (unhashable) for a list or an object."""
    body = {
        "model": "gemini-2.5-flash",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "output_config": {"effort": effort},
    }
    status, _, raw = post(server, "alice", "/v1/messages", body)
    assert status == 400, (status, raw[:300])
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"


# -- 6. a tool message's media moved after the tool results: quadratic in its parts -------------------


def test_a_tool_message_with_many_parts_is_translated_in_linear_time(server, mock):
    """chatshape.tool_media_after kept a tool message's other parts with ``p not in media``: each
    text part compared with every image part. 20,000 of each (a 2 MB body) took ~15 s of CPU on
    the request thread (a 32 MB body: about an hour)."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    parts = [image] * 20_000 + [{"type": "text", "text": "a"}] * 20_000
    call = {"id": "c", "type": "function", "function": {"name": "look", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c", "content": parts},
    ]
    mock.enqueue(claude_says("seen"))
    started = time.monotonic()
    status, _, raw = post(server, "alice", "/v1/chat/completions", {"model": CLAUDE, "messages": messages})
    elapsed = time.monotonic() - started
    assert status == 200, raw[:300]
    assert elapsed < 5, f"{elapsed:.1f} s"


# -- 7. a one-hour prompt cache write: dearer than the input rate the worst case held ----------------


def test_a_request_asking_a_one_hour_cache_holds_its_write_rate(server, mock):
    """A 1-hour cache write costs twice the input rate on Claude (a 5-minute one 1.25x), and a
    chat or Responses request's prompt_cache_retention "24h" asks for one since c24222e..; the
    worst case held the 1.25x rate: this ~100,000-token prompt (at most $0.20 once written for an
    hour) was let through a $0.15 budget, held at $0.125."""
    body = {
        "model": CLAUDE,
        "max_tokens": 1,
        "system": [{"type": "text", "text": "z" * 400_000, "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [{"role": "user", "content": "hi"}],
    }
    before = len(mock.requests)
    status, _, raw = post(server, "budgeted", "/v1/messages", body)
    assert status == 429, raw[:300]
    assert b"budget_exceeded" in raw, raw
    assert len(mock.requests) == before
    del body["system"][0]["cache_control"]["ttl"]  # a 5-minute write: 1.25x, held at $0.125, fits
    mock.enqueue(claude_says("ok"))
    status, _, raw = post(server, "budgeted", "/v1/messages", body)
    assert status == 200, raw[:300]


# -- 8. a cut stream whose output is not text: an image billed nothing -------------------------------


def image_events(b64: str) -> list[str]:
    """An OpenAI Responses stream with the image_generation tool, up to its first partial image."""

    def block(kind: str, **fields) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}"

    response = {"id": "resp_img", "object": "response", "status": "in_progress", "model": "gpt-4o-mini", "output": []}
    item = {"id": "ig_1", "type": "image_generation_call", "status": "in_progress"}
    return [
        block("response.created", sequence_number=0, response=response),
        block("response.in_progress", sequence_number=1, response=response),
        block("response.output_item.added", sequence_number=2, output_index=0, item=item),
        block(
            "response.image_generation_call.partial_image",
            sequence_number=3,
            output_index=0,
            item_id="ig_1",
            partial_image_index=0,
            partial_image_b64=b64,
        ),
    ]


def test_a_stream_cut_after_a_partial_image_is_not_billed_as_having_made_nothing(server, mock):
    """b30c4f4 bills a stream of whole events without text as having written nothing (right for
    response.created / message_start then a break). An image carries no text: a client that left
    after a partial image (or a small final one, before response.completed and its usage) got the
    picture for its input alone. Only the events that frame a stream count as nothing now.
    The image is billed as an image (test_image_tool_billing): the largest one at gpt-image-1's
    output rate ($40 per 1M) and the partial's 100 tokens, not its base64 as text."""
    b64 = "iVBORw0KGgo" + "A" * 100_000  # a ~100 KB partial image, under the trace's 256 KB capture
    mock.enqueue(Reply(sse=image_events(b64), cut_after=4))
    body = {
        "model": "gpt-4o-mini",
        "input": "draw a cat",
        "tools": [{"type": "image_generation", "partial_images": 1}],
        "stream": True,
    }
    status, headers, raw = post(server, "alice", "/v1/responses", body)
    assert status == 200 and b"partial_image_b64" in raw, raw[:300]
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["outcome"] == "stream_broken", trace["outcome"]
    assert trace["cost_status"] == "estimate" and trace["cost_uc"] >= (6240 + 100) * 4000, trace["cost_uc"]
    assert trace["completion_tokens"] < len(b64) // 400, "nor its base64 as text as well"

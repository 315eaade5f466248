"""The Responses API through Stockyard with the official openai SDK, the same client code against
(a) an OpenAI-kind provider that speaks it (passed through) and (b) an Anthropic-kind provider
(translated over Chat Completions), both the mock upstream."""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path

import pytest
import rawhttp
from conftest import OPENAI_KEY, ServerProcess, mock_env, served, wait_for
from mock_upstream import (
    COMPACTED,
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    TEXT,
    THINK_SIG,
    THINKING_SIGNATURE,
    THOUGHT_SIGNATURE,
    Reply,
    anthropic_thinking_call,
    responses_object,
    responses_stream,
)
from module_helpers import client_key
from openai import BadRequestError, NotFoundError, OpenAI, RateLimitError
from pydantic import BaseModel

from stockyard.httpio import MAX_JSON_VALUES
from stockyard.providers import compaction
from stockyard.providers.responses import function_name

ADMIN = "admin-key-for-responses-tests-0123456789"
MODELS = {"passthrough": "gpt-4o-mini", "translated": "claude-haiku-4-5"}
RATES = {"gpt-4o-mini": (15_000_000, 60_000_000), "claude-haiku-4-5": (100_000_000, 500_000_000)}  # µ¢ per 1M
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "the weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
IMAGE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="  # noqa: E501 (a whole 1x1 PNG)


class Weather(BaseModel):
    city: str


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        GEMINI_API_KEY="AIza-test-0123456789abcdefGEMINI",
        GEMINI_BASE_URL=mock.url,
        STOCKYARD_ADMIN_KEY=ADMIN,
    )
    with served(pyz_path, tmp_path_factory, "responses", env) as srv:
        yield srv


@pytest.fixture(scope="module")
def keys(server) -> tuple[str, str]:
    return client_key(server, ADMIN, name="alice"), client_key(server, ADMIN, name="bob")


@pytest.fixture(scope="module")
def client(server, keys) -> OpenAI:
    return server.openai(keys[0])


@pytest.fixture(scope="module")
def other(server, keys) -> OpenAI:
    return server.openai(keys[1])


@pytest.fixture(params=list(MODELS))
def model(request) -> str:
    return MODELS[request.param]


def check_sequence(events: list) -> None:
    """The order and indices of a Responses event stream, as OpenAI sends it."""
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds
    assert kinds[-1] == "response.completed", kinds
    assert [e.sequence_number for e in events] == list(
        range(events[0].sequence_number, events[0].sequence_number + len(events))
    )
    open_items: dict[int, str] = {}
    for e in events[2:-1]:
        if e.type == "response.output_item.added":
            assert e.output_index not in open_items
            open_items[e.output_index] = e.item.id
        elif e.type == "response.output_item.done":
            assert open_items.pop(e.output_index) == e.item.id
        else:
            assert open_items.get(e.output_index) == e.item_id, e  # every inner event names its open item
    assert not open_items
    message = [k for k in kinds if k.startswith(("response.content_part", "response.output_text"))]
    if message:
        deltas = [k for k in message if k == "response.output_text.delta"]
        assert message == [
            "response.content_part.added",
            *deltas,
            "response.output_text.done",
            "response.content_part.done",
        ]


def test_create_plain(client, model):
    response = client.responses.create(model=model, input="Say hello", instructions="Be brief")
    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == TEXT
    assert (response.usage.input_tokens, response.usage.output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)


def test_stream_helpers(client, model):
    with client.responses.stream(model=model, input="Say hello") as stream:
        events = list(stream)
        final = stream.get_final_response()
    check_sequence(events)
    assert final.output_text == TEXT and final.usage.output_tokens == COMPLETION_TOKENS
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT


def test_raw_stream_events(client, model):
    events = list(client.responses.create(model=model, input="Say hello", stream=True))
    check_sequence(events)
    done = [e for e in events if e.type == "response.output_text.done"]
    assert [e.text for e in done] == [TEXT] and (done[0].output_index, done[0].content_index) == (0, 0)
    assert events[-1].response.output_text == TEXT and events[-1].response.id == events[0].response.id


@pytest.mark.parametrize("stream", [False, True])
def test_function_calling_over_two_turns(client, model, mock, stream):
    if stream:
        with client.responses.stream(model=model, input="Weather in Paris?", tools=[WEATHER_TOOL]) as s:
            check_sequence(list(s))
            first = s.get_final_response()
    else:
        first = client.responses.create(model=model, input="Weather in Paris?", tools=[WEATHER_TOOL])
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    assert second.output_text == TEXT and second.previous_response_id == first.id
    if model == MODELS["translated"]:  # Stockyard rebuilt the conversation from its own store
        messages = mock.last("/v1/messages").json["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user"]
        assert messages[1]["content"][-1]["type"] == "tool_use" and messages[2]["content"][0]["type"] == "tool_result"
    else:  # the provider keeps the state: the body went as it was
        assert mock.last("/v1/responses").json["previous_response_id"] == first.id


def test_structured_output(client, model):
    parsed = client.responses.parse(model=model, input="Where?", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Paris")
    raw = client.responses.create(
        model=model,
        input="Where?",
        text={
            "format": {
                "type": "json_schema",
                "name": "weather",
                "schema": Weather.model_json_schema() | {"additionalProperties": False},
                "strict": True,
            }
        },
    )
    assert json.loads(raw.output_text) == {"city": "Paris"}


def test_image_input(client, model, mock):
    content = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": IMAGE}]
    response = client.responses.create(model=model, input=[{"role": "user", "content": content}])
    assert response.output_text == TEXT
    if model == MODELS["translated"]:
        blocks = mock.last("/v1/messages").json["messages"][0]["content"]
        assert [b["type"] for b in blocks] == ["text", "image"] and blocks[1]["source"]["type"] == "base64"
    else:
        assert mock.last("/v1/responses").json["input"][0]["content"] == content


def test_a_stored_response_belongs_to_its_key(client, other, model):
    made = client.responses.create(model=model, input="Say hello")
    assert client.responses.retrieve(made.id).output_text == TEXT
    assert [i.type for i in client.responses.input_items.list(made.id).data] == ["message"]
    for attempt in (
        lambda: other.responses.retrieve(made.id),
        lambda: other.responses.input_items.list(made.id),
        lambda: other.responses.delete(made.id),
        lambda: other.responses.create(model=model, input="more", previous_response_id=made.id),
    ):
        with pytest.raises(NotFoundError):
            attempt()
    client.responses.delete(made.id)
    with pytest.raises(NotFoundError):
        client.responses.retrieve(made.id)


def test_store_false_keeps_nothing(server, client, model):
    made = client.responses.create(model=model, input="Say hello", store=False)
    with pytest.raises(NotFoundError):
        client.responses.retrieve(made.id)
    assert server.db_rows("SELECT id FROM responses WHERE id = ?", (made.id,)) == []


@pytest.mark.parametrize("stream", [False, True])
def test_costs_are_usage_times_price(server, keys, model, stream):
    body = {"model": model, "input": "Say hello", "stream": stream}
    status, headers, _ = server.request("POST", "/v1/responses", body, headers={"Authorization": f"Bearer {keys[0]}"})
    assert status == 200
    trace = wait_for(lambda: (t := server.trace(headers["x-stockyard-trace-id"]))["cost_status"] == "exact" and t)
    input_rate, output_rate = RATES[model]
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert trace["cost_uc"] == -(-(PROMPT_TOKENS * input_rate + COMPLETION_TOKENS * output_rate) // 1_000_000)
    assert trace["endpoint"] == "responses"


def test_builtin_tool_on_a_translated_provider_is_refused_by_name(client):
    with pytest.raises(Exception) as caught:
        client.responses.create(
            model=MODELS["translated"], input="news?", tools=[{"type": "file_search", "vector_store_ids": ["v"]}]
        )
    assert caught.value.status_code == 400 and "tools" in (caught.value.body or {}).get("param", "")


def test_builtin_tools_pass_through_untouched(client, mock):
    client.responses.create(
        model=MODELS["passthrough"],
        input="news?",
        tools=[{"type": "web_search"}],
        reasoning={"effort": "low"},
        include=["reasoning.encrypted_content"],
    )
    sent = mock.last("/v1/responses").json
    assert sent["tools"] == [{"type": "web_search"}] and sent["include"] == ["reasoning.encrypted_content"]


def test_input_tokens(client, model):
    counted = client.responses.input_tokens.count(model=model, input="Say hello")
    assert counted.input_tokens > 0


# pydantic-ai 2.62's count before a request (UsageLimits(count_tokens_before_request=True)), as it sends it.
PYDANTIC_AI_COUNT = {
    "model": "claude-haiku-4-5",
    "input": [{"role": "user", "content": "Weather?"}],
    "tool_choice": "auto",
    "tools": [
        {
            "name": "weather",
            "parameters": {
                "additionalProperties": False,
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "type": "object",
            },
            "type": "function",
            "description": "Weather.",
            "strict": True,
        }
    ],
}


def test_input_tokens_estimate_counts_the_tools(client):
    bare = {k: v for k, v in PYDANTIC_AI_COUNT.items() if k not in ("tools", "tool_choice")}
    without = client.responses.input_tokens.count(**bare).input_tokens
    raw = client.responses.input_tokens.with_raw_response.count(**PYDANTIC_AI_COUNT)
    tools_bytes = len(json.dumps(PYDANTIC_AI_COUNT["tools"][0]["parameters"]))
    assert raw.parse().input_tokens >= without + tools_bytes // 4  # the tool definitions are input too
    assert raw.headers["x-stockyard-token-count"] == "estimate"


# The OpenAI Agents SDK 0.24's OpenAIResponsesCompactionSession calls ``responses.compact`` after a
# turn, with the previous response's id (or its stored items as ``input`` when store is off).
AGENTS_COMPACT = {"model": "gpt-4o-mini", "previous_response_id": None}


def test_compact_passes_through(server, mock, client):
    first = client.responses.create(model="gpt-4o-mini", input="Say hello")
    raw = client.responses.with_raw_response.compact(**{**AGENTS_COMPACT, "previous_response_id": first.id})
    compacted = raw.parse()
    assert compacted.object == "response.compaction" and compacted.output[-1].type == "compaction"
    assert mock.last("/v1/responses/compact").json == {**AGENTS_COMPACT, "previous_response_id": first.id}
    trace = wait_for(lambda: (t := server.trace(raw.headers["x-stockyard-trace-id"]))["cost_status"] == "exact" and t)
    input_rate, output_rate = RATES["gpt-4o-mini"]
    assert (trace["endpoint"], trace["prompt_tokens"], trace["completion_tokens"]) == (
        "compact",
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )
    assert trace["cost_uc"] == -(-(PROMPT_TOKENS * input_rate + COMPLETION_TOKENS * output_rate) // 1_000_000)
    # the compacted items are the next turn's input, the compaction item among them as OpenAI made it
    items = [item.model_dump(exclude_none=True) for item in compacted.output]
    client.responses.create(model="gpt-4o-mini", input=[*items, {"role": "user", "content": "And now?"}])
    assert mock.last("/v1/responses").json["input"][: len(items)] == items


# --------------------------------------------------------------------------- compaction, translated

COMPACTING = {"claude-haiku-4-5": "anthropic", "gemini-2.5-pro": "gemini"}  # model → provider
TRIP = [
    {"role": "user", "content": "Plan a trip to Lisbon"},
    {"role": "assistant", "content": "Three days, by train?"},
    {"role": "user", "content": "Yes"},
]


def sent_to(mock, model: str) -> str:
    """The newest request the provider of ``model`` got, as JSON text."""
    path = "/v1/messages" if model.startswith("claude") else f"/v1beta/models/{model}:"
    return json.dumps(mock.last(path).json, ensure_ascii=False)


def costed(server: ServerProcess, trace_id: str) -> dict:
    return wait_for(lambda: (t := server.trace(trace_id))["cost_status"] == "exact" and t)


@pytest.mark.parametrize("model", list(COMPACTING))
def test_compact_on_a_translated_provider_is_the_models_summary(server, mock, client, model):
    """``client.responses.compact`` (the SDK's; the Agents SDK's compaction session calls it) on Claude and
    Gemini, a 400 before: the model writes the summary (Stockyard's instruction as the last user message),
    the answer is OpenAI's — the user messages, then one compaction item — traced as ``compact`` with the
    call's own tokens and cost; the next turn, carrying those items, gives the model the summary as a user
    message in place of the turns it replaced."""
    raw = client.responses.with_raw_response.compact(model=model, input=TRIP, instructions="Be brief")
    compacted = raw.parse()
    assert compacted.object == "response.compaction" and compacted.usage.output_tokens == COMPLETION_TOKENS
    *kept, item = compacted.output
    assert [m.content[0].text for m in kept] == ["Plan a trip to Lisbon", "Yes"]
    assert item.type == "compaction" and item.encrypted_content.startswith(compaction.PREFIX)
    asked = sent_to(mock, model)
    assert compaction.INSTRUCTION in asked and "Three days, by train?" in asked and "Be brief" in asked
    trace = costed(server, raw.headers["x-stockyard-trace-id"])
    assert (trace["endpoint"], trace["provider"], trace["prompt_tokens"], trace["completion_tokens"]) == (
        "compact",
        COMPACTING[model],
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )
    assert trace["cost_uc"] > 0
    items = [o.model_dump(exclude_none=True) for o in compacted.output]
    answer = client.responses.create(model=model, input=[*items, {"role": "user", "content": "And the hotel?"}])
    assert answer.output_text == TEXT
    sent = sent_to(mock, model)
    assert json.dumps(compaction.SUMMARY_HEADING + TEXT)[1:-1] in sent and "And the hotel?" in sent
    assert "Three days, by train?" not in sent and compaction.INSTRUCTION not in sent


def test_compact_a_translated_conversation_by_its_id(client, mock):
    """The Agents SDK's session compacts by ``previous_response_id`` when store is on: the stored turns
    are summarised."""
    first = client.responses.create(model="claude-haiku-4-5", input="Plan a trip to Lisbon")
    compacted = client.responses.compact(model="claude-haiku-4-5", previous_response_id=first.id)
    assert [o.type for o in compacted.output] == ["message", "compaction"]
    asked = sent_to(mock, "claude-haiku-4-5")
    assert "Plan a trip to Lisbon" in asked and TEXT in asked and compaction.INSTRUCTION in asked


# Codex CLI's /responses/compact body (codex-rs codex-api ``CompactionInput``), for its first remote compaction.
CODEX_COMPACT_FIELDS = ("instructions", "tools", "parallel_tool_calls", "reasoning", "prompt_cache_key")


def test_codex_compact_endpoint_body_on_a_translated_provider(server, keys, mock):
    """Codex's ``POST /v1/responses/compact`` (not streamed): its tools stay defined for the history's calls
    but may not be called while the model summarises."""
    body = {**{k: codex_body("anthropic").get(k) for k in CODEX_COMPACT_FIELDS}, "instructions": "You are Codex."}
    body |= {"model": "claude-sonnet-4-5", "input": codex_body("anthropic")["input"]}
    status, _, raw = server.request(
        "POST", "/v1/responses/compact", body, headers={**CODEX["headers"], "Authorization": f"Bearer {keys[0]}"}
    )
    assert status == 200, raw
    answer = json.loads(raw)
    assert [o["type"] for o in answer["output"]] == ["message", "message", "compaction"]
    sent = mock.last("/v1/messages").json
    assert sent["tool_choice"] == {"type": "none"} and sent["tools"]


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
def test_codex_remote_compaction_on_a_translated_provider(server, keys, mock, kind):
    """Codex 0.171.0's built-in OpenAI provider compacts with its ordinary streamed request whose input ends
    with ``{"type": "compaction_trigger"}`` (remote compaction v2: codex-rs core/src/compact_remote_v2.rs), a
    400 naming ``input[i].type`` on Claude and Gemini before. Codex reads the ``response.output_item.done``
    events, wants exactly one compaction item and ``response.completed``, keeps the user messages itself and
    sends the item back in the next turn's input."""
    body = codex_body(kind)
    said = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Two files."}]}
    compacting = {**body, "input": [*body["input"], said, {"type": "compaction_trigger"}]}
    status, head, events = codex_post(server, keys[0], compacting)
    assert status == 200 and events[-1]["type"] == "response.completed", events
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [i["type"] for i in done] == ["compaction"] and done[0]["encrypted_content"].startswith(compaction.PREFIX)
    assert not any(e["type"].startswith("response.output_text") for e in events)
    model = body["model"]
    asked = sent_to(mock, model)
    assert compaction.INSTRUCTION in asked and "Two files." in asked
    trace = costed(server, head["x-stockyard-trace-id"])
    assert (trace["endpoint"], trace["provider"]) == ("responses", kind)
    assert trace["completion_tokens"] > 0 and trace["cost_uc"] > 0
    kept = [i for i in body["input"] if i.get("role") == "user"]
    echoed = {"type": "compaction", "encrypted_content": done[0]["encrypted_content"]}
    asking = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Now count them."}]}
    status, _, events = codex_post(server, keys[0], {**body, "input": [*kept, echoed, asking]})
    assert status == 200 and events[-1]["type"] == "response.completed", events  # (the mock calls a tool)
    sent = sent_to(mock, model)
    assert json.dumps(compaction.SUMMARY_HEADING + TEXT)[1:-1] in sent and "Two files." not in sent


def test_codex_remote_compaction_passes_through_to_openai(server, keys, mock):
    """Codex 0.171.0's compaction request on a GPT model (its built-in OpenAI provider pointed at Stockyard,
    as run against the mock with ``model_auto_compact_token_limit`` low) goes to OpenAI as sent, trigger and
    all; OpenAI's streamed compaction item comes back whole, billed by its usage, and goes back to OpenAI in
    the next turn's input as it came."""
    body = codex_body("openai")
    said = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Two files."}]}
    compacting = {**body, "input": [*body["input"], said, {"type": "compaction_trigger"}]}
    status, head, events = codex_post(server, keys[0], compacting)
    assert status == 200 and events[-1]["type"] == "response.completed", events
    assert mock.last("/v1/responses").json["input"] == compacting["input"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [(i["type"], i["encrypted_content"]) for i in done] == [("compaction", COMPACTED)]
    trace = costed(server, head["x-stockyard-trace-id"])
    assert (trace["endpoint"], trace["provider"], trace["prompt_tokens"], trace["completion_tokens"]) == (
        "responses",
        "openai",
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )
    kept = [i for i in body["input"] if i.get("role") == "user"]
    asking = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Now count them."}]}
    echoed = {"type": "compaction", "encrypted_content": COMPACTED}
    status, _, events = codex_post(server, keys[0], {**body, "input": [*kept, echoed, asking]})
    assert status == 200 and events[-1]["type"] == "response.completed", events
    assert mock.last("/v1/responses").json["input"] == [*kept, echoed, asking]


@pytest.mark.parametrize("stream", [False, True])
def test_a_compaction_trigger_through_the_sdk_on_a_translated_provider(client, mock, stream):
    """The trigger from the SDK, plain and through its stream helper: one compaction item, no text."""
    trigger = {"type": "compaction_trigger"}
    response = first_turn(client, stream, model="gemini-2.5-pro", input=[*TRIP, trigger], store=False)
    assert [o.type for o in response.output] == ["compaction"] and response.output_text == ""
    assert response.status == "completed" and response.usage.output_tokens == COMPLETION_TOKENS
    assert compaction.INSTRUCTION in sent_to(mock, "gemini-2.5-pro")


def test_a_compaction_a_translated_model_writes_is_billed_to_the_budget(server, mock):
    """``/v1/responses/compact`` on Claude is a provider call like any other: admitted against the key's
    budget, settled at its real cost (the summary's tokens), and refused before the provider is asked
    when it does not fit."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    keys = {}
    for usd in ("1", "0"):
        status, _, data = server.request(
            "POST", "/api/keys", {"name": f"compact-{usd}", "budget_usd": usd, "budget_period": "day"}, admin
        )
        assert status == 201, data
        keys[usd] = json.loads(data)
    body = {"model": "claude-haiku-4-5", "input": "Plan a trip to Lisbon"}
    rich = server.openai(keys["1"]["key"])
    raw = rich.responses.with_raw_response.compact(**body)
    assert raw.parse().output[-1].type == "compaction"
    cost = costed(server, raw.headers["x-stockyard-trace-id"])["cost_uc"]
    assert cost > 0
    spend = lambda: json.loads(server.request("GET", f"/api/keys/{keys['1']['id']}", headers=admin)[2])["spend_uc"]  # noqa: E731
    wait_for(lambda: spend() == cost)
    calls = len(mock.requests)
    with pytest.raises(RateLimitError) as caught:
        server.openai(keys["0"]["key"]).responses.compact(**body)
    assert caught.value.code == "budget_exceeded" and len(mock.requests) == calls  # the provider never asked


@pytest.mark.parametrize("stream", [False, True])
def test_a_compaction_searches_nothing(server, client, mock, stream):
    """Codex CLI with ``web_search = "live"`` keeps its web search tool in the request that asks for the
    summary: the summary request went to Claude with its web search tool (and, without function tools,
    no tool_choice at all), so Claude could search, billed per search and paused, and summarise what it
    found instead of the conversation. A summary needs no search: the tool is left out of that request."""
    model = "claude-haiku-4-5-websearch"  # the mock searches whenever the request has a web search tool
    trigger = {"type": "compaction_trigger"}
    tools = [{"type": "web_search", "external_web_access": True}]
    if stream:
        with client.responses.stream(model=model, input=[*TRIP, trigger], tools=tools, store=False) as s:
            kinds = [e.type for e in s]
            response = s.get_final_response()
        assert not any(k.startswith("response.web_search_call") for k in kinds)
    else:
        response = client.responses.create(model=model, input=[*TRIP, trigger], tools=tools, store=False)
    assert [o.type for o in response.output] == ["compaction"]
    assert compaction.peek(response.output[0].encrypted_content) == TEXT  # the model's summary, no search text
    sent = mock.last("/v1/messages").json
    assert not [t for t in sent.get("tools") or [] if str(t.get("type", "")).startswith("web_search")]
    assert compaction.INSTRUCTION in json.dumps(sent)


def test_codex_compaction_with_live_search_searches_nothing(server, keys, mock):
    """The same with Codex 0.171.0's own request (its tools, the web search ``external_web_access: true``,
    tool_choice auto), as it compacted on a searching Claude model: the summary request carried the search."""
    body = {**codex_body("anthropic"), "model": "claude-haiku-4-5-websearch"}
    status, _, events = codex_post(server, keys[0], {**body, "input": [*body["input"], {"type": "compaction_trigger"}]})
    assert status == 200 and events[-1]["type"] == "response.completed", events
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [compaction.peek(i["encrypted_content"]) for i in done] == [TEXT]
    sent = mock.last("/v1/messages").json
    assert sent["tool_choice"] == {"type": "none"} and sent["tools"]
    assert not [t for t in sent["tools"] if str(t.get("type", "")).startswith("web_search")]


def test_compacting_a_translated_turn_on_openai_is_refused_saying_why(client):
    """The Agents SDK's compaction session compacts with its own ``model`` (gpt-4.1 unless named) and the
    agent's last response id: after a Claude turn that reached OpenAI's pass-through, whose message read
    "answered by provider 'a translated provider'"."""
    first = client.responses.create(model="claude-haiku-4-5", input="Say hello")
    with pytest.raises(BadRequestError) as caught:
        client.responses.compact(model="gpt-4o-mini", previous_response_id=first.id)
    error = caught.value.body
    assert (error["param"], error["code"]) == ("previous_response_id", "previous_response_elsewhere")
    assert "a model Stockyard translates for" in error["message"] and "provider 'a" not in error["message"]


def test_openai_compaction_on_a_translated_provider_is_refused_naming_it(client):
    """A compaction OpenAI made holds what only its models read: a 400 naming the item."""
    item = {"type": "compaction", "encrypted_content": "gAAAAABmockCompactedConversation=="}
    with pytest.raises(BadRequestError) as caught:
        client.responses.create(model="claude-haiku-4-5", input=[item, {"role": "user", "content": "Go on"}])
    error = caught.value.body
    assert (error["param"], error["code"]) == ("input[0].encrypted_content", "unsupported_parameter")


def test_stockyards_compaction_goes_to_openai_as_its_summary(client, mock):
    """A conversation compacted on Claude goes on on GPT: OpenAI cannot read Stockyard's token, so the
    item goes as the user message holding its summary."""
    compacted = client.responses.compact(model="claude-haiku-4-5", input=TRIP)
    items = [o.model_dump(exclude_none=True) for o in compacted.output]
    client.responses.create(model="gpt-4o-mini", input=[*items, {"role": "user", "content": "And the hotel?"}])
    sent = mock.last("/v1/responses").json["input"]
    summary = [{"type": "input_text", "text": compaction.SUMMARY_HEADING + TEXT}]
    assert sent[2] == {"type": "message", "role": "user", "content": summary} and "compaction" not in json.dumps(sent)
    changed = {**items[2], "encrypted_content": items[2]["encrypted_content"][:-4]}  # cut short: a clean 400
    with pytest.raises(BadRequestError) as caught:
        client.responses.create(model="gpt-4o-mini", input=[changed])
    assert (caught.value.body["param"], caught.value.code) == ("input[0].encrypted_content", "invalid_compaction")


# ModelSettings(context_management=[…]) and (prompt_cache_options=…) of the OpenAI Agents SDK 0.24, as it
# sends them: OpenAI's compaction threshold and cache options, hints a chat provider has no use for.
AGENTS_HINTS = {
    "context_management": [{"type": "compaction", "compact_threshold": 200000}],
    "prompt_cache_options": {"mode": "implicit", "ttl": "30m"},
}


@pytest.mark.parametrize("field", list(AGENTS_HINTS))
def test_agents_sdk_cache_and_compaction_hints_are_accepted_translated(mock, client, field):
    body = {"model": "claude-haiku-4-5", "include": [], "input": [{"content": "Hi", "role": "user"}], "tools": []}
    response = client.responses.create(**body, extra_body={field: AGENTS_HINTS[field]})
    assert response.output_text == TEXT
    assert field not in mock.last("/v1/messages").json


def test_keys_are_required(server):
    status, _, data = server.request("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "hi"})
    assert status == 401 and json.loads(data)["error"]["type"] == "authentication_error"
    status, _, data = server.request("GET", "/v1/responses/resp_abc")
    assert status == 401


def test_a_broken_stream_ends_with_response_failed(server, keys, mock, model):
    mock.enqueue(Reply(cut_after=4))
    status, _, data = server.request(
        "POST",
        "/v1/responses",
        {"model": model, "input": "hi", "stream": True},
        headers={"Authorization": f"Bearer {keys[0]}"},
    )
    events = [json.loads(line[6:]) for line in data.decode().splitlines() if line.startswith("data: ")]
    assert status == 200 and [e["type"] for e in events][-1] == "response.failed"
    assert "response.completed" not in [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def put_module(server: ServerProcess, name: str, config: dict, enabled: bool = True) -> None:
    status, _, data = server.request(
        "PUT",
        f"/api/modules/{name}",
        {"enabled": enabled, "config": config},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert status == 200, data


def test_fallback_crosses_from_passthrough_to_translated(server, client, mock):
    put_module(
        server,
        "fallback",
        {"chains": {"gpt-4o-mini": ["anthropic/claude-haiku-4-5"]}, "retries": 0, "breaker_failures": 0},
    )
    try:
        mock.enqueue(Reply(status=500))
        raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="Say hello")
        response = raw.parse()
        assert response.output_text == TEXT and response.id.startswith("resp_")
        trace = server.trace(raw.headers["x-stockyard-trace-id"])
        assert (trace["provider"], trace["attempt"]) == ("anthropic", 2)
        assert client.responses.retrieve(response.id).output_text == TEXT  # kept by Stockyard: translated
    finally:
        put_module(server, "fallback", {}, enabled=False)


def test_cache_replays_only_unstored_responses(server, client, model):
    put_module(server, "cache", {})
    try:
        unstored = dict(model=model, input="cache me", store=False)
        assert client.responses.with_raw_response.create(**unstored).headers["x-stockyard-cache"] == "miss"
        wait_for(
            lambda: client.responses.with_raw_response.create(**unstored).headers["x-stockyard-cache"] == "hit",
            what="the answer cached (written by the writer thread)",
        )
        stored = dict(model=model, input="cache me", store=True)
        for _ in range(2):  # a stored response is a new turn every time: never looked up nor kept
            assert "x-stockyard-cache" not in client.responses.with_raw_response.create(**stored).headers
    finally:
        put_module(server, "cache", {}, enabled=False)


def test_a_stored_response_streams_back_as_the_provider_sends_it(client, mock):
    """GET /v1/responses/{id}?stream=true of a passed-through response (a background one streams
    for as long as it runs): each event reaches the client as the provider sends it, not at the end."""
    made = client.responses.create(model=MODELS["passthrough"], input="Say hello")
    events = responses_stream({"model": MODELS["passthrough"], "input": "Say hello"}, 1, MODELS["passthrough"])
    mock.enqueue(Reply(sse=[events[0], events[-1]], sse_delay_ms=4000))  # the end comes 4 s later
    quick = client.with_options(timeout=2.0)  # read whole, the first event would take 4 s
    with quick.responses.retrieve(made.id, stream=True) as stream:
        first = next(iter(stream))
    assert first.type == "response.created"
    assert [r.query.get("stream") for r in mock.requests if r.path == f"/v1/responses/{made.id}"][-1] == "true"


def test_a_stored_responses_stream_that_breaks_ends_with_an_error_event(server, keys, client, mock):
    made = client.responses.create(model=MODELS["passthrough"], input="Say hello")
    events = responses_stream({"model": MODELS["passthrough"], "input": "Say hello"}, 1, MODELS["passthrough"])
    mock.enqueue(Reply(sse=events, cut_after=2))
    status, _, data = server.request(
        "GET", f"/v1/responses/{made.id}?stream=true", headers={"Authorization": f"Bearer {keys[0]}"}
    )
    lines = [json.loads(line[6:]) for line in data.decode().splitlines() if line.startswith("data: ")]
    assert status == 200 and [e.get("type") for e in lines[:2]] == ["response.created", "response.in_progress"]
    assert lines[-1]["error"]["code"] == "upstream_reset", lines[-1]  # never a made-up completion
    assert OPENAI_KEY not in data.decode()


# --------------------------------------------------------------------------- reasoning state in tool loops

SIG = "CiQBVKhc7sig-from-gemini=="
GEMINI3 = "gemini-3-pro-preview"
FUNCTION_TOOL = {**WEATHER_TOOL, "strict": False}


def gemini_call_reply(sse: bool) -> Reply:
    part = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SIG}
    doc = {
        "candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 5, "totalTokenCount": 17},
        "modelVersion": GEMINI3,
        "responseId": "r1",
    }
    return Reply(sse=[json.dumps(doc)]) if sse else Reply(json=doc)


def first_turn(client: OpenAI, stream: bool, **kwargs):
    if stream:
        with client.responses.stream(**kwargs) as s:
            check_sequence(list(s))
            return s.get_final_response()
    return client.responses.create(**kwargs)


def gemini_calls_sent(mock, model: str) -> list[dict]:
    req = next(r for r in reversed(mock.requests) if r.path.startswith(f"/v1beta/models/{model}:"))
    return [p for c in req.json["contents"] for p in c["parts"] if "functionCall" in p]


@pytest.mark.parametrize("stream", [False, True])
def test_responses_to_gemini_keeps_thought_signature(client, mock, stream):
    """The review's reproduction (Codex, the Agents SDK on Gemini 3): the thought signature comes
    back as a reasoning item's encrypted_content before the call, and on to Gemini with the call
    when the conversation continues by previous_response_id."""
    mock.enqueue(gemini_call_reply(stream))
    first = first_turn(client, stream, model=GEMINI3, input="weather?", tools=[FUNCTION_TOOL])
    assert [o.type for o in first.output] == ["reasoning", "function_call"]
    assert first.output[0].encrypted_content and SIG not in first.output[0].encrypted_content
    call = first.output[1]
    second = client.responses.create(
        model=GEMINI3,
        previous_response_id=first.id,
        tools=[FUNCTION_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    assert second.output_text == TEXT
    calls = gemini_calls_sent(mock, GEMINI3)
    assert calls and calls[0].get("thoughtSignature") == SIG, calls


def test_gemini_items_sent_back_by_the_client_without_store(client, mock):
    """store=False: the client sends the output items back in input (the Agents SDK's way); the
    mock signs Gemini 3 calls and refuses them back unsigned, as Gemini 3 does: without the
    reasoning item the call goes with Google's stand-in signature instead."""
    model = "gemini-3-flash-resp"
    first = client.responses.create(model=model, input="weather?", tools=[FUNCTION_TOOL], store=False)
    items = [o.model_dump(exclude_none=True) for o in first.output]
    result = {"type": "function_call_output", "call_id": first.output[-1].call_id, "output": "sunny"}
    ask = dict(model=model, tools=[FUNCTION_TOOL], store=False)
    assert (
        client.responses.create(**ask, input=[{"role": "user", "content": "weather?"}, *items, result]).output_text
        == TEXT
    )
    assert gemini_calls_sent(mock, model)[0]["thoughtSignature"] == THOUGHT_SIGNATURE
    dropped = client.responses.create(**ask, input=[{"role": "user", "content": "weather?"}, *items[1:], result])
    assert dropped.output_text == TEXT
    assert gemini_calls_sent(mock, model)[0]["thoughtSignature"] == "skip_thought_signature_validator"


def last_anthropic_assistant(mock) -> list[dict]:
    body = mock.last("/v1/messages").json
    assert body.get("thinking"), body  # thinking is on for this request
    return [m for m in body["messages"] if m["role"] == "assistant"][-1]["content"]


def test_responses_to_anthropic_thinking_tool_loop(client, mock):
    """The review's reproduction (Codex on Claude, reasoning.effort + tools, previous_response_id):
    the thinking comes back as a reasoning item (its text the summary, the block its encrypted
    content) and goes first in the assistant turn, signature intact."""
    model = "claude-sonnet-4-5"
    mock.enqueue(Reply(json=anthropic_thinking_call(model)))
    ask = dict(model=model, tools=[FUNCTION_TOOL], reasoning={"effort": "low"}, max_output_tokens=8000)
    first = client.responses.create(**ask, input="weather?")
    assert [o.type for o in first.output] == ["reasoning", "function_call"]
    assert first.output[0].summary[0].text == "I should call the tool." and first.output[0].encrypted_content
    call = first.output[1]
    client.responses.create(
        **ask,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    blocks = last_anthropic_assistant(mock)
    assert blocks[0] == {"type": "thinking", "thinking": "I should call the tool.", "signature": THINK_SIG}


@pytest.mark.parametrize("stream", [False, True])
def test_claude_thinking_round_trips_through_items_sent_back(client, mock, stream):
    """Streamed too, and with store=False: the reasoning item the client sends back in input carries
    the thinking block to Anthropic (the mock refuses the tool loop without it, as Anthropic does)."""
    model = f"claude-sonnet-4-5-resp-think-{stream}"
    ask = dict(model=model, tools=[FUNCTION_TOOL], reasoning={"effort": "low"}, max_output_tokens=8000, store=False)
    first = first_turn(client, stream, **ask, input="weather?")
    assert [o.type for o in first.output] == ["reasoning", "function_call"]
    items = [o.model_dump(exclude_none=True) for o in first.output]
    result = {"type": "function_call_output", "call_id": first.output[-1].call_id, "output": "sunny"}
    answer = client.responses.create(**ask, input=[{"role": "user", "content": "weather?"}, *items, result])
    assert answer.output_text == TEXT
    assert last_anthropic_assistant(mock)[0]["signature"] == THINKING_SIGNATURE


def test_stockyards_reasoning_items_never_reach_a_responses_passthrough_provider(client, mock):
    """Codex / the Agents SDK (store=false) resend every output item: a session that ran on Claude
    (translated) and continues on a GPT model (passed through) must not send OpenAI the reasoning
    items Stockyard made (their encrypted_content is Stockyard's packing, which OpenAI cannot
    decrypt: 400 invalid_encrypted_content), with or without a packing; OpenAI's own go as sent."""
    from stockyard.providers.reasoning import unpack

    ask = dict(tools=[FUNCTION_TOOL], reasoning={"effort": "low"}, max_output_tokens=8000, store=False)
    first = client.responses.create(model="claude-sonnet-4-5-moved-to-gpt", input="weather?", **ask)
    assert [o.type for o in first.output] == ["reasoning", "function_call"]
    items = [o.model_dump(exclude_none=True) for o in first.output]
    assert unpack(items[0]["encrypted_content"]) is not None  # Stockyard's, not OpenAI's
    summary_only = {k: v for k, v in items[0].items() if k != "encrypted_content"}  # made by Stockyard too
    openais = {"type": "reasoning", "id": "rs_openai_own", "summary": [], "encrypted_content": "gAAAAB-opaque"}
    result = {"type": "function_call_output", "call_id": first.output[-1].call_id, "output": "sunny"}
    sent_items = [{"role": "user", "content": "weather?"}, summary_only, openais, *items, result]
    client.responses.create(model="gpt-4o-mini", input=sent_items, **ask)
    upstream = mock.last("/v1/responses").json["input"]
    assert [i.get("type", "message") for i in upstream] == [
        "message",
        "reasoning",
        "function_call",
        "function_call_output",
    ]
    assert upstream[1] == openais


# Codex CLI's freeform tool: the model writes the patch as free text, in the grammar's language.
APPLY_PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Use the `apply_patch` tool to edit files.",
    "format": {
        "type": "grammar",
        "syntax": "lark",
        "definition": 'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF',
    },
}
PATCH = '*** Begin Patch\n*** Update File: a.py\n@@\n-print("hi")\n+print("h\\u00e9 \\\\ \\"quoted\\"")\n*** End Patch'


def anthropic_patch_call(model: str, stream: bool) -> Reply:
    """Claude calling the custom tool as the function it was given: its text in ``input``."""
    args = json.dumps({"input": PATCH})
    usage = {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS}
    block = {"type": "tool_use", "id": "toolu_patch1", "name": "apply_patch", "input": json.loads(args)}
    message = {"id": "msg_p", "type": "message", "role": "assistant", "model": model, "stop_sequence": None}
    if not stream:
        return Reply(json={**message, "content": [block], "stop_reason": "tool_use", "usage": usage})

    def event(data: dict) -> str:
        return f"event: {data['type']}\ndata: {json.dumps(data)}"

    start = {**block, "input": {}}
    pieces = [args[:20], args[20:45], args[45:]]  # cut inside the string and its escapes
    deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
    return Reply(
        sse=[
            event({"type": "message_start", "message": {**message, "content": [], "usage": usage}}),
            event({"type": "content_block_start", "index": 0, "content_block": start}),
            *[event({"type": "content_block_delta", "index": 0, "delta": delta}) for delta in deltas],
            event({"type": "content_block_stop", "index": 0}),
            event({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}}),
            event({"type": "message_stop"}),
        ]
    )


@pytest.mark.parametrize("stream", [False, True])
def test_codex_custom_tool_round_trips_on_a_translated_provider(client, mock, stream):
    """Codex CLI's ``apply_patch`` is a custom (freeform) tool. On a chat-only provider it goes as a
    function taking one string, ``input`` (the grammar in its description); the call comes back as a
    ``custom_tool_call`` with the text intact, and its output goes back as the tool's result."""
    model = "claude-sonnet-4-5"
    mock.enqueue(anthropic_patch_call(model, stream))
    ask = dict(model=model, tools=[WEATHER_TOOL, APPLY_PATCH], tool_choice="auto", parallel_tool_calls=False)
    ask.update(store=False, include=["reasoning.encrypted_content"], prompt_cache_key="codex-session-1")
    if stream:
        events = list(client.responses.create(**ask, input="fix the bug", stream=True))
        check_sequence(events)
        done = [e for e in events if e.type == "response.custom_tool_call_input.done"]
        assert [e.input for e in done] == [PATCH]
        assert "".join(e.delta for e in events if e.type == "response.custom_tool_call_input.delta") == PATCH
        first = events[-1].response
    else:
        first = client.responses.create(**ask, input="fix the bug")
    call = first.output[-1]
    assert (call.type, call.call_id, call.name, call.input) == (
        "custom_tool_call",
        "toolu_patch1",
        "apply_patch",
        PATCH,
    )
    sent = mock.last("/v1/messages").json["tools"][1]
    assert sent["name"] == "apply_patch" and sent["input_schema"]["required"] == ["input"]
    assert APPLY_PATCH["format"]["definition"] in sent["description"]
    done_call = {k: v for k, v in call.model_dump(exclude_none=True).items() if k != "id"}  # as Codex resends it
    output = {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Success. Updated a.py"}
    second = client.responses.create(**ask, input=[{"role": "user", "content": "fix the bug"}, done_call, output])
    assert second.status == "completed"
    messages = mock.last("/v1/messages").json["messages"]
    assert messages[1]["content"] == [
        {"type": "tool_use", "id": "toolu_patch1", "name": "apply_patch", "input": {"input": PATCH}}
    ]
    assert messages[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "toolu_patch1",
        "content": "Success. Updated a.py",
        "cache_control": {"type": "ephemeral"},  # Codex's prompt_cache_key: the loop so far cached
    }


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-pro"])
def test_an_image_a_tool_returned_reaches_a_translated_provider(client, mock, model):
    """Was a 400: Codex's view_image tool answers with an input_image in its function_call_output.
    On Claude and Gemini the image goes in the same user turn as the tool's result."""
    dot = "data:image/png;base64,iVBORw0KGgo="
    call = {"type": "function_call", "call_id": "call_img", "name": "view_image", "arguments": '{"path":"a.png"}'}
    output = {
        "type": "function_call_output",
        "call_id": "call_img",
        "output": [{"type": "input_text", "text": "a.png"}, {"type": "input_image", "image_url": dot}],
    }
    answer = client.responses.create(model=model, input=[{"role": "user", "content": "look"}, call, output])
    assert answer.status == "completed"
    if model.startswith("claude"):
        turn = mock.last("/v1/messages").json["messages"][-1]
        assert turn["role"] == "user" and turn["content"][0]["type"] == "tool_result"
        assert turn["content"][1] == {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        }
    else:
        turn = mock.last(":generateContent").json["contents"][-1]
        assert turn["role"] == "user" and "functionResponse" in turn["parts"][0]
        assert turn["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}


CODEX_SHELL = {
    "type": "function",
    "name": "shell",
    "description": "Runs a shell command and returns its output.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"command": {"type": "array", "items": {"type": "string"}}, "workdir": {"type": "string"}},
        "required": ["command"],
        "additionalProperties": False,
    },
}


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-pro"])
def test_a_codex_turn_as_codex_sends_it(server, keys, mock, model):
    """Codex CLI's request for a GPT-5 model, as it builds it (codex-rs ResponsesApiRequest), with its
    headers — passed through to OpenAI, translated to Claude or Gemini (a fallback or an alias): taken
    by each; the events end in response.completed with the usage Codex reads; usage and cost traced."""
    body = {
        "model": model,
        "instructions": "You are Codex, based on GPT-5.",
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<permissions>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix the bug"}]},
        ],
        "tools": [CODEX_SHELL, APPLY_PATCH],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199a213-81c0-7800-8aa1-bbab2a035a53",
        "text": {"verbosity": "low"},
    }
    headers = {
        "Authorization": f"Bearer {keys[0]}",
        "OpenAI-Beta": "responses=experimental",
        "originator": "codex_cli_rs",
        "session_id": "0199a213-81c0-7800-8aa1-bbab2a035a53",
        "conversation_id": "0199a213-81c0-7800-8aa1-bbab2a035a53",
        "version": "0.58.0",
        "Accept": "text/event-stream",
    }
    status, head, raw = server.request("POST", "/v1/responses", body, headers=headers)
    assert status == 200, raw
    sent = mock.requests[-1].json
    assert ("verbosity" in json.dumps(sent)) == model.startswith("gpt")  # a hint the others have no control for
    events = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: ")]
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    usage = events[-1]["response"]["usage"]
    assert (usage["input_tokens"], usage["total_tokens"]) == (PROMPT_TOKENS, PROMPT_TOKENS + usage["output_tokens"])
    assert "cached_tokens" in usage["input_tokens_details"] and "reasoning_tokens" in usage["output_tokens_details"]
    for item in (e["item"] for e in events if e["type"] == "response.output_item.done"):
        if item["type"] == "function_call":
            assert item["name"] == "shell" and item["call_id"] and json.loads(item["arguments"])
    trace = wait_for(lambda: (t := server.trace(head["x-stockyard-trace-id"]))["cost_status"] == "exact" and t)
    assert trace["prompt_tokens"] == PROMPT_TOKENS and trace["cost_uc"] > 0


# The Vercel AI SDK (ai 6.0.333, @ai-sdk/openai 3.0.141) sends the earlier turns of a
# conversation as `item_reference` items while `store` is on (its default): these are its exact
# bodies, only the ids Stockyard issued put in.
AI_SDK_WEATHER = {
    "type": "function",
    "name": "weather",
    "description": "Weather in a city",
    "parameters": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


def ai_sdk_user(text: str) -> dict:
    return {"role": "user", "content": [{"type": "input_text", "text": text}]}


def post_response(server: ServerProcess, key: str, body: dict) -> tuple[int, dict]:
    status, _, data = server.request("POST", "/v1/responses", body, headers={"Authorization": f"Bearer {key}"})
    return status, json.loads(data)


@pytest.mark.parametrize("model", [MODELS["translated"], "gemini-2.5-flash"])
def test_ai_sdk_item_references_to_a_translated_answer(server, keys, mock, model):
    """`messages: [...first.response.messages, next]`: the assistant turn comes back as an
    item_reference to the message Stockyard issued, resolved from this key's stored response."""
    status, first = post_response(server, keys[0], {"model": model, "input": [ai_sdk_user("Say hello")]})
    assert status == 200, first
    reference = {"type": "item_reference", "id": first["output"][0]["id"]}
    body = {"model": model, "input": [ai_sdk_user("Say hello"), reference, ai_sdk_user("Again")]}
    status, second = post_response(server, keys[0], body)
    assert status == 200, second
    assert second["output"][0]["content"][0]["text"] == TEXT
    sent = mock.last("/v1/messages" if model.startswith("claude") else ":generateContent").json
    turns = sent.get("messages") or sent["contents"]
    assert [t["role"] for t in turns] == ["user", "assistant" if "messages" in sent else "model", "user"]
    assert TEXT in json.dumps(turns[1])
    status, refused = post_response(server, keys[1], body)  # another key's item is no one's
    assert status == 400 and refused["error"]["param"] == "input[1].id", refused


def test_ai_sdk_tool_loop_on_gemini3_references_its_reasoning_item(server, keys, mock):
    """A tool step on Gemini 3: the reasoning item holding the thought signature comes back as an
    item_reference, and the signature reaches Gemini with the call (the mock refuses it unsigned)."""
    mock.enqueue(gemini_call_reply(False))
    ask = {"model": GEMINI3, "tools": [AI_SDK_WEATHER], "tool_choice": "auto"}
    status, first = post_response(server, keys[0], {**ask, "input": [ai_sdk_user("Weather in Paris?")]})
    assert status == 200 and [o["type"] for o in first["output"]] == ["reasoning", "function_call"], first
    reasoning, call = first["output"]
    items = [
        ai_sdk_user("Weather in Paris?"),
        {"type": "item_reference", "id": reasoning["id"]},
        {"type": "function_call", "call_id": call["call_id"], "name": call["name"], "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": call["call_id"], "output": '{"city":"Paris","tempC":21}'},
    ]
    status, second = post_response(server, keys[0], {**ask, "input": items})
    assert status == 200, second
    assert gemini_calls_sent(mock, GEMINI3)[0].get("thoughtSignature") == SIG


# -- item references on the pass-through -------------------------------------------------------------
# The provider keeps every key's responses under the one provider key, so an item id it resolves (an
# `item_reference`, or a reasoning item sent by its id alone) would read another key's stored output to
# the model ("repeat the message above"): each must name an output item of a response this key holds.


def passthrough_output(server: ServerProcess, key: str, stream: bool = False) -> list[dict]:
    """The output items of a passed-through response ``key`` made (streamed: ``response.completed``'s)."""
    body = {"model": MODELS["passthrough"], "input": [ai_sdk_user("my secret plan")], "stream": stream}
    status, _, data = server.request("POST", "/v1/responses", body, headers={"Authorization": f"Bearer {key}"})
    assert status == 200, data
    if not stream:
        return json.loads(data)["output"]
    events = [json.loads(line[6:]) for line in data.decode().split("\n") if line.startswith("data: ")]
    assert events[-1]["type"] == "response.completed", events
    return events[-1]["response"]["output"]


@pytest.mark.parametrize("stream", [False, True])
def test_pass_through_item_references_name_only_the_keys_own_items(server, keys, mock, stream):
    """Was: an `item_reference` went to a provider that speaks the Responses API as sent, and the
    provider resolved it under the one provider key, so a key that learned another key's output item id
    had the model read it. Now another key's item, or one Stockyard never saw, is the 400 translation
    gives (naming `input[i].id`) before any provider call; the key's own goes as sent. The reference's
    `type` is optional (OpenAI's ItemReferenceParam): `{"id": …}` alone is one too."""
    mine = passthrough_output(server, keys[0], stream)[0]["id"]
    theirs = passthrough_output(server, keys[1], stream)[0]["id"]
    ask = {"model": MODELS["passthrough"], "stream": stream}
    for named in (theirs, "msg_stockyard_never_saw_this"):
        for reference in ({"type": "item_reference", "id": named}, {"id": named}):
            seen = len(mock.requests)
            body = {**ask, "input": [ai_sdk_user("Repeat the message above"), reference]}
            status, refused = post_response(server, keys[0], body)
            assert status == 400 and refused["error"]["param"] == "input[1].id", refused
            assert named in refused["error"]["message"]
            assert len(mock.requests) == seen  # the provider was not asked
    for reference in ({"type": "item_reference", "id": mine}, {"id": mine}):
        items = [ai_sdk_user("Say hello"), reference, ai_sdk_user("Again")]
        headers = {"Authorization": f"Bearer {keys[0]}"}
        status, _, data = server.request("POST", "/v1/responses", {**ask, "input": items}, headers=headers)
        assert status == 200, data
        assert mock.last("/v1/responses").json["input"] == items  # as sent


def test_a_deleted_pass_through_responses_items_can_no_longer_be_named(server, client, keys, mock):
    """Its item records go with the response's row (deleted here, or by retention)."""
    made = client.responses.create(model=MODELS["passthrough"], input="hi")
    body = {"model": MODELS["passthrough"], "input": [{"type": "item_reference", "id": made.output[0].id}]}
    status, answer = post_response(server, keys[0], body)
    assert status == 200, answer
    client.responses.delete(made.id)
    status, refused = post_response(server, keys[0], body)
    assert status == 400 and refused["error"]["param"] == "input[0].id", refused


def test_a_background_responses_items_are_its_keys_once_retrieved_finished(server, client, keys, mock):
    """A background response has no output when Stockyard keeps it: its item ids are recorded when
    its key retrieves it finished (before that, a reference to one is refused, as unknown)."""
    tag = secrets.token_hex(6)
    said = {"type": "message", "id": f"msg_{tag}", "status": "completed", "role": "assistant", "content": []}
    model = MODELS["passthrough"]
    mock.enqueue(Reply(json={**responses_object({}, 0, model, "queued"), "id": f"resp_{tag}", "background": True}))
    made = client.responses.create(model=model, input="a long job", background=True)
    body = {"model": model, "input": [{"type": "item_reference", "id": said["id"]}]}
    status, refused = post_response(server, keys[0], body)
    assert status == 400 and refused["error"]["param"] == "input[0].id", refused
    mock.enqueue(Reply(json={**responses_object({}, 0, model, "completed", [said]), "id": made.id}))
    assert client.responses.retrieve(made.id).status == "completed"
    wait_for(lambda: post_response(server, keys[0], body)[0] == 200, what="the retrieved response's items recorded")
    status, refused = post_response(server, keys[1], body)
    assert status == 400 and refused["error"]["param"] == "input[0].id", refused


def test_a_background_response_is_billed_its_real_usage_once(server, mock):
    """A background response answers ``queued`` without usage, and runs at the provider after that:
    what it used is in the response its key later retrieves finished. The key's traces together must
    cost exactly that usage (gpt-4o-mini: 15 µ¢ a token in, 60 out), however often it is retrieved."""
    tag = secrets.token_hex(6)
    name = f"bg-{tag}"
    client = server.openai(client_key(server, ADMIN, name=name))
    model = MODELS["passthrough"]
    mock.enqueue(Reply(json={**responses_object({}, 0, model, "queued"), "id": f"resp_{tag}", "background": True}))
    made = client.responses.create(model=model, input="a long job", background=True)
    finished = {**responses_object({}, 0, model, "completed"), "id": made.id, "background": True}
    mock.enqueue(Reply(json=finished), Reply(json=finished))
    assert client.responses.retrieve(made.id).status == "completed"
    assert client.responses.retrieve(made.id).status == "completed"
    usage = finished["usage"]
    real = usage["input_tokens"] * 15 + usage["output_tokens"] * 60
    sql = (
        "SELECT COUNT(*) AS n, SUM(t.cost_uc) AS cost FROM traces t"
        " JOIN client_keys k ON k.id = t.key_id WHERE k.name = ?"
    )
    rows = wait_for(lambda: (r := server.db_rows(sql, (name,))) and r[0]["n"] >= 3 and r, what="the key's three traces")
    assert rows[0]["cost"] == real, rows


def test_a_providers_reasoning_item_sent_by_its_id_alone_is_owner_checked(server, keys, mock):
    """A reasoning item without its `encrypted_content` names the reasoning the provider stored under its
    id (the provider reads it from there): held to the key's own items like a reference. With its
    `encrypted_content` it carries itself and goes as sent."""
    tag = secrets.token_hex(6)
    reasoning = {"type": "reasoning", "id": f"rs_{tag}", "summary": []}
    said = {"type": "message", "id": f"msg_{tag}", "status": "completed", "role": "assistant", "content": []}
    made = responses_object({}, 0, MODELS["passthrough"], "completed", [reasoning, said])
    mock.enqueue(Reply(json={**made, "id": f"resp_{tag}"}))
    status, answer = post_response(server, keys[1], {"model": MODELS["passthrough"], "input": "secret"})
    assert status == 200 and answer["output"][0]["id"] == reasoning["id"], answer
    ask = {"model": MODELS["passthrough"]}
    seen = len(mock.requests)
    status, refused = post_response(server, keys[0], {**ask, "input": [reasoning, ai_sdk_user("What did you think?")]})
    assert status == 400 and refused["error"]["param"] == "input[0].id", refused
    assert len(mock.requests) == seen
    carried = {**reasoning, "encrypted_content": "gAAAAABcarried=="}
    status, answer = post_response(server, keys[0], {**ask, "input": [carried, ai_sdk_user("Go on")]})
    assert status == 200, answer
    status, answer = post_response(server, keys[1], {**ask, "input": [reasoning, ai_sdk_user("Go on")]})
    assert status == 200, answer
    assert mock.last("/v1/responses").json["input"][0] == reasoning


@pytest.mark.perf
def test_many_unknown_item_references_are_refused_at_the_first_lookup(server, keys):
    """Was: every distinct id a body names was looked up before the first unknown one was refused,
    32 a statement: a 20 MB body of 500,000 made-up references cost ~16,000 statements (seconds of
    the store's time, before any rate limit) for a 400. Now the ids are looked up in the body's
    order and the first chunk holding one this key does not hold ends it: the refusal costs about
    what reading the body does (a body refused while it is parsed, the yardstick). The body now
    holds 332,333 references, the most ``httpio.MAX_JSON_VALUES`` lets in (500,000 were a 413).
    Then (a CI run: 1.03 s of CPU against the yardstick's 0.27): before that lookup every reference
    was walked three times for the ones Stockyard can put an item in place of, none here; now once."""
    # as many as a body may carry: each is an object and two values (``httpio.MAX_JSON_VALUES``)
    refs = [{"type": "item_reference", "id": f"msg_{i:012d}"} for i in range(MAX_JSON_VALUES // 3 - 1000)]

    def refused_in(body: dict) -> float:  # the server's CPU: other work on the machine does not count
        started = server.cpu_seconds()
        status, refused = post_response(server, keys[0], {"model": MODELS["passthrough"], "input": refs, **body})
        assert status == 400, refused
        return server.cpu_seconds() - started

    yardstick = min(refused_in({"max_output_tokens": "x"}) for _ in range(2))  # refused as it is parsed
    taken = min(refused_in({}) for _ in range(2))
    assert taken < yardstick * 1.6 + 0.5, (taken, yardstick)  # was ~2.9 times the yardstick


def test_an_image_generation_call_sent_by_its_id_alone_is_owner_checked(server, keys, mock):
    """Was: an `image_generation_call` item with its id and no `result` went as sent. OpenAI's guide
    edits an image over turns by sending the call back by its id alone (`{"type":
    "image_generation_call", "id": "ig_…"}`): the provider reads the image it stored, under the one
    provider key, so a key that learned another's id had that key's image read to the model. Now it
    names only the key's own; with its `result` it carries the image and goes as sent."""
    tag = secrets.token_hex(6)
    drawn = {"type": "image_generation_call", "id": f"ig_{tag}", "status": "completed", "result": "aGk="}
    made = responses_object({}, 0, MODELS["passthrough"], "completed", [drawn])
    mock.enqueue(Reply(json={**made, "id": f"resp_{tag}"}))
    status, answer = post_response(server, keys[1], {"model": MODELS["passthrough"], "input": "draw my secret"})
    assert status == 200 and answer["output"][0]["id"] == drawn["id"], answer
    ask = {"model": MODELS["passthrough"]}
    by_id = {"type": "image_generation_call", "id": drawn["id"]}
    seen = len(mock.requests)
    for named in (by_id, {**by_id, "result": None}, {**by_id, "status": "completed", "result": ""}):
        status, refused = post_response(server, keys[0], {**ask, "input": [ai_sdk_user("Describe it"), named]})
        assert status == 400 and refused["error"]["param"] == "input[1].id", refused
    assert len(mock.requests) == seen
    status, answer = post_response(server, keys[0], {**ask, "input": [drawn, ai_sdk_user("Describe it")]})
    assert status == 200, answer
    status, answer = post_response(server, keys[1], {**ask, "input": [ai_sdk_user("Make it blue"), by_id]})
    assert status == 200, answer
    assert mock.last("/v1/responses").json["input"][1] == by_id


def test_references_past_one_lookup_name_the_first_unknown_one(server, keys, mock):
    """The ids are looked up a chunk at a time in the body's order: a key's own items, more than one
    chunk of them and named again, pass; the 400 names the first item that names another."""
    tag = secrets.token_hex(6)
    said = [
        {"type": "message", "id": f"msg_{tag}_{n}", "status": "completed", "role": "assistant", "content": []}
        for n in range(40)
    ]
    made = responses_object({}, 0, MODELS["passthrough"], "completed", said)
    mock.enqueue(Reply(json={**made, "id": f"resp_{tag}"}))
    assert post_response(server, keys[0], {"model": MODELS["passthrough"], "input": "forty"})[0] == 200
    own = [{"type": "item_reference", "id": item["id"]} for item in said] * 3
    ask = {"model": MODELS["passthrough"]}
    assert post_response(server, keys[0], {**ask, "input": own})[0] == 200
    for tail, named in (
        ([{"id": "msg_unknown"}, {"id": ["msg_x"]}], 120),
        ([{"id": ["msg_x"]}, {"id": "msg_unknown"}], 120),
    ):
        status, refused = post_response(server, keys[0], {**ask, "input": [*own, *tail]})
        assert status == 400 and refused["error"]["param"] == f"input[{named}].id", refused
    status, refused = post_response(server, keys[1], {**ask, "input": own})
    assert status == 400 and refused["error"]["param"] == "input[0].id", refused


@pytest.mark.parametrize("ident", ["msg_\u0000nul", "msg_\ud800"])
def test_an_id_no_store_can_hold_is_named_as_unknown_not_a_500(server, keys, mock, ident):
    """Was, on PostgreSQL: an item reference (or previous_response_id) whose id holds a NUL (valid
    JSON: ``\\u0000``), which PostgreSQL's text refuses, or a lone surrogate escape, which UTF-8
    cannot encode, failed the store's lookup: a 500 with a traceback. No stored item or response has
    such an id: the 400 (404) of an unknown one, before any provider call."""
    seen = len(mock.requests)
    for reference in ({"type": "item_reference", "id": ident}, {"type": "reasoning", "id": ident, "summary": []}):
        status, refused = post_response(server, keys[0], {"model": MODELS["passthrough"], "input": [reference]})
        assert status == 400 and refused["error"]["param"] == "input[0].id", refused
    status, refused = post_response(server, keys[0], {"model": MODELS["passthrough"], "previous_response_id": ident})
    assert status in (400, 404) and refused["error"]["param"] == "previous_response_id", refused
    status, _, raw = server.request("GET", "/v1/responses/resp_%00", headers={"Authorization": f"Bearer {keys[0]}"})
    assert status == 404, raw
    assert len(mock.requests) == seen
    assert "Traceback" not in server.log


def test_a_translated_stream_broken_before_any_text_is_billed_for_none(server, keys, mock):
    """The AI SDK's `streamText` body on Claude; the provider breaks after `message_start`. The
    client got `response.created`, `.in_progress` and `.failed` (~2 KB of JSON, no text): the output
    is message_start's count, not those bytes / 4 (~500 tokens, as it was)."""
    mock.enqueue(Reply(cut_after=1))
    body = {"model": MODELS["translated"], "input": [ai_sdk_user("Say hello")], "stream": True}
    status, headers, data = server.request(
        "POST", "/v1/responses", body, headers={"Authorization": f"Bearer {keys[0]}"}
    )
    assert status == 200 and b"response.failed" in data and b"output_text.delta" not in data
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["outcome"], trace["prompt_tokens"], trace["completion_tokens"]) == ("stream_broken", 12, 1)


# --------------------------------------------------------------------------- Codex CLI 0.171.0, captured

# Codex CLI 0.171.0's first request of a turn and what its follow-up adds, captured from `codex exec`
# (a custom model provider with wire_api "responses", reasoning effort high) through Stockyard; long
# texts and descriptions trimmed, the model a placeholder. Its headers are Codex's, Authorization aside.
CODEX = json.loads((Path(__file__).parent / "codex_requests.json").read_text())
CODEX_MODELS = {"openai": "gpt-5", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-pro"}


def codex_body(kind: str) -> dict:
    """Codex's first request for a model of ``kind``; on Gemini without its web search tool (Codex's
    ``web_search = "disabled"``: Gemini has no web search through translation)."""
    body = {**CODEX["first"], "model": CODEX_MODELS[kind]}
    if kind == "gemini":
        body["tools"] = [t for t in body["tools"] if t["type"] != "web_search"]
    return body


def codex_post(server: ServerProcess, key: str, body: dict) -> tuple[int, dict, list[dict]]:
    """POST /v1/responses with Codex's headers; the SSE events of the answer."""
    status, head, raw = server.request(
        "POST", "/v1/responses", body, headers={**CODEX["headers"], "Authorization": f"Bearer {key}"}
    )
    events = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: ")]
    return status, head, events if status == 200 else [json.loads(raw)]


def codex_echo(item: dict) -> dict:
    """An output item as Codex sends it back (store false): the fields its captured follow-up has."""
    shape = next((t for t in CODEX["follow_up"]["echoed"] if t["type"] == item["type"]), None)
    return {k: item.get(k) for k in shape} if shape else item


def test_codex_client_metadata_is_accepted(server, keys, mock, model):
    """Codex 0.171.0 sends ``client_metadata`` (its session and turn ids) in every request: OpenAI
    takes it, so it goes to a Responses provider as sent; for a translated provider it is the
    caller's, kept from the chat request (it was a 400 naming the field)."""
    metadata = CODEX["first"]["client_metadata"]
    body = {"model": model, "input": "hi", "stream": True, "store": False, "client_metadata": metadata}
    status, _, events = codex_post(server, keys[0], body)
    assert status == 200 and events[-1]["type"] == "response.completed", events
    sent = mock.requests[-1].json
    assert sent.get("client_metadata") == (metadata if model == MODELS["passthrough"] else None)


def codex_namespace() -> dict:
    return next(t for t in CODEX["first"]["tools"] if t["type"] == "namespace")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-pro"])
def test_codex_namespace_tool_round_trips_on_a_translated_provider(client, mock, model, stream):
    """Codex 0.171.0's ``multi_agent_v1`` namespace tool (its sub-agent tools), which was a 400 on
    Claude and Gemini: each of its tools goes as a chat function ``multi_agent_v1__<name>``, a call
    comes back as OpenAI makes it (``name`` and ``namespace`` apart, the SDK's type), and goes back
    to the provider under the joined name."""
    tools = [codex_namespace()]
    first = first_turn(client, stream, model=model, input="spawn a helper", tools=tools, store=False)
    call = first.output[-1]
    assert (call.type, call.namespace, call.name) == ("function_call", "multi_agent_v1", "close_agent")
    assert "multi_agent_v1__close_agent" in json.dumps(mock.requests[-1].json["tools"])
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "closed"}
    items = [o.model_dump(exclude_none=True) for o in first.output]
    answer = client.responses.create(
        model=model, input=[{"role": "user", "content": "spawn a helper"}, *items, result], tools=tools, store=False
    )
    assert answer.output_text == TEXT
    assert '"multi_agent_v1__close_agent"' in json.dumps(mock.requests[-1].json)  # the call, sent back joined


def test_codex_websocket_handshake_is_upgraded(server, keys):
    """Codex 0.171.0 with the built-in OpenAI provider (``openai_base_url`` set to Stockyard) opens
    ``ws://…/v1/responses`` first, with this handshake: it is served (the Responses API's WebSocket
    mode, tests/test_responses_websocket.py), the deflate extension it offers not taken. A plain
    GET stays a 405."""
    handshake = (
        "GET /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: +OzqYEkWPkCauktrisZ8vQ==\r\n"
        f"authorization: Bearer {keys[0]}\r\nopenai-beta: responses_websockets=2026-02-06\r\n"
        "originator: codex_exec\r\nsec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    with rawhttp.connect(server) as sock:
        sock.sendall(handshake.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            assert data, head
            head += data
    assert head.startswith(b"HTTP/1.1 101 ") and b"sec-websocket-extensions" not in head.lower(), head
    status, head, _ = server.request("GET", "/v1/responses", headers={"Authorization": f"Bearer {keys[0]}"})
    assert status == 405 and head["allow"] == "POST"


@pytest.mark.parametrize("kind", list(CODEX_MODELS))
def test_codex_0_171_turn_replayed(server, keys, mock, kind):
    """Codex CLI 0.171.0's real tool loop: its first request (client_metadata, a namespace tool, web
    search, store false, encrypted reasoning asked for) and its follow-up carrying the items it got and
    the tool's output, passed through to OpenAI or translated to Claude and Gemini: each turn streams to
    response.completed, the call comes back as Codex can run it, the answer is text, the usage costed."""
    status, _, events = codex_post(server, keys[0], codex_body(kind))
    assert status == 200, events
    assert (events[0]["type"], events[-1]["type"]) == ("response.created", "response.completed")
    items = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    call = items[-1]
    assert (call["type"], call["name"], "namespace" in call) == ("function_call", "exec_command", False)
    sent = [codex_echo(item) for item in items] + [{**CODEX["follow_up"]["tool_output"], "call_id": call["call_id"]}]
    follow = {**codex_body(kind), "input": codex_body(kind)["input"] + sent}
    status, head, events = codex_post(server, keys[0], follow)
    assert status == 200, events
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["output"][-1]["content"][0]["text"] == TEXT
    assert done["usage"]["output_tokens"] > 0
    trace = wait_for(lambda: (t := server.trace(head["x-stockyard-trace-id"]))["cost_status"] == "exact" and t)
    assert trace["provider"] == kind and trace["cost_uc"] > 0


def test_a_codex_sessions_cost_is_one_tag_row(server, keys):
    """Codex names its session in a header on every turn (``session-id``, 0.171): its requests are
    tagged ``session=<id>``, so ``costs --by tag:session`` answers what the session cost. A session
    tag the client set wins, and the tag never takes a client's 16th place nor makes a 400."""
    session = "5e55-" + CODEX["headers"]["session-id"][5:]  # this test's own session
    headers = {**CODEX["headers"], "session-id": session, "Authorization": f"Bearer {keys[0]}"}
    body = {"model": "gpt-5", "input": "hi", "store": False}

    def turn(extra: dict[str, str]) -> dict:
        status, head, raw = server.request("POST", "/v1/responses", body, headers={**headers, **extra})
        assert status == 200, raw
        return server.trace(head["x-stockyard-trace-id"])

    traces = [turn({}), turn({})]
    assert [json.loads(t["tags"]) for t in traces] == [{"session": session}] * 2
    status, _, raw = server.request("GET", "/api/costs?by=tag:session", headers={"Authorization": f"Bearer {ADMIN}"})
    row = next(r for r in json.loads(raw)["rows"] if r["tag:session"] == session)
    assert (row["requests"], row["cost_uc"]) == (2, sum(t["cost_uc"] for t in traces))

    full = ",".join(f"t{i}=v" for i in range(16))
    extras = [{"x-stockyard-tags": "session=mine,team=a"}, {"x-stockyard-tags": full}, {"originator": "other"}]
    got = [json.loads(turn(extra)["tags"] or "null") for extra in extras]
    assert got == [{"session": "mine", "team": "a"}, {f"t{i}": "v" for i in range(16)}, None]


def claude_calls_stream(name: str, arguments: dict) -> Reply:
    """Claude's streamed answer with thinking on: a signed thinking block, then a call of ``name``."""
    blocks = [
        ({"type": "thinking", "thinking": "", "signature": ""}, {"type": "thinking_delta", "thinking": "I search."}),
        ({"type": "tool_use", "id": "toolu_ts1", "name": name, "input": {}}, None),
    ]
    events = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_ts1",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-sonnet-4-5",
                "usage": {"input_tokens": 12, "output_tokens": 1},
            },
        }
    ]
    for index, (start, delta) in enumerate(blocks):
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        deltas = (
            [delta, {"type": "signature_delta", "signature": THINK_SIG}]
            if delta
            else [{"type": "input_json_delta", "partial_json": json.dumps(arguments)}]
        )
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": index})
    events += [
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ]
    return Reply(sse=[f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events])


def test_codex_tool_search_round_trips_on_a_translated_provider(server, keys, mock):
    """Codex 0.171.0 for a model its catalog knows (gpt-5.5, here served by Claude: an alias or a
    fallback) sends a client-run ``tool_search`` tool, ``apply_patch`` and a web search with
    ``search_content_types`` (a 400 on Claude before): the search tool is a chat function, Claude's call
    of it comes back as a ``tool_search_call`` item, and the tools Codex's ``tool_search_output`` loads
    (its ``multi_agent_v1`` namespace) are Claude's to call in the next request."""
    catalog = CODEX["catalog_model"]
    body = {**CODEX["first"], "model": "claude-sonnet-4-5", "tools": catalog["tools"], "text": catalog["text"]}
    mock.enqueue(claude_calls_stream("tool_search", {"query": "spawn agent"}))
    status, _, events = codex_post(server, keys[0], body)
    assert status == 200, events
    offered = [t["name"] for t in mock.last("/v1/messages").json["tools"]]
    assert {"tool_search", "apply_patch", "web_search"} <= set(offered)
    items = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    call = items[-1]
    assert (call["type"], call["arguments"], call["execution"]) == (
        "tool_search_call",
        {"query": "spawn agent"},
        "client",
    )
    loaded = {**catalog["tool_search_output"], "call_id": call["call_id"]}
    follow = {**body, "input": body["input"] + [codex_echo(i) for i in items] + [loaded]}
    status, _, events = codex_post(server, keys[0], follow)
    assert status == 200 and events[-1]["response"]["output"][-1]["content"][0]["text"] == TEXT, events
    sent = mock.last("/v1/messages").json
    assert "multi_agent_v1__spawn_agent" in [t["name"] for t in sent["tools"]]
    result = sent["messages"][-1]["content"][0]
    assert result["tool_use_id"] == "toolu_ts1" and "multi_agent_v1__spawn_agent" in result["content"]


# The tool names Claude and Gemini both take: Claude ``^[a-zA-Z0-9_-]{1,64}$``; Gemini's
# FunctionDeclaration a letter or ``_`` first, then letters, digits, ``_ . : -``, at most 64.
PROVIDER_TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def provider_tool_names(mock, model: str) -> tuple[list[str], list[str]]:
    """The function names the provider's last request for ``model`` defined, and those of the calls it sent back."""
    if model.startswith("claude"):
        sent = mock.last("/v1/messages").json
        blocks = [b for m in sent["messages"] if isinstance(m["content"], list) for b in m["content"]]
        return [t["name"] for t in sent.get("tools", [])], [b["name"] for b in blocks if b["type"] == "tool_use"]
    sent = next(r for r in reversed(mock.requests) if r.path.startswith(f"/v1beta/models/{model}:")).json
    defined = [d["name"] for t in sent.get("tools", []) for d in t.get("functionDeclarations", [])]
    return defined, [p["functionCall"]["name"] for c in sent["contents"] for p in c["parts"] if "functionCall" in p]


def loaded_turn(client: OpenAI, model: str, tools: list[dict]):
    """A turn whose input is Codex's tool search and the ``tool_search_output`` that loaded ``tools``
    (the captured item's shape); the model answers in text."""
    search = next(t for t in CODEX["catalog_model"]["tools"] if t["type"] == "tool_search")
    call = {
        "type": "tool_search_call",
        "id": "tsc_1",
        "call_id": "toolu_1",
        "execution": "client",
        "arguments": {"query": "spawn agent"},
        "status": "completed",
    }
    loaded = {**CODEX["catalog_model"]["tool_search_output"], "tools": tools}
    user = {"role": "user", "content": "find a tool to spawn a helper"}
    return client.responses.create(model=model, input=[user, call, loaded], tools=[search])


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-pro"])
def test_a_tool_loaded_in_an_earlier_turn_is_called_with_its_namespace(client, mock, model, stream):
    """The review's defect: a namespaced tool a ``tool_search_output`` loaded, in a conversation
    continued by ``previous_response_id`` (the output in the stored history, not in this ``input``), was
    offered to the provider under its joined name, but its call came back without ``namespace`` and
    under that joined name: Codex could not route it. The call comes back as OpenAI makes it, and goes
    back to the provider under the name the tool is defined by."""
    namespace = CODEX["catalog_model"]["tool_search_output"]["tools"][0]
    first = loaded_turn(client, model, [namespace])
    assert first.output_text == TEXT
    second = first_turn(client, stream, model=model, previous_response_id=first.id, input="spawn one now")
    call = second.output[-1]
    assert (call.type, call.namespace, call.name) == ("function_call", "multi_agent_v1", "spawn_agent")
    defined, _ = provider_tool_names(mock, model)
    assert defined[0] == "multi_agent_v1__spawn_agent"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "spawned"}
    third = client.responses.create(model=model, previous_response_id=second.id, input=[result])
    assert third.output_text == TEXT
    defined, called = provider_tool_names(mock, model)
    assert called[-1] == "multi_agent_v1__spawn_agent" and called[-1] in defined


def test_a_custom_tool_loaded_in_an_earlier_turn_is_called_as_a_custom_tool(client, mock):
    """The same for a namespace's custom tool: its call is a ``custom_tool_call`` with its text, not a
    function call of the joined name with the JSON the chat function took."""
    patch = {"type": "custom", "name": "apply_patch", "description": "edit files", "defer_loading": True}
    namespace = {"type": "namespace", "name": "editing", "description": "file tools", "tools": [patch]}
    first = loaded_turn(client, "claude-sonnet-4-5", [namespace])
    second = client.responses.create(model="claude-sonnet-4-5", previous_response_id=first.id, input="edit it")
    call = second.output[-1]
    assert (call.type, call.namespace, call.name) == ("custom_tool_call", "editing", "apply_patch")


COLLIDING = {
    "two namespaces": [
        {"type": "namespace", "name": "a", "description": "A", "tools": [{**WEATHER_TOOL, "name": "b__c"}]},
        {"type": "namespace", "name": "a__b", "description": "AB", "tools": [{**WEATHER_TOOL, "name": "c"}]},
    ],
    "a renamed plain tool": [
        {**WEATHER_TOOL, "name": "docs.search"},
        {**WEATHER_TOOL, "name": function_name("", "docs.search")},  # the name docs.search goes under
    ],
    "a plain tool": [
        {**WEATHER_TOOL, "name": "mcp__docs__search"},
        {
            "type": "namespace",
            "name": "mcp__docs",
            "description": "docs",
            "tools": [{**WEATHER_TOOL, "name": "search"}],
        },
    ],
}


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-pro"])
@pytest.mark.parametrize("case", list(COLLIDING))
def test_tools_whose_joined_names_collide_are_a_400_naming_both(client, mock, model, case):
    """Two tools that would reach the provider under one function name (namespace ``a`` + ``b__c`` and
    ``a__b`` + ``c``; a plain tool named as a namespace's tool is joined) are a 400 naming both, in the
    Responses error shape, before any provider call: a call of that name could not be routed back."""
    before = len(mock.requests)
    with pytest.raises(BadRequestError) as err:
        client.responses.create(model=model, input="weather?", tools=COLLIDING[case])
    error = err.value.body
    assert error["param"] == "tools" and error["code"] == "tool_name_collision", error
    names = [t["name"] for tool in COLLIDING[case] for t in [tool, *tool.get("tools", [])]]
    assert all(repr(name) in error["message"] for name in names), error["message"]
    assert len(mock.requests) == before


def test_a_loaded_tool_colliding_with_a_requests_tool_is_a_400(client, mock):
    """The same when one of the two is loaded by a ``tool_search_output`` of the stored history."""
    colliding = COLLIDING["a plain tool"]
    first = loaded_turn(client, "claude-sonnet-4-5", [colliding[1]])
    before = len(mock.requests)
    with pytest.raises(BadRequestError) as err:
        client.responses.create(
            model="claude-sonnet-4-5", previous_response_id=first.id, input="search", tools=[colliding[0]]
        )
    assert err.value.body["code"] == "tool_name_collision" and "'mcp__docs'" in err.value.body["message"]
    assert len(mock.requests) == before


LONG = "a_server_with_a_rather_long_name_for_its_mcp_tools"  # 50 characters
AWKWARD = {
    "too long": (f"mcp__{LONG}", "list_pull_request_review_comments"),
    "a dot": ("docs.internal", "search"),
    "a digit first": ("1password", "read_item"),
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-pro"])
@pytest.mark.parametrize("case", list(AWKWARD))
def test_a_joined_name_the_provider_would_refuse_goes_under_a_name_it_takes(client, mock, model, case, stream):
    """A namespace and tool whose joined name is over 64 characters, or holds a character Claude (a dot)
    or Gemini (a digit first) refuses in a tool name, was sent as it was: a provider 400 about a name
    the client never sent. It goes under a name both take (as much of the joined name as fits, and a
    digest of the two), and its call comes back as the client named it; sent back, it is that name again."""
    namespace, name = AWKWARD[case]
    tool = {"type": "namespace", "name": namespace, "description": "tools", "tools": [{**WEATHER_TOOL, "name": name}]}
    first = first_turn(client, stream, model=model, input="go", tools=[tool], store=False)
    call = first.output[-1]
    assert (call.type, call.namespace, call.name) == ("function_call", namespace, name)
    defined, _ = provider_tool_names(mock, model)
    assert len(defined) == 1 and PROVIDER_TOOL_NAME.fullmatch(defined[0]), defined
    items = [o.model_dump(exclude_none=True) for o in first.output]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "done"}
    answer = client.responses.create(
        model=model, input=[{"role": "user", "content": "go"}, *items, result], tools=[tool], store=False
    )
    assert answer.output_text == TEXT
    assert provider_tool_names(mock, model) == (defined, defined)


CRM = {"type": "namespace", "name": "crm", "description": "the CRM", "tools": [{**WEATHER_TOOL, "name": "lookup"}]}
LONG_NAMESPACE = {**CRM, "name": AWKWARD["too long"][0]}


def forced_name(mock, model: str) -> list[str]:
    """The tool names the provider's last request for ``model`` forced the model to call."""
    if model.startswith("claude"):
        choice = mock.last("/v1/messages").json["tool_choice"]
        return [choice["name"]] if choice.get("type") == "tool" else []
    sent = next(r for r in reversed(mock.requests) if r.path.startswith(f"/v1beta/models/{model}:")).json
    return sent["toolConfig"]["functionCallingConfig"].get("allowedFunctionNames", [])


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-pro"])
@pytest.mark.parametrize("namespace", [CRM, LONG_NAMESPACE], ids=["joined", "cut to fit"])
def test_a_tool_choice_naming_a_namespaced_tool_forces_it_under_its_declared_name(
    client, mock, model, namespace, stream
):
    """A ``tool_choice`` naming a namespace's tool (its ``name`` and ``namespace``, as a call of it comes
    back) went to the provider with the bare name: Claude and Gemini refused it (no tool of that name is
    declared). It forces the function the tool was declared under, and its call comes back as the client
    named it, not the request's first tool's."""
    choice = {"type": "function", "name": "lookup", "namespace": namespace["name"]}
    answer = first_turn(
        client, stream, model=model, input="look it up", tools=[WEATHER_TOOL, namespace], tool_choice=choice
    )
    call = answer.output[-1]
    assert (call.type, call.namespace, call.name) == ("function_call", namespace["name"], "lookup")
    defined, _ = provider_tool_names(mock, model)
    assert forced_name(mock, model) == [defined[1]] and defined[0] == "get_weather", defined
    plain = first_turn(
        client,
        stream,
        model=model,
        input="weather",
        tools=[namespace, WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    assert (plain.output[-1].name, plain.output[-1].namespace) == ("get_weather", None)
    assert forced_name(mock, model) == ["get_weather"]


UNDECLARED_CHOICES = {
    "no such tool": {"type": "function", "name": "nope"},
    "a namespace's tool without its namespace": {"type": "function", "name": "lookup"},
    "another namespace": {"type": "function", "name": "lookup", "namespace": "erp"},
    "a plain tool under a namespace": {"type": "function", "name": "get_weather", "namespace": "crm"},
    "no tools at all": {"type": "custom", "name": "apply_patch"},
}


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-pro"])
@pytest.mark.parametrize("case", list(UNDECLARED_CHOICES))
def test_a_tool_choice_naming_no_declared_tool_is_a_400_before_the_provider(client, mock, model, case):
    """A ``tool_choice`` that names no tool of the request is a 400 in the Responses error shape,
    naming ``tool_choice``, before any provider call (not the provider's own 400)."""
    tools = [] if case == "no tools at all" else [WEATHER_TOOL, CRM]
    before = len(mock.requests)
    with pytest.raises(BadRequestError) as err:
        client.responses.create(model=model, input="go", tools=tools, tool_choice=UNDECLARED_CHOICES[case])
    error = err.value.body
    assert (error["param"], error["code"]) == ("tool_choice", "invalid_tool_choice"), error
    assert repr(UNDECLARED_CHOICES[case]["name"]) in error["message"], error
    assert len(mock.requests) == before


AWKWARD_PLAIN = {
    "a dot": "docs.search",
    "a colon": "fs:read_file",
    "a digit first": "1password_read",
    "too long": "list_pull_request_review_comments_for_the_current_repository_please",  # 67 characters
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-pro"])
@pytest.mark.parametrize("case", list(AWKWARD_PLAIN))
def test_a_plain_tool_name_the_provider_would_refuse_goes_under_a_name_it_takes(client, mock, model, case, stream):
    """A function tool (not namespaced) whose name Claude or Gemini refuses was sent as it was, and the
    provider's 400 reached the client. It goes under a name both take, the same in every turn; its call
    comes back under the client's name (no namespace), and the stored history sent again by
    ``previous_response_id`` names it as the provider knows it."""
    name = AWKWARD_PLAIN[case]
    tool = {**WEATHER_TOOL, "name": name}
    choice = {"type": "function", "name": name}
    first = first_turn(client, stream, model=model, input="go", tools=[tool], tool_choice=choice)
    call = first.output[-1]
    assert (call.type, call.name, call.namespace) == ("function_call", name, None)
    defined, _ = provider_tool_names(mock, model)
    assert len(defined) == 1 and PROVIDER_TOOL_NAME.fullmatch(defined[0]) and forced_name(mock, model) == defined
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "done"}
    answer = client.responses.create(model=model, previous_response_id=first.id, input=[result], tools=[tool])
    assert answer.output_text == TEXT
    assert provider_tool_names(mock, model) == (defined, defined)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-pro"])
def test_a_custom_tool_name_the_provider_would_refuse_round_trips(client, mock, model, stream):
    """The same for a custom tool, its call sent back in ``input`` (store false, as Codex does)."""
    tool = {"type": "custom", "name": "patch.apply", "description": "edit files"}
    first = first_turn(client, stream, model=model, input="edit", tools=[tool], store=False)
    call = first.output[-1]
    assert (call.type, call.name, call.namespace) == ("custom_tool_call", "patch.apply", None)
    defined, _ = provider_tool_names(mock, model)
    assert len(defined) == 1 and PROVIDER_TOOL_NAME.fullmatch(defined[0]), defined
    items = [o.model_dump(exclude_none=True) for o in first.output]
    result = {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "patched"}
    answer = client.responses.create(
        model=model, input=[{"role": "user", "content": "edit"}, *items, result], tools=[tool], store=False
    )
    assert answer.output_text == TEXT
    assert provider_tool_names(mock, model) == (defined, defined)


# --------------------------------------------------------------------------- OpenCode 1.18.33, captured

OPENCODE = json.loads((Path(__file__).parent / "opencode_requests.json").read_text())["responses"]


def opencode_echo(item: dict) -> dict:
    """An output item as OpenCode sends it back (store false): the fields of its captured echo."""
    shape = next((t for t in OPENCODE["echoed"] if t["type"] == item["type"]), None)
    return {k: item[k] for k in shape if k in item} if shape else item


@pytest.mark.parametrize("kind", list(CODEX_MODELS))
def test_opencode_1_18_turn_replayed(server, keys, mock, kind):
    """OpenCode 1.18.33 with its ``@ai-sdk/openai`` provider (``options.baseURL`` at Stockyard): the first
    request of its tool loop (store false, encrypted reasoning asked for, ``prompt_cache_key``, its
    session headers) and the follow-up with the items it got back — a reasoning item by its
    ``encrypted_content`` alone, the call without ids — and the read tool's output, passed through to
    OpenAI or translated to Claude and Gemini: each streams to response.completed, exactly costed."""
    body = {**OPENCODE["first"], "tools": OPENCODE["tools"], "model": CODEX_MODELS[kind]}
    headers = {**OPENCODE["headers"], "Authorization": f"Bearer {keys[0]}"}
    status, _, raw = server.request("POST", OPENCODE["path"], body, headers=headers)
    assert status == 200, raw[:500]
    events = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: ")]
    assert events[-1]["type"] == "response.completed"
    items = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    call = items[-1]
    assert (call["type"], call["name"]) == ("function_call", OPENCODE["tools"][0]["name"])
    output = {**OPENCODE["follow_up"]["input"][-1], "call_id": call["call_id"]}
    follow = {**body, "input": body["input"] + [opencode_echo(item) for item in items] + [output]}
    status, head, raw = server.request("POST", OPENCODE["path"], follow, headers=headers)
    assert status == 200, raw[:500]
    done = json.loads(raw.decode().rstrip().split("\n")[-1][6:])["response"]
    assert done["status"] == "completed" and done["output"][-1]["content"][0]["text"] == TEXT
    trace = wait_for(lambda: (t := server.trace(head["x-stockyard-trace-id"]))["cost_status"] == "exact" and t)
    assert trace["provider"] == kind and not trace["error_message"]

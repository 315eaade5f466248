"""The Anthropic Messages API for non-Anthropic models, with the official anthropic SDK:
the same client code against a GPT model (OpenAI-kind provider) and a Gemini model
(Gemini-kind provider), both the mock upstream, translated over Chat Completions; and the real
Claude Code's captured requests replayed against all three kinds (a Claude model passed through),
as are OpenCode's and aider's (these also on the chat and Gemini endpoints they use)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import anthropic
import pydantic
import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, TEXT, TOOL_ARGS, Reply
from module_helpers import client_key, new_key

ADMIN = "admin-key-for-messages-tests-0123456789"
ANTHROPIC_KEY = "sk-ant-test-0123456789ANTHROPICSECRET"
GEMINI_KEY = "AIza-test-0123456789abcdefGEMINISECRET"
MODELS = {"gpt": "gpt-4o-mini", "gemini": "gemini-2.5-flash-msgs"}
RATES = {"gpt-4o-mini": (15_000_000, 60_000_000), "gemini-2.5-flash-msgs": (100_000_000, 200_000_000)}  # µ¢ per 1M
TOOL = {
    "name": "get_weather",
    "description": "the weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,  # the Claude Code replay's pass-through
        ANTHROPIC_BASE_URL=mock.url,
        OLLAMA_BASE_URL=mock.url,  # an openai-compatible provider: Gemini's own OpenAI endpoint, say
        STOCKYARD_ADMIN_KEY=ADMIN,
    )
    price = ("prices", "set", MODELS["gemini"], "--input", "1", "--output", "2")
    with served(pyz_path, tmp_path_factory, "messages", env, cli=[price]) as proc:
        yield proc


@pytest.fixture(scope="module")
def key(server) -> str:
    return client_key(server, ADMIN, name="msgs")


@pytest.fixture(scope="module")
def client(server, key) -> anthropic.Anthropic:
    return server.anthropic(key)


@pytest.fixture(params=list(MODELS))
def model(request) -> str:
    return MODELS[request.param]


def upstream_body(mock, model: str) -> dict:
    """What the provider got for ``model``: the chat body (OpenAI) or generateContent body (Gemini)."""
    for req in reversed(mock.requests):
        if isinstance(req.json, dict) and (req.json.get("model") == model or f"/models/{model}:" in req.path):
            return req.json
    raise AssertionError(f"no upstream request for {model}")


def test_plain(client, model, mock):
    message = client.messages.create(
        model=model,
        max_tokens=100,
        system=[{"type": "text", "text": "Be brief", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Say hello"}],
        stop_sequences=["END"],
        metadata={"user_id": "user-7"},
    )
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == TEXT
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    sent = upstream_body(mock, model)
    if model.startswith("gpt"):
        assert sent["messages"] == [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Say hello"}]
        assert (sent["max_completion_tokens"], sent["stop"], sent["user"]) == (100, ["END"], "user-7")
    else:
        assert sent["systemInstruction"]["parts"] == [{"text": "Be brief"}]
        assert sent["generationConfig"]["stopSequences"] == ["END"]
        assert sent["generationConfig"]["maxOutputTokens"] == 100


def test_stream_helpers(client, model):
    with client.messages.stream(model=model, max_tokens=100, messages=[{"role": "user", "content": "Hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == TEXT
    assert final.content[0].text == TEXT and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)


def test_stream_event_order(server, key, model):
    body = {"model": model, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    status, _, raw = server.request("POST", "/v1/messages", body, headers={"x-api-key": key})
    assert status == 200
    names = [line[7:] for line in raw.decode().split("\n") if line.startswith("event: ")]
    deltas = names.count("content_block_delta")
    assert deltas >= 1
    assert names == ["message_start", "content_block_start"] + ["content_block_delta"] * deltas + [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_two_turns(client, model, mock, stream):
    history: list = [{"role": "user", "content": "Weather in Paris?"}]
    kwargs = {"model": model, "max_tokens": 200, "tools": [TOOL], "tool_choice": {"type": "auto"}}
    if stream:
        with client.messages.stream(messages=history, **kwargs) as s:
            first = s.get_final_message()
    else:
        first = client.messages.create(messages=history, **kwargs)
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert (call.name, call.input) == ("get_weather", TOOL_ARGS)
    sent = upstream_body(mock, model)
    if model.startswith("gpt"):
        assert sent["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": TOOL["input_schema"],
                    "description": "the weather in a city",
                },
            }
        ]
        assert sent["tool_choice"] == "auto"
    else:
        assert sent["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    history += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"}]},
    ]
    second = client.messages.create(messages=history, **kwargs)
    assert second.stop_reason == "end_turn" and second.content[0].text == TEXT
    sent = upstream_body(mock, model)
    if model.startswith("gpt"):
        assert sent["messages"][1]["tool_calls"][0]["id"] == call.id
        assert json.loads(sent["messages"][1]["tool_calls"][0]["function"]["arguments"]) == TOOL_ARGS
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}
    else:
        assert sent["contents"][1]["parts"][0]["functionCall"] == {"name": "get_weather", "args": TOOL_ARGS}
        assert sent["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_weather"


def test_count_tokens_is_an_estimate(client, model, mock):
    before = len(mock.requests)
    raw = client.messages.with_raw_response.count_tokens(
        model=model, messages=[{"role": "user", "content": "Say hello to everyone in the room"}], tools=[TOOL]
    )
    assert raw.headers["x-stockyard-token-count"] == "estimate"
    assert raw.parse().input_tokens > 0
    assert len(mock.requests) == before  # answered by Stockyard, no provider call


@pytest.mark.parametrize("stream", [False, True])
def test_costs_are_usage_times_price(server, key, model, stream):
    body = {"model": model, "max_tokens": 50, "stream": stream, "messages": [{"role": "user", "content": "Hi"}]}
    status, headers, _ = server.request("POST", "/v1/messages", body, headers={"x-api-key": key})
    assert status == 200
    trace = wait_for(lambda: (t := server.trace(headers["x-stockyard-trace-id"]))["cost_status"] == "exact" and t)
    input_rate, output_rate = RATES[model]
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert trace["cost_uc"] == -(-(PROMPT_TOKENS * input_rate + COMPLETION_TOKENS * output_rate) // 1_000_000)
    assert trace["endpoint"] == "messages"


def test_provider_error_in_anthropic_shape(client, model, mock):
    mock.enqueue(Reply(status=429))
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "rate_limit_error"


def test_broken_stream_ends_with_error_event(server, key, mock):
    mock.enqueue(
        Reply(
            sse=[
                '{"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}'
            ],
            cut_after=1,
        )
    )
    body = {"model": MODELS["gpt"], "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    status, _, raw = server.request("POST", "/v1/messages", body, headers={"x-api-key": key})
    assert status == 200
    events = raw.decode().strip().split("\n\n")
    assert events[-1].startswith("event: error\n")
    assert "message_stop" not in raw.decode()


class City(pydantic.BaseModel):
    city: str


def test_parse_with_an_output_format(client, model, mock):
    """``messages.parse(output_format=…)`` (structured outputs) was a 400 on GPT and Gemini models:
    ``output_config`` is now the chat's ``response_format`` json_schema."""
    if model == MODELS["gemini"]:
        part = {"content": {"role": "model", "parts": [{"text": '{"city": "Paris"}'}]}, "finishReason": "STOP"}
        mock.enqueue(Reply(json={"candidates": [part], "usageMetadata": {"promptTokenCount": 3}}))
    else:
        answer = {"role": "assistant", "content": '{"city": "Paris"}'}
        chat = {"id": "c1", "object": "chat.completion", "model": model, "created": 1}
        mock.enqueue(Reply(json={**chat, "choices": [{"index": 0, "message": answer, "finish_reason": "stop"}]}))
    parsed = client.messages.parse(
        model=model, max_tokens=100, messages=[{"role": "user", "content": "city?"}], output_format=City
    )
    assert parsed.parsed_output == City(city="Paris")
    sent = upstream_body(mock, model)
    if model == MODELS["gemini"]:
        assert sent["generationConfig"]["responseMimeType"] == "application/json"
    else:
        assert sent["response_format"]["json_schema"]["schema"]["required"] == ["city"]


def test_top_k_refused_by_name(client):
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model=MODELS["gpt"], max_tokens=10, extra_body={"top_k": 5}, messages=[{"role": "user", "content": "Hi"}]
        )
    assert "top_k" in caught.value.body["error"]["message"]


def test_claude_code_shaped_request(server, key, mock):
    """What Claude Code sends: ``?beta=true``, beta headers, cache marks, thinking, a user id, a stream
    (to a GPT model that reasons: the others refuse ``reasoning_effort``)."""
    body = {
        "model": "gpt-5-mini",
        "max_tokens": 32000,
        "stream": True,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}
        ],
        "tools": [{**TOOL, "cache_control": {"type": "ephemeral"}}],
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "metadata": {"user_id": "user_abc_session_1"},
        "temperature": 1,
    }
    headers = {
        "Authorization": f"Bearer {key}",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    }
    status, _, raw = server.request("POST", "/v1/messages?beta=true", body, headers=headers)
    assert status == 200 and b"event: message_stop" in raw
    sent = upstream_body(mock, "gpt-5-mini")
    assert (sent["reasoning_effort"], sent["user"], sent["max_completion_tokens"]) == (
        "high",
        "user_abc_session_1",
        32000,
    )
    assert sent["messages"][0] == {"role": "system", "content": "You are Claude Code."}


@pytest.mark.parametrize(("model", "effort"), [("gpt-4.1", None), ("gpt-4o", None), ("gpt-5", "high"), ("o3", "high")])
def test_claude_code_effort_goes_only_to_a_gpt_model_that_reasons(server, key, mock, model, effort):
    """Claude Code (2.1.197) sends a model it does not know adaptive thinking and ``output_config``
    effort "high". OpenAI's chat models that do not reason refuse ``reasoning_effort`` (400
    "Unsupported parameter: 'reasoning_effort' is not supported with this model"): they get none."""
    body = {
        "model": model,
        "max_tokens": 1000,
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "messages": [{"role": "user", "content": "hi"}],
    }
    status, _, raw = server.request("POST", "/v1/messages", body, headers={"x-api-key": key})
    assert status == 200, raw
    assert upstream_body(mock, model).get("reasoning_effort") == effort


CLAUDE_CODE_BETAS = ["claude-code-20250219", "interleaved-thinking-2025-05-14", "context-management-2025-06-27"]


def test_claude_code_context_management_is_a_hint(client, model, mock, server):
    """Claude Code (beta client: ``?beta=true``, ``anthropic-beta``) sends ``context_management``:
    edits Anthropic makes to the context it keeps. Another provider keeps nothing to edit, so the
    field is dropped, as cache marks are, rather than refusing every turn; usage is still traced."""
    raw = client.beta.messages.with_raw_response.create(
        model=model,
        max_tokens=32000,
        stream=True,
        betas=CLAUDE_CODE_BETAS,
        system=[{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[{**TOOL, "cache_control": {"type": "ephemeral"}}],
        thinking={"type": "enabled", "budget_tokens": 31999},
        context_management={"edits": [{"type": "clear_tool_uses_20250919"}]},
        metadata={"user_id": "user_abc_account__session_1"},
    )
    events = list(raw.parse())
    assert [e.type for e in events][0] == "message_start" and events[-1].type == "message_stop"
    blocks = [e.content_block for e in events if e.type == "content_block_start"]
    tool = next(b for b in blocks if b.type != "thinking")  # Gemini's thought summary may come first
    assert tool.type == "tool_use" and tool.name == "get_weather"
    assert "context_management" not in json.dumps(upstream_body(mock, model))
    trace_id = raw.headers["x-stockyard-trace-id"]
    trace = wait_for(lambda: (t := server.trace(trace_id))["cost_status"] == "exact" and t)
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)


def test_a_system_message_inside_messages(client, model, mock):
    """Claude Code (2.1.197) sends a model it does not know, as a GPT or Gemini model is to it, a
    ``role: "system"`` message inside ``messages`` (beta ``mid-conversation-system-2026-04-07``: its
    agent and skill lists) on every turn: it becomes a chat system message where it stands (Gemini,
    which has only one, adds it to ``systemInstruction``) instead of a 400 on every request."""
    messages: list = [
        {"role": "user", "content": [{"type": "text", "text": "Say hi.", "cache_control": {"type": "ephemeral"}}]},
        {"role": "system", "content": "Available agent types for the Agent tool: Explore"},
    ]
    message = client.messages.create(model=model, max_tokens=100, system="Be brief", messages=messages)
    assert message.content[0].text == TEXT
    sent = upstream_body(mock, model)
    if model.startswith("gpt"):
        assert [m["role"] for m in sent["messages"]] == ["system", "user", "system"]
        assert sent["messages"][2]["content"] == "Available agent types for the Agent tool: Explore"
    else:
        text = "Be brief\n\nAvailable agent types for the Agent tool: Explore"
        assert sent["systemInstruction"] == {"parts": [{"text": text}]}
    blocks = [{"type": "text", "text": "Agents: Explore"}, {"type": "text", "text": "Skills: loop"}]
    count = client.messages.count_tokens(model=model, messages=[messages[0], {"role": "system", "content": blocks}])
    assert count.input_tokens > 0


PDF = "JVBERi0xLjQKJSVFT0YK"  # "%PDF-1.4\n%%EOF\n", base64
ATTACHED = "(the result is the attachment that follows)"


def test_claude_code_reads_a_pdf_on_a_gpt_model(client, mock):
    """Claude Code's Read tool returns a PDF as a ``document`` block in the tool result (and a user
    can attach one): on a GPT model it goes as a chat ``file`` part (following the tool message, as
    images do), a text document as text. On Gemini it goes as inlineData (was a 400)."""
    document = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}}
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Summarise a.pdf"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_r1", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_r1", "content": [document]}]},
        {"role": "assistant", "content": "Read it."},
        {
            "role": "user",
            "content": [
                {**document, "title": "b.pdf", "cache_control": {"type": "ephemeral"}},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
            ],
        },
    ]
    answer = client.messages.create(model=MODELS["gpt"], max_tokens=100, messages=history)
    assert answer.content[0].text == TEXT
    sent = upstream_body(mock, MODELS["gpt"])["messages"]
    pdf = {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PDF}"}}
    assert sent[2] == {
        "role": "tool",
        "tool_call_id": "toolu_r1",
        "content": "(the result is the attachment that follows)",
    }
    assert sent[3] == {"role": "user", "content": [pdf]}
    assert sent[5]["content"] == [
        {"type": "file", "file": {**pdf["file"], "filename": "b.pdf"}},
        {"type": "text", "text": "notes"},
    ]
    answer = client.messages.create(model=MODELS["gemini"], max_tokens=100, messages=history)
    assert answer.content[0].type == "text"
    contents = upstream_body(mock, MODELS["gemini"])["contents"]
    inline = {"inlineData": {"mimeType": "application/pdf", "data": PDF}}
    assert contents[2]["parts"][0]["functionResponse"]["response"] == {"content": ATTACHED}
    assert contents[2]["parts"][1] == inline and contents[4]["parts"][0] == inline


def test_rate_limit_applies(server, mock):
    secret, _ = new_key(server, ADMIN, name="msgs-rpm", rpm=1)
    client = server.anthropic(secret)
    ask = {"model": MODELS["gemini"], "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
    client.messages.create(**ask)
    before = len(mock.requests)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(**ask)
    assert caught.value.body["type"] == "error" and len(mock.requests) == before


def test_budget_spend_is_the_translated_cost(server):
    secret, name = new_key(server, ADMIN, name="msgs-budget", budget_usd="1", budget_period="day")
    (key_id,) = [row["id"] for row in server.db_rows("SELECT id FROM client_keys WHERE name = ?", (name,))]
    body = {"model": MODELS["gpt"], "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
    status, headers, _ = server.request("POST", "/v1/messages", body, headers={"x-api-key": secret})
    assert status == 200
    cost = server.trace(headers["x-stockyard-trace-id"])["cost_uc"]
    input_rate, output_rate = RATES[MODELS["gpt"]]
    assert cost == -(-(PROMPT_TOKENS * input_rate + COMPLETION_TOKENS * output_rate) // 1_000_000)

    def spend() -> int:
        _, _, data = server.request("GET", f"/api/keys/{key_id}", headers={"Authorization": f"Bearer {ADMIN}"})
        return json.loads(data)["spend_uc"]

    assert wait_for(lambda: spend() == cost)
    zero, _ = new_key(server, ADMIN, name="msgs-broke", budget_usd="0", budget_period="day")
    status, _, raw = server.request("POST", "/v1/messages", body, headers={"x-api-key": zero})
    error = json.loads(raw)["error"]
    assert status == 429 and error["type"] == "rate_limit_error"
    assert error["details"] == {"error_code": "budget_exceeded"}


# --------------------------------------------------------------------------- Gemini 3 thought signatures

SIG = "CiQBVKhc7sig-from-gemini=="
GEMINI3 = "gemini-3-pro-preview"


def gemini_call_reply(sse: bool) -> Reply:
    doc = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SIG}
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 5, "totalTokenCount": 17},
        "modelVersion": GEMINI3,
        "responseId": "r1",
    }
    return Reply(sse=[json.dumps(doc)]) if sse else Reply(json=doc)


def function_calls_sent(mock, model: str) -> list[dict]:
    body = upstream_body(mock, model)
    return [p for c in body["contents"] for p in c["parts"] if "functionCall" in p]


@pytest.mark.parametrize("stream", [False, True])
def test_messages_to_gemini_keeps_thought_signature(client, mock, stream):
    """The review's reproduction (Claude Code on Gemini 3): the functionCall's thoughtSignature comes
    back on the next turn, or Gemini 3 answers 400 'Function call is missing a thought_signature'."""
    mock.enqueue(gemini_call_reply(stream))
    kwargs = dict(model=GEMINI3, max_tokens=200, tools=[TOOL], messages=[{"role": "user", "content": "weather?"}])
    if stream:
        with client.messages.stream(**kwargs) as s:
            first = s.get_final_message()
    else:
        first = client.messages.create(**kwargs)
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    call = first.content[1]
    # the client echoes the assistant turn back as it got it (what Claude Code does)
    answer = client.messages.create(
        model=GEMINI3,
        max_tokens=200,
        tools=[TOOL],
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
        ],
    )
    assert answer.content[-1].text == TEXT
    calls = function_calls_sent(mock, GEMINI3)
    assert calls and calls[0].get("thoughtSignature") == SIG, calls


def test_gemini_3_tool_loop_with_the_mock_signing_and_a_dropped_block(client, mock):
    """The mock signs Gemini 3 calls and refuses them back unsigned: a client that keeps the
    thinking block gets its answer; one that drops it too, its call sent with Google's stand-in
    signature (as Gemini CLI sends it) instead of Gemini's 400."""
    model = "gemini-3-flash-msgs"
    ask = dict(model=model, max_tokens=200, tools=[TOOL])
    with client.messages.stream(**ask, messages=[{"role": "user", "content": "weather?"}]) as s:
        first = s.get_final_message()
    turn = [b.model_dump(exclude_none=True) for b in first.content]
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": turn[-1]["id"], "content": "sun"}]}
    loop = [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": turn}, result]
    assert client.messages.create(**ask, messages=loop).content[-1].text == TEXT
    dropped = [loop[0], {"role": "assistant", "content": turn[1:]}, result]
    assert client.messages.create(**ask, messages=dropped).content[-1].text == TEXT
    assert function_calls_sent(mock, model)[0]["thoughtSignature"] == "skip_thought_signature_validator"


def test_a_signature_block_never_reaches_a_gpt_model(client, mock):
    """The same history moved to a GPT model: the tool call goes without Gemini's extra_content."""
    from stockyard.providers.reasoning import pack

    block = {"type": "thinking", "thinking": "", "signature": pack({"thought_signatures": {"call_1": SIG}})}
    call = {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}]}
    client.messages.create(
        model=MODELS["gpt"],
        max_tokens=100,
        tools=[TOOL],
        messages=[{"role": "user", "content": "weather?"}, {"role": "assistant", "content": [block, call]}, result],
    )
    sent = upstream_body(mock, MODELS["gpt"])["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    }


def signed_chat_call(model: str) -> dict:
    """A chat answer as Gemini's own OpenAI-compatible endpoint gives it for gemini-3: the tool
    call's thought signature in extra_content.google."""
    call = {
        "id": "call_g1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        "extra_content": {"google": {"thought_signature": "c2lnLWZyb20tZ2VtaW5p"}},
    }
    return {
        "id": "chatcmpl-g3",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def test_openai_compatible_gemini_gets_its_thought_signature_back(client, mock):
    """Gemini through its OpenAI-compatible endpoint (an openai-compatible provider): the thought
    signature handed to the client in a thinking block goes back onto the call, to the provider
    that made it (Gemini 3: 400 'Function call is missing a thought_signature' without it)."""
    model = "ollama/gemini-3-pro-preview"
    mock.enqueue(Reply(json=signed_chat_call("gemini-3-pro-preview")))
    first = client.messages.create(
        model=model, max_tokens=200, tools=[TOOL], messages=[{"role": "user", "content": "weather?"}]
    )
    assert [b.type for b in first.content] == ["thinking", "tool_use"]  # the signature was handed out
    history = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_g1", "content": "sunny"}]},
    ]
    client.messages.create(model=model, max_tokens=200, tools=[TOOL], messages=history)
    call = upstream_body(mock, "gemini-3-pro-preview")["messages"][1]["tool_calls"][0]
    assert call.get("extra_content") == {"google": {"thought_signature": "c2lnLWZyb20tZ2VtaW5p"}}
    # the same history on another provider: the signature is not its own, and stays behind
    client.messages.create(model="gpt-4o-mini", max_tokens=200, tools=[TOOL], messages=history)
    assert "extra_content" not in upstream_body(mock, "gpt-4o-mini")["messages"][1]["tool_calls"][0]


CLAUDE_CODE = json.loads((Path(__file__).parent / "claude_code_requests.json").read_text())
REPLAY_MODELS = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-5", "gemini": "gemini-2.5-pro"}


def sse_events(raw: bytes) -> list[tuple[str, dict]]:
    """(event name, data) of each event in an Anthropic SSE answer."""
    events = []
    for block in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.mark.parametrize("kind", list(REPLAY_MODELS))
def test_claude_code_replay(server, key, mock, kind):
    """Claude Code's own requests, captured from the real CLI (2.1.197, print mode, through Stockyard):
    its first turn and the follow-up carrying its Bash tool's result, with headers and ``?beta=true``
    as sent (tests/claude_code_requests.json: long strings cut, ids scrubbed). A Claude model's
    request goes through untouched; to any other model Claude Code sends adaptive thinking, an
    ``output_config`` effort and a system message inside ``messages``. Each turn answers a stream
    the CLI reads — a tool call first, then text — and is traced with its usage and exact cost."""
    family = "claude" if kind == "anthropic" else "other"
    headers = {**CLAUDE_CODE["headers"], "x-api-key": key}
    if family == "claude":
        headers["anthropic-beta"] = CLAUDE_CODE["betas_for_claude"]
    model = REPLAY_MODELS[kind]
    for turn, stop in (("first", "tool_use"), ("follow_up", "end_turn")):
        body = {**CLAUDE_CODE[family][turn], "tools": CLAUDE_CODE["tools"], "model": model}
        status, answer_headers, raw = server.request("POST", CLAUDE_CODE["path"], body, headers=headers)
        assert status == 200, raw[:500]
        events = sse_events(raw)
        names = [name for name, _ in events if name != "ping"]
        assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
        assert events[-2][1]["delta"]["stop_reason"] == stop
        blocks = [data["content_block"] for name, data in events if name == "content_block_start"]
        if stop == "tool_use":
            assert blocks[-1]["type"] == "tool_use" and blocks[-1]["name"] == body["tools"][0]["name"]
        else:
            assert blocks[-1]["type"] == "text"
        if kind == "anthropic":
            sent = mock.last("/v1/messages")
            assert sent is not None and sent.json == body
            assert sent.headers["anthropic-beta"] == headers["anthropic-beta"]
            assert sent.query == {"beta": "true"}  # the client key checked, the query passed on
        user_id = body["metadata"]["user_id"]  # a JSON object of ~150 characters; OpenAI takes 64
        if kind == "openai":
            assert upstream_body(mock, model)["user"] == hashlib.sha256(user_id.encode()).hexdigest()
        trace_id = answer_headers["x-stockyard-trace-id"]
        trace = wait_for(lambda: (t := server.trace(trace_id))["cost_status"] == "exact" and t)  # noqa: B023
        assert (trace["prompt_tokens"], trace["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
        assert trace["end_user"] == json.loads(user_id)["device_id"]  # signed in with a key: its device


# OpenCode 1.18.33's and aider 0.86.2's requests, captured through Stockyard (see each file's _about).
OPENCODE = json.loads((Path(__file__).parent / "opencode_requests.json").read_text())
AIDER = json.loads((Path(__file__).parent / "aider_requests.json").read_text())


@pytest.mark.parametrize("kind", list(REPLAY_MODELS))
def test_opencode_1_18_turn_replayed_on_messages(server, key, mock, kind):
    """OpenCode 1.18.33 with its ``@ai-sdk/anthropic`` provider (``options.baseURL`` at Stockyard): the
    first request of a read/edit/bash tool loop and the follow-up carrying the read tool's result. For a
    Gemini model OpenCode adds ``top_k`` 64 and ``top_p`` 0.95 (as captured), which was a 400 naming
    ``top_k`` on every request: it is Gemini's ``topK``. Other models get neither from OpenCode."""
    model = REPLAY_MODELS[kind]
    section = OPENCODE["messages"]
    headers = {**section["headers"], "x-api-key": key}
    for turn, stop in (("first", "tool_use"), ("follow_up", "end_turn")):
        body = {**section[turn], "tools": section["tools"], "model": model}
        if kind != "gemini":
            body = {k: v for k, v in body.items() if k not in ("top_k", "top_p")}
        status, answer_headers, raw = server.request("POST", section["path"], body, headers=headers)
        assert status == 200, raw[:500]
        events = sse_events(raw)
        assert events[-2][1]["delta"]["stop_reason"] == stop
        blocks = [data["content_block"] for name, data in events if name == "content_block_start"]
        assert blocks[-1]["type"] == ("tool_use" if stop == "tool_use" else "text")
        if kind == "gemini":
            config = upstream_body(mock, model)["generationConfig"]
            assert (config["topK"], config["topP"], config["maxOutputTokens"]) == (64, 0.95, 32000)
        trace_id = answer_headers["x-stockyard-trace-id"]
        trace = wait_for(lambda: (t := server.trace(trace_id))["cost_status"] == "exact" and t)  # noqa: B023
        assert trace["provider"] == kind and trace["completion_tokens"] == COMPLETION_TOKENS


def test_top_k_refused_for_a_gpt_model_named_in_the_error(server, key):
    """``top_k`` reaches Gemini only: OpenAI's chat API has no such field, so it stays a 400 naming it."""
    body = {**OPENCODE["messages"]["first"], "tools": OPENCODE["messages"]["tools"], "model": "gpt-5"}
    status, _, raw = server.request("POST", "/v1/messages", body, headers={"x-api-key": key})
    assert status == 400 and json.loads(raw)["error"]["message"].startswith("top_k:")


@pytest.mark.parametrize("kind", list(REPLAY_MODELS))
def test_opencode_1_18_turn_replayed_on_chat(server, key, mock, kind):
    """OpenCode 1.18.33 with an ``@ai-sdk/openai-compatible`` provider at Stockyard: its tool loop's first
    request and the follow-up with the read tool's result (``stream_options`` asking for usage, the
    tool's ``call_…`` id from the answer), passed through for GPT, translated for Claude and Gemini:
    a streamed tool call the SDK assembles, then text, each traced with its exact cost."""
    model = REPLAY_MODELS[kind]
    section = OPENCODE["chat"]
    headers = {**section["headers"], "Authorization": f"Bearer {key}"}
    for turn, finish in (("first", "tool_calls"), ("follow_up", "stop")):
        body = {**section[turn], "tools": section["tools"], "model": model}
        status, head, raw = server.request("POST", section["path"], body, headers=headers)
        assert status == 200, raw[:500]
        chunks = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: {")]
        choices = [c["choices"][0] for c in chunks if c["choices"]]
        assert choices[-1]["finish_reason"] == finish and chunks[-1]["usage"]["completion_tokens"] == COMPLETION_TOKENS
        if finish == "tool_calls":
            call = next(c["delta"]["tool_calls"][0] for c in choices if c["delta"].get("tool_calls"))
            assert call["function"]["name"] == section["tools"][0]["function"]["name"] and call["id"]
        trace = wait_for(lambda: (t := server.trace(head["x-stockyard-trace-id"]))["cost_status"] == "exact" and t)  # noqa: B023
        assert trace["provider"] == kind


def aider_post(server: ServerProcess, key: str, prefix: str, turn: str, model: str) -> tuple[int, dict, bytes]:
    """aider's captured ``turn`` for LiteLLM's ``prefix`` (openai, anthropic, gemini), sent for ``model``."""
    section = AIDER[prefix]
    auth = {"openai": "Authorization", "anthropic": "x-api-key", "gemini": "x-goog-api-key"}[prefix]
    headers = {**section["headers"], auth: f"Bearer {key}" if auth == "Authorization" else key}
    path = section.get(f"{turn}_path", section["path"]).replace("MODEL", model)
    body = {**section[turn], "model": model} if "model" in section[turn] else section[turn]
    return server.request("POST", path, body, headers=headers)


AIDER_CASES = [("openai", kind) for kind in REPLAY_MODELS] + [("anthropic", "anthropic"), ("gemini", "gemini")]


@pytest.mark.parametrize(("prefix", "kind"), AIDER_CASES, ids=[f"{p}-{k}" for p, k in AIDER_CASES])
def test_aider_0_86_edit_session_replayed(server, key, mock, prefix, kind):
    """aider 0.86.2 (LiteLLM 1.81.10) in a diff-format edit session: the main model's streamed request
    (``openai/…`` models: the openai SDK's chat, ``stream`` with no ``stream_options``; ``anthropic/…``:
    LiteLLM's Messages client; ``gemini/…``: its generateContent client, snake_case
    ``system_instruction``) and the weak model's plain commit-message request. Each is answered as
    the client reads it, and traced with the provider's usage, exactly costed; a stream's usage,
    asked of the provider, is not sent to a client that did not ask for it."""
    model = REPLAY_MODELS[kind]
    for turn in ("first", "follow_up"):
        status, head, raw = aider_post(server, key, prefix, turn, model)
        assert status == 200, raw[:500]
        text = raw.decode()
        if prefix == "openai" and turn == "first":
            chunks = [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: {")]
            assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == TEXT
            assert all("usage" not in c or c["usage"] is None for c in chunks) and text.rstrip().endswith("[DONE]")
        elif prefix == "openai":
            assert json.loads(raw)["choices"][0]["message"]["content"] == TEXT
        elif prefix == "anthropic" and turn == "first":
            assert [name for name, _ in sse_events(raw)][-1] == "message_stop"
        elif prefix == "gemini" and turn == "first":
            chunks = [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: ")]
            assert "".join(p.get("text", "") for c in chunks for p in c["candidates"][0]["content"]["parts"]) == TEXT
        trace = wait_for(lambda: (t := server.trace(head["x-stockyard-trace-id"]))["cost_status"] == "exact" and t)  # noqa: B023
        assert trace["provider"] == kind and trace["completion_tokens"] == COMPLETION_TOKENS


# Qwen Code 0.15.10's, Continue CLI 1.5.47's and Kilo Code CLI 7.7.7's requests, captured through Stockyard
# (see each file's _about): each section is one route the agent speaks, replayed for every model it can name.
AGENT_REPLAYS = {
    name: json.loads((Path(__file__).parent / f"{name}_requests.json").read_text())
    for name in ("qwen_code", "continue_cli", "kilo_cli")
}
AGENT_CASES = [
    (agent, route, kind)
    for agent, sections in AGENT_REPLAYS.items()
    for route, section in sections.items()
    if isinstance(section, dict) and "first" in section
    for kind in (["gemini"] if route == "gemini" else list(REPLAY_MODELS))
]
AGENT_AUTH = {
    "chat": "Authorization",
    "responses": "Authorization",
    "messages": "x-api-key",
    "gemini": "x-goog-api-key",
}


def tool_loop_turn(route: str, raw: bytes) -> str:
    """What a streamed answer of ``route`` ends with: ``tool`` (a call to run) or ``text``."""
    text = raw.decode()
    if route == "messages":
        return "tool" if sse_events(raw)[-2][1]["delta"]["stop_reason"] == "tool_use" else "text"
    data = [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: {")]
    if route == "chat":
        choices = [c["choices"][0] for c in data if c["choices"]]
        return "tool" if choices[-1]["finish_reason"] == "tool_calls" else "text"
    if route == "responses":
        output = data[-1]["response"]["output"]
        return "tool" if output[-1]["type"] == "function_call" else "text"
    parts = [p for c in data for p in c["candidates"][0]["content"]["parts"]]
    return "tool" if any("functionCall" in p for p in parts) else "text"


@pytest.mark.parametrize(("agent", "route", "kind"), AGENT_CASES, ids=["-".join(c) for c in AGENT_CASES])
def test_terminal_agent_tool_loop_replayed(server, key, mock, agent, route, kind):
    """Qwen Code 0.15.10 (``--auth-type`` openai, anthropic, gemini), Continue CLI 1.5.47 (a config.yaml
    model of provider openai — the Responses API for GPT-5, chat for other names —, anthropic or gemini)
    and Kilo Code CLI 7.7.7 (``@ai-sdk/openai-compatible`` and ``@ai-sdk/anthropic`` providers): the first
    streamed request of a read/edit/shell tool loop and the follow-up carrying the read tool's result, as
    captured, for a GPT (passed through or translated), Claude and Gemini model: a tool call the client
    runs, then text, each traced with its provider's usage at an exact cost."""
    section = AGENT_REPLAYS[agent][route]
    model = REPLAY_MODELS[kind]
    auth = AGENT_AUTH[route]
    headers = {**section["headers"], auth: f"Bearer {key}" if auth == "Authorization" else key}
    path = section["path"].replace("MODEL", model)
    for turn, ends in (("first", "tool"), ("follow_up", "text")):
        body = {**section[turn], "tools": section["tools"]}
        if "model" in body:
            body["model"] = model
        status, head, raw = server.request("POST", path, body, headers=headers)
        assert status == 200, raw[:500]
        assert tool_loop_turn(route, raw) == ends
        trace = wait_for(lambda: (t := server.trace(head["x-stockyard-trace-id"]))["cost_status"] == "exact" and t)  # noqa: B023
        assert trace["provider"] == kind and trace["completion_tokens"] > 0


LIBRARIES = json.loads((Path(__file__).parent / "agent_library_requests.json").read_text())
STREAM_CLIENTS = ["langchain_js", "ai_sdk_5"]


@pytest.mark.parametrize("kind", list(REPLAY_MODELS))
@pytest.mark.parametrize("client_name", STREAM_CLIENTS)
def test_js_library_stream_reports_input_tokens_at_message_start(server, key, mock, client_name, kind):
    """LangChain JS's ChatAnthropic and Mastra's AI SDK 5 Anthropic provider read a stream's input
    tokens from ``message_start`` alone (``message_delta`` gives them the output count): a translated
    stream's ``message_start`` said 0, so both reported no input tokens for every GPT or Gemini turn.
    It now says Stockyard's estimate of the translated prompt; ``message_delta`` and the trace keep the
    provider's own count. Their captured tool loops (tests/agent_library_requests.json) replayed."""
    model = REPLAY_MODELS[kind]
    section = LIBRARIES[client_name]
    headers = {**section["headers"], "x-api-key": key}
    for turn, stop in (("first", "tool_use"), ("follow_up", "end_turn")):
        body = {**section[turn], "model": model}
        status, answer_headers, raw = server.request("POST", section["path"], body, headers=headers)
        assert status == 200, raw[:500]
        events = dict(sse_events(raw))  # the last event of each name
        assert events["message_start"]["message"]["usage"]["input_tokens"] > 0
        assert events["message_delta"]["delta"]["stop_reason"] == stop
        if kind != "anthropic":  # passed through as Claude answers
            assert events["message_delta"]["usage"]["input_tokens"] == PROMPT_TOKENS
        trace_id = answer_headers["x-stockyard-trace-id"]
        trace = wait_for(lambda: (t := server.trace(trace_id))["cost_status"] == "exact" and t)  # noqa: B023
        assert (trace["prompt_tokens"], trace["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)

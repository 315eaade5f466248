"""Gemini through Stockyard: the OpenAI SDK translated to generateContent and back.

One server per module routes ``gemini-*`` to the session mock as the Gemini provider.
Each test uses its own model name; the mock takes the model from the URL path.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pydantic
import pytest
from conftest import ServerProcess, base_env, served, wait_for
from mock_upstream import TEXT, THINKING_TEXT, MockUpstream, Recorded, Reply, gemini_stream

GEMINI_KEY = "AIza-test-0123456789abcdefGEMINISECRET"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": ["string", "null"], "enum": ["C", "F", None]},
                    "additionalProperties": {"type": "boolean"},
                    # keywords Claude Code's tools carry that Gemini's Schema has not (a 400 from Gemini)
                    "days": {"type": "integer", "exclusiveMinimum": 0, "maximum": 9007199254740991},
                    "labels": {"type": "object", "propertyNames": {"type": "string"}},
                    "kind": {"const": "forecast"},  # a pydantic Literal["forecast"]: a one-value enum
                },
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="

MOCK_PRICED = ["gemini-2.5-flash-plain"]


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = {**base_env(cache_home), "GEMINI_API_KEY": GEMINI_KEY, "GEMINI_BASE_URL": mock.url}
    # the mock's model names are no real model's: priced explicitly, never guessed
    prices = [("prices", "set", model, "--input", "1", "--output", "2") for model in MOCK_PRICED]
    with served(pyz_path, tmp_path_factory, "gemini", env, cli=prices) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return server.openai("x")


def sent(mock: MockUpstream, model: str) -> Recorded:
    """The newest request the mock got for ``model``, with the key checks every test wants."""
    for req in reversed(mock.requests):
        if req.path.startswith(f"/v1beta/models/{model}:"):
            assert req.headers["x-goog-api-key"] == GEMINI_KEY
            assert "key" not in req.query and GEMINI_KEY not in req.path
            assert "authorization" not in req.headers
            return req
    raise AssertionError(f"mock saw no Gemini request for {model}")


def sse_payloads(raw: bytes) -> list[str]:
    return [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]


def user(text: str = "Hi") -> list[dict]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- plain


def test_plain_chat_translates_both_ways(server, client, mock) -> None:
    model = "gemini-2.5-flash-plain"
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        max_tokens=64,
        temperature=0.3,
        top_p=0.8,
        stop=["END"],
        seed=7,
        n=1,
        messages=[
            {"role": "system", "content": "Be brief."},
            *user("Hello"),
            {"role": "assistant", "content": "Hi there"},
            *user("Again"),
        ],
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "Hello from mock"
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (12, 5, 17)
    assert answer.model == model

    req = sent(mock, model)
    assert req.path == f"/v1beta/models/{model}:generateContent"
    assert req.json == {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hello"}]},
            {"role": "model", "parts": [{"text": "Hi there"}]},
            {"role": "user", "parts": [{"text": "Again"}]},
        ],
        "generationConfig": {
            "temperature": 0.3,
            "topP": 0.8,
            "seed": 7,
            "candidateCount": 1,
            "maxOutputTokens": 64,
            "stopSequences": ["END"],
        },
    }

    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["provider"], trace["status"], trace["served_model"]) == ("gemini", 200, model)
    assert (trace["prompt_tokens"], trace["completion_tokens"], trace["cost_status"]) == (12, 5, "exact")


def test_thought_summaries_come_back_as_reasoning_content(server, client, mock) -> None:
    """Was: Gemini was never asked for its thoughts, so a client asking for reasoning (Codex's
    reasoning summary, a chat client reading reasoning_content) saw none, as it does from Claude."""
    model = "gemini-2.5-flash-thoughts"
    answer = client.chat.completions.create(model=model, messages=user(), reasoning_effort="low")
    assert sent(mock, model).json["generationConfig"]["thinkingConfig"] == {
        "thinkingBudget": 1024,
        "includeThoughts": True,
    }
    message = answer.choices[0].message
    assert (message.content, message.model_extra["reasoning_content"]) == (TEXT, THINKING_TEXT)
    stream = client.chat.completions.create(model=model, messages=user(), reasoning_effort="low", stream=True)
    deltas = [chunk.choices[0].delta for chunk in stream if chunk.choices]
    thought = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert thought == THINKING_TEXT and "".join(d.content or "" for d in deltas) == TEXT
    client.chat.completions.create(model=model, messages=user(), reasoning_effort="none")
    assert sent(mock, model).json["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 0}
    client.chat.completions.create(model=model, messages=user())
    assert "thinkingConfig" not in sent(mock, model).json.get("generationConfig", {})


def test_reasoning_and_cached_usage(server, client) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gemini-2.5-flash-cached-reasoning", messages=user())
    usage = raw.parse().usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (12, 8)  # thoughts are billed as output
    assert usage.completion_tokens_details.reasoning_tokens == 3
    assert usage.prompt_tokens_details.cached_tokens == 8
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["completion_tokens"], trace["reasoning_tokens"], trace["cached_tokens"]) == (8, 3, 8)


def test_json_response_format(client, mock) -> None:
    model = "gemini-2.5-flash-json"
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    client.chat.completions.create(
        model=model,
        messages=user(),
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}},
    )
    config = sent(mock, model).json["generationConfig"]
    assert config == {
        "responseMimeType": "application/json",
        "responseSchema": {"type": "object", "properties": {"a": {"type": "string"}}},
    }


# --------------------------------------------------------------------------- streaming


def test_stream_without_usage(server, client, mock) -> None:
    model = "gemini-2.5-flash-stream"
    raw = client.chat.completions.with_raw_response.create(model=model, messages=user(), stream=True)
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from mock"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    req = sent(mock, model)
    assert req.path == f"/v1beta/models/{model}:streamGenerateContent" and req.query == {"alt": "sse"}
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["stream"], trace["outcome"], trace["prompt_tokens"], trace["completion_tokens"]) == (1, "ok", 12, 5)


def test_stream_with_usage_ends_with_usage_then_done(server) -> None:
    status, headers, body = server.request(
        "POST",
        "/v1/chat/completions",
        {
            "model": "gemini-2.5-flash-stream-usage",
            "messages": user(),
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    payloads = sse_payloads(body)
    assert status == 200 and payloads[-1] == "[DONE]"
    last = json.loads(payloads[-2])
    assert last["choices"] == [] and (last["usage"]["prompt_tokens"], last["usage"]["completion_tokens"]) == (12, 5)
    assert json.loads(payloads[-3])["choices"][0]["finish_reason"] == "stop"
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (12, 5)


# --------------------------------------------------------------------------- tools


def test_tool_round_trip(server, client, mock) -> None:
    model = "gemini-2.5-flash-tools"
    first = client.chat.completions.create(
        model=model, messages=user("Weather in Paris?"), tools=TOOLS, tool_choice="required"
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    body = sent(mock, model).json
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": {
                        "type": "object",
                        "required": ["city"],
                        "properties": {
                            "city": {"type": "string"},
                            "unit": {"type": "string", "nullable": True, "enum": ["C", "F"]},
                            "additionalProperties": {"type": "boolean"},
                            "days": {"type": "integer", "maximum": 9007199254740991},
                            "labels": {"type": "object"},
                            "kind": {"type": "string", "enum": ["forecast"]},
                        },
                    },
                }
            ]
        }
    ]  # a property of that name stays
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}

    follow_model = model + "-followup"
    messages = [
        *user("Weather in Paris?"),
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 18}'},
        {"role": "user", "content": "Thanks"},
    ]
    answer = client.chat.completions.create(
        model=follow_model,
        messages=messages,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert answer.choices[0].message.tool_calls
    assert call.id.startswith("call_") and answer.choices[0].message.tool_calls[0].id != call.id  # was call_1 each time
    body = sent(mock, follow_model).json
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"content": {"temp": 18}}}},
                {"text": "Thanks"},
            ],
        },
    ]


def test_tool_result_text_and_unknown_id(client, mock, server) -> None:
    model = "gemini-2.5-flash-tool-text"
    calls = [{"id": "c9", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]
    client.chat.completions.create(
        model=model,
        messages=[
            *user(),
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c9", "content": "plain words"},
        ],
    )
    assert sent(mock, model).json["contents"][2]["parts"] == [
        {"functionResponse": {"name": "lookup", "response": {"content": "plain words"}}}
    ]
    status, _, body = server.request(
        "POST",
        "/v1/chat/completions",
        {"model": model, "messages": [*user(), {"role": "tool", "tool_call_id": "nope", "content": "x"}]},
    )
    assert status == 400 and "tool_call_id" in json.loads(body)["error"]["message"]


def test_streamed_tool_call(client) -> None:
    chunks = list(
        client.chat.completions.create(model="gemini-2.5-flash-tools-stream", messages=user(), tools=TOOLS, stream=True)
    )
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(d.index, d.id[:5], d.function.name) for d in deltas] == [(0, "call_", "get_weather")]
    assert json.loads(deltas[0].function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def two_calls(model: str) -> dict:
    """A Gemini answer calling two functions in one step (a parallel call)."""
    parts = [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
        {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
    ]
    usage = {"promptTokenCount": 12, "candidatesTokenCount": 9, "totalTokenCount": 21}
    return {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": usage,
        "modelVersion": model,
    }


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls_false_keeps_one_call(server, client, mock, stream) -> None:
    """Gemini has no switch for parallel calls; Codex CLI sends ``parallel_tool_calls: false`` on
    every request. The request is taken, and the answer holds at most the first call (as asked)."""
    model = "gemini-2.5-flash-one-call"
    answer = json.dumps(two_calls(model))
    mock.enqueue(Reply(sse=[answer]) if stream else Reply(json=json.loads(answer)))
    kwargs = {"model": model, "messages": user("Weather in Paris and Rome?"), "tools": TOOLS}
    if stream:
        chunks = list(client.chat.completions.create(**kwargs, parallel_tool_calls=False, stream=True))
        calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
    else:
        message = client.chat.completions.create(**kwargs, parallel_tool_calls=False).choices[0].message
        calls = message.tool_calls or []
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}]
    assert "parallel_tool_calls" not in json.dumps(sent(mock, model).json)
    noted = "SELECT error_message FROM traces WHERE model = ? AND stream = ? ORDER BY id DESC LIMIT 1"
    said = wait_for(lambda: server.db_rows(noted, (model, int(stream))), what="the trace")[0]["error_message"]
    assert "1 more tool call(s) left out (parallel_tool_calls: false)" in said  # made and billed, so said
    mock.enqueue(Reply(json=two_calls(model)))  # asked for nothing: both calls come back
    both = client.chat.completions.create(**kwargs).choices[0].message.tool_calls or []
    assert [json.loads(c.function.arguments)["city"] for c in both] == ["Paris", "Rome"]


# --------------------------------------------------------------------------- images


def test_image_parts_base64_and_url(client, mock) -> None:
    model = "gemini-2.5-flash-vision"
    client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/render?id=4"}},
                ],
            }
        ],
    )
    assert sent(mock, model).json["contents"][0]["parts"] == [
        {"text": "Compare"},
        {"inlineData": {"mimeType": "image/png", "data": PIXEL}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}},
        {"fileData": {"mimeType": "image/*", "fileUri": "https://example.com/render?id=4"}},
    ]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "status, exc_type, error_type, google_status",
    [
        (429, openai.RateLimitError, "rate_limit_error", "RESOURCE_EXHAUSTED"),
        (400, openai.BadRequestError, "invalid_request_error", "INVALID_ARGUMENT"),
    ],
)
def test_upstream_error_status_and_shape(server, client, status, exc_type, error_type, google_status) -> None:
    with pytest.raises(exc_type) as failure:
        client.chat.completions.create(model=f"gemini-error-{status}", messages=user())
    err = failure.value
    assert err.status_code == status
    assert err.body["type"] == error_type and err.body["code"] == google_status
    assert err.body["message"] == f"{google_status} (mock)"
    assert GEMINI_KEY not in err.response.text
    trace = server.trace(err.response.headers["x-stockyard-trace-id"])
    assert (trace["status"], trace["outcome"]) == (status, "upstream_error")


def test_cut_stream_ends_with_error_not_done(server, mock) -> None:
    mock.enqueue(Reply(sse=gemini_stream({}, 1, "gemini-2.5-flash-cut"), cut_after=1))
    status, headers, body = server.request(
        "POST", "/v1/chat/completions", {"model": "gemini-2.5-flash-cut", "messages": user(), "stream": True}
    )
    payloads = sse_payloads(body)
    assert status == 200 and "[DONE]" not in payloads
    assert json.loads(payloads[1])["choices"][0]["delta"]["content"] == "Hello"
    assert "error" in json.loads(payloads[-1])
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["outcome"] == "stream_broken"


def test_stream_without_finish_reason_is_not_done(server, mock) -> None:
    mock.enqueue(Reply(sse=gemini_stream({}, 1, "gemini-2.5-flash-short")[:2]))  # ends cleanly, unfinished
    status, headers, body = server.request(
        "POST", "/v1/chat/completions", {"model": "gemini-2.5-flash-short", "messages": user(), "stream": True}
    )
    payloads = sse_payloads(body)
    assert "[DONE]" not in payloads and "finish reason" in json.loads(payloads[-1])["error"]["message"]
    assert server.trace(headers["x-stockyard-trace-id"])["outcome"] == "stream_broken"


def test_error_chunk_in_stream(server, client, mock) -> None:
    error = {"error": {"code": 503, "message": "The model is overloaded (mock)", "status": "UNAVAILABLE"}}
    mock.enqueue(Reply(sse=[*gemini_stream({}, 1, "gemini-2.5-flash-midfail")[:1], json.dumps(error)]))
    with pytest.raises(openai.APIError, match="overloaded"):
        list(client.chat.completions.create(model="gemini-2.5-flash-midfail", messages=user(), stream=True))


@pytest.mark.parametrize(
    "messages",
    [
        "Hi",
        [],
        [{"role": "user", "content": 5}],
        [{"role": "wizard", "content": "Hi"}],
        [{"role": "assistant", "tool_calls": [{"function": "oops"}]}],
        [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{not json"}}]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}}]}],
        [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
    ],
)
def test_malformed_requests_are_400s_not_500s(server, messages) -> None:
    status, _, raw = server.request("POST", "/v1/chat/completions", {"model": "gemini-2.5-flash", "messages": messages})
    error = json.loads(raw)["error"]
    assert status == 400 and error["type"] == "invalid_request_error" and error["message"]


def test_unsupported_endpoints_are_clear_400s(server) -> None:
    """Legacy completions have no Gemini counterpart (embeddings are translated: test_translation_table)."""
    path = "/v1/completions"
    status, _, raw = server.request("POST", path, {"model": "gemini-2.5-flash", "prompt": "Hi"})
    error = json.loads(raw)["error"]
    assert status == 400 and path in error["message"]


def test_native_messages_to_gemini_are_translated(server, mock) -> None:
    status, _, raw = server.request(
        "POST", "/v1/messages", {"model": "gemini-2.5-flash", "max_tokens": 5, "messages": user()}
    )
    body = json.loads(raw)
    assert status == 200 and body["type"] == "message" and body["content"] == [{"type": "text", "text": TEXT}]
    assert sent(mock, "gemini-2.5-flash").json["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]}]


def test_provider_key_never_in_log(server) -> None:
    assert GEMINI_KEY not in server.log
    assert "Traceback" not in server.log


def test_models_listing_keeps_key_out_of_url(server, mock) -> None:
    status, _, _ = server.request("GET", "/v1/models")  # the mock has no Gemini listing: nothing to add
    listing = next(r for r in reversed(mock.requests) if r.method == "GET" and r.path == "/v1beta/models")
    assert status == 200 and listing.query == {"pageSize": "1000"}
    assert listing.headers["x-goog-api-key"] == GEMINI_KEY


def test_gemini_model_ids_parse_the_listing() -> None:
    from stockyard.models import gemini_model_ids

    doc = {
        "models": [
            {"name": "models/gemini-2.5-flash", "supportedGenerationMethods": ["generateContent", "countTokens"]},
            {"name": "models/text-embedding-004", "supportedGenerationMethods": ["embedContent"]},
            {"name": "models/aqa", "supportedGenerationMethods": ["generateAnswer"]},
        ]
    }
    assert gemini_model_ids(doc) == ["gemini-2.5-flash", "text-embedding-004"]


@pytest.mark.parametrize(
    "model",
    [
        "gemini/..",
        "gemini/.",
        "gemini-2.5-flash/../../v1/files",
        "gemini-x?alt=json",
        "gemini-x#y",
        "gemini-x%2f",
        "gemini x",
        "gemini-x\r\ny",
        "models/..",
    ],
)
def test_model_names_that_leave_their_url_segment_are_400(server, mock, model) -> None:
    before = len(mock.requests)
    status, _, raw = server.request("POST", "/v1/chat/completions", {"model": model, "messages": user()})
    body = json.loads(raw)
    assert status == 400, body
    assert body["error"]["param"] == "model" and body["error"]["code"] == "invalid_model"
    status, _, raw = server.request("POST", "/v1/messages", {"model": model, "max_tokens": 5, "messages": user()})
    body = json.loads(raw)
    assert status == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert len(mock.requests) == before, "nothing reached the upstream"


def nested_schema(levels: int) -> str:
    """A JSON schema nested ``levels`` deep, as text (too deep for json.dumps in this process)."""
    return '{"type": "object", "properties": {"a": ' * levels + '{"type": "string"}' + "}}" * levels


def post_raw(server: ServerProcess, text: str) -> tuple[int, dict]:
    status, _, raw = server.request("POST", "/v1/chat/completions", raw=text.encode())
    return status, json.loads(raw)


@pytest.mark.parametrize("levels", [65, 300, 480])  # 480 levels are 960 JSON objects: just parseable
def test_deeply_nested_schemas_are_400_not_500(server, mock, levels) -> None:
    before = len(mock.requests)
    start = '{"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "Hi"}], '
    status, body = post_raw(
        server,
        start + '"tools": [{"type": "function", "function": {"name": "f", '
        '"parameters": ' + nested_schema(levels) + "}}]}",
    )
    assert status == 400, body
    assert body["error"]["param"] == "tools" and body["error"]["code"] == "schema_too_deep"
    status, body = post_raw(
        server,
        start + '"response_format": {"type": "json_schema", "json_schema": '
        '{"name": "x", "schema": ' + nested_schema(levels) + "}}}",
    )
    assert status == 400 and body["error"]["param"] == "response_format", body
    assert len(mock.requests) == before, "nothing reached the upstream"
    assert "Traceback" not in server.log


def test_a_schema_nested_within_the_limit_still_translates(server, mock) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": json.loads(nested_schema(20))}}]
    status, _, raw = server.request(
        "POST", "/v1/chat/completions", {"model": "gemini-2.5-flash-deep", "messages": user(), "tools": tools}
    )
    assert status == 200, raw
    assert mock.last("gemini-2.5-flash-deep").json["tools"][0]["functionDeclarations"][0]["name"] == "f"


# The OpenAI Agents SDK 0.24's handoff (OpenAIChatCompletionsModel), exactly as it sends it: a tool that
# takes no arguments, its parameters an object with empty properties, which Gemini refuses
# ("parameters.properties: should be non-empty for OBJECT type"); an empty model nested in a tool's
# arguments or a structured answer (a pydantic ``class GoBack(BaseModel): pass`` field) is refused alike.
AGENTS_HANDOFF = {
    "model": "gemini-2.5-flash-handoff",
    "messages": [{"content": "Hand off to spanish.", "role": "system"}, {"role": "user", "content": "Hola"}],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "transfer_to_spanish",
                "description": "Handoff to the spanish agent to handle the request. Spanish speaker",
                "parameters": {"additionalProperties": False, "type": "object", "properties": {}, "required": []},
                "strict": True,
            },
        }
    ],
}
EMPTY_INSIDE = {
    "type": "object",
    "properties": {"go_back": {"type": "object", "properties": {}, "required": []}, "url": {"type": "string"}},
    "required": ["go_back"],
}


def test_objects_without_properties_go_without_them(client, mock) -> None:
    answer = client.chat.completions.create(**AGENTS_HANDOFF)
    assert answer.choices[0].message.tool_calls[0].function.name == "transfer_to_spanish"
    declared = sent(mock, AGENTS_HANDOFF["model"]).json["tools"][0]["functionDeclarations"][0]
    assert "parameters" not in declared  # a function that takes nothing
    tools = [{"type": "function", "function": {"name": "act", "parameters": EMPTY_INSIDE}}]
    answer = client.chat.completions.create(model="gemini-2.5-flash-handoff", messages=user(), tools=tools)
    assert answer.choices[0].message.tool_calls[0].function.name == "act"
    declared = sent(mock, "gemini-2.5-flash-handoff").json["tools"][0]["functionDeclarations"][0]
    bare = {**EMPTY_INSIDE, "properties": {**EMPTY_INSIDE["properties"], "go_back": {"type": "object"}}}
    assert declared["parameters"] == bare
    schema = {"type": "json_schema", "json_schema": {"name": "act", "schema": EMPTY_INSIDE}}
    client.chat.completions.create(model="gemini-2.5-flash-handoff", messages=user(), response_format=schema)
    assert sent(mock, "gemini-2.5-flash-handoff").json["generationConfig"]["responseSchema"] == bare


def test_deeply_nested_tool_results_are_400_not_500(server) -> None:
    deep = "[" * 950 + '"x"' + "]" * 950  # parsed by the translation (a tool result may be JSON)
    messages = [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": deep},
    ]
    status, body = post_raw(server, json.dumps({"model": "gemini-2.5-flash", "messages": messages}))
    assert status in (200, 400), body
    assert "Traceback" not in server.log


class Address(pydantic.BaseModel):
    city: str


class Person(pydantic.BaseModel):
    name: str
    home: Address
    past: list[Address]


def test_a_nested_pydantic_response_format_is_inlined_for_gemini(client, mock) -> None:
    """A nested model's schema names its parts by ``$ref`` into ``$defs``, which Gemini's Schema
    cannot take (Gemini answered 400): the parts are inlined; a recursive schema is a clear 400."""
    model = "gemini-2.5-flash-nested"
    answer = {"name": "Ada", "home": {"city": "Paris"}, "past": [{"city": "Oslo"}]}
    part = {"content": {"role": "model", "parts": [{"text": json.dumps(answer)}]}, "finishReason": "STOP"}
    mock.enqueue(Reply(json={"candidates": [part], "usageMetadata": {"promptTokenCount": 3}}))
    parsed = client.chat.completions.parse(model=model, messages=user("Who?"), response_format=Person)
    assert parsed.choices[0].message.parsed == Person.model_validate(answer)
    schema = sent(mock, model).json["generationConfig"]["responseSchema"]
    assert "$ref" not in json.dumps(schema) and "$defs" not in schema
    assert schema["properties"]["past"]["items"]["properties"]["city"]["type"] == "string"

    class Node(pydantic.BaseModel):
        value: int
        children: list[Node]

    with pytest.raises(openai.BadRequestError, match="recursive"):
        client.chat.completions.parse(model=model, messages=user("Tree?"), response_format=Node)


AI_SDK_WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Weather in a city",
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def test_a_gemini_3_tool_loop_whose_client_dropped_the_signature(server, mock) -> None:
    """The Vercel AI SDK's chat provider (ai 6.0.333, @ai-sdk/openai 3.0.141, `.chat(model)`)
    sends the tool call back without its `extra_content`: the exact bodies of its two steps. The
    mock, like Gemini 3, refuses a signed call sent back unsigned; Stockyard gives the call Google's
    stand-in signature (as Gemini CLI does) and says so in the trace."""
    model = "gemini-3-flash-ai-sdk"
    ask = {"model": model, "tools": [AI_SDK_WEATHER], "tool_choice": "auto"}
    status, _, data = server.request("POST", "/v1/chat/completions", {**ask, "messages": user("Weather in Paris?")})
    call = json.loads(data)["choices"][0]["message"]["tool_calls"][0]
    assert status == 200 and call["extra_content"]["google"]["thought_signature"]
    echoed = {"id": call["id"], "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [echoed]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"city":"Paris","tempC":21}'},
    ]
    status, headers, data = server.request("POST", "/v1/chat/completions", {**ask, "messages": messages})
    assert status == 200, data
    assert json.loads(data)["choices"][0]["message"]["content"] == TEXT
    parts = [p for c in sent(mock, model).json["contents"] for p in c["parts"] if "functionCall" in p]
    assert parts[0]["thoughtSignature"] == "skip_thought_signature_validator"
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["status"] == 200 and "thought signature skipped" in trace["error_message"]


# --------------------------------------------------------------------------- a tool result's images and files

QWEN_MEDIA = json.loads((Path(__file__).parent / "qwen_code_requests.json").read_text())["chat_media"]


def test_qwen_code_tool_result_image_and_pdf_reach_gemini(server, mock) -> None:
    """Qwen Code 0.15.10's chat request after ``read_file`` of a PNG, then of a PDF (tests/qwen_code_requests.json,
    as captured): each ``tool`` message's content is an ``image_url`` or a ``file`` part. They went to Gemini
    as ``functionResponse``s with empty content — the image and the PDF lost without a word. Each response now
    says what follows it, and the image and the PDF follow it as ``inlineData`` in the same user turn."""
    model = "gemini-2.5-flash-plain"
    body = {**QWEN_MEDIA["body"], "model": model}
    headers = {**QWEN_MEDIA["headers"], "Authorization": "Bearer x"}
    status, _, raw = server.request("POST", QWEN_MEDIA["path"], body, headers=headers)
    assert status == 200, raw[:300]
    contents = sent(mock, model).json["contents"]
    image_turn, pdf_turn = contents[-3], contents[-1]
    said = [turn["parts"][0]["functionResponse"]["response"]["content"] for turn in (image_turn, pdf_turn)]
    assert said == ["(the result is the image that follows)", "(the result is the attachment that follows)"]
    assert image_turn["parts"][1]["inlineData"]["mimeType"] == "image/png"
    assert pdf_turn["parts"][1]["inlineData"]["mimeType"] == "application/pdf"

"""Anthropic through Stockyard: the OpenAI SDK translated to the Messages API, and the
Anthropic SDK passed through natively on /v1/messages.

One server per module routes ``claude-*`` to the session mock as the Anthropic provider
(and ``gpt-*`` to it as OpenAI, to show native requests refuse non-Anthropic providers).
Each test uses its own model name so it can find its request among the mock's records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pydantic
import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import (
    TEXT,
    THINK_SIG,
    THINKING_SIGNATURE,
    THINKING_TEXT,
    MockUpstream,
    Recorded,
    Reply,
    anthropic_stream,
    anthropic_thinking_call,
)

from stockyard.pricing import PriceTable, Usage, cost_microcents


def native_client_version() -> str:
    """The anthropic-version header the installed Anthropic SDK sends."""
    return anthropic.Anthropic(api_key="x").default_headers["anthropic-version"]


ANTHROPIC_KEY = "sk-ant-test-0123456789abcdefANTHROPICSECRET"
OPENAI_KEY = "sk-test-openai-for-anthropic-module-SECRET"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
SDK_VERSION = native_client_version()
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="

MOCK_PRICED = ["claude-haiku-4-5-plain", "claude-haiku-4-5-native"]


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(
        cache_home, mock, OPENAI_API_KEY=OPENAI_KEY, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url
    )
    # the mock's model names are no real model's: priced explicitly, never guessed
    prices = [("prices", "set", model, "--input", "1", "--output", "2") for model in MOCK_PRICED]
    with served(pyz_path, tmp_path_factory, "anthropic", env, cli=prices) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return server.openai("x")


@pytest.fixture(scope="module")
def native(server) -> anthropic.Anthropic:
    return server.anthropic("x")


def sent(mock: MockUpstream, model: str, path: str = "/v1/messages") -> Recorded:
    """The newest request the mock got on ``path`` for ``model``."""
    for req in reversed(mock.requests):
        if req.path == path and isinstance(req.json, dict) and req.json.get("model") == model:
            return req
    raise AssertionError(f"mock saw no {path} request for {model}")


def sse_payloads(raw: bytes) -> list[str]:
    return [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]


def user(text: str = "Hi") -> list[dict]:
    return [{"role": "user", "content": text}]


def check_key_headers(req: Recorded, version: str = "2023-06-01") -> None:
    """The provider key (never the client's) and the API version went upstream."""
    assert req.headers["x-api-key"] == ANTHROPIC_KEY
    assert req.headers["anthropic-version"] == version
    assert "authorization" not in req.headers


# --------------------------------------------------------------------------- OpenAI dialect, plain


def test_plain_chat_translates_both_ways(server, client, mock) -> None:
    model = "claude-haiku-4-5-plain"
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        max_tokens=100,
        temperature=0.2,
        top_p=0.9,
        stop="END",
        user="user-7",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
            {"role": "user", "content": "Hello"},
            {"role": "user", "content": "again"},
        ],
    )
    answer = raw.parse()
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content == "Hello from mock"
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (12, 5, 17)

    req = sent(mock, model)
    check_key_headers(req)
    assert req.json == {
        "model": model,
        "max_tokens": 100,
        "temperature": 0.2,
        "top_p": 0.9,
        "system": "Be brief.\n\nNo emoji.",
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-7"},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "again"}]}
        ],
    }

    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["provider"], trace["endpoint"], trace["dialect"]) == ("anthropic", "chat", "openai")
    assert trace["status"] == 200
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (12, 5)
    assert trace["cost_status"] == "exact" and trace["cost_uc"] > 0


def test_cached_system_parts_stay_blocks(client, mock) -> None:
    model = "claude-haiku-4-5-system-cache"
    marker = {"type": "ephemeral"}
    client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "Long rules", "cache_control": marker}]},
            {"role": "assistant", "content": ""},
            *user(),
        ],
    )
    body = sent(mock, model).json
    assert body["system"] == [{"type": "text", "text": "Long rules", "cache_control": marker}]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


TOOL_LOOP = [
    {"role": "system", "content": "Long rules"},
    {"role": "user", "content": "List the files"},
    {
        "role": "assistant",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "a.py b.py"},
]


@pytest.mark.parametrize(
    "extra, mark",
    [
        ({"prompt_cache_key": "session-1"}, {"type": "ephemeral"}),
        ({"prompt_cache_key": "session-1", "prompt_cache_retention": "24h"}, {"type": "ephemeral", "ttl": "1h"}),
    ],
)
def test_a_prompt_cache_key_caches_the_prefix_on_claude(client, mock, extra, mark) -> None:
    """OpenAI caches a prompt by itself; Claude only up to a cache_control mark. A client that asks
    for caching (Codex CLI sends its session as prompt_cache_key) got none on Claude: every turn
    of a tool loop paid its whole history at the full input price."""
    model = f"claude-haiku-4-5-auto-cache-{len(extra)}"
    client.chat.completions.create(model=model, messages=TOOL_LOOP, extra_body=extra)
    body = sent(mock, model).json
    assert body["system"] == [{"type": "text", "text": "Long rules", "cache_control": mark}]
    last = body["messages"][-1]["content"]
    assert last == [{"type": "tool_result", "tool_use_id": "c1", "content": "a.py b.py", "cache_control": mark}]
    assert [b for m in body["messages"][:-1] for b in m["content"] if "cache_control" in b] == []


def test_no_cache_marks_without_a_key_or_beside_the_clients_own(client, mock) -> None:
    client.chat.completions.create(model="claude-haiku-4-5-no-key", messages=TOOL_LOOP)
    body = sent(mock, "claude-haiku-4-5-no-key").json
    assert body["system"] == "Long rules" and "cache_control" not in json.dumps(body)
    own = {"type": "ephemeral", "ttl": "1h"}
    messages = [{"role": "system", "content": [{"type": "text", "text": "Long rules", "cache_control": own}]}, *user()]
    client.chat.completions.create(
        model="claude-haiku-4-5-own", messages=messages, extra_body={"prompt_cache_key": "k"}
    )
    body = sent(mock, "claude-haiku-4-5-own").json
    assert body["system"] == [{"type": "text", "text": "Long rules", "cache_control": own}]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


def test_max_tokens_default_and_provider_prefix(client, mock) -> None:
    client.chat.completions.create(model="anthropic/claude-haiku-4-5-default", messages=user())
    body = sent(mock, "claude-haiku-4-5-default").json
    assert body["max_tokens"] == 4096
    client.chat.completions.create(model="claude-haiku-4-5-mct", messages=user(), max_completion_tokens=77)
    assert sent(mock, "claude-haiku-4-5-mct").json["max_tokens"] == 77


@pytest.mark.parametrize("flag, cached, written", [("cached", 8, 0), ("cache-write", 0, 8)])
def test_cache_usage(server, client, flag, cached, written) -> None:
    raw = client.chat.completions.with_raw_response.create(model=f"claude-sonnet-4-5-{flag}", messages=user())
    usage = raw.parse().usage
    assert usage.prompt_tokens == 12  # input + cache reads + cache writes
    assert usage.prompt_tokens_details.cached_tokens == cached
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["prompt_tokens"], trace["cached_tokens"], trace["cache_write_tokens"]) == (12, cached, written)


# --------------------------------------------------------------------------- streaming


def test_stream_without_usage(server, client, mock) -> None:
    model = "claude-haiku-4-5-stream"
    raw = client.chat.completions.with_raw_response.create(model=model, messages=user(), stream=True)
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from mock"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert sent(mock, model).json["stream"] is True
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["stream"], trace["prompt_tokens"], trace["completion_tokens"]) == (1, 12, 5)
    assert trace["outcome"] == "ok"


def test_stream_with_usage_ends_with_usage_then_done(server, mock) -> None:
    status, headers, body = server.request(
        "POST",
        "/v1/chat/completions",
        {
            "model": "claude-haiku-4-5-stream-usage",
            "messages": user(),
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(body)
    assert payloads[-1] == "[DONE]"
    last = json.loads(payloads[-2])
    assert last["choices"] == [] and last["usage"]["prompt_tokens"] == 12 and last["usage"]["completion_tokens"] == 5
    assert json.loads(payloads[-3])["choices"][0]["finish_reason"] == "stop"
    assert all(json.loads(p)["object"] == "chat.completion.chunk" for p in payloads[:-1])
    assert "ping" not in body.decode()
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (12, 5)


# --------------------------------------------------------------------------- tools


def test_tool_round_trip(server, client, mock) -> None:
    model = "claude-haiku-4-5-tools"
    first = client.chat.completions.create(
        model=model, messages=user("Weather in Paris?"), tools=TOOLS, tool_choice="required", parallel_tool_calls=False
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_mock1",
        "get_weather",
        {"city": "Paris"},
    )
    body = sent(mock, model).json
    assert body["tools"] == [
        {"name": "get_weather", "description": "Weather for a city", "input_schema": TOOLS[0]["function"]["parameters"]}
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}

    follow_model = model + "-followup"
    messages = [
        *user("Weather in Paris?"),
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
        {"role": "tool", "tool_call_id": "toolu_other", "content": [{"type": "text", "text": "n/a"}]},
        {"role": "user", "content": "Thanks"},
    ]
    client.chat.completions.create(
        model=follow_model,
        messages=messages,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    body = sent(mock, follow_model).json
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_mock1", "name": "get_weather", "input": {"city": "Paris"}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_mock1", "content": "18C and sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_other", "content": "n/a"},
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]


def test_streamed_tool_call(client) -> None:
    chunks = list(
        client.chat.completions.create(model="claude-haiku-4-5-tools-stream", messages=user(), tools=TOOLS, stream=True)
    )
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id == "toolu_mock1" and deltas[0].function.name == "get_weather"
    assert deltas[0].function.arguments == "" and {d.index for d in deltas} == {0}
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# --------------------------------------------------------------------------- images


def test_image_parts_base64_and_url(client, mock) -> None:
    model = "claude-haiku-4-5-vision"
    client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
                ],
            }
        ],
    )
    assert sent(mock, model).json["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_a_jpg_data_url_goes_as_image_jpeg(client, mock) -> None:
    """``image/jpg`` is not a media type Anthropic takes; clients write it for JPEG."""
    model = "claude-haiku-4-5-vision"
    part = {"type": "image_url", "image_url": {"url": f"data:image/JPG;base64,{PIXEL}"}}
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": [part]}])
    block = sent(mock, model).json["messages"][0]["content"][0]
    assert block["source"] == {"type": "base64", "media_type": "image/jpeg", "data": PIXEL}


@pytest.mark.parametrize("kind", ["image/svg+xml", "image/bmp", "image/heic"])
def test_an_image_type_claude_cannot_read_is_refused_naming_it(server, client, mock, kind) -> None:
    model = "claude-haiku-4-5-vision"
    before = len(mock.requests)
    part = {"type": "image_url", "image_url": {"url": f"data:{kind};base64,{PIXEL}"}}
    with pytest.raises(openai.BadRequestError) as failure:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": [part]}])
    body = failure.value.body
    assert body["code"] == "unsupported_content" and body["param"] == "messages"
    assert repr(kind) in body["message"] and "JPEG, PNG, GIF and WebP" in body["message"]
    assert len(mock.requests) == before  # never sent


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "status, exc_type, error_type",
    [(429, openai.RateLimitError, "rate_limit_error"), (400, openai.BadRequestError, "invalid_request_error")],
)
def test_upstream_error_status_and_shape(server, client, status, exc_type, error_type) -> None:
    with pytest.raises(exc_type) as failure:
        client.chat.completions.create(model=f"claude-error-{status}", messages=user())
    err = failure.value
    assert err.status_code == status
    assert err.body["type"] == error_type and err.body["code"] == error_type
    assert "(mock)" in err.body["message"]
    assert ANTHROPIC_KEY not in err.response.text
    trace = server.trace(err.response.headers["x-stockyard-trace-id"])
    assert (trace["status"], trace["outcome"], trace["cost_uc"]) == (status, "upstream_error", None)


def test_cut_stream_ends_with_error_not_done(server, mock) -> None:
    events = anthropic_stream({}, 1, "claude-haiku-4-5-cut")
    mock.enqueue(Reply(sse=events, cut_after=4))  # message_start, block start, ping, first delta
    status, headers, body = server.request(
        "POST", "/v1/chat/completions", {"model": "claude-haiku-4-5-cut", "messages": user(), "stream": True}
    )
    payloads = sse_payloads(body)
    assert status == 200 and "[DONE]" not in payloads
    assert json.loads(payloads[1])["choices"][0]["delta"]["content"] == "Hello"
    assert "error" in json.loads(payloads[-1])
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["outcome"] == "stream_broken" and trace["prompt_tokens"] == 12


def test_error_event_in_stream_becomes_openai_error(server, client, mock) -> None:
    events = anthropic_stream({}, 1, "claude-haiku-4-5-overload")[:4]
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded (mock)"}}
    mock.enqueue(Reply(sse=events + [f"event: error\ndata: {json.dumps(error)}"]))
    status, headers, body = server.request(
        "POST", "/v1/chat/completions", {"model": "claude-haiku-4-5-overload", "messages": user(), "stream": True}
    )
    payloads = sse_payloads(body)
    assert "[DONE]" not in payloads
    assert json.loads(payloads[-1])["error"]["message"] == "Overloaded (mock)"
    assert json.loads(payloads[-1])["error"]["code"] == "overloaded_error"
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["outcome"], trace["error_type"]) == ("stream_broken", "upstream_overloaded_error")

    mock.enqueue(Reply(sse=events + [f"event: error\ndata: {json.dumps(error)}"]))
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(client.chat.completions.create(model="claude-haiku-4-5-overload", messages=user(), stream=True))


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
    status, _, raw = server.request("POST", "/v1/chat/completions", {"model": "claude-haiku-4-5", "messages": messages})
    error = json.loads(raw)["error"]
    assert status == 400 and error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/completions", {"model": "claude-haiku-4-5", "prompt": "Hi"}),
        ("/v1/embeddings", {"model": "claude-haiku-4-5", "input": "Hi"}),
    ],
)
def test_unsupported_endpoints_are_clear_400s(server, path, body) -> None:
    status, _, raw = server.request("POST", path, body)
    error = json.loads(raw)["error"]
    assert status == 400 and error["type"] == "invalid_request_error"
    assert "/v1/chat/completions" in error["message"] and path in error["message"]


# --------------------------------------------------------------------------- native /v1/messages


def test_native_plain_passes_bytes_through(server, native, mock) -> None:
    model = "claude-haiku-4-5-native"
    raw = native.messages.with_raw_response.create(
        model=model,
        max_tokens=50,
        messages=[{"role": "user", "content": "Hi"}],
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    message = raw.parse()
    assert message.content[0].text == "Hello from mock" and message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 5)
    req = sent(mock, model)
    check_key_headers(req, version=SDK_VERSION)  # a native client keeps the version it speaks
    assert req.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["endpoint"], trace["dialect"], trace["provider"]) == ("messages", "anthropic", "anthropic")
    assert (trace["prompt_tokens"], trace["completion_tokens"], trace["cost_status"]) == (12, 5, "exact")

    exact = b'{"model":  "claude-haiku-4-5-bytes", "max_tokens": 9,\n "messages": [{"role": "user", "content": "x"}]}'
    status, _, _ = server.request("POST", "/v1/messages", raw=exact)
    req = sent(mock, "claude-haiku-4-5-bytes")
    assert status == 200 and req.body == exact
    check_key_headers(req)  # no version from the client: the documented one


def test_native_provider_prefix_rewrites_only_model(native, mock) -> None:
    native.messages.create(
        model="anthropic/claude-haiku-4-5-prefixed", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
    )
    body = sent(mock, "claude-haiku-4-5-prefixed").json
    assert body == {
        "model": "claude-haiku-4-5-prefixed",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "Hi"}],
    }


def test_native_stream_relays_events_unchanged(server, native, mock) -> None:
    model = "claude-haiku-4-5-native-stream"
    with native.messages.stream(model=model, max_tokens=50, messages=[{"role": "user", "content": "Hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from mock" and final.usage.output_tokens == 5

    status, headers, body = server.request(
        "POST",
        "/v1/messages",
        {"model": model, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
    )
    names = [line[7:] for line in body.decode().split("\n") if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert "[DONE]" not in body.decode()
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["stream"], trace["prompt_tokens"], trace["completion_tokens"]) == (1, 12, 5)


def test_native_count_tokens_is_free(server, native, mock) -> None:
    model = "claude-haiku-4-5-count"
    raw = native.messages.with_raw_response.count_tokens(model=model, messages=[{"role": "user", "content": "Hi"}])
    assert raw.parse().input_tokens == 12
    check_key_headers(sent(mock, model, "/v1/messages/count_tokens"), version=SDK_VERSION)
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert trace["endpoint"] == "count_tokens" and not trace["cost_uc"] and not trace["prompt_tokens"]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_the_beta_clients_query_goes_upstream(server, mock, path) -> None:
    """Claude Code (the TypeScript SDK's beta client) sends ``?beta=true`` (tests/claude_code_requests.json):
    Anthropic gets it too, as the client asked (it went nowhere before); without it, no query."""
    model = f"claude-haiku-4-5-beta{path.count('/')}"
    body = {"model": model, "max_tokens": 5, "messages": user()}
    status, _, raw = server.request("POST", f"{path}?beta=true", body)
    assert status == 200, raw
    assert sent(mock, model, path).query == {"beta": "true"}
    status, _, raw = server.request("POST", path, body)
    assert status == 200, raw
    assert sent(mock, model, path).query == {}


def test_only_beta_true_of_a_query_reaches_the_provider(server, mock) -> None:
    """An allow-list: whatever else a client writes in its URL never becomes the provider's."""
    body = {"model": "anthropic/claude-haiku-4-5-query", "max_tokens": 5, "messages": user()}
    path = "/v1/messages?beta=true&key=stolen&anthropic-version=x&beta=false"
    status, _, raw = server.request("POST", path, body)
    assert status == 200, raw
    assert sent(mock, "claude-haiku-4-5-query").query == {}  # beta named twice: not the SDK's flag
    status, _, raw = server.request("POST", "/v1/messages?key=stolen&beta=true", body)
    assert status == 200, raw
    assert sent(mock, "claude-haiku-4-5-query").query == {"beta": "true"}


def test_native_error_passes_through(server, native) -> None:
    with pytest.raises(anthropic.RateLimitError) as failure:
        native.messages.create(model="claude-error-429", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    body: Any = failure.value.body
    assert body == {"type": "error", "error": {"type": "rate_limit_error", "message": "rate_limit_error (mock)"}}
    trace = server.trace(failure.value.response.headers["x-stockyard-trace-id"])
    assert (trace["status"], trace["outcome"]) == (429, "upstream_error")


def test_native_to_non_anthropic_provider_is_translated(native, mock) -> None:
    message = native.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert message.type == "message" and message.content[0].type == "text"
    assert mock.requests[-1].path.endswith("/chat/completions")  # over the provider's chat API


def test_models_lists_anthropic_models(server, mock) -> None:
    status, _, body = server.request("GET", "/v1/models")
    ids = {m["id"] for m in json.loads(body)["data"]}
    assert status == 200 and {"gpt-4o-mini", "anthropic/gpt-4o-mini"} <= ids  # the mock lists the same ids
    listing = next(r for r in reversed(mock.requests) if r.method == "GET" and r.query.get("limit") == "1000")
    assert listing.path == "/v1/models"
    check_key_headers(listing)


def test_provider_key_never_in_log(server) -> None:
    assert ANTHROPIC_KEY not in server.log and OPENAI_KEY not in server.log
    assert "Traceback" not in server.log


def raw_messages(server: ServerProcess, header_lines: bytes, path: str = "/v1/messages") -> tuple[int, dict]:
    """One request over a raw socket: header values an HTTP client library would refuse to send."""
    import socket

    body = json.dumps(
        {"model": "claude-haiku-4-5-hdr", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
    ).encode()
    head = (
        (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        ).encode()
        + header_lines
        + b"\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        while chunk_ := sock.recv(65536):
            data += chunk_
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize(
    "header",
    [
        b"anthropic-version: 2023-06-01\rX-Injected: 1\r\n",
        b"anthropic-version: 2023-06-01\x00\r\n",
        b"anthropic-version: 2023-06-01\x7f\r\n",
        b"anthropic-version: 2023-06-01 x\r\n",
        b"anthropic-beta: prompt-caching-2024-07-31\rX-Injected: 1\r\n",
        b"anthropic-beta: a\x01b\r\n",
        b"anthropic-beta: a;b\r\n",
    ],
)
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_bad_anthropic_version_or_beta_headers_are_400_in_anthropic_shape(server, mock, header, path) -> None:
    before = len(mock.requests)
    status, body = raw_messages(server, header, path)
    assert status == 400, body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "anthropic-" in body["error"]["message"]
    assert len(mock.requests) == before, "nothing reached the upstream"
    assert "Traceback" not in server.log


def test_good_beta_lists_still_pass(server, mock) -> None:
    status, body = raw_messages(
        server,
        b"anthropic-version: 2023-06-01\r\n"
        b"anthropic-beta: prompt-caching-2024-07-31, token-efficient-tools-2025-02-19\r\n",
    )
    assert status == 200, body
    req = sent(mock, "claude-haiku-4-5-hdr")
    assert req.headers["anthropic-beta"] == "prompt-caching-2024-07-31, token-efficient-tools-2025-02-19"


# --------------------------------------------------------------------------- server tools


def searched_message(searches: int) -> dict:
    usage = {"input_tokens": 12, "output_tokens": 5, "server_tool_use": {"web_search_requests": searches}}
    return {
        "id": "msg_searched",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "Found it."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


SEARCH_TOOL = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}


@pytest.mark.parametrize("stream", [False, True])
def test_web_searches_are_billed_a_cent_each(server, mock, stream) -> None:
    """Was: Anthropic's web search tool costs $10 per 1,000 searches on top of the tokens, and
    the trace's cost counted only the tokens (Claude Code's web searches went unbilled)."""
    message = searched_message(3)
    if stream:
        start = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": 12, "output_tokens": 1}}
        events = [
            f"event: message_start\ndata: {json.dumps({'type': 'message_start', 'message': start})}",
            'event: content_block_start\ndata: {"type": "content_block_start", "index": 0, '
            '"content_block": {"type": "text", "text": ""}}',
            'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
            '"delta": {"type": "text_delta", "text": "Found it."}}',
            'event: content_block_stop\ndata: {"type": "content_block_stop", "index": 0}',
            "event: message_delta\ndata: "
            + json.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": message["usage"]}),
            'event: message_stop\ndata: {"type": "message_stop"}',
        ]
        mock.enqueue(Reply(sse=events))
    else:
        mock.enqueue(Reply(json=message))
    body = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": user(), "tools": [SEARCH_TOOL]}
    status, headers, _ = server.request("POST", "/v1/messages", {**body, "stream": stream})
    assert status == 200
    trace = server.trace(headers["x-stockyard-trace-id"])
    price = PriceTable.load().lookup("claude-haiku-4-5", "anthropic")
    tokens = cost_microcents(price, Usage(prompt_tokens=12, completion_tokens=5))
    assert trace["cost_uc"] == tokens + 3 * 1_000_000  # three searches, $0.01 each


# --------------------------------------------------------------------------- thinking in tool loops


def last_assistant(mock: MockUpstream, model: str) -> list[dict]:
    body = sent(mock, model).json
    assert body.get("thinking"), body  # thinking is on for this request
    return [m for m in body["messages"] if m["role"] == "assistant"][-1]["content"]


def test_chat_to_anthropic_thinking_tool_loop(client, mock) -> None:
    """The review's reproduction: reasoning_effort + tools on a Claude model; on the tool-result
    turn Anthropic wants the assistant turn to start with its thinking blocks, signature intact
    (the mock refuses it otherwise, as Anthropic does)."""
    model = "claude-sonnet-4-5-think-scripted"
    mock.enqueue(Reply(json=anthropic_thinking_call(model, redacted=True)))
    ask = dict(model=model, max_completion_tokens=8000, reasoning_effort="low", tools=TOOLS)
    first = client.chat.completions.create(**ask, messages=user("weather?"))
    msg = first.choices[0].message
    assert msg.reasoning_content == "I should call the tool."
    assert msg.thinking_blocks == [
        {"type": "thinking", "thinking": "I should call the tool.", "signature": THINK_SIG},
        {"type": "redacted_thinking", "data": "RURBQ1RFRA=="},
    ]
    answer = client.chat.completions.create(
        **ask,
        messages=[
            *user("weather?"),
            msg.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "sunny"},
        ],
    )
    assert answer.choices[0].message.content == "Hello from mock"
    blocks = last_assistant(mock, model)
    assert blocks[0] == {"type": "thinking", "thinking": "I should call the tool.", "signature": THINK_SIG}
    assert [b["type"] for b in blocks] == ["thinking", "redacted_thinking", "tool_use"]


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_blocks_round_trip_plain_and_streamed(client, mock, stream) -> None:
    """Streams carry each thinking block, whole, in a ``thinking_blocks`` delta (with an index, so
    the SDK's stream helper collects them) and its text as ``reasoning_content``."""
    model = f"claude-sonnet-4-5-think-{stream}"
    ask = dict(model=model, max_completion_tokens=8000, reasoning_effort="low", tools=TOOLS)
    if stream:
        with client.chat.completions.stream(**ask, messages=user("weather?")) as s:
            msg = s.get_final_completion().choices[0].message
    else:
        msg = client.chat.completions.create(**ask, messages=user("weather?")).choices[0].message
    assert msg.reasoning_content == THINKING_TEXT
    assert [{k: v for k, v in b.items() if k != "index"} for b in msg.thinking_blocks] == [
        {"type": "thinking", "thinking": THINKING_TEXT, "signature": THINKING_SIGNATURE}
    ]
    follow = [
        *user("weather?"),
        msg.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "sunny"},
    ]
    answer = client.chat.completions.create(**ask, messages=follow)
    assert answer.choices[0].message.content == "Hello from mock"
    assert last_assistant(mock, model)[0] == {
        "type": "thinking",
        "thinking": THINKING_TEXT,
        "signature": THINKING_SIGNATURE,
    }


def test_thinking_is_left_off_when_the_loop_came_back_without_it(server, client, mock) -> None:
    """A client that dropped the thinking blocks (or history from another model): Anthropic would
    refuse the request with thinking on, so it goes without thinking, and the trace says so."""
    model = "claude-sonnet-4-5-think-dropped"
    ask = dict(model=model, max_completion_tokens=8000, reasoning_effort="low", tools=TOOLS)
    msg = client.chat.completions.create(**ask, messages=user("weather?")).choices[0].message
    bare = {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in msg.tool_calls]}
    follow = [*user("weather?"), bare, {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "sunny"}]
    raw = client.chat.completions.with_raw_response.create(**ask, messages=follow)
    assert raw.parse().choices[0].message.content == "Hello from mock"
    body = sent(mock, model).json
    assert "thinking" not in body and body["max_tokens"] == 8000
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert trace["status"] == 200 and "thinking left off" in trace["error_message"]
    # a new user turn needs no thinking back: thinking stays on, the old blocks are not required
    fresh = [*follow, {"role": "assistant", "content": "Sunny."}, *user("And tomorrow?")]
    client.chat.completions.create(**ask, messages=fresh)
    assert sent(mock, model).json["thinking"]["type"] == "enabled"


def test_native_requests_lose_only_the_thinking_blocks_stockyard_made_for_gemini(native, mock) -> None:
    """A conversation Claude Code had on a Gemini model, continued on Claude: the thinking block
    that carried Gemini's thought signature is Stockyard's, not Anthropic's, and is not sent."""
    from stockyard.providers.reasoning import pack

    ours = {"type": "thinking", "thinking": "", "signature": pack({"thought_signatures": {"call_1": "c2ln"}})}
    theirs = {"type": "thinking", "thinking": "hm", "signature": THINK_SIG}
    call = {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
    result = {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}
    native.messages.create(
        model="claude-haiku-4-5-from-gemini",
        max_tokens=100,
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],  # Claude's 400 without (tool blocks)
        messages=[
            *user("weather?"),
            {"role": "assistant", "content": [theirs, ours, call]},
            {"role": "user", "content": [result]},
        ],
    )
    body = sent(mock, "claude-haiku-4-5-from-gemini").json
    assert body["messages"][1]["content"] == [theirs, call]


@pytest.mark.parametrize(
    "made_by",
    [
        "gemini-signature",  # Messages on gemini-3: Stockyard's packed thought signature
        "reasoning-text",  # Messages on a reasoning model: thinking text, empty signature (Stockyard's)
    ],
)
def test_native_loop_moved_to_claude_with_thinking_on_leaves_thinking_off(native, mock, made_by) -> None:
    """Claude Code (thinking on) on a Gemini or reasoning-text model switches to Claude mid tool
    loop: the thinking block Stockyard made goes, and with it the turn no longer starts with a
    thinking block, so thinking is left off for that request (Anthropic would refuse it: 'a final
    assistant message must start with a thinking block'), as on the chat path."""
    from stockyard.providers.reasoning import pack

    model = f"claude-haiku-4-5-moved-{made_by}"
    if made_by == "gemini-signature":
        ours = {"type": "thinking", "thinking": "", "signature": pack({"thought_signatures": {"call_a1": "c2ln"}})}
    else:
        ours = {"type": "thinking", "thinking": "I should look it up.", "signature": ""}
    call = {"type": "tool_use", "id": "call_a1", "name": "get_weather", "input": {"city": "Paris"}}
    answer = native.messages.create(
        model=model,
        max_tokens=4000,
        thinking={"type": "enabled", "budget_tokens": 1024},
        tools=[{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}],
        messages=[
            *user("weather?"),
            {"role": "assistant", "content": [ours, call]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_a1", "content": "sunny"}]},
        ],
    )
    assert answer.content[-1].type == "text"
    body = sent(mock, model).json
    assert body["messages"][1]["content"] == [call] and "thinking" not in body


def test_native_packed_block_filter_is_not_fooled_by_a_json_escape(server, mock) -> None:
    """The same JSON written with an escape ("th\\u0069nking") still loses Stockyard's block."""
    from stockyard.providers.reasoning import pack

    model = "claude-haiku-4-5-escaped"
    signature = pack({"thought_signatures": {"call_1": "c2ln"}})
    raw = (
        '{"model": "%s", "max_tokens": 100, "tools": [{"name": "get_weather", "input_schema": {}}], "messages": ['
        '{"role": "user", "content": "weather?"},'
        '{"role": "assistant", "content": [{"type": "th\\u0069nking", "th\\u0069nking": "", "signature": "%s"},'
        '{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}]},'
        '{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}]}]}'
    ) % (model, signature)
    assert "\\u0069" in raw
    status, _, data = server.request(
        "POST", "/v1/messages", raw=raw.encode(), headers={"x-api-key": "x", "anthropic-version": "2023-06-01"}
    )
    assert status == 200, data
    assert signature not in json.dumps(sent(mock, model).json), "Stockyard's packed block went to Anthropic"


def test_chat_thinking_blocks_with_stockyards_packing_never_reach_anthropic(client, mock) -> None:
    """A chat ``thinking_blocks`` entry whose signature is Stockyard's packing is not Anthropic's:
    it stays behind (and thinking is left off, the turn having no thinking of its own)."""
    from stockyard.providers.reasoning import pack

    model = "claude-haiku-4-5-chat-packed"
    packed = {"type": "thinking", "thinking": "", "signature": pack({"thought_signatures": {"toolu_1": "c2ln"}})}
    call = {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    client.chat.completions.create(
        model=model,
        max_completion_tokens=8000,
        reasoning_effort="low",
        tools=TOOLS,
        messages=[
            *user("weather?"),
            {"role": "assistant", "content": None, "tool_calls": [call], "thinking_blocks": [packed]},  # type: ignore[typeddict-unknown-key]
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        ],
    )
    body = sent(mock, model).json
    assert packed["signature"] not in json.dumps(body) and "thinking" not in body


# --------------------------------------------------------------------------- thinking: the translator alone


def test_translator_puts_thinking_blocks_first_and_checks_the_loop() -> None:
    from stockyard.providers.anthropic import messages_request

    think = {"type": "thinking", "thinking": "t", "signature": "s", "index": 0}
    call = {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    loop = [
        *user("w?"),
        {"role": "assistant", "content": "Let me look.", "tool_calls": [call], "thinking_blocks": [think, {"x": 1}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sun"},
        # a second step without thinking (no interleaved thinking): the turn started with it, that counts
        {"role": "assistant", "content": None, "tool_calls": [{**call, "id": "toolu_2"}]},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "rain"},
    ]
    notes: list[str] = []
    body = messages_request({"messages": loop, "reasoning_effort": "low"}, "claude", False, 8000, notes)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048} and notes == []
    assert body["messages"][1]["content"][:2] == [
        {"type": "thinking", "thinking": "t", "signature": "s"},  # the stream's index stays behind
        {"type": "text", "text": "Let me look."},
    ]
    dropped = [loop[0], {**loop[1], "thinking_blocks": None}, *loop[2:]]
    body = messages_request({"messages": dropped, "reasoning_effort": "low"}, "claude", False, 8000, notes)
    assert "thinking" not in body and len(notes) == 1 and notes[0].startswith("thinking left off")
    # thinking off: the blocks stay behind (Anthropic refuses them in a final assistant message then)
    prefill = [*user("Hi"), {"role": "assistant", "content": "Hel", "thinking_blocks": [think]}]
    body = messages_request({"messages": prefill}, "claude", False, 8000)
    assert "thinking" not in body and body["messages"][-1]["content"] == [{"type": "text", "text": "Hel"}]


def stream_chunks(events: list[str]) -> list[dict]:
    from stockyard.context import RequestContext
    from stockyard.providers.anthropic import AnthropicToOpenAIStream

    translator = AnthropicToOpenAIStream(RequestContext("chat", "openai", "127.0.0.1", {}))
    out: list[bytes] = []
    for event in events:
        out += translator.feed(event.encode())
    return [json.loads(p) for p in sse_payloads(b"".join(out)) if p != "[DONE]"]


def test_stream_sends_each_thinking_block_whole_once_signed() -> None:
    def ev(index: int, delta: dict) -> str:
        return f"data: {json.dumps({'type': 'content_block_delta', 'index': index, 'delta': delta})}\n\n"

    def block(kind: str, index: int, content: dict | None = None) -> str:
        payload = {"type": kind, "index": index, **({"content_block": content} if content else {})}
        return f"data: {json.dumps(payload)}\n\n"

    events = [
        'data: {"type":"message_start","message":{"id":"m","model":"claude","usage":{"input_tokens":1}}}\n\n',
        block("content_block_start", 0, {"type": "thinking", "thinking": "", "signature": ""}),
        ev(0, {"type": "thinking_delta", "thinking": "Let me "}),
        ev(0, {"type": "thinking_delta", "thinking": "see."}),
        ev(0, {"type": "signature_delta", "signature": "sig-1"}),
        block("content_block_stop", 0),
        block("content_block_start", 1, {"type": "redacted_thinking", "data": "opaque"}),
        block("content_block_stop", 1),
        block("content_block_start", 2, {"type": "text", "text": ""}),
        ev(2, {"type": "text_delta", "text": "Hi"}),
        block("content_block_stop", 2),
    ]
    deltas = [c["choices"][0]["delta"] for c in stream_chunks(events)]
    assert [d.get("reasoning_content") for d in deltas if "reasoning_content" in d] == ["Let me ", "see."]
    assert [d["thinking_blocks"] for d in deltas if "thinking_blocks" in d] == [
        [{"index": 0, "type": "thinking", "thinking": "Let me see.", "signature": "sig-1"}],
        [{"index": 1, "type": "redacted_thinking", "data": "opaque"}],
    ]


class City(pydantic.BaseModel):
    city: str


@pytest.mark.parametrize("stream", [False, True])
def test_structured_outputs_go_as_output_config_and_parse(client, mock, stream) -> None:
    """``response_format`` json_schema is Anthropic's GA ``output_config.format`` (was the beta
    ``output_format`` with its header); the SDK's parse helpers read the JSON answer, streamed too."""
    model, ask = "claude-haiku-4-5-structured", [{"role": "user", "content": "Which city?"}]
    if stream:
        with client.chat.completions.stream(model=model, messages=ask, response_format=City) as events:
            parsed = events.get_final_completion().choices[0].message.parsed
    else:
        parsed = (
            client.chat.completions.parse(model=model, messages=ask, response_format=City).choices[0].message.parsed
        )
    assert parsed == City(city="Paris")
    body = sent(mock, model)
    assert body.json["output_config"]["format"]["type"] == "json_schema" and "output_format" not in body.json
    assert "structured-outputs" not in body.headers.get("anthropic-beta", "")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_stream_cut_before_its_output_count_is_billed_from_what_was_relayed(server, mock, path) -> None:
    """Claude's message_start counts the input and 1 output token; the output count comes in
    message_delta. A stream cut before it (here the provider's; a client leaving is the same) was
    billed one output token whatever it had relayed: now its output is estimated from the text
    relayed, as an answer without usage is, its input still the exact count."""
    model = "claude-haiku-4-5"  # priced: the estimate is a cost
    body = {"model": model, "max_tokens": 100, "stream": True, "messages": user("Say it")}
    events = anthropic_stream(body, 1, model)
    mock.enqueue(Reply(sse=events, cut_after=len(events) - 3))  # every text delta, no message_delta
    status, headers, answer = server.request("POST", path, body)
    assert status == 200
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["outcome"] == "stream_broken" and trace["prompt_tokens"] == 12  # message_start's, exact
    assert trace["completion_tokens"] == -(-len(TEXT) // 4) > 1  # the text relayed, four characters a token
    assert (trace["usage_estimated"], trace["cost_status"]) == (1, "estimate")


def test_a_whole_stream_is_billed_its_own_output_count(server, mock) -> None:
    model = "claude-haiku-4-5"
    body = {"model": model, "stream": True, "messages": user("Say it")}
    status, headers, _ = server.request("POST", "/v1/chat/completions", body)
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert status == 200 and (trace["usage_estimated"], trace["cost_status"]) == (0, "exact")


# --------------------------------------------------------------------------- OpenCode's prompt-caching marks

OPENCODE_CHAT = json.loads((Path(__file__).parent / "opencode_requests.json").read_text())["chat"]


@pytest.mark.parametrize("turn", ["first", "follow_up"])
def test_opencode_message_level_cache_marks_reach_claude(server, mock, turn) -> None:
    """OpenCode 1.18.33's ``@ai-sdk/openai-compatible`` provider marks a Claude model's prompt for
    caching LiteLLM's way: ``cache_control`` on the system message and the last two messages — on a
    tool message, and on an assistant message's tool call (tests/opencode_requests.json, as captured).
    Each mark goes on its message's last block (they were dropped: no prompt caching, every turn
    billed its whole ~10k-token prompt at the full input price)."""
    model = "claude-haiku-4-5-plain"
    body = {**OPENCODE_CHAT[turn], "tools": OPENCODE_CHAT["tools"], "model": model}
    headers = {**OPENCODE_CHAT["headers"], "Authorization": "Bearer x"}
    status, _, raw = server.request("POST", OPENCODE_CHAT["path"], body, headers=headers)
    assert status == 200, raw[:300]
    up = sent(mock, model).json
    mark = {"type": "ephemeral"}
    assert up["system"][-1]["cache_control"] == mark
    marked = [m["content"][-1].get("cache_control") for m in up["messages"]]
    if turn == "first":
        assert marked == [mark]  # the user's message
    else:  # the user's message (unmarked), the read call, its result
        assert marked == [None, mark, mark] and up["messages"][1]["content"][-1]["type"] == "tool_use"
        assert up["messages"][2]["content"][-1]["type"] == "tool_result"
    assert json.dumps(up).count("cache_control") == json.dumps(body).count("cache_control")


# --------------------------------------------------------------------------- a tool result's images and files

QWEN_MEDIA = json.loads((Path(__file__).parent / "qwen_code_requests.json").read_text())["chat_media"]


def test_qwen_code_tool_result_image_and_pdf_reach_claude(server, mock) -> None:
    """Qwen Code 0.15.10's chat request after ``read_file`` of a PNG, then of a PDF (tests/qwen_code_requests.json,
    as captured): each ``tool`` message's content is an ``image_url`` or a ``file`` part. They went to Claude
    as empty ``tool_result``s — the image and the PDF lost without a word. Each result now says what follows
    it, and the image and the document follow it in the same user turn."""
    model = "claude-haiku-4-5-plain"
    body = {**QWEN_MEDIA["body"], "model": model}
    headers = {**QWEN_MEDIA["headers"], "Authorization": "Bearer x"}
    status, _, raw = server.request("POST", QWEN_MEDIA["path"], body, headers=headers)
    assert status == 200, raw[:300]
    turns = sent(mock, model).json["messages"]
    image_turn, pdf_turn = turns[-3], turns[-1]
    assert [b["type"] for b in image_turn["content"]] == ["tool_result", "image"]
    assert image_turn["content"][0]["content"] == "(the result is the image that follows)"
    assert image_turn["content"][1]["source"]["media_type"] == "image/png"
    assert [b["type"] for b in pdf_turn["content"]] == ["tool_result", "document"]
    assert pdf_turn["content"][0]["content"] == "(the result is the attachment that follows)"
    assert (pdf_turn["content"][1]["source"]["media_type"], pdf_turn["content"][1]["title"]) == (
        "application/pdf",
        "doc.pdf",
    )


LITELLM_TOOL_MARKS = json.loads((Path(__file__).parent / "agent_library_requests.json").read_text())[
    "litellm_tool_marks"
]


def test_litellm_tool_definition_cache_marks_reach_claude(server, mock) -> None:
    """LiteLLM as a client (``openai/claude-…`` with Stockyard's ``/v1``) marks tool definitions for
    Claude's prompt caching, on the tool entry or on its function (as captured from LiteLLM 1.110.2,
    tests/agent_library_requests.json): the marks were dropped, so the tools were never cached. Each
    goes on its Claude tool; with marks of the client's own, a prompt_cache_key adds none."""
    model = "claude-haiku-4-5-tool-marks"
    body = {**LITELLM_TOOL_MARKS["body"], "model": model}
    headers = {**LITELLM_TOOL_MARKS["headers"], "Authorization": "Bearer x"}
    status, _, raw = server.request("POST", LITELLM_TOOL_MARKS["path"], body, headers=headers)
    assert status == 200, raw[:300]
    tools = sent(mock, model).json["tools"]
    assert [(t["name"], t.get("cache_control")) for t in tools] == [
        ("weather", {"type": "ephemeral"}),
        ("time", {"type": "ephemeral"}),
    ]
    status, _, raw = server.request(
        "POST", LITELLM_TOOL_MARKS["path"], {**body, "prompt_cache_key": "k"}, headers=headers
    )
    assert status == 200, raw[:300]
    assert json.dumps(sent(mock, model).json).count("cache_control") == 2

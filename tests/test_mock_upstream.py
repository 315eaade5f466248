"""Tests for the mock provider itself: framing, scripting, recording and SDK compatibility."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import wait_for  # noqa: E402
from mock_upstream import CODE_OUTPUT, THINKING_SIGNATURE, THINKING_TEXT, THOUGHT_SIGNATURE, MockUpstream, Reply  # noqa: E402


@pytest.fixture
def mock() -> Iterator[MockUpstream]:
    with MockUpstream() as server:
        yield server


def call(
    mock: MockUpstream,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[http.client.HTTPResponse, bytes, bool]:
    """Send one request; return the response, its body and whether the body was complete."""
    conn = conn or http.client.HTTPConnection("127.0.0.1", mock.port, timeout=10)
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    try:
        return resp, resp.read(), True
    except http.client.IncompleteRead as exc:
        return resp, exc.partial, False


def sse_data(raw: bytes) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    return [line[len("data: ") :] for line in raw.decode().split("\n") if line.startswith("data: ")]


def sse_events(raw: bytes) -> list[str]:
    return [line[len("event: ") :] for line in raw.decode().split("\n") if line.startswith("event: ")]


# --------------------------------------------------------------------------- OpenAI


def test_chat_json_reply_and_recording(mock: MockUpstream) -> None:
    resp, raw, complete = call(
        mock,
        "POST",
        "/v1/chat/completions?x=1",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        {"Authorization": "Bearer sk-up", "X-Custom": "yes"},
    )
    body = json.loads(raw)
    assert resp.status == 200 and complete
    assert resp.getheader("content-length") == str(len(raw))
    assert resp.getheader("x-request-id") == "req_mock_1"
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-mock")
    assert body["model"] == "gpt-4o-mini"
    assert body["choices"][0]["message"]["content"] == "Hello from mock"
    assert body["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    rec = mock.last("/chat/completions")
    assert rec.method == "POST" and rec.path == "/v1/chat/completions" and rec.query == {"x": "1"}
    assert rec.headers["authorization"] == "Bearer sk-up" and rec.headers["x-custom"] == "yes"
    assert rec.json["model"] == "gpt-4o-mini" and json.loads(rec.body) == rec.json


def test_stream_ends_with_done_and_usage_only_when_asked(mock: MockUpstream) -> None:
    resp, raw, complete = call(mock, "POST", "/v1/chat/completions", {"model": "m", "stream": True})
    assert complete and resp.getheader("transfer-encoding") == "chunked"
    assert resp.getheader("content-type").startswith("text/event-stream")
    payloads = sse_data(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all("usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello from mock"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    _, raw, _ = call(
        mock,
        "POST",
        "/v1/chat/completions",
        {"model": "m-cached-reasoning", "stream": True, "stream_options": {"include_usage": True}},
    )
    payloads = sse_data(raw)
    usage_chunk = json.loads(payloads[-2])
    assert payloads[-1] == "[DONE]" and usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"] == 8
    assert usage_chunk["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3


def test_stream_events_pads_default_streams_for_benchmarks() -> None:
    with MockUpstream(stream_events=20, sse_delay_ms=1) as paced:
        _, raw, complete = call(
            paced,
            "POST",
            "/v1/chat/completions",
            {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
        )
    payloads = sse_data(raw)
    assert complete and len(payloads) == 20 and payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello" * 14 + " from mock" and chunks[-1]["usage"]["completion_tokens"] == 5


def test_no_usage_model_and_magic_errors(mock: MockUpstream) -> None:
    _, raw, _ = call(
        mock,
        "POST",
        "/v1/chat/completions",
        {"model": "mock-no-usage", "stream": True, "stream_options": {"include_usage": True}},
    )
    assert all("usage" not in json.loads(p) for p in sse_data(raw)[:-1])
    _, raw, _ = call(mock, "POST", "/v1/chat/completions", {"model": "mock-no-usage"})
    assert "usage" not in json.loads(raw)

    resp, raw, _ = call(mock, "POST", "/v1/chat/completions", {"model": "mock-error-429"})
    assert resp.status == 429 and resp.getheader("retry-after") == "1"
    assert json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
    resp, raw, _ = call(mock, "POST", "/v1/chat/completions", {"model": "mock-error-400"})
    assert resp.status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"
    resp, raw, _ = call(mock, "POST", "/v1/chat/completions", b"{not json")
    assert resp.status == 400
    resp, raw, _ = call(mock, "GET", "/nope")
    assert resp.status == 404 and "error" in json.loads(raw)


def test_tool_calls_plain_and_streamed(mock: MockUpstream) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    _, raw, _ = call(mock, "POST", "/v1/chat/completions", {"model": "m", "tools": tools})
    choice = json.loads(raw)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    fn = choice["message"]["tool_calls"][0]["function"]
    assert fn["name"] == "get_weather" and json.loads(fn["arguments"]) == {"city": "Paris"}

    _, raw, _ = call(mock, "POST", "/v1/chat/completions", {"model": "m", "tools": tools, "stream": True})
    chunks = [json.loads(p) for p in sse_data(raw)[:-1]]
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"] == "call_mock1"
    assert json.loads("".join(tc["function"]["arguments"] for tc in calls)) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_choice_none_answers_in_text(mock: MockUpstream) -> None:
    """As the providers do: with tools defined but calls forbidden (each API's spelling), the model writes text."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    _, raw, _ = call(mock, "POST", "/v1/chat/completions", {"model": "m", "tools": tools, "tool_choice": "none"})
    assert json.loads(raw)["choices"][0]["message"]["content"] == "Hello from mock"
    claude = {"model": "claude-x", "max_tokens": 10, "tools": [{"name": "w", "input_schema": {}}]}
    _, raw, _ = call(mock, "POST", "/v1/messages", {**claude, "tool_choice": {"type": "none"}})
    assert [b["type"] for b in json.loads(raw)["content"]] == ["text"]
    gemini = {"contents": [], "tools": [{"functionDeclarations": [{"name": "w"}]}]}
    none = {"functionCallingConfig": {"mode": "NONE"}}
    _, raw, _ = call(mock, "POST", "/v1beta/models/g:generateContent", {**gemini, "toolConfig": none})
    assert json.loads(raw)["candidates"][0]["content"]["parts"] == [{"text": "Hello from mock"}]


def test_completions_embeddings_models(mock: MockUpstream) -> None:
    _, raw, _ = call(mock, "POST", "/v1/completions", {"model": "m", "prompt": "x"})
    assert json.loads(raw)["choices"][0]["text"] == "Hello from mock"
    _, raw, _ = call(mock, "POST", "/v1/completions", {"model": "m", "prompt": "x", "stream": True})
    assert sse_data(raw)[-1] == "[DONE]"
    _, raw, _ = call(mock, "POST", "/v1/embeddings", {"model": "e", "input": ["a", "b c"]})
    body = json.loads(raw)
    assert [len(d["embedding"]) for d in body["data"]] == [8, 8] and body["usage"]["prompt_tokens"] == 3
    _, raw, _ = call(mock, "GET", "/v1/models")
    assert [m["id"] for m in json.loads(raw)["data"]] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    _, raw, _ = call(mock, "GET", "/v1/models", headers={"anthropic-version": "2023-06-01"})
    listed = json.loads(raw)
    assert listed["data"][0] == {
        "type": "model",
        "id": "gpt-4o-mini",
        "display_name": "Mock GPT-4O-MINI",
        "created_at": "2023-11-15T22:13:20Z",
    }
    assert (listed["has_more"], listed["last_id"]) == (False, "claude-sonnet-4-5-20250929")  # dated snapshots last


# --------------------------------------------------------------------------- scripting


def test_enqueue_is_fifo_then_defaults(mock: MockUpstream) -> None:
    mock.enqueue(
        Reply(status=429, headers={"retry-after": "2"}),
        Reply(json={"custom": 1}, headers={"x-extra": "y"}),
        Reply(status=502, body=b"<html>bad gateway</html>", headers={"content-type": "text/html"}),
    )
    resp, raw, _ = call(mock, "POST", "/v1/messages", {"model": "claude-x"})
    assert resp.status == 429 and resp.getheader("retry-after") == "2"
    assert json.loads(raw)["error"]["type"] == "rate_limit_error"  # Anthropic dialect
    resp, raw, _ = call(mock, "POST", "/v1/chat/completions", {"model": "m"})
    assert json.loads(raw) == {"custom": 1} and resp.getheader("x-extra") == "y"
    resp, raw, _ = call(mock, "POST", "/v1/chat/completions", {"model": "m"})
    assert resp.status == 502 and raw == b"<html>bad gateway</html>"
    resp, raw, _ = call(mock, "POST", "/v1/chat/completions", {"model": "m"})
    assert resp.status == 200 and json.loads(raw)["object"] == "chat.completion"
    assert mock.pending() == 0 and len(mock.requests) == 4


def test_cut_after_closes_without_terminating_chunk(mock: MockUpstream) -> None:
    mock.enqueue(Reply(cut_after=2))  # default stream, cut after two events
    resp, raw, complete = call(mock, "POST", "/v1/chat/completions", {"model": "m", "stream": True})
    assert resp.status == 200 and not complete
    assert len(sse_data(raw)) == 2 and "[DONE]" not in raw.decode()

    mock.enqueue(Reply(sse=["a", "b", "[DONE]"], sse_delay_ms=5))
    _, raw, complete = call(mock, "POST", "/v1/chat/completions", {"model": "m", "stream": True})
    assert complete and sse_data(raw) == ["a", "b", "[DONE]"]

    mock.enqueue(Reply(json={"k": "v" * 100}, cut_after=10))
    resp, raw, complete = call(mock, "POST", "/v1/chat/completions", {"model": "m"})
    assert resp.status == 200 and not complete and len(raw) == 10


def test_reset_and_hang(mock: MockUpstream) -> None:
    mock.enqueue(Reply(reset=True))
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        call(mock, "POST", "/v1/chat/completions", {"model": "m"})

    mock.enqueue(Reply(hang_s=0.2))
    started = time.monotonic()
    resp, _, _ = call(mock, "POST", "/v1/chat/completions", {"model": "m"})
    assert resp.status == 200 and time.monotonic() - started >= 0.2

    hanging = threading.Event()
    mock.enqueue(Reply(hang_s=30, hang_started=hanging))
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _expect_error(mock, errors))
    thread.start()
    assert hanging.wait(5), "the request reached the mock"
    started = time.monotonic()
    mock.stop()
    thread.join(5)
    assert time.monotonic() - started < 3 and errors


def _expect_error(mock: MockUpstream, errors: list[BaseException]) -> None:
    try:
        call(mock, "POST", "/v1/chat/completions", {"model": "m"})
    except (http.client.HTTPException, OSError) as exc:
        errors.append(exc)


def test_keep_alive_and_delay() -> None:
    with MockUpstream(delay_ms=30) as mock:
        conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=10)
        started = time.monotonic()
        for _ in range(3):
            resp, _, _ = call(mock, "POST", "/v1/chat/completions", {"model": "m"}, conn=conn)
            assert resp.status == 200
        assert time.monotonic() - started >= 0.09
        mock.delay_ms = 0
        _, raw, _ = call(mock, "POST", "/v1/chat/completions", {"model": "m", "stream": True}, conn=conn)
        assert sse_data(raw)[-1] == "[DONE]"


def test_client_disconnect_is_quiet(mock: MockUpstream, capfd: pytest.CaptureFixture[str]) -> None:
    mock.enqueue(Reply(sse=[f"event {i}" for i in range(50)], sse_delay_ms=10))
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=b'{"model": "m", "stream": true}')
    resp = conn.getresponse()
    assert resp.read1(100).startswith(b"data: event 0")
    conn.sock.close()
    resp.close()
    wait_for(lambda: mock.open_connections() == 0, 5, "the mock to notice the client left")
    mock.clear()
    resp, _, _ = call(mock, "POST", "/v1/chat/completions", {"model": "m"})
    assert resp.status == 200 and len(mock.requests) == 1
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


# --------------------------------------------------------------------------- Anthropic, Gemini, Azure


def test_anthropic_message_and_stream_order(mock: MockUpstream) -> None:
    ask = {"model": "claude-x", "max_tokens": 10}
    resp, raw, _ = call(mock, "POST", "/v1/messages", ask, headers={"anthropic-version": "2023-06-01"})
    body = json.loads(raw)
    assert resp.getheader("request-id").startswith("req_mock_") and resp.getheader("x-request-id") is None
    assert body["type"] == "message" and body["content"] == [{"type": "text", "text": "Hello from mock"}]
    assert body["usage"]["input_tokens"] == 12 and body["stop_reason"] == "end_turn"

    _, raw, complete = call(mock, "POST", "/v1/messages", {"model": "claude-x", "stream": True})
    assert complete and sse_events(raw) == [
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
    delta = json.loads(sse_data(raw)[-2])
    assert delta["usage"]["output_tokens"] == 5 and delta["delta"]["stop_reason"] == "end_turn"

    _, raw, _ = call(mock, "POST", "/v1/messages", {"model": "m", "tools": [{"name": "get_weather"}]})
    block = json.loads(raw)["content"][0]
    assert block == {"type": "tool_use", "id": "toolu_mock1", "name": "get_weather", "input": {"city": "Paris"}}
    _, raw, _ = call(mock, "POST", "/v1/messages/count_tokens", {"model": "m", "messages": []})
    assert json.loads(raw) == {"input_tokens": 12}
    resp, raw, _ = call(mock, "POST", "/v1/messages", {"model": "claude-error-529"})
    assert resp.status == 529 and json.loads(raw) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "overloaded_error (mock)"},
    }


def test_gemini_json_sse_and_errors(mock: MockUpstream) -> None:
    path = "/v1beta/models/gemini-2.0-flash"
    _, raw, _ = call(mock, "POST", f"{path}:generateContent", {"contents": []})
    body = json.loads(raw)
    assert body["candidates"][0]["content"]["parts"] == [{"text": "Hello from mock"}]
    assert body["usageMetadata"] == {"promptTokenCount": 12, "candidatesTokenCount": 5, "totalTokenCount": 17}

    _, raw, complete = call(mock, "POST", f"{path}:streamGenerateContent?alt=sse", {"contents": []})
    chunks = [json.loads(p) for p in sse_data(raw)]
    assert complete and len(chunks) == 3
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == "Hello from mock"
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"]["totalTokenCount"] == 17

    tools = [{"functionDeclarations": [{"name": "get_weather"}]}]
    _, raw, _ = call(mock, "POST", f"{path}:generateContent", {"contents": [], "tools": tools})
    part = json.loads(raw)["candidates"][0]["content"]["parts"][0]
    assert part == {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}

    resp, raw, _ = call(mock, "POST", "/v1beta/models/gemini-error-429:generateContent", {"contents": []})
    assert resp.status == 429 and json.loads(raw)["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_anthropic_thinks_and_wants_its_thinking_back(mock: MockUpstream) -> None:
    """With thinking on, answers start with a signed thinking block (streamed: thinking_delta, then
    signature_delta); a tool loop sent back without it is Anthropic's 400."""
    thinking = {"type": "enabled", "budget_tokens": 1024}
    ask = {"model": "claude-x", "max_tokens": 2000, "thinking": thinking, "tools": [{"name": "get_weather"}]}
    _, raw, _ = call(mock, "POST", "/v1/messages", {**ask, "messages": [{"role": "user", "content": "w?"}]})
    content = json.loads(raw)["content"]
    assert [b["type"] for b in content] == ["thinking", "tool_use"]
    assert content[0] == {"type": "thinking", "thinking": THINKING_TEXT, "signature": THINKING_SIGNATURE}

    _, raw, _ = call(
        mock, "POST", "/v1/messages", {**ask, "stream": True, "messages": [{"role": "user", "content": "w"}]}
    )
    deltas = [json.loads(p)["delta"] for p in sse_data(raw) if '"content_block_delta"' in p]
    assert deltas[:2] == [
        {"type": "thinking_delta", "thinking": THINKING_TEXT},
        {"type": "signature_delta", "signature": THINKING_SIGNATURE},
    ]

    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_mock1", "content": "sun"}]}
    history = [{"role": "user", "content": "w?"}, {"role": "assistant", "content": content}, result]
    resp, raw, _ = call(mock, "POST", "/v1/messages", {**ask, "messages": history})
    assert resp.status == 200 and json.loads(raw)["content"][-1]["type"] == "text"

    dropped = [history[0], {"role": "assistant", "content": content[1:]}, result]
    for body in ({**ask, "messages": dropped}, {**ask, "stream": True, "messages": dropped}):
        mock.enqueue(Reply(json={"scripted": "never sent: the request is refused first"}))
        resp, raw, _ = call(mock, "POST", "/v1/messages", body)
        error = json.loads(raw)
        assert resp.status == 400 and error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert error["error"]["message"].startswith(
            "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`."
        )
    # thinking off, or a new user turn: nothing is required
    off = {k: v for k, v in ask.items() if k != "thinking"}
    assert call(mock, "POST", "/v1/messages", {**off, "messages": dropped})[0].status == 200
    fresh = [*dropped, {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "Thanks"}]
    assert call(mock, "POST", "/v1/messages", {**ask, "messages": fresh})[0].status == 200


def test_gemini_3_signs_function_calls_and_wants_the_signature_back(mock: MockUpstream) -> None:
    """A gemini-3* functionCall carries a thoughtSignature (scripted ones are remembered too);
    the same call sent back without it is Google's 400 INVALID_ARGUMENT."""
    path = "/v1beta/models/gemini-3-pro-preview:generateContent"
    tools = [{"functionDeclarations": [{"name": "get_weather"}]}]
    ask = {"role": "user", "parts": [{"text": "w?"}]}
    _, raw, _ = call(mock, "POST", path, {"contents": [ask], "tools": tools})
    part = json.loads(raw)["candidates"][0]["content"]["parts"][0]
    assert part["thoughtSignature"] == THOUGHT_SIGNATURE

    result = {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "sun"}}}]}
    signed = {"contents": [ask, {"role": "model", "parts": [part]}, result], "tools": tools}
    assert call(mock, "POST", path, signed)[0].status == 200
    bare = {"functionCall": part["functionCall"]}
    resp, raw, _ = call(mock, "POST", path, {"contents": [ask, {"role": "model", "parts": [bare]}, result]})
    error = json.loads(raw)["error"]
    assert resp.status == 400 and (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["message"].startswith("Function call is missing a thought_signature in functionCall parts.")
    # a model before Gemini 3 never asks for one
    old = "/v1beta/models/gemini-2.5-flash:generateContent"
    assert call(mock, "POST", old, {"contents": [ask, {"role": "model", "parts": [bare]}, result]})[0].status == 200

    scripted = {"functionCall": {"name": "lookup", "args": {"q": 1}}, "thoughtSignature": "c2NyaXB0ZWQ="}
    mock.enqueue(Reply(json={"candidates": [{"content": {"role": "model", "parts": [scripted]}, "index": 0}]}))
    call(mock, "POST", path, {"contents": [ask]})
    history = [ask, {"role": "model", "parts": [{"functionCall": scripted["functionCall"]}]}, result]
    assert call(mock, "POST", path, {"contents": history})[0].status == 400


def test_gemini_native_methods_and_models(mock: MockUpstream) -> None:
    path = "/v1beta/models/gemini-2.5-flash"
    _, raw, complete = call(mock, "POST", f"{path}:streamGenerateContent", {"contents": []})
    assert complete and raw.startswith(b"[{\n") and raw.count(b"\n,\r\n") == 2 and raw.endswith(b"}\n]")
    assert len(json.loads(raw)) == 3
    _, raw, _ = call(mock, "POST", f"{path}:countTokens", {"contents": []})
    assert json.loads(raw)["totalTokens"] == 12
    resp, raw, _ = call(mock, "POST", f"{path}:countTokens", {"generateContentRequest": {"cachedContent": "c/1"}})
    assert resp.status == 404 and json.loads(raw)["error"]["status"] == "NOT_FOUND"  # no such cache
    _, raw, _ = call(mock, "POST", f"{path}:embedContent", {"content": {"parts": [{"text": "a"}]}})
    assert len(json.loads(raw)["embedding"]["values"]) == 8
    _, raw, _ = call(mock, "GET", "/v1beta/models?pageSize=2")
    page = json.loads(raw)
    assert [m["name"] for m in page["models"]] == ["models/gemini-2.5-flash", "models/gemini-2.5-pro"]
    _, raw, _ = call(mock, "GET", f"/v1beta/models?pageSize=2&pageToken={page['nextPageToken']}")
    assert [m["name"] for m in json.loads(raw)["models"]] == ["models/gemini-embedding-001"]
    _, raw, _ = call(mock, "GET", path)
    assert json.loads(raw)["supportedGenerationMethods"][0] == "generateContent"
    resp, raw, _ = call(mock, "GET", "/v1beta/models/no-such-model")
    assert resp.status == 404 and json.loads(raw)["error"]["status"] == "NOT_FOUND"


def test_gemini_cached_contents(mock: MockUpstream) -> None:
    """Explicit context caches: create, list (paged), get, patch, delete; a generateContent or
    countTokens naming one reports its tokens, one naming an unknown cache is a 404."""
    body = {"model": "models/gemini-2.5-flash", "contents": [{"role": "user", "parts": [{"text": "long"}]}]}
    resp, raw, _ = call(mock, "POST", "/v1beta/cachedContents", {**body, "displayName": "doc", "ttl": "60s"})
    made = json.loads(raw)
    assert resp.status == 200 and made["name"].startswith("cachedContents/") and made["displayName"] == "doc"
    assert made["model"] == "models/gemini-2.5-flash" and made["usageMetadata"]["totalTokenCount"] == 8
    assert "contents" not in made
    resp, raw, _ = call(mock, "POST", "/v1beta/cachedContents", {"contents": []})
    assert resp.status == 400 and json.loads(raw)["error"]["status"] == "INVALID_ARGUMENT"
    other = json.loads(call(mock, "POST", "/v1beta/cachedContents", body)[1])
    page = json.loads(call(mock, "GET", "/v1beta/cachedContents?pageSize=1")[1])
    assert len(page["cachedContents"]) == 1 and page["nextPageToken"]
    listed = json.loads(call(mock, "GET", f"/v1beta/cachedContents?pageToken={page['nextPageToken']}")[1])
    names = [c["name"] for c in page["cachedContents"] + listed["cachedContents"]]
    assert made["name"] in names and other["name"] in names
    assert json.loads(call(mock, "GET", f"/v1beta/{made['name']}")[1]) == made
    patched = json.loads(call(mock, "PATCH", f"/v1beta/{made['name']}?updateMask=ttl", {"ttl": "7200s"})[1])
    assert patched["expireTime"] != made["expireTime"]
    path = "/v1beta/models/gemini-2.5-flash"
    asked = {"contents": [{"role": "user", "parts": [{"text": "q"}]}], "cachedContent": made["name"]}
    resp, raw, _ = call(mock, "POST", f"{path}:generateContent", asked)
    assert resp.status == 200 and json.loads(raw)["usageMetadata"]["cachedContentTokenCount"] == 8
    _, raw, _ = call(mock, "POST", f"{path}:streamGenerateContent?alt=sse", asked)
    assert b'"cachedContentTokenCount": 8' in raw or b'"cachedContentTokenCount":8' in raw
    _, raw, _ = call(mock, "POST", f"{path}:countTokens", {"generateContentRequest": {**asked, "model": "m"}})
    assert json.loads(raw)["cachedContentTokenCount"] == 8
    assert call(mock, "DELETE", f"/v1beta/{made['name']}")[0].status == 200
    for method, where, sent in (
        ("GET", f"/v1beta/{made['name']}", None),
        ("POST", f"{path}:generateContent", asked),
    ):
        resp, raw, _ = call(mock, method, where, sent)
        assert resp.status == 404 and json.loads(raw)["error"]["status"] == "NOT_FOUND"


def test_azure_needs_api_version(mock: MockUpstream) -> None:
    path = "/openai/deployments/my-dep/chat/completions"
    resp, _, _ = call(mock, "POST", path, {"messages": []})
    assert resp.status == 404
    resp, raw, _ = call(mock, "POST", path + "?api-version=2024-10-21", {"messages": []}, {"api-key": "azure-secret"})
    assert resp.status == 200 and json.loads(raw)["model"] == "my-dep"
    assert mock.last("deployments").headers["api-key"] == "azure-secret"
    resp, raw, _ = call(mock, "POST", "/openai/deployments/d/embeddings?api-version=1", {"input": "x"})
    assert len(json.loads(raw)["data"][0]["embedding"]) == 8


# --------------------------------------------------------------------------- official SDKs


def test_openai_sdk_speaks_to_mock(mock: MockUpstream) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)
    done = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert done.choices[0].message.content == "Hello from mock" and done.usage.total_tokens == 17

    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        stream=True,
        messages=[{"role": "user", "content": "hi"}],
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from mock"
    assert chunks[-1].usage.completion_tokens == 5
    assert mock.last().headers["authorization"] == "Bearer x"

    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [len(d.embedding) for d in emb.data] == [8, 8]
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="mock-error-429", messages=[])


def test_openai_sdk_speaks_containers_to_mock(mock: MockUpstream) -> None:
    """The Containers API in OpenAI's wire shapes, and the code interpreter of /v1/responses: a
    ``code_interpreter_call`` naming its container (a new one for ``auto``), then a message citing
    the file the code wrote (``container_file_citation``), streamed too."""
    openai = pytest.importorskip("openai")
    from mock_upstream import CHART

    client = openai.OpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)
    uploaded = client.files.create(file=("data.csv", b"a,b\n"), purpose="user_data")
    made = client.containers.create(name="work", file_ids=[uploaded.id], memory_limit="4g")
    assert made.id.startswith("cntr_") and made.object == "container" and made.memory_limit == "4g"
    assert client.containers.retrieve(made.id).name == "work"
    assert made.id in [c.id for c in client.containers.list(limit=100)]
    copied = client.containers.files.list(made.id).data
    assert [(f.path, f.source, f.bytes) for f in copied] == [("/mnt/data/data.csv", "user", 4)]
    sent = client.containers.files.create(made.id, file=("notes.txt", b"hello"))
    assert sent.object == "container.file" and sent.container_id == made.id
    by_id = client.containers.files.create(made.id, file_id=uploaded.id)
    assert client.containers.files.retrieve(by_id.id, container_id=made.id).path == "/mnt/data/data.csv"
    assert client.containers.files.content.retrieve(sent.id, container_id=made.id).read() == b"hello"
    client.containers.files.delete(sent.id, container_id=made.id)
    with pytest.raises(openai.NotFoundError):
        client.containers.files.retrieve(sent.id, container_id=made.id)

    named = client.responses.create(
        model="gpt-4o-mini", input="plot", tools=[{"type": "code_interpreter", "container": made.id}]
    )
    ran, message = named.output
    assert ran.type == "code_interpreter_call" and ran.container_id == made.id
    cited = message.content[0].annotations[0]
    assert cited.type == "container_file_citation" and cited.container_id == made.id
    assert client.containers.files.content.retrieve(cited.file_id, container_id=made.id).read() == CHART[1]

    auto = [{"type": "code_interpreter", "container": {"type": "auto"}}]
    stream = client.responses.create(model="gpt-4o-mini", input="plot", stream=True, tools=auto)
    events = list(stream)
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert done[0].type == "code_interpreter_call" and done[0].container_id not in (made.id, None)
    added = [e.annotation for e in events if e.type == "response.output_text.annotation.added"]
    assert added[0].container_id == done[0].container_id
    assert events[-1].response.output[1].content[0].annotations[0].file_id == added[0].file_id
    assert client.containers.retrieve(done[0].container_id).status == "running"

    with pytest.raises(openai.NotFoundError):
        client.responses.create(
            model="gpt-4o-mini", input="plot", tools=[{"type": "code_interpreter", "container": "cntr_none"}]
        )
    client.containers.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        client.containers.retrieve(made.id)


def test_openai_sdk_reads_the_mocks_search_calls(mock: MockUpstream) -> None:
    """A request offering a search tool is answered with the calls its metadata asks for
    (``mock_web_searches`` / ``mock_file_searches``) before the message, streamed too; none
    without the tool, whatever the metadata says."""
    openai = pytest.importorskip("openai")

    client = openai.OpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)
    tools = [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_x"]}]
    asked = {"mock_web_searches": "3", "mock_file_searches": "2"}
    answer = client.responses.create(model="gpt-4o-mini", input="cats", tools=tools, metadata=asked)
    assert [item.type for item in answer.output] == [*["web_search_call"] * 3, *["file_search_call"] * 2, "message"]
    assert answer.output[0].action.type == "search" and answer.output[3].queries == ["cats"]
    events = list(client.responses.create(model="gpt-4o-mini", input="cats", tools=tools, metadata=asked, stream=True))
    done = [e.item.type for e in events if e.type == "response.output_item.done"]
    assert done == [item.type for item in answer.output]
    assert sum(e.type == "response.web_search_call.searching" for e in events) == 3
    assert sum(e.type == "response.file_search_call.completed" for e in events) == 2
    plain = client.responses.create(model="gpt-4o-mini", input="cats", metadata=asked)
    assert [item.type for item in plain.output] == ["message"]


def test_openai_sdk_speaks_vector_stores_to_mock(mock: MockUpstream) -> None:
    """The Vector Stores API in OpenAI's wire shapes: stores, their files (by Files API id, with
    attributes), search over the files' text, file batches that complete when retrieved or cancel."""
    openai = pytest.importorskip("openai")

    client = openai.OpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)
    doc = client.files.create(file=("cows.txt", b"cows eat grass"), purpose="assistants")
    other = client.files.create(file=("sky.txt", b"the sky is blue"), purpose="assistants")
    store = client.vector_stores.create(name="farm", file_ids=[doc.id], metadata={"team": "a"})
    assert store.id.startswith("vs_") and store.object == "vector_store" and store.file_counts.completed == 1
    assert mock.last().headers["openai-beta"] == "assistants=v2"
    assert client.vector_stores.update(store.id, name="barn").name == "barn"
    assert client.vector_stores.retrieve(store.id).name == "barn"
    assert store.id in [v.id for v in client.vector_stores.list(limit=100)]
    found = client.vector_stores.search(store.id, query="grass").data
    assert [(r.file_id, r.filename, r.content[0].text) for r in found] == [(doc.id, "cows.txt", "cows eat grass")]

    added = client.vector_stores.files.create(store.id, file_id=other.id, attributes={"kind": "sky"})
    assert added.object == "vector_store.file" and added.status == "completed" and added.attributes == {"kind": "sky"}
    assert {f.id for f in client.vector_stores.files.list(store.id)} == {doc.id, other.id}
    changed = client.vector_stores.files.update(other.id, vector_store_id=store.id, attributes={"kind": "air"})
    assert changed.attributes == {"kind": "air"}
    assert client.vector_stores.files.retrieve(other.id, vector_store_id=store.id).attributes == {"kind": "air"}
    text = [c.text for c in client.vector_stores.files.content(other.id, vector_store_id=store.id)]
    assert text == ["the sky is blue"]
    assert client.vector_stores.files.delete(other.id, vector_store_id=store.id).deleted

    batch = client.vector_stores.file_batches.create(store.id, files=[{"file_id": other.id}])
    assert batch.object == "vector_store.files_batch" and batch.status == "in_progress"
    assert [f.id for f in client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id)] == [
        other.id
    ]
    assert client.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id).status == "completed"
    later = client.vector_stores.file_batches.create(store.id, file_ids=[doc.id])
    assert client.vector_stores.file_batches.cancel(later.id, vector_store_id=store.id).status == "cancelled"

    assert client.vector_stores.delete(store.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(store.id)


def test_anthropic_sdk_speaks_to_mock(mock: MockUpstream) -> None:
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=mock.url, api_key="x", max_retries=0)
    msg = client.messages.create(model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "Hello from mock" and msg.usage.output_tokens == 5
    sent = mock.last().headers
    assert sent.get("x-api-key") == "x" or sent.get("authorization") == "Bearer x"

    with client.messages.stream(
        model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        assert "".join(stream.text_stream) == "Hello from mock"
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5

    with client.messages.stream(
        model="claude-x",
        max_tokens=10,
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
        messages=[{"role": "user", "content": "hi"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].input == {"city": "Paris"} and final.stop_reason == "tool_use"
    with pytest.raises(anthropic.APIStatusError) as failure:
        client.messages.create(model="claude-error-529", max_tokens=1, messages=[])
    assert failure.value.status_code == 529


def test_anthropic_sdk_speaks_files_to_mock(mock: MockUpstream) -> None:
    """Anthropic's Files API (beta) on the path OpenAI's files share, told apart by anthropic-version:
    upload, list, retrieve, a message naming the file (an unknown one is a 404), the code execution
    tool writing a downloadable file (an upload is not downloadable), delete."""
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=mock.url, api_key="x", max_retries=0)
    beta = {"anthropic-beta": "files-api-2025-04-14"}
    with pytest.raises(anthropic.BadRequestError):  # the beta header is required, as Anthropic requires it
        client.beta.files.upload(file=("a.txt", b"plain words", "text/plain"))
    uploaded = client.beta.files.upload(file=("a.txt", b"plain words", "text/plain"), extra_headers=beta)
    assert uploaded.id.startswith("file_") and uploaded.size_bytes == 11 and uploaded.downloadable is False
    openai_files = call(mock, "GET", "/v1/files")[1]
    assert uploaded.id.encode() not in openai_files  # OpenAI's files are another store
    listed = client.beta.files.list(extra_headers=beta, extra_query={"limit": 100})
    assert uploaded.id in [f.id for f in listed.data]
    assert client.beta.files.retrieve_metadata(uploaded.id, extra_headers=beta).filename == "a.txt"
    with pytest.raises(anthropic.BadRequestError):
        client.beta.files.download(uploaded.id, extra_headers=beta)

    document = {"type": "document", "source": {"type": "file", "file_id": uploaded.id}}
    ask = [{"role": "user", "content": [document, {"type": "text", "text": "and?"}]}]
    assert client.messages.create(model="claude-x", max_tokens=10, messages=ask).content[0].text
    missing = {"type": "document", "source": {"type": "file", "file_id": "file_011nosuch"}}
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-x", max_tokens=10, messages=[{"role": "user", "content": [missing]}])
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="claude-x", messages=[{"role": "user", "content": [missing]}])

    tool = {"type": "code_execution_20250825", "name": "code_execution"}
    upload = {"type": "container_upload", "file_id": uploaded.id}
    made = client.messages.create(
        model="claude-x", max_tokens=10, tools=[tool], messages=[{"role": "user", "content": [upload]}]
    )
    result = next(b for b in made.content if b.type == "bash_code_execution_tool_result")
    written = result.content.content[0].file_id
    assert client.beta.files.download(written, extra_headers=beta).read() == CODE_OUTPUT
    with client.messages.stream(model="claude-x", max_tokens=10, tools=[tool], messages=ask) as stream:
        final = stream.get_final_message()
    streamed = next(b for b in final.content if b.type == "bash_code_execution_tool_result").content.content[0].file_id
    assert streamed != written and client.beta.files.retrieve_metadata(streamed, extra_headers=beta).downloadable

    assert client.beta.files.delete(uploaded.id, extra_headers=beta).type == "file_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.beta.files.retrieve_metadata(uploaded.id, extra_headers=beta)


def test_anthropic_code_execution_runs_in_a_container_the_answer_names(mock: MockUpstream) -> None:
    """The code execution tool's answer names its container (a new one, or the one sent back by id
    or as the Skills API's ``{"id": …}``), streamed in ``message_delta``; an unknown one is a 404, in
    a token count and a batch's result too."""
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=mock.url, api_key="x", max_retries=0)
    tool = {"type": "code_execution_20250825", "name": "code_execution"}
    ask = [{"role": "user", "content": "make a csv"}]
    first = client.messages.create(model="claude-x", max_tokens=10, tools=[tool], messages=ask)
    assert first.container is not None and first.container.id.startswith("container_")
    again = client.messages.create(model="claude-x", max_tokens=10, tools=[tool], messages=ask)
    assert again.container.id != first.container.id  # none named: a new one
    reused = client.messages.create(
        model="claude-x", max_tokens=10, tools=[tool], messages=ask, container=first.container.id
    )
    assert reused.container.id == first.container.id
    skills = client.messages.create(
        model="claude-x", max_tokens=10, tools=[tool], messages=ask, container={"id": first.container.id}
    )
    assert skills.container.id == first.container.id
    with client.messages.stream(
        model="claude-x", max_tokens=10, tools=[tool], messages=ask, container=first.container.id
    ) as stream:
        assert stream.get_final_message().container.id == first.container.id
    assert client.messages.create(model="claude-x", max_tokens=10, messages=ask).container is None  # no tool
    for attempt in (
        lambda: client.messages.create(model="claude-x", max_tokens=10, tools=[tool], messages=ask, container="c_no"),
        lambda: client.messages.count_tokens(model="claude-x", messages=ask, extra_body={"container": {"id": "c_no"}}),
    ):
        with pytest.raises(anthropic.NotFoundError):
            attempt()
    params = {"model": "claude-x", "max_tokens": 10, "tools": [tool], "messages": ask, "container": "c_no"}
    batch = client.messages.batches.create(requests=[{"custom_id": "one", "params": params}])
    assert client.messages.batches.retrieve(batch.id).processing_status == "ended"  # ends when looked at
    (result,) = list(client.messages.batches.results(batch.id))
    assert result.result.type == "errored" and result.result.error.error.type == "not_found_error"


def test_anthropic_code_execution_shapes_follow_the_tool_version_in_batch_results_too(mock: MockUpstream) -> None:
    """``code_execution_20250825`` answers with a ``bash_code_execution`` call and its
    ``bash_code_execution_tool_result`` (a ``bash_code_execution_output`` naming the file written),
    the legacy ``code_execution_20250522`` with ``code_execution_tool_result``; a message batch's
    succeeded result carries the same blocks and its ``container``, as the SDK reads them."""
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=mock.url, api_key="x", max_retries=0)
    ask = [{"role": "user", "content": "make a csv"}]
    legacy = {"type": "code_execution_20250522", "name": "code_execution"}
    old = client.messages.create(model="claude-x", max_tokens=10, tools=[legacy], messages=ask)
    assert [b.type for b in old.content] == ["server_tool_use", "code_execution_tool_result", "text"]
    assert old.content[1].content.content[0].type == "code_execution_output"
    tool = {"type": "code_execution_20250825", "name": "code_execution"}
    params = {"model": "claude-x", "max_tokens": 10, "tools": [tool], "messages": ask}
    batch = client.messages.batches.create(requests=[{"custom_id": "one", "params": params}])
    assert client.messages.batches.retrieve(batch.id).processing_status == "ended"
    (line,) = list(client.messages.batches.results(batch.id))
    message = line.result.message
    assert [b.type for b in message.content] == ["server_tool_use", "bash_code_execution_tool_result", "text"]
    assert message.content[0].name == "bash_code_execution"
    result = message.content[1].content
    assert result.type == "bash_code_execution_result" and result.content[0].type == "bash_code_execution_output"
    beta = {"anthropic-beta": "files-api-2025-04-14"}
    assert client.beta.files.download(result.content[0].file_id, extra_headers=beta).read() == CODE_OUTPUT
    assert message.container is not None and message.container.id.startswith("container_")
    again = {**params, "container": message.container.id}  # the batch's container is known: it runs again
    second = client.messages.create(**again)
    assert second.container.id == message.container.id


# --------------------------------------------------------------------------- as a process


def test_runs_as_a_process() -> None:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mock_upstream.py")
    proc = subprocess.Popen(
        [sys.executable, script, "--port", "0", "--delay-ms", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v1/models")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert proc.stderr.read() == ""


def test_gemini_files_resumable_upload_list_get_delete(mock: MockUpstream) -> None:
    """The Files API as google-genai speaks it: ``start`` answers an upload URL; ``upload`` chunks
    must follow on at their offset, ``upload, finalize`` makes the file; then list (paged), get,
    delete; a generateContent naming an unknown file by ``fileData.fileUri`` is Google's 403."""
    data = bytes(range(256)) * 40
    start = {
        "X-Goog-Upload-Protocol": "resumable",
        "X-Goog-Upload-Command": "start",
        "X-Goog-Upload-Header-Content-Length": str(len(data)),
        "X-Goog-Upload-Header-Content-Type": "video/mp4",
    }
    resp, raw, _ = call(mock, "POST", "/upload/v1beta/files", {"file": {"display_name": "clip"}}, start)
    assert resp.status == 200 and resp.getheader("x-goog-upload-status") == "active"
    url = resp.getheader("x-goog-upload-url")
    target = url.split(str(mock.port), 1)[1]
    assert target.startswith("/upload/v1beta/files?upload_id=")
    chunk = {"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "0"}
    resp, _, _ = call(mock, "POST", target, data[:4096], chunk)
    assert resp.status == 200 and resp.getheader("x-goog-upload-status") == "active"
    resp, raw, _ = call(
        mock, "POST", target, data[4096:], {**chunk, "X-Goog-Upload-Offset": "0"}
    )  # not where it stands
    assert resp.status == 400 and json.loads(raw)["error"]["status"] == "INVALID_ARGUMENT"
    resp, _, _ = call(mock, "POST", target, b"", {"X-Goog-Upload-Command": "query"})
    assert resp.getheader("x-goog-upload-size-received") == "4096"
    finish = {"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "4096"}
    resp, raw, _ = call(mock, "POST", target, data[4096:], finish)
    made = json.loads(raw)["file"]
    assert resp.status == 200 and resp.getheader("x-goog-upload-status") == "final"
    assert made["name"].startswith("files/") and made["displayName"] == "clip" and made["mimeType"] == "video/mp4"
    assert made["sizeBytes"] == str(len(data)) and made["uri"].endswith(made["name"].removeprefix("files/"))
    assert call(mock, "POST", target, b"x", finish)[0].status == 400  # finalized: no more bytes
    listed, token = [], ""  # the mock's files are the process's: other tests' files may come first
    for _ in range(1000):
        page = json.loads(call(mock, "GET", f"/v1beta/files?pageSize=1&pageToken={token}")[1])
        assert len(page["files"]) <= 1
        listed += [f["name"] for f in page["files"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert made["name"] in listed and len(listed) == len(set(listed))
    assert json.loads(call(mock, "GET", f"/v1beta/{made['name']}")[1]) == made
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    asked = {"contents": [{"role": "user", "parts": [{"fileData": {"fileUri": made["uri"], "mimeType": "video/mp4"}}]}]}
    assert call(mock, "POST", path, asked)[0].status == 200
    assert call(mock, "DELETE", f"/v1beta/{made['name']}")[0].status == 200
    for method, where, sent in (("GET", f"/v1beta/{made['name']}", None), ("POST", path, asked)):
        resp, raw, _ = call(mock, method, where, sent)
        assert resp.status == 403 and json.loads(raw)["error"]["status"] == "PERMISSION_DENIED"
    resp, raw, _ = call(mock, "POST", "/upload/v1beta/files", {}, {**start, "X-Goog-Upload-Protocol": "multipart"})
    assert resp.status == 400

"""The core promise: the official OpenAI SDK works through Stockyard unchanged, and every
request leaves a trace with the provider's usage and an exact cost."""

from __future__ import annotations

import base64
import http.client
import json
from pathlib import Path

import openai
import pytest
from conftest import OPENAI_KEY, wait_for
from mock_upstream import Reply
from openai import OpenAI

# gpt-4o-mini: $0.15 / 1M input, $0.60 / 1M output → 15,000,000 and 60,000,000 µ¢ per 1M tokens.
# The mock reports 12 prompt and 5 completion tokens: (12 * 15e6 + 5 * 60e6) / 1e6 = 480 µ¢.
MINI_COST_UC = 480


@pytest.fixture(scope="module")
def client(openai_server) -> OpenAI:
    return openai_server.openai("unused")


@pytest.fixture(autouse=True)
def fresh_mock(mock):
    mock.clear_replies()
    yield
    mock.clear_replies()


def chat(client: OpenAI, **kwargs):
    """A chat call returning (parsed answer, trace id)."""
    raw = client.chat.completions.with_raw_response.create(**kwargs)
    return raw.parse(), raw.headers["x-stockyard-trace-id"]


HELLO = [{"role": "user", "content": "Say hello"}]


def test_plain_chat_answer_trace_and_cost(client, openai_server, mock):
    answer, trace_id = chat(client, model="gpt-4o-mini", messages=HELLO)
    assert answer.choices[0].message.content == "Hello from mock"
    sent = mock.last("/v1/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    trace = openai_server.trace(trace_id)
    assert trace["provider"] == "openai" and trace["model"] == "gpt-4o-mini"
    assert trace["status"] == 200 and trace["outcome"] == "ok" and trace["stream"] == 0
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (12, 5)
    assert trace["cost_uc"] == MINI_COST_UC and trace["cost_status"] == "exact"
    assert trace["upstream_request_id"].startswith("req_mock_")
    assert trace["latency_us"] > 0 and trace["ttfb_us"] is not None
    assert trace["client_addr"] == "127.0.0.1" and trace["endpoint"] == "chat"


def test_request_body_passes_through_untouched(client, mock):
    """Fields the proxy does not know (and the ones it does) reach the provider unchanged."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    chat(
        client,
        model="gpt-4o-mini",
        messages=HELLO,
        tools=tools,
        response_format={"type": "json_object"},
        logprobs=True,
        top_logprobs=2,
        n=2,
        seed=7,
        extra_body={"brand_new_field": {"x": [1, 2]}},
    )
    sent = mock.last("/v1/chat/completions").json
    assert sent["tools"] == tools and sent["response_format"] == {"type": "json_object"}
    assert (sent["logprobs"], sent["top_logprobs"], sent["n"], sent["seed"]) == (True, 2, 2, 7)
    assert sent["brand_new_field"] == {"x": [1, 2]}


QWEN_CHAT = json.loads((Path(__file__).parent / "qwen_code_requests.json").read_text())["chat"]


@pytest.mark.parametrize(("model", "cap_field"), [("gpt-5", "max_completion_tokens"), ("gpt-4o", "max_tokens")])
def test_qwen_code_max_tokens_reaches_a_reasoning_model_as_max_completion_tokens(openai_server, mock, model, cap_field):
    """Qwen Code 0.15.10 sends every chat request ``max_tokens`` (8000: tests/qwen_code_requests.json, as
    captured), which OpenAI's reasoning models refuse ("Unsupported parameter: 'max_tokens' is not supported
    with this model. Use 'max_completion_tokens' instead."): every request to gpt-5 was a 400. At OpenAI's
    own chat API a reasoning model gets the same cap as ``max_completion_tokens``; other models as sent."""
    body = {**QWEN_CHAT["first"], "tools": QWEN_CHAT["tools"], "model": model}
    headers = {**QWEN_CHAT["headers"], "Authorization": "Bearer unused"}
    status, _, raw = openai_server.request("POST", QWEN_CHAT["path"], body, headers=headers)
    assert status == 200, raw[:300]
    sent = mock.last("/v1/chat/completions").json
    other = "max_tokens" if cap_field == "max_completion_tokens" else "max_completion_tokens"
    assert sent[cap_field] == 8000 and other not in sent
    assert sent["messages"] == body["messages"] and sent["tools"] == body["tools"]


def test_tool_call_answer(client, openai_server):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    answer, trace_id = chat(client, model="gpt-4o", messages=HELLO, tools=tools)
    call = answer.choices[0].message.tool_calls[0]
    assert answer.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert openai_server.trace(trace_id)["completion_tokens"] == 5


def test_image_content_part_survives(client, mock):
    pixel = base64.b64encode(b"\x89PNG fake").decode()
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}},
    ]
    answer, _ = chat(client, model="gpt-4o-mini", messages=[{"role": "user", "content": content}])
    assert answer.choices[0].message.content == "Hello from mock"
    assert mock.last("/v1/chat/completions").json["messages"][0]["content"] == content


def test_stream_without_include_usage_hides_the_usage_chunk(client, openai_server, mock):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO, stream=True)
    trace_id = raw.headers["x-stockyard-trace-id"]
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from mock"
    assert all(c.choices for c in chunks), "the client did not ask for usage, so no usage-only chunk"
    assert all(c.usage is None for c in chunks)
    assert mock.last("/v1/chat/completions").json["stream_options"] == {"include_usage": True}
    trace = openai_server.trace(trace_id)
    assert trace["stream"] == 1 and (trace["prompt_tokens"], trace["completion_tokens"]) == (12, 5)
    assert trace["cost_uc"] == MINI_COST_UC and trace["outcome"] == "ok"


def test_stream_with_include_usage_keeps_it(client, openai_server):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert openai_server.trace(raw.headers["x-stockyard-trace-id"])["cost_uc"] == MINI_COST_UC


def test_streamed_tool_call(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, tools=tools, stream=True)
    args = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""
        for c in stream
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert json.loads(args) == {"city": "Paris"}


def test_completions(client, openai_server):
    raw = client.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Say hello")
    assert raw.parse().choices[0].text == "Hello from mock"
    trace = openai_server.trace(raw.headers["x-stockyard-trace-id"])
    assert trace["endpoint"] == "completions" and trace["completion_tokens"] == 5


def test_streamed_completions(client):
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", stream=True)
        if c.choices
    )
    assert text == "Hello from mock"


def test_embeddings(client, openai_server):
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["one two", "three"])
    result = raw.parse()
    assert len(result.data) == 2 and len(result.data[0].embedding) == 8
    trace = openai_server.trace(raw.headers["x-stockyard-trace-id"])
    assert trace["endpoint"] == "embeddings" and trace["prompt_tokens"] == 3 and trace["cost_uc"] is not None


def test_models_lists_ids_that_route_back(client, mock):
    ids = [m.id for m in client.models.list()]
    assert {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"} <= set(ids)
    for model_id in ids:
        if "embedding" in model_id:
            continue
        chat(client, model=model_id, messages=HELLO)
        assert mock.last("/v1/chat/completions").json["model"] == model_id.split("/")[-1]


def test_explicit_provider_prefix_is_stripped(client, mock, openai_server):
    _, trace_id = chat(client, model="openai/gpt-4o-mini", messages=HELLO)
    assert mock.last("/v1/chat/completions").json["model"] == "gpt-4o-mini"
    assert openai_server.trace(trace_id)["provider"] == "openai"


def test_a_conversation_moved_from_claude_or_gemini_reaches_openai_without_their_state(client, mock):
    """Older OpenAI models refuse message fields they do not know: the ``thinking_blocks`` of a Claude
    answer and a Gemini call's ``extra_content`` stay behind; a body without them goes as sent."""
    call = {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    signed = {**call, "extra_content": {"google": {"thought_signature": "S1"}}}
    think = {"type": "thinking", "thinking": "hm", "signature": "EqQB"}
    moved = [
        *HELLO,
        {"role": "assistant", "content": None, "tool_calls": [signed], "thinking_blocks": [think]},
        {"role": "tool", "tool_call_id": "call_a", "content": "ok"},
    ]
    chat(client, model="gpt-4o-mini", messages=moved)
    assistant = mock.last("/v1/chat/completions").json["messages"][1]
    assert assistant == {"role": "assistant", "content": None, "tool_calls": [call]}


def test_cached_and_reasoning_tokens_are_priced_at_their_rates(client, openai_server):
    # gpt-4o-mini cached input is $0.075/1M → 7,500,000 µ¢ per 1M. The mock reports 12 prompt tokens,
    # 8 of them cached: (4 * 15e6 + 8 * 7.5e6 + 5 * 60e6) / 1e6 = 60 + 60 + 300 = 420 µ¢.
    # The mock's model name is not gpt-4o-mini (prices are never guessed from a prefix): price it the same.
    done = openai_server.cli(
        "prices", "set", "gpt-4o-mini-cached", "--input", "0.15", "--cached-input", "0.075", "--output", "0.60"
    )
    assert done.returncode == 0, done.stderr
    trace = wait_for(
        lambda: (
            (t := openai_server.trace(chat(client, model="gpt-4o-mini-cached", messages=HELLO)[1]))["cost_uc"] and t
        ),
        timeout=5,
        what="the price to apply",
    )
    assert trace["cached_tokens"] == 8 and trace["cost_uc"] == 420


def test_unknown_model_cost_is_unknown_not_guessed(client, openai_server):
    _, trace_id = chat(client, model="gpt-unreleased-model-x", messages=HELLO)
    trace = openai_server.trace(trace_id)
    assert trace["cost_status"] == "unknown" and trace["cost_uc"] is None and trace["prompt_tokens"] == 12


def test_no_usage_is_estimated_and_marked(client, openai_server, mock):
    mock.enqueue(
        Reply(
            json={
                "id": "x",
                "object": "chat.completion",
                "model": "gpt-4o-mini",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "stop"}
                ],
            }
        )
    )
    _, trace_id = chat(client, model="gpt-4o-mini", messages=HELLO)
    trace = openai_server.trace(trace_id)
    assert trace["usage_estimated"] == 1 and trace["cost_status"] == "estimate" and trace["cost_uc"] > 0


def test_the_providers_retry_advice_reaches_the_sdk(client, mock):
    """Was: ``x-should-retry: false`` (a quota the SDK must not retry into) and ``retry-after-ms``
    were dropped: the SDK retried what the provider said not to."""
    error = {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": None}}
    advice = {"x-should-retry": "false", "retry-after-ms": "1500"}
    mock.clear()
    mock.enqueue(Reply(status=429, json=error, headers=advice))
    with pytest.raises(openai.RateLimitError) as err:
        client.with_options(max_retries=2).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert {k: err.value.response.headers.get(k) for k in advice} == advice
    assert len([r for r in mock.requests if r.path.endswith("/chat/completions")]) == 1  # the SDK obeyed


def test_upstream_error_passes_through_with_status_and_body(client, openai_server):
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="mock-error-429", messages=HELLO)
    assert err.value.status_code == 429
    assert err.value.response.headers["retry-after"] == "1"
    assert err.value.body["code"] == "rate_limit_exceeded"
    trace = openai_server.trace(err.value.response.headers["x-stockyard-trace-id"])
    assert trace["status"] == 429 and trace["outcome"] == "upstream_error"


def test_upstream_400_passes_through(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="mock-error-400", messages=HELLO)
    assert err.value.status_code == 400


def raw_stream(server, body: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data, resp.getheader("x-stockyard-trace-id")


def test_broken_stream_ends_with_error_event_not_done(openai_server, mock):
    mock.enqueue(Reply(cut_after=2))
    status, data, trace_id = raw_stream(openai_server, {"model": "gpt-4o-mini", "messages": HELLO, "stream": True})
    events = [e for e in data.decode().split("\n\n") if e.strip()]
    assert status == 200 and len(events) == 3
    assert "[DONE]" not in data.decode()
    assert json.loads(events[-1][len("data: ") :])["error"]["code"] == "upstream_reset"
    trace = openai_server.trace(trace_id)
    assert trace["outcome"] == "stream_broken" and "stream broke" in trace["error_message"]


def test_a_stream_cut_before_its_usage_is_billed_the_text_it_relayed(openai_server, mock):
    """Without its usage chunk a stream's output is estimated from the text it carried, four
    characters a token — not from its bytes, which are mostly each chunk's JSON (a chat chunk is
    ~150 bytes for a word here: bytes / 4 billed ~40 tokens per word a client saw)."""
    mock.enqueue(Reply(cut_after=4))
    status, data, trace_id = raw_stream(openai_server, {"model": "gpt-4o-mini", "messages": HELLO, "stream": True})
    chunks = [json.loads(e[len("data: ") :]) for e in data.decode().split("\n\n") if e.startswith("data: ")]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))
    assert status == 200 and text  # some words went out before the cut
    trace = openai_server.trace(trace_id)
    assert trace["outcome"] == "stream_broken" and trace["usage_estimated"] == 1
    assert trace["completion_tokens"] == -(-len(text) // 4) < len(data) // 40
    assert trace["cost_status"] == "estimate" and trace["cost_uc"] > 0


def test_client_disconnect_mid_stream_is_traced(openai_server, mock):
    mock.enqueue(Reply(sse_delay_ms=300))
    conn = http.client.HTTPConnection("127.0.0.1", openai_server.port, timeout=10)
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": "gpt-4o-mini", "messages": HELLO, "stream": True}),
        {"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    trace_id = resp.getheader("x-stockyard-trace-id")
    assert resp.read1(65536).startswith(b"data: ")
    conn.sock.close()
    conn.close()
    trace = openai_server.trace(trace_id, timeout=15)
    assert trace["outcome"] == "client_disconnected"


def test_traces_cli_lists_newest_first(openai_server, client):
    _, trace_id = chat(client, model="gpt-4o-mini", messages=HELLO)
    openai_server.trace(trace_id)
    result = openai_server.cli("traces", "--limit", "3", "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["id"] == trace_id and len(rows) == 3
    assert rows[0]["id"] > rows[1]["id"] > rows[2]["id"]
    table = openai_server.cli("traces", "--limit", "2")
    assert table.returncode == 0 and trace_id in table.stdout and "MODEL" in table.stdout


def test_trace_bodies_are_stored_compressed(openai_server, client):
    _, trace_id = chat(client, model="gpt-4o-mini", messages=[{"role": "user", "content": "remember me"}])
    openai_server.trace(trace_id)
    import zlib

    row = openai_server.db_rows("SELECT request, response FROM trace_bodies WHERE trace_id = ?", (trace_id,))[0]
    assert b"remember me" in zlib.decompress(row["request"])
    assert b"Hello from mock" in zlib.decompress(row["response"])


def test_provider_key_never_reaches_the_log(openai_server):
    assert OPENAI_KEY not in openai_server.log


def test_stream_bytes_match_what_the_provider_sends_without_usage(openai_server):
    """The client did not ask for usage, so no trace of it may appear: not even "usage":null."""
    status, data, _ = raw_stream(openai_server, {"model": "gpt-4o-mini", "messages": HELLO, "stream": True})
    assert status == 200 and b'"usage"' not in data and data.endswith(b"data: [DONE]\n\n")

"""The official SDKs' high-level helpers, end to end through a real Stockyard server.

Users judge Stockyard on "my SDK works unchanged": beyond ``create``, apps use the helpers — the
OpenAI SDK's ``chat.completions.parse``/``stream`` (its event accumulator), ``responses.parse``/
``stream``, ``pydantic_function_tool``, raw and streaming responses, its retries and timeouts; the
Anthropic SDK's ``messages.stream`` (snapshots, tool input deltas, thinking), ``messages.parse``,
``count_tokens`` and the beta ``tool_runner``. Each is run on the routes a user has: GPT natively,
Claude natively, and the translated pairs (the OpenAI SDK to Claude, the Anthropic SDK to GPT),
against the mock upstream; each test asserts what the user sees and the trace's exact cost.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Iterator

import anthropic
import openai
import pydantic
import pytest
from anthropic.lib.tools import beta_tool
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import THINKING_SIGNATURE, THINKING_TEXT, Reply, anthropic_blocks_stream
from module_helpers import key_traces, new_key
from rawhttp import connect, read_until_close, statuses
from test_stream_relay import (  # noqa: F401 (pool, provider: the fixtures)
    END,
    Provider,
    Relayed,
    chunk,
    closed_by_us,
    event,
    pool,
    provider,
    read_payload,
    relay_one,
    unframe,
)

from stockyard.errors import ClientGone
from stockyard.streamrelay import PROBE, StreamRelay
from stockyard.upstream import Pool

ADMIN = "admin-key-for-sdk-helpers-0123456789"
ANTHROPIC_KEY = "sk-ant-test-0123456789SDKHELPERSSECRET"
GPT, CLAUDE = "gpt-4o-mini", "claude-haiku-4-5"
# The mock's 12 input and 5 output tokens at each model's list price (µ¢ per token: gpt-4o-mini
# $0.15/$0.60 per 1M → 15/60; claude-haiku-4-5 $1/$5 per 1M → 100/500).
COST_UC = {GPT: 12 * 15 + 5 * 60, CLAUDE: 12 * 100 + 5 * 500}
TRACE_COLUMNS = ("endpoint", "model", "status", "cost_uc", "cost_status", "prompt_tokens", "completion_tokens")


class City(pydantic.BaseModel):
    city: str


class GetWeather(pydantic.BaseModel):
    """The weather in a city."""

    city: str


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home, mock, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url, STOCKYARD_ADMIN_KEY=ADMIN
    )
    with served(pyz_path, tmp_path_factory, "sdk38", env, never_logged=(ANTHROPIC_KEY,)) as srv:
        yield srv


@pytest.fixture
def key(server, mock) -> tuple[str, str]:
    """A client key of this test's own: (secret, name), so its traces are this test's."""
    mock.clear_replies()
    return new_key(server, ADMIN)


def traces(server: ServerProcess, name: str, count: int = 1, columns: tuple[str, ...] = TRACE_COLUMNS) -> list[dict]:
    """The key's ``count`` traces once the writer committed them, oldest first."""
    return wait_for(
        lambda: (rows := key_traces(server, name, columns)) and len(rows) >= count and rows,
        what=f"{count} traces of {name}",
    )


def assert_billed(server: ServerProcess, name: str, endpoint: str, model: str) -> None:
    """One trace for the key: a 200 on ``endpoint`` for ``model`` at its exact cost."""
    rows = traces(server, name)
    assert rows == [
        {
            "endpoint": endpoint,
            "model": model,
            "status": 200,
            "cost_uc": COST_UC[model],
            "cost_status": "exact",
            "prompt_tokens": 12,
            "completion_tokens": 5,
        }
    ]


def sent_tool(mock, model: str) -> dict:
    """The first tool of the newest upstream request for ``model``, as its provider takes tools: OpenAI's
    function (chat) or tool (Responses), Claude's tool."""
    body = next(r.json for r in reversed(mock.requests) if isinstance(r.json, dict) and r.json.get("model") == model)
    tool = body["tools"][0]
    return tool.get("function", tool)


# --------------------------------------------------------------------------- OpenAI SDK: chat


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_chat_parse_with_a_pydantic_response_format(server, key, mock, model):
    client = server.openai(key[0])
    raw = client.chat.completions.with_raw_response.parse(
        model=model, messages=[{"role": "user", "content": "Which city?"}], response_format=City
    )
    completion = raw.parse()
    assert completion.choices[0].message.parsed == City(city="Paris")
    assert raw.headers["x-stockyard-trace-id"].startswith("tr_")
    assert_billed(server, key[1], "chat", model)


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_chat_parse_with_strict_pydantic_function_tools(server, key, mock, model):
    client = server.openai(key[0])
    completion = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[openai.pydantic_function_tool(GetWeather)],
    )
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "GetWeather"
    assert call.function.parsed_arguments == GetWeather(city="Paris")
    assert completion.choices[0].finish_reason == "tool_calls"
    assert sent_tool(mock, model)["strict"] is True  # Claude's strict tool use: was dropped
    assert_billed(server, key[1], "chat", model)


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_chat_stream_helper_accumulates_tool_call_argument_deltas(server, key, mock, model):
    client = server.openai(key[0])
    with client.chat.completions.stream(
        model=model,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[openai.pydantic_function_tool(GetWeather)],
        stream_options={"include_usage": True},
    ) as stream:
        assert stream._response.headers["x-stockyard-trace-id"].startswith("tr_")
        events = list(stream)
        final = stream.get_final_completion()
    deltas = [e.arguments_delta for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert "".join(deltas).replace(" ", "") == '{"city":"Paris"}' and len(deltas) >= 2
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert [(e.name, e.parsed_arguments) for e in done] == [("GetWeather", GetWeather(city="Paris"))]
    call = final.choices[0].message.tool_calls[0]
    assert call.function.parsed_arguments == GetWeather(city="Paris") and call.id
    assert final.choices[0].finish_reason == "tool_calls"
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (12, 5)
    assert_billed(server, key[1], "chat", model)


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_chat_stream_helper_parses_a_response_format(server, key, mock, model):
    client = server.openai(key[0])
    with client.chat.completions.stream(
        model=model, messages=[{"role": "user", "content": "Which city?"}], response_format=City
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    done = [e for e in events if e.type == "content.done"]
    assert [e.parsed for e in done] == [City(city="Paris")]
    assert "".join(e.delta for e in events if e.type == "content.delta") == done[0].content
    assert final.choices[0].message.parsed == City(city="Paris")
    assert_billed(server, key[1], "chat", model)


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_with_streaming_response_reads_the_trace_header_before_the_body(server, key, mock, model):
    client = server.openai(key[0])
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=[{"role": "user", "content": "Say hello"}], stream=True
    ) as response:
        trace_id = response.headers["x-stockyard-trace-id"]
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
    assert text == "Hello from mock"
    assert server.trace(trace_id)["cost_uc"] == COST_UC[model]


def test_chat_stream_helper_keeps_claudes_parallel_tool_calls_apart(server, key, mock):
    """Claude's text then two tool_use blocks: the chat stream's tool call indexes keep each call's
    argument deltas apart, for the chat and the Responses stream helpers alike."""
    content = [
        {"type": "text", "text": "Checking both."},
        {"type": "tool_use", "id": "toolu_1", "name": "GetWeather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "GetWeather", "input": {"city": "Rome"}},
    ]
    mock.enqueue(
        Reply(sse=anthropic_blocks_stream(content, 1, CLAUDE)), Reply(sse=anthropic_blocks_stream(content, 2, CLAUDE))
    )
    client = server.openai(key[0])
    ask = {"model": CLAUDE, "tools": [openai.pydantic_function_tool(GetWeather)]}
    with client.chat.completions.stream(**ask, messages=[{"role": "user", "content": "Paris and Rome?"}]) as stream:
        events = list(stream)
        message = stream.get_final_completion().choices[0].message
    assert message.content == "Checking both."
    assert [(c.id, c.function.parsed_arguments) for c in message.tool_calls] == [
        ("toolu_1", GetWeather(city="Paris")),
        ("toolu_2", GetWeather(city="Rome")),
    ]
    done = [(e.index, e.parsed_arguments) for e in events if e.type == "tool_calls.function.arguments.done"]
    assert done == [(0, GetWeather(city="Paris")), (1, GetWeather(city="Rome"))]
    with client.responses.stream(**ask, input="Paris and Rome?") as stream:
        output = stream.get_final_response().output
    calls = [(o.call_id, o.parsed_arguments) for o in output if o.type == "function_call"]
    assert calls == [("toolu_1", GetWeather(city="Paris")), ("toolu_2", GetWeather(city="Rome"))]
    rows = traces(server, key[1], 2)
    assert [(r["endpoint"], r["cost_uc"]) for r in rows] == [("chat", COST_UC[CLAUDE]), ("responses", COST_UC[CLAUDE])]


# --------------------------------------------------------------------------- OpenAI SDK: responses


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_responses_stream_with_a_text_format(server, key, mock, model):
    client = server.openai(key[0])
    with client.responses.stream(model=model, input="Which city?", text_format=City) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.output_parsed == City(city="Paris")
    assert final.status == "completed"
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == final.output_text
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 5)
    assert_billed(server, key[1], "responses", model)


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_responses_parse_with_strict_pydantic_function_tools(server, key, mock, model):
    client = server.openai(key[0])
    response = client.responses.parse(
        model=model, input="Weather in Paris?", tools=[openai.pydantic_function_tool(GetWeather)]
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.name, c.parsed_arguments) for c in calls] == [("GetWeather", GetWeather(city="Paris"))]
    assert sent_tool(mock, model)["strict"] is True
    assert_billed(server, key[1], "responses", model)


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_responses_stream_tool_call_argument_deltas(server, key, mock, model):
    client = server.openai(key[0])
    with client.responses.stream(
        model=model, input="Weather in Paris?", tools=[openai.pydantic_function_tool(GetWeather)]
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert deltas.replace(" ", "") == '{"city":"Paris"}'
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, c.parsed_arguments) for c in calls] == [("GetWeather", GetWeather(city="Paris"))]
    assert_billed(server, key[1], "responses", model)


def test_responses_stream_resumes_a_background_response(server, key, mock):
    """``responses.stream(response_id=…)`` replays a background response from ``response.created``
    (its accumulator wants it first: the mock's replay began at ``response.in_progress``), and with
    ``starting_after`` resumes after that event; the response is billed once, by the stream that ran it."""
    client = server.openai(key[0])
    made = client.responses.create(model=GPT, input="a long job", background=True)
    with client.responses.stream(response_id=made.id) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert (final.id, final.status, final.output_text) == (made.id, "completed", "Hello from mock")
    with client.responses.stream(response_id=made.id, starting_after=2) as stream:
        assert [event.sequence_number for event in stream][0] == 3
    rows = traces(server, key[1], 4, ("endpoint", "cost_uc"))
    billed = [r["cost_uc"] for r in rows if r["endpoint"] == "responses.usage"]
    assert billed == [COST_UC[GPT]]


# --------------------------------------------------------------------------- OpenAI SDK: transport


def test_max_retries_retries_a_stockyard_5xx(server, key, mock):
    """The provider's 503 reaches the client as a 503 the SDK retries: the second try is served."""
    mock.enqueue(Reply(status=503, headers={"retry-after-ms": "10"}))
    client = server.openai(key[0], max_retries=2)
    raw = client.chat.completions.with_raw_response.create(
        model=GPT, messages=[{"role": "user", "content": "Say hello"}]
    )
    assert raw.parse().choices[0].message.content == "Hello from mock"
    assert raw.retries_taken == 1
    rows = traces(server, key[1], 2)
    assert [(r["status"], r["cost_uc"]) for r in rows] == [(503, None), (200, COST_UC[GPT])]


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_max_retries_honours_the_retry_after_of_a_relayed_429(server, key, mock, model):
    """The provider's 429 and its Retry-After reach the SDK, which waits that long (past its own
    backoff, under a second for a first retry) and tries again: served, both tries traced."""
    mock.enqueue(Reply(status=429, headers={"retry-after": "1"}))
    ask = {"model": model, "messages": [{"role": "user", "content": "Say hello"}]}
    started = time.monotonic()
    if model == GPT:
        raw = server.openai(key[0], max_retries=1).chat.completions.with_raw_response.create(**ask)
    else:
        raw = server.anthropic(key[0], max_retries=1).messages.with_raw_response.create(**ask, max_tokens=50)
    waited = time.monotonic() - started
    assert raw.retries_taken == 1 and waited >= 1.0
    assert raw.headers["x-stockyard-trace-id"] == traces(server, key[1], 2, ("id",))[1]["id"]
    rows = traces(server, key[1], 2)
    assert [(r["status"], r["cost_uc"]) for r in rows] == [(429, None), (200, COST_UC[model])]


def test_timeout_raises_and_the_request_is_traced(server, key, mock):
    """The SDK's ``timeout`` gives up on a slow answer; the provider still bills the call it was
    sent, so Stockyard reads the answer to its end and traces it billed, the client gone."""
    mock.enqueue(Reply(hang_s=2))
    client = server.openai(key[0], timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=GPT, messages=[{"role": "user", "content": "Say hello"}])
    rows = traces(server, key[1], columns=(*TRACE_COLUMNS, "outcome"))
    assert [(r["outcome"], r["cost_uc"]) for r in rows] == [("client_disconnected", COST_UC[GPT])]


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_a_stream_whose_client_timed_out_while_its_provider_was_silent_ends_then(server, key, mock, model):
    """The SDK's read timeout mid-stream (a provider silent while it thinks): Stockyard noticed the
    client gone only at its next write, after the silence — the provider kept generating for nobody,
    and the trace said ``ok`` when the rest went in one write. Now the relay watches the client's
    socket: the provider's connection closes during the silence and the trace says the client left."""
    hung_up = threading.Event()
    mock.enqueue(Reply(hang_s=5, hang_after=3, hung_up=hung_up))
    client = server.openai(key[0], timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        with client.chat.completions.stream(model=model, messages=[{"role": "user", "content": "Say hello"}]) as stream:
            assert next(iter(stream)).type == "chunk"  # the stream was established
            list(stream)
    assert hung_up.wait(3)  # well before the provider's 5 s silence ended
    rows = traces(server, key[1], columns=(*TRACE_COLUMNS, "outcome"))
    assert [r["outcome"] for r in rows] == ["client_disconnected"]


def received_until(sock: socket.socket, marker: bytes) -> bytes:
    """What the server sent up to and including ``marker`` (within the socket's timeout)."""
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {data[:300]!r}"
        data += chunk
    return data


def ask_half_closed(server, key, hold: threading.Event | None = None) -> bytes:
    """A streamed chat whose client shuts its sending side down — after the answer's head arrived,
    or (``hold``: the provider answers once it is set) while the request waits for the provider —
    and reads the answer to its end."""
    body = json.dumps({"model": CLAUDE, "stream": True, "messages": [{"role": "user", "content": "Say hello"}]})
    sock = connect(server)
    try:
        sock.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {key[0]}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        if hold is None:
            seen = received_until(sock, b"data: ")  # the stream has begun: the relay, not the watch, sees the FIN
            sock.shutdown(socket.SHUT_WR)
        else:
            sock.shutdown(socket.SHUT_WR)
            seen = received_until(sock, b"HTTP/1.1 100 Continue\r\n\r\n")  # the client watch's probe
            hold.set()
        return seen + read_until_close(sock)
    finally:
        sock.close()


def test_a_half_closed_client_still_gets_its_whole_stream(server, key, mock):
    """A client that shuts down only its sending side still reads (RFC 9112 §9.6): the relay's probes
    (two SSE comments, which the SDKs skip) find it there, and the answer goes on to its end."""
    mock.enqueue(Reply(hang_s=1.5, hang_after=3))
    answer = ask_half_closed(server, key)
    assert statuses(answer) == [200] and b"data: [DONE]" in answer
    assert answer.count(b"\r\n:\n\n\r\n") == 2  # the two probes, each an SSE comment of its own chunk
    rows = traces(server, key[1], columns=(*TRACE_COLUMNS, "outcome"))
    assert [(r["outcome"], r["cost_uc"]) for r in rows] == [("ok", COST_UC[CLAUDE])]


def test_a_client_half_closed_while_the_provider_works_gets_a_100_then_its_stream(server, key, mock):
    """The same half-close seen earlier, while the request waits for the provider's answer: the
    client watch's probe is an interim ``100 Continue`` (clientwatch.py), which the client reads
    past, and the stream then comes whole (CI once saw this order where the test above expected
    the other)."""
    answer_now = threading.Event()
    mock.enqueue(Reply(held=answer_now))
    answer = ask_half_closed(server, key, answer_now)
    assert statuses(answer) == [100, 200] and b"data: [DONE]" in answer
    rows = traces(server, key[1], columns=(*TRACE_COLUMNS, "outcome"))
    assert [(r["outcome"], r["cost_uc"]) for r in rows] == [("ok", COST_UC[CLAUDE])]


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_the_providers_request_id_is_where_the_sdk_reads_it(server, key, mock, sdk, model):
    """A response's ``_request_id`` and an error's ``request_id`` (what a user quotes to the
    provider's support): the openai SDK reads ``x-request-id``, the anthropic SDK ``request-id``, and
    OpenAI and Anthropic each send only their own — a translated answer's was None."""
    ask = {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "Say hello"}]}
    if sdk == "openai":
        create, failure = server.openai(key[0]).chat.completions.create, openai.APIStatusError
    else:
        create, failure = anthropic_client(server, key).messages.create, anthropic.APIStatusError
    answer = create(**ask)
    rows = traces(server, key[1], columns=("upstream_request_id",))
    assert answer._request_id == rows[0]["upstream_request_id"] and answer._request_id.startswith("req_mock_")
    mock.enqueue(Reply(status=500))
    with pytest.raises(failure) as failed:
        create(**ask)
    rows = traces(server, key[1], 2, ("upstream_request_id",))
    assert failed.value.request_id == rows[1]["upstream_request_id"] and failed.value.request_id.startswith("req_mock_")


def test_models_list_auto_pages(server, key):
    """``models.list()`` iterates every page: one here, every provider's models in it, each once."""
    page = server.openai(key[0]).models.list()
    ids = [model.id for model in page]
    assert not page.has_next_page()
    assert GPT in ids and "claude-sonnet-4-5-20250929" in ids and len(ids) == len(set(ids))


# --------------------------------------------------------------------------- Anthropic SDK


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_messages_stream_tool_input_json_and_snapshots(server, key, mock, model):
    client = anthropic_client(server, key)
    tool = {"name": "get_weather", "description": "weather", "input_schema": GetWeather.model_json_schema()}
    partials, snapshots = [], []
    with client.messages.stream(
        model=model, max_tokens=200, tools=[tool], messages=[{"role": "user", "content": "Weather in Paris?"}]
    ) as stream:
        assert stream.response.headers["x-stockyard-trace-id"].startswith("tr_")
        for event in stream:
            if event.type == "input_json":
                partials.append(event.partial_json)
                snapshots.append(stream.current_message_snapshot.content[-1].input)
        final = stream.get_final_message()
    assert "".join(partials).replace(" ", "") == '{"city":"Paris"}'
    assert snapshots[-1] == {"city": "Paris"}
    block = final.content[-1]
    assert (block.type, block.name, block.input) == ("tool_use", "get_weather", {"city": "Paris"})
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 5)
    assert_billed(server, key[1], "messages", model)


def chat_chunk(delta: dict | None, finish: str | None = None, usage: dict | None = None) -> str:
    """One chat.completion.chunk of a scripted GPT stream (no choice with ``delta`` None: the usage chunk)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": GPT, "choices": choices}
    return json.dumps({**chunk, **({"usage": usage} if usage else {})})


def test_messages_stream_keeps_gpts_parallel_tool_calls_apart(server, key, mock):
    """GPT's text then two tool calls (the first's arguments in pieces): three content blocks, each
    call's input_json deltas in its own block, as the snapshot shows while it streams."""
    call = {"type": "function", "function": {"name": "get_weather", "arguments": ""}}
    mock.enqueue(
        Reply(
            sse=[
                chat_chunk({"role": "assistant", "content": "Checking."}),
                chat_chunk({"tool_calls": [{"index": 0, "id": "call_a", **call}]}),
                chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
                chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
                chat_chunk({"tool_calls": [{"index": 1, "id": "call_b", **call}]}),
                chat_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"city":"Rome"}'}}]}),
                chat_chunk({}, "tool_calls"),
                chat_chunk(None, usage={"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}),
                "[DONE]",
            ]
        )
    )
    tool = {"name": "get_weather", "description": "weather", "input_schema": GetWeather.model_json_schema()}
    snapshots = []
    with anthropic_client(server, key).messages.stream(
        model=GPT, max_tokens=100, tools=[tool], messages=[{"role": "user", "content": "Paris and Rome?"}]
    ) as stream:
        for event in stream:
            if event.type == "input_json":
                snapshots.append([getattr(b, "input", None) for b in stream.current_message_snapshot.content])
        final = stream.get_final_message()
    assert snapshots[-1] == [None, {"city": "Paris"}, {"city": "Rome"}]
    assert [(b.type, getattr(b, "id", None)) for b in final.content] == [
        ("text", None),
        ("tool_use", "call_a"),
        ("tool_use", "call_b"),
    ]
    assert [b.input for b in final.content[1:]] == [{"city": "Paris"}, {"city": "Rome"}]
    assert final.stop_reason == "tool_use"
    assert_billed(server, key[1], "messages", GPT)


def test_messages_stream_thinking_blocks(server, key, mock):
    client = anthropic_client(server, key)
    with client.messages.stream(
        model=CLAUDE,
        max_tokens=4000,
        thinking={"type": "enabled", "budget_tokens": 2000},
        messages=[{"role": "user", "content": "Say hello"}],
    ) as stream:
        events = list(stream)
        text = stream.get_final_text()
        final = stream.get_final_message()
    assert "".join(e.thinking for e in events if e.type == "thinking") == THINKING_TEXT
    assert [e.signature for e in events if e.type == "signature"] == [THINKING_SIGNATURE]
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].signature == THINKING_SIGNATURE and text == "Hello from mock"
    assert_billed(server, key[1], "messages", CLAUDE)


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_messages_text_stream(server, key, mock, model):
    client = anthropic_client(server, key)
    with client.messages.stream(
        model=model, max_tokens=100, messages=[{"role": "user", "content": "Say hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from mock" == final.content[0].text
    assert final.stop_reason == "end_turn"
    assert_billed(server, key[1], "messages", model)


@pytest.mark.parametrize("model", [GPT, CLAUDE])
@pytest.mark.parametrize("stream", [False, True])
def test_messages_parse_output_format(server, key, mock, model, stream):
    client = anthropic_client(server, key)
    ask = dict(model=model, max_tokens=100, messages=[{"role": "user", "content": "Which city?"}], output_format=City)
    if stream:
        with client.messages.stream(**ask) as events:
            final = events.get_final_message()
    else:
        final = client.messages.parse(**ask)
    assert final.parsed_output == City(city="Paris")
    assert_billed(server, key[1], "messages", model)


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_count_tokens_with_raw_response(server, key, mock, model):
    client = anthropic_client(server, key)
    raw = client.messages.with_raw_response.count_tokens(
        model=model, messages=[{"role": "user", "content": "Say hello"}]
    )
    count = raw.parse().input_tokens
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    seen = tuple(trace[k] for k in ("endpoint", "status", "cost_uc", "cost_status", "provider"))
    provider = "anthropic" if model == CLAUDE else None  # a GPT model's count asks no provider
    assert seen == ("count_tokens", 200, None, "none", provider)  # not billed
    if model == CLAUDE:
        assert count == 12  # Claude's own count, passed through
    else:
        assert 0 < count < 20  # Stockyard's estimate ("Say hello" and the turn's overhead): no provider call


@pytest.mark.parametrize("model", [GPT, CLAUDE])
@pytest.mark.parametrize("stream", [False, True])
def test_beta_tool_runner_runs_the_tool_and_answers(server, key, mock, model, stream):
    """The tool runner runs over a message thread by default (``thread`` create, then a continue with
    only the tool result). Claude's goes through as sent; a GPT model's was a plain 400 that ended the
    run: now it is Anthropic's ``thread_unsupported_request``, and the SDK goes on without a thread."""
    ran = []

    @beta_tool
    def get_weather(city: str) -> str:
        """The weather in a city.

        Args:
            city: the city
        """
        ran.append(city)
        return "sunny"

    client = anthropic_client(server, key)
    runner = client.beta.messages.tool_runner(
        model=model,
        max_tokens=200,
        tools=[get_weather],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        stream=stream,
    )
    messages = [m.get_final_message() for m in runner] if stream else list(runner)
    assert ran == ["Paris"]
    assert [m.stop_reason for m in messages] == ["tool_use", "end_turn"]
    assert messages[-1].content[0].text == "Hello from mock"
    if model == CLAUDE:
        sent = [r for r in mock.requests if r.path == "/v1/messages" and r.json.get("model") == CLAUDE][-2:]
        assert [r.json["thread"]["type"] for r in sent] == ["create", "continue"]
        assert sent[1].json["thread"]["previous_message_id"] == messages[0].id
        assert "tools" not in sent[1].json and len(sent[1].json["messages"]) == 1
        assert "message-threads-2026-08-12" in sent[1].headers["anthropic-beta"]
        refused = []
    else:
        assert all("thread" not in r.json for r in mock.requests if r.json and r.json.get("model") == GPT)
        refused = [(400, None)]  # the threaded first turn, refused before any provider call
    rows = traces(server, key[1], 2 + len(refused))
    assert [(r["status"], r["cost_uc"]) for r in rows] == refused + [(200, COST_UC[model])] * 2


def test_beta_tool_runner_with_thinking_goes_on_unthreaded_on_claudes_refusal(server, key, mock):
    """Threads take no ``thinking``: Anthropic's ``thread_unsupported_request`` (its ``details``) is
    relayed as it came, so the SDK sends the turn again without the thread and the loop goes on."""

    @beta_tool
    def get_weather(city: str) -> str:
        """The weather in a city.

        Args:
            city: the city
        """
        return "sunny"

    runner = anthropic_client(server, key).beta.messages.tool_runner(
        model=CLAUDE,
        max_tokens=4000,
        thinking={"type": "enabled", "budget_tokens": 2000},
        tools=[get_weather],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    messages = list(runner)
    assert [[b.type for b in m.content] for m in messages] == [["thinking", "tool_use"], ["thinking", "text"]]
    sent = [r.json for r in mock.requests if r.path == "/v1/messages" and r.json.get("model") == CLAUDE][-3:]
    assert ["thread" in body for body in sent] == [True, False, False]
    assert len(sent[2]["messages"]) == 3  # the whole conversation, unthreaded
    rows = traces(server, key[1], 3)
    assert [(r["status"], r["cost_uc"]) for r in rows] == [(400, None)] + [(200, COST_UC[CLAUDE])] * 2


def test_a_thread_to_a_chat_provider_is_refused_as_anthropic_refuses_one(server, key):
    """A thread to a GPT model: the 400 names the field and carries ``details.error_code``, which the
    SDK reads to resend without the thread (a raw client, to see the body)."""
    body = {
        "model": GPT,
        "max_tokens": 50,
        "thread": {"type": "create"},
        "messages": [{"role": "user", "content": "Hi"}],
    }
    status, _, raw = server.request("POST", "/v1/messages?beta=true", body, headers={"x-api-key": key[0]})
    error = json.loads(raw)["error"]
    assert status == 400 and error["type"] == "invalid_request_error"
    assert error["details"] == {"error_code": "thread_unsupported_request"}
    assert error["message"].startswith("thread: ")


def anthropic_client(server: ServerProcess, key: tuple[str, str]) -> anthropic.Anthropic:
    return server.anthropic(key[0])


# --------------------------------------------------------------------------- the relay's watch on its client


def sse_relayed(pool: Pool, provider: Provider) -> Relayed:
    """A stream handed to a relay of its own (``test_stream_relay.relay_one``), as an SSE stream's:
    probed at its client's end-of-file."""
    s = relay_one(StreamRelay(), pool, provider)
    s.stream.probe = PROBE  # set before the client does anything: read by the relay at its end-of-file only
    return s


def test_relay_a_client_gone_while_its_provider_is_silent_ends_the_stream(pool, provider) -> None:
    s = sse_relayed(pool, provider)
    s.client.close()  # the provider sends nothing more: only the client's socket can tell
    assert isinstance(s.wait(3), ClientGone)
    assert closed_by_us(s.upstream)


def test_relay_a_half_closed_client_is_probed_and_read_on(pool, provider) -> None:
    s = sse_relayed(pool, provider)
    s.client.shutdown(socket.SHUT_WR)
    probes = read_payload(s.client, 2 * len(b":\n\n"))  # both probes, while the provider is silent
    s.upstream.sendall(chunk(event(1)) + END)
    assert s.wait() is None
    assert unframe(probes) + s.received() == b":\n\n:\n\n" + event(1)


def test_relay_a_pipelined_request_is_no_departure(pool, provider) -> None:
    s = sse_relayed(pool, provider)
    s.client.sendall(b"GET /v1/models HTTP/1.1\r\n")  # the client's next request, early
    wait_for(lambda: not s.stream.listening, what="the relay to stop watching the client")
    s.upstream.sendall(chunk(event(1)) + END)
    assert s.wait() is None and s.received() == event(1)  # no probe
    assert s.stream.client.recv(64, socket.MSG_DONTWAIT) == b"GET /v1/models HTTP/1.1\r\n"  # left for the server


def test_relay_a_stream_that_is_not_sse_is_not_probed(pool, provider) -> None:
    """Gemini's JSON-array stream has no comment to write: an end-of-file stops the watch."""
    s = relay_one(StreamRelay(), pool, provider)
    s.client.shutdown(socket.SHUT_WR)
    wait_for(lambda: not s.stream.listening, what="the relay to stop watching the client")
    s.upstream.sendall(chunk(event(1)) + END)
    assert s.wait() is None and s.received() == event(1)

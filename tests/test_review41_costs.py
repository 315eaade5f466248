"""A streamed answer costs exactly what the same answer whole costs, on every route a user has.

The same usage reaches Stockyard two ways: in a provider's stream (OpenAI's usage chunk, Anthropic's
``message_start`` and cumulative ``message_delta``, Gemini's ``usageMetadata`` on its chunks, the
Responses API's ``response.completed``) and in its whole answer. For each route (native and
translated) × usage shape the mock answers the same scripted answer both ways, and both traces must
show the same token counts and the same integer ``cost_uc`` — the one computed here by hand from
prices.json (USD per 1M tokens: a token at $X per 1M costs X × 100 µ¢; one rounding, half up).
A usage-less answer is estimated from its text: the stream's and the whole answer's estimates are
each checked for sanity, not for equality.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import Reply

ADMIN = "admin-key-for-review41-costs-0123456789"
ANTHROPIC_KEY = "sk-ant-test-0123456789REVIEW41COSTS"
GEMINI_KEY = "gemini-test-key-REVIEW41COSTS"
GPT, CLAUDE, GEMINI = "gpt-5.6-terra", "claude-haiku-4-5", "gemini-2.5-flash"
IMAGE_MODEL = "gemini-2.5-flash-image"
DRAWN = 1290  # an image's output tokens, which Google lists apart (candidatesTokensDetails, modality IMAGE)
PRICES = json.loads((Path(__file__).parent.parent / "stockyard/data/prices.json").read_text())["models"]
TEXT_PIECES = ["The answer ", "is forty-two, ", "as computed."]
TEXT = "".join(TEXT_PIECES)
THINKING = "Let me count the tokens first."


@dataclass(frozen=True)
class Shape:
    """One answer's usage in provider-neutral counts: input not cached (``fresh``), cache reads,
    cache writes (5-minute, and long-lived: Anthropic's 1-hour, OpenAI's 12-hour), output with its
    reasoning part, and Gemini's tool-use prompt tokens (billed as input)."""

    name: str
    fresh: int = 1000
    read: int = 0
    write: int = 0
    write_long: int = 0
    output: int = 500
    reasoning: int = 0
    tool_use: int = 0
    drawn: int = 0  # of output: an image model's image tokens (billed at media_output)
    searches: int = 0  # Claude's web searches (server_tool_use.web_search_requests): $10 per 1,000
    usage: bool = True

    @property
    def prompt(self) -> int:
        return self.fresh + self.read + self.write + self.write_long + self.tool_use


PLAIN = Shape("plain")
CACHED = Shape("cache-read", read=2000)
WRITES = Shape("cache-write", read=300, write=700, write_long=400)
REASONING = Shape("reasoning", reasoning=200)
NO_USAGE = Shape("no-usage", usage=False)
# Gemini: thoughts, cached content and tool-use prompt tokens, alone and together
THOUGHTS = Shape("thoughts", reasoning=200)
GEMINI_CACHED = Shape("cached-content", read=2000)
TOOL_USE = Shape("tool-use-prompt", tool_use=150)
GEMINI_ALL = Shape("gemini-all", read=2000, reasoning=200, tool_use=150)

SHAPES = {
    "openai": [PLAIN, CACHED, WRITES, REASONING],
    # Claude reports no thinking count: its reasoning tokens are estimated from the thinking text
    # (4 characters a token, ``anthropic.with_thinking``), on every route alike, billed at the output rate
    "anthropic": [
        PLAIN,
        CACHED,
        WRITES,
        Shape("thinking", reasoning=-(-len(THINKING) // 4)),
        Shape("web-searches", searches=2),  # in message_delta's usage when streamed
    ],
    "gemini": [PLAIN, GEMINI_CACHED, THOUGHTS, TOOL_USE, GEMINI_ALL],
}


# --------------------------------------------------------------------------- the hand computation


def usd(model: str, rate: str) -> Decimal:
    """A rate of prices.json in USD per 1M tokens; cache reads and writes unpriced are at the input rate,
    image output unpriced at the output rate (``Price.from_usd``)."""
    fallback = {"cached_input": "input", "cache_write": "input", "media_output": "output"}
    rates = PRICES[model]
    return Decimal(rates[rate] if rate in rates else rates[fallback[rate]])


def hand_cost(model: str, shape: Shape) -> int:
    """The cost in µ¢ by pricing.py's rules, computed here from prices.json's dollars: each count at
    its rate (a long-lived write at twice the input rate unless priced apart; reasoning at the
    output rate unless priced apart; tool-use prompt tokens as input), one rounding, half up."""
    long_rate = usd(model, "cache_write_long") if "cache_write_long" in PRICES[model] else None
    long_rate = long_rate or max(usd(model, "cache_write"), 2 * usd(model, "input"))
    reasoning_rate = usd(model, "reasoning") if "reasoning" in PRICES[model] else usd(model, "output")
    dollars_per_m = (
        (shape.fresh + shape.tool_use) * usd(model, "input")
        + shape.read * usd(model, "cached_input")
        + shape.write * usd(model, "cache_write")
        + shape.write_long * long_rate
        + (shape.output - shape.reasoning - shape.drawn) * usd(model, "output")
        + shape.drawn * usd(model, "media_output")
        + shape.reasoning * reasoning_rate
    )
    search_dollars_per_m = shape.searches * Decimal("0.01") * 1_000_000  # a cent a search
    return int(((dollars_per_m + search_dollars_per_m) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def expected_trace(model: str, shape: Shape, reports_reasoning: bool = True) -> dict:
    """The usage columns and cost a trace of ``shape`` at ``model`` must hold."""
    return {
        "prompt_tokens": shape.prompt,
        "completion_tokens": shape.output,
        "cached_tokens": shape.read,
        "cache_write_tokens": shape.write + shape.write_long,
        "reasoning_tokens": shape.reasoning if reports_reasoning else 0,
        "usage_estimated": 0,
        "cost_uc": hand_cost(model, shape),
        "cost_status": "exact",
    }


def test_the_hand_computation_itself():
    # claude-haiku-4-5: $1 in, $0.10 read, $1.25 write, $5 out; a 1-hour write at 2 × $1.
    # 1000 × 1 + 300 × 0.10 + 700 × 1.25 + 400 × 2 + 500 × 5 = 1000 + 30 + 875 + 800 + 2500 = 5205 $/1M
    # → 5205 × 100 µ¢ = 520_500 µ¢
    assert hand_cost(CLAUDE, WRITES) == 520_500
    # gemini-2.5-flash-image: $0.30 in, $2.50 text out, $30 image out:
    # 1000 × 0.30 + 40 × 2.50 + 1290 × 30 = 300 + 100 + 38_700 = 39_100 $/1M → 3_910_000 µ¢
    assert hand_cost(IMAGE_MODEL, Shape("image", output=40 + DRAWN, drawn=DRAWN)) == 3_910_000
    # gemini-2.5-flash: $0.30 in, $0.03 cached, $2.50 out (thoughts too):
    # (1000 + 150) × 0.30 + 2000 × 0.03 + 500 × 2.50 = 345 + 60 + 1250 = 1655 → 165_500 µ¢
    assert hand_cost(GEMINI, GEMINI_ALL) == 165_500


# --------------------------------------------------------------------------- providers' answers


def openai_usage(shape: Shape, responses: bool = False) -> dict:
    """Chat Completions' usage (or the Responses API's names for the same counts)."""
    details: dict = {"cached_tokens": shape.read}
    if shape.write or shape.write_long:
        details["cache_write_tokens"] = shape.write + shape.write_long
        details["cache_write_tokens_details"] = {"ttl_12h_tokens": shape.write_long}
    out = {"reasoning_tokens": shape.reasoning}
    if responses:
        return {
            "input_tokens": shape.prompt,
            "input_tokens_details": details,
            "output_tokens": shape.output,
            "output_tokens_details": out,
            "total_tokens": shape.prompt + shape.output,
        }
    return {
        "prompt_tokens": shape.prompt,
        "completion_tokens": shape.output,
        "total_tokens": shape.prompt + shape.output,
        "prompt_tokens_details": details,
        "completion_tokens_details": out,
    }


def chat_whole(model: str, shape: Shape) -> dict:
    answer = {
        "id": "chatcmpl-r41",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
    }
    return {**answer, "usage": openai_usage(shape)} if shape.usage else answer


def chat_chunk(model: str, choices: list, usage: dict | None = None) -> str:
    chunk = {"id": "chatcmpl-r41", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model}
    chunk["choices"] = choices
    if usage is not None:
        chunk["usage"] = usage
    return json.dumps(chunk)


def chat_stream(model: str, shape: Shape, usage_on_every_chunk: bool = False) -> list[str]:
    """A streamed chat answer: its deltas, the finish, the usage chunk (include_usage), [DONE]. With
    ``usage_on_every_chunk``, as some OpenAI-compatible providers send it: usage (null, then the same
    final counts) on every chunk, and on the finish chunk as well as the usage chunk."""
    usage = openai_usage(shape) if shape.usage else None
    early = usage if usage_on_every_chunk else None
    deltas = [{"role": "assistant", "content": ""}] + [{"content": p} for p in TEXT_PIECES]
    events = [chat_chunk(model, [{"index": 0, "delta": d, "finish_reason": None}], early) for d in deltas]
    events.append(chat_chunk(model, [{"index": 0, "delta": {}, "finish_reason": "stop"}], early))
    if usage is not None:
        events.append(chat_chunk(model, [], usage))
    return events + ["[DONE]"]


def response_object(model: str, shape: Shape, status: str = "completed") -> dict:
    done = status == "completed"
    message = {
        "id": "msg_r41",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": TEXT, "annotations": []}],
    }
    return {
        "id": "resp_r41",
        "object": "response",
        "created_at": 1_700_000_000,
        "status": status,
        "model": model,
        "output": [message] if done else [],
        "usage": openai_usage(shape, responses=True) if done and shape.usage else None,
    }


def sse(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


def responses_stream(model: str, shape: Shape) -> list[str]:
    item = {"id": "msg_r41", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    events = [
        sse("response.created", {"response": response_object(model, shape, "in_progress")}),
        sse("response.output_item.added", {"output_index": 0, "item": item}),
        sse(
            "response.content_part.added",
            {"item_id": "msg_r41", "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": ""}},
        ),
    ]
    for piece in TEXT_PIECES:
        events.append(
            sse(
                "response.output_text.delta",
                {"item_id": "msg_r41", "output_index": 0, "content_index": 0, "delta": piece},
            )
        )
    whole = response_object(model, shape)
    events.append(sse("response.output_item.done", {"output_index": 0, "item": whole["output"][0]}))
    return events + [sse("response.completed", {"response": whole})]


def anthropic_usage(shape: Shape) -> dict:
    usage = {
        "input_tokens": shape.fresh,
        "cache_read_input_tokens": shape.read,
        "cache_creation_input_tokens": shape.write + shape.write_long,
        "output_tokens": shape.output,
    }
    if shape.searches:
        usage["server_tool_use"] = {"web_search_requests": shape.searches}
    if shape.write or shape.write_long:
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": shape.write,
            "ephemeral_1h_input_tokens": shape.write_long,
        }
    return usage


def thinks(shape: Shape) -> bool:
    return shape.name == "thinking"


def anthropic_whole(model: str, shape: Shape) -> dict:
    content = [{"type": "text", "text": TEXT}]
    if thinks(shape):
        content.insert(0, {"type": "thinking", "thinking": THINKING, "signature": "sig-r41"})
    answer = {
        "id": "msg_r41",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
    }
    return {**answer, "usage": anthropic_usage(shape)} if shape.usage else answer


def anthropic_stream(model: str, shape: Shape, delta_repeats_input: bool = False) -> list[str]:
    """message_start (the input counts, output 1), the blocks, message_delta (cumulative output; with
    ``delta_repeats_input`` the input and cache counts again, as Anthropic's newer streams send them)."""
    usage = anthropic_usage(shape)
    message = {"id": "msg_r41", "type": "message", "role": "assistant", "model": model, "content": []}
    if shape.usage:  # the searches come at the end
        message["usage"] = {**{k: v for k, v in usage.items() if k != "server_tool_use"}, "output_tokens": 1}
    events = [sse("message_start", {"message": message})]
    index = 0
    if thinks(shape):
        start = {"type": "thinking", "thinking": "", "signature": ""}
        events.append(sse("content_block_start", {"index": 0, "content_block": start}))
        for delta in ({"type": "thinking_delta", "thinking": THINKING}, {"type": "signature_delta", "signature": "s"}):
            events.append(sse("content_block_delta", {"index": 0, "delta": delta}))
        events.append(sse("content_block_stop", {"index": 0}))
        index = 1
    events.append(sse("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}}))
    for piece in TEXT_PIECES:
        events.append(sse("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": piece}}))
    events.append(sse("content_block_stop", {"index": index}))
    delta: dict = {"delta": {"stop_reason": "end_turn", "stop_sequence": None}}
    if shape.usage:
        final = {k: v for k, v in usage.items() if k in ("output_tokens", "server_tool_use")}
        delta["usage"] = usage if delta_repeats_input else final
    events.append(sse("message_delta", delta))
    return events + [sse("message_stop", {})]


def gemini_usage(shape: Shape, candidates: int | None = None) -> dict:
    visible = shape.output - shape.reasoning
    meta = {
        "promptTokenCount": shape.fresh + shape.read,
        "candidatesTokenCount": visible if candidates is None else candidates,
        "totalTokenCount": shape.prompt + shape.output,
    }
    if shape.read:
        meta["cachedContentTokenCount"] = shape.read
    if shape.reasoning:
        meta["thoughtsTokenCount"] = shape.reasoning
    if shape.tool_use:
        meta["toolUsePromptTokenCount"] = shape.tool_use
    return meta


def gemini_chunk(text: str, meta: dict | None, finish: bool, model: str = GEMINI) -> dict:
    candidate: dict = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        candidate["finishReason"] = "STOP"
    chunk: dict = {"candidates": [candidate], "modelVersion": model, "responseId": "r41"}
    if meta is not None:
        chunk["usageMetadata"] = meta
    return chunk


def gemini_whole(model: str, shape: Shape) -> dict:
    return gemini_chunk(TEXT, gemini_usage(shape) if shape.usage else None, finish=True, model=model)


def gemini_stream(model: str, shape: Shape) -> list[str]:
    """Gemini's chunks, each with the usage so far (cumulative: the candidates grow, the prompt repeats)."""
    last = len(TEXT_PIECES) - 1
    events = []
    for i, piece in enumerate(TEXT_PIECES):
        meta = gemini_usage(shape, None if i == last else i + 1) if shape.usage else None
        events.append(json.dumps(gemini_chunk(piece, meta, i == last, model)))
    return events


# --------------------------------------------------------------------------- routes


@dataclass(frozen=True)
class Route:
    """A client's API at a model: the path and body it sends, and the provider kind that answers."""

    name: str
    client: str  # chat, responses, messages, gemini
    model: str
    provider: str  # openai (chat), responses, anthropic, gemini

    @property
    def kind(self) -> str:
        return "openai" if self.provider == "responses" else self.provider


ROUTES = [
    Route("chat→gpt", "chat", GPT, "openai"),
    Route("responses→gpt", "responses", GPT, "responses"),
    Route("messages→claude", "messages", CLAUDE, "anthropic"),
    Route("gemini-native", "gemini", GEMINI, "gemini"),
    Route("gemini-native-array", "gemini-array", GEMINI, "gemini"),  # streamed as Google's JSON array
    Route("chat→claude", "chat", CLAUDE, "anthropic"),
    Route("chat→gemini", "chat", GEMINI, "gemini"),
    Route("messages→gpt", "messages", GPT, "openai"),
    Route("messages→gemini", "messages", GEMINI, "gemini"),
    Route("responses→claude", "responses", CLAUDE, "anthropic"),
    Route("responses→gemini", "responses", GEMINI, "gemini"),
]


def whole_reply(route: Route, shape: Shape) -> Reply:
    build = {"openai": chat_whole, "responses": response_object, "anthropic": anthropic_whole}
    return Reply(json=build.get(route.provider, gemini_whole)(route.model, shape))


def stream_reply(route: Route, shape: Shape) -> Reply:
    build = {"openai": chat_stream, "responses": responses_stream, "anthropic": anthropic_stream}
    return Reply(sse=build.get(route.provider, gemini_stream)(route.model, shape))


def request(server: ServerProcess, route: Route, stream: bool, **extra: object) -> tuple[int, bytes, str]:
    """The route's client request (``extra`` its other fields), read to its end: status, body, trace id."""
    hello = [{"role": "user", "content": "What is the answer?"}]
    if route.client.startswith("gemini"):
        sse = "?alt=sse" if route.client == "gemini" else ""
        method = f"streamGenerateContent{sse}" if stream else "generateContent"
        path = f"/v1beta/models/{route.model}:{method}"
        body: dict = {"contents": [{"role": "user", "parts": [{"text": "What is the answer?"}]}]}
    elif route.client == "chat":
        path, body = "/v1/chat/completions", {"model": route.model, "messages": hello, "stream": stream}
    elif route.client == "messages":
        path = "/v1/messages"
        body = {"model": route.model, "max_tokens": 1000, "messages": hello, "stream": stream}
    else:
        path, body = "/v1/responses", {"model": route.model, "input": "What is the answer?", "stream": stream}
    status, headers, data = server.request("POST", path, {**body, **extra})
    return status, data, headers.get("x-stockyard-trace-id", "")


def trace(server: ServerProcess, trace_id: str) -> dict:
    """The committed trace, as /api/traces/{id} shows it."""

    def read() -> dict | None:
        status, _, data = server.request("GET", f"/api/traces/{trace_id}", headers={"Authorization": f"Bearer {ADMIN}"})
        return json.loads(data) if status == 200 else None

    found = wait_for(read, what=f"trace {trace_id}")
    return found.get("trace", found)


COLUMNS = tuple(expected_trace(GPT, PLAIN))


def answered(server: ServerProcess, mock, route: Route, reply: Reply, stream: bool) -> dict:
    """Send the route's request answered by ``reply``; its trace's usage columns (and stream, status)."""
    mock.clear_replies()
    mock.enqueue(reply)
    status, data, trace_id = request(server, route, stream)
    assert status == 200, data[:500]
    assert TEXT_PIECES[1].encode() in data.replace(b"\\u2014", b"")  # the answer reached the client
    row = trace(server, trace_id)
    assert row["stream"] == int(stream)
    return {name: row[name] for name in COLUMNS}


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=mock.url,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
        STOCKYARD_ADMIN_KEY=ADMIN,
    )
    with served(pyz_path, tmp_path_factory, "review41", env, never_logged=(ANTHROPIC_KEY, GEMINI_KEY)) as srv:
        yield srv


MATRIX = [pytest.param(r, s, id=f"{r.name}-{s.name}") for r in ROUTES for s in SHAPES[r.kind]]


@pytest.mark.parametrize(("route", "shape"), MATRIX)
def test_streamed_and_whole_answers_cost_the_same(server, mock, route, shape):
    whole = answered(server, mock, route, whole_reply(route, shape), stream=False)
    streamed = answered(server, mock, route, stream_reply(route, shape), stream=True)
    expected = expected_trace(route.model, shape)
    assert (whole, streamed) == (expected, expected)


# --------------------------------------------------------------------------- usage sent twice


TWICE = [
    # OpenAI-compatible providers that put the (final) usage on every chunk when asked for it
    pytest.param(Route("chat→gpt", "chat", GPT, "openai"), "every-chunk", id="chat→gpt"),
    pytest.param(Route("messages→gpt", "messages", GPT, "openai"), "every-chunk", id="messages→gpt"),
    # Anthropic's message_delta repeating message_start's input and cache counts (cumulative usage)
    pytest.param(Route("messages→claude", "messages", CLAUDE, "anthropic"), "cumulative", id="messages→claude"),
    pytest.param(Route("chat→claude", "chat", CLAUDE, "anthropic"), "cumulative", id="chat→claude"),
    pytest.param(Route("responses→claude", "responses", CLAUDE, "anthropic"), "cumulative", id="responses→claude"),
]


@pytest.mark.parametrize(("route", "how"), TWICE)
def test_usage_sent_twice_is_counted_once(server, mock, route, how):
    shape = WRITES
    if how == "every-chunk":
        reply = Reply(sse=chat_stream(route.model, shape, usage_on_every_chunk=True))
    else:
        reply = Reply(sse=anthropic_stream(route.model, shape, delta_repeats_input=True))
    assert answered(server, mock, route, reply, stream=True) == expected_trace(route.model, shape)


# --------------------------------------------------------------------------- a usage-less answer


def sane_estimate(row: dict, route: Route) -> None:
    """An estimate from the text: the question's tokens in, about the answer's (4 characters a token) out."""
    assert (row["usage_estimated"], row["cost_status"]) == (1, "estimate"), row
    assert 0 < row["prompt_tokens"] < 200, row
    assert len(TEXT) // 4 <= row["completion_tokens"] <= len(TEXT), row
    assert (row["cached_tokens"], row["cache_write_tokens"], row["reasoning_tokens"]) == (0, 0, 0), row
    rates = PRICES[route.model]
    most = row["prompt_tokens"] * Decimal(rates["input"]) + row["completion_tokens"] * Decimal(rates["output"])
    assert 0 < row["cost_uc"] <= int(most * 100) + 1, row


@pytest.mark.parametrize("route", [pytest.param(r, id=r.name) for r in ROUTES])
def test_a_usage_less_answer_is_estimated_sanely_both_ways(server, mock, route):
    whole = answered(server, mock, route, whole_reply(route, NO_USAGE), stream=False)
    streamed = answered(server, mock, route, stream_reply(route, NO_USAGE), stream=True)
    sane_estimate(whole, route)
    sane_estimate(streamed, route)


# --------------------------------------------------------------------------- a stream that breaks


def broken(server: ServerProcess, mock, route: Route, reply: Reply) -> dict:
    """The route's streamed request whose provider breaks off as ``reply`` says: its trace."""
    mock.clear_replies()
    mock.enqueue(reply)
    status, data, trace_id = request(server, route, stream=True)
    assert status == 200, data[:500]
    return trace(server, trace_id)


CUT_AFTER_USAGE = [pytest.param(r, id=r.name) for r in ROUTES if r.provider in ("openai", "anthropic")]


@pytest.mark.parametrize("route", CUT_AFTER_USAGE)
def test_a_stream_cut_after_its_final_usage_bills_that_usage_once(server, mock, route):
    # everything but the stream's last event ([DONE], message_stop): the final usage came
    events = stream_reply(route, WRITES).sse
    row = broken(server, mock, route, Reply(sse=events, cut_after=len(events) - 1))
    assert row["outcome"] == "stream_broken"
    assert {name: row[name] for name in COLUMNS} == expected_trace(route.model, WRITES)


GEMINI_ROUTES = [pytest.param(r, id=r.name) for r in ROUTES if r.provider == "gemini"]


@pytest.mark.parametrize("route", GEMINI_ROUTES)
def test_a_gemini_stream_cut_before_its_last_chunk(server, mock, route):
    events = stream_reply(route, GEMINI_ALL).sse
    row = broken(server, mock, route, Reply(sse=events, cut_after=2))
    # the second chunk's counts so far (prompt, cache, tool use and thoughts whole; 2 candidates) are a
    # floor: the output is at least the count (202 with the thoughts) and at most the thoughts and the
    # text relayed ("The answer is forty-two, ": 7 tokens); never the prompt counted twice
    assert (row["outcome"], row["usage_estimated"], row["cost_status"]) == ("stream_broken", 1, "estimate")
    assert (row["prompt_tokens"], row["cached_tokens"], row["reasoning_tokens"]) == (3150, 2000, 200)
    assert 202 <= row["completion_tokens"] <= 207
    so_far = Shape("so far", read=2000, tool_use=150, output=row["completion_tokens"], reasoning=200)
    assert row["cost_uc"] == hand_cost(route.model, so_far)


# --------------------------------------------------------------------------- an image model's output


PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def image_usage(shape: Shape) -> dict:
    """usageMetadata of an image model's whole answer: its candidates' text and image tokens listed apart."""
    meta = gemini_usage(shape)
    text = {"modality": "TEXT", "tokenCount": shape.output - shape.drawn}
    meta["candidatesTokensDetails"] = [text, {"modality": "IMAGE", "tokenCount": shape.drawn}]
    return meta


def image_part() -> dict:
    return {"inlineData": {"mimeType": "image/png", "data": PIXEL}}


def image_whole(shape: Shape) -> dict:
    answer = gemini_chunk(TEXT, image_usage(shape), finish=True, model=IMAGE_MODEL)
    answer["candidates"][0]["content"]["parts"].append(image_part())
    return answer


def image_stream(shape: Shape) -> list[str]:
    """The text in chunks with the counts so far, then the image in a chunk of its own with the final counts."""
    so_far = [gemini_chunk(p, gemini_usage(shape, i + 1), False, IMAGE_MODEL) for i, p in enumerate(TEXT_PIECES)]
    last = gemini_chunk("", image_usage(shape), finish=True, model=IMAGE_MODEL)
    last["candidates"][0]["content"]["parts"] = [image_part()]
    return [json.dumps(chunk) for chunk in [*so_far, last]]


IMAGE_ROUTES = [
    pytest.param(Route(r.name, r.client, IMAGE_MODEL, "gemini"), id=r.name) for r in ROUTES if r.kind == "gemini"
]


@pytest.mark.parametrize("route", IMAGE_ROUTES)
def test_an_image_models_output_costs_the_same_streamed_and_whole(server, mock, route):
    shape = Shape("image", output=40 + DRAWN, drawn=DRAWN)
    whole = answered(server, mock, route, Reply(json=image_whole(shape)), stream=False)
    streamed = answered(server, mock, route, Reply(sse=image_stream(shape)), stream=True)
    assert (whole, streamed) == (expected_trace(IMAGE_MODEL, shape), expected_trace(IMAGE_MODEL, shape))


# --------------------------------------------------------------------------- what the client is told


def events_of(data: bytes) -> list[dict]:
    """The JSON objects of an SSE stream's data lines ([DONE] and comments left out)."""
    lines = [line[5:].strip() for line in data.decode().split("\n") if line.startswith("data:")]
    return [json.loads(line) for line in lines if line.startswith("{")]


def told_usage(route: Route, data: bytes, stream: bool) -> dict:
    """The usage the client was given: the whole answer's, or the stream's last (chat's usage chunk,
    message_delta's cumulative usage, response.completed's response's)."""
    if not stream:
        return json.loads(data)["usage"]
    found = [e.get("usage") or (e.get("response") or {}).get("usage") for e in events_of(data)]
    return [u for u in found if u][-1]


CACHE_WRITES_TOLD = [
    # chat → Claude: OpenAI's own field for cache writes (GPT-5.6's), beside the cache reads
    pytest.param(
        Route("chat→claude", "chat", CLAUDE, "anthropic"),
        lambda u: (u["prompt_tokens"], u["prompt_tokens_details"].get("cache_write_tokens")),
        (2400, 1100),
        id="chat→claude",
    ),
    # Responses → Claude (over chat): input_tokens_details.cache_write_tokens
    pytest.param(
        Route("responses→claude", "responses", CLAUDE, "anthropic"),
        lambda u: (u["input_tokens"], u["input_tokens_details"]["cache_write_tokens"]),
        (2400, 1100),
        id="responses→claude",
    ),
    # Messages → GPT: Anthropic counts cache writes apart from input_tokens, as it does cache reads
    pytest.param(
        Route("messages→gpt", "messages", GPT, "openai"),
        lambda u: (u["input_tokens"], u["cache_creation_input_tokens"], u["cache_read_input_tokens"]),
        (1000, 1100, 300),
        id="messages→gpt",
    ),
]


@pytest.mark.parametrize(("route", "read", "told"), CACHE_WRITES_TOLD)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_translated_answer_tells_the_client_its_cache_writes(server, mock, route, read, told, stream):
    mock.clear_replies()
    mock.enqueue(stream_reply(route, WRITES) if stream else whole_reply(route, WRITES))
    asked = {"stream_options": {"include_usage": True}} if stream and route.client == "chat" else {}
    status, data, _ = request(server, route, stream, **asked)
    assert status == 200, data[:500]
    assert read(told_usage(route, data, stream)) == told


def test_an_incomplete_response_costs_the_same_streamed_and_whole(server, mock):
    # a Responses answer cut at max_output_tokens: its usage on the response, whole or in response.incomplete
    route = Route("responses→gpt", "responses", GPT, "responses")
    ended = {**response_object(GPT, REASONING), "status": "incomplete"}
    ended["incomplete_details"] = {"reason": "max_output_tokens"}
    events = responses_stream(GPT, REASONING)[:-1]
    events.append(sse("response.incomplete", {"response": ended}))
    whole = answered(server, mock, route, Reply(json=ended), stream=False)
    streamed = answered(server, mock, route, Reply(sse=events), stream=True)
    assert (whole, streamed) == (expected_trace(GPT, REASONING), expected_trace(GPT, REASONING))


CLAUDE_ROUTES = [pytest.param(r, id=r.name) for r in ROUTES if r.provider == "anthropic"]


@pytest.mark.parametrize("route", CLAUDE_ROUTES)
def test_a_claude_stream_cut_before_its_message_delta(server, mock, route):
    # message_start (input and cache counts, output 1), the text block's start, two of its three deltas
    row = broken(server, mock, route, Reply(sse=stream_reply(route, WRITES).sse, cut_after=4))
    # the input exact, with its 5-minute and 1-hour writes; the output the text relayed
    # ("The answer is forty-two, ": 25 characters, 7 tokens), not message_start's placeholder 1
    so_far = Shape("so far", read=300, write=700, write_long=400, output=7)
    assert (row["outcome"], row["usage_estimated"], row["cost_status"]) == ("stream_broken", 1, "estimate")
    assert {name: row[name] for name in COLUMNS} == {
        **expected_trace(route.model, so_far),
        "usage_estimated": 1,
        "cost_status": "estimate",
    }

"""A translated stream, accumulated by the official SDK's own helper, is the same answer as the whole one.

For one provider answer — text split into chunks at odd places, 0–3 tool calls whose JSON arguments are cut
at any offset (inside an escape too), parallel calls interleaved, thinking with its signature, a refusal, a
finish reason of every kind, Gemini's images — each translated route is asked the same request twice through
a real server over the mock upstream: once whole (``create``) and once streamed through the SDK's stream
helper (openai ``chat.completions.stream`` → ``get_final_completion``, ``responses.stream`` →
``get_final_response``; anthropic ``messages.stream`` → ``get_final_message``). The two must be the same
answer: text, tool call ids, names and arguments (as JSON), reasoning, finish or stop reason and usage.

Routes (client API → provider): chat → Claude, chat → Gemini, Responses → Claude / Gemini / an
OpenAI-compatible chat provider (Groq), Messages → GPT / Gemini.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import openai
import pytest
from conftest import ServerProcess, mock_env, served
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mock_upstream import CREATED, Reply
from module_helpers import new_key

from stockyard.providers.reasoning import unpack

ADMIN = "admin-key-for-review41-streams-0123456789"
ANTHROPIC_KEY = "sk-ant-test-0123456789REVIEW41STREAMS"
GEMINI_KEY = "AIza-test-0123456789abcdefREVIEW41"
GROQ_KEY = "gsk-test-review41-streams-0123456789abcdef"
CLAUDE, GEMINI, GPT, LLAMA = "claude-haiku-4-5", "gemini-2.5-flash", "gpt-4o-mini", "llama-3.3-70b-versatile"
PROMPT, OUTPUT = 12, 9  # the provider's counts, in every answer
SIGNATURE = "EqQBCkYIBxgCKkBr41SignatureOfTheThinking=="
THOUGHT_SIGNATURE = "CiQBr41ThoughtSignatureFromGemini=="
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
TOOL_NAMES = ("get_weather", "search_docs", "write_file")
PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": True}

# text with what breaks a naive splitter: multi-byte characters (2, 3 and 4 bytes, a surrogate pair in
# UTF-16), quotes, backslashes, newlines and JSON's escapes written out
TEXT_ALPHABET = st.sampled_from(list('ab é€😀中\\"\n\t/') + ["\\u00e9", "</s>"])
ARG_VALUES = st.one_of(
    st.text(alphabet=st.sampled_from(list('xé€😀"\\\n/ ')), max_size=12),
    st.integers(-5, 10**6),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 9), max_size=3),
)


# --------------------------------------------------------------------------- the provider's answer


@dataclass
class Answer:
    """One answer, provider-neutral: what each provider's builders below write whole and streamed (each
    reads the fields its provider has: images are Gemini's, a refusal OpenAI chat's, …)."""

    text: str = ""
    thinking: str = ""
    calls: list[tuple[str, str, dict]] = field(default_factory=list)  # (id, name, arguments)
    finish: str = "stop"  # stop | length | content_filter (a call's stop is tool_calls)
    refusal: str = ""  # OpenAI chat's refusal (the other providers stop with content_filter)
    images: int = 0  # Gemini image parts, each in a chunk of its own
    seed: int = 0  # where the streamed pieces are cut
    interleave: bool = False  # OpenAI chat: parallel calls' argument fragments round-robin
    empty_text_block: bool = False  # Anthropic: an empty text block before the calls
    redacted: bool = False  # Anthropic: a redacted_thinking block after the thinking
    late_thinking: str = ""  # Anthropic: interleaved thinking, a second block after the text
    no_call_ids: bool = False  # Gemini: function calls without an id (Stockyard makes them)
    text_after_calls: str = ""  # Gemini, OpenAI chat: text after the calls
    cut_arguments: int = 0  # the last call's arguments cut this many characters short (an answer at its length)
    unindexed_calls: bool = (
        False  # OpenAI chat: each call whole in one delta without an ``index`` (Ollama, some proxies)
    )
    omitted_thinking: bool = False  # Anthropic: a thinking block with no text, its signature only
    reasoning_field: str = "reasoning_content"  # OpenAI chat: DeepSeek's field, or vLLM/Groq's ``reasoning``

    @property
    def chat_finish(self) -> str:
        return "tool_calls" if self.calls and self.finish == "stop" else self.finish


def pieces(text: str, rnd: random.Random, most: int = 4) -> list[str]:
    """``text`` cut at up to ``most`` random offsets (never an empty piece; none for no text)."""
    if not text:
        return []
    cuts = sorted(set(rnd.randint(1, len(text)) for _ in range(rnd.randint(0, most))) - {len(text)})
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def call_arguments(a: Answer, position: int) -> str:
    """A call's arguments as the provider sends them: the last one cut short when the answer was."""
    raw = arguments_json(a.calls[position][2])
    return raw[: len(raw) - a.cut_arguments] if a.cut_arguments and position == len(a.calls) - 1 else raw


def arguments_json(args: dict) -> str:
    """Arguments as providers write them: ASCII escapes (``\\u00e9``, surrogate pairs), so a cut
    falls inside an escape as often as not."""
    return json.dumps(args, ensure_ascii=True)


def sse(name: str | None, data: dict | str) -> str:
    body = data if isinstance(data, str) else json.dumps(data)
    return f"event: {name}\ndata: {body}\n\n" if name else f"data: {body}\n\n"


# Anthropic


ANTHROPIC_CACHE = {"cache_read_input_tokens": 40, "cache_creation_input_tokens": 7}
ANTHROPIC_STOPS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def anthropic_blocks(a: Answer) -> list[dict]:
    blocks: list[dict] = []
    if a.thinking:
        blocks.append({"type": "thinking", "thinking": a.thinking, "signature": SIGNATURE})
    if a.omitted_thinking:
        blocks.append({"type": "thinking", "thinking": "", "signature": SIGNATURE + "0"})
    if a.redacted:
        blocks.append({"type": "redacted_thinking", "data": "RURBQ1RFRC1yNDE="})
    if a.text or a.empty_text_block:
        blocks.append({"type": "text", "text": a.text})
    if a.late_thinking:
        blocks.append({"type": "thinking", "thinking": a.late_thinking, "signature": SIGNATURE + "2"})
    for ident, name, args in a.calls:
        blocks.append({"type": "tool_use", "id": ident, "name": name, "input": args})
    return blocks


def anthropic_whole(a: Answer, model: str) -> dict:
    return {
        "id": "msg_r41",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": anthropic_blocks(a),
        "stop_reason": ANTHROPIC_STOPS[a.chat_finish],
        "stop_sequence": None,
        "usage": {"input_tokens": PROMPT, "output_tokens": OUTPUT, **ANTHROPIC_CACHE},
    }


def anthropic_stream(a: Answer, model: str) -> list[str]:
    rnd = random.Random(a.seed)
    start = {**anthropic_whole(a, model), "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": PROMPT, "output_tokens": 1, **ANTHROPIC_CACHE}
    events = [sse("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(anthropic_blocks(a)):
        if block["type"] == "thinking":
            first = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": p} for p in pieces(block["thinking"], rnd)]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif block["type"] == "text":
            first = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in pieces(block["text"], rnd)]
        elif block["type"] == "redacted_thinking":
            first, deltas = block, []
        else:
            first = {**block, "input": {}}
            raw = arguments_json(block["input"]) if block["input"] else ""  # Claude streams no {} for no input
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *pieces(raw, rnd, 6)]]
        events.append(
            sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": first})
        )
        events += [
            sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas
        ]
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta = {"stop_reason": ANTHROPIC_STOPS[a.chat_finish], "stop_sequence": None}
    events.append(sse("message_delta", {"type": "message_delta", "delta": delta, "usage": {"output_tokens": OUTPUT}}))
    return events + [sse("message_stop", {"type": "message_stop"})]


# Gemini


GEMINI_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}


def gemini_usage(candidates: int) -> dict:
    total = PROMPT + candidates + 3
    return {
        "promptTokenCount": PROMPT,
        "candidatesTokenCount": candidates,
        "cachedContentTokenCount": 4,
        "thoughtsTokenCount": 3,
        "totalTokenCount": total,
    }


def gemini_call_parts(a: Answer) -> list[dict]:
    parts = []
    for position, (ident, name, args) in enumerate(a.calls):
        part: dict = {
            "functionCall": {"name": name, "args": args} if a.no_call_ids else {"id": ident, "name": name, "args": args}
        }
        if a.thinking and position == 0:  # Gemini signs the first call of a step it thought about
            part["thoughtSignature"] = THOUGHT_SIGNATURE
        parts.append(part)
    return parts


def gemini_chunk(parts: list[dict], model: str, finish: str | None = None, candidates: int = 1) -> dict:
    candidate: dict = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "usageMetadata": gemini_usage(candidates),
        "modelVersion": model,
        "responseId": "r41gemini",
    }


def gemini_whole(a: Answer, model: str) -> dict:
    parts: list[dict] = [{"text": a.thinking, "thought": True}] if a.thinking else []
    parts += [{"text": a.text}] if a.text else []
    parts += [{"inlineData": {"mimeType": "image/png", "data": PNG}} for _ in range(a.images)]
    parts += gemini_call_parts(a)
    parts += [{"text": a.text_after_calls}] if a.text_after_calls else []
    return gemini_chunk(parts, model, GEMINI_FINISH[a.finish], OUTPUT)


def gemini_stream(a: Answer, model: str) -> list[str]:
    rnd = random.Random(a.seed)
    chunks = [[{"text": p, "thought": True}] for p in pieces(a.thinking, rnd)]
    chunks += [[{"text": p}] for p in pieces(a.text, rnd)]
    chunks += [[{"inlineData": {"mimeType": "image/png", "data": PNG}}] for _ in range(a.images)]
    calls = gemini_call_parts(a)
    if calls and rnd.random() < 0.5:
        chunks.append(calls)  # Gemini sends parallel calls in one chunk, or one a chunk
    else:
        chunks += [[c] for c in calls]
    chunks += [[{"text": p}] for p in pieces(a.text_after_calls, rnd)]
    if not chunks:
        chunks = [[]]
    events = [sse(None, gemini_chunk(parts, model, None, i + 1)) for i, parts in enumerate(chunks[:-1])]
    return events + [sse(None, gemini_chunk(chunks[-1], model, GEMINI_FINISH[a.finish], OUTPUT))]


# OpenAI chat (GPT and OpenAI-compatible providers)


def openai_usage() -> dict:
    return {
        "prompt_tokens": PROMPT,
        "completion_tokens": OUTPUT,
        "total_tokens": PROMPT + OUTPUT,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 3},
    }


def openai_whole(a: Answer, model: str) -> dict:
    text = a.text + a.text_after_calls  # the chat shape keeps no order between text and calls
    message: dict = {"role": "assistant", "content": text or None, "refusal": a.refusal or None}
    if a.thinking:
        message[a.reasoning_field] = a.thinking
    if a.calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": call_arguments(a, position)}}
            for position, (i, n, _) in enumerate(a.calls)
        ]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": a.chat_finish}
    return {
        "id": "chatcmpl-r41",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [choice],
        "usage": openai_usage(),
    }


def openai_stream(a: Answer, model: str) -> list[str]:
    rnd = random.Random(a.seed)
    head = {"id": "chatcmpl-r41", "object": "chat.completion.chunk", "created": CREATED, "model": model}

    def chunk(delta: dict, finish: str | None = None) -> str:
        return sse(None, {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({a.reasoning_field: p}) for p in pieces(a.thinking, rnd)]
    events += [chunk({"content": p}) for p in pieces(a.text, rnd)]
    events += [chunk({"refusal": p}) for p in pieces(a.refusal, rnd)]
    per_call = []
    for position, (ident, name, _) in enumerate(a.calls):
        first = {"index": position, "id": ident, "type": "function", "function": {"name": name, "arguments": ""}}
        rest = [{"index": position, "function": {"arguments": p}} for p in pieces(call_arguments(a, position), rnd, 6)]
        per_call.append([first, *rest])
    if a.unindexed_calls:  # each call whole in one delta, none with an index
        order = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": call_arguments(a, p)}}
            for p, (i, n, _) in enumerate(a.calls)
        ]
    elif a.interleave:  # each call opened in turn, then their fragments round-robin
        order = [calls[0] for calls in per_call]
        tails = [calls[1:] for calls in per_call]
        while any(tails):
            order += [tail.pop(0) for tail in tails if tail]
    else:
        order = [d for calls in per_call for d in calls]
    events += [chunk({"tool_calls": [d]}) for d in order]
    events += [chunk({"content": p}) for p in pieces(a.text_after_calls, rnd)]
    events.append(chunk({}, a.chat_finish))
    events.append(sse(None, {**head, "choices": [], "usage": openai_usage()}))
    return events + ["data: [DONE]\n\n"]


# --------------------------------------------------------------------------- the routes


def chat_tools() -> list[dict]:
    return [{"type": "function", "function": {"name": n, "parameters": PARAMETERS}} for n in TOOL_NAMES]


def responses_tools() -> list[dict]:
    return [{"type": "function", "name": n, "parameters": PARAMETERS, "strict": False} for n in TOOL_NAMES]


def messages_tools() -> list[dict]:
    return [{"name": n, "input_schema": PARAMETERS} for n in TOOL_NAMES]


def parsed(arguments: str) -> Any:
    """Arguments as JSON, or as they came when they are not (an answer cut at its length)."""
    try:
        return json.loads(arguments)
    except ValueError:
        return ("not JSON", arguments)


def unindexed(fields: dict) -> dict:
    """``fields`` without the ``index`` of list entries: a stream numbers the entries of a list it sends
    in pieces (``thinking_blocks``, ``images``), since the SDK's accumulator merges list entries by it;
    a whole answer has no pieces to number (Stockyard drops the index when the client sends one back)."""
    return {
        name: [{k: v for k, v in e.items() if k != "index"} if isinstance(e, dict) else e for e in value]
        if isinstance(value, list)
        else value
        for name, value in fields.items()
    }


def chat_summary(completion: Any) -> dict:
    """What a chat answer says, the same whole or accumulated: extra fields (reasoning, thinking
    blocks, images) as they are."""
    choice = completion.choices[0]
    message = choice.message
    extra = unindexed(message.model_dump(exclude_none=True))
    for known in ("content", "refusal", "role", "tool_calls", "parsed", "annotations", "function_call", "audio"):
        extra.pop(known, None)
    calls = [
        (c.id, c.function.name, parsed(c.function.arguments), (c.model_extra or {}).get("extra_content"))
        for c in message.tool_calls or []
    ]
    usage = completion.usage
    return {
        "text": message.content or "",
        "refusal": message.refusal,
        "calls": calls,
        "extra": extra,
        "finish": choice.finish_reason,
        "usage": usage.model_dump(exclude_none=True) if usage else None,
    }


def responses_summary(response: Any) -> dict:
    items = []
    for item in response.output:
        if item.type == "message":
            parts = [(p.type, getattr(p, "text", None) or getattr(p, "refusal", None)) for p in item.content]
            items.append(("message", item.status, parts))
        elif item.type == "function_call":
            items.append(("function_call", item.status, item.call_id, item.name, parsed(item.arguments)))
        elif item.type == "reasoning":
            summary = [s.text for s in item.summary]
            items.append(("reasoning", summary, item.encrypted_content))
        else:
            items.append((item.type, item.model_dump(exclude={"id"})))
    usage = response.usage
    return {
        "items": items,
        "status": response.status,
        "incomplete": response.incomplete_details.reason if response.incomplete_details else None,
        "text": response.output_text,
        "usage": usage.model_dump(exclude_none=True) if usage else None,
    }


def messages_summary(message: Any) -> dict:
    return {
        "content": [block.model_dump() for block in message.content],
        "stop_reason": message.stop_reason,
        "stop_sequence": message.stop_sequence,
        "usage": message.usage.model_dump(exclude_none=True),
    }


def ask_chat(server: ServerProcess, key: str, model: str, streamed: bool) -> dict:
    client = server.openai(key)
    asked = {"model": model, "messages": [{"role": "user", "content": "Go"}], "tools": chat_tools()}
    if not streamed:
        return chat_summary(client.chat.completions.create(**asked))
    with client.chat.completions.stream(**asked, stream_options={"include_usage": True}) as stream:
        try:
            return chat_summary(stream.get_final_completion())
        except (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError) as stopped:
            return chat_summary(stopped.completion)  # the helper raises at these ends, with what it accumulated


def ask_responses(server: ServerProcess, key: str, model: str, streamed: bool) -> dict:
    client = server.openai(key)
    asked = {"model": model, "input": "Go", "tools": responses_tools(), "store": False}
    if not streamed:
        return responses_summary(client.responses.create(**asked))
    with client.responses.stream(**asked) as stream:
        last = list(stream)[-1]
    # the helper's final response is a completed one's only; an incomplete one is its last event's
    return responses_summary(stream.get_final_response() if last.type == "response.completed" else last.response)


def ask_messages(server: ServerProcess, key: str, model: str, streamed: bool) -> dict:
    client = server.anthropic(key)
    asked = {"model": model, "max_tokens": 256, "messages": [{"role": "user", "content": "Go"}]}
    asked["tools"] = messages_tools()
    if not streamed:
        return messages_summary(client.messages.create(**asked))
    with client.messages.stream(**asked) as stream:
        return messages_summary(stream.get_final_message())


@dataclass(frozen=True)
class Route:
    name: str
    model: str
    whole: Callable[[Answer, str], dict]
    stream: Callable[[Answer, str], list[str]]
    ask: Callable[[ServerProcess, str, str, bool], dict]


ROUTES = {
    r.name: r
    for r in (
        Route("chat>claude", CLAUDE, anthropic_whole, anthropic_stream, ask_chat),
        Route("chat>gemini", GEMINI, gemini_whole, gemini_stream, ask_chat),
        Route("responses>claude", CLAUDE, anthropic_whole, anthropic_stream, ask_responses),
        Route("responses>gemini", GEMINI, gemini_whole, gemini_stream, ask_responses),
        Route("responses>groq", LLAMA, openai_whole, openai_stream, ask_responses),
        Route("messages>gpt", GPT, openai_whole, openai_stream, ask_messages),
        Route("messages>gemini", GEMINI, gemini_whole, gemini_stream, ask_messages),
    )
}


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=mock.url,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
        GROQ_API_KEY=GROQ_KEY,
        GROQ_BASE_URL=mock.url + "/v1",
        STOCKYARD_ADMIN_KEY=ADMIN,
    )
    keys = (ANTHROPIC_KEY, GEMINI_KEY, GROQ_KEY)
    with served(pyz_path, tmp_path_factory, "r41streams", env, never_logged=keys) as srv:
        yield srv


@pytest.fixture(scope="module")
def key(server) -> str:
    return new_key(server, ADMIN)[0]


def both_ways(server: ServerProcess, mock, key: str, route: Route, answer: Answer) -> tuple[dict, dict]:
    """The route's answer to one request asked whole, then streamed, the provider answering ``answer`` both times."""
    mock.clear_replies()
    mock.enqueue(Reply(json=route.whole(answer, route.model)))
    whole = route.ask(server, key, route.model, False)
    mock.enqueue(Reply(sse=route.stream(answer, route.model)))
    streamed = route.ask(server, key, route.model, True)
    assert mock.pending() == 0
    return whole, streamed


def assert_same(server: ServerProcess, mock, key: str, route: Route, answer: Answer) -> dict:
    whole, streamed = both_ways(server, mock, key, route, answer)
    assert streamed == whole, answer
    return whole


# --------------------------------------------------------------------------- generated answers


def tool_calls(draw: Callable, count: int) -> list[tuple[str, str, dict]]:
    calls = []
    for position in range(count):
        args = draw(st.dictionaries(st.sampled_from(["city", "q", "path", "é", 'a"b', "n"]), ARG_VALUES, max_size=3))
        calls.append((f"call_r41_{position}", draw(st.sampled_from(TOOL_NAMES)), args))
    return calls


@st.composite
def answers(draw: Callable) -> Answer:
    return Answer(
        text=draw(st.lists(TEXT_ALPHABET, max_size=8).map("".join)),
        thinking=draw(st.sampled_from(["", 'Weigh it: é€😀 "q" \\ done.'])),
        calls=tool_calls(draw, draw(st.integers(0, 3))),
        finish=draw(st.sampled_from(["stop", "stop", "length", "content_filter"])),
        images=draw(st.integers(0, 2)),
        seed=draw(st.integers(0, 2**16)),
        interleave=draw(st.booleans()),
        empty_text_block=draw(st.booleans()),
        refusal=draw(st.sampled_from(["", "", "Non, désolé 😀."])),
        redacted=draw(st.booleans()),
        reasoning_field=draw(st.sampled_from(["reasoning_content", "reasoning"])),
    )


@pytest.mark.parametrize("route_name", sorted(ROUTES))
@settings(
    max_examples=10,  # each example is two requests through a server; the differences found are pinned below
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(answer=answers())
def test_streamed_answer_accumulates_to_the_whole_one(server, mock, key, route_name, answer):
    route = ROUTES[route_name]
    assert_same(server, mock, key, route, answer)


TABLE = {
    "text": Answer(text='Hé€😀 "x" \\ \n', seed=3),
    "two calls": Answer(
        text="On it.",
        calls=[("call_a", "get_weather", {"city": "Zürich"}), ("call_b", "search_docs", {"q": '"é"'})],
        seed=5,
    ),
    "call without arguments": Answer(calls=[("call_a", "get_weather", {})]),
    "thinking and text": Answer(text="Yes.", thinking="Hmm é 😀", seed=7),
    "thinking and calls": Answer(
        thinking="Hmm",
        calls=[("call_a", "get_weather", {"city": "P"}), ("call_b", "write_file", {"path": "/x"})],
        seed=9,
    ),
    "length": Answer(text="cut sho", finish="length", seed=2),
    "content filter": Answer(text="", finish="content_filter"),
    "nothing": Answer(),
    # found by the generated answers, pinned: each differed before its fix
    "two images in two chunks": Answer(text="Here.", images=2),  # the chat SDK raised: images had no index
    "interleaved parallel calls": Answer(  # Responses lost, Messages split the fragments after the 2nd began
        calls=[("call_a", "get_weather", {"city": "Zürich"}), ("call_b", "write_file", {"path": "/a\\b"})],
        interleave=True,
        seed=11,
    ),
    "interleaved calls without arguments": Answer(
        calls=[("call_a", "get_weather", {}), ("call_b", "get_weather", {})], interleave=True
    ),
    "thinking, text and a signed call": Answer(  # Responses: Gemini's signature in a reasoning item of its own
        text="a", thinking="Weigh it.", calls=[("call_a", "get_weather", {})]
    ),
    "refusal": Answer(refusal="I can't help with that.", seed=4),
    "empty text block before a call": Answer(calls=[("call_a", "search_docs", {"q": "x"})], empty_text_block=True),
}


@pytest.mark.parametrize("case", sorted(TABLE))
@pytest.mark.parametrize("route_name", sorted(ROUTES))
def test_pinned_answers(server, mock, key, route_name, case):
    assert_same(server, mock, key, ROUTES[route_name], TABLE[case])


# --------------------------------------------------------------------------- differences by design
#
# The whole answer is translated from one chat message, which keeps no order between its text, its
# reasoning and its calls; the stream keeps the provider's order. So where a provider's order is not
# "reasoning, text, calls", the Messages and Responses streams say it in that order and the whole
# answer in the chat shape's. Ids Stockyard makes (Gemini's calls without one) are new for each answer.


def text_first(summary: dict) -> dict:
    """A Messages or Responses summary with its text joined into its first text block or message item."""
    if "content" in summary:
        blocks = summary["content"]
        texts = [b for b in blocks if b["type"] == "text"]
        if len(texts) > 1:
            joined = {**texts[0], "text": "".join(b["text"] for b in texts)}
            blocks = [joined if b is texts[0] else b for b in blocks if b["type"] != "text" or b is texts[0]]
        return {**summary, "content": blocks}
    messages = [item for item in summary["items"] if item[0] == "message"]
    if len(messages) > 1:
        joined = ("message", "completed", [("output_text", "".join(p[1] for m in messages for p in m[2]))])
        items = [
            joined if item is messages[0] else item
            for item in summary["items"]
            if item[0] != "message" or item is messages[0]
        ]
        summary = {**summary, "items": items}
    return summary


def one_reasoning(summary: dict) -> dict:
    """A Responses summary with its reasoning items joined into the first (their summaries and thinking blocks)."""
    items = summary["items"]
    thoughts = [item for item in items if item[0] == "reasoning"]
    blocks = [b for item in thoughts for b in unpack(item[2])["thinking_blocks"]]
    joined = ("reasoning", ["".join(t for item in thoughts for t in item[1])], blocks)
    kept = [joined if item is thoughts[0] else item for item in items if item[0] != "reasoning" or item is thoughts[0]]
    return {**summary, "items": kept}


def made_ids(summary: dict) -> tuple[dict, list[str]]:
    """A summary with the call ids Stockyard made taken out, and those ids."""
    text = json.dumps(summary)
    ids = re.findall(r"call_[0-9a-f]{24}", text)
    for n, ident in enumerate(ids):
        text = text.replace(ident, f"made_{n}")
    return json.loads(text), ids


def test_gemini_call_ids_are_made_for_each_answer(server, mock, key):
    answer = Answer(calls=[("x", "get_weather", {"a": 1}), ("y", "search_docs", {})], no_call_ids=True)
    for name in ("chat>gemini", "responses>gemini", "messages>gemini"):
        whole, streamed = both_ways(server, mock, key, ROUTES[name], answer)
        (whole, whole_ids), (streamed, streamed_ids) = made_ids(whole), made_ids(streamed)
        assert streamed == whole, name
        assert len(set(whole_ids + streamed_ids)) == 4, name  # two a call; none twice, none shared


@pytest.mark.parametrize("route_name", ["messages>gemini", "messages>gpt", "responses>gemini", "responses>groq"])
def test_text_after_the_calls_streams_in_its_place(server, mock, key, route_name):
    answer = Answer(text="Before.", calls=[("call_a", "get_weather", {})], text_after_calls="After.")
    whole, streamed = both_ways(server, mock, key, ROUTES[route_name], answer)
    assert streamed != whole and text_first(streamed) == whole
    kinds = [b["type"] for b in streamed["content"]] if "content" in streamed else [i[0] for i in streamed["items"]]
    assert kinds == (["text", "tool_use", "text"] if "content" in streamed else ["message", "function_call", "message"])


def test_claudes_interleaved_thinking_streams_as_reasoning_items_in_their_places(server, mock, key):
    answer = Answer(text="Let me check.", thinking="T1", late_thinking="T2", calls=[("call_a", "get_weather", {})])
    whole, streamed = both_ways(server, mock, key, ROUTES["responses>claude"], answer)
    assert [i[0] for i in streamed["items"]] == ["reasoning", "message", "reasoning", "function_call"]
    assert [i[0] for i in whole["items"]] == ["reasoning", "message", "function_call"]
    assert one_reasoning(streamed) == one_reasoning(whole)
    chat_whole, chat_streamed = both_ways(server, mock, key, ROUTES["chat>claude"], answer)
    assert chat_streamed == chat_whole  # the chat shape has one reasoning text and one list of blocks both ways
    assert chat_whole["extra"]["reasoning_content"] == "T1T2"


@pytest.mark.parametrize("route_name", sorted(ROUTES))
def test_redacted_thinking_and_the_reasoning_field(server, mock, key, route_name):
    route = ROUTES[route_name]
    for answer in (
        Answer(text="ok", thinking="T", redacted=True, calls=[("call_a", "get_weather", {"a": 1})]),
        Answer(text="ok", thinking="T é", reasoning_field="reasoning"),
    ):
        assert_same(server, mock, key, route, answer)


def test_arguments_cut_at_the_length_limit(server, mock, key):
    """A call cut by the length limit: the Responses answer has the same unparsable arguments both
    ways. Through the Anthropic SDK the stream relays the fragments as they came and the SDK's
    partial parse completes what it can, where the whole answer's truncated JSON is no input ({});
    both say ``max_tokens``."""
    answer = Answer(calls=[("call_a", "get_weather", {"city": "Paris", "n": 1})], finish="length", cut_arguments=4)
    whole, streamed = both_ways(server, mock, key, ROUTES["responses>groq"], answer)
    assert streamed == whole and whole["items"][0][4] == ("not JSON", '{"city": "Paris", "n"')
    whole, streamed = both_ways(server, mock, key, ROUTES["messages>gpt"], answer)
    assert [b["input"] for b in whole["content"]] == [{}] and whole["stop_reason"] == "max_tokens"
    assert [b["input"] for b in streamed["content"]] == [{"city": "Paris"}] and streamed["stop_reason"] == "max_tokens"


def test_an_openai_refusal_reaches_the_anthropic_sdk_as_claudes_do(server, mock, key):
    """OpenAI's ``refusal`` was dropped on the way to a Messages client (an empty answer, ``end_turn``),
    whole and streamed: it is the answer's text, and the stop reason ``refusal``, as Claude's refusals are."""
    whole = assert_same(server, mock, key, ROUTES["messages>gpt"], Answer(refusal="Non, désolé 😀.", seed=1))
    assert whole["content"] == [{"type": "text", "text": "Non, désolé 😀.", "citations": None}]
    assert whole["stop_reason"] == "refusal"


SEARCHING = "claude-haiku-4-5-websearch"  # the mock's Claude answers with web searches, their results and citations


@pytest.mark.parametrize("model", [SEARCHING, SEARCHING + "-pause2"])  # a turn paused twice, continued by Stockyard
def test_claudes_web_search_streams_as_it_answers_whole(server, mock, key, model):
    """Claude's searches (``server_tool_use`` and its result block) and the citations of its text: the
    chat answer's ``web_search_calls`` and ``annotations``, the Responses ``web_search_call`` items and
    ``url_citation`` annotations, the same accumulated from the stream as whole."""
    mock.clear_replies()
    client = server.openai(key)
    asked = {"model": model, "messages": [{"role": "user", "content": "Weather?"}], "web_search_options": {}}
    whole = client.chat.completions.create(**asked).choices[0].message.model_dump(exclude_none=True)
    with client.chat.completions.stream(**asked) as stream:
        streamed = unindexed(stream.get_final_completion().choices[0].message.model_dump(exclude_none=True))
    streamed["annotations"] = [unindexed(a) if isinstance(a, dict) else a for a in streamed.get("annotations", [])]
    streamed.pop("parsed", None)
    assert streamed == whole and whole["web_search_calls"] and whole["annotations"]
    asked = {"model": model, "input": "Weather?", "tools": [{"type": "web_search"}], "store": False}
    whole = client.responses.create(**asked)
    with client.responses.stream(**asked) as stream:
        streamed = stream.get_final_response()
    # by design as for text after calls: the stream keeps Claude's order (its text before the searches
    # is a message item of its own); the whole answer, made of one chat message, has the searches first
    searches = [item.model_dump(exclude={"id"}) for item in whole.output if item.type == "web_search_call"]
    assert [item.type for item in whole.output] == ["web_search_call"] * len(searches) + ["message"]
    assert [item.type for item in streamed.output][:2] == ["message", "web_search_call"] and len(searches) >= 2
    assert [item.model_dump(exclude={"id"}) for item in streamed.output if item.type == "web_search_call"] == searches
    assert streamed.output_text == whole.output_text
    assert cited(streamed) == cited(whole) and cited(whole)


def cited(response: Any) -> list[tuple[str, str]]:
    """Each url_citation's cited text (its indices are into its own part's text) and URL."""
    return [
        (part.text[a.start_index : a.end_index], a.url)
        for item in response.output
        if item.type == "message"
        for part in item.content
        for a in getattr(part, "annotations", None) or []
    ]


@pytest.mark.parametrize("route_name", ["messages>gpt", "responses>groq"])
def test_calls_sent_whole_without_an_index(server, mock, key, route_name):
    """Each call whole in one delta and none with an ``index``: the second call was taken for more of the
    first (Messages lost it, Responses joined both calls' arguments into one)."""
    answer = Answer(
        calls=[("call_a", "get_weather", {"a": 1}), ("call_b", "search_docs", {"q": "x"})], unindexed_calls=True
    )
    whole = assert_same(server, mock, key, ROUTES[route_name], answer)
    assert len(whole["content" if "content" in whole else "items"]) == 2


def test_thinking_with_its_text_omitted(server, mock, key):
    """Claude's thinking block with no text, its signature only: no reasoning text, its block kept, both ways."""
    answer = Answer(text="x", omitted_thinking=True, calls=[("call_a", "get_weather", {"a": 1})])
    for name in ("chat>claude", "responses>claude"):
        assert_same(server, mock, key, ROUTES[name], answer)


def test_gemini_keeps_one_call_both_ways_when_parallel_calls_are_off(server, mock, key):
    """``parallel_tool_calls: false``: Gemini cannot be told, so Stockyard keeps the first call — of the
    whole answer, and of the stream whether the calls come in one chunk or one a chunk."""
    answer = Answer(calls=[("call_a", "get_weather", {"a": 1}), ("call_b", "search_docs", {})])
    client = server.openai(key)
    asked = {"model": GEMINI, "messages": [{"role": "user", "content": "Go"}], "tools": chat_tools()}
    asked["parallel_tool_calls"] = False
    mock.clear_replies()
    mock.enqueue(Reply(json=gemini_whole(answer, GEMINI)))
    whole = chat_summary(client.chat.completions.create(**asked))
    assert [c[:3] for c in whole["calls"]] == [("call_a", "get_weather", {"a": 1})]
    for seed in range(4):  # both ways of sending the calls (see gemini_stream)
        mock.enqueue(Reply(sse=gemini_stream(Answer(calls=answer.calls, seed=seed), GEMINI)))
        with client.chat.completions.stream(**asked, stream_options={"include_usage": True}) as stream:
            assert chat_summary(stream.get_final_completion()) == whole


# --------------------------------------------------------------------------- a long call in many pieces


def _call_order_cpu(fragments: list[str], interleaved: bool) -> float:
    """CPU seconds ``CallOrder`` takes for one call's ``fragments`` (and a second call that begins
    after the first's opening delta and waits for it, when ``interleaved``)."""
    import time

    from stockyard.providers.chatshape import CallOrder

    order = CallOrder()
    start = time.process_time()
    out = order.take([{"index": 0, "id": "call_a", "function": {"name": "write", "arguments": ""}}])
    if interleaved:
        out += order.take([{"index": 1, "id": "call_b", "function": {"name": "read", "arguments": "{}"}}])
    for piece in fragments:
        out += order.take([{"index": 0, "function": {"arguments": piece}}])
    out += order.rest()
    spent = time.process_time() - start
    assert [d["index"] for d in out[-1:]] == [1 if interleaved else 0]  # the waiting call came last
    assert "".join(d["function"]["arguments"] for d in out if d["index"] == 0) == "".join(fragments)
    return spent


@pytest.mark.perf
@pytest.mark.parametrize("interleaved", [False, True], ids=["one call", "a call waiting"])
def test_a_long_tool_call_in_small_pieces_costs_about_its_size(interleaved: bool) -> None:
    """A coding agent's file write is one tool call of hundreds of KB of arguments, streamed in fragments
    of a few characters. ``CallOrder`` kept the current call's arguments as one string grown by ``+=`` (a
    copy per fragment: ~5x the yardstick below for 400 KB, growing with the square of the size) and, while
    another call waited, parsed all of them again at every fragment (~360x for 200 KB). Now the fragments
    are joined and parsed only when the last one ends a JSON object: about one plain pass over them."""
    import time

    arguments = json.dumps({"path": "big.py", "content": "x = 1\n" * 66_000})  # ~400 KB
    fragments = [arguments[i : i + 5] for i in range(0, len(arguments), 5)]
    start = time.process_time()
    for _ in range(3):  # the yardstick: each fragment as a delta, the deltas joined back, the whole parsed
        deltas = [{"index": 0, "function": {"arguments": piece}} for piece in fragments]
        json.loads("".join(d["function"]["arguments"] for d in deltas))
    yardstick = (time.process_time() - start) / 3
    spent = min(_call_order_cpu(fragments, interleaved) for _ in range(3))
    assert spent < 4 * yardstick, f"{spent:.3f} s for the call against {yardstick:.4f} s for a pass over it"

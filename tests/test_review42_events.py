"""The streams Stockyard writes when it translates obey their APIs' event grammar, not just their final answer.

Coding agents read streams strictly: Codex CLI parses every Responses API event and expects the documented
order; Claude Code and the Anthropic SDK's accumulator expect Anthropic's. For many provider answers (text,
several tool calls, interleaved ones, thinking with its signature, a web search, a refusal, a length cut, a
content filter, an empty answer, the provider's error mid-stream, a cut connection) each translated route's
raw SSE, read from a real server over the mock upstream, is held to a small checker of its grammar:

- Responses (OpenAI's OpenAPI spec, the ``openai`` SDK's ``types/responses/*event*.py``): ``check_responses``;
- Messages (Anthropic's streaming docs, the ``anthropic`` SDK's stream types): ``check_messages``;
- OpenAI chat chunks written from Claude and Gemini: ``check_chat``.

Routes (client API → provider): Responses → Claude / Gemini / an OpenAI-compatible chat provider (Groq),
Messages → GPT / Gemini, chat → Claude / Gemini. The provider answers are test_review41_streams' builders.
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import pydantic
import pytest
from anthropic.types import RawMessageStreamEvent
from conftest import ServerProcess
from hypothesis import HealthCheck, given, settings
from mock_upstream import Reply
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent
from test_review41_streams import (  # noqa: F401 (server, key: the fixtures, the same providers)
    CLAUDE,
    GEMINI,
    GPT,
    LLAMA,
    Answer,
    answers,
    anthropic_stream,
    chat_tools,
    gemini_stream,
    key,
    messages_tools,
    openai_stream,
    responses_tools,
    server,
    sse,
)

SEARCHING = "claude-haiku-4-5-websearch"  # the mock's Claude searches twice and cites what it found


# --------------------------------------------------------------------------- reading SSE


def sse_events(body: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of each SSE event in ``body``; comments and events without data left out."""
    events = []
    for block in body.decode().replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((name, "\n".join(data)))
    return events


def parsed_events(body: bytes) -> list[tuple[str | None, dict]]:
    """Each event's data as a JSON object (every event of these streams is one; chat's ``[DONE]`` aside)."""
    out = []
    for name, data in sse_events(body):
        value = data if data == "[DONE]" else json.loads(data)
        assert data == "[DONE]" or isinstance(value, dict), data
        out.append((name, value))
    return out


def by_type(union: Any) -> dict[str, Any]:
    """The SDK's event classes of a union, by the ``type`` each one's Literal names."""
    members = typing.get_args(typing.get_args(union)[0] if typing.get_origin(union) is typing.Annotated else union)
    return {name: cls for cls in members for name in typing.get_args(cls.model_fields["type"].annotation)}


# each event as the official SDK's own type for it (its required fields, their types)
SDK_TYPES = {"responses": by_type(ResponseStreamEvent), "messages": by_type(RawMessageStreamEvent)}


def sdk_typed(api: str, data: dict) -> None:
    """``data`` is the SDK's event type for ``api`` its ``type`` names (a short message when it is not)."""
    cls = ChatCompletionChunk if api == "chat" else SDK_TYPES[api].get(data.get("type"))
    assert cls is not None, f"no {api} event of the SDK's is {data.get('type')!r}"
    try:
        cls.model_validate(data)
    except pydantic.ValidationError as invalid:
        raise AssertionError(f"not the SDK's {cls.__name__}: {invalid}") from None


# --------------------------------------------------------------------------- the Responses grammar


TERMINAL = {"response.completed": "completed", "response.incomplete": "incomplete", "response.failed": "failed"}


@dataclass
class OpenItem:
    """An output item between its ``output_item.added`` and ``.done``, as its events built it."""

    item: dict
    parts: list[dict]  # content parts (message) or summary parts (reasoning), as the deltas made them
    part_open: bool = False
    arguments: str = ""  # a function call's joined deltas (or a custom tool call's input)
    arguments_done: bool = False  # its function_call_arguments.done came
    steps: list[str] = field(default_factory=list)  # a web search's or an image's in_progress, …, completed


def check_responses(body: bytes, usage_sent: bool = True) -> dict:
    """Hold a Responses stream to its grammar; return the terminal event's response (``usage_sent``
    False: the provider's stream may have ended before its usage, which a completed one then lacks)."""
    events = parsed_events(body)
    assert events, body
    for name, data in events:
        assert name == data.get("type"), (name, data)  # the SSE event name is the event's type
        sdk_typed("responses", data)
    numbers = [data["sequence_number"] for _, data in events]
    assert numbers[0] in (0, 1) and numbers == list(range(numbers[0], numbers[0] + len(events))), numbers
    kinds = [name for name, _ in events]
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds
    first = events[0][1]["response"]
    assert first["status"] == "in_progress" and first["output"] == [], first
    terminal = [i for i, kind in enumerate(kinds) if kind in TERMINAL]
    assert terminal == [len(events) - 1], kinds  # one terminal event, the last
    items: list[OpenItem] = []
    done: list[dict] = []
    open_index: int | None = None  # our translation streams one item at a time, as OpenAI does
    for kind, data in events[2:-1]:
        assert kind not in ("response.created", "response.in_progress"), kind
        if kind == "response.output_item.added":
            assert open_index is None, f"item {open_index} still open when another was added"
            assert data["output_index"] == len(items), data
            assert data["item"].get("id"), data
            assert data["item"].get("status", "in_progress") == "in_progress", data
            items.append(OpenItem(dict(data["item"]), []))
            open_index = len(items) - 1
            continue
        assert data.get("output_index") == open_index is not None, (kind, data, open_index)
        current = items[open_index]
        if "item_id" in data or kind != "response.output_item.done":
            assert data["item_id"] == current.item["id"], (kind, data, current.item)
        if kind == "response.output_item.done":
            check_item_done(current, data["item"])
            done.append(data["item"])
            open_index = None
        else:
            check_item_event(current, kind, data)
    kind, data = events[-1]
    if open_index is not None:  # only a failed response leaves an item undone: a call (or compaction) cut short
        assert kind == "response.failed", f"item {open_index} never done"
        assert items[open_index].item["type"] in ("function_call", "custom_tool_call", "compaction"), items[-1]
    response = data["response"]
    assert response["id"] == first["id"] and response["status"] == TERMINAL[kind], (kind, response)
    assert response["output"] == done, (response["output"], done)
    if kind == "response.failed":
        assert response["error"]["code"] and response["error"]["message"], response
    elif usage_sent or response["usage"] is not None:
        usage = response["usage"]
        assert isinstance(usage["input_tokens"], int) and isinstance(usage["output_tokens"], int), usage
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"], usage
    if kind == "response.incomplete":
        assert response["incomplete_details"]["reason"] in ("max_output_tokens", "content_filter"), response
    return response


def check_item_event(current: OpenItem, kind: str, data: dict) -> None:
    """One event inside an open item: of the item's own kind, its parts added, filled and done in order."""
    item_type = current.item["type"]
    if kind in ("response.content_part.added", "response.reasoning_summary_part.added"):
        assert item_type == ("message" if kind == "response.content_part.added" else "reasoning"), (kind, item_type)
        assert not current.part_open, kind
        position = data["content_index" if item_type == "message" else "summary_index"]
        assert position == len(current.parts), (kind, data)
        part = data["part"]
        assert part["type"] in ({"output_text", "refusal"} if item_type == "message" else {"summary_text"}), part
        assert part.get("text", part.get("refusal")) == "", part
        current.parts.append(dict(part))
        current.part_open = True
        return
    if kind in (
        "response.output_text.delta",
        "response.output_text.done",
        "response.output_text.annotation.added",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
    ):
        assert item_type == "message" and current.part_open, (kind, current)
        assert data["content_index"] == len(current.parts) - 1, (kind, data)
        check_part_event(current.parts[-1], kind, data)
        current.part_open = kind != "response.content_part.done"
        return
    if kind.startswith("response.reasoning_summary_"):
        assert item_type == "reasoning" and current.part_open, (kind, current)
        assert data["summary_index"] == len(current.parts) - 1, (kind, data)
        part = current.parts[-1]
        if kind == "response.reasoning_summary_text.delta":
            part["text"] += data["delta"]
        elif kind == "response.reasoning_summary_text.done":
            assert data["text"] == part["text"], (data, part)
        else:
            assert kind == "response.reasoning_summary_part.done" and data["part"] == part, (kind, data, part)
            current.part_open = False
        return
    if kind.startswith("response.function_call_arguments."):
        assert item_type == "function_call", (kind, item_type)
        if kind.endswith(".delta"):
            assert isinstance(data["delta"], str) and data["delta"], data
            current.arguments += data["delta"]
        else:
            assert kind.endswith(".done") and data["arguments"] == current.arguments, (data, current.arguments)
            current.arguments_done = True
        return
    if kind.startswith("response.web_search_call."):
        assert item_type == "web_search_call", (kind, item_type)
        current.steps.append(kind.rsplit(".", 1)[1])
        return
    if kind.startswith("response.custom_tool_call_input."):
        assert item_type == "custom_tool_call", (kind, item_type)
        if kind.endswith(".delta"):
            current.arguments += data["delta"]
        else:
            assert data["input"] == current.arguments, (data, current.arguments)
        return
    if kind.startswith("response.image_generation_call."):
        assert item_type == "image_generation_call", (kind, item_type)
        current.steps.append(kind.rsplit(".", 1)[1])
        return
    if kind == "response.compaction.compacting":
        assert item_type == "compaction", (kind, item_type)
        return
    raise AssertionError(f"an event the checker does not know: {kind} {data}")


def check_part_event(part: dict, kind: str, data: dict) -> None:
    """An event of an open message content part: deltas of the part's own type, done with what they made."""
    key = "refusal" if part["type"] == "refusal" else "text"
    if kind == "response.content_part.done":
        assert data["part"] == part, (data["part"], part)
        return
    if kind == "response.output_text.annotation.added":
        assert part["type"] == "output_text", (kind, part)
        assert data["annotation_index"] == len(part["annotations"]), (data, part)
        part["annotations"].append(data["annotation"])
        return
    assert kind.startswith("response.output_text." if key == "text" else "response.refusal."), (kind, part)
    if kind.endswith(".delta"):
        assert isinstance(data["delta"], str) and data["delta"], data
        part[key] += data["delta"]
    else:
        assert data[key] == part[key], (data, part)


def check_item_done(current: OpenItem, item: dict) -> None:
    """``output_item.done``: no part open, and the item says what its events built."""
    assert not current.part_open, current
    assert item["id"] == current.item["id"] and item["type"] == current.item["type"], (item, current.item)
    assert item.get("status", "completed") in ("completed", "incomplete"), item
    if item["type"] == "message":
        assert item["content"] == current.parts, (item["content"], current.parts)
    elif item["type"] == "reasoning":
        assert item["summary"] == current.parts, (item["summary"], current.parts)
    elif item["type"] == "function_call":
        assert current.arguments_done, "function call done without function_call_arguments.done"
        assert item["arguments"] == current.arguments, (item, current.arguments)
        assert item["call_id"] and item["name"], item
    elif item["type"] == "web_search_call":
        assert current.steps == ["in_progress", "searching", "completed"], current
    elif item["type"] == "custom_tool_call":
        assert item["input"] == current.arguments, (item, current.arguments)
    elif item["type"] == "image_generation_call":  # an image the model drew: whole when done
        assert current.steps == ["in_progress", "generating", "completed"], current
        assert isinstance(item["result"], str) and item["result"], item


# --------------------------------------------------------------------------- the Messages grammar


DELTAS = {
    "text": {"text_delta", "citations_delta"},
    "tool_use": {"input_json_delta"},
    "server_tool_use": {"input_json_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
    "redacted_thinking": set(),
    "web_search_tool_result": set(),
}
STOP_REASONS = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"}


def check_messages(body: bytes) -> dict:
    """Hold a Messages stream to its grammar; return the message its events build (content, stop reason)."""
    events = [(name, data) for name, data in parsed_events(body) if name != "ping"]
    assert events, body
    for name, data in events:
        assert name == data.get("type"), (name, data)
        if name != "error":  # Anthropic's error event is its error body, not a message event
            sdk_typed("messages", data)
    kinds = [name for name, _ in events]
    assert kinds[0] in ("message_start", "error"), kinds
    ends = [i for i, kind in enumerate(kinds) if kind in ("message_stop", "error")]
    assert ends == [len(events) - 1], kinds  # one end (message_stop, or an error), the last event
    if kinds[0] == "error":
        assert len(events) == 1, kinds
        return {"error": events[0][1]["error"]}
    message = dict(events[0][1]["message"])
    assert message["type"] == "message" and message["role"] == "assistant" and message["id"], message
    assert message["content"] == [] and message["stop_reason"] is None, message
    assert isinstance(message["usage"]["input_tokens"], int), message
    blocks: list[dict] = []
    open_block: dict | None = None
    stopped = False  # message_delta came
    for kind, data in events[1:]:
        if kind == "error":
            assert data["error"]["type"] and data["error"]["message"], data
            message["error"] = data["error"]
            return message
        assert kind != "message_start", kinds
        if kind == "content_block_start":
            assert open_block is None and not stopped, (kind, data)
            assert data["index"] == len(blocks), (data, len(blocks))
            block = dict(data["content_block"])
            assert block["type"] in DELTAS, block
            blocks.append(block)
            open_block = {"block": block, "json": "", "deltas": []}
        elif kind == "content_block_delta":
            assert open_block is not None and data["index"] == len(blocks) - 1, (data, open_block)
            delta = data["delta"]
            assert delta["type"] in DELTAS[open_block["block"]["type"]], (delta, open_block["block"])
            take_delta(open_block, delta)
        elif kind == "content_block_stop":
            assert open_block is not None and data["index"] == len(blocks) - 1, (data, open_block)
            close_block(open_block)
            open_block = None
        elif kind == "message_delta":
            assert open_block is None and not stopped, (kind, data)
            stopped = True
            assert data["delta"]["stop_reason"] in STOP_REASONS, data
            assert isinstance(data["usage"]["output_tokens"], int), data
            message["stop_reason"] = data["delta"]["stop_reason"]
            message["stop_sequence"] = data["delta"].get("stop_sequence")
        else:
            assert kind == "message_stop" and stopped, (kind, kinds)
    message["content"] = blocks
    for block in blocks:  # a call's arguments parse, unless the answer was cut at its length
        if block["type"] == "tool_use" and message["stop_reason"] != "max_tokens":
            assert isinstance(block["input"], dict), block
    return message


def take_delta(open_block: dict, delta: dict) -> None:
    """A delta into the open block (a thinking block's signature comes last, after its text)."""
    block = open_block["block"]
    assert "signature_delta" not in open_block["deltas"], (delta, "after the signature")
    open_block["deltas"].append(delta["type"])
    if delta["type"] == "text_delta":
        block["text"] += delta["text"]
    elif delta["type"] == "citations_delta":
        block["citations"] = [*(block.get("citations") or []), delta["citation"]]
    elif delta["type"] == "input_json_delta":
        assert isinstance(delta["partial_json"], str), delta
        open_block["json"] += delta["partial_json"]
    elif delta["type"] == "thinking_delta":
        block["thinking"] += delta["thinking"]
    else:
        assert isinstance(delta["signature"], str) and delta["signature"], delta
        block["signature"] = delta["signature"]


def close_block(open_block: dict) -> None:
    """A block whole: a call's joined ``partial_json`` is its input (none: ``{}``), a thinking block is signed."""
    block = open_block["block"]
    if block["type"] in ("tool_use", "server_tool_use"):
        assert block["input"] == {} and block["name"] and block["id"], block  # its input comes in the deltas
        try:
            block["input"] = json.loads(open_block["json"]) if open_block["json"] else {}
        except ValueError:
            block["input"] = ("not JSON", open_block["json"])
    if block["type"] == "thinking":  # signed last; by design unsigned when the provider's reasoning has no signature
        assert open_block["deltas"][-1:] == ["signature_delta"] or block["signature"] == "", block


# --------------------------------------------------------------------------- the chat chunk grammar


def check_chat(body: bytes, usage_asked: bool) -> dict:
    """Hold an OpenAI chat chunk stream to its grammar; return what it built (text, calls, finish, usage)."""
    events = parsed_events(body)
    assert events, body
    if "error" in events[-1][1]:  # a broken stream ends with the error, never a made-up [DONE]
        assert all(data != "[DONE]" for _, data in events), events
        chunks, error = [data for _, data in events[:-1]], events[-1][1]["error"]
    else:
        assert events[-1][1] == "[DONE]" and all(d != "[DONE]" for _, d in events[:-1]), events
        chunks, error = [data for _, data in events[:-1]], None
    assert all(name is None for name, _ in events), events
    assert len({c["id"] for c in chunks}) <= 1 and len({c["created"] for c in chunks}) <= 1, chunks
    assert all(c["object"] == "chat.completion.chunk" for c in chunks), chunks
    for c in chunks:
        sdk_typed("chat", c)
    assert len({c["model"] for c in chunks}) <= 1, chunks
    choices: dict[int, dict] = {}  # each choice's text, reasoning, calls and finish reason
    usage = None
    for position, chunk in enumerate(chunks):
        if chunk.get("usage") is not None:
            assert usage_asked and position == len(chunks) - 1 and chunk["choices"] == [], chunk
            usage = chunk["usage"]
            continue
        assert chunk["choices"], chunk
        for choice in chunk["choices"]:
            first = choice["index"] not in choices
            built = choices.setdefault(choice["index"], {"text": "", "reasoning": "", "calls": [], "finish": None})
            assert built["finish"] is None, ("a chunk after the choice's finish reason", chunk)
            take_chat_delta(built, choice["delta"], first)
            built["finish"] = choice.get("finish_reason")
    assert sorted(choices) == list(range(len(choices))), choices
    if error is None:
        assert choices and all(c["finish"] is not None for c in choices.values()), chunks
        assert (usage is not None) == usage_asked, chunks  # the usage chunk when asked, only then
    first_choice = choices.get(0, {"text": "", "reasoning": "", "calls": [], "finish": None})
    return {**first_choice, "usage": usage, "error": error, "choices": choices}


def take_chat_delta(built: dict, delta: dict, first: bool) -> None:
    """One delta: the role first, a new call's index the next one with its id, type and name."""
    if first:
        assert delta.get("role") == "assistant", delta
    else:
        assert "role" not in delta, delta
    built["text"] += delta.get("content") or ""
    built["reasoning"] += delta.get("reasoning_content") or ""
    for call in delta.get("tool_calls") or []:
        calls = built["calls"]
        assert call["index"] in range(len(calls) + 1), (call, len(calls))  # dense from 0
        if call["index"] == len(calls):
            assert call["id"] and call["type"] == "function" and call["function"]["name"], call
            calls.append({"id": call["id"], "name": call["function"]["name"], "arguments": ""})
        else:
            assert "id" not in call and "name" not in call.get("function", {}), call
        calls[call["index"]]["arguments"] += call["function"].get("arguments") or ""


# --------------------------------------------------------------------------- routes and answers


@dataclass(frozen=True)
class Route:
    name: str
    path: str
    model: str
    stream: Callable[[Answer, str], list[str]]  # the provider's stream for an answer
    body: Callable[[str], dict]  # the client's request for a model
    check: Callable[[bytes], dict]
    provider: str  # anthropic | gemini | openai: the shape of its mid-stream error


def responses_body(model: str) -> dict:
    return {"model": model, "input": "Go", "tools": responses_tools(), "store": False, "stream": True}


def messages_body(model: str) -> dict:
    asked = {"model": model, "max_tokens": 256, "messages": [{"role": "user", "content": "Go"}]}
    return {**asked, "tools": messages_tools(), "stream": True}


def chat_body(model: str) -> dict:
    asked = {"model": model, "messages": [{"role": "user", "content": "Go"}], "tools": chat_tools()}
    return {**asked, "stream": True, "stream_options": {"include_usage": True}}


def chat_check(body: bytes) -> dict:
    return check_chat(body, usage_asked=True)


ROUTES = {
    r.name: r
    for r in (
        Route(
            "responses>claude", "/v1/responses", CLAUDE, anthropic_stream, responses_body, check_responses, "anthropic"
        ),
        Route("responses>gemini", "/v1/responses", GEMINI, gemini_stream, responses_body, check_responses, "gemini"),
        Route("responses>groq", "/v1/responses", LLAMA, openai_stream, responses_body, check_responses, "openai"),
        Route("messages>gpt", "/v1/messages", GPT, openai_stream, messages_body, check_messages, "openai"),
        Route("messages>gemini", "/v1/messages", GEMINI, gemini_stream, messages_body, check_messages, "gemini"),
        Route("chat>claude", "/v1/chat/completions", CLAUDE, anthropic_stream, chat_body, chat_check, "anthropic"),
        Route("chat>gemini", "/v1/chat/completions", GEMINI, gemini_stream, chat_body, chat_check, "gemini"),
    )
}

ANSWERS = {
    "text": Answer(text='Hé€😀 "x" \\ \n', seed=3),
    "two calls": Answer(
        text="On it.",
        calls=[("call_a", "get_weather", {"city": "Zürich"}), ("call_b", "search_docs", {"q": '"é"'})],
        seed=5,
    ),
    "three interleaved calls": Answer(
        calls=[
            ("call_a", "get_weather", {"city": "Zürich"}),
            ("call_b", "write_file", {"path": "/a\\b"}),
            ("call_c", "search_docs", {}),
        ],
        interleave=True,
        seed=11,
    ),
    "thinking, text and calls": Answer(
        text="Let me see.", thinking="Weigh it é 😀", calls=[("call_a", "get_weather", {"city": "P"})], seed=7
    ),
    "thinking with a redacted block": Answer(text="ok", thinking="T", redacted=True, seed=2),
    "interleaved thinking": Answer(text="a", thinking="T1", late_thinking="T2", calls=[("call_a", "get_weather", {})]),
    "thinking only its signature": Answer(text="x", omitted_thinking=True),
    "text after the calls": Answer(text="Before.", calls=[("call_a", "get_weather", {})], text_after_calls="After."),
    "refusal": Answer(refusal="I can't help with that.", finish="content_filter", seed=4),
    "content filter": Answer(text="", finish="content_filter"),
    "length": Answer(text="cut sho", finish="length", seed=2),
    "arguments cut at the length": Answer(
        calls=[("call_a", "get_weather", {"city": "Paris", "n": 1})], finish="length", cut_arguments=4
    ),
    "nothing": Answer(),
    "empty text block": Answer(calls=[("call_a", "search_docs", {"q": "x"})], empty_text_block=True),
}


def streamed(server: ServerProcess, key: str, route: Route, model: str | None = None) -> bytes:
    """The route's raw stream for its request (the provider's answer already queued)."""
    status, headers, body = server.request("POST", route.path, route.body(model or route.model), server.auth(key))
    assert status == 200 and headers["content-type"].startswith("text/event-stream"), (status, body[:500])
    return body


def ask(server: ServerProcess, mock, key: str, route: Route, events: list[str], **reply: Any) -> bytes:
    mock.clear_replies()
    mock.enqueue(Reply(sse=events, **reply))
    body = streamed(server, key, route)
    assert mock.pending() == 0
    return body


@pytest.mark.parametrize("case", sorted(ANSWERS))
@pytest.mark.parametrize("route_name", sorted(ROUTES))
def test_each_answer_streams_in_its_apis_grammar(server, mock, key, route_name, case):
    route = ROUTES[route_name]
    route.check(ask(server, mock, key, route, route.stream(ANSWERS[case], route.model)))


@pytest.mark.parametrize("route_name", sorted(ROUTES))
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(answer=answers())
def test_generated_answers_stream_in_grammar(server, mock, key, route_name, answer):
    """test_review41_streams' generated answers (text cut anywhere, 0-3 calls, interleaved or not,
    thinking, images, refusals, every finish reason), each route's stream held to its grammar."""
    route = ROUTES[route_name]
    route.check(ask(server, mock, key, route, route.stream(answer, route.model)))


@pytest.mark.parametrize("route_name", sorted(ROUTES))
def test_the_providers_error_as_its_first_event(server, mock, key, route_name):
    """The provider's error before any answer: an error in the client's API shape (the status, or the
    stream's own error event once it began), never a stream that ends unsaid."""
    route = ROUTES[route_name]
    mock.clear_replies()
    mock.enqueue(Reply(sse=[PROVIDER_ERRORS[route.provider]]))
    status, headers, body = server.request("POST", route.path, route.body(route.model), server.auth(key))
    if status == 200:
        assert_failed(route, body)
    else:
        error = json.loads(body)
        assert status >= 400 and (
            error["error"]["message"] if route.path != "/v1/messages" else error["type"] == "error"
        ), body


# --------------------------------------------------------------------------- the provider fails mid-stream


RICH = Answer(
    text="Let me check é.",
    thinking="Weigh it.",
    calls=[("call_a", "get_weather", {"city": "Zürich"}), ("call_b", "search_docs", {"q": "x"})],
    seed=13,
)
PROVIDER_ERRORS = {
    "anthropic": sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    "gemini": sse(None, {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}),
    "openai": sse(None, {"error": {"message": "The server had an error.", "type": "server_error", "code": None}}),
}


FINISHED = re.compile(r'"finish_reason":\s*"')  # a chat chunk that ends its answer


def assert_finished(route: Route, body: bytes) -> None:
    """The stream obeys its grammar and ends as a whole answer does (completed, a stop reason, no error)."""
    if route.check is check_responses:
        built = check_responses(body, usage_sent=False)
        assert built["status"] in ("completed", "incomplete"), built
    else:
        built = route.check(body)
        assert not built.get("error") and built.get("stop_reason"), built


def assert_failed(route: Route, body: bytes) -> None:
    """The stream obeys its grammar and ends failed: ``response.failed``, Anthropic's ``error``, chat's error."""
    built = route.check(body)
    if route.check is check_responses:
        assert built["status"] == "failed", built
    else:
        assert built.get("error"), built


@pytest.mark.parametrize("route_name", sorted(ROUTES))
def test_the_providers_error_mid_stream_ends_it_in_grammar(server, mock, key, route_name):
    """The provider's own error event after each prefix of an answer (in a block, between blocks, in a
    call's arguments): the client's stream is still well formed, and ends failed."""
    route = ROUTES[route_name]
    events = route.stream(RICH, route.model)
    for cut in range(1, len(events) - 1):
        assert_failed(route, ask(server, mock, key, route, [*events[:cut], PROVIDER_ERRORS[route.provider]]))


@pytest.mark.parametrize("route_name", sorted(ROUTES))
def test_a_cut_connection_mid_stream_ends_it_in_grammar(server, mock, key, route_name):
    """The provider's connection closed after each prefix of an answer: well formed, and ended failed."""
    route = ROUTES[route_name]
    events = route.stream(RICH, route.model)
    for cut in range(1, len(events) - 1):
        assert_failed(route, ask(server, mock, key, route, events, cut_after=cut))


# --------------------------------------------------------------------------- Codex's tools, web search, no usage asked


PATCH = "*** Begin Patch\n*** Add File: a.py\n+print('é \"x\"')\n*** End Patch\n"
CODEX_TOOLS = [
    {"type": "custom", "name": "apply_patch", "description": "Edit files.", "format": {"type": "text"}},
    {"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {}}, "strict": False},
]
CODEX_ANSWERS = {
    "a patch": Answer(text="Patching.", calls=[("call_p", "apply_patch", {"input": PATCH})], seed=21),
    "a patch and a command, interleaved": Answer(
        calls=[("call_p", "apply_patch", {"input": PATCH}), ("call_s", "shell", {"command": ["ls", "-l"]})],
        interleave=True,
        seed=22,
    ),
}


@pytest.mark.parametrize("case", sorted(CODEX_ANSWERS))
@pytest.mark.parametrize("route_name", ["responses>claude", "responses>gemini", "responses>groq"])
def test_codex_custom_tool_calls_stream_in_grammar(server, mock, key, route_name, case):
    """Codex CLI's ``apply_patch`` is a custom tool: its call streams as a ``custom_tool_call`` item
    (``custom_tool_call_input.delta``/``.done``), its input the patch, next to a function call."""
    route = ROUTES[route_name]
    answer = CODEX_ANSWERS[case]
    mock.clear_replies()
    mock.enqueue(Reply(sse=route.stream(answer, route.model)))
    body = {**responses_body(route.model), "tools": CODEX_TOOLS}
    status, _, raw = server.request("POST", route.path, body, server.auth(key))
    assert status == 200, raw[:500]
    response = check_responses(raw)
    calls = [item for item in response["output"] if item["type"] in ("custom_tool_call", "function_call")]
    assert [(c["type"], c["name"]) for c in calls][:1] == [("custom_tool_call", "apply_patch")], calls
    assert calls[0]["input"] == PATCH and len(calls) == len(answer.calls), calls


@pytest.mark.parametrize(
    "model", [SEARCHING, SEARCHING + "-pause2", SEARCHING + "-pause7"]
)  # paused twice (continued), 7 times (past MAX_CONTINUATIONS: incomplete)
def test_claudes_web_search_streams_in_grammar(server, mock, key, model):
    """Claude's searches, their results and the citations of its text: ``web_search_call`` items and
    ``url_citation`` annotations (Responses), ``web_search_calls`` and ``annotations`` (chat)."""
    mock.clear_replies()
    asked = {"model": model, "input": "Weather?", "tools": [{"type": "web_search"}], "store": False, "stream": True}
    status, _, raw = server.request("POST", "/v1/responses", asked, server.auth(key))
    assert status == 200, raw[:500]
    response = check_responses(raw)
    assert response["status"] == ("incomplete" if "pause7" in model else "completed"), response["status"]
    kinds = [item["type"] for item in response["output"]]
    assert kinds.count("web_search_call") >= 2 and "message" in kinds, kinds
    cited = [
        a for item in response["output"] if item["type"] == "message" for p in item["content"] for a in p["annotations"]
    ]
    assert cited and all(a["type"] == "url_citation" for a in cited), cited
    asked = {"model": model, "messages": [{"role": "user", "content": "Weather?"}], "web_search_options": {}}
    asked = {**asked, "stream": True, "stream_options": {"include_usage": True}}
    status, _, raw = server.request("POST", "/v1/chat/completions", asked, server.auth(key))
    assert status == 200, raw[:500]
    built = check_chat(raw, usage_asked=True)
    assert built["finish"] == ("length" if "pause7" in model else "stop") and built["text"], built


@pytest.mark.parametrize("route_name", ["chat>claude", "chat>gemini"])
def test_chat_without_usage_asked_has_no_usage_chunk(server, mock, key, route_name):
    route = ROUTES[route_name]
    mock.clear_replies()
    mock.enqueue(Reply(sse=route.stream(ANSWERS["two calls"], route.model)))
    body = {k: v for k, v in chat_body(route.model).items() if k != "stream_options"}
    status, _, raw = server.request("POST", route.path, body, server.auth(key))
    assert status == 200, raw[:500]
    built = check_chat(raw, usage_asked=False)
    assert built["finish"] == "tool_calls" and len(built["calls"]) == 2, built


@pytest.mark.parametrize("route_name", sorted(ROUTES))
def test_a_stream_that_ends_early_ends_in_grammar(server, mock, key, route_name):
    """The provider's stream ends cleanly after each prefix of an answer, before its end (Claude's
    ``message_stop``, Gemini's finish reason, chat's ``[DONE]``): the client's stream ended where the
    provider's did, no terminal event, no error (Responses over Claude and Groq, Messages over GPT,
    chat over Claude). Now it is well formed and ends failed, and the trace says the stream broke — but
    for a chat provider's stream cut after its answer's ``finish_reason``: only the ``[DONE]`` is missing
    (a lax OpenAI-compatible server), and it ends as a whole answer."""
    route = ROUTES[route_name]
    events = route.stream(RICH, route.model)
    for cut in range(1, len(events)):
        body = ask(server, mock, key, route, events[:cut])
        if route.provider == "openai" and any(FINISHED.search(e) for e in events[:cut]):
            assert_finished(route, body)  # the answer finished: a lax server's missing [DONE] is no failure
        else:
            assert_failed(route, body)
    mock.clear_replies()
    mock.enqueue(Reply(sse=events[:3]))
    status, headers, body = server.request("POST", route.path, route.body(route.model), server.auth(key))
    assert status == 200, body
    assert_failed(route, body)
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["outcome"] == "stream_broken" and "incomplete_stream" in trace["error_type"], trace


@pytest.mark.parametrize("route_name", ["responses>claude", "responses>gemini", "responses>groq"])
def test_a_compaction_streams_in_grammar(server, mock, key, route_name):
    """Codex CLI's compaction (its input ends with a ``compaction_trigger``): one ``compaction`` item,
    added, ``response.compaction.compacting`` as the summary comes, done with its token at the end."""
    route = ROUTES[route_name]
    mock.clear_replies()
    mock.enqueue(Reply(sse=route.stream(Answer(text="The user asked for é; done.", seed=5), route.model)))
    trigger = [{"type": "message", "role": "user", "content": "Go"}, {"type": "compaction_trigger"}]
    body = {**responses_body(route.model), "input": trigger}
    status, _, raw = server.request("POST", route.path, body, server.auth(key))
    assert status == 200, raw[:500]
    response = check_responses(raw)
    assert [item["type"] for item in response["output"]] == ["compaction"], response
    assert response["output"][0]["encrypted_content"], response


def test_a_failed_compaction_leaves_its_item_undone_by_design(server, mock, key):
    """By design, as for a tool call cut short: a compaction the provider breaks ends ``response.failed``
    with no output, its item added (the ``compacting`` events name it) and never done. Done, it would
    carry an empty token, and Codex keeps every item done in its history to send back."""
    route = ROUTES["responses>groq"]
    events = route.stream(Answer(text="The user asked for é; done.", seed=5), route.model)
    mock.clear_replies()
    mock.enqueue(Reply(sse=[*events[:3], PROVIDER_ERRORS["openai"]]))
    trigger = [{"type": "message", "role": "user", "content": "Go"}, {"type": "compaction_trigger"}]
    status, _, raw = server.request(
        "POST", route.path, {**responses_body(route.model), "input": trigger}, server.auth(key)
    )
    response = check_responses(raw)
    kinds = [data["type"] for _, data in parsed_events(raw)]
    assert status == 200 and kinds[2] == "response.output_item.added" and "response.compaction.compacting" in kinds
    assert response["status"] == "failed" and response["output"] == [], response


@pytest.mark.parametrize("route_name", ["responses>claude", "responses>groq"])  # Gemini sends a call whole
def test_a_stream_broken_mid_call_never_does_the_call(server, mock, key, route_name):
    """The provider's error in a call's arguments: the message before it is done (completed), the call
    added but never done and not in the failed response's output (Codex runs a call once it is done).
    Broken in the text, the message is done ``incomplete`` and is the output (it was in the output,
    ``incomplete``, never done)."""
    route = ROUTES[route_name]
    answer = Answer(text="On it.", calls=[("call_a", "write_file", {"path": "/tmp/x", "body": "long"})], seed=3)
    events = route.stream(answer, route.model)
    fragments = [n for n, e in enumerate(events) if '"partial_json": "{' in e or '"arguments": "{' in e]
    raw = ask(server, mock, key, route, [*events[: fragments[0] + 1], PROVIDER_ERRORS[route.provider]])
    response = check_responses(raw)
    assert [(i["type"], i["status"]) for i in response["output"]] == [("message", "completed")], response["output"]
    added = [data["item"]["type"] for _, data in parsed_events(raw) if data["type"] == "response.output_item.added"]
    assert added == ["message", "function_call"], added
    text = [n for n, e in enumerate(events) if "text_delta" in e or ('"content": "' in e and '"content": ""' not in e)]
    raw = ask(server, mock, key, route, [*events[: text[0] + 1], PROVIDER_ERRORS[route.provider]])
    response = check_responses(raw)
    assert [(i["type"], i["status"]) for i in response["output"]] == [("message", "incomplete")], response["output"]


def late_named_stream(model: str) -> list[str]:
    """An OpenAI-compatible chat stream whose call's first delta has its id but not yet its name (the name
    comes in the next delta, then the arguments), as some servers stream a call's fields one at a time."""
    head = {"id": "chatcmpl-r42", "object": "chat.completion.chunk", "created": 1, "model": model}

    def chunk(delta: dict, finish: str | None = None) -> str:
        return sse(None, {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    usage = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
    return [
        chunk({"role": "assistant", "content": ""}),
        chunk({"tool_calls": [{"index": 0, "id": "call_late", "type": "function", "function": {"arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "get_weather"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({}, "tool_calls"),
        sse(None, {**head, "choices": [], "usage": usage}),
        "data: [DONE]\n\n",
    ]


@pytest.mark.parametrize("route_name", ["messages>gpt", "responses>groq"])
def test_a_call_named_after_its_first_delta(server, mock, key, route_name):
    """A call whose name comes after its id: the Messages stream opened its ``tool_use`` block at the
    first delta, named "" (Claude Code: no such tool); the Responses one waited for the name, as now both do."""
    route = ROUTES[route_name]
    built = route.check(ask(server, mock, key, route, late_named_stream(route.model)))
    calls = built["content"] if "content" in built else built["output"]
    assert [(c["name"], c.get("input") or json.loads(c["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ], calls


def gemini_bare_end(model: str, content: dict | None) -> list[str]:
    """Gemini's text, then its finish in a chunk of its own whose candidate has no parts (or no content)."""
    text = gemini_stream(Answer(text="Hello é."), model)[0]
    usage = {"promptTokenCount": 12, "candidatesTokenCount": 9, "totalTokenCount": 21}
    candidate: dict = {"finishReason": "STOP", "index": 0, **({"content": content} if content is not None else {})}
    return [text, sse(None, {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model})]


BLOCKED = {
    "promptFeedback": {"blockReason": "SAFETY"},
    "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
}


@pytest.mark.parametrize("route_name", ["chat>gemini", "messages>gemini", "responses>gemini"])
def test_geminis_odd_ends_stream_in_grammar(server, mock, key, route_name):
    """Gemini's finish in a chunk with no parts, or no content at all; a prompt it blocked (no candidates)."""
    route = ROUTES[route_name]
    for content in ({"role": "model"}, {"role": "model", "parts": []}, None):
        route.check(ask(server, mock, key, route, gemini_bare_end(route.model, content)))
    route.check(ask(server, mock, key, route, [sse(None, BLOCKED)]))


def test_no_usage_from_the_provider_is_null_by_design(server, mock, key):
    """By design: a chat provider that sends no usage chunk (it ignored ``stream_options``) gets a
    ``response.completed`` whose ``usage`` is null (the SDK's type allows it; Codex reads it as an
    option), as the whole answer's is: the client is told the provider's counts, never an estimate
    (the trace bills one, marked estimated). Every other event obeys the grammar."""
    route = ROUTES["responses>groq"]
    events = [e for e in route.stream(ANSWERS["two calls"], route.model) if '"usage"' not in e]
    mock.clear_replies()
    mock.enqueue(Reply(sse=events))
    status, headers, raw = server.request("POST", route.path, route.body(route.model), server.auth(key))
    last = parsed_events(raw)[-1][1]
    assert status == 200 and last["type"] == "response.completed" and last["response"]["usage"] is None, last
    usage = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
    usage |= {
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    head, tail = raw.rsplit(b'"usage":null', 1)  # the terminal event's
    check_responses(head + b'"usage":' + json.dumps(usage).encode() + tail)
    assert server.trace(headers["x-stockyard-trace-id"])["usage_estimated"] == 1


@pytest.mark.parametrize(
    ("route_name", "error", "kind"),
    [
        (
            "messages>gemini",
            {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"},
            "overloaded_error",
        ),
        (
            "messages>gemini",
            {"code": 429, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED"},
            "rate_limit_error",
        ),
        ("messages>gemini", {"code": 500, "message": "Internal error.", "status": "INTERNAL"}, "api_error"),
        (
            "messages>gpt",
            {"message": "Slow down.", "type": "requests", "code": "rate_limit_exceeded"},
            "rate_limit_error",
        ),
        ("messages>gpt", {"message": "The server had an error.", "type": "server_error", "code": None}, "api_error"),
    ],
)
def test_the_providers_error_mid_stream_keeps_its_kind(server, mock, key, route_name, error, kind):
    """The Messages ``error`` event says the kind of the provider's error (every one was ``api_error``:
    Claude Code waits and retries an overloaded or rate-limited answer, and fails on the others)."""
    route = ROUTES[route_name]
    events = route.stream(RICH, route.model)
    message = check_messages(ask(server, mock, key, route, [*events[:3], sse(None, {"error": error})]))
    assert message["error"]["type"] == kind and message["error"]["message"] == error["message"], message


RATE_LIMITS = {
    "responses>claude": sse("error", {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down."}}),
    "responses>gemini": sse(None, {"error": {"code": 429, "message": "Slow down.", "status": "RESOURCE_EXHAUSTED"}}),
    "responses>groq": sse(
        None, {"error": {"message": "Slow down.", "type": "requests", "code": "rate_limit_exceeded"}}
    ),
}


@pytest.mark.parametrize("route_name", sorted(RATE_LIMITS))
def test_a_rate_limit_mid_stream_fails_as_one(server, mock, key, route_name):
    """The provider's rate limit mid-stream: ``response.failed`` with the code ``rate_limit_exceeded``
    (it was ``server_error``; Codex waits and retries a rate limit), another error ``server_error``."""
    route = ROUTES[route_name]
    events = route.stream(RICH, route.model)
    response = check_responses(ask(server, mock, key, route, [*events[:3], RATE_LIMITS[route_name]]))
    assert response["error"] == {"code": "rate_limit_exceeded", "message": "Slow down."}, response["error"]
    response = check_responses(ask(server, mock, key, route, [*events[:3], PROVIDER_ERRORS[route.provider]]))
    assert response["error"]["code"] == "server_error", response["error"]


def test_geminis_candidates_number_their_calls_each_from_0(server, mock, key):
    """``n: 2``: each choice's ``tool_calls`` indexes from 0 (the second choice's began where the first's
    ended, and a choice without calls finished ``tool_calls`` when another had some)."""
    route = ROUTES["chat>gemini"]
    usage = {"promptTokenCount": 12, "candidatesTokenCount": 9, "totalTokenCount": 21}

    def candidate(i: int, parts: list, finish: str | None = None) -> dict:
        return {
            "content": {"role": "model", "parts": parts},
            "index": i,
            **({"finishReason": finish} if finish else {}),
        }

    call = {"functionCall": {"id": "c", "name": "get_weather", "args": {"city": "P"}}}
    events = [
        sse(
            None, {"candidates": [candidate(0, [{"text": "a"}]), candidate(1, [{"text": "b"}])], "usageMetadata": usage}
        ),
        sse(
            None,
            {"candidates": [candidate(0, [call], "STOP"), candidate(1, [call, call], "STOP")], "usageMetadata": usage},
        ),
    ]
    mock.clear_replies()
    mock.enqueue(Reply(sse=events))
    status, _, raw = server.request("POST", route.path, {**chat_body(route.model), "n": 2}, server.auth(key))
    built = check_chat(raw, usage_asked=True)
    assert status == 200 and [len(c["calls"]) for c in built["choices"].values()] == [1, 2], built
    assert [c["finish"] for c in built["choices"].values()] == ["tool_calls"] * 2, built
    events[1] = sse(None, {"candidates": [candidate(0, [call], "STOP"), candidate(1, [{"text": "c"}], "STOP")]})
    mock.enqueue(Reply(sse=events))  # the second choice answers text only
    status, _, raw = server.request("POST", route.path, {**chat_body(route.model), "n": 2}, server.auth(key))
    built = check_chat(raw, usage_asked=True)
    assert [c["finish"] for c in built["choices"].values()] == ["tool_calls", "stop"], built


def mutations(body: bytes) -> dict[str, bytes]:
    """The stream's events with one broken: each a stream its checker must refuse."""
    blocks = [b for b in body.split(b"\n\n") if b.strip()]
    call = next(n for n, b in enumerate(blocks) if b"call_a" in b)  # the first call's opening event

    def joined(kept: list[bytes]) -> bytes:
        return b"\n\n".join(kept) + b"\n\n"

    return {
        "the first event dropped": joined(blocks[1:]),
        "the call's opening twice": joined(blocks[: call + 1] + blocks[call:]),
        "the last two swapped": joined(blocks[:-2] + blocks[-1:] + blocks[-2:-1]),
        "the end dropped": joined(blocks[:-1]),
    }


@pytest.mark.parametrize("route_name", sorted(ROUTES))
def test_each_checker_refuses_a_broken_stream(server, mock, key, route_name):
    """The checkers are not vacuous: a stream Stockyard wrote, one event dropped, doubled or moved, is refused."""
    route = ROUTES[route_name]
    body = ask(server, mock, key, route, route.stream(ANSWERS["two calls"], route.model))
    route.check(body)
    for name, broken in mutations(body).items():
        with pytest.raises((AssertionError, KeyError)):
            route.check(broken)
            raise RuntimeError(f"{name}: accepted")  # not an AssertionError: pytest.raises fails on it

"""The Responses API ⇄ Chat Completions translation (stockyard/providers/responses.py).

Every object and event the translator makes is validated against the official ``openai``
SDK's own types with no unknown fields and an exact round trip, and streams are fed
through the SDK's ``client.responses.stream`` helper (over an in-process transport) so
its accumulator, ``get_final_response()`` and ``output_text`` are what a client sees.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx2 as httpx
import openai
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent

from stockyard.errors import ProxyError
from stockyard.providers import compaction
from stockyard.providers.reasoning import unpack
from stockyard.providers.responses import (
    CHAT_NAME,
    ChatToResponsesStream,
    CompactionStream,
    from_chat,
    function_name,
    stored_name,
    to_chat,
    unknown_item,
)

EVENT = pydantic.TypeAdapter(ResponseStreamEvent)
RESPONSE = pydantic.TypeAdapter(Response)
RID = "resp_0123abcd"
WEATHER = {
    "type": "function",
    "name": "weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}


# --------------------------------------------------------------------------- helpers


def no_unknown_fields(value: Any, path: str = "") -> None:
    """The SDK's models accept unknown fields silently; a field they do not know is a mistake here."""
    if isinstance(value, pydantic.BaseModel):
        extra = value.__pydantic_extra__ or {}
        assert not extra, f"fields the SDK does not know at {path or 'top'}: {sorted(extra)}"
        for name in type(value).model_fields:
            no_unknown_fields(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            no_unknown_fields(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            no_unknown_fields(item, f"{path}.{key}")


def strict(adapter: pydantic.TypeAdapter, data: dict) -> Any:
    """Validate ``data`` as the SDK type: no unknown fields, and it dumps back to itself."""
    obj = adapter.validate_python(data)
    no_unknown_fields(obj)
    assert adapter.dump_python(obj, mode="json", by_alias=True, exclude_unset=True) == json.loads(json.dumps(data))
    return obj


def parse_sse(raw: list[bytes]) -> list[dict]:
    """The events of an SSE byte stream, each checked: ``event:`` names the data's type."""
    events = []
    for block in raw:
        text = block.decode()
        assert text.endswith("\n\n") and text.count("\n\n") == 1
        head, data = text[:-2].split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert head == f"event: {payload['type']}"
        events.append(payload)
    return events


def check_events(events: list[dict]) -> dict:
    """Order and indices of a Responses event stream; returns the final response."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] in ("response.completed", "response.incomplete", "response.failed")
    assert all(e["type"] not in ("response.completed", "response.incomplete", "response.failed") for e in events[:-1])
    items: dict[int, dict] = {}  # output_index → item as added
    done: set[int] = set()
    parts: dict[int, int] = {}  # output_index → content parts added
    for event in events:
        strict(EVENT, event)
        kind = event["type"]
        if kind in ("response.created", "response.in_progress"):
            assert event["response"]["status"] == "in_progress" and event["response"]["output"] == []
            continue
        if kind == "response.output_item.added":
            assert event["output_index"] == len(items)
            items[event["output_index"]] = event["item"]
            continue
        if "output_index" in event:
            index = event["output_index"]
            assert index in items and index not in done, f"{kind} for an item not open"
            if "item_id" in event:
                assert event["item_id"] == items[index]["id"]
        if kind == "response.content_part.added":
            assert event["content_index"] == parts.get(index, 0)
            parts[index] = event["content_index"] + 1
        elif "content_index" in event:
            assert event["content_index"] == parts[index] - 1
        if kind == "response.output_item.done":
            assert event["item"]["id"] == items[index]["id"]
            done.add(index)
    final = events[-1]["response"]
    if final["status"] != "failed":
        assert done == set(items) and len(final["output"]) == len(items)
    done_items = {e["output_index"]: e["item"] for e in events if e["type"] == "response.output_item.done"}
    for index, item in done_items.items():
        assert final["output"][index] == item
    return final


def run_stream(request: dict, chunks: list[dict], model: str = "m") -> tuple[ChatToResponsesStream, list[bytes]]:
    stream = ChatToResponsesStream(request, RID, 1700000000, model, MAKER)
    raw: list[bytes] = []
    for chunk in chunks:
        raw += stream.feed(chunk)
    raw += stream.finish()
    return stream, raw


def sdk_client(body: bytes, content_type: str) -> openai.OpenAI:
    """An OpenAI client whose every request is answered with ``body`` (no network)."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, content=body)

    http = httpx.Client(transport=httpx.MockTransport(answer))
    return openai.OpenAI(api_key="sk-test", base_url="http://stockyard.test/v1", http_client=http, max_retries=0)


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    out: dict = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    out["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage is not None:
        out["usage"] = usage
    return out


def call_delta(index: int, call_id: str | None = None, name: str | None = None, args: str = "") -> dict:
    call: dict = {"index": index, "function": {"arguments": args}}
    if call_id:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return {"tool_calls": [call]}


USAGE = {
    "prompt_tokens": 120,
    "completion_tokens": 45,
    "total_tokens": 165,
    "prompt_tokens_details": {"cached_tokens": 100},
    "completion_tokens_details": {"reasoning_tokens": 30},
}
RESPONSES_USAGE = {
    "input_tokens": 120,
    "input_tokens_details": {"cache_write_tokens": 0, "cached_tokens": 100},
    "output_tokens": 45,
    "output_tokens_details": {"reasoning_tokens": 30},
    "total_tokens": 165,
}


def refused(body: dict, history: list | None = None) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        to_chat(body, history)
    assert caught.value.status == 400
    return caught.value


# --------------------------------------------------------------------------- request → chat


def test_string_input_and_instructions():
    chat = to_chat({"model": "claude", "input": "Hi", "instructions": "Be brief."})
    assert chat == {
        "model": "claude",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    }


def test_item_list_with_tool_round_trip_and_history():
    history = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
        {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "need the tool"}]},
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
        },
        {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "weather", "arguments": '{"city":"Oslo"}'},
        {
            "type": "function_call",
            "id": "fc_2",
            "call_id": "call_b",
            "name": "weather",
            "arguments": '{"city":"Bergen"}',
        },
    ]
    body = {
        "model": "m",
        "instructions": "sys",
        "input": [
            {"type": "function_call_output", "call_id": "call_a", "output": "4°C"},
            {"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "6°C"}]},
            {"role": "developer", "content": "answer in one line"},
        ],
    }
    assert to_chat(body, history)["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}},
                {"id": "call_b", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Bergen"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "4°C"},
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "6°C"}]},
        {"role": "developer", "content": "answer in one line"},
    ]


def test_images_in_tool_outputs_follow_the_run_of_tool_messages():
    """Was a 400: Codex's view_image answers with an input_image. A chat tool message carries text
    only, so the images follow the tool messages of the turn, in one user message."""
    dot = "data:image/png;base64,iVBORw0KGgo="
    history = [
        {"type": "function_call", "call_id": "a", "name": "view_image", "arguments": '{"path":"a.png"}'},
        {"type": "function_call", "call_id": "b", "name": "view_image", "arguments": '{"path":"b.png"}'},
    ]
    outputs = [
        {"type": "function_call_output", "call_id": "a", "output": [{"type": "input_image", "image_url": dot}]},
        {
            "type": "function_call_output",
            "call_id": "b",
            "output": [{"type": "input_text", "text": "b.png:"}, {"type": "input_image", "image_url": dot}],
        },
    ]
    messages = to_chat({"model": "m", "input": [*history, *outputs, {"role": "user", "content": "and?"}]})["messages"]
    image = {"type": "image_url", "image_url": {"url": dot}}
    assert [m["role"] for m in messages] == ["assistant", "tool", "tool", "user", "user"]
    assert messages[1]["content"] == [{"type": "text", "text": "(the result is the image that follows)"}]
    assert messages[2]["content"] == [{"type": "text", "text": "b.png:"}]
    assert messages[3] == {"role": "user", "content": [image, image]} and messages[4]["content"] == "and?"
    last = to_chat({"model": "m", "input": [*history, *outputs]})["messages"]  # the turn ends with them
    assert last[-1] == {"role": "user", "content": [image, image]}


def test_a_reasoning_item_between_tool_outputs_does_not_split_them_from_their_images():
    """A reasoning item adds no message: the images of the outputs before it still follow the
    whole run of tool messages (a user message between two tool messages is refused by chat
    providers, and on Claude puts a tool_result after an image in the user turn)."""
    dot = "data:image/png;base64,iVBORw0KGgo="
    items = [
        {"type": "function_call", "call_id": "a", "name": "view_image", "arguments": "{}"},
        {"type": "function_call", "call_id": "b", "name": "shell", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "a", "output": [{"type": "input_image", "image_url": dot}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call_output", "call_id": "b", "output": "ok"},
    ]
    messages = to_chat({"model": "m", "input": items})["messages"]
    assert [m["role"] for m in messages] == ["assistant", "tool", "tool", "user"]
    assert messages[-1] == {"role": "user", "content": [{"type": "image_url", "image_url": {"url": dot}}]}


def test_an_empty_tool_output_list_says_nothing_follows():
    """An output of no parts has nothing after it: its tool message must not say an image follows."""
    items = [
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "a", "output": []},
    ]
    messages = to_chat({"model": "m", "input": items})["messages"]
    assert [m["role"] for m in messages] == ["assistant", "tool"]
    assert "follows" not in json.dumps(messages[-1]["content"])


def test_function_call_without_assistant_text_opens_an_assistant_turn():
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "go"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        ],
    }
    assert to_chat(body)["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }


def test_images_and_files():
    pdf = "data:application/pdf;base64,JVBERi0="
    png = "data:image/png;base64,iVBORw0KGgo="
    body = {
        "model": "m",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
                    {"type": "input_image", "image_url": png, "detail": "original"},
                    {"type": "input_file", "file_data": pdf, "filename": "a.pdf"},
                    {"type": "input_file", "file_data": png},
                ],
            }
        ],
    }
    assert to_chat(body)["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": png}},
        {"type": "file", "file": {"file_data": pdf, "filename": "a.pdf"}},
        {"type": "image_url", "image_url": {"url": png}},
    ]


def test_settings_are_translated_and_state_fields_stay_home():
    body = {
        "model": "m",
        "input": "hi",
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "weather"},
        "parallel_tool_calls": False,
        "text": {
            "format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True},
            "verbosity": "low",
        },
        "reasoning": {"effort": "high", "summary": "auto"},
        "max_output_tokens": 500,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u1",
        "metadata": {"k": "v"},
        "store": True,
        "previous_response_id": "resp_prev",
        "include": ["reasoning.encrypted_content"],
        "truncation": "auto",
        "background": False,
        "stream": True,
        "stream_options": {"include_obfuscation": False},
    }
    assert to_chat(body) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Weather in a city",
                    "parameters": WEATHER["parameters"],
                    "strict": False,
                },
            }
        ],
        "parallel_tool_calls": False,
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "verbosity": "low",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
        },
        "reasoning_effort": "high",
        "max_completion_tokens": 500,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u1",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_strings(choice):
    assert to_chat({"model": "m", "input": "x", "tool_choice": choice})["tool_choice"] == choice


def test_text_formats():
    def fmt(f):
        return to_chat({"model": "m", "input": "x", "text": {"format": f}}).get("response_format")

    assert fmt({"type": "text"}) is None
    assert fmt({"type": "json_object"}) == {"type": "json_object"}


def test_null_fields_count_as_absent():
    body = {"model": "m", "input": "x", "tools": None, "conversation": None, "prompt": None, "top_logprobs": None}
    assert to_chat(body) == {"model": "m", "messages": [{"role": "user", "content": "x"}]}


def test_history_alone_is_a_turn():
    chat = to_chat({"model": "m", "previous_response_id": "resp_1"}, [{"role": "user", "content": "again"}])
    assert chat["messages"] == [{"role": "user", "content": "again"}]


def user(*parts: dict) -> dict:
    return {"model": "m", "input": [{"role": "user", "content": list(parts)}]}


REFUSALS = [
    ({"model": "m", "input": "x", "tools": [{"type": "web_search", "filters": {}}]}, "tools[0].filters", "filters"),
    (
        {"model": "m", "input": "x", "tools": [{"type": "web_search"}, WEATHER, {"type": "web_search_preview"}]},
        "tools[2]",
        "second web search",
    ),
    (
        {"model": "m", "input": "x", "tools": [{"type": "web_search", "user_location": {"type": "exact"}}]},
        "tools[0].user_location",
        "approximate",
    ),
    ({"model": "m", "input": "x", "tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0].type", ""),
    ({"model": "m", "input": "x", "tools": [{"type": "computer_use_preview"}]}, "tools[0].type", "computer_use"),
    ({"model": "m", "input": "x", "tools": [{"type": "code_interpreter", "container": {}}]}, "tools[0].type", ""),
    ({"model": "m", "input": "x", "tools": [{"type": "image_generation"}]}, "tools[0].type", "image_generation"),
    ({"model": "m", "input": "x", "tools": [{"type": "mcp", "server_label": "s"}]}, "tools[0].type", "mcp"),
    (
        {"model": "m", "input": "x", "tools": [{"type": "custom", "name": "c", "format": {"type": "xml"}}]},
        "tools[0].format.type",
        "xml",
    ),
    ({"model": "m", "input": "x", "tools": [{**WEATHER, "defer_loading": True}]}, "tools[0].defer_loading", ""),
    ({"model": "m", "input": "x", "tool_choice": {"type": "web_search_preview"}}, "tool_choice", ""),
    ({"model": "m", "input": "x", "background": True}, "background", "background"),
    ({"model": "m", "input": "x", "prompt": {"id": "pmpt_1"}}, "prompt", "prompt"),
    ({"model": "m", "input": "x", "top_logprobs": 3}, "top_logprobs", "top_logprobs"),
    ({"model": "m", "input": "x", "max_tool_calls": 2}, "max_tool_calls", "max_tool_calls"),
    ({"model": "m", "input": "x", "context_management": [{}]}, "context_management[0].type", "compaction"),
    ({"model": "m", "input": "x", "frobnicate": 1}, "frobnicate", "frobnicate"),
    ({"model": "m", "input": "x", "include": ["message.output_text.logprobs"]}, "include", "logprobs"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "grammar"}}}, "text.format.type", "grammar"),
    ({"model": "m", "input": "x", "reasoning": {"effort": "low", "mode": "x"}}, "reasoning.mode", ""),
    ({"model": "m", "input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type", "computer_call"),
    (user({"type": "input_image", "file_id": "file-1", "detail": "auto"}), "input[0].content[0].file_id", "file_id"),
    (user({"type": "input_file", "file_id": "file-1"}), "input[0].content[0].file_id", "file_id"),
    (user({"type": "input_file", "file_url": "https://x/a.pdf"}), "input[0].content[0].file_url", "file_url"),
    (user({"type": "input_audio", "input_audio": {}}), "input[0].content[0].type", "input_audio"),
    (
        {
            "model": "m",
            "input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_audio"}]}],
        },
        "input[0].output[0].type",
        "input_audio",
    ),
]


@pytest.mark.parametrize("body,param,word", REFUSALS, ids=[r[1] + ":" + r[2] for r in REFUSALS])
def test_what_chat_cannot_carry_is_refused_naming_the_field(body, param, word):
    error = refused(body)
    assert (error.param, error.code) == (param, "unsupported_parameter")
    assert param in error.message and word in error.message
    assert json.loads(error.body("openai"))["error"]["param"] == param


@pytest.mark.parametrize(
    "body,param",
    [
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": 5}, "input"),
        ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"model": "m", "input": [{"role": "user", "content": 3}]}, "input[0].content"),
        ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments"),
        ({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].id"),  # none stored
        ({"model": "m", "input": [{"id": "msg_1"}]}, "input[0].id"),  # a reference's type is optional
        (user({"type": "input_file", "file_data": "JVBERi0="}), "input[0].content[0].file_data"),
        ({"model": "m", "input": "x", "instructions": ["a"]}, "instructions"),
        ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format"),
    ],
)
def test_malformed_requests_are_400_naming_the_field(body, param):
    assert refused(body).param == param


@pytest.mark.parametrize(
    "item,name",
    [
        ({"type": "item_reference", "id": "msg_1"}, "msg_1"),
        ({"id": "msg_1"}, "msg_1"),  # OpenAI's ItemReferenceParam: its type is optional
        ({"type": None, "id": "rs_1"}, "rs_1"),
        ({"type": "item_reference"}, None),  # no id: it names nothing (the provider refuses it whole)
        ({"type": "reasoning", "id": "rs_1", "summary": []}, "rs_1"),  # the provider reads what it stored
        ({"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA"}, None),  # carried
        ({"type": "reasoning", "id": f"rs_{'a' * 48}_0", "summary": []}, None),  # Stockyard's own
        ({"role": "assistant", "id": "msg_1", "content": "hi"}, None),  # a message carries its content
        ({"type": "message", "role": "assistant", "id": "msg_1", "content": []}, None),
        ({"type": "function_call", "id": "fc_1", "call_id": "c", "name": "f", "arguments": "{}"}, None),
        ("msg_1", None),
    ],
)
def test_which_input_items_name_a_stored_item_by_its_id_alone(item, name):
    assert stored_name(item) == name


@pytest.mark.parametrize("ident", ["msg_" + "x" * 100_000, ["msg_1"] * 50_000])
def test_an_unknown_items_refusal_quotes_at_most_100_characters_of_its_id(ident):
    refusal = unknown_item("input[3]", ident)
    assert refusal.status == 400 and refusal.param == "input[3].id" and len(str(refusal)) < 300


# --------------------------------------------------------------------------- chat answer → response


def completion(message: dict, finish: str = "stop", usage: dict | None = USAGE) -> dict:
    out = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "claude-x",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def test_text_answer():
    request = {"model": "claude", "input": "Hi", "instructions": "Be brief.", "metadata": {"k": "v"}, "store": False}
    out = from_chat(completion({"content": "Hello!"}), request, RID, 1700000000)
    response = strict(RESPONSE, out)
    assert response.output_text == "Hello!"
    assert out["status"] == "completed" and out["incomplete_details"] is None and out["error"] is None
    assert out["output"] == [
        {
            "id": "msg_0123abcd_0",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": "Hello!"}],
        }
    ]
    assert out["usage"] == RESPONSES_USAGE
    assert (out["id"], out["object"], out["created_at"], out["model"]) == (RID, "response", 1700000000, "claude-x")
    assert (out["instructions"], out["metadata"]) == ("Be brief.", {"k": "v"})
    assert (out["tools"], out["tool_choice"], out["parallel_tool_calls"]) == ([], "auto", True)
    assert out["text"] == {"format": {"type": "text"}}


def test_the_sdk_reads_a_plain_response():
    out = from_chat(completion({"content": "Hello!"}), {"model": "m", "input": "Hi"}, RID, 1)
    client = sdk_client(json.dumps(out).encode(), "application/json")
    response = client.responses.create(model="m", input="Hi")
    assert response.output_text == "Hello!" and response.usage.input_tokens_details.cached_tokens == 100


def test_tool_calls_and_reasoning():
    request = {"model": "m", "input": "Weather?", "tools": [WEATHER], "tool_choice": "required"}
    message = {
        "content": None,
        "reasoning_content": "Two cities, two calls.",
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}},
        ],
    }
    out = from_chat(completion(message, "tool_calls"), request, RID, 1)
    strict(RESPONSE, out)
    assert out["output"] == [
        {
            "id": "rs_0123abcd_0",
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "Two cities, two calls."}],
        },
        {
            "id": "fc_0123abcd_1",
            "type": "function_call",
            "status": "completed",
            "arguments": '{"city":"Oslo"}',
            "call_id": "call_a",
            "name": "weather",
        },
        {
            "id": "fc_0123abcd_2",
            "type": "function_call",
            "status": "completed",
            "arguments": '{"city":"Rome"}',
            "call_id": "call_b",
            "name": "weather",
        },
    ]
    assert out["tools"] == [WEATHER] and out["tool_choice"] == "required"


def test_reasoning_field_as_vllm_sends_it_and_a_refusal():
    out = from_chat(completion({"content": "", "reasoning": "hm", "refusal": "I can't."}), {"model": "m"}, RID, 1)
    strict(RESPONSE, out)
    assert out["output"][0]["summary"][0]["text"] == "hm"
    assert out["output"][1]["content"] == [{"type": "refusal", "refusal": "I can't."}]


@pytest.mark.parametrize("finish,reason", [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_cut_short_answers_are_incomplete(finish, reason):
    out = from_chat(completion({"content": "Once upon"}, finish), {"model": "m", "max_output_tokens": 3}, RID, 1)
    strict(RESPONSE, out)
    assert out["status"] == "incomplete" and out["incomplete_details"] == {"reason": reason}
    assert out["output"][0]["status"] == "incomplete" and out["max_output_tokens"] == 3
    assert "completed_at" not in out


def test_answer_without_usage():
    out = from_chat(completion({"content": "x"}, usage=None), {"model": "m"}, RID, 1)
    strict(RESPONSE, out)
    assert out["usage"] is None


def test_usage_without_details():
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    out = from_chat(completion({"content": "x"}, usage=usage), {"model": "m"}, RID, 1)
    assert out["usage"] == {
        "input_tokens": 3,
        "input_tokens_details": {"cache_write_tokens": 0, "cached_tokens": 0},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 7,
    }


def test_usage_read_like_any_openai_usage():
    deepseek = {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55, "prompt_cache_hit_tokens": 40}
    out = from_chat(completion({"content": "x"}, usage=deepseek), {"model": "m"}, RID, 1)
    assert out["usage"]["input_tokens_details"] == {"cache_write_tokens": 0, "cached_tokens": 40}
    writes = {"prompt_tokens": 50, "completion_tokens": 5, "prompt_tokens_details": {"cache_write_tokens": 9}}
    out = from_chat(completion({"content": "x"}, usage=writes), {"model": "m"}, RID, 1)
    assert out["usage"]["input_tokens_details"] == {"cache_write_tokens": 9, "cached_tokens": 0}
    assert out["usage"]["total_tokens"] == 55


def test_odd_answer_shapes_do_not_crash():
    for chat in (
        {},
        {"choices": ["x"]},
        {"choices": [{"message": "x"}]},
        {"choices": [{"message": {"tool_calls": [1]}}]},
    ):
        out = from_chat(chat, {"model": "m"}, RID, 1)
        strict(RESPONSE, out)


# --------------------------------------------------------------------------- chat stream → events


def text_chunks(*pieces: str, finish: str = "stop") -> list[dict]:
    return (
        [chunk({"role": "assistant", "content": ""})]
        + [chunk({"content": p}) for p in pieces]
        + [chunk({}, finish), chunk(usage=USAGE)]
    )


def test_text_stream_event_sequence():
    stream, raw = run_stream({"model": "m", "input": "Hi"}, text_chunks("Hel", "lo", "!"))
    events = parse_sse(raw)
    final = check_events(events)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[7]["text"] == "Hello!" and final["usage"] == RESPONSES_USAGE
    assert stream.complete and stream.response == final
    assert stream.feed(chunk({"content": "more"})) == [] and stream.finish() == []


def test_text_stream_through_the_sdk_helper():
    _, raw = run_stream({"model": "m", "input": "Hi"}, text_chunks("Hel", "lo", "!"))
    client = sdk_client(b"".join(raw), "text/event-stream")
    with client.responses.stream(model="m", input="Hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["Hel", "lo", "!"]
    assert final.output_text == "Hello!" and final.usage.output_tokens_details.reasoning_tokens == 30
    raw_events = list(client.responses.create(model="m", input="Hi", stream=True))
    assert [e.sequence_number for e in raw_events] == list(range(len(raw_events)))


def tool_chunks() -> list[dict]:
    """Two tool calls as OpenAI streams them: id and name first, then argument fragments."""
    return [
        chunk({"role": "assistant", "content": None}),
        chunk(call_delta(0, "call_a", "weather")),
        chunk(call_delta(0, args='{"ci')),
        chunk(call_delta(0, args='ty": "Oslo"}')),
        chunk(call_delta(1, "call_b", "weather", '{"city"')),
        chunk(call_delta(1, args=': "Rome"}')),
        chunk({}, "tool_calls"),
        chunk(usage=USAGE),
    ]


def test_tool_calls_stream_through_the_sdk_helper():
    request = {"model": "m", "input": "Weather?", "tools": [WEATHER]}
    _, raw = run_stream(request, tool_chunks())
    events = parse_sse(raw)
    final = check_events(events)
    assert [(e["type"], e.get("output_index")) for e in events if "function_call" in e["type"]] == [
        ("response.function_call_arguments.delta", 0),
        ("response.function_call_arguments.delta", 0),
        ("response.function_call_arguments.done", 0),
        ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.done", 1),
    ]
    client = sdk_client(b"".join(raw), "text/event-stream")
    with client.responses.stream(model="m", input="Weather?", tools=[WEATHER]) as stream:
        sdk_final = stream.get_final_response()
    calls = [(o.call_id, o.name, json.loads(o.arguments)) for o in sdk_final.output if o.type == "function_call"]
    assert calls == [("call_a", "weather", {"city": "Oslo"}), ("call_b", "weather", {"city": "Rome"})]
    assert final["output"][1]["id"] == "fc_0123abcd_1"


PATCH_TOOL = {
    "type": "custom",
    "name": "apply_patch",
    "format": {"type": "grammar", "syntax": "lark", "definition": "s"},
}


def test_custom_tool_calls_stream_as_custom_items_through_the_sdk_helper():
    """A custom tool's call (made as a function with one string, ``input``) streams as a
    ``custom_tool_call`` item, its text whole once the arguments have come; a function call beside it
    is unchanged. Every event is the SDK's type, and its stream helper ends with the same items."""
    patch = '*** Begin Patch\n+print("é")\n*** End Patch'
    args = json.dumps({"input": patch})
    request = {"model": "m", "input": "Fix it", "tools": [WEATHER, PATCH_TOOL]}
    chunks = [
        chunk(call_delta(0, "call_p", "apply_patch", args[:9])),
        chunk(call_delta(0, args=args[9:])),
        chunk(call_delta(1, "call_w", "weather", '{"city": "Oslo"}')),
        chunk({}, "tool_calls"),
        chunk(usage=USAGE),
    ]
    _, raw = run_stream(request, chunks)
    events = parse_sse(raw)
    final = check_events(events)
    assert [e["type"] for e in events if "custom_tool_call" in e["type"]] == [
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
    ]
    assert final["output"][0] == {
        "id": "ctc_0123abcd_0",
        "type": "custom_tool_call",
        "call_id": "call_p",
        "name": "apply_patch",
        "input": patch,
    }
    assert final["output"][1]["type"] == "function_call"
    client = sdk_client(b"".join(raw), "text/event-stream")
    with client.responses.stream(model="m", input="Fix it", tools=[WEATHER, PATCH_TOOL]) as stream:
        sdk_final = stream.get_final_response()
    assert [(o.type, o.call_id) for o in sdk_final.output] == [
        ("custom_tool_call", "call_p"),
        ("function_call", "call_w"),
    ]
    assert sdk_final.output[0].input == patch
    plain = {
        "choices": [
            {"message": {"tool_calls": [{"id": "call_p", "function": {"name": "apply_patch", "arguments": args}}]}}
        ]
    }
    assert from_chat(plain, request, RID, 1)["output"][0]["input"] == patch


def test_custom_tools_and_their_items_become_functions_and_calls():
    request = {
        "model": "m",
        "tools": [{**PATCH_TOOL, "description": "Edit files."}],
        "tool_choice": {"type": "custom", "name": "apply_patch"},
        "input": [
            {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "*** Begin"},
            {"type": "custom_tool_call_output", "call_id": "c1", "output": "Done"},
        ],
    }
    chat = to_chat(request)
    fn = chat["tools"][0]["function"]
    assert fn["parameters"]["required"] == ["input"] and fn["description"].startswith("Edit files.\n\n")
    assert "lark grammar:\ns" in fn["description"]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "apply_patch"}}
    call = chat["messages"][0]["tool_calls"][0]
    assert (call["id"], json.loads(call["function"]["arguments"])) == ("c1", {"input": "*** Begin"})
    assert chat["messages"][1] == {"role": "tool", "tool_call_id": "c1", "content": "Done"}


def test_tool_call_name_arriving_after_arguments():
    chunks = [chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}), chunk(call_delta(0, "c", "f"))]
    _, raw = run_stream({"model": "m"}, chunks + [chunk({}, "tool_calls")])
    final = check_events(parse_sse(raw))
    assert final["output"][0]["arguments"] == "{}" and final["output"][0]["name"] == "f"


def test_reasoning_then_text_stream():
    chunks = [
        chunk({"role": "assistant", "content": "", "reasoning_content": "Let me"}),
        chunk({"reasoning_content": " think."}),
        chunk({"content": "42"}),
        chunk({}, "stop"),
        chunk(usage=USAGE),
    ]
    _, raw = run_stream({"model": "m", "input": "?", "reasoning": {"effort": "high", "summary": "auto"}}, chunks)
    events = parse_sse(raw)
    final = check_events(events)
    assert [e["type"] for e in events[2:10]] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
    ]
    assert final["output"][0]["summary"] == [{"type": "summary_text", "text": "Let me think."}]
    assert final["reasoning"] == {"effort": "high", "summary": "auto"}
    with sdk_client(b"".join(raw), "text/event-stream").responses.stream(model="m", input="?") as stream:
        assert stream.get_final_response().output_text == "42"


def test_length_stream_is_incomplete():
    stream, raw = run_stream({"model": "m", "max_output_tokens": 2}, text_chunks("Once", " upon", finish="length"))
    events = parse_sse(raw)
    final = check_events(events)
    assert events[-1]["type"] == "response.incomplete" and final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete" and stream.complete
    sdk_events = list(
        sdk_client(b"".join(raw), "text/event-stream").responses.create(model="m", input="x", stream=True)
    )
    assert sdk_events[-1].type == "response.incomplete"


def test_refusal_after_text_is_a_second_content_part():
    chunks = [chunk({"content": "Well"}), chunk({"refusal": "No"}), chunk({"refusal": "."}), chunk({}, "stop")]
    _, raw = run_stream({"model": "m"}, chunks)
    events = parse_sse(raw)
    final = check_events(events)
    assert final["output"][0]["content"][1] == {"type": "refusal", "refusal": "No."}
    assert [e["content_index"] for e in events if e["type"].startswith("response.refusal")] == [1, 1, 1]


def test_broken_stream_fails_and_never_completes():
    stream = ChatToResponsesStream({"model": "m"}, RID, 1, "m")
    raw = stream.feed(chunk({"content": "Half an ans"}))
    raw += stream.fail("upstream connection reset", "upstream_timeout")
    events = parse_sse(raw)
    final = check_events(events)
    assert events[-1]["type"] == "response.failed" and final["status"] == "failed"
    assert final["error"] == {"code": "server_error", "message": "upstream connection reset"}
    assert final["output"][0]["status"] == "incomplete"
    assert not stream.complete and stream.response == final
    assert stream.finish() == [] and stream.feed(chunk({"content": "x"})) == []


def test_failure_before_any_chunk_and_rate_limit_code():
    stream = ChatToResponsesStream({"model": "m"}, RID, 1, "m")
    events = parse_sse(stream.fail("slow down", "rate_limit_exceeded"))
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.failed"]
    assert check_events(events)["error"]["code"] == "rate_limit_exceeded"


def test_empty_stream_completes_empty():
    _, raw = run_stream({"model": "m"}, [])
    final = check_events(parse_sse(raw))
    assert final["status"] == "completed" and final["output"] == []


def test_non_zero_choices_and_odd_chunks_are_ignored():
    chunks = [
        chunk({"content": "a"}),
        {"choices": [{"index": 1, "delta": {"content": "zzz"}}]},
        {"choices": ["junk", {"index": 0, "delta": "junk"}]},
        chunk({}, "stop"),
    ]
    _, raw = run_stream({"model": "m"}, chunks)
    assert check_events(parse_sse(raw))["output"][0]["content"][0]["text"] == "a"


# --------------------------------------------------------------------------- properties


def pieces(draw: Any, text: str) -> list[str]:
    """``text`` cut at arbitrary places (empty pieces included: providers send those too)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=6)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30)


@st.composite
def answers(draw: Any) -> dict:
    """A chat answer: optional reasoning, optional text, zero to three tool calls."""
    calls = [
        {"id": f"call_{i}", "name": draw(st.sampled_from(["weather", "time"])), "args": json.dumps({"q": draw(TEXT)})}
        for i in range(draw(st.integers(0, 3)))
    ]
    return {
        "reasoning": draw(TEXT),
        "content": draw(TEXT),
        "calls": calls,
        "finish": draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"])),
    }


@st.composite
def split_streams(draw: Any, answer: dict) -> list[dict]:
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"reasoning_content": p}) for p in pieces(draw, answer["reasoning"]) if p]
    chunks += [chunk({"content": p}) for p in pieces(draw, answer["content"])]
    for i, call in enumerate(answer["calls"]):
        args = pieces(draw, call["args"])
        chunks.append(chunk(call_delta(i, call["id"], call["name"], args[0])))
        chunks += [chunk(call_delta(i, args=p)) for p in args[1:]]
    return chunks + [chunk({}, answer["finish"]), chunk(usage=USAGE)]


def aggregate(answer: dict) -> dict:
    """The plain chat.completion the stream adds up to."""
    calls = [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["args"]}}
        for c in answer["calls"]
    ]
    message: dict = {"content": answer["content"] or None, "reasoning_content": answer["reasoning"] or None}
    if calls:
        message["tool_calls"] = calls
    return completion(message, answer["finish"])


def without_time(response: dict) -> dict:
    return {k: v for k, v in response.items() if k != "completed_at"}


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_any_chunk_split_gives_the_plain_answer(data):
    answer = data.draw(answers())
    request = {"model": "m", "input": "x", "tools": [WEATHER]}
    first = data.draw(split_streams(answer))
    second = data.draw(split_streams(answer))
    finals = []
    for chunks in (first, second):
        _, raw = run_stream(request, chunks, model="claude-x")
        finals.append(without_time(check_events(parse_sse(raw))))
    assert finals[0] == finals[1]
    plain = from_chat(aggregate(answer), request, RID, 1700000000)
    assert finals[0] == without_time(plain)
    strict(RESPONSE, plain)


# --------------------------------------------------------------------------- the provider's reasoning state

THINK = {"type": "thinking", "thinking": "Plan.", "signature": "EqQBsig"}
REDACTED = {"type": "redacted_thinking", "data": "RURBQw=="}


def signed(call_id: str, signature: str) -> dict:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
        "extra_content": {"google": {"thought_signature": signature}},
    }


MAKER = "maker"  # the provider (by name) that made the reasoning state in these tests


def continued(output: list[dict], provider: str = MAKER, kind: str = "openai-compatible") -> list[dict]:
    """The chat messages for a turn that continues ``output`` with the tool results, for ``provider``."""
    results = [
        {"type": "function_call_output", "call_id": o["call_id"], "output": "sun"}
        for o in output
        if o["type"] == "function_call"
    ]
    body = {"model": "m", "input": [{"role": "user", "content": "Weather?"}, *output, *results]}
    return to_chat(body, None, provider, kind)["messages"]


def test_thinking_blocks_and_signatures_ride_in_a_reasoning_item():
    message = {
        "content": "Looking.",
        "reasoning_content": "Plan.",
        "thinking_blocks": [THINK, REDACTED],
        "tool_calls": [signed("call_a", "S1")],
    }
    out = from_chat(completion(message, "tool_calls"), {"model": "m"}, RID, 1, MAKER)
    strict(RESPONSE, out)
    # the call's signature in a reasoning item just before it, where a stream puts it (the text closed the first)
    assert [o["type"] for o in out["output"]] == ["reasoning", "message", "reasoning", "function_call"]
    assert "S1" in str(unpack(out["output"][2]["encrypted_content"]))
    item = out["output"][0]
    assert item["summary"] == [{"type": "summary_text", "text": "Plan."}] and "S1" not in item["encrypted_content"]
    messages = continued(out["output"])
    assert messages[1]["thinking_blocks"] == [THINK, REDACTED] and messages[1]["content"] == "Looking."
    assert messages[1]["tool_calls"][0]["extra_content"] == {"google": {"thought_signature": "S1"}}
    # state without text: an empty summary
    bare = from_chat(completion({"content": None, "tool_calls": [signed("call_a", "S1")]}, "tool_calls"), {}, RID, 1)
    strict(RESPONSE, bare)
    assert bare["output"][0]["summary"] == [] and bare["output"][0]["encrypted_content"]
    # another provider's encrypted_content (OpenAI's) is not Stockyard's: nothing is restored
    items = [
        {"id": "rs_1", "type": "reasoning", "summary": [], "encrypted_content": "gAAAAABopenai-fernet"},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
    ]
    assert continued(items)[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}],
    }


def test_the_state_reaches_only_the_provider_that_made_it():
    """The packed state names its provider: restored onto a request to that provider whatever its
    kind (Gemini behind an openai-compatible endpoint), to no other; a packing that names none
    (made before names were kept) goes to gemini-kind providers only."""
    from stockyard.providers.reasoning import pack

    message = {"content": None, "thinking_blocks": [THINK], "tool_calls": [signed("call_a", "S1")]}
    out = from_chat(completion(message, "tool_calls"), {}, RID, 1, MAKER)
    own = continued(out["output"], MAKER, "openai-compatible")[1]
    assert own["thinking_blocks"] == [THINK] and own["tool_calls"][0]["extra_content"]["google"]["thought_signature"]
    for provider, kind in (("other", "anthropic"), ("gemini", "gemini"), ("openai", "openai")):
        other = continued(out["output"], provider, kind)[1]
        assert "thinking_blocks" not in other and "extra_content" not in other["tool_calls"][0], provider
    old = [{**out["output"][0], "encrypted_content": pack({"thought_signatures": {"call_a": "S1"}})}, out["output"][1]]
    assert continued(old, "gemini", "gemini")[1]["tool_calls"][0]["extra_content"]
    assert "extra_content" not in continued(old, "anthropic", "anthropic")[1]["tool_calls"][0]


def test_stockyards_reasoning_items_are_told_apart():
    """The pass-through drops the reasoning items Stockyard made: by their id (``item_id``'s, for a
    ``new_response_id``) or their packing; a provider's own items are not Stockyard's."""
    from stockyard.conversations import new_response_id
    from stockyard.providers.reasoning import pack
    from stockyard.providers.responses import item_id
    from stockyard.providers.responses_adapters import ours

    assert ours({"type": "reasoning", "id": item_id("rs", new_response_id(), 0), "summary": []})
    assert ours({"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": pack({}, "x")})
    openai_id = "rs_" + "0" * 48  # OpenAI's ids: no output index after them
    assert not ours({"type": "reasoning", "id": openai_id, "summary": [], "encrypted_content": "gAAAAB"})
    assert not ours({"type": "message", "id": item_id("msg", new_response_id(), 0)})


def test_openai_chat_loses_the_state_fields_it_does_not_know():
    """OpenAI's chat API refuses unknown message properties: a conversation moved from Claude or
    Gemini loses ``thinking_blocks`` and ``extra_content`` on the way to it; others stay as sent."""
    from stockyard.providers.reasoning import plain_messages

    calls = [signed("call_a", "S1")]
    messages = [
        {"role": "user", "content": "?"},
        {"role": "assistant", "content": None, "tool_calls": calls, "thinking_blocks": [THINK]},
    ]
    plain = plain_messages(messages)
    assert plain is not None and plain[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{k: v for k, v in calls[0].items() if k != "extra_content"}],
    }
    assert "thinking_blocks" in messages[1] and "extra_content" in calls[0]  # the client's body is untouched
    assert plain_messages([{"role": "user", "content": "?"}, {"role": "assistant", "content": "hi"}]) is None
    searched = {"role": "assistant", "content": "sunny", "web_search_calls": [{"id": "srvtoolu_1", "query": "q"}]}
    assert plain_messages([searched]) == [{"role": "assistant", "content": "sunny"}]  # Claude's searches too


def test_claude_stream_keeps_its_thinking_in_the_reasoning_item():
    chunks = [
        chunk({"role": "assistant", "content": "", "reasoning_content": "Pl"}),
        chunk({"reasoning_content": "an."}),
        chunk({"thinking_blocks": [{"index": 0, **THINK}]}),
        chunk(call_delta(0, "toolu_1", "weather", '{"city":"Oslo"}')),
        chunk({}, "tool_calls"),
    ]
    _, raw = run_stream({"model": "m", "input": "?"}, chunks)
    final = check_events(parse_sse(raw))
    assert [o["type"] for o in final["output"]] == ["reasoning", "function_call"]
    assert final["output"][0]["summary"][0]["text"] == "Plan."
    assert continued(final["output"])[1]["thinking_blocks"] == [THINK]


def test_gemini_stream_puts_the_signature_in_a_reasoning_item_before_the_call():
    first = call_delta(0, "call_a", "weather", '{"city":"Oslo"}')
    first["tool_calls"][0]["extra_content"] = {"google": {"thought_signature": "S1"}}
    chunks = [chunk({"role": "assistant", "content": "Checking"}), chunk(first), chunk({}, "tool_calls")]
    _, raw = run_stream({"model": "m", "input": "?"}, chunks)
    events = parse_sse(raw)
    final = check_events(events)
    assert [o["type"] for o in final["output"]] == ["message", "reasoning", "function_call"]
    assert final["output"][1]["summary"] == [] and final["output"][1]["encrypted_content"]
    assert not any(e["type"].startswith("response.reasoning_summary") for e in events)
    messages = continued(final["output"])
    assert messages[1]["content"] == "Checking"
    assert messages[1]["tool_calls"][0]["extra_content"] == {"google": {"thought_signature": "S1"}}
    # through the SDK's stream helper, as a client sees it
    client = sdk_client(b"".join(raw), "text/event-stream")
    with client.responses.stream(model="m", input="?") as stream:
        response = stream.get_final_response()
    assert response.output[1].encrypted_content == final["output"][1]["encrypted_content"]


# --------------------------------------------------------------------------- web search


def test_a_web_search_tool_becomes_web_search_options_and_its_items_stay_home():
    location = {"type": "approximate", "city": "Paris", "country": "FR", "region": None}
    tools = [WEATHER, {"type": "web_search_preview", "search_context_size": "low", "user_location": location}]
    searched = {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}}
    body = {"model": "m", "input": [{"role": "user", "content": "x"}, searched], "tools": tools}
    chat = to_chat(body)
    assert chat["web_search_options"] == {
        "search_context_size": "low",
        "user_location": {"type": "approximate", "approximate": {"city": "Paris", "country": "FR"}},
    }
    assert [t["function"]["name"] for t in chat["tools"]] == ["weather"]
    assert chat["messages"] == [{"role": "user", "content": "x"}]
    assert "tools" not in to_chat({**body, "tools": [{"type": "web_search"}]})


SEARCHES = [{"id": "srvtoolu_1", "query": "paris weather"}]
CITATION = {"type": "url_citation", "url_citation": {"url": "https://w.example", "title": "W", "start_index": 6}}


def test_web_searches_and_citations_answer_plain():
    message = {"role": "assistant", "content": "Look: sunny.", "web_search_calls": SEARCHES}
    message["annotations"] = [{**CITATION, "url_citation": {**CITATION["url_citation"], "end_index": 12}}]
    chat = {"model": "m", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    response = strict(RESPONSE, from_chat(chat, {"model": "m"}, RID, 1700000000, MAKER))
    search, answer = response.output
    assert (search.type, search.id, search.status, search.action.query) == (
        "web_search_call",
        "ws_0123abcd_0",
        "completed",
        "paris weather",
    )
    (annotation,) = answer.content[0].annotations
    assert (annotation.url, annotation.title, annotation.start_index, annotation.end_index) == (
        "https://w.example",
        "W",
        6,
        12,
    )


def test_web_searches_and_citations_stream_in_order():
    """Text before the search is a message of its own; a citation's indices are into its own part."""
    cited = {**CITATION, "url_citation": {**CITATION["url_citation"], "start_index": 12, "end_index": 18}}
    chunks = [
        chunk({"role": "assistant", "content": "Look: "}),
        chunk({"web_search_calls": [{"index": 0, **SEARCHES[0]}]}),
        chunk({"content": "Found "}),
        chunk({"content": "sunny."}),
        chunk({"annotations": [cited]}),
        chunk({}, "stop"),
    ]
    stream, raw = run_stream({"model": "m"}, chunks)
    events = parse_sse(raw)
    final = check_events(events)
    assert [o["type"] for o in final["output"]] == ["message", "web_search_call", "message"]
    kinds = [e["type"] for e in events]
    start = kinds.index("response.web_search_call.in_progress")
    assert kinds[start - 1 : start + 4] == [
        "response.output_item.added",
        "response.web_search_call.in_progress",
        "response.web_search_call.searching",
        "response.web_search_call.completed",
        "response.output_item.done",
    ]
    (added,) = [e for e in events if e["type"] == "response.output_text.annotation.added"]
    part = final["output"][2]["content"][0]
    assert part["annotations"] == [added["annotation"]] and added["annotation_index"] == 0
    assert part["text"][added["annotation"]["start_index"] : added["annotation"]["end_index"]] == "sunny."
    assert final["output"][1]["action"] == {"type": "search", "query": "paris weather"}


# --------------------------------------------------------------------------- compaction (compaction.py)

TRIGGER = {"type": "compaction_trigger"}
CODEX_TURN = [
    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List the files."}]},
    {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "One file."}]},
]


def compaction_of(summary: str) -> dict:
    """The compaction item a translated provider answers for ``summary``."""
    request = {"model": "m", "input": [*CODEX_TURN, TRIGGER]}
    return from_chat(completion({"role": "assistant", "content": summary}), request, RID, 1700000000)["output"][0]


def test_a_compaction_trigger_asks_the_model_for_a_summary():
    """Codex's trigger (the last input item) becomes our summarization instruction as the last user
    message; the tools stay defined for the calls in the history but may not be called; no output format."""
    body = {"model": "m", "input": [*CODEX_TURN, TRIGGER], "tools": [WEATHER], "text": {"format": {"type": "text"}}}
    chat = to_chat({**body, "text": {"format": {"type": "json_object"}, "verbosity": "low"}})
    assert chat["messages"][:-1] == to_chat({**body, "input": CODEX_TURN})["messages"]
    assert chat["messages"][-1] == {"role": "user", "content": compaction.INSTRUCTION}
    assert chat["tool_choice"] == "none" and chat["tools"][0]["function"]["name"] == "weather"
    assert "response_format" not in chat and "verbosity" not in chat
    assert "tool_choice" not in to_chat({"model": "m", "input": [CODEX_TURN[1], TRIGGER], "tool_choice": "auto"})


def test_a_compaction_answer_is_one_compaction_item_whose_summary_comes_back_as_a_user_message():
    request = {"model": "m", "input": [*CODEX_TURN, TRIGGER]}
    response = from_chat(completion({"role": "assistant", "content": "The user wants files listed."}), request, RID, 1)
    strict(RESPONSE, response)
    item = response["output"][0]
    assert [o["type"] for o in response["output"]] == ["compaction"] and response["status"] == "completed"
    assert item["encrypted_content"].startswith(compaction.PREFIX) and response["usage"] == RESPONSES_USAGE
    echoed = {"type": "compaction", "encrypted_content": item["encrypted_content"]}  # as Codex sends it back
    following = {"model": "m", "input": [CODEX_TURN[1], echoed]}
    messages = to_chat(following)["messages"]
    assert messages[-1] == {"role": "user", "content": compaction.SUMMARY_HEADING + "The user wants files listed."}
    # stored with the turn it answered (previous_response_id), the trigger is skipped and the item read
    history = [*request["input"], item]
    assert to_chat({"model": "m", "input": "go on"}, history)["messages"][-2:] == [
        messages[-1],
        {"role": "user", "content": "go on"},
    ]


def test_a_compaction_without_a_summary_fails():
    request = {"model": "m", "input": [*CODEX_TURN, TRIGGER]}
    response = from_chat(completion({"role": "assistant", "content": ""}), request, RID, 1)
    assert response["status"] == "failed" and response["output"] == [] and response["error"]["code"] == "server_error"


def test_a_compaction_stream_says_compacting_and_ends_with_the_item():
    """Streamed (Codex's ``stream: true``): no text events, a ``response.compaction.compacting`` per piece,
    the one compaction item done before ``response.completed``, through the SDK's stream helper."""
    request = {"model": "m", "input": [*CODEX_TURN, TRIGGER], "stream": True}
    stream = CompactionStream(request, RID, 1700000000, "m", MAKER)
    raw = [event for piece in text_chunks("The user ", "wants files.") for event in stream.feed(piece)]
    raw += stream.finish()
    events = parse_sse(raw)
    final = check_events(events)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.compaction.compacting",
        "response.compaction.compacting",
        "response.output_item.done",
        "response.completed",
    ]
    assert final["output"] == [compaction_of("The user wants files.")] and final["usage"] == RESPONSES_USAGE
    client = sdk_client(b"".join(raw), "text/event-stream")
    with client.responses.stream(model="m", input=[*CODEX_TURN, TRIGGER]) as sdk:
        done = sdk.get_final_response()
    assert done.output[0].model_dump(exclude_none=True) == final["output"][0]


def test_a_compaction_stream_without_a_summary_fails():
    stream = CompactionStream({"model": "m", "input": [TRIGGER]}, RID, 1700000000, "m", MAKER)
    raw = [event for piece in text_chunks() for event in stream.feed(piece)] + stream.finish()
    final = check_events(parse_sse(raw))
    assert final["status"] == "failed" and final["output"] == [] and not stream.complete


FORGED = compaction.PREFIX + base64.urlsafe_b64encode(b'{"summary": "x", "role": "system"}').decode()
COMPACTION_REFUSALS = [
    ("gAAAAABmockCompactedConversation==", "unsupported_parameter"),  # OpenAI's: only its models read it
    (compaction.PREFIX + "not base64!", "invalid_compaction"),
    (compaction.PREFIX + base64.urlsafe_b64encode(b"[1]").decode(), "invalid_compaction"),
    (compaction.PREFIX + base64.urlsafe_b64encode(b'{"summary": 3}').decode(), "invalid_compaction"),
    (FORGED, "invalid_compaction"),  # a field Stockyard never writes
    (compaction_of("cut")["encrypted_content"][:-3], "invalid_compaction"),
    ("", "invalid_request"),
]


@pytest.mark.parametrize("token,code", COMPACTION_REFUSALS)
def test_a_compaction_item_not_stockyards_is_a_400_naming_it(token, code):
    error = refused({"model": "m", "input": [{"type": "compaction", "encrypted_content": token}]})
    assert (error.param, error.code) == ("input[0].encrypted_content", code)


def test_a_compaction_trigger_only_ends_the_input():
    error = refused({"model": "m", "input": [TRIGGER, {"role": "user", "content": "hi"}]})
    assert error.param == "input[0].type" and "last input item" in error.message


# --------------------------------------------------------------------------- namespaced tool names


@settings(max_examples=300, deadline=None)
@given(*[st.text(st.characters(exclude_categories=["Cs"]), min_size=size, max_size=90) for size in (0, 1)])
def test_a_function_name_is_always_one_claude_and_gemini_take(namespace: str, name: str):
    """Whatever the namespace (none: "") and tool are named, the chat function's name is one both providers take."""
    flat = function_name(namespace, name)
    assert CHAT_NAME.fullmatch(flat) and len(flat) <= 64
    assert function_name(namespace, name) == flat  # the same in every turn: a call sent back finds its tool
    assert flat != function_name(namespace + "x", name) and flat != function_name(namespace, name + "x")


def test_joined_names_cut_to_fit_stay_apart():
    """Two tools of one long namespace whose names differ only past what fits are two functions."""
    namespace = "mcp__" + "a_server_with_a_rather_long_name" * 2
    first, second = (function_name(namespace, "list_pull_request_review_comments_" + "z" * 40 + end) for end in "xy")
    assert first != second and first[:-11] == second[:-11]
    assert function_name("a", "b") == "a__b" and function_name("", "get_weather") == "get_weather"
    assert function_name("multi_agent_v1", "spawn_agent") == "multi_agent_v1__spawn_agent"


def test_the_same_tool_loaded_twice_is_one_function():
    """Two tool searches that load one tool: one chat function (Claude and Gemini refuse two of a name)."""
    ns = {"type": "namespace", "name": "ns", "description": "d", "tools": [WEATHER]}
    loads = [{"type": "tool_search_output", "call_id": f"c{i}", "execution": "client", "tools": [ns]} for i in (1, 2)]
    chat = to_chat({"model": "m", "input": [{"role": "user", "content": "hi"}, *loads]})
    assert [t["function"]["name"] for t in chat["tools"]] == ["ns__weather"]

"""The pure Messages ↔ Chat Completions translation (stockyard.providers.messages), each
answer and event stream checked against the installed anthropic SDK's own types."""

from __future__ import annotations

import json

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from stockyard.errors import ProxyError
from stockyard.providers import messages

EVENT = TypeAdapter(RawMessageStreamEvent)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def body(**extra) -> dict:
    return {"model": "gpt-x", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}], **extra}


def refused(request: dict, kind: str = "openai") -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        messages.to_chat(request, kind)
    assert caught.value.status == 400
    return caught.value


# --------------------------------------------------------------------------- request


def test_system_text_and_fields():
    chat = messages.to_chat(
        body(
            system=[
                {"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "B"},
            ],
            stop_sequences=["END"],
            temperature=0.2,
            top_p=0.9,
            metadata={"user_id": "u1"},
            stream=True,
        )
    )
    assert chat == {
        "model": "gpt-x",
        "messages": [{"role": "system", "content": "A\n\nB"}, {"role": "user", "content": "Hi"}],
        "max_completion_tokens": 100,
        "stop": ["END"],
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u1",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert messages.to_chat(body(system="S"), "gemini")["messages"][0] == {"role": "system", "content": "S"}
    assert messages.to_chat(body(), "groq")["max_tokens"] == 100  # compatible providers: the classic field


def test_images_base64_and_url():
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
    ]
    chat = messages.to_chat(body(messages=[{"role": "user", "content": content}]))
    assert chat["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        }
    ]


def test_tool_use_and_results():
    history = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "w", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "down"}],
                    "is_error": True,
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    tools = [{"name": "w", "description": "weather", "input_schema": {"type": "object"}}]
    chat = messages.to_chat(
        body(messages=history, tools=tools, tool_choice={"type": "any", "disable_parallel_tool_use": True})
    )
    assert chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": '{"city": "Paris"}'}},
                {"id": "toolu_2", "type": "function", "function": {"name": "w", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: down"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}, "description": "weather"}}
    ]
    assert (chat["tool_choice"], chat["parallel_tool_calls"]) == ("required", False)


def test_tool_result_images_follow_in_the_user_message():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    turn = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [image]}]}
    chat = messages.to_chat(body(messages=[turn]))
    assert chat["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "(the result is the image that follows)"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "w"}, {"type": "function", "function": {"name": "w"}}),
    ],
)
def test_tool_choice(choice, expected):
    assert messages.to_chat(body(tool_choice=choice))["tool_choice"] == expected


@pytest.mark.parametrize(("budget", "effort"), [(1024, "low"), (4095, "low"), (4096, "medium"), (16384, "high")])
def test_thinking_budget_to_effort(budget, effort):
    chat = messages.to_chat(body(thinking={"type": "enabled", "budget_tokens": budget}))
    assert chat["reasoning_effort"] == effort
    assert "reasoning_effort" not in messages.to_chat(body(thinking={"type": "disabled"}))


@pytest.mark.parametrize("kind", ["adaptive", "between_tools", "disabled"])
def test_thinking_the_model_decides_sends_no_effort(kind):
    """anthropic 2.17's adaptive and between-tools thinking were a 400 on GPT and Gemini models."""
    assert "reasoning_effort" not in messages.to_chat(body(thinking={"type": kind, "display": "omitted"}))


def test_output_config_becomes_a_json_schema_and_an_effort():
    """``messages.parse(output_format=Model)`` sends ``output_config.format``: was a 400."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    chat = messages.to_chat(body(output_config={"format": {"type": "json_schema", "schema": schema}, "effort": "max"}))
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    assert chat["reasoning_effort"] == "xhigh"


def test_anthropics_cache_and_tier_hints_are_dropped():
    chat = messages.to_chat(body(cache_control={"type": "ephemeral"}, service_tier="auto"))
    assert "cache_control" not in chat and "service_tier" not in chat


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"output_config": {"format": {"type": "text"}}}, "output_config.format"),
        ({"output_config": {"effort": "extreme"}}, "output_config.effort"),
        ({"output_config": {"task_budget": 5}}, "output_config.task_budget"),
        ({"top_k": 5}, "top_k"),
        ({"container": "c"}, "container"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "x"}}]}]},
            "messages[0].content[0].source",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "search_result", "source": "x"}]}]},
            "messages[0].content[0].type",
        ),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_refused_by_name(extra, param):
    assert refused(body(**extra)).param == param


# --------------------------------------------------------------------------- answer


def chat_answer(message: dict, finish: str = "stop", **choice) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-x-2025",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 8}},
    }


def test_answer_text_thinking_and_usage():
    answer = messages.from_chat(
        chat_answer({"role": "assistant", "content": "Hello", "reasoning_content": "Think."}), body(), "msg_1"
    )
    message = Message.model_validate(answer)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Think." and message.content[1].text == "Hello"
    assert (message.id, message.model, message.stop_reason) == ("msg_1", "gpt-x-2025", "end_turn")
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (12, 8, 7)


def test_answer_tool_use():
    call = {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": '{"city": "Paris"}'}}
    answer = messages.from_chat(
        chat_answer({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"), body(), "msg_1"
    )
    message = Message.model_validate(answer)
    assert message.stop_reason == "tool_use"
    assert message.content[0].model_dump() == {
        "type": "tool_use",
        "id": "call_1",
        "name": "w",
        "input": {"city": "Paris"},
        "caller": None,
    } or (
        message.content[0].type,
        message.content[0].id,
        message.content[0].input,
    ) == ("tool_use", "call_1", {"city": "Paris"})


@pytest.mark.parametrize(
    ("finish", "extra", "reason", "sequence"),
    [
        ("length", {}, "max_tokens", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),
        ("stop", {}, "end_turn", None),
        ("content_filter", {}, "refusal", None),  # was end_turn: a safety stop looked like a normal end
    ],
)
def test_stop_reasons(finish, extra, reason, sequence):
    answer = messages.from_chat(
        chat_answer({"role": "assistant", "content": "x"}, finish, **extra), body(stop_sequences=["END"]), "msg_1"
    )
    message = Message.model_validate(answer)
    assert (message.stop_reason, message.stop_sequence) == (reason, sequence)


# --------------------------------------------------------------------------- stream


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    out: dict = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-x-2025", "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def run(chunks: list[dict], request: dict | None = None) -> tuple[list, Message]:
    """Feed chat chunks, parse every event with the SDK's types and build its final message."""
    stream = messages.ChatToMessagesStream(request or body(), "msg_1", "gpt-x")
    raw = b"".join(b"".join(stream.feed(c)) for c in chunks) + b"".join(stream.finish())
    events, snapshot, json_bufs = [], None, {}  # json_bufs: the SDK's partial tool input per block
    for block in raw.decode().strip().split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        event = EVENT.validate_python(json.loads(data[6:]))
        assert event.type == name[7:]
        events.append(event)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert stream.complete
    return events, snapshot


def test_stream_thinking_text_and_tools():
    usage = {"prompt_tokens": 20, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 8}}
    events, final = run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning_content": "Let me "}),
            chunk({"reasoning_content": "see."}),
            chunk({"content": "Checking"}),
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "w", "arguments": ""}}
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "Paris"}'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "w", "arguments": '{"city": "Rome"}'},
                        }
                    ]
                }
            ),
            chunk({}, "tool_calls"),
            chunk(None, usage=usage),
        ]
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 4
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert final.content[0].thinking == "Let me see." and final.content[1].text == "Checking"
    assert (final.content[2].id, final.content[2].input) == ("call_a", {"city": "Paris"})
    assert (final.content[3].id, final.content[3].input) == ("call_b", {"city": "Rome"})
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.cache_read_input_tokens) == (12, 7, 8)
    assert final.model == "gpt-x"


def test_stream_plain_text_blocks_in_order():
    events, final = run([chunk({"content": "Hel"}), chunk({"content": "lo"}), chunk({}, "length")])
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert final.content[0].text == "Hello" and final.stop_reason == "max_tokens"


def test_stream_failure_is_an_error_event():
    stream = messages.ChatToMessagesStream(body(), "msg_1", "gpt-x")
    stream.feed(chunk({"content": "Hel"}))
    (raw,) = stream.fail("upstream broke")
    name, data = raw.decode().strip().split("\n")
    assert name == "event: error"
    assert json.loads(data[6:]) == {"type": "error", "error": {"type": "api_error", "message": "upstream broke"}}
    assert stream.finish() == [] and not stream.complete


# --------------------------------------------------------------------------- Gemini thought signatures


def signed_call(call_id: str, signature: str, arguments: str = "{}") -> dict:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "w", "arguments": arguments},
        "extra_content": {"google": {"thought_signature": signature}},
    }


def history(content: list[dict]) -> dict:
    """A request that sends ``content`` back as the assistant turn, then the tool results."""
    results = [
        {"type": "tool_result", "tool_use_id": b["id"], "content": "ok"} for b in content if b["type"] == "tool_use"
    ]
    return body(
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": content},
            {"role": "user", "content": results},
        ]
    )


def test_a_thought_signature_rides_in_a_thinking_block_and_comes_back_for_gemini_only():
    message = messages.from_chat(
        chat_answer({"role": "assistant", "content": None, "tool_calls": [signed_call("call_1", "SIG")]}, "tool_calls"),
        body(),
        "msg_1",
    )
    Message.model_validate(message)
    thinking, tool_use = message["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "" and thinking["signature"] not in ("", "SIG")
    assert tool_use["id"] == "call_1"
    gemini = messages.to_chat(history(message["content"]), "gemini")["messages"][1]
    assert gemini["tool_calls"][0]["extra_content"] == {"google": {"thought_signature": "SIG"}}
    for kind in ("openai", "groq", "azure"):  # no field another provider does not know
        assert (
            "extra_content" not in messages.to_chat(history(message["content"]), kind)["messages"][1]["tool_calls"][0]
        )
    # Anthropic's own signatures (a conversation begun on Claude) stay behind, as before
    theirs = [{"type": "thinking", "thinking": "hm", "signature": "EqQBCkYIBRgC"}, tool_use]
    assert "extra_content" not in messages.to_chat(history(theirs), "gemini")["messages"][1]["tool_calls"][0]


def test_the_signature_goes_on_the_reasoning_block_or_just_before_the_call():
    calls = [signed_call("call_1", "S1"), signed_call("call_2", "S2")]
    with_reasoning = {"role": "assistant", "content": None, "reasoning_content": "Hmm.", "tool_calls": calls}
    content = messages.from_chat(chat_answer(with_reasoning, "tool_calls"), body(), "msg_1")["content"]
    assert [b["type"] for b in content] == ["thinking", "tool_use", "thinking", "tool_use"]
    assert content[0]["thinking"] == "Hmm." and content[0]["signature"]
    chat = messages.to_chat(history(content), "gemini")["messages"][1]
    assert [c["extra_content"]["google"]["thought_signature"] for c in chat["tool_calls"]] == ["S1", "S2"]

    after_text = {"role": "assistant", "content": "Checking", "reasoning_content": "Hmm.", "tool_calls": calls[:1]}
    content = messages.from_chat(chat_answer(after_text, "tool_calls"), body(), "msg_1")["content"]
    assert [b["type"] for b in content] == ["thinking", "text", "thinking", "tool_use"]
    assert content[0]["signature"] == "" and content[2]["thinking"] == ""


def test_stream_sends_the_signature_as_a_signature_delta():
    events, final = run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning_content": "Hmm."}),
            chunk({"tool_calls": [{"index": 0, **signed_call("call_1", "S1", '{"city": "Paris"}')}]}),
            chunk({"content": "and"}),
            chunk({"tool_calls": [{"index": 1, **signed_call("call_2", "S2")}]}),
            chunk({}, "tool_calls"),
        ]
    )
    assert [b.type for b in final.content] == ["thinking", "tool_use", "text", "thinking", "tool_use"]
    assert [e.delta.type for e in events if e.type == "content_block_delta"].count("signature_delta") == 2
    assert final.content[0].thinking == "Hmm." and final.content[3].thinking == ""
    echoed = [b.model_dump() for b in final.content]
    chat = messages.to_chat(history(echoed), "gemini")["messages"][1]
    assert [c["extra_content"]["google"]["thought_signature"] for c in chat["tool_calls"]] == ["S1", "S2"]

"""Translation never drops silently: every row of the Anthropic and Gemini field tables, end to end.

One server routes ``claude-*`` to the mock as Anthropic and ``gemini-*`` as Gemini. A translated
field must reach the mock in the provider's shape; a refused one gets a 400 naming it (and no
upstream call), or — with ``x-stockyard-drop-unsupported: true`` — is dropped, named in the
``x-stockyard-dropped`` header and in the trace.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any, Callable

import openai
import pytest
from conftest import ServerProcess, base_env, served
from mock_upstream import MockUpstream, Recorded, Reply
from openai.types.chat.completion_create_params import CompletionCreateParamsBase

from stockyard.providers import anthropic as anthropic_adapter
from stockyard.providers import gemini as gemini_adapter
from stockyard.providers.chatshape import REFUSED, Field

TABLES: dict[str, dict[str, Field]] = {"anthropic": anthropic_adapter.CHAT_FIELDS, "gemini": gemini_adapter.CHAT_FIELDS}
MODELS = {"anthropic": "claude-haiku-4-5-table", "gemini": "gemini-2.5-flash-table"}
DROP = {"x-stockyard-drop-unsupported": "true"}
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
SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "w",
        "schema": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False},
    },
}
# A value that asks for something, for every field some table refuses (or refuses in part).
ASKING: dict[str, Any] = {
    "logprobs": True,
    "top_logprobs": 2,
    "logit_bias": {"50256": -100},
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"},
    "prediction": {"type": "content", "content": "x"},
    "web_search_options": {},
    "store": True,
    "metadata": {"k": "v"},
    "service_tier": "flex",
    "verbosity": "low",
    "moderation": {"input": {"model": "omni-moderation-latest"}},
    "prompt_cache_key": "k1",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "explicit"},
    "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "function_call": "auto",
    "n": 2,
    "seed": 7,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "parallel_tool_calls": False,
    "user": "u1",
    "safety_identifier": "s1",
}
# Values a translated row refuses in part.
PARTLY: list[tuple[str, str, Any]] = [
    ("anthropic", "response_format", {"type": "json_object"}),
    ("anthropic", "reasoning_effort", "maximal"),
    ("gemini", "reasoning_effort", "maximal"),
    ("gemini", "response_format", {"type": "xml"}),
    ("gemini", "modalities", ["text", "audio"]),  # text and image only
    ("anthropic", "top_k", 5),  # not OpenAI's: Gemini's table takes it, Claude's does not
    ("gemini", "min_p", 0.1),  # a field no table knows
]
REFUSED_ROWS = [(kind, name) for kind, table in TABLES.items() for name, row in table.items() if row.how == REFUSED]


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = {
        **base_env(cache_home),
        "ANTHROPIC_API_KEY": "sk-ant-table",
        "ANTHROPIC_BASE_URL": mock.url,
        "GEMINI_API_KEY": "AIza-table",
        "GEMINI_BASE_URL": mock.url,
    }
    with served(pyz_path, tmp_path_factory, "table", env) as proc:
        yield proc


def upstream(mock: MockUpstream, kind: str, model: str) -> Recorded:
    """The newest request the mock got for ``model`` on the provider's path."""
    for req in reversed(mock.requests):
        if kind == "gemini" and req.path.startswith(f"/v1beta/models/{model}:"):
            return req
        if kind == "anthropic" and req.path == "/v1/messages" and (req.json or {}).get("model") == model:
            return req
    raise AssertionError(f"mock saw no request for {model}")


def chat(server: ServerProcess, body: dict, headers: dict | None = None) -> tuple[int, dict, Any]:
    body = {"messages": [{"role": "user", "content": "Hi"}], **body}
    status, head, raw = server.request("POST", "/v1/chat/completions", body, headers)
    return status, head, (json.loads(raw) if not body.get("stream") else raw.decode())


def test_every_openai_chat_field_has_a_row_in_each_table() -> None:
    fields = set(CompletionCreateParamsBase.__annotations__) | {"stream"}
    for kind, table in TABLES.items():
        assert fields <= set(table), f"{kind}: no row for {sorted(fields - set(table))}"


# --------------------------------------------------------------------------- translated rows

Check = Callable[[Recorded], None]


def gen(key: str, value: Any) -> Check:
    def check(req: Recorded) -> None:
        assert req.json["generationConfig"][key] == value

    return check


def top(key: str, value: Any) -> Check:
    def check(req: Recorded) -> None:
        assert req.json[key] == value

    return check


def anthropic_thinking(req: Recorded) -> None:
    assert req.json["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert req.json["max_tokens"] == 20000  # the client's cap, which budgets reserved: thinking fits inside


@pytest.mark.parametrize(
    "effort, cap, budget",
    [("high", 4096, 3072), ("high", 1500, 1499), ("minimal", 2048, 1024), ("high", 1024, 0), ("low", 100, 0)],
)
def test_anthropic_thinking_never_raises_the_output_cap(server, mock, effort, cap, budget) -> None:
    """Was: max_tokens was raised to budget + cap, so a $-budgeted key could be billed for 16k
    thinking tokens its reservation never counted."""
    status, _, _ = chat(server, {"model": MODELS["anthropic"], "reasoning_effort": effort, "max_tokens": cap})
    assert status == 200
    sent = upstream(mock, "anthropic", MODELS["anthropic"]).json
    assert sent["max_tokens"] == cap
    assert sent.get("thinking", {}).get("budget_tokens", 0) == budget


def anthropic_structured(req: Recorded) -> None:
    schema = SCHEMA_FORMAT["json_schema"]["schema"]
    assert req.json["output_config"] == {"format": {"type": "json_schema", "schema": schema}}  # GA: was the beta
    assert "output_format" not in req.json and "structured-outputs" not in req.headers.get("anthropic-beta", "")


def gemini_schema(req: Recorded) -> None:
    config = req.json["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"] == {"type": "object", "properties": {"a": {"type": "string"}}}


TRANSLATED: list[tuple[str, str, dict, Check]] = [
    ("anthropic", "temperature", {"temperature": 0.3}, top("temperature", 0.3)),
    ("anthropic", "top_p", {"top_p": 0.9}, top("top_p", 0.9)),
    ("anthropic", "max_tokens", {"max_tokens": 50}, top("max_tokens", 50)),
    ("anthropic", "max_completion_tokens", {"max_completion_tokens": 60}, top("max_tokens", 60)),
    ("anthropic", "stop", {"stop": "END"}, top("stop_sequences", ["END"])),
    ("anthropic", "tools", {"tools": TOOLS}, lambda r: r.json["tools"][0]["input_schema"]["required"] == ["city"]),
    ("anthropic", "tool_choice", {"tools": TOOLS, "tool_choice": "required"}, top("tool_choice", {"type": "any"})),
    (
        "anthropic",
        "parallel_tool_calls",
        {"tools": TOOLS, "parallel_tool_calls": False},
        top("tool_choice", {"type": "auto", "disable_parallel_tool_use": True}),
    ),
    ("anthropic", "user", {"user": "u1"}, top("metadata", {"user_id": "u1"})),
    ("anthropic", "safety_identifier", {"safety_identifier": "s1"}, top("metadata", {"user_id": "s1"})),
    ("anthropic", "response_format", {"response_format": SCHEMA_FORMAT}, anthropic_structured),
    ("anthropic", "reasoning_effort", {"reasoning_effort": "high", "max_tokens": 20000}, anthropic_thinking),
    ("anthropic", "reasoning_effort none", {"reasoning_effort": "none"}, lambda r: "thinking" not in r.json),
    ("gemini", "temperature", {"temperature": 0.3}, gen("temperature", 0.3)),
    ("gemini", "top_p", {"top_p": 0.9}, gen("topP", 0.9)),
    ("gemini", "top_k", {"top_k": 64}, gen("topK", 64)),
    ("gemini", "max_tokens", {"max_tokens": 50}, gen("maxOutputTokens", 50)),
    ("gemini", "max_completion_tokens", {"max_completion_tokens": 60}, gen("maxOutputTokens", 60)),
    ("gemini", "n", {"n": 2}, gen("candidateCount", 2)),
    ("gemini", "seed", {"seed": 7}, gen("seed", 7)),
    ("gemini", "presence_penalty", {"presence_penalty": 0.5}, gen("presencePenalty", 0.5)),
    ("gemini", "frequency_penalty", {"frequency_penalty": 0.25}, gen("frequencyPenalty", 0.25)),
    ("gemini", "stop", {"stop": ["END"]}, gen("stopSequences", ["END"])),
    (
        "gemini",
        "tools",
        {"tools": TOOLS},
        lambda r: r.json["tools"][0]["functionDeclarations"][0]["name"] == "get_weather",
    ),
    (
        "gemini",
        "tool_choice",
        {"tools": TOOLS, "tool_choice": "required"},
        top("toolConfig", {"functionCallingConfig": {"mode": "ANY"}}),
    ),
    (
        "gemini",
        "response_format json_object",
        {"response_format": {"type": "json_object"}},
        gen("responseMimeType", "application/json"),
    ),
    ("gemini", "response_format", {"response_format": SCHEMA_FORMAT}, gemini_schema),
    (
        "gemini",
        "reasoning_effort",
        {"reasoning_effort": "low"},
        gen("thinkingConfig", {"thinkingBudget": 1024, "includeThoughts": True}),
    ),
    ("gemini", "reasoning_effort none", {"reasoning_effort": "none"}, gen("thinkingConfig", {"thinkingBudget": 0})),
]


@pytest.mark.parametrize("kind, name, body, check", TRANSLATED, ids=[f"{k}-{n}" for k, n, _, _ in TRANSLATED])
def test_translated_field_reaches_the_provider_in_its_shape(server, mock, kind, name, body, check) -> None:
    model = MODELS[kind]
    status, head, answer = chat(server, {"model": model, **body})
    assert status == 200, answer
    assert "x-stockyard-dropped" not in head
    result = check(upstream(mock, kind, model))
    assert result is not False


def test_gemini_3_gets_a_thinking_level(server, mock) -> None:
    status, _, answer = chat(server, {"model": "gemini-3-pro-table", "reasoning_effort": "xhigh"})
    assert status == 200, answer
    assert upstream(mock, "gemini", "gemini-3-pro-table").json["generationConfig"]["thinkingConfig"] == {
        "thinkingLevel": "high",
        "includeThoughts": True,
    }


@pytest.mark.parametrize(
    "model, effort, level",
    [
        ("gemini-3-pro-table", "medium", "high"),  # Codex CLI's default effort; 3 Pro takes low and high only
        ("gemini-3-pro-table", "minimal", "low"),
        ("gemini-3.1-pro-table", "minimal", "low"),  # no minimal on 3.1 Pro
        ("gemini-3.1-pro-table", "medium", "medium"),
        ("gemini-3-flash-table", "minimal", "minimal"),
        ("gemini-3-flash-table", "medium", "medium"),
    ],
)
def test_a_thinking_level_the_model_takes(server, mock, model, effort, level) -> None:
    """Was: Codex's default reasoning_effort "medium" went to Gemini 3 Pro as thinkingLevel "medium",
    which it refuses (it takes low and high); the nearest level the model takes goes instead."""
    status, _, answer = chat(server, {"model": model, "reasoning_effort": effort})
    assert status == 200, answer
    sent = upstream(mock, "gemini", model).json["generationConfig"]["thinkingConfig"]
    assert sent == {"thinkingLevel": level, "includeThoughts": True}


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
def test_stream_and_its_usage_option(server, mock, kind) -> None:
    model = MODELS[kind]
    status, _, text = chat(server, {"model": model, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200
    req = upstream(mock, kind, model)
    assert req.json.get("stream") is True if kind == "anthropic" else "streamGenerateContent" in req.path
    events = [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: {")]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0  # emulated include_usage
    assert text.rstrip().endswith("data: [DONE]")


def test_anthropic_thinking_is_counted_as_reasoning_tokens(server, mock) -> None:
    mock.enqueue(
        Reply(
            json={
                "id": "msg_think",
                "type": "message",
                "role": "assistant",
                "model": MODELS["anthropic"],
                "content": [
                    {"type": "thinking", "thinking": "x" * 40, "signature": "sig"},
                    {"type": "text", "text": "4"},
                ],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 10, "output_tokens": 30},
            }
        )
    )
    status, _, answer = chat(server, {"model": MODELS["anthropic"], "reasoning_effort": "low"})
    assert status == 200 and answer["choices"][0]["message"]["content"] == "4"
    assert answer["usage"]["completion_tokens"] == 30
    assert answer["usage"]["completion_tokens_details"]["reasoning_tokens"] == 10


def test_anthropic_streamed_thinking_is_counted_as_reasoning_tokens(server, mock) -> None:
    def event(data: dict) -> str:
        return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n"

    message = {"id": "msg_s", "type": "message", "role": "assistant", "model": MODELS["anthropic"], "content": []}
    mock.enqueue(
        Reply(
            sse=[
                event({"type": "message_start", "message": {**message, "usage": {"input_tokens": 10}}}),
                event(
                    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}
                ),
                event(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "thinking_delta", "thinking": "y" * 20},
                    }
                ),
                event({"type": "content_block_stop", "index": 0}),
                event({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
                event({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "ok"}}),
                event({"type": "content_block_stop", "index": 1}),
                event({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 12}}),
                event({"type": "message_stop"}),
            ]
        )
    )
    body = {
        "model": MODELS["anthropic"],
        "reasoning_effort": "low",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, _, text = chat(server, body)
    assert status == 200
    events = [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == "ok"
    assert events[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5


def test_gemini_thoughts_are_counted_as_reasoning_tokens(server) -> None:
    status, _, answer = chat(server, {"model": "gemini-2.5-flash-reasoning", "reasoning_effort": "medium"})
    assert status == 200
    assert answer["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3


# --------------------------------------------------------------------------- refused rows

REFUSALS = [(kind, name, ASKING[name]) for kind, name in REFUSED_ROWS] + PARTLY


@pytest.mark.parametrize("kind, name, value", REFUSALS, ids=[f"{k}-{n}" for k, n, _ in REFUSALS])
def test_refused_field_is_a_400_naming_it(server, mock, kind, name, value) -> None:
    model = MODELS[kind]
    before = len(mock.requests)
    status, _, answer = chat(server, {"model": model, name: value})
    assert status == 400, answer
    assert answer["error"]["param"] == name and answer["error"]["code"] == "unsupported_field"
    assert name in answer["error"]["message"] and "x-stockyard-drop-unsupported" in answer["error"]["message"]
    assert len(mock.requests) == before  # refused before any upstream call


@pytest.mark.parametrize("kind, name, value", REFUSALS, ids=[f"{k}-{n}" for k, n, _ in REFUSALS])
def test_refused_field_is_dropped_and_recorded_on_request(server, mock, kind, name, value) -> None:
    model = MODELS[kind]
    mock.clear()
    status, head, answer = chat(server, {"model": model, name: value, "temperature": 0.5}, DROP)
    assert status == 200, answer
    assert head["x-stockyard-dropped"] == name
    sent = upstream(mock, kind, model).json
    assert name not in sent and "output_config" not in sent and "thinking" not in sent
    assert "candidateCount" not in sent.get("generationConfig", {})
    assert "responseMimeType" not in sent.get("generationConfig", {})
    trace = server.trace(head["x-stockyard-trace-id"])
    assert trace["error_message"] == f"dropped unsupported fields: {name}"


def test_several_dropped_fields_are_all_named(server, mock) -> None:
    body = {"model": MODELS["anthropic"], "logprobs": True, "seed": 1, "top_p": 0.5}
    status, head, _ = chat(server, body, DROP)
    assert status == 200 and head["x-stockyard-dropped"] == "logprobs,seed"
    assert upstream(mock, "anthropic", MODELS["anthropic"]).json["top_p"] == 0.5


@pytest.mark.parametrize(
    "kind, name, value",
    [("anthropic", "n", 1), ("anthropic", "logprobs", False), ("gemini", "parallel_tool_calls", True)],
)
def test_values_that_ask_nothing_pass_quietly(server, kind, name, value) -> None:
    status, head, answer = chat(server, {"model": MODELS[kind], name: value})
    assert status == 200, answer
    assert "x-stockyard-dropped" not in head


# --------------------------------------------------------------------------- Gemini embeddings


def test_gemini_embeddings_both_ways_with_the_sdk(server, mock) -> None:
    result = server.openai("x").embeddings.create(model="gemini-embedding-001", input=["one", "two words"])
    req = upstream(mock, "gemini", "gemini-embedding-001")
    assert req.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert req.json == {
        "requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "one"}]}},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "two words"}]}},
        ]
    }
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[1].embedding == pytest.approx([0.25 + 0.001 * k for k in range(8)], rel=1e-6)
    assert result.usage.prompt_tokens == 1 + 3 and result.usage.total_tokens == 4  # estimated: 4 chars a token


def test_gemini_embeddings_float_string_and_dimensions(server, mock) -> None:
    body = {"model": "gemini-embedding-001", "input": "hello", "dimensions": 4, "encoding_format": "float"}
    status, head, raw = server.request("POST", "/v1/embeddings", body)
    answer = json.loads(raw)
    assert status == 200, answer
    assert upstream(mock, "gemini", "gemini-embedding-001").json["requests"][0]["outputDimensionality"] == 4
    assert answer["object"] == "list" and answer["data"] == [
        {"object": "embedding", "index": 0, "embedding": [0.125, 0.126, 0.127, 0.128]}
    ]
    assert server.trace(head["x-stockyard-trace-id"])["usage_estimated"] == 1


def test_gemini_embeddings_base64_is_float32(server) -> None:
    body = {"model": "gemini-embedding-001", "input": "hi", "encoding_format": "base64", "dimensions": 2}
    status, _, raw = server.request("POST", "/v1/embeddings", body)
    assert status == 200
    packed = base64.b64decode(json.loads(raw)["data"][0]["embedding"])
    assert struct.unpack("<2f", packed) == pytest.approx((0.125, 0.126))


def test_gemini_embeddings_refuse_token_ids_and_leave_out_the_user_hint(server, mock) -> None:
    status, _, raw = server.request("POST", "/v1/embeddings", {"model": "gemini-embedding-001", "input": [[1, 2]]})
    assert status == 400 and json.loads(raw)["error"]["param"] == "input"
    body = {"model": "gemini-embedding-001", "input": "x", "user": "u-hint-7"}
    status, head, _ = server.request("POST", "/v1/embeddings", body)
    assert status == 200 and "x-stockyard-dropped" not in head  # an abuse-monitoring hint: accepted, not sent
    assert b"u-hint-7" not in upstream(mock, "gemini", "gemini-embedding-001").body


# --------------------------------------------------------------------------- the CLI


def test_capabilities_command_prints_the_tables(server) -> None:
    result = server.cli("providers", "capabilities", "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    got = {(r["kind"], r["endpoint"], r["field"]): r["how"] for r in rows}
    for kind, table in TABLES.items():
        for name, row in table.items():
            assert got[(kind, "chat", name)] == row.how
    assert got[("anthropic", "chat", "n")] == "refused" and got[("gemini", "chat", "n")] == "translated"
    assert got[("anthropic", "chat", "stream_options")] == "emulated"
    assert got[("gemini", "embeddings", "input")] == "translated"
    text = server.cli("providers", "capabilities").stdout
    assert "anthropic (chat):" in text and "gemini (embeddings):" in text
    assert any(line.split()[:2] == ["logprobs", "refused"] for line in text.splitlines())


PDF_DATA = "JVBERi0xLjQKJSVFT0YK"  # "%PDF-1.4\n%%EOF\n", base64


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
def test_a_pdf_file_part_reaches_claude_and_gemini(server, mock, kind) -> None:
    """Was a 400: a chat ``file`` part (a PDF as a data URL, as the OpenAI SDK sends it) goes to
    Claude as a ``document`` block and to Gemini as ``inlineData``; a text file (Markdown here,
    its media type in any case) to Claude as a plain-text document. The file's name is the
    document's ``title`` (it was lost: the Vercel AI SDK's chat and Responses providers send it)."""
    pdf = {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:Application/PDF;base64,{PDF_DATA}"}}
    text = {"type": "file", "file": {"file_data": "data:Text/Markdown;base64,bm90ZXM="}}  # "notes", any text type
    parts = [{"type": "text", "text": "Summarise"}, pdf, *([text] if kind == "anthropic" else [])]
    status, _, answer = chat(server, {"model": MODELS[kind], "messages": [{"role": "user", "content": parts}]})
    assert status == 200, answer
    sent = upstream(mock, kind, MODELS[kind]).json
    if kind == "anthropic":
        assert sent["messages"][0]["content"][1:] == [
            {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_DATA},
                "title": "a.pdf",
            },
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
        ]
    else:
        assert sent["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "application/pdf", "data": PDF_DATA}}


@pytest.mark.parametrize(
    "part, word",
    [
        ({"type": "file", "file": {"file_id": "file-abc"}}, "file_id"),
        ({"type": "file", "file": {"file_data": "data:application/zip;base64,UEs="}}, "application/zip"),
    ],
)
def test_a_file_claude_cannot_read_is_a_400_naming_why(server, mock, part, word) -> None:
    status, _, answer = chat(server, {"model": MODELS["anthropic"], "messages": [{"role": "user", "content": [part]}]})
    assert status == 400 and word in answer["error"]["message"], answer


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
def test_a_file_data_url_with_a_charset_reaches_claude_and_gemini(server, mock, kind) -> None:
    """``data:text/plain;charset=utf-8;base64,…`` is a base64 data URL (RFC 2397 parameters before
    ``;base64``): it was a 400 saying the data was not base64."""
    part = {"type": "file", "file": {"file_data": "data:text/plain;charset=utf-8;base64,bm90ZXM="}}  # "notes"
    status, _, answer = chat(server, {"model": MODELS[kind], "messages": [{"role": "user", "content": [part]}]})
    assert status == 200, answer
    sent = upstream(mock, kind, MODELS[kind]).json
    if kind == "anthropic":
        assert sent["messages"][0]["content"] == [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}}
        ]
    else:
        assert sent["contents"][0]["parts"] == [{"inlineData": {"mimeType": "text/plain", "data": "bm90ZXM="}}]

"""Review 43: what Stockyard exports to observability tools, checked against the OpenTelemetry GenAI
semantic conventions (inference and embeddings spans: names, kinds, required and conditionally
required attributes and their OTLP types, enum values, message JSON shapes, trace context, no
secrets) and /metrics against Prometheus' naming. A real server exports to a small OTLP/HTTP
receiver (tests/test_otel.py's); each case is a real request over each dialect the server speaks."""

from __future__ import annotations

import json
import re

import pytest
from conftest import OPENAI_KEY, served, wait_for
from mock_upstream import Reply
from module_helpers import ADMIN_KEY, module_env, put_module
from otlp_collector import Receiver, attrs

ANTHROPIC_KEY = "sk-ant-r43-otel-0123456789abcdefSECRET"
GEMINI_KEY = "AIza-r43-otel-0123456789abcdefSECRET"
COLLECTOR_TOKEN = "r43-otlp-token-abcdef123456"
CALLER_TRACE, CALLER_SPAN = "5bf92f3577b34da6a3ce929d0e0e4737", "10f067aa0ba902b8"
SECRETS = (ANTHROPIC_KEY, GEMINI_KEY, OPENAI_KEY, COLLECTOR_TOKEN, ADMIN_KEY)

OPERATIONS = {"chat", "text_completion", "embeddings", "generate_content", "execute_tool", "count_tokens"}
PROVIDERS = {"openai", "anthropic", "gcp.gemini", "gcp.vertex_ai", "azure.ai.openai", "groq"}
# attribute → the OTLP value kind the conventions' type is (int → intValue, double, string[] → arrayValue)
TYPES = {
    "gen_ai.operation.name": "stringValue",
    "gen_ai.provider.name": "stringValue",
    "gen_ai.request.model": "stringValue",
    "gen_ai.response.model": "stringValue",
    "gen_ai.response.id": "stringValue",
    "gen_ai.conversation.id": "stringValue",
    "gen_ai.output.type": "stringValue",
    "gen_ai.request.max_tokens": "intValue",
    "gen_ai.request.seed": "intValue",
    "gen_ai.request.choice.count": "intValue",
    "gen_ai.request.temperature": "doubleValue",
    "gen_ai.request.top_p": "doubleValue",
    "gen_ai.request.top_k": "doubleValue",
    "gen_ai.request.frequency_penalty": "doubleValue",
    "gen_ai.request.presence_penalty": "doubleValue",
    "gen_ai.request.stop_sequences": "arrayValue",
    "gen_ai.request.encoding_formats": "arrayValue",
    "gen_ai.request.stream": "boolValue",
    "gen_ai.embeddings.dimension.count": "intValue",
    "gen_ai.response.finish_reasons": "arrayValue",
    "gen_ai.response.time_to_first_chunk": "doubleValue",
    "gen_ai.usage.input_tokens": "intValue",
    "gen_ai.usage.output_tokens": "intValue",
    "gen_ai.usage.cache_read.input_tokens": "intValue",
    "gen_ai.usage.cache_creation.input_tokens": "intValue",
    "gen_ai.usage.reasoning.output_tokens": "intValue",
    "gen_ai.input.messages": "stringValue",
    "gen_ai.output.messages": "stringValue",
    "gen_ai.system_instructions": "stringValue",
    "gen_ai.tool.definitions": "stringValue",
    "error.type": "stringValue",
    "http.response.status_code": "intValue",
    "server.address": "stringValue",
    "server.port": "intValue",
}
CONTENT = ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.tool.definitions")
PART_FIELDS = {
    "text": ("content",),
    "reasoning": ("content",),
    "tool_call": ("name",),
    "tool_call_response": ("response",),
    "blob": ("modality", "content"),
    "uri": ("modality", "uri"),
    "file": ("modality", "file_id"),
}
FINISH = {"stop", "length", "content_filter", "tool_call", "error"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


def _env(cache_home, mock, receiver, **extra: str) -> dict:
    return module_env(
        cache_home,
        mock,
        STOCKYARD_OTLP_ENDPOINT=receiver.url,
        STOCKYARD_OTLP_HEADERS=f"authorization=Bearer {COLLECTOR_TOKEN}",
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=mock.url,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
        **extra,
    )


@pytest.fixture(scope="module")
def plain(pyz_path, cache_home, mock, tmp_path_factory, receiver):
    """Content export off (the default)."""
    with served(pyz_path, tmp_path_factory, "r43-plain", _env(cache_home, mock, receiver)) as srv:
        yield srv


@pytest.fixture(scope="module")
def content(pyz_path, cache_home, mock, tmp_path_factory, receiver):
    """``STOCKYARD_OTLP_CONTENT=true``."""
    env = _env(cache_home, mock, receiver, STOCKYARD_OTLP_CONTENT="true")
    with served(pyz_path, tmp_path_factory, "r43-content", env) as srv:
        yield srv


def send(server, path: str, body: dict, **headers: str) -> tuple[dict, list[dict]]:
    """One request; its request span and its attempt spans (by attempt number) once exported."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "anthropic-version": "2023-06-01", **headers}
    status, got, raw = server.request("POST", path, body, headers=headers)
    assert status == 200, raw[:300]
    return spans_of(server, got["x-stockyard-trace-id"])


RECEIVER: list[Receiver] = []


def spans_of(server, trace_id: str) -> tuple[dict, list[dict]]:
    receiver = RECEIVER[0]

    def ready():
        found = receiver.of_request(trace_id)
        if not found:
            return None
        top = found[0]
        attempts = attrs(top)["stockyard.attempts"]
        return found if len(found) == 1 + attempts else None

    found = wait_for(ready, 15, "the request's spans")
    children = sorted(found[1:], key=lambda s: attrs(s)["stockyard.attempt"])
    return found[0], children


@pytest.fixture(scope="module", autouse=True)
def _receiver_for_helpers(receiver):
    RECEIVER.append(receiver)
    yield
    RECEIVER.clear()


def check_span(span: dict, *, server_span: bool) -> dict:
    """The conventions' checks every inference or embeddings span passes; its attributes."""
    a = attrs(span)
    kinds = {item["key"]: next(iter(item["value"])) for item in span["attributes"]}
    for name, kind in TYPES.items():
        if name in kinds:
            assert kinds[name] == kind, f"{name} is {kinds[name]}, the conventions' type is {kind}"
    for name in ("gen_ai.response.finish_reasons", "gen_ai.request.stop_sequences", "gen_ai.request.encoding_formats"):
        if name in a:
            assert all(isinstance(v, str) for v in a[name]), (name, a[name])
    assert span["kind"] == (2 if server_span else 3), "the request's span is SERVER, each provider call CLIENT"
    assert a["gen_ai.operation.name"] in OPERATIONS, a["gen_ai.operation.name"]
    assert a["gen_ai.provider.name"] in PROVIDERS, a["gen_ai.provider.name"]
    assert a["gen_ai.system"] == a["gen_ai.provider.name"]
    assert span["name"] == f"{a['gen_ai.operation.name']} {a['gen_ai.request.model']}"
    failed = span["status"]["code"] == 2
    assert failed == ("error.type" in a), "error.type exactly when the operation ended in an error"
    if "server.address" in a:
        assert isinstance(a["server.port"], int)
    if not server_span:
        assert "server.address" in a and "server.port" in a
    assert re.fullmatch(r"[0-9a-f]{32}", span["traceId"]) and re.fullmatch(r"[0-9a-f]{16}", span["spanId"])
    text = json.dumps(span)
    for secret in SECRETS:
        assert secret not in text, "a secret in an exported span"
    assert "authorization" not in text.lower()
    return a


def check_messages(value: str, *, output: bool) -> list[dict]:
    """``gen_ai.input.messages`` / ``gen_ai.output.messages`` against the conventions' JSON schemas."""
    messages = json.loads(value)
    assert isinstance(messages, list) and messages
    for m in messages:
        assert m["role"] in ("system", "user", "assistant", "tool"), m
        assert isinstance(m["parts"], list)
        for part in m["parts"]:
            for name in PART_FIELDS.get(part["type"], ()):
                assert name in part, (part, name)
            if part["type"] == "tool_call":
                assert isinstance(part.get("arguments", {}), (dict, list, str))
        if output:
            assert m["finish_reason"] in FINISH, m
    return messages


def check_request(top: dict, children: list[dict]) -> tuple[dict, list[dict]]:
    a = check_span(top, server_span=True)
    assert all(c["traceId"] == top["traceId"] and c["parentSpanId"] == top["spanId"] for c in children)
    return a, [check_span(c, server_span=False) for c in children]


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 1}
MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
CASES = {
    "chat": ("/v1/chat/completions", CHAT, "chat", "openai"),
    "chat-to-anthropic": ("/v1/chat/completions", {**CHAT, "model": "claude-sonnet-4-5"}, "chat", "anthropic"),
    "responses": ("/v1/responses", {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 16}, "chat", "openai"),
    "messages": ("/v1/messages", MESSAGES, "chat", "anthropic"),
    "messages-to-openai": ("/v1/messages", {**MESSAGES, "model": "gpt-4o-mini"}, "chat", "openai"),
    "gemini": (
        "/v1beta/models/gemini-2.5-flash:generateContent",
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"topK": 3}},
        "generate_content",
        "gcp.gemini",
    ),
}


def streamed(path: str, body: dict) -> tuple[str, dict]:
    if ":generateContent" in path:
        return path.replace(":generateContent", ":streamGenerateContent?alt=sse"), body
    return path, {**body, "stream": True}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_inference_spans_follow_the_conventions(plain, case, stream):
    path, body, operation, provider = CASES[case]
    if stream:
        path, body = streamed(path, body)
    top, children = send(plain, path, body)
    a, [child] = check_request(top, children)
    assert (a["gen_ai.operation.name"], a["gen_ai.provider.name"]) == (operation, provider)
    assert (child["gen_ai.operation.name"], child["gen_ai.provider.name"]) == (operation, provider)
    for span in (a, child):
        assert isinstance(span["gen_ai.usage.input_tokens"], int)
        assert isinstance(span["gen_ai.usage.output_tokens"], int)
        assert span["gen_ai.response.model"] and span["gen_ai.response.id"]
        assert span.get("gen_ai.request.stream") is (True if stream else None)
        assert span["gen_ai.response.finish_reasons"], "Recommended: what the model stopped for"
        assert not any(name in span for name in CONTENT), "content export is off"
        if stream:
            assert isinstance(span["gen_ai.response.time_to_first_chunk"], float)
    if case == "gemini":
        assert a["gen_ai.request.top_k"] == 3.0


def test_a_fallback_is_one_trace_continuing_the_callers_and_names_each_calls_model(plain):
    put_module(plain, "fallback", {"chains": {"openai/mock-error-500": ["groq/gpt-4o-mini"]}, "retries": 0})
    try:
        body = {**CHAT, "model": "openai/mock-error-500"}
        top, children = send(plain, "/v1/chat/completions", body, traceparent=f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")
    finally:
        put_module(plain, "fallback", {}, enabled=False)
    a, (failed, served_) = check_request(top, children)
    assert top["traceId"] == CALLER_TRACE and top["parentSpanId"] == CALLER_SPAN
    assert children[0]["status"]["code"] == 2 and failed["error.type"] == "upstream_500"
    assert children[1]["status"]["code"] == 1 and "error.type" not in a
    # each CLIENT span is one call to a provider: the model it asked that provider for
    assert failed["gen_ai.request.model"] == "mock-error-500"
    assert served_["gen_ai.request.model"] == "gpt-4o-mini", "the fallback asked groq for gpt-4o-mini"
    assert children[1]["name"] == "chat gpt-4o-mini"


def test_a_failed_request_has_error_type_on_both_spans(plain):
    body, headers = {**CHAT, "model": "openai/mock-error-500"}, {"Authorization": f"Bearer {ADMIN_KEY}"}
    status, got, _ = plain.request("POST", "/v1/chat/completions", body, headers=headers)
    assert status == 500
    top, children = spans_of(plain, got["x-stockyard-trace-id"])
    a, [child] = check_request(top, children)
    assert a["error.type"] == child["error.type"] == "upstream_500"
    assert a["http.response.status_code"] == 500


@pytest.mark.parametrize(
    "path, body, dimensions",
    [
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi", "dimensions": 4}, 4),
        (
            "/v1beta/models/gemini-embedding-001:embedContent",
            {"content": {"parts": [{"text": "hi"}]}, "outputDimensionality": 4},
            4,
        ),
    ],
    ids=["openai", "gemini"],
)
def test_embeddings_spans_follow_the_conventions(plain, path, body, dimensions):
    top, children = send(plain, path, body)
    a, [child] = check_request(top, children)
    for span in (a, child):
        assert span["gen_ai.operation.name"] == "embeddings"
        assert span["gen_ai.embeddings.dimension.count"] == dimensions
        assert "gen_ai.response.finish_reasons" not in span and "gen_ai.usage.output_tokens" not in span


def test_content_messages_tools_and_system_follow_the_schemas(content):
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": "Be brief.",
        "tools": [{"name": "get_weather", "description": "d", "input_schema": WEATHER["function"]["parameters"]}],
        "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
        ],
    }
    for path, b in (("/v1/messages", body), streamed("/v1/messages", body)):
        top, children = send(content, path, b)
        a, [child] = check_request(top, children)
        assert json.loads(a["gen_ai.system_instructions"]) == [{"type": "text", "content": "Be brief."}]
        inputs = check_messages(a["gen_ai.input.messages"], output=False)
        kinds = [p["type"] for m in inputs for p in m["parts"]]
        assert kinds == ["text", "tool_call", "tool_call_response"]
        assert [m["role"] for m in inputs] == ["user", "assistant", "tool"], "a tool result is the tool role's"
        check_messages(a["gen_ai.output.messages"], output=True)
        [tool] = json.loads(a["gen_ai.tool.definitions"])
        assert tool["type"] == "function" and tool["name"] == "get_weather"


def test_a_chat_tool_call_answer_is_a_tool_call_part(content, mock):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    answer = {
        "id": "chatcmpl-r43",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    mock.enqueue(Reply(json=answer))
    top, children = send(content, "/v1/chat/completions", {**CHAT, "tools": [WEATHER]})
    a, _ = check_request(top, children)
    [message] = check_messages(a["gen_ai.output.messages"], output=True)
    assert message["finish_reason"] == "tool_call"
    expected = {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}
    assert message["parts"] == [expected]
    assert a["gen_ai.response.finish_reasons"] == ["tool_calls"]


PROM_SAMPLE = re.compile(r"^(stockyard_[a-z0-9_]+?)(_bucket|_sum|_count)?(\{[^}]*\})? \S+$")


def test_metrics_follow_prometheus_naming(plain):
    status, _, raw = plain.request("GET", "/metrics")
    assert status == 200
    types: dict[str, str] = {}
    for line in raw.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
    assert types
    for name, kind in types.items():
        assert re.fullmatch(r"stockyard_[a-z0-9_]+", name), name
        assert (kind == "counter") == name.endswith("_total"), f"{name} ({kind}): counters and only they end _total"
        if kind == "histogram":
            assert name.endswith("_seconds"), f"{name}: a duration histogram names its unit"
    for line in raw.decode().splitlines():
        if line and not line.startswith("#"):
            match = PROM_SAMPLE.match(line)
            assert match, line
            labels = set(re.findall(r'([a-z_]+)="', match.group(3) or ""))
            assert labels <= {"provider", "model", "status", "kind", "key", "module", "hook", "le", "worker"}, line

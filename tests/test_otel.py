"""OpenTelemetry export: an OTLP/HTTP JSON receiver in the test sees one span per request with the
GenAI and Stockyard attributes, a child span per upstream attempt (failed ones too), the caller's
trace when a ``traceparent`` was sent, and the provider gets our attempt span as its parent. With
the collector away, requests go on unaffected and the drop counter in /metrics rises."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import OPENAI_KEY, served, wait_for
from mock_upstream import Reply
from module_helpers import ADMIN_KEY, chat, module_env, put_module, start_server
from otlp_collector import Receiver, attrs

from stockyard import otel
from stockyard.config import load, parse_otlp_headers
from stockyard.context import parse_traceparent
from stockyard.otel import Exporter

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ANTHROPIC_KEY = "sk-ant-otel-content-0123456789abcdef"
GEMINI_KEY = "AIza-otel-content-0123456789abcdefSECRET"
CALLER_SPAN = "00f067aa0ba902b7"
COLLECTOR_TOKEN = "otlp-secret-token-abcdef123456"


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory, receiver):
    env = module_env(
        cache_home,
        mock,
        STOCKYARD_OTLP_ENDPOINT=receiver.url,
        STOCKYARD_OTLP_HEADERS=f"authorization=Bearer {COLLECTOR_TOKEN},x-team=llm",
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=mock.url,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
    )
    with served(pyz_path, tmp_path_factory, "otel", env, never_logged=(COLLECTOR_TOKEN,)) as srv:
        yield srv


@pytest.fixture(scope="module")
def key(server) -> dict:
    """A client key (with one, the server requires keys on every request)."""
    status, _, raw = server.request(
        "POST", "/api/keys", {"name": "otel-app", "project": "web"}, {"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert status == 201
    return json.loads(raw)


def bearer(key: dict, **headers: str) -> dict:
    return {"Authorization": f"Bearer {key['key']}", **headers}


def request_span(spans: list[dict]) -> dict:
    [span] = [s for s in spans if s["kind"] == 2]
    return span


def test_one_span_per_request_with_genai_and_stockyard_attributes(server, mock, receiver, key):
    status, headers, _ = chat(
        server,
        headers=bearer(key, **{"x-stockyard-tags": "team=search"}),
        user="alice",
        temperature=0,
        top_p=0.5,
        seed=7,
        stop="END",
        response_format={"type": "json_object"},
    )
    assert status == 200
    trace_id = headers["x-stockyard-trace-id"]
    spans = wait_for(
        lambda: receiver.of_request(trace_id) if len(receiver.of_request(trace_id)) == 2 else None, 15, "2 spans"
    )
    top = request_span(spans)
    a = attrs(top)
    assert top["name"] == "chat gpt-4o-mini" and "parentSpanId" not in top
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.system"] == "openai", "deprecated, still sent for older dashboards"
    assert (a["gen_ai.request.temperature"], a["gen_ai.request.top_p"], a["gen_ai.request.seed"]) == (0.0, 0.5, 7)
    assert a["gen_ai.request.stop_sequences"] == ["END"] and "gen_ai.request.choice.count" not in a
    assert a["gen_ai.output.type"] == "json" and "gen_ai.request.stream" not in a
    assert a["gen_ai.request.model"] == "gpt-4o-mini" and a["gen_ai.response.model"]
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (12, 5)
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["stockyard.key_id"] == key["id"] and a["stockyard.key_name"] == "otel-app"
    assert a["stockyard.project"] == "web" and a["stockyard.user"] == "alice"
    assert a["stockyard.tag.team"] == "search"
    assert a["stockyard.cost_uc"] == 480 and a["stockyard.cost_usd"] == pytest.approx(480e-8)
    assert "gen_ai.input.messages" not in a, "content only when STOCKYARD_OTLP_CONTENT=true"
    [child] = [s for s in spans if s["kind"] == 3]
    assert child["parentSpanId"] == top["spanId"] and child["traceId"] == top["traceId"]
    assert receiver.headers[-1]["authorization"] == f"Bearer {COLLECTOR_TOKEN}"
    assert receiver.headers[-1]["x-team"] == "llm"
    sent = mock.requests[-1].headers
    assert sent["traceparent"] == f"00-{top['traceId']}-{child['spanId']}-01"


def test_a_fallback_has_a_child_span_per_attempt(server, mock, receiver, key):
    put_module(server, "fallback", {"chains": {"openai/mock-error-500": ["groq/gpt-4o-mini"]}, "retries": 0})
    try:
        status, headers, _ = chat(server, model="openai/mock-error-500", headers=bearer(key))
    finally:
        put_module(server, "fallback", {}, enabled=False)
    assert status == 200
    trace_id = headers["x-stockyard-trace-id"]
    wait_for(lambda: len(receiver.of_request(trace_id)) == 3, 15, "3 spans")
    spans = receiver.of_request(trace_id)
    top = request_span(spans)
    children = sorted((s for s in spans if s["kind"] == 3), key=lambda s: attrs(s)["stockyard.attempt"])
    assert [c["parentSpanId"] for c in children] == [top["spanId"]] * 2
    first, second = (attrs(c) for c in children)
    assert (first["stockyard.provider"], first["error.type"], first["http.response.status_code"]) == (
        "openai",
        "upstream_500",
        500,
    )
    assert children[0]["status"]["code"] == 2 and children[1]["status"]["code"] == 1
    assert second["stockyard.provider"] == "groq" and second["gen_ai.provider.name"] == "groq"
    assert attrs(top)["stockyard.attempts"] == 2


def test_the_callers_traceparent_is_joined_and_forwarded(server, mock, receiver, key):
    mock.clear()
    status, headers, _ = chat(server, headers=bearer(key, traceparent=f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
    assert status == 200
    trace_id = headers["x-stockyard-trace-id"]
    wait_for(lambda: len(receiver.of_request(trace_id)) == 2, 15, "2 spans")
    spans = receiver.of_request(trace_id)
    top = request_span(spans)
    assert top["traceId"] == CALLER_TRACE and top["parentSpanId"] == CALLER_SPAN
    [child] = [s for s in spans if s["kind"] == 3]
    upstream = mock.requests[-1].headers["traceparent"]
    assert upstream == f"00-{CALLER_TRACE}-{child['spanId']}-01"


def test_a_refused_request_has_its_span_in_the_callers_trace_too(server, receiver, key):
    other = "0af7651916cd43dd8448eb211c80319c"
    status, headers, _ = chat(server, headers={"traceparent": f"00-{other}-{CALLER_SPAN}-01"})  # no client key
    assert status == 401
    trace_id = headers["x-stockyard-trace-id"]
    wait_for(lambda: receiver.of_request(trace_id), 15, "the refusal's span")
    [top] = receiver.of_request(trace_id)
    assert top["traceId"] == other and top["parentSpanId"] == CALLER_SPAN and top["status"]["code"] == 2
    assert attrs(top)["error.type"] == "missing_api_key"


def responses(server, key: dict, headers: dict | None = None, **fields) -> tuple[int, dict, bytes]:
    body = {"model": "gpt-4o-mini", "input": "Weather in Paris?", **fields}
    return server.request("POST", "/v1/responses", body, headers=bearer(key, **(headers or {})))


def conversation_ids(receiver: Receiver, headers: dict) -> list:
    """``gen_ai.conversation.id`` of a request's span and of each of its attempts' spans (None: unset)."""
    trace_id = headers["x-stockyard-trace-id"]
    wait_for(lambda: len(receiver.of_request(trace_id)) == 2, 15, "2 spans")
    spans = sorted(receiver.of_request(trace_id), key=lambda s: s["kind"])  # the request's span first
    return [attrs(s).get("gen_ai.conversation.id") for s in spans]


def test_conversation_id_is_the_conversations_api_conversation(server, receiver, key):
    status, _, raw = server.request("POST", "/v1/conversations", {"items": []}, bearer(key))
    assert status == 200, raw
    conversation = json.loads(raw)["id"]
    status, headers, raw = responses(server, key, conversation=conversation)
    assert status == 200, raw
    assert conversation_ids(receiver, headers) == [conversation, conversation], "both spans, content export off"
    status, headers, raw = responses(server, key, conversation={"id": conversation}, input="And tomorrow?")
    assert status == 200, raw
    assert conversation_ids(receiver, headers) == [conversation, conversation]
    answer = json.loads(raw)["id"]
    # a response chain has no conversation id: previous_response_id names one response, another each turn
    status, headers, raw = responses(server, key, previous_response_id=answer, input="And after?")
    assert status == 200, raw
    assert conversation_ids(receiver, headers) == [None, None]
    status, headers, _ = responses(server, key)
    assert conversation_ids(receiver, headers) == [None, None], "no conversation named: none invented"


def test_conversation_id_is_the_agents_session(server, receiver, key):
    session = "0199a213-81c0-7800-8aa1-bbab2a035a53"
    codex = {"originator": "codex_cli_rs", "session_id": session}
    status, headers, _ = responses(server, key, codex)
    assert status == 200
    assert conversation_ids(receiver, headers) == [session, session]
    status, headers, _ = chat(server, headers=bearer(key, originator="codex_exec", **{"session-id": session}))
    assert status == 200
    assert conversation_ids(receiver, headers) == [session, session]
    status, headers, _ = chat(server, headers=bearer(key, **{"session-id": session}))  # not Codex: not its session
    assert status == 200
    assert conversation_ids(receiver, headers) == [None, None]
    status, _, raw = server.request("POST", "/v1/conversations", {}, bearer(key))
    conversation = json.loads(raw)["id"]
    status, headers, _ = responses(server, key, codex, conversation=conversation)
    assert status == 200
    assert conversation_ids(receiver, headers) == [conversation, conversation], "the conversation the body names wins"


def test_an_embeddings_span_names_its_formats_and_dimensions(server, receiver, key):
    body = {"model": "text-embedding-3-small", "input": "hello", "encoding_format": "base64", "dimensions": 256}
    status, headers, raw = server.request("POST", "/v1/embeddings", body, bearer(key))
    assert status == 200, raw
    trace_id = headers["x-stockyard-trace-id"]
    wait_for(lambda: len(receiver.of_request(trace_id)) == 2, 15, "2 spans")
    for span in receiver.of_request(trace_id):
        a = attrs(span)
        assert a["gen_ai.operation.name"] == "embeddings"
        assert a["gen_ai.request.encoding_formats"] == ["base64"] and a["gen_ai.embeddings.dimension.count"] == 256
    status, headers, raw = server.request(
        "POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}, bearer(key)
    )
    assert status == 200, raw
    trace_id = headers["x-stockyard-trace-id"]
    wait_for(lambda: len(receiver.of_request(trace_id)) == 2, 15, "2 spans")
    a = attrs(request_span(receiver.of_request(trace_id)))
    assert "gen_ai.request.encoding_formats" not in a and "gen_ai.embeddings.dimension.count" not in a, "not asked"


# -- what every span says, content export off: first chunk, response id, output type, openai.* ----

FIRST_CHUNK_HOLD_S = 0.3  # the mock sends its answer's head, then holds its first event this long
# (path, body) of a streamed request in each client dialect
STREAMED = {
    "openai": ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    "anthropic": (
        "/v1/messages",
        {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]},
    ),
    "gemini": (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        {"contents": [{"parts": [{"text": "hi"}]}]},
    ),
}
IDS = {"openai": "chatcmpl-mock", "anthropic": "msg_mock", "gemini": "resp_mock"}


def dialect_request(server, key: dict, dialect: str, stream: bool) -> dict:
    path, body = STREAMED[dialect]
    if dialect == "gemini":
        path = path if stream else path.replace("streamGenerateContent?alt=sse", "generateContent")
    else:
        body = {**body, "stream": stream}
    status, headers, raw = server.request("POST", path, body, bearer(key, **{"anthropic-version": "2023-06-01"}))
    assert status == 200, raw
    return headers


@pytest.mark.parametrize("dialect", ["openai", "anthropic", "gemini"])
def test_a_streamed_span_says_when_its_first_chunk_went_out(server, mock, receiver, key, dialect):
    """``gen_ai.response.time_to_first_chunk``: from the request to the first chunk relayed to the
    client (not the provider's head, which the mock sends at once), only on streamed spans."""
    mock.enqueue(Reply(hang_after=0, hang_s=FIRST_CHUNK_HOLD_S))
    headers = dialect_request(server, key, dialect, stream=True)
    trace_id = headers["x-stockyard-trace-id"]
    wait_for(lambda: len(receiver.of_request(trace_id)) == 2, 15, "2 spans")
    for span in receiver.of_request(trace_id):
        took = (int(span["endTimeUnixNano"]) - int(span["startTimeUnixNano"])) / 1e9
        first = attrs(span)["gen_ai.response.time_to_first_chunk"]
        assert FIRST_CHUNK_HOLD_S <= first <= took, (first, took)
    a, children = exported(receiver, dialect_request(server, key, dialect, stream=False))
    assert "gen_ai.response.time_to_first_chunk" not in a and "gen_ai.response.time_to_first_chunk" not in children[0]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dialect", ["openai", "anthropic", "gemini"])
def test_the_response_id_is_sent_without_content_export(server, receiver, key, dialect, stream):
    """The answer's id is no content: both spans name it with STOCKYARD_OTLP_CONTENT off."""
    a, [child] = exported(receiver, dialect_request(server, key, dialect, stream))
    assert "gen_ai.output.messages" not in a, "content export is off"
    assert a["gen_ai.response.id"].startswith(IDS[dialect]) and child["gen_ai.response.id"] == a["gen_ai.response.id"]


def test_a_responses_answer_names_its_id_and_openai_api_type(server, receiver, key):
    status, headers, raw = responses(server, key, service_tier="default")
    assert status == 200, raw
    a, [child] = exported(receiver, headers)
    assert a["gen_ai.response.id"] == json.loads(raw)["id"]
    assert a["openai.api.type"] == "responses" and a["openai.request.service_tier"] == "default"


@pytest.mark.parametrize("stream", [False, True])
def test_openai_spans_carry_the_openai_attributes(server, mock, receiver, key, stream):
    """``openai.request.service_tier``, ``openai.response.service_tier`` and
    ``openai.response.system_fingerprint`` (OpenAI's registry), read from what was parsed anyway."""
    answer = {
        "id": "chatcmpl-tiered",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "service_tier": "flex",
        "system_fingerprint": "fp_tiered",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    chunk = {**answer, "object": "chat.completion.chunk", "usage": None}
    chunk["choices"] = [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]
    mock.enqueue(Reply(sse=[json.dumps(chunk), "[DONE]"]) if stream else Reply(json=answer))
    status, headers, raw = chat(server, headers=bearer(key), service_tier="flex", stream=stream)
    assert status == 200, raw
    a, [child] = exported(receiver, headers)
    for span in (a, child):
        assert span["openai.request.service_tier"] == "flex" and span["openai.api.type"] == "chat_completions"
        assert (span["openai.response.service_tier"], span["openai.response.system_fingerprint"]) == (
            "flex",
            "fp_tiered",
        )
    a, _ = exported(receiver, dialect_request(server, key, "anthropic", stream=False))
    assert not [k for k in a if k.startswith("openai.")], "OpenAI's attributes only on OpenAI's spans"


@pytest.mark.parametrize(
    ("path", "body", "output"),
    [
        ("/v1/chat/completions", {"model": "gemini/gemini-2.5-flash-image", "modalities": ["image", "text"]}, "image"),
        ("/v1/chat/completions", {"model": "gpt-4o-audio-preview", "modalities": ["text", "audio"]}, "speech"),
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "modalities": ["text"]}, None),
    ],
)
def test_a_chat_span_asking_for_images_or_audio_names_that_output_type(server, receiver, key, path, body, output):
    """A chat request's ``modalities`` (an image model's, an audio model's) is the output it asks for."""
    chat_body = {**body, "messages": [{"role": "user", "content": "Draw"}]}
    if output == "speech":
        chat_body["audio"] = {"voice": "alloy", "format": "wav"}
    status, headers, raw = server.request("POST", path, chat_body, bearer(key))
    assert status == 200, raw
    assert exported(receiver, headers)[0].get("gen_ai.output.type") == output


def test_a_gemini_span_asking_for_images_names_that_output_type(server, receiver, key):
    body = {"contents": [{"role": "user", "parts": [{"text": "Draw"}]}]}
    body["generationConfig"] = {"responseModalities": ["TEXT", "IMAGE"]}
    path = "/v1beta/models/gemini-2.5-flash-image:generateContent"
    status, headers, raw = server.request("POST", path, body, bearer(key))
    assert status == 200, raw
    assert exported(receiver, headers)[0]["gen_ai.output.type"] == "image"


def test_media_spans_name_their_output_type(server, receiver, key):
    """``gen_ai.output.type``: an image for the Images API, speech for text-to-speech, text for a
    transcription (embeddings: none, see above)."""
    body = {"model": "dall-e-2", "prompt": "a cat", "n": 1}
    status, headers, raw = server.request("POST", "/v1/images/generations", body, bearer(key))
    assert status == 200, raw
    assert exported(receiver, headers)[0]["gen_ai.output.type"] == "image"
    body = {"model": "tts-1", "input": "hello", "voice": "alloy"}
    status, headers, raw = server.request("POST", "/v1/audio/speech", body, bearer(key))
    assert status == 200, raw
    assert exported(receiver, headers)[0]["gen_ai.output.type"] == "speech"
    boundary = "otel-form-boundary-1234"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        ).encode()
        + b"RIFF"
        + b"\0" * 2000
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, headers, raw = server.request(
        "POST",
        "/v1/audio/transcriptions",
        raw=form,
        headers=bearer(key, **{"Content-Type": f"multipart/form-data; boundary={boundary}"}),
    )
    assert status == 200, raw
    assert exported(receiver, headers)[0]["gen_ai.output.type"] == "text"


def test_a_refused_request_names_its_conversation(server, receiver, key):
    """A request refused before any provider (rate limit 429, bad key 401) still carries the
    conversation it named: the Conversations API conversation its key holds; the session Codex
    names in its headers (a bad key is refused before the body, so Claude Code's is not read)."""
    status, _, raw = server.request("POST", "/api/keys", {"name": "otel-rpm", "rpm": 1}, bearer({"key": ADMIN_KEY}))
    assert status == 201, raw
    limited = json.loads(raw)
    put_module(server, "ratelimit", {}, enabled=True)
    try:
        status, _, raw = server.request("POST", "/v1/conversations", {"items": []}, bearer(limited))
        assert status == 200, raw  # the one request of this minute
        conversation = json.loads(raw)["id"]
        status, headers, raw = responses(server, limited, conversation=conversation)
    finally:
        put_module(server, "ratelimit", {}, enabled=False)
    assert status == 429, raw
    trace_id = headers["x-stockyard-trace-id"]
    [span] = wait_for(lambda: receiver.of_request(trace_id), 15, "the refusal's span")
    assert attrs(span)["gen_ai.conversation.id"] == conversation
    codex = {"originator": "codex_cli_rs", "session_id": "sess-otel-401", "Authorization": "Bearer sk-sy-wrong"}
    status, headers, raw = server.request("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}, codex)
    assert status == 401, raw  # refused from the headers, before the body is read
    trace_id = headers["x-stockyard-trace-id"]
    [span] = wait_for(lambda: receiver.of_request(trace_id), 15, "the refusal's span")
    assert attrs(span)["gen_ai.conversation.id"] == "sess-otel-401"


def test_collector_down_requests_unaffected_and_drops_counted(pyz_path, cache_home, mock, tmp_path_factory):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    srv = start_server(pyz_path, cache_home, mock, tmp_path_factory, "otel-down", STOCKYARD_OTLP_ENDPOINT=dead)
    try:
        for _ in range(3):
            status, _, body = chat(srv)
            assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "Hello from mock"

        def dropped() -> int:
            _, _, text = srv.request("GET", "/metrics")
            for line in text.decode().splitlines():
                if line.startswith("stockyard_otlp_spans_dropped_total "):
                    return int(float(line.split()[1]))
            raise AssertionError("no drop counter in /metrics")

        wait_for(lambda: dropped() >= 6, 30, "dropped spans counted")
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def test_content_only_when_opted_in_and_after_redaction(pyz_path, cache_home, mock, tmp_path_factory, receiver):
    srv = start_server(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        "otel-content",
        STOCKYARD_OTLP_ENDPOINT=receiver.url,
        STOCKYARD_OTLP_CONTENT="true",
    )
    try:
        put_module(srv, "redact", {"mode": "store"})
        secret = "AKIA" + "ABCDEFGHIJKLMNOP"
        status, headers, _ = chat(srv, messages=[{"role": "user", "content": f"my key is {secret}, say hello"}])
        assert status == 200
        trace_id = headers["x-stockyard-trace-id"]
        wait_for(lambda: len(receiver.of_request(trace_id)) == 2, 15, "2 spans")
    finally:
        srv.stop()
    a = attrs(request_span(receiver.of_request(trace_id)))
    assert "say hello" in a["gen_ai.input.messages"] and "[REDACTED:aws_access_key]" in a["gen_ai.input.messages"]
    assert secret not in json.dumps(receiver.spans)
    assert "Hello from mock" in a["gen_ai.output.messages"]


def test_the_exporter_retries_a_failed_batch_and_its_queue_is_bounded():
    r = Receiver()
    try:
        r.fail_next = 2
        exporter = Exporter(r.url, {}, retry_delays=(0.01, 0.01, 0.01)).start()
        exporter.submit(
            [
                {
                    "traceId": "a" * 32,
                    "spanId": "b" * 16,
                    "name": "x",
                    "attributes": [{"key": "k", "value": {"stringValue": "v"}}],
                }
            ]
        )
        wait_for(lambda: exporter.exported == 1, 10, "the span exported after two 503s")
        assert r.posts == 3 and exporter.dropped == 0 and len(r.spans) == 1
        exporter.stop()
    finally:
        r.server.shutdown()
    full = Exporter("http://127.0.0.1:9", {}, queue_spans=3)  # not started: nothing drains it
    full.submit([{"n": i} for i in range(5)])
    assert (full.depth, full.dropped) == (3, 2), "a full queue drops at once instead of waiting"


def test_otlp_settings_are_checked():
    settings = load({}, {"STOCKYARD_OTLP_ENDPOINT": "http://c:4318/v1/traces/", "STOCKYARD_OTLP_HEADERS": "a=b=c, x=y"})
    assert settings.otlp_endpoint == "http://c:4318"
    assert dict(settings.otlp_headers) == {"a": "b=c", "x": "y"}
    assert "b=c" not in repr(settings), "header values are secrets"
    with pytest.raises(ValueError, match="OTLP_ENDPOINT"):
        load({}, {"STOCKYARD_OTLP_ENDPOINT": "collector:4318"})
    assert load({}, {"STOCKYARD_OTLP_ENDPOINT": "http://c:4318/v1/metrics"}).otlp_endpoint == "http://c:4318"
    assert (settings.otlp_metrics_interval_s, settings.otlp_metrics_series) == (60.0, 2000)
    metrics = load({}, {"STOCKYARD_OTLP_METRICS_INTERVAL": "15s", "STOCKYARD_OTLP_METRICS_MAX_SERIES": "50"})
    assert (metrics.otlp_metrics_interval_s, metrics.otlp_metrics_series) == (15.0, 50)
    assert load({}, {"STOCKYARD_OTLP_METRICS_INTERVAL": "off"}).otlp_metrics_interval_s == 0
    with pytest.raises(ValueError, match="STOCKYARD_OTLP_METRICS_INTERVAL"):
        load({}, {"STOCKYARD_OTLP_METRICS_INTERVAL": "often"})
    with pytest.raises(ValueError, match="STOCKYARD_OTLP_METRICS_MAX_SERIES"):
        load({}, {"STOCKYARD_OTLP_METRICS_MAX_SERIES": "0"})
    with pytest.raises(ValueError) as err:
        parse_otlp_headers("novalue-secret")
    assert "secret" not in str(err.value) or "novalue" in str(err.value)


@pytest.mark.parametrize(
    "value, ok",
    [
        (f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", True),
        (f"00-{'0' * 32}-{CALLER_SPAN}-01", False),
        (f"00-{CALLER_TRACE}-{'0' * 16}-01", False),
        (f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01", False),
        (f"00-{CALLER_TRACE}-{CALLER_SPAN}-01-extra", False),
        (f"01-{CALLER_TRACE}-{CALLER_SPAN}-01-future", True),
        ("garbage", False),
        (f"00-{CALLER_TRACE[:-1]}g-{CALLER_SPAN}-01", False),
    ],
)
def test_traceparent_parsing(value, ok):
    assert (parse_traceparent(value) is not None) == ok


@pytest.mark.parametrize("pace_s", [0.0, 0.2])
def test_a_collector_answering_without_end_does_not_hold_the_exporter(pace_s):
    """The exporter read the collector's whole answer: one that never ended (or sent a byte now and then,
    each within the socket timeout) held the one export thread for ever, every later span dropped, and a
    fast endless answer grew its memory. It reads at most 64 KiB, within its post timeout."""
    stop = threading.Event()

    class Endless(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            piece = b"x" * (1 if pace_s else 65536)
            try:
                while not stop.is_set():
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.flush()
                    stop.wait(pace_s)
            except OSError:
                pass  # the exporter hung up: what is wanted

        def log_message(self, *args) -> None:
            pass

    endless = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    endless.daemon_threads = True
    threading.Thread(target=endless.serve_forever, daemon=True).start()
    done: list = []
    try:
        exporter = Exporter(f"http://127.0.0.1:{endless.server_address[1]}", {}, post_timeout_s=1.0)
        poster = threading.Thread(target=lambda: done.append(exporter._post(b'{"resourceSpans": []}')), daemon=True)
        poster.start()
        poster.join(15)
        assert done == [None], "the post did not end: the exporter is held by its collector's answer"
    finally:
        stop.set()
        endless.shutdown()


def test_a_collector_redirect_is_not_followed():
    """Was: urllib followed a collector's 302 — the OTLP headers (a vendor's API key) went to the
    other host, as a GET without the spans, and the batch counted as exported."""
    other = Receiver()  # where the redirect points: a GET there would be its 501, a POST counted

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(302)
            self.send_header("Location", other.url + "/v1/traces")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    redirecting = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=redirecting.serve_forever, daemon=True).start()
    try:
        exporter = Exporter(f"http://127.0.0.1:{redirecting.server_address[1]}", {"Authorization": "Bearer vendor"})
        assert exporter._post(b'{"resourceSpans": []}') == (False, "HTTP 302")  # refused, not retried
        assert other.posts == 0 and not other.headers
    finally:
        redirecting.shutdown()
        other.server.shutdown()


# -- content: the prompt and the answer as the GenAI conventions' messages ----------------------------

PNG_DATA = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
IMAGE_URL = "https://example.com/cat.png"
PARIS, CITY = '{"city":"Paris"}', {"city": "Paris"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
# Part types of the conventions' schemas (gen-ai-input-messages.json, gen-ai-output-messages.json)
# and the fields each requires beside ``type``.
REQUIRED = {
    "text": ("content",),
    "reasoning": ("content",),
    "tool_call": ("name",),
    "tool_call_response": ("response",),
    "blob": ("modality", "content"),
    "uri": ("modality", "uri"),
    "file": ("modality", "file_id"),
}


@pytest.fixture(scope="module")
def content_server(pyz_path, cache_home, mock, tmp_path_factory, receiver):
    env = module_env(
        cache_home,
        mock,
        STOCKYARD_OTLP_ENDPOINT=receiver.url,
        STOCKYARD_OTLP_CONTENT="true",
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=mock.url,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
    )
    with served(pyz_path, tmp_path_factory, "otel-messages", env, never_logged=("could not build spans",)) as srv:
        yield srv


def exported(receiver: Receiver, headers: dict, spans: int = 2) -> tuple[dict, list[dict]]:
    """The attributes of a request's span, and of its attempts' spans, once the collector has them."""
    trace_id = headers["x-stockyard-trace-id"]
    wait_for(lambda: len(receiver.of_request(trace_id)) == spans, 15, f"{spans} spans")
    found = receiver.of_request(trace_id)
    return attrs(request_span(found)), [attrs(s) for s in found if s["kind"] == 3]


def check_parts(parts: list) -> list[dict]:
    """Each part as the schemas require it: a type, and the fields its type requires."""
    assert isinstance(parts, list)
    for part in parts:
        assert isinstance(part, dict) and isinstance(part.get("type"), str), part
        for name in REQUIRED.get(part["type"], ()):
            assert name in part, (part, name)
        if part["type"] in ("text", "reasoning"):
            assert isinstance(part["content"], str)
        if part["type"] == "blob":
            assert part["content"] == "", "inline data is never exported"
    return parts


def messages_of(value: str, output: bool = False) -> list[dict]:
    """An input or output messages attribute, parsed and checked against the schema's required fields."""
    messages = json.loads(value)
    assert isinstance(messages, list) and messages
    for message in messages:
        assert isinstance(message.get("role"), str), message
        check_parts(message["parts"])
        if output:
            assert isinstance(message.get("finish_reason"), str), message
    return messages


def text(content: str) -> dict:
    return {"type": "text", "content": content}


def parts_of(messages: list[dict], kind: str) -> list[dict]:
    return [p for m in messages for p in m["parts"] if p["type"] == kind]


def test_chat_messages_follow_the_conventions(content_server, mock, receiver):
    messages = [
        {"role": "system", "content": "You answer about the weather."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"Weather in Paris? my key {OPENAI_KEY}"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_DATA}"}},
                {"type": "image_url", "image_url": {"url": IMAGE_URL}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "rainy, 57F"},
    ]
    status, headers, raw = chat(content_server, messages=messages, tools=TOOLS, temperature=0.25, max_tokens=77, n=2)
    assert status == 200, raw
    a, [child] = exported(receiver, headers)
    sent = messages_of(a["gen_ai.input.messages"])
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool"]
    assert sent[1]["parts"][0]["content"] == "Weather in Paris? my key [redacted]", "scrubbed"
    blob, uri = sent[1]["parts"][1:]
    assert (blob["type"], blob["modality"], blob["mime_type"]) == ("blob", "image", "image/png")
    assert (uri["type"], uri["uri"]) == ("uri", IMAGE_URL)
    assert parts_of(sent, "tool_call") == [
        {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}
    ]
    assert parts_of(sent, "tool_call_response") == [
        {"type": "tool_call_response", "id": "call_1", "response": "rainy, 57F"}
    ]
    assert "gen_ai.system_instructions" not in a, "chat's system message is part of the history"
    out = messages_of(a["gen_ai.output.messages"], output=True)
    answer = {"role": "assistant", "parts": [{"type": "text", "content": "Hello from mock"}], "finish_reason": "stop"}
    assert out == [answer, answer], "one output message per choice"
    assert a["gen_ai.request.choice.count"] == 2
    assert a["gen_ai.response.id"].startswith("chatcmpl-mock")
    assert child["gen_ai.response.id"] == a["gen_ai.response.id"]
    assert (a["gen_ai.request.temperature"], a["gen_ai.request.max_tokens"]) == (0.25, 77)
    assert child["gen_ai.request.max_tokens"] == 77 and child["server.address"] == "127.0.0.1"
    everything = json.dumps(receiver.of_request(headers["x-stockyard-trace-id"]))
    assert PNG_DATA not in everything and OPENAI_KEY not in everything


def test_a_streamed_chat_answer_is_assembled(content_server, receiver):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Weather?"}], "tools": TOOLS}
    status, headers, raw = content_server.request("POST", "/v1/chat/completions", {**body, "stream": True})
    assert status == 200 and raw.startswith(b"data:")
    a, _ = exported(receiver, headers)
    assert a["gen_ai.request.stream"] is True
    [out] = messages_of(a["gen_ai.output.messages"], output=True)
    assert out["finish_reason"] == "tool_call"
    assert out["parts"] == [{"type": "tool_call", "id": "call_mock1", "name": "get_weather", "arguments": CITY}]
    assert messages_of(a["gen_ai.input.messages"]) == [{"role": "user", "parts": [text("Weather?")]}]


def test_a_streamed_tool_call_with_a_huge_index_costs_no_memory(content_server, mock, receiver):
    """Was: folding a chat stream made every tool call up to a delta's ``index``, so one 150-byte
    event naming index 1,000,000 (an odd OpenAI-compatible server) took ~400 MB and over a second
    on the request thread, and 10**12 took the process down; the index only orders the calls."""
    call = {"index": 1_000_000, "id": "call_far", "function": {"name": "get_weather", "arguments": PARIS}}
    chunk = {"id": "chatcmpl-far", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}
    end = {"id": "chatcmpl-far", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    mock.enqueue(Reply(sse=[json.dumps(chunk), json.dumps(end), "[DONE]"]))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Weather?"}], "stream": True}
    status, headers, raw = content_server.request("POST", "/v1/chat/completions", body)
    assert status == 200 and b"call_far" in raw
    a, _ = exported(receiver, headers)
    [out] = messages_of(a["gen_ai.output.messages"], output=True)
    assert out["parts"] == [{"type": "tool_call", "id": "call_far", "name": "get_weather", "arguments": CITY}]


ANTHROPIC_HISTORY = [
    {
        "role": "user",
        "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_DATA}},
            {"type": "text", "text": "Weather here?"},
        ],
    },
    {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "rainy"}]},
            {"type": "text", "text": f"and my key is {ANTHROPIC_KEY}"},
        ],
    },
]
ANTHROPIC_TOOLS = [{"name": "get_weather", "input_schema": {"type": "object"}}]


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_messages_follow_the_conventions(content_server, receiver, stream):
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You answer about the weather."}],
        "messages": ANTHROPIC_HISTORY if not stream else ANTHROPIC_HISTORY[:1],
        "tools": ANTHROPIC_TOOLS,
        "top_k": 5,
    }
    if stream:
        body.update(stream=True, thinking={"type": "enabled", "budget_tokens": 1024})
    status, headers, raw = content_server.request("POST", "/v1/messages", body, {"anthropic-version": "2023-06-01"})
    assert status == 200, raw
    a, _ = exported(receiver, headers)
    system = check_parts(json.loads(a["gen_ai.system_instructions"]))
    assert system == [{"type": "text", "content": "You answer about the weather."}]
    sent = messages_of(a["gen_ai.input.messages"])
    assert sent[0]["parts"][0] == {"type": "blob", "modality": "image", "mime_type": "image/png", "content": ""}
    assert a["gen_ai.request.top_k"] == 5.0 and a["gen_ai.provider.name"] == "anthropic"
    [out] = messages_of(a["gen_ai.output.messages"], output=True)
    assert a["gen_ai.response.id"].startswith("msg_mock")
    if not stream:
        assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
        assert sent[2]["parts"] == [{"type": "tool_call_response", "id": "toolu_1", "response": "rainy"}]
        assert sent[3]["parts"] == [{"type": "text", "content": "and my key is [redacted]"}]
        assert out == {"role": "assistant", "parts": [text("Hello from mock")], "finish_reason": "stop"}
    else:
        assert a["gen_ai.request.stream"] is True
        assert out["finish_reason"] == "tool_call"
        assert out["parts"] == [
            {"type": "reasoning", "content": "Let me think about the weather."},
            {"type": "tool_call", "id": "toolu_mock1", "name": "get_weather", "arguments": {"city": "Paris"}},
        ]
    assert PNG_DATA not in json.dumps(a) and ANTHROPIC_KEY not in json.dumps(a)


@pytest.mark.parametrize("stream", [False, True])
def test_responses_items_follow_the_conventions(content_server, receiver, stream):
    items = [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Weather here?"},
                {"type": "input_image", "image_url": f"data:image/jpeg;base64,{PNG_DATA}"},
            ],
        },
        {"type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_9", "output": "rainy"},
    ]
    body = {
        "model": "gpt-4o-mini",
        "instructions": "You answer about the weather.",
        "input": items if not stream else items[:1],
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        "max_output_tokens": 300,
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
        "stream": stream,
    }
    status, headers, raw = content_server.request("POST", "/v1/responses", body)
    assert status == 200, raw
    a, _ = exported(receiver, headers)
    assert json.loads(a["gen_ai.system_instructions"]) == [{"type": "text", "content": "You answer about the weather."}]
    sent = messages_of(a["gen_ai.input.messages"])
    assert sent[0]["parts"][1] == {"type": "blob", "modality": "image", "mime_type": "image/jpeg", "content": ""}
    assert (a["gen_ai.request.max_tokens"], a["gen_ai.output.type"]) == (300, "json")
    [out] = messages_of(a["gen_ai.output.messages"], output=True)
    assert a["gen_ai.response.id"].startswith("resp_")
    if not stream:
        assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
        assert parts_of(sent, "tool_call")[0]["arguments"] == {"city": "Paris"}
        assert sent[2]["parts"] == [{"type": "tool_call_response", "id": "call_9", "response": "rainy"}]
        assert out["finish_reason"] == "stop" and out["parts"] == [text(PARIS)]
    else:
        assert out["finish_reason"] == "tool_call"
        assert [p["type"] for p in out["parts"]] == ["tool_call"] and out["parts"][0]["name"] == "get_weather"


GEMINI_CONTENTS = [
    {"role": "user", "parts": [{"text": "Weather here?"}, {"inlineData": {"mimeType": "image/png", "data": PNG_DATA}}]},
    {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
    {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"sky": "rainy"}}}]},
]


@pytest.mark.parametrize("how", ["generateContent", "streamGenerateContent?alt=sse", "streamGenerateContent"])
def test_gemini_contents_follow_the_conventions(content_server, receiver, how):
    answered = how == "generateContent"
    body = {
        "systemInstruction": {"parts": [{"text": "You answer about the weather."}]},
        "contents": GEMINI_CONTENTS if answered else GEMINI_CONTENTS[:1],
        "tools": [{"functionDeclarations": [{"name": "get_weather"}]}] if not answered else [],
        "generationConfig": {"temperature": 0.5, "maxOutputTokens": 64, "candidateCount": 1},
    }
    path = f"/v1beta/models/gemini-2.5-flash:{how}"
    status, headers, raw = content_server.request("POST", path, body, {"x-goog-api-key": "client"})
    assert status == 200, raw
    a, _ = exported(receiver, headers)
    assert json.loads(a["gen_ai.system_instructions"]) == [{"type": "text", "content": "You answer about the weather."}]
    sent = messages_of(a["gen_ai.input.messages"])
    assert sent[0]["parts"][1] == {"type": "blob", "modality": "image", "mime_type": "image/png", "content": ""}
    assert (a["gen_ai.request.temperature"], a["gen_ai.request.max_tokens"]) == (0.5, 64)
    assert "gen_ai.request.choice.count" not in a, "only when it is not 1"
    [out] = messages_of(a["gen_ai.output.messages"], output=True)
    assert a["gen_ai.response.id"].startswith("resp_mock")
    if answered:
        assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
        assert parts_of(sent, "tool_call")[0]["arguments"] == {"city": "Paris"}
        assert sent[2]["parts"] == [{"type": "tool_call_response", "id": None, "response": {"sky": "rainy"}}]
        assert out == {"role": "assistant", "parts": [text("Hello from mock")], "finish_reason": "stop"}
    else:
        assert out["finish_reason"] == "tool_call"
        assert out["parts"] == [{"type": "tool_call", "id": None, "name": "get_weather", "arguments": CITY}]
    assert PNG_DATA not in json.dumps(a)


def test_a_huge_conversation_is_capped_and_says_so(content_server, receiver):
    from stockyard.otel_messages import ATTRIBUTE_CAP, PART_CAP

    long_text = "word " * 20_000  # 100,000 characters in one message
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": long_text}]
    messages += [{"role": "user", "content": f"turn {i} " + "x" * 3000} for i in range(40)]
    status, headers, _ = chat(content_server, messages=messages)
    assert status == 200
    a, _ = exported(receiver, headers)
    value = a["gen_ai.input.messages"]
    assert len(value) <= ATTRIBUTE_CAP
    sent = messages_of(value)
    assert sent[0]["parts"] == [{"type": "text", "content": "Be brief."}], "the first message is kept"
    assert sent[-1]["parts"][0]["content"].startswith("turn 39 "), "the newest message is kept"
    notes = [p["content"] for m in sent for p in m["parts"] if "left out here" in p["content"]]
    assert len(notes) == 1 and "messages (" in notes[0]
    kept = [p["content"] for m in sent for p in m["parts"]]
    assert all(len(text) <= PART_CAP + 64 for text in kept)
    assert len(sent) < len(messages)


def test_one_huge_text_is_cut_and_says_so(content_server, receiver):
    from stockyard.otel_messages import PART_CAP

    status, headers, _ = chat(content_server, messages=[{"role": "user", "content": "a" * 50_000}])
    assert status == 200
    a, _ = exported(receiver, headers)
    [message] = messages_of(a["gen_ai.input.messages"])
    text = message["parts"][0]["content"]
    assert text.startswith("a" * PART_CAP) and text.endswith(f"…[cut: {50_000 - PART_CAP} more characters]")


def test_a_body_of_another_shape_is_exported_as_text(content_server, mock, receiver):
    status, headers, _ = content_server.request(
        "POST", "/v1/chat/completions", raw=b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi'
    )
    assert status == 400
    a, _ = exported(receiver, headers, spans=1)
    assert a["gen_ai.input.messages"].startswith('{"model": "gpt-4o-mini", "messages": [{"role"')
    with pytest.raises(ValueError):
        json.loads(a["gen_ai.input.messages"])
    mock.enqueue(Reply(json={"not": "a completion"}))
    status, headers, raw = chat(content_server)
    assert status == 200 and json.loads(raw) == {"not": "a completion"}
    a, _ = exported(receiver, headers)
    assert json.loads(a["gen_ai.output.messages"]) == {"not": "a completion"}, "the answer as text, as before"
    assert messages_of(a["gen_ai.input.messages"]), "the request still follows the conventions"
    assert "gen_ai.response.id" not in a


# -- the tools a request offers, and the agent session it belongs to -----------------------------------

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def tool_definitions(a: dict) -> list[dict]:
    """``gen_ai.tool.definitions``, parsed and checked against the schema's required fields."""
    tools = json.loads(a["gen_ai.tool.definitions"])
    assert isinstance(tools, list) and tools
    for tool in tools:
        assert isinstance(tool.get("type"), str) and isinstance(tool.get("name"), str), tool
        assert isinstance(tool.get("parameters", {}), dict), "a JSON Schema document"
    return tools


def test_tool_definitions_follow_the_conventions(content_server, receiver):
    described = f"The weather in a city (my key {OPENAI_KEY})"
    weather = {"name": "get_weather", "description": described, "parameters": WEATHER_SCHEMA}
    chat_tools = [{"type": "function", "function": weather}]
    status, headers, raw = chat(content_server, tools=chat_tools)
    assert status == 200, raw
    a, [child] = exported(receiver, headers)
    assert tool_definitions(a) == [
        {
            "type": "function",
            "name": "get_weather",
            "description": "The weather in a city (my key [redacted])",
            "parameters": WEATHER_SCHEMA,
        }
    ]
    assert "gen_ai.tool.definitions" not in child, "on the request's span, beside the input messages"
    assert OPENAI_KEY not in json.dumps(receiver.of_request(headers["x-stockyard-trace-id"]))

    body = {
        "model": "gpt-4o-mini",
        "input": "Weather?",
        "tools": [
            {"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA},
            {"type": "web_search_preview"},
        ],
    }
    status, headers, raw = content_server.request("POST", "/v1/responses", body)
    assert status == 200, raw
    a, _ = exported(receiver, headers)
    assert tool_definitions(a) == [
        {"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA},
        {"type": "web_search_preview", "name": "web_search_preview"},
    ]

    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [
            {"name": "get_weather", "description": "The weather", "input_schema": WEATHER_SCHEMA},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        ],
    }
    status, headers, raw = content_server.request("POST", "/v1/messages", body, {"anthropic-version": "2023-06-01"})
    assert status == 200, raw
    a, _ = exported(receiver, headers)
    assert tool_definitions(a) == [
        {"type": "function", "name": "get_weather", "description": "The weather", "parameters": WEATHER_SCHEMA},
        {"type": "web_search_20250305", "name": "web_search"},
    ]

    gemini_schema = {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}
    body = {
        "contents": [{"role": "user", "parts": [{"text": "Weather?"}]}],
        "tools": [
            {"functionDeclarations": [{"name": "get_weather", "parameters": gemini_schema}]},
            {"googleSearch": {}},
        ],
    }
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    status, headers, raw = content_server.request("POST", path, body, {"x-goog-api-key": "client"})
    assert status == 200, raw
    a, _ = exported(receiver, headers)
    assert tool_definitions(a) == [
        {"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA},  # Gemini's types as JSON Schema's
        {"type": "googleSearch", "name": "googleSearch"},
    ]

    status, headers, _ = chat(content_server)
    assert status == 200
    a, _ = exported(receiver, headers)
    assert "gen_ai.tool.definitions" not in a, "no tools offered"


def test_tool_definitions_only_with_content_export(server, receiver, key):
    status, headers, _ = chat(server, headers=bearer(key), tools=TOOLS)
    assert status == 200
    trace_id = headers["x-stockyard-trace-id"]
    wait_for(lambda: len(receiver.of_request(trace_id)) == 2, 15, "2 spans")
    for span in receiver.of_request(trace_id):
        assert "gen_ai.tool.definitions" not in attrs(span) and "gen_ai.input.messages" not in attrs(span)


def test_many_large_tools_are_capped_and_say_so(content_server, receiver):
    from stockyard.otel_messages import ATTRIBUTE_CAP, PART_CAP

    fields = {f"field_{i}": {"type": "string", "description": "x" * 100} for i in range(100)}
    huge = {"type": "object", "properties": fields}
    tools = [{"type": "function", "function": {"name": "huge", "parameters": huge}}]
    tools += [
        {"type": "function", "function": {"name": f"tool_{i}", "description": "d" * 1000, "parameters": WEATHER_SCHEMA}}
        for i in range(400)
    ]
    status, headers, raw = chat(content_server, tools=tools)
    assert status == 200, raw
    a, _ = exported(receiver, headers)
    value = a["gen_ai.tool.definitions"]
    assert len(value) <= ATTRIBUTE_CAP
    found = tool_definitions(a)
    assert found[0]["name"] == "huge" and set(found[0]["parameters"]) == {"$comment"}, "a schema over the cap: a note"
    assert "left out" in found[0]["parameters"]["$comment"] and len(json.dumps(huge)) > PART_CAP
    assert found[1] == {"type": "function", "name": "tool_0", "description": "d" * 1000, "parameters": WEATHER_SCHEMA}
    named = [t for t in found[:-1] if set(t) == {"type", "name"}]
    assert named and named[0]["name"].startswith("tool_"), "then only the names, the properties the schema requires"
    assert found[-1]["type"] == "stockyard.left_out" and f"{len(named)} tools named only" in found[-1]["name"]
    assert f"{len(tools) - len(found) + 1} left out" in found[-1]["name"]
    assert len(found) < len(tools)


def test_conversation_id_is_claude_codes_session(content_server, receiver):
    session = "5b4a9c1e-8f7d-4e21-9a3b-0c6d2e1f4a55"
    device = "a" * 64
    for user_id in (
        json.dumps({"device_id": device, "account_uuid": "", "session_id": session}),
        f"user_{device}_account__session_{session}",
        f"user_{device}",  # no session named: none invented
    ):
        body = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"user_id": user_id},
        }
        status, headers, raw = content_server.request("POST", "/v1/messages", body, {"anthropic-version": "2023-06-01"})
        assert status == 200, raw
        a, [child] = exported(receiver, headers)
        expected = session if "session" in user_id else None
        assert a.get("gen_ai.conversation.id") == child.get("gen_ai.conversation.id") == expected, user_id
        assert session not in a["stockyard.user"], "the end user is the device, the session is the conversation"


def test_the_exporter_queue_is_bounded_in_bytes_not_only_in_spans():
    """With content export a span carries up to 16K characters in each of several attributes; a
    collector away for a while must not make 4,096 of them (hundreds of MB a process) wait."""
    big = "p" * (1024 * 1024)
    text = [{"key": "gen_ai.input.messages", "value": {"stringValue": big}}]
    span = {"traceId": "a" * 32, "spanId": "b" * 16, "name": "x", "attributes": text}
    away = Exporter("http://127.0.0.1:9", {})  # not started: a collector that takes nothing
    away.submit([span] * 100)
    assert away.depth * len(big) <= otel.QUEUE_BYTES
    assert away.depth + away.dropped == 100 and away.dropped > 0
    r = Receiver()
    try:  # what is sent frees its room: the queue takes spans again once the collector is back
        back = Exporter(r.url, {}).start()
        for _ in range(3):
            back.submit([span] * 40)
            wait_for(lambda: back.depth == 0, 10, "the queue sent")
        wait_for(lambda: back.exported + back.dropped == 120, 10, "every span sent or dropped")
        assert back.exported == 120 and back.queued_bytes == 0
        back.stop()
    finally:
        r.server.shutdown()

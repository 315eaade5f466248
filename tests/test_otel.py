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
from conftest import wait_for
from module_helpers import ADMIN_KEY, chat, put_module, start_server

from stockyard.config import load
from stockyard.context import parse_traceparent
from stockyard.otel import Exporter, parse_headers

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
COLLECTOR_TOKEN = "otlp-secret-token-abcdef123456"


class Receiver:
    """A small OTLP/HTTP collector: decodes each JSON export and keeps its spans and headers."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.headers: list[dict] = []
        self.fail_next = 0  # answer this many posts with 503 first
        self.posts = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.posts += 1
                    if receiver.fail_next:
                        receiver.fail_next -= 1
                        self.send_response(503)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                    for rs in body["resourceSpans"]:
                        for ss in rs["scopeSpans"]:
                            receiver.spans.extend(ss["spans"])
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_request(self, trace_id: str) -> list[dict]:
        """The spans of one Stockyard request: its own and its children (the attempts)."""
        with self.lock:
            tops = [s for s in self.spans if s["kind"] == 2 and attrs(s).get("stockyard.trace_id") == trace_id]
            if not tops:
                return []
            top = tops[0]
            return [top, *(s for s in self.spans if s.get("parentSpanId") == top["spanId"])]


def attrs(span: dict) -> dict:
    out = {}
    for item in span["attributes"]:
        value = item["value"]
        ((kind, v),) = value.items()
        if kind == "intValue":
            v = int(v)
        elif kind == "arrayValue":
            v = [next(iter(x.values())) for x in v["values"]]
        out[item["key"]] = v
    return out


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory, receiver):
    srv = start_server(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        "otel",
        STOCKYARD_OTLP_ENDPOINT=receiver.url,
        STOCKYARD_OTLP_HEADERS=f"authorization=Bearer {COLLECTOR_TOKEN},x-team=llm",
    )
    yield srv
    srv.stop()
    assert COLLECTOR_TOKEN not in srv.log
    assert "Traceback" not in srv.log


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
    )
    assert status == 200
    trace_id = headers["x-stockyard-trace-id"]
    spans = wait_for(
        lambda: receiver.of_request(trace_id) if len(receiver.of_request(trace_id)) == 2 else None, 15, "2 spans"
    )
    top = request_span(spans)
    a = attrs(top)
    assert top["name"] == "chat gpt-4o-mini" and "parentSpanId" not in top
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.system"] == a["gen_ai.provider.name"] == "openai"
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
    with pytest.raises(ValueError) as err:
        parse_headers("novalue-secret")
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

"""OpenTelemetry GenAI metrics over OTLP: a real server over the mock upstream posts, to a small
collector, cumulative explicit-bucket histograms of its calls (tokens, durations: as the provider's
client) and of its requests (duration, time to first token, time per output token: as the
client's server) and a cost counter, every ``STOCKYARD_OTLP_METRICS_INTERVAL`` and once more on
SIGTERM. The tokens and costs are the spans' own, exactly; an instrument's attribute sets are
capped; nothing is sent without an endpoint; a collector that hangs never holds a request."""

from __future__ import annotations

import json
import socket
import time

import anthropic
import openai
import pytest
from conftest import ServerProcess, wait_for
from module_helpers import HELLO, chat, module_env, put_module
from otlp_collector import Receiver, attrs, metrics_of, points

from stockyard.otel_metrics import DURATION_BOUNDS, FIRST_TOKEN_BOUNDS, PER_TOKEN_BOUNDS, TOKEN_BOUNDS

ANTHROPIC_KEY = "sk-ant-otel-metrics-0123456789abcdef"
GEMINI_KEY = "AIza-otel-metrics-0123456789abcdefSECRET"
COLLECTOR_TOKEN = "otlp-metrics-secret-abcdef123456"
# What a metric's attributes may be: the conventions' (and the overflow's), never a key, user or tag
ALLOWED = {
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.token.type",
    "error.type",
    "server.address",
    "server.port",
    "otel.metric.overflow",
}
SERVER_ONLY = {"gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model"}


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


def start(pyz_path, cache_home, mock, tmp_path_factory, *args: str, **env: str) -> ServerProcess:
    environ = module_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=mock.url,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
        **env,
    )
    return ServerProcess(
        pyz_path, tmp_path_factory.mktemp("otel-metrics") / "stockyard.db", environ, list(args)
    ).start()


def count(export: dict, name: str, **match) -> int:
    return sum(int(p["count"]) for a, p in points(export, name) if all(a.get(k) == v for k, v in match.items()))


def total(export: dict, name: str, **match) -> float:
    """The sum of a histogram's points (or a counter's values) whose attributes include ``match``."""
    out = 0
    for a, p in points(export, name):
        if all(a.get(k) == v for k, v in match.items()):
            out += p["sum"] if "sum" in p else int(p["asInt"])
    return out


def export_with(receiver: Receiver, requests: int, timeout: float = 20) -> dict:
    """The first export counting ``requests`` requests in all (exports are cumulative)."""

    def found():
        with receiver.lock:
            exports = list(receiver.metric_exports)
        return next((e for e in exports if count(e, "gen_ai.server.request.duration") == requests), None)

    return wait_for(found, timeout, f"an export of {requests} requests")


def attempt_spans(receiver: Receiver, trace_ids: list[str]) -> list[dict]:
    spans = [s for t in trace_ids for s in receiver.of_request(t)]
    return [attrs(s) for s in spans if s["kind"] == 3]


def request_spans(receiver: Receiver, trace_ids: list[str]) -> list[dict]:
    return [attrs(s) for t in trace_ids for s in receiver.of_request(t) if s["kind"] == 2]


def test_known_traffic_is_measured_as_the_conventions_say(pyz_path, cache_home, mock, tmp_path_factory, receiver):
    srv = start(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        STOCKYARD_OTLP_ENDPOINT=receiver.url,
        STOCKYARD_OTLP_HEADERS=f"authorization=Bearer {COLLECTOR_TOKEN}",
        STOCKYARD_OTLP_METRICS_INTERVAL="0.3",
    )
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        claude = anthropic.Anthropic(base_url=srv.url, api_key="unused", max_retries=0)
        traces: list[str] = []
        whole = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
        traces.append(whole.headers["x-stockyard-trace-id"])
        streamed = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices) == "Hello from mock"
        traces.append(streamed.headers["x-stockyard-trace-id"])
        message = claude.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
        traces.append(message.headers["x-stockyard-trace-id"])
        status, headers, _ = srv.request(
            "POST", "/v1beta/models/gemini-2.5-flash:generateContent", {"contents": [{"parts": [{"text": "hi"}]}]}
        )
        assert status == 200
        traces.append(headers["x-stockyard-trace-id"])
        status, headers, _ = chat(srv, model="openai/mock-error-500")
        assert status >= 500
        traces.append(headers["x-stockyard-trace-id"])
        put_module(srv, "fallback", {"chains": {"openai/mock-error-500": ["groq/gpt-4o-mini"]}, "retries": 0})
        status, headers, _ = chat(srv, model="openai/mock-error-500")
        assert status == 200
        traces.append(headers["x-stockyard-trace-id"])
        status, _, _ = srv.request("POST", "/v1/chat/completions", {"model": "clients-own-words", "messages": "x"})
        assert status == 400  # refused by Stockyard itself: counted, its model (the client's word) left out
        wait_for(lambda: all(receiver.of_request(t) for t in traces), 15, "every request's spans")
        wait_for(lambda: len(attempt_spans(receiver, traces)) == 7, 15, "every attempt's span")
        export = export_with(receiver, len(traces) + 1)
    finally:
        srv.stop()
    assert "Traceback" not in srv.log and COLLECTOR_TOKEN not in srv.log
    [rm] = export["resourceMetrics"]
    resource = attrs(rm["resource"])
    assert resource["service.name"] == "stockyard" and len(resource["service.instance.id"]) == 36
    assert "stockyard.worker" not in resource, "one process, not a worker of a group"
    assert rm["scopeMetrics"][0]["scope"]["name"] == "stockyard"

    metrics = metrics_of(export)
    units = {name: m["unit"] for name, m in metrics.items()}
    assert units == {
        "gen_ai.client.token.usage": "{token}",
        "gen_ai.client.operation.duration": "s",
        "gen_ai.server.request.duration": "s",
        "gen_ai.server.time_to_first_token": "s",
        "gen_ai.server.time_per_output_token": "s",
        "stockyard.cost_uc": "{microcent}",
    }
    bounds = {
        "gen_ai.client.token.usage": TOKEN_BOUNDS,
        "gen_ai.client.operation.duration": DURATION_BOUNDS,
        "gen_ai.server.request.duration": DURATION_BOUNDS,
        "gen_ai.server.time_to_first_token": FIRST_TOKEN_BOUNDS,
        "gen_ai.server.time_per_output_token": PER_TOKEN_BOUNDS,
    }
    for name, expected in bounds.items():
        histogram = metrics[name]["histogram"]
        assert histogram["aggregationTemporality"] == 2, "cumulative"
        for a, p in points(export, name):
            assert set(a) <= ALLOWED, a
            assert p["explicitBounds"] == list(expected)
            assert len(p["bucketCounts"]) == len(expected) + 1
            assert sum(map(int, p["bucketCounts"])) == int(p["count"]) > 0
            assert p["min"] <= p["max"] and p["min"] * int(p["count"]) <= p["sum"] + 1e-9
    assert metrics["stockyard.cost_uc"]["sum"] == {**metrics["stockyard.cost_uc"]["sum"], "isMonotonic": True}
    assert metrics["stockyard.cost_uc"]["sum"]["aggregationTemporality"] == 2

    # as the client's server: one duration per request, the failure with its error.type
    assert count(export, "gen_ai.server.request.duration") == 7
    served = [a for a, _ in points(export, "gen_ai.server.request.duration")]
    [refused] = [a for a in served if "gen_ai.provider.name" not in a]
    assert set(refused) == {"gen_ai.operation.name", "error.type"} and refused["error.type"] != "upstream_500"
    assert "clients-own-words" not in json.dumps(export)
    assert count(export, "gen_ai.server.request.duration", **{"gen_ai.provider.name": "openai"}) == 3
    assert count(export, "gen_ai.server.request.duration", **{"gen_ai.provider.name": "groq"}) == 1
    assert count(export, "gen_ai.server.request.duration", **{"gen_ai.provider.name": "anthropic"}) == 1
    gemini = [a for a in served if a.get("gen_ai.provider.name") == "gcp.gemini"]
    assert gemini == [
        {
            "gen_ai.operation.name": "generate_content",
            "gen_ai.provider.name": "gcp.gemini",
            "gen_ai.request.model": "gemini-2.5-flash",
            "gen_ai.response.model": gemini[0]["gen_ai.response.model"],
        }
    ]
    [failure] = [a for a in served if "error.type" in a and "gen_ai.provider.name" in a]
    assert failure["error.type"] == "upstream_500" and failure["gen_ai.provider.name"] == "openai"
    for a in served:
        assert a is refused or set(a) - {"error.type"} == SERVER_ONLY, "no server.address on our own server's metrics"
    # the streamed answer's first token and pace, on it alone
    [(first, first_point)] = points(export, "gen_ai.server.time_to_first_token")
    assert first["gen_ai.provider.name"] == "openai" and "error.type" not in first
    streamed_span = request_spans(receiver, [traces[1]])[0]
    assert first_point["sum"] == pytest.approx(streamed_span["gen_ai.response.time_to_first_chunk"], abs=0.01)
    [(pace, pace_point)] = points(export, "gen_ai.server.time_per_output_token")
    assert pace == first and int(pace_point["count"]) == 1 and pace_point["sum"] >= 0

    # as the provider's client: one duration per attempt (the fallback's failed one too), at its address
    calls = attempt_spans(receiver, traces)
    assert count(export, "gen_ai.client.operation.duration") == len(calls) == 7
    failed = [a for a, _ in points(export, "gen_ai.client.operation.duration") if "error.type" in a]
    assert [a["error.type"] for a in failed] == ["upstream_500"]
    assert count(export, "gen_ai.client.operation.duration", **{"error.type": "upstream_500"}) == 2
    assert failed[0]["gen_ai.request.model"] == "mock-error-500"
    port = int(mock.url.rsplit(":", 1)[1])
    for a, _ in points(export, "gen_ai.client.operation.duration"):
        assert (a["server.address"], a["server.port"]) == ("127.0.0.1", port)
    # the tokens are the attempts' spans', exactly, by provider and type
    for provider in ("openai", "anthropic", "gcp.gemini", "groq"):
        mine = [c for c in calls if c["gen_ai.provider.name"] == provider]
        for kind, attribute in (("input", "gen_ai.usage.input_tokens"), ("output", "gen_ai.usage.output_tokens")):
            expected = sum(c.get(attribute, 0) for c in mine)
            match = {"gen_ai.provider.name": provider, "gen_ai.token.type": kind}
            assert total(export, "gen_ai.client.token.usage", **match) == expected > 0, (provider, kind)
    for a, _ in points(export, "gen_ai.client.token.usage"):
        assert "error.type" not in a and a["gen_ai.token.type"] in ("input", "output")
    # the cost is the requests' spans', exactly (integer micro-cents)
    billed = sum(s.get("stockyard.cost_uc", 0) for s in request_spans(receiver, traces))
    assert total(export, "stockyard.cost_uc") == billed > 0
    assert total(export, "stockyard.cost_uc", **{"gen_ai.provider.name": "groq"}) == 480


def test_totals_are_cumulative_across_exports(pyz_path, cache_home, mock, tmp_path_factory, receiver):
    srv = start(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        STOCKYARD_OTLP_ENDPOINT=receiver.url,
        STOCKYARD_OTLP_METRICS_INTERVAL="0.2",
    )
    try:
        assert chat(srv)[0] == 200
        first = export_with(receiver, 1)
        assert chat(srv)[0] == 200
        second = export_with(receiver, 2)
    finally:
        srv.stop()
    for name in ("gen_ai.server.request.duration", "gen_ai.client.operation.duration", "gen_ai.client.token.usage"):
        [(_, before)] = points(first, name) if name != "gen_ai.client.token.usage" else points(first, name)[:1]
        [(_, after)] = points(second, name) if name != "gen_ai.client.token.usage" else points(second, name)[:1]
        assert int(after["count"]) == 2 * int(before["count"]) == 2
        assert after["startTimeUnixNano"] == before["startTimeUnixNano"], "one start: the series' totals go on"
        assert int(after["timeUnixNano"]) > int(before["timeUnixNano"])
    assert total(second, "gen_ai.client.token.usage") == 2 * total(first, "gen_ai.client.token.usage") == 2 * 17
    assert total(second, "stockyard.cost_uc") == 2 * total(first, "stockyard.cost_uc") == 2 * 480


def test_a_clean_stop_sends_the_totals_a_last_time(pyz_path, cache_home, mock, tmp_path_factory, receiver):
    srv = start(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        STOCKYARD_OTLP_ENDPOINT=receiver.url,
        STOCKYARD_OTLP_METRICS_INTERVAL="1h",
    )
    try:
        status, headers, _ = chat(srv)
        assert status == 200
        wait_for(lambda: receiver.of_request(headers["x-stockyard-trace-id"]), 15, "the request's spans")
        assert receiver.metric_exports == [], "an hour's interval: nothing yet"
    finally:
        code = srv.stop()
    assert code == 0
    [export] = receiver.metric_exports
    assert count(export, "gen_ai.server.request.duration") == 1
    assert total(export, "gen_ai.client.token.usage", **{"gen_ai.token.type": "output"}) == 5


def test_attribute_sets_are_capped_into_an_overflow_series(pyz_path, cache_home, mock, tmp_path_factory, receiver):
    srv = start(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        STOCKYARD_OTLP_ENDPOINT=receiver.url,
        STOCKYARD_OTLP_METRICS_INTERVAL="0.2",
        STOCKYARD_OTLP_METRICS_MAX_SERIES="2",
    )
    try:
        for n in range(5):
            assert chat(srv, model=f"openai/gpt-4o-mini-{n}")[0] == 200
        export = export_with(receiver, 5)
        _, _, text = srv.request("GET", "/metrics")
    finally:
        srv.stop()
    series = points(export, "gen_ai.server.request.duration")
    assert len(series) == 3
    [(overflow, point)] = [(a, p) for a, p in series if a.get("otel.metric.overflow")]
    assert overflow == {"otel.metric.overflow": True} and int(point["count"]) == 3
    models = {a["gen_ai.request.model"] for a, _ in series if "gen_ai.request.model" in a}
    assert models == {"openai/gpt-4o-mini-0", "openai/gpt-4o-mini-1"}, "the first attribute sets keep their series"
    assert len(points(export, "gen_ai.client.token.usage")) == 3
    line = next(x for x in text.decode().splitlines() if x.startswith("stockyard_otlp_metric_overflow_total "))
    assert int(float(line.split()[1])) >= 3 + 3


def test_nothing_is_sent_without_an_endpoint_or_with_metrics_off(
    pyz_path, cache_home, mock, tmp_path_factory, receiver
):
    # the OTel SDKs' own variable is not Stockyard's: no endpoint, no export
    srv = start(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        STOCKYARD_OTLP_METRICS_INTERVAL="0.1",
    )
    try:
        assert chat(srv)[0] == 200
        _, _, text = srv.request("GET", "/metrics")
    finally:
        assert srv.stop() == 0
    assert "stockyard_otlp_metric" not in text.decode()
    # with the endpoint and the interval off: the spans only
    off = start(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        STOCKYARD_OTLP_ENDPOINT=receiver.url,
        STOCKYARD_OTLP_METRICS_INTERVAL="off",
    )
    try:
        status, headers, _ = chat(off)
        assert status == 200
        wait_for(lambda: receiver.of_request(headers["x-stockyard-trace-id"]), 15, "the request's spans")
    finally:
        assert off.stop() == 0
    assert receiver.metric_exports == [] and receiver.posts >= 1


def test_a_collector_that_hangs_does_not_slow_requests(pyz_path, cache_home, mock, tmp_path_factory):
    """A collector that takes the connection and never answers holds the exporter's post for its
    5 s timeout; requests meanwhile go at their own pace, and the failure is counted."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)  # connections complete in the backlog; nothing is ever read or answered
        srv = start(
            pyz_path,
            cache_home,
            mock,
            tmp_path_factory,
            STOCKYARD_OTLP_ENDPOINT=f"http://127.0.0.1:{hung.getsockname()[1]}",
            STOCKYARD_OTLP_METRICS_INTERVAL="0.1",
        )
        try:
            for _ in range(8):
                began = time.monotonic()
                status, _, body = chat(srv)
                assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "Hello from mock"
                assert time.monotonic() - began < 2.5, "a request waited for the collector (its post waits 5 s)"

            def failures() -> int:
                _, _, text = srv.request("GET", "/metrics")
                line = next(
                    x for x in text.decode().splitlines() if x.startswith("stockyard_otlp_metric_export_failures")
                )
                return int(float(line.split()[1]))

            wait_for(lambda: failures() >= 1, 30, "a failed export counted")
        finally:
            code = srv.stop()
    assert code == 0 and "Traceback" not in srv.log
    assert "OTLP metrics export" in srv.log


def test_each_worker_of_a_group_exports_its_own_series(pyz_path, cache_home, mock, tmp_path_factory, receiver):
    srv = start(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        "--workers",
        "2",
        STOCKYARD_OTLP_ENDPOINT=receiver.url,
        STOCKYARD_OTLP_METRICS_INTERVAL="0.2",
    )
    sent = 0

    def both_workers() -> dict | None:
        nonlocal sent
        assert chat(srv)[0] == 200  # new connections: the kernel spreads them over the workers
        sent += 1
        with receiver.lock:
            exports = list(receiver.metric_exports)
        latest: dict[str, dict] = {}
        for e in exports:
            latest[attrs(e["resourceMetrics"][0]["resource"])["service.instance.id"]] = e
        return latest if len(latest) == 2 else None

    try:
        wait_for(both_workers, 60, "exports from both workers")
    finally:
        assert srv.stop() == 0
    latest: dict[str, dict] = {}
    for e in receiver.metric_exports:
        latest[attrs(e["resourceMetrics"][0]["resource"])["service.instance.id"]] = e
    assert len(latest) == 2
    workers = sorted(attrs(e["resourceMetrics"][0]["resource"])["stockyard.worker"] for e in latest.values())
    assert workers == [0, 1]
    # each worker's last export (its final one, at the stop) holds its own requests: together, all of them
    assert sum(count(e, "gen_ai.server.request.duration") for e in latest.values()) == sent


def test_names_the_provider_does_not_know_make_no_series(pyz_path, cache_home, mock, tmp_path_factory, receiver):
    """Was: each request naming a made-up model (a pass-through route sends it on; the provider's 404
    comes back) made series of its own, so one client could fill the cap and send every key's
    measurements to the overflow series. A name the provider did not take is only the client's word:
    its failures are measured without it (provider and error type kept)."""
    from mock_upstream import Reply

    srv = start(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        STOCKYARD_OTLP_ENDPOINT=receiver.url,
        STOCKYARD_OTLP_METRICS_INTERVAL="0.2",
        STOCKYARD_OTLP_METRICS_MAX_SERIES="4",
    )
    unknown = {"error": {"message": "no such model", "type": "invalid_request_error", "code": "model_not_found"}}
    try:
        for n in range(6):
            mock.enqueue(Reply(status=404, body=json.dumps(unknown).encode()))
            assert chat(srv, model=f"openai/made-up-{n}")[0] == 404
        assert chat(srv, model="openai/gpt-4o-mini")[0] == 200
        export = export_with(receiver, 7)
        _, _, text = srv.request("GET", "/metrics")
    finally:
        srv.stop()
    for name in ("gen_ai.server.request.duration", "gen_ai.client.operation.duration"):
        series = points(export, name)
        assert not any(a.get("otel.metric.overflow") for a, _ in series), series
        assert not any("made-up" in str(a.get("gen_ai.request.model")) for a, _ in series), series
        failed = [p for a, p in series if a.get("error.type")]
        assert sum(int(p["count"]) for p in failed) == 6 and len(failed) == 1, series
        # the one the provider took keeps its name (the client's on the request, the call's on the attempt)
        assert any(a.get("gen_ai.request.model") in ("openai/gpt-4o-mini", "gpt-4o-mini") for a, _ in series)
    line = next(x for x in text.decode().splitlines() if x.startswith("stockyard_otlp_metric_overflow_total "))
    assert float(line.split()[1]) == 0

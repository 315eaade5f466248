"""``/metrics`` in the Prometheus text format agrees with the traces; health endpoints."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from types import SimpleNamespace

import pytest
from conftest import wait_for

from stockyard import metrics
from stockyard.context import RequestContext
from stockyard.pricing import Usage

HELLO = [{"role": "user", "content": "hi"}]
SAMPLE = re.compile(r'^(stockyard_[a-z_]+)(\{(?:[a-z_]+="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+]+|\+Inf)$')
LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """Strict enough: every line is HELP, TYPE or a sample of a declared family."""
    declared: dict[str, str] = {}
    samples: dict[str, dict[tuple, float]] = defaultdict(dict)
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in declared
            declared[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        name, labels, value = match.group(1), match.group(2) or "", match.group(3)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in declared else name
        assert family in declared, f"{name} has no # TYPE line"
        samples[name][tuple(LABEL.findall(labels))] = float(value)
    return samples


@pytest.fixture(scope="module")
def scraped(openai_server, mock):
    """A mix of requests, then one scrape once every trace is written."""
    srv = openai_server
    for _ in range(3):
        assert srv.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})[0] == 200
    assert (
        srv.request(
            "POST",
            "/v1/chat/completions",
            {"model": "gpt-4o-mini", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}},
        )[0]
        == 200
    )
    assert srv.request("POST", "/v1/chat/completions", {"model": "mock-error-429", "messages": HELLO})[0] == 429
    assert srv.request("POST", "/v1/chat/completions", raw=b"{broken")[0] == 400
    assert srv.request("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"})[0] == 200
    wait_for(lambda: srv.db_rows("SELECT count(*) AS n FROM traces")[0]["n"] == 7, 10, "traces")
    # a request is counted just after its trace is queued: the writer may commit the trace first
    wait_for(
        lambda: (
            sum(parse(srv.request("GET", "/metrics")[2].decode()).get("stockyard_requests_total", {}).values()) == 7
        ),
        10,
        "the metrics to count all seven requests",
    )
    status, headers, body = srv.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(body.decode()), srv.db_rows("SELECT * FROM traces")


def label_model(trace: dict) -> str:
    return (trace["served_model"] or trace["model"] or "") if trace["provider"] else ""


def test_request_counts_tokens_and_cost_agree_with_the_traces(scraped):
    samples, traces = scraped
    expected = defaultdict(int)
    for t in traces:
        expected[(("provider", t["provider"] or "none"), ("model", label_model(t)), ("status", str(t["status"])))] += 1
    assert samples["stockyard_requests_total"] == {k: float(v) for k, v in expected.items()}
    tokens = samples["stockyard_tokens_total"]
    for kind, column in (("prompt", "prompt_tokens"), ("completion", "completion_tokens")):
        assert sum(v for k, v in tokens.items() if ("kind", kind) in k) == sum(t[column] or 0 for t in traces)
    assert sum(samples["stockyard_cost_microcents_total"].values()) == sum(t["cost_uc"] or 0 for t in traces) > 0
    assert samples["stockyard_upstream_errors_total"] == {(("provider", "openai"), ("kind", "429")): 1.0}
    assert samples["stockyard_budget_rejections_total"] == {(): 0.0}


def test_latency_and_ttfb_histograms_are_consistent(scraped):
    samples, traces = scraped
    for family in ("stockyard_request_duration_seconds", "stockyard_time_to_first_byte_seconds"):
        counts = samples[f"{family}_count"]
        for labels, count in counts.items():
            buckets = sorted(
                ((float("inf") if v == "+Inf" else float(v)), n)
                for k, n in samples[f"{family}_bucket"].items()
                if k[:-1] == labels
                for (name, v) in [k[-1]]
            )
            values = [n for _, n in buckets]
            assert values == sorted(values), "cumulative buckets never decrease"
            assert values[-1] == count and samples[f"{family}_sum"][labels] > 0
    by_provider = defaultdict(int)
    for t in traces:
        by_provider[t["provider"] or "none"] += 1
    assert {k[0][1]: v for k, v in samples["stockyard_request_duration_seconds_count"].items()} == by_provider


def test_store_gauges_are_reported(scraped):
    samples, _ = scraped
    for name in (
        "writer_queue_depth",
        "writer_queue_capacity",
        "records_written_total",
        "records_dropped_total",
        "writer_failed_batches_total",
        "database_writable",
        "database_size_bytes",
        "database_wal_size_bytes",
        "start_time_seconds",
    ):
        assert (f"stockyard_{name}") in samples, name
    assert samples["stockyard_database_writable"][()] == 1
    assert samples["stockyard_records_dropped_total"][()] == 0
    assert samples["stockyard_writer_queue_capacity"][()] == 10_000


def test_health_and_readiness(openai_server):
    status, _, body = openai_server.request("GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = openai_server.request("GET", "/readyz")
    ready = json.loads(body)
    assert status == 200 and ready["database"] == "writable" and ready["records_dropped"] == 0


def ctx(model: str = "gpt-4o-mini", **fields) -> RequestContext:
    c = RequestContext("chat", "openai", "127.0.0.1", {})
    c.attempt.provider = SimpleNamespace(name="openai") if "provider" not in fields else fields.pop("provider")
    c.attempt.upstream_model, c.attempt.status = model, 200
    for k, v in fields.items():
        setattr(c if hasattr(c, k) else c.attempt, k, v)
    return c


def test_cache_hits_and_budget_rejections_are_counted():
    reg = metrics.Metrics()
    reg.observe_request(ctx(cache_hit=True, usage=Usage(prompt_tokens=3, completion_tokens=4)))
    reg.observe_request(ctx(provider=None, status=429, outcome="rejected", error_type="budget_exceeded"))
    counters, _ = reg.snapshot()
    assert counters["cache_hits_total"] == {(("provider", "openai"), ("model", "gpt-4o-mini")): 1}
    assert counters["budget_rejections_total"] == {(): 1}
    assert "upstream_errors_total" not in counters


def test_model_names_from_clients_cannot_grow_memory_without_bound(monkeypatch):
    monkeypatch.setattr(metrics, "MAX_SERIES", 50)
    reg = metrics.Metrics()
    for i in range(500):
        reg.observe_request(ctx(model=f"random-model-{i}"))
    counters, hists = reg.snapshot()
    series = sum(len(f) for n, f in counters.items() if not n.startswith("key_")) + sum(
        len(f) for n, f in hists.items() if not n.startswith("key_")
    )
    assert series <= 52  # the key name series are bounded apart (test_key_name_series_are_the_busiest_keys)
    other = counters["requests_total"][(("provider", "openai"), ("model", metrics.OTHER), ("status", "200"))]
    assert other + sum(v for k, v in counters["requests_total"].items() if k[1][1] != metrics.OTHER) == 500


def test_label_values_are_escaped():
    assert metrics._labels_text((("model", 'a"b\\c\nd'),)) == '{model="a\\"b\\\\c\\nd"}'


def test_key_name_series_are_the_busiest_keys_and_the_rest_as_other():
    reg = metrics.Metrics(top_keys=2)
    for name, count in (("alpha", 5), ("beta", 3), ("gamma", 2), ("delta", 1)):
        for _ in range(count):
            reg.observe_request(
                ctx(key=SimpleNamespace(name=name), usage=Usage(prompt_tokens=10, completion_tokens=1), cost_uc=7)
            )
    reg.observe_request(ctx())  # no client key (open mode)
    counters, hists = reg.snapshot()
    assert counters["key_requests_total"] == {
        (("key", "alpha"),): 5,
        (("key", "beta"),): 3,
        (("key", metrics.OTHER),): 4,  # gamma, delta and the request without a key
    }
    assert counters["key_cost_microcents_total"][(("key", metrics.OTHER),)] == 3 * 7
    assert counters["key_tokens_total"][(("key", "alpha"), ("kind", "prompt"))] == 50
    assert hists["key_request_duration_seconds"][(("key", "beta"),)][2] == 3
    assert sum(h[2] for h in hists["model_request_duration_seconds"].values()) == 12

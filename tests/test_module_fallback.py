"""The fallback module against the upstream faults: 429 with Retry-After, 500, 503, a hang, a
refused connection, a stream cut before and after its first byte; never for other 4xx; every
attempt traced (and billed when the provider reported usage); circuit breakers.

Most tests run the modules in process (``module_harness``: the same helpers work on it); a
retry, the breakers (their state is read through the API) and the switches go through a server."""

from __future__ import annotations

import json
import time

import pytest
from conftest import wait_for
from mock_upstream import Reply
from module_harness import inproc  # noqa: F401 (fixture)
from module_helpers import (  # noqa: F401
    MINI_COST_UC,
    api,
    attempts_of,
    chat,
    fresh,
    providers_called,
    put_module,
    raw_stream,
    server_fixture,
    sse_payloads,
    stream_text,
)

from stockyard.modules.fallback import Breaker
from stockyard.proxy import retry_after_s

CHAINS = {
    "gpt-4o-mini": ["groq/gpt-4o-mini"],
    "mistral/mistral-small": ["groq/gpt-4o-mini"],
    "openai/mock-error-500": ["groq/gpt-4o-mini"],
}
FAST = {"chains": CHAINS, "retries": 1, "backoff_ms": 10, "max_backoff_ms": 20, "breaker_failures": 0}
CHUNK = (
    '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    '"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}'
)


server = server_fixture("fallback")


@pytest.fixture
def fallback_on(fresh, server):
    put_module(server, "fallback", FAST)


@pytest.fixture
def h(inproc):
    inproc.configure("fallback", FAST)
    return inproc


def trace_id(headers: dict) -> str:
    return headers["x-stockyard-trace-id"]


@pytest.mark.usefixtures("fallback_on")
def test_429_with_retry_after_is_retried_after_waiting(server, mock):
    mock.enqueue(Reply(status=429, headers={"retry-after": "1"}))
    started = time.monotonic()
    status, headers, body = chat(server)
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "Hello from mock"
    assert time.monotonic() - started >= 1.0, "Retry-After: 1 was honoured"
    assert providers_called(mock) == ["openai", "openai"]
    main = server.trace(trace_id(headers))
    assert (main["status"], main["attempt"], main["provider"], main["cost_uc"]) == (200, 2, "openai", MINI_COST_UC)
    [first] = attempts_of(server, main["id"])
    assert (first["attempt"], first["status"], first["outcome"]) == (1, 429, "upstream_error")
    assert first["error_type"] == "upstream_429" and first["cost_uc"] is None and first["model"] == "gpt-4o-mini"
    assert first["latency_us"] < 1_000_000, "an attempt's latency is its own, not the request's"


def test_retry_after_beyond_the_cap_falls_back_at_once(h, mock):
    mock.enqueue(Reply(status=429, headers={"retry-after": "60"}))
    started = time.monotonic()
    status, headers, _ = chat(h)
    assert status == 200 and time.monotonic() - started < 5
    assert providers_called(mock) == ["openai", "groq"]
    assert h.trace(trace_id(headers))["provider"] == "groq"


def test_a_429_the_provider_says_not_to_retry_falls_back_at_once(h, mock):
    """``x-should-retry: false`` (a used-up quota): retrying the same provider only fails again."""
    mock.enqueue(Reply(status=429, headers={"x-should-retry": "false"}))
    status, _, _ = chat(h)
    assert status == 200 and providers_called(mock) == ["openai", "groq"]


@pytest.mark.parametrize("fault", [500, 503])
def test_5xx_is_retried_then_falls_back(h, mock, fault):
    mock.enqueue(Reply(status=fault), Reply(status=fault))
    status, headers, _ = chat(h)
    assert status == 200 and providers_called(mock) == ["openai", "openai", "groq"]
    main = h.trace(trace_id(headers))
    assert main["provider"] == "groq" and main["served_model"] == "gpt-4o-mini" and main["attempt"] == 3
    assert main["model"] == "gpt-4o-mini", "the trace keeps the model as asked"
    assert [(a["provider"], a["status"]) for a in attempts_of(h, main["id"])] == [("openai", fault)] * 2


def test_other_4xx_are_never_retried(h, mock):
    for fault in (400, 401, 404):
        mock.clear()
        mock.enqueue(Reply(status=fault))
        status, headers, body = chat(h)
        assert status == fault and providers_called(mock) == ["openai"]
        assert attempts_of(h, h.trace(trace_id(headers))["id"]) == []


@pytest.mark.perf
def test_a_hang_times_out_and_falls_back(h, mock):
    h.configure("fallback", {**FAST, "retries": 0})
    h.configure("timeout", {"models": {"openai/*": 0.5}})
    mock.enqueue(Reply(hang_s=3))
    started = time.monotonic()
    status, headers, _ = chat(h)
    assert status == 200 and time.monotonic() - started < 2.5
    assert providers_called(mock) == ["openai", "groq"]
    [first] = attempts_of(h, trace_id(headers))
    assert first["status"] == 504 and first["error_type"] == "upstream_timeout"


def test_a_refused_connection_falls_back(h, mock):
    status, headers, _ = chat(h, model="mistral/mistral-small")
    assert status == 200 and providers_called(mock) == ["groq"]
    main = h.trace(trace_id(headers))
    assert main["model"] == "mistral/mistral-small" and main["provider"] == "groq"
    attempts = attempts_of(h, main["id"])
    assert [(a["provider"], a["status"], a["error_type"]) for a in attempts] == [
        ("mistral", 502, "upstream_connect")
    ] * 2
    assert "mistral-test-key" not in (attempts[0]["error_message"] or "")


def test_stream_falls_back_on_an_error_status(h, mock):
    mock.enqueue(Reply(status=503), Reply(status=503))
    status, headers, data = raw_stream(h, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    assert status == 200 and stream_text(data) == "Hello from mock" and data.endswith(b"data: [DONE]\n\n")
    assert providers_called(mock) == ["openai", "openai", "groq"]


def test_stream_cut_before_its_first_byte_falls_back(h, mock):
    h.configure("fallback", {**FAST, "retries": 0})
    mock.enqueue(Reply(sse=[CHUNK % "lost"], cut_after=0))
    status, headers, data = raw_stream(h, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    assert status == 200 and stream_text(data) == "Hello from mock" and b"lost" not in data
    assert providers_called(mock) == ["openai", "groq"]
    [first] = attempts_of(h, trace_id(headers))
    assert first["error_type"] == "upstream_reset"


def test_stream_cut_after_its_first_byte_never_falls_back(h, mock):
    mock.enqueue(Reply(sse=[CHUNK % "Hel", CHUNK % "lo", CHUNK % " there"], cut_after=2))
    status, headers, data = raw_stream(h, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    payloads = sse_payloads(data)
    assert status == 200 and stream_text(data) == "Hello"
    assert "[DONE]" not in payloads and json.loads(payloads[-1])["error"]["code"] == "upstream_reset"
    assert providers_called(mock) == ["openai"], "bytes reached the client: no second provider"
    main = h.trace(trace_id(headers))
    assert main["outcome"] == "stream_broken" and attempts_of(h, main["id"]) == []


def test_when_every_attempt_fails_the_last_failure_passes_through(h, mock):
    mock.enqueue(*[Reply(status=500)] * 4)
    status, headers, body = chat(h)
    assert status == 500 and json.loads(body)["error"]["type"] == "server_error"
    assert providers_called(mock) == ["openai", "openai", "groq", "groq"]
    main = h.trace(trace_id(headers))
    assert (main["provider"], main["attempt"], main["status"]) == ("groq", 4, 500)
    assert [a["attempt"] for a in attempts_of(h, main["id"])] == [1, 2, 3]


def test_failed_attempts_that_report_usage_are_billed(h, mock):
    usage = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    mock.enqueue(Reply(status=500, json={"error": {"message": "boom", "type": "server_error"}, "usage": usage}))
    status, headers, _ = chat(h)
    assert status == 200
    [first] = attempts_of(h, trace_id(headers))
    assert first["cost_uc"] == MINI_COST_UC and first["cost_status"] == "exact"
    assert h.trace(trace_id(headers))["cost_uc"] == MINI_COST_UC


@pytest.mark.usefixtures("fallback_on")
def test_circuit_breaker_opens_skips_and_probes(server, mock):
    put_module(server, "fallback", {**FAST, "retries": 0, "breaker_failures": 2, "breaker_cooldown_s": 1})
    for _ in range(2):
        mock.enqueue(Reply(status=500))
        assert chat(server)[0] == 200
    assert providers_called(mock) == ["openai", "groq"] * 2
    status, view = api(server, "GET", "/api/modules/fallback")
    assert view["status"]["breakers"]["openai/gpt-4o-mini"]["state"] == "open"
    mock.clear()
    assert chat(server)[0] == 200 and providers_called(mock) == ["groq"], "open: openai is skipped"
    put_module(server, "fallback", {**FAST, "chains": {}, "retries": 0, "breaker_failures": 2, "breaker_cooldown_s": 1})
    status, headers, body = chat(server, model="openai/gpt-4o-mini")  # the breaker is per provider/model
    assert status == 503 and json.loads(body)["error"]["code"] == "circuit_open"
    assert 1 <= int(headers["retry-after"]) <= 2

    def half_open() -> bool:  # the thing under test: the breaker's 1 s cooldown running out
        return (
            api(server, "GET", "/api/modules/fallback")[1]["status"]["breakers"]["openai/gpt-4o-mini"]["state"]
            == "half-open"
        )

    wait_for(half_open, timeout=5, what="the 1 s cooldown to run out")
    mock.clear()
    assert chat(server)[0] == 200 and providers_called(mock) == ["openai"], "half-open: one probe, it succeeds"
    mock.clear()
    assert chat(server)[0] == 200 and providers_called(mock) == ["openai"], "closed again"


@pytest.mark.usefixtures("fallback_on")
def test_breaker_state_survives_a_configuration_change(server, mock):
    put_module(server, "fallback", {**FAST, "retries": 0, "breaker_failures": 1, "breaker_cooldown_s": 30})
    mock.enqueue(Reply(status=500))
    chat(server)
    put_module(server, "guard", {"max_tokens": 1000})  # a reload of the whole chain
    mock.clear()
    assert chat(server)[0] == 200 and providers_called(mock) == ["groq"]


@pytest.mark.usefixtures("fallback_on")
def test_disabled_fallback_passes_the_failure_through(server, mock):
    assert api(server, "POST", "/api/modules/fallback/disable")[0] == 200
    mock.enqueue(Reply(status=503))
    status, headers, _ = chat(server)
    assert status == 503 and providers_called(mock) == ["openai"]
    assert server.trace(trace_id(headers))["attempt"] == 1


@pytest.mark.usefixtures("fallback_on")
def test_cli_switches_fallback_at_run_time(server, mock):
    def outcome() -> int:
        mock.clear_replies()
        mock.enqueue(Reply(status=500), Reply(status=500))
        return chat(server)[0]

    assert server.cli("modules", "disable", "fallback").returncode == 0
    wait_for(lambda: outcome() == 500, what="fallback off")
    assert server.cli("modules", "enable", "fallback").returncode == 0
    wait_for(lambda: outcome() == 200, what="fallback on")


# -- the policy in process ---------------------------------------------------------------------------


def test_breaker_half_open_lets_one_probe_through():
    now = [0.0]
    breaker = Breaker(clock=lambda: now[0])
    for _ in range(3):
        assert breaker.allow("p", 3, 10)
        breaker.report("p", False, 3)
    assert not breaker.allow("p", 3, 10)
    now[0] = 10.5
    assert breaker.allow("p", 3, 10), "the probe"
    assert not breaker.allow("p", 3, 10), "only one probe at a time"
    breaker.report("p", False, 3)
    assert not breaker.allow("p", 3, 10), "the probe failed: open again"
    now[0] = 21
    assert breaker.allow("p", 3, 10)
    breaker.report("p", True, 3)
    assert breaker.allow("p", 3, 10) and breaker.allow("p", 3, 10), "closed"
    assert breaker.allow("q", 0, 10), "threshold 0: no breaker"


def test_retry_after_forms():
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after_s({"retry-after": date}) <= 30

"""The timeout module: per-model read timeouts (plain and streamed), a total deadline per
request (504, retries and streams included); switched at run time.

Most tests run the modules in process (``module_harness``: the same helpers work on it); a
read timeout and the run-time switch go through a server."""

from __future__ import annotations

import json
import time

import pytest
from conftest import wait_for
from mock_upstream import Reply
from module_harness import inproc  # noqa: F401 (fixture)
from module_helpers import attempts_of, chat, fresh, put_module, raw_stream, server_fixture, sse_payloads, stream_text  # noqa: F401

CHUNK = (
    '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    '"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}'
)


server = server_fixture("timeout")


@pytest.fixture
def h(inproc):
    return inproc


def error(body: bytes) -> dict:
    return json.loads(body)["error"]


def timed(fn):
    started = time.monotonic()
    result = fn()
    return (*result, time.monotonic() - started)


@pytest.mark.perf
@pytest.mark.usefixtures("fresh")
def test_per_model_read_timeout(server, mock):
    put_module(server, "timeout", {"models": {"gpt-4o-mini": 0.5, "gpt-4o*": 5}})
    mock.enqueue(Reply(hang_s=3))
    status, headers, body, took = timed(lambda: chat(server))
    assert status == 504 and error(body)["code"] == "upstream_timeout" and took < 2
    mock.enqueue(Reply(hang_s=1))
    assert chat(server, model="gpt-4o")[0] == 200, "gpt-4o matches the second glob: 5 s"


@pytest.mark.perf
def test_per_model_read_timeout_on_a_stream(h, mock):
    h.configure("timeout", {"models": {"openai/gpt-4o-mini": 0.5}})
    mock.enqueue(Reply(hang_s=3))
    status, _, body, took = timed(
        lambda: raw_stream(h, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    )
    assert status == 504 and error(body)["code"] == "upstream_timeout" and took < 2
    mock.enqueue(Reply(sse=[CHUNK % "a", CHUNK % "b", "[DONE]"], sse_delay_ms=1000))
    status, _, data = raw_stream(h, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    payloads = sse_payloads(data)
    assert stream_text(data) == "a" and json.loads(payloads[-1])["error"]["code"] == "upstream_timeout"


def test_default_read_timeout_for_unmatched_models(h, mock):
    h.configure("timeout", {"models": {"gpt-4o": 5}, "read_timeout_s": 0.5})
    mock.enqueue(Reply(hang_s=2))
    assert chat(h)[0] == 504


@pytest.mark.perf
def test_deadline_gives_504(h, mock):
    h.configure("timeout", {"deadline_s": 1})
    mock.enqueue(Reply(hang_s=3))
    status, headers, body, took = timed(lambda: chat(h))
    assert status == 504 and error(body)["code"] == "deadline_exceeded" and 0.9 < took < 2
    assert "deadline of 1s" in error(body)["message"]
    trace = h.trace(headers["x-stockyard-trace-id"])
    assert trace["status"] == 504 and trace["error_type"] == "deadline_exceeded"


@pytest.mark.perf
def test_deadline_cuts_a_slow_stream(h, mock):
    h.configure("timeout", {"deadline_s": 1})
    mock.enqueue(Reply(sse=[CHUNK % str(i) for i in range(6)] + ["[DONE]"], sse_delay_ms=300))
    status, _, data, took = timed(
        lambda: raw_stream(h, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    )
    payloads = sse_payloads(data)
    assert status == 200 and took < 2 and "[DONE]" not in payloads
    assert "deadline" in json.loads(payloads[-1])["error"]["message"]


@pytest.mark.perf
def test_deadline_bounds_retries(h, mock):
    h.configure("timeout", {"deadline_s": 1})
    h.configure("fallback", {"retries": 10, "backoff_ms": 300, "max_backoff_ms": 300, "breaker_failures": 0})
    status, headers, body, took = timed(lambda: chat(h, model="openai/mock-error-500"))
    assert status == 500 and took < 1.5, "no retry is started that would end past the deadline"
    assert 1 <= len(attempts_of(h, headers["x-stockyard-trace-id"])) < 10


def test_a_timeout_is_retried_by_fallback(h, mock):
    h.configure("timeout", {"read_timeout_s": 0.5})
    h.configure("fallback", {"retries": 1, "backoff_ms": 10, "breaker_failures": 0})
    mock.enqueue(Reply(hang_s=3))
    status, headers, _ = chat(h)
    assert status == 200
    [first] = attempts_of(h, headers["x-stockyard-trace-id"])
    assert first["status"] == 504 and first["error_type"] == "upstream_timeout"


def test_disabled_timeout_has_no_effect(h, mock):
    h.configure("timeout", {"read_timeout_s": 0.2, "deadline_s": 0.2}, enabled=False)
    mock.enqueue(Reply(hang_s=0.6))
    assert chat(h)[0] == 200


@pytest.mark.usefixtures("fresh")
def test_cli_switches_timeouts_at_run_time(server, mock):
    put_module(server, "timeout", {"deadline_s": 0.3}, enabled=False)

    def status() -> int:
        mock.clear_replies()
        mock.enqueue(Reply(hang_s=0.8))
        return chat(server)[0]

    assert server.cli("modules", "enable", "timeout").returncode == 0
    wait_for(lambda: status() == 504, what="timeout on")
    assert server.cli("modules", "disable", "timeout").returncode == 0
    wait_for(lambda: status() == 200, what="timeout off")

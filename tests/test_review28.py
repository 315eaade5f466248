"""Review 28: real traffic through today's limits and prices, with the official SDKs and the real pyz.

A maximal Anthropic Message Batch (100,000 short requests, Anthropic's own limit, 16 MB) holds more than
the 1,000,000 JSON values a body may hold elsewhere: it must be served as before, its parse held in
STOCKYARD_REQUEST_BODIES_MB, and a batch past what that bound can parse is a 413 naming the setting.
The SDKs and the bound's refusals (503 with Retry-After, 413) are in test_review28_bounds.py."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import threading
import wave
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import pytest
from anthropic import APIStatusError
from conftest import ServerProcess, mock_env, wait_for
from mock_upstream import COMPLETION_TOKENS, MESSAGE_BATCHES, PROMPT_TOKENS, Reply
from test_memory_bounds import websocket

from stockyard.httpio import MAX_JSON_VALUES
from stockyard.pricing import PriceTable, Usage, cost_microcents

CHAT = {"model": "gpt-4o-mini", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
PLAIN = "claude-batch-plain"  # the mock's name: priced below
MAX_BATCH = 100_000  # Anthropic's most requests in one batch


def batch_server(pyz_path, cache_home, mock, db, keys: dict[str, list[str]], **settings: str) -> ServerProcess:
    """A server with Anthropic on the mock, PLAIN priced, ``keys`` made and ``settings`` set, started."""
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-review28-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_BATCH_POLL="off",
        **settings,
    )
    srv = ServerProcess(pyz_path, db, env)
    done = srv.cli("prices", "set", PLAIN, "--input", "3", "--output", "15")
    assert done.returncode == 0, done.stderr
    srv.keys = srv.create_keys(keys)
    return srv.start()


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    """The default body limits: STOCKYARD_MAX_BODY_BYTES 32 MiB, STOCKYARD_REQUEST_BODIES_MB 256."""
    keys = {
        "alice": [],
        "usonly": [],
        "speedy": [],
        "budgeted": ["--budget-usd", "100", "--budget-period", "day"],
        "dollar": ["--budget-usd", "1", "--budget-period", "day"],
        "dime": ["--budget-usd", "0.10", "--budget-period", "day"],
    }
    srv = batch_server(pyz_path, cache_home, mock, tmp_path_factory.mktemp("review28") / "stockyard.db", keys)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log


def ticket_batch(count: int, **extra: Any) -> list[dict]:
    """A classification job as people send it: one short labelled ticket a request (``extra``: more params)."""
    return [
        {
            "custom_id": f"ticket-{i}",
            "params": {
                "model": PLAIN,
                "max_tokens": 8,
                "system": "Label the ticket: billing, bug or other.",
                "messages": [{"role": "user", "content": f"Ticket {i}: I was charged twice this month"}],
                **extra,
            },
        }
        for i in range(count)
    ]


@pytest.mark.parametrize("who", ["alice", "budgeted"])
def test_a_batch_of_anthropics_most_requests_is_served(server, mock, who):
    """By the official SDK, and (the budgeted key, each request priced) as the same bytes sent raw:
    the SDK's own work on 100,000 requests is ~3 s of the test's CPU (9.4 s of 6.7), and once is enough."""
    requests = ticket_batch(MAX_BATCH)
    raw = json.dumps({"requests": requests}).encode()
    assert len(raw) < 32 * 1024 * 1024  # within the body size limit: the old server served it
    mock.clear()
    if who == "alice":
        batch = server.anthropic(who, timeout=120).messages.batches.create(requests=requests)
        status, batch_id = batch.processing_status, batch.id
    else:
        headers = {"x-api-key": server.keys[who], "anthropic-version": "2023-06-01"}
        got, _, answer = server.request("POST", "/v1/messages/batches", raw=raw, headers=headers)
        assert got == 200, answer[:300]
        status, batch_id = json.loads(answer)["processing_status"], json.loads(answer)["id"]
    assert status == "in_progress"
    assert len(MESSAGE_BATCHES.requests[batch_id]) == MAX_BATCH


@pytest.mark.parametrize(
    "bound_mb, extra",
    [
        ("64", {}),  # room to parse ~670,000 values: the batch's 1,000,002 are not
        # 1.2 M values (120 MB) fit the 134 MB bound, not beside the body's 26 MB
        ("128", {"metadata": {"user_id": "u"}}),
    ],
)
def test_a_batch_past_what_the_bodies_bound_can_parse_is_a_413_naming_the_setting(
    pyz_path, cache_home, mock, tmp_path, bound_mb, extra
):
    db = tmp_path / "stockyard.db"
    srv = batch_server(pyz_path, cache_home, mock, db, {"alice": []}, STOCKYARD_REQUEST_BODIES_MB=bound_mb)
    try:
        mock.clear()
        with pytest.raises(APIStatusError) as refused:
            srv.anthropic("alice", timeout=120).messages.batches.create(requests=ticket_batch(MAX_BATCH, **extra))
        assert refused.value.status_code == 413
        error = refused.value.body["error"]
        assert error["type"] == "request_too_large" and "STOCKYARD_REQUEST_BODIES_MB" in error["message"]
        assert not [r for r in mock.requests if r.path.startswith("/v1/messages/batches")]
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def test_ten_chats_of_20_mb_of_images_at_once_are_all_held_and_served(server, mock):
    """Ten official-SDK chats of ten base64 images (20 MB each) at once, every one waiting at the
    provider together: 200 MB held under the default 256 MB bound, none refused."""
    image = "data:image/png;base64," + base64.b64encode(os.urandom(1_500_000)).decode()
    content = [{"type": "text", "text": "compare these"}] + [{"type": "image_url", "image_url": {"url": image}}] * 10
    gate = threading.Event()
    arrived = [threading.Event() for _ in range(10)]
    mock.clear()
    mock.enqueue(*(Reply(held=gate, hang_started=started) for started in arrived))
    refused = server.metric("request_bodies_refused_total")
    client = server.openai("alice", timeout=120)
    ask = lambda: client.chat.completions.create(  # noqa: E731
        model="gpt-4o-mini", max_tokens=4, messages=[{"role": "user", "content": content}]
    )
    with ThreadPoolExecutor(10) as pool:
        calls = [pool.submit(ask) for _ in range(10)]
        try:
            for started in arrived:
                assert started.wait(60), "all ten reached the provider at once"
            assert server.metric("request_bodies_bytes") >= 10 * 20_000_000
        finally:
            gate.set()
        assert all(call.result().choices for call in calls)
    assert server.metric("request_bodies_refused_total") == refused


OPUS = "claude-opus-4-6"  # shipped: $5 / $25 per 1M, US-only inference 1.1x
OPUS_UC = {"input": 500_000_000, "output": 2_500_000_000}  # µ¢ per 1M tokens


@pytest.mark.parametrize(
    "key, field, value, times",
    [("usonly", "inference_geo", "us", Fraction(11, 10)), ("speedy", "speed", "fast", Fraction(6))],
)
def test_a_batch_request_run_in_a_dearer_mode_is_billed_at_its_rate(server, mock, key, field, value, times):
    """Anthropic's result says where and how fast each request ran (``usage.inference_geo``,
    ``usage.speed``); one run US-only costs 1.1x, one in fast mode 6x (Opus 4.6), at the batch's half
    price too, as /v1/messages bills it; an unbudgeted key's batch is not refused for it."""
    client = server.anthropic(key)
    plain = {"model": OPUS, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    batch = client.messages.batches.create(
        requests=[{"custom_id": "plain", "params": plain}, {"custom_id": value, "params": {**plain, field: value}}]
    )
    assert client.messages.batches.retrieve(batch.id).processing_status == "ended"
    said = {r.custom_id: getattr(r.result.message.usage, field) for r in client.messages.batches.results(batch.id)}
    assert said == {"plain": None, value: value}
    sql = (
        "SELECT t.* FROM traces t JOIN client_keys k ON k.id = t.key_id"
        " WHERE k.name = ? AND t.endpoint = 'message_batches.usage'"
    )
    rows = wait_for(lambda: server.db_rows(sql, (key,)), timeout=30, what="the batch's usage row")
    standard = PROMPT_TOKENS * OPUS_UC["input"] + COMPLETION_TOKENS * OPUS_UC["output"]
    numerator = standard + int(standard * times)  # the dearer request's every token at its multiple
    assert rows[0]["prompt_tokens"] == 2 * PROMPT_TOKENS and rows[0]["completion_tokens"] == 2 * COMPLETION_TOKENS
    assert (rows[0]["cost_uc"], rows[0]["cost_status"]) == ((numerator + 10**6) // (2 * 10**6), "exact"), rows


def test_a_budgeted_batch_may_ask_for_a_priced_mode_held_at_its_rate(server, mock):
    """As /v1/messages allows a budgeted key a priced mode, held at its rate: 76,000 output tokens of
    Opus 4.6 hold $0.95 at the batch price, which a $1 budget covers; run US-only $1.045, which it
    does not. A small US-only batch then fits beside the first's hold."""
    client = server.anthropic("dollar")
    params = {"model": OPUS, "max_tokens": 76_000, "messages": [{"role": "user", "content": "hi"}]}
    mock.clear()
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.batches.create(requests=[{"custom_id": "us", "params": {**params, "inference_geo": "us"}}])
    error = refused.value.body["error"]  # Anthropic's type for a 429, the reason in details (errors.ANTHROPIC_TYPES)
    assert (error["type"], error["details"]["error_code"]) == ("rate_limit_error", "budget_exceeded"), error
    assert not [r for r in mock.requests if r.path.startswith("/v1/messages/batches")]
    assert client.messages.batches.create(requests=[{"custom_id": "global", "params": params}]).id
    small = {**params, "max_tokens": 1000, "inference_geo": "us"}
    assert client.messages.batches.create(requests=[{"custom_id": "us", "params": small}]).id


@pytest.mark.parametrize("api", ["chat", "chat-stream", "responses", "responses-stream"])
def test_a_budget_holds_openais_priority_at_its_rate(server, mock, api):
    """6,000 output tokens of GPT-5 hold $0.06 at the standard rate (asked as ``default``: no tier or
    ``auto`` is held at priority, which a project's default may serve), which a $0.10 budget covers;
    at priority (2x) $0.12, which it does not: refused before the provider is asked, streamed or not."""
    client = server.openai("dime")
    stream = api.endswith("-stream")

    def ask(**tier: str) -> None:
        if api.startswith("chat"):
            made = client.chat.completions.create(
                model="gpt-5",
                max_completion_tokens=6000,
                messages=[{"role": "user", "content": "hi"}],
                stream=stream,
                **tier,
            )
        else:
            made = client.responses.create(model="gpt-5", max_output_tokens=6000, input="hi", stream=stream, **tier)
        if stream:
            list(made)

    ask(service_tier="default")
    before = len(mock.requests)
    with pytest.raises(openai.RateLimitError) as refused:
        ask(service_tier="priority")
    assert refused.value.body["code"] == "budget_exceeded", refused.value.body
    assert len(mock.requests) == before


@pytest.mark.parametrize("mode, extra", [("us", {"inference_geo": "us"}), ("fast", {"speed": "fast"})])
def test_a_call_sent_and_unanswered_is_billed_its_input_at_the_mode_it_asked(
    pyz_path, cache_home, mock, tmp_path, mode, extra
):
    """A call that went out in a dearer mode and timed out is billed its input as an estimate: at that
    mode's rate, as it was held (US-only inference is where it ran, whatever the answer would say;
    fast mode the most it could cost), not the standard rate."""
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-review28-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_UPSTREAM_TIMEOUT="1",
    )
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        reached = threading.Event()
        mock.enqueue(Reply(hang_s=30, hang_started=reached))
        with pytest.raises(APIStatusError):
            srv.anthropic("sk-open").messages.create(
                model=OPUS, max_tokens=16, messages=[{"role": "user", "content": "hi"}], extra_body=extra
            )
        assert reached.is_set()
        (row,) = wait_for(lambda: srv.db_rows("SELECT * FROM traces WHERE endpoint = 'messages'"), what="the trace")
        assert row["cost_status"] == "estimate" and row["prompt_tokens"] > 0 and row["completion_tokens"] == 0
        price = PriceTable.load().lookup_mode(OPUS, "anthropic", mode, "anthropic")
        assert row["cost_uc"] == cost_microcents(price, Usage(prompt_tokens=row["prompt_tokens"]))
    finally:
        srv.stop()

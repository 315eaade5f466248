"""Dearer (and cheaper) modes billed at their real rates, through the built pyz and the mock
upstream with the official SDKs as clients: OpenAI's ``service_tier`` priced by the tier its answer
says served it (priority about 2x, flex half), Claude's fast mode and US-only inference by the
``usage.speed`` and ``usage.inference_geo`` its answer reports. A budgeted key may ask for a mode
the price table prices (held at its rate); one it does not price is still refused (403).

Costs are exact integers in µ¢ (1 µ¢ = 10⁻⁸ USD); a rate of $1 per 1M tokens is 100 µ¢ a token."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import anthropic
import openai
import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import Reply

OPUS = "claude-opus-4-6"  # fast mode 6x ($30/$150 per 1M), US-only inference 1.1x
IN, OUT = 1000, 100  # tokens the scripted answers report


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-modes",
        ANTHROPIC_BASE_URL=mock.url,
        GROQ_API_KEY="gsk-modes",
        GROQ_BASE_URL=mock.url + "/v1",
        GEMINI_API_KEY="gm-modes",
        GEMINI_BASE_URL=mock.url,
    )
    keys = {
        "budgeted": ["--budget-usd", "5", "--budget-period", "day"],
        "dime": ["--budget-usd", "0.10", "--budget-period", "day"],
        "open": [],
        "burst-auto": ["--budget-usd", "0.002", "--budget-period", "total"],
        "burst-none": ["--budget-usd", "0.002", "--budget-period", "total"],
    }
    with served(pyz_path, tmp_path_factory, "modes", env, keys) as srv:
        yield srv


def chat_answer(model: str, tier: str | None) -> dict:
    """A chat completion that reports IN/OUT tokens and (when not None) the tier that served it."""
    answer = {
        "id": "chatcmpl-modes",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": IN, "completion_tokens": OUT, "total_tokens": IN + OUT},
    }
    return answer if tier is None else {**answer, "service_tier": tier}


def message_answer(model: str, **modes: str) -> dict:
    """A Messages answer whose usage reports IN/OUT tokens and ``modes`` (speed, inference_geo)."""
    return {
        "id": "msg_modes",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": IN, "output_tokens": OUT, **modes},
    }


def chat(server: ServerProcess, key: str, model: str, **extra) -> tuple[int, dict, dict]:
    """One chat completion with ``key`` (raw, to read the trace id and any error as sent)."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, **extra}
    status, headers, raw = server.request("POST", "/v1/chat/completions", body, server.auth(key))
    return status, headers, json.loads(raw)


def cost(server: ServerProcess, headers: dict) -> tuple[int | None, str]:
    trace = server.trace(headers["x-stockyard-trace-id"])
    return trace["cost_uc"], trace["cost_status"]


def served_mode(server: ServerProcess, headers: dict) -> str | None:
    """The mode the trace says served the request (None: standard)."""
    return server.trace(headers["x-stockyard-trace-id"])["served_mode"]


@pytest.mark.parametrize(
    "asked, served, expected",
    [
        ("priority", "priority", IN * 250 + OUT * 2000),  # gpt-5 priority: $2.50 / $20 per 1M
        ("priority", "default", IN * 125 + OUT * 1000),  # asked priority, served standard: $1.25 / $10
        ("flex", "flex", IN * 125 // 2 + OUT * 500),  # flex at Batch API rates: $0.625 / $5
        ("auto", "priority", IN * 250 + OUT * 2000),  # the project's default tier was priority
        (None, "default", IN * 125 + OUT * 1000),
    ],
)
def test_openai_is_billed_at_the_tier_its_answer_says_served_it(server, mock, asked, served, expected):
    """Was: every tier billed at the standard rates (priority half its price, flex twice); and a
    budgeted key refused ``priority`` outright. Now the answer's ``service_tier`` picks the price,
    and a budgeted key asking for priority on a model priced for it is served (held at priority)."""
    mock.enqueue(Reply(json=chat_answer("gpt-5", served)))
    extra = {} if asked is None else {"service_tier": asked}
    status, headers, answer = chat(server, "budgeted", "gpt-5", **extra)
    assert status == 200, answer
    assert answer["service_tier"] == served
    assert cost(server, headers) == (expected, "exact")
    assert served_mode(server, headers) == (None if served == "default" else served)


def test_a_streamed_answer_is_billed_at_its_tier(server, mock):
    """A stream says its tier in every chunk; the first one is read, and the usage chunk priced by it."""
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-5", "service_tier": "priority"}
    usage = {"prompt_tokens": IN, "completion_tokens": OUT, "total_tokens": IN + OUT}
    events = [
        json.dumps({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}}]}),
        json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        json.dumps({**base, "choices": [], "usage": usage}),
        "[DONE]",
    ]
    mock.enqueue(Reply(sse=events))
    client = server.openai("open")
    with client.chat.completions.with_streaming_response.create(
        model="gpt-5", messages=[{"role": "user", "content": "hi"}], stream=True, service_tier="priority"
    ) as response:
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
        trace_id = response.headers["x-stockyard-trace-id"]
    assert text == "ok"
    trace = server.trace(trace_id)
    priority = IN * 250 + OUT * 2000
    assert (trace["cost_uc"], trace["cost_status"], trace["served_mode"]) == (priority, "exact", "priority")


def test_a_response_is_billed_at_its_tier(server, mock):
    """The Responses API passed through: the response object says its tier (flex here: half)."""
    response = {
        "id": "resp_modes",
        "object": "response",
        "created_at": 1,
        "model": "gpt-5",
        "status": "completed",
        "service_tier": "flex",
        "output": [
            {
                "type": "message",
                "id": "msg_modes",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "ok", "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": IN,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": OUT,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": IN + OUT,
        },
    }
    mock.enqueue(Reply(json=response))
    raw = server.openai("budgeted").responses.with_raw_response.create(
        model="gpt-5", input="hi", service_tier="flex", store=False
    )
    assert raw.parse().output_text == "ok"
    assert cost(server, raw.headers) == (IN * 125 // 2 + OUT * 500, "exact")  # $0.625 / $5 per 1M
    assert served_mode(server, raw.headers) == "flex"


@pytest.mark.parametrize("tier", ["on_demand", "flex"])
def test_another_providers_tier_is_its_own(server, mock, tier):
    """Groq answers with a ``service_tier`` of its own (``on_demand``; its ``flex`` is the on-demand
    price, not half): not OpenAI's, so billed at the table's rates, never unknown nor halved."""
    model = "llama-3.3-70b-versatile"
    mock.enqueue(Reply(json=chat_answer(model, tier)))
    status, headers, answer = chat(server, "open", model)
    assert status == 200 and answer["service_tier"] == tier, answer
    assert cost(server, headers) == (IN * 59 + OUT * 79, "exact")  # $0.59 / $0.79 per 1M
    assert served_mode(server, headers) is None


@pytest.mark.parametrize("model, tier", [("gpt-5.4", "priority"), ("gpt-4o-mini", "priority"), ("gpt-5", "scale")])
def test_a_budgeted_key_is_still_refused_a_tier_without_a_price(server, mock, model, tier):
    """gpt-5.4's priority price excludes long context (not published for it), gpt-4o-mini's is not
    published, and no price names ``scale``: a budget could not count them, so it refuses them."""
    before = len(mock.requests)
    status, _, answer = chat(server, "budgeted", model, service_tier=tier)
    assert status == 403 and answer["error"]["code"] == "service_tier_not_budgeted", answer
    assert len(mock.requests) == before


def test_an_unpriced_tier_that_served_an_open_key_is_unknown_not_guessed(server, mock):
    """An unbudgeted key may ask for any tier; when its answer says one the table does not price, the
    cost is unknown (it was billed at the standard rates: half what OpenAI charges for priority)."""
    mock.enqueue(Reply(json=chat_answer("gpt-5.4", "priority")))
    status, headers, answer = chat(server, "open", "gpt-5.4", service_tier="priority")
    assert status == 200, answer
    assert cost(server, headers) == (None, "unknown") and served_mode(server, headers) == "priority"


@pytest.mark.parametrize("tier", ["auto", None])
def test_a_burst_the_project_serves_at_priority_cannot_overspend_a_budget(server, mock, tier):
    """``auto`` (or no tier) is served at priority when the OpenAI project defaults to it, and billed
    so: each answer here uses exactly the tokens its hold counted, at priority (2x on gpt-5). Held at
    the standard rate, a $0.002 budget let twice its worth through in a 100-way burst; held at the
    dearest tier the model is priced in, the burst's spend stays within it."""
    key, budget = f"burst-{tier or 'none'}", 200_000
    extra = {} if tier is None else {"service_tier": tier}
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, **extra}
    tokens = -(-len(json.dumps(body)) // 4)  # what the hold counts the input as
    answer = chat_answer("gpt-5", "priority")
    answer["usage"] = {"prompt_tokens": tokens, "completion_tokens": 16, "total_tokens": tokens + 16}
    release = threading.Event()
    mock.enqueue(*[Reply(json=answer, held=release)] * 100)
    before = len(mock.requests)
    try:
        with ThreadPoolExecutor(max_workers=100) as pool:
            send = [("POST", "/v1/chat/completions", body, server.auth(key))] * 100
            calls = [pool.submit(server.request, *args) for args in send]
            # every request decided: the admitted ones wait at the provider, the rest were refused
            wait_for(lambda: len(mock.requests) - before + sum(c.done() for c in calls) == 100, 30, "the burst decided")
            release.set()
            statuses = [c.result()[0] for c in calls]
    finally:
        release.set()
        mock.clear_replies()
    admitted = statuses.count(200)
    assert admitted >= 1 and statuses.count(429) == 100 - admitted, statuses
    priority = tokens * 250 + 16 * 2000  # $2.50 / $20 per 1M
    sql = "SELECT t.cost_uc FROM traces t JOIN client_keys k ON k.id = t.key_id WHERE k.name = ? AND t.status = 200"
    rows = wait_for(lambda: (r := server.db_rows(sql, (key,))) and len(r) == admitted and r, 10, "the traces")
    assert [r["cost_uc"] for r in rows] == [priority] * admitted
    assert admitted * priority <= budget, f"{admitted} admitted: {admitted * priority} µ¢ spent of {budget}"


FAST = IN * 3000 + OUT * 15000  # Opus 4.6 in fast mode: $30 / $150 per 1M


@pytest.mark.parametrize(
    "extra, reported, expected",
    [
        ({"speed": "fast"}, {"speed": "fast"}, FAST),
        ({"inference_geo": "us"}, {"inference_geo": "us"}, (IN * 500 + OUT * 2500) * 11 // 10),
        ({"speed": "fast", "inference_geo": "us"}, {"speed": "fast", "inference_geo": "us"}, FAST * 11 // 10),
        ({"speed": "fast"}, {"speed": "standard"}, IN * 500 + OUT * 2500),  # served at standard speed
    ],
)
def test_claude_is_billed_at_the_mode_its_usage_reports(server, mock, extra, reported, expected):
    """Was: fast mode and US-only inference billed at the standard rates for an open key, refused
    to a budgeted one. Now billed at the mode the answer's usage says served it, and allowed a
    budgeted key where the table prices the mode (held at its rate)."""
    mock.enqueue(Reply(json=message_answer(OPUS, **reported)))
    client = server.anthropic("budgeted")
    response = client.messages.with_raw_response.create(
        model=OPUS, max_tokens=16, messages=[{"role": "user", "content": "hi"}], extra_body=extra
    )
    assert response.parse().usage.output_tokens == OUT
    assert {k: mock.last("/v1/messages").json.get(k) for k in extra} == extra  # sent on as asked
    assert cost(server, response.headers) == (expected, "exact")
    fast, us = reported.get("speed") == "fast", reported.get("inference_geo") == "us"
    assert served_mode(server, response.headers) == ("/".join(["fast"] * fast + ["us"] * us) or None)


def sse(kind: str, **data: object) -> str:
    """One Messages stream event block."""
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}"


def test_a_streamed_claude_answer_is_billed_at_its_mode(server, mock):
    """message_start's usage says the speed; message_delta's count the output."""
    start = message_answer(OPUS, speed="fast")
    start["usage"] = {"input_tokens": IN, "output_tokens": 1, "speed": "fast"}
    start["content"] = []
    text = {"type": "text_delta", "text": "ok"}
    events = [
        sse("message_start", message=start),
        sse("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        sse("content_block_delta", index=0, delta=text),
        sse("content_block_stop", index=0),
        sse("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": OUT}),
        sse("message_stop"),
    ]
    mock.enqueue(Reply(sse=events))
    client = server.anthropic("open")
    hi = [{"role": "user", "content": "hi"}]
    with client.messages.with_streaming_response.create(
        model=OPUS, max_tokens=16, messages=hi, stream=True, extra_body={"speed": "fast"}
    ) as response:
        trace_id = response.headers["x-stockyard-trace-id"]
        kinds = [event.type for event in response.parse()]
    assert kinds[-1] == "message_stop"
    trace = server.trace(trace_id)
    assert (trace["cost_uc"], trace["cost_status"], trace["served_mode"]) == (FAST, "exact", "fast")


def test_a_budget_holds_fast_mode_at_its_rate(server, mock):
    """1,000 output tokens on Opus 4.6 hold $0.025 at the standard rate, which a $0.10 budget covers;
    in fast mode $0.15, which it does not: refused before the provider is asked."""
    client = server.anthropic("dime")
    body = {"model": OPUS, "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
    mock.enqueue(Reply(json=message_answer(OPUS)))
    assert client.messages.create(**body).content
    before = len(mock.requests)
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(**body, extra_body={"speed": "fast"})
    assert refused.value.body["error"]["details"] == {"error_code": "budget_exceeded"}, refused.value.body
    assert len(mock.requests) == before


@pytest.mark.parametrize(
    "model, extra, param",
    [
        ("claude-opus-5-5", {"speed": "fast"}, "speed"),  # its fast-mode multiple is not published
        ("claude-haiku-4-5", {"inference_geo": "us"}, "inference_geo"),  # not priced (nor offered) before Opus 4.6
        (OPUS, {"speed": "turbo"}, "speed"),
    ],
)
def test_a_budgeted_key_is_still_refused_a_claude_mode_without_a_price(server, mock, model, extra, param):
    before = len(mock.requests)
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        server.anthropic("budgeted").messages.create(
            model=model, max_tokens=16, messages=[{"role": "user", "content": "hi"}], extra_body=extra
        )
    error = refused.value.body["error"]
    assert error["type"] == "permission_error" and param in error["message"], error
    assert len(mock.requests) == before


def test_an_unpriced_claude_mode_that_served_an_open_key_is_unknown(server, mock):
    mock.enqueue(Reply(json=message_answer("claude-opus-5-5", speed="fast")))
    hi = [{"role": "user", "content": "hi"}]
    response = server.anthropic("open").messages.with_raw_response.create(
        model="claude-opus-5-5", max_tokens=16, messages=hi, extra_body={"speed": "fast"}
    )
    assert cost(server, response.headers) == (None, "unknown")


def test_the_rollups_carry_the_mode_rates(server, mock):
    """The daily rollup (what cost reports read) sums the traces' costs: a priority answer's counts
    at the priority rate there too."""
    key_id = server.db_rows("SELECT id FROM client_keys WHERE name = 'budgeted'")[0]["id"]

    def rolled() -> int:
        rows = server.db_rows(
            "SELECT COALESCE(SUM(cost_uc), 0) AS c FROM rollups_daily WHERE key_id = ? AND model = 'gpt-4.1'", (key_id,)
        )
        return rows[0]["c"]

    before = rolled()
    mock.enqueue(Reply(json=chat_answer("gpt-4.1", "priority")))
    status, headers, _ = chat(server, "budgeted", "gpt-4.1", service_tier="priority")
    assert status == 200
    expected = IN * 350 + OUT * 1400  # gpt-4.1 priority: $3.50 / $14 per 1M
    assert cost(server, headers) == (expected, "exact")
    wait_for(lambda: rolled() == before + expected, what="the rollup")


def test_openai_sdk_client_sees_its_tier(server, mock):
    """The official client reads the tier from the answer as OpenAI sent it (nothing rewritten)."""
    mock.enqueue(Reply(json=chat_answer("gpt-5-mini", "priority")))
    completion = server.openai("budgeted").chat.completions.create(
        model="gpt-5-mini", messages=[{"role": "user", "content": "hi"}], service_tier="priority"
    )
    assert completion.service_tier == "priority"
    assert isinstance(completion, openai.types.chat.ChatCompletion)


def test_an_operator_prices_a_mode_and_a_budget_then_allows_it(server, mock):
    """``stockyard prices set claude-opus-5-5/fast`` prices Opus 5.5's fast mode (its multiple is not
    published): the running server applies it, a budgeted key is then served in fast mode (no longer
    refused) and billed at the operator's rates. The table lists it as an override."""
    made = server.cli("prices", "set", "claude-opus-5-5/fast", "--input", "8", "--output", "40")
    assert made.returncode == 0, made.stderr
    listed = server.cli("prices", "list", "--model", "claude-opus-5-5", "--json")
    rows = {r["model"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert rows["claude-opus-5-5/fast"]["source"] == "override"
    assert [(m["mode"], m["multiple"]) for m in rows["claude-opus-5-5"]["modes"]] == [("us", "1.1")]
    mock.enqueue(Reply(json=message_answer("claude-opus-5-5", speed="fast")))
    client = server.anthropic("budgeted")
    hi = [{"role": "user", "content": "hi"}]

    def served() -> object:  # refused (403) until the server has read the new price
        try:
            return client.messages.with_raw_response.create(
                model="claude-opus-5-5", max_tokens=16, messages=hi, extra_body={"speed": "fast"}
            )
        except anthropic.PermissionDeniedError:
            return None

    response = wait_for(served, what="the operator's fast-mode price applied")
    assert cost(server, response.headers) == (IN * 800 + OUT * 4000, "exact")  # $8 / $40 per 1M
    assert served_mode(server, response.headers) == "fast"


@pytest.mark.parametrize(
    "header, expected, status, mode",
    [
        ("flex", IN * 15 + OUT * 125, "exact", "flex"),  # Gemini's flex: half of $0.30 / $2.50 per 1M
        ("standard", IN * 30 + OUT * 250, "exact", None),  # a priority call past its limit, served standard
        ("SERVICE_TIER_FLEX", IN * 15 + OUT * 125, "exact", "flex"),  # the enum's spelling
        ("priority", None, "unknown", "priority"),  # its priority price is not published per model
    ],
)
def test_gemini_is_billed_at_the_tier_its_header_says(server, mock, header, expected, status, mode):
    """Gemini states the tier that served a call only in ``x-gemini-service-tier``: was ignored, so
    flex was billed at twice its price and priority at the standard rates."""
    answer = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": IN, "candidatesTokenCount": OUT, "totalTokenCount": IN + OUT},
        "modelVersion": "gemini-2.5-flash",
    }
    mock.enqueue(Reply(json=answer, headers={"x-gemini-service-tier": header}))
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "service_tier": header}
    got, headers, raw = server.request(
        "POST", "/v1beta/models/gemini-2.5-flash:generateContent", body, {"x-goog-api-key": server.keys["open"]}
    )
    assert got == 200, raw
    assert cost(server, headers) == (expected, status)
    assert served_mode(server, headers) == mode


def test_a_budgeted_key_is_refused_geminis_priority(server, mock):
    """Not priced, so not countable: refused before Google is asked, in Google's error shape."""
    before = len(mock.requests)
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "service_tier": "priority"}
    got, _, raw = server.request(
        "POST", "/v1beta/models/gemini-2.5-flash:generateContent", body, {"x-goog-api-key": server.keys["budgeted"]}
    )
    error = json.loads(raw)["error"]
    assert got == 403 and error["status"] == "PERMISSION_DENIED" and "service_tier" in error["message"], error
    assert len(mock.requests) == before

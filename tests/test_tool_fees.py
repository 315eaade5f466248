"""OpenAI's hosted search tools are billed per call, which its ``usage`` does not count.

A Responses answer shows each call as an output item (``web_search_call``, ``file_search_call``);
OpenAI bills the ``web_search`` tool $10 per 1,000 calls on every model, ``web_search_preview`` $25
per 1,000 on non-reasoning models (gpt-4o, gpt-4.1 families) and $10 on reasoning models (o-series,
gpt-5), file search $2.50 per 1,000 (developers.openai.com/api/docs/pricing, "Built-in tools", as
quoted 2026-03-12 by modelcostwatch.com and on community.openai.com). Each is the price table's
``openai/web_search_call…`` entry (unit ``call``), which an operator overrides as any price. On
gpt-4o-mini and gpt-4.1-mini a ``web_search`` call also bills its content as a fixed block of 8,000
input tokens (the same page), which their usage does not count: at the model's input rate.

The mock answers a request offering a search tool with the calls its ``metadata`` asks for
(``mock_web_searches``, ``mock_file_searches``), then its message: usage 12 tokens in, 5 out.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, Reply

from stockyard.toolfees import price_key

ADMIN = "admin-key-for-tool-fee-tests-0123456789"
USD = 10**8  # µ¢
CENT = USD // 100
MINI_IN, MINI_OUT = 15, 60  # gpt-4o-mini, µ¢ a token ($0.15 and $0.60 per 1M)
GPT5_MINI_IN, GPT5_MINI_OUT = 25, 200  # gpt-5-mini ($0.25 and $2.00 per 1M)
MINI_TOKENS = PROMPT_TOKENS * MINI_IN + COMPLETION_TOKENS * MINI_OUT
WEB, PREVIEW, FILE = CENT, 5 * CENT // 2, CENT // 4  # a call: $0.01, $0.025, $0.0025
# gpt-4o-mini and gpt-4.1-mini bill a web_search call's content as a fixed block of 8,000 input tokens
MINI_BLOCK, MINI41_BLOCK = 8000 * MINI_IN, 8000 * 40  # gpt-4.1-mini: $0.40 per 1M input
MINI_WEB = WEB + MINI_BLOCK  # a GA web search on gpt-4o-mini: the call, and its block
REFUSAL = r"\$([0-9.]+) spent(, \$[0-9.]+ held by requests in flight)?, .* may cost up to \$([0-9.]+)"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN)
    with served(pyz_path, tmp_path_factory, "toolfees", env) as srv:
        yield srv


def search(tool: str = "web_search", searches: int = 3, files: int = 0, model: str = "gpt-4o-mini", **fields) -> dict:
    tools: list[dict] = [{"type": tool}]
    if files:
        tools.append({"type": "file_search", "vector_store_ids": ["vs_mock"]})
    metadata = {"mock_web_searches": str(searches), "mock_file_searches": str(files)}
    return {"model": model, "input": "news about cats", "tools": tools, "metadata": metadata, **fields}


def post(server: ServerProcess, body: dict, secret: str | None = None) -> tuple[int, dict, bytes]:
    return server.request("POST", "/v1/responses", body, headers=server.auth(secret) if secret else None)


def billed(server: ServerProcess, body: dict) -> dict:
    status, headers, raw = post(server, body)
    assert status == 200, raw[:300]
    return server.trace(headers["x-stockyard-trace-id"])


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "body, tokens, fees",
    [
        (search(searches=3), MINI_TOKENS, 3 * MINI_WEB),  # the GA tool: $10 per 1,000 on every model
        (search("web_search_2025_08_26", searches=1), MINI_TOKENS, MINI_WEB),
        (  # the other mini billed a block, at its own input rate
            search(searches=2, model="gpt-4.1-mini-2025-04-14"),
            PROMPT_TOKENS * 40 + COMPLETION_TOKENS * 160,
            2 * (WEB + MINI41_BLOCK),
        ),
        (  # no block: the content is in the usage's input tokens
            search(searches=2, model="gpt-5-mini"),
            PROMPT_TOKENS * GPT5_MINI_IN + COMPLETION_TOKENS * GPT5_MINI_OUT,
            2 * WEB,
        ),
        (search("web_search_preview", searches=2), MINI_TOKENS, 2 * PREVIEW),  # non-reasoning: $25
        (
            search("web_search_preview", searches=2, model="gpt-5-mini"),  # reasoning: $10
            PROMPT_TOKENS * GPT5_MINI_IN + COMPLETION_TOKENS * GPT5_MINI_OUT,
            2 * WEB,
        ),
        (search(searches=1, files=4), MINI_TOKENS, MINI_WEB + 4 * FILE),
        (search(searches=0), MINI_TOKENS, 0),  # offered, not called: the tokens alone
    ],
)
def test_an_answer_bills_its_tokens_and_each_call_it_shows(server, stream, body, tokens, fees):
    """Was: the tokens alone; OpenAI's usage counts no call (~3 cents of 3 searches went unbilled)."""
    trace = billed(server, {**body, "stream": stream})
    assert trace["outcome"] == "ok" and trace["cost_status"] == "exact", trace
    assert trace["cost_uc"] == tokens + fees, (trace["cost_uc"], tokens, fees)


def test_a_stream_cut_after_its_searches_bills_the_searches_it_showed(server, mock):
    """The stream broke before ``response.completed``: the three searches it relayed happened."""
    # created, in_progress, then each search's added, in_progress, searching, completed and done
    mock.enqueue(Reply(cut_after=2 + 3 * 5))
    status, headers, raw = post(server, {**search(searches=3), "stream": True})
    assert status == 200 and raw.count(b'"type":"response.web_search_call.completed"') == 3, raw[:300]
    assert b'"type":"response.completed"' not in raw
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["outcome"] == "stream_broken" and trace["cost_status"] == "estimate", trace
    searches = 3 * MINI_WEB
    assert searches < trace["cost_uc"] < searches + CENT // 10, trace["cost_uc"]  # the searches, the text estimated


def admin(server: ServerProcess, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    status, _, data = server.request(method, path, body, headers={"Authorization": f"Bearer {ADMIN}"})
    return status, json.loads(data) if data else {}


def test_the_fee_is_a_price_an_operator_overrides(server):
    """A call's fee is the price table's ``openai/web_search_call`` (unit call, per 1M calls), which
    ``prices set`` overrides like any price, and which the price listing shows."""
    status, listed = admin(server, "GET", "/api/prices")
    assert status == 200, listed
    rows = {row["model"]: row for row in listed["prices"]}
    shipped = rows["openai/web_search_call"]
    assert (shipped["unit"], shipped["input_uc"], shipped["source"]) == ("call", 10_000 * USD, "shipped"), shipped
    assert rows["openai/file_search_call"]["input_uc"] == 2_500 * USD
    fields = {"model": "openai/web_search_call", "unit": "call", "input": "5000"}  # $5 per 1,000 calls
    status, answer = admin(server, "POST", "/api/prices", fields)
    assert status == 200 and answer["unit"] == "call", answer
    try:
        cheaper = MINI_TOKENS + CENT + 2 * MINI_BLOCK  # the block stays the model's input tokens
        wait_for(lambda: billed(server, search(searches=2))["cost_uc"] == cheaper, what="the override")
    finally:
        assert admin(server, "DELETE", "/api/prices/openai%2Fweb_search_call")[0] in (200, 204)
    shipped = MINI_TOKENS + 2 * MINI_WEB
    wait_for(lambda: billed(server, search(searches=2))["cost_uc"] == shipped, what="the shipped fee")


_names = iter(range(1_000_000))


def make_key(server: ServerProcess, budget_usd: str) -> tuple[str, str]:
    fields = {"name": f"fees{next(_names)}", "budget_usd": budget_usd, "budget_period": "total"}
    status, body = admin(server, "POST", "/api/keys", fields)
    assert status == 201, body
    return body["key"], body["id"]


def refusal(server: ServerProcess, secret: str, body: dict) -> tuple[int, int, bool]:
    """(spent, what the request may cost, whether requests in flight hold any) from its 429."""
    status, _, raw = post(server, body, secret)
    answer = json.loads(raw)
    assert status == 429 and answer["error"]["code"] == "budget_exceeded", (status, answer)
    found = re.search(REFUSAL, answer["error"]["message"])
    assert found, answer
    return int(Decimal(found[1]) * USD), int(Decimal(found[3]) * USD), found[2] is not None


def held(server: ServerProcess, body: dict) -> int:
    return refusal(server, make_key(server, "0.00000001")[0], body)[1]


CAP = 16  # max_output_tokens of the budgeted requests


def text_hold(body: dict) -> int:
    """gpt-4o-mini's part of a hold: the body's bytes at four a token, and the output cap."""
    return -(-len(json.dumps(body)) // 4) * MINI_IN + CAP * MINI_OUT


@pytest.mark.parametrize(
    "body, fees",
    [
        # max_tool_calls bounds every hosted call: that many at the dearest tool's fee
        (search(max_tool_calls=2, max_output_tokens=CAP), 2 * MINI_WEB),
        (search("web_search_preview", max_tool_calls=3, max_output_tokens=CAP), 3 * PREVIEW),
        (search(files=1, max_tool_calls=4, max_output_tokens=CAP), 4 * MINI_WEB),
        # without it, the searches its search_context_size lets Claude run (medium: 5) and ten file searches
        (search(max_output_tokens=CAP), 5 * MINI_WEB),
        (search("web_search_preview", max_output_tokens=CAP), 5 * PREVIEW),
        (search(files=1, max_output_tokens=CAP), 5 * MINI_WEB + 10 * FILE),
        (search(max_tool_calls=2, max_output_tokens=CAP, model="gpt-5-mini", service_tier="default"), None),  # no block
    ],
)
def test_a_budget_holds_the_calls_at_their_fees(server, body, fees):
    """Was: every web search held at Anthropic's one cent, the preview's $0.025 too, and
    max_tool_calls not read; file searches not held; a mini's block of 8,000 input tokens a search not held."""
    if fees is None:  # gpt-5-mini: its own rates
        text = -(-len(json.dumps(body)) // 4) * GPT5_MINI_IN + CAP * GPT5_MINI_OUT
        assert held(server, body) == text + 2 * WEB
        return
    assert held(server, body) == text_hold(body) + fees


def spent(server: ServerProcess, key_id: str) -> int:
    return server.db_rows("SELECT COALESCE(SUM(cost_uc), 0) AS s FROM traces WHERE key_id = ?", (key_id,))[0]["s"]


@pytest.mark.parametrize("stream", [False, True])
def test_the_budget_is_charged_the_fees_and_the_costs_report_has_them(server, stream):
    """The key's spend (the ledger's, read from a refusal; and its traces') and /api/costs include
    the calls' fees. Was: the hold (5 searches) settled to the tokens alone."""
    secret, key_id = make_key(server, "1.00")
    status, headers, _ = post(server, {**search(searches=7, files=2), "stream": stream}, secret)
    assert status == 200
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["cost_uc"] == MINI_TOKENS + 7 * MINI_WEB + 2 * FILE, trace
    # the ledger: a request past the budget is refused for the spend alone, once the hold settled
    big = search(max_tool_calls=10**5, max_output_tokens=CAP)
    wait_for(lambda: not refusal(server, secret, big)[2], what="the hold settled")
    assert refusal(server, secret, big)[0] == trace["cost_uc"]
    status, report = admin(server, "GET", "/api/costs?by=key")
    rows = {row["key"]: row for row in report["rows"]}
    assert status == 200 and rows[key_id]["cost_uc"] == trace["cost_uc"] == spent(server, key_id), rows


@pytest.fixture
def slow_upstream(mock):
    """Answers take 300 ms, so the burst's requests are in flight together."""
    mock.delay_ms = 300
    yield mock
    mock.delay_ms = 0


def test_a_burst_of_search_requests_stays_within_the_budget(server, slow_upstream):
    """Each request may make 3 calls (max_tool_calls) and makes them; a budget with room for two such
    holds admits two at a time, never more than it has. Was: each held one cent a search for five
    searches of the preview tool that costs $0.025 each, so 20 in flight were admitted."""
    body = search("web_search_preview", searches=3, max_tool_calls=3, max_output_tokens=CAP)
    one = MINI_TOKENS + 3 * PREVIEW
    budget = 2 * (text_hold(body) + 3 * PREVIEW) + CENT // 2  # room for two holds, not three
    secret, key_id = make_key(server, str(Decimal(budget) / USD))
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: post(server, body, secret)[0], range(20)))
    admitted = [r for r in results if r == 200]
    assert admitted and all(r in (200, 429) for r in results), results
    answered = "SELECT count(*) AS n FROM traces WHERE key_id = ? AND outcome = 'ok'"
    wait_for(lambda: server.db_rows(answered, (key_id,))[0]["n"] == len(admitted), what="the admitted requests' traces")
    assert spent(server, key_id) == len(admitted) * one <= budget, (len(admitted), budget)


def test_a_batch_of_responses_bills_the_calls_its_lines_show(server):
    """A Batch API output line of /v1/responses is a response object: its calls are billed whole
    beside its tokens at half price (whether OpenAI halves the tools' fees is not stated: never less
    than may be owed), and the batch holds them whole. Was: the tokens alone, held and billed."""
    secret, key_id = make_key(server, "1.00")
    sdk = server.openai(secret)
    bodies = [
        search(searches=3, max_tool_calls=3, max_output_tokens=CAP),
        search("web_search_preview", searches=1, files=2, max_tool_calls=3, max_output_tokens=CAP),
    ]
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses", "body": b} for i, b in enumerate(bodies)]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    source = sdk.files.create(file=("in.jsonl", data), purpose="batch")
    batch = sdk.batches.create(input_file_id=source.id, endpoint="/v1/responses", completion_window="24h")
    (row,) = server.db_rows("SELECT held_uc FROM owned_objects WHERE id = ?", (batch.id,))
    calls_held = 3 * MINI_WEB + 3 * PREVIEW  # max_tool_calls at the dearest tool's fee, whole
    text_held = sum(-(-text_hold(line) // 2) for line in lines)  # each whole line's bytes and cap, at half
    assert calls_held < row["held_uc"] <= calls_held + text_held, (row["held_uc"], calls_held)
    assert sdk.batches.retrieve(batch.id).status == "completed"
    usage = "SELECT cost_uc, cost_status FROM traces WHERE key_id = ? AND endpoint = 'batches.usage'"
    (billed_row,) = wait_for(lambda: server.db_rows(usage, (key_id,)), what="the batch's usage row")
    tokens = (2 * MINI_TOKENS + 1) // 2  # half price, rounded once
    assert billed_row == {"cost_uc": tokens + 3 * MINI_WEB + PREVIEW + 2 * FILE, "cost_status": "exact"}, billed_row


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("gpt-4o-mini", "web_search_call/preview"),
        ("gpt-4.1", "web_search_call/preview"),
        ("openai/gpt-5-mini", "web_search_call/preview-reasoning"),
        ("o3-2025-04-16", "web_search_call/preview-reasoning"),
        ("gpt-5-chat-latest", "web_search_call/preview"),  # the chat model of gpt-5 does not reason
        ("GPT-5.1-Chat", "web_search_call/preview"),
    ],
)
def test_a_preview_search_is_priced_by_whether_its_model_reasons(model: str, key: str) -> None:
    assert price_key("web_search_call", {"tools": [{"type": "web_search_preview"}]}, model) == key

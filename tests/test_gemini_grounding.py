"""Gemini's grounding tools are billed as Google bills them, which ``usageMetadata`` does not count.

Google's pricing page (ai.google.dev/gemini-api/docs/pricing, as quoted on discuss.ai.google.dev
and by third parties through 2026-10): Grounding with Google Search is $35 per 1,000 grounded
prompts on Gemini 2.5 and older (one fee a request, however many searches it ran), $14 per 1,000
search queries on Gemini 3 and later (each query in ``groundingMetadata.webSearchQueries``);
Grounding with Google Maps $25 per 1,000 grounded prompts on Gemini 2.5, $14 per 1,000 queries on
Gemini 3. The free allowances (1,500 grounded prompts a day; 5,000 prompts a month on Gemini 3) are
the account's, which a proxy cannot count: the paid rate is billed, and an operator who stays in
the allowance prices the fee at 0.

Raw HTTP as google-genai sends it, to the session mock speaking Gemini: a body offering a grounding
tool is answered with the candidate's ``groundingMetadata`` (two queries), unless the model's name
says ``ungrounded``. Usage: 12 tokens in, 5 out.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import COMPLETION_TOKENS, GROUNDING_QUERIES, PROMPT_TOKENS, Reply

from stockyard.toolfees import per_query

GEMINI_KEY = "AIza-grounding-0123456789abcdefPROVIDERSECRET"
ADMIN = "admin-key-for-grounding-tests-0123456789"
USD = 10**8  # µ¢
PROMPT_FEE, QUERY_FEE, MAPS_FEE = 35 * USD // 1000, 14 * USD // 1000, 25 * USD // 1000  # one of each
FLASH_25 = PROMPT_TOKENS * 30 + COMPLETION_TOKENS * 250  # gemini-2.5-flash: $0.30 in, $2.50 out per 1M
FLASH_3 = PROMPT_TOKENS * 50 + COMPLETION_TOKENS * 300  # gemini-3-flash-preview: $0.50 in, $3 out per 1M
CONTENTS = [{"role": "user", "parts": [{"text": "What happened to cats this week?"}]}]
SEARCH, SEARCH_SNAKE, MAPS = {"googleSearch": {}}, {"google_search": {}}, {"googleMaps": {}}
REFUSAL = r"\$([0-9.]+) spent.* may cost up to \$([0-9.]+)"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=mock.url, STOCKYARD_ADMIN_KEY=ADMIN)
    ungrounded = ("gemini-2.5-mock-ungrounded", "gemini-3-mock-ungrounded")  # no real model's names: priced
    prices = [("prices", "set", model, "--input", "1", "--output", "2") for model in ungrounded]
    # keys are required from the first request: made before the start
    with served(pyz_path, tmp_path_factory, "grounding", env, {"genai": []}, prices) as srv:
        KEY["genai"] = srv.keys["genai"]
        yield srv


KEY: dict[str, str] = {}


def generate(server: ServerProcess, model: str, tools: list, stream: bool = False, key: str | None = None, **extra):
    """One generateContent (or its SSE stream) as google-genai sends it (the key in x-goog-api-key)."""
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    body = {"contents": CONTENTS, "tools": tools, **extra}
    headers = {"x-goog-api-key": key or KEY["genai"]}
    return server.request("POST", f"/v1beta/models/{model}:{method}", body, headers=headers)


def billed(server: ServerProcess, model: str, tools: list, stream: bool = False) -> dict:
    status, headers, raw = generate(server, model, tools, stream)
    assert status == 200, raw[:300]
    assert b"groundingMetadata" in raw or "ungrounded" in model or not tools, raw[:300]  # relayed as Google sent it
    return server.trace(headers["x-stockyard-trace-id"])


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "model, tools, tokens, fees",
    [
        ("gemini-2.5-flash", [SEARCH], FLASH_25, PROMPT_FEE),  # per grounded prompt: two queries, one fee
        ("gemini-2.5-flash", [SEARCH_SNAKE], FLASH_25, PROMPT_FEE),
        ("gemini-3-flash-preview", [SEARCH], FLASH_3, len(GROUNDING_QUERIES) * QUERY_FEE),  # per query
        ("gemini-2.5-flash", [MAPS], FLASH_25, MAPS_FEE),
        ("gemini-3-flash-preview", [MAPS], FLASH_3, QUERY_FEE),  # a Maps answer ran a query at least
        ("gemini-2.5-flash", [], FLASH_25, 0),
        ("gemini-2.5-mock-ungrounded", [SEARCH], PROMPT_TOKENS * 100 + COMPLETION_TOKENS * 200, 0),  # not used
        ("gemini-3-mock-ungrounded", [SEARCH], PROMPT_TOKENS * 100 + COMPLETION_TOKENS * 200, 0),
    ],
)
def test_a_grounded_answer_bills_its_tokens_and_its_grounding(server, stream, model, tools, tokens, fees):
    """Was: the tokens alone; Google's grounding fee (3.5 cents a grounded 2.5 prompt) went unbilled."""
    trace = billed(server, model, tools, stream)
    assert (trace["outcome"], trace["cost_status"]) == ("ok", "exact"), trace
    assert trace["cost_uc"] == tokens + fees, (trace["cost_uc"], tokens, fees)


def admin(server: ServerProcess, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    status, _, data = server.request(method, path, body, headers={"Authorization": f"Bearer {ADMIN}"})
    return status, json.loads(data) if data else {}


def test_the_fees_are_prices_an_operator_overrides(server):
    """The shipped prices (unit call, per 1M) are listed; an operator inside Google's free allowance
    prices a fee at 0, and the shipped one comes back when the override goes."""
    status, listed = admin(server, "GET", "/api/prices")
    rows = {row["model"]: row for row in listed["prices"]}
    assert status == 200 and rows["gemini/search_query"]["input_uc"] == 14_000 * USD, rows.get("gemini/search_query")
    prompt = rows["gemini/grounded_prompt"]
    assert (prompt["unit"], prompt["input_uc"]) == ("call", 35_000 * USD), prompt
    free = {"model": "gemini/grounded_prompt", "unit": "call", "input": "0"}  # inside Google's free allowance
    status, answer = admin(server, "POST", "/api/prices", free)
    assert status == 200, answer
    try:
        wait_for(lambda: billed(server, "gemini-2.5-flash", [SEARCH])["cost_uc"] == FLASH_25, what="the override")
    finally:
        assert admin(server, "DELETE", "/api/prices/gemini%2Fgrounded_prompt")[0] in (200, 204)
    wait_for(lambda: billed(server, "gemini-2.5-flash", [SEARCH])["cost_uc"] == FLASH_25 + PROMPT_FEE, what="shipped")


_names = iter(range(1_000_000))


def held(server: ServerProcess, model: str, tools: list) -> int:
    """What a request may cost, from the 429 a key with a budget of one µ¢ gets."""
    fields = {"name": f"ground{next(_names)}", "budget_usd": "0.00000001", "budget_period": "total"}
    status, made = admin(server, "POST", "/api/keys", fields)
    assert status == 201, made
    config = {"generationConfig": {"maxOutputTokens": 16}}
    status, _, raw = wait_for(lambda: (r := generate(server, model, tools, key=made["key"], **config))[0] != 401 and r)
    error = json.loads(raw)["error"]
    assert status == 429 and error["status"] == "RESOURCE_EXHAUSTED", (status, error)
    found = re.search(REFUSAL, error["message"])
    assert found, error
    return int(Decimal(found[2]) * USD)


@pytest.mark.parametrize(
    "model, fees",
    [
        ("gemini-2.5-mock-ungrounded", PROMPT_FEE),  # one grounded prompt, whatever it searches
        ("gemini-3-mock-ungrounded", 10 * QUERY_FEE),  # nothing bounds the queries: ten, a guess the answer settles
    ],
)
def test_a_budget_holds_the_grounding_a_request_enables(server, model, fees):
    """Was: a grounding tool held nothing, so a budget's last cent bought a 3.5-cent search."""
    with_tool, without = held(server, model, [SEARCH]), held(server, model, [])
    body_bytes = len(json.dumps({"googleSearch": {}})) + 2  # the tool in the list, and its separator
    assert with_tool - without - fees in range(0, (body_bytes // 4 + 2) * 100), (with_tool, without, fees)


def test_a_stream_repeating_its_grounding_bills_each_query_once(server, mock):
    """A stream may carry a candidate's grounding metadata on more than one chunk (cumulative): each
    query is billed once, and a query listed twice in one chunk twice."""

    def chunk(text: str, queries: list[str], finish: str | None = None) -> str:
        candidate: dict = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        candidate["groundingMetadata"] = {"webSearchQueries": queries, "groundingChunks": []}
        if finish:
            candidate["finishReason"] = finish
        usage = {"promptTokenCount": PROMPT_TOKENS, "candidatesTokenCount": COMPLETION_TOKENS}
        return json.dumps({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-3-flash-preview"})

    mock.enqueue(Reply(sse=[chunk("Cats ", ["cats"]), chunk("purr.", ["cats", "cats", "purr"], "STOP")]))
    trace = billed(server, "gemini-3-flash-preview", [SEARCH], stream=True)
    assert trace["cost_uc"] == FLASH_3 + 3 * QUERY_FEE, trace["cost_uc"]  # cats twice in one chunk, purr


@pytest.mark.parametrize(
    "model, queries",
    [
        ("gemini-2.5-flash", False),
        ("models/gemini-2.0-flash-001", False),
        ("gemini/gemini-1.5-pro", False),
        ("gemini-3-flash-preview", True),
        ("gemini-3.1-pro-preview", True),
        ("gemini-4-argon", True),
        ("gemini-flash-latest", True),  # the name says no generation: the current one's rule (the dearer hold)
    ],
)
def test_the_generation_picks_per_prompt_or_per_query(model: str, queries: bool) -> None:
    assert per_query(model) is queries

"""Per-call fees a provider's usage reports, beyond its tokens: Perplexity states its request and
search-query fees in ``usage.cost`` (USD); they join the trace's exact cost (Anthropic's web
searches, counted in its usage, are in test_anthropic.py)."""

from __future__ import annotations

import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import Reply

from stockyard.pricing import PriceTable, Usage, cost_microcents, stated_fees


@pytest.mark.parametrize(
    "cost, expected",
    [
        ({"request_cost": 0.005, "search_queries_cost": 0.01, "input_tokens_cost": 0.3}, 1_500_000),  # tokens: not fees
        ({"request_cost": 0.014}, 1_400_000),
        ({"request_cost": 1e-9}, 0),  # below 1 µ¢ (1e-8 USD), rounded half up
        ({"request_cost": 5e-9}, 1),
        ({"request_cost": None, "search_queries_cost": "0.01"}, 0),
        ({"request_cost": True}, 0),
        ({"request_cost": -0.005}, 0),
        ({"request_cost": float("inf")}, 0),
        ({"request_cost": float("nan")}, 0),  # Python's json reads NaN
        ({"request_cost": 10_000.0}, 0),  # not one request's fee
        (0.0123, 0),  # OpenRouter's usage.cost is one number (its credits): not read as fees
        (None, 0),
    ],
)
def test_stated_fees_are_exact_and_only_fees(cost, expected):
    assert stated_fees(cost) == expected


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home, mock, PERPLEXITY_API_KEY="pplx-test-0123456789abcdef", PERPLEXITY_BASE_URL=mock.url + "/v1"
    )
    with served(pyz_path, tmp_path_factory, "fees", env) as srv:
        yield srv


def test_a_perplexity_request_fee_joins_the_trace_cost(server: ServerProcess, mock):
    """Was: Perplexity bills $5–14 per 1,000 requests (by search context size) on top of the
    tokens, and the trace counted only the tokens."""
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "total_tokens": 30,
        "search_context_size": "high",
        "cost": {
            "input_tokens_cost": 0.00001,
            "output_tokens_cost": 0.00002,
            "request_cost": 0.012,
            "total_cost": 0.01203,
        },
    }
    answer = {
        "id": "pplx-1",
        "object": "chat.completion",
        "created": 1,
        "model": "sonar",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sourced."}, "finish_reason": "stop"}],
        "usage": usage,
    }
    mock.enqueue(Reply(json=answer))
    body = {"model": "sonar", "messages": [{"role": "user", "content": "news?"}]}
    status, headers, raw = server.request("POST", "/v1/chat/completions", body)
    assert status == 200, raw
    trace = server.trace(headers["x-stockyard-trace-id"])
    price = PriceTable.load().lookup("sonar", "perplexity")
    assert price is not None
    tokens = cost_microcents(price, Usage(prompt_tokens=10, completion_tokens=20))
    assert trace["provider"] == "perplexity" and trace["cost_uc"] == tokens + 1_200_000  # $0.012

"""What a budget holds a request at is what its answer is billed at.

Was: the hold looked the price up by the served model, then the name the client asked for (a
price set as ``local/my-model``, as the 403 ``model_not_priced`` tells the operator to, or under a
deployment group's name); the bill only by the served and upstream names. So the request was
admitted, its cost recorded as ``unknown``, and the budget learned 0: a key with a budget for four
requests made as many as it liked. Real server, stored provider and deployments, mock upstream.
"""

from __future__ import annotations

import json
import secrets

import pytest
from conftest import ServerProcess, mock_env, served, wait_for

ADMIN = "admin-key-for-billed-price-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
# 5 output tokens (the mock's answer) at $1 per 1M: 500 µ¢ a request; a $0.00002 budget holds four
BUDGET_USD, PER_REQUEST_UC = "0.00002", 500


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_ENCRYPTION_KEY="enc-" + secrets.token_hex(16))
    with served(pyz_path, tmp_path_factory, "billed", env) as srv:
        yield srv


def api(server: ServerProcess, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    status, _, data = server.request(method, path, body, headers=AUTH)
    return status, json.loads(data)


def budgeted_key(server: ServerProcess, name: str) -> str:
    status, body = api(server, "POST", "/api/keys", {"name": name, "budget_usd": BUDGET_USD, "budget_period": "day"})
    assert status == 201, body
    return body["key"]


def spend_until_refused(server: ServerProcess, key: str, model: str, admitted: int = 0) -> list[tuple[int, str]]:
    """Send the same small chat until the budget refuses (at most 10): the admitted answers'
    (cost, cost status), ``admitted`` more of them already sent."""
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    traces = []
    for _ in range(10):
        auth = {"Authorization": f"Bearer {key}"}
        status, headers, data = server.request("POST", "/v1/chat/completions", chat, headers=auth)
        if status != 200:
            assert status == 429 and json.loads(data)["error"]["code"] == "budget_exceeded", (status, data)
            break
        traces.append(server.trace(headers["x-stockyard-trace-id"]))
    assert len(traces) + admitted == 4, f"a budget for 4 requests admitted {len(traces) + admitted}"
    return [(t["cost_uc"], t["cost_status"]) for t in traces]


def test_a_price_set_under_the_provider_qualified_name_is_billed(server, mock):
    body = {
        "name": "local",
        "kind": "openai-compatible",
        "base_url": mock.url + "/v1",
        "api_key": "sk-local-0123456789",
    }
    assert api(server, "POST", "/api/providers", body)[0] == 201
    key = budgeted_key(server, "local-user")
    chat = {"model": "local/my-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}

    def refusal() -> dict:
        status, _, data = server.request(
            "POST", "/v1/chat/completions", chat, headers={"Authorization": f"Bearer {key}"}
        )
        return json.loads(data) if status == 403 else {}

    wait_for(lambda: bool(refusal()), what="the stored provider loaded")
    assert "prices set local/my-model" in refusal()["error"]["message"]
    assert api(server, "POST", "/api/prices", {"model": "local/my-model", "input": "0", "output": "1"})[0] == 200
    wait_for(lambda: not refusal(), what="the price loaded")  # one request admitted
    assert set(spend_until_refused(server, key, "local/my-model", admitted=1)) == {(PER_REQUEST_UC, "exact")}


def test_a_price_set_under_a_deployment_groups_name_is_billed(server, mock):
    status, view = api(
        server, "POST", "/api/models/house/deployments", {"name": "one", "provider": "openai", "model": "sy-no-price"}
    )
    assert status == 201, view
    assert api(server, "POST", "/api/prices", {"model": "house", "input": "0", "output": "1"})[0] == 200
    key = budgeted_key(server, "house-user")
    assert set(spend_until_refused(server, key, "house")) == {(PER_REQUEST_UC, "exact")}

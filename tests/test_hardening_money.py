"""Issue 11, money: the worst case counts every billed choice (budgets and tpm), token caps and
choice counts are whole numbers checked at the edge, prices are never a neighbour's, and no
admin number can reach SQLite past its range.

The server routes to the mock, which bills like a provider: every choice is in the usage,
and a model named with ``bill-max`` writes until the request's cap (read as leniently as a
real provider would: ``5000.0`` and ``"5000"`` are 5000) — the attacker's worst case.
``mock-bill-max`` is priced at $0 input and $10 per 1M output tokens: 1_000 µ¢ a token.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ServerProcess, served, wait_for
from mock_upstream import Reply
from module_helpers import api, disable_all, module_env, put_module

from stockyard.context import RequestContext

MODEL = "mock-bill-max"
ASKED = f"openai/{MODEL}"  # the server has several providers: name the one that serves it
PER_TOKEN_UC = 1_000
BUDGET = "0.10"  # 10_000_000 µ¢ = 10_000 output tokens
BUDGET_UC = 10_000_000
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    with served(pyz_path, tmp_path_factory, "money", module_env(cache_home, mock)) as srv:
        assert api(srv, "POST", "/api/prices", {"model": ASKED, "input": "0", "output": "10"})[0] == 200
        yield srv


@pytest.fixture(scope="module")
def plain(server) -> str:
    """A key without limits (once a key exists, every request needs one)."""
    return make_key(server, name="plain")[0]


@pytest.fixture(autouse=True)
def fresh(server, mock):
    disable_all(server)  # modules at their defaults: budget and ratelimit on, guard off
    put_module(server, "budget", {}, enabled=True)
    put_module(server, "ratelimit", {}, enabled=True)
    mock.clear()
    yield
    mock.delay_ms = 0


_names = iter(range(1_000_000))


def make_key(server: ServerProcess, **fields) -> tuple[str, str]:
    fields.setdefault("name", f"money-{next(_names)}")
    status, body = api(server, "POST", "/api/keys", fields)
    assert status == 201, body
    return body["key"], body["id"]


def send(server: ServerProcess, key: str | None, body: dict, path: str = "/v1/chat/completions"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    status, headers, raw = server.request("POST", path, body, headers=headers)
    return status, headers, json.loads(raw)


def spent(server: ServerProcess, key_id: str, count: int) -> int:
    """Σ cost of the key's traces, once all ``count`` of them are written."""
    wait_for(
        lambda: server.db_rows("SELECT count(*) AS n FROM traces WHERE key_id = ?", (key_id,))[0]["n"] >= count,
        what=f"{count} traces",
    )
    return server.db_rows("SELECT COALESCE(SUM(cost_uc), 0) AS s FROM traces WHERE key_id = ?", (key_id,))[0]["s"]


def reached(mock) -> int:
    return sum(1 for r in mock.requests if isinstance(r.json, dict) and r.json.get("model") == MODEL)


def concurrently(server: ServerProcess, key: str, body: dict, count: int, path: str = "/v1/chat/completions"):
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda _: send(server, key, body, path), range(count)))


# --------------------------------------------------------------------------- every choice is counted


def test_eight_concurrent_n100_requests_cannot_overspend_a_ten_cent_budget(server, mock):
    # each may bill 100 × 1_000 tokens = $1.00: none fits in $0.10 (before the fix all 8 ran: $8.00)
    key, key_id = make_key(server, budget_usd=BUDGET, budget_period="day")
    mock.delay_ms = 200  # requests overlap in flight
    results = concurrently(server, key, {"model": ASKED, "messages": HI, "n": 100, "max_tokens": 1000}, 8)
    assert [r[0] for r in results] == [429] * 8
    assert {r[2]["error"]["code"] for r in results} == {"budget_exceeded"}
    assert "$1.00" in results[0][2]["error"]["message"]
    assert reached(mock) == 0 and spent(server, key_id, 8) == 0


def test_concurrent_requests_spend_at_most_the_budget(server, mock):
    # n=10 × 1_000 tokens = exactly $0.10: one fits, and the mock bills it in full
    key, key_id = make_key(server, budget_usd=BUDGET, budget_period="day")
    mock.delay_ms = 200
    results = concurrently(server, key, {"model": ASKED, "messages": HI, "n": 10, "max_tokens": 1000}, 8)
    admitted = [r for r in results if r[0] == 200]
    assert len(admitted) == 1 and len(admitted[0][2]["choices"]) == 10
    assert {r[2]["error"]["code"] for r in results if r[0] != 200} == {"budget_exceeded"}
    assert spent(server, key_id, 8) == BUDGET_UC


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "hi", "best_of": 20, "max_tokens": 1000}),  # 20 generated
        ("/v1/chat/completions", {"messages": HI, "generationConfig": {"candidateCount": 8, "maxOutputTokens": 2000}}),
        ("/v1/chat/completions", {"messages": HI, "max_output_tokens": 20_000}),  # Responses-style cap
        ("/v1/chat/completions", {"messages": HI, "max_tokens": 10, "max_completion_tokens": 20_000}),  # the larger
    ],
)
def test_every_multiplier_and_cap_is_in_the_worst_case(server, mock, path, body):
    key, key_id = make_key(server, budget_usd=BUDGET, budget_period="day")
    status, _, reply = send(server, key, {"model": ASKED, **body}, path)
    assert status == 429 and reply["error"]["code"] == "budget_exceeded", reply
    assert reached(mock) == 0
    assert send(server, key, {"model": ASKED, "messages": HI, "max_tokens": 1000})[0] == 200  # $0.01 fits


def test_anthropic_max_tokens_is_the_worst_case(server, mock):
    key, _ = make_key(server, budget_usd=BUDGET, budget_period="day")
    status, _, reply = send(server, key, {"model": ASKED, "max_tokens": 20_000, "messages": HI}, "/v1/messages")
    assert status == 429 and reply["type"] == "error" and reply["error"]["type"] == "rate_limit_error"
    assert reply["error"]["details"] == {"error_code": "budget_exceeded"}
    assert reached(mock) == 0


def test_tpm_counts_every_choice(server, mock):
    key, key_id = make_key(server, tpm=2_000)
    status, headers, reply = send(server, key, {"model": "gpt-4o-mini", "messages": HI, "n": 30, "max_tokens": 100})
    assert status == 429 and "max_tokens × n" in reply["error"]["message"]  # 3_000 + input > 2_000
    assert headers["x-should-retry"] == "false" and mock.requests == []
    status, headers, reply = send(server, key, {"model": "gpt-4o-mini", "messages": HI, "n": 10, "max_tokens": 100})
    assert status == 200 and reply["usage"]["completion_tokens"] == 50  # the mock bills 5 a choice
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["completion_tokens"] == 50


def test_the_estimate_reads_every_shape():
    from stockyard.estimate import choices, output_cap, output_tokens, request_tokens

    def ctx(body: dict, endpoint: str = "chat") -> RequestContext:
        return RequestContext(endpoint, "openai", "127.0.0.1", {}, raw=json.dumps(body).encode(), body=body)

    assert output_tokens(ctx({"n": 4, "max_tokens": 100}), 4096) == 400
    assert output_tokens(ctx({"n": 2}), 4096) == 8192  # no cap: the default, for every choice
    assert output_tokens(ctx({"best_of": 5, "n": 2, "max_tokens": 10}, "completions"), 4096) == 50
    assert output_tokens(ctx({"max_output_tokens": 300}, "responses"), 4096) == 300
    gemini = {"generationConfig": {"candidateCount": 3, "maxOutputTokens": 70}}
    assert (output_cap(gemini, 4096), choices(gemini)) == (70, 3)
    assert output_tokens(ctx({"generation_config": {"candidate_count": 2, "max_output_tokens": 9}}), 1) == 18
    assert output_tokens(ctx({"n": 50, "max_tokens": 100}, "embeddings"), 4096) == 0
    body = {"n": 3, "max_tokens": 10}
    assert request_tokens(ctx(body), 4096) == -(-len(json.dumps(body)) // 4) + 30  # input once, output × n


# --------------------------------------------------------------------------- numbers are checked at the edge


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", "5000"),
        ("max_tokens", 5000.5),
        ("max_tokens", True),
        ("max_tokens", -1),
        ("max_tokens", 0),
        ("max_tokens", 2**63),
        ("max_tokens", [5000]),
        ("max_completion_tokens", "1e3"),
        ("max_output_tokens", False),
        ("n", "2"),
        ("n", 0),
        ("n", 129),
        ("n", 1.5),
        ("best_of", True),
        ("best_of", 10**20),
    ],
)
def test_bad_numbers_are_400_naming_the_field(server, mock, field, value):
    key, _ = make_key(server, budget_usd=BUDGET, budget_period="day")
    status, _, reply = send(server, key, {"model": ASKED, "messages": HI, field: value})
    assert status == 400, reply
    assert reply["error"]["param"] == field and f"'{field}'" in reply["error"]["message"]
    assert reply["error"]["code"] in ("invalid_type", "invalid_value")
    assert reached(mock) == 0


def test_bad_numbers_in_a_gemini_body_and_on_the_messages_route(server, mock, plain):
    status, _, reply = send(
        server, plain, {"model": ASKED, "messages": HI, "generationConfig": {"candidateCount": "8"}}
    )
    assert status == 400 and reply["error"]["param"] == "generationConfig.candidateCount"
    status, _, reply = send(server, plain, {"model": ASKED, "max_tokens": "5000", "messages": HI}, "/v1/messages")
    assert status == 400 and reply["type"] == "error" and reply["error"]["type"] == "invalid_request_error"
    assert "'max_tokens' must be a whole number" in reply["error"]["message"]
    assert reached(mock) == 0


def test_null_means_not_set(server, mock, plain):
    status, _, _ = send(server, plain, {"model": "gpt-4o-mini", "messages": HI, "max_tokens": None, "n": None})
    assert status == 200


def test_an_integral_float_is_normalised_then_capped_and_budgeted(server, mock, plain):
    assert send(server, plain, {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 5000.0, "n": 2.0})[0] == 200
    sent = mock.last("/chat/completions")
    assert b'"max_tokens": 5000' in sent.body and b"5000.0" not in sent.body and sent.json["n"] == 2

    put_module(server, "guard", {"max_tokens": 100})
    assert send(server, plain, {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 5000.0})[0] == 200
    assert mock.last("/chat/completions").json["max_tokens"] == 100  # the ceiling applies to it too
    assert (
        send(server, plain, {"model": "gpt-4o-mini", "messages": HI, "generationConfig": {"maxOutputTokens": 5e3}})[0]
        == 200
    )
    assert mock.last("/chat/completions").json["generationConfig"]["maxOutputTokens"] == 100
    put_module(server, "guard", {}, enabled=False)

    # 4_096 (the default) would fit in $0.045, 5_000 does not: the float counts as 5_000
    key, key_id = make_key(server, budget_usd="0.045", budget_period="day")
    status, _, reply = send(server, key, {"model": ASKED, "messages": HI, "max_tokens": 5000.0})
    assert status == 429 and reply["error"]["code"] == "budget_exceeded"
    assert send(server, key, {"model": ASKED, "messages": HI, "max_tokens": 4000.0})[0] == 200
    assert spent(server, key_id, 2) == 4_000 * PER_TOKEN_UC


# --------------------------------------------------------------------------- prices are never a neighbour's


def test_an_echoed_served_model_is_not_priced_as_a_shorter_model(server, mock, plain):
    served = 'gpt-4o-mini"><svg onload=alert(1)>'
    mock.enqueue(
        Reply(
            json={
                "id": "x",
                "object": "chat.completion",
                "model": served,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
            }
        )
    )
    status, headers, _ = send(server, plain, {"model": "gpt-4o-mini", "messages": HI})
    trace = server.trace(headers["x-stockyard-trace-id"])
    # the served name is unknown, so the model asked for prices it: gpt-4o-mini (480 µ¢), not gpt-4o (8_000)
    assert status == 200 and trace["cost_status"] == "exact" and trace["cost_uc"] == 480


def test_a_budgeted_key_is_refused_a_model_priced_only_by_a_prefix(server, mock):
    key, _ = make_key(server, budget_usd="1", budget_period="day")
    status, _, reply = send(server, key, {"model": "gpt-4o-mini-unpriced-variant", "messages": HI})
    assert status == 403 and reply["error"]["code"] == "model_not_priced"
    assert send(server, key, {"model": "gpt-4o-mini-2024-07-18", "messages": HI, "max_tokens": 5})[0] == 200


# --------------------------------------------------------------------------- admin numbers stay in range


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("POST", "/api/keys", {"name": "big-rpm", "rpm": 2**63}, "rpm"),
        ("POST", "/api/keys", {"name": "big-tpm", "tpm": 10**30}, "tpm"),
        ("POST", "/api/keys", {"name": "bool-rpm", "rpm": True}, "rpm"),
        (
            "POST",
            "/api/keys",
            {"name": "big-budget", "budget_usd": "100000000000000", "budget_period": "day"},
            "budget_usd",
        ),
        ("PUT", "/api/projects/p/budget", {"budget_usd": 10**20, "period": "day"}, "budget_usd"),
        ("POST", "/api/prices", {"model": "m", "input": "1e20", "output": "1"}, "input"),
        ("POST", "/api/prices", {"model": "m", "input": "1", "output": 10**30}, "output"),
        ("POST", "/api/prices", {"model": "m", "input": "1e999999999", "output": "1"}, None),
        ("PUT", "/api/modules/guard", {"enabled": True, "config": {"max_tokens": 2**64}}, None),
    ],
)
def test_admin_numbers_past_sqlite_are_400(server, method, path, body, param):
    status, reply = api(server, method, path, body)
    assert status == 400, reply
    assert param is None or reply["error"]["param"] == param


def test_admin_numbers_at_sane_limits_still_work(server):
    status, reply = api(
        server,
        "POST",
        "/api/keys",
        {"name": "huge-but-fine", "rpm": 10**12, "tpm": 10**12, "budget_usd": "1000000000", "budget_period": "total"},
    )
    assert status == 201 and reply["rpm"] == 10**12 and reply["budget_uc"] == 10**17, reply


def test_cli_numbers_past_sqlite_are_refused_plainly(server):
    for args in (
        ("keys", "create", "--name", "big", "--rpm", "99999999999999999999"),
        ("prices", "set", "m", "--input", "1e25", "--output", "1"),
        ("traces", "--limit", "99999999999999999999"),
        ("audit", "list", "--limit", "0"),
    ):
        done = server.cli(*args)
        assert done.returncode in (1, 2) and "Traceback" not in done.stderr, (args, done.stderr)
        assert done.stderr.strip(), args

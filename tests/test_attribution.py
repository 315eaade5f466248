"""Attribution: every trace carries its end user, tags and key name; costs by user and by tag equal
the sum of the traces; end users get budgets (held exactly like key budgets under concurrency)
and rate limits of their own; bad users and tags are a 400, never silently cut."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import served, wait_for
from module_helpers import HELLO, api, module_env, put_module

from stockyard import budgets
from stockyard.modules.ratelimit import RateLimiter

BUDGET_MODEL = {"model": "openai/mock-budget", "messages": HELLO, "max_tokens": 5}  # 500 µ¢ each (see test_budgets)


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    with served(pyz_path, tmp_path_factory, "attribution", module_env(cache_home, mock)) as srv:
        status, _ = api(srv, "POST", "/api/prices", {"model": "mock-budget", "input": "0", "output": "1"})
        assert status == 200
        yield srv


@pytest.fixture(scope="module")
def key(server) -> dict:
    status, body = api(server, "POST", "/api/keys", {"name": "reseller", "project": "shop"})
    assert status == 201
    return body


def send(server, key: dict, body: dict | None = None, path: str = "/v1/chat/completions", **headers: str):
    status, reply_headers, raw = server.request(
        "POST", path, body or BUDGET_MODEL, headers={"Authorization": f"Bearer {key['key']}", **headers}
    )
    return status, reply_headers, json.loads(raw)


def test_user_and_tags_reach_the_trace_from_headers_and_bodies(server, key):
    _, h1, _ = send(server, key, {**BUDGET_MODEL, "user": "u-body", "metadata": {"team": "web"}})
    _, h2, _ = send(
        server,
        key,
        {**BUDGET_MODEL, "user": "u-body"},
        **{"x-stockyard-user": "u-head", "x-stockyard-tags": "team=api"},
    )
    anthropic = {"model": "openai/mock-budget", "max_tokens": 5, "messages": HELLO, "metadata": {"user_id": "u-claude"}}
    _, h3, _ = send(server, key, anthropic, path="/v1/messages")
    rows = [server.trace(h["x-stockyard-trace-id"]) for h in (h1, h2, h3)]
    assert [r["end_user"] for r in rows] == ["u-body", "u-head", "u-claude"], "the header wins over the body"
    assert [r["tags"] and json.loads(r["tags"]) for r in rows] == [{"team": "web"}, {"team": "api"}, None]
    assert {r["key_name"] for r in rows} == {"reseller"}


@pytest.mark.parametrize(
    "user_id, end_user",
    [
        # Claude Code 2.1's form (tests/claude_code_requests.json): signed in, then with an API key
        ('{"device_id":"d1e2","account_uuid":"acc-7","session_id":"5e55-1"}', "acc-7"),
        ('{"device_id":"d1e2","account_uuid":"","session_id":"5e55-2"}', "d1e2"),
        ("user_d1e2_account_acc-7_session_5e55-3", "user_d1e2_account_acc-7"),  # before 2.1
        ("user_d1e2_account__session_5e55-4", "user_d1e2_account_"),
        ('{"session_id": 1, "team": "x"}', '{"session_id": 1, "team": "x"}'),  # not Claude Code's: as it is
        ("u-claude_session_x", "u-claude_session_x"),
    ],
)
def test_claude_code_sessions_of_one_user_are_one_end_user(server, key, user_id, end_user):
    """Was: each Claude Code session was an end user of its own (its user_id names the session)."""
    body = {"model": "openai/mock-budget", "max_tokens": 5, "messages": HELLO, "metadata": {"user_id": user_id}}
    status, headers, _ = send(server, key, body, path="/v1/messages")
    assert status == 200
    assert server.trace(headers["x-stockyard-trace-id"])["end_user"] == end_user


def test_traces_are_listed_by_user_and_by_tag(server, key):
    _, headers, _ = send(server, key, {**BUDGET_MODEL, "user": "finder"}, **{"x-stockyard-tags": "team=find"})
    trace_id = headers["x-stockyard-trace-id"]
    server.trace(trace_id)
    assert [t["id"] for t in api(server, "GET", "/api/traces?user=finder")[1]["data"]] == [trace_id]
    assert [t["id"] for t in api(server, "GET", "/api/traces?tag=team:find")[1]["data"]] == [trace_id]
    assert api(server, "GET", "/api/traces?tag=nope")[0] == 400
    listed = server.cli("traces", "--tag", "team=find", "--json").stdout.splitlines()
    assert [json.loads(line)["id"] for line in listed] == [trace_id]
    assert "finder" in server.cli("traces", "--user", "finder").stdout


@pytest.mark.parametrize(
    "body, headers, code",
    [
        ({"user": "x" * 257}, {}, "invalid_user"),
        ({"user": 42}, {}, "invalid_user"),
        ({}, {"x-stockyard-user": "tab\there"}, "invalid_user"),
        ({}, {"x-stockyard-tags": "team"}, "invalid_tags"),
        ({}, {"x-stockyard-tags": ",".join(f"t{i}=v" for i in range(17))}, "invalid_tags"),
        ({"metadata": {"a\nb": "v"}}, {}, "invalid_tags"),
    ],
)
def test_bad_users_and_tags_are_refused(server, key, body, headers, code):
    status, _, reply = send(server, key, {**BUDGET_MODEL, **body}, **headers)
    assert status == 400 and reply["error"]["code"] == code


def test_costs_by_user_and_by_tag_equal_the_sum_of_the_traces(server, key, mock):
    for i in range(12):
        tags = f"team={'ab'[i % 2]},feature=f{i % 3}"
        send(server, key, {**BUDGET_MODEL, "user": f"user-{i % 4}"}, **{"x-stockyard-tags": tags})
    _, headers, _ = send(server, key, BUDGET_MODEL)  # no user, no tags
    server.trace(headers["x-stockyard-trace-id"])  # the writer commits in order: every earlier one is in
    by_user = {
        r["end_user"] or "": r["s"]
        for r in server.db_rows("SELECT end_user, SUM(COALESCE(cost_uc, 0)) AS s FROM traces GROUP BY end_user")
    }
    report = json.loads(server.cli("costs", "--by", "user", "--json").stdout)
    assert {r["user"] or "": r["cost_uc"] for r in report["rows"]} == by_user
    assert report["total"]["cost_uc"] == sum(by_user.values()) > 0
    by_team: dict[str, int] = {}  # summed here: the tags are JSON, which each store reads its own way
    for r in server.db_rows("SELECT tags, cost_uc FROM traces WHERE tags IS NOT NULL"):
        team = json.loads(r["tags"]).get("team")
        if team is not None:
            by_team[team] = by_team.get(team, 0) + (r["cost_uc"] or 0)
    status, from_api = api(server, "GET", "/api/costs?by=tag:team")
    assert status == 200 and {r["tag:team"]: r["cost_uc"] for r in from_api["rows"]} == by_team
    assert set(by_team) >= {"a", "b"}
    counts = {r["tag:feature"]: r["requests"] for r in api(server, "GET", "/api/costs?by=tag:feature")[1]["rows"]}
    assert counts == {"f0": 4, "f1": 4, "f2": 4}
    table = server.cli("costs", "--by", "tag:team").stdout
    assert "TAG:TEAM" in table and "TOTAL" in table
    assert api(server, "GET", "/api/costs?by=tag:")[0] == 400


def test_an_end_user_budget_for_10_admits_exactly_10_of_100_concurrent(server, mock):
    status, key = api(server, "POST", "/api/keys", {"name": "burst", "project": "shop"})
    assert status == 201
    # 5_000 µ¢ = 10 × 500 per user, for this key only.
    put_module(
        server, "userlimits", {"overrides": {f"key:{key['id']}": {"budget_usd": "0.00005", "budget_period": "total"}}}
    )
    mock.delay_ms = 200  # the requests overlap in flight
    try:
        with ThreadPoolExecutor(max_workers=100) as pool:
            results = list(pool.map(lambda _: send(server, key, **{"x-stockyard-user": "bob"}), range(100)))
    finally:
        mock.delay_ms = 0
    statuses = [r[0] for r in results]
    assert statuses.count(200) == 10 and statuses.count(429) == 90
    refusal = next(r[2] for r in results if r[0] == 429)
    assert refusal["error"]["code"] == "budget_exceeded" and "end user 'bob'" in refusal["error"]["message"]
    assert send(server, key, **{"x-stockyard-user": "carol"})[0] == 200, "each end user has a budget of their own"
    assert send(server, key)[0] == 200, "a request that names no user is not limited per user"
    # The 90 refusals: a few traced, the rest counted (a key's refusals past a few a second), none in bob's rollup.
    answered = "SELECT count(*) AS n FROM traces WHERE end_user = 'bob' AND outcome = 'ok'"
    wait_for(lambda: server.db_rows(answered)[0]["n"] >= 10)
    spent = server.db_rows(
        "SELECT SUM(cost_uc) AS s, SUM(requests) AS n FROM rollups_users WHERE end_user = 'bob' AND key_id = ?",
        (key["id"],),
    )
    assert (spent[0]["s"], spent[0]["n"]) == (5_000, 10)
    put_module(server, "userlimits", {}, enabled=False)


def test_an_end_user_rate_limit_per_project(server):
    status, key = api(server, "POST", "/api/keys", {"name": "rpm-key", "project": "rpm-project"})
    assert status == 201
    put_module(server, "userlimits", {"overrides": {"project:rpm-project": {"rpm": 2}}})
    try:
        assert [send(server, key, **{"x-stockyard-user": "dan"})[0] for _ in range(3)] == [200, 200, 429]
        status, headers, body = send(server, key, **{"x-stockyard-user": "dan"})
        assert status == 429 and "end user 'dan'" in body["error"]["message"] and int(headers["retry-after"]) >= 1
        assert send(server, key, **{"x-stockyard-user": "erin"})[0] == 200
    finally:
        put_module(server, "userlimits", {}, enabled=False)


def test_userlimits_options_are_checked(server):
    status, body = api(server, "PUT", "/api/modules/userlimits", {"enabled": True, "config": {"budget_usd": "ten"}})
    assert status == 400 and "budget_usd" in json.dumps(body)


def test_idle_end_user_windows_are_forgotten():
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    for i in range(3000):
        limiter.admit(f"*|user-{i}", 5, None, 0)
    now[0] = 61.0  # every window so far has slid empty
    for i in range(1200):
        limiter.admit(f"*|new-{i}", 5, None, 0)
    limiter.admit("*|late", 5, None, 0)
    assert len(limiter._windows) <= 1201, "client-chosen window names cannot grow memory without bound"
    entry = limiter.admit("*|late", 5, None, 10)
    limiter.correct("*|late", entry, 3)
    assert limiter._windows["*|late"].tokens == 3


def test_idle_end_users_leave_the_ledger_and_come_back_with_their_spend(monkeypatch):
    monkeypatch.setattr(budgets, "PRUNE_FROM", 4)
    monkeypatch.setattr(budgets, "IDLE_FORGET_S", 0.0)  # idle at once
    spent: dict[str, int] = {}  # what the rollups would say
    loads: list[str] = []

    def load(budget, period):
        loads.append(budget.scope)
        return spent.get(budget.scope, 0)

    ledger = budgets.Ledger(load)
    key = budgets.Budget("key:key_1", "key 'k'", 10_000, "total")
    for i in range(20):
        user = budgets.user_budget("*", f"u{i}", 300, "total")
        hold = ledger.reserve([key, user], 100, 0)
        ledger.settle(hold, 100, (key.scope, user.scope), 0)
        spent[user.scope] = spent.get(user.scope, 0) + 100
    assert len(ledger._entries) < 12, "idle end users are forgotten"
    assert ledger.usage(key, 0) == (2_000, 0), "key and project budgets are never forgotten"
    u0 = budgets.user_budget("*", "u0", 300, "total")
    assert u0.scope not in ledger._entries
    for _ in range(2):
        ledger.settle(ledger.reserve([u0], 100, 0), 100, (u0.scope,), 0)
    with pytest.raises(budgets.BudgetExceeded):  # 100 before it was forgotten + 200 since: 300 spent
        ledger.reserve([u0], 100, 0)
    assert loads.count(u0.scope) == 2


def test_exhausted_end_users_leave_the_ledger_with_their_mark(monkeypatch):
    """Was: each (end user, period) whose budget was used up stayed in ``_exhausted`` for the server's
    life, after its spend was forgotten: end users are named by clients."""
    monkeypatch.setattr(budgets, "PRUNE_FROM", 4)
    monkeypatch.setattr(budgets, "IDLE_FORGET_S", 0.0)  # idle at once
    ledger = budgets.Ledger(lambda budget, period: 300)  # each end user's spend: all of its budget
    for i in range(50):
        with pytest.raises(budgets.BudgetExceeded):
            ledger.reserve([budgets.user_budget("*", f"spent-{i}", 300, "day")], 100, 0)
    assert len(ledger._exhausted) < 12, "used-up end users are forgotten with their spend"

"""Budgets per key and per project: atomic reservations under concurrency, settlement to the real
cost, spend that survives a restart, warnings once per period, 429 budget_exceeded in the
client's dialect — and never a request that reaches the provider past its budget.

Most tests use `mock-budget`, priced here at $0 input and $1 per 1M output tokens: the mock
always answers 5 output tokens, so with max_tokens 5 a request's worst case (reserved) and
its real cost are the same 5 × 100_000_000 / 10⁶ = 500 µ¢, and a budget of N × 500 µ¢
admits exactly N requests, however they interleave.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from stockyard.budgets import Budget, BudgetExceeded, Ledger, period_days, period_key, seconds_left
from stockyard.estimate import worst_case_cost
from stockyard.pricing import Price, Usage, cost_microcents

ADMIN = "admin-key-for-budget-tests-0123456789"
COST = 500  # µ¢ per mock-budget request with max_tokens 5
BUDGET_MODEL = {"model": "mock-budget", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def env_for(cache_home, mock, **extra) -> dict:
    return mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, **extra)


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = env_for(cache_home, mock, STOCKYARD_BUDGET_WARN_PERCENT="50,80")
    with served(pyz_path, tmp_path_factory, "budgets", env) as srv:
        status, _, _ = api(srv, "POST", "/api/prices", {"model": "mock-budget", "input": "0", "output": "1"})
        assert status == 200
        yield srv


def api(server: ServerProcess, method: str, path: str, body=None):
    status, headers, data = server.request(method, path, body, headers={"Authorization": f"Bearer {ADMIN}"})
    return status, headers, json.loads(data)


_names = iter(range(1_000_000))


def make_key(server: ServerProcess, **fields) -> tuple[str, dict]:
    fields.setdefault("name", f"b{next(_names)}")
    status, _, body = api(server, "POST", "/api/keys", fields)
    assert status == 201, body
    return body.pop("key"), body


def send(server: ServerProcess, key: str, body: dict = BUDGET_MODEL, path: str = "/v1/chat/completions"):
    status, headers, data = server.request("POST", path, body, headers={"Authorization": f"Bearer {key}"})
    return status, headers, json.loads(data)


def spent(server: ServerProcess, key_id: str) -> tuple[int, int]:
    """(Σ trace cost_uc, Σ rollup cost_uc) of a key."""
    traces = server.db_rows("SELECT COALESCE(SUM(cost_uc), 0) AS s FROM traces WHERE key_id = ?", (key_id,))
    rollups = server.db_rows("SELECT COALESCE(SUM(cost_uc), 0) AS s FROM rollups_daily WHERE key_id = ?", (key_id,))
    return traces[0]["s"], rollups[0]["s"]


def wait_traces(server: ServerProcess, key_id: str, count: int, answered: bool = False) -> None:
    """Wait for ``count`` traces of a key; ``answered``: of requests the provider answered (a key's
    refusals past a few a second are counted in /metrics, not traced)."""
    only = " AND outcome = 'ok'" if answered else ""
    wait_for(
        lambda: server.db_rows(f"SELECT count(*) AS n FROM traces WHERE key_id = ?{only}", (key_id,))[0]["n"] >= count,
        what=f"{count} traces",
    )


@pytest.fixture
def slow_upstream(mock):
    """Replies take 200 ms, so concurrent requests overlap in flight."""
    mock.delay_ms = 200
    yield mock
    mock.delay_ms = 0


def test_100_concurrent_requests_against_a_budget_for_10(server, slow_upstream):
    secret, key = make_key(server, budget_usd="0.00005", budget_period="total")  # 5_000 µ¢ = 10 × 500
    before = sum(1 for r in slow_upstream.requests if r.json and r.json.get("model") == "mock-budget")
    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(lambda _: send(server, secret), range(100)))
    statuses = [r[0] for r in results]
    assert statuses.count(200) == 10 and statuses.count(429) == 90
    assert {r[2]["error"]["code"] for r in results if r[0] == 429} == {"budget_exceeded"}
    reached = sum(1 for r in slow_upstream.requests if r.json and r.json.get("model") == "mock-budget") - before
    assert reached == 10  # the 90 refused never reached the provider
    wait_traces(server, key["id"], 10, answered=True)
    assert spent(server, key["id"]) == (5_000, 5_000)
    status, headers, body = send(server, secret)  # spent in full: retrying cannot help
    assert status == 429 and headers["x-should-retry"] == "false" and "retry-after" not in headers


def test_concurrent_spend_stays_within_budget_when_the_worst_case_is_above_the_real_cost(server, slow_upstream):
    # max_tokens 20 reserves 20 × 100 = 2_000 µ¢ but costs 500: at most 2 fit in flight at once in 5_000
    secret, key = make_key(server, budget_usd="0.00005", budget_period="day")
    body = {**BUDGET_MODEL, "max_tokens": 20}
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda _: send(server, secret, body), range(50)))
    admitted = [r for r in results if r[0] == 200]
    assert 2 <= len(admitted) <= 10
    wait_traces(server, key["id"], len(admitted), answered=True)
    total, rolled = spent(server, key["id"])
    assert total == rolled == len(admitted) * COST <= 5_000
    refused_in_flight = [r for r in results if r[0] == 429 and r[1].get("retry-after") == "1"]
    assert all("in flight" in r[2]["error"]["message"] for r in refused_in_flight)


def test_project_budget_is_shared_by_its_keys(server):
    set_budget = server.cli("projects", "budget", "team", "--budget-usd", "0.00001", "--period", "month")
    assert set_budget.returncode == 0, set_budget.stderr
    first, _ = make_key(server, project="team")
    second, _ = make_key(server, project="team")
    assert send(server, first)[0] == 200
    assert send(server, second)[0] == 200
    status, _, body = send(server, first)
    assert status == 429 and "project 'team'" in body["error"]["message"]
    # the report reads committed rollups: wait for the writer to commit both answers
    wait_for(
        lambda: (
            server.db_rows("SELECT COALESCE(SUM(cost_uc), 0) AS s FROM rollups_daily WHERE project = 'team'")[0]["s"]
            == 1_000
        ),
        what="both answers committed",
    )
    project = api(server, "GET", "/api/projects/team/budget")[2]
    assert (project["budget_uc"], project["spend_uc"], project["live_keys"]) == (1_000, 1_000, 2)


def test_warnings_are_audited_and_logged_once_per_threshold(server):
    secret, key = make_key(server, budget_usd="0.00001", budget_period="month")  # 1_000 µ¢
    assert send(server, secret)[0] == 200  # 500: 50% reached
    assert send(server, secret)[0] == 200  # 1_000: 80% (and 100%) reached
    target = f"key:{key['id']}"

    def warnings() -> list[dict]:
        return server.db_rows(
            "SELECT details FROM audit_log WHERE action = 'budget.warning' AND target = ? ORDER BY seq", (target,)
        )

    # The second request settles after its answer is sent; a third sent before that is refused for
    # the amount still reserved, which is not the spent budget's first refusal (no exhausted event).
    wait_for(lambda: len(warnings()) == 2, what="two warnings")
    assert send(server, secret)[0] == 429
    rows = warnings()
    # once each; in either order on PostgreSQL, where the two settlements' warnings are written by
    # their own request threads and the second can commit first
    assert sorted(json.loads(r["details"])["threshold_percent"] for r in rows) == [50, 80]
    wait_for(lambda: server.log.count(f"budget warning: key {key['name']!r}") == 2, what="two log lines")

    def recorded() -> list[int]:  # 0: the exhausted event (told once), recorded by the writer
        rows = server.db_rows("SELECT threshold FROM budget_warnings WHERE scope = ? ORDER BY threshold", (target,))
        return [r["threshold"] for r in rows]

    wait_for(lambda: recorded() == [0, 50, 80], what="the warnings and the exhausted event recorded")


def test_clients_get_budget_exceeded_in_their_dialect(server, mock):
    secret, key = make_key(server, budget_usd="0", budget_period="day")
    client = server.openai(secret, max_retries=2)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(**BUDGET_MODEL)
    assert refused.value.code == "budget_exceeded"
    wait_traces(server, key["id"], 1)
    assert len(server.db_rows("SELECT 1 FROM traces WHERE key_id = ?", (key["id"],))) == 1  # no SDK retries
    status, _, body = send(
        server, secret, {"model": "claude-3-5-haiku", "max_tokens": 5, "messages": []}, path="/v1/messages"
    )
    assert status == 429
    details = {"error_code": "budget_exceeded"}
    error = {"type": "rate_limit_error", "message": body["error"]["message"], "details": details}
    assert body == {"type": "error", "error": error}
    assert "budget exceeded" in body["error"]["message"]


def test_streams_settle_to_their_real_cost_and_failures_release_their_reservation(server):
    assert api(server, "POST", "/api/prices", {"model": "mock-error-500", "input": "0", "output": "1"})[0] == 200
    secret, key = make_key(server, budget_usd="0.00001", budget_period="day")  # room for 2 × 500
    status, headers, _ = server.request(
        "POST", "/v1/chat/completions", {**BUDGET_MODEL, "stream": True}, headers={"Authorization": f"Bearer {secret}"}
    )
    assert status == 200 and server.trace(headers["x-stockyard-trace-id"])["cost_uc"] == COST
    # the provider fails: nothing is billed, and the reservation goes back to the budget
    assert send(server, secret, {**BUDGET_MODEL, "model": "mock-error-500"})[0] == 500
    # The reservation is released before the failure is answered: the next request at once fits.
    assert send(server, secret)[0] == 200
    assert send(server, secret)[0] == 429
    wait_traces(server, key["id"], 4)
    assert spent(server, key["id"]) == (1_000, 1_000)
    assert api(server, "GET", f"/api/keys/{key['id']}")[2]["spend_uc"] == 1_000


def test_a_budgeted_key_cannot_use_a_model_without_a_price(server):
    budgeted, _ = make_key(server, budget_usd="1", budget_period="month")
    status, _, body = send(server, budgeted, {**BUDGET_MODEL, "model": "mock-unpriced"})
    assert status == 403 and body["error"]["code"] == "model_not_priced"
    unbudgeted, _ = make_key(server)
    assert send(server, unbudgeted, {**BUDGET_MODEL, "model": "mock-unpriced"})[0] == 200


def test_a_request_without_max_tokens_reserves_the_configured_default(server):
    # no max_tokens: 4_096 output tokens are reserved (409_600 µ¢), more than a 1_000 µ¢ budget
    secret, _ = make_key(server, budget_usd="0.00001", budget_period="day")
    status, _, body = send(server, secret, {k: v for k, v in BUDGET_MODEL.items() if k != "max_tokens"})
    assert status == 429 and "$0.004096" in body["error"]["message"]
    assert send(server, secret)[0] == 200


@pytest.mark.parametrize(
    "body",
    [
        {"budget_usd": "-1", "period": "month"},
        {"budget_usd": "1", "period": "year"},
        {"budget_usd": "1"},
        {"budget_usd": "lots", "period": "day"},
        {"period": "day"},
    ],
)
def test_project_budget_bad_inputs_are_400(server, body):
    status, _, reply = api(server, "PUT", "/api/projects/p1/budget", body)
    assert status == 400, reply


def test_project_budget_api_and_cli(server):
    status, _, set_ = api(server, "PUT", "/api/projects/p2/budget", {"budget_usd": "12.5", "period": "day"})
    assert status == 200 and (set_["budget_uc"], set_["budget"]) == (1_250_000_000, "$12.50")
    shown = server.cli("projects", "budget", "p2")
    assert "$12.50/day" in shown.stdout
    assert api(server, "DELETE", "/api/projects/p2/budget")[0] == 200
    assert api(server, "DELETE", "/api/projects/p2/budget")[0] == 404
    bad = server.cli("projects", "budget", "p2", "--budget-usd", "5", "--period", "year")
    assert bad.returncode == 1 and "day, month, total" in bad.stderr
    assert server.cli("projects", "budget", "p2", "--clear").returncode == 1  # nothing to clear


def test_restart_keeps_the_spend(pyz_path, cache_home, mock, tmp_path):
    db = tmp_path / "stockyard.db"
    first = ServerProcess(pyz_path, db, env_for(cache_home, mock)).start()
    try:
        assert api(first, "POST", "/api/prices", {"model": "mock-budget", "input": "0", "output": "1"})[0] == 200
        secret, key = make_key(first, name="survivor", budget_usd="0.00001", budget_period="month")
        assert [send(first, secret)[0] for _ in range(3)] == [200, 200, 429]
    finally:
        assert first.stop() == 0
    assert spent(first, key["id"]) == (1_000, 1_000)

    second = ServerProcess(pyz_path, db, env_for(cache_home, mock)).start()
    try:
        status, _, body = send(second, secret)
        assert status == 429 and body["error"]["code"] == "budget_exceeded"
        assert "$0.00001 spent" in body["error"]["message"]
        raised = second.cli("keys", "update", "survivor", "--budget-usd", "0.00002")
        assert raised.returncode == 0, raised.stderr
        wait_for(lambda: send(second, secret)[0] == 200, timeout=3, what="the raised budget")
        assert [send(second, secret)[0] for _ in range(2)] == [200, 429]
        # the 80% warning was given before the restart, for this period: not again
        wait_traces(second, key["id"], 7)
        warnings = second.db_rows(
            "SELECT 1 FROM audit_log WHERE action = 'budget.warning' AND target = ?", (f"key:{key['id']}",)
        )
        assert len(warnings) == 1
        assert "budget warning" not in second.log
    finally:
        second.stop()


def test_spend_survives_kill_9(pyz_path, cache_home, mock, tmp_path):
    """A crash loses at most the writer's window; what was committed reloads as spend."""
    db = tmp_path / "stockyard.db"
    first = ServerProcess(pyz_path, db, env_for(cache_home, mock)).start()
    assert api(first, "POST", "/api/prices", {"model": "mock-budget", "input": "0", "output": "1"})[0] == 200
    # mock-budget costs $1 per 1M output tokens; each answer has 5: 500 µ¢; the budget is 2,000 µ¢
    secret, key = make_key(first, name="crash", budget_usd="0.00002", budget_period="total")
    assert [send(first, secret)[0] for _ in range(2)] == [200, 200]
    wait_traces(first, key["id"], 2)  # committed: the crash may only take what is not
    first.proc.kill()
    first.proc.wait(10)
    assert spent(first, key["id"]) == (1_000, 1_000)

    second = ServerProcess(pyz_path, db, env_for(cache_home, mock)).start()
    try:
        assert [send(second, secret)[0] for _ in range(3)] == [200, 200, 429], "1,000 µ¢ of 2,000 left after the crash"
    finally:
        second.stop()


# -- units ------------------------------------------------------------------------------------


def test_ledger_admits_exactly_what_fits_under_contention():
    budget = Budget("key:k", "key 'k'", 10 * 7, "total")
    ledger = Ledger(lambda b, k: 0)
    admitted, refused = [], []
    barrier = threading.Barrier(100)

    def one() -> None:
        barrier.wait()
        try:
            admitted.append(ledger.reserve([budget], 7, 0))
        except BudgetExceeded:
            refused.append(1)

    threads = [threading.Thread(target=one) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(admitted), len(refused)) == (10, 90)
    for hold in admitted:
        ledger.settle(hold, 3, ["key:k"], 0)
    assert ledger.usage(budget, 0) == (30, 0)


def test_ledger_loads_each_period_once_and_warns_once():
    loads, warnings = [], []
    ledger = Ledger(
        lambda b, k: loads.append(k) or 60, warn_percents=(80,), on_warning=lambda *args: warnings.append(args)
    )
    budget = Budget("project:p", "project 'p'", 100, "day")
    day1, day2 = 1_764_201_600_000, 1_764_201_600_000 + 86_400_000  # 2025-11-27 and -28, 00:00 UTC
    hold = ledger.reserve([budget], 30, day1)
    with pytest.raises(BudgetExceeded) as full:
        ledger.reserve([budget], 20, day1)
    assert full.value.error().headers == {"Retry-After": "1"}  # in-flight money, not spent money
    ledger.settle(hold, 25, ["project:p"], day1)
    assert ledger.usage(budget, day1) == (85, 0) and len(warnings) == 1
    ledger.settle(ledger.reserve([budget], 5, day1), 5, ["project:p"], day1)
    assert len(warnings) == 1 and loads == ["2025-11-27"]
    error = pytest.raises(BudgetExceeded, ledger.reserve, [budget], 20, day1).value.error()
    assert error.status == 429 and error.headers["x-should-retry"] == "false"
    assert ledger.reserve([budget], 20, day2) and loads == ["2025-11-27", "2025-11-28"]


def test_periods_are_utc_days_months_and_all_time():
    ts = 1_764_259_199_000  # 2025-11-27T15:59:59Z
    assert period_key("day", ts) == "2025-11-27" and period_key("month", ts) == "2025-11"
    assert period_days("month", "2025-12") == ("2025-12-01", "2026-01-01")
    assert period_days("day", "2025-11-30") == ("2025-11-30", "2025-12-01")
    assert period_key("total", ts) == "total" and seconds_left("total", ts) is None
    assert seconds_left("day", ts) == 8 * 3600 + 1


@settings(max_examples=300, deadline=None)
@given(
    rates=st.lists(st.integers(0, 10**10), min_size=5, max_size=5),
    prompt=st.integers(0, 10**6),
    completion=st.integers(0, 10**5),
    data=st.data(),
)
def test_the_reserved_worst_case_is_never_below_the_real_cost(rates, prompt, completion, data):
    price = Price(*rates)
    cached = data.draw(st.integers(0, prompt))
    written = data.draw(st.integers(0, prompt - cached))
    reasoning = data.draw(st.integers(0, completion))
    usage = Usage(prompt, completion, cached, written, reasoning)
    assert worst_case_cost(price, prompt, completion) >= cost_microcents(price, usage)


@pytest.mark.parametrize("kind", ["budget.warning", "budget.exhausted"])
def test_a_budget_event_is_kept_in_the_transaction_that_records_it_told(tmp_path, kind):
    """The webhooks' outbox row of a budget event is written by the writer job that records the
    threshold as told (``budget_warnings``), in its transaction: written by a later job, a crash
    between the two left the event recorded as told and never sent."""
    from stockyard import webhooks
    from stockyard.budgets import BudgetRecords
    from stockyard.store import Store, Writer, db

    path = tmp_path / "stockyard.db"
    conn, _ = db.open_and_migrate(path)
    conn.close()
    seen: list[tuple[bool, int]] = []

    def notify(kind: str, data: dict, summary: str, conn=None, event_id=None) -> None:
        assert conn is not None, "the event is told outside the transaction that records it"
        webhooks.keep_outbox(conn, ["wh_1"], webhooks.new_event(kind, data, summary))
        told = conn.execute("SELECT count(*) FROM budget_warnings").fetchone()[0]
        seen.append((conn.in_transaction, told))

    writer = Writer(path).start()
    store = Store(path, writer)
    try:
        records = BudgetRecords(store, lambda: webhooks_ops(store), notify)
        budget = Budget("key:k1", "key 'k1'", 1000, "day")
        if kind == "budget.warning":
            records.warn(budget, "2026-12-03", 800, 80)
        else:
            records.exhausted(BudgetExceeded(budget, "2026-12-03", 1000, 0, 500, 0))
        wait_for(lambda: seen, what="the event told")
    finally:
        writer.stop()
        store.close()
    assert seen == [(True, 1)]
    check = db.connect(path)
    try:
        assert check.execute("SELECT count(*) FROM webhook_outbox").fetchone()[0] == 1
    finally:
        check.close()


@pytest.mark.parametrize("kind", ["budget.warning", "budget.exhausted"])
def test_a_budget_event_told_twice_by_a_rerun_job_is_one_event_id(tmp_path, kind):
    """Was: a threshold job run again (its batch failed on another job and ran again job by job, or a
    PostgreSQL retry) told the webhooks a second time with a new random id, so a receiver that drops
    repeated ids (delivery is at least once) got two warnings. The id is made from the budget, its
    period and the threshold: told again, it is the same event."""
    from stockyard.budgets import BudgetRecords
    from stockyard.store import Store, Writer, db

    path = tmp_path / "stockyard.db"
    conn, _ = db.open_and_migrate(path)
    conn.close()
    told: list[str | None] = []
    writer = Writer(path).start()
    store = Store(path, writer)
    try:
        records = BudgetRecords(
            store, lambda: webhooks_ops(store), lambda k, d, s, conn=None, event_id=None: told.append(event_id)
        )
        budget = Budget("key:k1", "key 'k1'", 1000, "day")
        hold, go = threading.Event(), threading.Event()

        def blocker(conn) -> None:  # keeps the writer busy while the next batch is queued
            hold.set()
            go.wait(10)

        def bad(conn) -> None:
            raise ValueError("a bug in another job of the batch")

        store.submit(blocker)
        hold.wait(10)
        if kind == "budget.warning":
            records.warn(budget, "2026-12-03", 800, 80)
        else:
            records.exhausted(BudgetExceeded(budget, "2026-12-03", 1000, 0, 500, 0))
        store.submit(bad)
        go.set()
        wait_for(lambda: len(told) == 2, what="the job told twice: in its batch, then alone")
        records.warn(budget, "2026-12-04", 800, 80)  # another period: another event
        wait_for(lambda: len(told) == 3, what="the next period's warning")
    finally:
        writer.stop()
        store.close()
    assert told[0] is not None and told[0].startswith("evt_")
    assert told[0] == told[1] != told[2]


def webhooks_ops(store):
    from stockyard import audit
    from stockyard.operations import Operations

    return Operations(store, audit.ACTOR_SERVER, None)


def test_budget_exhausted_is_told_once_per_period_across_processes_and_restarts(tmp_path):
    """Each process's ledger notices a budget's first refusal of a period by itself (workers,
    replicas, a restart); the webhooks hear of it once, as the database records it."""
    from stockyard.budgets import BudgetRecords
    from stockyard.store import Store, Writer, db

    path = tmp_path / "stockyard.db"
    conn, _ = db.open_and_migrate(path)
    conn.close()
    budget = Budget("key:k1", "key 'k1'", 1000, "day")
    told: list[tuple[str, str]] = []
    for period in ("2026-12-03", "2026-12-03", "2026-12-04"):  # two processes, then the next day
        writer = Writer(path).start()
        store = Store(path, writer)
        records = BudgetRecords(
            store,
            lambda: None,
            lambda kind, data, summary, conn=None, event_id=None: told.append((kind, data["period_start"])),
        )
        records.exhausted(BudgetExceeded(budget, period, 1000, 0, 500, 0))
        writer.stop()
        store.close()
    assert told == [("budget.exhausted", "2026-12-03"), ("budget.exhausted", "2026-12-04")]


def test_projects_are_listed_in_byte_order_on_each_store(collated_conn):
    """Was: the project list and the configuration export ordered names with ORDER BY, so by
    the database's collation on PostgreSQL ('a-web' before 'B-web' in ICU or en_US) and by
    bytes on SQLite: the same projects listed in another order on each store."""
    from stockyard import configfile
    from stockyard.operations.keys import list_projects

    conn = collated_conn
    for name in ("c-web", "a-web", "B-web"):
        conn.execute(
            "INSERT INTO project_budgets (project, budget_uc, period, updated_at) VALUES (?, 100, 'day', 'x')", (name,)
        )
    assert [p["project"] for p in list_projects(conn)] == ["B-web", "a-web", "c-web"]
    assert list(configfile.current(conn).projects) == ["B-web", "a-web", "c-web"]

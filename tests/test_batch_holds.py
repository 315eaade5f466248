"""A running batch's worst case counts against its owner's budgets, for model calls too.

Was: a batch's hold counted against new batches only — while it ran, the key's model calls could
spend the whole budget, and the batch's cost came on top. Now the hold is spend from the batch's
start until it is billed (its cost then replaces it), deleted unbilled, or left by the batch
watch; a restart loads it again. In process (the real App, ledger and writer) on both stores.
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import OPENAI_KEY
from mock_upstream import FILES

from stockyard import config
from stockyard.app import App
from stockyard.batch_costs import BATCH_PRICE, PASS_ROWS, openai_output
from stockyard.budgets import BudgetExceeded, budgets_for
from stockyard.context import RequestContext
from stockyard.operations import keys as key_ops
from stockyard.operations import prices as price_ops

DOLLAR = 100_000_000  # µ¢
BUDGET = 10 * DOLLAR
WORST = 9 * DOLLAR  # what the batch may cost


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> str:
    return str(tmp_path / "stockyard.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture
def opened(db, mock):
    """Apps on the test's database (one at a time: one server per database), closed at the end."""
    apps: list[App] = []

    def open_app() -> App:
        env = {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": mock.url + "/v1", "STOCKYARD_BATCH_POLL": "off"}
        app = App(config.load({"db": db}, env=env), env=env)
        apps.append(app)
        return app

    yield open_app
    for app in apps:
        if not app._stopping.is_set():
            app.close()


@pytest.fixture
def app(opened):
    app = opened()
    ops = app.ops("test")
    price_ops.set_price(ops, "gpt-4o-mini", {"input": "1", "output": "1"})  # $1 per 1M tokens
    _, app.test_key = key_ops.create_key(ops, {"name": "batcher", "budget_usd": "10", "budget_period": "day"})
    app.reload()
    return app


def request_of(app: App) -> RequestContext:
    ctx = RequestContext("batches", "openai", "127.0.0.1", {"authorization": f"Bearer {app.test_key}"})
    app.gate.authenticate(ctx)
    return ctx


def spent(app: App) -> int:
    """The ledger's spend of the key's budget today, asserting nothing is left reserved."""
    ctx = request_of(app)
    (budget,) = budgets_for(ctx.key, app.project_budgets())
    app.ledger.reserve([budget], 0, ctx.ts_ms)  # loads the period if this ledger has not yet
    usage = app.ledger.usage(budget, ctx.ts_ms)
    assert usage is not None and usage[1] == 0, usage
    return usage[0]


def fits(app: App, amount: int) -> bool:
    """Whether a model call whose worst case is ``amount`` would be admitted (its hold given back)."""
    ctx = request_of(app)
    budgets = budgets_for(ctx.key, app.project_budgets())
    try:
        hold = app.ledger.reserve(budgets, amount, ctx.ts_ms)
    except BudgetExceeded:
        return False
    app.ledger.settle(hold, 0, (), ctx.ts_ms)
    return True


def start_batch(app: App, batch_id: str, worst: int = WORST) -> None:
    """What FilesAPI does around the provider's create: hold, record, end the hold."""
    ctx = request_of(app)
    hold = app.check_batch_budget(ctx, worst)
    assert hold.held_uc == worst
    hold.end(app.ownership.claim(batch_id, "batch", ctx.key_id, "openai", hold.held_uc))


def held(app: App, batch_id: str) -> int:
    return int(app.store.read().execute("SELECT held_uc FROM owned_objects WHERE id = ?", (batch_id,)).fetchone()[0])


def test_a_running_batch_holds_its_worst_case_against_model_calls(app):
    assert fits(app, 2 * DOLLAR)
    start_batch(app, "batch_running")
    assert spent(app) == WORST
    assert not fits(app, 2 * DOLLAR), "the $9 batch leaves $1 of the $10 budget"
    assert fits(app, DOLLAR // 2)
    with pytest.raises(Exception) as refused:  # a second batch does not fit either
        app.check_batch_budget(request_of(app), 2 * DOLLAR)
    assert getattr(refused.value, "status", None) == 429


def test_a_restart_counts_the_running_batch_again(app, opened):
    start_batch(app, "batch_across_restart")
    app.close()
    again = opened()
    again.test_key = app.test_key
    assert spent(again) == WORST
    assert not fits(again, 2 * DOLLAR)


def test_billing_replaces_the_hold_with_the_batch_cost(app):
    start_batch(app, "batch_billed")
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000, "total_tokens": 2_000_000}
    line = {"custom_id": "r0", "response": {"status_code": 200, "body": {"model": "gpt-4o-mini", "usage": usage}}}
    with FILES.lock:
        output = FILES.add_file("out.jsonl", "batch_output", json.dumps(line).encode() + b"\n")
    ctx = request_of(app)
    provider = app.registry().by_name["openai"]
    batch = {"id": "batch_billed", "output_file_id": output["id"]}
    app.batch_costs.record_now(ctx, provider, openai_output(provider, batch))
    cost = 2 * DOLLAR * BATCH_PRICE[0] // BATCH_PRICE[1]  # 2M tokens at $1 per 1M, at the batch price
    assert spent(app) == cost
    app.batch_costs.record_now(ctx, provider, openai_output(provider, batch))  # recorded once: no change
    assert spent(app) == cost


def test_a_batch_deleted_unbilled_gives_its_hold_back(app):
    start_batch(app, "batch_deleted")
    app.ownership.forget("batch_deleted")
    assert spent(app) == 0
    app.ownership.forget("batch_deleted")  # twice: nothing more comes back
    assert spent(app) == 0


def test_the_watch_gives_back_the_hold_of_a_batch_it_no_longer_looks_at(app):
    """A batch never seen to end (its provider removed, its results gone) must not hold a budget
    for ever: past the watch's 30 days its hold goes, once."""
    start_batch(app, "batch_aged")
    start_batch(app, "batch_young", worst=DOLLAR // 2)
    sql = "UPDATE owned_objects SET created_at = created_at - ? WHERE id = ?"
    app.store.write(lambda conn: conn.execute(sql, (31 * 86_400_000, "batch_aged")))
    app.batch_watch.look()
    assert held(app, "batch_aged") == 0 and held(app, "batch_young") == DOLLAR // 2
    assert spent(app) == DOLLAR // 2
    app.batch_watch.look()  # a second pass gives nothing back again
    assert spent(app) == DOLLAR // 2


def test_a_batch_not_created_holds_nothing(app):
    ctx = request_of(app)
    hold = app.check_batch_budget(ctx, WORST)
    assert not fits(app, 2 * DOLLAR), "held while the provider is asked"
    hold.end(False)  # the provider refused it, or its answer was lost
    assert spent(app) == 0 and fits(app, 2 * DOLLAR)


def test_the_watch_goes_on_past_batches_it_cannot_ask_about(app, mock):
    """Was: each pass took the 500 oldest unbilled batches; 500 of a deleted key (skipped: nobody
    to bill) or 500 still running kept every newer batch from ever being looked at (for 30 days)."""
    hour_ago = int(time.time() * 1000) - 3_600_000
    rows = [(f"batch_gone_{n:03}", "batch", "key-deleted", "openai", hour_ago + n, 0) for n in range(PASS_ROWS)]
    sql = "INSERT INTO owned_objects (id, kind, key_id, provider, created_at, held_uc) VALUES (?, ?, ?, ?, ?, ?)"
    app.store.write(lambda conn: conn.executemany(sql, rows))
    start_batch(app, "batch_live")
    mock.clear()
    app.batch_watch.look()
    app.batch_watch.look()
    assert any(r.path.endswith("/batches/batch_live") for r in mock.requests), "never looked at"

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

from stockyard import background, config
from stockyard.app import App
from stockyard.batch_costs import BATCH_PRICE, PASS_ROWS, openai_output
from stockyard.budgets import BudgetExceeded, budgets_for, ledger_spend_uc, period_key, project_budget
from stockyard.context import RequestContext, Route
from stockyard.conversations import StoredResponse
from stockyard.errors import ProxyError
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


def start_batch(app: App, batch_id: str, worst: int = WORST, kind: str = "batch") -> None:
    """What FilesAPI does around the provider's create: hold, record, end the hold."""
    ctx = request_of(app)
    hold = app.check_batch_budget(ctx, worst)
    assert hold.held_uc == worst
    hold.end(app.ownership.claim(batch_id, kind, ctx.key_id, "openai", hold))


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


BILLED = 2 * DOLLAR * BATCH_PRICE[0] // BATCH_PRICE[1]  # what bill() costs: 2M tokens at $1 per 1M, at the batch price


def bill(app: App, batch_id: str) -> None:
    """The batch ended with one request of 1M prompt and 1M completion tokens: its owner sees it."""
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000, "total_tokens": 2_000_000}
    line = {"custom_id": "r0", "response": {"status_code": 200, "body": {"model": "gpt-4o-mini", "usage": usage}}}
    with FILES.lock:
        output = FILES.add_file("out.jsonl", "batch_output", json.dumps(line).encode() + b"\n")
    provider = app.registry().by_name["openai"]
    batch = {"id": batch_id, "output_file_id": output["id"]}
    app.batch_costs.record_now(request_of(app), provider, openai_output(provider, batch))


def test_billing_replaces_the_hold_with_the_batch_cost(app):
    start_batch(app, "batch_billed")
    bill(app, "batch_billed")
    assert spent(app) == BILLED
    bill(app, "batch_billed")  # recorded once: no change
    assert spent(app) == BILLED


def test_a_batch_deleted_unbilled_gives_its_hold_back(app):
    start_batch(app, "batch_deleted")
    app.ownership.forget("batch_deleted")
    assert spent(app) == 0
    app.ownership.forget("batch_deleted")  # twice: nothing more comes back
    assert spent(app) == 0


@pytest.mark.parametrize("kind", ["batch", background.KIND])
def test_the_watch_gives_back_the_hold_of_a_batch_it_no_longer_looks_at(app, kind):
    """A batch (or a background response) never seen to end (its provider removed, its results gone)
    must not hold a budget for ever: past the watch's 30 days its hold goes, once."""
    start_batch(app, "batch_aged", kind=kind)
    start_batch(app, "batch_young", worst=DOLLAR // 2, kind=kind)
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


# -- a batch line's worst case is what the same call would hold ----------------------------------


def room(worst: int, counted: int) -> None:
    """A budget's room check (``App.batch_room``) with room for any batch: every line priced, none refused."""


def line_worst(app: App, body: dict, url: str = "/v1/chat/completions") -> int | None:
    """A one-line batch file's worst case (µ¢ at the batch price), as the create checks it."""
    line = json.dumps({"custom_id": "r0", "method": "POST", "url": url, "body": body}).encode() + b"\n"
    return app.files._check_batch_lines(request_of(app), app.registry().by_name["openai"], iter([line]), room)


def direct_worst(app: App, body: dict, endpoint: str = "chat") -> int:
    """What a budget holds for the same call sent to its endpoint (full price)."""
    one = RequestContext(endpoint, "openai", "127.0.0.1", {})
    one.body, one.raw = body, json.dumps(body).encode()
    found = app.path.pricer.worst_case(one, Route(app.registry().by_name["openai"], "gpt-4o-mini"), "gpt-4o-mini", 4096)
    assert found is not None
    return found


HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
WRAPPER_UC = 64 * 100  # the line around the body (custom_id, method, url): at most 64 more input tokens at $1/1M


def held_as_the_call(app: App, body: dict) -> bool:
    """The line holds what the same call would, at the batch price (plus its wrapper's tokens)."""
    line, half = line_worst(app, body), -(-direct_worst(app, body) // 2)
    assert line is not None
    return half <= line <= half + WRAPPER_UC


def test_a_batch_lines_prediction_is_held_as_output(app):
    """Was: a line's worst case counted its output cap only; a ``prediction``'s rejected tokens are
    billed as output beyond it: a $1 budget started a batch that could cost $5."""
    assert held_as_the_call(
        app, {**HELLO, "max_tokens": 16, "prediction": {"type": "content", "content": "x" * 400_000}}
    )


def test_a_batch_lines_integral_floats_count_as_their_numbers(app):
    """Was: ``n: 8.0`` and ``max_tokens: 16000.0`` (the provider reads them as 8 and 16,000) were
    not numbers to the estimate: the line was held as one choice at the default cap."""
    ints = {**HELLO, "n": 8, "max_tokens": 16000}
    assert held_as_the_call(app, ints)
    floats = line_worst(app, {**HELLO, "n": 8.0, "max_tokens": 16000.0})
    assert floats is not None and 0 <= floats - (line_worst(app, ints) or 0) <= WRAPPER_UC  # ".0" twice: input


@pytest.mark.parametrize("bad", [{"max_tokens": "5000"}, {"max_tokens": 5000.5}, {"n": 0}])
def test_a_batch_line_whose_numbers_a_budget_cannot_read_is_refused(app, bad):
    with pytest.raises(ProxyError) as refused:
        line_worst(app, {**HELLO, **bad})
    assert refused.value.status == 400 and "line 1 of the batch file" in refused.value.message


def test_a_batch_line_continuing_a_conversation_holds_its_history(app):
    """Was: a line's ``previous_response_id`` was only checked to be the key's own; the
    conversation the provider keeps (billed as input) was not in the line's worst case."""
    ctx = request_of(app)
    usage = {"input_tokens": 900_000, "output_tokens": 100_000, "total_tokens": 1_000_000}
    kept = StoredResponse("resp_kept", ctx.key_id, "openai", "gpt-4o-mini", 0, True, response={"usage": usage})
    app.store.write(kept.write)
    body = {"model": "gpt-4o-mini", "input": "and then?", "max_output_tokens": 16}
    alone = line_worst(app, body, "/v1/responses")
    continued = line_worst(app, {**body, "previous_response_id": "resp_kept"}, "/v1/responses")
    assert alone is not None and continued is not None
    assert continued - alone >= DOLLAR // 2  # a million tokens of history at $1/1M, at the batch price


def test_a_key_moved_to_another_project_while_its_batch_runs(opened):
    """Was: the hold counted against the project the key had when the batch started, but its
    bill (cost minus hold) and a restart's load counted the key's project of the moment: moved
    from alpha to beta, alpha kept the $9 hold for good and beta got $1 − $9."""
    app = opened()
    ops = app.ops("test")
    price_ops.set_price(ops, "gpt-4o-mini", {"input": "1", "output": "1"})
    for name in ("alpha", "beta"):
        key_ops.set_project_budget(ops, name, "10", "day")
    _, app.test_key = key_ops.create_key(ops, {"name": "mover", "project": "alpha"})
    app.reload()
    alpha, beta = (project_budget(name, BUDGET, "day") for name in ("alpha", "beta"))

    def spent_on(budget) -> int:
        now = request_of(app).ts_ms
        app.ledger.reserve([budget], 0, now)  # loads the period if this ledger has not yet
        usage = app.ledger.usage(budget, now)
        assert usage is not None
        return usage[0]

    def loaded(budget) -> int:  # what a restart counts
        return app.store.write(lambda conn: ledger_spend_uc(conn, budget, period_key("day", request_of(app).ts_ms)))

    assert spent_on(beta) == 0
    start_batch(app, "batch_mover")
    assert spent_on(alpha) == loaded(alpha) == WORST
    key_ops.update_key(ops, request_of(app).key_id, {"project": "beta"})
    app.reload()
    assert spent_on(alpha) == loaded(alpha) == WORST and spent_on(beta) == loaded(beta) == 0  # held where counted
    bill(app, "batch_mover")
    assert spent_on(alpha) == loaded(alpha) == 0
    assert spent_on(beta) == loaded(beta) == BILLED  # the cost counts where its key (and its trace) is now

"""Shared state under contention on PostgreSQL: the budget ledger's rows are taken in one order, a
batch PostgreSQL aborts is run again, and a deployment's count the database refused is given back once.

A writer's transaction holds the ledger rows its settlements changed (``SharedLedger.settle_in``:
a bill's or a background response's settlement commits with its record) until it commits (the
writers of all replicas take turns: ``pg.WRITE_LOCK_KEY``). A request's settlement taking the same
rows in another order deadlocked with it: PostgreSQL aborted one of them. Now a transaction's
settlements run at its end, their rows locked at once in one order, the order every other
statement takes them in; and a batch aborted all the same (a deadlock, a serialization failure:
another session taking rows in another order) runs once more, whole, never losing or doubling a row.
Real PostgreSQL, real writers, real concurrent transactions.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import wait_for

from stockyard.budgets import Budget
from stockyard.dburl import parse_postgres
from stockyard.deployments import Deployment, Health, ModelRoute, Models
from stockyard.errors import ProxyError
from stockyard.providers import Provider
from stockyard.store import Store, Writer, pgpool
from stockyard.store.backends import PostgresBackend
from stockyard.store.shared import SharedLedger, SharedRateLimiter

TS = 1_780_000_000_000
DAY = "2026-05-28"  # the period TS falls in
A, B = (Budget(f"key:{name}", f"key {name!r}", 10**9, "day") for name in ("a", "b"))


@pytest.fixture
def replicas(pg_url):
    """Two replicas' stores on one database, each with its writer and its shared ledger."""
    backend = PostgresBackend(parse_postgres(pg_url, {}))
    backend.open_and_migrate()
    made = []
    for _ in range(2):
        writer = Writer(backend).start()
        store = Store(backend, writer=writer)
        made.append((store, SharedLedger(store, lambda budget, key: 0, lease_s=3600)))
    check = backend.connect()
    yield backend, made, check
    check.close()
    for store, ledger in made:
        ledger.close()
        store.close()


def usage(conn, scope: str, key: str = DAY) -> tuple[int, int]:
    row = conn.execute(
        "SELECT spent_uc, reserved_uc FROM budget_ledger WHERE scope = ? AND period_key = ?", (scope, key)
    )
    found = row.fetchone()
    return int(found[0]), int(found[1])


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_writers_settlement_and_a_requests_on_the_same_rows_never_deadlock(replicas, caplog):
    """A key's budget has rows for the day, the month and in total (its period was changed). The
    writer's transaction settles a hold on the day's row, then the cost on the key's other periods;
    meanwhile a request settles a hold on the total's row, then the cost on the month's and the day's.
    Before, the writer locked the day's row in its job and then wanted the month's, which the
    request's statement had locked while it waited for the day's: PostgreSQL aborted the request's,
    whose settlement waited to be retried (an error in the log). Now the writer's rows are taken at
    its end in one order (month, day, total), as the request's are."""
    caplog.set_level(logging.INFO)
    _, made, check = replicas
    store, ledger = made[0]
    budgets = {period: Budget("key:a", "key 'a'", 10**9, period) for period in ("month", "day", "total")}
    for budget in budgets.values():  # the month's row first: a scan in either order finds it before the day's
        ledger.used_up([budget], TS)
    day_hold, total_hold = ledger.reserve([budgets["day"]], 100, TS), ledger.reserve([budgets["total"]], 100, TS)
    request_done = threading.Event()
    waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted"

    def request() -> None:
        ledger.settle(total_hold, 30, ["key:a"], TS)
        request_done.set()

    def job(conn):
        conn.execute("INSERT INTO meta (key, value) VALUES ('job', 'x')")
        tell = [ledger.settle_in(conn, day_hold, 0, [], TS)]  # the day's row, nothing else
        threading.Thread(target=request).start()
        wait_for(lambda: request_done.is_set() or check.execute(waiting).fetchone()[0] > 0, what="the request")
        tell.append(ledger.settle_in(conn, None, 50, ["key:a"], TS))  # the month's and the total's rows
        return tell

    for tell in store.write(job):
        tell()
    wait_for(request_done.is_set, what="the request's settlement")
    assert usage(check, "key:a", "2026-05-28") == (80, 0)  # the writer's 50 and the request's 30
    assert usage(check, "key:a", "2026-05") == (80, 0)
    assert usage(check, "key:a", "total") == (80, 0)
    assert not ledger._unsettled and not errors(caplog)


def test_a_batch_aborted_by_a_deadlock_runs_again_once_and_is_written_once(replicas, caplog):
    """Another session holds key b's row and then takes key a's, which the writer's transaction
    locked first (in order) before it waited for b's: PostgreSQL aborts the writer's. Its batch
    runs again, whole: the record and the settlement are each in the database once, and nothing is
    logged as an error."""
    caplog.set_level(logging.INFO)
    backend, made, check = replicas
    store, ledger = made[0]
    holds = ledger.reserve([A, B], 100, TS)
    other = backend.connect()
    other.execute("START TRANSACTION")  # read-write, without the writers' turn (BEGIN IMMEDIATE)
    try:
        other.execute("SET LOCAL deadlock_timeout = '10s'")  # the writer finds the deadlock first
        other.execute("SELECT 1 FROM budget_ledger WHERE scope = 'key:b' FOR UPDATE").fetchall()
        ran: list[int] = []

        def job(conn):
            ran.append(1)
            conn.execute("INSERT INTO meta (key, value) VALUES ('aborted-once', 'x')")
            return ledger.settle_in(conn, holds, 70, ["key:a", "key:b"], TS)

        answer: list = []
        writing = threading.Thread(target=lambda: answer.append(store.write(job)))
        writing.start()
        waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted"
        wait_for(lambda: other.execute(waiting).fetchone()[0] > 0, what="the writer waiting for key b's row")
        other.execute("SELECT 1 FROM budget_ledger WHERE scope = 'key:a' FOR UPDATE").fetchall()  # the deadlock
        wait_for(lambda: len(ran) == 2, what="the batch run again")
    finally:
        other.execute("ROLLBACK")
        other.close()
    writing.join(30)
    assert answer, errors(caplog)
    assert usage(check, "key:a") == (70, 0) and usage(check, "key:b") == (70, 0)
    assert check.execute("SELECT count(*) FROM meta WHERE key = 'aborted-once'").fetchone()[0] == 1
    assert any("ran again after" in r.getMessage() and "40P01" in r.getMessage() for r in caplog.records)
    assert not errors(caplog)


def test_a_deployments_confirm_the_database_refused_counts_it_busy_no_less(pg_url):
    """A deployment's shared rpm window (PostgreSQL's) refuses a request's count with a 503 (the
    window's turn not come within the busy timeout: another session holds its lock, and another
    request of this server waits for it). The refused request's claim is given back once: before,
    ``Health.confirm`` gave it back and so did the plan's release, and the deployment showed one
    request fewer in flight than it had (least-busy routing preferred it)."""
    backend = PostgresBackend(parse_postgres(pg_url, {}))
    backend.open_and_migrate()
    store = Store(backend)
    health = Health(shared=SharedRateLimiter(store))
    a = Deployment("m", "a", Provider("p", "openai", "http://x"), "up", rpm=100)
    route = ModelRoute("m", "least-busy", (a,))
    models = Models([route], health)
    other = backend.connect()
    other.execute("START TRANSACTION")
    other.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"rate:{a.window}",))
    wait_s = pgpool.WAIT_S
    pgpool.configure(pgpool.READERS_MAX, 300)  # STOCKYARD_BUSY_TIMEOUT_MS=300
    first, second = models.plan(route, 10, claim=True), models.plan(route, 10, claim=True)
    confirming = threading.Thread(target=first.confirm)
    try:
        confirming.start()  # waits for the window's lock, holding its turn in this server
        waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted"
        wait_for(lambda: other.execute(waiting).fetchone()[0] > 0, what="the first count waiting")
        assert health.snapshot(a)["reserved"] == 2
        with pytest.raises(ProxyError) as refused:
            second.confirm()
        assert refused.value.status == 503
        second.release()  # as the proxy does when the request ends
        assert health.snapshot(a)["reserved"] == 1  # the first request's claim, still on its way
    finally:
        other.execute("ROLLBACK")
        other.close()
        confirming.join(30)
        pgpool.configure(pgpool.READERS_MAX, int(wait_s * 1000))
        store.close()
    first.release()
    assert health.snapshot(a)["reserved"] == 0


def test_many_settlements_over_shared_rows_from_requests_and_writers_add_up_exactly(replicas, caplog):
    """Two replicas, eight threads: each request holds on its key's and the project's row of one
    period (day, month or total), then settles a cost on them and on their other periods, two in
    three as a request does (statements of its own) and the rest in its writer's transaction (as a
    bill does). No error is
    logged, nothing waits to be retried, and every row's spend is the sum of the costs to the µ¢."""
    caplog.set_level(logging.INFO)
    _, made, check = replicas
    keys = [f"key:k{i}" for i in range(4)]
    for scope in [*keys, "project:p"]:
        for period in ("month", "day", "total"):
            made[0][1].used_up([Budget(scope, scope, 10**12, period)], TS)
    spent: dict[str, int] = {scope: 0 for scope in [*keys, "project:p"]}
    lock = threading.Lock()

    def one(n: int) -> None:
        store, ledger = made[n % 2]
        key, cost = keys[n % len(keys)], 1_000 + n
        period = ("day", "total", "month")[n % 3 if n % 2 else (n // 2) % 3]  # holds on every period, either path
        budgets = [Budget(key, key, 10**12, period), Budget("project:p", "p", 10**12, period)]
        hold = ledger.reserve(budgets, 5_000, TS)
        if n % 3:
            ledger.settle(hold, cost, [key, "project:p"], TS)
        else:
            store.write(lambda conn: ledger.settle_in(conn, hold, cost, [key, "project:p"], TS))()
        with lock:
            spent[key] += cost
            spent["project:p"] += cost

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(120)))
    for scope, total in spent.items():
        for key in (DAY, "2026-05", "total"):
            assert usage(check, scope, key) == (total, 0), (scope, key)
    assert not made[0][1]._unsettled and not made[1][1]._unsettled
    assert not errors(caplog)

"""Budgets that stay right across restarts and crashes: the built pyz stopped and started again (or
killed with SIGKILL), the mock upstream, the official ``openai`` SDK. Runs on PostgreSQL too
(``STOCKYARD_TEST_STORE=postgresql``).

gpt-4o-mini has no priority price; an answer the OpenAI project's default tier served at priority
cannot be priced, and spends its whole hold on its budgets (``budget.spent_uc``). Was: on SQLite
that spend lived only in the ledger's memory, which a start reloads from the rollups (known costs
only): after a restart the key could spend it again."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import openai
import pytest
from conftest import TEST_STORE, ServerProcess, open_database, wait_for
from mock_upstream import Reply
from test_budget_unknown_cost import KEYS, MODEL, MOST, budgeted_server, priority_answer

ADMIN = "admin-secret-for-durable-budget-tests"
BG = {"bg": ["--budget-usd", "0.01", "--budget-period", "total"]}  # a key for background responses
TRIES = 30


def ask(server: ServerProcess, mock, key: str, user: str | None = None) -> tuple[int, str | None]:
    """One chat completion answered at priority (cost unknown): (status, error code)."""
    mock.enqueue(Reply(json=priority_answer()))
    extra = {} if user is None else {"user": user}
    try:
        server.openai(key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=16, **extra
        )
    except openai.APIStatusError as exc:
        mock.clear_replies()
        return exc.status_code, exc.body.get("code") if isinstance(exc.body, dict) else None
    return 200, None


def background(server: ServerProcess, mock, key: str, user: str | None = None) -> tuple[int, str | None]:
    """One background response served at priority, retrieved to its end (billed, cost unknown)."""
    client = server.openai(key)
    extra = {} if user is None else {"user": user}
    try:
        made = client.responses.create(
            model=MODEL,
            input="hi",
            background=True,
            max_output_tokens=16,
            metadata={"mock_project_tier": "priority"},
            **extra,
        )
    except openai.APIStatusError as exc:
        return exc.status_code, exc.body.get("code") if isinstance(exc.body, dict) else None
    client.responses.retrieve(made.id)  # in progress
    assert client.responses.retrieve(made.id).status == "completed"  # billed
    return 200, None


ASKS = {"chat": ask, "background": background}


def spend_until_refused(server: ServerProcess, mock, how: str, key: str, user: str | None) -> int:
    """Ask until the budget refuses: how many were admitted."""
    for admitted in range(TRIES):
        status, code = ASKS[how](server, mock, key, user)
        if status == 429:
            assert code == "budget_exceeded", code
            return admitted
        assert status == 200, (status, code)
    raise AssertionError(f"{TRIES} answers of unknown cost admitted: the budget spent nothing")


@pytest.mark.parametrize(
    "stop, spends",
    [
        (signal.SIGTERM, [("chat", "tiny", None), ("background", "background", None)]),
        (signal.SIGKILL, [("chat", "in-project", None), ("chat", "users", "alice")]),
    ],
    ids=["SIGTERM-key-chat-and-background", "SIGKILL-project-and-end-user"],
)
def test_unknown_cost_spend_outlives_a_restart(pyz_path, cache_home, mock, tmp_path, stop, spends):
    """A key's, a project's and an end user's budget spent by answers of unknown cost refuse the
    next request after a restart (or a crash once the traces are written) as they did before it.
    The budgets of a stop are spent side by side on one server (each its own scope): one start and
    one restart a way of stopping, not one a budget."""
    keys = {name: KEYS[name] for name in ("tiny", "in-project", "users", "background")}
    srv = budgeted_server(pyz_path, cache_home, mock, tmp_path / "s.db", keys, "total", STOCKYARD_ADMIN_KEY=ADMIN)
    srv.start()
    try:
        admitted = [spend_until_refused(srv, mock, how, key, user) for how, key, user in spends]
        assert all(1 <= count <= MOST for count in admitted), admitted
        wait_traced(srv, sum(admitted))
    finally:
        srv.stop(stop)
    again = restarted(srv)
    try:
        for how, key, user in spends:
            assert ASKS[how](again, mock, key, user) == (429, "budget_exceeded"), (how, key, user)
    finally:
        again.stop()
    assert "Traceback" not in srv.log + again.log


def restarted(server: ServerProcess) -> ServerProcess:
    """A new server process on ``server``'s database, with its keys."""
    again = ServerProcess(server.pyz, server.db, server.env)
    again.keys = server.keys
    return again.start()


def wait_traced(server: ServerProcess, unknown: int) -> None:
    """Until the writer committed ``unknown`` traces of unknown cost (a crash after that loses none)."""
    sql = "SELECT COUNT(*) AS n FROM traces WHERE cost_status = 'unknown' AND parent_id IS NULL"
    wait_for(lambda: server.db_rows(sql)[0]["n"] >= unknown, what=f"{unknown} traces of unknown cost")


IN_UC, OUT_UC = 15, 60  # gpt-4o-mini's µ¢ a token


def lock_ledger_rows(server: ServerProcess, scope: str) -> tuple[Callable[[], None], int]:
    """Another session locks a scope's ``budget_ledger`` rows (PostgreSQL) until the returned call lets
    them go: a statement that changes them waits there, at a point the test can see. And its pid."""
    conn = open_database(server.db)
    conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
    conn.execute("SELECT spent_uc FROM budget_ledger WHERE scope = ? FOR UPDATE", (scope,)).fetchall()
    pid = int(conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"])

    def release() -> None:
        conn.execute("ROLLBACK")
        conn.close()

    return release, pid


def end_sessions_but(server: ServerProcess, pid: int) -> None:
    """End the killed server's sessions: PostgreSQL does not see a client gone while its statement
    waits for a lock, and would run it when the lock goes, as if the crash came after it was sent."""
    sql = (
        "SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> ?"
    )
    server.db_rows(sql, (pid,))


def waiting_on_a_lock(server: ServerProcess, query: str) -> bool:
    """Whether a session of the server waits for a lock (the ledger's, held by the test) in a statement
    whose text is like ``query``."""
    sql = (
        "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND datname = current_database() AND query LIKE ?"
    )
    return server.db_rows(sql, (query,))[0]["n"] > 0


def lock_settlements(server: ServerProcess) -> tuple[Callable[[], None], int]:
    """Another session locks ``budget_settled`` (PostgreSQL): a reservation goes on, a settlement
    step (which records its id there) waits, at a point the test can see. And its pid."""
    conn = open_database(server.db)
    conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
    conn.execute("LOCK TABLE budget_settled IN EXCLUSIVE MODE")
    pid = int(conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"])

    def release() -> None:
        conn.execute("ROLLBACK")
        conn.close()

    return release, pid


@pytest.mark.skipif(TEST_STORE != "postgresql", reason="on SQLite a start loads every spend from the database")
def test_a_crash_between_a_background_bill_and_its_settlement_counts_its_cost(pyz_path, cache_home, mock, tmp_path):
    """A background response holds its worst case as spend until it is billed, when its cost replaces
    the hold. The server is killed (SIGKILL) while the change to the shared ledger waits on its rows.
    Was: the usage trace and the billed mark were committed first, the ledger changed after; the crash
    left the hold counted as spent for ever (a ``total`` budget's row is never loaded again), and the
    response, marked billed, was never settled. Now the change is in the bill's own transaction: the
    crash takes both, and the next server bills it once, its cost replacing its hold."""
    srv = budgeted_server(pyz_path, cache_home, mock, tmp_path / "s.db", BG, STOCKYARD_ADMIN_KEY=ADMIN)
    (key_id,) = [r["id"] for r in srv.db_rows("SELECT id FROM client_keys WHERE name = 'bg'")]
    scope = f"key:{key_id}"
    srv.start()
    try:
        client = srv.openai("bg")
        made = client.responses.create(model=MODEL, input="a long job", background=True, max_output_tokens=1000)
        assert client.responses.retrieve(made.id).status == "in_progress"
        spent_before = ledger_spent(srv, scope)
        assert spent_before >= 1000 * OUT_UC  # the hold, counted as spent
        release, locker = lock_ledger_rows(srv, scope)
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                ended = pool.submit(client.responses.retrieve, made.id)  # completed: billed, then settled
                settling = lambda: waiting_on_a_lock(srv, "/* settle */%")  # noqa: E731
                wait_for(settling, what="the settlement waiting on the ledger's rows")
                srv.stop(signal.SIGKILL)
                end_sessions_but(srv, locker)
                with pytest.raises(openai.APIConnectionError):
                    ended.result()
        finally:
            release()
    finally:
        srv.stop()
    again = restarted(srv)
    try:
        done = again.openai("bg").responses.retrieve(made.id)
        assert done.status == "completed"
        cost = done.usage.input_tokens * IN_UC + done.usage.output_tokens * OUT_UC
        assert ledger_spent(again, scope) == cost  # the hold replaced by the cost, once
        sql = "SELECT cost_uc FROM traces WHERE key_id = ? AND endpoint = 'responses.usage'"
        assert again.db_rows(sql, (key_id,)) == [{"cost_uc": cost}]
    finally:
        again.stop()
    assert "Traceback" not in again.log


def ledger_spent(server: ServerProcess, scope: str) -> int:
    """The shared ledger's spend of a scope's ``total`` period (PostgreSQL)."""
    sql = "SELECT spent_uc FROM budget_ledger WHERE scope = ? AND period_key = 'total'"
    (row,) = server.db_rows(sql, (scope,))
    return int(row["spent_uc"])


@pytest.mark.parametrize("fails", ["the look", "the cancel"])
def test_a_running_background_response_whose_cancel_fails_is_not_deleted(pyz_path, cache_home, mock, tmp_path, fails):
    """A delete of an unbilled background response first retrieves it, and cancels it if it runs (a
    delete takes its usage away while the provider bills it). When the provider does not answer the
    look, or its cancel fails, its end is not known. Was: the delete went on, and its hold stayed
    counted until the watch's 30-day horizon (and its usage was never billed). Now the delete is not
    sent (503 ``response_not_ended``, Retry-After): the response stays, and its hold ends when its real
    end is seen — here the next retrieve; the delete tried again then goes through."""
    srv = budgeted_server(pyz_path, cache_home, mock, tmp_path / "s.db", BG, STOCKYARD_ADMIN_KEY=ADMIN)
    srv.start()
    try:
        client = srv.openai("bg")
        made = client.responses.create(model=MODEL, input="a job to drop", background=True, max_output_tokens=1000)
        mock.enqueue(*([Reply(status=500)] if fails == "the look" else [Reply(), Reply(status=500)]))
        with pytest.raises(openai.APIStatusError) as refused:
            client.responses.delete(made.id)
        mock.clear_replies()
        assert refused.value.status_code == 503, refused.value
        assert refused.value.body["code"] == "response_not_ended", refused.value.body
        assert refused.value.response.headers.get("retry-after")
        deletes = [r for r in mock.requests if r.method == "DELETE" and r.path == f"/v1/responses/{made.id}"]
        assert deletes == []  # the provider still has it, and its usage
        sql = "SELECT billed, held_uc FROM owned_objects WHERE id = ?"
        (row,) = srv.db_rows(sql, (made.id,))
        assert row["billed"] == 0 and row["held_uc"] > 0
        seen = client.responses.retrieve(made.id)  # in progress (the mock runs it on at each look)
        if seen.status != "completed":
            seen = client.responses.retrieve(made.id)
        assert seen.status == "completed"
        (row,) = srv.db_rows(sql, (made.id,))
        assert row["billed"] == 1  # its real end seen: billed, its cost replacing its hold
        usage = srv.db_rows("SELECT cost_uc FROM traces WHERE endpoint = 'responses.usage'")
        assert usage == [{"cost_uc": seen.usage.input_tokens * IN_UC + seen.usage.output_tokens * OUT_UC}]
        client.responses.delete(made.id)
        deletes = [r for r in mock.requests if r.method == "DELETE" and r.path == f"/v1/responses/{made.id}"]
        assert len(deletes) == 1
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def test_an_end_users_budget_holds_background_responses_across_a_crash(pyz_path, cache_home, mock, tmp_path):
    """An end user's budget holds a background response's worst case from its start until it is billed,
    as a key's does (was: a 403 ``background_not_budgeted``). Five fit, the sixth is refused; the holds
    are in the database with the responses, so a crash (SIGKILL) does not give them back; billing one
    replaces its hold with its cost, under the end user's name, and a new one fits again."""
    srv = budgeted_server(pyz_path, cache_home, mock, tmp_path / "s.db", {"app": []}, STOCKYARD_ADMIN_KEY=ADMIN)
    for args in (
        ("modules", "set", "userlimits", "budget_usd=0.00303", "budget_period=total"),
        ("modules", "enable", "userlimits"),
    ):
        done = srv.cli(*args)
        assert done.returncode == 0, done.stderr
    body = {"model": MODEL, "input": "a long job", "background": True, "max_output_tokens": 1000, "user": "carol"}

    def start(server: ServerProcess) -> tuple[int, dict]:
        status, _, data = server.request("POST", "/v1/responses", body, headers=server.auth("app"))
        return status, json.loads(data)

    srv.start()
    try:
        made = [start(srv) for _ in range(5)]
        assert [status for status, _ in made] == [200] * 5, made
        status, refused = start(srv)
        assert (status, refused["error"]["code"]) == (429, "budget_exceeded"), refused
        assert "end user 'carol'" in refused["error"]["message"]
    finally:
        srv.stop(signal.SIGKILL)
    again = restarted(srv)
    try:
        assert start(again)[0] == 429  # the five holds, loaded again
        client, first = again.openai("app"), made[0][1]["id"]
        client.responses.retrieve(first)  # in progress
        done = client.responses.retrieve(first)
        assert done.status == "completed"  # billed: its cost replaces its hold
        assert start(again)[0] == 200
        sql = "SELECT end_user, cost_uc FROM traces WHERE endpoint = 'responses.usage'"
        cost = done.usage.input_tokens * IN_UC + done.usage.output_tokens * OUT_UC
        assert again.db_rows(sql) == [{"end_user": "carol", "cost_uc": cost}]
    finally:
        again.stop()
    assert "Traceback" not in again.log


@pytest.mark.skipif(TEST_STORE != "postgresql", reason="on SQLite a start loads every spend from the database")
def test_a_crash_as_a_background_response_starts_leaves_its_hold_whole(pyz_path, cache_home, mock, tmp_path):
    """A background response's worst case is recorded with it (``owned_objects.held_uc``), and the
    request's reservation becomes spend. The server is killed (SIGKILL) while that settlement waits
    (``budget_settled`` locked) as the second response starts. Was: the response's row was committed first and the
    reservation turned into spend after, in a statement of its own; the crash left the hold recorded
    but never spent (its lease given back), so the budget counted less than it held, and billing the
    response later took a hold that had never been counted off the spend. Now the reservation turns
    into spend in the transaction that records the response: the ledger's spend is always what the
    database says was billed and is held."""
    srv = budgeted_server(pyz_path, cache_home, mock, tmp_path / "s.db", BG, STOCKYARD_ADMIN_KEY=ADMIN)
    (key_id,) = [r["id"] for r in srv.db_rows("SELECT id FROM client_keys WHERE name = 'bg'")]
    scope = f"key:{key_id}"
    body = {"model": MODEL, "input": "a long job", "background": True, "max_output_tokens": 1000}
    srv.start()
    try:
        assert srv.request("POST", "/v1/responses", body, headers=srv.auth("bg"))[0] == 200
        release, locker = lock_settlements(srv)
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                started = pool.submit(srv.openai("bg").responses.create, **body)
                settling = lambda: waiting_on_a_lock(srv, "/* settle */%")  # noqa: E731
                wait_for(settling, what="the reservation's settlement waiting")
                srv.stop(signal.SIGKILL)
                end_sessions_but(srv, locker)
                try:
                    started.result()  # answered before the reservation's settlement, or killed waiting
                except openai.APIConnectionError:
                    pass
        finally:
            release()
    finally:
        srv.stop()
    held = "SELECT COALESCE(SUM(held_uc), 0) AS n FROM owned_objects WHERE key_id = ? AND billed = 0"
    billed = "SELECT COALESCE(SUM(cost_uc), 0) AS n FROM rollups_daily WHERE key_id = ?"
    recorded = srv.db_rows(held, (key_id,))[0]["n"] + srv.db_rows(billed, (key_id,))[0]["n"]
    assert ledger_spent(srv, scope) == recorded

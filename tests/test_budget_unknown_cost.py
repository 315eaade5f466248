"""A budgeted answer whose cost is unknown spends its hold, through the built pyz, the mock upstream
and the official ``openai`` SDK. gpt-4o-mini has no priority price; asked with no tier (the OpenAI
project's default picks it) it is held at its standard rates, and an answer served at priority
cannot be priced. Was: such an answer settled its hold with 0, so a budgeted key, project or end
user spent nothing however much it asked. Now it spends its hold (the worst case held at
admission), the trace keeps cost ``unknown``, and the log says how to price the mode."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from conftest import ServerProcess, mock_env
from mock_upstream import Reply

MODEL = "gpt-4o-mini"  # no priority price in the shipped table
BUDGET_UC = 10_000  # $0.0001
MOST = BUDGET_UC // (16 * 60)  # a hold is at least max_tokens 16 at $0.60 per 1M (60 µ¢ a token)
TRIES = 30


def priority_answer() -> dict:
    """A chat completion the project's default tier served at priority."""
    return {
        "id": "chatcmpl-unknown",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "service_tier": "priority",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    }


BUDGET = ["--budget-usd", "0.0001", "--budget-period", "total"]
KEYS = {"tiny": BUDGET, "open": [], "in-project": ["--project", "thrifty"], "users": [], "background": BUDGET}


def budgeted_server(
    pyz_path: Path, cache_home, mock, db: Path, keys: dict[str, list[str]], users_period: str | None = None, **env: str
) -> ServerProcess:
    """A server (not started) with ``keys`` made, its background responses billed by their retrieves
    (not the poll); with ``users_period``, project ``thrifty``'s budget (key ``in-project``'s) and each
    end user's a ``users_period`` (``userlimits``), $0.0001 each. Shared with test_budget_durable.py,
    whose servers are restarted on the same setup."""
    server = ServerProcess(pyz_path, db, mock_env(cache_home, mock, STOCKYARD_BATCH_POLL="off", **env))
    server.keys = server.create_keys(keys)
    for args in (
        ("projects", "budget", "thrifty", "--budget-usd", "0.0001", "--period", "total"),
        ("modules", "set", "userlimits", "budget_usd=0.0001", f"budget_period={users_period}"),
        ("modules", "enable", "userlimits"),
    ):
        if users_period is not None:
            done = server.cli(*args)
            assert done.returncode == 0, done.stderr
    return server


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    db = tmp_path_factory.mktemp("unknown") / "s.db"
    srv = budgeted_server(pyz_path, cache_home, mock, db, {**KEYS, "streamed": BUDGET}, "day").start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log


def ask(server: ServerProcess, mock, key: str, user: str | None = None) -> tuple[int, str | None, str | None]:
    """One chat completion answered at priority: (status, trace id, error code)."""
    mock.enqueue(Reply(json=priority_answer()))
    client = server.openai(key)
    extra = {} if user is None else {"user": user}
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=16, **extra
        )
    except openai.APIStatusError as exc:
        mock.clear_replies()
        return exc.status_code, None, exc.body.get("code") if isinstance(exc.body, dict) else None
    return raw.http_response.status_code, raw.headers["x-stockyard-trace-id"], None


def spend_until_refused(server: ServerProcess, mock, key: str, user: str | None = None) -> list[str]:
    """Ask until the budget refuses (at most TRIES times): the admitted requests' trace ids."""
    admitted: list[str] = []
    for _ in range(TRIES):
        status, trace_id, code = ask(server, mock, key, user)
        if status == 429:
            assert code == "budget_exceeded", code
            return admitted
        assert status == 200 and trace_id, (status, code)
        admitted.append(trace_id)
    raise AssertionError(f"{TRIES} answers of unknown cost admitted: the budget spent nothing")


def assert_unknown(server: ServerProcess, trace_ids: list[str]) -> None:
    """Every trace keeps its cost unknown: no price is invented for it."""
    for trace_id in trace_ids:
        trace = server.trace(trace_id)
        assert (trace["cost_uc"], trace["cost_status"], trace["served_mode"]) == (None, "unknown", "priority")


@pytest.mark.parametrize("key, user", [("tiny", None), ("in-project", None), ("users", "alice")])
def test_answers_of_unknown_cost_spend_their_holds(server, mock, key, user):
    """A key's, a project's and an end user's budget each refuse after their holds' worth."""
    admitted = spend_until_refused(server, mock, key, user)
    assert 1 <= len(admitted) <= MOST, len(admitted)
    assert_unknown(server, admitted)


def test_an_unbudgeted_answer_of_unknown_cost_spends_nothing(server, mock):
    """No budget: the answer is served, its trace is unknown, and no spend is counted for the key."""
    status, trace_id, code = ask(server, mock, "open")
    assert status == 200 and trace_id, code
    assert_unknown(server, [trace_id])
    sql = "SELECT COALESCE(SUM(r.cost_uc), 0) AS spent FROM rollups_daily r JOIN client_keys k ON k.id = r.key_id"
    assert server.db_rows(sql + " WHERE k.name = ?", ("open",))[0]["spent"] == 0


def test_the_log_says_how_to_price_the_mode_once_a_minute(server, mock):
    """Many budgeted answers without a price, one line naming the model/mode and the command."""
    admitted = spend_until_refused(server, mock, "users", "bob")
    said = server.log.count(f"stockyard prices set {MODEL}/priority")
    assert 1 <= said < len(admitted), server.log


def test_background_responses_of_unknown_cost_spend_their_holds(server, mock):
    """A background response holds its worst case until it is billed as it ends; served at priority
    (the project's default) its cost is unknown, and its hold stays spent instead of going back."""
    client = server.openai("background")
    admitted: list[str] = []
    for _ in range(TRIES):
        try:
            made = client.responses.create(
                model=MODEL,
                input="hi",
                background=True,
                max_output_tokens=16,
                metadata={"mock_project_tier": "priority"},
            )
        except openai.RateLimitError as exc:
            assert exc.body["code"] == "budget_exceeded", exc.body
            break
        client.responses.retrieve(made.id)  # in progress
        done = client.responses.retrieve(made.id)  # completed: billed
        assert (done.status, done.service_tier) == ("completed", "priority")
        admitted.append(made.id)
    else:
        raise AssertionError(f"{TRIES} background responses of unknown cost admitted: the budget spent nothing")
    assert 1 <= len(admitted) <= MOST, len(admitted)
    sql = (
        "SELECT t.cost_uc, t.cost_status FROM traces t JOIN client_keys k ON k.id = t.key_id"
        " WHERE k.name = 'background' AND t.endpoint = 'responses.usage'"
    )
    rows = server.db_rows(sql)
    assert len(rows) == len(admitted) and {(r["cost_uc"], r["cost_status"]) for r in rows} == {(None, "unknown")}


def priority_stream() -> list[str]:
    """A streamed chat completion whose chunks say priority served it, with its usage chunk."""
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "service_tier": "priority"}
    usage = {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
    return [
        json.dumps({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}}]}),
        json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        json.dumps({**base, "choices": [], "usage": usage}),
        "[DONE]",
    ]


def test_streamed_answers_of_unknown_cost_spend_their_holds(server, mock):
    """A stream says its tier in its chunks: priced as unknown, it spends its hold as well."""
    client = server.openai("streamed")
    admitted: list[str] = []
    for _ in range(TRIES):
        mock.enqueue(Reply(sse=priority_stream()))
        try:
            with client.chat.completions.with_streaming_response.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=16, stream=True
            ) as response:
                text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
                admitted.append(response.headers["x-stockyard-trace-id"])
        except openai.RateLimitError as exc:
            mock.clear_replies()
            assert exc.body["code"] == "budget_exceeded", exc.body
            break
        assert text == "ok"
    else:
        raise AssertionError(f"{TRIES} streamed answers of unknown cost admitted: the budget spent nothing")
    assert 1 <= len(admitted) <= MOST, len(admitted)
    assert_unknown(server, admitted)

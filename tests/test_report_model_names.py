"""The cost report by model stays bounded: a provider's error for a model name it never confirmed
rolls up under a name the price table knows, or under one bucket, never under each name a client made up."""

from __future__ import annotations

import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import Reply
from test_costs import ADMIN, HELLO, api


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN)
    with served(pyz_path, tmp_path_factory, "names", env) as srv:
        yield srv


def ask(server: ServerProcess, model: str) -> tuple[int, dict]:
    """A chat request for ``model``; its status and committed trace."""
    status, headers, _ = server.request("POST", "/v1/chat/completions", {"model": model, "messages": HELLO})
    return status, server.trace(headers["x-stockyard-trace-id"])


def by_model(server: ServerProcess) -> dict[str, dict]:
    status, report = api(server, "GET", "/api/costs?by=model")
    assert status == 200
    return {row["model"]: row for row in report["rows"]}


def test_errors_for_made_up_names_make_one_report_row(server, mock):
    made_up = [f"openai/made-up-{i}" for i in range(6)]
    mock.enqueue(*[Reply(status=404) for _ in made_up])
    for model in made_up:
        status, trace = ask(server, model)
        assert status == 404
        assert trace["served_model"] == model.removeprefix("openai/")  # the trace keeps the name asked for
    rows = by_model(server)
    assert not any(name.startswith("made-up-") for name in rows), sorted(rows)
    bucket = rows["(unconfirmed)"]
    assert (bucket["requests"], bucket["errors"], bucket["cost_uc"]) == (6, 6, 0)


def test_an_error_for_a_priced_name_rolls_up_under_the_price_tables_name(server, mock):
    # a dated snapshot of a priced model, in any case: the table's own name, one row however it is spelled
    mock.enqueue(Reply(status=429), Reply(status=429))
    assert ask(server, "openai/gpt-4o-mini-2031-01-01")[0] == 429
    assert ask(server, "openai/GPT-4o-MINI")[0] == 429
    rows = by_model(server)
    assert "gpt-4o-mini-2031-01-01" not in rows and "GPT-4o-MINI" not in rows
    assert rows["gpt-4o-mini"]["errors"] == 2


def test_an_answer_rolls_up_under_the_model_the_provider_named(server):
    status, trace = ask(server, "openai/mock-unpriced-name-37")
    assert status == 200 and trace["cost_status"] == "unknown"
    assert by_model(server)["mock-unpriced-name-37"]["unknown_cost"] == 1

"""Exact costs of every kind of request, price overrides, and the cost report from the rollups.

The mock reports 12 prompt and 5 completion tokens; `cached` in a model name makes 8 of the
12 prompt tokens cache reads, `reasoning` makes 3 of the 5 completion tokens reasoning.
Rates are µ¢ per 1M tokens (USD per 1M × 10⁸); cost = Σ tokens × rate / 10⁶, rounded once.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from conftest import ServerProcess, mock_env, served, wait_for

ADMIN = "admin-key-for-cost-tests-0123456789"
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN)
    with served(pyz_path, tmp_path_factory, "costs", env) as srv:
        yield srv


def api(server: ServerProcess, method: str, path: str, body=None):
    status, _, data = server.request(method, path, body, headers={"Authorization": f"Bearer {ADMIN}"})
    return status, json.loads(data)


def traced(server: ServerProcess, body: dict) -> dict:
    """Send a chat request (reading a stream to its end) and return its committed trace."""
    status, headers, _ = server.request("POST", "/v1/chat/completions", body)
    assert status == 200
    return server.trace(headers["x-stockyard-trace-id"])


def test_plain_request_costs_the_hand_computed_integer(server):
    # gpt-4o-mini: input $0.15 → 15_000_000, output $0.60 → 60_000_000 µ¢ per 1M
    # 12 × 15_000_000 + 5 × 60_000_000 = 180_000_000 + 300_000_000 = 480_000_000 → 480 µ¢
    trace = traced(server, {"model": "gpt-4o-mini", "messages": HELLO})
    assert (trace["cost_uc"], trace["cost_status"], trace["usage_estimated"]) == (480, "exact", 0)


def test_streamed_request_is_costed_from_the_usage_stockyard_asked_for(server):
    # the client did not ask for usage; Stockyard asks upstream, costs it, and strips it again
    status, headers, raw = server.request(
        "POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    )
    assert status == 200 and b'"prompt_tokens"' not in raw  # the usage chunk is stripped
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["stream"], trace["prompt_tokens"], trace["completion_tokens"]) == (1, 12, 5)
    assert (trace["cost_uc"], trace["cost_status"]) == (480, "exact")  # same arithmetic as the plain request


def test_cached_tokens_are_priced_at_the_cached_rate(server):
    # gpt-4o-mini cached input $0.075 → 7_500_000. 4 uncached × 15_000_000 = 60_000_000;
    # 8 cached × 7_500_000 = 60_000_000; 5 out × 60_000_000 = 300_000_000; Σ 420_000_000 → 420 µ¢
    # (the mock's model name is not gpt-4o-mini, and prices are never guessed from a prefix: price it the same)
    assert (
        api(
            server,
            "POST",
            "/api/prices",
            {"model": "gpt-4o-mini-cached", "input": "0.15", "cached_input": "0.075", "output": "0.60"},
        )[0]
        == 200
    )
    trace = traced(server, {"model": "gpt-4o-mini-cached", "messages": HELLO})
    assert (trace["cached_tokens"], trace["cost_uc"], trace["cost_status"]) == (8, 420, "exact")


def test_reasoning_tokens_are_priced_at_their_own_rate(server):
    # an override with a reasoning rate, set through the CLI: input $1, output $2, reasoning $3
    done = server.cli("prices", "set", "mock-reasoning", "--input", "1", "--output", "2", "--reasoning", "3")
    assert done.returncode == 0, done.stderr
    # 12 × 100_000_000 = 1_200_000_000; 2 plain out × 200_000_000 = 400_000_000;
    # 3 reasoning × 300_000_000 = 900_000_000; Σ 2_500_000_000 → 2_500 µ¢
    trace = wait_for(
        lambda: (t := traced(server, {"model": "mock-reasoning", "messages": HELLO}))["cost_uc"] and t,
        timeout=3,
        what="the override to apply",
    )
    assert (trace["reasoning_tokens"], trace["cost_uc"], trace["cost_status"]) == (3, 2_500, "exact")


def test_streamed_reasoning_with_usage_requested_by_the_client(server):
    api(
        server, "POST", "/api/prices", {"model": "mock-reasoning-stream", "input": "1", "output": "2", "reasoning": "3"}
    )
    body = {
        "model": "mock-reasoning-stream",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, headers, raw = server.request("POST", "/v1/chat/completions", body)
    assert status == 200 and b'"prompt_tokens"' in raw
    assert server.trace(headers["x-stockyard-trace-id"])["cost_uc"] == 2_500  # as above


def test_no_usage_is_an_estimate_and_an_unknown_model_is_unknown(server):
    api(server, "POST", "/api/prices", {"model": "mock-no-usage", "input": "1", "output": "1"})
    estimate = traced(server, {"model": "mock-no-usage", "messages": HELLO})
    assert estimate["cost_status"] == "estimate" and estimate["usage_estimated"] == 1
    assert estimate["cost_uc"] > 0
    unknown = traced(server, {"model": "mock-unpriced-model", "messages": HELLO})
    assert (unknown["cost_status"], unknown["cost_uc"]) == ("unknown", None)


def test_price_override_replaces_the_shipped_price_and_unset_restores_it(server):
    status, result = api(server, "POST", "/api/prices", {"model": "gpt-4.1-nano", "input": "1", "output": "1"})
    assert status == 200 and result["usd_per_1m"]["input"] == "$1.00"
    # (12 + 5) × 100_000_000 = 1_700_000_000 → 1_700 µ¢
    assert traced(server, {"model": "gpt-4.1-nano", "messages": HELLO})["cost_uc"] == 1_700
    listed = {p["model"]: p for p in api(server, "GET", "/api/prices?model=gpt-4.1-nano")[1]["prices"]}
    assert listed["gpt-4.1-nano"]["source"] == "override"
    assert api(server, "DELETE", "/api/prices/gpt-4.1-nano")[0] == 200
    # shipped: $0.10 in, $0.40 out: 12 × 10_000_000 + 5 × 40_000_000 = 320_000_000 → 320 µ¢
    assert traced(server, {"model": "gpt-4.1-nano", "messages": HELLO})["cost_uc"] == 320
    assert api(server, "DELETE", "/api/prices/gpt-4.1-nano")[0] == 404
    audit = [
        r["action"]
        for r in server.db_rows("SELECT action FROM audit_log WHERE target = 'price:gpt-4.1-nano' ORDER BY seq")
    ]
    assert audit == ["prices.set", "prices.unset"]


@pytest.mark.parametrize(
    "body",
    [
        {"model": "x", "input": "-1", "output": "1"},
        {"model": "x", "input": "1"},
        {"model": "x", "input": "0.000000001", "output": "1"},
        {"model": "x", "input": "1", "output": "1", "colour": "2"},
        {"model": "has space", "input": "1", "output": "1"},
        {"input": "1", "output": "1"},
    ],
)
def test_bad_prices_are_400(server, body):
    assert api(server, "POST", "/api/prices", body)[0] == 400


def test_cli_price_errors_exit_1(server):
    bad = server.cli("prices", "set", "x", "--input", "abc", "--output", "1")
    assert bad.returncode == 1 and "not a decimal" in bad.stderr
    assert server.cli("prices", "unset", "never-set").returncode == 1
    listed = server.cli("prices", "list", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {"gpt-4o-mini", "mock-reasoning"} <= {r["model"] for r in rows}
    mini = next(r for r in rows if r["model"] == "gpt-4o-mini")  # the counts a budget holds, listed
    assert (mini["max_output_tokens"], mini["image_input_tokens"]) == (16_384, 48_169)


# -- the report ---------------------------------------------------------------------------------


def settle(server: ServerProcess) -> int:
    """Wait until every trace is committed, then the exact sum of their costs."""
    status, headers, _ = server.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})
    server.trace(headers["x-stockyard-trace-id"])
    return server.db_rows("SELECT COALESCE(SUM(cost_uc), 0) AS s FROM traces")[0]["s"]


@pytest.mark.parametrize("by", ["day", "model", "provider", "key", "project"])
def test_report_totals_equal_the_sum_of_trace_costs(server, by):
    sent = [
        server.request("POST", "/v1/chat/completions", {"model": model, "messages": HELLO, "stream": True})
        for model in ("gpt-4o-mini", "gpt-4o", "o3-mini-reasoning", "gpt-4o-mini-cached", "mock-unpriced-model")
    ]
    sent.append(server.request("POST", "/v1/chat/completions", {"model": "mock-error-429", "messages": HELLO}))
    for _, headers, _ in sent:  # each is traced after its answer went out: in any order
        server.trace(headers["x-stockyard-trace-id"])
    expected = settle(server)
    assert expected > 0

    cli = server.cli("costs", "--by", by, "--json")
    assert cli.returncode == 0, cli.stderr
    report = json.loads(cli.stdout)
    assert report["total"]["cost_uc"] == expected
    assert sum(r["cost_uc"] for r in report["rows"]) == expected
    status, from_api = api(server, "GET", f"/api/costs?by={by}")
    assert status == 200 and from_api["total"]["cost_uc"] == expected
    assert from_api["rows"] == report["rows"]
    traces = server.db_rows(
        "SELECT count(*) AS n, SUM(CASE WHEN cost_status = 'unknown' THEN 1 ELSE 0 END) AS u FROM traces"
    )[0]
    assert report["total"]["requests"] == traces["n"]
    assert report["total"]["unknown_cost"] == traces["u"]

    cli_csv = server.cli("costs", "--by", by, "--csv").stdout
    rows = list(csv.DictReader(io.StringIO(cli_csv)))
    assert rows[-1][by] == "TOTAL" and int(rows[-1]["cost_uc"]) == expected
    assert sum(int(r["cost_uc"]) for r in rows[:-1]) == expected
    status, headers, api_csv = server.request(
        "GET", f"/api/costs?by={by}&format=csv", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert status == 200 and headers["content-type"].startswith("text/csv")
    # the same rows (CRLF line ends, as RFC 4180 has them; the captured command output reads them as \n)
    assert api_csv.decode().replace("\r\n", "\n") == cli_csv, "the API's CSV is the command's CSV"


def test_report_by_model_and_date_range(server):
    expected = settle(server)
    report = api(server, "GET", "/api/costs?by=model")[1]
    by_model = {r["model"]: r for r in report["rows"]}
    assert by_model["gpt-4o-mini"]["cost_uc"] % 480 == 0
    assert by_model["mock-unpriced-model"]["cost_uc"] == 0 and by_model["mock-unpriced-model"]["unknown_cost"] > 0
    today = server.db_rows("SELECT max(day) AS d FROM rollups_daily")[0]["d"]
    assert api(server, "GET", f"/api/costs?since={today}&until={today}")[1]["total"]["cost_uc"] == expected
    assert api(server, "GET", "/api/costs?until=2000-01-01")[1]["total"]["cost_uc"] == 0
    table = server.cli("costs", "--by", "model").stdout
    assert "TOTAL" in table and "gpt-4o-mini" in table


def test_report_refuses_an_unknown_format(server):
    status, body = api(server, "GET", "/api/costs?format=xml")
    assert status == 400 and body["error"]["param"] == "format"


@pytest.mark.parametrize(
    "query", ["by=week", "since=yesterday", "until=2026-02-30", "since=2026-05-02&until=2026-05-01"]
)
def test_report_refuses_bad_choices(server, query):
    status, body = api(server, "GET", f"/api/costs?{query}")
    assert status == 400 and body["error"]["message"]
    args = [f"--{part.split('=')[0]}={part.split('=')[1]}" for part in query.split("&")]
    result = server.cli("costs", *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_csv_cells_that_start_like_a_formula_are_quoted(server):
    """Model names are client-chosen: a spreadsheet must show them as text, never run them."""
    formulas = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR"]
    for model in formulas:
        status, _, body = server.request("POST", "/v1/chat/completions", {"model": model, "messages": HELLO})
        assert status == 200, body
    settle(server)
    cli_csv = server.cli("costs", "--by", "model", "--csv").stdout
    status, _, api_csv = server.request(
        "GET", "/api/costs?by=model&format=csv", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert status == 200
    for text in (cli_csv, api_csv.decode()):
        models = [row[0] for row in csv.reader(io.StringIO(text, newline=""))][1:]
        for model in formulas:
            if text is cli_csv and "\r" in model:
                model = model.replace("\r", "\n")  # the captured output reads a lone CR as a newline
            assert "'" + model in models, (model, models)
        assert all(not m.startswith(("=", "+", "-", "@", "\t", "\r")) for m in models)
        assert "gpt-4o-mini" in models  # ordinary names are unchanged


def test_report_adds_up_while_the_writer_commits(database):
    """The grand total comes from the same snapshot as the rows, even with commits in between.

    Regression: the total was a second SELECT, so a commit landing between the two made a
    report whose rows did not add up to its TOTAL (CI caught it once in the console test).
    """
    import threading

    from stockyard.store import costs, db

    writer = database.connect()
    db.migrate(writer)
    reader = database.connect()
    stop = threading.Event()

    models = [f"m{i}" for i in range(5)]
    for m in models:
        writer.execute("INSERT INTO rollups_daily (day, model) VALUES ('2026-12-03', ?)", (m,))

    def write() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            writer.execute(
                "UPDATE rollups_daily SET requests = requests + 1, cost_uc = cost_uc + 7 WHERE model = ?",
                (models[n % 5],),
            )

    thread = threading.Thread(target=write)
    thread.start()
    try:
        for i in range(300):
            result = costs.report(reader, by="model", top=2 if i % 2 else None)  # top: three reads in one
            rows = result["rows"]
            assert result["total"]["requests"] == sum(r["requests"] for r in rows)
            assert result["total"]["cost_uc"] == sum(r["cost_uc"] for r in rows)
    finally:
        stop.set()
        thread.join()


def _sse(*payloads: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(p).encode() + b"\n\n" for p in payloads)


@pytest.mark.parametrize(
    ("answer", "tokens"),
    [
        # Responses: the deltas count; the .done events and response.completed repeat them
        (
            _sse(
                {"type": "response.created", "response": {"instructions": "be brief" * 50, "output": []}},
                {"type": "response.output_text.delta", "delta": "Hello there"},
                {"type": "response.output_text.done", "text": "Hello there"},
                {"type": "response.completed", "response": {"output": [{"content": [{"text": "Hello there"}]}]}},
            ),
            3,
        ),
        # Gemini: each chunk's text
        (_sse({"candidates": [{"content": {"parts": [{"text": "12345678"}], "role": "model"}}]}), 2),
        # an audio answer's transcript (its base64 audio is no text)
        (_sse({"choices": [{"delta": {"audio": {"id": "au_1", "data": "UklGRg==", "transcript": "12345678"}}}]}), 2),
        # a tool call's arguments, in a chat chunk
        (_sse({"choices": [{"delta": {"tool_calls": [{"function": {"arguments": '{"city":"Paris"}'}}]}}]}), 4),
        # a whole JSON answer
        (json.dumps({"choices": [{"message": {"role": "assistant", "content": "x" * 40}}]}).encode(), 10),
    ],
)
def test_an_answer_without_usage_is_counted_by_the_text_it_carried(answer, tokens):
    from stockyard.estimate import relayed_tokens

    assert relayed_tokens(answer, len(answer)) == tokens


def test_a_relayed_answer_past_its_capture_or_unreadable_is_counted_by_its_bytes():
    from stockyard.estimate import relayed_tokens

    chunk = _sse({"choices": [{"delta": {"content": "abcdefgh"}}]})  # 8 characters: 2 tokens
    assert relayed_tokens(chunk, 10 * len(chunk)) == 20  # the capture kept a tenth: scaled
    assert relayed_tokens(b'data: {"choices": [{"del', 4000) == 1000  # nothing readable
    # whole events with no text (a translated stream that broke before the model wrote): nothing
    said_nothing = b"event: response.created\n" + _sse({"type": "response.created", "response": {"output": []}})
    assert relayed_tokens(said_nothing, len(said_nothing)) == 0
    assert relayed_tokens(said_nothing, len(said_nothing) + 400) == 100  # past the capture: its bytes

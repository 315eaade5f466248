"""Every cost report adds up to the traces, to the micro-cent.

A real server over the mock upstream is driven with a seeded random table of requests — keys in
projects and none, end users and tags (headers and body), several models and providers, streamed
and whole, failed attempts followed by a fallback, cache hits, refusals (rpm and budget), an
OpenAI batch and an Anthropic Message Batch billed later — beside traces of earlier days written
before the start (either side of a UTC midnight, and some older than retention keeps). Then every
report grouping and window over the API and the CLI must equal the sums over ``traces`` with the
same filters, and each grouping's rows must add up to its total.

By design (``store.traces.RollupSums``): a refusal (Stockyard's own 4xx, no provider) counts per
day, key and project only, so it is in no end user's or tag's rows (cost 0 either way); a tag
report totals only the requests that carried the tag; retention never takes rollups, so reports
keep the costs of traces it deleted.
"""

from __future__ import annotations

import io
import json
import random
import time
from collections import defaultdict
from datetime import date, timedelta
from typing import Any

import pytest
from conftest import ServerProcess, mock_env, open_database, served, wait_for
from ops_helpers import sample_trace

from stockyard.context import is_refusal
from stockyard.store.traces import ROLLUP_COUNTS, TraceRow

ADMIN = "admin-key-for-review43-reports-0123456789"
DAY_MS = 86_400_000
CLAUDE = "claude-batch-plain"  # the mock's Anthropic model, priced below
MODELS = ("gpt-4o-mini", "gpt-4o", "o3-mini-reasoning", "gpt-4o-mini-cached", "mock-unpriced-model")
KEYS = {
    "a1": ["--project", "alpha"],
    "a2": ["--project", "alpha"],
    "b1": ["--project", "beta"],
    "loose": [],
    "limited": ["--rpm", "1"],
    "broke": ["--budget-usd", "0", "--budget-period", "day"],
}
TRAFFIC_KEYS = ("a1", "a2", "b1", "loose")
NOW_MS = int(time.time() * 1000)
TODAY_MIDNIGHT = NOW_MS - NOW_MS % DAY_MS
RETAINED_DAYS = 20


def old_traces(key_ids: dict[str, str]) -> list[TraceRow]:
    """Traces of earlier days: either side of yesterday's and today's UTC midnight, and 30 days
    back (older than retention keeps: deleted after the start, their rollups kept)."""
    rng = random.Random(43)
    times = [
        TODAY_MIDNIGHT - 1,
        TODAY_MIDNIGHT - DAY_MS,
        TODAY_MIDNIGHT - DAY_MS - 1,
        TODAY_MIDNIGHT - 2 * DAY_MS + 5,
        *(TODAY_MIDNIGHT - 30 * DAY_MS + i * 1000 for i in range(3)),
    ]
    rows = []
    for i, ts in enumerate(times):
        key = rng.choice([*TRAFFIC_KEYS, None])
        rows.append(
            sample_trace(
                ts,
                key_id=key_ids[key] if key else None,
                project={"a1": "alpha", "a2": "alpha", "b1": "beta"}.get(key or ""),
                model=rng.choice(MODELS[:2]),
                served_model=None,
                cost_uc=rng.randrange(1, 10**6),
                prompt_tokens=rng.randrange(100),
                completion_tokens=rng.randrange(100),
                end_user=rng.choice([None, "u-old", f"u{i % 3}"]),
                tags=json.dumps({"team": rng.choice(["red", "blue"])}) if i % 2 else None,
            )
        )
    return rows


def write_old_traces(srv: ServerProcess) -> None:
    """Migrate the new database and write the earlier days' traces through the store's own writer."""
    done = srv.cli("migrate")
    assert done.returncode == 0, done.stderr
    key_ids = {r["name"]: r["id"] for r in srv.db_rows("SELECT id, name FROM client_keys")}
    conn = open_database(srv.db)
    try:
        conn.execute("BEGIN IMMEDIATE")  # a write transaction on either store
        TraceRow.write_many(conn, old_traces(key_ids))
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-review43-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        GROQ_API_KEY="gsk-test-review43-0123456789abcdef",
        GROQ_BASE_URL=mock.url + "/v1",
        STOCKYARD_ADMIN_KEY=ADMIN,
        STOCKYARD_BATCH_POLL="off",
        STOCKYARD_RETENTION_TRACES=f"{RETAINED_DAYS}d",
    )
    prices = [("prices", "set", CLAUDE, "--input", "3", "--output", "15")]
    with served(pyz_path, tmp_path_factory, "review43", env, KEYS, prices, before_start=write_old_traces) as srv:
        yield srv


def admin(server: ServerProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    status, _, raw = server.request(method, path, body, headers={"Authorization": f"Bearer {ADMIN}"})
    return status, json.loads(raw) if raw else None


def module(server: ServerProcess, name: str, config: dict | None = None, enabled: bool = True) -> None:
    status, view = admin(server, "PUT", f"/api/modules/{name}", {"enabled": enabled, "config": config or {}})
    assert status == 200, view


def chat(server: ServerProcess, key: str, body: dict, headers: dict | None = None) -> tuple[int, str]:
    """One chat request (a stream read to its end): its status and trace id."""
    auth = {"Authorization": f"Bearer {server.keys[key]}", **(headers or {})}
    status, head, _ = server.request("POST", "/v1/chat/completions", body, headers=auth)
    return status, head["x-stockyard-trace-id"]


def random_request(rng: random.Random, i: int) -> tuple[str, dict, dict]:
    """A generated request: its key, body and headers (end user and tags by header or body)."""
    body: dict[str, Any] = {
        "model": rng.choice(MODELS),
        "messages": [{"role": "user", "content": f"request {i}"}],
        "stream": rng.random() < 0.5,
    }
    headers: dict[str, str] = {}
    user = rng.choice([None, "u0", "u1", "u2", "Ünïcode"])
    if user and rng.random() < 0.5:
        headers["x-stockyard-user"] = user
    elif user:
        body["user"] = user
    team = rng.choice([None, "red", "blue"])
    if team and rng.random() < 0.5:
        headers["x-stockyard-tags"] = f"team={team},feature=f{i % 2}"
    elif team:
        body["metadata"] = {"team": team}
        body["store"] = True
    if rng.random() < 0.2:
        headers["x-stockyard-provider"] = "groq"
    return rng.choice(TRAFFIC_KEYS), body, headers


@pytest.fixture(scope="module")
def traffic(server, mock) -> dict[str, Any]:
    """The generated traffic, sent once; what it left to compare with."""
    rng = random.Random(4343)
    sent: list[str] = []
    for i in range(40):
        key, body, headers = random_request(rng, i)
        status, trace_id = chat(server, key, body, headers)
        assert status == 200 or body["model"] == "mock-unpriced-model", (status, body)
        sent.append(trace_id)
    # failed attempts followed by a fallback: each attempt a trace
    module(server, "fallback", {"chains": {"openai/mock-error-500": ["groq/gpt-4o-mini"]}, "retries": 0})
    for key in ("a1", "loose"):
        body = {"model": "openai/mock-error-500", "messages": [{"role": "user", "content": "x"}]}
        status, trace_id = chat(server, key, body)
        assert status == 200
        sent.append(trace_id)
    module(server, "fallback", enabled=False)
    # cache hits
    module(server, "cache", {})
    for _ in range(3):
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "cached"}], "user": "u1"}
        status, trace_id = chat(server, "b1", body, {"x-stockyard-tags": "team=red"})
        assert status == 200
        sent.append(trace_id)
    module(server, "cache", enabled=False)
    # refusals: the rate limit and a budget of 0
    module(server, "ratelimit", {})
    module(server, "budget", {})
    statuses = []
    for key in ("limited", "limited", "broke"):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "no"}], "user": "u-refused"}
        status, trace_id = chat(server, key, body, {"x-stockyard-tags": "team=refused"})
        statuses.append(status)
        sent.append(trace_id)
    assert statuses[0] == 200 and statuses[1] == 429 and statuses[2] in (402, 429), statuses
    module(server, "ratelimit", enabled=False)
    module(server, "budget", enabled=False)
    # an OpenAI batch and an Anthropic Message Batch: held, then billed
    batch_lines = "".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"b{i}"}]},
            }
        )
        + "\n"
        for i in range(3)
    ).encode()
    client = server.openai("a2")
    source = client.files.create(file=("in.jsonl", io.BytesIO(batch_lines), "application/jsonl"), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert client.batches.retrieve(batch.id).status == "completed"
    claude = server.anthropic("loose")
    params = {"model": CLAUDE, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    requests = [{"custom_id": f"c{i}", "params": params} for i in range(2)]
    message_batch = claude.messages.batches.create(requests=requests)
    assert claude.messages.batches.retrieve(message_batch.id).processing_status == "ended"
    wait_for(
        lambda: (
            server.db_rows(
                "SELECT count(*) AS n FROM traces WHERE endpoint IN ('batches.usage', 'message_batches.usage')"
            )[0]["n"]
            == 2
        ),
        30,
        "both batches billed",
    )
    for trace_id in sent:
        server.trace(trace_id)
    # retention: the traces older than it keeps are gone (their rollups stay)
    cutoff = NOW_MS - RETAINED_DAYS * DAY_MS
    wait_for(lambda: not server.db_rows("SELECT id FROM traces WHERE ts_ms < ?", (cutoff,)), 30, "retention")
    settle(server)
    return {"retained_since": cutoff}


def settle(server: ServerProcess) -> None:
    """Every trace committed: one more request traced after all the others were."""
    status, trace_id = chat(server, "loose", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "end"}]})
    assert status == 200
    server.trace(trace_id)


# -- what the traces say ----------------------------------------------------------------------------

SUMMED = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_uc")


def traced_rows(server: ServerProcess) -> list[dict]:
    return server.db_rows(
        "SELECT ts, key_id, project, provider, model, served_model, end_user, tags, outcome, parent_id, status, "
        "prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost_uc, cost_status, "
        "ts_ms >= ? AS ts_ms_now FROM traces",
        (NOW_MS,),
    )


def refused(row: dict) -> bool:
    return row["parent_id"] is None and is_refusal(row["outcome"], row["provider"])


def group_of(row: dict, group: str) -> Any:
    """The name a report gives ``row``'s group (None: the unattributed bucket)."""
    if group == "day":
        return row["ts"][:10]
    if group == "key":
        return row["key_id"] or None
    if group == "user":
        return row["end_user"] or None
    if group.startswith("tag:"):
        return json.loads(row["tags"] or "{}").get(group[4:])
    return row[group] or None


def expected(rows: list[dict], groups: list[str]) -> dict[tuple, dict[str, int]]:
    """The sums a report by ``groups`` should show, from the trace rows with its filters."""
    sums: dict[tuple, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SUMMED, 0))
    client_chosen = any(g == "user" or g.startswith("tag:") for g in groups)
    tag_at = next((i for i, g in enumerate(groups) if g.startswith("tag:")), None)
    for row in rows:
        if client_chosen and refused(row):
            continue  # by design: a refusal is in no end user's or tag's rows
        name = tuple(group_of(row, g) for g in groups)
        if tag_at is not None and name[tag_at] is None:
            continue  # a tag report counts only the requests carrying the tag
        counted = sums[name]
        counted["requests"] += 1
        for column in SUMMED[1:]:
            counted[column] += row[column] or 0
    return dict(sums)


def as_sums(report_rows: list[dict], groups: list[str]) -> dict[tuple, dict[str, int]]:
    return {tuple(r[g] for g in groups): {c: r[c] for c in SUMMED} for r in report_rows}


def total_of(sums: dict[tuple, dict[str, int]]) -> dict[str, int]:
    return {c: sum(s[c] for s in sums.values()) for c in SUMMED}


BYS = [
    "day",
    "key",
    "project",
    "provider",
    "user",
    "tag:team",
    "day,key",
    "day,project",
    "day,provider",
    "key,day",
    "user,day",
    "user,key",
    "user,project",
    "day,tag:team",
]


def windows() -> list[tuple[str, date | None, date | None]]:
    today = date.fromisoformat(time.strftime("%Y-%m-%d", time.gmtime(NOW_MS / 1000)))
    yesterday = today - timedelta(days=1)
    month_start = today.replace(day=1)
    return [
        ("all", None, None),
        ("today", today, today),
        ("yesterday", yesterday, yesterday),
        ("since-yesterday", yesterday, None),
        ("this-month", month_start, None),
    ]


def in_window(row: dict, first: date | None, last: date | None) -> bool:
    day = row["ts"][:10]
    return (first is None or day >= first.isoformat()) and (last is None or day <= last.isoformat())


def query(by: str, first: date | None, last: date | None) -> str:
    q = f"by={by}"
    if first:
        q += f"&since={first.isoformat()}"
    if last:
        q += f"&until={last.isoformat()}"
    return q


@pytest.mark.parametrize("by", BYS)
def test_every_report_equals_the_traces_sums_and_its_rows_partition_the_total(server, traffic, by):
    rows = traced_rows(server)
    retained = traffic["retained_since"]
    groups = by.split(",")
    for name, first, last in windows():
        kept = [r for r in rows if in_window(r, first, last)]
        want = expected(kept, groups)
        deleted = deleted_sums(server, groups, first, last, retained)
        for group, counts in deleted.items():  # by design: retention leaves the rollups whole
            into = want.setdefault(group, dict.fromkeys(SUMMED, 0))
            for c in SUMMED:
                into[c] += counts[c]
        want = {k: v for k, v in want.items() if any(v.values())}
        status, report = admin(
            server,
            "GET",
            f"/api/costs?{query(by, first, last)}&top=1000"
            if any(g == "user" or g.startswith("tag:") for g in groups)
            else f"/api/costs?{query(by, first, last)}",
        )
        assert status == 200, report
        got = as_sums([r for r in report["rows"] if not r.get("other")], groups)
        assert got == want, (name, by)
        assert {c: report["total"][c] for c in SUMMED} == total_of(want), (name, by)


def deleted_sums(
    server: ServerProcess, groups: list[str], first: date | None, last: date | None, cutoff: int
) -> dict[tuple, dict[str, int]]:
    """The sums of the traces retention deleted (regenerated as they were written: seeded)."""
    key_ids = {r["name"]: r["id"] for r in server.db_rows("SELECT id, name FROM client_keys")}
    gone = [
        {
            **{c: getattr(t, c) for c in ("ts", "key_id", "project", "provider", "model", "served_model", "end_user")},
            **{c: getattr(t, c) for c in ("tags", "outcome", "parent_id", "status", "cost_status")},
            **{c: getattr(t, c) for c in SUMMED[1:]},
        }
        for t in old_traces(key_ids)
        if t.ts_ms < cutoff
    ]
    return expected([r for r in gone if in_window(r, first, last)], groups)


def test_the_cli_reports_the_apis_numbers(server, traffic):
    for by in ("day", "key", "project", "model", "provider", "user", "day,model"):
        cli = server.cli("costs", "--by", by, "--json")
        assert cli.returncode == 0, cli.stderr
        top = "&top=1000" if by == "user" else ""
        status, from_api = admin(server, "GET", f"/api/costs?by={by}{top}")
        assert status == 200
        assert json.loads(cli.stdout)["total"] == from_api["total"], by


def test_by_model_partitions_the_same_total_as_by_key(server, traffic):
    """The model a rollup row names is not always a trace column (a failed attempt's priced name):
    by model is held to the whole and to each provider's share."""
    key_report = admin(server, "GET", "/api/costs?by=key")[1]
    model_report = admin(server, "GET", "/api/costs?by=model")[1]
    both = admin(server, "GET", "/api/costs?by=provider,model")[1]
    assert model_report["total"] == key_report["total"] == both["total"]
    assert sum(r["cost_uc"] for r in model_report["rows"]) == key_report["total"]["cost_uc"]
    per_provider = admin(server, "GET", "/api/costs?by=provider")[1]["rows"]
    for p in per_provider:
        assert p["cost_uc"] == sum(r["cost_uc"] for r in both["rows"] if r["provider"] == p["provider"])


def test_top_reports_keep_the_total(server, traffic):
    whole = admin(server, "GET", "/api/costs?by=user&top=1000")[1]["total"]
    for by in ("user", "day,user", "user,day", "day,model", "key"):
        report = admin(server, "GET", f"/api/costs?by={by}&top=1")[1]
        assert {c: report["total"][c] for c in ROLLUP_COUNTS} == {
            c: sum(r[c] for r in report["rows"]) for c in ROLLUP_COUNTS
        }, by
        if "user" in by:
            assert report["total"] == whole, by


def test_the_traffic_has_every_kind_the_reports_are_held_to(server, traffic):
    """The comparison above means something: each kind of traffic is in the traces."""
    rows = traced_rows(server)
    assert sum(refused(r) for r in rows) >= 1  # the rpm refusal (the budget's too when traced)
    assert any(r["parent_id"] for r in rows), "a failed attempt followed by a fallback"
    assert server.db_rows("SELECT count(*) AS n FROM traces WHERE cache_hit = 1")[0]["n"] >= 2
    days = {r["ts"][:10] for r in rows}
    before = (TODAY_MIDNIGHT - DAY_MS - 1, TODAY_MIDNIGHT - 1)  # the days before yesterday's and today's midnight
    sides = {time.strftime("%Y-%m-%d", time.gmtime(t / 1000)) for t in before}
    assert days >= sides and len(sides) == 2, "both sides of yesterday's midnight, and the day before today's"
    assert max(days) > max(sides), "and the traffic after today's midnight (the day the file was collected, or later)"
    assert len({r["key_id"] for r in rows}) >= 5 and any(r["key_id"] is None for r in rows)
    assert any(r["cost_status"] == "unknown" for r in rows)
    assert {r["provider"] for r in rows} >= {"openai", "groq", "anthropic"}
    rng = random.Random(4343)  # the generated table again: its end users and tags, by header and by body
    table = [random_request(rng, i) for i in range(40)]
    by_body = [b for _, b, h in table if "metadata" in b]
    assert by_body and [b for _, b, h in table if "x-stockyard-tags" in h]
    tagged = [r for r in rows if r["tags"] and "team" in json.loads(r["tags"]) and r["ts_ms_now"]]
    assert len(tagged) >= sum(1 for _, b, h in table if "metadata" in b or "x-stockyard-tags" in h)
    users = [r for r in rows if r["end_user"] and r["ts_ms_now"]]
    assert len(users) >= sum(1 for _, b, h in table if "user" in b or "x-stockyard-user" in h)
    assert sum(r["cost_uc"] or 0 for r in rows) < admin(server, "GET", "/api/costs")[1]["total"]["cost_uc"], (
        "retention deleted priced traces whose rollups stay"
    )


def test_metrics_count_the_costs_of_the_traces_made_since_the_start(server, traffic):
    """/metrics' cost counter: every trace this process made, the batches it billed included (not
    the earlier days' rows written before it started)."""
    status, _, text = server.request("GET", "/metrics")
    assert status == 200
    counted = sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.decode().splitlines()
        if line.startswith("stockyard_cost_microcents_total{")
    )
    made = server.db_rows("SELECT COALESCE(SUM(cost_uc), 0) AS c FROM traces WHERE ts_ms >= ?", (NOW_MS,))[0]["c"]
    assert counted == made

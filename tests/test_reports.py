"""Reports computed on the server: costs by two dimensions in one read, latency percentiles from
per-minute histograms, key names in the trace list."""

from __future__ import annotations

import math
import random
import time

import pytest
from module_helpers import ADMIN_KEY, api, chat, start_server
from ops_helpers import sample_trace

from stockyard.retention import Retention
from stockyard.store import costs, db
from stockyard.store import traces as trace_store
from stockyard.store.traces import iso_utc
from stockyard.webhooks import log_delivery

NOW_MS = int(time.time() * 1000)


@pytest.fixture
def conn(tmp_path):
    c = db.connect(tmp_path / "r.db")
    db.migrate(c)
    yield c
    c.close()


def nearest_rank(values: list[int], p: int) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * p / 100)) - 1]


def test_latency_percentiles_come_from_the_histograms_within_ten_percent(conn):
    rng = random.Random(7)
    answered = [int(rng.lognormvariate(12, 1)) for _ in range(3000)]  # ~160 ms median, a long tail
    conn.execute("BEGIN")
    for i, latency in enumerate(answered):
        sample_trace(NOW_MS - i * 1000, latency_us=latency).write(conn)
    # Neither extra attempts nor failures count toward the latency of answered requests.
    sample_trace(NOW_MS, latency_us=10**9, parent_id="tr_x", attempt=2).write(conn)
    sample_trace(NOW_MS, latency_us=10**9, status=502, outcome="upstream_error").write(conn)
    conn.execute("COMMIT")
    got = trace_store.latency_percentiles(conn, NOW_MS - 3600_000, NOW_MS + 1)
    assert got["requests"] == 3000
    for p in (50, 90, 99):
        exact = nearest_rank(answered, p)
        assert exact <= got[f"p{p}_us"] <= exact * 1.1 + 1, (p, exact, got)
    minutes = len({(NOW_MS - i * 1000) // 60_000 for i in range(3000)})
    buckets = len({trace_store.latency_bucket(v) for v in answered})
    assert conn.execute("SELECT count(*) FROM latency_minutes").fetchone()[0] <= minutes * buckets
    assert conn.execute("SELECT sum(count) FROM latency_minutes").fetchone()[0] == 3000
    assert trace_store.latency_percentiles(conn, NOW_MS - 7200_000, NOW_MS - 3700_000) == {
        "requests": 0,
        "p50_us": None,
        "p90_us": None,
        "p99_us": None,
    }


def test_retention_takes_old_histograms_and_webhook_deliveries_with_the_traces(conn):
    conn.execute("BEGIN")
    sample_trace(NOW_MS - 10 * 86_400_000).write(conn)
    sample_trace(NOW_MS).write(conn)
    for ms in (NOW_MS - 10 * 86_400_000, NOW_MS):
        log_delivery(conn, ("wh_1", f"evt_{ms}", "webhook.test", 1, iso_utc(ms), 200, None, 1, "delivered"))
    conn.execute("COMMIT")
    r = Retention(traces_max_age_s=86_400.0)
    with conn:
        while r.run(conn):
            pass
    assert [m for (m,) in conn.execute("SELECT minute FROM latency_minutes")] == [NOW_MS // 60_000]
    assert [e for (e,) in conn.execute("SELECT event_id FROM webhook_deliveries")] == [f"evt_{NOW_MS}"]


def test_costs_by_two_dimensions_add_up_to_each_alone(conn):
    conn.execute("BEGIN")
    for i in range(60):
        sample_trace(NOW_MS - i * 3 * 3600_000, model=f"m{i % 3}", served_model=f"m{i % 3}", cost_uc=i + 1).write(conn)
    conn.execute("COMMIT")
    both = costs.report(conn, "day,model")
    assert both["groups"] == ["day", "model"] and both["by"] == "day,model"
    by_day, by_model = costs.report(conn, "day"), costs.report(conn, "model")
    assert both["total"] == by_day["total"] == by_model["total"]
    for day in by_day["rows"]:
        assert day["cost_uc"] == sum(r["cost_uc"] for r in both["rows"] if r["day"] == day["day"])
    for model in by_model["rows"]:
        assert model["cost_uc"] == sum(r["cost_uc"] for r in both["rows"] if r["model"] == model["model"])
    days = [r["day"] for r in both["rows"]]
    assert days == sorted(days), "days in order"
    first = costs.report(conn, "model,day")["rows"]
    assert first[0]["model"] == by_model["rows"][0]["model"], "the outer group by its whole spend"
    for bad in ("day,day", "day,model,key", "week", ""):
        with pytest.raises(ValueError, match="by must be"):
            costs.report(conn, bad)


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    srv = start_server(pyz_path, cache_home, mock, tmp_path_factory, "reports")
    yield srv
    srv.stop()


def test_the_api_answers_two_dimensions_latency_and_key_names(server):
    status, key = api(server, "POST", "/api/keys", {"name": "reporter"})
    assert status == 201
    for _ in range(3):
        status, headers, _ = chat(server, headers={"Authorization": f"Bearer {key['key']}"})
        assert status == 200
    last = headers["x-stockyard-trace-id"]
    server.trace(last)
    status, page = api(server, "GET", "/api/traces?limit=5")
    assert status == 200 and page["data"][0]["id"] == last
    assert page["data"][0]["key_name"] == "reporter" and page["data"][0]["key_id"] == key["id"]
    assert api(server, "GET", f"/api/traces/{last}")[1]["key_name"] == "reporter"
    status, report = api(server, "GET", "/api/costs?by=day,key")
    assert status == 200 and report["rows"][0]["key_name"] == "reporter" and report["rows"][0]["requests"] == 3
    status, bad = api(server, "GET", "/api/costs?by=day,model,key")
    assert status == 400 and "two" in bad["error"]["message"]
    status, latency = api(server, "GET", "/api/latency")
    assert status == 200 and latency["requests"] == 3 and 0 < latency["p50_us"] <= latency["p99_us"]
    status, _, csv = server.request(
        "GET", "/api/costs?by=day,key&format=csv", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert status == 200 and csv.decode().splitlines()[0].startswith("day,key,key_name,key_prefix,requests")
    cli = server.cli("costs", "--by", "day,key")
    assert cli.returncode == 0 and "reporter" in cli.stdout and "DAY" in cli.stdout and "KEY" in cli.stdout

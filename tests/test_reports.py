"""Reports computed on the server: costs by two dimensions in one read, latency percentiles from
per-minute histograms, key names in the trace list."""

from __future__ import annotations

import datetime
import json
import math
import random
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import open_database
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from module_helpers import ADMIN_KEY, api, chat, server_fixture, start_server
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


@pytest.fixture(scope="module")
def migrated(tmp_path_factory) -> Path:
    """An empty database at the latest schema, made once: the property tests start each example
    from a copy of it (migrating ~0.1 s an example, ~5 s of the file's time)."""
    path = tmp_path_factory.mktemp("migrated") / "r.db"
    conn = db.connect(path)
    db.migrate(conn)
    conn.close()
    return path


def copy_of(template: Path, folder: Path) -> sqlite3.Connection:
    """A connection to a fresh copy of ``template`` in ``folder`` (SQLite's backup API: a consistent copy)."""
    source, conn = db.connect(template), db.connect(folder / "r.db")
    source.backup(conn)
    source.close()
    return conn


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


USERS = [f"u{i}" for i in range(8)]


def spends(days: int) -> st.SearchStrategy[list[tuple[int, int, int, int]]]:
    """Up to 40 (days ago, user, model, cost) tuples for :func:`write_spend`, days ago up to ``days``."""
    return st.lists(
        st.tuples(st.integers(0, days), st.integers(0, len(USERS) - 1), st.integers(0, 3), st.integers(0, 10**12)),
        max_size=40,
    )


def write_spend(conn, spend: list[tuple[int, int, int, int]]) -> None:
    """Traces from (days ago, user, model, cost) tuples; user 0 names no end user."""
    conn.execute("BEGIN IMMEDIATE")
    for i, (days, user, model, cost) in enumerate(spend):
        sample_trace(
            NOW_MS - days * 86_400_000 - i,
            body=None,
            end_user=USERS[user] if user else None,
            key_id=f"key_{user % 3}",
            model=f"m{model}",
            served_model=f"m{model}",
            cost_uc=cost,
            tags='{"team": "t%d"}' % (user % 4) if user % 2 else None,
        ).write(conn)
    conn.execute("COMMIT")


def check_top(conn, by: str, top: int, since: str | None = None, until: str | None = None) -> None:
    """A top report is the full report with every group outside the top summed per outer group."""
    full, kept = costs.report(conn, by, since, until), costs.report(conn, by, since, until, top=top)
    groups, last = full["groups"], full["groups"][-1]
    assert kept["total"] == full["total"], "exact to the micro-cent"
    for column in costs.COUNTS:
        assert sum(r[column] for r in kept["rows"]) == full["total"][column]
    spend: dict = {}
    for r in full["rows"]:
        spend[r[last]] = spend.get(r[last], 0) + r["cost_uc"]
    chosen = sorted(spend, key=lambda g: (-spend[g], g or ""))[:top]
    assert {r[last] for r in kept["rows"] if not r["other"]} <= set(chosen)
    outer = lambda r: tuple(r[g] for g in groups[:-1])  # noqa: E731
    for r in kept["rows"]:
        same = [f for f in full["rows"] if outer(f) == outer(r)]
        if r["other"]:
            assert r[last] == costs.OTHER
            rest = [f for f in same if f[last] not in chosen]
            assert rest, "a rest row only where there is a rest"
            assert all(r[c] == sum(f[c] for f in rest) for c in costs.COUNTS)
        else:
            assert [{**f, "other": False} for f in same if f[last] == r[last]] == [r]
    assert [outer(r) for r in kept["rows"]] == sorted(
        (outer(r) for r in kept["rows"]), key=[outer(r) for r in full["rows"]].index
    ), "outer groups in the full report's order"
    for key in {outer(r) for r in kept["rows"]}:
        names = [r[last] for r in kept["rows"] if outer(r) == key]
        costs_here = [r["cost_uc"] for r in kept["rows"] if outer(r) == key and not r["other"]]
        assert costs_here == sorted(costs_here, reverse=True) and costs.OTHER not in names[:-1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    spend=spends(4),
    top=st.integers(1, 5),
)
def test_top_n_sums_the_rest_exactly(tmp_path_factory, migrated, spend, top):
    conn = copy_of(migrated, tmp_path_factory.mktemp("top"))
    write_spend(conn, spend)
    for by in ("day,user", "day,key", "day,model", "user", "key,model", "day,tag:team"):
        check_top(conn, by, top)
    check_top(conn, "day,user", top, since=iso_utc(NOW_MS - 2 * 86_400_000)[:10])
    for by in ("user,day", "user,key", "user,project", "key,user", "tag:team", "tag:team,day", "day,tag:team"):
        check_bounded(costs.report(conn, by), costs.report(conn, by, top=top), top)
    conn.close()


def spend_from_traces(conn, groups: list[str], since: str | None, until: str | None) -> dict[tuple, int]:
    """The cost of each group over the range summed from the traces themselves, not a rollup."""
    out: dict[tuple, int] = {}
    for day, user, key, project, cost in conn.execute(
        "SELECT substr(ts, 1, 10), end_user, key_id, project, cost_uc FROM traces"
    ):
        if (since and day < since) or (until and day > until):
            continue
        names = {"user": user, "key": key, "project": project}
        group = tuple(names[g] or None for g in groups)
        out[group] = out.get(group, 0) + (cost or 0)
    return out


def month_edges(days_ago: int, end: bool) -> str:
    """The first (or last) day of the month ``days_ago`` days before now, UTC."""
    day = datetime.datetime.fromtimestamp(NOW_MS / 1000, datetime.timezone.utc).date()
    day = (day - datetime.timedelta(days=days_ago)).replace(day=1)
    if end:
        day = (day + datetime.timedelta(days=32)).replace(day=1) - datetime.timedelta(days=1)
    return day.isoformat()


def check_users_over(conn, since: str | None, until: str | None) -> None:
    """Every report by user over the range is the traces' sum, whichever rollup it reads."""
    for by in ("user", "key,user", "user,project", "day,user"):
        groups = by.split(",")
        got = costs.report(conn, by, since, until)
        if "day" in groups:
            assert got["total"]["cost_uc"] == sum(spend_from_traces(conn, ["user"], since, until).values())
            continue
        assert {tuple(r[g] for g in groups): r["cost_uc"] for r in got["rows"]} == spend_from_traces(
            conn, groups, since, until
        ), (by, since, until)
    for by in ("day,user", "user", "key,user"):
        check_top(conn, by, 2, since, until)
    for by in ("user,day", "user,key", "user,project"):
        check_bounded(costs.report(conn, by, since, until), costs.report(conn, by, since, until, top=2), 2)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    spend=spends(130),
    start=st.integers(0, 140),
    length=st.integers(0, 100),
)
def test_reports_by_user_over_whole_months_or_any_days_are_the_traces_sums(
    tmp_path_factory, migrated, spend, start, length
):
    """A range of whole months (or all time) reads the users' monthly rollups (schema 0028), any other
    range their daily ones; both must be the sum of the traces, to the micro-cent."""
    conn = copy_of(migrated, tmp_path_factory.mktemp("months"))
    write_spend(conn, spend)
    day = lambda ago: iso_utc(NOW_MS - ago * 86_400_000)[:10]  # noqa: E731
    ranges = [
        (None, None),
        (month_edges(start, end=False), None),
        (None, month_edges(start, end=True)),
        (month_edges(start, end=False), month_edges(max(0, start - length), end=True)),
        (day(start), day(max(0, start - length))),
        (day(start), None),
    ]
    for since, until in ranges:
        check_users_over(conn, since, until)
    conn.close()


def test_reports_by_user_over_months_on_each_store(database):
    conn = database.connect()
    db.migrate(conn)
    write_spend(conn, [(d, u, d % 4, 1000 * u + d) for d in range(0, 100, 3) for u in range(len(USERS))])
    for since, until in (
        (None, None),
        (month_edges(40, end=False), None),
        (month_edges(70, end=False), month_edges(35, end=True)),
        (iso_utc(NOW_MS - 50 * 86_400_000)[:10], None),
        ("0001-01-01", "9999-12-31"),  # the ends of the calendar: whole months (was: a 500, date overflow)
        (None, "9999-12-30"),
    ):
        check_users_over(conn, since, until)
    conn.close()


def test_the_upgrade_sums_the_users_rollups_by_month_and_by_day(tmp_path):
    """Schema 0028 fills the two new rollups from rollups_users, so an old database's reports by user
    over whole months are its days' sums."""
    conn = db.connect(tmp_path / "old.db")
    db.migrate(conn, upto=27)
    rng = random.Random(3)
    rows = {
        (f"2026-{m:02d}-{d:02d}", f"key_{rng.randrange(3)}", rng.choice(["", "p1"]), f"u{rng.randrange(6)}"): cost
        for m in (9, 10, 11) for d in (1, 15, 30) for cost in (rng.randrange(10**9) for _ in range(5))
    }  # fmt: skip
    with conn:
        conn.executemany(
            "INSERT INTO rollups_users (day, key_id, project, end_user, requests, cost_uc) VALUES (?, ?, ?, ?, 1, ?)",
            [(*k, v) for k, v in rows.items()],
        )
    db.migrate(conn)
    months: dict[tuple, int] = {}
    days: dict[str, int] = {}
    for (day, key_id, project, user), cost in rows.items():
        months[(day[:7], key_id, project, user)] = months.get((day[:7], key_id, project, user), 0) + cost
        days[day] = days.get(day, 0) + cost
    got = conn.execute("SELECT month, key_id, project, end_user, cost_uc FROM rollups_users_months").fetchall()
    assert {tuple(r[:4]): r[4] for r in got} == months
    assert dict(conn.execute("SELECT day, cost_uc FROM rollups_users_days").fetchall()) == days
    whole = costs.report(conn, "user", "2026-10-01", "2026-11-30")
    assert whole["total"]["cost_uc"] == sum(v for k, v in rows.items() if "2026-10" <= k[0][:7] <= "2026-11")
    conn.close()


def test_every_pair_of_groups_reports_on_each_store(database):
    """Each outer group ordered by its whole spend: PostgreSQL took no output name in the window
    that orders it (``by=model,day``, ``by=key,user`` failed there, "column g0 does not exist")."""
    conn = database.connect()
    db.migrate(conn)
    write_spend(conn, [(d, u, m, 1000 * u + 10 * m + d) for d in range(3) for u in range(5) for m in range(2)])
    names = [*costs.GROUPS, "tag:team"]
    for outer in names:
        for inner in names:
            by = f"{outer},{inner}"
            try:
                report = costs.report(conn, by)
            except ValueError:  # the groups a rollup cannot give together (e.g. model,user)
                continue
            groups = report["groups"]
            if "tag:team" not in groups:
                assert report["total"]["requests"] == 30, by
            spend: dict = {}
            for row in report["rows"]:
                spend[row[groups[0]]] = spend.get(row[groups[0]], 0) + row["cost_uc"]
            firsts = list(dict.fromkeys(row[groups[0]] for row in report["rows"]))
            if outer != "day":
                assert firsts == sorted(spend, key=lambda g: (-spend[g], g or "")), by
    conn.close()


def test_top_n_on_each_store(database):
    conn = database.connect()
    db.migrate(conn)
    write_spend(conn, [(d, u, m, 1000 * u + 10 * m + d) for d in range(3) for u in range(8) for m in range(2)])
    report = costs.report(conn, "day,user", top=3)
    assert report["top"] == 3 and len(report["rows"]) == 3 * 4
    assert [r["user"] for r in report["rows"][:4]] == ["u7", "u6", "u5", costs.OTHER]
    assert report["rows"][3]["other"] and not report["rows"][0]["other"]
    for by in ("day,user", "day,model", "key", "day,key"):
        check_top(conn, by, 1)
    for bad, message in (("model,day", "cannot be day"), ("day", "cannot be day")):
        with pytest.raises(ValueError, match=message):
            costs.report(conn, bad, top=2)
    with pytest.raises(ValueError, match="between 1 and"):
        costs.report(conn, "user", top=0)
    conn.close()


def test_a_top_group_without_a_name_is_its_own_row_on_each_store(database):
    """No end user (or no key, no project) is stored as '' (the rollups' columns are NOT NULL), so
    the top set matches it like any name: it never falls into (other) when it ranks."""
    conn = database.connect()
    db.migrate(conn)
    write_spend(conn, [(0, 0, 0, 1000), (0, 1, 0, 10), (0, 2, 0, 5), (1, 0, 1, 7), (1, 3, 0, 3)])
    rows = costs.report(conn, "day,user", top=1)["rows"]
    assert [(r["user"], r["cost_uc"]) for r in rows] == [(None, 7), (costs.OTHER, 3), (None, 1000), (costs.OTHER, 15)]
    assert [(r["user"], r["other"]) for r in costs.report(conn, "user", top=1)["rows"]] == [
        (None, False),
        (costs.OTHER, True),
    ]
    for by in ("day,user", "user", "day,project", "project"):
        check_top(conn, by, 1)
    conn.close()


ROLLUP_DIMENSIONS = {
    "rollups_daily": {"day", "key_id", "project", "provider", "model"},
    "rollups_users": {"day", "key_id", "project", "end_user"},
    "rollups_tags": {"day", "name", "value"},
    "rollups_users_months": {"month", "key_id", "project", "end_user"},
    "rollups_users_days": {"day"},
}


def test_one_list_of_rollup_counts_is_written_and_reported_and_is_each_tables(database):
    """The writer's upserts and the reports' sums name the same columns: one definition, which is
    every rollup table's columns besides its dimensions, on each store."""
    assert costs.COUNTS is trace_store.ROLLUP_COUNTS
    conn = database.connect()
    db.migrate(conn)
    for table, dimensions in ROLLUP_DIMENSIONS.items():
        columns = [d[0] for d in conn.execute(f"SELECT * FROM {table} LIMIT 0").description]
        assert sorted(columns) == sorted(dimensions | set(costs.COUNTS)), table
    conn.close()


server = server_fixture("reports")


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


def test_the_api_and_cli_keep_the_top_groups(server):
    for name in ("big", "small"):
        status, key = api(server, "POST", "/api/keys", {"name": f"top-{name}"})
        assert status == 201
        for _ in range(2 if name == "big" else 1):
            status, headers, _ = chat(server, headers={"Authorization": f"Bearer {key['key']}"})
            assert status == 200
    server.trace(headers["x-stockyard-trace-id"])
    status, full = api(server, "GET", "/api/costs?by=day,key")
    status, report = api(server, "GET", "/api/costs?by=day,key&top=1")
    assert status == 200 and report["top"] == 1 and report["total"] == full["total"]
    assert report["rows"][-1]["key"] == "(other)" and report["rows"][-1]["other"] is True
    assert sum(r["cost_uc"] for r in report["rows"]) == full["total"]["cost_uc"]
    for bad in ("0", "x", "1001"):
        status, body = api(server, "GET", f"/api/costs?by=day,key&top={bad}")
        assert status == 400 and body["error"]["param"] == "top", body
    status, body = api(server, "GET", "/api/costs?by=day&top=3")
    assert status == 400 and "cannot be day" in body["error"]["message"]
    cli = server.cli("costs", "--by", "day,key", "--top", "1", "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["rows"] == report["rows"]
    table = server.cli("costs", "--by", "key", "--top", "1").stdout
    assert "(other)" in table and "TOTAL" in table


def test_ties_are_listed_and_kept_in_byte_order_on_each_store(collated_conn):
    """Was: PostgreSQL ordered names by its collation ('a-user' before 'B-user' in ICU or en_US),
    SQLite by bytes ('B-user' first), so the same spend listed its ties in another order and a
    top=1 report kept another user on each store."""
    conn = collated_conn
    conn.execute("BEGIN IMMEDIATE")
    for i, (user, cost) in enumerate([("a-user", 50), ("B-user", 50), ("c-user", 10), ("B-user", 0)]):
        sample_trace(NOW_MS - i, body=None, end_user=user, key_id="k", model="m", cost_uc=cost).write(conn)
    conn.execute("COMMIT")
    assert [r["user"] for r in costs.report(conn, "user")["rows"]] == ["B-user", "a-user", "c-user"]
    assert [r["user"] for r in costs.report(conn, "user", top=1)["rows"]] == ["B-user", costs.OTHER]
    assert [r["user"] for r in costs.report(conn, "day,user")["rows"]] == ["B-user", "a-user", "c-user"]


def test_a_report_by_end_user_without_top_is_bounded_and_says_so(server):
    """Gap: ``/api/costs?by=user`` without ``top`` answered one row per end user — a key behind a
    public app can have millions. Without ``top`` a report whose last group is the end user keeps
    the 1,000 who cost most and sums the rest into one ``(other)`` row, as ``top=1000`` does, and
    says so (``top_default``); an explicit ``top`` still wins, other groups are not cut, and the
    CLI (the operator's own process, which the console points to for every user) lists them all."""
    users = 2500
    conn = open_database(server.db)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for i in range(users):
            sample_trace(NOW_MS - i, body=None, end_user=f"eu{i:05d}", cost_uc=i + 1).write(conn)
        conn.execute("COMMIT")
    finally:
        conn.close()
    status, report = api(server, "GET", "/api/costs?by=user")
    assert status == 200, report
    assert report["top"] == costs.MAX_TOP == 1000 and report["top_default"] is True
    rows = report["rows"]
    named = [r["user"] for r in rows if r["user"] and r["user"].startswith("eu")]  # (the other tests' have none)
    assert len(rows) == 1001 and named[:2] == [f"eu{users - 1:05d}", f"eu{users - 2:05d}"]
    assert rows[-1]["user"] == costs.OTHER and rows[-1]["other"] is True and rows[-1]["requests"] >= users - 1000
    assert sum(r["cost_uc"] for r in rows) == report["total"]["cost_uc"], "the rest is summed, to the micro-cent"
    status, by_day = api(server, "GET", "/api/costs?by=day,user")
    assert status == 200 and by_day["top_default"] is True and by_day["total"] == report["total"]
    assert len(by_day["rows"]) <= 1001 * len({r["day"] for r in by_day["rows"]})
    status, asked = api(server, "GET", "/api/costs?by=user&top=1000")
    assert status == 200 and asked["top_default"] is False and asked["rows"] == rows
    status, five = api(server, "GET", "/api/costs?by=user&top=5")
    assert status == 200 and len(five["rows"]) == 6 and five["top_default"] is False
    status, by_model = api(server, "GET", "/api/costs?by=model")
    assert status == 200 and by_model["top"] is None and by_model["top_default"] is False
    cli = server.cli("costs", "--by", "user", "--json")
    assert cli.returncode == 0, cli.stderr
    assert len(json.loads(cli.stdout)["rows"]) >= users and json.loads(cli.stdout)["top_default"] is False


def check_bounded(full: dict, kept: dict, top: int) -> None:
    """``kept`` is ``full`` with the client-chosen group (user or tag, wherever it sits in by) cut
    to the ``top`` that cost most over the range, the rest one ``(other)`` row per other group."""
    groups = full["groups"]
    chosen = next(g for g in groups if g == "user" or g.startswith(costs.TAG_PREFIX))
    assert kept["total"] == full["total"], "exact to the micro-cent"
    for column in costs.COUNTS:
        assert sum(r[column] for r in kept["rows"]) == full["total"][column], column
    spend: dict = {}
    for r in full["rows"]:
        spend[r[chosen]] = spend.get(r[chosen], 0) + r["cost_uc"]
    ranked = sorted(spend, key=lambda g: (-spend[g], g or ""))[:top]
    named = {r[chosen] for r in kept["rows"] if not r["other"]}
    assert named == set(ranked) and len(named) <= top
    rest: dict = {}
    for f in full["rows"]:
        if f[chosen] not in named:
            key = tuple(f[g] for g in groups if g != chosen)
            rest[key] = [a + f[c] for a, c in zip(rest.get(key, [0] * len(costs.COUNTS)), costs.COUNTS)]
    tail = [r for r in kept["rows"] if r["other"]]
    others = {tuple(r[g] for g in groups if g != chosen): [r[c] for c in costs.COUNTS] for r in tail}
    assert others == rest and all(r[chosen] == costs.OTHER for r in tail)
    named_rows = [r for r in kept["rows"] if not r["other"]]
    assert [{**f, "other": False} for f in full["rows"] if f[chosen] in named] == named_rows, "in the same order"
    if len(groups) > 1 and groups[0] == chosen:  # (other) after every named value, its rows as the full report's
        assert kept["rows"][len(kept["rows"]) - len(tail) :] == tail
        if groups[1] == "day":
            assert [r["day"] for r in tail] == sorted(r["day"] for r in tail)
        else:
            assert [r["cost_uc"] for r in tail] == sorted((r["cost_uc"] for r in tail), reverse=True)
    else:  # each outer group's (other) last in it
        for i, r in enumerate(kept["rows"]):
            if r["other"]:
                assert i + 1 == len(kept["rows"]) or kept["rows"][i + 1][groups[0]] != r[groups[0]]


def test_every_report_by_a_client_chosen_group_is_bounded_and_says_so(server):
    """Gap: only a report whose last group was the end user was bounded; ``by=user,day``,
    ``user,key``, ``user,project`` and tag reports (Codex's ``session``) answered one row per value
    the clients chose. Each keeps the 1,000 values that cost most over the range (or an explicit
    ``top``) and one ``(other)`` per remaining group, adding up to the unbounded report exactly;
    reports by model, key or day are not cut, and the CLI still lists everything."""
    users = 1500
    conn = open_database(server.db)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for i in range(users):
            for day in range(2):
                sample_trace(
                    NOW_MS - day * 86_400_000 - i,
                    body=None,
                    end_user=f"cu{i:05d}",
                    key_id=f"key_{i % 3}",
                    project=f"p{i % 2}",
                    cost_uc=(i + 1) * (day + 1),
                    tags='{"session": "s%05d"}' % i,
                ).write(conn)
        conn.execute("COMMIT")
        for by in ("user,day", "user,key", "user,project", "tag:session", "tag:session,day", "day,tag:session"):
            status, kept = api(server, "GET", f"/api/costs?by={by}")
            assert status == 200 and kept["top_default"] is True and kept["top"] == 1000, (by, kept)
            check_bounded(costs.report(conn, by), kept, 1000)
        status, five = api(server, "GET", "/api/costs?by=user,day&top=5")
        assert status == 200 and five["top_default"] is False
        check_bounded(costs.report(conn, "user,day"), five, 5)
        assert [r["user"] for r in five["rows"]][-2:] == [costs.OTHER] * 2, "(other) after the named, day by day"
        for by in ("model", "key", "day", "day,key"):
            status, whole = api(server, "GET", f"/api/costs?by={by}")
            assert (
                status == 200
                and whole["top_default"] is False
                and whole == costs.report(conn, by, page_rows=costs.PAGE_ROWS)
            ), by
    finally:
        conn.close()
    cli = server.cli("costs", "--by", "tag:session", "--json")
    assert cli.returncode == 0, cli.stderr
    assert len(json.loads(cli.stdout)["rows"]) == users and json.loads(cli.stdout)["top_default"] is False


def walk_pages(conn, by: str, rows_max: int, top: int | None = None, since: str | None = None) -> list[dict]:
    """Every page of a paged report, the first to the last, each checked against its bound."""
    pages, page = [], None
    while True:
        got = costs.report(conn, by, since, top=top, page=page, page_rows=rows_max)
        days = {r["day"] for r in got["rows"]}
        assert len(got["rows"]) <= rows_max or len(days) == 1, (by, rows_max, got)
        for column in costs.COUNTS:
            assert got["total"][column] == sum(r[column] for r in got["rows"]), "a page totals its own rows"
        if pages:
            assert min(days, default=page) >= page, "a page starts at the day it was asked for"
        pages.append(got)
        if not got["has_more"]:
            assert got["next_page"] is None
            return pages
        assert got["next_page"] > max(days), "the next page starts after this one's days"
        page = got["next_page"]


def same_rows(by: str, pages: list[dict], whole: dict) -> None:
    """The pages' rows are the whole report's: in its order where days come first (the days in
    order, each as the whole report has it), else the same rows."""
    rows = [r for p in pages for r in p["rows"]]
    if by.startswith("day,"):
        assert rows == whole["rows"], by
    else:
        key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
        assert sorted(rows, key=key) == sorted(whole["rows"], key=key), by
    for column in costs.COUNTS:
        assert sum(p["total"][column] for p in pages) == whole["total"][column], "the pages add up to the report"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    spend=spends(9),
    rows_max=st.integers(1, 12),
    top=st.sampled_from([None, 1, 3]),
)
def test_a_report_walked_page_by_page_is_the_whole_report(tmp_path_factory, migrated, spend, rows_max, top):
    """Issue 18: a report by day and another group over the API answers whole days, at most
    ``page_rows`` rows a page (a day with more alone); walked by ``next_page`` the pages are the
    whole report, row for row, and each page totals its own rows. A top report ranks over the
    whole range on every page, so its pages hold the same named groups as the whole report."""
    conn = copy_of(migrated, tmp_path_factory.mktemp("pages"))
    write_spend(conn, spend)
    since = iso_utc(NOW_MS - 6 * 86_400_000)[:10]
    for by in ("day,user", "day,model", "day,key", "user,day", "key,day", "day,tag:team", "tag:team,day"):
        if top and by == "key,day":
            continue  # (top ranks the last group: day cannot be)
        for first in (None, since):
            pages = walk_pages(conn, by, rows_max, top, first)
            same_rows(by, pages, costs.report(conn, by, first, top=top))
    conn.close()


def test_pages_on_each_store(database):
    """The paging statements (each day's groups counted, the ranked group's members) on both stores."""
    conn = database.connect()
    db.migrate(conn)
    write_spend(conn, [(d, u, m, 1000 * u + 10 * m + d) for d in range(5) for u in range(8) for m in range(2)])
    for by, top in (("day,user", None), ("day,user", 3), ("user,day", 2), ("day,model", None), ("day,tag:team", 1)):
        pages = walk_pages(conn, by, 9, top)
        assert len(pages) > 1, by
        same_rows(by, pages, costs.report(conn, by, top=top))
    whole = costs.report(conn, "day,model", page_rows=costs.PAGE_ROWS)
    assert whole["has_more"] is False and whole["next_page"] is None and len(whole["rows"]) == 5 * 2
    alone = costs.report(conn, "model", page_rows=1)
    assert alone["has_more"] is False and len(alone["rows"]) == 2, "a report without day is not paged"
    conn.close()


def test_the_api_pages_a_big_report_by_day_and_says_where_the_next_starts(server):
    """Over the API, ``by=day,user`` for 2 days of 3,000 end users (top=1,000 by default: 1,001 rows
    a day at most) answers 2,002 rows in one page; asked by day and key for 12 days of 500 keys
    (6,000 rows) it answers whole days within PAGE_ROWS and the next_page, in JSON and (a Link
    header) in CSV; a page outside the range, not a day, or on a report without day is a 400."""
    keys, days = 500, 12
    conn = open_database(server.db)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for day in range(days):
            for k in range(keys):
                sample_trace(NOW_MS - day * 86_400_000 - k, body=None, key_id=f"pk_{k:04d}", cost_uc=k + 1).write(conn)
        conn.execute("COMMIT")
    finally:
        conn.close()
    since = iso_utc(NOW_MS - (days - 1) * 86_400_000)[:10]
    status, first = api(server, "GET", f"/api/costs?by=day,key&since={since}")
    assert status == 200 and first["has_more"] is True, first.get("error")
    assert len(first["rows"]) <= costs.PAGE_ROWS and len(first["rows"]) >= keys * (costs.PAGE_ROWS // keys - 1)
    assert first["next_page"] > max(r["day"] for r in first["rows"])
    rows, page, asked = list(first["rows"]), first, 1
    while page["has_more"]:
        status, page = api(server, "GET", f"/api/costs?by=day,key&since={since}&page={page['next_page']}")
        assert status == 200, page
        rows += page["rows"]
        asked += 1
    assert asked == 2 and sum(r["requests"] for r in rows if (r["key"] or "").startswith("pk_")) == keys * days
    status, headers, body = server.request(
        "GET", f"/api/costs?by=day,key&since={since}&format=csv", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert status == 200 and body.decode().count("\n") == len(first["rows"]) + 2  # head, rows, TOTAL
    assert headers["link"] == (
        f'</api/costs?by=day%2Ckey&since={since}&format=csv&page={first["next_page"]}>; rel="next"'
    )
    status, one = api(server, "GET", f"/api/costs?by=day&since={since}")
    assert status == 200 and one["has_more"] is False and one["next_page"] is None
    for query, says in (
        (f"by=day,key&since={since}&page=2000-01-01", "of the report's range"),
        ("by=day,key&page=tomorrow", "page"),
        ("by=key&page=2026-01-01", "by day and another group"),
    ):
        status, bad = api(server, "GET", f"/api/costs?{query}")
        assert status == 400 and says in bad["error"]["message"], (query, bad)

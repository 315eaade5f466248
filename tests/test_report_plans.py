"""Cost reports read the days asked for through the rollups' primary key (day first), never the
whole table through an index on the grouped column (issue 18: half the time by user over 90 days);
the end users' rollups are keyed user first, so a report by user sums them in that order, unsorted."""

from __future__ import annotations

import pytest
from test_trace_batches import mixed

from stockyard.store import Store, costs
from stockyard.store.backends import SqliteBackend
from stockyard.store.traces import TraceRow


@pytest.mark.parametrize(
    ("by", "index"),
    [("key", "rollups_key_day"), ("project", "rollups_project_day")],
)
def test_reports_by_an_indexed_column_read_the_day_range_by_primary_key(tmp_path, by, index):
    plan = " / ".join(_plan_of_report(tmp_path, by))
    # The rollups are WITHOUT ROWID (schema 0013): the primary key is the table, no row lookups.
    assert index not in plan and "USING PRIMARY KEY (day>?)" in plan, plan


def _plan_of_report(
    tmp_path, by: str, top: int | None = None, marker: str = "GROUP BY", whole_range: bool = False
) -> list[str]:
    """EXPLAIN QUERY PLAN of the statement a report runs (60 mixed traces on a fresh SQLite file),
    from the first trace's day, or over all time with ``whole_range``."""
    backend = SqliteBackend(tmp_path / "stockyard.db")
    backend.open_and_migrate()
    store = Store(backend)
    try:
        rows = mixed(60)
        store.write(lambda conn: TraceRow.write_many(conn, rows))
        conn = store.read()
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        result = costs.report(conn, by, since=None if whole_range else rows[0].ts[:10], top=top)
        conn.set_trace_callback(None)
        assert result["total"]["requests"] == 60
        select = next(s for s in statements if s.lstrip().startswith(("SELECT", "WITH")) and marker in s)
        return [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + select)]
    finally:
        store.close()


def test_a_report_by_user_sums_the_users_rollups_in_key_order_without_a_sort(tmp_path):
    plan = _plan_of_report(tmp_path, "user")
    # Each user's rows come together: only the answer's groups are sorted (by spend), not the rows.
    assert plan == ["SCAN rollups_users", "USE TEMP B-TREE FOR ORDER BY"], plan


def test_a_top_report_reads_the_kept_users_rows_by_key(tmp_path):
    plan = _plan_of_report(tmp_path, "day,user", top=3, marker="WITH top")
    assert "SEARCH rollups_users USING PRIMARY KEY (end_user=? AND day>?)" in plan, plan  # the kept rows
    assert "USE TEMP B-TREE FOR GROUP BY" not in plan, plan
    # The days' totals over every user come from their own rollup (schema 0028), not a sort of them all.
    assert "SEARCH rollups_users_days USING PRIMARY KEY (day>?)" in plan, plan


@pytest.mark.parametrize("by", ["user", "key,user", "user,project"])
def test_a_report_by_user_over_whole_months_reads_the_monthly_rollups(tmp_path, by):
    """All time (or whole months): a row per user, key and project a month, not one a day."""
    plan = _plan_of_report(tmp_path, by, whole_range=True)
    assert _tables(plan) == {"rollups_users_months"}, plan
    ranked = _plan_of_report(tmp_path / "top", "day,user", top=3, marker="WITH top", whole_range=True)
    assert _tables(ranked) == {"rollups_users_months", "rollups_users", "rollups_users_days"}, ranked
    assert "SCAN rollups_users_months" in ranked, ranked  # the top users ranked over the months


def _tables(plan: list[str]) -> set[str]:
    return {word for step in plan for word in step.split() if word.startswith("rollups_")}


@pytest.mark.parametrize(("by", "field"), [("user", "end_user"), ("key", "key_id"), ("project", "project")])
def test_reports_by_an_indexed_column_on_both_stores(database, by, field):
    """The grouping expression gives the same groups and sums on SQLite and PostgreSQL."""
    database.open_and_migrate()
    store = Store(database)
    try:
        rows = mixed(60)
        store.write(lambda conn: TraceRow.write_many(conn, rows))
        expected: dict[str | None, int] = {}
        for r in rows:
            name = getattr(r, field) or None
            expected[name] = expected.get(name, 0) + (r.cost_uc or 0)
        result = costs.report(store.read(), by, since=rows[0].ts[:10])
        assert {row[by]: row["cost_uc"] for row in result["rows"]} == expected
        assert [row["cost_uc"] for row in result["rows"]] == sorted(expected.values(), reverse=True)
    finally:
        store.close()


def test_a_conversation_item_is_found_by_its_id_index(tmp_path):
    """A conversation's item by id (retrieve, delete, a page's ``after``) read through the
    ``(conversation_id, id)`` index. Was: ``ORDER BY seq`` made SQLite without statistics walk the
    whole conversation by its primary key (8.8 ms an item at 200,000 items, against 4 µs)."""
    from stockyard.conversations_api import _item_row

    backend = SqliteBackend(tmp_path / "stockyard.db")
    backend.open_and_migrate()
    store = Store(backend)
    try:
        conn = store.read()
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        assert _item_row(conn, "conv_x", "msg_x", "item") is None
        conn.set_trace_callback(None)
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + statements[-1])]
        assert plan == ["SEARCH conversation_items USING INDEX conversation_items_id (conversation_id=? AND id=?)"], (
            plan
        )
    finally:
        store.close()

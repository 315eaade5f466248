"""Cost reports read the days asked for through the rollups' primary key (day first), never the
whole table through an index on the grouped column (issue 18: half the time by user over 90 days)."""

from __future__ import annotations

import pytest
from test_trace_batches import mixed

from stockyard.store import Store, costs
from stockyard.store.backends import SqliteBackend
from stockyard.store.traces import TraceRow


@pytest.mark.parametrize(
    ("by", "index"),
    [("user", "rollups_users_user_day"), ("key", "rollups_key_day"), ("project", "rollups_project_day")],
)
def test_reports_by_an_indexed_column_read_the_day_range_by_primary_key(tmp_path, by, index):
    backend = SqliteBackend(tmp_path / "stockyard.db")
    backend.open_and_migrate()
    store = Store(backend)
    try:
        rows = mixed(60)
        store.write(lambda conn: TraceRow.write_many(conn, rows))
        conn = store.read()
        statements: list[str] = []
        conn.set_trace_callback(statements.append)  # the SQL as run, parameters filled in
        result = costs.report(conn, by, since=rows[0].ts[:10])
        conn.set_trace_callback(None)
        assert result["total"]["requests"] == 60
        select = next(s for s in statements if s.lstrip().startswith("SELECT") and "GROUP BY" in s)
        plan = " / ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + select))
        assert index not in plan and "sqlite_autoindex_rollups_" in plan and "(day>" in plan, plan
    finally:
        store.close()

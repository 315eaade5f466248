"""The shared count of the admin login throttle (``stockyard.api.logins.blocked_in``) on each store:
what it counts, the wait it gives, and that SQLite answers it from the partial index of 0022.
End to end across workers and replicas: tests/test_workers.py, tests/test_pg_replicas.py."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from stockyard.api.logins import FAILED_LOGIN, FAILED_LOGIN_LIMIT, blocked_in
from stockyard.store import db
from stockyard.times import to_iso

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def conn(database):
    database.open_and_migrate()
    connection = database.connect()
    yield connection
    connection.close()


def add(conn, target: str, ages_s: list[float], action: str = FAILED_LOGIN) -> None:
    """Audit rows of ``action`` for ``target``, each ``age`` seconds before NOW (their chain is not
    what this counts)."""
    start = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_log").fetchone()[0]
    for n, age in enumerate(ages_s, start + 1):
        conn.execute(
            "INSERT INTO audit_log (seq, ts, actor, action, target, details, prev_hash, hash, mac) "
            "VALUES (?, ?, 'admin-api:x', ?, ?, '{}', '', '', 'sha256')",
            (n, to_iso(NOW - timedelta(seconds=age)), action, target),
        )


def test_a_sender_is_blocked_by_its_own_failures_of_the_last_minute_only(conn):
    add(conn, "203.0.113.7", [50.0] + [5.0] * (FAILED_LOGIN_LIMIT - 2))  # one short of the limit
    add(conn, "203.0.113.7", [61.0, 90.0])  # out of the window
    add(conn, "203.0.113.8", [1.0] * 5)  # another sender
    add(conn, "203.0.113.7", [1.0] * 5, action="keys.create")  # not a failed login
    assert blocked_in(conn, "203.0.113.7", NOW) == 0.0
    add(conn, "203.0.113.7", [2.0])
    assert blocked_in(conn, "203.0.113.7", NOW) == pytest.approx(10.0)  # until the 50 s old one is 60 s old
    assert blocked_in(conn, "203.0.113.8", NOW) == 0.0
    assert blocked_in(conn, "2001:db8:1:2::/64", NOW) == 0.0


def test_sqlite_counts_a_senders_failures_from_the_partial_index(tmp_path):
    conn = db.connect(tmp_path / "plan.db")
    db.migrate(conn)
    plan = " ".join(
        str(row[3])
        for row in conn.execute(
            f"EXPLAIN QUERY PLAN SELECT COUNT(*), MIN(ts) FROM audit_log "
            f"WHERE action = '{FAILED_LOGIN}' AND target = ? AND ts > ?",
            ("203.0.113.7", to_iso(NOW)),
        )
    )
    conn.close()
    assert "audit_log_failed_logins" in plan, plan

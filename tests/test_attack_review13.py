"""Review 13: an attacker's and operator's look at the monthly end-user rollups (schema 0028), the
search index's update trigger (0029), the batch results readers cap and the audit text kept apart
on PostgreSQL."""

from __future__ import annotations

import json
import sqlite3

import clirun
import pytest
from conftest import TEST_STORE, mock_env

from stockyard import audit, vault


def _logged(database) -> tuple[object, bytes]:
    """A migrated store holding two keyed audit entries, and the chain key."""
    from stockyard.store import db

    conn = database.connect()
    db.migrate(conn)
    key = b"k" * 32
    conn.execute("BEGIN IMMEDIATE")
    for target in ("project:a", "project:b"):
        audit.append(conn, actor="cli:t", action="projects.budget.set", target=target, details={}, key=key)
    conn.execute("COMMIT")
    return conn, key


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("[" * 100_000, "nested past the parser's depth"),
        ("{not json", "not JSON"),
        (json.dumps({"target": "x" * 1_000_000}), "a megabyte of text that hashes as nothing written"),
        (json.dumps({"target": "project:b", "hash": "0" * 64}), "the chain's own hash, never kept apart"),
    ],
)
def test_a_bad_or_forged_audit_text_row_never_breaks_or_passes_verify(database, value, why):
    """A ``meta`` row ``audit_text:2`` that is not what the move wrote (only someone with the database
    can write one: no API names a meta key): reading and verifying the log never fail with a
    traceback (was: JSON nested deeper than the parser goes raised RecursionError out of list and
    verify), and text that is not what the chain hashed fails verify rather than being shown as it."""
    from stockyard.store import db

    conn, key = _logged(database)
    conn.execute("BEGIN IMMEDIATE")
    db.put_meta(conn, f"{audit.ORIGINAL_TEXT}2", value)
    conn.execute("COMMIT")
    shown = [e["target"] for e in audit.list_entries(conn, limit=10)]
    result = audit.verify(conn, key)
    if shown == ["project:a", "project:b"]:
        assert result.ok, (why, result)
    else:
        assert not result.ok and "entry 2 was altered" in result.reason, (why, result)
    conn.close()


def test_replicas_writing_one_users_month_at_once_keep_its_rollups_the_traces_sums(pg_url):
    """Replicas on one PostgreSQL write the same end user's month and day rows at once, each batch's
    users in its own order and across midnight: no write fails (no lost update, no deadlock — every
    write transaction takes the store's write lock, pg.WRITE_LOCK_KEY), and the monthly and daily
    rollups (schema 0028) are the traces' sums, to the micro-cent."""
    import random
    import threading

    from ops_helpers import sample_trace

    from stockyard.dburl import parse_postgres
    from stockyard.store import db
    from stockyard.store.backends import PostgresBackend
    from stockyard.store.traces import TraceRow

    backend = PostgresBackend(parse_postgres(pg_url, {}))
    conn = backend.connect()
    db.migrate(conn)
    midnight = 1_795_000_000_000 - 1_795_000_000_000 % 86_400_000
    failed: list[str] = []

    def replica(seed: int) -> None:
        rng, own = random.Random(seed), backend.connect()
        for _ in range(60):
            rows = [
                sample_trace(
                    midnight + rng.choice((-1, 1)) * rng.randrange(1, 10_000),
                    body=None,
                    end_user=f"u{rng.randrange(4)}",
                    key_id=f"k{rng.randrange(2)}",
                    cost_uc=rng.randrange(10**12),
                )
                for _ in range(rng.randrange(1, 10))
            ]
            try:
                own.execute("BEGIN IMMEDIATE")
                TraceRow.write_many(own, rows)
                own.execute("COMMIT")
            except Exception as exc:
                failed.append(repr(exc)[:200])
                own.execute("ROLLBACK")
        own.close()

    replicas = [threading.Thread(target=replica, args=(seed,)) for seed in range(3)]
    for t in replicas:
        t.start()
    for t in replicas:
        t.join(120)
    assert not failed, failed
    by_month = "SELECT substr(ts, 1, 7), key_id, end_user, SUM(cost_uc), COUNT(*) FROM traces GROUP BY 1, 2, 3"
    months = "SELECT month, key_id, end_user, cost_uc, requests FROM rollups_users_months"
    assert {tuple(r) for r in conn.execute(by_month)} == {tuple(r) for r in conn.execute(months)}
    by_day = "SELECT substr(ts, 1, 10), SUM(cost_uc), COUNT(*) FROM traces GROUP BY 1"
    days = "SELECT day, cost_uc, requests FROM rollups_users_days"
    got = {tuple(r) for r in conn.execute(days)}
    assert {tuple(r) for r in conn.execute(by_day)} == got and len(got) == 2
    conn.close()


def test_reports_by_user_over_months_in_a_language_ordered_postgresql(collated_conn):
    """The month and day ranges of the end users' reports are text compared in the database's order:
    in ICU's (a production PostgreSQL in en_US) as in bytes, every report by user over whole months,
    a range inside one month, a month with no data and the calendar's ends is the traces' sums."""
    from test_reports import check_users_over, month_edges, write_spend

    conn = collated_conn
    write_spend(conn, [(d, u, d % 4, 1000 * u + d) for d in range(0, 70, 4) for u in range(8)])
    for since, until in (
        (None, None),
        (month_edges(35, end=False), month_edges(35, end=True)),  # one whole month
        (month_edges(35, end=False)[:8] + "05", month_edges(35, end=False)[:8] + "20"),  # inside one month
        (month_edges(400, end=False), month_edges(400, end=True)),  # a month with no data
        ("0001-01-01", "9999-12-31"),
        (month_edges(60, end=False), None),
    ):
        check_users_over(conn, since, until)


def test_the_update_trigger_keeps_the_index_whole_through_any_change_of_a_body(tmp_path):
    """Schema 0029's trigger on a body changed through a Stockyard connection, a side at a time: to
    NULL, to a new body, to bytes that are no zlib stream, to text and a number (what a hand edit
    puts there), and back: FTS5's integrity-check passes after each, the words follow the body, and
    retention's delete afterwards leaves nothing behind."""
    from ops_helpers import sample_trace

    from stockyard.store import db, traces

    conn = db.connect(tmp_path / "s.db")
    db.migrate(conn)
    row = sample_trace(1_795_000_000_000, body=b'{"messages": "a narwhal"}')
    with conn:
        row.write(conn)

    def change(request, response) -> dict[str, list[str]]:
        with conn:
            conn.execute(
                "UPDATE trace_bodies SET request = ?, response = ? WHERE trace_id = ?", (request, response, row.id)
            )
        conn.execute("INSERT INTO trace_search (trace_search, rank) VALUES ('integrity-check', 1)")
        return {w: [t["id"] for t in traces.list_traces(conn, search=w)] for w in ("narwhal", "manatee", "dugong")}

    assert change(None, None) == {"narwhal": [], "manatee": [], "dugong": []}
    assert change(traces._pack(b"a manatee"), None) == {"narwhal": [], "manatee": [row.id], "dugong": []}
    assert change(b"not a zlib stream", b"\x78\x9c cut") == {"narwhal": [], "manatee": [], "dugong": []}
    assert change("removed", 12) == {"narwhal": [], "manatee": [], "dugong": []}
    both = change(traces._pack(b"a dugong"), traces._pack(b"a manatee"))
    assert both == {"narwhal": [], "manatee": [row.id], "dugong": [row.id]}
    with conn:
        conn.execute("DELETE FROM trace_bodies WHERE trace_id = ?", (row.id,))
    conn.execute("INSERT INTO trace_search (trace_search, rank) VALUES ('integrity-check', 1)")
    assert conn.execute("SELECT rowid FROM trace_search WHERE trace_search MATCH 'dugong OR manatee'").fetchall() == []
    conn.close()

"""Retention: old bodies and traces leave in small batches, rollups stay, and the file shrinks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from conftest import TEST_STORE, ServerProcess, base_env, open_database, wait_for
from ops_helpers import open_plain, sample_trace, table_rows

from stockyard import retention
from stockyard.retention import Retention
from stockyard.store import db

DAY_MS = 86_400_000
NOW_MS = int(time.time() * 1000)


def populate(path, old: int, middle: int, fresh: int, body_bytes: int = 1500) -> None:
    """``old`` traces 100 days back, ``middle`` 10 days back, ``fresh`` from the last hour."""
    conn = db.connect(path)
    fill(conn, old, middle, fresh, body_bytes)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def fill(conn, old: int, middle: int, fresh: int, body_bytes: int = 1500) -> None:
    """:func:`populate` on a connection to either store."""
    db.migrate(conn)
    conn.execute("BEGIN IMMEDIATE")
    for count, age_ms in ((old, 100 * DAY_MS), (middle, 10 * DAY_MS), (fresh, 0)):
        for i in range(count):
            sample_trace(NOW_MS - age_ms - i * 1000 - 1, body=os.urandom(body_bytes)).write(conn)
    conn.execute("COMMIT")


def file_bytes(conn) -> int:
    return conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]


def indexed(conn, word: str) -> int:
    """How many bodies the search index holds ``word`` for (SQLite's index keeps no text to count
    rows by: its words are read through fts5vocab; PostgreSQL's rows are counted)."""
    if db.dialect_of(conn) == "sqlite":
        conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.words USING fts5vocab(main, trace_search, 'row')")
        found = conn.execute("SELECT doc FROM temp.words WHERE term = ?", (word,)).fetchone()
        return found[0] if found else 0
    return conn.execute("SELECT count(*) FROM trace_search WHERE body LIKE ?", (f"%{word}%",)).fetchone()[0]


def run_to_the_end(conn, r: Retention) -> list[tuple[int, int]]:
    """Call the idle task until it is done; the rows each call deleted."""
    steps = []
    while True:
        before = (r.stats.traces_deleted, r.stats.bodies_deleted)
        more = r.run(conn)
        steps.append((r.stats.traces_deleted - before[0], r.stats.bodies_deleted - before[1]))
        if not more:
            return steps


def test_ages_delete_in_small_batches_keep_rollups_and_shrink_the_file(tmp_path):
    path = tmp_path / "r.db"
    populate(path, old=1200, middle=1200, fresh=300)
    conn = db.connect(path)
    rollups = table_rows(conn, "rollups_daily")
    size_before = file_bytes(conn)
    r = Retention(bodies_max_age_s=7 * 86400, traces_max_age_s=90 * 86400, clock=lambda: NOW_MS / 1000)
    steps = run_to_the_end(conn, r)
    assert all(t <= retention.BATCH_ROWS and b <= retention.BATCH_ROWS for t, b in steps), "small batches"
    assert r.stats.traces_deleted == 1200 and r.stats.bodies_deleted == 1200  # + 1200 bodies by cascade
    assert conn.execute("SELECT count(*) FROM traces").fetchone()[0] == 1500
    assert conn.execute("SELECT count(*) FROM trace_bodies").fetchone()[0] == 300
    oldest_body = conn.execute("SELECT min(t.ts_ms) FROM traces t JOIN trace_bodies b ON b.trace_id = t.id").fetchone()[
        0
    ]
    assert oldest_body > NOW_MS - 7 * DAY_MS
    assert table_rows(conn, "rollups_daily") == rollups, "rollups are never touched"
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] < retention.VACUUM_MIN_FREE_PAGES
    # What stays: 300 bodies and 1,500 traces, and the search index's delete markers for the bodies
    # that left, which FTS5 drops only as it merges its segments (the index holds no text: 0027).
    assert file_bytes(conn) < size_before * 0.45, (file_bytes(conn), size_before)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert os.path.getsize(path) < size_before * 0.45


def test_body_size_cap_deletes_the_oldest_bodies_first(tmp_path):
    path = tmp_path / "cap.db"
    populate(path, old=0, middle=0, fresh=800)
    conn = db.connect(path)
    cap = 400 * 1024
    r = Retention(bodies_max_bytes=cap)
    run_to_the_end(conn, r)
    kept = conn.execute("SELECT sum(length(request) + length(response)), min(trace_id) FROM trace_bodies").fetchone()
    assert 0 < kept[0] <= cap
    assert cap - kept[0] < 2 * (1500 + 100) * 2, "no more than needed is deleted"
    newest_gone = conn.execute(
        "SELECT max(id) FROM traces WHERE id NOT IN (SELECT trace_id FROM trace_bodies)"
    ).fetchone()[0]
    assert newest_gone < kept[1], "the newest bodies are the ones kept"
    assert conn.execute("SELECT count(*) FROM traces").fetchone()[0] == 800, "traces stay; only bodies go"
    conn.close()


def test_the_server_applies_retention_when_idle(pyz_path, cache_home, tmp_path):
    path = tmp_path / "stockyard.db"
    if TEST_STORE == "sqlite":
        populate(path, old=600, middle=600, fresh=50)  # a file made as the server makes one
    else:
        conn = open_database(path)
        fill(conn, old=600, middle=600, fresh=50)
        conn.close()
    env = {
        **base_env(cache_home),
        "STOCKYARD_RETENTION_BODIES": "7d",
        "STOCKYARD_RETENTION_TRACES": "90d",
        "STOCKYARD_BODIES_MAX_MB": "100",
    }
    srv = ServerProcess(pyz_path, path, env).start()
    try:
        wait_for(lambda: "retention: bodies 7d, traces 90d, bodies at most 100 MB" in srv.log, 5, "banner")
        wait_for(lambda: srv.db_rows("SELECT count(*) AS n FROM traces")[0]["n"] == 650, 20, "old traces deleted")
        wait_for(lambda: srv.db_rows("SELECT count(*) AS n FROM trace_bodies")[0]["n"] == 50, 20, "old bodies deleted")
        # a step's DELETE commits before its count is added: the counters may trail the rows a moment
        counted = (
            rb"^stockyard_retention_traces_deleted_total 600$",
            rb"^stockyard_retention_bodies_deleted_total 600$",
        )
        wait_for(lambda: all(re.search(c, srv.request("GET", "/metrics")[2], re.M) for c in counted), 10, "counters")
        if TEST_STORE == "sqlite":  # (no file to shrink on PostgreSQL: its autovacuum reuses the space)
            # the file shrinks in incremental-vacuum steps that follow the deletes: wait for the last one
            wait_for(
                lambda: srv.db_rows("PRAGMA freelist_count")[0]["freelist_count"] < retention.VACUUM_MIN_FREE_PAGES,
                20,
                "incremental vacuum",
            )
    finally:
        srv.stop()
    assert "Traceback" not in srv.log
    if TEST_STORE == "postgresql":
        return
    conn = open_plain(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] < retention.VACUUM_MIN_FREE_PAGES


@pytest.mark.parametrize(
    "name, value", [("STOCKYARD_RETENTION_TRACES", "forever"), ("STOCKYARD_BODIES_MAX_MB", "lots")]
)
def test_a_bad_retention_setting_stops_the_server_with_one_line(pyz_path, cache_home, tmp_path, name, value):
    r = subprocess.run(
        [sys.executable, str(pyz_path), "serve", "--port", "0", "--db", str(tmp_path / "x.db")],
        env={**base_env(cache_home), name: value},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and name in r.stderr and "Traceback" not in r.stderr


def test_stored_responses_leave_after_their_own_age_or_the_traces_whichever_is_sooner(tmp_path):
    """A key storing Responses API turns cannot grow the file for ever: 30 days by default."""
    conn = db.connect(tmp_path / "resp.db")
    db.migrate(conn)
    ages_days = (40, 20, 1)
    for i, days in enumerate(ages_days):
        conn.execute(
            "INSERT INTO responses (id, key_id, provider, created_at, passthrough) VALUES (?, 'k', 'openai', ?, 1)",
            (f"resp_{i}", NOW_MS - days * DAY_MS),
        )
    clock = lambda: NOW_MS / 1000  # noqa: E731

    def left(r: Retention) -> list[str]:
        while r.run(conn):
            pass
        return [row[0] for row in conn.execute("SELECT id FROM responses ORDER BY id")]

    assert left(Retention(clock=clock)) == ["resp_0", "resp_1", "resp_2"]  # nothing asked: all kept
    assert left(Retention(responses_max_age_s=retention.RESPONSES_MAX_AGE_S, clock=clock)) == ["resp_1", "resp_2"]
    sooner = Retention(responses_max_age_s=retention.RESPONSES_MAX_AGE_S, traces_max_age_s=7 * 86400, clock=clock)
    assert left(sooner) == ["resp_2"] and sooner.stats.responses_deleted == 1
    conn.close()


def test_conversations_leave_with_their_items_once_unchanged_for_the_responses_age(database):
    """The Conversations API's conversations: bounded like stored responses, by their last change
    (a conversation still in use is never cut short), and their items go with them."""
    database.open_and_migrate()
    conn = database.connect()
    conn.execute("BEGIN IMMEDIATE")
    for i, days in enumerate((40, 20, 1)):
        changed = NOW_MS - days * DAY_MS
        conn.execute(
            "INSERT INTO conversations (id, key_id, created_at, updated_at) VALUES (?, 'k', ?, ?)",
            (f"conv_{i}", NOW_MS - 90 * DAY_MS, changed),
        )
        conn.execute(
            "INSERT INTO conversation_items (conversation_id, seq, id, bytes, item) VALUES (?, 0, 'msg_1', 2, ?)",
            (f"conv_{i}", b"{}"),
        )
    conn.execute("COMMIT")
    r = Retention(responses_max_age_s=retention.RESPONSES_MAX_AGE_S, clock=lambda: NOW_MS / 1000)
    while r.run(conn):
        pass
    assert [row[0] for row in conn.execute("SELECT id FROM conversations ORDER BY id")] == ["conv_1", "conv_2"]
    items = conn.execute("SELECT conversation_id FROM conversation_items ORDER BY conversation_id").fetchall()
    assert [row[0] for row in items] == ["conv_1", "conv_2"] and r.stats.conversations_deleted == 1
    conn.close()


def test_a_passed_through_responses_item_records_leave_with_it(database):
    """The output item ids of a passed-through response (whose item references pass for its key
    alone) are bounded by its row: retention deleting the row deletes them (ON DELETE CASCADE)."""
    database.open_and_migrate()
    conn = database.connect()
    conn.execute("BEGIN IMMEDIATE")
    for i, days in enumerate((40, 1)):
        conn.execute(
            "INSERT INTO responses (id, key_id, provider, created_at, passthrough) VALUES (?, 'k', 'openai', ?, 1)",
            (f"resp_{i}", NOW_MS - days * DAY_MS),
        )
        for item in ("msg", "rs"):
            sql = "INSERT INTO response_items (item_id, response_id) VALUES (?, ?)"
            conn.execute(sql, (f"{item}_{i}", f"resp_{i}"))
    conn.execute("COMMIT")
    r = Retention(responses_max_age_s=retention.RESPONSES_MAX_AGE_S, clock=lambda: NOW_MS / 1000)
    while r.run(conn):
        pass
    items = conn.execute("SELECT item_id, response_id FROM response_items ORDER BY item_id").fetchall()
    assert [tuple(row) for row in items] == [("msg_1", "resp_1"), ("rs_1", "resp_1")]
    conn.close()


@pytest.mark.parametrize(("value", "seconds"), [(None, 30 * 86400.0), ("off", None), ("7d", 7 * 86400.0)])
def test_the_stored_responses_age_setting(value, seconds, tmp_path):
    from stockyard.config import load

    env = {"STOCKYARD_DB": str(tmp_path / "s.db"), **({"STOCKYARD_RETENTION_RESPONSES": value} if value else {})}
    assert load({}, env).retention_responses_s == seconds


def test_an_age_beyond_any_trace_deletes_no_trace_and_the_other_limits_still_apply(tmp_path):
    """``STOCKYARD_RETENTION_TRACES=99999999999999999999d`` is a valid duration: its cutoff, far
    before the epoch, did not fit an SQLite integer, so every idle step raised OverflowError (a
    log line each time) before the body and response limits were reached: they never ran."""
    path = tmp_path / "far.db"
    populate(path, old=30, middle=30, fresh=10)
    conn = db.connect(path)
    rollups = table_rows(conn, "rollups_daily")
    r = Retention(
        bodies_max_age_s=7 * 86400, traces_max_age_s=99999999999999999999 * 86400.0, clock=lambda: NOW_MS / 1000
    )
    run_to_the_end(conn, r)
    assert conn.execute("SELECT count(*) FROM traces").fetchone()[0] == 70
    assert conn.execute("SELECT count(*) FROM trace_bodies").fetchone()[0] == 10
    assert table_rows(conn, "rollups_daily") == rollups
    conn.close()


def test_retention_on_either_store_keeps_rollups_audit_and_batch_holds_and_empties_the_index(database):
    """On SQLite and PostgreSQL alike: old traces and bodies go (their search rows with them), and
    what must stay stays: the rollups (cost reports), the audit chain, batch ownership and holds."""
    database.open_and_migrate()
    conn = database.connect()
    conn.execute("BEGIN IMMEDIATE")
    for i in range(40):
        sample_trace(NOW_MS - 100 * DAY_MS - i * 1000, body=b'{"messages": "ancient words"}').write(conn)
    for i in range(5):
        sample_trace(NOW_MS - i * 1000, body=b'{"messages": "fresh words"}').write(conn)
    conn.execute(
        "INSERT INTO owned_objects (id, kind, key_id, provider, created_at, held_uc) VALUES (?, ?, ?, ?, ?, ?)",
        ("batch_old", "batch", "key_1", "openai", NOW_MS - 100 * DAY_MS, 5_000),
    )
    conn.execute("COMMIT")
    picture = lambda table: sorted(map(tuple, conn.execute(f"SELECT * FROM {table}")), key=repr)  # noqa: E731
    rollups, audit_rows = picture("rollups_daily"), picture("audit_log")
    r = Retention(bodies_max_age_s=7 * 86400, traces_max_age_s=90 * 86400, clock=lambda: NOW_MS / 1000)
    while r.run(conn):
        pass
    count = lambda table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: E731
    assert (count("traces"), count("trace_bodies"), indexed(conn, "words")) == (5, 5, 5)
    assert indexed(conn, "ancient") == 0 and indexed(conn, "fresh") == 5
    assert picture("rollups_daily") == rollups and picture("audit_log") == audit_rows
    assert conn.execute("SELECT held_uc FROM owned_objects WHERE id = 'batch_old'").fetchone()[0] == 5_000
    conn.close()

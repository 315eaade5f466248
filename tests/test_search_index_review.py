"""Review of the contentless search index (schema 0027): the index and the bodies never disagree so
that a search finds a trace whose body does not hold the words, and no body becomes undeletable."""

from __future__ import annotations

import time

from ops_helpers import sample_trace, schema_columns

from stockyard.retention import Retention
from stockyard.store import db, move
from stockyard.store import search as search_index
from stockyard.store import traces as trace_store

NOW_MS = int(time.time() * 1000)


def found(conn, text: str) -> list[str]:
    return [t["id"] for t in trace_store.list_traces(conn, search=text)]


def word_docs(conn) -> dict[str, int]:
    """Each word in the search index and how many rows hold it (fts5vocab reads the index itself)."""
    conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.review_words USING fts5vocab(main, trace_search, 'row')")
    return dict(conn.execute("SELECT term, doc FROM temp.review_words").fetchall())


def all_bodies_leave(conn) -> None:
    r = Retention(bodies_max_age_s=0.0)
    with conn:
        while r.run(conn):
            pass


def test_words_left_behind_by_a_body_never_find_a_later_body(tmp_path):
    """A body whose stored bytes no longer give back the indexed text (a damaged page, a hand edit)
    leaves its words in the contentless index: FTS5 can take out only the words it is told. Was: the
    next rowid was the highest a body names plus one, so once the newest bodies had left, a new body
    took that rowid — and the old words found it (another key's prompt finding this trace)."""
    conn = db.connect(tmp_path / "s.db")
    db.migrate(conn)
    old = sample_trace(NOW_MS - 60_000, body=b'{"messages": "a secret ocelot"}')
    with conn:
        old.write(conn)
        # The stored bytes change behind the index, as a damaged page changes them (a hand edit now
        # takes its words with it: the update trigger of schema 0029, out of the way here).
        conn.execute("DROP TRIGGER trace_bodies_change_search")
        conn.execute("UPDATE trace_bodies SET request = x'00ff00', response = NULL WHERE trace_id = ?", (old.id,))
    all_bodies_leave(conn)
    assert "ocelot" in word_docs(conn), "the words it could not hand back stay in the index"
    new = sample_trace(NOW_MS, body=b'{"messages": "a healthy zebra"}')
    with conn:
        new.write(conn)
    assert found(conn, "zebra") == [new.id]
    assert found(conn, "ocelot") == [], "the new body does not hold the word"
    assert found(conn, "secret") == []
    conn.execute("INSERT INTO trace_search (trace_search) VALUES ('integrity-check')")


def test_backfill_leaves_a_body_already_indexed_as_it_is(tmp_path):
    """Backfill marks over bodies already indexed (a copy from PostgreSQL brings the source's meta
    rows; a clock set back gives new ids below the mark). Was: each such body was indexed again under
    a new rowid, its old row left behind with its words, to be found by a later body taking that rowid."""
    conn = db.connect(tmp_path / "s.db")
    db.migrate(conn)
    rows = [sample_trace(NOW_MS - 60_000 + i, body=f'{{"messages": "margay {i}"}}'.encode()) for i in range(3)]
    with conn:
        trace_store.TraceRow.write_many(conn, rows)
        conn.execute("INSERT INTO meta (key, value) VALUES ('search_backfill_until', ?)", (rows[-1].id,))
    links_sql = "SELECT trace_id, search_rowid FROM trace_bodies ORDER BY trace_id"
    links = [tuple(r) for r in conn.execute(links_sql)]
    while search_index.backfill(conn):
        pass
    assert [tuple(r) for r in conn.execute(links_sql)] == links
    assert word_docs(conn)["margay"] == 3, "each body indexed once"
    all_bodies_leave(conn)
    assert word_docs(conn) == {}, "every row left with its body"
    new = sample_trace(NOW_MS, body=b'{"messages": "a kodkod"}')
    with conn:
        new.write(conn)
    assert found(conn, "margay") == []


def test_a_body_a_hand_edit_made_text_still_leaves_and_upgrades(tmp_path):
    """An operator scrubbing a body by hand in the sqlite3 shell (``SET request = 'removed'``) stores
    text, not a zlib stream. Was: stockyard_search_text raised TypeError, so 0027 could not upgrade
    the file (the server would not start) and at v27 that body could never leave (retention stuck)."""
    path = tmp_path / "v26.db"
    conn = db.connect(path)
    db.migrate(conn, upto=26)
    rows = [sample_trace(NOW_MS - 60_000 + i, body=b'{"messages": "a serval"}') for i in range(2)]
    with conn:
        with schema_columns(conn):
            trace_store.TraceRow.write_many(conn, rows, v28=False)
        conn.execute("UPDATE trace_bodies SET request = 'removed by hand' WHERE trace_id = ?", (rows[0].id,))
    db.migrate(conn)
    assert found(conn, "serval") == [rows[1].id, rows[0].id], "found by the side that still holds the word"
    assert found(conn, "removed") == [], "text that is no zlib stream is not indexed"
    with conn:
        conn.execute("UPDATE trace_bodies SET response = 'removed too' WHERE trace_id = ?", (rows[1].id,))
    r = Retention(bodies_max_age_s=0.0)
    with conn:
        while r.run(conn):
            pass
    assert r.stats.bodies_deleted == 2
    assert conn.execute("SELECT count(*) FROM trace_bodies").fetchone()[0] == 0


def test_a_copy_from_postgresql_is_indexed_once_with_no_backfill_left(pg_url, tmp_path):
    """migrate-store indexes every body in the target, so the source's backfill marks (a SQLite file
    moved mid-backfill) must not come along: PostgreSQL's backfill would index those bodies a second
    time, SQLite's (was) under new rowids with the old rows left behind."""
    from stockyard.dburl import parse_postgres
    from stockyard.store.backends import PostgresBackend

    path = tmp_path / "s.db"
    conn = db.connect(path)
    db.migrate(conn)
    rows = [sample_trace(NOW_MS - 60_000 + i, body=f'{{"messages": "jaguarundi {i}"}}'.encode()) for i in range(3)]
    with conn:
        trace_store.TraceRow.write_many(conn, rows)
        conn.execute("UPDATE trace_bodies SET search_rowid = NULL WHERE trace_id = ?", (rows[0].id,))
        conn.execute("INSERT INTO meta (key, value) VALUES ('search_backfill_until', ?)", (rows[0].id,))
    conn.close()
    target = PostgresBackend(parse_postgres(pg_url, {}))
    move.sqlite_to_postgres(path, target, secret=None, progress=lambda _: None)
    pg = target.connect()
    try:
        assert pg.execute("SELECT count(*) FROM meta WHERE key LIKE 'search_backfill_%'").fetchone()[0] == 0
        while search_index.backfill(pg):
            pass
        per_trace = pg.execute("SELECT trace_id, count(*) FROM trace_search GROUP BY trace_id").fetchall()
        assert sorted(tuple(r) for r in per_trace) == sorted((r.id, 1) for r in rows)
        pg.execute("INSERT INTO meta (key, value) VALUES ('search_backfill_until', ?)", (rows[-1].id,))
    finally:
        pg.close()
    move.postgres_to_sqlite(target, tmp_path / "back.db", secret=None, progress=lambda _: None)
    back = db.connect(tmp_path / "back.db")
    assert back.execute("SELECT count(*) FROM meta WHERE key LIKE 'search_backfill_%'").fetchone()[0] == 0
    assert word_docs(back)["jaguarundi"] == 3
    assert sorted(found(back, "jaguarundi")) == sorted(r.id for r in rows)

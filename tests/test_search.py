"""Full-text search over stored bodies: found within a second, redacted text never, gone with retention."""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest
from module_helpers import api, chat, put_module, server_fixture
from ops_helpers import sample_trace, schema_columns

from stockyard.retention import Retention
from stockyard.store import db
from stockyard.store import search as search_index
from stockyard.store import traces as trace_store

SECRET = "sk-proj-" + "Z9y8X7w6V5u4T3s2R1q0" * 2

server = server_fixture("search", never_logged=(SECRET,))


def search(server, text: str) -> list[str]:
    status, page = api(server, "GET", "/api/traces?" + urllib.parse.urlencode({"q": text}))
    assert status == 200, page
    return [t["id"] for t in page["data"]]


def found_within_a_second(server, text: str, trace_id: str) -> float:
    """Seconds from the answer until search finds ``trace_id`` (fails after one second)."""
    start = time.monotonic()
    while time.monotonic() - start < 1.0:
        if trace_id in search(server, text):
            return time.monotonic() - start
    raise AssertionError(f"{trace_id} not found by {text!r} within a second")


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_a_prompt_is_found_by_a_word_within_a_second(server):
    status, headers, _ = chat(server, messages=ask("please summarise the quarterly zebrafish migration report"))
    assert status == 200
    trace_id = headers["x-stockyard-trace-id"]
    found_within_a_second(server, "zebrafish", trace_id)
    assert search(server, "zebrafish quarterly") == [trace_id], "every word must appear"
    assert search(server, "zebrafish unicornish") == []
    assert trace_id in search(server, "mock"), "answers are searched too ('Hello from mock')"
    assert search(server, 'zebra" OR *') == [], "FTS operators in user text are plain words, not errors"
    cli = server.cli("traces", "--search", "zebrafish", "--json")
    assert cli.returncode == 0, cli.stderr
    assert [json.loads(line)["id"] for line in cli.stdout.splitlines()] == [trace_id]


def test_redacted_text_is_never_found(server):
    put_module(server, "redact", {"mode": "store"})
    try:
        status, headers, _ = chat(server, messages=ask(f"my narwhal key is {SECRET}"))
        assert status == 200
        trace_id = headers["x-stockyard-trace-id"]
        found_within_a_second(server, "narwhal", trace_id)
        assert search(server, SECRET) == []
        assert search(server, "Z9y8X7w6V5u4T3s2R1q0") == []
        assert trace_id in search(server, "REDACTED")
    finally:
        put_module(server, "redact", enabled=False)


@pytest.mark.parametrize("what", ["bodies", "traces"])
def test_retention_takes_text_out_of_the_index(tmp_path, what):
    conn = db.connect(tmp_path / "s.db")
    db.migrate(conn)
    now_ms = int(time.time() * 1000)
    old = sample_trace(now_ms - 10 * 86_400_000, body=b'{"messages": "an old axolotl"}')
    new = sample_trace(now_ms, body=b'{"messages": "a new axolotl"}')
    with conn:
        old.write(conn)
        new.write(conn)
    found = lambda: [t["id"] for t in trace_store.list_traces(conn, search="axolotl")]  # noqa: E731
    assert found() == [new.id, old.id]
    ages = {"bodies_max_age_s": 86_400.0} if what == "bodies" else {"traces_max_age_s": 86_400.0}
    r = Retention(**ages)
    with conn:
        while r.run(conn):
            pass
    assert found() == [new.id]
    assert linked(conn) == 1
    assert index_words(conn) == {"a": 1, "axolotl": 1, "messages": 1, "new": 1}, "the old words left the index too"
    conn.execute("INSERT INTO trace_search (trace_search) VALUES ('integrity-check')")


def steps_to_delete_bodies(conn, how_many: int) -> int:
    """SQLite virtual-machine steps (in thousands) that deleting ``how_many`` bodies takes, their
    search rows included: a count, not a time, so the machine's load does not move it."""
    counted = [0]

    def count() -> int:
        counted[0] += 1
        return 0

    conn.set_progress_handler(count, 1000)
    try:
        with conn:
            conn.execute(
                "DELETE FROM trace_bodies WHERE rowid IN (SELECT rowid FROM trace_bodies ORDER BY trace_id LIMIT ?)",
                (how_many,),
            )
    finally:
        conn.set_progress_handler(None, 0)
    return counted[0]


def filled(path, bodies: int):
    conn = db.connect(path)
    db.migrate(conn)
    now_ms = int(time.time() * 1000)
    with conn:
        trace_store.TraceRow.write_many(
            conn, [sample_trace(now_ms + i, body=f'{{"messages": "quokka {i}"}}'.encode()) for i in range(bodies)]
        )
    return conn


def test_a_body_leaving_takes_its_search_row_without_reading_the_whole_index(tmp_path):
    """Was: FTS5 cannot look its trace_id column up, so the delete trigger read the whole index for
    each body — a retention step of 500 bodies took 15 s with 20,000 indexed, holding the writer.
    Each body now names its search row (schema 0018): the work no longer grows with the index."""
    small, large = filled(tmp_path / "small.db", 200), filled(tmp_path / "large.db", 4000)
    few, many = steps_to_delete_bodies(small, 20), steps_to_delete_bodies(large, 20)
    assert many < 2 * few + 20, (few, many)  # was ~20× (the index is 20× larger)
    for conn, left in ((small, 180), (large, 3980)):
        assert linked(conn) == left
        assert index_words(conn)["quokka"] == left
        conn.execute("INSERT INTO trace_search (trace_search) VALUES ('integrity-check')")


def test_0018_links_the_bodies_stored_before_it_and_drops_search_rows_no_body_names(tmp_path):
    conn = db.connect(tmp_path / "v17.db")
    db.migrate(conn, upto=17)
    now_ms = int(time.time() * 1000)
    rows = [sample_trace(now_ms + i, body=f'{{"messages": "wombat {w}"}}'.encode()) for i, w in enumerate("abc")]
    with conn:
        for row in rows:
            with schema_columns(conn):
                row.write(conn, v18=False, v28=False)
        conn.execute("INSERT INTO trace_search (trace_id, body) VALUES (?, 'wombat duplicate')", (rows[0].id,))
        conn.execute("INSERT INTO trace_search (trace_id, body) VALUES ('tr_gone', 'wombat stray')")
    db.migrate(conn)
    assert linked(conn) == 3
    words = index_words(conn)
    assert words["wombat"] == 3 and "duplicate" not in words and "stray" not in words  # they went
    assert [t["id"] for t in trace_store.list_traces(conn, search="wombat")] == [r.id for r in rows[::-1]]
    with conn:
        conn.execute("DELETE FROM trace_bodies WHERE trace_id = ?", (rows[1].id,))
    assert index_words(conn)["wombat"] == 2 and "b" not in index_words(conn)
    new = sample_trace(now_ms + 9, body=b'{"messages": "wombat d"}')
    with conn:
        new.write(conn)
    assert linked(conn) == 3 and index_words(conn)["wombat"] == 3
    with conn:
        conn.execute("DELETE FROM trace_bodies WHERE trace_id = ?", (new.id,))
    assert "d" not in index_words(conn)
    conn.execute("INSERT INTO trace_search (trace_search) VALUES ('integrity-check')")


def linked(conn) -> int:
    """Bodies that name a search row."""
    return conn.execute("SELECT count(*) FROM trace_bodies WHERE search_rowid IS NOT NULL").fetchone()[0]


def index_words(conn) -> dict[str, int]:
    """Each word in the search index and how many bodies hold it."""
    conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.search_words USING fts5vocab(main, trace_search, 'row')")
    return dict(conn.execute("SELECT term, doc FROM temp.search_words").fetchall())


def test_the_index_keeps_words_only_and_search_still_needs_every_word(tmp_path):
    """Schema 0012: no positions (detail=none), so a word the tokenizer cuts in pieces is its
    pieces, anywhere in the body (as PostgreSQL's plainto_tsquery), never a phrase query."""
    conn = db.connect(tmp_path / "s.db")
    db.migrate(conn)
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'trace_search'").fetchone()[0]
    assert "detail = none" in sql and "columnsize = 0" in sql
    now_ms = int(time.time() * 1000)
    rows = [
        sample_trace(now_ms, body=b'{"model": "gpt-4o", "content": "Caf\xc3\xa9 au lait, sk-proj-abc"}'),
        sample_trace(now_ms + 1, body=b'{"model": "gpt-3", "content": "4o cafe"}'),
    ]
    with conn:
        for row in rows:
            row.write(conn)
    one, two = (r.id for r in rows)

    def ids(text: str) -> list[str]:
        return [t["id"] for t in trace_store.list_traces(conn, search=text)]

    assert ids("gpt-4o") == [two, one], "both hold gpt and 4o"
    assert ids("CAFE") == [two, one] and ids("café lait") == [one]
    assert ids("sk-proj-abc") == [one] and ids("sk_proj") == [one]
    assert ids("au-lait gpt-3") == []
    assert ids('"lait" NEAR(x) *') == [], "operators are plain words: near and x are in no body"
    assert ids("*** ---") == [], "text without a word finds nothing"
    assert ids("  ") == [two, one], "no text: no search"


def test_a_query_word_is_one_index_word(tmp_path):
    """Every word search_query cuts is a single token to the index's tokenizer, for every
    character Python calls a letter or digit: no query is ever a phrase (an error on detail=none)."""
    conn = db.connect(tmp_path / "t.db")
    spec = "tokenize = 'unicode61 remove_diacritics 2'"
    conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, {spec})")
    conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
    letters = (cp for cp in range(0x110000) if chr(cp).isalnum())  # any other character cuts a word
    words = {cp: w for cp in letters if search_index.query(w := f"a{chr(cp)}b") == f'"{w}"'}
    assert len(words) > 100_000
    conn.execute("BEGIN")  # one transaction (db.connect's connections autocommit: a commit a row took ~45 s)
    conn.executemany("INSERT INTO t (rowid, x) VALUES (?, ?)", words.items())
    conn.execute("COMMIT")
    tokens = dict(conn.execute("SELECT doc, count(*) FROM v GROUP BY doc").fetchall())
    assert [hex(cp) for cp in words if tokens.get(cp) != 1] == []


def test_bodies_stored_before_the_index_are_indexed_after_the_upgrade(tmp_path, monkeypatch):
    monkeypatch.setattr(search_index, "BACKFILL_ROWS", 3)  # several steps
    conn = db.connect(tmp_path / "old.db")
    db.migrate(conn, upto=8)  # before 0009: the search index
    now_ms = int(time.time() * 1000)
    old = [sample_trace(now_ms - i, body=f'{{"messages": "platypus {i}"}}'.encode()) for i in range(7)]
    conn.execute("BEGIN")
    for row in old:
        with schema_columns(conn):
            row.write(conn, v9=False, v28=False)
    conn.execute("COMMIT")
    db.migrate(conn)
    new = sample_trace(now_ms + 1, body=b'{"messages": "a newer platypus"}')
    with conn:
        new.write(conn)
    assert [t["id"] for t in trace_store.list_traces(conn, search="platypus")] == [new.id]
    steps = 1
    while search_index.backfill(conn):
        steps += 1
    assert steps == 3
    found = [t["id"] for t in trace_store.list_traces(conn, search="platypus")]
    assert sorted(found) == sorted([new.id, *(r.id for r in old)]), "each once"
    with conn:  # a backfilled body names its search row: it leaves with the body
        conn.execute("DELETE FROM trace_bodies WHERE trace_id = ?", (old[0].id,))
    assert index_words(conn)["platypus"] == 7 and "0" not in index_words(conn)
    assert conn.execute("SELECT count(*) FROM meta WHERE key LIKE 'search_backfill_%'").fetchone()[0] == 0
    assert search_index.backfill(conn) is False


def test_search_and_tag_filters_answer_alike_on_each_store(database):
    """The same rows, the same answers from SQLite (FTS5, json_each) and PostgreSQL (tsvector, jsonb)."""
    conn = database.connect()
    db.migrate(conn)
    now = int(time.time() * 1000)
    specs = [
        (b'{"content": "The Quarterly okapi report"}', "ana", {"team": "search", "feature": "summaries"}),
        (b'{"content": "an okapi, alone"}', "ben", {"team": "ads"}),
        (b'{"content": "zebra crossing"}', None, None),
    ]
    rows = [
        sample_trace(now + i, body=body, end_user=user, tags=json.dumps(tags) if tags else None)
        for i, (body, user, tags) in enumerate(specs)
    ]
    conn.execute("BEGIN IMMEDIATE")
    for row in rows:
        row.write(conn)
    conn.execute("COMMIT")

    def ids(**filters) -> list[str]:
        return [t["id"] for t in trace_store.list_traces(conn, **filters)]

    ana, ben, other = (r.id for r in rows)
    assert ids(search="okapi") == [ben, ana]
    assert ids(search="OKAPI quarterly") == [ana], "every word, any case"
    assert ids(search="okapi zebra") == []
    assert ids(search='okapi" OR *') == [], "operators in user text are plain words"
    assert ids(search="   ") == [ana, ben, other][::-1]
    assert ids(tag=("team", "ads")) == [ben]
    assert ids(tag=("feature", "summaries"), search="okapi") == [ana]
    assert ids(tag=("team", "nobody")) == []
    assert ids(user="ana", search="report") == [ana]
    conn.close()


def test_the_index_rebuilt_by_0012_finds_what_it_found(tmp_path):
    conn = db.connect(tmp_path / "v11.db")
    db.migrate(conn, upto=11)  # positions kept (detail=full)
    now_ms = int(time.time() * 1000)
    rows = [sample_trace(now_ms + i, body=f'{{"messages": "tapir {w}"}}'.encode()) for i, w in enumerate("ab")]
    with conn:
        for row in rows:
            with schema_columns(conn):
                row.write(conn, v18=False, v28=False)
    db.migrate(conn)
    after = {q: [t["id"] for t in trace_store.list_traces(conn, search=q)] for q in ("tapir", "tapir b", "c")}
    assert after == {"tapir": [r.id for r in rows[::-1]], "tapir b": [rows[1].id], "c": []}
    assert index_words(conn)["tapir"] == 2
    with conn:
        conn.execute("DELETE FROM trace_bodies WHERE trace_id = ?", (rows[0].id,))
    assert index_words(conn)["tapir"] == 1, "the delete trigger came back with the new table"


SENTENCE = "the vermilion quetzal sang eleven verses to a sleepy capybara"


def raw_file(path) -> bytes:
    """The database file and its write-ahead log, as bytes on disk."""
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def test_the_index_keeps_no_copy_of_the_text(tmp_path):
    """Schema 0027: FTS5 kept each body a second time, uncompressed (for a ~100 KB agent body most of
    what a trace added to the file, and a fifth of the proxy's CPU per request). The index now keeps
    its words only: the prompt is in the file compressed, and search still finds it."""
    path = tmp_path / "s.db"
    conn = db.connect(path)
    db.migrate(conn)
    body = json.dumps({"messages": [{"role": "user", "content": f"{SENTENCE}. " + "lorem ipsum " * 200}]})
    row = sample_trace(int(time.time() * 1000), body=body.encode())
    with conn:
        row.write(conn)
    assert [t["id"] for t in trace_store.list_traces(conn, search="quetzal capybara")] == [row.id]
    assert SENTENCE.encode() not in raw_file(path), "no plain copy of the text"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'trace_search%'")}
    assert "trace_search_content" not in tables
    with conn:
        conn.execute("DELETE FROM trace_bodies WHERE trace_id = ?", (row.id,))
    assert index_words(conn) == {}, "the delete trigger handed FTS5 the text it had indexed"
    conn.execute("INSERT INTO trace_search (trace_search) VALUES ('integrity-check')")


def test_a_body_that_no_longer_decompresses_still_leaves(tmp_path):
    """The delete trigger rebuilds the indexed text from the stored body: a body that does not
    decompress (a damaged page, a hand edit) must not stop retention for good. (The traces are a minute
    old: one made in the millisecond retention reads its clock is not older than "now".)"""
    conn = db.connect(tmp_path / "s.db")
    db.migrate(conn)
    rows = [
        sample_trace(int(time.time() * 1000) - 60_000 + i, body=b'{"messages": "a damaged ocelot"}') for i in range(2)
    ]
    with conn:
        for row in rows:
            row.write(conn)
        conn.execute("UPDATE trace_bodies SET request = x'00ff00' WHERE trace_id = ?", (rows[0].id,))
    r = Retention(bodies_max_age_s=0.0)
    with conn:
        while r.run(conn):
            pass
    assert r.stats.bodies_deleted == 2
    assert trace_store.list_traces(conn, search="ocelot") == []


def test_the_index_rebuilt_by_0027_from_the_bodies_finds_what_it_found(tmp_path):
    """0027 drops the index with its copy and indexes every linked body again from the body itself,
    so each row's words are exactly what the delete trigger will hand back."""
    path = tmp_path / "v26.db"
    conn = db.connect(path)
    db.migrate(conn, upto=26)
    now_ms = int(time.time() * 1000)
    bodies = [f'{{"messages": "{SENTENCE} {w} {"lorem ipsum " * 100}"}}' for w in ("aardvark", "bison")]
    rows = [sample_trace(now_ms + i, body=body.encode()) for i, body in enumerate(bodies)]
    with conn:
        for row in rows:
            with schema_columns(conn):
                row.write(conn, v28=False)
    assert SENTENCE.encode() in raw_file(path), "the old index kept its copy"
    conn.close()
    conn = db.connect(path)
    db.migrate(conn)
    queries = ("quetzal", "capybara bison", "cat")
    after = {q: [t["id"] for t in trace_store.list_traces(conn, search=q)] for q in queries}
    assert after == {"quetzal": [r.id for r in rows[::-1]], "capybara bison": [rows[1].id], "cat": []}
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert SENTENCE.encode() not in raw_file(path)
    with conn:
        conn.execute("DELETE FROM trace_bodies WHERE trace_id = ?", (rows[0].id,))
    assert index_words(conn)["quetzal"] == 1 and "aardvark" not in index_words(conn)
    new = sample_trace(now_ms + 9, body=b'{"messages": "quetzal d"}')
    with conn:
        new.write(conn)
    assert [t["id"] for t in trace_store.list_traces(conn, search="quetzal")] == [new.id, rows[1].id]
    conn.execute("INSERT INTO trace_search (trace_search) VALUES ('integrity-check')")


def test_a_body_changed_by_hand_takes_its_old_words_out_of_the_index_on_each_store(database):
    """Schema 0029: a secret scrubbed from a body by hand (an UPDATE) is searchable no longer. Was: the
    index kept the words the body had. SQLite indexes the new text in their place; PostgreSQL, whose
    index keeps text SQL cannot rebuild from a compressed body, takes the body out of the index."""
    from stockyard.store import Store

    database.open_and_migrate()
    store = Store(database)
    try:
        rows = [sample_trace(int(time.time() * 1000) + i, body=f'{{"messages": "a {w}"}}'.encode()) for i, w in
                enumerate(("quokka", "dingo"))]  # fmt: skip
        store.write(lambda conn: trace_store.TraceRow.write_many(conn, rows))
        store.write(
            lambda conn: conn.execute(
                "UPDATE trace_bodies SET request = ?, response = NULL WHERE trace_id = ?",
                (trace_store._pack(b'{"messages": "a wallaby"}'), rows[0].id),
            )
        )
        conn = store.read()
        hits = {q: [t["id"] for t in trace_store.list_traces(conn, search=q)] for q in ("quokka", "dingo", "wallaby")}
        sqlite = database.__class__.__name__ == "SqliteBackend"
        assert hits == {"quokka": [], "dingo": [rows[1].id], "wallaby": [rows[0].id] if sqlite else []}
    finally:
        store.close()

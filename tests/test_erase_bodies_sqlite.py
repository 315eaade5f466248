"""Erasing a trace's stored bodies, what SQLite's file keeps: the sqlite3 shell cannot delete a body
behind the search index, the erased text leaves the file and its WAL (the erase zeroes freed space),
and README's recipe takes the erased words out of FTS5's older segments. PostgreSQL has no such file:
the store-agnostic erase tests are tests/test_erase_bodies.py, which runs on both stores."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import TEST_STORE, ServerProcess, wait_for
from module_helpers import api, server_fixture
from test_erase_bodies import NOTHING_STORED, found, said
from test_erase_stored import TRANSLATED, sdk, start_stored, turn

pytestmark = pytest.mark.skipif(
    TEST_STORE == "postgresql", reason="SQLite only: what SQLite's file, its WAL and its FTS5 index keep"
)

server = server_fixture("erase-sqlite")


@pytest.fixture(scope="module")
def stored_server(pyz_path, cache_home, mock, tmp_path_factory):
    """A server that keeps Responses turns translated from Claude (test_erase_stored's)."""
    srv = start_stored(pyz_path, cache_home, mock, tmp_path_factory, "erase_stored_sqlite")
    yield srv
    srv.stop()


def test_the_sqlite3_shell_cannot_delete_a_body_behind_the_index(server):
    """A plain sqlite3 connection lacks stockyard_search_text: the delete trigger refuses, nothing changes."""
    kept = said(server, "a wombat in the shell")
    conn = sqlite3.connect(server.db)
    try:
        with pytest.raises(sqlite3.OperationalError, match="stockyard_search_text"):
            conn.execute("DELETE FROM trace_bodies WHERE trace_id = ?", (kept,))
        assert conn.execute("SELECT count(*) FROM trace_bodies WHERE trace_id = ?", (kept,)).fetchone()[0] == 1
    finally:
        conn.close()
    assert found(server, "wombat") == [kept]


def test_the_sqlite3_shell_cannot_change_a_body_behind_the_index(server):
    """Was: an UPDATE of a body in the shell went through and the index kept its old words, so a
    secret scrubbed by hand stayed searchable. Now it is refused as a DELETE is (schema 0029)."""
    kept = said(server, "an okapi in the shell")
    conn = sqlite3.connect(server.db)
    try:
        before = conn.execute("SELECT request FROM trace_bodies WHERE trace_id = ?", (kept,)).fetchone()[0]
        with pytest.raises(sqlite3.OperationalError, match="stockyard_search_text"):
            conn.execute("UPDATE trace_bodies SET request = zeroblob(8) WHERE trace_id = ?", (kept,))
        after = conn.execute("SELECT request FROM trace_bodies WHERE trace_id = ?", (kept,)).fetchone()[0]
        assert after == before
    finally:
        conn.close()
    assert found(server, "okapi") == [kept]


def test_a_body_changed_through_stockyards_connection_moves_its_words_in_the_index(tmp_path):
    """With the function (any Stockyard connection), the index follows the body: the old words
    find nothing, the new ones find the trace."""
    from ops_helpers import sample_trace

    from stockyard.store import db, traces

    conn = db.connect(tmp_path / "s.db")
    db.migrate(conn)
    row = sample_trace(1_795_000_000_000, body=b'{"messages": "a narwhal"}')
    with conn:
        row.write(conn)
    with conn:
        conn.execute(
            "UPDATE trace_bodies SET request = ?, response = ? WHERE trace_id = ?",
            (traces._pack(b'{"messages": "a manatee"}'), None, row.id),
        )
    hits = {q: [t["id"] for t in traces.list_traces(conn, search=q)] for q in ("narwhal", "manatee")}
    assert hits == {"narwhal": [], "manatee": [row.id]}
    conn.execute("INSERT INTO trace_search (trace_search) VALUES ('integrity-check')")
    conn.close()


def _file_bytes(server) -> bytes:
    """Everything SQLite keeps of the database on disk: the file and its WAL."""
    wal = server.db.with_name(server.db.name + "-wal")
    return server.db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def test_the_erased_text_leaves_the_database_file_and_its_wal(server):
    """Deleted rows leave their bytes in SQLite's freed space and old WAL frames until overwritten:
    an erase that only deletes leaves the secret readable with ``strings stockyard.db``. (The index
    keeps single words, never this phrase: see the next test for its words.)"""
    phrase = b"the vault key is zanzibarquokka8813"
    leaked = said(server, phrase.decode())
    for n in range(6):  # neighbours on its page: a page left with one row may be rebuilt whole
        said(server, f"a neighbouring note {n}")
    wait_for(lambda: phrase in _file_bytes(server), what="the secret on disk before the erase")
    assert api(server, "DELETE", f"/api/traces/{leaked}/body") == (
        200,
        {"id": leaked, "erased": True, **NOTHING_STORED},
    )
    wait_for(lambda: phrase not in _file_bytes(server), timeout=15, what="the secret gone from the file and WAL")


def test_the_readmes_recipe_takes_an_erased_word_out_of_the_index_pages(server):
    """FTS5 forgets an erased body's words at once (search, fts5vocab) but keeps their bytes in its
    older segments until it merges them; README's erase paragraph gives the merge that removes them."""
    word = b"xylophonemarmot4471"
    leaked = said(server, f"the code is {word.decode()}")
    assert api(server, "DELETE", f"/api/traces/{leaked}/body")[0] == 200
    wait_for(lambda: b"the code is " + word not in _file_bytes(server), timeout=15, what="the body's bytes gone")
    assert word in _file_bytes(server), "the index's segments still hold the word (else this test proves nothing)"
    conn = sqlite3.connect(server.db, isolation_level=None)
    try:
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("INSERT INTO trace_search(trace_search) VALUES ('optimize')")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    wait_for(lambda: word not in _file_bytes(server), timeout=15, what="the word gone from the file and WAL")


def _file_bytes(server: ServerProcess) -> bytes:
    wal = server.db.with_name(server.db.name + "-wal")
    return server.db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def test_the_erased_response_leaves_the_sqlite_file_and_its_wal(stored_server):
    server = stored_server
    """As an erased body does: the stored response's bytes (zlib-compressed in its row) are zeroed,
    not left in freed space for ``strings`` to find."""
    client = sdk(server)
    response_id, trace_id = turn(server, client, model=TRANSLATED, input="the tapir vault code is 99812077 " * 8)
    for n in range(6):  # neighbours on its page
        turn(server, client, model=TRANSLATED, input=f"a neighbouring turn {n}")
    [row] = server.db_rows("SELECT input_items, response FROM responses WHERE id = ?", (response_id,))
    stored = [bytes(row["input_items"]), bytes(row["response"])]
    wait_for(lambda: all(s in _file_bytes(server) for s in stored), what="the stored response on disk")
    assert api(server, "DELETE", f"/api/traces/{trace_id}/body")[0] == 200
    wait_for(
        lambda: not any(s in _file_bytes(server) for s in stored), timeout=15, what="its bytes gone from file and WAL"
    )

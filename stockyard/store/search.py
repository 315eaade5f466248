"""The search index over stored bodies: what text it holds for a body, writing and rebuilding it,
and user text as a query.

SQLite keeps it in the FTS5 table ``trace_search``, which since schema 0027 holds no copy of the
text (``content=''``): a ~100 KB agent body was stored three times (compressed, that copy, and its
words), and writing the copy was a fifth of the proxy's CPU per request (bench/README.md). Each
indexed body names its row (``trace_bodies.search_rowid``); search finds rowids and joins the
bodies by that link. FTS5 can take a row out of such a table only when told the text it indexed,
so the delete trigger asks :func:`stored_text` — registered on every connection as
``stockyard_search_text`` — to rebuild it from the stored body. That text must never change for a
stored body: a changed :func:`body_text` would leave old words behind in the index.

PostgreSQL keeps ``trace_search`` as a plain table of ``(trace_id, body)`` under a GIN index.
"""

from __future__ import annotations

import re
import sqlite3
import zlib
from typing import Any, Iterable

from .db import dialect_of, insert_many, put_meta

SEARCH_TEXT_FUNCTION = "stockyard_search_text"
INSERT = "INSERT INTO trace_search (trace_id, body) VALUES (?, ?)"
INSERT_LINKED = "INSERT INTO trace_search (rowid, trace_id, body) VALUES (?, ?, ?)"


def body_text(request: bytes | None, response: bytes | None) -> str:
    """The text the search index keeps for a stored body: request and response, as stored (a raw
    NUL byte, which PostgreSQL's text cannot hold, as a space: it separates words in both stores)."""
    return "\n".join(b.decode("utf-8", "replace") for b in (request, response) if b).replace("\x00", " ")


def stored_text(request: bytes | None, response: bytes | None) -> str:
    """:func:`body_text` of a body as ``trace_bodies`` keeps it (each side a zlib stream or NULL).

    A side that does not decompress counts as empty: the delete trigger calling this must not
    fail, or that body could never leave (retention would stop on it)."""
    return body_text(_inflate(request), _inflate(response))


def _inflate(data: Any) -> bytes | None:
    """A stored side's bytes; None for NULL, and for what is not a zlib stream: text or a number a
    hand edit in the sqlite3 shell put there (``SET request = 'removed'``) as well as damaged bytes."""
    if not data or not isinstance(data, bytes):
        return None
    try:
        return zlib.decompress(data)
    except zlib.error:
        return None


def register(conn: sqlite3.Connection) -> None:
    """Give an SQLite connection the function the search index's delete trigger calls."""
    conn.create_function(SEARCH_TEXT_FUNCTION, 2, stored_text, deterministic=True)


def index_bodies(conn: Any, texts: Iterable[tuple[str, str]]) -> None:
    """Add ``(trace_id, text)`` pairs of stored bodies to the search index (in the caller's
    transaction); on SQLite each body is linked to its new row."""
    texts = [(trace_id, text) for trace_id, text in texts if text]
    if not texts:
        return
    if dialect_of(conn) == "sqlite":
        linked = index_linked(conn, texts)
        links = [(rowid, trace_id) for trace_id, rowid in linked.items()]
        conn.executemany("UPDATE trace_bodies SET search_rowid = ? WHERE trace_id = ?", links)
    else:
        insert_many(conn, INSERT, texts)


# meta: the highest rowid the index has given out (store/move.py leaves it, with the backfill marks,
# to the source: a copy's index is its own).
LAST_ROWID = "search_rowid_last"
_NEXT_ROWID = (
    "SELECT max(coalesce((SELECT max(search_rowid) FROM trace_bodies), 0), "
    f"coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = '{LAST_ROWID}'), 0)) + 1"
)


def index_linked(conn: sqlite3.Connection, texts: list[tuple[str, str]]) -> dict[str, int]:
    """SQLite: add ``(trace_id, text)`` pairs to the search index under rowids chosen here, and
    return each trace id's rowid, for its body's ``search_rowid``.

    A rowid is never given out twice (the writer's transaction is ``BEGIN IMMEDIATE``, so no one
    else adds any meanwhile): a body whose stored bytes no longer give back the text it was indexed
    with (a damaged page, a hand edit) leaves its words behind in the index, which FTS5 cannot find
    without the text, and a later body under that rowid would be found by them. Hence after both
    the highest rowid a body names and the highest given out (:data:`LAST_ROWID`), which the
    highest a body names drops below when the newest bodies leave."""
    if not texts:
        return {}
    first = conn.execute(_NEXT_ROWID).fetchone()[0]
    conn.executemany(INSERT_LINKED, [(first + i, trace_id, text) for i, (trace_id, text) in enumerate(texts)])
    put_meta(conn, LAST_ROWID, str(first + len(texts) - 1))
    return {trace_id: first + i for i, (trace_id, _) in enumerate(texts)}


BACKFILL_ROWS = 200


def backfill(conn: sqlite3.Connection) -> bool:
    """One step of indexing bodies stored before the search index existed (a writer idle task).

    Walks ``trace_bodies`` by id up to the ``search_backfill_until`` mark the migration left,
    in its own small transaction; the marks go when it is done. True while there is more. On
    SQLite a body that already names its search row is left as it is (one stored after the mark
    with a clock set back): indexed again, its old row would stay behind with its words.
    """
    marks = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'search_backfill_%'").fetchall())
    until = marks.get("search_backfill_until")
    if until is None:
        return False
    conn.execute("BEGIN IMMEDIATE")
    try:
        linked = "search_rowid" if dialect_of(conn) == "sqlite" else "NULL"
        rows = conn.execute(
            f"SELECT trace_id, request, response, {linked} FROM trace_bodies WHERE trace_id > ? AND trace_id <= ? "
            "ORDER BY trace_id LIMIT ?",
            (marks.get("search_backfill_cursor", ""), until, BACKFILL_ROWS),
        ).fetchall()
        index_bodies(
            conn,
            [(trace_id, stored_text(request, response)) for trace_id, request, response, row in rows if row is None],
        )
        if len(rows) < BACKFILL_ROWS:
            conn.execute("DELETE FROM meta WHERE key LIKE 'search_backfill_%'")
        else:
            put_meta(conn, "search_backfill_cursor", rows[-1][0])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(rows) == BACKFILL_ROWS


# A word as FTS5's unicode61 tokenizer cuts it: a run of letters and digits. The New Tai Lue
# vowel signs and U+1CF2/3 are letters to Python's Unicode tables but separators to SQLite's.
_WORD = re.compile(r"[^\W_\u19b0-\u19c0\u19c8\u19c9\u1cf2\u1cf3]+")


def query(text: str) -> str:
    """User text as an FTS5 query: every word must appear. Each word is cut where the index's
    tokenizer cuts it (``gpt-4o`` is ``gpt`` and ``4o``, anywhere in the body) and quoted, so
    operators are plain words and no query is a phrase, which the index (``detail=none``,
    migration 0012) cannot answer. Text without a word (``***``) finds nothing, as on PostgreSQL."""
    words = _WORD.findall(text)
    if not words:
        return '""' if text.strip() else ""
    return " ".join(f'"{w}"' for w in words)


# Traces whose stored bodies hold every word: SQLite's FTS5 (unicode61 words, case-folded) finds
# the rows and the bodies that name them; PostgreSQL's 'simple' text search (lower-cased words, no
# stemming) reads its rows' text through the GIN index.
FILTER = {
    "sqlite": "t.id IN (SELECT b.trace_id FROM trace_search JOIN trace_bodies AS b"
    " ON b.search_rowid = trace_search.rowid WHERE trace_search MATCH ?)",
    "postgresql": "t.id IN (SELECT trace_id FROM trace_search"
    " WHERE to_tsvector('simple', coalesce(body, '')) @@ plainto_tsquery('simple', ?))",
}


def filter_arg(dialect: str, text: str) -> str | None:
    """The search text as the dialect's query argument (None: no search)."""
    if dialect == "sqlite":
        return query(text) or None
    return " ".join(text.split()) or None  # plainto_tsquery ANDs the words itself

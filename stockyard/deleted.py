"""What a key deleted through Stockyard, kept a day as that key's list cursors (``deleted_objects``,
migration 0040).

The SDKs page on from the last object a page gave (``after``, ``after_id``, ``before_id``), and a
client deleting each object as it lists them (``for f in client.files.list(): client.files.delete(f.id)``)
has deleted it by then: were the id no longer the key's, its next page would be the unknown cursor's
empty page (a conversation's items: a 400), and the walk would end at the first page. So a delete
keeps the id as its key's cursor, for cursors alone: ``owned_objects`` loses the row as before, so
a deleted object is not the key's to open, name, count, hold or bill, and another key's cursor is
no one's still.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

# A walk deleting what it lists asks its next page within seconds; a day spares a slow script.
DELETED_KEPT_MS = 24 * 3600 * 1000
# Marks older than that one delete removes at most, in its own write transaction: a day after a key
# deleted a million objects, the next delete would otherwise remove them all at once (the single
# writer stalled for seconds); each delete removing this many, the backlog still drains.
PRUNED_ROWS = 100
CONVERSATION_ITEM = "conversation_item"  # a Conversations API item's kind here (its place: the conversation)
# One mark, by the whole primary key (kind, place, id): one index probe, never a read of every mark of
# the kind (all keys' deletes of a day). A mark gives way to a row of its own kind naming the id again.
KEPT_SQL = (
    "SELECT seq FROM deleted_objects d WHERE kind = ? AND place = ? AND id = ? AND key_id = ? AND deleted_at >= ?"
    " AND NOT EXISTS (SELECT 1 FROM owned_objects o WHERE o.id = d.id AND o.kind = d.kind)"
)
_PRUNE_SQL = (
    "DELETE FROM deleted_objects WHERE rowid IN"
    " (SELECT rowid FROM deleted_objects WHERE deleted_at < ? ORDER BY deleted_at LIMIT ?)"
)


def keep_deleted(
    conn: sqlite3.Connection, object_id: str, kind: str, owner: str, place: str, seq: int | None = None
) -> None:
    """Inside the writer job that deletes it: keep an object as ``owner``'s list cursor (``place``:
    the provider it lived at, or a conversation item's conversation, with its ``seq``), and let go
    of up to ``PRUNED_ROWS`` of those kept longer than ``DELETED_KEPT_MS`` (by the index on the time)."""
    now = int(time.time() * 1000)
    conn.execute(
        "INSERT INTO deleted_objects (id, kind, key_id, place, seq, deleted_at) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (kind, place, id) DO UPDATE SET key_id = excluded.key_id, seq = excluded.seq,"
        " deleted_at = excluded.deleted_at",
        (object_id, kind, owner, place, seq, now),
    )
    conn.execute(_PRUNE_SQL, (now - DELETED_KEPT_MS, PRUNED_ROWS))


def kept_mark(conn: Any, object_id: str, kind: str, owner: str, place: str) -> Any | None:
    """The row (``seq``) of ``owner``'s deleted object ``object_id`` of ``kind`` at ``place`` kept as its
    cursor, if younger than ``DELETED_KEPT_MS`` (older ones wait for later deletes to go) and no key
    holds the id again (a Gemini file's name a client chose may be reused); else None."""
    since = int(time.time() * 1000) - DELETED_KEPT_MS
    return conn.execute(KEPT_SQL, (kind, place, object_id, owner, since)).fetchone()

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
CONVERSATION_ITEM = "conversation_item"  # a Conversations API item's kind here (its place: the conversation)


def keep_deleted(
    conn: sqlite3.Connection, object_id: str, kind: str, owner: str, place: str, seq: int | None = None
) -> None:
    """Inside the writer job that deletes it: keep an object as ``owner``'s list cursor (``place``:
    the provider it lived at, or a conversation item's conversation, with its ``seq``), and let go
    of those kept longer than ``DELETED_KEPT_MS`` (by the index on the time: a day's deletes at most)."""
    now = int(time.time() * 1000)
    conn.execute(
        "INSERT INTO deleted_objects (id, kind, key_id, place, seq, deleted_at) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (kind, place, id) DO UPDATE SET key_id = excluded.key_id, seq = excluded.seq,"
        " deleted_at = excluded.deleted_at",
        (object_id, kind, owner, place, seq, now),
    )
    conn.execute("DELETE FROM deleted_objects WHERE deleted_at < ?", (now - DELETED_KEPT_MS,))


def kept_places(conn: Any, object_id: str, kind: str, owner: str) -> list[Any]:
    """The rows (``place``, ``seq``) of ``owner``'s deleted object ``object_id`` of ``kind`` kept as
    its cursor, those younger than ``DELETED_KEPT_MS`` (older ones may wait for the next delete to
    go), and only while no key holds the id again (a Gemini file's name a client chose may be reused)."""
    sql = (
        "SELECT place, seq FROM deleted_objects d WHERE kind = ? AND id = ? AND key_id = ? AND deleted_at >= ?"
        " AND NOT EXISTS (SELECT 1 FROM owned_objects o WHERE o.id = d.id AND o.kind = d.kind)"
    )
    since = int(time.time() * 1000) - DELETED_KEPT_MS
    return conn.execute(sql, (kind, object_id, owner, since)).fetchall()

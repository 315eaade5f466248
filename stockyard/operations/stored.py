"""Erasing what the Responses and Conversations APIs keep, by an operator rather than the key that
made it: the turn a trace's request stored (with the erase of its bodies), any key's stored response,
any key's conversation.

A client key may delete only its own (``DELETE /v1/responses/{id}``, ``/v1/conversations/{id}``);
an operator who must erase personal data needs to reach every key's, and the text of a turn stays
in these rows when only its trace's bodies go. The rows a request stored name its trace
(``trace_id``, schema 0030). Every delete here zeroes the freed bytes on SQLite, as the erase of
bodies does, and is audited with ids and counts, never text.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from typing import Any, Iterator

from .. import audit
from ..conversations_api import STORED_ID
from ..store.db import dialect_of
from . import Operations, conflict, invalid, not_found

_STORED_ID = re.compile(STORED_ID)


@contextmanager
def zeroing_freed_space(conn: Any) -> Iterator[None]:
    """SQLite's ``secure_delete`` for these statements only: a deleted row's bytes (a body's cells,
    its overflow pages, the index's rewritten pages) are overwritten with zeros, not left in free
    space for ``strings stockyard.db`` to find. Only for erases: traces and retention keep SQLite's
    default (no extra writes); PostgreSQL has no such switch (its VACUUM reuses the space)."""
    if dialect_of(conn) != "sqlite":
        yield
        return
    was = conn.execute("PRAGMA secure_delete").fetchone()[0]
    conn.execute("PRAGMA secure_delete=ON")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA secure_delete={int(was)}")


def erase_turns(conn: Any, trace_ids: list[str]) -> tuple[list[str], dict[str, int]]:
    """Inside an erase's transaction (under :func:`zeroing_freed_space`): delete what these traces'
    requests stored — their stored responses (the rows hold the turn's input and output items, a
    passed-through one its output item ids) and the items their turns appended to conversations
    (each conversation's size made its items' again). Returns the response ids and, per
    conversation, how many items went."""
    marks = ", ".join("?" for _ in trace_ids)
    responses = sorted(r[0] for r in conn.execute(f"SELECT id FROM responses WHERE trace_id IN ({marks})", trace_ids))
    if responses:
        held = ", ".join("?" for _ in responses)
        conn.execute(f"DELETE FROM response_items WHERE response_id IN ({held})", responses)
        conn.execute(f"DELETE FROM responses WHERE id IN ({held})", responses)
    sql = (
        "SELECT conversation_id, COUNT(*), SUM(bytes) FROM conversation_items "
        f"WHERE trace_id IN ({marks}) GROUP BY conversation_id"
    )
    appended = {r[0]: (int(r[1]), int(r[2])) for r in conn.execute(sql, trace_ids)}
    if appended:
        conn.execute(f"DELETE FROM conversation_items WHERE trace_id IN ({marks})", trace_ids)
        now = int(time.time() * 1000)
        for conversation_id, (_, size) in sorted(appended.items()):
            sql = "UPDATE conversations SET bytes = bytes - ?, updated_at = ? WHERE id = ?"
            conn.execute(sql, (size, now, conversation_id))
    return responses, {conversation_id: n for conversation_id, (n, _) in sorted(appended.items())}


def check_id(value: object, what: str) -> str:
    """A stored response's or conversation's id as the APIs' paths take it, else a 400 naming it."""
    if not isinstance(value, str) or not _STORED_ID.fullmatch(value):
        shown = value[:60] if isinstance(value, str) else value
        raise invalid(f"not a {what} id: {shown!r} ({what} ids are 1 to 200 letters, digits, '_' or '-')", param="id")
    return value


def delete_response(ops: Operations, response_id: str) -> dict:
    """Delete any key's stored response (its items with it); 404 when there is none. A passed-through
    one is forgotten here (no key reaches it through Stockyard again); its provider keeps its own copy."""
    check_id(response_id, "response")

    def delete(conn: Any) -> None:
        with zeroing_freed_space(conn):
            conn.execute("DELETE FROM response_items WHERE response_id = ?", (response_id,))
            if not conn.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount:
                raise not_found(f"response {response_id!r}")

    _audited(ops, "responses.delete", "responses", {"id": response_id}, delete)
    return {"id": response_id, "object": "response", "deleted": True}


def delete_conversation(ops: Operations, conversation_id: str) -> dict:
    """Delete any key's conversation and its items; 404 when there is none."""
    check_id(conversation_id, "conversation")
    details: dict[str, Any] = {"id": conversation_id}

    def delete(conn: Any) -> None:
        with zeroing_freed_space(conn):
            sql = "DELETE FROM conversation_items WHERE conversation_id = ?"
            details["items"] = conn.execute(sql, (conversation_id,)).rowcount  # audited after this runs
            if not conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount:
                raise not_found(f"conversation {conversation_id!r}")

    _audited(ops, "conversations.delete", "conversations", details, delete)
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True, "items": details["items"]}


def _audited(ops: Operations, action: str, target: str, details: dict, apply: Any) -> None:
    try:
        ops.change(action, target, details, apply, config=False)
    except audit.AuditError as exc:  # keyed log and no (or the wrong) secret
        raise conflict(str(exc)) from None

"""Operator actions that change no configuration of their own: notes, forced reloads, erasing
stored bodies (and what their requests stored for the Responses API: ``operations.stored``).

Both shells (``POST /api/audit/note`` and ``stockyard audit note``; ``stockyard reload``)
call these, so validation and audit wording live in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .. import audit
from ..context import TRACE_ID
from . import Operations, conflict, invalid, not_found, read_config_version
from .stored import erase_turns, zeroing_freed_space

MAX_NOTE_CHARS = 2000
# Something that looks like an API key anywhere in free text (sk-…, sk_live_…, sk-ant-…).
_KEY_LIKE = re.compile(r"(?<![A-Za-z0-9])sk[-_][A-Za-z0-9_\-]{12,}")


def add_note(ops: Operations, text: object) -> audit.AuditEntry:
    """Append an operator note (say, a maintenance window) to the audit log."""
    if not isinstance(text, str) or not text.strip():
        raise invalid("note must be a non-empty string", param="note")
    text = text.strip()
    if len(text) > MAX_NOTE_CHARS:
        raise invalid(f"note is {len(text)} characters; the limit is {MAX_NOTE_CHARS}", param="note")
    if _KEY_LIKE.search(text) or (ops.secret and ops.secret in text):
        raise invalid(
            "a note must not contain a secret such as an API key; name a key by its id and last 4 characters instead",
            param="note",
        )
    try:
        return ops.audit_event("audit.note", "audit_log", {"note": text})
    except audit.AuditError as exc:  # keyed log and no (or the wrong) secret
        raise conflict(str(exc)) from None
    except ValueError as exc:  # the log's own guard against secrets in details
        raise invalid(str(exc), param="note") from None


def reload_config(ops: Operations) -> int:
    """Bump ``config_version`` (audited) so every running server rebuilds its configuration.

    For operators who changed what the configuration is built from outside Stockyard.
    Returns the new version.
    """
    try:
        ops.change("config.reload", "config", {}, lambda conn: None, config=True)
    except audit.AuditError as exc:  # keyed log and no (or the wrong) secret
        raise conflict(str(exc)) from None
    return read_config_version(ops.store.read())


MAX_ERASE = 1000  # trace ids in one erase (one transaction)


@dataclass
class Erased:
    """What an erase took: the traces (attempts' included) that had bodies, the stored responses
    their requests made, and how many items their turns had appended, per conversation."""

    bodies: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    conversation_items: dict[str, int] = field(default_factory=dict)


def check_trace_id(value: object) -> str:
    """A trace's id as Stockyard makes them (``context.TRACE_ID``), else a 400 naming it: for the
    erase and the admin API's trace routes (their ``check``, before a NUL is taken for an unknown name)."""
    if not isinstance(value, str) or not TRACE_ID.fullmatch(value):
        shown = value[:60] if isinstance(value, str) else value
        raise invalid(f"not a trace id: {shown!r} (ids look like tr_0190f3a1b2c3d4e5f6a7b8c9)", param="id")
    return value


def erase_bodies(ops: Operations, trace_ids: list[str]) -> Erased:
    """Delete the stored request and response bodies of these traces and of their failed attempts
    (an attempt keeps the provider's answer, which may quote the request) — a secret or personal data
    that reached them before the ``redact`` module was on — and what the same requests stored for
    the Responses and Conversations APIs, which hold the same text: the stored response (whoever's
    key made it) and the items its turn appended to a conversation (``stored.erase_turns``).

    The trace rows stay (tokens, cost, who sent it: the reports add up as before); the search index
    forgets the words with the body (its delete trigger, which needs the SQL function every
    Stockyard connection registers: the ``sqlite3`` shell cannot delete a body). One transaction,
    audited with the ids (and the responses' ids and the items' counts per conversation, when any);
    an id of no trace erases nothing (404)."""
    ids = list(dict.fromkeys(trace_ids))
    if not ids:
        raise invalid("name at least one trace id", param="id")
    if len(ids) > MAX_ERASE:
        raise invalid(f"{len(ids)} trace ids; at most {MAX_ERASE} at once", param="id")
    for ident in ids:
        check_trace_id(ident)
    marks = ", ".join("?" for _ in ids)
    details: dict[str, Any] = {"traces": ids}  # what was erased besides, added by erase() before it is audited

    def erase(conn) -> Erased:
        details.pop("responses", None), details.pop("conversation_items", None)  # a job run again starts afresh
        known = {r[0] for r in conn.execute(f"SELECT id FROM traces WHERE id IN ({marks})", ids)}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise not_found(f"trace {unknown[0]!r} (nothing was erased)")
        attempts = [r[0] for r in conn.execute(f"SELECT id FROM traces WHERE parent_id IN ({marks})", ids)]
        every = [*ids, *attempts]
        held = ", ".join("?" for _ in every)
        found = [r[0] for r in conn.execute(f"SELECT trace_id FROM trace_bodies WHERE trace_id IN ({held})", every)]
        with zeroing_freed_space(conn):
            if found:
                conn.execute(f"DELETE FROM trace_bodies WHERE trace_id IN ({held})", every)
            responses, items = erase_turns(conn, ids)
        if responses:
            details["responses"] = responses
        if items:
            details["conversation_items"] = items
        return Erased(sorted(found), responses, items)

    try:
        erased = ops.change("traces.erase_bodies", "trace_bodies", details, erase, config=False)
    except audit.AuditError as exc:  # keyed log and no (or the wrong) secret
        raise conflict(str(exc)) from None
    ops.store.checkpoint_now()  # the zeroed pages into the file itself now, not when a server gets to it
    return erased

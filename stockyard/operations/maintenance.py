"""Operator actions that change no configuration of their own: notes and forced reloads.

Both shells (``POST /api/audit/note`` and ``stockyard audit note``; ``stockyard reload``)
call these, so validation and audit wording live in one place.
"""

from __future__ import annotations

import re

from .. import audit
from . import Operations, conflict, invalid, read_config_version

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

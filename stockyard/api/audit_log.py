"""``/api/audit``: read the audit log, check its chain, publish its head, add operator notes."""

from __future__ import annotations

import re

from .. import audit
from ..operations import invalid, maintenance
from ..times import FORMAT_HELP, to_iso
from . import ApiRequest, Param, route

MAX_LIMIT = 1000
_HASH = re.compile(r"^[0-9a-f]{64}$")

NOTE_BODY = {
    "type": "object",
    "required": ["note"],
    "additionalProperties": False,
    "properties": {
        "note": {
            "type": "string",
            "minLength": 1,
            "maxLength": maintenance.MAX_NOTE_CHARS,
            "description": "free text, e.g. 'maintenance window: rotating keys'",
        }
    },
}


@route(
    "GET",
    "/api/audit",
    "Audit log entries in sequence order; page with next_after_seq",
    query=(
        Param("since", description=f"only entries at or after this time: {FORMAT_HELP}"),
        Param("after_seq", "integer", "only entries after this sequence number (default 0)"),
        Param("action", description="only this action, e.g. admin.auth_failed"),
        Param("limit", "integer", f"page size, 1 to {MAX_LIMIT} (default 100)"),
    ),
)
def list_audit(r: ApiRequest) -> dict:
    since = r.time_query("since")
    limit = r.int_query("limit", 100, 1, MAX_LIMIT)
    after_seq = r.int_query("after_seq", 0, 0, 2**62)
    rows = audit.list_entries(
        r.app.store.read(),
        since=to_iso(since) if since else None,
        after_seq=after_seq,
        limit=limit + 1,
        action=r.query.get("action") or None,
    )
    page = rows[:limit]
    return {"data": page, "next_after_seq": page[-1]["seq"] if len(rows) > limit else None}


@route(
    "GET",
    "/api/audit/verify",
    "Walk the hash chain and report the first broken entry",
    query=(Param("expect_head", description="a head hash recorded earlier; detects a truncated or rewritten tail"),),
)
def verify(r: ApiRequest) -> dict:
    expect = r.query.get("expect_head") or None
    if expect is not None and not _HASH.match(expect):
        raise invalid("expect_head must be a head hash: 64 lowercase hex characters", param="expect_head")
    return audit.verify_with_secret(r.app.store.read(), r.app.settings.encryption_key, expect).as_dict()


@route("GET", "/api/audit/head", "The newest entry's sequence number and hash, to record elsewhere")
def head(r: ApiRequest) -> dict:
    seq, hash_ = audit.head(r.app.store.read())
    return {"seq": seq, "hash": hash_}


@route(
    "POST",
    "/api/audit/note",
    "Add an operator note to the audit log (e.g. a maintenance window)",
    body=NOTE_BODY,
    status=201,
)
def note(r: ApiRequest) -> dict:
    body = r.json()
    extra = sorted(set(body) - {"note"})
    if extra:
        raise invalid(f'unknown field {extra[0]!r}; send {{"note": "..."}}', param=extra[0])
    return maintenance.add_note(r.ops(), body.get("note")).as_dict()

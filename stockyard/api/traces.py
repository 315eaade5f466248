"""``/api/traces``: recorded requests, newest first, with cursor pagination; one with bodies."""

from __future__ import annotations

import time

from ..context import TRACE_ID
from ..operations import invalid, not_found
from ..operations.maintenance import check_trace_id, erase_bodies
from ..store import traces as trace_store
from ..store.traces import iso_utc
from ..times import FORMAT_HELP, to_ms
from . import ApiRequest, Param, route

MAX_LIMIT = 500


def _cursor(value: str) -> str:
    if not TRACE_ID.fullmatch(value):
        raise invalid(
            "cursor must be the next_cursor of a previous page (a trace id like tr_0190f3a1b2c3d4e5f6a7b8c9)",
            param="cursor",
        )
    return value


def _tag(value: str) -> tuple[str, str]:
    name, sep, tag_value = value.partition(":")
    if not sep or not name:
        raise invalid("tag must be name:value, e.g. team:search", param="tag")
    return name, tag_value


@route(
    "GET",
    "/api/traces",
    "Recorded requests, newest first; page with next_cursor",
    query=(
        Param("since", description=f"only traces at or after this time: {FORMAT_HELP}"),
        Param("until", description="only traces before this time (same forms as since)"),
        Param("model", description="requested or served model name"),
        Param("provider", description="provider name, e.g. openai"),
        Param("status", "integer", "HTTP status returned to the client"),
        Param("key", description="client key id"),
        Param("outcome", description="ok, upstream_error, error, rejected, client_disconnected or stream_broken"),
        Param("user", description="end user (x-stockyard-user, OpenAI user, Anthropic metadata.user_id)"),
        Param("tag", description="a tag as name:value, e.g. team:search"),
        Param("q", description="words that must all appear in the stored request or response body (full-text search)"),
        Param("limit", "integer", f"page size, 1 to {MAX_LIMIT} (default 50)"),
        Param("cursor", description="next_cursor from the previous page"),
    ),
)
def list_traces(r: ApiRequest) -> dict:
    q = r.query
    since, until = r.time_query("since"), r.time_query("until")
    if since and until and until <= since:
        raise invalid("until must be later than since", param="until")
    limit = r.int_query("limit", 50, 1, MAX_LIMIT)
    cursor = _cursor(q["cursor"]) if q.get("cursor") else None
    rows = trace_store.list_traces(
        r.app.store.read(),
        limit=limit + 1,
        cursor=cursor,
        since_ms=to_ms(since) if since else None,
        until_ms=to_ms(until) if until else None,
        model=q.get("model") or None,
        provider=q.get("provider") or None,
        status=r.int_query("status", 0, 100, 599) or None,
        key=q.get("key") or None,
        outcome=q.get("outcome") or None,
        user=q.get("user") or None,
        tag=_tag(q["tag"]) if q.get("tag") else None,
        search=q.get("q") or None,
    )
    page = rows[:limit]
    return {"data": page, "next_cursor": page[-1]["id"] if len(rows) > limit else None}


def _trace_id(params: dict[str, str]) -> None:
    """The routes' ``check``: their ``{id}`` is a trace id, else a 400 naming it."""
    check_trace_id(params["id"])


@route("GET", "/api/traces/{id}", "One trace with its request and response bodies and retry attempts", check=_trace_id)
def get_trace(r: ApiRequest) -> dict:
    trace = trace_store.get_trace(r.app.store.read(), r.params["id"])
    if trace is None:
        raise not_found(f"trace {r.params['id']!r}")
    return trace


@route(
    "DELETE",
    "/api/traces/{id}/body",
    "Erase a trace's stored request and response bodies, and the response and conversation items its "
    "request stored (the trace stays)",
    check=_trace_id,
)
def erase_body(r: ApiRequest) -> dict:
    erased = erase_bodies(r.ops(), [r.params["id"]])
    return {
        "id": r.params["id"],
        "erased": bool(erased.bodies),
        "responses": erased.responses,
        "conversation_items": sum(erased.conversation_items.values()),
    }


@route(
    "GET",
    "/api/latency",
    "Latency percentiles of answered requests from the per-minute histograms (within 10%)",
    query=(
        Param("since", description=f"from this time (default: 24 hours ago): {FORMAT_HELP}"),
        Param("until", description="up to this time (default: now)"),
    ),
)
def latency(r: ApiRequest) -> dict:
    since, until = r.time_query("since"), r.time_query("until")
    until_ms = to_ms(until) if until else int(time.time() * 1000)
    since_ms = to_ms(since) if since else until_ms - 86_400_000
    if until_ms <= since_ms:
        raise invalid("until must be later than since", param="until")
    return {
        "since": iso_utc(since_ms),
        "until": iso_utc(until_ms),
        **trace_store.latency_percentiles(r.app.store.read(), since_ms, until_ms),
    }

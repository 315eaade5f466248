"""``/api/webhooks``: where events are sent, a test delivery, and the delivery log (the CLI's operations)."""

from __future__ import annotations

from ..operations import not_found
from ..operations import webhooks as webhook_ops
from ..webhooks import EVENTS, FORMATS, TEST_EVENT
from . import ApiRequest, Param, route
from .body import exact_json

_BODY = {
    "type": "object",
    "required": ["url", "events"],
    "properties": {
        "url": {"type": "string", "description": "http(s) URL the events are POSTed to"},
        "events": {"type": "array", "items": {"type": "string", "enum": [*EVENTS, "all"]}},
        "format": {"type": "string", "enum": list(FORMATS), "description": "json (signed event) or slack ({text})"},
        "expiry_days": {"type": "integer", "description": "key.expiring: keys expiring within this many days"},
        "error_rate_percent": {"type": "integer", "description": "error_rate.high: threshold"},
        "error_window_min": {"type": "integer", "description": "error_rate.high: window in minutes"},
        "error_min_requests": {"type": "integer", "description": "error_rate.high: fewest requests to judge"},
    },
}


@route("GET", "/api/webhooks", "Webhooks (never their secrets)")
def list_webhooks(r: ApiRequest) -> dict:
    return {"webhooks": webhook_ops.listing(r.app.store.read())}


@route(
    "POST",
    "/api/webhooks",
    "Add a webhook; the answer carries its signing secret, shown this once",
    body=_BODY,
    status=201,
)
def add_webhook(r: ApiRequest) -> dict:
    described, secret = webhook_ops.add(r.ops(), exact_json(r.req.body))
    return {**described, "secret": secret}


@route(
    "GET",
    "/api/webhooks/deliveries",
    "Delivery attempts, newest first",
    query=(Param("webhook", description="only this webhook's"), Param("limit", "integer", "1 to 500 (default 50)")),
)
def list_deliveries(r: ApiRequest) -> dict:
    rows = webhook_ops.deliveries(r.app.store.read(), r.query.get("webhook") or None, r.int_query("limit", 50, 1, 500))
    return {"deliveries": rows}


@route("GET", "/api/webhooks/{id}", "One webhook")
def get_webhook(r: ApiRequest) -> dict:
    return webhook_ops.get(r.app.store.read(), r.params["id"])


@route("DELETE", "/api/webhooks/{id}", "Remove a webhook (its delivery log stays)")
def remove_webhook(r: ApiRequest) -> dict:
    webhook_ops.remove(r.ops(), r.params["id"])
    return {"id": r.params["id"], "deleted": True}


@route("POST", "/api/webhooks/{id}/test", "Send a signed test event to one webhook now", status=202)
def test_webhook(r: ApiRequest) -> dict:
    hook_id = r.params["id"]
    webhook_ops.get(r.app.store.read(), hook_id)  # 404 for an unknown id
    if not any(h.id == hook_id for h in r.app.webhooks.hooks):
        raise not_found(f"webhook {hook_id!r} with a usable secret")
    event_id = r.app.webhooks.emit(TEST_EVENT, {"webhook_id": hook_id}, "a test event", only=hook_id)
    return {"event_id": event_id, "queued": event_id is not None}

"""``/api/prices``: the price table with operator overrides (the same operations as the CLI)."""

from __future__ import annotations

from ..operations import prices as price_ops
from ..pricing import UNITS
from . import ApiRequest, Param, route
from .body import exact_json

_RATE = {"type": "string", "description": 'USD per 1M tokens as decimal text, e.g. "0.15"'}


@route(
    "GET",
    "/api/prices",
    "Every priced model: rates in µ¢ and USD per 1M tokens, shipped or override",
    query=(Param("model", "string", "only models whose name contains this"),),
)
def list_prices(r: ApiRequest) -> dict:
    rows = price_ops.list_prices(r.app.store.read())
    wanted = r.query.get("model", "").lower()
    return {"prices": [p for p in rows if wanted in p["model"]]}


@route(
    "POST",
    "/api/prices",
    "Add or replace a model's price (audited)",
    body={
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string"},
            **{f: _RATE for f in price_ops.RATE_FIELDS},
            "unit": {"type": "string", "enum": list(UNITS), "description": "what input is per 1M of (default token)"},
        },
    },
)
def set_price(r: ApiRequest) -> dict:
    body = exact_json(r.req.body)
    model = body.pop("model", None)
    return price_ops.set_price(r.ops(), model, body)


@route("DELETE", "/api/prices/{model}", "Remove a price override (URL-encode a '/' in the model as %2F)")
def unset_price(r: ApiRequest) -> dict:
    return price_ops.unset_price(r.ops(), r.params["model"])

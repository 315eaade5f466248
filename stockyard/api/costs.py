"""``/api/costs``: the spend report from the daily rollups (the same report as ``stockyard costs``)."""

from __future__ import annotations

from ..errors import ProxyError
from ..store import costs
from . import ApiRequest, Param, route


@route("GET", "/api/costs", "Requests, tokens and exact cost grouped by day, model, provider, key or project",
       query=(Param("by", "string", "day (default), model, provider, key or project"),
              Param("since", "string", "first UTC day, inclusive (YYYY-MM-DD)"),
              Param("until", "string", "last UTC day, inclusive (YYYY-MM-DD)")))
def cost_report(r: ApiRequest) -> dict:
    try:
        return costs.report(r.app.store.read(), r.query.get("by") or "day", r.query.get("since") or None,
                            r.query.get("until") or None)
    except ValueError as exc:
        raise ProxyError(400, str(exc), code="invalid_value") from None

"""``/api/costs``: the spend report from the daily rollups (the same report as ``stockyard costs``)."""

from __future__ import annotations

import io
from urllib.parse import urlencode

from ..errors import ProxyError
from ..httpio import Response
from ..store import costs
from . import ApiRequest, Param, route


@route(
    "GET",
    "/api/costs",
    "Requests, tokens and exact cost grouped by day, model, provider, key, project, end user or tag",
    query=(
        Param("by", "string", "day (default), model, provider, key, project, user or tag:NAME; or two, e.g. day,model"),
        Param("since", "string", "first UTC day, inclusive (YYYY-MM-DD)"),
        Param("until", "string", "last UTC day, inclusive (YYYY-MM-DD)"),
        Param(
            "top",
            "integer",
            f"keep the N (1 to {costs.MAX_TOP}) groups that cost most over the range of the end user or tag "
            "(wherever it is in by), else of the last of by; the rest summed per other group (per day for "
            f'by=day,user and user,day) into one row named "{costs.OTHER}" with "other": true. A report by '
            f"user or by a tag asked without top keeps the {costs.USERS_TOP} that cost most, as "
            f'top={costs.USERS_TOP} does, and says "top_default": true',
        ),
        Param(
            "page",
            "string",
            "a report by day and another group answers whole days, at most "
            f"{costs.PAGE_ROWS:,} rows a page (a day with more alone), with has_more and the next_page "
            "(a day) to pass here for the next; each page totals its own rows. With format=csv the next "
            'page is in a Link header (rel="next")',
        ),
        Param("format", "string", "json (default) or csv: the same CSV as `stockyard costs --csv`"),
    ),
)
def cost_report(r: ApiRequest) -> dict | Response:
    fmt = r.query.get("format") or "json"
    if fmt not in ("json", "csv"):
        raise ProxyError(400, f"format must be json or csv, got {fmt[:20]!r}", param="format", code="invalid_value")
    top = r.int_query("top", 0, 1, costs.MAX_TOP) or None
    try:
        result = costs.report(
            r.app.store.read(),
            r.query.get("by") or "day",
            r.query.get("since") or None,
            r.query.get("until") or None,
            top=top,
            bounded=True,
            page=r.query.get("page") or None,
            page_rows=costs.PAGE_ROWS,
        )
    except ValueError as exc:
        raise ProxyError(400, str(exc), code="invalid_value") from None
    if fmt == "json":
        return result
    out = io.StringIO()
    costs.write_csv(result, out)
    more = result.get("next_page")
    link = {"Link": f'</api/costs?{urlencode({**r.query, "page": more})}>; rel="next"'} if more else {}
    return Response(200, out.getvalue().encode(), "text/csv; charset=utf-8", link)

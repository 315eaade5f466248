"""What a request costs: the price it is charged at, and the cost of each attempt from its usage.

The :class:`Pricer` holds the price-table snapshot (built-in prices with the operator's
overrides; swapped whole on reload). Costs are integer micro-cents (``pricing``).
"""

from __future__ import annotations

import logging

from .context import Attempt, RequestContext, Route
from .pricing import Price, PriceTable, Usage, cost_microcents

log = logging.getLogger("stockyard")

BILLABLE_WITHOUT_USAGE = ("ok", "client_disconnected", "stream_broken")  # an answer went out: estimate it


class Pricer:
    def __init__(self, table: PriceTable | None = None) -> None:
        self.table = table or PriceTable.load()

    def use(self, table: PriceTable) -> None:
        self.table = table

    def price_of(self, route: Route, asked: str) -> Price | None:
        """The price a request for ``asked`` (routed to ``route``) will be charged at."""
        table = self.table
        return table.lookup(route.model, route.provider.name) or table.lookup(asked, route.provider.name)

    def price(self, ctx: RequestContext, attempt: Attempt | None = None) -> None:
        """Cost of the request's current attempt (or of ``attempt``) from the provider's usage,
        before the modules' after hooks see the outcome. Never raises."""
        try:
            self._price(ctx, attempt or ctx.attempt)
        except Exception as exc:  # a pricing bug must not lose the trace
            log.error("pricing failed for %s: %s", ctx.trace_id, exc)

    def _price(self, ctx: RequestContext, a: Attempt) -> None:
        """An estimate only when no usage came back; a failed attempt is billed only if usage came back."""
        if ctx.cache_hit or a.provider is None or a.status == 0:
            return
        if a.status >= 400 and a.usage is None:
            return
        if ctx.endpoint in ("count_tokens", "input_tokens"):  # free upstream: nothing to bill
            return
        table = self.table
        model = a.served_model or a.upstream_model or ""
        price = table.lookup(model, a.provider.name) or table.lookup(a.upstream_model or "", a.provider.name)
        if a.usage is None:
            if a.outcome not in BILLABLE_WITHOUT_USAGE:
                return
            a.usage = Usage(prompt_tokens=max(1, len(ctx.raw) // 4), completion_tokens=len(a.response_body) // 4)
            a.usage_estimated = True
        if price is None:
            a.cost_status = "unknown"
            return
        a.cost_uc = cost_microcents(price, a.usage)
        a.cost_status = "estimate" if a.usage_estimated else "exact"

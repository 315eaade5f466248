"""``budget``: reserve a request's worst-case cost against its key's and project's budgets.

Before the request goes upstream its worst case (``Pricer.worst_case``: every choice
it asks for, at its output cap) is reserved in the server's :class:`~stockyard.budgets.Ledger`;
a request that would take a budget past its limit gets a 429 ``budget_exceeded`` and never
reaches the provider.
After it ends, the reservation settles to the real cost (``ctx.attempt.cost_uc`` plus the cost of
any failed attempt a provider billed, all priced before the after hooks run); an answer whose cost
is unknown all the same (a mode the OpenAI project's default served, with no price) spends the
whole hold (:func:`spent_uc`), never 0: its trace stays ``unknown``.

A model with no price cannot be held to a budget, so a budgeted key is refused such
models (403 ``model_not_priced``) rather than letting them through uncounted; set a
price with ``stockyard prices set``. A background response holds its worst case until it is
billed when it ends (``stockyard.background``); a streamed one is refused (403
``background_not_budgeted``: its stream bills it, and a cut stream would leave it running). For
the same reason as unpriced models it is refused OpenAI's dearer service tiers
(``service_tier_not_budgeted``) and audio whose answer reports no usage
(``response_format_not_budgeted``: text, srt, vtt; ``budgets.check_countable``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .. import estimate
from ..budgets import (
    BACKGROUND_HELD,
    Budget,
    BudgetExceeded,
    Hold,
    Ledger,
    budgets_for,
    check_countable,
    lowering_hint,
    scopes_of,
    unpriced_refusal,
)
from ..context import RequestContext
from ..errors import ProxyError
from ..loglimit import Throttle
from .base import Module

log = logging.getLogger("stockyard.budgets")
_UNREAD = Throttle()  # a lost database under a burst: said once a minute, not once a request
_UNPRICED = Throttle()  # every budgeted answer of a model served in a mode without a price

FREE_ENDPOINTS = ("count_tokens", "input_tokens")
# ctx.state keys of a budgeted request: its reservation, and the ``Cover`` holding its worst case
# (read by the proxy's ``budgeted``/``uncovered`` and by ``background.held``)
HELD, COVER = "budget", "budget.cover"


@dataclass
class Cover:
    """Room for a fallback (``proxy.counted`` calls it with the fallback's worst case): the request
    holds its worst case at its first model's price, and a dearer fallback first holds the
    difference too, or is skipped. The extra holds go when the request ends (its cost settles
    the first hold)."""

    ledger: Ledger
    budgets: list[Budget]
    held: int
    ts_ms: int
    extra: list[Hold] = field(default_factory=list)

    def __call__(self, worst: int) -> bool:
        if worst <= self.held:
            return True
        try:
            self.extra.append(self.ledger.reserve(self.budgets, worst - self.held, self.ts_ms))
        except Exception:  # over the budget, or its spend unreadable: not this fallback
            return False
        self.held = worst
        return True

    def release(self) -> None:
        for hold in self.extra:
            self.ledger.settle(hold, 0, (), self.ts_ms)


def held_by(cover: Cover | None) -> int:
    """The worst case a request holds (none without a budget)."""
    return cover.held if cover is not None else 0


def spent_uc(ctx: RequestContext, held: int) -> int:
    """What a budgeted request spends: its attempts' cost, or, when one cannot be priced, never
    less than its hold (``held``: the worst case held at admission, a dearer fallback's included):
    tokens without a price are not free for a budget. Its trace keeps cost unknown; what it spends
    beyond its known cost goes with the trace (``ctx.unpriced_spent_uc``: the most any of its budgets
    spent so), so a restart, which loads spend from the database, keeps it."""
    unpriced = estimate.unpriced_attempt(ctx)
    if unpriced is not None and held:
        model = unpriced.served_model or unpriced.upstream_model or ctx.routed_model or ctx.model or "?"
        where = f"{model}/{unpriced.served_mode}" if unpriced.served_mode else model
        _UNPRICED.say(
            log,
            logging.WARNING,
            "a budgeted answer of %s has no price: its budget spends the %d µ¢ it held; set one with "
            "`stockyard prices set %s --input USD --output USD` (per 1M tokens)",
            where,
            held,
            where,
        )
    spent = estimate.settled_uc(ctx, held)
    ctx.unpriced_spent_uc = max(ctx.unpriced_spent_uc, spent - estimate.billed_uc(ctx))
    return spent


class BudgetModule(Module):
    """Reserves each request's worst-case cost against its key's and project's budgets."""

    name = "budget"
    default_enabled = True  # the limits live on the keys: on with no row in the modules table

    def before(self, ctx: RequestContext) -> None:
        key = ctx.key
        if key is None or ctx.endpoint in FREE_ENDPOINTS:
            return
        services = self.services
        budgets = budgets_for(key, services.project_budgets())
        if not budgets:
            return
        assert ctx.route is not None  # resolved by the route step before this module
        model = ctx.routed_model or ctx.model or ""
        route = ctx.route
        priced = lambda mode: services.pricer.price_of(route, model, mode) is not None  # noqa: E731
        check_countable(ctx, "this key", priced, follows_background=True)
        found = services.pricer.worst_case(ctx, ctx.route, model, services.settings.default_max_tokens)
        if found is None:
            raise unpriced_refusal(services.pricer.unpriced_model(ctx, ctx.route, model), "on this key")
        amount = found
        try:
            ctx.state[HELD] = services.ledger.reserve(budgets, amount, ctx.ts_ms)
            ctx.state[COVER] = Cover(services.ledger, budgets, amount, ctx.ts_ms)
        except BudgetExceeded as exc:
            raise exc.error(lowering_hint(ctx)) from None
        except Exception as exc:  # the spend could not be read: refuse rather than guess
            _UNREAD.say(log, logging.ERROR, "budget spend for %s could not be loaded: %s", key.id, exc)
            raise ProxyError(
                503,
                "the budget's spend could not be read from the database; try again shortly",
                code="budget_unavailable",
            ) from None

    def check(self, ctx: RequestContext) -> None:
        """``before``'s refusal of a key (or project) whose budget is used up, holding nothing: for
        ``early.check_early``, before Stockyard reads the stored items a request names."""
        key = ctx.key
        if key is None or ctx.endpoint in FREE_ENDPOINTS:
            return
        budgets = budgets_for(key, self.services.project_budgets())
        try:
            used_up = self.services.ledger.used_up(budgets, ctx.ts_ms) if budgets else None
        except Exception:  # the spend could not be read: ``before`` answers that
            return
        if used_up is not None:
            raise used_up.error()

    def after(self, ctx: RequestContext) -> None:
        if ctx.key is None:
            return
        cover = ctx.state.pop(COVER, None)
        if cover is not None:
            cover.release()
        # every attempt's cost (its hold when one has no price); a background response left running
        # made its reservation spend as it was recorded with its hold (``stockyard.background``):
        # only what its answer cost (0) is left
        running = ctx.state.get(BACKGROUND_HELD, False)
        billed = estimate.billed_uc(ctx) if running else spent_uc(ctx, held_by(cover))
        hold = ctx.state.pop(HELD, None)
        self.services.ledger.settle(hold, billed, scopes_of(ctx.key), ctx.ts_ms, trace_id=ctx.trace_id)

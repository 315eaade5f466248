"""``userlimits``: budgets and rate limits per end user, for products that resell LLM features.

The end user is the one the request names (``x-stockyard-user``, OpenAI ``user``, Anthropic
``metadata.user_id``: ``stockyard.attribution``); a request that names none is not limited here.
The limits are this module's options, so they are set for everyone, per project or per key with
the usual ``overrides``::

    stockyard modules enable userlimits --set budget_usd=0.50 --set budget_period=day --set rpm=20
    {"budget_usd": "0.50", "overrides": {"key:key_123": {"budget_usd": "5", "rpm": 0}}}

Where the options come from is where a user's spend is counted: a key's override counts the
user's requests with that key, a project's override the user's requests in that project, the
base options the user's requests with every key. Money is held exactly like key budgets: the
request's worst case is reserved in the server's :class:`~stockyard.budgets.Ledger` under one
lock (so 100 concurrent requests against a budget for 10 admit exactly 10) and settles to the
real cost; spend survives restarts through ``rollups_users`` (and ``budget_unpriced``). A background
response holds its worst case until it is billed, recorded with it (``stockyard.background``), as a
key's budget holds it; a video create holds its known worst case so (:meth:`UserLimitsModule.hold_known`).
The rate limits are the
``ratelimit`` module's exact sliding windows, one per user.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from .. import estimate
from ..budgets import (
    BACKGROUND_HELD,
    PERIODS,
    Budget,
    BudgetExceeded,
    Hold,
    Ledger,
    check_countable,
    lowering_hint,
    unpriced_job_refusal,
    unpriced_refusal,
    user_budget,
)
from ..context import RequestContext
from ..errors import ProxyError
from ..loglimit import Throttle
from ..pricing import microcents_from_usd
from .base import Module, ModuleServices
from .budget import Cover, held_by, spent_uc
from .ratelimit import FREE_ENDPOINTS, Counted, RateLimited, admitted, correct_to_usage, limiter_for
from .schema import Field

log = logging.getLogger("stockyard.budgets")
# ctx.state keys of a request an end user's budget holds: (budget, reservation), and its ``Cover``
HELD, COVER = "userlimits.budget", "userlimits.cover"
_UNREAD = Throttle()  # a lost database under a burst: said once a minute, not once a request


def _usd(value: str) -> str:
    if value.strip():
        microcents_from_usd(value)  # ValueError with a clear message when it is not an amount
    return value.strip()


def unread_spend(exc: Exception) -> ProxyError:
    """The 503 for an end user's spend the database could not give (said in the log once a minute)."""
    _UNREAD.say(log, logging.ERROR, "end-user budget spend could not be loaded: %s", exc)
    return ProxyError(
        503, "the budget's spend could not be read from the database; try again shortly", code="budget_unavailable"
    )


@dataclass(frozen=True)
class KnownHold:
    """A known worst case (a video's) reserved on an end user's budget for work billed after the
    fact: recorded with the object it makes, whose transaction turns it into spend (``end_in``)
    until the object is billed; ``end(False)`` gives it back when no object was recorded."""

    budget: Budget
    held_uc: int
    reservation: Hold
    ledger: Ledger
    ts_ms: int

    def end_in(self, conn: Any) -> Callable[[], None]:
        """In the transaction that records the object: the reservation becomes the spend its hold is."""
        return self.ledger.settle_in(conn, self.reservation, self.held_uc, (self.budget.scope,), self.ts_ms)

    def end(self, created: bool) -> None:
        """No ``end_in`` ran: spent when the object was made all the same, else given back."""
        scopes = (self.budget.scope,) if created else ()
        self.ledger.settle(self.reservation, self.held_uc if created else 0, scopes, self.ts_ms)


@dataclass(frozen=True)
class UserLimits:
    within: str  # where the options come from: '*', 'key:<id>' or 'project:<name>'
    budget_uc: int | None
    period: str
    rpm: int | None
    tpm: int | None


class UserLimitsModule(Module):
    """Budgets (µ¢-exact reservations) and rpm/tpm per end user, per key, project or everyone."""

    name = "userlimits"
    summary = "budgets and rate limits per end user (the request's user), per key, project or everyone"
    schema = {
        "budget_usd": Field("str", "", 'each end user\'s budget in US dollars, like "0.50"; empty: none', check=_usd),
        "budget_period": Field("enum", "day", "the budget's period", choices=PERIODS),
        "rpm": Field("int", 0, "requests per minute per end user; 0: no limit", min=0, max=10_000_000),
        "tpm": Field("int", 0, "tokens per minute per end user; 0: no limit", min=0, max=10_000_000_000),
    }

    def __init__(self, services: ModuleServices) -> None:
        super().__init__(services)
        self.limiter = limiter_for(services)

    def configure(self, config: dict[str, Any], scoped: dict[str, dict[str, Any]]) -> None:
        """As the base class, but each options object knows the scope it came from."""
        self._options = (
            self._limits("*", config),
            {scope: self._limits(scope, {**config, **values}) for scope, values in scoped.items()},
        )

    def _limits(self, within: str, config: dict[str, Any]) -> UserLimits:
        budget = config.get("budget_usd") or ""
        return UserLimits(
            within,
            microcents_from_usd(budget) if budget else None,
            config.get("budget_period") or "day",
            config.get("rpm") or None,
            config.get("tpm") or None,
        )

    def compile(self, config: dict[str, Any]) -> UserLimits:
        return self._limits("*", config)

    def before(self, ctx: RequestContext) -> None:
        user = ctx.end_user
        if user is None or ctx.endpoint in FREE_ENDPOINTS:
            return
        limits: UserLimits = self.options(ctx)
        who = f"end user {user!r}"
        if limits.rpm or limits.tpm:
            tokens, media = self._tokens(ctx, limits)
            window = f"{limits.within}|{user}"
            try:
                ctx.state["userlimits.rate"] = (
                    window,
                    admitted(self.limiter, window, limits.rpm, limits.tpm, tokens, who),
                )
            except RateLimited as exc:
                raise exc.error(ctx, media) from None
        if limits.budget_uc is None:
            return
        assert ctx.route is not None  # resolved by the route step before this module
        model = ctx.routed_model or ctx.model or ""
        route = ctx.route
        pricer = self.services.pricer
        priced = lambda mode: pricer.price_of(route, model, mode) is not None  # noqa: E731
        check_countable(ctx, "this end user", priced, follows_background=True)
        amount = self.services.pricer.worst_case(ctx, ctx.route, model, self.services.settings.default_max_tokens)
        if amount is None:
            raise unpriced_refusal(self.services.pricer.unpriced_model(ctx, ctx.route, model), "per end user")
        budget = user_budget(limits.within, user, limits.budget_uc, limits.period)
        try:
            ctx.state[HELD] = (budget, self.services.ledger.reserve([budget], amount, ctx.ts_ms))
            ctx.state[COVER] = Cover(self.services.ledger, [budget], amount, ctx.ts_ms)
        except BudgetExceeded as exc:
            raise exc.error(lowering_hint(ctx)) from None
        except Exception as exc:  # the spend could not be read: refuse rather than guess
            raise unread_spend(exc) from None

    def hold_known(self, ctx: RequestContext, worst: int | None, what: str, hint: str) -> KnownHold | None:
        """For a call outside the chain that costs a known worst case (µ¢; None: no price), billed
        when its job ends (a video): the end user's rpm counted, and ``worst`` reserved on its budget,
        or the 429 (403 for no price) ``before`` gives. None: no end user, or no budget for it.
        A job uses no tokens: tpm is not asked. ``what`` and ``hint`` word the refusals."""
        user = ctx.end_user
        if user is None:
            return None
        limits: UserLimits = self.options(ctx)
        if limits.rpm:
            try:
                admitted(self.limiter, f"{limits.within}|{user}", limits.rpm, None, 0, f"end user {user!r}")
            except RateLimited as exc:
                raise exc.error(ctx) from None
        budget = self.budget_of(ctx)
        if budget is None:
            return None
        if worst is None:
            raise unpriced_job_refusal(what, "per end user")
        ledger = self.services.ledger
        try:
            return KnownHold(budget, worst, ledger.reserve([budget], worst, ctx.ts_ms), ledger, ctx.ts_ms)
        except BudgetExceeded as exc:
            raise exc.error(hint) from None
        except Exception as exc:  # the spend could not be read: refuse rather than guess, as ``before``
            raise unread_spend(exc) from None

    def check(self, ctx: RequestContext) -> None:
        """``before``'s refusal of an end user past its rpm or tpm, or with no budget left, counting
        and holding nothing (``early.check_early``)."""
        user = ctx.end_user
        if user is None or ctx.endpoint in FREE_ENDPOINTS:
            return
        limits: UserLimits = self.options(ctx)
        if limits.rpm or limits.tpm:
            tokens, media = self._tokens(ctx, limits)
            try:
                self.limiter.check(f"{limits.within}|{user}", limits.rpm, limits.tpm, tokens, f"end user {user!r}")
            except RateLimited as exc:
                raise exc.error(ctx, media) from None
        budget = self.budget_of(ctx)
        if budget is None:
            return
        try:
            used_up = self.services.ledger.used_up([budget], ctx.ts_ms)
        except Exception:  # the spend could not be read: ``before`` answers that
            return
        if used_up is not None:
            raise used_up.error()

    def count_started(self, ctx: RequestContext, asked: bool = False) -> Counted | None:
        """A Realtime response counted in its end user's rpm/tpm window now, as
        ``RateLimitModule.count_started`` counts it for the key (``asked``: admitted, or refused)."""
        user = ctx.end_user
        if user is None or ctx.endpoint in FREE_ENDPOINTS:
            return None
        limits: UserLimits = self.options(ctx)
        if not (limits.rpm or limits.tpm):
            return None
        window = f"{limits.within}|{user}"
        if not asked:
            return Counted(window, self.limiter.admit(window, None, None, 0))
        tokens = self._tokens(ctx, limits)[0]
        return Counted(window, self.limiter.admit(window, limits.rpm, limits.tpm, tokens, f"end user {user!r}"))

    def count_used(self, ctx: RequestContext, counted: Counted | None, tokens: int) -> None:
        """The ``tokens`` a request counted by :meth:`count_started` used, once known, in the window it
        was counted in (the options may name another by now: a key's override made meanwhile)."""
        if counted is not None:
            self.limiter.correct(counted.window, counted.entry, tokens)

    def budget_of(self, ctx: RequestContext) -> Budget | None:
        """The end user's budget a request counts against (None: it names no end user, or its
        options set no budget): for work billed after the fact, a Realtime session's responses."""
        user = ctx.end_user
        if user is None or ctx.endpoint in FREE_ENDPOINTS:
            return None
        limits: UserLimits = self.options(ctx)
        return None if limits.budget_uc is None else user_budget(limits.within, user, limits.budget_uc, limits.period)

    def _tokens(self, ctx: RequestContext, limits: UserLimits) -> tuple[int, int]:
        """What the request counts against the end user's tpm, and the part of it that is audio or
        images (``estimate.limited_tokens``, as the key's ``ratelimit``); (0, 0) without a tpm."""
        if not limits.tpm:
            return 0, 0
        services = self.services  # an image sent inline counted as the model's largest (Pricer.inline_each)
        return estimate.limited_tokens(ctx, services.settings.default_max_tokens, services.pricer.inline_each(ctx))

    def after(self, ctx: RequestContext) -> None:
        cover = ctx.state.pop(COVER, None)
        if cover is not None:
            cover.release()
        held = ctx.state.pop(HELD, None)
        # a background response left running made its reservation spend as it was recorded with its
        # hold (``stockyard.background``): only what its answer cost (0) is left
        running = ctx.state.get(BACKGROUND_HELD, False)
        if held is not None:
            budget, hold = held
            spent = estimate.billed_uc(ctx) if running else spent_uc(ctx, held_by(cover))
            self.services.ledger.settle(hold, spent, (budget.scope,), ctx.ts_ms, trace_id=ctx.trace_id)
        rate = ctx.state.pop("userlimits.rate", None)
        if rate is not None:
            window, entry = rate
            correct_to_usage(self.limiter, window, entry, ctx)

"""Budgets per key, per project and per end user: UTC periods, and the ledger that holds them
under concurrency.

The :class:`Ledger` lives in memory for the life of the server. A request reserves its
worst-case cost against every budget that applies to it, all at once under one lock
(spent + reserved + this ≤ limit, or refused); when it ends, the reservation settles to
the real cost. Nothing can slip between the check and the reservation, so a hundred
concurrent requests cannot walk past a budget.

The spend of a (budget, period) is loaded from ``rollups_daily`` (and ``budget_unpriced``: what
answers of unknown cost spent, their holds) the first time the period is used — through the writer
thread, so every trace already queued is counted — and kept up to date by settlements after that.
That is how a budget survives a restart. That is the SQLite store's ledger (one server per file).
On PostgreSQL every replica shares one ledger in the database instead (:mod:`stockyard.store.shared`);
the backend picks.
End users' budgets (``modules/userlimits.py``) read their spend from ``rollups_users``; an idle
end user is forgotten after a minute and reloaded when they come back.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from .context import RequestContext, claude_mode, openai_mode
from .errors import ProxyError
from .estimate import PRICED_AUDIO_FORMATS, runs_after_answer, unbounded_server_tools, unpriced_audio_format
from .imagegen import IMAGE_CALLS_UNCAPPED, tool_calls, uncapped
from .pricing import format_usd
from .webhooks import stable_id

if TYPE_CHECKING:
    from .operations import Operations
    from .store import Store

log = logging.getLogger("stockyard.budgets")

PERIODS = ("day", "month", "total")
_ALL_DAYS = ("", "9999-99-99")


def period_key(period: str, ts_ms: int) -> str:
    """The period an instant falls in: '2026-11-27', '2026-11' or 'total' (runs per request: no strftime)."""
    if period == "total":
        return "total"
    t = time.gmtime(ts_ms // 1000)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}" if period == "day" else f"{t.tm_year:04d}-{t.tm_mon:02d}"


def period_of(key: str) -> str:
    """The period a period key (:func:`period_key`) is of: 'total', a month's or a day's."""
    return "total" if key == "total" else ("month" if len(key) == 7 else "day")


def period_days(period: str, key: str) -> tuple[str, str]:
    """Rollup days [start, end) of a period key, as stored text."""
    if period == "total":
        return _ALL_DAYS
    if period == "day":
        day = date.fromisoformat(key)
        return key, (day + timedelta(days=1)).isoformat()
    year, month = (int(p) for p in key.split("-"))
    nxt = date(year + month // 12, month % 12 + 1, 1)
    return f"{key}-01", nxt.isoformat()


def seconds_left(period: str, ts_ms: int) -> int | None:
    """Seconds until the period of ``ts_ms`` ends (None for 'total', which never does)."""
    if period == "total":
        return None
    _, end = period_days(period, period_key(period, ts_ms))
    end_ms = int(datetime.fromisoformat(end).replace(tzinfo=timezone.utc).timestamp() * 1000)
    return max(1, -(-(end_ms - ts_ms) // 1000))


def spent_uc(conn: sqlite3.Connection, scope: str, period: str, key: str) -> int:
    """Spend of a scope ('key:<id>', 'project:<name>' or an end user's, see :func:`user_budget`)
    in one period: the rollups' known costs, and what answers of unknown cost spent beyond them
    (``budget_unpriced``: their holds), which the rollups cannot hold."""
    kind, _, name = scope.partition(":")
    if kind == "user":
        return _user_spent_uc(conn, name, period, key)
    column = {"key": "key_id", "project": "project"}[kind]
    start, end = period_days(period, key)
    where = f"WHERE {column} = ? AND day >= ? AND day < ?"
    known = conn.execute(f"SELECT COALESCE(SUM(cost_uc), 0) FROM rollups_daily {where}", (name, start, end))
    unpriced = conn.execute(f"SELECT COALESCE(SUM(spent_uc), 0) FROM budget_unpriced {where}", (name, start, end))
    return int(known.fetchone()[0]) + int(unpriced.fetchone()[0])


def _user_spent_uc(conn: sqlite3.Connection, name: str, period: str, key: str) -> int:
    """An end user's spend within a key, a project or everything ('key:<id>|<user>', …, '*|<user>'):
    ``rollups_users``' known costs and ``budget_unpriced``'s spend beyond them."""
    within, _, user = name.partition("|")
    kind, _, value = within.partition(":")
    start, end = period_days(period, key)
    where = "WHERE end_user = ? AND day >= ? AND day < ?"
    args = [user, start, end]
    if kind in ("key", "project"):
        where += f" AND {'key_id' if kind == 'key' else 'project'} = ?"
        args.append(value)
    known = conn.execute(f"SELECT COALESCE(SUM(cost_uc), 0) FROM rollups_users {where}", args).fetchone()[0]
    unpriced = conn.execute(f"SELECT COALESCE(SUM(spent_uc), 0) FROM budget_unpriced {where}", args).fetchone()[0]
    return int(known) + int(unpriced)


def batch_held_uc(conn: sqlite3.Connection, scope: str) -> int:
    """µ¢ held by the unbilled batches of a key (``key:<id>``) or of a project's keys when they
    started (``project:<name>``): each its worst case, from its start until it is billed, deleted or
    left by the batch watch (``Ownership.expire_holds``); an end user's (``user:…``), what their
    unbilled background responses hold on that budget."""
    kind, _, name = scope.partition(":")
    if kind == "user":
        sql = "SELECT COALESCE(SUM(held_user_uc), 0) FROM owned_objects WHERE billed = 0 AND held_user = ?"
        return int(conn.execute(sql, (scope,)).fetchone()[0])
    if kind not in ("key", "project"):
        return 0
    owners = "key_id = ?" if kind == "key" else "held_project = ?"  # the project when the batch started
    sql = f"SELECT COALESCE(SUM(held_uc), 0) FROM owned_objects WHERE billed = 0 AND held_uc > 0 AND {owners}"
    return int(conn.execute(sql, (name,)).fetchone()[0])


def ledger_spend_uc(conn: sqlite3.Connection, budget: Budget, period_key: str) -> int:
    """What a ledger counts as spent in a budget period when it first loads it: the rollups'
    spend plus what the scope's unbilled batches hold. A batch's worst case counts as spent from
    its start (``App.check_batch_budget``) until it is billed, which settles its cost minus that
    hold — so requests cannot spend what a running batch may still cost."""
    return spent_uc(conn, budget.scope, budget.period, period_key) + batch_held_uc(conn, budget.scope)


@dataclass(frozen=True)
class Budget:
    scope: str  # key:<id> or project:<name>
    label: str  # for people: "key 'ci-bot'", "project 'web'"
    limit_uc: int
    period: str  # day, month or total

    def describe(self) -> str:
        per = "in total" if self.period == "total" else f"per {self.period}"
        return f"{self.label} budget of {format_usd(self.limit_uc, 2)} {per}"


@dataclass
class _Entry:
    spent: int
    reserved: int = 0
    touched: float = field(default_factory=time.monotonic)  # last reserved or settled


USER_SCOPE = "user:"
IDLE_FORGET_S = 60.0  # an idle end user's spend is reloaded from the rollups after this
PRUNE_FROM = 1024  # scopes held before idle end users are looked for


@dataclass
class Hold:
    """One request's reservation: (budget, period key, amount) for every budget it touched."""

    parts: list[tuple[Budget, str, int]] = field(default_factory=list)
    # PostgreSQL's shared ledger: the generation of the lease each part was reserved in (SharedLedger)
    leases: dict[tuple[str, str], int] = field(default_factory=dict)


LOWER_HINT = "lower max_tokens or n, or raise the budget"  # what a refused client can do to hold less


def lowering_hint(ctx: RequestContext) -> str:
    """What a budget's refusal tells the client to lower: ``max_tool_calls`` too when the image tool
    is held at its uncapped count of images (the largest part of such a hold, ~$2.50)."""
    if uncapped(ctx.body) and tool_calls(ctx.body):
        return (
            f"lower max_tokens or n, set max_tool_calls (without it the image_generation tool is held at "
            f"{IMAGE_CALLS_UNCAPPED} images), or raise the budget"
        )
    return LOWER_HINT


@dataclass
class BudgetExceeded(Exception):
    budget: Budget
    period_key: str
    spent: int
    reserved: int
    amount: int
    ts_ms: int

    def error(self, hint: str = LOWER_HINT, partial: str | None = None) -> ProxyError:
        """The 429 the client gets, in its own dialect; ``hint``: what the client can do
        (:func:`lowering_hint` names what its request holds most of); ``partial``: what ``amount``
        counts when it is not the whole request (a batch refused at its first requests: at least it)."""
        b = self.budget
        fits = self.spent + self.amount <= b.limit_uc  # only requests in flight stood in the way
        if self.reserved:
            held = f", {format_usd(self.reserved, 2)} held by requests in flight"
        else:  # (on PostgreSQL the row is read again after the refused hold: they may have ended since)
            held = ", the rest held by requests in flight when it was refused" if fits else ""
        cost = f"up to {format_usd(self.amount, 2)}"
        if partial is not None:
            cost = f"at least {format_usd(self.amount, 2)}, {partial}"
        text = (
            f"budget exceeded: the {b.describe()} allows no more: {format_usd(self.spent, 2)} spent{held}, "
            f"and this request may cost {cost} ({hint})"
        )
        headers: dict[str, str] = {}
        if fits:
            headers["Retry-After"] = "1"  # only requests in flight stand in the way
        else:
            headers["x-should-retry"] = "false"  # the OpenAI and Anthropic SDKs honour this
            wait = seconds_left(b.period, self.ts_ms)
            if wait is not None:
                headers["Retry-After"] = str(wait)
        return ProxyError(429, text, code="budget_exceeded", type="budget_exceeded", headers=headers)


AUDIO_ANSWERS = {"transcriptions": ("transcription", "its usage"), "translations": ("translation", "its duration")}
COUNTED_TIERS = (None, "auto", "default", "flex", "standard_only")  # billed at the price table's rates or less
# Claude's Messages fields that bill every token at a multiple of the price table's rates: fast mode
# (``speed: "fast"``, 6x on Opus 4.6) and US-only inference (``inference_geo: "us"``, 1.1x). Only
# these values are billed at the table's rates.
COUNTED_MODES = {"speed": (None, "standard"), "inference_geo": (None, "global")}


# ctx.state: True when the request left a background response running, recorded with what it holds
# (``stockyard.background``), whose record made the budget and userlimits modules' reservations spend:
# their after hooks settle only what the answer itself cost (0)
BACKGROUND_HELD = "background.held"


def check_countable(
    ctx: RequestContext, whose: str, priced: Callable[[str], bool] | None = None, follows_background: bool = False
) -> None:
    """The 403 for a request a budget could not count: a background response (it runs after its
    answer, whose usage is still empty) unless the budget follows one to its end (``follows_background``:
    a key's, its project's and an end user's hold its worst case until it is billed,
    ``stockyard.background``; not a streamed one, whose stream is what bills it), a transcription or translation
    whose answer will not report its cost (``response_format`` text, srt, vtt; a translation's json), provider-run tools
    whose cost nothing bounds (MCP servers, code execution, an unbounded web fetch), a dearer
    service tier (OpenAI's ``priority`` bills above the price table's rates) or Claude mode (fast
    mode, US-only inference: ``COUNTED_MODES``) whose price is not known (``priced``: whether the
    request's model has a price in that mode, ``pricing.PriceTable.lookup_mode``; one that has is
    held at it), or a Gemini context
    cache whose size Stockyard does not know (its tokens are billed with the call)."""
    if runs_after_answer(ctx) and not (follows_background and not ctx.stream):
        raise ProxyError(
            403,
            "a background response runs at the provider after its answer, so its cost is never seen here "
            f"and the budget on {whose} cannot be enforced; send it without 'background'"
            + (" or without 'stream'" if follows_background else ""),
            param="background",
            code="background_not_budgeted",
        )
    form = unpriced_audio_format(ctx)
    if form is not None:
        formats = " or ".join(repr(f) for f in PRICED_AUDIO_FORMATS[ctx.endpoint][:2])  # json, verbose_json
        request, what = AUDIO_ANSWERS[ctx.endpoint]
        raise ProxyError(
            403,
            f"a {request} in response_format {form[:40]!r} comes back without {what}, so its cost is "
            f"never seen here and the budget on {whose} cannot be enforced; ask for {formats}, which reports it",
            param="response_format",
            code="response_format_not_budgeted",
        )
    unbounded = unbounded_server_tools(ctx.body)
    if unbounded is not None:
        raise server_tool_refusal(unbounded, whose)
    tier = ctx.body.get("service_tier")
    if tier not in COUNTED_TIERS and not (priced and priced(str(openai_mode(tier)))):
        raise ProxyError(
            403,
            f"service_tier {str(tier)[:40]!r} is billed above the prices Stockyard knows for this model, so the "
            f"budget on {whose} cannot be enforced; use 'auto', 'default' or 'flex'",
            param="service_tier",
            code="service_tier_not_budgeted",
        )
    dearer = dearer_mode(ctx.body) if ctx.endpoint == "messages" else None  # other APIs: no such fields
    mode = claude_mode(ctx.body.get("speed"), ctx.body.get("inference_geo"))
    if dearer is not None and not (priced and mode and priced(mode)):
        raise mode_refusal(dearer, ctx.body[dearer], whose)
    unsized = next((cache_id for cache_id, tokens in ctx.caches.items() if tokens is None), None)
    if unsized is not None:
        raise ProxyError(
            403,
            f"the size of cachedContents/{unsized} is not known here (its create answer did not state it), "
            f"so what a call naming it costs cannot be held and the budget on {whose} cannot be enforced; "
            "retrieve the cache once (GET its name), whose answer states its size",
            param="cachedContent",
            code="cached_content_not_budgeted",
        )


def dearer_mode(body: Any) -> str | None:
    """The field (``COUNTED_MODES``) by which a Messages request asks Claude for a dearer mode, or None."""
    if not isinstance(body, dict):
        return None
    return next((name for name, counted in COUNTED_MODES.items() if body.get(name) not in counted), None)


def mode_refusal(field: str, value: Any, whose: str, where: str = "") -> ProxyError:
    """The 403 for a dearer Claude mode (:func:`dearer_mode`); ``where`` names a batch's request."""
    return ProxyError(
        403,
        f"{where}{field} {str(value)[:40]!r} bills every token above the prices Stockyard knows for this model, so the "
        f"budget on {whose} cannot be enforced; send it without {field}",
        param=field,
        code="mode_not_budgeted",
    )


def unpriced_job_refusal(what: str, whose: str, param: str = "model") -> ProxyError:
    """The 403 for a job billed after the fact (a batch, a video) whose model has no price: its worst
    case cannot be held. ``whose``: "on this key", "per end user"."""
    return ProxyError(
        403,
        f"the {what} names a model with no price, so the budget {whose} cannot be enforced; "
        "an operator can add one with `stockyard prices set`",
        param=param,
        code="model_not_priced",
    )


def budget_set_meanwhile(what: str) -> ProxyError:
    """The 409 for a batch read while no budget counted its key, which one does at its reservation
    (``App.check_batch_budget``): it was not priced, so nothing could be held for it. Sent again,
    it is priced and held (the SDKs send a 409 again by themselves)."""
    return ProxyError(
        409,
        f"a budget began to count this key while the {what} was read, so it was not priced against it; "
        f"send the {what} again",
        code="budget_changed",
        headers={"Retry-After": "0"},
    )


def unpriced_refusal(model: str, whose: str) -> ProxyError:
    """The 403 for a model whose request a budget cannot count: no price, or a price in a unit its
    answer does not report (``Pricer.worst_case`` None). ``whose``: "on this key", "per end user"."""
    return ProxyError(
        403,
        f"model {model!r} has no price Stockyard can count for this request (none in the price table, "
        f"or one in a unit its answer does not report), so the budget {whose} cannot be "
        f"enforced; an operator can add one with `stockyard prices set {model} …`",
        param="model",
        code="model_not_priced",
    )


def server_tool_refusal(why: str, whose: str, where: str = "") -> ProxyError:
    """The 403 for provider-run tools whose cost a budget cannot bound (``estimate.unbounded_server_tools``)."""
    param = why.split(":", 1)[0] if why.startswith(("mcp_servers", "context_management")) else "tools"
    return ProxyError(
        403,
        f"{where}{why}, so the budget on {whose} cannot be enforced; send it without them, or bound the web fetch tool",
        param=param,
        code="server_tool_not_budgeted",
    )


Warn = Callable[[Budget, str, int, int], None]  # budget, period key, spent, threshold percent
Exhausted = Callable[[BudgetExceeded], None]  # the first refusal of a (budget, period) that is spent


class Ledger:
    """Spent and reserved money per (budget scope, period), held under one lock."""

    def __init__(
        self,
        load: Callable[[Budget, str], int],
        warn_percents: Iterable[int] = (80,),
        on_warning: Warn | None = None,
        on_exhausted: Exhausted | None = None,
    ) -> None:
        self._load = load
        self._on_exhausted = on_exhausted
        self._exhausted: set[tuple[str, str]] = set()
        self._warn_percents = tuple(sorted(set(warn_percents)))
        self._on_warning = on_warning
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._entries: dict[str, dict[str, _Entry]] = {}
        self._warned: set[tuple[str, str, int]] = set()
        self._prune_at = PRUNE_FROM

    def _prune(self) -> None:
        """Forget idle end users (caller holds the lock), with their warned and used-up marks: their
        names come from clients, so they must not pile up. Only scopes with nothing reserved and
        untouched for ``IDLE_FORGET_S`` go — long after their last trace was queued, so a reload
        from the rollups counts it."""
        if len(self._entries) < self._prune_at:
            return
        idle_before = time.monotonic() - IDLE_FORGET_S
        for scope in [s for s in self._entries if s.startswith(USER_SCOPE)]:
            if all(e.reserved == 0 and e.touched < idle_before for e in self._entries[scope].values()):
                del self._entries[scope]
        kept = lambda mark: mark[0] in self._entries or not mark[0].startswith(USER_SCOPE)  # noqa: E731
        self._warned = {m for m in self._warned if kept(m)}
        self._exhausted = {m for m in self._exhausted if kept(m)}  # told again if it comes back used up
        self._prune_at = max(PRUNE_FROM, 2 * len(self._entries))

    def _ensure(self, budgets: Iterable[Budget], ts_ms: int) -> list[tuple[Budget, str]]:
        """Load (outside the lock) the spend of periods not seen yet."""
        keyed = [(b, period_key(b.period, ts_ms)) for b in budgets]
        for budget, key in keyed:
            if key in self._entries.get(budget.scope, {}):
                continue
            with self._load_lock:  # one load per period, however many requests arrive at once
                if key in self._entries.get(budget.scope, {}):
                    continue
                spent = self._load(budget, key)
                with self._lock:
                    self._prune()
                    periods = self._entries.setdefault(budget.scope, {})
                    for old in [k for k, e in periods.items() if e.reserved == 0]:
                        del periods[old]  # a finished period needs no memory
                    periods[key] = _Entry(spent)
        return keyed

    def _loaded(self, keyed: list[tuple[Budget, str]]) -> list[_Entry] | None:
        """Under the lock: the entries :meth:`_ensure` loaded for ``keyed``, or None when one was dropped
        meanwhile — an idle end user forgotten (:meth:`_prune`), or a period another request's newer
        period replaced (a request stamped just past midnight beside one stamped just before): the
        caller loads the spend again."""
        entries = []
        for budget, key in keyed:
            entry = self._entries.get(budget.scope, {}).get(key)
            if entry is None:
                return None
            entries.append(entry)
        return entries

    def reserve(self, budgets: list[Budget], amount: int, ts_ms: int) -> Hold:
        """Reserve ``amount`` µ¢ against every budget, or none of them (BudgetExceeded)."""
        while True:
            keyed = self._ensure(budgets, ts_ms)
            refused: BudgetExceeded | None = None
            first = False
            with self._lock:
                entries = self._loaded(keyed)
                if entries is None:
                    continue
                for (budget, key), entry in zip(keyed, entries):
                    if entry.spent + entry.reserved + amount > budget.limit_uc:
                        refused = BudgetExceeded(budget, key, entry.spent, entry.reserved, amount, ts_ms)
                        # Used up — spent, not held by requests in flight, nor one request too large
                        # for what is left (that said "exhausted" with nothing spent, and then never
                        # again that period): tell once per period.
                        first = entry.spent >= budget.limit_uc and (budget.scope, key) not in self._exhausted
                        if first:
                            self._exhausted.add((budget.scope, key))
                        break
                else:
                    now = time.monotonic()
                    for entry in entries:
                        entry.reserved += amount
                        entry.touched = now
            if refused is not None:
                if first:
                    self._tell_exhausted(refused)
                raise refused
            return Hold([(budget, key, amount) for budget, key in keyed])

    def settle(
        self, hold: Hold | None, actual_uc: int, scopes: Iterable[str], ts_ms: int, trace_id: str | None = None
    ) -> None:
        """Account one finished request: its reservations become its real cost.

        The cost also lands on every other period the ledger holds for the request's
        scopes, so a budget switched off and on again still knows the spend in between.
        ``trace_id``: the trace, not committed yet, that will record this cost (a group's parent
        counts it until then when it reloads the spend, :meth:`resync`).
        """
        parts = {(b.scope, key): (b, amount) for b, key, amount in (hold.parts if hold else [])}
        crossed: list[tuple[Budget, str, int, int]] = []
        with self._lock:
            for (scope, key), (budget, amount) in parts.items():
                entry = self._entries.setdefault(scope, {}).setdefault(key, _Entry(0, amount))
                entry.reserved -= amount
                entry.spent += actual_uc
                entry.touched = time.monotonic()
                crossed += self._crossings(budget, key, entry.spent)
            others = (
                [
                    (scope, key, entry)
                    for scope in scopes
                    for key, entry in self._entries.get(scope, {}).items()
                    if (scope, key) not in parts
                ]
                if actual_uc
                else []
            )
            if others:
                current = {period_key(p, ts_ms) for p in PERIODS}
                for _scope, key, entry in others:
                    if key in current:
                        entry.spent += actual_uc
        self._tell_warnings(crossed)

    def resync(self, spend: Callable[[str, str], int]) -> None:
        """Set every period's spend to ``spend(scope, period key)``, keeping what is held: a group's
        parent, once a worker died between a commit and its settlement, takes the database's word."""
        with self._lock:
            held = [(scope, key) for scope, periods in self._entries.items() for key in periods]
        found = {mark: spend(*mark) for mark in held}
        with self._lock:
            for (scope, key), spent in found.items():
                entry = self._entries.get(scope, {}).get(key)
                if entry is not None:
                    entry.spent = spent

    def settle_in(
        self, conn: Any, hold: Hold | None, actual_uc: int, scopes: Iterable[str], ts_ms: int
    ) -> Callable[[], None]:
        """:meth:`settle` as part of the write that says why (``conn``: an object recorded with its
        hold, billed, deleted, or left by the watch): the call to make once that write committed.
        This ledger is memory, which a start loads from the database, so a crash between the commit
        and the call loses nothing; the shared ledger (PostgreSQL) changes its rows in ``conn``."""
        scopes = tuple(scopes)
        return lambda: self.settle(hold, actual_uc, scopes, ts_ms)

    def spend_in(self, conn: Any, change: int, scopes: Iterable[str], ts_ms: int) -> Callable[[], None]:
        """A change of spend on the scopes' current periods, as :meth:`settle_in` makes it."""
        return self.settle_in(conn, None, change, scopes, ts_ms)

    def _tell_exhausted(self, refused: BudgetExceeded) -> None:
        """The first refusal of a spent budget's period, to ``on_exhausted`` (the webhooks)."""
        if self._on_exhausted is not None:
            try:
                self._on_exhausted(refused)
            except Exception as exc:  # telling must never change the answer
                log.error("could not report an exhausted budget: %s", exc)

    def _tell_warnings(self, crossed: Iterable[tuple[Budget, str, int, int]]) -> None:
        """Thresholds a settlement crossed, to ``on_warning`` (audit, log, webhooks); the spend reaching
        the budget (``EXHAUSTED``) to ``on_exhausted``."""
        for budget, key, spent, pct in crossed:
            if pct == EXHAUSTED:
                self._tell_exhausted(BudgetExceeded(budget, key, spent, 0, 0, int(time.time() * 1000)))
            elif self._on_warning is not None:
                try:
                    self._on_warning(budget, key, spent, pct)
                except Exception as exc:  # a warning must never fail a request
                    log.error("could not record a budget warning: %s", exc)

    def _crossings(self, budget: Budget, key: str, spent: int) -> list[tuple[Budget, str, int, int]]:
        """Thresholds this spend has reached and not yet warned about (caller holds the lock), and
        ``EXHAUSTED`` once it reaches the budget: told as it is spent, not only at the next refusal (a
        request refused while that spend was still a hold in flight did not tell it, and none may follow)."""
        found = []
        for pct in self._warn_percents:
            mark = (budget.scope, key, pct)
            if budget.limit_uc > 0 and spent * 100 >= budget.limit_uc * pct and mark not in self._warned:
                self._warned.add(mark)
                found.append((budget, key, spent, pct))
        if 0 < budget.limit_uc <= spent and (budget.scope, key) not in self._exhausted:
            self._exhausted.add((budget.scope, key))
            found.append((budget, key, spent, EXHAUSTED))
        return found

    def used_up(self, budgets: list[Budget], ts_ms: int) -> BudgetExceeded | None:
        """The first budget with nothing left (spent and held reach its limit), or None: for work
        whose cost is known only afterwards (a batch), which may start only while some is left.
        (Every budgeted request asks, before its hold: no record is made for a budget with room.)"""
        while True:
            keyed = self._ensure(budgets, ts_ms)
            with self._lock:
                entries = self._loaded(keyed)
                if entries is None:
                    continue
                for (budget, key), entry in zip(keyed, entries):
                    if entry.spent + entry.reserved >= budget.limit_uc:
                        return BudgetExceeded(budget, key, entry.spent, entry.reserved, 0, ts_ms)
                return None

    def tightest(self, budgets: list[Budget], ts_ms: int) -> BudgetExceeded | None:
        """The budget with the least left beyond its spend (:func:`unspent_of`) now, with its holds, as
        the refusal a reservation past it gets (amount 0), or None for no budget: what a batch's running
        worst case is compared with before it is priced whole (``App.batch_room``)."""
        while True:
            keyed = self._ensure(budgets, ts_ms)
            with self._lock:
                entries = self._loaded(keyed)
                if entries is None:
                    continue
                found = [
                    BudgetExceeded(budget, key, entry.spent, entry.reserved, 0, ts_ms)
                    for (budget, key), entry in zip(keyed, entries)
                ]
            return min(found, key=unspent_of, default=None)

    def close(self) -> None:
        """Nothing to stop: the shared ledger (PostgreSQL) has a lease keeper to stop."""

    def usage(self, budget: Budget, ts_ms: int) -> tuple[int, int] | None:
        """(spent, reserved) of the budget's current period, if the ledger holds it."""
        with self._lock:
            entry = self._entries.get(budget.scope, {}).get(period_key(budget.period, ts_ms))
            return None if entry is None else (entry.spent, entry.reserved)


def key_budget(key_id: str, name: str, limit_uc: int | None, period: str | None) -> Budget | None:
    if limit_uc is None or period is None:
        return None
    return Budget(f"key:{key_id}", f"key {name!r}", limit_uc, period)


def project_budget(project: str, limit_uc: int, period: str) -> Budget:
    return Budget(f"project:{project}", f"project {project!r}", limit_uc, period)


def user_of(scope: str) -> str:
    """The end user an end user's budget scope (:func:`user_budget`) is for."""
    return scope.partition("|")[2]


def user_budget(within: str, user: str, limit_uc: int, period: str) -> Budget:
    """One end user's budget within ``within`` ('key:<id>', 'project:<name>' or '*': every key).

    Key ids and project names hold no '|', so the scope reads back unambiguously."""
    return Budget(f"user:{within}|{user}", f"end user {user!r}", limit_uc, period)


def load_project_budgets(conn: sqlite3.Connection) -> dict[str, Budget]:
    return {
        r["project"]: project_budget(r["project"], r["budget_uc"], r["period"])
        for r in conn.execute("SELECT project, budget_uc, period FROM project_budgets")
    }


def scopes_of(key) -> tuple[str, ...]:
    """The ledger scopes a request made with ``key`` (a KeyRecord) belongs to."""
    return owner_scopes(key.id, key.project)


def owner_scopes(key_id: str, project: str | None) -> tuple[str, ...]:
    """The ledger scopes of the key ``key_id`` in ``project``."""
    return (f"key:{key_id}", f"project:{project}") if project else (f"key:{key_id}",)


def budgets_for(key, projects: Mapping[str, Budget]) -> list[Budget]:
    """Every budget a request made with ``key`` (a KeyRecord) counts against."""
    found = []
    own = key_budget(key.id, key.name, key.budget_uc, key.budget_period)
    if own is not None:
        found.append(own)
    if key.project and key.project in projects:
        found.append(projects[key.project])
    return found


def unspent_of(state: BudgetExceeded) -> int:
    """What a budget's period has left beyond its spend, µ¢: all a reservation can have once the
    holds in flight end (a batch's worst case past it cannot start this period, whatever they cost)."""
    return state.budget.limit_uc - state.spent


EXHAUSTED = 0  # budget_warnings.threshold of the exhausted event (warnings are 1-100 percent)


class BudgetRecords:
    """The ledger's database side: a period's spend so far, and warnings recorded once."""

    def __init__(
        self,
        store: "Store",
        ops: Callable[[], "Operations"],
        notify: Callable[..., object] = lambda kind, data, summary, conn=None, event_id=None: None,
    ) -> None:
        self._store = store
        self._ops = ops  # audits as the server
        self._notify = notify  # the webhooks

    def load_spend(self, budget: Budget, period_key: str) -> int:
        """A budget period's spend so far, read by the writer so every queued trace counts."""
        return self._store.write(lambda conn: ledger_spend_uc(conn, budget, period_key))

    def warn(self, budget: Budget, period_key: str, spent: int, percent: int) -> None:
        """Audit entry + log line, once per budget, period and threshold (restarts included)."""
        ops = self._ops()
        text = (
            f"budget warning: {budget.describe()}: {format_usd(spent, 2)} spent in period {period_key}, "
            f"past the {percent}% threshold"
        )

        def job(conn) -> None:
            if _first_time(conn, budget.scope, period_key, percent):
                ops.audit(
                    conn,
                    "budget.warning",
                    budget.scope,
                    {
                        "period": period_key,
                        "threshold_percent": percent,
                        "spent_uc": spent,
                        "budget_uc": budget.limit_uc,
                        "budget_period": budget.period,
                    },
                )
                log.warning("%s", text)
                data = {**_budget_data(budget, period_key, spent), "threshold_percent": percent}
                event_id = stable_id("budget.warning", budget.scope, period_key, percent)
                self._notify("budget.warning", data, text, conn=conn, event_id=event_id)

        self._store.submit(job)

    def exhausted(self, refused: BudgetExceeded) -> None:
        """A budget's period used up (its spend reached the budget, or a start found it spent at its
        first refusal): the webhooks hear of it once per budget and period, however many processes
        (workers, replicas) or restarts see it — recorded like a warning, at threshold ``EXHAUSTED``."""
        b = refused.budget
        text = (
            f"budget exhausted: {b.describe()}: {format_usd(refused.spent, 2)} spent in period "
            f"{refused.period_key}; requests are refused"
        )

        def job(conn) -> None:
            if _first_time(conn, b.scope, refused.period_key, EXHAUSTED):
                data = _budget_data(b, refused.period_key, refused.spent)
                event_id = stable_id("budget.exhausted", b.scope, refused.period_key)
                self._notify("budget.exhausted", data, text, conn=conn, event_id=event_id)

        self._store.submit(job)


def _first_time(conn: sqlite3.Connection, scope: str, period_key: str, threshold: int) -> bool:
    """Record that a budget's period reached ``threshold``; True only for the first record, in
    any process (the row is the database's word on whether it was told already)."""
    inserted = conn.execute(
        "INSERT OR IGNORE INTO budget_warnings (scope, period_start, threshold, created_at) "
        "VALUES (?, ?, ?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
        (scope, period_key, threshold),
    )
    return bool(inserted.rowcount)


def _budget_data(budget: Budget, period_key: str, spent: int) -> dict:
    """What a webhook is told about a budget: whose it is, its period and the money, in µ¢ and USD.

    An end user's budget names the user and where it counts (``within``: '*' for every key,
    or the key's id or the project it is set for), so a receiver can tell the user apart."""
    kind, _, name = budget.scope.partition(":")
    whose: dict[str, str] = {"key_id" if kind == "key" else kind: name}
    if kind == "user":
        within, _, user = name.partition("|")  # user_budget: key ids and projects hold no '|'
        whose = {"user": user, "within": within}
        within_kind, _, within_name = within.partition(":")
        if within_kind in ("key", "project"):
            whose["key_id" if within_kind == "key" else "project"] = within_name
    return {
        "scope": budget.scope,
        **whose,
        "label": budget.label,
        "period": budget.period,
        "period_start": period_key,
        "spent_uc": spent,
        "budget_uc": budget.limit_uc,
        "spent_usd": format_usd(spent, 2),
        "budget_usd": format_usd(budget.limit_uc, 2),
    }

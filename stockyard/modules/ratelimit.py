"""Per-key rate limits: requests and tokens per minute, over an exact sliding 60-second window.

Each key's window is a log of (admitted at, tokens) entries with a running token sum.
Tokens are counted at admission as the worst case (``estimate.limited_tokens``: input
estimate + output cap × choices, a transcription's audio, the image tool's images) and
corrected to the real usage when the request ends (``estimate.used_tokens``),
so a key that asks for 4,096 tokens and uses 20 is charged 20. A refusal is a 429 with
``Retry-After``: the seconds until enough of the window has slid past for this request to fit.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import estimate
from ..context import RequestContext
from ..errors import ProxyError, database_refusal
from .base import Module, ModuleServices

if TYPE_CHECKING:
    from ..chain import Chain

WINDOW_S = 60.0
PRUNE_FROM = 1024  # windows held before idle ones are looked for
FREE_ENDPOINTS = ("count_tokens", "input_tokens")


@dataclass
class _Entry:
    at: float
    tokens: int
    live: bool = True  # still inside its window (its tokens are in the sum)


class _Window:
    def __init__(self) -> None:
        self.entries: deque[_Entry] = deque()
        self.tokens = 0

    def slide(self, now: float) -> None:
        while self.entries and self.entries[0].at <= now - WINDOW_S:
            old = self.entries.popleft()
            old.live = False
            self.tokens -= old.tokens


@dataclass(frozen=True)
class Counted:
    """A request counted in a window (``count_started``), its tokens corrected later (``count_used``) in
    that same window: the options naming an end user's window may change meanwhile (an override)."""

    window: str
    entry: Any  # the limiter's entry (RateLimiter's or SharedRateLimiter's)


class RateLimited(Exception):
    def __init__(self, message: str, retry_after: int | None, larger: tuple[str, int, int] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.larger = larger  # (who, tpm, tokens): the request alone is more than the tpm (``too_large``)

    def error(self, ctx: RequestContext | None = None, media: int = 0) -> ProxyError:
        """The 429; a request larger than the tpm by ``media`` tokens of its audio or the image
        tool's images (``estimate.limited_tokens``) is told what those are and how to lower them."""
        headers = (
            {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {"x-should-retry": "false"}
        )
        message = self.message
        if self.larger is not None and ctx is not None and media:
            message = too_large_media(ctx, *self.larger, media)
        return ProxyError(429, message, code="rate_limit_exceeded", headers=headers)


class RateLimiter:
    """Sliding windows for every key, under one lock (held for microseconds)."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._prune_at = PRUNE_FROM

    def _prune(self, now: float) -> None:
        """Forget windows with nothing left in them (caller holds the lock): window names may come
        from clients (end users), so idle ones must not pile up. Amortised: runs when the count doubles."""
        if len(self._windows) < self._prune_at:
            return
        for name in list(self._windows):
            window = self._windows[name]
            window.slide(now)
            if not window.entries:
                del self._windows[name]
        self._prune_at = max(PRUNE_FROM, 2 * len(self._windows))

    def admit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int, who: str = "this key") -> _Entry:
        """Count one request of ``tokens`` against the limits of ``key_id`` (any window name), or
        raise RateLimited saying ``who`` is limited."""
        with self._lock:
            now = self._clock()
            self._prune(now)
            window = self._windows.setdefault(key_id, _Window())
            window.slide(now)
            _refuse(window, now, rpm, tpm, tokens, who)
            entry = _Entry(now, tokens)
            window.entries.append(entry)
            window.tokens += tokens
            return entry

    def check(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int, who: str = "this key") -> None:
        """Raise RateLimited if ``admit`` would now, counting nothing (``early.check_early``)."""
        if tpm is not None and tokens > tpm:
            raise too_large(who, tpm, tokens)
        with self._lock:
            window = self._windows.get(key_id)
            if window is not None:
                now = self._clock()
                window.slide(now)
                _refuse(window, now, rpm, tpm, tokens, who)

    def correct(self, key_id: str, entry: _Entry, tokens: int) -> None:
        """Replace an admitted request's estimate with what it really used."""
        with self._lock:
            if entry.live and key_id in self._windows:
                self._windows[key_id].tokens += tokens - entry.tokens
            entry.tokens = tokens


def _refuse(window: _Window, now: float, rpm: int | None, tpm: int | None, tokens: int, who: str) -> None:
    """RateLimited if one more request of ``tokens`` would pass ``window``'s limits."""
    if rpm is not None and len(window.entries) >= rpm:
        oldest_needed = window.entries[len(window.entries) - rpm]
        raise too_many_requests(who, rpm, oldest_needed.at + WINDOW_S - now)
    if tpm is not None and window.tokens + tokens > tpm:
        if tokens > tpm:
            raise too_large(who, tpm, tokens)
        excess, freed = window.tokens + tokens - tpm, 0
        for entry in window.entries:
            freed += entry.tokens
            if freed >= excess:
                break
        raise too_many_tokens(who, tpm, tokens, entry.at + WINDOW_S - now)


def limiter_for(services: ModuleServices) -> RateLimiter:
    """The store decides: windows in memory (SQLite: one server) or shared by replicas (PostgreSQL).
    Services without a store (unit tests of the module registry) get the in-memory one."""
    store = getattr(services, "store", None)
    return RateLimiter() if store is None else store.backend.rate_limiter(store)


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


def too_many_requests(who: str, rpm: int, wait: float) -> RateLimited:
    return RateLimited(f"rate limit: {who} allows {rpm} requests per minute", _seconds(wait))


def admitted(
    limiter: RateLimiter, name: str, rpm: int | None, tpm: int | None, tokens: int, who: str = "this key"
) -> Any:  # the limiter's entry (RateLimiter's or SharedRateLimiter's), given back to it to correct
    """``limiter.admit``; a database error it lets out (the shared limiter's read connections all
    busy, or its window's counts queued past the busy timeout: ``SharedRateLimiter.admit``) is the
    client's 503, not a module failure's 500."""
    try:
        return limiter.admit(name, rpm, tpm, tokens, who)
    except sqlite3.Error as exc:
        refusal = database_refusal(exc)
        if refusal is None:
            raise
        raise refusal from None


def too_large(who: str, tpm: int, tokens: int) -> RateLimited:
    return RateLimited(
        f"rate limit: this request may use {tokens} tokens (input estimate + max_tokens × n), more than "
        f"the {tpm} tokens per minute {who} allows; lower max_tokens or n",
        None,
        (who, tpm, tokens),
    )


def too_large_media(ctx: RequestContext, who: str, tpm: int, tokens: int, media: int) -> str:
    """``too_large``'s message for a request whose audio or image tool's images count ``media`` tokens."""
    if ctx.endpoint in estimate.PRICED_AUDIO_FORMATS:
        what = f"{media} for its audio at {estimate.AUDIO_TOKENS_PER_S} tokens a second"
        lower = "send shorter audio"
    else:
        what = f"{media} for the images the image_generation tool may make"
        lower = "set a lower max_tool_calls, or the tool's quality and size"
    return (
        f"rate limit: this request may use {tokens} tokens ({what}), more than "
        f"the {tpm} tokens per minute {who} allows; {lower}"
    )


def too_many_tokens(who: str, tpm: int, tokens: int, wait: float) -> RateLimited:
    return RateLimited(
        f"rate limit: {who} allows {tpm} tokens per minute and this request may use {tokens}", _seconds(wait)
    )


class RateLimitModule(Module):
    """``ratelimit``: refuses a key's requests beyond its rpm/tpm with a 429 and Retry-After."""

    name = "ratelimit"
    default_enabled = True  # the limits live on the keys: on with no row in the modules table

    def __init__(self, services: ModuleServices) -> None:
        super().__init__(services)
        self.limiter = limiter_for(services)

    def before(self, ctx: RequestContext) -> None:
        key = ctx.key
        if key is None or (key.rpm is None and key.tpm is None):
            return
        tokens, media = self._tokens(ctx)
        try:
            ctx.state["ratelimit"] = self._admit(key.id, key.rpm, key.tpm, tokens)
        except RateLimited as exc:
            raise exc.error(ctx, media) from None

    def check(self, ctx: RequestContext) -> None:
        """``before``'s refusal, counting nothing (``early.check_early``)."""
        key = ctx.key
        if key is None or (key.rpm is None and key.tpm is None):
            return
        tokens, media = self._tokens(ctx)
        try:
            self.limiter.check(key.id, key.rpm, key.tpm, tokens)
        except RateLimited as exc:
            raise exc.error(ctx, media) from None

    def _tokens(self, ctx: RequestContext) -> tuple[int, int]:
        """What the request counts against the key's tpm (the worst case, and the part of it that
        is audio or images: ``estimate.limited_tokens``), (0, 0) when it has none."""
        counted = ctx.key is not None and ctx.key.tpm and ctx.endpoint not in FREE_ENDPOINTS  # counting is not using
        if not counted:
            return 0, 0
        services = self.services  # an image sent inline counted as the model's largest (Pricer.inline_each)
        return estimate.limited_tokens(ctx, services.settings.default_max_tokens, services.pricer.inline_each(ctx))

    def admit_call(self, ctx: RequestContext) -> None:
        """A call outside the chain that uses no tokens (files and batches: ``files_api``): one of
        the key's requests per minute, in the same window as its model calls, or a 429."""
        key = ctx.key
        if key is None or key.rpm is None:
            return
        try:
            self._admit(key.id, key.rpm, None, 0)
        except RateLimited as exc:
            raise exc.error() from None

    def count_started(self, ctx: RequestContext, asked: bool = False) -> Counted | None:
        """A Realtime response counted in the key's window now. ``asked``: the client's own
        ``response.create``, admitted as ``before`` admits a request — its worst case counted, or
        ``RateLimited`` past the rpm or tpm, in one step (a check, then a count of no tokens, let a
        burst of creates, or two sessions checking at once, through); else one the provider began
        on its own (server VAD): no tokens, never refused (the session's next ``response.create``
        and the next upgrade are). Its tokens once it ends: :meth:`count_used`."""
        key = ctx.key
        if key is None or (key.rpm is None and key.tpm is None):
            return None
        if not asked:
            return Counted(key.id, self.limiter.admit(key.id, None, None, 0))
        return Counted(key.id, self.limiter.admit(key.id, key.rpm, key.tpm, self._tokens(ctx)[0]))

    def count_used(self, ctx: RequestContext, counted: Counted | None, tokens: int) -> None:
        """The ``tokens`` a request counted by :meth:`count_started` used, once known (in place of
        its worst case, as ``after`` corrects a request's)."""
        if counted is not None and ctx.key is not None and ctx.key.tpm:
            self.limiter.correct(counted.window, counted.entry, tokens)

    def _admit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> object:
        return admitted(self.limiter, key_id, rpm, tpm, tokens)

    def after(self, ctx: RequestContext) -> None:
        entry = ctx.state.pop("ratelimit", None)
        if entry is not None and ctx.key.tpm:
            correct_to_usage(self.limiter, ctx.key.id, entry, ctx)


def correct_to_usage(limiter: RateLimiter, window: str, entry: _Entry, ctx: RequestContext) -> None:
    """Count the tokens the request used in place of the worst case it was admitted with, in the
    key's window here and in an end user's (``userlimits``), so both correct alike."""
    if estimate.runs_after_answer(ctx):
        return  # a background response's usage comes back minutes later, if ever: its worst case stays counted
    used = estimate.used_tokens(ctx)
    if used is not None:  # None: an audio answer that said nothing of its audio keeps the estimate
        limiter.correct(window, entry, used)


def admit_call(chain: Chain, ctx: RequestContext) -> None:
    """A call outside the chain (files, batches, stored responses) counted as one of the key's
    requests per minute, where the ``ratelimit`` module runs for the key (429 past its rpm)."""
    module = chain.module("ratelimit", ctx)
    if isinstance(module, RateLimitModule):
        module.admit_call(ctx)

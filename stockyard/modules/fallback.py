"""``fallback``: retries with back-off, fallback chains, and a circuit breaker per provider/model.

The proxy makes the attempts (``proxy.forward``); this module decides the policy:

- which failures: 429, 5xx, timeouts and connection errors — never another 4xx, which would
  fail the same way anywhere;
- how often: ``retries`` more attempts on each candidate, waiting ``backoff_ms`` × 2ⁿ⁻¹
  (at most ``max_backoff_ms``) with jitter, or what the provider's ``Retry-After`` asks when
  that is at most ``retry_after_cap_s`` (when it asks for more, the next candidate is tried
  at once);
- where next: ``chains`` maps a model (as routed, ``provider/model`` or bare) to the
  ``provider/model`` pairs to try after it, in order;
- which to skip: after ``breaker_failures`` failures in a row the breaker of a provider/model
  pair (``openai/gpt-4o``: its failures do not block ``openai/gpt-4o-mini``) opens and it is
  skipped for ``breaker_cooldown_s``; then one request probes it (half-open): success closes the
  breaker, failure opens it again. Deployments of a model (``stockyard.deployments``) have
  breakers and cooldowns of their own and are not retried: the next deployment is tried.

Streams fall back only before their first byte reaches the client. Every attempt is
traced: failed ones as their own rows under the request's trace (``parent_id``, ``attempt``).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..context import RequestContext
from .base import Module
from .schema import ConfigError, Field, map_of, text


def _chain(name: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ValueError(f'chain {name!r} must be a non-empty list of "provider/model" names')
    return [text(f"chain {name!r} item {i}", item) for i, item in enumerate(value)]


@dataclass
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    probe_at: float | None = None  # when the half-open probe was let through


class Breaker:
    """Circuit breakers by ``provider/model``; shared by every request and kept across reloads."""

    def __init__(self, clock=time.monotonic, on_change: Callable[[str, bool], Any] | None = None) -> None:
        self._clock = clock
        self._on_change = on_change  # (provider, opened): told when a breaker opens or closes
        self._lock = threading.Lock()
        self._circuits: dict[str, _Circuit] = {}

    def allow(self, provider: str, threshold: int, cooldown: float) -> bool:
        if threshold <= 0:
            return True
        with self._lock:
            c = self._circuits.get(provider)
            if c is None or c.opened_at is None:
                return True
            now = self._clock()
            if now - c.opened_at < cooldown:
                return False
            if c.probe_at is not None and now - c.probe_at < cooldown:
                return False  # one probe at a time (a lost probe expires after a cooldown)
            c.probe_at = now
            return True

    def report(self, provider: str, ok: bool, threshold: int) -> None:
        if threshold <= 0:
            return
        with self._lock:
            c = self._circuits.setdefault(provider, _Circuit())
            was_open = c.opened_at is not None
            if ok:
                c.failures, c.opened_at, c.probe_at = 0, None, None
            else:
                c.failures += 1
                if c.opened_at is not None or c.failures >= threshold:
                    c.opened_at, c.probe_at = self._clock(), None
            changed = was_open != (c.opened_at is not None)
        if changed and self._on_change is not None:
            self._on_change(provider, not was_open)

    def retry_in(self, provider: str, cooldown: float) -> float:
        """Seconds until an open breaker lets a probe through."""
        with self._lock:
            c = self._circuits.get(provider)
            if c is None or c.opened_at is None:
                return 0.0
            return max(0.0, cooldown - (self._clock() - c.opened_at))

    def snapshot(self, cooldown: float) -> dict[str, dict]:
        with self._lock:
            now = self._clock()
            return {
                name: {
                    "state": "closed"
                    if c.opened_at is None
                    else ("open" if now - c.opened_at < cooldown else "half-open"),
                    "failures": c.failures,
                }
                for name, c in self._circuits.items()
            }


def _tell(app, target: str, opened: bool) -> None:
    """A breaker changed state: the webhooks hear of it (``breaker.opened`` / ``breaker.closed``).

    Breakers are per provider/model (a provider name has no ``/``), named apart in the payload.
    """
    provider, _, model = target.partition("/")
    kind = "breaker.opened" if opened else "breaker.closed"
    summary = (
        f"{target!r} is failing: its breaker opened, requests skip it"
        if opened
        else f"{target!r} answers again: its breaker closed"
    )
    app.notify(kind, {"provider": provider, "model": model or None}, summary)


@dataclass(frozen=True)
class FallbackPolicy:
    """The fallback options, as the proxy's :class:`~stockyard.context.RetryPolicy`."""

    chains: dict[str, tuple[str, ...]]
    retries: int
    backoff_ms: int
    max_backoff_ms: int
    retry_after_cap_s: float
    breaker_failures: int
    breaker_cooldown_s: float
    breaker: Breaker = field(compare=False)

    def fallbacks(self, ctx: RequestContext) -> list[str]:
        if not self.chains:
            return []
        provider = ctx.attempt.provider.name if ctx.attempt.provider else ""
        for name in (
            ctx.routed_model or ctx.model,
            f"{provider}/{ctx.attempt.upstream_model}",
            ctx.attempt.upstream_model,
        ):
            if name and name in self.chains:
                return list(self.chains[name])
        return []

    def delay(self, retry: int, retry_after: float | None) -> float | None:
        if retry_after is not None:
            return retry_after if retry_after <= self.retry_after_cap_s else None
        ceiling = min(self.max_backoff_ms, self.backoff_ms * 2 ** (retry - 1)) / 1000
        return random.uniform(ceiling / 2, ceiling)  # "equal jitter": never zero, never in lockstep

    def allow(self, provider: str) -> bool:
        return self.breaker.allow(provider, self.breaker_failures, self.breaker_cooldown_s)

    def report(self, provider: str, ok: bool) -> None:
        self.breaker.report(provider, ok, self.breaker_failures)

    def retry_in(self, provider: str) -> float:
        return self.breaker.retry_in(provider, self.breaker_cooldown_s)


class Fallback(Module):
    """Retries with back-off and Retry-After, fallback chains, per provider/model circuit breakers."""

    name = "fallback"
    summary = (
        "retries (exponential back-off, jitter, Retry-After), fallback chains of provider/model, "
        "circuit breaker per provider/model"
    )
    schema = {
        "chains": Field(
            "dict", {}, 'model → ["provider/model", …] to try in order when it fails', max=1000, check=map_of(_chain)
        ),
        "retries": Field("int", 1, "more attempts on the same provider/model before falling back", min=0, max=10),
        "backoff_ms": Field(
            "int", 250, "wait before the first retry; doubles each retry (with jitter)", min=0, max=60_000
        ),
        "max_backoff_ms": Field("int", 5_000, "longest wait between retries", min=0, max=300_000),
        "retry_after_cap_s": Field(
            "float", 10.0, "honour a provider's Retry-After up to this; beyond it, fall back at once", min=0, max=3_600
        ),
        "breaker_failures": Field(
            "int", 5, "failures in a row that open a provider/model's breaker; 0 for no breaker", min=0, max=10_000
        ),
        "breaker_cooldown_s": Field(
            "float", 30.0, "how long an open breaker skips its provider/model before one probe", min=0.1, max=86_400
        ),
    }

    def __init__(self, app) -> None:
        self.breaker = Breaker(on_change=lambda provider, opened: _tell(app, provider, opened))
        super().__init__(app)

    @staticmethod
    def check_whole(config: dict) -> None:
        if config["max_backoff_ms"] < config["backoff_ms"]:
            raise ConfigError(
                "fallback.max_backoff_ms",
                f"must be at least backoff_ms ({config['backoff_ms']}), got {config['max_backoff_ms']}",
            )

    def compile(self, config: dict) -> FallbackPolicy:
        chains = {name: tuple(models) for name, models in config["chains"].items()}
        return FallbackPolicy(
            chains,
            config["retries"],
            config["backoff_ms"],
            config["max_backoff_ms"],
            config["retry_after_cap_s"],
            config["breaker_failures"],
            config["breaker_cooldown_s"],
            self.breaker,
        )

    def before(self, ctx: RequestContext) -> None:
        ctx.retry = self.options(ctx)

    def status(self) -> dict:
        base, _ = self._options
        return {"breakers": self.breaker.snapshot(base.breaker_cooldown_s)}

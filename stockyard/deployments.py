"""Models served by several deployments: which one a request goes to, and each one's health.

A *model* is a name clients send; its *deployments* each name a provider, the model sent
to it, optionally a key of their own (several keys of one provider are several
deployments), a weight, a priority and their own rpm/tpm limits. The lowest priority
number that has a usable deployment wins; within it the model's *strategy* picks:

- ``weighted`` — smooth weighted round-robin (nginx's): deterministic, weights 3:1 give
  exactly 3 of every 4 requests to the first;
- ``least-busy`` — the fewest requests in flight;
- ``latency`` — the lowest time to first byte, an EWMA (a deployment not yet measured first, once);
- ``usage`` — the most rpm/tpm headroom left.

A deployment is *unusable* while it cools down (after a 429, a 5xx or a timeout: for the
provider's ``Retry-After``, capped, else a short default), while its circuit breaker is open
(after ``BREAKER_FAILURES`` failures in a row, for ``BREAKER_COOLDOWN_S``; then one request
probes it), or when the request would pass its rpm/tpm limit — the request spills to the next
deployment instead. :class:`Health` keeps this state for the server's life (across reloads);
:class:`Models` is the immutable snapshot of the configuration, replaced whole on reload.

A deployment's rpm/tpm is the provider's quota, so it must hold for the whole installation: the
workers of a group and PostgreSQL replicas each keep their own health, but a deployment with a
limit is also counted in the shared rate windows (``shared``: the group parent's, or the
database's — the same ones client keys' limits use). Cooldowns and breakers stay per process:
they only decide how often a failing deployment is tried.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .errors import ProxyError
from .modules.ratelimit import RateLimited, admitted
from .providers import Provider

STRATEGIES = ("weighted", "least-busy", "latency", "usage")
COOLDOWN_429_S = 5.0  # a 429 without Retry-After
COOLDOWN_ERROR_S = 1.0  # a 5xx or timeout without Retry-After
COOLDOWN_CAP_S = 60.0  # the longest Retry-After honoured
BREAKER_FAILURES = 3  # failures in a row that open a deployment's breaker
BREAKER_COOLDOWN_S = 30.0
EWMA_ALPHA = 0.3  # weight of the newest time-to-first-byte sample
WINDOW_S = 60.0  # rpm/tpm are counted over the last minute


@dataclass(frozen=True)
class Deployment:
    """One place serving a model; ``provider`` carries the deployment's own key when it has one."""

    model: str
    name: str
    provider: Provider
    upstream_model: str
    weight: int = 1
    priority: int = 0
    rpm: int | None = None
    tpm: int | None = None
    own_key: bool = False
    row_id: int | None = None  # its row in model_deployments (None: built in a test)

    @property
    def key(self) -> str:
        return f"{self.model}/{self.name}"

    @property
    def window(self) -> str:
        """Its shared rate window's name: by row, so a deployment removed and added again starts
        afresh, as its health in each process does (client keys' windows are named by key id)."""
        return f"deployment:{self.row_id if self.row_id is not None else self.key}"


@dataclass(frozen=True)
class ModelRoute:
    """A model's deployments and how to choose among them."""

    name: str
    strategy: str = "weighted"
    deployments: tuple[Deployment, ...] = ()
    fallbacks: tuple[str, ...] = ()
    context_fallback: str | None = None
    problems: tuple[str, ...] = ()  # deployments left out (their provider is not configured)


@dataclass
class _State:
    in_flight: int = 0
    reserved: int = 0  # reservations not yet sent or given back: busy too (a burst reserves before it sends)
    ewma_ttfb: float | None = None
    cooldown_until: float = 0.0
    failures: int = 0  # in a row
    opened_at: float | None = None  # the breaker opened
    probe: list | None = None  # the half-open probe's reservation (then attempt): nobody else probes
    probe_sent: bool = False  # the probe's attempt began: it ends in finish, however long it runs
    current: float = 0.0  # smooth weighted round-robin
    window: collections.deque = field(default_factory=collections.deque)  # [time, tokens(, shared entry)] per request
    shared_full_until: float = 0.0  # the shared window refused this deployment until then


class Claim(list):
    """A deployment chosen for a request, ``[time, tokens]``, counted busy but not yet in its usage
    window: the request may still be answered without the provider (a cache hit, a wait for an
    identical request's answer). :meth:`Health.confirm` counts it once the request goes upstream."""


class Health:
    """The run-time state of every deployment: in flight, latency, cooldown, breaker, usage.

    ``shared``: rate windows every process of the installation counts in (``admit``/``correct``
    as :class:`~stockyard.modules.ratelimit.RateLimiter`), or None for a server alone."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, shared: Any = None) -> None:
        self._clock = clock
        self._shared = shared
        self._lock = threading.Lock()
        self._states: dict[str, _State] = {}

    def _state(self, d: Deployment) -> _State:
        state = self._states.get(d.key)
        if state is None:
            state = self._states[d.key] = _State()
        return state

    def _used(self, s: _State, now: float) -> tuple[int, int]:
        while s.window and s.window[0][0] <= now - WINDOW_S:
            s.window.popleft()
        return len(s.window), sum(entry[1] for entry in s.window)

    def _why_not(self, d: Deployment, s: _State, now: float, tokens: int) -> str | None:
        """Why ``d`` cannot take a request now (None: it can)."""
        if d.provider.key_error:
            return "key cannot be decrypted"
        if s.cooldown_until > now:
            return "cooling"
        if s.opened_at is not None and (now - s.opened_at < BREAKER_COOLDOWN_S or _probing(s, now)):
            return "breaker"
        requests, used = self._used(s, now)
        if (d.rpm is not None and requests + 1 > d.rpm) or (d.tpm is not None and used + tokens > d.tpm):
            return "limit"
        if s.shared_full_until > now:
            return "limit"
        return None

    def _headroom(self, d: Deployment, s: _State, now: float) -> float:
        requests, used = self._used(s, now)
        shares = [1 - requests / d.rpm] if d.rpm else []
        shares += [1 - used / d.tpm] if d.tpm else []
        return min(shares, default=math.inf)

    def choose(self, route: ModelRoute, tokens: int, exclude: frozenset[str] = frozenset()) -> Deployment:
        """The deployment for the next request, or a ProxyError saying why there is none."""
        with self._lock:
            return self._choose(route, tokens, exclude, self._clock())[0]

    def reserve(self, route: ModelRoute, tokens: int, exclude: frozenset[str] = frozenset()) -> tuple[Deployment, list]:
        """:meth:`choose` and count the request against the chosen one's rpm/tpm in one step, so
        concurrent requests cannot all pass a limit; :meth:`release` gives back an unused one.

        A limited deployment is then counted in the shared windows too; when they are full (the
        other processes used the quota), it is left out until they say it has room, and the
        choice is made again."""
        while True:
            with self._lock:
                now = self._clock()
                d, s = self._choose(route, tokens, exclude, now)
                entry = [now, tokens]
                s.window.append(entry)
                s.reserved += 1
                if s.opened_at is not None:  # half-open: claimed now, not at the attempt, or a
                    s.probe, s.probe_sent = entry, False  # burst reserving meanwhile would all probe it
            if self._admit_shared(d, s, entry):
                return d, entry

    def _admit_shared(self, d: Deployment, s: _State, entry: list) -> bool:
        """Count ``entry`` (in ``d``'s own window already) in the shared windows too, for a deployment
        with a limit; False (taken out again, ``d`` left out until they have room) when they are full."""
        if self._shared is None or (d.rpm is None and d.tpm is None):
            return True
        try:
            entry.append(admitted(self._shared, d.window, d.rpm, d.tpm, entry[1], f"deployment {d.key}"))
            return True
        except RateLimited as full:
            with self._lock:
                _forget(s, entry)
                s.shared_full_until = max(s.shared_full_until, self._clock() + (full.retry_after or 1))
            return False
        except BaseException:  # not counted (a busy database: its 503): nor in its own window
            with self._lock:
                _forget(s, entry)
            raise

    def claim(self, route: ModelRoute, tokens: int, exclude: frozenset[str] = frozenset()) -> tuple[Deployment, list]:
        """:meth:`choose`, the choice counted busy (least-busy, latency; a half-open breaker's probe
        claimed) but not yet against its rpm/tpm: a request the cache answers, or that waits for an
        identical request's answer, never uses the deployment's quota (a burst of them would fill it).
        :meth:`confirm` counts it when the request goes upstream, :meth:`release` gives it back."""
        with self._lock:
            now = self._clock()
            d, s = self._choose(route, tokens, exclude, now)
            claim = Claim([now, tokens])
            s.reserved += 1
            if s.opened_at is not None:
                s.probe, s.probe_sent = claim, False
            return d, claim

    def confirm(self, d: Deployment, claim: list) -> list | None:
        """Count a :meth:`claim` against ``d``'s rpm/tpm (its own window, then the shared ones) as
        :meth:`reserve` does: the reservation's entry, or None (the claim given back) when ``d`` has
        no room left now; the shared windows' error (a busy database's 503), the claim given back."""
        with self._lock:
            s, now = self._state(d), self._clock()
            requests, used = self._used(s, now)
            full = (d.rpm is not None and requests + 1 > d.rpm) or (d.tpm is not None and used + claim[1] > d.tpm)
            if full or s.shared_full_until > now:
                _forget(s, claim)
                return None
            entry = [now, claim[1]]
            s.window.append(entry)
            if s.probe is claim:
                s.probe = entry
        return entry if self._admit_shared(d, s, entry) else None

    def release(self, d: Deployment, entry: list) -> None:
        """A reservation the request did not use (a cache hit, a refusal, a deadline). In the
        shared windows its request still counts (they only correct tokens), its tokens do not."""
        with self._lock:
            s = self._states.get(d.key)
            if s is not None:
                _forget(s, entry)
        self._correct_shared(d, entry, 0)

    def _correct_shared(self, d: Deployment, entry: list, tokens: int) -> None:
        if len(entry) > 2 and self._shared is not None:
            self._shared.correct(d.window, entry[2], tokens)

    def _choose(self, route: ModelRoute, tokens: int, exclude: frozenset[str], now: float) -> tuple[Deployment, _State]:
        usable: list[tuple[Deployment, _State]] = []
        reasons: dict[str, str] = {}
        for d in route.deployments:
            if d.key in exclude:
                continue
            s = self._state(d)
            why = self._why_not(d, s, now, tokens)
            if why is None:
                usable.append((d, s))
            else:
                reasons[d.name] = why
        if not usable:
            raise self._none_left(route, reasons, now)
        tier = min(d.priority for d, _ in usable)
        usable = [(d, s) for d, s in usable if d.priority == tier]
        return self._pick(route.strategy, usable, now)

    def begin(self, d: Deployment, entry: list | None = None, tokens: int = 0) -> list:
        """A request goes to ``d`` now (its reservation ``entry``, or a new one): it counts in flight.

        Returns its entry in the usage window, for :meth:`finish` to correct."""
        with self._lock:
            s = self._state(d)
            if isinstance(entry, Claim):  # never confirmed (Plan.confirm does, for every proxied request)
                s.reserved = max(0, s.reserved - 1)
                entry = None
            if entry is None:
                entry = [self._clock(), tokens]
                s.window.append(entry)
            else:  # its reservation is sent now
                s.reserved = max(0, s.reserved - 1)
            if s.opened_at is not None:
                s.probe, s.probe_sent = entry, True  # half-open: this request is the one probe
            s.in_flight += 1
            return entry

    def _pick(self, strategy: str, usable: list[tuple[Deployment, _State]], now: float) -> tuple[Deployment, _State]:
        if strategy == "least-busy":
            return min(usable, key=lambda ds: _busy(ds[1]))
        if strategy == "latency":
            return min(usable, key=lambda ds: _latency_rank(ds[1]))
        if strategy == "usage":
            return max(usable, key=lambda ds: self._headroom(ds[0], ds[1], now))
        total = sum(d.weight for d, _ in usable)
        for d, s in usable:
            s.current += d.weight
        best = max(usable, key=lambda ds: ds[1].current)
        best[1].current -= total
        return best

    def _none_left(self, route: ModelRoute, reasons: dict[str, str], now: float) -> ProxyError:
        if not reasons:
            return ProxyError(
                503,
                f"model {route.name!r} has no usable deployment"
                + (f" ({'; '.join(route.problems)})" if route.problems else ""),
                code="no_deployment",
            )
        waits = []
        for d in route.deployments:
            s = self._states.get(d.key)
            if s is None or d.name not in reasons:
                continue
            if reasons[d.name] == "cooling":
                waits.append(s.cooldown_until - now)
            elif reasons[d.name] == "breaker" and s.opened_at is not None:
                waits.append(BREAKER_COOLDOWN_S - (now - s.opened_at))
            elif s.shared_full_until > now:
                waits.append(s.shared_full_until - now)
            elif s.window:
                waits.append(s.window[0][0] + WINDOW_S - now)
        wait_s = max(1, math.ceil(min(waits, default=1)))
        listed = ", ".join(f"{name}: {why}" for name, why in reasons.items())
        limited = all(why == "limit" for why in reasons.values())
        return ProxyError(
            429 if limited else 503,
            f"every deployment of model {route.name!r} is unavailable ({listed}); retry in {wait_s}s",
            code="deployments_at_limit" if limited else "deployments_unavailable",
            headers={"Retry-After": str(wait_s)},
        )

    def finish(
        self,
        d: Deployment,
        entry: list,
        *,
        ok: bool,
        failed: bool,
        status: int = 0,
        retry_after: float | None = None,
        ttfb_s: float | None = None,
        tokens: int | None = None,
    ) -> None:
        """The end of one request on ``d``: ``failed`` (429, 5xx, timeout) cools it down and
        counts towards its breaker; ``ok`` closes the breaker; ``tokens`` corrects the estimate."""
        with self._lock:
            s = self._state(d)
            now = self._clock()
            s.in_flight = max(0, s.in_flight - 1)
            if ttfb_s is not None:
                s.ewma_ttfb = ttfb_s if s.ewma_ttfb is None else EWMA_ALPHA * ttfb_s + (1 - EWMA_ALPHA) * s.ewma_ttfb
            if tokens is not None:
                entry[1] = tokens  # the real usage replaces the estimate
            if failed:
                pause = retry_after
                if pause is None:
                    pause = COOLDOWN_429_S if status == 429 else COOLDOWN_ERROR_S
                s.cooldown_until = max(s.cooldown_until, now + min(pause, COOLDOWN_CAP_S))
                s.failures += 1
                if s.opened_at is not None or s.failures >= BREAKER_FAILURES:
                    s.opened_at, s.probe = now, None
            elif ok:
                s.failures, s.opened_at, s.probe = 0, None, None
            elif s.probe is entry:
                s.probe = None  # neither: a refused probe (4xx) says the deployment is up; probe again
        if tokens is not None:
            self._correct_shared(d, entry, tokens)

    def keep_only(self, keys: set[str]) -> None:
        """Forget the state of deployments no longer configured (a new one starts afresh)."""
        with self._lock:
            for key in set(self._states) - keys:
                del self._states[key]

    def snapshot(self, d: Deployment) -> dict:
        """What the console and ``GET /api/models`` show about one deployment now."""
        with self._lock:
            s = self._states.get(d.key) or _State()
            now = self._clock()
            requests, used = self._used(s, now)
            if s.opened_at is None:
                breaker = "closed"
            else:
                breaker = "open" if now - s.opened_at < BREAKER_COOLDOWN_S else "half-open"
            return {
                "in_flight": s.in_flight,
                "reserved": s.reserved,  # chosen for requests not sent yet (a leak would skew least-busy)
                "ttfb_ms": None if s.ewma_ttfb is None else round(s.ewma_ttfb * 1000, 1),
                "cooling_down_s": math.ceil(max(0.0, s.cooldown_until - now) * 100) / 100,  # 0: over
                "cooldown_until": time.time() + (s.cooldown_until - now) if s.cooldown_until > now else None,
                "breaker": breaker,
                "failures": s.failures,
                "rpm_used": requests,
                "tpm_used": used,
            }


def _latency_rank(s: _State) -> tuple[int, float]:
    """The latency strategy's order: an unmeasured deployment first (once: while its first request
    is out, a burst must not all wait on what may be the slow one), then the lowest EWMA, then the
    unmeasured ones being measured, the least busy first."""
    if s.ewma_ttfb is not None:
        return 1, s.ewma_ttfb
    return (0, 0.0) if _busy(s) == 0 else (2, float(_busy(s)))


def _busy(s: _State) -> int:
    """Requests on a deployment: in flight, and reserved for an attempt not begun yet."""
    return s.in_flight + s.reserved


def _probing(s: _State, now: float) -> bool:
    """A half-open probe is out: sent (its attempt always ends in ``finish``, however slow), or
    reserved less than a breaker cooldown ago (a reservation its request never took nor gave back —
    a path that forgot it — expires, as the fallback module's claim does)."""
    return s.probe is not None and (s.probe_sent or now - s.probe[0] < BREAKER_COOLDOWN_S)


def _forget(s: _State, entry: list) -> None:
    """Take an unused reservation out of the window (and give back its claim to probe)."""
    s.reserved = max(0, s.reserved - 1)
    if s.probe is entry:
        s.probe = None
    if isinstance(entry, Claim):
        return  # never in the window (where ``remove`` would take an equal entry of another request)
    try:
        s.window.remove(entry)
    except ValueError:
        pass


class Models:
    """An immutable snapshot of the models with deployments; ``health`` outlives it."""

    def __init__(self, routes: list[ModelRoute], health: Health) -> None:
        self.routes = {r.name: r for r in routes}
        self.health = health
        health.keep_only({d.key for r in routes for d in r.deployments})

    def get(self, name: str | None) -> ModelRoute | None:
        return self.routes.get(name) if name else None

    def plan(
        self,
        route: ModelRoute,
        tokens: int,
        parent: "Plan | None" = None,
        refused: frozenset[str] = frozenset(),
        claim: bool = False,
    ) -> "Plan":
        """The way for one request (ProxyError when no deployment can take it now); ``parent``:
        the request's plan, whose :meth:`Plan.release` also gives back this one's reservations;
        ``refused``: keys of deployments the request may not use (guard's lists), never chosen;
        ``claim``: the first only claimed (:meth:`Health.claim`, the route step's: the cache may
        answer), counted against its limits by :meth:`Plan.confirm`."""
        plan = Plan(self, route, tokens, parent)
        plan.tried.extend(refused)
        if route.deployments or route.problems:
            pick = self.health.claim if claim else self.health.reserve
            plan.first = plan.hold(*pick(route, tokens, refused))
        return plan


class Plan:
    """One request's way through a model's deployments: the first chosen, then the next ones.

    ``first`` is None for a model without deployments (routed by name; its fallbacks apply).
    Each chosen deployment is reserved (counted against its limits) until the proxy
    :meth:`take` s it for an attempt; :meth:`release` gives back what was not taken."""

    def __init__(self, models: Models, route: ModelRoute, tokens: int, parent: "Plan | None" = None) -> None:
        self.models, self.route, self.tokens = models, route, tokens
        self.first: Deployment | None = None
        self.tried: list[str] = []
        self._held: dict[str, tuple[Deployment, list]] = parent._held if parent is not None else {}

    def hold(self, d: Deployment, entry: list) -> Deployment:
        """Keep ``entry`` until it is taken or released. A reservation of ``d`` already held (a
        model reached twice as a fallback) is given back first: replaced unreleased, it stayed
        counted (its rpm window, and busy for least-busy and latency for the server's life)."""
        held = self._held.pop(d.key, None)
        if held is not None:
            self.models.health.release(*held)
        self._held[d.key] = (d, entry)
        return d

    def take(self, d: Deployment) -> list | None:
        """The reservation of ``d`` for its attempt (None when it has none)."""
        held = self._held.pop(d.key, None)
        return held[1] if held is not None else None

    def release(self) -> None:
        for d, entry in self._held.values():
            self.models.health.release(d, entry)
        self._held.clear()

    def confirm(self) -> Deployment | None:
        """The request goes upstream: count the first deployment's claim against its limits; when it
        has no room left now, the strategy's choice among the others, reserved (a ProxyError when none
        can take it, as the route step says). Returns ``first`` (None: a model without deployments)."""
        if self.first is None:
            return None
        d, claim = self._held.get(self.first.key, (self.first, None))
        if not isinstance(claim, Claim):
            return self.first
        try:
            entry = self.models.health.confirm(d, claim)
        except BaseException:  # the shared windows' database refused it (a 503): given back by confirm too
            del self._held[d.key]
            raise
        if entry is not None:
            self._held[d.key] = (d, entry)
            return d
        del self._held[d.key]  # given back by confirm
        self.first = self.hold(*self.models.health.reserve(self.route, self.tokens, frozenset(self.tried)))
        return self.first

    def renew(self) -> Deployment | None:
        """Claim a deployment again after :meth:`release` (a request that waited for an identical
        one's answer, holding nothing meanwhile, and now asks the provider itself): ``first`` while it
        can take the request, else the strategy's choice now; a ProxyError as a new request would get
        when none can. Returns the new ``first`` (None for a model routed without deployments)."""
        if self.first is None:
            return None
        health, refused = self.models.health, frozenset(self.tried)  # not iterated yet: guard's refusals
        others = frozenset(d.key for d in self.route.deployments if d.key != self.first.key)
        try:
            self.first = self.hold(*health.claim(self.route, self.tokens, refused | others))
        except ProxyError:
            self.first = self.hold(*health.claim(self.route, self.tokens, refused))
        return self.first

    def deployments(self) -> Iterator[Deployment]:
        """The chosen deployment, then (after it failed) the best of those left, until none is."""
        d: Deployment | None = self.first
        while d is not None:
            self.tried.append(d.key)
            yield d
            try:
                d = self.hold(*self.models.health.reserve(self.route, self.tokens, frozenset(self.tried)))
            except ProxyError:
                d = None

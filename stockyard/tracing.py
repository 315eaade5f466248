"""Tracing a finished request: one row per attempt (failed ones first), scrubbed, and its metrics.

Rows go to the writer queue (``store.record``); nothing here waits for the database. A refusal
(``context.is_refusal``: Stockyard's own 4xx before any provider) is traced at a bounded rate —
per client key, or per address without one — and beyond it only counted in /metrics, so a
refused client cannot fill the disk however fast it sends.
"""

from __future__ import annotations

import logging
import threading
import time

from .config import Settings
from .context import Attempt, RequestContext
from .hosts import sender
from .loglimit import Throttle
from .metrics import Metrics
from .otel import Telemetry
from .scrub import Scrubber
from .store import Store
from .store.traces import trace_row_from

log = logging.getLogger("stockyard")

ERROR_MESSAGE_CAP = 2000
REFUSAL_BODY_CAP = 4096  # bytes of a refused request's body kept in its trace: enough to see what was refused


class RefusalRecorder:
    """Token buckets deciding which refused requests get a trace row.

    A refused sender must not be able to fill the disk: each sender (a client key, or an
    address without one: :meth:`Tracer.finish` names it) gets ``rate`` traces a second after a
    burst of ``burst``, and all senders together ``total_rate``; beyond that a refusal is only
    counted in /metrics.
    """

    def __init__(
        self,
        rate: float = 5.0,
        burst: float = 20.0,
        total_rate: float = 50.0,
        total_burst: float = 200.0,
        max_senders: int = 4096,
    ) -> None:
        self.rate, self.burst, self.max_senders = rate, burst, max_senders
        self.total_rate, self.total_burst = total_rate, total_burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._total = (total_burst, time.monotonic())
        self._lock = threading.Lock()

    @staticmethod
    def _take(bucket: tuple[float, float], rate: float, burst: float, now: float) -> tuple[bool, tuple[float, float]]:
        tokens = min(burst, bucket[0] + (now - bucket[1]) * rate)
        return (True, (tokens - 1, now)) if tokens >= 1 else (False, (tokens, now))

    def allow(self, who: str) -> bool:
        """Whether a refusal of ``who`` gets its trace row now (a token of its bucket and the total's)."""
        now = time.monotonic()
        with self._lock:
            ok, self._buckets[who] = self._take(self._buckets.get(who, (self.burst, now)), self.rate, self.burst, now)
            if ok:
                ok, self._total = self._take(self._total, self.total_rate, self.total_burst, now)
            if len(self._buckets) > self.max_senders:  # forget the senders whose bucket is full again
                full_after = self.burst / self.rate
                self._buckets = {k: b for k, b in self._buckets.items() if now - b[1] < full_after}
            return ok


class Tracer:
    def __init__(
        self, settings: Settings, store: Store, metrics: Metrics, scrub: Scrubber, telemetry: Telemetry | None = None
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._scrub = scrub
        self._telemetry = telemetry  # OTLP export, when configured
        # Refusals: of senders without a client key, per address (an IPv6 sender by its /64: metadata
        # only, the body unread); of client keys, per key (their rows are larger: a body's start, the
        # user and tags). Each kind has its own total, so neither crowds out the other.
        self.refusals_by_address = RefusalRecorder()
        self.refusals_by_key = RefusalRecorder(rate=1.0, burst=20.0, total_rate=10.0, total_burst=100.0)
        self._unstored = Throttle()  # traces kept without their bodies: a line a minute, not one each

    def finish(self, ctx: RequestContext) -> None:
        """Trace one request (priced already): its failed attempts first, each a row of its
        own under the request's trace id, then the request. Never raises.

        A refusal beyond its sender's rate is not written: it is counted in the metrics (its
        key's requests, ``refusals_unrecorded_total`` or ``key_refusals_unrecorded_total``),
        and ``ctx.traced`` says so. A refusal that is written keeps its body's first
        ``REFUSAL_BODY_CAP`` bytes."""
        if ctx.refused and not self._trace_refusal(ctx):
            ctx.traced = False
            try:
                self._metrics.observe_request(ctx)
                self._metrics.count("key_refusals_unrecorded_total" if ctx.key_id else "refusals_unrecorded_total")
            except Exception as exc:  # metrics must never cost a request
                log.error("metrics update failed for %s: %s", ctx.trace_id, exc)
            if self._telemetry is not None:  # counted in the OTLP metrics too, without its spans
                self._telemetry.measure(ctx)
            return
        shed = False  # a row went without its bodies: the request's other rows do too, without waiting
        for n, attempt in enumerate(ctx.attempts, 1):
            shed = self._record(ctx, attempt, parent_id=ctx.trace_id, number=n, shed=shed)
        self._record(ctx, None, parent_id=None, number=len(ctx.attempts) + 1, shed=shed)
        if self._telemetry is not None:
            self._telemetry.export(ctx)

    def _trace_refusal(self, ctx: RequestContext) -> bool:
        if ctx.key_id:
            return self.refusals_by_key.allow(ctx.key_id)
        return self.refusals_by_address.allow(sender(ctx.client_addr))

    def _record(
        self, ctx: RequestContext, attempt: Attempt | None, *, parent_id: str | None, number: int, shed: bool = False
    ) -> bool:
        """Queue one trace row; True if it (or an earlier row of the request: ``shed``) went without its
        bodies for want of the writer's room — the request waits for room once, not once a row."""
        a = attempt or ctx.attempt
        if a.error_message:
            a.error_message = self._scrub.text(a.error_message)[:ERROR_MESSAGE_CAP]
        settings = self._settings
        record = trace_row_from(
            ctx,
            attempt,
            store_bodies=settings.store_bodies,
            cap=min(settings.body_cap_bytes, REFUSAL_BODY_CAP) if ctx.refused else settings.body_cap_bytes,
            parent_id=parent_id,
            number=number,
        )
        if settings.store_bodies and record.request_body:
            record.request_body = self._scrub.bytes(record.request_body)
        if record.response_body:
            record.response_body = self._scrub.bytes(record.response_body)
        record.pack()  # compressed here, on the request's thread: the one writer thread only inserts
        size, owner = record.held_bytes(), ctx.sender
        if size and (shed or not self._store.room(size, owner)):
            shed = True
            record.drop_bodies()
            size = 0
            self._metrics.count("trace_bodies_unstored_total")
            self._unstored.say(
                log,
                logging.WARNING,
                "the database writer is behind: trace %s stored without its bodies (queued records hold "
                "their limit of bodies, or its sender's share of it; stockyard_trace_bodies_unstored_total "
                "counts them)",
                ctx.trace_id,
            )
        self._store.submit(record.write, size=size, owner=owner)
        try:
            self._metrics.observe_request(ctx, attempt)
        except Exception as exc:  # metrics must never cost a request
            log.error("metrics update failed for %s: %s", ctx.trace_id, exc)
        return shed

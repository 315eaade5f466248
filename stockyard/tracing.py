"""Tracing a finished request: one row per attempt (failed ones first), scrubbed, and its metrics.

Rows go to the writer queue (``store.record``); nothing here waits for the database.
"""

from __future__ import annotations

import logging

from .config import Settings
from .context import Attempt, RequestContext
from .metrics import Metrics
from .otel import Telemetry
from .scrub import Scrubber
from .store import Store
from .store.traces import trace_row_from

log = logging.getLogger("stockyard")

ERROR_MESSAGE_CAP = 2000


class Tracer:
    def __init__(
        self, settings: Settings, store: Store, metrics: Metrics, scrub: Scrubber, telemetry: Telemetry | None = None
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._scrub = scrub
        self._telemetry = telemetry  # OTLP export, when configured

    def finish(self, ctx: RequestContext) -> None:
        """Trace one request (priced already): its failed attempts first, each a row of its
        own under the request's trace id, then the request. Never raises."""
        for n, attempt in enumerate(ctx.attempts, 1):
            self._record(ctx, attempt, parent_id=ctx.trace_id, number=n)
        self._record(ctx, None, parent_id=None, number=len(ctx.attempts) + 1)
        if self._telemetry is not None:
            self._telemetry.export(ctx)

    def _record(self, ctx: RequestContext, attempt: Attempt | None, *, parent_id: str | None, number: int) -> None:
        a = attempt or ctx.attempt
        if a.error_message:
            a.error_message = self._scrub.text(a.error_message)[:ERROR_MESSAGE_CAP]
        settings = self._settings
        record = trace_row_from(
            ctx,
            attempt,
            store_bodies=settings.store_bodies,
            cap=settings.body_cap_bytes,
            parent_id=parent_id,
            number=number,
        )
        if settings.store_bodies and record.request_body:
            record.request_body = self._scrub.bytes(record.request_body)
        if record.response_body:
            record.response_body = self._scrub.bytes(record.response_body)
        record.pack()  # compressed here, on the request's thread: the one writer thread only inserts
        self._store.submit(record.write)
        try:
            self._metrics.observe_request(ctx, attempt)
        except Exception as exc:  # metrics must never cost a request
            log.error("metrics update failed for %s: %s", ctx.trace_id, exc)

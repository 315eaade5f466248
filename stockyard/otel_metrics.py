"""OpenTelemetry GenAI metrics: in-memory aggregates of finished requests, sent over OTLP/HTTP JSON.

With ``STOCKYARD_OTLP_ENDPOINT`` set, :meth:`Meter.record` turns a finished request (the same
``RequestContext`` :func:`stockyard.otel.spans_for` reads, with the same attribute code:
:func:`stockyard.otel.identity`) into the conventions' metrics, and :class:`MetricExporter` posts
them to ``{endpoint}/v1/metrics`` every ``STOCKYARD_OTLP_METRICS_INTERVAL`` and once more at a
clean stop:

- as the provider's client, per upstream attempt: ``gen_ai.client.token.usage`` (``{token}``, by
  ``gen_ai.token.type``), ``gen_ai.client.operation.duration`` (s), and ``stockyard.cost_uc`` (a
  counter of micro-cents, the attempts' exact integer costs);
- as the client's server, per request: ``gen_ai.server.request.duration`` (s), and for a streamed
  answer that succeeded ``gen_ai.server.time_to_first_token`` (s, to the first chunk written to the
  client) and ``gen_ai.server.time_per_output_token`` (s, the rest of its time over its other tokens).

Temporality is cumulative, histograms have the conventions' explicit buckets. A failed export is
not retried: the next one carries the same totals. The request thread computes its few
measurements and updates a few dicts under one lock; the exporter thread copies them and builds
the JSON. Each instrument keeps at most ``max_series`` attribute sets: beyond them a measurement
goes to the instrument's ``otel.metric.overflow=true`` series (the OTel SDK's cardinality limit)
and is counted. No client key, end user, tag or prompt text is ever an attribute; a refused
request (Stockyard's own 4xx) names no model, which there is only the client's word.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from .context import RequestContext
from .otel import (
    POST_TIMEOUT_S,
    SCOPE,
    _attributes,
    call_model,
    encode,
    failed,
    identity,
    post,
    resource,
    server_address,
)

log = logging.getLogger("stockyard.otel")

MAX_SERIES = 2000  # attribute sets an instrument keeps (the OTel SDK's default cardinality limit)
MODEL_CHARS = 100  # a model name's characters in an attribute (as /metrics keeps them)
OVERFLOW = (("otel.metric.overflow", True),)
CUMULATIVE = 2  # AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
# The conventions' ExplicitBucketBoundaries, per instrument
TOKEN_BOUNDS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BOUNDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
FIRST_TOKEN_BOUNDS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
PER_TOKEN_BOUNDS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


@dataclass(frozen=True)
class Instrument:
    name: str
    unit: str
    description: str
    bounds: tuple[float, ...] | None  # None: a monotonic counter of integers


TOKEN_USAGE = Instrument(
    "gen_ai.client.token.usage", "{token}", "Number of input and output tokens used.", TOKEN_BOUNDS
)
OPERATION_DURATION = Instrument("gen_ai.client.operation.duration", "s", "GenAI operation duration.", DURATION_BOUNDS)
COST = Instrument("stockyard.cost_uc", "{microcent}", "What the provider calls cost, in micro-cents (1e-8 USD).", None)
REQUEST_DURATION = Instrument(
    "gen_ai.server.request.duration", "s", "Generative AI server request duration.", DURATION_BOUNDS
)
FIRST_TOKEN = Instrument(
    "gen_ai.server.time_to_first_token",
    "s",
    "Time to generate first token for successful responses.",
    FIRST_TOKEN_BOUNDS,
)
PER_TOKEN = Instrument(
    "gen_ai.server.time_per_output_token",
    "s",
    "Time per output token generated after the first token for successful responses.",
    PER_TOKEN_BOUNDS,
)
INSTRUMENTS = (TOKEN_USAGE, OPERATION_DURATION, COST, REQUEST_DURATION, FIRST_TOKEN, PER_TOKEN)

Attrs = tuple[tuple[str, Any], ...]
Measurement = tuple[Instrument, Attrs, float]


@dataclass
class Point:
    """One attribute set's aggregate: a histogram's buckets, count, sum, min and max, or a counter's sum."""

    counts: list[int] | None
    count: int = 0
    total: float = 0
    low: float = float("inf")
    high: float = float("-inf")

    def add(self, bounds: tuple[float, ...] | None, value: float) -> None:
        self.count += 1
        self.total += value
        if self.counts is not None and bounds is not None:
            self.counts[bisect_left(bounds, value)] += 1  # a bucket holds values up to its bound, inclusive
            self.low, self.high = min(self.low, value), max(self.high, value)


def _frozen(values: dict[str, Any]) -> Attrs:
    return tuple((k, v) for k, v in values.items() if v is not None)


def measurements(ctx: RequestContext, now: float) -> list[Measurement]:
    """What one finished request adds to the metrics (``now``: its end, ``time.perf_counter()``)."""
    out: list[Measurement] = []
    for a in (*ctx.attempts, ctx.attempt):
        out += attempt_measurements(ctx, a, now)
    a = ctx.attempt
    served = identity(ctx, a)
    if not taken(a):  # its model is only the client's word
        served.update(unnamed(a))
    served = _capped(served)
    took = max(0.0, now - ctx.started)
    out.append((REQUEST_DURATION, _frozen(served), took))
    if ctx.stream and a.first_chunk is not None and not failed(a):
        first = max(0.0, a.first_chunk - ctx.started)
        attrs = _frozen({**served, "error.type": None})
        out.append((FIRST_TOKEN, attrs, first))
        output = a.usage.completion_tokens if a.usage is not None else 0
        if output > 1:  # the decode's pace: the time after the first token over the tokens after it
            out.append((PER_TOKEN, attrs, max(0.0, took - first) / (output - 1)))
    return out


def taken(a: Any) -> bool:
    """Whether a provider took the model an attempt asked for: it answered it (or billed for it), or
    failed otherwise than with a 4xx. Else (refused before a call, a provider's 404 or 400 for a name it
    does not know) the model is only the client's word, and naming it would let one client make up a
    series per request until the cap sends every key's measurements to the overflow series."""
    if a.provider is None:
        return False
    return not failed(a) or a.usage is not None or bool(a.served_model) or not 400 <= a.status < 500


def unnamed(a: Any) -> dict[str, Any]:
    """The model attributes of an attempt whose model the provider did not take (:func:`taken`): none
    asked, and only a model the provider said it served."""
    return {"gen_ai.request.model": None, "gen_ai.response.model": a.served_model}


def attempt_measurements(ctx: RequestContext, a: Any, now: float) -> list[Measurement]:
    """An upstream attempt's: its duration, its tokens (as its span reports them) and its cost."""
    out: list[Measurement] = []
    called = bool(a.ts_ms) and a.provider is not None  # no call was made: refused, or a cache hit
    named = identity(ctx, a)
    named["gen_ai.request.model"] = call_model(ctx, a)
    if not taken(a):
        named.update(unnamed(a))
    named = _capped({**named, **server_address(a)}) if called else _capped(named)
    plain = _frozen({**named, "error.type": None})  # tokens and cost are no error's
    if called:
        took = max(0.0, (a.ended or now) - a.started) if a.started else 0.0
        out.append((OPERATION_DURATION, _frozen(named), took))
        u = a.usage
        if u is not None:
            out.append((TOKEN_USAGE, (*plain, ("gen_ai.token.type", "input")), u.prompt_tokens))
            if ctx.endpoint != "embeddings":  # an embedding is no generated output (as its span says)
                out.append((TOKEN_USAGE, (*plain, ("gen_ai.token.type", "output")), u.completion_tokens))
    if a.cost_uc:  # every billed attempt's, as the request span's stockyard.cost_uc sums them
        out.append((COST, plain, int(a.cost_uc)))
    return out


def _capped(values: dict[str, Any]) -> dict[str, Any]:
    """Model names cut to ``MODEL_CHARS`` (a provider's or a client's name may be long)."""
    for name in ("gen_ai.request.model", "gen_ai.response.model"):
        if isinstance(values.get(name), str):
            values[name] = values[name][:MODEL_CHARS]
    return values


@dataclass
class Meter:
    """The GenAI metrics of this process, cumulative since its start; bounded in attribute sets."""

    max_series: int = MAX_SERIES
    start_ns: int = field(default_factory=time.time_ns)
    overflowed: int = 0  # measurements folded into an overflow series
    _points: dict[str, dict[Attrs, Point]] = field(default_factory=lambda: {i.name: {} for i in INSTRUMENTS})
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ctx: RequestContext) -> None:
        """Add a finished request's measurements (built before the lock; under it, a few dict updates)."""
        found = measurements(ctx, time.perf_counter())
        with self._lock:
            for instrument, attrs, value in found:
                family = self._points[instrument.name]
                point = family.get(attrs)
                if point is None:
                    if len(family) >= self.max_series:
                        self.overflowed += 1
                        attrs = OVERFLOW
                        point = family.get(attrs)
                    if point is None:
                        point = family[attrs] = Point([0] * (len(instrument.bounds) + 1) if instrument.bounds else None)
                point.add(instrument.bounds, value)

    def snapshot(self) -> dict[str, list[tuple[Attrs, Point]]]:
        """A copy of every point, taken under the lock (the JSON is built outside it)."""
        with self._lock:
            return {
                name: [
                    (attrs, Point(list(p.counts) if p.counts else None, p.count, p.total, p.low, p.high))
                    for attrs, p in family.items()
                ]
                for name, family in self._points.items()
            }

    def export_body(self, origin: dict[str, Any]) -> dict[str, Any] | None:
        """An OTLP ``ExportMetricsServiceRequest`` of every series so far; None before any measurement."""
        points, now = self.snapshot(), str(time.time_ns())
        start = str(self.start_ns)
        metrics = [_metric(i, points[i.name], start, now) for i in INSTRUMENTS if points[i.name]]
        if not metrics:
            return None
        return {"resourceMetrics": [{"resource": origin, "scopeMetrics": [{"scope": SCOPE, "metrics": metrics}]}]}


def _metric(instrument: Instrument, points: list[tuple[Attrs, Point]], start: str, now: str) -> dict[str, Any]:
    """One instrument's OTLP metric: a cumulative explicit-bucket histogram, or a cumulative monotonic sum."""
    head = {"name": instrument.name, "unit": instrument.unit, "description": instrument.description}
    data: list[dict[str, Any]]
    if instrument.bounds is None:
        data = [
            {
                "attributes": _attributes(dict(a)),
                "startTimeUnixNano": start,
                "timeUnixNano": now,
                "asInt": str(int(p.total)),
            }
            for a, p in points
        ]
        return {**head, "sum": {"aggregationTemporality": CUMULATIVE, "isMonotonic": True, "dataPoints": data}}
    data = [
        {
            "attributes": _attributes(dict(a)),
            "startTimeUnixNano": start,
            "timeUnixNano": now,
            "count": str(p.count),
            "sum": p.total,
            "bucketCounts": [str(c) for c in p.counts or ()],
            "explicitBounds": list(instrument.bounds),
            "min": p.low,
            "max": p.high,
        }
        for a, p in points
    ]
    return {**head, "histogram": {"aggregationTemporality": CUMULATIVE, "dataPoints": data}}


class MetricExporter:
    """Posts the meter's totals every ``interval_s`` on its own thread, and once more when stopped."""

    def __init__(
        self,
        endpoint: str,
        headers: dict[str, str],
        meter: Meter,
        interval_s: float,
        *,
        origin: dict[str, Any] | None = None,
        post_timeout_s: float = POST_TIMEOUT_S,
    ) -> None:
        self.url = endpoint.rstrip("/") + "/v1/metrics"
        self.meter = meter
        self._headers = {"Content-Type": "application/json", **headers}
        self._resource = origin or resource()
        self._interval_s = interval_s
        self._post_timeout_s = post_timeout_s
        self._stop = threading.Event()
        self.exports = 0
        self.failures = 0
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="stockyard-otlp-metrics", daemon=True)

    def start(self) -> "MetricExporter":
        self._thread.start()
        return self

    def stop(self, timeout: float = POST_TIMEOUT_S) -> None:
        """Have the thread send the totals a last time (a clean stop loses no interval's worth) and
        wait for it at most ``timeout`` seconds: a collector that hangs never holds the stop longer."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._export()
        self._export()

    def _export(self) -> bool:
        """Post the totals once; True when the collector took them (or there were none yet)."""
        try:
            body = self.meter.export_body(self._resource)
        except Exception as exc:  # telemetry must never stop the thread
            log.error("could not build the OTLP metrics: %s", exc)
            return False
        if body is None:
            return True
        problem = post(self.url, encode(body), self._headers, self._post_timeout_s)
        if problem is None:
            self.exports += 1
            if self._failing:
                log.info("OTLP metrics export to %s works again", self.url)
                self._failing = False
            return True
        self.failures += 1
        if not self._failing:  # once per outage, not per interval
            log.warning(
                "OTLP metrics export to %s failed (%s); the next one sends the same totals", self.url, problem[1]
            )
            self._failing = True
        return False

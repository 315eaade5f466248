"""``GET /metrics`` in the Prometheus text format, from counters kept in memory.

:class:`Metrics` is updated once per finished request (``tracing.Tracer.finish``): one lock and a
few dict increments, no I/O. Gauges about the store (queue depth, dropped records, file
sizes, snapshots, retention) are read when ``/metrics`` is scraped. Counters start at zero
when the server starts, as Prometheus expects; totals that survive restarts live in the
database (``stockyard costs``).

Label values that come from clients (model names) are bounded: after ``MAX_SERIES``
distinct label sets, new ones are counted under ``model="_other"`` so a client sending
random model names cannot grow the server's memory.

Series per key name (``stockyard_key_*``) are bounded too: every key's counts are kept (keys
are the operator's, not the clients'), and a scrape shows the ``STOCKYARD_METRICS_TOP_KEYS``
busiest keys by requests under their names and the sum of the rest as ``key="_other"``
(requests without a client key: ``key="_none"``). A key that enters or leaves the top moves its
counts between its series and ``_other``.
"""

from __future__ import annotations

import math
import re
import sqlite3
import threading
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from .app import App
    from .context import Attempt, RequestContext

MAX_SERIES = 2000
OTHER = "_other"
# Seconds; LLM calls run from milliseconds (cache hits, embeddings) to minutes (long generations).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
UPSTREAM_ERROR_OUTCOMES = ("upstream_error", "stream_broken")
# Unlabelled counters shown as 0 before the first event.
ZERO_WHEN_EMPTY = (
    "budget_rejections_total",
    "refusals_unrecorded_total",
    "key_refusals_unrecorded_total",
    "trace_bodies_unstored_total",
    "connections_refused_total",
    "results_readers_refused_total",
    "websocket_connections_refused_total",
    "clients_left_waiting_total",
    "request_bodies_refused_total",
    "uploads_refused_total",
)

Labels = tuple[tuple[str, str], ...]
NO_KEY = "_none"  # key names start with a letter or digit, so neither of these is one
TOKEN_KINDS = ("prompt", "completion", "cached", "reasoning")


class Histogram:
    __slots__ = ("buckets", "counts", "sum", "count")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        i = bisect_left(self.buckets, value)  # the first bound >= value; past the last one: +Inf only
        if i < len(self.counts):
            self.counts[i] += 1
        self.sum += value
        self.count += 1


class KeyStats:
    """One key name's counts: requests, tokens by kind, cost and request latency."""

    __slots__ = ("requests", "tokens", "cost_uc", "latency")

    def __init__(self) -> None:
        self.requests = 0
        self.tokens = dict.fromkeys(TOKEN_KINDS, 0)
        self.cost_uc = 0
        self.latency = Histogram(LATENCY_BUCKETS)

    def add(self, other: "KeyStats") -> None:
        self.requests += other.requests
        self.cost_uc += other.cost_uc
        for kind, n in other.tokens.items():
            self.tokens[kind] += n
        h, o = self.latency, other.latency
        h.counts = [a + b for a, b in zip(h.counts, o.counts)]
        h.sum += o.sum
        h.count += o.count

    def copy(self) -> "KeyStats":
        out = KeyStats()
        out.add(self)
        return out


class Metrics:
    """The request counters of one server process."""

    def __init__(self, top_keys: int = 20) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, dict[Labels, int]] = {}
        self.histograms: dict[str, dict[Labels, Histogram]] = {}
        self._series = 0
        self.top_keys = top_keys
        self.by_key: dict[str, KeyStats] = {}

    def _labels(self, family: dict, labels: Labels) -> Labels:
        """``labels``, or the same with model="_other" once too many series exist."""
        if labels in family or self._series < MAX_SERIES:
            return labels
        return tuple((k, OTHER if k == "model" else v) for k, v in labels)

    def inc(self, name: str, labels: Labels, amount: int = 1) -> None:
        family = self.counters.setdefault(name, {})
        labels = self._labels(family, labels)
        if labels not in family:
            self._series += 1
            family[labels] = 0
        family[labels] += amount

    def observe(self, name: str, labels: Labels, value: float) -> None:
        family = self.histograms.setdefault(name, {})
        labels = self._labels(family, labels)
        hist = family.get(labels)
        if hist is None:
            self._series += 1
            hist = family[labels] = Histogram(LATENCY_BUCKETS)
        hist.observe(value)

    def observe_request(self, ctx: "RequestContext", attempt: "Attempt | None" = None) -> None:
        """Count one finished request, or one failed ``attempt`` of it (never raises on odd input)."""
        a = attempt or ctx.attempt
        started = a.started if attempt is not None else ctx.started
        provider = a.provider.name if a.provider else "none"
        # Only a routed request has a model worth a label; the rest are refusals.
        model = (a.served_model or a.upstream_model or ctx.model or "") if a.provider else ""
        model = model[:100]
        status = str(a.status or 0)
        by_model = (("provider", provider), ("model", model))
        by_provider = (("provider", provider),)
        latency = max(0.0, time.perf_counter() - started)
        key_name = getattr(ctx.key, "name", None) or NO_KEY
        with self._lock:
            self.inc("requests_total", (*by_model, ("status", status)))
            self.observe("request_duration_seconds", by_provider, latency)
            self.observe("model_request_duration_seconds", by_model, latency)
            stats = self.by_key.get(key_name)
            if stats is None:
                stats = self.by_key[key_name] = KeyStats()
            if attempt is None:
                stats.requests += 1
                stats.latency.observe(latency)
            if a.cost_uc:
                stats.cost_uc += int(a.cost_uc)
            if a.ttfb is not None:
                self.observe("time_to_first_byte_seconds", by_provider, max(0.0, a.ttfb - started))
            usage = a.usage
            if usage is not None:
                for kind, count in (
                    ("prompt", usage.prompt_tokens),
                    ("completion", usage.completion_tokens),
                    ("cached", usage.cached_tokens),
                    ("reasoning", usage.reasoning_tokens),
                ):
                    if count:
                        self.inc("tokens_total", (*by_model, ("kind", kind)), int(count))
                        stats.tokens[kind] += int(count)
            if a.cost_uc:
                self.inc("cost_microcents_total", by_model, int(a.cost_uc))
            if ctx.cache_hit and attempt is None:
                self.inc("cache_hits_total", by_model)
            if a.error_type == "budget_exceeded":
                self.inc("budget_rejections_total", ())
            if a.outcome in UPSTREAM_ERROR_OUTCOMES or (a.error_type or "").startswith("upstream_"):
                kind = (a.error_type or a.outcome).removeprefix("upstream_")[:40]
                self.inc("upstream_errors_total", (*by_provider, ("kind", kind)))

    def count_module_error(self, module: str, hook: str) -> None:
        """A module's hook raised (see ``chain.HookFailures``); module names are ours, so bounded."""
        with self._lock:
            self.inc("module_errors_total", (("module", module[:100]), ("hook", hook)))

    def count(self, name: str, amount: int = 1) -> None:
        """One more of an unlabelled event counted at the server's edge (refusals, full house)."""
        with self._lock:
            self.inc(name, (), amount)

    def snapshot(self) -> tuple[dict[str, dict[Labels, int]], dict[str, dict[Labels, tuple]]]:
        """A consistent copy for rendering (taken under the lock, rendered outside it), the key
        name series folded to the busiest ``top_keys`` and ``_other``."""
        with self._lock:
            counters = {name: dict(family) for name, family in self.counters.items()}
            hists = {
                name: {labels: (list(h.counts), h.sum, h.count) for labels, h in family.items()}
                for name, family in self.histograms.items()
            }
            by_key = {name: stats.copy() for name, stats in self.by_key.items()}
        for name, stats in top_keys(by_key, self.top_keys).items():
            key = (("key", name),)
            counters.setdefault("key_requests_total", {})[key] = stats.requests
            counters.setdefault("key_cost_microcents_total", {})[key] = stats.cost_uc
            for kind, n in stats.tokens.items():
                if n:
                    counters.setdefault("key_tokens_total", {})[(*key, ("kind", kind))] = n
            h = stats.latency
            hists.setdefault("key_request_duration_seconds", {})[key] = (h.counts, h.sum, h.count)
        return counters, hists


def top_keys(by_key: dict[str, KeyStats], n: int) -> dict[str, KeyStats]:
    """The ``n`` busiest key names (by requests, then name) as they are, the rest summed as ``_other``."""
    ranked = sorted(by_key.items(), key=lambda item: (-item[1].requests, item[0]))
    out = dict(ranked[:n])
    if len(ranked) > n:
        other = out[OTHER] = KeyStats()
        for _, stats in ranked[n:]:
            other.add(stats)
    return out


# -- rendering ----------------------------------------------------------------------------------

HELP = {
    "requests_total": ("counter", "Proxied requests by provider, model and HTTP status."),
    "request_duration_seconds": ("histogram", "Time from request received to last byte sent."),
    "time_to_first_byte_seconds": ("histogram", "Time from request received to the first answer byte."),
    "tokens_total": ("counter", "Tokens the providers reported (or Stockyard estimated), by kind."),
    "cost_microcents_total": ("counter", "Cost in micro-cents (1e-8 USD), as recorded in traces."),
    "model_request_duration_seconds": ("histogram", "Time from request received to last byte sent, by model."),
    "key_requests_total": ("counter", "Proxied requests by client key name (the busiest keys; the rest as _other)."),
    "key_tokens_total": ("counter", "Tokens by client key name and kind."),
    "key_cost_microcents_total": ("counter", "Cost in micro-cents (1e-8 USD) by client key name."),
    "key_request_duration_seconds": ("histogram", "Time from request received to last byte sent, by key name."),
    "cache_hits_total": ("counter", "Requests answered from the cache."),
    "budget_rejections_total": ("counter", "Requests refused because a budget was spent."),
    "upstream_errors_total": ("counter", "Provider failures: error statuses, timeouts, resets, broken streams."),
    "module_errors_total": (
        "counter",
        "Module hooks that raised (the request went on without them), by module and hook.",
    ),
    "refusals_unrecorded_total": (
        "counter",
        "Requests refused without a valid client key and not traced because their address sent too many.",
    ),
    "key_refusals_unrecorded_total": (
        "counter",
        "Requests of a client key that Stockyard refused (rate limit, budget, a bad request, ...) and did not "
        "trace because the key had too many refusals.",
    ),
    "trace_bodies_unstored_total": (
        "counter",
        "Traces stored without their bodies: the database writer was behind and its queued records held "
        "their limit of bodies (64 MiB) for 2 s.",
    ),
    "connections_refused_total": (
        "counter",
        "Connections refused at once: 503 at STOCKYARD_MAX_CONNECTIONS, 429 at STOCKYARD_MAX_CONNECTIONS_PER_CLIENT.",
    ),
    "results_readers_refused_total": (
        "counter",
        "Message batch results downloads refused at once: 503 at STOCKYARD_MAX_RESULTS_READERS, 429 past a key's "
        "quarter of them.",
    ),
    "websocket_connections_refused_total": (
        "counter",
        "Responses API WebSocket handshakes refused at once (a 426: the client goes on over HTTP) at "
        "STOCKYARD_WEBSOCKET_MAX_CONNECTIONS or past a key's quarter of them.",
    ),
    "clients_left_waiting_total": (
        "counter",
        "Proxied requests whose client closed its connection while they waited for the provider: a stream's "
        "upstream call is ended, a whole answer read to its end and billed.",
    ),
    "request_bodies_refused_total": (
        "counter",
        "Requests refused (503) because the request bodies in memory held STOCKYARD_REQUEST_BODIES_MB for "
        "their whole wait.",
    ),
    "uploads_refused_total": (
        "counter",
        "Uploads refused (503) because the uploads spooled on disk held STOCKYARD_UPLOADS_MB for their whole wait.",
    ),
}


_UNPRINTABLE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(value: str) -> str:
    """A label value as the text format wants it; characters that end a line for some readers
    (``\r``, U+2028, …) become ``?``: a client-chosen model name must not split a sample."""
    value = _UNPRINTABLE.sub("?", value)
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels_text(labels: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if value != value:
        return "NaN"  # Prometheus' spelling
    return repr(value) if isinstance(value, float) else str(value)


def _family(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP stockyard_{name} {help_text}")
    lines.append(f"# TYPE stockyard_{name} {kind}")


def render(app: "App") -> str:
    """This process's metrics; in a worker of ``serve --workers N``, every worker's, each series
    labelled with its ``worker`` (:class:`stockyard.workers.GroupMetrics`)."""
    own = render_own(app)
    group = getattr(app, "group_metrics", None)
    return own if group is None else group.combine(own)


def render_own(app: "App") -> str:
    counters, hists = app.metrics.snapshot()
    lines: list[str] = []
    for name, (kind, help_text) in HELP.items():
        if kind == "counter":
            family = counters.get(name, {})
            _family(lines, name, kind, help_text)
            if not family and name in ZERO_WHEN_EMPTY:
                lines.append(f"stockyard_{name} 0")
            for labels, value in sorted(family.items()):
                lines.append(f"stockyard_{name}{_labels_text(labels)} {value}")
        else:
            _family(lines, name, kind, help_text)
            for labels, (counts, total, count) in sorted(hists.get(name, {}).items()):
                running = 0
                for bound, n in zip(LATENCY_BUCKETS, counts):
                    running += n
                    lines.append(f"stockyard_{name}_bucket{_labels_text((*labels, ('le', _number(bound))))} {running}")
                lines.append(f"stockyard_{name}_bucket{_labels_text((*labels, ('le', '+Inf')))} {count}")
                lines.append(f"stockyard_{name}_sum{_labels_text(labels)} {_number(total)}")
                lines.append(f"stockyard_{name}_count{_labels_text(labels)} {count}")
    for name, kind, help_text, gauge in store_gauges(app):
        _family(lines, name, kind, help_text)
        lines.append(f"stockyard_{name} {_number(gauge)}")
    return "\n".join(lines) + "\n"


def _database_size(app: "App") -> float:
    """The database's size; NaN while it cannot be read (PostgreSQL lost, or every read connection
    busy past Store.peek's wait): /metrics still answers."""
    try:
        return app.store.peek(app.backend.size_bytes)  # a busy pool: NaN in half a second
    except sqlite3.Error:
        return math.nan


def _pool_gauges(app: "App") -> list[tuple[str, str, str, float]]:
    """The PostgreSQL read pool's state (store/pgpool.py): none on SQLite."""
    pool = app.store.pool
    if pool is None:
        return []
    return [
        (
            "pg_read_connections_open",
            "gauge",
            "PostgreSQL read connections open (at most STOCKYARD_PG_CONNECTIONS).",
            pool.open,
        ),
        (
            "pg_read_connections_busy_total",
            "counter",
            "Reads refused because every read connection stayed in use past the busy timeout.",
            pool.busy,
        ),
        (
            "pg_read_connections_refused_total",
            "counter",
            "Read connections PostgreSQL refused (too many connections).",
            pool.refusals,
        ),
    ]


def store_gauges(app: "App") -> list[tuple[str, str, str, float]]:
    """The store's state, read at scrape time: (name, type, help, value)."""
    w = app.writer
    out = [
        ("writer_queue_depth", "gauge", "Records waiting for the database writer.", w.depth),
        (
            "writer_queue_capacity",
            "gauge",
            "Records the writer queue holds before new ones are dropped.",
            w.queue.maxsize,
        ),
        ("writer_queue_bytes", "gauge", "Bytes of bodies the records waiting for the writer hold.", w.held_bytes),
        (
            "writer_queue_bytes_capacity",
            "gauge",
            "Bytes the records waiting may hold; beyond it a trace waits for room, then goes without its bodies.",
            w.max_bytes,
        ),
        ("records_written_total", "counter", "Records committed to the database.", w.stats.written),
        (
            "records_dropped_total",
            "counter",
            "Records lost because the queue was full or the database refused them.",
            w.stats.dropped,
        ),
        ("writer_waiting_records", "gauge", "Records waiting for a lost database to come back.", w.waiting),
        (
            "records_dropped_waiting_total",
            "counter",
            "Oldest records dropped because more than the queue's capacity waited for a lost database.",
            w.stats.dropped_waiting,
        ),
        ("writer_failed_batches_total", "counter", "Write transactions the database refused.", w.stats.failed_batches),
        ("database_writable", "gauge", "1 when the last write transaction succeeded, else 0.", 1 if w.healthy else 0),
        ("database_size_bytes", "gauge", "Size of the database file.", _database_size(app)),
        (
            "database_wal_size_bytes",
            "gauge",
            "Size of the database's write-ahead log.",
            app.backend.wal_bytes(),
        ),
        ("start_time_seconds", "gauge", "When this server started (Unix time).", app.started_at),
        (
            "websocket_connections_open",
            "gauge",
            "Responses API WebSocket connections open in this server process.",
            app.websockets.open,
        ),
        (
            "request_bodies_bytes",
            "gauge",
            "Bytes of request bodies in memory now (STOCKYARD_REQUEST_BODIES_MB).",
            app.bodies.held,
        ),
        (
            "uploads_spooled_bytes",
            "gauge",
            "Bytes of uploads spooled on disk now (STOCKYARD_UPLOADS_MB).",
            app.spooled.held,
        ),
    ]
    out += _pool_gauges(app)
    costs = getattr(app, "batch_costs", None)
    if costs is not None:
        out.append(
            (
                "batch_costs_pending",
                "gauge",
                "Ended batches whose cost is being read from their results (one at a time) or waits to be.",
                costs.pending,
            )
        )
    retention = getattr(app, "retention", None)
    if retention is not None:
        out += [
            (
                "retention_bodies_deleted_total",
                "counter",
                "Trace bodies deleted by retention.",
                retention.stats.bodies_deleted,
            ),
            (
                "retention_traces_deleted_total",
                "counter",
                "Traces deleted by retention.",
                retention.stats.traces_deleted,
            ),
        ]
    otlp = getattr(app, "otlp", None)
    if otlp is not None:
        out += [
            ("otlp_spans_exported_total", "counter", "Spans the OpenTelemetry collector accepted.", otlp.exported),
            (
                "otlp_spans_dropped_total",
                "counter",
                "Spans dropped: the collector could not be reached after retries, or the export queue was full.",
                otlp.dropped,
            ),
            ("otlp_queue_depth", "gauge", "Spans waiting for the OpenTelemetry exporter.", otlp.depth),
        ]
    meter = getattr(app, "otlp_metrics", None)
    if meter is not None:
        out += [
            ("otlp_metric_exports_total", "counter", "OTLP metric exports the collector accepted.", meter.exports),
            (
                "otlp_metric_export_failures_total",
                "counter",
                "OTLP metric exports that failed (the next one sends the same cumulative totals).",
                meter.failures,
            ),
            (
                "otlp_metric_overflow_total",
                "counter",
                "Measurements put in an OTLP metric's overflow series: its attribute sets were at their cap.",
                meter.meter.overflowed,
            ),
        ]
    snap = getattr(app, "snapshots", None)
    if snap is not None:
        out += [
            (
                "snapshot_last_success_seconds",
                "gauge",
                "When the last snapshot was written (Unix time; 0: never).",
                snap.last_ok_unix or 0,
            ),
            ("snapshot_failures_total", "counter", "Snapshots that could not be written.", snap.failures),
            (
                "snapshot_skipped_total",
                "counter",
                "Snapshots skipped: due while the last was still being sealed.",
                snap.skipped,
            ),
            ("snapshot_size_bytes", "gauge", "Size of the last snapshot.", snap.last_size_bytes),
        ]
    return out

"""The composition root: builds the server's parts, wires them together, reloads and closes them.

One :class:`App` per server process. Configuration that can change at run time
(providers, keys, prices, budgets, modules) is held as immutable snapshots that
:meth:`App.reload` swaps whole, so a request never sees half a change. The request path
gets its collaborators as one :class:`~stockyard.proxy.RequestPath` (``app.path``); the
modules get theirs as one :class:`~stockyard.modules.ModuleServices`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator, Mapping

from . import __version__, audit, background, containers_api, message_batches, videos_api
from .anthropic_files import AnthropicFiles
from .auth import Gatekeeper
from .background import BackgroundResponses
from .backup import Snapshotter
from .batch_costs import BatchCosts, BatchWatch
from .billing import Pricer
from .budgets import (
    Budget,
    BudgetExceeded,
    BudgetRecords,
    Ledger,
    budget_set_meanwhile,
    budgets_for,
    load_project_budgets,
    scopes_of,
    seconds_left,
    unpriced_job_refusal,
    unspent_of,
)
from .chain import Chain, HookFailures
from .config import Settings
from .containers_api import ContainersAPI
from .context import RequestContext
from .conversations import Conversations
from .deployments import Health, Models
from .errors import ProxyError
from .files_api import BatchHold, FilesAPI, Ownership
from .gemini_cache import CachedContents
from .gemini_files import GeminiFiles, UploadSessions
from .httpio import JSON_VALUE_BYTES, MAX_JSON_VALUES, too_many_values
from .keys import KeyRing, load_keys
from .limits import BODY_WAIT_S, HeldBytes, bodies_full, uploads_full, websocket_caps
from .memtrim import idle_trimmer
from .message_batches import MessageBatches
from .metrics import Metrics
from .modules import Modules, ModuleServices
from .operations import Operations, read_config_version
from .operations import models as model_ops
from .operations import providers as provider_ops
from .operations import webhooks as webhook_ops
from .operations.modules import load_rows as load_module_rows
from .operations.prices import load_overrides
from .otel import Exporter, Telemetry
from .otel import resource as otel_resource
from .otel_metrics import Meter, MetricExporter
from .pricing import PriceTable, format_usd
from .providers import Registry, from_env
from .proxy import RequestPath
from .retention import Retention
from .routing import RouteStep
from .scrub import Scrubber, ScrubLogs
from .store import Store, Writer, backend_for
from .store import search as search_index
from .store.backends import Backend
from .store.pgpool import IDLE_CLOSE_S
from .streamrelay import StreamRelay
from .tracing import Tracer
from .uploads_api import UploadsAPI
from .upstream import Pool
from .vector_stores_api import VectorStoresAPI
from .webhooks import Dispatcher

log = logging.getLogger("stockyard")

WATCH_EVERY_S = 0.5  # the configuration watcher's tick: key usage flushed, server lock kept, changes looked for
PROBE_FRESH_S = 1.0  # a database probe's answer is reused this long (database_problem)
PROBE_TIMEOUT_S = 5.0  # a full queue or a stuck disk answers within this, never hangs
WATCHER_STALE_S = 10.0  # /readyz is 503 when the watcher has not completed a pass for this long


class App:
    def __init__(
        self,
        settings: Settings,
        env: Mapping[str, str] | None = None,
        backend: Backend | None = None,
        worker: int | None = None,
    ) -> None:
        """``backend`` and ``worker`` are for the workers of a group (:mod:`stockyard.workers`):
        the group's backend (its lock held by the parent, budgets and rate limits shared), and
        this worker's index; worker 0 runs the duties one process does for all (snapshots,
        retention, the webhook checks)."""
        self.settings = settings
        self.worker = worker
        self.group_metrics: Any = None  # a worker's view of its group's /metrics (set by stockyard.workers)
        primary = worker is None or worker == 0
        self.env = dict(os.environ if env is None else env)
        self.started_at = time.time()
        # Held until close (or until the process dies): restore and migrate refuse meanwhile, and so
        # does a second server on an SQLite file (PostgreSQL: replicas share it).
        self.backend = backend or backend_for(settings.database)
        self.db_lock = self.backend.server_lock()
        for line in self.backend.secure_files([p for p in [settings.snapshot_path] if p]):
            log.warning("file permissions: %s", line)
        try:
            self.migrations_applied = self.backend.open_and_migrate()
        except BaseException:
            self.db_lock.release()
            raise
        self.metrics = Metrics(settings.metrics_top_keys)
        # upgraded /v1/responses (this process): in all, per key (the server bounds it by its connection cap)
        self.websockets = websocket_caps(settings.websocket_max_connections, settings.max_connections)
        self.bodies = HeldBytes(settings.request_bodies_bytes)  # request bodies in memory at once (Handler._body)
        # upload bytes on disk at once (Handler._received), a quarter of them one client key's
        self.spooled = HeldBytes(settings.uploads_bytes, share=settings.uploads_bytes // 4)
        self.hook_failures = HookFailures(self.metrics.count_module_error)
        self.writer = Writer(self.backend, maxsize=settings.writer_queue_size, max_bytes=settings.writer_queue_bytes)
        self._probe_lock = threading.Lock()  # one database probe at a time (database_problem)
        self._probed: tuple[float, str | None] = (-PROBE_FRESH_S, None)  # (when, its answer)
        self.retention = Retention(
            bodies_max_age_s=settings.retention_bodies_s,
            traces_max_age_s=settings.retention_traces_s,
            bodies_max_bytes=settings.bodies_max_bytes,
            responses_max_age_s=settings.retention_responses_s,
        )
        if primary:
            self.writer.add_idle_task(self.retention.run)
            self.writer.add_idle_task(search_index.backfill)  # bodies stored before the search index
        if (trim := idle_trimmer()) is not None:
            self.writer.add_idle_task(trim)  # a burst's freed memory back to the system once idle
        self.snapshots: Snapshotter | None = None
        if settings.snapshot_path is not None and primary:
            self.snapshots = Snapshotter(settings.snapshot_path)
            # The first one soon after start (not at once: startup writes should not wait for it).
            self.writer.add_periodic_task(
                self.snapshots.run, settings.snapshot_every_s, first_in_s=min(settings.snapshot_every_s, 60.0)
            )
        self.store = Store(self.backend, self.writer)
        if (readers := self.store.pool) is not None:  # PostgreSQL: a burst's read connections closed once idle
            self.writer.add_periodic_task(lambda conn: readers.close_idle(), IDLE_CLOSE_S, IDLE_CLOSE_S)
        self.writer.start()
        self.pool = Pool(settings.upstream_connect_timeout_s, settings.upstream_read_timeout_s)
        self._registry = Registry(from_env(self.env))
        # Per deployment: in flight, latency, cooldown, breaker, usage (kept across reloads); the
        # deployments' rpm/tpm also counted where every worker or replica counts them.
        self.health = Health(shared=self.backend.shared_rate_limiter(self.store))
        self._models = Models([], self.health)
        self._project_budgets: dict[str, Budget] = {}
        self._chain = Chain([])
        self._auth_required: bool | None = None
        self.scrubber = Scrubber()
        self.gate = Gatekeeper(self.store, settings.is_loopback, self.registry)
        self.pricer = Pricer()
        self.otlp: Exporter | None = None
        self.otlp_metrics: MetricExporter | None = None
        telemetry = None
        if settings.otlp_endpoint:
            origin = otel_resource(worker)  # one service.instance.id for this process's spans and metrics
            headers = dict(settings.otlp_headers)
            self.otlp = Exporter(settings.otlp_endpoint, headers, origin=origin).start()
            meter = Meter(settings.otlp_metrics_series) if settings.otlp_metrics_interval_s else None
            if meter is not None:
                self.otlp_metrics = MetricExporter(
                    settings.otlp_endpoint, headers, meter, settings.otlp_metrics_interval_s, origin=origin
                ).start()
            telemetry = Telemetry(self.otlp, settings.otlp_content, self.scrubber.text, meter)
        self.tracer = Tracer(settings, self.store, self.metrics, self.scrubber, telemetry)
        self.webhooks = Dispatcher(self.store, checks=primary)
        records = BudgetRecords(self.store, lambda: self.ops(audit.ACTOR_SERVER), self.webhooks.emit)
        self.ledger: Ledger = self.backend.ledger(
            self.store, records.load_spend, settings.budget_warn_percent, records.warn, records.exhausted
        )
        self.modules = Modules(
            ModuleServices(settings, self.store, self.ledger, self.pricer, self.project_budgets, self.webhooks.emit),
            failures=self.hook_failures,  # shared by every chain built, across reloads
            route=RouteStep(self.registry, self.models, self.pricer),
        )
        self.ownership = ownership = Ownership(self.store, self.batch_spend)
        ring = lambda: self.gate.ring  # noqa: E731 - the key ring of the moment, for the batch watch
        self.background = BackgroundResponses(
            ownership, self.store, self.pricer, self.metrics, settings, self.batch_spend, ring, self.pool, self.ledger
        )
        self.conversations = Conversations(
            self.store,
            self.registry,
            self.pool,
            self.scrubber,
            settings.max_body_bytes,
            functools.partial(containers_api.claim_made, ownership),  # auto containers, their key's
            shared=settings.workers > 1 or self.backend.dialect == "postgresql",  # others serve the next turn too
            background=self.background,
        )
        self.path = RequestPath(
            settings,
            self.gate,
            self.chain,
            self.registry,
            self.pricer,
            self.tracer,
            self.scrubber,
            self.pool,
            self.conversations,
            StreamRelay(),
            ownership.check_references,
        )
        self.batch_costs = BatchCosts(self.path, self.store, self.metrics, self.batch_spend)
        self.files = FilesAPI(
            self.path, ownership, self.batch_costs.completed, self.check_batch_budget, self.batch_room
        )
        self.containers = ContainersAPI(self.path, ownership)
        self.anthropic_files = AnthropicFiles(self.path, ownership)  # Anthropic's Files API (beta)
        self.vector_stores = VectorStoresAPI(self.path, ownership)
        self.uploads = UploadsAPI(self.path, ownership)  # OpenAI's Uploads API: files in parts
        video_budget = functools.partial(self.check_batch_budget, what="video", param="model")
        self.videos = videos_api.VideosAPI(
            self.path, ownership, video_budget, self.store, self.metrics, self.batch_spend
        )
        self.cached_contents = CachedContents(self.path, ownership, self.budgeted)  # Gemini's context caches
        self.gemini_files = GeminiFiles(self.path, ownership, UploadSessions(self.store))  # Gemini's Files API
        self.message_batches = MessageBatches(
            self.path,
            ownership,
            self.models,
            self.batch_costs,
            self.check_batch_budget,
            self.batch_room,
            self.metrics.count,
            self.parsing,
        )
        looks = {
            "batch": self.files.look_at_batch,
            message_batches.KIND: self.message_batches.look_at_batch,
            background.KIND: self.background.look,
            videos_api.KIND: self.videos.look,
        }
        self.batch_watch = BatchWatch(
            self.store, looks, self.registry, ring, settings.batch_poll_s, ownership.expire_holds
        )
        self._key_errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._config_version = -1
        self.reloads = 0  # how many times the configuration was rebuilt (shown in /api/status)
        self._stopping = threading.Event()
        self.watcher_ok_at = time.monotonic()  # the last successful pass of the configuration watcher
        self.watcher_error: str | None = None  # why the passes fail, while they do
        for handler in logging.getLogger("stockyard").handlers:
            handler.addFilter(ScrubLogs(self.scrubber.text))
        self.reload()
        self.webhooks.start()
        self.batch_watch.start()
        self._record_start()
        self._watcher = threading.Thread(target=self._watch_config, name="stockyard-config", daemon=True)
        self._watcher.start()

    def budgets_of(self, ctx: RequestContext) -> list[Budget]:
        """The budgets that count this key's batches and Realtime sessions (spent after the fact):
        its own and its project's, where the budget module runs for the key (none without a key)."""
        key = ctx.key
        if key is None or not self._chain.runs("budget", ctx):
            return []
        return budgets_for(key, self._project_budgets)

    def budgeted(self, ctx: RequestContext) -> bool:
        """Whether a budget counts this key's batches."""
        return bool(self.budgets_of(ctx))

    def batch_room(self, ctx: RequestContext, total: int | None = None) -> Callable[[int, int], None] | None:
        """What refuses a batch (429) once the running worst case of its first ``counted`` requests
        (µ¢; ``total`` in all, None: not known yet) is past what its key's budgets have left beyond
        their spend: a batch far too large for a nearly spent budget is refused at the request that
        passes it, not after all of them are priced (90,000 requests: 3 s of CPU a refusal); its
        refusal says the cost is at least that much, and not to retry. The reservation
        (:meth:`check_batch_budget`) still decides a batch that fits. None for a key no budget
        counts: its batch is not priced.

        Holds in flight are not counted here: one may end while a long batch is read (a 429 then
        refused a batch the reservation had room for), and a refusal they caused would tell the client
        to retry a batch that may never fit (the SDKs retry at once); a batch that fits but for them is
        priced whole and refused by the reservation, which knows its whole worst case. What is left is
        read again before a refusal (a project's budget raised, a batch billed for less than it held)."""
        budgets = self.budgets_of(ctx)
        tightest = self.ledger.tightest(budgets, ctx.ts_ms) if budgets else None
        if tightest is None:
            return None
        read: BudgetExceeded | None = tightest

        def past(worst: int, counted: int) -> None:
            nonlocal read
            if read is None or worst <= unspent_of(read):
                return
            now = self.budgets_of(ctx)
            read = self.ledger.tightest(now, ctx.ts_ms) if now else None  # None: no budget counts it now
            if read is not None and worst > unspent_of(read):
                of = f" of {total:,}" if total is not None else ""
                first = "its first request" if counted == 1 else f"its first {counted:,}{of} requests"
                partial = None if counted == total else f"{first} alone"
                raise dataclasses.replace(read, amount=worst).error(partial=partial)

        return past

    def check_batch_budget(
        self,
        ctx: RequestContext,
        worst: int | None,
        what: str = "batch",
        param: str = "input_file_id",
        priced: bool = True,
    ) -> BatchHold:
        """A key (or its project) whose budget is used up starts no batch (429), nor one naming a
        model without a price (403 ``model_not_priced``; ``worst`` None), nor one whose worst case
        (``worst``, µ¢) does not fit beside what is spent and what requests in flight hold.

        The worst case is reserved now; the transaction that records the new batch with it
        (``held_uc``) makes it spend (``end_in``: ``Ledger.settle_in``) — so every request and batch
        after it sees it, across restarts too (``budgets.ledger_spend_uc``) — until the batch is
        billed, when its real cost replaces it (:meth:`batch_spend`). ``end(False)`` gives the
        reservation back. Not when the budget module is off for the key. ``what`` (a batch, a video)
        and ``param`` name it in the refusals. ``priced`` False: no budget counted the key when the
        batch was read (:meth:`batch_room` None), so ``worst`` is 0, not its cost; a budget that counts
        it now (a project's set, the budget module turned on meanwhile) refuses it, to be sent again
        and priced, or it would run held at nothing."""
        budgets = self.budgets_of(ctx)
        if budgets and not priced:
            raise budget_set_meanwhile(what)
        if budgets and worst is None:
            raise unpriced_job_refusal(what, "on this key", param)
        if budgets and worst:
            try:
                hold = self.ledger.reserve(budgets, worst, ctx.ts_ms)
            except BudgetExceeded as exc:
                raise exc.error() from None
            key = ctx.key
            recorded: list[bool] = []  # the batch's record made the reservation spend (end_in)

            def end_in(conn: Any) -> Callable[[], None]:
                done = self.ledger.settle_in(conn, hold, worst, scopes_of(key), ctx.ts_ms)

                def committed() -> None:
                    recorded.append(True)
                    done()

                return committed

            def end(created: bool) -> None:
                if not recorded:
                    scopes = scopes_of(key) if created else ()
                    self.ledger.settle(hold, worst if created else 0, scopes, ctx.ts_ms)

            return BatchHold(worst, end, key.project if key is not None else None, end_in=end_in)
        used_up = self.ledger.used_up(budgets, ctx.ts_ms) if budgets else None
        if used_up is None:
            return BatchHold(0, lambda created: None)
        budget, spent = used_up.budget, used_up.spent
        headers = {"Retry-After": "1"}  # only requests in flight hold the rest
        if spent >= budget.limit_uc:
            wait = seconds_left(budget.period, ctx.ts_ms)
            headers = {"x-should-retry": "false", **({"Retry-After": str(wait)} if wait is not None else {})}
        raise ProxyError(
            429,
            f"budget exceeded: the {budget.describe()} is used up ({format_usd(spent, 2)} spent); "
            f"a {what} can start once it is raised or its period ends",
            code="budget_exceeded",
            type="budget_exceeded",
            headers=headers,
        )

    def batch_spend(self, conn: Any, scopes: tuple[str, ...], change: int, ts_ms: int) -> Callable[[], None]:
        """A change (µ¢) to what a key's batch (or background response) counts against the budgets
        of ``scopes`` (its key's and project's, ``budgets.owner_scopes``, or an end user's): its cost
        minus its hold when it is billed; minus its hold when it is deleted unbilled or the batch
        watch stops looking at it. Made in the writer's transaction that records why (``conn``)
        where the ledger is the database's (``Ledger.spend_in``); the call it returns is what is
        left to do once that committed."""
        if not change or not scopes:
            return lambda: None
        return self.ledger.spend_in(conn, change, scopes, ts_ms)

    def _record_start(self) -> None:
        """Audit migrations and the start; a log keyed with another secret must not stop serving.

        With a wrong STOCKYARD_ENCRYPTION_KEY the server still starts (env providers and
        keys it can decrypt keep working); changes are refused until the secret is right.
        """
        server_ops = self.ops(audit.ACTOR_SERVER)
        try:
            for m in self.migrations_applied:
                server_ops.audit_event("migration.apply", f"schema:{m.version:04d}", {"name": m.name})
            server_ops.audit_event("server.start", "server", {"version": __version__, "host": self.settings.host})
        except audit.AuditError as exc:
            log.error(
                "audit log: cannot record the server start (%s); admin changes are refused "
                "until Stockyard runs with the right STOCKYARD_ENCRYPTION_KEY",
                exc,
            )

    # -- configuration snapshots -----------------------------------------------------------
    @property
    def config_version(self) -> int:
        """The ``config_version`` the current snapshots were built from."""
        return self._config_version

    def registry(self) -> Registry:
        return self._registry

    def chain(self) -> Chain:
        return self._chain

    def models(self) -> Models:
        return self._models

    def project_budgets(self) -> dict[str, Budget]:
        return self._project_budgets

    @property
    def prices(self) -> PriceTable:
        return self.pricer.table

    @property
    def auth_required(self) -> bool:
        return self.gate.required

    def auth_description(self) -> str:
        """One line for the start-up banner and the log."""
        return self.gate.description()

    def ops(self, actor: str) -> Operations:
        """The operations layer for changes made through this server."""
        return Operations(self.store, actor, self.settings.encryption_key, on_change=self.reload)

    def _watch_config(self) -> None:
        """Pick up changes other processes (replicas, the CLI) commit.

        Between passes the watcher waits on the backend's change feed: on PostgreSQL a LISTEN
        connection wakes it the moment a change commits; the poll (``config_poll_s``, half a
        second unless set) catches the rest — SQLite's changes, rows changed by hand, whatever
        was announced while the LISTEN connection was down. A check reads ``PRAGMA data_version``
        (moved by another connection's commit), then ``config_version``, and only a changed
        counter triggers a reload. A pass that fails (a hand-edited row that cannot be read, a
        broken connection) is logged when the failures start and when they end, and retried on
        the next tick with a fresh connection; :meth:`watcher_problem` tells /readyz when no
        pass has succeeded for a while.
        """
        conn = None
        last_data_version = None
        feed = self.backend.changes()
        next_check = 0.0
        while not self._stopping.is_set():
            told = feed.wait(WATCH_EVERY_S, self._stopping)
            if self._stopping.is_set():
                break
            check = told or time.monotonic() >= next_check
            try:
                if conn is None:
                    conn = self.backend.connect()
                    last_data_version = None  # data_version is per connection: compare afresh
                if check:
                    next_check = time.monotonic() + self.settings.config_poll_s
                last_data_version = self._watch_once(conn, last_data_version, check)
            except Exception as exc:  # the watcher must never stop, nor take the server down
                if self.watcher_error is None:
                    log.error(
                        "configuration watcher: a pass failed (%s: %s); retrying every %gs, "
                        "/readyz reports it after %gs",
                        type(exc).__name__,
                        exc,
                        WATCH_EVERY_S,
                        WATCHER_STALE_S,
                        exc_info=exc,
                    )
                self.watcher_error = type(exc).__name__  # for /readyz, which answers anyone: the log has the rest
                next_check = 0.0  # the next pass checks again
                if conn is not None:
                    conn.close()
                    conn = None
                continue
            if self.watcher_error is not None:
                log.info("configuration watcher: working again (configuration version %d)", self._config_version)
                self.watcher_error = None
            self.watcher_ok_at = time.monotonic()
        feed.close()
        if conn is not None:
            conn.close()

    def _watch_once(self, conn, last_data_version: int | None, check: bool = True) -> int | None:
        """One pass: flush key usage, keep the server lock, and (when ``check``) reload if
        another process changed the configuration.

        Returns the data version seen; it counts as handled only once the reload succeeded,
        so a failed reload is tried again on the next pass.
        """
        self.gate.flush_last_used()
        self.db_lock.keep()  # PostgreSQL: a lock lost with its connection is taken again (or this pass fails)
        if not check:
            return last_data_version
        data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        if data_version != last_data_version and read_config_version(conn) != self._config_version:
            self.reload()
        return data_version

    def hold_body(self, size: int, own: int = 0) -> None:
        """Count ``size`` bytes of a request body (or WebSocket message) in ``bodies``, waiting up to
        ``BODY_WAIT_S`` for room, else its 503 (counted); the caller gives them back when it is served.
        ``own``: the bytes of it counted already (one counted as it comes fits alone, as a sized one)."""
        if not self.bodies.take(size, BODY_WAIT_S, own):
            self.metrics.count("request_bodies_refused_total")
            raise bodies_full()

    def hold_spool(self, size: int, own: int, owner: str | None) -> None:
        """Count ``size`` more bytes of ``owner``'s upload spool in ``spooled``, waiting up to ``BODY_WAIT_S``
        for room, else its 503 (counted): the uploads' disk is the database's, so their sum is bounded,
        not each alone, and one owner (a client key) holds a quarter (``own``: its bytes counted already;
        one alone always fits, and an owner's first)."""
        if not self.spooled.take(size, BODY_WAIT_S, own, owner):
            self.metrics.count("uploads_refused_total")
            raise uploads_full()

    @contextlib.contextmanager
    def parsing(self, values: int, own: int) -> Iterator[int]:
        """Room to parse a body of ``values`` JSON values (``json_values``) past ``MAX_JSON_VALUES``
        (a Message Batch of Anthropic's 100,000 requests, 10 values or more each, holds a million and
        up), held in ``bodies`` at ``JSON_VALUE_BYTES`` a value while the body is parsed and checked:
        the values the bound can hold beside the body's ``own`` bytes (held already), given to
        ``json_object``. A body it never could, even alone, is a 413 naming the setting (not a 503
        that no retry would get past)."""
        if values <= MAX_JSON_VALUES:
            yield MAX_JSON_VALUES
            return
        most = max(MAX_JSON_VALUES, (self.bodies.total - own) // JSON_VALUE_BYTES)
        if values > most:
            raise too_many_values(most, "split it, or raise STOCKYARD_REQUEST_BODIES_MB (100 bytes a value)")
        size = values * JSON_VALUE_BYTES
        self.hold_body(size, own)
        try:
            yield most
        finally:
            self.bodies.give(size)

    def database_problem(self) -> str | None:
        """Why the database does not take writes (one tiny write through the writer), or None.

        At most one probe a second, whatever the number of callers (the others wait for the one
        in flight and share its answer): ``/readyz`` answers anyone, and a flood of probes must
        not fill the writer's queue, where traces would then be dropped.
        """
        with self._probe_lock:
            at, problem = self._probed
            if time.monotonic() - at < PROBE_FRESH_S:
                return problem
            try:
                self.writer.call(
                    lambda conn: conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('readyz', strftime('%s','now')) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
                    ),
                    timeout=PROBE_TIMEOUT_S,
                )
                problem = None
            except Exception as exc:
                # /readyz answers anyone: the kind of failure only; its text (a database host,
                # user or path) goes to the log, once per change
                problem = f"not writable: {type(exc).__name__}"
                if problem != self._probed[1]:
                    log.warning("/readyz: the database takes no writes: %s", self.scrubber.text(str(exc))[:300])
            self._probed = (time.monotonic(), problem)
            return problem

    def watcher_problem(self) -> str | None:
        """Why the configuration watcher is unhealthy (no successful pass for a while), or None."""
        idle = time.monotonic() - self.watcher_ok_at
        if idle <= WATCHER_STALE_S:
            return None
        return f"no successful pass for {idle:.0f}s; configuration changes are not being picked up" + (
            f" (last error: {self.watcher_error}; the server log has its details)" if self.watcher_error else ""
        )

    def reload(self) -> None:
        """Rebuild the configuration snapshots (providers, modules, keys) from env + database.

        Database providers override environment ones by name. A stored key that cannot be
        decrypted leaves only its provider unusable, and the log says which one and why.
        """
        with self._lock:  # one reload at a time, so a slower, older read never wins
            self._reload()

    def _reload(self) -> None:
        conn = self.store.read()
        conn.execute("BEGIN")  # version, providers, keys, budgets and prices from one snapshot
        try:
            version = read_config_version(conn)
            providers = provider_ops.load(conn, self.env, self.settings.encryption_key)
            keys = KeyRing(load_keys(conn))
            project_budgets = load_project_budgets(conn)
            prices = PriceTable.load(load_overrides(conn))
            module_rows = load_module_rows(conn)
            hooks = webhook_ops.load(conn, self.settings.encryption_key)
            registry = Registry(providers)
            routes = model_ops.load(conn, self.settings.encryption_key, registry)
        finally:
            conn.execute("COMMIT")
        # Every key we hold is scrubbed, including env keys a database provider overrides.
        own_keys = [d.provider.api_key for r in routes for d in r.deployments if d.own_key]
        own = (self.settings.admin_key, self.settings.encryption_key, self.settings.metrics_key)
        self.scrubber.use([p.api_key for p in providers] + own_keys, own)
        self._registry = registry
        self._models = Models(routes, self.health)
        self.gate.use(keys)
        self.pricer.use(prices)
        self._project_budgets = project_budgets
        self._chain = self.modules.build(module_rows)
        self.webhooks.use(hooks)
        self._config_version = version
        self.reloads += 1
        was_required, self._auth_required = self._auth_required, self.auth_required
        if was_required is not None and was_required != self._auth_required:
            log.warning("%s", self.auth_description())
        key_errors = {p.name: p.key_error for p in registry.providers if p.key_error}
        changed, self._key_errors = key_errors != self._key_errors, key_errors
        if changed and key_errors:
            for name, error in key_errors.items():
                log.error(
                    "provider %r: its stored key cannot be decrypted (%s); requests routed to it "
                    "fail until the key is set again or Stockyard runs with the right "
                    "STOCKYARD_ENCRYPTION_KEY. Other providers keep working.",
                    name,
                    error,
                )

    # -- lifecycle ----------------------------------------------------------------------------
    def cut_in_flight(self) -> None:
        """The drain's time is up: end what is still in flight — relayed streams with an error
        event, calls waiting for a provider with a 503 — so each request records its trace
        before :meth:`close` stops the writer (``server_shutting_down``)."""
        if self.path.relay is not None:
            self.path.relay.stop()  # first: its streams' sockets are shut down next
        self.pool.stop_calls()

    def close(self) -> None:
        self._stopping.set()
        self.webhooks.stop()
        self.batch_watch.stop()
        self.gate.flush_last_used(force=True)
        try:
            self.ops(audit.ACTOR_SERVER).audit_event("server.stop", "server", {"version": __version__})
        except Exception as exc:
            log.error("could not record server stop in the audit log: %s", exc)
        self.ledger.close()
        stop_began = time.monotonic()
        self.writer.stop(self.settings.shutdown_grace_s)  # a database that stopped answering: bounded
        if self.snapshots is not None:  # a snapshot being sealed: finished in the grace left, or abandoned
            self.snapshots.stop(max(1.0, self.settings.shutdown_grace_s - (time.monotonic() - stop_began)))
        if self.otlp is not None:
            self.otlp.stop()
        if self.otlp_metrics is not None:  # every request has been traced: the totals a last time
            self.otlp_metrics.stop()
        self.pool.close()
        self.store.close()
        self.db_lock.release()

    @property
    def version(self) -> str:
        return __version__

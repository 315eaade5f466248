"""The running server's state: settings, store, providers, modules, upstream pool, prices.

One :class:`App` per server process. Configuration that can change at run time
(providers, keys, modules) is held as immutable snapshots that :meth:`App.reload`
swaps whole, so a request never sees half a change.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Mapping

from . import __version__, audit
from .backup import Snapshotter
from .budgets import Budget, Ledger, load_project_budgets, spent_uc
from .config import Settings
from .keys import KeyRecord, KeyRing, load_keys
from .keys import check as check_key
from .logbuffer import printable
from .metrics import Metrics
from .modules import Modules
from .operations import Operations, read_config_version
from .operations import providers as provider_ops
from .operations.modules import load_rows as load_module_rows
from .operations.prices import load_overrides
from .pipeline import Chain, HookFailures, RequestContext
from .pricing import Price, PriceTable, Usage, cost_microcents, format_usd
from .providers import Registry, from_env
from .retention import Retention
from .store import Store, Writer, db, files
from .store.lock import SERVER, DatabaseLock
from .store.traces import iso_utc, trace_row_from
from .upstream import Pool

log = logging.getLogger("stockyard")

LAST_USED_FLUSH_S = 2.0  # last_used_at is written in batches, never per request
WATCH_EVERY_S = 0.5  # how often the configuration watcher looks for changes from other processes
WATCHER_STALE_S = 10.0  # /readyz is 503 when the watcher has not completed a pass for this long


class ScrubLogs(logging.Filter):
    """Remove known secrets from every log record, its arguments and its traceback; escape
    control characters in its message (client text in it cannot forge lines or drive terminals)."""

    def __init__(self, scrub: Callable[[str], str]) -> None:
        super().__init__()
        self._scrub = scrub
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it; still scrub the raw text
            message = f"{record.msg} {record.args}"
        record.msg, record.args = printable(self._scrub(message)), None  # client text cannot forge lines
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self._scrub(record.stack_info)
        return True


class App:
    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.env = dict(os.environ if env is None else env)
        self.started_at = time.time()
        # Held until close (or until the process dies): a second server, restore and migrate refuse meanwhile.
        self.db_lock = DatabaseLock(settings.db_path, SERVER).acquire()
        for line in files.secure_existing(settings.db_path, [p for p in [settings.snapshot_path] if p]):
            log.warning("file permissions: %s", line)
        try:
            conn, self.migrations_applied = db.open_and_migrate(settings.db_path)
            conn.close()
        except BaseException:
            self.db_lock.release()
            raise
        self.metrics = Metrics()
        self.hook_failures = HookFailures(self.metrics.count_module_error)
        self.writer = Writer(settings.db_path, maxsize=settings.writer_queue_size)
        self.retention = Retention(
            bodies_max_age_s=settings.retention_bodies_s,
            traces_max_age_s=settings.retention_traces_s,
            bodies_max_bytes=settings.bodies_max_bytes,
        )
        self.writer.add_idle_task(self.retention.run)
        self.snapshots: Snapshotter | None = None
        if settings.snapshot_path is not None:
            self.snapshots = Snapshotter(settings.snapshot_path)
            # The first one soon after start (not at once: startup writes should not wait for it).
            self.writer.add_periodic_task(
                self.snapshots.run, settings.snapshot_every_s, first_in_s=min(settings.snapshot_every_s, 60.0)
            )
        self.writer.start()
        self.store = Store(settings.db_path, self.writer)
        self.pool = Pool(settings.upstream_connect_timeout_s, settings.upstream_read_timeout_s)
        self._registry = Registry(from_env(self.env))
        self.prices = PriceTable.load()
        self._keys = KeyRing([])
        self._project_budgets: dict[str, Budget] = {}
        self._auth_required: bool | None = None
        self._used: dict[str, int] = {}  # key id → last request (ms), until the next flush
        self._used_flushed = time.monotonic()
        self.ledger = Ledger(self._load_spend, settings.budget_warn_percent, self._budget_warning)
        self.modules = Modules(self)  # after the ledger: the budget module needs it
        self._chain = Chain([])
        self._secrets: tuple[str, ...] = ()
        self._key_errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._config_version = -1
        self.reloads = 0  # how many times the configuration was rebuilt (shown in /api/status)
        self._stopping = threading.Event()
        self.watcher_ok_at = time.monotonic()  # the last successful pass of the configuration watcher
        self.watcher_error: str | None = None  # why the passes fail, while they do
        for handler in logging.getLogger("stockyard").handlers:
            handler.addFilter(ScrubLogs(self.scrub))
        self.reload()
        self._record_start()
        self._watcher = threading.Thread(target=self._watch_config, name="stockyard-config", daemon=True)
        self._watcher.start()

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

    def project_budgets(self) -> dict[str, Budget]:
        return self._project_budgets

    def _requires_keys(self, ring: KeyRing) -> bool:
        """Client keys are required once any exists (revoked ones count), or off loopback."""
        return ring.count > 0 or not self.settings.is_loopback

    @property
    def auth_required(self) -> bool:
        return self._requires_keys(self._keys)

    def auth_description(self) -> str:
        """One line for the start-up banner and the log."""
        if not self.auth_required:
            return (
                "auth: OPEN - listening on loopback and no client keys exist, so any local program "
                "may use the proxy; `stockyard keys create` turns client keys on"
            )
        if self._keys.count == 0:
            return (
                "auth: client keys required (listening beyond loopback); none exist yet, so every "
                "proxy request is refused until one is made with `stockyard keys create`"
            )
        return f"auth: client keys required ({self._keys.live} live of {self._keys.count})"

    def ops(self, actor: str) -> Operations:
        """The operations layer for changes made through this server."""
        return Operations(self.store, actor, self.settings.encryption_key, on_change=self.reload)

    def _watch_config(self) -> None:
        """Pick up changes other processes (the CLI) commit, within half a second.

        ``PRAGMA data_version`` moves when another connection commits; only then is the
        ``config_version`` counter read, and only a changed counter triggers a reload. A pass
        that fails (a hand-edited row that cannot be read, a broken connection) is logged when
        the failures start and when they end, and retried on the next tick with a fresh
        connection; :meth:`watcher_problem` tells /readyz when no pass has succeeded for a while.
        """
        conn = None
        last_data_version = None
        while not self._stopping.wait(WATCH_EVERY_S):
            try:
                if conn is None:
                    conn = db.connect(self.settings.db_path)
                    last_data_version = None  # data_version is per connection: compare afresh
                last_data_version = self._watch_once(conn, last_data_version)
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
                self.watcher_error = f"{type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                    conn = None
                continue
            if self.watcher_error is not None:
                log.info("configuration watcher: working again (configuration version %d)", self._config_version)
                self.watcher_error = None
            self.watcher_ok_at = time.monotonic()
        if conn is not None:
            conn.close()

    def _watch_once(self, conn, last_data_version: int | None) -> int:
        """One pass: flush key usage, reload if another process changed the configuration.

        Returns the data version seen; it counts as handled only once the reload succeeded,
        so a failed reload is tried again on the next pass.
        """
        self._flush_last_used()
        data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        if data_version != last_data_version and read_config_version(conn) != self._config_version:
            self.reload()
        return data_version

    def watcher_problem(self) -> str | None:
        """Why the configuration watcher is unhealthy (no successful pass for a while), or None."""
        idle = time.monotonic() - self.watcher_ok_at
        if idle <= WATCHER_STALE_S:
            return None
        return f"no successful pass for {idle:.0f}s; configuration changes are not being picked up" + (
            f" (last error: {self.scrub(self.watcher_error)[:300]})" if self.watcher_error else ""
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
        finally:
            conn.execute("COMMIT")
        # Every key we hold is scrubbed, including env keys a database provider overrides.
        secrets = [p.api_key for p in providers if p.api_key]
        for name in ("STOCKYARD_ADMIN_KEY", "STOCKYARD_ENCRYPTION_KEY"):
            if self.env.get(name):
                secrets.append(self.env[name])
        registry = Registry(providers)
        self._secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))
        self._registry = registry
        self._keys, self._project_budgets, self.prices = keys, project_budgets, prices
        self._chain = self.modules.build(module_rows)
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

    # -- request path hooks ----------------------------------------------------------------
    def authenticate(self, ctx: RequestContext) -> None:
        """Who is asking: the request's client key (401/403 when it may not), or open mode."""
        ring = self._keys  # one snapshot for the whole decision
        if not self._requires_keys(ring):
            return
        key: KeyRecord = check_key(ring, ctx.headers, ctx.model, route=self.registry().routes_to)
        ctx.key, ctx.key_id, ctx.project = key, key.id, key.project
        self._used[key.id] = ctx.ts_ms

    def client_key(self, headers: Mapping[str, str]) -> KeyRecord | None:
        """The request's client key, checked from its headers alone (None in open mode; 401 if bad)."""
        ring = self._keys
        return check_key(ring, headers, None) if self._requires_keys(ring) else None

    def price_of(self, model: str) -> Price | None:
        """The price a request for ``model`` will be charged at (raises the routing 400 if it routes nowhere)."""
        provider, upstream = self.registry().resolve(model)
        return self.prices.lookup(upstream, provider.name) or self.prices.lookup(model, provider.name)

    def _flush_last_used(self, force: bool = False) -> None:
        """Write the keys' last_used_at in one batch every couple of seconds."""
        if not self._used or (not force and time.monotonic() - self._used_flushed < LAST_USED_FLUSH_S):
            return
        self._used_flushed = time.monotonic()
        used, self._used = self._used, {}
        rows = [(iso_utc(ms), key_id, iso_utc(ms)) for key_id, ms in used.items()]
        self.store.submit(
            lambda conn: conn.executemany(
                "UPDATE client_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                rows,
            )
        )

    def _load_spend(self, budget: Budget, period_key: str) -> int:
        """A budget period's spend so far, read by the writer so every queued trace counts."""
        return self.store.write(lambda conn: spent_uc(conn, budget.scope, budget.period, period_key))

    def _budget_warning(self, budget: Budget, period_key: str, spent: int, percent: int) -> None:
        """Audit entry + log line, once per budget, period and threshold (restarts included)."""
        ops = self.ops(audit.ACTOR_SERVER)
        text = (
            f"budget warning: {budget.describe()}: {format_usd(spent, 2)} spent in period {period_key}, "
            f"past the {percent}% threshold"
        )

        def job(conn) -> None:
            inserted = conn.execute(
                "INSERT OR IGNORE INTO budget_warnings (scope, period_start, threshold, created_at) "
                "VALUES (?, ?, ?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
                (budget.scope, period_key, percent),
            )
            if inserted.rowcount:
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

        self.store.submit(job)

    def scrub(self, text: str) -> str:
        """Remove every known secret from a text that may reach a client, log or trace."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text

    def scrub_bytes(self, data: bytes) -> bytes:
        for secret in self._secrets:
            raw = secret.encode()
            if raw in data:
                data = data.replace(raw, b"[redacted]")
        return data

    def price(self, ctx: RequestContext) -> None:
        """Cost from the provider's usage, before the modules' after hooks see the outcome. Never raises."""
        try:
            self._price(ctx)
        except Exception as exc:  # a pricing bug must not lose the trace
            log.error("pricing failed for %s: %s", ctx.trace_id, exc)

    def _price(self, ctx: RequestContext) -> None:
        """An estimate only when no usage came back; a failed attempt is billed only if usage came back."""
        if ctx.cache_hit or ctx.provider is None or ctx.status == 0:
            return
        if ctx.status >= 400 and ctx.usage is None:
            return
        if ctx.endpoint == "count_tokens":  # free upstream: nothing to bill
            return
        model = ctx.served_model or ctx.upstream_model or ""
        price = self.prices.lookup(model, ctx.provider.name) or (
            self.prices.lookup(ctx.upstream_model or "", ctx.provider.name)
        )
        if ctx.usage is None:
            if ctx.outcome not in ("ok", "client_disconnected", "stream_broken"):
                return
            ctx.usage = Usage(prompt_tokens=max(1, len(ctx.raw) // 4), completion_tokens=len(ctx.response_body) // 4)
            ctx.usage_estimated = True
        if price is None:
            ctx.cost_status = "unknown"
            return
        ctx.cost_uc = cost_microcents(price, ctx.usage)
        ctx.cost_status = "estimate" if ctx.usage_estimated else "exact"

    def finish(self, ctx: RequestContext) -> None:
        """Trace one request (priced already by :meth:`price`): its failed attempts first, each
        a row of its own under the request's trace id, then the request. Never raises."""
        for n, attempt in enumerate(ctx.attempts, 1):
            self._record(attempt, parent_id=ctx.trace_id, attempt=n)
        self._record(ctx, parent_id=None, attempt=len(ctx.attempts) + 1)

    def _record(self, ctx: RequestContext, *, parent_id: str | None, attempt: int) -> None:
        if ctx.error_message:
            ctx.error_message = self.scrub(ctx.error_message)[:2000]
        record = trace_row_from(
            ctx,
            store_bodies=self.settings.store_bodies,
            cap=self.settings.body_cap_bytes,
            parent_id=parent_id,
            attempt=attempt,
        )
        if self.settings.store_bodies and record.request_body:
            record.request_body = self.scrub_bytes(record.request_body)
        if record.response_body:
            record.response_body = self.scrub_bytes(record.response_body)
        self.store.submit(record.write)
        try:
            self.metrics.observe_request(ctx)
        except Exception as exc:  # metrics must never cost a request
            log.error("metrics update failed for %s: %s", ctx.trace_id, exc)

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        self._stopping.set()
        self._flush_last_used(force=True)
        try:
            self.ops(audit.ACTOR_SERVER).audit_event("server.stop", "server", {"version": __version__})
        except Exception as exc:
            log.error("could not record server stop in the audit log: %s", exc)
        self.writer.stop()
        self.pool.close()
        self.store.close()
        self.db_lock.release()

    @property
    def version(self) -> str:
        return __version__

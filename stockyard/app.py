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
from typing import Mapping

from . import __version__, audit
from .backup import Snapshotter
from .config import Settings
from .metrics import Registry as MetricsRegistry
from .pipeline import Chain, RequestContext
from .pricing import PriceTable, cost_microcents, Usage
from .providers import Provider, Registry, from_env
from .operations import Operations, read_config_version
from .retention import Retention
from .store import Store, Writer, db
from .store.lock import DatabaseLock
from .store.traces import record_from
from .upstream import Pool

log = logging.getLogger("stockyard")


class App:
    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.env = dict(os.environ if env is None else env)
        self.started_at = time.time()
        # Held until close (or until the process dies): restore and migrate refuse meanwhile.
        self.db_lock = DatabaseLock(settings.db_path, exclusive=False).acquire()
        try:
            conn, self.migrations_applied = db.open_and_migrate(settings.db_path)
            conn.close()
        except BaseException:
            self.db_lock.release()
            raise
        self.metrics = MetricsRegistry()
        self.writer = Writer(settings.db_path, maxsize=settings.writer_queue_size)
        self.retention = Retention(bodies_max_age_s=settings.retention_bodies_s,
                                   traces_max_age_s=settings.retention_traces_s,
                                   bodies_max_bytes=settings.bodies_max_bytes)
        self.writer.add_idle_task(self.retention.run)
        self.snapshots: Snapshotter | None = None
        if settings.snapshot_path is not None:
            self.snapshots = Snapshotter(settings.snapshot_path)
            # The first one soon after start (not at once: startup writes should not wait for it).
            self.writer.add_periodic_task(self.snapshots.run, settings.snapshot_every_s,
                                          first_in_s=min(settings.snapshot_every_s, 60.0))
        self.writer.start()
        self.store = Store(settings.db_path, self.writer)
        self.pool = Pool(settings.upstream_connect_timeout_s, settings.upstream_read_timeout_s)
        self._registry = Registry(from_env(self.env))
        self._chain = Chain([])
        self.prices = PriceTable.load()
        self._secrets: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._config_version = -1
        self._stopping = threading.Event()
        self.reload()
        server_ops = self.ops(audit.ACTOR_SERVER)
        for m in self.migrations_applied:
            server_ops.record("migration.apply", f"schema:{m.version:04d}", {"name": m.name})
        server_ops.record("server.start", "server", {"version": __version__, "host": settings.host})
        self._watcher = threading.Thread(target=self._watch_config, name="stockyard-config", daemon=True)
        self._watcher.start()

    # -- configuration snapshots -----------------------------------------------------------
    def registry(self) -> Registry:
        return self._registry

    def chain(self) -> Chain:
        return self._chain

    def ops(self, actor: str) -> Operations:
        """The operations layer for changes made through this server."""
        return Operations(self.store, actor, self.settings.encryption_key, on_change=self.reload)

    def _watch_config(self) -> None:
        """Pick up changes other processes (the CLI) commit, within half a second.

        ``PRAGMA data_version`` moves when another connection commits; only then is the
        ``config_version`` counter read, and only a changed counter triggers a reload.
        """
        conn = db.connect(self.settings.db_path)
        last_data_version = None
        try:
            while not self._stopping.wait(0.5):
                data_version = conn.execute("PRAGMA data_version").fetchone()[0]
                if data_version == last_data_version:
                    continue
                last_data_version = data_version
                if read_config_version(conn) != self._config_version:
                    self.reload()
        except Exception as exc:  # the watcher must never take the server down
            log.error("configuration watcher stopped: %s", exc)
        finally:
            conn.close()

    def reload(self) -> None:
        """Rebuild the configuration snapshots (providers, modules, keys) from env + database."""
        conn = self.store.read()
        version = read_config_version(conn)
        providers: list[Provider] = from_env(self.env)
        with self._lock:
            self._config_version = version
            self._registry = Registry(providers)
            secrets = [p.api_key for p in self._registry.providers if p.api_key]
            for name in ("STOCKYARD_ADMIN_KEY", "STOCKYARD_ENCRYPTION_KEY"):
                if self.env.get(name):
                    secrets.append(self.env[name])
            self._secrets = tuple(s for s in secrets if len(s) >= 4)

    # -- request path hooks ----------------------------------------------------------------
    def authenticate(self, ctx: RequestContext) -> None:
        """Open mode until client keys exist (issue: client keys)."""

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
        """Cost from the provider's usage; an estimate only when no usage came back."""
        if ctx.cache_hit or ctx.provider is None or ctx.status >= 400 or ctx.status == 0:
            return
        model = ctx.served_model or ctx.upstream_model or ""
        price = self.prices.lookup(model, ctx.provider.name) or (
            self.prices.lookup(ctx.upstream_model or "", ctx.provider.name))
        if ctx.usage is None:
            if ctx.outcome not in ("ok", "client_disconnected", "stream_broken"):
                return
            ctx.usage = Usage(prompt_tokens=max(1, len(ctx.raw) // 4),
                              completion_tokens=len(ctx.response_body) // 4)
            ctx.usage_estimated = True
        if price is None:
            ctx.cost_status = "unknown"
            return
        ctx.cost_uc = cost_microcents(price, ctx.usage)
        ctx.cost_status = "estimate" if ctx.usage_estimated else "exact"

    def finish(self, ctx: RequestContext) -> None:
        """Price, trace and log one request. Never raises."""
        try:
            self.price(ctx)
        except Exception as exc:  # a pricing bug must not lose the trace
            log.error("pricing failed for %s: %s", ctx.trace_id, exc)
        if ctx.error_message:
            ctx.error_message = self.scrub(ctx.error_message)[:2000]
        record = record_from(ctx, store_bodies=self.settings.store_bodies, cap=self.settings.body_cap_bytes)
        if self.settings.store_bodies and record.request_body:
            record.request_body = self.scrub_bytes(record.request_body)
        if record.response_body:
            record.response_body = self.scrub_bytes(record.response_body)
        self.store.record(record.write)
        try:
            self.metrics.observe_request(ctx)
        except Exception as exc:  # metrics must never cost a request
            log.error("metrics update failed for %s: %s", ctx.trace_id, exc)

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        self._stopping.set()
        try:
            self.ops(audit.ACTOR_SERVER).record("server.stop", "server", {"version": __version__})
        except Exception as exc:
            log.error("could not record server stop in the audit log: %s", exc)
        self.writer.stop()
        self.pool.close()
        self.store.close()
        self.db_lock.release()

    @property
    def version(self) -> str:
        return __version__

"""Modules in process, without a server (like mitmproxy's ``taddons``).

A :class:`Harness` holds real but small services — a temporary SQLite store with its writer
thread, a real :class:`~stockyard.budgets.Ledger`, the real price table, a providers
registry built from environment-style variables — and the module chain built from them
exactly as the server builds it (the route step included). Tests

- make a request context with :meth:`Harness.request` (parsed like the proxy parses it),
- run the hooks alone (:meth:`before`, :meth:`after`), or
- send the request down the real request path (:meth:`send`: ``proxy.handle`` with a
  recording reply, to the ``mock`` upstream), then read its trace (:meth:`trace`).

Configuration changes (:meth:`configure`) take effect on the next request, as a reload would.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import zlib
from pathlib import Path
from typing import Any, Iterator

import pytest
from module_helpers import provider_env

from stockyard import audit, config, proxy
from stockyard.auth import Gatekeeper
from stockyard.billing import Pricer
from stockyard.budgets import BudgetRecords, Ledger
from stockyard.context import RequestContext
from stockyard.conversations import Conversations
from stockyard.errors import ProxyError
from stockyard.metrics import Metrics
from stockyard.modules import ModuleRow, Modules, ModuleServices, effective_config, find
from stockyard.operations import Operations
from stockyard.providers import Registry, from_env
from stockyard.routing import RouteStep
from stockyard.scrub import Scrubber
from stockyard.store import Store, Writer, db
from stockyard.tracing import Tracer
from stockyard.upstream import Pool

# What the server's PROXY_ROUTES say for the paths the module tests use.
ENDPOINTS = {
    "/v1/chat/completions": ("chat", "openai"),
    "/v1/completions": ("completions", "openai"),
    "/v1/embeddings": ("embeddings", "openai"),
    "/v1/messages": ("messages", "anthropic"),
}


class RecordingReply:
    """The proxy's ``Reply``: keeps what the client would get (a stream's events, de-chunked)."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""

    def send(
        self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None
    ) -> None:
        self.status, self.body = status, body
        self.headers = {"content-type": content_type, **{k.lower(): v for k, v in (headers or {}).items()}}

    def start_stream(self, status: int, headers: dict | None = None, content_type: str = "text/event-stream") -> bool:
        self.status = status
        self.headers = {"content-type": content_type, **{k.lower(): v for k, v in (headers or {}).items()}}
        return True

    def chunk(self, data: bytes) -> None:
        self.body += data

    def end_stream(self, last: bytes = b"") -> None:
        self.body += last

    def abort(self) -> None:
        self.aborted = True

    def begun(self) -> bool:
        return bool(self.status)

    def watch_client(self, on_gone) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class Harness:
    def __init__(self, db_path: Path, env: dict[str, str]) -> None:
        self.env = env
        self.settings = config.load({"db": str(db_path)}, env=env)
        conn, _ = db.open_and_migrate(db_path)
        conn.close()
        self.writer = Writer(db_path)
        self.writer.start()
        self.store = Store(db_path, self.writer)
        self.registry = Registry(from_env(env))
        self.pricer = Pricer()
        self.project_budgets: dict = {}
        records = BudgetRecords(
            self.store, lambda: Operations(self.store, audit.ACTOR_SERVER, self.settings.encryption_key)
        )
        self.ledger = Ledger(records.load_spend, self.settings.budget_warn_percent, records.warn)
        services = ModuleServices(self.settings, self.store, self.ledger, self.pricer, lambda: self.project_budgets)
        self.modules = Modules(services, route=RouteStep(lambda: self.registry))
        self.rows: dict[str, ModuleRow] = {}
        self.chain = self.modules.build(self.rows)
        self.scrubber = Scrubber()
        self.scrubber.use(
            (p.api_key for p in self.registry.providers), (self.settings.admin_key, self.settings.encryption_key)
        )
        self.pool = Pool(self.settings.upstream_connect_timeout_s, self.settings.upstream_read_timeout_s)
        self.path = proxy.RequestPath(
            self.settings,
            Gatekeeper(self.store, True, lambda: self.registry),
            lambda: self.chain,
            lambda: self.registry,
            self.pricer,
            Tracer(self.settings, self.store, Metrics(), self.scrubber),
            self.scrubber,
            self.pool,
            Conversations(self.store, lambda: self.registry, self.pool, self.scrubber, self.settings.max_body_bytes),
        )

    def close(self) -> None:
        self.writer.stop()
        self.pool.close()
        self.store.close()

    # -- configuration ---------------------------------------------------------------------------
    def configure(self, name: str, config: dict | None = None, enabled: bool = True) -> None:
        """Replace a module's options and switch it (what ``PUT /api/modules/{name}`` does)."""
        find(name)
        self.rows[name] = ModuleRow(name, enabled, dict(config or {}), "")
        self.chain = self.modules.build(self.rows)

    def disable_all(self) -> None:
        self.rows = {cls.name: ModuleRow(cls.name, False, {}, "") for cls in map(type, self.modules.instances)}
        self.chain = self.modules.build(self.rows)

    def config_of(self, name: str) -> dict:
        row = self.rows.get(name)
        return effective_config(find(name), row.config if row else {})

    # -- requests ------------------------------------------------------------------------------------
    def context(
        self,
        body: dict,
        path: str = "/v1/chat/completions",
        headers: dict | None = None,
        key_id: str | None = None,
        project: str | None = None,
    ) -> RequestContext:
        """A request context as the server makes it, its body parsed as the proxy parses it."""
        endpoint, dialect = ENDPOINTS[path]
        raw = json.dumps(body).encode()
        ctx = RequestContext(
            endpoint, dialect, "127.0.0.1", {k.lower(): v for k, v in (headers or {}).items()}, raw=raw
        )
        ctx.key_id, ctx.project = key_id, project
        proxy.parse_body(ctx)
        return ctx

    def before(self, ctx: RequestContext) -> ProxyError | None:
        """Run the chain's before hooks; the refusal, if one refused."""
        try:
            self.chain.before(ctx)
        except ProxyError as exc:
            return exc
        return None

    def after(self, ctx: RequestContext) -> None:
        self.pricer.price(ctx)
        self.chain.after(ctx)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """``ServerProcess.request`` for the proxy routes, so ``module_helpers.chat`` works on both."""
        assert method == "POST", "the harness serves the proxy routes only"
        return self.send(body, path, headers)

    def send(
        self, body: dict, path: str = "/v1/chat/completions", headers: dict | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """The request down the real request path (``proxy.handle``): status, headers, body."""
        endpoint, dialect = ENDPOINTS[path]
        ctx = RequestContext(
            endpoint,
            dialect,
            "127.0.0.1",
            {k.lower(): v for k, v in (headers or {}).items()},
            raw=json.dumps(body).encode(),
        )
        reply = RecordingReply()
        proxy.handle(self.path, reply, ctx)
        return reply.status, reply.headers, reply.body

    def chat(self, model: str = "gpt-4o-mini", messages: list | None = None, **fields: Any):
        return self.send({"model": model, "messages": messages or [{"role": "user", "content": "Say hello"}], **fields})

    def stream(self, body: dict, headers: dict | None = None):
        return self.send({**body, "stream": True}, headers=headers)

    # -- what was written ------------------------------------------------------------------------------
    def db_rows(self, sql: str, args: tuple = ()) -> list[dict]:
        """Rows read through the writer, so every record queued before is in them."""

        def read(conn: sqlite3.Connection) -> list[dict]:
            cur = conn.execute(sql, args)
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

        return self.store.write(read)

    def trace(self, trace_id: str) -> dict:
        [row] = self.db_rows("SELECT * FROM traces WHERE id = ?", (trace_id,))
        return row

    def trace_body(self, trace_id: str) -> tuple[str | None, str | None]:
        """(request, response) bodies stored for a trace, decompressed."""
        rows = self.db_rows("SELECT request, response FROM trace_bodies WHERE trace_id = ?", (trace_id,))

        def unpack(b):
            return zlib.decompress(b).decode() if b is not None else None

        return (unpack(rows[0]["request"]), unpack(rows[0]["response"])) if rows else (None, None)


@contextlib.contextmanager
def harness(tmp_path: Path, mock, **env: str) -> Iterator[Harness]:
    h = Harness(tmp_path / "stockyard.db", provider_env(mock, **env))
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def inproc(tmp_path, mock) -> Iterator[Harness]:
    """A harness on its own database, every module off, the mock cleared."""
    mock.clear_replies()
    mock.clear()
    with harness(tmp_path, mock) as h:
        h.disable_all()
        yield h
    mock.clear_replies()

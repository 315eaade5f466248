"""The request path for proxied calls: parse → auth → modules → route → upstream → relay.

Each function here is one stage; they hand a :class:`RequestContext` forward. The
server calls :func:`handle` with a *reply* object that knows how to write to the client.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Protocol

from .errors import ClientGone, ProxyError, sse_error_event
from .pipeline import RequestContext
from .providers.adapters import adapter_for
from .upstream import UpstreamError, UpstreamResponse

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("stockyard.proxy")

# Upstream response headers worth passing on to the client.
PASS_HEADERS = ("x-request-id", "request-id", "openai-processing-ms", "retry-after", "openai-organization")
PASS_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-goog-request-id")
NEEDS_MODEL = ("chat", "completions", "embeddings", "messages", "count_tokens")


class Reply(Protocol):
    def send(self, status: int, body: bytes, content_type: str = ..., headers: dict | None = ...) -> None: ...
    def start_stream(self, status: int, headers: dict | None = ..., content_type: str = ...) -> None: ...
    def chunk(self, data: bytes) -> None: ...
    def end_stream(self) -> None: ...


def parse_body(ctx: RequestContext) -> None:
    """Decode the JSON object body and pick out model and stream (400 on anything else)."""
    try:
        body = json.loads(ctx.raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProxyError(400, "request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ProxyError(400, "request body must be a JSON object", code="invalid_body")
    ctx.body = body
    model = body.get("model")
    if ctx.endpoint in NEEDS_MODEL:
        if not isinstance(model, str) or not model.strip():
            raise ProxyError(400, "'model' is required and must be a non-empty string", param="model",
                             code="missing_model")
        ctx.model = model
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise ProxyError(400, "'stream' must be true or false", param="stream", code="invalid_stream")
    ctx.stream = bool(stream) and ctx.endpoint not in ("embeddings", "count_tokens")
    options = body.get("stream_options")
    ctx.client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True


def passed_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in PASS_HEADERS or k.startswith(PASS_PREFIXES)}


def handle(app: "App", reply: Reply, ctx: RequestContext) -> None:
    """Run one proxied request to its end; always leaves a trace."""
    started_reply = False
    try:
        parse_body(ctx)
        app.authenticate(ctx)
        app.chain().before(ctx)
        if ctx.answer is not None:
            started_reply = True
            deliver_answer(app, reply, ctx)
            return
        provider, model = app.registry().resolve(ctx.routed_model or ctx.model or "")
        ctx.provider, ctx.upstream_model = provider, model
        started_reply = forward(app, reply, ctx)
    except ProxyError as exc:
        fail(ctx, exc.status, exc.message, "rejected" if exc.status < 500 else "error", exc.code)
        if not started_reply:
            send_error(app, reply, ctx, exc)
    except ClientGone:
        ctx.outcome = "client_disconnected"
    finally:
        try:
            app.price(ctx)  # the cost is part of the outcome the after hooks see
            app.chain().after(ctx)
        finally:
            app.finish(ctx)


def fail(ctx: RequestContext, status: int, message: str, outcome: str, error_type: str | None = None) -> None:
    ctx.status = status
    ctx.outcome = outcome
    ctx.error_type = error_type or ctx.error_type
    ctx.error_message = message


def send_error(app: "App", reply: Reply, ctx: RequestContext, exc: ProxyError) -> None:
    body = exc.body(ctx.dialect)
    ctx.capture(body, app.settings.body_cap_bytes)
    try:
        reply.send(exc.status, body, headers={"x-stockyard-trace-id": ctx.trace_id, **exc.headers})
    except ClientGone:
        ctx.outcome = "client_disconnected"


def deliver_answer(app: "App", reply: Reply, ctx: RequestContext) -> None:
    """Send an answer a module made (e.g. a cache hit), as a stream when asked."""
    answer = ctx.answer
    assert answer is not None
    ctx.status = answer.status
    headers = {"x-stockyard-trace-id": ctx.trace_id, **answer.headers}
    ctx.mark_first_byte()
    ctx.capture(answer.body, app.settings.body_cap_bytes)
    reply.send(answer.status, answer.body, answer.content_type, headers)


def call_upstream(app: "App", ctx: RequestContext) -> UpstreamResponse:
    """One attempt at the routed provider (UpstreamError when it cannot be reached)."""
    provider, model = ctx.provider, ctx.upstream_model
    assert provider is not None and model is not None
    if provider.key_error:  # the details (key ids) are for the operator's log, not for clients
        raise ProxyError(503, f"provider {provider.name!r} cannot be used: its stored key cannot be "
                              "decrypted; the operator must fix it (see the server log)",
                         code="provider_key_unavailable")
    adapter = adapter_for(provider, ctx.dialect)
    call = adapter.prepare(ctx, provider, model)
    return app.pool.request(call.base_url or provider.base_url, call.method, call.path, call.headers,
                            call.body, read_timeout=call.read_timeout or ctx.state.get("read_timeout"))


def forward(app: "App", reply: Reply, ctx: RequestContext) -> bool:
    """Send the request upstream and relay the answer; True once the client got bytes."""
    provider = ctx.provider
    assert provider is not None
    adapter = adapter_for(provider, ctx.dialect)
    try:
        resp = call_upstream(app, ctx)
    except UpstreamError as exc:
        ctx.error_type = f"upstream_{exc.kind}"
        raise ProxyError(exc.status, app.scrub(f"provider {provider.name!r}: {exc}"),
                         code=f"upstream_{exc.kind}") from None
    upstream_headers = {k: app.scrub(v) for k, v in resp.headers.items()}
    ctx.upstream_request_id = next((upstream_headers[h] for h in REQUEST_ID_HEADERS if h in upstream_headers), None)
    headers = {"x-stockyard-trace-id": ctx.trace_id, **passed_headers(upstream_headers)}
    if resp.status >= 400:
        relay_upstream_error(app, reply, ctx, resp, adapter, headers)
        return True
    if ctx.stream and resp.is_sse:
        relay_stream(app, reply, ctx, resp, adapter, headers)
        return True
    try:
        raw = resp.read_all()
    except UpstreamError as exc:
        ctx.error_type = f"upstream_{exc.kind}"
        raise ProxyError(exc.status, app.scrub(f"provider {provider.name!r}: {exc}"),
                         code=f"upstream_{exc.kind}") from None
    ctx.mark_first_byte()
    body = app.scrub_bytes(adapter.parse(ctx, raw))
    ctx.status = resp.status
    ctx.capture(body, app.settings.body_cap_bytes)
    reply.send(resp.status, body, "application/json", headers)
    return True


def relay_upstream_error(app: "App", reply: Reply, ctx: RequestContext, resp: UpstreamResponse,
                         adapter, headers: dict[str, str]) -> None:
    """Pass a provider's error through with its status, in the client's dialect, keys scrubbed."""
    try:
        raw = resp.read_all()
    except UpstreamError:
        raw = b""
    ctx.mark_first_byte()
    scrubbed = app.scrub_bytes(raw)
    try:
        json.loads(scrubbed)
        body = adapter.error(ctx, resp.status, scrubbed)
    except ValueError:
        body = ProxyError(resp.status, f"provider {ctx.provider.name!r} answered {resp.status} "
                                       "with a body that is not JSON").body(ctx.dialect)
    ctx.status = resp.status
    ctx.outcome = "upstream_error"
    ctx.error_type = f"upstream_{resp.status}"
    ctx.error_message = app.scrub(scrubbed[:500].decode("utf-8", "replace"))
    ctx.capture(body, app.settings.body_cap_bytes)
    reply.send(resp.status, body, "application/json", headers)


def relay_stream(app: "App", reply: Reply, ctx: RequestContext, resp: UpstreamResponse,
                 adapter, headers: dict[str, str]) -> None:
    """Relay SSE event by event; a break upstream ends with an error event, never [DONE]."""
    translator = adapter.stream(ctx)
    cap = app.settings.body_cap_bytes
    ctx.status = resp.status
    reply.start_stream(resp.status, {**headers, "cache-control": "no-cache"})
    ctx.mark_first_byte()
    try:
        for event in resp.events():
            for out in translator.feed(event):
                out = app.scrub_bytes(out)  # an upstream error event may echo the key
                reply.chunk(out)
                ctx.capture(out, cap)
        for out in translator.finish():
            reply.chunk(out)
            ctx.capture(out, cap)
    except UpstreamError as exc:
        message = f"provider {ctx.provider.name!r} stream broke: {exc}"
        fail(ctx, ctx.status, app.scrub(message), "stream_broken", f"upstream_{exc.kind}")
        event = sse_error_event(ctx.dialect, exc.status, ctx.error_message or message, code=f"upstream_{exc.kind}")
        ctx.capture(event, cap)
        try:
            reply.chunk(event)
            reply.end_stream()
        except ClientGone:
            pass
        return
    except ClientGone:
        resp.close()
        ctx.outcome = "client_disconnected"
        ctx.error_message = "client closed the connection mid-stream"
        return
    reply.end_stream()

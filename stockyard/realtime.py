"""OpenAI's Realtime API over WebSocket (``ws://…/v1/realtime?model=…``), relayed and metered.

Before the upgrade (:func:`admit`, on the handshake's thread; a refusal is the HTTP answer in
OpenAI's shape, never a socket): the client key (its model allow-list), guard's model lists, the
key's rate limits and budget (``modules.early``: nothing counted or held; under a budget the
model must have a price), and the provider — an OpenAI or Azure one, reached over a WebSocket of its
own with the provider's key (its refusal is relayed, scrubbed). Then :class:`Relay` moves every
text message both ways unchanged (the provider's scrubbed of every known secret, as an HTTP
answer's stream is: an ``error`` event may echo the provider's key), one thread a direction (the
provider's socket used by both through :class:`SerialSocket`, one TLS call at a time), a message
whole at a time (at most ``STOCKYARD_MAX_BODY_BYTES``; close 1009), nothing queued (a write blocks
on a peer that does not read, as a stream's does). A client message must be a JSON object (else an ``error`` event and
close 1007); a ``session.update`` naming another model than the connection's is refused with an
``error`` event (the model was checked at the upgrade).

Each ``response.done`` the provider sends is billed (:meth:`Relay._bill`): its ``usage`` at the
model's text, audio and cached rates (``pricing.Usage.from_realtime``), one trace a response
(endpoint ``realtime``), its cost spent from the key's budgets at once. When that leaves a budget
used up the session ends (an ``error`` event ``budget_exceeded``, close 1008): with server VAD the
provider starts responses on its own, so nothing can be held before one; a budget stops the
session after the response that used it up, never inside it. A session cut (either side leaving)
has billed every ``response.done`` that arrived; when the session ends with responses running or
asked for, for any reason but the provider's own end (the client leaving or closing, breaking the
protocol, a budget used up, the key revoked, a limit, a drain), they are cancelled at the provider
and their ``response.done`` awaited a moment (:meth:`Relay._stop`), so what they used is billed too;
one that never sends it is traced as an estimate, and spends a budget its worst case (:meth:`Relay._bill_lost`).
The key is checked again before each ``response.create`` and after each response: revoked, the
session ends (1008). The session ends with one access-log line.
Limits as the Responses WebSocket's: ``STOCKYARD_WEBSOCKET_IDLE_TIMEOUT`` without a data frame
either way (close 1000), ``STOCKYARD_WEBSOCKET_LIFETIME`` (1000), a drain (1001).
"""

from __future__ import annotations

import collections
import json
import logging
import secrets
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from . import attribution
from . import websocket as ws
from .budgets import Budget, scopes_of
from .context import RequestContext, Route
from .errors import RESPONSES, ClientGone, ProxyError, described
from .httpio import json_bytes
from .logbuffer import access, printable
from .modules.alias import Alias
from .modules.early import check_early
from .modules.guard import Guard
from .modules.ratelimit import Counted, RateLimited, RateLimitModule
from .modules.userlimits import UserLimitsModule
from .pricing import Price, Usage, cost_microcents, format_usd
from .providers import AZURE_API_VERSION
from .providers.openai import auth_headers
from .responses_socket import Arriving, Connection
from .upstream import Cancel, Origin, UpstreamError

if TYPE_CHECKING:
    from .app import App
    from .providers import Provider

log = logging.getLogger("stockyard.server")

PATH = "/v1/realtime"
ENDPOINT = "realtime"
KINDS = ("openai", "azure")  # provider kinds whose Realtime API is relayed
SUBPROTOCOL = "realtime"
KEY_PROTOCOL = "openai-insecure-api-key."  # a browser's key, as a WebSocket subprotocol
# The provider headers a client's handshake passes on (the beta interface is asked by header)
PASSED_HEADERS = ("openai-beta",)
POLICY = (("alias", Alias), ("guard", Guard))  # run before the route, as in the chain
LIMITS: tuple[tuple[str, type[RateLimitModule] | type[UserLimitsModule]], ...] = (
    ("ratelimit", RateLimitModule),
    ("userlimits", UserLimitsModule),
)
HEAD_LIMIT = 64 * 1024  # the provider's handshake answer: its head, and an error body
POLL_S = 1.0
CLOSE_WAIT_S = 1.0
CANCEL_WAIT_S = 5.0  # the client gone: how long a cancelled response's response.done is awaited
DONE = b'"response.done"'  # in JSON only as the event's type: a string holding it escapes its quotes
DELTA = b'.delta"'  # an output delta's type (text, audio, transcript, a call's arguments)
ERROR = b'"error"'  # in an error event (its type, its error object), read only when present
AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")  # GA's and the beta's
# What a response that never sent response.done is estimated by: its output text at four characters
# a token (``estimate.relayed_tokens``' rule) and its audio at OpenAI's 20 tokens a second of output,
# which in pcm16 at 24 kHz is 2,400 bytes a token (a lower bound for the 8 kHz G.711 formats)
AUDIO_BYTES_PER_TOKEN = 2400
# Where a response was counted: each rpm/tpm module's window entry (``_count_started``)
Counts = list[tuple[RateLimitModule | UserLimitsModule, Counted | None]]
# Routes under /v1/realtime that give a browser a way to OpenAI around Stockyard: refused
UNMETERED = {
    "/v1/realtime/client_secrets": "an ephemeral key",
    "/v1/realtime/sessions": "an ephemeral key",
    "/v1/realtime/transcription_sessions": "an ephemeral key",
    "/v1/realtime/translations/client_secrets": "an ephemeral key",  # the Realtime Translation API's
    "/v1/realtime/calls": "a WebRTC call",
}


def unmetered_refusal(path: str) -> ProxyError:
    """The 403 of a route whose client would then talk to OpenAI directly, unmetered."""
    what = UNMETERED[path]
    return ProxyError(
        403,
        f"{path} is not served: {what} lets a browser talk to OpenAI directly, where Stockyard cannot "
        "meter or budget it; connect over WebSocket to /v1/realtime with a client key instead",
        code="unsupported_endpoint",
    )


def key_from_subprotocol(headers: dict[str, str]) -> bool:
    """A browser sends its key as the subprotocol ``openai-insecure-api-key.<key>``: moved to
    ``authorization`` (where the one key check reads it; unless one came) and taken out of
    ``sec-websocket-protocol`` (nothing else keeps it). True if the client offered ``realtime``."""
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    keys = [p[len(KEY_PROTOCOL) :] for p in offered if p.startswith(KEY_PROTOCOL)]
    rest = [p for p in offered if not p.startswith(KEY_PROTOCOL)]
    if keys and "authorization" not in headers:
        headers["authorization"] = f"Bearer {keys[0]}"
    if offered:
        headers["sec-websocket-protocol"] = ", ".join(rest)
    return SUBPROTOCOL in rest


def asked_model(query: str) -> str:
    """The ``model`` of the URL's query; a 400 without one (joining a call by ``call_id`` is not served)."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    if "call_id" in params:
        raise ProxyError(
            400,
            "joining a call (call_id) is not served through Stockyard",
            param="call_id",
            code="unsupported_parameter",
        )
    model = params.get("model", "").strip()
    if not model:
        raise ProxyError(400, "the URL must name the model: /v1/realtime?model=…", param="model", code="missing_model")
    return model


@dataclass
class Upstream:
    """The provider's side of a session: its socket after the 101, and what came past its head."""

    provider: Provider
    model: str  # the name the provider was asked for
    sock: socket.socket
    buffered: bytes


def admit(app: App, ctx: RequestContext) -> Upstream:
    """Everything before the upgrade (the key was authenticated from the headers): the model, the
    key's allow-list, guard's lists, rate limits, budgets, then the provider's WebSocket."""
    model = asked_model(ctx.query)
    ctx.model, ctx.body = model, {"model": model}
    ctx.raw = json_bytes(ctx.body)
    app.gate.authenticate(ctx)  # again, with the model: the key's allow-list
    attribution.attribute(ctx)
    chain = app.path.chain()
    for name, kind in POLICY:  # the modules that decide the model, as for any request
        module = chain.module(name, ctx)
        if isinstance(module, kind):
            module.before(ctx)
    routed = ctx.routed_model or model
    deployed = app.models().get(routed)
    if deployed is not None and deployed.deployments:
        raise ProxyError(
            400,
            f"{routed!r} is served by deployments, which a Realtime session does not choose among; "
            "name a provider/model",
            param="model",
            code="unsupported_model",
        )
    provider, upstream_model = app.registry().resolve(routed)
    if ctx.model_policy is not None:
        ctx.model_policy(provider.name, upstream_model, routed)
    ctx.route = Route(provider, upstream_model)
    if provider.kind not in KINDS:
        raise ProxyError(
            400,
            f"the Realtime API is relayed to OpenAI and Azure providers only; {model!r} routes to a "
            f"{provider.kind} provider",
            param="model",
            code="unsupported_model",
        )
    check_early(chain, ctx)
    if session_budgets(app, ctx) and app.path.pricer.price_of(ctx.route, model) is None:
        raise ProxyError(
            403,
            f"model {model!r} has no price, so the budget on this key cannot be enforced; an operator "
            "can add one with `stockyard prices set`",
            param="model",
            code="model_not_priced",
        )
    return connect(app, ctx, provider, upstream_model)


def session_budgets(app: App, ctx: RequestContext) -> list[Budget]:
    """Every budget a session's responses spend: the key's and its project's (where the budget
    module runs for the key) and its end user's (``userlimits``, where it runs)."""
    found = app.budgets_of(ctx)
    module = app.path.chain().module("userlimits", ctx)
    user = module.budget_of(ctx) if isinstance(module, UserLimitsModule) else None
    return [*found, user] if user is not None else found


def connect(app: App, ctx: RequestContext, provider: Provider, model: str) -> Upstream:
    """The provider's WebSocket, opened with its key; its refusal as the client's error (scrubbed)."""
    origin = Origin.parse(provider.base_url)
    target, headers = provider_target(origin, provider, model)
    headers["User-Agent"] = "stockyard"
    headers.update({name: ctx.headers[name] for name in PASSED_HEADERS if name in ctx.headers})
    pool = app.path.pool
    try:
        sock = pool.open_socket(origin, Cancel())
    except UpstreamError as exc:
        raise exc.answer(provider.name, app.path.scrub.text) from None
    try:
        deadline = time.monotonic() + pool.connect_timeout  # the whole handshake's, not each read's
        sock.settimeout(pool.connect_timeout)
        head, accept = ws.client_handshake(origin.host_header, target, headers)
        sock.sendall(head)
        answer, rest = _read_head(sock, deadline)
        status, fields = _parse_head(answer)
        if status != 101:
            raise _refusal(app, provider, status, _read_body(sock, rest, fields, deadline))
        if fields.get("sec-websocket-accept") != accept:
            raise ProxyError(
                502, f"provider {provider.name!r} answered the WebSocket handshake wrongly", code="upstream_protocol"
            )
        sock.settimeout(app.settings.idle_timeout_s)  # a write to a provider that does not read: bounded
        return Upstream(provider, model, sock, rest)
    except OSError as exc:
        sock.close()
        raise ProxyError(502, f"provider {provider.name!r}: {described(exc)}", code="upstream_connect") from None
    except BaseException:
        sock.close()
        raise


def provider_target(origin: Origin, provider: Provider, model: str) -> tuple[str, dict[str, str]]:
    """Where the provider's Realtime WebSocket is, and the header with its key: OpenAI's
    ``…/realtime?model=…`` with a bearer key; Azure's as the SDK's AzureOpenAI opens it,
    ``/openai/realtime?api-version=…&deployment=…`` with ``api-key``."""
    if provider.kind != "azure":
        return f"{origin.prefix}/realtime?{urlencode({'model': model})}", auth_headers(provider)
    base = origin.prefix if origin.prefix.endswith("/openai") else f"{origin.prefix}/openai"
    query = urlencode({"api-version": provider.api_version or AZURE_API_VERSION, "deployment": model})
    return f"{base}/realtime?{query}", {"api-key": provider.api_key} if provider.api_key else {}


def _recv_by(sock: socket.socket, deadline: float) -> bytes:
    """One read that ends by ``deadline`` (a ``TimeoutError`` past it): a provider trickling its
    answer a byte at a time is not waited for a timeout per byte."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out waiting for the handshake's answer")
    sock.settimeout(left)
    return sock.recv(65536)


def _read_head(sock: socket.socket, deadline: float) -> tuple[bytes, bytes]:
    """The provider's answer head and the bytes read past it, by ``deadline``."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > HEAD_LIMIT:
            raise ConnectionError("the handshake's answer head is too large")
        piece = _recv_by(sock, deadline)
        if not piece:
            raise ConnectionError("the provider closed the connection during the handshake")
        data += piece
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError("the provider's answer is not HTTP")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(parts[1]), fields


def _read_body(sock: socket.socket, rest: bytes, fields: dict[str, str], deadline: float) -> bytes:
    """A refusal's body (at most ``HEAD_LIMIT`` bytes; what arrives by ``deadline``)."""
    length = fields.get("content-length", "")
    want = min(int(length), HEAD_LIMIT) if length.isdigit() else HEAD_LIMIT
    body = rest
    try:
        while len(body) < want and (piece := _recv_by(sock, deadline)):
            body += piece
    except OSError:
        pass
    return body[:want]


def _refusal(app: App, provider: Provider, status: int, body: bytes) -> ProxyError:
    """The provider's refusal of the handshake as the client's error: its status (a 401 or 403 —
    Stockyard's key refused — a 502, not the client's), its message scrubbed of every secret."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    message = error.get("message") if isinstance(error, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    said = app.path.scrub.text(str(message or f"HTTP {status}"))
    shown = 502 if status in (401, 403) or status < 400 else status
    return ProxyError(
        shown,
        f"provider {provider.name!r} refused the session: {printable(said, 500)}",
        code=str(code or "upstream_error"),
    )


class SerialSocket:
    """The provider's socket, read on one thread and written on others, one short non-blocking call
    at a time under one lock: OpenSSL does not promise that one SSL object may be read and written at
    once (a TLS 1.3 KeyUpdate read makes ``SSL_read`` write). Nobody waits for the socket while holding
    the lock, so a write blocked on a provider that does not read never stops the reading (no deadlock).
    ``sendall`` gives up after ``timeout`` seconds without progress (``TimeoutError``)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock, self.timeout = sock, timeout
        self._lock = threading.Lock()
        sock.setblocking(False)

    def _call(self, op: Any, want: int, deadline: float) -> Any:
        """``op()`` under the lock, retried when the socket is ready, until ``deadline``."""
        while True:
            with self._lock:
                try:
                    return op()
                except ssl.SSLWantReadError:
                    want = select.POLLIN
                except ssl.SSLWantWriteError:
                    want = select.POLLOUT
                except BlockingIOError:
                    pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the provider's socket was not ready in time")
            poll = select.poll()
            poll.register(self.sock, want)
            poll.poll(left * 1000)

    def recv(self, timeout: float) -> bytes | None:
        """What arrives within ``timeout`` (None: nothing yet; ``b""``: the provider ended)."""
        try:
            return self._call(lambda: self.sock.recv(65536), select.POLLIN, time.monotonic() + timeout)
        except TimeoutError:
            return None

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = self._call(lambda rest=view: self.sock.send(rest), select.POLLOUT, time.monotonic() + self.timeout)
            view = view[sent:]

    def shutdown(self) -> None:
        """Both directions ended: the reader sees its end at once."""
        with self._lock:
            self.sock.shutdown(socket.SHUT_RDWR)


def error_event(code: str, message: str, kind: str = "invalid_request_error") -> bytes:
    """A Realtime ``error`` event (``RealtimeErrorEvent``)."""
    error = {"type": kind, "code": code, "message": message, "param": None, "event_id": None}
    return json_bytes({"type": "error", "event_id": f"event_stockyard_{int(time.time() * 1000)}", "error": error})


class Relay:
    """One session: the client's frames read on this thread, the provider's on another."""

    def __init__(
        self, app: App, sock: socket.socket, buffered: bytes, ctx: RequestContext, upstream: Upstream, draining: Any
    ) -> None:
        self.app, self.ctx, self.upstream = app, ctx, upstream
        self.client = Connection(sock)
        self._provider_sock = SerialSocket(upstream.sock, app.settings.idle_timeout_s)
        # A client's frames (masked), written through the one lock the provider's socket is used under
        self.provider = Connection(self._provider_sock, ws.client_frame)  # type: ignore[arg-type]
        self._buffered = buffered
        self._draining = draining
        self._opened = self._active = time.monotonic()
        self._ended = threading.Event()
        self._end_lock = threading.Lock()
        self._arriving = Arriving(app)
        self.responses = 0
        self.cost_uc = 0
        self.priced = True
        self.close_code: int | None = None
        self._budgets = session_budgets(app, ctx)
        self._scopes = {*(scopes_of(ctx.key) if ctx.key is not None else ()), *(b.scope for b in self._budgets)}
        self._response_started: dict[str, float] = {}  # responses running: their response.created's time
        self._relayed: dict[str, list[int]] = {}  # of those, the output relayed: [text characters, audio bytes]
        # and where each was counted in the rpm/tpm windows as it began (its tokens put in as it ends)
        self._counted: dict[str, Counts] = {}
        # the input the last response.done read (a lost response's estimate); None: none came yet
        self._read: Usage | None = None
        self._books_closed = False  # the responses left running were billed as lost (_bill_lost)
        self._being_billed: set[str] = set()  # responses whose response.done the reader is billing (_billing)
        self._asked = 0  # the client's response.create sent on, its response.created not seen yet
        # each of those: its event_id (an error naming it frees it) and where it was counted in the rpm/tpm
        # windows as it was sent on (the oldest first)
        self._asked_counts: collections.deque[tuple[str, Counts]] = collections.deque()
        self._state_lock = threading.Lock()  # the two above, and _final
        self._final: tuple[int, str, int] | None = None  # the session is ending (_stop): its close codes
        self._winding = False  # the session is ending: running responses are being cancelled and billed
        self._settled = threading.Event()  # set while no response runs or is asked for (or the reader ended)
        self._settled.set()
        self._told = threading.Event()  # the first end's error event went out: the others may close
        self._reader: threading.Thread | None = None

    def run(self) -> None:
        """Relay until either side ends, then close both and log the session."""
        reader = self._reader = threading.Thread(target=self._from_provider, name="stockyard-realtime", daemon=True)
        reader.start()
        try:
            self._from_client()
        except Exception as exc:  # a bug: one line, both sides closed, never a traceback
            log.error("websocket %s: relaying failed (%s); closed", PATH, described(exc))
            self._end(ws.INTERNAL, "internal error")
        finally:
            if self._final is not None and not self._ended.is_set():  # the reader began the end: its close goes first
                self._stop(*self._final)
            self._end(ws.GOING_AWAY, "session ended")
            reader.join(timeout=CLOSE_WAIT_S + 2 * POLL_S)
            self.upstream.sock.close()
            self._bill_left()  # the session's log line still written after a bug there
            self.app.bodies.give(self._arriving.take())
            self._log()

    def _end(self, code: int, reason: str, provider_code: int = ws.NORMAL) -> None:
        """Close both sides (each once); the readers see the sockets end."""
        with self._end_lock:
            if self.close_code is None:
                self.close_code = code
        self.client.close(code, reason)
        self.provider.close(provider_code, reason)
        self._ended.set()
        try:  # the provider's reader sees its socket end at once
            self._provider_sock.shutdown()
        except OSError:
            pass

    # -- the client's frames ---------------------------------------------------------------------
    def _from_client(self) -> None:
        settings = self.app.settings
        reader = ws.FrameReader(settings.max_body_bytes, self._arriving.room)
        poll = select.poll()
        poll.register(self.client.sock, select.POLLIN)
        data = self._buffered
        message_since: float | None = None  # a message began and has not ended: it must, as an HTTP body must
        while not self._ended.is_set():
            if self._final is not None:  # the provider's reader began the end: its responses are awaited here
                self._stop(*self._final)
                return
            if data:
                progress = reader.progress
                try:
                    frames = reader.feed(data)
                except ws.Fault as fault:
                    self._stop(fault.code, fault.reason)
                    return
                if reader.progress != progress:  # pings and pongs alone are not activity
                    self._active = time.monotonic()
                for got in frames:
                    if not self._client_frame(got):
                        return
            message_since = (message_since or time.monotonic()) if reader.in_message else None
            if message_since is not None and time.monotonic() - message_since >= settings.request_read_timeout_s:
                self._stop(ws.POLICY, "a message must arrive whole within STOCKYARD_REQUEST_READ_TIMEOUT")
                return
            if self._limit_reached():
                return
            if settings.websocket_ping_interval_s:
                self.client.ping_if_quiet(settings.websocket_ping_interval_s)
            if not poll.poll(POLL_S * 1000):
                data = b""
                continue
            try:
                data = self.client.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._stop(ws.GOING_AWAY, "the client left")
                return

    def _stop(self, code: int, reason: str, provider_code: int = ws.NORMAL, event: bytes | None = None) -> None:
        """End the session for any reason but the provider's own end: responses still running (or
        asked for) are cancelled at the provider and their ``response.done`` (with what they used,
        which OpenAI bills) awaited up to ``CANCEL_WAIT_S``, so they are billed too; then both sides
        close (with the codes of the first reason, and its ``error`` ``event`` if any: one, when both
        threads find a reason at once). On the provider's reader (which reads those
        ``response.done``) it returns at once: the client's thread waits and ends the session."""
        with self._state_lock:
            first = self._final is None
            if first:
                self._final, self._winding = (code, reason, provider_code), True
            final, running = self._final, list(self._response_started)
        assert final is not None
        if first:
            try:
                if event is not None:
                    self.client.send(ws.TEXT, event)
            except ClientGone:
                pass
            finally:
                self._told.set()
        else:  # the first reason's error event goes out before the close frame
            self._told.wait(CLOSE_WAIT_S)
        if first and not self._settled.is_set():
            self.client.close(code, reason)
            for ident in running:
                self._cancel(ident)
        if threading.current_thread() is not self._reader:
            self._settled.wait(CANCEL_WAIT_S)
            self._end(*final)
        elif self._settled.is_set():
            self._end(*final)

    def _cancel(self, ident: str) -> None:
        """``response.cancel`` for a running response (the provider gone: nothing to do)."""
        try:
            self.provider.send(ws.TEXT, json_bytes({"type": "response.cancel", "response_id": ident}))
        except ClientGone:
            pass

    def _settle(self) -> None:
        """``_settled`` as it now is: set when no response runs and none was asked for (caller holds
        ``_state_lock``)."""
        if self._response_started or self._asked:
            self._settled.clear()
        else:
            self._settled.set()

    def _client_frame(self, got: ws.Frame) -> bool:
        """One frame from the client: False once the session ends."""
        if self._final is not None:  # the session ends: nothing more goes to the provider
            return False
        if got.opcode == ws.PING:
            self._send_client(ws.PONG, got.payload)
        elif got.opcode == ws.CLOSE:
            try:
                code, reason = ws.close_code(got.payload)
            except ws.Fault as fault:
                self._stop(fault.code, fault.reason)
                return False
            self._stop(ws.NORMAL, reason, code or ws.NORMAL)
            return False
        elif got.opcode == ws.TEXT:
            held = self._arriving.take()
            try:
                return self._client_message(got.text)
            finally:
                self.app.bodies.give(held)
        return True

    def _client_message(self, text: str) -> bool:
        """A client event: checked, then sent on. A message that is not a JSON object ends the
        session (an ``error`` event, close 1007); a ``session.update`` for another model is refused."""
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            said = error_event("invalid_json", "a client event must be a JSON object with a type")
            self._stop(ws.INVALID_DATA, "a client event must be a JSON object", event=said)
            return False
        session = event.get("session")
        named = session.get("model") if event["type"] == "session.update" and isinstance(session, dict) else None
        if named is not None and named not in (self.ctx.model, self.upstream.model):
            message = (
                f"the session's model is {self.ctx.model!r}, checked when it opened; open a new session for another"
            )
            self._send_client(ws.TEXT, error_event("model_change_not_allowed", message))
            return True
        payload = text.encode("utf-8")
        if event["type"] == "response.create":
            asked_id = event.get("event_id")
            if not isinstance(asked_id, str) or not asked_id:  # one of ours: the provider's error names it
                asked_id = f"event_stockyard_{secrets.token_hex(8)}"
                payload = json_bytes({**event, "event_id": asked_id})
            if not self._may_create(asked_id):
                return not self._ended.is_set() and self._final is None
        try:
            self.provider.send(ws.TEXT, payload)
        except ClientGone:
            self._end(1014, "the provider is gone")
            return False
        return True

    def _may_create(self, asked_id: str) -> bool:
        """A client's ``response.create`` (``asked_id``: its ``event_id``): its key checked again; under
        a budget, one response at a time (OpenAI runs out-of-band ones in parallel, each billed only as it
        ends: a budget could be passed by as many as were sent at once) and none once a budget is used up
        (by another session of the key). True: sent on, counted in the rpm/tpm windows now, and counted
        as asked for until its ``response.created`` (or the provider's error naming it)."""
        if self._key_refused():
            return False
        if self._budgets:
            with self._state_lock:
                busy = bool(self._response_started or self._asked)
            if busy:
                message = "a response is in progress; under a budget a session runs one at a time"
                self._send_client(ws.TEXT, error_event("response_in_progress", message))
                return False
            if not self._budget_left():
                return False
        counted = self._count_started(asked=True)  # now: a burst sent before any response.created is limited too
        if counted is None:  # past the key's (or its end user's) rpm or tpm: told, not sent on
            return False
        with self._state_lock:  # awaited, should the session end before its response.created
            self._asked += 1
            self._asked_counts.append((asked_id, counted))
            self._settle()
        return True

    def _key_refused(self) -> bool:
        """The session's key checked again (before a response is asked for, and after each one):
        revoked, expired or deleted since the upgrade, the session ends (its ``error`` event, 1008)."""
        base = self.ctx
        if base.key is None:
            return False
        try:
            self.app.gate.authenticate(RequestContext(ENDPOINT, RESPONSES, base.client_addr, dict(base.headers)))
        except ProxyError as exc:
            if exc.status != 401:
                return False
            said = error_event(exc.code or "invalid_api_key", exc.message)
            self._stop(ws.POLICY, "the client key was refused", event=said)
            return True
        return False

    def _limit_reached(self) -> bool:
        """The drain, the lifetime and the idle timeout: the session closed if one is reached."""
        settings = self.app.settings
        now = time.monotonic()
        if self._draining():  # responses running are cancelled and billed, as when the client leaves
            self._stop(ws.GOING_AWAY, "server shutting down", ws.GOING_AWAY)
        elif now - self._opened >= settings.websocket_lifetime_s:
            message = f"the session reached its limit of {settings.websocket_lifetime_s:g} s; open a new one"
            self._stop(ws.NORMAL, "session lifetime reached", event=error_event("session_expired", message))
        elif now - self._active >= settings.websocket_idle_timeout_s:
            self._stop(ws.NORMAL, "idle timeout")
        else:
            return False
        return True

    def _send_client(self, opcode: int, payload: bytes) -> None:
        try:
            self.client.send(opcode, payload)
        except ClientGone:  # running responses are still cancelled and billed
            self._stop(ws.GOING_AWAY, "the client left")

    # -- the provider's frames -------------------------------------------------------------------
    def _from_provider(self) -> None:
        try:
            self._read_provider()
        except Exception as exc:  # a bug: one line, both sides closed
            log.error("websocket %s: reading the provider failed (%s); closed", PATH, described(exc))
            self._end(ws.INTERNAL, "internal error")
        finally:
            self._settled.set()
            if self._books_closed:  # the session's end billed what ran before this reader, held, saw the rest
                self._bill_left()  # those it saw begin since (held by a rate count, say): never free

    def _bill_left(self) -> None:
        """The responses left running billed as lost (:meth:`_bill_lost`): at the session's end, and
        again as the provider's reader ends after it (it was held, and saw more begin meanwhile)."""
        try:
            self._bill_lost()
        except Exception as exc:  # a bug: one line
            log.error("websocket %s: billing the responses left unfinished failed (%s)", PATH, described(exc))

    def _read_provider(self) -> None:
        reader = ws.FrameReader(self.app.settings.max_body_bytes, masked=False)
        data = self.upstream.buffered
        sock = self._provider_sock
        while True:
            if data:
                try:
                    frames = reader.feed(data)
                except ws.Fault as fault:
                    self._end(1014, "the provider broke the WebSocket protocol", fault.code)
                    return
                for got in frames:
                    if not self._provider_frame(got):
                        return
            if self._ended.is_set():
                return
            try:
                arrived = sock.recv(POLL_S)
            except OSError:
                arrived = b""
            if arrived is None:
                data = b""
                continue
            data = arrived
            if not data:
                self._end(1014, "the provider ended the session")
                return

    def _provider_frame(self, got: ws.Frame) -> bool:
        if got.opcode == ws.PING:
            try:
                self.provider.send(ws.PONG, got.payload)
            except ClientGone:
                pass
        elif got.opcode == ws.CLOSE:
            try:
                code, reason = ws.close_code(got.payload)
            except ws.Fault:
                code, reason = None, ""
            self._end(code if code is not None else ws.NORMAL, reason or "the provider closed the session")
            return False
        elif got.opcode == ws.TEXT:
            self._active = time.monotonic()
            # Scrubbed as an HTTP answer's stream is: an error event may echo the provider's key
            data = self.app.path.scrub.bytes(got.text.encode("utf-8"))
            if ERROR in data:  # a create it refused is freed before the client hears (and sends the next)
                self._create_refused(data)
            self._send_client(ws.TEXT, data)
            if DONE in data or b'"response.created"' in data:
                return self._provider_event(data)
            if DELTA in data:
                self._count_delta(data)
        return not self._ended.is_set()

    def _count_delta(self, data: bytes) -> None:
        """An output delta of a running response: its text characters or audio bytes counted, what
        a response that never sends ``response.done`` is estimated by (:meth:`_bill_lost`)."""
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        ident, delta = event.get("response_id"), event.get("delta")
        with self._state_lock:
            if not isinstance(ident, str) or ident not in self._response_started or not isinstance(delta, str):
                return
            seen = self._relayed.setdefault(ident, [0, 0])
            if event.get("type") in AUDIO_DELTAS:
                seen[1] += len(delta) * 3 // 4  # base64
            else:
                seen[0] += len(delta)

    def _create_refused(self, data: bytes) -> None:
        """The provider's ``error`` for a client's ``response.create`` (its ``event_id`` named, as every
        create goes on with one): no response comes of it, so it is no longer awaited (under a budget the
        session's next create would be refused as one in progress), and its worst case leaves the tpm window."""
        try:
            event = json.loads(data)
        except ValueError:
            return
        error = event.get("error") if isinstance(event, dict) and event.get("type") == "error" else None
        named = error.get("event_id") if isinstance(error, dict) else None
        with self._state_lock:
            found = next((i for i, (asked_id, _) in enumerate(self._asked_counts) if asked_id == named), None)
            if found is None:
                return
            _, counted = self._asked_counts[found]
            del self._asked_counts[found]
            self._asked = max(0, self._asked - 1)
            self._settle()
        for module, entry in counted:  # counted in the rpm as a request is; no tokens used
            module.count_used(self.ctx, entry, 0)

    def _provider_event(self, data: bytes) -> bool:
        """``response.created`` starts a response's clock; ``response.done`` bills it (after it
        went to the client: a bill never holds the audio back). False once a budget ends the session."""
        try:
            event = json.loads(data)
        except ValueError:
            return True
        response = event.get("response") if isinstance(event, dict) else None
        if not isinstance(response, dict):
            return True
        named = response.get("id")
        ident = named if isinstance(named, str) else ""
        if event.get("type") == "response.created":
            with self._state_lock:  # the client's oldest create counted as it was sent on, or none (server VAD)
                asked = self._asked_counts.popleft()[1] if self._asked_counts else None
            counted = asked if asked is not None else self._count_started() or []
            with self._state_lock:
                self._response_started[ident] = time.perf_counter()
                self._counted[ident] = counted
                self._asked = max(0, self._asked - 1)
                self._settle()
                winding = self._winding
            if winding:  # asked for just before the session began to end: cancelled as well
                self._cancel(ident)
            return True
        if event.get("type") != "response.done" or not self._billing(ident):
            return True
        self._bill(response, ident, data)
        with self._state_lock:  # billed: no longer running
            self._response_started.pop(ident, None)
            self._being_billed.discard(ident)
            self._settle()
        if self._winding:
            return True  # the session ends: the rest of its responses are awaited
        if self._budget_left():
            self._key_refused()
        return not self._ended.is_set()

    def _billing(self, ident: str) -> bool:
        """Whether a ``response.done`` read is this reader's to bill: not once the session's end billed
        the responses left as lost (a reader slow to end); if so, that end leaves it alone (a bill held
        past the session's waits, by a settlement waiting on a ledger row, was billed twice)."""
        with self._state_lock:
            if self._books_closed:
                return False
            self._being_billed.add(ident)
            return True

    def _bill(self, response: dict, ident: str, data: bytes) -> None:
        """One response's trace and its spend."""
        usage = Usage.from_realtime(response.get("usage"))
        price = self._price()
        cost = cost_microcents(price, usage) if price is not None else None
        ctx = self._response_ctx(ident)
        a = ctx.attempt
        a.status, a.usage, a.cost_uc = 200, usage, cost
        a.cost_status = "exact" if cost is not None else "unknown"
        a.response_body, a.response_bytes = bytearray(data), len(data)
        with self._state_lock:
            self._read = replace(usage, completion_tokens=0, reasoning_tokens=0, media_output_tokens=0)
            self._relayed.pop(ident, None)
        self._settle_response(ctx, ident, cost, cost or 0)

    def _bill_lost(self) -> None:
        """The responses that never sent ``response.done`` (the provider dropped, or a cancel took
        longer than ``CANCEL_WAIT_S``): each a trace all the same (status 502, ``stream_broken``), its
        cost an estimate — the input the last response read (a conversation only grows) and the
        output it relayed —, or unknown before any ``response.done`` said what the session's input is
        (an estimate of its output alone, nothing at all before any, would report it as cheap or free);
        under a budget, its worst case spent (that input and the model's whole output ceiling as
        audio), as an answer whose cost cannot be known spends its hold: the spend beyond the estimate
        goes with the trace (``budget_unpriced``). Never free."""
        with self._state_lock:
            lost = [
                (ident, started, self._relayed.pop(ident, [0, 0]))
                for ident, started in self._response_started.items()
                if ident not in self._being_billed  # its response.done is being billed by the reader
            ]
            for ident, _, _ in lost:
                del self._response_started[ident]
            self._books_closed = True  # a response.done read after this (a reader slow to end) is not billed twice
            read = self._read
        price = self._price()
        for ident, started, (chars, audio_bytes) in lost:
            audio = -(-audio_bytes // AUDIO_BYTES_PER_TOKEN)
            output = -(-chars // 4) + audio
            usage = replace(read or Usage(), completion_tokens=output, media_output_tokens=audio)
            cost = cost_microcents(price, usage) if price is not None and read is not None else None
            ctx = self._response_ctx(ident)
            ctx.started, a = started, ctx.attempt
            a.status, a.outcome, a.error_type = 502, "stream_broken", "upstream_incomplete"
            a.usage, a.usage_estimated, a.cost_uc = usage, True, cost
            a.cost_status = "estimate" if cost is not None else "unknown"
            said = "an estimate" if cost is not None else "unknown"
            a.error_message = f"the provider sent no response.done for {printable(ident, 100)}: its cost is {said}"
            spent = cost or 0
            if self._budgets and price is not None:
                ceiling = max(output, price.max_output_tokens or self.app.settings.default_max_tokens)
                worst = cost_microcents(price, replace(usage, completion_tokens=ceiling, media_output_tokens=ceiling))
                spent = max(spent, worst)
                ctx.unpriced_spent_uc = spent - (cost or 0)
            self._settle_response(ctx, ident, cost, spent)

    def _price(self) -> Price | None:
        assert self.ctx.route is not None
        return self.app.path.pricer.price_of(self.ctx.route, self.ctx.model or "")

    def _response_ctx(self, ident: str) -> RequestContext:
        """A response's own request context (its trace): the session's key, end user, model and route."""
        base = self.ctx
        ctx = RequestContext(ENDPOINT, RESPONSES, base.client_addr, base.headers, base.query)
        with self._state_lock:  # still running until its spend is settled: a create meanwhile waits
            ctx.started = self._response_started.get(ident, ctx.started)
        ctx.key, ctx.key_id, ctx.project, ctx.key_ring = base.key, base.key_id, base.project, base.key_ring
        ctx.model, ctx.route, ctx.body, ctx.raw = base.model, base.route, base.body, base.raw
        ctx.end_user, ctx.tags, ctx.stream, ctx.complete = base.end_user, base.tags, True, True
        a = ctx.attempt
        a.provider, a.upstream_model, a.served_model = self.upstream.provider, self.upstream.model, self.upstream.model
        a.response_id = ident[:256] or None
        return ctx

    def _count_started(self, asked: bool = False) -> Counts | None:
        """A response asked for or begun, counted at once in the key's and the end user's rpm/tpm
        windows, as an HTTP request is at admission: the client's as its ``response.create`` is sent on
        (eight sent at once, before any ``response.created``, were eight past an rpm of 2), server
        VAD's at its ``response.created``. ``asked`` (the client's): admitted with its worst case, or
        refused past an rpm or tpm (an ``error`` event ``rate_limit_exceeded``, type ``rate_limit_error``,
        saying when the window frees; not sent on, the session goes on): None, and a window that counted
        it before another refused it keeps it as a request of no tokens, as an HTTP refusal's is."""
        chain, base = self.app.path.chain(), self.ctx
        counted: Counts = []
        for name, kind in LIMITS:
            module = chain.module(name, base)
            if isinstance(module, kind):
                try:
                    entry = module.count_started(base, asked)
                except RateLimited as exc:
                    for counted_by, counted_entry in counted:  # never sent on: counted, no tokens used
                        counted_by.count_used(base, counted_entry, 0)
                    self._send_client(ws.TEXT, error_event("rate_limit_exceeded", exc.message, "rate_limit_error"))
                    return None
                except Exception as exc:  # the shared windows' database busy or lost: the response goes uncounted
                    log.warning("realtime: a response not counted in the %s windows: %s", name, described(exc))
                    entry = None
                counted.append((module, entry))
        return counted

    def _settle_response(self, ctx: RequestContext, ident: str, cost: int | None, spent: int) -> None:
        """A response counted in the session's log line, ``spent`` from its budgets, its trace written,
        the tokens it used put in the rpm/tpm windows it was counted in as it began. The spend before
        the trace, as a request's after hooks settle before its trace: a group's parent (``groupstate``)
        must learn of it before its trace can commit, or a resync reading the trace in between counts
        it twice."""
        app, base, usage = self.app, self.ctx, ctx.attempt.usage
        assert usage is not None
        self.responses += 1
        self.cost_uc += cost or 0
        self.priced = self.priced and cost is not None
        try:
            if self._budgets:
                app.ledger.settle(None, spent, self._scopes, ctx.ts_ms, trace_id=ctx.trace_id)
        finally:
            app.tracer.finish(ctx)
        with self._state_lock:
            counted = self._counted.pop(ident, None)
        if counted is None:  # its response.created never seen: counted now
            counted = self._count_started() or []  # (never refused: None only when asked)
        for module, entry in counted:  # the key's and the end user's rpm/tpm windows
            module.count_used(base, entry, usage.prompt_tokens + usage.completion_tokens)

    def _budget_left(self) -> bool:
        """After a response's spend: a budget used up ends the session (its ``error`` event, 1008;
        False)."""
        if not self._budgets:
            return True
        try:
            used_up = self.app.ledger.used_up(self._budgets, int(time.time() * 1000))
        except Exception as exc:  # the spend unreadable: the session goes on, said once in the log
            log.warning("websocket %s: the budget's spend could not be read (%s)", PATH, described(exc))
            return True
        if used_up is None:
            return True
        message = used_up.error().message
        said = error_event("budget_exceeded", message, "budget_exceeded")
        self._stop(ws.POLICY, "budget exceeded", event=said)  # responses still running: cancelled and billed
        return False

    def _log(self) -> None:
        if not self.app.settings.log_requests:
            return
        cost = format_usd(self.cost_uc) if self.priced else "unknown"
        seconds = time.monotonic() - self._opened
        access(
            f"WS {PATH} {self.close_code or '-'} {printable(self.ctx.model or '-', 200)} "
            f"responses={self.responses} cost={cost} {seconds * 1000:.1f}ms {self.ctx.trace_id}"
        )

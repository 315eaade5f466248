"""The Responses API's WebSocket mode: ``ws://…/v1/responses``, one connection, many turns.

The handshake was authenticated (and counted against ``STOCKYARD_WEBSOCKET_MAX_CONNECTIONS``) by
the server before the upgrade. Then each ``response.create`` text message is one
``POST /v1/responses`` with ``stream`` on, run through the same request path (``proxy.handle``:
the key again, budgets, rate limits, modules, routing, the trace with its cost) on the
connection's own thread, with a :class:`SocketReply` in place of the HTTP handler: every SSE event
the HTTP stream would carry goes out as one text message (its ``data``), an error answer as an
``error`` event. A second thread per connection reads the client's frames meanwhile, so pings are
answered and the client leaving is noticed while a turn waits for its provider, and a
``response.create`` sent while one is in flight is refused (``response_already_in_flight``).

``previous_response_id`` naming the connection's most recent response made with ``store: false``
is answered from a connection-local copy of that turn (its whole input and its output), put in
front of the new input: the provider, told nothing of it, is sent the conversation whole. Every
other id is looked up as over HTTP (stored responses). Limits: a message at most
``STOCKYARD_MAX_BODY_BYTES`` (close 1009), ``STOCKYARD_WEBSOCKET_IDLE_TIMEOUT`` without a data
frame (pings and pongs do not count) and no turn in flight (close 1000), a message whole within
``STOCKYARD_REQUEST_READ_TIMEOUT`` of its first frame, as an HTTP request's body (close 1008), a ping after
``STOCKYARD_WEBSOCKET_PING_INTERVAL`` with no frame sent (proxies in front drop quiet sockets),
``STOCKYARD_WEBSOCKET_LIFETIME`` in all (an ``error`` event
``websocket_connection_limit_reached``, then close 1000, once no turn is in flight), a drain
(SIGTERM) closes with 1001 once the turn in flight has ended; past either no new turn is taken.
Writes block on a client that does not read, as an HTTP stream's do (``STOCKYARD_IDLE_TIMEOUT`` per
write): nothing is buffered for it.
"""

from __future__ import annotations

import json
import logging
import queue
import select
import socket
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from . import proxy
from . import websocket as ws
from .context import RequestContext
from .conversations import MAX_CHAIN, new_response_id
from .errors import REFUSALS, RESPONSES, ClientGone, ProxyError, described, error_body, refusal_of
from .httpio import json_bytes, json_object
from .limits import BODY_UNCOUNTED_BYTES
from .logbuffer import access, printable

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("stockyard.server")

PATH = "/v1/responses"
POLL_S = 1.0  # the reader looks at the drain, the idle timeout and the lifetime this often at least
CLOSE_WAIT_S = 1.0  # after our close frame: how long the client's answering one is waited for
PING_CHECK_S = 0.05  # at least this long between looks at whether a ping is due (a write may hold it off)
TERMINAL = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')
# Fields of response.create that are the socket's own, not the create body's
NOT_SERVED = {
    "background": "a background response is not served over WebSocket; send it as HTTP POST",
    "stream_id": "stream_id lanes are not served by Stockyard: one response at a time per connection",
}


def error_event(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    """An ``error`` event: the HTTP error body's ``error``, with the event's ``type`` and the status."""
    body = json.loads(error_body(RESPONSES, status, message, code=code, param=param))
    return json_bytes({"type": "error", "status": status, **body})


def as_error_event(status: int, body: bytes) -> bytes:
    """An error answer (Stockyard's or the provider's JSON body) as an ``error`` event."""
    obj = _loads(body)
    error = obj.get("error") if obj is not None else None
    if not isinstance(error, dict):
        return error_event(status, "the provider failed without an error body", "upstream_error")
    return json_bytes({"type": "error", "status": status, "error": error})


@dataclass
class Recent:
    """The connection's most recent response made with ``store: false``: what chains from it."""

    response_id: str
    previous: str | None  # the stored response the local turns continue (named again when chained), if any
    items: list  # the turn's whole input since then (what it chained from here included), then its output


class Connection:
    """The socket after the upgrade: frames written whole under one lock (the turn's events and
    the reader's pongs and refusals), and the state both threads read. A client's socket is plain
    TCP (Stockyard serves no TLS itself: one terminates in front of it), which one thread may read
    while another writes; were it an ``ssl.SSLSocket`` it would need ``realtime.SerialSocket``'s
    design (OpenSSL does not promise one SSL object is safe read and written at once), as the
    Realtime relay's provider side has (``Connection(SerialSocket(…), ws.client_frame)``)."""

    def __init__(self, sock: socket.socket, encode: Callable[[int, bytes], bytes] = ws.frame) -> None:
        self.sock = sock
        self._encode = encode  # how a frame is written: a server's (unmasked), or a client's (ws.client_frame)
        self._lock = threading.Lock()
        self.closed = False  # a close frame went out, or the socket failed: nothing more is written
        self.last_sent = time.monotonic()  # when a frame last went out (the 101 just did): pings wait for quiet
        # Turns by number: accepted (the reader queued it), answered (its last event went out: the
        # client may send the next), finished (the trace and the rest done on this side too)
        self.accepted = self.answered = self.finished = 0
        self.turns_lock = threading.Lock()
        self.on_gone: Callable[[], None] | None = None  # the turn's: the client left, end its upstream call

    @property
    def busy(self) -> bool:
        """A turn is queued or running (the drain, the idle timeout and the lifetime wait for it)."""
        return self.accepted > self.finished

    def accept(self) -> bool:
        """Take the next turn, unless a response is in flight (its last event not sent yet)."""
        with self.turns_lock:
            if self.accepted > self.answered:
                return False
            self.accepted += 1
            return True

    def answer(self, turn: int) -> None:
        """Turn ``turn``'s last event went out: the next ``response.create`` is welcome."""
        with self.turns_lock:
            self.answered = max(self.answered, turn)

    def finish(self, turn: int) -> None:
        with self.turns_lock:
            self.answered = max(self.answered, turn)
            self.finished = max(self.finished, turn)

    def send(self, opcode: int, payload: bytes) -> None:
        with self._lock:
            if self.closed:
                raise ClientGone()
            try:
                self.sock.sendall(self._encode(opcode, payload))
            except OSError as exc:
                self.closed = True
                raise ClientGone() from exc
            self.last_sent = time.monotonic()

    def ping_if_quiet(self, interval: float) -> None:
        """A ping once ``interval`` seconds passed with no frame sent, so a proxy in front does not take
        the socket for a dead one (nginx drops one quiet for 60 s). Never waits: a frame being written
        (its write blocked on a client that does not read) is not quiet."""
        if time.monotonic() - self.last_sent < interval or not self._lock.acquire(blocking=False):
            return
        try:
            if not self.closed:
                self.sock.sendall(self._encode(ws.PING, b""))
                self.last_sent = time.monotonic()
        except OSError:
            self.closed = True
        finally:
            self._lock.release()

    def close(self, code: int, reason: str) -> None:
        """Our close frame (once); the TCP connection ends when the session does."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            try:
                self.sock.sendall(self._encode(ws.CLOSE, ws.close_payload(code, reason)))
            except OSError:
                pass

    def gone(self) -> None:
        with self._lock:
            self.closed = True
        on_gone = self.on_gone
        if on_gone is not None:
            on_gone()


class Arriving:
    """The client's message arriving: its bytes so far (as its frames announce them), and those of
    them held in ``App.bodies`` (once past ``BODY_UNCOUNTED_BYTES``, as an HTTP body's), given back
    by whoever takes them (:meth:`take`) once the message is done with."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.size = self.held = 0

    def room(self, size: int) -> bool:
        """A data frame of ``size`` bytes begins (the reader asks before its payload is read): the
        message it joins is counted with the request bodies once past ``BODY_UNCOUNTED_BYTES``,
        waiting for room as an HTTP body does (``App.hold_body``); False: none came (closed 1013)."""
        self.size += size
        more = self.size - self.held if self.size > BODY_UNCOUNTED_BYTES else 0
        if more:
            try:
                self.app.hold_body(more, self.held)
            except ProxyError:
                return False
            self.held += more
        return True

    def take(self) -> int:
        """The message ended (or never will): the bytes it holds, for the taker to give back."""
        held, self.size, self.held = self.held, 0, 0
        return held


class SocketReply:
    """``proxy.Reply`` over the socket for one turn: each SSE event's ``data`` is a text message;
    an error answer is an ``error`` event."""

    def __init__(self, conn: Connection, turn: int) -> None:
        self.conn, self.turn = conn, turn
        self.sent = 0  # messages of this turn
        self.status = 0
        self.last: dict | None = None  # the response of the turn's terminal event
        self._pending = b""  # an SSE event not complete yet

    def send(
        self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None
    ) -> None:
        self.status = status
        self._message(as_error_event(status, body) if status >= 400 else body, last=True)

    def start_stream(self, status: int, headers: dict | None = None, content_type: str = "text/event-stream") -> bool:
        self.status = status
        return True

    def chunk(self, data: bytes) -> None:
        events = (self._pending + data).split(b"\n\n")
        self._pending = events.pop()
        for event in events:
            self._event(event)

    def end_stream(self, last: bytes = b"") -> None:
        self.chunk(last)
        if self._pending.strip():
            self._event(self._pending)
        self._pending = b""

    def abort(self) -> None:
        self.conn.close(ws.INTERNAL, "the answer broke")

    def begun(self) -> bool:
        return self.sent > 0

    @contextmanager
    def watch_client(self, on_gone: Callable[[], None]) -> Iterator[None]:
        """While the provider works: the reader calls ``on_gone`` if the client leaves."""
        self.conn.on_gone = on_gone
        try:
            yield
        finally:
            self.conn.on_gone = None

    def stream_socket(self) -> socket.socket | None:
        return None  # relayed on this thread: every event becomes a frame here

    def _event(self, event: bytes) -> None:
        lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
        data = b"\n".join(lines)
        if not data or data == b"[DONE]":
            return
        last = False
        if data.startswith(b'{"error"'):  # a broken stream's error event (errors.sse_error_event)
            obj = _loads(data)
            if obj is not None:
                data, last = json_bytes({"type": "error", "status": self.status or 502, **obj}), True
        elif any(kind in data[:120] for kind in TERMINAL):
            obj = _loads(data)
            response = obj.get("response") if obj is not None else None
            self.last, last = (response if isinstance(response, dict) else None), True
        self._message(data, last)

    def _message(self, data: bytes, last: bool = False) -> None:
        self.sent += 1
        if last:  # before it goes: the client may answer it with its next turn at once
            self.conn.answer(self.turn)
        self.conn.send(ws.TEXT, data)


class Session:
    """One upgraded connection: the turns on this thread, the frames read by another."""

    def __init__(
        self, app: App, sock: socket.socket, buffered: bytes, ctx: RequestContext, draining: Callable[[], bool]
    ) -> None:
        self.app = app
        self.conn = Connection(sock)
        self.ctx = ctx  # the handshake's: its headers, address and query make each turn's
        self._draining = draining
        self._buffered = buffered  # bytes read past the handshake's head
        self._arriving = Arriving(app)
        self._reader = ws.FrameReader(app.settings.max_body_bytes, self._arriving.room)
        self._turns: queue.Queue[tuple[str, int] | None] = queue.Queue()  # (text, bytes held) of each turn
        self._recent: Recent | None = None
        # responses this connection's turns stored with no key (open mode): its key's once it is known
        self._keyless: deque[str] = deque(maxlen=MAX_CHAIN)
        self._opened = time.monotonic()
        self._active = time.monotonic()  # the last frame from the client, or the last turn's end

    def run(self) -> None:
        reader = threading.Thread(target=self._read, name="stockyard-websocket", daemon=True)
        reader.start()
        turn = 0
        try:
            while (taken := self._turns.get()) is not None:
                text, held = taken
                turn += 1
                try:
                    self._turn(text, turn)
                finally:
                    del text, taken  # the message, before its bytes are given back
                    self.app.bodies.give(held)
                    self._active = time.monotonic()
                    self.conn.finish(turn)
        finally:
            self.conn.gone()
            self._adopt_keyless()  # its client may go on naming them elsewhere (HTTP, a new socket)
            reader.join(timeout=CLOSE_WAIT_S + 2 * POLL_S)
            self.app.store.end_reads()

    # -- the reading thread ----------------------------------------------------------------------
    def _read(self) -> None:
        try:
            self._read_frames()
        except Exception as exc:  # a bug: one line, the connection closed, never a traceback on stderr
            log.error("websocket %s: reading failed (%s); closed", PATH, described(exc))
            self.conn.close(ws.INTERNAL, "internal error")
        finally:
            self.conn.gone()
            self.app.bodies.give(self._arriving.take())  # a message begun, never ended
            self._turns.put(None)

    def _read_frames(self) -> None:
        settings = self.app.settings
        poll = select.poll()
        poll.register(self.conn.sock, select.POLLIN)
        data = self._buffered
        closing_since: float | None = None
        message_since: float | None = None  # a message began and has not ended: it must, as an HTTP body must
        reader: ws.FrameReader | None = self._reader  # None once the client broke the protocol: drained, unread
        while True:
            if data and reader is not None:
                progress = reader.progress
                try:
                    frames = reader.feed(data)
                except ws.Fault as fault:
                    self.conn.close(fault.code, fault.reason)  # then what follows is drained, briefly:
                    frames, reader = [], None  # closing over unread bytes would reset the close frame away
                if reader is None or reader.progress != progress:  # pings and pongs alone are not activity
                    self._active = time.monotonic()
                pong: bytes | None = None  # the latest ping's (RFC 6455 §5.5.3): one write per read, not per ping
                for f in frames:
                    if f.opcode == ws.CLOSE:
                        try:
                            code, _ = ws.close_code(f.payload)
                        except ws.Fault as fault:
                            code = fault.code
                        self.conn.close(code or ws.NORMAL, "")  # the client's code echoed (RFC 6455 §5.5.1)
                        return
                    if f.opcode == ws.PING:
                        pong = f.payload
                    elif f.opcode == ws.TEXT:
                        self._received(f.text)
                if pong is not None:
                    self._send_quietly(ws.PONG, pong)
            now = time.monotonic()
            if reader is None or not reader.in_message:
                message_since = None
            elif message_since is None:
                message_since = now
            if self.conn.closed:  # our close frame went out: the client's answer, briefly
                closing_since = closing_since or now
                if now - closing_since > CLOSE_WAIT_S:
                    return
            elif message_since is not None and now - message_since >= settings.request_read_timeout_s:
                self.conn.close(ws.POLICY, "a message must arrive whole within STOCKYARD_REQUEST_READ_TIMEOUT")
            elif not self.conn.busy:
                if self._draining():
                    self.conn.close(ws.GOING_AWAY, "server shutting down")
                elif self._expired():
                    message = f"the connection reached its limit of {settings.websocket_lifetime_s:g} s; open a new one"
                    self._send_quietly(ws.TEXT, error_event(400, message, "websocket_connection_limit_reached"))
                    self.conn.close(ws.NORMAL, "connection lifetime reached")
                elif now - self._active >= settings.websocket_idle_timeout_s:
                    self.conn.close(ws.NORMAL, "idle timeout")
            interval = settings.websocket_ping_interval_s
            if interval and not self.conn.closed:
                self.conn.ping_if_quiet(interval)
            if not poll.poll(self._wait_s(interval) * 1000):
                data = b""
                continue
            try:
                data = self.conn.sock.recv(65536)
            except OSError:
                return
            if not data:
                return

    def _wait_s(self, interval: float) -> float:
        """How long the reader may wait for the client's bytes: ``POLL_S``, or less, until the next
        ping is due (``interval`` after the last frame sent; 0: no pings)."""
        if not interval or self.conn.closed:
            return POLL_S
        return min(POLL_S, max(PING_CHECK_S, self.conn.last_sent + interval - time.monotonic()))

    def _received(self, text: str) -> None:
        """A text message: the next turn, unless one is in flight (or we are closing). Past the
        lifetime or in a drain no turn is taken: a client sending each turn the moment the last one
        ends would otherwise never leave the connection without one, and never be closed."""
        held = self._arriving.take()
        if self.conn.closed or self._draining() or self._expired():
            self.app.bodies.give(held)
            return  # _read_frames closes the connection (1001; the lifetime's event, then 1000)
        if not self.conn.accept():
            self.app.bodies.give(held)
            message = "a response is already in flight on this connection; send the next response.create once it ends"
            self._send_quietly(ws.TEXT, error_event(409, message, "response_already_in_flight"))
            return
        self._turns.put((text, held))

    def _expired(self) -> bool:
        return time.monotonic() - self._opened >= self.app.settings.websocket_lifetime_s

    def _send_quietly(self, opcode: int, payload: bytes) -> None:
        try:
            self.conn.send(opcode, payload)
        except ClientGone:
            pass

    # -- the turns -------------------------------------------------------------------------------
    def _turn(self, text: str, turn: int) -> None:
        """One ``response.create``: checked, then the request path, then the local chain kept."""
        started = time.perf_counter()
        base = self.ctx
        ctx = RequestContext("responses", RESPONSES, base.client_addr, dict(base.headers), base.query)
        ctx.websocket = True
        reply = SocketReply(self.conn, turn)
        try:
            body, local = self._create_body(text)
        except ProxyError as exc:
            self._turn_error(turn, exc)
            return
        warm = body.pop("generate", True) is False
        ctx.raw = json_bytes(body)
        if warm:
            try:  # no provider call, but the key and its model allow-list hold as for a turn
                proxy.parse_body(ctx)
                self.app.gate.authenticate(ctx)
            except ProxyError as exc:
                self._turn_error(turn, exc)
                self._end_if_key_refused(exc.status)
                return
            self._warm_up(body, local, turn)
            return
        self._adopt_keyless()
        try:
            proxy.handle(self.app.path, reply, ctx)
        except REFUSALS as caught:  # after the first event (proxy.refused traced it): the turn ends here
            self._turn_error(turn, refusal_of(caught))
        except ClientGone:
            pass
        except Exception as exc:  # traced by proxy.unexpected; one line here, never a traceback
            said = self.app.path.scrub.text(described(exc))
            log.error("websocket %s: a turn failed (%s) %s", PATH, printable(said, 300), ctx.trace_id)
            self._turn_error(turn, ProxyError(500, "internal error; see the server log", code="internal_error"))
        finally:
            if self.app.settings.log_requests:
                done = ctx.attempt
                model = f"{done.provider.name}/{done.upstream_model}" if done.provider else ctx.model
                access(
                    f"WS {PATH} {reply.status or ctx.attempt.status} {printable(model or '-', 200)} "
                    f"{(time.perf_counter() - started) * 1000:.1f}ms {ctx.trace_id}"
                )
        self._remember(body, local, reply.last)
        kept = reply.last.get("id") if reply.last is not None else None
        if ctx.key is None and body.get("store") is not False and isinstance(kept, str):
            self._keyless.append(kept)
        self._end_if_key_refused(reply.status)

    def _adopt_keyless(self) -> None:
        """Before a turn and as the connection ends: if the server now knows the key this connection
        presented (it was opened before then, in open mode), the responses its turns stored with no
        key become that key's, so the turn (or the client, elsewhere) may continue them. A key
        refused now is the turn's own 401, said by the turn."""
        if not self._keyless:
            return
        base = self.ctx
        try:
            key = self.app.gate.client_key(base.headers)
        except ProxyError:
            return
        if key is None:
            return
        try:
            self.app.conversations.adopt(self._keyless, key.id)
        except Exception as exc:  # the database's failure: the turn goes on, its chain as before (a 404)
            said = described(exc)
            log.warning("websocket %s: this connection's responses were not given to its key (%s)", PATH, said)
            return
        self._keyless.clear()

    def _end_if_key_refused(self, status: int) -> None:
        """After a turn answered 401: if the handshake's key itself is refused now (revoked, expired,
        deleted), the connection ends (1008, after the ``error`` event), not held open for a key
        whose every turn would be refused. A provider's 401 leaves it open."""
        if status != 401:
            return
        base = self.ctx
        try:
            self.app.gate.authenticate(RequestContext("responses", RESPONSES, base.client_addr, dict(base.headers)))
        except ProxyError as exc:
            if exc.status == 401:
                self.conn.close(ws.POLICY, "the client key was refused")

    def _warm_up(self, body: dict, local: list | None, turn: int) -> None:
        """``generate: false``: no model output, only a response id the next turn may chain from
        (Codex warms a connection up so), once the body and the key (its state, its model allow-list)
        were checked as a turn's are. Nothing reaches the provider and nothing is billed: the
        warm-up's input is kept on the connection, as a ``store: false`` turn's is, and sent with
        the turn that names it. One chained from a stored response or a conversation would need
        their history kept here too: refused."""
        if local is None and (body.get("previous_response_id") is not None or body.get("conversation") is not None):
            why = "a warm-up (generate: false) chains only from this connection's last response; send the turn itself"
            self._turn_error(turn, ProxyError(400, why, param="generate", code="unsupported_parameter"))
            return
        try:
            sent = checked_input(body)
        except ProxyError as exc:
            self._turn_error(turn, exc)
            return
        response: dict[str, Any] = {
            "id": new_response_id(),
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "model": body.get("model"),
            "output": [],
            "usage": None,
        }
        self._send_quietly(
            ws.TEXT, json_bytes({"type": "response.created", "sequence_number": 0, "response": response})
        )
        self.conn.answer(turn)  # before the last event: the client may send its turn at once
        done = {**response, "status": "completed"}
        self._send_quietly(ws.TEXT, json_bytes({"type": "response.completed", "sequence_number": 1, "response": done}))
        items = local if local is not None else input_items(sent)
        self._recent = Recent(done["id"], body.get("previous_response_id"), items)
        if self.app.settings.log_requests:
            access(f"WS {PATH} warm-up {printable(str(body.get('model') or '-'), 200)} {done['id']}")

    def _turn_error(self, turn: int, exc: ProxyError) -> None:
        """The ``error`` event that ends turn ``turn`` (the next one welcome from now on)."""
        self.conn.answer(turn)
        self._send_quietly(ws.TEXT, error_event(exc.status, exc.message, exc.code, exc.param))

    def _create_body(self, text: str) -> tuple[dict, list | None]:
        """The create body a ``response.create`` message stands for (``stream`` on), and the items of
        the local response it chains from, put in front of its input (None: no local chain)."""
        try:
            message = json_object(text)  # the text as it is: no second copy of a large message
        except ProxyError as exc:
            raise ProxyError(400, f"a message must be a JSON object: {exc.message}", code="invalid_json") from None
        kind = message.get("type")
        if kind != "response.create":
            shown = printable(str(kind), 100)
            raise ProxyError(
                400, f"unknown event type {shown!r}: send response.create", param="type", code="invalid_event"
            )
        body = {k: v for k, v in message.items() if k not in ("type", "stream")}
        for name, why in NOT_SERVED.items():
            if body.pop(name, None) not in (None, False):
                raise ProxyError(400, why, param=name, code="unsupported_parameter")
        if body.get("generate") not in (None, True, False):
            raise ProxyError(400, "'generate' must be a boolean", param="generate", code="invalid_type")
        body["stream"] = True
        recent, previous = self._recent, body.get("previous_response_id")
        if recent is None or previous != recent.response_id:
            return body, None
        new = input_items(checked_input(body))
        body = {k: v for k, v in body.items() if k != "previous_response_id"}
        if recent.previous is not None:  # the stored part of the conversation, found as over HTTP
            body["previous_response_id"] = recent.previous
        body["input"] = recent.items + new
        limit = self.app.settings.max_body_bytes
        if len(json_bytes(body)) > limit:
            why = f"the conversation on this connection is larger than {limit} bytes (STOCKYARD_MAX_BODY_BYTES)"
            raise ProxyError(
                400, why + "; start a new one", param="previous_response_id", code="conversation_too_large"
            )
        return body, recent.items + new

    def _remember(self, body: dict, local: list | None, response: dict | None) -> None:
        """After a turn: a response made with ``store: false`` that completed is the one the next
        turn may chain from here (over the stored response it continued, if it did: named again
        then); any other outcome forgets the local one (OpenAI evicts it too)."""
        self._recent = None
        if local is None and body.get("conversation") is not None:
            return  # its history is the conversation's, appended there
        if (
            response is None
            or body.get("store") is not False
            or response.get("status") not in ("completed", "incomplete")
        ):
            return
        response_id, output = response.get("id"), response.get("output")
        if not isinstance(response_id, str) or not isinstance(output, list):
            return
        sent = body.get("input")
        items = local if local is not None else input_items(sent)
        replayed = [*items, *(r for o in output if (r := replayable(o)) is not None)]
        self._recent = Recent(response_id, body.get("previous_response_id"), replayed)


def checked_input(body: dict) -> str | list | None:
    """A create body's ``input`` as sent; a 400 naming it when it is neither a string nor an array."""
    sent = body.get("input")
    if sent is not None and not isinstance(sent, (str, list)):
        raise ProxyError(400, "'input' must be a string or an array of items", param="input", code="invalid_type")
    return sent


def input_items(sent: str | list | None) -> list:
    """A create body's ``input`` as items (a string is one user message)."""
    return [{"role": "user", "content": sent}] if isinstance(sent, str) else sent or []


def _loads(data: bytes) -> dict | None:
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def replayable(item: Any) -> dict | None:
    """An output item as the next turn's input sends it. Nothing the provider made is stored with
    ``store: false``, so no item may name a stored one by its id: a reasoning item without its
    encrypted content is left out, and the others go without their ids (as Codex sends them); a
    reasoning item with its content keeps its id, which it requires."""
    if not isinstance(item, dict):
        return None
    if item.get("type") == "reasoning":
        return item if item.get("encrypted_content") else None
    return {k: v for k, v in item.items() if k != "id"}

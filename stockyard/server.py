"""The HTTP server: a hardened stdlib ThreadingHTTPServer, routes, limits, error shapes.

Measured on this kind of machine: a deep accept backlog, Nagle off, and
status line + headers + body in ONE write per response (otherwise ~40 ms stalls on
keep-alive). Errors never leave as HTML or tracebacks: every refusal is JSON in the
dialect of the route.
"""

from __future__ import annotations

import email.utils
import errno
import functools
import hmac
import io
import json
import logging
import re
import socket
import threading
import time
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Container, Iterator, NoReturn, TypeVar
from urllib.parse import urlsplit

from . import (
    anthropic_files,
    anthropic_models,
    containers_api,
    files_api,
    gemini_api,
    gemini_cache,
    gemini_files,
    message_batches,
    multipart,
    proxy,
    realtime,
    responses_socket,
    uploads_api,
    vector_stores_api,
    videos_api,
    websocket,
)
from . import ui as console
from .app import App
from .attribution import codex_session
from .chunked import ChunkError, Dechunker
from .clientwatch import ClientWatch
from .context import RequestContext
from .conversations import PATH as RESPONSE_PATH
from .conversations import endpoint_name as stored_endpoint
from .conversations_api import PATH as CONVERSATION_PATH
from .conversations_api import endpoint_name as conversation_endpoint
from .errors import (
    ANTHROPIC,
    GEMINI,
    OPENAI,
    REFUSALS,
    RESPONSES,
    ClientGone,
    ProxyError,
    database_refusal,
    described,
    error_body,
    refusal_of,
)
from .hosts import client_address, counted_sender, forwarded_prefix, host_allowed, is_trusted, origin_allowed
from .httphead import MAX_REQUEST_HEAD, HeadError, Headers, bearer_token, body_framing, read_head
from .httpio import Request, Response, check_method, json_response
from .keys import presented_key
from .limits import BODY_UNCOUNTED_BYTES, Caps, websocket_caps
from .logbuffer import access, printable
from .loglimit import Throttle
from .modules import redact
from .modules.ratelimit import admit_call
from .multipart import Upload
from .providers import media
from .responses_socket import PATH as SOCKET_PATH
from .threadcache import ThreadCache

_T = TypeVar("_T")
log = logging.getLogger("stockyard.server")

PROXY_ROUTES: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("chat", OPENAI),
    "/v1/completions": ("completions", OPENAI),
    "/v1/embeddings": ("embeddings", OPENAI),
    "/v1/messages": ("messages", ANTHROPIC),
    "/v1/messages/count_tokens": ("count_tokens", ANTHROPIC),
    "/v1/responses": ("responses", RESPONSES),
    "/v1/responses/input_tokens": ("input_tokens", RESPONSES),
    "/v1/responses/compact": ("compact", RESPONSES),
    "/v1/audio/transcriptions": ("transcriptions", OPENAI),
    "/v1/audio/translations": ("translations", OPENAI),
    "/v1/audio/speech": ("speech", OPENAI),
    "/v1/images/generations": ("image_generations", OPENAI),
    "/v1/images/edits": ("image_edits", OPENAI),
    "/v1/images/variations": ("image_variations", OPENAI),
    "/v1/moderations": ("moderations", OPENAI),
}
# Streamed uploads (an image edit's: or JSON, ``media.is_json_edit``).
MULTIPART_ENDPOINTS = ("transcriptions", "translations", "image_edits", "image_variations")
# Answered for any Host and Origin: load balancers and probes address a server by its IP.
OPEN_ROUTES = ("/healthz", "/readyz")
CHUNK_LINE_MAX = 4096  # a chunk-size line with its extensions
BODY_BLOCK = 64 * 1024  # bodies are read in blocks of this size
UPLOAD_PROGRESS_BYTES = 256 * 1024  # an upload earns another read deadline per this many bytes
LINGER_S, LINGER_BYTES = 1.0, 1 << 20  # after an early answer: what we read and drop before closing
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # an interim answer: every HTTP/1.1 client reads past it
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, OSError)
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"[^\x00-\x20\x7f]+")
RouteFn = Callable[[App, Request], Response]  # a route handler: answers with a whole Response


class Reaper:
    """Closes connections whose request has not fully arrived by its deadline.

    The socket timeout alone lets a client that sends one byte every few seconds hold a
    thread forever (slowloris); one thread checking deadlines once a second is cheaper
    than a timer per request.
    """

    def __init__(self) -> None:
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="stockyard-reaper", daemon=True).start()

    def arm(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            self._deadlines[sock] = time.monotonic() + seconds

    def disarm(self, sock: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(sock, None)

    def _run(self) -> None:
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            with self._lock:
                late = [s for s, deadline in self._deadlines.items() if deadline < now]
                for s in late:
                    del self._deadlines[s]
            for s in late:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def trace_note(ctx: RequestContext) -> str:
    """What the access log line says of a request's trace: its id, or that it was not written."""
    if ctx.traced:
        return f" {ctx.trace_id}"
    return f" {ctx.trace_id} (not traced: too many refusals from this {'key' if ctx.key_id else 'address'})"


def raise_file_limit() -> None:
    """Lift the soft open-file limit to the hard one (capped): each connection holds one or two sockets."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, OSError, ValueError):
        pass


def default_max_connections(per_connection: int = 2) -> int:
    """The open-file limit (less 64 for the rest) over what one connection may hold, 64 to 1024:
    ``per_connection`` descriptors — its socket, its provider's, and on SQLite its thread's read
    connection (the database file and its WAL: 4 in all)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 512 // (per_connection // 2)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(64, min(1024, (soft - 64) // per_connection))


ACCEPT_BATCH = 64  # connections accepted per wake-up of the accept loop, at most
# accept() failed for want of a descriptor (or kernel memory): the loop rests this long before
# trying again, instead of spinning on a listening socket that stays readable.
ACCEPT_REST_S = 0.1
_ACCEPT_STARVED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class StockyardHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, app: App, handler: type, sock: socket.socket | None = None) -> None:
        self.app = app
        self.draining = False
        self.active = 0
        self.active_cv = threading.Condition()
        # Routes under a prefix (admin API, console), registered by make_server: (prefix, handler)
        self.prefix_routes: list[tuple[str, RouteFn]] = []
        self.reaper = Reaper()
        self.client_watch = ClientWatch()
        self.threads = ThreadCache(ending=app.store.close_reads)  # a thread's read connection ends with it
        # PostgreSQL reads share a bounded pool; on SQLite each connection's thread opens its own
        total = app.settings.max_connections or default_max_connections(2 if app.backend.pooled_readers else 4)
        self.caps = Caps(total, app.settings.max_connections_per_client or max(1, total // 4))
        app.websockets = websocket_caps(app.settings.websocket_max_connections, total)  # none open yet
        self._refused_log = Throttle()  # connections refused: over the caps
        self._starved_log = Throttle()  # connections left queued: out of descriptors
        self._open: set[socket.socket] = set()  # every connection a thread serves (cut_connections)
        self._open_lock = threading.Lock()
        self._open_cv = threading.Condition(self._open_lock)  # a connection's thread ended (wait_served)
        super().__init__((app.settings.host, app.settings.port), handler, bind_and_activate=sock is None)
        if sock is not None:  # a worker of a group (stockyard.workers): the parent bound and listens
            self.socket.close()
            self.socket = sock
            self.server_address = sock.getsockname()
        self.socket.setblocking(False)  # accepted in batches: _handle_request_noblock

    def handle_error(self, request, client_address) -> None:  # noqa: D401 - stdlib hook
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)

    # -- the connection caps -----------------------------------------------------------------
    def _counted(self, address: str) -> str | None:
        return counted_sender(address, self.app.settings.trusted_proxies)

    def process_request(self, request, client_address) -> None:
        """A thread per connection (a kept one when one waits: threadcache), within the caps;
        beyond, a fast refusal from this thread."""
        who = self._counted(client_address[0])
        refused = self.caps.take(who)
        if refused == 503:
            limit = f"its limit of {self.caps.total} connections (STOCKYARD_MAX_CONNECTIONS)"
            self._refuse_connection(request, 503, f"the server is at {limit}; retry shortly")
            return
        if refused == 429:
            limit = f"{self.caps.per_sender} connections from one address (STOCKYARD_MAX_CONNECTIONS_PER_CLIENT)"
            self._refuse_connection(request, 429, f"{limit} are open already; reuse them or retry shortly")
            return
        with self._open_lock:
            self._open.add(request)
        try:
            self.threads.run(self.process_request_thread, request, client_address)
        except BaseException:
            self._forget(request)
            self.caps.give(who)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)
            self.caps.give(self._counted(client_address[0]))
            self.app.store.end_reads()  # the thread may serve another connection next

    def server_close(self) -> None:
        super().server_close()
        self.threads.close()

    def _handle_request_noblock(self) -> None:
        """Accept every connection waiting (up to ``ACCEPT_BATCH``) each time the accept loop wakes:
        in a burst, one wake-up and its wait for the GIL per batch instead of per connection.
        The listening socket is non-blocking, so an empty queue ends the batch."""
        for _ in range(ACCEPT_BATCH):
            try:
                request, client_address = self.get_request()
            except OSError as exc:  # none waiting (or the peer left before accept): back to the loop
                if exc.errno in _ACCEPT_STARVED:
                    self._rest_accepting(exc)
                return
            self._take(request, client_address)

    def _take(self, request: socket.socket, client_address) -> None:
        """Serve an accepted connection (on a thread of its own: ``process_request``)."""
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise

    def answer_backlog(self) -> list[socket.socket]:
        """Once the accept loop ended for a drain: accept the connections the kernel queued
        meanwhile, each served as any (its request is answered 503 ``shutting_down``, traced, with
        ``Connection: close``), then stop listening — closing the listening socket over them would
        reset them. Connections arriving after that are refused by the kernel, as to a server that
        is not running. Returns the connections taken (:meth:`wait_served`)."""
        taken = []
        while True:
            try:
                request, client_address = self.get_request()
            except OSError:  # none left (or out of descriptors: those left are reset, as before)
                break
            taken.append(request)
            self._take(request, client_address)
        try:  # the socket itself, not this descriptor: a group's parent holds it open too
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return taken

    def wait_served(self, connections: list[socket.socket], timeout: float) -> bool:
        """Wait (bounded) until the threads of ``connections`` have ended; True if all did."""
        deadline = time.monotonic() + timeout
        with self._open_cv:
            while any(c in self._open for c in connections):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._open_cv.wait(left)
        return True

    def _rest_accepting(self, exc: OSError) -> None:
        """Out of file descriptors: the connections stay queued and the listening socket readable,
        so retrying at once would spin a core until one ends. Rest ``ACCEPT_REST_S`` (the shutdown
        waits no longer than that) and say so, once a minute."""
        if self._starved_log.due() is not None:
            log.error(
                "cannot accept connections (%s: out of file descriptors or kernel memory); they wait in "
                "the queue until one closes. Raise the open-file limit or lower STOCKYARD_MAX_CONNECTIONS; "
                "logged once a minute",
                exc.strerror or exc,
            )
        time.sleep(ACCEPT_REST_S)

    def _forget(self, request: socket.socket) -> None:
        with self._open_cv:
            self._open.discard(request)
            self._open_cv.notify_all()

    def cut_connections(self) -> None:
        """The end of a shutdown: shut every connection down, so a request still blocked writing
        to a client that stopped reading (up to the idle timeout per write) fails its write now,
        ends as ``client_disconnected`` and records its trace before the database closes."""
        with self._open_lock:
            connections = list(self._open)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _refuse_connection(self, request: socket.socket, status: int, message: str) -> None:
        """``status`` without reading the request: never blocks the accept loop (the socket is non-blocking)."""
        body = error_body(OPENAI, status, message, code="too_many_connections")
        reason = "Service Unavailable" if status == 503 else "Too Many Requests"
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            request.setblocking(False)
            request.send(head + body)
            request.recv(65536)  # what already arrived: closing over unread bytes would reset the answer away
        except OSError:
            pass
        self.shutdown_request(request)
        self.app.metrics.count("connections_refused_total")
        if self._refused_log.due() is not None:
            log.warning("connection refused (%d): %s; logged once a minute", status, message)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight (bounded); True if all finished."""
        deadline = time.monotonic() + timeout
        with self.active_cv:
            while self.active:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.active_cv.wait(left)
        return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "stockyard"
    sys_version = ""
    server: StockyardHTTPServer
    headers: Headers  # type: ignore[assignment]  # read by httphead, not email
    rfile: io.BufferedReader  # peek, readline, read
    raw_requestline: bytes
    _body_length: int | None = 0  # this request's Content-Length; None: chunked
    _body_done = False  # the body has been read whole
    _expect_continue = False  # the client waits for "100 Continue" before sending its body
    _linger = False  # we answered before the body came: drain briefly before closing
    _end_watch: Callable[[], None] | None = None  # ends the client watch (see watch_client)
    _held = 0  # bytes of this request's body counted in App.bodies, given back when it ends (_dispatch)
    _spooled = 0  # bytes of this request's upload counted in App.spooled, given back when it ends (_dispatch)
    _uploader: str | None = None  # whose upload it is in App.spooled: the key _key_accepted took (open mode: no one's)

    # -- stdlib hooks ----------------------------------------------------------------------
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        return

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line or head, huge headers) as JSON; the connection
        closes (after a brief drain: whatever follows the bad head is unread)."""
        self._refuse_head(code, message)

    def _refuse_head(self, code: int, message: str | None, head: Headers | None = None) -> None:
        """:meth:`send_error`, in the shape ``_dialect_of`` reads from the path and, when this
        request's head was read (a framing refusal: no Host, Content-Length with
        Transfer-Encoding), from its headers — never an earlier request's on the connection."""
        self.close_connection = self._linger = True
        text = message or reason_phrase(code, "error")
        dialect = _dialect_of(self.path, head)
        try:
            self._write(code, error_body(dialect, code, text or "bad request"), "application/json", {})
        except ClientGone:
            pass

    def parse_request(self) -> bool:
        """The request line and head (RFC 9112 §3, §5, §6), headers read by httphead, not email.

        Strict on purpose: anything a proxy in front of us could read differently (framing,
        folded or repeated headers, bare CRs, a target with control characters) is a 400.
        """
        self.command = None  # type: ignore[assignment]  # as http.server does: no request yet
        self.request_version = self.default_request_version
        self.close_connection = True
        if self.raw_requestline in (b"\r\n", b"\n"):  # RFC 9112 §2.2: one empty line before a request is ignored
            self.raw_requestline = self.rfile.readline(65537)
        line = str(self.raw_requestline, "iso-8859-1")
        self.requestline = line[:-2] if line.endswith("\r\n") else line.removesuffix("\n")
        words = self.requestline.split(" ")
        if len(words) != 3 or not _METHOD.fullmatch(words[0]) or not _TARGET.fullmatch(words[1]):
            self.send_error(400, "bad request line: expected METHOD TARGET HTTP/1.x")
            return False
        command, path, version = words
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            bad = not version.startswith("HTTP/") or version[5:6] in ("0", "1")
            self.send_error(400 if bad else 505, f"unsupported HTTP version {version[:20]!r}")
            return False
        try:
            urlsplit(path)
        except ValueError:
            self.send_error(400, "bad request target")
            return False
        self.command, self.request_version = command, version
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path
        self.close_connection = version == "HTTP/1.0"
        try:
            self.headers = read_head(self.rfile, strict=True, max_bytes=MAX_REQUEST_HEAD)
        except HeadError as exc:
            self.send_error(exc.status, str(exc))
            return False
        try:
            self._body_length = body_framing(self.headers, version)
        except HeadError as exc:
            self._refuse_head(exc.status, str(exc), self.headers)
            return False
        tokens = {t.strip().lower() for t in (self.headers.get("Connection") or "").split(",")}
        if "close" in tokens:
            self.close_connection = True
        elif "keep-alive" in tokens:
            self.close_connection = False
        self._expect_continue = version == "HTTP/1.1" and (self.headers.get("Expect") or "").lower() == "100-continue"
        return True

    def handle_one_request(self) -> None:
        """Wait (idle timeout) for a request to begin, then give it a deadline to arrive whole."""
        self.path, self._body_length, self._body_done, self._expect_continue = "", 0, False, False
        try:
            if not self.rfile.peek(1):
                self.close_connection = True
                return
        except _GONE:
            self.close_connection = True
            return
        self.server.reaper.arm(self.connection, self.server.app.settings.request_read_timeout_s)
        try:
            self._handle_request()
        except _GONE:
            self.close_connection = True
        finally:
            self.server.reaper.disarm(self.connection)

    def finish(self) -> None:
        """After an early answer, read and drop what the client still sends (briefly, boundedly)
        before the socket closes: closing over unread bytes would reset the answer away."""
        super().finish()
        if not self._linger:
            return
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline, left = time.monotonic() + LINGER_S, LINGER_BYTES
            while left > 0 and (remaining := deadline - time.monotonic()) > 0:
                self.connection.settimeout(remaining)
                data = self.connection.recv(min(65536, left))
                if not data:
                    break
                left -= len(data)
        except OSError:
            pass

    def _handle_request(self) -> None:
        """Read the request line and head, then dispatch, whatever the method.

        The stdlib looks up ``do_<METHOD>`` and answers a method without one with 501; here
        every method goes to the routes, and each route refuses what it does not serve
        (405 with Allow, or 404) — a client error, never a 5xx.
        """
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
        elif not self.raw_requestline:
            self.close_connection = True
        elif self.parse_request():
            self._dispatch()
            self.wfile.flush()

    # -- writing ---------------------------------------------------------------------------
    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date field: formatted once a second (it has a resolution of one second anyway)."""
        if timestamp is not None:
            return email.utils.formatdate(timestamp, usegmt=True)
        return http_date(int(time.time()))

    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        self._end_early()  # an answer written before the body was read ends the connection
        if self._end_watch is not None:
            self._end_watch()  # answering now: the client's next bytes are its next request
        phrase = reason_phrase(status, "Status")
        lines = [f"HTTP/1.1 {status} {phrase}", f"Date: {self.date_time_string()}", "Server: stockyard"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    def _write(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        """Head and body in one write; an answer to HEAD carries the head only, a 204 no length."""
        self._status = status
        fields = {"Content-Type": content_type, "Content-Length": str(len(body)), **headers}
        if status == 204:
            fields.pop("Content-Length")
        head = self._head(status, fields)
        try:
            self.wfile.write(head if self.command == "HEAD" or status == 204 else head + body)
        except _GONE as exc:
            self.close_connection = True
            raise ClientGone() from exc

    def _respond(self, response: Response) -> None:
        """Write a route handler's answer (a streamed one piece by piece, as it comes; to a HEAD
        its head only, the stream closed unread)."""
        if response.stream is None:
            self._write(response.status, response.body, response.content_type, response.headers)
            return
        try:
            if self.start_stream(response.status, response.headers, response.content_type):
                for piece in response.stream:
                    self.chunk(piece)
            self.end_stream()
        finally:
            response.stream.close()  # the client left: the provider's answer is closed too

    # Reply protocol used by proxy.py
    def send(
        self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None
    ) -> None:
        self._write(status, body, content_type, headers or {})

    def start_stream(self, status: int, headers: dict | None = None, content_type: str = "text/event-stream") -> bool:
        """Begin a chunked answer (its head goes with the first chunk); False when the client wants
        no body (HEAD), so a caller relaying bytes can stop reading them. HTTP/1.0 has no chunked
        framing (RFC 9112 §6.1): its answer's bytes go as they are, the close ending the body."""
        self._status = status
        fields = {"Content-Type": content_type, **(headers or {})}
        if self._unframed():
            self.close_connection = True
        else:
            fields["Transfer-Encoding"] = "chunked"
        self._stream_head = self._head(status, fields)
        return self.command != "HEAD"

    def _unframed(self) -> bool:
        """A stream to this request goes without chunked framing: an HTTP/1.0 client's."""
        return self.request_version == "HTTP/1.0"

    def chunk(self, data: bytes) -> None:
        if not data or self.command == "HEAD":  # a HEAD's answer is its head: end_stream writes it
            return
        payload = data if self._unframed() else b"%x\r\n%s\r\n" % (len(data), data)
        if self._stream_head:
            payload, self._stream_head = self._stream_head + payload, b""
        try:
            self.wfile.write(payload)
        except _GONE as exc:
            self.close_connection = True
            raise ClientGone() from exc

    def end_stream(self, last: bytes = b"") -> None:
        """The end of a stream: ``last`` (its final data, if any) and the terminator in one write
        (to a HEAD: the head alone)."""
        tail = b"%x\r\n%s\r\n0\r\n\r\n" % (len(last), last) if last else b"0\r\n\r\n"
        if self._unframed():
            tail = last
        if self.command == "HEAD":
            tail = b""
        payload, self._stream_head = self._stream_head + tail, b""
        try:
            self.wfile.write(payload)
        except _GONE as exc:
            self.close_connection = True
            raise ClientGone() from exc

    def stream_socket(self) -> socket.socket | None:
        """The client's socket for a stream relay to write the chunks to itself, once the head is
        out (``wfile`` writes straight to it: nothing is buffered in between); an unframed stream
        (HTTP/1.0) stays on this thread."""
        return None if self._stream_head or self._unframed() else self.connection

    def abort(self) -> None:
        """End a started answer that cannot be finished (a binary body broke upstream): the
        connection closes without the chunked terminator, so the client sees it incomplete."""
        self._stream_head = b""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def begun(self) -> bool:
        """True once bytes of this answer went to the client (a head and more, or an answer whole):
        from then on a failure cannot be answered, only cut (``_dispatch``). A stream's head waiting
        for its first chunk has not gone: a 500 can still take its place."""
        return bool(self._status) and not self._stream_head

    @contextmanager
    def watch_client(self, on_gone: Callable[[], None]) -> Iterator[None]:
        """While the provider works: ``on_gone()`` if this client closes its connection meanwhile.

        A client that only shut its sending side down is not gone (clientwatch.py): an HTTP/1.1
        one is asked with an interim ``100 Continue`` (a client that closed both ways answers it
        with a reset), an HTTP/1.0 one, which may get no 1xx, is watched for a reset alone.
        The watch ends as soon as the answer starts (``_head``); a client leaving after that is
        noticed by the writes that follow. Each departure seen is counted (``clients_left_waiting_total``).
        """
        metrics = self.server.app.metrics

        def gone() -> None:
            metrics.count("clients_left_waiting_total")
            on_gone()

        probe = CONTINUE if self.request_version == "HTTP/1.1" else b""
        with self.server.client_watch.watching(self.connection, gone, probe) as end:
            self._end_watch = end
            try:
                yield
            finally:
                self._end_watch = None

    # -- reading ---------------------------------------------------------------------------
    def _body_pending(self) -> bool:
        """True while body bytes the client announced have not been read."""
        return not self._body_done and self._body_length != 0

    def _end_early(self) -> None:
        """We answer before reading the body: the connection cannot carry another request."""
        if self._body_pending():
            self.close_connection = self._linger = True

    def _body_blocks(self, limit: int, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
        """The body in blocks as it arrives, up to ``limit`` bytes (413 beyond: before reading
        when Content-Length says so); ``progress(total)`` after each block. A body that stops
        arriving for the socket's idle timeout is a 408 (the SDKs send it again), not a failure of ours."""
        try:
            yield from self._arriving(limit, progress)
        except socket.timeout:
            self.close_connection = True
            raise ProxyError(
                408, f"the request body stopped arriving: nothing for {self.timeout:g} s", code="request_timeout"
            ) from None

    def _arriving(self, limit: int, progress: Callable[[int], None] | None) -> Iterator[bytes]:
        length = self._body_length
        if length is None:
            yield from self._chunked_blocks(limit, progress)
            return
        if length > limit:
            raise ProxyError(413, f"request body is {length} bytes; the limit is {limit}", code="request_too_large")
        total = 0
        while total < length:
            data = self.rfile.read(min(BODY_BLOCK, length - total))
            if not data:
                raise ClientGone()
            total += len(data)
            if progress:
                progress(total)
            yield data

    def _body(self) -> bytes:
        """Read the whole body; from then on the request is ours and the read deadline is off.

        A body larger than ``BODY_UNCOUNTED_BYTES`` is counted in ``App.bodies`` (before it is read,
        when its length is known) for the rest of the request: a body costs the server ~3 times its
        size while it is served (bytes, parse, the provider's copy), and the connection caps alone let
        a thousand 32 MiB bodies in at once."""
        limit, length = self.server.app.settings.max_body_bytes, self._body_length
        try:
            arriving = self._body_blocks(limit)  # a generator: nothing is read before the first block is asked
            if length is not None and BODY_UNCOUNTED_BYTES < length <= limit:
                self._hold(length, arriving)  # before a 100 Continue: a refused body is never invited
            self._continue()
            blocks, total = [], 0
            for block in arriving:
                blocks.append(block)
                total += len(block)
                if total > BODY_UNCOUNTED_BYTES and total > self._held:  # chunked: counted as it comes
                    self._hold(total - self._held, arriving)
            body = b"".join(blocks)
        except (ProxyError, ClientGone):
            self.close_connection = True
            raise
        self._body_done = True
        self.server.reaper.disarm(self.connection)
        return body

    def _hold(self, size: int, rest: Iterator[bytes]) -> None:
        """Count ``size`` more bytes of this request's body in ``App.bodies``, waiting up to
        ``BODY_WAIT_S`` for room; else a 503 the SDKs retry, once the ``rest`` of the body was read
        and dropped a block at a time: a client still sending it would meet a reset, not the answer
        (one that waits for a 100 Continue sends nothing: not read)."""
        try:
            self.server.app.hold_body(size, self._held)
        except ProxyError:
            if not self._expect_continue:
                for _ in rest:
                    pass
                self._body_done = True
            raise
        self._held += size

    def _continue(self) -> None:
        """Invite the body of an ``Expect: 100-continue`` request (only now: a refused one never is)."""
        if self._expect_continue and self._body_length != 0:
            self._expect_continue = False
            try:
                self.wfile.write(CONTINUE)
            except _GONE as exc:
                self.close_connection = True
                raise ClientGone() from exc

    def upload(self, limit: int | None = None) -> Upload:
        """Receive a multipart/form-data body into a spool (``multipart.receive``), up to
        STOCKYARD_MAX_UPLOAD_BYTES, or ``limit`` when that is less (an endpoint's own bound: an
        Upload's part). The caller closes the Upload (the spool goes with it)."""
        content_type = self.headers.get("Content-Type")
        return self._received(
            lambda blocks, bound, folder: multipart.receive(blocks, content_type, limit=bound, folder=folder), limit
        )

    def spool(self) -> multipart.Spooled:
        """Receive a body of any type into a spool (``multipart.spool_body``: a Gemini upload's
        bytes), as :meth:`upload` does; the caller closes it."""
        return self._received(lambda blocks, limit, folder: multipart.spool_body(blocks, limit=limit, folder=folder))

    def _spool_for(self, ctx: RequestContext) -> multipart.Spooled:
        """:meth:`spool`, its bytes counted against the share of ``ctx``'s key as it is when the body
        is read: a Gemini upload chunk sent without a key (google-genai's) is its upload's key's by
        then (``GeminiFiles._chunk``), so a key cannot hold more than its quarter through such chunks."""
        self._uploader = ctx.key_id
        return self.spool()

    def _received(self, receive: Callable[[Iterator[bytes], int, Path], _T], limit: int | None = None) -> _T:
        """The body passed to ``receive(blocks, bound, folder)`` as it arrives, up to
        STOCKYARD_MAX_UPLOAD_BYTES (or ``limit``, when less), spooled in ``uploads/`` beside the database.

        A big upload takes longer than the read deadline: each ``UPLOAD_PROGRESS_BYTES``
        that arrive grant another deadline, so only a sender slower than that per deadline
        (a slowloris) is cut off — and never past STOCKYARD_UPLOAD_TIMEOUT from now, so a
        steady trickle cannot hold the connection (and its thread) for hours.
        """
        settings = self.server.app.settings
        self._continue()
        step = [UPLOAD_PROGRESS_BYTES]
        until = time.monotonic() + settings.upload_timeout_s

        def progress(total: int) -> None:
            if total >= step[0]:
                step[0] = total + UPLOAD_PROGRESS_BYTES
                left = until - time.monotonic()
                self.server.reaper.arm(self.connection, min(settings.request_read_timeout_s, left))

        bound = settings.max_upload_bytes if limit is None else min(limit, settings.max_upload_bytes)
        try:
            blocks = self._spool_held(self._body_blocks(bound, progress))
            received = receive(blocks, bound, multipart.spool_folder(settings.db_path))
        except ProxyError as exc:
            if exc.status == 413:
                setting = bound == settings.max_upload_bytes
                exc.message = multipart.too_large(bound, "STOCKYARD_MAX_UPLOAD_BYTES" if setting else "").message
            self.close_connection = True  # the rest of the body was not read
            raise
        except ClientGone:
            self.close_connection = True
            raise
        self._body_done = True
        self.server.reaper.disarm(self.connection)
        return received

    def _spool_held(self, blocks: Iterator[bytes]) -> Iterator[bytes]:
        """``blocks`` each counted in ``App.spooled`` before it goes on to the spool (``App.hold_spool``:
        the uploads on disk at once are bounded); a refused one's rest is read and dropped, so its
        client reads the 503, not a reset."""
        app = self.server.app
        for block in blocks:
            try:
                app.hold_spool(len(block), self._spooled, self._uploader)
            except ProxyError:
                for _ in blocks:
                    pass
                self._body_done = True
                raise
            self._spooled += len(block)
            yield block

    def _chunked_blocks(self, limit: int, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
        """A chunked body (RFC 9112 §7.1), strictly (``chunked.Dechunker(strict=True)``: hex sizes,
        CRLF after each chunk, the limit enforced on the running total before a chunk is read),
        then a bounded trailer section read as strictly as a head. Reads never pass the end of
        the body: the next request on the connection may follow it."""
        framing = Dechunker(strict=True, limit=limit, max_line=CHUNK_LINE_MAX)
        rfile, total = self.rfile, 0
        while not framing.ended:
            want = framing.want
            data = rfile.read(min(BODY_BLOCK, want)) if want else rfile.readline(CHUNK_LINE_MAX + 1)
            if not data:
                raise ClientGone()  # the stream ended inside the body
            if piece := framing.feed(data):
                total += len(piece)
                if progress:
                    progress(total)
                yield piece
            if (broken := framing.broken) is not None:
                if isinstance(broken, ChunkError) and broken.status == 413:
                    raise ProxyError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
                raise ProxyError(400, f"malformed chunked request body: {broken}", code="bad_chunked_body")
        try:
            read_head(self.rfile, strict=True, max_bytes=MAX_REQUEST_HEAD)  # trailers: read, dropped
        except HeadError as exc:
            raise ProxyError(
                exc.status, f"malformed chunked request body: trailer: {exc}", code="bad_chunked_body"
            ) from None

    # -- dispatch --------------------------------------------------------------------------
    def _dispatch(self) -> None:
        server = self.server
        with server.active_cv:
            server.active += 1
        started = time.perf_counter()
        self._status = 0
        self._stream_head = b""
        self._model: str | None = None
        self._trace_note = ""
        path = urlsplit(self.path).path
        dialect = _dialect_of(path, self.headers)
        try:
            self._route(path, dialect)
        except REFUSALS as caught:
            if self.begun():  # an answer now would land inside the one begun: cut it, as any failure
                self._cut(path, caught)
                return
            exc = refusal_of(caught)
            self._end_early()
            try:
                self._write(exc.status, exc.body(dialect), "application/json", exc.headers)
            except ClientGone:
                pass
        except ClientGone:
            pass
        except Exception as exc:
            if self.begun():  # a 500 now would land inside the answer: cut it, so no client takes it whole
                self._cut(path, exc)
                return
            self._end_early()
            unavailable = database_refusal(exc)  # a held, lost or full database: its 503, not a bug's 500
            try:
                if unavailable is not None:
                    said = server.app.path.scrub.text(described(exc))
                    log.warning("%s %s: 503, the database failed (%s)", self.command, printable(path, 200), said)
                    self._write(503, unavailable.body(dialect), "application/json", unavailable.headers)
                    return
                log.exception("unexpected error on %s %s", self.command, path)
                self.close_connection = True
                self._write(500, error_body(dialect, 500, "internal error; see the server log"), "application/json", {})
            except ClientGone:
                pass
        finally:
            if self._held:
                server.app.bodies.give(self._held)
                self._held = 0
            if self._spooled:
                server.app.spooled.give(self._spooled, self._uploader)
                self._spooled = 0
            self._uploader = None
            if server.app.settings.log_requests and path not in ("/healthz", "/readyz", "/metrics"):
                access(
                    f"{self.command} {printable(path, 200)} {self._status} {printable(self._model or '-', 200)} "
                    f"{(time.perf_counter() - started) * 1000:.1f}ms{self._trace_note}"
                )
            with server.active_cv:
                server.active -= 1
                server.active_cv.notify_all()

    def _cut(self, path: str, exc: Exception) -> None:
        """A failure nobody planned for once the answer began (a stream's reader failing, the database
        refusing a write a relay makes): the connection closes without the chunked end (or short of
        its Content-Length), so every client sees a broken transfer; one line, no traceback, no body
        text (the message's first line, scrubbed); the route's wrapper traced it (``proxy.unexpected``)."""
        said = self.server.app.path.scrub.text(described(exc))
        log.error(
            "%s %s failed after its answer had begun; the connection is cut (%s)%s",
            self.command,
            printable(path, 200),
            printable(said, 300),
            self._trace_note,
        )
        self.abort()

    def _client_ip(self) -> str:
        """The client's address: the peer's, or the one a trusted proxy names (STOCKYARD_TRUSTED_PROXIES)."""
        trusted = self.server.app.settings.trusted_proxies
        if not trusted:
            return self.client_address[0]
        return client_address(self.client_address[0], self.headers.get_all("X-Forwarded-For"), trusted)

    def _headers_dict(self) -> dict[str, str]:
        return self.headers.as_dict()

    def _route_method(self) -> str:
        """The method the routes see: HEAD is the GET (RFC 9110 §9.3.2: its status and head, the
        handler run once, ``_write`` and the stream methods leaving the body out); a route that
        takes no GET refuses it with a 405 naming what it takes."""
        return "GET" if self.command == "HEAD" else self.command

    def _route(self, path: str, dialect: str) -> None:
        """Find the handler; refusals that need no body (host, origin, method, key, no route)
        come before a byte of it is read."""
        app = self.server.app
        method = self._route_method()
        if not self._body_pending():  # the request has arrived whole: its read deadline is met
            self.server.reaper.disarm(self.connection)  # (a slow provider's answer is not a slow client)
        if path not in OPEN_ROUTES:
            self._check_host_and_origin()
        query = urlsplit(self.path).query
        if path == realtime.PATH:
            if not self._asks_websocket():
                raise ProxyError(
                    426, "the Realtime API is a WebSocket: open ws://…/v1/realtime?model=…", code="websocket_required"
                )
            self._realtime(query)
            return
        if path in realtime.UNMETERED:
            raise realtime.unmetered_refusal(path)
        if path in PROXY_ROUTES:
            if method != "POST":
                if path == SOCKET_PATH and self._asks_websocket():
                    self._websocket(query)
                    return
                self._refuse_websocket()
                check_method(self.command, ["POST"])
            endpoint, dialect = PROXY_ROUTES[path]
            self._proxy(RequestContext(endpoint, dialect, self._client_ip(), self._headers_dict(), query))
            return
        native = gemini_api.action_target(method, path, self._headers_dict(), query)  # /v1beta/models/{model}:{method}
        if native is not None:
            if method != "POST":
                check_method(self.command, ["POST"])
            headers = gemini_api.key_headers(self._headers_dict(), query)
            ctx = RequestContext(native.endpoint, GEMINI, self._client_ip(), headers, native=native.call)
            ctx.model, ctx.stream = native.model, native.call.action == "streamGenerateContent"
            self._proxy(ctx)
            return
        if gemini_cache.route_of(path) is not None:  # /v1beta/cachedContents[/{id}], owned per key
            headers = gemini_api.key_headers(self._headers_dict(), query)
            ctx = RequestContext(gemini_cache.endpoint_name(method, path), GEMINI, self._client_ip(), headers)
            if self._key_accepted(ctx):  # before the body, like the other Gemini-native routes
                req = Request(method, self.path, ctx.headers, self._body, ctx.client_addr)
                self._handled(ctx, app.cached_contents.handle, req)
            return
        if gemini_files.route_of(path, self._headers_dict(), query) is not None:  # the Files API, owned per key
            headers = gemini_api.key_headers(self._headers_dict(), query)
            ctx = RequestContext(gemini_files.endpoint_name(method, path, query), GEMINI, self._client_ip(), headers)
            # a chunk without a key is google-genai's (it sends none): the upload URL's token is the credential
            keyless_chunk = gemini_files.continues_upload(path, query) and presented_key(headers) is None
            if self._key_accepted(ctx, keyless=keyless_chunk):  # before the body, like the other Gemini-native routes
                ctx.state[message_batches.BASE_STATE] = self._public_base()
                spool = functools.partial(self._spool_for, ctx)  # a keyless chunk's: its upload's key's
                req = Request(method, self.path, ctx.headers, self._body, ctx.client_addr, spool=spool)
                self._handled(ctx, app.gemini_files.handle, req)
            return
        if gemini_api.lists_models(path, self._headers_dict(), query):  # GET /v1beta/models[/{model}]
            google = functools.partial(gemini_api.key_headers, self._headers_dict(), query)  # may 401: inside
            self._model_list(GEMINI, lambda: gemini_api.models(app, path, query, app.gate.client_key(google())))
            return
        if anthropic_models.lists_models(path, self._headers_dict()):  # Anthropic's SDKs: GET /v1/models[/{id}]
            headers = self._headers_dict()
            self._model_list(ANTHROPIC, lambda: anthropic_models.models(app, path, query, app.gate.client_key(headers)))
            return
        if message_batches.route_of(path) is not None:  # /v1/messages/batches…
            ctx = RequestContext(
                message_batches.endpoint_name(method, path), ANTHROPIC, self._client_ip(), self._headers_dict()
            )
            if self._key_accepted(ctx):  # before the body, like the proxy routes
                ctx.state[message_batches.BASE_STATE] = self._public_base()
                req = Request(method, self.path, ctx.headers, self._body, ctx.client_addr)
                self._handled(ctx, app.message_batches.handle, req)
            return
        if anthropic_files.route_of(path) is not None and anthropic_files.is_anthropic(self._headers_dict()):
            ctx = RequestContext(  # an Anthropic SDK's /v1/files… (its anthropic-version): Anthropic's files
                anthropic_files.endpoint_name(method, path), ANTHROPIC, self._client_ip(), self._headers_dict()
            )
            if self._key_accepted(ctx):  # before the body, like the proxy routes
                req = Request(method, self.path, ctx.headers, self._body, ctx.client_addr, self.upload)
                self._handled(ctx, app.anthropic_files.handle, req)
            return
        for api, calls in (  # OpenAI's provider objects, owned per key: /v1/files…, /v1/batches…,
            (files_api, app.files),  # /v1/containers[/{id}[/files[/{file_id}[/content]]]],
            (containers_api, app.containers),  # /v1/vector_stores[/{id}[/search|/files…|/file_batches…]]
            (vector_stores_api, app.vector_stores),
            (videos_api, app.videos),  # /v1/videos[/{id}[/content|/remix]]
            (uploads_api, app.uploads),  # /v1/uploads[/{id}/parts|/complete|/cancel]
        ):
            if api.route_of(path) is not None:
                ctx = RequestContext(api.endpoint_name(method, path), OPENAI, self._client_ip(), self._headers_dict())
                if self._key_accepted(ctx):  # before the body, like the proxy routes
                    req = Request(method, self.path, ctx.headers, self._body, ctx.client_addr, self.upload)
                    self._handled(ctx, calls.handle, req)
                return
        if RESPONSE_PATH.match(path):  # GET/DELETE /v1/responses/{id}, …/cancel, …/input_items
            ctx = RequestContext(stored_endpoint(method, path), RESPONSES, self._client_ip(), self._headers_dict())
            if self._key_accepted(ctx):  # before the body, like the proxy routes
                self._stored_response(ctx, app.conversations.answer)
            return
        if CONVERSATION_PATH.match(path):  # /v1/conversations[/{id}[/items[/{item_id}]]]
            ctx = RequestContext(conversation_endpoint(method, path), OPENAI, self._client_ip(), self._headers_dict())
            if self._key_accepted(ctx):
                kept = functools.partial(redact.screen, app.path.chain(), ctx)  # items redacted as a turn's input
                self._stored_response(ctx, lambda req, key_id: app.conversations.threads.answer(req, key_id, kept))
            return
        self._refuse_if_draining()  # the routes below are not traced: the drain's 503 is not either
        fixed = FIXED_ROUTES.get(path)
        if fixed is not None:
            methods, fn = fixed
            if method not in methods:
                check_method(self.command, methods)
            # These take no body: answered without reading one (a body that was sent ends the
            # connection), so a stalled 32 MiB body cannot hold memory, nor delay a key check.
            self._end_early()
            self._respond(fn(app, Request(method, self.path, self._headers_dict(), b"", self._client_ip())))
            return
        for prefix, fn in self.server.prefix_routes:
            if path.startswith(prefix):
                req = Request(method, self.path, self._headers_dict(), self._body, self._client_ip(), self.upload)
                self._respond(fn(app, req))
                return
        raise unrouted(method, path, self._headers_dict(), query)

    def _handled(
        self, ctx: RequestContext, handle: Callable[[Handler, RequestContext, Request], None], req: Request
    ) -> None:
        """A provider objects route's ``handle`` (which traces it); the access log — and the line of an
        answer cut midway — names its trace even when it failed."""
        try:
            handle(self, ctx, req)
        finally:
            self._trace_note = trace_note(ctx)

    def _proxy(self, ctx: RequestContext) -> None:
        """A proxied request: the key from the headers, then the body, then the request path."""
        if not self._key_accepted(ctx):
            return
        content_type = self.headers.get("Content-Type")
        if ctx.endpoint in MULTIPART_ENDPOINTS and not media.is_json_edit(ctx.endpoint, content_type):
            ctx.upload = self.upload()  # spooled; the trace keeps its metadata, never the file bytes
            ctx.raw = json.dumps(ctx.upload.metadata(), ensure_ascii=False).encode()
        else:
            ctx.raw = self._body()
        try:
            proxy.handle(self.server.app.path, self, ctx)
        finally:
            if ctx.upload is not None:
                ctx.upload.close()
            done = ctx.attempt
            self._model = f"{done.provider.name}/{done.upstream_model}" if done.provider else ctx.model
            self._trace_note = trace_note(ctx)

    def _public_base(self) -> str:
        """Where the client reached this server, as ``scheme://host[/prefix]`` (the Host was
        checked): a URL Stockyard hands out (a message batch's ``results_url``). https and a path
        prefix only when a trusted proxy (STOCKYARD_TRUSTED_PROXIES) says so in X-Forwarded-Proto
        and X-Forwarded-Prefix (Stockyard served under ``https://example.com/llm/``)."""
        target = urlsplit(self.path)
        host = target.netloc if target.scheme else (self.headers.get("Host") or "")
        trusted = self.server.app.settings.trusted_proxies
        believed = bool(trusted) and is_trusted(self.client_address[0], trusted)
        forwarded = (self.headers.get("X-Forwarded-Proto") or "").split(",")[0].strip().lower()
        secure = believed and forwarded == "https"
        prefix = forwarded_prefix(self.headers.get("X-Forwarded-Prefix")) if believed else ""
        if not host:  # HTTP/1.0 may send none: the address and port the client reached
            addr, port = self.connection.getsockname()[:2]
            host = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
        return f"{'https' if secure else 'http'}://{host}{prefix}"

    def _model_list(self, dialect: str, answer: Callable[[], Response]) -> None:
        """A model list or model in the shape the request's headers or path chose (Google's,
        Anthropic's), its errors — the method, the key (which ``answer`` checks first), the
        query — in that shape too, on /v1/models as well."""
        try:
            self._refuse_if_draining()
            if self._route_method() != "GET":
                check_method(self.command, ["GET"])
            self._respond(answer())
        except ProxyError as exc:
            if self.begun():
                raise  # too late to answer: the dispatch cuts it
            self._end_early()
            self._write(exc.status, exc.body(dialect), "application/json", exc.headers)

    def _check_host_and_origin(self) -> None:
        """Browsers: a Host this server does not answer for (DNS rebinding) is a 421, an Origin
        that is neither ours nor STOCKYARD_CORS_ORIGIN a 403 (a web page spending our keys)."""
        settings = self.server.app.settings
        target = urlsplit(self.path)
        authority = target.netloc if target.scheme else self.headers.get("Host")  # absolute-form wins
        if not host_allowed(authority, settings.host, settings.public_hosts):
            shown = printable(authority or "", 100)
            raise ProxyError(
                421,
                f"this server does not answer for the host {shown!r}: only loopback names "
                "and addresses, its listen address, and the names in STOCKYARD_PUBLIC_HOSTS; "
                "to serve this name, add it to STOCKYARD_PUBLIC_HOSTS",
                code="host_not_allowed",
            )
        origin = self.headers.get("Origin")
        if not origin_allowed(origin, authority, settings.cors_origin):
            raise ProxyError(
                403,
                f"requests from the web origin {printable(origin or '', 100)!r} are refused: "
                "only this server's own pages and STOCKYARD_CORS_ORIGIN may call it "
                "from a browser",
                code="origin_not_allowed",
            )

    def _stored_response(self, ctx: RequestContext, answer: Callable[[Request, str | None], Response]) -> None:
        """A call on a response the key made (``Conversations.answer``) or on its conversations
        (``ConversationStore.answer``): one of the key's requests per minute, as files and batches
        are (a stored response's may reach the provider under the shared key), traced at cost 0."""
        app = self.server.app
        try:
            admit_call(app.path.chain(), ctx)
            req = Request(self._route_method(), self.path, ctx.headers, self._body, ctx.client_addr, self.upload)
            response = answer(req, ctx.key_id)
            ctx.attempt.status, ctx.attempt.cost_uc, ctx.attempt.cost_status = response.status, 0, "exact"
            ctx.complete = response.status < 400
            response.headers["x-stockyard-trace-id"] = ctx.trace_id
            self._respond(response)
        except ProxyError as exc:
            proxy.refused(self, ctx, exc)
            raise  # answered (or, once the answer began, cut) by the dispatch, in the Responses API's shape
        except ClientGone:
            ctx.attempt.outcome = "client_disconnected"
            raise
        except Exception as exc:
            proxy.unexpected(self, ctx, exc)
            raise  # answered (or cut) by the dispatch
        finally:
            app.tracer.finish(ctx)
            self._trace_note = trace_note(ctx)

    def _key_accepted(self, ctx: RequestContext, keyless: bool = False) -> bool:
        """The client key, from the headers alone, before the body is read (when keys are required).

        The model allow-list waits for the body (``proxy.handle`` checks again). A refusal is
        answered at once and traced as metadata only — at most a few a second per address,
        the rest only counted in /metrics — so keyless senders cost neither reads nor disk.
        ``keyless``: a request whose credential is checked later, not a key (a Gemini upload chunk
        google-genai sends with the upload URL's token alone); refused here only by the drain.
        """
        app = self.server.app
        try:
            if not keyless:
                app.gate.authenticate(ctx)
            self._refuse_if_draining()  # after the key: the drain's 503 is traced as the key's
            self._uploader = ctx.key_id  # an upload's room is counted by key (open mode: one user, the bound alone)
            return True
        except ProxyError as exc:
            proxy.refused(self, ctx, exc)  # rejected (a 4xx), or an error: the drain's 503
            ctx.session_id = codex_session(ctx.headers)  # its span's conversation, from a header (the body is unread)
            self._end_early()
            proxy.send_error(app.path, self, ctx, exc)
        app.tracer.finish(ctx)  # at most a few a second per address (tracing.Tracer)
        self._trace_note = trace_note(ctx)
        return False

    def _refuse_if_draining(self) -> None:
        """A request that arrives during a drain (on a kept-alive connection, or one queued when the
        stop came: ``answer_backlog``) is answered 503, and its connection closed. The API routes
        check it in ``_key_accepted``, which traces it."""
        if self.server.draining:
            self.close_connection = True
            raise ProxyError(503, "server is shutting down", code="shutting_down")

    def _asks_websocket(self) -> bool:
        return "websocket" in (self.headers.get("Upgrade") or "").lower()

    def _websocket(self, query: str) -> None:
        """The Responses API's WebSocket mode (``responses_socket``): the handshake checked and its key
        authenticated before the upgrade (a refusal is the HTTP answer in OpenAI's shape, never a
        socket), then the session on this thread until the connection ends."""
        ctx = self._websocket_handshake("responses", RESPONSES, self._headers_dict(), query)
        if ctx is None:  # 401 (traced) in OpenAI's shape: no socket for a keyless client
            return
        server = self.server
        with self._websocket_held(ctx):
            self._switch_protocols(ctx)
            session = responses_socket.Session(
                server.app, self.connection, self._buffered_bytes(), ctx, lambda: server.draining
            )
            session.run()

    def _realtime(self, query: str) -> None:
        """OpenAI's Realtime API (``realtime``): the handshake and its key checked as the Responses
        WebSocket's (a browser's key may come as a subprotocol), then the model, the key's limits and
        budget and the provider's own WebSocket (``realtime.admit``; a refusal is traced and answered
        over HTTP), then the relay on this thread until the session ends."""
        headers = self._headers_dict()
        protocol = realtime.SUBPROTOCOL if realtime.key_from_subprotocol(headers) else None
        ctx = self._websocket_handshake(realtime.ENDPOINT, RESPONSES, headers, query)
        if ctx is None:
            return
        server = self.server
        app = server.app
        with self._websocket_held(ctx, fallback=None):
            try:
                upstream = realtime.admit(app, ctx)
            except ProxyError as exc:
                proxy.refused(self, ctx, exc)
                proxy.send_error(app.path, self, ctx, exc)
                app.tracer.finish(ctx)
                self._trace_note = trace_note(ctx)
                return
            try:
                self._switch_protocols(ctx, protocol)
            except BaseException:
                upstream.sock.close()
                raise
            relay = realtime.Relay(app, self.connection, self._buffered_bytes(), ctx, upstream, lambda: server.draining)
            relay.run()

    def _websocket_handshake(self, endpoint: str, dialect: str, headers: dict, query: str) -> RequestContext | None:
        """The handshake checked (a 400 or 426 when it is not one this server takes) and its key
        authenticated (``_key_accepted``: a refusal answered and traced; None then)."""
        # Accepted, the socket is the session's; refused, the connection ends with the answer: frames a
        # client sent right behind its handshake are never read as HTTP requests.
        self.close_connection = True
        problem = websocket.handshake_problem(self.command, self.request_version, headers)
        if problem is None and self._body_pending():
            problem = "a WebSocket handshake carries no body"
        if problem is not None:
            raise ProxyError(400, problem, code="invalid_websocket_handshake")
        if headers.get("sec-websocket-version", "").strip() != websocket.VERSION:
            raise ProxyError(
                426,
                f"only WebSocket version {websocket.VERSION} is served",
                code="unsupported_websocket_version",
                headers={"Sec-WebSocket-Version": websocket.VERSION},
            )
        ctx = RequestContext(endpoint, dialect, self._client_ip(), headers, query)
        return ctx if self._key_accepted(ctx) else None

    @contextmanager
    def _websocket_held(self, ctx: RequestContext, fallback: str | None = "POST /v1/responses") -> Iterator[None]:
        """One of ``STOCKYARD_WEBSOCKET_MAX_CONNECTIONS`` held while the socket is open (beyond: a 426
        naming the HTTP ``fallback``, or, with none, the cap's own 503 or 429)."""
        server = self.server
        holder = ctx.key_id if ctx.key is not None else None  # open mode: held to the whole only
        refused = server.app.websockets.take(holder)
        if refused is not None:
            self._refuse_websocket_at_cap(refused, fallback)
        try:
            yield
        finally:
            server.app.websockets.give(holder)

    def _switch_protocols(self, ctx: RequestContext, protocol: str | None = None) -> None:
        """The 101 that makes the connection a WebSocket (naming the subprotocol agreed, if any)."""
        accept = websocket.accept_key(ctx.headers["sec-websocket-key"])
        agreed = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
        head = (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n{agreed}Server: stockyard\r\n\r\n"
        )
        try:
            self.wfile.write(head.encode("ascii"))
        except _GONE as exc:
            raise ClientGone() from exc
        self._status = 101
        self._trace_note = " websocket"

    def _refuse_websocket_at_cap(self, refused: int, fallback: str | None = "POST /v1/responses") -> NoReturn:
        """The whole cap (``refused`` 503) or the key's share of it (429) is held: a 426, after which
        Codex goes on over HTTP ``POST /v1/responses`` at once (after a 503 or a 429 it retries the
        socket first). No Upgrade is offered: the client is to stay on HTTP, which has its own limits.
        With no HTTP ``fallback`` (the Realtime API) the 503 or 429 itself, to try again later."""
        server = self.server
        server.app.metrics.count("websocket_connections_refused_total")
        caps = server.app.websockets
        held = (
            f"the server's {caps.total} WebSocket connections are open (STOCKYARD_WEBSOCKET_MAX_CONNECTIONS, "
            "at most half of STOCKYARD_MAX_CONNECTIONS: none when that is 1)"
            if refused == 503
            else f"this key has its share of WebSocket connections open ({caps.per_sender} of {caps.total})"
        )
        if fallback is None:
            again = {"Retry-After": "1"}
            raise ProxyError(refused, f"{held}; try again shortly", code="too_many_websockets", headers=again)
        raise ProxyError(426, f"{held}; go on over HTTP ({fallback})", code="too_many_websockets")

    def _buffered_bytes(self) -> bytes:
        """What ``rfile`` read past the handshake's head (a client that did not wait for the 101),
        taken without blocking."""
        timeout = self.connection.gettimeout()
        try:
            self.connection.settimeout(0)
            return self.rfile.read1(65536) or b""
        except OSError:
            return b""
        finally:
            self.connection.settimeout(timeout)

    def _refuse_websocket(self) -> None:
        """A WebSocket handshake on any path but ``/v1/responses`` (a proxy route's GET) is a 426, the
        refusal after which Codex goes straight to HTTP; after a 405 it retries five times first."""
        if self._asks_websocket():
            self.close_connection = True  # as for every handshake: no frame behind it is read as HTTP
            raise ProxyError(
                426,
                f"WebSocket is not served on {urlsplit(self.path).path}; send the request as HTTP POST "
                "(streams come as server-sent events)",
                code="websocket_not_supported",
            )


@functools.lru_cache(maxsize=2)
def http_date(second: int) -> str:
    """An HTTP Date value for a whole second (cached: every answer in that second shares it)."""
    return email.utils.formatdate(second, usegmt=True)


@functools.lru_cache(maxsize=128)
def reason_phrase(status: int, default: str) -> str:
    """The standard reason phrase of ``status`` (``default`` for a code HTTPStatus does not name)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return default


def _dialect_of(target: str, headers: Container[str] | None = None) -> str:
    """The error shape for a request target: Anthropic's under /v1/messages, and under /v1/files
    and /v1/models for a call an Anthropic SDK made (its ``headers``, read as those routes read
    them: ``anthropic_files.is_anthropic``, ``anthropic_models.lists_models``), Google's on the
    Gemini-native routes, else OpenAI's."""
    if target.startswith("/v1/messages"):
        return ANTHROPIC
    try:
        path = urlsplit(target).path
    except ValueError:
        return OPENAI
    if headers is not None and (
        (anthropic_files.under_files(path) and anthropic_files.is_anthropic(headers))
        or anthropic_models.lists_models(path, headers)
    ):
        return ANTHROPIC
    return GEMINI if gemini_api.is_native(path) else OPENAI


def unrouted(method: str, path: str, headers: dict[str, str], query: str) -> ProxyError:
    """The 404 for a path Stockyard does not serve (README: "Not served"), in the shape of the SDK
    that asked, whatever the path: an Anthropic SDK's (``anthropic-version``) on ``/v1/skills``
    must raise its own NotFoundError, a Google client's (its key as x-goog-api-key or ``?key=``)
    on ``/v1/tunedModels`` Google's; else the path's (``_dialect_of``)."""
    if anthropic_files.is_anthropic(headers):
        shape: str | None = ANTHROPIC
    elif gemini_api.google_client(headers, query):
        shape = GEMINI
    else:
        shape = None
    return ProxyError(404, f"no route for {method} {path}", code="not_found", dialect=shape)


# -- operational routes ---------------------------------------------------------------------------


def healthz(app: App, req: Request) -> Response:
    return json_response({"status": "ok"})


def readyz(app: App, req: Request) -> Response:
    """Ready when the database takes writes (``App.database_problem``: one probe a second at
    most, within 5 s) and the configuration watcher has completed a pass in the last 10 s."""
    w = app.writer
    state = {"queue_depth": w.depth, "records_dropped": w.stats.dropped}
    problem = app.database_problem()
    if problem is not None:
        return json_response({"status": "unavailable", "database": problem, **state}, 503)
    problem = app.watcher_problem()
    if problem is not None:
        return json_response({"status": "unavailable", "database": "writable", "config_watcher": problem, **state}, 503)
    return json_response({"status": "ready", "database": "writable", **state})


def models(app: App, req: Request) -> Response:
    from .models import answer

    return json_response(answer(app, req.headers))


def metrics(app: App, req: Request) -> Response:
    """The Prometheus text; with ``STOCKYARD_METRICS_KEY`` set, only for ``Authorization: Bearer``
    that key (the busiest keys' names and costs are in it)."""
    from .metrics import render

    wanted = app.settings.metrics_key
    if wanted is not None and not hmac.compare_digest((bearer_token(req.headers) or "").encode(), wanted.encode()):
        message = "missing or wrong metrics key: send Authorization: Bearer $STOCKYARD_METRICS_KEY"
        body = error_body(OPENAI, 401, message, code="invalid_metrics_key")
        return Response(401, body, "application/json", {"www-authenticate": "Bearer"})
    worker = {} if app.worker is None else {"x-stockyard-worker": str(app.worker)}  # who answered (a group's)
    return Response(200, render(app).encode(), "text/plain; version=0.0.4; charset=utf-8", worker)


FIXED_ROUTES: dict[str, tuple[list[str], RouteFn]] = {
    "/healthz": (["GET"], healthz),
    "/readyz": (["GET"], readyz),
    "/metrics": (["GET"], metrics),
    "/v1/models": (["GET"], models),
    "/": (["GET"], console.redirect),
    "/ui": (["GET"], console.redirect),
}


def make_server(app: App, sock: socket.socket | None = None) -> StockyardHTTPServer:
    """Bind the server (or serve ``sock``, bound by a group's parent); the handler class carries
    this server's idle timeout."""
    from . import api

    raise_file_limit()  # before the connection cap is sized from it
    handler = type("StockyardHandler", (Handler,), {"timeout": app.settings.idle_timeout_s})
    server = StockyardHTTPServer(app, handler, sock)
    from .models import MODEL_PREFIX, retrieve

    server.prefix_routes.append((MODEL_PREFIX, retrieve))
    server.prefix_routes.append(("/api/", api.handle))
    server.prefix_routes.append((console.PREFIX, console.handle))
    return server

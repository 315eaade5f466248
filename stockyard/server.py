"""The HTTP server: a hardened stdlib ThreadingHTTPServer, routes, limits, error shapes.

Measured on this kind of machine (DESIGN.md): a deep accept backlog, Nagle off, and
status line + headers + body in ONE write per response (otherwise ~40 ms stalls on
keep-alive). Errors never leave as HTML or tracebacks: every refusal is JSON in the
dialect of the route.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from . import proxy
from . import ui as console
from .app import App
from .clientwatch import ClientWatch
from .errors import ANTHROPIC, OPENAI, ClientGone, ProxyError, error_body
from .httphead import HeadError, read_head
from .logbuffer import access
from .pipeline import RequestContext

log = logging.getLogger("stockyard.server")

PROXY_ROUTES: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("chat", OPENAI),
    "/v1/completions": ("completions", OPENAI),
    "/v1/embeddings": ("embeddings", OPENAI),
    "/v1/messages": ("messages", ANTHROPIC),
    "/v1/messages/count_tokens": ("count_tokens", ANTHROPIC),
}
READYZ_TIMEOUT_S = 5.0
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, OSError)


def printable(text: str, limit: int = 200) -> str:
    """Client-chosen text made safe for a log line: no control characters (no forged lines)."""
    text = text[:limit]
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


class Request:
    """What a route handler gets: method, path, query, headers (lower-case), body bytes."""

    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes, client: str) -> None:
        parts = urlsplit(target)
        self.method = method
        self.path = parts.path
        self.query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self.headers = headers
        self.body = body
        self.client = client

    def json(self) -> dict:
        """The body as a JSON object, or a 400."""
        try:
            value = json.loads(self.body or b"{}")
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ProxyError(400, "request body is not valid JSON", code="invalid_json") from None
        if not isinstance(value, dict):
            raise ProxyError(400, "request body must be a JSON object", code="invalid_body")
        return value


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


class StockyardHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, app: App, handler: type) -> None:
        self.app = app
        self.draining = False
        self.active = 0
        self.active_cv = threading.Condition()
        # Extra routes (admin API, console) registered by other modules: (method, prefix) → fn
        self.routes: dict[tuple[str, str], Callable] = {}
        self.prefix_routes: list[tuple[str, Callable]] = []
        self.reaper = Reaper()
        self.client_watch = ClientWatch()
        super().__init__((app.settings.host, app.settings.port), handler)

    def handle_error(self, request, client_address) -> None:  # noqa: D401 - stdlib hook
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)

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

    # -- stdlib hooks ----------------------------------------------------------------------
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        return

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, huge headers, unknown method) as JSON."""
        self.close_connection = True
        text = message or (HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "error")
        try:
            self._write(code, error_body(OPENAI, code, text or "bad request"), "application/json", {})
        except ClientGone:
            pass

    def parse_request(self) -> bool:
        """The request line and head (http.server's rules, headers read by httphead, not email)."""
        self.command = None
        self.request_version = self.default_request_version
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3:
            self.send_error(400, "bad request line: expected METHOD PATH HTTP/1.x")
            return False
        command, path, version = words
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            bad = not version.startswith("HTTP/") or version[5:6] in ("0", "1")
            self.send_error(400 if bad else 505, f"unsupported HTTP version {version[:20]!r}")
            return False
        self.command, self.request_version = command, version
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path
        self.close_connection = version == "HTTP/1.0"
        try:
            self.headers = read_head(self.rfile)
        except HeadError as exc:
            self.send_error(exc.status, str(exc))
            return False
        connection = (self.headers.get("Connection") or "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        expect = (self.headers.get("Expect") or "").lower()
        if expect == "100-continue" and version == "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def handle_one_request(self) -> None:
        """Wait (idle timeout) for a request to begin, then give it a deadline to arrive whole."""
        try:
            if not self.rfile.peek(1):
                self.close_connection = True
                return
        except _GONE:
            self.close_connection = True
            return
        self.server.reaper.arm(self.connection, self.server.app.settings.request_read_timeout_s)
        try:
            super().handle_one_request()
        except _GONE:
            self.close_connection = True
        finally:
            self.server.reaper.disarm(self.connection)

    def __getattr__(self, name: str):
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    # -- writing ---------------------------------------------------------------------------
    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Status"
        lines = [f"HTTP/1.1 {status} {phrase}", f"Date: {self.date_time_string()}", "Server: stockyard"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    def _write(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        self._status = status
        head = self._head(status, {"Content-Type": content_type, "Content-Length": str(len(body)), **headers})
        try:
            self.wfile.write(head + body)
        except _GONE as exc:
            self.close_connection = True
            raise ClientGone() from exc

    # Reply protocol used by proxy.py
    def send(self, status: int, body: bytes, content_type: str = "application/json",
             headers: dict | None = None) -> None:
        self._write(status, body, content_type, headers or {})

    def start_stream(self, status: int, headers: dict | None = None,
                     content_type: str = "text/event-stream") -> None:
        self._status = status
        head = self._head(status, {"Content-Type": content_type, "Transfer-Encoding": "chunked",
                                   **(headers or {})})
        self._stream_head = head

    def chunk(self, data: bytes) -> None:
        if not data:
            return
        payload = b"%x\r\n%s\r\n" % (len(data), data)
        if self._stream_head:
            payload, self._stream_head = self._stream_head + payload, b""
        try:
            self.wfile.write(payload)
        except _GONE as exc:
            self.close_connection = True
            raise ClientGone() from exc

    def end_stream(self) -> None:
        payload, self._stream_head = self._stream_head + b"0\r\n\r\n", b""
        try:
            self.wfile.write(payload)
        except _GONE as exc:
            self.close_connection = True
            raise ClientGone() from exc

    def watch_client(self, on_gone: Callable[[], None]):
        """While the provider works: ``on_gone()`` if this client closes its connection meanwhile."""
        return self.server.client_watch.watching(self.connection, on_gone)

    # -- reading ---------------------------------------------------------------------------
    def _read_body(self, limit: int) -> bytes:
        """The request body, honouring Content-Length or chunked encoding, up to ``limit``."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked(limit)
        length_text = self.headers.get("Content-Length")
        if not length_text:
            return b""
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise ProxyError(400, "Content-Length is not a valid number", code="bad_content_length") from None
        if length > limit:
            self.close_connection = True
            raise ProxyError(413, f"request body is {length} bytes; the limit is {limit}",
                             code="request_too_large")
        data = self.rfile.read(length)
        if len(data) < length:
            self.close_connection = True
            raise ClientGone()
        return data

    def _body(self) -> bytes:
        """Read the whole body; from then on the request is ours and the read deadline is off."""
        body = self._read_body(self.server.app.settings.max_body_bytes)
        self.server.reaper.disarm(self.connection)
        return body

    def _read_chunked(self, limit: int) -> bytes:
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1026)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise ProxyError(400, "malformed chunked request body", code="bad_chunked_body") from None
            if size == 0:
                while self.rfile.readline(1026) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > limit:
                self.close_connection = True
                raise ProxyError(413, f"request body exceeds the limit of {limit} bytes",
                                 code="request_too_large")
            parts.append(self.rfile.read(size))
            self.rfile.readline(3)

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
        dialect = ANTHROPIC if path.startswith("/v1/messages") else OPENAI
        try:
            if server.draining:
                self.close_connection = True
                raise ProxyError(503, "server is shutting down", code="shutting_down")
            self._route(path, dialect)
        except ProxyError as exc:
            try:
                self._write(exc.status, exc.body(dialect), "application/json", exc.headers)
            except ClientGone:
                pass
        except ClientGone:
            pass
        except Exception:
            log.exception("unexpected error on %s %s", self.command, path)
            self.close_connection = True
            try:
                self._write(500, error_body(dialect, 500, "internal error; see the server log"),
                            "application/json", {})
            except ClientGone:
                pass
        finally:
            if server.app.settings.log_requests and path not in ("/healthz", "/readyz", "/metrics"):
                access(f"{self.command} {printable(path)} {self._status} {printable(self._model or '-')} "
                       f"{(time.perf_counter() - started) * 1000:.1f}ms{self._trace_note}")
            with server.active_cv:
                server.active -= 1
                server.active_cv.notify_all()

    def _headers_dict(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def _route(self, path: str, dialect: str) -> None:
        app = self.server.app
        method = self.command
        if path in PROXY_ROUTES:
            if method != "POST":
                self._refuse_method(["POST"])
            endpoint, dialect = PROXY_ROUTES[path]
            body = self._body()
            ctx = RequestContext(endpoint, dialect, self.client_address[0], self._headers_dict(), raw=body)
            try:
                proxy.handle(app, self, ctx)
            finally:
                self._model = f"{ctx.provider.name}/{ctx.upstream_model}" if ctx.provider else ctx.model
                self._trace_note = f" {ctx.trace_id}"
            return
        fixed = FIXED_ROUTES.get(path)
        if fixed is not None:
            methods, fn = fixed
            if method not in methods:
                self._refuse_method(methods)
            body = self._body()
            fn(self, Request(method, self.path, self._headers_dict(), body, self.client_address[0]))
            return
        for prefix, fn in self.server.prefix_routes:
            if path.startswith(prefix):
                body = self._body()
                fn(self, Request(method, self.path, self._headers_dict(), body, self.client_address[0]))
                return
        self._body()
        raise ProxyError(404, f"no route for {method} {path}", code="not_found")

    def _refuse_method(self, allowed: list[str]) -> None:
        self.close_connection = self.close_connection or bool(self.headers.get("Content-Length"))
        raise ProxyError(405, f"method {self.command} is not allowed here; use {', '.join(allowed)}",
                         code="method_not_allowed", headers={"Allow": ", ".join(allowed)})

    def send_json(self, status: int, payload, headers: dict | None = None) -> None:
        self.send(status, json.dumps(payload, default=str).encode(), "application/json", headers)


# -- operational routes ---------------------------------------------------------------------------

def healthz(h: Handler, req: Request) -> None:
    h.send_json(200, {"status": "ok"})


def readyz(h: Handler, req: Request) -> None:
    """Ready when the database takes writes (one tiny write through the writer, no provider calls)
    and the configuration watcher has completed a pass in the last 10 s.

    Bounded wait: a full queue or a stuck disk answers 503 within seconds, never hangs.
    """
    app = h.server.app
    w = app.writer
    state = {"queue_depth": w.depth, "records_dropped": w.stats.dropped}
    try:
        w.call(lambda conn: conn.execute(
            "INSERT INTO meta (key, value) VALUES ('readyz', strftime('%s','now')) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value"), timeout=READYZ_TIMEOUT_S)
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        h.send_json(503, {"status": "unavailable", "database": f"not writable: {reason}", **state})
        return
    problem = app.watcher_problem()
    if problem is not None:
        h.send_json(503, {"status": "unavailable", "database": "writable", "config_watcher": problem, **state})
        return
    h.send_json(200, {"status": "ready", "database": "writable", **state})


def models(h: Handler, req: Request) -> None:
    from .models import answer

    h.send_json(200, answer(h.server.app, req.headers))


def metrics(h: Handler, req: Request) -> None:
    from .metrics import render

    h.send(200, render(h.server.app).encode(), "text/plain; version=0.0.4; charset=utf-8")


FIXED_ROUTES: dict[str, tuple[list[str], Callable[[Handler, Request], None]]] = {
    "/healthz": (["GET", "HEAD"], healthz),
    "/readyz": (["GET"], readyz),
    "/metrics": (["GET"], metrics),
    "/v1/models": (["GET"], models),
    "/": (["GET"], console.redirect),
    "/ui": (["GET"], console.redirect),
}


def make_server(app: App) -> StockyardHTTPServer:
    """Bind the server; the handler class carries this server's idle timeout."""
    from . import api

    handler = type("StockyardHandler", (Handler,), {"timeout": app.settings.idle_timeout_s})
    server = StockyardHTTPServer(app, handler)
    server.prefix_routes.append(("/api/", api.handle))
    server.prefix_routes.append((console.PREFIX, console.handle))
    return server

"""Talking to providers: a keep-alive connection pool per host, timeouts, SSE reading.

An idle connection the provider closed is seen before it is used (its end of stream is
readable) and dropped. One closed in the instant between still fails before any byte of the
answer arrives, and only then is the request sent once more on a fresh connection — if the
provider cannot have acted on it: it broke before the whole request was written, within
``STALE_WINDOW_S`` of it (the keep-alive race: a provider that closed the connection as the
request came answers it with a reset within a round trip), or the request is one HTTP lets be
sent twice (GET, HEAD, PUT, DELETE, OPTIONS). A POST that broke later is never sent again here:
the provider may have done the work (a completion, a batch, a video) and lost only the answer;
the caller sees the reset (a create looks for what it made).
Connections go back to the pool only when their response was read to the end.
"""

from __future__ import annotations

import functools
import http.client
import re
import select
import socket
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator
from urllib.parse import urlsplit

from .chunked import Dechunker
from .errors import ProxyError
from .httphead import Response


def _readable(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read (its peer closed it, or broke the
    protocol by sending unasked): not usable for the next request either way."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


REPLAYABLE = frozenset(("GET", "HEAD", "PUT", "DELETE", "OPTIONS"))  # idempotent (RFC 9110 9.2.2)
# A reused connection that breaks this soon after the whole request was written broke in the keep-alive
# race (the provider closed it, idle, as the request came: its reset comes within a round trip, far
# below what doing the work and losing the answer takes), not after the provider did the work.
STALE_WINDOW_S = 1.0


def _may_resend(method: str, cancel: "Cancel") -> bool:
    """Whether a request that broke on a reused connection before any answer may go again on a
    new one: the provider did not get all of it, or closed the connection on it at once (the
    keep-alive race), or sending it twice does what once does."""
    if not cancel.written or method.upper() in REPLAYABLE:
        return True
    return time.monotonic() - cancel.written_at < STALE_WINDOW_S


_STALE = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
    http.client.BadStatusLine,
)


# What http.client's putrequest/putheader refuse (the same rules, so a header can never smuggle a line).
_LEGAL_NAME = re.compile(rb"[^:\s][^:\r\n]*")
_ILLEGAL_VALUE = re.compile(rb"\n(?![ \t])|\r(?![ \t\n])")
_BAD_TARGET = re.compile("[\x00-\x20\x7f]")
_BAD_METHOD = re.compile("[\x00-\x1f]")
_BODY_METHODS = ("PATCH", "POST", "PUT")  # http.client sends Content-Length: 0 for these without a body


class UpstreamError(Exception):
    """The provider could not be reached or did not answer properly.

    ``kind`` is one of ``connect``, ``timeout``, ``reset``, ``protocol``, ``cancelled``, ``shutdown``
    (the server ended the call: :meth:`Pool.stop_calls`); the message never contains request
    headers (which hold the provider key).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def status(self) -> int:
        return {"timeout": 504, "shutdown": 503}.get(self.kind, 502)

    def answer(self, provider: str, scrub: Callable[[str], str]) -> ProxyError:
        """What the client is told: the status, a message naming ``provider`` (scrubbed: keep
        every secret out, whatever a message holds) and ``upstream_<kind>`` as the code; the
        server's own shutdown is not the provider's doing and says so."""
        if self.kind == "shutdown":
            return ProxyError(503, str(self), code=SHUTDOWN_CODE)
        return ProxyError(self.status, scrub(f"provider {provider!r}: {self}"), code=f"upstream_{self.kind}")


SHUTDOWN_CODE = "server_shutting_down"


def shutdown_error() -> UpstreamError:
    """What a call or stream the server ended at the end of its drain raises."""
    return UpstreamError("shutdown", "the server shut down before the answer was complete; send the request again")


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int
    prefix: str  # path prefix from the base URL, without trailing slash

    @classmethod
    @functools.lru_cache(maxsize=256)  # one per base URL, parsed on every request otherwise
    def parse(cls, base_url: str) -> "Origin":
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base URL must be http(s)://host[:port][/path], got {base_url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @functools.cached_property
    def host_header(self) -> bytes:
        """The Host field http.client would send: IPv6 in brackets, the port unless the default."""
        try:
            host = self.host.encode("ascii")
        except UnicodeEncodeError:
            host = self.host.encode("idna")
        if ":" in self.host:
            host = b"[" + host + b"]"
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else b"%s:%d" % (host, self.port)


def request_head(origin: Origin, method: str, target: str, headers: dict[str, str], body: bytes | None) -> bytes:
    """The request line and header section, as http.client's ``request()`` writes them.

    Built in one piece so that head and body leave in one write (http.client sends them in two,
    each a system call with its poll), with the same checks: a method or target with control
    characters, an illegal header name or a value that would start a new line are refused.
    """
    if _BAD_METHOD.search(method):
        raise ValueError(f"method can't contain control characters. {method!r}")
    if _BAD_TARGET.search(target):
        raise http.client.InvalidURL(f"URL can't contain control characters. {target!r}")
    lines = [f"{method} {target} HTTP/1.1".encode("ascii")]
    names = {name.lower() for name in headers}
    if "host" not in names:
        lines.append(b"Host: " + origin.host_header)
    if "accept-encoding" not in names:
        lines.append(b"Accept-Encoding: identity")
    if "content-length" not in names and "transfer-encoding" not in names:
        if body is not None:
            lines.append(b"Content-Length: %d" % len(body))
        elif method.upper() in _BODY_METHODS:
            lines.append(b"Content-Length: 0")
    for name, value in headers.items():
        raw_name = name.encode("ascii")
        if not _LEGAL_NAME.fullmatch(raw_name):
            raise ValueError(f"Invalid header name {raw_name!r}")
        raw = value.encode("latin-1") if isinstance(value, str) else str(value).encode("ascii")
        if _ILLEGAL_VALUE.search(raw):
            raise ValueError(f"Invalid header value {raw!r}")
        lines.append(raw_name + b": " + raw)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


class Cancel:
    """Lets another thread end an upstream call in progress (its client went away, or the server
    is stopping), at any stage: connecting, TLS handshake, waiting for the answer.

    Shutting the socket down wakes a read blocked in another thread (closing it does not), and
    on Linux it also aborts a connect still in SYN_SENT; the lock makes sure a connection already
    handed back to the pool is never touched. Once ended, no new attempt starts:
    :meth:`Pool.request` raises ``UpstreamError("cancelled")`` (or ``shutdown_error()``).

    :meth:`leave` is the departure of a client whose answer is not a stream: a call whose request
    went out (``sent``) goes on to its end, since the provider makes and bills that answer whole.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.cancelled = False  # the client went away: the call was ended
        self.left = False  # the client went away: the call whose request went out goes on (``leave``)
        self.stopping = False  # the server is shutting down (``Pool.stop_calls``)
        self.sent = False  # the current call's request is being or was written to the provider (``mark_sent``)
        self.written = False  # ... and all of it was (``mark_written``): the provider could act on it
        self.written_at = 0.0  # when (monotonic)

    def cancel(self, stopping: bool = False) -> None:
        with self._lock:
            if stopping:
                self.stopping = True
            else:
                self.cancelled = True
            self._shut()

    def leave(self) -> None:
        """The client left a request whose answer is not a stream. Once its request went out, the
        provider makes the whole answer and bills it whether it is read or not, so the call goes on
        to its end (bounded by its read timeout and the shutdown) for its usage; before that (still
        connecting) nothing was asked yet, and the call ends as :meth:`cancel` ends it. No new call
        starts either way (:meth:`check`)."""
        with self._lock:
            if self.sent:
                self.left = True
                return
            self.cancelled = True
            self._shut()

    def _shut(self) -> None:
        """Wake the call's blocked connect or read (the lock held)."""
        if self._sock is not None:
            try:  # the plain socket's shutdown, also for TLS: the TLS layer then sees EOF
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def check(self) -> None:
        """Raise if the call was ended or its client left: nothing more is started for it."""
        if self.stopping:
            raise shutdown_error()
        if self.cancelled or self.left:
            raise UpstreamError("cancelled", "the client went away before the provider answered")

    def new_call(self) -> None:
        """A call begins (:meth:`Pool.request`): its request is not sent yet, whatever an earlier
        call of the same request's (a retry's, a fallback's) was."""
        with self._lock:
            self.sent = self.written = False

    def attach(self, sock: socket.socket) -> None:
        """Watch ``sock`` from now on (before its ``connect()``, or before the request is written
        into a pooled connection); raises if the call was ended already. Its request is not sent yet."""
        with self._lock:
            self.sent = self.written = False
            self.check()
            self._sock = sock

    def mark_sent(self) -> None:
        """The request is being written: the provider may have it (and bill it) whatever happens next,
        so a client leaving from now on lets the call go on (:meth:`leave`)."""
        with self._lock:
            self.sent = True

    def mark_written(self) -> None:
        """The whole request was written: a connection that breaks from now on broke after the provider
        could read all of it (a break while writing left it a request it cannot act on)."""
        with self._lock:
            self.written, self.written_at = True, time.monotonic()

    def detach(self) -> bool:
        """Stop watching the connection; True if the call was ended (do not reuse it)."""
        with self._lock:
            self._sock = None
            return self.cancelled or self.stopping


def _tls_context() -> ssl.SSLContext:
    """System CA store with verification on; OpenSSL honours SSL_CERT_FILE / SSL_CERT_DIR."""
    return ssl.create_default_context()


class UpstreamResponse:
    """One answer from a provider, holding its connection until read or closed."""

    def __init__(
        self,
        pool: "Pool",
        key: Origin,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        cancel: Cancel | None = None,
    ) -> None:
        self._pool, self._key, self._conn, self._resp = pool, key, conn, resp
        self._cancel = cancel
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.getheaders()}
        self._done = False
        self._chunks: Dechunker | None = None  # the chunked framing state of a stream being read
        self._split: _EventSplit | None = None  # its SSE event state

    def _broke(self, kind: str, message: str) -> UpstreamError:
        """The answer broke off (the connection is closed): why, unless the server ended it."""
        self.close()
        return shutdown_error() if self._cancel is not None and self._cancel.stopping else UpstreamError(kind, message)

    @property
    def is_sse(self) -> bool:
        return self.headers.get("content-type", "").startswith("text/event-stream")

    def read_all(self, limit: int = 64 * 1024 * 1024) -> bytes:
        """The whole body; returns the connection to the pool."""
        try:
            data = self._resp.read(limit + 1)
        except socket.timeout as exc:
            raise self._broke("timeout", "provider timed out while sending its answer") from exc
        except (http.client.IncompleteRead, OSError, http.client.HTTPException) as exc:
            raise self._broke("reset", "provider connection broke while sending its answer") from exc
        if len(data) > limit:
            self.close()
            raise UpstreamError("protocol", "provider answer is larger than the limit")
        if self._resp.length:  # its Content-Length promised more: the connection closed mid-answer
            raise self._broke("reset", "provider connection broke while sending its answer")
        self.release()
        return data

    def events(self) -> Iterator[list[bytes]]:
        """Yield the raw SSE events (each ending in a blank line) that each read of the socket
        completed, as soon as it returns: under load several events arrive together, and the
        relay then translates, scrubs and writes them as one piece.

        Raises UpstreamError when the stream breaks; a clean end returns normally. Between two
        batches the stream may be handed to a relay thread (:meth:`handoff`): the framing and
        event state live on the response, not in this generator.
        """
        self._split = split = _EventSplit()
        for piece in self._reads():
            if batch := split.feed(piece):
                yield batch
        if batch := split.tail():
            yield batch
        self.release()

    def _reads(self) -> Iterator[bytes]:
        """The body as it arrives, one piece per read of the socket (``read1``: no waiting for a
        buffer to fill), the chunked framing taken off here: ``HTTPResponse.read1`` returns one
        HTTP chunk per call, that is one event per call from providers that send an event per chunk.
        """
        resp = self._resp
        try:
            if not resp.chunked:
                while piece := resp.read1(65536):
                    yield piece
                return
            self._chunks = chunks = Dechunker()
            while not chunks.ended:
                data = resp.fp.read1(65536) if resp.fp is not None else b""
                if not data:
                    raise http.client.IncompleteRead(b"")
                if piece := chunks.feed(data):
                    yield piece
                if chunks.broken is not None:
                    raise chunks.broken
            resp.close()  # the body was read to its end: the connection can serve the next request
        except socket.timeout as exc:
            raise self._broke("timeout", "provider stopped sending mid-stream") from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise self._broke("reset", "provider connection broke mid-stream") from exc

    def handoff(self) -> Handoff | None:
        """The rest of this SSE stream for a relay thread (``streamrelay``): the plain socket, made
        non-blocking, with the bytes already buffered from it, and the framing and event state.

        None where the relay does not apply and the caller keeps reading with :meth:`events`: a
        body that is not chunked, a stream whose framing already ended or broke, or one being
        cancelled. A TLS socket is handed over as it is (the relay reads what its TLS layer holds
        decrypted, ``pending()``, as well as what the selector sees arrive).
        """
        sock, chunks, fp = self._conn.sock, self._chunks, self._resp.fp
        if (
            not isinstance(sock, socket.socket)
            or chunks is None
            or chunks.ended
            or chunks.broken is not None
            or self._split is None
            or fp is None
            or self._done
            or (self._cancel is not None and (self._cancel.cancelled or self._cancel.stopping))
        ):
            return None
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            buffered = fp.read1(65536)  # what the buffered reader holds already (never waits: non-blocking)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            buffered = b""  # nothing buffered, and the TLS layer has no whole record yet
        return Handoff(self, sock, timeout, buffered, chunks, self._split)

    def end_handoff(self, handoff: Handoff, clean: bool) -> None:
        """The relay is done with the stream: a clean end gives the connection back (blocking
        again, its timeout restored), anything else drops it."""
        if not clean:
            self.close()
            return
        try:
            handoff.sock.settimeout(handoff.timeout)
        except OSError:
            self.close()
            return
        self._resp.close()  # read to its end: release() may pool the connection
        self.release()

    def chunks(self) -> Iterator[bytes]:
        """Yield the body as it arrives (``read1``: no waiting for a buffer to fill), for binary
        answers relayed whole (audio). Raises UpstreamError when the answer breaks."""
        while True:
            try:
                chunk = self._resp.read1(65536)
            except socket.timeout as exc:
                raise self._broke("timeout", "provider stopped sending mid-answer") from exc
            except (http.client.IncompleteRead, OSError, http.client.HTTPException, ValueError) as exc:
                raise self._broke("reset", "provider connection broke mid-answer") from exc
            if not chunk:
                if self._resp.length:  # Content-Length promised more: read1 just returns b"" at EOF
                    self.close()
                    raise UpstreamError("reset", "provider connection broke mid-answer")
                break
            yield chunk
        self.release()

    def set_timeout(self, seconds: float) -> None:
        """The read timeout from now on (a request deadline shrinks it as a stream goes on)."""
        sock = self._conn.sock
        if sock is not None:
            sock.settimeout(max(0.001, seconds))

    def release(self) -> None:
        """Give the connection back for reuse if the response ended cleanly."""
        if self._done:
            return
        self._done = True
        cancelled = self._cancel is not None and self._cancel.detach()
        if self._resp.isclosed() and not self._resp.will_close and not cancelled:
            self._pool._put(self._key, self._conn)
        else:
            self._conn.close()

    def close(self) -> None:
        """Drop the connection (client went away, stream broke): never reused."""
        if self._done:
            return
        self._done = True
        if self._cancel is not None:
            self._cancel.detach()
        try:
            self._conn.close()
            self._resp.close()  # its reader holds the socket open too: the provider sees the close now
        except OSError:
            pass


class _EventSplit:
    """Complete SSE events out of body bytes as they come (line ends made ``\\n``). Each read is
    looked at once: the bytes of an event not yet complete are kept as the reads that brought them,
    never joined, rewritten and searched again per read (an image's one event of tens of MB, read
    64 KB at a time, cost seconds of CPU)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # an incomplete event's bytes, line ends made \n, no blank line in them
        self._cr = b""  # a read's last \r, held back: its \n may be the next read's first byte
        self._nl = False  # the parts end in \n: a next read beginning with \n ends an event

    def feed(self, piece: bytes) -> list[bytes]:
        """The events (each ending in a blank line) that ``piece`` completes."""
        piece = self._cr + piece
        self._cr = b"\r" if piece.endswith(b"\r") else b""
        piece = piece[: len(piece) - len(self._cr)].replace(b"\r\n", b"\n")
        if not piece:
            return []
        last = piece.rfind(b"\n\n")
        cut = last + 2 if last >= 0 else (1 if self._nl and piece.startswith(b"\n") else -1)
        if cut < 0:
            self._parts.append(piece)
            self._nl = piece.endswith(b"\n")
            return []
        done, rest = b"".join([*self._parts, piece[:cut]]), piece[cut:]
        self._parts, self._nl = ([rest] if rest else []), rest.endswith(b"\n")
        return [event + b"\n\n" for event in done[:-2].split(b"\n\n")]

    def tail(self) -> list[bytes]:
        """At a clean end: a last event without its blank line, if any."""
        buf = b"".join(self._parts) + self._cr
        self._parts, self._cr, self._nl = [], b"", False
        return [buf + b"\n\n"] if buf.strip() else []


@dataclass
class Handoff:
    """An SSE stream moved to a relay thread (:meth:`UpstreamResponse.handoff`)."""

    response: UpstreamResponse
    sock: socket.socket  # non-blocking from the handoff on
    timeout: float | None  # its read timeout before (restored when the connection goes back to the pool)
    buffered: bytes  # body bytes read from the socket already, not yet through the framing
    chunks: Dechunker
    split: _EventSplit


MAX_IDLE_PER_ORIGIN = 256  # a burst of streams finds its connections again (bench/README.md)
IDLE_MAX_S = 60.0  # a connection idle longer is closed: providers drop theirs after about a minute


class Pool:
    """Idle keep-alive connections per origin, most recently used first. Those idle longer than
    ``IDLE_MAX_S`` are closed when a connection to their origin comes back, so the extra ones a
    burst opened do not stay open while traffic goes on at a lower level (at most
    ``max_idle_per_origin`` stay while an origin gets no traffic at all)."""

    def __init__(
        self,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        max_idle_per_origin: int = MAX_IDLE_PER_ORIGIN,
        idle_max_s: float = IDLE_MAX_S,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle_per_origin
        self.idle_max_s = idle_max_s
        self._idle: dict[Origin, list[tuple[http.client.HTTPConnection, float]]] = {}  # (conn, idle since)
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self._calls: weakref.WeakSet[Cancel] = weakref.WeakSet()  # every call's, for stop_calls
        self.stopping = False

    def _take(self, key: Origin) -> http.client.HTTPConnection | None:
        """The most recently used idle connection to ``key`` that is still open. One the provider
        closed meanwhile (idle too long for it) is readable — its end of stream waits there —
        and is closed here, before a request is written into it (which the provider might read,
        half-closed, or never: then the request would be sent again on a new connection)."""
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                conn, since = idle.pop()
            if now - since <= self.idle_max_s and conn.sock is not None and not _readable(conn.sock):
                return conn
            conn.close()

    def _put(self, key: Origin, conn: http.client.HTTPConnection) -> None:
        now = time.monotonic()
        with self._lock:
            idle = self._idle.setdefault(key, [])
            old = 0  # the oldest first: those idle too long
            while old < len(idle) and now - idle[old][1] > self.idle_max_s:
                old += 1
            closing = [c for c, _ in idle[:old]]
            del idle[:old]
            if len(idle) < self.max_idle:
                idle.append((conn, now))
            else:
                closing.append(conn)
        for c in closing:
            c.close()

    def tls_context(self) -> ssl.SSLContext:
        """The pool's TLS context (:func:`_tls_context`), made for its first https connection."""
        if self._tls is None:
            self._tls = _tls_context()
        return self._tls

    def _new(self, key: Origin) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if key.scheme == "https":
            tls = self.tls_context()
            conn = http.client.HTTPSConnection(key.host, key.port, timeout=self.connect_timeout, context=tls)
        else:
            conn = http.client.HTTPConnection(key.host, key.port, timeout=self.connect_timeout)
        conn.response_class = Response
        return conn

    def _connect(self, key: Origin, read_timeout: float, cancel: Cancel) -> http.client.HTTPConnection:
        """A new connection to ``key``, its socket opened here (not by ``HTTPConnection.connect``):
        ``cancel`` knows the socket before its ``connect()`` and the TLS socket before its handshake,
        so a client that leaves, or ``stop_calls``, ends a connect to a provider that does not answer
        at once, instead of after the connect timeout (twice that with TLS)."""
        conn = self._new(key)
        conn.sock = self.open_socket(key, cancel)
        conn.sock.settimeout(read_timeout)
        return conn

    def open_socket(self, key: Origin, cancel: Cancel) -> socket.socket:
        """A new socket to ``key`` (TLS set up for https, no delay on small writes), its failures as
        ``UpstreamError``: an HTTP call's, or a WebSocket's to the provider (``stockyard.realtime``)."""
        try:
            sock = self._open(key, cancel)
        except socket.timeout as exc:
            self._check_cancelled(cancel, exc)
            raise UpstreamError("timeout", f"timed out connecting to {key.host}:{key.port}") from exc
        except ssl.SSLError as exc:
            self._check_cancelled(cancel, exc)
            raise UpstreamError("connect", f"TLS failed with {key.host}:{key.port}: {exc.reason}") from exc
        except OSError as exc:
            self._check_cancelled(cancel, exc)
            raise UpstreamError("connect", f"cannot connect to {key.host}:{key.port}: {exc.strerror or exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _open(self, key: Origin, cancel: Cancel) -> socket.socket:
        """A socket connected to ``key`` (TLS set up for https), each address in turn as
        ``socket.create_connection`` tries them, each socket attached to ``cancel`` first.
        No connect starts once ``cancel`` was ended (the name lookup cannot be interrupted)."""
        cancel.check()
        error: OSError | None = None
        for family, kind, proto, _, address in socket.getaddrinfo(key.host, key.port, 0, socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                cancel.attach(sock)
                sock.settimeout(self.connect_timeout)
                sock.connect(address)
            except OSError as exc:
                sock.close()
                if cancel.cancelled or cancel.stopping:
                    raise
                error = error or exc  # the first address's error, as create_connection reports it
                continue
            except BaseException:
                sock.close()
                raise
            if key.scheme != "https":
                return sock
            try:  # as HTTPSConnection.connect does it; the TLS socket takes the descriptor over
                tls = self.tls_context().wrap_socket(sock, server_hostname=key.host, do_handshake_on_connect=False)
            except BaseException:
                sock.close()
                raise
            try:
                cancel.attach(tls)
                tls.do_handshake()
            except BaseException:
                tls.close()
                raise
            return tls
        raise error if error is not None else OSError("getaddrinfo returned no address")

    def request(
        self,
        base_url: str,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | BinaryIO | None,
        read_timeout: float | None = None,
        cancel: Cancel | None = None,
    ) -> UpstreamResponse:
        """Send one request; retries once only if a reused connection was stale and the request
        can go twice (:func:`_may_resend`: a POST the provider read whole is not sent again).

        ``body`` may be a seekable file-like object (a spooled upload, ``multipart.Encoded``):
        it is sent in blocks, with the Content-Length the caller put in ``headers``, and
        rewound for the one retry.

        ``cancel`` lets another thread end the call (the client left): the connection is
        shut down and the call raises ``UpstreamError("cancelled")``.
        """
        cancel = cancel if cancel is not None else Cancel()
        cancel.new_call()
        with self._lock:
            self._calls.add(cancel)
        if self.stopping:
            cancel.cancel(stopping=True)
        key = Origin.parse(base_url)
        timeout = self.read_timeout if read_timeout is None else read_timeout
        full_path = key.prefix + path
        conn = self._take(key)
        reused = conn is not None
        while True:
            if conn is None:
                conn = self._connect(key, timeout, cancel)
            elif conn.sock.gettimeout() != timeout:
                conn.sock.settimeout(timeout)
            try:
                cancel.attach(conn.sock)
                resp = self._exchange(conn, key, method, full_path, headers, body, cancel)
                return UpstreamResponse(self, key, conn, resp, cancel)
            except UpstreamError:
                conn.close()
                raise
            except _STALE as exc:
                conn.close()
                self._check_cancelled(cancel, exc)
                if reused and _may_resend(method, cancel):
                    conn, reused = None, False
                    continue
                raise UpstreamError("reset", f"{key.host}:{key.port} closed the connection without answering") from exc
            except socket.timeout as exc:
                conn.close()
                self._check_cancelled(cancel, exc)
                raise UpstreamError("timeout", f"{key.host}:{key.port} did not answer in {timeout:g}s") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._check_cancelled(cancel, exc)
                raise UpstreamError("protocol", f"bad answer from {key.host}:{key.port}: {type(exc).__name__}") from exc

    @staticmethod
    def _exchange(
        conn: http.client.HTTPConnection,
        key: Origin,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | BinaryIO | None,
        cancel: Cancel,
    ) -> http.client.HTTPResponse:
        """Send the request and read the answer's head. A bytes body goes with its head in one
        write and the answer is read from the socket directly; a file body through http.client."""
        if body is not None and not isinstance(body, bytes):
            body.seek(0)
            cancel.mark_sent()
            conn.request(method, target, body=body, headers=headers)
            cancel.mark_written()
            return conn.getresponse()
        assert conn.sock is not None
        head = request_head(key, method, target, headers, body)
        cancel.mark_sent()  # before the write: the provider may read the request before sendall returns
        conn.sock.sendall(head + body if body else head)
        cancel.mark_written()
        resp = Response(conn.sock, method=method)
        try:
            resp.begin()
        except BaseException:
            resp.close()
            raise
        return resp

    @staticmethod
    def _check_cancelled(cancel: Cancel, exc: BaseException) -> None:
        """A call we shut down ourselves failed because of that: say so, never retry it."""
        if cancel.detach():
            if cancel.stopping:
                raise shutdown_error() from exc
            raise UpstreamError("cancelled", "the client went away; the upstream call was ended") from exc

    def stop_calls(self) -> None:
        """Shutting down: end every call in progress (its socket shut down: the request thread
        wakes and answers ``server_shutting_down``) and refuse new ones the same way."""
        with self._lock:
            self.stopping = True
            calls = list(self._calls)
        for cancel in calls:
            cancel.cancel(stopping=True)

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c, _ in idle]
            self._idle.clear()
        for c in conns:
            c.close()

"""One thread relaying every established SSE stream (issue 18).

A request thread blocked on its provider's socket wakes for every event, and with hundreds of
streams those threads hand one GIL around for each of them. Once a stream is established
(answer head and first events sent to the client), ``proxy.relay_stream`` hands the rest of
it here: the upstream socket (plain or TLS), its chunked framing and SSE state, the request's
translate + scrub + capture step (``convert``) and the client socket. One thread waits in a
selector on every such upstream socket, reads what is ready, converts it and writes it to the
client, and the request thread sleeps on an event until the stream ends; it then finishes the
request as before (final events, error event, trace).

Nor does the database: a write a stream's bytes must wait for (the claim of a file Anthropic's code
execution tool wrote, before the event naming it goes on) is the writer thread's, and ``convert``
leaves its future in the stream's ``waits``; the stream then holds those bytes and is not read until
the write is committed (its failure ends the stream, as a failing ``convert`` does), while the
other streams go on.

A client that leaves while its provider is silent (a model reasoning, a tool running) is noticed then,
not at the next write: the relay also waits for its socket to turn readable. Bytes there are its next
request (it is not watched further); an end-of-file may be a half-close, so an SSE stream is written a
comment (``PROBE``, which SSE clients skip) and, ``PROBE_S`` later, another: a client that closed both
ways answered the first with a reset, and the second fails — the stream ends ``ClientGone`` and its
provider's connection is closed (it stops generating). A client still reading takes both and is not
watched further; so is a TLS client, whose socket holds records, not bytes to peek at.

Writes never block this thread: a client that reads slowly keeps its bytes in its stream's
outbound buffer (written when its socket says it can take more), and while that buffer holds
more than ``write_cap`` its upstream socket is not read (backpressure: bounded memory, and the
provider's own flow control does the rest). Timers: the request's deadline, the provider's
read timeout (no byte for that long) and the client's write timeout (no byte taken for that
long) — the three the blocking relay had.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import math
import selectors
import socket
import ssl
import threading
import time
from concurrent.futures import Future
from typing import Callable

from .errors import ClientGone
from .upstream import Handoff, UpstreamError, shutdown_error
from .wakeup import Wakeup

log = logging.getLogger("stockyard.proxy")

PROBE = b"3\r\n:\n\n\r\n"  # an SSE comment, chunk-framed: written to a client whose end-of-file came
PROBE_S = 0.5  # after the first probe: time for the client's reset to come back before the second
WRITE_CAP = 256 * 1024  # a stream's bytes waiting for its client beyond which its provider is not read
READ_SIZE = 65536
# A held stream (its bytes waiting for a write) waits no longer than its provider's read timeout,
# nor than a write's caller does (Writer.call): its client gets nothing meanwhile either way.
HOLD_WAIT_S = 30.0


class Unheld(Future):
    """A write a stream's bytes wait for at most its hold limit, then go on without: one the answer
    does not depend on (a turn kept for another process's next read, ``Conversations._before_the_end``),
    unlike a claim, whose bytes must never go out before it is committed."""


def _ended(batch: list[bytes]) -> bytes:
    return b""


class Stream:
    """One established stream in the relay; its fields belong to the relay thread until ``done``."""

    __slots__ = (
        "handoff",
        "client",
        "convert",
        "deadline",
        "read_timeout",
        "write_timeout",
        "out",
        "last",
        "done",
        "error",
        "read_at",
        "wrote_at",
        "reading",
        "writing",
        "up_fd",
        "client_fd",
        "waits",
        "held",
        "probe",
        "listening",
        "probe_at",
    )

    def __init__(
        self,
        handoff: Handoff,
        client: socket.socket,
        convert: Callable[[list[bytes]], bytes],
        deadline: float | None,
        waits: list[Future] | None = None,
        sse: bool = False,
    ) -> None:
        self.handoff = handoff
        self.client = client
        self.convert = convert  # upstream events -> bytes for the client (translated, scrubbed, captured)
        self.deadline = deadline  # time.perf_counter() value, the request's deadline
        self.read_timeout = handoff.timeout  # seconds without a byte from the provider
        self.write_timeout = client.gettimeout()  # seconds without the client taking a byte
        self.out = bytearray()  # chunk-framed bytes the client has not taken yet
        self.last = b""  # a clean end's last converted bytes: the request thread writes them with the end
        self.done = threading.Event()
        self.error: BaseException | None = None  # why it ended, when not cleanly
        self.read_at = self.wrote_at = time.perf_counter()
        self.reading = self.writing = False  # registered in the selector for upstream reads / client writes
        self.up_fd, self.client_fd = handoff.sock.fileno(), client.fileno()
        # writes ``convert`` started that its last bytes wait for (it appends their futures here)
        self.waits: list[Future] = waits if waits is not None else []
        self.held = b""  # those converted bytes, not chunk-framed, until the writes are committed
        self.probe = PROBE if sse else b""  # what a client whose end-of-file came is written, to see if it left
        # its socket watched for readable (a client leaving while the provider is silent): not a TLS one
        self.listening = type(client) is socket.socket
        self.probe_at: float | None = None  # when the second probe goes (the first went at its end-of-file)

    def due(self) -> float:
        """When a timer of this stream runs out (the deadline, a read or a write stall)."""
        due = self.deadline if self.deadline is not None else math.inf
        if self.reading and self.read_timeout:
            due = min(due, self.read_at + self.read_timeout)
        if self.out and self.write_timeout:
            due = min(due, self.wrote_at + self.write_timeout)
        if self.waits:  # held: not read, but not waiting for ever on the database either
            due = min(due, self.read_at + self.hold_limit())
        if self.probe_at is not None:
            due = min(due, self.probe_at)
        return due

    def hold_limit(self) -> float:
        return min(self.read_timeout or HOLD_WAIT_S, HOLD_WAIT_S)


class StreamRelay:
    """The relay thread (started with the first stream) and its selector."""

    def __init__(self, write_cap: int = WRITE_CAP) -> None:
        self.write_cap = write_cap
        self._selector = selectors.DefaultSelector()
        self._wakeup = Wakeup()
        self._selector.register(self._wakeup.fileno(), selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._arrivals: list[Stream] = []
        self._waited: list[Stream] = []  # streams whose writes were committed (or failed): to go on
        self._live: set[Stream] = set()
        self._timers: list[tuple[float, int, Stream]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False  # shutting down: every stream ends with shutdown_error()

    @property
    def streams(self) -> int:
        """Streams being relayed now."""
        return len(self._live)

    def carry(self, stream: Stream) -> bytes:
        """Relay ``stream`` to its end on the relay thread, waiting here (the request thread).

        Returns after a clean end with the connection pooled: the converted bytes of the last
        read, not written yet (not chunk-framed), for the caller to write together with the
        stream's end (one write, not two). Raises ``UpstreamError`` (the stream broke, stalled
        or passed its deadline; the connection is closed) or ``ClientGone``. The bytes the
        client had not taken yet are written first, from here.
        """
        stream.client.setblocking(False)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stockyard-stream-relay", daemon=True)
                self._thread.start()
            wake = not self._arrivals  # else a wake-up is on its way (the thread drains, then takes the list)
            self._arrivals.append(stream)
        if wake:
            self._wakeup.wake()
        stream.done.wait()
        out, stream.out = stream.out, bytearray()
        if out and not isinstance(stream.error, ClientGone):
            try:
                stream.client.sendall(out)
            except OSError as exc:
                raise ClientGone() from exc
        if stream.error is not None:
            raise stream.error
        return stream.last

    def stop(self) -> None:
        """Shutting down (the drain's time is up): end every stream, now and arriving, with an
        error event that says so; each request thread then writes it and records its trace."""
        with self._lock:
            self._stopping = True
            running = self._thread is not None
        if running:
            self._wakeup.wake()

    # -- the relay thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._round()
            except Exception:  # never let the thread die: every stream in it would wait forever
                log.exception("the stream relay failed a round")

    def _round(self) -> None:
        """Wait for ready sockets (or the next timer), move their bytes, run the timers due."""
        timeout = None
        if self._timers:
            timeout = max(0.0, self._timers[0][0] - time.perf_counter())
        for key, events in self._selector.select(timeout):
            if key.data is None:
                self._arrive()
                continue
            stream, upstream = key.data
            if stream.done.is_set():
                continue  # ended earlier in this round
            try:
                if upstream:
                    self._read(stream)
                elif events & selectors.EVENT_READ and stream.listening:
                    self._client_readable(stream)
                else:
                    self._send(stream)
            except Exception as exc:  # a translator's bug: the request thread raises it, as before
                self._finish(stream, exc)
        self._expire()

    def _arrive(self) -> None:
        self._wakeup.drain()
        with self._lock:
            arrivals, self._arrivals = self._arrivals, []
            waited, self._waited = self._waited, []
            stopping = self._stopping
        if stopping:
            for stream in [*self._live, *arrivals]:
                self._finish(stream, shutdown_error())
            return
        for stream in arrivals:
            self._live.add(stream)
            try:
                self._watch_client(stream, 0)  # watched for leaving while its provider is silent
                self._want(stream, read=True)
                if stream.handoff.buffered:
                    self._take(stream, stream.handoff.buffered)
                self._read_decrypted(stream)  # decrypted before the handoff: the selector will not say so
            except Exception as exc:
                self._finish(stream, exc)
        for stream in waited:
            try:
                self._resume(stream)
            except Exception as exc:
                self._finish(stream, exc)

    def _read_decrypted(self, stream: Stream) -> None:
        """Read what the TLS layer holds decrypted already (the selector does not see it), unless
        the stream ended or waits for a write."""
        sock = stream.handoff.sock
        if not stream.done.is_set() and not stream.waits and isinstance(sock, ssl.SSLSocket) and sock.pending():
            self._read(stream)

    def _read(self, stream: Stream) -> None:
        sock = stream.handoff.sock
        try:
            data = sock.recv(READ_SIZE)
            # TLS: bytes decrypted already are not the selector's to see; take them now
            while data and isinstance(sock, ssl.SSLSocket) and (left := sock.pending()):
                data += sock.recv(left)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return  # no whole TLS record yet (a TLS write is needed only with a full send buffer: never here)
        except OSError:
            data = b""
        if not data:  # the connection ended before the last chunk
            return self._finish(stream, UpstreamError("reset", "provider connection broke mid-stream"))
        stream.read_at = time.perf_counter()
        self._take(stream, data)

    def _take(self, stream: Stream, data: bytes) -> None:
        """Bytes from the provider: framing off, complete events converted and sent on (once the
        writes their conversion started are committed)."""
        h = stream.handoff
        piece = h.chunks.feed(data)
        events = h.split.feed(piece) if piece else []
        if h.chunks.ended:
            events += h.split.tail()
        out = stream.convert(events) if events else b""
        if stream.waits:
            return self._hold(stream, out)
        self._went_on(stream, out)

    def _hold(self, stream: Stream, out: bytes) -> None:
        """``out`` waits for the stream's writes: its provider is not read (what its client can
        take of the bytes before goes on), and the writer's thread says when they are done."""
        stream.held = out
        self._want(stream, read=False, write=bool(stream.out))
        self._timer(stream)  # how long it may be held (Stream.due)
        told = functools.partial(self._write_done, stream)
        for future in list(stream.waits):
            future.add_done_callback(told)

    def _write_done(self, stream: Stream, _: Future) -> None:
        """A write a stream waits for is done (in the writer's thread, or here when it was already):
        once all are, the relay thread goes on with the stream."""
        if all(future.done() for future in list(stream.waits)):
            with self._lock:
                self._waited.append(stream)
            self._wakeup.wake()

    def _resume(self, stream: Stream) -> None:
        """The writes are done: a failed one ends the stream with its error (the held bytes never go
        out); else the held bytes go on, and the stream is read again."""
        waits = list(stream.waits)
        if stream.done.is_set() or not waits or not all(future.done() for future in waits):
            return  # ended meanwhile, or told twice
        failed = next((f.exception() for f in waits if f.exception() is not None), None)
        if failed is not None:
            stream.waits.clear()
            return self._finish(stream, failed)
        self._go_on(stream)

    def _go_on(self, stream: Stream) -> None:
        """The held bytes go on without the writes they waited for, and the stream is read again."""
        stream.waits.clear()
        out, stream.held = stream.held, b""
        self._went_on(stream, out)
        self._read_decrypted(stream)

    def _went_on(self, stream: Stream, out: bytes) -> None:
        """``out``, converted, goes to the client; then the stream's end, its break or its deadline,
        or more is read."""
        h = stream.handoff
        clean_end = h.chunks.ended and h.chunks.broken is None
        if out:
            if clean_end:
                stream.last = out  # written by the request thread with the stream's end
            else:
                stream.out += b"%x\r\n%s\r\n" % (len(out), out)
        if h.chunks.broken is not None:
            return self._finish(stream, UpstreamError("reset", "provider connection broke mid-stream"))
        if h.chunks.ended:
            return self._finish(stream, None)
        if stream.deadline is not None and time.perf_counter() >= stream.deadline:
            return self._finish(stream, UpstreamError("timeout", "the request passed its deadline"))
        self._send(stream)

    def _send(self, stream: Stream) -> None:
        """Write what the client can take now; watch its socket while bytes wait, stop reading
        the provider while too many do."""
        if stream.out:
            try:
                sent = stream.client.send(stream.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return self._finish(stream, ClientGone())
            if sent:
                del stream.out[:sent]
                stream.wrote_at = time.perf_counter()
        waiting = bool(stream.out)
        if waiting and not stream.writing:
            stream.wrote_at = time.perf_counter()  # the write stall clock starts now
        self._want(stream, read=not stream.waits and len(stream.out) <= self.write_cap, write=waiting)

    def _want(self, stream: Stream, read: bool, write: bool = False) -> None:
        if read != stream.reading:
            if read:
                stream.read_at = time.perf_counter()  # the read clock stood still while paused
                self._selector.register(stream.up_fd, selectors.EVENT_READ, (stream, True))
            else:
                self._selector.unregister(stream.up_fd)
            stream.reading = read
            if read:
                self._timer(stream)
        if write != stream.writing:
            before = self._client_events(stream)
            stream.writing = write
            self._watch_client(stream, before)
            if write:
                self._timer(stream)  # a write stall may run out before the timer there is

    @staticmethod
    def _client_events(stream: Stream) -> int:
        """What the selector waits for on the client's socket: writable while bytes wait, readable
        while it is watched for leaving."""
        write = selectors.EVENT_WRITE if stream.writing else 0
        return write | (selectors.EVENT_READ if stream.listening and not stream.done.is_set() else 0)

    def _watch_client(self, stream: Stream, before: int) -> None:
        """The client's socket in the selector as ``_client_events`` says now (``before``: as it was)."""
        now = self._client_events(stream)
        if now == before:
            return
        if not before:
            self._selector.register(stream.client_fd, now, (stream, False))
        elif not now:
            self._selector.unregister(stream.client_fd)
        else:
            self._selector.modify(stream.client_fd, now, (stream, False))

    def _stop_listening(self, stream: Stream) -> None:
        before = self._client_events(stream)
        stream.listening = False
        self._watch_client(stream, before)

    def _client_readable(self, stream: Stream) -> None:
        """The client's socket turned readable mid-stream: a reset (it left), its next request's
        bytes (it stays: not watched further), or its end-of-file (it may have left: probed)."""
        try:
            peeked = stream.client.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._finish(stream, ClientGone())
        self._stop_listening(stream)
        if not peeked and stream.probe:
            stream.probe_at = time.perf_counter() + PROBE_S
            self._timer(stream)
            stream.out += stream.probe
            self._send(stream)

    def _probe_again(self, stream: Stream) -> None:
        """``PROBE_S`` after the first probe: a client that closed both ways reset the connection
        since, and this write fails (``_send`` ends the stream); one still reading takes it."""
        stream.probe_at = None
        stream.out += stream.probe
        self._send(stream)
        if not stream.done.is_set():
            self._timer(stream)  # the stream's other timers (this entry was its own)

    def _finish(self, stream: Stream, error: BaseException | None) -> None:
        """The stream ended (``error`` None: cleanly): out of the selector, the provider's
        connection pooled or closed, the client socket blocking again, the request thread woken."""
        if stream.done.is_set():
            return
        if self._stopping and isinstance(error, UpstreamError):  # its socket was shut down by Pool.stop_calls
            error = shutdown_error()
        stream.error = error
        stream.convert = _ended  # a timer entry may outlive the request: let go of its context
        stream.held = b""  # bytes waiting for a write never go out once the stream ended
        self._live.discard(stream)
        try:
            try:
                self._want(stream, read=False, write=False)
            except (KeyError, ValueError, OSError):
                pass
            try:  # on its own: the client's socket never stays in the selector past its stream
                self._stop_listening(stream)
            except (KeyError, ValueError, OSError):
                pass
            stream.handoff.response.end_handoff(stream.handoff, error is None)
            stream.client.settimeout(stream.write_timeout)
        except Exception:
            log.exception("ending a relayed stream failed")
        finally:
            stream.done.set()

    def _timer(self, stream: Stream) -> None:
        due = stream.due()
        if due != math.inf:
            heapq.heappush(self._timers, (due, next(self._seq), stream))

    def _expire(self) -> None:
        """Run the timers that are due; an entry whose stream moved on is put back at its new time."""
        now = time.perf_counter()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, stream = heapq.heappop(timers)
            if stream.done.is_set():
                continue
            due = stream.due()
            if due > now:
                if due != math.inf:
                    heapq.heappush(timers, (due, next(self._seq), stream))
                continue
            if stream.deadline is not None and now >= stream.deadline:
                self._finish(stream, UpstreamError("timeout", "the request passed its deadline"))
            elif stream.probe_at is not None and now >= stream.probe_at:
                self._probe_again(stream)
            elif stream.out and stream.write_timeout and now >= stream.wrote_at + stream.write_timeout:
                self._finish(stream, ClientGone())
            elif stream.waits and all(isinstance(f, Unheld) or f.done() for f in stream.waits):
                self._go_on(stream)  # what it waits for may come later: the answer goes on meanwhile
            elif stream.waits:  # ended as a write that failed ends it
                waited = f"the database did not commit what the stream waits for in {stream.hold_limit():g} s"
                self._finish(stream, TimeoutError(waited))
            else:
                self._finish(stream, UpstreamError("timeout", "provider stopped sending mid-stream"))
        if len(timers) > 2 * len(self._live) + 64:  # entries of ended streams: drop them
            self._timers = [(s.due(), next(self._seq), s) for s in self._live if s.due() != math.inf]
            heapq.heapify(self._timers)

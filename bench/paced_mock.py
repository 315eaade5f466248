"""A paced mock provider for the load rows: the test mock's answers at a fraction of its CPU.

`tests/mock_upstream.py` runs a thread per connection and builds every answer from scratch:
about 0.2 ms of CPU per request, taken from the same two cores the proxy is measured on. This
process serves the same answers — computed once per distinct request by the test mock's own
routes, then replayed — from one thread: a selector over every connection and a heap of
timers for the delay before an answer and the pause between a stream's events. What a load row
then measures is the proxy, not the mock.

    python3 bench/paced_mock.py [--port 0] [--delay-ms 20] [--stream-events 20] [--sse-delay-ms 5]

It speaks HTTP/1.1 with keep-alive and Content-Length request bodies (what the proxy, the relay
and the load generator send); anything else is answered 400 and the connection closed.
"""

from __future__ import annotations

import argparse
import email.utils
import heapq
import itertools
import json
import selectors
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import mock_upstream as mock  # noqa: E402

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
Answer = tuple[bytes, list[bytes]]  # the head (and whole body, if not a stream), then stream pieces


class Answers:
    """Wire bytes of the test mock's answer to each distinct (method, path, body), built once."""

    def __init__(self, stream_events: int) -> None:
        self.stream_events = stream_events
        self._cache: dict[tuple[str, str, bytes], Answer] = {}

    def get(self, method: str, path: str, body: bytes) -> Answer:
        key = (method, path, body)
        if key not in self._cache:
            self._cache[key] = self._build(method, path, body)
        return self._cache[key]

    def _build(self, method: str, path: str, body: bytes) -> Answer:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        route = mock.find_route(method, path)
        if route is None:
            reply = mock.not_found(method, path)
        else:
            reply = route(mock.Call(mock.Recorded(method, path, {}, {}, body, parsed), 1), None)
        if reply.sse is not None:
            head = _head(reply.status, "text/event-stream; charset=utf-8", "Transfer-Encoding: chunked")
            blocks = [mock._sse_block(item) for item in mock._stretched(reply.sse, self.stream_events)]
            return head, [b"%x\r\n%s\r\n" % (len(block), block) for block in blocks] + [b"0\r\n\r\n"]
        data = reply.body if reply.body is not None else json.dumps(reply.json, separators=(",", ":")).encode()
        return _head(reply.status, "application/json", f"Content-Length: {len(data)}") + data, []


def _head(status: int, content_type: str, framing: str) -> bytes:
    """The same fields the test mock sends (its Date is the time the answer was first built)."""
    return (
        f"HTTP/1.1 {status} Mock\r\nServer: mock-upstream\r\nDate: {email.utils.formatdate(usegmt=True)}\r\n"
        f"x-request-id: req_mock_1\r\nrequest-id: req_mock_1\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n"
    ).encode()


class Conn:
    """One client connection: bytes read but not yet parsed, bytes waiting to be written."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = b""
        self.outbox = b""
        self.busy = False  # a request is being answered: the next one waits
        self.closed = False


class PacedMock:
    """The selector loop: read requests, answer them after `delay_s`, pace stream events."""

    def __init__(self, listener: socket.socket, delay_s: float, sse_delay_s: float, answers: Answers) -> None:
        self.listener = listener
        self.delay_s = delay_s
        self.sse_delay_s = sse_delay_s
        self.answers = answers
        self.sel = selectors.DefaultSelector()
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ, None)

    def later(self, delay_s: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay_s, next(self._order), action))

    def run(self) -> None:
        while True:
            timeout = max(0.0, self.timers[0][0] - time.monotonic()) if self.timers else None
            for key, mask in self.sel.select(timeout):
                if key.data is None:
                    self._accept()
                elif mask & selectors.EVENT_READ:
                    self._read(key.data)
                elif mask & selectors.EVENT_WRITE:
                    self._flush(key.data)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                heapq.heappop(self.timers)[2]()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sel.register(sock, selectors.EVENT_READ, Conn(sock))

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return self._close(conn)
        conn.inbox += data
        self._next_request(conn)

    def _next_request(self, conn: Conn) -> None:
        """Start answering the next complete request in `conn.inbox`, if any and none is under way."""
        if conn.busy or conn.closed:
            return
        end = conn.inbox.find(b"\r\n\r\n")
        if end < 0:
            return self._refuse(conn) if len(conn.inbox) > MAX_HEAD else None
        lines = conn.inbox[:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length" and value.strip().isdigit():
                length = int(value)
            elif name == "transfer-encoding":
                return self._refuse(conn)
        if len(parts) != 3 or length > MAX_BODY:
            return self._refuse(conn)
        if len(conn.inbox) < end + 4 + length:
            return
        body = conn.inbox[end + 4 : end + 4 + length]
        conn.inbox = conn.inbox[end + 4 + length :]
        conn.busy = True
        head, pieces = self.answers.get(parts[0], parts[1].split("?", 1)[0], body)
        self.later(self.delay_s, lambda: self._answer(conn, head, pieces))

    def _answer(self, conn: Conn, head: bytes, pieces: list[bytes]) -> None:
        self._write(conn, head)
        if pieces:
            self._pace(conn, pieces, 0)
        else:
            self._done(conn)

    def _pace(self, conn: Conn, pieces: list[bytes], index: int) -> None:
        """Write stream piece `index` now and the next one `sse_delay_s` later."""
        self._write(conn, pieces[index])
        if index + 1 == len(pieces):
            return self._done(conn)
        self.later(self.sse_delay_s, lambda: self._pace(conn, pieces, index + 1))

    def _done(self, conn: Conn) -> None:
        conn.busy = False
        self._next_request(conn)

    def _write(self, conn: Conn, data: bytes) -> None:
        if conn.closed:
            return
        if not conn.outbox:
            try:
                sent = conn.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return self._close(conn)
            data = data[sent:]
            if not data:
                return
            self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        conn.outbox += data

    def _flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._close(conn)
        conn.outbox = conn.outbox[sent:]
        if not conn.outbox:
            self.sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def _refuse(self, conn: Conn) -> None:
        self._write(conn, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self._close(conn)

    def _close(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.sel.unregister(conn.sock)
        conn.sock.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--delay-ms", type=float, default=0)
    p.add_argument("--stream-events", type=int, default=0, help="pad default streams to this many events")
    p.add_argument("--sse-delay-ms", type=float, default=0, help="pause between stream events")
    args = p.parse_args(argv)
    listener = socket.create_server((args.host, args.port), backlog=4096)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = PacedMock(listener, args.delay_ms / 1000, args.sse_delay_ms / 1000, Answers(args.stream_events))
    host, port = listener.getsockname()[:2]
    print(f"paced mock listening http://{host}:{port}", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

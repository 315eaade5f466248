"""The floor under the concurrent-stream rows (issue 18): what relaying a stream costs Python at the least.

    python3 bench/stream_floor.py [--pyz dist/stockyard.pyz] [--streams 200] [--rounds 4]

Three relays that do nothing but relay — no checks, no parsing beyond the HTTP framing needed to find
a request's end and a stream's, no tracing — run in front of the paced stream mock (20 events, 5 ms
apart) beside Stockyard, and take the same bursts of concurrent streams (the selector client of
`streams.py`), rotating round after round:

- ``threads``: a thread per connection (``socketserver.ThreadingTCPServer``), the upstream socket from
  a pool, its bytes read and written on as they come: Stockyard's shape before its stream relay;
- ``relay``: a thread per connection until the answer's head is out, then the stream handed to one
  relay thread (a selector) while the connection's thread waits for its end: Stockyard's shape now;
- ``loop``: one thread, one selector over every client and upstream socket: what "the request path off
  a thread per connection" could reach if Stockyard's own work per stream were nothing.

Each relay keeps itself on one CPU as Stockyard does (``stockyard/cpupin.py``). Printed per target:
the median over rounds of the burst's p50 time to a stream's end, that minus direct's (the rows'
"added p50"), and the process's CPU per stream (/proc). Ratios within one run. `make bench` runs
``relay`` and ``loop`` beside its stream rows (``streams.concurrent_streams``).

    python3 bench/stream_floor.py --serve threads|relay|loop --upstream http://127.0.0.1:PORT

runs one relay alone (how the driver starts them).
"""

from __future__ import annotations

import argparse
import selectors
import socket
import socketserver
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYZ, REPO, Procs, Target, base_env, cpu_seconds, start_proxy  # noqa: E402

END = b"0\r\n\r\n"  # a chunked answer's last chunk (the mock sends no trailers)


def request_end(data: bytes) -> int:
    """The length of the first whole request in ``data`` (head and Content-Length body), or 0."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return 0
    length = 0
    for line in data[:head_end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    whole = head_end + 4 + length
    return whole if len(data) >= whole else 0


def kept_alive(request: bytes) -> bytes:
    """The client's request as the upstream gets it: on a connection the relay keeps."""
    return request.replace(b"Connection: close\r\n", b"Connection: keep-alive\r\n", 1)


class Upstreams:
    """Idle keep-alive sockets to the one upstream."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def take(self) -> socket.socket:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        sock = socket.create_connection(self.address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def give(self, sock: socket.socket) -> None:
        with self._lock:
            self._idle.append(sock)


def read_request(client: socket.socket) -> bytes | None:
    """A blocking client's whole request, as the upstream gets it; None if it left first."""
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = b""
    while not (end := request_end(data)):
        got = client.recv(65536)
        if not got:
            return None
        data += got
    return kept_alive(data[:end])


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096


# --------------------------------------------------------------------------- a thread per connection


def serve_threads(upstreams: Upstreams) -> socketserver.TCPServer:
    class Relay(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            client: socket.socket = self.request
            request = read_request(client)
            if request is None:
                return
            up = upstreams.take()
            up.sendall(request)
            tail = b""
            while not tail.endswith(END):
                got = up.recv(65536)
                if not got:
                    up.close()
                    return
                client.sendall(got)
                tail = (tail + got)[-8:]
            upstreams.give(up)

    return Server(("127.0.0.1", 0), Relay)


# --------------------------------------------------------------------------- threads, then one relay thread


class Handed:
    """Streams handed from their connection threads to the relay thread (a pipe wakes it)."""

    def __init__(self) -> None:
        self.new: list[tuple[socket.socket, socket.socket, bytes, threading.Event]] = []
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        threading.Thread(target=self._run, daemon=True).start()

    def carry(self, client: socket.socket, up: socket.socket, tail: bytes) -> None:
        done = threading.Event()
        with self.lock:
            self.new.append((client, up, tail, done))
        self.wake_w.send(b"x")
        done.wait()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.wake_r, selectors.EVENT_READ, None)
        while True:
            for key, _ in sel.select():
                if key.data is None:
                    self.wake_r.recv(4096)
                    with self.lock:
                        new, self.new = self.new, []
                    for client, up, tail, done in new:
                        up.setblocking(False)
                        sel.register(up, selectors.EVENT_READ, [client, up, tail, done])
                    continue
                stream = key.data
                client, up, tail, done = stream
                got = up.recv(65536)
                if got:
                    client.sendall(got)
                    stream[2] = tail = (tail + got)[-8:]
                if not got or tail.endswith(END):
                    sel.unregister(up)
                    up.setblocking(True)
                    done.set()


def serve_relay(upstreams: Upstreams) -> socketserver.TCPServer:
    handed = Handed()

    class Relay(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            client: socket.socket = self.request
            request = read_request(client)
            if request is None:
                return
            up = upstreams.take()
            up.sendall(request)
            got = up.recv(65536)  # the head (and the first events): written here, the rest by the relay
            client.sendall(got)
            if not got.endswith(END):
                handed.carry(client, up, got[-8:])
            upstreams.give(up)

    return Server(("127.0.0.1", 0), Relay)


# --------------------------------------------------------------------------- one selector


class _Conn:
    __slots__ = ("client", "data", "up", "tail")

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.data = b""  # the request as read so far
        self.up: socket.socket | None = None  # its upstream connection, once the request is whole
        self.tail = b""  # the answer's last bytes relayed, to see its end


def serve_loop(upstreams: Upstreams, listener: socket.socket) -> None:
    """Every connection on this thread: a client's request is read as it comes, sent upstream, and
    the upstream's bytes written to the client as they come (loopback clients take them at once)."""
    sel = selectors.DefaultSelector()
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, None)
    while True:
        for key, _ in sel.select():
            conn: _Conn | None = key.data
            if conn is None:  # the listener: every waiting connection
                while True:
                    try:
                        client, _ = listener.accept()
                    except BlockingIOError:
                        break
                    client.setblocking(False)
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(client, selectors.EVENT_READ, _Conn(client))
            elif key.fileobj is conn.client:
                got = conn.client.recv(65536)
                if not got:
                    sel.unregister(conn.client)
                    conn.client.close()
                    continue
                conn.data += got
                if end := request_end(conn.data):
                    sel.unregister(conn.client)
                    conn.up = up = upstreams.take()
                    up.sendall(kept_alive(conn.data[:end]))
                    up.setblocking(False)
                    sel.register(up, selectors.EVENT_READ, conn)
            else:
                assert conn.up is not None
                got = conn.up.recv(65536)
                if got:
                    conn.client.sendall(got)  # a loopback client's buffer takes a stream's few KB
                    conn.tail = (conn.tail + got)[-8:]
                if not got or conn.tail.endswith(END):
                    sel.unregister(conn.up)
                    if got:
                        conn.up.setblocking(True)
                        upstreams.give(conn.up)
                    else:
                        conn.up.close()
                    conn.client.close()


def serve(mode: str, upstream: str) -> None:
    """One relay, kept on one CPU as Stockyard keeps itself (``stockyard/cpupin.py``)."""
    sys.path.insert(0, str(REPO))
    from stockyard.cpupin import keep_on_one_cpu

    keep_on_one_cpu("auto")
    up = urlsplit(upstream)
    upstreams = Upstreams((up.hostname or "127.0.0.1", up.port or 80))
    if mode in ("threads", "relay"):
        server = serve_threads(upstreams) if mode == "threads" else serve_relay(upstreams)
        print(f"listening http://127.0.0.1:{server.server_address[1]}", flush=True)
        server.serve_forever()
        return
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    print(f"listening http://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    serve_loop(upstreams, listener)


# --------------------------------------------------------------------------- the driver


FLOOR_NAMES = {"threads": "a thread per stream", "relay": "Stockyard's shape", "loop": "one event loop"}


def start_floor(procs: Procs, mode: str, mock: Target) -> Target:
    """One of the minimal relays in front of ``mock``, its own process."""
    argv = [sys.executable, __file__, "--serve", mode, "--upstream", mock.url]
    proc, match, log = procs.start(f"floor-{mode}", argv, base_env(procs.workdir), r"listening (http://\S+)")
    return Target(f"minimal relay, {FLOOR_NAMES[mode]}", match.group(1), dict(mock.headers), log, proc.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pyz", type=Path, default=PYZ)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--serve", choices=("threads", "relay", "loop"), help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.upstream)
        return
    from streams import (  # streams.py starts these relays
        print_bursts,
        raise_file_limit,
        rotating_bursts,
        start_stream_mock,
    )

    raise_file_limit()
    with tempfile.TemporaryDirectory() as tmp, Procs(Path(tmp)) as procs:
        mock = start_stream_mock(procs)
        relays = [start_proxy(procs, args.pyz.resolve(), "stockyard", mock)]
        relays += [start_floor(procs, mode, mock) for mode in ("threads", "relay", "loop")]
        got = rotating_bursts(mock, relays, args.streams, args.rounds, lambda t: cpu_seconds(t.pid) or 0.0)
        print_bursts(got, mock, relays, args.streams, args.rounds)


if __name__ == "__main__":
    main()

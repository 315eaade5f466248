"""The stream relay (stockyard/streamrelay.py): one thread moving every established stream.

First on its own, with real sockets: a raw-socket provider whose every byte after the first
event is the test's to send, and a socketpair as the client. Then through a server: many
concurrent streams complete and are traced, and a break and a deadline mid-stream end the way
they always did (the client leaving mid-stream: test_openai_proxy, paced, so relayed here too).
"""

from __future__ import annotations

import http.client
import json
import queue
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest
from conftest import ServerProcess, base_env, mock_env, served, wait_for
from mock_upstream import Reply
from test_tls import tls_mock

from stockyard.errors import ClientGone
from stockyard.streamrelay import READ_SIZE, Stream, StreamRelay
from stockyard.upstream import Pool, UpstreamError

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
FIRST = b'data: {"n":0}\n\n'
END = b"0\r\n\r\n"
HELLO = [{"role": "user", "content": "hello"}]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(n: int, size: int = 0) -> bytes:
    return b'data: {"n":%d,"pad":"%s"}\n\n' % (n, b"x" * size)


def unframe(data: bytes) -> bytes:
    """The payload of the whole chunks in ``data`` (the relay writes whole chunks only)."""
    out, pos = [], 0
    while (eol := data.find(b"\r\n", pos)) >= 0:
        size = int(data[pos:eol], 16)
        if eol + 4 + size > len(data):
            break
        out.append(data[eol + 2 : eol + 2 + size])
        assert data[eol + 2 + size : eol + 4 + size] == b"\r\n"
        pos = eol + 4 + size
    return b"".join(out)


def read_payload(sock: socket.socket, size: int) -> bytes:
    """Read the client end until ``size`` bytes of chunk payload came; the raw bytes."""
    sock.settimeout(10)
    data = b""
    while len(unframe(data)) < size:
        data += sock.recv(65536)
    return data


class Provider:
    """Answers each connection's request with the SSE head and FIRST, then hands the socket to
    the test (``accepted``), which sends the rest itself."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.url = f"http{'s' if tls else ''}://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted: queue.Queue[socket.socket] = queue.Queue()
        self.tls = tls
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head and (got := conn.recv(65536)):
                head += got
            conn.sendall(HEAD + chunk(FIRST))
            self.accepted.put(conn)


@dataclass
class Relayed:
    """One stream handed to a relay: its provider end, its client end and how it ended."""

    stream: Stream
    upstream: socket.socket
    client: socket.socket
    thread: threading.Thread
    ended: list[BaseException | None] = field(default_factory=list)
    last: list[bytes] = field(default_factory=list)  # what carry() returned: the request thread writes it

    def wait(self, timeout: float = 10.0) -> BaseException | None:
        self.thread.join(timeout)
        assert self.ended, "the relay did not end the stream"
        return self.ended[0]

    def received(self) -> bytes:
        """What the client got, read to the end (after ``wait``), chunk framing off, and the last
        bytes the request thread writes with the stream's end."""
        return unframe(self.rest()) + b"".join(self.last)

    def rest(self) -> bytes:
        """The bytes still unread on the client's socket."""
        self.client.setblocking(False)
        data = b""
        try:
            while got := self.client.recv(65536):
                data += got
        except BlockingIOError:
            pass
        return data


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider()
    yield p
    p.listener.close()


@pytest.fixture
def pool() -> Iterator[Pool]:
    p = Pool(connect_timeout=5, read_timeout=5)
    yield p
    p.close()


def relay_one(
    relay: StreamRelay,
    pool: Pool,
    provider: Provider,
    deadline: float | None = None,
    client_timeout: float = 5.0,
    convert: Callable[[list[bytes]], bytes] = b"".join,
    sent: bytes = b"",
) -> Relayed:
    """A stream read up to its first event by the request path, then handed to ``relay``; ``sent``:
    what the provider sent after it before the hand-off (waiting for the relay, whatever the time)."""
    resp = pool.request(provider.url, "POST", "/v1/chat/completions", {"Content-Type": "application/json"}, b"{}")
    upstream = provider.accepted.get(timeout=5)
    upstream.settimeout(10)
    events = resp.events()
    assert next(events) == [FIRST]
    upstream.sendall(sent)
    handoff = resp.handoff()
    assert handoff is not None
    ours, theirs = socket.socketpair()
    ours.settimeout(client_timeout)
    stream = Stream(handoff, ours, convert, deadline)
    ended: list[BaseException | None] = []
    last: list[bytes] = []

    def carry() -> None:
        try:
            last.append(relay.carry(stream))
            ended.append(None)
        except BaseException as exc:  # what the request thread would see
            ended.append(exc)

    thread = threading.Thread(target=carry, daemon=True)
    thread.start()
    return Relayed(stream, upstream, theirs, thread, ended, last)


def drain(s: Relayed, seconds: float = 30) -> bytes:
    """Read the client end while the stream is being carried; the raw bytes."""
    s.client.settimeout(0.2)
    data, until = b"", time.monotonic() + seconds
    while s.thread.is_alive() and time.monotonic() < until:
        try:
            data += s.client.recv(65536)
        except TimeoutError:
            pass
    return data


def closed_by_us(sock: socket.socket) -> bool:
    """The proxy closed the provider connection (the provider reads end-of-file)."""
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True


# -- the relay on its own ---------------------------------------------------------------------------


def test_many_streams_relay_to_their_end_and_their_connections_are_pooled(pool, provider) -> None:
    relay = StreamRelay()
    streams = [relay_one(relay, pool, provider) for _ in range(40)]
    for n in range(1, 6):  # interleaved across the streams, as a busy provider sends them
        for s in streams:
            s.upstream.sendall(chunk(event(n)))
    for s in streams:
        s.upstream.sendall(END)
    for s in streams:
        assert s.wait() is None
        assert s.received() == b"".join(event(n) for n in range(1, 6))
    assert relay.streams == 0
    assert sum(len(idle) for idle in pool._idle.values()) == 40, "every connection went back to the pool"
    for s in streams:
        s.upstream.close()


def test_the_last_read_of_a_clean_end_is_left_to_the_request_thread(pool, provider) -> None:
    """The events that arrive with the end are returned, not written: the request thread writes
    them with the chunked terminator in one write (one system call per stream less)."""
    relay = StreamRelay()
    s = relay_one(relay, pool, provider, convert=lambda batch: b"<" + b"".join(batch) + b">")
    s.upstream.sendall(chunk(event(1)))
    assert unframe(read_payload(s.client, len(event(1)) + 2)) == b"<" + event(1) + b">"
    s.upstream.sendall(chunk(event(2)) + END)
    assert s.wait() is None
    assert s.last == [b"<" + event(2) + b">"]
    assert s.rest() == b"", "the relay wrote nothing of the last read"
    s.upstream.close()


def test_a_slow_client_does_not_stall_the_others_and_its_buffer_stays_bounded(pool, provider) -> None:
    cap = 64 * 1024
    relay = StreamRelay(write_cap=cap)
    slow, fast = relay_one(relay, pool, provider), relay_one(relay, pool, provider)
    slow.upstream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    big = [event(n, 16_000) for n in range(1, 1501)]  # 24 MB: far more than the socket buffers hold
    sender = threading.Thread(target=lambda: slow.upstream.sendall(b"".join(map(chunk, big)) + END), daemon=True)
    sender.start()
    wait_for(lambda: not slow.stream.reading, what="the relay to stop reading the slow stream's provider")
    fast.upstream.sendall(chunk(event(1)) + chunk(event(2)) + END)
    assert fast.wait() is None and fast.received() == event(1) + event(2)
    assert not slow.stream.done.is_set() and sender.is_alive(), "the slow stream waits, its provider held back"
    assert len(slow.stream.out) <= cap + READ_SIZE + 64, "buffered for the slow client: bounded by the cap"
    data = drain(slow)  # the client reads at last
    assert slow.wait() is None
    assert unframe(data + slow.rest()) + b"".join(slow.last) == b"".join(big)


def test_a_client_that_leaves_ends_the_upstream_call(pool, provider) -> None:
    relay = StreamRelay()
    s = relay_one(relay, pool, provider)
    s.client.close()
    s.upstream.sendall(chunk(event(1)))
    assert isinstance(s.wait(), ClientGone)
    assert closed_by_us(s.upstream)
    assert relay.streams == 0


def test_a_break_upstream_is_an_upstream_error_after_the_events_before_it(pool, provider) -> None:
    relay = StreamRelay()
    s = relay_one(relay, pool, provider)
    s.upstream.sendall(chunk(event(1)))
    s.upstream.close()
    error = s.wait()
    assert isinstance(error, UpstreamError) and error.kind == "reset"
    assert s.received() == event(1)


def test_a_deadline_mid_stream_ends_it_and_closes_the_upstream_connection(pool, provider) -> None:
    relay = StreamRelay()
    started = time.perf_counter()
    # event 1 is sent before the hand-off, so it goes with the stream however long that takes on a
    # loaded machine (sent after it, it came too late once: the deadline had passed); then nothing
    # more: only the deadline can end it
    s = relay_one(relay, pool, provider, deadline=started + 0.3, sent=chunk(event(1)))
    error = s.wait()
    assert isinstance(error, UpstreamError) and error.kind == "timeout" and "deadline" in str(error)
    assert 0.3 <= time.perf_counter() - started < 5
    assert s.received() == event(1)
    assert closed_by_us(s.upstream)


def test_a_stream_whose_deadline_passed_during_its_hand_off_still_gets_what_was_sent_by_then(pool, provider) -> None:
    """On a loaded machine a stream may reach the relay past its deadline: what its provider sent
    before the hand-off goes with it (``UpstreamResponse.handoff`` reads it) and reaches the client
    before the timeout ends the stream."""
    relay = StreamRelay()
    s = relay_one(relay, pool, provider, deadline=time.perf_counter(), sent=chunk(event(1)))
    error = s.wait()
    assert isinstance(error, UpstreamError) and error.kind == "timeout" and "deadline" in str(error)
    assert s.received() == event(1)
    assert closed_by_us(s.upstream)


def test_a_provider_that_stops_sending_times_out(provider) -> None:
    pool = Pool(connect_timeout=5, read_timeout=0.3)
    relay = StreamRelay()
    s = relay_one(relay, pool, provider)
    error = s.wait()
    assert isinstance(error, UpstreamError) and error.kind == "timeout" and "stopped sending" in str(error)
    assert closed_by_us(s.upstream)
    pool.close()


def test_a_client_that_takes_nothing_is_gone_after_its_write_timeout(pool, provider) -> None:
    relay = StreamRelay(write_cap=16 * 1024)
    s = relay_one(relay, pool, provider, client_timeout=0.3)
    threading.Thread(target=lambda: s.upstream.sendall(chunk(event(1, 4_000_000))), daemon=True).start()
    assert isinstance(s.wait(), ClientGone)
    assert closed_by_us(s.upstream)


def test_a_translator_that_fails_fails_its_own_request_only(pool, provider) -> None:
    def broken(batch: list[bytes]) -> bytes:
        raise RuntimeError("a translator bug")

    relay = StreamRelay()
    bad, good = relay_one(relay, pool, provider, convert=broken), relay_one(relay, pool, provider)
    bad.upstream.sendall(chunk(event(1)))
    error = bad.wait()
    assert isinstance(error, RuntimeError) and str(error) == "a translator bug"
    assert closed_by_us(bad.upstream)
    good.upstream.sendall(chunk(event(1)) + END)
    assert good.wait() is None and good.received() == event(1)


def test_a_tls_stream_is_relayed_too(pool, tls_mock) -> None:
    _, ca_file = tls_mock
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(ca_file.parent / "leaf.pem", ca_file.parent / "leaf.key")
    provider = Provider(server_side)
    pool._tls = ssl.create_default_context(cafile=str(ca_file))
    relay = StreamRelay()
    s = relay_one(relay, pool, provider)
    assert isinstance(s.stream.handoff.sock, ssl.SSLSocket)
    big = [event(n, 30_000) for n in range(1, 4)]  # records larger than one read: decrypted bytes wait in pending()
    s.upstream.sendall(b"".join(map(chunk, big)) + END)
    data = drain(s)  # more than the client socket's buffer may hold
    assert s.wait() is None and unframe(data + s.rest()) + b"".join(s.last) == b"".join(big)
    assert sum(len(idle) for idle in pool._idle.values()) == 1, "pooled after a clean end"
    provider.listener.close()


def test_a_stream_that_is_not_chunked_stays_with_the_request_thread(pool) -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + FIRST)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    resp = pool.request(url, "POST", "/v1/chat/completions", {}, b"{}")
    events = resp.events()
    assert next(events) == [FIRST]
    assert resp.handoff() is None
    listener.close()


# -- through a server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> Iterator[ServerProcess]:
    env = mock_env(cache_home, mock)
    with served(pyz_path, tmp_path_factory, "relay", env) as proc:
        yield proc


def stream_chat(port: int, model: str = "gpt-4o-mini") -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": model, "messages": HELLO, "stream": True}),
        {"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data, resp.getheader("x-stockyard-trace-id") or ""


def test_many_concurrent_streams_through_one_server_complete_and_are_traced(server, mock) -> None:
    n = 100
    for _ in range(n):
        mock.enqueue(Reply(sse_delay_ms=20))  # paced: each is relayed after its first event
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda _: stream_chat(server.port, "gpt-4o-mini-relay-many"), range(n)))
    assert all(status == 200 and data.rstrip().endswith(b"data: [DONE]") for status, data, _ in results)
    rows = wait_for(
        lambda: (
            (r := server.db_rows("SELECT outcome FROM traces WHERE model = 'gpt-4o-mini-relay-many'"))
            and len(r) == n
            and r
        ),
        what="a trace per stream",
    )
    assert {row["outcome"] for row in rows} == {"ok"}


def test_a_break_mid_stream_ends_with_the_error_event(server, mock) -> None:
    mock.enqueue(Reply(cut_after=3, sse_delay_ms=30))
    status, data, trace_id = stream_chat(server.port)
    payloads = [e[len("data: ") :] for e in data.decode().split("\n\n") if e.startswith("data: ")]
    assert status == 200 and "[DONE]" not in payloads and len(payloads) == 4
    assert json.loads(payloads[-1])["error"]["code"] == "upstream_reset"
    trace = server.trace(trace_id)
    assert trace["outcome"] == "stream_broken" and "stream broke" in trace["error_message"]


def test_a_deadline_passing_mid_stream_ends_with_the_deadline_error(pyz_path, cache_home, mock, tmp_path) -> None:
    env = mock_env(cache_home, mock)
    proc = ServerProcess(pyz_path, tmp_path / "stockyard.db", env)
    # set before the start, which reads it: set after, a first 2.4 s stream could go whole before the reload
    assert proc.cli("modules", "set", "timeout", "deadline_s=1").returncode == 0
    assert proc.cli("modules", "enable", "timeout").returncode == 0
    proc.start()

    def cut_by_the_deadline() -> tuple[bytes, str] | None:
        mock.enqueue(Reply(sse=[json.dumps({"choices": [{"delta": {"content": "x"}}]})] * 8, sse_delay_ms=300))
        status, data, trace_id = stream_chat(proc.port)
        return (data, trace_id) if status == 200 and b"deadline" in data else None

    try:
        data, trace_id = wait_for(cut_by_the_deadline, 20, "a stream cut by the deadline")
        payloads = [e[len("data: ") :] for e in data.decode().split("\n\n") if e.startswith("data: ")]
        assert len(payloads) >= 2 and "[DONE]" not in payloads
        assert json.loads(payloads[-1])["error"]["code"] == "deadline_exceeded"
        trace = proc.trace(trace_id)
        assert (trace["outcome"], trace["error_type"]) == ("stream_broken", "deadline_exceeded")
    finally:
        proc.stop()


def test_tls_streams_through_a_server_arrive_whole(pyz_path, cache_home, tmp_path, tls_mock) -> None:
    upstream, ca_file = tls_mock
    env = {
        **base_env(cache_home),
        "OPENAI_API_KEY": "sk-test-tls-123456",
        "OPENAI_BASE_URL": upstream.url + "/v1",
        "SSL_CERT_FILE": str(ca_file),
    }
    proc = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        pad = "y" * 40_000
        events = [json.dumps({"choices": [{"delta": {"content": f"{i}{pad if i % 2 else ''}"}}]}) for i in range(6)]
        n = 20
        for _ in range(n):
            upstream.enqueue(Reply(sse=[*events, "[DONE]"], sse_delay_ms=20))
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda _: stream_chat(proc.port, "gpt-4o-mini-tls-relay"), range(n)))
        for status, data, _ in results:
            payloads = [e[len("data: ") :] for e in data.decode().split("\n\n") if e.startswith("data: ")]
            assert status == 200 and payloads == [*events, "[DONE]"]
        rows = wait_for(
            lambda: (
                (r := proc.db_rows("SELECT outcome FROM traces WHERE model = 'gpt-4o-mini-tls-relay'"))
                and len(r) == n
                and r
            ),
            what="a trace per stream",
        )
        assert {row["outcome"] for row in rows} == {"ok"}
    finally:
        proc.stop()

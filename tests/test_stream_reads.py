"""Reading an upstream SSE answer (upstream.UpstreamResponse.events): the chunked framing taken off
per socket read, the events of one read handed over together, the connection pooled after a clean
end and dropped after a broken one. A raw socket server plays the provider, so every byte split is
the test's choice."""

from __future__ import annotations

import socket
import threading
from typing import Iterator

import pytest

from stockyard.providers.base import sse_data
from stockyard.upstream import Pool, UpstreamError

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENTS = [b'data: {"n":1}\n\n', b'data: {"n":2}\n\n', b"data: [DONE]\n\n"]


def chunk(data: bytes, ext: bytes = b"") -> bytes:
    return b"%x%s\r\n%s\r\n" % (len(data), ext, data)


class Provider:
    """Answers each request on one connection with the next script: a list of byte strings sent
    one `sendall` each (after the request head arrived)."""

    def __init__(self, *scripts: list[bytes]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, args=(list(scripts),), daemon=True)
        self._thread.start()

    def _serve(self, scripts: list[list[bytes]]) -> None:
        while scripts:
            conn, _ = self.listener.accept()
            self.connections += 1
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while scripts:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        got = conn.recv(65536)
                        if not got:
                            break
                        head += got
                    if not head:
                        break
                    for piece in scripts.pop(0):
                        conn.sendall(piece)
                    if scripts and scripts[0] == []:  # an empty script: close this connection
                        scripts.pop(0)
                        break

    def close(self) -> None:
        self.listener.close()
        self._thread.join(timeout=5)


@pytest.fixture
def pool() -> Iterator[Pool]:
    p = Pool(connect_timeout=5, read_timeout=5)
    yield p
    p.close()


def stream(pool: Pool, provider: Provider) -> list[list[bytes]]:
    resp = pool.request(provider.url, "POST", "/v1/chat/completions", {"Content-Type": "application/json"}, b"{}")
    return list(resp.events())


def test_events_of_one_read_come_together_and_the_connection_is_reused(pool: Pool) -> None:
    together = [HEAD + b"".join(chunk(e) for e in EVENTS) + b"0\r\n\r\n"]
    one_chunk = [HEAD + chunk(b"".join(EVENTS)) + b"0\r\n\r\n"]
    provider = Provider(together, one_chunk)
    try:
        assert stream(pool, provider) == [EVENTS]  # one read, one batch: relayed as one write
        assert stream(pool, provider) == [EVENTS]
        assert provider.connections == 1  # read to its end, both times: back to the pool
    finally:
        provider.close()


def test_any_split_of_the_bytes_gives_the_same_events(pool: Pool) -> None:
    body = b"".join(chunk(e, b";ext=1" if i else b"") for i, e in enumerate(EVENTS))
    wire = HEAD + body + b"0\r\nx-trailer: yes\r\n\r\n"
    byte_by_byte = [wire[i : i + 1] for i in range(len(wire))]
    provider = Provider(
        byte_by_byte, [HEAD + chunk(b'data: {"n":1}\r\n\r\ndata: {"n"') + chunk(b":2}\n\n") + b"0\r\n\r\n"]
    )
    try:
        assert [e for batch in stream(pool, provider) for e in batch] == EVENTS
        assert [e for batch in stream(pool, provider) for e in batch] == EVENTS[:2]
        assert provider.connections == 1  # the trailer was read: the connection is clean
    finally:
        provider.close()


@pytest.mark.parametrize(
    ("body", "relayed"),
    [
        (chunk(EVENTS[0]) + b"zz\r\n", 1),  # not a chunk size
        (chunk(EVENTS[0])[:-2] + b"XX" + chunk(EVENTS[1]), 1),  # chunk data without its CRLF
        (chunk(EVENTS[0]) + b"40\r\n" + EVENTS[1], 2),  # cut inside a chunk (whole events before the cut)
        (chunk(EVENTS[0]), 1),  # cut before the last chunk
    ],
)
def test_a_broken_stream_raises_after_the_events_before_the_break(pool: Pool, body: bytes, relayed: int) -> None:
    provider = Provider([HEAD + body], [], [HEAD + b"".join(chunk(e) for e in EVENTS) + b"0\r\n\r\n"])
    try:
        resp = pool.request(provider.url, "POST", "/v1/chat/completions", {}, b"{}")
        got = []
        with pytest.raises(UpstreamError) as caught:
            for batch in resp.events():
                got += batch
        assert caught.value.kind == "reset" and got == EVENTS[:relayed]
        assert stream(pool, provider) == [EVENTS]
        assert provider.connections == 2  # the broken connection was never reused
    finally:
        provider.close()


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (b'data: {"a":1}\n\n', b'{"a":1}'),  # the one-line fast path
        (b"data:[DONE]\n\n", b"[DONE]"),
        (b"data: a\ndata: b\n\n", b"a\nb"),
        (b"event: ping\ndata: x\n\n", b"x"),
        (b": comment\n\n", None),
        (b"\ndata: y\n\n", b"y"),
        (b"data: z\n\n\n", b"z"),
    ],
)
def test_sse_data(event: bytes, data: bytes | None) -> None:
    assert sse_data(event) == data

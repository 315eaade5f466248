"""An idle pooled connection the provider closed is not written into: the next request goes on a
new connection, and the provider never sees it twice (real sockets, a provider of raw HTTP)."""

from __future__ import annotations

import select
import socket
import threading
import time

import pytest

from stockyard.upstream import Pool, UpstreamError

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def read_request(conn: socket.socket, body: bytes = b"") -> bool:
    """Read one request's head (and its ``body`` when given, which ends it) from ``conn``; False when
    the caller closed the connection first."""
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(body):
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    return True


class ClosingProvider:
    """Answers one request per connection with keep-alive, then closes its sending side (FIN) as
    a provider does with an idle connection — and keeps reading, to see what comes after."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.after_close: list[bytes] = []  # per connection: bytes received after its FIN was sent
        self.requests = 0
        self.closed = threading.Event()  # the first connection's FIN was sent
        self.read_out = threading.Semaphore(0)  # released as each connection's after-FIN bytes are all read
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            if not read_request(conn):
                return
            self.requests += 1
            conn.sendall(ANSWER)
            conn.shutdown(socket.SHUT_WR)
            self.closed.set()
            rest = b""
            while chunk := conn.recv(65536):
                rest += chunk
            self.after_close.append(rest)
            self.read_out.release()

    def close(self) -> None:
        self.listener.close()


def test_a_connection_the_provider_closed_while_idle_is_not_reused() -> None:
    provider = ClosingProvider()
    pool = Pool(connect_timeout=5, read_timeout=5)
    url = f"http://127.0.0.1:{provider.port}"
    try:
        first = pool.request(url, "POST", "/v1/chat/completions", {"content-type": "application/json"}, b"{}")
        assert first.read_all() == b"{}"  # read to the end: back in the pool
        assert provider.closed.wait(5)
        ((idle, _),) = pool._idle[next(iter(pool._idle))]
        assert select.select([idle.sock], [], [], 5)[0], "the FIN reached this side"
        second = pool.request(url, "POST", "/v1/chat/completions", {"content-type": "application/json"}, b"{}")
        assert second.read_all() == b"{}"
        pool.close()
        assert provider.requests == 2
        assert provider.read_out.acquire(timeout=5) and provider.read_out.acquire(timeout=5), "both closed"
        assert provider.after_close == [b"", b""], "the second request was written into the closed connection"
    finally:
        provider.close()


class UnreadClosingProvider:
    """Answers one request per connection with keep-alive (saying nothing of a close), then closes the
    connection as soon as the next request's bytes arrive, unread: a provider whose keep-alive ended
    as the request came (its kernel answers the unread bytes with a reset). It read each request it
    counts whole."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            if not read_request(conn, b"{}"):
                return
            self.requests += 1
            conn.sendall(ANSWER)
            conn.recv(1, socket.MSG_PEEK)  # the next request has come: closed with it unread

    def close(self) -> None:
        self.listener.close()


def test_a_post_a_provider_closed_on_unread_is_sent_again_on_a_new_connection() -> None:
    """The keep-alive race: the provider closed a reused connection with the POST unread (its keep-alive
    ended as the request came). Was (review 33, aad2aa4): a 502 ``upstream_reset`` though the provider
    never read it; a break within ``STALE_WINDOW_S`` of the write goes once more on a new connection."""
    provider = UnreadClosingProvider()
    pool = Pool(connect_timeout=5, read_timeout=5)
    url = f"http://127.0.0.1:{provider.port}"
    try:
        first = pool.request(url, "POST", "/v1/chat/completions", {"content-type": "application/json"}, b"{}")
        assert first.read_all() == b"{}"  # read to the end: back in the pool
        second = pool.request(url, "POST", "/v1/chat/completions", {"content-type": "application/json"}, b"{}")
        assert second.read_all() == b"{}"
        assert provider.requests == 2
    finally:
        pool.close()
        provider.close()


class WorkThenDropProvider(UnreadClosingProvider):
    """Answers the first request on a connection; a second it reads whole, works on for longer than
    ``STALE_WINDOW_S``, then closes the connection without answering (its work done, the answer lost)."""

    def _one(self, conn: socket.socket) -> None:
        from stockyard.upstream import STALE_WINDOW_S

        with conn:
            for n in (1, 2):
                if not read_request(conn, b"{}"):
                    return
                self.requests += 1
                if n == 1:
                    conn.sendall(ANSWER)
            time.sleep(STALE_WINDOW_S + 0.5)  # the work: a drop after it is no keep-alive race


def test_a_post_the_provider_read_whole_and_worked_on_is_never_sent_twice() -> None:
    """Was (before aad2aa4): a reused connection that closed unanswered after the provider read the
    whole POST and worked on it looked stale, and the request went again on a new one — a completion
    (or a batch, a video) the provider may have done and billed, done twice. A POST whose connection
    broke later than ``STALE_WINDOW_S`` after it was written is not sent again: the caller's reset."""
    provider = WorkThenDropProvider()
    pool = Pool(connect_timeout=5, read_timeout=5)
    url = f"http://127.0.0.1:{provider.port}"
    try:
        first = pool.request(url, "POST", "/v1/chat/completions", {"content-type": "application/json"}, b"{}")
        assert first.read_all() == b"{}"
        with pytest.raises(UpstreamError) as failed:
            pool.request(url, "POST", "/v1/chat/completions", {"content-type": "application/json"}, b"{}")
        assert failed.value.kind == "reset" and provider.requests == 2  # the second once, never again
    finally:
        pool.close()
        provider.close()

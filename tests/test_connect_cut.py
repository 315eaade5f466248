"""A provider call still connecting (TCP handshake or TLS handshake to a provider that never
answers) is ended by the client leaving and by the end of a SIGTERM drain, like a call waiting
for its answer: the request answers at once and writes its trace (was: it went on connecting for
up to STOCKYARD_UPSTREAM_CONNECT_TIMEOUT, and at shutdown its trace was lost)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import sys
import threading
import time
from typing import Callable

import pytest
from conftest import ServerProcess, base_env, wait_for
from mock_upstream import Reply

from stockyard.upstream import Cancel, Pool, UpstreamError

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux's accept-queue overflow and /proc/net/tcp")

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
SYN_SENT = "02"  # the state column of /proc/net/tcp


class Blackhole:
    """A provider that never completes the TCP handshake: a listener whose accept queue (backlog 0)
    is full and never accepted from. Linux then drops every further SYN, so a connect to it stays
    in SYN_SENT until its timeout. The filling checks that: it stops at the first connect that
    does not complete."""

    scheme = "http"

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.queued: list[socket.socket] = []
        for _ in range(8):
            probe = socket.socket()
            probe.settimeout(0.5)
            try:
                probe.connect(("127.0.0.1", self.port))
            except TimeoutError:
                probe.close()
                break
            self.queued.append(probe)
        else:
            raise AssertionError("the accept queue never filled: a connect to this blackhole would not hang")
        assert not self.connecting(), "the probe's SYN_SENT socket is gone"

    def connecting(self) -> bool:
        """Some socket is in SYN_SENT towards the blackhole (the server's connect, waiting)."""
        with open("/proc/net/tcp") as table:
            rows = [line.split() for line in table.readlines()[1:]]
        return any(int(row[2].rsplit(":", 1)[1], 16) == self.port and row[3] == SYN_SENT for row in rows)

    def ended(self) -> bool:
        return not self.connecting()

    def close(self) -> None:
        for sock in self.queued:
            sock.close()
        self.listener.close()


class SilentTLS:
    """A provider that completes the TCP handshake but never answers the TLS ClientHello: it
    accepts, reads the hello, and waits for the other side to go."""

    scheme = "https"

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.hello = threading.Event()  # a ClientHello arrived: the handshake is under way
        self.gone = threading.Event()  # the connecting side closed or reset its connection
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            try:
                record = conn.recv(5)
                if record[:1] == b"\x16":  # a TLS handshake record
                    self.hello.set()
                while conn.recv(65536):
                    pass
            except OSError:
                pass
            self.gone.set()

    def connecting(self) -> bool:
        return self.hello.is_set()

    def ended(self) -> bool:
        return self.gone.is_set()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(params=["tcp", "tls"])
def stuck(request):
    """A provider stuck at the TCP handshake (``tcp``) or at the TLS handshake (``tls``)."""
    provider = Blackhole() if request.param == "tcp" else SilentTLS()
    yield provider
    provider.close()


def serve(pyz_path, cache_home, tmp_path, provider, grace: str = "20s") -> ServerProcess:
    env = {
        **base_env(cache_home),
        "OPENAI_API_KEY": "sk-test-connect-1234",
        "OPENAI_BASE_URL": f"{provider.scheme}://127.0.0.1:{provider.port}/v1",
        "STOCKYARD_UPSTREAM_CONNECT_TIMEOUT": "60",
        "STOCKYARD_SHUTDOWN_GRACE": grace,
    }
    return ServerProcess(pyz_path, tmp_path / "s.db", env).start()


def test_the_blackhole_holds_a_connect(stuck) -> None:
    """The test setup itself: a connect to either provider neither completes nor fails."""
    probe = socket.socket()
    probe.settimeout(1.0)
    if isinstance(stuck, Blackhole):
        with pytest.raises(TimeoutError):
            probe.connect(("127.0.0.1", stuck.port))
    else:
        probe.connect(("127.0.0.1", stuck.port))
        with pytest.raises(TimeoutError):
            ssl.create_default_context().wrap_socket(probe, server_hostname="127.0.0.1")
    probe.close()


def test_the_drain_ends_a_call_still_connecting_and_keeps_its_trace(pyz_path, cache_home, tmp_path, stuck) -> None:
    """Was: Pool.stop_calls did not reach a call in its connect; the server gave up waiting for it,
    closed the database, and the request's trace was lost (its client got no answer)."""
    server = serve(pyz_path, cache_home, tmp_path, stuck, grace="1s")
    answers: list[tuple[int, dict] | BaseException] = []

    def call() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=90)
        try:
            conn.request("POST", "/v1/chat/completions", BODY, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            answers.append((resp.status, json.loads(resp.read())))
        except (OSError, http.client.HTTPException) as exc:
            answers.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    wait_for(stuck.connecting, 30, "the server connecting to the provider")
    started = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=90) == 0
    took = time.monotonic() - started
    caller.join(30)
    assert answers and not isinstance(answers[0], BaseException), answers
    status, body = answers[0]
    assert status == 503 and body["error"]["code"] == "server_shutting_down", body
    rows = server.db_rows("SELECT status, error_type FROM traces")
    assert [(r["status"], r["error_type"]) for r in rows] == [(503, "server_shutting_down")], server.log
    assert "gave up waiting" not in server.log and "Traceback" not in server.log
    assert took < 1 + 5, f"the stop took {took:.1f} s"  # the grace and the cut, not the connect timeout
    wait_for(stuck.ended, 10, "the provider connection ended")


def test_a_client_leaving_ends_a_call_still_connecting(pyz_path, cache_home, tmp_path, stuck) -> None:
    """Was: the client's leaving did not reach the connect: the call went on for the whole connect
    timeout (60 s here) before the request ended."""
    server = serve(pyz_path, cache_home, tmp_path, stuck)
    try:
        client = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
        )
        client.sendall(head.encode() + BODY.encode())
        wait_for(stuck.connecting, 30, "the server connecting to the provider")
        client.close()
        rows = wait_for(lambda: server.db_rows("SELECT outcome, error_message FROM traces"), 10, "the trace")
        assert [r["outcome"] for r in rows] == ["client_disconnected"], rows
        assert "upstream request was ended" in rows[0]["error_message"]
        wait_for(stuck.ended, 10, "the provider connection ended")
    finally:
        server.stop()
    assert "Traceback" not in server.log


@pytest.mark.parametrize("ended", ["cancelled", "left", "stopping"])
def test_an_ended_call_starts_no_connect(ended: str) -> None:
    """A call whose client left (a stream's, or a whole answer's: ``leave``), or that the stopping
    pool refuses, never opens a connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    pool, cancel = Pool(), Cancel()
    if ended == "cancelled":
        cancel.cancel()
    elif ended == "left":
        cancel.leave()
    else:
        pool.stop_calls()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    with pytest.raises(UpstreamError) as raised:
        pool.request(url, "GET", "/models", {}, None, cancel=cancel)
    assert raised.value.kind == ("shutdown" if ended == "stopping" else "cancelled")
    with pytest.raises(BlockingIOError):  # nothing connected: no connection waits to be accepted
        listener.accept()
    listener.close()


def test_a_call_sent_goes_on_after_its_client_left_and_the_next_is_never_sent(mock) -> None:
    """``leave`` while a sent request waits for its answer: the answer still comes, read whole (the
    provider bills it); a call after that (a retry's) starts nothing, and is not marked sent — an
    earlier call's mark must not make a call never sent look billed."""
    reached, release = threading.Event(), threading.Event()
    mock.enqueue(Reply(held=release, hang_started=reached))
    pool, cancel = Pool(), Cancel()
    answers: list[bytes] = []
    url = mock.url + "/v1"

    def call() -> None:
        answers.append(pool.request(url, "GET", "/models", {}, None, cancel=cancel).read_all())

    caller = threading.Thread(target=call)
    caller.start()
    assert reached.wait(10)
    assert cancel.sent
    cancel.leave()
    release.set()
    caller.join(10)
    assert answers and json.loads(answers[0])["object"] == "list"
    with pytest.raises(UpstreamError) as raised:
        pool.request(url, "GET", "/models", {}, None, cancel=cancel)
    assert raised.value.kind == "cancelled" and not cancel.sent
    pool.close()


def connect_ended_by(end: Callable[[Pool, Cancel], None], provider) -> tuple[UpstreamError, float]:
    """What a pool call to ``provider`` raises when ``end`` is called while it connects, and how
    long after that it returned."""
    pool, cancel = Pool(connect_timeout=60), Cancel()
    raised: list[UpstreamError] = []

    def call() -> None:
        try:
            pool.request(f"{provider.scheme}://127.0.0.1:{provider.port}/v1", "GET", "/models", {}, None, cancel=cancel)
        except UpstreamError as exc:
            raised.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    wait_for(provider.connecting, 10, "the pool connecting")
    ended = time.monotonic()
    end(pool, cancel)
    caller.join(30)
    assert raised, "the call was still connecting 30 s later"
    return raised[0], time.monotonic() - ended


@pytest.mark.parametrize("how", ["client", "shutdown"])
def test_the_pool_ends_a_connect_in_progress(stuck, how: str) -> None:
    end = (lambda pool, cancel: cancel.cancel()) if how == "client" else (lambda pool, cancel: pool.stop_calls())
    error, took = connect_ended_by(end, stuck)
    assert error.kind == ("cancelled" if how == "client" else "shutdown"), error
    assert took < 5, f"the call ended {took:.1f} s later"
    wait_for(stuck.ended, 10, "the provider connection ended")


def test_a_connect_past_its_timeout_is_a_timeout(stuck) -> None:
    """The connect timeout still holds for each stage (the pool opens its sockets itself now)."""
    pool = Pool(connect_timeout=0.5)
    with pytest.raises(UpstreamError) as raised:
        pool.request(f"{stuck.scheme}://127.0.0.1:{stuck.port}/v1", "GET", "/models", {}, None)
    assert raised.value.kind == "timeout" and raised.value.status == 504
    assert str(raised.value) == f"timed out connecting to 127.0.0.1:{stuck.port}"


def test_a_refused_connect_names_the_provider_address() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now: the connect is refused
    with pytest.raises(UpstreamError) as raised:
        Pool().request(f"http://127.0.0.1:{port}/v1", "GET", "/models", {}, None)
    assert raised.value.kind == "connect" and raised.value.status == 502
    assert str(raised.value) == f"cannot connect to 127.0.0.1:{port}: Connection refused"

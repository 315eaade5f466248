"""Accepting connections and the threads that serve them (issue 18): the accept loop takes every
waiting connection per wake-up (server.py), and threads are kept for reuse (threadcache.py). Real
threads and sockets, the real server in process."""

from __future__ import annotations

import http.client
import os
import resource
import socket
import threading
import time

import pytest
from conftest import ServerProcess, mock_env, wait_for

from stockyard import config
from stockyard.app import App
from stockyard.server import make_server
from stockyard.threadcache import ThreadCache


def served_by(cache: ThreadCache) -> threading.Thread:
    """Run one job on ``cache`` and return the thread that ran it, once it waits for the next."""
    ran: list[threading.Thread] = []
    finish = threading.Event()

    def job() -> None:
        ran.append(threading.current_thread())
        assert finish.wait(10)

    cache.run(job)  # returns once a thread has taken the job
    before = cache.waiting()
    finish.set()
    wait_for(lambda: cache.waiting() > before or not ran[0].is_alive(), what="the thread back in the cache or ended")
    return ran[0]


def test_a_thread_that_finished_its_job_runs_the_next():
    cache = ThreadCache(keep=4, idle_s=30)
    try:
        first = served_by(cache)
        assert cache.waiting() == 1
        assert served_by(cache) is first and first.is_alive()
    finally:
        cache.close()
    first.join(10)
    assert not first.is_alive(), "close ends the waiting threads"


def test_a_thread_waits_only_idle_s_then_ends():
    cache = ThreadCache(keep=4, idle_s=0.05)
    thread = served_by(cache)
    thread.join(10)
    assert not thread.is_alive() and cache.waiting() == 0
    assert served_by(cache) is not thread, "a new thread serves once none waits"
    cache.close()


def test_at_most_keep_threads_wait():
    cache = ThreadCache(keep=2, idle_s=30)
    barrier = threading.Barrier(5)
    threads: list[threading.Thread] = []
    for _ in range(4):
        cache.run(lambda: (threads.append(threading.current_thread()), barrier.wait(10)))
    barrier.wait(10)  # four jobs run at once on four threads
    wait_for(lambda: sum(t.is_alive() for t in threads) == 2, what="the two threads beyond keep ending")
    assert len(set(threads)) == 4 and cache.waiting() == 2
    cache.close()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)


def test_no_job_is_lost_or_run_twice_when_waits_run_out_as_jobs_arrive():
    """Idle waits of a millisecond race the hand-over: each job still runs exactly once."""
    cache = ThreadCache(keep=8, idle_s=0.001)
    counts: dict[int, int] = {}
    lock = threading.Lock()
    all_done = threading.Semaphore(0)

    def job(i: int) -> None:
        with lock:
            counts[i] = counts.get(i, 0) + 1
        all_done.release()

    for i in range(2000):
        cache.run(job, i)
    for _ in range(2000):
        assert all_done.acquire(timeout=10)
    assert counts == {i: 1 for i in range(2000)}
    cache.close()


@pytest.fixture
def server(tmp_path):
    """The real server in process on a real database, serving on a thread."""
    env = {"OPENAI_API_KEY": "sk-test-0123456789", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    app = App(config.load({"db": str(tmp_path / "stockyard.db"), "port": 0}, env=env), env=env)
    srv = make_server(app)
    loop = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    loop.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    app.close()


def one_connection(srv, path: str = "/healthz") -> list[threading.Thread]:
    """A new connection with one request; the connection threads alive while it was open."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read()
    serving = [t for t in threading.enumerate() if t.name == srv.threads.name]
    conn.close()
    return serving


def test_the_server_serves_a_new_connection_on_the_thread_of_a_finished_one(server):
    (first,) = one_connection(server)
    wait_for(lambda: server.threads.waiting() == 1, what="the connection's thread waiting for the next")
    assert one_connection(server) == [first], "the same thread, no new one"
    server.server_close()
    first.join(10)
    assert not first.is_alive(), "closing the server ends its waiting threads"


def test_a_read_left_open_does_not_follow_the_thread_into_its_next_connection(tmp_path):
    env = {"OPENAI_API_KEY": "sk-test-0123456789"}
    app = App(config.load({"db": str(tmp_path / "stockyard.db")}, env=env), env=env)
    try:
        conn = app.store.read()
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM traces").fetchone()
        assert conn.in_transaction
        app.store.end_reads()
        assert not conn.in_transaction
        app.store.end_reads()  # nothing open: nothing to do
    finally:
        app.close()


def test_a_burst_is_accepted_whole_and_the_loop_still_stops(server):
    """Connections queued at once are all served, and the loop, having emptied the queue, goes
    back to waiting: a blocking accept would hang it (and its shutdown) until the next client."""
    port = server.server_address[1]
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    for s in socks:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    for s in socks:
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        s.close()
    assert server.socket.getblocking() is False
    stopped = threading.Thread(target=server.shutdown)
    stopped.start()
    stopped.join(10)
    assert not stopped.is_alive(), "the accept loop went back to waiting and saw the shutdown"


def test_out_of_file_descriptors_the_accept_loop_rests_instead_of_spinning(pyz_path, cache_home, mock, tmp_path):
    """accept() failing with EMFILE leaves the connections queued and the listening socket
    readable: the loop retried at once, a full core for as long as the server had no descriptor
    to spare (a keyholder's concurrent uploads hold three each). It rests between tries, says so,
    and serves again once descriptors are free."""
    caps = {"STOCKYARD_MAX_CONNECTIONS": "500", "STOCKYARD_MAX_CONNECTIONS_PER_CLIENT": "500"}
    server = ServerProcess(pyz_path, tmp_path / "fds.db", mock_env(cache_home, mock, **caps)).start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (64, 64))
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(80)]
        wait_for(lambda: len(os.listdir(f"/proc/{pid}/fd")) >= 63, what="the server out of descriptors")
        before, started = server.cpu_seconds(), time.monotonic()
        time.sleep(2)  # a measuring window, not a synchronisation: the CPU the loop uses meanwhile
        share = (server.cpu_seconds() - before) / (time.monotonic() - started)
        assert share < 0.25, f"the accept loop spins: {share:.0%} of a core"
        wait_for(lambda: "out of file descriptors" in server.log, what="the log saying why it waits")
        for s in held:
            s.close()
        status, _, _ = server.request("GET", "/healthz")
        assert status == 200
    finally:
        server.stop()

"""The proxy keeps its promises under faults: a crash, an unwritable disk, broken upstreams,
vanishing and slow clients, and whatever bytes the network brings.
"""

from __future__ import annotations

import http.client
import json
import re
import resource
import select
import socket
import threading
import time

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mock_upstream import MockUpstream, Reply
from ops_helpers import Load, integrity, verify_audit

SECRET = "faults-test-encryption-secret-0123456789"
ADMIN = "faults-admin-key-0123456789"
HELLO = [{"role": "user", "content": "hi"}]
BATCH_MAX = 512  # Writer.batch_max: the most one commit holds


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


# -- crash ----------------------------------------------------------------------------------------


@pytest.mark.serial
def test_kill_9_under_load_loses_nothing_committed(pyz_path, cache_home, mock, tmp_path):
    """What a crash may cost is the writer's window: the records queued and the batch being
    committed. Everything committed survives, and the file opens clean."""
    env = mock_env(
        cache_home,
        mock,
        OPENAI_API_KEY="sk-test-kill-123456",
        STOCKYARD_ENCRYPTION_KEY=SECRET,
        STOCKYARD_LOG_REQUESTS="0",
    )
    path = tmp_path / "stockyard.db"
    srv = ServerProcess(pyz_path, path, env).start()
    with Load(srv.port, threads=16) as load:
        wait_for(lambda: len(load.answered) >= 600, 30, "load")
        answered_then, queued = len(load.answered), srv.metric("writer_queue_depth")
        committed = {r["id"] for r in srv.db_rows("SELECT id FROM traces")}  # read while the writer writes
        srv.proc.kill()
        srv.proc.wait(10)
    answered = list(load.answered)

    assert integrity(path) == "ok", "the database opens clean"
    stored = {r["id"] for r in srv.db_rows("SELECT id FROM traces")}
    assert committed <= stored, f"{len(committed - stored)} committed traces were lost"
    missing = [t for t in answered if t not in stored]
    print(
        f"\nkill -9 under load: {len(answered)} requests answered, {len(stored)} traces stored, "
        f"{len(missing)} answered requests without a trace; writer queue depth just before: {queued:.0f}"
    )
    window = queued + BATCH_MAX + (len(answered) - answered_then) + 16  # queue + batch in commit + since + in flight
    assert len(missing) <= window, f"{len(missing)} of {len(answered)} answered requests lost their trace"

    again = ServerProcess(pyz_path, path, env).start()  # the kernel dropped the lock with the process
    try:
        assert again.request("GET", "/readyz")[0] == 200
        status, headers, _ = again.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})
        assert status == 200 and again.trace(headers["x-stockyard-trace-id"])
    finally:
        again.stop()
    check = verify_audit(path, SECRET)
    assert check.ok, check.reason
    assert "Traceback" not in again.log


# -- unwritable database --------------------------------------------------------------------------


@pytest.mark.serial
def test_unwritable_database_keeps_serving_reports_it_and_recovers(pyz_path, cache_home, mock, tmp_path):
    """A file-size limit of 1 byte on the running server: every database write fails (EFBIG),
    exactly as on a full disk, and lifting it is "space returns"."""
    env = mock_env(cache_home, mock, OPENAI_API_KEY="sk-test-full-123456", STOCKYARD_LOG_REQUESTS="0")
    path = tmp_path / "stockyard.db"
    srv = ServerProcess(pyz_path, path, env).start()
    pid = srv.proc.pid
    try:
        for _ in range(5):
            assert srv.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})[0] == 200
        wait_for(lambda: path.with_name(path.name + "-wal").stat().st_size == 0, 10, "idle checkpoint")
        stored_before = len(srv.db_rows("SELECT id FROM traces"))
        rss_before = rss_kb(pid)

        resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
        try:
            with Load(srv.port, threads=8) as load:
                wait_for(lambda: len(load.answered) >= 1500, 60, "load while the disk is full")
            assert not load.failures, load.failures[:3]
            status, _, body = srv.request("GET", "/readyz")
            assert status == 503 and "not writable" in json.loads(body)["database"]
            assert srv.request("GET", "/healthz")[0] == 200
            assert srv.metric("database_writable") == 0
            dropped = srv.metric("records_dropped_total")
            assert dropped >= len(load.answered) * 0.9
            assert srv.metric("writer_queue_depth") <= srv.metric("writer_queue_capacity")
            growth_mb = (rss_kb(pid) - rss_before) / 1024
            assert growth_mb < 40, f"memory grew {growth_mb:.0f} MB while records were dropped"
            failures_logged = srv.log.count("database write failed")
            assert 1 <= failures_logged <= 3, "logged, but not once per batch"
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

        wait_for(lambda: srv.request("GET", "/readyz")[0] == 200, 15, "ready again once space returns")
        status, headers, _ = srv.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})
        assert status == 200 and srv.trace(headers["x-stockyard-trace-id"])
        assert srv.metric("database_writable") == 1
        wait_for(lambda: "database writable again" in srv.log, 5, "recovery logged")
        stored_after = len(srv.db_rows("SELECT id FROM traces"))
        print(
            f"\nunwritable: {len(load.answered)} requests served while writes failed, {dropped:.0f} records "
            f"dropped, memory +{growth_mb:.1f} MB; traces {stored_before} before, {stored_after} after recovery"
        )
    finally:
        srv.stop()
    assert integrity(path) == "ok"
    assert "Traceback" not in srv.log


# -- a shared server for the network faults -------------------------------------------------------


@pytest.fixture(scope="module")
def bad_mock():
    with MockUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, bad_mock, tmp_path_factory):
    """openai → the healthy mock; groq → a mock scripted to misbehave. Short deadlines."""
    env = mock_env(
        cache_home,
        mock,
        OPENAI_API_KEY="sk-test-faults-123456",
        GROQ_API_KEY="gsk-test-faults-123456",
        GROQ_BASE_URL=bad_mock.url + "/v1",
        STOCKYARD_UPSTREAM_TIMEOUT="1",
        STOCKYARD_REQUEST_READ_TIMEOUT="2",
        STOCKYARD_MAX_BODY_BYTES="262144",
        STOCKYARD_ADMIN_KEY=ADMIN,
        STOCKYARD_LOG_REQUESTS="0",
    )
    with served(pyz_path, tmp_path_factory, "faults", env, never_logged=("unexpected error",)) as srv:
        yield srv


def timed_chat(srv: ServerProcess, model: str = "gpt-4o-mini", stream: bool = False) -> tuple[int, float, str]:
    started = time.monotonic()
    status, headers, _ = srv.request(
        "POST", "/v1/chat/completions", {"model": model, "messages": HELLO, "stream": stream}
    )
    return status, time.monotonic() - started, headers.get("x-stockyard-trace-id", "")


@pytest.mark.perf
def test_hanging_resetting_and_garbage_upstreams_do_not_slow_others(server, bad_mock):
    garbage = Reply(body=b"<html>surprise</html>", headers={"content-type": "text/html"})
    bad_sse = Reply(sse=["{not json", "also not json"])
    bad_mock.enqueue(*[Reply(hang_s=3)] * 8, *[Reply(reset=True)] * 8, *[garbage] * 6, *[bad_sse] * 6)
    bad: list[tuple[int, float, str]] = []
    threads = [
        threading.Thread(target=lambda s=(i % 4 == 3): bad.append(timed_chat(server, "groq/llama-3.3-70b", s)))
        for i in range(24)
    ]
    seen = len(bad_mock.requests)
    for t in threads:
        t.start()
    wait_for(lambda: len(bad_mock.requests) >= seen + 8, 10, "the hanging requests to reach the bad upstream")
    good = [timed_chat(server) for _ in range(15)]
    for t in threads:
        t.join(30)
    bad_mock.clear_replies()
    assert all(status == 200 for status, _, _ in good)
    slowest = max(elapsed for _, elapsed, _ in good)
    assert slowest < 1.0, f"a healthy request took {slowest:.2f}s while an upstream misbehaved"
    assert len(bad) == 24 and {status for status, _, _ in bad} <= {200, 502, 504}, bad
    assert {status for status, _, _ in bad} & {502, 504}
    for status, _, trace_id in bad:
        trace = server.trace(trace_id)
        assert trace["provider"] == "groq" and (status != 200 or trace["outcome"] != "ok" or trace["stream"])


@pytest.mark.perf
def test_clients_vanishing_mid_stream_end_their_upstream_requests(server, bad_mock):
    """Each stream would take ~3 s upstream; a client that leaves after the first event ends it early."""
    bad_mock.enqueue(*[Reply(sse_delay_ms=500)] * 10)
    trace_ids: list[str] = []

    def leave_early() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request(
            "POST",
            "/v1/chat/completions",
            json.dumps({"model": "groq/llama-3.3-70b", "messages": HELLO, "stream": True}),
            {"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        trace_ids.append(resp.getheader("x-stockyard-trace-id"))
        resp.read1(65536)
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()

    threads = [threading.Thread(target=leave_early) for _ in range(10)]
    for t in threads:
        t.start()
    good = [timed_chat(server) for _ in range(5)]
    for t in threads:
        t.join(15)
    assert all(status == 200 for status, _, _ in good)
    for trace_id in trace_ids:
        trace = server.trace(trace_id, timeout=15)
        assert trace["outcome"] == "client_disconnected"
        assert trace["latency_us"] < 2_500_000, "the upstream stream was not read to its end"


@pytest.mark.serial
@pytest.mark.perf
def test_500_slow_clients_sending_headers_a_byte_at_a_time(server):
    payload = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    slow = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(500)]
    for sock in slow:
        sock.setblocking(False)
    open_ = set(range(len(slow)))
    stop, trickling = threading.Event(), threading.Event()

    def trickle() -> None:
        position = 0
        while not stop.is_set() and open_ and position < len(payload):
            for i in list(open_):
                try:
                    slow[i].send(payload[position : position + 1])
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    open_.discard(i)
            position += 1
            if position == 5:
                trickling.set()
            stop.wait(0.1)  # the slowness under test: one byte per client every 0.1 s

    trickler = threading.Thread(target=trickle)
    started = time.monotonic()
    trickler.start()
    try:
        assert trickling.wait(10), "the slow clients are trickling their headers"
        good = [timed_chat(server) for _ in range(10)]
        assert all(status == 200 for status, _, _ in good)
        assert max(elapsed for _, elapsed, _ in good) < 1.0
        assert server.request("GET", "/healthz")[0] == 200
        closed: set[int] = set()
        deadline = time.monotonic() + 10
        while len(closed) < len(slow) and time.monotonic() < deadline:
            readable, _, _ = select.select([s for i, s in enumerate(slow) if i not in closed], [], [], 0.5)
            for sock in readable:
                try:
                    data = sock.recv(1024)
                except OSError:
                    data = b""
                if not data:
                    closed.add(slow.index(sock))
        took = time.monotonic() - started
        assert len(closed) == len(slow), f"{len(slow) - len(closed)} slow clients still connected after {took:.1f}s"
        print(f"\n500 slow clients: all cut off within {took:.1f}s (read deadline 2s)")
    finally:
        stop.set()
        trickler.join(5)
        for sock in slow:
            sock.close()


# -- whatever the network brings ------------------------------------------------------------------

ROUTES = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/models",
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/status",
    "/api/openapi.json",
    "/api/traces",
    "/api/nope",
    "/nope",
    "*",
    "/v1/chat/completions?x=%ff&y",
    "//v1/models",
    "/v1/models/../../etc/passwd",
]
token = st.text(st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=30)
header_name = st.one_of(
    st.sampled_from(
        [
            "Content-Type",
            "Authorization",
            "X-Api-Key",
            "Connection",
            "Expect",
            "Transfer-Encoding",
            "Content-Length",
            "Host",
        ]
    ),
    token,
)
header_value = st.one_of(
    st.sampled_from(
        [
            "application/json",
            f"Bearer {ADMIN}",
            "Bearer wrong",
            "close",
            "100-continue",
            "chunked",
            "gzip, chunked",
            "-1",
            "abc",
            "99999999999",
        ]
    ),
    token,
)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
body = st.one_of(
    st.just(b""),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {
            "model": st.sampled_from(["gpt-4o-mini", "groq/x", "", "claude-3-5-haiku"]),
            "messages": st.just(HELLO),
            "stream": st.sampled_from([True, False, "yes"]),
        },
        optional={"input": json_value, "max_tokens": json_value},
    ).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.sampled_from([nested(50_000), b'{"model": ' * 20_000, b"x" * 300_000, b"\xff\xfe{}", b'{"a": 1e999999}']),
)
framing = st.sampled_from(
    [
        "length",
        "short",
        "long",
        "negative",
        "text",
        "none",
        "chunked",
        "bad-chunk",
        "truncated-chunk",
        "huge-chunk",
        "both",
    ]
)


def frame(data: bytes, how: str) -> tuple[list[tuple[str, str]], bytes]:
    length = str(len(data))
    return {
        "length": ([("Content-Length", length)], data),
        "short": ([("Content-Length", str(max(0, len(data) - 3)))], data),
        "long": ([("Content-Length", str(len(data) + 10))], data),
        "negative": ([("Content-Length", "-5")], data),
        "text": ([("Content-Length", "twelve")], data),
        "none": ([], data),
        "chunked": ([("Transfer-Encoding", "chunked")], b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)),
        "bad-chunk": ([("Transfer-Encoding", "chunked")], b"zz\r\n" + data),
        "truncated-chunk": ([("Transfer-Encoding", "chunked")], b"%x\r\n%s" % (len(data) + 50, data)),
        "huge-chunk": ([("Transfer-Encoding", "chunked")], b"fffffffffff\r\n" + data[:10]),
        "both": ([("Transfer-Encoding", "chunked"), ("Content-Length", length)], data),
    }[how]


request = st.builds(
    lambda method, target, version, headers, data, how, extra: (method, target, version, headers, data, how, extra),
    st.one_of(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "BREW"]), token),
    st.one_of(st.sampled_from(ROUTES), token),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", "", "HTTP/9.9 extra"]),
    st.lists(st.tuples(header_name, header_value), max_size=6),
    body,
    framing,
    st.sampled_from(["", "huge-header", "many-headers", "no-colon", "bare-lf"]),
)


def raw_request(method, target, version, headers, data, how, extra) -> bytes:
    framing_headers, payload = frame(data, how)
    lines = [f"{method} {target} {version}".rstrip()]
    lines += [f"{k}: {v}" for k, v in [("Host", "x"), *headers, *framing_headers]]
    if extra == "huge-header":
        lines.append("X-Big: " + "b" * 70_000)
    elif extra == "many-headers":
        lines += [f"X-H{i}: {i}" for i in range(150)]
    elif extra == "no-colon":
        lines.append("this line has no colon")
    eol = "\n" if extra == "bare-lf" else "\r\n"
    return (eol.join(lines) + eol + eol).encode("latin-1") + payload


def exchange(port: int, raw: bytes, timeout: float = 8.0) -> bytes:
    """Send everything, close our side, read until the server closes: it must, in time."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may refuse before reading everything
        data = b""
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"server still holding the connection after {timeout}s"
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return data


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(req=request)
def test_malformed_http_never_gives_500_a_traceback_or_a_hang(server, req):
    answer = exchange(server.port, raw_request(*req))
    statuses = [int(s) for s in re.findall(rb"^HTTP/1\.[01] (\d{3}) ", answer, re.M)]
    assert 500 not in statuses, answer[:500]
    assert all(s < 500 or s in (502, 503, 504, 505) for s in statuses), answer[:500]
    assert b"Traceback" not in answer


def test_the_server_is_healthy_after_the_fuzzing(server):
    assert server.request("GET", "/healthz")[0] == 200
    assert timed_chat(server)[0] == 200
    assert "Traceback" not in server.log and "unexpected error" not in server.log

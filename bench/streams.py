"""Issue 18: streams at scale, memory and start time.

- streamed TTFT at one client (the proxy over the mock, interleaved request by request);
- 200 and 1,000 concurrent streams of 20 events each against a mock that paces its events,
  direct and through the proxy in alternating bursts; the client is one selector loop (raw
  HTTP/1.1, one connection per stream), so 1,000 streams cost it no threads;
- the proxy's resident memory (/proc) after start, before any traffic, and its peak under the
  200-stream load;
- start to first answer: `serve --port 0` spawned to the first 200 from /healthz, a second
  start over the same database and cache (warm).
"""

from __future__ import annotations

import http.client
import resource
import selectors
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from common import (
    CHAT_PATH,
    MOCK,
    STREAM_BODY,
    Client,
    NotAvailable,
    Procs,
    Target,
    base_env,
    cpu_seconds,
    median,
    proxy_env,
    quantile,
    start_proxy,
)
from harness import Bench, Row, interleaved, latency_rows
from stream_floor import start_floor
from workers import group_cpu_seconds

TTFT_ADDED_MS = 0.5
STREAMS_ADDED_MS = {200: 50.0, 1000: 250.0}
IDLE_RSS_MIB = 40.0
START_S = 0.3
EVENTS = 20  # per stream
EVENT_DELAY_MS = 5.0  # the mock's pause between events


# --------------------------------------------------------------------------- processes


def raise_file_limit(wanted: int = 16384) -> None:
    """1,000 streams are 2,000+ sockets in the proxy: lift the soft limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def start_stream_mock(procs: Procs, name: str = "direct") -> Target:
    """A mock whose default streams have EVENTS events, EVENT_DELAY_MS apart."""
    raise_file_limit()  # the mock holds a socket per stream too
    argv = [sys.executable, str(MOCK), "--port", "0", "--stream-events", str(EVENTS)]
    argv += ["--sse-delay-ms", str(EVENT_DELAY_MS)]
    proc, match, log = procs.start("mock-streams", argv, base_env(procs.workdir), r"listening (http://\S+)")
    return Target(name, match.group(1), {"authorization": "Bearer sk-bench"}, log, proc.pid)


def stream_mock(b: Bench) -> Target:
    """The paced stream mock of this run (one per run)."""
    key = "mock:streams"
    if key not in b._targets:
        b._targets[key] = start_stream_mock(b.procs, "direct (paced streams)")
    return b._targets[key]


def stream_proxy(b: Bench, workers: int = 1) -> Target:
    """A proxy of its own in front of the paced mock: its memory is measured from its start.
    ``workers`` > 1: a ``serve --workers`` group instead (its parent's pid)."""
    key = "proxy-streams" if workers == 1 else f"proxy-streams-workers-{workers}"
    if key not in b._targets:
        raise_file_limit()
        env = {"STOCKYARD_WORKERS": str(workers)} if workers > 1 else None
        b._targets[key] = start_proxy(b.procs, b.pyz, key, stream_mock(b), extra_env=env)
    return b._targets[key]


def stream_floors(b: Bench) -> list[Target]:
    """The minimal stream relays of this run (``stream_floor.py``): Stockyard's shape with no work, and
    one event loop — the same-run floor under the stream rows."""
    for mode in ("relay", "loop"):
        if f"floor:{mode}" not in b._targets:
            b._targets[f"floor:{mode}"] = start_floor(b.procs, mode, stream_mock(b))
    return [b._targets["floor:relay"], b._targets["floor:loop"]]


def rss_mib(pid: int | None, field: str = "VmRSS") -> float:
    """A memory figure of a process from /proc/PID/status (VmRSS now, VmHWM its peak), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


# --------------------------------------------------------------------------- the streaming client


class _Stream:
    """One streamed chat on a connection of its own, as the burst client sees it."""

    def __init__(self, port: int, request: bytes) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.connect_ex(("127.0.0.1", port))
        self.request = request
        self.start = time.perf_counter()
        self.seen = b""  # the head until its status line is checked, then the last bytes only
        self.checked = False

    def received(self, data: bytes) -> bool:
        """Take bytes read; True once the stream is complete (its chunked terminator)."""
        self.seen = self.seen[-64:] + data if self.checked else self.seen + data
        if not self.checked and b"\r\n" in self.seen:
            if b" 200 " not in self.seen.split(b"\r\n", 1)[0]:
                raise RuntimeError(f"HTTP {self.seen[:40]!r}")
            self.checked = True
        return self.seen.endswith(b"\r\n0\r\n\r\n")


def burst(target: Target, n: int, timeout: float = 120.0) -> tuple[list[float], int]:
    """`n` streams at once, each on a new connection, from one selector loop (raw HTTP/1.1: a few
    tens of microseconds per stream, so the client takes little of the cores the proxy is measured
    on); the seconds each took to its end, and how many failed."""
    head = f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\nConnection: close\r\n"
    head += "Content-Type: application/json\r\n" + "".join(f"{k}: {v}\r\n" for k, v in target.headers.items())
    request = f"{head}Content-Length: {len(STREAM_BODY)}\r\n\r\n".encode() + STREAM_BODY
    sel = selectors.DefaultSelector()
    for _ in range(n):
        stream = _Stream(target.port, request)
        sel.register(stream.sock, selectors.EVENT_WRITE, stream)
    done: list[float] = []
    failed = 0
    deadline = time.monotonic() + timeout
    while sel.get_map() and time.monotonic() < deadline:
        for key, mask in sel.select(1.0):
            stream = key.data
            try:
                if mask & selectors.EVENT_WRITE:  # connected: the request fits the empty send buffer
                    stream.sock.send(stream.request)
                    sel.modify(stream.sock, selectors.EVENT_READ, stream)
                    continue
                data = stream.sock.recv(65536)
                if not data:
                    raise RuntimeError("stream ended early")
                if not stream.received(data):
                    continue
                done.append(time.perf_counter() - stream.start)
            except (OSError, RuntimeError):
                failed += 1
            sel.unregister(stream.sock)
            stream.sock.close()
    for key in list(sel.get_map().values()):  # not finished by the deadline
        failed += 1
        key.fileobj.close()  # type: ignore[union-attr]
    return done, failed


@dataclass
class Bursts:
    """What rotating bursts measured, by target name: each burst's p50 time to a stream's end, the
    CPU seconds each relay spent over its own bursts, and the streams that failed."""

    p50s: dict[str, list[float]]
    cpu: dict[str, float]
    failed: dict[str, int]

    def added_ms(self, relay: Target, direct: Target) -> float:
        """The median over rounds of the relay's p50 minus direct's in the same round, ms."""
        return 1000 * median([x - y for x, y in zip(self.p50s[relay.name], self.p50s[direct.name])])


def rotating_bursts(
    direct: Target, relays: list[Target], n: int, rounds: int, cpu_of: Callable[[Target], float]
) -> Bursts:
    """After a warm-up burst to each relay, bursts of ``n`` streams to ``direct`` and each relay in an
    order that rotates round after round (no target always first after another's load); ``cpu_of`` reads
    a relay's CPU seconds so far."""
    for relay in relays:
        burst(relay, min(n, 50))  # warm the pool and the threads a little; not measured
    targets = [direct, *relays]
    got = Bursts({t.name: [] for t in targets}, {t.name: 0.0 for t in relays}, {t.name: 0 for t in targets})
    for r in range(rounds):
        k = r % len(targets)
        for t in targets[k:] + targets[:k]:
            before = 0.0 if t is direct else cpu_of(t)
            done, errors = burst(t, n)
            if t is not direct:
                got.cpu[t.name] += cpu_of(t) - before
            got.failed[t.name] += errors
            got.p50s[t.name].append(quantile(done, 0.5) if done else float("nan"))
    return got


def print_bursts(got: Bursts, direct: Target, relays: list[Target], n: int, rounds: int) -> None:
    """The A/B scripts' report of :func:`rotating_bursts`: per relay its p50, added p50 and CPU a stream."""
    print(f"{n} streams x {rounds} rounds; direct p50 {1000 * median(got.p50s[direct.name]):.0f} ms")
    for t in relays:
        print(
            f"{t.name}: p50 {1000 * median(got.p50s[t.name]):.0f} ms, added {got.added_ms(t, direct):+.0f} ms, "
            f"CPU {1000 * got.cpu[t.name] / (n * rounds):.2f} ms/stream, failed {got.failed[t.name]} of {n * rounds}"
        )


# --------------------------------------------------------------------------- scenarios


def streamed_ttft(b: Bench) -> list[Row]:
    """Time to the first event of a streamed chat at one client, proxy over direct."""
    direct, proxy = b.mock(0), b.proxy("proxy", 0)
    a = b.args
    rounds = interleaved([direct, proxy], Client.first_event, a.requests // 2, a.rounds, a.warmup // 2)
    return latency_rows("streamed TTFT, 1 client,", rounds, proxy.name, direct.name, TTFT_ADDED_MS, 2.0)[:1]


def proxy_cpu(proxy: Target, group: bool) -> float:
    """CPU seconds of the proxy so far: of its process, or of a group's parent and workers."""
    return (group_cpu_seconds(proxy) if group else cpu_seconds(proxy.pid)) or 0.0


def concurrent_streams(b: Bench, n: int, workers: int = 1) -> list[Row]:
    """`n` concurrent streams direct and through the proxy, alternating bursts; the added p50 of
    the time to each stream's end, and the proxy's CPU per stream. The target is judged on one
    process; a ``--workers`` group's row is for information. Beside one process, the minimal stream
    relays (``stream_floor.py``) take the same bursts: the floor of that shape, and of an event loop."""
    direct, proxy = stream_mock(b), stream_proxy(b, workers)
    group = workers > 1
    relays = [proxy] if group else [proxy, *stream_floors(b)]
    rounds = 2 if b.args.quick else 3
    got = rotating_bursts(direct, relays, n, rounds, lambda t: proxy_cpu(t, group and t is proxy))
    if got.failed[direct.name]:
        raise RuntimeError(
            f"{got.failed[direct.name]} of {n * rounds} direct streams failed: the client or mock cannot carry {n}"
        )

    def detail(t: Target) -> str:
        return f"{got.failed[t.name]} of {n * rounds} failed; CPU {1000 * got.cpu[t.name] / (n * rounds):.2f} ms/stream"

    value, limit = got.added_ms(proxy, direct), STREAMS_ADDED_MS[n]
    title = f"{n} concurrent streams ({EVENTS} events, {EVENT_DELAY_MS:g} ms apart)"
    rows = [
        Row(
            title + (f", --workers {workers}" if group else "") + ", added p50",
            f"{value:+.1f} ms",
            "" if group else f"<= {limit:g} ms" + (", all complete" if n >= 1000 else ""),
            None if group else value <= limit and got.failed[proxy.name] == 0,
            f"direct {1000 * median(got.p50s[direct.name]):.0f} ms, "
            f"proxy {1000 * median(got.p50s[proxy.name]):.0f} ms; " + detail(proxy),
        )
    ]
    for floor in relays[1:]:
        rows.append(
            Row(
                f"{title}, {floor.name} (same rounds)",
                f"{got.added_ms(floor, direct):+.1f} ms",
                "",
                None,
                detail(floor),
            )
        )
    return rows


def streams_200(b: Bench) -> list[Row]:
    """Issue 18: 200 concurrent streams; the proxy's memory idle (before any traffic) and at its peak."""
    proxy = stream_proxy(b)
    idle = rss_mib(proxy.pid)
    rows = concurrent_streams(b, 200)
    peak = rss_mib(proxy.pid, "VmHWM")
    return [
        Row("proxy RSS idle (after start, before traffic)", f"{idle:.1f} MiB", f"<= {IDLE_RSS_MIB:g} MiB", idle <= 40),
        *rows,
        Row("proxy RSS peak (200 streams)", f"{peak:.1f} MiB", "", None, "VmHWM from /proc"),
    ]


def streams_1000(b: Bench) -> list[Row]:
    """Issue 18: 1,000 concurrent streams, every one completed."""
    return concurrent_streams(b, 1000)


def streams_workers(b: Bench) -> list[Row]:
    """200 and 1,000 concurrent streams through a ``--workers 2`` group (information: the stream
    targets are judged on one process, whose request threads share one GIL)."""
    return concurrent_streams(b, 200, workers=2) + concurrent_streams(b, 1000, workers=2)


def start_time(b: Bench) -> list[Row]:
    """Issue 18: `serve --port 0` to the first 200 from /healthz, cold (first start: cache and
    database made) and warm (the second start over the same ones)."""
    db = b.procs.workdir / "start.db"
    env = proxy_env(b.procs, b.mock(0))
    times, bare = [], []
    for _ in range(4):
        times.append(_time_to_healthz(b.pyz, db, env))
        bare.append(_time_to_exit([sys.executable, "-c", "pass"], env))
    warm = median(times[1:])
    return [
        Row(
            "start to first answer, warm (spawn to /healthz 200)",
            f"{warm:.3f} s",
            f"<= {START_S:g} s",
            warm <= START_S,
            f"cold (first start) {times[0]:.3f} s; warm runs {', '.join(f'{t:.3f}' for t in times[1:])} s; "
            f"same-run baseline: `python3 -c pass` {median(bare):.3f} s",
        )
    ]


def _time_to_exit(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from spawning ``argv`` to its exit: the interpreter's own start, the row's baseline."""
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start


def _time_to_healthz(pyz: Path, db: Path, env: dict[str, str]) -> float:
    """Seconds from spawning the server to its first 200 from /healthz; the server is stopped."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(pyz), "serve", "--port", "0", "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None
        port = 0
        for line in proc.stdout:
            if b"listening on http://127.0.0.1:" in line:
                port = int(line.split(b"127.0.0.1:")[1].split()[0].rstrip(b"/").decode())
                break
        if not port:
            raise NotAvailable("the server did not say where it listens")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"/healthz answered {resp.status}")
        elapsed = time.perf_counter() - start
        conn.close()
        return elapsed
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

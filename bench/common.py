"""Building blocks for Stockyard's benchmarks: processes, one-client timing, load, statistics.

Everything here is loopback-only and bounded: every loop ends by a count or a deadline,
and every process started through :class:`Procs` is stopped when its `with` block ends.
"""

from __future__ import annotations

import http.client
import json
import math
import multiprocessing
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
PYZ = REPO / "dist" / "stockyard.pyz"
MOCK = REPO / "bench" / "paced_mock.py"  # the test mock's answers, one thread (see its docstring)

CHAT_PATH = "/v1/chat/completions"
CHAT = {
    "model": "gpt-4o-mini",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Say hello in three words."}],
}
CHAT_BODY = json.dumps(CHAT).encode()
STREAM_BODY = json.dumps({**CHAT, "stream": True}).encode()


class NotAvailable(Exception):
    """A scenario cannot run against this build (its feature is missing)."""


# --------------------------------------------------------------------------- processes


@dataclass
class Target:
    """Somewhere to send chat requests: a base URL (http://127.0.0.1:PORT) plus headers."""

    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    log: Path | None = None  # the process log, when we started the process
    pid: int | None = None  # the process, when we started it

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


class Procs:
    """Starts helper processes and stops every one of them on exit (SIGTERM, then SIGKILL)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Procs":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(
        self, name: str, argv: list[str], env: dict[str, str], ready: str, timeout: float = 30.0
    ) -> tuple[subprocess.Popen, re.Match, Path]:
        """Run `argv` with output in `<workdir>/<name>.log`; wait for the regex `ready` there."""
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        self._procs.append(proc)
        deadline = time.monotonic() + timeout
        pattern = re.compile(ready)
        while time.monotonic() < deadline:
            match = pattern.search(log.read_text(errors="replace"))
            if match:
                return proc, match, log
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name} did not start (exit code {proc.poll()}); log tail:\n{tail}")

    def stop(self, proc: subprocess.Popen) -> None:
        """Stop one process and its own process group: SIGTERM, a bounded wait, then SIGKILL."""
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)  # the group is this process's own (start_new_session)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self._procs)):
            self.stop(proc)


def base_env(workdir: Path) -> dict[str, str]:
    """The environment for child processes: no stray provider keys, private cache dir."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("_API_KEY", "_BASE_URL", "_ENDPOINT")) and not k.startswith("STOCKYARD_")
    }
    env["XDG_CACHE_HOME"] = str(workdir / "cache")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def start_mock(procs: Procs, delay_ms: float) -> Target:
    """A `bench/paced_mock.py` process answering after `delay_ms`."""
    argv = [sys.executable, str(MOCK), "--port", "0", "--delay-ms", str(delay_ms)]
    name = f"mock-{delay_ms:g}ms"
    proc, match, log = procs.start(name, argv, base_env(procs.workdir), r"listening (http://127\.0\.0\.1:\d+)")
    return Target(f"direct ({delay_ms:g} ms mock)", match.group(1), {"authorization": "Bearer sk-bench"}, log, proc.pid)


def run_pyz(pyz: Path, args: list[str], env: dict[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run a Stockyard CLI command to completion (output captured as text)."""
    return subprocess.run(
        [sys.executable, str(pyz), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def proxy_env(
    procs: Procs, upstream: Target, log_requests: bool = False, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a proxy whose only provider is `upstream` (OpenAI dialect)."""
    env = base_env(procs.workdir)
    env.update(
        {
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": f"{upstream.url}/v1",
            "STOCKYARD_LOG_REQUESTS": "1" if log_requests else "0",
        }
    )
    env.update(extra or {})
    return env


def start_proxy(
    procs: Procs,
    pyz: Path,
    name: str,
    upstream: Target,
    log_requests: bool = False,
    extra_env: dict[str, str] | None = None,
    setup: Callable[[Target, Path, dict[str, str]], dict[str, str]] | None = None,
    database: str | None = None,
) -> Target:
    """`stockyard.pyz serve --port 0` in front of `upstream`, with its own database.

    `setup(target, db, env)`, if given, runs once the server listens (e.g. to create a client
    key with the CLI) and returns the headers the client must send from then on. `database`:
    a `postgresql://` URL instead of an SQLite file of its own.
    """
    db = procs.workdir / f"{name}.db"
    env = proxy_env(procs, upstream, log_requests, extra_env)
    argv = [sys.executable, str(pyz), "serve", "--port", "0", "--db", database or str(db)]
    proc, match, log = procs.start(name, argv, env, r"listening on (http://127\.0\.0\.1:\d+)")
    target = Target(name, match.group(1), {}, log, proc.pid)
    if setup is not None:
        target.headers = setup(target, db, env)
    return target


# --------------------------------------------------------------------------- one client


class Client:
    """One keep-alive connection to a target, timing chat requests."""

    def __init__(self, target: Target, timeout: float = 10.0) -> None:
        self.target = target
        self.conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=timeout)
        self.headers = {"content-type": "application/json", **target.headers}

    def chat(self) -> float:
        """Seconds for one non-streamed chat request, body read to the end."""
        start = time.perf_counter()
        self.conn.request("POST", CHAT_PATH, CHAT_BODY, self.headers)
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - start
        if resp.status != 200:
            raise RuntimeError(f"{self.target.name}: HTTP {resp.status}: {body[:300]!r}")
        return elapsed

    def first_event(self) -> float:
        """Seconds until the first SSE `data:` event of a streamed chat; the rest is drained."""
        start = time.perf_counter()
        self.conn.request("POST", CHAT_PATH, STREAM_BODY, self.headers)
        resp = self.conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"{self.target.name}: HTTP {resp.status}: {resp.read()[:300]!r}")
        seen = b""
        while b"data:" not in seen:
            piece = resp.read1(65536)
            if not piece:
                raise RuntimeError(f"{self.target.name}: stream ended before any data: event")
            seen += piece
        elapsed = time.perf_counter() - start
        resp.read()
        return elapsed

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    """Completed requests inside the measuring window, failures and answers in the whole run."""

    ok: int
    errors: int
    seconds: float
    answered: int = 0

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


class _LoadConn:
    """One keep-alive client of the load generator: its socket and the answer being read."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buf = b""

    def answer(self) -> int | None:
        """The status of the answer in `buf` once it is complete (and taken off `buf`), else None.
        Answers carry Content-Length or are chunked (then the terminating zero chunk ends them)."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buf[:end].lower()
        status = int(head[9:12])
        match = re.search(rb"\r\ncontent-length: *(\d+)", head)
        if match:
            size = end + 4 + int(match.group(1))
        else:
            tail = self.buf.find(b"\r\n0\r\n\r\n", end)
            if tail < 0:
                return None
            size = tail + 7
        if len(self.buf) < size:
            return None
        self.buf = self.buf[size:]
        return status


def _load_process(
    port: int, headers: dict[str, str], clients: int, start_at: float, end_at: float, out: "multiprocessing.Queue"
) -> None:
    """A client process: `clients` keep-alive connections driven by one selector, each sending its
    next request as soon as its answer is read (no threads: the load generator's own CPU is a few
    tens of microseconds per request, so what a load row measures is the server). Puts its counts
    [in-window ok, errors, all ok] on `out`."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = (
        f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{lines}Content-Length: {len(CHAT_BODY)}\r\n\r\n"
    ).encode() + CHAT_BODY
    counts = [0, 0, 0]
    sel = selectors.DefaultSelector()
    missing = clients  # connections to (re)open

    def drop(conn: _LoadConn) -> None:
        nonlocal missing
        counts[1] += 1
        missing += 1
        sel.unregister(conn.sock)
        conn.sock.close()

    while (now := time.monotonic()) < end_at:
        for _ in range(missing):
            try:
                conn = _LoadConn(port)
                conn.sock.sendall(request)
            except OSError:
                counts[1] += 1
                break
            sel.register(conn.sock, selectors.EVENT_READ, conn)
            missing -= 1
        for key, _ in sel.select(min(0.01 if missing else 0.1, end_at - now)):
            conn = key.data
            try:
                data = conn.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                drop(conn)
                continue
            conn.buf += data
            status = conn.answer()
            if status is None:
                continue
            done = time.monotonic()
            if status != 200:
                counts[1] += 1
            else:
                counts[2] += 1
                counts[0] += start_at <= done <= end_at
            try:
                conn.sock.send(request)  # a few hundred bytes into an empty socket buffer
            except OSError:
                drop(conn)
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    out.put(counts)


def load(target: Target, clients: int = 64, processes: int = 4, seconds: float = 3.0, ramp: float = 0.5) -> LoadResult:
    """`clients` concurrent keep-alive clients (spread over `processes` forked client processes,
    each one selector loop) for `ramp + seconds`; requests completed in the last `seconds`
    count. CLOCK_MONOTONIC is shared by all processes."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    headers = {"content-type": "application/json", **target.headers}
    start_at = time.monotonic() + 0.2 + ramp
    end_at = start_at + seconds
    per_proc = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    procs = [
        ctx.Process(target=_load_process, args=(target.port, headers, n, start_at, end_at, out), daemon=True)
        for n in per_proc
    ]
    for p in procs:
        p.start()
    totals = [0, 0, 0]
    try:
        for _ in procs:
            got = out.get(timeout=end_at - time.monotonic() + 30)
            totals = [a + b for a, b in zip(totals, got)]
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    return LoadResult(totals[0], totals[1], seconds, totals[2])


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- statistics


def quantile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank method."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

#!/usr/bin/env python3
"""What the module chain costs: all modules off vs the full chain on, in the same run.

Two measurements:

1. In process: ``chain.before`` + ``chain.after`` on a typical chat request, timed alone —
   the modules' own cost, without the network (an empty chain vs every module on, cache
   lookup and write included).
2. End to end: sequential keep-alive requests through a real server to the mock provider,
   batches with every module off interleaved with batches with all of them on (each
   request a new question, so the cache misses and writes; and a run of cache hits).

``run()`` returns the rows; ``python bench/bench_modules.py`` prints them as a table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mock_upstream import MockUpstream  # noqa: E402

ADMIN_KEY = "bench-admin-key-0123456789"
SECRET_FREE = "Summarise the plot of Hamlet in one sentence, please, for request number {n}."

FULL_CHAIN = {
    "alias": {"aliases": {"fast": "gpt-4o-mini"}},
    "guard": {
        "allow_models": ["gpt-4o*"],
        "deny_models": ["gpt-4o-audio*"],
        "max_tokens": 4096,
        "max_input_bytes": 1_000_000,
        "max_messages": 100,
    },
    "redact": {"mode": "store", "pii": ["email", "phone", "card"]},
    "cache": {"ttl_s": 3600},
    "timeout": {"models": {"gpt-4o*": 60}, "deadline_s": 120},
    "fallback": {"chains": {"gpt-4o-mini": ["openai/gpt-4o"]}, "retries": 2},
}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- in process ------------------------------------------------------------------------------------


def bench_in_process(iterations: int = 2000) -> list[dict]:
    """µs per request spent in the chain's hooks, empty chain vs all modules on."""
    from stockyard.app import App
    from stockyard.config import Settings
    from stockyard.context import RequestContext
    from stockyard.modules import ORDER, ModuleRow

    with tempfile.TemporaryDirectory() as tmp:
        env = {"OPENAI_API_KEY": "sk-bench-0123456789", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
        app = App(Settings(db_path=Path(tmp) / "bench.db", port=0), env=env)
        try:
            rows = {cls.name: ModuleRow(cls.name, True, FULL_CHAIN.get(cls.name, {}), "") for cls in ORDER}
            chains = {"modules off": app.modules.build({}), "all modules on": app.modules.build(rows)}
            out = []
            for name, chain in chains.items():
                times = []
                for n in range(iterations):
                    body = {
                        "model": "fast",
                        "max_tokens": 256,
                        "messages": [{"role": "user", "content": SECRET_FREE.format(n=n)}],
                    }
                    raw = json.dumps(body).encode()
                    ctx = RequestContext("chat", "openai", "127.0.0.1", {}, raw=raw, body=body, model="fast")
                    started = time.perf_counter()
                    chain.before(ctx)
                    ctx.attempt.status, ctx.attempt.outcome, ctx.complete = 200, "ok", True
                    ctx.attempt.capture(b'{"choices":[{"message":{"content":"To be or not to be."}}]}', 1 << 20)
                    chain.after(ctx)
                    times.append((time.perf_counter() - started) * 1e6)
                out.append(
                    {
                        "what": f"hooks, {name}",
                        "median_us": statistics.median(times),
                        "p90_us": _percentile(times, 0.9),
                        "n": iterations,
                    }
                )
            return out
        finally:
            app.close()


# -- end to end -----------------------------------------------------------------------------------


class Server:
    """A stockyard server process (the pyz when built, else the source tree)."""

    def __init__(self, mock_url: str, db: Path) -> None:
        pyz = ROOT / "dist" / "stockyard.pyz"
        cmd = [sys.executable, str(pyz)] if pyz.exists() else [sys.executable, "-m", "stockyard"]
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", ""),
            "PYTHONPATH": str(ROOT),
            "OPENAI_API_KEY": "sk-bench-0123456789",
            "OPENAI_BASE_URL": mock_url + "/v1",
            "STOCKYARD_ADMIN_KEY": ADMIN_KEY,
            "STOCKYARD_LOG_REQUESTS": "0",
            "PYTHONUNBUFFERED": "1",
        }
        self.proc = subprocess.Popen(
            [*cmd, "serve", "--port", "0", "--db", str(db)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.port = 0
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                if "listening on http://" in line and not self.port:
                    self.port = int(line.split("listening on http://")[1].split()[0].rsplit(":", 1)[1])
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30) or not self.port:
            self.stop()
            raise RuntimeError("the stockyard server did not start")
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def call(self, method: str, path: str, body: dict | None = None, admin: bool = False) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        if admin:
            headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        self.conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def switch(self, on: bool) -> None:
        for name, config in FULL_CHAIN.items():
            status, body = self.call("PUT", f"/api/modules/{name}", {"enabled": on, "config": config}, admin=True)
            if status != 200:
                raise RuntimeError(f"could not configure {name}: {body[:200]!r}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _batch(server: Server, requests: int, start: int, model: str, repeat: bool = False) -> list[float]:
    times = []
    for n in range(start, start + requests):
        content = SECRET_FREE.format(n=start if repeat else n)
        body = {"model": model, "messages": [{"role": "user", "content": content}]}
        started = time.perf_counter()
        status, _ = server.call("POST", "/v1/chat/completions", body)
        times.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise RuntimeError(f"request failed with {status}")
    return times


def bench_end_to_end(requests: int = 300, rounds: int = 3) -> list[dict]:
    """Milliseconds per request through the server, modules off vs all on, interleaved."""
    with MockUpstream() as mock, tempfile.TemporaryDirectory() as tmp:
        server = Server(mock.url, Path(tmp) / "bench.db")
        try:
            off: list[float] = []
            on: list[float] = []
            hits: list[float] = []
            counter = 0
            _batch(server, 50, 10_000_000, "gpt-4o-mini")  # warm the connections
            for _ in range(rounds):
                server.switch(False)
                off += _batch(server, requests, counter, "gpt-4o-mini")
                counter += requests
                server.switch(True)
                on += _batch(server, requests, counter, "fast")
                counter += requests
            _batch(server, 1, 20_000_000, "fast")
            time.sleep(0.5)  # let the writer store that answer
            hits += _batch(server, requests, 20_000_000, "fast", repeat=True)
        finally:
            server.stop()
    base = statistics.median(off)
    rows = []
    for what, times in (
        ("requests, modules off", off),
        ("requests, all modules on (cache miss)", on),
        ("requests, all modules on (cache hit)", hits),
    ):
        median = statistics.median(times)
        rows.append(
            {
                "what": what,
                "median_ms": median,
                "p90_ms": _percentile(times, 0.9),
                "added_ms": median - base,
                "ratio": median / base,
                "n": len(times),
            }
        )
    return rows


def run(requests: int = 300, rounds: int = 3, iterations: int = 2000) -> list[dict]:
    """Every measurement of this benchmark, as rows (for bench/run.py or the table below)."""
    return bench_in_process(iterations) + bench_end_to_end(requests, rounds)


def print_table(rows: list[dict]) -> None:
    print(f"{'measurement':<42} {'median':>10} {'p90':>10} {'added':>10} {'ratio':>7} {'n':>6}")
    for r in rows:
        if "median_us" in r:
            print(f"{r['what']:<42} {r['median_us']:>8.1f}µs {r['p90_us']:>8.1f}µs {'':>10} {'':>7} {r['n']:>6}")
        else:
            print(
                f"{r['what']:<42} {r['median_ms']:>8.3f}ms {r['p90_ms']:>8.3f}ms {r['added_ms']:>+8.3f}ms "
                f"{r['ratio']:>6.2f}x {r['n']:>6}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per batch (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="off/on batch pairs (default 3)")
    parser.add_argument("--iterations", type=int, default=2000, help="in-process hook runs (default 2000)")
    args = parser.parse_args()
    print_table(run(args.requests, args.rounds, args.iterations))
    return 0


if __name__ == "__main__":
    sys.exit(main())

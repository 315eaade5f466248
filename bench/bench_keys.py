"""Benchmark: what a client key, a budget and a rate limit add to a request.

Two measurements, both taken in the same run so their ratios mean something on a noisy machine:

- :func:`run` — end to end over HTTP: one client alternates request by request between a plain
  proxy and a proxy whose requests carry a key with a budget, an rpm and a tpm limit; the
  samples are split into rounds and the median over rounds of each quantile is reported, with
  the keyed/plain ratio and the difference.
- :func:`checks` — in process, without HTTP noise: the time ``Gatekeeper.authenticate`` plus the
  rate-limit and budget modules' ``before`` and ``after`` take per request (the claim to check:
  well under a millisecond together), next to the same path in open mode.

``python3 bench/bench_keys.py`` starts the mock upstream and two servers from dist/stockyard.pyz,
runs both and prints a table. Loopback only; every process it starts is stopped at the end.
``make bench`` (bench/run.py) shows :func:`checks` as a row of its issue-5 scenario.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

CHAT = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello."}]}
BODY = json.dumps(CHAT).encode()
KEY_LIMITS = {"budget_usd": "1000000", "budget_period": "total", "rpm": 1_000_000, "tpm": 1_000_000_000}


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(1, min(len(ordered), math.ceil(q * len(ordered)))) - 1]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class _Client:
    """One keep-alive connection, timing non-streamed chat requests."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        self.headers = {"content-type": "application/json", **headers}

    def chat(self) -> float:
        start = time.perf_counter()
        self.conn.request("POST", "/v1/chat/completions", BODY, self.headers)
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - start
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {body[:300]!r}")
        return elapsed


def run(
    proxy_url: str, keyed_url: str, key: str, requests: int = 2000, warmup: int = 200, rounds: int = 5
) -> dict[str, float]:
    """Latency of the plain proxy vs the keyed one (milliseconds, ratios), interleaved.

    ``proxy_url`` serves requests without a key (open mode); ``keyed_url`` is a server where
    ``key`` has a budget and rate limits. Both should front the same upstream.
    """
    plain, keyed = _Client(proxy_url, {}), _Client(keyed_url, {"authorization": f"Bearer {key}"})
    clients = [plain, keyed]
    for _ in range(warmup):
        for c in clients:
            c.chat()
    per_round = max(1, requests // rounds)
    samples: list[tuple[list[float], list[float]]] = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            p, k = [], []
            for i in range(per_round):
                order = clients if i % 2 == 0 else clients[::-1]
                for c in order:
                    (p if c is plain else k).append(c.chat())
            samples.append((p, k))
            gc.collect()
    finally:
        gc.enable()
        plain.conn.close()
        keyed.conn.close()
    out: dict[str, float] = {}
    for q in (0.5, 0.99):
        tag = f"p{round(q * 100)}"
        out[f"plain_{tag}_ms"] = 1000 * median([quantile(p, q) for p, _ in samples])
        out[f"keyed_{tag}_ms"] = 1000 * median([quantile(k, q) for _, k in samples])
        out[f"added_{tag}_ms"] = 1000 * median([quantile(k, q) - quantile(p, q) for p, k in samples])
        out[f"ratio_{tag}"] = median([quantile(k, q) / quantile(p, q) for p, k in samples])
    return out


def checks(iterations: int = 20_000) -> dict[str, float]:
    """Microseconds per request for auth + rate limit + budget (before and after), in process."""
    from stockyard.app import App
    from stockyard.audit import ACTOR_SERVER
    from stockyard.config import Settings
    from stockyard.context import RequestContext
    from stockyard.operations.keys import create_key
    from stockyard.proxy import parse_body

    env = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    logging.getLogger("stockyard").setLevel(logging.ERROR)  # the in-process App's banner lines
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="stockyard-bench-keys-") as tmp:
        for mode in ("open", "keyed"):
            app = App(Settings(db_path=Path(tmp) / f"{mode}.db", log_requests=False), env)
            try:
                headers: dict[str, str] = {}
                if mode == "keyed":
                    _, secret = create_key(app.ops(ACTOR_SERVER), {"name": "bench", **KEY_LIMITS})
                    headers = {"authorization": f"Bearer {secret}"}
                out[f"{mode}_us"] = _time_checks(app, headers, iterations, RequestContext, parse_body)
            finally:
                app.close()
    out["added_us"] = out["keyed_us"] - out["open_us"]
    return out


def _time_checks(app, headers, iterations, RequestContext, parse_body) -> float:
    """Median over 10 batches of the per-request time of the auth + module hooks."""
    batches = []
    per_batch = max(1, iterations // 10)
    for _ in range(10):
        total = 0.0
        for _ in range(per_batch):
            ctx = RequestContext("chat", "openai", "127.0.0.1", headers, raw=BODY)
            parse_body(ctx)
            start = time.perf_counter()
            app.gate.authenticate(ctx)
            app.chain().before(ctx)
            ctx.attempt.status, ctx.attempt.cost_uc = 200, 480
            app.chain().after(ctx)
            total += time.perf_counter() - start
        batches.append(total / per_batch)
    return 1e6 * median(batches)


def _start(argv: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "listening on http://" in text:
            return proc, "http://" + text.split("listening on http://")[1].split()[0]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text(errors='replace')[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Issue 5 benchmark: key + budget + rate limit overhead")
    p.add_argument("--pyz", type=Path, default=REPO / "dist" / "stockyard.pyz")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--iterations", type=int, default=20_000, help="in-process check iterations")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.iterations = 400, 4000
    if not args.pyz.exists():
        print(f"no build at {args.pyz}: run `make pyz` first", file=sys.stderr)
        return 2
    from mock_upstream import MockUpstream

    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="stockyard-bench-keys-") as tmp, MockUpstream() as mock:
        work = Path(tmp)
        env = {
            "PATH": "/usr/bin:/bin",
            "XDG_CACHE_HOME": str(work / "cache"),
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": mock.url + "/v1",
            "STOCKYARD_LOG_REQUESTS": "0",
        }
        procs: list[subprocess.Popen] = []
        try:
            plain, plain_url = _start(
                [sys.executable, str(args.pyz), "serve", "--port", "0", "--db", str(work / "plain.db")],
                env,
                work / "plain.log",
            )
            procs.append(plain)
            made = subprocess.run(
                [
                    sys.executable,
                    str(args.pyz),
                    "keys",
                    "create",
                    "--name",
                    "bench",
                    "--budget-usd",
                    KEY_LIMITS["budget_usd"],
                    "--budget-period",
                    "total",
                    "--rpm",
                    str(KEY_LIMITS["rpm"]),
                    "--tpm",
                    str(KEY_LIMITS["tpm"]),
                    "--db",
                    str(work / "keyed.db"),
                ],
                env=env,
                capture_output=True,
                text=True,
            )
            if made.returncode != 0:
                raise RuntimeError(made.stderr)
            keyed, keyed_url = _start(
                [sys.executable, str(args.pyz), "serve", "--port", "0", "--db", str(work / "keyed.db")],
                env,
                work / "keyed.log",
            )
            procs.append(keyed)
            http_result = run(plain_url, keyed_url, made.stdout.strip(), args.requests, args.requests // 10)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    in_process = checks(args.iterations)
    for tag in ("p50", "p99"):
        rows.append(
            (
                f"HTTP {tag}: plain proxy / keyed proxy",
                f"{http_result[f'plain_{tag}_ms']:.2f} ms / {http_result[f'keyed_{tag}_ms']:.2f} ms",
            )
        )
        rows.append(
            (
                f"HTTP {tag}: added by key+budget+rpm+tpm",
                f"{http_result[f'added_{tag}_ms']:+.3f} ms (ratio {http_result[f'ratio_{tag}']:.3f})",
            )
        )
    rows.append(("in process: auth + modules, open mode", f"{in_process['open_us']:.1f} µs"))
    rows.append(("in process: auth + ratelimit + budget, keyed", f"{in_process['keyed_us']:.1f} µs"))
    rows.append(("in process: added by the checks", f"{in_process['added_us']:+.1f} µs (target well under 1000 µs)"))
    width = max(len(r[0]) for r in rows)
    print("Stockyard bench: client key + budget + rate limit")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

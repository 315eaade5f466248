"""CPU of one request's path in process, with one part of it left out (issue 18).

    python3 bench/inproc_ablate.py [--requests 3000] [--rounds 3] [PART ...]
    python3 bench/inproc_ablate.py --profile 40      # the whole path's top 40 functions (cProfile)

Runs ``proxy.handle`` of a plain chat request in this process (``tests/module_harness.py``: the
real module chain, price table, SQLite store with its writer thread, tracing with bodies) against
the tests' mock upstream, with a client key that has a budget, an rpm and a tpm limit (the "all on"
row's key), the process kept on one CPU as the server keeps itself (``stockyard/cpupin.py``).
Prints the request thread's CPU per request (``time.thread_time``: the server's parsing, the
writer's and the mock's work are not in it), the whole path and then with each PART replaced by
a no-op, rounds interleaved, each in a fresh process. A part's cost is the difference; what one
part costs the others (the writer's commits taking the GIL from the request thread) shows too.

Parts: trace (``Tracer._record``: the row, scrubbing, packing, queueing, metrics), submit (the
trace handed to the writer), metrics, price, budget, ratelimit, scrub.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BODY = json.dumps(
    {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello in three words."}]}
).encode()
PARTS = ("trace", "submit", "metrics", "price", "budget", "ratelimit", "scrub")


def leave_out(part: str, h) -> None:
    """Replace ``part`` of the request path with a no-op (in this process only)."""
    from stockyard import billing, metrics, scrub, tracing
    from stockyard.modules import budget, ratelimit

    if part == "trace":
        tracing.Tracer._record = lambda self, *a, **k: False
    elif part == "submit":
        h.store.submit = lambda *a, **k: True
    elif part == "metrics":
        metrics.Metrics.observe_request = lambda self, *a, **k: None
    elif part == "price":
        billing.Pricer.price = lambda self, ctx: None
    elif part == "budget":
        budget.BudgetModule.before = budget.BudgetModule.after = lambda self, ctx: None
    elif part == "ratelimit":
        ratelimit.RateLimitModule.before = ratelimit.RateLimitModule.after = lambda self, ctx: None
    elif part == "scrub":
        scrub.Scrubber.bytes = lambda self, data: data


def measure(requests: int, part: str, profile: int = 0) -> float:
    """µs of the request thread's CPU per request, ``part`` left out ("" for none); with ``profile``,
    the request thread under cProfile (its top ``profile`` functions by own time printed)."""
    sys.path[:0] = [str(REPO / "tests"), str(REPO)]
    from mock_upstream import MockUpstream
    from module_harness import RecordingReply, harness

    from stockyard import proxy
    from stockyard.context import RequestContext
    from stockyard.keys import KeyRing, load_keys
    from stockyard.store import db

    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    with tempfile.TemporaryDirectory() as tmp, MockUpstream() as mock, harness(Path(tmp), mock) as h:
        made = subprocess.run(
            [sys.executable, "-m", "stockyard", "keys", "create", "--db", str(Path(tmp) / "stockyard.db")]
            + ["--name", "bench", "--budget-usd", "1000000", "--budget-period", "total"]
            + ["--rpm", "1000000", "--tpm", "1000000000"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        key = re.search(r"sk-sy-[A-Za-z0-9_\-]+", made.stdout + made.stderr)
        if key is None:
            raise SystemExit(f"keys create failed: {made.stderr[-500:]}")
        conn = db.connect(Path(tmp) / "stockyard.db")
        h.path.gate.use(KeyRing(load_keys(conn)))
        conn.close()
        headers = {"authorization": f"Bearer {key.group(0)}", "content-type": "application/json"}
        if part:
            leave_out(part, h)

        def one() -> None:
            reply = RecordingReply()
            proxy.handle(h.path, reply, RequestContext("chat", "openai", "127.0.0.1", dict(headers), raw=BODY))
            if reply.status != 200:
                raise SystemExit(f"HTTP {reply.status}: {reply.body[:300]!r}")

        for _ in range(200):  # warm: connections pooled, the key's spend loaded
            one()
        profiler = cProfile.Profile(time.thread_time) if profile else None
        start = time.thread_time()
        if profiler:
            profiler.enable()
        for _ in range(requests):
            one()
        spent = time.thread_time() - start
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats(os.environ.get("PROFILE_SORT", "tottime")).print_stats(profile)
        return 1e6 * spent / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", default=list(PARTS), help=f"of: {', '.join(PARTS)} (default: all)")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, help="profile the whole path: its top N functions")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child's part ("" = whole path)
    args = parser.parse_args()
    if args.profile:
        print(f"{measure(args.requests, '', args.profile):.1f} µs CPU a request under cProfile")
        return
    if args.one is not None:
        print(f"{measure(args.requests, args.one):.1f}")
        return
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    results: dict[str, list[float]] = {p: [] for p in ["", *args.parts]}
    for _ in range(args.rounds):
        for part in results:
            out = subprocess.run(
                [sys.executable, __file__, "--one", part, "--requests", str(args.requests)],
                capture_output=True,
                text=True,
                check=True,
            )
            results[part].append(float(out.stdout.strip().splitlines()[-1]))
    whole = statistics.median(results[""])
    print(f"{'whole path':22s} {whole:7.1f} µs CPU a request (rounds: {shown(results[''])})")
    for part in args.parts:
        m = statistics.median(results[part])
        print(f"{'without ' + part:22s} {m:7.1f} µs  ({m - whole:+.1f}; rounds: {shown(results[part])})")


def shown(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


if __name__ == "__main__":
    main()

"""A realistic Stockyard database of N traces, made fast, for timing cost reports (issue 18).

``python3 bench/gen_traces.py PATH [--traces N] [--days D]`` creates (or replaces) an SQLite file
at PATH with the server's schema and N traces spread over the last D days: 40 keys in 8
projects, 10 models on 3 providers, 2,000 end users, a ``team`` and an ``env`` tag on half the
requests, 4% errors, a retried attempt now and then. Traces go in with direct multi-row SQL
(no bodies: reports never read them), and the rollups are the writer's own per-batch sums
(:class:`stockyard.store.traces.RollupSums`), so every report equals the sum of the traces.
 The data is not committed.

:func:`trace_rows` makes the same kind of rows with bodies for the writer benchmark (bench/store.py).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stockyard.store import db  # noqa: E402
from stockyard.store import traces as traces_module  # noqa: E402
from stockyard.store.traces import TraceRow, iso_utc  # noqa: E402

MODELS = [  # (provider, model, micro-cents per prompt token, per completion token)
    ("openai", "gpt-4o-mini-2024-07-18", 15, 60),
    ("openai", "gpt-4o-2024-08-06", 250, 1000),
    ("openai", "gpt-4.1-nano", 10, 40),
    ("openai", "o3-mini", 110, 440),
    ("openai", "text-embedding-3-small", 2, 0),
    ("anthropic", "claude-3-5-haiku-20241022", 80, 400),
    ("anthropic", "claude-sonnet-4-20250514", 300, 1500),
    ("anthropic", "claude-opus-4-20250514", 1500, 7500),
    ("gemini", "gemini-2.0-flash", 10, 40),
    ("gemini", "gemini-2.5-pro", 125, 1000),
]
KEYS = [(f"key_{k:02d}", f"project-{k % 8}") for k in range(40)]
USERS = 2000
TEAMS = ("search", "support", "growth", "infra", "data")
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()


def _body(rng: random.Random, model: str, size: int) -> bytes:
    """A chat request of about ``size`` bytes of JSON."""
    text = " ".join(rng.choice(WORDS) for _ in range(size // 6))
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()


def trace_rows(n: int, *, start_ms: int, step_ms: int, bodies: bool, seed: int = 18) -> list[TraceRow]:
    """``n`` mixed trace rows one ``step_ms`` apart from ``start_ms``; with ``bodies``: ~1.5 KB request
    and ~0.6 KB response bodies, as a server with body storage on keeps them."""
    rng = random.Random(seed)
    rows: list[TraceRow] = []
    body_pool = [(_body(rng, "m", 1500), _body(rng, "m", 600)) for _ in range(64)] if bodies else []
    for i in range(n):
        ms = start_ms + i * step_ms
        provider, model, p_uc, c_uc = MODELS[int(rng.random() ** 2 * len(MODELS))]  # cheap models more often
        user = int(rng.random() ** 3 * USERS)  # a few heavy users, a long tail
        key_id, project = KEYS[user % len(KEYS)]  # an end user is an application's (a key's)
        error = rng.random() < 0.04
        retried = error and rng.random() < 0.5
        prompt, completion = rng.randint(20, 3000), rng.randint(0, 800)
        status = rng.choice((429, 500, 502)) if error else 200
        tags = None
        if rng.random() < 0.5:
            tags = json.dumps({"env": rng.choice(("prod", "staging")), "team": rng.choice(TEAMS)}, sort_keys=True)
        request, response = rng.choice(body_pool) if bodies else (None, None)
        rows.append(
            TraceRow(
                id=f"tr_{ms:012x}{i:08x}", ts=iso_utc(ms), ts_ms=ms, client_addr="10.0.0.7", endpoint="chat",
                dialect="openai", provider=provider, model=model.rsplit("-2", 1)[0], served_model=model,
                stream=int(rng.random() < 0.3), status=status, outcome="upstream_error" if error else "ok",
                latency_us=rng.randint(200_000, 9_000_000), ttfb_us=rng.randint(100_000, 900_000),
                prompt_tokens=None if error else prompt, completion_tokens=None if error else completion,
                cached_tokens=0 if error else rng.choice((0, 0, 0, prompt // 2)), cache_write_tokens=0,
                reasoning_tokens=0, usage_estimated=0,
                cost_uc=None if error else prompt * p_uc + completion * c_uc,
                cost_status="none" if error else "exact", upstream_request_id=f"req_{i:x}",
                error_type="upstream_error" if error else None, error_message="overloaded" if error else None,
                key_id=key_id, project=project, parent_id=f"tr_{ms:012x}{i + 1:08x}" if retried else None,
                attempt=1, cache_hit=0, cost_saved_uc=None, end_user=f"user-{user}",
                tags=tags, key_name=key_id.replace("key", "team"), request_body=request, response_body=response,
            )
        )  # fmt: skip
    return rows


TEMPLATES = 4096  # distinct trace rows the generated ones are copies of (new id and time each)


def generate(path: Path, traces: int, days: int = 90, chunk: int = 50_000) -> float:
    """Create ``path`` with ``traces`` traces over the last ``days`` days; returns the seconds it took.

    Each trace copies one of TEMPLATES mixed rows (bench's ``trace_rows``) with its own id and
    time; the rollups and latency histograms are summed by the writer's own code
    (:class:`~stockyard.store.traces.RollupSums`) and upserted a chunk at a time, as the writer does.
    """
    started = time.perf_counter()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn, _ = db.open_and_migrate(path)
    conn.execute("PRAGMA synchronous=OFF")
    templates = trace_rows(TEMPLATES, start_ms=0, step_ms=1, bodies=False)
    tails = [t.values()[3:] for t in templates]  # every column after id, ts, ts_ms
    buckets = [
        traces_module.latency_bucket(t.latency_us) if t.parent_id is None and t.outcome == "ok" else None
        for t in templates
    ]
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - days * 86_400_000
    step_ms = max(1, days * 86_400_000 // max(traces, 1))
    rng = random.Random(15)
    minute_text, minute_of = "", -1  # iso_utc's text up to the minute, reused within it
    for first in range(0, traces, chunk):
        rows, sums = [], traces_module.RollupSums(latency=False)
        for i in range(first, min(first + chunk, traces)):
            ms = start_ms + i * step_ms
            j = int(rng.random() * TEMPLATES)
            if ms // 60_000 != minute_of:
                minute_of = ms // 60_000
                minute_text = time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(minute_of * 60))
            ts = f"{minute_text}{ms // 1000 % 60:02d}.{ms % 1000:03d}Z"  # iso_utc(ms)
            rows.append((f"tr_{ms:012x}{i:08x}", ts, ms, *tails[j]))
            template = templates[j]
            template.ts = ts  # read at once by add(): the rollups' day
            sums.add(template)
            if buckets[j] is not None:
                minute = (minute_of, buckets[j])
                sums.minutes[minute] = sums.minutes.get(minute, 0) + 1
        conn.execute("BEGIN")
        conn.executemany(traces_module.INSERT_TRACE, rows)
        sums.write(conn)
        conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path", type=Path)
    p.add_argument("--traces", type=int, default=10_000_000)
    p.add_argument("--days", type=int, default=90)
    args = p.parse_args()
    took = generate(args.path, args.traces, args.days)
    print(f"{args.traces:,} traces in {took:.1f} s ({args.traces / took:,.0f}/s): {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stockyard benchmarks: `make bench` (or `python3 bench/run.py`) prints one table.

Every number is taken against a baseline measured in the same run, in interleaved rounds,
and reported as the median over rounds: this is a small, noisy machine. A scenario is a
function `(Bench) -> list[Row]` in SCENARIOS; one that raises NotAvailable shows as
"not available in this build" and counts as no result. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PYZ,
    Client,
    NotAvailable,
    Procs,
    base_env,  # noqa: E402
    median,
    run_pyz,
)

# Targets from the issues (issue 2: core; issue 5: keys; issue 6: modules).
ADDED_P50_MS = 1.0
ADDED_P99_MS = 3.0
MIN_RPS = 800.0
CHECKS_MS = 0.5  # "well under a millisecond" for auth + budget + rate limit, and for the module chain


import store as store_bench  # noqa: E402
import streams  # noqa: E402
from cpu import big_body_cpu, cpu_per_request  # noqa: E402
from harness import (  # noqa: E402
    Bench,
    Row,
    Scenario,
    added_ms,
    count_traces,
    interleaved,
    interleaved_load,
    key_setup,
    latency_rows,
)
from replicas import two_replicas  # noqa: E402

# --------------------------------------------------------------------------- scenarios


def core_latency(b: Bench) -> list[Row]:
    """Issue 2: added latency at one client, non-streamed and time to first SSE event."""
    direct, proxy = b.mock(0), b.proxy("proxy", 0)
    a = b.args
    names = (proxy.name, direct.name)
    plain = interleaved([direct, proxy], Client.chat, a.requests, a.rounds, a.warmup)
    streamed = interleaved([direct, proxy], Client.first_event, a.requests // 2, a.rounds, a.warmup // 2)
    return latency_rows("added latency, chat, 1 client,", plain, *names, ADDED_P50_MS, ADDED_P99_MS) + latency_rows(
        "added TTFB, streamed chat, 1 client,", streamed, *names, ADDED_P50_MS, ADDED_P99_MS
    )


def core_throughput(b: Bench) -> list[Row]:
    """Issue 2: requests/s at 64 clients against a 20 ms upstream, proxy vs direct, tracing on;
    one more proxy with its request log on."""
    a = b.args
    direct, proxy = b.mock(20), b.proxy("proxy-20ms", 20)
    logged = b.proxy("proxy-20ms-log", 20, log_requests=True)
    targets = [direct, proxy, logged]
    runs, cpu = interleaved_load(b, targets)  # CPU seconds of each server
    rps = {name: median([x.rps for x in results]) for name, results in runs.items()}
    errors = {name: sum(x.errors for x in results) for name, results in runs.items()}
    answered = sum(x.answered for x in runs[proxy.name])
    cpu_ms = {name: 1000 * cpu[name] / max(1, sum(x.answered for x in runs[name])) for name in runs}
    traces = count_traces(b.db(proxy), answered)
    where = f"{a.clients} clients, 20 ms upstream"

    def err(name: str) -> str:
        return f", {errors[name]} errors" if errors[name] else ""

    def spread(name: str) -> str:
        values = [x.rps for x in runs[name]]
        return f"rounds {min(values):.0f}-{max(values):.0f}"

    return [
        Row(
            f"throughput direct ({where})",
            f"{rps[direct.name]:.0f} req/s",
            "",
            None,
            f"baseline; {a.load_rounds} x {a.seconds:g} s, {spread(direct.name)}{err(direct.name)}",
        ),
        Row(
            f"throughput proxy, tracing on ({where})",
            f"{rps[proxy.name]:.0f} req/s",
            f">= {MIN_RPS:g} req/s",
            rps[proxy.name] >= MIN_RPS and not errors[proxy.name],
            f"{spread(proxy.name)}; {traces}/{answered} answers traced{err(proxy.name)}",
        ),
        Row("throughput ratio proxy / direct", f"{rps[proxy.name] / rps[direct.name]:.2f}", "", None, ""),
        Row(
            "proxy CPU time per request (under that load)",
            f"{cpu_ms[proxy.name]:.2f} ms",
            "",
            None,
            f"mock {cpu_ms[direct.name]:.2f} ms; proxy process only, robust to noise",
        ),
        Row(
            "throughput proxy, request log on",
            f"{rps[logged.name]:.0f} req/s",
            "",
            None,
            f"{rps[logged.name] / rps[proxy.name]:.2f} x log off, {spread(logged.name)}{err(logged.name)}",
        ),
    ]


def key_budget_ratelimit(b: Bench) -> list[Row]:
    """Issue 5: added latency with a client key, a budget and a rate limit on, next to the
    plain proxy; the checks together should cost well under a millisecond."""
    probe = run_pyz(b.pyz, ["keys", "create", "--help"], base_env(b.procs.workdir))
    if probe.returncode != 0:
        raise NotAvailable("`keys create` is not in this build")

    direct, proxy = b.mock(0), b.proxy("proxy", 0)
    keyed = b.proxy("proxy-key", 0, setup=key_setup(b.pyz))
    a = b.args
    rounds = interleaved([direct, proxy, keyed], Client.chat, a.requests, a.rounds, a.warmup)
    rows = latency_rows("added latency, key+budget+rpm,", rounds, keyed.name, direct.name, ADDED_P50_MS, ADDED_P99_MS)
    checks = added_ms(rounds, keyed.name, proxy.name, 0.5)
    rows.append(
        Row(
            "key+budget+rpm checks p50 (over plain proxy)",
            f"{checks:+.2f} ms",
            f"<= {CHECKS_MS:g} ms",
            checks <= CHECKS_MS,
            "",
        )
    )
    from bench_keys import checks as checks_in_process  # the same hooks, timed without HTTP noise

    inside = checks_in_process(4_000 if a.quick else 20_000)
    rows.append(
        Row(
            "key+budget+rpm checks, in process (source tree)",
            f"{inside['added_us']:+.0f} us",
            f"<= {CHECKS_MS * 1000:g} us",
            inside["added_us"] <= CHECKS_MS * 1000,
            f"auth + ratelimit + budget hooks: keyed {inside['keyed_us']:.0f} us, "
            f"open mode {inside['open_us']:.0f} us per request",
        )
    )
    return rows


def modules_chain(b: Bench) -> list[Row]:
    """Issue 6: the chain's own cost in process (no modules vs every module on) and, end to
    end, requests with every module off vs the full chain on (bench/bench_modules.py)."""
    import bench_modules

    rows: list[Row] = []
    for r in bench_modules.run(
        requests=200 if b.args.quick else 300, rounds=2 if b.args.quick else 3, iterations=500 if b.args.quick else 2000
    ):
        if "median_us" in r:
            target, ok = ("", None)
            if "all modules on" in r["what"]:
                target, ok = "<< 1000 us", r["median_us"] < 1000
            elif "modules off" in r["what"]:
                target, ok = "~0 us", r["median_us"] < 20
            rows.append(Row(r["what"], f"{r['median_us']:.1f} us", target, ok, f"p90 {r['p90_us']:.1f} us, n={r['n']}"))
        else:
            rows.append(
                Row(
                    r["what"],
                    f"{r['median_ms']:.3f} ms",
                    "",
                    None,
                    f"{r['added_ms']:+.3f} ms, {r['ratio']:.2f}x vs modules off, n={r['n']}",
                )
            )
    return rows


def postgresql_throughput(b: Bench) -> list[Row]:
    """Issue 15: the same load on one proxy over SQLite and one over PostgreSQL, interleaved."""
    a = b.args
    sqlite_proxy = b.proxy("proxy-20ms", 20)
    pg_proxy = b.proxy("proxy-20ms-postgresql", 20, database=b.postgresql())
    targets = [sqlite_proxy, pg_proxy]
    runs, cpu = interleaved_load(b, targets)  # CPU seconds of each server
    rows = []
    for t, label in ((sqlite_proxy, "SQLite"), (pg_proxy, "PostgreSQL")):
        results = runs[t.name]
        answered = sum(x.answered for x in results)
        errors = sum(x.errors for x in results)
        rows.append(
            Row(
                f"throughput proxy on {label} ({a.clients} clients, 20 ms upstream)",
                f"{median([x.rps for x in results]):.0f} req/s",
                "",
                None,
                f"CPU {1000 * cpu[t.name] / max(1, answered):.2f} ms/request"
                + (f", {errors} errors" if errors else ""),
            )
        )
    return rows


SCENARIOS: list[tuple[str, Scenario]] = [
    ("core latency (issue 2)", core_latency),
    ("core throughput (issue 2)", core_throughput),
    ("client key + budget + rate limit (issue 5)", key_budget_ratelimit),
    ("modules disabled / full chain (issue 6)", modules_chain),
    ("one proxy on PostgreSQL vs SQLite (issue 15)", postgresql_throughput),
    ("two replicas on one PostgreSQL (issue 15)", two_replicas),
    ("proxy CPU per request vs a minimal relay (issue 18)", cpu_per_request),
    ("proxy CPU per request, 100 KB agent body (issue 18)", big_body_cpu),
    ("writer throughput with bodies (issue 18)", store_bench.writer_throughput),
    ("file size per agent trace (issue 18)", store_bench.agent_trace_bytes),
    (
        "PostgreSQL writer: TCP_NODELAY, the GIN index (issue 18)",
        lambda b: __import__("pg_writer").writer_split(b),
    ),
    ("cost reports on generated traces (issue 18)", store_bench.report_times),
    ("budget settlement applied exactly once (PostgreSQL)", lambda b: __import__("settle_once").settle_cost(b)),
    ("--workers 2 vs 1 process (issue 18)", lambda b: __import__("workers").workers_throughput(b)),
    ("streamed TTFT (issue 18)", streams.streamed_ttft),
    ("200 concurrent streams, RSS (issue 18)", streams.streams_200),
    ("1000 concurrent streams (issue 18)", streams.streams_1000),
    ("200 and 1000 concurrent streams, --workers 2 (issue 18)", streams.streams_workers),
    ("start time (issue 18)", streams.start_time),
]


# --------------------------------------------------------------------------- output


def print_table(title: str, rows: list[Row]) -> None:
    """One plain-text table; rows whose `value` is empty are section headings."""
    cols = ["metric", "measured", "target", "result", "detail"]
    cells = [[r.metric, r.value, r.target, r.result if r.value else "", r.detail] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()  # noqa: E731
    print(title)
    print(line(cols))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))


def build_id(pyz: Path, env: dict[str, str]) -> str:
    done = run_pyz(pyz, ["version"], env)
    return done.stdout.strip() or f"version failed: {done.stderr.strip()[-200:]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Stockyard benchmarks (loopback, about a minute)")
    p.add_argument("--pyz", type=Path, default=PYZ, help="the build to measure (default: dist/stockyard.pyz)")
    p.add_argument("--requests", type=int, default=2000, help="timed requests per target, 1-client latency")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5, help="rounds the latency samples are split into")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per throughput run")
    p.add_argument("--load-rounds", type=int, default=3, help="interleaved throughput rounds")
    p.add_argument("--quick", action="store_true", help="a fraction of the work, for a smoke run")
    p.add_argument("--only", help="run only scenarios whose title contains this text")
    p.add_argument("--postgresql", metavar="URL", help="database for the PostgreSQL rows (default: a throwaway server)")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.warmup, args.rounds, args.seconds, args.load_rounds = 400, 50, 3, 1.0, 1
    if not args.pyz.exists():
        print(f"no build at {args.pyz}: run `make pyz` first", file=sys.stderr)
        return 2
    started = time.monotonic()
    rows: list[Row] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="stockyard-bench-") as tmp, Procs(Path(tmp)) as procs:
        bench = Bench(args, procs)
        ident = build_id(args.pyz, base_env(procs.workdir))
        for title, scenario in SCENARIOS:
            if args.only and args.only.lower() not in title.lower():
                continue
            rows.append(Row(f"[{title}]", ""))
            try:
                rows += scenario(bench)
            except NotAvailable as exc:
                rows.append(Row("not available in this build", "n/a", "", None, str(exc)))
            except Exception as exc:  # report and go on: one broken scenario should not hide the rest
                failed = True
                rows.append(Row("ERROR", "n/a", "", None, f"{type(exc).__name__}: {exc}"[:200]))
        procs.stop_all()  # the proxies first, then their PostgreSQL server
        bench.close()
    title = (
        f"Stockyard bench: {ident}; Python {platform.python_version()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, took {time.monotonic() - started:.0f} s"
    )
    print_table(title, rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

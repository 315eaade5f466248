"""Benchmark: the writer at 20k traces/s with bodies, and cost reports on millions of traces (issue 18).

In process, no HTTP: the real :class:`~stockyard.store.Writer` and the real report code.

- :func:`writer_throughput` — N mixed traces with bodies (bench/gen_traces.py ``trace_rows``: 40 keys,
  10 models, 2,000 users, tags, errors, ~2 KB of bodies each) queued, then the writer started and
  timed until the last one is committed: traces, bodies, search index, rollups and latency
  histogram, in an SQLite file in a temporary folder, and on PostgreSQL when one is available
  (:func:`writer_rounds`: fewer traces, in timed rounds after a warm-up, the median of the rounds).
- :func:`report_times` — a database of N traces from bench/gen_traces.py, then each cost report
  (by day, model, key, user, tag, day+model, day+user, day+user top=10; all 90 days and the last 30) timed as
  ``/api/costs`` runs it, bounded and paged, and encodes it (median of 5 runs, warm); and the whole
  by=day,user report walked page by page (the slowest page against the target).

``python3 bench/store.py [--traces N] [--report-traces N] [--quick]`` runs both and prints the rows.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import NotAvailable, median  # noqa: E402
from gen_traces import generate, trace_rows  # noqa: E402
from harness import Bench, Row  # noqa: E402

from stockyard.httpio import json_bytes  # noqa: E402
from stockyard.store import Store, Writer, costs  # noqa: E402
from stockyard.store.backends import Backend, SqliteBackend, backend_for  # noqa: E402
from stockyard.store.traces import TraceRow  # noqa: E402

WRITER_MIN_PER_S = 20_000
REPORT_MAX_MS = 100.0
WRITER_TRACES = 40_000  # --quick: 8,000
# PostgreSQL: the server's per-row work (the text search parser) makes it several times slower, so
# fewer traces, in rounds of whole batches (512) after a warm-up: the median of 7 rounds of 2,048
# (--quick: 3 rounds of 512). 10,000 traces on a fresh database in one go moved ~15% between runs.
PG_WARMUP, PG_ROUNDS, PG_ROUND_TRACES = 1_024, 7, 2_048
REPORT_TRACES = 1_000_000  # in `make bench` (about 30 s to make); 10 million by hand: bench/README.md
# (by, top): top=10 is what the console's costs chart asks for (its series: the ten biggest, the rest)
REPORTS = (
    ("day", None),
    ("model", None),
    ("key", None),
    ("user", None),
    ("tag:team", None),
    ("day,model", None),
    ("day,user", None),
    ("day,user", 10),
)


def writer_rate(backend: Backend, n: int) -> tuple[float, float]:
    """Traces per second the writer commits, bodies and rollups included (queue filled first):
    per second of wall time, and per CPU second of this process (robust to a busy machine: the
    main thread only waits meanwhile; on PostgreSQL the server's CPU is not counted)."""
    backend.open_and_migrate()
    rows = trace_rows(n, start_ms=int(time.time() * 1000) - n, step_ms=1, bodies=True)
    writer = Writer(backend, maxsize=n + 10).start()
    try:
        rates = _timed_round(writer, rows)
    finally:
        writer.stop()
    _check_written(backend, n)
    return rates


def writer_rounds(backend: Backend, n: int, rounds: int, warmup: int) -> tuple[float, float]:
    """:func:`writer_rate` made steady: one writer on one database writes ``warmup`` traces
    untimed (its connection opened, its statements translated and prepared: once per server
    process, not per trace), then ``rounds`` rounds of ``n``, each timed alone; the median rates
    (wall, per CPU second), each round's rows queued while the writer is held."""
    backend.open_and_migrate()
    total = warmup + rounds * n
    rows = trace_rows(total, start_ms=int(time.time() * 1000) - total, step_ms=1, bodies=True)
    writer = Writer(backend, maxsize=max(n, warmup) + 10).start()
    try:
        _timed_round(writer, rows[:warmup])
        got = [_timed_round(writer, rows[warmup + i * n : warmup + (i + 1) * n]) for i in range(rounds)]
    finally:
        writer.stop()
    _check_written(backend, total)
    return median([wall for wall, _ in got]), median([cpu for _, cpu in got])


def _timed_round(writer: Writer, rows: list[TraceRow]) -> tuple[float, float]:
    """Queue ``rows`` while the writer is held, then time it from their release to their last
    commit: (traces per second of wall time, per CPU second of this process)."""
    release = _hold(writer)
    for row in rows:
        row.pack()  # as the tracer does on the request's thread
        writer.submit(row.write)
    gc.collect()  # the garbage of making the rows, not the writer's
    started, cpu = time.perf_counter(), time.process_time()
    release.set()
    writer.call(lambda conn: None, timeout=600)  # resolves once everything queued before it is committed
    took, cpu = time.perf_counter() - started, time.process_time() - cpu
    return len(rows) / took, len(rows) / cpu


def _hold(writer: Writer) -> threading.Event:
    """Keep the writer thread in a job of its own until the returned event is set, so that the
    rows queued meanwhile wait untouched, as they would for a writer not yet started."""
    holding, release = threading.Event(), threading.Event()

    def hold(conn: object) -> None:
        holding.set()
        release.wait()

    writer.submit(hold)
    if not holding.wait(600):
        raise RuntimeError("the writer did not take its hold job in 10 minutes")
    return release


def _check_written(backend: Backend, n: int) -> None:
    store = Store(backend)
    written = store.read().execute("SELECT count(*) FROM traces").fetchone()[0]
    store.close()
    if written != n:
        raise RuntimeError(f"the writer committed {written} of {n} traces")


def _rate_rows(label: str, rates: tuple[float, float], what: str, server: str = "") -> list[Row]:
    """Judged per CPU second of this process, the writer's own cost, on both stores. The wall rate
    is information: on a shared machine it moves with the load, and on PostgreSQL it is the
    database server's work (its own processes), measured and split in bench/README.md."""
    wall, cpu = rates
    return [
        Row(
            f"{label}, per CPU second",
            f"{cpu:,.0f} /s",
            f">= {WRITER_MIN_PER_S:,} /s",
            cpu >= WRITER_MIN_PER_S,
            f"{what}; the writer's process",
        ),
        Row(
            f"{label}, per second (wall)",
            f"{wall:,.0f} /s",
            "",
            None,
            server or "the machine is shared: see the CPU row",
        ),
    ]


def writer_throughput(b: Bench) -> list[Row]:
    n = WRITER_TRACES // 5 if b.args.quick else WRITER_TRACES
    with tempfile.TemporaryDirectory(prefix="stockyard-writer-") as tmp:
        rates = writer_rate(SqliteBackend(Path(tmp) / "w.db"), n)
    rows = _rate_rows("writer, SQLite", rates, f"{n:,} traces with bodies")
    try:
        url = b.postgresql()
    except NotAvailable as exc:
        return [*rows, Row("writer, PostgreSQL", "n/a", "", None, str(exc))]
    from stockyard.dburl import parse_postgres

    rounds, n = (3, PG_ROUND_TRACES // 4) if b.args.quick else (PG_ROUNDS, PG_ROUND_TRACES)
    server = "the database server's work per trace bounds this, mostly to_tsvector over the bodies: bench/README.md"
    rates = writer_rounds(backend_for(parse_postgres(url, {})), n, rounds, PG_WARMUP)
    what = f"the median of {rounds} rounds of {n:,} traces with bodies, after {PG_WARMUP:,} untimed"
    return rows + _rate_rows("writer, PostgreSQL", rates, what, server)


AGENT_TRACES = 100


def agent_trace_bytes(b: Bench) -> list[Row]:
    """Information (issue 18): what one ~100 KB agent trace adds to the SQLite file (request and
    response bodies of the agent body, as bench/cpu.py sends it), beside those two bodies
    compressed alone in the same run: what the search index and the rows add to them."""
    from cpu import agent_body

    from stockyard.store.traces import _pack

    body = agent_body()
    rows = trace_rows(AGENT_TRACES, start_ms=int(time.time() * 1000), step_ms=1, bodies=False)
    for row in rows:
        row.request_body = row.response_body = body
    with tempfile.TemporaryDirectory(prefix="stockyard-agent-") as tmp:
        backend = SqliteBackend(Path(tmp) / "a.db")
        backend.open_and_migrate()
        writer = Writer(backend, maxsize=AGENT_TRACES + 10)
        for row in rows:
            writer.submit(row.write)
        writer.start()
        writer.call(lambda conn: None, timeout=600)
        writer.stop()
        conn = backend.connect()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        used = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        per_trace = used * conn.execute("PRAGMA page_size").fetchone()[0] / AGENT_TRACES
        conn.close()
    packed = 2 * len(_pack(body) or b"")
    return [
        Row(
            f"SQLite file per trace, {len(body) // 1000} KB agent body (request and response)",
            f"{per_trace / 1024:.1f} KB",
            "",
            None,
            f"the two bodies compressed alone: {packed / 1024:.1f} KB ({per_trace / packed:.2f}x)",
        )
    ]


def api_report(conn, by: str, since: str | None, top: int | None, page: str | None = None) -> dict:
    """A report as /api/costs makes it (bounded, paged) and sends it (JSON bytes)."""
    got = costs.report(conn, by, since, top=top, bounded=True, page=page, page_rows=costs.PAGE_ROWS)
    json_bytes(got)
    return got


def time_reports(path: Path, runs: int = 5) -> dict[str, float]:
    """Median milliseconds of each report (all time, and the last 30 days: the console's default),
    as /api/costs makes and sends it: a report by a client-chosen group bounded to its top 1,000, a
    report by day and another group its first page (costs.PAGE_ROWS)."""
    store = Store(SqliteBackend(path))
    conn = store.read()
    week = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=29)).isoformat()
    out: dict[str, float] = {}
    for by, top in REPORTS:
        for since in (None, week):
            api_report(conn, by, since, top)  # warm: the pages a server would have cached
            samples = []
            for _ in range(runs):
                started = time.process_time()  # CPU time: robust to the other work on a shared machine
                api_report(conn, by, since, top)
                samples.append((time.process_time() - started) * 1000)
            name = f"by={by}{f' top={top}' if top else ''}"
            out[f"{name}{', last 30 days' if since else ', all 90 days'}"] = sorted(samples)[runs // 2]
    store.close()
    return out


def walk_report(path: Path, by: str = "day,user") -> tuple[int, int, float, float]:
    """The whole report over /api/costs, page by page: (pages, rows, the slowest page's and all
    pages' milliseconds of CPU)."""
    store = Store(SqliteBackend(path))
    conn, page, pages, rows, slowest, took = store.read(), None, 0, 0, 0.0, 0.0
    while True:
        started = time.process_time()
        got = api_report(conn, by, None, None, page)
        ms = (time.process_time() - started) * 1000
        pages, rows, slowest, took = pages + 1, rows + len(got["rows"]), max(slowest, ms), took + ms
        if not (page := got["next_page"]):
            store.close()
            return pages, rows, slowest, took


def report_times(b: Bench) -> list[Row]:
    n = 100_000 if b.args.quick else REPORT_TRACES
    path = b.procs.workdir / "reports.db"
    took = generate(path, n)
    times = time_reports(path)
    slowest = max(times, key=times.__getitem__)
    rows = [Row("generate traces (bench/gen_traces.py)", f"{n:,}", "", None, f"{took:.1f} s, {n / took:,.0f}/s")]
    rows += [
        Row(f"cost report {name}", f"{ms:.1f} ms", f"<= {REPORT_MAX_MS:g} ms", ms <= REPORT_MAX_MS)
        for name, ms in times.items()
    ]
    pages, got, page_ms, all_ms = walk_report(path)
    rows.append(
        Row(
            "cost report by=day,user, all 90 days, every page",
            f"{page_ms:.1f} ms",
            f"<= {REPORT_MAX_MS:g} ms",
            page_ms <= REPORT_MAX_MS,
            f"the slowest of {pages} pages ({got:,} rows, {all_ms:.0f} ms in all)",
        )
    )
    rows.append(
        Row(
            "slowest cost report",
            f"{times[slowest]:.1f} ms",
            f"<= {REPORT_MAX_MS:g} ms",
            times[slowest] <= REPORT_MAX_MS,
            slowest,
        )
    )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--traces", type=int, default=WRITER_TRACES, help="traces the writer commits")
    p.add_argument("--report-traces", type=int, default=REPORT_TRACES, help="traces in the report database")
    p.add_argument("--keep", type=Path, help="generate the report database here (or reuse it if present)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="stockyard-store-") as tmp:
        wall, cpu = writer_rate(SqliteBackend(Path(tmp) / "w.db"), args.traces)
        print(f"writer, SQLite: {cpu:,.0f} traces per CPU second, {wall:,.0f}/s wall ({args.traces:,} with bodies)")
        path = args.keep or Path(tmp) / "reports.db"
        if not path.exists():
            took = generate(path, args.report_traces)
            print(f"generated {args.report_traces:,} traces in {took:.1f} s")
        for name, ms in time_reports(path).items():
            print(f"cost report {name}: {ms:.1f} ms")
        pages, rows, slowest, took = walk_report(path)
        print(f"cost report by=day,user every page: {pages} pages, {rows:,} rows, slowest {slowest:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

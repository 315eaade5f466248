"""Benchmark: where the PostgreSQL writer's time goes, and what TCP_NODELAY changed (issue 18).

In process, like bench/store.py ``writer_rate``: N traces with bodies (bench/gen_traces.py) queued,
then the real :class:`~stockyard.store.Writer` started and timed until the last one is committed,
on a fresh database of a throwaway PostgreSQL server (or ``--postgresql URL``) per run. Variants,
interleaved round by round (the machine is shared: compare within a run):

- ``before``: Nagle's algorithm on (pg8000's default), as before;
- ``now``: TCP_NODELAY on every connection;
- ``now, no GIN``: the same without the search text index: what the index costs (reference).

A binary ``COPY`` for traces, bodies and search text was measured too and left out: it cut the
writer's CPU by a fifth but not the wall rate (bench/README.md).

Per variant: traces per second of wall time, the writer's CPU per trace (this process), and the
CPU per trace of the writer's PostgreSQL backend (from /proc, when the server runs on this machine).

``python3 bench/pg_writer.py [--traces N] [--load-rounds N] [--postgresql URL]`` prints the rows.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import NotAvailable  # noqa: E402
from gen_traces import trace_rows  # noqa: E402
from harness import Bench, Row, interleaved_splits, run_alone, split_rows  # noqa: E402

from stockyard.dburl import parse_postgres  # noqa: E402
from stockyard.store import Writer, pg  # noqa: E402
from stockyard.store.backends import PostgresBackend  # noqa: E402

TRACES = 5_000  # --quick: 2,000
ROUNDS = 3  # bench/run.py --load-rounds
VARIANTS = ("before", "now", "now, no GIN")


@contextmanager
def _nagle() -> Iterator[None]:
    """Connections opened meanwhile keep pg8000's default (Nagle's algorithm on)."""
    saved = pg.no_delay
    pg.no_delay = lambda conn: None
    try:
        yield
    finally:
        pg.no_delay = saved


@contextmanager
def _no_op() -> Iterator[None]:
    yield


def _cpu_s(pid: int) -> float | None:
    """utime + stime of a local process (the writer's PostgreSQL backend), None if not visible."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_variant(url: str, variant: str, n: int) -> tuple[float, float, float | None]:
    """(traces/s wall, writer CPU µs per trace, server backend CPU µs per trace or None)."""
    backend = PostgresBackend(parse_postgres(url, {}))
    backend.open_and_migrate()
    if variant == "now, no GIN":
        conn = backend.connect()
        conn.executescript("DROP INDEX trace_search_words")
        conn.close()
    rows = trace_rows(n, start_ms=int(time.time() * 1000) - n, step_ms=1, bodies=True)
    with _nagle() if variant == "before" else _no_op():
        writer = Writer(backend, maxsize=n + 10)
        marks: list[Any] = []

        def first(conn: Any) -> None:
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            marks.extend((pid, _cpu_s(pid)))

        writer.submit(first)
        for row in rows:
            row.pack()  # as the tracer does on the request's thread
            writer.submit(row.write)
        started, cpu = time.perf_counter(), time.process_time()
        writer.start()
        server_end = writer.call(lambda conn: _cpu_s(marks[0]), timeout=600)
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        writer.stop()
    server = None if server_end is None or marks[1] is None else (server_end - marks[1]) / n * 1e6
    return n / took, cpu / n * 1e6, server


def writer_split(b: Bench) -> list[Row]:
    n = getattr(b.args, "traces", TRACES)
    n = n * 2 // 5 if b.args.quick else n
    rounds = getattr(b.args, "load_rounds", ROUNDS)
    try:
        fresh = b.postgresql
        fresh()
    except NotAvailable as exc:
        return [Row("PostgreSQL writer, TCP_NODELAY", "n/a", "", None, str(exc))]
    got = interleaved_splits(VARIANTS, rounds, lambda variant: run_variant(fresh(), variant, n))
    return split_rows(got, "PostgreSQL writer", "writer", "trace", f"{n:,} traces with bodies")


if __name__ == "__main__":
    run_alone(writer_split, __doc__, "traces", TRACES, ROUNDS)

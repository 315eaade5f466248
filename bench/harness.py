"""What bench scenarios share: a table row, the Bench (options + processes started on demand), and
the interleaved latency measurement. Scenarios live in run.py or in their own module under bench/
(a function `(Bench) -> list[Row]` listed in run.SCENARIOS)."""

from __future__ import annotations

import argparse
import gc
import re
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from common import (
    Client,
    LoadResult,
    NotAvailable,
    Procs,
    Target,
    cpu_seconds,
    load,
    median,
    quantile,
    run_pyz,
    start_mock,
    start_proxy,
)

Setup = Callable[[Target, Path, dict[str, str]], dict[str, str]]  # a proxy's setup: returns client headers


@dataclass
class Row:
    """One line of the table. `ok` None means informational (no target)."""

    metric: str
    value: str
    target: str = ""
    ok: bool | None = None
    detail: str = ""

    @property
    def result(self) -> str:
        return "-" if self.ok is None else ("PASS" if self.ok else "MISS")


class Bench:
    """What scenarios share: options, the process manager, and mocks/proxies started on demand."""

    def __init__(self, args: argparse.Namespace, procs: Procs) -> None:
        self.args = args
        self.procs = procs
        self.pyz: Path = args.pyz
        self._targets: dict[str, Target] = {}
        self._cluster = None  # a throwaway PostgreSQL server, started on first use

    def mock(self, delay_ms: float) -> Target:
        """The mock upstream with this delay (one process per delay)."""
        key = f"mock:{delay_ms:g}"
        if key not in self._targets:
            self._targets[key] = start_mock(self.procs, delay_ms)
        return self._targets[key]

    def proxy(
        self,
        name: str,
        delay_ms: float,
        log_requests: bool = False,
        extra_env: dict[str, str] | None = None,
        setup: Setup | None = None,
        database: str | None = None,
    ) -> Target:
        """A proxy (own process and database) in front of the mock with `delay_ms`."""
        if name not in self._targets:
            self._targets[name] = start_proxy(
                self.procs, self.pyz, name, self.mock(delay_ms), log_requests, extra_env, setup, database
            )
        return self._targets[name]

    def postgresql(self) -> str:
        """A fresh PostgreSQL database URL: from --postgresql, else a throwaway server (tests/pgcluster.py)."""
        if self.args.postgresql:
            return self.args.postgresql
        if self._cluster is None:
            try:
                sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
                from pgcluster import Cluster  # needs initdb and the test requirements (pg8000)

                self._cluster = Cluster().start()
            except Exception as exc:
                raise NotAvailable(f"no PostgreSQL: pass --postgresql URL ({type(exc).__name__}: {exc})") from None
        return self._cluster.database()

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.stop()

    def db(self, target: Target) -> Path:
        return self.procs.workdir / f"{target.name}.db"


# --------------------------------------------------------------------------- measuring


Rounds = list[dict[str, list[float]]]  # per round: target name -> samples (seconds)


def interleaved(targets: list[Target], measure: Callable[[Client], float], n: int, rounds: int, warmup: int) -> Rounds:
    """`n` timed requests per target from ONE client (a keep-alive connection per target),
    alternating targets request by request (rotating who goes first), split into rounds."""
    clients = [Client(t) for t in targets]
    per_round = max(1, n // rounds)
    out: Rounds = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(warmup):
            for c in clients:
                measure(c)
        for _ in range(rounds):
            samples: dict[str, list[float]] = {t.name: [] for t in targets}
            for i in range(per_round):
                k = i % len(clients)
                for c in clients[k:] + clients[:k]:
                    samples[c.target.name].append(measure(c))
            out.append(samples)
            gc.collect()
    finally:
        gc.enable()
        for c in clients:
            c.close()
    return out


def added_ms(rounds: Rounds, name: str, base: str, q: float) -> float:
    """Median over rounds of quantile(name) − quantile(base), in milliseconds."""
    return 1000 * median([quantile(r[name], q) - quantile(r[base], q) for r in rounds])


def at_ms(rounds: Rounds, name: str, q: float) -> float:
    """Median over rounds of quantile(name), in milliseconds."""
    return 1000 * median([quantile(r[name], q) for r in rounds])


def latency_rows(
    label: str, rounds: Rounds, name: str, base: str, p50_max: float, p99_max: float, over: str = "direct"
) -> list[Row]:
    """p50 and p99 rows for `name` over `base`, with both absolute values as detail."""
    rows = []
    for q, limit in ((0.50, p50_max), (0.99, p99_max)):
        added = added_ms(rounds, name, base, q)
        tag = f"p{round(q * 100)}"
        rows.append(
            Row(
                f"{label} {tag} (over {over})",
                f"{added:+.2f} ms",
                f"<= {limit:g} ms",
                added <= limit,
                f"{over} {at_ms(rounds, base, q):.2f} ms, proxy {at_ms(rounds, name, q):.2f} ms",
            )
        )
    return rows


def count_traces(db: Path, expect: int, wait_s: float = 5.0) -> int:
    """Rows in `traces` once the writer caught up with `expect` (bounded wait)."""
    deadline = time.monotonic() + wait_s
    count = -1
    while True:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            count = conn.execute("SELECT count(*) FROM traces").fetchone()[0]
        finally:
            conn.close()
        if count >= expect or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def interleaved_load(
    b: Bench,
    targets: list[Target],
    cpu_of: Callable[[Target], float | None] | None = None,
    clients: int | None = None,
) -> tuple[dict[str, list[LoadResult]], dict[str, float]]:
    """Each target under the same load (`clients`, default `--clients`) for `--load-rounds`
    rounds, rotating who goes first: the results per target, and the CPU seconds its server used
    meanwhile (`cpu_of`, default: the target's own process; NaN when it cannot be read)."""
    a = b.args
    measure = cpu_of or (lambda t: cpu_seconds(t.pid))
    runs: dict[str, list[LoadResult]] = {t.name: [] for t in targets}
    cpu: dict[str, float] = {t.name: 0.0 for t in targets}
    for r in range(a.load_rounds):
        k = r % len(targets)
        for t in targets[k:] + targets[:k]:
            before = measure(t)
            runs[t.name].append(load(t, clients=clients or a.clients, processes=a.client_procs, seconds=a.seconds))
            after = measure(t)
            cpu[t.name] += (after - before) if before is not None and after is not None else float("nan")
    return runs, cpu


def key_setup(pyz: Path, warm: int = 1) -> Setup:
    """A proxy `setup` (issue 5): a client key with a budget, an rpm and a tpm limit, made with
    the CLI; returns the headers that send it, once `warm` answers in a row show the server has
    picked the key up (more than one for a workers group: connections land on either worker)."""

    def make_key(target: Target, db: Path, env: dict[str, str]) -> dict[str, str]:
        made = run_pyz(
            pyz,
            [
                "keys",
                "create",
                "--db",
                str(db),
                "--name",
                "bench",
                "--budget-usd",
                "1000000",
                "--budget-period",
                "total",
                "--rpm",
                "1000000",
                "--tpm",
                "1000000000",
            ],
            env,
        )
        key = re.search(r"sk-sy-[A-Za-z0-9_\-]+", made.stdout + made.stderr)
        if made.returncode != 0 or not key:
            raise RuntimeError(f"keys create failed: {(made.stderr or made.stdout)[-500:]}")
        headers = {"authorization": f"Bearer {key.group(0)}"}
        deadline = time.monotonic() + 10  # every server picks up CLI changes within ~0.5 s
        while True:
            try:
                for _ in range(warm):
                    Client(Target(target.name, target.url, headers)).chat()
                return headers
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    return make_key


Scenario = Callable[[Bench], list[Row]]


# --------------------------------------------------------------------------- in-process variants

Split = tuple[float, float, float | None]  # per unit: wall rate /s, this process's CPU µs, server backend CPU µs


def interleaved_splits(variants: tuple[str, ...], rounds: int, run: Callable[[str], Split]) -> dict[str, list[Split]]:
    """Each variant once a round, in reverse order every other round, so the machine's drift
    falls on all of them."""
    got: dict[str, list[Split]] = {v: [] for v in variants}
    for r in range(rounds):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            got[variant].append(run(variant))
    return got


def split_rows(got: dict[str, list[Split]], title: str, own: str, unit: str, what: str) -> list[Row]:
    """A row per variant: its median wall rate, the ratio to the first variant's, and the median
    CPU per ``unit`` of this process (``own``) and of its PostgreSQL backend."""
    variants = list(got)
    first = median([x[0] for x in got[variants[0]]])
    rows = []
    for variant in variants:
        wall = median([x[0] for x in got[variant]])
        servers = [x[2] for x in got[variant] if x[2] is not None]
        server = f"{median(servers):.0f} µs" if servers else "n/a (server not local)"
        rows.append(
            Row(
                f"{title}, {variant}",
                f"{wall:,.0f} /s",
                "",
                None,
                f"{wall / first:.2f}× {variants[0]}; {own} CPU {median([x[1] for x in got[variant]]):.0f} µs, "
                f"server backend CPU {server} per {unit}; {what}, median of {len(got[variant])}",
            )
        )
    return rows


def run_alone(scenario: Callable[[Bench], list[Row]], doc: str | None, count: str, default: int, rounds: int) -> None:
    """Command line of an in-process PostgreSQL scenario (no proxy process): ``--COUNT N``,
    ``--load-rounds N``, ``--postgresql URL`` (default: a throwaway server), ``--quick``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(f"--{count}", type=int, default=default)
    p.add_argument("--load-rounds", type=int, default=rounds, help="interleaved rounds")
    p.add_argument("--postgresql", default="", help="a database URL (default: a throwaway server)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    args.pyz = None  # no proxy process here
    b = Bench(args, None)  # type: ignore[arg-type]
    try:
        for row in scenario(b):
            print(f"{row.metric:45s} {row.value:>12s}  {row.detail}")
    finally:
        b.close()

"""Benchmark: what applying each shared budget settlement step exactly once costs (PostgreSQL).

In process, one :class:`~stockyard.store.shared.SharedLedger` on a fresh database of a throwaway
PostgreSQL server (or ``--postgresql URL``). A request under a key and a project budget reserves
and settles: two hold parts and two extra-scope steps (no other period rows: the usual case).
Variants, interleaved round by round (the machine is shared: compare within a run):

- ``before``: the statements before migration 0015 (no step ids);
- ``now``: each hold part's statement also inserts its step id into ``budget_settled``; the
  extra-scope steps insert one only when they have rows to change (none here).

Per variant: settlements per second (one thread, wall time), this process's CPU and the
connection's PostgreSQL backend CPU per settlement (from /proc, when the server is local).

``python3 bench/settle_once.py [--settlements N] [--load-rounds N] [--postgresql URL]``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import NotAvailable, cpu_seconds  # noqa: E402
from harness import Bench, Row, interleaved_splits, run_alone, split_rows  # noqa: E402

from stockyard.budgets import PERIODS, Budget, period_key  # noqa: E402
from stockyard.dburl import parse_postgres  # noqa: E402
from stockyard.store import Store  # noqa: E402
from stockyard.store.backends import PostgresBackend  # noqa: E402
from stockyard.store.shared import SharedLedger  # noqa: E402

SETTLEMENTS = 3_000  # --quick: 1,000
ROUNDS = 3
VARIANTS = ("before", "now")
TS = 1_780_000_000_000

# The settlement statements before migration 0015, for the "before" variant.
_SETTLE_BEFORE = """/* settle */ WITH ledger AS (
    SELECT scope FROM budget_ledger WHERE scope = ? AND period_key = ? FOR UPDATE),
freed AS (
    UPDATE budget_leases SET reserved_uc = reserved_uc - ?
    WHERE scope = (SELECT scope FROM ledger) AND period_key = ? AND replica = ?
    RETURNING reserved_uc)
UPDATE budget_ledger
SET reserved_uc = reserved_uc - (SELECT CASE WHEN count(*) > 0 THEN ? ELSE 0 END FROM freed), spent_uc = spent_uc + ?
WHERE scope = ? AND period_key = ?
RETURNING spent_uc"""
_SPEND_BEFORE = (
    "UPDATE budget_ledger SET spent_uc = spent_uc + ? WHERE scope = ? AND period_key IN (?, ?, ?) AND period_key <> ?"
)


class _Before(SharedLedger):
    """The ledger as it settled before 0015: the same steps, without their ids."""

    def _settle(self, job: Any) -> None:
        conn = self._conn()
        for budget, key, amount, *_ in job.parts:
            args = (budget.scope, key, amount, key, self.replica, amount, job.actual_uc, budget.scope, key)
            conn.execute(_SETTLE_BEFORE, args).fetchone()
            job.settled[budget.scope] = key
        current = [period_key(p, job.ts_ms) for p in PERIODS]
        for scope, _ in job.scopes:
            conn.execute(_SPEND_BEFORE, (job.actual_uc, scope, *current, job.settled.get(scope, "")))
        job.parts.clear()
        job.scopes.clear()


def run_variant(url: str, variant: str, n: int) -> tuple[float, float, float | None]:
    """(settlements/s wall, client CPU µs per settlement, server backend CPU µs per settlement or None)."""
    backend = PostgresBackend(parse_postgres(url, {}))
    backend.open_and_migrate()
    store = Store(backend)
    kind = _Before if variant == "before" else SharedLedger
    ledger = kind(store, lambda budget, period: 0, lease_s=3600)
    key, project = Budget("key:b", "key 'b'", 10**15, "day"), Budget("project:b", "project 'b'", 10**15, "day")
    try:
        holds = [ledger.reserve([key, project], 500, TS) for _ in range(n)]
        pid = int(store.read().execute("SELECT pg_backend_pid()").fetchone()[0])
        server = cpu_seconds(pid)
        started, cpu = time.perf_counter(), time.process_time()
        for hold in holds:
            ledger.settle(hold, 123, [key.scope, project.scope], TS)
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        server_end = cpu_seconds(pid)
        assert ledger.usage(key, TS) == (123 * n, 0) and not ledger._unsettled
    finally:
        ledger.close()
        store.close()
    server_us = None if server is None or server_end is None else (server_end - server) / n * 1e6
    return n / took, cpu / n * 1e6, server_us


def settle_cost(b: Bench) -> list[Row]:
    n = getattr(b.args, "settlements", SETTLEMENTS)
    n = n // 3 if b.args.quick else n
    rounds = getattr(b.args, "load_rounds", ROUNDS)
    try:
        b.postgresql()
    except NotAvailable as exc:
        return [Row("budget settlement, exactly once", "n/a", "", None, str(exc))]
    got = interleaved_splits(VARIANTS, rounds, lambda variant: run_variant(b.postgresql(), variant, n))
    return split_rows(got, "budget settlement (key + project)", "client", "settlement", f"{n:,} settlements")


if __name__ == "__main__":
    run_alone(settle_cost, __doc__, "settlements", SETTLEMENTS, ROUNDS)

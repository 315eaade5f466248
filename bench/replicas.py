"""Issue 15: two replicas on one PostgreSQL database next to one replica, in the same run.

The same total load (`--clients` keep-alive clients, 20 ms upstream) goes either to one proxy
on PostgreSQL or split in half over two proxies sharing one PostgreSQL database, in interleaved
rounds. Reported: the total req/s and the proxies' CPU per request (from /proc, robust to the
noise of a shared machine). On 2 cores the second replica buys no extra core: the row shows
what sharing one database costs, not how replicas scale on a bigger machine.
"""

from __future__ import annotations

import threading

from common import LoadResult, Target, cpu_seconds, load, median
from harness import Bench, Row


def _cpu(targets: list[Target]) -> float | None:
    values = [cpu_seconds(t.pid) for t in targets]
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _split_load(targets: list[Target], clients: int, processes: int, seconds: float) -> list[LoadResult]:
    """The load divided over `targets`, all at once (one thread per target starts its clients)."""
    results: list[LoadResult | None] = [None] * len(targets)

    def one(i: int) -> None:
        share = clients // len(targets) + (1 if i < clients % len(targets) else 0)
        results[i] = load(targets[i], clients=share, processes=max(1, processes // len(targets)), seconds=seconds)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in results if r is not None]


def two_replicas(b: Bench) -> list[Row]:
    a = b.args
    single = [b.proxy("proxy-20ms-postgresql", 20, database=b.postgresql())]
    shared = b.postgresql()
    pair = [b.proxy(f"proxy-20ms-postgresql-replica-{n}", 20, database=shared) for n in (1, 2)]
    setups = {"one replica": single, "two replicas": pair}
    rps: dict[str, list[float]] = {name: [] for name in setups}
    cpu = {name: 0.0 for name in setups}
    answered = {name: 0 for name in setups}
    errors = {name: 0 for name in setups}
    order = list(setups)
    for r in range(a.load_rounds):
        for name in order[r % 2 :] + order[: r % 2]:
            targets = setups[name]
            before = _cpu(targets)
            results = _split_load(targets, a.clients, a.client_procs, a.seconds)
            after = _cpu(targets)
            cpu[name] += (after - before) if before is not None and after is not None else float("nan")
            rps[name].append(sum(x.rps for x in results))
            answered[name] += sum(x.answered for x in results)
            errors[name] += sum(x.errors for x in results)
    return [
        Row(
            f"throughput, {name} on one PostgreSQL ({a.clients} clients, 20 ms upstream)",
            f"{median(rps[name]):.0f} req/s",
            "",
            None,
            f"CPU {1000 * cpu[name] / max(1, answered[name]):.2f} ms/request (all replicas)"
            + (f", {errors[name]} errors" if errors[name] else ""),
        )
        for name in order
    ]

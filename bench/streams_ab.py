"""A/B of two builds on the concurrent-stream rows (issue 18), in one run.

    python3 bench/streams_ab.py BASE.pyz NEW.pyz [MORE.pyz ...] [--streams 200] [--rounds 6]

One paced mock (20 events, 5 ms apart), a proxy of each build in front of it (named A, B, …),
and bursts of `--streams` concurrent streams (the selector client of `streams.py`) to direct and
each proxy in a rotating order, round after round. Printed per target: the median over rounds of the burst's
p50 time to a stream's end (and A/B minus direct), failures, and each proxy's CPU per stream
(user + system from /proc, over its own bursts only) — ratios within one run, never across runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Procs, cpu_seconds, median, quantile, start_proxy  # noqa: E402
from streams import burst, raise_file_limit, start_stream_mock  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("builds", type=Path, nargs="+", help="the builds to compare, the base first")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    raise_file_limit()
    with tempfile.TemporaryDirectory() as tmp, Procs(Path(tmp)) as procs:
        mock = start_stream_mock(procs)
        proxies = [start_proxy(procs, pyz.resolve(), chr(ord("A") + i), mock) for i, pyz in enumerate(args.builds)]
        targets = [mock, *proxies]
        for t in proxies:
            burst(t, min(args.streams, 50))  # warm-up, not measured
        p50s: dict[str, list[float]] = {t.name: [] for t in targets}
        cpu = {t.name: 0.0 for t in proxies}
        failed = {t.name: 0 for t in targets}
        for r in range(args.rounds):
            k = r % len(targets)
            for t in targets[k:] + targets[:k]:
                before = cpu_seconds(t.pid)
                done, errors = burst(t, args.streams)
                if t is not mock:
                    cpu[t.name] += (cpu_seconds(t.pid) or 0.0) - (before or 0.0)
                failed[t.name] += errors
                p50s[t.name].append(quantile(done, 0.5) if done else float("nan"))
        direct = median(p50s[mock.name])
        n = args.streams * args.rounds
        print(f"{args.streams} streams x {args.rounds} rounds; direct p50 {1000 * direct:.0f} ms")
        for t in proxies:
            added = median([x - y for x, y in zip(p50s[t.name], p50s[mock.name])])
            print(
                f"{t.name}: p50 {1000 * median(p50s[t.name]):.0f} ms, added {1000 * added:+.0f} ms, "
                f"CPU {1000 * cpu[t.name] / n:.2f} ms/stream, failed {failed[t.name]} of {n}"
            )


if __name__ == "__main__":
    main()

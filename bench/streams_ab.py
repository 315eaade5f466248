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

from common import Procs, cpu_seconds, start_proxy  # noqa: E402
from streams import print_bursts, raise_file_limit, rotating_bursts, start_stream_mock  # noqa: E402


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
        got = rotating_bursts(mock, proxies, args.streams, args.rounds, lambda t: cpu_seconds(t.pid) or 0.0)
        print_bursts(got, mock, proxies, args.streams, args.rounds)


if __name__ == "__main__":
    main()

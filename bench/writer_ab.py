"""A/B of two or more source trees on the PostgreSQL writer's CPU per trace (issue 18), in one run.

    python3 bench/writer_ab.py BASE_TREE NEW_TREE [MORE ...] [--rounds 6] [--postgresql URL]

A tree is a checkout of this repository (``git worktree add /tmp/base main``). One throwaway
PostgreSQL server (or ``--postgresql URL``); each round runs the writer row's measurement
(bench/store.py ``writer_rounds``: a warm-up, then timed rounds, their median) once per tree, each
in a process of its own importing that tree's ``stockyard`` on a fresh database, trees in a rotating
order. Printed per tree: the median over rounds of its CPU µs per trace and of its traces per second
of wall time, and — the number to read — the median over rounds of its CPU per trace over A's in
the same round.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import median  # noqa: E402


def child(tree: Path, url: str, n: int, rounds: int) -> None:
    """In the child process: the writer row's measurement with ``tree``'s stockyard."""
    sys.path.insert(0, str(tree))
    # the tree's stockyard first: bench/store.py puts this repository on the path when imported
    backends = importlib.import_module("stockyard.store.backends")
    dburl = importlib.import_module("stockyard.dburl")
    store = importlib.import_module("store")
    if not backends.__file__ or not backends.__file__.startswith(f"{tree}/"):
        raise SystemExit(f"stockyard came from {backends.__file__}, not {tree}")
    backend = backends.backend_for(dburl.parse_postgres(url, {}))
    wall, cpu = store.writer_rounds(backend, n, rounds, store.PG_WARMUP)
    print(json.dumps({"us": 1e6 / cpu, "wall": wall}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", type=Path, nargs="*", help="the source trees to compare, the base first")
    parser.add_argument("--rounds", type=int, default=6, help="rounds: each tree measured once a round")
    parser.add_argument("--traces", type=int, default=2_048, help="traces per timed round of one measurement")
    parser.add_argument("--timed", type=int, default=5, help="timed rounds in one measurement (their median)")
    parser.add_argument("--postgresql", default="", help="a database URL (default: a throwaway server)")
    parser.add_argument("--child", nargs=2, metavar=("TREE", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child[0]).resolve(), args.child[1], args.traces, args.timed)
    if not args.trees:
        parser.error("name the source trees to compare")
    sys.path.insert(0, str(HERE.parent / "tests"))
    from pgcluster import Cluster

    cluster = None if args.postgresql else Cluster().start()
    try:
        names = [chr(ord("A") + i) for i in range(len(args.trees))]
        got: dict[str, list[dict]] = {name: [] for name in names}
        for r in range(args.rounds):
            k = r % len(names)
            for i in list(range(k, len(names))) + list(range(k)):
                url = args.postgresql or cluster.database()  # type: ignore[union-attr]
                command = [sys.executable, __file__, "--child", str(args.trees[i].resolve()), url]
                command += ["--traces", str(args.traces), "--timed", str(args.timed)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{names[i]} failed: {done.stderr[-2000:]}")
                out = done.stdout
                got[names[i]].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1}: " + ", ".join(f"{n} {got[n][-1]['us']:.1f} µs" for n in names), flush=True)
        for name, tree in zip(names, args.trees):
            ratios = [x["us"] / a["us"] for x, a in zip(got[name], got["A"])]
            print(
                f"{name} ({tree}): CPU {median([x['us'] for x in got[name]]):.1f} µs/trace, "
                f"{median([x['wall'] for x in got[name]]):,.0f} traces/s wall, "
                f"CPU / A per round {median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
            )
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()

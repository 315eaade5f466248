"""A/B of two or more builds on CPU per request with everything on (issue 18), in one run.

    python3 bench/cpu_ab.py BASE.pyz NEW.pyz [MORE.pyz ...] [--rounds 8] [--seconds 2] [--clients 64]

One paced mock (20 ms), a proxy of each build in front of it (A, B, …) with tracing, a client key
with budget + rpm + tpm and the request log on (as the "all on" row), and load rounds to each in
a rotating order. Printed per build: the median CPU per answer (user + system from /proc, over its
own rounds), req/s, and — the number to read — the median over rounds of its CPU per answer over
A's in the same round.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Procs, cpu_seconds, load, median, start_mock, start_proxy  # noqa: E402
from cpu import agent_body, cpu_ms  # noqa: E402
from harness import key_setup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("builds", type=Path, nargs="+", help="the builds to compare, the base first")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument(
        "--agent-body", action="store_true", help="one client sending the ~100 KB agent body (cpu.py), not the load"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Procs(Path(tmp)) as procs:
        mock = start_mock(procs, 20)
        proxies = [
            start_proxy(
                procs, pyz.resolve(), chr(ord("A") + i), mock, log_requests=True, setup=key_setup(pyz.resolve())
            )
            for i, pyz in enumerate(args.builds)
        ]
        per_round: dict[str, list[SimpleNamespace]] = {t.name: [] for t in proxies}
        body = agent_body()
        for r in range(args.rounds):
            k = r % len(proxies)
            for t in proxies[k:] + proxies[:k]:
                if args.agent_body:
                    per_round[t.name].append(SimpleNamespace(ms=cpu_ms(t, body, 40), rps=0.0))
                    continue
                before = cpu_seconds(t.pid) or 0.0
                result = load(t, clients=args.clients, processes=2, seconds=args.seconds)
                used = (cpu_seconds(t.pid) or 0.0) - before
                per_round[t.name].append(SimpleNamespace(ms=1000 * used / max(1, result.answered), rps=result.rps))
        base = per_round["A"]
        for t in proxies:
            rounds = per_round[t.name]
            ratios = [x.ms / a.ms for x, a in zip(rounds, base)]
            ms, rps = median([x.ms for x in rounds]), median([x.rps for x in rounds])
            print(
                f"{t.name}: CPU {ms:.3f} ms/answer, {rps:.0f} req/s,"
                f" CPU / A per round {median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
            )


if __name__ == "__main__":
    main()

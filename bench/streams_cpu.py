"""Where a stream's CPU goes, by thread (issue 18): consecutive bursts of streams to one proxy.

    python3 bench/streams_cpu.py BUILD.pyz [MORE.pyz ...] [--streams 200] [--bursts 5]

One paced mock (20 events, 5 ms apart) and a proxy of each build; each build in turn gets a
warm-up burst, then `--bursts` bursts of `--streams` concurrent streams (the asyncio client of
`streams.py`), nothing else in between. Printed per build, per stream: the proxy's CPU (user and
system, from /proc/PID/stat), its accept loop (the main thread), the busiest long-lived threads
(/proc/PID/task/TID/stat), the stream relay (the busiest thread started since the proxy came up:
it starts with the first stream), and the connection threads — the process's CPU minus all of
those (threads that ended during the bursts, and those kept for the next connection,
`stockyard/threadcache.py`). Builds are measured one after another, not
interleaved: compare their ratios within one run, and confirm with `streams_ab.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Procs, Target, median, quantile, start_proxy  # noqa: E402
from streams import burst, raise_file_limit, start_stream_mock  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def times(stat: Path) -> tuple[float, float]:
    """(user, system) CPU seconds from a /proc stat file."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def threads(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = sum(times(task / "stat"))
        except (OSError, ValueError, IndexError):
            pass  # it ended meanwhile
    return out


def measure(proxy: Target, streams: int, bursts: int) -> str:
    """Bursts to ``proxy``; one line of CPU per stream, split by thread."""
    assert proxy.pid is not None
    service = set(threads(proxy.pid))  # before any stream: the accept loop, the writer, the watch...
    burst(proxy, min(streams, 50))  # warm-up: the pool, the relay thread; not measured
    stat = Path(f"/proc/{proxy.pid}/stat")
    (u0, s0), t0 = times(stat), threads(proxy.pid)
    p50s, failed = [], 0
    for _ in range(bursts):
        done, errors = burst(proxy, streams)
        failed += errors
        p50s.append(quantile(done, 0.5) if done else float("nan"))
    time.sleep(0.5)  # the last request threads write their traces and end
    (u1, s1), t1 = times(stat), threads(proxy.pid)
    n = streams * bursts
    ms = 1000 / n
    used = {tid: cpu - t0.get(tid, 0.0) for tid, cpu in t1.items()}
    accept = used.pop(proxy.pid, 0.0)
    started = {tid: cpu for tid, cpu in used.items() if tid not in service}
    relay = max(started.values(), default=0.0)
    busiest = sorted((cpu for tid, cpu in used.items() if tid in service), reverse=True)[:3]
    request = (u1 - u0) + (s1 - s0) - accept - relay - sum(busiest)
    return (
        f"{proxy.name}: p50 {1000 * median(p50s):.0f} ms, failed {failed}; "
        f"per stream: CPU {(u1 - u0 + s1 - s0) * ms:.2f} ms "
        f"(user {(u1 - u0) * ms:.2f}, system {(s1 - s0) * ms:.2f}); connection threads {request * ms:.2f}, "
        f"relay {relay * ms:.2f}, accept loop {accept * ms:.2f}, "
        f"busiest other {', '.join(f'{c * ms:.2f}' for c in busiest)} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("builds", type=Path, nargs="+")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--bursts", type=int, default=5)
    args = parser.parse_args()
    raise_file_limit()
    with tempfile.TemporaryDirectory() as tmp, Procs(Path(tmp)) as procs:
        mock = start_stream_mock(procs)
        for i, pyz in enumerate(args.builds):
            proxy = start_proxy(procs, pyz.resolve(), chr(ord("A") + i), mock)
            print(measure(proxy, args.streams, args.bursts), flush=True)


if __name__ == "__main__":
    main()

"""A burst's freed memory goes back to the system when the server is idle (``stockyard/memtrim.py``):
glibc keeps what threads freed in their arenas, so RSS stayed at a burst's peak for good."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from stockyard import memtrim

BURST = textwrap.dedent(
    """
    import sys, threading
    from stockyard.memtrim import idle_trimmer

    def rss_mb():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024

    live = []
    def burst():  # request threads: bodies of 80 KB come and go, a few small objects stay
        bodies = [bytes(80_000) + bytes([i % 256]) for i in range(1200)]
        small = [bytearray(600) for _ in range(1200)]
        live.extend(small[::50])
        del bodies
    threads = [threading.Thread(target=burst) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    before = rss_mb()
    idle_trimmer()(None)
    print(before, rss_mb())
    """
)


def test_the_idle_task_gives_a_bursts_freed_heap_back():
    out = subprocess.run([sys.executable, "-c", BURST], capture_output=True, text=True, timeout=60, check=True)
    before, after = map(int, out.stdout.split())
    assert before > 150 and after < before / 3, (before, after)


def test_it_trims_at_most_once_every_interval():
    now = [0.0]
    trim = memtrim.idle_trimmer(clock=lambda: now[0])
    assert trim is not None
    done = []
    for step in (0.0, 1.0, memtrim.EVERY_S - 0.5, memtrim.EVERY_S + 0.1):
        now[0] = step
        assert trim(None) is False  # an idle task with nothing more to do
        done.append(trim.trims)
    assert done == [1, 1, 1, 2]

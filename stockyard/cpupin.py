"""Keep a server process on one CPU: the GIL is handed between threads far more cheaply there.

CPython runs Python code on one thread at a time, and request threads hand that lock (the GIL)
to each other at every socket call. Spread over several CPUs, each hand-off wakes a thread on
another CPU — an inter-processor wake-up and a cold cache — and under load `perf` counted about
37% of the proxy's CPU in thread switching. With every thread on one CPU the same hand-off is a
switch on one run queue: in one `make bench` run the proxy's CPU per request fell by a third and
its throughput rose by half (bench/README.md, "One CPU per process").

The kernel moves unpinned neighbours off a pinned process's CPU by itself; what it cannot fix is
two pinned processes on one CPU (two servers that started there). So a server of its own moves:
about every ``EVERY_S`` (jittered) it reads how busy each CPU was with work other than its own
(``/proc/stat`` minus its own CPU time) and moves to the least busy one when two rounds in a row
found its own busier by more than ``MARGIN``. A ``--workers`` group's workers each stay on a CPU
of their own (``index``): moving, one could land on a sibling. Nothing happens where it cannot help:
one CPU allowed, no ``sched_setaffinity`` (not Linux), a Python without the GIL, or
``STOCKYARD_CPU_PIN=off``.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
from dataclasses import dataclass

log = logging.getLogger("stockyard")

EVERY_S = 2.0  # how often the CPUs' load is looked at
MARGIN = 0.3  # move when our CPU's other work exceeds the least busy CPU's by this much of a CPU
_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Sample:
    """Each CPU's busy and total ticks since boot, and this process's own CPU ticks."""

    cpus: dict[int, tuple[int, int]]
    own: float


def read_sample(stat: str | None = None) -> Sample:
    """Parse ``/proc/stat`` (``stat``: its text, else read now): busy = user, nice, system, irq,
    softirq and steal; total = busy plus idle and iowait."""
    if stat is None:
        with open("/proc/stat", encoding="ascii") as f:
            stat = f.read()
    cpus = {}
    for line in stat.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in rest.split()[:8])
        busy = user + nice + system + irq + softirq + steal
        cpus[int(name[3:])] = (busy, busy + idle + iowait)
    times = os.times()
    return Sample(cpus, (times.user + times.system) * _TICKS_PER_S)


def others_load(before: Sample, after: Sample, current: int) -> dict[int, float]:
    """Each CPU's share of the interval (0 to 1) spent on work other than this process's (all
    of which is counted against ``current``, the CPU it was kept on)."""
    own = after.own - before.own
    load: dict[int, float] = {}
    for cpu, (busy, total) in after.cpus.items():
        if cpu not in before.cpus:
            continue
        spent: float = busy - before.cpus[cpu][0]
        elapsed = total - before.cpus[cpu][1]
        if cpu == current:
            spent -= own
        load[cpu] = max(0.0, spent / elapsed) if elapsed > 0 else 0.0
    return load


def choose(current: int, load: dict[int, float], allowed: list[int], margin: float = MARGIN) -> int:
    """Stay on ``current`` unless an allowed CPU had less other work by more than ``margin``."""
    known = [cpu for cpu in allowed if cpu in load]
    if current not in load or not known:
        return current
    best = min(known, key=lambda cpu: (load[cpu], cpu))
    return best if load[current] - load[best] > margin else current


def set_threads(cpus: set[int] | list[int], ignored: type[OSError] = ProcessLookupError) -> None:
    """Let every thread of this process run only on ``cpus`` (threads started later inherit it
    from the thread that starts them; one started while this runs is caught by the next round).
    ``ignored``: a thread that ended meanwhile, or (best effort) any error."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ignored:
            pass


def usable() -> list[int]:
    """The CPUs this process may be kept on, or [] where keeping it on one cannot help."""
    if not hasattr(os, "sched_setaffinity") or not os.path.isdir("/proc/self/task"):
        return []
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        return []  # free-threaded Python: threads really run in parallel
    allowed = sorted(os.sched_getaffinity(0))
    return allowed if len(allowed) > 1 else []


def running_on() -> int:
    """The CPU this thread ran on last (``/proc/self/stat``, field 39): where the scheduler
    found room for it."""
    with open("/proc/self/stat", encoding="ascii", errors="replace") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[36])  # fields 3 onwards follow the command name in parentheses


class CpuPin:
    """This process kept on one CPU; a process of its own (not a group's worker) moves when a
    neighbour keeps that CPU busy."""

    def __init__(self, allowed: list[int], index: int | None = None) -> None:
        self.allowed = allowed
        self.moves = index is None  # a group's workers stay put: moving, one could land on a sibling
        if index is not None:
            self.cpu = allowed[index % len(allowed)]  # a group's workers start on different CPUs
        else:
            here = running_on()
            self.cpu = here if here in allowed else allowed[0]
        self._stop = threading.Event()
        self._stragglers = False  # the last round moved: set every thread again
        self._wanted: int | None = None  # the CPU the last round would have moved to

    def start(self) -> None:
        set_threads({self.cpu})
        if self.moves:
            threading.Thread(target=self._run, name="stockyard-cpu-pin", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def step(self, before: Sample, after: Sample) -> int:
        """One look at the CPUs: move every thread once two rounds in a row found the same
        other CPU clearly less busy (two servers crowded onto one CPU, sampling at jittered
        times, then do not both leave for the same other one).

        New threads inherit their starter's CPU, so only a move needs every thread set — and
        the round after it, for a thread started while it ran (with 1,000 streams open, setting
        every thread each round would hold the GIL for milliseconds every round)."""
        wanted = choose(self.cpu, others_load(before, after, self.cpu), self.allowed)
        moved = wanted != self.cpu and wanted == self._wanted  # the second look in a row
        self._wanted = None if moved or wanted == self.cpu else wanted
        if moved:
            log.info("moving to CPU %d: CPU %d is busy with other work", wanted, self.cpu)
            self.cpu = wanted
        if moved or self._stragglers:
            set_threads({self.cpu})
        self._stragglers = moved
        return self.cpu

    def _run(self) -> None:
        try:
            before = read_sample()
            while not self._stop.wait(EVERY_S * random.uniform(0.75, 1.25)):
                after = read_sample()
                self.step(before, after)
                before = after
        except (OSError, ValueError) as exc:  # /proc unreadable or unexpected, a CPU gone offline
            log.warning("stopped moving the process between CPUs (%s); it stays on CPU %d", exc, self.cpu)


def keep_on_one_cpu(setting: str, index: int | None = None) -> CpuPin | None:
    """Start keeping this process on one CPU (``setting``: STOCKYARD_CPU_PIN, ``auto`` or
    ``off``; ``index``: a group's worker, else the CPU it runs on now); None where it is off
    or cannot help."""
    allowed = usable() if setting == "auto" else []
    if not allowed:
        return None
    try:
        pin = CpuPin(allowed, index)
        pin.start()
    except (OSError, ValueError) as exc:  # a sandbox that refuses sched_setaffinity, or hides /proc
        set_threads(allowed, OSError)  # best effort: threads pinned before the failure run anywhere again
        log.warning("cannot keep the process on one CPU (%s); it runs on all of them", exc)
        return None
    how = "moved when another is clearly less busy" if pin.moves else "a CPU of this worker's own"
    log.info("threads kept on CPU %d of %s, %s (STOCKYARD_CPU_PIN=off: spread)", pin.cpu, allowed, how)
    return pin

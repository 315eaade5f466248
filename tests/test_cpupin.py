"""Keeping a server process on one CPU (``stockyard.cpupin``): what it reads from ``/proc/stat``,
when it moves, that it moves every thread, and that a real server is kept on one CPU unless
``STOCKYARD_CPU_PIN=off``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import OPENAI_KEY, ServerProcess, base_env, wait_for

from stockyard import cpupin
from stockyard.cpupin import CpuPin, Sample, choose, others_load, read_sample

TWO_CPUS = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="keeping to one CPU needs two to choose from")

STAT = """cpu  300 0 100 1000 10 0 0 0 0 0
cpu0 100 0 50 500 5 0 0 0 0 0
cpu1 200 0 50 500 5 0 0 0 0 0
intr 1 2 3
ctxt 99
"""


def threads_cpus(pid: int | str = "self") -> list[str]:
    """Every thread's allowed CPUs, as /proc says them (``0``, ``0-1``, …)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:  # the thread ended (a request's) between the listing and the read
            continue
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out.append(line.split(":", 1)[1].strip())
    return out


def test_proc_stat_is_read_as_busy_and_total_ticks_per_cpu():
    sample = read_sample(STAT)
    assert sample.cpus == {0: (150, 655), 1: (250, 755)}  # busy = user+nice+system+irq+softirq+steal
    assert sample.own >= 0


def test_only_other_work_counts_and_this_process_counts_on_its_own_cpu():
    before = Sample({0: (0, 0), 1: (0, 0)}, own=0)
    after = Sample({0: (90, 100), 1: (20, 100)}, own=80)  # we used 80 of CPU 0's 90 busy ticks
    load = others_load(before, after, current=0)
    assert load == pytest.approx({0: 0.10, 1: 0.20})
    assert choose(0, load, [0, 1]) == 0, "its own work never makes it move"
    assert others_load(before, after, current=1)[1] == 0.0, "never below zero"


def test_it_moves_only_when_another_cpu_is_clearly_less_busy():
    assert choose(0, {0: 0.9, 1: 0.1}, [0, 1]) == 1
    assert choose(0, {0: 0.35, 1: 0.1}, [0, 1]) == 0, "within the margin: stays"
    assert choose(0, {0: 0.9, 1: 0.1, 2: 0.0}, [0, 1]) == 1, "only to a CPU it may use"
    assert choose(3, {0: 0.0}, [0, 3]) == 3, "a CPU it knows nothing of: stays"
    assert choose(1, {0: 0.9, 1: 0.95, 2: 0.1, 3: 0.1}, [0, 1, 2, 3]) == 2, "the least busy, the lowest first"


@TWO_CPUS
def test_a_move_puts_every_thread_of_the_process_on_the_new_cpu():
    allowed = sorted(os.sched_getaffinity(0))
    stop, started = threading.Event(), threading.Event()

    def idle() -> None:
        started.set()
        stop.wait()

    helper = threading.Thread(target=idle)
    helper.start()
    started.wait()
    pin = CpuPin(allowed, index=0)
    try:
        cpupin.set_threads({pin.cpu})
        assert set(threads_cpus()) == {str(allowed[0])}
        busy = Sample({cpu: (0, 0) for cpu in allowed}, own=0)
        later = Sample({allowed[0]: (95, 100), **{cpu: (5, 100) for cpu in allowed[1:]}}, own=0)
        assert pin.step(busy, later) == allowed[0], "one busy round is not enough"
        assert set(threads_cpus()) == {str(allowed[0])}
        assert pin.step(busy, later) == allowed[1], "two in a row: it moves"
        assert set(threads_cpus()) == {str(allowed[1])}, "the idle thread moved too"
        assert helper.native_id is not None
        calm = Sample({cpu: (50, 100) for cpu in allowed}, own=0)
        os.sched_setaffinity(helper.native_id, {allowed[0]})  # as if started on the old CPU during the move
        assert pin.step(busy, calm) == allowed[1]
        assert os.sched_getaffinity(helper.native_id) == {allowed[1]}, "the round after a move catches stragglers"
        os.sched_setaffinity(helper.native_id, {allowed[0]})
        pin.step(busy, calm)
        assert os.sched_getaffinity(helper.native_id) == {allowed[0]}, "no move: threads are left as they are"
    finally:
        stop.set()
        helper.join()
        cpupin.set_threads(allowed, OSError)
    assert all(os.sched_getaffinity(int(tid)) == set(allowed) for tid in os.listdir("/proc/self/task")), "spread again"


@TWO_CPUS
def test_a_busy_round_between_calm_ones_moves_nothing_and_a_groups_worker_never_moves():
    allowed = sorted(os.sched_getaffinity(0))
    pin = CpuPin(allowed, index=0)
    zero = Sample({cpu: (0, 0) for cpu in allowed}, own=0)
    busy = Sample({allowed[0]: (95, 100), **{cpu: (5, 100) for cpu in allowed[1:]}}, own=0)
    calm = Sample({cpu: (50, 100) for cpu in allowed}, own=0)
    for after in (busy, calm, busy, calm):
        assert pin.step(zero, after) == allowed[0]
    assert not pin.moves and CpuPin(allowed).moves, "only a server of its own runs the mover"


def start(pyz_path, cache_home, mock, tmp_path, **env: str) -> ServerProcess:
    environ = {**base_env(cache_home), "OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": mock.url + "/v1", **env}
    return ServerProcess(pyz_path, tmp_path / "stockyard.db", environ).start()


@TWO_CPUS
def test_a_server_keeps_every_thread_on_one_cpu_unless_told_not_to(pyz_path, cache_home, mock, tmp_path):
    server = start(pyz_path, cache_home, mock, tmp_path)
    try:
        assert server.proc is not None
        status, _, _ = server.request("GET", "/v1/models")
        assert status == 200
        cpus = set(threads_cpus(server.proc.pid))
        assert len(cpus) == 1 and "-" not in next(iter(cpus)) and "," not in next(iter(cpus)), cpus
        wait_for(lambda: "threads kept on CPU" in server.log, what="the start-up line saying so")
    finally:
        server.stop()
    (tmp_path / "off").mkdir()
    spread = start(pyz_path, cache_home, mock, tmp_path / "off", STOCKYARD_CPU_PIN="off")
    try:
        assert spread.proc is not None
        mine = sorted(os.sched_getaffinity(0))
        assert {frozenset(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{spread.proc.pid}/task")} == {
            frozenset(mine)
        }
    finally:
        spread.stop()
    assert "threads kept on CPU" not in spread.log  # the whole log, once it stopped


def test_a_bad_cpu_pin_setting_is_refused_at_start(pyz_path, cache_home, tmp_path):
    env = {**base_env(cache_home), "STOCKYARD_CPU_PIN": "sometimes"}
    done = subprocess.run(
        [sys.executable, str(pyz_path), "serve", "--port", "0", "--db", str(tmp_path / "s.db")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "STOCKYARD_CPU_PIN must be auto or off" in done.stderr
    assert "Traceback" not in done.stderr

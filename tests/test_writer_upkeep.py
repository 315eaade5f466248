"""The writer's housekeeping: stepwise idle tasks, periodic tasks under load, WAL truncation."""

from __future__ import annotations

import time

import pytest
from conftest import wait_for

from stockyard.store import Writer, db


def writer_on(tmp_path) -> Writer:
    conn = db.connect(tmp_path / "w.db")
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    return Writer(tmp_path / "w.db", idle_after_s=0.1).start()


@pytest.mark.perf
def test_an_idle_task_with_a_backlog_runs_step_after_step_and_writes_go_first(tmp_path):
    w = writer_on(tmp_path)
    calls: list[float] = []
    w.add_idle_task(lambda conn: calls.append(time.monotonic()) or len(calls) < 50)
    try:
        w.submit(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
        wait_for(lambda: len(calls) >= 10, 5, "idle steps")
        started = time.monotonic()
        w.call(lambda conn: conn.execute("INSERT INTO t VALUES (2)"))
        assert time.monotonic() - started < 0.5, "a write waits for at most one step"
        wait_for(lambda: len(calls) >= 50, 5, "the backlog drained")
        assert calls[49] - calls[10] < 3.0, "steps follow each other quickly while idle"
        time.sleep(0.5)  # the thing under test: half a second in which no further step may run
        assert len(calls) == 50, "done means done until the next write"
    finally:
        w.stop()


@pytest.mark.perf
def test_periodic_tasks_run_on_time_while_writes_keep_coming(tmp_path):
    w = writer_on(tmp_path)
    runs: list[float] = []
    w.add_periodic_task(lambda conn: runs.append(time.monotonic()), every_s=0.2)
    try:
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            w.submit(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
            time.sleep(0.002)  # a steady stream of writes, the load the periodic task must get through
        assert len(runs) >= 4, runs
    finally:
        w.stop()


def test_the_wal_is_emptied_when_the_writer_goes_idle(tmp_path):
    w = writer_on(tmp_path)
    wal = tmp_path / "w.db-wal"
    try:
        for _ in range(2000):
            w.submit(lambda conn: conn.execute("INSERT INTO t VALUES (randomblob(500))"))
        wait_for(lambda: w.stats.written == 2000, 10, "all written")
        wait_for(lambda: w.stats.checkpoints >= 1 and wal.stat().st_size == 0, 10, "WAL truncated when idle")
    finally:
        w.stop()

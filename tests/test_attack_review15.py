"""Review 15 of the day's changes (the pyz's one-archive importer, the erase of stored Responses and
Conversations, the relay's deferred database work), as an attacker and as an operator, with real
parts: zips built in a temp folder, server processes of the built pyz and the mock upstream."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import zipfile
from pathlib import Path

import pytest
from conftest import ServerProcess, base_env, wait_for
from test_workers import workers_of


def rewritten_in_place(source: Path, running: Path) -> None:
    """The next version written over ``running`` in place (not renamed over it): the same members,
    every one at another offset."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(running, "w", zipfile.ZIP_DEFLATED) as new:
        new.writestr("padding.bin", os.urandom(1 << 20))
        for info in old.infolist():
            new.writestr(info, old.read(info))


def answers_from(server: ServerProcess, worker: str) -> bool:
    """Whether a connection reached the worker of that index and it answered (a worker that is
    not serving leaves connections to its socket waiting: they time out)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1)
    try:
        conn.request("GET", "/metrics")
        answer = conn.getresponse()
        answer.read()
        return answer.status == 200 and answer.getheader("x-stockyard-worker") == worker
    except OSError:
        return False
    finally:
        conn.close()


@pytest.mark.serial
def test_a_worker_restarted_after_the_pyz_was_rewritten_in_place_serves(pyz_path: Path, tmp_path: Path) -> None:
    """A group's worker started again (it died) reads nothing from the pyz: the migrations it
    checks the database against were read by the parent at start. It read them from the open
    file by the offsets of the directory parsed at start, so after an upgrade wrote the pyz in
    place each restart failed ('damaged zip entry') and the group served on one worker less."""
    running = tmp_path / "stockyard.pyz"
    shutil.copy(pyz_path, running)
    env = base_env(tmp_path / "cache")
    group = ServerProcess(running, tmp_path / "s.db", env, ["--workers", "2"], spawned=True).start()
    try:
        first = wait_for(lambda: len(workers_of(group)) == 2 and workers_of(group), 20, "both workers")
        rewritten_in_place(pyz_path, running)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)

        def replaced() -> set[int] | None:
            pids = workers_of(group)
            return pids if len(pids) == 2 and victim not in pids else None

        wait_for(replaced, 20, "a new worker")
        wait_for(lambda: "worker 0 failed" in group.log or answers_from(group, "0"), 30, "worker 0 again")
        assert "worker 0 failed" not in group.log, group.log
    finally:
        group.stop()

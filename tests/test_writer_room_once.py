"""A request's trace rows (each failed attempt's, then the request's) wait for the writer's room once:
when the first that finds no room is kept without its bodies, the rest of that request go without
theirs at once, not 2 s each (a request with fallbacks held its thread 2 s a row after its answer)."""

from __future__ import annotations

import threading

from mock_upstream import Reply
from module_harness import inproc  # noqa: F401 (fixture)

from stockyard.store import writer as writer_module


def test_a_request_waits_for_room_once_however_many_rows_it_has(inproc, mock, monkeypatch):  # noqa: F811
    monkeypatch.setattr(writer_module, "FULL_WAIT_S", 0.2)
    inproc.configure("fallback", {"retries": 2, "breaker_failures": 10, "backoff_ms": 0})
    writer = inproc.writer
    writer.max_bytes = 1  # the first row queued fills it
    release = threading.Event()
    writer.submit(lambda conn: release.wait(30))  # the disk is behind for a while
    try:
        mock.enqueue(Reply(status=500))
        mock.enqueue(Reply(status=500))
        status, headers, _ = inproc.chat()
        assert status == 200
        assert writer.stats.waited_bytes == 1  # the second row waited; the third went without at once
    finally:
        release.set()
    trace_id = headers["x-stockyard-trace-id"]
    rows = inproc.db_rows("SELECT id, parent_id FROM traces WHERE id = ? OR parent_id = ?", (trace_id, trace_id))
    assert len(rows) == 3  # every row kept
    bodies = inproc.db_rows("SELECT trace_id FROM trace_bodies")
    assert len(bodies) == 1  # only the first, queued while there was room

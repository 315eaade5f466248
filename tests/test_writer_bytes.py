"""Traces wait for the database writer in memory: that memory is bounded by bytes, not only by the
writer queue's count. With the disk held (another connection's write transaction), large bodies fill
``STOCKYARD_WRITER_QUEUE_MB``; the traces beyond it wait for room, then are kept without their bodies —
every request still traced, its tokens and cost exact — and counted. Each request is a key's of its own
here: one sender's traces may hold only a quarter of the limit (test_attack_review27 tests that share)."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from conftest import TEST_STORE, ServerProcess, hold_database, mock_env, wait_for
from module_helpers import ADMIN_KEY, client_key

REQUESTS = 12
CONTENT = "the quick brown fox " * 15_000  # ~300 KB: each stored request body is the 256 KiB cap


def test_traces_beyond_the_writers_bytes_go_without_their_bodies_and_none_is_lost(pyz_path, cache_home, mock, tmp_path):
    limits = {"STOCKYARD_WRITER_QUEUE_MB": "1", "STOCKYARD_BUSY_TIMEOUT_MS": "15000"}
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN_KEY, **limits)
    server = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        keys = [client_key(server) for _ in range(REQUESTS)]  # made before the disk is held
        assert server.metric("writer_queue_bytes_capacity") == 1 << 20
        release = hold_database(server.db)  # the disk is behind: no write commits until it ends
        try:
            statuses: list[int] = []
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": CONTENT}]}

            def send(key: str) -> None:
                statuses.append(server.request("POST", "/v1/chat/completions", body, server.auth(key))[0])

            senders = [threading.Thread(target=send, args=(key,)) for key in keys]
            for t in senders:
                t.start()
            for t in senders:
                t.join(30)
            assert statuses == [200] * REQUESTS  # answers never wait for the disk
            wait_for(  # (more may follow: a trace's answer can come before the writer is handed it)
                lambda: server.metric("trace_bodies_unstored_total") >= REQUESTS - 4,
                what="the traces beyond the limit kept without bodies",
            )
            held = server.metric("writer_queue_bytes")
            assert 0 < held <= (1 << 20), held  # what waits stays inside the limit
        finally:
            release()
        rows = wait_for(
            lambda: (
                (
                    r := server.db_rows(
                        "SELECT t.id, t.cost_uc, t.prompt_tokens, b.trace_id AS body FROM traces t "
                        "LEFT JOIN trace_bodies b ON b.trace_id = t.id"
                    )
                )
                and len(r) == REQUESTS
                and r
            ),
            what="every request's trace",
        )
        assert all(r["cost_uc"] and r["prompt_tokens"] for r in rows), rows  # none lost, each priced
        with_bodies = [r for r in rows if r["body"]]
        unstored = server.metric("trace_bodies_unstored_total")  # every trace written: every choice made
        assert 1 <= len(with_bodies) <= 4 and len(rows) - len(with_bodies) == unstored
        assert server.log.count("the database writer is behind") == 1  # a line a minute, not one a trace
        wait_for(lambda: server.metric("writer_queue_bytes") == 0, what="the bytes freed once written")
        stored = server.db_rows("SELECT length(request) AS n FROM trace_bodies")
        assert all(r["n"] for r in stored)
    finally:
        server.stop()

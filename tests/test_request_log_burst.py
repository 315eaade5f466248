"""The request log (``STOCKYARD_LOG_REQUESTS=1``) of a ``--workers 2`` group under a burst, read from
the real stderr pipe of the pyz: every request one whole line, naming the worker that answered
(its ``[wN]`` tag, like the group's other log lines)."""

from __future__ import annotations

import http.client
import re
import threading
from collections import Counter

from conftest import ServerProcess, mock_env

REQUESTS, CLIENTS = 1000, 32
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d I \[w(?P<worker>\d)\] POST /v1/chat/completions 200 \S+ [\d.]+ms"
    r" (?P<trace>tr_[0-9a-f]+)"
)


def _burst(port: int) -> set[str]:
    """``REQUESTS`` chat requests from ``CLIENTS`` keep-alive connections: their trace ids."""
    traces: set[str] = set()
    left = iter(range(REQUESTS))
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                if next(left, None) is None:
                    break
            conn.request("POST", "/v1/chat/completions", BODY, {"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            with lock:
                traces.add(resp.headers["x-stockyard-trace-id"])
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return traces


def test_a_burst_on_two_workers_logs_each_request_once_with_its_worker(pyz_path, cache_home, mock, tmp_path):
    env = mock_env(cache_home, mock, STOCKYARD_LOG_REQUESTS="1")
    server = ServerProcess(pyz_path, tmp_path / "s.db", env, ["--workers", "2"], spawned=True).start()
    try:
        traces = _burst(server.port)
    finally:
        assert server.stop() == 0
    assert len(traces) == REQUESTS
    lines = [line.rstrip("\n") for line in server.log_lines if "/v1/chat/completions" in line]
    torn = [line for line in lines if not LINE.fullmatch(line)]
    assert torn == [], torn[:3]
    logged = {m["trace"]: m["worker"] for m in map(LINE.fullmatch, lines) if m}
    assert len(lines) == len(logged) == REQUESTS
    assert set(logged) == traces
    assert sorted(Counter(logged.values())) == ["0", "1"]  # both workers answered, each line says which

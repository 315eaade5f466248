"""SIGTERM under load: in-flight requests finish, and every answered request has its trace."""

from __future__ import annotations

import http.client
import json
import signal
import threading

import pytest
from conftest import ServerProcess, base_env, wait_for
from mock_upstream import MockUpstream

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def client_loop(port: int, answered: list[str], stop: threading.Event) -> None:
    """Keep sending on one keep-alive connection until the server stops answering."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while not stop.is_set():
            conn.request("POST", "/v1/chat/completions", BODY, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                return
            answered.append(resp.getheader("x-stockyard-trace-id"))
    except (OSError, http.client.HTTPException):
        return
    finally:
        conn.close()


@pytest.mark.serial
def test_sigterm_under_load_keeps_every_answered_trace(pyz_path, cache_home, tmp_path):
    with MockUpstream(delay_ms=30) as slow:
        env = {**base_env(cache_home), "OPENAI_API_KEY": "sk-test-shutdown-1234", "OPENAI_BASE_URL": slow.url + "/v1"}
        server = ServerProcess(pyz_path, tmp_path / "s.db", env).start()
        answered: list[str] = []
        stop = threading.Event()
        threads = [threading.Thread(target=client_loop, args=(server.port, answered, stop)) for _ in range(16)]
        for t in threads:
            t.start()
        wait_for(lambda: len(answered) >= 100, 30, "100 answered requests")
        assert server.stop(signal.SIGTERM) == 0
        stop.set()
        for t in threads:
            t.join(30)
        stored = {r["id"] for r in server.db_rows("SELECT id FROM traces")}
        missing = [t for t in answered if t not in stored]
        assert not missing, f"{len(missing)} of {len(answered)} answered requests have no trace"
        assert "finishing in-flight requests" in server.log and "database closed" in server.log
        actions = [r["action"] for r in server.db_rows("SELECT action FROM audit_log ORDER BY seq")]
        assert actions[-1] == "server.stop"

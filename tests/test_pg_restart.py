"""PostgreSQL restarted under load with three replicas: the outage is survived and left behind by itself.

Three ``serve`` processes on one throwaway cluster of this test's own, load running through all
three with an unbudgeted and a budgeted key. While the cluster is down: unbudgeted requests are
answered, budgeted ones are refused with 503 ``budget_unavailable``, /readyz is not ready and the
traces wait (``/metrics``). Once it is back: every replica is ready again, budgeted keys are
admitted, and every trace answered during the outage is stored.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter

import pytest
from conftest import ServerProcess, mock_env, wait_for

ADMIN = "admin-key-for-restart-tests-0123456789"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
MAX_REQUESTS = 20_000  # a bound on the load, whatever happens
MAX_SECONDS = 180.0
# Between one thread's requests: moderate load. In a trial here, six closed-loop threads outran
# what the three writers committed (their queues filled within a minute), and a full queue makes
# readyz not ready for a reason of its own, not the outage's.
PACE_S = 0.05


class Load:
    """One thread per (replica, key): requests one after another, each recorded with the
    phase it started and ended in (a request that spans a change of phase is not counted)."""

    def __init__(self, servers: list[ServerProcess], keys: dict[str, str]) -> None:
        self.servers, self.keys = servers, keys
        self.phase = "before"
        self.results: list[tuple[str, int, str, int, str, str]] = []  # phase, replica, key, status, code, trace
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i, kind), daemon=True)
            for i in range(len(servers))
            for kind in keys
        ]
        self._deadline = time.monotonic() + MAX_SECONDS

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, replica: int, kind: str) -> None:
        auth = {"Authorization": f"Bearer {self.keys[kind]}"}
        while not self._stop.wait(PACE_S) and len(self.results) < MAX_REQUESTS and time.monotonic() < self._deadline:
            phase = self.phase
            try:
                status, headers, data = self.servers[replica].request("POST", "/v1/chat/completions", CHAT, auth)
            except OSError:
                status, headers, data = 0, {}, b"{}"
            if self.phase != phase:
                continue
            code = json.loads(data).get("error", {}).get("code", "") if status != 200 else ""
            self.results.append((phase, replica, kind, status, code, headers.get("x-stockyard-trace-id", "")))

    def count(self, phase: str) -> Counter:
        return Counter((r[1], r[2]) for r in self.results if r[0] == phase)

    def each_has(self, phase: str, n: int) -> bool:
        counts = self.count(phase)
        return all(counts[(i, kind)] >= n for i in range(len(self.servers)) for kind in self.keys)

    def of(self, phase: str, kind: str) -> list[tuple]:
        return [r for r in self.results if r[0] == phase and r[2] == kind]


def ready(server: ServerProcess) -> int:
    return server.request("GET", "/readyz")[0]


def waiting_records(server: ServerProcess) -> float:
    text = server.request("GET", "/metrics")[2].decode()
    return float(re.search(r"^stockyard_writer_waiting_records (\S+)$", text, re.M).group(1))


@pytest.mark.serial
def test_postgresql_restarted_under_load_with_3_replicas_everything_resumes(pyz_path, cache_home, mock):
    from pgcluster import Cluster

    cluster = Cluster().start()  # its own server: this test stops it
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN)
    url = cluster.database()
    servers: list[ServerProcess] = []
    try:
        servers = [ServerProcess(pyz_path, url, env).start() for _ in range(3)]  # type: ignore[arg-type]
        admin = {"Authorization": f"Bearer {ADMIN}"}
        keys = {}
        budget = {"budget_usd": "100", "budget_period": "day"}
        for kind, body in (("plain", {"name": "plain"}), ("budgeted", {"name": "b", **budget})):
            status, _, data = servers[0].request("POST", "/api/keys", body, admin)
            assert status == 201, data
            keys[kind] = json.loads(data)["key"]
        wait_for(
            lambda: all(
                s.request("GET", "/v1/models", headers={"Authorization": f"Bearer {secret}"})[0] == 200
                for s in servers
                for secret in keys.values()
            ),
            what="both keys on every replica (they are told at once)",
        )

        with Load(servers, keys) as load:
            wait_for(lambda: load.each_has("before", 3), what="load through every replica")
            load.phase = "stopping"
            cluster.stop_server()
            load.phase = "outage"
            wait_for(lambda: load.each_has("outage", 5), 60, "requests during the outage")
            wait_for(lambda: all(ready(s) == 503 for s in servers), 30, "readyz to say not ready")
            wait_for(lambda: all(waiting_records(s) > 0 for s in servers), 30, "traces waiting for the database")
            outage_answered = [r[5] for r in load.of("outage", "plain") if r[3] == 200]
            load.phase = "restarting"
            cluster.start_server()
            wait_for(lambda: all(ready(s) == 200 for s in servers), 60, "readyz to be ready again")
            load.phase = "after"
            wait_for(lambda: load.each_has("after", 5), 60, "requests after the restart")

        outage_plain, outage_budgeted = load.of("outage", "plain"), load.of("outage", "budgeted")
        assert {r[3] for r in outage_plain} == {200}, Counter(r[3] for r in outage_plain)
        assert {(r[3], r[4]) for r in outage_budgeted} == {(503, "budget_unavailable")}
        after = load.of("after", "plain") + load.of("after", "budgeted")
        assert {r[3] for r in after} == {200}, Counter((r[2], r[3], r[4]) for r in after)

        answered = set(outage_answered) | {r[5] for r in after}
        assert all(answered)

        def stored() -> set[str]:
            return {row["id"] for row in servers[0].db_rows("SELECT id FROM traces")}

        wait_for(lambda: answered <= stored(), 60, "every trace answered during and after the outage")
        wait_for(lambda: all(waiting_records(s) == 0 for s in servers), 30, "nothing left waiting")
        for server in servers:
            assert "records_dropped_waiting_total 0" in server.request("GET", "/metrics")[2].decode()
    finally:
        for server in servers:
            server.stop()
        cluster.stop()

"""``serve --workers N``: one port, N processes, and the state they must agree on.

In-process: a group's backend hands out the shared ledger and rate buckets on its state file
(their behaviour there is tested with the replicas', in tests/test_pg_replicas.py), and the
merging of /metrics. End to end: a pyz with ``--workers 2``: a budget burst admits exactly
the budget, an rpm limit holds, concurrent admin writes leave one audit chain, a revocation
reaches every worker within a second, the admin login throttle counts for the group,
SIGTERM stops every worker cleanly, and a killed worker is replaced.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import re
import selectors
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import TEST_STORE, ServerProcess, base_env, mock_env, wait_for
from mock_upstream import Reply

from stockyard.budgets import Budget, BudgetExceeded
from stockyard.groupstate import RemoteLedger, RemoteRateLimiter, StateClient, StateLost, StateServer
from stockyard.modules.ratelimit import RateLimited
from stockyard.store import Store
from stockyard.store.backends import SqliteBackend
from stockyard.workers import merge, spend_loader

ADMIN = "admin-key-for-worker-tests-0123456789"
BUDGET_MODEL = {"model": "mock-budget", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
TS = 1_780_000_000_000


# -- in process: the group's backend and metrics --------------------------------------------------
@pytest.fixture
def state(tmp_path):
    """The parent's shared state, served by a loop of its own (the parent's loop, in a thread)."""
    yield from serving(StateServer(str(tmp_path), lambda budget, key: 0, (50,)))


def serving(server: StateServer):
    """Serve ``server`` from a loop of its own until the test ends."""
    selector = selectors.DefaultSelector()
    server.attach(selector)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for key, _ in selector.select(0.05):
                key.data()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield server
    stop.set()
    thread.join()
    server.close()


def test_a_group_backend_calls_the_parents_ledger_and_rate_windows(tmp_path):
    group, alone = SqliteBackend(tmp_path / "a.db", group=tmp_path), SqliteBackend(tmp_path / "b.db")
    assert type(group.rate_limiter(Store(group))) is RemoteRateLimiter
    assert type(group.ledger(Store(group), lambda b, k: 0)) is RemoteLedger
    assert type(alone.rate_limiter(Store(alone))) is not RemoteRateLimiter


def test_workers_calling_the_parent_at_once_admit_exactly_the_budget(state, tmp_path):
    budget = Budget("key:k1", "key 'k1'", 10 * 7, "day")
    warned: list[tuple[str, int]] = []
    exhausted: list[str] = []
    workers = [
        RemoteLedger(
            StateClient(tmp_path),
            lambda b, k: 0,
            on_warning=lambda b, key, spent, pct: warned.append((b.scope, pct)),
            on_exhausted=lambda refused: exhausted.append(refused.budget.scope),
        )
        for _ in range(3)
    ]

    def one(i: int) -> bool:
        try:
            hold = workers[i % 3].reserve([budget], 7, TS)
        except BudgetExceeded:
            return False
        workers[i % 3].settle(hold, 7, ["key:k1"], TS)
        return True

    with ThreadPoolExecutor(max_workers=24) as pool:
        admitted = sum(pool.map(one, range(60)))
    assert admitted == 10 and workers[0].usage(budget, TS) == (70, 0)
    assert warned == [("key:k1", 50)]  # once, by whichever worker's settlement crossed it
    assert exhausted == ["key:k1"]  # once per period
    refused = workers[1].used_up([budget], TS)
    assert refused is not None and refused.spent == 70


def test_a_worker_reads_the_tightest_budget_from_the_parent(state, tmp_path):
    """What a batch's running worst case is compared with (``App.batch_room``): the budget with the
    least left beside what is spent and held, counting what another worker holds."""
    key, project = Budget("key:k3", "key 'k3'", 1000, "day"), Budget("project:p3", "project 'p3'", 5000, "day")
    workers = [RemoteLedger(StateClient(tmp_path), lambda b, k: 0) for _ in range(2)]
    assert workers[0].tightest([], TS) is None
    hold = workers[0].reserve([key, project], 300, TS)
    tight = workers[1].tightest([key, project], TS)  # key 700 left, project 4700
    assert tight is not None and (tight.budget.scope, tight.spent, tight.reserved) == ("key:k3", 0, 300)
    workers[0].settle(workers[0].reserve([project], 4500, TS), 4500, ["project:p3"], TS)
    tight = workers[1].tightest([key, project], TS)  # key 700 left, project 5000 - 4500 - 300 = 200
    assert tight is not None and (tight.budget.scope, tight.spent, tight.reserved) == ("project:p3", 4500, 300)
    workers[0].settle(hold, 0, [], TS)
    assert workers[1].used_up([key, project], TS) is None


def test_hundreds_of_calls_at_once_are_all_answered_and_no_settlement_is_lost(state, tmp_path):
    """More calls at once than the parent's listen backlog and the workers' idle connections: each
    waits its turn (none fails with EAGAIN, no settlement is dropped; before, ~1% were at 192 clients)."""
    budget = Budget("key:k2", "key 'k2'", 10**12, "day")
    workers = [RemoteLedger(StateClient(tmp_path), lambda b, k: 0) for _ in range(2)]
    start = threading.Barrier(400)

    def one(i: int) -> None:
        start.wait()
        hold = workers[i % 2].reserve([budget], 5, TS)
        workers[i % 2].settle(hold, 3, ["key:k2"], TS)

    with ThreadPoolExecutor(max_workers=400) as pool:
        list(pool.map(one, range(400)))
    assert workers[0].usage(budget, TS) == (1200, 0)


def test_a_dead_workers_holds_go_back_when_the_parent_reaps_it(state, tmp_path):
    budget = Budget("key:k2", "key 'k2'", 100, "total")
    ledger = RemoteLedger(StateClient(tmp_path), lambda b, k: 0)
    ledger.reserve([budget], 60, TS)  # never settled: the worker died with the request
    with pytest.raises(BudgetExceeded):
        ledger.reserve([budget], 60, TS)
    state.forget(os.getpid())
    assert ledger.usage(budget, TS) == (0, 0)
    ledger.settle(ledger.reserve([budget], 60, TS), 10, ["key:k2"], TS)
    assert ledger.usage(budget, TS) == (10, 0)


def test_a_batchs_hold_reaches_the_group_from_its_start_to_its_bill(state, tmp_path):
    """A batch's worst case is spend from its start (one worker) until it is billed (perhaps by
    another, as its cost minus the hold); the group's loader counts unbilled holds after a restart."""
    budget = Budget("key:k4", "key 'k4'", 100, "day")
    started, billing = (RemoteLedger(StateClient(tmp_path), lambda b, k: 0) for _ in range(2))
    started.settle(started.reserve([budget], 90, TS), 90, ["key:k4"], TS)
    with pytest.raises(BudgetExceeded):
        billing.reserve([budget], 20, TS)
    billing.settle(None, 5 - 90, ["key:k4"], TS)
    assert started.usage(budget, TS) == (5, 0)
    backend = SqliteBackend(tmp_path / "holds.db")
    backend.open_and_migrate()
    conn = backend.connect()
    rows = [("batch_a", "k4", 0, 90), ("batch_b", "k4", 1, 40), ("batch_c", "other", 0, 70)]
    for batch_id, key_id, billed, held in rows:
        conn.execute(
            "INSERT INTO owned_objects (id, kind, key_id, provider, created_at, billed, held_uc) "
            "VALUES (?, 'batch', ?, 'openai', 0, ?, ?)",
            (batch_id, key_id, billed, held),
        )
    conn.commit()
    conn.close()
    assert spend_loader(backend)(budget, "2026-05-28") == 90  # the unbilled one of this key only


@pytest.fixture
def synced_state(tmp_path):
    """The parent's shared state over a real database, as a group's (its loader and its resync's reads)."""
    backend = SqliteBackend(tmp_path / "group.db")
    backend.open_and_migrate()
    server = StateServer(str(tmp_path), spend_loader(backend), (80,), lambda: backend.connect(readonly=True))
    for served in serving(server):
        yield served, backend


def test_a_dead_workers_commit_counts_and_a_live_workers_settlement_not_yet_committed_stays(synced_state, tmp_path):
    """A worker records a batch with its hold (committed) and dies before settling it; another settled an
    answer whose trace its writer has not committed. Reaping the first, the parent reloads the period:
    the batch's hold from the database, the live worker's cost beside it (its trace not there yet)."""
    server, backend = synced_state
    budget = Budget("key:k5", "key 'k5'", 1_000, "day")
    live = RemoteLedger(StateClient(tmp_path), lambda b, k: 0)
    live.settle(live.reserve([budget], 100, TS), 60, ["key:k5"], TS, trace_id="trace-not-committed")
    conn = backend.connect()
    conn.execute(  # the dead worker's commit: a batch holding 90 µ¢ until it is billed
        "INSERT INTO owned_objects (id, kind, key_id, provider, created_at, billed, held_uc) "
        "VALUES ('batch_k5', 'batch', 'k5', 'openai', 0, 0, 90)"
    )
    conn.commit()
    conn.close()
    assert live.usage(budget, TS) == (60, 0)
    server.forget(2**22 + 1)  # a worker that held nothing here: it died before its settlement
    assert live.usage(budget, TS) == (150, 0)


def test_workers_share_the_parents_rate_windows(state, tmp_path):
    one, two = RemoteRateLimiter(StateClient(tmp_path)), RemoteRateLimiter(StateClient(tmp_path))
    for limiter in (one, two, one):
        limiter.admit("key_rpm", 3, None, 0)
    with pytest.raises(RateLimited) as refused:
        two.admit("key_rpm", 3, None, 0)
    assert refused.value.retry_after is not None and refused.value.retry_after <= 60
    entry = one.admit("key_tpm", None, 1000, 900)
    with pytest.raises(RateLimited):
        two.admit("key_tpm", None, 1000, 200)
    one.correct("key_tpm", entry, 100)  # it used 100 of the 900 it was counted for
    # A correction wants no answer: it is ordered before this worker's next call (the same pooled
    # connection), not before another worker's, which may come first.
    one.admit("key_tpm", None, 1000, 800)
    with pytest.raises(RateLimited):
        two.admit("key_tpm", None, 1000, 200)


def test_a_workers_check_asks_the_parent_and_counts_nothing(state, tmp_path):
    """ratelimit.check_early: would the parent's windows refuse this request now? (before a
    conversation is read); asking counts no request."""
    limiter = RemoteRateLimiter(StateClient(tmp_path))
    for _ in range(3):
        limiter.check("key_check", 1, None, 0)
    limiter.admit("key_check", 1, None, 0)
    with pytest.raises(RateLimited) as refused:
        limiter.check("key_check", 1, None, 0)
    assert "1 requests per minute" in refused.value.message
    with pytest.raises(RateLimited):
        limiter.check("key_check_tpm", None, 1000, 1001)


def test_a_worker_whose_parent_is_gone_fails_budgets_closed_and_limits_open(tmp_path):
    ledger, limiter = RemoteLedger(StateClient(tmp_path), lambda b, k: 0), RemoteRateLimiter(StateClient(tmp_path))
    with pytest.raises(StateLost):
        ledger.reserve([Budget("key:k3", "key 'k3'", 100, "day")], 1, TS)  # the budget module: a 503
    assert limiter.admit("key_rpm", 1, None, 0).id is None  # counted nowhere, not refused


def test_group_metrics_merge_every_workers_series_under_one_family_each():
    zero = "# HELP stockyard_up Up.\n# TYPE stockyard_up counter\nstockyard_up 1\n# HELP stockyard_ms Ms.\n" + (
        '# TYPE stockyard_ms histogram\nstockyard_ms_bucket{le="+Inf"} 2\nstockyard_ms_count 2\n'
    )
    one = '# HELP stockyard_up Up.\n# TYPE stockyard_up counter\nstockyard_up{key="a b"} 3\n'
    assert merge({1: one, 0: zero}).splitlines() == [
        "# HELP stockyard_up Up.",
        "# TYPE stockyard_up counter",
        'stockyard_up{worker="0"} 1',
        'stockyard_up{worker="1",key="a b"} 3',
        "# HELP stockyard_ms Ms.",
        "# TYPE stockyard_ms histogram",
        'stockyard_ms_bucket{worker="0",le="+Inf"} 2',
        'stockyard_ms_count{worker="0"} 2',
    ]


# -- end to end: a pyz with --workers 2 --------------------------------------------------------
@pytest.fixture
def group(pyz_path, cache_home, mock, tmp_path):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN)
    server = ServerProcess(pyz_path, tmp_path / "stockyard.db", env, ["--workers", "2"]).start()
    yield server
    server.stop()


def api(server: ServerProcess, method: str, path: str, body=None):
    status, _, data = server.request(method, path, body, headers={"Authorization": f"Bearer {ADMIN}"})
    return status, json.loads(data)


def workers_of(server: ServerProcess) -> set[int]:
    """The pids of the group's workers (the parent's children)."""
    assert server.proc is not None
    pid = server.proc.pid
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return set()
    return {int(p) for p in text.split()}


def connection_to(server: ServerProcess, worker: int, source: str = "127.0.0.1") -> http.client.HTTPConnection:
    """A keep-alive connection from ``source`` that the given worker accepted (workers race for each one)."""
    for _ in range(500):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10, source_address=(source, 0))
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 200
        if answer.getheader("x-stockyard-worker") == str(worker):
            return conn
        conn.close()
    raise AssertionError(f"no connection reached worker {worker}")


def status_on(conn: http.client.HTTPConnection, method: str, path: str, headers: dict) -> int:
    conn.request(method, path, headers=headers)
    answer = conn.getresponse()
    answer.read()
    return answer.status


def wait_for_key(server: ServerProcess, auth: dict) -> list[http.client.HTTPConnection]:
    """A connection to each worker, once each has the key (keys are required from the first one)."""
    conns = [connection_to(server, worker) for worker in (0, 1)]
    for worker, conn in enumerate(conns):

        def knows(conn: http.client.HTTPConnection = conn) -> bool:
            unknown = status_on(conn, "GET", "/v1/models", {"Authorization": "Bearer sk-unknown"})
            return unknown == 401 and status_on(conn, "GET", "/v1/models", auth) == 200

        wait_for(knows, what=f"the key on worker {worker}")
    return conns


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two workers on two CPUs need two CPUs")
def test_each_worker_is_kept_on_a_cpu_of_its_own(group):
    pids = workers_of(group)
    assert len(pids) == 2
    cpus = [{frozenset(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{pid}/task")} for pid in pids]
    assert all(len(each) == 1 and len(next(iter(each))) == 1 for each in cpus), cpus
    assert cpus[0] != cpus[1], "the workers start on different CPUs"
    wait_for(lambda: group.log.count("a CPU of this worker's own") == 2, what="each worker saying it stays")


@pytest.mark.skipif(
    TEST_STORE == "postgresql",
    reason="SQLite only: a file is one group's alone (its .lock); servers sharing a PostgreSQL database are replicas",
)
def test_a_second_server_on_the_file_of_a_group_is_refused(group):
    refused = group.cli("serve", "--port", "0", "--workers", "2")
    assert refused.returncode == 1
    assert "already using" in refused.stderr


def test_a_second_group_on_the_port_of_a_group_is_refused(group, tmp_path):
    """Reuseport would let a second group's sockets join the first's: a plain bind first refuses it."""
    argv = [sys.executable, str(group.pyz), "serve", "--port", str(group.port), "--workers", "2"]
    refused = subprocess.run(
        [*argv, "--db", str(tmp_path / "other.db")], env=group.env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 1
    assert f"cannot listen on 127.0.0.1:{group.port}" in refused.stderr
    assert group.request("GET", "/healthz")[0] == 200


def test_a_group_under_a_too_long_tmpdir_says_so(pyz_path, cache_home, tmp_path):
    """The group's shared-state socket goes in a private folder under TMPDIR; a path past the ~107 bytes a
    Unix socket's address holds failed with only "AF_UNIX path too long". It names TMPDIR now, and what to do."""
    deep = tmp_path / ("t" * 60) / ("m" * 60)
    deep.mkdir(parents=True)
    env = {**base_env(cache_home), "TMPDIR": str(deep)}
    argv = [sys.executable, str(pyz_path), "serve", "--port", "0", "--workers", "2", "--db", str(tmp_path / "g.db")]
    refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1, refused.stderr
    assert "TMPDIR" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert not list(deep.iterdir()), "the group's private folder is left behind"


def test_workers_must_be_a_positive_number(group):
    refused = group.cli("serve", "--port", "0", "--workers", "0")
    assert refused.returncode != 0
    assert "--workers (STOCKYARD_WORKERS) must be a positive whole number" in refused.stderr


def test_one_scrape_shows_the_requests_of_every_worker(group):
    for worker in (0, 1):  # a proxied request on each
        conn = connection_to(group, worker)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(CHAT))
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 200
        conn.close()

    def both() -> str | None:
        status, _, data = group.request("GET", "/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
        text = data.decode()
        seen = set(re.findall(r'^stockyard_requests_total\{worker="(\d)"', text, re.MULTILINE))
        return text if status == 200 and seen == {"0", "1"} else None

    text = wait_for(both, what="both workers' requests in one scrape")
    assert text.count("# TYPE stockyard_requests_total counter") == 1


@pytest.mark.serial
def test_100_concurrent_requests_over_2_workers_against_a_budget_for_10(group, mock):
    status, _ = api(group, "POST", "/api/prices", {"model": "mock-budget", "input": "0", "output": "1"})
    assert status == 200
    status, key = api(group, "POST", "/api/keys", {"name": "shared", "budget_usd": "0.00005", "budget_period": "total"})
    assert status == 201, key
    auth = {"Authorization": f"Bearer {key['key']}"}
    for conn in wait_for_key(group, auth):  # both workers have the key (and the price) before the burst
        conn.close()
    before = sum(1 for r in mock.requests if r.json and r.json.get("model") == "mock-budget")
    mock.delay_ms = 200  # replies overlap in flight
    try:
        with ThreadPoolExecutor(max_workers=100) as pool:
            results = list(
                pool.map(lambda i: group.request("POST", "/v1/chat/completions", BUDGET_MODEL, auth), range(100))
            )
    finally:
        mock.delay_ms = 0
    statuses = [r[0] for r in results]
    assert statuses.count(200) == 10 and statuses.count(429) == 90, (statuses, group.log[-3000:])
    assert {json.loads(r[2])["error"]["code"] for r in results if r[0] == 429} == {"budget_exceeded"}
    admitted = sum(1 for r in mock.requests if r.json and r.json.get("model") == "mock-budget") - before
    assert admitted == 10  # the 90 refused never reached the provider
    for worker in (0, 1):  # once settled, each worker says the whole budget is spent
        conn = connection_to(group, worker)

        def spent(conn: http.client.HTTPConnection = conn) -> bool:
            conn.request("POST", "/v1/chat/completions", body=json.dumps(BUDGET_MODEL), headers=auth)
            answer = conn.getresponse()
            text = answer.read().decode()
            assert answer.status == 429, text
            return "$0.00005 spent" in text

        wait_for(spent, what=f"the settlements on worker {worker}")
        conn.close()


@pytest.mark.serial
def test_an_rpm_limit_holds_across_2_workers(group):
    status, key = api(group, "POST", "/api/keys", {"name": "limited", "rpm": 5})
    assert status == 201, key
    auth = {"Authorization": f"Bearer {key['key']}", "Content-Type": "application/json"}
    conns = wait_for_key(group, auth)  # GET /v1/models is not rate limited
    statuses = []
    for i in range(12):  # alternately on each worker: each alone would admit 5
        conn = conns[i % 2]
        conn.request("POST", "/v1/chat/completions", body=json.dumps(CHAT), headers=auth)
        answer = conn.getresponse()
        answer.read()
        statuses.append(answer.status)
    assert statuses.count(200) == 5 and statuses.count(429) == 7, statuses
    for conn in conns:
        conn.close()


@pytest.mark.serial
def test_an_rpm_limit_holds_across_2_workers_on_the_files_routes_too(group):
    """Files and batches calls are counted in the key's window the parent keeps, not per worker:
    alternating between the workers, a key with rpm 3 lists 3 times, then chats and lists are 429."""
    status, key = api(group, "POST", "/api/keys", {"name": "limited-files", "rpm": 3})
    assert status == 201, key
    auth = {"Authorization": f"Bearer {key['key']}", "Content-Type": "application/json"}
    conns = wait_for_key(group, auth)
    statuses = [status_on(conns[i % 2], "GET", "/v1/files" if i % 3 else "/v1/batches", auth) for i in range(8)]
    assert statuses == [200] * 3 + [429] * 5, statuses
    conns[0].request("POST", "/v1/chat/completions", body=json.dumps(CHAT), headers=auth)
    answer = conns[0].getresponse()
    answer.read()
    assert answer.status == 429 and answer.getheader("retry-after")
    for conn in conns:
        conn.close()


def test_a_deployments_rpm_holds_across_2_workers(group, mock):
    """A deployment's rpm is its provider's quota: 3 a minute through the group, not 3 per worker;
    the rest spill to the next priority."""
    for fields in (
        {"name": "a", "provider": "openai", "model": "mock-quota-a", "rpm": 3},
        {"name": "b", "provider": "openai", "model": "mock-quota-b", "priority": 1},
    ):
        status, view = api(group, "POST", "/api/models/quota/deployments", fields)
        assert status == 201, view
    conns = [connection_to(group, worker) for worker in (0, 1)]
    body = json.dumps({"model": "quota", "messages": [{"role": "user", "content": "hi"}]})
    for worker, conn in enumerate(conns):

        def knows(conn: http.client.HTTPConnection = conn) -> bool:  # both deployments running, not only a
            conn.request("GET", "/api/models", headers={"Authorization": f"Bearer {ADMIN}"})
            answer = conn.getresponse()
            models = json.loads(answer.read())["data"] if answer.status == 200 else []
            running = [d for m in models if m["name"] == "quota" for d in m["deployments"] if d["health"]]
            return len(running) == 2

        wait_for(knows, what=f"the model on worker {worker}")
    start, statuses = len(mock.requests), []  # the mock is shared with earlier tests
    for i in range(8):  # alternately on each worker: each alone would send a 3 of them
        conns[i % 2].request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        answer = conns[i % 2].getresponse()
        answer.read()
        statuses.append(answer.status)
    assert statuses == [200] * 8
    sent = [
        r.json["model"] for r in mock.requests[start:] if r.json and str(r.json.get("model", "")).startswith("mock-")
    ]
    assert sent.count("mock-quota-a") == 3 and sent.count("mock-quota-b") == 5, sent
    for conn in conns:
        conn.close()


@pytest.mark.serial
def test_a_key_revoked_through_one_worker_is_refused_by_all_within_a_second(group):
    status, key = api(group, "POST", "/api/keys", {"name": "short-lived"})
    assert status == 201, key
    auth = {"Authorization": f"Bearer {key['key']}"}
    conns = wait_for_key(group, auth)
    conns[1].request("POST", f"/api/keys/{key['id']}/revoke", headers={"Authorization": f"Bearer {ADMIN}"})
    answer = conns[1].getresponse()
    answer.read()
    assert answer.status == 200
    revoked_at = time.monotonic()
    wait_for(
        lambda: all(status_on(conn, "GET", "/v1/models", auth) == 401 for conn in conns),
        timeout=1.0,
        what="the refusal on both workers",
    )
    assert time.monotonic() - revoked_at < 1.0
    for conn in conns:
        conn.close()


@pytest.mark.serial
def test_concurrent_admin_writes_through_2_workers_leave_one_verifying_audit_chain(group):
    def create(i: int) -> int:
        return api(group, "POST", "/api/keys", {"name": f"k{i}"})[0]

    with ThreadPoolExecutor(max_workers=12) as pool:
        assert list(pool.map(create, range(30))) == [201] * 30
    verified = group.cli("audit", "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    entries = group.db_rows("SELECT count(*) AS n FROM audit_log WHERE action = 'keys.create'")
    assert entries == [{"n": 30}]


def test_the_admin_login_throttle_holds_across_2_workers(group):
    """Was: each worker counted failed admin logins in its own memory, so a sender guessing the
    admin key had 10 guesses a minute per worker. Alternating between the workers, the 11th wrong
    guess is refused whichever worker takes it; the right key still works on both."""
    source, other = "127.0.0.71", "127.0.0.72"
    conns = [connection_to(group, worker, source) for worker in (0, 1)]
    wrong = {"Authorization": "Bearer wrong-guess-0123456789"}
    answers = [answer_on(conns[i % 2], "GET", "/api/status", wrong) for i in range(14)]
    assert all(kept for _, _, kept in answers)  # each guess went to the worker its connection is on
    statuses = [status for status, _, _ in answers]
    assert statuses == [401] * 10 + [429] * 4, statuses
    assert all(1 <= int(retry) <= 61 for status, retry, _ in answers if status == 429)
    right = {"Authorization": f"Bearer {ADMIN}"}
    assert [answer_on(conn, "GET", "/api/status", right) for conn in conns] == [(200, "", True)] * 2
    assert answer_on(connection_to(group, 1, other), "GET", "/api/status", wrong)[0] == 401  # per sender
    failed = group.db_rows(
        "SELECT count(*) AS n FROM audit_log WHERE action = 'admin.auth_failed' AND actor = ?", (f"admin-api:{source}",)
    )
    assert failed == [{"n": 10}]  # refusals while blocked are not written
    for conn in conns:
        conn.close()


def test_a_burst_of_wrong_admin_keys_over_2_workers_gets_exactly_10_guesses(group):
    """Concurrent guesses on fresh connections (either worker takes each): the count and the audit
    row of each admitted guess are one transaction of the shared database, so no burst passes more."""
    source = "127.0.0.73"

    def guess(_: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", group.port, timeout=30, source_address=(source, 0))
        try:
            return answer_on(conn, "GET", "/api/status", {"Authorization": "Bearer burst-guess-0123456789"})[0]
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(guess, range(40)))
    assert statuses.count(401) == 10 and statuses.count(429) == 30, statuses


def answer_on(conn: http.client.HTTPConnection, method: str, path: str, headers: dict) -> tuple[int, str, bool]:
    """(the status, its Retry-After, whether it came on the connection's first socket and kept it)
    of one request on ``conn``: a connection ``connection_to`` made stays on its worker while the
    answers keep it open (http.client would silently open a new one, to either worker)."""
    sock = conn.sock
    conn.request(method, path, headers=headers)
    answer = conn.getresponse()
    answer.read()
    kept = sock is not None and conn.sock is sock and not answer.will_close
    return answer.status, answer.getheader("retry-after", ""), kept


@pytest.mark.serial
def test_sigterm_stops_every_worker_after_its_requests_in_flight(group, mock):
    workers = workers_of(group)
    assert len(workers) == 2
    conns = [connection_to(group, worker) for worker in (0, 1)]
    before = len(mock.requests)
    mock.delay_ms = 500
    try:
        for conn in conns:  # one slow request in flight on each worker
            conn.request("POST", "/v1/chat/completions", body=json.dumps(CHAT))
        wait_for(lambda: len(mock.requests) >= before + 2, what="both requests at the mock")
        assert group.proc is not None
        group.proc.send_signal(signal.SIGTERM)
        statuses = []
        for conn in conns:
            answer = conn.getresponse()
            answer.read()
            statuses.append(answer.status)
    finally:
        mock.delay_ms = 0
    assert statuses == [200, 200]
    assert group.proc.wait(30) == 0
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # no orphans, no zombies
    assert group.log.count("stopped; database closed") == 2, group.log


@pytest.mark.serial
def worker_serving(server: ServerProcess, conn: http.client.HTTPConnection) -> int:
    """The pid of the worker holding ``conn``'s other end (its socket's inode, read from /proc)."""
    client_port = conn.sock.getsockname()[1]
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(f.split(":")[1], 16) for f in fields[1:3])
            if local == server.port and remote == client_port:
                inodes.add(fields[9])
    for pid in workers_of(server):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes:
                    return pid
            except OSError:
                continue
    raise AssertionError("no worker holds the connection")


@pytest.mark.skipif(
    TEST_STORE == "postgresql",
    reason="SQLite only: on PostgreSQL the workers' ledger is the database's own rows, with no parent to resync",
)
def test_a_requests_hold_open_across_a_resync_still_counts(group, mock):
    """A request whose budget hold is open (its answer still being made) when a worker dies and the
    parent reloads every budget's spend from the database: the hold is kept — not spent yet, so not in
    the database, and not forgotten — so another request its budget has no room for beside it is still
    refused (a hold lives until it settles or its worker dies, however long the request runs)."""
    status, _ = api(group, "POST", "/api/prices", {"model": "mock-budget", "input": "0", "output": "1"})
    assert status == 200
    # each request holds 1,000 output tokens at $1 per 1M (100,000 µ¢); the budget has room for one and a half
    status, key = api(group, "POST", "/api/keys", {"name": "long", "budget_usd": "0.0015", "budget_period": "total"})
    assert status == 201, key
    auth = {"Authorization": f"Bearer {key['key']}", "Content-Type": "application/json"}
    conns = wait_for_key(group, {"Authorization": auth["Authorization"]})
    body = json.dumps({**BUDGET_MODEL, "max_tokens": 1000})
    answered, started = threading.Event(), threading.Event()
    mock.enqueue(Reply(held=answered, hang_started=started))
    conns[0].request("POST", "/v1/chat/completions", body=body, headers=auth)
    assert started.wait(10), "the long request reached the provider"
    serving = worker_serving(group, conns[0])
    (other,) = workers_of(group) - {serving}
    conns[1].close()
    os.kill(other, signal.SIGKILL)
    wait_for(lambda: "budget spend reloaded from the database" in group.log, what="the resync")
    status, _, text = group.request("POST", "/v1/chat/completions", json.loads(body), auth)
    assert status == 429 and b"budget_exceeded" in text, (status, text)
    answered.set()
    long = conns[0].getresponse()
    assert long.status == 200, long.read()
    long.read()
    conns[0].close()


def test_a_killed_worker_is_replaced(group):
    first = workers_of(group)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> set[int] | None:
        pids = workers_of(group)
        return pids if len(pids) == 2 and victim not in pids else None

    after = wait_for(replaced, what="a new worker")
    assert len(after & first) == 1
    for worker in (0, 1):  # both indexes serve again
        connection_to(group, worker).close()
    assert "was killed by SIGKILL: starting a new one" in group.log
    assert group.request("GET", "/readyz")[0] == 200


def test_workers_on_postgresql_are_replicas_of_one_database(pyz_path, cache_home, mock, pg_url):
    env = mock_env(cache_home, mock)
    server = ServerProcess(pyz_path, pg_url, env, ["--workers", "2"]).start()  # type: ignore[arg-type]
    try:
        for worker in (0, 1):
            conn = connection_to(server, worker)
            conn.request("POST", "/v1/chat/completions", body=json.dumps(CHAT))
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200
            conn.close()
    finally:
        assert server.stop() == 0
    assert server.log.count("stopped; database closed") == 2, server.log


@pytest.mark.serial
def test_workers_stop_when_their_parent_is_killed(group):
    workers = workers_of(group)
    assert len(workers) == 2
    group.stop(signal.SIGKILL)  # no SIGTERM to pass on: each worker notices its parent is gone
    for pid in workers:
        # a child of ours no more (re-parented), so /proc is the way to see it end
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid), what=f"worker {pid} to stop")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# -- SIGTERM while the group starts ----------------------------------------------------------------
def answered_by_a_worker(port: int) -> bool:
    """True once a GET /healthz on the group's port is answered (a connection the kernel gave to
    a socket no worker serves yet waits: give up on it and try a new one)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


GROUP_HARNESS = """
import logging, os, signal, sys
from stockyard import config
from stockyard.workers import Group

gate, db, catch = sys.argv[1], sys.argv[2], sys.argv[3] == "catch"
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")


def main(worker):
    print(f"worker {worker.index} starting", flush=True)
    if worker.index == 0:
        if catch:  # its SIGTERM handler is in place (as serve's is, just before it says it serves)
            signal.signal(signal.SIGTERM, lambda *_: print("worker 0 told to stop", flush=True))
        with open(gate) as held:  # starting until the test opens the pipe
            held.read()
    worker.ready()
    print(f"worker {worker.index} serves", flush=True)
    return 0


settings = config.load({"port": 0, "db": db, "workers": 2})
sys.exit(Group(settings, main).run())
"""


@pytest.mark.parametrize("catch", [False, True], ids=["still-starting", "says-it-serves-after-the-stop"])
def test_a_stop_during_start_up_starts_no_more_workers_and_ends_cleanly(cache_home, tmp_path, catch):
    """The real group supervisor with a worker whose start-up the test holds (a named pipe): a
    SIGTERM while worker 0 is starting. Was: the parent still started worker 1 once worker 0 said
    it served, and never stopped it (the group hung, then was killed: exit 1); a worker the stop
    ended before it served (its default SIGTERM disposition) made the group exit 1."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    cmd = [sys.executable, "-c", GROUP_HARNESS, str(gate), str(tmp_path / "s.db"), "catch" if catch else "-"]
    env = {**base_env(cache_home), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True).start()
    try:
        wait_for(lambda: "worker 0 starting\n" in lines, 30, "worker 0 starting")
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: any("stopping 1 workers" in line for line in lines), what="the stop passed on")
        if catch:
            wait_for(lambda: "worker 0 told to stop\n" in lines, what="worker 0 told")
            with open(gate, "w"):  # worker 0 goes on and says it serves: after the stop
                pass
        assert proc.wait(30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "worker 1 starting\n" not in lines, "".join(lines)
    assert ("worker 0 serves\n" in lines) == catch


def _listening_port(pid: int) -> int | None:
    """The TCP port a process listens on (from /proc), or None yet."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                return int(fields[1].rsplit(":", 1)[1], 16)
    return None


def test_bodies_two_workers_write_at_once_are_each_found_by_their_own_words(group):
    """Both workers' writers index bodies into one SQLite file: each picks its search rowids inside
    its BEGIN IMMEDIATE, so no two bodies share a row and every word finds exactly its trace."""
    status, key = api(group, "POST", "/api/keys", {"name": "searcher"})
    assert status == 201, key
    auth = {"Authorization": f"Bearer {key['key']}"}
    for conn in wait_for_key(group, auth):
        conn.close()
    words = [f"okapi{i}x" for i in range(60)]

    def ask(word: str) -> tuple:
        body = {**CHAT, "messages": [{"role": "user", "content": word}]}
        return group.request("POST", "/v1/chat/completions", body, auth)

    with ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(ask, words))
    assert [r[0] for r in results] == [200] * len(words)
    ids = {w: r[1]["x-stockyard-trace-id"] for w, r in zip(words, results)}
    for w, trace_id in ids.items():
        wait_for(lambda w=w: api(group, "GET", f"/api/traces?q={w}")[1]["data"], what=f"the trace of {w}")
        assert [t["id"] for t in api(group, "GET", f"/api/traces?q={w}")[1]["data"]] == [trace_id]
    if TEST_STORE == "sqlite":  # the rowids SQLite's index links bodies by
        links = group.db_rows("SELECT count(*) AS n, count(DISTINCT search_rowid) AS rows FROM trace_bodies")[0]
    else:  # PostgreSQL's index rows carry their trace's id: one each
        links = group.db_rows("SELECT count(*) AS n, count(DISTINCT trace_id) AS rows FROM trace_search")[0]
    assert links["n"] >= len(words) and links["rows"] == links["n"], links


def test_the_parent_out_of_descriptors_goes_on_serving_the_group(group, mock):
    """Found by attack24: a parent that could open no more descriptors (every one a worker's connection:
    workers × their calls at once can pass one process's open-file limit) let accept()'s EMFILE out of
    its loop, and the whole group went down. Now it rests its accepting, answers on the connections it
    has, and accepts again once one closes or the rest is over."""
    import resource

    status, _ = api(group, "POST", "/api/prices", {"model": "mock-budget", "input": "0", "output": "1"})
    assert status == 200
    status, key = api(group, "POST", "/api/keys", {"name": "fds", "budget_usd": "100", "budget_period": "total"})
    assert status == 201, key
    auth = {"Authorization": f"Bearer {key['key']}"}
    for conn in wait_for_key(group, auth):
        conn.close()
    assert group.proc is not None
    parent = group.proc.pid
    soft, hard = resource.prlimit(parent, resource.RLIMIT_NOFILE)
    open_now = len(list(Path(f"/proc/{parent}/fd").iterdir()))
    resource.prlimit(parent, resource.RLIMIT_NOFILE, (open_now, hard))  # not one descriptor more for the parent
    mock.delay_ms = 100  # the calls overlap: the workers need new connections to the parent
    try:
        with ThreadPoolExecutor(max_workers=40) as pool:
            calls = [pool.submit(group.request, "POST", "/v1/chat/completions", BUDGET_MODEL, auth) for _ in range(40)]
            # the parent's accept got EMFILE (it says so) or it went down; until a descriptor is given
            # back, the calls waiting would each wait out the workers' CALL_TIMEOUT_S
            wait_for(lambda: "cannot accept a connection" in group.log or group.proc.poll() is not None, 30)
            if group.proc.poll() is None:
                resource.prlimit(parent, resource.RLIMIT_NOFILE, (soft, hard))
            for call in calls:
                call.result()
    finally:
        mock.delay_ms = 0
        if group.proc.poll() is None:
            resource.prlimit(parent, resource.RLIMIT_NOFILE, (soft, hard))
    assert group.proc.poll() is None, group.log[-3000:]
    status, _, raw = group.request("POST", "/v1/chat/completions", BUDGET_MODEL, auth)
    assert status == 200, raw
    assert "Traceback" not in group.log, group.log[-3000:]


def test_a_worker_that_dies_at_every_start_backs_off_then_stops_the_group(group):
    """Was: a worker that died at once at every start (here: its parent's open-file limit lowered
    under it, so a new worker cannot open its database) was started again every second for good,
    the group half up and only a line a second saying so. Now each start waits twice as long as
    the last, the log says why, and after ``QUICK_FAILURES`` such deaths in a row the group stops
    with a message saying so and exit 1."""
    import resource

    from stockyard.workers import QUICK_FAILURES

    assert group.proc is not None
    parent = group.proc.pid
    _, hard = resource.prlimit(parent, resource.RLIMIT_NOFILE)
    resource.prlimit(parent, resource.RLIMIT_NOFILE, (16, hard))  # a worker forked now can open nothing
    os.kill(max(workers_of(group)), signal.SIGKILL)
    started = time.monotonic()
    assert group.proc.wait(120) == 1, group.log[-3000:]
    took = time.monotonic() - started
    waits = [float(w) for w in re.findall(r"starting a new one in ([0-9.]+)s", group.log)]
    # the one killed had served: not a start that failed (started again in 1 s, or at once past QUICK_S)
    assert waits[0] in (0.0, 1.0), group.log[-3000:]
    assert waits[1:] == [1.0, 2.0, 4.0, 8.0][: QUICK_FAILURES - 1], group.log[-3000:]
    assert took >= sum(waits), "the restarts did not wait"
    assert f"died within 10s of its start {QUICK_FAILURES} times in a row" in group.log, group.log[-3000:]
    assert "worker 1 cannot start: stopping 1 workers" in group.log
    assert group.log.count("[w1] cannot listen on") == QUICK_FAILURES  # each failed start says why
    assert not workers_of(group)


def test_a_worker_killed_again_and_again_after_it_served_never_stops_the_group(group):
    """Was (review 30): a worker killed within 10 s of its start counted as one that cannot start,
    though it had served: a client that can end a worker (a request the kernel's OOM killer ends it
    for, sent again as each replacement comes up) stopped the whole group for good after
    ``QUICK_FAILURES`` of them, where before it was only restarted. Now only a worker that dies
    before it serves counts toward stopping the group; one that served is started again after
    ``RESTART_WAIT_S`` when it had just started, and the group goes on.

    Was (stop 47): past those, such a worker (a fault just after its start) was started again every
    second for good, a restart's CPU and a log line a second. Now the wait doubles after the first
    ``QUICK_FAILURES`` (up to ``SERVED_WAIT_MAX_S``)."""
    from stockyard.workers import QUICK_FAILURES

    victim = max(workers_of(group))
    for _ in range(QUICK_FAILURES + 2):
        for worker in (0, 1):  # both serve: the one killed next had started and served
            connection_to(group, worker).close()
        known = workers_of(group)
        os.kill(victim, signal.SIGKILL)
        (victim,) = wait_for(functools.partial(newcomers, group, known), 30, "its replacement")
    for worker in (0, 1):
        connection_to(group, worker).close()
    assert group.proc is not None and group.proc.poll() is None, group.log[-3000:]
    assert "cannot start" not in group.log
    waits = [float(w) for w in re.findall(r"was killed by SIGKILL: starting a new one in ([0-9.]+)s", group.log)]
    assert waits == [1.0] * QUICK_FAILURES + [2.0, 4.0], group.log[-3000:]
    assert group.request("GET", "/readyz")[0] == 200


def newcomers(group: ServerProcess, known: set[int]) -> set[int]:
    """The group's workers started since ``known`` were."""
    return workers_of(group) - known


@pytest.mark.serial
def test_a_worker_stopped_alone_is_replaced_on_a_socket_that_listens(group):
    """A worker told to stop on its own (a SIGTERM to its pid) answers what was queued at its socket,
    then stops that socket listening (connections coming later go to the other workers instead of
    waiting at a socket nobody accepts on); its replacement gets a new one on the port."""
    first = workers_of(group)
    victim = max(first)
    os.kill(victim, signal.SIGTERM)

    def replaced() -> set[int] | None:
        pids = workers_of(group)
        return pids if len(pids) == 2 and victim not in pids else None

    wait_for(replaced, 30, "a new worker")
    for worker in (0, 1):  # both indexes serve again
        connection_to(group, worker).close()
    assert "exited with status 0: starting a new one" in group.log
    assert group.request("GET", "/readyz")[0] == 200


def _answer(conn: http.client.HTTPConnection, body: dict, auth: dict) -> tuple[int, str]:
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=auth)
    answer = conn.getresponse()
    return answer.status, answer.read().decode()


@pytest.mark.serial
@pytest.mark.skipif(
    TEST_STORE == "postgresql",
    reason="SQLite only: on PostgreSQL the workers' ledger is the database's own rows, with no parent to resync",
)
def test_workers_killed_after_settling_answers_their_database_never_kept_leave_the_database_spend(group, mock):
    """A worker settles an answer's cost with the parent before its writer commits the trace. Killed
    between the two (its writer held by a lock on the file), the answer's spend is in the parent's
    ledger and nowhere in the database: on reaping it the parent reloads each period from the
    database (plus what live workers settled and have not committed), so the budget admits exactly
    what the database says is left. Before, the lost answer stayed spent until a restart."""
    status, _ = api(group, "POST", "/api/prices", {"model": "mock-budget", "input": "0", "output": "1"})
    assert status == 200
    # each answer costs 500 µ¢ (5 tokens at $1/M), its worst case too: the budget is two answers
    status, key = api(group, "POST", "/api/keys", {"name": "killed", "budget_usd": "0.00001", "budget_period": "total"})
    assert status == 201, key
    auth = {"Authorization": f"Bearer {key['key']}"}
    conns = wait_for_key(group, auth)
    assert _answer(conns[0], BUDGET_MODEL, auth)[0] == 200
    spent = "SELECT COALESCE(SUM(cost_uc), 0) AS uc FROM traces WHERE key_id = ?"
    wait_for(lambda: group.db_rows(spent, (key["id"],))[0]["uc"] == 500, what="the first answer's commit")
    lock = sqlite3.connect(group.db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # no worker's writer commits from here
    try:
        assert _answer(conns[1], BUDGET_MODEL, auth)[0] == 200

        def settled() -> bool:  # the parent counts the second answer as spent, not held
            status, text = _answer(conns[0], BUDGET_MODEL, auth)
            assert status == 429, text
            return "$0.00001 spent" in text

        wait_for(settled, what="the second answer's settlement")
        for conn in conns:
            conn.close()
        victims = workers_of(group)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)  # the second answer's trace dies in its worker's writer
        wait_for(lambda: not victims & workers_of(group), what="the workers reaped")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    conns = wait_for_key(group, auth)
    assert group.db_rows(spent, (key["id"],))[0]["uc"] == 500  # the database kept one answer
    status, text = _answer(conns[1], BUDGET_MODEL, auth)
    assert status == 200, text  # the 500 µ¢ the database says are left
    status, text = _answer(conns[0], BUDGET_MODEL, auth)
    assert status == 429 and "$0.00001 spent" in text, text
    for conn in conns:
        conn.close()

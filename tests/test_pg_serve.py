"""``stockyard serve --db postgresql://…`` end to end: a real pyz process, the mock upstream, PostgreSQL.

The trace and its cost land in PostgreSQL, the admin API and the CLI read them back, and the
database password shows up nowhere: not in the log, not in /api/status.
"""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pg8000.native
import pytest
from conftest import ServerProcess, base_env, mock_env, wait_for

ADMIN = "admin-key-for-postgresql-tests-0123"
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture
def pg_server(pyz_path, cache_home, mock, pg_cluster, pg_url):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN)
    server = ServerProcess(pyz_path, pg_url, env).start()  # type: ignore[arg-type]
    yield server
    server.stop()


def rows(pg_cluster, pg_url: str, sql: str, **params) -> list[dict]:
    conn = pg_cluster.admin(pg_url.rsplit("/", 1)[1].split("?")[0])
    try:
        result = conn.run(sql, **params)
        names = [c["name"] for c in conn.columns or []]
        return [dict(zip(names, r)) for r in result]
    finally:
        conn.close()


def test_a_proxied_request_is_traced_and_costed_in_postgresql(pg_server, pg_cluster, pg_url):
    status, headers, body = pg_server.request(
        "POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}
    )
    assert status == 200, body
    trace_id = headers["x-stockyard-trace-id"]
    sql = "SELECT * FROM traces WHERE id = :id"
    found = wait_for(lambda: rows(pg_cluster, pg_url, sql, id=trace_id), what="the trace in PostgreSQL")
    # gpt-4o-mini: 12 × 15_000_000 + 5 × 60_000_000 µ¢ per 1M tokens = 480 µ¢ (as in test_costs)
    assert (found[0]["cost_uc"], found[0]["cost_status"], found[0]["prompt_tokens"]) == (480, "exact", 12)
    rollup = rows(pg_cluster, pg_url, "SELECT requests, cost_uc FROM rollups_daily WHERE model <> ''")
    assert rollup == [{"requests": 1, "cost_uc": 480}]

    auth = {"Authorization": f"Bearer {ADMIN}"}
    status, _, data = pg_server.request("GET", f"/api/traces/{trace_id}", headers=auth)
    assert status == 200 and json.loads(data)["cost_uc"] == 480
    status, _, data = pg_server.request("GET", "/api/costs?by=model", headers=auth)
    assert status == 200 and json.loads(data)["total"]["cost_uc"] == 480
    status, _, data = pg_server.request("GET", "/readyz")
    assert status == 200, data


def burst(server: ServerProcess, chat: dict, headers: dict | None = None) -> list[tuple[int, dict, bytes]]:
    """800 chat requests, 400 at once: more than one read connection can count in a busy timeout."""
    with ThreadPoolExecutor(max_workers=400) as pool:
        return list(pool.map(lambda _: server.request("POST", "/v1/chat/completions", chat, headers), range(800)))


def limited_burst(server: ServerProcess, auth: dict) -> list[dict]:
    """A burst against an rpm of 5 (one answered before it): at most 4 answered, the rest 429 or a
    503 ``database_unavailable`` (never passed uncounted, never a 500); the 503s' errors."""
    chat = {"model": "gpt-4o-mini", "messages": HELLO}
    wait_for(lambda: server.request("POST", "/v1/chat/completions", chat, auth)[0] == 200, what="the key")
    answers = burst(server, chat, auth)
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) <= 4 and set(statuses) <= {200, 429, 503}, {s: statuses.count(s) for s in statuses}
    busy = [json.loads(raw)["error"] for status, _, raw in answers if status == 503]
    assert busy and {e["code"] for e in busy} == {"database_unavailable"}
    return busy


def test_the_cli_and_a_running_server_share_the_postgresql_database(pg_server):
    made = pg_server.cli("keys", "create", "--name", "team-a", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["key"]
    # the server notices the first key (the config_version row) and requires keys from now on
    wait_for(
        lambda: (
            pg_server.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})[0] == 401
        ),
        what="the server to pick up the key made by the CLI",
    )
    status, _, _ = pg_server.request(
        "POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO},
        headers={"Authorization": f"Bearer {key}"},
    )  # fmt: skip
    assert status == 200
    verified = pg_server.cli("audit", "verify", "--json")
    assert verified.returncode == 0 and json.loads(verified.stdout.splitlines()[0])["ok"] is True, verified


def test_the_server_heals_when_postgresql_drops_its_connections(pg_server, pg_cluster, pg_url):
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert pg_server.request("GET", "/api/traces", headers=auth)[0] == 200
    assert pg_server.request("GET", "/readyz")[0] == 200
    kill = (
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    assert rows(pg_cluster, pg_url, kill)[0]["n"] >= 2  # the writer's, the readers', the watcher's, the lock's
    status, headers, _ = pg_server.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})
    assert status == 200
    trace_id = headers["x-stockyard-trace-id"]
    wait_for(lambda: rows(pg_cluster, pg_url, "SELECT id FROM traces WHERE id = :id", id=trace_id), what="the trace")
    status, _, data = pg_server.request("GET", "/api/traces", headers=auth)
    assert status == 200 and [t["id"] for t in json.loads(data)["data"]] == [trace_id]
    assert pg_server.request("GET", "/readyz")[0] == 200
    # the one-server lock went with its connection: the watcher takes it again within a pass
    wait_for(lambda: "database lock: taken again" in pg_server.log, what="the server lock taken again")


def test_the_database_password_is_never_shown(pg_server, pg_cluster):
    status, _, data = pg_server.request("GET", "/api/status", headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 200
    shown = json.loads(data)["database"]["path"]
    assert shown.startswith("postgresql://stockyard:***@127.0.0.1:")
    pg_server.stop()
    assert "postgresql://stockyard:***@" in pg_server.log
    assert pg_cluster.password not in pg_server.log and pg_cluster.password not in data.decode()


def test_an_unreachable_database_is_a_clear_error_at_start(pyz_path, cache_home, pg_cluster):
    url = f"postgresql://stockyard:{pg_cluster.password}@127.0.0.1:1/nowhere?sslmode=disable"
    server = ServerProcess(pyz_path, url, base_env(cache_home))  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="server exited at start"):
        server.start()
    assert server.proc is not None and server.proc.wait(10) != 0
    assert "PostgreSQL" in server.log and pg_cluster.password not in server.log
    assert "Traceback" not in server.log


def test_postgresql_down_and_back_while_serving(pyz_path, cache_home, mock):
    """Down: /readyz is 503 (password masked) and the proxy still answers; back: all resumes by itself."""
    from pgcluster import Cluster

    cluster = Cluster().start()  # its own server: this test stops it
    env = mock_env(cache_home, mock)
    url = cluster.database()
    server = ServerProcess(pyz_path, url, env).start()  # type: ignore[arg-type]
    chat = {"model": "gpt-4o-mini", "messages": HELLO}
    try:
        assert server.request("GET", "/readyz")[0] == 200
        cluster.stop_server()
        # A probe's answer is reused for up to a second (App.database_problem)
        wait_for(lambda: server.request("GET", "/readyz")[0] == 503, what="/readyz to see the loss")
        status, _, data = server.request("GET", "/readyz")
        assert status == 503 and b"not writable" in data and cluster.password.encode() not in data
        # /readyz answers anyone: the kind of failure, never the driver's text (host, port, user)
        assert re.fullmatch(r"not writable: [A-Za-z_.]+", json.loads(data)["database"]), data
        status, headers, _ = server.request("POST", "/v1/chat/completions", chat)
        assert status == 200  # relaying goes on
        during = headers["x-stockyard-trace-id"]
        waiting = "stockyard_writer_waiting_records 1"  # the trace waits for the database
        wait_for(lambda: waiting in server.request("GET", "/metrics")[2].decode(), what="the waiting trace")
        assert "stockyard_database_size_bytes NaN" in server.request("GET", "/metrics")[2].decode()
        cluster.start_server()
        wait_for(lambda: server.request("GET", "/readyz")[0] == 200, what="/readyz ready again")
        status, headers, _ = server.request("POST", "/v1/chat/completions", chat)
        assert status == 200
        trace_id = headers["x-stockyard-trace-id"]
        wait_for(lambda: rows(cluster, url, "SELECT id FROM traces WHERE id = :id", id=trace_id), what="the trace")
        assert rows(cluster, url, "SELECT id FROM traces WHERE id = :id", id=during)  # it waited, and was written
    finally:
        server.stop()
        cluster.stop()
    assert cluster.password not in server.log


def test_a_burst_of_budgeted_requests_shares_a_few_connections(pyz_path, cache_home, mock, pg_cluster, pg_url):
    """80 budgeted, rate-limited requests at once through a server with 3 read connections: every
    one answered, the key's spend exactly their traces' cost, and the server's sessions stay within
    its 3 plus its own few (before, each request thread opened one: a burst of 1,000 streams ran
    PostgreSQL out of connections and failed most of them)."""
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_PG_CONNECTIONS="3")
    server = ServerProcess(pyz_path, pg_url, env).start()  # type: ignore[arg-type]
    database = pg_url.rsplit("/", 1)[1].split("?")[0]
    admin = pg_cluster.admin(database)
    try:
        limits = ["--budget-usd", "100", "--budget-period", "total", "--rpm", "10000"]
        key = server.create_keys({"burst": limits})["burst"]
        auth = {"Authorization": f"Bearer {key}"}
        chat = {"model": "gpt-4o-mini", "messages": HELLO}
        wait_for(lambda: server.request("POST", "/v1/chat/completions", chat, auth)[0] == 200, what="the key")
        # client sessions less this one (an autovacuum worker on the database shows there too)
        clients = "backend_type = 'client backend'"
        sessions = f"SELECT count(*) - 1 FROM pg_stat_activity WHERE datname = '{database}' AND {clients}"
        own = 5  # the writer, LISTEN, the configuration watcher, the server lock, the lease keeper (after 10 s)
        # the CLI that made the key has exited, but on a loaded machine its backend may not have yet
        wait_for(lambda: admin.run(sessions)[0][0] <= 3 + own, what="only the server's sessions left")
        seen: list[int] = []
        done = threading.Event()

        def sample() -> None:  # the server's sessions, sampled while the burst runs
            while not done.is_set():
                seen.append(admin.run(sessions)[0][0])

        sampler = threading.Thread(target=sample)
        sampler.start()
        with ThreadPoolExecutor(max_workers=80) as pool:
            statuses = list(
                pool.map(lambda _: server.request("POST", "/v1/chat/completions", chat, auth)[0], range(80))
            )
        done.set()
        sampler.join()
        assert statuses == [200] * 80
        assert seen and max(seen) <= 3 + own  # the pool and the server's own
        wait_for(lambda: rows(pg_cluster, pg_url, "SELECT count(*) AS n FROM traces")[0]["n"] == 81, what="81 traces")
        total = rows(pg_cluster, pg_url, "SELECT sum(cost_uc) AS c FROM traces")[0]["c"]
        assert total > 0
        ledger = "SELECT spent_uc, reserved_uc FROM budget_ledger"  # each request settles after its answer
        wait_for(lambda: rows(pg_cluster, pg_url, ledger) == [{"spent_uc": total, "reserved_uc": 0}], what="settled")
    finally:
        admin.close()
        server.stop()


def reserved(pg_cluster, pg_url) -> int:
    """What the budget ledger holds reserved, in all."""
    return rows(pg_cluster, pg_url, "SELECT coalesce(sum(reserved_uc), 0) AS r FROM budget_ledger")[0]["r"]


def test_a_request_refused_for_a_busy_pool_is_a_503_in_its_clients_shape_and_traced(
    pyz_path, cache_home, mock, pg_cluster, pg_url
):
    """One read connection, and the budget ledger locked by another session: the request holding the
    connection waits out the lock, the others out the pool; each is a 503 ``database_unavailable``
    in the dialect it spoke (OpenAI, Anthropic, Gemini), traced; then the pool serves again, nothing
    held back and no reservation left."""
    env = mock_env(
        cache_home,
        mock,
        STOCKYARD_ADMIN_KEY=ADMIN,
        STOCKYARD_PG_CONNECTIONS="1",
        STOCKYARD_BUSY_TIMEOUT_MS="500",
        GEMINI_API_KEY="AIza-pool-test-0123456789abcdef",
        GEMINI_BASE_URL=mock.url,
    )
    server = ServerProcess(pyz_path, pg_url, env).start()  # type: ignore[arg-type]
    database = pg_url.rsplit("/", 1)[1].split("?")[0]
    admin = pg_cluster.admin(database)
    try:
        key = server.create_keys({"k": ["--budget-usd", "100", "--budget-period", "total"]})["k"]
        asks = {
            "openai": (
                "/v1/chat/completions",
                {"model": "gpt-4o-mini", "messages": HELLO},
                {"Authorization": f"Bearer {key}"},
            ),
            "anthropic": (
                "/v1/messages",
                {"model": "gpt-4o-mini", "max_tokens": 8, "messages": HELLO},
                {"x-api-key": key},
            ),
            "gemini": (
                "/v1beta/models/gemini-2.5-flash:generateContent",
                {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
                {"x-goog-api-key": key},
            ),
        }
        for path, body, headers in asks.values():
            wait_for(lambda p=path, b=body, h=headers: server.request("POST", p, b, h)[0] == 200, what="the key")
        # a request settles after its answer: the lock must not catch the last one's settlement (it would
        # wait for the lease keeper's retry, seconds later)
        wait_for(lambda: reserved(pg_cluster, pg_url) == 0, what="the warm-up requests settled")
        admin.run("BEGIN")
        admin.run("LOCK TABLE budget_ledger IN ACCESS EXCLUSIVE MODE")
        with ThreadPoolExecutor(max_workers=9) as pool:
            answers = list(pool.map(lambda d: (d, *server.request("POST", *asks[d])), list(asks) * 3))
        admin.run("COMMIT")
        for dialect, status, _, raw in answers:
            assert status == 503, (dialect, status, raw)
            body = json.loads(raw)
            if dialect == "openai":
                assert body["error"]["code"] in ("budget_unavailable", "database_unavailable"), raw
            elif dialect == "anthropic":
                assert body["type"] == "error" and body["error"]["type"] in ("overloaded_error", "api_error"), raw
            else:
                assert body["error"]["code"] == 503 and body["error"]["status"] == "UNAVAILABLE", raw
        refused = "SELECT count(*) AS n FROM traces WHERE status = 503"
        wait_for(lambda: rows(pg_cluster, pg_url, refused)[0]["n"] == 9, what="the 9 refusals traced")
        for path, body, headers in asks.values():  # the connection came back: the pool serves
            assert server.request("POST", path, body, headers)[0] == 200
        wait_for(lambda: reserved(pg_cluster, pg_url) == 0, what="no reservation left (each settles after its answer)")
        # the pool's own refusals, counted (the log says the budget's failure once a minute, not per request)
        metrics = server.request("GET", "/metrics")[2].decode()
        busy_total = re.search(r"^stockyard_pg_read_connections_busy_total (\d+)", metrics, re.M)
        assert busy_total and int(busy_total[1]) >= 1, metrics[-3000:]
        wait_for(lambda: "could not be loaded" in server.log, what="the budget's failure in the log (batched)")
        assert "Traceback" not in server.log
    finally:
        admin.close()
        server.stop()


def test_a_burst_past_the_read_pool_never_passes_a_keys_rpm(pyz_path, cache_home, mock, pg_url):
    """Was: one read connection, a busy timeout of 0.1 s and 800 requests (400 at once) on a key at
    rpm 5: the rate counts that waited out the pool failed open, and 608 were answered. Now a
    request the pool cannot count is a 503 ``database_unavailable`` (Retry-After), never passed."""
    env = mock_env(
        cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_PG_CONNECTIONS="1", STOCKYARD_BUSY_TIMEOUT_MS="100"
    )
    server = ServerProcess(pyz_path, pg_url, env).start()  # type: ignore[arg-type]
    try:
        key = server.create_keys({"limited": ["--rpm", "5"]})["limited"]
        auth = {"Authorization": f"Bearer {key}"}
        busy = limited_burst(server, auth)
        assert {e["message"] for e in busy} <= {
            "the server is busy: all its database connections stayed in use; try again shortly",
            "the server is busy: too many requests of one limit were counted at once; try again shortly",
        }  # not "another session holds a lock", which an operator would look for in vain
        metrics = server.request("GET", "/metrics")[2].decode()
        busy_total = re.search(r"^stockyard_pg_read_connections_busy_total (\d+)", metrics, re.M)
        pool_busy = [e for e in busy if "database connections stayed in use" in e["message"]]  # not a queued count's
        assert busy_total and int(busy_total[1]) >= len(pool_busy), metrics[-3000:]
        assert re.search(r"^stockyard_pg_read_connections_open 1$", metrics, re.M)
        assert "Traceback" not in server.log
    finally:
        server.stop()


def test_a_server_postgresql_allows_fewer_connections_than_it_wants_answers_a_burst(
    pyz_path, cache_home, mock, pg_cluster
):
    """Its role may open 6 sessions: 4 the server's own (writer, LISTEN, lock, lease keeper), 2 to
    read on, against STOCKYARD_PG_CONNECTIONS' 20. Was: every read past the second was refused by
    PostgreSQL ("too many connections for role"), a budgeted request's 503. Now the server reads on
    the 2 it has: a burst of 60 budgeted requests is answered in full, its spend exact."""
    admin = pg_cluster.admin()
    admin.run("CREATE ROLE fewer LOGIN PASSWORD 'fewer-pw' CONNECTION LIMIT 6")
    admin.run("CREATE DATABASE fewer OWNER fewer TEMPLATE template0")
    admin.close()
    url = f"postgresql://fewer:fewer-pw@127.0.0.1:{pg_cluster.port}/fewer?sslmode=disable"
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_PG_CONNECTIONS="20")
    server = ServerProcess(pyz_path, url, env)  # type: ignore[arg-type]
    # the key made before the start: a command run beside the server could find the role's 6 sessions
    # taken (the server's 4 and the connections its start or its reads opened, until PostgreSQL ends them)
    key = server.create_keys({"burst": ["--budget-usd", "100", "--budget-period", "total"]})["burst"]
    server.start()
    try:
        auth = {"Authorization": f"Bearer {key}"}
        chat = {"model": "gpt-4o-mini", "messages": HELLO}
        assert server.request("POST", "/v1/chat/completions", chat, auth)[0] == 200
        with ThreadPoolExecutor(max_workers=60) as pool:
            statuses = list(
                pool.map(lambda _: server.request("POST", "/v1/chat/completions", chat, auth)[0], range(60))
            )
        assert statuses == [200] * 60, {s: statuses.count(s) for s in statuses}
        assert "PostgreSQL refused a read connection" in server.log
        metrics = server.request("GET", "/metrics")[2].decode()
        refused = re.search(r"^stockyard_pg_read_connections_refused_total (\d+)", metrics, re.M)
        assert refused and int(refused[1]) >= 1
        assert re.search(r"^stockyard_pg_read_connections_open [12]$", metrics, re.M)
        wait_for(lambda: rows(pg_cluster, url, "SELECT count(*) AS n FROM traces")[0]["n"] == 61, what="61 traces")
        total = rows(pg_cluster, url, "SELECT sum(cost_uc) AS c FROM traces")[0]["c"]
        assert rows(pg_cluster, url, "SELECT spent_uc, reserved_uc FROM budget_ledger") == [
            {"spent_uc": total, "reserved_uc": 0}
        ]
    finally:
        server.stop()


def test_one_keys_rate_count_waiting_on_its_lock_leaves_the_read_pool_to_other_keys(
    pyz_path, cache_home, mock, pg_cluster, pg_url
):
    """Found by attack24: a rate count holds a read connection while it waits for its window's lock
    (``rate:<key>``), so while one key's count was slow (its lock held by another replica's count, a
    paused process, a slow database) every request of that key took a connection of the pool to wait
    on it, and another key's request found the pool busy (a 503 after the busy timeout). Now the
    requests of one window wait for each other in the process: one connection waits on the lock."""
    env = mock_env(
        cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_PG_CONNECTIONS="2", STOCKYARD_BUSY_TIMEOUT_MS="8000"
    )
    server = ServerProcess(pyz_path, pg_url, env).start()  # type: ignore[arg-type]
    admin = pg_cluster.admin(pg_url.rsplit("/", 1)[1].split("?")[0])
    chat = {"model": "gpt-4o-mini", "messages": HELLO}
    try:
        keys = server.create_keys({"busy": ["--rpm", "1000"], "other": ["--rpm", "1000"]})
        busy, other = ({"Authorization": f"Bearer {keys[k]}"} for k in ("busy", "other"))
        for auth in (busy, other):
            wait_for(lambda a=auth: server.request("POST", "/v1/chat/completions", chat, a)[0] == 200, what="the key")
        (key_id,) = admin.run("SELECT id FROM client_keys WHERE name = 'busy'")[0]
        waiting_on_lock = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        admin.run("BEGIN")
        admin.run("SELECT pg_advisory_xact_lock(hashtext(:name))", name=f"rate:{key_id}")  # its count is slow
        with ThreadPoolExecutor(max_workers=4) as pool:
            held = [pool.submit(server.request, "POST", "/v1/chat/completions", chat, busy) for _ in range(3)]
            wait_for(lambda: admin.run(waiting_on_lock)[0][0] >= 1, what="a count of the busy key to wait")
            try:  # the other two reach the lock too, or (fixed) wait in the process for the first
                wait_for(lambda: admin.run(waiting_on_lock)[0][0] >= 2, timeout=2, what="a second count")
            except AssertionError:
                pass
            status, _, raw = server.request("POST", "/v1/chat/completions", chat, other)
            still_held = admin.run(waiting_on_lock)[0][0]
            admin.run("COMMIT")
            assert status == 200, raw
            assert still_held >= 1, "the other key waited until the busy key's counts gave their connections up"
            assert [f.result()[0] for f in held] == [200] * 3, "the busy key's requests went on once its lock was free"
        assert "Traceback" not in server.log
    finally:
        admin.close()
        server.stop()


def test_a_burst_past_the_read_pool_never_passes_an_end_users_rpm_nor_fails_with_a_500(
    pyz_path, cache_home, mock, pg_url
):
    """Found by attack24: an end user's rate count that waited out a busy read pool raised out of the
    userlimits module (its 'module failed' 500, logged with a traceback); now it is the 503
    ``database_unavailable`` the key's own count gives, and the end user's rpm holds."""
    env = mock_env(
        cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_PG_CONNECTIONS="1", STOCKYARD_BUSY_TIMEOUT_MS="100"
    )
    server = ServerProcess(pyz_path, pg_url, env).start()  # type: ignore[arg-type]
    try:
        key = server.create_keys({"plain": []})["plain"]
        admin = {"Authorization": f"Bearer {ADMIN}"}
        body = {"enabled": True, "config": {"rpm": 5}}
        status, _, raw = server.request("PUT", "/api/modules/userlimits", body, headers=admin)
        assert status == 200, raw
        auth = {"Authorization": f"Bearer {key}", "x-stockyard-user": "alice"}
        limited_burst(server, auth)
        assert "Traceback" not in server.log
    finally:
        server.stop()


def test_a_burst_past_the_read_pool_on_a_limited_deployment_is_503s_never_500s(pyz_path, cache_home, mock, pg_url):
    """Found by attack24: a deployment's count in the shared windows that waited out a busy read pool
    raised out of the route step (a 500 'module failed', logged with a traceback) and left its count
    in the deployment's own window; now it is the 503 ``database_unavailable`` the key's count gives."""
    env = mock_env(
        cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_PG_CONNECTIONS="1", STOCKYARD_BUSY_TIMEOUT_MS="100"
    )
    server = ServerProcess(pyz_path, pg_url, env).start()  # type: ignore[arg-type]
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        deployment = {"name": "a", "provider": "openai", "model": "gpt-4o-mini", "rpm": 1_000_000}
        status, _, raw = server.request("POST", "/api/models/chat/deployments", deployment, headers=admin)
        assert status == 201, raw
        chat = {"model": "chat", "messages": HELLO}
        wait_for(lambda: server.request("POST", "/v1/chat/completions", chat)[0] == 200, what="the deployment")
        answers = burst(server, chat)
        statuses = [status for status, _, _ in answers]
        assert 500 not in statuses and set(statuses) <= {200, 429, 503}, {s: statuses.count(s) for s in statuses}
        listing = json.loads(server.request("GET", "/api/models", headers=admin)[2])
        [model] = [m for m in listing["data"] if m["name"] == "chat"]
        used = model["deployments"][0]["health"]["rpm_used"]
        assert used == 1 + statuses.count(200), "the deployment's own window counts only the requests sent to it"
        assert "Traceback" not in server.log
    finally:
        server.stop()

"""Stockyard on PostgreSQL through a real PgBouncer (tests/pgbouncer.py) in transaction mode.

What teams on managed PostgreSQL run: two replicas (the pyz) whose every connection goes through
one PgBouncer in ``pool_mode = transaction``, where a client's statements go to whichever server
session is free. Before, the first statement of a second connection failed (pg8000's prepared
statement ``pg8000_statement_0`` already existed on the session another client prepared it on),
each connection's ``SET lock_timeout`` stayed on a pooled session, the server lock's session
advisory lock stayed held by a pooled session after its server stopped, and LISTEN was made on a
session the client no longer read. Now the store finds the pooler at start (``pg.shares_sessions``)
and says so, runs each statement unprepared before one Sync, bounds lock waits per transaction,
migrates under a transaction lock, holds no session lock and polls for configuration changes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pg8000.core
import pytest
from conftest import ServerProcess, mock_env, wait_for
from pgbouncer import Bouncer

from stockyard.dburl import parse_postgres
from stockyard.store import db
from stockyard.store.backends import PostgresBackend
from stockyard.store.pg import SLOW_FIRST_S, WRITE_LOCK_KEY, PgConnection

ADMIN = "admin-key-for-pgbouncer-tests-0123456789"
ANTHROPIC_KEY = "sk-ant-test-pgbouncer-0123456789abcdef"
HELLO = [{"role": "user", "content": "hi"}]
BUDGET_MODEL = {"model": "gpt-mock-budget", "messages": HELLO, "max_tokens": 5}


@pytest.fixture(scope="module")
def bouncer(pg_cluster):
    pooler = Bouncer(pg_cluster, pool_mode="transaction").start()
    yield pooler
    pooler.stop()


@pytest.fixture(scope="module")
def direct_url(pg_cluster) -> str:
    """The database, reached without the pooler (for what the test checks behind the replicas' backs)."""
    return pg_cluster.database()


@pytest.fixture(scope="module")
def replicas(pyz_path, cache_home, mock, bouncer, direct_url):
    env = mock_env(
        cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url
    )
    pooled = bouncer.url(direct_url)
    servers = [ServerProcess(pyz_path, pooled, env).start() for _ in range(2)]  # type: ignore[arg-type]
    yield servers
    for server in servers:
        server.stop()


def db_name(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?")[0]


def rows(pg_cluster, url: str, sql: str) -> list[list]:
    """``sql`` on a direct connection to ``url``'s database (not through the pooler)."""
    conn = pg_cluster.admin(db_name(url))
    try:
        return conn.run(sql) or []
    finally:
        conn.close()


def api(server: ServerProcess, method: str, path: str, body=None):
    status, _, data = server.request(method, path, body, headers={"Authorization": f"Bearer {ADMIN}"})
    return status, json.loads(data)


def loaded_everywhere(replicas: list[ServerProcess]) -> None:
    """Until every replica has loaded the configuration as the database holds it now: a price set
    through one replica is the other's at its next reload, which a loaded machine delays (seen in a
    run: the other served the new model unpriced, cost_status 'unknown')."""
    status, found = api(replicas[0], "GET", "/api/status")
    assert status == 200, found
    wait_for(
        lambda: all(
            api(s, "GET", "/api/status")[1]["loaded_config_version"] >= found["config_version"] for s in replicas
        ),
        what="the configuration on every replica",
    )


def refuses_unknown_keys(server: ServerProcess) -> bool:
    return server.request("GET", "/v1/models", headers={"Authorization": "Bearer sk-unknown"})[0] == 401


def test_the_store_tells_transaction_pooling_from_session_pooling_and_refuses_statement_mode(pg_cluster, bouncer):
    url = pg_cluster.database()
    session = bouncer.url(url, bouncer.alias(db_name(url)))
    found = {
        where: PostgresBackend(parse_postgres(u, {})).shared_sessions
        for where, u in (("direct", url), ("session", session), ("transaction", bouncer.url(url)))
    }
    assert found == {"direct": False, "session": False, "transaction": True}
    statement = bouncer.url(url, bouncer.alias(db_name(url), "statement"))
    with pytest.raises(sqlite3.OperationalError, match="a pooler in statement mode cannot run Stockyard"):
        PostgresBackend(parse_postgres(statement, {})).connect()


def test_servers_starting_at_once_through_the_pooler_migrate_once_and_hold_no_lock_after(pg_cluster, bouncer):
    """Was: ``pg_advisory_lock`` and its unlock went to whichever server session was free: the lock
    could stay on a pooled session, and every later start on another one would wait for ever."""
    url = pg_cluster.database()
    backends = [PostgresBackend(parse_postgres(bouncer.url(url), {})) for _ in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        applied = list(pool.map(lambda backend: backend.open_and_migrate(), backends))
    assert sorted(len(a) for a in applied) == [0, 0, 0, len(db.available_migrations("postgresql"))]
    assert rows(pg_cluster, url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [[0]]
    assert backends[0].open_and_migrate() == []


def test_a_connection_a_full_session_pool_keeps_waiting_is_told(pg_cluster, bouncer, caplog):
    """Was silent: in session mode every connection a replica keeps open holds a server session,
    and a pool too small for all the replicas' connections left one replica's configuration
    watcher waiting in PgBouncer's queue (its /readyz 503, a key made elsewhere unseen for 40 s+)."""
    url = pg_cluster.database()
    small = bouncer.url(url, bouncer.alias(db_name(url), pool_size=1))
    holder = pg8000.core.CoreConnection(**parse_postgres(small, {}).connect_args())
    holder.execute_simple("SELECT 1")  # session mode: the pool's one server session is this client's now
    opened: list = []
    opening = threading.Thread(target=lambda: opened.append(PgConnection(parse_postgres(small, {}))), daemon=True)
    try:
        opening.start()
        time.sleep(SLOW_FIRST_S + 0.5)  # what is tested: a wait past SLOW_FIRST_S (not a synchronisation)
        assert not opened  # still queued in PgBouncer
    finally:
        holder.close()
    opening.join(30)
    assert opened and opened[0].execute("SELECT 1 WHERE ? = 1", (1,)).fetchone() == (1,)
    opened[0].close()
    told = [r.getMessage() for r in caplog.records if "waited" in r.getMessage()]
    assert told and "pooler in session mode" in told[0] and "STOCKYARD_PG_CONNECTIONS + 5" in told[0], told


def test_both_replicas_say_at_start_what_a_transaction_pooler_changes(replicas, pg_cluster, direct_url):
    for server in replicas:
        assert "through a pooler in transaction mode" in server.log, server.log
        assert "session mode or a direct URL" in server.log
        assert server.request("GET", "/readyz")[0] == 200
    # Was: the server lock's session advisory lock, held by a pooled server session for ever.
    assert rows(pg_cluster, direct_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [[0]]


def test_requests_through_both_replicas_are_traced_and_costed(replicas, pg_cluster, direct_url):
    assert api(replicas[0], "POST", "/api/prices", {"model": "claude-pooled", "input": "1", "output": "2"})[0] == 200
    loaded_everywhere(replicas)  # else replica 1 may serve claude-pooled unpriced: cost_status 'unknown'
    chat = replicas[0].openai(ADMIN).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    message = (
        replicas[1]
        .anthropic(ADMIN)
        .messages.with_raw_response.create(model="claude-pooled", max_tokens=5, messages=HELLO)
    )
    ids = [chat.headers["x-stockyard-trace-id"], message.headers["x-stockyard-trace-id"]]
    assert chat.parse().choices[0].message.content and message.parse().content[0].text
    sql = f"SELECT id, cost_status FROM traces WHERE id IN ('{ids[0]}', '{ids[1]}') ORDER BY id"
    traced = wait_for(lambda: len(rows(pg_cluster, direct_url, sql)) == 2 and rows(pg_cluster, direct_url, sql))
    assert sorted(traced) == sorted([[ids[0], "exact"], [ids[1], "exact"]])
    # gpt-4o-mini: 12 × 15_000_000 + 5 × 60_000_000 µ¢ per 1M tokens = 480 µ¢ (as in test_pg_serve)
    cost = rows(pg_cluster, direct_url, f"SELECT cost_uc FROM traces WHERE id = '{ids[0]}'")
    assert cost == [[480]]
    for server, trace in zip(replicas, reversed(ids)):  # each replica reads the other's trace
        status, found = api(server, "GET", f"/api/traces/{trace}")
        assert status == 200 and found["id"] == trace


def test_a_budget_burst_over_both_replicas_admits_exactly_the_budget(replicas, mock, pg_cluster, direct_url):
    assert api(replicas[0], "POST", "/api/prices", {"model": "gpt-mock-budget", "input": "0", "output": "1"})[0] == 200
    loaded_everywhere(replicas)
    budget = {"name": "burst", "budget_usd": "0.00005", "budget_period": "total"}  # 10 answers of 5 tokens
    status, key = api(replicas[1], "POST", "/api/keys", budget)
    assert status == 201, key
    wait_for(lambda: all(refuses_unknown_keys(s) for s in replicas), what="the key on both replicas")
    auth = {"Authorization": f"Bearer {key['key']}"}
    sent = lambda: sum(1 for r in mock.requests if r.json and r.json.get("model") == "gpt-mock-budget")  # noqa: E731
    before = sent()
    mock.delay_ms = 200  # the answers overlap in flight
    try:
        with ThreadPoolExecutor(max_workers=40) as pool:
            chat = lambda i: replicas[i % 2].request("POST", "/v1/chat/completions", BUDGET_MODEL, auth)  # noqa: E731
            answers = list(pool.map(chat, range(40)))
    finally:
        mock.delay_ms = 0
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == 10 and statuses.count(429) == 30, (statuses, answers[0])
    assert {json.loads(body)["error"]["code"] for status, _, body in answers if status == 429} == {"budget_exceeded"}
    assert sent() - before == 10  # the 30 refused never reached the provider
    ledger = "SELECT spent_uc, reserved_uc FROM budget_ledger WHERE scope LIKE 'key:%'"
    assert wait_for(lambda: rows(pg_cluster, direct_url, ledger) == [[5_000, 0]], what="the settlements")


def test_a_key_revoked_through_one_replica_is_refused_by_the_other(replicas):
    """No LISTEN through the pooler: the other replica's poll (every 0.5 s) finds the change."""
    status, key = api(replicas[0], "POST", "/api/keys", {"name": "short-lived"})
    assert status == 201, key
    auth = {"Authorization": f"Bearer {key['key']}"}
    wait_for(lambda: replicas[1].request("GET", "/v1/models", headers=auth)[0] == 200, what="the key on replica 1")
    assert api(replicas[0], "POST", f"/api/keys/{key['id']}/revoke")[0] == 200
    revoked_at = time.monotonic()
    wait_for(lambda: replicas[1].request("GET", "/v1/models", headers=auth)[0] == 401, what="the refusal")
    assert time.monotonic() - revoked_at < 3.0


def test_the_pooler_is_found_while_both_replicas_keep_its_sessions_busy(replicas, bouncer, direct_url):
    """Was a flake: with other clients taking the server session a probe freed, one probe could
    find no sign of the pooler, and a CLI command then ran prepared statements through it."""
    status, key = api(replicas[0], "POST", "/api/keys", {"name": "load"})
    assert status == 201, key
    auth = {"Authorization": f"Bearer {key['key']}"}
    chat = {"model": "gpt-4o-mini", "messages": HELLO}
    wait_for(lambda: replicas[1].request("POST", "/v1/chat/completions", chat, auth)[0] == 200, what="the key")
    done = threading.Event()

    def load(i: int) -> int:
        count = 0
        while not done.is_set():
            count += replicas[i % 2].request("POST", "/v1/chat/completions", chat, auth)[0] == 200
        return count

    with ThreadPoolExecutor(max_workers=8) as pool:
        answered = [pool.submit(load, i) for i in range(8)]
        try:
            found = [PostgresBackend(parse_postgres(bouncer.url(direct_url), {})).shared_sessions for _ in range(10)]
        finally:
            done.set()
    assert found == [True] * 10
    assert all(f.result() > 0 for f in answered), [f.result() for f in answered]


def test_concurrent_admin_writes_through_both_replicas_leave_one_verifying_audit_chain(replicas):
    def create(i: int) -> int:
        return api(replicas[i % 2], "POST", "/api/keys", {"name": f"chain-{i}"})[0]

    with ThreadPoolExecutor(max_workers=10) as pool:
        assert list(pool.map(create, range(20))) == [201] * 20
    verified = replicas[1].cli("audit", "verify", "--json")  # the CLI through the pooler too
    assert verified.returncode == 0, verified.stdout + verified.stderr
    names = replicas[0].db_rows("SELECT count(*) AS n FROM client_keys WHERE name LIKE ?", ("chain-%",))
    assert names == [{"n": 20}]
    checked = replicas[0].cli("doctor", "--json")
    found = {c["check"]: c for c in map(json.loads, checked.stdout.splitlines())}
    assert found["audit chain"]["status"] == "ok", found["audit chain"]
    assert found["pooler"]["status"] == "warn" and "session mode or a direct URL" in found["pooler"]["fix"]


def test_a_pooled_statements_error_is_its_own_and_the_connection_goes_on(bouncer, direct_url, replicas):
    """Each statement runs unprepared before one Sync (the busy timeout's answer read apart): a
    unique violation, a division by zero and a row count come back as on a direct connection."""
    conn = PostgresBackend(parse_postgres(bouncer.url(direct_url), {})).connect()
    try:
        insert = "INSERT INTO meta (key, value) VALUES (?, ?)"
        assert conn.execute(insert, ("pgb-once", "1")).rowcount == 1
        with pytest.raises(sqlite3.IntegrityError, match="23505"):
            conn.execute(insert, ("pgb-once", "2"))
        with pytest.raises(sqlite3.OperationalError, match="22012"):
            conn.execute("SELECT ? / 0", (1,))
        assert not conn.broken
        assert conn.execute("UPDATE meta SET value = ? WHERE key LIKE ?", ("3", "pgb-%")).rowcount == 1
        found = conn.execute("SELECT key, value FROM meta WHERE key = ?", ("pgb-once",)).fetchall()
        assert [(r["key"], r["value"]) for r in found] == [("pgb-once", "3")]
    finally:
        conn.close()


@pytest.fixture
def busy_timeout_1s():
    db.set_busy_timeout(1000)
    yield 1.0
    db.set_busy_timeout(10_000)


def test_a_lock_held_elsewhere_ends_a_pooled_wait_at_the_busy_timeout(bouncer, direct_url, busy_timeout_1s):
    """The busy timeout is set in each transaction (SET LOCAL), and before each statement outside
    one, never for a session the pooler hands on to other clients."""
    holder = pg8000.core.CoreConnection(**parse_postgres(direct_url, {}).connect_args())
    try:
        holder.execute_simple(f"SELECT pg_advisory_lock({WRITE_LOCK_KEY})")  # every write transaction waits on it
        conn = PostgresBackend(parse_postgres(bouncer.url(direct_url), {})).connect()
        for statement in ("BEGIN IMMEDIATE", f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY}) WHERE ? = 1"):
            started = time.monotonic()
            with pytest.raises(sqlite3.OperationalError) as held:
                conn.execute(statement, () if statement.startswith("BEGIN") else (1,))
            waited = time.monotonic() - started
            assert getattr(held.value, "lock_timeout", False), held.value
            assert busy_timeout_1s <= waited < busy_timeout_1s + 5, statement
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        conn.close()
    finally:
        holder.close()
    # No pooled server session was left with a setting of Stockyard's: a fresh client sees the default.
    pooled = pg8000.core.CoreConnection(**parse_postgres(bouncer.url(direct_url), {}).connect_args())
    try:
        settings = {tuple(r) for _ in range(5) for r in pooled.execute_simple("SHOW lock_timeout").rows}
    finally:
        pooled.close()
    assert settings == {("0",)}


def test_both_replicas_stop_cleanly_and_leave_nothing_held(replicas, pg_cluster, direct_url):
    for server in replicas:
        assert server.stop() == 0, server.log
        assert "Traceback" not in server.log and "prepared statement" not in server.log, server.log
    assert rows(pg_cluster, direct_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [[0]]

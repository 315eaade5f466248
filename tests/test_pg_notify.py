"""Configuration changes reach every replica at once by LISTEN/NOTIFY; the poll stays as the fallback.

The replicas here poll only once an hour (``STOCKYARD_CONFIG_POLL``), so a change that arrives
within a second arrived by notification. A change made by hand in SQL sends none: with the
usual half-second poll it still arrives. A LISTEN connection that is lost is opened again.
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import ServerProcess, mock_env, open_database, wait_for

from stockyard.store.changes import APPLICATION_NAME

ADMIN = "admin-key-for-notify-tests-0123456789"


def start(pyz_path, cache_home, mock, url: str, count: int, poll: str | None) -> list[ServerProcess]:
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, **({"STOCKYARD_CONFIG_POLL": poll} if poll else {}))
    return [ServerProcess(pyz_path, url, env).start() for _ in range(count)]  # type: ignore[arg-type]


@pytest.fixture
def slow_polling(pyz_path, cache_home, mock, pg_url):
    """Two replicas that would poll for changes only once an hour."""
    servers = start(pyz_path, cache_home, mock, pg_url, 2, "1h")
    yield servers
    for server in servers:
        server.stop()


def models_status(server: ServerProcess, secret: str) -> int:
    return server.request("GET", "/v1/models", headers={"Authorization": f"Bearer {secret}"})[0]


def create_key(server: ServerProcess, name: str) -> dict:
    status, _, data = server.request("POST", "/api/keys", {"name": name}, {"Authorization": f"Bearer {ADMIN}"})
    assert status == 201, data
    return json.loads(data)


def revoke_and_time(through: ServerProcess, other: ServerProcess, key: dict) -> float:
    """Revoke through one replica; seconds until the other refuses the key."""
    status, _, _ = through.request(
        "POST", f"/api/keys/{key['id']}/revoke", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert status == 200
    revoked_at = time.monotonic()
    wait_for(lambda: models_status(other, key["key"]) == 401, timeout=1.0, what="the refusal on the other replica")
    return time.monotonic() - revoked_at


def test_a_revocation_reaches_a_replica_that_polls_hourly_well_within_a_second(slow_polling):
    one, other = slow_polling
    key = create_key(one, "notified")
    wait_for(lambda: models_status(other, key["key"]) == 200, timeout=1.0, what="the new key on the other replica")
    assert revoke_and_time(one, other, key) < 1.0

    made = one.cli("keys", "create", "--name", "from-the-cli")  # the CLI notifies too
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    wait_for(lambda: all(models_status(s, secret) == 200 for s in slow_polling), 1.0, "the CLI's key on both")


def test_a_lost_listen_connection_is_opened_again(slow_polling, pg_cluster, pg_url):
    one, other = slow_polling
    database = pg_url.rsplit("/", 1)[1].split("?")[0]
    admin = pg_cluster.admin()

    def listeners() -> set[int]:
        rows = admin.run(
            "SELECT pid FROM pg_stat_activity WHERE datname = :d AND application_name = :a",
            d=database,
            a=APPLICATION_NAME,
        )
        return {row[0] for row in rows}

    try:
        before = wait_for(lambda: len(listeners()) == 2 and listeners(), what="both replicas listening")
        for pid in before:
            admin.run("SELECT pg_terminate_backend(:p)", p=pid)
        wait_for(lambda: len(listeners() - before) == 2, what="both replicas listening again")
    finally:
        admin.close()
    key = create_key(one, "after-reconnect")
    wait_for(lambda: models_status(other, key["key"]) == 200, timeout=1.0, what="the new key on the other replica")
    assert revoke_and_time(one, other, key) < 1.0
    assert "the LISTEN connection is lost" in other.log and "listening again" in other.log


def test_a_change_that_sends_no_notification_still_arrives_by_the_poll(pyz_path, cache_home, mock, pg_url):
    """A row revoked by hand in SQL (no NOTIFY): the half-second poll delivers it."""
    (server,) = start(pyz_path, cache_home, mock, pg_url, 1, None)
    try:
        key = create_key(server, "hand-edited")
        assert models_status(server, key["key"]) == 200
        db = open_database(server.db)
        try:
            db.execute("BEGIN IMMEDIATE")  # one transaction: the revocation and the version bump
            db.execute("UPDATE client_keys SET revoked_at = '2026-01-01T00:00:00Z' WHERE id = ?", (key["id"],))
            db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'config_version'")
            db.execute("COMMIT")
        finally:
            db.close()
        wait_for(lambda: models_status(server, key["key"]) == 401, timeout=3.0, what="the poll to deliver the change")
    finally:
        server.stop()

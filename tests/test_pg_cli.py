"""The CLI commands that work on the database itself, on PostgreSQL: migrate, doctor, restore,
and serve --snapshot's refusal (the pyz as a subprocess, a fresh database per test)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import clirun
import pytest
from conftest import base_env, wait_for

from stockyard.dburl import parse_postgres
from stockyard.store import db
from stockyard.store.backends import PostgresBackend
from stockyard.store.pg import MIGRATE_LOCK_KEY

SECRET = "pg-cli-test-secret-0123456789abcdef"


@pytest.fixture
def env(cache_home) -> dict[str, str]:
    return {**base_env(cache_home), "STOCKYARD_ENCRYPTION_KEY": SECRET}


def cli(pyz_path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return clirun.run(pyz_path, list(args), env, timeout=120)


def audit_actions(backend: PostgresBackend) -> list[str]:
    conn = backend.connect()
    try:
        return [row[0] for row in conn.execute("SELECT action FROM audit_log ORDER BY seq")]
    finally:
        conn.close()


def test_migrate_on_postgresql_plans_applies_once_and_audits(pyz_path, env, pg_url):
    backend = PostgresBackend(parse_postgres(pg_url, {}))
    code = db.code_schema_version("postgresql")
    previous = db.available_migrations("postgresql")[-2].version  # numbers may skip: 0035 follows 0032
    conn = backend.connect()
    db.migrate(conn, upto=previous)  # a database of the previous version
    conn.close()

    plan = cli(pyz_path, env, "migrate", "--check", "--db", pg_url)
    assert plan.returncode == 1, plan.stderr
    assert f"schema v{previous}, this Stockyard knows v{code}" in plan.stdout
    assert f"would apply {code:04d}_" in plan.stdout and "stockyard backup DEST" in plan.stdout

    done = cli(pyz_path, env, "migrate", "--db", pg_url)
    assert done.returncode == 0, done.stderr
    assert f"applied {code:04d}_" in done.stdout
    assert "migration.apply" in audit_actions(backend)
    again = cli(pyz_path, env, "migrate", "--db", pg_url)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert cli(pyz_path, env, "migrate", "--check", "--db", pg_url).returncode == 0
    verified = cli(pyz_path, env, "audit", "verify", "--db", pg_url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert parse_postgres(pg_url, {}).password not in done.stdout + done.stderr + plan.stdout


def test_migrate_on_postgresql_waits_for_the_migration_lock(pyz_path, env, pg_cluster, pg_url):
    """A server migrating holds the advisory lock: migrate waits for it, then finds its work."""
    url = parse_postgres(pg_url, {})
    admin = pg_cluster.admin(url.database)
    admin.run(f"SELECT pg_advisory_lock({MIGRATE_LOCK_KEY})")
    proc = subprocess.Popen(
        [sys.executable, str(pyz_path), "migrate", "--db", pg_url], env=env, stdout=subprocess.PIPE, text=True
    )
    waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    try:
        wait_for(lambda: admin.run(waiting) == [[1]], 60, "migrate to wait for the lock")
        assert proc.poll() is None
    finally:
        admin.run(f"SELECT pg_advisory_unlock({MIGRATE_LOCK_KEY})")
        admin.close()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "applied 0001_" in out


def test_doctor_on_postgresql(pyz_path, env, pg_url):
    made = cli(pyz_path, env, "keys", "create", "--name", "doc", "--db", pg_url)
    assert made.returncode == 0, made.stderr
    checked = cli(pyz_path, env, "doctor", "--json", "--db", pg_url)
    found = {c["check"]: c for c in map(json.loads, checked.stdout.splitlines())}
    assert found["database"]["status"] == "ok" and "(PostgreSQL " in found["database"]["message"]
    assert found["schema"]["status"] == "ok", found["schema"]
    assert found["audit chain"]["status"] == "ok", found["audit chain"]
    assert found["encryption secret"]["status"] == "ok", found["encryption secret"]
    assert found["database size"]["status"] == "ok"

    wrong = cli(
        pyz_path, {**env, "STOCKYARD_ENCRYPTION_KEY": "another-secret-0123456789abcdef"}, "doctor", "--db", pg_url
    )
    assert wrong.returncode == 1 and "fail  encryption secret" in wrong.stdout

    password = parse_postgres(pg_url, {}).password
    unreachable = cli(pyz_path, env, "doctor", "--db", pg_url.replace(password, "not-the-password"))
    assert unreachable.returncode == 1
    assert "fail  database" in unreachable.stdout and "PGPASSWORD" in unreachable.stdout
    assert "not-the-password" not in unreachable.stdout + unreachable.stderr


def test_restore_a_backup_into_an_empty_postgresql_database(pyz_path, env, pg_url, tmp_path):
    lite = tmp_path / "stockyard.db"
    made = cli(pyz_path, env, "keys", "create", "--name", "kept", "--db", str(lite))
    assert made.returncode == 0, made.stderr
    backup = tmp_path / "backup.db"
    assert cli(pyz_path, env, "backup", str(backup), "--db", str(lite)).returncode == 0

    restored = cli(pyz_path, env, "restore", str(backup), "--db", pg_url)
    assert restored.returncode == 0, restored.stderr
    assert "restored" in restored.stdout
    listed = cli(pyz_path, env, "keys", "list", "--json", "--db", pg_url)
    assert [k["name"] for k in map(json.loads, listed.stdout.splitlines())] == ["kept"]
    backend = PostgresBackend(parse_postgres(pg_url, {}))
    assert audit_actions(backend)[-1] == "backup.restore"
    verified = cli(pyz_path, env, "audit", "verify", "--db", pg_url)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    again = cli(pyz_path, env, "restore", str(backup), "--db", pg_url)
    assert again.returncode == 1
    assert "is not empty" in again.stderr and "EMPTY database" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_restore_into_postgresql_refuses_a_backup_carrying_its_own_trigger(pyz_path, env, pg_url, tmp_path):
    """The same schema check as an SQLite restore: a trigger the migrations do not make is refused,
    and the PostgreSQL database stays empty."""
    lite = tmp_path / "stockyard.db"
    assert cli(pyz_path, env, "keys", "create", "--name", "leaver", "--db", str(lite)).returncode == 0
    backup = tmp_path / "backup.db"
    assert cli(pyz_path, env, "backup", str(backup), "--db", str(lite)).returncode == 0
    conn = sqlite3.connect(backup)
    with conn:
        conn.execute(
            "CREATE TRIGGER keep_keys AFTER UPDATE OF revoked_at ON client_keys WHEN NEW.revoked_at IS NOT NULL "
            "BEGIN UPDATE client_keys SET revoked_at = NULL WHERE id = NEW.id; END"
        )
    conn.close()

    refused = cli(pyz_path, env, "restore", str(backup), "--db", pg_url)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "trigger 'keep_keys' (not made by Stockyard)" in refused.stderr and "Traceback" not in refused.stderr
    backend = PostgresBackend(parse_postgres(pg_url, {}))
    pg = backend.connect()
    try:
        tables = pg.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchone()[0]
    finally:
        pg.close()
    assert tables == 0, "nothing was loaded"


def test_serve_snapshot_on_postgresql_is_refused_naming_backup(pyz_path, env, pg_url, tmp_path):
    done = cli(pyz_path, env, "serve", "--port", "0", "--snapshot", str(tmp_path / "snap.db"), "--db", pg_url)
    assert done.returncode != 0
    assert "stockyard backup DEST" in done.stderr + done.stdout

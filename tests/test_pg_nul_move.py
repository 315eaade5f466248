"""An audit entry an older version wrote to SQLite with a NUL (U+0000) in it moves to PostgreSQL, whose
``text`` cannot hold one (``stockyard migrate-store``): its chain still verifies there and its text
reads back the same. Not in Makefile PG_SUITES: it makes its own SQLite source and PostgreSQL target."""

from __future__ import annotations

import json
import sqlite3

from conftest import mock_env
from test_pg_nul import OLD_TARGET, SECRET, run

from stockyard import audit, vault


def old_database(pyz_path, env: dict, path):
    """An SQLite database holding a keyed audit entry whose target has a NUL, as an older version
    wrote it (no check then kept NUL out of a project name)."""
    assert run(pyz_path, "keys", "create", "--db", path, "--name", "before", env=env).returncode == 0
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # the change an older version audited, as it wrote it
    key = audit.chain_key(SECRET, vault.read_salt(conn))
    audit.append(conn, actor="cli:old", action="projects.budget.set", target=OLD_TARGET, details={}, key=key)
    conn.execute("COMMIT")
    conn.close()
    return path


def test_an_old_audit_entry_holding_a_nul_moves_to_postgresql_and_its_chain_verifies(
    pyz_path, cache_home, mock, tmp_path, pg_url
):
    """Was: ``migrate-store`` stopped at the audit log ("table audit_log could not be copied"): the
    log is hashed, so it is copied exactly, and PostgreSQL refuses a NUL. Now the entry's text is
    kept in the target as the traces keep a NUL (``?``) and its original beside it, which reading
    and verifying the log use: the chain verifies on PostgreSQL (keyed, the entries after it too),
    the entry reads back as it was written, and so it does after a move back to SQLite."""
    env = mock_env(cache_home, mock, STOCKYARD_ENCRYPTION_KEY=SECRET)
    old = old_database(pyz_path, env, tmp_path / "old.db")
    assert run(pyz_path, "keys", "create", "--db", old, "--name", "after", env=env).returncode == 0
    verified = run(pyz_path, "audit", "verify", "--db", old, "--json", env=env)
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"], verified.stdout
    moved = run(pyz_path, "migrate-store", "--db", old, "--to", pg_url, env=env)
    assert moved.returncode == 0 and "Traceback" not in moved.stderr, moved.stderr
    on_pg = run(pyz_path, "audit", "verify", "--db", pg_url, "--json", env=env)
    result = json.loads(on_pg.stdout)
    assert on_pg.returncode == 0 and result["ok"], on_pg.stdout
    entries = result["count"]
    assert entries == json.loads(verified.stdout)["count"] >= 3
    listed = run(pyz_path, "audit", "list", "--db", pg_url, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert OLD_TARGET in [json.loads(line)["target"] for line in listed.stdout.splitlines()]
    exported = run(pyz_path, "audit", "export", "--csv", "--db", pg_url, env=env)
    assert exported.returncode == 0 and OLD_TARGET in exported.stdout
    # a change made on PostgreSQL after the move continues the chain
    assert run(pyz_path, "keys", "create", "--db", pg_url, "--name", "on-pg", env=env).returncode == 0
    again = json.loads(run(pyz_path, "audit", "verify", "--db", pg_url, "--json", env=env).stdout)
    assert again["ok"] and again["count"] == entries + 1, again
    back = tmp_path / "back.db"  # and back to SQLite: the same entry, verified there
    assert run(pyz_path, "migrate-store", "--db", pg_url, "--to", f"sqlite:{back}", env=env).returncode == 0
    there = json.loads(run(pyz_path, "audit", "verify", "--db", back, "--json", env=env).stdout)
    assert there["ok"] and there["count"] == entries + 1, there
    listed = run(pyz_path, "audit", "list", "--db", back, "--json", env=env)
    assert OLD_TARGET in [json.loads(line)["target"] for line in listed.stdout.splitlines()]


def test_audit_text_kept_apart_is_found_on_a_postgresql_database_in_a_language_order(
    pyz_path, cache_home, mock, tmp_path, pg_cluster
):
    """Was: the meta rows ``audit_text:<seq>`` were read by a key range ``>= 'audit_text:' AND <
    'audit_text;'``, which is a byte range only in byte order; a production PostgreSQL database in
    en_US (or ICU's) order puts ';' before ':', the range held nothing, and an old entry holding a
    NUL no longer verified after ``migrate-store`` (the move's own check refused the copy)."""
    env = mock_env(cache_home, mock, STOCKYARD_ENCRYPTION_KEY=SECRET)
    old = old_database(pyz_path, env, tmp_path / "old.db")
    url = pg_cluster.database(icu_locale="und")
    moved = run(pyz_path, "migrate-store", "--db", old, "--to", url, env=env)
    assert moved.returncode == 0 and "Traceback" not in moved.stderr, moved.stderr
    on_pg = run(pyz_path, "audit", "verify", "--db", url, "--json", env=env)
    assert on_pg.returncode == 0 and json.loads(on_pg.stdout)["ok"], on_pg.stdout
    listed = run(pyz_path, "audit", "list", "--db", url, "--json", env=env)
    assert OLD_TARGET in [json.loads(line)["target"] for line in listed.stdout.splitlines()]

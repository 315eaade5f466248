"""Upgrades: a database from every earlier schema version comes through with its data.

For each shipped migration version v, a database is built by applying the migrations up to
v, filled with representative rows for every table that exists at v (the product's own
writers for traces, rollups, the audit chain and the vault salt; a generic row from the
declared columns for any other table), upgraded by ``stockyard migrate`` from the pyz,
and compared. New migrations and tables are covered without editing this file; a table
whose constraints defeat the generic row gets a builder in ROW_BUILDERS.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Callable

import clirun
import pytest
from conftest import base_env
from ops_helpers import (
    columns,
    database_picture,
    fill_generic,
    integrity,
    open_plain,
    table_rows,
    user_tables,
    verify_audit,
    write_known_rows,
)

from stockyard.store import db

SECRET = "upgrade-test-encryption-secret-0123456789"
KNOWN = {"traces", "trace_bodies", "rollups_daily", "audit_log", "meta", "schema_migrations"}
# table name -> function(conn) inserting a representative row, for tables fill_generic cannot fill
ROW_BUILDERS: dict[str, Callable[[sqlite3.Connection], None]] = {
    "cache_stats": lambda conn: None,  # a single row its migration inserts; triggers keep it current
    # the search index and its FTS5 shadow tables: filled by the trace writer in write_known_rows
    **{
        t: (lambda conn: None)
        for t in ("trace_search", *(f"trace_search_{s}" for s in ("data", "idx", "content", "docsize", "config")))
    },
}
VERSIONS = [m.version for m in db.available_migrations()]
# Tables a migration drops on purpose (table -> its version): gone after an upgrade past it.
DROPPED = {"budget_ledger": 14, "budget_leases": 14, "rate_buckets": 14}
# FTS5's own tables behind trace_search: how it stores the index, which 0012 changes (no
# positions, no sizes). The index's rows (trace_id, body) are compared through trace_search.
INDEX_INTERNALS = "trace_search_"


def build_at(path: Path, version: int) -> dict[str, list[tuple]]:
    """A database at schema ``version`` with sample rows in every table; returns its content."""
    conn = db.connect(path)
    db.migrate(conn, upto=version)
    write_known_rows(conn, SECRET)
    conn.execute("BEGIN IMMEDIATE")
    for table in user_tables(conn):
        if table not in KNOWN:
            ROW_BUILDERS.get(table, lambda c, t=table: fill_generic(c, t))(conn)
    conn.execute("COMMIT")
    content = {
        t: table_rows(conn, t)
        for t in user_tables(conn)
        if t != "schema_migrations" and not t.startswith(INDEX_INTERNALS)
    }
    conn.close()
    assert all(content.values()), {t: len(r) for t, r in content.items() if not r}
    return content


def pyz(pyz_path: Path, cache_home: Path, *args) -> subprocess.CompletedProcess:
    env = {**base_env(cache_home), "STOCKYARD_ENCRYPTION_KEY": SECRET}
    return clirun.run(pyz_path, list(map(str, args)), env)


def assert_rows_survive(
    before: dict[str, list[tuple]], before_cols: dict[str, list[str]], path: Path, version: int
) -> None:
    """Every row present before is present after (at schema ``version``), in the columns that
    still exist; a table dropped on purpose (DROPPED) is gone."""
    conn = open_plain(path)
    try:
        for table, rows in before.items():
            if DROPPED.get(table, version + 1) <= version:
                assert table not in user_tables(conn), f"table {table} was not dropped"
                continue
            assert table in user_tables(conn), f"table {table} disappeared"
            kept = [c for c in before_cols[table] if c in columns(conn, table)]
            idx = [before_cols[table].index(c) for c in kept]
            old = sorted((tuple(r[i] for i in idx) for r in rows), key=repr)
            new = table_rows(conn, table, kept)
            missing = [r for r in old if r not in new]
            assert not missing, f"{table}: {len(missing)} of {len(old)} rows changed or lost in the upgrade"
    finally:
        conn.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_upgrade_from_every_schema_version_keeps_the_data(version, pyz_path, cache_home, tmp_path):
    path = tmp_path / "stockyard.db"
    before = build_at(path, version)
    conn = open_plain(path)
    before_cols = {t: columns(conn, t) for t in before}
    conn.close()
    latest = VERSIONS[-1]

    check = pyz(pyz_path, cache_home, "migrate", "--check", "--db", path)
    assert check.returncode == (0 if version == latest else 1), check.stdout + check.stderr
    assert f"schema v{version}, this Stockyard knows v{latest}" in check.stdout
    for m in db.available_migrations():
        assert (f"would apply {m.version:04d}_{m.name}" in check.stdout) == (m.version > version)

    done = pyz(pyz_path, cache_home, "migrate", "--db", path)
    assert done.returncode == 0, done.stderr
    backup = path.with_name(f"stockyard.db.pre-v{version:04d}.bak")
    if version < latest:
        assert backup.exists(), "a backup named after the old version is taken before migrating"
        assert_rows_survive(before, before_cols, backup, version)
    else:
        assert "up to date" in done.stdout and not backup.exists()
    assert integrity(path) == "ok"
    assert_rows_survive(before, before_cols, path, latest)
    conn = open_plain(path)
    assert max(r[0] for r in conn.execute("SELECT version FROM schema_migrations")) == latest
    conn.close()
    check = verify_audit(path, SECRET)
    assert check.ok, check.reason


def test_pre_migration_backups_are_named_by_version_and_only_the_last_three_kept(tmp_path, monkeypatch):
    """The server path (open_and_migrate) with future migrations stacked on today's."""
    path = tmp_path / "stockyard.db"
    before = build_at(path, VERSIONS[-1])
    shipped = db.available_migrations()
    future = list(shipped)
    for n in range(1, 5):
        version = VERSIONS[-1] + n
        future.append(
            db.Migration(
                version,
                f"future_{n}",
                f"CREATE TABLE future_{n} (x INTEGER);ALTER TABLE meta ADD COLUMN extra_{n} TEXT;",
            )
        )
        monkeypatch.setattr(db, "available_migrations", lambda _dialect="sqlite", f=list(future): f)
        conn, applied = db.open_and_migrate(path)
        conn.close()
        assert [m.version for m in applied] == [version]
    kept = sorted(p.name for p in tmp_path.glob("stockyard.db.pre-v*.bak"))
    assert kept == [f"stockyard.db.pre-v{VERSIONS[-1] + n:04d}.bak" for n in (1, 2, 3)]
    conn = open_plain(path)
    before_cols = {t: [c for c in columns(conn, t) if not c.startswith("extra_")] for t in before}
    conn.close()
    assert_rows_survive(before, before_cols, path, VERSIONS[-1] + 4)


def old_file(path: Path, *pragmas: str) -> Path:
    """A database at today's schema made as an older Stockyard made it (``pragmas`` first), with rows."""
    raw = sqlite3.connect(path, isolation_level=None)
    for pragma in (*pragmas, "PRAGMA journal_mode=WAL"):
        raw.execute(pragma)
    for m in db.available_migrations():
        db.apply_migration(raw, m)
    raw.close()
    conn = db.connect(path)
    write_known_rows(conn, SECRET)
    conn.close()
    return path


def content_but_audit(path: Path) -> dict[str, list[tuple]]:
    """Every table's rows but the audit log's (migrate appends to it), read on a closed connection."""
    return {t: rows for t, rows in database_picture(path).items() if t != "audit_log"}


def page_size(path: Path) -> int:
    conn = open_plain(path)
    try:
        return db.layout(conn)[0]
    finally:
        conn.close()


def test_an_old_file_is_converted_to_incremental_vacuum_once(pyz_path, cache_home, tmp_path):
    """Files made before auto_vacuum was set cannot shrink; `stockyard migrate` converts them."""
    path = old_file(tmp_path / "old.db")  # what an old Stockyard made: auto_vacuum off
    before = content_but_audit(path)  # every connection closed: a rewrite needs the file to itself
    check = pyz(pyz_path, cache_home, "migrate", "--check", "--db", path)
    assert check.returncode == 1 and "would rewrite the file with incremental vacuum" in check.stdout
    done = pyz(pyz_path, cache_home, "migrate", "--db", path)
    assert done.returncode == 0 and "rewrote the file with incremental vacuum" in done.stdout, done.stderr
    assert content_but_audit(path) == before
    conn = open_plain(path)
    assert db.layout(conn) == (db.PAGE_SIZE_BYTES, True)  # the same VACUUM takes the bigger pages
    assert conn.execute("SELECT action FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()[0] == "database.vacuum"
    conn.close()
    again = pyz(pyz_path, cache_home, "migrate", "--check", "--db", path)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_a_new_database_has_16_kb_pages_and_an_old_one_keeps_its_own(tmp_path):
    """Trace rows with bodies fit 16 KB pages better (bench/README.md, "Page size"); an existing
    file cannot change its page size in WAL mode, and upgrading it must not try."""
    conn, _ = db.open_and_migrate(tmp_path / "new.db")
    assert conn.execute("PRAGMA page_size").fetchone()[0] == db.PAGE_SIZE_BYTES == 16384
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # still chosen too
    conn.close()
    old = tmp_path / "old.db"
    raw = sqlite3.connect(old, isolation_level=None)
    raw.execute("PRAGMA page_size=4096")
    raw.execute("PRAGMA journal_mode=WAL")
    db.apply_migration(raw, db.available_migrations()[0])
    raw.close()
    conn, applied = db.open_and_migrate(old)
    assert applied and conn.execute("PRAGMA page_size").fetchone()[0] == 4096
    conn.close()


def test_migrate_repack_gives_an_old_file_16_kb_pages_only_when_asked(pyz_path, cache_home, tmp_path):
    """An existing 4 KB file keeps its pages through upgrades (a full rewrite is the operator's
    call); `migrate --check` mentions it without counting it as pending, `--repack` rewrites it."""
    path = old_file(tmp_path / "old.db", "PRAGMA page_size=4096", "PRAGMA auto_vacuum=INCREMENTAL")
    before = content_but_audit(path)
    check = pyz(pyz_path, cache_home, "migrate", "--check", "--db", path)
    assert check.returncode == 0 and "`stockyard migrate --repack` rewrites it" in check.stdout
    assert "up to date" in check.stdout
    plain = pyz(pyz_path, cache_home, "migrate", "--db", path)
    assert plain.returncode == 0 and "up to date" in plain.stdout and page_size(path) == 4096
    reader = open_plain(path)  # another program reading the file: the rewrite waits for it, then says so
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM traces").fetchone()
    busy = pyz(pyz_path, cache_home, "migrate", "--repack", "--db", path)
    reader.close()
    assert busy.returncode == 1 and "another process has it open" in busy.stderr, busy.stderr
    assert page_size(path) == 4096
    asked = pyz(pyz_path, cache_home, "migrate", "--check", "--repack", "--db", path)
    assert asked.returncode == 1 and "would rewrite the file" in asked.stdout
    done = pyz(pyz_path, cache_home, "migrate", "--repack", "--db", path)
    assert done.returncode == 0 and "16 KB pages" in done.stdout, done.stderr
    assert content_but_audit(path) == before
    conn = open_plain(path)
    assert db.layout(conn) == (db.PAGE_SIZE_BYTES, True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    last = conn.execute("SELECT action, details FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    assert last[0] == "database.vacuum" and json.loads(last[1])["page_size"] == 16384
    conn.close()
    chain = verify_audit(path, SECRET)
    assert chain.ok, chain.reason
    again = pyz(pyz_path, cache_home, "migrate", "--check", "--repack", "--db", path)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_a_database_newer_than_the_code_is_refused_clearly(pyz_path, cache_home, tmp_path):
    path = tmp_path / "stockyard.db"
    build_at(path, VERSIONS[-1])
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (9999, 'future', 'x', '2099-01-01')")
    r = pyz(pyz_path, cache_home, "migrate", "--check", "--db", path)
    assert r.returncode == 1 and "newer than this Stockyard" in r.stderr and "Traceback" not in r.stderr


def test_ordinary_commands_leave_an_old_database_to_migrate(pyz_path, cache_home, tmp_path):
    """Only `migrate` (locked, backed up, audited) or a starting server upgrades an existing database."""
    path = tmp_path / "old.db"
    conn = db.connect(path)
    db.migrate(conn, upto=1)
    conn.close()
    refused = pyz(pyz_path, cache_home, "traces", "--db", path)
    assert refused.returncode == 1 and "stockyard migrate" in refused.stderr and "Traceback" not in refused.stderr
    conn = db.connect(path, readonly=True)
    assert db.schema_version(conn) == 1, "nothing was changed"
    conn.close()
    assert pyz(pyz_path, cache_home, "migrate", "--db", path).returncode == 0
    assert pyz(pyz_path, cache_home, "traces", "--db", path).returncode == 0


def test_a_new_databases_schema_is_made_in_one_transaction(tmp_path):
    """Was: forty migrations, forty commits (~0.1 s of a first start) and, had one failed, a new file left
    with half a schema. Now a new database gets its whole schema in one transaction: one commit, and a
    failure leaves nothing of it. (An existing database still migrates one migration at a time, backed
    up first: ``test_pre_migration_backups_…``.)"""
    conn = db.connect(tmp_path / "new.db")
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    applied = db.migrate(conn)
    conn.set_trace_callback(None)
    assert [m.version for m in applied] == [m.version for m in db.available_migrations()]
    ends = [word for s in statements if (word := s.split()[0].upper().rstrip(";")) in ("BEGIN", "COMMIT")]
    assert ends == ["BEGIN", "COMMIT"]
    conn.close()

    conn = db.connect(tmp_path / "broken.db")
    shipped = db.available_migrations()
    broken = db.Migration(shipped[-1].version + 1, "broken", "CREATE TABLE half (x INTEGER); SELECT * FROM nowhere;")
    with pytest.raises(sqlite3.OperationalError):
        db.apply_migrations(conn, [*shipped, broken])
    assert db.schema_version(conn) == 0
    assert not conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'sqlite_sequence'"
    ).fetchall()
    conn.close()

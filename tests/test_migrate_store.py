"""``stockyard migrate-store`` and ``backup`` on PostgreSQL: a whole installation moves between the stores.

A real SQLite server makes traces, a client key, a stored provider key and audit entries; the file
goes into PostgreSQL and back, and every step keeps the cost report, the audit chain and the
encrypted keys. The PostgreSQL password shows up in no output.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tracemalloc
import zlib

import clirun
import pytest
from conftest import TEST_STORE, ServerProcess, mock_env, wait_for
from ops_helpers import Load, columns, integrity, table_rows

from stockyard.store import search

SECRET = "migrate-store-test-secret-0123456789"
PROVIDER_KEY = "sk-moved-provider-key-0123456789"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
# Its source is an SQLite file and its target PostgreSQL whichever store the run is for: the stand-in
# store of STOCKYARD_TEST_STORE=postgresql would put the source in PostgreSQL too.
pytestmark = pytest.mark.skipif(TEST_STORE == "postgresql", reason="it moves an SQLite file; every run has PostgreSQL")


@pytest.fixture
def env(cache_home, mock):
    return mock_env(cache_home, mock, OPENAI_API_KEY="sk-test-migrate-123456", STOCKYARD_ENCRYPTION_KEY=SECRET)


def run(pyz, *args, env: dict) -> subprocess.CompletedProcess:
    return clirun.run(pyz, list(map(str, args)), env, timeout=120)


@pytest.fixture
def source(pyz_path, env, mock, tmp_path):
    """A stopped SQLite installation with traces (bodies, search index), keys, a stored provider key."""
    server = ServerProcess(pyz_path, tmp_path / "src" / "stockyard.db", env).start()
    try:
        added = server.cli(
            "providers", "add", "moved", "--kind", "openai-compatible", "--base-url", mock.url + "/v1",
            "--models", "moved-", "--key-stdin", input=PROVIDER_KEY,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        made = server.cli("keys", "create", "--name", "mover", "--json")
        assert made.returncode == 0, made.stderr
        key = json.loads(made.stdout)["key"]
        auth = {"Authorization": f"Bearer {key}"}
        wait_for(lambda: server.request("POST", "/v1/chat/completions", CHAT)[0] == 401, what="keys required")
        for model in ("gpt-4o-mini", "gpt-4o", "moved-model"):
            status, headers, body = server.request("POST", "/v1/chat/completions", {**CHAT, "model": model}, auth)
            assert status == 200, body
            server.trace(headers["x-stockyard-trace-id"])
    finally:
        server.stop()
    server.key = key
    return server


def report(pyz, db, env) -> dict:
    done = run(pyz, "costs", "--by", "model", "--json", "--db", db, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def content(path) -> dict[str, list[tuple]]:
    """Every table of an SQLite file, rows sorted; the search index by its rows (ops_helpers.table_rows:
    each linked body and its text), not FTS5's pages, and by the traces its words find; a body's link
    to its search row (``search_rowid``) as whether it has one: its number is the file's own (and so is
    the meta row of the last one given out)."""
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        keep = [n for n in names if not n.startswith(("sqlite_", "trace_search_")) and n != "schema_migrations"]
        picture = {n: table_rows(conn, n) for n in keep if n not in ("trace_bodies", "meta")}
        picture["meta"] = sorted(  # but the last search rowid given out: the file's own, as search_rowid
            tuple(r) for r in conn.execute("SELECT key, value FROM meta WHERE key != 'search_rowid_last'")
        )
        cols = [c for c in columns(conn, "trace_bodies") if c != "search_rowid"]
        picture["trace_bodies"] = table_rows(conn, "trace_bodies", cols)
        picture["search links"] = sorted(
            conn.execute("SELECT trace_id, search_rowid IS NOT NULL FROM trace_bodies").fetchall()
        )
        for word in ("hi", "mock", "gpt"):
            picture[f"found by {word}"] = sorted(
                r[0]
                for r in conn.execute(
                    "SELECT b.trace_id FROM trace_search JOIN trace_bodies AS b ON b.search_rowid = trace_search.rowid"
                    " WHERE trace_search MATCH ?",
                    (word,),
                )
            )
        return picture
    finally:
        conn.close()


def test_round_trip_sqlite_postgresql_sqlite_keeps_costs_audit_and_keys(
    source, pyz_path, env, mock, pg_cluster, pg_url, tmp_path
):
    src = source.db
    moved = run(pyz_path, "migrate-store", "--db", src, "--to", pg_url, env=env)
    assert moved.returncode == 0, moved.stderr
    with sqlite3.connect(src) as conn:
        traces = conn.execute("SELECT count(*) FROM traces").fetchone()[0]
    assert f"  traces: {traces} rows" in moved.stderr and "  audit_log: " in moved.stderr
    assert "audit chain of the copy: ok, " in moved.stderr
    before = report(pyz_path, src, env)
    assert before["total"]["cost_uc"] > 0
    assert report(pyz_path, pg_url, env) == before
    verified = run(pyz_path, "audit", "verify", "--db", pg_url, env=env)
    assert verified.returncode == 0 and verified.stdout.startswith("ok, "), verified.stdout + verified.stderr

    back = tmp_path / "back" / "stockyard.db"
    back.parent.mkdir()
    returned = run(pyz_path, "migrate-store", "--db", pg_url, "--to", f"sqlite:{back}", env=env)
    assert returned.returncode == 0, returned.stderr
    assert integrity(back) == "ok" and content(back) == content(src)
    assert len(content(src)["found by hi"]) >= 3, "the index came back with the bodies"
    assert report(pyz_path, back, env) == before
    assert run(pyz_path, "traces", "--search", "hi", "--db", back, env=env).returncode == 0

    # A server on the PostgreSQL copy: the client key works, the stored provider key decrypts,
    # and new rows get ids after the copied ones (the identity sequences followed).
    server = ServerProcess(pyz_path, pg_url, env).start()  # type: ignore[arg-type]
    try:
        auth = {"Authorization": f"Bearer {source.key}"}
        assert server.request("POST", "/v1/chat/completions", CHAT)[0] == 401
        mock.clear()
        status, _, body = server.request("POST", "/v1/chat/completions", {**CHAT, "model": "moved-model"}, auth)
        assert status == 200, body
        assert mock.last("/chat/completions").headers["authorization"] == f"Bearer {PROVIDER_KEY}"
        second = server.cli(
            "providers", "add", "second", "--kind", "openai-compatible", "--base-url", mock.url + "/v1",
            "--models", "second-", "--key-stdin", input="sk-second-0123456789",
        )  # fmt: skip
        assert second.returncode == 0, second.stderr
        again = server.cli("keys", "create", "--name", "after-move", "--json")
        assert again.returncode == 0, again.stderr
    finally:
        server.stop()
    for done in (moved, returned, verified):
        assert pg_cluster.password not in done.stdout + done.stderr
    assert pg_cluster.password not in server.log and "Traceback" not in server.log


def test_a_non_empty_target_and_a_running_source_are_refused(source, pyz_path, env, pg_cluster, pg_url, tmp_path):
    server = ServerProcess(pyz_path, source.db, env).start()
    try:
        busy = run(pyz_path, "migrate-store", "--db", source.db, "--to", pg_url, env=env)
    finally:
        server.stop()
    assert busy.returncode == 1 and "stop it first" in busy.stderr and busy.stderr.count("\n") == 1
    empty = pg_cluster.admin(pg_url.rsplit("/", 1)[1].split("?")[0])
    try:
        assert empty.run("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == [[0]]
        empty.run("CREATE TABLE somebody_elses (x int)")
    finally:
        empty.close()
    refused = run(pyz_path, "migrate-store", "--db", source.db, "--to", pg_url, env=env)
    assert refused.returncode == 1 and refused.stderr.strip().endswith("copies into an empty database"), refused.stderr
    assert refused.stderr.strip().count("\n") == 1  # the progress line, then the refusal
    assert "***" in refused.stderr and pg_cluster.password not in refused.stderr + refused.stdout
    exists = tmp_path / "exists.db"
    exists.write_bytes(b"")
    assert run(pyz_path, "migrate-store", "--db", pg_url, "--to", f"sqlite:{exists}", env=env).returncode == 1


def test_backup_on_postgresql_writes_a_checked_sqlite_file(source, pyz_path, env, pg_cluster, pg_url, tmp_path):
    assert run(pyz_path, "migrate-store", "--db", source.db, "--to", pg_url, env=env).returncode == 0
    dest = tmp_path / "pg-backup.db"
    done = run(pyz_path, "backup", dest, "--db", pg_url, env=env)
    assert done.returncode == 0, done.stderr
    assert "integrity ok" in done.stdout and pg_cluster.password not in done.stdout + done.stderr
    assert integrity(dest) == "ok"
    assert report(pyz_path, dest, env) == report(pyz_path, pg_url, env)
    verified = run(pyz_path, "audit", "verify", "--db", dest, env=env)
    assert verified.returncode == 0, verified.stdout
    # the backup itself is audited in the PostgreSQL database, after the copy's head
    listed = run(pyz_path, "audit", "list", "--action", "backup.create", "--json", "--db", pg_url, env=env)
    assert json.loads(listed.stdout.splitlines()[-1])["target"] == str(dest)


def test_a_copy_to_sqlite_cut_by_a_crash_leaves_no_copy_behind_after_the_next(
    source, pyz_path, env, pg_cluster, pg_url, tmp_path
):
    """A backup (or move) from PostgreSQL killed half way left its ``.NAME.move-PID-…`` file, a whole copy
    of the data, beside the target for good: the next process has another pid. The next copy to the same
    place removes those of processes that are gone, and keeps a live one's."""
    assert run(pyz_path, "migrate-store", "--db", source.db, "--to", pg_url, env=env).returncode == 0
    dest = tmp_path / "pg-backup.db"
    gone = tmp_path / f".{dest.name}.move-999999999-1"  # pids stop at 2**22 on Linux: no such process
    live = tmp_path / f".{dest.name}.move-{os.getpid()}-1"
    for leftover in (gone, gone.with_name(gone.name + "-wal"), live):
        leftover.write_bytes(b"a copy of the data")
    done = run(pyz_path, "backup", dest, "--db", pg_url, env=env)
    assert done.returncode == 0, done.stderr
    assert not gone.exists() and not gone.with_name(gone.name + "-wal").exists()
    assert live.exists()


def test_backup_on_postgresql_under_load_is_one_consistent_read(pyz_path, env, pg_url, tmp_path):
    """A server keeps writing traces (and their rollups, in the same transactions) while the backup
    reads: the copy is one snapshot, so its rollups add up to exactly its traces."""
    server = ServerProcess(pyz_path, pg_url, env).start()  # type: ignore[arg-type]
    try:
        with Load(server.port, threads=4) as load:
            wait_for(lambda: len(load.answered) >= 20, 20, "load")
            # traces are committed by the writer after their answers: 20 in the database first
            wait_for(lambda: server.db_rows("SELECT count(*) AS n FROM traces")[0]["n"] >= 20, 20, "20 traces")
            done = run(pyz_path, "backup", tmp_path / "busy.db", "--db", pg_url, env=env)
            wait_for(lambda: len(load.answered) >= 40, 20, "more load after the backup")
        assert not load.failures
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(tmp_path / "busy.db") as copy:
        traces = copy.execute("SELECT count(*) FROM traces").fetchone()[0]
        rolled = copy.execute("SELECT sum(requests) FROM rollups_daily").fetchone()[0]
    assert traces >= 20 and rolled == traces
    assert integrity(tmp_path / "busy.db") == "ok"
    assert run(pyz_path, "audit", "verify", "--db", tmp_path / "busy.db", env=env).returncode == 0


def test_a_failed_copy_leaves_the_target_empty_or_absent(source, pyz_path, env, pg_cluster, pg_url, tmp_path):
    """A row PostgreSQL refuses (text in an integer column, which SQLite keeps) fails the copy
    half-way: the one transaction leaves the PostgreSQL database without a table; a copy back
    that fails leaves no file behind."""
    with sqlite3.connect(source.db) as conn:
        conn.execute("INSERT INTO latency_minutes (minute, bucket, count) VALUES (1, 1, 'many')")
    failed = run(pyz_path, "migrate-store", "--db", source.db, "--to", pg_url, env=env)
    assert (
        failed.returncode == 1
        and "table latency_minutes could not be copied" in failed.stderr
        and "Traceback" not in failed.stderr
    )
    assert pg_cluster.password not in failed.stdout + failed.stderr
    admin = pg_cluster.admin(pg_url.rsplit("/", 1)[1].split("?")[0])
    try:
        assert admin.run("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == [[0]]
        with sqlite3.connect(source.db) as conn:
            conn.execute("DELETE FROM latency_minutes WHERE count = 'many'")
        assert run(pyz_path, "migrate-store", "--db", source.db, "--to", pg_url, env=env).returncode == 0
        admin.run("CREATE TABLE somebody_elses (x int)")  # the schemas no longer match: refused
    finally:
        admin.close()
    back = tmp_path / "back"
    back.mkdir()
    refused = run(pyz_path, "migrate-store", "--db", pg_url, "--to", f"sqlite:{back / 'stockyard.db'}", env=env)
    assert refused.returncode == 1 and "somebody_elses" in refused.stderr, refused.stderr
    assert list(back.iterdir()) == []


def test_memory_stays_flat_whatever_the_size_of_the_tables(pg_url, tmp_path):
    """60 MB of bodies each way with a peak of a few batches: rows are read and written in batches
    (a server-side cursor on PostgreSQL), never a whole table at once."""
    from stockyard.dburl import parse_postgres
    from stockyard.store import db, move
    from stockyard.store.backends import PostgresBackend

    path = tmp_path / "big.db"
    conn, _ = db.open_and_migrate(path)
    conn.execute("BEGIN IMMEDIATE")
    for i in range(600):
        conn.execute(
            "INSERT INTO traces (id, ts, ts_ms, endpoint, dialect, status, outcome, latency_us) "
            "VALUES (?, '2026-01-01T00:00:00.000Z', ?, 'chat', 'openai', 200, 'ok', 1)",
            (f"tr_{i:06d}", i),
        )
        conn.execute("INSERT INTO trace_bodies (trace_id, request) VALUES (?, ?)", (f"tr_{i:06d}", os.urandom(100_000)))
    conn.execute("COMMIT")
    conn.close()
    target = PostgresBackend(parse_postgres(pg_url, {}))
    lines: list[str] = []
    tracemalloc.start()
    try:
        counts = move.sqlite_to_postgres(path, target, secret=None, progress=lines.append)
        _, peak_in = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        move.postgres_to_sqlite(target, tmp_path / "back.db", secret=None, progress=lines.append)
        _, peak_out = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counts["trace_bodies"] == 600 and "  trace_bodies: 600 rows" in lines
    assert peak_in < 30_000_000 and peak_out < 30_000_000, (peak_in, peak_out)
    with sqlite3.connect(tmp_path / "back.db") as copy, sqlite3.connect(path) as original:
        digest = "SELECT count(*), sum(length(request)), max(request) FROM trace_bodies"
        assert copy.execute(digest).fetchone() == original.execute(digest).fetchone()


def test_a_nul_an_earlier_version_kept_in_sqlite_text_moves_as_the_traces_keep_it_now(
    source, pyz_path, env, pg_cluster, pg_url
):
    """Before traces kept a NUL as ``?`` (traces.clean_text, cap_text), SQLite stored the client's
    NUL as it was: a model name, an error message quoting the client's id, their rollup. PostgreSQL's
    text holds none, so such a file could not be moved at all ("table traces could not be copied");
    it moves with ``?`` in their place, as the traces written now hold it. A stored body keeps its
    NUL; its search text (made from the body in the copy) has a space there, as body_text gives it."""
    with sqlite3.connect(source.db) as conn:
        search.register(conn)  # the body's words follow it in the index (schema 0029)
        conn.execute("UPDATE traces SET model = ?, error_message = ?", ("gpt\x00x", "no resp_\x00 here"))
        conn.execute("UPDATE rollups_daily SET model = ? WHERE model = 'gpt-4o'", ("gpt\x00x",))
        conn.execute("UPDATE trace_bodies SET request = ?", (zlib.compress(b'{"x": "nulword\x00afterword"}'),))
    moved = run(pyz_path, "migrate-store", "--db", source.db, "--to", pg_url, env=env)
    assert moved.returncode == 0 and "Traceback" not in moved.stderr, moved.stderr
    admin = pg_cluster.admin(pg_url.rsplit("/", 1)[1].split("?")[0])
    try:
        assert {tuple(r) for r in admin.run("SELECT model, error_message FROM traces")} == {("gpt?x", "no resp_? here")}
        assert "gpt?x" in {r[0] for r in admin.run("SELECT model FROM rollups_daily")}
        assert {r[0].split("\n")[0] for r in admin.run("SELECT body FROM trace_search")} == {
            '{"x": "nulword afterword"}'
        }
    finally:
        admin.close()

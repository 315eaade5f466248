"""``stockyard export traces`` streams every row in constant memory; DuckDB reads the database file."""

from __future__ import annotations

import csv
import io
import json
import pathlib
import subprocess
import sys
import time
import tracemalloc

import clirun
import duckdb  # requirements-test.txt; never in the pyz
import duckdb_extension_sqlite_scanner
import pytest
from conftest import base_env
from ops_helpers import sample_trace

from stockyard.store import db, export

DAY_MS = 86_400_000
NOW_MS = int(time.time() * 1000)


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> pathlib.Path:
    """2,500 traces, one a minute back from now, every one with a body naming its number."""
    path = tmp_path_factory.mktemp("export") / "stockyard.db"
    conn = db.connect(path)
    db.migrate(conn)
    conn.execute("BEGIN IMMEDIATE")
    for i in range(2500):
        sample_trace(
            NOW_MS - i * 60_000, body=f'{{"n": {i}, "text": "é,\\"quoted\\"\\nline"}}'.encode(), cost_uc=i
        ).write(conn)
    conn.execute("COMMIT")
    conn.close()
    return path


def cli(pyz_path, cache_home, path, *args: str) -> subprocess.CompletedProcess:
    return clirun.run(pyz_path, ["export", "traces", "--db", str(path), *args], base_env(cache_home))


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


def test_jsonl_has_every_row_in_the_window_oldest_first(pyz_path, cache_home, database):
    r = cli(pyz_path, cache_home, database, "--since", iso(NOW_MS - 2 * DAY_MS))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 2500 and [row["cost_uc"] for row in rows] == list(range(2499, -1, -1))
    assert "request_body" not in rows[0]
    r = cli(pyz_path, cache_home, database, "--since", iso(NOW_MS - 100 * 60_000), "--until", iso(NOW_MS - 9 * 60_000))
    costs = [json.loads(line)["cost_uc"] for line in r.stdout.splitlines()]
    assert r.returncode == 0 and costs[0] in (99, 100) and costs[-1] in (9, 10) and len(costs) >= 89


def test_csv_with_bodies_round_trips(pyz_path, cache_home, database):
    r = cli(pyz_path, cache_home, database, "--since", iso(NOW_MS - 2 * DAY_MS), "--format", "csv", "--bodies")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 2500 and tuple(rows[0]) == export.export_columns(True)
    assert json.loads(rows[-1]["request_body"]) == {"n": 0, "text": 'é,"quoted"\nline'}


def test_bad_times_are_one_line_errors(pyz_path, cache_home, database):
    r = cli(pyz_path, cache_home, database, "--since", "yesterday")
    assert r.returncode == 2 and "yesterday" in r.stderr and "Traceback" not in r.stderr
    r = cli(pyz_path, cache_home, database, "--since", "2026-02-01", "--until", "2026-01-01")
    assert r.returncode == 2 and "later than --since" in r.stderr


class Sink(io.TextIOBase):
    """Counts what is written and keeps nothing."""

    def __init__(self) -> None:
        self.chars = 0

    def write(self, s: str) -> int:
        self.chars += len(s)
        return len(s)


def test_export_memory_does_not_grow_with_the_rows(database, monkeypatch):
    monkeypatch.setattr(export, "PAGE_ROWS", 100)
    conn = db.connect(database)
    peaks = []
    for minutes in (250, 2500):  # 10x the rows, the same pages
        tracemalloc.start()
        sink = Sink()
        rows = export.iter_traces(conn, since_ms=NOW_MS - minutes * 60_000 + 1, bodies=True)
        assert export.write(rows, sink, "jsonl", True) == minutes
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert sink.chars > 1_000_000
    assert peaks[1] < peaks[0] * 1.3, f"peak memory grew with the rows: {peaks}"


def test_duckdb_reads_the_database_file_and_the_export(database, tmp_path, pyz_path, cache_home):
    """The README's recipe: ATTACH the SQLite file read-only (DuckDB's sqlite extension)."""
    ext = next(pathlib.Path(duckdb_extension_sqlite_scanner.__file__).parent.glob("extensions/*/*.duckdb_extension"))
    con = duckdb.connect()
    con.execute(f"LOAD '{ext}'")  # what INSTALL sqlite; LOAD sqlite; fetches on a machine online
    con.execute(f"ATTACH '{database}' AS sy (TYPE sqlite, READ_ONLY)")
    got = con.execute(
        "SELECT model, count(*), sum(cost_uc) FROM sy.traces WHERE parent_id IS NULL GROUP BY model"
    ).fetchall()
    assert got == [("gpt-4o-mini", 2500, sum(range(2500)))]
    day = con.execute("SELECT sum(cost_uc) FROM sy.rollups_daily").fetchone()[0]
    assert day == sum(range(2500))
    out = tmp_path / "traces.jsonl"
    out.write_text(cli(pyz_path, cache_home, database, "--since", iso(NOW_MS - 2 * DAY_MS)).stdout)
    assert con.execute(f"SELECT count(*), sum(cost_uc) FROM read_json('{out}')").fetchone() == (2500, sum(range(2500)))


def test_csv_cells_a_spreadsheet_would_run_start_with_a_quote_and_jsonl_keeps_them():
    """Client-chosen text (here an end user and a model) must not become a formula in a
    spreadsheet; the JSON lines export keeps the exact values."""
    row = {"end_user": '=HYPERLINK("http://evil.example","x")', "model": "-2+3", "cost_uc": -5, "tags": None}
    out = io.StringIO()
    assert export.write(iter([row]), out, "csv", False) == 1
    cells = list(csv.reader(io.StringIO(out.getvalue())))[1]
    assert cells == ['\'=HYPERLINK("http://evil.example","x")', "'-2+3", "-5", ""]
    out = io.StringIO()
    export.write(iter([row]), out, "jsonl", False)
    assert json.loads(out.getvalue()) == row

"""Streaming traces out for analytics (DuckDB, ClickHouse, a warehouse) in constant memory.

Rows are read in pages by trace id (ids sort by time), each page its own short read, so a
long export neither holds a read transaction open (which would stop WAL checkpoints) nor
grows with the number of rows.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from typing import Any, Iterator, TextIO

from ..retention import id_before
from .costs import csv_cell
from .traces import _COLUMNS, _unpack

PAGE_ROWS = 1000
FORMATS = ("jsonl", "csv")
BODY_COLUMNS = ("request_body", "response_body")


def export_columns(bodies: bool) -> tuple[str, ...]:
    return _COLUMNS + BODY_COLUMNS if bodies else _COLUMNS


def iter_traces(
    conn: sqlite3.Connection, *, since_ms: int, until_ms: int | None = None, bodies: bool = False
) -> Iterator[dict[str, Any]]:
    """Every trace row (attempts included) with ``since_ms <= ts_ms < until_ms``, oldest first."""
    select = ", ".join(f"t.{c}" for c in _COLUMNS)
    if bodies:
        select += ", b.request, b.response FROM traces t LEFT JOIN trace_bodies b ON b.trace_id = t.id"
    else:
        select += " FROM traces t"
    sql = f"SELECT {select} WHERE t.id > ? AND t.ts_ms >= ? AND t.ts_ms < ? ORDER BY t.id LIMIT {PAGE_ROWS}"
    last = id_before(since_ms)  # below every id made at or after since_ms
    until = until_ms if until_ms is not None else 2**62
    while True:
        page = conn.execute(sql, (last, since_ms, until)).fetchall()
        for row in page:
            values = list(row)
            if bodies:
                values[-2:] = [_unpack(values[-2]), _unpack(values[-1])]
            yield dict(zip(export_columns(bodies), values))
        if len(page) < PAGE_ROWS:
            return
        last = page[-1][0]


def write(rows: Iterator[dict[str, Any]], out: TextIO, fmt: str, bodies: bool) -> int:
    """Write ``rows`` as JSON lines or CSV (header first); returns how many. In CSV, text a
    client chose (end user, tags, model) that a spreadsheet would run as a formula gets a leading
    ``'`` (``costs.csv_cell``); JSON lines keep every value exactly."""
    n = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(export_columns(bodies))
        for row in rows:
            writer.writerow([csv_cell(v) for v in row.values()])
            n += 1
    else:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    return n

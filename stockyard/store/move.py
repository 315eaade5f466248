"""Copying a whole Stockyard database between the two stores: SQLite → PostgreSQL and back.

``stockyard migrate-store`` and ``stockyard backup`` on PostgreSQL use it. The target gets its
schema from its own migrations (never from the source), then every table's rows, read in
batches (memory stays flat whatever the size) from one consistent read of the source, all
in one transaction on the target: a failure leaves a PostgreSQL target empty and an SQLite
target absent. Ids are kept (the vault binds each ciphertext to its row's id and name),
identity sequences are moved past them, and before anything is committed the copy is checked:
the same row count per table and the same audit head, and with the encryption secret the
chain verifies in the copy as it does in the source.

One side is always SQLite and the other PostgreSQL; PostgreSQL's catalogue names the columns
(it shows ``client_keys.rowid``, which SQLite keeps implicit but accepts by name).
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import audit
from . import db, files, search
from .backends import PostgresBackend
from .pg import MIGRATE_LOCK_KEY

Progress = Callable[[str], None]
BATCH_ROWS = 500
WIDE_BATCH_ROWS = 20  # tables with bodies (up to 2 × 256 kB a row; pg8000 holds ~9 copies of a batch)
PARAMS_MAX = 30_000  # bind parameters in one multi-row INSERT (PostgreSQL allows 65,535)
PROGRESS_EVERY = 50_000
# Not copied: each store records its own migrations (their SQL differs); the replicas' shared
# budget and rate-limit state is rebuilt from the rollups on first use, and copying live
# reservations and leases would hold money for servers that are not there; the ids of applied
# settlement steps matter only to the replicas that made them (SQLite has no such tables since
# migration 0014; budget_settled, 0015, is PostgreSQL's alone).
SKIP = ("schema_migrations", "budget_ledger", "budget_leases", "rate_buckets", "budget_settled")
# A NUL an earlier version kept in SQLite text (a trace's model or error message, their rollup:
# stored raw before traces.clean_text) has no place in PostgreSQL's text; it goes in as the traces
# written now hold it. The audit log is hashed: an entry's text goes in the same way, and the text as
# written beside it, in a meta row (audit.ORIGINAL_TEXT) that reading and verifying the log use.
NUL_AS = "?"
EXACT = ("audit_log",)
# The search index is not copied but made again in the target from the bodies, as the writer makes
# it: SQLite's keeps no text to copy (store/search.py), and links each body to its row.
DERIVED = ("trace_search",)
# Meta rows about the source's own index stay behind too: its backfill marks (the target's index
# holds every body already: a backfill would index them again) and the last rowid it gave out.
OWN_META = f"NOT (key LIKE 'search_backfill_%' OR key = '{search.LAST_ROWID}')"
ROWS_COPIED = {"meta": OWN_META}  # table -> the rows copied (and counted in the copy), where not all
LAST = ("cache_stats",)  # counted by triggers on cache_entries: copied after it, over what they counted


class MoveError(Exception):
    """The copy cannot be made; nothing was left behind in the target."""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    identity: tuple[str, ...]  # PostgreSQL identity columns (their sequences follow the copied ids)
    wide: bool = False  # has bytea columns (bodies, cached answers): read in smaller batches
    where: str | None = None  # the rows copied, if not all (ROWS_COPIED)

    @property
    def batch(self) -> int:
        return WIDE_BATCH_ROWS if self.wide else BATCH_ROWS


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _select(table: Table) -> str:
    where = f" WHERE {table.where}" if table.where else ""
    return f"SELECT {', '.join(map(_quote, table.columns))} FROM {_quote(table.name)}{where}"


def tables(pg: Any, lite: sqlite3.Connection) -> list[Table]:
    """The tables to copy, parents before children; MoveError when the two schemas differ."""
    names = [
        r[0]
        for r in pg.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
        if r[0] not in SKIP
    ]
    found = []
    for name in names:
        cols = pg.execute(
            "SELECT column_name, is_identity, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
            (name,),
        ).fetchall()
        identity = tuple(r[0] for r in cols if r[1] == "YES")
        wide = any(r[2] == "bytea" for r in cols)
        found.append(Table(name, tuple(r[0] for r in cols), identity, wide, ROWS_COPIED.get(name)))
    master = lite.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall()
    virtual = [r[0] for r in master if (r[1] or "").upper().startswith("CREATE VIRTUAL")]
    lite_names = {
        r[0]
        for r in master
        if not r[0].startswith("sqlite_") and r[0] not in SKIP and not any(r[0].startswith(v + "_") for v in virtual)
    }
    if lite_names != set(names):
        only = sorted(lite_names.symmetric_difference(names))
        raise MoveError(f"the SQLite and PostgreSQL schemas differ (tables {', '.join(only)}); nothing was copied")
    for table in found:
        lite_cols = {r[1] for r in lite.execute(f"PRAGMA table_info({_quote(table.name)})")} | {"rowid"}
        if not set(table.columns) <= lite_cols:
            missing = sorted(set(table.columns) - lite_cols)
            raise MoveError(f"table {table.name} differs between the stores (columns {', '.join(missing)})")
    return _ordered(found, lite)


def _ordered(found: list[Table], lite: sqlite3.Connection) -> list[Table]:
    """Parents (foreign keys, from SQLite's catalogue) before children; LAST at the end."""
    parents = {
        t.name: {r[2] for r in lite.execute(f"PRAGMA foreign_key_list({_quote(t.name)})")} - {t.name} for t in found
    }
    done: list[Table] = []
    pending = sorted(found, key=lambda t: (t.name in LAST, t.name))
    while pending:
        placed = {d.name for d in done}
        ready = next((t for t in pending if parents[t.name] <= placed), pending[0])
        done.append(ready)
        pending.remove(ready)
    return done


def _read_sqlite(conn: sqlite3.Connection, table: Table) -> Iterator[list[tuple]]:
    cursor = conn.execute(_select(table))
    while batch := cursor.fetchmany(table.batch):
        yield [tuple(r) for r in batch]


def _read_postgres(conn: Any, table: Table) -> Iterator[list[tuple]]:
    """Through a server-side cursor: PostgreSQL sends a batch at a time, never the whole table.
    One cursor name per table: the FETCH statement is prepared once, with that table's row types."""
    cursor = _quote(f"move_{table.name}")
    conn.execute(f"DECLARE {cursor} NO SCROLL CURSOR FOR {_select(table)}")
    try:
        while batch := conn.execute(f"FETCH {table.batch} FROM {cursor}").fetchall():
            yield [tuple(r) for r in batch]
    finally:
        conn.execute(f"CLOSE {cursor}")


def _without_nul(table: Table, rows: list[tuple]) -> list[tuple]:
    """``rows`` with a NUL in any text as :data:`NUL_AS` says (the audit log's: :func:`_audit_without_nul`)."""
    return [
        tuple(v.replace("\x00", NUL_AS) if isinstance(v, str) else v for v in row)
        if any(isinstance(v, str) and "\x00" in v for v in row)
        else row
        for row in rows
    ]


def _audit_without_nul(conn: Any, table: Table, rows: list[tuple]) -> tuple[list[tuple], int]:
    """Audit entries whose text holds a NUL: in the row as :data:`NUL_AS` says, as written in a meta
    row of their own (``audit.ORIGINAL_TEXT``), which the chain's hash is checked over; how many."""
    seq = table.columns.index("seq")
    out, apart = [], 0
    for row in rows:
        held = {c: v for c, v in zip(table.columns, row) if isinstance(v, str) and "\x00" in v}
        if held:
            db.put_meta(conn, f"{audit.ORIGINAL_TEXT}{row[seq]}", json.dumps(held))  # the NUL escaped
            row = tuple(v.replace("\x00", NUL_AS) if isinstance(v, str) else v for v in row)
            apart += 1
        out.append(row)
    return out, apart


def _write_postgres(conn: Any, table: Table, rows: list[tuple]) -> int:
    """Multi-row INSERTs; OVERRIDING SYSTEM VALUE keeps the ids (client_keys.rowid is GENERATED ALWAYS).
    How many meta rows it wrote beside them (audit text kept apart)."""
    apart = 0
    if table.name in EXACT:
        rows, apart = _audit_without_nul(conn, table, rows)
    else:
        rows = _without_nul(table, rows)
    per = max(1, min(len(rows), PARAMS_MAX // len(table.columns)))
    head = f"INSERT INTO {_quote(table.name)} ({', '.join(map(_quote, table.columns))}) OVERRIDING SYSTEM VALUE VALUES "
    one = "(" + ", ".join("?" for _ in table.columns) + ")"
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        conn.execute(head + ", ".join(one for _ in chunk), [v for row in chunk for v in row])
    return apart


def _write_sqlite(conn: sqlite3.Connection, table: Table, rows: list[tuple]) -> int:
    marks = ", ".join("?" for _ in table.columns)
    conn.executemany(
        f"INSERT INTO {_quote(table.name)} ({', '.join(map(_quote, table.columns))}) VALUES ({marks})", rows
    )
    return 0


def _copy(
    source: Any,
    target: Any,
    order: list[Table],
    read: Callable[[Any, Table], Iterator[list[tuple]]],
    write: Callable[[Any, Table, list[tuple]], int],
    progress: Progress,
) -> dict[str, int]:
    """Every table's rows into the target, which holds only what its migrations seeded (emptied
    first); the target's search index is made from the bodies as they are copied (:data:`DERIVED`)."""
    order = [t for t in order if t.name not in DERIVED]
    for table in reversed(order):
        target.execute(f"DELETE FROM {_quote(table.name)}")
    counts: dict[str, int] = {}
    apart = 0  # meta rows written beside the audit entries (text kept apart): in the copy's count
    for table in order:
        n = 0
        for batch in read(source, table):
            try:
                apart += write(target, table, batch)
                if table.name == "trace_bodies":
                    _index_bodies(target, table, batch)
            except sqlite3.Error as exc:
                raise MoveError(f"table {table.name} could not be copied ({exc}); nothing was kept") from None
            n += len(batch)
            if n % PROGRESS_EVERY < len(batch):
                progress(f"  {table.name}: {n} rows so far")
        counts[table.name] = n
        progress(f"  {table.name}: {n} rows")
    counts["meta"] = counts.get("meta", 0) + apart
    return counts


def _index_bodies(target: Any, table: Table, rows: list[tuple]) -> None:
    """A copied batch of bodies in the target's search index, indexed as the writer indexes them."""
    trace_id, request, response = (table.columns.index(c) for c in ("trace_id", "request", "response"))
    search.index_bodies(target, [(r[trace_id], search.stored_text(r[request], r[response])) for r in rows])


def _check(source: Any, target: Any, counts: dict[str, int], secret: str | None, progress: Progress) -> None:
    """The copy holds what was read, and its audit chain is the source's (and verifies as it does)."""
    for name, n in counts.items():
        where = f" WHERE {ROWS_COPIED[name]}" if name in ROWS_COPIED else ""  # meta: the target's index wrote its own
        copied = target.execute(f"SELECT count(*) FROM {_quote(name)}{where}").fetchone()[0]
        if copied != n:
            raise MoveError(f"table {name}: {n} rows read but {copied} in the copy; nothing was kept")
    if audit.head(source) != audit.head(target):
        raise MoveError("the audit head of the copy differs from the source's; nothing was kept")
    if secret:
        before, after = audit.verify_with_secret(source, secret), audit.verify_with_secret(target, secret)
        if after.ok != before.ok:
            raise MoveError(f"the audit chain of the copy does not verify as the source's: {after.reason}")
        progress(
            f"audit chain of the copy: {after.reason}" if after.ok else f"audit chain, as in the source: {after.reason}"
        )


def _ready_source(conn: Any, where: str, upgrade: str) -> None:
    """A source at this code's schema: the copy's schema comes from this code's migrations."""
    if db.schema_version(conn) == 0:
        raise MoveError(f"{where} holds no Stockyard database; nothing to copy")
    if db.pending_migrations(conn):
        raise MoveError(f"{where} is at schema v{db.schema_version(conn)}, older than this Stockyard: {upgrade}")


def sqlite_to_postgres(
    path: Path, target: PostgresBackend, *, secret: str | None, progress: Progress
) -> dict[str, int]:
    """Copy the SQLite file at ``path`` into ``target``, which must have no tables."""
    source = db.connect(path, readonly=True)
    conn = target.connect()
    try:
        _ready_source(source, str(path), "run `stockyard migrate` first")
        source.execute("BEGIN")  # one read snapshot for the whole copy
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK_KEY})")  # a server starting now waits
            held = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
            ).fetchone()[0]
            if held:
                raise MoveError(f"{target} is not empty ({held} tables); migrate-store copies into an empty database")
            progress(f"creating the schema in {target}")
            for m in db.available_migrations(target.dialect):
                conn.executescript(db.migration_script(target.dialect, m))
            order = tables(conn, source)
            counts = _copy(source, conn, order, _read_sqlite, _write_postgres, progress)
            for table in order:
                for column in table.identity:
                    _follow_ids(conn, table.name, column)
            _check(source, conn, counts, secret, progress)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return counts
    finally:
        source.close()
        conn.close()


def _follow_ids(conn: Any, table: str, column: str) -> None:
    """The identity sequence continues after the highest copied id (new rows must not collide)."""
    top = conn.execute(f"SELECT max({_quote(column)}) FROM {_quote(table)}").fetchone()[0]
    if top is not None:
        conn.execute("SELECT setval(pg_get_serial_sequence(?, ?), ?)", (_quote(table), column, top))


def postgres_to_sqlite(
    source: PostgresBackend, dest: Path, *, secret: str | None, progress: Progress, replace: bool = False
) -> dict[str, int]:
    """Copy ``source`` into a new SQLite file at ``dest`` (replacing one only when ``replace``).

    Written beside ``dest`` under a temporary name and renamed when whole and checked; in
    rollback-journal mode, so the file is self-contained.
    """
    if dest.exists() and not replace:
        raise MoveError(f"{dest} already exists; migrate-store writes a new file")
    if not dest.parent.is_dir():
        raise MoveError(f"folder {dest.parent} does not exist")
    tmp = files.copy_beside(dest, "move")  # (those of a copy killed half way removed: another pid never reuses them)
    leftovers = [tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")]
    for stale in leftovers:
        stale.unlink(missing_ok=True)
    conn = source.connect()
    lite: sqlite3.Connection | None = None
    try:
        _ready_source(conn, str(source), "start a server of this version on it first, which upgrades it")
        conn.execute("BEGIN")  # REPEATABLE READ: one snapshot, even while servers write
        try:
            lite = db.connect(tmp)
            db.migrate(lite)
            lite.execute("BEGIN IMMEDIATE")
            counts = _copy(conn, lite, tables(conn, lite), _read_postgres, _write_sqlite, progress)
            _check(conn, lite, counts, secret, progress)
            lite.execute("COMMIT")
            lite.execute("PRAGMA journal_mode=DELETE")
            lite.close()
            lite = None
            if replace:
                db.replace_file(tmp, dest)
            else:
                os.link(tmp, dest)  # never over a file that appeared meanwhile
        except (OSError, sqlite3.Error) as exc:  # a full disk, most often: SQLite's words alone name no file
            raise MoveError(
                f"could not write {dest}: {exc} (is the disk under {dest.parent} full?); nothing was left "
                f"there, and {source} was not changed"
            ) from None
        return counts
    finally:
        if lite is not None:
            lite.close()
        for stale in leftovers:
            stale.unlink(missing_ok=True)
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()

"""Retention: old trace bodies and traces leave in small batches, and the file shrinks.

Runs as an idle task of the writer thread: one step per call — one DELETE of at most
``batch_rows`` rows, or one incremental-vacuum step — so a write never waits behind more
than a few milliseconds of housekeeping, and a large backlog (the first run after turning
retention on) drains as fast as the server is idle. Daily rollups are never touched, so
cost reports stay whole after the traces behind them are gone. The per-minute latency
histograms and the webhook delivery log leave with the traces' age limit. Responses kept for the
Responses API (``stockyard.conversations``) leave after 30 days (OpenAI's own rule for stored
responses; ``STOCKYARD_RETENTION_RESPONSES``) or with the traces, whichever comes first: a key
storing responses cannot grow the file for ever. Conversations of the Conversations API
(``stockyard.conversations_api``) leave, with their items, once unchanged for as long (OpenAI
keeps its own until deleted; here a key's conversations are bounded the same way its stored
responses are, yet one in use is never cut short, since each turn changes it).

Trace ids are time-sortable (``tr_<ms hex>…``), so "bodies older than" is a range on the
``trace_bodies`` primary key and each batch reads only the rows it deletes.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Callable

from .store.traces import iso_utc

log = logging.getLogger("stockyard.retention")

BATCH_ROWS = 500
# Pages of a new database are 16 KB (store/db.PAGE_SIZE_BYTES; 4 KB in files made before it).
VACUUM_PAGES = 256  # pages handed back to the file system per step: 4 MB
VACUUM_MIN_FREE_PAGES = 16  # fewer free pages than this (256 KB) are left for new rows to reuse
RESPONSES_MAX_AGE_S = 30 * 86400.0  # stored responses, by default (OpenAI keeps them 30 days)
CAP_CHECK_EVERY_S = 300.0  # measuring stored bodies reads the whole table: not too often


def cutoff_ms(now_ms: int, max_age_s: float) -> int:
    """The time (ms since the epoch) before which rows are older than ``max_age_s``; never before
    the epoch, so an age beyond any row (``99999999999999999999d``) still fits an SQL integer."""
    return max(now_ms - int(max_age_s * 1000), 0)


def id_before(ms: int) -> str:
    """The smallest trace id at ``ms``: every id made earlier sorts below it."""
    return f"tr_{max(ms, 0):012x}"


@dataclass
class RetentionStats:
    bodies_deleted: int = 0
    traces_deleted: int = 0
    responses_deleted: int = 0
    conversations_deleted: int = 0
    pages_vacuumed: int = 0


class Retention:
    """Deletes what is older than the configured ages, and bodies beyond the size cap."""

    def __init__(
        self,
        *,
        bodies_max_age_s: float | None = None,
        traces_max_age_s: float | None = None,
        bodies_max_bytes: int | None = None,
        responses_max_age_s: float | None = None,
        batch_rows: int = BATCH_ROWS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bodies_max_age_s = bodies_max_age_s
        self.traces_max_age_s = traces_max_age_s
        self.bodies_max_bytes = bodies_max_bytes
        ages = [a for a in (responses_max_age_s, traces_max_age_s) if a is not None]
        self.responses_max_age_s = min(ages) if ages else None  # the traces' limit, if sooner
        self.batch_rows = batch_rows
        self.clock = clock
        self.stats = RetentionStats()
        self._cap_checked_at: float | None = None
        self._cap_cutoff: str | None = None  # delete bodies with ids <= this (over the cap)
        self._warned_no_vacuum = False

    @property
    def configured(self) -> bool:
        return any(v is not None for v in (self.bodies_max_age_s, self.traces_max_age_s, self.bodies_max_bytes))

    def run(self, conn: sqlite3.Connection) -> bool:
        """One step of work; True while there is more to do."""
        now_ms = int(self.clock() * 1000)
        if self.traces_max_age_s is not None:
            cutoff = cutoff_ms(now_ms, self.traces_max_age_s)
            deleted = conn.execute(
                "DELETE FROM traces WHERE rowid IN (SELECT rowid FROM traces WHERE ts_ms < ? ORDER BY ts_ms LIMIT ?)",
                (cutoff, self.batch_rows),
            ).rowcount
            self.stats.traces_deleted += deleted
            if deleted:
                return True
            if conn.execute(  # latency histograms too (whole minutes before the cutoff)
                "DELETE FROM latency_minutes WHERE (minute, bucket) IN (SELECT minute, bucket FROM latency_minutes "
                "WHERE minute < ? ORDER BY minute LIMIT ?)",
                (cutoff // 60_000, self.batch_rows),
            ).rowcount:
                return True
            if conn.execute(  # and the webhook delivery log
                "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries WHERE ts < ? "
                "ORDER BY id LIMIT ?)",
                (iso_utc(cutoff), self.batch_rows),
            ).rowcount:
                return True
        if self.responses_max_age_s is not None:
            gone = conn.execute(
                "DELETE FROM responses WHERE rowid IN (SELECT rowid FROM responses WHERE created_at < ? "
                "ORDER BY created_at LIMIT ?)",
                (cutoff_ms(now_ms, self.responses_max_age_s), self.batch_rows),
            ).rowcount
            self.stats.responses_deleted += gone
            if gone:
                return True
            gone = conn.execute(  # their items go with them (ON DELETE CASCADE)
                "DELETE FROM conversations WHERE id IN (SELECT id FROM conversations WHERE updated_at < ? "
                "ORDER BY updated_at LIMIT ?)",
                (cutoff_ms(now_ms, self.responses_max_age_s), max(self.batch_rows // 10, 1)),
            ).rowcount
            self.stats.conversations_deleted += gone
            if gone:
                return True
        if self.bodies_max_age_s is not None:
            cutoff_id = id_before(cutoff_ms(now_ms, self.bodies_max_age_s))
            if self._delete_bodies(conn, "trace_id < ?", cutoff_id):
                return True
        if self.bodies_max_bytes is not None:
            if self._cap_cutoff is None and self._cap_check_due():
                self._cap_cutoff = self._over_cap_cutoff(conn)
            if self._cap_cutoff is not None:
                if self._delete_bodies(conn, "trace_id <= ?", self._cap_cutoff):
                    return True
                self._cap_cutoff = None
        return self._vacuum_step(conn)

    def _delete_bodies(self, conn: sqlite3.Connection, where: str, value: str) -> bool:
        """Delete one batch of bodies; True if there may be more."""
        deleted = conn.execute(
            f"DELETE FROM trace_bodies WHERE rowid IN (SELECT rowid FROM trace_bodies WHERE {where} "
            "ORDER BY trace_id LIMIT ?)",
            (value, self.batch_rows),
        ).rowcount
        self.stats.bodies_deleted += deleted
        return deleted > 0

    def _cap_check_due(self) -> bool:
        now = time.monotonic()
        if self._cap_checked_at is not None and now - self._cap_checked_at < CAP_CHECK_EVERY_S:
            return False
        self._cap_checked_at = now
        return True

    def _over_cap_cutoff(self, conn: sqlite3.Connection) -> str | None:
        """The newest trace id whose body no longer fits under the cap (newest bodies win)."""
        assert self.bodies_max_bytes is not None
        pages, page_size = (
            conn.execute("PRAGMA page_count").fetchone()[0],
            conn.execute("PRAGMA page_size").fetchone()[0],
        )
        if pages * page_size <= self.bodies_max_bytes:
            return None  # the whole file fits: no need to measure
        row = conn.execute(
            "SELECT trace_id FROM (SELECT trace_id, SUM(COALESCE(length(request), 0) + "
            "COALESCE(length(response), 0)) OVER (ORDER BY trace_id DESC ROWS UNBOUNDED PRECEDING) "
            "AS running FROM trace_bodies) AS sized WHERE running > ? LIMIT 1",
            (self.bodies_max_bytes,),
        ).fetchone()
        return row[0] if row else None

    def _vacuum_step(self, conn: sqlite3.Connection) -> bool:
        """Hand free pages back to the file system (needs auto_vacuum=INCREMENTAL)."""
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if free < VACUUM_MIN_FREE_PAGES:
            return False
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            if not self._warned_no_vacuum and self.configured:
                log.warning(
                    "the database file cannot shrink after retention deletes rows: it was "
                    "created without incremental vacuum; stop the server and run "
                    "`stockyard migrate` once to convert it"
                )
                self._warned_no_vacuum = True
            return False
        # executescript steps the pragma to the end; execute() would free a single page.
        conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
        self.stats.pages_vacuumed += min(free, VACUUM_PAGES)
        return free > VACUUM_PAGES

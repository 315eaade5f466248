"""Budgets and rate limits shared by the replicas of one PostgreSQL database.

Several servers on one database must not each keep their own ledger (each would let a
budget be spent once more). Here the ledger is the ``budget_ledger`` table: a request's
reservation is one conditional statement (``reserved += amount WHERE spent + reserved +
amount <= limit``), which PostgreSQL applies row by row under the row's lock, so a hundred
requests spread over any number of replicas cannot walk past a budget. Settling is one
statement too: the hold goes, the real cost is added.

Each step of a settlement is applied exactly once. A step has an id, made with the settlement,
that its statement inserts into ``budget_settled`` as it changes the ledger (the insert gates the
change): a step whose commit reached the database but whose answer was lost is kept and
retried like one that failed, and the retry finds its id and changes nothing.

Each replica also records what it holds in ``budget_leases`` (its random id, an expiry on
the database clock) and renews the expiry while it lives. A replica killed with requests in
flight stops renewing; once its lease has expired, any other replica gives its holds back.

A request against two budgets (key and project) reserves them one after the other and gives
back the first when the second refuses: for that instant the money is held twice, which can
refuse another request early but never admit one too many.

Rate limits (rpm, tpm) count requests and tokens per window name and tenth of a second of the
database clock (``rate_buckets``). An admission locks its window's name (a transaction advisory
lock), sums the last 60.1 seconds and adds itself: exact across replicas, and never looser than
the in-memory window: a request counts for 60.0 to 60.1 seconds instead of exactly 60.

On SQLite the worker processes of ``serve --workers N`` share theirs through their parent
(:mod:`stockyard.groupstate`), not through tables.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from ..budgets import PERIODS, Budget, BudgetExceeded, Exhausted, Hold, Ledger, Warn, period_key, unspent_of
from ..loglimit import Throttle
from ..modules.ratelimit import too_large, too_many_requests, too_many_tokens
from . import pgpool

if TYPE_CHECKING:
    from . import Store

log = logging.getLogger("stockyard.budgets")
# a lost database under a burst: said once a minute, not once a request
_NOT_COUNTED, _NOT_CHECKED = Throttle(), Throttle()

LEASE_S = 30.0  # a dead replica's holds are given back this long after its last renewal
_NOW_MS = "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)"  # Unix ms, the database's clock
UNSETTLED_MAX = 10_000  # settlements kept to retry while the database is lost (oldest dropped beyond)
KNOWN_MAX = 10_000  # (scope, period) rows remembered as existing before the memory is cleared
SETTLED_KEEP_S = 86_400  # ids of applied settlement steps kept this long (see SharedLedger._prune_settled)

# A leading comment: the connection never re-runs these after a lost connection (they change data).
_RESERVE = f"""/* reserve */ WITH held AS (
    UPDATE budget_ledger SET reserved_uc = reserved_uc + ?
    WHERE scope = ? AND period_key = ? AND spent_uc + reserved_uc + ? <= ?
    RETURNING scope, period_key)
INSERT INTO budget_leases (scope, period_key, replica, reserved_uc, expires_ms, generation)
SELECT scope, period_key, ?, ?, {_NOW_MS} + ?, ? FROM held
ON CONFLICT (scope, period_key, replica) DO UPDATE
SET reserved_uc = budget_leases.reserved_uc + excluded.reserved_uc, expires_ms = excluded.expires_ms
RETURNING generation"""

# The hold leaves the ledger only if this replica's lease still had it (a lease given back
# as expired already took it out): the lease it was reserved in, by its generation (a lease given
# back and made again by a later reservation is another; its hold is not this one's to free).
# The ledger row is locked first, as _RESERVE does: two statements that lock the same two rows
# in opposite orders deadlock under load. The step's id goes into budget_settled next, and nothing
# changes when it was there already (a retry of a step that committed); the id is contended only
# by a retry of its own step, which holds nothing else while it waits. No ledger row, no id (and
# no change).
_SETTLE = """/* settle */ WITH ledger AS MATERIALIZED (
    SELECT scope FROM budget_ledger WHERE scope = ? AND period_key = ? FOR UPDATE),
step AS (
    INSERT INTO budget_settled (id) SELECT CAST(? AS uuid) FROM ledger
    ON CONFLICT (id) DO NOTHING RETURNING id),
freed AS (
    UPDATE budget_leases SET reserved_uc = reserved_uc - ?
    WHERE scope = (SELECT scope FROM ledger) AND period_key = ? AND replica = ? AND generation = ?
    AND EXISTS (SELECT 1 FROM step)
    RETURNING reserved_uc)
UPDATE budget_ledger
SET reserved_uc = reserved_uc - (SELECT CASE WHEN count(*) > 0 THEN ? ELSE 0 END FROM freed), spent_uc = spent_uc + ?
WHERE scope = ? AND period_key = ? AND EXISTS (SELECT 1 FROM step)
RETURNING spent_uc"""

# The cost on a scope's other current periods (a budget switched off and on again), once: the
# step's id is inserted only when there are such rows (the usual case has none), and gates the
# UPDATE. The rows are locked first, in order (``_LOCK_ROWS``' order): an UPDATE of several rows
# locks them in the order its scan finds them, and two statements or transactions taking two
# rows in opposite orders deadlock (this costs ~25 µs more of the server's CPU per step:
# bench/settle_once.py).
_SPEND = """/* settle */ WITH rows AS MATERIALIZED (
    SELECT period_key FROM budget_ledger WHERE scope = ? AND period_key IN (?, ?, ?) AND period_key <> ?
    ORDER BY period_key FOR UPDATE),
step AS (
    INSERT INTO budget_settled (id) SELECT CAST(? AS uuid) WHERE EXISTS (SELECT 1 FROM rows)
    ON CONFLICT (id) DO NOTHING RETURNING id)
UPDATE budget_ledger SET spent_uc = spent_uc + ?
WHERE scope = ? AND period_key IN (SELECT period_key FROM rows) AND EXISTS (SELECT 1 FROM step)"""

# Every ledger row a transaction's settlements change, locked at once in one order (scope, then
# period key) before the first of them is applied (``_Deferred``): the writer's transaction holds
# its rows to its commit, and another's (a replica's writer) taking the same rows in another order
# deadlocked — PostgreSQL aborting one. Every other path takes one row a statement, or its rows in
# this order (_SPEND, _EXPIRE).
_LOCK_ROWS = """/* settle */ SELECT 1 FROM budget_ledger WHERE (scope, period_key) IN ({rows})
ORDER BY scope, period_key FOR UPDATE"""
LOCK_ROWS_MAX = 1000  # rows locked a statement (in order: the next statement's come after)


# Ids older than the cutoff on the database's clock: a range of the primary key (see step_id).
_PRUNE = f"""/* prune */ DELETE FROM budget_settled
WHERE id < CAST(lpad(to_hex({_NOW_MS} - ?), 12, '0') || '00000000000000000000' AS uuid)"""


def step_id(ms: int | None = None) -> str:
    """A settlement step's id: random, ordered by the time it was made (UUIDv7's layout: Unix
    milliseconds in the first 48 bits), so old ids go by a range of budget_settled's key."""
    ms = time.time_ns() // 1_000_000 if ms is None else ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 68) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


# The ledger rows of the expired leases are locked first (in one order), as _RESERVE and
# _SETTLE lock them: a replica whose lease expired during a long pause may still be reserving.
_EXPIRE = f"""/* expire */ WITH ledger AS MATERIALIZED (
    SELECT scope, period_key FROM budget_ledger
    WHERE (scope, period_key) IN (SELECT scope, period_key FROM budget_leases WHERE expires_ms < {_NOW_MS})
    ORDER BY scope, period_key FOR UPDATE),
gone AS (
    DELETE FROM budget_leases WHERE expires_ms < {_NOW_MS}
    AND (scope, period_key) IN (SELECT scope, period_key FROM ledger)
    RETURNING scope, period_key, reserved_uc),
total AS (SELECT scope, period_key, SUM(reserved_uc) AS amount FROM gone GROUP BY scope, period_key)
UPDATE budget_ledger SET reserved_uc = budget_ledger.reserved_uc - total.amount
FROM total WHERE budget_ledger.scope = total.scope AND budget_ledger.period_key = total.period_key
RETURNING budget_ledger.scope"""


class SharedLedger(Ledger):
    """:class:`~stockyard.budgets.Ledger`'s interface over the ``budget_ledger`` table."""

    def __init__(
        self,
        store: "Store",
        load: Callable[[Budget, str], int],
        warn_percents: Iterable[int] = (80,),
        on_warning: Warn | None = None,
        on_exhausted: Exhausted | None = None,
        lease_s: float = LEASE_S,
    ) -> None:
        super().__init__(load, warn_percents, on_warning, on_exhausted)
        self._store = store
        self.replica = uuid.uuid4().hex
        self.lease_s = lease_s
        self._known: set[tuple[str, str]] = set()
        # Settlements the database did not take (lost): retried, in order, by the lease keeper.
        self._unsettled: deque[_Settlement] = deque(maxlen=UNSETTLED_MAX)
        self._stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep, name="stockyard-leases", daemon=True)
        self._keeper.start()

    def close(self) -> None:
        """Stop renewing (the holds of requests still in flight expire with the lease)."""
        self._stop.set()

    def _conn(self) -> sqlite3.Connection:
        return self._store.read()  # autocommit: each statement commits by itself

    def _ensure(self, budgets: Iterable[Budget], ts_ms: int) -> list[tuple[Budget, str]]:
        """Create the rows of periods not seen yet, with the spend so far from the rollups
        (the first replica to insert wins; the others' loads agree or are older)."""
        keyed = [(b, period_key(b.period, ts_ms)) for b in budgets]
        conn = self._conn()
        for budget, key in keyed:
            if (budget.scope, key) in self._known:
                continue
            if not self._exists(conn, budget.scope, key):
                spent = self._load(budget, key)
                conn.execute(
                    "INSERT INTO budget_ledger (scope, period_key, spent_uc) VALUES (?, ?, ?) "
                    "ON CONFLICT (scope, period_key) DO NOTHING",
                    (budget.scope, key, spent),
                )
            if len(self._known) >= KNOWN_MAX:
                self._known.clear()
            self._known.add((budget.scope, key))
        return keyed

    def _row(self, conn: sqlite3.Connection, scope: str, key: str) -> tuple[int, int]:
        row = conn.execute(
            "SELECT spent_uc, reserved_uc FROM budget_ledger WHERE scope = ? AND period_key = ?", (scope, key)
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def reserve(self, budgets: list[Budget], amount: int, ts_ms: int) -> Hold:
        """Reserve ``amount`` µ¢ against every budget, or none of them (BudgetExceeded)."""
        keyed = self._ensure(budgets, ts_ms)
        conn = self._conn()
        lease_ms = int(self.lease_s * 1000)
        hold = Hold()
        for budget, key in keyed:
            lease = self._hold(conn, budget, key, amount, lease_ms)
            if lease is None and self._lost(conn, budget, key, ts_ms):
                lease = self._hold(conn, budget, key, amount, lease_ms)
            if lease is not None:
                hold.parts.append((budget, key, amount))
                hold.leases[(budget.scope, key)] = lease
                continue
            self._give_back(conn, hold)
            spent, reserved = self._row(conn, budget.scope, key)
            refused = BudgetExceeded(budget, key, spent, reserved, amount, ts_ms)
            with self._lock:
                first = spent >= budget.limit_uc and (budget.scope, key) not in self._exhausted  # used up
                if first:
                    self._exhausted.add((budget.scope, key))
            if first:
                self._tell_exhausted(refused)
            raise refused
        return hold

    @staticmethod
    def _exists(conn: sqlite3.Connection, scope: str, key: str) -> bool:
        """Whether the period's row is in the table."""
        sql = "SELECT 1 FROM budget_ledger WHERE scope = ? AND period_key = ?"
        return conn.execute(sql, (scope, key)).fetchone() is not None

    def _lost(self, conn: sqlite3.Connection, budget: Budget, key: str, ts_ms: int) -> bool:
        """Whether the period's row, known to exist, is gone — a database that lost its last commits
        (a crash with asynchronous commit, a failover to a standby behind, a restore) — and was
        made again (spend loaded anew). Without this, the key's every request was refused, with
        nothing spent, until a restart."""
        if self._exists(conn, budget.scope, key):
            return False
        self._known.discard((budget.scope, key))
        self._ensure([budget], ts_ms)
        log.warning("budget ledger: the row of %s for %s was gone from the database; made again", budget.scope, key)
        return True

    def _hold(self, conn: sqlite3.Connection, budget: Budget, key: str, amount: int, lease_ms: int) -> int | None:
        """Reserve ``amount`` in one budget's row if it fits, and record it in this replica's lease: the
        lease's generation (a new lease gets a new one), or None when it does not fit."""
        generation = int.from_bytes(os.urandom(7), "big")
        args = (amount, budget.scope, key, amount, budget.limit_uc, self.replica, amount, lease_ms, generation)
        row = conn.execute(_RESERVE, args).fetchone()
        return None if row is None else int(row[0])

    def _settle_one(
        self, conn: sqlite3.Connection, budget: Budget, key: str, amount: int, actual_uc: int, step: str, lease: int
    ) -> Any:
        """Take a hold out of this replica's lease ``lease`` (its generation) and the row (unless an
        expiry already gave it back) and add the real cost, unless step ``step`` did already; the row's
        spend after, or None when nothing changed (no row, or the step was applied before)."""
        args = (budget.scope, key, step, amount, key, self.replica, lease, amount, actual_uc, budget.scope, key)
        return conn.execute(_SETTLE, args).fetchone()

    def _give_back(self, conn: sqlite3.Connection, hold: Hold) -> None:
        for budget, key, amount in hold.parts:
            self._settle_one(conn, budget, key, amount, 0, step_id(), hold.leases.get((budget.scope, key), 0))

    def settle(
        self, hold: Hold | None, actual_uc: int, scopes: Iterable[str], ts_ms: int, trace_id: str | None = None
    ) -> None:
        """The hold becomes the real cost; the cost also lands on the other current periods
        the table holds for the request's scopes (a budget switched off and on again)."""
        job = _settlement(hold, actual_uc, scopes, ts_ms)
        try:
            self._settle(job)
        except sqlite3.Error as exc:  # kept and retried: the spend must reach the shared ledger
            with self._lock:
                self._unsettled.append(job)
                waiting = len(self._unsettled)
            log.error("budget settlement not recorded yet (%d waiting to be retried): %s", waiting, exc)

    def _retry_unsettled(self) -> None:
        """Apply the settlements a lost database did not take, oldest first; stops at the first
        that fails again (the next round goes on). A step applied before (its answer lost after
        the commit) finds its id in ``budget_settled`` and changes nothing."""
        while True:
            with self._lock:
                if not self._unsettled:
                    return
                item = self._unsettled[0]
            self._settle(item)
            with self._lock:
                if self._unsettled and self._unsettled[0] is item:
                    self._unsettled.popleft()
            log.info("a budget settlement kept while the database was lost is recorded now")

    def _settle(self, job: "_Settlement") -> None:
        """Apply ``job`` one statement at a time, taking each step off it once it committed, so
        a retry after a failure part-way does only what is left."""
        self._tell_warnings(self._apply(job, self._conn()))

    def _apply(self, job: "_Settlement", conn: Any) -> list[tuple[Budget, str, int, int]]:
        """Run ``job``'s statements on ``conn`` (each its own commit in autocommit; the caller's
        transaction's otherwise), taking each step off it once it ran: the thresholds crossed."""
        crossed: list[tuple[Budget, str, int, int]] = []
        while job.parts:
            budget, key, amount, step, lease = job.parts[0]
            row = self._settle_one(conn, budget, key, amount, job.actual_uc, step, lease)
            job.parts.pop(0)
            job.settled[budget.scope] = key
            # Nothing changed: no row, or the step was applied before and its answer lost (a
            # retry). Its spend is read then, so a threshold that step reached is still told.
            spent = int(row[0]) if row is not None else self._row(conn, budget.scope, key)[0]
            with self._lock:
                crossed += self._crossings(budget, key, spent)
        current = [period_key(p, job.ts_ms) for p in PERIODS]
        while job.actual_uc and job.scopes:
            scope, step = job.scopes[0]
            others = (scope, *current, job.settled.get(scope, ""))  # the rows: this scope's other periods
            conn.execute(_SPEND, (*others, step, job.actual_uc, scope))
            job.scopes.pop(0)
        return crossed

    def settle_in(
        self, conn: Any, hold: Hold | None, actual_uc: int, scopes: Iterable[str], ts_ms: int
    ) -> Callable[[], None]:
        """The settlement's statements in the transaction of the write that says why (``conn``, the
        writer's): both commit, or neither (a crash between a bill and a settlement of its own left
        the hold counted as spent, a ``total`` budget's for ever; between a background response's
        record and its reservation's, the hold recorded but never spent). The thresholds it crossed
        are told once it committed. In a writer's transaction they run at its end, with every other
        settlement of it, their rows locked in one order first (``_Deferred``)."""
        job = _settlement(hold, actual_uc, scopes, ts_ms)
        steps = getattr(conn, "before_commit", None)
        if steps is None:  # not a transaction that runs deferred steps: now, its rows locked in order
            self._apply_all([job], conn)
        else:
            deferred = next((s for s in steps if isinstance(s, _Deferred) and s.ledger is self), None)
            if deferred is None:
                deferred = _Deferred(self)
                steps.append(deferred)
            deferred.jobs.append(job)
        return lambda: self._tell_warnings(job.crossed)

    def _apply_all(self, jobs: list["_Settlement"], conn: Any) -> None:
        """Apply settlements in one transaction (``conn``'s): every row they change locked first,
        in one order, then each applied; each keeps the thresholds it crossed."""
        rows = sorted({mark for job in jobs for mark in job.rows()})
        for start in range(0, len(rows), LOCK_ROWS_MAX):
            chunk = rows[start : start + LOCK_ROWS_MAX]
            marks = ", ".join(["(?, ?)"] * len(chunk))
            conn.execute(_LOCK_ROWS.format(rows=marks), [value for mark in chunk for value in mark]).fetchall()
        for job in jobs:
            job.crossed = self._apply(job, conn)

    def used_up(self, budgets: list[Budget], ts_ms: int) -> BudgetExceeded | None:
        keyed = self._ensure(budgets, ts_ms)
        conn = self._conn()
        for budget, key in keyed:
            spent, reserved = self._row(conn, budget.scope, key)
            if spent + reserved >= budget.limit_uc:
                return BudgetExceeded(budget, key, spent, reserved, 0, ts_ms)
        return None

    def tightest(self, budgets: list[Budget], ts_ms: int) -> BudgetExceeded | None:
        keyed = self._ensure(budgets, ts_ms)
        conn = self._conn()
        found = [BudgetExceeded(budget, key, *self._row(conn, budget.scope, key), 0, ts_ms) for budget, key in keyed]
        return min(found, key=unspent_of, default=None)

    def usage(self, budget: Budget, ts_ms: int) -> tuple[int, int] | None:
        row = (
            self._conn()
            .execute(
                "SELECT spent_uc, reserved_uc FROM budget_ledger WHERE scope = ? AND period_key = ?",
                (budget.scope, period_key(budget.period, ts_ms)),
            )
            .fetchone()
        )
        return None if row is None else (int(row[0]), int(row[1]))

    def _keep(self) -> None:
        """Renew this replica's lease and give back the holds of replicas whose lease expired,
        on a connection of its own; a lost database is retried on the next round."""
        conn = None
        while not self._stop.wait(self.lease_s / 3):
            try:
                if conn is None or getattr(conn, "broken", False):
                    if conn is not None:
                        conn.close()
                    conn = self._store.backend.connect()
                conn.execute(
                    f"UPDATE budget_leases SET expires_ms = {_NOW_MS} + ? WHERE replica = ?",
                    (int(self.lease_s * 1000), self.replica),
                )
                expired = conn.execute(_EXPIRE).fetchall()
                if expired:
                    log.warning("budget holds of a stopped replica given back: %d budget period(s)", len(expired))
                conn.execute("DELETE FROM budget_leases WHERE reserved_uc = 0 AND replica = ?", (self.replica,))
                self._prune_settled(conn)
                self._retry_unsettled()
            except sqlite3.Error as exc:
                log.warning("budget leases: %s", exc)
        if conn is not None:
            conn.close()

    def _prune_settled(self, conn: sqlite3.Connection) -> None:
        """Delete the ids of settlement steps older than SETTLED_KEEP_S (a day). An id is read
        only by a retry of its own step, which the replica that made it runs from ``_unsettled``
        at its keeper's first round that reaches the database again (every lease_s/3): a day is
        far longer than any such wait, short of a replica cut off from its database for a day
        while the others prune; a step retried after its id went would be applied again (more
        spend, never less). Every replica prunes, on the database's clock (ids carry the clock of
        the replica that made them: one a day behind the database's would lose its ids early)."""
        conn.execute(_PRUNE, (SETTLED_KEEP_S * 1000,))


def _settlement(hold: Hold | None, actual_uc: int, scopes: Iterable[str], ts_ms: int) -> "_Settlement":
    """A settlement's steps, each with an id of its own."""
    parts = (
        [(b, key, amount, step_id(), hold.leases.get((b.scope, key), 0)) for b, key, amount in hold.parts]
        if hold
        else []
    )
    return _Settlement(parts, actual_uc, [(scope, step_id()) for scope in scopes], ts_ms)


@dataclass
class _Settlement:
    """A settlement's steps still to apply, each with its id: the holds to turn into spend, then
    the spend on the scopes' other current periods (each a statement of its own)."""

    parts: list[tuple[Budget, str, int, str, int]]  # budget, period key, amount held, step id, lease generation
    actual_uc: int
    scopes: list[tuple[str, str]]  # scope, step id
    ts_ms: int
    settled: dict[str, str] = field(default_factory=dict)  # scope -> the period its hold settled
    crossed: list[tuple[Budget, str, int, int]] = field(default_factory=list)  # thresholds, once applied

    def rows(self) -> set[tuple[str, str]]:
        """The (scope, period key) rows it may change: its holds' and its scopes' current periods."""
        current = [period_key(p, self.ts_ms) for p in PERIODS]
        return {(b.scope, key) for b, key, *_ in self.parts} | {(s, key) for s, _ in self.scopes for key in current}


@dataclass
class _Deferred:
    """A writer transaction's settlements (``SharedLedger.settle_in``), applied at its end together."""

    ledger: SharedLedger
    jobs: list[_Settlement] = field(default_factory=list)

    def __call__(self, conn: Any) -> None:
        self.ledger._apply_all(self.jobs, conn)


TICKS_PER_S = 10  # rate buckets per second
RATE_SPAN = 60 * TICKS_PER_S + 1  # buckets summed: this tenth of a second and the 600 before it
PRUNE_EVERY = 1000  # admissions between deletions of every window's old buckets


@dataclass
class RateEntry:
    """One admitted request: its window's bucket and the tokens counted for it."""

    tick: int
    tokens: int
    live: bool = True


class WindowTurns:
    """One count at a time per rate window in this process; the others wait here, holding nothing.

    A count holds a read connection of the pool while it waits for its window's lock: one key's
    burst, its lock slow to come (held by another replica, a slow database), took every connection
    of the pool to wait on it, and other keys' requests found the pool busy. A window's entry lives
    while a thread counts on it or waits for it, so the table holds at most one per such thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[threading.Lock, int]] = {}  # window -> its turn, threads using it

    @contextmanager
    def turn(self, name: str, wait_s: float) -> Iterator[None]:
        """The window's turn, waited for ``wait_s`` at most (then a busy error: the 503 of a count
        that could not be made)."""
        with self._lock:
            turn, users = self._windows.get(name) or (threading.Lock(), 0)
            self._windows[name] = (turn, users + 1)
        try:
            if not turn.acquire(timeout=wait_s):
                raise _queued(wait_s)
            try:
                yield
            finally:
                turn.release()
        finally:
            with self._lock:
                users = self._windows[name][1] - 1
                if users:
                    self._windows[name] = (turn, users)
                else:
                    del self._windows[name]


def _queued(wait_s: float) -> sqlite3.OperationalError:
    error: Any = sqlite3.OperationalError(f"the rate counts of one window waited {wait_s:g} s for each other")
    error.database_failed = error.lock_timeout = True  # a 503: the requests ahead hold the window's lock
    error.queued = True  # this server's own burst on one window: refused, never passed uncounted
    return error


class SharedRateLimiter:
    """:class:`~stockyard.modules.ratelimit.RateLimiter`'s interface over ``rate_buckets``."""

    def __init__(self, store: "Store") -> None:
        self._store = store
        self._admitted = 0
        self._turns = WindowTurns()

    def admit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int, who: str = "this key") -> RateEntry:
        """Count one request against the window ``key_id``, or raise RateLimited. The database
        lost: the request goes through uncounted (a limit is not a budget; it fails open). This
        server's read connections all busy: the error (a 503), since that is a burst of its own
        requests, which the limit is there to hold back."""
        if tpm is not None and tokens > tpm:
            raise too_large(who, tpm, tokens)
        try:
            with self._turns.turn(key_id, pgpool.WAIT_S):  # one read connection per window waits on its lock
                entry = self._counted(key_id, rpm, tpm, tokens, who)
        except sqlite3.Error as exc:
            if getattr(exc, "pool_busy", False) or getattr(exc, "queued", False):
                raise
            _NOT_COUNTED.say(log, logging.WARNING, "rate limit of %s not counted, the database failed: %s", who, exc)
            return RateEntry(0, tokens, live=False)
        self._admitted += 1
        if self._admitted % PRUNE_EVERY == 0:
            self._prune()
        return entry

    def _counted(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int, who: str) -> RateEntry:
        """``_admit`` in a transaction of its own on a read connection."""
        conn = self._store.read()
        conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        try:
            entry = self._admit(conn, key_id, rpm, tpm, tokens, who)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction and not getattr(conn, "broken", False):
                conn.execute("ROLLBACK")
            raise
        return entry

    def check(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int, who: str = "this key") -> None:
        """Raise RateLimited if ``admit`` would now, counting nothing; the database lost: no refusal."""
        if tpm is not None and tokens > tpm:
            raise too_large(who, tpm, tokens)
        try:
            self._refuse(self._store.read(), key_id, rpm, tpm, tokens, who)
        except sqlite3.Error as exc:
            _NOT_CHECKED.say(log, logging.WARNING, "rate limit of %s not checked, the database failed: %s", who, exc)

    def _admit(
        self, conn: sqlite3.Connection, name: str, rpm: int | None, tpm: int | None, tokens: int, who: str
    ) -> RateEntry:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"rate:{name}",))
        tick = self._refuse(conn, name, rpm, tpm, tokens, who)
        conn.execute(
            "INSERT INTO rate_buckets (name, tick, requests, tokens) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (name, tick) DO UPDATE SET requests = rate_buckets.requests + 1, "
            "tokens = rate_buckets.tokens + excluded.tokens",
            (name, tick, tokens),
        )
        conn.execute("DELETE FROM rate_buckets WHERE name = ? AND tick <= ?", (name, tick - RATE_SPAN))
        return RateEntry(tick, tokens)

    def _refuse(
        self, conn: sqlite3.Connection, name: str, rpm: int | None, tpm: int | None, tokens: int, who: str
    ) -> int:
        """RateLimited if one more request of ``tokens`` would pass the window's limits; else the tick now."""
        now = int(conn.execute(f"SELECT {_NOW_MS}").fetchone()[0])
        tick = now * TICKS_PER_S // 1000
        # Summed by the database: a busy window has up to 601 buckets, and fetching them all per
        # admission cost ~0.45 ms of CPU (measured); they are read only to say when to retry.
        totals = conn.execute(
            "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(tokens), 0) FROM rate_buckets WHERE name = ? AND tick > ?",
            (name, tick - RATE_SPAN),
        ).fetchone()
        requests, used = int(totals[0]), int(totals[1])
        if rpm is not None and requests + 1 > rpm:
            raise too_many_requests(who, rpm, _wait(self._buckets(conn, name, tick), 1, requests + 1 - rpm, now))
        if tpm is not None and used + tokens > tpm:
            raise too_many_tokens(who, tpm, tokens, _wait(self._buckets(conn, name, tick), 2, used + tokens - tpm, now))
        return tick

    def _buckets(self, conn: sqlite3.Connection, name: str, tick: int) -> list:
        return conn.execute(
            "SELECT tick, requests, tokens FROM rate_buckets WHERE name = ? AND tick > ? ORDER BY tick",
            (name, tick - RATE_SPAN),
        ).fetchall()

    def correct(self, key_id: str, entry: RateEntry, tokens: int) -> None:
        """Replace an admitted request's estimate with what it really used (a bucket already
        deleted has left the window: nothing to correct)."""
        if not entry.live or tokens == entry.tokens:
            return
        try:
            self._store.read().execute(
                "UPDATE rate_buckets SET tokens = tokens + ? WHERE name = ? AND tick = ?",
                (tokens - entry.tokens, key_id, entry.tick),
            )
            entry.tokens = tokens
        except sqlite3.Error as exc:
            log.warning("rate limit tokens not corrected: %s", exc)

    def _prune(self) -> None:
        """Windows that went quiet keep their last buckets: delete every old one now and then."""
        try:
            self._store.read().execute(
                f"DELETE FROM rate_buckets WHERE tick <= {_NOW_MS} * ? / 1000 - ?", (TICKS_PER_S, RATE_SPAN)
            )
        except sqlite3.Error as exc:
            log.warning("old rate-limit buckets not deleted: %s", exc)


def _wait(buckets: list, column: int, excess: int, now_ms: int) -> float:
    """Seconds until enough of the oldest buckets have left the window to free ``excess``; at
    most 60 (what the in-memory window says: a client retrying ≤ 0.1 s early is refused once more)."""
    freed, tick = 0, 0
    for bucket in buckets:
        freed, tick = freed + int(bucket[column]), int(bucket[0])
        if freed >= excess:
            break
    return min(60.0, (tick + RATE_SPAN) / TICKS_PER_S - now_ms / 1000)

"""The admin login throttle: at most ``FAILED_LOGIN_LIMIT`` wrong admin keys per sender in
``FAILED_LOGIN_WINDOW_S``, for the whole deployment.

Every failed login is already an audit row, written synchronously by the writer. The count is
read from those rows in the same write transaction that appends the next one
(:func:`record_failure`): the workers of ``serve --workers N`` share the SQLite file and replicas
share the PostgreSQL database, and writes to either are serialised (SQLite's write lock,
PostgreSQL's ``BEGIN IMMEDIATE`` advisory lock), so no burst of concurrent guesses, on any mix of
workers and replicas, gets more than the limit. The rows are found by sender (their ``target``)
through the partial index of migration 0022.

:class:`LoginThrottle` is each process's memory of the same: a sender it knows is blocked is
refused without a database read, and it is the limit (per process) when the audit write fails.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from .. import audit
from ..hosts import sender
from ..times import to_iso

if TYPE_CHECKING:
    from ..app import App

FAILED_LOGIN_WINDOW_S = 60.0
FAILED_LOGIN_LIMIT = 10
FAILED_LOGIN = "admin.auth_failed"
FAILED_PATH_MAX = 200  # characters of a refused admin request's path kept in the audit log (it is the sender's text)


class LoginThrottle:
    """Counts failed admin logins per sender in a sliding window, in this process.

    A sender is an IPv4 address or an IPv6 /64 (``hosts.sender``): counted per address, one
    IPv6 host could take a fresh address for every ten guesses (and audit rows). A sender
    whose window is empty is forgotten: when it asks again, and by a sweep at most once a window
    (``_sweep``) for those that never do, so the table holds only the last two minutes' senders.
    """

    def __init__(self) -> None:
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._swept = time.monotonic()

    def blocked_for(self, addr: str) -> float:
        now, who = time.monotonic(), sender(addr)
        with self._lock:
            recent = [t for t in self._failures.get(who, []) if now - t < FAILED_LOGIN_WINDOW_S]
            if not recent:
                self._failures.pop(who, None)
                return 0.0
            self._failures[who] = recent
            if len(recent) < FAILED_LOGIN_LIMIT:
                return 0.0
            return FAILED_LOGIN_WINDOW_S - (now - recent[0])

    def fail(self, addr: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._sweep(now)
            self._failures.setdefault(sender(addr), []).append(now)

    def _sweep(self, now: float) -> None:
        """Forget the senders whose last failure has left the window (caller holds the lock), once a
        window: senders come from the network, and one that fails once and goes away never asks
        again to be forgotten. One pass a minute, not one per failure."""
        if now - self._swept < FAILED_LOGIN_WINDOW_S:
            return
        self._swept = now
        self._failures = {who: t for who, t in self._failures.items() if now - t[-1] < FAILED_LOGIN_WINDOW_S}

    def block(self, addr: str, wait: float) -> None:
        """Remember that the shared count blocks this sender for ``wait`` seconds more (as a full
        window whose oldest failure leaves then), so this process refuses it without asking again."""
        now = time.monotonic()
        start = now + min(wait, FAILED_LOGIN_WINDOW_S) - FAILED_LOGIN_WINDOW_S
        with self._lock:
            self._sweep(now)
            self._failures[sender(addr)] = [start] * FAILED_LOGIN_LIMIT


def record_failure(app: "App", client: str, path: str) -> float:
    """Audit one failed login unless its sender has used up its window in the shared database.

    Returns 0.0 when the attempt was counted (and audited), else the seconds until the sender's
    oldest counted failure leaves the window. Raises whatever the write raised (the caller falls
    back to its process's count)."""
    who = sender(client)
    ops = app.ops(audit.actor_api(client))
    kept = path if len(path) <= FAILED_PATH_MAX else path[:FAILED_PATH_MAX] + "…"

    def job(conn: sqlite3.Connection) -> float:
        now = datetime.now(timezone.utc)
        wait = blocked_in(conn, who, now)
        if wait == 0.0:
            ops.audit(conn, FAILED_LOGIN, who, {"reason": "wrong key", "path": kept})
        return wait

    return app.store.write(job)


def blocked_in(conn: sqlite3.Connection, who: str, now: datetime) -> float:
    """Seconds this sender stays blocked by the failed logins in the audit log (0.0: not blocked).

    One range read of the partial index ``audit_log_failed_logins`` (the action is a literal so
    the index applies); the audit times are fixed-width UTC text, ordered as text."""
    since = to_iso(now - timedelta(seconds=FAILED_LOGIN_WINDOW_S))
    count, oldest = conn.execute(
        f"SELECT COUNT(*), MIN(ts) FROM audit_log WHERE action = '{FAILED_LOGIN}' AND target = ? AND ts > ?",
        (who, since),
    ).fetchone()
    if count < FAILED_LOGIN_LIMIT:
        return 0.0
    first = datetime.fromisoformat(oldest.replace("Z", "+00:00"))
    return max(0.001, FAILED_LOGIN_WINDOW_S - (now - first).total_seconds())

"""How a server learns at once that another process (a replica, the CLI) changed the configuration.

Every configuration change bumps ``config_version`` in its own transaction and calls
:func:`announce` in that same transaction: on PostgreSQL that sends ``NOTIFY``, which PostgreSQL
delivers to every listener when (and only if) the transaction commits. Each server's
configuration watcher waits on its backend's feed between passes: :class:`Polling` (SQLite: the
watcher's poll is how changes arrive) or :class:`Listening` (PostgreSQL: a ``LISTEN`` connection
of its own that wakes the watcher the moment a change commits). The poll stays in both: a row
changed by hand in SQL sends no notification, and a lost LISTEN connection is reconnected while
the poll keeps catching what it missed.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from typing import Any

from ..dburl import PostgresURL
from .db import dialect_of

log = logging.getLogger("stockyard")

CHANNEL = "stockyard_config"
ALIVE_EVERY_S = 5.0  # a quiet LISTEN connection is checked this often (a dead peer sends nothing)
APPLICATION_NAME = "stockyard-listen"  # how the LISTEN connection shows in pg_stat_activity


def announce(conn: Any) -> None:
    """Tell every server the configuration changed, when the open transaction commits."""
    if dialect_of(conn) == "postgresql":
        conn.execute(f"NOTIFY {CHANNEL}")


class Polling:
    """No notifications: the watcher's poll is how changes arrive (SQLite)."""

    def wait(self, timeout: float, stopping: threading.Event) -> bool:
        stopping.wait(timeout)
        return False

    def close(self) -> None:
        pass


class Listening:
    """A ``LISTEN`` connection of the watcher's own. :meth:`wait` returns True when a change was
    announced — or may have been missed (a new connection: whatever was announced while none
    listened), so the watcher checks at once."""

    def __init__(self, url: PostgresURL) -> None:
        self.url = url
        self._conn: Any = None
        self._checked_at = 0.0
        self._lost = False  # logged once per outage

    def wait(self, timeout: float, stopping: threading.Event) -> bool:
        if self._conn is None:
            return self._connect(timeout, stopping)
        try:
            if self._conn.notifications:
                return self._drain()
            readable, _, _ = select.select([self._conn._usock], [], [], timeout)
            if readable or time.monotonic() - self._checked_at > ALIVE_EVERY_S:
                self._conn.execute_simple("")  # reads what arrived: notifications, or the end of the socket
                self._checked_at = time.monotonic()
            return self._drain()
        except Exception as exc:
            self._drop(exc)
            return False

    def _connect(self, timeout: float, stopping: threading.Event) -> bool:
        import pg8000.core

        from .pg import bound_lock_waits

        try:
            conn = pg8000.core.CoreConnection(**{**self.url.connect_args(), "application_name": APPLICATION_NAME})
            bound_lock_waits(conn)  # as every connection Stockyard opens (it takes no lock itself)
            conn.execute_simple(f"LISTEN {CHANNEL}")
        except Exception as exc:
            self._drop(exc)
            stopping.wait(timeout)  # PostgreSQL is away: try again on the next pass
            return False
        self._conn, self._checked_at = conn, time.monotonic()
        if self._lost:
            log.info("configuration changes: listening again (LISTEN %s)", CHANNEL)
        self._lost = False
        return True

    def _drain(self) -> bool:
        found = bool(self._conn.notifications)
        self._conn.notifications.clear()
        return found

    def _drop(self, exc: BaseException) -> None:
        if not self._lost:
            log.warning(
                "configuration changes: the LISTEN connection is lost (%s); reconnecting, "
                "and changes still arrive by polling meanwhile",
                type(exc).__name__,
            )
        self._lost = True
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

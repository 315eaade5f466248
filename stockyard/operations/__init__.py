"""The one place where configuration changes are made — the admin API and the CLI both call here.

Every change is: validate, write (through the server's writer thread, or directly in a CLI
process), append the audit entry in the SAME transaction, bump ``config_version`` so a
running server reloads, commit, and only then answer. A change that fails validation or
whose audit entry cannot be written changes nothing.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import SplitResult, urlsplit

from .. import audit, vault
from ..audit import AuditEntry
from ..store import Store, changes

T = TypeVar("T")

CONFIG_VERSION_KEY = "config_version"


@dataclass
class Refused(Exception):
    """A change that is not made, and why.

    Neutral about who asked: the admin API answers it with ``status`` (and ``code``,
    ``param``) as an error body; the CLI prints ``message`` and exits 1.
    """

    status: int
    message: str
    code: str
    param: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)


def invalid(message: str, param: str | None = None) -> Refused:
    """A change that does not validate (400)."""
    return Refused(400, message, "invalid_value", param)


def http_parts(url: str) -> SplitResult | None:
    """``url`` split, where it is an http(s) URL naming a host (its port, if any, a valid one); else
    None: what a provider's base URL and a webhook's URL must be."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return None
    return parts if parts.scheme in ("http", "https") and parts.hostname else None


def not_found(what: str) -> Refused:
    return Refused(404, f"{what} not found", "not_found")


def conflict(message: str) -> Refused:
    return Refused(409, message, "conflict")


def bump_config_version(conn: sqlite3.Connection) -> None:
    """A new configuration version; every running server reloads (at once where the store can
    announce it: :func:`~stockyard.store.changes.announce`)."""
    conn.execute(
        f"INSERT INTO meta (key, value) VALUES ('{CONFIG_VERSION_KEY}', '1') "
        "ON CONFLICT(key) DO UPDATE SET value = CAST(meta.value AS INTEGER) + 1"
    )
    changes.announce(conn)


def read_config_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (CONFIG_VERSION_KEY,)).fetchone()
    return int(row[0]) if row else 0


def keeping_references(conn: sqlite3.Connection, job: Callable[[sqlite3.Connection], T]) -> T:
    """Run a configuration change, refused (400, nothing changed) when it leaves a model pointing
    at a provider or model that does not exist (``models.dangling``). Checked once per
    transaction, so a batch (a configuration file) may add a model after the one that names it;
    references that were already dangling (an older database, a hand edit) do not block changes."""
    from .models import dangling_now

    before = set(dangling_now(conn))
    result = job(conn)
    made = [problem for problem in dangling_now(conn) if problem not in before]
    if made:
        raise invalid("; ".join(text for _, _, text in made), made[0][1])
    return result


@dataclass
class Operations:
    """Changes to one database, attributed to ``actor`` (``cli:<user>`` or ``admin-api:<addr>``)."""

    store: Store
    actor: str
    secret: str | None = None  # STOCKYARD_ENCRYPTION_KEY: keys the audit chain, opens the vault
    on_change: Callable[[], None] | None = None
    # Inside batch(): the changes waiting for the one transaction that makes them all.
    _pending: list[Callable[[sqlite3.Connection], Any]] | None = field(default=None, init=False, repr=False)

    def chain_key(self, conn: sqlite3.Connection) -> bytes | None:
        if not self.secret:
            return None
        return audit.chain_key(self.secret, vault.get_or_create_salt(conn))

    def salt_is_new(self, conn: sqlite3.Connection) -> bool:
        """True while this database has no vault salt yet: the secret would be new to it.

        Read at the start of a transaction, before anything in it may create the salt."""
        return vault.read_salt(conn) is None

    def audit(
        self,
        conn: sqlite3.Connection,
        action: str,
        target: str,
        details: dict[str, Any],
        *,
        salt_is_new: bool | None = None,
    ) -> AuditEntry:
        """Append an audit entry inside an open transaction (for jobs that do their own writes).

        ``salt_is_new``: whether the vault salt was missing when the transaction began (read
        here when not given, so a job that may create the salt must read it first)."""
        if salt_is_new is None:
            salt_is_new = self.salt_is_new(conn)
        key = self.chain_key(conn)
        audit.ensure_keyed_tail(conn, actor=self.actor, key=key, salt_is_new=salt_is_new)
        return audit.append(conn, actor=self.actor, action=action, target=target, details=details, key=key)

    def change(
        self,
        action: str,
        target: str,
        details: dict[str, Any],
        apply: Callable[[sqlite3.Connection], T],
        *,
        config: bool = True,
    ) -> T:
        """Run ``apply(conn)`` and its audit entry in one transaction; wait for the commit."""

        def job(conn: sqlite3.Connection) -> T:
            salt_is_new = self.salt_is_new(conn)  # before apply, which may create the salt
            result = apply(conn)
            self.audit(conn, action, target, details, salt_is_new=salt_is_new)
            if config:
                bump_config_version(conn)
            return result

        if self._pending is not None:
            self._pending.append(job)
            return None  # type: ignore[return-value]  # made when the batch commits
        result = self.store.write(lambda conn: keeping_references(conn, job) if config else job(conn))
        if config and self.on_change is not None:
            self.on_change()
        return result

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Make every change asked for inside the block in ONE transaction when it ends: all
        of them, each audited, or — when one fails its checks in the transaction — none.

        Changes inside return None instead of their result (nothing is written yet).
        """
        if self._pending is not None:
            raise RuntimeError("batches do not nest")
        self._pending = []
        try:
            yield
            jobs = self._pending
        finally:
            self._pending = None
        if not jobs:
            return

        def job(conn: sqlite3.Connection) -> None:
            for one in jobs:
                one(conn)

        self.store.write(lambda conn: keeping_references(conn, job))
        if self.on_change is not None:
            self.on_change()

    def audit_event(self, action: str, target: str, details: dict[str, Any]) -> AuditEntry:
        """An audit entry with no other change (server start, failed login, backup taken).

        Returns the committed entry, so a caller can show its seq and hash.
        """
        return self.store.write(lambda conn: self.audit(conn, action, target, details))

"""Who is asking: the client key on a request, checked against the current key ring.

Client keys are required once any exists (revoked ones count) or when the server listens
beyond loopback; otherwise the proxy is open to local programs. A key's ``last_used_at``
is written in batches every couple of seconds, never per request.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

from .context import RequestContext
from .keys import KeyRecord, KeyRing
from .keys import check as check_key
from .keys import recheck as recheck_key
from .providers import Registry
from .store import Store
from .store.traces import iso_utc

LAST_USED_FLUSH_S = 2.0  # last_used_at is written in batches, never per request


class Gatekeeper:
    """The key-ring snapshot (swapped whole on reload) and the checks made against it."""

    def __init__(self, store: Store, is_loopback: bool, registry: Callable[[], Registry]) -> None:
        self._store = store
        self._is_loopback = is_loopback
        self._registry = registry
        self.ring = KeyRing([])
        self._used: dict[str, int] = {}  # key id → last request (ms), until the next flush
        self._used_flushed = time.monotonic()

    def use(self, ring: KeyRing) -> None:
        self.ring = ring

    def requires_keys(self, ring: KeyRing) -> bool:
        """Client keys are required once any exists (revoked ones count), or off loopback."""
        return ring.count > 0 or not self._is_loopback

    @property
    def required(self) -> bool:
        return self.requires_keys(self.ring)

    def description(self) -> str:
        """One line for the start-up banner and the log."""
        ring = self.ring
        if not self.requires_keys(ring):
            return (
                "auth: OPEN - listening on loopback and no client keys exist, so any local program "
                "may use the proxy; `stockyard keys create` turns client keys on"
            )
        if ring.count == 0:
            return (
                "auth: client keys required (listening beyond loopback); none exist yet, so every "
                "proxy request is refused until one is made with `stockyard keys create`"
            )
        return f"auth: client keys required ({ring.live} live of {ring.count})"

    def authenticate(self, ctx: RequestContext) -> None:
        """Who is asking: the request's client key (401/403 when it may not), or open mode.

        A proxied request comes here twice: from its headers before the body is read, then with
        its model. The second time, if the key ring is the same snapshot, the key is not parsed,
        hashed and looked up again: only its state and the model are checked (``keys.recheck``).
        """
        ring = self.ring  # one snapshot for the whole decision
        if not self.requires_keys(ring):
            return
        route = self._registry().routes_to
        if ctx.key is not None and ctx.key_ring is ring:
            key: KeyRecord = recheck_key(ctx.key, ctx.model, route=route)
        else:
            key = check_key(ring, ctx.headers, ctx.model, route=route)
        ctx.key, ctx.key_id, ctx.project, ctx.key_ring = key, key.id, key.project, ring
        self._used[key.id] = ctx.ts_ms

    def client_key(self, headers: Mapping[str, str]) -> KeyRecord | None:
        """The request's client key, checked from its headers alone (None in open mode; 401 if bad)."""
        ring = self.ring
        return check_key(ring, headers, None) if self.requires_keys(ring) else None

    def flush_last_used(self, force: bool = False) -> None:
        """Write the keys' last_used_at in one batch every couple of seconds."""
        if not self._used or (not force and time.monotonic() - self._used_flushed < LAST_USED_FLUSH_S):
            return
        self._used_flushed = time.monotonic()
        used, self._used = self._used, {}
        rows = [(iso_utc(ms), key_id, iso_utc(ms)) for key_id, ms in used.items()]
        self._store.submit(
            lambda conn: conn.executemany(
                "UPDATE client_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                rows,
            )
        )

"""Client keys: how they are made, how they are stored, and how a request's key is checked.

A key is ``sk-sy-`` plus 43 base62 characters (256 random bits). Only its SHA-256 and its
first 12 characters are stored: with that much randomness a fast hash is right (nothing
to brute-force), and the prefix lets people tell keys apart. The server holds every key
as an immutable :class:`KeyRing` snapshot that ``App.reload`` swaps whole.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import string
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .errors import ProxyError
from .httphead import bearer_token
from .times import parse_utc

KEY_PREFIX = "sk-sy-"
PREFIX_LEN = 12
_BASE62 = string.digits + string.ascii_letters


def new_secret() -> str:
    """A fresh client key: 32 random bytes in base62 (no '-' or '_', so it selects with a double-click)."""
    number = int.from_bytes(secrets.token_bytes(32), "big")
    chars = []
    for _ in range(43):  # 62**43 > 2**256
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return KEY_PREFIX + "".join(chars)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The client key a request carries: ``Authorization: Bearer`` or ``x-api-key``, one path for both.

    When both are sent they must agree (SDKs sometimes send both); otherwise the request
    is refused rather than guessing which one was meant.
    """
    bearer = bearer_token(headers)
    api_key = (headers.get("x-api-key") or "").strip() or None
    if bearer and api_key and not hmac.compare_digest(bearer.encode(), api_key.encode()):
        raise ProxyError(
            401, "the Authorization and x-api-key headers carry different keys; send one", code="invalid_api_key"
        )
    return bearer or api_key


Route = Callable[[str], "str | None"]  # a model name → the provider routing picks (Registry.routes_to)


def _no_route(model: str) -> None:
    return None


def _matches(pattern: str, name: str) -> bool:
    """An exact name, or a prefix written with a trailing ``*`` (case-insensitive)."""
    pattern, name = pattern.lower(), name.lower()
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern


@dataclass(frozen=True)
class KeyRecord:
    """One client key as stored (never the key itself)."""

    id: str
    name: str
    prefix: str
    hash: str = field(repr=False)
    project: str | None = None
    models: tuple[str, ...] | None = None
    expires_at: str | None = None
    revoked_at: str | None = None
    budget_uc: int | None = None
    budget_period: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    created_at: str = ""
    last_used_at: str | None = None
    expires_ts: float | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "KeyRecord":
        models = json.loads(row["models"]) if row["models"] else None
        return cls(
            id=row["id"],
            name=row["name"],
            prefix=row["prefix"],
            hash=row["hash"],
            project=row["project"],
            models=tuple(models) if models else None,
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
            budget_uc=row["budget_uc"],
            budget_period=row["budget_period"],
            rpm=row["rpm"],
            tpm=row["tpm"],
            created_at=row["created_at"],
            last_used_at=row["last_used_at"],
            expires_ts=parse_utc(row["expires_at"]).timestamp() if row["expires_at"] else None,
        )

    def status(self, now: float | None = None) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_ts is not None and (time.time() if now is None else now) >= self.expires_ts:
            return "expired"
        return "active"

    def allows_model(self, model: str, route: Route) -> bool:
        """Whether the key may use ``model`` at the provider routing sends it to (``route``).

        An entry ``provider/name`` allows the name at that provider only. A bare entry allows
        the name only at the provider routing picks for the bare name: ``gpt-4o-mini`` (served
        by openai) allows ``gpt-4o-mini`` and ``openai/gpt-4o-mini``, never ``azure/gpt-4o-mini``.
        Either may end in ``*`` to allow a prefix; ``*`` alone allows every model. A name that
        routes nowhere (an alias) is matched as written.
        """
        if self.models is None or "*" in self.models:
            return True
        provider = route(model)
        head, sep, rest = model.partition("/")
        bare = rest if sep and rest and head == provider else model
        bare_entries_apply = route(bare) == provider
        for allowed in self.models:
            a_head, a_sep, a_rest = allowed.partition("/")
            if provider and a_sep and a_head.lower() == provider.lower() and _matches(a_rest, bare):
                return True
            if bare_entries_apply and _matches(allowed, bare):
                return True
        return False

    def allows_provider(self, provider: str, route: Route) -> bool:
        """Whether the allow-list lets the key use some model at ``provider``: for calls that
        name no model (files, batches). ``provider/…`` entries name it; a bare entry counts
        for the provider routing picks for it (``gpt-*`` → the provider serving ``gpt-``)."""
        if self.models is None or "*" in self.models:
            return True
        for allowed in self.models:
            head, sep, rest = allowed.partition("/")
            if sep and rest and head.lower() == provider.lower():
                return True
            if route(allowed.rstrip("*")) == provider:
                return True
        return False

    def public(self) -> dict[str, Any]:
        """What may be shown about a key: everything but its hash."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "project": self.project,
            "models": list(self.models) if self.models else None,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "status": self.status(),
            "budget_uc": self.budget_uc,
            "budget_period": self.budget_period,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
        }


def load_keys(conn: sqlite3.Connection) -> list[KeyRecord]:
    """Every key, oldest first (revoked ones included: they still name traces)."""
    rows = conn.execute("SELECT * FROM client_keys ORDER BY created_at, id").fetchall()
    return [KeyRecord.from_row(r) for r in rows]


class KeyRing:
    """An immutable snapshot of the client keys, looked up by hash."""

    def __init__(self, records: list[KeyRecord]) -> None:
        self._by_hash = {r.hash: r for r in records}
        self._by_id = {r.id: r for r in records}
        self.count = len(records)
        self.live = sum(1 for r in records if r.status() == "active")

    def find(self, secret: str) -> KeyRecord | None:
        """The record for ``secret``; the stored hash is compared in constant time."""
        wanted = hash_key(secret)
        record = self._by_hash.get(wanted)
        if record is None or not hmac.compare_digest(record.hash, wanted):
            return None
        return record

    def by_id(self, key_id: str) -> KeyRecord | None:
        """The record with this id (revoked and expired ones too: what they spent still counts)."""
        return self._by_id.get(key_id)


def check(
    ring: KeyRing, headers: Mapping[str, str], model: str | None, now: float | None = None, route: Route = _no_route
) -> KeyRecord:
    """The key a request is allowed to use, or the 401/403 that says why not.

    ``route`` (``Registry.routes_to``) tells which provider serves ``model``: see
    :meth:`KeyRecord.allows_model`. With ``model=None`` only the key itself is checked.
    """
    secret = presented_key(headers)
    if not secret:
        raise ProxyError(
            401,
            "a client key is required: send Authorization: Bearer sk-sy-… "
            "or x-api-key: sk-sy-… (on the Gemini routes also x-goog-api-key or ?key=; "
            "create one with `stockyard keys create`)",
            code="missing_api_key",
        )
    record = ring.find(secret)
    if record is None:
        raise ProxyError(401, "invalid client key", code="invalid_api_key")
    return recheck(record, model, now, route)


def recheck(record: KeyRecord, model: str | None, now: float | None = None, route: Route = _no_route) -> KeyRecord:
    """What :func:`check` asks of a key already found in the ring: that it is active, and may use
    ``model`` (when given). Enough for a second look at a key found in the same ring snapshot."""
    state = record.status(now)
    if state != "active":
        raise ProxyError(401, f"client key {record.prefix}… has been {state}", code=f"{state}_api_key")
    if model is not None:
        check_model(record, model, route)
    return record


def check_model(record: KeyRecord, model: str, route: Route) -> None:
    """The 403 for a model this key may not use at the provider routing picks."""
    if not record.allows_model(model, route):
        raise ProxyError(
            403, f"client key {record.prefix}… may not use model {model!r}", param="model", code="model_not_allowed"
        )

"""Webhooks stored in the database: validation, add/remove, listing, the delivery log, loading.

The signing secret is made here (``whsec_…``), shown once, and stored only as a vault token
bound to the webhook's id; so is the URL (a Slack webhook URL is a credential), of which
listings and the audit log show only the scheme and host. URLs are set by an admin and must
be http(s) with a host and no credentials; Stockyard posts to whatever host is named,
internal ones included — that is the admin's choice to make (README: webhooks and SSRF).
Redirects are never followed.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
from typing import Any, Mapping

from .. import vault
from ..times import now_iso
from ..webhooks import EVENTS, FORMATS, Hook
from . import Operations, Refused, http_parts, invalid, not_found
from .providers import MAX_URL_CHARS, _vault_and_audit_refusals, _vault_for

log = logging.getLogger("stockyard.webhooks")

FIELDS = ("url", "events", "format", "expiry_days", "error_rate_percent", "error_window_min", "error_min_requests")
_LIMITS = {
    "expiry_days": (1, 365, 7),
    "error_rate_percent": (1, 100, 20),
    "error_window_min": (1, 1440, 5),
    "error_min_requests": (1, 1_000_000, 20),
}
_COLUMNS = "id, url_hint, url_token, events, format, secret_token, " + ", ".join(_LIMITS) + ", created_at"


def aad_for(webhook_id: str, what: str = "secret") -> bytes:
    """Binds a ciphertext to its webhook row and its column: a token copied elsewhere does not open."""
    return json.dumps(["stockyard webhook", webhook_id, what], separators=(",", ":")).encode()


def url_hint(url: str) -> str:
    """What may be shown of a webhook URL: scheme and host (the path may be a credential)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…"


def check_url(url: Any) -> str:
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise invalid(f"url must be an http(s) URL of at most {MAX_URL_CHARS} characters", "url")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise invalid("url must not contain spaces or control characters", "url")
    parts = http_parts(url)
    if parts is None:
        # not echoed: a webhook URL may itself be a credential (Slack's), and errors reach CI logs
        raise invalid("url is not valid: use http(s)://host[:port]/path", "url")
    if parts.username or parts.password or parts.fragment:
        raise invalid("url must not carry credentials or a fragment", "url")
    return url


def check_events(events: Any) -> list[str]:
    if isinstance(events, str):
        events = [e.strip() for e in events.split(",") if e.strip()]
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise invalid(f"events must be a non-empty list of: {', '.join(EVENTS)} (or 'all')", "events")
    if events == ["all"]:
        return list(EVENTS)
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise invalid(f"unknown event(s) {', '.join(unknown)}; use {', '.join(EVENTS)} or 'all'", "events")
    return [e for e in EVENTS if e in events]


def _number(fields: Mapping[str, Any], name: str) -> int:
    low, high, default = _LIMITS[name]
    value = fields.get(name, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"{name} must be a whole number from {low} to {high}, got {value!r}", name)
    return value


def describe(row: sqlite3.Row) -> dict[str, Any]:
    """A webhook as listings show it: never its secret."""
    out = {"id": row["id"], "url": row["url_hint"], "events": json.loads(row["events"]), "format": row["format"]}
    out.update({name: row[name] for name in _LIMITS})
    out["created_at"] = row["created_at"]
    return out


def add(ops: Operations, fields: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """A new webhook; returns (its description, the signing secret — shown this once)."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(sorted(unknown))}; use {', '.join(FIELDS)}")
    url = check_url(fields.get("url"))
    events = check_events(fields.get("events"))
    fmt = fields.get("format") or "json"
    if fmt not in FORMATS:
        raise invalid(f"format must be one of {', '.join(FORMATS)}", "format")
    numbers = {name: _number(fields, name) for name in _LIMITS}
    if not ops.secret:
        raise Refused(400, vault.MISSING_SECRET_HELP, "encryption_key_not_set", None)
    webhook_id = "wh_" + secrets.token_hex(8)
    secret = "whsec_" + secrets.token_urlsafe(32)
    created = now_iso()
    details = {"url": url_hint(url), "events": events, "format": fmt, **numbers}

    def apply(conn: sqlite3.Connection) -> dict[str, Any]:
        box = _vault_for(ops, conn)
        token, url_token = box.encrypt(secret, aad_for(webhook_id)), box.encrypt(url, aad_for(webhook_id, "url"))
        conn.execute(
            f"INSERT INTO webhooks ({_COLUMNS}) VALUES ({', '.join('?' * (7 + len(_LIMITS)))})",
            (webhook_id, url_hint(url), url_token, json.dumps(events), fmt, token, *numbers.values(), created),
        )
        return describe(conn.execute(f"SELECT {_COLUMNS} FROM webhooks WHERE id = ?", (webhook_id,)).fetchone())

    with _vault_and_audit_refusals():
        described = ops.change("webhook.add", webhook_id, details, apply)
    return described, secret


def remove(ops: Operations, webhook_id: Any) -> None:
    def apply(conn: sqlite3.Connection) -> None:
        if not conn.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,)).rowcount:
            raise not_found(f"webhook {webhook_id!r}")
        conn.execute("DELETE FROM webhook_outbox WHERE webhook_id = ?", (webhook_id,))  # its events queued: moot

    with _vault_and_audit_refusals():
        ops.change("webhook.remove", str(webhook_id), {}, apply)


def listing(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [describe(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM webhooks ORDER BY created_at, id")]


def get(conn: sqlite3.Connection, webhook_id: str) -> dict[str, Any]:
    row = conn.execute(f"SELECT {_COLUMNS} FROM webhooks WHERE id = ?", (webhook_id,)).fetchone()
    if row is None:
        raise not_found(f"webhook {webhook_id!r}")
    return describe(row)


def deliveries(conn: sqlite3.Connection, webhook_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest delivery attempts first (of one webhook, or of all)."""
    sql = (
        "SELECT id, webhook_id, event_id, event, attempt, ts, status, error, duration_ms, outcome "
        "FROM webhook_deliveries"
    )  # not the kept copy of an event a later server may resume
    args: list[Any] = []
    if webhook_id:
        sql += " WHERE webhook_id = ?"
        args.append(webhook_id)
    sql += " ORDER BY id DESC LIMIT ?"
    return [dict(r) for r in conn.execute(sql, (*args, limit))]


def load(conn: sqlite3.Connection, secret: str | None) -> list[Hook]:
    """Every webhook whose secret opens (the rest are logged and skipped: they cannot sign)."""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM webhooks ORDER BY id").fetchall()
    if not rows:
        return []
    salt = vault.read_salt(conn)
    box = vault.Vault(secret, salt) if secret and salt else None
    hooks = []
    for r in rows:
        try:
            if box is None:
                raise vault.VaultError("STOCKYARD_ENCRYPTION_KEY is not set")
            plain = box.decrypt(r["secret_token"], aad_for(r["id"]))
            url = box.decrypt(r["url_token"], aad_for(r["id"], "url"))
        except vault.VaultError as exc:
            log.error("webhook %s: its URL or secret cannot be decrypted (%s); nothing is sent to it", r["id"], exc)
            continue
        hooks.append(
            Hook(
                id=r["id"],
                url=url,
                events=frozenset(json.loads(r["events"])),
                format=r["format"],
                secret=plain,
                **{name: r[name] for name in _LIMITS},
            )
        )
    return hooks

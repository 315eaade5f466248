"""A hash-chained, optionally keyed audit log of every administrative change.

Each entry's hash covers every field of the entry, including its ``seq`` and the previous
entry's hash, so an edited, deleted or reordered entry breaks the chain. With the
encryption secret set, hashes are HMACs under a key derived from it, so someone with
only the database file cannot recompute a valid chain; the public ``head`` hash, kept
elsewhere, catches truncation.

Entries are appended inside the caller's write transaction (``BEGIN IMMEDIATE``): the
change and its entry commit together, and SQLite's write lock serializes every writer
(the server's writer thread and CLI processes) onto one chain.
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import hmac
import json
import re
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from stockyard import vault
from stockyard.times import now_iso

GENESIS = "0" * 64
ACTOR_SERVER = "server"
MAC_PLAIN = "sha256"
_MAC_KEYED = re.compile(r"^hmac-sha256:([0-9a-f]{8})$")
_CHAIN_PURPOSE = b"stockyard audit chain v1"
_COLUMNS = ("seq", "ts", "actor", "action", "target", "details", "prev_hash", "hash", "mac")
_TEXT_COLUMNS = _COLUMNS[1:]
# An entry's text holding a NUL (an earlier version wrote one to SQLite: a project name no check kept
# it out of), which PostgreSQL's text cannot hold: ``migrate-store`` writes such text there with
# ``?`` in the NUL's place and keeps the text as it was in a ``meta`` row ``audit_text:{seq}`` (a JSON
# object, column -> text, its NUL escaped); reading, exporting and verifying the log use that text,
# so the entry reads back and hashes as written. A forged one changes nothing: it must hash as the
# entry's stored hash does. Moved back to SQLite, the row and its meta row go as they are.
ORIGINAL_TEXT = "audit_text:"
_KEPT_APART = ("ts", "actor", "action", "target", "details")  # never the chain's own hashes and label
# Detail names whose long values are treated as secrets: api_key, key, secret, password,
# token, and names ending in them (provider_key, client_secret, admin_token, apiKey).
_SECRET_NAME = re.compile(r"^(?:.*[_\-.])?(?:api_?key|key|secret|password|passwd|token)$", re.IGNORECASE)


# Set by ``append`` in the thread whose transaction holds a new entry: the one that commits it then
# makes the commit durable (``store.db.sync_wal``). With ``synchronous=NORMAL`` the last commits
# before a power cut may be lost; a head already handed out (``audit head``, /api/audit/head, a
# backup) would then be missing from the chain and read as truncation: a false tamper alarm.
_appended = threading.local()


def take_appended() -> bool:
    """Whether this thread appended an entry since it last asked (and forget it): called as a
    transaction begins and after it commits."""
    was = getattr(_appended, "flag", False)
    _appended.flag = False
    return was


class AuditError(Exception):
    """An entry could not be appended without damaging the chain."""


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: str
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    prev_hash: str
    hash: str
    mac: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int  # entries that verified
    head: str  # hash of the last entry that verified (GENESIS when none)
    broken_seq: int | None
    reason: str
    # The first failure is an entry keyed with a secret that was not given (or the tail with one
    # given only as retired): what a rotation whose new secret is not set yet looks like, so a
    # wrong secret is the first thing to rule out, before tampering.
    other_secret: bool = False

    def as_dict(self) -> dict[str, Any]:
        """What ``audit verify --json`` and ``GET /api/audit/verify`` answer (the reason says it all:
        ``other_secret`` is for doctor's advice)."""
        answer = asdict(self)
        del answer["other_secret"]
        return answer


def chain_key(secret: str | None, salt: bytes | None) -> bytes | None:
    """The HMAC key for the chain, or None when no secret is configured."""
    if not secret or salt is None:
        return None
    return vault.derive_subkey(secret, salt, _CHAIN_PURPOSE)


def key_id(key: bytes) -> str:
    """Public 8-hex id of a chain key, recorded in each keyed entry's ``mac`` label."""
    return hashlib.sha256(key).hexdigest()[:8]


def actor_cli() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "unknown"
    return f"cli:{user}"


def actor_api(addr: str) -> str:
    return f"admin-api:{addr}"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(
    seq: int,
    ts: str,
    actor: str,
    action: str,
    target: str,
    details_json: str,
    prev_hash: str,
    mac: str,
    key: bytes | None,
) -> str:
    """Hash (or HMAC) over every stored field of one entry."""
    data = canonical_json([seq, ts, actor, action, target, details_json, prev_hash, mac])
    if key is None:
        return hashlib.sha256(data.encode("utf-8")).hexdigest()
    return hmac.new(key, data.encode("utf-8"), hashlib.sha256).hexdigest()


def _mac_label(key: bytes | None) -> str:
    return MAC_PLAIN if key is None else f"hmac-sha256:{key_id(key)}"


def _refuse_secrets(value: Any, name: str = "") -> None:
    """Guard against callers writing a secret into the log: name keys by id and last 4."""
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_secrets(k)
            _refuse_secrets(v, str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            _refuse_secrets(v, name)
    elif isinstance(value, str):
        if value.startswith("sk-") and len(value) > 12:
            raise ValueError(
                "audit details must not contain an API key (a value starts with "
                "'sk-'); record the key's id and last 4 characters instead"
            )
        if name and _SECRET_NAME.match(name) and len(value) > 8:
            raise ValueError(f"audit detail {name!r} looks like a secret; record an id and last 4 characters instead")


def _head_row(conn: sqlite3.Connection) -> tuple[int, str, str]:
    row = conn.execute("SELECT seq, hash, mac FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, GENESIS, "") if row is None else (row[0], row[1], row[2])


def original_text(conn: sqlite3.Connection) -> dict[int, dict[str, str]]:
    """seq -> the text as written of those of an entry's columns kept apart (:data:`ORIGINAL_TEXT`)."""
    found: dict[int, dict[str, str]] = {}
    # The prefix compared as text, not as a key range: PostgreSQL orders a range by the database's
    # collation, and en_US's (or ICU's) puts ';' before ':', so 'audit_text;' ended no range at all.
    prefix = f"substr(key, 1, {len(ORIGINAL_TEXT)}) = ?"
    for key, value in conn.execute(f"SELECT key, value FROM meta WHERE {prefix}", (ORIGINAL_TEXT,)):
        try:
            seq, text = int(key[len(ORIGINAL_TEXT) :]), json.loads(value)
        except (ValueError, RecursionError):  # RecursionError: JSON nested past the parser's depth
            continue  # not one of ours: verify reports the entry as stored
        if isinstance(text, dict):
            found[seq] = {c: t for c, t in text.items() if c in _KEPT_APART and isinstance(t, str)}
    return found


def head(conn: sqlite3.Connection) -> tuple[int, str]:
    """(last seq, last hash); (0, GENESIS) for an empty log. Publish it to catch truncation."""
    seq, hash_, _ = _head_row(conn)
    return seq, hash_


def append(
    conn: sqlite3.Connection,
    *,
    actor: str,
    action: str,
    target: str,
    details: dict[str, Any],
    key: bytes | None,
    rekey: bool = False,
) -> AuditEntry:
    """Append one entry inside the caller's open write transaction.

    Refuses (AuditError) to add an unkeyed entry after keyed ones, or to switch to a new
    chain key unless ``rekey`` says the secret is being rotated: either would leave a
    chain that no longer verifies. The caller then rolls back its change with it.
    """
    if not conn.in_transaction:
        raise AuditError("audit.append must run inside the caller's write transaction (BEGIN IMMEDIATE ... COMMIT)")
    if not isinstance(details, dict):
        raise TypeError("audit details must be a dict")
    for field_name, text in (("actor", actor), ("action", action), ("target", target)):
        if not isinstance(text, str) or not text:
            raise ValueError(f"audit {field_name} must be a non-empty string")
    _refuse_secrets([actor, action, target])
    _refuse_secrets(details)
    details_json = canonical_json(details)

    last_seq, prev_hash, last_mac = _head_row(conn)
    mac = _mac_label(key)
    last_keyed = _MAC_KEYED.match(last_mac)
    if last_keyed and key is None:
        raise AuditError("the audit log is keyed; set STOCKYARD_ENCRYPTION_KEY to make changes")
    if last_keyed and key is not None and last_keyed.group(1) != key_id(key) and not rekey:
        raise AuditError(
            f"the audit log is keyed with a different STOCKYARD_ENCRYPTION_KEY "
            f"(chain key id {last_keyed.group(1)}, current {key_id(key)}); "
            "use the secret this log is keyed with (after `providers rotate-secret`, a backup made before "
            "it takes the secret of its time, and so does a server then run on it)"
        )
    seq = last_seq + 1
    ts = now_iso()
    hash_ = entry_hash(seq, ts, actor, action, target, details_json, prev_hash, mac, key)
    conn.execute(
        "INSERT INTO audit_log (seq, ts, actor, action, target, details, prev_hash, hash, mac) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, ts, actor, action, target, details_json, prev_hash, hash_, mac),
    )
    _appended.flag = True
    return AuditEntry(seq, ts, actor, action, target, json.loads(details_json), prev_hash, hash_, mac)


def ensure_keyed_tail(
    conn: sqlite3.Connection, *, actor: str, key: bytes | None, salt_is_new: bool
) -> AuditEntry | None:
    """When a secret is first set on a log begun without one, mark the switch with a keyed entry.

    ``verify`` with a key rejects an unkeyed tail (that is what a chain rewritten without
    the secret looks like), so the first keyed run appends ``audit.keyed``. Call inside
    a write transaction; does nothing when there is no key, no entry, or the tail is keyed.

    ``salt_is_new`` says the vault salt did not exist before this transaction: only then
    is the secret genuinely new to this database. An unkeyed tail on a database that
    already has a salt is a chain rewritten without the secret; sealing it with a keyed
    entry would make the forgery verify, so that is refused (AuditError).
    """
    if key is None:
        return None
    last_seq, _, last_mac = _head_row(conn)
    if last_seq == 0 or _MAC_KEYED.match(last_mac):
        return None
    if not salt_is_new:
        raise AuditError(
            f"the audit log ends in an unkeyed entry (seq {last_seq}) although this database already "
            "has a secret (vault salt): the chain was rewritten without STOCKYARD_ENCRYPTION_KEY; "
            "run `stockyard audit verify` and restore a good backup"
        )
    return append(
        conn,
        actor=actor,
        action="audit.keyed",
        target="audit_log",
        details={"key_id": key_id(key), "unkeyed_entries": last_seq},
        key=key,
    )


def _fail(count: int, head_hash: str, seq: int | None, reason: str, other_secret: bool = False) -> VerifyResult:
    return VerifyResult(False, count, head_hash, seq, reason, other_secret)


def verify(
    conn: sqlite3.Connection, key: bytes | None, expect_head: str | None = None, *, old_keys: Iterable[bytes] = ()
) -> VerifyResult:
    """Walk the whole log and report the first entry that does not verify.

    ``old_keys`` are chain keys from before a secret rotation; the tail must still be
    keyed with ``key``. ``expect_head`` is a head hash recorded earlier (for example by
    a backup): if no entry has it, the log was truncated or rewritten.
    """
    keys = {key_id(k): k for k in old_keys}
    if key is not None:
        keys[key_id(key)] = key
    count, prev, last_mac = 0, GENESIS, ""
    first_keyed: int | None = None
    head_at: int | None = 0 if expect_head == GENESIS else None
    cols = ", ".join(["seq"] + [f"CAST({c} AS BLOB)" for c in _TEXT_COLUMNS])
    kept_apart = original_text(conn)
    for raw in conn.execute(f"SELECT {cols} FROM audit_log ORDER BY seq"):
        seq = raw[0]
        if seq != count + 1:
            return _fail(count, prev, count + 1, f"entry {count + 1} is missing (the next entry is {seq})")
        try:
            text = dict(zip(_TEXT_COLUMNS, ((b or b"").decode("utf-8") for b in raw[1:])))
        except UnicodeDecodeError:
            return _fail(count, prev, seq, f"entry {seq} holds bytes that are not UTF-8 text")
        text.update(kept_apart.get(seq, {}))
        ts, actor, action, target, details, prev_hash, hash_, mac = (text[c] for c in _TEXT_COLUMNS)
        if prev_hash != prev:
            return _fail(count, prev, seq, f"entry {seq} does not follow entry {seq - 1} (prev_hash mismatch)")
        keyed = _MAC_KEYED.match(mac)
        entry_key: bytes | None = None
        if keyed:
            first_keyed = first_keyed or seq
            if keys:
                entry_key = keys.get(keyed.group(1))
                if entry_key is None:
                    current = key_id(key) if key else "-"
                    return _fail(
                        count,
                        prev,
                        seq,
                        f"entry {seq} is keyed with a different STOCKYARD_ENCRYPTION_KEY "
                        f"(chain key id {keyed.group(1)}, current {current}); after "
                        "`providers rotate-secret`, give the old secret in STOCKYARD_PREVIOUS_ENCRYPTION_KEYS",
                        other_secret=True,
                    )
        elif mac != MAC_PLAIN:
            return _fail(count, prev, seq, f"entry {seq} has an unknown mac label")
        elif first_keyed is not None:
            return _fail(count, prev, seq, f"entry {seq} is unkeyed after keyed entries: written without the secret")
        if not keyed or entry_key is not None:
            expected = entry_hash(seq, ts, actor, action, target, details, prev_hash, mac, entry_key)
            if expected != hash_:  # hashes are public: no constant-time need
                return _fail(count, prev, seq, f"entry {seq} was altered (hash mismatch)")
        count, prev, last_mac = seq, hash_, mac
        if expect_head is not None and hash_ == expect_head:
            head_at = seq

    if first_keyed is not None and key is None:
        return _fail(
            count,
            prev,
            None,
            f"the chain is keyed from entry {first_keyed}: set STOCKYARD_ENCRYPTION_KEY "
            f"to verify it ({count} entries are linked, their MACs are unchecked)",
        )
    if key is not None and count:
        tail = _MAC_KEYED.match(last_mac)
        if not tail:
            return _fail(count, prev, count, "chain tail is not keyed: rewritten without the secret?")
        if tail.group(1) != key_id(key):
            reason = "chain tail is keyed with an older secret, not the current one"
            return _fail(count, prev, count, reason, other_secret=True)
    if expect_head is not None and head_at is None:
        return _fail(count, prev, count + 1, "expected head not found: the log was truncated or rewritten")
    reason = f"ok, {count} entries, head {prev}"
    if head_at is not None and head_at < count:
        reason += f" ({count - head_at} entries after the expected head)"
    return VerifyResult(True, count, prev, None, reason)


def verify_with_secret(
    conn: sqlite3.Connection,
    secret: str | None,
    expect_head: str | None = None,
    *,
    previous: Iterable[str] | None = None,
) -> VerifyResult:
    """``verify`` with the chain key derived from the encryption secret and this file's salt.

    The one way the admin API, the CLI and doctor check the chain. With the secret set,
    a non-empty log must be keyed; a missing salt means it never was, or the salt row was
    deleted to pass off a chain recomputed without the secret.

    ``previous`` are secrets retired by ``providers rotate-secret`` (None: read from
    STOCKYARD_PREVIOUS_ENCRYPTION_KEYS): entries keyed before a rotation verify with
    their chain keys; the tail must still be keyed with ``secret``.
    """
    salt = vault.read_salt(conn)
    if secret and salt is None and head(conn)[0] > 0:
        return _fail(
            0,
            GENESIS,
            None,
            "STOCKYARD_ENCRYPTION_KEY is set but the database has no vault salt: "
            "the chain was never keyed with a secret, or the salt was deleted",
        )
    retired = vault.previous_secrets() if previous is None else tuple(previous)
    old_keys = [k for k in (chain_key(p, salt) for p in retired if p != secret) if k is not None]
    return verify(conn, chain_key(secret, salt), expect_head, old_keys=old_keys)


def _as_written(row: sqlite3.Row, kept_apart: dict[int, dict[str, str]]) -> dict[str, Any]:
    """An entry's columns by name, with its text as written where it was kept apart (:func:`original_text`)."""
    entry = dict(zip(_COLUMNS, tuple(row)))
    entry.update(kept_apart.get(entry["seq"], {}))
    return entry


def _row_dict(row: sqlite3.Row, kept_apart: dict[int, dict[str, str]]) -> dict[str, Any]:
    entry = _as_written(row, kept_apart)
    try:
        entry["details"] = json.loads(entry["details"])
    except (TypeError, ValueError):
        pass  # shown as stored; verify reports the damage
    return entry


def list_entries(
    conn: sqlite3.Connection,
    *,
    since: str | None = None,
    after_seq: int = 0,
    limit: int = 100,
    action: str | None = None,
    last: bool = False,
) -> list[dict[str, Any]]:
    """Entries in seq order; page with ``after_seq``; ``since`` is a UTC ISO time or date.

    ``last`` keeps the newest ``limit`` matching entries instead of the oldest (still in
    seq order): what an operator looking at recent changes wants.
    """
    where, args = ["seq > ?"], list[Any]([after_seq])
    if since is not None:
        where.append("ts >= ?")
        args.append(since)
    if action is not None:
        where.append("action = ?")
        args.append(action)
    order = "DESC" if last else "ASC"
    sql = f"SELECT {', '.join(_COLUMNS)} FROM audit_log WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT ?"
    kept_apart = original_text(conn)
    entries = [_row_dict(row, kept_apart) for row in conn.execute(sql, [*args, max(0, int(limit))])]
    return entries[::-1] if last else entries


def export_csv(conn: sqlite3.Connection, out: TextIO) -> int:
    """Write the whole log as CSV, fields exactly as written (so it can be re-verified; text kept
    apart, :data:`ORIGINAL_TEXT`, as it was written)."""
    writer = csv.writer(out)
    writer.writerow(_COLUMNS)
    count = 0
    kept_apart = original_text(conn)
    for row in conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM audit_log ORDER BY seq"):
        entry = _as_written(row, kept_apart)
        writer.writerow([entry[c] for c in _COLUMNS])
        count += 1
    return count

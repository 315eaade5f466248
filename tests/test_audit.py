"""The audit chain: appended in the caller's transaction, tamper-evident, one chain for all writers."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockyard import audit
from stockyard.store import db

SECRET = "audit-test-secret-0123456789abcdefghijkl"
SALT = bytes(range(16))
KEY = audit.chain_key(SECRET, SALT)
OTHER_KEY = audit.chain_key("a-different-secret-0123456789", SALT)
REPO = Path(__file__).resolve().parents[1]
TEXT_COLUMNS = ("ts", "actor", "action", "target", "details", "prev_hash", "hash", "mac")


def add(conn, n: int, key: bytes | None, actor: str = "cli:test", start: int = 0) -> None:
    for i in range(start, start + n):
        conn.execute("BEGIN IMMEDIATE")
        audit.append(
            conn,
            actor=actor,
            action="providers.update",
            target=f"provider:{i}",
            details={"i": i, "key_id": f"pk_{i}", "last4": "…abcd", "note": "ü"},
            key=key,
        )
        conn.execute("COMMIT")


@pytest.fixture
def conn(database):
    """A connection to a fresh database of each kind (SQLite, PostgreSQL)."""
    database.open_and_migrate()
    conn = database.connect()
    yield conn
    conn.close()


@pytest.fixture(params=[None, KEY], ids=["unkeyed", "keyed"])
def key(request):
    return request.param


def tamper(conn, sql: str, *args) -> None:
    """What someone with the file and the sqlite3 module can do."""
    conn.execute(sql, args)


def rows(conn) -> dict[int, tuple]:
    return {r[0]: tuple(r) for r in conn.execute("SELECT * FROM audit_log ORDER BY seq")}


# --- appending and a healthy chain -------------------------------------------------------


def test_fresh_chain_verifies(conn, key):
    assert audit.head(conn) == (0, audit.GENESIS)
    empty = audit.verify(conn, key)
    assert empty.ok and empty.count == 0 and empty.head == audit.GENESIS
    add(conn, 5, key)
    result = audit.verify(conn, key)
    seq, head = audit.head(conn)
    assert result.ok, result.reason
    assert (result.count, result.head, result.broken_seq) == (5, head, None) and seq == 5
    assert result.reason == f"ok, 5 entries, head {head}"


def test_entry_fields(conn):
    conn.execute("BEGIN IMMEDIATE")
    first = audit.append(
        conn,
        actor=audit.actor_cli(),
        action="keys.create",
        target="key:k_1",
        details={"name": "ci", "last4": "…wxyz"},
        key=KEY,
    )
    second = audit.append(
        conn, actor=audit.actor_api("127.0.0.1"), action="keys.revoke", target="key:k_1", details={}, key=KEY
    )
    conn.execute("COMMIT")
    assert first.seq == 1 and first.prev_hash == audit.GENESIS
    assert second.seq == 2 and second.prev_hash == first.hash
    assert first.mac == f"hmac-sha256:{audit.key_id(KEY)}"
    assert first.ts.endswith("Z") and len(first.ts) == len("2024-01-01T00:00:00.000Z")
    assert first.actor.startswith("cli:") and second.actor == "admin-api:127.0.0.1"
    stored = conn.execute("SELECT details FROM audit_log WHERE seq = 1").fetchone()[0]
    assert stored == '{"last4":"…wxyz","name":"ci"}'  # canonical JSON
    assert audit.ACTOR_SERVER == "server"


def test_append_needs_the_callers_transaction(conn):
    with pytest.raises(audit.AuditError, match="BEGIN IMMEDIATE"):
        audit.append(conn, actor="server", action="x", target="y", details={}, key=None)


def test_rollback_drops_the_entry_with_the_change(conn):
    add(conn, 2, KEY)
    conn.execute("BEGIN IMMEDIATE")
    audit.append(conn, actor="server", action="x", target="y", details={}, key=KEY)
    conn.execute("ROLLBACK")
    assert audit.head(conn)[0] == 2 and audit.verify(conn, KEY).ok


def test_keyed_chain_refuses_unkeyed_or_foreign_key_appends(conn):
    add(conn, 2, KEY)
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(audit.AuditError, match="STOCKYARD_ENCRYPTION_KEY"):
        audit.append(conn, actor="server", action="x", target="y", details={}, key=None)
    with pytest.raises(audit.AuditError, match="different STOCKYARD_ENCRYPTION_KEY"):
        audit.append(conn, actor="server", action="x", target="y", details={}, key=OTHER_KEY)
    conn.execute("ROLLBACK")
    assert audit.verify(conn, KEY).ok


def test_rotation_with_old_keys(conn):
    add(conn, 3, KEY)
    conn.execute("BEGIN IMMEDIATE")
    audit.append(conn, actor="cli:op", action="vault.rotate", target="vault", details={}, key=OTHER_KEY, rekey=True)
    conn.execute("COMMIT")
    add(conn, 2, OTHER_KEY, start=3)
    assert audit.verify(conn, OTHER_KEY, old_keys=[KEY]).ok
    broken = audit.verify(conn, OTHER_KEY)
    assert not broken.ok and broken.broken_seq == 1 and "different" in broken.reason
    stale = audit.verify(conn, KEY, old_keys=[OTHER_KEY])
    assert not stale.ok and "older secret" in stale.reason


def test_unkeyed_prefix_then_keyed(conn):
    add(conn, 3, None)
    assert audit.verify(conn, None).ok
    # a secret set later: unkeyed tail with a key looks like a rewrite until marked
    assert not audit.verify(conn, KEY).ok
    conn.execute("BEGIN IMMEDIATE")
    marked = audit.ensure_keyed_tail(conn, actor="server", key=KEY, salt_is_new=True)
    assert audit.ensure_keyed_tail(conn, actor="server", key=KEY, salt_is_new=False) is None
    conn.execute("COMMIT")
    assert marked is not None and marked.action == "audit.keyed" and marked.seq == 4
    add(conn, 2, KEY, start=3)
    result = audit.verify(conn, KEY)
    assert result.ok and result.count == 6, result.reason


def test_keyed_chain_without_key_is_not_ok(conn):
    add(conn, 3, KEY)
    result = audit.verify(conn, None)
    assert not result.ok and result.broken_seq is None
    assert "keyed" in result.reason and "STOCKYARD_ENCRYPTION_KEY" in result.reason
    # structure is still checked without the key
    tamper(conn, "DELETE FROM audit_log WHERE seq = 2")
    assert audit.verify(conn, None).broken_seq == 2


def test_secret_guard(conn):
    conn.execute("BEGIN IMMEDIATE")
    leaks = [
        ({"value": "sk-proj-abcdefghijklmnop"}, "sk-proj-abcdefghijklmnop"),
        ({"nested": {"list": ["ok", "sk-ant-api03-abcdefgh"]}}, "sk-ant-api03-abcdefgh"),
        ({"api_key": "abcdefghij"}, "abcdefghij"),
        ({"key": "123456789"}, "123456789"),
        ({"secret": "hunter2hunter2"}, "hunter2hunter2"),
        ({"password": "correct horse"}, "correct horse"),
        ({"token": "eyJhbGciOiJIUzI1NiJ9"}, "eyJhbGciOiJIUzI1NiJ9"),
        ({"provider_key": "AIzaSyA-not-real"}, "AIzaSyA-not-real"),
        ({"apiKey": "AIzaSyA-not-real"}, "AIzaSyA-not-real"),
        ({"old": {"client_secret": "abcdefghijk"}}, "abcdefghijk"),
    ]
    for details, secret in leaks:
        with pytest.raises(ValueError, match="last 4") as err:
            audit.append(conn, actor="cli:x", action="providers.update", target="provider:1", details=details, key=KEY)
        assert secret not in str(err.value)
    with pytest.raises(ValueError):
        audit.append(conn, actor="cli:x", action="keys.create", target="sk-sy-abcdefghijklmnop", details={}, key=KEY)
    fine = [
        {"key_id": "pk_0123456789abcdef", "last4": "…abcd"},
        {"key": "short", "token": "12345678", "max_tokens": "a long value here"},
        {"value": "sk-short", "note": "sk-"},
        {"name": "openai", "base_url": "https://api.openai.com/v1"},
    ]
    for details in fine:
        audit.append(conn, actor="cli:x", action="providers.update", target="provider:1", details=details, key=KEY)
    conn.execute("COMMIT")
    assert audit.head(conn)[0] == len(fine) and audit.verify(conn, KEY).ok


# --- tampering ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "column, value",
    [
        ("details", '{"i":3,"key_id":"pk_3","last4":"…abce","note":"ü"}'),
        ("actor", "cli:someone-else"),
        ("ts", "2000-01-01T00:00:00.000Z"),
        ("action", "providers.delete"),
        ("target", "provider:99"),
    ],
)
def test_edited_field_detected(conn, key, column, value):
    add(conn, 6, key)
    tamper(conn, f"UPDATE audit_log SET {column} = ? WHERE seq = 4", value)
    result = audit.verify(conn, key)
    assert not result.ok and result.broken_seq == 4 and result.count == 3, result.reason
    assert "altered" in result.reason


def test_deleted_middle_entry_detected(conn, key):
    add(conn, 10, key)
    tamper(conn, "DELETE FROM audit_log WHERE seq = 5")
    result = audit.verify(conn, key)
    assert not result.ok and result.broken_seq == 5 and "missing" in result.reason


def test_deleted_and_renumbered_detected(conn, key):
    add(conn, 10, key)
    tamper(conn, "DELETE FROM audit_log WHERE seq = 5")
    tamper(conn, "UPDATE audit_log SET seq = seq - 1 WHERE seq > 5")
    result = audit.verify(conn, key)
    assert not result.ok and result.broken_seq == 5


def test_swapped_entries_detected(conn, key):
    add(conn, 8, key)
    r = rows(conn)
    cols = "ts = ?, actor = ?, action = ?, target = ?, details = ?, prev_hash = ?, hash = ?, mac = ?"
    tamper(conn, f"UPDATE audit_log SET {cols} WHERE seq = 3", *r[6][1:])
    tamper(conn, f"UPDATE audit_log SET {cols} WHERE seq = 6", *r[3][1:])
    result = audit.verify(conn, key)
    assert not result.ok and result.broken_seq == 3, result.reason


def test_truncated_tail_detected_only_with_expect_head(conn, key):
    add(conn, 10, key)
    _, published = audit.head(conn)
    tamper(conn, "DELETE FROM audit_log WHERE seq > 7")
    assert audit.verify(conn, key).ok  # a truncated chain is still a valid chain...
    result = audit.verify(conn, key, expect_head=published)
    assert not result.ok and result.broken_seq == 8
    assert result.reason == "expected head not found: the log was truncated or rewritten"


def test_expect_head_followed_by_more_entries(conn, key):
    add(conn, 4, key)
    _, published = audit.head(conn)
    add(conn, 3, key, start=4)
    result = audit.verify(conn, key, expect_head=published)
    assert result.ok and "3 entries after" in result.reason
    assert audit.verify(conn, key, expect_head=audit.GENESIS).ok


def _rewrite_unkeyed(conn, from_seq: int) -> None:
    """An attacker without the secret edits entry 3 and recomputes hashes as plain sha256."""
    tamper(conn, "UPDATE audit_log SET actor = 'cli:innocent' WHERE seq = 3")
    r = rows(conn)
    prev = r[from_seq - 1][7] if from_seq > 1 else audit.GENESIS
    for seq in sorted(s for s in r if s >= from_seq):
        _, ts, actor, action, target, details, _, _, _ = r[seq]
        h = audit.entry_hash(seq, ts, actor, action, target, details, prev, "sha256", None)
        tamper(conn, "UPDATE audit_log SET prev_hash = ?, hash = ?, mac = 'sha256' WHERE seq = ?", prev, h, seq)
        prev = h


def test_chain_recomputed_without_key_detected(conn):
    add(conn, 6, KEY)
    _rewrite_unkeyed(conn, 1)
    assert audit.verify(conn, None).ok  # looks fine to someone without the secret
    result = audit.verify(conn, KEY)
    assert not result.ok and result.broken_seq == 6
    assert result.reason == "chain tail is not keyed: rewritten without the secret?"


def test_suffix_recomputed_without_key_detected(conn):
    add(conn, 6, KEY)
    _rewrite_unkeyed(conn, 3)
    for key in (KEY, None):
        result = audit.verify(conn, key)
        assert not result.ok and result.broken_seq == 3 and "unkeyed after keyed" in result.reason


def test_a_chain_rewritten_without_the_key_is_never_sealed(conn):
    """A database that already had a secret (its vault salt existed before the transaction)
    whose tail is unkeyed was rewritten without the secret: the next append must not seal
    the forgery with a keyed ``audit.keyed`` entry (the review's finding 1)."""
    add(conn, 6, KEY)
    _rewrite_unkeyed(conn, 1)
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(audit.AuditError, match="rewritten without"):
        audit.ensure_keyed_tail(conn, actor="server", key=KEY, salt_is_new=False)
    conn.execute("ROLLBACK")
    result = audit.verify(conn, KEY)
    assert not result.ok and "not keyed" in result.reason
    assert audit.head(conn)[0] == 6


def test_odd_stored_values_reported_not_raised(conn, key):
    add(conn, 3, key)
    for column, value in (("hash", "é" * 64), ("prev_hash", "ü"), ("mac", "hmac-sha256:zz"), ("details", "not json")):
        conn.execute("BEGIN IMMEDIATE")
        tamper(conn, f"UPDATE audit_log SET {column} = ? WHERE seq = 2", value)
        result = audit.verify(conn, key)
        assert audit.list_entries(conn)[1][column] == value
        conn.execute("ROLLBACK")
        assert not result.ok and result.broken_seq == 2, (column, result.reason)


# --- hypothesis: any single-byte change to any stored text field -------------------------


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    made = {}
    for name, k in (("unkeyed", None), ("keyed", KEY)):
        c, _ = db.open_and_migrate(tmp_path_factory.mktemp(name) / "stockyard.db")
        add(c, 5, k)
        made[name] = (c, k)
    yield made
    for c, _ in made.values():
        c.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.sampled_from(["unkeyed", "keyed"]),
    seq=st.integers(1, 5),
    column=st.sampled_from(TEXT_COLUMNS),
    position=st.integers(0, 10_000),
    delta=st.integers(1, 255),
)
def test_any_single_byte_change_detected(chains, which, seq, column, position, delta):
    conn, key = chains[which]
    original = conn.execute(f"SELECT CAST({column} AS BLOB) FROM audit_log WHERE seq = ?", (seq,)).fetchone()[0]
    i = position % len(original)
    changed = original[:i] + bytes([(original[i] + delta) % 256]) + original[i + 1 :]
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"UPDATE audit_log SET {column} = CAST(? AS TEXT) WHERE seq = ?", (changed, seq))
        result = audit.verify(conn, key)
    finally:
        conn.execute("ROLLBACK")
    assert not result.ok and result.broken_seq == seq, result.reason
    assert audit.verify(conn, key).ok


# --- one chain for many writers ----------------------------------------------------------

WORKER = """
import sys
import time
from stockyard import audit
from stockyard.config import resolve_database
from stockyard.store import backend_for
path, actor, key = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
conn = backend_for(resolve_database(path, {})).connect()
print("ready", flush=True)
sys.stdin.readline()  # start together with the threads
for i in range(25):
    conn.execute("BEGIN IMMEDIATE")
    audit.append(conn, actor=actor, action="test.concurrent", target=f"n:{i}",
                 details={"i": i}, key=key)
    conn.execute("COMMIT")
    time.sleep(0.002)  # let the other writers in, so the chain really interleaves
conn.close()
"""


def test_concurrent_writers_leave_one_chain(database, request):
    """Threads and processes append at once; BEGIN IMMEDIATE (on PostgreSQL: a transaction-level
    advisory lock) makes them take turns, so the chain never forks."""
    database.open_and_migrate()
    conn = database.connect()
    # what the worker processes open: the file, or the same PostgreSQL database (pg_url, with its password)
    path = str(database.path) if database.dialect == "sqlite" else request.getfixturevalue("pg_url")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), f"proc:{n}", KEY.hex()],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
    go = threading.Barrier(4)
    errors: list[BaseException] = []

    def thread_writer(n: int) -> None:
        try:
            c = database.connect()
            go.wait()
            for i in range(25):
                c.execute("BEGIN IMMEDIATE")
                audit.append(
                    c, actor=f"thread:{n}", action="test.concurrent", target=f"n:{i}", details={"i": i}, key=KEY
                )
                c.execute("COMMIT")
                time.sleep(0.002)  # let the other writers in, so the chain really interleaves
            c.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=thread_writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.close()
    for t in threads:
        t.join()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert not errors
    result = audit.verify(conn, KEY)
    assert result.ok and result.count == 150, result.reason
    per_actor = dict(conn.execute("SELECT actor, COUNT(*) FROM audit_log GROUP BY actor").fetchall())
    switches = conn.execute(
        "SELECT COUNT(*) FROM audit_log a JOIN audit_log b ON b.seq = a.seq + 1 WHERE a.actor != b.actor"
    ).fetchone()[0]
    assert switches >= 5  # the writers really overlapped
    assert per_actor == {**{f"thread:{n}": 25 for n in range(4)}, **{f"proc:{n}": 25 for n in range(2)}}
    conn.close()


# --- reading -----------------------------------------------------------------------------


def test_list_entries_and_export(conn):
    add(conn, 5, KEY)
    conn.execute("BEGIN IMMEDIATE")
    audit.append(conn, actor="server", action="keys.create", target="key:k_9", details={"last4": "…9999"}, key=KEY)
    conn.execute("COMMIT")
    entries = audit.list_entries(conn)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0]["details"]["key_id"] == "pk_0"
    assert [e["seq"] for e in audit.list_entries(conn, after_seq=2, limit=2)] == [3, 4]
    assert [e["seq"] for e in audit.list_entries(conn, action="keys.create")] == [6]
    assert audit.list_entries(conn, since="2999-01-01") == []
    assert len(audit.list_entries(conn, since="2000-01-01")) == 6

    out = io.StringIO()
    assert audit.export_csv(conn, out) == 6
    parsed = list(csv.reader(io.StringIO(out.getvalue())))
    assert parsed[0] == ["seq", "ts", "actor", "action", "target", "details", "prev_hash", "hash", "mac"]
    stored = rows(conn)
    for line in parsed[1:]:
        seq = int(line[0])
        assert tuple(line[1:]) == stored[seq][1:]
        # the export carries everything needed to recompute each hash
        assert audit.entry_hash(seq, *line[1:7], line[8], KEY) == line[7]

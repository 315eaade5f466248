"""Stored provider keys against a real server: wrong secret, tampering, moved ciphertext, rotation.

A database with two keyed providers (alpha, beta) is prepared once with the CLI; each
scenario runs one server on its own copy. The env OpenAI provider stays keyless in the
database, so "other providers keep working" is checked against it as well.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest
from conftest import OPENAI_KEY, ServerProcess, base_env, mock_env, open_database, wait_for

from stockyard import audit, vault
from stockyard.operations import providers as provider_ops

SECRET = "old-" + secrets.token_hex(16)
NEW_SECRET = "new-" + secrets.token_hex(16)
WRONG_SECRET = "wrong-" + secrets.token_hex(16)
ADMIN_KEY = "admin-" + secrets.token_hex(16)
KEYS = {"alpha": f"sk-alpha-{secrets.token_hex(12)}", "beta": f"sk-beta-{secrets.token_hex(12)}"}
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def env_for(cache_home: Path, mock, secret: str | None) -> dict[str, str]:
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN_KEY)
    if secret:
        env["STOCKYARD_ENCRYPTION_KEY"] = secret
    return env


@pytest.fixture
def db_copy(pyz_path, cache_home, mock, tmp_path) -> Path:
    """A database of this test's own (on SQLite or PostgreSQL) with alpha and beta, their keys
    encrypted under SECRET."""
    path = tmp_path / "stockyard.db"
    cli = ServerProcess(pyz_path, path, env_for(cache_home, mock, SECRET))
    for name, key in KEYS.items():
        result = cli.cli(
            "providers",
            "add",
            name,
            "--kind",
            "openai-compatible",
            "--base-url",
            mock.url + "/v1",
            "--models",
            f"{name}-",
            "--key-stdin",
            input=key,
        )
        assert result.returncode == 0, result.stderr
    return path


# The change other writers make for a server to reload its configuration (store-agnostic SQL).
BUMP = ("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'config_version'", ())


def change(conn, *statements: tuple[str, tuple]) -> None:
    """Statements committed together in one write transaction, on either store."""
    conn.execute("BEGIN IMMEDIATE")
    for sql, args in statements:
        conn.execute(sql, args)
    conn.execute("COMMIT")


def start(pyz_path, cache_home, mock, db: Path, secret: str | None) -> ServerProcess:
    return ServerProcess(pyz_path, db, env_for(cache_home, mock, secret)).start()


def served_with(server: ServerProcess, mock, model: str, key: str) -> bool:
    status, _, _ = server.request(
        "POST", "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    )
    last = mock.last("/chat/completions")
    return status == 200 and last is not None and last.headers.get("authorization") == f"Bearer {key}"


def refused(server: ServerProcess, model: str) -> dict | None:
    """The error a request for ``model`` gets when its provider's key cannot be used."""
    status, _, body = server.request(
        "POST", "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    )
    error = json.loads(body).get("error") if status == 503 else None
    return error if error and error.get("code") == "provider_key_unavailable" else None


def key_statuses(server: ServerProcess) -> dict[str, str]:
    status, _, body = server.request("GET", "/api/providers", headers=AUTH)
    assert status == 200, body
    return {p["name"]: p["key_status"] for p in json.loads(body)["data"]}


def stored_tokens(server: ServerProcess) -> dict[str, str]:
    return {r["name"]: r["key_token"] for r in server.db_rows("SELECT name, key_token FROM providers")}


def chain_key(db: Path, secret: str) -> bytes:
    conn = open_database(db)
    try:
        key = audit.chain_key(secret, vault.read_salt(conn))
    finally:
        conn.close()
    assert key is not None
    return key


def verify(db: Path, key: bytes, old_keys: list[bytes] = ()) -> audit.VerifyResult:
    conn = open_database(db)
    try:
        return audit.verify(conn, key, old_keys=old_keys)
    finally:
        conn.close()


def test_right_secret_round_trip(pyz_path, cache_home, mock, db_copy):
    server = start(pyz_path, cache_home, mock, db_copy, SECRET)
    try:
        for name, key in KEYS.items():
            assert served_with(server, mock, f"{name}-model", key)
        assert key_statuses(server) == {"openai": "ok", "alpha": "ok", "beta": "ok"}
        assert "cannot be decrypted" not in server.log
    finally:
        server.stop()


def test_wrong_secret_names_the_keys_and_others_keep_working(pyz_path, cache_home, mock, db_copy):
    server = start(pyz_path, cache_home, mock, db_copy, WRONG_SECRET)
    try:
        log = server.log
        for name in KEYS:
            assert f"provider '{name}': its stored key cannot be decrypted" in log
            assert "different STOCKYARD_ENCRYPTION_KEY" in log
            error = refused(server, f"{name}-model")
            assert error and name in error["message"] and "cannot be decrypted" in error["message"]
        wait_for(lambda: "alpha (database, key cannot be decrypted)" in server.log, timeout=5, what="banner")
        assert served_with(server, mock, "gpt-4o-mini", OPENAI_KEY)
        assert key_statuses(server) == {"openai": "ok", "alpha": "cannot decrypt", "beta": "cannot decrypt"}
        assert server.request("GET", "/v1/models")[0] == 200
        # Changes are refused cleanly (the audit chain is keyed with the right secret), not a 500.
        status, _, body = server.request("POST", "/api/providers", {"name": "x", "kind": "anthropic"}, headers=AUTH)
        assert status == 409 and "different STOCKYARD_ENCRYPTION_KEY" in json.loads(body)["error"]["message"]
    finally:
        server.stop()
    assert server.db_rows("SELECT * FROM providers WHERE name = 'x'") == []


def test_no_secret_at_start_says_so(pyz_path, cache_home, mock, db_copy):
    server = start(pyz_path, cache_home, mock, db_copy, None)
    try:
        assert (
            "provider 'alpha': its stored key cannot be decrypted (STOCKYARD_ENCRYPTION_KEY is not set)" in server.log
        )
        assert served_with(server, mock, "gpt-4o-mini", OPENAI_KEY)
        assert refused(server, "beta-model")
    finally:
        server.stop()


def test_tampered_and_moved_ciphertext(pyz_path, cache_home, mock, db_copy):
    server = start(pyz_path, cache_home, mock, db_copy, SECRET)
    conn = open_database(db_copy)
    try:
        assert served_with(server, mock, "alpha-model", KEYS["alpha"])
        tokens = {r["name"]: r["key_token"] for r in conn.execute("SELECT name, key_token FROM providers")}

        # Flip one character of alpha's ciphertext (still valid base64), then make the server reload.
        token = tokens["alpha"]
        flipped = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
        change(conn, ("UPDATE providers SET key_token = ? WHERE name = 'alpha'", (flipped,)), BUMP)
        error = wait_for(lambda: refused(server, "alpha-model"), timeout=5, what="tampered key refused")
        assert "alpha" in error["message"]
        assert wait_for(
            lambda: "provider 'alpha': its stored key cannot be decrypted" in server.log, timeout=5, what="log line"
        )
        assert "altered or belongs to a different provider row" in server.log
        assert served_with(server, mock, "beta-model", KEYS["beta"])
        assert served_with(server, mock, "gpt-4o-mini", OPENAI_KEY)

        # Beta's intact ciphertext copied onto alpha's row does not decrypt there (it is bound to beta's row).
        change(conn, ("UPDATE providers SET key_token = ? WHERE name = 'alpha'", (tokens["beta"],)), BUMP)
        wait_for(lambda: key_statuses(server)["alpha"] == "cannot decrypt", timeout=5, what="reload")
        assert refused(server, "alpha-model")
        assert key_statuses(server)["beta"] == "ok"
        assert served_with(server, mock, "beta-model", KEYS["beta"])

        # Setting the key again repairs the provider.
        result = server.cli("providers", "set-key", "alpha", "--key-stdin", input=KEYS["alpha"])
        assert result.returncode == 0, result.stderr
        wait_for(lambda: served_with(server, mock, "alpha-model", KEYS["alpha"]), timeout=5, what="repair")
    finally:
        conn.close()
        server.stop()


def test_ciphertext_moved_to_another_row_in_process(db_copy):
    """The same check without a server: swapping tokens between rows breaks both, names both."""
    conn = open_database(db_copy)
    try:
        tokens = {r["name"]: r["key_token"] for r in conn.execute("SELECT name, key_token FROM providers")}
        change(
            conn,
            ("UPDATE providers SET key_token = ? WHERE name = 'alpha'", (tokens["beta"],)),
            ("UPDATE providers SET key_token = ? WHERE name = 'beta'", (tokens["alpha"],)),
        )
        loaded = {p.name: p for p in provider_ops.stored(conn, SECRET)}
        for name in KEYS:
            assert loaded[name].api_key is None and "different provider row" in loaded[name].key_error
            assert loaded[name].key_hint == "…" + KEYS[name][-4:]  # the stored hint is still shown
    finally:
        conn.close()


def test_rotate_secret_then_restart(pyz_path, cache_home, mock, db_copy):
    cli = ServerProcess(pyz_path, db_copy, env_for(cache_home, mock, SECRET))
    before = stored_tokens(cli)
    old_chain = chain_key(db_copy, SECRET)

    # A wrong "old" secret changes nothing.
    result = cli.cli("providers", "rotate-secret", input=NEW_SECRET, env={"STOCKYARD_ENCRYPTION_KEY": WRONG_SECRET})
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert stored_tokens(cli) == before

    result = cli.cli("providers", "rotate-secret", input=NEW_SECRET + "\n")
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 2 provider key(s)" in result.stdout and "NEW STOCKYARD_ENCRYPTION_KEY" in result.stdout
    assert NEW_SECRET not in result.stdout + result.stderr and SECRET not in result.stdout + result.stderr
    after = stored_tokens(cli)
    for name in KEYS:
        assert after[name] != before[name]
        assert vault.token_key_id(after[name]) != vault.token_key_id(before[name])
    [entry] = cli.db_rows("SELECT * FROM audit_log WHERE action = 'vault.rotate'")
    new_chain = chain_key(db_copy, NEW_SECRET)
    assert entry["mac"] == f"hmac-sha256:{audit.key_id(new_chain)}"
    assert json.loads(entry["details"])["keys"] == 2
    assert verify(db_copy, new_chain, [old_chain]).ok
    assert not verify(db_copy, new_chain).ok  # older entries need the old chain key

    # The old secret no longer opens the keys; the new one does.
    listing = cli.cli("providers", "list", "--json")
    assert {json.loads(line)["key_status"] for line in listing.stdout.splitlines()} >= {"cannot decrypt"}
    server = start(pyz_path, cache_home, mock, db_copy, NEW_SECRET)
    try:
        assert "cannot be decrypted" not in server.log
        for name, key in KEYS.items():
            assert served_with(server, mock, f"{name}-model", key)
        status, _, body = server.request("POST", "/api/providers", {"name": "later", "kind": "anthropic"}, headers=AUTH)
        assert status == 201, body  # the audit chain continues under the new secret
    finally:
        server.stop()
    assert verify(db_copy, new_chain, [old_chain]).ok


def test_the_audit_log_verifies_after_the_documented_secret_rotation(pyz_path, cache_home, tmp_path):
    """README: `providers rotate-secret`, then run with the new secret. The entries keyed before the
    rotation verify once the old secret is given in STOCKYARD_PREVIOUS_ENCRYPTION_KEYS; without it
    the log says which variable to set."""
    cli = ServerProcess(
        pyz_path, tmp_path / "stockyard.db", {**base_env(cache_home), "STOCKYARD_ENCRYPTION_KEY": SECRET}
    )
    made = cli.cli("keys", "create", "--name", "ci")
    assert made.returncode == 0, made.stderr
    assert cli.cli("audit", "verify").returncode == 0
    rotated = cli.cli("providers", "rotate-secret", input=NEW_SECRET + "\n")
    assert rotated.returncode == 0, rotated.stderr
    assert "STOCKYARD_PREVIOUS_ENCRYPTION_KEYS" in rotated.stdout
    alone = cli.cli("audit", "verify", env={"STOCKYARD_ENCRYPTION_KEY": NEW_SECRET})
    assert alone.returncode == 1 and "STOCKYARD_PREVIOUS_ENCRYPTION_KEYS" in alone.stdout, alone.stdout
    env = {"STOCKYARD_ENCRYPTION_KEY": NEW_SECRET, "STOCKYARD_PREVIOUS_ENCRYPTION_KEYS": f" other-old-one , {SECRET}"}
    verified = cli.cli("audit", "verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    doctor = cli.cli("doctor", env=env)
    assert re.search(r"^ok\s+audit chain\s+ok, ", doctor.stdout, re.M), doctor.stdout
    assert SECRET not in doctor.stdout + doctor.stderr + verified.stdout + verified.stderr
    assert cli.cli("audit", "note", "after the rotation", env=env).returncode == 0

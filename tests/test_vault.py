"""Provider keys at rest: AES-256-GCM, bound to their row, never in the file in clear."""

from __future__ import annotations

import base64

import pytest

from stockyard import vault
from stockyard.store import db
from stockyard.vault import Vault, VaultError

SECRET = "correct-horse-battery-staple-0123456789abcdef"
OTHER_SECRET = "another-secret-entirely-9876543210fedcba"
PROVIDER_KEY = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@pytest.fixture
def conn(tmp_path):
    conn, _ = db.open_and_migrate(tmp_path / "stockyard.db")
    yield conn
    conn.close()


@pytest.fixture
def salt(conn):
    return vault.get_or_create_salt(conn)


def test_round_trip(salt):
    v = Vault(SECRET, salt)
    aad = vault.aad_for(1, "openai")
    token = v.encrypt(PROVIDER_KEY, aad)
    assert token.startswith(f"v1:{v.key_id}:")
    assert PROVIDER_KEY not in token
    assert v.decrypt(token, aad) == PROVIDER_KEY
    assert Vault(SECRET, salt).decrypt(token, aad) == PROVIDER_KEY  # same secret, new object
    assert vault.token_key_id(token) == v.key_id


def test_unicode_round_trip(salt):
    v = Vault(SECRET, salt)
    aad = vault.aad_for(7, "модель-ключ")
    assert v.decrypt(v.encrypt("ключ-ü-🔑", aad), aad) == "ключ-ü-🔑"


def test_nonces_differ(salt):
    v = Vault(SECRET, salt)
    aad = vault.aad_for(1, "openai")
    tokens = {v.encrypt(PROVIDER_KEY, aad) for _ in range(50)}
    assert len(tokens) == 50
    nonces = {base64.urlsafe_b64decode(t.split(":")[2] + "==")[:12] for t in tokens}
    assert len(nonces) == 50


def test_key_id_is_short_public_and_stable(salt):
    v = Vault(SECRET, salt)
    assert len(v.key_id) == 8 and int(v.key_id, 16) >= 0
    assert Vault(SECRET, salt).key_id == v.key_id
    assert Vault(OTHER_SECRET, salt).key_id != v.key_id
    assert Vault(SECRET, bytes(16)).key_id != v.key_id  # per-database salt matters
    assert SECRET not in repr(v) and v.key_id in repr(v)


def test_wrong_secret_names_key_ids_not_secrets(salt):
    right, wrong = Vault(SECRET, salt), Vault(OTHER_SECRET, salt)
    aad = vault.aad_for(1, "openai")
    token = right.encrypt(PROVIDER_KEY, aad)
    with pytest.raises(VaultError) as err:
        wrong.decrypt(token, aad)
    message = str(err.value)
    assert "different STOCKYARD_ENCRYPTION_KEY" in message
    assert right.key_id in message and wrong.key_id in message
    for secret in (SECRET, OTHER_SECRET, PROVIDER_KEY):
        assert secret not in message


def test_missing_secret_refused_with_help(salt):
    for empty in ("", None):
        with pytest.raises(VaultError) as err:
            Vault(empty, salt)  # type: ignore[arg-type]
        assert "STOCKYARD_ENCRYPTION_KEY" in str(err.value)
    assert "secrets.token_urlsafe(32)" in vault.MISSING_SECRET_HELP
    assert "outside the database" in vault.MISSING_SECRET_HELP


def test_tampered_ciphertext_fails(salt):
    v = Vault(SECRET, salt)
    aad = vault.aad_for(1, "openai")
    token = v.encrypt(PROVIDER_KEY, aad)
    prefix, data = token.rsplit(":", 1)
    for i in range(len(data)):
        swapped = "A" if data[i] != "A" else "B"
        bad = f"{prefix}:{data[:i]}{swapped}{data[i + 1 :]}"
        try:
            result = v.decrypt(bad, aad)
        except VaultError as exc:
            assert PROVIDER_KEY not in str(exc)
            continue
        # the last base64 char can carry unused padding bits; any accepted value is unchanged
        assert result == PROVIDER_KEY and i == len(data) - 1
    for bad in (
        "",
        "sk-plaintext-key-oops",
        "v1:zzzzzzzz:AAAA",
        f"{prefix}:AAAA",
        f"v2:{v.key_id}:{data}",
        f"{prefix}:{data}!",
    ):
        with pytest.raises(VaultError) as err:
            v.decrypt(bad, aad)
        assert "sk-plaintext" not in str(err.value)


def test_ciphertext_moved_to_another_row_fails(salt):
    v = Vault(SECRET, salt)
    token = v.encrypt(PROVIDER_KEY, vault.aad_for(1, "openai"))
    for row_id, name in ((2, "openai"), (1, "openai-2"), (2, "anthropic")):
        with pytest.raises(VaultError, match="different provider row"):
            v.decrypt(token, vault.aad_for(row_id, name))
    assert vault.aad_for(1, "a,2") != vault.aad_for(12, "a")  # unambiguous encoding


def test_rotate_token(salt):
    old, new = Vault(SECRET, salt), Vault(OTHER_SECRET, salt)
    aad = vault.aad_for(3, "groq")
    token = old.encrypt(PROVIDER_KEY, aad)
    rotated = vault.rotate_token(token, aad, old, new)
    assert vault.token_key_id(rotated) == new.key_id
    assert new.decrypt(rotated, aad) == PROVIDER_KEY
    with pytest.raises(VaultError):
        old.decrypt(rotated, aad)
    # running the rotation again (after an interruption) leaves the token as is
    assert vault.rotate_token(rotated, aad, old, new) == rotated
    with pytest.raises(VaultError):
        vault.rotate_token(token, vault.aad_for(4, "groq"), old, new)


def test_salt_created_once_and_stable(tmp_path):
    path = tmp_path / "s.db"
    conn, _ = db.open_and_migrate(path)
    assert vault.read_salt(conn) is None
    conn.execute("BEGIN IMMEDIATE")
    salt = vault.get_or_create_salt(conn)  # inside a transaction
    conn.execute("COMMIT")
    assert len(salt) == 16
    assert vault.get_or_create_salt(conn) == salt  # outside one
    other = db.connect(path)
    assert vault.get_or_create_salt(other) == salt
    assert vault.read_salt(other) == salt
    other.close()
    conn.close()
    conn, _ = db.open_and_migrate(path)
    assert vault.read_salt(conn) == salt
    conn.close()


def test_salt_differs_between_databases(tmp_path):
    a, _ = db.open_and_migrate(tmp_path / "a.db")
    b, _ = db.open_and_migrate(tmp_path / "b.db")
    assert vault.get_or_create_salt(a) != vault.get_or_create_salt(b)
    a.close()
    b.close()


def test_corrupt_salt_is_reported(conn):
    conn.execute("INSERT INTO meta (key, value) VALUES ('vault_salt', 'not base64!!')")
    with pytest.raises(VaultError, match="vault_salt"):
        vault.read_salt(conn)


def test_plaintext_never_in_database_file(tmp_path):
    path = tmp_path / "stockyard.db"
    conn, _ = db.open_and_migrate(path)
    v = Vault(SECRET, vault.get_or_create_salt(conn))
    conn.execute("BEGIN IMMEDIATE")  # the providers table comes from migration 0002
    conn.execute(
        "INSERT INTO providers (id, name, kind, base_url, key_token, created_at, updated_at) "
        "VALUES (1, 'openai', 'openai', 'https://api.openai.com/v1', ?, '', '')",
        (v.encrypt(PROVIDER_KEY, vault.aad_for(1, "openai")),),
    )
    conn.execute("INSERT INTO meta (key, value) VALUES ('test_token', ?)", (v.encrypt(PROVIDER_KEY, b"meta"),))
    conn.execute("COMMIT")
    stored = conn.execute("SELECT key_token FROM providers WHERE id = 1").fetchone()[0]
    assert v.decrypt(stored, vault.aad_for(1, "openai")) == PROVIDER_KEY
    files = [p for p in tmp_path.iterdir() if p.name.startswith("stockyard.db")]
    for secret in (PROVIDER_KEY, SECRET, PROVIDER_KEY[-20:]):
        for f in files:
            assert secret.encode() not in f.read_bytes(), f.name
    conn.close()


def test_last4():
    assert vault.last4(PROVIDER_KEY) == "…6789"
    assert vault.last4("12345678") == "…5678"
    assert vault.last4("1234567") == "****"
    assert vault.last4("") == "****"


def test_derive_subkey_separates_purposes(salt):
    a = vault.derive_subkey(SECRET, salt, b"purpose a")
    b = vault.derive_subkey(SECRET, salt, b"purpose b")
    assert len(a) == len(b) == 32 and a != b
    assert vault.derive_subkey(SECRET, salt, b"purpose a") == a

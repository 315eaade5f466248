"""AES-256-GCM for provider keys at rest.

The master secret (``STOCKYARD_ENCRYPTION_KEY``) lives outside the database; the database
holds only a random per-database salt. Keys are derived with HKDF so one secret can serve
several purposes (provider keys here, the audit chain MAC in :mod:`stockyard.audit`).
Each ciphertext names the key that made it (``key_id``) so a wrong or rotated secret is
reported as such, and carries associated data that binds it to its provider row.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import sqlite3
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# `cryptography` is imported by the functions that use it: a server whose provider keys come
# from the environment never loads it (about 7 MiB of resident memory; bench/README.md).

SECRET_HOWTO = (  # how to set the secret: every refusal for want of it ends with this
    "Create a secret once and keep it outside the database (a backup of the database must "
    "not contain it), for example:\n"
    "  export STOCKYARD_ENCRYPTION_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')\n"
    "Use the same value every time Stockyard runs against this database."
)
MISSING_SECRET_HELP = (
    "STOCKYARD_ENCRYPTION_KEY is not set, so Stockyard cannot store or read provider keys. " + SECRET_HOWTO
)

PREVIOUS_SECRETS_VAR = "STOCKYARD_PREVIOUS_ENCRYPTION_KEYS"
SALT_META_KEY = "vault_salt"
SALT_BYTES = 16
NONCE_BYTES = 12
_TAG_BYTES = 16
_PROVIDER_KEYS_INFO = b"stockyard provider keys v1"
_TOKEN = re.compile(r"^v1:([0-9a-f]{8}):([A-Za-z0-9_-]+)$")


class VaultError(Exception):
    """A provider key could not be encrypted or decrypted; the message never holds key material."""


def derive_subkey(secret: str, salt: bytes, purpose: bytes) -> bytes:
    """32 bytes for one purpose from the master secret: the only KDF in Stockyard."""
    if not secret:
        raise VaultError(MISSING_SECRET_HELP)
    if len(salt) < SALT_BYTES:
        raise VaultError(f"vault salt must be at least {SALT_BYTES} bytes")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=purpose)
    return hkdf.derive(secret.encode("utf-8"))


def previous_secrets(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Secrets retired by ``providers rotate-secret``, from STOCKYARD_PREVIOUS_ENCRYPTION_KEYS
    (comma-separated): only to verify the audit entries keyed before a rotation. Never logged."""
    raw = (os.environ if env is None else env).get(PREVIOUS_SECRETS_VAR) or ""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def read_salt(conn: sqlite3.Connection) -> bytes | None:
    """The database's vault salt, or None before any provider key was stored."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (SALT_META_KEY,)).fetchone()
    if row is None:
        return None
    try:
        salt = base64.b64decode(row[0], validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise VaultError("meta.vault_salt is not valid base64; the database was edited") from None
    if len(salt) != SALT_BYTES:
        raise VaultError("meta.vault_salt has the wrong length; the database was edited")
    return salt


def get_or_create_salt(conn: sqlite3.Connection) -> bytes:
    """Return the salt, creating it first if needed.

    INSERT OR IGNORE followed by a re-read is one atomic statement plus a read, so two
    processes racing here (inside a transaction or not) both end up with the same salt.
    """
    fresh = base64.b64encode(os.urandom(SALT_BYTES)).decode("ascii")
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (SALT_META_KEY, fresh))
    salt = read_salt(conn)
    if salt is None:  # only if meta is not a table we can write to
        raise VaultError("could not store the vault salt in meta")
    return salt


def aad_for(row_id: int, name: str) -> bytes:
    """Associated data binding a ciphertext to one provider row (its id and its name)."""
    return json.dumps(["stockyard provider", int(row_id), name], separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def token_key_id(token: str) -> str:
    """The key id a stored token was encrypted with (public; used by doctor and rotation)."""
    match = _TOKEN.match(token) if isinstance(token, str) else None
    if match is None:
        raise VaultError("not a Stockyard encrypted value (expected v1:<key id>:<data>)")
    return match.group(1)


class Vault:
    """Encrypts and decrypts provider keys with a key derived from the master secret."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, secret: str, salt: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = derive_subkey(secret, salt, _PROVIDER_KEYS_INFO)
        self._aead: AESGCM = AESGCM(key)
        self.key_id: str = hmac.new(key, b"key-id", hashlib.sha256).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"Vault(key_id={self.key_id!r})"

    def encrypt(self, plaintext: str, aad: bytes) -> str:
        """``v1:<key id>:<base64url(nonce + ciphertext)>`` with a fresh random nonce."""
        if not isinstance(plaintext, str):
            raise VaultError("only text can be encrypted")
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, plaintext.encode("utf-8"), aad)
        data = base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")
        return f"v1:{self.key_id}:{data}"

    def decrypt(self, token: str, aad: bytes) -> str:
        """The plaintext, or VaultError for a foreign key id, tampering, or the wrong row."""
        key_id = token_key_id(token)
        if not hmac.compare_digest(key_id, self.key_id):
            raise VaultError(
                f"encrypted with a different STOCKYARD_ENCRYPTION_KEY (key id {key_id}, current {self.key_id})"
            )
        data = token.rsplit(":", 1)[1]
        try:
            sealed = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        except (binascii.Error, ValueError):
            raise VaultError("encrypted value is damaged (bad base64)") from None
        if len(sealed) < NONCE_BYTES + _TAG_BYTES:
            raise VaultError("encrypted value is damaged (too short)")
        from cryptography.exceptions import InvalidTag

        try:
            plain = self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except InvalidTag:
            raise VaultError(
                f"could not decrypt (key id {self.key_id}): the value was altered "
                "or belongs to a different provider row"
            ) from None
        return plain.decode("utf-8")


def rotate_token(token: str, aad: bytes, old: Vault, new: Vault) -> str:
    """Re-encrypt one token from ``old`` to ``new``.

    A token already under ``new`` is checked and returned unchanged, so an interrupted
    rotation can simply be run again.
    """
    if token_key_id(token) == new.key_id:
        new.decrypt(token, aad)
        return token
    return new.encrypt(old.decrypt(token, aad), aad)


def last4(secret: str) -> str:
    """A display hint like ``…abcd``; short secrets get ``****`` so no real fraction shows."""
    if len(secret) < 8:
        return "****"
    return "…" + secret[-4:]

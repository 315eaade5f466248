"""Providers stored in the database: validation, add/update/remove, loading, secret rotation.

The CLI and the admin API both call here, so a provider is checked and written the same
way whichever door it came through. Keys reach the database only as vault tokens bound to
their row (``vault.aad_for(id, name)``); audit entries and listings carry the last four
characters at most. Environment providers are merged in when loading and never written.
"""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from .. import audit, vault
from ..providers import AZURE_API_VERSION, ENV_SPECS, KINDS, Provider, Registry, from_env
from ..store import Store
from ..times import now_iso
from . import Operations, Refused, conflict, http_parts, invalid

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
API_VERSION = re.compile(r"^[A-Za-z0-9._-]{1,40}$")
MAX_MODELS = 500
MAX_MODEL_CHARS = 200
MAX_KEY_CHARS = 4096
MAX_URL_CHARS = 2048
MIN_SECRET_CHARS = 16
FIELDS = ("name", "kind", "base_url", "models", "api_version", "api_key", "responses")
_UNSET: Any = object()

# The first-party kinds have a well-known address and model prefixes (the env defaults).
_KIND_DEFAULTS = {s.kind: s for s in ENV_SPECS if s.name == s.kind}
_COLUMNS = "id, name, kind, base_url, models, api_version, key_token, key_hint, responses"


# -- validation ------------------------------------------------------------------------------


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise invalid(
            f"provider name {name!r} is not valid: use 1-40 lower-case letters, digits, "
            "'-' or '_', starting with a letter or digit",
            "name",
        )
    return name


def check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise invalid(f"kind {kind!r} is not valid: use one of {', '.join(KINDS)}", "kind")
    return kind


_USERINFO = re.compile(r"(?<=://)[^/?#@]*@")


def shown_url(url: str) -> str:
    """``url`` as an error may repeat it: a ``user:password@`` part masked (a URL refused for another
    reason may still carry one, and errors are answered, printed and logged)."""
    return _USERINFO.sub("…@", url, count=1)


def check_base_url(url: Any, kind: str) -> str:
    """An http(s) URL with a host; the kind's default when omitted (if it has one)."""
    if url is None or url == "":
        spec = _KIND_DEFAULTS.get(kind)
        if spec is None or not spec.default_url:
            raise invalid(f'a provider of kind {kind} needs a base URL (--base-url / "base_url")', "base_url")
        return spec.default_url
    if not isinstance(url, str):
        raise invalid("base URL must be a string", "base_url")
    if len(url) > MAX_URL_CHARS or any(ch.isspace() or not ch.isprintable() for ch in url):
        # urlsplit silently drops tab, CR and LF: refuse them before parsing (header injection).
        raise invalid(
            f"base URL {shown_url(url)[:100]!r} must not contain spaces or control characters "
            f"(at most {MAX_URL_CHARS} characters)",
            "base_url",
        )
    parts = http_parts(url)
    if parts is None:
        raise invalid(f"base URL {shown_url(url)!r} is not valid: use http(s)://host[:port][/path]", "base_url")
    if parts.username or parts.password or parts.query or parts.fragment:
        # Keys belong in the vault, not in a URL that is shown, logged and audited.
        raise invalid(
            'base URL must not carry credentials, a query or a fragment; store the key with --key-stdin / "api_key"',
            "base_url",
        )
    return url.rstrip("/")


def env_url_problem(env: Mapping[str, str]) -> str | None:
    """Why a ``*_BASE_URL`` / ``AZURE_OPENAI_ENDPOINT`` variable cannot be used, or None (checked at start)."""
    names = [s.url_var for s in ENV_SPECS if s.url_var] + ["AZURE_OPENAI_ENDPOINT"]
    for name in names:
        value = env.get(name)
        if not value:
            continue
        try:
            check_base_url(value, "openai-compatible")
        except Refused as exc:
            return f"{name}: {exc.message}"
    return None


def check_models(models: Any, kind: str) -> tuple[str, ...]:
    """Model names or prefixes; the kind's well-known prefixes when omitted."""
    if models is None:
        spec = _KIND_DEFAULTS.get(kind)
        return spec.models if spec else ()
    if not isinstance(models, (list, tuple)):
        raise invalid("models must be a list of model names or prefixes", "models")
    if len(models) > MAX_MODELS:
        raise invalid(f"at most {MAX_MODELS} models per provider", "models")
    out: list[str] = []
    for m in models:
        if not isinstance(m, str) or not m.strip() or len(m) > MAX_MODEL_CHARS or not m.isprintable():
            raise invalid(
                f"model {m!r} is not valid: each must be a non-empty name of at most {MAX_MODEL_CHARS} "
                "printable characters",
                "models",
            )
        if m.strip() not in out:
            out.append(m.strip())
    return tuple(out)


def check_api_version(value: Any, kind: str) -> str | None:
    if value is None or value == "":
        return AZURE_API_VERSION if kind == "azure" else None
    if not isinstance(value, str) or not API_VERSION.match(value):
        raise invalid("api version must be 1-40 letters, digits, '.', '-' or '_'", "api_version")
    return value


def check_responses(value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid("responses must be true or false (the provider speaks the Responses API)", "responses")
    return value


def check_key(key: Any) -> str:
    """A provider key: printable ASCII without spaces (it goes into an HTTP header)."""
    if not isinstance(key, str) or not key:
        raise invalid("the provider key is empty", "api_key")
    if len(key) > MAX_KEY_CHARS or any(not 0x21 <= ord(c) <= 0x7E for c in key):
        # Never echo the value: it is (nearly) a secret even when malformed.
        raise invalid(
            f"the provider key must be printable ASCII without spaces, at most {MAX_KEY_CHARS} characters", "api_key"
        )
    return key


def _vault_for(ops: Operations, conn: sqlite3.Connection) -> vault.Vault:
    if not ops.secret:
        raise _no_secret()
    return vault.Vault(ops.secret, vault.get_or_create_salt(conn))


# -- reading ---------------------------------------------------------------------------------


def _row(conn: sqlite3.Connection, name: str) -> sqlite3.Row | None:
    return conn.execute(f"SELECT {_COLUMNS} FROM providers WHERE name = ?", (name,)).fetchone()


def _decryptor(conn: sqlite3.Connection, secret: str | None) -> Callable[[sqlite3.Row], str]:
    """A function giving one row's key, raising VaultError (also when no vault can be opened)."""
    try:
        if not secret:
            raise vault.VaultError("STOCKYARD_ENCRYPTION_KEY is not set")
        salt = vault.read_salt(conn)
        if salt is None:
            raise vault.VaultError("the vault salt is missing from the database")
        box = vault.Vault(secret, salt)
    except vault.VaultError as exc:
        reason = str(exc)

        def refuse(row: sqlite3.Row) -> str:
            raise vault.VaultError(reason)

        return refuse
    return lambda row: box.decrypt(row["key_token"], vault.aad_for(row["id"], row["name"]))


def stored(conn: sqlite3.Connection, secret: str | None) -> list[Provider]:
    """Database providers in id order, keys decrypted; an undecryptable key sets ``key_error``."""
    decrypt = _decryptor(conn, secret)
    out = []
    for r in conn.execute(f"SELECT {_COLUMNS} FROM providers ORDER BY id").fetchall():
        key, error = None, None
        if r["key_token"]:
            try:
                key = decrypt(r)
            except vault.VaultError as exc:
                error = str(exc)
        try:
            models = tuple(json.loads(r["models"]))
        except (TypeError, ValueError):
            models = ()
        out.append(
            Provider(
                r["name"],
                r["kind"],
                r["base_url"],
                key,
                models,
                source="database",
                api_version=r["api_version"],
                key_error=error,
                id=r["id"],
                key_hint=r["key_hint"],
                responses=bool(r["responses"]),
            )
        )
    return out


def load(conn: sqlite3.Connection, env: Mapping[str, str], secret: str | None) -> list[Provider]:
    """Environment providers, then database ones (which override env ones by name in a Registry)."""
    return from_env(env) + stored(conn, secret)


def listing(conn: sqlite3.Connection, env: Mapping[str, str], secret: str | None) -> list[dict]:
    """What `providers list` and ``GET /api/providers`` show: never a key."""
    return [p.public() for p in Registry(load(conn, env, secret)).providers]


# -- changes ---------------------------------------------------------------------------------


def _store_key(ops: Operations, conn: sqlite3.Connection, row_id: int, name: str, key: str) -> None:
    token = _vault_for(ops, conn).encrypt(key, vault.aad_for(row_id, name))
    conn.execute(
        "UPDATE providers SET key_token = ?, key_hint = ?, updated_at = ? WHERE id = ?",
        (token, vault.last4(key), now_iso(), row_id),
    )


@contextmanager
def _vault_and_audit_refusals() -> Iterator[None]:
    """Vault and audit errors as refusals: a one-line answer, never a traceback."""
    try:
        yield
    except vault.VaultError as exc:
        raise Refused(400, str(exc), "vault_error") from None
    except audit.AuditError as exc:
        raise Refused(409, str(exc), "audit_refused") from None


def _change(ops: Operations, action: str, name: str, details: dict[str, Any], apply) -> Any:
    """Operations.change for one provider, with vault and audit errors as refusals."""
    with _vault_and_audit_refusals():
        return ops.change(action, f"provider:{name}", details, apply)


def add(
    ops: Operations,
    name: Any,
    kind: Any,
    *,
    base_url: Any = None,
    models: Any = None,
    api_version: Any = None,
    api_key: Any = None,
    responses: Any = False,
) -> int:
    """Create a database provider (and store its key); returns the new row id."""
    name, kind = check_name(name), check_kind(kind)
    url = check_base_url(base_url, kind)
    model_list = check_models(models, kind)
    version = check_api_version(api_version, kind)
    speaks = check_responses(responses)
    key = check_key(api_key) if api_key is not None else None
    if key is not None and not ops.secret:
        raise _no_secret()

    def apply(conn: sqlite3.Connection) -> int:
        if _row(conn, name) is not None:
            raise conflict(
                f"provider {name!r} already exists; change it with `providers set-key` "
                f"or PATCH /api/providers/{name}, or remove it first"
            )
        now = now_iso()
        row_id = conn.execute(  # RETURNING: both stores speak it (PostgreSQL has no lastrowid)
            "INSERT INTO providers (name, kind, base_url, models, api_version, responses, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (name, kind, url, json.dumps(list(model_list)), version, int(speaks), now, now),
        ).fetchone()[0]
        if key is not None:  # the row id is part of the key's associated data: insert first
            _store_key(ops, conn, row_id, name, key)
        return row_id

    details = {
        "name": name,
        "kind": kind,
        "base_url": url,
        "models": list(model_list),
        "api_version": version,
        "responses": speaks,
        "key_hint": vault.last4(key) if key else None,
    }
    return _change(ops, "provider.add", name, details, apply)


def update(
    ops: Operations,
    name: Any,
    *,
    kind: Any = _UNSET,
    base_url: Any = _UNSET,
    models: Any = _UNSET,
    api_version: Any = _UNSET,
    api_key: Any = _UNSET,
    responses: Any = _UNSET,
) -> None:
    """Change some fields of a database provider; ``api_key=None`` removes the stored key."""
    name = check_name(name)
    if api_key is not _UNSET and api_key is not None:
        api_key = check_key(api_key)
        if not ops.secret:
            raise _no_secret()
    if all(v is _UNSET for v in (kind, base_url, models, api_version, api_key, responses)):
        raise invalid("nothing to change: give kind, base_url, models, api_version, api_key or responses")
    # Filled by apply() with the validated values; Operations.change audits it right after.
    details: dict[str, Any] = {"name": name}

    def apply(conn: sqlite3.Connection) -> None:
        row = _row(conn, name)
        if row is None:
            raise _missing(name)
        new_kind = check_kind(kind) if kind is not _UNSET else row["kind"]
        fields: dict[str, Any] = {}
        if kind is not _UNSET:
            fields["kind"] = new_kind
        if base_url is not _UNSET:
            fields["base_url"] = check_base_url(base_url, new_kind)
        if models is not _UNSET:
            fields["models"] = list(check_models(models, new_kind))
        if api_version is not _UNSET:
            fields["api_version"] = check_api_version(api_version, new_kind)
        if responses is not _UNSET:
            fields["responses"] = check_responses(responses)
        details.update(fields)
        if fields:
            stored_fields = {k: json.dumps(v) if k == "models" else v for k, v in fields.items()}
            sets = ", ".join(f"{k} = ?" for k in stored_fields)
            conn.execute(
                f"UPDATE providers SET {sets}, updated_at = ? WHERE id = ?",
                (*stored_fields.values(), now_iso(), row["id"]),
            )
        if api_key is None:
            conn.execute(
                "UPDATE providers SET key_token = NULL, key_hint = NULL, updated_at = ? WHERE id = ?",
                (now_iso(), row["id"]),
            )
            details["key_hint"] = None
        elif api_key is not _UNSET:
            _store_key(ops, conn, row["id"], name, api_key)
            details["key_hint"] = vault.last4(api_key)

    only_key = all(v is _UNSET for v in (kind, base_url, models, api_version, responses))
    _change(ops, "provider.set_key" if only_key else "provider.update", name, details, apply)


def remove(ops: Operations, name: Any) -> None:
    name = check_name(name)

    def apply(conn: sqlite3.Connection) -> None:
        if conn.execute("DELETE FROM providers WHERE name = ?", (name,)).rowcount == 0:
            raise _missing(name)

    _change(ops, "provider.remove", name, {"name": name}, apply)


def _missing(name: str) -> Refused:
    return Refused(
        404,
        f"no database provider named {name!r} (providers from environment variables "
        "cannot be changed here; add a database provider with the same name to "
        "override one)",
        "not_found",
    )


def _no_secret(param: str | None = "api_key") -> Refused:
    return Refused(400, vault.MISSING_SECRET_HELP, "encryption_key_not_set", param)


# -- rotation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rotation:
    keys: int
    old_key_id: str
    new_key_id: str


def rotate_secret(store: Store, actor: str, old_secret: str | None, new_secret: str) -> Rotation:
    """Re-encrypt every stored key (and webhook signing secret) under a new master secret, with its
    audit entry, in one transaction.

    The audit chain switches to the new secret's chain key in the same entry
    (``rekey=True``), so the log verifies with the new key plus the old one. A running
    server is not asked to reload: it keeps the keys it has until restarted with the new secret.
    """
    if not old_secret:
        raise _no_secret(param=None)
    if len(new_secret) < MIN_SECRET_CHARS:
        raise invalid(f"the new secret must be at least {MIN_SECRET_CHARS} characters; use a long random value")
    if new_secret == old_secret:
        raise invalid("the new secret is the same as STOCKYARD_ENCRYPTION_KEY")

    def job(conn: sqlite3.Connection) -> Rotation:
        salt_is_new = vault.read_salt(conn) is None
        salt = vault.get_or_create_salt(conn)
        old, new = vault.Vault(old_secret, salt), vault.Vault(new_secret, salt)
        old_chain, new_chain = audit.chain_key(old_secret, salt), audit.chain_key(new_secret, salt)
        assert old_chain is not None and new_chain is not None  # both secrets are set here
        # A log begun without a secret is marked keyed (old key) first; an unkeyed tail on a
        # database that already had a salt is refused here like anywhere else.
        audit.ensure_keyed_tail(conn, actor=actor, key=old_chain, salt_is_new=salt_is_new)
        tail = conn.execute("SELECT mac FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        if tail and tail[0].startswith("hmac-sha256:") and tail[0] != f"hmac-sha256:{audit.key_id(old_chain)}":
            raise vault.VaultError(
                "the audit log is keyed with a different secret than "
                "STOCKYARD_ENCRYPTION_KEY; set the current secret to rotate"
            )
        count = 0
        for r in conn.execute("SELECT id, name, key_token FROM providers WHERE key_token IS NOT NULL").fetchall():
            try:
                token = vault.rotate_token(r["key_token"], vault.aad_for(r["id"], r["name"]), old, new)
            except vault.VaultError as exc:
                raise vault.VaultError(f"provider {r['name']!r}: {exc}; nothing was changed") from None
            conn.execute("UPDATE providers SET key_token = ?, updated_at = ? WHERE id = ?", (token, now_iso(), r["id"]))
            count += 1
        deployments = conn.execute(
            "SELECT id, model, name, key_token FROM model_deployments WHERE key_token IS NOT NULL"
        ).fetchall()
        for r in deployments:  # a deployment's own key: bound to its row like a provider's
            aad = vault.aad_for(r["id"], f"deployment:{r['model']}/{r['name']}")
            try:
                token = vault.rotate_token(r["key_token"], aad, old, new)
            except vault.VaultError as exc:
                raise vault.VaultError(f"deployment {r['model']}/{r['name']}: {exc}; nothing was changed") from None
            conn.execute("UPDATE model_deployments SET key_token = ? WHERE id = ?", (token, r["id"]))
            count += 1
        from .webhooks import aad_for as webhook_aad  # webhooks build on this module

        hooks = 0
        for r in conn.execute("SELECT id, secret_token, url_token FROM webhooks").fetchall():
            try:
                token = vault.rotate_token(r["secret_token"], webhook_aad(r["id"]), old, new)
                url_token = vault.rotate_token(r["url_token"], webhook_aad(r["id"], "url"), old, new)
            except vault.VaultError as exc:
                raise vault.VaultError(f"webhook {r['id']}: {exc}; nothing was changed") from None
            conn.execute(
                "UPDATE webhooks SET secret_token = ?, url_token = ? WHERE id = ?", (token, url_token, r["id"])
            )
            hooks += 1
        audit.append(
            conn,
            actor=actor,
            action="vault.rotate",
            target="vault",
            details={
                "keys": count,
                "webhooks": hooks,
                "old_key_id": old.key_id,
                "new_key_id": new.key_id,
                "chain_key_id": audit.key_id(new_chain),
            },
            key=new_chain,
            rekey=True,
        )
        return Rotation(count, old.key_id, new.key_id)

    with _vault_and_audit_refusals():
        return store.write(job)

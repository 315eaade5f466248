"""``stockyard doctor``: find what stops an installation from working, and say how to fix it.

Each check returns :class:`Check` lines (ok / warn / fail, what was found, the fix). The
database is opened read-only and never migrated, so running doctor changes nothing.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

from . import audit, config, vault
from .dburl import PostgresURL
from .providers import from_env
from .store import db
from .store.files import disk_bytes

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_SECRET_CHARS = 16
LOW_DISK_BYTES = 200 * 1024 * 1024
SECRET_HINT = (
    "export STOCKYARD_ENCRYPTION_KEY=$(python3 -c 'import secrets; "
    "print(secrets.token_urlsafe(32))') and keep it outside the database"
)


@dataclass(frozen=True)
class Check:
    status: str  # ok, warn or fail
    name: str  # what was checked
    message: str  # what was found
    fix: str = ""  # what to do about it (warn and fail)

    def as_dict(self) -> dict[str, str]:
        return {"status": self.status, "check": self.name, "message": self.message, "fix": self.fix}


def run(database: Path | PostgresURL, env: Mapping[str, str], host: str | None = None) -> list[Check]:
    """Every check, in the order an operator would fix things."""
    checks: list[Check] = []
    conn = None
    try:
        conn = _open_postgres(database, checks) if isinstance(database, PostgresURL) else _open(database, checks)
        secret = config.encryption_secret(env)
        checks.append(_secret_check(conn, secret))
        checks.append(_chain_check(conn, secret))
    finally:
        if conn is not None:
            conn.close()
    checks += list(_provider_checks(env))
    checks.append(_listen_check(env, host))
    return checks


# -- database ----------------------------------------------------------------------------------


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _open(path: Path, checks: list[Check]) -> sqlite3.Connection | None:
    """Database checks; the connection for later checks, or None when it is unusable."""
    if not path.exists():
        checks.append(
            Check(
                FAIL,
                "database",
                f"no database at {path}",
                "start the server once to create it, or pass --db / set STOCKYARD_DB",
            )
        )
        return None
    conn = None
    try:
        conn = db.connect(path, readonly=True)
        integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        checks.append(
            Check(
                FAIL,
                "database",
                f"{path} cannot be read as SQLite: {exc}",
                "restore the newest backup or snapshot copy",
            )
        )
        return None
    if integrity != ["ok"]:
        checks.append(
            Check(
                FAIL,
                "database",
                f"integrity check failed: {'; '.join(integrity[:3])}",
                "stop the server and restore the newest backup",
            )
        )
    else:
        checks.append(Check(OK, "database", f"{path} passes the integrity check"))
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    if not writable:
        checks.append(
            Check(
                FAIL,
                "permissions",
                f"{path} or its folder is not writable by this user",
                "run as the user that owns the file, or fix its and its folder's permissions",
            )
        )
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() == "wal":
            checks.append(Check(OK, "journal mode", "WAL"))
        else:
            checks.append(
                Check(WARN, "journal mode", f"{mode}, not WAL", "start the server once: it switches the file to WAL")
            )
        checks.append(_schema_check(conn))
    except sqlite3.Error as exc:
        conn.close()
        checks.append(
            Check(
                FAIL, "schema", f"not a Stockyard database: {exc}", "check --db / STOCKYARD_DB points at the right file"
            )
        )
        return None
    checks.append(_size_check(path))
    return conn


def _open_postgres(url: PostgresURL, checks: list[Check]) -> Any:
    """The checks that mean something on PostgreSQL (it keeps its own integrity, journal and
    files): it answers, the schema, the size. Reads only."""
    from .store.backends import PostgresBackend

    backend = PostgresBackend(url)
    try:
        conn = backend.connect()
        version = conn.execute("SELECT current_setting('server_version')").fetchone()[0]
    except sqlite3.Error as exc:
        checks.append(
            Check(
                FAIL,
                "database",
                str(exc),
                "check that PostgreSQL runs and that the URL, user and password "
                "(in the URL, PGPASSWORD or STOCKYARD_DB_PASSWORD_FILE) are right",
            )
        )
        return None
    checks.append(Check(OK, "database", f"{url} answers (PostgreSQL {version})"))
    if backend.shared_sessions:
        checks.append(
            Check(
                WARN,
                "pooler",
                "reached through a pooler in transaction mode: requests, budgets, limits and the audit chain "
                "work; configuration changes reach the servers by polling, not LISTEN, and no server lock is held",
                "for LISTEN and the server lock use the pooler's session mode or a direct URL to PostgreSQL",
            )
        )
    try:
        checks.append(_schema_check(conn))
        checks.append(Check(OK, "database size", _size(backend.size_bytes(conn))))
    except sqlite3.Error as exc:
        conn.close()
        checks.append(Check(FAIL, "schema", f"not a Stockyard database: {exc}", "check --db / STOCKYARD_DB"))
        return None
    return conn


def _schema_check(conn: sqlite3.Connection) -> Check:
    code = db.code_schema_version(db.dialect_of(conn))
    try:
        pending = db.pending_migrations(conn)
    except db.SchemaError as exc:
        return Check(
            FAIL,
            "schema",
            str(exc),
            "use the stockyard.pyz that wrote this database, or restore a backup made with this version",
        )
    current = db.schema_version(conn)
    if pending:
        return Check(
            WARN,
            "schema",
            f"version {current}, this stockyard knows {code}: {len(pending)} migration(s) pending",
            "start the server: it backs the file up, then migrates it"
            if db.dialect_of(conn) == "sqlite"
            else "run `stockyard migrate` (or start a server, which migrates)",
        )
    return Check(OK, "schema", f"version {current} (matches this stockyard)")


def _size_check(path: Path) -> Check:
    size = disk_bytes(path)
    free = shutil.disk_usage(path.parent).free
    message = f"{_size(size)} on disk, {_size(free)} free"
    if free < LOW_DISK_BYTES:
        return Check(WARN, "disk space", message, "free disk space: SQLite stops writing when the disk is full")
    return Check(OK, "disk space", message)


# -- encryption secret --------------------------------------------------------------------------


def _keyed_chain(conn: sqlite3.Connection) -> str | None:
    """The chain key id of the newest keyed entry, or None."""
    row = conn.execute("SELECT mac FROM audit_log WHERE mac LIKE 'hmac-sha256:%' ORDER BY seq DESC LIMIT 1").fetchone()
    return row[0].split(":", 1)[1] if row else None


def stored_provider_keys(conn: sqlite3.Connection) -> list[tuple[int, str, str]]:
    """(row id, name, token) of each encrypted provider key (none before the providers migration)."""
    has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'providers'").fetchone()
    if not has_table:
        return []
    found = [
        (row[0], row[1], row[2])
        for row in conn.execute("SELECT id, name, key_token FROM providers WHERE key_token IS NOT NULL")
    ]
    deployments = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'model_deployments'")
    if deployments.fetchone():  # a deployment's own key is bound to "deployment:MODEL/NAME"
        query = "SELECT id, model, name, key_token FROM model_deployments WHERE key_token IS NOT NULL"
        found += [(r[0], f"deployment:{r[1]}/{r[2]}", r[3]) for r in conn.execute(query)]
    return found


def _secret_check(conn: sqlite3.Connection | None, secret: str | None) -> Check:
    """Is the secret set, and does it open what this database holds? A short one only warns."""
    found = _secret_findings(conn, secret)
    if secret and len(secret) < MIN_SECRET_CHARS and found.status == OK:
        return Check(
            WARN,
            found.name,
            f"{found.message}; but it is only {len(secret)} characters",
            f"use at least {MIN_SECRET_CHARS} random characters (rotate it if keys are stored)",
        )
    return found


def _secret_findings(conn: sqlite3.Connection | None, secret: str | None) -> Check:
    name = "encryption secret"
    keyed, stored, salt = None, [], None
    if conn is not None:
        try:
            keyed, stored, salt = _keyed_chain(conn), stored_provider_keys(conn), vault.read_salt(conn)
        except (sqlite3.Error, vault.VaultError) as exc:
            return Check(FAIL, name, f"cannot read what the secret protects: {exc}", "restore the newest backup")
    if not secret:
        if keyed or stored:
            what = f"{len(stored)} stored provider key(s)" if stored else "the audit chain is keyed"
            return Check(
                FAIL,
                name,
                f"STOCKYARD_ENCRYPTION_KEY is not set, but {what}",
                "set STOCKYARD_ENCRYPTION_KEY to the value this database was set up with",
            )
        return Check(
            WARN,
            name,
            "STOCKYARD_ENCRYPTION_KEY is not set: provider keys cannot be stored and the audit chain is not keyed",
            SECRET_HINT,
        )
    if conn is None:
        return Check(OK, name, "set (not checked: the database cannot be opened)")
    if salt is None:
        if keyed or stored:
            return Check(
                FAIL,
                name,
                "the database's vault salt (meta.vault_salt) is missing, but "
                "things are encrypted with it: the file was edited",
                "restore the newest backup",
            )
        return Check(OK, name, "set (nothing in this database is encrypted with it yet)")
    current = audit.key_id(audit.chain_key(secret, salt) or b"")
    if keyed and keyed != current:
        return Check(
            FAIL,
            name,
            f"does not match this database: the audit chain is keyed with key id {keyed}, this secret gives {current}",
            "set STOCKYARD_ENCRYPTION_KEY to the secret the chain is keyed with (after `providers rotate-secret`: "
            "the new one)",
        )
    if stored:
        box = vault.Vault(secret, salt)
        for row_id, provider, token in stored:
            try:
                box.decrypt(token, vault.aad_for(row_id, provider))
            except vault.VaultError as exc:
                return Check(
                    FAIL,
                    name,
                    f"stored key of provider {provider!r}: {exc}",
                    "set the secret the key was stored with, or store the provider key again",
                )
        return Check(OK, name, f"set; decrypts all {len(stored)} stored provider key(s)")
    return Check(OK, name, "set; matches the audit chain key" if keyed else "set")


def _chain_check(conn: sqlite3.Connection | None, secret: str | None) -> Check:
    if conn is None:
        return Check(WARN, "audit chain", "not checked: the database cannot be opened", "fix the database first")
    try:
        result = audit.verify_with_secret(conn, secret)
    except (sqlite3.Error, vault.VaultError) as exc:
        return Check(FAIL, "audit chain", f"cannot be read: {exc}", "restore the newest backup")
    if result.ok:
        return Check(OK, "audit chain", result.reason)
    if result.broken_seq is None:  # every entry links up; the secret is what is missing
        return Check(
            FAIL,
            "audit chain",
            result.reason,
            "set STOCKYARD_ENCRYPTION_KEY to the value this database was set up with",
        )
    if result.other_secret:  # a rotation (perhaps one a crash cut before it said so), not a forgery by itself
        return Check(
            FAIL,
            "audit chain",
            result.reason,
            "set STOCKYARD_ENCRYPTION_KEY to the current secret and, after `providers rotate-secret`, the "
            "old one(s) in STOCKYARD_PREVIOUS_ENCRYPTION_KEYS; only if no secret you had fits was the log "
            "changed outside Stockyard",
        )
    return Check(
        FAIL,
        "audit chain",
        result.reason,
        "the log was changed outside Stockyard: compare it with a backup, and keep "
        "`stockyard audit head` somewhere else from now on",
    )


# -- providers and listening ------------------------------------------------------------------


def _provider_checks(env: Mapping[str, str]) -> Iterator[Check]:
    providers = from_env(env)
    if not providers:
        yield Check(
            WARN,
            "providers",
            "none configured in the environment",
            "set OPENAI_API_KEY (or ANTHROPIC_API_KEY, GEMINI_API_KEY, OLLAMA_BASE_URL, ...)",
        )
        return
    bad = False
    for p in providers:
        parts = urlsplit(p.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            bad = True
            yield Check(
                FAIL,
                "providers",
                f"{p.name}: base URL {p.base_url!r} is not an http(s) URL",
                "fix the provider's *_BASE_URL variable, e.g. https://api.openai.com/v1",
            )
        elif parts.scheme == "http" and p.api_key and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
            yield Check(
                WARN,
                "providers",
                f"{p.name}: its key would be sent over plain http to {parts.hostname}",
                "use an https base URL",
            )
    if not bad:
        yield Check(OK, "providers", ", ".join(f"{p.name} ({p.key_hint or 'no key'})" for p in providers))


def _listen_check(env: Mapping[str, str], host: str | None) -> Check:
    try:
        settings = config.load({"host": host}, env)
    except ValueError as exc:
        return Check(FAIL, "listen address", str(exc), "fix STOCKYARD_HOST / STOCKYARD_PORT")
    where = f"{settings.host}:{settings.port}"
    problem = config.exposure_problem(settings)
    if problem:
        return Check(
            FAIL,
            "listen address",
            f"{where}: serve would refuse to start without STOCKYARD_ADMIN_KEY",
            "set STOCKYARD_ADMIN_KEY, or listen on 127.0.0.1",
        )
    weak = config.admin_key_problem(settings)
    if weak:
        return Check(
            FAIL,
            "listen address",
            f"{where}: serve would refuse to start: {weak}",
            f"use at least {config.MIN_ADMIN_KEY_CHARS} random characters",
        )
    if not settings.is_loopback:
        return Check(OK, "listen address", f"{where}, reachable from other machines; admin API needs the key")
    admin = "admin API enabled" if settings.admin_key else "admin API off (STOCKYARD_ADMIN_KEY unset; the CLI works)"
    return Check(OK, "listen address", f"{where}, this machine only; {admin}")

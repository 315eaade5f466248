"""Which database: a file path (SQLite) or a ``postgresql://`` URL (PostgreSQL).

``--db`` / ``STOCKYARD_DB`` take either. A PostgreSQL URL is
``postgresql://user[:password]@host[:port]/database[?sslmode=…&sslrootcert=FILE]``; the
password may instead come from ``PGPASSWORD`` or a file named by
``STOCKYARD_DB_PASSWORD_FILE`` (so it need not sit in a process list or a unit file).
A :class:`PostgresURL` prints, logs and ``repr``s with the password as ``***``: only
:meth:`PostgresURL.connect_args` hands it on, to the driver.
"""

from __future__ import annotations

import dataclasses
import functools
import ssl
import urllib.parse
from pathlib import Path
from typing import Any, Mapping

SCHEMES = ("postgresql", "postgres")
SSLMODES = ("disable", "require", "verify-full")
PASSWORD_FILE_VAR = "STOCKYARD_DB_PASSWORD_FILE"
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def is_url(raw: str) -> bool:
    return raw.split(":", 1)[0].lower() in SCHEMES and "://" in raw


@dataclasses.dataclass(frozen=True)
class PostgresURL:
    """A parsed PostgreSQL URL; ``str()`` is the masked form, safe to print."""

    user: str
    host: str
    port: int
    database: str
    sslmode: str
    sslrootcert: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)

    def masked(self) -> str:
        auth = urllib.parse.quote(self.user, safe="") + (":***" if self.password else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"sslmode={self.sslmode}" + (f"&sslrootcert={self.sslrootcert}" if self.sslrootcert else "")
        return f"postgresql://{auth}@{host}:{self.port}/{self.database}?{query}"

    def __str__(self) -> str:
        return self.masked()

    @functools.cached_property
    def _context(self) -> ssl.SSLContext | None:
        """Built once: loading the CA store takes longer than a query."""
        return self.ssl_context()

    def ssl_context(self) -> ssl.SSLContext | None:
        """None for ``disable``; encryption only for ``require``; certificate and host name checked
        for ``verify-full`` (against ``sslrootcert`` when given, else the system's CAs)."""
        if self.sslmode == "disable":
            return None
        if self.sslmode == "verify-full":
            return ssl.create_default_context(cafile=self.sslrootcert)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    def connect_args(self) -> dict[str, Any]:
        """Keyword arguments for ``pg8000`` connections (the only place the password goes)."""
        return {
            "user": self.user,
            "password": self.password,
            "host": self.host,
            "port": self.port,
            "database": self.database,
            # False, not None: pg8000 takes None as "try TLS without verifying" (libpq's prefer)
            "ssl_context": self._context if self.sslmode != "disable" else False,
            "timeout": 30,
            "application_name": "stockyard",
        }


def parse_postgres(raw: str, env: Mapping[str, str]) -> PostgresURL:
    """Parse a PostgreSQL URL; ValueError (never echoing the password) when it is not usable."""
    parts = urllib.parse.urlsplit(raw)
    try:
        port = parts.port or 5432
    except ValueError:
        raise ValueError("the database URL has an invalid port") from None
    database = urllib.parse.unquote(parts.path.lstrip("/"))
    if not parts.hostname or not database or not parts.username:
        raise ValueError("a PostgreSQL database URL needs postgresql://user@host[:port]/database")
    query = urllib.parse.parse_qs(parts.query)
    unknown = sorted(set(query) - {"sslmode", "sslrootcert"})
    if unknown:
        raise ValueError(f"unknown database URL parameter(s): {', '.join(unknown)} (known: sslmode, sslrootcert)")
    host = parts.hostname
    # No sslmode: loopback is plain, anything else must prove who it is.
    sslmode = query.get("sslmode", ["disable" if host in _LOOPBACK else "verify-full"])[-1]
    if sslmode not in SSLMODES:
        raise ValueError(f"sslmode must be one of {', '.join(SSLMODES)}, got {sslmode!r}")
    rootcert = query.get("sslrootcert", [None])[-1]
    return PostgresURL(
        user=urllib.parse.unquote(parts.username),
        host=host,
        port=port,
        database=database,
        sslmode=sslmode,
        sslrootcert=str(Path(rootcert).expanduser()) if rootcert else None,
        password=_password(parts, env),
    )


def _password(parts: urllib.parse.SplitResult, env: Mapping[str, str]) -> str | None:
    """From the URL, then ``PGPASSWORD``, then the file ``STOCKYARD_DB_PASSWORD_FILE`` names."""
    if parts.password is not None:
        return urllib.parse.unquote(parts.password)
    if env.get("PGPASSWORD"):
        return env["PGPASSWORD"]
    path = env.get(PASSWORD_FILE_VAR)
    if path:
        try:
            return Path(path).expanduser().read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"{PASSWORD_FILE_VAR}: cannot read {path}: {exc.strerror}") from None
    return None

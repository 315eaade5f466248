"""Settings from command-line flags and environment variables, as one frozen object.

Flags win over environment variables, which win over defaults. Nothing else in the
package reads ``os.environ`` for server settings, so a test can build a Settings and
know exactly what the server will do.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
DEFAULT_DB = "~/.stockyard/stockyard.db"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the server needs to know at start, resolved once."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    db_path: Path = Path(DEFAULT_DB).expanduser()
    admin_key: str | None = None
    encryption_key: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    store_bodies: bool = True
    body_cap_bytes: int = 256 * 1024
    idle_timeout_s: float = 30.0
    request_read_timeout_s: float = 30.0
    upstream_connect_timeout_s: float = 10.0
    upstream_read_timeout_s: float = 600.0
    shutdown_grace_s: float = 20.0
    writer_queue_size: int = 10_000
    log_requests: bool = True
    cors_origin: str | None = None
    default_max_tokens: int = 4096           # output assumed when a request sets no max_tokens
    budget_warn_percent: tuple[int, ...] = (80,)

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can reach the listen address."""
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")


def exposure_problem(settings: Settings) -> str | None:
    """Why the server must not listen where ``settings`` say, or None (serve and doctor ask)."""
    if settings.is_loopback or settings.admin_key:
        return None
    return (f"refusing to listen on {settings.host} without STOCKYARD_ADMIN_KEY: a server other "
            "machines can reach needs an admin key; set STOCKYARD_ADMIN_KEY, or use --host 127.0.0.1")


def _env_bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def _percents(value: str | None) -> tuple[int, ...]:
    """'80' or '80,95' → (80, 95): budget warning thresholds."""
    if not value:
        return (80,)
    try:
        found = tuple(sorted({int(p) for p in value.split(",") if p.strip()}))
    except ValueError:
        raise ValueError(f"STOCKYARD_BUDGET_WARN_PERCENT must be whole percents like 80 or 80,95, got {value!r}") from None
    if not all(0 < p <= 100 for p in found):
        raise ValueError(f"STOCKYARD_BUDGET_WARN_PERCENT values must be between 1 and 100, got {value!r}")
    return found


def _positive_int(value: str | None, name: str, default: int) -> int:
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    return number


def resolve_db_path(flag: str | None, env: Mapping[str, str]) -> Path:
    """The database path from ``--db``, then ``STOCKYARD_DB``, then the default."""
    raw = flag or env.get("STOCKYARD_DB") or DEFAULT_DB
    return Path(raw).expanduser()


def load(flags: Mapping[str, object] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from parsed flags (None values ignored) and the environment."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    port_text = flags.get("port", env.get("STOCKYARD_PORT") or DEFAULT_PORT)
    try:
        port = int(port_text)  # type: ignore[arg-type]
    except ValueError:
        raise ValueError(f"port must be a number, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port}")
    return Settings(
        host=str(flags.get("host", env.get("STOCKYARD_HOST") or DEFAULT_HOST)),
        port=port,
        db_path=resolve_db_path(flags.get("db"), env),  # type: ignore[arg-type]
        admin_key=env.get("STOCKYARD_ADMIN_KEY") or None,
        encryption_key=env.get("STOCKYARD_ENCRYPTION_KEY") or None,
        max_body_bytes=int(env.get("STOCKYARD_MAX_BODY_BYTES") or 32 * 1024 * 1024),
        store_bodies=_env_bool(env.get("STOCKYARD_STORE_BODIES"), True),
        body_cap_bytes=int(env.get("STOCKYARD_BODY_CAP_BYTES") or 256 * 1024),
        idle_timeout_s=float(env.get("STOCKYARD_IDLE_TIMEOUT") or 30.0),
        request_read_timeout_s=float(env.get("STOCKYARD_REQUEST_READ_TIMEOUT") or 30.0),
        upstream_connect_timeout_s=float(env.get("STOCKYARD_UPSTREAM_CONNECT_TIMEOUT") or 10.0),
        upstream_read_timeout_s=float(env.get("STOCKYARD_UPSTREAM_TIMEOUT") or 600.0),
        log_requests=_env_bool(env.get("STOCKYARD_LOG_REQUESTS"), True),
        cors_origin=env.get("STOCKYARD_CORS_ORIGIN") or None,
        default_max_tokens=_positive_int(env.get("STOCKYARD_DEFAULT_MAX_TOKENS"), "STOCKYARD_DEFAULT_MAX_TOKENS", 4096),
        budget_warn_percent=_percents(env.get("STOCKYARD_BUDGET_WARN_PERCENT")),
    )

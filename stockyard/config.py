"""Settings from command-line flags and environment variables, as one frozen object.

Flags win over environment variables, which win over defaults. Nothing else in the
package reads ``os.environ`` for server settings, so a test can build a Settings and
know exactly what the server will do.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Mapping

from .dburl import PostgresURL, is_url, parse_postgres
from .hosts import Network, is_loopback, parse_public_hosts, parse_trusted_proxies

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
DEFAULT_DB = "~/.stockyard/stockyard.db"
DEFAULT_SNAPSHOT_EVERY_S = 15 * 60.0
REQUEST_BODIES_BYTES = 256 << 20  # STOCKYARD_REQUEST_BODIES_MB: request bodies in memory at once (server.py)
UPLOADS_BYTES = 2048 << 20  # STOCKYARD_UPLOADS_MB: upload bytes spooled on disk at once (server.py)
WRITER_QUEUE_BYTES = 64 << 20  # STOCKYARD_WRITER_QUEUE_MB: bodies the queued traces may hold (store/writer.py)
ENCRYPTION_KEY_VAR = "STOCKYARD_ENCRYPTION_KEY"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the server needs to know at start, resolved once."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    db_path: Path = Path(DEFAULT_DB).expanduser()
    db_url: PostgresURL | None = None  # a postgresql:// --db: the PostgreSQL store (db_path unused)
    admin_key: str | None = None
    metrics_key: str | None = None  # a bearer token /metrics requires (None: it answers anyone)
    encryption_key: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    max_upload_bytes: int = 512 * 1024 * 1024  # a multipart upload (audio, images, files), spooled to disk
    batch_poll_s: float = 600.0  # how often unbilled batches are looked at (0: only when their owner looks)
    store_bodies: bool = True
    body_cap_bytes: int = 256 * 1024
    idle_timeout_s: float = 30.0
    request_read_timeout_s: float = 30.0
    upload_timeout_s: float = 3600.0  # a whole multipart upload, however steadily it arrives
    upstream_connect_timeout_s: float = 10.0
    upstream_read_timeout_s: float = 600.0
    shutdown_grace_s: float = 20.0
    writer_queue_size: int = 10_000
    writer_queue_bytes: int = WRITER_QUEUE_BYTES  # bodies the queued traces may hold (store/writer.py)
    request_bodies_bytes: int = REQUEST_BODIES_BYTES  # request bodies in memory at once, in all (server.py)
    uploads_bytes: int = UPLOADS_BYTES  # uploads spooled on disk at once, in all (server.py)
    log_requests: bool = True
    cors_origin: str | None = None
    default_max_tokens: int = 4096  # output assumed when a request sets no max_tokens
    budget_warn_percent: tuple[int, ...] = (80,)
    snapshot_path: Path | None = None
    snapshot_every_s: float = DEFAULT_SNAPSHOT_EVERY_S
    retention_bodies_s: float | None = None  # delete stored bodies older than this
    retention_traces_s: float | None = None  # delete traces older than this (rollups stay)
    retention_responses_s: float | None = 30 * 86400.0  # stored Responses API responses (None: keep)
    bodies_max_bytes: int | None = None  # delete the oldest bodies beyond this total
    models_refresh_s: float = 300.0  # /v1/models: provider lists older than this are refreshed
    config_poll_s: float = 0.5  # how often to look for configuration changes (PostgreSQL: also told at once)
    public_hosts: tuple[str, ...] = ()  # Host names served beyond loopback ("*": any)
    trusted_proxies: tuple[Network, ...] = ()  # load balancers whose X-Forwarded-For is believed
    max_connections: int | None = None  # concurrent client connections; None: sized to the machine
    max_connections_per_client: int | None = None  # of them from one sender; None: a quarter of the whole
    websocket_max_connections: int = 64  # Responses WebSocket connections open at once (each holds two threads)
    websocket_idle_timeout_s: float = 300.0  # a WebSocket with no frame from its client and no turn in flight
    websocket_lifetime_s: float = 3600.0  # a WebSocket connection in all (OpenAI's: 60 minutes)
    websocket_ping_interval_s: float = 30.0  # a ping after this long with no frame sent; 0: never
    max_results_readers: int = 8  # message batch results read at once (each may hold a 16 MiB line); a key: a quarter
    busy_timeout_ms: int = 10_000  # how long a database statement waits for a lock another session holds (both stores)
    pg_connections: int = 20  # PostgreSQL: read connections a server keeps open at most (store/pgpool.py)
    otlp_endpoint: str | None = None  # OpenTelemetry collector base URL (spans go to {it}/v1/traces)
    otlp_headers: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)  # secrets
    otlp_content: bool = False  # export prompt and completion text (after redaction)
    otlp_metrics_interval_s: float = 60.0  # GenAI metrics to {endpoint}/v1/metrics this often; 0: not sent
    otlp_metrics_series: int = 2000  # attribute sets an OTLP metric keeps; beyond: its overflow series
    metrics_top_keys: int = 20  # /metrics: key names with series of their own; the rest are "other"
    cpu_pin: str = "auto"  # keep each server process on one CPU (stockyard.cpupin), or "off"
    workers: int = 1  # server processes sharing the listening socket (stockyard.workers)

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can reach the listen address (parsed, never a string prefix)."""
        return is_loopback(self.host)

    @property
    def database(self) -> Path | PostgresURL:
        """The database in use: the SQLite file, or the PostgreSQL URL (prints masked)."""
        return self.db_url or self.db_path


def exposure_problem(settings: Settings) -> str | None:
    """Why the server must not listen where ``settings`` say, or None (serve and doctor ask)."""
    if settings.is_loopback or settings.admin_key:
        return None
    return (
        f"refusing to listen on {settings.host} without STOCKYARD_ADMIN_KEY: a server other "
        "machines can reach needs an admin key; set STOCKYARD_ADMIN_KEY, or use --host 127.0.0.1"
    )


MIN_ADMIN_KEY_CHARS = 16


def admin_key_problem(settings: Settings) -> str | None:
    """Why the admin key (or the metrics key) is too weak to start with, or None (a short bearer
    token is guessable)."""
    for name, key in (("STOCKYARD_ADMIN_KEY", settings.admin_key), ("STOCKYARD_METRICS_KEY", settings.metrics_key)):
        if key is not None and len(key) < MIN_ADMIN_KEY_CHARS:
            return (
                f"{name} is {len(key)} characters; it must be at least {MIN_ADMIN_KEY_CHARS} "
                "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
    return None


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
        raise ValueError(
            f"STOCKYARD_BUDGET_WARN_PERCENT must be whole percents like 80 or 80,95, got {value!r}"
        ) from None
    if not all(0 < p <= 100 for p in found):
        raise ValueError(f"STOCKYARD_BUDGET_WARN_PERCENT values must be between 1 and 100, got {value!r}")
    return found


def _cpu_pin(value: str | None) -> str:
    text = (value or "auto").strip().lower()
    if text not in ("auto", "off"):
        raise ValueError(f"STOCKYARD_CPU_PIN must be auto or off, got {value!r}")
    return text


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


def parse_duration(text: str, name: str = "duration") -> float:
    """Seconds from ``30s``, ``15m``, ``1h``, ``7d``, ``2w`` or a plain number of seconds."""
    match = _DURATION.match(str(text).lower())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{name} must be a positive duration like 30s, 15m, 1h or 7d, got {text!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _env_duration(env: Mapping[str, str], name: str) -> float | None:
    value = env.get(name)
    return parse_duration(value, name) if value else None


def _env_duration_or_off(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration, or 0 for ``off`` / ``0`` (the thing it paces does not run by itself)."""
    value = (env.get(name) or "").strip().lower()
    if value in ("0", "off"):
        return 0.0
    return parse_duration(value, name) if value else default


def _env_megabytes(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if not value:
        return None
    try:
        mb = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of megabytes, got {value!r}") from None
    if mb <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return int(mb * 1024 * 1024)


def encryption_secret(env: Mapping[str, str] | None = None) -> str | None:
    """``STOCKYARD_ENCRYPTION_KEY`` (None when unset or empty): keys the audit chain and opens
    the vault; never stored."""
    env = os.environ if env is None else env
    return env.get(ENCRYPTION_KEY_VAR) or None


def resolve_db_path(flag: str | None, env: Mapping[str, str]) -> Path:
    """The database path from ``--db``, then ``STOCKYARD_DB``, then the default."""
    raw = flag or env.get("STOCKYARD_DB") or DEFAULT_DB
    return Path(raw).expanduser()


def resolve_database(flag: str | None, env: Mapping[str, str]) -> Path | PostgresURL:
    """Like :func:`resolve_db_path`, but a ``postgresql://`` URL selects PostgreSQL."""
    raw = flag or env.get("STOCKYARD_DB") or DEFAULT_DB
    return parse_postgres(raw, env) if is_url(raw) else Path(raw).expanduser()


def load(flags: Mapping[str, object] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from parsed flags (None values ignored) and the environment."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    port_text = flags.get("port", env.get("STOCKYARD_PORT") or DEFAULT_PORT)
    try:
        port = int(str(port_text))
    except ValueError:
        raise ValueError(f"port must be a number, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port}")
    snapshot = flags.get("snapshot", env.get("STOCKYARD_SNAPSHOT") or None)
    every = flags.get("snapshot_every", env.get("STOCKYARD_SNAPSHOT_EVERY") or None)
    if every and not snapshot:
        raise ValueError("--snapshot-every (STOCKYARD_SNAPSHOT_EVERY) needs --snapshot PATH (STOCKYARD_SNAPSHOT)")
    database = resolve_database(flags.get("db"), env)  # type: ignore[arg-type]
    if snapshot and isinstance(database, PostgresURL):
        raise ValueError(
            "--snapshot (STOCKYARD_SNAPSHOT) copies an SQLite database file; on PostgreSQL schedule "
            "`stockyard backup DEST` instead (a self-contained SQLite file, safe while the servers run)"
        )
    if snapshot and isinstance(database, Path) and _same_file(Path(str(snapshot)).expanduser(), database):
        raise ValueError(
            f"--snapshot (STOCKYARD_SNAPSHOT) {snapshot} is the database (or one of its files): choose another path"
        )
    return Settings(
        host=str(flags.get("host", env.get("STOCKYARD_HOST") or DEFAULT_HOST)),
        port=port,
        db_path=database if isinstance(database, Path) else Settings.db_path,
        db_url=database if isinstance(database, PostgresURL) else None,
        admin_key=env.get("STOCKYARD_ADMIN_KEY") or None,
        metrics_key=env.get("STOCKYARD_METRICS_KEY") or None,
        encryption_key=encryption_secret(env),
        max_body_bytes=_positive_int(env.get("STOCKYARD_MAX_BODY_BYTES"), "STOCKYARD_MAX_BODY_BYTES", 32 * 1024 * 1024),
        max_upload_bytes=_positive_int(
            env.get("STOCKYARD_MAX_UPLOAD_BYTES"), "STOCKYARD_MAX_UPLOAD_BYTES", 512 * 1024 * 1024
        ),
        batch_poll_s=_env_duration_or_off(env, "STOCKYARD_BATCH_POLL", 600.0),
        store_bodies=_env_bool(env.get("STOCKYARD_STORE_BODIES"), True),
        body_cap_bytes=_positive_int(env.get("STOCKYARD_BODY_CAP_BYTES"), "STOCKYARD_BODY_CAP_BYTES", 256 * 1024),
        idle_timeout_s=_env_duration(env, "STOCKYARD_IDLE_TIMEOUT") or 30.0,
        request_read_timeout_s=_env_duration(env, "STOCKYARD_REQUEST_READ_TIMEOUT") or 30.0,
        upload_timeout_s=_env_duration(env, "STOCKYARD_UPLOAD_TIMEOUT") or 3600.0,
        shutdown_grace_s=_env_duration(env, "STOCKYARD_SHUTDOWN_GRACE") or 20.0,
        upstream_connect_timeout_s=_env_duration(env, "STOCKYARD_UPSTREAM_CONNECT_TIMEOUT") or 10.0,
        upstream_read_timeout_s=_env_duration(env, "STOCKYARD_UPSTREAM_TIMEOUT") or 600.0,
        log_requests=_env_bool(env.get("STOCKYARD_LOG_REQUESTS"), True),
        cors_origin=env.get("STOCKYARD_CORS_ORIGIN") or None,
        default_max_tokens=_positive_int(env.get("STOCKYARD_DEFAULT_MAX_TOKENS"), "STOCKYARD_DEFAULT_MAX_TOKENS", 4096),
        budget_warn_percent=_percents(env.get("STOCKYARD_BUDGET_WARN_PERCENT")),
        snapshot_path=Path(str(snapshot)).expanduser() if snapshot else None,
        snapshot_every_s=parse_duration(str(every), "--snapshot-every") if every else DEFAULT_SNAPSHOT_EVERY_S,
        retention_bodies_s=_env_duration(env, "STOCKYARD_RETENTION_BODIES"),
        retention_traces_s=_env_duration(env, "STOCKYARD_RETENTION_TRACES"),
        retention_responses_s=_env_duration_or_off(env, "STOCKYARD_RETENTION_RESPONSES", 30 * 86400.0) or None,
        bodies_max_bytes=_env_megabytes(env, "STOCKYARD_BODIES_MAX_MB"),
        writer_queue_bytes=_env_megabytes(env, "STOCKYARD_WRITER_QUEUE_MB") or WRITER_QUEUE_BYTES,
        request_bodies_bytes=_env_megabytes(env, "STOCKYARD_REQUEST_BODIES_MB") or REQUEST_BODIES_BYTES,
        uploads_bytes=_env_megabytes(env, "STOCKYARD_UPLOADS_MB") or UPLOADS_BYTES,
        models_refresh_s=_env_duration(env, "STOCKYARD_MODELS_REFRESH") or 300.0,
        config_poll_s=_env_duration(env, "STOCKYARD_CONFIG_POLL") or 0.5,
        public_hosts=parse_public_hosts(env.get("STOCKYARD_PUBLIC_HOSTS")),
        trusted_proxies=parse_trusted_proxies(env.get("STOCKYARD_TRUSTED_PROXIES")),
        max_connections=_positive_int(env.get("STOCKYARD_MAX_CONNECTIONS"), "STOCKYARD_MAX_CONNECTIONS", 0) or None,
        max_connections_per_client=_positive_int(
            env.get("STOCKYARD_MAX_CONNECTIONS_PER_CLIENT"), "STOCKYARD_MAX_CONNECTIONS_PER_CLIENT", 0
        )
        or None,
        websocket_max_connections=_positive_int(
            env.get("STOCKYARD_WEBSOCKET_MAX_CONNECTIONS"), "STOCKYARD_WEBSOCKET_MAX_CONNECTIONS", 64
        ),
        websocket_idle_timeout_s=_env_duration(env, "STOCKYARD_WEBSOCKET_IDLE_TIMEOUT") or 300.0,
        websocket_lifetime_s=_env_duration(env, "STOCKYARD_WEBSOCKET_LIFETIME") or 3600.0,
        websocket_ping_interval_s=_env_duration_or_off(env, "STOCKYARD_WEBSOCKET_PING_INTERVAL", 30.0),
        max_results_readers=_positive_int(env.get("STOCKYARD_MAX_RESULTS_READERS"), "STOCKYARD_MAX_RESULTS_READERS", 8),
        busy_timeout_ms=busy_timeout(env.get("STOCKYARD_BUSY_TIMEOUT_MS")),
        pg_connections=_positive_int(env.get("STOCKYARD_PG_CONNECTIONS"), "STOCKYARD_PG_CONNECTIONS", 20),
        otlp_endpoint=_otlp_endpoint(env.get("STOCKYARD_OTLP_ENDPOINT")),
        otlp_headers=tuple(parse_otlp_headers(env.get("STOCKYARD_OTLP_HEADERS")).items()),
        otlp_content=_env_bool(env.get("STOCKYARD_OTLP_CONTENT"), False),
        otlp_metrics_interval_s=_env_duration_or_off(env, "STOCKYARD_OTLP_METRICS_INTERVAL", 60.0),
        otlp_metrics_series=_positive_int(
            env.get("STOCKYARD_OTLP_METRICS_MAX_SERIES"), "STOCKYARD_OTLP_METRICS_MAX_SERIES", 2000
        ),
        metrics_top_keys=_positive_int(env.get("STOCKYARD_METRICS_TOP_KEYS"), "STOCKYARD_METRICS_TOP_KEYS", 20),
        cpu_pin=_cpu_pin(env.get("STOCKYARD_CPU_PIN")),
        workers=_workers(flags.get("workers", env.get("STOCKYARD_WORKERS") or "")),
    )


MAX_WORKERS = 64
# at most 15 s: whoever waits for a write gives up after 30 s (Writer.call; a kept turn's settle, a
# conversation's read), and a batch may wait behind another that waited as long; longer, a caller
# was told its write failed (an admin's 500) and it committed afterwards
BUSY_TIMEOUT_BOUNDS_MS = (100, 15_000)


def busy_timeout(value: str | None) -> int:
    """``STOCKYARD_BUSY_TIMEOUT_MS``: how long a statement waits for a lock another process or session
    holds before it fails (SQLite's ``database is locked``; PostgreSQL's ``lock_timeout``, SQLSTATE
    55P03); 100 ms to 15 s (``BUSY_TIMEOUT_BOUNDS_MS``), 10 s by default."""
    low, high = BUSY_TIMEOUT_BOUNDS_MS
    ms = _positive_int(value, "STOCKYARD_BUSY_TIMEOUT_MS", 10_000)
    if not low <= ms <= high:
        raise ValueError(f"STOCKYARD_BUSY_TIMEOUT_MS must be between {low} and {high}, got {ms}")
    return ms


def _workers(value: object) -> int:
    """``--workers`` / ``STOCKYARD_WORKERS``: 1 to MAX_WORKERS server processes (stockyard.workers)."""
    workers = _positive_int(str(value), "--workers (STOCKYARD_WORKERS)", 1)
    if workers > MAX_WORKERS:
        raise ValueError(f"--workers (STOCKYARD_WORKERS) is at most {MAX_WORKERS}, got {workers}")
    return workers


def _same_file(path: Path, database: Path) -> bool:
    """Whether ``path`` names one of the database's own files (``files.live_files``): a snapshot
    renamed over one of them would replace it under the server."""
    from .store import files  # (it reads DEFAULT_DB from here)

    return path.resolve() in files.live_files(database)


def _otlp_endpoint(value: str | None) -> str | None:
    """The collector's base URL, http(s) only (spans go to ``{it}/v1/traces``, metrics to ``{it}/v1/metrics``)."""
    if not value or not value.strip():
        return None
    url = value.strip().rstrip("/")
    if "@" in url.split("://", 1)[-1].split("/", 1)[0]:  # user:token@host: never echoed, never logged
        raise ValueError(
            "STOCKYARD_OTLP_ENDPOINT must not carry credentials (user:password@): "
            "send them as a header in STOCKYARD_OTLP_HEADERS, e.g. Authorization=Basic <base64 of user:password>"
        )
    if not re.match(r"^https?://[^/\s]+", url):
        raise ValueError(f"STOCKYARD_OTLP_ENDPOINT must be an http:// or https:// URL, got {url[:100]!r}")
    return url.removesuffix("/v1/traces").removesuffix("/v1/metrics")  # either signal's URL names the collector


def parse_otlp_headers(text: str | None) -> dict[str, str]:
    """``k=v,k2=v2`` → headers for the collector (ValueError naming the key, never the value)."""
    headers: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name) or "\n" in value or "\r" in value:
            raise ValueError(f"STOCKYARD_OTLP_HEADERS must be name=value pairs separated by commas (at {name[:40]!r})")
        headers[name] = value.strip()
    return headers

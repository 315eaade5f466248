"""Shared test fixtures: the built pyz, the mock upstream, and Stockyard server processes.

Servers are real processes of ``dist/stockyard.pyz serve`` (forked from one that imported the pyz
once, see ``clirun``) on a free port, with their own database file; their output and errors are
collected so tests can scan the log.
"""

from __future__ import annotations

import atexit
import fcntl
import io
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import wave
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import pytest

if TYPE_CHECKING:
    import anthropic as anthropic_sdk
    import openai as openai_sdk

# Keep compiled test modules (pytest's assertion rewriting) and stockyard's bytecode between runs even
# where PYTHONDONTWRITEBYTECODE is set (this sandbox sets it): without the caches every pytest
# process — each xdist worker, each phase of `make test` — rewrites and compiles all ~130 test
# modules again, ~15 s of CPU before the first test. The files go to __pycache__ (git ignores them).
sys.dont_write_bytecode = False

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import clirun  # noqa: E402
from mock_upstream import MockUpstream  # noqa: E402

OPENAI_KEY = "sk-test-openai-0123456789abcdefSECRET"


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy (an external event), or fail."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def admitted_once_billed(server: "ServerProcess", batch_id: str, call: Callable[[], Any], refused: type) -> Any:
    """``call``'s answer once the batch is billed. The bill is written first and the budget ledger
    learns it after (on PostgreSQL a statement later), so a call right then may still be refused
    with ``refused`` (the SDK's RateLimitError): it is made again until admitted."""
    wait_for(
        lambda: server.db_rows("SELECT billed FROM owned_objects WHERE id = ?", (batch_id,))[0]["billed"] == 1,
        timeout=30,
        what="the batch billed",
    )

    def admitted() -> Any:
        try:
            return call()
        except refused:
            return None

    return wait_for(admitted, timeout=10, what="the call admitted once the bill reached the ledger")


def run_folder(tmp_path_factory) -> Path:
    """The temp folder of this test run, shared by all its pytest-xdist workers (each worker's
    own base folder is a child of it); without xdist, the session's base folder."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def pyz_path(tmp_path_factory) -> Path:
    """Build stockyard.pyz once per test run from the working tree.

    Into a private folder: a pyz replaced under a running process breaks its later imports.
    Under xdist the first worker builds it and the others wait on a lock and reuse it: one
    build, and no two builds downloading the same wheel into build/wheels/ at once.
    """
    folder = run_folder(tmp_path_factory) / "stockyard-pyz"
    folder.mkdir(exist_ok=True)
    out = folder / "stockyard.pyz"
    with open(folder / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not out.exists():  # build_zipapp writes a temp file and renames it: exists means whole
            subprocess.run(
                [sys.executable, str(ROOT / "build_zipapp.py"), "--out", str(out)], check=True, capture_output=True
            )
    return out


@pytest.fixture(scope="session")
def cache_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL server for this worker (tests/pgcluster.py), started on first use
    and stopped at the end of the session, failures included."""
    from pgcluster import Cluster

    cluster = Cluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """The URL of a fresh, empty PostgreSQL database of its own for this test."""
    return pg_cluster.database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """A fresh, empty database of each kind as a store backend: a test using it runs once per store."""
    from stockyard.dburl import parse_postgres
    from stockyard.store.backends import PostgresBackend, SqliteBackend

    if request.param == "sqlite":
        return SqliteBackend(tmp_path / "stockyard.db")
    return PostgresBackend(parse_postgres(request.getfixturevalue("pg_url"), {}))


@pytest.fixture(params=["sqlite", "postgresql in en_US-like order"])
def collated_conn(request, tmp_path):
    """A migrated connection on each store, PostgreSQL's database ordering text by ICU ('und',
    'a-x' before 'B-x'), not by bytes as SQLite does: for tests of what lists in which order."""
    from stockyard.dburl import parse_postgres
    from stockyard.store import db
    from stockyard.store.backends import PostgresBackend

    if request.param == "sqlite":
        conn = db.connect(tmp_path / "collated.db")
    else:
        url = request.getfixturevalue("pg_cluster").database(icu_locale="und")
        conn = PostgresBackend(parse_postgres(url, {})).connect()
    db.migrate(conn)
    yield conn
    conn.close()


# STOCKYARD_TEST_STORE=postgresql runs the server tests on PostgreSQL: each database file a test
# names stands for a fresh PostgreSQL database of its own (one throwaway server per worker).
TEST_STORE = os.environ.get("STOCKYARD_TEST_STORE", "sqlite")
_stand_ins: dict[str, str] = {}
_stand_in_cluster: list = []


def database_arg(db: Path | str) -> str:
    """What ``--db`` gets for a test's database: the path, or its PostgreSQL stand-in."""
    if TEST_STORE != "postgresql" or str(db).startswith("postgresql://"):
        return str(db)
    if not _stand_in_cluster:
        from pgcluster import Cluster

        _stand_in_cluster.append(Cluster().start())
        atexit.register(_stand_in_cluster[0].stop)
    if str(db) not in _stand_ins:
        _stand_ins[str(db)] = _stand_in_cluster[0].database()
    return _stand_ins[str(db)]


# The slowest test files, slowest first (their seconds on three workers, 2026-12-07 23:40: 86 down to 9;
# test_review42_errors.py is mostly idle: SDK retry back-offs and 1 s upstream timeouts).
# `make test` starts them first (with --no-loadscope-reorder, pytest-xdist hands out files in the
# order collected; by default it hands out those with the most tests first), so no long file starts
# late and runs alone at the end of a phase. To refresh: run the parallel phase with --junitxml and
# sum each file's test times.
SLOW_FIRST = (
    "test_review42_errors.py",
    "test_workers.py",
    "test_review28.py",
    "test_websocket_sessions.py",
    "test_review28_bounds.py",
    "test_attack_review16.py",
    "test_pdf_counter.py",
    "test_reliability.py",
    "test_otel.py",
    "test_attack_data33.py",
    "test_review41_streams.py",
    "test_webhooks_stop.py",
    "test_responses_websocket.py",
    "test_review44_race.py",
    "test_pyz.py",
    "test_review41_change.py",
    "test_backup.py",
    "test_attack_review7.py",
    "test_upgrades.py",
    "test_console_browser.py",
    "test_deployments.py",
    "test_attack_review29.py",
    "test_webhooks.py",
    "test_realtime.py",
    "test_reports.py",
    "test_review30.py",
    "test_sdk_helpers38.py",
    "test_config_file.py",
    "test_memory_bounds.py",
    "test_connect_cut.py",
    "test_shutdown.py",
    "test_batch_images.py",
    "test_unclean_billing.py",
    "test_attack_review27.py",
    "test_budget_durable.py",
)


def pytest_collection_modifyitems(config, items):
    """The files of :data:`SLOW_FIRST` first, in its order; the rest as collected (a stable sort:
    each file's tests stay together and in their order)."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))


def pytest_sessionfinish(session, exitstatus):
    for cluster in _stand_in_cluster:
        cluster.stop()


def open_database(db: Path | str) -> Any:
    """A connection to a test's database, whichever store it is on (sqlite3 API, rows by name)."""
    arg = database_arg(db)
    if arg.startswith("postgresql://"):
        from stockyard.dburl import parse_postgres
        from stockyard.store.backends import backend_for

        return backend_for(parse_postgres(arg, {})).connect()
    conn = sqlite3.connect(arg)
    conn.row_factory = sqlite3.Row
    return conn


def hold_database(db: Path | str) -> Callable[[], None]:
    """Another session takes the write lock of a test's database until the returned call lets it go:
    on SQLite ``BEGIN EXCLUSIVE`` on the file, on PostgreSQL the advisory write lock every writer
    queues on (``BEGIN IMMEDIATE``, store/pg.py). Either way the server's writes wait out its busy
    timeout (PostgreSQL's ``lock_timeout``) and fail."""
    conn = open_database(db)
    if isinstance(conn, sqlite3.Connection):
        conn.isolation_level = None
        conn.execute("BEGIN EXCLUSIVE")
    else:
        conn.execute("BEGIN IMMEDIATE")

    def release() -> None:
        conn.execute("ROLLBACK")
        conn.close()

    return release


# What a write refused because another session held the database past the busy timeout says, by store.
HELD_SAYS = {"sqlite": "database is locked", "postgresql": "canceling statement due to lock timeout"}[TEST_STORE]


def stored_values(db: Path | str) -> list[tuple[str, bytes]]:
    """Every value in every table of a test's database, whichever store, as bytes named by table;
    compressed blobs (trace bodies) decompressed too: for scans of "no secret stored in clear"."""
    conn = open_database(db)
    try:
        if isinstance(conn, sqlite3.Connection):
            sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE 'CREATE VIRTUAL%'"
        else:
            sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        tables = [row[0] for row in conn.execute(sql).fetchall()]
        found: list[tuple[str, bytes]] = []
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"').fetchall():
                found += [(table, data) for value in row for data in _as_bytes(value)]
        return found
    finally:
        conn.close()


def _as_bytes(value: Any) -> list[bytes]:
    """A stored value as the bytes a scan looks at: a blob also decompressed where it is zlib."""
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return [raw, zlib.decompress(raw)]
        except zlib.error:
            return [raw]
    return [str(value).encode()]


_tls: list[ssl.SSLContext] = []


def shared_tls() -> ssl.SSLContext:
    """One TLS context for the SDK clients the tests make, with the SDKs' own defaults otherwise
    (``DefaultHttpxClient``): each client made its own, loading the CA bundle again — ~23 ms of CPU
    a client, some thousands of clients a run (about a tenth of the suite's CPU). The servers are
    plain HTTP: the context is never used to connect."""
    if not _tls:
        _tls.append(ssl.create_default_context())
    return _tls[0]


class ServerProcess:
    """A running ``stockyard.pyz serve`` with its own database and collected log.

    It is forked from a process that imported the pyz once (``clirun.spawn``); ``spawned=True``
    runs ``python3 stockyard.pyz serve`` itself, for the tests of what a real start does."""

    def __init__(
        self,
        pyz: Path,
        db: Path,
        env: dict[str, str],
        args: list[str] | None = None,
        spawned: bool = False,
        open_files: int | None = None,
    ) -> None:
        self.pyz, self.db, self.env = pyz, db, env
        self.args = args or []
        self.spawned = spawned or open_files is not None
        self.open_files = open_files  # the process's open-file limit, soft and hard (spawned)
        self.keys: dict[str, str] = {}  # client keys' secrets by name, as a test module made them
        self.log_lines: list[str] = []
        self.proc: subprocess.Popen | clirun.Forked | None = None
        self.port = 0
        self._banner = threading.Event()

    def start(self, timeout: float = 20.0) -> "ServerProcess":
        args = ["serve", "--port", "0", "--db", database_arg(self.db), *self.args]
        if self.spawned:
            self.proc = subprocess.Popen(
                [sys.executable, str(self.pyz), *args],
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                preexec_fn=self._limit_open_files if self.open_files else None,
            )
        else:
            self.proc = clirun.spawn(self.pyz, args, self.env)
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._banner.wait(timeout):
            self.stop()
            raise AssertionError("server did not start:\n" + self.log)
        if not self.port:
            raise AssertionError("server exited at start:\n" + self.log)
        return self

    def _limit_open_files(self) -> None:
        """In the child before it runs: its open-file limit (a hard one it cannot lift)."""
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def _read_log(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.log_lines.append(line)
            if "listening on http://" in line and not self.port:
                self.port = int(line.split("listening on http://")[1].split()[0].rsplit(":", 1)[1])
                self._banner.set()
        self._banner.set()

    @property
    def log(self) -> str:
        return "".join(self.log_lines)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """The server process's CPU time so far (user and system, from /proc): what a request cost
        it, steadier than a wall clock on a machine other work shares."""
        assert self.proc is not None
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def request(
        self, method: str, path: str, body: Any = None, headers: dict | None = None, raw: bytes | None = None
    ) -> tuple[int, dict, bytes]:
        """One HTTP request to the server; returns (status, headers, body) for any status."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    def secret(self, key: str) -> str:
        """``key``'s secret: a name in ``self.keys``, or else ``key`` itself (a secret, or any
        string for a server that has no client keys). A name the module did not make is a
        KeyError, not a wrong secret sent (a test expecting a 401 would pass on a typo)."""
        if key in self.keys or not self.keys or key.startswith("sk-"):
            return self.keys.get(key, key)
        raise KeyError(f"no client key named {key!r} in server.keys ({sorted(self.keys)})")

    def auth(self, key: str) -> dict[str, str]:
        """The Authorization header that sends ``key`` (a name in ``self.keys``, or a secret)."""
        return {"Authorization": f"Bearer {self.secret(key)}"}

    def openai(self, key: str, max_retries: int = 0, **options: Any) -> openai_sdk.OpenAI:
        """The official OpenAI client for this server's ``/v1`` with ``key`` (a name in ``self.keys``,
        or a secret). No retries unless asked: a retry would hide the answer a test checks."""
        import openai  # here: every test imports conftest, and a raw-HTTP test file need not load the SDKs

        options.setdefault("http_client", openai.DefaultHttpxClient(verify=shared_tls()))
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.secret(key), max_retries=max_retries, **options)

    def anthropic(self, key: str, max_retries: int = 0, **options: Any) -> anthropic_sdk.Anthropic:
        """The official Anthropic client for this server (its paths carry their own ``/v1``), as ``openai``."""
        import anthropic

        options.setdefault("http_client", anthropic.DefaultHttpxClient(verify=shared_tls()))
        return anthropic.Anthropic(base_url=self.url, api_key=self.secret(key), max_retries=max_retries, **options)

    def metric(self, name: str) -> float:
        """The value of the unlabelled metric ``stockyard_<name>`` in /metrics now."""
        status, _, text = self.request("GET", "/metrics")
        assert status == 200
        found = re.search(rb"^stockyard_%s (\S+)$" % name.encode(), text, re.M)
        assert found, name
        return float(found.group(1))

    def db_rows(self, sql: str, args: tuple = ()) -> list[dict]:
        conn = open_database(self.db)
        try:
            return [dict(r) for r in conn.execute(sql, args)]
        finally:
            conn.close()

    def db_write(self, sql: str, args: tuple = ()) -> None:
        """One statement committed on the server's database, in a write transaction on either store."""
        conn = open_database(self.db)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql, args)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def trace(self, trace_id: str, timeout: float = 10.0) -> dict:
        """The stored trace with this id, waiting for the writer to commit it."""
        rows = wait_for(
            lambda: self.db_rows("SELECT * FROM traces WHERE id = ?", (trace_id,)), timeout, f"trace {trace_id}"
        )
        return rows[0]

    def cli(self, *args: str, input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        return clirun.run(self.pyz, [*args, "--db", database_arg(self.db)], {**self.env, **(env or {})}, input)

    def create_keys(self, specs: dict[str, list[str]]) -> dict[str, str]:
        """``keys create --name NAME *ARGS`` for each of ``specs``: each key's secret by name."""
        made = {name: self.cli("keys", "create", "--name", name, *extra) for name, extra in specs.items()}
        assert all(m.returncode == 0 for m in made.values()), [m.stderr for m in made.values()]
        running = self.proc is not None and self.proc.poll() is None
        if running and made:  # a running server reads CLI changes within ~0.5 s: until then it is open
            wait_for(self.requires_keys, what="the server requiring the client keys made by the CLI")
        return {name: m.stdout.strip() for name, m in made.items()}

    def requires_keys(self) -> bool:
        """Whether the server refuses an unknown client key (it has read a key the CLI made): before,
        in open mode, any key is served as no key, and a test of one key's objects would pass or
        fail by the race (another key's request served as keyless)."""
        status, _, _ = self.request("GET", "/v1/models", headers={"Authorization": "Bearer sk-sy-no-such-key"})
        return status == 401


def leave_stream(server: "ServerProcess", path: str, body: dict, seen: bytes, key: str | None = None) -> str:
    """POST ``body`` to ``path`` over a raw socket, read the streamed answer until ``seen`` arrived,
    then close the socket abruptly (a reset: the server's next write to it fails at once); the
    trace id. ``key``: the client key to send, if any."""
    payload = json.dumps(body).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    client = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        client.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        received = b""
        while seen not in received:
            chunk = client.recv(1 << 20)
            assert chunk, received[-300:]
            received += chunk
    finally:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
    head = received.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")
    return next(line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("x-stockyard-trace-id:"))


def pcm_wav(seconds: int, rate: int = 16_000, width: int = 2) -> bytes:
    """A mono PCM WAV of ``seconds`` (``width`` bytes a sample; written by the standard library's ``wave``)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(os.urandom(seconds * rate * width))
    return out.getvalue()


def base_env(cache_home: Path) -> dict[str, str]:
    """A clean environment: no provider variables from the developer's shell leak in."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")}
    # STOCKYARD_PG_CONNECTIONS=1 runs the suites' servers with a pool of one read connection:
    # a path that holds a transaction and waits for another connection shows as a 503 there.
    keep.update({k: v for k, v in os.environ.items() if k == "STOCKYARD_PG_CONNECTIONS"})
    return {**keep, "XDG_CACHE_HOME": str(cache_home), "PYTHONUNBUFFERED": "1"}


def mock_env(cache_home: Path, mock: MockUpstream, **extra: str) -> dict[str, str]:
    """The environment of a server whose OpenAI provider is the mock: ``base_env``, OPENAI_KEY and the
    mock's ``/v1`` URL, then ``extra`` (other providers, STOCKYARD_ settings; it may override these)."""
    return {**base_env(cache_home), "OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": mock.url + "/v1", **extra}


@contextmanager
def served(
    pyz_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    env: dict[str, str],
    keys: dict[str, list[str]] | None = None,
    cli: Iterable[Sequence[str]] = (),
    never_logged: Iterable[str] = (),
    before_start: Callable[[ServerProcess], object] | None = None,
) -> Iterator[ServerProcess]:
    """A test file's module-scoped server, one way for all: its own database in a folder ``name``,
    the ``cli`` commands (prices, modules) run and client ``keys`` made before the start (they are
    in ``server.keys``: keys are required from the first request), then ``before_start`` (a command
    reading a secret from stdin, say), the started server yielded.
    It is stopped on the way out, also after a failed setup; then its log must show no traceback
    nor any of ``never_logged`` (the secrets it was given)."""
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp(name) / "stockyard.db", env)
    for args in cli:
        done = srv.cli(*args)
        assert done.returncode == 0, done.stderr
    if keys:
        srv.keys = srv.create_keys(keys)
    if before_start:
        before_start(srv)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
    assert "Traceback" not in srv.log
    for secret in never_logged:
        assert secret not in srv.log


@pytest.fixture(scope="session")
def mock() -> MockUpstream:
    with MockUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def openai_server(pyz_path, cache_home, mock, tmp_path_factory) -> Iterator[ServerProcess]:
    """A server routing to the mock as the OpenAI provider (module-scoped: started once)."""
    with served(pyz_path, tmp_path_factory, "srv", mock_env(cache_home, mock)) as server:
        yield server

"""Reliability under faults: a module hook that raises, a configuration watcher that
fails, a client that leaves while the provider thinks, two servers on one database, and the
CLI on a fresh install.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time

import clirun
import pytest
from conftest import OPENAI_KEY, TEST_STORE, ServerProcess, base_env, mock_env, open_database, served, wait_for
from mock_upstream import Reply

from stockyard import config
from stockyard.app import App
from stockyard.budgets import budgets_for
from stockyard.chain import Chain, HookFailures
from stockyard.context import RequestContext
from stockyard.errors import ProxyError
from stockyard.metrics import render
from stockyard.operations import keys as key_ops
from stockyard.operations import prices as price_ops

COST_UC = 480
HELLO = [{"role": "user", "content": "Say hello"}]


class Boom:
    """A module whose hooks raise: test input standing for any module with a bug."""

    def __init__(self, name: str = "boom", before: bool = False, after: bool = True) -> None:
        self.name, self._before, self._after = name, before, after

    def before(self, ctx: RequestContext) -> None:
        if self._before:
            raise KeyError("bug in before")

    def after(self, ctx: RequestContext) -> None:
        if self._after:
            raise RuntimeError("bug in after")


@pytest.fixture
def app(tmp_path):
    """An in-process App on a real database file, with a key that has a budget."""
    env = {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    settings = config.load({"db": str(tmp_path / "stockyard.db")}, env=env)
    app = App(settings, env=env)
    ops = app.ops("test")
    price_ops.set_price(ops, "gpt-4o-mini", {"input": "1", "output": "1"})
    _, secret = key_ops.create_key(ops, {"name": "budgeted", "budget_usd": "10", "budget_period": "day"})
    app.reload()
    app.test_key = secret
    yield app
    app.close()


def budget_request(app: App) -> RequestContext:
    ctx = RequestContext(
        "chat",
        "openai",
        "127.0.0.1",
        {"authorization": f"Bearer {app.test_key}"},
        body={"model": "gpt-4o-mini", "messages": [], "max_tokens": 10},
        model="gpt-4o-mini",
    )
    app.gate.authenticate(ctx)
    return ctx


def ledger_state(app: App, ctx: RequestContext) -> tuple[int, int]:
    (budget,) = budgets_for(ctx.key, app.project_budgets())
    return app.ledger.usage(budget, ctx.ts_ms)


def test_a_raising_after_hook_does_not_skip_the_budget_settlement(app, caplog):
    chain = Chain([app.modules.route, app.modules.get("budget"), Boom()], app.hook_failures)
    for _ in range(2):
        ctx = budget_request(app)
        chain.before(ctx)
        assert ledger_state(app, ctx)[1] > 0, "the budget module reserved the worst case"
        ctx.attempt.status, ctx.attempt.cost_uc = 200, COST_UC
        chain.after(ctx)  # Boom.after runs first (reverse order) and raises: no exception escapes
        spent, reserved = ledger_state(app, ctx)
        assert reserved == 0, "the reservation was settled"
    assert spent == 2 * COST_UC
    assert caplog.text.count("'boom': its after hook failed") == 1, "logged once, with the traceback"
    assert "RuntimeError: bug in after" in caplog.text and "Traceback" in caplog.text
    assert 'stockyard_module_errors_total{module="boom",hook="after"} 2' in render(app)


def test_a_bug_in_before_is_a_500_for_that_request_and_the_modules_that_ran_settle(app):
    chain = Chain([app.modules.route, app.modules.get("budget"), Boom(before=True, after=False)], app.hook_failures)
    ctx = budget_request(app)
    with pytest.raises(ProxyError) as refused:
        chain.before(ctx)
    assert (refused.value.status, refused.value.code) == (500, "module_error")
    assert "'boom' module failed" in refused.value.message and "bug in before" not in refused.value.message
    chain.after(ctx)
    assert ledger_state(app, ctx) == (0, 0), "the budget's reservation was released"
    assert 'stockyard_module_errors_total{module="boom",hook="before"} 1' in render(app)


def test_a_refusal_from_before_is_not_a_module_error():
    class Refuse:
        name = "refuse"

        def before(self, ctx):
            raise ProxyError(429, "slow down", code="rate_limited")

        def after(self, ctx):
            pass

    counted: list[tuple[str, str]] = []
    chain = Chain([Refuse()], HookFailures(lambda m, h: counted.append((m, h))))
    with pytest.raises(ProxyError) as refused:
        chain.before(RequestContext("chat", "openai", "127.0.0.1", {}))
    assert refused.value.status == 429 and counted == []


def test_hook_failures_log_once_per_module_and_hook_and_count_each(caplog):
    counted: list[tuple[str, str]] = []
    failures = HookFailures(lambda m, h: counted.append((m, h)))
    with caplog.at_level(logging.ERROR, "stockyard.modules"):
        for _ in range(3):
            failures.report("cache", "after", ValueError("x"))
        failures.report("cache", "before", ValueError("y"))
    assert counted == [("cache", "after")] * 3 + [("cache", "before")]
    assert len(caplog.records) == 2


# -- the configuration watcher ------------------------------------------------------------------


def chat_with(server: ServerProcess, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return server.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}, headers=headers)[
        0
    ]


def sql(db, statement: str) -> None:
    """A change made by another tool on the database file (a hand edit), as a fault to recover from."""
    conn = open_database(db)
    try:
        conn.execute("BEGIN IMMEDIATE")  # a write transaction on either store
        conn.execute(statement)
        conn.execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'config_version'")
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_the_config_watcher_survives_a_failing_reload_and_readyz_reports_it(pyz_path, cache_home, mock, tmp_path):
    env = mock_env(cache_home, mock)
    server = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        made = server.cli("keys", "create", "--name", "first")
        assert made.returncode == 0, made.stderr
        first = made.stdout.strip()
        wait_for(lambda: chat_with(server) == 401, 5, "the server to load the first key")
        assert server.request("GET", "/readyz")[0] == 200

        sql(server.db, "UPDATE client_keys SET models = '[not json'")  # every reload now raises
        status, _, body = wait_for(
            lambda: (r := server.request("GET", "/readyz"))[0] == 503 and r, 20, "readyz to report the stuck watcher"
        )
        reason = json.loads(body)["config_watcher"]
        assert "no successful pass" in reason and "JSONDecodeError" in reason, reason
        assert chat_with(server, first) == 200, "the last good configuration keeps serving"
        assert server.log.count("configuration watcher: a pass failed") == 1, "logged once, not every tick"

        sql(server.db, "UPDATE client_keys SET models = NULL")  # the operator repairs the row
        wait_for(lambda: server.request("GET", "/readyz")[0] == 200, 10, "readyz to recover")
        wait_for(lambda: "configuration watcher: working again" in server.log, 5, "the recovery log line")

        made = server.cli("keys", "create", "--name", "second")  # reloads go on after the fault
        assert made.returncode == 0, made.stderr
        wait_for(lambda: chat_with(server, made.stdout.strip()) == 200, 5, "the new key to work")
    finally:
        server.stop()


# -- one server per database ------------------------------------------------------------------------


@pytest.mark.skipif(TEST_STORE == "postgresql", reason="replicas share a PostgreSQL database by design (test_pg_serve)")
def test_a_second_server_on_the_same_database_refuses_to_start(pyz_path, cache_home, mock, tmp_path):
    env = mock_env(cache_home, mock)
    db = tmp_path / "stockyard.db"
    first = ServerProcess(pyz_path, db, env).start()
    try:
        second = subprocess.run(
            [sys.executable, str(pyz_path), "serve", "--port", "0", "--db", str(db)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode != 0
        lines = (second.stdout + second.stderr).strip().splitlines()
        assert len(lines) == 1, lines
        assert f"another Stockyard server (pid {first.proc.pid}) is already using {db}" in lines[0]

        made = first.cli("keys", "create", "--name", "while-serving")  # the CLI still works meanwhile
        assert made.returncode == 0, made.stderr
        wait_for(lambda: chat_with(first, made.stdout.strip()) == 200, 5, "the key to work")
    finally:
        first.stop(signal.SIGKILL)  # a crash: the lock file stays behind, its holder is gone
    assert (tmp_path / "stockyard.db.lock").exists()
    again = ServerProcess(pyz_path, db, env).start()
    try:
        assert chat_with(again, made.stdout.strip()) == 200
    finally:
        again.stop()


# -- the CLI on a fresh install ---------------------------------------------------------------------


def run_cli(pyz_path, cache_home, db, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    env = {**base_env(cache_home), "STOCKYARD_ENCRYPTION_KEY": "fresh-install-secret-0123456789"}
    return clirun.run(pyz_path, [*args, "--db", str(db)], env, input)


# Every command that changes configuration: (arguments, stdin, whether it succeeds on an empty database).
# Those that change something that must exist first (update, revoke, unset, clear, set-key, remove)
# still create the database, then say the thing is not there.
CHANGES = [
    (("keys", "create", "--name", "first"), None, True),
    (("keys", "update", "first", "--rpm", "5"), None, False),
    (("keys", "revoke", "first"), None, False),
    (("prices", "set", "my-model", "--input", "1", "--output", "2"), None, True),
    (("prices", "unset", "my-model"), None, False),
    (("projects", "budget", "lab", "--budget-usd", "5", "--period", "month"), None, True),
    (("projects", "budget", "lab", "--clear"), None, False),
    (("providers", "add", "local", "--kind", "openai-compatible", "--base-url", "http://127.0.0.1:9/v1"), None, True),
    (("providers", "set-key", "local", "--key-stdin"), "sk-local-provider-key-0123456789", False),
    (("providers", "remove", "local"), None, False),
    (("modules", "enable", "cache"), None, True),
    (("modules", "disable", "cache"), None, True),
    (("modules", "set", "cache", "ttl_s=60"), None, True),
    (("modules", "reset", "cache"), None, True),
]
READS = [
    ("traces",),
    ("costs",),
    ("keys", "list"),
    ("projects", "list"),
    ("projects", "budget", "lab"),
    ("prices", "list"),
    ("providers", "list"),
    ("modules", "list"),
    ("modules", "show", "cache"),
    ("audit", "list"),
    ("audit", "verify"),
    ("audit", "head"),
    ("audit", "export", "--csv"),
    ("backup", "out.db"),
    ("migrate",),
    # not configuration: these act on an existing database only
    ("reload",),
    ("audit", "note", "a note"),
    ("providers", "rotate-secret"),
]


@pytest.mark.parametrize("args, stdin, succeeds", CHANGES, ids=[" ".join(c[0]) for c in CHANGES])
def test_every_configuration_change_creates_the_database_on_a_fresh_install(
    pyz_path, cache_home, tmp_path, args, stdin, succeeds
):
    db = tmp_path / "fresh" / "stockyard.db"
    result = run_cli(pyz_path, cache_home, db, *args, input=stdin)
    assert db.exists(), result.stderr
    assert "nothing yet" not in result.stderr and "no database at" not in result.stderr, result.stderr
    if succeeds:
        assert result.returncode == 0, result.stderr
    else:  # the thing to change does not exist: said as such, about the thing, not the database
        assert result.returncode == 1 and result.stderr.startswith("stockyard: "), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("args", READS, ids=[" ".join(a) for a in READS])
def test_commands_that_only_read_say_there_is_nothing_yet(pyz_path, cache_home, tmp_path, args):
    db = tmp_path / "fresh" / "stockyard.db"
    result = run_cli(pyz_path, cache_home, db, *args)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"stockyard: nothing yet: there is no database at {db}; it is created by `stockyard serve` or by the "
        "first configuration change (e.g. `stockyard keys create`). If it lives elsewhere, pass --db or set "
        "STOCKYARD_DB"
    ]
    assert not db.exists(), "reading never creates the database"


# -- a client that leaves while the provider works --------------------------------------------------


def raw_chat(port: int, model: str = "gpt-4o-mini", stream: bool = False, version: str = "HTTP/1.1") -> bytes:
    body = json.dumps({"model": model, "messages": HELLO, **({"stream": True} if stream else {})}).encode()
    return (
        f"POST /v1/chat/completions {version}\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@pytest.fixture(scope="module")
def proxy(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock)
    with served(pyz_path, tmp_path_factory, "leave", env) as server:
        yield server


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_that_leaves_a_plain_request_has_its_answer_read_to_the_end(proxy, mock, how):
    """A whole answer is made and billed by the provider whether anyone reads it: the upstream call
    goes on after the client left, and the trace has the answer's usage (test_unclean_billing)."""
    reached, release, hung_up = threading.Event(), threading.Event(), threading.Event()
    mock.enqueue(Reply(held=release, hang_started=reached, hung_up=hung_up))
    before = proxy.metric("clients_left_waiting_total")
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(raw_chat(proxy.port, model=f"gpt-4o-mini-leave-{how}"))
    assert reached.wait(10), "the provider got the request"
    if how == "reset":
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # "close": both ways, a FIN alone (nothing unread), as a half-close looks at first
    try:
        wait_for(lambda: proxy.metric("clients_left_waiting_total") == before + 1, 10, "the departure seen")
        release.set()
        (trace,) = wait_for(
            lambda: proxy.db_rows("SELECT * FROM traces WHERE model = ?", (f"gpt-4o-mini-leave-{how}",)), 10, "trace"
        )
    finally:
        client.close()
    assert trace["outcome"] == "client_disconnected", trace
    assert "read to its end" in trace["error_message"] and not hung_up.is_set()
    assert (trace["prompt_tokens"], trace["completion_tokens"], trace["usage_estimated"]) == (12, 5, 0)
    assert proxy.request("GET", "/readyz")[0] == 200 and chat_with(proxy) == 200, "the server carries on"


def test_a_pipelined_next_request_is_not_a_departure(proxy, mock):
    """Bytes of the next request arrive while the first waits upstream: both are answered."""
    reached, hung_up = threading.Event(), threading.Event()
    mock.enqueue(Reply(hang_s=0.5, hang_started=reached, hung_up=hung_up))
    client = socket.create_connection(("127.0.0.1", proxy.port))
    try:
        client.sendall(raw_chat(proxy.port))
        assert reached.wait(10)
        client.sendall(raw_chat(proxy.port))
        client.settimeout(30)
        received = b""
        while received.count(b"HTTP/1.1 ") < 2 or not received.endswith(b"}"):
            chunk = client.recv(65536)
            assert chunk, received
            received += chunk
    finally:
        client.close()
    assert received.count(b"HTTP/1.1 200 OK") == 2 and not hung_up.is_set()


def test_a_client_that_leaves_a_stream_ends_its_upstream_request(proxy, mock):
    """A stream waiting for its first event: nothing is written yet, so only the watch can notice."""
    reached, hung_up = threading.Event(), threading.Event()
    mock.enqueue(Reply(hang_s=60, hang_started=reached, hung_up=hung_up))
    body = json.dumps({"model": "gpt-4o-mini-leave-stream", "messages": HELLO, "stream": True}).encode()
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert reached.wait(10)
    client.close()
    assert hung_up.wait(10), "the upstream connection was closed"
    (trace,) = wait_for(
        lambda: proxy.db_rows("SELECT * FROM traces WHERE model = 'gpt-4o-mini-leave-stream'"), 10, "the trace"
    )
    assert trace["outcome"] == "client_disconnected", trace


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def read_to_close(client: socket.socket, timeout: float = 30) -> bytes:
    """What the server sends until it closes the connection (each read bounded by ``timeout``)."""
    client.settimeout(timeout)
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    return received


def half_closed(proxy, mock, model: str, stream: bool, version: str) -> tuple[socket.socket, threading.Event]:
    """A request sent whole, then the client's sending side shut down (``nc -N``, HTTP/1.0 tools)
    while the provider still holds its answer: the socket and the event that releases it."""
    reached, release = threading.Event(), threading.Event()
    mock.enqueue(Reply(held=release, hang_started=reached))
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(raw_chat(proxy.port, model=model, stream=stream, version=version))
    assert reached.wait(10), "the provider got the request"
    client.shutdown(socket.SHUT_WR)
    return client, release


def released_answer(client: socket.socket, release: threading.Event) -> tuple[bytes, bytes]:
    """Let the provider answer, and read what the client gets until the server closes: head, body."""
    try:
        release.set()
        answer = read_to_close(client)
    finally:
        client.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_half_closed_http11_client_is_asked_whether_it_is_there_and_gets_its_answer(proxy, mock, stream):
    """Was: a client that sent its request and shut its sending side down (RFC 9112 §9.6: not an
    abort while the server can still write) was taken for gone: a whole answer was read and
    dropped, a stream's call ended, and the client got nothing. Now its end-of-file is checked with
    an interim ``100 Continue`` (which a client that closed both ways answers with a reset): a
    client still reading gets the 100 and then its answer, whole or streamed, traced as answered."""
    model = f"gpt-4o-mini-half-{'stream' if stream else 'whole'}"
    before = proxy.metric("clients_left_waiting_total")
    client, release = half_closed(proxy, mock, model, stream, "HTTP/1.1")
    try:
        client.settimeout(10)
        received = b""
        while len(received) < len(CONTINUE):
            chunk = client.recv(len(CONTINUE) - len(received))
            assert chunk, f"the connection closed without an answer: {received!r}"
            received += chunk
        assert received == CONTINUE, received
    finally:
        head, body = released_answer(client, release)
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    if stream:
        assert b"transfer-encoding: chunked" in head.lower() and body.endswith(b"0\r\n\r\n"), body[-300:]
        assert b"data: [DONE]" in body
    else:
        assert json.loads(body)["usage"]["completion_tokens"] == 5
    (trace,) = wait_for(lambda: proxy.db_rows("SELECT * FROM traces WHERE model = ?", (model,)), 10, "trace")
    assert (trace["outcome"], trace["status"], trace["completion_tokens"]) == ("ok", 200, 5), trace
    assert proxy.metric("clients_left_waiting_total") == before


def test_a_half_closed_http10_client_gets_its_answer_with_no_interim_response(proxy, mock):
    """HTTP/1.0 (``nc -N``, old scripts): no 1xx may go to it (RFC 9110 §15.2), so its end-of-file
    is not taken as a departure at all; the answer is written when it comes."""
    model = "gpt-4o-mini-half-http10"
    before = proxy.metric("clients_left_waiting_total")
    client, release = half_closed(proxy, mock, model, False, "HTTP/1.0")
    try:
        # the departure the watch used to count comes within milliseconds: it must not come at all
        left = wait_for_change(lambda: proxy.metric("clients_left_waiting_total"), before, 1.0)
        assert left == before, "the half-close was taken for a departure"
    finally:
        head, body = released_answer(client, release)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in head, head
    assert json.loads(body)["usage"]["completion_tokens"] == 5
    (trace,) = wait_for(lambda: proxy.db_rows("SELECT * FROM traces WHERE model = ?", (model,)), 10, "trace")
    assert trace["outcome"] == "ok", trace


def test_an_http10_client_that_resets_a_stream_ends_its_upstream_request(proxy, mock):
    """No interim response can ask an HTTP/1.0 client, but a reset still says it left: its
    stream's upstream call ends at once, as an HTTP/1.1 client's does."""
    reached, hung_up = threading.Event(), threading.Event()
    mock.enqueue(Reply(hang_s=60, hang_started=reached, hung_up=hung_up))
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(raw_chat(proxy.port, model="gpt-4o-mini-reset-http10", stream=True, version="HTTP/1.0"))
    assert reached.wait(10)
    client.shutdown(socket.SHUT_WR)  # first a half-close, watched on for a reset
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    assert hung_up.wait(10), "the upstream connection was closed"
    (trace,) = wait_for(
        lambda: proxy.db_rows("SELECT * FROM traces WHERE model = 'gpt-4o-mini-reset-http10'"), 10, "the trace"
    )
    assert trace["outcome"] == "client_disconnected", trace


def wait_for_change(read, value, within: float):
    """``read()`` once it differs from ``value``, or ``value`` after ``within`` seconds of no change."""
    deadline = time.monotonic() + within
    while (now := read()) == value and time.monotonic() < deadline:
        time.sleep(0.02)
    return now


def test_a_half_closed_http10_client_gets_its_stream_delimited_by_the_close(proxy, mock):
    """Was: an HTTP/1.0 client's stream came chunked, a framing HTTP/1.0 does not have (RFC 9112
    §6.1: no Transfer-Encoding to an HTTP/1.0 request), so ``nc -N`` or an HTTP/1.0 script read chunk
    sizes inside its events. Now its events come as they are, the end of the body being the close."""
    model = "gpt-4o-mini-half-http10-stream"
    client, release = half_closed(proxy, mock, model, True, "HTTP/1.0")
    head, body = released_answer(client, release)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in head, head
    assert b"transfer-encoding" not in head.lower(), head
    events = [e for e in body.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), body[:300]
    assert events[-1] == "data: [DONE]" and json.loads(events[0][6:])["object"] == "chat.completion.chunk"
    (trace,) = wait_for(lambda: proxy.db_rows("SELECT * FROM traces WHERE model = ?", (model,)), 10, "trace")
    assert (trace["outcome"], trace["completion_tokens"]) == ("ok", 5), trace

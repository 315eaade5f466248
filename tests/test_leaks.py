"""Leak scan: after a full session, no provider key appears anywhere Stockyard writes or answers.

The session adds providers with recognisable fake keys through the CLI and the admin API,
changes keys, sends plain and streamed requests, makes the upstream echo keys back in error
bodies, headers and stream events, lists providers, traces and the status page, and tries
bad input carrying keys. Then it scans every byte it collected — each response (status
line, headers, body), each CLI output, the server log, and every file in the database
folder (database, WAL, backups) and every value stored in the database (on SQLite or
PostgreSQL), with trace bodies also decompressed — for each key.
"""

from __future__ import annotations

import json
import secrets
import zlib
from pathlib import Path

import pytest
from conftest import TEST_STORE, ServerProcess, mock_env, open_database, served, stored_values, wait_for
from mock_upstream import Reply

ADMIN_KEY = "admin-leaktest-" + secrets.token_hex(12)
SECRET = "enc-leaktest-" + secrets.token_hex(12)
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def leak_key(label: str) -> str:
    return f"sk-leaktest-{label}-{secrets.token_hex(10)}"


KEYS = {label: leak_key(label) for label in ("env", "cli", "cli-new", "api", "api-new", "refused", "duplicate")}
KEYS["bad"] = "sk-leaktest-bad " + secrets.token_hex(8)  # invalid (a space): refused, never stored


class Session:
    """The server plus everything it said, kept for the scan."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.seen: list[tuple[str, bytes]] = []
        self.live_files: list[tuple[str, bytes]] = []  # the database folder while the server ran

    def request(self, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, bytes]:
        status, got_headers, raw = self.server.request(method, path, body, headers)
        head = "\n".join(f"{k}: {v}" for k, v in got_headers.items()).encode()
        self.seen.append((f"{method} {path} → {status}", head + b"\n\n" + raw))
        return status, raw

    def chat(self, model: str, stream: bool = False) -> tuple[int, bytes]:
        return self.request(
            "POST",
            "/v1/chat/completions",
            {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello"}]},
        )

    def cli(self, *args: str, input: str | None = None, env: dict | None = None):
        result = self.server.cli(*args, input=input, env=env)
        self.seen.append((f"cli {' '.join(args)}", (result.stdout + result.stderr).encode()))
        return result


@pytest.fixture(scope="module")
def session(pyz_path, cache_home, mock, tmp_path_factory) -> Session:
    env = mock_env(
        cache_home, mock, OPENAI_API_KEY=KEYS["env"], STOCKYARD_ADMIN_KEY=ADMIN_KEY, STOCKYARD_ENCRYPTION_KEY=SECRET
    )
    with served(pyz_path, tmp_path_factory, "leaks", env) as server:
        s = Session(server)
        run_session(s, mock)
        s.live_files = [(f"{p} (live)", p.read_bytes()) for p in files_under(server.db.parent)]
    return s


def used(mock, key: str) -> bool:
    return any(r.headers.get("authorization") == f"Bearer {key}" for r in mock.requests)


def run_session(s: Session, mock) -> None:
    base = mock.url + "/v1"
    # Providers and keys, through both doors.
    r = s.cli(
        "providers",
        "add",
        "leakcli",
        "--kind",
        "openai-compatible",
        "--base-url",
        base,
        "--models",
        "leakcli-",
        "--key-stdin",
        input=KEYS["cli"],
    )
    assert r.returncode == 0, r.stderr
    status, raw = s.request(
        "POST",
        "/api/providers",
        {
            "name": "leakapi",
            "kind": "openai-compatible",
            "base_url": base,
            "models": ["leakapi-"],
            "api_key": KEYS["api"],
        },
        AUTH,
    )
    assert status == 201, raw
    wait_for(lambda: s.chat("leakcli-m")[0] == 200 and used(mock, KEYS["cli"]), timeout=5, what="reload")
    r = s.cli("providers", "set-key", "leakcli", "--key-stdin", input=KEYS["cli-new"])
    assert r.returncode == 0, r.stderr
    status, raw = s.request("PATCH", "/api/providers/leakapi", {"api_key": KEYS["api-new"]}, AUTH)
    assert status == 200, raw
    wait_for(lambda: s.chat("leakcli-m")[0] == 200 and used(mock, KEYS["cli-new"]), timeout=5, what="new key")

    # Refused input that carries keys: never stored, never echoed.
    assert (
        s.request("POST", "/api/providers", {"name": "bad", "kind": "openai", "api_key": KEYS["bad"]}, AUTH)[0] == 400
    )
    assert (
        s.request("POST", "/api/providers", {"name": "leakapi", "kind": "openai", "api_key": KEYS["duplicate"]}, AUTH)[
            0
        ]
        == 409
    )
    r = s.cli(
        "providers",
        "add",
        "nosecret",
        "--kind",
        "openai",
        "--key-stdin",
        input=KEYS["refused"],
        env={"STOCKYARD_ENCRYPTION_KEY": ""},
    )
    assert r.returncode == 1

    # Traffic: plain, streamed, embeddings, each provider.
    for model in ("leakcli-m", "leakapi-m", "gpt-4o-mini"):
        assert s.chat(model)[0] == 200
        status, raw = s.chat(model, stream=True)
        assert status == 200 and b"[DONE]" in raw
    assert s.request("POST", "/v1/embeddings", {"model": "leakapi-embed", "input": "x"})[0] == 200
    for key in ("cli-new", "api-new", "env"):
        assert used(mock, KEYS[key]), key

    # The upstream echoes the key back: in an error body, a header, a stream error event.
    echoes = [
        (
            "leakcli-m",
            False,
            Reply(
                status=401,
                json={
                    "error": {
                        "message": f"Incorrect API key provided: {KEYS['cli-new']}. You can find your API key at "
                        f"https://platform.example/account/api-keys?key={KEYS['cli-new']}",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
            ),
        ),
        (
            "leakapi-m",
            True,
            Reply(
                status=401,
                json={
                    "error": {
                        "message": f"Incorrect API key provided: {KEYS['api-new']}",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
            ),
        ),
        ("gpt-4o-mini", False, Reply(status=403, body=f"forbidden for {KEYS['env']}".encode())),
        (
            "leakapi-m",
            False,
            Reply(
                status=429, json={"error": {"message": "slow down"}}, headers={"x-request-id": f"req-{KEYS['api-new']}"}
            ),
        ),
        ("leakcli-m", True, Reply(sse=[json.dumps({"error": {"message": f"bad key {KEYS['cli-new']}"}})])),
    ]
    for model, stream, reply in echoes:
        mock.enqueue(reply)
        status, raw = s.chat(model, stream=stream)
        assert reply.status == status, raw
    assert b"[redacted]" in s.seen[-5][1]

    # Everything an operator reads back.
    for path in ("/api/providers", "/api/status", "/api/openapi.json", "/v1/models"):
        assert s.request("GET", path, headers=AUTH)[0] == 200
    for args in (("providers", "list"), ("providers", "list", "--json"), ("traces", "--json"), ("traces",)):
        assert s.cli(*args).returncode == 0


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def trace_bodies(db: Path) -> list[bytes]:
    conn = open_database(db)
    try:
        rows = conn.execute("SELECT request, response FROM trace_bodies").fetchall()
    finally:
        conn.close()
    return [zlib.decompress(bytes(blob)) for row in rows for blob in row if blob]


def database_places(db: Path) -> list[tuple[str, bytes]]:
    """Every value stored in the database, by table, blobs also decompressed: on PostgreSQL the only
    place the database is (no file in the folder), on SQLite beside the file's own bytes."""
    return [(f"database table {table}", data) for table, data in stored_values(db)]


@pytest.mark.parametrize("label", sorted(KEYS))
def test_no_provider_key_anywhere(session, label):
    key = KEYS[label].encode()
    server = session.server
    places: list[tuple[str, bytes]] = [*session.seen, ("server log", server.log.encode())]
    places += session.live_files + [(str(p), p.read_bytes()) for p in files_under(server.db.parent)]
    places += database_places(server.db)
    leaks = [where for where, data in places if key in data]
    assert not leaks, f"key {label!r} found in: {leaks}"


def test_the_scan_looked_at_enough(session):
    """Guard the scan itself: the session really produced traces, echoes and audit entries."""
    server = session.server
    assert len(session.seen) >= 25 and "leakcli" in server.log
    assert len(trace_bodies(server.db)) >= 20
    assert any(b"[redacted]" in body for body in trace_bodies(server.db))
    actions = {r["action"] for r in server.db_rows("SELECT action FROM audit_log")}
    assert {"provider.add", "provider.set_key"} <= actions
    if TEST_STORE == "sqlite":
        assert any(where.endswith("-wal (live)") for where, _ in session.live_files)
    tables = {where for where, _ in database_places(server.db)}
    assert {"database table providers", "database table trace_bodies", "database table audit_log"} <= tables


def test_no_other_secret_anywhere(session):
    """The admin key and the encryption secret stay out as well (the admin key only went out)."""
    server = session.server
    places = [*session.seen, *session.live_files, ("server log", server.log.encode())]
    places += [(str(p), p.read_bytes()) for p in files_under(server.db.parent)]
    places += database_places(server.db)
    for secret in (ADMIN_KEY, SECRET):
        assert not [where for where, data in places if secret.encode() in data]


def test_log_records_are_scrubbed_with_their_tracebacks():
    """Whatever code logs (a message, its arguments, an exception), known keys leave as [redacted]."""
    import io
    import logging

    from stockyard.scrub import ScrubLogs

    key = leak_key("log")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(ScrubLogs(lambda text: text.replace(key, "[redacted]")))
    log = logging.getLogger("stockyard.test-leaks")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.error("upstream said %s", f"bad key {key}")
        try:
            raise ValueError(f"Invalid header value b'Bearer {key}\\n'")
        except ValueError:
            log.exception("unexpected error")
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert key not in text and text.count("[redacted]") == 2 and "ValueError" in text

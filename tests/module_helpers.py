"""Helpers for the module tests: a server with two providers on the mock, and module switches.

``openai`` and ``groq`` both point at the mock (told apart by the key in the Authorization
header the mock records); ``mistral`` points at a closed port, for connection errors.
"""

from __future__ import annotations

import http.client
import json
import zlib
from typing import Any, Iterator

import pytest
from conftest import OPENAI_KEY, ServerProcess, base_env, served

ADMIN_KEY = "admin-test-key-modules-0123456789"
GROQ_KEY = "gsk-test-groq-0123456789abcdefSECRET"
HELLO = [{"role": "user", "content": "Say hello"}]
# gpt-4o-mini: the mock reports 12 prompt and 5 completion tokens → 480 µ¢ (see test_openai_proxy).
MINI_COST_UC = 480


def provider_env(mock, **env: str) -> dict[str, str]:
    """``openai`` and ``groq`` on the mock, ``mistral`` on a closed port, the admin key, then ``env``:
    the one provider setup of the module tests, in a server (``start_server``) or in process
    (module_harness)."""
    return {
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": mock.url + "/v1",
        "GROQ_API_KEY": GROQ_KEY,
        "GROQ_BASE_URL": mock.url + "/v1",
        "MISTRAL_API_KEY": "mistral-test-key-0123456789",
        "MISTRAL_BASE_URL": "http://127.0.0.1:9/v1",
        "STOCKYARD_ADMIN_KEY": ADMIN_KEY,
        **env,
    }


def module_env(cache_home, mock, **env: str) -> dict[str, str]:
    """The environment of a module-test server: ``base_env`` and :func:`provider_env`."""
    return {**base_env(cache_home), **provider_env(mock, **env)}


def start_server(pyz_path, cache_home, mock, tmp_path_factory, name: str, **env: str) -> ServerProcess:
    environ = module_env(cache_home, mock, **env)
    return ServerProcess(pyz_path, tmp_path_factory.mktemp(name) / "stockyard.db", environ).start()


def server_fixture(name: str, never_logged: tuple[str, ...] = (), keys: dict[str, list[str]] | None = None, **env: str):
    """The module-scoped server fixture of a module test file in one line (:func:`conftest.served`
    on :func:`module_env` with ``env``): ``keys`` made before the start, and a log showing no
    traceback (nor any of ``never_logged``) when it stops."""

    @pytest.fixture(scope="module")
    def server(pyz_path, cache_home, mock, tmp_path_factory) -> Iterator[ServerProcess]:
        environ = module_env(cache_home, mock, **env)
        with served(pyz_path, tmp_path_factory, name, environ, keys, never_logged=never_logged) as srv:
            yield srv

    return server


@pytest.fixture
def fresh(server, mock):
    """Before each test on the server: every module off, the mock's scripted replies and
    recorded requests gone (a file of server tests uses it with ``pytest.mark.usefixtures``)."""
    mock.clear_replies()
    disable_all(server)
    mock.clear()
    yield
    mock.clear_replies()


def api(server: ServerProcess, method: str, path: str, body: Any = None, admin: str = ADMIN_KEY) -> tuple[int, Any]:
    """An admin API call with the admin key ``admin`` (the module tests' unless a file has its own)."""
    status, _, raw = server.request(method, path, body, headers={"Authorization": f"Bearer {admin}"})
    return status, json.loads(raw) if raw else None


_names = iter(range(1_000_000))


def new_key(server: ServerProcess, admin: str = ADMIN_KEY, **fields: Any) -> tuple[str, str]:
    """A new client key with ``fields``, made through the admin API with the admin key ``admin``: its
    (secret, name); a name of its own unless ``fields`` give one (a test finds its traces by it)."""
    fields.setdefault("name", f"key-{next(_names)}")
    status, body = api(server, "POST", "/api/keys", fields, admin)
    assert status == 201, body
    return body["key"], fields["name"]


def client_key(server: ServerProcess, admin: str = ADMIN_KEY, **fields: Any) -> str:
    """A new client key's secret (:func:`new_key`)."""
    return new_key(server, admin, **fields)[0]


TRACE_COLUMNS = ("endpoint", "model", "status", "cost_uc", "cost_status")


def key_traces(server: ServerProcess, name: str, columns: tuple[str, ...] = TRACE_COLUMNS) -> list[dict]:
    """The traces of the client key named ``name``, oldest first: their ``columns``."""
    sql = (
        f"SELECT {', '.join('t.' + column for column in columns)} FROM traces t"
        " JOIN client_keys k ON k.id = t.key_id WHERE k.name = ? ORDER BY t.ts"
    )
    return server.db_rows(sql, (name,))


def put_module(server: ServerProcess, name: str, config: dict | None = None, enabled: bool = True) -> dict:
    """Replace a module's options and switch it, through the admin API (in effect on return)."""
    status, view = api(server, "PUT", f"/api/modules/{name}", {"enabled": enabled, "config": config or {}})
    assert status == 200, view
    return view


def disable_all(server: ServerProcess) -> None:
    status, listing = api(server, "GET", "/api/modules")
    assert status == 200, listing
    for module in listing["modules"]:
        if module["enabled"] or module["set"]:
            put_module(server, module["name"], {}, enabled=False)


def chat(
    server: ServerProcess,
    model: str = "gpt-4o-mini",
    messages: list | None = None,
    headers: dict | None = None,
    **fields: Any,
) -> tuple[int, dict, bytes]:
    body = {"model": model, "messages": messages or HELLO, **fields}
    return server.request("POST", "/v1/chat/completions", body, headers=headers)


def raw_stream(server: ServerProcess, body: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A streamed request read to its end: status, headers, the de-chunked body bytes (from a
    server, or from a ``module_harness.Harness``)."""
    if not isinstance(server, ServerProcess):
        return server.stream(body, headers)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            json.dumps({**body, "stream": True}),
            {"Content-Type": "application/json", **(headers or {})},
        )
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def sse_payloads(data: bytes) -> list[str]:
    return [line[5:].strip() for line in data.decode().split("\n") if line.startswith("data:")]


def stream_text(data: bytes) -> str:
    text = ""
    for payload in sse_payloads(data):
        if payload == "[DONE]":
            continue
        chunk = json.loads(payload)
        for choice in chunk.get("choices") or []:
            text += (choice.get("delta") or {}).get("content") or ""
    return text


def providers_called(mock, since: int = 0) -> list[str]:
    """Which provider each mock request came from (by its key), oldest first."""
    names = {f"Bearer {OPENAI_KEY}": "openai", f"Bearer {GROQ_KEY}": "groq"}
    return [names.get(r.headers.get("authorization", ""), "?") for r in mock.requests[since:]]


def trace_body(server: ServerProcess, trace_id: str) -> tuple[str | None, str | None]:
    """(request, response) bodies stored for a trace, decompressed."""
    server.trace(trace_id)
    rows = server.db_rows("SELECT request, response FROM trace_bodies WHERE trace_id = ?", (trace_id,))

    def unpack(b):
        return zlib.decompress(bytes(b)).decode() if b is not None else None

    return (unpack(rows[0]["request"]), unpack(rows[0]["response"])) if rows else (None, None)


def attempts_of(server: ServerProcess, trace_id: str) -> list[dict]:
    """The failed attempts traced under a request (written with it, so wait for it first)."""
    server.trace(trace_id)
    return server.db_rows("SELECT * FROM traces WHERE parent_id = ? ORDER BY attempt", (trace_id,))

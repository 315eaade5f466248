"""The provider registry in the database: CLI and admin API, env providers, overrides, live reload.

One server runs for the whole module, with the OpenAI env provider pointing at the mock.
Providers added here point at the mock too, as openai-compatible with a model prefix, so
which provider served a request shows in the Authorization header the mock received.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time

import pytest
from conftest import OPENAI_KEY, ServerProcess, base_env, mock_env, served, wait_for

from stockyard import vault
from stockyard.operations import Operations, Refused
from stockyard.operations import providers as provider_ops
from stockyard.store import Store, db

ADMIN_KEY = "admin-" + secrets.token_hex(16)
SECRET = "enc-" + secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def fake_key(label: str) -> str:
    return f"sk-{label}-{secrets.token_hex(12)}"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN_KEY, STOCKYARD_ENCRYPTION_KEY=SECRET)
    with served(pyz_path, tmp_path_factory, "providers", env) as srv:
        yield srv


def chat(server: ServerProcess, model: str) -> tuple[int, dict]:
    status, _, body = server.request(
        "POST", "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    )
    return status, json.loads(body)


def served_with(server: ServerProcess, mock, model: str, key: str) -> bool:
    """True once a request for ``model`` reached the mock carrying ``key``."""
    status, _ = chat(server, model)
    last = mock.last("/chat/completions")
    return status == 200 and last is not None and last.headers.get("authorization") == f"Bearer {key}"


def cli_list(server: ServerProcess) -> dict[str, dict]:
    result = server.cli("providers", "list", "--json")
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}


def api_list(server: ServerProcess) -> dict[str, dict]:
    status, _, body = server.request("GET", "/api/providers", headers=AUTH)
    assert status == 200, body
    return {row["name"]: row for row in json.loads(body)["data"]}


def audit_rows(server: ServerProcess, action: str, target: str) -> list[dict]:
    rows = server.db_rows("SELECT * FROM audit_log WHERE action = ? AND target = ? ORDER BY seq", (action, target))
    for row in rows:
        row["details"] = json.loads(row["details"])
    return rows


def test_env_provider_is_listed_as_env_and_never_stored(server):
    for listing in (cli_list(server), api_list(server)):
        openai = listing["openai"]
        assert openai["source"] == "env" and openai["id"] is None
        assert openai["key"] == "…" + OPENAI_KEY[-4:] and openai["key_status"] == "ok"
        assert "gpt-" in openai["models"]
    assert server.db_rows("SELECT * FROM providers WHERE name = 'openai'") == []


def test_cli_added_provider_routes_through_the_running_server(server, mock):
    key = fake_key("cli")
    result = server.cli(
        "providers",
        "add",
        "local",
        "--kind",
        "openai-compatible",
        "--base-url",
        mock.url + "/v1",
        "--models",
        "local-",
        "--key-stdin",
        input=key + "\n",
    )
    assert result.returncode == 0, result.stderr
    assert key not in result.stdout + result.stderr and "…" + key[-4:] in result.stdout
    # Before the reload a lone-prefix miss would go to the env provider; after it, to "local".
    wait_for(lambda: served_with(server, mock, "local-model", key), timeout=5, what="reload")
    row = cli_list(server)["local"]
    assert row["source"] == "database" and row["kind"] == "openai-compatible"
    assert row["key"] == "…" + key[-4:] and row["key_status"] == "ok" and row["models"] == ["local-"]
    stored = server.db_rows("SELECT * FROM providers WHERE name = 'local'")[0]
    assert stored["key_token"].startswith("v1:") and key not in stored["key_token"]
    [entry] = audit_rows(server, "provider.add", "provider:local")
    assert entry["actor"].startswith("cli:") and entry["details"]["key_hint"] == "…" + key[-4:]

    new_key = fake_key("cli2")
    result = server.cli("providers", "set-key", "local", "--key-stdin", input=new_key)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: served_with(server, mock, "local-model", new_key), timeout=5, what="new key")
    [entry] = audit_rows(server, "provider.set_key", "provider:local")
    assert entry["details"] == {"name": "local", "key_hint": "…" + new_key[-4:]}

    result = server.cli("providers", "remove", "local")
    assert result.returncode == 0, result.stderr
    assert "local" not in cli_list(server)
    assert audit_rows(server, "provider.remove", "provider:local")
    wait_for(lambda: "local" not in api_list(server), timeout=5, what="removal")


@pytest.mark.perf
def test_reload_is_quick(server, mock):
    """CLI changes reach a running server within about a second."""
    key = fake_key("quick")
    result = server.cli(
        "providers",
        "add",
        "quick",
        "--kind",
        "openai-compatible",
        "--base-url",
        mock.url + "/v1",
        "--models",
        "quick-",
        "--key-stdin",
        input=key,
    )
    assert result.returncode == 0, result.stderr
    started = time.monotonic()
    wait_for(lambda: "quick" in api_list(server), timeout=5, what="reload")
    assert time.monotonic() - started < 1.5
    assert server.cli("providers", "remove", "quick").returncode == 0


def test_api_add_update_remove(server, mock):
    key = fake_key("api")
    status, _, body = server.request(
        "POST",
        "/api/providers",
        {
            "name": "viaapi",
            "kind": "openai-compatible",
            "base_url": mock.url + "/v1/",
            "models": ["apimodel-"],
            "api_key": key,
        },
        headers=AUTH,
    )
    assert status == 201, body
    shown = json.loads(body)
    assert key.encode() not in body
    assert shown["name"] == "viaapi" and shown["source"] == "database" and isinstance(shown["id"], int)
    assert shown["base_url"] == mock.url + "/v1" and shown["key"] == "…" + key[-4:]
    assert shown["key_status"] == "ok"
    assert served_with(server, mock, "apimodel-x", key)  # the API reloads before answering
    [entry] = audit_rows(server, "provider.add", "provider:viaapi")
    assert entry["actor"].startswith("admin-api:") and entry["details"]["key_hint"] == "…" + key[-4:]

    status, _, body = server.request(
        "PATCH", "/api/providers/viaapi", {"models": ["apimodel-", "other-"]}, headers=AUTH
    )
    assert status == 200, body
    assert json.loads(body)["models"] == ["apimodel-", "other-"]
    [entry] = audit_rows(server, "provider.update", "provider:viaapi")
    assert entry["details"] == {"name": "viaapi", "models": ["apimodel-", "other-"]}

    new_key = fake_key("api2")
    status, _, body = server.request("PUT", "/api/providers/viaapi", {"api_key": new_key}, headers=AUTH)
    assert status == 200 and new_key.encode() not in body
    assert json.loads(body)["key"] == "…" + new_key[-4:]
    assert served_with(server, mock, "other-model", new_key)
    assert audit_rows(server, "provider.set_key", "provider:viaapi")

    status, _, body = server.request("PATCH", "/api/providers/viaapi", {"api_key": None}, headers=AUTH)
    assert status == 200 and json.loads(body)["key_status"] == "none"
    assert server.db_rows("SELECT key_token, key_hint FROM providers WHERE name = 'viaapi'") == [
        {"key_token": None, "key_hint": None}
    ]

    status, _, body = server.request("DELETE", "/api/providers/viaapi", headers=AUTH)
    assert status == 200 and json.loads(body) == {"name": "viaapi", "deleted": True}
    assert "viaapi" not in api_list(server) and "viaapi" not in cli_list(server)
    assert audit_rows(server, "provider.remove", "provider:viaapi")
    status, _, body = server.request("DELETE", "/api/providers/viaapi", headers=AUTH)
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


def test_database_provider_overrides_env_by_name(server, mock):
    key = fake_key("override")
    result = server.cli(
        "providers",
        "add",
        "openai",
        "--kind",
        "openai-compatible",
        "--base-url",
        mock.url + "/v1",
        "--models",
        "gpt-",
        "--key-stdin",
        input=key,
    )
    assert result.returncode == 0, result.stderr
    wait_for(lambda: served_with(server, mock, "gpt-4o-mini", key), timeout=5, what="override")
    listing = api_list(server)
    assert listing["openai"]["source"] == "database" and listing["openai"]["kind"] == "openai-compatible"
    assert [name for name in listing if name == "openai"] == ["openai"]
    assert server.cli("providers", "remove", "openai").returncode == 0
    wait_for(lambda: served_with(server, mock, "gpt-4o-mini", OPENAI_KEY), timeout=5, what="env again")
    assert cli_list(server)["openai"]["source"] == "env"
    # The env provider itself cannot be removed or re-keyed: it is not in the database.
    result = server.cli("providers", "remove", "openai")
    assert result.returncode == 1 and "environment" in result.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["Bad!Name", "--kind", "openai"], "provider name"),
        (["ok", "--kind", "nope"], "kind 'nope' is not valid"),
        (["ok", "--kind", "openai-compatible", "--base-url", "ftp://x"], "base URL"),
        (["ok", "--kind", "openai-compatible", "--base-url", "http://"], "base URL"),
        (["ok", "--kind", "openai-compatible"], "needs a base URL"),
        (["ok", "--kind", "openai-compatible", "--base-url", "https://u:p@h/v1"], "credentials"),
        (["ok", "--kind", "openai", "--models", "a,,b"], "model"),
    ],
)
def test_cli_validation_errors_are_one_line(server, args, words):
    result = server.cli("providers", "add", *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stockyard: ") and words in lines[0], result.stderr
    assert server.db_rows("SELECT * FROM providers WHERE name = 'ok'") == []


@pytest.mark.parametrize(
    "body, param",
    [
        ({"name": "Bad Name", "kind": "openai"}, "name"),
        ({"name": "ok", "kind": "nope"}, "kind"),
        ({"name": "ok", "kind": "azure"}, "base_url"),
        ({"name": "ok", "kind": "openai", "base_url": "localhost:80"}, "base_url"),
        ({"name": "ok", "kind": "openai", "base_url": "http://up.example/v1\r\nX-Injected: 1"}, "base_url"),
        ({"name": "ok", "kind": "openai", "base_url": "http://up.example/v1\n"}, "base_url"),
        ({"name": "ok", "kind": "openai", "base_url": "http://up\texample/v1"}, "base_url"),
        ({"name": "ok", "kind": "openai", "base_url": "http://up.example/v1\x00"}, "base_url"),
        ({"name": "ok", "kind": "openai", "base_url": "http://up.example/ v1"}, "base_url"),
        ({"name": "ok", "kind": "openai", "base_url": "file:///etc/passwd"}, "base_url"),
        ({"name": "ok", "kind": "openai", "base_url": "ftp://up.example/v1"}, "base_url"),
        ({"name": "ok", "kind": "openai", "models": "gpt-"}, "models"),
        ({"name": "ok", "kind": "openai", "models": [""]}, "models"),
        ({"name": "ok", "kind": "openai", "key": "sk-typo-1234567890"}, "key"),
        ({"name": "ok", "kind": "openai", "api_key": "has space"}, "api_key"),
        ({"kind": "openai"}, "name"),
    ],
)
def test_api_validation_errors(server, body, param):
    status, _, raw = server.request("POST", "/api/providers", body, headers=AUTH)
    assert status == 400, raw
    error = json.loads(raw)["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert b"sk-typo" not in raw and b"has space" not in raw
    assert server.db_rows("SELECT * FROM providers WHERE name = 'ok'") == []


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pw-SECRET-1@api.example:notaport/v1",  # unparseable: its port
        "gopher://user:pw-SECRET-1@api.example/v1",  # not http(s)
        "https://user:pw-SECRET-1@api.example/v1 x",  # a space
    ],
)
def test_a_refused_base_url_is_never_echoed_with_its_credentials(server, url):
    """A base URL refused for another reason than its credentials was repeated whole in the error (the
    admin API's answer, the CLI's message, a log line) with the password in it; its user part is masked."""
    body = {"name": "leaky", "kind": "openai", "base_url": url}
    status, _, raw = server.request("POST", "/api/providers", body, headers=AUTH)
    assert status == 400 and json.loads(raw)["error"]["param"] == "base_url", raw
    assert b"SECRET" not in raw and b"user:" not in raw, raw
    assert b"api.example" in raw, raw  # the rest of the URL still says which one


def test_api_update_refuses_control_characters_in_base_url(server):
    assert server.request("POST", "/api/providers", {"name": "crlf", "kind": "anthropic"}, headers=AUTH)[0] == 201
    status, _, raw = server.request(
        "PATCH", "/api/providers/crlf", {"base_url": "https://a.example\r\nX: y"}, headers=AUTH
    )
    assert status == 400 and json.loads(raw)["error"]["param"] == "base_url"
    assert server.db_rows("SELECT base_url FROM providers WHERE name = 'crlf'") == [
        {"base_url": "https://api.anthropic.com"}
    ]
    assert server.request("DELETE", "/api/providers/crlf", headers=AUTH)[0] == 200


@pytest.mark.parametrize(
    "name, value",
    [
        ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1\r\nX-Injected: 1"),
        ("ANTHROPIC_BASE_URL", "gopher://127.0.0.1:9"),
        ("AZURE_OPENAI_ENDPOINT", "https://x.example\x07"),
    ],
)
def test_a_bad_base_url_in_the_environment_refuses_to_start(pyz_path, cache_home, tmp_path, name, value):
    db = tmp_path / "never.db"
    env = {
        **base_env(cache_home),
        "OPENAI_API_KEY": "sk-test-0123456789",
        "ANTHROPIC_API_KEY": "sk-ant-0123456789",
        "AZURE_OPENAI_API_KEY": "az-0123456789",
        name: value,
    }
    proc = subprocess.run(
        [sys.executable, str(pyz_path), "serve", "--port", "0", "--db", str(db)],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stockyard: {name}: base URL"), proc.stderr
    assert not db.exists()


def test_api_conflict_and_unknown(server):
    body = {"name": "dup", "kind": "anthropic"}
    assert server.request("POST", "/api/providers", body, headers=AUTH)[0] == 201
    status, _, raw = server.request("POST", "/api/providers", body, headers=AUTH)
    assert status == 409 and "already exists" in json.loads(raw)["error"]["message"]
    status, _, raw = server.request("PATCH", "/api/providers/nothere", {"models": []}, headers=AUTH)
    assert status == 404
    status, _, raw = server.request("PATCH", "/api/providers/dup", {}, headers=AUTH)
    assert status == 400 and "nothing to change" in json.loads(raw)["error"]["message"]
    assert server.request("GET", "/api/providers", headers={})[0] == 401
    assert server.request("DELETE", "/api/providers/dup", headers=AUTH)[0] == 200


def test_defaults_per_kind(server):
    result = server.cli("providers", "add", "claude", "--kind", "anthropic")
    assert result.returncode == 0, result.stderr
    result = server.cli("providers", "add", "az", "--kind", "azure", "--base-url", "https://x.openai.azure.com")
    assert result.returncode == 0, result.stderr
    listing = cli_list(server)
    assert listing["claude"]["base_url"] == "https://api.anthropic.com"
    assert listing["claude"]["models"] == ["claude-"] and listing["claude"]["key_status"] == "none"
    assert listing["az"]["api_version"] and listing["az"]["models"] == []
    for name in ("claude", "az"):
        assert server.cli("providers", "remove", name).returncode == 0


def test_storing_a_key_without_the_secret_is_refused(server):
    result = server.cli(
        "providers",
        "add",
        "nosecret",
        "--kind",
        "openai",
        "--key-stdin",
        input=fake_key("nosecret"),
        env={"STOCKYARD_ENCRYPTION_KEY": ""},
    )
    assert result.returncode == 1
    assert "STOCKYARD_ENCRYPTION_KEY is not set" in result.stderr and "export" in result.stderr
    assert server.db_rows("SELECT * FROM providers WHERE name = 'nosecret'") == []


def test_storing_a_key_without_the_secret_in_process(tmp_path):
    """The API path: the same operation refuses with a 400 and changes nothing."""
    conn, _ = db.open_and_migrate(tmp_path / "s.db")
    conn.close()
    ops = Operations(Store(tmp_path / "s.db"), "test", None)
    with pytest.raises(Refused) as err:
        provider_ops.add(ops, "p", "openai", api_key=fake_key("x"))
    assert err.value.status == 400 and err.value.code == "encryption_key_not_set"
    assert err.value.message == vault.MISSING_SECRET_HELP
    assert provider_ops.add(ops, "p", "openai") > 0  # without a key it needs no secret
    with pytest.raises(Refused):
        provider_ops.update(ops, "p", api_key=fake_key("y"))
    rows = ops.store.read().execute("SELECT key_token FROM providers").fetchall()
    assert [r[0] for r in rows] == [None]


def test_openapi_lists_provider_routes(server):
    status, _, body = server.request("GET", "/api/openapi.json", headers=AUTH)
    paths = json.loads(body)["paths"]
    assert set(paths["/api/providers"]) == {"get", "post"}
    assert set(paths["/api/providers/{name}"]) == {"put", "patch", "delete"}


def test_help_mentions_every_action(server):
    result = server.cli("providers", "--help")
    for action in ("list", "add", "set-key", "remove", "rotate-secret"):
        assert action in result.stdout

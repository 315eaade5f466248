"""A NUL (U+0000) and PostgreSQL, whose ``text`` cannot hold one: an audit entry an older version
wrote to SQLite with a NUL in it moves to PostgreSQL (``stockyard migrate-store``) and its chain
still verifies there, its text read back the same (tests/test_pg_nul_move.py); and no new client or
admin text carries a NUL to the store as a 500. Runs on PostgreSQL in ``make test`` too (Makefile
PG_SUITES): the server tests then run against a PostgreSQL store."""

from __future__ import annotations

import json
import sqlite3

import clirun
import pytest
from conftest import TEST_STORE, mock_env
from module_helpers import ADMIN_KEY, api, client_key, server_fixture

from stockyard import audit, vault

SECRET = "pg-nul-test-secret-0123456789abcdef"
OLD_TARGET = "project:tea\x00m"  # a project name an older version took (no check then kept NUL out)

server = server_fixture("pgnul")


def run(pyz, *args, env: dict) -> clirun.subprocess.CompletedProcess:
    return clirun.run(pyz, list(map(str, args)), env, timeout=120)


def admin_raw(server, method: str, path: str, body: str) -> tuple[int, dict]:
    status, _, raw = server.request(method, path, raw=body.encode(), headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    return status, json.loads(raw) if raw else {}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/keys", '{"name": "a\\u0000b"}', "name"),
        ("/api/keys", '{"name": "nul-project", "project": "p\\u0000q"}', "project"),
        ("/api/keys", '{"name": "nul-models", "models": ["gpt\\u0000x"]}', "models"),
    ],
)
def test_a_key_or_project_named_with_a_nul_is_a_400_naming_its_field(server, path, body, field):
    """An admin's key name, project or model list holding a NUL: a 400 naming the field on either store
    (on PostgreSQL a model list went to the text column as it was: a 500)."""
    status, answer = admin_raw(server, "POST", path, body)
    assert status == 400, answer
    assert answer["error"]["param"] == field or field in answer["error"]["message"], answer
    status, keys = api(server, "GET", "/api/keys")
    assert status == 200 and not [k for k in keys["keys"] if "\x00" in json.dumps(k, ensure_ascii=False)]
    assert server.request("GET", "/readyz")[0] == 200


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ('{"model": "gpt-4o-mini", "user": "end\\u0000user", "messages": [{"role": "user", "content": "hi"}]}', {}),
        (
            '{"model": "gpt-4o-mini", "metadata": {"team": "a\\u0000b"}, "store": true,'
            ' "messages": [{"role": "user", "content": "hi"}]}',
            {},
        ),
        ('{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}', {"x-stockyard-tags": "t=a\x00b"}),
        ('{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}', {"x-stockyard-user": "u\x00v"}),
    ],
)
def test_an_end_user_or_tag_holding_a_nul_is_recorded_or_a_400_never_a_500(server, body, headers):
    """The end user and tags a client names (the body's ``user``, ``metadata``; the headers) reach
    the traces and their rollups: with a NUL, the request is answered and its trace kept (the NUL
    as the traces keep it), or refused with a 400 in OpenAI's shape — never a 500, and the writer
    goes on."""
    auth = {"Authorization": f"Bearer {client_key(server)}", "Content-Type": "application/json", **headers}
    status, got, raw = server.request("POST", "/v1/chat/completions", raw=body.encode(), headers=auth)
    assert status in (200, 400), raw
    if status == 400:
        assert json.loads(raw)["error"]["message"]
    if "x-stockyard-trace-id" in got or status == 200:  # a head refused before routing has no trace
        trace = server.trace(got["x-stockyard-trace-id"])
        assert trace["status"] == status
        assert "\x00" not in json.dumps([trace.get("end_user"), trace.get("tags")], ensure_ascii=False)
    assert server.request("GET", "/readyz")[0] == 200
    status, rows = api(server, "GET", "/api/costs?by=user")
    assert status == 200, rows

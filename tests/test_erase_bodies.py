"""Erasing a trace's stored bodies: a secret that reached them leaves the file and the search index,
the trace row (tokens, cost, who sent it) stays, and the erase is audited. Before schema 0027 an
operator could delete a body in the sqlite3 shell; the index's delete trigger now needs Stockyard's
SQL function, so Stockyard must offer the erase itself (``DELETE /api/traces/{id}/body``,
``stockyard traces --erase-body``)."""

from __future__ import annotations

import json
import sqlite3
import urllib.parse

import pytest
from mock_upstream import Reply
from module_helpers import api, chat, put_module, server_fixture

server = server_fixture("erase")


def said(server, text: str) -> str:
    status, headers, _ = chat(server, messages=[{"role": "user", "content": text}])
    assert status == 200
    trace_id = headers["x-stockyard-trace-id"]
    server.trace(trace_id)
    return trace_id


def found(server, text: str) -> list[str]:
    status, page = api(server, "GET", "/api/traces?" + urllib.parse.urlencode({"q": text}))
    assert status == 200, page
    return [t["id"] for t in page["data"]]


def test_the_api_erases_a_bodys_text_and_its_words_and_keeps_the_trace(server):
    leaked, kept = said(server, "my pangolin password is hunter2"), said(server, "a pangolin fact")
    assert found(server, "pangolin hunter2") == [leaked]
    status, answer = api(server, "DELETE", f"/api/traces/{leaked}/body")
    assert (status, answer) == (200, {"id": leaked, "erased": True})
    assert found(server, "hunter2") == [] and found(server, "pangolin") == [kept]
    status, trace = api(server, "GET", f"/api/traces/{leaked}")
    assert status == 200 and trace["request_body"] is None and trace["response_body"] is None
    assert trace["prompt_tokens"] and trace["cost_uc"] is not None, "the trace row stays, with its cost"
    status, entries = api(server, "GET", "/api/audit?action=traces.erase_bodies")
    assert status == 200
    erase = entries["data"][-1]
    assert erase["details"] == {"traces": [leaked]}
    assert api(server, "DELETE", f"/api/traces/{leaked}/body") == (200, {"id": leaked, "erased": False})


@pytest.mark.parametrize(("trace_id", "status"), [("tr_" + "0" * 24, 404), ("tr_nope", 400), ("tr_" + "A" * 24, 400)])
def test_an_unknown_or_malformed_id_erases_nothing(server, trace_id, status):
    got, body = api(server, "DELETE", f"/api/traces/{trace_id}/body")
    assert got == status and body["error"]["message"], body


def test_the_erase_needs_the_admin_key(server):
    leaked = said(server, "an armadillo secret")
    assert server.request("DELETE", f"/api/traces/{leaked}/body")[0] == 401
    assert found(server, "armadillo") == [leaked]


def test_the_cli_erases_several_at_once_and_none_when_one_is_unknown(server):
    one, two = said(server, "first okapi note"), said(server, "second okapi note")
    refused = server.cli("traces", "--erase-body", one, "--erase-body", "tr_" + "0" * 24)
    assert refused.returncode != 0 and "not found" in refused.stderr and "nothing was erased" in refused.stderr
    assert sorted(found(server, "okapi")) == sorted([one, two])
    done = server.cli("traces", "--erase-body", one, "--erase-body", two, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"erased": sorted([one, two])}
    assert found(server, "okapi") == []


def test_the_sqlite3_shell_cannot_delete_a_body_behind_the_index(server):
    """A plain sqlite3 connection lacks stockyard_search_text: the delete trigger refuses, nothing changes."""
    kept = said(server, "a wombat in the shell")
    conn = sqlite3.connect(server.db)
    try:
        with pytest.raises(sqlite3.OperationalError, match="stockyard_search_text"):
            conn.execute("DELETE FROM trace_bodies WHERE trace_id = ?", (kept,))
        assert conn.execute("SELECT count(*) FROM trace_bodies WHERE trace_id = ?", (kept,)).fetchone()[0] == 1
    finally:
        conn.close()
    assert found(server, "wombat") == [kept]


def test_the_bodies_of_a_requests_retried_attempts_go_with_it(server, mock):
    """A failed attempt (a retry, a fallback) keeps the provider's answer under its own trace (the
    request body is the request's): erasing the request's bodies takes the attempts' too — a
    provider's error may quote what it was sent."""
    put_module(server, "fallback", {"retries": 1, "backoff_ms": 10, "max_backoff_ms": 20, "breaker_failures": 0})
    try:
        mock.enqueue(Reply(status=500, json={"error": {"message": "bad prompt: the capybara vault code is 7741"}}))
        leaked = said(server, "the capybara vault code is 7741")
    finally:
        put_module(server, "fallback", enabled=False)
    status, trace = api(server, "GET", f"/api/traces/{leaked}")
    [attempt] = trace["attempts"]
    assert "7741" in api(server, "GET", f"/api/traces/{attempt['id']}")[1]["response_body"]
    done = server.cli("traces", "--erase-body", leaked, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"erased": sorted([leaked, attempt["id"]])}
    assert found(server, "capybara") == [] and found(server, "7741") == []
    erased = api(server, "GET", f"/api/traces/{attempt['id']}")[1]
    assert erased["response_body"] is None and erased["status"] == 500, "the attempt's row stays"

"""Erasing a trace's stored bodies: a secret that reached them leaves the file and the search index,
the trace row (tokens, cost, who sent it) stays, and the erase is audited. Before schema 0027 an
operator could delete a body in the sqlite3 shell; the index's delete trigger now needs Stockyard's
SQL function, so Stockyard must offer the erase itself (``DELETE /api/traces/{id}/body``,
``stockyard traces --erase-body``)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.parse

import pytest
from conftest import TEST_STORE, ServerProcess, base_env, wait_for
from mock_upstream import Reply
from module_helpers import ADMIN_KEY, api, chat, provider_env, put_module, server_fixture

server = server_fixture("erase")
# what an erase answers besides the bodies for a request that stored nothing for the Responses API
# (tests/test_erase_stored.py erases what one did)
NOTHING_STORED = {"responses": [], "conversation_items": 0}


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
    assert (status, answer) == (200, {"id": leaked, "erased": True, **NOTHING_STORED})
    assert found(server, "hunter2") == [] and found(server, "pangolin") == [kept]
    status, trace = api(server, "GET", f"/api/traces/{leaked}")
    assert status == 200 and trace["request_body"] is None and trace["response_body"] is None
    assert trace["prompt_tokens"] and trace["cost_uc"] is not None, "the trace row stays, with its cost"
    status, entries = api(server, "GET", "/api/audit?action=traces.erase_bodies")
    assert status == 200
    erase = entries["data"][-1]
    assert erase["details"] == {"traces": [leaked]}
    assert api(server, "DELETE", f"/api/traces/{leaked}/body") == (
        200,
        {"id": leaked, "erased": False, **NOTHING_STORED},
    )


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
    assert json.loads(done.stdout) == {"erased": sorted([one, two]), **NOTHING_STORED}
    assert found(server, "okapi") == []


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
    assert json.loads(done.stdout) == {"erased": sorted([leaked, attempt["id"]]), **NOTHING_STORED}
    assert found(server, "capybara") == [] and found(server, "7741") == []
    erased = api(server, "GET", f"/api/traces/{attempt['id']}")[1]
    assert erased["response_body"] is None and erased["status"] == 500, "the attempt's row stays"


def index_holds(server, word: str) -> bool:
    """Whether the search index still holds ``word``: SQLite's words through fts5vocab (its index
    keeps no text), PostgreSQL's rows of text."""
    if TEST_STORE == "postgresql":
        return bool(server.db_rows("SELECT trace_id FROM trace_search WHERE body LIKE ?", (f"%{word}%",)))
    conn = sqlite3.connect(server.db)
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.words USING fts5vocab(main, 'trace_search', 'row')")
        return conn.execute("SELECT 1 FROM temp.words WHERE term = ?", (word,)).fetchone() is not None
    finally:
        conn.close()


def test_the_erased_words_leave_the_search_index(server):
    """Not only unfound: the index itself no longer holds the erased body's words."""
    leaked = said(server, "the okavango passphrase is marmosetlantern")
    said(server, "a kept tamarin")
    assert index_holds(server, "marmosetlantern") and index_holds(server, "tamarin")
    assert api(server, "DELETE", f"/api/traces/{leaked}/body") == (
        200,
        {"id": leaked, "erased": True, **NOTHING_STORED},
    )
    assert not index_holds(server, "marmosetlantern") and not index_holds(server, "okavango")
    assert index_holds(server, "tamarin") and found(server, "marmosetlantern") == []


ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_a_foreign_origin_cannot_erase_even_with_the_admin_key(server):
    """A page elsewhere that got the key into a fetch (or a form post) still carries its Origin."""
    leaked = said(server, "a foreign serval origin")
    for origin in ("https://evil.example", "null"):
        status, _, raw = server.request("DELETE", f"/api/traces/{leaked}/body", headers={**ADMIN, "Origin": origin})
        assert status == 403 and json.loads(raw)["error"]["message"], raw
    assert found(server, "serval") == [leaked]


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH"])
def test_other_methods_on_the_route_are_405_with_allow(server, method):
    leaked = said(server, f"a {method.lower()} margay method")
    status, headers, raw = server.request(method, f"/api/traces/{leaked}/body", headers=ADMIN)
    assert status == 405 and headers["allow"] == "DELETE", (status, headers)
    if method != "HEAD":
        assert json.loads(raw)["error"]["message"]
    assert leaked in found(server, "margay")


@pytest.mark.parametrize(
    "path",
    [
        "/api/traces/{id}/body/",
        "/api/traces/{id}%2Fbody",
        "/api/traces/{id}/body%2F",
        "/api/traces/{id}/./body",
        "/api/traces/{id}/x/../body",
        "/api/traces//{id}/body",
        "/api/traces/{id}%00/body",
        "/api/traces/tr_" + "a" * 100_000 + "/body",
        "/api/traces/tr_%D9%A0%D9%A1" + "0" * 22 + "/body",  # Arabic-Indic digits
        "/api/traces/tr_" + "\uff10" * 24 + "/body",  # fullwidth digits, sent raw
    ],
)
def test_path_tricks_erase_nothing_and_get_a_clear_error(server, path):
    leaked = said(server, "a tricky genet path")
    target = path.replace("{id}", leaked)
    head = target.encode("utf-8").decode("latin-1")
    status, _, raw = server.request("DELETE", urllib.parse.quote(head, safe="/%"), headers=ADMIN)
    assert status in (400, 404, 405, 414, 431), (status, raw[:200])
    if raw:
        assert json.loads(raw)["error"]["message"]
    assert leaked in found(server, "genet")


# A server with client keys on (a separate one: keys, once made, are required from all).
keyed = server_fixture("erase_keyed", keys={"client": []})


def test_a_client_key_cannot_erase(keyed):
    status, headers, _ = chat(
        keyed, messages=[{"role": "user", "content": "a client's jerboa"}], headers=keyed.auth("client")
    )
    assert status == 200
    leaked = headers["x-stockyard-trace-id"]
    keyed.trace(leaked)
    status, _, raw = keyed.request("DELETE", f"/api/traces/{leaked}/body", headers=keyed.auth("client"))
    assert status == 401 and json.loads(raw)["error"]["message"]
    assert found(keyed, "jerboa") == [leaked]


def test_an_erase_right_after_the_answer_finds_the_trace_or_says_it_is_not_there_yet(server):
    """The answer is sent before its trace is recorded. An erase sent at once finds it (on SQLite its
    job queues behind the trace's on the one writer) or is a 404 — nothing erased, the trace not
    recorded yet (PostgreSQL's admin writes do not queue behind the writer) — and the same erase
    once the trace is there erases it. Never a 200 that leaves the body behind."""
    for n in range(20):
        status, headers, _ = chat(server, messages=[{"role": "user", "content": f"a hasty fossa {n}"}])
        assert status == 200
        trace_id = headers["x-stockyard-trace-id"]
        got, body = api(server, "DELETE", f"/api/traces/{trace_id}/body")
        if got == 404:
            server.trace(trace_id)
            got, body = api(server, "DELETE", f"/api/traces/{trace_id}/body")
        assert (got, body) == (200, {"id": trace_id, "erased": True, **NOTHING_STORED}), (n, got, body)
    assert found(server, "fossa") == []


def test_an_erase_of_1000_traces_is_one_transaction_and_unknown_ids_erase_none(server):
    ids = [chat(server, messages=[{"role": "user", "content": f"a numerous quoll {n}"}])[1] for n in range(1000)]
    ids = [h["x-stockyard-trace-id"] for h in ids]
    server.trace(ids[-1])
    refused = server.cli("traces", *(a for i in [*ids[:999], "tr_" + "0" * 24] for a in ("--erase-body", i)))
    assert refused.returncode != 0 and "nothing was erased" in refused.stderr, "all or nothing"
    assert len(found(server, "quoll")) == 50  # the list's default page: still there
    started = time.monotonic()
    done = server.cli("traces", *(a for i in ids for a in ("--erase-body", i)), "--json")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"erased": sorted(ids), **NOTHING_STORED} and found(server, "quoll") == []
    assert took < 10, took


@pytest.fixture(scope="module")
def pair(pyz_path, cache_home, mock, tmp_path_factory):
    """A server of two worker processes (each its own writer and store connections)."""
    env = {**base_env(cache_home), **provider_env(mock)}
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp("erase_pair") / "stockyard.db", env, ["--workers", "2"])
    yield srv.start()
    srv.stop()
    assert "Traceback" not in srv.log


def test_two_erases_at_once_on_two_workers_erase_once(pair):
    for n in range(5):
        leaked = said(pair, f"a doubled civet {n}")
        answers: list = []

        def erase(trace_id: str = leaked, into: list = answers) -> None:
            into.append(api(pair, "DELETE", f"/api/traces/{trace_id}/body"))

        threads = [threading.Thread(target=erase) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(a[1]["erased"] for a in answers) == [False, True] and {a[0] for a in answers} == {200}, answers
    assert found(pair, "civet") == []
    status, entries = api(pair, "GET", "/api/audit?action=traces.erase_bodies")
    assert status == 200 and len(entries["data"]) == 10
    status, verified = api(pair, "GET", "/api/audit/verify")
    assert status == 200 and verified["ok"], verified

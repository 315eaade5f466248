"""Text no PostgreSQL row can hold, from a client: a NUL (``\\u0000``, ``%00``) or a lone UTF-16
surrogate (``\\ud800``), both valid JSON escapes. PostgreSQL's ``text`` refuses a NUL and no UTF-8
holds a lone surrogate; SQLite stores a NUL. Each request here, made by a client key or the
admin, gets a clear 4xx in its API's shape or is stored (its trace too) and read back safely; the
writer goes on writing; no traceback. Runs on PostgreSQL in ``make test`` (Makefile PG_SUITES)."""

from __future__ import annotations

import json

import pytest
from conftest import ServerProcess, wait_for
from mock_upstream import Reply, responses_object
from module_helpers import ADMIN_KEY, api, client_key, server_fixture

PASSED = "gpt-4o-mini"
ESCAPES = ["\\u0000", "\\ud800"]  # as a client writes them in JSON


server = server_fixture("unstorable")


@pytest.fixture
def auth(server) -> dict[str, str]:
    return {**server.auth(client_key(server)), "Content-Type": "application/json"}


def post(server: ServerProcess, path: str, body: str, headers: dict) -> tuple[int, dict, dict]:
    status, got, raw = server.request("POST", path, raw=body.encode(), headers=headers)
    return status, got, json.loads(raw) if raw else {}


def traced(server: ServerProcess, trace_id: str) -> dict:
    """The trace of a request, once the writer committed it (it must: a lost trace is a lost record)."""
    return server.trace(trace_id)


@pytest.mark.parametrize("escaped", ESCAPES)
def test_a_refusal_quoting_the_clients_id_is_recorded_and_the_writer_goes_on(server, auth, escaped):
    """A 404 for ``previous_response_id: "resp_\\ud800"`` quotes the id in its error, and its trace
    carried the surrogate: on PostgreSQL the encoding error was taken for a lost database, the
    writer held the record and retried it for ever, and every write after it waited or failed
    (admin changes a 500, traces never written, /readyz 503). A NUL dropped the trace."""
    body = '{"model": "%s", "input": "hi", "previous_response_id": "resp_%s"}' % (PASSED, escaped)
    status, headers, answer = post(server, "/v1/responses", body, auth)
    assert status == 404 and answer["error"]["param"] == "previous_response_id", answer
    refused = traced(server, headers["x-stockyard-trace-id"])
    assert refused["status"] == 404 and "resp_" in refused["error_message"]
    chat = json.dumps({"model": PASSED, "messages": [{"role": "user", "content": "hi"}]})
    status, headers, _ = post(server, "/v1/chat/completions", chat, auth)
    assert status == 200
    assert traced(server, headers["x-stockyard-trace-id"])["status"] == 200
    assert server.request("GET", "/readyz")[0] == 200
    assert api(server, "POST", "/api/prices", {"model": "after-the-refusal", "input": "1", "output": "1"})[0] == 200


@pytest.mark.parametrize("escaped", ESCAPES)
def test_a_model_name_no_model_has_is_a_400_and_recorded(server, auth, escaped):
    """A model name is the client's word, kept in the trace, its rollups and a stored response: a
    NUL in it went to the provider, and on PostgreSQL the request's trace was refused (the answer
    billed by the provider, no record) and a stored response lost. No model's name has either."""
    body = '{"model": "%s%s", "messages": [{"role": "user", "content": "hi"}]}' % (PASSED, escaped)
    status, headers, answer = post(server, "/v1/chat/completions", body, auth)
    assert status == 400 and answer["error"]["param"] == "model" and answer["error"]["code"] == "invalid_model"
    assert traced(server, headers["x-stockyard-trace-id"])["status"] == 400


def test_a_raw_nul_in_a_stored_body_is_recorded_and_its_words_found(server, auth):
    """A body is stored as its bytes; its search text (PostgreSQL text) had the NUL and the trace
    was refused whole. The NUL separates words there, as it does in SQLite's index."""
    raw = b'{"model": "%s", "messages": []} nulword\x00afterword' % PASSED.encode()
    status, headers, _ = server.request("POST", "/v1/chat/completions", raw=raw, headers=auth)
    assert status == 400
    assert traced(server, headers["x-stockyard-trace-id"])["status"] == 400
    for word in ("nulword", "afterword"):
        status, found = api(server, "GET", f"/api/traces?q={word}")
        assert status == 200 and [t["id"] for t in found["data"]] == [headers["x-stockyard-trace-id"]], found


def conversation(server: ServerProcess, auth: dict) -> str:
    status, _, made = post(server, "/v1/conversations", '{"items": [{"role": "user", "content": "first"}]}', auth)
    assert status == 200, made
    return made["id"]


@pytest.mark.parametrize("escaped", ESCAPES)
def test_an_item_id_the_client_chose_no_row_can_hold_is_a_400_naming_it(server, auth, escaped):
    """A conversation keeps each item under its id: an id with a NUL was a 500 with a traceback on
    PostgreSQL (creating the conversation or adding to it), and a Responses turn joining one with
    such an input id was answered while its turn was silently left out of the conversation."""
    conv = conversation(server, auth)
    item = '{"type": "message", "id": "msg_%s", "role": "user", "content": "hi"}' % escaped
    for path, body, param in (
        ("/v1/conversations", '{"items": [%s]}' % item, "items[0].id"),
        (f"/v1/conversations/{conv}/items", '{"items": [{"role": "user", "content": "ok"}, %s]}' % item, "items[1].id"),
        ("/v1/responses", '{"model": "%s", "conversation": "%s", "input": [%s]}' % (PASSED, conv, item), "input[0].id"),
    ):
        status, _, answer = post(server, path, body, auth)
        assert status == 400 and answer["error"]["param"] == param, (path, answer)
    status, _, raw = server.request("GET", f"/v1/conversations/{conv}/items?order=asc", headers=auth)
    assert status == 200 and [i["content"][0]["text"] for i in json.loads(raw)["data"]] == ["first"]


def test_a_page_after_an_id_no_row_can_hold_is_the_unknown_ids_400(server, auth):
    """``after`` names an item to page from: one with a NUL was a 500 on PostgreSQL; it is unknown."""
    conv = conversation(server, auth)
    for after in ("msg_%00", "%00"):
        status, _, raw = server.request("GET", f"/v1/conversations/{conv}/items?after={after}", headers=auth)
        answer = json.loads(raw)
        assert status == 400 and answer["error"]["param"] == "after", answer


@pytest.mark.parametrize("escaped", ESCAPES)
def test_a_price_for_a_model_name_no_model_has_is_a_400(server, escaped):
    """Admin only, still no 500: ``POST /api/prices`` with a NUL or a lone surrogate in the model."""
    body = '{"model": "m%s", "input": "1", "output": "1"}' % escaped
    status, _, answer = post(server, "/api/prices", body, {"Authorization": f"Bearer {ADMIN_KEY}"})
    assert status == 400 and answer["error"]["param"] == "model", answer


def test_an_admin_path_or_query_value_with_a_nul_is_unknown_or_a_400_naming_it(server):
    """``%00`` in an admin path names nothing stored (a 404, as an unknown one), in a query filter
    it is a 400 naming the parameter: each was a 500 with a traceback on PostgreSQL."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for method, path in (("GET", "/api/keys/k%00"), ("DELETE", "/api/prices/m%00"), ("GET", "/api/webhooks/%00")):
        status, _, raw = server.request(method, path, headers=admin)
        assert status == 404 and json.loads(raw)["error"]["code"] == "not_found", (path, raw)
    for name, value in (("model", "m%00"), ("q", "word%00"), ("user", "u%00"), ("key", "%00")):
        status, _, raw = server.request("GET", f"/api/traces?{name}={value}", headers=admin)
        assert status == 400 and json.loads(raw)["error"]["param"] == name, (name, raw)
    status, _, raw = server.request("GET", "/api/costs?by=tag:%00", headers=admin)
    assert status == 400 and json.loads(raw)["error"]["param"] == "by", raw


@pytest.mark.parametrize("escaped", ESCAPES)
def test_conversation_metadata_with_a_nul_or_a_lone_surrogate_reads_back_the_same(server, auth, escaped):
    """Metadata is the client's to keep (OpenAI's rule is only its size): stored as escaped JSON
    text, which both stores hold, it reads back as it was sent."""
    body = '{"metadata": {"k%s": "v%s"}}' % (escaped, escaped)
    status, _, made = post(server, "/v1/conversations", body, auth)
    assert status == 200, made
    sent = json.loads(body)["metadata"]
    status, _, raw = server.request("GET", f"/v1/conversations/{made['id']}", headers=auth)
    assert status == 200 and json.loads(raw)["metadata"] == sent
    status, _, updated = post(server, f"/v1/conversations/{made['id']}", '{"metadata": {"a": "b%s"}}' % escaped, auth)
    assert status == 200
    status, _, raw = server.request("GET", f"/v1/conversations/{made['id']}", headers=auth)
    assert json.loads(raw)["metadata"] == json.loads('{"a": "b%s"}' % escaped)


def test_an_admin_change_holding_a_lone_surrogate_is_the_400_it_is_on_sqlite(server):
    """A module's options are kept as the admin sent them; one with a lone surrogate cannot be
    encoded for either store: SQLite's binding raised the encoding error (the 400 every such body
    gets), PostgreSQL's connection turned it into a database failure: a 500 with a traceback."""
    body = '{"enabled": false, "config": {"aliases": {"a\\ud800": "gpt-4o-mini"}}}'
    status, _, raw = server.request(
        "PUT", "/api/modules/alias", raw=body.encode(), headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert status == 400 and json.loads(raw)["error"]["code"] == "invalid_json", raw
    status, view = api(server, "GET", "/api/modules/alias")
    assert status == 200 and not view["set"]


@pytest.mark.parametrize("escaped", ESCAPES)
def test_a_routed_model_named_with_a_nul_or_a_lone_surrogate_is_a_400_naming_its_field(server, escaped):
    """``POST /api/models`` and a deployment's ``model``: the model-name check let a NUL through
    (its pattern refused only spaces and '/'), and PostgreSQL refused the row: a 500 with a
    traceback. A lone surrogate was the body's generic 400, naming no field. No model's name
    has either, and a request naming one is refused (proxy.checked_model_name)."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for path, body, param in (
        ("/api/models", '{"name": "m%s"}' % escaped, "name"),
        ("/api/models", '{"name": "routed", "context_fallback": "c%s"}' % escaped, "context_fallback"),
        ("/api/models/routed/deployments", '{"name": "d1", "provider": "openai", "model": "u%s"}' % escaped, "model"),
    ):
        status, _, answer = post(server, path, body, admin)
        assert status == 400 and answer["error"]["param"] == param, (path, answer)


def test_a_providers_lone_surrogate_joins_the_conversation_as_answered(server, auth, mock):
    """A provider may answer a lone surrogate (a valid JSON escape, say a model's half of an emoji): a
    pass-through turn's output items joining its conversation were packed as strict UTF-8, so the
    turn was not appended (a traceback in the log; the next turn read a conversation without it).
    Kept as answered now, on both stores."""
    status, _, conversation = post(server, "/v1/conversations", "{}", auth)
    assert status == 200, conversation
    said = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "half \ud83d"}]}
    mock.enqueue(Reply(json=responses_object({}, 0, PASSED, "completed", [said])))
    body = json.dumps({"model": PASSED, "input": "hi", "conversation": conversation["id"]})
    status, _, answer = post(server, "/v1/responses", body, auth)
    assert status == 200, answer
    status, _, raw = server.request("GET", f"/v1/conversations/{conversation['id']}/items?order=asc", headers=auth)
    items = json.loads(raw)["data"]
    assert status == 200 and [item["role"] for item in items] == ["user", "assistant"], items
    assert items[1]["content"][0]["text"] == "half \ud83d"
    body = json.dumps({"model": PASSED, "input": "and then?", "conversation": conversation["id"]})
    status, _, answer = post(server, "/v1/responses", body, auth)  # the next turn sends it on, escaped
    assert status == 200, answer
    sent = mock.requests[-1]
    assert b'"half \\ud83d"' in sent.body and json.loads(sent.body)["input"][1]["content"][0]["text"] == "half \ud83d"


def test_a_clients_lone_surrogate_goes_to_openai_as_sent_when_stockyard_rewrites_the_body(server, auth, mock):
    """A chat body for OpenAI goes as its bytes; one Stockyard rewrites (``stream_options`` added to a
    stream, for its usage) was a 400 blaming the client's surrogate, which the same body without
    ``stream`` passed. Both go on now, the surrogate escaped as the client sent it."""
    for stream in (False, True):
        body = '{"model": "%s", "stream": %s, "messages": [{"role": "user", "content": "x \\ud800"}]}'
        status, _, _ = server.request(
            "POST", "/v1/chat/completions", raw=(body % (PASSED, str(stream).lower())).encode(), headers=auth
        )
        assert status == 200
        sent = mock.requests[-1]
        assert b'"x \\ud800"' in sent.body and sent.json.get("stream_options", {}).get("include_usage") is (
            stream or None
        )

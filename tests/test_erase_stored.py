"""An erase reaches what a request stored for the Responses and Conversations APIs: erasing a trace's
bodies (``DELETE /api/traces/{id}/body``, ``stockyard traces --erase-body``) also deletes the stored
response that request made (its input and output items: the owning key's GET is then a 404, and so is
a ``previous_response_id`` naming it) and the items its turn appended to a conversation; and the admin
can delete any key's stored response or conversation (``DELETE /api/responses/{id}``,
``DELETE /api/conversations/{id}``, ``stockyard responses --delete``, ``stockyard conversations --delete``).
Was: they were "kept apart from traces", deletable only by the key that made them, so the text an
operator erased from a trace stayed in the database. The official openai SDK is the client of the
Responses and Conversations APIs; ``gpt-4o-mini`` is passed through (the provider speaks the Responses
API), ``claude-haiku-4-5`` translated (Stockyard keeps the items). Runs on both stores."""

from __future__ import annotations

import json
import urllib.parse

import pytest
from conftest import ServerProcess, wait_for
from module_helpers import ADMIN_KEY, api, client_key, fresh, start_server  # noqa: F401  (fresh: a fixture)
from openai import NotFoundError, OpenAI

PASSED, TRANSLATED = "gpt-4o-mini", "claude-haiku-4-5"


def start_stored(pyz_path, cache_home, mock, tmp_path_factory, name: str) -> ServerProcess:
    """A server that keeps Responses turns, passed through (OpenAI) or translated (Claude), both on the mock."""
    return start_server(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        name,
        ANTHROPIC_API_KEY="sk-ant-test-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
    )


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    srv = start_stored(pyz_path, cache_home, mock, tmp_path_factory, "erase_stored")
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log


pytestmark = pytest.mark.usefixtures("fresh")  # every module off, the mock's replies and requests gone


@pytest.fixture(params=[PASSED, TRANSLATED])
def model(request) -> str:
    return request.param


def sdk(server: ServerProcess, key: str | None = None) -> OpenAI:
    return server.openai(key or client_key(server))


def turn(server: ServerProcess, client: OpenAI, stream: bool = False, **body) -> tuple[str, str]:
    """One ``/v1/responses`` turn: the response's id and its trace's (recorded before this returns)."""
    if stream:
        with client.responses.with_streaming_response.create(stream=True, **body) as raw:
            trace_id = raw.headers["x-stockyard-trace-id"]
            events = list(raw.parse())
        assert events[-1].type == "response.completed", events[-1]
        response_id = events[-1].response.id
    else:
        raw = client.responses.with_raw_response.create(**body)
        trace_id, response_id = raw.headers["x-stockyard-trace-id"], raw.parse().id
    server.trace(trace_id)
    return response_id, trace_id


def texts(items) -> list[tuple[str, str]]:
    """(role, text) of each message item, in order."""
    return [(i.role, "".join(part.text for part in i.content)) for i in items if i.type == "message"]


def audited(server: ServerProcess, action: str) -> list[dict]:
    status, entries = api(server, "GET", f"/api/audit?action={action}")
    assert status == 200, entries
    return [e["details"] for e in entries["data"]]


def rows(server: ServerProcess, table: str, column: str, value: str) -> int:
    return len(server.db_rows(f"SELECT 1 FROM {table} WHERE {column} = ?", (value,)))


@pytest.mark.parametrize("stream", [False, True])
def test_erasing_a_turns_trace_erases_the_response_it_stored(server, model, stream):
    client = sdk(server)
    kept_id, _ = turn(server, client, model=model, input="a kept turn about otters")
    response_id, trace_id = turn(server, client, stream, model=model, input="my quokka passport is QX-1187")
    assert client.responses.retrieve(response_id).id == response_id
    if model == TRANSLATED:
        assert texts(client.responses.input_items.list(response_id)) == [("user", "my quokka passport is QX-1187")]
    else:
        assert rows(server, "response_items", "response_id", response_id) > 0, "its output items' ids are held"

    status, answer = api(server, "DELETE", f"/api/traces/{trace_id}/body")
    assert status == 200 and answer == {
        "id": trace_id,
        "erased": True,
        "responses": [response_id],
        "conversation_items": 0,
    }, answer
    for gone in (
        lambda: client.responses.retrieve(response_id),
        lambda: client.responses.input_items.list(response_id),
        lambda: client.responses.delete(response_id),
        lambda: client.responses.create(model=model, previous_response_id=response_id, input="what was it?"),
    ):
        with pytest.raises(NotFoundError) as refused:
            gone()
        assert refused.value.body["code"] == "not_found" and response_id in refused.value.body["message"]
    assert rows(server, "responses", "id", response_id) == 0
    assert rows(server, "response_items", "response_id", response_id) == 0
    assert client.responses.retrieve(kept_id).id == kept_id, "another turn's response stays"
    status, trace = api(server, "GET", f"/api/traces/{trace_id}")
    assert status == 200 and trace["request_body"] is None and trace["prompt_tokens"], "the trace row stays"
    assert audited(server, "traces.erase_bodies")[-1] == {"traces": [trace_id], "responses": [response_id]}


@pytest.mark.parametrize(("store", "stream"), [(True, False), (False, False), (True, True)])
def test_erasing_a_turns_trace_takes_the_items_it_appended_to_its_conversation(server, model, store, stream):
    """The conversation stays with the items the turn did not add; ``store`` does not matter (the
    conversation is where the client keeps the turn)."""
    client = sdk(server)
    conversation = client.conversations.create(items=[{"role": "user", "content": "an item made apart"}])
    turn(server, client, model=model, conversation=conversation.id, input="a kept wallaby turn")
    _, trace_id = turn(
        server, client, stream, model=model, conversation=conversation.id, input="the numbat pin is 5521", store=store
    )
    turn(server, client, model=model, conversation=conversation.id, input="a later wombat turn")
    listed = texts(client.conversations.items.list(conversation.id, order="asc"))
    assert ("user", "the numbat pin is 5521") in listed and len(listed) == 7

    status, answer = api(server, "DELETE", f"/api/traces/{trace_id}/body")
    assert status == 200 and answer["conversation_items"] == 2 and len(answer["responses"]) == int(store), answer
    assert [t for t, _ in texts(client.conversations.items.list(conversation.id, order="asc"))] == [
        "user",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    left = texts(client.conversations.items.list(conversation.id, order="asc"))
    assert ("user", "the numbat pin is 5521") not in left and left[0] == ("user", "an item made apart")
    [row] = server.db_rows("SELECT bytes FROM conversations WHERE id = ?", (conversation.id,))
    [held] = server.db_rows(
        "SELECT COALESCE(SUM(bytes), 0) AS n FROM conversation_items WHERE conversation_id = ?", (conversation.id,)
    )
    assert row["bytes"] == held["n"], "the conversation's size is its items' again"
    details = audited(server, "traces.erase_bodies")[-1]
    assert details["conversation_items"] == {conversation.id: 2} and details["traces"] == [trace_id]
    # the next turn goes on with what is left
    client.responses.create(model=model, conversation=conversation.id, input="go on")
    assert len(client.conversations.items.list(conversation.id).data) == 7


def test_a_trace_that_stored_nothing_erases_only_its_bodies(server):
    client = sdk(server)
    raw = client.chat.completions.with_raw_response.create(
        model=PASSED, messages=[{"role": "user", "content": "a plain chat about a dingo"}]
    )
    trace_id = raw.headers["x-stockyard-trace-id"]
    server.trace(trace_id)
    status, answer = api(server, "DELETE", f"/api/traces/{trace_id}/body")
    assert (status, answer) == (200, {"id": trace_id, "erased": True, "responses": [], "conversation_items": 0})
    assert audited(server, "traces.erase_bodies")[-1] == {"traces": [trace_id]}


def test_the_cli_erase_reports_what_it_erased(server):
    client = sdk(server)
    conversation = client.conversations.create()
    response_id, trace_id = turn(
        server, client, model=TRANSLATED, conversation=conversation.id, input="the bilby code is 3390"
    )
    done = server.cli("traces", "--erase-body", trace_id, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"erased": [trace_id], "responses": [response_id], "conversation_items": 2}
    assert client.conversations.items.list(conversation.id).data == []
    with pytest.raises(NotFoundError):
        client.responses.retrieve(response_id)


# -- the admin's deletes ---------------------------------------------------------------------------


def test_the_admin_deletes_any_keys_stored_response(server, model):
    owner = sdk(server)
    response_id, _ = turn(server, owner, model=model, input="the owner's echidna secret")
    kept_id, _ = turn(server, owner, model=model, input="a kept echidna fact")
    status, answer = api(server, "DELETE", f"/api/responses/{response_id}")
    assert (status, answer) == (200, {"id": response_id, "object": "response", "deleted": True}), answer
    with pytest.raises(NotFoundError) as refused:
        owner.responses.retrieve(response_id)
    assert refused.value.body["code"] == "not_found"
    with pytest.raises(NotFoundError):
        owner.responses.create(model=model, previous_response_id=response_id, input="and then?")
    assert rows(server, "response_items", "response_id", response_id) == 0
    assert owner.responses.retrieve(kept_id).id == kept_id
    assert audited(server, "responses.delete")[-1] == {"id": response_id}
    status, again = api(server, "DELETE", f"/api/responses/{response_id}")
    assert status == 404 and again["error"]["code"] == "not_found" and response_id in again["error"]["message"]


def test_the_admin_deletes_any_keys_conversation_and_its_items(server, model):
    owner = sdk(server)
    conversation = owner.conversations.create(items=[{"role": "user", "content": "the owner's platypus secret"}])
    turn(server, owner, model=model, conversation=conversation.id, input="more about it")
    kept = owner.conversations.create(items=[{"role": "user", "content": "a kept platypus fact"}])
    status, answer = api(server, "DELETE", f"/api/conversations/{conversation.id}")
    assert (status, answer) == (
        200,
        {"id": conversation.id, "object": "conversation.deleted", "deleted": True, "items": 3},
    ), answer
    with pytest.raises(NotFoundError):
        owner.conversations.retrieve(conversation.id)
    with pytest.raises(NotFoundError):
        owner.responses.create(model=model, conversation=conversation.id, input="and then?")
    assert rows(server, "conversation_items", "conversation_id", conversation.id) == 0
    assert texts(owner.conversations.items.list(kept.id)) == [("user", "a kept platypus fact")]
    assert audited(server, "conversations.delete")[-1] == {"id": conversation.id, "items": 3}
    status, again = api(server, "DELETE", f"/api/conversations/{conversation.id}")
    assert status == 404 and again["error"]["code"] == "not_found"


@pytest.mark.parametrize("kind", ["responses", "conversations"])
@pytest.mark.parametrize(
    "bad",
    [
        "resp_" + "a" * 300,  # longer than any id
        "resp_caf%C3%A9",  # not [A-Za-z0-9_-]
        "resp.x",
        "resp_a%00b",  # NUL
        "resp_a%20b",
    ],
)
def test_a_bad_id_is_a_400_in_the_admin_shape(server, kind, bad):
    status, _, raw = server.request("DELETE", f"/api/{kind}/{bad}", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert status == 400, (status, raw[:300])
    assert json.loads(raw)["error"]["message"]


@pytest.mark.parametrize("kind", ["responses", "conversations"])
def test_an_unknown_id_is_a_404_and_a_client_key_cannot_delete(server, kind):
    status, body = api(server, "DELETE", f"/api/{kind}/{'resp' if kind == 'responses' else 'conv'}_{'0' * 48}")
    assert status == 404 and body["error"]["code"] == "not_found", body
    owner = sdk(server)
    made = (
        turn(server, owner, model=TRANSLATED, input="a client key's bandicoot")[0]
        if kind == "responses"
        else owner.conversations.create().id
    )
    key = client_key(server)
    status, _, raw = server.request("DELETE", f"/api/{kind}/{made}", headers={"Authorization": f"Bearer {key}"})
    assert status == 401 and json.loads(raw)["error"]["message"]
    assert (owner.responses.retrieve(made) if kind == "responses" else owner.conversations.retrieve(made)).id == made


def test_the_routes_are_in_the_openapi_document(server):
    status, doc = api(server, "GET", "/api/openapi.json")
    assert status == 200
    assert "delete" in doc["paths"]["/api/responses/{id}"] and "delete" in doc["paths"]["/api/conversations/{id}"]


def test_the_cli_deletes_a_stored_response_and_a_conversation(server):
    owner = sdk(server)
    response_id, _ = turn(server, owner, model=TRANSLATED, input="a cli cassowary")
    conversation = owner.conversations.create(items=[{"role": "user", "content": "a cli emu"}])
    done = server.cli("responses", "--delete", response_id, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"id": response_id, "object": "response", "deleted": True}
    done = server.cli("conversations", "--delete", conversation.id)
    assert done.returncode == 0 and conversation.id in done.stdout, done.stderr
    with pytest.raises(NotFoundError):
        owner.responses.retrieve(response_id)
    with pytest.raises(NotFoundError):
        owner.conversations.retrieve(conversation.id)
    missing = server.cli("responses", "--delete", response_id)
    assert missing.returncode == 1 and "not found" in missing.stderr
    bad = server.cli("conversations", "--delete", "conv_a\u00e9")
    assert bad.returncode != 0 and "conversation id" in bad.stderr and "Traceback" not in bad.stderr


def test_a_path_value_is_decoded_once(server):
    """A %-escape in the id is the admin API's own decoding: an escaped valid id is that id."""
    owner = sdk(server)
    response_id, _ = turn(server, owner, model=TRANSLATED, input="an escaped quoll")
    escaped = urllib.parse.quote(response_id[:5]) + "".join(f"%{ord(c):02X}" for c in response_id[5:])
    status, _ = api(server, "DELETE", f"/api/responses/{escaped}")
    assert status == 200
    with pytest.raises(NotFoundError):
        owner.responses.retrieve(response_id)

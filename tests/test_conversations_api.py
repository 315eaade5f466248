"""OpenAI's Conversations API through Stockyard, with the official openai SDK against a real server
on the mock upstream: Stockyard keeps the conversations (scoped to the key that made them) and
puts their items in front of a ``conversation`` turn's input for every provider — ``gpt-4o-mini``
passed through (the Responses API), ``claude-haiku-4-5`` translated (over Chat Completions to
the Messages API) — then appends the turn once the response has completed."""

from __future__ import annotations

import io
import json

import pytest
from conftest import ServerProcess, served, wait_for
from mock_upstream import TEXT, Reply, anthropic_error, openai_error
from module_helpers import api, client_key, disable_all, module_env, put_module
from openai import BadRequestError, NotFoundError, OpenAI, RateLimitError

PASSED, TRANSLATED = "gpt-4o-mini", "claude-haiku-4-5"
MAX_BODY = 200_000


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = module_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_MAX_BODY_BYTES=str(MAX_BODY),
    )
    with served(pyz_path, tmp_path_factory, "conversations", env) as srv:
        # $10 per 1M input tokens, output free: 1_000 µ¢ per estimated input token
        assert api(srv, "POST", "/api/prices", {"model": TRANSLATED, "input": "10", "output": "0"})[0] == 200
        yield srv


@pytest.fixture(autouse=True)
def fresh(server, mock):
    disable_all(server)
    mock.clear_replies()
    mock.clear()
    yield
    mock.clear_replies()


def sdk(server: ServerProcess, key: str | None = None) -> OpenAI:
    return server.openai(key or client_key(server))


def call(server: ServerProcess, key: str, method: str, path: str, body=None) -> tuple[int, dict, dict]:
    status, headers, raw = server.request(method, path, body, headers={"Authorization": f"Bearer {key}"})
    return status, headers, json.loads(raw) if raw else {}


def texts(items) -> list[tuple[str, str]]:
    """(role, text) of each message item: what a conversation says, in order."""
    return [(i.role, "".join(part.text for part in i.content)) for i in items if i.type == "message"]


@pytest.fixture(params=[PASSED, TRANSLATED])
def model(request) -> str:
    return request.param


def test_a_conversation_and_its_items_through_the_sdk(server):
    client = sdk(server)
    made = client.conversations.create(
        metadata={"topic": "demo"}, items=[{"type": "message", "role": "user", "content": "Hello!"}]
    )
    assert made.id.startswith("conv_") and made.object == "conversation" and made.metadata == {"topic": "demo"}
    assert client.conversations.retrieve(made.id).created_at == made.created_at
    assert client.conversations.update(made.id, metadata={"topic": "project-x"}).metadata == {"topic": "project-x"}
    assert client.conversations.retrieve(made.id).metadata == {"topic": "project-x"}

    first = client.conversations.items.list(made.id).data
    assert len(first) == 1 and first[0].id.startswith("msg_") and first[0].role == "user"
    assert first[0].content[0].type == "input_text" and first[0].content[0].text == "Hello!"  # as OpenAI lists it
    added = client.conversations.items.create(
        made.id,
        items=[
            {"type": "message", "role": "assistant", "content": "Hi there"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Bye"}], "id": "msg_mine"},
        ],
    )
    assert [i.id for i in added.data][1] == "msg_mine" and added.has_more is False
    assert added.first_id == added.data[0].id and added.last_id == "msg_mine"
    assert texts(client.conversations.items.list(made.id, order="asc")) == [
        ("user", "Hello!"),
        ("assistant", "Hi there"),
        ("user", "Bye"),
    ]
    assert texts([client.conversations.items.retrieve("msg_mine", conversation_id=made.id)]) == [("user", "Bye")]
    after = client.conversations.items.delete("msg_mine", conversation_id=made.id)
    assert after.id == made.id and after.object == "conversation"  # the conversation, as OpenAI answers
    with pytest.raises(NotFoundError):
        client.conversations.items.retrieve("msg_mine", conversation_id=made.id)
    assert len(client.conversations.items.list(made.id).data) == 2

    gone = client.conversations.delete(made.id)
    assert (gone.id, gone.object, gone.deleted) == (made.id, "conversation.deleted", True)
    with pytest.raises(NotFoundError):
        client.conversations.retrieve(made.id)
    with pytest.raises(NotFoundError):
        client.conversations.items.list(made.id)
    assert server.db_rows("SELECT seq FROM conversation_items WHERE conversation_id = ?", (made.id,)) == []


@pytest.mark.parametrize("stream", [False, True])
def test_a_second_turn_reaches_the_provider_after_the_first(server, mock, model, stream):
    """The provider gets turn 1's input and output before turn 2's input, whichever provider
    answers; the body it gets names no conversation (Stockyard's, which it does not know)."""
    client = sdk(server)
    conversation = client.conversations.create()
    for turn, asked in enumerate(("My name is Ada.", "What is my name?")):
        ref = conversation.id if turn == 0 else {"id": conversation.id}
        if stream:
            events = list(client.responses.create(model=model, conversation=ref, input=asked, stream=True))
            assert events[-1].type == "response.completed"
            assert {e.response.conversation.id for e in events if hasattr(e, "response")} == {conversation.id}
            response = events[-1].response
        else:
            response = client.responses.create(model=model, conversation=ref, input=asked)
        assert response.output_text == TEXT and response.conversation.id == conversation.id
    if model == PASSED:
        sent = mock.last("/v1/responses").json
        assert "conversation" not in sent
        assert [(i.get("role"), i["content"]) for i in sent["input"]] == [
            ("user", [{"type": "input_text", "text": "My name is Ada."}]),
            ("assistant", sent["input"][1]["content"]),
            ("user", "What is my name?"),
        ]
        assert sent["input"][1]["content"][0]["text"] == TEXT
        assert "id" not in sent["input"][0]  # an id Stockyard minted is no provider's
    else:
        messages = mock.last("/v1/messages").json["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user"]
        assert json.dumps(messages[0]).count("My name is Ada.") == 1 and TEXT in json.dumps(messages[1])
        assert "What is my name?" in json.dumps(messages[2])
    assert texts(client.conversations.items.list(conversation.id, order="asc")) == [
        ("user", "My name is Ada."),
        ("assistant", TEXT),
        ("user", "What is my name?"),
        ("assistant", TEXT),
    ]


def test_items_listed_and_sent_back_reach_a_responses_provider_without_stockyards_ids(server, mock):
    """The OpenAI Agents SDK's OpenAIConversationsSession lists the items and sends them back in
    ``input``, a user message with its id: an id Stockyard made is no provider's to look up."""
    client = sdk(server)
    conversation = client.conversations.create(items=[{"role": "user", "content": "Remember 42."}])
    history = [item.model_dump(exclude_unset=True) for item in client.conversations.items.list(conversation.id)]
    assert history[0]["id"].startswith("msg_")
    client.responses.create(model=PASSED, input=[*history, {"role": "user", "content": "What number?"}])
    sent = mock.last("/v1/responses").json["input"]
    assert sent[0] == {k: v for k, v in history[0].items() if k != "id"} and len(sent) == 2


def test_a_conversation_moves_between_providers(server, mock):
    """Stockyard holds the items, so the next turn may go to another provider's model."""
    client = sdk(server)
    conversation = client.conversations.create(items=[{"role": "user", "content": "Remember 42."}])
    client.responses.create(model=PASSED, conversation=conversation.id, input="Noted?")
    client.responses.create(model=TRANSLATED, conversation=conversation.id, input="What number?")
    messages = mock.last("/v1/messages").json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]  # 2 user items are one turn
    assert "Remember 42." in json.dumps(messages[0]) and "Noted?" in json.dumps(messages[0])
    assert len(client.conversations.items.list(conversation.id).data) == 5


def failing(model: str, stream: bool) -> Reply:
    """A stream cut after its first events, or the provider's 500."""
    if stream:
        return Reply(cut_after=4)
    return (openai_error if model == PASSED else anthropic_error)(500)


@pytest.mark.parametrize("stream", [False, True])
def test_a_turn_that_fails_appends_nothing(server, mock, model, stream):
    client = sdk(server)
    conversation = client.conversations.create(items=[{"role": "user", "content": "first"}])
    mock.enqueue(failing(model, stream))
    try:
        for event in client.responses.create(model=model, conversation=conversation.id, input="lost", stream=stream):
            assert event.type != "response.completed"
    except Exception as caught:  # the non-streamed failure is the provider's error
        assert not stream and getattr(caught, "status_code", None) == 500, caught
    assert texts(client.conversations.items.list(conversation.id)) == [("user", "first")]


def test_another_keys_conversation_is_not_found(server, mock, model):
    alice, bob = sdk(server), sdk(server)
    mine = alice.conversations.create(items=[{"role": "user", "content": "alice's secret"}])
    item_id = alice.conversations.items.list(mine.id).data[0].id
    for attempt in (
        lambda: bob.conversations.retrieve(mine.id),
        lambda: bob.conversations.update(mine.id, metadata={"x": "y"}),
        lambda: bob.conversations.delete(mine.id),
        lambda: bob.conversations.items.list(mine.id),
        lambda: bob.conversations.items.create(mine.id, items=[{"role": "user", "content": "bob's"}]),
        lambda: bob.conversations.items.retrieve(item_id, conversation_id=mine.id),
        lambda: bob.conversations.items.delete(item_id, conversation_id=mine.id),
        lambda: bob.responses.create(model=model, conversation=mine.id, input="what did alice say?"),
    ):
        with pytest.raises(NotFoundError) as refused:
            attempt()
        assert refused.value.body["code"] == "not_found"
    assert mock.requests == []  # no provider heard of it
    assert texts(alice.conversations.items.list(mine.id)) == [("user", "alice's secret")]
    assert alice.conversations.retrieve(mine.id).metadata == {}


def test_items_are_listed_a_page_at_a_time(server):
    client = sdk(server)
    words = ["one", "two", "three", "four", "five"]
    conversation = client.conversations.create(items=[{"role": "user", "content": w} for w in words])
    page = client.conversations.items.list(conversation.id, limit=2, order="asc")
    assert texts(page.data) == [("user", "one"), ("user", "two")] and page.has_more is True
    following = client.conversations.items.list(conversation.id, limit=2, order="asc", after=page.last_id)
    assert texts(following.data) == [("user", "three"), ("user", "four")] and following.has_more is True
    last = client.conversations.items.list(conversation.id, limit=2, order="asc", after=following.last_id)
    assert texts(last.data) == [("user", "five")] and last.has_more is False
    newest = client.conversations.items.list(conversation.id, limit=2)  # desc by default, as OpenAI lists
    assert texts(newest.data) == [("user", "five"), ("user", "four")] and newest.first_id == newest.data[0].id
    every = client.conversations.items.list(conversation.id, limit=2, order="desc")
    assert [t for _, t in texts(every)] == list(reversed(words))  # the SDK follows has_more / after
    # the OpenAI Agents SDK's OpenAIConversationsSession.get_items(limit=3): newest first, then reversed
    assert [t for _, t in texts(client.conversations.items.list(conversation.id, limit=3, order="desc"))][:3] == [
        "five",
        "four",
        "three",
    ]


def test_the_budget_counts_the_conversation_as_input(server):
    """A short turn naming a long conversation sends all of it upstream: the worst case counts it."""
    put_module(server, "budget", {}, enabled=True)
    key = client_key(server, budget_usd="0.05", budget_period="day")  # 5_000 estimated input tokens
    client = sdk(server, key)
    text = "x" * 14_000  # 3_500 tokens: one such text fits, two do not
    conversation = client.conversations.create(items=[{"role": "user", "content": text}])
    assert client.responses.create(model=TRANSLATED, input=text, max_output_tokens=16).output_text == TEXT
    with pytest.raises(RateLimitError) as refused:
        client.responses.create(model=TRANSLATED, conversation=conversation.id, input=text, max_output_tokens=16)
    assert refused.value.body["code"] == "budget_exceeded"


def test_a_conversation_is_bounded_by_the_body_limit(server, mock):
    client = sdk(server)
    big = "y" * (MAX_BODY // 2)
    conversation = client.conversations.create(items=[{"role": "user", "content": big}])
    with pytest.raises(BadRequestError) as refused:
        client.conversations.items.create(conversation.id, items=[{"role": "user", "content": big}])
    assert refused.value.body["code"] == "conversation_too_large"
    with pytest.raises(BadRequestError) as refused:  # it fits alone, not with this request beside it
        client.responses.create(model=TRANSLATED, conversation=conversation.id, input=big)
    assert (refused.value.body["code"], refused.value.body["param"]) == ("conversation_too_large", "conversation")
    assert mock.requests == []


def test_conversation_calls_count_against_the_keys_rpm_and_are_traced_at_cost_zero(server):
    put_module(server, "ratelimit", {}, enabled=True)
    key = client_key(server, rpm=3)
    status, headers, made = call(server, key, "POST", "/v1/conversations", {})
    assert status == 200, made
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["endpoint"], trace["status"], trace["cost_uc"]) == ("conversations.create", 200, 0)
    status, headers, _ = call(server, key, "GET", f"/v1/conversations/{made['id']}/items")
    assert server.trace(headers["x-stockyard-trace-id"])["endpoint"] == "conversations.items.list"
    assert call(server, key, "GET", f"/v1/conversations/{made['id']}")[0] == 200
    status, _, refused = call(server, key, "GET", f"/v1/conversations/{made['id']}")
    assert status == 429, refused


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_read_of_the_collection_is_a_405_traced_as_the_collection(server, method):
    """Was traced as ``conversations.create``: the collection takes only POST (OpenAI lists none)."""
    key = client_key(server)
    status, headers, _ = server.request(method, "/v1/conversations", None, headers={"Authorization": f"Bearer {key}"})
    assert (status, headers.get("allow")) == (405, "POST")
    key_id = server.db_rows("SELECT id FROM client_keys WHERE prefix = ?", (key[:12],))[0]["id"]
    traced = wait_for(
        lambda: server.db_rows("SELECT endpoint FROM traces WHERE key_id = ? AND status = 405", (key_id,))
    )
    assert [t["endpoint"] for t in traced] == ["conversations"]


def test_bad_input_is_an_openai_shaped_4xx(server, mock):
    key = client_key(server)
    client = sdk(server, key)
    conversation = client.conversations.create()
    path = f"/v1/conversations/{conversation.id}"
    first = client.responses.create(model=PASSED, input="hi")
    cases = [
        ("GET", "/v1/conversations/conv_unknown", None, 404, None),
        ("POST", "/v1/responses", {"model": TRANSLATED, "input": "x", "conversation": "conv_nil"}, 404, "conversation"),
        ("GET", path + "/items?limit=0", None, 400, "limit"),
        ("GET", path + "/items?limit=101", None, 400, "limit"),
        ("GET", path + "/items?limit=ten", None, 400, "limit"),
        ("GET", path + "/items?order=sideways", None, 400, "order"),
        ("GET", path + "/items?after=msg_unknown", None, 400, "after"),
        ("GET", path + "/items/msg_unknown", None, 404, None),
        ("POST", path + "/items", {}, 400, "items"),
        ("POST", path + "/items", {"items": "hello"}, 400, "items"),
        ("POST", path + "/items", {"items": [{"type": "message", "content": "no role"}]}, 400, "items[0].role"),
        ("POST", path + "/items", {"items": [{"type": "item_reference", "id": "msg_1"}]}, 400, "items[0].type"),
        ("POST", path, {}, 400, "metadata"),
        ("POST", "/v1/conversations", {"metadata": {str(i): "v" for i in range(17)}}, 400, "metadata"),
        ("POST", "/v1/conversations", {"metadata": {"n": 1}}, 400, "metadata"),
        ("PUT", path, {}, 405, None),
        ("GET", "/v1/conversations", None, 405, None),
        ("POST", "/v1/conversations", "not an object", 400, None),
        ("POST", "/v1/responses", {"model": PASSED, "input": "x", "conversation": 7}, 400, "conversation"),
        (
            "POST",
            "/v1/responses",
            {"model": PASSED, "input": "x", "conversation": conversation.id, "background": True},
            400,
            "background",
        ),
        (
            "POST",
            "/v1/responses",
            {"model": PASSED, "input": "x", "conversation": conversation.id, "previous_response_id": first.id},
            400,
            "conversation",
        ),
    ]
    mock.clear()
    for method, target, body, want, param in cases:
        status, _, reply = call(server, key, method, target, body)
        assert status == want, (method, target, reply)
        error = reply["error"]
        assert error["message"] and (want != 400 or error["type"] == "invalid_request_error"), error
        assert error["param"] == param, (target, error)
    assert mock.requests == []
    assert client.conversations.items.list(conversation.id).data == []


def test_a_joined_turn_is_never_a_cache_replay(server, mock):
    """A first turn of an empty conversation is the same body upstream as a plain ``store: false``
    request, which the cache replays: the turn must still reach the provider and be appended."""
    put_module(server, "cache", {}, enabled=True)
    client = sdk(server)
    plain = dict(model=PASSED, input=[{"role": "user", "content": "same words"}], store=False)
    wait_for(
        lambda: client.responses.with_raw_response.create(**plain).headers["x-stockyard-cache"] == "hit",
        what="the answer cached (written by the writer thread)",
    )
    conversation = client.conversations.create()
    calls = len(mock.requests)
    turn = client.responses.with_raw_response.create(**plain, conversation=conversation.id)
    assert len(mock.requests) == calls + 1
    assert "x-stockyard-cache" not in turn.headers
    assert texts(client.conversations.items.list(conversation.id, order="asc")) == [
        ("user", "same words"),
        ("assistant", TEXT),
    ]


def test_a_batch_line_naming_a_conversation_is_refused(server, mock):
    """A batch line runs at the provider, which holds none of Stockyard's conversations."""
    client = sdk(server)
    conversation = client.conversations.create()
    line = {"custom_id": "r", "method": "POST", "url": "/v1/responses"}
    body = {"model": PASSED, "input": "hi", "conversation": conversation.id}
    data = (json.dumps({**line, "body": body}) + "\n").encode()
    with pytest.raises(BadRequestError) as refused:
        client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert refused.value.body["code"] == "conversation_in_batch" and "line 1" in refused.value.body["message"]


def test_in_open_mode_every_caller_is_the_one_owner(openai_server, mock):
    """Without client keys (open mode) there is one owner, as for stored responses."""
    one, two = (openai_server.openai("anything") for _ in range(2))
    conversation = one.conversations.create(items=[{"role": "user", "content": "shared"}])
    two.responses.create(model=PASSED, conversation=conversation.id, input="and more")
    assert texts(two.conversations.items.list(conversation.id, order="asc")) == [
        ("user", "shared"),
        ("user", "and more"),
        ("assistant", TEXT),
    ]


@pytest.mark.parametrize("escaped", ["\\u0000", "\\ud800"])
def test_an_id_no_stored_row_can_hold_is_unknown_not_a_server_error(server, escaped):
    """A NUL or a lone surrogate is valid JSON and no id Stockyard or a provider made: PostgreSQL's
    text cannot hold either, and asking the store with a NUL failed (a 500). Unknown: the 404 (a
    body with a lone surrogate may be the 400 every such body gets where it must be encoded)."""
    key = client_key(server)
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    bodies = {
        "/v1/responses": '{"model": "%s", "input": "hi", "conversation": "conv_%s"}' % (PASSED, escaped),
        "/v1/chat/completions": '{"model": "%s", "messages": [{"role": "user", "content": [{"type": "file", '
        '"file": {"file_id": "file-%s"}}]}]}' % (PASSED, escaped),
    }
    for path, body in bodies.items():
        status, _, raw = server.request("POST", path, raw=body.encode(), headers=auth)
        assert status == 404 or (status == 400 and escaped == "\\ud800"), (path, raw)
    for path in ("/v1/conversations/conv_%00", "/v1/files/file-%00", "/v1/batches/batch_%00", "/v1/responses/resp_%00"):
        status, _, raw = server.request("GET", path, headers=auth)
        assert status == 404, (path, raw)
    assert "Traceback" not in server.log

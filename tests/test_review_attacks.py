"""An attacker's review of the Responses API: what one client key can do to another key's
conversations, to a budget, and to the server's memory, against a real server and the mock.

``gpt-4o-mini`` is passed through (the mock keeps the state, like OpenAI); ``claude-haiku-4-5``
is translated (Stockyard keeps the state).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import ServerProcess, served, wait_for
from mock_upstream import RESPONSES_STATE, Reply, openai_chat, responses_object
from module_helpers import api, client_key, disable_all, module_env, put_module

from stockyard.context import RequestContext
from stockyard.conversations import Conversations
from stockyard.store import Store, Writer, db

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
    with served(pyz_path, tmp_path_factory, "review", env) as srv:
        # $10 per 1M input tokens, output free: 1_000 µ¢ per estimated input token
        assert api(srv, "POST", "/api/prices", {"model": TRANSLATED, "input": "10", "output": "0"})[0] == 200
        yield srv


@pytest.fixture(autouse=True)
def fresh(server, mock):
    disable_all(server)
    put_module(server, "budget", {}, enabled=True)
    mock.clear()


def respond(server: ServerProcess, key: str, path: str = "/v1/responses", **body) -> tuple[int, dict]:
    status, _, raw = server.request("POST", path, body, headers={"Authorization": f"Bearer {key}"})
    return status, json.loads(raw)


def test_a_provider_response_stockyard_did_not_issue_cannot_be_continued(server, mock):
    """The provider key is shared by every client key: an id the provider knows (made by another
    app on the same account, or a row retention deleted) is not this key's to continue."""
    RESPONSES_STATE.keep({}, {"id": "resp_madeelsewhere0001", "object": "response", "output": []})
    status, reply = respond(
        server, client_key(server), model=PASSED, input="and then?", previous_response_id="resp_madeelsewhere0001"
    )
    assert status == 404 and reply["error"]["param"] == "previous_response_id", reply
    assert mock.last("/v1/responses") is None  # the provider was never asked


@pytest.mark.parametrize("model", [PASSED, TRANSLATED])
def test_the_cache_does_not_answer_another_keys_conversation(server, mock, model):
    """A ``store: false`` continuation is cacheable; a cache hit must not skip the key check."""
    put_module(server, "cache", {}, enabled=True)
    alice, bob = client_key(server), client_key(server)
    status, first = respond(server, alice, model=model, input="secret plan")
    assert status == 200, first
    turn = {"model": model, "input": "go on", "previous_response_id": first["id"], "store": False}
    assert respond(server, alice, **turn)[0] == 200
    status, reply = respond(server, bob, **turn)
    assert status == 404 and reply["error"]["code"] == "not_found", reply


def test_the_budget_counts_the_conversation_stockyard_rebuilds(server, mock):
    """A tiny body naming a long stored conversation sends all of it upstream: the worst case
    must count it, or a budgeted key spends past its budget one long conversation at a time."""
    key = client_key(server, budget_usd="0.05", budget_period="day")  # 5_000 estimated input tokens
    text = "x" * 14_000  # 3_500 tokens: one such body fits, two do not
    status, first = respond(server, key, model=TRANSLATED, input=text, max_output_tokens=16)
    assert status == 200, first
    status, reply = respond(
        server, key, model=TRANSLATED, input=text, max_output_tokens=16, previous_response_id=first["id"]
    )
    assert status == 429 and reply["error"]["code"] == "budget_exceeded", reply


def test_a_rebuilt_conversation_is_bounded_by_the_body_limit(server, mock):
    """Stored turns are compressed: a long chain of repetitive turns would expand without bound
    in memory when a request names its last turn. Past the body limit it is a 400."""
    key = client_key(server)
    text = "y" * (MAX_BODY // 3)
    previous = None
    for _ in range(2):
        status, reply = respond(server, key, model=TRANSLATED, input=text, previous_response_id=previous)
        assert status == 200, reply
        previous = reply["id"]
    calls = len(mock.requests)
    status, reply = respond(server, key, model=TRANSLATED, input=text, previous_response_id=previous)
    assert status == 400 and reply["error"]["code"] == "conversation_too_large", reply
    assert reply["error"]["param"] == "previous_response_id"
    assert len(mock.requests) == calls


def test_a_repeated_provider_id_stays_with_the_key_that_got_it_first(server, mock):
    """A careless compatible provider answering two requests with the same id: the second key
    must not take the first key's response over (read, delete, continue)."""
    alice, bob = client_key(server), client_key(server)
    same = responses_object({}, 4242, PASSED)
    mock.enqueue(Reply(json=same), Reply(json=same))
    RESPONSES_STATE.keep({}, same)  # the provider keeps it (a scripted reply skips that)
    status, first = respond(server, alice, model=PASSED, input="alice's")
    assert status == 200, first
    status, second = respond(server, bob, model=PASSED, input="bob's")
    assert status == 200 and second["id"] == first["id"], second
    as_bob = {"Authorization": f"Bearer {bob}"}
    assert server.request("GET", f"/v1/responses/{first['id']}", headers=as_bob)[0] == 404
    assert server.request("DELETE", f"/v1/responses/{first['id']}", headers=as_bob)[0] == 404
    as_alice = {"Authorization": f"Bearer {alice}"}
    assert server.request("GET", f"/v1/responses/{first['id']}", headers=as_alice)[0] == 200
    assert server.request("DELETE", f"/v1/responses/{first['id']}", headers=as_alice)[0] == 200


def test_include_of_the_wrong_type_is_a_400(server):
    key = client_key(server)
    for include in (5, [5], [{"a": 1}], "reasoning.encrypted_content"):
        status, reply = respond(server, key, model=TRANSLATED, input="hi", include=include)
        assert status == 400 and reply["error"]["param"] == "include", reply


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("served", [5, ["x"], {"a": 1}])
def test_a_provider_model_name_of_the_wrong_type_is_ignored(server, mock, stream, served):
    """An odd provider answer (``"model": 5``) must not break pricing and tracing into a 500."""
    key = client_key(server)
    response = {**responses_object({}, 1, PASSED), "model": served}
    event = {"type": "response.completed", "sequence_number": 0, "response": response}
    mock.enqueue(Reply(sse=[json.dumps(event)]) if stream else Reply(json=response))
    status, headers, raw = server.request(
        "POST",
        "/v1/responses",
        {"model": PASSED, "input": "hi", "stream": stream},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert status == 200, raw
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["served_model"] == PASSED and trace["cost_uc"] > 0, trace
    mock.enqueue(Reply(json={**openai_chat({"messages": []}, 1, PASSED), "model": served}))
    status, _, raw = server.request(
        "POST",
        "/v1/chat/completions",
        {"model": PASSED, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert status == 200, raw


def test_an_absurd_provider_token_count_is_capped_not_dropped(server, mock):
    """``input_tokens: 10**40`` made the trace row overflow SQLite: the request vanished from
    the costs. The count is capped; the request is traced and charged."""
    key = client_key(server)
    response = {**responses_object({}, 1, PASSED), "usage": {"input_tokens": 10**40, "output_tokens": 1}}
    mock.enqueue(Reply(json=response))
    status, headers, raw = server.request(
        "POST", "/v1/responses", {"model": PASSED, "input": "hi"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert status == 200, raw
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert 0 < trace["prompt_tokens"] <= 2**40 and trace["cost_uc"] > 0, trace


def test_the_budget_counts_the_conversation_a_provider_keeps(server, mock):
    """Passed through, the provider bills the whole stored conversation as input of the next
    turn: the worst case counts what the previous turn used, not only the tiny new body."""
    assert api(server, "POST", "/api/prices", {"model": PASSED, "input": "10", "output": "0"})[0] == 200
    key = client_key(server, budget_usd="0.05", budget_period="day")  # 5_000 input tokens at $10/1M
    first = {**responses_object({}, 6161, PASSED), "usage": {"input_tokens": 4_000, "output_tokens": 2_000}}
    mock.enqueue(Reply(json=first))
    RESPONSES_STATE.keep({}, first)
    status, reply = respond(server, key, model=PASSED, input="hi", max_output_tokens=16)
    assert status == 200 and reply["id"] == first["id"], reply  # $0.04 spent, $0.01 left
    status, reply = respond(
        server, key, model=PASSED, input="go on", max_output_tokens=16, previous_response_id=first["id"]
    )
    assert status == 429 and reply["error"]["code"] == "budget_exceeded", reply  # 6_000 more tokens upstream


def test_a_broken_pass_through_stream_still_leaves_its_id_with_its_key(server, mock):
    """The client has the id from ``response.created`` on; the provider keeps the response even
    if the stream breaks. Stockyard records whose it is from then, so only that key can use it."""
    key = client_key(server)
    created = {**responses_object({}, 7171, PASSED), "status": "in_progress"}
    mock.enqueue(Reply(sse=[json.dumps({"type": "response.created", "sequence_number": 0, "response": created})]))
    status, _, raw = server.request(
        "POST",
        "/v1/responses",
        {"model": PASSED, "input": "hi", "stream": True},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert status == 200 and created["id"].encode() in raw, raw
    wait_for(lambda: server.db_rows("SELECT id FROM responses WHERE id = ?", (created["id"],)), what="the row")


def test_a_committed_turn_does_not_stay_in_memory(tmp_path):
    """A turn is held in memory only until the writer commits it (then lookups read the
    database), not for a fixed minute: a client sending body-limit turns cannot make the
    server hold a minute of them."""
    path = tmp_path / "stockyard.db"
    db.open_and_migrate(path)[0].close()
    writer = Writer(path).start()
    try:
        conversations = Conversations(Store(path, writer), None, None, None, MAX_BODY)  # type: ignore[arg-type]
        ctx = RequestContext("responses", "openai", "127.0.0.1", {})
        ctx.body, ctx.raw = {"model": TRANSLATED, "input": "z" * 100_000}, b"{}"
        conversations.open(ctx)
        assert ctx.conversation is not None
        response_id = ctx.conversation.response_id
        translated = SimpleNamespace(name="anthropic", speaks_responses=False)
        ctx.conversation.keep(translated, {"id": response_id, "object": "response", "output": []})  # type: ignore[arg-type]
        wait_for(lambda: not conversations._pending, what="the turn to leave memory")
        stored = conversations.lookup(response_id)
        assert stored is not None and stored.input_items and len(stored.input_items[0]["content"][0]["text"]) == 100_000
    finally:
        writer.stop()

"""Anthropic's code execution containers through Stockyard with the official anthropic SDK, owned per key.

The code execution tool runs in a container Anthropic keeps under Stockyard's one provider key; an
answer names it (``"container": {"id": …, "expires_at": …}``, streamed in ``message_delta``) and a
later request may run code in it again by naming it (``"container": "container_…"``, or the Skills
API's ``{"id": …, "skills": [...]}``). A container belongs to the key whose answer first named it:
another key naming it — in a message, a token count or a message batch request — gets the 404 an
unknown container gets, and no call reaches the provider; a malformed ``container`` is a 400. Then
an attacker's pass: spellings, escapes, repeated members and nestings of the same name.
"""

from __future__ import annotations

import json

import anthropic
import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import MockUpstream, Reply, anthropic_blocks_stream

ANTHROPIC_KEY = "sk-ant-test-containers-0123456789abcdefANTHROPICSECRET"
MODEL = "claude-containers-model"
TOOL = {"type": "code_execution_20250825", "name": "code_execution"}
ASK = [{"role": "user", "content": "make a csv"}]
VERSION = {"anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url)
    keys = {"alice": [], "bob": [], "carol": []}
    with served(pyz_path, tmp_path_factory, "acontainers", env, keys, never_logged=(ANTHROPIC_KEY,)) as srv:
        yield srv


@pytest.fixture(scope="module")
def alices(server: ServerProcess) -> str:
    """The container alice's first code execution answer ran in."""
    answer = server.anthropic("alice").messages.create(model=MODEL, max_tokens=16, tools=[TOOL], messages=ASK)
    assert answer.container is not None and answer.container.id.startswith("container_")
    return answer.container.id


def error_of(failure: pytest.ExceptionInfo) -> dict:
    """The error body of an SDK failure, which must be Anthropic's shape."""
    body = failure.value.response.json()
    assert body["type"] == "error" and set(body["error"]) >= {"type", "message"}, body
    return body["error"]


def silent(mock: MockUpstream, since: int) -> bool:
    """No call reached the provider after the first ``since`` recorded."""
    return mock.requests[since:] == []


def batch_of(params: dict) -> list[dict]:
    body = {"model": MODEL, "max_tokens": 8, "tools": [TOOL], "messages": ASK, **params}
    return [{"custom_id": "one", "params": body}]


def post(server: ServerProcess, path: str, text: str, key: str = "bob") -> tuple[int, dict]:
    """A raw Anthropic-dialect POST of ``text`` as it is written (escapes and repeated members kept)."""
    status, _, body = server.request("POST", path, raw=text.encode(), headers={**server.auth(key), **VERSION})
    return status, json.loads(body) if body else {}


def test_the_key_whose_answer_named_a_container_runs_code_in_it_again(server: ServerProcess, alices: str) -> None:
    client = server.anthropic("alice")
    again = client.messages.create(model=MODEL, max_tokens=16, tools=[TOOL], messages=ASK, container=alices)
    assert again.container is not None and again.container.id == alices
    skills = client.messages.create(model=MODEL, max_tokens=16, tools=[TOOL], messages=ASK, container={"id": alices})
    assert skills.container is not None and skills.container.id == alices
    counted = client.messages.count_tokens(model=MODEL, messages=ASK, extra_body={"container": alices})
    assert counted.input_tokens > 0
    batch = client.messages.batches.create(requests=batch_of({"container": alices}))  # type: ignore[arg-type]
    assert batch.id.startswith("msgbatch_")
    rows = server.db_rows("SELECT key_id, kind FROM owned_objects WHERE id = ?", (alices,))
    assert [r["kind"] for r in rows] == ["anthropic_container"]
    alice_id = server.db_rows("SELECT id FROM client_keys WHERE name = 'alice'")[0]["id"]
    assert rows[0]["key_id"] == alice_id


def test_another_keys_container_is_missing_everywhere_unasked(
    server: ServerProcess, mock: MockUpstream, alices: str
) -> None:
    bob = server.anthropic("bob")
    before = len(mock.requests)
    for attempt in (
        lambda: bob.messages.create(model=MODEL, max_tokens=8, tools=[TOOL], messages=ASK, container=alices),
        lambda: bob.messages.create(model=MODEL, max_tokens=8, tools=[TOOL], messages=ASK, container={"id": alices}),
        lambda: bob.messages.count_tokens(model=MODEL, messages=ASK, extra_body={"container": alices}),
        lambda: bob.messages.batches.create(requests=batch_of({"container": alices})),  # type: ignore[arg-type]
    ):
        with pytest.raises(anthropic.NotFoundError) as failure:
            attempt()
        error = error_of(failure)
        assert error["type"] == "not_found_error" and alices in error["message"]
    with pytest.raises(anthropic.NotFoundError):  # a stream is refused before it starts
        with bob.messages.stream(model=MODEL, max_tokens=8, tools=[TOOL], messages=ASK, container=alices) as stream:
            stream.get_final_message()
    assert silent(mock, before)  # not one call reached the provider
    mine = bob.messages.create(model=MODEL, max_tokens=8, tools=[TOOL], messages=ASK)  # bob's own: a new one
    assert mine.container is not None and mine.container.id != alices


def test_a_container_no_key_owns_is_missing(server: ServerProcess, mock: MockUpstream) -> None:
    """One made outside Stockyard (or before containers were owned) is refused as OpenAI's are."""
    before = len(mock.requests)
    with pytest.raises(anthropic.NotFoundError) as failure:
        server.anthropic("alice").messages.create(
            model=MODEL, max_tokens=8, tools=[TOOL], messages=ASK, container="container_011madeelsewhere"
        )
    assert error_of(failure)["type"] == "not_found_error"
    assert silent(mock, before)


def test_a_streamed_answers_container_is_the_keys(server: ServerProcess, mock: MockUpstream) -> None:
    carol = server.anthropic("carol")
    with carol.messages.stream(model=MODEL, max_tokens=16, tools=[TOOL], messages=ASK) as stream:
        final = stream.get_final_message()
    assert final.container is not None
    streamed = final.container.id
    again = carol.messages.create(model=MODEL, max_tokens=16, tools=[TOOL], messages=ASK, container=streamed)
    assert again.container is not None and again.container.id == streamed
    before = len(mock.requests)
    with pytest.raises(anthropic.NotFoundError):
        server.anthropic("bob").messages.create(
            model=MODEL, max_tokens=8, tools=[TOOL], messages=ASK, container=streamed
        )
    assert silent(mock, before)


def test_a_container_named_in_message_start_is_claimed_too(server: ServerProcess, mock: MockUpstream) -> None:
    """A stream may name its container in ``message_start``'s message as well as in ``message_delta``."""
    events = anthropic_blocks_stream([{"type": "text", "text": "done"}], 1, MODEL)
    start = json.loads(events[0].split("data: ", 1)[1])
    start["message"]["container"] = {"id": "container_011fromstart", "expires_at": "2030-01-01T00:00:00Z"}
    mock.enqueue(Reply(sse=[f"event: message_start\ndata: {json.dumps(start)}\n\n", *events[1:]]))
    with server.anthropic("carol").messages.stream(model=MODEL, max_tokens=8, tools=[TOOL], messages=ASK) as stream:
        stream.get_final_message()
    rows = server.db_rows("SELECT kind FROM owned_objects WHERE id = 'container_011fromstart'")
    assert rows == [{"kind": "anthropic_container"}]


MALFORMED = [123, True, ["container_x"], {"id": 5}, {"id": ""}, {"id": ["container_x"]}, "", {"skills": "x", "id": 1}]


@pytest.mark.parametrize("value", MALFORMED, ids=[json.dumps(v) for v in MALFORMED])
def test_a_malformed_container_is_a_400_unasked(server: ServerProcess, mock: MockUpstream, value: object) -> None:
    before = len(mock.requests)
    body = {"model": MODEL, "max_tokens": 8, "tools": [TOOL], "messages": ASK, "container": value}
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        status, answer = post(server, path, json.dumps(body), "alice")
        assert status == 400, (path, answer)
        assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
        assert "container" in answer["error"]["message"]
    status, answer = post(server, "/v1/messages/batches", json.dumps({"requests": batch_of({"container": value})}))
    assert status == 400 and "requests.0.params" in answer["error"]["message"], answer
    assert silent(mock, before)


def test_no_container_and_a_new_skills_container_pass(server: ServerProcess) -> None:
    client = server.anthropic("alice")
    for value in (None, {}, {"id": None}, {"skills": []}):
        body = {"model": MODEL, "max_tokens": 8, "tools": [TOOL], "messages": ASK, "container": value}
        status, answer = post(server, "/v1/messages", json.dumps(body), "alice")
        assert status == 200 and answer["container"]["id"].startswith("container_"), (value, answer)
    assert client.messages.create(model=MODEL, max_tokens=8, messages=ASK).content


def test_a_claude_request_to_another_provider_naming_a_container_is_a_clear_400(
    server: ServerProcess, alices: str
) -> None:
    client = server.anthropic("alice")
    with pytest.raises(anthropic.BadRequestError) as failure:
        client.messages.create(model="gpt-4o-mini", max_tokens=8, messages=ASK, container=alices)
    assert "container" in error_of(failure)["message"]
    with pytest.raises(anthropic.NotFoundError):  # another key's: missing, as on Claude
        server.anthropic("bob").messages.create(model="gpt-4o-mini", max_tokens=8, messages=ASK, container=alices)


# --------------------------------------------------------------------------- an attacker's pass


def test_spellings_of_another_keys_container_are_not_it(server: ServerProcess, mock: MockUpstream, alices: str) -> None:
    """Bob writes alice's container every way the JSON allows: each is missing, unasked."""
    body = {"model": MODEL, "max_tokens": 8, "tools": [TOOL], "messages": ASK}
    text = json.dumps(body)[:-1]  # the members but the closing brace: a container member goes after them
    theirs = json.dumps(alices)
    attempts = {
        "skills shape": f'{text}, "container": {{"id": {theirs}, "skills": []}}}}',
        "escaped member name": f'{text}, "\\u0063ontainer": {theirs}}}',
        "escaped id": f'{text}, "container": "{alices[:3]}\\u{ord(alices[3]):04x}{alices[4:]}"}}',
        "escaped id member": f'{text}, "container": {{"\\u0069d": {theirs}}}}}',
        "padded": f'{text}, "container": {json.dumps(" " + alices + " ")}}}',
        "upper case": f'{text}, "container": {json.dumps(alices.upper())}}}',
        "trailing newline": f'{text}, "container": {json.dumps(alices + chr(10))}}}',
        "nul after": f'{text}, "container": "{alices}\\u0000"}}',
    }
    for where, sent in attempts.items():
        before = len(mock.requests)
        for path in ("/v1/messages", "/v1/messages?beta=true", "/v1/messages/count_tokens"):
            status, answer = post(server, path, sent)
            assert status == 404 and answer["error"]["type"] == "not_found_error", (where, path, answer)
        batch = f'{{"requests": [{{"custom_id": "one", "params": {sent}}}]}}'
        status, answer = post(server, "/v1/messages/batches", batch)
        assert status == 404 and answer["error"]["type"] == "not_found_error", (where, answer)
        assert silent(mock, before), where


def test_a_repeated_container_member_is_refused(server: ServerProcess, mock: MockUpstream, alices: str) -> None:
    """A JSON reader that keeps the first of two members would check bob's own, a provider that keeps
    the last would run alice's: two are a 400, in a batch request too."""
    own = server.anthropic("bob").messages.create(model=MODEL, max_tokens=8, tools=[TOOL], messages=ASK)
    assert own.container is not None
    mine, theirs = json.dumps(own.container.id), json.dumps(alices)
    text = json.dumps({"model": MODEL, "max_tokens": 8, "tools": [TOOL], "messages": ASK})[:-1]
    before = len(mock.requests)
    for sent in (
        f'{text}, "container": {mine}, "container": {theirs}}}',
        f'{text}, "container": {mine}, "\\u0063ontainer": {theirs}}}',
        f'{text}, "container": {{"id": {mine}, "id": {theirs}}}}}',
    ):
        status, answer = post(server, "/v1/messages", sent)
        assert status == 400 and answer["type"] == "error", (sent, answer)
        batch = f'{{"requests": [{{"custom_id": "a", "params": {sent}}}]}}'
        status, answer = post(server, "/v1/messages/batches", batch)
        assert status == 400 and answer["type"] == "error", (sent, answer)
    assert silent(mock, before)


def test_a_container_named_where_anthropic_reads_none_runs_nowhere_of_theirs(
    server: ServerProcess, mock: MockUpstream, alices: str
) -> None:
    """Only the top-level member names a container: the same name nested (an SDK's ``extra_body`` sent
    as a field, ``metadata``, a tool's own arguments) is not read as one, so it cannot put bob's
    code in alice's container."""
    bob = server.anthropic("bob")
    for extra in (
        {"extra_body": {"container": alices}},
        {"metadata": {"container": alices}},
    ):
        before = len(mock.requests)
        answer = bob.messages.create(model=MODEL, max_tokens=8, tools=[TOOL], messages=ASK, extra_body=extra)
        assert answer.container is not None and answer.container.id != alices, extra
        assert len(mock.requests) == before + 1  # it went on, as a body naming no container


def test_open_mode_claims_for_its_one_owner(pyz_path, cache_home, mock, tmp_path) -> None:
    env = mock_env(cache_home, mock, ANTHROPIC_API_KEY="sk-ant-test-open-0123456789", ANTHROPIC_BASE_URL=mock.url)
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        client = srv.anthropic("unused")
        made = client.messages.create(model=MODEL, max_tokens=8, tools=[TOOL], messages=ASK).container
        assert made is not None
        assert srv.db_rows("SELECT key_id, kind FROM owned_objects WHERE id = ?", (made.id,)) == [
            {"key_id": "", "kind": "anthropic_container"}
        ]
        again = client.messages.create(model=MODEL, max_tokens=8, tools=[TOOL], messages=ASK, container=made.id)
        assert again.container is not None and again.container.id == made.id
        with pytest.raises(anthropic.BadRequestError):  # its shape is still checked
            client.messages.create(model=MODEL, max_tokens=8, messages=ASK, extra_body={"container": 5})
    finally:
        srv.stop()
    assert "Traceback" not in srv.log

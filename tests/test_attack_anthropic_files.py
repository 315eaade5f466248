"""An attacker's pass over Anthropic's Files API through Stockyard (``anthropic_files``).

The attacker holds a client key of their own and knows (or guesses) another key's file ids. They
try header games to reach the other API's files, id tricks, another key's cursor, and naming the
victim's file in every place a Messages body can hold a ``file_id``. Each attempt must end as a
missing file does (Anthropic's 404 or an empty page) — and, where the answer is a refusal, without
a call reaching the provider (the mock records every call).
"""

from __future__ import annotations

import json

import anthropic
import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import MockUpstream

ANTHROPIC_KEY = "sk-ant-test-attack-files-0123456789abcdefSECRET"
MODEL = "claude-attack-files"
VERSION = {"anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url)
    keys = {"victim": [], "attacker": []}
    with served(pyz_path, tmp_path_factory, "afattack", env, keys, never_logged=(ANTHROPIC_KEY,)) as srv:
        yield srv


@pytest.fixture(scope="module")
def victims(server: ServerProcess) -> dict[str, str]:
    """The victim's Anthropic file and OpenAI file."""
    anthropic_file = server.anthropic("victim").beta.files.upload(file=("v.txt", b"victim's words", "text/plain"))
    openai_file = server.openai("victim").files.create(file=("v.jsonl", b"{}\n"), purpose="assistants")
    return {"anthropic": anthropic_file.id, "openai": openai_file.id}


def raw(server: ServerProcess, method: str, path: str, key: str = "attacker", **headers: str) -> tuple[int, dict]:
    status, _, body = server.request(method, path, headers={**server.auth(key), **headers})
    return status, json.loads(body) if body else {}


def silent(mock: MockUpstream, since: int) -> bool:
    """No call reached the provider after the first ``since`` recorded."""
    return mock.requests[since:] == []


def test_header_games_reach_neither_api_across(server: ServerProcess, mock: MockUpstream, victims) -> None:
    before = len(mock.requests)
    # an OpenAI file asked for the Anthropic way, by its own key even: not an Anthropic file
    status, body = raw(server, "GET", f"/v1/files/{victims['openai']}", "victim", **VERSION)
    assert status == 404 and body["type"] == "error" and body["error"]["type"] == "not_found_error"
    status, body = raw(server, "GET", f"/v1/files/{victims['openai']}/content", "victim", **{"anthropic-beta": "x"})
    assert status == 404 and body["type"] == "error"
    # an Anthropic file asked for the OpenAI way (no anthropic headers): not an OpenAI file
    status, body = raw(server, "GET", f"/v1/files/{victims['anthropic']}", "victim")
    assert status == 404 and body["error"]["type"] == "invalid_request_error" and "type" not in body
    status, body = raw(server, "DELETE", f"/v1/files/{victims['anthropic']}", "victim")
    assert status == 404
    assert silent(mock, before)
    # a provider named by header must be an Anthropic one
    status, body = raw(server, "GET", "/v1/files", **VERSION, **{"x-stockyard-provider": "openai"})
    assert status == 400 and body["type"] == "error" and "Anthropic" in body["error"]["message"]
    status, body = raw(server, "PATCH", f"/v1/files/{victims['anthropic']}", **VERSION)
    assert status == 405 and body["type"] == "error"
    status, body = raw(server, "GET", "/v1/files", "victim", **VERSION, **{"anthropic-beta": "bad beta\tvalue!"})
    assert status == 400 and body["type"] == "error"  # a header that could break a line is never relayed
    assert silent(mock, before)


def test_id_tricks_find_nothing(server: ServerProcess, mock: MockUpstream, victims) -> None:
    theirs = victims["anthropic"]
    before = len(mock.requests)
    for path in (
        f"/v1/files/{theirs.upper()}",
        f"/v1/files/{theirs}.",
        f"/v1/files/{theirs}/content",
        "/v1/files/..",
        "/v1/files/%2e%2e",
        f"/v1/files/{theirs}%00",
        f"/v1/files/..%2f{theirs}",
    ):
        status, body = raw(server, "GET", path, **VERSION)
        assert status == 404, (path, body)
    assert silent(mock, before)


def test_another_keys_cursor_is_an_empty_page_unasked(server: ServerProcess, mock: MockUpstream, victims) -> None:
    server.anthropic("attacker").beta.files.upload(file=("a.txt", b"attacker's", "text/plain"))
    before = len(mock.requests)
    for query in (
        f"after_id={victims['anthropic']}",
        f"before_id={victims['anthropic']}",
        f"page=page_{victims['anthropic']}",
        f"after_id={victims['openai']}",
    ):
        status, body = raw(server, "GET", f"/v1/files?{query}", **VERSION)
        assert status == 200 and body["data"] == [] and body["has_more"] is False, (query, body)
    assert silent(mock, before)
    for query in ("page=somebody-elses-token", f"after_id=x&before_id={victims['anthropic']}", "limit=1001", "ids=x"):
        status, body = raw(server, "GET", f"/v1/files?{query}", **VERSION)
        assert status == 400 and body["type"] == "error", (query, body)
    listed = server.anthropic("attacker").beta.files.list(extra_query={"limit": 1000})
    assert victims["anthropic"] not in [f.id for f in listed.data]


def places(file_id: str) -> list[tuple[str, list[dict], list[dict] | None]]:
    """(where, messages, tools) for every place a Messages body can name a file."""
    source = {"type": "file", "file_id": file_id}
    tool = [{"type": "code_execution_20250825", "name": "code_execution"}]
    ask = {"type": "text", "text": "read it"}
    output = {"type": "code_execution_output", "file_id": file_id}
    return [
        ("document", [{"role": "user", "content": [{"type": "document", "source": source}, ask]}], None),
        ("image", [{"role": "user", "content": [{"type": "image", "source": source}, ask]}], None),
        ("container_upload", [{"role": "user", "content": [{"type": "container_upload", "file_id": file_id}]}], tool),
        (
            "tool_result",
            [
                {"role": "user", "content": "call it"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [{"type": "document", "source": source}],
                        }
                    ],
                },
            ],
            [{"name": "f", "input_schema": {"type": "object"}}],
        ),
        (
            "replayed code execution result",
            [
                {"role": "user", "content": "make a file"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "server_tool_use", "id": "s1", "name": "code_execution", "input": {"code": "x"}},
                        {
                            "type": "code_execution_tool_result",
                            "tool_use_id": "s1",
                            "content": {
                                "type": "code_execution_result",
                                "stdout": "",
                                "stderr": "",
                                "return_code": 0,
                                "content": [output],
                            },
                        },
                    ],
                },
                {"role": "user", "content": "and?"},
            ],
            tool,
        ),
        (
            "escaped member name",
            [{"role": "user", "content": [{"type": "container_upload", "file\\u005fid": file_id}]}],
            tool,
        ),
    ]


def test_a_message_naming_another_keys_file_anywhere_is_a_404_unasked(
    server: ServerProcess, mock: MockUpstream, victims
) -> None:
    theirs = victims["anthropic"]
    before = len(mock.requests)
    for where, messages, tools in places(theirs):
        body: dict = {"model": MODEL, "max_tokens": 8, "messages": messages, **({"tools": tools} if tools else {})}
        text = json.dumps(body).replace("file\\\\u005fid", "file\\u005fid")  # the escape as sent, not doubled
        for path, extra in (
            ("/v1/messages", {}),
            ("/v1/messages?beta=true", {"stream": True}),
            ("/v1/messages/count_tokens", {}),
        ):
            sent = text if not extra else text[:-1] + ', "stream": true}'
            status, _, answer = server.request(
                "POST", path, raw=sent.encode(), headers={**server.auth("attacker"), **VERSION}
            )
            assert status == 404, (where, path, answer)
            assert json.loads(answer)["error"]["type"] == "not_found_error"
        batch = f'{{"requests": [{{"custom_id": "one", "params": {text}}}]}}'.encode()
        status, _, answer = server.request(
            "POST", "/v1/messages/batches", raw=batch, headers={**server.auth("attacker"), **VERSION}
        )
        assert status == 404 and theirs in json.loads(answer)["error"]["message"], (where, answer)
    assert silent(mock, before)
    # the victim's own file, named by the victim, passes (the rule is ownership, not the shape)
    ok = server.anthropic("victim").messages.create(model=MODEL, max_tokens=8, messages=places(theirs)[0][1])
    assert ok.content


def test_uploads_hold_one_file_part(server: ServerProcess, mock: MockUpstream) -> None:
    client = server.anthropic("attacker")
    before = len(mock.requests)
    for files in (
        [("file", ("a.txt", b"a", "text/plain")), ("file", ("b.txt", b"b", "text/plain"))],
        [("other", ("a.txt", b"a", "text/plain"))],
    ):
        with pytest.raises(anthropic.BadRequestError) as failure:
            client.post(
                "/v1/files",
                cast_to=object,
                files=files,
                options={"headers": {"Content-Type": "multipart/form-data"}},
            )
        assert failure.value.response.json()["type"] == "error"
    assert silent(mock, before)

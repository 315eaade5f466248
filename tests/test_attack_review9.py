"""An attacker's pass over this session's new surfaces, from what earlier passes left untried: a
keyless Gemini upload chunk that announces a huge body under a guessed token, a malformed offset on
an upload's ``query`` (was a 500 with a traceback: the offset no query takes was parsed for the
trace), another key's Anthropic container sent through the OpenAI-shaped routes to a Claude model,
and a Responses client replaying earlier hosted search calls to shift what its answer is billed for.

Each assertion fails if the defence it names is taken out."""

from __future__ import annotations

import json

import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import MockUpstream
from rawhttp import connect, read_response
from test_gemini_files import chunk, google_error, send, upload_url
from test_tool_fees import MINI_TOKENS, MINI_WEB

GEMINI_KEY = "AIza-review9-0123456789PROVIDERSECRET"
ANTHROPIC_KEY = "sk-ant-review9-0123456789abcdefANTHROPICSECRET"
CLAUDE = "claude-review9-model"
CODE_TOOL = {"type": "code_execution_20250825", "name": "code_execution"}
ASK = [{"role": "user", "content": "make a csv"}]


@pytest.fixture(scope="module")
def gemini(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=mock.url)
    keys = {"alice": []}
    with served(pyz_path, tmp_path_factory, "review9-gemini", env, keys, never_logged=(GEMINI_KEY,)) as srv:
        yield srv


@pytest.fixture(scope="module")
def claude(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url)
    keys = {"alice": [], "bob": []}
    with served(pyz_path, tmp_path_factory, "review9-claude", env, keys, never_logged=(ANTHROPIC_KEY,)) as srv:
        yield srv


def test_a_keyless_chunk_under_a_guessed_token_is_refused_before_a_byte_of_its_body(gemini, mock) -> None:
    """A keyless sender announcing 1 GB under a well-formed guessed token: the 404 comes at once,
    the body is never invited (Expect: 100-continue) nor spooled, and the provider is not asked."""
    before = len(mock.requests)
    spool = gemini.db.parent / "uploads"
    with connect(gemini) as sock:
        sock.sendall(
            b"POST /upload/v1beta/files?upload_id=" + b"A" * 43 + b"&upload_protocol=resumable HTTP/1.1\r\n"
            b"Host: " + gemini.url.split("://", 1)[1].encode() + b"\r\n"
            b"X-Goog-Upload-Command: upload, finalize\r\nX-Goog-Upload-Offset: 0\r\n"
            b"Content-Type: application/octet-stream\r\nExpect: 100-continue\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        status, head, body = read_response(sock)
    assert status == 404, body  # not 100 Continue: the body was never asked for
    assert json.loads(body)["error"]["status"] == "NOT_FOUND"
    assert {k.lower(): v for k, v in head.items()}.get("connection") == "close"
    assert not spool.exists() or list(spool.iterdir()) == []
    assert len(mock.requests) == before


@pytest.mark.parametrize("offset", ["abc", "-1", "1e3", "9" * 5000, " "])
def test_a_query_with_a_malformed_offset_is_answered_not_a_500(gemini, offset) -> None:
    """A ``query`` takes no offset (google-genai sends none), so none is checked; one sent anyway,
    malformed, must not break the trace line Stockyard writes of the chunk: the query is answered
    as Google answers it (an offset it does not read ignored), and the upload goes on."""
    target = upload_url(gemini, "alice", 8)
    assert chunk(gemini, target, b"abcd", 0, False)[0] == 200
    status, headers, raw = send(
        gemini, "POST", target, b"", {"X-Goog-Upload-Command": "query", "X-Goog-Upload-Offset": offset}
    )
    assert status == 200, raw
    assert headers["x-goog-upload-status"] == "active" and headers["x-goog-upload-size-received"] == "4"
    status, _, raw = chunk(gemini, target, b"efgh", 4, True)
    assert status == 200 and json.loads(raw)["file"]["sizeBytes"] == "8"
    upload = {"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": offset}
    status, _, raw = send(gemini, "POST", target, b"", upload)
    assert status == 404 and google_error(json.loads(raw), 404, "NOT_FOUND")  # finalized: gone


@pytest.fixture(scope="module")
def alices_container(claude: ServerProcess) -> str:
    answer = claude.anthropic("alice").messages.create(model=CLAUDE, max_tokens=16, tools=[CODE_TOOL], messages=ASK)
    assert answer.container is not None and answer.container.id.startswith("container_")
    return answer.container.id


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/chat/completions", {"messages": ASK, "max_tokens": 8}),
        ("/v1/responses", {"input": "make a csv", "max_output_tokens": 16}),
    ],
)
def test_another_keys_container_does_not_travel_through_a_translation(
    claude: ServerProcess, mock: MockUpstream, alices_container: str, path: str, body: dict
) -> None:
    """Bob names alice's container on the OpenAI-shaped routes to a Claude model. At the top level
    (Claude's own spelling) it is refused as a field the translation cannot honour, unasked; with
    ``x-stockyard-drop-unsupported`` a chat request drops it: the Messages request sent carries none.
    In a code interpreter tool it is refused unasked, as an OpenAI container no key of bob's made."""
    before = len(mock.requests)
    tool = {**body, "model": CLAUDE, "tools": [{"type": "code_interpreter", "container": alices_container}]}
    status, _, raw = claude.request("POST", path, body=tool, headers=claude.auth("bob"))
    assert status == 404 and json.loads(raw)["error"]["param"] == "tools[0].container", raw
    sent = {**body, "model": CLAUDE, "container": alices_container}
    status, _, raw = claude.request("POST", path, body=sent, headers=claude.auth("bob"))
    assert status == 400 and json.loads(raw)["error"]["param"] == "container", raw
    dropping = {**claude.auth("bob"), "x-stockyard-drop-unsupported": "true"}
    status, _, raw = claude.request("POST", path, body=sent, headers=dropping)
    if path == "/v1/responses":  # a Responses field no chat translation carries: refused even so
        assert status == 400 and json.loads(raw)["error"]["param"] == "container", raw
        assert mock.requests[before:] == []
        return
    assert status == 200, raw  # answered by Claude: the request went on, without it
    upstream = mock.requests[before:]
    assert len(upstream) == 1 and upstream[0].path.endswith("/messages")  # the refusals were unasked
    assert alices_container.encode() not in upstream[0].body and "container" not in upstream[0].json


@pytest.fixture(scope="module")
def openai(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    with served(pyz_path, tmp_path_factory, "review9-openai", mock_env(cache_home, mock), {"alice": []}) as srv:
        yield srv


@pytest.mark.parametrize("stream", [False, True])
def test_replayed_search_calls_neither_lower_nor_raise_the_calls_billed(openai, stream) -> None:
    """A stateless client sends its earlier hosted search calls back as input items (with ids, without,
    many): the answer is billed for the calls its own output shows, one here, never those sent."""
    replayed = [
        {"type": "web_search_call", "id": f"ws_old_{i}", "status": "completed", "action": {"type": "search"}}
        for i in range(50)
    ] + [{"type": "web_search_call", "status": "completed"}] * 3
    body = {
        "model": "gpt-4o-mini",
        "input": [*replayed, {"role": "user", "content": "more news about cats"}],
        "tools": [{"type": "web_search"}],
        "metadata": {"mock_web_searches": "1"},
        "stream": stream,
    }
    bare = {**body, "input": "more news about cats"}
    costs = []
    for sent in (bare, body):
        status, headers, raw = openai.request("POST", "/v1/responses", sent, headers=openai.auth("alice"))
        assert status == 200, raw[:300]
        trace = openai.trace(headers["x-stockyard-trace-id"])
        assert trace["outcome"] == "ok" and trace["cost_status"] == "exact", trace
        costs.append(trace["cost_uc"])
    assert costs == [MINI_TOKENS + MINI_WEB] * 2, costs  # the same usage either way: one call (its fee and block) each

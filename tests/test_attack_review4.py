"""An attacker's review, part 4 (any key): Gemini-native listing, multipart re-encoding, the
stored Responses routes, bodies nested near the parser's limit. Each test failed on the code it
was written against (a 500 and a traceback, or a provider call past the key's rpm); the quadratic
JSONL split it also found is tested in process (test_files_batches.py)."""

from __future__ import annotations

import json

import pytest
from conftest import mock_env, served

ADMIN = "review4-admin-key-0123456789abcdef"
GEMINI_KEY = "AIza-review4-0123456789abcdefPROVIDERSECRET"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        STOCKYARD_ADMIN_KEY=ADMIN,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
        ANTHROPIC_API_KEY="sk-ant-review4",
        ANTHROPIC_BASE_URL=mock.url,
    )
    with served(pyz_path, tmp_path_factory, "attack4", env, {"plain": [], "slow": ["--rpm", "2"]}) as srv:
        yield srv


# -- 1. GET /v1beta/models?pageToken=… -------------------------------------------------------------


@pytest.mark.parametrize("token", ["%C2%B2", "1" * 5000], ids=["superscript-two", "5000-digits"])  # isdigit, not int()
def test_a_gemini_model_list_page_token_that_is_not_an_int_is_a_400_not_a_500(server, token):
    status, _, raw = server.request(
        "GET", f"/v1beta/models?pageToken={token}", headers={"x-goog-api-key": server.keys["plain"]}
    )
    assert status == 400, (status, raw)


# -- 2. multipart: the routed model written into the form ------------------------------------------


def test_a_form_model_whose_routed_name_starts_with_the_boundary_is_a_400_not_a_500(server):
    """The client's ``model`` field ``openai/--XYZ`` routes to model ``--XYZ`` at provider openai;
    writing it back into a form whose boundary is ``XYZ`` raises ValueError in Upload._checked."""
    body = (
        b"--XYZ\r\n"
        b'Content-Disposition: form-data; name="model"\r\n\r\n'
        b"openai/--XYZ\r\n"
        b"--XYZ\r\n"
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n"
        b"RIFF....\r\n"
        b"--XYZ--\r\n"
    )
    status, _, raw = server.request(
        "POST",
        "/v1/audio/transcriptions",
        raw=body,
        headers={**server.auth("plain"), "Content-Type": "multipart/form-data; boundary=XYZ"},
    )
    assert status == 400, (status, raw)


# -- 3. the stored-response routes skip the key's rpm ---------------------------------------------


def test_the_stored_response_routes_are_held_to_the_keys_rpm(server, mock):
    """README: 'A key past its rpm is refused on the files and batches routes too, so it cannot
    spend the shared provider key's own rate limits'. GET/DELETE /v1/responses/{id}, …/cancel and
    …/input_items of a passed-through response are provider calls under the shared key too."""
    headers = server.auth("slow")
    status, _, raw = server.request("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}, headers=headers)
    assert status == 200, raw
    response_id = json.loads(raw)["id"]
    # the rest of this minute's rpm (2) is used up by model calls / files calls
    while server.request("GET", "/v1/files", headers=headers)[0] != 429:
        pass
    assert server.request("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}, headers=headers)[0] == 429
    before = len([r for r in mock.requests if r.path.startswith(f"/v1/responses/{response_id}")])
    statuses = [server.request("GET", f"/v1/responses/{response_id}", headers=headers)[0] for _ in range(20)]
    after = len([r for r in mock.requests if r.path.startswith(f"/v1/responses/{response_id}")])
    assert after - before == 0 and set(statuses) == {429}, (statuses, after - before)


def test_a_stored_response_call_is_traced_at_cost_zero(server):
    """Was: these calls left no trace at all (who read or deleted what, when)."""
    headers = server.auth("plain")
    status, _, raw = server.request("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}, headers=headers)
    response_id = json.loads(raw)["id"]
    status, answer_headers, body = server.request("GET", f"/v1/responses/{response_id}", headers=headers)
    assert status == 200, body
    trace = server.trace(answer_headers["x-stockyard-trace-id"])
    assert (trace["endpoint"], trace["status"], trace["cost_uc"]) == ("responses.retrieve", 200, 0)


# -- 4. bodies nested just under the JSON parser's limit: re-encoded upstream, a RecursionError ------

DEEP = {
    # the Anthropic Messages API over a chat provider (messages_adapters.MessagesOverChat.chat_ctx)
    "messages-over-chat": (
        "/v1/messages",
        '{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"x"}],'
        '"tools":[{"name":"f","input_schema":%s}]}',
    ),
    # the Responses API over a chat-only provider (responses_adapters.ResponsesOverChat.chat_ctx)
    "responses-over-chat": (
        "/v1/responses",
        '{"model":"claude-3-5-haiku-20241022","input":"x","tools":[{"type":"function","name":"f","parameters":%s}]}',
    ),
    # plain chat to OpenAI, re-encoded because routing renamed the model (openai.request_body)
    "chat-provider-prefix": (
        "/v1/chat/completions",
        '{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"x"}],"x":%s}',
    ),
    # Gemini-native, re-encoded because a number was normalised (gemini_native.GeminiNativeAdapter.prepare)
    "gemini-native": (
        "/v1beta/models/gemini-1.5-flash:generateContent",
        '{"contents":[{"parts":[{"text":"x"}]}],"generationConfig":{"maxOutputTokens":5.0},"x":%s}',
    ),
}


@pytest.mark.parametrize("route", list(DEEP))
def test_a_body_nested_near_the_parsers_limit_is_a_4xx_not_a_500(server, route):
    """README: 'huge or deeply nested bodies get a 4xx JSON error, never a 500 or a traceback'.
    A body the parser accepts (its depth just under the recursion limit) is re-encoded with
    json.dumps deeper in the stack, which raises RecursionError: a 500 and a traceback."""
    path, template = DEEP[route]
    got = {}
    for depth in range(956, 1001, 4):
        raw = (template % ("[" * depth + "]" * depth)).encode()
        status, _, body = server.request("POST", path, raw=raw, headers=server.auth("plain"))
        got[depth] = status
    assert not [d for d, s in got.items() if s >= 500], got


# -- 5. a field sent as a file part ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/files"])
def test_a_text_field_sent_as_a_file_part_is_refused(server, mock, path):
    """Was: a ``model`` part with a filename is no text field, so the checks saw none (the default
    model passed the allow-list and the budget) while the form went upstream with it, for a
    provider's parser to read as the model. Files go only under the file fields now."""
    body = (
        b"--XYZ\r\n"
        b'Content-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
        b"--XYZ\r\n"
        b'Content-Disposition: form-data; name="model"; filename="m.txt"\r\n\r\n'
        b"gpt-4o-transcribe\r\n"
        b"--XYZ\r\n"
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n"
        b"RIFF....\r\n"
        b"--XYZ--\r\n"
    )
    mock.clear()
    headers = {**server.auth("plain"), "Content-Type": "multipart/form-data; boundary=XYZ"}
    status, _, raw = server.request("POST", path, raw=body, headers=headers)
    assert status == 400 and json.loads(raw)["error"]["param"] == "model", raw
    assert not mock.requests


# -- 6. a provider's answer nested past the parser's limit: the provider's doing, not the client's ----

DEEP_ANSWER = b'{"id": "x", "content": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
MESSAGE = {"model": "claude-3-5-haiku-20241022", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}


def test_an_answer_nested_past_the_parsers_limit_is_the_providers_502_not_the_clients_400(server, mock):
    """Was: the answer's JSON, read for its usage, raised RecursionError, which the proxy answered
    as a 400 'request body nests … too deeply' — blaming the client's request for the provider's
    answer, after the provider was called. Now as an answer that is no JSON: a 502 when Stockyard
    must read it (an OpenAI chat answer), relayed unread on Anthropic's own route, and a provider's
    error with such a body is that error."""
    from mock_upstream import Reply

    mock.enqueue(Reply(body=DEEP_ANSWER))
    status, headers, answer = server.request("POST", "/v1/chat/completions", CHAT, headers=server.auth("plain"))
    assert status == 502 and json.loads(answer)["error"]["code"] == "bad_upstream_response", answer[:300]
    assert "too deeply" in json.loads(answer)["error"]["message"]
    assert server.trace(headers["x-stockyard-trace-id"])["status"] == 502
    mock.enqueue(Reply(body=DEEP_ANSWER))
    status, headers, answer = server.request("POST", "/v1/messages", MESSAGE, headers=server.auth("plain"))
    assert (status, answer) == (200, DEEP_ANSWER), "Anthropic's answer relayed as its own route relays it"
    mock.enqueue(Reply(status=500, body=DEEP_ANSWER))
    status, headers, answer = server.request("POST", "/v1/messages", MESSAGE, headers=server.auth("plain"))
    assert status == 500 and b"request body" not in answer, answer[:300]


def test_a_translated_answer_nested_near_the_parsers_limit_is_never_the_clients_400(server, mock):
    """Claude's tool call input nested just under the parser's limit, translated for a chat client:
    reading it succeeds, re-encoding it recurses too deep. Whatever the depth, the client's request
    is not blamed (a 400 'request body …'): the answer is relayed or refused as the provider's (502)."""
    from mock_upstream import Reply

    got = {}
    for depth in range(956, 1001, 4):
        tool_use = '{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": %s}}' % (
            "[" * depth + "]" * depth
        )
        answer = (
            '{"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022", '
            '"content": [%s], "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 2}}' % tool_use
        )
        mock.enqueue(Reply(body=answer.encode()))
        chat = {"model": "claude-3-5-haiku-20241022", "messages": [{"role": "user", "content": "x"}]}
        status, _, body = server.request("POST", "/v1/chat/completions", chat, headers=server.auth("plain"))
        got[depth] = (status, b"request body" in body)
    assert not [d for d, (status, blamed) in got.items() if blamed or status < 200 or status == 500], got

"""The redact module: secrets and PII out of stored traces (store), out of what goes upstream
(upstream), or the request refused naming only the kind of data (block); plain and streamed;
switched at run time.

Most tests run the modules in process (``module_harness``); the store mode's first test and
the run-time switch go through a real server, whose log must never show a secret."""

from __future__ import annotations

import json

import pytest
from conftest import served, wait_for
from mock_upstream import Reply
from module_harness import inproc  # noqa: F401 (fixture)
from module_helpers import (  # noqa: F401
    api,
    chat,
    fresh,
    module_env,
    put_module,
    raw_stream,
    server_fixture,
    start_server,
    stream_text,
    trace_body,
)

from stockyard.modules.redact import Detector, luhn_ok

OPENAI_SECRET = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 2
AWS_SECRET = "AKIA" + "ABCDEFGHIJKLMNOP"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n-----END RSA PRIVATE KEY-----"
CARD, NOT_A_CARD = "4111 1111 1111 1111", "4111 1111 1111 1112"
EMAIL = "ada@example.com"
LEAKY = f"my key is {OPENAI_SECRET}, aws {AWS_SECRET}, token {JWT}\n{PEM}"


server = server_fixture("redact", never_logged=(OPENAI_SECRET, AWS_SECRET, JWT))


@pytest.fixture
def h(inproc, caplog):
    """The harness; its log, like the server's, must never show a secret."""
    yield inproc
    for secret in (OPENAI_SECRET, AWS_SECRET, JWT):
        assert secret not in caplog.text


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.mark.usefixtures("fresh")
def test_store_mode_keeps_secrets_out_of_traces_but_sends_them(server, mock):
    put_module(server, "redact", {"mode": "store"})
    status, headers, body = chat(server, messages=ask(LEAKY))
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "Hello from mock"
    assert mock.last("/chat/completions").json["messages"][0]["content"] == LEAKY, "upstream gets it as sent"
    request, response = trace_body(server, headers["x-stockyard-trace-id"])
    for secret in (OPENAI_SECRET, AWS_SECRET, JWT, "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo"):
        assert secret not in request
    stored = json.loads(request)["messages"][0]["content"]
    assert stored.startswith("my key is [REDACTED:openai_key], aws [REDACTED:aws_access_key], token [REDACTED:jwt]")
    assert stored.endswith("[REDACTED:private_key]") and "Hello from mock" in response


def test_store_mode_redacts_answers_and_errors_too(h, mock):
    h.configure("redact", {"mode": "store", "pii": ["email"]})
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": f"write to {EMAIL}"}, "finish_reason": "stop"}
        ],
    }
    mock.enqueue(Reply(json=answer))
    status, headers, body = h.chat(messages=ask("who?"))
    assert EMAIL in body.decode(), "the client gets the answer as it was"
    assert EMAIL not in h.trace_body(headers["x-stockyard-trace-id"])[1]
    mock.enqueue(
        Reply(
            sse=[
                '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
                f'"choices":[{{"index":0,"delta":{{"content":"mail {EMAIL}"}},"finish_reason":null}}]}}',
                "[DONE]",
            ]
        )
    )
    status, headers, data = h.stream({"model": "gpt-4o-mini", "messages": ask("who?")})
    assert stream_text(data) == f"mail {EMAIL}"
    stored = h.trace_body(headers["x-stockyard-trace-id"])[1]
    assert EMAIL not in stored and "[REDACTED:email]" in stored and stored.endswith("data: [DONE]\n\n")
    mock.enqueue(
        Reply(status=400, json={"error": {"message": f"bad address {EMAIL}", "type": "invalid_request_error"}})
    )
    status, headers, _ = h.chat(messages=ask("x"))
    trace = h.trace(headers["x-stockyard-trace-id"])
    assert status == 400 and EMAIL not in trace["error_message"] and "[REDACTED:email]" in trace["error_message"]


def test_store_mode_answers_are_not_cached(h, mock):
    h.configure("redact", {"mode": "store"})
    h.configure("cache")
    for _ in range(2):
        assert h.chat(messages=ask(LEAKY))[1]["x-stockyard-cache"] == "miss"
    assert len(mock.requests) == 2


def test_upstream_mode_rewrites_what_is_sent(h, mock):
    h.configure("redact", {"mode": "upstream", "pii": ["email", "card"]})
    text = f"{LEAKY} mail {EMAIL} card {CARD} order {NOT_A_CARD}"
    status, headers, data = h.stream({"model": "gpt-4o-mini", "messages": ask(text)})
    assert status == 200 and stream_text(data) == "Hello from mock"
    sent = mock.last("/chat/completions").json["messages"][0]["content"]
    for secret in (OPENAI_SECRET, AWS_SECRET, JWT, EMAIL, CARD):
        assert secret not in sent
    assert "[REDACTED:email]" in sent and "[REDACTED:card]" in sent and NOT_A_CARD in sent, "Luhn-checked"
    request, _ = h.trace_body(headers["x-stockyard-trace-id"])
    assert json.loads(request)["messages"][0]["content"] == sent


def test_block_mode_refuses_naming_the_kind_never_the_secret(h, mock):
    h.configure("redact", {"mode": "block"})
    status, headers, body = h.chat(messages=ask(LEAKY))
    err = json.loads(body)["error"]
    assert status == 400 and err["code"] == "sensitive_data"
    assert "an OpenAI-style API key" in err["message"] and "an AWS access key" in err["message"]
    assert "a JWT" in err["message"] and "a private key" in err["message"]
    assert OPENAI_SECRET not in body.decode() and mock.requests == []
    request, _ = h.trace_body(headers["x-stockyard-trace-id"])
    assert OPENAI_SECRET not in request and "[REDACTED:openai_key]" in request
    status, _, body = h.stream({"model": "gpt-4o-mini", "messages": ask(f"key {OPENAI_SECRET}")})
    assert status == 400 and json.loads(body)["error"]["code"] == "sensitive_data"
    assert h.chat(messages=ask("nothing secret here"))[0] == 200


def test_pii_is_off_unless_asked(h, mock):
    h.configure("redact", {"mode": "block"})
    assert h.chat(messages=ask(f"mail {EMAIL}, card {CARD}, call +1 415 555 0100"))[0] == 200
    h.configure("redact", {"mode": "block", "pii": ["phone"]})
    status, _, body = h.chat(messages=ask("call +1 415 555 0100"))
    assert status == 400 and "a phone number" in json.loads(body)["error"]["message"]


def test_disabled_redact_has_no_effect(h):
    h.configure("redact", {"mode": "block"}, enabled=False)
    status, headers, _ = h.chat(messages=ask(f"key {OPENAI_SECRET}"))
    assert status == 200 and OPENAI_SECRET in h.trace_body(headers["x-stockyard-trace-id"])[0]


@pytest.mark.usefixtures("fresh")
def test_cli_switches_redact_at_run_time(server):
    assert server.cli("modules", "set", "redact", "mode=block").returncode == 0
    assert server.cli("modules", "enable", "redact").returncode == 0
    wait_for(lambda: chat(server, messages=ask(f"key {OPENAI_SECRET}"))[0] == 400, what="redact on")
    assert server.cli("modules", "disable", "redact").returncode == 0
    wait_for(lambda: chat(server, messages=ask(f"key {OPENAI_SECRET}"))[0] == 200, what="redact off")
    assert api(server, "GET", "/api/modules/redact")[1]["enabled"] is False


# -- the detector in process ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, kind",
    [
        ("sk-ant-api03-" + "x" * 40, "anthropic_key"),
        ("AIza" + "B" * 35, "google_key"),
        ("gsk_" + "a1" * 20, "groq_key"),
        ("xai-" + "k" * 40, "xai_key"),
        ("pplx-" + "p" * 40, "perplexity_key"),
        ("hf_" + "h" * 34, "huggingface_token"),
        ("ghp_" + "g" * 36, "github_token"),
        ("xoxb-1234567890-abcdefghij", "slack_token"),
        ("sk_live_" + "s" * 24, "stripe_key"),
        ("aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_key"),
    ],
)
def test_detector_knows_the_common_providers(text, kind):
    detector = Detector(True, [])
    assert list(detector.find(f"here: {text} end")) == [kind]
    assert detector.sub(f"here: {text} end") == f"here: [REDACTED:{kind}] end"


def test_detector_leaves_ordinary_text_alone():
    detector = Detector(True, ["email", "card", "phone"])
    text = "version 1.2.3, 12.50 USD, 2024-01-15, sk-learn, a risk-averse plan, order 1234 5678 9012 3456"
    assert detector.find(text) == {} and detector.sub(text) == text
    body = json.dumps({"created": 1700000000, "n": 4111111111111111, "content": "ok"}).encode()
    assert detector.redact_bytes(body) == body, "numbers in JSON are never touched"


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("5500005555555559") and not luhn_ok("4111111111111112")


# --------------------------------------------------------------------------- providers' reasoning state


@pytest.fixture(scope="module")
def claude_server(pyz_path, cache_home, mock, tmp_path_factory):
    """A server with Anthropic on the mock too (thinking blocks, Responses translated to Claude)."""
    env = module_env(cache_home, mock, ANTHROPIC_API_KEY="sk-ant-test-0123456789abcdef", ANTHROPIC_BASE_URL=mock.url)
    with served(pyz_path, tmp_path_factory, "redact-claude", env, never_logged=(OPENAI_SECRET,)) as srv:
        yield srv


@pytest.fixture
def claude(claude_server, mock):
    mock.clear()
    yield claude_server
    put_module(claude_server, "redact", {}, enabled=False)


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}


def test_redact_upstream_never_sends_an_edited_thinking_block(claude, mock):
    """upstream mode rewrites the request, but not a provider's signed thinking: Anthropic refuses
    a signed block whose text was edited (400 'Invalid signature in thinking block'), so every
    later turn of the tool loop would fail. The block goes as it came; the rest is redacted."""
    put_module(claude, "redact", {"mode": "upstream", "pii": ["email"]})
    model = "claude-haiku-4-5-redact-up"
    think = {"type": "thinking", "thinking": f"Example fixture: write to {EMAIL}.", "signature": "sig-1"}
    call = {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": f"weather? mail {EMAIL}"},
        {"role": "assistant", "content": None, "tool_calls": [call], "thinking_blocks": [think]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
    ]
    status, _, body = chat(
        claude, model=model, messages=messages, tools=[WEATHER], max_completion_tokens=8000, reasoning_effort="low"
    )
    assert status == 200, body
    sent = mock.last("/v1/messages").json
    assert sent["messages"][0]["content"] == [{"type": "text", "text": "weather? mail [REDACTED:email]"}]
    assert sent["messages"][1]["content"][0] == think


def test_redact_block_and_a_key_smuggled_in_encrypted_content(claude, mock):
    """encrypted_content is opaque to redact. A client can write Stockyard's packing itself (base64
    JSON) with a key inside; Stockyard restores a packing only onto a request to the provider
    that made it, and this one names none, so the text never goes upstream."""
    from stockyard.providers.reasoning import pack

    put_module(claude, "redact", {"mode": "block"})
    smuggled = pack({"thinking_blocks": [{"type": "thinking", "thinking": f"key {OPENAI_SECRET}", "signature": "x"}]})
    items = [
        {"role": "user", "content": "weather?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": smuggled},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    body = {"model": "claude-haiku-4-5-redact", "input": items, "reasoning": {"effort": "low"}, "store": False}
    status, _, data = claude.request("POST", "/v1/responses", {**body, "max_output_tokens": 8000})
    assert status == 200, data
    upstream = [r for r in mock.requests if r.path.endswith("/messages")]
    assert upstream and not any(OPENAI_SECRET.encode() in r.body for r in upstream)


def compacted_with(text: str) -> dict:
    """A compaction item as Stockyard makes it, its summary ``text`` (a client can write one itself)."""
    from stockyard.providers.compaction import mint

    return {"type": "compaction", "encrypted_content": mint(text)}


def test_redact_looks_inside_a_compaction_token(claude, mock):
    """A compaction token's summary reaches the model as text (unlike reasoning state), so redact reads
    it as text: block refuses it, upstream sends it redacted."""
    from stockyard.providers.compaction import peek

    body = {"model": "claude-haiku-4-5", "input": [compacted_with(f"the key is {OPENAI_SECRET}"), *ask("go on")]}
    put_module(claude, "redact", {"mode": "block"})
    status, _, data = claude.request("POST", "/v1/responses", body)
    assert status == 400 and json.loads(data)["error"]["code"] == "sensitive_data" and mock.requests == []
    put_module(claude, "redact", {"mode": "upstream"})
    status, headers, data = claude.request("POST", "/v1/responses", body)
    assert status == 200, data
    sent = json.dumps(mock.last("/v1/messages").json)
    assert OPENAI_SECRET not in sent and "the key is [REDACTED:openai_key]" in sent
    request, _ = trace_body(claude, headers["x-stockyard-trace-id"])
    assert peek(json.loads(request)["input"][0]["encrypted_content"]) == "the key is [REDACTED:openai_key]"


def test_redact_store_keeps_a_secret_out_of_a_stored_compaction(claude, mock):
    """The model's summary may repeat a secret of the conversation: the stored answer holds the token
    minted again with the summary redacted (the client gets it as made)."""
    from stockyard.providers.compaction import peek

    put_module(claude, "redact", {"mode": "store"})
    said = f"The user's key is {OPENAI_SECRET}."
    answer = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": said}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 12, "output_tokens": 5},
    }
    mock.enqueue(Reply(json=answer))
    body = {"model": "claude-haiku-4-5", "input": ask("remember my key")}
    status, headers, data = claude.request("POST", "/v1/responses/compact", body)
    assert status == 200 and peek(json.loads(data)["output"][-1]["encrypted_content"]) == said
    _, response = trace_body(claude, headers["x-stockyard-trace-id"])
    assert peek(json.loads(response)["output"][-1]["encrypted_content"]) == "The user's key is [REDACTED:openai_key]."

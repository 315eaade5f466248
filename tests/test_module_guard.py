"""The guard module: allowed and denied models (after aliasing), the max_tokens ceiling
(clamp or reject), input size and message count — plain and streamed, in the client's
dialect; switched at run time.

Most tests run the modules in process (``module_harness``); the first and the run-time
switch go through a real server."""

from __future__ import annotations

import json

import pytest
from conftest import wait_for
from module_harness import inproc  # noqa: F401 (fixture)
from module_helpers import api, chat, fresh, put_module, raw_stream, server_fixture, stream_text  # noqa: F401

from stockyard import proxy
from stockyard.context import NativeCall, RequestContext
from stockyard.errors import GEMINI

server = server_fixture("guard")


def error(body: bytes) -> dict:
    return json.loads(body)["error"]


# -- through a server ------------------------------------------------------------------------------


@pytest.mark.usefixtures("fresh")
def test_denied_models_get_403_plain_and_streamed(server, mock):
    put_module(server, "guard", {"deny_models": ["gpt-4o", "groq/*"]})
    status, _, body = chat(server, model="gpt-4o")
    assert status == 403 and error(body)["code"] == "model_not_allowed" and error(body)["param"] == "model"
    status, _, body = raw_stream(server, {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    assert status == 403 and error(body)["type"] == "permission_error"
    assert chat(server, model="groq/llama-3.3-70b")[0] == 403
    assert chat(server, model="GPT-4O")[0] == 403, "case does not matter"
    assert chat(server, model="gpt-4o-mini")[0] == 200
    assert all(r.json["model"] == "gpt-4o-mini" for r in mock.requests), "refusals never reach the provider"


@pytest.mark.usefixtures("fresh")
def test_cli_switches_the_guard_at_run_time(server):
    put_module(server, "guard", {"deny_models": ["gpt-4o-mini"]}, enabled=False)
    assert server.cli("modules", "enable", "guard").returncode == 0
    wait_for(lambda: chat(server)[0] == 403, what="guard on")
    assert (
        server.cli("modules", "set", "guard", "max_tokens_mode=reject", "deny_models=[]", "max_tokens=10").returncode
        == 0
    )
    wait_for(lambda: chat(server, max_tokens=20)[0] == 400, what="new guard options")
    assert api(server, "GET", "/api/modules/guard")[1]["config"]["max_tokens"] == 10


# -- in process ------------------------------------------------------------------------------------


def test_allow_list(inproc):
    inproc.configure("guard", {"allow_models": ["gpt-4o-mini", "text-embedding-*"]})
    assert inproc.chat(model="gpt-4o-mini")[0] == 200
    assert inproc.chat(model="openai/gpt-4o-mini")[0] == 200, "provider/model matches by its model too"
    assert inproc.chat(model="gpt-4o")[0] == 403
    assert inproc.send({"model": "text-embedding-3-small", "input": "x"}, "/v1/embeddings")[0] == 200


def test_policy_applies_to_the_model_an_alias_leads_to(inproc):
    inproc.configure("alias", {"aliases": {"fast": "gpt-4o"}})
    inproc.configure("guard", {"deny_models": ["gpt-4o"]})
    status, _, body = inproc.chat(model="fast")
    assert status == 403 and "'fast (gpt-4o)'" in error(body)["message"]


def test_max_tokens_is_clamped(inproc, mock):
    inproc.configure("guard", {"max_tokens": 100})
    assert inproc.chat(max_tokens=5000)[0] == 200
    assert mock.last("/chat/completions").json["max_tokens"] == 100
    status, _, data = inproc.stream(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 4096}
    )
    assert status == 200 and stream_text(data) == "Hello from mock"
    assert mock.last("/chat/completions").json["max_completion_tokens"] == 100
    inproc.chat(max_tokens=50)
    assert mock.last("/chat/completions").json["max_tokens"] == 50, "under the ceiling: untouched"
    inproc.chat()
    assert "max_tokens" not in mock.last("/chat/completions").json


def test_max_tokens_over_the_ceiling_can_be_rejected(inproc, mock):
    inproc.configure("guard", {"max_tokens": 100, "max_tokens_mode": "reject"})
    status, _, body = inproc.chat(max_tokens=101)
    assert status == 400 and error(body)["param"] == "max_tokens" and error(body)["code"] == "max_tokens_too_large"
    assert "at most 100" in error(body)["message"] and mock.requests == []


def test_input_size_and_message_count(inproc):
    inproc.configure("guard", {"max_input_bytes": 2000, "max_messages": 2})
    status, _, body = inproc.chat(messages=[{"role": "user", "content": "x" * 3000}])
    assert status == 413 and error(body)["code"] == "request_too_large"
    status, _, body = inproc.chat(messages=[{"role": "user", "content": "x"}] * 3)
    assert status == 400 and error(body)["code"] == "too_many_messages" and error(body)["param"] == "messages"
    assert inproc.chat(messages=[{"role": "user", "content": "x"}] * 2)[0] == 200


def test_gemini_contents_count_as_messages_and_their_output_cap_is_clamped(inproc):
    inproc.configure("guard", {"max_messages": 2, "max_tokens": 100})

    def gemini_ctx(turns: int) -> RequestContext:
        body = {"contents": [{"role": "user", "parts": [{"text": "x"}]}] * turns}
        body["generationConfig"] = {"maxOutputTokens": 500}
        raw = json.dumps(body).encode()
        ctx = RequestContext("generate", GEMINI, "127.0.0.1", {}, raw=raw, native=NativeCall("generateContent"))
        ctx.model = "gpt-4o-mini"  # any routable model: the guard reads the body
        proxy.parse_body(ctx)
        return ctx

    refused = inproc.before(gemini_ctx(3))
    assert refused is not None and refused.code == "too_many_messages"
    ctx = gemini_ctx(2)
    assert inproc.before(ctx) is None
    assert ctx.body_changed and ctx.body["generationConfig"]["maxOutputTokens"] == 100


def test_refusals_are_in_the_anthropic_shape_on_the_messages_route(inproc):
    inproc.configure("guard", {"deny_models": ["claude-*"]})
    status, _, body = inproc.send(
        {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}, "/v1/messages"
    )
    payload = json.loads(body)
    assert status == 403 and payload["type"] == "error" and payload["error"]["type"] == "permission_error"


def test_refusals_are_traced(inproc):
    inproc.configure("guard", {"deny_models": ["gpt-4o"]})
    status, headers, _ = inproc.chat(model="gpt-4o")
    trace = inproc.trace(headers["x-stockyard-trace-id"])
    assert (trace["status"], trace["outcome"], trace["error_type"]) == (403, "rejected", "model_not_allowed")


def test_disabled_guard_has_no_effect(inproc):
    inproc.configure("guard", {"deny_models": ["*"], "max_messages": 1}, enabled=False)
    assert inproc.chat(messages=[{"role": "user", "content": "x"}] * 3)[0] == 200


def test_a_provider_qualified_allow_list_takes_a_bare_name_routed_to_that_provider(inproc):
    """README's own example allows ``groq/*``: a bare name that routes to groq was refused by the allow list
    before the route was known (it matched only ``provider/model`` spellings); it is judged at the route now,
    and a name routed elsewhere is still refused."""
    inproc.configure("guard", {"allow_models": ["openai/*"]})
    assert inproc.chat(model="gpt-4o-mini")[0] == 200
    status, _, body = inproc.chat(model="groq/llama-3.3-70b-versatile")
    assert status == 403 and error(body)["code"] == "model_not_allowed", body


@pytest.mark.usefixtures("fresh")
def test_without_client_keys_a_batch_line_is_held_to_the_guards_model_lists(server, mock):
    """Open mode (no client keys): a batch file's lines were not read at all, so ``deny_models`` that
    stops ``/v1/chat/completions`` let a batch of the same model through the Batch API."""
    import io

    import openai

    put_module(server, "guard", {"deny_models": ["gpt-4o"]})
    client = server.openai("anything")
    allowed = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}}
    denied = {**allowed, "custom_id": "b", "body": {"model": "gpt-4o"}}
    lines = (json.dumps(allowed) + "\n" + json.dumps(denied) + "\n").encode()
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.files.create(file=("b.jsonl", io.BytesIO(lines)), purpose="batch")
    assert refused.value.body["code"] == "model_not_allowed" and "line 2" in refused.value.body["message"]
    assert not [r for r in mock.requests if r.path == "/v1/files" and r.method == "POST"]
    made = client.files.create(file=("ok.jsonl", io.BytesIO(lines.split(b"\n")[0] + b"\n")), purpose="batch")
    assert made.id

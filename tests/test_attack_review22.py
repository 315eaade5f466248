"""Review 22: the modules (cache, redact, guard, timeout, fallback, alias) and routing between
tenants — two ordinary client keys and the operator's configuration — against the built pyz and
the mock upstream, with the official SDKs where a client matters.

Each test names the hole it closes and failed on the code it was written against.
"""

from __future__ import annotations

import json
import zlib

import pytest
from conftest import served, wait_for
from mock_upstream import Reply
from module_helpers import (  # noqa: F401 (fixture)
    api,
    chat,
    fresh,
    module_env,
    providers_called,
    put_module,
    raw_stream,
    start_server,
    stream_text,
)

from stockyard.modules.redact import Detector

ANTHROPIC_KEY = "sk-ant-test-review22-0123456789"
HAIKU = "claude-3-5-haiku-20241022"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    """``openai`` and ``groq`` on the mock (``mistral`` on a closed port), ``anthropic`` too."""
    env = module_env(cache_home, mock, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url)
    with served(pyz_path, tmp_path_factory, "review22", env) as srv:
        yield srv


@pytest.fixture(scope="module")
def alice(server) -> dict[str, str]:
    """An ordinary client key's headers (keys are on in this server from its first test)."""
    return server.auth(api(server, "POST", "/api/keys", {"name": "r22-alice", "project": "r22"})[1]["key"])


def entries(server) -> int:
    return api(server, "GET", "/api/modules/cache")[1]["status"]["entries"]


def question(tag: str) -> list[dict]:
    return [{"role": "user", "content": f"review 22: {tag}"}]


@pytest.mark.usefixtures("fresh")
def test_a_denied_provider_is_not_reached_by_its_models_bare_name(server, mock, alice):
    """Hole: guard matched ``deny_models`` against the name as the client wrote it (and its part
    after a ``/``), so ``groq/*`` refused ``groq/llama-3.3-70b`` but let the bare
    ``llama-3.3-70b`` through — which routes to groq all the same."""
    put_module(server, "guard", {"deny_models": ["groq/*"]})
    assert chat(server, model="groq/llama-3.3-70b", headers=alice)[0] == 403
    status, _, body = chat(server, model="llama-3.3-70b", headers=alice)
    assert status == 403, body
    assert json.loads(body)["error"]["code"] == "model_not_allowed"
    assert providers_called(mock) == [], "a refusal never reaches the provider"
    assert chat(server, model="gpt-4o-mini", headers=alice)[0] == 200, "other providers' models still pass"


@pytest.mark.usefixtures("fresh")
def test_a_fallback_never_goes_to_a_model_the_guard_denies(server, mock, alice):
    """Hole: guard looked at the model asked (after aliasing) only; a fallback chain then sent
    the request to a model its deny list names (the operator's policy, or a key's override)."""
    put_module(server, "guard", {"deny_models": ["groq/*"]})
    put_module(server, "fallback", {"chains": {"gpt-4o-mini": ["groq/llama-3.3-70b"]}, "retries": 0})
    mock.enqueue(Reply(status=500))
    status, _, _ = chat(server, model="gpt-4o-mini", headers=alice)
    assert status == 500, "the failure passes through: its only fallback is denied"
    assert providers_called(mock) == ["openai"]


@pytest.mark.usefixtures("fresh")
def test_a_fallback_models_answer_is_not_cached_as_the_asked_models(server, mock, alice):
    """Hole: the cache stored whatever answered under the key of the model asked, so one
    request that fell back (a passing 500) made the fallback model's answer the asked model's
    for the cache's whole TTL — served as a hit, its cost the fallback's."""
    put_module(server, "cache")
    put_module(server, "fallback", {"chains": {"gpt-4o-mini": ["groq/llama-3.3-70b"]}, "retries": 0})
    messages = question("fallback")
    mock.enqueue(Reply(status=500))
    status, headers, body = chat(server, messages=messages, headers=alice)
    assert status == 200 and json.loads(body)["model"] == "llama-3.3-70b"
    assert providers_called(mock) == ["openai", "groq"]
    wait_for(lambda: server.trace(headers["x-stockyard-trace-id"]), what="the trace")
    status, headers, body = chat(server, messages=messages, headers=alice)
    assert status == 200 and headers["x-stockyard-cache"] == "miss", "the asked model is asked again"
    assert json.loads(body)["model"] == "gpt-4o-mini"
    assert providers_called(mock)[2:] == ["openai"]


@pytest.mark.usefixtures("fresh")
def test_an_answer_made_under_beta_flags_is_not_served_without_them(server, mock):
    """Hole: the cache key left out the ``anthropic-beta`` and ``anthropic-version`` headers a
    native Claude client sends upstream, though they change the answer (or refuse the
    request): under ``scope: project`` bob, without the flags, got the answer alice's flags
    made; within one key a request the provider would refuse was answered."""
    put_module(server, "cache", {"scope": "project"})
    alice = api(server, "POST", "/api/keys", {"name": "r22-alice-2", "project": "r22"})[1]["key"]
    bob = api(server, "POST", "/api/keys", {"name": "r22-bob", "project": "r22"})[1]["key"]
    ask = {"model": HAIKU, "max_tokens": 50, "messages": question("beta")}
    beta = {"anthropic-beta": "interleaved-thinking-2025-05-14"}
    first = server.anthropic(alice).messages.with_raw_response.create(**ask, extra_headers=beta)
    assert first.headers["x-stockyard-cache"] == "miss"
    wait_for(lambda: entries(server) >= 1, what="alice's answer stored")
    again = server.anthropic(bob).messages.with_raw_response.create(**ask, extra_headers=beta)
    assert again.headers["x-stockyard-cache"] == "hit", "the same flags in the same project share"
    plain = server.anthropic(bob).messages.with_raw_response.create(**ask)
    assert plain.headers["x-stockyard-cache"] == "miss"
    assert "anthropic-beta" not in mock.last("/messages").headers


@pytest.mark.usefixtures("fresh")
def test_an_answer_asked_with_beta_true_is_not_served_without_it(server, mock):
    """``?beta=true`` (the Anthropic SDKs' beta namespace) goes upstream as the client sent it, so it is
    part of what was asked: an answer made with it is not served to the same request without it."""
    put_module(server, "cache", {"scope": "project"})
    key = api(server, "POST", "/api/keys", {"name": "r22-query", "project": "r22q"})[1]["key"]
    ask = {"model": HAIKU, "max_tokens": 50, "messages": question("beta query")}
    beta = {"beta": "true"}  # as Claude Code's SDK sends every request
    first = server.anthropic(key).messages.with_raw_response.create(**ask, extra_query=beta)
    assert first.headers["x-stockyard-cache"] == "miss" and mock.last("/messages").query.get("beta") == "true"
    wait_for(lambda: entries(server) >= 1, what="the answer stored")
    again = server.anthropic(key).messages.with_raw_response.create(**ask, extra_query=beta)
    assert again.headers["x-stockyard-cache"] == "hit"
    plain = server.anthropic(key).messages.with_raw_response.create(**ask)
    assert plain.headers["x-stockyard-cache"] == "miss"


LEAKED = "sk-proj-" + "R22leak" * 6  # an OpenAI-style key the model writes in its answer


def answer_with(text: str) -> Reply:
    return Reply(
        json={
            "id": "chatcmpl-r22",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        }
    )


@pytest.mark.parametrize("mode", ["store", "upstream"])
@pytest.mark.usefixtures("fresh")
def test_a_secret_in_an_answer_never_reaches_the_cache(server, mock, alice, mode):
    """Hole: redact kept an answer's secret out of the trace, but the cache stored the answer
    first (its ``after`` hook runs before redact's) whenever the request itself showed none — a
    key the model read from an image or a file, or wrote from memory — so the secret sat in
    ``cache_entries`` in plain text, and was replayed from there."""
    put_module(server, "redact", {"mode": mode})
    put_module(server, "cache")
    mock.enqueue(answer_with(f"Here it is: {LEAKED}"))
    messages = question(f"leak {mode}")
    status, headers, body = chat(server, messages=messages, headers=alice)
    assert status == 200 and LEAKED in body.decode(), "the client gets what the provider said"
    server.trace(headers["x-stockyard-trace-id"])
    stored = server.db_rows("SELECT body FROM cache_entries")
    assert not any(LEAKED.encode() in bytes(row["body"]) for row in stored)
    status, headers, _ = chat(server, messages=messages, headers=alice)
    assert headers["x-stockyard-cache"] == "miss", "the answer was not kept"


@pytest.mark.usefixtures("fresh")
def test_checked_a_fallback_to_a_dearer_model_is_billed_at_its_own_price(server, mock, alice):
    """Checked, found sound: the failed attempt and the dearer fallback are each billed at their
    own model's price (gpt-4o: 12 × $2.50/M + 5 × $10/M = 8,000 µ¢), never the asked model's."""
    put_module(server, "fallback", {"chains": {"gpt-4o-mini": ["openai/gpt-4o"]}, "retries": 0})
    mock.enqueue(Reply(status=500))
    status, headers, body = chat(server, messages=question("dearer"), headers=alice)
    assert status == 200 and json.loads(body)["model"] == "gpt-4o"
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["cost_uc"] == 8_000 and trace["cost_status"] == "exact"


@pytest.mark.usefixtures("fresh")
def test_a_deployment_on_a_denied_provider_is_skipped_by_the_weights(server, mock, alice):
    """Hole: guard checked the model's name, and the deployment the weights picked went to
    whichever provider it named — half of these requests reached groq under ``groq/*``."""
    assert api(server, "POST", "/api/models", {"name": "r22-chat"})[0] == 201
    for name, provider, model in (("a", "openai", "gpt-4o-mini"), ("b", "groq", "llama-3.3-70b")):
        fields = {"name": name, "provider": provider, "model": model}
        assert api(server, "POST", "/api/models/r22-chat/deployments", fields)[0] == 201
    try:
        put_module(server, "guard", {"deny_models": ["groq/*"]})
        assert [chat(server, model="r22-chat", headers=alice)[0] for _ in range(4)] == [200] * 4
        assert providers_called(mock) == ["openai"] * 4
        api(server, "DELETE", "/api/models/r22-chat/deployments/a")
        status, _, body = chat(server, model="r22-chat", headers=alice)
        assert status == 403 and json.loads(body)["error"]["code"] == "model_not_allowed"
        assert providers_called(mock) == ["openai"] * 4
    finally:
        api(server, "DELETE", "/api/models/r22-chat")


@pytest.mark.usefixtures("fresh")
def test_checked_a_hit_is_free_traced_and_counted_against_the_keys_rpm(server, mock):
    """Checked, found sound: a hit is traced with cost 0 and the cost it saved (so adds nothing to
    the key's budget), and counts in its rpm (the rate limit runs before the cache)."""
    put_module(server, "cache")
    put_module(server, "ratelimit")
    put_module(server, "budget")
    fields = {"name": "r22-carol", "rpm": 2, "budget_usd": "1.00", "budget_period": "day"}
    status, made = api(server, "POST", "/api/keys", fields)
    assert status == 201, made
    carol = server.auth(made["key"])
    messages = question("rpm")
    status, headers, _ = chat(server, messages=messages, headers=carol)
    assert status == 200 and headers["x-stockyard-cache"] == "miss"
    missed = server.trace(headers["x-stockyard-trace-id"])
    wait_for(lambda: entries(server) >= 1, what="the answer stored")
    status, headers, _ = chat(server, messages=messages, headers=carol)
    assert status == 200 and headers["x-stockyard-cache"] == "hit"
    hit = server.trace(headers["x-stockyard-trace-id"])
    assert hit["cache_hit"] == 1 and hit["cost_uc"] == 0 and hit["cost_saved_uc"] == missed["cost_uc"] > 0
    status, headers, _ = chat(server, messages=messages, headers=carol)
    assert status == 429, "the hit counted in the key's rpm"
    assert len(mock.requests) == 1


def stream_of(*pieces: str) -> Reply:
    """A chat stream whose text comes in ``pieces``, then its usage."""
    chunk = {"id": "c22", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    events = [
        json.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}) for p in pieces
    ]
    events.append(json.dumps({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    usage = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    return Reply(sse=[*events, json.dumps({**chunk, "choices": [], "usage": usage}), "[DONE]"])


@pytest.mark.usefixtures("fresh")
def test_a_secret_streamed_in_pieces_is_redacted_where_it_is_stored(server, mock, alice):
    """Hole: a stored stream was redacted event by event, and a model streams its text a few
    characters per event, so a key it wrote in an answer (split across deltas, as it always is)
    was found in no single event: the trace kept it whole once the deltas are joined, and the
    cache kept the answer."""
    put_module(server, "redact", {"mode": "store"})
    put_module(server, "cache")
    mock.enqueue(stream_of("Here it is: ", LEAKED[:10], LEAKED[10:30], LEAKED[30:], " — keep it safe."))
    body = {"model": "gpt-4o-mini", "messages": question("pieces")}
    status, headers, data = raw_stream(server, body, headers=alice)
    assert status == 200 and LEAKED in stream_text(data), "the client gets what the provider said"
    trace_id = headers["x-stockyard-trace-id"]
    server.trace(trace_id)
    [row] = server.db_rows("SELECT response FROM trace_bodies WHERE trace_id = ?", (trace_id,))
    response = zlib.decompress(bytes(row["response"]))  # on both stores (trace_body reads SQLite only)
    assert LEAKED not in stream_text(response) and "[REDACTED:openai_key]" in stream_text(response)
    assert not any(
        LEAKED[10:30].encode() in bytes(row["body"]) for row in server.db_rows("SELECT body FROM cache_entries")
    )


def test_a_secret_split_across_deltas_is_found_in_every_dialects_stream():
    """The same hole in the other dialects' streams Stockyard stores: Anthropic's content block
    deltas, the Responses API's ``*.delta`` events and Gemini's candidates' parts."""
    halves = (LEAKED[:15], LEAKED[15:])
    anthropic = [{"type": "content_block_delta", "index": 0, "delta": {"text": h}} for h in halves]
    responses = [{"type": "response.output_text.delta", "item_id": "m", "delta": h} for h in halves]
    gemini = [{"candidates": [{"index": 0, "content": {"parts": [{"text": h}]}}]} for h in halves]
    for events in (anthropic, responses, gemini):
        stream = "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode()
        stored = Detector(True, []).redact_bytes(stream).decode()
        assert "[REDACTED:openai_key]" in stored and LEAKED[:15] not in stored and LEAKED[15:] not in stored


def _secret(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


@pytest.mark.usefixtures("fresh")
def test_a_batch_line_is_held_to_the_guards_model_lists(server, mock, alice):
    """Hole: a batch runs its lines under the provider key, and its lines were held to the client key's
    own allow-list but never to guard's: ``deny_models=["gpt-4o"]`` stopped ``/v1/chat/completions`` and
    let a batch file of gpt-4o lines through. Refused at its upload now (where a key's allow-list refuses it),
    naming the line."""
    import io

    import openai

    put_module(server, "guard", {"deny_models": ["gpt-4o"]})
    client = server.openai(_secret(alice))
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o"}}
    with pytest.raises(openai.PermissionDeniedError) as refused:  # at the upload, as a key's own allow-list is
        client.files.create(file=("b.jsonl", io.BytesIO((json.dumps(line) + "\n").encode())), purpose="batch")
    assert refused.value.body["code"] == "model_not_allowed" and "line 1" in refused.value.body["message"]
    assert not [r for r in mock.requests if r.path in ("/v1/files", "/v1/batches") and r.method == "POST"]


@pytest.mark.usefixtures("fresh")
def test_a_message_batch_request_is_held_to_the_guards_model_lists(server, mock, alice):
    """The same hole on Anthropic's Message Batches: each request checked against the key's allow-list, not
    guard's ``deny_models``."""
    import anthropic

    put_module(server, "guard", {"deny_models": ["claude-*"]})
    client = server.anthropic(_secret(alice))
    params = {"model": HAIKU, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        client.messages.batches.create(requests=[{"custom_id": "a", "params": params}])
    assert "requests.0.params.model" in refused.value.message
    assert not [r for r in mock.requests if r.path.startswith("/v1/messages/batches") and r.method == "POST"]

"""The cache module: exact-match hits served byte for byte (plain and streamed), a streamed
request served from a plain answer, bypass, TTL, eviction, what is never cached, hits traced
with cost 0 and the cost saved, and switched at run time.

Most tests run the modules in process (``module_harness``: the same helpers work on it);
hits through a real server (plain, streamed, to the SDK), the switches and the status stay there."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from conftest import wait_for
from mock_upstream import Reply
from module_harness import inproc  # noqa: F401 (fixture)
from module_helpers import (  # noqa: F401
    MINI_COST_UC,
    api,
    chat,
    fresh,
    put_module,
    raw_stream,
    server_fixture,
    start_server,
    stream_text,
)

server = server_fixture("cache")


@pytest.fixture
def cache_on(fresh, server):
    put_module(server, "cache")


@pytest.fixture
def h(inproc):
    inproc.configure("cache")
    return inproc


def question() -> list[dict]:
    """A question no other test asks (so every test starts with a miss)."""
    return [{"role": "user", "content": f"Say hello {uuid.uuid4().hex}"}]


def entries(server) -> int:
    return server.db_rows("SELECT count(*) AS n FROM cache_entries")[0]["n"]


def newest(server) -> int:
    return server.db_rows("SELECT coalesce(max(created_at), 0) AS t FROM cache_entries")[0]["t"]


def stored(server, before: int) -> None:
    """Wait for the writer to commit the entry a miss queued (``before``: newest() until then)."""
    wait_for(lambda: newest(server) > before, what="the cache entry to be written")


@pytest.mark.usefixtures("cache_on")
def test_plain_hit_is_byte_identical_and_free(server, mock):
    messages, before = question(), newest(server)
    status, headers, first = chat(server, messages=messages)
    assert status == 200 and headers["x-stockyard-cache"] == "miss"
    stored(server, before)
    calls = len(mock.requests)
    status, headers, second = chat(server, messages=messages)
    assert status == 200 and headers["x-stockyard-cache"] == "hit"
    assert second == first, "a hit replays the stored bytes unchanged"
    assert len(mock.requests) == calls, "a hit never reaches the provider"
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["cache_hit"] == 1 and trace["cost_uc"] == 0 and trace["cost_saved_uc"] == MINI_COST_UC
    assert trace["provider"] == "openai" and trace["model"] == "gpt-4o-mini" and trace["status"] == 200
    assert trace["prompt_tokens"] is None, "a hit used no tokens"
    miss = server.db_rows("SELECT cache_hit, cost_uc FROM traces WHERE cache_hit = 0 ORDER BY id DESC LIMIT 1")
    assert miss[0]["cost_uc"] == MINI_COST_UC


@pytest.mark.usefixtures("cache_on")
def test_streamed_hit_is_byte_identical(server, mock):
    body, before = {"model": "gpt-4o-mini", "messages": question()}, newest(server)
    status, headers, first = raw_stream(server, body)
    assert status == 200 and headers["x-stockyard-cache"] == "miss" and stream_text(first) == "Hello from mock"
    stored(server, before)
    calls = len(mock.requests)
    status, headers, second = raw_stream(server, body)
    assert headers["x-stockyard-cache"] == "hit" and headers["content-type"].startswith("text/event-stream")
    assert headers.get("transfer-encoding") == "chunked", "served as a stream, like a live one"
    assert second == first and len(mock.requests) == calls
    # With include_usage the client gets a usage chunk: another kind of stream, stored apart.
    with_usage, before = {**body, "stream_options": {"include_usage": True}}, newest(server)
    status, headers, third = raw_stream(server, with_usage)
    assert headers["x-stockyard-cache"] == "miss", "a stream with a usage chunk is another kind of answer"
    stored(server, before)
    status, headers, fourth = raw_stream(server, with_usage)
    assert headers["x-stockyard-cache"] == "hit" and fourth == third and b'"prompt_tokens"' in fourth


@pytest.mark.usefixtures("cache_on")
def test_stream_served_from_a_cached_plain_answer(server, mock):
    messages, before = question(), newest(server)
    chat(server, messages=messages)
    stored(server, before)
    calls = len(mock.requests)
    client = server.openai("unused")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["x-stockyard-cache"] == "hit"
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from mock"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert len(mock.requests) == calls
    status, _, data = raw_stream(server, {"model": "gpt-4o-mini", "messages": messages})
    assert data.endswith(b"data: [DONE]\n\n") and b'"usage"' not in data, "no usage chunk unless asked"


def test_key_ignores_stream_options_and_user_but_not_the_question(h, mock):
    messages, before = question(), newest(h)
    chat(h, messages=messages, user="alice")
    stored(h, before)
    assert chat(h, messages=messages, user="bob")[1]["x-stockyard-cache"] == "hit"
    assert chat(h, messages=messages, temperature=0.5)[1]["x-stockyard-cache"] == "miss"
    assert chat(h, model="gpt-4o", messages=messages)[1]["x-stockyard-cache"] == "miss"


def test_bypass_header_asks_the_provider_and_refreshes(h, mock):
    messages, before = question(), newest(h)
    chat(h, messages=messages)
    stored(h, before)
    calls = len(mock.requests)
    status, headers, _ = chat(h, messages=messages, headers={"x-stockyard-cache": "bypass"})
    assert status == 200 and headers["x-stockyard-cache"] == "bypass" and len(mock.requests) == calls + 1
    assert chat(h, messages=messages)[1]["x-stockyard-cache"] == "hit"


def test_ttl_expires_entries(h):
    h.configure("cache", {"ttl_s": 1})
    messages, before = question(), newest(h)
    chat(h, messages=messages)
    stored(h, before)
    assert chat(h, messages=messages)[1]["x-stockyard-cache"] == "hit"
    time.sleep(1.1)  # the thing under test: the entry's 1 s TTL running out
    assert chat(h, messages=messages)[1]["x-stockyard-cache"] == "miss"


def test_oldest_entries_are_evicted_past_max_entries(h):
    h.configure("cache", {"max_entries": 2})
    questions = [question() for _ in range(3)]
    for q in questions:
        last = newest(h)
        wait_for(lambda last=last: int(time.time() * 1000) > last, what="a created_at after the newest entry's")
        chat(h, messages=q)
        wait_for(lambda last=last: newest(h) > last, what="the entry (and its evictions) to be written")
    assert entries(h) == 2
    assert chat(h, messages=questions[2])[1]["x-stockyard-cache"] == "hit"
    assert chat(h, messages=questions[0])[1]["x-stockyard-cache"] == "miss", "the oldest went first"


def test_max_bytes_bounds_the_cache(h):
    h.configure("cache", {"max_bytes": 1024})
    for _ in range(4):
        chat(h, messages=question())
    wait_for(
        lambda: h.db_rows("SELECT coalesce(sum(size), 0) AS b FROM cache_entries")[0]["b"] <= 1024 and entries(h) >= 1,
        what="eviction down to max_bytes",
    )


def test_errors_and_broken_streams_are_not_cached(h, mock):
    for _ in range(2):
        status, headers, _ = chat(h, model="openai/mock-error-500")
        assert status == 500 and headers["x-stockyard-cache"] == "miss"
    body = {"model": "gpt-4o-mini", "messages": question()}
    events = [
        '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
        '"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}'
    ] * 3
    mock.enqueue(Reply(sse=events, cut_after=2))
    status, headers, data = raw_stream(h, body)
    assert status == 200 and b'"error"' in data
    calls = len(mock.requests)
    h.trace(headers["x-stockyard-trace-id"])  # a cache entry would be queued before the trace: stored by now
    assert raw_stream(h, body)[1]["x-stockyard-cache"] == "miss" and len(mock.requests) == calls + 1


def test_embeddings_are_cached(h, mock):
    text, before = f"embed {uuid.uuid4().hex}", newest(h)
    status, _, first = h.request("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": text})
    assert status == 200
    stored(h, before)
    status, headers, second = h.request("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": text})
    assert headers["x-stockyard-cache"] == "hit" and second == first


def test_endpoints_option_limits_what_is_cached(h):
    h.configure("cache", {"endpoints": ["embeddings"]})
    status, headers, _ = chat(h, messages=question())
    assert status == 200 and "x-stockyard-cache" not in headers


@pytest.mark.usefixtures("cache_on")
def test_disabled_cache_has_no_effect(server, mock):
    messages, before = question(), newest(server)
    chat(server, messages=messages)
    stored(server, before)
    assert api(server, "POST", "/api/modules/cache/disable")[0] == 200
    calls = len(mock.requests)
    status, headers, _ = chat(server, messages=messages)
    assert status == 200 and "x-stockyard-cache" not in headers and len(mock.requests) == calls + 1


@pytest.mark.usefixtures("cache_on")
def test_cli_switches_the_cache_at_run_time(server, mock):
    messages, before = question(), newest(server)
    chat(server, messages=messages)
    stored(server, before)
    assert server.cli("modules", "disable", "cache").returncode == 0
    wait_for(lambda: "x-stockyard-cache" not in chat(server, messages=messages)[1], what="cache off")
    assert server.cli("modules", "enable", "cache").returncode == 0
    wait_for(lambda: chat(server, messages=messages)[1].get("x-stockyard-cache") == "hit", what="cache on")


@pytest.mark.usefixtures("cache_on")
def test_status_reports_entries_and_bytes_exactly(server):
    """The running totals (kept by triggers) match the table, refreshes and evictions included."""
    messages, before = question(), newest(server)
    chat(server, messages=messages)
    stored(server, before)
    _, headers, _ = chat(server, messages=messages, headers={"x-stockyard-cache": "bypass"})  # replaces the entry
    server.trace(headers["x-stockyard-trace-id"])  # the new entry is queued before the trace: stored by now
    status, view = api(server, "GET", "/api/modules/cache")
    actual = server.db_rows("SELECT count(*) AS n, coalesce(sum(size), 0) AS b FROM cache_entries")[0]
    assert (view["status"]["entries"], view["status"]["bytes"]) == (actual["n"], actual["b"]) and actual["b"] > 0


def test_a_plain_answer_to_a_streamed_request_is_stored_as_plain(h, mock):
    """Some providers ignore stream=true: what they sent is stored as what it is."""
    answer = {
        "id": "c9",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "plain anyway"}, "finish_reason": "stop"}],
    }
    body, before = {"model": "gpt-4o-mini", "messages": question()}, newest(h)
    mock.enqueue(Reply(json=answer))
    status, headers, data = raw_stream(h, body)
    assert status == 200 and json.loads(data)["choices"][0]["message"]["content"] == "plain anyway"
    stored(h, before)
    assert chat(h, messages=body["messages"])[2] == data, "stored as the plain answer it was"
    status, headers, data = raw_stream(h, body)
    assert headers["x-stockyard-cache"] == "hit" and stream_text(data) == "plain anyway"


def test_an_answer_made_with_fields_dropped_never_answers_a_request_without_the_drop_header(h):
    """Was: the cache key ignored x-stockyard-drop-unsupported, so a request that should get a 400
    for a field the model cannot honour could be answered from a cached drop-header answer."""
    from stockyard.modules.cache import request_key

    body = {"model": "gpt-4o-mini", "messages": question(), "logprobs": True}
    plain = request_key(h.context(body), "openai", "gpt-4o-mini")
    dropping = request_key(h.context(body, headers={"x-stockyard-drop-unsupported": "true"}), "openai", "gpt-4o-mini")
    assert plain != dropping
    assert plain == request_key(
        h.context(body, headers={"x-stockyard-drop-unsupported": "false"}), "openai", "gpt-4o-mini"
    )


# -- scope: whose answers a key is served ----------------------------------------------------------


# A server with client keys (the module's other tests run in open mode).
keyed = server_fixture("cache-keyed")


def key_of(server, name: str, project: str | None = None) -> dict:
    """A client key's Authorization header."""
    fields = {"name": name, **({"project": project} if project else {})}
    status, body = api(server, "POST", "/api/keys", fields)
    assert status == 201, body
    return server.auth(body["key"])


def test_an_answer_is_served_only_to_the_key_or_project_it_was_made_for(keyed, mock):
    alice, bob = key_of(keyed, "alice", "web"), key_of(keyed, "bob", "web")
    carol, dave = key_of(keyed, "carol", "data"), key_of(keyed, "dave")

    misses = 0  # each a new entry: every question below is new to its scope

    def ask(messages, who) -> str:
        nonlocal misses
        status, headers, _ = chat(keyed, messages=messages, headers=who)
        assert status == 200
        misses += headers["x-stockyard-cache"] == "miss"
        return headers["x-stockyard-cache"]

    def asked_and_stored(messages, who) -> None:
        assert ask(messages, who) == "miss"
        wait_for(lambda: entries(keyed) == misses, what="every answer so far to be stored")

    put_module(keyed, "cache")  # scope "key" by default
    messages = question()
    asked_and_stored(messages, alice)
    assert ask(messages, alice) == "hit"
    calls = len(mock.requests)
    assert [ask(messages, who) for who in (bob, carol, dave)] == ["miss"] * 3, "another key never sees alice's"
    assert len(mock.requests) == calls + 3

    put_module(keyed, "cache", {"scope": "project"})
    messages = question()
    asked_and_stored(messages, alice)
    assert ask(messages, bob) == "hit", "the same project shares"
    assert ask(messages, carol) == "miss" and ask(messages, dave) == "miss"
    messages = question()
    asked_and_stored(messages, dave)
    assert ask(messages, dave) == "hit" and ask(messages, alice) == "miss", "a key without a project keeps its own"

    put_module(keyed, "cache", {"scope": "global"})
    messages = question()
    asked_and_stored(messages, carol)
    assert [ask(messages, who) for who in (alice, dave)] == ["hit", "hit"]


def test_scope_is_checked(server):
    status, body = api(server, "PUT", "/api/modules/cache", {"enabled": True, "config": {"scope": "everyone"}})
    assert status == 400 and body["error"]["param"] == "cache.scope"
    assert "key, project, global" in body["error"]["message"]

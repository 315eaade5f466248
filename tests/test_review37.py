"""An attacker's review of the day-37 changes: what a client key could still reach through the new
paths. One real server process (test_iso37's: two keys, Google's OpenAI-compatible endpoint as an
openai-compatible provider on the mock upstream), the official SDKs as clients."""

from __future__ import annotations

import io
import json

import anthropic
import pytest
from test_iso36 import form
from test_iso37 import MODEL, URI, alices, sent_naming, server  # noqa: F401 (fixtures)

from stockyard.context import RequestContext
from stockyard.errors import OPENAI, ProxyError
from stockyard.files_api import Ownership
from stockyard.store import Store
from stockyard.store.backends import SqliteBackend


def image_by_url(url: str) -> dict:
    """A Messages body's image by URL, which translation to OpenAI's shape turns into an
    ``image_url`` part (a document by URL it refuses for a Chat Completions provider)."""
    return {"type": "image", "source": {"type": "url", "url": url}}


def test_another_keys_gemini_file_in_an_anthropic_body_is_not_found_unasked(server, alices, mock):
    """A Messages body routed to Google's OpenAI-compatible endpoint is translated to chat: its URL
    source becomes an ``image_url`` Google reads the uploaded file from, under the one provider key.
    Another key's Gemini file (or one Stockyard never saw) is the 404 it is in an OpenAI-shaped body,
    in Anthropic's shape, before the provider is asked."""
    bob = server.anthropic("bob")
    for name in (alices["gemini_file"], "files/never-uploaded-here"):
        file_id = name.removeprefix("files/")
        before = len(mock.requests)
        content = [image_by_url(URI + file_id), {"type": "text", "text": "what is in it?"}]
        with pytest.raises(anthropic.NotFoundError) as refused:
            bob.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": content}])
        error = refused.value.body["error"]
        assert error["type"] == "not_found_error" and "File not found" in error["message"], error
        assert not sent_naming(mock, before, file_id)


def test_the_keys_own_gemini_file_in_an_anthropic_body_goes_on(server, alices, mock):
    file_id = alices["gemini_file"].removeprefix("files/")
    before = len(mock.requests)
    content = [image_by_url(URI + file_id), {"type": "text", "text": "what is in it?"}]
    try:
        messages = [{"role": "user", "content": content}]
        server.anthropic("alice").messages.create(model=MODEL, max_tokens=16, messages=messages)
    except anthropic.APIStatusError as answer:  # the mock serves no OpenAI-compatible Google endpoint
        assert "File not found" not in str(answer.body), answer.body
    assert sent_naming(mock, before, file_id) == ["/v1beta/openai/chat/completions"]


def test_a_json_edit_naming_one_file_many_times_looks_it_up_once(tmp_path):
    """A JSON image edit's file ids are each checked where they stand (to name that place), but one
    id a body repeats is looked up once, as ``Ownership.require_files`` promises: a list may repeat
    one a million times (a 32 MB body: 800,000 lookups, 20 s of a core, before the change). Counted
    on the real SQLite file's read connection, by its trace callback."""
    backend = SqliteBackend(tmp_path / "stockyard.db")
    backend.open_and_migrate()
    store = Store(backend)
    try:
        ownership = Ownership(store, None)
        assert ownership.claim("file-own", "file", "key-1", "openai")
        body = {"prompt": "x", "images": [{"file_id": "file-own"}], "extra": [{"file_id": "file-own"}] * 1000}
        ctx = RequestContext("image_edits", OPENAI, "127.0.0.1", {}, raw=json.dumps(body).encode(), body=body)
        ctx.key, ctx.key_id = "a client key", "key-1"
        looked: list[str] = []
        store.read().set_trace_callback(lambda sql: looked.append(sql) if "FROM owned_objects" in sql else None)
        ownership.check_references(ctx)
        assert 1 <= len(looked) <= 2, len(looked)  # the edit's check, and the body's file ids' (referenced_files)
        body["extra"].append({"file_id": "file-not-the-keys"})
        with pytest.raises(ProxyError) as refused:
            ownership.check_references(ctx)
        assert (refused.value.status, refused.value.param) == (404, "extra[1000].file_id")
    finally:
        store.close()


def test_a_body_naming_one_context_cache_many_times_looks_it_up_once(tmp_path):
    """As a file id: a Gemini context cache an OpenAI-shaped body names by ``cached_content`` (Google's
    OpenAI-compatible endpoint reads it) is looked up once however often the body repeats it."""
    backend = SqliteBackend(tmp_path / "stockyard.db")
    backend.open_and_migrate()
    store = Store(backend)
    try:
        ownership = Ownership(store, None)
        assert ownership.claim("own-cache", "cached_content", "key-1", "gemini")
        named = {"cached_content": "cachedContents/own-cache"}
        body = {"model": "gemini-2.5-flash", "messages": [], "extra_body": {"google": [named] * 1000}}
        ctx = RequestContext("chat", OPENAI, "127.0.0.1", {}, raw=json.dumps(body).encode(), body=body)
        ctx.key, ctx.key_id = "a client key", "key-1"
        looked: list[str] = []
        store.read().set_trace_callback(lambda sql: looked.append(sql) if "FROM owned_objects" in sql else None)
        ownership.check_references(ctx)
        assert len(looked) == 1, len(looked)
    finally:
        store.close()


def test_an_input_reference_naming_file_id_twice_is_refused_unasked(server, alices, mock):
    """A video create's ``input_reference`` as JSON text (a form's field, or a JSON create's string)
    naming ``file_id`` twice: the check read the last (the key's own file), a provider's parser may
    read the first (another key's). A 400 as for any body naming a member twice, before the provider."""
    bobs = server.openai("bob").files.create(file=("b.txt", io.BytesIO(b"bob's own")), purpose="user_data").id
    text = '{"file_id": "%s", "file_id": "%s"}' % (alices["file"], bobs)
    raw, kind = form([("model", "sora-2"), ("prompt", "x"), ("input_reference", text)], [])
    before = len(mock.requests)
    as_bob = {**server.auth("bob"), "Content-Type": kind}
    status, _, answer = server.request("POST", "/v1/videos", raw=raw, headers=as_bob)
    assert status == 400, (status, answer)
    error = json.loads(answer)["error"]
    assert (error["param"], error["code"]) == ("input_reference", "duplicate_key"), error
    body = {"model": "sora-2", "prompt": "x", "input_reference": text}
    status, _, answer = server.request("POST", "/v1/videos", body, headers=server.auth("bob"))
    assert status == 400 and json.loads(answer)["error"]["code"] == "duplicate_key", (status, answer)
    assert not sent_naming(mock, before, alices["file"])

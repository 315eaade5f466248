"""One key never reaches another's provider objects: a matrix of every OpenAI-shaped endpoint and
body field that names an object, with alice's objects tried by bob (another key), by carol (a key
of alice's project) and by bob naming alice's end user, against the mock upstream and one real server process."""

from __future__ import annotations

import io
import json

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from openai import NotFoundError

ADMIN = "admin-key-for-iso36-0123456789abcdef"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    gemini = {"GEMINI_API_KEY": "AIza-iso36-0123456789abcdef", "GEMINI_BASE_URL": mock.url}
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_BATCH_POLL="off", **gemini)
    keys = {"alice": ["--project", "team"], "bob": [], "carol": ["--project", "team"]}
    with served(pyz_path, tmp_path_factory, "iso36", env, keys) as srv:
        yield srv


@pytest.fixture(scope="module")
def alices(server) -> dict[str, str]:
    """One of each object alice can make through Stockyard, for her end user "alice"."""
    client = server.openai("alice", default_headers={"x-stockyard-user": "alice"})
    made = {"file": client.files.create(file=("a.txt", io.BytesIO(b"alice's secret")), purpose="user_data").id}
    made["response"] = client.responses.create(model="gpt-4o-mini", input="hi", store=True).id
    made["conversation"] = client.conversations.create(items=[{"role": "user", "content": "secret"}]).id
    made["vector_store"] = client.vector_stores.create(name="private").id
    made["container"] = client.containers.create(name="private").id
    made["container_file"] = client.containers.files.create(
        made["container"], file=("s.txt", io.BytesIO(b"alice's secret"))
    ).id
    client.vector_stores.files.create(made["vector_store"], file_id=made["file"])
    made["item"] = client.conversations.items.list(made["conversation"]).data[0].id
    made["output_item"] = client.responses.retrieve(made["response"]).output[0].id
    line = {
        "custom_id": "1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "secret"}]},
    }
    batch_file = client.files.create(file=("b.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")), purpose="batch")
    made["batch_file"] = batch_file.id
    made["batch"] = client.batches.create(
        input_file_id=batch_file.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id
    made["video"] = client.videos.create(model="sora-2", prompt="secret").id
    cache = {"model": "models/gemini-cache-model", "contents": [{"role": "user", "parts": [{"text": "secret " * 50}]}]}
    as_alice = {**server.auth("alice"), "x-stockyard-user": "alice"}
    status, _, answer = server.request("POST", "/v1beta/cachedContents", cache, headers=as_alice)
    assert status == 200, answer
    made["cache"] = json.loads(answer)["name"]
    return made


def foreign(server: ServerProcess, who: str, method: str, path: str, body: object = None) -> tuple[int, bytes]:
    """(status, body) of a request by ``who``; ``name@user`` is that key saying it acts for end user ``user``."""
    key, _, user = who.partition("@")
    headers = {**server.auth(key), **({"x-stockyard-user": user} if user else {})}
    status, _, answer = server.request(method, path, body, headers=headers)
    return status, answer


@pytest.mark.parametrize("who", ["bob", "carol", "bob@alice"])
def test_another_keys_objects_are_not_found_on_their_own_endpoints(server, alices, who):
    paths = [
        ("GET", f"/v1/files/{alices['file']}"),
        ("GET", f"/v1/files/{alices['file']}/content"),
        ("DELETE", f"/v1/files/{alices['file']}"),
        ("GET", f"/v1/responses/{alices['response']}"),
        ("GET", f"/v1/responses/{alices['response']}/input_items"),
        ("POST", f"/v1/responses/{alices['response']}/cancel"),
        ("DELETE", f"/v1/responses/{alices['response']}"),
        ("GET", f"/v1/conversations/{alices['conversation']}"),
        ("GET", f"/v1/conversations/{alices['conversation']}/items"),
        ("DELETE", f"/v1/conversations/{alices['conversation']}"),
        ("GET", f"/v1/vector_stores/{alices['vector_store']}"),
        ("GET", f"/v1/vector_stores/{alices['vector_store']}/files"),
        ("DELETE", f"/v1/vector_stores/{alices['vector_store']}"),
        ("GET", f"/v1/containers/{alices['container']}"),
        ("GET", f"/v1/containers/{alices['container']}/files"),
        ("DELETE", f"/v1/containers/{alices['container']}"),
        ("GET", f"/v1/containers/{alices['container']}/files/{alices['container_file']}"),
        ("GET", f"/v1/containers/{alices['container']}/files/{alices['container_file']}/content"),
        ("DELETE", f"/v1/containers/{alices['container']}/files/{alices['container_file']}"),
        ("GET", f"/v1/conversations/{alices['conversation']}/items/{alices['item']}"),
        ("DELETE", f"/v1/conversations/{alices['conversation']}/items/{alices['item']}"),
        ("POST", f"/v1/conversations/{alices['conversation']}"),
        ("POST", f"/v1/conversations/{alices['conversation']}/items"),
        ("GET", f"/v1/vector_stores/{alices['vector_store']}/files/{alices['file']}"),
        ("GET", f"/v1/vector_stores/{alices['vector_store']}/files/{alices['file']}/content"),
        ("DELETE", f"/v1/vector_stores/{alices['vector_store']}/files/{alices['file']}"),
        ("POST", f"/v1/vector_stores/{alices['vector_store']}/search"),
        ("POST", f"/v1/vector_stores/{alices['vector_store']}/files"),
        ("POST", f"/v1/vector_stores/{alices['vector_store']}/file_batches"),
        ("POST", f"/v1/vector_stores/{alices['vector_store']}"),
        ("GET", f"/v1/batches/{alices['batch']}"),
        ("POST", f"/v1/batches/{alices['batch']}/cancel"),
        ("GET", f"/v1/files/{alices['batch_file']}/content"),
        ("GET", f"/v1/videos/{alices['video']}"),
        ("GET", f"/v1/videos/{alices['video']}/content"),
        ("POST", f"/v1/videos/{alices['video']}/remix"),
        ("DELETE", f"/v1/videos/{alices['video']}"),
    ]
    bodies = {
        "POST": {
            "metadata": {"a": "b"},
            "items": [{"role": "user", "content": "x"}],
            "query": "secret",
            "file_id": "file-x",
            "file_ids": ["file-x"],
            "prompt": "x",
        }
    }
    for method, path in paths:
        status, answer = foreign(server, who, method, path, bodies.get(method))
        assert status == 404, (method, path, status, answer)
        assert b"alice's secret" not in answer
        assert json.loads(answer)["error"]["message"], answer
    # alice still has them all
    assert server.openai("alice").files.retrieve(alices["file"]).id == alices["file"]


@pytest.mark.parametrize("who", ["bob", "carol", "bob@alice"])
def test_another_keys_objects_are_not_listed(server, alices, who):
    lists = ("/v1/files", "/v1/vector_stores", "/v1/containers", "/v1/batches", "/v1/videos")
    for path in lists:
        status, answer = foreign(server, who, "GET", path)
        assert status in (200, 404), (path, status, answer)
        for object_id in alices.values():
            assert object_id.encode() not in answer, (path, object_id)


@pytest.mark.parametrize("who", ["bob", "carol", "bob@alice"])
def test_another_keys_objects_named_in_a_body_are_not_found(server, alices, mock, who):
    bodies = [
        {"model": "gpt-4o-mini", "input": "hi", "previous_response_id": alices["response"]},
        {"model": "gpt-4o-mini", "input": "hi", "conversation": alices["conversation"]},
        {"model": "gpt-4o-mini", "input": "hi", "conversation": {"id": alices["conversation"]}},
        {
            "model": "gpt-4o-mini",
            "input": [{"role": "user", "content": [{"type": "input_file", "file_id": alices["file"]}]}],
        },
        {
            "model": "gpt-4o-mini",
            "input": "hi",
            "tools": [{"type": "code_interpreter", "container": alices["container"]}],
        },
        {
            "model": "gpt-4o-mini",
            "input": "hi",
            "tools": [{"type": "file_search", "vector_store_ids": [alices["vector_store"]]}],
        },
        {"model": "gpt-4o-mini", "input": [{"type": "item_reference", "id": alices["output_item"]}]},
        {"model": "gpt-4o-mini", "input": [{"id": alices["output_item"]}]},
        {
            "model": "gpt-4o-mini",
            "input": "hi",
            "tools": [{"type": "code_interpreter", "container": {"type": "auto", "file_ids": [alices["file"]]}}],
        },
    ]
    before = len(mock.requests)
    for body in bodies:
        status, answer = foreign(server, who, "POST", "/v1/responses", body)
        assert status in (400, 404), (body, status, answer)
        assert b"secret" not in answer
    chat = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": alices["file"]}}]}],
    }
    status, answer = foreign(server, who, "POST", "/v1/chat/completions", chat)
    assert status == 404, (status, answer)
    for batch in (
        {"input_file_id": alices["batch_file"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        {"input_file_id": alices["file"], "endpoint": "/v1/responses", "completion_window": "24h"},
    ):
        status, answer = foreign(server, who, "POST", "/v1/batches", batch)
        assert status == 404, (batch, status, answer)
    # An id a Stockyard conversation minted for alice's item is replaced by the item for alice alone:
    # for another key it is answered as a made-up id of that shape is — no hint that alice's exists.
    minted = [
        foreign(
            server,
            who,
            "POST",
            "/v1/responses",
            {"model": "gpt-4o-mini", "input": [{"type": "item_reference", "id": ref}]},
        )[0]
        for ref in (alices["item"], "msg_sy" + "0" * 32)
    ]
    assert minted[0] == minted[1], minted
    video = {"model": "sora-2", "prompt": "x", "input_reference": {"file_id": alices["file"]}}
    status, answer = foreign(server, who, "POST", "/v1/videos", video)
    assert status in (400, 404), (status, answer)
    sent = [r for r in mock.requests[before:] if any(v.encode() in (r.body or b"") for v in alices.values())]
    assert not sent, [r.path for r in sent]


def test_objects_made_in_open_mode_are_no_keys_once_keys_are_required(pyz_path, cache_home, mock, tmp_path_factory):
    """Open mode's objects are its one owner's: a key made later reaches none of them."""
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN)
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp("iso36-open") / "stockyard.db", env).start()
    try:
        client = srv.openai("anyone")
        made = {
            "file": client.files.create(file=("o.txt", io.BytesIO(b"open secret")), purpose="user_data").id,
            "response": client.responses.create(model="gpt-4o-mini", input="hi", store=True).id,
            "conversation": client.conversations.create(items=[{"role": "user", "content": "x"}]).id,
            "container": client.containers.create(name="open").id,
        }
        assert client.files.retrieve(made["file"]).id == made["file"]  # open mode: one owner, all of it
        srv.keys = srv.create_keys({"late": []})
        wait_for(lambda: foreign(srv, "sk-not-a-key", "GET", "/v1/files")[0] == 401, what="keys required")
        paths = [f"/v1/files/{made['file']}", f"/v1/responses/{made['response']}"]
        paths += [f"/v1/conversations/{made['conversation']}", f"/v1/containers/{made['container']}"]
        for path in paths:
            status, answer = foreign(srv, "late", "GET", path)
            assert status == 404, (path, status, answer)
        status, answer = foreign(srv, "late", "GET", "/v1/files")
        assert made["file"].encode() not in answer
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def test_a_batch_line_naming_another_keys_object_says_which_id_and_which_line(server, alices):
    """The id stays the id in OpenAI's message, the line beside it (it was quoted inside the id)."""
    bob = server.openai("bob")
    tools = {
        "container": {"type": "code_interpreter", "container": alices["container"]},
        "vector_store": {"type": "file_search", "vector_store_ids": [alices["vector_store"]]},
    }
    for kind, tool in tools.items():
        body = {"model": "gpt-4o-mini", "input": "x", "tools": [tool]}
        line = json.dumps({"custom_id": "1", "method": "POST", "url": "/v1/responses", "body": body}).encode()
        with pytest.raises(NotFoundError) as refused:  # at the upload, as when the batch starts
            bob.files.create(file=("b.jsonl", io.BytesIO(line + b"\n")), purpose="batch")
        message = refused.value.body["message"]
        assert f"'{alices[kind]}'" in message and "(line 1 of the batch file)" in message, message


PNG_HEAD = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")


def form(fields: list[tuple[str, str]], files: list[tuple[str, str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body (its bytes, its Content-Type) with these text fields and files."""
    boundary = "iso36-boundary-0123456789"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields]
    for field, name, data, kind in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        parts.append(f"{head}Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    "path, fields, files",
    [
        ("/v1/videos", [("model", "sora-2"), ("prompt", "x")], []),
        ("/v1/images/edits", [("model", "gpt-image-1"), ("prompt", "x")], [("image", "a.png", PNG_HEAD, "image/png")]),
        ("/v1/audio/transcriptions", [("model", "whisper-1")], [("file", "a.wav", b"RIFF0000WAVE", "audio/wav")]),
    ],
)
@pytest.mark.parametrize("field", ["file_id", "mask[file_id]", "images[][file_id]"])
def test_a_form_field_naming_another_keys_file_is_not_found_unasked(server, alices, mock, path, fields, files, field):
    """A form's text fields are relayed with it, and OpenAI reads ``mask``/``images`` by ``file_id``
    (an image edit's JSON shape): one naming another key's file is its 404, before the provider."""
    raw, kind = form([*fields, (field, alices["file"])], files)
    before = len(mock.requests)
    status, _, answer = server.request("POST", path, raw=raw, headers={**server.auth("bob"), "Content-Type": kind})
    assert status == 404 and json.loads(answer)["error"]["param"] == field, (status, answer)
    assert not [r.path for r in mock.requests[before:] if alices["file"].encode() in (r.body or b"")]
    status, _, answer = server.request("POST", path, raw=raw, headers={**server.auth("alice"), "Content-Type": kind})
    assert status != 404, answer  # the key's own file goes on


@pytest.mark.parametrize("who", ["bob", "carol", "bob@alice"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_another_keys_gemini_cache_in_an_openai_shaped_body_is_not_found_unasked(server, alices, mock, who, path):
    """Google's OpenAI-compatible API reads a context cache from ``extra_body.google.cached_content``
    (an ``openai-compatible`` provider relays the body whole): another key's cache is a 404 there too."""
    ask = {"messages": [{"role": "user", "content": "hi"}]} if path.endswith("completions") else {"input": "hi"}
    for cache in ({"cached_content": alices["cache"]}, {"cachedContent": alices["cache"]}):
        body = {"model": "gpt-4o-mini", **ask, "extra_body": {"google": cache}}
        before = len(mock.requests)
        status, answer = foreign(server, who, "POST", path, body)
        assert status == 404, (status, answer)
        assert not [r.path for r in mock.requests[before:] if alices["cache"].encode() in (r.body or b"")]
    status, answer = foreign(server, "alice", "POST", path, body)
    assert status == 200, answer  # the key's own cache goes on


def test_a_batch_line_naming_another_keys_gemini_cache_is_not_found(server, alices):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    body["extra_body"] = {"google": {"cached_content": alices["cache"]}}
    line = json.dumps({"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": body}).encode()
    with pytest.raises(NotFoundError) as refused:
        server.openai("bob").files.create(file=("b.jsonl", io.BytesIO(line + b"\n")), purpose="batch")
    message = refused.value.body["message"]
    assert alices["cache"].removeprefix("cachedContents/") in message and "line 1 of the batch file" in message

"""Four cross-key leftovers closed: a Gemini file named by URL in an OpenAI-shaped body (Google's
OpenAI-compatible endpoint), a top-level ``file_id`` in a video create's JSON and in a file upload's
form, a video form's ``input_reference[file_id]`` looked up once, and an ``item_reference`` naming
an item a Stockyard conversation holds. Two client keys against the mock upstream and one real
server process; the official ``openai`` SDK as the client where it can send the body."""

from __future__ import annotations

import io
import json

import openai
import pytest
from conftest import ServerProcess, mock_env
from mock_upstream import MockUpstream
from test_gemini_files import upload
from test_iso36 import form

from stockyard.conversations_api import NAMED_SQL
from stockyard.objectrefs import URL_FIELDS, may_name_file_url, referenced_file_urls
from stockyard.store import Store
from stockyard.store.backends import SqliteBackend

ADMIN = "admin-key-for-iso37-0123456789abcdef"
GOOGLE = "googlecompat"  # an openai-compatible provider at Google's OpenAI-compatible endpoint
MODEL = f"{GOOGLE}/gemini-2.5-flash"  # provider/model: past the native Gemini provider
URI = "https://generativelanguage.googleapis.com/v1beta/files/"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    gemini = {"GEMINI_API_KEY": "AIza-iso37-0123456789abcdef", "GEMINI_BASE_URL": mock.url}
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_BATCH_POLL="off", **gemini)
    env["STOCKYARD_ENCRYPTION_KEY"] = "iso37-encryption-secret-0123456789abcdefghij"
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp("iso37") / "stockyard.db", env)
    added = srv.cli(
        *("providers", "add", GOOGLE, "--kind", "openai-compatible", "--base-url", mock.url + "/v1beta/openai"),
        *("--models", "gemini-", "--key-stdin"),
        input="AIza-iso37-compat-0123456789abcdef",
    )
    assert added.returncode == 0, added.stderr
    srv.keys = srv.create_keys({"alice": [], "bob": []})
    srv.start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log


@pytest.fixture(scope="module")
def alices(server) -> dict[str, str]:
    """alice's objects: an OpenAI file, a Gemini file, a conversation item Stockyard minted the id of."""
    client = server.openai("alice")
    made = {"file": client.files.create(file=("a.txt", io.BytesIO(b"alice's secret")), purpose="user_data").id}
    made["gemini_file"] = upload(server, "alice", b"alice's secret video", mimeType="video/mp4")["name"]
    conversation = client.conversations.create(items=[{"role": "user", "content": "alice's secret note"}])
    made["item"] = client.conversations.items.list(conversation.id).data[0].id
    assert made["item"].startswith("msg_sy"), made["item"]
    return made


def sent_naming(mock: MockUpstream, before: int, *names: str) -> list[str]:
    """The paths of requests the provider got since ``before`` whose body names one of ``names``."""
    return [r.path for r in mock.requests[before:] if any(n.encode() in (r.body or b"") for n in names)]


# -- 1. a Gemini file named by URL in an OpenAI-shaped body -----------------------------------------


def gemini_file_bodies(name: str, variant: bool = True) -> list[tuple[str, dict]]:
    """Each way an OpenAI-shaped body names a Gemini file by URL: its ``uri``, its name, and
    (``variant``) a spelling Google may read as it, which the native path refuses as well."""
    file_id = name.removeprefix("files/")
    bodies = []
    for url in (URI + file_id, name, *([URI.upper() + file_id] if variant else [])):
        image = {"type": "image_url", "image_url": {"url": url}}
        chat = {"model": MODEL, "messages": [{"role": "user", "content": [image]}]}
        parts = [{"type": "input_image", "image_url": url}]
        responses = {"model": MODEL, "input": [{"role": "user", "content": parts}]}
        bodies += [("/v1/chat/completions", chat), ("/v1/responses", responses)]
    return bodies


# Google's endpoint parses JSON by proto-JSON rules, which take a field's lowerCamelCase name as well as
# its proto name (``image_url`` and ``imageUrl``): each URL member's camelCase spelling, holding the URL itself.
CAMEL_PARTS = [
    ("/v1/chat/completions", {"type": "image_url", "imageUrl": "URL"}),
    ("/v1/chat/completions", {"type": "file", "file": {"fileData": "URL"}}),
    ("/v1/chat/completions", {"type": "video_url", "videoUrl": "URL"}),
    ("/v1/chat/completions", {"type": "input_audio", "audioUrl": "URL"}),
    ("/v1/responses", {"type": "input_image", "imageUrl": "URL"}),
    ("/v1/responses", {"type": "input_file", "fileUrl": "URL"}),
]


def camel_bodies(name: str) -> list[tuple[str, dict]]:
    """Each :data:`CAMEL_PARTS` part naming the Gemini file ``name`` by its ``uri``, in its body."""
    url, bodies = URI + name.removeprefix("files/"), []
    for path, part in CAMEL_PARTS:
        named = json.loads(json.dumps(part).replace('"URL"', json.dumps(url)))
        if path == "/v1/responses":
            bodies.append((path, {"model": MODEL, "input": [{"role": "user", "content": [named]}]}))
        else:
            bodies.append((path, {"model": MODEL, "messages": [{"role": "user", "content": [named]}]}))
    return bodies


def test_another_keys_gemini_file_in_an_openai_shaped_body_is_not_found_unasked(server, alices, mock):
    """Google's OpenAI-compatible endpoint reads an uploaded file from a part's URL: another key's
    file (or one Stockyard never saw) is the native path's 404, in OpenAI's shape, before the provider."""
    bob = server.openai("bob")
    for name in (alices["gemini_file"], "files/never-uploaded-here"):
        for path, body in gemini_file_bodies(name):
            before = len(mock.requests)
            with pytest.raises(openai.NotFoundError) as refused:
                bob.post(path.removeprefix("/v1"), body=body, cast_to=object)
            error = refused.value.body
            assert error["code"] == "not_found" and "File not found" in error["message"], error
            assert error["param"].endswith("url"), error
            assert not sent_naming(mock, before, name.removeprefix("files/"))


def test_the_keys_own_gemini_file_in_an_openai_shaped_body_goes_on(server, alices, mock):
    """Under a camelCase member too (in chat: a Responses body is translated, its unknown members left out)."""
    alice = server.openai("alice")
    camel = [(path, body) for path, body in camel_bodies(alices["gemini_file"]) if path == "/v1/chat/completions"]
    for path, body in gemini_file_bodies(alices["gemini_file"], variant=False) + camel:
        before = len(mock.requests)
        try:
            alice.post(path.removeprefix("/v1"), body=body, cast_to=object)
        except openai.NotFoundError as answer:  # the mock serves no OpenAI-compatible Google endpoint
            assert "File not found" not in str(answer.body), answer.body
        sent = sent_naming(mock, before, alices["gemini_file"].removeprefix("files/"))
        assert sent == ["/v1beta/openai/chat/completions"], (path, sent)  # Responses translated to chat


def test_a_body_naming_no_gemini_file_is_not_refused(server, alices, mock):
    """Text that merely mentions Google's file host or ``files/`` names no file (only URL members do)."""
    alice = server.openai("alice")
    text = f"see {URI}abc and files/abc"
    before = len(mock.requests)
    try:
        alice.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}])
    except openai.NotFoundError as answer:
        assert "File not found" not in str(answer.body), answer.body
    assert sent_naming(mock, before, "files/abc")


def test_a_batch_line_naming_another_keys_gemini_file_is_not_found(server, alices):
    """Google's OpenAI-compatible batches run their lines under the one provider key too."""
    image = {"type": "image_url", "image_url": {"url": URI + alices["gemini_file"].removeprefix("files/")}}
    body = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": [image]}]}
    line = json.dumps({"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": body}).encode()
    with pytest.raises(openai.NotFoundError) as refused:
        server.openai("bob").files.create(file=("b.jsonl", io.BytesIO(line + b"\n")), purpose="batch")
    message = refused.value.body["message"]
    assert "File not found" in message and "line 1 of the batch file" in message, message


def test_only_a_body_with_a_url_member_is_walked_for_gemini_file_urls():
    """The byte test spares a body without a URL member the walk, and is never fooled by an escape;
    the walk reads URL members only, never ``metadata`` or text."""
    plain = {"model": "m", "messages": [{"role": "user", "content": f"see {URI}abc"}]}
    assert not may_name_file_url(json.dumps(plain).encode())
    assert referenced_file_urls({**plain, "metadata": {"url": "files/a"}}) == {}
    image = {"type": "image_url", "image_url": {"url": "files/abc"}}
    named = {"model": "m", "messages": [{"role": "user", "content": [image]}]}
    assert may_name_file_url(json.dumps(named).encode())
    assert may_name_file_url(json.dumps(named).replace("url", "\\u0075rl").encode())  # an escaped member name
    assert referenced_file_urls(named) == {"files/abc": "messages[0].content[0].image_url.url"}


def test_another_keys_gemini_file_under_a_camel_case_url_member_is_not_found_unasked(server, alices, mock):
    """``imageUrl``, ``fileUrl``, ``videoUrl``, ``audioUrl`` and ``fileData`` name a file as their
    snake_case spellings do: another key's is the same 404, before the provider."""
    bob = server.openai("bob")
    for path, body in camel_bodies(alices["gemini_file"]):
        before = len(mock.requests)
        with pytest.raises(openai.NotFoundError) as refused:
            bob.post(path.removeprefix("/v1"), body=body, cast_to=object)
        error = refused.value.body
        assert error["code"] == "not_found" and "File not found" in error["message"], (body, error)
        assert error["param"].endswith(("Url", "fileData")), error
        assert not sent_naming(mock, before, alices["gemini_file"].removeprefix("files/"))


def test_a_camel_case_url_member_is_walked_for_gemini_file_urls():
    """The byte test lets a body whose only URL member is camelCase through to the walk, which reads it."""
    for _, body in camel_bodies("files/abc"):
        raw = json.dumps(body).encode()
        assert may_name_file_url(raw), body
        assert list(referenced_file_urls(body)) == [URI + "abc"], body
    only = {"model": "m", "messages": [{"role": "user", "content": [{"type": "x", "imageUrl": "files/abc"}]}]}
    assert may_name_file_url(json.dumps(only).encode())
    assert referenced_file_urls(only) == {"files/abc": "messages[0].content[0].imageUrl"}
    part = {"type": "file", "file": {"fileData": "files/a"}}
    data = {"model": "m", "messages": [{"role": "user", "content": [part]}]}
    assert may_name_file_url(json.dumps(data).encode())
    assert referenced_file_urls(data) == {"files/a": "messages[0].content[0].file.fileData"}
    for name in URL_FIELDS:  # each member the walk reads, the byte test lets through
        assert may_name_file_url(json.dumps({"input": [{name: "files/a"}]}).encode()), name


# -- 2. a top-level file_id in a video create's JSON and a file upload's form -----------------------


def test_a_video_creates_top_level_file_id_names_only_the_keys_files(server, alices, mock):
    """In a JSON body (raw HTTP) and in a form (the SDK sends a create as one, ``extra_body`` as its fields)."""
    body = {"model": "sora-2", "prompt": "x", "file_id": alices["file"]}
    before = len(mock.requests)
    status, _, answer = server.request("POST", "/v1/videos", body, headers=server.auth("bob"))
    assert status == 404 and json.loads(answer)["error"]["param"] == "file_id", (status, answer)
    with pytest.raises(openai.NotFoundError) as refused:
        server.openai("bob").videos.create(model="sora-2", prompt="x", extra_body={"file_id": alices["file"]})
    assert refused.value.body["param"] == "file_id", refused.value.body
    assert not sent_naming(mock, before, alices["file"])
    status, _, answer = server.request("POST", "/v1/videos", body, headers=server.auth("alice"))
    assert status == 200, answer


def test_a_file_uploads_file_id_field_names_only_the_keys_files(server, alices, mock):
    raw, kind = form([("purpose", "user_data"), ("file_id", alices["file"])], [("file", "b.txt", b"hi", "text/plain")])
    before = len(mock.requests)
    as_bob = {**server.auth("bob"), "Content-Type": kind}
    status, _, answer = server.request("POST", "/v1/files", raw=raw, headers=as_bob)
    assert status == 404 and json.loads(answer)["error"]["param"] == "file_id", (status, answer)
    assert not sent_naming(mock, before, alices["file"])
    status, _, answer = server.request(
        "POST", "/v1/files", raw=raw, headers={**server.auth("alice"), "Content-Type": kind}
    )
    assert status == 200, answer


# -- 3. a video form's input_reference[file_id], looked up once -------------------------------------


@pytest.mark.parametrize("field", ["input_reference[file_id]", "input_reference"])
def test_a_video_forms_input_reference_answers_as_before(server, alices, mock, field):
    """Another key's file is the 404 naming ``input_reference``; the key's own goes on."""
    value = alices["file"] if field.endswith("]") else json.dumps({"file_id": alices["file"]})
    raw, kind = form([("model", "sora-2"), ("prompt", "x"), (field, value)], [])
    before = len(mock.requests)
    status, _, answer = server.request(
        "POST", "/v1/videos", raw=raw, headers={**server.auth("bob"), "Content-Type": kind}
    )
    assert status == 404, (status, answer)
    error = json.loads(answer)["error"]
    assert error["param"] == "input_reference" and alices["file"] in error["message"], error
    assert not sent_naming(mock, before, alices["file"])
    status, _, answer = server.request(
        "POST", "/v1/videos", raw=raw, headers={**server.auth("alice"), "Content-Type": kind}
    )
    assert status == 200, answer


# -- 4. an item_reference naming an item a Stockyard conversation holds -----------------------------


@pytest.mark.parametrize("reference", [{"type": "item_reference"}, {}])
def test_an_item_reference_to_a_conversation_item_sends_the_item(server, alices, mock, reference):
    """Stockyard made the id, so the provider cannot know it: the item goes in its place."""
    alice = server.openai("alice")
    before = len(mock.requests)
    answer = alice.responses.create(
        model="gpt-4o-mini", input=[{**reference, "id": alices["item"]}, {"role": "user", "content": "go on"}]
    )
    assert answer.status == "completed"
    sent = [r for r in mock.requests[before:] if r.path == "/v1/responses"]
    assert len(sent) == 1
    items = sent[0].json["input"]
    assert "alice's secret note" in json.dumps(items), items
    assert not [i for i in items if isinstance(i, dict) and (i.get("type") == "item_reference" or "role" not in i)]
    assert alices["item"] not in sent[0].body.decode()  # the minted id is Stockyard's, never the provider's


def test_an_item_reference_to_another_keys_conversation_item_is_refused_unasked(server, alices, mock):
    """As a made-up id of that shape is: the 400 for an item this key does not hold, nothing sent."""
    bob = server.openai("bob")
    answers = []
    for ref in (alices["item"], "msg_sy" + "0" * 32):
        before = len(mock.requests)
        with pytest.raises(openai.BadRequestError) as refused:
            bob.responses.create(model="gpt-4o-mini", input=[{"type": "item_reference", "id": ref}])
        answers.append((refused.value.body["param"], refused.value.body["message"].replace(ref, "ID")))
        assert len(mock.requests) == before
    assert answers[0] == answers[1] and answers[0][0] == "input[0].id", answers


def test_a_reference_in_a_conversations_turn_keeps_the_item(server, alices, mock):
    """A turn appended to a conversation keeps the item a reference named, never the reference."""
    alice = server.openai("alice")
    other = alice.conversations.create()
    alice.responses.create(
        model="gpt-4o-mini", conversation=other.id, input=[{"type": "item_reference", "id": alices["item"]}]
    )
    kept = alice.conversations.items.list(other.id, order="asc").data
    assert kept[0].type == "message" and kept[0].content[0].text == "alice's secret note", kept


def test_items_named_by_id_are_read_through_the_id_index(tmp_path):
    """The items an item_reference names by a minted id are found by an index search, not a scan of
    every key's items (test_report_plans shows an item by conversation and id still takes its index)."""
    backend = SqliteBackend(tmp_path / "stockyard.db")
    backend.open_and_migrate()
    store = Store(backend)
    try:
        ids = ["msg_x"] * NAMED_SQL.count("?")
        plan = [r[3] for r in store.read().execute("EXPLAIN QUERY PLAN " + NAMED_SQL, ids)]
        assert any("USING INDEX conversation_item_ids (id=?)" in step for step in plan), plan
        assert not any(step.startswith("SCAN") for step in plan), plan
    finally:
        store.close()

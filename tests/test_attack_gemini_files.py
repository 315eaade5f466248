"""An attacker's pass over the Gemini Files API routes (``gemini_files``): another key's file reached
by a path or a URI variant, upload tokens guessed or replayed, the upload URL steered elsewhere.
Each answer is checked in Google's shape, and that the provider was not asked."""

from __future__ import annotations

import json
from urllib.parse import quote, urlsplit

import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import GEMINI_FILES, MockUpstream, Reply
from rawhttp import connect, read_response
from test_gemini_files import call, chunk, generate, google_error, send, start, upload, upload_url

GEMINI_KEY = "AIza-attack-files-0123456789PROVIDERSECRET"
MODEL = "gemini-files-model"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=mock.url)
    keys = {"alice": [], "bob": []}
    with served(pyz_path, tmp_path_factory, "gfiles-attack", env, keys, never_logged=(GEMINI_KEY,)) as srv:
        yield srv


def asked(mock: MockUpstream) -> int:
    return sum(1 for r in mock.requests if "files" in r.path or "cachedContents" in r.path or ":" in r.path)


@pytest.fixture(scope="module")
def alices(server) -> dict:
    return upload(server, "alice", b"alice's private video")


@pytest.mark.parametrize(
    "path",
    [
        "/v1beta/files/../cachedContents/{cache}",
        "/v1beta/files/%2e%2e/cachedContents/{cache}",
        "/v1beta/files/{id}%2F..",
        "/v1beta/files/{id}%2fx",
        "/v1beta/files/{upper}",
        "/v1beta/files/{id}.",
        "/v1beta/files/.",
        "/v1beta/files/..",
        "/v1beta/files/" + "a" * 41,
        "/v1beta/files/{id}:download",
        "/v1beta/files/{id}/",
        "/v1beta//files/{id}",
    ],
)
def test_path_tricks_reach_no_other_keys_object(server, mock, alices, path) -> None:
    status, _, cache = call(
        server, "alice", "POST", "/v1beta/cachedContents", {"model": f"models/{MODEL}", "contents": []}
    )
    assert status == 200, cache
    file_id = alices["name"].removeprefix("files/")
    target = path.format(cache=cache["name"].removeprefix("cachedContents/"), id=file_id, upper=file_id.upper())
    before = asked(mock)
    for method in ("GET", "DELETE"):
        status, _, raw = send(server, method, target, None, {"x-goog-api-key": server.keys["bob"]})
        assert status in (400, 404), (target, status, raw)
        assert json.loads(raw)["error"]["code"] == status  # Google's shape
    assert asked(mock) == before
    assert file_id in GEMINI_FILES.files


@pytest.mark.parametrize(
    "uri",
    [
        "HTTPS://GenerativeLanguage.googleapis.com/v1beta/files/{id}",
        "http://generativelanguage.googleapis.com/v1beta/files/{id}",
        "https://generativelanguage.googleapis.com/v1beta/files/{id}?alt=media",
        "https://generativelanguage.googleapis.com/v1beta/files/../files/{id}",
        "https://generativelanguage.googleapis.com:443/v1/files/{id}",
        "https://generativelanguage.googleapis.com/v1alpha/files/{id}",
        " files/{id}",
        "files/{id}",
        "FILES/{id}",
    ],
)
def test_uri_variants_of_another_keys_file_are_refused_unasked(server, mock, alices, uri) -> None:
    named = uri.format(id=alices["name"].removeprefix("files/"))
    before = asked(mock)
    for spelling in ("fileData", "file_data"):
        status, _, doc = generate(server, "bob", named, spelling=spelling)
        assert status == 404 and google_error(doc, 404, "NOT_FOUND")
    assert asked(mock) == before


def test_escaped_json_and_nested_shapes_are_walked(server, mock, alices) -> None:
    file_id = alices["name"].removeprefix("files/")
    bodies = [
        b'{"contents": [{"role": "user", "parts": [{"fileData": {"fileUri": "files\\/%s"}}]}]}' % file_id.encode(),
        b'{"contents": [{"role": "user", "parts": [{"fileData": {"fileUri": "\\u0066iles/%s"}}]}]}' % file_id.encode(),
        json.dumps({"systemInstruction": {"parts": [{"file_data": {"file_uri": alices["uri"]}}]}}).encode(),
    ]
    before = asked(mock)
    for body in bodies:
        status, _, raw = send(
            server,
            "POST",
            f"/v1beta/models/{MODEL}:generateContent",
            body,
            {"x-goog-api-key": server.keys["bob"], "Content-Type": "application/json"},
        )
        assert status == 404 and google_error(json.loads(raw), 404, "NOT_FOUND"), body
    wrapped = {
        "generateContentRequest": {
            "model": f"models/{MODEL}",
            "contents": [{"role": "user", "parts": [{"fileData": {"fileUri": alices["uri"]}}]}],
        }
    }
    status, _, doc = call(server, "bob", "POST", f"/v1beta/models/{MODEL}:countTokens", wrapped)
    assert status == 404, doc
    assert asked(mock) == before


def test_an_openai_client_cannot_name_another_keys_file_through_a_translation(server, mock, alices) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": alices["uri"]}}]}],
    }
    before = asked(mock)
    status, _, raw = server.request(
        "POST", "/v1/chat/completions", body, headers={"Authorization": f"Bearer {server.keys['bob']}"}
    )
    # another key's file is the 404 of every body naming one (before the translation's 400 for a file URL)
    assert status == 404 and json.loads(raw)["error"]["code"] == "not_found", raw
    assert asked(mock) == before


def test_guessed_malformed_and_replayed_tokens_are_404(server, mock) -> None:
    before = asked(mock)
    for token in ("A" * 43, "", "x" * 5000, quote("../../v1beta/files"), "%00" * 43, quote("A" * 42 + "\n")):
        status, headers, raw = chunk(server, f"/upload/v1beta/files?upload_id={token}", b"abc", 0, True)
        assert status == 404 and google_error(json.loads(raw), 404, "NOT_FOUND"), token
        assert headers["x-goog-upload-status"] == "final"
    assert asked(mock) == before
    target = upload_url(server, "alice", 3)
    assert chunk(server, target, b"abc", 0, True)[0] == 200
    for key in (None, server.keys["alice"]):  # replayed after finalize, with or without its key
        status, _, raw = chunk(server, target, b"abc", 0, True, key=key)
        assert status == 404


def test_a_chunk_with_another_key_in_the_query_is_refused(server, mock) -> None:
    target = upload_url(server, "alice", 3)
    before = asked(mock)
    last = {"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"}
    status, _, raw = send(server, "POST", f"{target}&key={server.keys['bob']}", b"abc", last)
    assert status == 404 and google_error(json.loads(raw), 404, "NOT_FOUND")
    status, _, raw = send(server, "POST", target, b"abc", {**last, "x-goog-api-key": "sk-sy-nonsense"})
    assert status == 401
    assert asked(mock) == before
    assert chunk(server, target, b"abc", 0, True)[0] == 200  # still alice's to finish


def test_the_upload_url_cannot_be_steered_by_the_clients_headers(server) -> None:
    status, headers, _ = start(server, "alice", 3)
    assert status == 200
    for extra in (
        {"X-Forwarded-Host": "evil.example"},
        {"X-Forwarded-Prefix": "/evil"},
        {"X-Forwarded-Proto": "gopher"},
    ):
        sent = {
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": "3",
            "x-goog-api-key": server.keys["alice"],
            **extra,
        }
        status, got, raw = send(server, "POST", "/upload/v1beta/files", b"{}", sent)
        assert status == 200, raw
        parts = urlsplit(got["x-goog-upload-url"])
        assert f"{parts.scheme}://{parts.netloc}" == server.url and parts.path == "/upload/v1beta/files"
    with connect(server) as sock:  # a Host this server does not answer for: refused, no URL made of it
        sock.sendall(
            b"POST /upload/v1beta/files HTTP/1.1\r\nHost: evil.example\r\nX-Goog-Upload-Protocol: resumable\r\n"
            b"X-Goog-Upload-Command: start\r\nX-Goog-Upload-Header-Content-Length: 3\r\n"
            b"x-goog-api-key: " + server.keys["alice"].encode() + b"\r\nContent-Length: 2\r\n\r\n{}"
        )
        status, head, _ = read_response(sock)
    assert status == 421 and "x-goog-upload-url" not in {k.lower() for k in head}


def test_the_providers_upload_url_stays_inside_and_loses_any_key(server, mock) -> None:
    theirs = f"{mock.url}/upload/v1beta/files?upload_id=mockupload-x&key={GEMINI_KEY}&upload_protocol=resumable"
    mock.enqueue(Reply(body=b"", headers={"x-goog-upload-url": theirs, "x-goog-upload-status": "active"}))
    status, headers, raw = start(server, "alice", 3)
    assert status == 200 and GEMINI_KEY not in json.dumps(headers) and b"mockupload" not in raw
    assert "mockupload" not in headers["x-goog-upload-url"]
    rows = server.db_rows("SELECT upload_path FROM gemini_uploads")
    assert rows and not any(GEMINI_KEY in r["upload_path"] for r in rows)
    assert any(r["upload_path"].endswith("upload_id=mockupload-x&upload_protocol=resumable") for r in rows)
    mock.enqueue(Reply(body=b"", headers={"x-goog-upload-url": "http://evil.example/upload?upload_id=1"}))
    status, _, raw = start(server, "alice", 3)
    assert status == 502 and json.loads(raw)["error"]["code"] == 502


def test_a_name_the_client_picks_is_checked_and_a_stale_owner_loses_it(server, mock) -> None:
    for name in ("../cachedContents/x", "files/UPPER", "files/a/b", "a" * 41, "files/", 7):
        status, _, raw = start(server, "alice", 3, name=name)
        assert status == 400 and google_error(json.loads(raw), 400, "INVALID_ARGUMENT"), name
    mine = upload(server, "alice", b"abc", name="files/shared-name")
    assert mine["name"] == "files/shared-name"
    status, _, raw = start(server, "bob", 3, name="shared-name")  # the provider holds it: its 409 as it came
    assert status == 409
    del GEMINI_FILES.files["shared-name"]  # it expired at the provider (48 hours), its row stayed
    server.db_write(  # … made two days ago
        "UPDATE owned_objects SET created_at = created_at - 49 * 3600 * 1000 WHERE id = 'files/shared-name'"
    )
    theirs = upload(server, "bob", b"xyz", name="shared-name")
    assert theirs["name"] == "files/shared-name"
    assert call(server, "alice", "GET", "/v1beta/files/shared-name")[0] == 404  # the new file is bob's
    assert call(server, "bob", "GET", "/v1beta/files/shared-name")[0] == 200


def test_the_v1_files_routes_stay_openais_for_an_openai_client(server, mock) -> None:
    status, _, raw = server.request("GET", "/v1/files", headers={"Authorization": f"Bearer {server.keys['alice']}"})
    doc = json.loads(raw)
    assert "files" not in doc  # OpenAI's list shape (or its error), never Gemini's


def test_two_keys_racing_for_one_name_leave_it_with_the_first_to_finish(server, mock) -> None:
    """Both start an upload naming ``files/raced`` before either finishes (the provider refused a taken
    name at the start only, as the mock does): the second finalize must not take the name from the
    first key, whose file it is for two days."""
    alices, bobs = upload_url(server, "alice", 3, name="files/raced"), upload_url(server, "bob", 3, name="files/raced")
    assert chunk(server, alices, b"abc", 0, True)[0] == 200
    assert chunk(server, bobs, b"xyz", 0, True)[0] == 200
    assert call(server, "alice", "GET", "/v1beta/files/raced")[0] == 200
    assert call(server, "bob", "GET", "/v1beta/files/raced")[0] == 404

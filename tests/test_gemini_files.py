"""Gemini's Files API (``/upload/v1beta/files``, ``/v1beta/files``) through Stockyard, owned per client key.

Raw HTTP as google-genai 3.x sends it (``files.upload``: the resumable protocol, ``start`` with
the key in ``x-goog-api-key``, then the bytes in 8 MiB ``upload`` chunks and a last
``upload, finalize`` at the URL the start answered — sent WITHOUT the key, as the SDK does).
The upload URL is Stockyard's own, never Google's; the file belongs to the key that started the
upload: another key gets Google's 404 for it, never sees it listed, and cannot name it in a
generateContent (``fileData.fileUri``) or a cache.
"""

from __future__ import annotations

import http.client
import json
import re
from urllib.parse import urlsplit

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import GEMINI_FILES, MockUpstream

GEMINI_KEY = "AIza-files-0123456789abcdefPROVIDERSECRET"
MODEL = "gemini-files-model"
URI = "https://generativelanguage.googleapis.com/v1beta/files/"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=mock.url)
    price = ("prices", "set", MODEL, "--input", "1", "--output", "2")
    with served(pyz_path, tmp_path_factory, "gfiles", env, {"alice": [], "bob": []}, [price], (GEMINI_KEY,)) as srv:
        yield srv


def send(server: ServerProcess, method: str, target: str, body: bytes | None, headers: dict[str, str]):
    """(status, headers lower-cased, raw body) of one request, by http.client (any body, any headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def call(server: ServerProcess, who: str | None, method: str, path: str, body: dict | None = None):
    headers = {"x-goog-api-key": server.keys[who]} if who else {}
    status, got, raw = server.request(method, path, body, headers=headers)
    return status, got, json.loads(raw) if raw else {}


def google_error(doc: dict, status: int, name: str) -> str:
    assert set(doc) == {"error"} and doc["error"]["code"] == status and doc["error"]["status"] == name, doc
    return doc["error"]["message"]


def start(
    server: ServerProcess, who: str | None, size: int, version: str = "v1beta", **meta
) -> tuple[int, dict, bytes]:
    headers = {
        "Content-Type": "application/json",
        "X-Goog-Upload-Protocol": "resumable",
        "X-Goog-Upload-Command": "start",
        "X-Goog-Upload-Header-Content-Length": str(size),
        "X-Goog-Upload-Header-Content-Type": "video/mp4",
        **({"x-goog-api-key": server.keys[who]} if who else {}),
    }
    return send(server, "POST", f"/upload/{version}/files", json.dumps({"file": meta}).encode(), headers)


def upload_url(server: ServerProcess, who: str, size: int, **meta) -> str:
    """Where the bytes go (the path and query, checked to be this server's)."""
    status, headers, raw = start(server, who, size, **meta)
    assert status == 200, raw
    url = headers["x-goog-upload-url"]
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == server.url, url  # never the provider's
    assert parts.path == "/upload/v1beta/files" and "upload_id=" in parts.query
    return f"{parts.path}?{parts.query}"


def chunk(server: ServerProcess, target: str, data: bytes, offset: int, last: bool, key: str | None = None):
    headers = {
        "X-Goog-Upload-Command": "upload, finalize" if last else "upload",
        "X-Goog-Upload-Offset": str(offset),
        "Content-Length": str(len(data)),
        **({"x-goog-api-key": key} if key else {}),
    }
    return send(server, "POST", target, data, headers)


def upload(server: ServerProcess, who: str, data: bytes, piece: int = 0, **meta) -> dict:
    """google-genai's ``files.upload``: start, then the chunks (the key not sent with them)."""
    target = upload_url(server, who, len(data), **meta)
    piece = piece or len(data) or 1
    offset = 0
    while True:
        part = data[offset : offset + piece]
        last = offset + len(part) >= len(data)
        status, headers, raw = chunk(server, target, part, offset, last)
        assert status == 200, raw
        offset += len(part)
        if last:
            assert headers["x-goog-upload-status"] == "final"
            return json.loads(raw)["file"]
        assert headers["x-goog-upload-status"] == "active"


def file_calls(mock: MockUpstream) -> int:
    return sum(1 for r in mock.requests if "/files" in r.path or r.path.startswith("/v1beta/models/"))


def generate(server: ServerProcess, who: str, uri: str, action: str = "generateContent", spelling: str = "fileData"):
    part = {spelling: {"fileUri" if spelling == "fileData" else "file_uri": uri, "mimeType": "video/mp4"}}
    body = {"contents": [{"role": "user", "parts": [part, {"text": "What happens?"}]}]}
    return call(server, who, "POST", f"/v1beta/models/{MODEL}:{action}", body)


def test_upload_get_list_generate_and_delete(server, mock) -> None:
    data = bytes(range(256)) * 100
    made = upload(server, "alice", data, piece=10_000, display_name="clip")
    assert made["name"].startswith("files/") and made["displayName"] == "clip" and made["sizeBytes"] == str(len(data))
    file_id = made["name"].removeprefix("files/")
    sent = [r for r in mock.requests if r.path == "/upload/v1beta/files"]
    assert all(r.headers["x-goog-api-key"] == GEMINI_KEY for r in sent[-4:])  # the provider's key, on every step
    assert b"".join(r.body for r in sent[-3:]) == data  # the bytes, as sent, in order
    status, _, got = call(server, "alice", "GET", f"/v1beta/{made['name']}")
    assert status == 200 and got == made
    status, _, got = call(server, "alice", "GET", f"/v1/{made['name']}")  # google-genai's default version
    assert status == 200 and got == made
    status, _, listed = call(server, "alice", "GET", "/v1beta/files")
    assert status == 200 and made["name"] in [f["name"] for f in listed["files"]]
    status, _, listed = call(server, "alice", "GET", "/v1/files?pageSize=100")
    assert status == 200 and made["name"] in [f["name"] for f in listed["files"]]
    for action in ("generateContent", "countTokens"):
        status, _, doc = generate(server, "alice", made["uri"], action)
        assert status == 200, doc
    status, _, doc = generate(server, "alice", made["name"], spelling="file_data")  # files/{id}, snake_case
    assert status == 200, doc
    wanted = {"gemini_files.upload", "gemini_files.retrieve", "gemini_files.list"}
    query = "SELECT endpoint, cost_uc FROM traces WHERE endpoint LIKE 'gemini_files.%'"
    rows = wait_for(  # the writer commits a trace after its answer went out
        lambda: (found := server.db_rows(query)) and {r["endpoint"] for r in found} >= wanted and found,
        what="every call's trace",
    )
    assert all(r["cost_uc"] == 0 for r in rows)
    status, _, _ = call(server, "alice", "DELETE", f"/v1beta/files/{file_id}")
    assert status == 200 and file_id not in GEMINI_FILES.files
    status, _, doc = call(server, "alice", "GET", f"/v1beta/files/{file_id}")
    google_error(doc, 404, "NOT_FOUND")


def test_another_keys_file_is_a_404_unasked_and_never_listed(server, mock) -> None:
    made = upload(server, "alice", b"secret video bytes")
    before = file_calls(mock)
    for method in ("GET", "DELETE"):
        status, _, doc = call(server, "bob", method, f"/v1beta/{made['name']}")
        assert google_error(doc, 404, "NOT_FOUND") and status == 404
    for uri in (made["uri"], made["name"], URI + "never-made"):
        for action in ("generateContent", "streamGenerateContent", "countTokens"):
            status, _, doc = generate(server, "bob", uri, action)
            assert status == 404 and google_error(doc, 404, "NOT_FOUND")
    body = {
        "model": f"models/{MODEL}",
        "contents": [{"role": "user", "parts": [{"fileData": {"fileUri": made["uri"]}}]}],
    }
    status, _, doc = call(server, "bob", "POST", "/v1beta/cachedContents", body)
    assert status == 404 and google_error(doc, 404, "NOT_FOUND")
    assert file_calls(mock) == before  # not asked: the provider would read it
    status, _, listed = call(server, "bob", "GET", "/v1beta/files")
    assert status == 200 and made["name"] not in [f["name"] for f in listed.get("files", [])]
    assert made["name"].removeprefix("files/") in GEMINI_FILES.files  # still there, for alice
    status, _, doc = generate(server, "alice", "https://example.com/cat.png")  # other URIs pass as before
    assert status == 200, doc


def test_the_list_pages_through_only_the_keys_own(server) -> None:
    mine = [upload(server, "alice", b"a" * 10)["name"] for _ in range(3)]
    upload(server, "bob", b"b" * 10)
    names, token = [], ""
    for _ in range(10):
        status, _, page = call(server, "alice", "GET", f"/v1beta/files?pageSize=2&pageToken={token}")
        assert status == 200 and len(page.get("files", [])) <= 2
        names += [f["name"] for f in page.get("files", [])]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert set(mine) <= set(names) and len(names) == len(set(names))
    status, _, doc = call(server, "alice", "GET", "/v1beta/files?pageToken=not-one-of-ours")
    google_error(doc, 400, "INVALID_ARGUMENT")


def test_an_upload_is_continued_only_by_its_own_key_and_only_until_finalized(server, mock) -> None:
    data = b"0123456789" * 10
    target = upload_url(server, "alice", len(data))
    before = file_calls(mock)
    status, headers, raw = chunk(server, target, data, 0, True, key=server.keys["bob"])  # another key
    assert status == 404 and google_error(json.loads(raw), 404, "NOT_FOUND")
    assert headers.get("x-goog-upload-status") == "final"  # google-genai stops at once, without retrying
    forged = re.sub(r"upload_id=[^&]+", "upload_id=" + "A" * 43, target)
    status, _, raw = chunk(server, forged, data, 0, True)  # a guessed token
    assert status == 404 and google_error(json.loads(raw), 404, "NOT_FOUND")
    assert file_calls(mock) == before
    status, _, raw = chunk(server, target, data, 0, True)  # its own: the token, no key (as the SDK sends it)
    assert status == 200, raw
    status, _, raw = chunk(server, target, data, 0, True)  # replayed after finalize
    assert status == 404 and google_error(json.loads(raw), 404, "NOT_FOUND")


def test_a_revoked_key_cannot_finish_its_upload(server) -> None:
    keys = server.create_keys({"leaving": []})
    server.keys.update(keys)
    wait_for(lambda: call(server, "leaving", "GET", "/v1beta/files")[0] == 200, timeout=15)  # the reload saw it
    target = upload_url(server, "leaving", 4)
    assert server.cli("keys", "revoke", "leaving").returncode == 0
    wait_for(lambda: call(server, "leaving", "GET", "/v1beta/files")[0] == 401, timeout=15)
    status, _, raw = chunk(server, target, b"abcd", 0, True)
    assert status == 401 and json.loads(raw)["error"]["code"] == 401


def test_a_large_upload_is_spooled_not_held(server) -> None:
    """64 MiB in one chunk: the server's memory does not grow by the upload (it is spooled)."""
    size = 64 * 1024 * 1024
    target = upload_url(server, "alice", size)
    pid = server.proc.pid

    def rss_kb() -> int:
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    before = rss_kb()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    headers = {"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0", "Content-Length": str(size)}
    conn.putrequest("POST", target)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    block = b"v" * (1024 * 1024)
    for _ in range(size // len(block)):
        conn.send(block)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    assert resp.status == 200, raw
    assert json.loads(raw)["file"]["sizeBytes"] == str(size)
    grown_mb = (rss_kb() - before) / 1024
    assert grown_mb < 32, f"the server's memory grew {grown_mb:.0f} MB for a 64 MB upload"


@pytest.mark.parametrize(
    "headers, body",
    [
        ({"X-Goog-Upload-Protocol": "multipart"}, b"{}"),
        ({"X-Goog-Upload-Command": "upload"}, b"{}"),
        ({"X-Goog-Upload-Header-Content-Length": "lots"}, b"{}"),
        ({"X-Goog-Upload-Header-Content-Length": "-1"}, b"{}"),
        ({"X-Goog-Upload-Header-Content-Type": "video/mp4\x7f"}, b"{}"),
        ({}, b"not json"),
        ({}, b"[]"),
        ({}, b'{"file": "x"}'),
        ({}, b'{"file": {"name": 5}}'),
    ],
)
def test_a_malformed_start_is_a_400_in_googles_shape(server, mock, headers, body) -> None:
    sent = {
        "Content-Type": "application/json",
        "X-Goog-Upload-Protocol": "resumable",
        "X-Goog-Upload-Command": "start",
        "X-Goog-Upload-Header-Content-Length": "10",
        "x-goog-api-key": server.keys["alice"],
        **headers,
    }
    before = file_calls(mock)
    status, _, raw = send(server, "POST", "/upload/v1beta/files", body, sent)
    assert status == 400 and google_error(json.loads(raw), 400, "INVALID_ARGUMENT")
    assert file_calls(mock) == before


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Goog-Upload-Command": "cancel"},
        {"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "ten"},
        {"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "-4"},
        {"X-Goog-Upload-Command": "start"},
    ],
)
def test_a_malformed_chunk_is_a_400_in_googles_shape(server, headers) -> None:
    target = upload_url(server, "alice", 4)
    status, _, raw = send(server, "POST", target, b"abcd", headers)
    assert status == 400 and google_error(json.loads(raw), 400, "INVALID_ARGUMENT")


def test_query_tells_how_much_was_received(server) -> None:
    target = upload_url(server, "alice", 8)
    assert chunk(server, target, b"abcd", 0, False)[0] == 200
    status, headers, _ = send(server, "POST", target, b"", {"X-Goog-Upload-Command": "query"})
    assert status == 200 and headers["x-goog-upload-size-received"] == "4"
    assert headers["x-goog-upload-status"] == "active"
    status, _, raw = chunk(server, target, b"efgh", 4, True)
    assert status == 200 and json.loads(raw)["file"]["sizeBytes"] == "8"


def test_without_a_key_the_start_is_refused(server) -> None:
    status, _, raw = start(server, None, 4)
    assert status == 401 and json.loads(raw)["error"]["code"] == 401


def test_uploads_go_beside_a_base_url_with_a_path_and_a_version(pyz_path, cache_home, mock, tmp_path) -> None:
    """GEMINI_BASE_URL may name a gateway's prefix and an API version: the upload goes to
    ``{prefix}/upload/{version}/files``, and its bytes to the URL the provider answered."""
    env = mock_env(cache_home, mock, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=mock.url + "/v1beta")
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env)
    srv.keys = srv.create_keys({"alice": []})
    srv.start()
    try:
        made = upload(srv, "alice", b"0123456789", piece=4)
        assert made["sizeBytes"] == "10"
        sent = [r.path for r in mock.requests[-4:]]
        assert sent == ["/upload/v1beta/files"] * 4, sent
    finally:
        srv.stop()
    assert "Traceback" not in srv.log

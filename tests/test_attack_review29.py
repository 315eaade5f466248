"""An attacker's review from outside (review 29): what whoever reaches the port can do through the
file-bearing APIs, the Gemini-shaped endpoints, the URLs Stockyard fetches and the console.

Each test is a hole found (failing before its fix) or a claim checked and found sound, said in
its docstring. Real parts: a server process of the pyz on its own database, the mock upstream,
raw HTTP in the shape each API's clients send.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import openai
import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import MockUpstream
from module_helpers import ADMIN_KEY, put_module
from rawhttp import connect, read_response
from test_gemini_files import chunk, upload_url

GEMINI_KEY = "AIza-review29-0123456789abcdefPROVIDERSECRET"
DENIED = "gemini-2.5-pro"
CONTENTS = [{"role": "user", "parts": [{"text": "a long handbook " * 50}]}]


@pytest.fixture(scope="module")
def upstream():
    with MockUpstream() as mock:
        yield mock


@pytest.fixture(scope="module", params=["keys", "open"])
def server(request, pyz_path, cache_home, upstream, tmp_path_factory):
    env = mock_env(
        cache_home, upstream, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=upstream.url, STOCKYARD_ADMIN_KEY=ADMIN_KEY
    )
    keys = {"alice": []} if request.param == "keys" else None
    with served(pyz_path, tmp_path_factory, f"attack29-{request.param}", env, keys, never_logged=(GEMINI_KEY,)) as srv:
        yield srv


def google(server: ServerProcess, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """(status, parsed body) of one request as google-genai sends it (the key in x-goog-api-key)."""
    headers = {"x-goog-api-key": server.keys["alice"]} if server.keys else {}
    status, _, data = server.request(method, path, body, headers=headers)
    return status, json.loads(data) if data else {}


def cache_creates(mock: MockUpstream) -> int:
    return sum(1 for r in mock.requests if r.method == "POST" and r.path.endswith("/cachedContents"))


def test_a_context_cache_for_a_model_guard_denies_is_refused_before_the_provider(server, upstream):
    """Hole: guard's ``deny_models``/``allow_models`` held every route that names a model —
    generateContent, countTokens, batch files, message batches — but not a context cache's create,
    which went to Google under the provider key for a model the operator denied (the cache's
    tokens are written and stored at Google's cost), with keys and without. Now Google's 403,
    the provider unasked; a model the lists allow is still cached."""
    put_module(server, "guard", {"deny_models": [DENIED]})
    try:
        before = cache_creates(upstream)
        for asked in (f"models/{DENIED}", DENIED, f"gemini/{DENIED}", f"models/gemini/{DENIED}"):
            status, doc = google(server, "POST", "/v1beta/cachedContents", {"model": asked, "contents": CONTENTS})
            assert status == 403, (asked, doc)
            assert doc["error"]["status"] == "PERMISSION_DENIED" and DENIED in doc["error"]["message"], doc
        assert cache_creates(upstream) == before
        put_module(server, "guard", {"allow_models": ["gemini-2.5-flash"]})
        status, doc = google(
            server, "POST", "/v1beta/cachedContents", {"model": f"models/{DENIED}", "contents": CONTENTS}
        )
        assert status == 403, doc
        status, doc = google(
            server, "POST", "/v1beta/cachedContents", {"model": "models/gemini-2.5-flash", "contents": CONTENTS}
        )
        assert status == 200, doc
        assert cache_creates(upstream) == before + 1
    finally:
        put_module(server, "guard", {}, enabled=False)


# -- uploads: the spool's disk ------------------------------------------------------------------

SPOOL_ROOM = 4 * 1024 * 1024  # bytes one file of the server may grow to (RLIMIT_FSIZE): a full disk for the spool


class CappedFiles(ServerProcess):
    """A spawned server whose files may grow to ``SPOOL_ROOM`` bytes at most: a write past it fails
    (EFBIG; Python ignores SIGXFSZ), as a write to a full disk does (ENOSPC), without a small disk."""

    def _limit_open_files(self) -> None:
        import resource

        super()._limit_open_files()
        resource.setrlimit(resource.RLIMIT_FSIZE, (SPOOL_ROOM, SPOOL_ROOM))


@pytest.fixture(scope="module")
def capped(pyz_path, cache_home, upstream, tmp_path_factory):
    env = mock_env(cache_home, upstream, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=upstream.url)
    srv = CappedFiles(pyz_path, tmp_path_factory.mktemp("attack29-capped") / "stockyard.db", env, open_files=4096)
    srv.keys = srv.create_keys({"alice": []})
    yield srv.start()
    srv.stop()  # a spawned server of its own kind (CappedFiles), so not conftest.served: its log checked alike
    assert "Traceback" not in srv.log and GEMINI_KEY not in srv.log


def test_an_upload_the_disk_cannot_spool_is_a_503_not_a_traceback(capped, upstream):
    """Hole: a file write failing under an upload's spool (the disk full, as one key's uploads held
    at once can make it: nothing bounds their sum) was an unexpected error: a 500 ``internal_error``
    and a traceback in the log, for the Files API, the media uploads and Gemini's upload chunks
    alike. Now a 503 in the client's shape saying the server has no room to spool it, one log line
    without a traceback, the provider unasked; the server keeps serving, a small upload included."""
    too_big = b"x" * (SPOOL_ROOM + 1024 * 1024)
    before = len(upstream.requests)
    client = capped.openai("alice")

    with pytest.raises(openai.InternalServerError) as caught:
        client.files.create(file=("big.bin", too_big), purpose="user_data")
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "upload_spool_full", caught.value.body
    with pytest.raises(openai.InternalServerError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("big.wav", too_big))
    assert caught.value.status_code == 503
    target = upload_url(capped, "alice", len(too_big))  # Gemini's upload chunks are spooled alike
    before = len(upstream.requests)
    status, _, raw = chunk(capped, target, too_big, 0, True)
    assert status == 503 and json.loads(raw)["error"]["status"] == "UNAVAILABLE", raw
    assert len(upstream.requests) == before
    assert client.files.create(file=("small.txt", b"hello"), purpose="user_data").bytes == 5
    assert "Traceback" not in capped.log and "internal_error" not in capped.log
    assert capped.log.count("an upload could not be spooled") == 1  # once a minute


UPLOADS_MB = 8  # STOCKYARD_UPLOADS_MB of the bounded server
BOUNDARY = "review29"


@pytest.fixture(scope="module")
def bounded(pyz_path, cache_home, upstream, tmp_path_factory):
    env = mock_env(cache_home, upstream, STOCKYARD_UPLOADS_MB=str(UPLOADS_MB))
    with served(pyz_path, tmp_path_factory, "attack29-bounded", env, {"alice": [], "bob": []}) as srv:
        yield srv


@contextlib.contextmanager
def held_upload(server: ServerProcess, key: str, size: int) -> Iterator[None]:
    """A Files API upload of ``size`` bytes sent all but its closing boundary while the block runs
    (the server has spooled its bytes and waits for the rest, as a client trickling its end would
    hold it), then ended: answered 200, its room in the bound given back."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="held.bin"\r\n\r\n'
    ).encode()
    end = f"\r\n--{BOUNDARY}--\r\n".encode()
    sock = connect(server)
    try:
        sock.sendall(
            (
                f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.keys[key]}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                f"Content-Length: {len(head) + size + len(end)}\r\n\r\n"
            ).encode()
            + head
            + b"x" * size
        )
        # spooled but its last block, which the server reads whole: its end is held back
        wait_for(lambda: spooled(server) >= size - (64 << 10), what="the held upload spooled")
        yield
        sock.sendall(end)
        status, _, raw = read_response(sock, timeout=10)
        assert status == 200, raw
    finally:
        sock.close()
    wait_for(lambda: spooled(server) == 0, what="the uploads' room given back")


def spooled(server: ServerProcess) -> int:
    return int(server.metric("uploads_spooled_bytes"))


def test_uploads_spooled_at_once_are_bounded_in_all(bounded, upstream):
    """Hole: nothing bounded the bytes of uploads spooled at once (each is capped at
    STOCKYARD_MAX_UPLOAD_BYTES, their sum by nothing), so one key opening uploads on many
    connections and holding their ends back filled the disk the database lives on (512 MiB a
    connection, a quarter of the connection cap per address). Now ``STOCKYARD_UPLOADS_MB`` bounds
    them as ``STOCKYARD_REQUEST_BODIES_MB`` bounds bodies in memory: past it an upload waits 5 s for
    room, then is a 503 ``too_many_uploads`` the SDKs retry, the provider unasked; one alone always
    fits, and the room comes back when an upload ends."""
    size = 6 << 20
    with held_upload(bounded, "alice", size):
        before = len(upstream.requests)
        with pytest.raises(openai.InternalServerError) as caught:
            bounded.openai("bob").files.create(file=("second.bin", b"y" * size), purpose="user_data")
        assert caught.value.status_code == 503
        assert caught.value.body["code"] == "too_many_uploads", caught.value.body
        assert caught.value.response.headers["retry-after"] == "1"
        assert len(upstream.requests) == before
        assert bounded.metric("uploads_refused_total") == 1
        small = bounded.openai("bob").files.create(file=("small.txt", b"hello"), purpose="user_data")  # fits beside it
        assert small.bytes == 5
    assert bounded.openai("bob").files.create(file=("again.bin", b"y" * size), purpose="user_data").bytes == size
    alone = bounded.openai("alice").files.create(file=("alone.bin", b"z" * (10 << 20)), purpose="user_data")
    assert alone.bytes == 10 << 20  # larger than the bound, alone: fits
    assert "Traceback" not in bounded.log


def test_a_key_in_the_url_is_never_logged_or_stored_however_the_request_fails(server):
    """Found sound: google-genai may send the client key as ``?key=``; whatever becomes of the
    request — served, streamed, a framing error, a foreign Host or Origin, a head too large, a bad
    method, an unknown upload — the key is in no log line, no trace, nowhere in the database."""
    if not server.keys:
        pytest.skip("open mode: no client key to leak")
    key = server.keys["alice"]
    target = f"/v1beta/models/gemini-2.5-flash:generateContent?key={key}"
    heads = [
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{{}}",
        f"POST {target.replace(':generate', ':streamGenerate')}&alt=sse HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Length: 2\r\n\r\n{}",
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}",
        f"POST {target} HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 2\r\n\r\n{{}}",
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\nContent-Length: 2\r\n\r\n{{}}",
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nX: {'a' * 70000}\r\n\r\n",
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        f"POST {target.replace('generateContent', 'fooBar')} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Length: 2\r\n\r\n{}",
        f"POST {target}x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{{}}",
        f"POST /upload/v1beta/files?key={key}&upload_id=abc HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "X-Goog-Upload-Command: upload\r\nX-Goog-Upload-Offset: 0\r\nContent-Length: 2\r\n\r\nab",
    ]
    statuses = []
    for head in heads:
        sock = connect(server)
        try:
            sock.sendall(head.encode())
            status, _, body = read_response(sock)
        finally:
            sock.close()
        assert key.encode() not in body
        statuses.append(status)
    assert statuses == [200, 200, 400, 421, 403, 431, 400, 404, 401, 404], statuses
    wait_for(lambda: len(server.db_rows("SELECT id FROM traces WHERE model = 'gemini-2.5-flash'")) >= 2)
    stored = b"".join(p.read_bytes() for p in server.db.parent.glob("stockyard.db*") if p.is_file())
    assert key.encode() not in stored and key[6:30].encode() not in stored
    assert key not in server.log and key[6:30] not in server.log


def test_one_key_holds_a_quarter_of_the_uploads_room(bounded, upstream):
    """Hole (with the bound above): one key holding uploads open could take all of
    ``STOCKYARD_UPLOADS_MB``, and every other key's upload was a 503 for as long as it trickled
    (an hour a connection). Now one client key holds a quarter of it at most (its first upload
    always fits, as one alone does): past that its next upload waits 5 s, then is the 503, while
    another key's upload is served."""
    quarter = (UPLOADS_MB << 20) // 4
    with held_upload(bounded, "alice", quarter + (256 << 10)):  # alone: fits, though past her quarter
        refused = bounded.metric("uploads_refused_total")
        with pytest.raises(openai.InternalServerError) as caught:
            bounded.openai("alice").files.create(file=("more.bin", b"y" * (1 << 20)), purpose="user_data")
        assert caught.value.body["code"] == "too_many_uploads", caught.value.body
        assert bounded.metric("uploads_refused_total") == refused + 1
        served = bounded.openai("bob").files.create(file=("bobs.bin", b"b" * (1 << 20)), purpose="user_data")
        assert served.bytes == 1 << 20
    assert bounded.openai("alice").files.create(file=("more.bin", b"y" * (1 << 20)), purpose="user_data").bytes

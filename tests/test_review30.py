"""An attacker's and an accountant's review of the day's changes (review 30): the upload bound, the
client watch, the cache's waits and the deployments' claims.

Each test is a hole found (failing before its fix) or a claim checked and found sound, said in its
docstring. Real parts: a server process of the pyz on its own database, the mock upstream, raw HTTP
in the shape each API's clients send.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import pytest
from conftest import ServerProcess, mock_env, wait_for
from mock_upstream import MockUpstream
from rawhttp import connect, read_response
from test_gemini_files import chunk, upload, upload_url

GEMINI_KEY = "AIza-review30-0123456789abcdefPROVIDERSECRET"
UPLOADS_MB = 8  # STOCKYARD_UPLOADS_MB of the server: a key's quarter is 2 MiB


@pytest.fixture(scope="module")
def upstream():
    with MockUpstream() as mock:
        yield mock


@pytest.fixture(scope="module")
def bounded(pyz_path, cache_home, upstream, tmp_path_factory):
    env = mock_env(
        cache_home,
        upstream,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=upstream.url,
        STOCKYARD_UPLOADS_MB=str(UPLOADS_MB),
    )
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp("review30-bounded") / "stockyard.db", env)
    srv.keys = srv.create_keys({"alice": [], "bob": []})
    yield srv.start()
    srv.stop()
    assert "Traceback" not in srv.log and GEMINI_KEY not in srv.log


def spooled(server: ServerProcess) -> int:
    return int(server.metric("uploads_spooled_bytes"))


@contextlib.contextmanager
def held_chunk(server: ServerProcess, target: str, size: int) -> Iterator[None]:
    """A Gemini upload chunk of ``size`` bytes sent as google-genai sends it (no key: the upload URL's
    token stands for the key that started it), all but its last byte while the block runs (spooled,
    the server waiting for the rest, as a client trickling it would hold it), then ended."""
    sock = connect(server)
    try:
        sock.sendall(
            (
                f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Goog-Upload-Command: upload\r\n"
                f"X-Goog-Upload-Offset: 0\r\nContent-Length: {size}\r\n\r\n"
            ).encode()
            + b"x" * (size - 1)
        )
        wait_for(lambda: spooled(server) >= size - (64 << 10), what="the held chunk spooled")
        yield
        sock.sendall(b"x")
        read_response(sock, timeout=10)
    finally:
        sock.close()
    wait_for(lambda: spooled(server) == 0, what="the uploads' room given back")


def test_a_keys_gemini_upload_chunks_sent_without_the_key_count_against_its_quarter(bounded):
    """Hole: a key's quarter of STOCKYARD_UPLOADS_MB was counted by the key a request presented, and
    a Gemini upload chunk presents none (google-genai's: the upload URL's token is its credential,
    standing for the key that started the upload), so its bytes were no one's: one key held the
    whole bound through chunks of its uploads on many connections, and every other key's upload was
    a 503 for as long as they trickled. Now a chunk's bytes are its upload's key's: past the quarter
    its next chunk waits 5 s, then is the 503, while another key's upload is served."""
    quarter = (UPLOADS_MB << 20) // 4
    target = upload_url(bounded, "alice", 16 << 20)
    with held_chunk(bounded, target, quarter + (256 << 10)):  # alone: fits, though past her quarter
        refused = bounded.metric("uploads_refused_total")
        status, _, raw = chunk(bounded, target, b"y" * (1 << 20), 0, False)
        assert status == 503 and json.loads(raw)["error"]["status"] == "UNAVAILABLE", raw
        assert b"STOCKYARD_UPLOADS_MB" in raw
        assert bounded.metric("uploads_refused_total") == refused + 1
        made = upload(bounded, "bob", b"b" * (1 << 20))
        assert made["sizeBytes"] == str(1 << 20), made

"""An attacker's and an accountant's review of the day's changes (review 30): the upload bound, the
client watch, the cache's waits and the deployments' claims.

Each test is a hole found (failing before its fix) or a claim checked and found sound, said in its
docstring. Real parts: a server process of the pyz on its own database, the mock upstream, raw HTTP
in the shape each API's clients send.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import MockUpstream
from rawhttp import connect, read_response, read_until_close
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
    keys = {"alice": [], "bob": []}
    with served(pyz_path, tmp_path_factory, "review30-bounded", env, keys, never_logged=(GEMINI_KEY,)) as srv:
        yield srv


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


@pytest.fixture(scope="module")
def plain(pyz_path, cache_home, upstream, tmp_path_factory):
    """A server in open mode routing to this module's mock (its answers delayed by the test)."""
    with served(pyz_path, tmp_path_factory, "review30-plain", mock_env(cache_home, upstream)) as srv:
        yield srv


def answers(raw: bytes) -> list[tuple[int, bytes]]:
    """Each response in ``raw`` as (status, body), strictly framed (Content-Length or chunked, else
    to the end): interim ones included. Fails on bytes that are no response where one must begin."""
    got = []
    while raw:
        head, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.1 "), f"not a response: {head[:120]!r}"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        if status < 200:
            got.append((status, b""))
            continue
        if "content-length" in fields:
            size = int(fields["content-length"])
            body, raw = raw[:size], raw[size:]
        elif fields.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, raw = raw.partition(b"\r\n")
                size = int(size_line, 16)
                assert raw[size : size + 2] == b"\r\n", f"a chunk not framed: {raw[: size + 2][-40:]!r}"
                body, raw = body + raw[:size], raw[size + 2 :]
                if size == 0:
                    break
        else:
            body, raw = raw, b""
        got.append((status, body))
    return got


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_the_probe_never_lands_inside_an_answer_nor_the_next_one(plain, upstream, stream):
    """Found sound: a client that shuts its sending side down at any moment around its answer's first
    write (here 0 to 30 ms after two pipelined requests, the mock answering after 15 ms) reads at most
    interim ``100 Continue`` responses ahead of each answer, and each answer whole: the probe is
    written under the watch's lock only while the watch is active, and the answer ends the watch first.
    (A stream the relay carries may also carry its own probe, an SSE comment line, which SSE clients skip:
    ``streamrelay.PROBE``.)"""
    import random
    import time

    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    body = json.dumps(chat).encode()
    one = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    upstream.delay_ms = 15
    probes, rounds = 0, 60
    try:
        for _ in range(rounds):
            sock = connect(plain)
            try:
                sock.sendall(one + one)  # pipelined: the second waits for the first's answer
                time.sleep(random.uniform(0, 0.03))  # the half-close lands anywhere around the answers
                sock.shutdown(socket.SHUT_WR)
                raw = read_until_close(sock, timeout=10)
            finally:
                sock.close()
            got = answers(raw)
            finals = [(status, b) for status, b in got if status >= 200]
            assert [status for status, _ in got if status < 200] == [100] * (len(got) - 2), got
            assert [status for status, _ in finals] == [200, 200], got
            for _, answer in finals:
                if stream:  # (a relayed stream's client that half-closed may get SSE comments, ":": skipped)
                    data = b"\n".join(line for line in answer.split(b"\n") if not line.startswith(b":"))
                    assert data.rstrip().endswith(b"data: [DONE]"), answer[-80:]
                else:
                    assert json.loads(answer)["object"] == "chat.completion"
            probes += len(got) - 2
    finally:
        upstream.delay_ms = 0
    assert probes, "no half-close landed while a request waited: the probe was never written"


def test_a_keyless_gemini_chunk_in_the_drain_is_a_503_as_any_request(pyz_path, cache_home, upstream, tmp_path):
    """Hole: a request arriving during a drain (on a kept-alive connection) is answered 503
    ``shutting_down`` and its connection closed, checked where the key is (``_key_accepted``); a
    Gemini upload chunk sent without a key skipped that step, so it was spooled and sent to Google
    while the server was stopping, holding the drain up. Now it is refused as any request is."""
    import http.client
    import signal
    import threading

    from mock_upstream import Reply

    env = mock_env(
        cache_home, upstream, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=upstream.url, STOCKYARD_SHUTDOWN_GRACE="5s"
    )
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env)
    srv.keys = srv.create_keys({"alice": []})
    srv.start()
    try:
        target = upload_url(srv, "alice", 1000)
        idle = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        idle.request("GET", "/healthz")
        assert idle.getresponse().read() is not None  # kept alive, idle
        hanging, answer_it = threading.Event(), threading.Event()
        upstream.enqueue(Reply(wait=answer_it, hang_started=hanging))  # holds the drain open until answered

        def in_flight() -> None:
            srv.request(
                "POST",
                "/v1/chat/completions",
                {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {srv.keys['alice']}"},
            )

        caller = threading.Thread(target=in_flight, daemon=True)
        caller.start()
        assert hanging.wait(30), "the call in flight reached the provider"
        before = len(upstream.requests)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "received SIGTERM" in srv.log, what="the drain")
        headers = {"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"}
        idle.request("POST", target, body=b"v" * 1000, headers=headers)
        answer = idle.getresponse()
        body = answer.read()
        assert answer.status == 503 and answer.getheader("connection") == "close", body
        assert json.loads(body)["error"]["status"] == "UNAVAILABLE", body
        assert len(upstream.requests) == before, "the chunk went to the provider during the drain"
        idle.close()
        answer_it.set()  # the call in flight ends: the drain with it, not at the end of its grace
        caller.join(30)
        assert srv.proc.wait(30) == 0
    finally:
        answer_it.set()
        srv.stop()

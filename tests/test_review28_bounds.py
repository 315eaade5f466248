"""Review 28, the request bodies bound: the official SDKs retry the 503 of a full bodies bound
(Retry-After: 1) and are then served; they do not retry the 413 of too many JSON values; Gemini's dialect
gets both in Google's shape; uploads are spooled, not counted in the bound; a body or a WebSocket message
larger than the bound is served when it is alone. A file of its own (was in test_review28.py, whose
100,000-request batches take minutes): the two files run on two workers side by side."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import wave
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import pytest
from anthropic import APIStatusError
from conftest import ServerProcess, mock_env, served, wait_for
from test_memory_bounds import websocket
from test_review28 import CHAT

from stockyard.httpio import MAX_JSON_VALUES

# -- the SDKs and the new refusals: a 503 with Retry-After is retried, a 413 is not -----------------


@pytest.fixture(scope="module")
def tight(pyz_path, cache_home, mock, tmp_path_factory):
    """Request bodies held at once bounded to 1 MiB; OpenAI, Anthropic and Gemini on the mock; open mode."""
    env = mock_env(
        cache_home,
        mock,
        STOCKYARD_REQUEST_BODIES_MB="1",
        ANTHROPIC_API_KEY="sk-ant-test-review28-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        GEMINI_API_KEY="AIza-test-0123456789abcdefREVIEW28",
        GEMINI_BASE_URL=mock.url,
    )
    with served(pyz_path, tmp_path_factory, "tight", env) as srv:
        yield srv


def begun_request(server: ServerProcess, length: int) -> socket.socket:
    """A request whose head says ``length`` bytes of body that never comes: the bound is full."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"model": ')
    return sock


def counted_client(sdk: str, server: ServerProcess, sent: list) -> Any:
    """The official ``sdk`` client with its default retries, counting each attempt it sends."""
    http = httpx.Client(event_hooks={"request": [lambda request: sent.append(request.url.path)]})
    if sdk == "openai":
        return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-open", max_retries=2, http_client=http)
    return anthropic.Anthropic(base_url=server.url, api_key="sk-open", max_retries=2, http_client=http)


def ask(sdk: str, client: Any, text: str, **extra: Any) -> str:
    """One chat turn (Chat Completions or Messages) of ``text``; its answer's text."""
    messages = [{"role": "user", "content": text}]
    if sdk == "openai":
        done = client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=4, extra_body=extra)
        return done.choices[0].message.content
    done = client.messages.create(model="claude-sonnet-4-5", messages=messages, max_tokens=4, extra_body=extra)
    return done.content[0].text


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_the_sdks_retry_the_503_of_a_full_bodies_bound_and_are_then_served(tight, sdk):
    held = begun_request(tight, 700_000)
    wait_for(lambda: tight.metric("request_bodies_bytes") == 700_000, what="the bound held")
    refused = tight.metric("request_bodies_refused_total")
    sent: list = []
    answers: list = []
    caller = threading.Thread(target=lambda: answers.append(ask(sdk, counted_client(sdk, tight, sent), "x" * 600_000)))
    caller.start()
    try:
        wait_for(lambda: tight.metric("request_bodies_refused_total") == refused + 1, timeout=30, what="the 503")
    finally:
        held.close()
    caller.join(60)
    assert answers and answers[0], "the retry was served"
    assert len(sent) == 2  # the 503 (Retry-After: 1), then the retry


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_the_sdks_do_not_retry_the_413_of_too_many_json_values(tight, mock, sdk):
    sent: list = []
    mock.clear()
    with pytest.raises((openai.APIStatusError, APIStatusError)) as refused:
        ask(sdk, counted_client(sdk, tight, sent), "hi", x=[0] * (MAX_JSON_VALUES + 1))
    assert refused.value.status_code == 413 and len(sent) == 1
    error = refused.value.body["error"] if sdk == "anthropic" else refused.value.body
    assert error["code" if sdk == "openai" else "type"] == "request_too_large", error
    assert mock.requests == []


def test_geminis_dialect_gets_the_413_and_503_in_googles_shape(tight):
    path, headers = "/v1beta/models/gemini-2.5-flash:generateContent", {"x-goog-api-key": "AIza-open"}
    raw = b'{"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "x": [' + b",".join([b"0"] * 1_000_001) + b"]}"
    status, _, body = tight.request("POST", path, raw=raw, headers=headers)
    error = json.loads(body)["error"]
    assert status == 413 and error["code"] == 413 and error["status"], error
    held = begun_request(tight, 700_000)
    try:
        wait_for(lambda: tight.metric("request_bodies_bytes") == 700_000, what="the bound held")
        big = json.dumps({"contents": [{"role": "user", "parts": [{"text": "x" * 600_000}]}]}).encode()
        status, answer_headers, body = tight.request("POST", path, raw=big, headers=headers)
    finally:
        held.close()
    error = json.loads(body)["error"]
    assert status == 503 and error["code"] == 503 and error["status"] == "UNAVAILABLE", error
    assert answer_headers["retry-after"] == "1"


def wav(seconds: int) -> bytes:
    """A real WAV of ``seconds`` of 16 kHz 16-bit mono silence (32 KB a second)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(b"\0\0" * 16_000 * seconds)
    return out.getvalue()


def test_uploads_are_spooled_not_counted_in_the_request_bodies_bound(tight):
    """A 40 MB Files API upload (past STOCKYARD_MAX_BODY_BYTES' 32 MiB, which a body held in memory may
    not pass), a 25 MB transcription (Whisper's limit) and 4 of each 8 MB at once pass while the 1 MiB
    bound is full: multipart bodies go to disk, never held in memory whole."""
    refused = tight.metric("request_bodies_refused_total")
    held = begun_request(tight, 700_000)
    try:
        wait_for(lambda: tight.metric("request_bodies_bytes") == 700_000, what="the bound held")
        client = tight.openai("sk-open", timeout=120)
        line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": CHAT}) + "\n"
        big = line.encode() * (40_000_000 // len(line) + 1)
        assert len(big) > 32 << 20
        assert client.files.create(file=("big.jsonl", big), purpose="batch").bytes == len(big)
        audio = wav(780)  # 25 MB
        assert len(audio) > 24_900_000
        assert client.audio.transcriptions.create(model="whisper-1", file=("talk.wav", audio)).text
        small_audio, small_file = wav(250), big[: 8_000_000 // len(line) * len(line)]
        transcribe = lambda: client.audio.transcriptions.create(model="whisper-1", file=("t.wav", small_audio)).text  # noqa: E731
        upload = lambda: client.files.create(file=("f.jsonl", small_file), purpose="batch").bytes  # noqa: E731
        with ThreadPoolExecutor(8) as pool:
            texts = [pool.submit(transcribe) for _ in range(4)]
            made = [pool.submit(upload) for _ in range(4)]
            assert all(t.result() for t in texts) and [m.result() for m in made] == [len(small_file)] * 4
        assert tight.metric("request_bodies_refused_total") == refused
    finally:
        held.close()


def test_a_chunked_body_larger_than_the_bound_is_served_alone_as_a_sized_one_is(tight):
    """A body past STOCKYARD_REQUEST_BODIES_MB is served when it is the only one (its size alone never
    refuses it); one sent chunked, counted as it comes, waited for room only its own bytes held."""
    wait_for(lambda: tight.metric("request_bodies_bytes") == 0, what="no body held")
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 1_500_000}]}).encode()
    sized = http.client.HTTPConnection("127.0.0.1", tight.port, timeout=60)
    sized.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    assert sized.getresponse().status == 200
    chunked = http.client.HTTPConnection("127.0.0.1", tight.port, timeout=60)
    pieces = (body[i : i + 50_000] for i in range(0, len(body), 50_000))
    chunked.request("POST", "/v1/chat/completions", pieces, {"Content-Type": "application/json"}, encode_chunked=True)
    answer = chunked.getresponse()
    assert answer.status == 200, answer.read()[:300]


def test_a_websocket_message_in_frames_larger_than_the_bound_is_answered_alone(tight):
    """A ``response.create`` of 1.5 MB sent in 50 KB frames at a 1 MiB bound, nothing else held: each
    frame's bytes join the message's own, which alone always fit (was: closed 1013 at the bound)."""
    wait_for(lambda: tight.metric("request_bodies_bytes") == 0, what="no body held")
    sock = websocket(tight)
    data = json.dumps(
        {"type": "response.create", "model": "gpt-4o-mini", "store": False, "input": "x" * 1_500_000}
    ).encode()
    pieces = [data[i : i + 50_000] for i in range(0, len(data), 50_000)]
    for n, piece in enumerate(pieces):
        fin = 0x80 if n == len(pieces) - 1 else 0
        opcode = 0x1 if n == 0 else 0x0
        sock.sendall(bytes([fin | opcode, 0xFE]) + len(piece).to_bytes(2, "big") + b"\0\0\0\0" + piece)
    reader = sock.makefile("rb")
    kinds = []
    while not kinds or kinds[-1] not in ("response.completed", "error", "close"):
        first, size = reader.read(2)
        size = int.from_bytes(reader.read(2 if size == 126 else 8), "big") if size >= 126 else size
        payload = reader.read(size)
        kinds.append("close" if first & 0x0F == 0x8 else json.loads(payload)["type"] if first & 0x0F == 0x1 else "")
    sock.close()
    assert kinds[-1] == "response.completed", kinds

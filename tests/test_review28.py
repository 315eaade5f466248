"""Review 28: real traffic through today's limits and prices, with the official SDKs and the real pyz.

A maximal Anthropic Message Batch (100,000 short requests, Anthropic's own limit, 16 MB) holds more than
the 1,000,000 JSON values a body may hold elsewhere: it must be served as before, its parse held in
STOCKYARD_REQUEST_BODIES_MB, and a batch past what that bound can parse is a 413 naming the setting.
The official SDKs retry the 503 of a full bodies bound (Retry-After: 1) and are then served; they do not
retry the 413 of too many JSON values; Gemini's dialect gets both in Google's shape (found sound)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import threading
import wave
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import pytest
from anthropic import APIStatusError
from conftest import ServerProcess, mock_env, wait_for
from mock_upstream import COMPLETION_TOKENS, MESSAGE_BATCHES, PROMPT_TOKENS, Reply
from test_memory_bounds import websocket

from stockyard.httpio import MAX_JSON_VALUES
from stockyard.pricing import PriceTable, Usage, cost_microcents

CHAT = {"model": "gpt-4o-mini", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
PLAIN = "claude-batch-plain"  # the mock's name: priced below
MAX_BATCH = 100_000  # Anthropic's most requests in one batch


def batch_server(pyz_path, cache_home, mock, db, keys: dict[str, list[str]], **settings: str) -> ServerProcess:
    """A server with Anthropic on the mock, PLAIN priced, ``keys`` made and ``settings`` set, started."""
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-review28-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_BATCH_POLL="off",
        **settings,
    )
    srv = ServerProcess(pyz_path, db, env)
    done = srv.cli("prices", "set", PLAIN, "--input", "3", "--output", "15")
    assert done.returncode == 0, done.stderr
    srv.keys = srv.create_keys(keys)
    return srv.start()


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    """The default body limits: STOCKYARD_MAX_BODY_BYTES 32 MiB, STOCKYARD_REQUEST_BODIES_MB 256."""
    keys = {
        "alice": [],
        "usonly": [],
        "speedy": [],
        "budgeted": ["--budget-usd", "100", "--budget-period", "day"],
        "dollar": ["--budget-usd", "1", "--budget-period", "day"],
        "dime": ["--budget-usd", "0.10", "--budget-period", "day"],
    }
    srv = batch_server(pyz_path, cache_home, mock, tmp_path_factory.mktemp("review28") / "stockyard.db", keys)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log


def ticket_batch(count: int, **extra: Any) -> list[dict]:
    """A classification job as people send it: one short labelled ticket a request (``extra``: more params)."""
    return [
        {
            "custom_id": f"ticket-{i}",
            "params": {
                "model": PLAIN,
                "max_tokens": 8,
                "system": "Label the ticket: billing, bug or other.",
                "messages": [{"role": "user", "content": f"Ticket {i}: I was charged twice this month"}],
                **extra,
            },
        }
        for i in range(count)
    ]


@pytest.mark.parametrize("who", ["alice", "budgeted"])
def test_a_batch_of_anthropics_most_requests_is_served(server, mock, who):
    requests = ticket_batch(MAX_BATCH)
    size = len(json.dumps({"requests": requests}).encode())
    assert size < 32 * 1024 * 1024  # within the body size limit: the old server served it
    mock.clear()
    batch = server.anthropic(who, timeout=120).messages.batches.create(requests=requests)
    assert batch.processing_status == "in_progress"
    assert len(MESSAGE_BATCHES.requests[batch.id]) == MAX_BATCH


@pytest.mark.parametrize(
    "bound_mb, extra",
    [
        ("64", {}),  # room to parse ~670,000 values: the batch's 1,000,002 are not
        # 1.2 M values (120 MB) fit the 134 MB bound, not beside the body's 26 MB
        ("128", {"metadata": {"user_id": "u"}}),
    ],
)
def test_a_batch_past_what_the_bodies_bound_can_parse_is_a_413_naming_the_setting(
    pyz_path, cache_home, mock, tmp_path, bound_mb, extra
):
    db = tmp_path / "stockyard.db"
    srv = batch_server(pyz_path, cache_home, mock, db, {"alice": []}, STOCKYARD_REQUEST_BODIES_MB=bound_mb)
    try:
        mock.clear()
        with pytest.raises(APIStatusError) as refused:
            srv.anthropic("alice", timeout=120).messages.batches.create(requests=ticket_batch(MAX_BATCH, **extra))
        assert refused.value.status_code == 413
        error = refused.value.body["error"]
        assert error["type"] == "request_too_large" and "STOCKYARD_REQUEST_BODIES_MB" in error["message"]
        assert not [r for r in mock.requests if r.path.startswith("/v1/messages/batches")]
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


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
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp("tight") / "stockyard.db", env).start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log


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
    """A 110 MB Files API upload, a 25 MB transcription (Whisper's limit) and 4 of each 8 MB at once
    pass while the 1 MiB bound is full: multipart bodies go to disk, never held in memory whole."""
    refused = tight.metric("request_bodies_refused_total")
    held = begun_request(tight, 700_000)
    try:
        wait_for(lambda: tight.metric("request_bodies_bytes") == 700_000, what="the bound held")
        client = tight.openai("sk-open", timeout=120)
        line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": CHAT}) + "\n"
        big = line.encode() * (110_000_000 // len(line) + 1)
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


def test_ten_chats_of_20_mb_of_images_at_once_are_all_held_and_served(server, mock):
    """Ten official-SDK chats of ten base64 images (20 MB each) at once, every one waiting at the
    provider together: 200 MB held under the default 256 MB bound, none refused."""
    image = "data:image/png;base64," + base64.b64encode(os.urandom(1_500_000)).decode()
    content = [{"type": "text", "text": "compare these"}] + [{"type": "image_url", "image_url": {"url": image}}] * 10
    gate = threading.Event()
    arrived = [threading.Event() for _ in range(10)]
    mock.clear()
    mock.enqueue(*(Reply(held=gate, hang_started=started) for started in arrived))
    refused = server.metric("request_bodies_refused_total")
    client = server.openai("alice", timeout=120)
    ask = lambda: client.chat.completions.create(  # noqa: E731
        model="gpt-4o-mini", max_tokens=4, messages=[{"role": "user", "content": content}]
    )
    with ThreadPoolExecutor(10) as pool:
        calls = [pool.submit(ask) for _ in range(10)]
        try:
            for started in arrived:
                assert started.wait(60), "all ten reached the provider at once"
            assert server.metric("request_bodies_bytes") >= 10 * 20_000_000
        finally:
            gate.set()
        assert all(call.result().choices for call in calls)
    assert server.metric("request_bodies_refused_total") == refused


OPUS = "claude-opus-4-6"  # shipped: $5 / $25 per 1M, US-only inference 1.1x
OPUS_UC = {"input": 500_000_000, "output": 2_500_000_000}  # µ¢ per 1M tokens


@pytest.mark.parametrize(
    "key, field, value, times",
    [("usonly", "inference_geo", "us", Fraction(11, 10)), ("speedy", "speed", "fast", Fraction(6))],
)
def test_a_batch_request_run_in_a_dearer_mode_is_billed_at_its_rate(server, mock, key, field, value, times):
    """Anthropic's result says where and how fast each request ran (``usage.inference_geo``,
    ``usage.speed``); one run US-only costs 1.1x, one in fast mode 6x (Opus 4.6), at the batch's half
    price too, as /v1/messages bills it; an unbudgeted key's batch is not refused for it."""
    client = server.anthropic(key)
    plain = {"model": OPUS, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    batch = client.messages.batches.create(
        requests=[{"custom_id": "plain", "params": plain}, {"custom_id": value, "params": {**plain, field: value}}]
    )
    assert client.messages.batches.retrieve(batch.id).processing_status == "ended"
    said = {r.custom_id: getattr(r.result.message.usage, field) for r in client.messages.batches.results(batch.id)}
    assert said == {"plain": None, value: value}
    sql = (
        "SELECT t.* FROM traces t JOIN client_keys k ON k.id = t.key_id"
        " WHERE k.name = ? AND t.endpoint = 'message_batches.usage'"
    )
    rows = wait_for(lambda: server.db_rows(sql, (key,)), timeout=30, what="the batch's usage row")
    standard = PROMPT_TOKENS * OPUS_UC["input"] + COMPLETION_TOKENS * OPUS_UC["output"]
    numerator = standard + int(standard * times)  # the dearer request's every token at its multiple
    assert rows[0]["prompt_tokens"] == 2 * PROMPT_TOKENS and rows[0]["completion_tokens"] == 2 * COMPLETION_TOKENS
    assert (rows[0]["cost_uc"], rows[0]["cost_status"]) == ((numerator + 10**6) // (2 * 10**6), "exact"), rows


def test_a_budgeted_batch_may_ask_for_a_priced_mode_held_at_its_rate(server, mock):
    """As /v1/messages allows a budgeted key a priced mode, held at its rate: 76,000 output tokens of
    Opus 4.6 hold $0.95 at the batch price, which a $1 budget covers; run US-only $1.045, which it
    does not. A small US-only batch then fits beside the first's hold."""
    client = server.anthropic("dollar")
    params = {"model": OPUS, "max_tokens": 76_000, "messages": [{"role": "user", "content": "hi"}]}
    mock.clear()
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.batches.create(requests=[{"custom_id": "us", "params": {**params, "inference_geo": "us"}}])
    assert refused.value.body["error"]["type"] == "budget_exceeded", refused.value.body
    assert not [r for r in mock.requests if r.path.startswith("/v1/messages/batches")]
    assert client.messages.batches.create(requests=[{"custom_id": "global", "params": params}]).id
    small = {**params, "max_tokens": 1000, "inference_geo": "us"}
    assert client.messages.batches.create(requests=[{"custom_id": "us", "params": small}]).id


@pytest.mark.parametrize("api", ["chat", "chat-stream", "responses", "responses-stream"])
def test_a_budget_holds_openais_priority_at_its_rate(server, mock, api):
    """6,000 output tokens of GPT-5 hold $0.06 at the standard rate (asked as ``default``: no tier or
    ``auto`` is held at priority, which a project's default may serve), which a $0.10 budget covers;
    at priority (2x) $0.12, which it does not: refused before the provider is asked, streamed or not."""
    client = server.openai("dime")
    stream = api.endswith("-stream")

    def ask(**tier: str) -> None:
        if api.startswith("chat"):
            made = client.chat.completions.create(
                model="gpt-5",
                max_completion_tokens=6000,
                messages=[{"role": "user", "content": "hi"}],
                stream=stream,
                **tier,
            )
        else:
            made = client.responses.create(model="gpt-5", max_output_tokens=6000, input="hi", stream=stream, **tier)
        if stream:
            list(made)

    ask(service_tier="default")
    before = len(mock.requests)
    with pytest.raises(openai.RateLimitError) as refused:
        ask(service_tier="priority")
    assert refused.value.body["code"] == "budget_exceeded", refused.value.body
    assert len(mock.requests) == before


@pytest.mark.parametrize("mode, extra", [("us", {"inference_geo": "us"}), ("fast", {"speed": "fast"})])
def test_a_call_sent_and_unanswered_is_billed_its_input_at_the_mode_it_asked(
    pyz_path, cache_home, mock, tmp_path, mode, extra
):
    """A call that went out in a dearer mode and timed out is billed its input as an estimate: at that
    mode's rate, as it was held (US-only inference is where it ran, whatever the answer would say;
    fast mode the most it could cost), not the standard rate."""
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-review28-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_UPSTREAM_TIMEOUT="1",
    )
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        reached = threading.Event()
        mock.enqueue(Reply(hang_s=30, hang_started=reached))
        with pytest.raises(APIStatusError):
            srv.anthropic("sk-open").messages.create(
                model=OPUS, max_tokens=16, messages=[{"role": "user", "content": "hi"}], extra_body=extra
            )
        assert reached.is_set()
        (row,) = wait_for(lambda: srv.db_rows("SELECT * FROM traces WHERE endpoint = 'messages'"), what="the trace")
        assert row["cost_status"] == "estimate" and row["prompt_tokens"] > 0 and row["completion_tokens"] == 0
        price = PriceTable.load().lookup_mode(OPUS, "anthropic", mode, "anthropic")
        assert row["cost_uc"] == cost_microcents(price, Usage(prompt_tokens=row["prompt_tokens"]))
    finally:
        srv.stop()


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

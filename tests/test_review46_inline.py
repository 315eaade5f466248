"""An image sent inline is held as one image, not as its base64 text.

Clients send images inline far more than by URL: a ``data:image/png;base64,…`` URL (chat
``image_url``, Responses ``input_image``), Anthropic's base64 source, Gemini's ``inlineData``. The
worst case counted that base64 at four bytes a token: a 1 MB screenshot was ~350,000 input tokens, so
a key with a tpm of 20,000 was refused (429) on every screenshot and a budget of $0.01 refused a
request that costs a tenth of a cent. The provider bills it as one image: Claude (before its
high-resolution tier) at most ~1,600 tokens, GPT-4o 1,445 (``IMAGE_INPUT_TOKENS``, 1,600, bounds both;
the price table's ``image_input_tokens`` where it has one). Now an inline image whose header reads
(PNG, JPEG, GIF, WebP) is held at that, its base64 left out of the text; an image whose header does not
read, and any image on Gemini (whose tiles no constant bounds), keep the old bytes / 4. The hold is
read from the 429 a request gets beside the admitted one the mock holds ("$H held by requests in
flight, and this request may cost up to $H"), the tpm count from the 429 of a key with a tpm of 1
("this request may use N tokens"); the real usage settles the hold to the trace's cost.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import struct
import threading
import zlib
from decimal import Decimal

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import Reply

from stockyard.estimate import IMAGE_INPUT_TOKENS, image_size, inline_each, sent_inline
from stockyard.pricing import PriceTable

ADMIN = "admin-key-for-review46-inline-0123456789"
ANTHROPIC_KEY = "sk-ant-test-0123456789REVIEW46INLINE"
GEMINI_KEY = "gemini-test-key-REVIEW46INLINE"
USD = 10**8  # µ¢ a dollar
GPT, CLAUDE, GEMINI = "gpt-4o", "claude-haiku-4-5", "gemini-2.5-flash"
# µ¢ a token: (the dearest input rate, the output rate), prices.json's dollars per 1M × 100; and the
# plain input rate, which the mock's usage (no cache reads or writes) is billed at
RATES = {GPT: (250, 1000), CLAUDE: (125, 500), GEMINI: (30, 250)}
PLAIN_INPUT = {GPT: 250, CLAUDE: 100}
CAPS = {GPT: 400, CLAUDE: 1000, GEMINI: 100}  # a hold of $0.005-$0.01: one fits a $0.01 budget, two do not
HELD = r"\$([0-9.]+) held by requests in flight, and this request may cost up to \$([0-9.]+)"
MAY_COST = r"may cost (?:up to|at least) \$([0-9.]+)"
MAY_USE = r"this request may use (\d+) tokens"
QUESTION = "What does this screenshot show?"


def png(width: int, height: int, rows: bytes) -> bytes:
    """A PNG of ``width`` × ``height`` (8-bit RGB) whose compressed data is ``rows``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + head + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def screenshot() -> bytes:
    """A real 1 MB PNG: 600 × 580 pixels of noise (which no compressor shrinks)."""
    noise = random.Random(46)
    rows = b"".join(b"\x00" + noise.randbytes(600 * 3) for _ in range(580))
    return png(600, 580, zlib.compress(rows, 1))


SHOT = base64.b64encode(screenshot()).decode()
DATA_URL = "data:image/png;base64," + SHOT
# as much base64 of bytes that read as no image: its header is not a PNG's, JPEG's, GIF's or WebP's
GARBAGE = base64.b64encode(random.Random(7).randbytes(len(SHOT) * 3 // 4)).decode()


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=mock.url,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
        STOCKYARD_ADMIN_KEY=ADMIN,
    )
    with served(pyz_path, tmp_path_factory, "inline", env) as srv:
        yield srv


_names = iter(range(1_000_000))


def make_key(server: ServerProcess, **fields) -> tuple[str, str]:
    """A new key with ``fields`` (budget, tpm): (its secret, its id)."""
    fields["name"] = f"inline{next(_names)}"
    status, _, made = server.request("POST", "/api/keys", fields, headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 201, made
    made = json.loads(made)
    return made["key"], made["id"]


# -- each dialect's request, and where its key goes ----------------------------------------------------
def chat(image: str, stream: bool = False) -> dict:
    content = [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": image}}]
    body = {"model": GPT, "service_tier": "default", "max_tokens": CAPS[GPT], "stream": stream}
    return {**body, "messages": [{"role": "user", "content": content}]}


def responses(image: str, stream: bool = False) -> dict:
    content = [{"type": "input_text", "text": QUESTION}, {"type": "input_image", "image_url": image}]
    body = {"model": GPT, "service_tier": "default", "max_output_tokens": CAPS[GPT], "stream": stream}
    return {**body, "input": [{"role": "user", "content": content}]}


def messages(data: str, stream: bool = False, images: int = 1) -> dict:
    source = {"type": "base64", "media_type": "image/png", "data": data}
    content = [{"type": "image", "source": source}] * images + [{"type": "text", "text": QUESTION}]
    return {
        "model": CLAUDE,
        "max_tokens": CAPS[CLAUDE],
        "stream": stream,
        "messages": [{"role": "user", "content": content}],
    }


def generate(data: str) -> dict:
    parts = [{"text": QUESTION}, {"inlineData": {"mimeType": "image/png", "data": data}}]
    return {"contents": [{"role": "user", "parts": parts}], "generationConfig": {"maxOutputTokens": CAPS[GEMINI]}}


def where(dialect: str, stream: bool = False) -> tuple[str, str]:
    """(path, key header) of a dialect's request."""
    if dialect == "chat":
        return "/v1/chat/completions", "Authorization"
    if dialect == "responses":
        return "/v1/responses", "Authorization"
    if dialect == "messages":
        return "/v1/messages", "x-api-key"
    verb = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/v1beta/models/{GEMINI}:{verb}", "x-goog-api-key"


def send(server: ServerProcess, dialect: str, body: dict, key: str, stream: bool = False) -> tuple[int, dict, bytes]:
    path, header = where(dialect, stream)
    value = f"Bearer {key}" if header == "Authorization" else key
    return server.request("POST", path, body, {header: value, "anthropic-version": "2023-06-01"})


# -- the hand computation ---------------------------------------------------------------------------
def tokens(body: dict, carried: list[str], images: int, model: str) -> int:
    """What the body is held at in tokens: its bytes but the images' base64 at four a token, rounded
    up, each image at ``IMAGE_INPUT_TOKENS`` (``images`` 0: the base64 is text), and its output cap."""
    text = len(json.dumps(body)) - sum(len(c) for c in carried)
    return -(-text // 4) + images * IMAGE_INPUT_TOKENS + CAPS[model]


def hold(body: dict, carried: list[str], images: int, model: str) -> int:
    """µ¢: the input at the dearest input rate, the output cap at the output rate."""
    rate_in, rate_out = RATES[model]
    return (tokens(body, carried, images, model) - CAPS[model]) * rate_in + CAPS[model] * rate_out


def dollars(text: str) -> int:
    return int(Decimal(text) * USD)


def refused(server: ServerProcess, dialect: str, body: dict, pattern: str, **fields) -> int:
    """The number a 429 names (``pattern``'s group) for a new key with ``fields``."""
    key, _ = make_key(server, **fields)
    status, _, raw = send(server, dialect, body, key, bool(body.get("stream")))
    message = json.loads(raw)["error"]["message"]
    found = re.search(pattern, message)
    assert status == 429 and found, message
    return int(found[1]) if pattern == MAY_USE else dollars(found[1])


CASES = [
    ("chat", lambda stream: chat(DATA_URL, stream), [DATA_URL], GPT),
    ("responses", lambda stream: responses(DATA_URL, stream), [DATA_URL], GPT),
    ("messages", lambda stream: messages(SHOT, stream), [SHOT], CLAUDE),
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("dialect, build, carried, model", CASES, ids=[c[0] for c in CASES])
def test_a_screenshot_is_admitted_held_at_one_image_and_settled_to_its_usage(
    server, mock, dialect, build, carried, model, stream
):
    """A 1 MB PNG under a tpm of 20,000 and a budget of $0.01: admitted (was a 429: ~350,000 tokens),
    held while the provider answers at its text and one image, then settled to the real usage."""
    body = build(stream)
    expected = hold(body, carried, 1, model)
    assert len(SHOT) > 1_300_000 and USD // 200 < expected <= USD // 100  # one fits the budget, two do not
    assert refused(server, dialect, body, MAY_USE, tpm=1) == tokens(body, carried, 1, model)
    key, key_id = make_key(server, budget_usd="0.01", budget_period="total", tpm=20_000)
    release, started = threading.Event(), threading.Event()
    mock.enqueue(Reply(held=release, hang_started=started))
    answers: list[tuple[int, dict, bytes]] = []
    first = threading.Thread(target=lambda: answers.append(send(server, dialect, body, key, stream)))
    first.start()
    try:
        assert started.wait(30)  # admitted: the provider has it
        status, _, raw = send(server, dialect, body, key, stream)  # the same again: past the budget
        message = json.loads(raw)["error"]["message"]
        found = re.search(HELD, message)
        assert status == 429 and found, message
        assert dollars(found[1]) == dollars(found[2]) == expected
    finally:
        release.set()
        first.join(30)
    status, headers, raw = answers[0]
    assert status == 200, raw
    trace = server.trace(headers["x-stockyard-trace-id"])
    real = trace["prompt_tokens"] * PLAIN_INPUT[model] + trace["completion_tokens"] * RATES[model][1]
    assert trace["usage_estimated"] == 0 and trace["cost_uc"] == real > 0
    wait_for(lambda: spent(server, key_id) == real, what="the hold settled to the real cost")


def test_a_stream_cut_before_its_usage_bills_the_image_as_its_hold_did(server, mock):
    """A stream cut before its usage is billed an estimate of its input: the screenshot as the one image
    its hold counted (was its base64, ~350,000 tokens: 88 times the $0.01 the hold let through)."""
    body = chat(DATA_URL, stream=True)
    key, key_id = make_key(server, budget_usd="0.01", budget_period="total", tpm=20_000)
    mock.enqueue(Reply(cut_after=2))  # the role chunk and the first words, then the connection drops
    status, headers, _ = send(server, "chat", body, key, stream=True)
    assert status == 200
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["usage_estimated"] == 1
    assert trace["prompt_tokens"] == tokens(body, [DATA_URL], 1, GPT) - CAPS[GPT]
    assert 0 < trace["cost_uc"] <= hold(body, [DATA_URL], 1, GPT)
    wait_for(lambda: spent(server, key_id) == trace["cost_uc"], what="the hold settled to the estimate")


def spent(server: ServerProcess, key_id: str) -> int:
    """A key's spend this period, as the admin API reports it (µ¢)."""
    status, _, raw = server.request("GET", f"/api/keys/{key_id}", headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 200, raw
    return json.loads(raw)["spend_uc"]


def test_forty_images_are_held_at_forty_images(server):
    """Forty small screenshots (a real PNG header each, ~100 bytes): held at 40 of Claude's largest,
    more than their bytes, which a tokenizer bills far above (each is 1920 × 1080)."""
    small = base64.b64encode(png(1920, 1080, zlib.compress(b"\x00" * 64))).decode()
    body = messages(small, images=40)
    carried = [small] * 40
    assert refused(server, "messages", body, MAY_USE, tpm=1) == tokens(body, carried, 40, CLAUDE)
    held = refused(server, "messages", body, MAY_COST, budget_usd="0.00000001", budget_period="total")
    assert held == hold(body, carried, 40, CLAUDE)


@pytest.mark.parametrize(
    "dialect, body, model",
    [
        ("chat", chat("data:image/png;base64," + GARBAGE), GPT),
        ("messages", messages(GARBAGE), CLAUDE),
        ("gemini", generate(SHOT), GEMINI),  # a real PNG, but Gemini tiles it: no constant bounds it
    ],
    ids=["chat-garbage", "messages-garbage", "gemini"],
)
def test_an_image_no_bound_is_known_for_keeps_its_bytes(server, dialect, body, model):
    """An image whose header does not read, and any image to Gemini: its base64 at four bytes a token."""
    assert refused(server, dialect, body, MAY_USE, tpm=1) == tokens(body, [], 0, model)
    held = refused(server, dialect, body, MAY_COST, budget_usd="0.00000001", budget_period="total")
    assert held == hold(body, [], 0, model)


def test_an_image_shaped_tool_input_is_text(server):
    """A tool call's input is JSON the model reads as text, whatever it looks like: its base64 is held
    at its bytes, or a 1 MB tool input dressed as an image would be held at 1,600 tokens."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": SHOT}}
    call = {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"content": [image]}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "seen"}
    body = {
        "model": CLAUDE,
        "max_tokens": CAPS[CLAUDE],
        "tools": [{"name": "look", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [result]},
        ],
    }
    assert refused(server, "messages", body, MAY_USE, tpm=1) == tokens(body, [], 0, CLAUDE)


def test_a_message_batch_holds_an_inline_image_as_one(server):
    """A Messages batch request is held as ``/v1/messages`` holds it, at the batch price (half)."""
    params = messages(SHOT)
    del params["stream"]
    key, _ = make_key(server, budget_usd="0.00000001", budget_period="total")
    requests = [{"custom_id": "shot", "params": params}]
    status, _, raw = server.request(
        "POST", "/v1/messages/batches", {"requests": requests}, {"x-api-key": key, "anthropic-version": "2023-06-01"}
    )
    message = json.loads(raw)["error"]["message"]
    found = re.search(MAY_COST, message)
    assert status == 429 and found, message
    text = len(json.dumps(params, ensure_ascii=False)) - len(SHOT)
    full = (-(-text // 4) + IMAGE_INPUT_TOKENS) * RATES[CLAUDE][0] + CAPS[CLAUDE] * RATES[CLAUDE][1]
    assert dollars(found[1]) == -(-full // 2)


def test_an_openai_batch_line_holds_an_inline_image_as_one(server):
    """A ``/v1/batches`` line is held as its call is (its line's bytes the text), at the batch price."""
    key, _ = make_key(server, budget_usd="0.00000001", budget_period="total")
    client = server.openai(key)
    body = chat(DATA_URL)
    del body["stream"], body["service_tier"]
    line = json.dumps({"custom_id": "shot", "method": "POST", "url": "/v1/chat/completions", "body": body})
    made = client.files.create(file=("in.jsonl", io.BytesIO(line.encode() + b"\n")), purpose="batch")
    fields = {"input_file_id": made.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    status, _, raw = server.request("POST", "/v1/batches", fields, {"Authorization": f"Bearer {key}"})
    message = json.loads(raw)["error"]["message"]
    found = re.search(MAY_COST, message)
    assert status == 429 and found, message
    text = -(-(len(line) - len(DATA_URL)) // 4)
    full = (text + IMAGE_INPUT_TOKENS) * RATES[GPT][0] + CAPS[GPT] * RATES[GPT][1]
    assert dollars(found[1]) == -(-full // 2)


# -- the parts, read in process ----------------------------------------------------------------------
def test_headers_read_from_a_few_bytes_of_base64():
    """PNG, GIF, WebP (lossy, lossless, extended) and a JPEG whose frame header comes after 40 KB of
    EXIF: their size; a truncated or foreign header, or text that is not base64: None."""
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    assert image_size(SHOT) == (600, 580)
    assert image_size(b64(b"GIF89a" + struct.pack("<HH", 640, 480) + bytes(20))) == (640, 480)
    riff = b"RIFF" + bytes(4) + b"WEBP"
    lossy = riff + b"VP8 " + bytes(4) + bytes(3) + b"\x9d\x01\x2a" + struct.pack("<HH", 1920, 1080)
    lossless = riff + b"VP8L" + bytes(4) + b"\x2f" + (1919 | 1079 << 14).to_bytes(4, "little") + bytes(5)
    extended = riff + b"VP8X" + bytes(8) + (1919).to_bytes(3, "little") + (1079).to_bytes(3, "little")
    assert image_size(b64(lossy)) == image_size(b64(lossless)) == image_size(b64(extended)) == (1920, 1080)
    exif = b"\xff\xe1" + struct.pack(">H", 40_002) + bytes(40_000)
    frame = b"\xff\xc2" + struct.pack(">HBHHB", 17, 8, 1080, 1920, 3) + bytes(9)
    for offset in range(3):  # the frame header at each alignment of the base64
        jpeg = b"\xff\xd8" + exif + b"\xff" * offset + frame + b"\xff\xd9"
        assert image_size(b64(jpeg)) == (1920, 1080), offset
    assert image_size(b64(b"\xff\xd8" + exif)) is None  # cut before its frame
    assert image_size(SHOT[:20]) is None and image_size(GARBAGE) is None and image_size("not base64!") is None
    assert image_size(b64(png(0, 1080, b""))) is None


def test_only_models_an_image_cap_is_known_for_hold_one_image():
    """The price table's own count (gpt-4o-mini's 48,169), else 1,600 for the models whose rule caps an
    image at it, served by their own provider; nothing (bytes) for Gemini, an OpenAI-compatible
    server's model, Claude's high-resolution tier and the newer GPT models (``detail: original``)."""
    table = PriceTable.load()
    assert inline_each(table.lookup("gpt-4o-mini", "openai"), "openai", "gpt-4o-mini") == 48_169
    assert inline_each(table.lookup("gpt-4o-mini"), None, "gpt-4o-mini") == 48_169  # a key's tpm, before routing
    for model, kind in [
        (GPT, "openai"),
        (CLAUDE, "anthropic"),
        ("claude-sonnet-4-5-20250929", None),
        ("gpt-4o", "azure"),
    ]:
        assert inline_each(table.lookup(model), kind, model) == IMAGE_INPUT_TOKENS, model
    for model, kind in [
        (GEMINI, "gemini"),
        (GEMINI, None),
        ("gpt-4o", "openai-compatible"),
        ("claude-opus-4-7", "anthropic"),
        ("claude-sonnet-5-5", "anthropic"),
        ("gpt-5.4", "openai"),
        ("my-alias", None),
    ]:
        assert inline_each(table.lookup(model), kind, model) is None, model


def test_a_body_without_an_image_mark_is_not_walked():
    """No ``image/`` in the bytes: nothing is looked for (an escaped mark leaves the image as text)."""
    part = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": SHOT}}
    body = {"messages": [{"role": "user", "content": [part]}]}
    raw = json.dumps(body).encode()
    assert sent_inline(body, raw).images == 1
    assert sent_inline(body, raw.replace(b"image/png", b"image\\/png")).images == 0


def test_only_the_images_of_user_and_tool_turns_count():
    """A user's image, a Claude tool result's, a Responses function output's and a Gemini turn's count;
    an assistant's or a system turn's, a tool call's input and a schema are text a model (or a
    translation) may read as text, so their base64 stays at its bytes."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": SHOT}}
    shown = {"type": "input_image", "image_url": DATA_URL}
    counted = {
        "messages": [
            {"role": "user", "content": [image]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [image]}]},
        ],
        "input": [{"type": "function_call_output", "call_id": "c", "output": [shown]}],
        "contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": SHOT}}]}],
    }
    raw = json.dumps(counted).encode()
    assert sent_inline(counted, raw).images == 4
    assert sent_inline(counted, raw).chars == 3 * len(SHOT) + len(DATA_URL)
    text = {
        "system": [image],
        "tools": [{"name": "t", "input_schema": {"examples": [{"content": [image]}]}}],
        "messages": [
            {
                "role": "assistant",
                "content": [image, {"type": "tool_use", "id": "t", "name": "t", "input": {"content": [image]}}],
            },
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": DATA_URL}}]},
        ],
        "input": [{"role": "developer", "content": [shown]}, {"type": "function_call", "arguments": DATA_URL}],
    }
    assert sent_inline(text, json.dumps(text).encode()).images == 0

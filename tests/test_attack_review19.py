"""Review 19: an attacker's and an accountant's look at Gemini's native API and OpenAI's media
endpoints — where earlier rounds looked least — with one ordinary client key (a small budget, a
model allow-list), against the built pyz and the mock upstream, with the official ``openai`` SDK
where a client matters.

Each test names the hole it closes and failed on the code it was written against.
"""

from __future__ import annotations

import json

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import MockUpstream, Reply

GEMINI_KEY = "AIza-review19-0123456789abcdefPROVIDERSECRET"
ADMIN = "admin-key-for-review19-0123456789"
CONTENTS = [{"role": "user", "parts": [{"text": "Hello"}]}]


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock: MockUpstream, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=mock.url, STOCKYARD_ADMIN_KEY=ADMIN)
    price = ("prices", "set", "gemini-embedding-001", "--input", "0.15", "--output", "0")  # Google's; not shipped
    keys = {
        "budgeted": ["--budget-usd", "5", "--budget-period", "total"],
        "dime": ["--budget-usd", "0.10", "--budget-period", "total"],
    }
    with served(pyz_path, tmp_path_factory, "review19", env, keys, cli=[price]) as proc:
        yield proc


@pytest.fixture(autouse=True)
def fresh_mock(mock: MockUpstream):
    mock.clear_replies()
    yield
    mock.clear_replies()


def budget_spent(server: ServerProcess, key_id: str) -> int:
    """What a key's budget counts as spent (µ¢): the daily rollups its traces settle into."""
    rows = server.db_rows("SELECT COALESCE(SUM(cost_uc), 0) AS s FROM rollups_daily WHERE key_id = ?", (key_id,))
    return rows[0]["s"]


# --------------------------------------------------------------------------- media: transcriptions


def test_a_streamed_transcription_cut_before_its_usage_is_billed(server, mock) -> None:
    """Hole: a streamed transcription (gpt-4o-transcribe, ``stream=true``) reports its usage only in
    its last event (``transcript.text.done``). A stream that ended before it — the provider broke
    it, or the client left once it had read the text — was traced with cost ``unknown``, and so
    settled its budget's hold at nothing: the provider heard (and bills) all of the audio, and
    the transcript went out, for free. It is billed an estimate now: the audio its hold counted
    (its upload's bytes) and the text that went out."""
    deltas = [json.dumps({"type": "transcript.text.delta", "delta": piece}) for piece in ("Hello", " there", ".")]
    mock.enqueue(Reply(sse=deltas, cut_after=3))
    client = server.openai("budgeted")
    audio = b"ID3" + b"\x00" * 4997  # 5,000 bytes: 20 s held at the lowest bitrate (250 bytes a second)
    with client.audio.transcriptions.with_streaming_response.create(
        model="gpt-4o-transcribe", file=("a.mp3", audio, "audio/mpeg"), stream=True
    ) as resp:
        trace_id = resp.headers["x-stockyard-trace-id"]
        text = b""
        try:
            for chunk in resp.iter_bytes():
                text += chunk
        except Exception:  # the cut: the SDK's reader sees the stream end early
            pass
    assert b"Hello" in text and b" there" in text
    trace = wait_for(lambda: server.trace(trace_id), what="the trace")
    assert trace["outcome"] == "stream_broken", trace
    assert trace["cost_status"] == "estimate" and trace["cost_uc"], trace
    # gpt-4o-transcribe per 1M: audio in $6.00 (600 µ¢ a token), out $10.00: 20 s × 20 audio tokens
    # a second are 400 audio tokens, at least 240,000 µ¢, and the text that went out
    assert trace["cost_uc"] >= 400 * 600
    wait_for(lambda: budget_spent(server, trace["key_id"]) >= trace["cost_uc"], what="the budget charged")


# --------------------------------------------------------------------------- media: image edits

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200  # the provider reads it as an image; its tokens are its own


def edit(server: ServerProcess, key: str, images: int) -> tuple[int, dict]:
    """A gpt-image-1 edit of ``images`` uploaded images at low quality, by the official SDK."""
    import openai

    client = server.openai(key)
    files = [(f"in{i}.png", PNG, "image/png") for i in range(images)]
    try:
        raw = client.images.with_raw_response.edit(
            model="gpt-image-1", image=files, prompt="merge them", quality="low", size="1024x1024"
        )
    except openai.APIStatusError as err:
        return err.status_code, err.response.json()
    return raw.status_code, json.loads(raw.content)


def test_an_image_edit_holds_the_images_it_uploads(server, mock) -> None:
    """Hole: a gpt-image edit is billed its input images as image input tokens (gpt-image-1:
    $10 per 1M; up to 16 images, thousands of tokens each at high fidelity), but the budget's hold
    counted only the form's text (the upload's metadata at four bytes a token) and the images it
    draws. A key with $0.10 left was let send 16 images at once, held at ~$0.013: each upload
    is held now as an image named by reference is (the price table's ``image_input_tokens``, else
    1,600 tokens), so 16 of them (25.6M µ¢ at $10 per 1M) do not fit $0.10, and one does."""
    calls = len(mock.requests)
    status, body = edit(server, "dime", 16)
    assert status == 429 and body["error"]["code"] == "budget_exceeded", body
    assert len(mock.requests) == calls  # refused before the provider was asked
    status, body = edit(server, "dime", 1)
    assert status == 200 and body["data"], body


# --------------------------------------------------------------------------- Gemini: a stream cut


def test_a_gemini_stream_cut_after_chunks_without_their_output_count_bills_the_text_sent(server, mock) -> None:
    """Hole: Gemini's stream chunks each carry ``usageMetadata``, but before the last one it may
    hold the prompt's count alone (no ``candidatesTokenCount`` yet). A stream cut there (the
    provider broke, the client left) was billed that count as exact: its input, and none of the
    text that had gone out. Until a chunk ends the answer its usage is a floor now, and the output
    is at least the text relayed (four characters a token), an estimate, as for a Claude stream
    cut before its output count."""
    model = "gemini-2.5-flash"
    text = "word " * 800  # 4,000 characters: 1,000 tokens at four characters a token
    prompt_only = {"promptTokenCount": 12, "totalTokenCount": 12}
    chunk = {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}]}
    events = [json.dumps({**chunk, "usageMetadata": prompt_only, "modelVersion": model})] * 2
    mock.enqueue(Reply(sse=events, cut_after=2))
    key = server.secret("budgeted")
    path = f"/v1beta/models/{model}:streamGenerateContent?alt=sse"
    status, headers, raw = server.request("POST", path, {"contents": CONTENTS}, headers={"x-goog-api-key": key})
    assert status == 200 and raw.count(b"word") >= 1600, raw[:200]
    trace = wait_for(lambda: server.trace(headers["x-stockyard-trace-id"]), what="the trace")
    assert trace["outcome"] == "stream_broken", trace
    assert trace["completion_tokens"] >= 2000 and trace["cost_status"] == "estimate", trace
    assert trace["prompt_tokens"] == 12


def test_a_gemini_stream_cut_so_bills_the_text_sent_to_a_chat_client_too(server, mock) -> None:
    """Hole: the same cut, with an OpenAI client (the official SDK) on a Gemini model: the
    translated stream kept the prompt-only count as exact and billed none of the text it sent."""
    import openai

    text = "word " * 800
    prompt_only = {"promptTokenCount": 12, "totalTokenCount": 12}
    chunk = {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}]}
    mock.enqueue(Reply(sse=[json.dumps({**chunk, "usageMetadata": prompt_only})] * 2, cut_after=2))
    client = server.openai("budgeted")
    got = ""
    with client.chat.completions.with_streaming_response.create(
        model="gemini-2.5-flash", messages=[{"role": "user", "content": "Hello"}], stream=True
    ) as resp:
        trace_id = resp.headers["x-stockyard-trace-id"]
        with pytest.raises(openai.APIError):  # the break: OpenAI's error event, which the SDK raises
            for event in resp.parse():
                got += event.choices[0].delta.content or "" if event.choices else ""
    assert got.count("word") == 1600
    trace = wait_for(lambda: server.trace(trace_id), what="the trace")
    assert trace["outcome"] == "stream_broken", trace
    assert trace["completion_tokens"] >= 2000 and trace["cost_status"] == "estimate", trace


# --------------------------------------------------------------------------- Gemini: embeddings


@pytest.mark.parametrize("route", ["native", "openai"])
def test_gemini_embeddings_of_non_latin_text_are_not_billed_a_third_of_their_bytes(server, mock, route) -> None:
    """Hole: Gemini reports no usage for embeddings, so Stockyard estimates it — by characters, four
    a token, where every other estimate here (and the budget's hold of the same request) counts
    UTF-8 bytes, four a token, as the over-estimate. A CJK text (three bytes a character, about a
    token a character to Gemini's tokenizer) was billed a quarter token a character: a third of
    what its hold counted. It is billed its bytes / 4 now, as the hold counts it."""
    text = "数据" * 2000  # 4,000 characters, 12,000 UTF-8 bytes: 3,000 tokens at four bytes a token
    key = server.secret("budgeted")
    if route == "native":
        body = {"content": {"parts": [{"text": text}]}}
        path = "/v1beta/models/gemini-embedding-001:embedContent"
        status, headers, raw = server.request("POST", path, body, headers={"x-goog-api-key": key})
        assert status == 200, raw
        trace_id = headers["x-stockyard-trace-id"]
    else:
        made = server.openai("budgeted").embeddings.with_raw_response.create(model="gemini-embedding-001", input=text)
        trace_id = made.headers["x-stockyard-trace-id"]
    trace = wait_for(lambda: server.trace(trace_id), what="the trace")
    assert trace["prompt_tokens"] >= 3000 and trace["cost_status"] == "estimate", trace


# --------------------------------------------------------------------------- media: multipart


def form(parts: list[tuple[str, bytes]], boundary: str = "review19bound") -> tuple[bytes, dict[str, str]]:
    """A multipart body of ``(Content-Disposition parameters, value)`` parts, written by hand."""
    body = b"".join(
        f"--{boundary}\r\nContent-Disposition: form-data; {params}\r\n\r\n".encode() + value + b"\r\n"
        for params, value in parts
    )
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.parametrize(
    "disguised",
    [
        "name=\"prompt\"; name*=UTF-8''model",  # RFC 2231/5987: Werkzeug reads the name as "model"
        'name*0="mo"; name*1="del"',  # RFC 2231 continuations: "model" to Werkzeug
        'name="prompt"; name*0*=UTF-8\'\'mo; name*1="del"',
    ],
)
def test_a_form_field_named_in_rfc_2231_form_is_refused(server, mock, disguised) -> None:
    """Hole: the form is relayed with its parts' own headers, and Stockyard read a part's name from
    ``name=`` alone, while parsers that follow RFC 2231 (Werkzeug's, behind many Python servers)
    let ``name*=`` — or ``name*0``, ``name*1``… — name it. A part Stockyard read as ``prompt``
    reached such a provider as a first ``model``: a model the key's allow-list, its budget and its
    price never saw (or as ``n``: images the hold did not count). A part whose name is written so
    is a 400 now, before the provider is asked (the second case was refused already: no name)."""
    calls = len(mock.requests)
    body, headers = form(
        [
            (disguised, b"gpt-4o-transcribe"),
            ('name="model"', b"whisper-1"),
            ('name="file"; filename="a.mp3"', b"ID3" + b"\x00" * 997),
        ]
    )
    headers["Authorization"] = f"Bearer {server.secret('budgeted')}"
    status, _, raw = server.request("POST", "/v1/audio/transcriptions", raw=body, headers=headers)
    assert status == 400, raw
    error = json.loads(raw)["error"]
    assert "name" in error["message"], error
    assert len(mock.requests) == calls

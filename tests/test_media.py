"""OpenAI's media endpoints through a real server with the official SDK: audio, images, moderations,
GET /v1/models/{id}; uploads spooled (never in the trace), limits, and refusals."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from conftest import TEST_STORE, ServerProcess, mock_env, pcm_wav, served, stored_values, wait_for
from mock_upstream import SPEECH_BYTES, TEXT, Reply, multipart_form
from openai import OpenAI
from rawhttp import connect, read_response

from stockyard.config import Settings
from stockyard.multipart import spool_folder

ADMIN = "admin-key-for-media-tests-0123456789"
MAX_UPLOAD = 400_000
UNIQUE = b"\x00STOCKYARD-UPLOAD-PATTERN-7f3a9c\x01" * 64  # must never reach the database
AUDIO = b"RIFF" + os.urandom(2000) + UNIQUE + os.urandom(900)  # 3 s at the mock's 1000 bytes a second


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-media-tests-0123456789",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_ADMIN_KEY=ADMIN,
        STOCKYARD_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
    )
    # an end-user budget: only requests naming an end user
    limits = [("modules", "set", "userlimits", "budget_usd=0.05"), ("modules", "enable", "userlimits")]
    with served(pyz_path, tmp_path_factory, "media", env, cli=limits) as srv:
        yield srv


def admin(server: ServerProcess, method: str, path: str, body=None) -> tuple[int, dict]:
    status, _, data = server.request(method, path, body, headers={"Authorization": f"Bearer {ADMIN}"})
    return status, json.loads(data) if data else {}


@pytest.fixture(scope="module")
def key(server) -> str:
    status, body = admin(server, "POST", "/api/keys", {"name": "media"})
    assert status == 201, body
    return body["key"]


@pytest.fixture(scope="module")
def client(server, key) -> OpenAI:
    return server.openai(key)


@pytest.fixture(autouse=True)
def fresh_mock(mock):
    mock.clear_replies()
    yield
    mock.clear_replies()


def spool_dir(server: ServerProcess) -> Path:
    """The server's upload folder: beside its database (on PostgreSQL the settings' default SQLite path)."""
    return spool_folder(server.db if TEST_STORE == "sqlite" else Settings.db_path)


def spool_fds(server: ServerProcess) -> list[str]:
    """The server's open files in its upload folder (a spool has no name, but its fd says where)."""
    assert server.proc is not None
    folder = str(spool_dir(server))
    found = []
    for fd in Path(f"/proc/{server.proc.pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(folder):
            found.append(target)
    return found


def database_bytes(server: ServerProcess) -> bytes:
    """The database's files and every value stored in it (on PostgreSQL the only place)."""
    files = b"".join(p.read_bytes() for p in server.db.parent.glob(server.db.name + "*") if p.is_file())
    return files + b"".join(data for _, data in stored_values(server.db))


def test_a_transcription_uploads_the_file_and_traces_only_its_metadata(client, server, mock):
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("speech.wav", AUDIO, "audio/wav"), language="en"
    )
    assert raw.parse().text == TEXT
    fields, files = multipart_form(mock.last("/v1/audio/transcriptions"))
    assert fields["model"] == "whisper-1" and fields["language"] == "en"
    assert files == [("file", "speech.wav", AUDIO)]
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["endpoint"], trace["provider"], trace["model"], trace["status"]) == (
        "transcriptions",
        "openai",
        "whisper-1",
        200,
    )
    seconds = len(AUDIO) // 1000  # the mock's duration; whisper-1: $0.006 a minute = 10,000 µ¢ a second
    assert (trace["cost_uc"], trace["cost_status"]) == (seconds * 10_000, "exact")
    body = server.db_rows("SELECT request FROM trace_bodies WHERE trace_id = ?", (trace["id"],))
    assert body, "the request's metadata is stored"
    status, detail = admin(server, "GET", f"/api/traces/{trace['id']}")
    assert status == 200
    meta = json.loads(detail["request_body"])
    assert meta["fields"]["model"] == "whisper-1"
    assert meta["files"] == [
        {"name": "file", "filename": "speech.wav", "content_type": "audio/wav", "size": len(AUDIO)}
    ]
    assert UNIQUE[:40] not in database_bytes(server)
    wait_for(lambda: spool_fds(server) == [], what="the spool to be closed")


def test_provider_qualified_model_is_sent_by_its_upstream_name_and_text_formats_pass(client, mock):
    text = client.audio.transcriptions.create(
        model="openai/whisper-1", file=("a.mp3", b"ID3" + b"x" * 1500, "audio/mpeg"), response_format="text"
    )
    assert text.strip() == TEXT
    fields, files = multipart_form(mock.last("/v1/audio/transcriptions"))
    assert fields["model"] == "whisper-1" and files[0][2] == b"ID3" + b"x" * 1500


def test_a_streamed_transcription_is_relayed_as_events(client, server, mock):
    with client.audio.transcriptions.with_streaming_response.create(
        model="gpt-4o-mini-transcribe", file=("a.wav", AUDIO, "audio/wav"), stream=True
    ) as resp:
        trace_id = resp.headers["x-stockyard-trace-id"]
        events = [json.loads(line[5:]) for line in resp.iter_lines() if line.startswith("data:")]
    assert [e["type"] for e in events] == ["transcript.text.delta"] * 3 + ["transcript.text.done"]
    assert multipart_form(mock.last("/v1/audio/transcriptions"))[0]["stream"] == "true"
    trace = server.trace(trace_id)
    assert trace["stream"] == 1 and (trace["prompt_tokens"], trace["completion_tokens"]) == (14, 5)
    # gpt-4o-mini-transcribe per 1M: text in $1.25, audio in $3.00, out $5.00; 4 text + 10 audio in, 5 out
    assert trace["cost_uc"] == (4 * 125_000_000 + 10 * 300_000_000 + 5 * 500_000_000) // 10**6 == 6000


def test_a_translation_without_usage_costs_unknown(client, server, mock):
    raw = client.audio.translations.with_raw_response.create(model="whisper-1", file=("fr.wav", AUDIO, "audio/wav"))
    assert raw.parse().text == TEXT
    assert multipart_form(mock.last("/v1/audio/translations"))[1][0][1] == "fr.wav"
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["cost_uc"], trace["cost_status"]) == (None, "unknown")  # never guessed


def budget_key(server: ServerProcess, prefix: str) -> dict:
    """A new client key under a $0.05 day budget (the admin API's answer: ``key``, ``id``)."""
    status, made = admin(
        server,
        "POST",
        "/api/keys",
        {"name": f"{prefix}-{time.monotonic_ns()}", "budget_usd": "0.05", "budget_period": "day"},
    )
    assert status == 201, made
    return made


def budgeted(server: ServerProcess, key: str, who: str) -> tuple[OpenAI, str | None]:
    """A client under a $0.05 day budget: its own key's, or an end user's (on the plain key), and
    the key id whose traces carry its spend."""
    if who == "end user":
        return server.openai(key, default_headers={"x-stockyard-user": "eve"}), None
    made = budget_key(server, "audio")
    return server.openai(made["key"]), made["id"]


NOT_PRICED = [  # (endpoint, model, response_format, what the refusal names instead)
    ("transcriptions", "whisper-1", "text", "'json' or 'verbose_json'"),
    ("transcriptions", "whisper-1", "srt", "'json' or 'verbose_json'"),
    ("transcriptions", "whisper-1", "vtt", "'json' or 'verbose_json'"),
    ("transcriptions", "gpt-4o-mini-transcribe", "text", "'json' or 'verbose_json'"),
    ("translations", "whisper-1", None, "'verbose_json'"),  # json, the default: {"text"} and no more
    ("translations", "whisper-1", "json", "'verbose_json'"),
    ("translations", "whisper-1", "text", "'verbose_json'"),
]


@pytest.mark.parametrize("who", ["key", "end user"])
def test_a_budget_refuses_audio_whose_answer_cannot_be_priced(server, key, mock, who):
    """Was: a whisper translation and a text, srt or vtt transcript come back without usage or
    duration, and the audio's length is known only from the answer (its hold is the most the upload
    may cost, which only that answer settles), so a budgeted key or end user transcribed any amount
    of audio with its spend staying $0.00."""
    client, _ = budgeted(server, key, who)
    for endpoint, model, form, instead in NOT_PRICED:
        mock.clear()
        api = client.audio.transcriptions if endpoint == "transcriptions" else client.audio.translations
        extra = {"response_format": form} if form else {}
        with pytest.raises(openai.PermissionDeniedError) as err:
            api.create(model=model, file=("a.mp3", AUDIO, "audio/mpeg"), **extra)
        error = err.value.body
        assert (error["code"], error["param"]) == ("response_format_not_budgeted", "response_format"), error
        assert instead in error["message"] and "budget" in error["message"], error["message"]
        assert mock.requests == [], (endpoint, form)  # refused before the provider is called


@pytest.mark.parametrize("who", ["key", "end user"])
def test_a_budget_admits_audio_whose_answer_reports_its_cost_and_counts_it(server, key, mock, who):
    """json and verbose_json transcripts carry usage (seconds for whisper-1, tokens for the gpt-4o
    transcribe models), a verbose_json translation its duration: each is priced exactly."""
    client, key_id = budgeted(server, key, who)
    seconds = len(AUDIO) // 1000  # the mock's duration; whisper-1: 10,000 µ¢ a second
    calls = [
        (client.audio.transcriptions, "whisper-1", None, seconds * 10_000),
        (client.audio.transcriptions, "whisper-1", "verbose_json", seconds * 10_000),
        (client.audio.transcriptions, "gpt-4o-mini-transcribe", "json", 6000),
        (client.audio.translations, "whisper-1", "verbose_json", seconds * 10_000),
    ]
    for api, model, form, cost in calls:
        extra = {"response_format": form} if form else {}
        raw = api.with_raw_response.create(model=model, file=("a.wav", AUDIO, "audio/wav"), **extra)
        trace = server.trace(raw.headers["x-stockyard-trace-id"])
        assert (trace["cost_uc"], trace["cost_status"]) == (cost, "exact"), (model, form)
    if key_id is not None:  # the key's spend this period
        wait_for(
            lambda: admin(server, "GET", f"/api/keys/{key_id}")[1]["spend_uc"] == 3 * seconds * 10_000 + 6000,
            what="the key's spend",
        )


# What a budget holds for an upload's audio before the answer says how long it was
# (``estimate.audio_seconds``): a PCM WAV's own duration, anything else its bytes at 2 kbps.
FLOOR_BYTES_PER_S = 250
WHISPER_UC_PER_S = 10_000  # whisper-1: $0.006 a minute


def audio_key(server: ServerProcess, budget_uc: int) -> tuple[str, str]:
    """A new key with a total budget of ``budget_uc`` µ¢: (secret, id)."""
    usd = f"{budget_uc / 10**8:.8f}"
    status, made = admin(
        server,
        "POST",
        "/api/keys",
        {"name": f"audio-hold-{time.monotonic_ns()}", "budget_usd": usd, "budget_period": "total"},
    )
    assert status == 201, made
    return made["key"], made["id"]


def transcribe(server: ServerProcess, secret: str, audio: bytes, *fields: tuple[str, str]) -> tuple[int, dict]:
    name = "a.wav" if audio.startswith(b"RIFF") else "a.ogg"
    parts = [("model", b"whisper-1", None), *((k, v.encode(), None) for k, v in fields), ("file", audio, name)]
    return post_form(server, secret, "/v1/audio/transcriptions", *parts)


def key_spend(server: ServerProcess, key_id: str) -> int:
    return admin(server, "GET", f"/api/keys/{key_id}")[1]["spend_uc"]


def test_a_burst_of_long_transcriptions_never_spends_past_the_budget(server, mock):
    """Was: nothing was held for the audio itself (its length is known only from the answer), so
    20 concurrent transcriptions on a key with room for 3 were all admitted, each billed afterwards:
    the key spent its budget several times over."""
    audio = b"OggS" + os.urandom(24_996)  # not a WAV: held at 2 kbps, 100 s; the mock bills 25 s
    hold, cost = 100 * WHISPER_UC_PER_S, 25 * WHISPER_UC_PER_S
    budget = 3 * hold
    secret, key_id = audio_key(server, budget)
    mock.clear()
    mock.delay_ms = 200  # the transcriptions overlap in flight
    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(lambda _: transcribe(server, secret, audio), range(20)))
    finally:
        mock.delay_ms = 0
    admitted = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    assert {(r[0], r[1]["error"]["code"]) for r in refused} <= {(429, "budget_exceeded")}, refused[:1]
    assert len(admitted) >= 3  # the first three always fit
    assert len(mock.requests) == len(admitted)  # the refused never reached the provider
    wait_for(lambda: key_spend(server, key_id) == len(admitted) * cost, what="the key's spend")
    assert key_spend(server, key_id) <= budget


def test_a_wav_is_held_at_its_duration_and_other_audio_at_the_lowest_bitrate(server, mock):
    """A PCM WAV's header says how long it is (bytes a second), so it is held at about its cost;
    the same number of bytes in any other format could be far longer audio and is held so."""
    wav = pcm_wav(3)  # 96,044 bytes of 16 kHz 16-bit mono: 3 s, held as 4 (its header bytes too)
    secret, key_id = audio_key(server, 1_000_000)  # $0.01
    mock.clear()
    status, body = transcribe(server, secret, b"ID3" + os.urandom(len(wav) - 3))  # 385 s at 2 kbps: $0.0385
    assert status == 429 and body["error"]["code"] == "budget_exceeded", body
    assert "up to $0.0385" in body["error"]["message"] and mock.requests == []
    status, body = transcribe(server, secret, wav)
    assert status == 200 and body["usage"] == {"type": "duration", "seconds": 3}, body
    wait_for(lambda: key_spend(server, key_id) == 3 * WHISPER_UC_PER_S, what="the key's spend")


def test_the_audio_hold_is_released_once_the_answer_is_billed(server, mock):
    """Each hold settles to the billed seconds: the ledger is left holding nothing, so a request
    holding exactly what is left fits, and one second more is refused naming only what was spent."""
    secret, key_id = audio_key(server, 1_000_000)
    assert transcribe(server, secret, pcm_wav(3))[0] == 200  # held 4 s, billed 3 s
    wait_for(lambda: key_spend(server, key_id) == 3 * WHISPER_UC_PER_S, what="the first to settle")
    left = 1_000_000 - 3 * WHISPER_UC_PER_S  # 97 s
    exact = b"OggS" + os.urandom(left // WHISPER_UC_PER_S * FLOOR_BYTES_PER_S - 4)  # held 97 s; billed 24 s
    status, body = transcribe(server, secret, exact, ("response_format", "verbose_json"))
    assert status == 200 and body["duration"] == 24, body
    wait_for(lambda: key_spend(server, key_id) == 27 * WHISPER_UC_PER_S, what="the second to settle")
    left -= 24 * WHISPER_UC_PER_S  # 73 s
    mock.clear()
    more = b"OggS" + os.urandom(left // WHISPER_UC_PER_S * FLOOR_BYTES_PER_S - 3)  # one byte past: 74 s
    status, body = transcribe(server, secret, more)
    assert status == 429 and mock.requests == [], body
    message = body["error"]["message"]
    assert "$0.0027 spent, and this request may cost up to $0.0074" in message and "held" not in message, message
    assert key_spend(server, key_id) == 27 * WHISPER_UC_PER_S


def test_a_chunked_upload_is_held_at_the_bytes_it_sent(server, mock):
    """No Content-Length (a chunked body, in small chunks): the hold is counted from the file's
    bytes as received, so 101 s of it do not pass a budget with room for 100."""
    secret, _ = audio_key(server, 1_000_000)  # $0.01: 100 s
    mock.clear()
    form = raw_form(("model", b"whisper-1", None), ("file", b"OggS" + os.urandom(25_246), "a.ogg"))  # 101 s
    chunks = [form[i : i + 997] for i in range(0, len(form), 997)]
    sock = connect(server)
    sock.sendall(
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
        + secret.encode()
        + b"\r\nContent-Type: multipart/form-data; boundary="
        + FORM_BOUNDARY.encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
        + b"0\r\n\r\n"
    )
    status, _, body = read_response(sock)
    sock.close()
    assert status == 429 and json.loads(body)["error"]["code"] == "budget_exceeded", body
    assert b"up to $0.0101" in body and mock.requests == []


def test_a_streamed_token_priced_transcription_holds_its_audio(server, mock):
    """gpt-4o-mini-transcribe bills its audio as input tokens ($3 per 1M): held at 20 a second of
    the bound, streamed or not; 400 s of it ($0.024) and the output cap ($0.02) pass a $0.03 budget."""
    secret, key_id = audio_key(server, 3_000_000)
    mock.clear()
    fields = [("model", b"gpt-4o-mini-transcribe", None), ("stream", b"true", None)]
    status, body = post_form(
        server, secret, "/v1/audio/transcriptions", *fields, ("file", b"OggS" + os.urandom(99_996), "a.ogg")
    )
    assert status == 429 and body["error"]["code"] == "budget_exceeded" and mock.requests == [], body
    status, body = post_form(server, secret, "/v1/audio/transcriptions", *fields, ("file", os.urandom(1000), "a.ogg"))
    assert status == 200 and "transcript.text.done" in body["text"], body
    wait_for(lambda: key_spend(server, key_id) == 6000, what="the key's spend")


def test_an_end_users_budget_holds_images_at_their_unit_price(server, key, mock):
    """Was: an end user's budget priced media requests as chat (a flat price and tokens), so every
    DALL·E request (priced per image, by size and quality) was refused 403 model_not_priced."""
    client, _ = budgeted(server, key, "end user")
    image = ("in.png", b"\x89PNG" + b"p" * 500, "image/png")
    raw = client.images.with_raw_response.edit(model="dall-e-2", image=image, prompt="x", size="256x256")
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["end_user"], trace["cost_uc"]) == ("eve", 1_600_000)  # $0.016 a 256x256 image
    mock.clear()
    with pytest.raises(openai.RateLimitError) as err:  # 10 × $0.016 is past eve's $0.05
        client.images.edit(model="dall-e-2", image=image, prompt="x", size="256x256", n=10)
    assert "up to $0.16" in err.value.body["message"] and mock.requests == []


def test_without_a_budget_unpriced_audio_answers_still_pass_as_unknown(client, server):
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("a.mp3", AUDIO, "audio/mpeg"), response_format="srt"
    )
    assert TEXT in raw.text
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["status"], trace["cost_uc"], trace["cost_status"]) == (200, None, "unknown")


FORM_BOUNDARY = "stockyard-media-form-7MA4YWxkTrZu0gW"


def raw_form(*parts: tuple[str, bytes, str | None]) -> bytes:
    """A multipart body as written by hand (an SDK never repeats a field): (name, bytes, filename)."""
    out = b""
    for name, data, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{FORM_BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{FORM_BOUNDARY}--\r\n".encode()


def post_form(server: ServerProcess, key: str, path: str, *parts: tuple[str, bytes, str | None]) -> tuple[int, dict]:
    status, _, body = server.request(
        "POST",
        path,
        raw=raw_form(*parts),
        headers={"Authorization": f"Bearer {key}", "Content-Type": f"multipart/form-data; boundary={FORM_BOUNDARY}"},
    )
    return status, json.loads(body) if body.startswith(b"{") else {"text": body.decode()}


PNG = ("image", b"\x89PNG" + b"p" * 500, "in.png")


@pytest.mark.parametrize(
    "path, parts, name",
    [  # the budget read one value (or none), the provider gets every part
        (
            "/v1/images/edits",
            [("model", b"dall-e-2", None), ("size", b"256x256", None), ("n", b"1", None), ("n", b"10", None), PNG],
            "n",
        ),
        ("/v1/images/edits", [("model", b"dall-e-2", None), ("n", b"1", None), ("n", b"10", "n.txt"), PNG], "n"),
        (
            "/v1/audio/transcriptions",
            [
                ("model", b"whisper-1", None),
                ("response_format", b"json", None),
                ("response_format", b"text", None),
                ("file", AUDIO, "a.wav"),
            ],
            "response_format",
        ),
    ],
)
def test_a_form_naming_a_field_twice_is_refused_before_any_check(server, mock, path, parts, name):
    """Was: a repeated field became a list, which the budget's reading of the form skipped (``n``
    counted as 1, ``response_format`` as json), while every part went upstream: a $0.05 key had
    ten 256x256 edits (up to $0.16) for the price of one, and text transcripts uncounted."""
    made = budget_key(server, "form")
    mock.clear()
    status, answer = post_form(server, made["key"], path, *parts)
    assert status == 400, answer
    error = answer["error"]
    assert (error["code"], error["param"]) == ("duplicate_key", name) and "twice" in error["message"], error
    assert mock.requests == []
    if path == "/v1/images/edits":  # n=10 alone is more than the budget holds
        status, answer = post_form(
            server, made["key"], path, ("model", b"dall-e-2", None), ("size", b"256x256", None), ("n", b"10", None), PNG
        )
        assert status == 429 and "up to $0.16" in answer["error"]["message"], answer


@pytest.mark.parametrize("n", ["+10", "10.0", "1e1", "\u00b2", "0", "129", ""])
def test_a_form_n_that_is_not_plain_digits_in_range_is_a_400(server, mock, n):
    """Was: the budget counted a form's ``n`` only when it was digits (``+10``, ``10.0`` held one
    image, which a provider may read as ten), and ``²`` (a digit to Python, not to ``int``) was a 500."""
    made = budget_key(server, "n")
    mock.clear()
    status, answer = post_form(
        server, made["key"], "/v1/images/edits", ("model", b"dall-e-2", None), ("n", n.encode(), None), PNG
    )
    assert status == 400 and answer["error"]["param"] == "n" and "1 to 128" in answer["error"]["message"], answer
    assert mock.requests == []


def test_a_list_field_may_repeat_and_every_value_goes_upstream(server, key, mock):
    """OpenAI's forms send a list as repeated ``name[]`` parts (``timestamp_granularities[]``,
    ``include[]``, gpt-image-1's ``image[]``)."""
    status, answer = post_form(
        server,
        key,
        "/v1/audio/transcriptions",
        ("model", b"whisper-1", None),
        ("response_format", b"verbose_json", None),
        ("timestamp_granularities[]", b"word", None),
        ("timestamp_granularities[]", b"segment", None),
        ("file", AUDIO, "a.wav"),
    )
    assert status == 200 and answer["text"] == TEXT, answer
    fields, _ = multipart_form(mock.last("/v1/audio/transcriptions"))
    assert fields["timestamp_granularities[]"] == ["word", "segment"]


def test_speech_is_relayed_byte_for_byte_with_its_content_type(client, server):
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Hello there", response_format="wav"
    ) as resp:
        assert resp.headers["content-type"] == "audio/wav"
        audio = b"".join(resp.iter_bytes(8192))
        trace_id = resp.headers["x-stockyard-trace-id"]
    expected = (hashlib.sha256(b"Hello there").digest() * (SPEECH_BYTES // 32 + 1))[:SPEECH_BYTES]
    assert audio == expected
    trace = server.trace(trace_id)
    assert trace["endpoint"] == "speech" and trace["status"] == 200 and trace["outcome"] == "ok"
    assert trace["cost_uc"] == len("Hello there") * 1_500_000_000 // 10**6  # tts-1: $15 per 1M characters
    status, detail = admin(server, "GET", f"/api/traces/{trace_id}")
    assert json.loads(detail["response_body"]) == {"content_type": "audio/wav", "bytes": SPEECH_BYTES}


def test_image_generation_and_an_edit_with_a_file(client, server, mock):
    raw = client.images.with_raw_response.generate(
        model="dall-e-3", prompt="a lighthouse", size="1024x1792", quality="hd"
    )
    assert raw.parse().data[0].url and mock.last("/v1/images/generations").json["size"] == "1024x1792"
    assert server.trace(raw.headers["x-stockyard-trace-id"])["cost_uc"] == 12_000_000  # $0.12 an image
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
    raw = client.images.with_raw_response.edit(
        model="gpt-image-1", image=("in.png", png, "image/png"), prompt="add a boat", n=2
    )
    edited = raw.parse()
    assert len(edited.data) == 2 and edited.data[0].b64_json
    fields, files = multipart_form(mock.last("/v1/images/edits"))
    assert fields["prompt"] == "add a boat" and fields["n"] == "2" and files == [("image", "in.png", png)]
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert trace["endpoint"] == "image_edits" and trace["prompt_tokens"] == 50
    # gpt-image-1 per 1M: text in $5, image in $10, image out $40; 10 text + 40 image in, 4160 out
    assert trace["cost_uc"] == (10 * 500_000_000 + 40 * 1_000_000_000 + 4160 * 4_000_000_000) // 10**6
    assert trace["cost_status"] == "exact"


def test_image_variation_without_a_model_uses_openais_default(client, server, mock):
    raw = client.images.with_raw_response.create_variation(
        image=("in.png", b"\x89PNG" + b"p" * 500, "image/png"), n=3, size="512x512"
    )
    assert len(raw.parse().data) == 3
    assert "model" not in multipart_form(mock.last("/v1/images/variations"))[0]
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["model"], trace["cost_uc"]) == ("dall-e-2", 3 * 1_800_000)  # $0.018 a 512x512 image


def test_moderation(client, server):
    raw = client.moderations.with_raw_response.create(input=["one", "two"])
    answer = raw.parse()
    assert len(answer.results) == 2 and answer.results[0].flagged is False
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert trace["endpoint"] == "moderations" and trace["status"] == 200
    assert (trace["cost_uc"], trace["cost_status"]) == (0, "exact")


def test_models_retrieve_answers_one_model_or_a_404(client, server, key):
    model = client.models.retrieve("gpt-4o-mini")
    assert (model.id, model.object, model.owned_by) == ("gpt-4o-mini", "model", "openai")
    qualified = client.models.retrieve("anthropic/gpt-4o")  # the id holds a '/', sent as %2F
    assert qualified.owned_by == "anthropic"
    status, _, body = server.request("GET", "/v1/models/anthropic/gpt-4o", headers={"Authorization": f"Bearer {key}"})
    assert status == 200 and json.loads(body)["id"] == "anthropic/gpt-4o"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.body["code"] == "model_not_found"
    status, _, body = server.request("GET", "/v1/models/gpt-4o-mini")
    assert status == 401
    status, made = admin(server, "POST", "/api/keys", {"name": "only-mini", "models": ["gpt-4o-mini"]})
    narrow = server.openai(made["key"])
    assert narrow.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        narrow.models.retrieve("gpt-4o")


def test_another_kind_of_provider_is_a_400_naming_it_and_the_endpoint(client, server):
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="anthropic/claude-3-5-haiku", prompt="x")
    message = err.value.body["message"]
    assert "'anthropic'" in message and "/v1/images/generations" in message
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(model="anthropic/claude-3-5-haiku", file=("a.wav", AUDIO, "audio/wav"))
    assert "/v1/audio/transcriptions" in err.value.body["message"]
    wait_for(lambda: spool_fds(server) == [], what="the spool to be closed")


def test_no_key_is_a_401_before_the_body_is_read(server):
    sock = connect(server)
    sock.sendall(
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n"
    )
    status, _, body = read_response(sock)
    sock.close()
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"


def test_an_upload_over_the_limit_is_a_413_and_leaves_no_spool(server, key):
    head = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: multipart/form-data; boundary=BB\r\n"
    )
    sock = connect(server)  # announced too large: refused before a byte is read
    sock.sendall((head + f"Content-Length: {MAX_UPLOAD + 1}\r\n\r\n").encode())
    status, _, body = read_response(sock)
    sock.close()
    assert status == 413 and "STOCKYARD_MAX_UPLOAD_BYTES" in json.loads(body)["error"]["message"]

    sock = connect(server)  # chunked: spooled while it arrives, then over the limit
    sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
    part = b'--BB\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n' + b"a" * 100_000
    sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
    wait_for(lambda: spool_fds(server), what="the spool file while the upload arrives")
    block = b"b" * 100_000
    status = 0
    try:
        for _ in range(4):
            sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
    except OSError:
        pass  # the server answered and closed: expected
    status, _, body = read_response(sock)
    sock.close()
    assert status == 413
    wait_for(lambda: spool_fds(server) == [], what="the spool to be gone")
    assert list(spool_dir(server).iterdir()) == []


def test_a_malformed_form_is_a_400_and_leaves_no_spool(server, key):
    status, _, body = server.request(
        "POST",
        "/v1/audio/transcriptions",
        raw=b'--BB\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nabc',
        headers={"Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data; boundary=BB"},
    )
    assert status == 400 and "closing boundary" in json.loads(body)["error"]["message"]
    status, _, body = server.request(  # a JSON body to a form's route (an image edit may be JSON: its own tests)
        "POST", "/v1/images/variations", {"model": "dall-e-2"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_content_type"
    wait_for(lambda: spool_fds(server) == [], what="the spool to be closed")


def test_budgets_reserve_images_by_unit_and_overrides_take_units(server):
    status, made = admin(
        server, "POST", "/api/keys", {"name": "budget", "budget_usd": "0.05", "budget_period": "total"}
    )
    budgeted = server.openai(made["key"])
    with pytest.raises(openai.RateLimitError) as err:  # 2 × $0.04 is past $0.05: refused before upstream
        budgeted.images.generate(model="dall-e-3", prompt="x", n=2)
    assert err.value.body["code"] == "budget_exceeded"
    assert budgeted.moderations.create(input="free").results  # moderations cost nothing
    status, body = admin(
        server, "POST", "/api/prices", {"model": "dall-e-3/1024x1024/standard", "unit": "image", "input": "10000"}
    )
    assert status == 200, body
    wait_for(
        lambda: (
            admin(server, "GET", "/api/prices?model=dall-e-3/1024x1024/standard")[1]["prices"][0]["source"]
            == "override"
        ),
        what="the override",
    )
    raw = budgeted.images.with_raw_response.generate(model="dall-e-3", prompt="x", n=2)
    trace = wait_for(lambda: server.trace(raw.headers["x-stockyard-trace-id"]), what="trace")
    assert trace["cost_uc"] == 2 * 1_000_000  # the override's $0.01 an image
    status, body = admin(server, "POST", "/api/prices", {"model": "x-img", "unit": "furlong", "input": "1"})
    assert status == 400 and "unit" in json.dumps(body)


def test_the_cli_sets_a_unit_price(server):
    done = server.cli("prices", "set", "tts-1-hd", "--unit", "character", "--input", "31")
    assert done.returncode == 0, done.stderr
    assert "per 1M characters" in done.stdout
    listed = server.cli("prices", "list", "--model", "tts-1-hd", "--json")
    row = json.loads(listed.stdout.splitlines()[0])
    assert (row["unit"], row["source"], row["input_uc"]) == ("character", "override", 31 * 10**8)
    missing = server.cli("prices", "set", "x-model", "--input", "1")  # a token price needs --output
    assert missing.returncode == 1 and "output is required" in missing.stderr + missing.stdout


def test_a_speech_answer_that_breaks_is_cut_off_and_traced(server, key, mock):
    import http.client

    mock.enqueue(Reply(body=b"\x01" * 50_000, headers={"content-type": "audio/mpeg"}, cut_after=20_000))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    body = json.dumps({"model": "tts-1", "voice": "alloy", "input": "hi"})
    conn.request("POST", "/v1/audio/speech", body, {"Authorization": f"Bearer {key}"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type") == "audio/mpeg"
    with pytest.raises(http.client.IncompleteRead):  # no terminator: the client knows it is incomplete
        resp.read()
    trace = server.trace(resp.getheader("x-stockyard-trace-id"))
    assert trace["outcome"] == "stream_broken"
    conn.close()


def test_big_base64_images_are_stored_only_up_to_the_body_cap(client, server, mock):
    mock.enqueue(Reply(json={"created": 1, "data": [{"b64_json": "QUJD" * 200_000}]}))
    raw = client.images.with_raw_response.generate(model="dall-e-2", prompt="big", response_format="b64_json")
    assert len(raw.parse().data[0].b64_json) == 800_000
    server.trace(raw.headers["x-stockyard-trace-id"])  # the writer commits it a moment after the answer
    status, detail = admin(server, "GET", f"/api/traces/{raw.headers['x-stockyard-trace-id']}")
    assert detail["response_truncated"] is True and len(detail["response_body"]) <= 256 * 1024
    assert detail["cost_uc"] == 2_000_000  # one dall-e-2 1024x1024 image


def test_an_upload_arriving_steadily_is_still_cut_off_at_the_upload_timeout(pyz_path, cache_home, mock, tmp_path):
    """Each 256 KiB that arrive earn another read deadline, but none past STOCKYARD_UPLOAD_TIMEOUT:
    a key holder trickling a big upload cannot hold its connection (and thread) for hours."""
    env = mock_env(
        cache_home,
        mock,
        STOCKYARD_UPLOAD_TIMEOUT="2s",  # the read deadline stays 30 s: only the cap can cut it before
    )
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        sock = connect(srv)
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=BB\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        part = b'--BB\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n' + b"a" * 300_000
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))  # past one progress step: a new deadline, capped
        started = time.monotonic()
        sock.settimeout(25)
        try:
            ended = sock.recv(1) == b""
        except ConnectionResetError:
            ended = True
        took = time.monotonic() - started
        sock.close()
        assert ended and took < 20, f"the upload was cut off after {took:.1f}s (the read deadline is 30 s)"
        wait_for(lambda: spool_fds(srv) == [], what="the spool to be gone")
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


@pytest.mark.parametrize("who", ["key", "end user"])
def test_a_budget_refuses_speech_priced_per_token(server, key, mock, who):
    """Was: an operator's token price on a speech model (gpt-4o-mini-tts) was reserved, but the
    speech answer (the audio itself) reports no usage, so it settled at $0.00: unlimited speech
    under a budget. A budget counts speech by characters only."""
    reloads = admin(server, "GET", "/api/status")[1]["reloads"]
    status, body = admin(server, "POST", "/api/prices", {"model": "gpt-4o-mini-tts", "input": "0.60", "output": "12"})
    assert status == 200, body
    wait_for(lambda: admin(server, "GET", "/api/status")[1]["reloads"] > reloads, what="the server to take the price")
    client, _ = budgeted(server, key, who)
    mock.clear()
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hello there")
    assert err.value.body["code"] == "model_not_priced" and "unit" in err.value.body["message"]
    assert mock.requests == []

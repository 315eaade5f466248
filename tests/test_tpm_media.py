"""A key's (and an end user's) tokens per minute count a transcription's audio and the image tool's images.

Before the answer, a transcription was counted as its form's metadata and output cap, and a Responses
request offering the ``image_generation`` tool as its text: a key with a small tpm could start any
number of hour-long transcriptions or ten-image requests in one minute. The tpm estimate now counts
them as a budget's hold does (audio at 20 tokens a second, ``estimate.audio_seconds``; the tool's
images at ``imagegen.held_tokens``), and the window is corrected to what the answer reports: the
audio's duration (whisper-1) or token usage, and the tool's ``tool_usage.image_gen``.

The server's default output cap is 100 tokens, so a request's text counts next to nothing; the
audio here is a PCM WAV of 1,000 bytes a second (1 kHz, 8-bit mono), held at its own rate and
billed by the mock at its decoded length.
"""

from __future__ import annotations

import io
import json
import os
import threading
import wave

import pytest
from conftest import ServerProcess, mock_env, pcm_wav, served, wait_for

from stockyard import estimate
from stockyard.context import Attempt, RequestContext
from stockyard.errors import OPENAI, RESPONSES
from stockyard.pricing import Usage

ADMIN = "admin-key-for-tpm-media-tests-0123456789"
BOUNDARY = "stockyard-tpm-media-form-0123456789"
USER_TPM = 70_000  # an end user's: one ten-image request fits, two do not
LONG_S, SHORT_S = 600, 5  # 12,000 audio tokens; 100


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_DEFAULT_MAX_TOKENS="100")
    # an end user's tpm: only requests naming an end user
    userlimits = (("modules", "set", "userlimits", f"tpm={USER_TPM}"), ("modules", "enable", "userlimits"))
    with served(pyz_path, tmp_path_factory, "tpmmedia", env, cli=userlimits) as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh_mock(mock):
    mock.clear_replies()
    yield
    mock.clear_replies()
    mock.delay_ms = 0


_names = iter(range(1_000_000))


def make_key(server: ServerProcess, **fields) -> str:
    fields.setdefault("name", f"tpmmedia{next(_names)}")
    status, _, data = server.request("POST", "/api/keys", fields, headers={"Authorization": f"Bearer {ADMIN}"})
    body = json.loads(data)
    assert status == 201, body
    return body["key"]


def transcribe(
    server: ServerProcess, secret: str, seconds: int, model: str = "whisper-1", user: str | None = None, **fields: str
) -> tuple[int, dict, dict]:
    parts = [("model", model.encode(), None), *((k, v.encode(), None) for k, v in fields.items())]
    parts.append(("file", pcm_wav(seconds, rate=1000, width=1), "a.wav"))  # 1,000 bytes a second
    body = b""
    for name, data, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    if user is not None:
        headers["x-stockyard-user"] = user
    status, head, answer = server.request("POST", "/v1/audio/transcriptions", raw=body, headers=headers)
    return status, head, json.loads(answer) if answer.startswith(b"{") else {"text": answer.decode()}


def refused_for_tokens(status: int, head: dict, answer: dict, who: str = "this key") -> None:
    """A 429 in OpenAI's shape, for tokens per minute, saying when to retry."""
    assert status == 429, (status, answer)
    error = answer["error"]
    assert error["code"] == "rate_limit_exceeded" and "tokens per minute" in error["message"], error
    assert who in error["message"] and int(head["retry-after"]) >= 1


def test_a_second_long_transcription_within_the_minute_is_refused(server, mock):
    """Was: admitted (the first was counted as its form and corrected to 0: whisper-1 reports seconds)."""
    secret = make_key(server, tpm=20_000)
    assert transcribe(server, secret, LONG_S)[0] == 200  # counted at its duration: 12,000 tokens
    mock.clear()
    refused_for_tokens(*transcribe(server, secret, LONG_S))
    assert mock.requests == []  # refused before the provider
    assert transcribe(server, secret, SHORT_S)[0] == 200  # short audio still fits
    assert transcribe(server, secret, SHORT_S)[0] == 200


def test_a_transcription_longer_than_the_tpm_is_refused_saying_why(server, mock):
    secret = make_key(server, tpm=10_000)
    status, head, answer = transcribe(server, secret, LONG_S)
    assert status == 429 and answer["error"]["code"] == "rate_limit_exceeded", answer
    assert "audio" in answer["error"]["message"] and "retry-after" not in head, answer


def test_an_answer_that_says_nothing_of_its_audio_keeps_it_counted(server):
    """A text answer reports neither usage nor duration: its audio stays counted at the estimate."""
    secret = make_key(server, tpm=20_000)
    status, _, answer = transcribe(server, secret, LONG_S, response_format="text")
    assert status == 200 and "usage" not in answer, answer
    refused_for_tokens(*transcribe(server, secret, LONG_S))


def test_a_token_priced_transcription_is_corrected_to_its_usage(server):
    """gpt-4o-transcribe reports tokens (the mock: 14 input): the window keeps those, not the estimate."""
    secret = make_key(server, tpm=20_000)
    status, _, answer = transcribe(server, secret, LONG_S, model="gpt-4o-transcribe")
    assert status == 200 and answer["usage"]["type"] == "tokens", answer
    assert transcribe(server, secret, LONG_S, model="gpt-4o-transcribe")[0] == 200  # its estimate alone would not fit


def test_an_end_users_tpm_counts_the_audio_too(server, mock):
    secret = make_key(server)  # no tpm of its own
    hour = 3000  # 60,000 audio tokens: one fits in the end user's 70,000
    assert transcribe(server, secret, hour, user="listener")[0] == 200
    refused_for_tokens(*transcribe(server, secret, hour, user="listener"), who="end user 'listener'")
    assert transcribe(server, secret, SHORT_S, user="listener")[0] == 200
    assert transcribe(server, secret, hour, user="another")[0] == 200


def draw(calls: int | None) -> dict:
    """A Responses request; ``calls``: offering the image tool with that ``max_tool_calls`` (None: no tool)."""
    body: dict = {"model": "gpt-4o-mini", "input": "draw a cat", "max_output_tokens": 16}
    if calls is not None:
        body |= {"tools": [{"type": "image_generation"}], "max_tool_calls": calls}
    return body


def respond(server: ServerProcess, secret: str, body: dict, user: str | None = None) -> tuple[int, dict, dict]:
    headers = {"Authorization": f"Bearer {secret}"} | ({"x-stockyard-user": user} if user else {})
    status, head, data = server.request("POST", "/v1/responses", body, headers=headers)
    return status, head, json.loads(data)


def in_flight(server: ServerProcess, mock, secret: str, body: dict, user: str | None = None) -> threading.Thread:
    """Start ``body`` and return once the provider has it (held there by the mock's delay)."""
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(respond(server, secret, body, user)))
    mock.clear()
    mock.delay_ms = 3000
    thread.start()
    wait_for(lambda: mock.requests, what="the first request upstream")
    thread.answers = answers  # type: ignore[attr-defined]
    return thread


@pytest.mark.parametrize("user", [None, "painter"])
def test_a_second_ten_image_request_in_flight_is_refused(server, mock, user):
    """Ten images of the tool's dearest (6,240 tokens each) are 62,400 tokens: two do not fit in 70,000.
    Was: both admitted (each counted as its text)."""
    secret = make_key(server, tpm=70_000) if user is None else make_key(server)
    first = in_flight(server, mock, secret, draw(10), user)
    who = "this key" if user is None else f"end user {user!r}"
    refused_for_tokens(*respond(server, secret, draw(10), user), who=who)
    assert respond(server, secret, draw(1), user)[0] == 200  # one image still fits beside it
    mock.delay_ms = 0
    first.join()
    status, _, answer = first.answers[0]  # type: ignore[attr-defined]
    assert status == 200 and answer["tool_usage"]["image_gen"]["output_tokens"] > 0, answer
    # corrected to the image it made (tool_usage.image_gen): room for ten more again, once the correction
    # (a module's after hook, run after the answer went out) is made
    wait_for(lambda: respond(server, secret, draw(10), user)[0] == 200, what="the window corrected")


def test_requests_without_audio_or_the_tool_count_as_before():
    ctx = RequestContext("responses", RESPONSES, "127.0.0.1", {})
    ctx.body, ctx.raw = draw(None), json.dumps(draw(None)).encode()
    assert estimate.limited_tokens(ctx, 100) == (estimate.input_tokens(ctx) + 16, 0)
    ctx.body = {**draw(3), "tool_choice": "none"}  # the tool forbidden: no images
    assert estimate.limited_tokens(ctx, 100) == (estimate.input_tokens(ctx) + 16, 0)
    ctx.body = draw(3)
    assert estimate.limited_tokens(ctx, 100) == (estimate.input_tokens(ctx) + 16 + 3 * 6240, 3 * 6240)


def test_the_correction_counts_the_images_and_the_audio_an_answer_reports():
    ctx = RequestContext("responses", RESPONSES, "127.0.0.1", {})
    ctx.body, ctx.raw = draw(3), b"{}"
    ctx.attempt.usage = Usage(prompt_tokens=10, completion_tokens=5)
    ctx.attempt.image_usage = Usage(prompt_tokens=48, completion_tokens=1056)
    assert estimate.used_tokens(ctx) == 10 + 5 + 48 + 1056
    ctx.attempt.image_usage, ctx.attempt.image_estimate = None, Usage(completion_tokens=6240)  # a cut stream's
    assert estimate.used_tokens(ctx) == 10 + 5 + 6240
    audio = RequestContext("transcriptions", OPENAI, "127.0.0.1", {})
    audio.body, audio.raw = {"model": "whisper-1"}, b"{}"
    audio.attempt.status, audio.attempt.media_seconds = 200, 59.5
    assert estimate.used_tokens(audio) == 60 * 20  # billed seconds, 20 tokens each
    failed = Attempt(status=400)
    audio.attempts.append(failed)  # a refused attempt reports nothing and bills nothing
    assert estimate.used_tokens(audio) == 60 * 20

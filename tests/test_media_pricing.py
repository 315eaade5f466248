"""Prices in the media endpoints' units: images, seconds, characters, audio/image input tokens."""

from __future__ import annotations

import struct
import time

import pytest

from stockyard import estimate, multipart
from stockyard.billing import Pricer, billed_seconds, image_key
from stockyard.context import RequestContext
from stockyard.errors import OPENAI
from stockyard.pricing import Price, PriceTable, Usage, cost_microcents, unit_cost


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def test_shipped_media_prices_have_their_units(table):
    assert table.lookup("whisper-1").unit == "second"
    assert unit_cost(table.lookup("whisper-1"), 60) == 600_000  # $0.006 a minute
    assert table.lookup("tts-1-hd").unit == "character" and unit_cost(table.lookup("tts-1-hd"), 1_000_000) == 30 * 10**8
    assert unit_cost(table.lookup("dall-e-3/1024x1024/hd"), 1) == 8_000_000  # $0.08
    assert table.lookup("openai/dall-e-2/256x256/standard").unit == "image"
    assert table.lookup("dall-e-3") is None  # priced per size and quality only
    assert table.lookup("gpt-4o-mini-tts") is None  # no usage comes back: unknown, never guessed


def test_units_are_checked():
    with pytest.raises(ValueError):
        Price(1, 1, 1, 1, unit="furlong")
    assert Price.from_usd({"unit": "image", "input": "40000", "output": "0"}).input == 40000 * 10**8


def test_audio_and_image_input_tokens_bill_at_the_media_rate():
    usage = Usage.from_openai(
        {"type": "tokens", "input_tokens": 14, "input_token_details": {"text_tokens": 4, "audio_tokens": 10}}
    )
    assert (usage.prompt_tokens, usage.media_tokens) == (14, 10)
    image = Usage.from_openai({"input_tokens": 50, "input_tokens_details": {"text_tokens": 10, "image_tokens": 40}})
    assert image.media_tokens == 40
    price = Price.from_usd({"input": "1", "media_input": "10", "output": "0"})
    assert cost_microcents(price, usage) == (4 * 10**8 + 10 * 10**9) // 10**6
    plain = Price.from_usd({"input": "1", "output": "0"})  # no media rate: the input rate
    assert cost_microcents(plain, usage) == 14 * 10**8 // 10**6


@pytest.mark.parametrize("seconds, billed", [(0, 0), (0.2, 1), (1.49, 1), (1.5, 2), (59.5, 60), (3, 3)])
def test_audio_seconds_round_to_the_nearest_second(seconds, billed):
    assert billed_seconds(seconds) == billed


def test_image_key_uses_openais_defaults():
    assert image_key("dall-e-2", {}) == "dall-e-2/1024x1024/standard"
    assert image_key("dall-e-3", {"size": "1792x1024", "quality": "hd"}) == "dall-e-3/1792x1024/hd"
    assert image_key("dall-e-3", {"size": 5}) is None


def ctx_for(endpoint: str, body: dict) -> RequestContext:
    ctx = RequestContext(endpoint, OPENAI, "127.0.0.1", {})
    ctx.body, ctx.raw = body, b"{}"
    return ctx


def test_worst_cases(table):
    pricer = Pricer(table)
    images = ctx_for("image_generations", {"model": "dall-e-3", "n": 3})
    unit = pricer.image_price(images, "dall-e-3", None)
    assert estimate.media_request_cost(images, None, unit, 4096) == 3 * 4_000_000
    form = ctx_for("image_edits", {"model": "dall-e-2", "n": "2", "size": "256x256"})
    assert estimate.media_request_cost(form, None, pricer.image_price(form, "dall-e-2", None), 4096) == 2 * 1_600_000
    speech = ctx_for("speech", {"input": "x" * 1000})
    assert estimate.media_request_cost(speech, table.lookup("tts-1"), None, 4096) == 1000 * 15 * 100
    whisper = ctx_for("transcriptions", {"model": "whisper-1"})
    assert estimate.media_request_cost(whisper, table.lookup("whisper-1"), None, 4096) == 0  # no upload: no audio
    assert estimate.media_request_cost(ctx_for("moderations", {}), None, None, 4096) == 0
    assert estimate.media_request_cost(ctx_for("speech", {"input": "x"}), None, None, 4096) is None


# -- the most an upload's audio can cost (estimate.audio_seconds) -----------------------------------


def wav_head(tag: int = 1, channels: int = 1, rate: int = 16_000, bits: int = 16, average: int | None = None) -> bytes:
    """A RIFF/WAVE header by hand (fields as a forger chooses them), its data chunk's size left 0."""
    align = channels * -(-bits // 8)
    average = rate * align if average is None else average
    fmt = struct.pack("<HHIIHH", tag, channels, rate, average, align, bits)
    return b"RIFF\xff\xff\xff\xffWAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data\x00\x00\x00\x00"


def upload_of(tmp_path, *files: tuple[str, bytes]) -> multipart.Upload:
    """A real Upload (parsed and spooled by ``multipart.receive``) of a transcription form."""
    body = b"".join(
        b'--BB\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n\r\n%s\r\n' % (name.encode(), data)
        for name, data in files
    )
    body = b'--BB\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n' + body + b"--BB--\r\n"
    blocks = [body[i : i + 1000] for i in range(0, len(body), 1000)]  # as a chunked body arrives: no length given
    return multipart.receive(blocks, "multipart/form-data; boundary=BB", limit=10**8, folder=tmp_path)


def seconds_of(tmp_path, *files: tuple[str, bytes]) -> int:
    with upload_of(tmp_path, *files) as upload:
        return estimate.audio_seconds(upload)


def test_the_lowest_bitrate_holds_any_audio_whose_rate_is_not_read(tmp_path):
    assert estimate.AUDIO_MIN_BYTES_PER_S == 250  # 2 kbps: below Speex's 2.15, AMR-NB's 4.75, Opus's 6, mp3's 8
    assert seconds_of(tmp_path, ("a.mp3", b"x" * 25_000)) == 100
    assert seconds_of(tmp_path, ("a.ogg", b"x" * 25_001)) == 101  # rounded up
    assert seconds_of(tmp_path, ("a.ogg", b"")) == 1  # an empty file still holds a second
    assert seconds_of(tmp_path, ("a.ogg", b"x" * 2500), ("b.ogg", b"x" * 2500)) == 20  # every file part
    with multipart.receive([b"--BB--\r\n"], "multipart/form-data; boundary=BB", limit=100, folder=tmp_path) as none:
        assert estimate.audio_seconds(none) == 0


def test_a_pcm_wav_is_held_at_its_own_rate(tmp_path):
    samples = b"\x00" * 96_000
    wav = wav_head() + samples  # 16 kHz 16-bit mono: 32,000 bytes a second
    assert seconds_of(tmp_path, ("speech.WAV", wav)) == 4  # 96,044 bytes: 3 s of samples and the header, up
    stereo = wav_head(channels=2, rate=48_000, bits=24) + samples  # 288,000 bytes a second
    assert seconds_of(tmp_path, ("a.wav", stereo)) == 1
    float_ext = wav_head(tag=0xFFFE, bits=32)[:-8]  # WAVE_FORMAT_EXTENSIBLE, float subformat
    fmt = float_ext[20:36] + struct.pack("<HHI", 22, 32, 4) + struct.pack("<H", 3) + estimate.GUID_TAIL
    ext = b"RIFF\0\0\0\0WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data\0\0\0\0" + b"\0" * 64_000
    assert seconds_of(tmp_path, ("a.wav", ext)) == 2  # 64,000 bytes a second, the header past 1 s
    listed = b"RIFF\0\0\0\0WAVE" + b"LIST\x03\0\0\0abc\0" + wav_head()[12:] + samples  # a chunk first (odd: padded)
    assert seconds_of(tmp_path, ("a.wav", listed)) == 4


def test_a_forged_wav_header_cannot_lower_the_hold_below_its_bytes(tmp_path):
    """An attacker's header: the fastest rate it claims is believed only up to studio PCM's; a
    slower one is longer audio and held so; anything that is not plain PCM read as decoders read
    it (or a name that says another format) falls back to the lowest bitrate."""
    size, floor = 1_536_000 * 3, -(-1_536_000 * 3 // 250)
    fast = wav_head(channels=8, rate=4_000_000, bits=32)
    assert seconds_of(tmp_path, ("a.wav", fast + b"\0" * (size - len(fast)))) == 3  # not 0.04 s
    slow = wav_head(channels=1, rate=1, bits=8)  # one byte a second: longer than any bitrate bound
    assert seconds_of(tmp_path, ("a.wav", slow + b"\0" * 956)) == 1000
    lying = wav_head(average=10**9)  # fields that disagree: the slowest
    assert seconds_of(tmp_path, ("a.wav", lying + b"\0" * 95_956)) == 3
    data = b"\0" * (size - 44)
    for name, head in [
        ("a.mp3", wav_head()),  # a WAV named as mp3: a decoder may read it as mp3
        ("a.wav", wav_head(tag=0x55, average=1000)),  # mp3 in WAV: its rate is a hint
        ("a.wav", wav_head(tag=0xFFFE)),  # extensible with no subformat
        ("a.wav", wav_head(rate=0)),
        ("a.wav", wav_head(bits=0)),
        ("a.wav", b"RIFF\0\0\0\0WAVE" + b"data\0\0\0\0" + wav_head()[12:]),  # samples before the format
        ("a.wav", b"RIFF\0\0\0\0WAVE" + b"fmt \xff\xff\xff\x0f" + wav_head()[20:]),  # a format past the header
        ("a.wav", b"RIFF\0\0\0\0WAVE" + b"fmt \x08\0\0\0" + wav_head()[20:]),  # a short format
        ("a.wav", b"RIFX" + wav_head()[4:]),  # big-endian
    ]:
        assert seconds_of(tmp_path, (name, (head + data)[:size])) == floor, (name, head[:40])


def test_a_header_of_many_chunks_is_not_walked_to_its_end(tmp_path):
    """The chunks before ``fmt `` are looked through only up to ``WAV_CHUNKS``: a crafted head of
    8,000 empty chunks per file part (255 parts in a 16 MB form) cost seconds of CPU under the
    GIL for every budget that priced the request. Past the bound, the lowest bitrate holds it."""
    junk = b"JUNK\0\0\0\0" * 8000
    crafted = b"RIFF\0\0\0\0WAVE" + junk + wav_head()[12:]
    size = len(crafted) + 32_000
    assert seconds_of(tmp_path, ("a.wav", crafted + b"\0" * 32_000)) == -(-size // estimate.AUDIO_MIN_BYTES_PER_S)
    few = b"RIFF\0\0\0\0WAVE" + b"JUNK\0\0\0\0" * (estimate.WAV_CHUNKS - 1) + wav_head()[12:]
    assert seconds_of(tmp_path, ("a.wav", few + b"\0" * 96_000)) == 4  # a few chunks first: read as before
    parts = [(f"{i}.wav", crafted) for i in range(255)]  # the most a form holds beside its model
    with upload_of(tmp_path, *parts) as upload:
        started = time.process_time()
        estimate.audio_seconds(upload)
        assert time.process_time() - started < 0.5  # 3.4 s on the review machine before the bound


def test_audio_is_priced_as_billing_prices_it(tmp_path, table):
    with upload_of(tmp_path, ("a.ogg", b"x" * 25_000)) as upload:  # 100 s
        ctx = ctx_for("transcriptions", {"model": "whisper-1"})
        ctx.upload = upload
        assert estimate.media_request_cost(ctx, table.lookup("whisper-1"), None, 4096) == 100 * 10_000
        mini = table.lookup("gpt-4o-mini-transcribe")  # $3 per 1M audio tokens, $5 output
        inputs = estimate.input_tokens(ctx) + 100 * estimate.AUDIO_TOKENS_PER_S
        assert estimate.media_request_cost(ctx, mini, None, 4096) == estimate.worst_case_cost(mini, inputs, 4096)
        assert estimate.worst_case_cost(mini, inputs, 4096) >= 2000 * 300 + 4096 * 500
        translation = ctx_for("translations", {"model": "whisper-1"})
        translation.upload = upload
        assert estimate.media_request_cost(translation, table.lookup("whisper-1"), None, 4096) == 100 * 10_000


def test_a_model_with_a_longest_audio_is_held_for_no_more(tmp_path, table):
    """gpt-4o(-mini)-transcribe take at most 1,500 s (the diarizing one 1,400 s): OpenAI refuses
    longer audio and bills nothing, so a large compressed upload holds that much, not its bytes'
    worth at the lowest bitrate; whisper-1 has no such limit."""
    with upload_of(tmp_path, ("a.mp3", b"x" * 1_000_000)) as upload:  # 4,000 s at 2 kbps
        ctx = ctx_for("transcriptions", {"model": "gpt-4o-mini-transcribe"})
        ctx.upload = upload
        mini = table.lookup("gpt-4o-mini-transcribe")
        text = estimate.input_tokens(ctx)
        for model, seconds in [
            ("gpt-4o-mini-transcribe", 1500),
            ("gpt-4o-mini-transcribe-2025-12-15", 1500),
            ("gpt-4o-transcribe", 1500),
            ("gpt-4o-transcribe-diarize", 1400),
            ("whisper-1", 4000),
        ]:
            held = estimate.media_request_cost(ctx, mini, None, 4096, model)
            assert held == estimate.worst_case_cost(mini, text + seconds * estimate.AUDIO_TOKENS_PER_S, 4096), model
        whisper = table.lookup("whisper-1")
        assert estimate.media_request_cost(ctx, whisper, None, 4096, "whisper-1") == 4000 * 10_000
    with upload_of(tmp_path, ("a.mp3", b"x" * 25_000)) as upload:  # 100 s: under the limit, as it is
        ctx.upload = upload
        held = estimate.media_request_cost(ctx, mini, None, 4096, "gpt-4o-transcribe")
        assert held == estimate.worst_case_cost(mini, text + 100 * estimate.AUDIO_TOKENS_PER_S, 4096)

"""Prices in the media endpoints' units: images, seconds, characters, audio/image input tokens."""

from __future__ import annotations

import pytest

from stockyard import estimate
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
    assert estimate.media_request_cost(whisper, table.lookup("whisper-1"), None, 4096) == 0  # length unknown
    assert estimate.media_request_cost(ctx_for("moderations", {}), None, None, 4096) == 0
    assert estimate.media_request_cost(ctx_for("speech", {"input": "x"}), None, None, 4096) is None

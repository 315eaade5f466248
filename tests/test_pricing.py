"""Pricing: exact integer money, longest-prefix lookup, provider usage shapes."""

from __future__ import annotations

import json
import pkgutil
import re
import subprocess
import sys
import zipfile
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockyard.estimate import worst_case_cost
from stockyard.pricing import (
    MODES,
    TOKEN_COUNTS,
    Price,
    PriceTable,
    Usage,
    cost_microcents,
    discounted_microcents,
    format_usd,
    microcents_from_usd,
    parse_usd_per_m,
    round_microcents,
)

PACKAGE = Path(__file__).resolve().parents[1] / "stockyard"


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def price(model: str, provider: str | None = None) -> Price:
    found = PriceTable.load().lookup(model, provider)
    assert found is not None, model
    return found


# --- parsing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2.50", 250_000_000),
        ("10", 1_000_000_000),
        ("0.075", 7_500_000),
        ("0.005", 500_000),
        ("0.00000001", 1),
        ("0", 0),
        (" 1.25 ", 125_000_000),
        ("1.100000000", 110_000_000),  # trailing zeros are still exact
    ],
)
def test_parse_usd_per_m(text: str, expected: int) -> None:
    result = parse_usd_per_m(text)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1", "negative"),
        ("NaN", "finite"),
        ("nan", "finite"),
        ("Infinity", "finite"),
        ("0.000000001", "more than 8 decimal places"),
        ("abc", "not a decimal number"),
        ("", "not a decimal number"),
        ("1/3", "not a decimal number"),
    ],
)
def test_parse_usd_per_m_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_usd_per_m(text)


@pytest.mark.parametrize("value", [2.5, 2, None])
def test_parse_rejects_non_strings(value: object) -> None:
    with pytest.raises(TypeError, match="decimal string"):
        parse_usd_per_m(value)  # type: ignore[arg-type]


def test_microcents_from_usd() -> None:
    assert microcents_from_usd("10") == 1_000_000_000
    assert microcents_from_usd("0.50") == 50_000_000
    assert microcents_from_usd("$5") == 500_000_000
    assert microcents_from_usd("0.00000001") == 1
    with pytest.raises(ValueError, match="negative"):
        microcents_from_usd("-3")
    with pytest.raises(ValueError, match="more than 8"):
        microcents_from_usd("0.000000005")


def test_format_usd() -> None:
    assert format_usd(0) == "$0.000000"
    assert format_usd(1) == "$0.00000001"
    assert format_usd(12_300) == "$0.000123"
    assert format_usd(123_456) == "$0.00123456"
    assert format_usd(1_000_000_000) == "$10.000000"
    assert format_usd(1_000_000_000, min_places=2) == "$10.00"
    assert format_usd(1_234_000_000, min_places=2) == "$12.34"
    assert format_usd(1, min_places=2) == "$0.00000001"
    assert format_usd(-50) == "-$0.0000005"
    assert format_usd(500_000_000, min_places=0) == "$5"
    with pytest.raises(TypeError):
        format_usd(1.0)  # type: ignore[arg-type]


# --- hand-computed costs -----------------------------------------------------


def test_plain_cost() -> None:
    # gpt-4o: 1000 in × $2.50/M + 500 out × $10/M = $0.0025 + $0.005 = $0.0075
    usage = Usage(prompt_tokens=1000, completion_tokens=500)
    assert cost_microcents(price("gpt-4o"), usage) == 750_000


def test_cached_cost() -> None:
    # gpt-4o-mini: 500 × 0.15 + 1500 × 0.075 + 100 × 0.60 (USD/M) = $0.0002475
    usage = Usage.from_openai(
        {
            "prompt_tokens": 2000,
            "completion_tokens": 100,
            "prompt_tokens_details": {"cached_tokens": 1500},
        }
    )
    assert usage == Usage(prompt_tokens=2000, completion_tokens=100, cached_tokens=1500)
    assert cost_microcents(price("gpt-4o-mini-2024-07-18"), usage) == 24_750


def test_anthropic_cache_write_cost() -> None:
    # sonnet 4.5: 100 × $3 + 3000 × $0.30 + 2000 × $3.75 + 50 × $15 (per M) = $0.00945
    usage = Usage.from_anthropic(
        {
            "input_tokens": 100,
            "cache_read_input_tokens": 3000,
            "cache_creation_input_tokens": 2000,
            "output_tokens": 50,
        }
    )
    assert usage == Usage(prompt_tokens=5100, completion_tokens=50, cached_tokens=3000, cache_write_tokens=2000)
    assert cost_microcents(price("claude-sonnet-4-5-20250929"), usage) == 945_000


def test_reasoning_billed_at_output_rate_by_default() -> None:
    # o3: 100 × $2 + 1000 × $8 (200 plain + 800 reasoning, same rate) = $0.0082
    usage = Usage.from_openai(
        {
            "prompt_tokens": 100,
            "completion_tokens": 1000,
            "completion_tokens_details": {"reasoning_tokens": 800},
        }
    )
    assert usage.reasoning_tokens == 800
    assert cost_microcents(price("o3-2025-04-16"), usage) == 820_000


def test_reasoning_with_its_own_rate() -> None:
    # sonar-deep-research: 1000 × $2 + 1000 × $8 + 2000 reasoning × $3 = $0.016
    p = price("sonar-deep-research", "perplexity")
    assert p.reasoning == 300_000_000
    usage = Usage(prompt_tokens=1000, completion_tokens=3000, reasoning_tokens=2000)
    assert cost_microcents(p, usage) == 1_600_000


def test_gemini_thoughts_are_output() -> None:
    # gemini-2.5-flash: 600 × $0.30 + 400 cached × $0.03 + (200 + 300 thoughts) × $2.50
    usage = Usage.from_gemini(
        {
            "promptTokenCount": 1000,
            "cachedContentTokenCount": 400,
            "candidatesTokenCount": 200,
            "thoughtsTokenCount": 300,
            "totalTokenCount": 1500,
        }
    )
    assert usage == Usage(prompt_tokens=1000, completion_tokens=500, cached_tokens=400, reasoning_tokens=300)
    assert cost_microcents(price("gemini-2.5-flash"), usage) == 144_200


def test_gemini_image_output_tokens_bill_at_the_image_rate() -> None:
    # gemini-2.5-flash-image: 10 × $0.30 input + 9 text × $2.50 + 1,290 image × $30 (one 1024px image)
    meta = {
        "promptTokenCount": 10,
        "candidatesTokenCount": 1299,
        "totalTokenCount": 1309,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 10}],
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],  # Google may list no TEXT
    }
    usage = Usage.from_gemini(meta)
    assert usage == Usage(prompt_tokens=10, completion_tokens=1299, media_output_tokens=1290)
    assert cost_microcents(price("gemini-2.5-flash-image"), usage) == 10 * 30 + 9 * 250 + 1290 * 3_000
    # gemini-3-pro-image-preview: thoughts at the text rate ($12), the 1K image's 1,120 at $120
    meta = {**meta, "candidatesTokenCount": 1120, "thoughtsTokenCount": 800}
    meta["candidatesTokensDetails"] = [{"modality": "IMAGE", "tokenCount": 1120}]
    usage = Usage.from_gemini(meta)
    assert (usage.completion_tokens, usage.reasoning_tokens, usage.media_output_tokens) == (1920, 800, 1120)
    assert cost_microcents(price("gemini-3-pro-image-preview"), usage) == 10 * 200 + 800 * 1_200 + 1120 * 12_000


def test_gemini_modality_counts_are_read_strictly() -> None:
    def media(details: object, candidates: int = 100) -> int:
        meta = {"candidatesTokenCount": candidates, "candidatesTokensDetails": details}
        return Usage.from_gemini(meta).media_output_tokens

    assert media([{"modality": "TEXT", "tokenCount": 60}, {"modality": "IMAGE", "tokenCount": 40}]) == 40
    assert media([{"modality": "AUDIO", "tokenCount": 30}, {"modality": "IMAGE", "tokenCount": 40}]) == 70
    assert media([{"modality": "IMAGE", "tokenCount": 500}]) == 100  # never more than the candidates
    assert media([{"modality": "IMAGE", "tokenCount": "40"}, {"modality": "image", "tokenCount": 9}]) == 0
    assert media({"modality": "IMAGE", "tokenCount": 40}) == media(None) == media(["IMAGE", 40]) == 0
    # no split: every output token at the output rate, as before
    plain = Usage(prompt_tokens=10, completion_tokens=1299)
    assert cost_microcents(price("gemini-2.5-flash-image"), plain) == 10 * 30 + 1299 * 250


def test_media_output_defaults_to_the_output_rate_and_weighs_in_the_worst_case() -> None:
    usage = Usage(completion_tokens=10, media_output_tokens=4)
    assert cost_microcents(Price.from_usd({"input": "1", "output": "2"}), usage) == 10 * 200
    image = Price.from_usd({"input": "1", "output": "2", "media_output": "30"})
    assert cost_microcents(image, usage) == 6 * 200 + 4 * 3_000
    assert worst_case_cost(image, 10, 100) == 10 * 100 + 100 * 3_000  # every output token may be an image's


def test_one_token_on_cheapest_rates_is_exact_and_nonzero(table: PriceTable) -> None:
    assert cost_microcents(price("gpt-5-nano"), Usage(prompt_tokens=1)) == 5
    assert cost_microcents(price("text-embedding-3-small"), Usage(prompt_tokens=1)) == 2
    # one cached gpt-5-nano token is exactly 0.5 µ¢: half rounds up to 1
    assert cost_microcents(price("gpt-5-nano"), Usage(prompt_tokens=1, cached_tokens=1)) == 1
    for key, p in table.entries():
        for field in ("input", "cached_input", "cache_write", "output"):
            if getattr(p, field):
                one = {
                    "input": Usage(prompt_tokens=1),
                    "cached_input": Usage(prompt_tokens=1, cached_tokens=1),
                    "cache_write": Usage(prompt_tokens=1, cache_write_tokens=1),
                    "output": Usage(completion_tokens=1),
                }[field]
                assert cost_microcents(p, one) >= 1, (key, field)


def test_rounding_is_half_up_once_and_never_zero_for_nonzero() -> None:
    assert round_microcents(0) == 0
    assert round_microcents(1) == 1  # 10⁻⁶ µ¢ still costs something
    assert round_microcents(1_499_999) == 1
    assert round_microcents(1_500_000) == 2
    assert round_microcents(2_500_000) == 3  # half up, not to even
    assert round_microcents(3_000_000) == 3


def test_a_discounted_sum_is_rounded_once_half_up() -> None:
    assert discounted_microcents(3_000_000, (1, 2)) == 2  # 1.5 µ¢ → 2
    assert discounted_microcents(2_999_999, (1, 2)) == 1
    assert discounted_microcents(1, (1, 2)) == 1  # half of a sliver still costs something
    assert discounted_microcents(0, (1, 2)) == 0
    assert discounted_microcents(4_000_000, (3, 4)) == 3


def test_inconsistent_usage_never_goes_negative() -> None:
    p = Price(input=100, cached_input=10, cache_write=200, output=1000)
    usage = Usage(prompt_tokens=5, cached_tokens=10, completion_tokens=1, reasoning_tokens=3)
    # parts are billed as reported; the remainders clamp at zero
    assert cost_microcents(p, usage) == round_microcents(10 * 10 + 3 * 1000)


# --- usage shapes --------------------------------------------------------------


def test_openai_responses_api_shape() -> None:
    usage = Usage.from_openai(
        {
            "input_tokens": 100,
            "input_tokens_details": {"cached_tokens": 40},
            "output_tokens": 60,
            "output_tokens_details": {"reasoning_tokens": 20},
            "total_tokens": 160,
        }
    )
    assert usage == Usage(prompt_tokens=100, completion_tokens=60, cached_tokens=40, reasoning_tokens=20)


def test_openai_shape_with_reasoning_outside_completion() -> None:
    # xAI: completion_tokens leaves reasoning out; total_tokens gives it away
    usage = Usage.from_openai(
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 315,
            "completion_tokens_details": {"reasoning_tokens": 300},
        }
    )
    assert usage == Usage(prompt_tokens=10, completion_tokens=305, reasoning_tokens=300)


def test_deepseek_cache_hits() -> None:
    usage = Usage.from_openai(
        {
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "prompt_cache_hit_tokens": 80,
            "prompt_cache_miss_tokens": 20,
        }
    )
    assert usage.cached_tokens == 80
    # 20 × $0.28 + 80 × $0.028 + 10 × $0.42 (per M) = $0.00001204 = 560 + 224 + 420 µ¢
    assert cost_microcents(price("deepseek-chat"), usage) == 1204


def test_usage_helpers_tolerate_missing_and_null() -> None:
    assert Usage.from_openai(None) == Usage()
    assert Usage.from_openai({"prompt_tokens": None, "prompt_tokens_details": None}) == Usage()
    assert Usage.from_anthropic({"input_tokens": 7, "cache_read_input_tokens": None}) == Usage(prompt_tokens=7)
    assert Usage.from_gemini({}) == Usage()
    assert Usage.from_gemini({"promptTokenCount": 5, "toolUsePromptTokenCount": 3}) == Usage(prompt_tokens=8)


def test_usage_rejects_bad_counts() -> None:
    with pytest.raises(ValueError):
        Usage(prompt_tokens=-1)
    with pytest.raises(ValueError):
        Usage(prompt_tokens=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Price(input=1, cached_input=1, cache_write=1, output=True)  # type: ignore[arg-type]


# --- lookup ----------------------------------------------------------------


def test_longest_prefix_with_dated_names(table: PriceTable) -> None:
    mini, full = table.lookup("gpt-4o-mini"), table.lookup("gpt-4o")
    assert mini is not None and full is not None and mini != full
    assert table.lookup("gpt-4o-mini-2024-07-18") == mini
    assert table.lookup("gpt-4o-2024-08-06") == full
    assert table.lookup("gpt-4o-2024-05-13").input == 500_000_000  # older, dearer snapshot
    assert table.lookup("claude-opus-4-20250514") == table.lookup("claude-opus-4")
    assert table.lookup("claude-opus-4-1-20250805") == table.lookup("claude-opus-4-1")
    assert table.lookup("claude-opus-4-5-20251101").input == 500_000_000
    assert table.lookup("claude-3-5-haiku-latest") == table.lookup("claude-3-5-haiku")
    assert table.lookup("claude-haiku-4-5@20251001") == table.lookup("claude-haiku-4-5")
    assert table.lookup("gemini-2.5-flash-lite-preview-06-17") == table.lookup("gemini-2.5-flash-lite")
    assert table.lookup("gemini-2.5-flash-lite") != table.lookup("gemini-2.5-flash")
    assert table.lookup("grok-4-0709") == table.lookup("grok-4")
    assert table.lookup("grok-4-fast-reasoning") == table.lookup("grok-4-fast")


def test_new_versions_are_not_guessed(table: PriceTable) -> None:
    # a prefix followed by a small version number is another model: unknown, not guessed
    assert table.lookup("claude-opus-4-9") is None
    assert table.lookup("gpt-5.9") is None
    assert table.lookup("gpt-4") is None
    assert table.lookup("gpt-4o1") is None  # no boundary after "gpt-4o"
    assert table.lookup("grok-4-1-fast") is None


def test_a_name_that_only_starts_like_a_priced_model_is_unknown(table: PriceTable) -> None:
    # a served model echoed back by a provider was priced as a shorter neighbour
    assert table.lookup('gpt-4o-mini"><svg onload=alert(1)>') is None
    assert table.lookup("gpt-4o-mini-search-preview") is None  # a variant, not gpt-4o-mini
    assert table.lookup("gpt-4o-audio-preview") is None
    assert table.lookup("gpt-4o-realtime-preview-2024-12-17") is None
    assert table.lookup("claude-sonnet-4-5-evil") is None
    assert table.lookup("gemini-2.5-flash-plain") is None
    assert table.lookup("gpt-4o-mini-2024-07-18x") is None  # a snapshot suffix must end the name
    assert table.lookup("gpt-4o-mini-2024-07-18-2024-07-18") is None
    assert table.lookup("gpt-4o-mini", "groq") == table.lookup("gpt-4o-mini")  # bare entries still apply


@pytest.mark.parametrize(
    ("model", "priced_as"),
    [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-haiku-4-5@20251001", "claude-haiku-4-5"),
        ("grok-4-0709", "grok-4"),
        ("codestral-2508", "codestral"),
        ("gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("gemini-2.5-flash-lite-preview-06-17", "gemini-2.5-flash-lite"),
    ],
)
def test_dated_snapshots_take_their_models_price(table: PriceTable, model: str, priced_as: str) -> None:
    assert table.lookup(model) is not None and table.lookup(model) == table.lookup(priced_as)


def test_case_insensitive_and_gemini_models_prefix(table: PriceTable) -> None:
    assert table.lookup("GPT-4o-Mini-2024-07-18") == table.lookup("gpt-4o-mini")
    assert table.lookup("models/gemini-2.5-pro") == table.lookup("gemini-2.5-pro")
    assert table.lookup(" claude-sonnet-4-5 ", "ANTHROPIC") == table.lookup("claude-sonnet-4-5")


def test_unknown_model_is_none(table: PriceTable) -> None:
    assert table.lookup("no-such-model") is None
    assert table.lookup("") is None
    assert table.lookup("llama-3.3-70b-versatile", "together") is None


def test_provider_qualified_entries(table: PriceTable) -> None:
    groq = table.lookup("llama-3.3-70b-versatile", "groq")
    assert groq is not None and groq.input == 59_000_000
    assert table.lookup("groq/llama-3.3-70b-versatile") == groq
    assert table.lookup("llama-3.3-70b-versatile") is None  # only Groq prices it
    assert table.lookup("Meta-Llama/Llama-3.3-70B-Instruct-Turbo", "together").input == 88_000_000
    assert table.lookup("llama3.3:70b", "ollama") == Price(0, 0, 0, 0)


def test_provider_qualified_preferred_over_bare() -> None:
    bare = Price(input=1, cached_input=1, cache_write=1, output=1)
    groq = Price(input=2, cached_input=2, cache_write=2, output=2)
    # "groq/foo" no longer prices "foo-bar-2025" (a prefix is not the same model),
    # so the provider entry is "groq/foo-bar", of which "foo-bar-2025" is a dated snapshot
    t = PriceTable({"foo-bar-2025": bare, "groq/foo-bar": groq})
    assert t.lookup("foo-bar-2025", "groq") == groq  # provider entry first, even over an exact bare one
    assert t.lookup("foo-bar-2025") == bare
    assert t.lookup("foo-bar-2025", "mistral") == bare
    assert t.lookup("groq/foo-bar") == groq


def test_provider_named_in_model_falls_back_to_bare(table: PriceTable) -> None:
    # OpenRouter-style "vendor/model": explicit entry, else the vendor's list price
    assert table.lookup("anthropic/claude-sonnet-4.5", "openrouter").output == 1_500_000_000
    assert table.lookup("openai/gpt-4.1-mini", "openrouter") == table.lookup("gpt-4.1-mini")
    assert table.lookup("google/gemini-2.5-pro", "openrouter") == table.lookup("gemini-2.5-pro")


def test_overrides_replace_and_add() -> None:
    mine = Price(input=7, cached_input=7, cache_write=7, output=7)
    t = PriceTable.load({"gpt-4o": mine, "acme/house-model": mine})
    shipped = PriceTable.load().lookup("gpt-4o-2024-08-06")
    assert shipped is not None  # the shipped ceiling and modes (priority's multiple) kept:
    assert t.lookup("gpt-4o-2024-08-06") == replace(mine, max_output_tokens=16_384, modes=shipped.modes)
    assert t.lookup("gpt-4o-mini") != mine
    assert t.lookup("acme/house-model") == mine
    assert ("acme/house-model", mine) in t.entries()
    # the packaged table is parsed once per process: an override never leaks into the next load
    again = PriceTable.load()
    assert again.lookup("gpt-4o") == PriceTable.from_json(
        pkgutil.get_data("stockyard", "data/prices.json") or b""
    ).lookup("gpt-4o")
    assert again.lookup("gpt-4o") != mine and again.lookup("acme/house-model") is None


def test_entries_sorted_and_round_trip(table: PriceTable) -> None:
    keys = [k for k, _ in table.entries()]
    assert keys == sorted(keys)
    assert "groq/llama-3.3-70b-versatile" in keys
    assert PriceTable(dict(table.entries())).entries() == table.entries()


# --- the packaged data file --------------------------------------------------


def _raw() -> dict:
    def no_floats(text: str) -> None:
        raise AssertionError(f"JSON float {text} in prices.json: prices must be strings")

    return json.loads((PACKAGE / "data" / "prices.json").read_text(), parse_float=no_floats)


def test_data_file_shape(table: PriceTable) -> None:
    doc = _raw()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", doc["checked"])
    assert table.checked == doc["checked"]
    assert doc["unit"] == "USD per 1M tokens"
    for key, rates in doc["models"].items():
        assert key == key.strip().lower(), key
        for name in TOKEN_COUNTS:  # token counts, not rates
            count = rates.pop(name, None)
            assert count is None or (type(count) is int and count > 0), key
        change = rates.pop("changes", None)
        if change is not None:  # a dated change: a day, then rates as strings
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", change.pop("on")) and all(
                isinstance(v, str) for v in change.values()
            )
        modes = rates.pop("modes", None)
        if modes is not None:  # each mode's multiple of every rate, as a decimal string
            assert set(modes) <= set(MODES) and all(isinstance(v, str) for v in modes.values()), key
        tier = rates.pop("long_context", None)
        if tier is not None:  # a prompt-length tier: a threshold, then rates as strings, each dearer
            assert type(tier.pop("above")) is int and all(isinstance(v, str) for v in tier.values()), key
            assert all(Decimal(v) >= Decimal(rates.get(n, rates["input"])) for n, v in tier.items()), key
        assert all(isinstance(v, str) for v in rates.values()), key
        assert {"input", "output"} <= set(rates), key
        if "reasoning" in rates:
            assert rates["reasoning"] != rates["output"], key


# Cache reads below Anthropic's usual tenth of the input rate: Opus and Sonnet 5.5 read at 0.05x
# (Sonnet 5.5's since its cut of 2026-10-07), Fable and Mythos 5.1 and Fable 5.2 at 0.025x.
CHEAP_CACHE_READS = {
    "claude-opus-5-5": 20,
    "claude-sonnet-5-5": 20,
    "claude-fable-5-1": 40,
    "claude-mythos-5-1": 40,
    "claude-fable-5-2": 40,
}


def test_anthropic_cache_multipliers(table: PriceTable) -> None:
    for key, p in table.entries():
        # Haiku 3 predates the rule: Anthropic lists $0.30 write / $0.03 read on $0.25
        if key.startswith("claude-") and key != "claude-3-haiku":
            for rates in filter(None, (p, p.long_context)):
                assert rates.cache_write * 4 == rates.input * 5, key  # 1.25 × input
                assert rates.cached_input * CHEAP_CACHE_READS.get(key, 10) == rates.input, key  # 0.1 × input


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("gpt-4o", None),
        ("gpt-4o-mini", None),
        ("gpt-4.1", None),
        ("gpt-4.1-mini", None),
        ("gpt-4.1-nano", None),
        ("o1", None),
        ("o3", None),
        ("o3-mini", None),
        ("o4-mini", None),
        ("gpt-5", None),
        ("gpt-5-mini", None),
        ("gpt-5-nano", None),
        ("text-embedding-3-small", None),
        ("text-embedding-3-large", None),
        ("claude-3-5-haiku-20241022", None),
        ("claude-3-7-sonnet-20250219", None),
        ("claude-sonnet-4-20250514", None),
        ("claude-opus-4-20250514", None),
        ("claude-sonnet-4-5-20250929", None),
        ("claude-haiku-4-5-20251001", None),
        ("claude-opus-4-1-20250805", None),
        ("claude-opus-4-5-20251101", None),
        ("claude-opus-5-5", None),
        ("claude-sonnet-5-5", None),
        ("claude-haiku-5-5", None),
        ("claude-fable-5-2", None),
        ("gpt-5.5-2026-04-23", None),
        ("gpt-5.4-mini-2026-03-17", None),
        ("gpt-5.2-2025-12-11", None),
        ("gpt-6.2-sol", None),
        ("gpt-6-luna", None),
        ("gemini-3-pro-preview", None),
        ("gemini-3.1-pro-preview", None),
        ("gemini-4-argon", None),
        ("gemini-2.0-flash", None),
        ("gemini-2.5-flash", None),
        ("gemini-2.5-pro", None),
        ("gemini-2.5-flash-lite", None),
        ("llama-3.3-70b-versatile", "groq"),
        ("llama-3.1-8b-instant", "groq"),
        ("mistral-large-latest", "mistral"),
        ("mistral-small-2506", "mistral"),
        ("codestral-2508", "mistral"),
        ("codestral-latest", "mistral"),
        ("deepseek-chat", "deepseek"),
        ("deepseek-reasoner", "deepseek"),
        ("grok-3", "xai"),
        ("grok-4", "xai"),
        ("sonar", "perplexity"),
        ("sonar-pro", "perplexity"),
    ],
)
def test_required_models_are_priced(table: PriceTable, model: str, provider: str | None) -> None:
    assert table.lookup(model, provider) is not None


def test_load_works_from_a_zip(tmp_path: Path) -> None:
    archive = tmp_path / "app.pyz"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("stockyard/__init__.py", "")
        zf.write(PACKAGE / "pricing.py", "stockyard/pricing.py")
        zf.write(PACKAGE / "memo.py", "stockyard/memo.py")  # its one import of the package
        zf.write(PACKAGE / "data" / "prices.json", "stockyard/data/prices.json")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from stockyard.pricing import PriceTable;"
        "t = PriceTable.load(); assert 'zip' in type(sys.modules['stockyard'].__loader__).__name__.lower();"
        "print(t.lookup('gpt-4o').input)"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code, str(archive)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "250000000"


# --- properties --------------------------------------------------------------

counts = st.integers(min_value=0, max_value=10**8)
rates = st.integers(min_value=0, max_value=10**12)  # up to $10,000 per 1M tokens
prices = st.builds(
    Price,
    input=rates,
    cached_input=rates,
    cache_write=rates,
    output=rates,
    reasoning=st.none() | rates,
)
KINDS = ("uncached", "cached", "write", "plain", "reasoning")


def make_usage(uncached: int, cached: int, write: int, plain: int, reasoning: int) -> Usage:
    """Usage from independent parts (each part can grow without shrinking another)."""
    return Usage(
        prompt_tokens=uncached + cached + write,
        completion_tokens=plain + reasoning,
        cached_tokens=cached,
        cache_write_tokens=write,
        reasoning_tokens=reasoning,
    )


def exact_cost(p: Price, parts: dict[str, int]) -> Fraction:
    reasoning_rate = p.output if p.reasoning is None else p.reasoning
    return Fraction(
        parts["uncached"] * p.input
        + parts["cached"] * p.cached_input
        + parts["write"] * p.cache_write
        + parts["plain"] * p.output
        + parts["reasoning"] * reasoning_rate,
        10**6,
    )


parts_strategy = st.fixed_dictionaries({k: counts for k in KINDS})


@given(prices, parts_strategy, st.sampled_from(KINDS), st.integers(min_value=0, max_value=10**6))
def test_cost_is_monotonic_in_each_kind(p: Price, parts: dict[str, int], kind: str, more: int) -> None:
    before = cost_microcents(p, make_usage(**parts))
    after = cost_microcents(p, make_usage(**{**parts, kind: parts[kind] + more}))
    assert type(before) is int and type(after) is int
    assert after >= before


@given(prices, parts_strategy)
def test_cost_is_exact_within_one_rounding(p: Price, parts: dict[str, int]) -> None:
    cost = cost_microcents(p, make_usage(**parts))
    exact = exact_cost(p, parts)
    assert type(cost) is int
    if 0 < exact < Fraction(1, 2):
        assert cost == 1
    else:
        assert abs(cost - exact) <= Fraction(1, 2)
        assert cost - exact != Fraction(-1, 2)  # half rounds up


@given(prices, parts_strategy)
def test_cost_equals_sum_of_kinds_within_rounding(p: Price, parts: dict[str, int]) -> None:
    total = cost_microcents(p, make_usage(**parts))
    singles = [cost_microcents(p, make_usage(**{k: (parts[k] if k == kind else 0) for k in KINDS})) for kind in KINDS]
    assert all(type(x) is int for x in singles)
    # each rounding is off by less than 1 µ¢; one total vs five parts: under 6
    assert abs(total - sum(singles)) <= 5


@given(st.integers(min_value=0, max_value=10**16))
def test_usd_text_round_trip(microcents: int) -> None:
    text = format_usd(microcents)
    back = microcents_from_usd(text)
    assert back == microcents and type(back) is int
    assert parse_usd_per_m(text.removeprefix("$")) == microcents
    if microcents:
        assert set(text) - set("$0.") != set()  # a non-zero amount never reads as zero


@given(
    st.fixed_dictionaries(
        {
            "prompt_tokens": counts,
            "completion_tokens": counts,
            "prompt_tokens_details": st.fixed_dictionaries({"cached_tokens": counts}),
            "completion_tokens_details": st.fixed_dictionaries({"reasoning_tokens": counts}),
        }
    )
)
def test_from_openai_is_always_consistent(raw: dict) -> None:
    usage = Usage.from_openai(raw)
    assert usage.cached_tokens <= usage.prompt_tokens
    assert usage.reasoning_tokens <= usage.completion_tokens
    assert all(type(v) is int for v in vars(usage).values())


def test_a_models_token_counts_are_parsed_checked_and_kept_by_an_override() -> None:
    """max_output_tokens (what a request without a cap may be answered with) and
    image_input_tokens are positive whole numbers; an operator's rate override keeps the shipped
    counts, since it changes only rates."""
    table = PriceTable.load()
    assert table.lookup("gpt-5", "openai").max_output_tokens == 128_000
    assert table.lookup("claude-sonnet-4-5", "anthropic").max_output_tokens is None  # the cap is sent
    for name in ("max_output_tokens", "image_input_tokens"):
        for bad in (0, -1, "128000", 1.5, True):
            with pytest.raises(ValueError, match=name):
                Price.from_usd({"input": "1", "output": "2", name: bad})
    override = Price.from_usd({"input": "1", "output": "2"})
    assert PriceTable.load({"gpt-5": override}).lookup("gpt-5", "openai").max_output_tokens == 128_000
    kept = PriceTable.load({"gpt-4o-mini": override}).lookup("gpt-4o-mini", "openai")
    assert (kept.max_output_tokens, kept.image_input_tokens, kept.input) == (16_384, 48_169, 100_000_000)
    mine = Price.from_usd({"input": "1", "output": "2", "max_output_tokens": 500})
    assert PriceTable.load({"gpt-5": mine}).lookup("gpt-5", "openai").max_output_tokens == 500


# -- prompt-length tiers (long_context) ------------------------------------------------------------

TIERED = {  # Claude Haiku 5.5's shape: 5x every rate above 100k prompt tokens
    "input": "0.10",
    "cached_input": "0.01",
    "cache_write": "0.125",
    "output": "0.50",
    "long_context": {
        "above": 100_000,
        "input": "0.50",
        "cached_input": "0.05",
        "cache_write": "0.625",
        "output": "2.50",
    },
}


def test_a_prompt_above_the_tier_bills_every_token_at_the_tier_rates() -> None:
    """Was: one rate whatever the prompt's length, so a long Gemini 2.5 Pro or Haiku 5.5 prompt
    cost half or a fifth of what the provider bills."""
    price = Price.from_usd(TIERED)
    at = Usage(prompt_tokens=100_000, completion_tokens=1_000)
    assert cost_microcents(price, at) == 100_000 * 10_000_000 // 10**6 + 1_000 * 50_000_000 // 10**6
    above = Usage(prompt_tokens=100_001, completion_tokens=1_000)  # output at the tier's rate too
    assert cost_microcents(price, above) == (100_001 * 50_000_000 + 1_000 * 250_000_000) // 10**6
    # Anthropic: cache reads and writes are part of the prompt that crosses the threshold
    usage = Usage.from_anthropic({"input_tokens": 1, "cache_read_input_tokens": 100_000, "output_tokens": 10})
    assert usage.prompt_tokens == 100_001
    assert cost_microcents(price, usage) == round_microcents(1 * 50_000_000 + 100_000 * 5_000_000 + 10 * 250_000_000)


def test_the_worst_case_holds_the_tier_rates_above_the_threshold() -> None:
    price = Price.from_usd(TIERED)
    assert worst_case_cost(price, 100_000, 10) == -(-(100_000 * 12_500_000 + 10 * 50_000_000) // 10**6)
    assert worst_case_cost(price, 100_001, 10) == -(-(100_001 * 62_500_000 + 10 * 250_000_000) // 10**6)


@pytest.mark.parametrize(
    "tier",
    [
        {"input": "1", "output": "2"},  # no threshold
        {"above": 0, "input": "1", "output": "2"},
        {"above": "100000", "input": "1", "output": "2"},
        {"above": True, "input": "1", "output": "2"},
        {"above": 10, "input": "1", "output": "2", "unit": "image"},
        {"above": 10, "input": "1", "output": "2", "max_output_tokens": 5},
        {"above": 10, "input": "1", "output": "2", "long_context": {"above": 20, "input": "1", "output": "2"}},
        {"above": 10, "output": "2"},  # no input rate
        [],
    ],
)
def test_a_malformed_tier_is_refused(tier) -> None:
    with pytest.raises((ValueError, TypeError, KeyError)):
        Price.from_usd({"input": "1", "output": "2", "long_context": tier})


def test_an_override_replaces_a_shipped_tier_with_its_own_flat_rates() -> None:
    doc = json.dumps({"models": {"tiered-model": TIERED}})
    mine = Price(input=7, cached_input=7, cache_write=7, output=7)
    assert PriceTable.from_json(doc).lookup("tiered-model").long_context is not None
    overridden = PriceTable.from_json(doc, {"tiered-model": mine}).lookup("tiered-model")
    assert overridden == mine and overridden.long_context is None


def test_the_lookup_memo_keeps_no_long_names(table: PriceTable) -> None:
    """Was: every name looked up was remembered, however long (up to 10,000 of them)."""
    for i in range(50):
        assert table.lookup(f"gpt-4o-mini-{'x' * 100_000}{i}") is None
    assert all(len(model) <= 256 for model, _ in table._memo)


def test_openai_cache_writes_are_billed_at_the_write_rates() -> None:
    """Was: GPT-5.6 and later report the prompt tokens they wrote to the cache
    (``input_tokens_details.cache_write_tokens``, 12-hour ones apart) and bill them above the
    input rate; Stockyard billed them as plain input."""
    price = Price.from_usd(
        {"input": "2.00", "cached_input": "0.10", "cache_write": "2.50", "cache_write_long": "5.00", "output": "10.00"}
    )
    details = {
        "cached_tokens": 1_000,
        "cache_write_tokens": 3_000,
        "cache_write_tokens_details": {"ttl_12h_tokens": 1_000},
    }
    usage = Usage.from_openai(
        {"input_tokens": 10_000, "input_tokens_details": details, "output_tokens": 100, "total_tokens": 10_100}
    )
    assert (usage.cached_tokens, usage.cache_write_tokens, usage.cache_write_long_tokens) == (1_000, 3_000, 1_000)
    fresh, cached, short, long, out = 6_000, 1_000, 2_000, 1_000, 100
    expected = (
        fresh * 200_000_000 + cached * 10_000_000 + short * 250_000_000 + long * 500_000_000 + out * 1_000_000_000
    )
    assert cost_microcents(price, usage) == round_microcents(expected)
    chat = Usage.from_openai(
        {
            "prompt_tokens": 10,
            "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 9},
        }
    )
    assert chat.cache_write_tokens == 2  # never more than the prompt leaves after its cache reads
    # without a shipped long-write rate, Anthropic's rule: twice the input rate
    assert cost_microcents(Price.from_usd({"input": "1", "output": "1"}), Usage(10, 0, 0, 10, 0, 0, 10)) == 2_000


@pytest.mark.parametrize(
    ("model", "prompt", "output", "usd"),
    [
        # as each provider states its tier: every token of a request above the threshold at the tier's rates
        ("claude-haiku-5-5", 100_000, 1_000, "0.0105"),  # $0.10 / $0.50 up to 100k
        ("claude-haiku-5-5", 100_001, 1_000, "0.0525005"),  # $0.50 / $2.50 above
        ("gemini-2.5-pro", 200_001, 1_000, "0.5150025"),  # $2.50 / $15 above 200k
        ("gemini-3-pro-preview", 200_000, 1_000, "0.412"),  # $2 / $12 up to 200k
        ("gemini-3-pro-preview", 200_001, 1_000, "0.818004"),  # $4 / $18 above 200k
        ("gpt-5.5", 272_001, 1_000, "2.76501"),  # $10 / $45 above 272k
        ("claude-sonnet-4-5", 200_001, 1_000, "1.222506"),  # the 1M-context beta: $6 / $22.50 above 200k
    ],
)
def test_shipped_long_context_tiers(table: PriceTable, model: str, prompt: int, output: int, usd: str) -> None:
    price = table.lookup(model)
    assert price is not None
    assert cost_microcents(price, Usage(prompt_tokens=prompt, completion_tokens=output)) == microcents_from_usd(usd)


# -- dated price changes (an introductory price that ends) ------------------------------------------

DATED = {"input": "0.75", "cached_input": "0.075", "output": "3.75", "max_output_tokens": 65536}
DATED["changes"] = {"on": "2027-01-01", "input": "1.50", "cached_input": "0.15", "output": "7.50"}


def test_a_dated_change_prices_requests_from_its_day_on() -> None:
    """Gemini 3.8 Flash's introductory price ends on 2027-01-01: a table without dates is wrong on
    one side of that day."""
    price = Price.from_usd(DATED)
    new_year = 1_798_761_600_000  # 2027-01-01T00:00:00Z
    assert price.changes_on_ms == new_year
    assert price.current(new_year - 1).input == parse_usd_per_m("0.75")
    after = price.current(new_year)
    assert (after.input, after.output, after.max_output_tokens) == (150_000_000, 750_000_000, 65536)
    doc = json.dumps({"models": {"dated": DATED}})
    assert PriceTable.from_json(doc).lookup("dated") == price.current()  # today's side of the change


@pytest.mark.parametrize(
    "change",
    [
        {"input": "1", "output": "2"},  # no day
        {"on": "2027-1-1", "input": "1", "output": "2"},
        {"on": "2027-02-30", "input": "1", "output": "2"},
        {"on": 20270101, "input": "1", "output": "2"},
        {"on": "2027-01-01", "input": "1", "output": "2", "changes": {"on": "2028-01-01", "input": "3", "output": "4"}},
        {"on": "2027-01-01", "input": "1", "output": "2", "unit": "image"},
        {"on": "2027-01-01", "output": "2"},
        "2027-01-01",
    ],
)
def test_a_malformed_change_is_refused(change) -> None:
    with pytest.raises((ValueError, TypeError, KeyError)):
        Price.from_usd({"input": "1", "output": "2", "changes": change})


def test_prices_list_shows_a_change_still_to_come(table: PriceTable) -> None:
    from stockyard.operations.prices import list_prices
    from stockyard.store import db

    conn = db.connect(":memory:")
    db.migrate(conn)
    row = next(r for r in list_prices(conn) if r["model"] == "gemini-3.8-flash")
    now = table.lookup("gemini-3.8-flash")
    assert now is not None and row["input_uc"] == now.input
    if now.changed is not None:  # before 2027-01-01
        assert row["changes"] == {"on": "2027-01-01", "usd_per_1m": row["changes"]["usd_per_1m"], "long_context": None}
        assert row["changes"]["usd_per_1m"]["input"] == "$1.50"
    else:
        assert row["changes"] is None


def test_a_change_must_restate_a_tier() -> None:
    """Else the tiered model's long prompts would be billed flat from the change's day on."""
    tiered = {**TIERED, "changes": {"on": "2027-01-01", "input": "0.20", "output": "1.00"}}
    with pytest.raises(ValueError, match="long_context"):
        Price.from_usd(tiered)
    restated = {**tiered, "changes": {**tiered["changes"], "long_context": {**TIERED["long_context"]}}}
    assert Price.from_usd(restated).changed.long_context is not None


def test_realtime_usage_bills_text_audio_and_cached_audio_at_their_rates():
    """A Realtime response.done's usage: uncached text and audio input, cached text and cached audio
    (gpt-realtime-mini caches audio at $0.30, text at $0.06 per 1M), text and audio output."""
    usage = Usage.from_realtime(
        {
            "input_tokens": 300,
            "output_tokens": 320,
            "input_token_details": {
                "text_tokens": 100,
                "audio_tokens": 200,
                "cached_tokens": 90,
                "cached_tokens_details": {"text_tokens": 40, "audio_tokens": 50},
            },
            "output_token_details": {"text_tokens": 20, "audio_tokens": 300},
        }
    )
    counts = (usage.prompt_tokens, usage.cached_tokens, usage.media_tokens, usage.media_cached_tokens)
    assert counts == (300, 90, 150, 50)
    assert usage.media_output_tokens == 300
    price = PriceTable.load().lookup("gpt-realtime-mini-2025-10-06")
    assert price is not None
    usd = Fraction(60 * 60 + 150 * 1000 + 40 * 6 + 50 * 30 + 20 * 240 + 300 * 2000, 100) / 1_000_000
    assert cost_microcents(price, usage) == round(usd * 10**8)
    assert Usage.from_realtime(None) == Usage()


def test_realtime_image_input_billed_at_the_image_rates():
    """Image input tokens, uncached and cached, at the model's image rates (gpt-realtime-2.1-mini:
    $0.80 and $0.08 per 1M), not its audio ones ($10, $0.30); a model without an image price (an
    operator's override) bills them at its text input rates."""
    usage = Usage.from_realtime(
        {
            "input_tokens": 1300,
            "output_tokens": 20,
            "input_token_details": {
                "text_tokens": 100,
                "audio_tokens": 200,
                "image_tokens": 1000,
                "cached_tokens": 450,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 50, "image_tokens": 400},
            },
            "output_token_details": {"text_tokens": 20, "audio_tokens": 0},
        }
    )
    assert (usage.media_tokens, usage.image_tokens, usage.media_cached_tokens, usage.image_cached_tokens) == (
        750,
        600,
        450,
        400,
    )
    price = PriceTable.load().lookup("gpt-realtime-2.1-mini")
    assert price is not None
    usd = Fraction(100 * 60 + 150 * 1000 + 600 * 80 + 50 * 30 + 400 * 8 + 20 * 240, 100) / 1_000_000
    assert cost_microcents(price, usage) == round(usd * 10**8)
    plain = Price.from_usd({"input": "0.60", "cached_input": "0.06", "output": "2.40", "media_input": "10.00"})
    usd = Fraction(100 * 60 + 150 * 1000 + 600 * 60 + 50 * 6 + 400 * 6 + 20 * 240, 100) / 1_000_000
    assert cost_microcents(plain, usage) == round(usd * 10**8)

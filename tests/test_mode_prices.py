"""The price table's modes: OpenAI's priority and flex tiers, Claude's fast mode and US-only
inference, each an exact multiple of a model's rates (``Price.modes``) that reproduces the
providers' published prices to the µ¢; a mode whose price is not published is unpriced (None)."""

from __future__ import annotations

import pytest

from stockyard.pricing import Price, PriceTable, Usage, cost_microcents, parse_usd_per_m


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def rates(price: Price | None) -> tuple[int, int, int, int] | None:
    return None if price is None else (price.input, price.cached_input, price.cache_write, price.output)


def usd(*prices: str) -> tuple[int, ...]:
    return tuple(parse_usd_per_m(p) for p in prices)


def kind_of(model: str) -> str:
    """The kind of provider whose published prices these are."""
    return "anthropic" if model.startswith("claude-") else "openai"


@pytest.mark.parametrize(
    "model, mode, published",
    [
        # OpenAI's priority processing page (input, cached input, output; writes at the input rate)
        ("gpt-5", "priority", ("2.50", "0.25", "2.50", "20.00")),
        ("gpt-5-2025-08-07", "priority", ("2.50", "0.25", "2.50", "20.00")),  # a snapshot: its model's
        ("gpt-5.1", "priority", ("2.50", "0.25", "2.50", "20.00")),
        ("gpt-5.2", "priority", ("3.50", "0.35", "3.50", "28.00")),
        ("gpt-5-mini", "priority", ("0.45", "0.045", "0.45", "3.60")),
        ("gpt-5.4-mini", "priority", ("1.50", "0.15", "1.50", "9.00")),
        ("gpt-5-codex", "priority", ("2.50", "0.25", "2.50", "20.00")),
        ("gpt-4.1", "priority", ("3.50", "0.875", "3.50", "14.00")),
        ("gpt-4.1-mini", "priority", ("0.70", "0.175", "0.70", "2.80")),
        ("gpt-4.1-nano", "priority", ("0.20", "0.05", "0.20", "0.80")),
        ("gpt-4o", "priority", ("4.25", "2.125", "4.25", "17.00")),
        ("gpt-4o-2024-08-06", "priority", ("4.25", "2.125", "4.25", "17.00")),  # GPT-4o's row names it
        ("gpt-4o-2024-05-13", "priority", ("8.75", "8.75", "8.75", "26.25")),  # no cache discount: "—"
        ("o3", "priority", ("3.50", "0.875", "3.50", "14.00")),
        # OpenAI's flex processing guide: tokens at Batch API rates, half, on every model
        ("gpt-5", "flex", ("0.625", "0.0625", "0.625", "5.00")),
        # Claude's fast mode: 6x on Opus 4.6 ($30/$150, Anthropic's fast mode page and Claude Code's docs)
        ("claude-opus-4-6", "fast", ("30.00", "3.00", "37.50", "150.00")),
        # US-only inference: 1.1x every category, Opus 4.6 and later; stacked on fast mode
        ("claude-opus-4-6", "us", ("5.50", "0.55", "6.875", "27.50")),
        ("claude-opus-4-6", "fast/us", ("33.00", "3.30", "41.25", "165.00")),
    ],
)
def test_a_mode_is_billed_at_its_published_price(table, model, mode, published):
    assert rates(table.lookup_mode(model, None, mode, kind_of(model))) == usd(*published)


@pytest.mark.parametrize(
    "model, mode",
    [
        ("gpt-5.4", "priority"),  # its priority price "excludes long context": not known above 272k
        ("gpt-5.6-sol", "priority"),  # published twice, at two prices: not known
        ("gpt-5", "scale"),  # a tier no price names
        ("claude-opus-5-5", "fast"),  # its fast-mode multiple is not published where we could read it
        ("claude-opus-5", "fast"),  # 2x by resellers (OpenRouter, Vercel) only, not by Anthropic's word
        ("claude-opus-4-8", "fast"),  # the same; and its fast mode was removed on 2026-11-30
        ("claude-opus-5", "fast/us"),
        ("gpt-4o-mini", "priority"),  # $0.25/$1.00 over $0.15/$0.60: 5/3, no decimal multiple
        ("o4-mini", "priority"),  # $2.00/$8.00 over $1.10/$4.40: 20/11, the same
        ("claude-haiku-4-5", "us"),  # before Opus 4.6: Anthropic refuses inference_geo on it
        ("claude-haiku-4-5", "fast/us"),
        ("no-such-model", "priority"),
    ],
)
def test_a_mode_without_a_published_price_is_unpriced(table, model, mode):
    assert table.lookup_mode(model, None, mode, kind_of(model)) is None


@pytest.mark.parametrize(
    "model, mode, kind, priced",
    [
        ("gpt-5", "priority", "azure", False),  # Azure's priority processing has a price of its own
        ("gpt-5", "flex", "azure", True),  # Azure's flex: "a 50% discount"
        ("gpt-5", "flex", "openai-compatible", False),  # Groq's flex is its on-demand price, not half
        ("claude-opus-4-6", "fast", "openai-compatible", False),  # a reseller's fast mode: its own price
        ("claude-opus-4-6", "fast", "anthropic", True),
        ("gemini-2.5-flash", "flex", "gemini", True),  # Google's flex: "a 50% cost reduction"
        ("gemini-2.5-flash", "priority", "gemini", False),  # "75% to 100% more": not per model
    ],
)
def test_a_shipped_multiple_prices_only_the_provider_that_published_it(table, model, mode, kind, priced):
    assert (table.lookup_mode(model, None, mode, kind) is not None) == priced


def test_a_long_context_tier_is_multiplied_too(table):
    """US-only inference multiplies every rate, so Haiku 5.5's long-prompt tier too."""
    price = table.lookup_mode("claude-haiku-5-5", None, "us", "anthropic")
    assert price is not None and price.long_context is not None
    assert rates(price.long_context) == usd("0.55", "0.055", "0.6875", "2.75")


def test_a_request_in_a_mode_costs_exactly_its_multiple(table):
    """One cost, rounded once: 1,000 input and 100 output tokens on Opus 4.6 in fast mode."""
    usage = Usage(prompt_tokens=1000, completion_tokens=100)
    fast = table.lookup_mode("claude-opus-4-6", None, "fast", "anthropic")
    assert fast is not None and cost_microcents(fast, usage) == 1000 * 3000 + 100 * 15000  # µ¢: $30, $150 per 1M


def test_an_operator_prices_a_mode_like_any_model():
    """``gpt-5/priority`` is a price of its own an operator may set (at any provider: Azure's too);
    overriding a model's rates keeps its shipped modes' multiples (a multiple holds for any rates)."""
    overrides = {
        "gpt-5/priority": Price.from_usd({"input": "3", "output": "30"}),
        "gpt-4.1": Price.from_usd({"input": "1", "output": "4"}),
    }
    table = PriceTable.load(overrides)
    assert rates(table.lookup_mode("gpt-5", None, "priority", "openai")) == usd("3", "3", "3", "30")
    assert rates(table.lookup_mode("gpt-5-2025-08-07", None, "priority", "azure")) == usd("3", "3", "3", "30")
    assert rates(table.lookup_mode("gpt-4.1", None, "priority", "openai")) == usd("1.75", "1.75", "1.75", "7")
    assert rates(table.lookup("gpt-5")) == usd("1.25", "0.125", "1.25", "10.00")  # the standard stays


@pytest.mark.parametrize(
    "modes, error",
    [
        ({"turbo": "2"}, "unknown mode"),
        ({"fast": "0"}, "bad mode"),
        ({"fast": "1000"}, "above 100"),
        ({"fast": 6}, "decimal string"),
        ({"fast": "1.000000001"}, "decimal places"),
        ("fast", "must be an object"),
    ],
)
def test_a_bad_mode_is_refused_when_the_table_is_read(modes, error):
    with pytest.raises((ValueError, TypeError), match=error):
        Price.from_usd({"input": "1", "output": "2", "modes": modes})


def test_a_multiple_that_would_round_a_rate_is_unpriced():
    """No rounding touches a rate: a multiple whose product is not a whole µ¢ per 1M is not guessed."""
    table = PriceTable({"m": Price.from_usd({"input": "0.00000001", "output": "1", "modes": {"us": "1.1"}})})
    assert table.lookup_mode("m", None, "us", "anthropic") is None


def test_a_mode_price_is_remembered_and_follows_a_dated_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget's hold prices each request in the dearest mode, so a mode's price is remembered
    (``PriceTable.lookup_mode``): the same answer each time, and the changed rates from the day a
    dated change takes effect, not the ones remembered before it."""
    import types

    from stockyard import pricing

    dated = {"input": "0.75", "cached_input": "0.075", "output": "3.75"}
    dated["changes"] = {"on": "2027-01-01", "input": "1.50", "cached_input": "0.15", "output": "7.50"}
    new_year_s = 1_798_761_600
    now = [new_year_s - 60.0]
    monkeypatch.setattr(pricing, "time", types.SimpleNamespace(time=lambda: now[0]))
    table = PriceTable.from_json('{"models": {"dated": %s}}' % __import__("json").dumps(dated))
    before = table.lookup_mode("dated", None, "flex", "openai")
    assert rates(before) == usd("0.375", "0.0375", "0.375", "1.875")
    assert table.lookup_mode("dated", None, "flex", "openai") is before  # remembered
    now[0] = new_year_s + 1.0
    assert rates(table.lookup_mode("dated", None, "flex", "openai")) == usd("0.75", "0.075", "0.75", "3.75")

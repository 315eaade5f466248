"""Price table and integer cost arithmetic.

Money is an integer number of micro-cents (µ¢): 1 µ¢ = 10⁻⁶ cent = 10⁻⁸ USD.
No float touches money: prices arrive as decimal strings and become integers.

Rates are integer µ¢ per 1,000,000 tokens (``USD per 1M × 10⁸``), which is exact
for any price with at most 8 decimals ($0.075/M = 7_500_000; $0.005/M = 500_000).

The cost of a request is computed in one step: ``Σ tokens_k × rate_k`` is an exact
integer in units of 10⁻⁶ µ¢; it is divided by 10⁶ ONCE, rounding half up. That is
the only rounding, so a request is off by less than 0.5 µ¢ (5·10⁻⁹ USD). A request
whose exact cost is above zero but below 0.5 µ¢ is charged 1 µ¢ instead of 0, so a
billed request is never free (e.g. one cached token on gpt-5-nano: exact 0.5 µ¢ → 1).

Matching (``PriceTable.lookup``): keys are model names as providers return them,
optionally qualified ``"<provider>/<model>"``. A model is priced by the key it equals,
or by the key it is a dated snapshot of: the key followed by exactly one of
``-YYYY-MM-DD``, ``-YYYYMMDD``, ``@YYYYMMDD`` (Vertex), ``-MMDD``/``-YYMM``, a 3-digit
stable version (``-001``), ``-latest`` or ``-preview-MM-DD``. Anything else — another
size (``gpt-4o-mini`` is not ``gpt-4o``), another version (``claude-opus-4-7``), a
variant, or text a provider echoed back (``gpt-4o-mini"><svg…``) — is unknown (None),
never a sibling's price; a variant with a price of its own gets its own entry.
``"<provider>/*"`` prices every model of that provider (used for local Ollama, which
costs nothing).

Units other than tokens (``Price.unit``): the media endpoints bill what OpenAI bills —
``image`` (DALL·E, one key per ``model/size/quality``, e.g. ``dall-e-3/1024x1792/hd``),
``second`` of audio (whisper-1, from the answer's ``usage.seconds`` rounded to the nearest
second as OpenAI bills), ``character`` of speech input (tts-1, tts-1-hd); and ``call``, a
hosted tool's call (OpenAI's web and file search, below: keyed ``openai/web_search_call`` …, not
a model). Their rate is ``input``, in µ¢ per 1M units like every rate here ($0.04 an image =
"40000" USD per 1M images). Token-priced audio and image models (gpt-4o-transcribe, gpt-image-1)
bill their audio or image input tokens at ``media_input`` (``Usage.media_tokens``), and models that write
images or audio among their output tokens (Gemini's image models: ``usageMetadata.
candidatesTokensDetails``, modality IMAGE or AUDIO; gpt-image-1.5: ``output_tokens_details.
image_tokens``) bill those output tokens at ``media_output`` (``Usage.media_output_tokens``);
where usage does not split the output by modality, every output token is billed at ``output``
(an image model's answer without the split: its output is its images, ``imagegen.image_usage``).

Per-call fees that usage reports join the cost as ``Usage.fees_uc``: Anthropic's web searches
(``server_tool_use.web_search_requests``, $10 per 1,000 on every model: :data:`WEB_SEARCH_UC`)
and Perplexity's request and search-query fees (its ``usage.cost`` states them in USD). So do
OpenAI's per-call hosted tools, which its usage does not count but a Responses answer shows, one
``web_search_call`` or ``file_search_call`` item a call (``stockyard.toolfees``; added by
``billing.Pricer``): each at the table's ``call`` price — the ``web_search`` tool $10 per 1,000
calls on every model (``openai/web_search_call``); ``web_search_preview`` $25 per 1,000 on
non-reasoning models (gpt-4o, gpt-4.1 families: ``…/preview``) and $10 on reasoning models
(o-series, gpt-5 but its ``-chat`` models: ``…/preview-reasoning``), chosen by the request's tool (the
preview's price only when it offered no other web search tool) and the model; ``file_search`` $2.50 per 1,000
(``openai/file_search_call``). Source: OpenAI's pricing page, "Built-in tools", as quoted on
2026-03-12 (modelcostwatch.com) and by OpenAI staff (community.openai.com); checked 2026-12-05.
Every call item counts whatever its ``action`` (OpenAI does not say which it bills; support says a
call may run sub-searches it does not show): the count is a lower bound.

A model's entry may also give token counts (not rates) that budgets hold: ``max_output_tokens``,
what it writes at most when a request sets no output cap (``estimate.output_ceiling``), and
``image_input_tokens``, what its largest image costs as input (``estimate.image_tokens``).

A prompt-length tier (``long_context``: Gemini 2.5 Pro above 200k prompt tokens, Claude Haiku
5.5 above 100k) bills every token of a request whose prompt is above the threshold at the
tier's rates (:func:`rates_for`); budgets hold the tier's rates when the prompt may be above it
(``estimate.most_tokens``: its text at a token a byte).

Modes (``Price.modes``, :func:`mode_price`, ``PriceTable.lookup_mode``): a model's price in a
provider's dearer or cheaper mode is an exact multiple of all its rates, long-context tier
included — OpenAI's ``priority`` (GPT-5: 2x, GPT-5 mini 1.8x, GPT-4.1 1.75x, GPT-4o 1.7x, from OpenAI's
priority processing page) and ``flex`` (half, every model: "Batch API rates"; Azure's and Gemini's flex too),
Claude's fast mode (Opus 4.6 6x: Anthropic's fast mode page; Opus 4.8's and Opus 5's 2x is only
resellers' word, so unpriced) and US-only inference (``us``, 1.1x from Opus 4.6 and Sonnet 4.6 on:
Anthropic's help centre, "Enable US-only inference"), both at once ``fast/us``. An entry
``<model>/<mode>`` of its own (an operator's) wins;
a shipped multiple prices only the provider kind that published it (``MODE_KINDS``); anything else
is unknown. Checked 2026-12-06.

A Realtime model's image input tokens (``input_token_details.image_tokens``, cached ones in
``cached_tokens_details.image_tokens``) are billed at its ``image_input`` and ``image_cached_input``
(prices.json rates, from OpenAI's model pages), else at its text input rates. Not modelled: cached
image input tokens outside Realtime (billed as cached text input), and per-call fees neither usage nor answer
reports: Gemini's grounding; OpenAI's code interpreter and shell containers (billed per minute of
a session, at least 5, since 2026-06-02: $0.03 per 20 minutes at 1 GB, more by ``memory_limit``;
no answer shows the minutes); the searches of OpenAI's Chat Completions search models
(``gpt-4o-search-preview``, ``gpt-5-search-api``: no call is shown, and no source at hand states
their per-call rule); the fixed 8,000 input tokens a web search bills on gpt-4o-mini and
gpt-4.1-mini (not in usage); and Azure's or other providers' tool calls unless an operator prices
them (``azure/web_search_call``).
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import pkgutil
import re
import time
from collections.abc import Mapping
from dataclasses import astuple, dataclass, replace
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fractions import Fraction
from types import MappingProxyType
from typing import Any

from .memo import remember

USD = 10**8  # µ¢ per US dollar
PER = 10**6  # rates are per this many tokens

# Leading path segments that name a provider rather than part of a model id.
PROVIDERS = frozenset(
    {
        "openai",
        "anthropic",
        "gemini",
        "google",
        "groq",
        "mistral",
        "deepseek",
        "together",
        "fireworks",
        "openrouter",
        "perplexity",
        "xai",
        "ollama",
        "azure",
    }
)

# What may follow a priced key in the name of the same model (see the module docstring).
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}|[-@]\d{8}|-\d{3,4}|-latest|-preview-\d{2}-\d{2}")


def _units(text: str, what: str) -> int:
    """Exact ``text × 10⁸`` for a non-negative decimal string with ≤ 8 decimals."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a decimal string, not {type(text).__name__}")
    try:
        number = Decimal(text.strip())  # "2.50", "10", "1e-3"; not "1/3"
    except InvalidOperation:
        raise ValueError(f"{what} {text!r} is not a decimal number") from None
    if not number.is_finite():
        raise ValueError(f"{what} {text!r} is not a finite number")
    if number and number.adjusted() > 18:  # "1e999999999" would take minutes to make exact
        raise ValueError(f"{what} {text!r} is too large")
    if number and number.adjusted() < -8:
        raise ValueError(f"{what} {text!r} has more than 8 decimal places")
    value = Fraction(number)  # exact, no context rounding
    if value < 0:
        raise ValueError(f"{what} {text!r} is negative")
    scaled = value * USD
    if scaled.denominator != 1:
        raise ValueError(f"{what} {text!r} has more than 8 decimal places")
    return scaled.numerator


def parse_usd_per_m(text: str) -> int:
    """'2.50' (USD per 1M tokens) → 250_000_000 µ¢ per 1M tokens."""
    return _units(text, "price")


def microcents_from_usd(text: str) -> int:
    """Budget input like '10', '0.50' or '$5' → µ¢ (exact, else ValueError)."""
    if isinstance(text, str):
        text = text.strip().removeprefix("$")
    return _units(text, "amount")


def format_usd(microcents: int, min_places: int = 6) -> str:
    """µ¢ → '$0.000123': at least ``min_places`` decimals, up to 8 when needed.

    Exact, so a non-zero cost never prints as $0.00 (1 µ¢ → '$0.00000001').
    Reports that want cents pass ``min_places=2`` ('$10.00', '$0.0123').
    """
    if type(microcents) is not int:
        raise TypeError(f"money must be int micro-cents, not {type(microcents).__name__}")
    if not 0 <= min_places <= 8:
        raise ValueError("min_places must be between 0 and 8")
    sign = "-" if microcents < 0 else ""
    dollars, frac = divmod(abs(microcents), USD)
    digits = f"{frac:08d}"
    places = max(min_places, len(digits.rstrip("0")))
    return f"{sign}${dollars}" + (f".{digits[:places]}" if places else "")


UNITS = ("token", "image", "second", "character", "call")
RATE_FIELDS = ("input", "cached_input", "cache_write", "output", "reasoning", "media_input", "media_output")
MEDIA_MODALITIES = ("IMAGE", "AUDIO")  # Gemini's ModalityTokenCount.modality values billed as media
WEB_SEARCH_UC = USD // 100  # Anthropic's web search: $10 per 1,000 searches, one cent each
MAX_SEARCHES = 10**6  # searches one answer is billed for at most (an absurd count stays a sane cost)
# A model's token counts beside its rates: in prices.json only (not `prices set`), so an
# operator's rate override keeps the shipped ones.
TOKEN_COUNTS = ("max_output_tokens", "image_input_tokens")
# A rate only prices.json gives (an override prices the model without it): a long-lived cache
# write where its price is not Anthropic's twice the input rate (OpenAI's 12-hour writes).
# A cached audio or image input token's rate, where it is not the cached text rate (the Realtime
# models': gpt-realtime-mini caches audio at $0.30 and text at $0.06 per 1M). A Realtime model's
# image input and cached image input (``Usage.image_tokens``), where it is not its audio rate
# (gpt-realtime-2: audio $32, images $5 per 1M).
SHIPPED_RATES = ("cache_write_long", "media_cached_input", "image_input", "image_cached_input")


def _check_counts(obj: object) -> None:
    for name, value in vars(obj).items():
        if value is None and name in (
            "reasoning",
            "media_input",
            "media_output",
            *TOKEN_COUNTS,
            *SHIPPED_RATES,
            "long_context_above",
            "changes_on_ms",
        ):
            continue
        if name == "modes":
            _check_modes(value)
            continue
        if name in ("long_context", "changed"):
            if value is not None and not isinstance(value, Price):
                raise ValueError(f"{name} must be a Price, got {value!r}")
            continue
        if name == "unit":
            if value not in UNITS:
                raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {value!r}")
            continue
        if type(value) is not int or value < 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be a non-negative int, got {value!r}")


@dataclass(frozen=True)
class Price:
    """Rates in integer µ¢ per 1M tokens (per 1M ``unit`` when that is not ``token``: then
    ``input`` is the rate); ``reasoning`` None means the output rate, ``media_input`` None the
    input rate, ``media_output`` (output tokens that are images or audio) None the output rate."""

    input: int
    cached_input: int
    cache_write: int
    output: int
    reasoning: int | None = None
    unit: str = "token"
    media_input: int | None = None
    media_output: int | None = None
    # Token counts of the model, not rates (shipped in prices.json, kept by an operator's rate
    # override; None: unknown), for the worst case a budget holds (``stockyard.estimate``):
    # the output it may write when a request sets no cap (OpenAI and Gemini write up to their
    # model's ceiling; unknown: STOCKYARD_DEFAULT_MAX_TOKENS), and the input tokens of its
    # largest image (unknown: ``estimate.IMAGE_INPUT_TOKENS``).
    max_output_tokens: int | None = None
    image_input_tokens: int | None = None
    # A prompt-length tier: a request whose prompt (cache reads and writes included) is above
    # ``long_context_above`` tokens is billed at ``long_context``'s rates for every token, output
    # included (Gemini 2.5 Pro above 200k, Claude Haiku 5.5 above 100k). See :func:`rates_for`.
    long_context_above: int | None = None
    long_context: Price | None = None
    cache_write_long: int | None = None  # see long_cache_write_rate
    media_cached_input: int | None = None  # cached audio or image input (None: the cached input rate)
    # A Realtime model's image input, uncached and cached (None: the text ``input`` and
    # ``cached_input`` rates, as OpenAI bills images on models that price them with text)
    image_input: int | None = None
    image_cached_input: int | None = None
    # A price change announced with its date (an introductory price that ends): from
    # ``changes_on_ms`` (UTC) on, ``changed`` is the price. See :meth:`current`.
    changes_on_ms: int | None = None
    changed: Price | None = None
    # What the provider's dearer or cheaper modes bill every token at, as an exact multiple of
    # these rates: ((mode, numerator, denominator), …), e.g. ("fast", 6, 1), ("us", 11, 10),
    # ("priority", 2, 1). See :func:`mode_price`.
    modes: tuple[tuple[str, int, int], ...] = ()

    def __post_init__(self) -> None:
        _check_counts(self)
        if (self.long_context is None) != (self.long_context_above is None):
            raise ValueError("a long-context tier needs both its threshold and its rates")
        if self.long_context is not None and self.long_context.long_context is not None:
            raise ValueError("a long-context tier has no tier of its own")
        if (self.changed is None) != (self.changes_on_ms is None):
            raise ValueError("a price change needs both its date and its rates")
        if self.changed is not None and self.changed.changed is not None:
            raise ValueError("a price change has no change of its own")

    def current(self, now_ms: int | None = None) -> Price:
        """The price in effect at ``now_ms`` (now): the changed one from its date on."""
        if self.changed is None or self.changes_on_ms is None:
            return self
        when = int(time.time() * 1000) if now_ms is None else now_ms
        return self.changed if when >= self.changes_on_ms else self

    @classmethod
    def from_usd(cls, rates: Mapping[str, Any]) -> Price:
        """From decimal strings in USD per 1M (the token counts as whole numbers);
        cached/cache_write default to input."""
        unknown = set(rates) - {*RATE_FIELDS, *SHIPPED_RATES, "unit", *TOKEN_COUNTS, "long_context", "changes", "modes"}
        if unknown:
            raise ValueError(f"unknown price fields: {sorted(unknown)}")
        above, tier = _long_context(rates.get("long_context"))
        for name in TOKEN_COUNTS:
            count = rates.get(name)
            if count is not None and (type(count) is not int or count <= 0):
                raise ValueError(f"{name} must be a positive whole number, got {count!r}")
        inp = parse_usd_per_m(rates["input"])
        return cls(
            input=inp,
            cached_input=parse_usd_per_m(rates["cached_input"]) if "cached_input" in rates else inp,
            cache_write=parse_usd_per_m(rates["cache_write"]) if "cache_write" in rates else inp,
            output=parse_usd_per_m(rates["output"]),
            reasoning=parse_usd_per_m(rates["reasoning"]) if "reasoning" in rates else None,
            unit=rates.get("unit", "token"),
            media_input=parse_usd_per_m(rates["media_input"]) if "media_input" in rates else None,
            media_output=parse_usd_per_m(rates["media_output"]) if "media_output" in rates else None,
            **{name: rates.get(name) for name in TOKEN_COUNTS},
            long_context_above=above,
            long_context=tier,
            cache_write_long=parse_usd_per_m(rates["cache_write_long"]) if "cache_write_long" in rates else None,
            media_cached_input=parse_usd_per_m(rates["media_cached_input"]) if "media_cached_input" in rates else None,
            image_input=parse_usd_per_m(rates["image_input"]) if "image_input" in rates else None,
            image_cached_input=parse_usd_per_m(rates["image_cached_input"]) if "image_cached_input" in rates else None,
            **_change(rates),
            modes=parse_modes(rates.get("modes")),
        )


def _long_context(tier: Any) -> tuple[int | None, Price | None]:
    """prices.json's ``"long_context": {"above": 200000, "input": "2.50", …}``: the threshold in
    prompt tokens and the rates above it (token rates only: no unit, counts or tier of its own)."""
    if tier is None:
        return None, None
    if not isinstance(tier, Mapping):
        raise TypeError("long_context must be an object")
    above = tier.get("above")
    if type(above) is not int or above <= 0:
        raise ValueError(f"long_context.above must be a positive whole number, got {above!r}")
    rates = {k: v for k, v in tier.items() if k != "above"}
    unknown = set(rates) - set(RATE_FIELDS)
    if unknown:
        raise ValueError(f"unknown long_context fields: {sorted(unknown)}")
    return above, Price.from_usd(rates)


def _change(rates: Mapping[str, Any]) -> dict[str, Any]:
    """prices.json's ``"changes": {"on": "2027-01-01", "input": "1.50", …}``: the date (UTC) and the
    rates from then on (the model's token counts stay; a tier of its own may be given)."""
    change = rates.get("changes")
    if change is None:
        return {}
    if not isinstance(change, Mapping):
        raise TypeError("changes must be an object")
    on = change.get("on")
    try:
        day = datetime.date.fromisoformat(on) if isinstance(on, str) and len(on) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise ValueError(f"changes.on must be a date like 2027-01-01, got {on!r}")
    new = {k: v for k, v in change.items() if k != "on"}
    unknown = set(new) - {*RATE_FIELDS, *SHIPPED_RATES, "long_context"}
    if unknown:
        raise ValueError(f"unknown changes fields: {sorted(unknown)}")
    if "long_context" in rates and "long_context" not in new:  # else long prompts would drop to flat rates
        raise ValueError("changes must restate the model's long_context tier")
    counts = {name: rates[name] for name in (*TOKEN_COUNTS, "modes") if name in rates}  # a mode's multiple stays
    midnight = datetime.datetime.combine(day, datetime.time(), datetime.timezone.utc)
    return {"changes_on_ms": int(midnight.timestamp()) * 1000, "changed": Price.from_usd({**counts, **new})}


# The modes a price may name (``Price.modes``): OpenAI's ``service_tier`` ``priority`` (also asked
# as ``fast``) and ``flex``; Claude's fast mode (``speed: "fast"``) and US-only inference
# (``inference_geo: "us"``). A request in two of Claude's modes is in both: ``fast/us``.
MODES = ("priority", "flex", "fast", "us")
# A mode's multiple where the provider states one rule for every model: OpenAI bills flex
# tokens "at Batch API rates" (half), whatever the model (its flex processing guide); Gemini's
# Flex API is "a 50% cost reduction compared to standard rates".
DEFAULT_MODES = {"flex": (1, 2)}
MAX_MULTIPLE = 100  # more than any provider charges for a mode: a wilder number is a typo
# The provider kinds whose modes the shipped multiples price: OpenAI's tiers (flex at Azure and
# Gemini too, "a 50% discount" by Microsoft's and Google's word; their priority prices are their
# own, not published per model where we could read them), Claude's modes at Anthropic.
MODE_KINDS = {
    "priority": ("openai",),
    "flex": ("openai", "azure", "gemini"),
    "fast": ("anthropic",),
    "us": ("anthropic",),
}


def parse_modes(modes: Any) -> tuple[tuple[str, int, int], ...]:
    """prices.json's ``"modes": {"fast": "6", "us": "1.1"}``: each mode's multiple of the model's
    rates, a decimal string made an exact fraction (``"1.1"`` is 11/10)."""
    if modes is None:
        return ()
    if not isinstance(modes, Mapping):
        raise TypeError("modes must be an object")
    out = []
    for name, text in sorted(modes.items()):
        if name not in MODES:
            raise ValueError(f"unknown mode {name!r}: one of {', '.join(MODES)}")
        multiple = Fraction(_units(text, f"modes.{name}"), USD)
        out.append((name, multiple.numerator, multiple.denominator))
    return tuple(out)


def _check_modes(modes: Any) -> None:
    """``Price.modes`` holds known modes with positive multiples no wilder than MAX_MULTIPLE."""
    if not isinstance(modes, tuple):
        raise ValueError(f"Price.modes must be a tuple, got {modes!r}")
    for item in modes:
        name, num, den = item if isinstance(item, tuple) and len(item) == 3 else (None, 0, 0)
        if name not in MODES or type(num) is not int or type(den) is not int or num <= 0 or den <= 0:
            raise ValueError(f"bad mode {item!r}")
        if num > MAX_MULTIPLE * den:
            raise ValueError(f"mode {name!r} multiple {num}/{den} is above {MAX_MULTIPLE}")


def mode_multiple(price: Price, mode: str) -> Fraction | None:
    """What ``mode`` (one mode, or Claude's two as ``fast/us``) multiplies ``price``'s rates by:
    the product of each mode's multiple (the table's, else :data:`DEFAULT_MODES`); None when one
    of them is not known (unpriced: never guessed)."""
    own = {name: Fraction(num, den) for name, num, den in price.modes}
    total = Fraction(1)
    for part in mode.split("/"):
        default = DEFAULT_MODES.get(part)
        multiple = own.get(part) or (Fraction(*default) if default else None)
        if multiple is None:
            return None
        total *= multiple
    return total


def mode_price(price: Price, mode: str | None) -> Price | None:
    """``price`` in ``mode`` (None: the standard mode, ``price`` itself): every rate, those of its
    long-context tier too, times the mode's multiple (:func:`mode_multiple`). None when the multiple
    is not known, or a rate times it is not a whole µ¢ per 1M tokens (no rounding touches a rate)."""
    if not mode:
        return price
    multiple = mode_multiple(price, mode)
    return None if multiple is None else _scaled(price, multiple)


def _scaled(price: Price, multiple: Fraction) -> Price | None:
    """Every rate of ``price`` times ``multiple``, exactly; None if one is not a whole number."""
    changes: dict[str, Any] = {}
    for name in (*RATE_FIELDS, *SHIPPED_RATES):
        rate = getattr(price, name)
        if rate is None:
            continue
        product = rate * multiple
        if product.denominator != 1:
            return None
        changes[name] = product.numerator
    if price.long_context is not None:
        tier = _scaled(price.long_context, multiple)
        if tier is None:
            return None
        changes["long_context"] = tier
    return replace(price, **changes, changes_on_ms=None, changed=None)


def rates_for(price: Price, prompt_tokens: int) -> Price:
    """The rates one request is billed at: its model's long-context tier when the prompt is
    above the tier's threshold (every token of the request, as Google and Anthropic bill it),
    else the model's own."""
    above = price.long_context_above
    if price.long_context is not None and above is not None and prompt_tokens > above:
        return price.long_context
    return price


def _keep_shipped(override: Price, shipped: Price | None) -> Price:
    """An operator's override changes the rates; the model's token counts and its modes' multiples
    (unless it gives its own) stay the shipped ones. A shipped long-context tier, ``cache_write_long``
    and a dated change do not: they are rates, which it replaces."""
    if shipped is None:
        return override
    kept: dict[str, Any] = {name: getattr(shipped, name) for name in TOKEN_COUNTS if getattr(override, name) is None}
    if not override.modes:  # a multiple of the rates: it holds for the operator's rates too
        kept["modes"] = shipped.modes
    return replace(override, **kept)


MAX_TOKEN_COUNT = 2**40  # beyond any real answer; keeps a cost within SQLite's integers


def _count(d: dict[str, Any] | None, key: str) -> int:
    """A token count from provider JSON; missing, null or malformed counts as 0, absurd ones are capped.

    Usage is parsed JSON, so its objects are tested as ``dict``, not ``Mapping``: an ABC's
    ``isinstance`` costs ~5× a type's, and an OpenAI answer's usage takes thirteen of them."""
    value = d.get(key) if isinstance(d, dict) else None
    return min(value, MAX_TOKEN_COUNT) if type(value) is int and value > 0 else 0


@dataclass(frozen=True)
class Usage:
    """Token counts of one upstream attempt, OpenAI-style.

    ``prompt_tokens`` INCLUDES ``cached_tokens`` (cache reads) and
    ``cache_write_tokens``; ``completion_tokens`` INCLUDES ``reasoning_tokens``.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    media_tokens: int = 0  # input tokens that are audio or images (part of prompt_tokens)
    cache_write_long_tokens: int = 0  # of cache_write_tokens: Anthropic's 1-hour and OpenAI's 12-hour writes
    # Per-call fees the usage itself reports, in µ¢ (not tokens): Anthropic's web searches at
    # WEB_SEARCH_UC each, Perplexity's request and search-query fees as its usage.cost states them.
    fees_uc: int = 0
    media_output_tokens: int = 0  # output tokens that are images or audio (part of completion_tokens)
    media_cached_tokens: int = 0  # cache reads that are audio or images (part of cached_tokens; Realtime)
    # Of media_tokens and media_cached_tokens, those that are images (Realtime: billed at the
    # model's image rates, not its audio ones)
    image_tokens: int = 0
    image_cached_tokens: int = 0

    def __post_init__(self) -> None:
        """Every count a non-negative int. Not :func:`_check_counts`, whose cases are a price's
        (None rates, modes, tiers, units): a usage is made for every answer, and that took 3× this."""
        for name, value in vars(self).items():
            if type(value) is not int or value < 0:
                raise ValueError(f"Usage.{name} must be a non-negative int, got {value!r}")

    def plus(self, other: Usage) -> Usage:
        """Both usages' counts and fees added: what several calls used together (a batch's lines,
        the calls of a turn Stockyard continued), for reports; each call is priced on its own."""
        return Usage(*(a + b for a, b in zip(astuple(self), astuple(other))))

    @classmethod
    def from_openai(cls, usage: dict[str, Any] | None) -> Usage:
        """Chat Completions (prompt_/completion_tokens) or Responses API (input_/output_tokens),
        with their cache reads and (GPT-5.6 and later) cache writes, 12-hour ones apart; image
        and audio input tokens, and the image output tokens of an output split by modality
        (``output_tokens_details.image_tokens``: gpt-image-1.5's Images API and image tool usage,
        which bill text output apart from image output).

        Also reads DeepSeek's ``prompt_cache_hit_tokens``, and handles providers
        (xAI) whose ``completion_tokens`` leave reasoning out: detected when
        ``total_tokens == prompt + completion + reasoning``.
        """
        u = usage if isinstance(usage, dict) else {}
        prompt = _count(u, "prompt_tokens") or _count(u, "input_tokens")
        completion = _count(u, "completion_tokens") or _count(u, "output_tokens")
        in_details = u.get("prompt_tokens_details") or u.get("input_tokens_details")
        out_details = u.get("completion_tokens_details") or u.get("output_tokens_details")
        cached = _count(in_details, "cached_tokens") or _count(u, "prompt_cache_hit_tokens")
        written = min(_count(in_details, "cache_write_tokens"), max(0, prompt - cached))  # GPT-5.6 and later
        ttl = in_details.get("cache_write_tokens_details") if isinstance(in_details, dict) else None
        media_details = in_details or u.get("input_token_details")  # a transcription's is singular
        media = _count(media_details, "audio_tokens") + _count(media_details, "image_tokens")
        reasoning = _count(out_details, "reasoning_tokens")
        drawn = _count(out_details, "image_tokens")  # an image model's output split (gpt-image-1.5)
        total = u.get("total_tokens")
        if reasoning and type(total) is int and total == prompt + completion + reasoning:
            completion += reasoning
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=min(cached, prompt),
            cache_write_tokens=written,
            cache_write_long_tokens=min(_count(ttl, "ttl_12h_tokens"), written),
            reasoning_tokens=min(reasoning, completion),
            media_tokens=min(media, prompt),
            fees_uc=stated_fees(u.get("cost")),
            media_output_tokens=min(drawn, completion),
        )

    @classmethod
    def from_realtime(cls, usage: dict[str, Any] | None) -> Usage:
        """A Realtime ``response.done``'s usage: ``input_token_details`` counts text, audio and image
        tokens, cached ones included, and ``cached_tokens_details`` the cached ones by modality;
        ``output_token_details`` text and audio. Audio and image input is ``media`` (its uncached
        part in ``media_tokens``, its cached part in ``media_cached_tokens``), of which images are
        ``image_tokens`` and ``image_cached_tokens`` (their own rates); audio output ``media_output_tokens``."""
        u = usage if isinstance(usage, dict) else {}
        prompt, completion = _count(u, "input_tokens"), _count(u, "output_tokens")
        details = u.get("input_token_details")
        cached_details = details.get("cached_tokens_details") if isinstance(details, dict) else None
        cached = min(_count(details, "cached_tokens"), prompt)
        images, images_cached = _count(details, "image_tokens"), _count(cached_details, "image_tokens")
        media = _count(details, "audio_tokens") + images
        media_cached = min(_count(cached_details, "audio_tokens") + images_cached, cached)
        media_fresh = min(max(0, media - media_cached), prompt - cached)
        image_cached = min(images_cached, media_cached)
        audio_out = _count(u.get("output_token_details"), "audio_tokens")
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            media_tokens=media_fresh,
            media_cached_tokens=media_cached,
            media_output_tokens=min(audio_out, completion),
            image_tokens=min(max(0, images - images_cached), media_fresh),
            image_cached_tokens=image_cached,
        )

    @classmethod
    def from_anthropic(cls, usage: dict[str, Any] | None) -> Usage:
        """Anthropic reports input_tokens WITHOUT cache reads/writes; add them back. Writes to
        the 1-hour cache (``cache_creation.ephemeral_1h_input_tokens``) cost more than 5-minute
        ones; ``server_tool_use.web_search_requests`` are billed per search. A compaction step
        (server-side compaction) is billed but left out of the top-level counts: its ``usage.
        iterations`` entries of type ``compaction`` are added (:func:`compaction_usage`)."""
        read = _count(usage, "cache_read_input_tokens")
        write = _count(usage, "cache_creation_input_tokens")
        creation = usage.get("cache_creation") if isinstance(usage, dict) else None
        server_tools = usage.get("server_tool_use") if isinstance(usage, dict) else None
        top = cls(
            fees_uc=min(_count(server_tools, "web_search_requests"), MAX_SEARCHES) * WEB_SEARCH_UC,
            prompt_tokens=_count(usage, "input_tokens") + read + write,
            completion_tokens=_count(usage, "output_tokens"),
            cached_tokens=read,
            cache_write_tokens=write,
            cache_write_long_tokens=min(_count(creation, "ephemeral_1h_input_tokens"), write),
        )
        return top.plus(compaction_usage(usage))

    @classmethod
    def from_gemini(cls, meta: dict[str, Any] | None) -> Usage:
        """Gemini ``usageMetadata``: promptTokenCount includes cachedContentTokenCount;
        candidatesTokenCount excludes thoughtsTokenCount, which is billed as output.
        toolUsePromptTokenCount is billed as input, so it joins the prompt. The candidates'
        IMAGE and AUDIO tokens (``candidatesTokensDetails``, ModalityTokenCount objects: an image
        model's images) are media output; the rest of candidatesTokenCount is text (Google may list
        no TEXT entry beside an IMAGE one)."""
        thoughts = _count(meta, "thoughtsTokenCount")
        prompt = _count(meta, "promptTokenCount") + _count(meta, "toolUsePromptTokenCount")
        candidates = _count(meta, "candidatesTokenCount")
        details = meta.get("candidatesTokensDetails") if isinstance(meta, dict) else None
        media = sum(
            _count(item, "tokenCount")
            for item in (details if isinstance(details, list) else [])
            if isinstance(item, dict) and item.get("modality") in MEDIA_MODALITIES
        )
        return cls(
            prompt_tokens=prompt,
            completion_tokens=candidates + thoughts,
            cached_tokens=min(_count(meta, "cachedContentTokenCount"), prompt),
            reasoning_tokens=thoughts,
            media_output_tokens=min(media, candidates),
        )


MAX_ITERATIONS = 100  # entries of an Anthropic usage's ``iterations`` read (more than a request makes)


def compaction_usage(usage: dict[str, Any] | None) -> Usage:
    """The compaction steps of an Anthropic ``usage.iterations`` (type ``compaction``), which its
    top-level counts leave out; each read as a usage of its own. Nothing when there are none."""
    steps = usage.get("iterations") if isinstance(usage, dict) else None
    total = Usage()
    for step in steps[:MAX_ITERATIONS] if isinstance(steps, list) else ():
        if isinstance(step, dict) and step.get("type") == "compaction":
            total = total.plus(Usage.from_anthropic({k: v for k, v in step.items() if k != "iterations"}))
    return total


STATED_FEES = ("request_cost", "search_queries_cost")  # Perplexity's per-request and per-search fees
MAX_STATED_FEE_USD = Decimal(1000)  # more than any one request's fees: a wilder number is ignored


def stated_fees(cost: Any) -> int:
    """Perplexity's ``usage.cost`` parts that are fees, not tokens (USD numbers), in µ¢, exactly:
    each number as written in the JSON (``0.005`` is 500,000 µ¢), rounded half up to 1 µ¢. The
    token parts are left to the price table, like every other provider's. Anything else: 0."""
    if not isinstance(cost, dict):
        return 0
    total = 0
    for name in STATED_FEES:
        value = cost.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue  # not a number (NaN and Infinity too: Python's json reads them)
        usd = Decimal(repr(value))  # as written in the JSON, not the float's binary expansion
        if 0 < usd < MAX_STATED_FEE_USD:
            total += int((usd * USD).to_integral_value(ROUND_HALF_UP))
    return total


def round_microcents(numerator: int, whole: int = 1) -> int:
    """numerator / whole (units of 10⁻⁶ µ¢) → µ¢, half up; anything above 0 is at least 1."""
    if numerator <= 0:
        return 0
    return max(1, (numerator + PER * whole // 2) // (PER * whole))


def cost_microcents(price: Price, usage: Usage) -> int:
    """Exact integer cost in µ¢ of ``usage`` at ``price``, rounded once.

    Parts are billed as reported; if a provider reports parts larger than the
    totals, the remainder (uncached input, plain output) counts as 0, never less.
    """
    return round_microcents(cost_numerator(price, usage))


def discounted_microcents(numerator: int, rate: tuple[int, int]) -> int:
    """A summed :func:`cost_numerator` at ``rate`` (a fraction: (1, 2) is half price) in µ¢, rounded once."""
    part, whole = rate
    return round_microcents(numerator * part, whole)


def cost_numerator(price: Price, usage: Usage) -> int:
    """The cost of ``usage`` at ``price`` in units of 10⁻⁶ µ¢, not yet rounded (sums of these stay exact)."""
    price = rates_for(price, usage.prompt_tokens)
    fresh = max(0, usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens)
    media = min(usage.media_tokens, fresh)
    image = min(usage.image_tokens, media)
    uncached = fresh - media
    plain_output = max(0, usage.completion_tokens - usage.reasoning_tokens)
    media_output = min(usage.media_output_tokens, plain_output)
    text_output = plain_output - media_output
    reasoning_rate = price.output if price.reasoning is None else price.reasoning
    media_rate = price.input if price.media_input is None else price.media_input
    media_output_rate = price.output if price.media_output is None else price.media_output
    media_cached = min(usage.media_cached_tokens, usage.cached_tokens)
    image_cached = min(usage.image_cached_tokens, media_cached)
    media_cached_rate = price.cached_input if price.media_cached_input is None else price.media_cached_input
    image_rate = price.input if price.image_input is None else price.image_input
    image_cached_rate = price.cached_input if price.image_cached_input is None else price.image_cached_input
    return (
        uncached * price.input
        + (media - image) * media_rate
        + image * image_rate
        + (usage.cached_tokens - media_cached) * price.cached_input
        + (media_cached - image_cached) * media_cached_rate
        + image_cached * image_cached_rate
        + (usage.cache_write_tokens - usage.cache_write_long_tokens) * price.cache_write
        + usage.cache_write_long_tokens * long_cache_write_rate(price)
        + text_output * price.output
        + media_output * media_output_rate
        + usage.reasoning_tokens * reasoning_rate
        + usage.fees_uc * PER
    )


def long_cache_write_rate(price: Price) -> int:
    """A long-lived cache write: the price's own rate for it where the table gives one (OpenAI's
    12-hour writes), else Anthropic's 1-hour rule, twice the input rate (a 5-minute write is 1.25×)."""
    if price.cache_write_long is not None:
        return price.cache_write_long
    return max(price.cache_write, 2 * price.input)


def unit_cost(price: Price, units: int) -> int:
    """µ¢ for ``units`` images, seconds or characters at ``price.input`` per 1M units, rounded once."""
    return round_microcents(units * price.input)


def _parse_table(data: bytes | str) -> tuple[dict[str, Price], str]:
    """The prices of a prices.json document, and its ``checked`` date."""
    doc = json.loads(data)
    prices: dict[str, Price] = {}
    for key, rates in doc["models"].items():
        try:
            prices[key] = Price.from_usd(rates)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad price for {key!r}: {exc}") from None
    return prices, str(doc.get("checked", ""))


@functools.cache
def _shipped_table() -> tuple[Mapping[str, Price], str]:
    """The packaged prices.json, parsed (read-only: a Price is frozen, the mapping a proxy)."""
    data = pkgutil.get_data("stockyard", "data/prices.json")
    if data is None:
        raise FileNotFoundError("stockyard/data/prices.json is missing from the package")
    prices, checked = _parse_table(data)
    return MappingProxyType(prices), checked


def _split(name: str) -> tuple[str | None, str]:
    """'groq/llama-3.3' → ('groq', 'llama-3.3'); 'meta-llama/x' stays bare."""
    head, sep, rest = name.partition("/")
    if sep and head in PROVIDERS and rest:
        return head, rest
    return None, name


def key_names(key: str, model: str) -> bool:
    """The key prices the model: the same name, or a dated snapshot of it (also what the image
    models' token tables are told apart by: ``imagegen.output_tokens``); a mode's key
    (``gpt-5/priority``) prices that mode of the model and of its snapshots."""
    if key == "*" or key == model:
        return True
    head, sep, mode = model.rpartition("/")
    if sep and mode in MODES and key.endswith(f"/{mode}"):
        key, model = key[: -len(mode) - 1], head
        if key == model:
            return True
    return model.startswith(key) and _SNAPSHOT.fullmatch(model, len(key)) is not None


class PriceTable:
    """Prices by model: exact names and their dated snapshots, never a neighbour's price."""

    def __init__(self, prices: Mapping[str, Price], checked: str = "") -> None:
        self.checked = checked
        self._memo: dict[tuple[str, str | None], Price | None] = {}
        self._mode_memo: dict[tuple[str, str | None, str], tuple[Price, Price | None]] = {}
        self._by_provider: dict[str | None, dict[str, Price]] = {}
        for key, price in prices.items():
            if not isinstance(price, Price):
                raise TypeError(f"price for {key!r} must be a Price")
            provider, name = _split(key.strip().lower())
            self._by_provider.setdefault(provider, {})[name] = price

    @classmethod
    def from_json(cls, data: bytes | str, overrides: Mapping[str, Price] | None = None) -> PriceTable:
        """Parse the prices.json format; every price must be a decimal string."""
        prices, checked = _parse_table(data)
        return cls._with_overrides(prices, checked, overrides)

    @classmethod
    def load(cls, overrides: Mapping[str, Price] | None = None) -> PriceTable:
        """The packaged table (works inside the zipapp), with overrides on top. The file is
        parsed once per process (~8 ms): every configuration reload builds a table."""
        prices, checked = _shipped_table()
        return cls._with_overrides(prices, checked, overrides)

    @classmethod
    def _with_overrides(
        cls, prices: Mapping[str, Price], checked: str, overrides: Mapping[str, Price] | None
    ) -> PriceTable:
        table = cls(prices, checked=checked)
        if overrides:
            shipped = dict(table.entries())
            kept = {key: _keep_shipped(price, shipped.get(key)) for key, price in overrides.items()}
            table = cls({**shipped, **kept}, checked=checked)
        return table

    def entries(self) -> list[tuple[str, Price]]:
        """All (key, price) pairs, sorted by key, keys as written in the table."""
        out = [
            (name if provider is None else f"{provider}/{name}", price)
            for provider, names in self._by_provider.items()
            for name, price in names.items()
        ]
        return sorted(out)

    def lookup_mode(self, model: str, provider: str | None, mode: str | None, kind: str | None = None) -> Price | None:
        """Price for ``model`` served in ``mode`` (``MODES``; None: standard) by a provider of
        ``kind``: an entry of its own (``<model>/<mode>``, e.g. an operator's ``gpt-5/priority``),
        else — at a provider of the kind whose published prices they are (:data:`MODE_KINDS`) — the
        model's price times the mode's multiple (:func:`mode_price`); None when unknown."""
        if not mode:
            return self.lookup(model, provider)
        own = self.lookup(f"{model}/{mode}", provider)
        if own is not None:
            return own
        if not all(kind in MODE_KINDS.get(part, ()) for part in mode.split("/")):
            return None  # another provider's mode of that name is priced its own way (Groq's flex)
        base = self.lookup(model, provider)
        if base is None:
            return None
        key = (model, provider, mode)  # a budget's hold prices every request in the dearest mode
        remembered = self._mode_memo.get(key)
        if remembered is not None and remembered[0] is base:  # the same price in effect (not a dated change)
            return remembered[1]
        scaled = mode_price(base, mode)
        remember(self._mode_memo, key, model, (base, scaled))
        return scaled

    def lookup(self, model: str, provider: str | None = None) -> Price | None:
        """Price for ``model`` as served by ``provider``, or None when unknown (memoized: the
        table never changes after load, and this runs on every request)."""
        key = (model, provider)
        try:
            found = self._memo[key]
            return None if found is None else found.current()
        except KeyError:
            pass
        found = self._lookup(model, provider)
        remember(self._memo, key, model, found)
        return None if found is None else found.current()

    def _lookup(self, model: str, provider: str | None = None) -> Price | None:
        """The uncached lookup."""
        found = self._entry(model, provider)
        return None if found is None else self._by_provider[found[0]][found[1]]

    def priced_name(self, model: str, provider: str | None = None) -> str | None:
        """The table's own name (without its provider) of the entry that prices ``model`` at
        ``provider`` — ``gpt-4o-mini`` for ``GPT-4o-mini-2024-07-18`` —, None when none does but
        ``*``: one name for every spelling and snapshot of a known model."""
        found = self._entry(model, provider)
        return None if found is None or found[1] == "*" else found[1]

    def _entry(self, model: str, provider: str | None) -> tuple[str | None, str] | None:
        """Where the price of ``model`` is: (provider space, key), or None when unknown.

        Order: entries qualified with ``provider``; entries qualified with a
        provider named in the model ('groq/llama-…'); bare entries for the full
        name; bare entries for the name without that provider. First hit wins.
        """
        name = (model or "").strip().lower().removeprefix("models/")
        if not name:
            return None
        head, rest = _split(name)
        attempts: list[tuple[str | None, str]] = []
        if provider:
            attempts.append((provider.strip().lower(), name))
        if head:
            attempts.append((head, rest))
        attempts.append((None, name))
        if head:
            attempts.append((None, rest))
        for space, wanted in attempts:
            key = self._longest(self._by_provider.get(space, {}), wanted)
            if key is not None:
                return space, key
        return None

    @staticmethod
    def _longest(names: Mapping[str, Price], model: str) -> str | None:
        """The exact key, else the snapshot's key; '*' (length 0) only when nothing else matches."""
        hits = [key for key in names if key_names(key, model)]
        if not hits:
            return None
        return max(hits, key=lambda k: 0 if k == "*" else len(k))

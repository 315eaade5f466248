"""Operator price overrides: set or remove the price of a model, audited.

Overrides sit on top of the shipped table (``stockyard/data/prices.json``) and win over
it for the same key; a running server applies them on its next reload. Rates are given
in USD per 1M tokens as decimal text and stored as integer µ¢ per 1M tokens.
"""

from __future__ import annotations

import datetime
import re
import sqlite3
from decimal import Decimal
from typing import Any, Mapping

from ..limits import MAX_PRICE_UC
from ..pricing import RATE_FIELDS, TOKEN_COUNTS, UNITS, Price, PriceTable, format_usd, mode_price, parse_usd_per_m
from ..store import storable
from ..times import now_iso
from . import Operations, invalid, not_found

_MODEL = re.compile(r"^[^\s]{1,200}$")


def check_model(model: Any) -> str:
    # storable: no NUL or lone surrogate (PostgreSQL's text has none, nor has a model's name)
    bad = not isinstance(model, str) or not _MODEL.match(model.strip()) or not storable(model)
    if bad or model.strip().lower().startswith("sk-"):
        raise invalid(
            "model must be a model name without spaces (up to 200 characters, not starting "
            "with 'sk-'), e.g. gpt-4o-mini or groq/llama-3.3-70b",
            "model",
        )
    return model.strip().lower()


def parse_rates(rates: Mapping[str, Any]) -> Price:
    """USD per 1M tokens (or 1M ``unit``s) as decimal text (or whole numbers) → a Price;
    cached/cache write default to input."""
    given: dict[str, str] = {}
    for name, value in rates.items():
        if value is None:
            continue
        if name == "unit":
            if value not in UNITS:
                raise invalid(f"unit must be one of {', '.join(UNITS)}", "unit")
            given["unit"] = value
            continue
        if name not in RATE_FIELDS:
            raise invalid(f"unknown price field {name!r}; use {', '.join(RATE_FIELDS)}", name)
        if type(value) is int:
            value = str(value)
        if not isinstance(value, str):
            raise invalid(f'{name} must be a decimal number of USD per 1M tokens, like "0.15"', name)
        try:
            rate = parse_usd_per_m(value)
        except ValueError as exc:
            raise invalid(f"bad price: {exc}", name) from None
        if rate > MAX_PRICE_UC:
            raise invalid(f"{name} must be at most {format_usd(MAX_PRICE_UC, 2)} per 1M tokens, got {value!r}", name)
        given[name] = value
    if given.get("unit", "token") != "token":
        given.setdefault("output", "0")  # a unit price has one rate: input
    for required in ("input", "output"):
        if required not in given:
            raise invalid(f"{required} is required (USD per 1M tokens)", required)
    try:
        return Price.from_usd(given)
    except ValueError as exc:
        raise invalid(f"bad price: {exc}") from None


def usd(price: Price) -> dict[str, str | None]:
    """A price as USD per 1M tokens, exact ('$0.075')."""
    return {
        "input": format_usd(price.input, 2),
        "cached_input": format_usd(price.cached_input, 2),
        "cache_write": format_usd(price.cache_write, 2),
        "output": format_usd(price.output, 2),
        "reasoning": None if price.reasoning is None else format_usd(price.reasoning, 2),
        "media_input": None if price.media_input is None else format_usd(price.media_input, 2),
        "media_output": None if price.media_output is None else format_usd(price.media_output, 2),
    }


def _tier(price: Price) -> dict[str, Any] | None:
    """A model's prompt-length tier: above how many prompt tokens, and its rates."""
    if price.long_context is None:
        return None
    return {"above": price.long_context_above, "usd_per_1m": usd(price.long_context)}


def _change(price: Price) -> dict[str, Any] | None:
    """A dated price change: its day (UTC) and the rates from then on."""
    if price.changed is None or price.changes_on_ms is None:
        return None
    day = datetime.datetime.fromtimestamp(price.changes_on_ms / 1000, datetime.timezone.utc).date().isoformat()
    return {"on": day, "usd_per_1m": usd(price.changed), "long_context": _tier(price.changed)}


def _modes(price: Price) -> list[dict[str, Any]]:
    """A model's modes (``Price.modes``): each one's multiple as an exact decimal and its rates."""
    out = []
    for name, num, den in price.modes:
        priced = mode_price(price, name)
        multiple = str(Decimal(num) / Decimal(den))  # exact: a multiple has at most 8 decimals
        out.append({"mode": name, "multiple": multiple, "usd_per_1m": usd(priced) if priced else None})
    return out


def load_overrides(conn: sqlite3.Connection) -> dict[str, Price]:
    return {
        r["model"]: Price(
            r["input_uc"],
            r["cached_input_uc"],
            r["cache_write_uc"],
            r["output_uc"],
            r["reasoning_uc"],
            r["unit"],
            r["media_input_uc"],
            r["media_output_uc"],
        )
        for r in conn.execute("SELECT * FROM price_overrides ORDER BY model")
    }


def list_prices(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every priced model, rates in µ¢ per 1M and in USD, with where each came from."""
    overrides = load_overrides(conn)
    table = PriceTable.load(overrides)
    now = [(key, price, price.current()) for key, price in table.entries()]
    return [
        {
            "model": key,
            "source": "override" if key in overrides else "shipped",
            "input_uc": p.input,
            "cached_input_uc": p.cached_input,
            "cache_write_uc": p.cache_write,
            "output_uc": p.output,
            "reasoning_uc": p.reasoning,
            "media_input_uc": p.media_input,
            "media_output_uc": p.media_output,
            "unit": p.unit,
            **{name: getattr(p, name) for name in TOKEN_COUNTS},  # the model's counts a budget holds
            "usd_per_1m": usd(p),
            "long_context": _tier(p),
            "modes": _modes(p),  # priority, flex, fast, us: multiples of these rates
            "changes": _change(shipped) if p is shipped else None,  # a change still to come
        }
        for key, shipped, p in now
    ]


def set_price(ops: Operations, model: Any, rates: Mapping[str, Any]) -> dict[str, Any]:
    """Add or replace the override for ``model``."""
    name = check_model(model)
    price = parse_rates(rates)

    def apply(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO price_overrides (model, input_uc, cached_input_uc, cache_write_uc, output_uc, "
            "reasoning_uc, unit, media_input_uc, media_output_uc, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (model) DO UPDATE SET "
            "input_uc = excluded.input_uc, cached_input_uc = excluded.cached_input_uc, "
            "cache_write_uc = excluded.cache_write_uc, output_uc = excluded.output_uc, "
            "reasoning_uc = excluded.reasoning_uc, unit = excluded.unit, "
            "media_input_uc = excluded.media_input_uc, media_output_uc = excluded.media_output_uc, "
            "updated_at = excluded.updated_at",
            (
                name,
                price.input,
                price.cached_input,
                price.cache_write,
                price.output,
                price.reasoning,
                price.unit,
                price.media_input,
                price.media_output,
                now_iso(),
            ),
        )

    ops.change("prices.set", f"price:{name}", {"model": name, "unit": price.unit, "usd_per_1m": usd(price)}, apply)
    return {"model": name, "source": "override", "unit": price.unit, "usd_per_1m": usd(price)}


def unset_price(ops: Operations, model: Any) -> dict[str, Any]:
    """Remove an override; the shipped price (if any) applies again."""
    name = check_model(model)

    def apply(conn: sqlite3.Connection) -> None:
        if conn.execute("DELETE FROM price_overrides WHERE model = ?", (name,)).rowcount == 0:
            raise not_found(f"price override for {name!r}")

    ops.change("prices.unset", f"price:{name}", {"model": name}, apply)
    return {"model": name, "removed": True}

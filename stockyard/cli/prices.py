"""``stockyard prices``: the price table (shipped, with operator overrides) and changes to it."""

from __future__ import annotations

import argparse

from ..operations import prices as price_ops
from ..pricing import UNITS
from .common import actions, open_ops, open_store, print_json, print_json_lines, print_table, runs


def register(sub) -> None:
    prices = actions(
        sub,
        "prices",
        help="model prices: list, set, unset",
        description="Prices in USD per 1M tokens. Overrides set here win over the shipped table "
        "and are audited; a running server applies them within a second.",
    )

    ls = prices.add_parser(
        "list",
        help="every priced model",
        description="Every priced model in USD per 1M tokens: the shipped table with this "
        "database's overrides on top (SOURCE says which).",
    )
    ls.add_argument("--model", metavar="TEXT", help="only models whose name contains TEXT")
    runs(ls, list_, json=True)

    s = prices.add_parser(
        "set",
        help="add or replace a model's price",
        description="Set a model's price in USD per 1M tokens (decimal, up to 8 places). "
        "Cached input, cache write and media input default to the input price; reasoning "
        "and media output default to the output price. MODEL may be provider-qualified "
        "(groq/llama-3.3-70b); longer names win, so a dated model uses its "
        "family's price. MODEL/MODE (gpt-5/priority, claude-opus-5-5/fast, claude-opus-4-6/fast/us) "
        "prices a model in a mode of its provider's (priority, flex, fast, us), over the shipped multiple.",
    )
    s.add_argument("model", metavar="MODEL")
    s.add_argument("--input", required=True, metavar="USD")
    s.add_argument("--output", metavar="USD", help="required for token prices")
    s.add_argument("--cached-input", metavar="USD")
    s.add_argument("--cache-write", metavar="USD")
    s.add_argument("--reasoning", metavar="USD")
    s.add_argument(
        "--media-input",
        metavar="USD",
        help="audio or image input tokens (gpt-4o-transcribe, gpt-image-1; default: input)",
    )
    s.add_argument(
        "--media-output", metavar="USD", help="image or audio output tokens (Gemini's image models; default: output)"
    )
    s.add_argument(
        "--unit",
        choices=UNITS,
        default="token",
        help="what --input is per 1M of: token (default), image (keys model/size/quality, "
        "e.g. dall-e-3/1024x1024/hd), second of audio, character of speech input, call of a hosted "
        "tool (keys openai/web_search_call, openai/file_search_call: see README's pricing)",
    )
    runs(s, set_, json=True)

    u = prices.add_parser(
        "unset",
        help="remove an override (the shipped price applies again)",
        description="Remove a price override (audited); the shipped price, if any, applies again.",
    )
    u.add_argument("model", metavar="MODEL")
    runs(u, unset)


def list_(args: argparse.Namespace) -> int:
    rows = price_ops.list_prices(open_store(args).read())
    if args.model:
        rows = [r for r in rows if args.model.lower() in r["model"]]
    if args.json:
        print_json_lines(rows)
        return 0

    def columns(rates: dict) -> dict:  # a row's USD columns from a price's usd_per_1m
        return {f"{k}_usd": v for k, v in rates["usd_per_1m"].items()}

    shown = []
    for r in rows:
        shown.append({**r, **columns(r)})
        tier = r["long_context"]
        if tier:  # the rates of a request whose prompt is above the threshold, on a row of their own
            shown.append({**r, **columns(tier), "model": f"  prompt > {tier['above']:,} tokens"})
        for mode in r["modes"]:  # a mode's rates (OpenAI's tiers, Claude's fast mode, US-only), rows of their own
            if mode["usd_per_1m"]:
                shown.append({**r, **columns(mode), "model": f"  {mode['mode']} (x{mode['multiple']})"})
        change = r["changes"]
        if change:  # a dated change still to come, on a row of its own
            shown.append({**r, **columns(change), "model": f"  from {change['on']}"})
    print_table(
        shown,
        [
            ("model", "MODEL"),
            ("input_usd", "INPUT"),
            ("cached_input_usd", "CACHED"),
            ("cache_write_usd", "CACHE WRITE"),
            ("output_usd", "OUTPUT"),
            ("reasoning_usd", "REASONING"),
            ("media_input_usd", "MEDIA IN"),
            ("media_output_usd", "MEDIA OUT"),
            ("unit", "PER 1M"),
            ("source", "SOURCE"),
        ],
        empty="no prices",
    )
    print(
        "USD per 1M of PER 1M (tokens, images, seconds, characters or calls); '-' means the output price "
        "(REASONING, MEDIA OUT: image or audio output tokens) or the input price (MEDIA IN); an indented "
        "priority, flex, fast or us row: the model's price in that mode (flex is half on every model; a "
        "mode not listed is unpriced unless set as MODEL/MODE)"
    )
    return 0


def set_(args: argparse.Namespace) -> int:
    rates = {
        "input": args.input,
        "output": args.output,
        "cached_input": args.cached_input,
        "cache_write": args.cache_write,
        "reasoning": args.reasoning,
        "media_input": args.media_input,
        "media_output": args.media_output,
        "unit": args.unit,
    }
    result = price_ops.set_price(open_ops(args), args.model, rates)
    if args.json:
        print_json(result)
    else:
        usd = result["usd_per_1m"]
        print(
            f"price of {result['model']} set (USD per 1M {result['unit']}s): input {usd['input']}, "
            f"cached {usd['cached_input']}, cache write {usd['cache_write']}, output {usd['output']}"
            + (f", reasoning {usd['reasoning']}" if usd["reasoning"] else "")
            + (f", media input {usd['media_input']}" if usd["media_input"] else "")
            + (f", media output {usd['media_output']}" if usd["media_output"] else "")
        )
    return 0


def unset(args: argparse.Namespace) -> int:
    result = price_ops.unset_price(open_ops(args), args.model)
    print(f"price override of {result['model']} removed")
    return 0

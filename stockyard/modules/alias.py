"""``alias``: model names clients use, mapped to the models that serve them, before routing.

``aliases`` renames (``"fast": "groq/llama-3.3-70b"``); ``splits`` sends a share of the
requests for a name to each of several models, by weight (an A/B test). The client's model
stays on the trace as asked; the model used is ``ctx.routed_model`` (and the trace's
provider / served model). Answers say which model served them in ``x-stockyard-routed-model``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ..context import RequestContext
from .base import Module
from .schema import ConfigError, Field, map_of, number, text

MAX_ENTRIES = 1000


def _split(name: str, value: Any) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f'split {name!r} must be a non-empty list of {{"model": …, "weight": …}}')
    out: list[dict[str, Any]] = []
    for i, arm in enumerate(value):
        if not isinstance(arm, dict) or set(arm) - {"model", "weight"} or "model" not in arm:
            raise ValueError(f'split {name!r} item {i} must be {{"model": NAME, "weight": N}}')
        out.append(
            {
                "model": text(f"split {name!r} item {i} model", arm["model"]),
                "weight": number(f"split {name!r} item {i} weight", arm.get("weight", 1), 0, 1_000_000),
            }
        )
    if not sum(arm["weight"] for arm in out) > 0:
        raise ValueError(f"split {name!r} needs at least one weight above 0")
    return out


@dataclass(frozen=True)
class AliasOptions:
    aliases: dict[str, str]
    splits: dict[str, tuple[list[str], list[float]]]


class Alias(Module):
    """Model aliases and weighted splits (A/B), applied before routing."""

    name = "alias"
    summary = "model aliases (fast → groq/llama-3.3-70b) and weighted A/B splits, applied before routing"
    schema = {
        "aliases": Field(
            "dict",
            {},
            'name → model, e.g. {"fast": "groq/llama-3.3-70b"}',
            max=MAX_ENTRIES,
            check=map_of(lambda k, v: text(f"alias {k!r}", v)),
        ),
        "splits": Field(
            "dict",
            {},
            'name → [{"model": …, "weight": …}, …]: each request picks one by weight',
            max=MAX_ENTRIES,
            check=map_of(_split),
        ),
    }

    @staticmethod
    def check_whole(config: dict) -> None:
        both = sorted(set(config["aliases"]) & set(config["splits"]))
        if both:
            raise ConfigError("alias.splits", f"{both[0]!r} is both an alias and a split; keep one")

    def compile(self, config: dict) -> AliasOptions:
        splits = {
            name: ([a["model"] for a in arms], [a["weight"] for a in arms]) for name, arms in config["splits"].items()
        }
        return AliasOptions(dict(config["aliases"]), splits)

    def before(self, ctx: RequestContext) -> None:
        model = ctx.routed_model or ctx.model
        if not model:
            return
        opts: AliasOptions = self.options(ctx)
        target = opts.aliases.get(model)
        if target is None and model in opts.splits:
            models, weights = opts.splits[model]
            target = random.choices(models, weights)[0]
        if target is not None:
            ctx.routed_model = target
            ctx.reply_headers["x-stockyard-routed-model"] = target

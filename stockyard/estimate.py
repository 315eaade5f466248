"""The worst case of a request before it goes upstream: tokens and cost.

Budgets reserve this cost and rate limits count these tokens at admission; both are
corrected to the real usage when the request ends. Input is estimated from the body
length (4 bytes a token, rounded up: a deliberate over-estimate for English text, and
JSON punctuation counts too); output is the request's own cap on output tokens, or
``default_max_tokens`` when it sets none.
"""

from __future__ import annotations

from .pipeline import RequestContext
from .pricing import PER, Price

OUTPUT_CAPS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
NO_OUTPUT = ("embeddings", "count_tokens")


def input_tokens(ctx: RequestContext) -> int:
    return -(-len(ctx.raw) // 4)


def output_tokens(ctx: RequestContext, default_max_tokens: int) -> int:
    if ctx.endpoint in NO_OUTPUT:
        return 0
    for name in OUTPUT_CAPS:
        value = ctx.body.get(name)
        if type(value) is int and value > 0:
            return value
    return default_max_tokens


def request_tokens(ctx: RequestContext, default_max_tokens: int) -> int:
    """Input estimate + output cap: what a rate limit counts at admission."""
    return input_tokens(ctx) + output_tokens(ctx, default_max_tokens)


def worst_case_cost(price: Price, inputs: int, outputs: int) -> int:
    """µ¢, rounded up: every input token at the dearest input rate (a cache write can cost
    more than plain input), every output token at the dearest output rate (reasoning)."""
    input_rate = max(price.input, price.cached_input, price.cache_write)
    output_rate = max(price.output, price.reasoning or 0)
    return -(-(inputs * input_rate + outputs * output_rate) // PER)

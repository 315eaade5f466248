"""Refusals before Stockyard reads the stored items a request names (a conversation's, a previous
response's history, up to the body limit read and decoded): the 429s the ``ratelimit``,
``budget`` and ``userlimits`` modules would answer, asked without counting or holding anything.
A refusal counts nothing, so a key (or end user) past its rpm, a turn larger than its tpm, or a
budget used up, repeating a short request naming a large conversation, would otherwise cost that
read each time. The modules admit the request as ever once the items are in.
"""

from __future__ import annotations

from ..chain import Chain
from ..context import RequestContext
from .budget import BudgetModule
from .ratelimit import RateLimitModule
from .userlimits import UserLimitsModule

EARLY = (("ratelimit", RateLimitModule), ("budget", BudgetModule), ("userlimits", UserLimitsModule))


def check_early(chain: Chain, ctx: RequestContext) -> None:
    """Raise the refusal a module that runs for this request would answer now (each ``check``)."""
    for name, kind in EARLY:
        module = chain.module(name, ctx)
        if isinstance(module, kind):
            module.check(ctx)

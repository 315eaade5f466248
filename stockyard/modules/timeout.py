"""``timeout``: how long to wait for a provider, per model, and a deadline for the whole request.

``models`` maps globs to read timeouts in seconds, matched against ``provider/model`` and
the bare model of each attempt (so fallbacks get their own); the most specific pattern wins
— an exact name over a glob, a longer glob over a shorter one; ``read_timeout_s`` applies to the rest (0: the server's
``STOCKYARD_UPSTREAM_TIMEOUT``). ``deadline_s`` bounds the whole request — retries,
back-off and a streamed answer included: past it the client gets a 504 (or, mid-stream, an
error event). It runs before the cache, so a request waiting on an identical one's answer
gives up at its deadline too (:func:`deadline_error`, the one 504 every wait answers).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from ..context import RequestContext
from ..errors import ProxyError
from .base import Module
from .schema import Field, map_of, number

MAX_S = 86_400.0


@dataclass(frozen=True)
class TimeoutOptions:
    rules: tuple[tuple[str, float], ...]
    default_s: float | None
    deadline_s: float | None

    def read_timeout(self, provider: str, model: str) -> float | None:
        names = (f"{provider}/{model}".lower(), model.lower())
        for pattern, seconds in self.rules:
            if any(fnmatchcase(name, pattern) for name in names):
                return seconds
        return self.default_s


def deadline_error(ctx: RequestContext) -> ProxyError:
    """The 504 of a request past its deadline, wherever it was waiting (the provider, the cache)."""
    assert ctx.deadline is not None
    return ProxyError(
        504,
        f"the request did not finish within its deadline of {ctx.deadline - ctx.started:g}s",
        code="deadline_exceeded",
    )


class Timeout(Module):
    """Per-model upstream read timeouts and a total deadline per request."""

    name = "timeout"
    summary = "per-model upstream read timeouts (glob → seconds) and a total deadline per request (504)"
    schema = {
        "models": Field(
            "dict",
            {},
            'model glob → read timeout in seconds, e.g. {"gpt-4o*": 30}',
            max=1000,
            check=map_of(lambda k, v: number(f"timeout for {k!r}", v, 0.01, MAX_S)),
        ),
        "read_timeout_s": Field(
            "float", 0.0, "read timeout for models no glob matches; 0 for the server's", min=0, max=MAX_S
        ),
        "deadline_s": Field(
            "float", 0.0, "the most a request may take in all, retries included; 0 for none", min=0, max=MAX_S
        ),
    }

    def compile(self, config: dict) -> TimeoutOptions:
        rules = tuple(
            sorted(
                ((pattern.lower(), seconds) for pattern, seconds in config["models"].items()),
                key=lambda rule: (any(c in rule[0] for c in "*?["), -len(rule[0])),
            )
        )
        return TimeoutOptions(rules, config["read_timeout_s"] or None, config["deadline_s"] or None)

    def before(self, ctx: RequestContext) -> None:
        opts: TimeoutOptions = self.options(ctx)
        if opts.rules or opts.default_s:
            ctx.timeouts = opts
        if opts.deadline_s:
            ctx.deadline = ctx.started + opts.deadline_s

"""``guard``: request policies checked before anything is spent.

Allowed / denied models (shell-style globs, matched against the model actually used —
after aliasing — both as ``provider/model`` and bare, and against the provider it routes to:
the route, each deployment and each fallback is checked as ``provider/model`` too; an allow list
naming a provider, ``groq/*``, is judged there only, so a bare name routed to groq passes it), a
``max_tokens`` ceiling that
clamps or rejects, a maximum request size and a maximum number of messages. Refusals are
errors in the client's dialect: 403 for a model, 413 for size, 400 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Callable

from ..context import RequestContext
from ..errors import ProxyError
from ..limits import MAX_TOKENS, request_numbers
from .base import Module
from .schema import Field

if TYPE_CHECKING:
    from ..chain import Chain

# Where each endpoint's body keeps its conversation turns (max_messages counts them).
MESSAGE_FIELDS = {"responses": "input", "compact": "input", "generate": "contents"}


def _globs(value: list) -> list:
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"items must be non-empty model names or globs, got {item!r}")
    return [item.strip() for item in value]


@dataclass(frozen=True)
class GuardOptions:
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    max_tokens: int
    max_tokens_mode: str
    max_input_bytes: int
    max_messages: int


def matches(patterns: tuple[str, ...], names: tuple[str, ...]) -> str | None:
    """The first pattern that matches any of the names (case-insensitive), or None."""
    for pattern in patterns:
        low = pattern.lower()
        if any(fnmatchcase(name.lower(), low) for name in names):
            return pattern
    return None


def names_of(*models: str) -> tuple[str, ...]:
    """Each name as written and, for ``provider/model``, the model alone: the names the lists match.
    The route's ``provider/model`` is among them, so ``groq/*`` also refuses a bare name that
    routes to groq, a fallback to it and a deployment on it."""
    out: list[str] = []
    for model in models:
        out.append(model)
        head, sep, rest = model.partition("/")
        if sep and rest:
            out.append(rest)
    return tuple(out)


class Guard(Module):
    """Allowed/denied models, max_tokens ceiling, input size and message count limits."""

    name = "guard"
    summary = "request policies: allowed/denied models, max_tokens ceiling (clamp or reject), input size, messages"
    schema = {
        "allow_models": Field("list", [], "globs of models that may be used; empty allows all", max=1000, check=_globs),
        "deny_models": Field(
            "list", [], "globs of models that may not be used (wins over allow)", max=1000, check=_globs
        ),
        "max_tokens": Field(
            "int",
            0,
            "ceiling for max_tokens / max_completion_tokens / max_output_tokens (per choice); 0 for none",
            min=0,
            max=MAX_TOKENS,
        ),
        "max_tokens_mode": Field(
            "enum", "clamp", "over the ceiling: clamp to it, or reject with 400", choices=("clamp", "reject")
        ),
        "max_input_bytes": Field(
            "int", 0, "largest request body in bytes; 0 for no limit beyond the server's", min=0, max=1 << 40
        ),
        "max_messages": Field("int", 0, "most messages in one request; 0 for no limit", min=0, max=1_000_000),
    }

    def compile(self, config: dict) -> GuardOptions:
        return GuardOptions(
            tuple(config["allow_models"]),
            tuple(config["deny_models"]),
            config["max_tokens"],
            config["max_tokens_mode"],
            config["max_input_bytes"],
            config["max_messages"],
        )

    def before(self, ctx: RequestContext) -> None:
        opts: GuardOptions = self.options(ctx)
        model = ctx.routed_model or ctx.model
        if model and (opts.allow or opts.deny):
            asked = ctx.model or model
            # The name as asked, at once; an allow list naming a provider (``groq/*``) only where the
            # provider is known — the route step, each deployment and fallback — so a bare name that
            # routes to groq passes it. Both before anything is spent.
            early = opts if not any("/" in p for p in opts.allow) else replace(opts, allow=())
            self._check_model(early, names_of(model), asked if asked == model else f"{asked} ({model})")
            ctx.model_policy = lambda provider, served, name: self._check_model(
                opts, names_of(name, f"{provider}/{served}"), asked if name == asked else f"{asked} ({name})"
            )
        sent = len(ctx.raw) + (ctx.conversation.history_bytes if ctx.conversation is not None else 0)
        if opts.max_input_bytes and sent > opts.max_input_bytes:
            stored = (
                " with the stored items it names (conversation, previous_response_id)" if sent > len(ctx.raw) else ""
            )
            raise ProxyError(
                413,
                f"request body is {sent} bytes{stored}; this proxy allows at most {opts.max_input_bytes}",
                code="request_too_large",
            )
        messages = ctx.body.get(MESSAGE_FIELDS.get(ctx.endpoint, "messages"))
        if opts.max_messages and isinstance(messages, list) and len(messages) > opts.max_messages:
            raise ProxyError(
                400,
                f"request has {len(messages)} messages; this proxy allows at most {opts.max_messages}",
                param="messages",
                code="too_many_messages",
            )
        if opts.max_tokens:
            self._check_tokens(opts, ctx)

    @staticmethod
    def _check_model(opts: GuardOptions, names: tuple[str, ...], shown: str) -> None:
        """Raise :meth:`_refusal`'s 403, if any."""
        refusal = Guard._refusal(opts, names, shown)
        if refusal is not None:
            raise refusal

    @staticmethod
    def _refusal(opts: GuardOptions, names: tuple[str, ...], shown: str) -> ProxyError | None:
        """The 403 when a name is denied, or an allow list names none of them; else None."""
        if matches(opts.deny, names) is not None or (opts.allow and matches(opts.allow, names) is None):
            return ProxyError(
                403, f"model {shown!r} is not allowed by this proxy's policy", param="model", code="model_not_allowed"
            )
        return None

    @staticmethod
    def _check_tokens(opts: GuardOptions, ctx: RequestContext) -> None:
        """Every per-choice output cap the body sets (checked as whole numbers at the edge)."""
        for field in request_numbers(ctx.body):
            value = field.value
            if not field.tokens or type(value) is not int or value <= opts.max_tokens:
                continue
            if opts.max_tokens_mode == "reject":
                raise ProxyError(
                    400,
                    f"{field.name} is {value}; this proxy allows at most {opts.max_tokens}",
                    param=field.name,
                    code="max_tokens_too_large",
                )
            field.container[field.key] = opts.max_tokens
            ctx.body_changed = True


def batch_policy(chain: "Chain", ctx: RequestContext) -> Callable[[str, str], ProxyError | None] | None:
    """Guard's model lists for the lines of a batch (which skip the chain and run under the provider's
    key): called with a line's provider and model, the 403 the lists give (``model_not_allowed``) or
    None; None itself when guard does not run for this key or names no models."""
    module = chain.module("guard", ctx)
    if not isinstance(module, Guard):
        return None
    opts: GuardOptions = module.options(ctx)
    if not (opts.allow or opts.deny):
        return None
    return lambda provider, model: Guard._refusal(opts, names_of(model, f"{provider}/{model}"), model)

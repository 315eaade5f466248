"""Where a request goes, resolved once: the step of the chain that sets ``ctx.route``.

It runs after the policy modules (alias renames the model; guard and redact may refuse, and
their refusals win over a model that routes nowhere) and before the modules that need the
route (budget prices it, cache keys by it) and the proxy (which calls it). A model that
routes nowhere is a 400 here (a 404 on the Gemini-native routes, as Google answers).
"""

from __future__ import annotations

from typing import Callable

from .context import RequestContext, Route
from .errors import GEMINI, ProxyError
from .providers import Registry


class RouteStep:
    """Always in the chain (not a module: nothing to configure or switch off)."""

    name = "route"

    def __init__(self, registry: Callable[[], Registry]) -> None:
        self._registry = registry

    def before(self, ctx: RequestContext) -> None:
        try:
            provider, model = self._registry().resolve(ctx.routed_model or ctx.model or "")
        except ProxyError as exc:
            if ctx.dialect == GEMINI and exc.code == "model_not_routable":  # Google's clients know this as a 404
                raise ProxyError(404, exc.message, param="model", code="model_not_found") from None
            raise
        ctx.route = Route(provider, model)

    def after(self, ctx: RequestContext) -> None:
        pass

"""Where a request goes, resolved once: the step of the chain that sets ``ctx.route``.

It runs after the policy modules (alias renames the model; guard and redact may refuse, and
their refusals win over a model that routes nowhere) and before the modules that need the
route (budget prices it, cache keys by it) and the proxy (which calls it). A model that
routes nowhere is a 400 here (a 404 on the Gemini-native routes, as Google answers).
"""

from __future__ import annotations

from typing import Callable

from .billing import Pricer
from .context import RequestContext, Route
from .deployments import ModelRoute, Models
from .errors import GEMINI, ProxyError
from .estimate import request_tokens
from .providers import Registry


def policy_refusal(ctx: RequestContext, provider: str, model: str, name: str) -> ProxyError | None:
    """Guard's 403 for sending the request (reached as ``name``) to ``provider``/``model``, else None."""
    if ctx.model_policy is None:
        return None
    try:
        ctx.model_policy(provider, model, name)
    except ProxyError as exc:
        return exc
    return None


def refused_deployments(ctx: RequestContext, route: ModelRoute, name: str) -> frozenset[str]:
    """The deployments of ``route`` guard's model lists refuse (reached as ``name``); when they
    refuse every one, guard's 403 for the first."""
    refusals = {
        d.key: refusal
        for d in route.deployments
        if (refusal := policy_refusal(ctx, d.provider.name, d.upstream_model, name)) is not None
    }
    if refusals and len(refusals) == len(route.deployments):
        raise next(iter(refusals.values()))
    return frozenset(refusals)


class RouteStep:
    """Always in the chain (not a module: nothing to configure or switch off)."""

    name = "route"

    def __init__(
        self, registry: Callable[[], Registry], models: Callable[[], Models] | None = None, pricer: Pricer | None = None
    ) -> None:
        self._registry = registry
        self._models = models
        self._pricer = pricer  # what an image sent inline counts against a deployment's tpm

    def _tokens(self, ctx: RequestContext, route: ModelRoute) -> int:
        """``request_tokens`` of the request served by ``route``: an image sent inline held as one of
        its deployments' largest images where each of them bounds it (``Pricer.deployed_each``; on a
        model without deployments, its route's), else as its base64."""
        each = None
        if self._pricer is not None:
            each = self._pricer.deployed_each(route.deployments) if route.deployments else self._pricer.inline_each(ctx)
        return request_tokens(ctx, ctx.default_output_cap, each)

    def before(self, ctx: RequestContext) -> None:
        name = ctx.routed_model or ctx.model or ""
        models = self._models() if self._models is not None else None
        route = models.get(name) if models is not None else None
        if models is not None and route is not None and (route.deployments or route.problems):
            self._deployed(ctx, models, route)
            self._check_policy(ctx, ctx.reply_headers.get("x-stockyard-routed-model", name))
            return
        try:
            provider, model = self._registry().resolve(name)
        except ProxyError as exc:
            if ctx.dialect == GEMINI and exc.code == "model_not_routable":  # Google's clients know this as a 404
                raise ProxyError(404, exc.message, param="model", code="model_not_found") from None
            raise
        ctx.route = Route(provider, model)
        self._check_policy(ctx, name)
        if models is not None and route is not None:  # no deployments: routed as any name, its fallbacks kept
            ctx.plan = models.plan(route, self._tokens(ctx, route))

    @staticmethod
    def _check_policy(ctx: RequestContext, name: str) -> None:
        """The guard's 403 for the provider/model the request is routed to (a bare name, an
        alias or a deployment may lead to a provider its lists refuse)."""
        if ctx.model_policy is not None and ctx.route is not None:
            ctx.model_policy(ctx.route.provider.name, ctx.route.model, name)

    def _deployed(self, ctx: RequestContext, models: Models, route: ModelRoute) -> None:
        """The deployment the strategy picks; when none is usable, the model's first usable fallback.
        Only claimed: counted against its rpm/tpm once the request goes upstream (``Plan.confirm``),
        never for a cache hit or a wait for an identical request's answer."""
        try:
            refused = refused_deployments(ctx, route, ctx.routed_model or ctx.model or "")
            ctx.plan = models.plan(route, self._tokens(ctx, route), refused=refused, claim=True)
        except ProxyError:
            for name in route.fallbacks:
                other = models.get(name)
                if ctx.key is not None and not ctx.key.allows_model(name, self._registry().routes_to):
                    continue  # never a model the key may not use
                try:
                    if other is not None and other.deployments:
                        refused = refused_deployments(ctx, other, name)
                        ctx.plan = models.plan(other, self._tokens(ctx, other), refused=refused, claim=True)
                    else:
                        provider, model = self._registry().resolve(name)
                        if ctx.model_policy is not None:
                            ctx.model_policy(provider.name, model, name)  # a fallback guard refuses: the next
                        ctx.route = Route(provider, model)
                except ProxyError:
                    continue
                ctx.reply_headers["x-stockyard-routed-model"] = name
                break
            else:
                raise
            if ctx.plan is None:
                return
        first = ctx.plan.first
        assert first is not None
        ctx.route = Route(first.provider, first.upstream_model)

    def after(self, ctx: RequestContext) -> None:
        pass

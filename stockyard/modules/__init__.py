"""The module registry: which modules exist, their fixed order, and the chain built from the table.

The order is fixed here and is the order of ``before`` hooks (``after`` hooks run in reverse):

1. ``ratelimit`` — count every request first, even ones a later stage refuses
2. ``alias``     — rename the model, so every later stage sees the model actually used
3. ``guard``     — request policy on the real model (allowed models, max_tokens, sizes)
4. ``redact``    — secrets and PII out of what is stored / sent upstream, or a 400
   (then the route is resolved, once: ``stockyard.routing``; always in the chain)
5. ``budget``    — reserve the worst-case cost of the (clamped, routed) request
   ``userlimits`` — the same per end user (budgets, rpm/tpm), for products that resell LLM features
6. ``timeout``   — per-model read timeouts and the request's deadline, for the upstream call and
   for the cache's wait on an identical request in flight
7. ``cache``     — answer from the cache; its key names the provider and model really asked
8. ``fallback``  — retries, fallback chains and circuit breakers, for the upstream call

Alias runs ahead of budget and cache because both need the real model (a budget prices it, a cache
key names it), and guard/redact sit early so a refused request costs nothing. The route is
resolved after guard and redact, so their refusals win over a model that routes nowhere,
and before budget and cache, which use it.

Enabled state and options live in the ``modules`` table (one row per module an operator
changed; no row means the module's defaults). :class:`Modules` builds the chain from those
rows on every reload; a disabled module is not in the chain at all.

Adding a module is one line in ``ORDER``. The contract is :class:`~.base.Module`: it is
built once as ``cls(services)`` (a :class:`~.base.ModuleServices`: settings, store, ledger,
pricer, project budgets — never the whole server), declares ``name``, ``summary``,
``schema`` and ``default_enabled``, and implements ``before(ctx)`` / ``after(ctx)``. A
module whose limits come from elsewhere (budgets and rate limits from the keys table)
declares no schema and ``default_enabled = True``: the table still switches it on and off,
and per-key ``overrides`` with ``enabled`` still apply to it. A class from outside this
package may skip the base: only ``name``, ``before`` and ``after`` are required, and it is
on by default.

Every module's configuration may carry ``overrides``::

    {"ttl_s": 600, "overrides": {"key:key_123": {"enabled": false},
                                  "project:research": {"ttl_s": 60}}}

A key's override wins over its project's; each names only what differs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from ..chain import Chain, HookFailures, Hooks
from .alias import Alias
from .base import Module, ModuleServices, Scoped
from .budget import BudgetModule
from .cache import Cache
from .fallback import Fallback
from .guard import Guard
from .ratelimit import RateLimitModule
from .redact import Redact
from .schema import ConfigError, Field, defaults, validate
from .timeout import Timeout
from .userlimits import UserLimitsModule

log = logging.getLogger("stockyard.modules")

# The chain, in order (see the module docstring for why).
ORDER: tuple[type[Module], ...] = (
    RateLimitModule,
    Alias,
    Guard,
    Redact,
    BudgetModule,
    UserLimitsModule,
    Timeout,  # before the cache: a wait for an identical request's answer ends at the deadline
    Cache,
    Fallback,
)

# The route step goes right before the first of these (they, and the proxy, use ctx.route).
ROUTED: tuple[type, ...] = (BudgetModule, UserLimitsModule, Timeout, Cache, Fallback)

OVERRIDE_PREFIXES = ("key:", "project:")

__all__ = [
    "ORDER",
    "Module",
    "Modules",
    "ModuleRow",
    "ModuleServices",
    "ConfigError",
    "Field",
    "find",
    "names",
    "check_config",
    "effective_config",
    "describe",
]


@dataclass(frozen=True)
class ModuleRow:
    """One row of the ``modules`` table."""

    name: str
    enabled: bool
    config: dict[str, Any]
    updated_at: str


# -- what a module class declares (with defaults for classes from outside this package) ----------


def schema_of(cls: type[Module]) -> Mapping[str, Field]:
    return getattr(cls, "schema", None) or {}


def default_enabled(cls: type[Module]) -> bool:
    return bool(getattr(cls, "default_enabled", True))


def summary_of(cls: type[Module]) -> str:
    text = getattr(cls, "summary", "") or (cls.__doc__ or "").strip().split("\n")[0]
    return text.strip()


def names() -> list[str]:
    return [cls.name for cls in ORDER]


def find(name: str) -> type:
    """The module class called ``name``, or a 404 listing the modules."""
    for cls in ORDER:
        if cls.name == name:
            return cls
    from ..errors import ProxyError

    raise ProxyError(404, f"no module named {name!r}; the modules are {', '.join(names())}", code="not_found")


# -- configuration ----------------------------------------------------------------------------


def _check_overrides(cls: type[Module]) -> Field:
    """The ``overrides`` option every module has: scope → partial options (+ ``enabled``)."""
    scoped_fields = {**schema_of(cls), "enabled": Field("bool", True, "switch the module for this scope")}

    def check(value: dict) -> dict:
        out = {}
        for scope, values in value.items():
            if not scope.startswith(OVERRIDE_PREFIXES) or scope.endswith(":"):
                raise ValueError(f"scope {scope!r} must be 'key:<key id>' or 'project:<project name>'")
            out[scope] = validate(f"{cls.name}.overrides[{scope!r}]", scoped_fields, values)
        return out

    return Field("dict", {}, 'per-key / per-project options: {"key:<id>": {...}, "project:<name>": {...}}', check=check)


def check_config(cls: type[Module], config: Any) -> dict[str, Any]:
    """Validate a stored or proposed (sparse) configuration; raises ConfigError naming the field."""
    cleaned = validate(cls.name, schema_of(cls), config, extra={"overrides": _check_overrides(cls)})
    check_whole = getattr(cls, "check_whole", None)
    if check_whole is not None:
        check_whole({**defaults(schema_of(cls)), **cleaned})
    return cleaned


def effective_config(cls: type[Module], stored: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults with the stored values on top."""
    return {**defaults(schema_of(cls)), **stored}


def parse_assignment(cls: type[Module], assignment: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line as (field, typed value); ``KEY.SUB=VALUE`` sets one
    entry of a dict option (the value is JSON when it parses as JSON, else text)."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(cls.name, f"expected KEY=VALUE, got {assignment!r}")
    fields = {**schema_of(cls), "overrides": _check_overrides(cls)}
    head, dot, sub = key.partition(".")
    field = fields.get(head)
    if field is None:
        raise ConfigError(f"{cls.name}.{head}", f"is not an option of {cls.name} (options: {', '.join(fields)})")
    if not dot:
        return head, field.parse(f"{cls.name}.{head}", text)
    if field.kind != "dict":
        raise ConfigError(f"{cls.name}.{head}", "is not an object; set it as KEY=VALUE")
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    return head, {sub: value}  # merged into the stored dict by the caller


def describe(cls: type[Module]) -> dict[str, Any]:
    """The module's name, summary, default state and option schema (for the API and CLI)."""
    return {
        "name": cls.name,
        "summary": summary_of(cls),
        "position": ORDER.index(cls) + 1,
        "default_enabled": default_enabled(cls),
        "options": {name: field.describe() for name, field in schema_of(cls).items()},
    }


# -- the chain ----------------------------------------------------------------------------------


class Modules:
    """One server's module instances (state survives reloads) and the chain built from the table."""

    def __init__(
        self,
        services: ModuleServices,
        order: tuple[type, ...] = ORDER,
        failures: HookFailures | None = None,
        route: Hooks | None = None,
    ) -> None:
        self.instances = [cls(services) for cls in order]
        self.failures = failures  # shared by every chain built, across reloads
        self.route = route  # the route step (stockyard.routing), placed before the ROUTED modules

    def get(self, name: str) -> Any:
        return next((m for m in self.instances if m.name == name), None)

    def build(self, rows: Mapping[str, ModuleRow]) -> Chain:
        """The chain for this configuration: enabled modules only, in order, configured."""
        chain: list[Any] = []
        route = self.route
        for module in self.instances:
            cls = type(module)
            if route is not None and cls in ROUTED:
                chain.append(route)
                route = None
            row = rows.get(module.name)
            enabled = row.enabled if row is not None else default_enabled(cls)
            try:
                config = check_config(cls, row.config if row is not None else {})
            except ConfigError as exc:
                log.error(
                    "module %s is off: its stored configuration is invalid (%s); fix it with "
                    "`stockyard modules set %s …`",
                    module.name,
                    exc,
                    module.name,
                )
                continue
            overrides: dict[str, dict] = config.pop("overrides", {})
            switches = {scope: o["enabled"] for scope, o in overrides.items() if "enabled" in o}
            if not enabled and not any(switches.values()):
                continue
            configure = getattr(module, "configure", None)
            if configure is not None:
                scoped = {scope: {k: v for k, v in o.items() if k != "enabled"} for scope, o in overrides.items()}
                configure(effective_config(cls, config), {s: o for s, o in scoped.items() if o})
            chain.append(Scoped(module, enabled, switches) if switches else module)
        if route is not None:
            chain.append(route)
        return Chain(chain, self.failures)

"""What a module is: a name, an option schema with defaults, and two hooks.

A module instance lives as long as the server (so a circuit breaker or a limiter keeps its
state across configuration changes). When the configuration changes, the registry calls
``configure`` with the validated options; the module compiles them once (regexes, globs)
into an immutable *options* object, and each request picks the one for its key or
project with :meth:`Module.options`. Swapping that object is atomic, so a request never
sees half a change.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ..context import RequestContext
from .schema import Field, defaults

if TYPE_CHECKING:
    from ..billing import Pricer
    from ..budgets import Budget, Ledger
    from ..config import Settings
    from ..store import Store


@dataclass(frozen=True)
class ModuleServices:
    """What modules may use of the server — nothing else of it reaches them."""

    settings: "Settings"
    store: "Store"  # reads on the request thread, writes through the writer
    ledger: "Ledger"  # budget reservations
    pricer: "Pricer"  # the price a routed request is charged at
    project_budgets: Callable[[], dict[str, "Budget"]]  # the current snapshot
    # Tell the webhooks (kind, data, summary); never blocks, never raises into a request.
    notify: Callable[[str, dict, str], Any] = lambda kind, data, summary: None


class Module:
    """The module contract: a name, an option schema with defaults, and two hooks.

    Every module shipped here subclasses it; a class from elsewhere needs only ``name``,
    ``before`` and ``after`` and a constructor taking :class:`ModuleServices`.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    schema: ClassVar[dict[str, Field]] = {}
    default_enabled: ClassVar[bool] = False

    def __init__(self, services: ModuleServices) -> None:
        self.services = services
        self._options: tuple[Any, dict[str, Any]] = (self.compile(defaults(self.schema)), {})

    def compile(self, config: dict[str, Any]) -> Any:
        """Turn validated options into what the hooks read; override to precompute."""
        return SimpleNamespace(**config)

    def configure(self, config: dict[str, Any], scoped: dict[str, dict[str, Any]]) -> None:
        """New options: ``config`` is complete (defaults filled in); ``scoped`` maps
        ``key:<id>`` / ``project:<name>`` to the options that differ for them."""
        base = self.compile(config)
        self._options = (base, {scope: self.compile({**config, **values}) for scope, values in scoped.items()})

    def options(self, ctx: RequestContext) -> Any:
        """The options for this request: its key's override, else its project's, else the base."""
        base, scoped = self._options
        if scoped:
            if ctx.key_id and ("key:" + ctx.key_id) in scoped:
                return scoped["key:" + ctx.key_id]
            if ctx.project and ("project:" + ctx.project) in scoped:
                return scoped["project:" + ctx.project]
        return base

    def before(self, ctx: RequestContext) -> None:
        """Runs before the request goes upstream; may refuse (ProxyError), rewrite or answer."""

    def after(self, ctx: RequestContext) -> None:
        """Runs after the answer (plain or streamed) reached the client, priced."""

    def status(self) -> dict[str, Any] | None:
        """Run-time state worth showing in the admin API (e.g. circuit breakers)."""
        return None


class Scoped:
    """A module switched on or off for some keys or projects (``overrides`` with ``enabled``).

    Only modules with such overrides are wrapped, so the others pay nothing for the check.
    """

    def __init__(self, module: Any, enabled: bool, switches: dict[str, bool]) -> None:
        self.module = module
        self.name = module.name
        self.enabled = enabled
        self.switches = switches

    def on(self, ctx: RequestContext) -> bool:
        if ctx.key_id:
            switch = self.switches.get("key:" + ctx.key_id)
            if switch is not None:
                return switch
        if ctx.project:
            switch = self.switches.get("project:" + ctx.project)
            if switch is not None:
                return switch
        return self.enabled

    def before(self, ctx: RequestContext) -> None:
        if self.on(ctx):
            self.module.before(ctx)

    def after(self, ctx: RequestContext) -> None:
        if self.on(ctx):
            self.module.after(ctx)

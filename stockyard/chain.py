"""The module chain: each module's ``before`` in order, their ``after`` hooks in reverse.

A module (``stockyard.modules.base.Module``) has two hooks: ``before`` (may refuse with a
ProxyError, rewrite the request, or answer it) and ``after`` (sees the outcome, plain or
streamed: ``ctx.attempt.response_body`` holds the answer as the client got it). The
registry of modules, their order and configuration live in ``stockyard.modules``.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Protocol

from .context import RequestContext
from .errors import ClientGone, ProxyError

log = logging.getLogger("stockyard.modules")


class Hooks(Protocol):
    """What the chain runs: a module, a module switched per key (``Scoped``), the route step."""

    name: str

    def before(self, ctx: RequestContext) -> None: ...

    def after(self, ctx: RequestContext) -> None: ...


class HookFailures:
    """What happens when a module's hook raises something other than a refusal.

    The first failure of each (module, hook) is logged with its traceback; every one is
    counted (``count``, e.g. the ``stockyard_module_errors_total`` metric), so a hook that
    fails on every request shows in /metrics without flooding the log.
    """

    def __init__(self, count: Callable[[str, str], None] | None = None) -> None:
        self._count = count
        self._logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def report(self, module: str, hook: str, exc: BaseException) -> None:
        with self._lock:
            first = (module, hook) not in self._logged
            self._logged.add((module, hook))
        if first:
            log.error(
                "module %r: its %s hook failed (%s: %s); the other modules' hooks still run. Later "
                "failures of this hook are counted in stockyard_module_errors_total, not logged.",
                module,
                hook,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        if self._count is not None:
            try:
                self._count(module, hook)
            except Exception:  # counting must never cost the request
                pass


class Chain:
    """Modules in order; ``after`` runs in reverse for every module whose ``before`` ran.

    Each hook runs in its own guard: a module that raises (a bug, a full queue) neither
    skips the other modules' ``after`` hooks — the budget module settles its reservation
    there — nor turns into a traceback. A ProxyError from ``before`` is a refusal and goes
    to the client as it is, a ClientGone (its client left while the hook waited) ends the
    request as departed; any other exception there becomes a 500 for that request.
    """

    def __init__(self, modules: list[Hooks] | None = None, failures: HookFailures | None = None) -> None:
        self.modules: list[Hooks] = list(modules or [])
        self.failures = failures or HookFailures()

    def runs(self, name: str, ctx: RequestContext) -> bool:
        """Whether the module called ``name`` runs for this request (in the chain, and on for its key)."""
        for module in self.modules:
            if module.name == name:
                on = getattr(module, "on", None)  # modules.base.Scoped: switched per key or project
                return bool(on(ctx)) if on is not None else True
        return False

    def module(self, name: str, ctx: RequestContext) -> object | None:
        """The module called ``name`` when it runs for this request (see :meth:`runs`), else None:
        for a route outside the chain that holds a request to one of its rules (files and batches
        to the key's rpm)."""
        for module in self.modules:
            if module.name == name:
                return getattr(module, "module", module) if self.runs(name, ctx) else None
        return None

    def before(self, ctx: RequestContext) -> None:
        ran: list[Hooks] = ctx.state.setdefault("_ran", [])
        for module in self.modules:
            ran.append(module)
            try:
                module.before(ctx)
            except (ProxyError, ClientGone):  # a refusal, or a client that left while a module waited
                raise
            except Exception as exc:
                self.failures.report(module.name, "before", exc)
                raise ProxyError(
                    500, f"the {module.name!r} module failed on this request; see the server log", code="module_error"
                ) from None
            if ctx.answer is not None:
                return

    def after(self, ctx: RequestContext) -> None:
        for module in reversed(ctx.state.get("_ran", [])):
            try:
                module.after(ctx)
            except Exception as exc:
                self.failures.report(module.name, "after", exc)

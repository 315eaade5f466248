"""``/api/modules``: list, show, switch and configure the modules of the request chain.

Changes go through :mod:`stockyard.operations.modules` (validated, audited, one
transaction) and reach the next request: the server reloads its chain on commit.
"""

from __future__ import annotations

from typing import Any

from ..operations import invalid
from ..operations import modules as module_ops
from . import ApiRequest, route

CHANGE_BODY = {
    "type": "object",
    "properties": {
        "enabled": {"type": "boolean"},
        "config": {"type": "object", "description": "options; null resets one to its default"},
    },
    "additionalProperties": False,
}


def _with_status(r: ApiRequest, view: dict[str, Any]) -> dict[str, Any]:
    """Add the module's run-time state in this server (breakers, cache size), when it has one."""
    module = r.app.modules.get(view["name"])
    status = getattr(module, "status", None)
    if status is not None:
        state = status()
        if state is not None:
            view["status"] = state
    return view


def _change(r: ApiRequest) -> tuple[dict, bool | None]:
    body = r.json()
    unknown = sorted(set(body) - {"enabled", "config"})
    if unknown:
        raise invalid(
            f'unknown field {unknown[0]!r}: send {{"enabled": true|false, "config": {{…}}}}', param=unknown[0]
        )
    enabled = body.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise invalid("'enabled' must be true or false", param="enabled")
    config = body.get("config", {})
    if not isinstance(config, dict):
        raise invalid("'config' must be a JSON object of options", param="config")
    return config, enabled


@route("GET", "/api/modules", "The modules of the request chain, in order, with their state and option schema")
def list_modules(r: ApiRequest) -> dict:
    return {"modules": [_with_status(r, m) for m in module_ops.list_modules(r.app.store.read())]}


@route("GET", "/api/modules/{name}", "One module: enabled, options in effect, option schema, run-time state")
def show_module(r: ApiRequest) -> dict:
    return _with_status(r, module_ops.show(r.app.store.read(), r.params["name"]))


@route("PUT", "/api/modules/{name}", "Replace a module's options (and optionally switch it)", body=CHANGE_BODY)
def put_module(r: ApiRequest) -> dict:
    config, enabled = _change(r)
    return module_ops.configure(r.ops(), r.params["name"], config, replace=True, enabled=enabled)


@route("PATCH", "/api/modules/{name}", "Change some of a module's options (null resets one)", body=CHANGE_BODY)
def patch_module(r: ApiRequest) -> dict:
    config, enabled = _change(r)
    return module_ops.configure(r.ops(), r.params["name"], config, enabled=enabled)


@route("POST", "/api/modules/{name}/enable", "Switch a module on (from the next request)")
def enable_module(r: ApiRequest) -> dict:
    return module_ops.set_enabled(r.ops(), r.params["name"], True)


@route("POST", "/api/modules/{name}/disable", "Switch a module off (from the next request)")
def disable_module(r: ApiRequest) -> dict:
    return module_ops.set_enabled(r.ops(), r.params["name"], False)

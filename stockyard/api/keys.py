"""``/api/keys`` and ``/api/projects``: client keys and project budgets (the same operations as the CLI)."""

from __future__ import annotations

from ..operations import keys as key_ops
from . import ApiRequest, Param, route
from .body import exact_json

_MONEY = {"type": "string", "description": 'US dollars as decimal text, e.g. "25.00"; null removes'}
_KEY_BODY = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "project": {"type": ["string", "null"]},
        "models": {"type": ["array", "null"], "items": {"type": "string"}},
        "expires": {"type": ["string", "null"], "description": "UTC date or ISO time"},
        "budget_usd": _MONEY,
        "budget_period": {"type": ["string", "null"], "enum": ["day", "month", "total", None]},
        "rpm": {"type": ["integer", "null"], "minimum": 1},
        "tpm": {"type": ["integer", "null"], "minimum": 1},
    },
}
_BUDGET_BODY = {
    "type": "object",
    "required": ["budget_usd", "period"],
    "properties": {"budget_usd": _MONEY, "period": {"type": "string", "enum": ["day", "month", "total"]}},
}


@route(
    "GET",
    "/api/keys",
    "Client keys with limits, spend in the current period and last use",
    query=(Param("live", "boolean", "leave out revoked keys"),),
)
def list_keys(r: ApiRequest) -> dict:
    live = r.bool_query("live")
    return {"keys": key_ops.list_keys(r.app.store.read(), include_revoked=not live)}


@route(
    "POST", "/api/keys", "Create a client key; the answer carries the key, shown this once", body=_KEY_BODY, status=201
)
def create_key(r: ApiRequest) -> dict:
    described, secret = key_ops.create_key(r.ops(), exact_json(r.req.body))
    return {**described, "key": secret}


@route("GET", "/api/keys/{key}", "One client key, by id or name")
def get_key(r: ApiRequest) -> dict:
    return key_ops.get_key(r.app.store.read(), r.params["key"])


@route("PATCH", "/api/keys/{key}", "Change a key's settings; null removes a limit", body=_KEY_BODY)
def update_key(r: ApiRequest) -> dict:
    return key_ops.update_key(r.ops(), r.params["key"], exact_json(r.req.body))


@route("POST", "/api/keys/{key}/revoke", "Revoke a key for good (its next request gets a 401)")
def revoke_key(r: ApiRequest) -> dict:
    return key_ops.revoke_key(r.ops(), r.params["key"])


@route("GET", "/api/projects", "Projects with their budgets and spend in the current period")
def list_projects(r: ApiRequest) -> dict:
    return {"projects": key_ops.list_projects(r.app.store.read())}


@route("GET", "/api/projects/{project}/budget", "A project's budget and spend")
def get_project_budget(r: ApiRequest) -> dict:
    conn = r.app.store.read()
    return key_ops.get_project(conn, key_ops.check_name(r.params["project"], "project"))


@route("PUT", "/api/projects/{project}/budget", "Set a project's budget (all its keys together)", body=_BUDGET_BODY)
def set_project_budget(r: ApiRequest) -> dict:
    body = exact_json(r.req.body)
    return key_ops.set_project_budget(r.ops(), r.params["project"], body.get("budget_usd"), body.get("period"))


@route("DELETE", "/api/projects/{project}/budget", "Remove a project's budget")
def clear_project_budget(r: ApiRequest) -> dict:
    return key_ops.clear_project_budget(r.ops(), r.params["project"])

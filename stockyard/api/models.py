"""``/api/models``: models clients name, their deployments and each deployment's live health.

Changes go through :mod:`stockyard.operations.models` (validated, audited); the health comes
from this server's memory (``App.health``): in flight, time to first byte, cooldown, breaker,
rpm/tpm used against the limits.
"""

from __future__ import annotations

from ..deployments import STRATEGIES
from ..operations import invalid
from ..operations import models as model_ops
from . import ApiRequest, route

_MODEL_DOC = {
    "strategy": {"type": "string", "enum": list(STRATEGIES)},
    "fallbacks": {"type": "array", "items": {"type": "string"}, "description": "models tried after every deployment"},
    "context_fallback": {
        "type": ["string", "null"],
        "description": "the larger-context model a 'context too long' error moves the request to",
    },
}
_DEPLOYMENT_DOC = {
    "name": {"type": "string", "description": "unique within the model; the provider's name when omitted"},
    "provider": {"type": "string"},
    "model": {"type": "string", "description": "the model name sent to the provider"},
    "weight": {"type": "integer", "minimum": 1},
    "priority": {"type": "integer", "minimum": 0, "description": "lower first"},
    "rpm": {"type": ["integer", "null"], "minimum": 1},
    "tpm": {"type": ["integer", "null"], "minimum": 1},
    "api_key": {
        "type": ["string", "null"],
        "writeOnly": True,
        "description": "the deployment's own key: stored encrypted, never returned; null: use the provider's",
    },
}
MODEL_BODY = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, **_MODEL_DOC}}
MODEL_UPDATE_BODY = {"type": "object", "properties": _MODEL_DOC}
DEPLOYMENT_BODY = {"type": "object", "required": ["provider", "model"], "properties": _DEPLOYMENT_DOC}
DEPLOYMENT_UPDATE_BODY = {"type": "object", "properties": {k: v for k, v in _DEPLOYMENT_DOC.items() if k != "name"}}


def listing(r: ApiRequest) -> list[dict]:
    """The stored models, each deployment with its health in this server now."""
    models = r.app.models()
    out = model_ops.rows(r.app.store.read())
    for m in out:
        route = models.get(m["name"])
        live = {d.name: d for d in route.deployments} if route is not None else {}
        for d in m["deployments"]:
            running = live.get(d["name"])
            d["health"] = models.health.snapshot(running) if running is not None else None
            d["key_status"] = running.provider.key_status if running is not None else "provider not configured"
        m["problems"] = list(route.problems) if route is not None else []
    return out


def _one(r: ApiRequest, name: str) -> dict:
    found = [m for m in listing(r) if m["name"] == name]
    return found[0] if found else {"name": name}


@route("GET", "/api/models", "Models with their deployments and each deployment's live health")
def list_models(r: ApiRequest) -> dict:
    return {"data": listing(r), "strategies": list(STRATEGIES)}


@route("POST", "/api/models", "Add a model (routed by its deployments and strategy)", body=MODEL_BODY, status=201)
def add_model(r: ApiRequest) -> tuple[int, dict]:
    body = r.json_fields(model_ops.MODEL_FIELDS)
    if "name" not in body:
        raise invalid('"name" is required', "name")
    model_ops.add_model(
        r.ops(),
        body["name"],
        strategy=body.get("strategy", "weighted"),
        fallbacks=body.get("fallbacks"),
        context_fallback=body.get("context_fallback"),
    )
    return 201, _one(r, body["name"])


@route("PATCH", "/api/models/{name}", "Change a model's strategy or fallbacks", body=MODEL_UPDATE_BODY)
def update_model(r: ApiRequest) -> dict:
    body = r.json_fields(model_ops.MODEL_FIELDS[1:])
    model_ops.update_model(r.ops(), r.params["name"], **body)
    return _one(r, r.params["name"])


@route("DELETE", "/api/models/{name}", "Remove a model and its deployments (its name routes as before)")
def remove_model(r: ApiRequest) -> dict:
    model_ops.remove_model(r.ops(), r.params["name"])
    return {"name": r.params["name"], "deleted": True}


@route(
    "POST",
    "/api/models/{name}/deployments",
    "Add a deployment to a model (the model is created when missing)",
    body=DEPLOYMENT_BODY,
    status=201,
)
def add_deployment(r: ApiRequest) -> tuple[int, dict]:
    model_ops.add_deployment(r.ops(), r.params["name"], r.json())
    return 201, _one(r, r.params["name"])


@route(
    "PATCH",
    "/api/models/{name}/deployments/{deployment}",
    "Change a deployment (its key included)",
    body=DEPLOYMENT_UPDATE_BODY,
)
def update_deployment(r: ApiRequest) -> dict:
    model_ops.update_deployment(r.ops(), r.params["name"], r.params["deployment"], r.json())
    return _one(r, r.params["name"])


@route("DELETE", "/api/models/{name}/deployments/{deployment}", "Remove a deployment from a model")
def remove_deployment(r: ApiRequest) -> dict:
    model_ops.remove_deployment(r.ops(), r.params["name"], r.params["deployment"])
    return _one(r, r.params["name"])

"""``/api/providers``: list, add, change and remove providers (keys are write-only)."""

from __future__ import annotations

from ..operations import invalid
from ..operations import providers as provider_ops
from ..providers import KINDS
from . import ApiRequest, route

_KEY_DOC = {
    "type": ["string", "null"],
    "writeOnly": True,
    "description": "the provider's API key: stored encrypted, never returned; null removes it",
}
_FIELDS_DOC = {
    "kind": {"type": "string", "enum": list(KINDS)},
    "base_url": {"type": "string", "description": "http(s) URL; the kind's default when omitted"},
    "models": {
        "type": "array",
        "items": {"type": "string"},
        "description": "model names or prefixes this provider serves",
    },
    "api_version": {"type": "string"},
    "api_key": _KEY_DOC,
    "responses": {
        "type": "boolean",
        "description": "an openai-compatible provider that speaks the Responses API (passed through, not translated)",
    },
}
CREATE_BODY = {
    "type": "object",
    "required": ["name", "kind"],
    "properties": {"name": {"type": "string", "pattern": provider_ops.NAME.pattern}, **_FIELDS_DOC},
}
UPDATE_BODY = {"type": "object", "properties": _FIELDS_DOC}


def _shown(r: ApiRequest, name: str) -> dict:
    """The provider as the server now routes to it (the change has been reloaded)."""
    provider = r.app.registry().by_name.get(name)
    return provider.public() if provider else {"name": name}


@route("GET", "/api/providers", "Providers from the environment and the database (never their keys)")
def list_providers(r: ApiRequest) -> dict:
    return {"data": [p.public() for p in r.app.registry().providers]}


@route("POST", "/api/providers", "Add a database provider; its key is stored encrypted", body=CREATE_BODY)
def add_provider(r: ApiRequest) -> tuple[int, dict]:
    body = r.json_fields(provider_ops.FIELDS)
    if "name" not in body or "kind" not in body:
        raise invalid('"name" and "kind" are required', "name" if "name" not in body else "kind")
    provider_ops.add(
        r.ops(),
        body["name"],
        body["kind"],
        base_url=body.get("base_url"),
        models=body.get("models"),
        api_version=body.get("api_version"),
        api_key=body.get("api_key"),
        responses=body.get("responses", False),
    )
    return 201, _shown(r, body["name"])


def update_provider(r: ApiRequest) -> dict:
    body = r.json_fields(provider_ops.FIELDS[1:])
    provider_ops.update(r.ops(), r.params["name"], **body)
    return _shown(r, r.params["name"])


route("PATCH", "/api/providers/{name}", "Change fields of a database provider, its key included", body=UPDATE_BODY)(
    update_provider
)
route("PUT", "/api/providers/{name}", "Same as PATCH: change the fields given", body=UPDATE_BODY)(update_provider)


@route("DELETE", "/api/providers/{name}", "Remove a database provider (an env one of that name reappears)")
def remove_provider(r: ApiRequest) -> dict:
    provider_ops.remove(r.ops(), r.params["name"])
    return {"name": r.params["name"], "deleted": True}

"""``GET /v1/models``: the union of what the configured providers serve.

Each provider is asked for its list in its own API — OpenAI-compatible ``/models``,
Anthropic ``/v1/models``, Gemini ``/v1beta/models`` — cached for a minute, short
timeout (Azure deployments cannot be listed with a data-plane key). Each id is given so
that routing leads back to the same provider — a bare name when it already routes
there, else ``provider/model``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING

from .providers import OPENAI_KINDS, Provider
from .providers.anthropic import auth_headers as anthropic_auth
from .providers.anthropic import base_path
from .providers.gemini import auth_headers as gemini_auth
from .providers.gemini import version_prefix
from .providers.openai import auth_headers
from .upstream import UpstreamError

if TYPE_CHECKING:
    from .app import App

CACHE_S = 60.0
_cache: dict[tuple[str, str], tuple[float, list[str]]] = {}
_lock = threading.Lock()


def _fetch(app: "App", provider: Provider) -> list[str]:
    """Ask the provider for its model ids in its own API; empty on any failure."""
    parse = openai_model_ids
    if provider.kind in OPENAI_KINDS:
        path, headers = "/models", auth_headers(provider)
    elif provider.kind == "anthropic":
        path, headers = base_path(provider, "/v1/models?limit=1000"), anthropic_auth(provider)
    elif provider.kind == "gemini":
        path, headers = version_prefix(provider) + "/models?pageSize=1000", gemini_auth(provider)
        parse = gemini_model_ids
    else:
        return []  # Azure lists resources, not deployments: clients name them as azure/<deployment>
    try:
        resp = app.pool.request(provider.base_url, "GET", path, headers, None, read_timeout=5.0)
        body = resp.read_all()
        return parse(json.loads(body)) if resp.status == 200 else []
    except (UpstreamError, ValueError, AttributeError, TypeError):
        return []


def openai_model_ids(doc: dict) -> list[str]:
    """Ids from ``{"data": [{"id": …}]}`` (OpenAI and Anthropic both answer this way)."""
    return [m["id"] for m in doc.get("data", []) if isinstance(m, dict) and isinstance(m.get("id"), str)]


def gemini_model_ids(doc: dict) -> list[str]:
    """Gemini model names without ``models/``, only those that can generate or embed."""
    wanted = {"generateContent", "embedContent"}
    return [m["name"].removeprefix("models/") for m in doc.get("models", [])
            if isinstance(m, dict) and isinstance(m.get("name"), str)
            and wanted & set(m.get("supportedGenerationMethods") or wanted)]


def upstream_models(app: "App", provider: Provider) -> list[str]:
    """Model ids a provider reports (empty if it cannot say right now)."""
    key = (provider.name, provider.base_url)
    with _lock:
        hit = _cache.get(key)
    if hit and time.monotonic() - hit[0] < CACHE_S:
        return hit[1]
    ids = [] if provider.key_error else _fetch(app, provider)
    with _lock:
        _cache[key] = (time.monotonic(), ids)
    return ids


def list_models(app: "App") -> list[dict]:
    registry = app.registry()
    out: list[dict] = []
    seen: set[str] = set()
    for provider in registry.providers:
        for name in upstream_models(app, provider):
            ident = name if registry.routes_to(name) == provider.name else f"{provider.name}/{name}"
            if ident in seen:
                continue
            seen.add(ident)
            out.append({"id": ident, "object": "model", "created": 0, "owned_by": provider.name})
    return out

"""``GET /v1/models``: the union of what the configured providers serve.

OpenAI-compatible providers are asked for their list (cached for a minute, short
timeout); each id is given so that routing leads back to the same provider — a bare
name when it already routes there, else ``provider/model``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING

from .providers import OPENAI_KINDS, Provider
from .providers.openai import auth_headers
from .upstream import UpstreamError

if TYPE_CHECKING:
    from .app import App

CACHE_S = 60.0
_cache: dict[tuple[str, str], tuple[float, list[str]]] = {}
_lock = threading.Lock()


def upstream_models(app: "App", provider: Provider) -> list[str]:
    """Model ids a provider reports (empty if it cannot say right now)."""
    key = (provider.name, provider.base_url)
    with _lock:
        hit = _cache.get(key)
    if hit and time.monotonic() - hit[0] < CACHE_S:
        return hit[1]
    ids: list[str] = []
    if provider.kind in OPENAI_KINDS and not provider.key_error:
        try:
            resp = app.pool.request(provider.base_url, "GET", "/models", auth_headers(provider), None,
                                    read_timeout=5.0)
            body = resp.read_all()
            if resp.status == 200:
                data = json.loads(body).get("data", [])
                ids = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (UpstreamError, ValueError, AttributeError):
            ids = []
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

"""Gemini-native routes: what the URL says, where the client key is, and the model list.

Google's clients put the model and the method in the URL
(``/v1beta/models/{model}:generateContent``; the SDK's v1 form ``/v1/models/…:method`` too) and
the key in ``x-goog-api-key`` or ``?key=``. The server reads all of that here, before the body:
the key is moved to the header the one key check reads (``x-api-key``), so it is checked like
every other client key and never travels further. The access log prints the path without its
query, so a ``?key=`` never reaches a log. The request itself then takes the proxy path with the
``gemini`` dialect (``providers/gemini_native.py`` sends it upstream).
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping
from urllib.parse import parse_qs, unquote

from .context import NativeCall
from .errors import ProxyError
from .httpio import Response, json_response
from .keys import KeyRecord, check_model
from .providers.gemini_native import check_model as check_url_model

if TYPE_CHECKING:
    from .app import App

# Google's method → Stockyard's endpoint (what budgets, rate limits, prices and traces know).
ACTIONS = {
    "generateContent": "generate",
    "streamGenerateContent": "generate",
    "countTokens": "count_tokens",
    "embedContent": "embeddings",
    "batchEmbedContents": "embeddings",
}
ACTION_PATH = re.compile(r"/(?:v1beta|v1)/models/([^:]+):([A-Za-z]*)")
MODELS_PATH = re.compile(r"/(v1beta|v1)/models(?:/([^:]+))?")
CACHES_PATH = re.compile(r"/v1/cachedContents(?:/.*)?$")  # Google's error shape under /v1 too (gemini_cache), any depth
PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000  # Google's default and largest models.list page
GENERATE_METHODS = ["generateContent", "streamGenerateContent", "countTokens"]
EMBED_METHODS = ["embedContent", "batchEmbedContents", "countTokens"]


@dataclass(frozen=True)
class Target:
    """A Gemini-native call: the endpoint it is accounted as, the model, and the method."""

    endpoint: str
    model: str
    call: NativeCall


def is_native(path: str) -> bool:
    """Paths whose errors are in Google's shape (``/v1alpha``, which google-genai can be set to, is
    not served, but its 404 is Google's; ``/upload/…``: the Files API's uploads, ``gemini_files``)."""
    if (
        path in ("/v1beta", "/v1alpha")
        or path.startswith(("/v1beta/", "/v1alpha/", "/upload/"))
        or CACHES_PATH.match(path)
    ):
        return True
    match = ACTION_PATH.fullmatch(path)
    return match is not None and match.group(2) in ACTIONS


def google_client(headers: Mapping[str, str], query: str) -> bool:
    """A Google SDK or REST client: its key comes as x-goog-api-key or ?key= (an OpenAI client's never does)."""
    return "x-goog-api-key" in headers or "key" in parse_qs(query, keep_blank_values=True)


def lists_models(path: str, headers: Mapping[str, str], query: str) -> bool:
    """``GET /v1beta/models[/{model}]``, and ``/v1/models[/{model}]`` when a Google client asks
    (google-genai uses v1 by default; the same path answers OpenAI clients in OpenAI's shape)."""
    match = MODELS_PATH.fullmatch(path)
    return match is not None and (match.group(1) == "v1beta" or google_client(headers, query))


def action_target(method: str, path: str, headers: Mapping[str, str], query: str) -> Target | None:
    """The call a ``…/models/{model}:{method}`` path names; None for other paths, 404 for another method.

    Under ``/v1/`` only a POST of a Gemini method or a Google client's request is ours: an OpenAI
    client's ``GET /v1/models/ft:davinci`` (a fine-tuned model's id has colons) is not.
    """
    match = ACTION_PATH.fullmatch(path)
    if match is None:
        return None
    action = match.group(2)
    endpoint = ACTIONS.get(action)
    if not path.startswith("/v1beta/") and not google_client(headers, query):
        if endpoint is None or method != "POST":
            return None
    if endpoint is None:
        raise ProxyError(
            404, f"method {action!r} is not served here; Stockyard serves {', '.join(ACTIONS)}", code="not_found"
        )
    sse = "sse" in parse_qs(query).get("alt", [])
    return Target(endpoint, url_model(match.group(1)), NativeCall(action, sse))


def url_model(segment: str) -> str:
    """The model a URL names, decoded; a ``models/`` prefix (Google's resource name) is tolerated."""
    return unquote(segment).removeprefix("models/")


def key_headers(headers: Mapping[str, str], query: str) -> dict[str, str]:
    """The headers with a Google-style client key (``x-goog-api-key``, ``?key=``) as ``x-api-key``,
    where the key check reads it; two different keys in one request are a 401."""
    out = {k: v for k, v in headers.items() if k != "x-goog-api-key"}
    given = [(headers.get("x-goog-api-key") or "").strip(), *(v.strip() for v in parse_qs(query).get("key", []))]
    given = [k for k in given if k]
    if not given:
        return out
    if out.get("x-api-key", "").strip():
        given.append(out["x-api-key"].strip())
    first = given[0]
    if any(not hmac.compare_digest(first.encode(), other.encode()) for other in given[1:]):
        raise ProxyError(401, "the request carries different client keys; send one", code="invalid_api_key")
    out["x-api-key"] = first
    return out


def model_entry(ident: str, provider: str, display_name: str | None = None) -> dict:
    """A Gemini ``Model`` for a name Stockyard routes to a Gemini provider (methods told by its name;
    the display name the provider's listing gave, else the name)."""
    embeds = "embedding" in ident
    return {
        "name": f"models/{ident}",
        "displayName": display_name or ident,
        "description": f"served by Stockyard through provider {provider!r}",
        "supportedGenerationMethods": EMBED_METHODS if embeds else GENERATE_METHODS,
    }


def page_size(query: dict[str, list[str]]) -> int:
    raw = (query.get("pageSize") or [""])[0]
    if not raw:
        return PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise ProxyError(400, "pageSize must be a whole number", param="pageSize", code="invalid_value") from None
    return PAGE_SIZE if size <= 0 else min(size, MAX_PAGE_SIZE)


def models(app: "App", path: str, query: str, key: KeyRecord | None) -> Response:
    """``GET …/models`` (paged) and ``GET …/models/{model}``: the models this key may use that
    route to a Gemini provider, as Gemini ``Model`` objects."""
    from .models import display_name, listed_models

    registry = app.registry()
    match = MODELS_PATH.fullmatch(path)
    assert match is not None
    if match.group(2) is not None:
        model = check_url_model(url_model(match.group(2)))
        if key is not None:
            check_model(key, model, registry.routes_to)
        try:
            provider, upstream = registry.resolve(model)
        except ProxyError:
            provider = None
        if provider is None or provider.kind != "gemini":
            raise ProxyError(404, f"model {model!r} is not served by a Gemini provider here", code="not_found")
        return json_response(model_entry(model, provider.name, display_name(app, provider, upstream)))
    kinds = {p.name: p.kind for p in registry.providers}
    entries = [
        model_entry(m.id, m.owned_by, m.display_name)
        for m in listed_models(app, key)
        if kinds.get(m.owned_by) == "gemini"
    ]
    params = parse_qs(query)
    size, token = page_size(params), (params.get("pageToken") or ["0"])[0]
    if not (token.isascii() and token.isdigit() and len(token) <= 9) or int(token) > len(entries):
        raise ProxyError(400, "pageToken is not one this server gave", param="pageToken", code="invalid_value")
    start = int(token)
    doc: dict = {"models": entries[start : start + size]}
    if start + size < len(entries):
        doc["nextPageToken"] = str(start + size)
    return json_response(doc)

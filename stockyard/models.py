"""``GET /v1/models``: the union of what the configured providers serve, from a cache.

Each provider is asked for its list in its own API — OpenAI-compatible ``/models``,
Anthropic ``/v1/models``, Gemini ``/v1beta/models`` (Azure deployments cannot be listed
with a data-plane key). Answers come from a cache: a list older than the refresh interval
is refreshed in the background while the request answers at once, so a request never
waits for providers — except the very first fill, and that only for FIRST_FILL_WAIT_S.
A provider that fails keeps its last good list; one that never answered is listed with
the models the price table knows for it. Each id routes back to the same provider — a bare
name when it already routes there, else ``provider/model`` — and a client key sees only
the models it may use; ``GET /v1/models/{id}`` answers one of them. The display names a
provider's listing gives (Anthropic's ``display_name``, Gemini's ``displayName``) are kept for
the clients whose shape has one (``anthropic_models.py``); OpenAI's shape has none. So are the
dates (OpenAI's ``created``, Anthropic's ``created_at``): 0, the epoch, where none was given.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Mapping
from urllib.parse import unquote

from .errors import ProxyError
from .httpio import Request, Response, check_method, json_response
from .keys import KeyRecord
from .pricing import PROVIDERS
from .providers import OPENAI_KINDS, Provider, Registry
from .providers.anthropic import auth_headers as anthropic_auth
from .providers.anthropic import base_path
from .providers.gemini import auth_headers as gemini_auth
from .providers.gemini import version_prefix
from .providers.openai import auth_headers
from .upstream import UpstreamError

if TYPE_CHECKING:
    from .app import App

FIRST_FILL_WAIT_S = 3.0  # the longest a request waits for providers (only before any list exists)
RETRY_FAILED_S = 60.0  # a provider that failed is asked again after this, not on every request
LISTING_TIMEOUT_S = 5.0


@dataclass
class Listing:
    """One provider's cached list: the last good ids, and when it was last asked."""

    ids: list[str] | None = None  # None until the provider has answered once
    names: dict[str, str] = field(default_factory=dict)  # id → the display name the provider gave
    created: dict[str, int] = field(default_factory=dict)  # id → when the provider says it was made
    asked_at: float = 0.0  # monotonic time the last attempt started
    failed: bool = False
    refreshing: bool = False
    first_fill: threading.Event = field(default_factory=threading.Event)
    wait_until: float = field(default_factory=lambda: time.monotonic() + FIRST_FILL_WAIT_S)


_listings: dict[tuple, Listing] = {}
_lock = threading.Lock()


def _fetch(app: "App", provider: Provider) -> tuple[list[str], dict[str, str], dict[str, int]] | None:
    """Ask the provider for its model ids (and the display names and dates it gives) in its own API;
    None when it cannot say."""
    if provider.key_error:
        return None
    parse = openai_model_ids
    if provider.kind in OPENAI_KINDS:
        path, headers = "/models", auth_headers(provider)
    elif provider.kind == "anthropic":
        path, headers = base_path(provider, "/v1/models?limit=1000"), anthropic_auth(provider)
    elif provider.kind == "gemini":
        path, headers = version_prefix(provider) + "/models?pageSize=1000", gemini_auth(provider)
        parse = gemini_model_ids
    else:
        return [], {}, {}  # Azure lists resources, not deployments: clients name them as azure/<deployment>
    try:
        resp = app.pool.request(provider.base_url, "GET", path, headers, None, read_timeout=LISTING_TIMEOUT_S)
        body = resp.read_all()
        if resp.status != 200:
            return None
        doc = json.loads(body)
        return parse(doc), display_names(doc), created_times(doc)
    except (UpstreamError, OSError, ValueError, AttributeError, TypeError):
        return None


def openai_model_ids(doc: dict) -> list[str]:
    """Ids from ``{"data": [{"id": …}]}`` (OpenAI and Anthropic both answer this way)."""
    return [m["id"] for m in doc.get("data", []) if isinstance(m, dict) and isinstance(m.get("id"), str)]


def gemini_model_ids(doc: dict) -> list[str]:
    """Gemini model names without ``models/``, only those that can generate or embed."""
    wanted = {"generateContent", "embedContent"}
    return [
        m["name"].removeprefix("models/")
        for m in doc.get("models", [])
        if isinstance(m, dict)
        and isinstance(m.get("name"), str)
        and wanted & set(m.get("supportedGenerationMethods") or wanted)
    ]


def display_names(doc: dict) -> dict[str, str]:
    """The display names a listing gives, by id: Anthropic's ``display_name``, Gemini's
    ``displayName`` (OpenAI's listing has none)."""
    named = [(m.get("id"), m.get("display_name")) for m in doc.get("data", []) if isinstance(m, dict)]
    named += [
        (m["name"].removeprefix("models/"), m.get("displayName"))
        for m in doc.get("models", [])
        if isinstance(m, dict) and isinstance(m.get("name"), str)
    ]
    return {ident: name for ident, name in named if isinstance(ident, str) and isinstance(name, str) and name}


def created_times(doc: dict) -> dict[str, int]:
    """When each model was made, in Unix seconds, as a listing gives it: OpenAI's ``created``,
    Anthropic's ``created_at`` (RFC 3339); Gemini's listing has no date."""
    out: dict[str, int] = {}
    for m in doc.get("data", []):
        if not (isinstance(m, dict) and isinstance(m.get("id"), str)):
            continue
        created, stamp = m.get("created"), m.get("created_at")
        if isinstance(stamp, str):
            try:
                when = datetime.fromisoformat(stamp)
                created = int((when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp())
            except (ValueError, OverflowError):
                continue
        if isinstance(created, int) and not isinstance(created, bool) and 0 < created < 2**32:
            out[m["id"]] = created
    return out


def _refresh(app: "App", provider: Provider, listing: Listing) -> None:
    """Ask one provider (in a background thread); a failure keeps the last good list."""
    fetched = _fetch(app, provider)
    with _lock:
        if fetched is not None:
            listing.ids, listing.names, listing.created = fetched
        listing.failed = fetched is None
        listing.refreshing = False
    listing.first_fill.set()


def _listing(app: "App", provider: Provider) -> Listing:
    """The cached listing for ``provider``, starting a background refresh when it is due."""
    key = (provider.name, provider.kind, provider.base_url, provider.key_hint)
    now = time.monotonic()
    with _lock:
        listing = _listings.setdefault(key, Listing())
        age = now - listing.asked_at
        every = app.settings.models_refresh_s
        due = listing.asked_at == 0.0 or age >= (min(RETRY_FAILED_S, every) if listing.failed else every)
        if not due or listing.refreshing:
            return listing
        listing.refreshing, listing.asked_at = True, now
    threading.Thread(
        target=_refresh, args=(app, provider, listing), name=f"stockyard-models-{provider.name}", daemon=True
    ).start()
    return listing


def display_name(app: "App", provider: Provider, name: str) -> str | None:
    """The display name ``provider``'s listing gave its model ``name``, if it has answered (never
    waits for it: one model's answer is not held up by a listing)."""
    listing = _listing(app, provider)
    with _lock:
        return listing.names.get(name)


def known_models(app: "App", registry: Registry, provider: Provider) -> list[str]:
    """Models the price table knows for ``provider``: the fallback for one that never answered."""
    names = []
    prefixes = tuple(prefix.lower() for prefix in provider.models)
    for key, price in app.prices.entries():
        head, sep, rest = key.partition("/")
        if "*" in key or price.unit in ("image", "call"):  # model/size/quality, a tool's call: a price, not a model
            continue
        if sep and head == provider.name:
            names.append(rest)
        elif not (sep and head in PROVIDERS) and key.startswith(prefixes) and registry.routes_to(key) == provider.name:
            names.append(key)
    return names


@dataclass(frozen=True)
class Listed:
    """One model of the listing, as each client shape reads it."""

    id: str  # a bare name when it routes to its provider, else provider/model
    owned_by: str  # the provider's name; "stockyard" for a model served by deployments
    created: int = 0  # Unix seconds, as the provider's listing gave it; 0: not known
    display_name: str | None = None  # the provider's name for it, when its listing gave one


def list_models(app: "App", key: KeyRecord | None = None) -> list[dict]:
    """The listing in OpenAI's shape (``GET /v1/models``)."""
    return [
        {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by} for m in listed_models(app, key)
    ]


def listed_models(app: "App", key: KeyRecord | None = None) -> list[Listed]:
    """Every configured provider's models (only those ``key`` may use), from the cache."""
    registry = app.registry()
    listings = [(provider, _listing(app, provider)) for provider in registry.providers]
    for _, listing in listings:  # only the first requests wait, up to FIRST_FILL_WAIT_S after the first
        listing.first_fill.wait(max(0.0, listing.wait_until - time.monotonic()))
    out: list[Listed] = []
    seen: set[str] = set()
    for name, route in app.models().routes.items():  # models served by deployments, first
        if route.deployments and (key is None or key.allows_model(name, registry.routes_to)):
            seen.add(name)
            out.append(Listed(name, "stockyard"))
    for provider, listing in listings:
        with _lock:
            ids, names, created = listing.ids, listing.names, listing.created
        for name in ids if ids is not None else known_models(app, registry, provider):
            ident = name if registry.routes_to(name) == provider.name else f"{provider.name}/{name}"
            if ident in seen or (key is not None and not key.allows_model(ident, registry.routes_to)):
                continue
            seen.add(ident)
            out.append(Listed(ident, provider.name, created.get(name, 0), names.get(name)))
    return out


MODEL_PREFIX = "/v1/models/"


def retrieve(app: "App", req: Request) -> Response:
    """``GET /v1/models/{id}``: one model of the listing, in OpenAI's shape; the id may hold ``/``
    (``provider/model``, sent raw or as ``%2F``). A model this key may not use, or that no
    provider lists, is a 404 in OpenAI's error shape."""
    check_method(req.method, ["GET"])
    key = app.gate.client_key(req.headers)  # 401 before anything else when keys are required
    wanted = unquote(req.path.removeprefix(MODEL_PREFIX))
    for model in list_models(app, key):
        if model["id"] == wanted:
            return json_response(model)
    raise not_found(wanted)


def not_found(wanted: str) -> ProxyError:
    """The 404 for a model this key may not use or that no provider lists (the server writes it
    in the client's error shape)."""
    return ProxyError(
        404,
        f"The model {wanted[:200]!r} does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def answer(app: "App", headers: Mapping[str, str]) -> dict:
    """The ``/v1/models`` document: the client key is checked first (401 when it is required)."""
    return {"object": "list", "data": list_models(app, app.gate.client_key(headers))}

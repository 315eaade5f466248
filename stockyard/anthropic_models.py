"""``GET /v1/models[/{id}]`` in Anthropic's Models API shape, for Anthropic's SDKs.

``anthropic.Anthropic(base_url=…).models.list()`` and ``.retrieve(id)`` call the paths OpenAI's
SDK calls, and read another shape: ``ModelInfo`` objects (``type``, ``id``, ``display_name``,
``created_at``, ``lifecycle``) in pages of ``limit`` (1–1000, 20 by default) after ``after_id`` or before
``before_id``, with ``has_more``, ``first_id`` and ``last_id``. They send ``anthropic-version``
and an OpenAI client never does, so that header chooses this shape (as a Google key chooses
Google's, ``gemini_api.lists_models``); the server writes this route's errors in Anthropic's
shape. The models, their ids and the key check are the OpenAI listing's (``models.listed_models``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Container, Iterable
from urllib.parse import parse_qs, unquote

from .errors import ProxyError
from .httpio import Response, json_response, whole_number
from .keys import KeyRecord
from .logbuffer import printable
from .models import MODEL_PREFIX, Listed, listed_models, not_found

if TYPE_CHECKING:
    from .app import App

LIST_PATH = "/v1/models"
DEFAULT_LIMIT, MAX_LIMIT = 20, 1000  # Anthropic's default and largest page
LIFECYCLES = ("active", "deprecated", "retired")  # every model Stockyard lists is callable: active


def lists_models(path: str, headers: Container[str]) -> bool:
    """``/v1/models`` or ``/v1/models/{id}`` asked by an Anthropic client (``anthropic-version`` sent)."""
    return "anthropic-version" in headers and (path == LIST_PATH or path.startswith(MODEL_PREFIX))


def model_info(model: Listed) -> dict:
    """Anthropic's ``ModelInfo``: the provider's display name when its listing gave one, else the id;
    ``lifecycle`` active, as every model listed here can be called (the SDK's type requires it)."""
    return {
        "type": "model",
        "id": model.id,
        "display_name": model.display_name or model.id,
        "created_at": rfc3339(model.created),
        "lifecycle": "active",
    }


def resolved(listed: Iterable[Listed], wanted: str) -> Listed | None:
    """The listed model ``wanted`` names: the one with that id, else, as Anthropic resolves an alias
    (``claude-sonnet-4-5``), the newest dated snapshot of it listed (``claude-sonnet-4-5-20250929``)."""
    snapshots = []
    for model in listed:
        if model.id == wanted:
            return model
        date = model.id.removeprefix(wanted + "-")
        if date != model.id and len(date) == 8 and date.isascii() and date.isdigit():
            snapshots.append(model)
    return max(snapshots, key=lambda m: m.id, default=None)


def rfc3339(epoch: int) -> str:
    """Unix seconds as RFC 3339 UTC (``1970-01-01T00:00:00Z`` for 0, the listing's "not known")."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def models(app: "App", path: str, query: str, key: KeyRecord | None) -> Response:
    """The page the query asks for, or the one model the path names (404 when this key may not
    use it or no provider lists it)."""
    if path != LIST_PATH:
        wanted = unquote(path.removeprefix(MODEL_PREFIX))
        found = resolved(listed_models(app, key), wanted)
        if found is None:
            raise not_found(wanted)
        return json_response(model_info(found))
    params = parse_qs(query, keep_blank_values=True)
    limit, active = page_limit(params), wants_active(params)  # refused before the listing is read
    listed = [model_info(m) for m in listed_models(app, key)] if active else []
    return json_response(page(listed, params, limit))


def page(items: list[dict], params: dict[str, list[str]], limit: int) -> dict:
    """The ``limit`` items after ``after_id`` (from the start without it) or before ``before_id``;
    a cursor that is not in ``items`` (an id this key cannot see is not) is a 400 naming it."""
    after, before = single(params, "after_id"), single(params, "before_id")
    if after is not None and before is not None:
        raise invalid("send after_id or before_id, not both", "before_id")
    ids = [item["id"] for item in items]
    if before is not None:
        end = position(ids, before, "before_id")
        start = max(0, end - limit)
        more = start > 0
    else:
        start = 0 if after is None else position(ids, after, "after_id") + 1
        end = min(len(items), start + limit)
        more = end < len(items)
    return list_page(items[start:end], more)


def list_page(data: list[dict], has_more: bool) -> dict:
    """A page in the shape Anthropic's list endpoints answer (the Models API here, Message Batches in
    ``message_batches``): the items, whether more lie beyond, and the ids that page on from it."""
    return {
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def page_limit(params: dict[str, list[str]]) -> int:
    raw = single(params, "limit")
    if raw is None:
        return DEFAULT_LIMIT
    limit = whole_number(raw)
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        raise invalid(f"limit must be a whole number from 1 to {MAX_LIMIT}; got {printable(raw, 40)!r}", "limit")
    return limit


def wants_active(params: dict[str, list[str]]) -> bool:
    """Whether the ``lifecycle`` filter (``lifecycle[]=…`` from the SDK, repeated or comma-separated;
    absent: active and deprecated) takes active models, the only ones listed here."""
    given = [v.strip() for raw in params.get("lifecycle[]", []) + params.get("lifecycle", []) for v in raw.split(",")]
    for value in given:
        if value not in LIFECYCLES:
            raise invalid(
                f"lifecycle must be one of {', '.join(LIFECYCLES)}; got {printable(value, 40)!r}", "lifecycle"
            )
    return not given or "active" in given


def single(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if values is None:
        return None
    if len(values) > 1:
        raise invalid(f"{name} is given more than once; send it once", name)
    return values[0]


def position(ids: list[str], cursor: str, name: str) -> int:
    try:
        return ids.index(cursor)
    except ValueError:
        raise invalid(
            f"{name} {printable(cursor, 200)!r} is not a model in this listing (the models this key may use)", name
        ) from None


def invalid(message: str, param: str) -> ProxyError:
    return ProxyError(400, message, param=param, code="invalid_value")

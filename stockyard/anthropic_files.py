"""Anthropic's Files API (beta): passed through to an Anthropic provider, each file owned by a key.

The Anthropic SDKs' ``client.beta.files`` call the paths OpenAI's files use — ``POST /v1/files``
(multipart ``file``), ``GET /v1/files`` (``limit``, ``after_id``, ``before_id``), ``GET
/v1/files/{id}``, ``GET …/content``, ``DELETE /v1/files/{id}`` — and always send
``anthropic-version``, which no OpenAI SDK sends: that header (or an ``anthropic-beta``) makes
a call Anthropic's (:func:`is_anthropic`), as it makes ``GET /v1/models`` Anthropic's listing.
Such a call goes to the key's Anthropic provider (or the one ``x-stockyard-provider`` names),
with the ``files-api-2025-04-14`` beta the API requires, and is answered in Anthropic's shapes and
errors; a call without either header is OpenAI's (``files_api``), unchanged.

The provider holds every key's files under the one provider key, so they are owned here as
OpenAI's are (``files_api.Ownership``, the ``owned_objects`` table, kind ``anthropic_file``; open
mode has one owner, ``''``): a file belongs to the key that uploaded it, and a file the code
execution tool wrote to the key whose answer names it (``RequestContext.claim_made``, set by
``Ownership.check_anthropic_objects`` and called by the Anthropic native adapter before the answer or
the stream event naming it goes on: ``objectrefs.written_files``). Another key gets
Anthropic's 404, as for a missing file, unasked; a list is the provider's pages filtered to the
key's own, in either direction; a cursor the key does not own is an empty page, unasked. A
message, a token count or a message batch request naming a file (a document's or image's
``{"type": "file", "file_id"}`` source, a ``container_upload``) may name only the key's own
(``Ownership.check_references``). Each call leaves a trace row costing 0 (file storage is free).
"""

from __future__ import annotations

import json
import re
from typing import Container
from urllib.parse import urlencode

from .context import RequestContext
from .errors import ProxyError
from .files_api import OBJECT_ID, ProviderCalls, id_page_query, owner_of
from .httpio import Request, check_method
from .objectrefs import ANTHROPIC_FILE, anthropic_file_not_found
from .pdfpages import count_pages, uploaded_pages
from .providers import Provider
from .providers.anthropic import base_path
from .providers.anthropic import headers as anthropic_headers
from .proxy import Reply

KIND = ANTHROPIC_FILE  # in owned_objects
KINDS = ("anthropic",)  # providers that keep them
BETA = "files-api-2025-04-14"  # the beta the Files API requires (newer SDKs leave it to the caller)
PATH = re.compile(rf"^/v1/files(?:/{OBJECT_ID}(/content)?)?$")
LIST_LIMITS = (20, 1000)  # (default, largest) page size, as Anthropic's
PAGE_PREFIX = "page_"  # a list's ``next_page`` (newer SDKs page by it): the last id given, as ``after_id``
PASSED = ("scope_id",)  # list filters passed on (the pages are the filtered list's own)


def is_anthropic(headers: Container[str]) -> bool:
    """A call an Anthropic client made: it carries ``anthropic-version`` (every Anthropic SDK sends
    it) or ``anthropic-beta``. OpenAI's SDKs send neither, so their calls never come here."""
    return "anthropic-version" in headers or "anthropic-beta" in headers


def under_files(path: str) -> bool:
    """A path under ``/v1/files`` (a route of this API's or none): where an Anthropic SDK's call is
    answered in Anthropic's shape, the server's own refusals too (``server._dialect_of``)."""
    return path == "/v1/files" or path.startswith("/v1/files/")


def route_of(path: str) -> tuple[str | None, bool] | None:
    """(file id or None, ``/content``) for a files path, or None."""
    match = PATH.match(path)
    return None if match is None else (match.group(1), match.group(2) is not None)


def endpoint_name(method: str, path: str) -> str:
    """The trace's endpoint: ``anthropic_files.create``, ``…list``, ``…retrieve``, ``…content``, ``…delete``."""
    found = route_of(path)
    if found is None or found[0] is None:
        return f"anthropic_files.{'create' if method == 'POST' else 'list'}"
    if found[1]:
        return "anthropic_files.content"
    return f"anthropic_files.{'delete' if method == 'DELETE' else 'retrieve'}"


def list_doc(found: list[dict], has_more: bool, forward: bool) -> dict:
    """Anthropic's page (``first_id``, ``last_id``, ``has_more``), and ``next_page`` for the SDKs that
    page by it (going on after the last id, as ``after_id`` would)."""
    doc: dict = {
        "data": found,
        "first_id": found[0]["id"] if found else None,
        "last_id": found[-1]["id"] if found else None,
        "has_more": has_more,
    }
    doc["next_page"] = f"{PAGE_PREFIX}{found[-1]['id']}" if has_more and forward and found else None
    return doc


class AnthropicFiles(ProviderCalls):
    """The ``/v1/files`` routes for an Anthropic client (:func:`is_anthropic`)."""

    serves = "Anthropic files"

    def _target(self, provider: Provider, rest: str, query: dict[str, str] | None) -> str:
        return base_path(provider, rest) + (f"?{urlencode(query)}" if query else "")

    def _headers(self, ctx: RequestContext, provider: Provider, rest: str) -> dict[str, str]:
        """The provider's key and version (the client's ``anthropic-version`` and ``anthropic-beta``
        passed on, checked), with the Files API beta added when the client did not send it."""
        sent = anthropic_headers(provider, ctx, native=True)
        betas = [b.strip() for b in sent.get("anthropic-beta", "").split(",") if b.strip()]
        sent["anthropic-beta"] = ",".join(betas if BETA in betas else [*betas, BETA])
        sent["Accept"] = "*/*" if rest.endswith("/content") else "application/json"
        return sent

    def _provider(self, ctx: RequestContext) -> Provider:
        return self.provider_of_kind(ctx, KINDS, "Anthropic", "Anthropic's Files API needs an Anthropic provider")

    def _handle(self, reply: Reply, ctx: RequestContext, req: Request) -> None:
        found = route_of(req.path)
        assert found is not None
        file_id, content = found
        check_method(req.method, ("GET",) if content else ("GET", "POST") if file_id is None else ("GET", "DELETE"))
        self._rate_limit(ctx)  # before the body is read and before any provider call
        if file_id is None and req.method == "POST":
            return self._upload(reply, ctx, req)
        req.body  # noqa: B018 - a GET's empty body too: the read deadline ends, a long download is not cut
        if file_id is None:
            return self._list(reply, ctx, req.query)
        _, provider = self._owned(ctx, file_id, KIND, anthropic_file_not_found(file_id))
        rest = f"/v1/files/{file_id}"
        if content:
            return self._relay(reply, ctx, provider, rest + "/content")
        answer, _ = self._call(ctx, provider, req.method, rest)
        if answer.status < 300 and req.method == "DELETE":
            self.ownership.forget(file_id)
        self._send(reply, ctx, answer)

    def _upload(self, reply: Reply, ctx: RequestContext, req: Request) -> None:
        """``POST /v1/files``: the form streamed to a spool (never held whole), then to the provider
        with its length; the trace keeps the form's metadata, never the file's bytes."""
        provider = self._provider(ctx)  # refused before the body is read
        with req.upload() as upload:
            ctx.raw = json.dumps(upload.metadata()).encode()
            upload.refuse_stray_files(("file",))
            parts = [f for f in upload.files if f.name == "file"]
            if len(parts) != 1:
                raise ProxyError(400, "file: one file is required", param="file", code="invalid_value")
            counter = count_pages(upload.open(parts[0]))  # a PDF's, which a prompt naming it is held at
            form = upload.encode()
            answer, doc = self._call(
                ctx, provider, "POST", "/v1/files", form, content_type=form.content_type, length=form.length
            )
        if answer.status < 300 and isinstance(doc, dict) and isinstance(doc.get("id"), str):
            pages = uploaded_pages(counter, doc["id"])
            self.ownership.claim(doc["id"], KIND, owner_of(ctx), provider.name, pages=pages)
        self._send(reply, ctx, answer)

    def _list(self, reply: Reply, ctx: RequestContext, query: dict[str, str]) -> None:
        """This key's files, from the provider's pages filtered, paged either way; ``page`` (a
        ``next_page`` this server gave) goes on after the id it names. ``ids`` is refused: a
        one-page list of named files is served by retrieving each."""
        if "ids" in query or "ids[]" in query:
            raise ProxyError(
                400, "ids: not supported here; retrieve each file by its id", param="ids", code="invalid_value"
            )
        page = query.get("page") or ""
        if page:
            given = page.removeprefix(PAGE_PREFIX)
            if given == page or not given or query.get("before_id") or query.get("after_id"):  # "page_": no id
                raise ProxyError(400, "page: not a next_page this server gave", param="page", code="invalid_value")
            query = {**query, "after_id": given}
        limit, before, after = id_page_query(query, *LIST_LIMITS)
        provider = self._provider(ctx)
        passed = {k: v for k, v in query.items() if k in PASSED}
        answer, found, has_more = self._id_page(ctx, provider, "/v1/files", KIND, limit, before, after, passed)
        if found is None:  # the provider's failure, as it came
            return self._send(reply, ctx, answer)
        self._replace(ctx, answer, list_doc(found, has_more, before is None))
        self._send(reply, ctx, answer)

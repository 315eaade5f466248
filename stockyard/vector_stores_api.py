"""OpenAI's Vector Stores API: passed through to an OpenAI-kind provider, owned by the key that made them.

A vector store holds files, chunked and embedded, that the ``file_search`` tool of the Responses
API searches. The provider holds every key's stores under the one provider key, so they are owned
here as containers are (``files_api``: ``Ownership``, the ``owned_objects`` table, kind
``vector_store``; open mode has one owner, ``''``): a store belongs to the key that created it
through ``POST /v1/vector_stores``, and its files and file batches follow it. Another key gets
OpenAI's 404, as for a missing id; the list is the provider's pages filtered to the key's stores.
A store's calls go to the provider recorded with it; a new one (and the list) to the provider
``files_api`` would choose. Files given to a store by id (``file_ids``, ``file_id``,
``files[].file_id``) must be the key's own. The client's ``OpenAI-Beta`` header (the SDK sends
``assistants=v2``) is passed on. Each call leaves a trace row costing 0: storage fees are not
modelled.

On a Responses ``file_search`` tool (``Ownership.check_references``) the rule is looser than for
files and containers, on purpose: operators often make a shared store outside Stockyard, so an id
no key owns passes as sent; only another key's store is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .context import RequestContext
from .errors import ProxyError
from .files_api import OBJECT_ID, ProviderCalls, file_ids_of, not_found, owner_of, page_limit
from .httpio import Request, check_method, json_object
from .providers import Provider
from .proxy import Reply

KIND = "vector_store"
PATH = re.compile(
    rf"^/v1/vector_stores(?:/{OBJECT_ID}(?:/(search)|/(files|file_batches)(?:/{OBJECT_ID}(?:/(content|cancel|files))?)?)?)?$"
)
LIST_LIMITS = (20, 100)  # (default, largest) page size, as OpenAI's
PASSED = ("order",)  # list parameters passed on (limit and after are the filtered list's own)
SUB_QUERY = ("order", "limit", "after", "before", "filter")  # a store's file lists: the store's, passed whole
CURSORS = ("after", "before")  # a store's file lists: file ids, the key's own
BETA_HEADER = "openai-beta"
BETA = re.compile(r"[A-Za-z0-9._=-]{1,64}(?:[ \t]*,[ \t]*[A-Za-z0-9._=-]{1,64}){0,15}")


@dataclass(frozen=True)
class Route:
    """Where a vector stores path points: the store, what under it (``search``, ``files``,
    ``file_batches``), the file or batch, and its action (``content``, ``cancel``, ``files``)."""

    store_id: str | None
    sub: str
    sub_id: str | None
    action: str

    def lists_files(self) -> bool:
        """A list of a store's files (``…/files``) or of a file batch's (``…/file_batches/{id}/files``)."""
        return (self.sub == "files" and self.sub_id is None) or self.action == "files"

    def methods(self) -> tuple[str, ...]:
        """The methods OpenAI serves here (a 405 names them)."""
        if self.store_id is None:
            return ("GET", "POST")  # list, create
        if self.sub == "search":
            return ("POST",)
        if self.sub == "files":
            if self.sub_id is None:
                return ("GET", "POST")  # list, create
            return ("GET",) if self.action else ("GET", "POST", "DELETE")  # content; retrieve, update, delete
        if self.sub == "file_batches":
            if self.sub_id is None or self.action == "cancel":
                return ("POST",)
            return ("GET",)  # a batch, its files
        return ("GET", "POST", "DELETE")  # a store: retrieve, modify, delete

    def endpoint(self, method: str) -> str:
        """The trace's endpoint: ``vector_stores.create``, ``vector_stores.files.content``, …"""
        if self.sub == "search":
            return "vector_stores.search"
        base = "vector_stores" + (f".{self.sub}" if self.sub else "")
        if self.action:
            return f"{base}.{'list_files' if self.action == 'files' else self.action}"
        one = self.sub_id is not None if self.sub else self.store_id is not None
        if not one:
            return f"{base}.{'create' if method == 'POST' else 'list'}"
        if self.sub == "file_batches":
            return f"{base}.retrieve"
        verb = {"DELETE": "delete", "POST": "update"}.get(method, "retrieve")
        return f"{base}.{verb}"


def route_of(path: str) -> Route | None:
    """The route of a vector stores path, or None (an action under the wrong collection too)."""
    match = PATH.match(path)
    if match is None:
        return None
    store_id, search, sub, sub_id, action = match.groups()
    action = action or ""
    if (action == "content" and sub != "files") or (action in ("cancel", "files") and sub != "file_batches"):
        return None
    if action and sub_id is None:
        return None
    return Route(store_id, search or sub or "", sub_id, action)


def endpoint_name(method: str, path: str) -> str:
    found = route_of(path)
    return "vector_stores" if found is None else found.endpoint(method)


def _batch_file_ids(body: dict) -> list[str]:
    """A file batch's files: ``file_ids``, and each ``files[].file_id``."""
    ids = file_ids_of(body, "file_ids")
    files = body.get("files")
    if files is None:
        return ids
    if not isinstance(files, list) or not all(
        isinstance(f, dict) and isinstance(f.get("file_id"), str) and f["file_id"] for f in files
    ):
        raise ProxyError(
            400, "'files' must be an array of objects with a 'file_id'", param="files", code="invalid_type"
        )
    return ids + [f["file_id"] for f in files]


class VectorStoresAPI(ProviderCalls):
    """The ``/v1/vector_stores`` routes; a new store or a list goes to the provider a new file
    would (``choose_provider``)."""

    serves = "vector stores"

    def _headers(self, ctx: RequestContext, provider: Provider, rest: str) -> dict[str, str]:
        """The provider's own, and the client's ``OpenAI-Beta`` (checked in ``_handle``)."""
        sent = super()._headers(ctx, provider, rest)
        beta = ctx.headers.get(BETA_HEADER)
        if beta:
            sent["OpenAI-Beta"] = beta
        return sent

    def _handle(self, reply: Reply, ctx: RequestContext, req: Request) -> None:
        route = route_of(req.path)
        assert route is not None
        check_method(req.method, route.methods())
        beta = ctx.headers.get(BETA_HEADER)
        if beta and not BETA.fullmatch(beta):  # nothing that could end a header line goes on
            raise ProxyError(
                400,
                f"header OpenAI-Beta must be tokens like assistants=v2 (comma-separated); got {beta[:80]!r}",
                param="OpenAI-Beta",
                code="invalid_header",
            )
        self._rate_limit(ctx)  # before the body is read and before any provider call
        if route.store_id is None:
            if req.method == "GET":
                return self._list(reply, ctx, req.query)
            return self._create_owned(reply, ctx, req.body, "/vector_stores", KIND)
        _, provider = self._owned(ctx, route.store_id, KIND, not_found(KIND, route.store_id, None))
        rest = "/".join(p for p in ("/vector_stores", route.store_id, route.sub, route.sub_id, route.action) if p)
        raw = req.body  # a GET's empty body too: the read deadline ends
        if req.method == "GET":
            query = {k: v for k, v in req.query.items() if k in SUB_QUERY} if route.sub or route.action else None
            if query and route.lists_files() and not self._own_cursors(ctx, query, provider.name):
                return self._send(reply, ctx, self.unknown_cursor_page(ctx))
            answer, _ = self._call(ctx, provider, "GET", rest, query=query)
            return self._send(reply, ctx, answer)
        if req.method == "DELETE":
            answer, _ = self._call(ctx, provider, "DELETE", rest)
            if answer.status < 300 and not route.sub:
                self.ownership.forget(route.store_id)
            return self._send(reply, ctx, answer)
        if route.action == "cancel":  # no body to check
            answer, _ = self._call(ctx, provider, "POST", rest, raw or b"{}")
            return self._send(reply, ctx, answer)
        body = json_object(raw)
        ctx.raw = raw
        if route.sub == "files" and route.sub_id is None:
            file_id = body.get("file_id")
            if not isinstance(file_id, str) or not file_id:
                raise ProxyError(400, "Missing required parameter: 'file_id'.", param="file_id", code="invalid_value")
            self.ownership.require_files([file_id], owner_of(ctx), "file_id")
        elif route.sub == "file_batches":
            self.ownership.require_files(_batch_file_ids(body), owner_of(ctx), "file_ids")
        answer, _ = self._call(ctx, provider, "POST", rest, raw)
        self._send(reply, ctx, answer)

    def _own_cursors(self, ctx: RequestContext, query: dict[str, str], provider: str) -> bool:
        """Whether a store's file list's ``after`` and ``before`` (file ids: a store holds only its
        key's files) are this key's own files (at any provider, as ``require_files`` lets a store take
        them), or files it deleted at the store's ``provider`` (``Ownership.is_cursor``); another key's
        would have the provider's page from it say whether it exists and where it stands among the
        key's own."""
        owner = owner_of(ctx)
        return all(self.ownership.is_cursor(query[c], "file", owner, provider, True) for c in CURSORS if query.get(c))

    def _list(self, reply: Reply, ctx: RequestContext, query: dict[str, str]) -> None:
        """``GET /v1/vector_stores``: this key's stores, in the provider's pages filtered (forward:
        a ``before`` is refused, not answered with the first page as if it were the one asked for)."""
        if query.get("before"):
            raise ProxyError(
                400,
                "'before' is not supported on this list through Stockyard; page with 'after' (or order=asc)",
                param="before",
                code="unsupported_parameter",
            )
        limit = page_limit(query, *LIST_LIMITS)
        provider = self.choose_provider(ctx)
        passed = {k: v for k, v in query.items() if k in PASSED}
        answer, _ = self._owned_page(ctx, provider, "/vector_stores", KIND, limit, passed, query)
        self._send(reply, ctx, answer)

"""OpenAI's Containers API: passed through to an OpenAI-kind provider, owned by the key that made them.

A container is where the code interpreter tool of the Responses API runs code, and where the
files it writes (charts, CSVs, which an answer cites as ``container_file_citation``) stay. The
provider holds every key's containers under the one provider key, so they are owned here as
files and batches are (``files_api``: ``Ownership``, the ``owned_objects`` table, kind
``container``; open mode has one owner, ``''``): a container belongs to the key that created it
— through ``POST /v1/containers``, or as the ``auto`` container the provider made for one of its
Responses calls (claimed by ``claim_made``, which ``Conversations`` calls with the containers a
passed-through answer ran code in) — and its files follow it. Another key gets OpenAI's 404, as
for a missing id; lists are the provider's pages filtered to the key's containers. A container's
calls go to the provider recorded with it; a new one (and a list) to the provider ``files_api``
would choose. Files a container is given by id (``file_ids``, ``file_id``) must be the key's own.
Each call leaves a trace row (metadata only, never file bytes) costing 0: container fees are not
modelled.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import Future

from .context import RequestContext
from .errors import ProxyError
from .files_api import OBJECT_ID, OPEN_OWNER, Ownership, ProviderCalls, not_found, owner_of, page_limit
from .httpio import Request, check_method, json_object
from .providers import Provider
from .proxy import Reply

KIND = "container"
PATH = re.compile(rf"^/v1/containers(?:/{OBJECT_ID}(?:(/files)(?:/{OBJECT_ID}(/content)?)?)?)?$")
LIST_LIMITS = (20, 100)  # (default, largest) page size, as OpenAI's
PASSED = ("order", "name")  # list parameters passed on (limit and after are the filtered list's own)


def route_of(path: str) -> tuple[str | None, bool, str | None, bool] | None:
    """(container id, under ``/files``, file id, ``/content``) for a containers path, or None."""
    match = PATH.match(path)
    if match is None:
        return None
    container_id, files, file_id, content = match.groups()
    return container_id, files is not None, file_id, content is not None


def endpoint_name(method: str, path: str) -> str:
    """The trace's endpoint: ``containers.create``, ``containers.files.content``, …"""
    found = route_of(path)
    if found is None:
        return "containers"
    container_id, files, file_id, content = found
    if content:
        return "containers.files.content"
    base, one = ("containers.files", file_id is not None) if files else ("containers", container_id is not None)
    if one:
        return f"{base}.{'delete' if method == 'DELETE' else 'retrieve'}"
    return f"{base}.{'create' if method == 'POST' else 'list'}"


def allowed_methods(container_id: str | None, files: bool, file_id: str | None, content: bool) -> tuple[str, ...]:
    if content:
        return ("GET",)
    if container_id is None or (files and file_id is None):
        return ("GET", "POST")  # a collection: list, create
    return ("GET", "DELETE")  # one object


def claim_made(
    ownership: Ownership, ids: set[str], key_id: str | None, provider: str, deferred: list[Future] | None = None
) -> None:
    """Containers a passed-through Responses answer of ``key_id`` ran code in: those no key owns
    yet (the provider made them for this request, ``"container": {"type": "auto"}``) become its.
    ``deferred`` (a stream on the relay's thread: ``RequestContext.claims_deferred``) takes the
    future of the write, which the relay waits for, not this thread."""
    if deferred is not None:
        deferred.append(ownership.claim_new_later(ids, KIND, key_id or OPEN_OWNER, provider))
    else:
        ownership.claim_new(ids, KIND, key_id or OPEN_OWNER, provider)


class ContainersAPI(ProviderCalls):
    """The ``/v1/containers`` routes; a new container or a list goes to the provider a new file
    would (``choose_provider``)."""

    serves = "containers"

    def _handle(self, reply: Reply, ctx: RequestContext, req: Request) -> None:
        found = route_of(req.path)
        assert found is not None
        container_id, files, file_id, content = found
        check_method(req.method, allowed_methods(*found))
        self._rate_limit(ctx)  # before the body is read and before any provider call
        if container_id is None:
            if req.method == "GET":
                return self._list(reply, ctx, req.query)
            return self._create_owned(reply, ctx, req.body, "/containers", KIND)
        _, provider = self._owned(ctx, container_id, KIND, not_found(KIND, container_id, None))
        rest = f"/containers/{container_id}" + (f"/files/{file_id}" if file_id else "/files" if files else "")
        if files and file_id is None and req.method == "POST":
            return self._add_file(reply, ctx, req, provider, rest)
        req.body  # noqa: B018 - a GET's empty body too: the read deadline ends, a long download is not cut
        if content:
            return self._relay(reply, ctx, provider, rest + "/content")
        if files and file_id is None:  # its files: the container's, so all of them its owner's
            query = {k: v for k, v in req.query.items() if k in ("order", "limit", "after")}
            answer, _ = self._call(ctx, provider, "GET", rest, query=query)
            return self._send(reply, ctx, answer)
        answer, _ = self._call(ctx, provider, req.method, rest)
        if answer.status < 300 and req.method == "DELETE" and not files:
            self.ownership.forget(container_id)
        self._send(reply, ctx, answer)

    def _list(self, reply: Reply, ctx: RequestContext, query: dict[str, str]) -> None:
        """``GET /v1/containers``: this key's containers, in the provider's pages filtered."""
        limit = page_limit(query, *LIST_LIMITS)
        provider = self.choose_provider(ctx)
        passed = {k: v for k, v in query.items() if k in PASSED}
        answer, _ = self._owned_page(ctx, provider, "/containers", KIND, limit, passed, query)
        self._send(reply, ctx, answer)

    def _add_file(self, reply: Reply, ctx: RequestContext, req: Request, provider: Provider, rest: str) -> None:
        """``POST /v1/containers/{id}/files``: a multipart ``file``, streamed to a spool and on
        (never held whole; the trace keeps its metadata), or ``{"file_id": …}``, this key's file (a
        ``file_id`` field beside the form's file too: it is relayed, and the provider may read it)."""
        if req.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            with req.upload() as upload:
                ctx.raw = json.dumps(upload.metadata()).encode()
                upload.refuse_stray_files(("file",))
                self.ownership.check_form_files(upload.fields, owner_of(ctx))  # relayed: the provider may read them
                if len([f for f in upload.files if f.name == "file"]) != 1:
                    raise ProxyError(
                        400, "Missing required parameter: 'file' (one file).", param="file", code="invalid_value"
                    )
                form = upload.encode()
                answer, _ = self._call(
                    ctx, provider, "POST", rest, form, content_type=form.content_type, length=form.length
                )
            return self._send(reply, ctx, answer)
        body = json_object(req.body)
        ctx.raw = req.body
        file_id = body.get("file_id")
        if not isinstance(file_id, str) or not file_id:
            raise ProxyError(
                400,
                "send a multipart/form-data 'file', or a JSON body whose 'file_id' names a file",
                param="file_id",
                code="invalid_value",
            )
        self.ownership.require_files([file_id], owner_of(ctx), "file_id")
        answer, _ = self._call(ctx, provider, "POST", rest, req.body)
        self._send(reply, ctx, answer)

"""OpenAI's Uploads API: a file larger than ``/v1/files`` takes, sent in parts, owned per key.

``POST /v1/uploads`` (JSON: ``filename``, ``purpose``, ``bytes``, ``mime_type``) makes an Upload at
the provider a new file would go to (``ProviderCalls.choose_provider``); ``POST /v1/uploads/{id}/parts``
(a multipart form with one ``data`` file part) adds a Part; ``…/complete`` (``part_ids`` in order,
optional ``md5``) makes the File; ``…/cancel`` ends it. The Upload is the key's that created it
(``owned_objects``, kind ``upload``), each Part too, recorded as ``{upload id}/{part id}`` (kind
``upload_part``, forgotten once the upload is completed or cancelled) so that a complete may name
only this upload's parts; another key's upload is OpenAI's 404, the provider unasked. The File a
complete makes is the key's, as one uploaded through ``/v1/files`` is: its files routes, batches,
vector stores and containers take it.

A part is streamed to a spool and sent on with its length, as every upload is (never held in
memory; bounded by OpenAI's 64 MiB a part, ``STOCKYARD_MAX_UPLOAD_BYTES`` and
``STOCKYARD_UPLOADS_MB``; a sender that stalls is cut at the read deadline). Each call is traced
at cost 0 with its JSON or the form's metadata, never the bytes. A PDF's pages are not counted
across parts (they may come in any order): the File of an Upload whose ``mime_type`` is
``application/pdf`` is held at :data:`~stockyard.pdfpages.MAX_PDF_PAGES`, as a PDF whose pages
could not be counted is.
"""

from __future__ import annotations

import json
import logging
import re

from .context import RequestContext
from .errors import ProxyError
from .files_api import OBJECT_ID, ProviderCalls, id_action_endpoint, id_action_route, not_found, owner_of
from .httpio import Request, check_method, json_object
from .pdfpages import MAX_PDF_PAGES
from .providers import Provider
from .proxy import Reply

log = logging.getLogger("stockyard.files")

KIND = "upload"  # in owned_objects
PART_KIND = "upload_part"  # in owned_objects, as "{upload id}/{part id}"
PATH = re.compile(rf"^/v1/uploads(?:/{OBJECT_ID}(/parts|/complete|/cancel))?$")
MAX_PART_BYTES = 64 * 1024 * 1024  # OpenAI's bound on one part (the SDK's part size)
FORM_ROOM = 64 * 1024  # a part's form around its bytes: boundaries and part headers
PDF_TYPE = "application/pdf"


def route_of(path: str) -> tuple[str | None, str] | None:
    """(upload id, action: ``""``, ``/parts``, ``/complete`` or ``/cancel``) for an uploads path, or None."""
    return id_action_route(PATH, path)


def endpoint_name(method: str, path: str) -> str:
    """The trace's endpoint: ``uploads.create``, ``uploads.parts``, ``uploads.complete``, ``uploads.cancel``."""
    return id_action_endpoint("uploads", method, route_of(path))


def part_ids_of(body: dict) -> list[str]:
    """A complete's ``part_ids``: a non-empty array of part ids, else a 400."""
    value = body.get("part_ids")
    if not isinstance(value, list) or not value or not all(isinstance(p, str) and p for p in value):
        raise ProxyError(
            400, "'part_ids' must be a non-empty array of part ids", param="part_ids", code="invalid_value"
        )
    return value


class UploadsAPI(ProviderCalls):
    """The ``/v1/uploads`` routes; an Upload's later calls go to the provider recorded with it."""

    serves = "uploads"
    creates = "upload"

    def _handle(self, reply: Reply, ctx: RequestContext, req: Request) -> None:
        found = route_of(req.path)
        assert found is not None
        upload_id, action = found
        check_method(req.method, ("POST",))
        self._rate_limit(ctx)  # before the body is read and before any provider call
        if upload_id is None:
            return self._create(reply, ctx, req.body)
        owned, provider = self._owned(ctx, upload_id, KIND, not_found(KIND, upload_id))  # before the body
        if action == "/parts":
            return self._part(reply, ctx, req, provider, upload_id)
        raw = req.body
        ctx.raw = raw
        if action == "/complete":
            return self._complete(reply, ctx, raw, provider, upload_id, owned.pages)
        answer, _ = self._call(ctx, provider, "POST", f"/uploads/{upload_id}/cancel")  # it takes no body
        if answer.status < 300:  # its parts can be named no more
            self.ownership.forget_members(upload_id, PART_KIND, owner_of(ctx))
        self._send(reply, ctx, answer)

    def _create(self, reply: Reply, ctx: RequestContext, raw: bytes) -> None:
        """A new Upload, the key's; one for a PDF keeps the pages its File will be held at."""
        body = json_object(raw)
        ctx.raw = raw
        provider = self.choose_provider(ctx)
        answer, doc = self._call(ctx, provider, "POST", "/uploads", raw)
        if answer.status < 300 and isinstance(doc, dict) and isinstance(doc.get("id"), str):
            pdf = str(body.get("mime_type") or "").split(";")[0].strip().lower() == PDF_TYPE
            self.ownership.claim(doc["id"], KIND, owner_of(ctx), provider.name, pages=MAX_PDF_PAGES if pdf else None)
        self._send(reply, ctx, answer)

    def _part(self, reply: Reply, ctx: RequestContext, req: Request, provider: Provider, upload_id: str) -> None:
        """A part: its form streamed to a spool and on to the provider with its length; the part the
        key's, as a part of this upload."""
        with req.upload(MAX_PART_BYTES + FORM_ROOM) as upload:
            ctx.raw = json.dumps(upload.metadata()).encode()
            upload.refuse_stray_files(("data",))
            parts = [f for f in upload.files if f.name == "data"]
            if len(parts) != 1 or upload.fields:
                raise ProxyError(
                    400, "a part is a form with one file part named 'data'", param="data", code="invalid_value"
                )
            if parts[0].size > MAX_PART_BYTES:
                raise ProxyError(
                    413, f"a part is {MAX_PART_BYTES} bytes at most", param="data", code="request_too_large"
                )
            body = upload.encode()
            rest = f"/uploads/{upload_id}/parts"
            answer, doc = self._call(
                ctx, provider, "POST", rest, body, content_type=body.content_type, length=body.length
            )
        if answer.status < 300 and isinstance(doc, dict) and isinstance(doc.get("id"), str):
            self.ownership.claim(f"{upload_id}/{doc['id']}", PART_KIND, owner_of(ctx), provider.name)
        self._send(reply, ctx, answer)

    def _complete(
        self, reply: Reply, ctx: RequestContext, raw: bytes, provider: Provider, upload_id: str, pages: int | None
    ) -> None:
        """The complete: its parts this upload's (the provider holds every key's under one key), the
        File it makes the key's."""
        part_ids = part_ids_of(json_object(raw))
        named = [f"{upload_id}/{p}" for p in dict.fromkeys(part_ids)]
        ours = self.ownership.owned(named, PART_KIND, owner_of(ctx), provider.name)
        stray = next((p for p in named if p not in ours), None)
        if stray is not None:
            message = f"Part '{stray.split('/', 1)[1][:200]}' is not a part of upload '{upload_id}'."
            raise ProxyError(400, message, param="part_ids", code="invalid_value", type="invalid_request_error")
        answer, doc = self._call(ctx, provider, "POST", f"/uploads/{upload_id}/complete", raw)
        made = doc.get("file") if answer.status < 300 and isinstance(doc, dict) else None
        if isinstance(made, dict) and isinstance(made.get("id"), str):
            if pages is not None:
                log.warning(
                    "the pages of the PDF uploaded in parts as %r are not counted: held at %d", made["id"], pages
                )
            self.ownership.claim(made["id"], "file", owner_of(ctx), provider.name, pages=pages)
            self.ownership.forget_members(upload_id, PART_KIND, owner_of(ctx))  # its parts can be named no more
        self._send(reply, ctx, answer)

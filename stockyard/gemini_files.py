"""Gemini's Files API (``/upload/v1beta/files``, ``/v1beta/files``): passed through to a Gemini
provider, each file owned by the key that uploaded it.

google-genai's ``client.files.upload`` sends media (video, audio, PDFs past the inline limit) by
Google's resumable protocol: a ``start`` (``X-Goog-Upload-Protocol: resumable``, the size and type
in ``X-Goog-Upload-Header-Content-Length`` / ``-Content-Type``, ``{"file": {...}}``) answered with
an ``X-Goog-Upload-URL``; then the bytes to that URL in 8 MiB ``upload`` chunks at their
``X-Goog-Upload-Offset``, the last one ``upload, finalize``, which answers ``{"file": {...}}``.
The SDK sends those chunks without the API key: the URL is the credential.

Google's upload URL never reaches the client (it would upload past Stockyard, and the file would be
no key's): the start is answered with a URL of Stockyard's own (where the client reached it,
``server._public_base``) carrying a random token. The database keeps its hash, the key that started
the upload, the provider and Google's URL (``gemini_uploads``, migration 0025), so any replica can
continue it; it expires after ``UPLOAD_TTL_MS`` and is gone once finalized. A chunk is spooled to
disk (``multipart.spool_body``, never held in memory) and sent on to Google's URL. A chunk that
presents a client key must present the key that started the upload; one without is the SDK's, and
stands for that key (which must still be active). An unknown, expired, finalized or another key's
token is Google's 404, unasked.

The file the finalize answers is the key's (``owned_objects``, kind ``gemini_file``, under its name
``files/{id}``: no other kind's id has a slash). ``GET``/``DELETE …/files/{id}`` of another key's
file is Google's 404 as for a missing one, unasked; a list is the provider's pages filtered to the
key's own, paged with a token of Stockyard's (``gemini_cache``'s). A prompt naming another key's
file (``fileData.fileUri``) is refused before any module or provider call
(``Ownership.check_gemini_files``). Google bills no fee for the Files API (storage is free, files
expire after 48 hours): every call is traced at cost 0; a budget holds nothing for an upload, and
the media's tokens are billed by the generateContent that reads them, as its usage reports. A PDF's
pages are counted as its chunks pass (``pdfpages.PageCounter``, carried from chunk to chunk in
``gemini_uploads.pages_state``, migration 0035) and kept with the file: a prompt naming it is held at them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from typing import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit

from .context import RequestContext
from .errors import ProxyError
from .files_api import GEMINI_FILE, Answer, Ownership, owner_of
from .gemini_api import google_client
from .gemini_cache import GoogleCalls
from .httpio import Request, check_method, json_object
from .keys import presented_key
from .keys import recheck as recheck_key
from .message_batches import BASE_STATE
from .multipart import Encoded
from .objectrefs import FILE_ID, FILE_PREFIX, file_id_of, file_not_found
from .pdfpages import PageCounter, uploaded_pages
from .providers import Provider
from .providers.gemini import auth_headers, version_prefix
from .proxy import Reply, RequestPath
from .store import Store, storable

KINDS = ("gemini",)  # providers that keep files
PATH = re.compile(rf"^/(v1beta|v1)/files(?:/({FILE_ID.pattern}))?$")
UPLOAD_PATH = re.compile(r"^/upload/(v1beta|v1)/files$")
TOKEN_PARAM = "upload_id"  # where Stockyard's upload URL carries its token (Google's own name for it)
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
log = logging.getLogger("stockyard.files")
UPLOAD_TTL_MS = 24 * 3600 * 1000  # an upload not finished in a day is forgotten
FILE_LIFETIME_MS = 48 * 3600 * 1000  # Google deletes a file 48 hours after it was made
MAX_SIZE_DIGITS = 15  # X-Goog-Upload-Header-Content-Length: a whole number, far past any file Google takes
MIME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:\s*;[ -~]*)?")
CHUNK_COMMANDS = {("upload",), ("upload", "finalize"), ("finalize",), ("query",)}
UPLOAD_HEADERS = ("x-goog-upload-status", "x-goog-upload-size-received", "x-goog-upload-chunk-granularity")
FINAL = {"x-goog-upload-status": "final"}  # on a chunk's refusal: google-genai stops instead of retrying


def route_of(path: str, headers: Mapping[str, str], query: str) -> tuple[str, str | None] | None:
    """("upload", None) for ``/upload/{version}/files``, ("files", id or None) for the files routes
    (under ``/v1/`` only for a Google client: ``/v1/files`` is OpenAI's too), else None."""
    if UPLOAD_PATH.match(path):
        return "upload", None
    found = PATH.match(path)
    if found is None or (found.group(1) == "v1" and not google_client(headers, query)):
        return None
    return "files", found.group(2)


def continues_upload(path: str, query: str) -> bool:
    """A chunk of an upload (Stockyard's upload URL), not its start."""
    return UPLOAD_PATH.match(path) is not None and TOKEN_PARAM in dict(parse_qsl(query, keep_blank_values=True))


def endpoint_name(method: str, path: str, query: str) -> str:
    """The trace's endpoint: ``gemini_files.create`` (an upload's start), ``…upload`` (its bytes),
    ``…list``, ``…retrieve``, ``…delete``."""
    if UPLOAD_PATH.match(path):
        return f"gemini_files.{'upload' if continues_upload(path, query) else 'create'}"
    found = PATH.match(path)
    if found is None or found.group(2) is None:
        return "gemini_files.list"
    return "gemini_files." + ("delete" if method == "DELETE" else "retrieve")


def bad(message: str, param: str | None = None) -> ProxyError:
    return ProxyError(400, message, param=param, code="invalid_value")


def upload_not_found() -> ProxyError:
    """One answer for a token that is unknown, expired, finalized or another key's."""
    return ProxyError(
        404, "Upload not found: it does not exist, has ended, or expired", code="not_found", headers=dict(FINAL)
    )


def upload_root(provider: Provider) -> str:
    """The provider's base URL without a trailing API version: ``/upload/v1beta/files`` is beside it."""
    base = provider.base_url.rstrip("/")
    head, _, last = base.rpartition("/")
    return head if last in ("v1beta", "v1", "v1alpha") and "://" in head else base


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


class UploadSessions:
    """The ``gemini_uploads`` rows: who started each upload in progress, and where its bytes go."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def open(self, owner: str, provider: str, upload_path: str) -> str:
        """A new upload's token (its hash kept, with the owner); expired rows go meanwhile."""
        token = secrets.token_urlsafe(32)
        now = int(time.time() * 1000)

        def job(conn) -> None:
            conn.execute("DELETE FROM gemini_uploads WHERE expires_at < ?", (now,))
            conn.execute(
                "INSERT INTO gemini_uploads (token_hash, key_id, provider, upload_path, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (hashed(token), owner, provider, upload_path, now, now + UPLOAD_TTL_MS),
            )

        self._store.write(job)
        return token

    def find(self, token: str) -> tuple[str, str, str, str | None] | None:
        """(owner, provider, upload path, what its chunks so far showed of its pages:
        ``PageCounter.dumps``) of a live upload, None for any other token."""
        if not TOKEN.fullmatch(token):
            return None
        row = (
            self._store.read()
            .execute(
                "SELECT key_id, provider, upload_path, pages_state FROM gemini_uploads"
                " WHERE token_hash = ? AND expires_at >= ?",
                (hashed(token), int(time.time() * 1000)),
            )
            .fetchone()
        )
        return None if row is None else (row["key_id"], row["provider"], row["upload_path"], row["pages_state"])

    def keep_pages(self, token: str, state: str) -> None:
        """Keep what an upload's chunks showed of its pages (``PageCounter.dumps``) for its next chunk,
        on any replica."""
        sql = "UPDATE gemini_uploads SET pages_state = ? WHERE token_hash = ?"
        self._store.write(lambda conn: conn.execute(sql, (state, hashed(token))))

    def close(self, token: str) -> None:
        self._store.write(
            lambda conn: conn.execute("DELETE FROM gemini_uploads WHERE token_hash = ?", (hashed(token),))
        )


def read_pages(counter: PageCounter, body: Encoded, offset: int, final: bool) -> None:
    """Count the pages in a chunk's bytes at ``offset`` (``counter`` goes on from the chunks before;
    ``final``: the upload ends with it), then rewind it to be sent."""
    while counter.state == "reading" and (data := body.read(1 << 20)):
        counter.feed(data, offset)
        offset += len(data)
    if final:
        counter.feed(b"", offset, final=True)
    body.seek(0)


def hashed(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def owned_name(name: object) -> str | None:
    """The id a listed file is owned under: its name (``files/{id}``), when it is one."""
    return name if isinstance(name, str) and file_id_of(name) is not None else None


class GeminiFiles(GoogleCalls):
    """The Files API routes (``ctx.state[BASE_STATE]``: where the client reached this server)."""

    serves = "files"

    def __init__(self, path: RequestPath, ownership: Ownership, sessions: UploadSessions) -> None:
        super().__init__(path, ownership)
        self.sessions = sessions

    def _target(self, provider: Provider, rest: str, query: dict[str, str] | None) -> str:
        if "/upload/" in rest.split("?", 1)[0]:  # an upload's: beside the base URL, or the provider's own URL
            return rest  # (``_request``'s ``base``), as it is
        return version_prefix(provider) + rest + (f"?{urlencode(query)}" if query else "")

    def _headers(self, ctx: RequestContext, provider: Provider, rest: str) -> dict[str, str]:
        return {"Accept": "application/json", **auth_headers(provider)}

    def _handle(self, reply: Reply, ctx: RequestContext, req: Request) -> None:
        found = PATH.match(req.path)  # the server chose this route (route_of): an upload's, or a file's
        file_id = found.group(2) if found else None
        if found is None:
            check_method(req.method, ("POST",))
            token = req.query.get(TOKEN_PARAM)
            if token is not None:
                return self._chunk(reply, ctx, req, token)
            self._rate_limit(ctx)
            return self._start(reply, ctx, req)
        check_method(req.method, ("GET",) if file_id is None else ("GET", "DELETE"))
        self._rate_limit(ctx)  # before the body is read and before any provider call
        req.body  # noqa: B018 - a GET's empty body too: the read deadline ends
        if file_id is None:
            return self._list(reply, ctx, req.query)
        name = FILE_PREFIX + file_id
        _, provider = self._owned(ctx, name, GEMINI_FILE, file_not_found(name))
        answer, _ = self._call(ctx, provider, req.method, f"/{name}")
        if answer.status < 300 and req.method == "DELETE":
            self.ownership.forget(name)
        self._send(reply, ctx, answer)

    # -- uploads --------------------------------------------------------------------------------
    def _start(self, reply: Reply, ctx: RequestContext, req: Request) -> None:
        """An upload's start: checked, sent to the provider, answered with Stockyard's upload URL."""
        headers = req.headers
        protocol = (headers.get("x-goog-upload-protocol") or "").strip().lower()
        if protocol != "resumable" or req.query.get("uploadType") not in (None, "resumable"):
            raise bad(
                "only the resumable upload protocol is served (X-Goog-Upload-Protocol: resumable, as google-genai "
                "sends it); multipart and media uploads are not",
                "X-Goog-Upload-Protocol",
            )
        if (headers.get("x-goog-upload-command") or "").strip().lower() != "start":
            raise bad("an upload begins with X-Goog-Upload-Command: start", "X-Goog-Upload-Command")
        size = (headers.get("x-goog-upload-header-content-length") or "").strip()
        if not (size.isascii() and size.isdigit() and len(size) <= MAX_SIZE_DIGITS):
            raise bad(
                "X-Goog-Upload-Header-Content-Length must be the file's size in bytes",
                "X-Goog-Upload-Header-Content-Length",
            )
        mime = headers.get("x-goog-upload-header-content-type")
        if mime is not None and not (len(mime) <= 255 and MIME.fullmatch(mime.strip())):
            raise bad("X-Goog-Upload-Header-Content-Type must be a MIME type", "X-Goog-Upload-Header-Content-Type")
        ctx.raw = req.body
        body = json_object(ctx.raw or b"{}")
        meta = body.get("file", {})
        if not isinstance(meta, dict):
            raise bad("file must be an object (the File's metadata)", "file")
        chosen = meta.get("name")
        if chosen is not None and (
            not isinstance(chosen, str) or file_id_of(FILE_PREFIX + chosen.removeprefix(FILE_PREFIX)) is None
        ):
            raise bad("file.name must be files/{id}: lowercase letters, digits and dashes, at most 40", "file.name")
        provider = self.provider_of_kind(ctx, KINDS, "Gemini", "files need a Gemini provider")
        sent = {
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(int(size)),
            **({"X-Goog-Upload-Header-Content-Type": mime.strip()} if mime is not None else {}),
        }
        version = UPLOAD_PATH.match(req.path).group(1)  # type: ignore[union-attr]
        root = upload_root(provider)
        at = f"/upload/{provider.base_url.rstrip('/')[len(root) + 1 :] or 'v1beta'}/files"  # the base URL's version
        answer, resp = self._request(ctx, provider, "POST", at, ctx.raw or b"{}", extra=sent, base=root)
        self._read(ctx, answer, resp)
        theirs = answer.headers.get("x-goog-upload-url")
        if answer.status >= 300 or not theirs:
            if answer.status < 300:
                raise ProxyError(502, f"provider {provider.name!r} answered the upload's start without an upload URL")
            return self._send(reply, ctx, answer)
        raw_url = resp.headers.get("x-goog-upload-url") or theirs  # unscrubbed: only the path is kept
        if origin_of(raw_url) != origin_of(upload_root(provider)):
            raise ProxyError(502, f"provider {provider.name!r} answered an upload URL at another host")
        parts = urlsplit(raw_url)
        kept = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "key"])
        token = self.sessions.open(owner_of(ctx), provider.name, parts.path + (f"?{kept}" if kept else ""))
        base = ctx.state.get(BASE_STATE) or "http://127.0.0.1"  # where the client reached this server
        ours = f"{base}/upload/{version}/files?{urlencode({TOKEN_PARAM: token, 'upload_protocol': 'resumable'})}"
        extra = {k: v for k, v in answer.headers.items() if k in UPLOAD_HEADERS}
        answer.headers = {k: v for k, v in answer.headers.items() if k != "x-goog-upload-url"}
        self._send(reply, ctx, answer, {**extra, "x-goog-upload-url": ours})

    def _chunk(self, reply: Reply, ctx: RequestContext, req: Request, token: str) -> None:
        """Bytes of an upload (or a ``query``), for the key that started it only; streamed from a spool."""
        ctx.reply_headers.update(FINAL)  # a refusal ends the upload for google-genai (it retries one without)
        session = self.sessions.find(token)
        if session is None:
            raise upload_not_found()
        owner, provider_name, upstream, pages_state = session
        if ctx.key is None and presented_key(req.headers) is None and self._path.gate.required:
            record = self._path.gate.ring.by_id(owner)  # the token stands for the key that started it
            if record is None:
                raise upload_not_found()
            key = recheck_key(record, None)
            ctx.key, ctx.key_id, ctx.project = key, key.id, key.project
        if owner_of(ctx) != owner:
            raise upload_not_found()
        self._rate_limit(ctx)
        command = tuple(c.strip().lower() for c in (req.headers.get("x-goog-upload-command") or "").split(","))
        if command not in CHUNK_COMMANDS:
            raise bad(
                "X-Goog-Upload-Command must be upload, 'upload, finalize', finalize or query", "X-Goog-Upload-Command"
            )
        sent = {"X-Goog-Upload-Command": ", ".join(command)}
        offset = ""  # a query takes none: one sent anyway is not read (nor sent, nor traced)
        if command != ("query",):
            offset = (req.headers.get("x-goog-upload-offset") or "").strip()
            if not (offset.isascii() and offset.isdigit() and len(offset) <= MAX_SIZE_DIGITS):
                raise bad("X-Goog-Upload-Offset must be the bytes sent before this chunk", "X-Goog-Upload-Offset")
            sent["X-Goog-Upload-Offset"] = str(int(offset))
        provider = self._provider_named(provider_name)
        base = origin_of(upload_root(provider))
        counter = PageCounter.loads(pages_state)
        with req.spool() as (spool, size):
            ctx.raw = f'{{"command": "{", ".join(command)}", "offset": {int(offset or 0)}, "bytes": {size}}}'.encode()
            body = Encoded("application/octet-stream", [(0, size)], spool)
            if command != ("query",):
                read_pages(counter, body, int(offset), "finalize" in command)
            answer, resp = self._request(
                ctx,
                provider,
                "POST",
                upstream,
                body,
                content_type="application/octet-stream",
                length=size,
                extra=sent,
                base=base,
            )
            self._read(ctx, answer, resp)
        extra = {k: v for k, v in answer.headers.items() if k in UPLOAD_HEADERS}
        if answer.status < 300 and extra.get("x-goog-upload-status") == "final":
            self.sessions.close(token)
            doc = self._json(answer)
            made = doc.get("file") if isinstance(doc, dict) else None
            name = made.get("name") if isinstance(made, dict) else None
            if isinstance(name, str) and file_id_of(name) is not None and storable(name):
                pages = uploaded_pages(counter, name)
                if not self.ownership.replace(name, GEMINI_FILE, owner, provider.name, FILE_LIFETIME_MS, pages):
                    log.warning("a Gemini file named %r by two keys' uploads stays with the first to finish", name)
        elif answer.status < 300 and (state := counter.dumps()) != pages_state:  # a video's: once, "not_pdf"
            self.sessions.keep_pages(token, state)
        ctx.reply_headers.pop("x-goog-upload-status", None)
        self._send(reply, ctx, answer, extra)

    # -- lists ---------------------------------------------------------------------------------
    def _list(self, reply: Reply, ctx: RequestContext, query: dict[str, str]) -> None:
        """This key's files, from the provider's pages filtered (:meth:`GoogleCalls._owned_list`;
        a file is owned under its name, ``files/{id}``)."""
        provider = self.provider_of_kind(ctx, KINDS, "Gemini", "files need a Gemini provider")
        self._owned_list(reply, ctx, query, provider, "/files", "files", GEMINI_FILE, owned_name)

    @staticmethod
    def _json(answer: Answer) -> object:
        try:
            return json.loads(answer.data)
        except ValueError:
            return None

"""OpenAI files and batches: passed through to an OpenAI-kind provider, owned by the key that made them.

``/v1/files`` (upload, list, retrieve, content, delete) and ``/v1/batches`` (create, list,
retrieve, cancel) carry no model, so they go to a provider chosen without one: the first
OpenAI-kind provider (openai, azure, openai-compatible) in the registry's order that the
client key may use, or the one named by ``x-stockyard-provider``. An object's later calls go
to the provider recorded with it.

Every file and batch belongs to the client key that created it (``owned_objects``; open
mode has one owner, ``''``); a batch's output and error files become its owner's when
Stockyard first sees them. Another key gets the same 404 as for a missing id, so existence
does not leak; lists are the provider's pages filtered to the key's own objects. Each call
leaves a trace row (metadata only, never file bytes) costing 0; a completed batch's usage is
recorded once by :mod:`stockyard.batch_costs`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import secrets
import sqlite3
import time
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from io import RawIOBase
from typing import IO, Any, BinaryIO, Callable, Iterable, Iterator, TypeVar, cast
from urllib.parse import urlencode

from . import estimate
from .budgets import owner_scopes, user_of
from .context import Conversation, RequestContext, Route
from .conversations import kept_history_tokens
from .conversations_api import item_list, minted_here
from .deleted import keep_deleted, kept_mark
from .errors import ANTHROPIC, GEMINI, OPENAI, RESPONSES, ClientGone, ProxyError
from .httpio import DuplicateMember, Request, check_method, json_object, unique_members, whole_number
from .keys import KeyRecord
from .limits import check_request_numbers
from .modules.guard import batch_policy
from .modules.ratelimit import admit_call
from .objectrefs import (
    ANTHROPIC_CONTAINER,
    ANTHROPIC_FILE,
    CACHE_FIELDS,
    FILE_PREFIX,
    MESSAGE_REPLY,
    MESSAGE_THREAD,
    anthropic_container,
    anthropic_container_not_found,
    anthropic_file_not_found,
    cache_id_of,
    cache_not_found,
    check_store_ids,
    continued_message,
    diagnosed_message,
    file_not_found,
    file_uri_id,
    first_places,
    hides_names,
    may_name,
    may_name_file,
    may_name_file_url,
    named_caches,
    referenced_containers,
    referenced_file_urls,
    referenced_files,
    referenced_gemini_files,
    referenced_vector_stores,
    thread_not_found,
)
from .pdfpages import count_pages, uploaded_pages
from .providers import AZURE_API_VERSION, Provider, Registry, media
from .providers.responses import is_reference
from .providers.responses_adapters import upstream_headers
from .proxy import REQUEST_ID_HEADERS, Reply, RequestPath, fail, passed_headers, refused, send_error, unexpected
from .store import Store, storable
from .store.db import insert_many
from .upstream import SHUTDOWN_CODE, UpstreamError, UpstreamResponse

# A provider object's id in a path: never dots only, which the provider (or a proxy before it) would
# read as a relative path — ``…/{own container}/files/..`` is the container itself, so a DELETE
# there would end an object Stockyard still records as its key's.
OBJECT_ID = r"((?!\.+(?:/|$))[A-Za-z0-9_.-]{1,200})"
PATH = re.compile(rf"^/v1/(files|batches)(?:/{OBJECT_ID}(/content|/cancel)?)?$")
log = logging.getLogger("stockyard.files")
T = TypeVar("T")  # what a check of a batch line's object found (on_line)
FILE_KINDS = ("openai", "azure", "openai-compatible")  # providers that serve files and batches
PROVIDER_HEADER = "x-stockyard-provider"
OPEN_OWNER = ""  # the one owner in open mode (no client keys)
GEMINI_FILE = "gemini_file"  # Gemini's Files API (gemini_files): owned under its name, ``files/{id}``
AZURE_BATCH_VERSION = "2024-10-21"  # the first GA api-version with files and batches
LIST_PAGE = 100  # objects asked of the provider per page while filtering a list (batches allow 100 at most)
MAX_LIST_PAGES = 20  # provider pages a list request reads at most once it holds one of the key's objects;
# past that, has_more says "ask again" after its last one (until then it reads on: see read_on)
# ... and while it holds none: a key whose objects all went at the provider (expired, deleted elsewhere)
# would have each list of it read the provider's whole list, a call per LIST_PAGE objects
MAX_SEARCH_PAGES = 50  # 5,000 objects of others at most: each page a call on the shared provider key's rate limit
# A reply to a request opting in to Anthropic's diagnostics is the key's to name for a day (_expiring_replies):
# the comparison is of prompt-cache prefixes, which live an hour at most
REPLY_KEPT_MS = 24 * 3600 * 1000
LIST_LIMITS = {"files": (10000, 10000), "batches": (20, 100)}  # (default, largest) page size, as OpenAI's
KIND = {"files": "file", "batches": "batch"}
LOST_BATCH_LOOK = 20  # the provider's newest batches searched for one whose create answer was lost
# A batch in one of these states runs no more requests: what its output file holds is what it cost
# (an expired or cancelled batch's finished requests are billed too; a failed one has none).
ENDED = frozenset({"completed", "expired", "cancelled", "failed"})


def route_of(path: str) -> tuple[str, str | None, str] | None:
    """(collection, object id, action) for a files or batches path, or None."""
    match = PATH.match(path)
    if match is None:
        return None
    collection, object_id, action = match.groups()
    if (action == "/content" and collection != "files") or (action == "/cancel" and collection != "batches"):
        return None
    return collection, object_id, action or ""


def endpoint_name(method: str, path: str) -> str:
    """The trace's endpoint: ``files.create``, ``files.content``, ``batches.cancel``, …"""
    found = route_of(path)
    if found is None:
        return "files"
    collection, object_id, action = found
    if action:
        return f"{collection}.{action[1:]}"
    if object_id is None:
        return f"{collection}.{'create' if method == 'POST' else 'list'}"
    return f"{collection}.{'delete' if method == 'DELETE' else 'retrieve'}"


def id_action_route(pattern: re.Pattern[str], path: str) -> tuple[str | None, str] | None:
    """(object id or None, action or ``""``) of a path ``pattern`` (its two groups) matches, or None."""
    match = pattern.match(path)
    if match is None:
        return None
    object_id, action = match.groups()
    return object_id, action or ""


def id_action_endpoint(name: str, method: str, found: tuple[str | None, str] | None) -> str:
    """The trace's endpoint for an :func:`id_action_route`: ``name.create``, ``name.list``,
    ``name.retrieve``, ``name.delete``, or ``name.{action}``."""
    if found is None:
        return name
    object_id, action = found
    if action:
        return f"{name}.{action[1:]}"
    if object_id is None:
        return f"{name}.{'create' if method == 'POST' else 'list'}"
    return f"{name}.{'delete' if method == 'DELETE' else 'retrieve'}"


# owned_objects kind of a create sent to the provider, its answer not yet recorded (Ownership.begin_create);
# one this old is a process's that died before its answer.
IN_FLIGHT = "create_in_flight"
IN_FLIGHT_MS = 3_600_000


ALLOWED_METHODS = {
    ("files", False, ""): ("GET", "POST"),
    ("files", True, ""): ("GET", "DELETE"),
    ("files", True, "/content"): ("GET",),
    ("batches", False, ""): ("GET", "POST"),
    ("batches", True, ""): ("GET",),
    ("batches", True, "/cancel"): ("POST",),
}


NOT_FOUND = {
    "file": "No such File object: {}",
    "batch": "No batch found with id '{}'.",
    "container": "Container with id '{}' not found.",
    "vector_store": "No vector store found with id '{}'.",
    "video": "Video with id '{}' not found.",
    "upload": "Upload with id '{}' not found.",
}


def not_found(kind: str, object_id: str, param: str | None = "id", where: str = "") -> ProxyError:
    """OpenAI's own 404 for an id, the same for one that does not exist and for another key's;
    ``where`` (a batch file's line) goes beside the id, never inside its quotes."""
    message = NOT_FOUND[kind].format(object_id)
    if where:
        message = f"{message.removesuffix('.')} ({where})."
    return ProxyError(404, message, param=param, type="invalid_request_error")


def page_limit(query: dict[str, str], default: int, largest: int) -> int:
    """A list's ``limit`` (``default`` when not given): a whole number from 1 to ``largest``, else a 400."""
    limit = whole_number(query.get("limit", str(default))) or 0
    if not 1 <= limit <= largest:
        raise ProxyError(
            400, f"'limit' must be a whole number from 1 to {largest}", param="limit", code="invalid_value"
        )
    return limit


def read_on(found: list, pages: int) -> bool:
    """Whether a list filtered to a key's objects reads another provider page (the provider holding
    more): until the page holds one of the key's — the SDKs go on from the last object given, so a
    page of none saying ``has_more`` had them stop there (or, asking again without a cursor, get the
    first page for ever) — within ``MAX_SEARCH_PAGES``, then up to ``MAX_LIST_PAGES`` pages in all."""
    return pages < (MAX_LIST_PAGES if found else MAX_SEARCH_PAGES)


def id_page_query(query: dict[str, str], default: int, largest: int) -> tuple[int, str | None, str | None]:
    """An Anthropic list's ``limit`` (1 to ``largest``), ``before_id`` and ``after_id`` (not both), else a 400."""
    limit = whole_number(query.get("limit", str(default))) or 0
    if not 1 <= limit <= largest:
        raise ProxyError(400, f"limit: must be a whole number from 1 to {largest}", code="invalid_value")
    before, after = query.get("before_id") or None, query.get("after_id") or None
    if before and after:
        raise ProxyError(400, "give before_id or after_id, not both", code="invalid_value")
    return limit, before, after


def file_ids_of(body: dict, name: str) -> list[str]:
    """A body's list of file ids under ``name`` (absent: none), or a 400."""
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(f, str) and f for f in value):
        raise ProxyError(400, f"'{name}' must be an array of file ids", param=name, code="invalid_type")
    return value


def owner_of(ctx: RequestContext) -> str:
    return ctx.key_id or OPEN_OWNER


def upstream_path(provider: Provider, rest: str, query: dict[str, str] | None = None) -> str:
    """Where ``/files…`` or ``/batches…`` lives at this provider (Azure: under /openai, with an api-version)."""
    params = dict(query or {})
    if provider.kind == "azure":
        version = max(provider.api_version or AZURE_API_VERSION, AZURE_BATCH_VERSION)  # dated: sorts as text
        params = {"api-version": version, **params}
        if not provider.base_url.rstrip("/").endswith("/openai"):
            rest = "/openai" + rest
    return rest + (f"?{urlencode(params)}" if params else "")


def allowed_providers(registry: Registry, key: KeyRecord | None, kinds: tuple[str, ...] = FILE_KINDS) -> list[Provider]:
    """The providers of ``kinds`` (OpenAI's by default) this key may use, in the registry's order
    (the first is the default)."""
    return [
        p
        for p in registry.providers
        if p.kind in kinds and (key is None or key.allows_provider(p.name, registry.routes_to))
    ]


def _keeps_nothing(provider: Provider, response: dict) -> None:
    """A batch line's conversation is only counted here, never kept."""


OWNER_CHUNK = 500  # ids looked up per statement (PostgreSQL and SQLite both take this many parameters)


# The URLs a batch line may name, as the endpoints they are (what a budget reserves for each): those
# of OpenAI's batch ``endpoint`` enum a hold here can count (not ``/v1/videos``). Azure's lines name
# them without ``/v1``.
LINE_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/v1/moderations": "moderations",
    "/v1/images/generations": "image_generations",  # GPT image models, at the batch price too
    "/v1/images/edits": "image_edits",  # JSON edits only: a JSONL line carries no form
}
BATCH_PRICE = (1, 2)  # the Batch API's price: half the model's normal rates (OpenAI's rule, images too)


def line_endpoint(url: object, number: int) -> str:
    """The endpoint a batch line's ``url`` names (its query aside; Azure's without ``/v1``): what
    its hold counts. A line naming none is held as a chat call (no provider runs it: the file fails
    their validation); one naming an endpoint no hold here counts is a 400 naming the line, never
    held as another endpoint's call."""
    if url is None:
        return "chat"
    path = url.split("?", 1)[0].rstrip("/") if isinstance(url, str) else ""
    found = LINE_ENDPOINTS.get(path) or LINE_ENDPOINTS.get(f"/v1{path}")
    if found is None:
        shown = repr(url[:100]) if isinstance(url, str) else f"a {type(url).__name__}"
        known = ", ".join(LINE_ENDPOINTS)
        raise ProxyError(
            400,
            f"line {number} of the batch file names the url {shown}: a batch line here may name {known}",
            param="file",
            code="unsupported_batch_endpoint",
        )
    return found


def restricted(key: KeyRecord | None) -> bool:
    """A key held to a list of models (which its batch files must keep to)."""
    return key is not None and key.models is not None and "*" not in key.models


MAX_LINE = 16 * 1024 * 1024  # a JSONL line longer than this is skipped, never held


def lines_of(
    stream: IO[bytes] | Iterator[bytes], block: int = 65536, too_long: Callable[[], None] | None = None
) -> Iterator[bytes]:
    """The non-blank lines of a JSONL stream (a reader or an iterator of chunks), stripped, one
    line held at a time, in time linear in the stream's size (:class:`LineTap`).

    A line longer than ``MAX_LINE`` is skipped, after ``too_long()`` (which may raise: a check
    that must see every line refuses instead)."""
    reader = getattr(stream, "read", None)  # a reader first: files iterate by lines, unbounded
    chunks = iter(lambda: reader(block), b"") if reader is not None else stream
    found: list[bytes] = []
    tap = LineTap(found.extend, too_long)
    for chunk in chunks:
        tap.chunk(chunk)
        if found:
            yield from found
            found.clear()
    tap.end()
    yield from found


class LineTap:
    """The non-blank lines of a JSONL stream fed to it chunk by chunk, stripped, handed to ``each``
    (the lines a chunk completed, at once) before :meth:`chunk` returns — so a relay that feeds each
    chunk before it goes on (``ProviderCalls._relay``) has read every line before its client holds
    it whole; the last, unended line at :meth:`end`. One line held at a time, in time linear in the
    stream's size; a line longer than ``MAX_LINE`` is skipped, after ``too_long()`` (which may raise)."""

    def __init__(self, each: Callable[[list[bytes]], Any], too_long: Callable[[], None] | None = None) -> None:
        self._each = each
        self._too_long = too_long
        self._head: list[bytes] = []  # the pieces of the line not ended yet
        self._held = 0  # their size
        self._skipping = False  # the rest of a line too long to hold is being passed over

    def _refused(self) -> None:
        if self._too_long is not None:
            self._too_long()

    def chunk(self, data: bytes) -> None:
        parts = bytes(data).split(b"\n")  # split and stripped in C: a chunk of blank lines costs little
        tail = parts.pop()
        if parts:
            if self._skipping:
                parts[0], self._skipping = b"", False
            elif self._head:
                parts[0] = b"".join([*self._head, parts[0]])
                if len(parts[0]) > MAX_LINE:
                    self._refused()
                    parts[0] = b""
            self._head, self._held = [], 0
            if len(data) > MAX_LINE and any(len(part) > MAX_LINE for part in parts):  # a huge chunk
                self._refused()
                parts = [part for part in parts if len(part) <= MAX_LINE]
            lines = list(filter(None, map(bytes.strip, parts)))
            if lines:
                self._each(lines)
        if tail and not self._skipping:
            self._head.append(tail)
            self._held += len(tail)
            if self._held > MAX_LINE:
                self._refused()
                self._head, self._held, self._skipping = [], 0, True

    def end(self) -> None:
        last = b"".join(self._head).strip()
        self._head, self._held = [], 0
        if last:
            self._each([last])


# -- ownership ------------------------------------------------------------------------------------


def _recording_reply(
    kind: str, message_id: str, owner: str, provider: str, replaced: str | None, tokens: int | None = None
) -> Callable[[sqlite3.Connection], None]:
    """The write job that records a Messages reply as ``owner``'s row of ``kind`` (a thread's reply,
    ``MESSAGE_THREAD``, with the ``tokens`` the thread holds after it; a reply to a request opting in to
    diagnostics, ``MESSAGE_REPLY``, without) and drops the key's row of the reply it ``replaced``: Anthropic
    lets a thread's reply be continued once, and a diagnosed reply names the one before it, so a chain of
    turns keeps one row, not one a turn (a second continue of a thread's reply is the unknown reply's 404,
    after which the SDK sends the whole conversation). A reply id held already keeps its owner; with
    ``tokens``, the owner's own row takes them (a stream's start recorded its worst case, its end the count)."""
    insert = (
        "INSERT OR IGNORE INTO owned_objects (id, kind, key_id, provider, created_at, tokens) VALUES (?, ?, ?, ?, ?, ?)"
    )
    update = "UPDATE owned_objects SET tokens = ? WHERE id = ? AND kind = ? AND key_id = ?"
    delete = "DELETE FROM owned_objects WHERE id = ? AND kind = ? AND key_id = ?"
    row = (message_id, kind, owner, provider, int(time.time() * 1000), tokens)

    def job(conn: sqlite3.Connection) -> None:
        if conn.execute(insert, row).rowcount != 1 and tokens is not None:
            conn.execute(update, (tokens, message_id, kind, owner))
        if replaced is not None and replaced != message_id:
            conn.execute(delete, (replaced, kind, owner))

    return job


def _expiring_replies(owner: str) -> Callable[[sqlite3.Connection], None]:
    """The write job that drops ``owner``'s diagnosed replies (``MESSAGE_REPLY``) older than
    ``REPLY_KEPT_MS``: the last reply of each chain would otherwise stay for ever."""
    expire = "DELETE FROM owned_objects WHERE key_id = ? AND kind = ? AND created_at < ?"
    before = int(time.time() * 1000) - REPLY_KEPT_MS

    def job(conn: sqlite3.Connection) -> None:
        conn.execute(expire, (owner, MESSAGE_REPLY, before))

    return job


def _inserting_new(ids: list[str], kind: str, owner: str, provider: str) -> Callable[[sqlite3.Connection], None]:
    """The write job that records ``ids`` as ``owner``'s, one held already keeping its owner."""
    now = int(time.time() * 1000)
    sql = "INSERT OR IGNORE INTO owned_objects (id, kind, key_id, provider, created_at) VALUES (?, ?, ?, ?, ?)"
    return lambda conn: insert_many(conn, sql, [(i, kind, owner, provider, now) for i in ids])


@dataclass(frozen=True)
class Owned:
    id: str
    kind: str
    key_id: str
    provider: str
    billed: bool
    tokens: int | None = None  # a Gemini context cache's tokens, a message thread's size (None: not known)
    pages: int | None = None  # an uploaded PDF's pages (pdfpages.PageCounter; None: not a PDF, or not counted)


class Ownership:
    """The ``owned_objects`` table: who made each file and batch, and where it lives.

    Claims wait for their commit (``Store.write``): a client that uploads and lists at once
    must see its file.
    """

    def __init__(self, store: Store, spend: "BatchSpend") -> None:
        self._store = store
        self._spend = spend  # what a batch's hold leaving changes on its owner's budgets

    def find(self, object_id: str, kind: str, owner: str) -> Owned | None:
        """The object if ``owner`` made it; None for another key's or an unknown id."""
        if not storable(object_id):
            return None
        row = (
            self._store.read()
            .execute(
                "SELECT id, kind, key_id, provider, billed, tokens, pages FROM owned_objects WHERE id = ? AND kind = ?",
                (object_id, kind),
            )
            .fetchone()
        )
        if row is None or row["key_id"] != owner:
            return None
        billed = bool(row["billed"])
        return Owned(row["id"], row["kind"], row["key_id"], row["provider"], billed, row["tokens"], row["pages"])

    def check_references(self, ctx: RequestContext) -> None:
        """A model call naming a file by ``file_id`` (a chat ``file`` part, a Responses
        ``input_file`` or ``input_image``) may name only this key's files, as on ``/v1/files``,
        and a code interpreter tool's ``container`` only this key's containers
        (``containers_api``): the provider holds every key's objects under the one provider key,
        so another key's id (or one Stockyard never saw) is OpenAI's 404 here, before any module
        or provider call. A ``file_search`` tool's ``vector_store_ids`` are refused only when
        another key made the store (``vector_stores_api``): shared stores are made outside
        Stockyard, so one no key owns goes as sent. The body as it will be sent: with the items
        of a conversation it names put in (``conversations.open``; items added through ``/v1/conversations`` were never
        checked), so its bytes alone do not say."""
        if ctx.dialect == ANTHROPIC:
            return self.check_anthropic_objects(ctx)
        if ctx.key is None:
            return
        if ctx.upload is not None:
            return self.check_form_files(ctx.upload.fields, owner_of(ctx))
        if ctx.dialect == GEMINI:
            if may_name_file(ctx.raw):
                ctx.pdf_pages.update(self.check_gemini_files(ctx.body, owner_of(ctx)))
            return self.check_cached_content(ctx)
        if ctx.dialect not in (OPENAI, RESPONSES):
            return
        walk, owner = estimate.put_in(ctx) or hides_names(ctx.raw), owner_of(ctx)  # items put in: the bytes do not say
        if ctx.endpoint == "image_edits" and (walk or b"file_id" in ctx.raw):  # a JSON edit's: each named where it is
            for named, param in first_places(ctx.body, ("file_id",)).items():
                self.require_files([named], owner, param)
        if walk or b"container" in ctx.raw:
            for container_id, param in referenced_containers(ctx.body).items():
                if self.find(container_id, "container", owner) is None:
                    raise not_found("container", container_id, param)
        if walk or b"vector_store" in ctx.raw:
            stores = referenced_vector_stores(ctx.body)
            check_store_ids(stores)
            theirs = self.first_of_another(list(stores), "vector_store", owner)
            if theirs is not None:
                raise not_found("vector_store", theirs, stores[theirs])
        if walk or b"file_id" in ctx.raw:
            ctx.pdf_pages.update(self.require_files(referenced_files(ctx.body), owner, "file_id"))
        if walk or b"cached_content" in ctx.raw or b"cachedContent" in ctx.raw:
            for value in first_places(ctx.body, CACHE_FIELDS):  # Google's OpenAI-compatible API reads them
                self.owned_cache(value, owner)
        if walk or may_name_file_url(ctx.raw):  # and a Gemini file by its URI where a part has a URL
            ctx.pdf_pages.update(self.gemini_files_by_url(ctx.body, owner))

    def gemini_files_by_url(self, body: object, owner: str, line: int | None = None) -> dict[str, int]:
        """Each Gemini file an OpenAI-shaped body names by URL (``objectrefs.referenced_file_urls``:
        Google's OpenAI-compatible endpoint reads it) is ``owner``'s, else Google's 404 (``line``: the
        batch line's, saying so); the pages of those that are PDFs Stockyard counted, by the URI as the
        body names it, which a budget holds as the native path's ``fileData`` (``check_gemini_files``)."""
        pages: dict[str, int] = {}
        for uri, param in referenced_file_urls(body).items():
            check = functools.partial(self.gemini_file, uri, owner, param)
            owned = check() if line is None else on_line(line, check)
            if owned.pages is not None:
                pages[uri] = owned.pages
        return pages

    def check_form_files(
        self, fields: dict[str, str | list[str]], owner: str, params: dict[str, str] | None = None
    ) -> None:
        """A multipart form's text fields naming a file by id (``file_id``, ``mask[file_id]``,
        ``images[][file_id]``: an image edit's JSON shape written as a form) are relayed with it and
        the provider may read them, so they may name only this key's files, as a JSON body's do.
        ``params``: the param a field's refusal names where it is not the field's own name (a video's
        ``input_reference[file_id]`` is its ``input_reference``)."""
        for name, value in fields.items():
            if name == "file_id" or name.endswith("[file_id]"):
                param = (params or {}).get(name, name)
                self.require_files([value] if isinstance(value, str) else value, owner, param)

    def check_anthropic_objects(self, ctx: RequestContext) -> None:
        """A Messages API call (``/v1/messages``, ``count_tokens``) may name only this key's
        Anthropic objects: its code execution container (the body's ``container``: the tool would
        run the request's code there, with the files left in it) and its Anthropic files
        (``anthropic_files``) wherever a ``file_id`` stands — a document's or image's
        ``{"type": "file"}`` source, a ``container_upload``, a code execution result sent back: a
        file holds a prompt — and the Gemini files it names by URL (:meth:`gemini_files_by_url`: routed
        to Google's OpenAI-compatible endpoint, a URL source is translated to a part's URL, which Google
        reads the uploaded file from). The provider holds every key's under the one provider key, so another
        key's, or one Stockyard never saw (a container made before they were owned: the client
        leaves ``container`` out and gets a new one), is Anthropic's 404 here, before any module or
        provider call; a ``container`` of another shape is its 400, in open mode too. The files the
        code execution tool writes for this call and the container it runs in are claimed for the
        key (``ctx.claim_made``, which the native adapter calls before the answer naming them goes
        on), in open mode too: on the stream relay's thread left to the writer (``ctx.claims_deferred``),
        the stream's bytes held until it is committed. A message thread (:meth:`check_thread`) and a
        ``diagnostics.previous_message_id`` (:meth:`check_diagnosed`) alike, their replies recorded
        (:meth:`keep_replies`)."""
        owner = owner_of(ctx)

        def claim(kind: str, ids: set[str]) -> None:
            provider = ctx.attempt.provider
            if provider is None:
                return
            if ctx.claims_deferred is not None:
                ctx.claims_deferred.append(self.claim_new_later(ids, kind, owner, provider.name))
            else:
                self.claim_new(ids, kind, owner, provider.name)

        ctx.claim_made = claim
        self.require_anthropic_container(ctx.body, None if ctx.key is None else owner)
        continued = self.check_thread(ctx, owner)
        named = self.check_diagnosed(ctx, owner)
        self.keep_replies(ctx, owner, continued, named)
        if ctx.key is None:  # open mode: one owner
            return
        if may_name_file_url(ctx.raw):  # a URL source goes to an OpenAI-compatible Google endpoint as a part's URL
            ctx.pdf_pages.update(self.gemini_files_by_url(ctx.body, owner))
        if may_name(ctx.raw, b"file_id"):
            ctx.pdf_pages.update(self.require_anthropic_files(ctx.body, owner))

    def check_thread(self, ctx: RequestContext, owner: str) -> str | None:
        """A Messages call's ``thread`` (Anthropic's message threads: it keeps the conversation under each
        reply's id, and a ``continue`` names the reply it goes on from) may continue only a reply this key
        had (in open mode: the one owner's): Anthropic sees one owner, Stockyard's provider key, and would go
        on from any key's conversation. Another key's, or one Stockyard never recorded, is Anthropic's
        ``thread_not_found`` 404 here, before any module or provider call (its SDK then sends the whole
        conversation under a new thread). The conversation it continues is billed as the call's input:
        its size goes on ``ctx.thread_tokens`` for the worst case. The reply it continues (None for none),
        whose row its reply's replaces (:meth:`keep_replies`)."""
        previous = continued_message(ctx.body)
        if previous is not None:
            owned = self.find(previous, MESSAGE_THREAD, owner)
            if owned is None:
                raise thread_not_found(previous)
            ctx.thread_tokens = owned.tokens or 0
        return previous

    def keep_replies(self, ctx: RequestContext, owner: str, continued: str | None, named: str | None) -> None:
        """A ``/v1/messages`` request's replies are recorded as the key's when a later request may name
        them: a thread request's with the thread's size (replacing the row of the reply it ``continued``),
        a request carrying ``diagnostics``'s (replacing the row its ``previous_message_id`` ``named``; open
        mode: as sent, unrecorded) — through ``ctx.thread_kept``, which the native adapter calls before the
        reply naming it goes on; on the stream relay's thread left to the writer, as claims are."""
        threaded = ctx.body.get("thread") is not None
        diagnosed = ctx.key is not None and ctx.body.get("diagnostics") is not None  # open mode: as sent
        if ctx.endpoint != "messages" or not (threaded or diagnosed):
            return

        def kept(message_id: str, tokens: int) -> None:
            provider = ctx.attempt.provider
            if provider is None or not storable(message_id):
                return
            jobs: list[Callable[[sqlite3.Connection], None]] = []
            if threaded:
                jobs.append(_recording_reply(MESSAGE_THREAD, message_id, owner, provider.name, continued, tokens))
            if diagnosed:
                reply = _recording_reply(MESSAGE_REPLY, message_id, owner, provider.name, named)
                jobs += [reply, _expiring_replies(owner)]

            def job(conn: sqlite3.Connection) -> None:
                for each in jobs:
                    each(conn)

            if ctx.claims_deferred is not None:
                ctx.claims_deferred.append(self._store.write_later(job, queue_wait=0.0))
            else:
                self._store.write(job)

        ctx.thread_kept = kept

    def check_diagnosed(self, ctx: RequestContext, owner: str) -> str | None:
        """A Messages call's ``diagnostics.previous_message_id`` (``objectrefs.diagnosed_message``) goes to
        Anthropic only when it names a reply this key had to a request opting in to diagnostics, or a
        thread's; any other id goes as ``null``, opted in with nothing to compare: Anthropic sees one owner
        and would say how this prompt differs from another key's (its model, system, tools, the tokens a
        cache would have read). Another key's reply and an unknown id are the same. In open mode (one
        owner) it goes as sent, unrecorded. The key's own id it names (None for none), whose row its
        reply's replaces."""
        named = diagnosed_message(ctx.body)
        if named is None or ctx.key is None:
            return named
        if any(self.find(named, kind, owner) for kind in (MESSAGE_REPLY, MESSAGE_THREAD)):
            return named
        ctx.body = {**ctx.body, "diagnostics": {**ctx.body["diagnostics"], "previous_message_id": None}}
        ctx.body_changed = True
        return None

    def require_anthropic_container(self, body: object, owner: str | None, where: str = "") -> None:
        """The container a Messages body names (``objectrefs.anthropic_container``: a malformed one is
        a 400) is ``owner``'s, else Anthropic's 404 (``where`` says which request of a batch); owner
        None (open mode): the shape alone."""
        container_id = anthropic_container(body, where)
        if container_id is None or owner is None:
            return
        if self.find(container_id, ANTHROPIC_CONTAINER, owner) is None:
            raise anthropic_container_not_found(container_id, where)

    def require_anthropic_files(self, body: object, owner: str, where: str = "") -> dict[str, int]:
        """Every file a Messages body names is ``owner``'s Anthropic file, else Anthropic's 404 (``where``
        says which request of a batch); each id looked up once. The pages of those that are PDFs
        Stockyard counted, by id (``RequestContext.pdf_pages``)."""
        pages: dict[str, int] = {}
        for file_id in sorted(referenced_files(body)):
            owned = self.find(file_id, ANTHROPIC_FILE, owner)
            if owned is None:
                raise anthropic_file_not_found(file_id, where)
            if owned.pages is not None:
                pages[file_id] = owned.pages
        return pages

    def check_cached_content(self, ctx: RequestContext) -> None:
        """A Gemini-native call (generateContent, streamGenerateContent, countTokens) may name only
        this key's context cache (``gemini_cache``): the cache holds a prompt, and the provider
        would answer from another key's as well. Another key's, or one Stockyard never saw, is
        Google's 404 here, before any module or provider call. Each cache goes on ``ctx.caches``
        with its tokens (None: not known), which a budget holds: they are billed with the call,
        and the body does not show them."""
        if not (may_name(ctx.raw, b"cachedContent") or b"cached_content" in ctx.raw):
            return
        for param, value in named_caches(ctx.body):
            if value is None:
                continue
            if not isinstance(value, str):
                raise ProxyError(400, f"{param} must name a cache: cachedContents/{{id}}", param=param)
            owned = self.owned_cache(value, owner_of(ctx))
            ctx.caches[owned.id] = owned.tokens

    def owned_cache(self, name: str, owner: str) -> Owned:
        """The Gemini context cache ``name`` (``cachedContents/{id}`` or a bare id) if ``owner`` made
        it; else Google's 404, the same for another key's and for one no key has."""
        cache_id = cache_id_of(name)
        owned = None if cache_id is None else self.find(cache_id, "cached_content", owner)
        if owned is None:
            raise cache_not_found(name.removeprefix("cachedContents/"))
        return owned

    def check_gemini_files(self, body: object, owner: str) -> dict[str, int]:
        """Each Gemini Files API file a body names (``objectrefs.referenced_gemini_files``: a part's
        ``fileData.fileUri``) must be ``owner``'s
        (``gemini_files``): a file holds a prompt's media and the provider would read any key's.
        Another key's, one Stockyard never saw, or a variant of a file's URI is Google's 404 here,
        before any module or provider call. The pages of those that are PDFs Stockyard counted, by
        the URI as the body names it (``RequestContext.pdf_pages``)."""
        pages: dict[str, int] = {}
        for uri in referenced_gemini_files(body):
            owned = self.gemini_file(uri, owner)
            if owned.pages is not None:
                pages[uri] = owned.pages
        return pages

    def gemini_file(self, uri: str, owner: str, param: str = "name") -> Owned:
        """The Gemini file a URI names exactly (its ``uri`` or its name) if ``owner`` made it; else
        Google's 404, the same for another key's, one Stockyard never saw and a variant of a URI."""
        file_id = file_uri_id(uri)
        owned = None if file_id is None else self.find(FILE_PREFIX + file_id, GEMINI_FILE, owner)
        if owned is None:
            raise file_not_found(uri.strip()[:200], param)
        return owned

    def require_files(self, file_ids: Iterable[str], owner: str, param: str) -> dict[str, int]:
        """Every one of ``file_ids`` must be ``owner``'s file (the provider would read any key's):
        else OpenAI's 404 naming the first that is not. Each id is looked up once, in order: a
        list may repeat one a million times. The pages of those that are PDFs Stockyard counted."""
        pages: dict[str, int] = {}
        for file_id in dict.fromkeys(file_ids):
            owned = self.find(file_id, "file", owner)
            if owned is None:
                raise not_found("file", file_id, param)
            if owned.pages is not None:
                pages[file_id] = owned.pages
        return pages

    def first_of_another(self, ids: list[str], kind: str, owner: str) -> str | None:
        """The first of ``ids`` some key other than ``owner`` made (an id no key owns: none of
        them), looked up ``OWNER_CHUNK`` ids a statement: a body may name a million."""
        for chunk, theirs in self._held(ids, "kind = ? AND key_id <> ?", (kind, owner)):
            if theirs:
                return next(i for i in chunk if i in theirs)
        return None

    def is_cursor(self, cursor: str, kind: str, owner: str, provider: str, anywhere: bool = False) -> bool:
        """Whether ``owner`` may page a list of ``kind`` at ``provider`` from ``cursor``: one of its
        objects there (``anywhere``: at any provider), or one it deleted there (``deleted.kept_mark``).
        The SDKs page on from the last object a page gave, which a client deleting each one as it
        lists them has deleted; any other id would have the provider's page from it say whether it
        exists and where it stands among the key's own."""
        owned = self.find(cursor, kind, owner)
        if owned is not None:
            return anywhere or owned.provider == provider
        return storable(cursor) and kept_mark(self._store.read(), cursor, kind, owner, provider) is not None

    def holds_any(self, kind: str, owner: str, provider: str) -> bool:
        """Whether ``owner`` holds any object of ``kind`` at ``provider``: a list of none need not
        read the provider's (all of it, once a list reads on until it finds one of the key's)."""
        sql = "SELECT 1 FROM owned_objects WHERE key_id = ? AND kind = ? AND provider = ? LIMIT 1"
        return self._store.read().execute(sql, (owner, kind, provider)).fetchone() is not None

    def owned(self, ids: list[str], kind: str, owner: str, provider: str) -> set[str]:
        """Which of ``ids`` at ``provider`` belong to ``owner`` (one no row can hold is no one's)."""
        where = "kind = ? AND key_id = ? AND provider = ?"
        return set().union(*(found for _, found in self._held(ids, where, (kind, owner, provider))))

    def taken(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` someone owns already (any key, any kind; one no row can hold: no one):
        an answer's results may name more ids than a statement takes parameters."""
        return set().union(*(found for _, found in self._held(ids)))

    def _held(self, ids: list[str], where: str = "", args: tuple = ()) -> Iterator[tuple[list[str], set[str]]]:
        """Each chunk of the ``ids`` a row can hold, ``OWNER_CHUNK`` a statement (a body or a batch's
        results may name more than a statement takes parameters), with those of it ``owned_objects``
        holds (and where ``where`` is true)."""
        ids = [i for i in ids if storable(i)]
        also = f"{where} AND " if where else ""
        for start in range(0, len(ids), OWNER_CHUNK):
            chunk = ids[start : start + OWNER_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = self._store.read().execute(
                f"SELECT id FROM owned_objects WHERE {also}id IN ({marks})", (*args, *chunk)
            )
            yield chunk, {r["id"] for r in rows}

    def claim(
        self,
        object_id: str,
        kind: str,
        owner: str,
        provider: str,
        hold: BatchHold | None = None,
        tokens: int | None = None,
        pages: int | None = None,
    ) -> bool:
        """Record a new object as ``owner``'s (a batch with what it holds, and the project it holds
        it against, until billed, and the end user its bill names; a context cache with its ``tokens``,
        when known; an uploaded PDF with its ``pages``); False when the
        id was already held (it keeps its first owner). ``hold.end_in`` runs in the same transaction
        (the reservation becomes the spend its hold is), and what it leaves once that committed."""
        now = int(time.time() * 1000)
        hold = hold or BatchHold(0, lambda _: None)
        held_project = hold.project if hold.held_uc else None
        held_user = hold.user_scope if hold.user_held_uc else None
        row = (
            object_id,
            kind,
            owner,
            provider,
            now,
            hold.held_uc,
            held_project,
            held_user,
            hold.user_held_uc,
            hold.end_user,
            tokens,
            pages,
        )
        sql = (
            "INSERT OR IGNORE INTO owned_objects (id, kind, key_id, provider, created_at, held_uc, held_project,"
            " held_user, held_user_uc, end_user, tokens, pages) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )

        def job(conn: sqlite3.Connection) -> Callable[[], None] | None:
            if conn.execute(sql, row).rowcount != 1:
                return None
            return hold.end_in(conn) if hold.end_in is not None else lambda: None

        claimed = self._store.write(job)
        if claimed is not None:
            claimed()
        return claimed is not None

    def begin_create(self, kind: str, provider: str, terms: str, owner: str) -> str:
        """Mark a create of ``terms`` (what tells its object among the provider's) as sent and not yet
        recorded, until :meth:`end_create`: a create of the same terms whose answer is lost must not
        take the object this one will be answered with (another key's, maybe). The marker's id."""
        digest = hashlib.sha256(json.dumps([kind, provider, terms]).encode()).hexdigest()[:32]
        marker = f"{IN_FLIGHT}:{digest}:{secrets.token_hex(8)}"
        sql = "INSERT INTO owned_objects (id, kind, key_id, provider, created_at) VALUES (?, ?, ?, ?, ?)"
        self._store.write(lambda conn: conn.execute(sql, (marker, IN_FLIGHT, owner, provider, int(time.time() * 1000))))
        return marker

    def end_create(self, marker: str) -> None:
        """The create of ``marker`` answered (its object recorded) or failed."""
        self._store.write(lambda conn: conn.execute("DELETE FROM owned_objects WHERE id = ?", (marker,)))

    def others_in_flight(self, marker: str) -> bool:
        """Whether another create of ``marker``'s terms is sent and not yet recorded (a marker older
        than :data:`IN_FLIGHT_MS` is a process's that died midway: cleared)."""
        since = int(time.time() * 1000) - IN_FLIGHT_MS
        self._store.write(
            lambda conn: conn.execute("DELETE FROM owned_objects WHERE kind = ? AND created_at < ?", (IN_FLIGHT, since))
        )
        sql = "SELECT 1 FROM owned_objects WHERE kind = ? AND id LIKE ? AND id <> ? LIMIT 1"
        like = marker[: marker.rindex(":") + 1] + "%"
        return self._store.read().execute(sql, (IN_FLIGHT, like, marker)).fetchone() is not None

    def learn_tokens(self, object_id: str, tokens: int) -> None:
        """Record the tokens of a context cache whose count was not known (a cache's contents never
        change: a known count stays)."""
        sql = "UPDATE owned_objects SET tokens = ? WHERE id = ? AND kind = 'cached_content' AND tokens IS NULL"
        self._store.write(lambda conn: conn.execute(sql, (tokens, object_id)))

    def replace(
        self, object_id: str, kind: str, owner: str, provider: str, lifetime_ms: int, pages: int | None = None
    ) -> bool:
        """Record an object the provider just made under a name the client may choose (a Gemini
        file's, with its ``pages`` when a PDF) as ``owner``'s. A row naming it already is taken over
        when it is the key's own or older than ``lifetime_ms`` (the provider keeps such objects that
        long: that one expired there, and its key must not own the new one); another key's younger
        row keeps the name (two uploads racing for one name: the first to finish has it). True when
        the object is ``owner``'s."""
        now = int(time.time() * 1000)

        def job(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "DELETE FROM owned_objects WHERE id = ? AND kind = ? AND (key_id = ? OR created_at < ?)",
                (object_id, kind, owner, now - lifetime_ms),
            )
            inserted = conn.execute(
                "INSERT OR IGNORE INTO owned_objects (id, kind, key_id, provider, created_at, pages)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (object_id, kind, owner, provider, now, pages),
            )
            return inserted.rowcount == 1

        return self._store.write(job)

    def claim_new(self, ids: set[str], kind: str, owner: str, provider: str) -> None:
        """Record as ``owner``'s those of ``ids`` no key owns yet (the provider made them for a
        request of this key's: a code interpreter's auto container, the files and containers of a
        message batch's results); one held already keeps its owner. One transaction for them all."""
        new = [i for i in sorted(set(ids) - self.taken(list(ids))) if storable(i)]
        if new:
            self._store.write(_inserting_new(new, kind, owner, provider))

    def claim_new_later(self, ids: set[str], kind: str, owner: str, provider: str) -> Future:
        """``claim_new`` as a writer job the caller does not wait for (the stream relay's thread, which
        must not wait on the database): its future, resolved once committed. Nothing is read first:
        the insert keeps one held already with its owner (the id is the key). Nor does it wait for
        room in a full queue (every relayed stream would stall): the future's ``queue.Full`` then
        ends the one stream that made the claim."""
        new = sorted(i for i in set(ids) if storable(i))
        return self._store.write_later(_inserting_new(new, kind, owner, provider), queue_wait=0.0)

    def forget_members(self, parent: str, kind: str, owner: str) -> None:
        """Delete the records of ``parent``'s members (``kind``, ids ``{parent}/…``): an ended Upload's parts."""
        prefix = f"{parent}/"
        sql = "DELETE FROM owned_objects WHERE key_id = ? AND kind = ? AND substr(id, 1, ?) = ?"
        self._store.write(lambda conn: conn.execute(sql, (owner, kind, len(prefix), prefix)))

    def forget(self, object_id: str) -> None:
        """Delete the record of an object; an unbilled batch's hold goes back to its owner's budgets,
        in the same transaction where the ledger is the database's. Its owner keeps it as a list
        cursor for a while (``deleted.keep_deleted``), for nothing else."""
        sql = f"DELETE FROM owned_objects WHERE id = ? RETURNING billed, kind, provider, {_HOLDS}"

        def job(conn: sqlite3.Connection) -> list[Callable[[], None]]:
            row = conn.execute(sql, (object_id,)).fetchone()
            if row is None:
                return []
            keep_deleted(conn, object_id, row["kind"], row["key_id"], row["provider"])
            return [] if row["billed"] else self._give_back(conn, row)

        for settle in self._store.write(job):
            settle()

    def _give_back(self, conn: sqlite3.Connection, row: Any) -> list[Callable[[], None]]:
        """Give back what an unbilled object's row (``_HOLDS``) held: its key's and project's hold,
        and an end user's (in ``conn``'s transaction: ``App.batch_spend``)."""
        now = int(time.time() * 1000)
        given = []
        if row["held_uc"]:
            given.append(self._spend(conn, owner_scopes(row["key_id"], row["held_project"]), -int(row["held_uc"]), now))
        if row["held_user_uc"] and row["held_user"]:
            given.append(self._spend(conn, (row["held_user"],), -int(row["held_user_uc"]), now))
        return given

    def expire_holds(self, before_ms: int) -> int:
        """Give back the holds of unbilled batches started before ``before_ms`` (the batch watch's
        horizon: one never seen to end must not hold a budget for ever); how many. Each hold goes
        once, however many replicas expire at the same time."""

        def job(conn: sqlite3.Connection) -> list[list[Callable[[], None]]]:
            aged = (
                f"SELECT id, {_HOLDS} FROM owned_objects"
                " WHERE billed = 0 AND (held_uc > 0 OR held_user_uc > 0) AND created_at < ?"
            )
            give_back = (
                "UPDATE owned_objects SET held_uc = 0, held_user_uc = 0"
                " WHERE id = ? AND billed = 0 AND held_uc = ? AND held_user_uc = ?"
            )
            return [
                self._give_back(conn, row)
                for row in conn.execute(aged, (before_ms,)).fetchall()
                # not given back by another meanwhile
                if conn.execute(give_back, (row["id"], row["held_uc"], row["held_user_uc"])).rowcount == 1
            ]

        given = self._store.write(job)
        for settles in given:
            for settle in settles:
                settle()
        return len(given)


_HOLDS = "key_id, held_uc, held_project, held_user, held_user_uc"  # what an unbilled object holds (_give_back)

# (the writer's connection, the budget scopes, change µ¢, ts ms): a batch's hold or cost on the budgets
# of its key and project (``budgets.owner_scopes``) or of an end user, in the transaction that records
# why; returns what is left to do once it committed (``App.batch_spend``)
BatchSpend = Callable[[Any, tuple[str, ...], int, int], Callable[[], None]]


@dataclass(frozen=True)
class Billed:
    """What the one job that marked a batch billed learned: what it held, and against which project
    (and end user's budget); and (``batch_costs.bill_once``) what is left to do on its budgets once
    the job committed."""

    held_uc: int
    project: str | None
    user_scope: str | None = None  # the end user's budget it holds ``user_held_uc`` against (background)
    user_held_uc: int = 0
    settle: Callable[[], None] = lambda: None
    end_user: str | None = None  # the end user the request that made it named (schema 0039): its bill's

    @property
    def billed_user(self) -> str | None:
        """The end user its bill names: the one its request named, else (recorded before schema 0039)
        the one whose budget held it."""
        return self.end_user or (user_of(self.user_scope) if self.user_scope else None)


@dataclass(frozen=True)
class BatchHold:
    """A new batch's worst case, reserved against its owner's budgets while it is created: record
    ``held_uc`` with the batch (``Ownership.claim``), whose transaction makes the reservation spend
    until the batch is billed (``end_in``); ``end(False)`` when no batch was recorded gives it back
    (``end(True)`` after ``end_in`` changes nothing)."""

    held_uc: int
    end: Callable[[bool], None]
    project: str | None = None  # the project whose budget it is held against too (its key's, now)
    user_scope: str | None = None  # an end user's budget a background response holds ``user_held_uc`` on
    user_held_uc: int = 0
    # in the transaction that records the object: its reservations become the spend its hold is
    # (``Ledger.settle_in``); returns what is left to do once that committed
    end_in: Callable[[Any], Callable[[], None]] | None = None
    end_user: str | None = None  # the end user its request named (attribution), budget or not: its bill's


def mark_billed(conn: sqlite3.Connection, batch_id: str, kind: str = "batch") -> Billed | None:
    """Inside a writer job: for the one job that first marks the batch (or message batch) billed,
    what it held (µ¢, 0 for none), which its cost replaces; None for every other."""
    row = conn.execute(
        "UPDATE owned_objects SET billed = 1 WHERE id = ? AND kind = ? AND billed = 0"
        " RETURNING held_uc, held_project, held_user, held_user_uc, end_user",
        (batch_id, kind),
    ).fetchone()
    if row is None:
        return None
    held_user_uc = int(row["held_user_uc"])
    return Billed(int(row["held_uc"]), row["held_project"], row["held_user"], held_user_uc, end_user=row["end_user"])


# -- the routes -----------------------------------------------------------------------------------


@dataclass
class Answer:
    """A provider's answer: status, scrubbed headers, and its body once read."""

    status: int
    headers: dict[str, str]
    data: bytes = b""


class ProviderCalls:
    """Calls to a provider about the objects it keeps (files, batches, message batches): sent,
    read (or relayed as they arrive), scrubbed, and answered to the client; each leaves its
    trace row costing 0. Subclasses say where an object lives (``_target``) and with which
    headers (``_headers``)."""

    serves = "files and batches"  # what its objects are, in the refusals of choose_provider
    creates = "batch"  # what ``_create_upstream`` makes, in what a lost create says

    def __init__(self, path: RequestPath, ownership: Ownership) -> None:
        self._path = path
        self.ownership = ownership  # who owns the objects it creates

    def handle(self, reply: Reply, ctx: RequestContext, req: Request) -> None:
        """One call (its key already checked from the headers); always leaves a trace row."""
        path = self._path
        try:
            self._handle(reply, ctx, req)
        except ProxyError as exc:
            if not refused(reply, ctx, exc):
                raise  # too late to answer: the dispatch cuts it
            send_error(path, reply, ctx, exc)
        except ClientGone:
            ctx.attempt.outcome = "client_disconnected"
        except Exception as exc:  # traced as the client sees it, then answered (or cut) by the dispatch
            unexpected(reply, ctx, exc)
            raise
        finally:
            path.tracer.finish(ctx)

    def _handle(self, reply: Reply, ctx: RequestContext, req: Request) -> None:
        raise NotImplementedError

    def _target(self, provider: Provider, rest: str, query: dict[str, str] | None) -> str:
        return upstream_path(provider, rest, query)

    def _headers(self, ctx: RequestContext, provider: Provider, rest: str) -> dict[str, str]:
        return upstream_headers(provider, accept="*/*" if rest.endswith("/content") else "application/json")

    def _rate_limit(self, ctx: RequestContext) -> None:
        """Every call is one of the key's requests per minute (429 with Retry-After past its rpm),
        counted in the window its model calls use — the ``ratelimit`` module's, shared by the
        workers of a group and by PostgreSQL replicas — where that module runs for the key. A
        call uses no tokens, so tpm is not asked. End-user limits do not apply: these calls
        name no end user (a video create or remix does: ``VideosAPI._hold``)."""
        admit_call(self._path.chain(), ctx)

    def _owned(self, ctx: RequestContext, object_id: str, kind: str, missing: ProxyError) -> tuple[Owned, Provider]:
        """This key's object of ``kind`` and the provider it lives at; ``missing`` (the provider's
        404) for another key's, or one Stockyard never saw: as if unknown, the provider unasked."""
        owned = self.ownership.find(object_id, kind, owner_of(ctx))
        if owned is None:
            raise missing
        return owned, self._provider_named(owned.provider)

    def _provider_named(self, name: str) -> Provider:
        provider = self._path.registry().by_name.get(name)
        if provider is None:
            raise ProxyError(
                502, f"this object lives at provider {name!r}, which is no longer configured", code="provider_gone"
            )
        return provider

    # -- providers -----------------------------------------------------------------------------
    def choose_provider(self, ctx: RequestContext) -> Provider:
        """For a new object or a list: ``x-stockyard-provider`` if given, else the key's first
        OpenAI-kind provider (``serves`` says what for, in the refusals)."""
        registry = self._path.registry()
        allowed = allowed_providers(registry, ctx.key)
        named = (ctx.headers.get(PROVIDER_HEADER) or "").strip()
        if named:
            provider = registry.by_name.get(named)
            if provider is None or provider.kind not in FILE_KINDS:
                serving = [p.name for p in registry.providers if p.kind in FILE_KINDS]
                raise ProxyError(
                    400,
                    f"{PROVIDER_HEADER}: {named[:100]!r} is not a configured provider that serves {self.serves} "
                    f"(openai, azure or openai-compatible); these are: {', '.join(serving) or 'none'}",
                    param=PROVIDER_HEADER,
                    code="invalid_provider",
                )
            if provider not in allowed:
                raise ProxyError(
                    403,
                    f"this client key may not use provider {named!r}",
                    param=PROVIDER_HEADER,
                    code="provider_not_allowed",
                )
            return provider
        if allowed:
            return allowed[0]
        if any(p.kind in FILE_KINDS for p in registry.providers):
            raise ProxyError(
                403,
                f"this client key may not use any provider that serves {self.serves}",
                code="provider_not_allowed",
            )
        raise ProxyError(
            400,
            f"{self.serves} need an OpenAI-kind provider (openai, azure or openai-compatible); none is configured",
            code="no_file_provider",
        )

    def provider_of_kind(self, ctx: RequestContext, kinds: tuple[str, ...], kind: str, needs: str) -> Provider:
        """For a list of a provider kind's own objects (Anthropic's message batches, Gemini's caches):
        ``x-stockyard-provider`` if given, else the key's first provider of ``kinds``. ``kind`` names
        them in the refusals ("Anthropic"); ``needs`` says what is missing when none is configured."""
        registry = self._path.registry()
        allowed = allowed_providers(registry, ctx.key, kinds)
        named = (ctx.headers.get(PROVIDER_HEADER) or "").strip()
        if named:
            provider = registry.by_name.get(named)
            if provider is None or provider.kind not in kinds:
                raise ProxyError(
                    400,
                    f"{PROVIDER_HEADER}: {named[:100]!r} is not a configured {kind} provider",
                    code="invalid_provider",
                )
            if provider not in allowed:
                raise ProxyError(403, f"this client key may not use provider {named!r}", code="provider_not_allowed")
            return provider
        if allowed:
            return allowed[0]
        if any(p.kind in kinds for p in registry.providers):
            raise ProxyError(403, f"this client key may not use any {kind} provider", code="provider_not_allowed")
        raise ProxyError(400, f"{needs}; none is configured", code="no_provider")

    # -- calls ---------------------------------------------------------------------------------
    def _request(
        self,
        ctx: RequestContext,
        provider: Provider,
        method: str,
        rest: str,
        body: bytes | RawIOBase | None = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        length: int | None = None,
        extra: dict[str, str] | None = None,
        base: str | None = None,
    ) -> tuple[Answer, UpstreamResponse]:
        """Send one call to the provider, its answer still unread; the trace learns the provider.
        ``extra``: headers of the call's own; ``base``: another base URL at the provider (an upload's)."""
        if provider.key_error:
            raise ProxyError(
                503,
                f"provider {provider.name!r} cannot be used: its stored key cannot be decrypted; "
                "the operator must fix it (see the server log)",
                code="provider_key_unavailable",
            )
        ctx.attempt.provider = provider
        headers = {**self._headers(ctx, provider, rest), **(extra or {})}
        if body is None:
            headers.pop("Content-Type", None)
        else:
            headers["Content-Type"] = content_type
            if length is not None:
                headers["Content-Length"] = str(length)
        scrub = self._path.scrub
        target = self._target(provider, rest, query)
        try:
            sent = body if body is None or isinstance(body, bytes) else cast(BinaryIO, body)  # a spooled upload
            resp = self._path.pool.request(base or provider.base_url, method, target, headers, sent)
        except UpstreamError as exc:
            raise exc.answer(provider.name, scrub.text) from None
        got = {k: scrub.text(v) for k, v in resp.headers.items()}  # a header may echo the key
        ctx.attempt.upstream_request_id = next((got[h] for h in REQUEST_ID_HEADERS if h in got), None)
        ctx.attempt.status = resp.status
        return Answer(resp.status, got), resp

    def _read(self, ctx: RequestContext, answer: Answer, resp: UpstreamResponse) -> Answer:
        """Read an answer whole (JSON metadata, bounded by the pool's limit), scrubbed, kept for the trace."""
        try:
            answer.data = self._path.scrub.bytes(resp.read_all())
        except UpstreamError as exc:
            provider = ctx.attempt.provider.name if ctx.attempt.provider else "?"
            raise exc.answer(provider, self._path.scrub.text) from None
        ctx.attempt.mark_first_byte()
        self._keep(ctx, answer)
        return answer

    def _create_owned(self, reply: Reply, ctx: RequestContext, raw: bytes, rest: str, kind: str) -> None:
        """``POST`` a new object of ``kind`` (a container, a vector store) at the provider
        ``choose_provider`` picks: its ``file_ids`` this key's own files; the new object is its."""
        body = json_object(raw)
        ctx.raw = raw
        self.ownership.require_files(file_ids_of(body, "file_ids"), owner_of(ctx), "file_ids")
        provider = self.choose_provider(ctx)
        answer, doc = self._call(ctx, provider, "POST", rest, raw)
        if answer.status < 300 and isinstance(doc, dict) and isinstance(doc.get("id"), str):
            self.ownership.claim(doc["id"], kind, owner_of(ctx), provider.name)
        self._send(reply, ctx, answer)

    def _replace(self, ctx: RequestContext, answer: Answer, doc: dict) -> None:
        """The answer's body (and the trace's copy of it) becomes ``doc``."""
        answer.data = json.dumps(doc, ensure_ascii=False).encode()
        answer.headers["content-type"] = "application/json"
        self._keep(ctx, answer)

    def _keep(self, ctx: RequestContext, answer: Answer) -> None:
        """The trace keeps ``answer``'s body — what the client gets — instead of what was read before."""
        ctx.attempt.response_body.clear()
        ctx.attempt.capture(answer.data, self._path.settings.body_cap_bytes)

    def _call(
        self,
        ctx: RequestContext,
        provider: Provider,
        method: str,
        rest: str,
        body: bytes | RawIOBase | None = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        length: int | None = None,
    ) -> tuple[Answer, Any]:
        """A call whose answer is JSON: (the answer read whole, its parsed body or None)."""
        sent = self._request(ctx, provider, method, rest, body, query, content_type, length)
        answer = self._read(ctx, *sent)
        try:
            return answer, json.loads(answer.data)
        except ValueError:
            return answer, None

    def _create_upstream(
        self,
        ctx: RequestContext,
        provider: Provider,
        rest: str,
        body: bytes | RawIOBase,
        kind: str,
        hold: BatchHold,
        made: Callable[[], list[dict]] | None = None,
        content_type: str = "application/json",
        length: int | None = None,
        terms: str = "",
    ) -> tuple[Answer, dict | None]:
        """Create a batch at the provider and record it as this key's, with what it holds
        (``hold.held_uc``), then end the hold (spent until the batch is billed, or given back
        when none was recorded). Returns the answer and the new batch, or None when none was created.

        When no answer came back (a timeout, a broken connection) the batch may exist at the
        provider, unseen here: ``made()`` lists the provider's batches that could be it, and the
        one no one owns is taken as this one (:meth:`_adopt`), unless another create of the same
        ``terms`` is on its way (marked in flight from before it is sent until it is recorded): that
        one may be another key's, whose answer would then find it taken."""
        claimed = False
        marker = self.ownership.begin_create(kind, provider.name, terms, owner_of(ctx)) if made else None
        try:
            try:
                answer, doc = self._call(ctx, provider, "POST", rest, body, content_type=content_type, length=length)
            except ProxyError as exc:
                if exc.status not in (502, 504) and exc.code != SHUTDOWN_CODE:  # answered: no batch was made
                    raise
                answer, doc = self._adopt(ctx, provider, kind, hold, made, exc, marker)
                claimed = True
                return answer, doc
            if answer.status >= 300 or not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
                return answer, None
            claimed = self.ownership.claim(doc["id"], kind, owner_of(ctx), provider.name, hold)
            return answer, doc
        finally:
            hold.end(claimed)
            if marker is not None:
                self.ownership.end_create(marker)

    def _adopt(
        self,
        ctx: RequestContext,
        provider: Provider,
        kind: str,
        hold: BatchHold,
        made: Callable[[], list[dict]] | None,
        failure: ProxyError,
        marker: str | None = None,
    ) -> tuple[Answer, dict]:
        """A create whose answer was lost: the one batch ``made()`` finds that no one owns becomes
        this key's (with the hold) and is the answer. None found (the provider is still making it,
        or made none, or cannot be asked) or more than one (another create of the same file is on
        its way back: taking its batch would answer two creates with one batch and leave this one
        unowned), or another create of its terms in flight (``marker``'s: its object may be the one
        found, not recorded yet): ``failure``, telling the client not to retry (``x-should-retry: false``, which
        the SDKs obey; a retry would start a second batch)."""
        try:
            found = made() if made is not None else []
        except ProxyError:
            found = []
        ctx.attempt.response_body.clear()  # the provider's list holds other keys' batches: not this trace's
        taken = self.ownership.taken([doc["id"] for doc in found])
        free = [doc for doc in found if doc["id"] not in taken and storable(doc["id"])]  # one a row can hold
        alone = marker is None or not self.ownership.others_in_flight(marker)  # read after the provider's list
        if len(free) == 1 and alone and self.ownership.claim(free[0]["id"], kind, owner_of(ctx), provider.name, hold):
            doc = free[0]
            log.warning(
                "a %s create at provider %r was lost (%s); found it there: %s",
                self.creates,
                provider.name,
                failure.code,
                doc["id"],
            )
            answer = Answer(200, {"content-type": "application/json"}, json.dumps(doc).encode())
            ctx.attempt.status = 200
            self._keep(ctx, answer)
            return answer, doc
        failure.headers["x-should-retry"] = "false"
        if failure.code == SHUTDOWN_CODE:  # its own text says to send the request again
            failure.message = "the server shut down before the provider answered"
        failure.message += (
            f"; the {self.creates} may have been created at the provider: do not send it again before checking"
        )
        log.error(
            "a %s create at provider %r got no answer (%s): it may run there unowned and unbilled",
            self.creates,
            provider.name,
            failure.code,
        )
        raise failure

    def _owned_page(
        self,
        ctx: RequestContext,
        provider: Provider,
        rest: str,
        kind: str,
        limit: int,
        passed: dict[str, str],
        query: dict[str, str],
    ) -> tuple[Answer, list[dict]]:
        """The provider's list at ``rest`` (asked with ``passed``, and the client's ``after`` if the
        key owns it; else an empty page, unasked),
        filtered to this key's objects of ``kind``, paged honestly: ``limit`` of them, ``has_more``
        when the provider holds more of the key's (or was not read to its end). Returns the page
        as the answer and the objects on it; a provider's failure is the answer as it came, with none."""
        after = query.get("after") or None
        if self._nothing_to_read(ctx, after, kind, provider):
            return self.unknown_cursor_page(ctx), []
        answer, found, has_more = self._filtered_pages(ctx, provider, rest, kind, limit, passed, "after", after)
        if found is None:
            return answer, []
        answer.data = json.dumps(item_list(found, has_more)).encode()
        self._keep(ctx, answer)
        return answer, found

    def _id_page(
        self,
        ctx: RequestContext,
        provider: Provider,
        rest: str,
        kind: str,
        limit: int,
        before: str | None,
        after: str | None,
        passed: dict[str, str] | None = None,
    ) -> tuple[Answer, list[dict] | None, bool]:
        """An Anthropic list (newest first, ``after_id`` older, ``before_id`` newer) at ``rest``,
        filtered to this key's objects of ``kind`` and paged honestly either way: (the answer, ``limit``
        of them, whether the provider holds more of the key's that way — or was not read to its end).
        A provider's failure is (its answer, None, False). A cursor the key does not own (another
        key's object, or none) is an unknown id's empty page, unasked: the provider's page from it
        would say whether it exists and where it stands among the key's own."""
        cursor = before or after
        if self._nothing_to_read(ctx, cursor, kind, provider):
            ctx.attempt.status = 200  # the trace's, as no provider call is made
            return Answer(200, {"content-type": "application/json"}), [], False
        param = "before_id" if before else "after_id"
        return self._filtered_pages(ctx, provider, rest, kind, limit, passed or {}, param, cursor)

    def _nothing_to_read(self, ctx: RequestContext, cursor: str | None, kind: str, provider: Provider) -> bool:
        """Whether a filtered list of ``kind`` answers its empty page unasked: its ``cursor`` is not the
        key's (another key's id, or none: the provider's page from it would say whether it exists and
        where it stands among the key's own), or the key holds none there (the whole list is not read
        for them)."""
        owner = owner_of(ctx)
        if cursor and not self.ownership.is_cursor(cursor, kind, owner, provider.name):
            return True
        return not self.ownership.holds_any(kind, owner, provider.name)

    def _filtered_pages(
        self,
        ctx: RequestContext,
        provider: Provider,
        rest: str,
        kind: str,
        limit: int,
        passed: dict[str, str],
        param: str,
        cursor: str | None,
    ) -> tuple[Answer, list[dict] | None, bool]:
        """The key's objects of ``kind`` in the provider's list at ``rest`` (asked with ``passed``, and
        ``cursor`` as ``param``): its pages read on from ``cursor`` until they hold one more of the key's
        than ``limit``, or end, or :func:`read_on` stops them — (the last answer, ``limit`` of them, whether
        the provider holds more of the key's that way or was not read to its end). ``before_id`` reads
        toward the newer, each page's first object the next cursor, and keeps the ``limit`` nearest it;
        ``after`` and ``after_id`` read on from each page's last. A provider's failure is (its answer,
        None, False)."""
        owner = owner_of(ctx)
        newer = param == "before_id"
        found: list[dict] = []
        asked_from = {cursor}
        pages = 0
        while True:
            asked = {**passed, "limit": str(LIST_PAGE), **({param: cursor} if cursor else {})}
            answer, doc = self._call(ctx, provider, "GET", rest, query=asked)
            if answer.status >= 400 or not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
                return answer, None, False
            pages += 1
            items = [d for d in doc["data"] if isinstance(d, dict) and isinstance(d.get("id"), str)]
            mine = self.ownership.owned([d["id"] for d in items], kind, owner, provider.name)
            page = [d for d in items if d["id"] in mine]
            found = page + found if newer else found + page
            if len(found) > limit:
                return answer, (found[-limit:] if newer else found[:limit]), True
            cursor = (items[0]["id"] if newer else items[-1]["id"]) if items else None
            if not doc.get("has_more") or cursor is None or cursor in asked_from:  # the end, or no way on
                return answer, found, False
            asked_from.add(cursor)
            if not read_on(found, pages):
                return answer, found, True  # not read to its end: the client asks again from the last id

    def unknown_cursor_page(self, ctx: RequestContext) -> Answer:
        """The empty page a list answers, unasked, for a cursor that is not one of the key's own
        (and for a key that holds none of the list's objects at the provider)."""
        answer = Answer(200, {"content-type": "application/json"}, json.dumps(item_list([], False)).encode())
        ctx.attempt.status = 200  # the trace's: no provider call sets it
        self._keep(ctx, answer)
        return answer

    def _send(self, reply: Reply, ctx: RequestContext, answer: Answer, extra: dict[str, str] | None = None) -> None:
        """The provider's answer to the client (its errors passed through), with ``extra`` headers;
        a success costs 0."""
        if answer.status >= 400:
            message = answer.data[:500].decode("utf-8", "replace")
            fail(ctx, answer.status, message, "upstream_error", f"upstream_{answer.status}")
        else:
            ctx.attempt.cost_uc, ctx.attempt.cost_status = 0, "exact"
            ctx.complete = True
        headers = {"x-stockyard-trace-id": ctx.trace_id, **passed_headers(answer.headers), **(extra or {})}
        reply.send(answer.status, answer.data, answer.headers.get("content-type", "application/json"), headers)

    def _relay(
        self,
        reply: Reply,
        ctx: RequestContext,
        provider: Provider,
        rest: str,
        tap: LineTap | None = None,
        query: dict[str, str] | None = None,
    ) -> None:
        """A file's content, relayed chunk by chunk as it arrives (never held whole); the trace
        keeps its size, not its bytes. ``tap`` reads each chunk before it goes on (JSONL results
        whose lines name objects to claim), and the end before the stream's end. A failure once the
        answer began cuts it: the connection closes without the chunked end, so no client takes a part
        for the whole (the provider's, here; any other, by ``Handler._cut``: one log line, no traceback).
        ``query``: the provider's own parameters (a video's ``variant``)."""
        answer, resp = self._request(ctx, provider, "GET", rest, query=query)
        if answer.status >= 400:
            return self._send(reply, ctx, self._read(ctx, answer, resp))
        headers = {"x-stockyard-trace-id": ctx.trace_id, **passed_headers(answer.headers)}
        if "content-disposition" in answer.headers:
            headers["content-disposition"] = answer.headers["content-disposition"]
        wanted = reply.start_stream(  # False for a HEAD: the head only, the provider's bytes left unread
            answer.status, headers, answer.headers.get("content-type", "application/octet-stream")
        )
        ctx.attempt.mark_first_byte()
        size = 0
        try:
            for chunk in resp.chunks() if wanted else ():
                if tap is not None:
                    tap.chunk(chunk)
                reply.chunk(chunk)
                size += len(chunk)
            if tap is not None and wanted:
                tap.end()
        except UpstreamError as exc:
            fail(ctx, answer.status, f"provider {provider.name!r}: {exc}", "stream_broken", f"upstream_{exc.kind}")
            reply.abort()  # no error fits a file's bytes: the connection closes without the chunked end
            return
        finally:
            resp.close()  # whatever ended it (read whole, it went back to the pool: nothing to close)
            ctx.attempt.capture(json.dumps({"content_bytes": size}).encode(), self._path.settings.body_cap_bytes)
        reply.end_stream()
        ctx.attempt.cost_uc, ctx.attempt.cost_status = 0, "exact"
        ctx.complete = True


class FilesAPI(ProviderCalls):
    """The files and batches routes. ``on_completed(ctx, provider, batch)`` is told of each
    completed batch its owner sees (the batch cost recorder); ``check_budget(ctx, worst)`` refuses a
    batch to a key whose budget is used up or cannot take the batch's worst case (None: unpriced);
    ``room(ctx)`` refuses one at the line whose running worst case is past what the budget has left."""

    def __init__(
        self,
        path: RequestPath,
        ownership: Ownership,
        on_completed: Callable[[RequestContext, Provider, dict], None],
        check_budget: Callable[..., BatchHold],
        room: Callable[[RequestContext], Callable[[int, int], None] | None],
    ) -> None:
        super().__init__(path, ownership)
        self._on_completed = on_completed
        self._check_budget = check_budget
        self._room = room  # App.batch_room: refuses a running worst case past what the budgets have left

    def _handle(self, reply: Reply, ctx: RequestContext, req: Request) -> None:
        method, query = req.method, req.query
        found = route_of(req.path)
        assert found is not None
        collection, object_id, action = found
        allowed = ALLOWED_METHODS[(collection, object_id is not None, action)]
        check_method(method, allowed)
        self._rate_limit(ctx)  # before the body is read and before any provider call
        if collection == "files" and object_id is None and method == "POST":
            return self._upload(reply, ctx, req)
        raw = req.body  # a GET's empty body too: the read deadline ends, a long download is not cut
        kind = KIND[collection]
        if object_id is None:
            if method == "GET":
                return self._list(reply, ctx, collection, query)
            return self._create_batch(reply, ctx, raw)
        _, provider = self._owned(ctx, object_id, kind, not_found(kind, object_id))
        rest = f"/{collection}/{object_id}{action}"
        if action == "/content":
            return self._relay(reply, ctx, provider, rest)
        answer, doc = self._call(ctx, provider, method, rest)
        if answer.status < 300 and method == "DELETE":
            self.ownership.forget(object_id)
        if answer.status < 300 and collection == "batches" and isinstance(doc, dict):
            self._see_batch(ctx, provider, doc)
        self._send(reply, ctx, answer)

    # -- uploads --------------------------------------------------------------------------------
    def _upload(self, reply: Reply, ctx: RequestContext, req: Request) -> None:
        """``POST /v1/files``: the form streamed to a spool (never held whole), then to the provider
        with its length; the trace keeps the form's metadata, never the file's bytes."""
        provider = self.choose_provider(ctx)  # refused before the body is read
        with req.upload() as upload:
            ctx.raw = json.dumps(upload.metadata()).encode()
            upload.refuse_stray_files(("file",))
            purpose = upload.get("purpose")
            parts = [f for f in upload.files if f.name == "file"]
            if not purpose:
                raise ProxyError(400, "Missing required parameter: 'purpose'.", param="purpose", code="invalid_value")
            if len(parts) != 1:
                raise ProxyError(
                    400, "Missing required parameter: 'file' (one file).", param="file", code="invalid_value"
                )
            self.ownership.check_form_files(upload.fields, owner_of(ctx))  # relayed: a file_id field too
            if purpose == "batch":
                self._check_batch_lines(ctx, provider, upload.open(parts[0]))  # checked, not priced
            counter = count_pages(upload.open(parts[0]))  # a PDF's, which a prompt naming it is held at
            body = upload.encode()
            answer, doc = self._call(
                ctx, provider, "POST", "/files", body, content_type=body.content_type, length=body.length
            )
        if answer.status < 300 and isinstance(doc, dict) and isinstance(doc.get("id"), str):
            pages = uploaded_pages(counter, doc["id"])
            self.ownership.claim(doc["id"], "file", owner_of(ctx), provider.name, pages=pages)
        self._send(reply, ctx, answer)

    def _check_batch_lines(
        self,
        ctx: RequestContext,
        provider: Provider,
        source: IO[bytes] | Iterator[bytes],
        past: Callable[[int, int], None] | None = None,
    ) -> int | None:
        """A batch runs its lines under the one provider key, so each line is held to what the key
        could send itself: a key with a model allow-list only its models (as if sent to
        ``provider``), and any key only its own files (``file_id``) and containers (a code
        interpreter's ``container``), no other key's vector stores (``vector_store_ids``), its
        own responses
        (``previous_response_id``) and their output items (``item_reference``s, reasoning items and
        image generation calls by id: ``Conversations.check_stored_names``); a ``conversation``
        (Stockyard's, which it cannot put in front
        of a line the provider runs) is refused, as is an ``item_reference`` to a Stockyard
        conversation's item (:func:`refuse_conversation_items`: the file's bytes go as uploaded). A
        line too long to hold is refused, never skipped.

        Returns the batch's worst-case cost (µ¢, each line as a budget reserves it, at the batch
        price), or None when a line's model has no price: what a budget holds the batch to.
        ``past(worst, lines)`` refuses the running worst case once it is past what the budget has left
        (``App.batch_room``: a batch refused at that line, not after pricing the whole file); None:
        no budget reads the cost (an upload, a key no budget counts), so no line is priced (0)."""
        key = ctx.key
        policy = batch_policy(self._path.chain(), ctx)  # guard's model lists, as on the endpoints
        if key is None:  # open mode: one owner, so only guard's lists apply
            for number, _line, request in batch_lines(source):
                refused_model(policy, provider, request, number)
            return 0
        route = self._path.registry().routes_to
        worst: int | None = 0
        priced = 0  # lines priced so far (a blank line is numbered, not priced)
        for number, line, request in batch_lines(source):
            endpoint = line_endpoint(request.get("url"), number)
            body = request.get("body")
            body = body if isinstance(body, dict) else {}
            model = body.get("model")
            if restricted(key) and (
                not isinstance(model, str) or not key.allows_model(f"{provider.name}/{model}", route)
            ):
                shown = model[:100] if isinstance(model, str) else None
                raise ProxyError(
                    403,
                    f"client key {key.prefix}… may not use model {shown!r} (line {number} of the batch file)",
                    param="file",
                    code="model_not_allowed",
                )
            refused_model(policy, provider, request, number)
            if endpoint == "image_edits":  # a JSON edit's shape, as the endpoint reads it: each image is held
                check_line(number, functools.partial(media.check_json_edit, body))
            named = referenced_files(body) if may_name(line, b"file_id") else set()
            pages = {}  # the pages of the PDFs it names that Stockyard counted (a budget holds them)
            for file_id in named:
                owned = self.ownership.find(file_id, "file", key.id)
                if owned is None:
                    raise not_found("file", file_id, "file", f"line {number} of the batch file")
                if owned.pages is not None:
                    pages[file_id] = owned.pages
            for container_id in referenced_containers(body) if may_name(line, b"container") else ():
                if self.ownership.find(container_id, "container", key.id) is None:
                    raise not_found("container", container_id, "file", f"line {number} of the batch file")
            stores = referenced_vector_stores(body) if may_name(line, b"vector_store") else {}
            try:
                check_store_ids(stores)
            except ProxyError as exc:
                message = f"line {number} of the batch file: {exc.param}: {exc.message}"
                raise ProxyError(400, message, param="file", code=exc.code) from None
            theirs = self.ownership.first_of_another(list(stores), "vector_store", key.id)  # an unowned one is shared
            if theirs is not None:
                raise not_found("vector_store", theirs, "file", f"line {number} of the batch file")
            caches = first_places(body, CACHE_FIELDS) if may_name(line, b"ached") else {}
            for cache in caches:  # Google's OpenAI-compatible batches read them, and Gemini files by URI
                on_line(number, functools.partial(self.ownership.owned_cache, cache, key.id))
            if may_name_file_url(line):
                pages.update(self.ownership.gemini_files_by_url(body, key.id, number))
            previous = body.get("previous_response_id")
            if isinstance(previous, str) and self._path.conversations.find(previous, key.id) is None:
                raise ProxyError(
                    404,
                    f"No response found with id '{previous[:100]}' (line {number} of the batch file).",
                    param="file",
                    code="not_found",
                )
            refuse_conversation_items(body.get("input"), number)
            try:  # its item references: the key's own response items, as on /v1/responses
                self._path.conversations.check_stored_names(body.get("input"), key.id)
            except ProxyError as exc:  # the field it names (input[i].id) said, as the line has no param
                message = f"line {number} of the batch file: {exc.param}: {exc.message}"
                raise ProxyError(400, message, param="file", code=exc.code) from None
            if body.get("conversation") is not None:  # Stockyard's (conversations_api), which no provider holds
                raise ProxyError(
                    400,
                    f"line {number} of the batch file names a conversation: conversations are kept by Stockyard, "
                    "which does not run batch lines; send the conversation's items in 'input'",
                    param="file",
                    code="conversation_in_batch",
                )
            # as the endpoint checks them: a cap the budget cannot read is refused (an integral float is
            # read as its int, as the provider reads it)
            check_line(number, functools.partial(check_request_numbers, body))
            if worst is not None and past is not None:
                cost = self._line_cost(ctx, provider, endpoint, body, line, pages)
                worst = None if cost is None else worst + cost
                priced += 1
                if worst is not None:
                    past(worst, priced)
        return worst

    def _line_cost(
        self,
        ctx: RequestContext,
        provider: Provider,
        endpoint: str,
        body: dict,
        line: bytes,
        pages: dict[str, int] | None = None,
    ) -> int | None:
        """The worst case of one batch line as a budget reserves the call it makes to ``endpoint``
        (outputs, predictions, images, tools, the conversation it continues, the ``pages`` of the PDFs
        it names by file id), at the batch price, rounded up; None when its model has no price in tokens
        (an images line's: :meth:`_image_line_cost`)."""
        one = RequestContext(endpoint, OPENAI, ctx.client_addr, {})
        one.body, one.raw, one.pdf_pages = body, line, pages or {}
        if endpoint in media.IMAGES:
            return self._image_line_cost(one, provider)
        model = body.get("model")
        price = self._path.pricer.price_of(Route(provider, model), model) if isinstance(model, str) else None
        if price is None or price.unit != "token":
            return None
        previous = body.get("previous_response_id")
        row = self._path.conversations.find(previous, ctx.key_id) if isinstance(previous, str) else None
        if row is not None and row.passthrough:  # the provider bills the conversation it keeps as input
            one.conversation = Conversation("", 0, _keeps_nothing, previous, history_tokens=kept_history_tokens(row))
        full = self._path.pricer.token_cost(one, price, provider, self._path.settings.default_max_tokens)
        if full is None:  # the image tool may draw at a model without a price
            return None
        # the hosted tools' calls are held whole, as they are billed (``batch_costs.BatchTotal.fees_uc``)
        calls = self._path.pricer.held_call_fees(one, provider, str(model), price) or 0
        part, whole = BATCH_PRICE
        return -(-(full - calls) * part // whole) + calls

    def _image_line_cost(self, one: RequestContext, provider: Provider) -> int | None:
        """An Images API line's worst case as ``/v1/images/…`` holds the call (``Pricer.worst_case``:
        ``n`` images at its quality and size at the model's image price, an edit's images sent, the
        prompt), at the batch price, rounded up; None when its model has no price."""
        model = one.body.get("model")
        model = model if isinstance(model, str) and model else media.JSON_DEFAULT_MODELS[one.endpoint]
        pricer, cap = self._path.pricer, self._path.settings.default_max_tokens
        full = pricer.worst_case(one, Route(provider, model), model, cap)
        part, whole = BATCH_PRICE
        return None if full is None else -(-full * part // whole)

    # -- lists ---------------------------------------------------------------------------------
    def _list(self, reply: Reply, ctx: RequestContext, collection: str, query: dict[str, str]) -> None:
        """``GET /v1/files`` or ``/v1/batches``: the key's own (``_owned_page``); the batches
        listed are seen by their owner (their output files claimed, an ended one billed)."""
        limit = page_limit(query, *LIST_LIMITS[collection])
        provider = self.choose_provider(ctx)
        passed = {k: v for k, v in query.items() if k in ("order", "purpose")}
        answer, found = self._owned_page(ctx, provider, f"/{collection}", KIND[collection], limit, passed, query)
        for batch in found if collection == "batches" else ():
            self._see_batch(ctx, provider, batch)
        self._send(reply, ctx, answer)

    # -- batches -------------------------------------------------------------------------------
    def _create_batch(self, reply: Reply, ctx: RequestContext, raw: bytes) -> None:
        """A batch over a file this key owns, at that file's provider."""
        body = json_object(raw)
        ctx.raw = raw
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            raise ProxyError(
                400, "'input_file_id' is required and must be a string", param="input_file_id", code="invalid_value"
            )
        _, provider = self._owned(ctx, file_id, "file", not_found("file", file_id, "input_file_id"))
        self._check_budget(ctx, 0)  # used up: refused before the file is read
        worst, priced = self._check_input_file(ctx, provider, file_id)
        hold = self._check_budget(ctx, worst, priced=priced)  # a budget set meanwhile: not held at 0
        made = partial(self._batches_of_file, ctx, provider, file_id, body.get("endpoint"))
        terms = json.dumps([file_id, body.get("endpoint")])
        answer, batch = self._create_upstream(ctx, provider, "/batches", raw, "batch", hold, made, terms=terms)
        if batch is not None:
            self._see_batch(ctx, provider, batch)
        self._send(reply, ctx, answer)

    def _batches_of_file(self, ctx: RequestContext, provider: Provider, file_id: str, endpoint: Any) -> list[dict]:
        """The provider's newest batches over ``file_id`` for ``endpoint``, newest first: the
        candidates for a create whose answer was lost (a file is one key's: no one else's batch)."""
        answer, page = self._call(ctx, provider, "GET", "/batches", query={"limit": str(LOST_BATCH_LOOK)})
        data = page.get("data") if answer.status < 300 and isinstance(page, dict) else None
        return [
            b
            for b in (data if isinstance(data, list) else [])
            if isinstance(b, dict)
            and isinstance(b.get("id"), str)
            and b.get("input_file_id") == file_id
            and b.get("endpoint") == endpoint
        ]

    def _check_input_file(self, ctx: RequestContext, provider: Provider, file_id: str) -> tuple[int | None, bool]:
        """A batch's input file, read back from the provider as it streams and checked line by line
        (``_check_batch_lines``): the upload was checked only if it said ``purpose=batch``, and not
        every provider insists on that purpose. Returns the batch's worst-case cost (None: unpriced)
        and whether it was priced (a budget counted the key as its reading began: ``App.batch_room``)."""
        if ctx.key is None:
            return 0, False
        answer, resp = self._request(ctx, provider, "GET", f"/files/{file_id}/content")
        if answer.status >= 400:
            resp.read_all()
            raise ProxyError(
                502,
                f"provider {provider.name!r} answered {answer.status} for input file {file_id!r}, so its "
                "lines could not be checked against what this client key may use",
                code="input_file_unreadable",
            )
        try:
            past = self._room(ctx)
            return self._check_batch_lines(ctx, provider, resp.chunks(), past), past is not None
        except UpstreamError as exc:
            raise exc.answer(provider.name, self._path.scrub.text) from None
        except BaseException:
            resp.close()
            raise

    def look_at_batch(self, ctx: RequestContext, provider: Provider, batch_id: str) -> str | None:
        """Retrieve a batch for its owner without a client (the batch watch): its status, or None
        when the provider did not answer with a batch. Seen as if the owner had retrieved it."""
        answer, doc = self._call(ctx, provider, "GET", f"/batches/{batch_id}")
        if answer.status >= 300 or not isinstance(doc, dict) or doc.get("id") != batch_id:
            return None
        self._see_batch(ctx, provider, doc)
        status = doc.get("status")
        return status if isinstance(status, str) else None

    def _see_batch(self, ctx: RequestContext, provider: Provider, batch: dict) -> None:
        """A batch its owner is looking at: its output and error files become the owner's, and a
        batch that ended is handed to the cost recorder (which records it once)."""
        owner = owner_of(ctx)
        for field in ("output_file_id", "error_file_id"):
            file_id = batch.get(field)
            if isinstance(file_id, str) and file_id and self.ownership.find(file_id, "file", owner) is None:
                self.ownership.claim(file_id, "file", owner, provider.name)
        if batch.get("status") in ENDED and isinstance(batch.get("id"), str):
            owned = self.ownership.find(batch["id"], "batch", owner)
            if owned is not None and not owned.billed:
                self._on_completed(ctx, provider, batch)


def check_line(number: int, check: Callable[[], object]) -> None:
    """``check`` of a batch line's body; its 400 says which line and what in it (a line has no param)."""
    try:
        check()
    except ProxyError as exc:
        message = f"line {number} of the batch file: {exc.message}"
        raise ProxyError(400, message, param="file", code=exc.code) from None


def on_line(number: int, check: Callable[[], T]) -> T:
    """``check`` of an object a batch line names (what it found); its 404 says which line (a line has
    no param)."""
    try:
        return check()
    except ProxyError as exc:
        raise ProxyError(404, f"{exc.message} (line {number} of the batch file)", param="file") from None


def refuse_conversation_items(items: object, number: int) -> None:
    """A 400 for batch line ``number`` whose ``input`` has an item with the id a Stockyard conversation
    minted (``msg_sy…``): an ``item_reference`` to it, or the item itself carrying it (as a
    conversation's items are listed). No provider knows that id, and Stockyard relays a batch file's
    bytes as uploaded (or reads back one uploaded elsewhere), so it can neither put the item in nor
    leave the id off as ``/v1/responses`` does. Nothing is looked up: the key's own item, another
    key's and an unknown one are the same refusal."""
    for i, item in enumerate(items if isinstance(items, list) else ()):
        if not minted_here(item):
            continue
        named = repr(item["id"][:100])
        what, fix = (
            (f"is an item_reference to {named}", "send the item itself in 'input'")
            if is_reference(item)
            else (f"carries the id {named}", "send the item without its 'id'")
        )
        raise ProxyError(
            400,
            f"line {number} of the batch file: input[{i}] {what}, an item of a Stockyard conversation, which "
            f"the provider does not hold and Stockyard does not put in a batch line: {fix}",
            param="file",
            code="conversation_item_in_batch",
        )


def batch_lines(source: IO[bytes] | Iterator[bytes]) -> Iterator[tuple[int, bytes, dict]]:
    """A batch file's lines, numbered from 1, each with its request (``{}`` for a line that is not a
    JSON object). A line too long to hold, or one naming a member twice, is refused, never skipped."""
    number = 0

    def too_long() -> None:
        raise ProxyError(
            403,
            f"line {number + 1} of the batch file is longer than {MAX_LINE} bytes: too long to check",
            param="file",
            code="line_too_long",
        )

    for number, line in enumerate(lines_of(source, too_long=too_long), 1):
        try:
            request = json.loads(line, object_pairs_hook=unique_members)
        except DuplicateMember as exc:  # checked as one value, maybe run as the other
            raise ProxyError(
                400,
                f"line {number} of the batch file names {exc.name[:64]!r} twice in one object",
                param="file",
                code="duplicate_key",
            ) from None
        except ValueError:
            request = None
        yield number, line, request if isinstance(request, dict) else {}


def refused_model(
    policy: Callable[[str, str], ProxyError | None] | None, provider: Provider, request: dict, number: int
) -> None:
    """Raise guard's refusal of a batch line's model (``modules.guard.batch_policy``), if any."""
    body = request.get("body")
    model = body.get("model") if isinstance(body, dict) else None
    refusal = policy(provider.name, model) if policy is not None and isinstance(model, str) else None
    if refusal is not None:
        message = f"{refusal.message} (line {number} of the batch file)"
        raise ProxyError(403, message, param="file", code=refusal.code)

"""The provider objects a JSON body names: files (OpenAI's, Anthropic's and Gemini's), containers
(OpenAI's and Anthropic's), vector stores, Gemini context caches.

The provider holds every key's objects under the one provider key, so what a body names is
checked against who owns it (``files_api.Ownership.check_references``, batch lines), and the
containers a passed-through answer ran code in are claimed for its key (``conversations``). These
walks find the names; they never read the database. Each skips the caller's own ``metadata``, the
citations of replayed output and the client's own JSON Schemas (:data:`NOT_READ`), and
:func:`may_name` spares most bodies the walk.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Callable
from urllib.parse import unquote

from .errors import ProxyError


def may_name(raw: bytes, key: bytes) -> bool:
    """Whether a JSON text can hold a member named with ``key`` (``file_id``, ``container``,
    ``vector_store``): the name is written out, or it may be written otherwise (:func:`hides_names`).
    A fast test that spares most bodies the walks below."""
    return key in raw or hides_names(raw)


def hides_names(raw: bytes) -> bool:
    """Whether a JSON text may hold a name not written out as such: escaped (``\\u``), or in a text
    that is not UTF-8 (``json.loads`` reads UTF-16 and UTF-32 too). Once per body where several
    names are looked for."""
    return b"\\u" in raw or json.detect_encoding(raw) not in ("utf-8", "utf-8-sig")


# Not walked: the citations of earlier output (``annotations``, ``results``: ids the provider does not
# open), and the client's own JSON Schemas — a function tool's ``parameters``, a structured answer's
# ``schema``, a Claude-shaped tool's ``input_schema`` — whose examples and defaults name nothing.
NOT_READ = frozenset({"annotations", "results", "parameters", "schema", "input_schema"})


def referenced_files(body: object) -> set[str]:
    """Every string under a ``file_id`` key, or in a ``file_ids`` list (a code interpreter's
    container), anywhere in a JSON body but its caller's own ``metadata`` and the citations of
    replayed output (``NOT_READ``: a stateless client sends earlier output items back as they
    came, naming files the provider made). Walked without recursion."""
    found: set[str] = set()
    stack = [{k: v for k, v in body.items() if k != "metadata"} if isinstance(body, dict) else body]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            named, listed = value.get("file_id"), value.get("file_ids")
            if isinstance(named, str):
                found.add(named)
            if isinstance(listed, list):
                found.update(v for v in listed if isinstance(v, str))
            stack.extend(v for k, v in value.items() if k not in NOT_READ)
        elif isinstance(value, list):
            stack.extend(value)
    return found


def referenced_containers(body: object) -> dict[str, str]:
    """Each container a Responses body names, with the param that first names it: a tool's
    ``container`` (the code interpreter's ``"cntr_…"``: the provider runs the code there, with the
    container's files; its ``{"type": "auto", …}`` is made anew), and every string under a
    ``container_id`` key anywhere but the caller's ``metadata`` and the citations of replayed
    output (``NOT_READ``): an input ``code_interpreter_call`` item's (earlier output sent back, which
    an ``auto`` container reuses), the hosted shell tool's ``{"type": "container_reference",
    "container_id": …}`` environment, and any shape the provider adds later. Walked without recursion."""
    found: dict[str, str] = {}
    if not isinstance(body, dict):
        return found
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if isinstance(tool, dict) and isinstance(tool.get("container"), str):
            found.setdefault(tool["container"], f"tools[{i}].container")
    for param, named in members_named(body, ("container_id",)):
        if isinstance(named, str):
            found.setdefault(named, param)
    return found


def members_named(body: dict, names: tuple[str, ...]) -> Iterator[tuple[str, object]]:
    """(where, value) of every member called one of ``names`` anywhere in ``body`` but the
    caller's ``metadata`` and ``NOT_READ``, in the body's order (``where`` as ``input[1].container_id``).
    Walked without recursion; a list's strings cost no path each (a body may hold a million)."""
    stack: list[tuple[str, object]] = [(k, v) for k, v in reversed(body.items()) if k != "metadata"]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            for name in names:
                if name in value:
                    yield f"{where}.{name}", value[name]
            stack.extend((f"{where}.{k}", v) for k, v in reversed(value.items()) if k not in NOT_READ)
        elif isinstance(value, list):
            inner = [(f"{where}[{i}]", v) for i, v in enumerate(value) if isinstance(v, (dict, list))]
            stack.extend(reversed(inner))


STORE_KEYS = ("vector_store_ids", "vector_store_id")  # where a body names a vector store
STORE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")  # an id a provider makes: vs_…, never spaces, dots or escapes


def referenced_vector_stores(body: object) -> dict[str, str]:
    """Each vector store a body names, with the param that first names it: a ``file_search``
    tool's ``vector_store_ids`` (``{"type": "file_search", "vector_store_ids": ["vs_…"]}``), and
    every string under a ``vector_store_ids`` or ``vector_store_id`` key anywhere but the
    caller's ``metadata`` and the citations of replayed output (``NOT_READ``), a list or one id
    alike: an ``allowed_tools`` choice's, a tool of another type, any shape the provider reads or
    adds later. Walked without recursion; each id once, however often it is named."""
    found: dict[str, str] = {}
    if not isinstance(body, dict):
        return found
    for param, named in members_named(body, STORE_KEYS):
        for store_id in named if isinstance(named, list) else [named]:
            if isinstance(store_id, str) and store_id not in found:
                found[store_id] = param
    return found


def check_store_ids(stores: dict[str, str]) -> None:
    """Each store id a body names is one a provider makes, else a 400: an id no key owns goes on
    as sent, so one with a NUL or a lone surrogate (which no row can hold, so no key's), spaces or
    controls must not pass as no one's where the provider may read it as the store it trims,
    truncates or repairs to."""
    for store_id, param in stores.items():
        if not STORE_ID.fullmatch(store_id):
            raise ProxyError(
                400,
                f"Invalid vector store id {store_id[:100]!r}: expected letters, digits, '_' and '-' (like vs_abc123).",
                param=param,
                code="invalid_value",
            )


CACHE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")  # a Gemini cache id as Google makes it: never dots, slashes or escapes
PREFIX = "cachedContents/"


def cache_not_found(cache_id: str) -> ProxyError:
    """Google's 404 for a cache, the same for one that does not exist and for another key's."""
    return ProxyError(404, f"CachedContent not found: {PREFIX}{cache_id[:200]}", param="name", code="not_found")


def cache_id_of(name: object) -> str | None:
    """The id of a ``cachedContents/{id}`` name (a bare id too), None for anything else."""
    if not isinstance(name, str):
        return None
    cache_id = name.removeprefix(PREFIX)
    return cache_id if CACHE_ID.fullmatch(cache_id) else None


# Google's JSON takes a field's proto name as well as its JSON name: both spellings name a cache.
CACHE_FIELDS = ("cachedContent", "cached_content")
INNER_REQUEST = ("generateContentRequest", "generate_content_request")  # countTokens' inner call


def named_caches(body: object) -> list[tuple[str, object]]:
    """(param, value) of each Gemini context cache a generateContent or countTokens body names:
    its ``cachedContent``, and its ``generateContentRequest.cachedContent`` (countTokens), each by
    either spelling Google reads."""
    if not isinstance(body, dict):
        return []
    found = [(field, body[field]) for field in CACHE_FIELDS if field in body]
    for name in INNER_REQUEST:
        inner = body.get(name)
        if isinstance(inner, dict):
            found += [(f"{name}.{field}", inner[field]) for field in CACHE_FIELDS if field in inner]
    return found


# Gemini's Files API: a file is ``files/{id}`` (its id: lowercase letters, digits and dashes, at most
# 40), named in a prompt by its ``uri`` (https://generativelanguage.googleapis.com/v1beta/files/{id})
# or its name, under a part's ``fileData.fileUri``.
FILE_ID = re.compile(r"[a-z0-9-]{1,40}")
FILE_PREFIX = "files/"
FILE_HOST = "generativelanguage.googleapis.com"
FILE_URI = re.compile(rf"https://{re.escape(FILE_HOST)}/(?:v1beta|v1|v1alpha)/files/({FILE_ID.pattern})")
FILE_DATA = ("fileData", "file_data")  # a part's file, by either spelling Google reads
FILE_URI_FIELDS = ("fileUri", "file_uri")


def file_not_found(name: str, param: str = "name") -> ProxyError:
    """Google's 404 for a file, the same for one that does not exist and for another key's."""
    return ProxyError(404, f"File not found: {name[:200]}", param=param, code="not_found")


def file_id_of(name: object) -> str | None:
    """The id of a ``files/{id}`` name, None for anything else."""
    if not isinstance(name, str) or not name.startswith(FILE_PREFIX):
        return None
    file_id = name.removeprefix(FILE_PREFIX)
    return file_id if FILE_ID.fullmatch(file_id) else None


def names_a_file(uri: str) -> bool:
    """Whether a URI is (or tries to be) a Files API file: ``files/…``, or anything naming Google's
    API host in any spelling — the provider may read a variant (another scheme, case, a query) as
    the file, so it is held to the key's files, never passed as some other URL."""
    plain = unquote(uri).strip().lower()
    return plain.startswith(FILE_PREFIX) or FILE_HOST in plain


def may_name_file(raw: bytes) -> bool:
    """Whether a Gemini-native JSON text can hold a ``fileData`` / ``file_data`` part
    (:func:`referenced_gemini_files`): a fast test on the bytes (:func:`may_name`) that spares most
    bodies the walk — a member's name is case-sensitive, so only its escapes can hide it."""
    return b"ileData" in raw or may_name(raw, b"ile_data")


def file_uri_id(uri: str) -> str | None:
    """The file id a Files API URI names exactly (its ``uri`` or its name); None for any variant."""
    found = FILE_URI.fullmatch(uri)
    return found.group(1) if found else file_id_of(uri)


def referenced_gemini_files(body: object) -> dict[str, str]:
    """Each Files API URI a Gemini-native body names (:func:`names_a_file`), with the param that first
    names it: a part's ``fileData.fileUri`` (either spelling of each), wherever the part stands but
    the caller's ``metadata`` and ``NOT_READ`` — the one place Google reads a file from. (A URL a
    translation would turn into a ``fileData`` is refused there: ``providers.gemini.image_part``.)
    Walked without recursion."""
    found: dict[str, str] = {}
    if not isinstance(body, (dict, list)):
        return found
    items = body.items() if isinstance(body, dict) else enumerate(body)
    stack: list[tuple[str, object]] = [(str(k), v) for k, v in items if k != "metadata"]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            for name in FILE_DATA:
                data = value.get(name)
                if not isinstance(data, dict):
                    continue
                for field in FILE_URI_FIELDS:
                    uri = data.get(field)
                    if isinstance(uri, str) and names_a_file(uri):
                        found.setdefault(uri, f"{where}.{name}.{field}")
            stack.extend((f"{where}.{k}", v) for k, v in value.items() if k not in NOT_READ)
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
    return found


# Where an OpenAI-shaped body puts a URL: a chat part's ``image_url.url`` (``file``, ``video_url``, …),
# a Responses ``input_image``'s ``image_url`` and ``input_file``'s ``file_url``. Google's
# OpenAI-compatible endpoint (``…/v1beta/openai/``) reads a Files API URI there as the uploaded file.
# Its JSON may be read by proto-JSON rules, which take a field's lowerCamelCase name as well as its
# proto name (as ``CACHE_FIELDS``): each member's camelCase spelling is one too (Google's docs say
# neither way for this endpoint; held to the key's files either way).
URL_FIELDS = (
    *("url", "image_url", "file_url", "video_url", "audio_url", "file_uri", "file_data"),
    *("imageUrl", "fileUrl", "videoUrl", "audioUrl", "fileUri", "fileData"),
)
URL_MARKS = (b"Url", b"ile_uri", b"ileUri", b"ile_data", b"ileData")  # the rest of URL_FIELDS' names but "url"


def may_name_file_url(raw: bytes) -> bool:
    """Whether an OpenAI-shaped JSON text can hold a member of :data:`URL_FIELDS`
    (:func:`referenced_file_urls`): a fast test on the bytes (:func:`may_name`) that spares most
    bodies the walk — a member's name is case-sensitive, so only its escapes can hide it, while the
    URL itself may be spelt many ways. ``Url`` and ``ileData`` are the camelCase spellings'."""
    return may_name(raw, b"url") or any(part in raw for part in URL_MARKS)


def first_places(body: object, names: tuple[str, ...], keep: Callable[[str], bool] | None = None) -> dict[str, str]:
    """Each string a member called one of ``names`` holds in ``body`` (:func:`members_named`), or
    each ``keep`` takes, with the first place that names it: each is looked up once, however often
    a body repeats it."""
    found: dict[str, str] = {}
    if isinstance(body, dict):
        for param, value in members_named(body, names):
            if isinstance(value, str) and value not in found and (keep is None or keep(value)):
                found[value] = param
    return found


def referenced_file_urls(body: object) -> dict[str, str]:
    """Each Files API URI (:func:`names_a_file`) an OpenAI-shaped body names where it puts a URL
    (:data:`URL_FIELDS`), with the param that first names it, anywhere but the caller's
    ``metadata`` and ``NOT_READ``; text that only mentions one names nothing."""
    return first_places(body, URL_FIELDS, names_a_file)


ANTHROPIC_FILE = "anthropic_file"  # an Anthropic Files API file's kind in owned_objects (anthropic_files)


def anthropic_file_not_found(file_id: str, where: str = "") -> ProxyError:
    """Anthropic's 404 for a file, the same for one that does not exist and for another key's."""
    return ProxyError(404, f"{where}File not found: {file_id[:200]}", code="not_found")


def written_files(content: object) -> set[str]:
    """The files an Anthropic answer's code execution results name (``code_execution_tool_result``,
    ``bash_code_execution_tool_result``, … : ``{"type": "code_execution_output", "file_id": …}``
    under their ``content``): what the tool wrote, for the key whose answer it is. A list of
    content blocks, or one block (a stream's ``content_block_start``)."""
    found: set[str] = set()
    for block in content if isinstance(content, list) else [content]:
        kind = block.get("type") if isinstance(block, dict) else None
        if isinstance(kind, str) and "code_execution" in kind and kind.endswith("_tool_result"):
            found |= referenced_files(block)
    return found


ANTHROPIC_CONTAINER = "anthropic_container"  # a code execution tool's container in owned_objects


def anthropic_container(body: object, where: str = "") -> str | None:
    """The container a Messages body asks the code execution tool to run in: its top-level
    ``container``, a container id or the Skills API's ``{"id": …, "skills": [...]}`` (no id, or
    none at all: a new one, None). The one place Anthropic reads a container from: the same name
    anywhere else (``metadata``, a tool's arguments) names none. Any other value is Anthropic's 400
    (``where`` says which request of a batch)."""
    value = body.get("container") if isinstance(body, dict) else None
    param = "container"
    if isinstance(value, dict):
        value, param = value.get("id"), "container.id"
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ProxyError(
            400,
            f"{where}{param}: must be a container id (a non-empty string), or container an object with one as its id",
            param=param,
            code="invalid_request",
        )
    return value


def anthropic_container_not_found(container_id: str, where: str = "") -> ProxyError:
    """Anthropic's 404 for a container, the same for one that does not exist and for another key's."""
    return ProxyError(404, f"{where}Container not found: {container_id[:200]}", param="container", code="not_found")


MESSAGE_THREAD = "message_thread"  # a message thread's reply in owned_objects: the key that may continue it
THREAD_TYPES = ("create", "continue")


def continued_message(body: object) -> str | None:
    """The reply a Messages body's ``thread`` continues (``{"type": "continue", "previous_message_id": …}``;
    Anthropic keeps the conversation under that reply's id), None for no thread or a new one. Any other
    shape is Anthropic's 400, in open mode too: a ``type`` Stockyard does not know might name a reply
    it does not check."""
    thread = body.get("thread") if isinstance(body, dict) else None
    if thread is None:
        return None
    if not isinstance(thread, dict) or thread.get("type") not in THREAD_TYPES:
        message = "thread.type: Input should be 'create' or 'continue'"
        raise ProxyError(400, message, param="thread.type", code="invalid_request")
    previous = thread.get("previous_message_id")
    if thread["type"] == "create" and previous is None:
        return None
    if not isinstance(previous, str) or not previous:
        message = "thread.previous_message_id: must be the id of a reply of this thread (a non-empty string)"
        raise ProxyError(400, message, param="thread.previous_message_id", code="invalid_request")
    return previous


def thread_not_found(message_id: str) -> ProxyError:
    """Anthropic's 404 for a thread, the same for one that does not exist and for another key's: its
    ``details.error_code`` tells the SDK to send the whole conversation again under a new thread."""
    return ProxyError(
        404,
        f"thread.previous_message_id: no thread found for {message_id[:200]}",
        param="thread.previous_message_id",
        code="not_found",
        details={"error_code": "thread_not_found"},
    )


MESSAGE_REPLY = "message_reply"  # a reply to a request opting in to diagnostics: the key that may name it there


def diagnosed_message(body: object) -> str | None:
    """The reply a Messages body's ``diagnostics.previous_message_id`` names (Anthropic compares that
    request's prompt with this one's and says how they differ: its model, system, tools, the tokens a
    cache would have read), None for no ``diagnostics`` or a null id (opting in with nothing to compare).
    Any other shape is a 400, in open mode too, as Anthropic's."""
    diagnostics = body.get("diagnostics") if isinstance(body, dict) else None
    if diagnostics is None:
        return None
    if not isinstance(diagnostics, dict):
        raise ProxyError(400, "diagnostics: must be an object", param="diagnostics", code="invalid_request")
    previous = diagnostics.get("previous_message_id")
    if previous is not None and not isinstance(previous, str):
        message = "diagnostics.previous_message_id: must be the id of a reply (a string) or null"
        raise ProxyError(400, message, param="diagnostics.previous_message_id", code="invalid_request")
    return previous

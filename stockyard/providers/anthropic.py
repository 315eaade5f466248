"""Anthropic: the Messages API, for OpenAI-dialect clients (translated) and native ones.

OpenAI-dialect chat requests become Messages API requests and the answers come back as
``chat.completion`` objects, streams translated event by event. Native requests
(``/v1/messages``, ``/v1/messages/count_tokens``) pass through untouched, only the model
name rewritten when the client wrote ``provider/model``; usage is read on the way for
the trace.

The OpenAI-shaped output helpers live in ``chatshape.py``, shared with the Gemini adapter.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import re
import time
from typing import Any
from urllib.parse import parse_qs

from ..context import RequestContext
from ..errors import ProxyError
from ..estimate import WEB_SEARCH_USES, input_tokens, output_tokens, text_tokens, web_search_uses
from ..httpio import json_bytes
from ..objectrefs import ANTHROPIC_CONTAINER, ANTHROPIC_FILE, written_files
from ..pricing import MAX_SEARCHES, WEB_SEARCH_UC, Usage
from . import Provider, paused
from .base import Adapter, FollowUp, StreamTranslator, UpstreamCall, loads_object, sse_data
from .chatshape import (
    COMMON_FIELDS,
    EMULATED,
    TRANSLATED,
    ChunkStream,
    Field,
    allowed_tools,
    append_turn,
    completion,
    data_url,
    endpoint_check,
    honoured_body,
    message_list,
    only_allowed,
    record_stream_error,
    refused,
    shape_errors,
    text_of,
    tool_arguments,
    tool_function,
    tool_media_after,
    translate_content,
    unsupported_role,
    upstream_error,
)
from .chatshape import (
    note as add_note,
)
from .reasoning import THINKING_TYPES, thinking_blocks, unpack

log = logging.getLogger("stockyard.proxy")

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI clients often leave it out
NATIVE_PATHS = {"messages": "/v1/messages", "count_tokens": "/v1/messages/count_tokens"}
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "length",  # a paused turn Stockyard did not continue (proxy.continue_turn): incomplete
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


# reasoning_effort → the thinking budget (Anthropic's minimum is 1024); "none" turns thinking off.
THINKING_BUDGETS = {"none": 0, "minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}
MIN_THINKING = 1024  # Anthropic's smallest thinking budget
ANSWER_ROOM = 1024  # tokens of the output cap kept for the answer itself when thinking shares it


def thinking_budget(effort: Any, limit: int) -> int:
    """Thinking tokens for ``reasoning_effort`` within the request's output cap, or 0 for none.

    Anthropic's ``max_tokens`` counts thinking too, as OpenAI's ``max_completion_tokens``
    counts reasoning: the budget fits inside the cap the client set (and that budgets and
    rate limits reserved) rather than raising it, keeping room for the answer; a cap too
    small for the smallest budget means no thinking.
    """
    wanted = THINKING_BUDGETS.get(effort or "none", 0)
    room = limit - ANSWER_ROOM if limit > MIN_THINKING + ANSWER_ROOM else limit - 1
    budget = min(wanted, room)
    return budget if wanted and budget >= MIN_THINKING else 0


WEB_SEARCH_TOOL = "web_search_20250305"
LOCATION_FIELDS = ("city", "region", "country", "timezone")


def _structured(fmt: Any) -> bool:
    return not isinstance(fmt, dict) or fmt.get("type") in (None, "text", "json_schema")


# Every OpenAI chat request field → how it reaches an Anthropic model (one place: the CLI,
# the README and the refusals all read this table).
CHAT_FIELDS: dict[str, Field] = {
    **COMMON_FIELDS,
    "messages": Field(
        TRANSLATED,
        "system/developer → system; tool results → tool_result blocks; images; cache_control on a part,"
        " a message or a tool call → on its block",
    ),
    "max_tokens": Field(TRANSLATED, "max_tokens (STOCKYARD_DEFAULT_MAX_TOKENS when absent; thinking fits inside)"),
    "max_completion_tokens": Field(
        TRANSLATED, "max_tokens (STOCKYARD_DEFAULT_MAX_TOKENS when absent; thinking fits inside)"
    ),
    "temperature": Field(TRANSLATED, "temperature"),
    "top_p": Field(TRANSLATED, "top_p"),
    "stop": Field(TRANSLATED, "stop_sequences"),
    "tools": Field(
        TRANSLATED,
        "tools with input_schema; a function's strict: true → the tool's (strict tool use); a tool's cache_control"
        " (on it or its function) → on the tool",
    ),
    "tool_choice": Field(
        TRANSLATED,
        "tool_choice auto/none/any/tool; allowed_tools → only those tools sent, with auto/any (a turn whose tools"
        " differ reads no cached prefix)",
    ),
    "parallel_tool_calls": Field(TRANSLATED, "false → tool_choice.disable_parallel_tool_use"),
    "user": Field(TRANSLATED, "metadata.user_id"),
    "safety_identifier": Field(TRANSLATED, "metadata.user_id (when user is absent)"),
    "prompt_cache_key": Field(
        TRANSLATED,
        "prompt caching: cache_control marks on the system prompt and the last message (none added "
        "when the request has its own)",
    ),
    "prompt_cache_retention": Field(TRANSLATED, "24h → the marks' ttl 1h (else Anthropic's 5 minutes)"),
    "response_format": Field(
        TRANSLATED, "json_schema → output_config.format (structured outputs); json_object refused", _structured
    ),
    "reasoning_effort": Field(
        TRANSLATED,
        "thinking.budget_tokens: "
        + ", ".join(f"{k} {v}" for k, v in THINKING_BUDGETS.items() if v)
        + "; none: off; always inside max_tokens (below 1,025: off)",
        lambda v: v is None or (isinstance(v, str) and v in THINKING_BUDGETS),
    ),
    "stream_options": Field(EMULATED, "include_usage: a usage chunk built from message_start/message_delta usage"),
    "web_search_options": Field(
        TRANSLATED,
        "the web_search server tool: search_context_size → max_uses "
        + ", ".join(f"{k} {v}" for k, v in WEB_SEARCH_USES.items())
        + " (medium when absent); user_location (approximate) → user_location; citations → annotations",
        lambda v: v is None or isinstance(v, dict),
    ),
    "n": refused("one choice per request", lambda v: v in (None, 1)),
    "seed": refused("no sampling seed"),
    "presence_penalty": refused("no presence penalty"),
    "frequency_penalty": refused("no frequency penalty"),
}


# --------------------------------------------------------------------------- common headers


def base_path(provider: Provider, path: str) -> str:
    """``path`` under the base URL, which may or may not already end in ``/v1``."""
    return path[3:] if provider.base_url.rstrip("/").endswith("/v1") and path.startswith("/v1/") else path


def native_path(provider: Provider, ctx: RequestContext) -> str:
    """The endpoint's path, with ``?beta=true`` when the client sent it (the Anthropic SDKs' beta
    client does: Claude Code on every request). An allow-list: the Messages API takes no other
    query parameter, and nothing else a client puts in its URL reaches the provider's."""
    path = base_path(provider, NATIVE_PATHS[ctx.endpoint])
    return f"{path}?beta=true" if parse_qs(ctx.query).get("beta") == ["true"] else path


def auth_headers(provider: Provider, version: str | None = None) -> dict[str, str]:
    """The key and the API version (the documented one unless a native client chose its own)."""
    out = {"anthropic-version": version or API_VERSION}
    if provider.api_key:
        out["x-api-key"] = provider.api_key
    return out


# What the client's anthropic-version / anthropic-beta may hold: tokens like 2023-06-01 and
# prompt-caching-2024-07-31, comma-separated for betas; nothing that could end a header line.
_VERSION = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BETAS = re.compile(r"[A-Za-z0-9._-]{1,128}(?:[ \t]*,[ \t]*[A-Za-z0-9._-]{1,128}){0,31}")


def client_header(ctx: RequestContext, name: str, pattern: re.Pattern) -> str | None:
    """A client header passed upstream, or a 400 when it holds anything but the expected tokens."""
    value = ctx.headers.get(name)
    if value is None or value == "":
        return None
    if not pattern.fullmatch(value):
        raise ProxyError(
            400,
            f"header {name} must be letters, digits, '.', '-' or '_'"
            f"{' (comma-separated)' if pattern is _BETAS else ''}; got {value[:80]!r}",
            code="invalid_header",
        )
    return value


def headers(provider: Provider, ctx: RequestContext, native: bool) -> dict[str, str]:
    """Request headers; native clients keep their own version and beta flags (checked first)."""
    version = client_header(ctx, "anthropic-version", _VERSION) if native else None
    out = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if ctx.stream else "application/json",
        **auth_headers(provider, version),
    }
    beta = client_header(ctx, "anthropic-beta", _BETAS) if native else None
    if beta:
        out["anthropic-beta"] = beta
    return out


# --------------------------------------------------------------------------- request translation


def content_blocks(content: Any) -> list[dict]:
    """OpenAI user/assistant content → Anthropic content blocks (text, images, inline PDFs and text files)."""
    return translate_content(content, text_block, image_block, "Anthropic", document_block)


def text_block(part: dict, text: str) -> dict:
    """A text block, keeping the part's ``cache_control`` (prompt caching)."""
    block = {"type": "text", "text": text}
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


# The image types Claude reads; another (SVG, BMP, TIFF, HEIC…) is refused by Anthropic with a 400
# that names no message part, so it is refused here first, naming the type.
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def image_block(url: str) -> dict:
    inline = data_url(url)
    if inline:
        if inline[0] not in IMAGE_TYPES:
            raise ProxyError(
                400,
                f"an image of type {inline[0]!r} cannot go to Anthropic models (JPEG, PNG, GIF and WebP can)",
                param="messages",
                code="unsupported_content",
            )
        return {"type": "image", "source": {"type": "base64", "media_type": inline[0], "data": inline[1]}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise ProxyError(400, "image URLs must be http(s) or base64 data URLs", param="messages", code="invalid_image_url")


def document_block(url: str, filename: str | None = None) -> dict:
    """An inline file (a data URL) → a ``document`` block titled with its ``filename``: a PDF as
    base64, any text type (plain, Markdown, CSV…) as a plain-text document (the one text source
    Claude takes); an image file as an image block. Other types Claude does not read: 400."""
    inline = data_url(url)
    assert inline is not None  # chatshape.file_data_of gives data URLs only
    media_type, data = inline
    title = {"title": filename} if filename else {}
    if media_type == "application/pdf":
        return {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}, **title}
    if media_type.startswith("image/"):
        return image_block(url)
    if media_type.startswith("text/"):
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            message = f"a {media_type} file must be UTF-8 in base64"
            raise ProxyError(400, message, param="messages", code="invalid_file") from None
        source = {"type": "text", "media_type": "text/plain", "data": text}
        return {"type": "document", "source": source, **title}
    raise ProxyError(
        400,
        f"a file of type {media_type!r} cannot go to Anthropic models (PDF, text and images can)",
        param="messages",
        code="unsupported_content",
    )


def tool_use_blocks(calls: Any) -> list[dict]:
    if not isinstance(calls, list):
        return []
    return [
        {
            "type": "tool_use",
            "id": c.get("id"),
            "name": (c.get("function") or {}).get("name"),
            "input": tool_arguments(c),
        }
        for c in calls
        if isinstance(c, dict)
    ]


def marked(blocks: list[dict], msg: dict) -> list[dict]:
    """``blocks`` with the ``cache_control`` mark of their message on the last one. A mark on the
    message itself, or on one of its tool calls, is LiteLLM's form, which OpenCode's chat provider
    sends Claude models: it caches the prompt up to the end of that message, as a mark on the
    message's last block does. One mark per message, however many of its calls carry it."""
    calls = msg.get("tool_calls")
    calls = calls if isinstance(calls, list) else []
    marks = [msg.get("cache_control")] + [c.get("cache_control") for c in calls if isinstance(c, dict)]
    mark = next((m for m in marks if isinstance(m, dict)), None)
    return blocks if mark is None else mark_last(blocks, mark)


def system_value(blocks: list[dict]) -> str | list[dict] | None:
    """Top-level ``system``: one string, or text blocks when some carry ``cache_control``."""
    if _has_marks(blocks):
        return blocks
    return "\n\n".join(b["text"] for b in blocks) or None


def translate_messages(items: Any) -> tuple[str | list[dict] | None, list[dict]]:
    """OpenAI ``messages`` → (Anthropic ``system``, Anthropic ``messages``)."""
    system: list[dict] = []
    out: list[dict] = []
    for msg in tool_media_after(message_list(items)):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role in ("system", "developer"):
            system += marked([b for b in content_blocks(msg.get("content")) if b["type"] == "text"], msg)
        elif role == "user":
            append_turn(out, "user", marked(content_blocks(msg.get("content")), msg), "content")
        elif role == "assistant":
            # its thinking blocks first (``thinking_blocks``, LiteLLM's field): Anthropic wants them
            # back, signature intact, at the start of a turn that called tools with thinking on
            blocks = (
                thinking_blocks(msg.get("thinking_blocks"))
                + content_blocks(msg.get("content"))
                + tool_use_blocks(msg.get("tool_calls"))
            )
            append_turn(out, "assistant", marked(blocks, msg), "content")
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": msg.get("tool_call_id"),
                "content": text_of(msg.get("content")),
            }
            append_turn(out, "user", marked([result], msg), "content")
        else:
            raise unsupported_role(role, "Anthropic")
    return system_value(system), out


def is_thinking(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") in THINKING_TYPES


def blocks_of(msg: Any) -> list[dict]:
    """A message's content blocks (none for string content or a malformed message)."""
    content = msg.get("content") if isinstance(msg, dict) else None
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def tool_results(msg: Any) -> bool:
    """A user message carrying tool results (one step of a tool loop, not a new question)."""
    role = msg.get("role") if isinstance(msg, dict) else None
    return role == "user" and any(b.get("type") == "tool_result" for b in blocks_of(msg))


def thinking_missing(messages: list) -> bool:
    """True when Anthropic would refuse these messages with thinking on: they end in tool results,
    and the assistant turn that called the tools does not start with a thinking block.

    A tool loop is one assistant turn: it begins after the last user message that is not tool
    results, and its first assistant message must start with ``thinking`` or ``redacted_thinking``
    (Anthropic: "a final `assistant` message must start with a thinking block")."""
    last = messages[-1] if messages else None
    if not tool_results(last):
        return False
    first = None
    for msg in reversed(messages[:-1]):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role == "user" and not tool_results(msg):
            break
        if role == "assistant":
            first = msg
    if first is None:
        return False
    content = first.get("content")
    return not (isinstance(content, list) and content and is_thinking(content[0]))


THINKING_LEFT_OFF = (
    "thinking left off: the assistant turn that called the tools came back without its "
    "thinking blocks, which Anthropic requires with thinking on"
)


def note_thinking_off(ctx: RequestContext, provider: Provider, model: str, note: str = THINKING_LEFT_OFF) -> None:
    """Say in the log and the trace's error message that a request went with thinking off (or
    any other note on how it was sent)."""
    log.info("request %s to %s/%s: %s", ctx.trace_id, provider.name, model, note)
    add_note(ctx, note)


def without_thinking(messages: list[dict]) -> list[dict]:
    """The messages with no thinking blocks (thinking off: Anthropic refuses them in a final
    assistant message, and ignores them elsewhere); a turn left empty goes, its neighbours merge."""
    out: list[dict] = []
    for msg in messages:
        blocks = [b for b in msg["content"] if not (msg["role"] == "assistant" and is_thinking(b))]
        append_turn(out, msg["role"], blocks, "content")
    return out


def translate_tools(tools: Any) -> list[dict]:
    out = []
    for tool in tools or []:
        fn = tool_function(tool)
        entry = {"name": fn["name"], "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("description"):
            entry["description"] = fn["description"]
        if fn.get("strict") is True:  # strict tool use: Claude's input then fits the schema, as OpenAI's does
            entry["strict"] = True
        mark = tool_mark(tool, fn)
        if mark is not None:
            entry["cache_control"] = mark
        out.append(entry)
    return out


CALLED_EARLIER = "a tool called earlier in this conversation, not offered now"


def called_tools(messages: list[dict]) -> list[dict]:
    """The tools the ``tool_use`` blocks of ``messages`` call, declared for a request that offers none.

    Claude refuses tool_use and tool_result blocks in a request that defines no tools (``Requests which
    include `tool_use` or `tool_result` blocks must define tools``, quoted in BerriAI/litellm#4689), but not
    calls of tools it is not given once it is given some (LiteLLM's fix is a dummy tool of another name).
    So a history that called tools the request no longer offers (a tool search the turn leaves out, a
    client summarizing with its tools off) goes as it is, those tools declared by name (their schemas are
    the client's, gone with them: any object) and ``tool_choice: none``: the model calls none of them."""
    names: dict[str, None] = {}  # in the order called, each once
    for msg in messages:
        for block in msg["content"] if isinstance(msg.get("content"), list) else []:
            name = block.get("name") if isinstance(block, dict) and block.get("type") == "tool_use" else None
            if isinstance(name, str):
                names[name] = None
    return [{"name": name, "description": CALLED_EARLIER, "input_schema": {"type": "object"}} for name in names]


def tool_mark(tool: dict, fn: dict) -> dict | None:
    """A tool's ``cache_control`` (prompt caching up to the tools), in either place LiteLLM's
    clients put it: on the tool entry or on its ``function``."""
    mark = tool.get("cache_control", fn.get("cache_control"))
    return mark if isinstance(mark, dict) else None


def search_refused(field: str, what: str) -> ProxyError:
    return ProxyError(
        400,
        f"web_search_options.{field}: {what} for Anthropic models",
        param=f"web_search_options.{field}",
        code="unsupported_field",
    )


def web_search_tool(options: dict) -> dict:
    """Chat ``web_search_options`` → Anthropic's web search server tool: ``search_context_size``
    caps its searches (:data:`WEB_SEARCH_USES`), ``user_location`` localises them; any other
    field is a 400 naming it."""
    for key in options:
        if key not in ("search_context_size", "user_location") and options[key] is not None:
            raise search_refused(key, "not supported")
    uses = web_search_uses(options.get("search_context_size"))
    if not uses:
        raise search_refused("search_context_size", f"must be one of {', '.join(WEB_SEARCH_USES)}")
    tool: dict = {"type": WEB_SEARCH_TOOL, "name": "web_search", "max_uses": uses}
    location = options.get("user_location")
    if location is not None:
        if not isinstance(location, dict) or location.get("type") != "approximate":
            raise search_refused("user_location", "only an approximate location is supported")
        place = location.get("approximate") or {}
        if not isinstance(place, dict):
            raise search_refused("user_location.approximate", "must be an object")
        place = {k: v for k, v in place.items() if v is not None}
        for key, value in place.items():
            if key not in LOCATION_FIELDS or not isinstance(value, str):
                raise search_refused(f"user_location.approximate.{key}", "not a city, region, country or timezone")
        tool["user_location"] = {"type": "approximate", **place}
    return tool


def translate_tool_choice(choice: Any, parallel: Any) -> dict | None:
    """OpenAI tool_choice (and parallel_tool_calls) → Anthropic tool_choice."""
    if choice is None:
        result = None
    elif choice in ("auto", "none"):
        result = {"type": choice}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
        result = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise ProxyError(400, "unsupported tool_choice", param="tool_choice", code="invalid_tool_choice")
    if parallel is False and (result is None or result["type"] != "none"):
        result = {**(result or {"type": "auto"}), "disable_parallel_tool_use": True}
    return result


def messages_request(
    body: dict, model: str, stream: bool, default_cap: int = DEFAULT_MAX_TOKENS, notes: list[str] | None = None
) -> dict:
    """The whole Messages API request for an OpenAI chat request.

    Anthropic requires ``max_tokens``; a request that sets none gets ``default_cap``, the same
    STOCKYARD_DEFAULT_MAX_TOKENS that budgets and rate limits reserved for it.

    Thinking asked for (``reasoning_effort``) is left off when the tool loop's assistant turn
    came back without its thinking blocks (a client that dropped them, or history made on another
    model): Anthropic would refuse the request. ``notes`` gets a line saying so (the trace's).

    An ``allowed_tools`` tool_choice sends only the allowed tools, with ``auto`` or ``any``: Claude's
    tool_choice names one tool or all, and a tool it is given it may call. Its cached prefix starts at
    the tools, so a turn narrowed so reads nothing a turn with all of them cached (and the reverse).
    """
    allowed = allowed_tools(body)
    if allowed is not None:  # Claude has no allowed subset: the others are not sent (see the docstring)
        body = {**body, "tools": only_allowed(body.get("tools"), allowed[1]), "tool_choice": allowed[0]}
    system, messages = translate_messages(body.get("messages"))
    limit = next((body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None), default_cap)
    out: dict = {"model": model, "messages": messages, "max_tokens": limit}
    if system:
        out["system"] = system
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(ours) is not None:
            out[theirs] = body[ours]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("tools"):
        out["tools"] = translate_tools(body["tools"])
    if isinstance(body.get("web_search_options"), dict):
        search = web_search_tool(body["web_search_options"])
        if any(tool.get("name") == search["name"] for tool in out.get("tools", [])):  # Anthropic: 400 naming nothing
            raise ProxyError(
                400,
                f"a function named {search['name']!r} cannot be sent with web_search_options: Claude's web "
                "search tool has that name",
                param="tools",
                code="unsupported_field",
            )
        out["tools"] = out.get("tools", []) + [search]
    choice = translate_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice and out.get("tools"):
        out["tool_choice"] = choice
    called = called_tools(messages) if not out.get("tools") else []
    if called:
        out["tools"], out["tool_choice"] = called, {"type": "none"}
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    budget = thinking_budget(body.get("reasoning_effort"), limit)
    if budget and thinking_missing(messages):
        budget = 0
        if notes is not None:
            notes.append(THINKING_LEFT_OFF)
    if budget:
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    else:
        out["messages"] = without_thinking(messages)
    output_format = structured_output(body.get("response_format"))
    if output_format:
        out["output_config"] = {"format": output_format}
    if isinstance(body.get("prompt_cache_key"), str) and body["prompt_cache_key"]:
        mark_cache(out, {"type": "ephemeral", "ttl": "1h"} if body.get("prompt_cache_retention") == "24h" else None)
    if stream:
        out["stream"] = True
    return out


MARKABLE = ("text", "image", "document", "tool_use", "tool_result")  # blocks a cache_control may go on


def mark_cache(request: dict, mark: dict | None = None) -> None:
    """Cache the request's prefix as OpenAI caches a prompt by itself, for a client that asks
    (``prompt_cache_key``: Codex CLI sends its session's): Claude caches only up to a
    ``cache_control`` mark, so one goes on the system prompt (its tools and system, shared by a
    client's conversations) and one on the last message's last block (the conversation so far:
    the next turn reads it at a tenth of the input price, after writing it at 1.25x). A request
    with marks of its own is left as it is; a prefix below Claude's minimum is not cached, unbilled."""
    mark = mark or {"type": "ephemeral"}
    system, messages = request.get("system"), request.get("messages") or []
    if _has_marks(request.get("tools")) or _has_marks(system) or any(_has_marks(m.get("content")) for m in messages):
        return
    if isinstance(system, str) and system:
        request["system"] = [{"type": "text", "text": system, "cache_control": mark}]
    elif isinstance(system, list):
        request["system"] = mark_last(system, mark)
    if not messages:
        return
    last = messages[-1]
    content = last.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
    marked_blocks = mark_last(blocks, mark)
    if marked_blocks is not blocks:
        messages[-1] = {**last, "content": marked_blocks}


def mark_last(blocks: list[dict], mark: dict) -> list[dict]:
    """``blocks`` with ``mark`` on the last one, where Claude takes a mark (not on a thinking block
    or an empty text); else ``blocks`` themselves."""
    if blocks and blocks[-1].get("type") in MARKABLE and blocks[-1].get("text", True):
        return [*blocks[:-1], {**blocks[-1], "cache_control": mark}]
    return blocks


def _has_marks(content: Any) -> bool:
    return isinstance(content, list) and any(isinstance(b, dict) and "cache_control" in b for b in content)


def structured_output(fmt: Any) -> dict | None:
    """``response_format`` json_schema → Anthropic's ``output_config.format`` (structured outputs, GA:
    no beta header);
    json_object has no Anthropic counterpart: a 400 rather than a silently free-form answer."""
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), dict):
        schema = fmt["json_schema"].get("schema")
        if isinstance(schema, dict):
            return {"type": "json_schema", "schema": schema}
    raise ProxyError(
        400,
        "Anthropic models take response_format only as json_schema with a schema",
        param="response_format",
        code="unsupported_response_format",
    )


# --------------------------------------------------------------------------- answer translation


def url_citations(citations: Any, start: int, end: int) -> list[dict]:
    """A text block's web search citations → chat ``annotations`` over the block's characters
    (``start``..``end`` of the message content): the cited text is the block itself."""
    return [
        {
            "type": "url_citation",
            "url_citation": {
                "url": c["url"],
                "title": c["title"] if isinstance(c.get("title"), str) else "",
                "start_index": start,
                "end_index": end,
            },
        }
        for c in (citations if isinstance(citations, list) else [])
        if isinstance(c, dict) and c.get("type") == "web_search_result_location" and isinstance(c.get("url"), str)
    ]


def web_search_call(block: dict, arguments: Any) -> dict | None:
    """A ``server_tool_use`` block of the web search tool → Stockyard's ``web_search_calls`` entry
    on the chat message (the Responses API makes its ``web_search_call`` items of them); None for
    another server tool."""
    if block.get("name") != "web_search":
        return None
    query = arguments.get("query") if isinstance(arguments, dict) else None
    return {"id": block.get("id"), "query": query if isinstance(query, str) else ""}


def with_result(search: dict, result: Any) -> dict:
    """A ``web_search_calls`` entry with what its search found: the result pages' URLs as its
    ``sources`` (what the Responses API's ``web_search_call.action.sources`` lists), or
    ``"status": "failed"`` when Claude's search answered an error (no results, not billed)."""
    content = result.get("content") if isinstance(result, dict) else None
    if isinstance(content, list):
        urls = [r["url"] for r in content if isinstance(r, dict) and isinstance(r.get("url"), str)]
        return {**search, "sources": [{"type": "url", "url": url} for url in urls]}
    if isinstance(content, dict):  # web_search_tool_result_error
        return {**search, "status": "failed"}
    return search


def search_results(content: Any) -> dict[str, dict]:
    """A message's ``web_search_tool_result`` blocks by the search they answer."""
    return {
        b["tool_use_id"]: b
        for b in (content if isinstance(content, list) else [])
        if isinstance(b, dict) and b.get("type") == "web_search_tool_result" and isinstance(b.get("tool_use_id"), str)
    }


def _arguments(streamed: str, start: Any) -> Any:
    """A server tool's input: its streamed JSON, or the input its block started with; JSON the
    provider cut or garbled is no input (the search's query is then unknown, the answer goes on)."""
    if not streamed:
        return start
    try:
        return json.loads(streamed)
    except (ValueError, RecursionError):  # nested past the parser's depth: the provider's, not the client's 400
        return None


def message_to_choice(message: dict) -> dict:
    """An Anthropic message's content → one OpenAI choice. Server tool blocks (Claude's web
    searches and their results) are not text: the searches go in ``web_search_calls``, the
    citations of the text in ``annotations``."""
    texts: list[str] = []
    calls: list[dict] = []
    thoughts: list[str] = []
    annotations: list[dict] = []
    searches: list[dict] = []
    chars = 0
    for block in message.get("content") or []:
        if block.get("type") == "text":
            text = block.get("text", "")
            texts.append(text)
            annotations += url_citations(block.get("citations"), chars, chars + len(text))
            chars += len(text)
        elif block.get("type") == "server_tool_use":
            search = web_search_call(block, block.get("input"))
            if search is not None:
                searches.append(search)
        elif block.get("type") == "thinking":
            thoughts.append(block.get("thinking") or "")
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})},
                }
            )
    out: dict = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if calls:
        out["tool_calls"] = calls
    if annotations:
        out["annotations"] = annotations
    if searches:
        results = search_results(message.get("content"))
        out["web_search_calls"] = [with_result(search, results.get(search["id"])) for search in searches]
    if any(thoughts):
        out["reasoning_content"] = "".join(thoughts)
    blocks = thinking_blocks(message.get("content"))
    if blocks:  # the client sends them back on the assistant message (LiteLLM's field)
        out["thinking_blocks"] = blocks
    finish = STOP_REASONS.get(message.get("stop_reason") or "", "stop")
    return {"index": 0, "message": out, "logprobs": None, "finish_reason": finish}


def with_thinking(usage: Usage | None, chars: int) -> Usage | None:
    """Anthropic bills thinking inside output_tokens without a separate count: the reasoning
    tokens are estimated from the thinking text (4 characters a token), never above the output."""
    if usage is None or chars <= 0:
        return usage
    return dataclasses.replace(usage, reasoning_tokens=min(usage.completion_tokens, -(-chars // 4)))


def search_ran(block: Any) -> bool:
    """A web search that returned results (Anthropic bills it; an error result it does not)."""
    return (
        isinstance(block, dict)
        and block.get("type") == "web_search_tool_result"
        and isinstance(block.get("content"), list)
    )


def with_searches(usage: Usage | None, searches: int) -> Usage | None:
    """Each search that ran billed, when the usage counts fewer: a stream cut before its
    message_delta (whose usage holds the count: a client that leaves once the text is out), or a
    usage without ``server_tool_use``."""
    if usage is None or searches <= 0:
        return usage
    return dataclasses.replace(usage, fees_uc=max(usage.fees_uc, min(searches, MAX_SEARCHES) * WEB_SEARCH_UC))


def searches_in(message: dict) -> int:
    content = message.get("content")
    return sum(map(search_ran, content)) if isinstance(content, list) else 0


def thinking_chars(message: dict) -> int:
    """Characters of the answer's thinking blocks (what :func:`with_thinking` estimates from); a
    block of another shape counts nothing: a batch's odd line must not stop its cost."""
    content = message.get("content")
    if not isinstance(content, list):
        return 0
    return sum(
        len(b["thinking"])
        for b in content
        if isinstance(b, dict) and b.get("type") == "thinking" and isinstance(b.get("thinking"), str)
    )


def thinking_delta_chars(delta: Any) -> int:
    """Characters of thinking a stream's ``content_block_delta`` carries (a ``thinking_delta``'s),
    which :func:`with_thinking` estimates from as :func:`thinking_chars` does for a whole answer."""
    if isinstance(delta, dict) and delta.get("type") == "thinking_delta" and isinstance(delta.get("thinking"), str):
        return len(delta["thinking"])
    return 0


def error_fields(payload: Any) -> tuple[str, str] | None:
    """(type, message) of an Anthropic error object, None when it is not one."""
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err.get("type") or "api_error"), err["message"]
    return None


# --------------------------------------------------------------------------- adapters


class AnthropicChatAdapter(Adapter):
    """OpenAI-dialect chat requests to an Anthropic provider, translated both ways."""

    def prepare(self, ctx: RequestContext, provider: Provider, model: str) -> UpstreamCall:
        endpoint_check(ctx, provider)
        notes: list[str] = []
        with shape_errors(400, "the chat request"):
            body = messages_request(
                honoured_body(ctx, CHAT_FIELDS, "Anthropic"), model, ctx.stream, ctx.default_output_cap, notes
            )
        for note in notes:
            note_thinking_off(ctx, provider, model, note)
        ctx.state[paused.SENT] = body  # what a follow-up call repeats, should Claude pause the turn
        return messages_call(provider, ctx, body)

    def parse(self, ctx: RequestContext, body: bytes) -> bytes:
        return self.parse_turn(ctx, [body])

    def parse_turn(self, ctx: RequestContext, answers: list[bytes]) -> bytes:
        """The answer of every call of the turn (one, unless Claude paused it) as one completion;
        the usage in it is the whole turn's."""
        messages = [loads_object(answer) for answer in answers]
        with shape_errors(502, "the provider answer"):
            last = messages[-1]
            ctx.attempt.serve(last.get("model"), messages[0].get("id"))
            ctx.attempt.serve_claude(last.get("usage"))  # the speed and geography that served it: its price
            ctx.attempt.usage = message_usage(last)
            return completion(
                messages[0].get("id") or ctx.trace_id,
                int(time.time()),
                ctx.attempt.served_model or ctx.attempt.upstream_model or "",
                [message_to_choice(paused.joined(messages))],
                ctx.attempt.total_usage(),
            )

    def follow_up(self, ctx: RequestContext, answers: list[bytes]) -> FollowUp | None:
        """The call that continues a turn Claude paused: the request as sent, the answers so far
        sent back as the assistant's turn (:func:`paused.follow_up_request`)."""
        request, provider = ctx.state.get(paused.SENT), ctx.attempt.provider
        if paused.PAUSE_TURN.encode() not in answers[-1]:  # the usual answer, not parsed twice
            return None
        messages = [loads_object(answer) for answer in answers]
        if not paused.paused(messages[-1]) or not isinstance(request, dict) or provider is None:
            return None
        with shape_errors(502, "the provider answer"):
            try:
                sent_back = text_tokens(json.dumps(paused.content_of(messages), ensure_ascii=False).encode())
            except UnicodeEncodeError:  # the provider's text, relayed escaped; a request may not carry it
                return FollowUp(None, message_usage(messages[-1]), 0, paused.UNSENDABLE)
            body = paused.follow_up_request(request, messages)
            return FollowUp(messages_call(provider, ctx, body), message_usage(messages[-1]), sent_back)

    def stream(self, ctx: RequestContext) -> StreamTranslator:
        return AnthropicToOpenAIStream(ctx)

    def error(self, ctx: RequestContext, status: int, body: bytes) -> bytes:
        return upstream_error(ctx, status, body, error_fields)


def messages_call(provider: Provider, ctx: RequestContext, body: dict) -> UpstreamCall:
    """A translated request's Messages API call."""
    sent = headers(provider, ctx, native=False)
    return UpstreamCall(
        "POST", base_path(provider, "/v1/messages"), sent, json.dumps(body, ensure_ascii=False).encode()
    )


def message_usage(message: dict) -> Usage | None:
    """What one whole answer used: its usage, its thinking estimated (:func:`with_thinking`), each
    search that ran billed (:func:`with_searches`)."""
    usage = Usage.from_anthropic(message["usage"]) if readable_usage(message.get("usage")) else None
    return with_searches(with_thinking(usage, thinking_chars(message)), searches_in(message))


def readable_usage(usage: Any) -> dict:
    """What a provider's ``usage`` says that can be read: its counts that are non-negative integers
    (a bool is not one; ``pricing._count`` caps the absurd) and the objects holding more of them
    (``cache_creation``, ``server_tool_use``) and the ``iterations`` list (a compaction step's
    usage); empty when it is not an object or holds none. A usage that says nothing readable is as
    if it had not come: the text relayed estimates it."""
    if not isinstance(usage, dict):
        return {}
    return {
        k: v
        for k, v in usage.items()
        if (type(v) is int and v >= 0) or isinstance(v, dict) or (k == "iterations" and isinstance(v, list))
    }


def take_usage(ctx: RequestContext, seen: dict, usage: Any, searches: int = 0, final: bool = False) -> None:
    """Merge a stream's usage into ``seen`` (message_start and message_delta each carry
    part; message_delta's counts are cumulative) and keep the trace current, with at least the
    ``searches`` that ran so far billed (:func:`with_searches`). Until the ``final`` one
    (message_delta's) the output count is the start's: a stream cut before it is billed its
    output from the text relayed (``billing.Pricer``), not one token. A usage with nothing
    readable (:func:`readable_usage`) is not taken."""
    ctx.attempt.serve_claude(usage)  # the speed and geography that served it (message_start's)
    readable = readable_usage(usage)
    if readable or (usage == {} and seen):  # no usage yet: the text relayed estimates it
        seen.update(readable)
        ctx.attempt.usage = with_searches(Usage.from_anthropic(seen), searches)
        if readable:  # a search counted ({}) says nothing of whether the output count came
            ctx.attempt.usage_partial = not final


class AnthropicToOpenAIStream(ChunkStream):
    """Messages SSE events → ``chat.completion.chunk`` events, one by one."""

    def __init__(self, ctx: RequestContext) -> None:
        super().__init__(ctx)
        self.usage: dict = {}
        self.tools: dict[int, int] = {}  # Anthropic block index → OpenAI tool_calls index (this call's blocks)
        self.argued: set[int] = set()  # OpenAI tool_calls indexes that got an arguments fragment
        self.tool_count = 0  # tool calls sent (a continued turn's calls number them on)
        self.thinking = 0  # characters of thinking text so far (reasoning tokens are estimated from them)
        self.thoughts: dict[int, dict] = {}  # Anthropic block index → the thinking block being read
        self.thought_count = 0  # thinking blocks sent (each delta's thinking_blocks entry has its index)
        self.chars = 0  # characters of content sent: where a text block's citations start and end
        self.texts: dict[int, tuple[int, list]] = {}  # Anthropic block index → (its start, its citations)
        self.searches: dict[int, dict] = {}  # Anthropic block index → a server_tool_use block being read
        self.search_count = 0  # web_search_calls entries sent (each has its index)
        self.asked: dict[str, dict] = {}  # a search whose query is known, by id, until its result block comes
        self.annotation_count = 0  # annotations sent (each has its index)
        self.searched = 0  # web searches that returned results (each billed, whatever the usage says)
        # this call's message, sent back should Claude pause the turn: only a turn with web search
        # (the one server tool the chat translation sends) pauses, so only its stream is kept whole
        searching = isinstance(ctx.body.get("web_search_options"), dict)
        self.received = paused.MessageBuilder() if searching else None
        self.pausing = False  # this call's message_delta said pause_turn: its end is held back
        self.paused = False  # the call ended paused: a follow-up's events continue the same client stream

    def translate(self, payload: Any) -> list[bytes]:
        """Each event type has its ``on_<type>`` method; other types carry nothing for the client."""
        if not isinstance(payload, dict):
            return []
        if self.received is not None:
            self.received.add(payload)
        handler = getattr(self, "on_" + str(payload.get("type")), None)
        return handler(payload) if handler else []

    def on_message_start(self, payload: dict) -> list[bytes]:
        message = payload.get("message") or {}
        if self.paused:  # a follow-up call's answer: the same message to the client, its usage counted anew
            self.paused, self.usage, self.searched, self.thinking, self.tools = False, {}, 0, 0, {}
            take_usage(self.ctx, self.usage, message.get("usage"), self.searched)
            return []
        self.identify(message.get("id"), message.get("model"))
        take_usage(self.ctx, self.usage, message.get("usage"), self.searched)
        return [self.out({"role": "assistant", "content": ""})]

    def on_content_block_start(self, payload: dict) -> list[bytes]:
        block = payload.get("content_block") or {}
        if block.get("type") == "text":
            self.texts[payload.get("index", -1)] = (self.chars, list(block.get("citations") or []))
            return self.content(block.get("text"))
        if block.get("type") == "server_tool_use":
            self.searches[payload.get("index", -1)] = {**block, "partial_json": ""}
            return []
        if block.get("type") == "web_search_tool_result":
            if search_ran(block):
                self.searched += 1
                take_usage(self.ctx, self.usage, {}, self.searched)
            search = self.asked.pop(str(block.get("tool_use_id")), None)
            return self.search_entry(with_result(search, block)) if search is not None else []
        if block.get("type") in THINKING_TYPES:
            self.thoughts[payload.get("index", -1)] = dict(block)
            text = block.get("thinking")
            if isinstance(text, str) and text:
                self.thinking += len(text)
                return [self.out({"reasoning_content": text})]
            return []
        if block.get("type") != "tool_use":
            return []
        index = self.tools[payload.get("index", -1)] = self.tool_count
        self.tool_count += 1
        call = {
            "index": index,
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": ""},
        }
        return [self.out({"tool_calls": [call]})]

    def on_content_block_delta(self, payload: dict) -> list[bytes]:
        delta = payload.get("delta") or {}
        thought = self.thoughts.get(payload.get("index", -1))
        if chars := thinking_delta_chars(delta):
            self.thinking += chars
            if thought is not None:
                thought["thinking"] = (thought.get("thinking") or "") + delta["thinking"]
            return [self.out({"reasoning_content": delta["thinking"]})]
        if delta.get("type") == "signature_delta" and thought is not None:
            thought["signature"] = (thought.get("signature") or "") + str(delta.get("signature") or "")
            return []
        if delta.get("type") == "text_delta":
            return self.content(delta.get("text"))
        text = self.texts.get(payload.get("index", -1))
        if delta.get("type") == "citations_delta" and text is not None:
            text[1].append(delta.get("citation"))
            return []
        search = self.searches.get(payload.get("index", -1))
        if delta.get("type") == "input_json_delta" and search is not None:
            search["partial_json"] += str(delta.get("partial_json") or "")
            return []
        if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
            index = self.tools.get(payload.get("index", -1))
            if index is not None:
                self.argued.add(index)
                return [self.arguments(index, delta["partial_json"])]
        return []

    def arguments(self, index: int, fragment: str) -> bytes:
        return self.out({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})

    def content(self, text: Any) -> list[bytes]:
        if not isinstance(text, str) or not text:
            return []
        self.chars += len(text)
        return [self.out({"content": text})]

    def on_content_block_stop(self, payload: dict) -> list[bytes]:
        """A block is whole once it stops. A text block's citations (``citations_delta``, before
        or after its text) go out as ``annotations`` over its characters; a web search's query
        (its input streamed as JSON) as one ``web_search_calls`` entry; a thinking block (its
        signature known) as one ``thinking_blocks`` entry. Entries carry an ``index`` so the
        SDKs' stream helpers collect them."""
        index = payload.get("index", -1)
        call = self.tools.get(index)
        if call is not None and call not in self.argued:  # Claude streams no input for a call without one:
            return [self.arguments(call, "{}")]  # "{}", as the whole answer's arguments are (and OpenAI's)
        if index in self.texts:
            start, citations = self.texts.pop(index)
            annotations = url_citations(citations, start, self.chars)
            numbered = [{"index": self.annotation_count + i, **a} for i, a in enumerate(annotations)]
            self.annotation_count += len(numbered)
            return [self.out({"annotations": numbered})] if numbered else []
        if index in self.searches:
            block = self.searches.pop(index)
            search = web_search_call(block, _arguments(block.pop("partial_json"), block.get("input")))
            if search is not None:  # sent once its result block says what it found
                self.asked[str(search["id"])] = search
            return []
        blocks = thinking_blocks([self.thoughts.pop(index, None)])
        if not blocks:
            return []
        entry = {"index": self.thought_count, **blocks[0]}
        self.thought_count += 1
        return [self.out({"thinking_blocks": [entry]})]

    def search_entry(self, search: dict) -> list[bytes]:
        self.search_count += 1
        return [self.out({"web_search_calls": [{"index": self.search_count - 1, **search}]})]

    def on_message_delta(self, payload: dict) -> list[bytes]:
        take_usage(self.ctx, self.usage, payload.get("usage"), self.searched, final=True)
        self.ctx.attempt.usage = with_thinking(self.ctx.attempt.usage, self.thinking)
        reason = (payload.get("delta") or {}).get("stop_reason")
        if reason == paused.PAUSE_TURN:  # a follow-up may continue it: the end waits (see finish)
            self.pausing = True
            return []
        return self.ending(reason)

    def ending(self, reason: Any) -> list[bytes]:
        unanswered = [entry for search in self.asked.values() for entry in self.search_entry(search)]
        self.asked.clear()  # searches whose results never came (a turn paused for good): as they were asked
        return unanswered + ([self.out({}, STOP_REASONS.get(reason, "stop"))] if reason else [])

    def on_message_stop(self, payload: dict) -> list[bytes]:
        if self.pausing:
            self.pausing, self.paused = False, True
            return []
        self.complete = True
        return self.done()

    def paused_answer(self) -> bytes | None:
        if not self.paused or self.received is None:
            return None
        return json_bytes(self.received.answer())

    def finish(self) -> list[bytes]:
        """A paused turn that no follow-up continues ends here, incomplete (``length``); a stream that
        ended before its ``message_stop`` ends with an error, as a broken one does (never a stream
        that just stops: a client would wait for its end, or take a part for the whole answer)."""
        if self.failed or self.complete:
            return []
        if not self.paused:
            return self.fail(502, "incomplete_stream", "the provider's stream ended before its message_stop")
        self.paused, self.complete = False, True
        return self.ending(paused.PAUSE_TURN) + self.done()

    def on_error(self, payload: dict) -> list[bytes]:
        kind, message = error_fields(payload) or ("api_error", "provider stream failed")
        return self.fail(ERROR_STATUS.get(kind, 500), kind, message)


def stockyards(block: Any) -> bool:
    """A thinking block Stockyard made, which Anthropic would refuse: one carrying Gemini's thought
    signatures packed (``reasoning.pack``), or one made from another model's reasoning text, with
    an empty (or no) signature."""
    if not isinstance(block, dict) or block.get("type") != "thinking":
        return False
    signature = block.get("signature")
    return not isinstance(signature, str) or not signature or unpack(signature) is not None


def foreign_thinking_removed(messages: Any, thinking_on: bool = False) -> tuple[list | None, bool]:
    """(The messages without the thinking blocks Stockyard made, or None when there are none;
    whether thinking must be left off). With ``thinking_on``, a tool loop whose assistant turn no
    longer starts with a thinking block once they are gone (a conversation that moved to Claude
    from another model) goes with thinking off, and then without any thinking block, as
    ``messages_request`` sends it (Anthropic refuses them in a final assistant turn then)."""
    if not isinstance(messages, list):
        return None, False
    out: list = []
    changed = False
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) and msg.get("role") == "assistant" else None
        if isinstance(content, list) and any(stockyards(b) for b in content):
            changed = True
            msg = {**msg, "content": [b for b in content if not stockyards(b)]}
        out.append(msg)
    off = changed and thinking_on and thinking_missing(out)
    if off:
        out = [
            {**m, "content": [b for b in m["content"] if not is_thinking(b)]}
            if isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), list)
            else m
            for m in out
        ]
        changed = True
    # a turn left empty goes (Anthropic refuses one)
    out = [m for m in out if not (isinstance(m, dict) and m.get("content") == [])] if changed else out
    return (out if changed else None), off


def thinking_enabled(thinking: Any) -> bool:
    return isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled")


# Bytes that hold a thinking block hold "thinking", or a JSON escape spelling it ("th\\u0069nking"):
# without either, the parsed body is not walked (the hot path of a native request)
THINKING_HINTS = (b"thinking", b"\\u")


def claim_written(ctx: RequestContext, content: Any, raw: bytes) -> None:
    """The files the code execution tool wrote, named in this answer (or stream event), become the
    key's before it goes on (``ctx.claim_made``; ``anthropic_files``), so the key can download them."""
    if ctx.claim_made is not None and (b"file_id" in raw or b"\\u" in raw):
        written = written_files(content)
        if written:
            ctx.claim_made(ANTHROPIC_FILE, written)


def claim_container(ctx: RequestContext, container: Any) -> None:
    """The container the code execution tool ran in, named by this answer (``container``, or a
    stream's ``message_start`` message or ``message_delta`` delta), becomes the key's before it goes
    on, if no key holds it yet (``ctx.claim_made``): the key may run code in it again, no other key may."""
    if ctx.claim_made is not None and isinstance(container, dict) and isinstance(container.get("id"), str):
        ctx.claim_made(ANTHROPIC_CONTAINER, {container["id"]})


def thread_size(ctx: RequestContext, usage: Any, final: bool = True) -> int:
    """The tokens a message thread holds after this reply, which its next ``continue`` is billed as input
    at least: the reply's input (cache reads and writes too) and output, as its usage counts them. Before
    the ``final`` count (a stream's start) the output is the request's cap; without a readable usage the
    input is Stockyard's estimate: never less than the thread may hold."""
    seen = readable_usage(usage)
    cap = output_tokens(ctx, ctx.default_output_cap)
    if not seen:
        return input_tokens(ctx) + cap
    names = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    prompt = sum(seen.get(name, 0) for name in names)
    return prompt + (seen.get("output_tokens", 0) if final else cap)


def keep_thread(ctx: RequestContext, message: dict, usage: Any, final: bool = True) -> None:
    """A thread request's reply (its ``id``: a whole answer's, a stream's ``message_start``) becomes the
    key's with the thread's size (``ctx.thread_kept``) before it goes on: the key may continue it, no other."""
    reply_id = message.get("id")
    if ctx.thread_kept is not None and isinstance(reply_id, str) and reply_id:
        ctx.thread_kept(reply_id, thread_size(ctx, usage, final))


class AnthropicNativeAdapter(Adapter):
    """Anthropic-dialect clients to an Anthropic provider: bytes pass through untouched, but for
    the thinking blocks Stockyard made (and thinking, when the tool loop is left without one)."""

    def prepare(self, ctx: RequestContext, provider: Provider, model: str) -> UpstreamCall:
        body = ctx.raw
        messages, off = None, False
        if any(hint in ctx.raw for hint in THINKING_HINTS):
            thinking_on = thinking_enabled(ctx.body.get("thinking"))
            messages, off = foreign_thinking_removed(ctx.body.get("messages"), thinking_on)
        if ctx.body.get("model") != model or ctx.body_changed or messages is not None:
            changed = {**ctx.body, "model": model}
            if messages is not None:
                changed["messages"] = messages
            if off:
                changed.pop("thinking", None)
                note_thinking_off(ctx, provider, model)
            body = json.dumps(changed, ensure_ascii=False).encode()
        return UpstreamCall("POST", native_path(provider, ctx), headers(provider, ctx, native=True), body)

    def parse(self, ctx: RequestContext, body: bytes) -> bytes:
        if ctx.endpoint == "count_tokens":
            ctx.attempt.usage = Usage()  # counting tokens is free: nothing to bill
            return body
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):  # relayed as the provider wrote it, unread
            return body
        if isinstance(message, dict):
            ctx.attempt.serve(message.get("model"), message.get("id"))
            claim_written(ctx, message.get("content"), body)
            claim_container(ctx, message.get("container"))
            keep_thread(ctx, message, message.get("usage"))
            ctx.attempt.serve_claude(message.get("usage"))
            if readable_usage(message.get("usage")):
                ctx.attempt.usage = message_usage(message)
        return body

    def stream(self, ctx: RequestContext) -> StreamTranslator:
        return AnthropicNativeStream(ctx)


class AnthropicNativeStream(StreamTranslator):
    """Relays every event unchanged, reading usage and the end of the message on the way."""

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.usage: dict = {}
        self.searched = 0  # web searches that returned results (each billed, whatever the usage says)
        self.thinking = 0  # characters of thinking text so far: its reasoning tokens, as the whole answer's
        self.message: dict = {}  # message_start's message: a thread's reply, sized again by message_delta

    def feed(self, event: bytes) -> list[bytes]:
        data = sse_data(event)
        if data is None or b'"type"' not in data:
            return [event]
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError):
            return [event]
        kind = payload.get("type") if isinstance(payload, dict) else None
        if kind == "message_start":
            message = payload.get("message")
            message = message if isinstance(message, dict) else {}  # an odd one goes on, read for nothing
            self.ctx.attempt.serve(message.get("model"), message.get("id"))
            claim_container(self.ctx, message.get("container"))
            take_usage(self.ctx, self.usage, message.get("usage"), self.searched)
            self.message = message
            keep_thread(self.ctx, message, self.usage, final=False)
        elif kind == "content_block_start" and search_ran(payload.get("content_block")):
            self.searched += 1
            take_usage(self.ctx, self.usage, {}, self.searched)
        elif kind == "content_block_start":
            claim_written(self.ctx, payload.get("content_block"), data)
        elif kind == "content_block_delta":
            self.thinking += thinking_delta_chars(payload.get("delta"))
        elif kind == "message_delta":
            delta = payload.get("delta")
            claim_container(self.ctx, delta.get("container") if isinstance(delta, dict) else None)
            take_usage(self.ctx, self.usage, payload.get("usage"), self.searched, final=True)
            self.ctx.attempt.usage = with_thinking(self.ctx.attempt.usage, self.thinking)
            if readable_usage(payload.get("usage")):
                keep_thread(self.ctx, self.message, self.usage)
        elif kind == "message_stop":
            self.complete = True
        elif kind == "error":
            err_kind, message = error_fields(payload) or ("api_error", "provider stream failed")
            record_stream_error(self.ctx, err_kind, message)
        return [event]

"""A mock LLM provider server for Stockyard's tests and benchmarks.

It speaks the wire formats of OpenAI (chat, completions, embeddings, models, files, batches, uploads
(create, parts, complete — the File made of the parts in order — and cancel), videos:
Sora jobs that move on one step a retrieve, and fail for a prompt holding `VIDEO_FAIL`),
Anthropic (messages, count_tokens, message batches, models, and the Files API (beta) for a call
carrying `anthropic-version`: uploads are not downloadable, a code execution tool writes a file
its result names (`bash_code_execution_tool_result`; the legacy `code_execution_20250522` tool's
`code_execution_tool_result`), in a message batch's results too, a message naming an unknown
file is a 404; the code execution tool runs in a container the answer names — a new one, or the
one the request's `container` names, an unknown one a 404), Gemini (generateContent,
streamGenerateContent as SSE or a JSON array, countTokens, embedContent, batchEmbedContents,
models.list/get, cachedContents: a generateContent naming a cache reports its tokens as
`cachedContentTokenCount`, part of its `promptTokenCount`, an unknown one is a 404; a cache holds
CACHED_TOKENS, or BIG_CACHE_TOKENS for a `bigcache` model, and the create answer of a `nocount`
model leaves out its `usageMetadata`; the Files API: resumable uploads, files.list/get/delete,
and a generateContent naming an unknown file by `fileData.fileUri` is Google's 403; a generateContent
offering Google Search or Google Maps grounding answers with the candidate's `groundingMetadata` as Google
sends it — GROUNDING_QUERIES in `webSearchQueries`, on the last chunk of a stream — unless its model's name
says `ungrounded`) and Azure OpenAI
(deployments), records every request, and can be scripted with `Reply` objects: queued in order, or
chosen for each request by `mock.script` (a function of the `Recorded` request) when none is queued.

It bills like a provider: every choice (`n`, `best_of`, Gemini `candidateCount`) is in the
usage, 5 output tokens each — or, with `bill-max` in the model name, every token the
request's cap allows (read leniently: `5000.0` and `"5000"` count), the worst case.
Gemini's image models (`gemini-2.5-flash-image…`, `gemini-3-pro-image…`) answer with their text and
an `inlineData` image, its tokens billed apart in `candidatesTokensDetails` (modality IMAGE).

    with MockUpstream() as mock:
        mock.enqueue(Reply(status=429, headers={"retry-after": "1"}))
        ...  # point the code under test at mock.url
        assert mock.last("/chat/completions").json["model"] == "gpt-4o-mini"

Run as a process (for benchmarks):

    python tests/mock_upstream.py --port 9000 --delay-ms 20
    python tests/mock_upstream.py --stream-events 20 --sse-delay-ms 5   # longer, paced streams

Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import collections
import email.utils
import hashlib
import http.server
import io
import itertools
import json as jsonlib
import re
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import wave
from dataclasses import dataclass, field, replace
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

CREATED = 1_700_000_000  # fixed timestamp: replies are deterministic
TEXT = "Hello from mock"
TEXT_PIECES = ["Hello", " from", " mock"]
TOOL_ARGS = {"city": "Paris"}
TOOL_ARG_PIECES = ['{"city"', ': "Paris"}']
PROMPT_TOKENS = 12
COMPLETION_TOKENS = 5
CACHED_TOKENS = 8
BIG_CACHE_TOKENS = 1_000_000  # a cache made for a model with `bigcache` in its name holds this many
REASONING_TOKENS = 3
THINKING_TEXT = "Let me think about the weather."  # Anthropic's thinking block when thinking is on
THINKING_SIGNATURE = "EqQBCkYIBxgCKkBmockSignatureOfTheThinkingBlock=="
THOUGHT_SIGNATURE = "CiQBmockThoughtSignatureFromGemini3=="  # on gemini-3* function calls
# Google's stand-ins for a lost thought signature, which Gemini 3 takes on any call
SKIP_SIGNATURES = ("skip_thought_signature_validator", "context_engineering_is_the_way_to_go")
EMBEDDING_DIMS = 8
OPENAI_USER_CAP = 64  # chat's `user`: a longer one is a 400
MODEL_IDS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
ERROR_MODEL = re.compile(r"^(?:mock|claude|gemini)-error-(\d{3})$")
SSE_PREFIXES = ("data:", "event:", "id:", "retry:", ":")


# --------------------------------------------------------------------------- public types


@dataclass
class Reply:
    """One scripted reply; `MockUpstream.enqueue` queues these (consumed FIFO).

    Content is `json`, `body` or `sse` (first one set wins). With none of them set, the
    route's default reply is used; if `status` >= 400 that is the provider's error JSON
    for that status, in the dialect of the route (so `Reply(status=429)` is a realistic 429).
    `sse` items are raw `data:` payloads (wrapped as `data: <item>\\n\\n`) or full event
    blocks (starting with `event:`/`data:`/`:`). No `[DONE]` is added to scripted streams.
    """

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    sse: list[str] | None = None
    sse_delay_ms: float = 0
    cut_after: int | None = None  # SSE: events sent before an abrupt close; JSON: body bytes
    hang_s: float | None = None
    hang_after: int | None = None  # SSE: hang_s after this many events (mid-stream), not before the answer
    # SSE: wait for ``held`` after this many events (mid-stream), not before; a body: after this many bytes
    held_after: int | None = None
    reset: bool = False
    # the provider does the work, then the connection closes before its answer: after LOST_AFTER_S (doing
    # work takes time; a close sooner is the keep-alive race Stockyard sends a request again after)
    lost: bool = False
    wait: threading.Event | None = None  # the provider starts once it is set (hang_started: waiting)
    held: threading.Event | None = None  # the provider does the work, then answers once it is set (hang_started: done)
    hang_started: threading.Event | None = None  # set when the request arrived and the hang began
    hung_up: threading.Event | None = None  # set when the caller closed the connection during the hang
    all_sent: threading.Event | None = None  # SSE: set once every event and the stream's end went out

    def has_content(self) -> bool:
        """True when the reply carries its own body (json, body or sse)."""
        return self.json is not None or self.body is not None or self.sse is not None


LOST_AFTER_S = 1.5  # a ``lost`` answer's work: past upstream.STALE_WINDOW_S


@dataclass
class Recorded:
    """One request the mock received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any


# --------------------------------------------------------------------------- helpers


def _sse_block(item: str) -> bytes:
    """Turn an SSE payload or a full event block into wire bytes ending with a blank line."""
    if not item.startswith(SSE_PREFIXES):
        item = f"data: {item}"
    if not item.endswith("\n\n"):
        item = item.rstrip("\n") + "\n\n"
    return item.encode()


def _stretched(events: list[str], count: int) -> list[str]:
    """A default stream padded to ``count`` events by repeating its second one (in a chat stream,
    the first content delta): longer streams for benchmarks, same shape."""
    if len(events) < 2 or len(events) >= count:
        return events
    return events[:1] + events[1:2] * (count - len(events)) + events[1:]


def _dumps(obj: Any) -> str:
    return jsonlib.dumps(obj, separators=(",", ":"))


def _has_flag(model: str, word: str) -> bool:
    return word in model


def _no_usage(model: str) -> bool:
    return model == "mock-no-usage"


def _lenient_int(value: Any) -> int | None:
    """A number as a lenient provider reads it: 5000, 5000.0 and "5000" are all 5000."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def _first_number(container: Any, names: tuple[str, ...]) -> int | None:
    if not isinstance(container, dict):
        return None
    return next((v for v in (_lenient_int(container.get(n)) for n in names) if v is not None and v > 0), None)


def _gemini_config(body: dict) -> dict:
    config = body.get("generationConfig")
    return config if isinstance(config, dict) else {}


def billed_choices(body: dict) -> int:
    """Outputs a provider generates and bills: `n` choices, `best_of` completions, Gemini candidates."""
    counts = [_first_number(body, (name,)) for name in ("n", "best_of")]
    counts.append(_first_number(_gemini_config(body), ("candidateCount",)))
    return max([c for c in counts if c] or [1])


def per_choice_tokens(body: dict, model: str) -> int:
    """Output tokens billed per choice: 5, or with `bill-max` in the model every token the
    request allows (a provider that writes until the cap: the worst case a budget must hold)."""
    if not _has_flag(model, "bill-max"):
        return COMPLETION_TOKENS
    cap = _first_number(body, ("max_completion_tokens", "max_tokens", "max_output_tokens")) or _first_number(
        _gemini_config(body), ("maxOutputTokens",)
    )
    return cap or COMPLETION_TOKENS


def _error_status(model: str) -> int | None:
    """Status code requested by a magic error model name, e.g. `mock-error-429` → 429."""
    match = ERROR_MODEL.match(model or "")
    return int(match.group(1)) if match else None


def _embedding(text: str) -> list[float]:
    """Eight deterministic floats in [-1, 1) derived from the input."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 128.0 - 1.0, 6) for b in digest[:EMBEDDING_DIMS]]


def _embedding_inputs(value: Any) -> list[Any]:
    """Split an embeddings `input` into its items (a string, token ids, or lists of them)."""
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int)):
        return [value]
    return list(value) if isinstance(value, list) else [value]


def _token_count(item: Any) -> int:
    if isinstance(item, list):
        return max(1, len(item))
    return max(1, len(str(item).split()))


def _first_openai_tool(body: dict) -> str | None:
    """The tool to call: none once the last message is a tool result (the model answers in text then)."""
    messages = body.get("messages")
    if (
        isinstance(messages, list)
        and messages
        and isinstance(messages[-1], dict)
        and messages[-1].get("role") == "tool"
    ):
        return None
    tools = body.get("tools") or []
    if body.get("tool_choice") == "none":  # the model may not call one
        return None
    if tools and isinstance(tools[0], dict):
        fn = tools[0].get("function") or {}
        return fn.get("name") or tools[0].get("name") or "tool"
    return None


def _first_anthropic_tool(body: dict) -> str | None:
    """The first tool the client runs (server tools, typed ``web_search_…`` and the like, are Anthropic's)."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") in (None, "custom")]
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "none":  # the model may not call one
        return None
    if choice.get("type") == "tool" and tools:  # the one it must call (anthropic_tool_refusal: a declared one)
        return choice.get("name")
    return (tools[0].get("name") or "tool") if tools else None


def _first_gemini_function(body: dict) -> str | None:
    """The function to call: none once the last turn holds only function responses."""
    contents = body.get("contents")
    parts = (
        contents[-1].get("parts")
        if isinstance(contents, list) and contents and isinstance(contents[-1], dict)
        else None
    )
    if isinstance(parts, list) and parts and all(isinstance(p, dict) and "functionResponse" in p for p in parts):
        return None
    config = body.get("toolConfig") or body.get("tool_config") or {}
    calling = config.get("functionCallingConfig") or config.get("function_calling_config") or {}
    if calling.get("mode") == "NONE":  # the model may not call one
        return None
    allowed = calling.get("allowedFunctionNames") or calling.get("allowed_function_names")
    if calling.get("mode") == "ANY" and allowed:  # the ones it may call (gemini_tool_refusal: declared ones)
        return allowed[0]
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        decls = tool.get("functionDeclarations") or tool.get("function_declarations") or []
        if decls:
            return decls[0].get("name") or "tool"
    return None


# --------------------------------------------------------------------------- error shapes

OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request (mock)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided (mock)."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist (mock)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached (mock)."),
    500: ("server_error", None, "The server had an error processing your request (mock)."),
    503: ("server_error", None, "The engine is currently overloaded (mock)."),
}
ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
GEMINI_ERRORS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def openai_error(status: int, message: str | None = None) -> Reply:
    """An OpenAI-shaped error reply; 429 carries `retry-after: 1`."""
    etype, code, default = OPENAI_ERRORS.get(status, ("server_error", None, "Error (mock)."))
    body = {"error": {"message": message or default, "type": etype, "param": None, "code": code}}
    headers = {"retry-after": "1"} if status == 429 else {}
    return Reply(status=status, json=body, headers=headers)


def anthropic_error(status: int, message: str | None = None) -> Reply:
    """An Anthropic-shaped error reply; 429 carries `retry-after: 1`."""
    etype = ANTHROPIC_ERRORS.get(status, "api_error")
    body = {"type": "error", "error": {"type": etype, "message": message or f"{etype} (mock)"}}
    headers = {"retry-after": "1"} if status == 429 else {}
    return Reply(status=status, json=body, headers=headers)


def gemini_error(status: int, message: str | None = None) -> Reply:
    """A Google-shaped error reply."""
    gstatus = GEMINI_ERRORS.get(status, "UNKNOWN")
    body = {"error": {"code": status, "message": message or f"{gstatus} (mock)", "status": gstatus}}
    return Reply(status=status, json=body)


# The tool names each provider takes: Claude's pattern, and Gemini's FunctionDeclaration name (a letter or
# ``_`` first; letters, digits, ``_ . : -``; at most 64).
CLAUDE_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
GEMINI_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")


def anthropic_tool_refusal(body: dict) -> Reply | None:
    """Claude's 400 for a client tool whose name it does not take, or a ``tool_choice`` naming no declared tool."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    for i, tool in enumerate(tools):
        if tool.get("type") in (None, "custom") and not CLAUDE_TOOL_NAME.fullmatch(str(tool.get("name"))):
            return anthropic_error(400, f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        if choice.get("name") not in {t.get("name") for t in tools}:
            return anthropic_error(400, f"tool_choice: Tool '{choice.get('name')}' not found in tools")
    # Tool blocks in the messages with no tools defined: Anthropic's 400 (quoted in BerriAI/litellm#4689,
    # whose dummy tool, of another name than the history's calls, is what LiteLLM sends to get past it).
    blocks = [b for m in body.get("messages") or [] if isinstance(m, dict) for b in listed_blocks(m.get("content"))]
    if not tools and any(b.get("type") in ("tool_use", "tool_result") for b in blocks):
        return anthropic_error(400, "Requests which include `tool_use` or `tool_result` blocks must define tools.")
    return None


def listed_blocks(content: Any) -> list[dict]:
    """A message's content blocks (none for a string)."""
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def gemini_tool_refusal(body: dict) -> Reply | None:
    """Gemini's 400 for a function name it does not take, or ``allowedFunctionNames`` naming no declared one."""
    names = []
    for i, tool in enumerate(body.get("tools") or []):
        found = tool if isinstance(tool, dict) else {}
        decls = found.get("functionDeclarations") or found.get("function_declarations") or []
        for j, decl in enumerate(decls):
            name = decl.get("name") if isinstance(decl, dict) else None
            if not isinstance(name, str) or not GEMINI_FUNCTION_NAME.fullmatch(name):
                return gemini_error(
                    400,
                    f"* GenerateContentRequest.tools[{i}].function_declarations[{j}].name: Invalid function name. "
                    "Must start with a letter or an underscore. Must be alphameric (a-z, A-Z, 0-9), underscores (_), "
                    "dots (.), colons (:) or dashes (-), with a maximum length of 64.",
                )
            names.append(name)
    config = body.get("toolConfig") or body.get("tool_config") or {}
    calling = config.get("functionCallingConfig") or config.get("function_calling_config") or {}
    allowed = calling.get("allowedFunctionNames") or calling.get("allowed_function_names") or []
    if allowed and calling.get("mode") not in ("ANY", "VALIDATED"):  # FunctionCallingConfig: only with these
        message = "* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: only "
        return gemini_error(400, message + "allowed when the mode is ANY or VALIDATED")
    for name in allowed:
        if name not in names:
            message = f"* GenerateContentRequest.tool_config: allowed function name {name!r} is not declared"
            return gemini_error(400, message)
    return None


def azure_error(status: int, message: str | None = None) -> Reply:
    """An Azure-ish error reply (`{"error": {"code": "404", "message": ...}}`)."""
    return Reply(status=status, json={"error": {"code": str(status), "message": message or "Resource not found"}})


# --------------------------------------------------------------------------- OpenAI


def openai_usage(model: str, completion_tokens: int = COMPLETION_TOKENS) -> dict:
    """Usage block; magic words `cached` and `reasoning` in the model fill the details."""
    cached = CACHED_TOKENS if _has_flag(model, "cached") else 0
    reasoning = REASONING_TOKENS if _has_flag(model, "reasoning") else 0
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def _openai_tool_call(name: str) -> dict:
    return {"id": "call_mock1", "type": "function", "function": {"name": name, "arguments": _dumps(TOOL_ARGS)}}


def _chat_text(body: dict) -> str:
    """The answer's text: the JSON ``{"city":"Paris"}`` when ``response_format`` asks for a json_schema
    (OpenAI's structured outputs answer JSON that fits it, which the SDKs' parse helpers read), else TEXT."""
    fmt = body.get("response_format")
    return _dumps(TOOL_ARGS) if isinstance(fmt, dict) and fmt.get("type") == "json_schema" else TEXT


def openai_chat(body: dict, n: int, model: str) -> dict:
    """A non-streamed `chat.completion` object."""
    tool = _first_openai_tool(body)
    if tool:
        message = {"role": "assistant", "content": None, "tool_calls": [_openai_tool_call(tool)], "refusal": None}
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": _chat_text(body), "refusal": None}
        finish = "stop"
    if draws(body):
        message["images"] = [chat_image()]
    count = _first_number(body, ("n",)) or 1
    reply = {
        "id": f"chatcmpl-mock{n}",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{"index": i, "message": message, "logprobs": None, "finish_reason": finish} for i in range(count)],
    }
    if not _no_usage(model):
        reply["usage"] = openai_usage(model, per_choice_tokens(body, model) * billed_choices(body))
    return reply


def _chat_deltas(body: dict) -> tuple[list[dict], str]:
    """The `delta` objects of a streamed chat answer, and its finish reason."""
    tool = _first_openai_tool(body)
    if not tool:
        text = _chat_text(body)
        pieces = TEXT_PIECES if text == TEXT else [text[:5], text[5:]]  # the JSON in two pieces
        return [{"role": "assistant", "content": "", "refusal": None}] + [{"content": p} for p in pieces], "stop"
    head = {"index": 0, "id": "call_mock1", "type": "function", "function": {"name": tool, "arguments": ""}}
    deltas = [{"role": "assistant", "content": None, "tool_calls": [head], "refusal": None}]
    deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in TOOL_ARG_PIECES]
    return deltas, "tool_calls"


def draws(body: dict) -> bool:
    """A chat request asking for image output (``modalities`` with "image": OpenRouter's image models)."""
    modalities = body.get("modalities")
    return isinstance(modalities, list) and "image" in modalities


def chat_image() -> dict:
    """An image a chat image model made, as OpenRouter sends it (``message.images`` / ``delta.images``)."""
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + IMAGE_B64}}


def _include_usage(body: dict) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def openai_chat_stream(body: dict, n: int, model: str) -> list[str]:
    """SSE payloads of a streamed chat answer, ending with `[DONE]`."""
    with_usage = _include_usage(body) and not _no_usage(model)

    def chunk(choices: list[dict], usage: Any = None) -> str:
        obj = {
            "id": f"chatcmpl-mock{n}",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        }
        if with_usage:
            obj["usage"] = usage
        return _dumps(obj)

    deltas, finish = _chat_deltas(body)
    if draws(body):  # an image model (OpenRouter's shape): its image in a delta of its own, first
        deltas = [{"role": "assistant", "content": "", "images": [chat_image()]}, *deltas]
    events = [chunk([{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]) for d in deltas]
    events.append(chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]))
    if with_usage:
        events.append(chunk([], openai_usage(model, per_choice_tokens(body, model) * billed_choices(body))))
    events.append("[DONE]")
    return events


def openai_completion(body: dict, n: int, model: str) -> dict:
    """A non-streamed `text_completion` object."""
    reply = {
        "id": f"cmpl-mock{n}",
        "object": "text_completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {"text": TEXT, "index": i, "logprobs": None, "finish_reason": "stop"}
            for i in range(_first_number(body, ("n",)) or 1)
        ],
    }
    if not _no_usage(model):
        reply["usage"] = openai_usage(model, per_choice_tokens(body, model) * billed_choices(body))
    return reply


def openai_completion_stream(body: dict, n: int, model: str) -> list[str]:
    """SSE payloads of a streamed text completion, ending with `[DONE]`."""
    with_usage = _include_usage(body) and not _no_usage(model)

    def chunk(choices: list[dict], usage: Any = None) -> str:
        obj = {
            "id": f"cmpl-mock{n}",
            "object": "text_completion",
            "created": CREATED,
            "model": model,
            "choices": choices,
        }
        if with_usage:
            obj["usage"] = usage
        return _dumps(obj)

    events = [chunk([{"text": p, "index": 0, "logprobs": None, "finish_reason": None}]) for p in TEXT_PIECES]
    events.append(chunk([{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}]))
    if with_usage:
        events.append(chunk([], openai_usage(model, per_choice_tokens(body, model) * billed_choices(body))))
    events.append("[DONE]")
    return events


def openai_embeddings(body: dict, model: str) -> dict:
    """An embeddings list: 8 floats per input (base64 float32 if `encoding_format` asks)."""
    items = _embedding_inputs(body.get("input", ""))
    as_b64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector = _embedding(_dumps(item) if not isinstance(item, str) else item)
        value: Any = vector
        if as_b64:
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": value})
    tokens = sum(_token_count(item) for item in items)
    reply: dict = {"object": "list", "data": data, "model": model}
    if not _no_usage(model):
        reply["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return reply


def openai_models() -> dict:
    """The `GET /v1/models` list."""
    return {
        "object": "list",
        "data": [{"id": mid, "object": "model", "created": CREATED, "owned_by": "system"} for mid in MODEL_IDS],
    }


def anthropic_display_name(model: str) -> str:
    """The ``display_name`` the mock's Anthropic listing gives ``model`` (not its id, so a test can tell)."""
    return f"Mock {model.upper()}"


# Anthropic lists dated snapshots; a client may name one by its alias (`claude-sonnet-4-5`).
ANTHROPIC_SNAPSHOTS = ("claude-sonnet-4-5-20250514", "claude-sonnet-4-5-20250929")
ANTHROPIC_CREATED_AT = "2023-11-15T22:13:20Z"  # a day after CREATED, so a test tells the listings' dates apart


def anthropic_models() -> dict:
    """The `GET /v1/models` list as Anthropic's Models API answers it (one page holding every model)."""
    ids = [*MODEL_IDS, *ANTHROPIC_SNAPSHOTS]
    data = [
        {"type": "model", "id": mid, "display_name": anthropic_display_name(mid), "created_at": ANTHROPIC_CREATED_AT}
        for mid in ids
    ]
    return {"data": data, "has_more": False, "first_id": ids[0], "last_id": ids[-1]}


# --------------------------------------------------------------------------- OpenAI media (audio, images, moderations)
# Billing as OpenAI reports it: whisper-1 by duration (`usage: {"type": "duration", "seconds": N}`: a PCM
# WAV's own, read by the standard library's `wave`, else one second per AUDIO_BYTES_PER_S bytes of the
# upload), gpt-4o(-mini)-transcribe and gpt-image-1 by tokens,
# speech and dall-e without usage. Speech answers SPEECH_BYTES of audio derived from the input.

AUDIO_BYTES_PER_S = 1000
SPEECH_BYTES = 200_000
TRANSCRIBE_USAGE = {
    "type": "tokens",
    "input_tokens": 14,
    "input_token_details": {"text_tokens": 4, "audio_tokens": 10},
    "output_tokens": COMPLETION_TOKENS,
    "total_tokens": 14 + COMPLETION_TOKENS,
}
IMAGE_USAGE = {
    "total_tokens": 50 + 4160,
    "input_tokens": 50,
    "output_tokens": 4160,
    "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
}
# gpt-image-1.5 (and gpt-image-2) bill the text they write apart from their image: their usage splits
# its output tokens (``output_tokens_details``), here IMAGE_USAGE's image tokens and these text ones.
IMAGE_TEXT_OUTPUT_TOKENS = 180
SPLIT_OUTPUT_IMAGE_MODELS = ("gpt-image-1.5", "gpt-image-2")


def image_usage(model: str) -> dict:
    """An images answer's ``usage``: IMAGE_USAGE, its output split for a model that bills text apart."""
    if not model.startswith(SPLIT_OUTPUT_IMAGE_MODELS):
        return IMAGE_USAGE
    images, text = IMAGE_USAGE["output_tokens"], IMAGE_TEXT_OUTPUT_TOKENS
    return {
        **IMAGE_USAGE,
        "total_tokens": IMAGE_USAGE["input_tokens"] + images + text,
        "output_tokens": images + text,
        "output_tokens_details": {"image_tokens": images, "text_tokens": text},
    }


SPEECH_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63f8cfc0f01f0005000201ffa1f3d6a70000000049454e44ae426082"
    )
).decode()


def multipart_form(req: Recorded) -> tuple[dict[str, Any], list[tuple[str, str, bytes]]]:
    """(text fields, [(field, filename, bytes)]) of a multipart/form-data request, parsed with the
    standard library's email parser (independent of the code under test)."""
    import email.parser
    import email.policy

    head = f"Content-Type: {req.headers.get('content-type', '')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + req.body)
    fields: dict[str, Any] = {}
    files: list[tuple[str, str, bytes]] = []
    if not message.is_multipart():
        return fields, files
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files.append((str(name), filename, payload))
        elif str(name) in fields:
            previous = fields[str(name)]
            fields[str(name)] = [*(previous if isinstance(previous, list) else [previous]), payload.decode()]
        else:
            fields[str(name)] = payload.decode()
    return fields, files


def _form_route(build: Callable[[Call, dict, list], Reply]) -> Route:
    """A multipart route: a 400 without a file, magic error models and scripted errors as usual."""

    def route(call: Call, scripted: Reply | None) -> Reply:
        if not call.req.headers.get("content-type", "").startswith("multipart/form-data"):
            return openai_error(400, "Expected multipart/form-data (mock).")
        fields, files = multipart_form(call.req)
        if not files:
            return openai_error(400, "A file is required (mock).")
        model = str(fields.get("model") or "")
        if scripted is not None and scripted.status >= 400:
            return openai_error(scripted.status)
        return _magic_error(model, openai_error) or build(call, fields, files)

    return route


def audio_seconds(files: list[tuple[str, str, bytes]]) -> int:
    return max(1, sum(_file_seconds(data) for _, _, data in files))


def _file_seconds(data: bytes) -> int:
    """A PCM WAV's decoded duration (whole seconds, rounded up), else its bytes / AUDIO_BYTES_PER_S."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            return -(-wav.getnframes() // wav.getframerate())
    except (wave.Error, EOFError, ValueError, ZeroDivisionError):
        return len(data) // AUDIO_BYTES_PER_S


def _transcript(call: Call, fields: dict, files: list, translate: bool = False) -> Reply:
    model = str(fields.get("model") or "")
    tokens = model.startswith("gpt-")
    usage = TRANSCRIBE_USAGE if tokens else {"type": "duration", "seconds": audio_seconds(files)}
    if fields.get("stream") == "true" and tokens and not translate:
        events = [_dumps({"type": "transcript.text.delta", "delta": piece}) for piece in TEXT_PIECES]
        events.append(_dumps({"type": "transcript.text.done", "text": TEXT, "usage": usage}))
        return Reply(sse=events)
    form = fields.get("response_format") or "json"
    if form in ("text", "srt", "vtt"):
        text = {"text": TEXT + "\n", "srt": f"1\n00:00:00,000 --> 00:00:01,000\n{TEXT}\n", "vtt": f"WEBVTT\n\n{TEXT}\n"}
        return Reply(body=text[form].encode(), headers={"content-type": f"text/{'plain' if form != 'vtt' else 'vtt'}"})
    answer: dict[str, Any] = {"text": TEXT}
    if form == "verbose_json":
        answer = {
            "task": "translate" if translate else "transcribe",
            "language": "english",
            "duration": audio_seconds(files),
            "text": TEXT,
            "segments": [],
        }
    if not translate:
        answer["usage"] = usage
    return Reply(json=answer)


def _speech(call: Call, model: str) -> Reply:
    text = str(call.body.get("input") or "")
    form = str(call.body.get("response_format") or "mp3")
    audio = (hashlib.sha256(text.encode()).digest() * (SPEECH_BYTES // 32 + 1))[:SPEECH_BYTES]
    return Reply(body=audio, headers={"content-type": SPEECH_TYPES.get(form, "audio/mpeg")})


def openai_images(model: str, n: int, response_format: str | None) -> dict:
    """An images answer: n images, URLs unless b64_json is asked for (gpt-image-1: always b64, with usage)."""
    b64 = model.startswith("gpt-image") or response_format == "b64_json"
    item = {"b64_json": PNG_1PX} if b64 else {"url": "https://mock.invalid/image.png"}
    answer: dict[str, Any] = {"created": CREATED, "data": [dict(item) for _ in range(n)]}
    if model.startswith("dall-e-3"):
        for entry in answer["data"]:
            entry["revised_prompt"] = "A mock image"
    if model.startswith("gpt-image"):
        answer["usage"] = image_usage(model)
    return answer


def _images(call: Call, model: str) -> Reply:
    n = _lenient_int(call.body.get("n")) or 1
    if call.body.get("stream") is True and model.startswith("gpt-image"):
        return Reply(sse=image_stream(model, n, call.body))
    return Reply(json=openai_images(model or "dall-e-2", n, call.body.get("response_format")))


# What a streamed image's events say it is, as OpenAI's do: the request's setting, else what
# ``auto`` (or none) drew here.
IMAGE_SETTINGS = {
    "size": ("1024x1024", "1024x1536", "1536x1024"),
    "quality": ("high", "low", "medium"),
    "background": ("opaque", "transparent"),
    "output_format": ("png", "webp", "jpeg"),
}


def image_stream(model: str, n: int, asked: dict, kind: str = "image_generation") -> list[str]:
    """A streamed images answer (``stream: true``, gpt-image models) in OpenAI's wire format
    (its OpenAPI spec's ``ImageGenStreamEvent``; ``ImageEditStreamEvent`` with ``kind``
    ``image_edit``): for each of the ``n`` images its ``partial_images`` partial images
    (``{kind}.partial_image``: ``b64_json``, ``partial_image_index``), then its ``{kind}.completed``
    event with that image's ``usage`` (its output and each partial image's 100 tokens). Every event
    names the image's size, quality, background and output format. No ``data`` list, no ``[DONE]``.
    ``asked``: the request's fields (a form's as text)."""
    partials = _lenient_int(asked.get("partial_images")) or 0
    usage = image_usage(model)
    extra = {"output_tokens": usage["output_tokens"] + 100 * partials}
    if "output_tokens_details" in usage:
        details = usage["output_tokens_details"]
        extra["output_tokens_details"] = {**details, "image_tokens": details["image_tokens"] + 100 * partials}
    usage = {**usage, **extra, "total_tokens": usage["input_tokens"] + extra["output_tokens"]}
    said = {name: asked.get(name) if asked.get(name) in known else known[0] for name, known in IMAGE_SETTINGS.items()}
    events = []
    for _ in range(n):
        for index in range(partials):
            partial = {"type": f"{kind}.partial_image", "b64_json": PNG_1PX, "created_at": CREATED, **said}
            events.append(f"event: {kind}.partial_image\ndata: {_dumps({**partial, 'partial_image_index': index})}")
        done = {"type": f"{kind}.completed", "b64_json": PNG_1PX, "created_at": CREATED, **said, "usage": usage}
        events.append(f"event: {kind}.completed\ndata: {_dumps(done)}")
    return events


def _image_form(call: Call, fields: dict, files: list) -> Reply:
    n = _lenient_int(fields.get("n")) or 1
    model = str(fields.get("model") or "dall-e-2")
    if fields.get("stream") == "true" and model.startswith("gpt-image") and call.req.path.endswith("/images/edits"):
        return Reply(sse=image_stream(model, n, fields, "image_edit"))
    return Reply(json=openai_images(model, n, fields.get("response_format")))


JSON_EDIT_MODEL = "gpt-image-1.5"  # what OpenAI edits with when a JSON edit names no model
JSON_EDIT_IMAGES = 16  # the most ``images`` a JSON edit may reference


def _image_edit(call: Call, scripted: Reply | None) -> Reply:
    """``POST /v1/images/edits``: the multipart form, or OpenAI's JSON edit (its OpenAPI spec's
    ``EditImageBodyJsonParam``): ``images``, 1 to 16 references, and an optional ``mask``, each
    ``{"image_url": …}`` (a URL or a data URL) or ``{"file_id": …}``; GPT image models only."""
    if call.req.headers.get("content-type", "").startswith("application/json"):
        return _api_route(_json_edit)(call, scripted)
    return _form_route(_image_form)(call, scripted)


def _json_edit(call: Call, model: str) -> Reply:
    """A JSON edit answered as OpenAI answers it (a malformed one: its 400; a file it does not hold: its 404)."""
    body, model = call.body, model or JSON_EDIT_MODEL
    if not model.startswith("gpt-image"):
        return openai_error(400, f"JSON image edits take GPT image models; {model} takes a multipart form (mock).")
    images = body.get("images")
    if not isinstance(images, list) or not 1 <= len(images) <= JSON_EDIT_IMAGES:
        return openai_error(400, f"Invalid 'images': expected an array of 1 to {JSON_EDIT_IMAGES} references (mock).")
    for ref in [*images, *([body["mask"]] if "mask" in body else [])]:
        if not (isinstance(ref, dict) and len(ref) == 1 and set(ref) <= {"image_url", "file_id"}):
            return openai_error(400, "An image reference is {'image_url': …} or {'file_id': …} (mock).")
        if not isinstance(ref.get("image_url", ref.get("file_id")), str):
            return openai_error(400, "An image reference's value must be a string (mock).")
        if "file_id" in ref and ref["file_id"] not in FILES.files:
            return openai_error(404, f"No such File object: {ref['file_id']}")
    n = _lenient_int(body.get("n")) or 1
    if body.get("stream") is True:
        return Reply(sse=image_stream(model, n, body, "image_edit"))
    return Reply(json=openai_images(model, n, body.get("response_format")))


def _moderations(call: Call, model: str) -> Reply:
    given = call.body.get("input")
    inputs = given if isinstance(given, list) else [given]
    categories = ("harassment", "hate", "self-harm", "sexual", "violence")
    result = {
        "flagged": False,
        "categories": {c: False for c in categories},
        "category_scores": {c: 0.0001 for c in categories},
        "category_applied_input_types": {c: ["text"] for c in categories},
    }
    return Reply(
        json={
            "id": f"modr-mock-{call.n}",
            "model": model or "omni-moderation-latest",
            "results": [result for _ in inputs],
        }
    )


# --------------------------------------------------------------------------- Anthropic


def anthropic_usage(model: str, output_tokens: int = COMPLETION_TOKENS) -> dict:
    """Usage; `cached` in the model moves 8 of the 12 input tokens to cache reads,
    `cache-write` moves them to cache creation (input + cache read + creation stays 12)."""
    cache_read = CACHED_TOKENS if _has_flag(model, "cached") else 0
    cache_write = CACHED_TOKENS if _has_flag(model, "cache-write") else 0
    return {
        "input_tokens": PROMPT_TOKENS - cache_read - cache_write,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "output_tokens": output_tokens,
    }


def _answered_tool(body: dict) -> bool:
    """The last user message carries a tool result: the model answers in text now. A paused turn sent
    back to be continued ends with the assistant's part of it, after the user message that counts."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    if pauses_sent_back(body):
        messages = messages[:-1]
    content = messages[-1].get("content") if messages else None
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


# `websearch` in a Claude model's name, with a web search tool in the request: Claude searches
# twice (server_tool_use, web_search_tool_result) and cites what it found, as Anthropic answers.
SEARCH_QUERIES = ["weather in Paris", "Paris forecast tomorrow"]
SEARCH_RESULTS = [
    {
        "type": "web_search_result",
        "url": "https://weather.example.com/paris",
        "title": "Paris weather",
        "encrypted_content": "EqgfCioIARgBIiQ3YTAwMjY1Mi1mZjM5LTQ1NGUtODgxNC1kNjNjNTk1ZWI3YjYSDMockEncryptedPage",
        "page_age": "December 5, 2026",
    },
    {
        "type": "web_search_result",
        "url": "https://news.example.org/forecast",
        "title": "Forecast: rain",
        "encrypted_content": "EpMCCioIARgBIiQ0ZDk3ZTQ1Yi1jNjQ2LTRkMTItOTk3Zi1mNWRlYmYwMmMockEncryptedPage",
        "page_age": None,
    },
]
SEARCH_TEXTS = ["Let me search.", "Here it is: ", "Paris is sunny today.", " It will rain tomorrow.", " Enjoy."]


def _cite(result: dict, cited: str) -> dict:
    return {
        "type": "web_search_result_location",
        "url": result["url"],
        "title": result["title"],
        "encrypted_index": "Eo8BCioIAhgBIiQyYjQ0OWJmZi1lNmMockIndex",
        "cited_text": cited,
    }


def _searching(body: dict, model: str) -> bool:
    tools = body.get("tools") or []
    has_tool = any(isinstance(t, dict) and str(t.get("type", "")).startswith("web_search_") for t in tools)
    return _has_flag(model, "websearch") and has_tool


def anthropic_search_content() -> list[dict]:
    content: list[dict] = [{"type": "text", "text": SEARCH_TEXTS[0]}]
    for i, (query, result) in enumerate(zip(SEARCH_QUERIES, SEARCH_RESULTS)):
        ident = f"srvtoolu_mock{i + 1}"
        content.append({"type": "server_tool_use", "id": ident, "name": "web_search", "input": {"query": query}})
        content.append({"type": "web_search_tool_result", "tool_use_id": ident, "content": [result]})
    content.append({"type": "text", "text": SEARCH_TEXTS[1]})
    for text, result in zip(SEARCH_TEXTS[2:4], SEARCH_RESULTS):
        content.append({"type": "text", "text": text, "citations": [_cite(result, text.strip())]})
    content.append({"type": "text", "text": SEARCH_TEXTS[4]})
    return content


# `pauseN` in a searching Claude model's name: its server-side loop hits its limit N times, as
# Anthropic's does on a long turn — each answer searches once and ends `stop_reason: pause_turn`;
# the request that continues it is the same request with the paused content sent back unchanged as
# the last (assistant) turn (each pause's content after the last's), and the turn finishes after N.
PAUSES = re.compile(r"pause(\d+)")
PAUSED_INPUT_TOKENS = 100  # input tokens each paused answer sent back adds to the next call's


def paused_content(k: int) -> list[dict]:
    """What the turn's ``k``-th paused answer holds (1-based): a search, its result, cited text."""
    ident, result = f"srvtoolu_pause{k}", SEARCH_RESULTS[(k - 1) % len(SEARCH_RESULTS)]
    cited = f"Found part {k}."
    return [
        {"type": "text", "text": f"Searching, part {k}."},
        {"type": "server_tool_use", "id": ident, "name": "web_search", "input": {"query": f"Paris weather, part {k}"}},
        {"type": "web_search_tool_result", "tool_use_id": ident, "content": [result]},
        {"type": "text", "text": cited, "citations": [_cite(result, cited)]},
    ]


def pauses_sent_back(body: dict) -> int:
    """How many paused answers the request sends back: the ``srvtoolu_pause`` searches of its last
    message, when that is the assistant's."""
    messages = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    content = last.get("content") if last.get("role") == "assistant" else None
    blocks = content if isinstance(content, list) else []
    return sum(1 for b in blocks if isinstance(b, dict) and str(b.get("id", "")).startswith("srvtoolu_pause"))


def anthropic_pause_refusal(body: dict) -> Reply | None:
    """Anthropic's 400 for a paused turn not sent back as it came: the last (assistant) message
    must end with every paused answer's content, unchanged and in order (each answer's thinking
    block, with thinking on, between them)."""
    k = pauses_sent_back(body)
    if not k:
        return None
    messages = body["messages"]
    content = [b for b in messages[-1]["content"] if not (isinstance(b, dict) and b.get("type") == "thinking")]
    expected = [block for i in range(1, k + 1) for block in paused_content(i)]
    if content[-len(expected) :] != expected:
        return anthropic_error(
            400, f"messages.{len(messages) - 1}: the paused turn must be sent back as it was returned"
        )
    return None


def _paused(body: dict, model: str) -> int | None:
    """The paused answer this request gets (its number), or None when the turn goes on to its end."""
    match = PAUSES.search(model)
    if not match or not _searching(body, model):
        return None
    k = pauses_sent_back(body) + 1
    return k if k <= int(match.group(1)) else None


def _search_usage(body: dict, model: str, content: list[dict]) -> dict:
    """A searching answer's usage: its searches counted, and the input the paused answers sent back add."""
    usage = anthropic_usage(model, per_choice_tokens(body, model))
    usage["input_tokens"] += PAUSED_INPUT_TOKENS * pauses_sent_back(body)
    searched = sum(1 for b in content if b.get("type") == "web_search_tool_result")
    usage["server_tool_use"] = {"web_search_requests": searched}
    return usage


def _anthropic_content(body: dict, model: str = "") -> tuple[list[dict], str]:
    if _code_execution(body):
        return code_execution_content(body), "end_turn"
    k = _paused(body, model)
    if k is not None:
        return paused_content(k), "pause_turn"
    if _searching(body, model):
        content = anthropic_search_content()
        tool = _first_anthropic_tool(body)
        if tool and not _answered_tool(body):
            content.append({"type": "tool_use", "id": "toolu_mock1", "name": tool, "input": dict(TOOL_ARGS)})
            return content, "tool_use"
        return content, "end_turn"
    config = body.get("output_config")
    if isinstance(config, dict) and isinstance(config.get("format"), dict):  # structured outputs: JSON text
        return [{"type": "text", "text": _dumps(TOOL_ARGS)}], "end_turn"
    tool = _first_anthropic_tool(body)
    if tool and not _answered_tool(body):
        return [{"type": "tool_use", "id": "toolu_mock1", "name": tool, "input": dict(TOOL_ARGS)}], "tool_use"
    return [{"type": "text", "text": TEXT}], "end_turn"


def _thinking_on(body: dict) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def _has_tool_result(message: Any) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def anthropic_thinking_refusal(body: dict) -> Reply | None:
    """Anthropic's 400 for a tool loop sent back without its thinking: with thinking on, the
    assistant turn that called the tools (the first assistant message after the last user
    message that is not tool results) must start with a thinking or redacted_thinking block."""
    messages = body.get("messages")
    if not _thinking_on(body) or not isinstance(messages, list) or not messages or not _has_tool_result(messages[-1]):
        return None
    first = None
    for i in range(len(messages) - 2, -1, -1):
        msg = messages[i]
        if not isinstance(msg, dict):
            continue
        if msg.get("role") == "user" and not _has_tool_result(msg):
            break
        if msg.get("role") == "assistant":
            first = i
    if first is None:
        return None
    content = messages[first].get("content")
    head = content[0] if isinstance(content, list) and content else {"type": "text"}
    kind = head.get("type") if isinstance(head, dict) else "text"
    if kind in ("thinking", "redacted_thinking"):
        if kind == "thinking" and not (isinstance(head.get("signature"), str) and head["signature"]):
            return anthropic_error(400, f"messages.{first}.content.0.thinking.signature: Field required")
        return None
    return anthropic_error(
        400,
        f"messages.{first}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{kind}`. "
        "When `thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding "
        "the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks "
        "from previous turns. To avoid this requirement, disable `thinking`. Please consult our documentation "
        "at https://docs.claude.com/en/docs/build-with-claude/extended-thinking",
    )


# Anthropic's message threads (beta ``message-threads-2026-08-12``; the anthropic SDK's tool runner uses them
# by default): a request with ``thread`` ``{"type": "create"}`` has its conversation kept under its reply's id; one
# with ``{"type": "continue", "previous_message_id": …}`` sends only the new messages (no ``system``, no ``tools``)
# and is answered over the kept conversation. The SDK reads ``error.details.error_code`` to recover.
MESSAGE_THREADS_BETA = "message-threads-2026-08-12"
THREAD_CREATE_ONLY = ("system", "tools")
THREAD_UNSUPPORTED = ("cache_control", "context_management")  # top-level fields Threads do not take (and thinking)


def thread_error(status: int, error_code: str, message: str, **details: Any) -> Reply:
    """Anthropic's rejection of a thread request: its error with ``details.error_code``."""
    reply = anthropic_error(status, message)
    reply.json["error"]["details"] = {"error_code": error_code, **details}
    return reply


class MessageThreads:
    """The conversations Anthropic keeps for message threads, by the id of the reply that ended them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, dict] = {}  # reply id → the body that conversation is, its reply appended
        self._continued: set[str] = set()

    def expand(self, req: Recorded) -> Recorded | Reply:
        """The request as the model sees it (a continue over its kept conversation, no ``thread``), or the refusal."""
        body = req.json
        thread = body.get("thread") if isinstance(body, dict) else None
        if thread is None or not req.path.rstrip("/").endswith("/v1/messages"):
            return req
        if MESSAGE_THREADS_BETA not in req.headers.get("anthropic-beta", ""):
            return anthropic_error(400, f"thread: requires the anthropic-beta header {MESSAGE_THREADS_BETA}")
        unsupported = [f for f in THREAD_UNSUPPORTED if body.get(f) is not None] + ["thinking"] * _thinking_on(body)
        if unsupported:
            return thread_error(
                400, "thread_unsupported_request", "thread: not supported with this request", unsupported=unsupported
            )
        rest = {k: v for k, v in body.items() if k != "thread"}
        kind = thread.get("type") if isinstance(thread, dict) else None
        if kind == "create":
            return replace(req, json=rest)
        if kind != "continue":
            return anthropic_error(400, "thread.type: Input should be 'create' or 'continue'")
        repeated = [f for f in THREAD_CREATE_ONLY if f in body]
        if repeated:
            return anthropic_error(400, f"{repeated[0]}: leave it out of a thread's continue request")
        previous = thread.get("previous_message_id")
        with self._lock:
            kept = self._kept.get(previous)
            continued = previous in self._continued
        if continued:
            return thread_error(400, "thread_already_continued", f"thread {previous} was continued already")
        if kept is None:
            return thread_error(404, "thread_not_found", f"no thread for previous_message_id {previous}")
        return replace(req, json={**kept, **rest, "messages": kept["messages"] + list(rest["messages"])})

    def keep(self, req: Recorded, asked: Recorded, n: int) -> None:
        """After a default 200 answer to a thread request: its conversation and reply, kept under the reply's id."""
        thread = req.json.get("thread") if isinstance(req.json, dict) else None
        if not isinstance(thread, dict):
            return
        body = asked.json
        reply = anthropic_message(body, n, str(body.get("model")))
        kept = {k: body[k] for k in ("system", "tools") if k in body}
        kept["messages"] = [*body["messages"], {"role": "assistant", "content": reply["content"]}]
        with self._lock:
            if thread.get("type") == "continue":
                self._continued.add(thread.get("previous_message_id"))
            self._kept[reply["id"]] = kept


# Server-side compaction (``context_management.edits`` of type ``compact_…``): the summary is a sampling
# step of its own, which Anthropic bills but leaves out of the top-level usage: only ``usage.iterations``
# (its ``compaction`` entry beside the ``message`` one) counts it.
COMPACTION_USAGE = {"type": "compaction", "input_tokens": 180_000, "output_tokens": 3_500}


def _claude_compacting(body: dict) -> bool:
    """The request turns on Claude's server-side compaction."""
    manage = body.get("context_management")
    edits = manage.get("edits") if isinstance(manage, dict) else None
    return any(isinstance(e, dict) and str(e.get("type", "")).startswith("compact_") for e in edits or [])


def anthropic_message(body: dict, n: int, model: str) -> dict:
    """A non-streamed Messages API reply (with thinking on, a signed thinking block first)."""
    content, stop = _anthropic_content(body, model)
    if _thinking_on(body):
        content = [{"type": "thinking", "thinking": THINKING_TEXT, "signature": THINKING_SIGNATURE}, *content]
    reply = {
        "id": f"msg_mock{n}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
    }
    if _code_execution(body):
        reply["container"] = code_execution_container(body)
    if not _no_usage(model):
        reply["usage"] = anthropic_usage(model, per_choice_tokens(body, model))
        if _searching(body, model):
            reply["usage"] = _search_usage(body, model, content)
        if _claude_compacting(body):
            reply["content"] = [{"type": "compaction", "content": "Summary of the conversation."}, *content]
            reply["usage"]["iterations"] = [COMPACTION_USAGE, {"type": "message", **reply["usage"]}]
    return reply


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {_dumps(data)}\n\n"


def _block_events(index: int, block: dict) -> list[str]:
    """One content block as Anthropic streams it: text in deltas (citations before the text in
    odd blocks, after it in even ones), a tool's input as JSON deltas, a search result whole."""
    kind = block["type"]
    if kind == "text":
        start: dict = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": block["text"]}]
        cites = [{"type": "citations_delta", "citation": c} for c in block.get("citations") or []]
        deltas = cites + deltas if index % 2 else deltas + cites  # both orders: Anthropic keeps none
    elif kind in ("server_tool_use", "tool_use"):
        start = {**block, "input": {}}
        raw = _dumps(block["input"])
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in ("", raw[:7], raw[7:])]
    else:
        start, deltas = block, []
    return [
        _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}),
        *(_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas),
        _event("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


def anthropic_search_stream(body: dict, n: int, model: str) -> list[str]:
    """The web search answer streamed; the searches' count arrives in message_delta's usage."""
    content, stop = _anthropic_content(body, model)
    message = {"id": f"msg_mock{n}", "type": "message", "role": "assistant", "model": model, "content": []}
    whole = _search_usage(body, model, content)
    message.update({"stop_reason": None, "stop_sequence": None, "usage": {**whole, "output_tokens": 1}})
    message["usage"].pop("server_tool_use")
    usage = {"output_tokens": whole["output_tokens"], "server_tool_use": whole["server_tool_use"]}
    events = [_event("message_start", {"type": "message_start", "message": message})]
    for index, block in enumerate(content):
        events += _block_events(index, block)
    delta = {"stop_reason": stop, "stop_sequence": None}
    events.append(_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
    return events + [_event("message_stop", {"type": "message_stop"})]


def anthropic_blocks_stream(content: list[dict], n: int, model: str, container: dict | None = None) -> list[str]:
    """An answer of these blocks streamed, each as Anthropic streams it (a server tool's result whole);
    the container the code ran in arrives in ``message_delta``'s delta, where the SDKs read it."""
    message = {"id": f"msg_mock{n}", "type": "message", "role": "assistant", "model": model, "content": []}
    message.update({"stop_reason": None, "stop_sequence": None, "usage": anthropic_usage(model, output_tokens=1)})
    events = [_event("message_start", {"type": "message_start", "message": message})]
    for index, block in enumerate(content):
        events += _block_events(index, block)
    delta = {"stop_reason": "end_turn", "stop_sequence": None, **({"container": container} if container else {})}
    usage = {"output_tokens": COMPLETION_TOKENS}
    events.append(_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
    return events + [_event("message_stop", {"type": "message_stop"})]


def anthropic_stream(body: dict, n: int, model: str) -> list[str]:
    """The full Messages SSE event sequence, `message_start` … `message_stop`."""
    if _searching(body, model):
        return anthropic_search_stream(body, n, model)
    content, stop = _anthropic_content(body)
    block = content[0]
    message = {
        "id": f"msg_mock{n}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    delta_usage: dict = {}
    if not _no_usage(model):
        message["usage"] = anthropic_usage(model, output_tokens=1)
        delta_usage = {"usage": {"output_tokens": per_choice_tokens(body, model)}}
    if block["type"] == "text":
        start = {"type": "text", "text": ""}
        pieces = TEXT_PIECES if block["text"] == TEXT else [block["text"][:5], block["text"][5:]]  # JSON too
        deltas = [{"type": "text_delta", "text": p} for p in pieces]
    else:
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in [""] + TOOL_ARG_PIECES]
    events = [_event("message_start", {"type": "message_start", "message": message})]
    index = 0
    if _thinking_on(body):  # a thinking block first, its signature just before it stops (as Anthropic streams it)
        thinking = {"type": "thinking", "thinking": "", "signature": ""}
        events.append(
            _event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": thinking})
        )
        for d in (
            {"type": "thinking_delta", "thinking": THINKING_TEXT},
            {"type": "signature_delta", "signature": THINKING_SIGNATURE},
        ):
            events.append(_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d}))
        events.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        index = 1
    events += [
        _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}),
        _event("ping", {"type": "ping"}),
    ]
    events += [
        _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas
    ]
    events.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        _event(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, **delta_usage},
        )
    )
    events.append(_event("message_stop", {"type": "message_stop"}))
    return events


# --------------------------------------------------------------------------- OpenAI Responses API


def responses_usage(model: str, output_tokens: int = COMPLETION_TOKENS) -> dict:
    """Responses usage; `cached` / `reasoning` in the model fill the details (like chat usage)."""
    cached = CACHED_TOKENS if _has_flag(model, "cached") else 0
    reasoning = REASONING_TOKENS if _has_flag(model, "reasoning") else 0
    return {
        "input_tokens": PROMPT_TOKENS,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": PROMPT_TOKENS + output_tokens,
    }


# The hosted image_generation tool (Responses API): its image (base64 PNG, larger than a trace's
# 256 KB capture, as a real 1024x1024 PNG is), its partial images, and what OpenAI bills for them in
# ``tool_usage.image_gen`` (gpt-image-1, medium quality, 1024x1024: 1,056 image output tokens; each
# partial image 100 more), apart from the mainline model's ``usage``.
IMAGE_B64 = "iVBORw0KGgoAAAANSUhEUgAABAAAAAQACAIAAADwf7zU" + "A" * 400_000
PARTIAL_IMAGE_B64 = "iVBORw0KGgoAAAANSUhEUgAAAQAAAAEACAIAAADTED8x" + "B" * 60_000
IMAGE_GEN_INPUT_TOKENS, IMAGE_GEN_OUTPUT_TOKENS, PARTIAL_IMAGE_TOKENS = 48, 1056, 100


def image_tool(body: dict) -> dict | None:
    """The request's ``image_generation`` tool, if it has one."""
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") == "image_generation":
            return tool
    return None


def partial_images(body: dict) -> int:
    """The image tool's ``partial_images`` (0 to 3; 0 when absent)."""
    tool = image_tool(body) or {}
    value = tool.get("partial_images")
    return value if type(value) is int and 0 <= value <= 3 else 0


def image_gen_usage(body: dict) -> dict:
    """``tool_usage.image_gen`` of a response that made one image, as OpenAI reports it (a tool
    naming gpt-image-1.5 or 2: IMAGE_TEXT_OUTPUT_TOKENS of text output besides the image's)."""
    images = IMAGE_GEN_OUTPUT_TOKENS + PARTIAL_IMAGE_TOKENS * partial_images(body)
    model = (image_tool(body) or {}).get("model")
    text = IMAGE_TEXT_OUTPUT_TOKENS if isinstance(model, str) and model.startswith(SPLIT_OUTPUT_IMAGE_MODELS) else 0
    return {
        "input_tokens": IMAGE_GEN_INPUT_TOKENS,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": IMAGE_GEN_INPUT_TOKENS},
        "output_tokens": images + text,
        "output_tokens_details": {"image_tokens": images, "text_tokens": text},
        "total_tokens": IMAGE_GEN_INPUT_TOKENS + images + text,
    }


def _responses_items(body: dict) -> list[dict]:
    value = body.get("input")
    return value if isinstance(value, list) else []


def _compacting(body: dict) -> bool:
    """The input ends with ``{"type": "compaction_trigger"}`` (Codex CLI's remote compaction): OpenAI
    answers the one compaction item, no text and no tool call."""
    items = _responses_items(body)
    return bool(items) and isinstance(items[-1], dict) and items[-1].get("type") == "compaction_trigger"


# OpenAI's hosted search tools: a request offering one (a ``web_search*`` or ``file_search`` tool)
# is answered with as many calls as its ``metadata`` asks (``mock_web_searches`` /
# ``mock_file_searches``, digits as metadata values are text; none when absent), before its message.
# OpenAI bills each call per call; its ``usage`` counts none of them.
SEARCH_TOOLS = {"web_search_call": ("web_search",), "file_search_call": ("file_search",)}
SEARCH_ASKED = {"web_search_call": "mock_web_searches", "file_search_call": "mock_file_searches"}


def search_calls(body: dict, n: int) -> list[dict]:
    """The search tools' call items a response shows (see ``SEARCH_TOOLS``)."""
    kinds = [t.get("type", "") for t in body.get("tools") or [] if isinstance(t, dict)]
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    calls: list[dict] = []
    for item_type, prefixes in SEARCH_TOOLS.items():
        asked = str(metadata.get(SEARCH_ASKED[item_type], "0"))
        if not any(str(kind).startswith(prefixes) for kind in kinds) or not asked.isdigit():
            continue
        for k in range(int(asked)):
            ident = f"{'ws' if item_type == 'web_search_call' else 'fs'}_mock{n}_{k}"
            call: dict = {"id": ident, "type": item_type, "status": "completed"}
            if item_type == "web_search_call":
                call["action"] = {"type": "search", "query": "cats"}
            else:
                call.update(queries=["cats"], results=None)
            calls.append(call)
    return calls


def _responses_output(body: dict, n: int, ran: tuple[dict, dict] | None = None) -> list[dict]:
    """A function call when tools are given and no tool output came back yet; else a message
    (the JSON `{"city": "Paris"}` when `text.format` asks for a json_schema); the compaction item
    when the input ends with a compaction trigger. ``ran``: the code interpreter's call item and the
    citation of the file it wrote (``run_code``), before the message that cites it."""
    if _compacting(body):
        return [{"type": "compaction", "id": f"cmp_mock{n}", "encrypted_content": COMPACTED}]
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    answered = any(isinstance(i, dict) and i.get("type") == "function_call_output" for i in _responses_items(body))
    if tools and not answered:
        return [
            {
                "type": "function_call",
                "id": f"fc_mock{n}",
                "call_id": f"call_mock{n}",
                "name": tools[0].get("name") or "tool",
                "arguments": _dumps(TOOL_ARGS),
                "status": "completed",
            }
        ]
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    text = _dumps(TOOL_ARGS) if isinstance(fmt, dict) and fmt.get("type") == "json_schema" else TEXT
    drawn = search_calls(body, n)  # it searches first
    if image_tool(body) is not None:  # the model draws first, then says something about it
        drawn.append(
            {
                "id": f"ig_mock{n}",
                "type": "image_generation_call",
                "status": "completed",
                "background": "opaque",
                "output_format": "png",
                "quality": "medium",
                "size": "1024x1024",
                "result": IMAGE_B64,
                "revised_prompt": "A cat, drawn",
            }
        )
    annotations = []
    if ran is not None:  # the code ran first; the answer cites the file it wrote
        drawn.append(ran[0])
        annotations.append(ran[1])
    return drawn + [
        {
            "type": "message",
            "id": f"msg_mock{n}",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": annotations, "logprobs": []}],
        }
    ]


def responses_object(
    body: dict, n: int, model: str, status: str = "completed", output: list[dict] | None = None
) -> dict:
    """A `response` object as the Responses API returns it (with ``tool_usage`` once an image was made)."""
    done = status == "completed"
    drew = any(item.get("type") == "image_generation_call" for item in output or [])
    extra = {"tool_usage": {"image_gen": image_gen_usage(body), "web_search": {"num_requests": 0}}} if drew else {}
    return {
        "id": f"resp_mock{n}",
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": output if output is not None else [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": 1.0,
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": responses_usage(model, per_choice_tokens(body, model)) if done and not _no_usage(model) else None,
        "user": None,
        "metadata": body.get("metadata") or {},
        **extra,
    }


def _head(item: dict) -> dict:
    """An image_generation_call item as ``output_item.added`` shows it: before its image."""
    return {"id": item["id"], "type": item["type"]}


def responses_stream(body: dict, n: int, model: str, ran: tuple[dict, dict] | None = None) -> list[str]:
    """The full Responses event sequence: created, in_progress, the items' events, completed."""
    seq = itertools.count()
    events: list[str] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append(_event(kind, {"type": kind, "sequence_number": next(seq), **fields}))

    emit("response.created", response=responses_object(body, n, model, "in_progress"))
    emit("response.in_progress", response=responses_object(body, n, model, "in_progress"))
    output = _responses_output(body, n, ran)
    for index, item in enumerate(output):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            emit(
                "response.output_item.added", output_index=index, item={**item, "status": "in_progress", "content": []}
            )
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            emit("response.content_part.added", item_id=item["id"], output_index=index, content_index=0, part=part)
            pieces = TEXT_PIECES if text == TEXT else [text]
            for piece in pieces:
                emit(
                    "response.output_text.delta",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                )
            emit(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            )
            for k, annotation in enumerate(item["content"][0]["annotations"]):
                emit(
                    "response.output_text.annotation.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    annotation_index=k,
                    annotation=annotation,
                )
            emit(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=item["content"][0],
            )
        elif item["type"] == "image_generation_call":  # partial images while it draws, the image at its done
            emit("response.output_item.added", output_index=index, item={**_head(item), "status": "in_progress"})
            emit("response.image_generation_call.in_progress", item_id=item["id"], output_index=index)
            emit("response.image_generation_call.generating", item_id=item["id"], output_index=index)
            for k in range(partial_images(body)):
                emit(
                    "response.image_generation_call.partial_image",
                    item_id=item["id"],
                    output_index=index,
                    partial_image_index=k,
                    partial_image_b64=PARTIAL_IMAGE_B64,
                )
            emit("response.image_generation_call.completed", item_id=item["id"], output_index=index)
        elif item["type"] == "code_interpreter_call":  # its code streamed, then run
            emit("response.output_item.added", output_index=index, item={**item, "status": "in_progress", "code": ""})
            emit("response.code_interpreter_call.in_progress", item_id=item["id"], output_index=index)
            code = item["code"]
            emit("response.code_interpreter_call_code.delta", item_id=item["id"], output_index=index, delta=code)
            emit("response.code_interpreter_call_code.done", item_id=item["id"], output_index=index, code=code)
            emit("response.code_interpreter_call.interpreting", item_id=item["id"], output_index=index)
            emit("response.code_interpreter_call.completed", item_id=item["id"], output_index=index)
        elif item["type"] in SEARCH_TOOLS:  # a search: in progress, searching, completed
            emit("response.output_item.added", output_index=index, item={**item, "status": "in_progress"})
            step = item["type"].removesuffix("_call")
            for phase in ("in_progress", "searching", "completed"):
                emit(f"response.{step}_call.{phase}", item_id=item["id"], output_index=index)
        elif item["type"] == "shell_call":  # its commands ran in its environment's container
            emit("response.output_item.added", output_index=index, item={**item, "status": "in_progress"})
        elif item["type"] == "compaction":  # its token is known at the end: added empty, then compacting
            emit("response.output_item.added", output_index=index, item={**item, "encrypted_content": ""})
            emit("response.compaction.compacting", item_id=item["id"], output_index=index)
        else:
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            for piece in TOOL_ARG_PIECES:
                emit("response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=piece)
            emit(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            )
        emit("response.output_item.done", output_index=index, item=item)
    emit("response.completed", response=responses_object(body, n, model, "completed", output))
    return events


class ResponsesState:
    """What the mock Responses API keeps: stored responses and their input items."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.responses: dict[str, tuple[dict, list[dict]]] = {}
        self.background: dict[str, dict] = {}  # a background response's id → the request that made it

    def keep(self, body: dict, response: dict) -> None:
        if body.get("store") is False:
            return
        value = body.get("input")
        items = (
            [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
            if isinstance(value, str)
            else list(value or [])
        )
        items = [{"id": f"in_{i}", **item} if isinstance(item, dict) else item for i, item in enumerate(items)]
        with self.lock:
            self.responses[response["id"]] = (response, items)


RESPONSES_STATE = ResponsesState()
RESPONSE_PATH = re.compile(r"^/v1/responses/(resp_[A-Za-z0-9]+)(/cancel|/input_items)?$")


def _responses(call: Call, model: str) -> Reply:
    body = call.body
    previous = body.get("previous_response_id")
    if previous and previous not in RESPONSES_STATE.responses:
        return openai_error(404, f"Previous response with id '{previous}' not found.")
    ran = run_code(body, call.n) if code_interpreter(body) is not None or shell_tool(body) is not None else None
    if isinstance(ran, Reply):  # the container named does not exist
        return ran
    if body.get("stream") is True:
        events = responses_stream(body, call.n, model, ran)
        RESPONSES_STATE.keep(body, jsonlib.loads(events[-1].split("data: ", 1)[1])["response"])
        return Reply(sse=events)
    if body.get("background") is True:  # queued now; each retrieve moves it on (``_background_look``)
        response = {**responses_object(body, call.n, model, "queued"), "background": True}
        RESPONSES_STATE.keep(body, response)
        with RESPONSES_STATE.lock:
            RESPONSES_STATE.background[response["id"]] = body
        return Reply(json=response)
    response = responses_object(body, call.n, model, "completed", _responses_output(body, call.n, ran))
    RESPONSES_STATE.keep(body, response)
    return Reply(json=response)


def _input_tokens(call: Call, model: str) -> Reply:
    return Reply(json={"object": "response.input_tokens", "input_tokens": PROMPT_TOKENS})


COMPACTED = "gAAAAABmockCompactedConversation=="  # the opaque compaction item OpenAI makes


def _compact(call: Call, model: str) -> Reply:
    """`responses.compact`: the input's user messages, then one compaction item, and the usage."""
    previous = call.body.get("previous_response_id")
    if previous and previous not in RESPONSES_STATE.responses:
        return openai_error(404, f"Previous response with id '{previous}' not found.")
    said = [i.get("content") for i in _responses_items(call.body) if isinstance(i, dict) and i.get("role") == "user"]
    users = [
        {
            "type": "message",
            "id": f"msg_mockc{i}",
            "role": "user",
            "status": "completed",
            "content": content if isinstance(content, list) else [{"type": "input_text", "text": str(content)}],
        }
        for i, content in enumerate(said)
    ]
    item = {"type": "compaction", "id": f"cmp_mock{call.n}", "encrypted_content": COMPACTED}
    return Reply(
        json={
            "id": f"resp_mockc{call.n}",
            "object": "response.compaction",
            "created_at": CREATED,
            "output": [*users, item],
            "usage": responses_usage(model),
        }
    )


BACKGROUND_CANCEL_OUTPUT = 7  # output tokens a background response cancelled before its end had made


def project_tier(body: dict) -> str:
    """The tier an OpenAI project's default serves ``auto`` (or no tier) at: ``default``, or what the
    request's ``metadata.mock_project_tier`` says (a project that defaults to ``priority``)."""
    metadata = body.get("metadata")
    return str(metadata.get("mock_project_tier", "default")) if isinstance(metadata, dict) else "default"


def _background_look(call: Call, response_id: str, action: str | None) -> Reply:
    """A background response, as OpenAI runs one: ``queued`` when made, ``in_progress`` at the first
    retrieve, ``completed`` with its usage at the next (and after); ``?stream=true`` streams it to its
    end (``response.completed``); a cancel before its end answers it ``cancelled`` with the usage it
    made so far (``BACKGROUND_CANCEL_OUTPUT`` output tokens), after its end as it ended."""
    with RESPONSES_STATE.lock:
        body = RESPONSES_STATE.background[response_id]
        response, items = RESPONSES_STATE.responses[response_id]
        model, n = response["model"], int(response_id.removeprefix("resp_mock") or 0)
        status = response["status"]
        if action == "/cancel":
            if status not in ("completed", "cancelled"):
                usage = responses_usage(model, BACKGROUND_CANCEL_OUTPUT)
                response = {**responses_object(body, n, model, "cancelled"), "usage": usage}
        elif call.req.query.get("stream") == "true" or status == "in_progress":
            output = _responses_output(body, n)
            response = responses_object(body, n, model, "completed", output)
        elif status == "queued":
            response = responses_object(body, n, model, "in_progress")
        tier = body.get("service_tier") if body.get("service_tier") not in (None, "auto") else project_tier(body)
        response = {**response, "id": response_id, "background": True, "service_tier": tier}  # the tier that served it
        RESPONSES_STATE.responses[response_id] = (response, items)
    if call.req.query.get("stream") == "true" and not action:
        return Reply(sse=background_replay(body, n, response, call.req.query.get("starting_after")))
    return Reply(json=response)


def background_replay(body: dict, n: int, response: dict, starting_after: str | None) -> list[str]:
    """A background response's stream as OpenAI replays it (``GET …?stream=true``): every event from
    ``response.created`` (sequence 0), or those after ``starting_after``; its response objects the
    stored one's (id, ``background``, tier), ``response.completed`` carrying it whole."""
    after = int(starting_after) if starting_after is not None else -1
    names = {k: response[k] for k in ("id", "background", "service_tier")}
    events = []
    for block in responses_stream(body, n, response["model"]):
        kind, data = block.split("\n", 1)[0].removeprefix("event: "), jsonlib.loads(block.split("data: ", 1)[1])
        if data["sequence_number"] <= after:
            continue
        if "response" in data:
            data["response"] = response if kind == "response.completed" else {**data["response"], **names}
        events.append(_event(kind, data))
    return events


def _stored_response(call: Call, scripted: Reply | None) -> Reply:
    """GET/DELETE /v1/responses/{id}, POST …/cancel, GET …/input_items."""
    if scripted is not None and scripted.status >= 400:
        return openai_error(scripted.status)
    response_id, action = RESPONSE_PATH.match(call.req.path).groups()
    with RESPONSES_STATE.lock:
        found = RESPONSES_STATE.responses.get(response_id)
        if found is not None and call.req.method == "DELETE" and not action:
            del RESPONSES_STATE.responses[response_id]
    if found is None:
        return openai_error(404, f"No response found with id '{response_id}'.")
    response, items = found
    if call.req.method == "DELETE":
        return Reply(json={"id": response_id, "object": "response", "deleted": True})
    if response_id in RESPONSES_STATE.background and action != "/input_items":
        return _background_look(call, response_id, action)
    if action == "/cancel":
        return openai_error(400, "Cannot cancel a synchronous response.")
    if action == "/input_items":
        data = list(reversed(items))
        return Reply(
            json={
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": False,
            }
        )
    return Reply(json=response)


# --------------------------------------------------------------------------- OpenAI files and batches


class FilesState:
    """What the mock Files and Batch APIs keep: file objects with their bytes, and batches.

    A batch moves on when it is retrieved (as time passes at a real provider): one GET takes
    it from ``in_progress`` to ``completed`` — its output file is then made, one line per
    request with a chat or embeddings answer and its usage (requests for a magic error model
    go to the error file) — and from ``cancelling`` to ``cancelled``. Lists never move it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files: dict[str, dict] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.clock = itertools.count(1)

    def add_file(self, filename: str, purpose: str, data: bytes) -> dict:
        """Keep a file (caller holds the lock); its object as OpenAI returns it."""
        tick = next(self.clock)
        file_id = f"file-mock{tick:06d}{hashlib.sha256(data).hexdigest()[:8]}"
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": CREATED + tick,
            "expires_at": None,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        self.files[file_id], self.contents[file_id] = obj, data
        return obj


FILES = FilesState()
FILES_PATH = re.compile(r"^/v1/(files|batches)(?:/([A-Za-z0-9_.-]+)(/content|/cancel)?)?$")
IMAGE_BATCH_ENDPOINTS = ("/v1/images/generations", "/v1/images/edits")  # answered as the Images API answers
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses", *IMAGE_BATCH_ENDPOINTS)


# Objects deleted, by id: where a list's cursor naming one stood (a provider pages on from a deleted
# object's place as its lists order them: what the SDKs ask of a client deleting each object it lists).
GONE: dict[str, dict] = {}


def gone(obj: dict) -> None:
    """Remember a deleted object's place in its list (``GONE``)."""
    GONE[obj["id"]] = dict(obj)


def _page(items: list[dict], query: dict[str, str], default_limit: int) -> dict:
    """A cursor page as OpenAI lists answer: ``after`` an id (a deleted one too: the objects past
    where it stood, by ``created_at`` in the order asked), ``limit``, ``has_more``."""
    after = query.get("after")
    if after:
        ids = [item["id"] for item in items]
        if after in ids:
            items = items[ids.index(after) + 1 :]
        elif after in GONE:
            stood, asc = GONE[after]["created_at"], query.get("order") == "asc"
            items = [item for item in items if (item["created_at"] > stood if asc else item["created_at"] < stood)]
        else:
            items = []
    limit = int(query.get("limit") or default_limit)
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }


def batch_output(batch: dict, data: bytes) -> tuple[list[str], list[str]]:
    """The output and error lines of a batch over the JSONL input ``data``."""
    out, errors = [], []
    for i, raw in enumerate(line for line in data.splitlines() if line.strip()):
        request = jsonlib.loads(raw)
        body = request.get("body") or {}
        model = str(body.get("model") or "")
        line: dict[str, Any] = {"id": f"batch_req_mock{i}", "custom_id": request.get("custom_id")}
        status = _error_status(model)
        if status:
            line["response"] = {
                "status_code": status,
                "request_id": f"req_mock_b{i}",
                "body": openai_error(status).json,
            }
            line["error"] = None
            errors.append(_dumps(line))
            continue
        if batch["endpoint"] == "/v1/responses":
            answer = responses_object(body, i, model, "completed", _responses_output(body, i))
        elif batch["endpoint"] in IMAGE_BATCH_ENDPOINTS:  # an images answer: no model in it, as OpenAI's
            answer = openai_images(model, _lenient_int(body.get("n")) or 1, body.get("response_format"))
        else:
            answer = (
                openai_embeddings(body, model) if batch["endpoint"] == "/v1/embeddings" else openai_chat(body, i, model)
            )
        line["response"] = {"status_code": 200, "request_id": f"req_mock_b{i}", "body": answer}
        line["error"] = None
        out.append(_dumps(line))
    return out, errors


def _batch_model(data: bytes) -> str | None:
    """The model a batch runs (its first line's, as OpenAI's batch object says it: one model a batch)."""
    for raw in data.splitlines():
        try:
            body = jsonlib.loads(raw).get("body") or {}
        except (ValueError, AttributeError):
            continue
        return body.get("model") if isinstance(body, dict) else None
    return None


def _advance(batch: dict) -> None:
    """One step of a batch's life (caller holds the lock), on a retrieve."""
    now = CREATED + next(FILES.clock)
    if batch["status"] == "cancelling":
        batch.update(status="cancelled", cancelled_at=now)
    elif batch["status"] in ("validating", "in_progress"):
        out, errors = batch_output(batch, FILES.contents.get(batch["input_file_id"], b""))
        for kind, lines in (("output", out), ("error", errors)):
            if lines:
                data = ("\n".join(lines) + "\n").encode()
                batch[f"{kind}_file_id"] = FILES.add_file(f"{batch['id']}_{kind}.jsonl", "batch_output", data)["id"]
        batch.update(
            status="completed",
            finalizing_at=now,
            completed_at=now,
            request_counts={"total": len(out) + len(errors), "completed": len(out), "failed": len(errors)},
        )


class UploadsState:
    """What the mock Uploads API keeps: each Upload's object and the Parts added to it (id -> bytes)."""

    def __init__(self) -> None:
        self.uploads: dict[str, dict] = {}
        self.parts: dict[str, dict[str, bytes]] = {}  # upload id -> part id -> bytes


UPLOADS = UploadsState()
UPLOADS_PATH = re.compile(
    r"^(?:/v1|/openai)/uploads(?:/([A-Za-z0-9_-]+)(/parts|/complete|/cancel))?$"
)  # Azure's under /openai


def _uploads(call: Call, scripted: Reply | None) -> Reply:
    """POST /v1/uploads, POST /v1/uploads/{id}/parts (multipart ``data``), …/complete (``part_ids`` in
    order, optional ``md5``: the File is made of the parts), …/cancel — OpenAI's shapes; Azure's the
    same under ``/openai/uploads…``, with an ``api-version``."""
    if scripted is not None and scripted.status >= 400:
        return openai_error(scripted.status)
    req = call.req
    if req.method != "POST":
        return not_found(req.method, req.path)
    if req.path.startswith("/openai/") and not req.query.get("api-version"):
        return azure_error(404, "Resource not found")
    upload_id, action = UPLOADS_PATH.match(req.path).groups()
    with FILES.lock:
        if upload_id is None:
            return _upload_create(call.body)
        upload = UPLOADS.uploads.get(upload_id)
        if upload is None:
            return openai_error(404, f"Upload with id '{upload_id}' not found.")
        if upload["status"] != "pending":
            return openai_error(400, f"Upload {upload_id} is already {upload['status']}.")
        if action == "/cancel":
            upload["status"] = "cancelled"
            return Reply(json=upload)
        if action == "/parts":
            return _upload_part(req, upload_id)
        return _upload_complete(call.body, upload)


def _upload_create(body: dict) -> Reply:
    names = ("bytes", "filename", "mime_type", "purpose")
    if any(body.get(name) in (None, "") for name in names) or not isinstance(body.get("bytes"), int):
        return openai_error(400, "Missing required parameter: 'bytes', 'filename', 'mime_type' and 'purpose'.")
    tick = next(FILES.clock)
    upload = {
        "id": f"upload_mock{tick:06d}",
        "object": "upload",
        "bytes": body["bytes"],
        "created_at": CREATED + tick,
        "expires_at": CREATED + tick + 3600,
        "filename": body["filename"],
        "purpose": body["purpose"],
        "status": "pending",
        "file": None,
    }
    UPLOADS.uploads[upload["id"]], UPLOADS.parts[upload["id"]] = upload, {}
    return Reply(json=upload)


def _upload_part(req: Recorded, upload_id: str) -> Reply:
    _, files = multipart_form(req)
    data = [payload for name, _, payload in files if name == "data"]
    if len(data) != 1:
        return openai_error(400, "Missing required parameter: 'data'.")
    tick = next(FILES.clock)
    part_id = f"part_mock{tick:06d}"
    UPLOADS.parts[upload_id][part_id] = data[0]
    return Reply(json={"id": part_id, "object": "upload.part", "created_at": CREATED + tick, "upload_id": upload_id})


def _upload_complete(body: dict, upload: dict) -> Reply:
    part_ids, held = body.get("part_ids"), UPLOADS.parts[upload["id"]]
    if not isinstance(part_ids, list) or not part_ids:
        return openai_error(400, "Missing required parameter: 'part_ids'.")
    unknown = [p for p in part_ids if p not in held]
    if unknown:
        return openai_error(400, f"Part {unknown[0]} is not a part of upload {upload['id']}.")
    data = b"".join(held[p] for p in part_ids)
    if len(data) != upload["bytes"]:
        return openai_error(400, f"Upload has {len(data)} bytes, expected {upload['bytes']}.")
    md5 = body.get("md5")
    if md5 and md5 != hashlib.md5(data).hexdigest():
        return openai_error(400, "The md5 checksum does not match the uploaded bytes.")
    upload.update(status="completed", file=FILES.add_file(upload["filename"], upload["purpose"], data))
    return Reply(json=upload)


def _files_and_batches(call: Call, scripted: Reply | None) -> Reply:
    """POST/GET /v1/files, GET/DELETE /v1/files/{id}, GET …/content; POST/GET /v1/batches,
    GET /v1/batches/{id}, POST …/cancel."""
    if scripted is not None and scripted.status >= 400:
        return openai_error(scripted.status)
    req = call.req
    collection, object_id, action = FILES_PATH.match(req.path).groups()
    with FILES.lock:
        if collection == "files":
            return _files(req, object_id, action)
        return _batches(call, object_id, action)


def _files_or_anthropic_files(call: Call, scripted: Reply | None) -> Reply:
    """/v1/files…: Anthropic's Files API for an Anthropic client's call, else OpenAI's files and batches."""
    if is_anthropic(call.req) and call.req.path.startswith("/v1/files"):
        return _anthropic_files(call, scripted)
    return _files_and_batches(call, scripted)


def _files(req: Recorded, file_id: str | None, action: str | None) -> Reply:
    if file_id is None and req.method == "POST":
        fields, files = multipart_form(req)
        uploaded = [(filename, data) for name, filename, data in files if name == "file"]
        if len(uploaded) != 1 or not isinstance(fields.get("purpose"), str):
            return openai_error(400, "Missing required parameter: 'file' and 'purpose' are required.")
        filename, data = uploaded[0]
        return Reply(json=FILES.add_file(filename or "upload", fields["purpose"], data))
    if file_id is None:
        items = sorted(FILES.files.values(), key=lambda f: f["created_at"], reverse=req.query.get("order") != "asc")
        purpose = req.query.get("purpose")
        return Reply(json=_page([f for f in items if not purpose or f["purpose"] == purpose], req.query, 10000))
    if file_id not in FILES.files:
        return openai_error(404, f"No such File object: {file_id}")
    if action == "/content":
        return Reply(body=FILES.contents[file_id], headers={"content-type": "application/octet-stream"})
    if req.method == "DELETE":
        gone(FILES.files[file_id])
        del FILES.files[file_id], FILES.contents[file_id]
        return Reply(json={"id": file_id, "object": "file", "deleted": True})
    return Reply(json=FILES.files[file_id])


def _batches(call: Call, batch_id: str | None, action: str | None) -> Reply:
    req = call.req
    if batch_id is None and req.method == "POST":
        body = call.body
        if body.get("input_file_id") not in FILES.files:
            return openai_error(404, f"No such File object: {body.get('input_file_id')}")
        if body.get("endpoint") not in BATCH_ENDPOINTS or body.get("completion_window") != "24h":
            return openai_error(400, "Invalid 'endpoint' or 'completion_window'.")
        now = CREATED + next(FILES.clock)
        batch = {
            "id": f"batch_mock{now:010d}",
            "object": "batch",
            "endpoint": body["endpoint"],
            "model": _batch_model(FILES.contents[body["input_file_id"]]),
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": "24h",
            "status": "in_progress",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": now,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        FILES.batches[batch["id"]] = batch
        return Reply(json=batch)
    if batch_id is None:
        items = sorted(FILES.batches.values(), key=lambda b: b["created_at"], reverse=True)
        return Reply(json=_page(items, req.query, 20))
    batch = FILES.batches.get(batch_id)
    if batch is None:
        return openai_error(404, f"No batch found with id '{batch_id}'.")
    if action == "/cancel":
        if batch["status"] not in ("validating", "in_progress"):
            return openai_error(400, f"Cannot cancel a batch with status '{batch['status']}'.")
        batch.update(status="cancelling", cancelling_at=CREATED + next(FILES.clock))
    else:
        _advance(batch)
    return Reply(json=dict(batch))


# --------------------------------------------------------------------------- OpenAI containers


class ContainersState:
    """What the mock Containers API keeps: containers, and each one's files with their bytes.

    The code interpreter tool of ``/v1/responses`` runs in one (a new one when the tool says
    ``auto``) and leaves a file there (``CHART``), which the answer's text cites."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.containers: dict[str, dict] = {}
        self.files: dict[str, dict[str, tuple[dict, bytes]]] = {}  # container id -> file id -> (object, bytes)
        self.clock = itertools.count(1)

    def add(self, name: str, file_ids: list[str], memory_limit: str = "1g", minutes: int = 20) -> dict:
        """A new container (caller holds the lock), with copies of the Files API files named."""
        tick = next(self.clock)
        container = {
            "id": f"cntr_mock{tick:06d}",
            "object": "container",
            "created_at": CREATED + tick,
            "status": "running",
            "expires_after": {"anchor": "last_active_at", "minutes": minutes},
            "last_active_at": CREATED + tick,
            "memory_limit": memory_limit,
            "name": name,
        }
        self.containers[container["id"]], self.files[container["id"]] = container, {}
        for file_id in file_ids:
            with FILES.lock:
                obj, data = FILES.files[file_id], FILES.contents[file_id]
            self.add_file(container["id"], obj["filename"], data, "user")
        return container

    def add_file(self, container_id: str, filename: str, data: bytes, source: str) -> dict:
        """A file in a container (caller holds the lock): its ``container.file`` object."""
        tick = next(self.clock)
        obj = {
            "id": f"cfile_mock{tick:06d}{hashlib.sha256(data).hexdigest()[:8]}",
            "object": "container.file",
            "bytes": len(data),
            "container_id": container_id,
            "created_at": CREATED + tick,
            "path": f"/mnt/data/{filename}",
            "source": source,
        }
        self.files[container_id][obj["id"]] = (obj, data)
        return obj


CONTAINERS = ContainersState()
CONTAINERS_PATH = re.compile(r"^/v1/containers(?:/([A-Za-z0-9_-]+)(?:(/files)(?:/([A-Za-z0-9_-]+)(/content)?)?)?)?$")
CHART = ("chart.csv", b"x,y\n1,2\n2,4\n")  # what the mock's code interpreter writes (name, bytes)


def container_not_found(container_id: str) -> Reply:
    return openai_error(404, f"Container with id '{container_id}' not found.")


def _containers(call: Call, scripted: Reply | None) -> Reply:
    """POST/GET /v1/containers, GET/DELETE …/{id}; POST/GET …/{id}/files, GET/DELETE
    …/files/{file_id}, GET …/files/{file_id}/content."""
    if scripted is not None and scripted.status >= 400:
        return openai_error(scripted.status)
    req = call.req
    container_id, files, file_id, content = CONTAINERS_PATH.match(req.path).groups()
    with CONTAINERS.lock:
        if container_id is None and req.method == "POST":
            body = call.body
            name, file_ids = body.get("name"), body.get("file_ids") or []
            if not isinstance(name, str):
                return openai_error(400, "Missing required parameter: 'name'.")
            missing = [f for f in file_ids if f not in FILES.files]
            if missing:
                return openai_error(404, f"No such File object: {missing[0]}")
            minutes = (body.get("expires_after") or {}).get("minutes", 20)
            return Reply(json=CONTAINERS.add(name, file_ids, body.get("memory_limit") or "1g", minutes))
        if container_id is None and req.method == "GET":
            asc = req.query.get("order") == "asc"
            items = sorted(CONTAINERS.containers.values(), key=lambda c: c["created_at"], reverse=not asc)
            name = req.query.get("name")
            return Reply(json=_page([c for c in items if not name or c["name"] == name], req.query, 20))
        if container_id not in CONTAINERS.containers:
            return container_not_found(container_id)
        if not files:
            if req.method == "DELETE":
                gone(CONTAINERS.containers[container_id])
                del CONTAINERS.containers[container_id], CONTAINERS.files[container_id]
                return Reply(json={"id": container_id, "object": "container.deleted", "deleted": True})
            return Reply(json=CONTAINERS.containers[container_id])
        held = CONTAINERS.files[container_id]
        if file_id is None and req.method == "POST":
            return _container_file_create(call, container_id)
        if file_id is None:
            asc = req.query.get("order") == "asc"
            items = sorted((obj for obj, _ in held.values()), key=lambda f: f["created_at"], reverse=not asc)
            return Reply(json=_page(items, req.query, 20))
        if file_id not in held:
            return openai_error(404, f"Container file with id '{file_id}' not found.")
        if content:
            return Reply(body=held[file_id][1], headers={"content-type": "application/octet-stream"})
        if req.method == "DELETE":
            del held[file_id]
            return Reply(json={"id": file_id, "object": "container.file.deleted", "deleted": True})
        return Reply(json=held[file_id][0])


def _container_file_create(call: Call, container_id: str) -> Reply:
    """A file into a container (caller holds the lock): a multipart ``file``, or ``{"file_id": …}``."""
    req = call.req
    if req.headers.get("content-type", "").startswith("multipart/form-data"):
        _, files = multipart_form(req)
        uploaded = [(filename, data) for name, filename, data in files if name == "file"]
        if len(uploaded) != 1:
            return openai_error(400, "Missing required parameter: 'file'.")
        filename, data = uploaded[0]
        return Reply(json=CONTAINERS.add_file(container_id, filename or "upload", data, "user"))
    file_id = call.body.get("file_id")
    with FILES.lock:
        found = FILES.files.get(file_id) if isinstance(file_id, str) else None
        data = FILES.contents.get(file_id, b"") if found is not None else b""
    if found is None:
        return openai_error(404, f"No such File object: {file_id}")
    return Reply(json=CONTAINERS.add_file(container_id, found["filename"], data, "user"))


def code_interpreter(body: dict) -> dict | None:
    """The request's ``code_interpreter`` tool, if it has one."""
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") == "code_interpreter":
            return tool
    return None


def shell_tool(body: dict) -> dict | None:
    """The request's hosted ``shell`` tool (one that runs in a container), if it has one."""
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") == "shell" and isinstance(tool.get("environment"), dict):
            return tool
    return None


def run_code(body: dict, n: int) -> tuple[dict, dict] | Reply:
    """The code interpreter (or the hosted shell) at work: the container the tool names (a new one
    for ``auto`` / ``container_auto``) gets ``CHART``; (the ``code_interpreter_call`` item, or the
    ``shell_call`` item whose environment names the container, and the ``container_file_citation``
    of the file), or OpenAI's 404 for a container that does not exist."""
    shell = shell_tool(body) if code_interpreter(body) is None else None
    if shell is not None:
        environment = shell["environment"]
        named = environment.get("container_id")
        container = {"file_ids": environment.get("file_ids")} if environment.get("type") == "container_auto" else named
    else:
        container = (code_interpreter(body) or {}).get("container")
    with CONTAINERS.lock:
        if isinstance(container, dict):
            file_ids = container.get("file_ids") or []
            if any(f not in FILES.files for f in file_ids):
                return openai_error(404, f"No such File object: {[f for f in file_ids if f not in FILES.files][0]}")
            container_id = CONTAINERS.add(f"auto-{n}", file_ids, container.get("memory_limit") or "1g")["id"]
        elif isinstance(container, str) and container in CONTAINERS.containers:
            container_id = container
        else:
            return container_not_found(str(container))
        made = CONTAINERS.add_file(container_id, CHART[0], CHART[1], "assistant")
    if shell is not None:
        call = {
            "id": f"sh_mock{n}",
            "type": "shell_call",
            "call_id": f"call_sh_mock{n}",
            "action": {"commands": ["python3 make_chart.py"], "max_output_length": None, "timeout_ms": None},
            "status": "completed",
            "environment": {"type": "container_reference", "container_id": container_id},
        }
        return call, _citation(container_id, made)
    call = {
        "id": f"ci_mock{n}",
        "type": "code_interpreter_call",
        "status": "completed",
        "code": "import csv\nopen('/mnt/data/chart.csv', 'w').write('x,y\\n1,2\\n2,4\\n')",
        "container_id": container_id,
        "outputs": None,
    }
    return call, _citation(container_id, made)


def _citation(container_id: str, made: dict) -> dict:
    """The answer's citation of the file the code wrote."""
    return {
        "type": "container_file_citation",
        "container_id": container_id,
        "file_id": made["id"],
        "filename": CHART[0],
        "start_index": 0,
        "end_index": len(TEXT),
    }


# --------------------------------------------------------------------------- OpenAI vector stores


class VectorStoresState:
    """What the mock Vector Stores API keeps: stores, each one's files (Files API files, by their
    id, with attributes) and file batches. A file is ready at once; a batch is ``in_progress``
    until it is retrieved (then ``completed``) or cancelled. Search finds the files whose text
    holds the query's words."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stores: dict[str, dict] = {}
        self.files: dict[str, dict[str, dict]] = {}  # store id -> file id -> vector_store.file
        self.batches: dict[str, dict] = {}  # batch id -> vector_store.files_batch
        self.batch_files: dict[str, list[str]] = {}  # batch id -> its file ids
        self.clock = itertools.count(1)

    def add(self, name: str | None, file_ids: list[str], metadata: dict | None = None) -> dict:
        """A new store (caller holds the lock), with the Files API files named."""
        tick = next(self.clock)
        store = {
            "id": f"vs_mock{tick:06d}",
            "object": "vector_store",
            "created_at": CREATED + tick,
            "name": name or "",
            "usage_bytes": 0,
            "file_counts": {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": 0},
            "status": "completed",
            "expires_after": None,
            "expires_at": None,
            "last_active_at": CREATED + tick,
            "metadata": metadata or {},
        }
        self.stores[store["id"]], self.files[store["id"]] = store, {}
        for file_id in file_ids:
            self.add_file(store["id"], file_id, None)
        return store

    def add_file(self, store_id: str, file_id: str, attributes: dict | None) -> dict:
        """A Files API file into a store (caller holds the lock): its ``vector_store.file``."""
        with FILES.lock:
            size = len(FILES.contents.get(file_id, b""))
        obj = {
            "id": file_id,
            "object": "vector_store.file",
            "created_at": CREATED + next(self.clock),
            "usage_bytes": size,
            "vector_store_id": store_id,
            "status": "completed",
            "last_error": None,
            "attributes": attributes or {},
            "chunking_strategy": {
                "type": "static",
                "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400},
            },
        }
        self.files[store_id][file_id] = obj
        counts = self.stores[store_id]["file_counts"]
        counts["completed"] += 1
        counts["total"] += 1
        self.stores[store_id]["usage_bytes"] += size
        return obj

    def search(self, store_id: str, query: object) -> list[dict]:
        """The store's files whose text holds every word of the query, as search results."""
        words = " ".join(query if isinstance(query, list) else [str(query)]).lower().split()
        found = []
        for file_id, obj in self.files[store_id].items():
            with FILES.lock:
                text = FILES.contents.get(file_id, b"").decode("utf-8", "replace")
                filename = (FILES.files.get(file_id) or {}).get("filename", "")
            if all(w in text.lower() for w in words):
                content = [{"type": "text", "text": text}]
                found.append(
                    {
                        "file_id": file_id,
                        "filename": filename,
                        "score": 0.9,
                        "attributes": obj["attributes"],
                        "content": content,
                    }
                )
        return found


VECTOR_STORES = VectorStoresState()
VECTOR_STORES_PATH = re.compile(
    r"^/v1/vector_stores(?:/([A-Za-z0-9_-]+)(?:/(search)|/(files|file_batches)(?:/([A-Za-z0-9_-]+)(?:/(content|cancel|files))?)?)?)?$"
)


def vector_store_not_found(store_id: str) -> Reply:
    return openai_error(404, f"No vector store found with id '{store_id}'.")


def _vector_stores(call: Call, scripted: Reply | None) -> Reply:
    """POST/GET /v1/vector_stores, GET/POST/DELETE …/{id}, POST …/{id}/search; POST/GET …/{id}/files,
    GET/POST/DELETE …/files/{file_id}, GET …/content; POST …/{id}/file_batches, GET …/{batch_id},
    POST …/cancel, GET …/files."""
    if scripted is not None and scripted.status >= 400:
        return openai_error(scripted.status)
    req, body = call.req, call.body
    store_id, search, sub, sub_id, action = VECTOR_STORES_PATH.match(req.path).groups()
    state = VECTOR_STORES
    with state.lock:
        if store_id is None and req.method == "POST":
            file_ids = body.get("file_ids") or []
            missing = [f for f in file_ids if f not in FILES.files]
            if missing:
                return openai_error(404, f"No such File object: {missing[0]}")
            return Reply(json=state.add(body.get("name"), file_ids, body.get("metadata")))
        if store_id is None:
            items = sorted(
                state.stores.values(), key=lambda v: v["created_at"], reverse=req.query.get("order") != "asc"
            )
            return Reply(json=_page(items, req.query, 20))
        if store_id not in state.stores:
            return vector_store_not_found(store_id)
        store = state.stores[store_id]
        if search:
            results = state.search(store_id, body.get("query"))[: int(body.get("max_num_results") or 10)]
            query = body.get("query")
            page = {
                "object": "vector_store.search_results.page",
                "search_query": query if isinstance(query, list) else [query],
            }
            return Reply(json={**page, "data": results, "has_more": False, "next_page": None})
        if sub is None:
            if req.method == "DELETE":
                gone(state.stores[store_id])
                del state.stores[store_id], state.files[store_id]
                return Reply(json={"id": store_id, "object": "vector_store.deleted", "deleted": True})
            if req.method == "POST":
                store.update({k: body[k] for k in ("name", "metadata", "expires_after") if k in body})
            return Reply(json=store)
        held = state.files[store_id]
        if sub == "files":
            if sub_id is None and req.method == "POST":
                file_id = body.get("file_id")
                if file_id not in FILES.files:
                    return openai_error(404, f"No such File object: {file_id}")
                return Reply(json=state.add_file(store_id, file_id, body.get("attributes")))
            if sub_id is None:
                items = sorted(held.values(), key=lambda f: f["created_at"], reverse=req.query.get("order") != "asc")
                wanted = req.query.get("filter")
                return Reply(json=_page([f for f in items if not wanted or f["status"] == wanted], req.query, 20))
            if sub_id not in held:
                return openai_error(404, f"No file found with id '{sub_id}' in vector store '{store_id}'.")
            if action == "content":
                with FILES.lock:
                    text = FILES.contents.get(sub_id, b"").decode("utf-8", "replace")
                page = {"object": "vector_store.file_content.page", "data": [{"type": "text", "text": text}]}
                return Reply(json={**page, "has_more": False, "next_page": None})
            if req.method == "DELETE":
                del held[sub_id]
                return Reply(json={"id": sub_id, "object": "vector_store.file.deleted", "deleted": True})
            if req.method == "POST":
                held[sub_id]["attributes"] = body.get("attributes") or {}
            return Reply(json=held[sub_id])
        if sub_id is None:  # a new file batch
            file_ids = list(body.get("file_ids") or []) + [f["file_id"] for f in body.get("files") or []]
            missing = [f for f in file_ids if f not in FILES.files]
            if missing:
                return openai_error(404, f"No such File object: {missing[0]}")
            for file_id in file_ids:
                state.add_file(store_id, file_id, None)
            tick = next(state.clock)
            counts = {"in_progress": len(file_ids), "completed": 0, "failed": 0, "cancelled": 0, "total": len(file_ids)}
            batch = {
                "id": f"vsfb_mock{tick:06d}",
                "object": "vector_store.files_batch",
                "created_at": CREATED + tick,
                "vector_store_id": store_id,
                "status": "in_progress",
                "file_counts": counts,
            }
            state.batches[batch["id"]], state.batch_files[batch["id"]] = batch, file_ids
            return Reply(json=batch)
        batch = state.batches.get(sub_id)
        if batch is None or batch["vector_store_id"] != store_id:
            return openai_error(404, f"No file batch found with id '{sub_id}' in vector store '{store_id}'.")
        counts = batch["file_counts"]
        if action == "cancel":
            if batch["status"] != "in_progress":
                return openai_error(400, f"Cannot cancel a batch with status '{batch['status']}'.")
            batch["status"] = "cancelled"
            counts.update(cancelled=counts["in_progress"], in_progress=0)
        elif action == "files":
            items = [held[f] for f in state.batch_files[sub_id] if f in held]
            return Reply(json=_page(items, req.query, 20))
        elif batch["status"] == "in_progress":
            batch["status"] = "completed"
            counts.update(completed=counts["in_progress"], in_progress=0)
        return Reply(json=batch)


# --------------------------------------------------------------------------- OpenAI videos (Sora)


class VideosState:
    """What the mock Videos API keeps: video jobs and their assets' bytes.

    A job moves on one step at each retrieve of it, as a running job would between two polls:
    ``queued`` when made, ``in_progress`` at the first retrieve, then ``completed`` — or ``failed``
    (``moderation_blocked``) when its prompt holds ``VIDEO_FAIL``. A list shows the jobs as they are."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.videos: dict[str, dict] = {}
        self.clock = itertools.count(1)

    def add(self, prompt: str, model: str, seconds: str, size: str, source: str | None = None) -> dict:
        """A new queued job (caller holds the lock)."""
        tick = next(self.clock)
        video = {
            "id": f"video_mock{tick:06d}",
            "object": "video",
            "created_at": CREATED + tick,
            "completed_at": None,
            "expires_at": None,
            "error": None,
            "model": model,
            "progress": 0,
            "prompt": prompt,
            "remixed_from_video_id": source,
            "seconds": seconds,
            "size": size,
            "status": "queued",
        }
        self.videos[video["id"]] = video
        return video

    def advance(self, video: dict) -> None:
        """One step of a job's life (caller holds the lock), on a retrieve."""
        now = CREATED + next(self.clock)
        if video["status"] == "queued":
            video.update(status="in_progress", progress=50)
        elif video["status"] == "in_progress" and VIDEO_FAIL in (video["prompt"] or ""):
            blocked = {"code": "moderation_blocked", "message": "Your request was blocked by our moderation system."}
            video.update(status="failed", error=blocked)
        elif video["status"] == "in_progress":
            video.update(status="completed", progress=100, completed_at=now, expires_at=now + 86400)


VIDEOS = VideosState()
VIDEOS_PATH = re.compile(r"^/v1/videos(?:/([A-Za-z0-9_-]+)(/content|/remix)?)?$")
VIDEO_MODELS = {"sora-2": ("720x1280", "1280x720"), "sora-2-pro": ("720x1280", "1280x720", "1024x1792", "1792x1024")}
VIDEO_SECONDS = ("4", "8", "12")
VIDEO_FAIL = "[fail]"  # a prompt holding this fails at the provider (moderation)
VIDEO_BYTES = 3 * 1024 * 1024 + 17  # an MP4's size: bigger than any buffer a relay would hold
VIDEO_ASSETS = {"video": "video/mp4", "thumbnail": "image/webp", "spritesheet": "image/jpeg"}


def video_asset(video_id: str, variant: str) -> bytes:
    """The bytes of a completed video's asset: the same for the same video and variant."""
    seed = hashlib.sha256(f"{video_id}/{variant}".encode()).digest()
    size = VIDEO_BYTES if variant == "video" else 4096
    return (seed * (size // len(seed) + 1))[:size]


def video_not_found(video_id: str) -> Reply:
    return openai_error(404, f"Video with id '{video_id}' not found.")


def _video_terms(fields: dict) -> tuple[str, str, str] | Reply:
    """(model, seconds, size) of a create with OpenAI's defaults, or its 400."""
    model = fields.get("model") or "sora-2"
    seconds, size = str(fields.get("seconds") or "4"), fields.get("size") or "720x1280"
    base = re.sub(r"-\d{4}-\d{2}-\d{2}$", "", model) if isinstance(model, str) else None
    if base not in VIDEO_MODELS:
        return openai_error(400, f"Invalid value for 'model': {model!r}.")
    if seconds not in VIDEO_SECONDS:
        return openai_error(400, f"Invalid value for 'seconds': {seconds!r}; supported values are 4, 8 and 12.")
    if size not in VIDEO_MODELS[base]:
        return openai_error(400, f"Invalid value for 'size': {size!r} is not supported by {model}.")
    return model, seconds, size


def _videos(call: Call, scripted: Reply | None) -> Reply:
    """POST/GET /v1/videos, GET/DELETE …/{id}, GET …/{id}/content?variant=, POST …/{id}/remix."""
    if scripted is not None and scripted.status >= 400:
        return openai_error(scripted.status)
    req = call.req
    video_id, action = VIDEOS_PATH.match(req.path).groups()
    with VIDEOS.lock:
        if video_id is None and req.method == "POST":
            if req.headers.get("content-type", "").startswith("multipart/form-data"):
                fields, files = multipart_form(req)
                if any(name != "input_reference" for name, _, _ in files):
                    return openai_error(400, "Unexpected file field.")
            else:
                fields = call.body
            prompt = fields.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                return openai_error(400, "Missing required parameter: 'prompt'.")
            terms = _video_terms(fields)
            if isinstance(terms, Reply):
                return terms
            return Reply(json=dict(VIDEOS.add(prompt, *terms)))
        if video_id is None and req.method == "GET":
            asc = req.query.get("order") == "asc"
            items = sorted(VIDEOS.videos.values(), key=lambda v: v["created_at"], reverse=not asc)
            return Reply(json=_page([dict(v) for v in items], req.query, 20))
        video = VIDEOS.videos.get(video_id)
        if video is None:
            return video_not_found(video_id)
        if action == "/content":
            variant = req.query.get("variant") or "video"
            if variant not in VIDEO_ASSETS:
                return openai_error(400, f"Invalid value for 'variant': {variant!r}.")
            if video["status"] != "completed":
                return openai_error(400, f"Video '{video_id}' is not completed.")
            return Reply(body=video_asset(video_id, variant), headers={"content-type": VIDEO_ASSETS[variant]})
        if action == "/remix":
            prompt = call.body.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                return openai_error(400, "Missing required parameter: 'prompt'.")
            if video["status"] != "completed":
                return openai_error(400, f"Video '{video_id}' is not completed: only a completed video can be remixed.")
            made = VIDEOS.add(prompt, video["model"], video["seconds"], video["size"], source=video_id)
            return Reply(json=dict(made))
        if req.method == "DELETE":
            gone(VIDEOS.videos[video_id])
            del VIDEOS.videos[video_id]
            return Reply(json={"id": video_id, "object": "video.deleted", "deleted": True})
        VIDEOS.advance(video)
        return Reply(json=dict(video))


# --------------------------------------------------------------------------- Anthropic message batches


class MessageBatchesState:
    """What the mock Message Batches API keeps: each batch with its requests.

    Like the OpenAI batches, a batch moves on when it is retrieved: one GET takes it from
    ``in_progress`` to ``ended`` — every request then has a result: ``succeeded`` with the mock's
    Messages answer and its usage (a code execution request's naming the file its code wrote and
    its container, as a plain answer does), or ``errored`` for a magic error model (``claude-error-400``) —
    and from ``canceling`` to ``ended`` with every request ``canceled``. Lists never move it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: dict[str, dict] = {}
        self.requests: dict[str, list[dict]] = {}
        self.results: dict[str, list[str]] = {}
        self.clock = itertools.count(1)


MESSAGE_BATCHES = MessageBatchesState()
MESSAGE_BATCHES_PATH = re.compile(r"^/v1/messages/batches(?:/([A-Za-z0-9_-]+)(/cancel|/results)?)?$")


def _rfc3339(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".000000Z"


def message_batch_results(requests: list[dict], canceled: bool) -> tuple[list[str], dict]:
    """The result lines of a batch's requests, and its request counts."""
    lines, counts = [], {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    for i, request in enumerate(requests):
        params = request.get("params") or {}
        model = str(params.get("model") or "")
        status = _error_status(model)
        missing = anthropic_missing_container(params)
        if canceled:
            result: dict[str, Any] = {"type": "canceled"}
        elif status or missing is not None:
            result = {"type": "errored", "error": (missing or anthropic_error(status)).json}
        else:
            result = {"type": "succeeded", "message": anthropic_message(params, i, model)}
            if params.get("inference_geo") == "us" and "usage" in result["message"]:  # where it ran, as Claude says
                result["message"]["usage"]["inference_geo"] = "us"
            if params.get("speed") == "fast" and "usage" in result["message"]:  # the speed it ran at, as Claude says
                result["message"]["usage"]["speed"] = "fast"
        counts[result["type"]] += 1
        lines.append(_dumps({"custom_id": request.get("custom_id"), "result": result}))
    return lines, counts


def _message_batch_page(items: list[dict], query: dict[str, str]) -> dict:
    """A page as Anthropic's lists answer: newest first, ``after_id`` (older) or ``before_id`` (newer),
    either a deleted object's id too (``GONE``: the objects past where it stood)."""
    ids = [item["id"] for item in items]
    limit = int(query.get("limit") or 20)
    before, after = query.get("before_id"), query.get("after_id")
    if before in GONE and before not in ids:  # a deleted cursor: where it stood (ids sort by age)
        end = sum(1 for i in ids if i > before)
        page, more = items[max(0, end - limit) : end], end - limit > 0
    elif before:
        end = ids.index(before) if before in ids else 0
        page, more = items[max(0, end - limit) : end], end - limit > 0
    else:
        if after in GONE and after not in ids:
            start = sum(1 for i in ids if i > after)
        else:
            start = ids.index(after) + 1 if after in ids else (len(ids) if after else 0)
        page, more = items[start : start + limit], len(items) > start + limit
    return {
        "data": page,
        "has_more": more,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }


def _message_batches(call: Call, scripted: Reply | None) -> Reply:
    """POST/GET /v1/messages/batches, GET/DELETE …/{id}, POST …/cancel, GET …/results."""
    if scripted is not None and scripted.status >= 400:
        return anthropic_error(scripted.status)
    req = call.req
    batch_id, action = MESSAGE_BATCHES_PATH.match(req.path).groups()
    state = MESSAGE_BATCHES
    with state.lock:
        if batch_id is None and req.method == "POST":
            requests = call.body.get("requests")
            if not isinstance(requests, list) or not requests:
                return anthropic_error(400, "requests: List should have at least 1 item")
            tick = next(state.clock)
            now = CREATED + tick
            batch = {
                "id": f"msgbatch_mock{tick:06d}",
                "type": "message_batch",
                "processing_status": "in_progress",
                "request_counts": {
                    "processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0,
                },
                "ended_at": None,
                "created_at": _rfc3339(now),
                "expires_at": _rfc3339(now + 86400),
                "archived_at": None,
                "cancel_initiated_at": None,
                "results_url": None,
            }  # fmt: skip
            state.batches[batch["id"]], state.requests[batch["id"]] = batch, requests
            return Reply(json=batch)
        if batch_id is None:
            items = sorted(state.batches.values(), key=lambda b: b["id"], reverse=True)
            return Reply(json=_message_batch_page(items, req.query))
        batch = state.batches.get(batch_id)
        if batch is None:
            return anthropic_error(404, f"No message batch with id {batch_id} (mock)")
        if action == "/results":
            if batch["processing_status"] != "ended":
                return anthropic_error(400, f"Message batch {batch_id} has not ended yet (mock)")
            data = "".join(line + "\n" for line in state.results[batch_id]).encode()
            return Reply(body=data, headers={"content-type": "application/binary"})
        if req.method == "DELETE":
            if batch["processing_status"] != "ended":
                return anthropic_error(400, "Batches must be ended (or canceled) before they can be deleted (mock)")
            gone(state.batches[batch_id])
            del state.batches[batch_id], state.requests[batch_id]
            state.results.pop(batch_id, None)
            return Reply(json={"id": batch_id, "type": "message_batch_deleted"})
        if action == "/cancel":
            if batch["processing_status"] == "in_progress":
                batch.update(processing_status="canceling", cancel_initiated_at=_rfc3339(CREATED + next(state.clock)))
            return Reply(json=dict(batch))
        if batch["processing_status"] in ("in_progress", "canceling"):
            lines, counts = message_batch_results(state.requests[batch_id], batch["processing_status"] == "canceling")
            state.results[batch_id] = lines
            host = req.headers.get("host", "127.0.0.1")
            batch.update(
                processing_status="ended",
                request_counts=counts,
                ended_at=_rfc3339(CREATED + next(state.clock)),
                results_url=f"http://{host}/v1/messages/batches/{batch_id}/results",
            )
        return Reply(json=dict(batch))


# --------------------------------------------------------------------------- Anthropic files (beta)


class AnthropicFilesState:
    """What the mock Anthropic Files API keeps: file metadata with its bytes. Uploaded files are
    not downloadable (Anthropic's rule: only files the code execution tool writes are); the code
    execution tool writes one per call (``code_execution_content``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files: dict[str, dict] = {}
        self.contents: dict[str, bytes] = {}
        self.clock = itertools.count(1)

    def add(self, filename: str, mime_type: str, data: bytes, downloadable: bool) -> dict:
        """Keep a file (caller holds the lock); its metadata as Anthropic returns it."""
        tick = next(self.clock)
        obj = {
            "id": f"file_011mock{tick:06d}{hashlib.sha256(data).hexdigest()[:8]}",
            "type": "file",
            "filename": filename,
            "mime_type": mime_type,
            "size_bytes": len(data),
            "created_at": _rfc3339(CREATED + tick),
            "downloadable": downloadable,
        }
        self.files[obj["id"]], self.contents[obj["id"]] = obj, data
        return obj


ANTHROPIC_FILES = AnthropicFilesState()
ANTHROPIC_FILES_BETA = "files-api-2025-04-14"
CODE_OUTPUT = b"x,y\n1,2\n"  # the file the mock's code execution tool writes


def is_anthropic(req: Recorded) -> bool:
    """A request an Anthropic client made (Anthropic's API tells its own calls by this header)."""
    return "anthropic-version" in req.headers


def _anthropic_files(call: Call, scripted: Reply | None) -> Reply:
    """Anthropic's Files API (beta): POST/GET /v1/files, GET/DELETE /v1/files/{id}, GET …/content;
    the ``files-api-2025-04-14`` beta header is required, as Anthropic requires it."""
    if scripted is not None and scripted.status >= 400:
        return anthropic_error(scripted.status)
    req = call.req
    if ANTHROPIC_FILES_BETA not in req.headers.get("anthropic-beta", ""):
        return anthropic_error(400, f"the Files API needs the anthropic-beta header {ANTHROPIC_FILES_BETA} (mock)")
    _, file_id, action = FILES_PATH.match(req.path).groups()
    state = ANTHROPIC_FILES
    with state.lock:
        if file_id is None and req.method == "POST":
            _, files = multipart_form(req)
            uploaded = [(filename, data) for name, filename, data in files if name == "file"]
            if len(uploaded) != 1:
                return anthropic_error(400, "file: Field required")
            filename, data = uploaded[0]
            mime = "application/pdf" if data.startswith(b"%PDF") else "text/plain"
            return Reply(json=state.add(filename or "upload", mime, data, downloadable=False))
        if file_id is None:
            items = sorted(state.files.values(), key=lambda f: f["id"], reverse=True)
            return Reply(json=_message_batch_page(items, req.query))
        found = state.files.get(file_id)
        if found is None:
            return anthropic_error(404, f"File not found: {file_id} (mock)")
        if action == "/content":
            if not found["downloadable"]:
                return anthropic_error(400, f"File {file_id} is not downloadable (mock)")
            return Reply(body=state.contents[file_id], headers={"content-type": found["mime_type"]})
        if req.method == "DELETE":
            gone(state.files[file_id])
            del state.files[file_id], state.contents[file_id]
            return Reply(json={"id": file_id, "type": "file_deleted"})
        return Reply(json=found)


def anthropic_file_ids(body: dict) -> list[str]:
    """The files a Messages body names: a document's or image's ``{"type": "file", "file_id"}``
    source, and a ``container_upload`` block's ``file_id``."""
    found = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict):
                continue
            source = block.get("source")
            if isinstance(source, dict) and source.get("type") == "file":
                found.append(source.get("file_id"))
            if block.get("type") == "container_upload":
                found.append(block.get("file_id"))
    return found


def anthropic_missing_file(body: dict) -> Reply | None:
    """Anthropic's 404 for a Messages body naming a file it does not hold."""
    with ANTHROPIC_FILES.lock:
        missing = [f for f in anthropic_file_ids(body) if f not in ANTHROPIC_FILES.files]
    return anthropic_error(404, f"File not found: {missing[0]} (mock)") if missing else None


class AnthropicContainersState:
    """The containers Anthropic's code execution tool runs in: each id with when it expires."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.containers: dict[str, str] = {}
        self.clock = itertools.count(1)


ANTHROPIC_CONTAINERS = AnthropicContainersState()


def container_named(body: dict) -> str | None:
    """The container a Messages body names: ``"container": "container_…"``, or the Skills API's
    ``{"id": "container_…", "skills": [...]}`` (no id: a new container)."""
    value = body.get("container")
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else None


def anthropic_missing_container(body: dict) -> Reply | None:
    """Anthropic's 404 for a Messages body naming a container it does not hold."""
    named = container_named(body)
    with ANTHROPIC_CONTAINERS.lock:
        known = named is None or named in ANTHROPIC_CONTAINERS.containers
    return None if known else anthropic_error(404, f"container_id: container {named} not found (mock)")


def code_execution_container(body: dict) -> dict:
    """The container the code execution tool ran in, as an answer names it: the one the request
    named (known: ``anthropic_missing_container`` refused another), else a new one."""
    state = ANTHROPIC_CONTAINERS
    with state.lock:
        named = container_named(body)
        if named is None:
            tick = next(state.clock)
            named = f"container_011mock{tick:06d}{hashlib.sha256(str(tick).encode()).hexdigest()[:8]}"
            state.containers[named] = _rfc3339(CREATED + 30 * 86400 + tick)
        return {"id": named, "expires_at": state.containers[named]}


def _code_execution(body: dict) -> bool:
    tools = body.get("tools") or []
    return any(isinstance(t, dict) and str(t.get("type", "")).startswith("code_execution_") for t in tools)


LEGACY_CODE_TOOL = "code_execution_20250522"  # Python only: its results are ``code_execution_tool_result``


def code_execution_content(body: dict) -> list[dict]:
    """The code execution tool's answer: it ran code that wrote a file (made downloadable), which
    its result block names by ``file_id``, as Anthropic's does — for ``code_execution_20250825``
    (and later) a ``bash_code_execution`` call and its ``bash_code_execution_tool_result``, for the
    legacy ``code_execution_20250522`` a ``code_execution`` call and its ``code_execution_tool_result``."""
    with ANTHROPIC_FILES.lock:
        made = ANTHROPIC_FILES.add("out.csv", "text/csv", CODE_OUTPUT, downloadable=True)
    tools = body.get("tools") or []
    if any(isinstance(t, dict) and t.get("type") == LEGACY_CODE_TOOL for t in tools):
        name, args, kind = "code_execution", {"code": "save()"}, "code_execution"
    else:
        name, args, kind = "bash_code_execution", {"command": "python save.py"}, "bash_code_execution"
    return [
        {"type": "server_tool_use", "id": "srvtoolu_exec1", "name": name, "input": args},
        {
            "type": f"{kind}_tool_result",
            "tool_use_id": "srvtoolu_exec1",
            "content": {
                "type": f"{kind}_result",
                "stdout": "",
                "stderr": "",
                "return_code": 0,
                "content": [{"type": f"{kind}_output", "file_id": made["id"]}],
            },
        },
        {"type": "text", "text": TEXT},
    ]


# --------------------------------------------------------------------------- Gemini


# Gemini's image models (Nano Banana): the output tokens of one generated image, as Google bills
# them (gemini-2.5-flash-image: 1,290 up to 1024x1024; gemini-3-pro-image-preview: 1,120 at 1K/2K).
GEMINI_IMAGE_TOKENS = {"gemini-2.5-flash-image": 1290, "gemini-3-pro-image": 1120}
GEMINI_IMAGE_B64 = "iVBORw0KGgoAAAANSUhEUgAABAAAAAQACAIAAADwf7zU" + "G" * 40_000


def gemini_image_tokens(model: str, body: dict) -> int:
    """The output tokens of the image a Gemini image model draws for ``body`` (0: it draws none —
    not an image model, or ``responseModalities`` without IMAGE)."""
    name = model.removeprefix("models/")
    tokens = next((count for prefix, count in GEMINI_IMAGE_TOKENS.items() if name.startswith(prefix)), 0)
    modalities = _gemini_config(body).get("responseModalities")
    if isinstance(modalities, list) and "IMAGE" not in [str(m).upper() for m in modalities]:
        return 0
    return tokens


def gemini_image_part() -> dict:
    """The image an image model answers with, as Google sends it: an ``inlineData`` part."""
    return {"inlineData": {"mimeType": "image/png", "data": GEMINI_IMAGE_B64}}


def gemini_usage(model: str, candidates: int = COMPLETION_TOKENS, image: int = 0) -> dict:
    """usageMetadata; `cached`/`reasoning` in the model add cachedContentTokenCount 8 /
    thoughtsTokenCount 3 (thoughts count toward totalTokenCount, as Gemini does). An image's
    ``image`` tokens join candidatesTokenCount, and the counts per modality are listed as Google
    lists them (``promptTokensDetails``, ``candidatesTokensDetails``: ModalityTokenCount objects)."""
    usage: dict = {"promptTokenCount": PROMPT_TOKENS, "candidatesTokenCount": candidates + image}
    total = PROMPT_TOKENS + candidates + image
    if _has_flag(model, "cached"):
        usage["cachedContentTokenCount"] = CACHED_TOKENS
    if _has_flag(model, "reasoning"):
        usage["thoughtsTokenCount"] = REASONING_TOKENS
        total += REASONING_TOKENS
    usage["totalTokenCount"] = total
    if image:
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": PROMPT_TOKENS}]
        usage["candidatesTokensDetails"] = [
            {"modality": "TEXT", "tokenCount": candidates},
            {"modality": "IMAGE", "tokenCount": image},
        ]
    return usage


def _gemini_response(parts: list[dict], model: str, n: int, finish: str | None, usage: dict | None) -> dict:
    candidate: dict = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    reply: dict = {"candidates": [candidate]}
    if usage is not None and not _no_usage(model):
        reply["usageMetadata"] = usage
    reply["modelVersion"] = model
    reply["responseId"] = f"resp_mock{n}"
    return reply


def _gemini_call_part(fn: str, model: str) -> dict:
    """A functionCall part; Gemini 3 signs the first one of each step with a thoughtSignature."""
    part: dict = {"functionCall": {"name": fn, "args": dict(TOOL_ARGS)}}
    if model.removeprefix("models/").startswith("gemini-3"):
        part["thoughtSignature"] = THOUGHT_SIGNATURE
    return part


def _signed_call(part: Any) -> tuple[str, str] | None:
    """(name, args) of a functionCall part, the key the mock remembers signatures under."""
    fn = part.get("functionCall") if isinstance(part, dict) else None
    if not isinstance(fn, dict):
        return None
    return str(fn.get("name")), _dumps(fn.get("args") or {})


def gemini_signatures(reply: Reply) -> dict[tuple[str, str], str]:
    """The thought signatures a Gemini reply hands out, by the function call they sign."""
    docs: list = []
    if reply.json is not None:
        docs.append(reply.json)
    for item in reply.sse or []:
        data = item.split("data:", 1)[1] if item.lstrip().startswith(("data:", "event:")) else item
        try:
            docs.append(jsonlib.loads(data))
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth: signs nothing
            continue
    found: dict[tuple[str, str], str] = {}
    for doc in docs:
        for candidate in doc.get("candidates") or [] if isinstance(doc, dict) else []:
            for part in ((candidate or {}).get("content") or {}).get("parts") or []:
                key = _signed_call(part)
                if key and isinstance(part.get("thoughtSignature"), str):
                    found[key] = part["thoughtSignature"]
    return found


def gemini_signature_refusal(body: dict, model: str, signed: dict[tuple[str, str], str]) -> Reply | None:
    """Gemini 3's 400 for a functionCall sent back without the thoughtSignature the model gave it."""
    if not model.removeprefix("models/").startswith("gemini-3"):
        return None
    for position, content in enumerate(body.get("contents") or []):
        if not isinstance(content, dict) or content.get("role") != "model":
            continue
        for part in content.get("parts") or []:
            key = _signed_call(part)
            if part.get("thoughtSignature") in SKIP_SIGNATURES:
                continue
            if key in signed and part.get("thoughtSignature") != signed[key]:
                if part.get("thoughtSignature"):
                    return gemini_error(400, "Unable to submit request because Thought signature is not valid.")
                return gemini_error(
                    400,
                    "Function call is missing a thought_signature in functionCall parts. This is required for "
                    "tools to work correctly, and missing thought_signature may lead to degraded model "
                    f"performance. Additional data, function call `default_api:{key[0]}` , position "
                    f"{position + 1}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures "
                    "for more details.",
                )
    return None


def _gemini_thoughts(body: dict) -> list[dict]:
    """The thought summary Gemini puts first when asked (thinkingConfig.includeThoughts)."""
    thinking = (body.get("generationConfig") or {}).get("thinkingConfig") or {}
    return [{"text": THINKING_TEXT, "thought": True}] if thinking.get("includeThoughts") else []


# The searches a grounded answer ran (``groundingMetadata.webSearchQueries``), and the tools that ground.
GROUNDING_QUERIES = ["cats news", "cats news this week"]
GROUNDING_SEARCH_TOOLS = ("googleSearch", "google_search", "googleSearchRetrieval", "google_search_retrieval")
GROUNDING_MAPS_TOOLS = ("googleMaps", "google_maps")


def _grounding_tools(body: dict) -> set[str]:
    """The grounding tools a generateContent body offers (each ``tools[]`` entry is one key)."""
    tools = body.get("tools")
    found = {name for tool in tools if isinstance(tool, dict) for name in tool} if isinstance(tools, list) else set()
    return found & {*GROUNDING_SEARCH_TOOLS, *GROUNDING_MAPS_TOOLS}


def gemini_grounding(body: dict, model: str) -> dict | None:
    """The ``groundingMetadata`` Google puts on a candidate grounded by Search (the queries it ran,
    the pages it used) or by Maps (the places it used); None when no grounding tool was offered, or
    the model (``ungrounded`` in its name) answered without using it."""
    tools = _grounding_tools(body)
    if not tools or _has_flag(model, "ungrounded"):
        return None
    meta: dict = {"groundingChunks": [], "groundingSupports": []}
    if tools & set(GROUNDING_SEARCH_TOOLS):
        meta["webSearchQueries"] = list(GROUNDING_QUERIES)
        meta["searchEntryPoint"] = {"renderedContent": "<div>cats</div>"}
        page = {"uri": "https://vertexaisearch.cloud.google.com/r/1", "title": "cats.example"}
        meta["groundingChunks"] += [{"web": page}]
    if tools & set(GROUNDING_MAPS_TOOLS):
        place = {"uri": "https://maps.google.com/?cid=1", "title": "Cat Cafe", "placeId": "places/1"}
        meta["groundingChunks"] += [{"maps": place}]
    return meta


def _grounded(reply: dict, body: dict, model: str) -> dict:
    """``reply`` with the grounding metadata :func:`gemini_grounding` gives its candidate."""
    meta = gemini_grounding(body, model)
    if meta is not None:
        reply["candidates"][0]["groundingMetadata"] = meta
    return reply


def gemini_generate(body: dict, n: int, model: str) -> dict:
    """A non-streamed GenerateContentResponse."""
    fn = _first_gemini_function(body)
    parts = _gemini_thoughts(body) + ([_gemini_call_part(fn, model)] if fn else [{"text": TEXT}])
    image = 0 if fn else gemini_image_tokens(model, body)  # an image model's answer: its text, then its image
    parts += [gemini_image_part()] if image else []
    tokens = per_choice_tokens(body, model) * billed_choices(body)
    reply = _gemini_response(parts, model, n, "STOP", gemini_usage(model, tokens, image * billed_choices(body)))
    return _grounded(reply, body, model)


def gemini_stream(body: dict, n: int, model: str) -> list[str]:
    """SSE payloads of GenerateContentResponse chunks; usageMetadata is cumulative on each,
    the last chunk has finishReason STOP and the final counts. No `[DONE]` (Gemini has none)."""
    fn = _first_gemini_function(body)
    total = per_choice_tokens(body, model) * billed_choices(body)
    thoughts = (
        [_dumps(_gemini_response(_gemini_thoughts(body), model, n, None, None))] if _gemini_thoughts(body) else []
    )
    if fn:
        parts = [_gemini_call_part(fn, model)]
        return thoughts + [_dumps(_gemini_response(parts, model, n, "STOP", gemini_usage(model, total)))]
    events = thoughts
    image = gemini_image_tokens(model, body) * billed_choices(body)
    for i, piece in enumerate(TEXT_PIECES):
        last = i == len(TEXT_PIECES) - 1 and not image
        tokens = total if i == len(TEXT_PIECES) - 1 else i + 1
        chunk = _gemini_response([{"text": piece}], model, n, "STOP" if last else None, gemini_usage(model, tokens))
        events.append(_dumps(_grounded(chunk, body, model) if last else chunk))  # grounding: on the last chunk
    if image:  # an image model's image comes in a chunk of its own, after its text, with the final counts
        parts = [gemini_image_part()]
        events.append(_dumps(_gemini_response(parts, model, n, "STOP", gemini_usage(model, total, image))))
    return events


# --------------------------------------------------------------------------- routing


@dataclass
class Call:
    """What a route handler sees: the recorded request plus its sequence number."""

    req: Recorded
    n: int

    @property
    def body(self) -> dict:
        return self.req.json if isinstance(self.req.json, dict) else {}


Route = Callable[[Call, Reply | None], Reply]
ErrorFn = Callable[[int, str | None], Reply]


def _json_body_or_error(call: Call, error: ErrorFn) -> Reply | None:
    """A 400 in the route's dialect when the body is not a JSON object."""
    if call.req.method == "POST" and not isinstance(call.req.json, dict):
        return error(400, "We could not parse the JSON body of your request (mock).")
    return None


def _magic_error(model: str, error: ErrorFn) -> Reply | None:
    status = _error_status(model)
    return error(status) if status else None


def _api_route(
    build: Callable[[Call, str], Reply],
    error: ErrorFn = openai_error,
    model_default: Callable[[Call], str] | None = None,
) -> Route:
    """Wrap a builder with JSON-body checks, magic error models and scripted-status errors."""

    def route(call: Call, scripted: Reply | None) -> Reply:
        bad = _json_body_or_error(call, error)
        if bad:
            return bad
        model = str(call.body.get("model") or (model_default(call) if model_default else "") or "")
        if scripted is not None and scripted.status >= 400:
            return error(scripted.status)
        return _magic_error(model, error) or build(call, model)

    return route


def _json_or_sse(call: Call, model: str, plain: Callable, stream: Callable) -> Reply:
    if call.body.get("stream") is True:
        return Reply(sse=stream(call.body, call.n, model))
    return Reply(json=plain(call.body, call.n, model))


def _chat(call: Call, model: str) -> Reply:
    user = call.body.get("user")
    if isinstance(user, str) and len(user) > OPENAI_USER_CAP:  # OpenAI's 400 (code string_above_max_length)
        return openai_error(
            400,
            f"Invalid 'user': string too long. Expected a string with maximum length {OPENAI_USER_CAP}, "
            f"but got a string with length {len(user)} instead.",
        )
    return _json_or_sse(call, model, openai_chat, openai_chat_stream)


def _completions(call: Call, model: str) -> Reply:
    return _json_or_sse(call, model, openai_completion, openai_completion_stream)


def _embeddings(call: Call, model: str) -> Reply:
    return Reply(json=openai_embeddings(call.body, model))


def _models(call: Call, scripted: Reply | None) -> Reply:
    if scripted is not None and scripted.status >= 400:
        return openai_error(scripted.status)
    return Reply(json=anthropic_models() if "anthropic-version" in call.req.headers else openai_models())


def _messages(call: Call, model: str) -> Reply:
    missing = anthropic_missing_file(call.body) or anthropic_missing_container(call.body)
    if missing is not None:
        return missing
    if _code_execution(call.body) and call.body.get("stream") is True:
        container = code_execution_container(call.body)
        return Reply(sse=anthropic_blocks_stream(code_execution_content(call.body), call.n, model, container))
    return _json_or_sse(call, model, anthropic_message, anthropic_stream)


def _count_tokens(call: Call, model: str) -> Reply:
    missing = anthropic_missing_file(call.body) or anthropic_missing_container(call.body)
    if missing is not None:
        return missing
    return Reply(json={"input_tokens": PROMPT_TOKENS})


def _gemini_model(call: Call) -> str:
    return GEMINI_PATH.match(call.req.path).group(2)


def gemini_embeddings(body: dict) -> dict:
    """``batchEmbedContents``: 8 values per request (its outputDimensionality when given), no usage."""
    out = []
    for i, item in enumerate(body.get("requests") or []):
        size = item.get("outputDimensionality") or 8
        out.append({"values": [round(0.125 * (i + 1) + 0.001 * k, 6) for k in range(size)]})
    return {"embeddings": out}


def gemini_embed_content(body: dict) -> dict:
    """``embedContent``: one embedding (8 values, or its outputDimensionality), no usage."""
    return {"embedding": gemini_embeddings({"requests": [body]})["embeddings"][0]}


def gemini_count_tokens(body: dict) -> dict:
    """``countTokens``: PROMPT_TOKENS, with the cached part when the request names cachedContent."""
    request = body.get("generateContentRequest") if isinstance(body.get("generateContentRequest"), dict) else body
    answer: dict = {"totalTokens": PROMPT_TOKENS, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}]}
    if request.get("cachedContent"):
        answer["cachedContentTokenCount"] = CACHED_TOKENS
    return answer


def gemini_json_array(events: list[str]) -> bytes:
    """streamGenerateContent without ``alt=sse``: Google's JSON array, pretty-printed elements
    joined by ``\n,\r\n`` (as the API sends them)."""
    items = [jsonlib.dumps(jsonlib.loads(e), indent=2) for e in events]
    return ("[" + "\n,\r\n".join(items) + "\n]").encode()


def gemini_model_object(name: str) -> dict:
    methods = ["embedContent", "batchEmbedContents"] if "embedding" in name else GEMINI_GENERATE_METHODS
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": name.replace("-", " ").title(),  # Google's reads so: "Gemini 2.5 Flash"
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": methods,
    }


def _gemini_models(call: Call, scripted: Reply | None) -> Reply:
    """``GET /v1beta/models`` (pageSize, pageToken) and ``GET /v1beta/models/{name}``."""
    if scripted is not None and scripted.status >= 400:
        return gemini_error(scripted.status)
    name = GEMINI_MODELS_PATH.match(call.req.path).group(1)
    if name is not None:
        return Reply(json=gemini_model_object(name)) if name in GEMINI_MODEL_IDS else gemini_error(404)
    size = int(call.req.query.get("pageSize") or 50)
    start = int(call.req.query.get("pageToken") or 0)
    reply: dict = {"models": [gemini_model_object(m) for m in GEMINI_MODEL_IDS[start : start + size]]}
    if start + size < len(GEMINI_MODEL_IDS):
        reply["nextPageToken"] = str(start + size)
    return Reply(json=reply)


# The fields of Gemini's Schema object: any other keyword in a function's `parameters` is a 400.
GEMINI_SCHEMA_FIELDS = {
    *("type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties"),
    *("required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example"),
    *("anyOf", "propertyOrdering", "default", "items", "minimum", "maximum"),
}


def _unknown_schema_fields(schema: Any, where: str) -> list[str]:
    """Gemini's complaints about a Schema: one per keyword it does not have (property names are free),
    and one per object whose ``properties`` are empty (a tool that takes no arguments, sent as OpenAI's)."""
    if isinstance(schema, list):
        return [m for i, item in enumerate(schema) for m in _unknown_schema_fields(item, f"{where}[{i}]")]
    if not isinstance(schema, dict):
        return []
    found = []
    for key, value in schema.items():
        if key not in GEMINI_SCHEMA_FIELDS:
            found.append(f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field.")
        elif key == "properties" and value == {}:
            found.append(f"* GenerateContentRequest.{where}.properties: should be non-empty for OBJECT type")
        elif key == "properties" and isinstance(value, dict):
            found += [m for name, sub in value.items() for m in _unknown_schema_fields(sub, f"{where}.{name}")]
        elif key in ("items", "anyOf"):
            found += _unknown_schema_fields(value, f"{where}.{key}")
    return found


def _gemini_schema_errors(body: dict) -> list[str]:
    found = []
    for i, tool in enumerate(body.get("tools") or []):
        decls = (
            (tool.get("functionDeclarations") or tool.get("function_declarations")) if isinstance(tool, dict) else []
        )
        for j, decl in enumerate(decls if isinstance(decls, list) else []):
            if isinstance(decl, dict) and "parameters" in decl:
                found += _unknown_schema_fields(decl["parameters"], f"tools[{i}].function_declarations[{j}].parameters")
    return found


def _gemini(call: Call, model: str) -> Reply:
    action = GEMINI_PATH.match(call.req.path).group(3)
    unknown = _gemini_schema_errors(call.body) if action != "countTokens" else []
    if unknown:
        return gemini_error(400, "\n".join(unknown))
    if action == "batchEmbedContents":
        return Reply(json=gemini_embeddings(call.body))
    if action == "embedContent":
        return Reply(json=gemini_embed_content(call.body))
    named, cached = cache_named(call.body)
    if named and cached is None:
        return cache_not_found()
    missing_file = unknown_file(call.body)
    if missing_file is not None:
        return missing_file
    if action == "countTokens":
        return Reply(json=gemini_count_tokens(call.body))
    if action == "generateContent":
        doc = gemini_generate(call.body, call.n, model)
        return Reply(json=_with_cached_tokens(doc, cached) if cached is not None else doc)
    events = gemini_stream(call.body, call.n, model)
    if cached is not None:
        events = [_dumps(_with_cached_tokens(jsonlib.loads(e), cached)) for e in events]
    if call.req.query.get("alt") == "sse":
        return Reply(sse=events)
    return Reply(body=gemini_json_array(events))  # without alt=sse: one JSON array


# --------------------------------------------------------------------------- Gemini cachedContents


class CachedContentsState:
    """What the mock keeps of Gemini's explicit context caches: each CachedContent by its id."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.caches: dict[str, dict] = {}
        self.clock = itertools.count(1)

    def add(self, body: dict) -> dict:
        """A new CachedContent (caller holds the lock); it holds CACHED_TOKENS tokens, or
        BIG_CACHE_TOKENS for a ``bigcache`` model (its ``usageMetadata.totalTokenCount``)."""
        tick = next(self.clock)
        cache_id = f"mockcache{tick:06d}"
        tokens = BIG_CACHE_TOKENS if _has_flag(body["model"], "bigcache") else CACHED_TOKENS
        cache = {
            "name": f"cachedContents/{cache_id}",
            "model": body["model"],
            "createTime": f"2025-01-01T00:00:{tick % 60:02d}Z",
            "updateTime": f"2025-01-01T00:00:{tick % 60:02d}Z",
            "expireTime": "2025-01-01T01:00:00Z",
            "usageMetadata": {"totalTokenCount": tokens},
        }
        if isinstance(body.get("displayName"), str):
            cache["displayName"] = body["displayName"]
        self.caches[cache_id] = cache
        return cache

    def tokens(self, cache_id: str) -> int | None:
        """The tokens the cache holds, None for an unknown one (caller holds the lock)."""
        cache = self.caches.get(cache_id)
        return None if cache is None else cache["usageMetadata"]["totalTokenCount"]


CACHED_CONTENTS = CachedContentsState()
CACHED_CONTENTS_PATH = re.compile(r"^/(?:v1beta|v1)/cachedContents(?:/([A-Za-z0-9_-]+))?$")


def cache_not_found() -> Reply:
    return gemini_error(404, "CachedContent not found (or permission denied)")


def _cached_contents(call: Call, scripted: Reply | None) -> Reply:
    """POST/GET /v1beta/cachedContents (pageSize, pageToken), GET/PATCH/DELETE …/{id}, as Google
    answers them (the contents are kept by the provider, never echoed back)."""
    if scripted is not None and scripted.status >= 400:
        return gemini_error(scripted.status)
    req = call.req
    cache_id = CACHED_CONTENTS_PATH.match(req.path).group(1)
    with CACHED_CONTENTS.lock:
        if cache_id is None and req.method == "POST":
            model = call.body.get("model")
            if not isinstance(model, str) or not model.startswith("models/"):
                return gemini_error(400, "* CreateCachedContentRequest.cached_content.model: model is required")
            made = CACHED_CONTENTS.add(call.body)
            if _has_flag(model, "nocount"):  # an answer without the cache's token count
                made = {k: v for k, v in made.items() if k != "usageMetadata"}
            return Reply(json=made)
        if cache_id is None and req.method == "GET":
            items = list(CACHED_CONTENTS.caches.values())
            size = int(req.query.get("pageSize") or 100)
            start = int(req.query.get("pageToken") or 0)
            page: dict = {"cachedContents": items[start : start + size]}
            if start + size < len(items):
                page["nextPageToken"] = str(start + size)
            return Reply(json=page)
        if cache_id not in CACHED_CONTENTS.caches:
            return cache_not_found()
        if req.method == "DELETE":
            del CACHED_CONTENTS.caches[cache_id]
            return Reply(json={})
        cache = CACHED_CONTENTS.caches[cache_id]
        if req.method == "PATCH":
            for field_name in ("ttl", "expireTime"):
                if field_name in call.body:
                    cache["expireTime"] = "2025-01-01T02:00:00Z"
        return Reply(json=cache)


def cache_named(body: dict) -> tuple[bool, int | None]:
    """(names a cache, the tokens of the cache: None for an unknown one) for a generateContent or
    countTokens body."""
    request = body.get("generateContentRequest") if isinstance(body.get("generateContentRequest"), dict) else body
    name = request.get("cachedContent")
    if not name:
        return False, None
    cache_id = name.removeprefix("cachedContents/") if isinstance(name, str) else ""
    with CACHED_CONTENTS.lock:
        return True, CACHED_CONTENTS.tokens(cache_id)


def _with_cached_tokens(doc: dict, tokens: int = CACHED_TOKENS) -> dict:
    """A GenerateContentResponse whose usage counts the cache's ``tokens`` as
    ``cachedContentTokenCount``, part of promptTokenCount (PROMPT_TOKENS counts CACHED_TOKENS)."""
    usage = doc.get("usageMetadata")
    if isinstance(usage, dict):
        usage["cachedContentTokenCount"] = tokens
        for count in ("promptTokenCount", "totalTokenCount"):
            if count in usage:
                usage[count] += tokens - CACHED_TOKENS
    return doc


# --------------------------------------------------------------------------- Gemini Files API


GEMINI_FILE_URI = "https://generativelanguage.googleapis.com/v1beta/files/"


class GeminiFilesState:
    """What the mock keeps of Gemini's Files API: resumable upload sessions (by upload id: the size
    announced, the bytes received so far, their SHA-256) and the files they made (by id)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sessions: dict[str, dict] = {}
        self.files: dict[str, dict] = {}
        self.clock = itertools.count(1)

    def finish(self, session: dict) -> dict:
        """The File a finalized upload makes (caller holds the lock)."""
        tick = next(self.clock)
        file_id = session["name"] or f"mockfile{tick:06d}"
        doc = {
            "name": f"files/{file_id}",
            "mimeType": session["mime"],
            "sizeBytes": str(session["received"]),
            "createTime": f"2025-01-01T00:00:{tick % 60:02d}Z",
            "updateTime": f"2025-01-01T00:00:{tick % 60:02d}Z",
            "expirationTime": "2025-01-03T00:00:00Z",
            "sha256Hash": base64.b64encode(session["hash"].digest()).decode(),
            "uri": GEMINI_FILE_URI + file_id,
            "state": "ACTIVE",
            "source": "UPLOADED",
        }
        if session["display_name"] is not None:
            doc["displayName"] = session["display_name"]
        self.files[file_id] = doc
        return doc


GEMINI_FILES = GeminiFilesState()
GEMINI_FILES_PATH = re.compile(r"^/(?:v1beta|v1)/files(?:/([a-z0-9-]+))?$")
GEMINI_UPLOAD_PATH = re.compile(r"^/upload/(v1beta|v1)/files$")


def gemini_file_not_found(file_id: str) -> Reply:
    """Google's answer for a file that does not exist (or is another project's)."""
    return gemini_error(403, f"You do not have permission to access the File {file_id} or it may not exist.")


def _gemini_upload(call: Call, scripted: Reply | None) -> Reply:
    """``POST /upload/v1beta/files``, the resumable protocol as google-genai speaks it: ``start``
    (answered with ``x-goog-upload-url``), then ``upload`` / ``upload, finalize`` at that URL with
    ``X-Goog-Upload-Offset`` (the bytes must follow on from what was received), and ``query``."""
    if scripted is not None and scripted.status >= 400:
        return gemini_error(scripted.status)
    req = call.req
    command = [c.strip() for c in (req.headers.get("x-goog-upload-command") or "").split(",")]
    upload_id = req.query.get("upload_id")
    with GEMINI_FILES.lock:
        if upload_id is None:
            if req.headers.get("x-goog-upload-protocol") != "resumable" or command != ["start"]:
                return gemini_error(400, "Only the resumable upload protocol is served by the mock")
            size = req.headers.get("x-goog-upload-header-content-length") or ""
            if not size.isdigit():
                return gemini_error(400, "X-Goog-Upload-Header-Content-Length is required")
            meta = call.body.get("file") if isinstance(call.body.get("file"), dict) else {}
            name = meta.get("name")
            file_id = name.removeprefix("files/") if isinstance(name, str) else None
            if file_id is not None and file_id in GEMINI_FILES.files:
                return gemini_error(409, f"File files/{file_id} already exists.")
            upload_id = f"mockupload{next(GEMINI_FILES.clock):06d}"
            GEMINI_FILES.sessions[upload_id] = {
                "size": int(size),
                "mime": req.headers.get("x-goog-upload-header-content-type") or "application/octet-stream",
                "display_name": meta.get("displayName", meta.get("display_name")),
                "name": file_id,
                "received": 0,
                "hash": hashlib.sha256(),
            }
            host = req.headers.get("host", "127.0.0.1")
            url = f"http://{host}{req.path}?upload_id={upload_id}&upload_protocol=resumable"
            return Reply(body=b"", headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"})
        session = GEMINI_FILES.sessions.get(upload_id)
        if session is None:
            return Reply(status=404, body=b"", headers={"x-goog-upload-status": "final"})
        if command == ["query"]:
            status = "final" if session.get("done") else "active"
            return Reply(
                body=b"",
                headers={"x-goog-upload-status": status, "x-goog-upload-size-received": str(session["received"])},
            )
        if session.get("done") or command not in (["upload"], ["upload", "finalize"], ["finalize"]):
            return gemini_error(400, f"Invalid upload command {command!r} for this upload")
        offset = req.headers.get("x-goog-upload-offset")
        if command != ["finalize"] and offset != str(session["received"]):
            return gemini_error(400, f"X-Goog-Upload-Offset {offset} does not follow {session['received']}")
        session["received"] += len(req.body)
        session["hash"].update(req.body)
        if "finalize" not in command:
            return Reply(body=b"", headers={"x-goog-upload-status": "active"})
        if session["received"] != session["size"]:
            return gemini_error(400, f"received {session['received']} bytes of the {session['size']} announced")
        session["done"] = True
        return Reply(json={"file": GEMINI_FILES.finish(session)}, headers={"x-goog-upload-status": "final"})


def _gemini_files(call: Call, scripted: Reply | None) -> Reply:
    """``GET /v1beta/files`` (pageSize, pageToken), ``GET`` / ``DELETE …/files/{id}``."""
    if scripted is not None and scripted.status >= 400:
        return gemini_error(scripted.status)
    req = call.req
    file_id = GEMINI_FILES_PATH.match(req.path).group(1)
    with GEMINI_FILES.lock:
        if file_id is None:
            if req.method != "GET":
                return gemini_error(400, "files are made through /upload/v1beta/files (mock)")
            items = list(GEMINI_FILES.files.values())
            size = int(req.query.get("pageSize") or 10)
            start = int(req.query.get("pageToken") or 0)
            page: dict = {"files": items[start : start + size]}
            if start + size < len(items):
                page["nextPageToken"] = str(start + size)
            return Reply(json=page)
        if file_id not in GEMINI_FILES.files:
            return gemini_file_not_found(file_id)
        if req.method == "DELETE":
            del GEMINI_FILES.files[file_id]
            return Reply(json={})
        return Reply(json=GEMINI_FILES.files[file_id])


def files_named(body: dict) -> list[str]:
    """The Files API ids a generateContent body names in ``fileData.fileUri`` (either spelling)."""
    found: list[str] = []
    stack: list[Any] = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key in ("fileData", "file_data"):
                data = value.get(key)
                uri = data.get("fileUri", data.get("file_uri")) if isinstance(data, dict) else None
                if isinstance(uri, str) and (uri.startswith(GEMINI_FILE_URI) or uri.startswith("files/")):
                    found.append(uri.rsplit("/", 1)[-1])
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found


def unknown_file(body: dict) -> Reply | None:
    """Google's 403 for a generateContent naming a file it does not hold."""
    with GEMINI_FILES.lock:
        missing = [f for f in files_named(body) if f not in GEMINI_FILES.files]
    return gemini_file_not_found(missing[0]) if missing else None


def _azure(build: Callable[[Call, str], Reply]) -> Route:
    """Azure deployment routes: need `api-version`, model defaults to the deployment name."""
    inner = _api_route(build, model_default=lambda call: AZURE_PATH.match(call.req.path).group(1))

    def route(call: Call, scripted: Reply | None) -> Reply:
        if not call.req.query.get("api-version"):
            return azure_error(404, "Resource not found")
        return inner(call, scripted)

    return route


GEMINI_PATH = re.compile(
    r"^/(v1beta|v1)/models/([^/:]+):"
    r"(generateContent|streamGenerateContent|countTokens|embedContent|batchEmbedContents)$"
)
GEMINI_MODELS_PATH = re.compile(r"^/(?:v1beta|v1)/models(?:/([^/:]+))?$")
GEMINI_MODEL_IDS = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-embedding-001"]
GEMINI_GENERATE_METHODS = ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]
AZURE_PATH = re.compile(
    r"^/openai/deployments/([^/]+)/"
    r"(chat/completions|completions|embeddings|audio/transcriptions|audio/speech|images/generations|images/edits)$"
)

AZURE_ROUTES: dict[str, Route] = {
    "chat/completions": _azure(_chat),
    "completions": _azure(_completions),
    "embeddings": _azure(_embeddings),
    "audio/speech": _azure(_speech),
    "images/generations": _azure(_images),
}
ROUTES: dict[tuple[str, str], Route] = {
    ("POST", "/v1/chat/completions"): _api_route(_chat),
    ("POST", "/v1/completions"): _api_route(_completions),
    ("POST", "/v1/embeddings"): _api_route(_embeddings),
    ("GET", "/v1/models"): _models,
    ("POST", "/v1/messages"): _api_route(_messages, anthropic_error),
    ("POST", "/v1/messages/count_tokens"): _api_route(_count_tokens, anthropic_error),
    ("POST", "/v1/responses"): _api_route(_responses),
    ("POST", "/v1/responses/input_tokens"): _api_route(_input_tokens),
    ("POST", "/v1/responses/compact"): _api_route(_compact),
    ("POST", "/v1/audio/transcriptions"): _form_route(_transcript),
    ("POST", "/v1/audio/translations"): _form_route(lambda call, fields, files: _transcript(call, fields, files, True)),
    ("POST", "/v1/audio/speech"): _api_route(_speech),
    ("POST", "/v1/images/generations"): _api_route(_images),
    ("POST", "/v1/images/edits"): _image_edit,
    ("POST", "/v1/images/variations"): _form_route(_image_form),
    ("POST", "/v1/moderations"): _api_route(_moderations),
}
GEMINI_ROUTE: Route = _api_route(_gemini, gemini_error, _gemini_model)


def _azure_form(call: Call, scripted: Reply | None) -> Reply:
    """A multipart route under an Azure deployment (a transcription, an image edit)."""
    if not call.req.query.get("api-version"):
        return azure_error(404, "Resource not found")
    build = _image_form if call.req.path.endswith("/images/edits") else _transcript
    return _form_route(build)(call, scripted)


def find_route(method: str, path: str) -> Route | None:
    """The handler for a request, or None for an unknown route."""
    if MESSAGE_BATCHES_PATH.match(path):
        return _message_batches
    if (method, path) in ROUTES:
        return ROUTES[(method, path)]
    if method == "POST" and GEMINI_PATH.match(path):
        return GEMINI_ROUTE
    if method == "GET" and path.startswith("/v1beta/") and GEMINI_MODELS_PATH.match(path):
        return _gemini_models
    match = AZURE_PATH.match(path)
    if method == "POST" and match and match.group(2) in ("audio/transcriptions", "images/edits"):
        return _azure_form
    if method == "POST" and match:
        return AZURE_ROUTES[match.group(2)]
    if RESPONSE_PATH.match(path):
        return _stored_response
    if FILES_PATH.match(path):
        return _files_or_anthropic_files
    if UPLOADS_PATH.match(path):
        return _uploads
    if CONTAINERS_PATH.match(path):
        return _containers
    if VIDEOS_PATH.match(path):
        return _videos
    if VECTOR_STORES_PATH.match(path):
        return _vector_stores
    if CACHED_CONTENTS_PATH.match(path):
        return _cached_contents
    if method == "POST" and GEMINI_UPLOAD_PATH.match(path):
        return _gemini_upload
    if GEMINI_FILES_PATH.match(path):
        return _gemini_files
    return None


def not_found(method: str, path: str) -> Reply:
    return Reply(
        status=404,
        json={
            "error": {
                "message": f"Unknown route: {method} {path} (mock)",
                "type": "invalid_request_error",
                "param": None,
                "code": "unknown_url",
            }
        },
    )


# --------------------------------------------------------------------------- HTTP server


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "mock-upstream/1.0"
    sys_version = ""
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: no access log."""

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.server.track(self.connection, False)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    # -- request side

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _record(self) -> Recorded:
        body = self._read_body()
        split = urlsplit(self.path)
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        try:
            parsed = jsonlib.loads(body) if body else None
        except ValueError:
            parsed = None
        return Recorded(
            self.command, split.path, dict(parse_qsl(split.query, keep_blank_values=True)), headers, body, parsed
        )

    # -- dispatch

    def _dispatch(self) -> None:
        mock = self.server.mock
        req = self._record()
        n = mock._record(req)
        scripted = mock._next_reply() or (mock.script(req) if mock.script is not None else None)
        try:
            self._answer(req, n, scripted)
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True

    def _answer(self, req: Recorded, n: int, scripted: Reply | None) -> None:
        mock = self.server.mock
        if req.path.endswith("/realtime") and "websocket" in req.headers.get("upgrade", "").lower():
            if scripted is None or scripted.status < 400:
                self.close_connection = True
                return RealtimeSession(self.connection, self.rfile, req, mock).run()
        if scripted is not None and scripted.hang_s and scripted.hang_after is None and self._hang(scripted):
            return self._drop()
        if mock.delay_ms and mock._stopping.wait(mock.delay_ms / 1000.0):
            return self._drop()
        if scripted is not None and scripted.reset:
            return self._drop()
        if scripted is not None and scripted.wait is not None:
            self._gate(scripted, scripted.wait)
        if scripted is not None and scripted.lost:
            self._resolve(req, n, None)
            mock._stopping.wait(LOST_AFTER_S)
            return self._drop()
        reply = self._resolve(req, n, scripted)
        if scripted is not None and scripted.held is not None and scripted.held_after is None:
            self._gate(scripted, scripted.held)
        # the request id as each provider names it: Anthropic's ``request-id``, OpenAI's ``x-request-id``
        headers = {"request-id" if "anthropic-version" in req.headers else "x-request-id": f"req_mock_{n}"}
        for extra in (reply.headers, scripted.headers if scripted else {}):
            headers.update({name.lower(): value for name, value in extra.items()})
        cut = scripted.cut_after if scripted else None
        sse_delay = scripted.sse_delay_ms if scripted else mock.sse_delay_ms
        if reply.sse is not None:
            events = reply.sse if scripted is not None else _stretched(reply.sse, mock.stream_events)
            self._send_sse(reply.status, headers, events, sse_delay, cut, scripted)
        else:
            self._send_body(reply, headers, cut, scripted)

    def _gate(self, scripted: Reply, gate: threading.Event) -> None:
        """Wait for the test to open ``gate`` (``hang_started`` says the wait began); a stopping mock goes on."""
        if scripted.hang_started is not None:
            scripted.hang_started.set()
        stopping = self.server.mock._stopping
        while not gate.wait(0.05) and not stopping.is_set():
            pass

    def _hang(self, scripted: Reply) -> bool:
        """Think for ``hang_s`` like a slow provider; True when cut short (stopping, or the caller
        closed the connection: then ``hung_up`` is set)."""
        if scripted.hang_started is not None:
            scripted.hang_started.set()
        stopping = self.server.mock._stopping
        deadline = time.monotonic() + (scripted.hang_s or 0)
        while (left := deadline - time.monotonic()) > 0:
            if stopping.is_set():
                return True
            ready, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if not ready:
                continue
            try:
                closed = socket.socket.recv(self.connection, 1, socket.MSG_PEEK) == b""  # raw, also under TLS
            except OSError:
                closed = True
            if closed:
                if scripted.hung_up is not None:
                    scripted.hung_up.set()
                return True
            stopping.wait(min(left, 0.05))  # bytes of a next request: not a hang-up
        return stopping.is_set()

    def _resolve(self, req: Recorded, n: int, scripted: Reply | None) -> Reply:
        """The reply to send: the provider's refusal of a request it would refuse whatever it
        answers (reasoning state not sent back), scripted content, else the route's default."""
        asked = self.server.mock.threads.expand(req)
        if isinstance(asked, Reply):
            return asked
        refusal = self._refusal(asked)
        if refusal is not None:
            return refusal
        reply = self._reply(asked, n, scripted)
        if GEMINI_PATH.match(req.path) and reply.status == 200:
            self.server.mock._note_signatures(gemini_signatures(reply))
        if reply.status == 200 and not (scripted is not None and scripted.has_content()):
            self.server.mock.threads.keep(req, asked, n)
        return reply

    def _refusal(self, req: Recorded) -> Reply | None:
        body = req.json if isinstance(req.json, dict) else None
        if body is None or req.method != "POST":
            return None
        if req.path.rstrip("/").endswith("/v1/messages"):
            return anthropic_tool_refusal(body) or anthropic_thinking_refusal(body) or anthropic_pause_refusal(body)
        match = GEMINI_PATH.match(req.path)
        if match and "Content" in (match.group(3) or ""):
            signed = self.server.mock._signatures()
            return gemini_tool_refusal(body) or gemini_signature_refusal(body, _gemini_model(Call(req, 0)), signed)
        return None

    def _reply(self, req: Recorded, n: int, scripted: Reply | None) -> Reply:
        if scripted is not None and scripted.has_content():
            return scripted
        route = find_route(req.method, req.path)
        if route is None:
            return not_found(req.method, req.path)
        reply = route(Call(req, n), scripted)
        if scripted is not None and scripted.status != 200 and reply.status == 200:
            reply.status = scripted.status
        return reply

    # -- response side

    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        phrase = self.responses.get(status, ("Mock",))[0]
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            f"Server: {self.server_version}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
        ]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send_body(self, reply: Reply, headers: dict[str, str], cut: int | None, scripted: Reply | None = None) -> None:
        if reply.body is not None:
            body = reply.body
        else:
            body = _dumps(reply.json).encode() if reply.json is not None else b""
        head = self._head(
            reply.status, {"content-type": "application/json", **headers, "content-length": str(len(body))}
        )
        if self.command == "HEAD":
            body = b""
        if cut is not None:
            self.connection.sendall(head + body[:cut])
            return self._drop()
        if scripted is not None and scripted.held is not None and scripted.held_after is not None:
            self.connection.sendall(head + body[: scripted.held_after])  # the rest once ``held`` is set
            head, body = b"", body[scripted.held_after :]
            self._gate(scripted, scripted.held)
        self.connection.sendall(head + body)

    def _send_sse(
        self,
        status: int,
        headers: dict[str, str],
        events: list[str],
        delay_ms: float,
        cut: int | None,
        scripted: Reply | None = None,
    ) -> None:
        base = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
        self.connection.sendall(self._head(status, {**base, **headers, "transfer-encoding": "chunked"}))
        stopping = self.server.mock._stopping
        for index, item in enumerate(events):
            if cut is not None and index >= cut:
                return self._drop()
            if scripted is not None and scripted.held_after == index and scripted.held is not None:
                self._gate(scripted, scripted.held)
            if scripted is not None and scripted.hang_after == index and scripted.hang_s and self._hang(scripted):
                return self._drop()  # the caller hung up mid-stream (hung_up is set)
            if index and delay_ms and stopping.wait(delay_ms / 1000.0):
                return self._drop()
            data = _sse_block(item)
            self.connection.sendall(b"%x\r\n%s\r\n" % (len(data), data))
        if cut is not None:
            return self._drop()
        self.connection.sendall(b"0\r\n\r\n")
        if scripted is not None and scripted.all_sent is not None:
            scripted.all_sent.set()

    def _drop(self) -> None:
        """Close the connection at once, with no (further) response bytes."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], mock: "MockUpstream") -> None:
        self.mock = mock
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conns_lock:
            (self._conns.add if alive else self._conns.discard)(conn)

    def open_connections(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    def close_all(self) -> None:
        """Shut down every open client connection (ends idle keep-alive threads)."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: clients that disconnect are normal here, never print a traceback."""


# --------------------------------------------------------------------------- the Realtime API

# OpenAI's Realtime API over WebSocket (``/v1/realtime?model=…``). Its usage, by what the session got:
# every response reads RT_TEXT_TOKENS of instructions and each item's text, and the audio appended
# (one token per RT_AUDIO_BYTES of pcm16 at 24 kHz: 10 a second), cached from the second response
# on (RT_CACHED_TEXT text tokens and the audio of the responses before); it writes its text
# (RT_OUTPUT_TEXT tokens) and, when audio is asked, RT_OUTPUT_AUDIO audio tokens.
RT_TEXT_TOKENS = 120
RT_CACHED_TEXT = 64
RT_AUDIO_BYTES = 4800
RT_OUTPUT_TEXT = 20
RT_OUTPUT_AUDIO = 300
RT_TRANSCRIPT = ["Hello", " from", " mock"]
RT_IMAGE_TOKENS = 765  # an input_image content part's tokens (cached, as audio, from the next response on)


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """A server frame (final, unmasked)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def _ws_read(rfile: Any) -> tuple[int, bytes] | None:
    """One client frame (opcode, unmasked payload); None at the end of the connection."""
    head = rfile.read(2)
    if len(head) < 2:
        return None
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", rfile.read(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", rfile.read(8))[0]
    mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = rfile.read(n)
    return head[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class RealtimeSession:
    """One mock Realtime session: the events OpenAI's GA interface sends, with its usage."""

    def __init__(self, sock: socket.socket, rfile: Any, req: Recorded, mock: "MockUpstream") -> None:
        self.sock, self.rfile, self.req, self.mock = sock, rfile, req, mock
        self.model = req.query.get("model") or req.query.get("deployment", "")  # OpenAI's, or Azure's
        self.session: dict[str, Any] = {
            "type": "realtime",
            "object": "realtime.session",
            "id": f"sess_mock_{id(self)}",
            "model": self.model,
            "output_modalities": ["audio"],
            "instructions": "",
        }
        self.events = itertools.count(1)
        self.audio = 0  # bytes appended to the input buffer, not yet committed
        self.committed_audio = 0  # audio tokens in the conversation
        self.cached_audio = 0  # of them, those an earlier response read
        self.texts = 0  # text tokens of the conversation's items
        self.images = 0  # image tokens of the conversation's items
        self.cached_images = 0  # of them, those an earlier response read
        self.responses = 0
        self.held: tuple | None = None  # a response begun and held until response.cancel (metadata mock: hold)
        self.received_cancel = False

    def run(self) -> None:
        accept = base64.b64encode(
            hashlib.sha1(
                (self.req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()
            ).digest()
        ).decode()
        self.sock.sendall(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        self.send("session.created", session=self.session)
        while (got := _ws_read(self.rfile)) is not None:
            opcode, payload = got
            if opcode == 0x8:
                self.sock.sendall(_ws_frame(0x8, payload[:2]))
                return
            if opcode == 0x9:
                self.sock.sendall(_ws_frame(0xA, payload))
            elif opcode == 0x1 and not self.event(jsonlib.loads(payload)):
                return

    def send(self, kind: str, **fields: Any) -> None:
        event = {"type": kind, "event_id": f"event_mock_{next(self.events)}", **fields}
        self.sock.sendall(_ws_frame(0x1, _dumps(event).encode()))

    def event(self, event: dict) -> bool:
        """One client event answered; False: the mock drops the connection (``mock.drop``)."""
        kind = event.get("type")
        if kind == "mock.drop":
            self.sock.shutdown(socket.SHUT_RDWR)
            return False
        if kind == "mock.error":  # an error event that echoes the key the session was opened with
            key = self.req.headers.get("authorization", "").removeprefix("Bearer ") or self.req.headers.get("api-key")
            message = f"Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com."
            self.send("error", error={"type": "invalid_request_error", "code": "invalid_api_key", "message": message})
            return True
        if kind == "session.update":
            self.session.update(event.get("session") or {})
            self.send("session.updated", session=self.session)
        elif kind == "input_audio_buffer.append":
            self.audio += len(base64.b64decode(event.get("audio", "")))
            if self.server_vad() and self.audio >= 10 * RT_AUDIO_BYTES:  # a second of speech, then silence
                self.send("input_audio_buffer.speech_started", audio_start_ms=0, item_id="item_vad")
                self.send("input_audio_buffer.speech_stopped", audio_end_ms=1000, item_id="item_vad")
                self.event({"type": "input_audio_buffer.commit"})
                self.respond({})  # the server's own response: no response.create asked for it
        elif kind == "input_audio_buffer.commit":
            self.committed_audio += -(-self.audio // RT_AUDIO_BYTES)
            self.audio = 0
            self.send("input_audio_buffer.committed", previous_item_id=None, item_id=f"item_mock_{self.responses}")
        elif kind == "conversation.item.create":
            item = dict(event.get("item") or {}, id=f"item_mock_{next(self.events)}", status="completed")
            content = [c for c in item.get("content", []) if isinstance(c, dict)]
            self.texts += sum(len(str(c.get("text", "")).split()) for c in content)
            self.images += RT_IMAGE_TOKENS * sum(c.get("type") == "input_image" for c in content)
            self.send("conversation.item.added", previous_item_id=None, item=item)
            self.send("conversation.item.done", previous_item_id=None, item=item)
        elif (
            kind == "response.create" and ((event.get("response") or {}).get("metadata") or {}).get("mock") == "reject"
        ):
            # as OpenAI refuses a create it cannot run: an error naming the client event, no response.created
            message = "Invalid value: 'nonsense'. Supported values are: 'text' and 'audio'."
            error = {"type": "invalid_request_error", "code": "invalid_value", "message": message}
            self.send(
                "error", error={**error, "param": "response.output_modalities", "event_id": event.get("event_id")}
            )
        elif kind == "response.create":
            self.respond(event.get("response") or {})
        elif kind == "response.cancel" and self.held is not None:
            self.received_cancel = True
            self.finish(*self.held, status="cancelled")
        else:
            message = f"Invalid value: '{kind}'. Supported values are: 'session.update', 'response.create', …"
            self.send("error", error={"type": "invalid_request_error", "code": "invalid_value", "message": message})
        return True

    def server_vad(self) -> bool:
        """The session asks the server to detect turns (``audio.input.turn_detection``)."""
        audio = self.session.get("audio")
        detection = ((audio or {}).get("input") or {}).get("turn_detection") if isinstance(audio, dict) else None
        return isinstance(detection, dict) and detection.get("type") == "server_vad"

    def usage(self, audio_out: int) -> dict:
        text_in = RT_TEXT_TOKENS + self.texts
        cached_text = RT_CACHED_TEXT if self.responses > 1 else 0
        return {
            "total_tokens": text_in + self.committed_audio + self.images + RT_OUTPUT_TEXT + audio_out,
            "input_tokens": text_in + self.committed_audio + self.images,
            "output_tokens": RT_OUTPUT_TEXT + audio_out,
            "input_token_details": {
                "text_tokens": text_in,
                "audio_tokens": self.committed_audio,
                "image_tokens": self.images,
                "cached_tokens": cached_text + self.cached_audio + self.cached_images,
                "cached_tokens_details": {
                    "text_tokens": cached_text,
                    "audio_tokens": self.cached_audio,
                    "image_tokens": self.cached_images,
                },
            },
            "output_token_details": {"text_tokens": RT_OUTPUT_TEXT, "audio_tokens": audio_out},
        }

    def respond(self, asked: dict) -> None:
        """A response: text deltas, or audio and its transcript, then ``response.done`` with usage."""
        self.responses += 1
        self.mock.realtime_asked.append((self.req.headers.get("openai-beta", ""), asked))
        ident = f"resp_mock_{self.responses}"
        audio = "audio" in (asked.get("output_modalities") or self.session.get("output_modalities") or [])
        response = {"object": "realtime.response", "id": ident, "status": "in_progress", "output": [], "usage": None}
        self.send("response.created", response=response)
        item = {"id": f"item_out_{ident}", "type": "message", "role": "assistant", "status": "completed"}
        self.send("response.output_item.added", response_id=ident, output_index=0, item={**item, "content": []})
        if (asked.get("metadata") or {}).get("mock") == "hold-silent":  # no output yet; the rest waits for a cancel
            self.held = (response, item, [], False)
            return
        where = {"response_id": ident, "item_id": item["id"], "output_index": 0, "content_index": 0}
        if audio:
            for piece in RT_TRANSCRIPT:
                self.send("response.output_audio.delta", **where, delta=base64.b64encode(b"\0" * 4800).decode())
                self.send("response.output_audio_transcript.delta", **where, delta=piece)
            self.send("response.output_audio.done", **where)
            content = [{"type": "output_audio", "transcript": TEXT}]
        else:
            for piece in TEXT_PIECES:
                self.send("response.output_text.delta", **where, delta=piece)
            if (asked.get("metadata") or {}).get("mock") == "hold":  # the rest waits for response.cancel
                self.held = (response, item, [], False)
                return
            self.send("response.output_text.done", **where, text=TEXT)
            content = [{"type": "output_text", "text": TEXT}]
        self.finish(response, item, content, audio)

    def finish(self, response: dict, item: dict, content: list, audio: bool, status: str = "completed") -> None:
        """A response's last events: its item done, then ``response.done`` with its usage."""
        self.held = None
        finished = {**item, "content": content}
        self.send("response.output_item.done", response_id=response["id"], output_index=0, item=finished)
        done = {**response, "status": status, "output": [{**item, "content": content}]}
        done["usage"] = self.usage(RT_OUTPUT_AUDIO if audio else 0)
        self.cached_audio, self.cached_images = self.committed_audio, self.images
        self.send("response.done", response=done)
        self.mock.realtime_done.append(done)


# --------------------------------------------------------------------------- public server


class MockUpstream:
    """A threaded mock provider. `start()` returns self; also a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        delay_ms: float = 0,
        tls: "ssl.SSLContext | None" = None,
        stream_events: int = 0,
        sse_delay_ms: float = 0,
    ) -> None:
        self.host = host
        self.tls = tls
        self.delay_ms = delay_ms
        self.stream_events = stream_events  # default streams padded to this many events (0: as they are)
        self.sse_delay_ms = sse_delay_ms  # pause between the events of default streams
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._replies: collections.deque[Reply] = collections.deque()
        self._counter = itertools.count(1)
        self._signed: dict[tuple[str, str], str] = {}  # Gemini 3 function calls answered, and their signatures
        self.realtime_done: list[dict] = []  # every Realtime response.done sent, oldest first
        self.realtime_asked: list[tuple[str, dict]] = []  # each response begun: its OpenAI-Beta, its ask
        self.threads = MessageThreads()  # Anthropic's message threads
        # a reply chosen for each request when none is queued (concurrent traffic, where a queue's
        # order is not the requests' order): by what the request says, None for the route's default
        self.script: Callable[[Recorded], Reply | None] | None = None

    # -- lifecycle

    def start(self) -> "MockUpstream":
        self._stopping.clear()
        self._server = _Server((self.host, self._requested_port), self)
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"mock-upstream-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end hanging replies and close open connections."""
        self._stopping.set()
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_all()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> "MockUpstream":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested_port
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    # -- recording

    @property
    def requests(self) -> list[Recorded]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget recorded requests (queued replies stay; see `clear_replies`)."""
        with self._lock:
            self._requests.clear()

    def open_connections(self) -> int:
        """How many client connections are open now (a test waits for 0 to know a request ended)."""
        return self._server.open_connections() if self._server is not None else 0

    def last(self, path_contains: str | None = None) -> Recorded | None:
        """The newest request (whose path contains `path_contains`, if given)."""
        with self._lock:
            for req in reversed(self._requests):
                if path_contains is None or path_contains in req.path:
                    return req
        return None

    def _record(self, req: Recorded) -> int:
        with self._lock:
            self._requests.append(req)
            return next(self._counter)

    # -- scripting

    def _note_signatures(self, found: dict[tuple[str, str], str]) -> None:
        with self._lock:
            self._signed.update(found)

    def _signatures(self) -> dict[tuple[str, str], str]:
        with self._lock:
            return dict(self._signed)

    def enqueue(self, *replies: Reply) -> None:
        """Queue scripted replies; each request takes the oldest one before defaults apply."""
        with self._lock:
            self._replies.extend(replies)

    def clear_replies(self) -> None:
        """Drop every queued scripted reply."""
        with self._lock:
            self._replies.clear()

    def pending(self) -> int:
        """How many scripted replies are still queued."""
        with self._lock:
            return len(self._replies)

    def _next_reply(self) -> Reply | None:
        with self._lock:
            return self._replies.popleft() if self._replies else None


# --------------------------------------------------------------------------- process entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mock LLM provider for Stockyard tests/benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0)
    parser.add_argument("--stream-events", type=int, default=0, help="pad default streams to this many events")
    parser.add_argument("--sse-delay-ms", type=float, default=0, help="pause between default stream events")
    args = parser.parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    mock = MockUpstream(
        args.host, args.port, args.delay_ms, stream_events=args.stream_events, sse_delay_ms=args.sse_delay_ms
    ).start()
    print(f"listening {mock.url}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    mock.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())


THINK_SIG = "EqQBCkYIBRgCKkBsig-from-anthropic"  # a Claude thinking block's signature, as the tests script it


def anthropic_thinking_call(model: str, redacted: bool = False) -> dict:
    """A scripted Claude answer with thinking on: a signed thinking block (and a redacted one),
    then a ``get_weather`` tool call: what a tool loop must send back first in its assistant turn."""
    blocks: list[dict] = [{"type": "thinking", "thinking": "I should call the tool.", "signature": THINK_SIG}]
    if redacted:
        blocks.append({"type": "redacted_thinking", "data": "RURBQ1RFRA=="})
    blocks.append({"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}})
    return {
        "id": "msg_t1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 30},
    }

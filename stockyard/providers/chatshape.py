"""The OpenAI chat shapes that translating adapters (Anthropic, Gemini) produce.

Answers, stream chunks, usage objects and errors in OpenAI's wire format, the stream
translator both build on, plus reading the OpenAI request parts both translators need
(text, images, tool arguments).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from ..context import RequestContext
from ..errors import ProxyError, error_body, error_type, sse_error_event
from ..httpio import json_bytes
from ..pricing import Usage
from . import Provider
from .base import StreamTranslator, sse_data

# --------------------------------------------------------------------------- the field tables

TRANSLATED, EMULATED, REFUSED = "translated", "emulated", "refused"
DROP_HEADER = "x-stockyard-drop-unsupported"
DROPPED_HEADER = "x-stockyard-dropped"


def asks_nothing(value: Any) -> bool:
    """A value that asks for nothing (absent, false, zero, empty): honoured by leaving it out."""
    return value is None or value is False or value == 0 or value in ("", [], {})


@dataclass(frozen=True)
class Field:
    """One row of an adapter's field table: how a request field reaches the target.

    ``accepts`` says which values the target honours; a refused row honours only values that
    ask for nothing, a translated row every value unless it names narrower ones.
    """

    how: str
    note: str
    accepts: Callable[[Any], bool] | None = None

    def honours(self, value: Any) -> bool:
        if self.accepts is not None:
            return self.accepts(value)
        return self.how != REFUSED or asks_nothing(value)


def refused(note: str, accepts: Callable[[Any], bool] | None = None) -> Field:
    return Field(REFUSED, note, accepts)


def note(ctx: RequestContext, text: str) -> None:
    """Add ``text`` to the trace's error message: how a request was sent or answered that the
    client did not ask for (thinking left off, tool calls left out)."""
    ctx.attempt.error_message = "; ".join(filter(None, [ctx.attempt.error_message, text]))


def unreadable_event(ctx: RequestContext) -> None:
    """A provider's stream event nested deeper than the JSON parser goes (RecursionError): the
    provider's malformed event, handled as its stream's other unreadable events are (relayed unread,
    or skipped), and said once in the trace, naming the provider — never the refusal of the client's
    body (``errors.refusal_of``) it would become if it reached the dispatch."""
    provider = ctx.attempt.provider
    said = (
        f"provider {provider.name if provider else '?'!r} sent a stream event nested too deeply to read (left unread)"
    )
    if said not in (ctx.attempt.error_message or ""):
        note(ctx, said)


def honoured_body(ctx: RequestContext, table: Mapping[str, Field], models: str) -> dict:
    """The request body with nothing the target cannot honour: a 400 naming the first field it
    cannot (a field with no row included), or — when the client sent ``x-stockyard-drop-unsupported:
    true`` — those fields dropped, named in the ``x-stockyard-dropped`` reply header and the trace."""
    body = ctx.body
    unhonoured = [k for k, v in body.items() if k not in table or not table[k].honours(v)]
    if not unhonoured:
        return body
    if ctx.headers.get(DROP_HEADER, "").strip().lower() != "true":
        name = unhonoured[0]
        row = table.get(name)
        why = f" ({row.note})" if row is not None else ""
        raise ProxyError(
            400,
            f"{models} models cannot honour {name!r} as sent{why}; remove it, or send "
            f"'{DROP_HEADER}: true' to have Stockyard drop what the model cannot honour",
            param=name,
            code="unsupported_field",
        )
    ctx.reply_headers[DROPPED_HEADER] = ",".join(unhonoured)
    ctx.attempt.error_message = f"dropped unsupported fields: {', '.join(unhonoured)}"
    return {k: v for k, v in body.items() if k not in unhonoured}


def table_rows(table: Mapping[str, Field]) -> list[dict]:
    """A field table as plain rows (the CLI and the README print these)."""
    return [{"field": name, "how": row.how, "note": row.note} for name, row in table.items()]


# Rows every translating adapter shares: the request's frame and OpenAI-only features.
COMMON_FIELDS: dict[str, Field] = {
    "model": Field(TRANSLATED, "the provider's model name"),
    "stream": Field(TRANSLATED, "the provider's stream, translated event by event"),
    "stream_options": Field(EMULATED, "include_usage: a usage chunk built from the provider's usage"),
    "logprobs": refused("no token log probabilities in the translated answer"),
    "top_logprobs": refused("no token log probabilities in the translated answer"),
    "logit_bias": refused("no token biasing"),
    "modalities": refused("text only", lambda v: v is None or v == ["text"]),
    "audio": refused("no audio output"),
    "prediction": refused("no predicted outputs"),
    "web_search_options": refused(
        "no web search through translation (a Responses web_search tool arrives as this field)", lambda v: v is None
    ),
    # Hints that change nothing in the answer (coding agents send them on every request): not sent.
    "store": Field(EMULATED, "OpenAI's stored completions: not sent; Stockyard traces every request"),
    "metadata": Field(EMULATED, "stored-completion metadata: not sent"),
    "service_tier": refused("only the default tier", lambda v: v in (None, "auto", "default")),
    "verbosity": Field(EMULATED, "a hint on how long the answer should be (Codex CLI sends it): not sent"),
    "moderation": refused("no OpenAI moderation"),
    "prompt_cache_key": Field(EMULATED, "OpenAI's prompt cache routing hint: not sent"),
    "prompt_cache_retention": Field(EMULATED, "OpenAI's prompt cache retention hint: not sent"),
    "prompt_cache_options": Field(EMULATED, "OpenAI's prompt cache options: not sent"),
    "functions": refused("the deprecated functions; use tools"),
    "function_call": refused("the deprecated function_call; use tool_choice"),
}


def openai_usage(usage: Usage) -> dict:
    """The OpenAI ``usage`` object for token counts Stockyard normalised; cache writes (Claude's,
    billed dearer than input) in ``prompt_tokens_details.cache_write_tokens``, OpenAI's own field
    for them, when there are any, so the client (and Responses over chat) can tell them from input."""
    details = {"cached_tokens": usage.cached_tokens}
    if usage.cache_write_tokens:
        details["cache_write_tokens"] = usage.cache_write_tokens
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": details,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def chunk(ident: str, created: int, model: str, choices: list[dict], usage: dict | None = None) -> bytes:
    """One ``chat.completion.chunk`` SSE event."""
    payload: dict = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        payload["usage"] = usage
    return b"data: " + json_bytes(payload, compact=True) + b"\n\n"


def delta_choice(delta: dict, finish_reason: str | None = None, index: int = 0) -> dict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def done_event() -> bytes:
    return b"data: [DONE]\n\n"


def completion(ident: str, created: int, model: str, choices: list[dict], usage: Usage | None) -> bytes:
    """A whole ``chat.completion`` object."""
    payload: dict = {"id": ident, "object": "chat.completion", "created": created, "model": model, "choices": choices}
    if usage is not None:
        payload["usage"] = openai_usage(usage)
    return json_bytes(payload)


def data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a ``data:`` URL, None for other URLs; 400 if not base64.
    Parameters before ``;base64`` (``;charset=utf-8``) are allowed and left out of the type,
    which is lower-cased (media types are case-insensitive; providers want them lower-case), and
    ``image/jpg`` is ``image/jpeg``."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    media_type, *params = head.split(";")
    if not sep or not params or params[-1].lower() != "base64":
        raise ProxyError(
            400,
            "data URLs must be base64-encoded (data:<type>;base64,<data>)",
            param="messages",
            code="invalid_image_url",
        )
    media_type = media_type.strip().lower() or "application/octet-stream"
    return _MEDIA_ALIASES.get(media_type, media_type), data


# Names clients write that are not registered media types; providers take only the registered one.
_MEDIA_ALIASES = {"image/jpg": "image/jpeg"}


def image_url_of(part: dict) -> str:
    """The URL of an OpenAI ``image_url`` content part (object or bare string form)."""
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise ProxyError(400, "an image_url content part needs a url", param="messages", code="invalid_image_url")
    return url


def file_data_of(part: dict, models: str) -> str:
    """The data URL of a chat ``file`` content part; a file by id is the provider's own (400)."""
    file = part.get("file")
    data = file.get("file_data") if isinstance(file, dict) else None
    if isinstance(data, str) and data.startswith("data:"):
        return data
    raise ProxyError(
        400,
        f"a file content part for {models} models needs file_data as a base64 data URL "
        "(data:<type>;base64,<data>); a file_id names a file only its own provider has",
        param="messages",
        code="unsupported_content",
    )


def _invalid_content() -> ProxyError:
    return ProxyError(
        400, "message content must be a string or an array of content parts", param="messages", code="invalid_content"
    )


def text_of(content: Any) -> str:
    """Plain text of an OpenAI message content (string, or an array of text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise _invalid_content()


def translate_content(
    content: Any,
    text: Callable[[dict, str], dict],
    image: Callable[[str], dict],
    models: str,
    file: Callable[[str, str | None], dict] | None = None,
) -> list[dict]:
    """OpenAI message content → a provider's content parts: ``text(part, text)`` for each
    non-empty text or refusal (``part`` is ``{}`` for string content), ``image(url)`` for each
    image, ``file(data_url, filename)`` for each inline file (a PDF); any other part type is a
    400 naming the ``models`` it cannot go to."""
    if content is None:
        return []
    if isinstance(content, str):
        return [text({}, content)] if content else []
    if not isinstance(content, list):
        raise _invalid_content()
    out: list[dict] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            if part.get(kind):
                out.append(text(part, part[kind]))
        elif kind == "image_url":
            out.append(image(image_url_of(part)))
        elif kind == "file" and file is not None:
            data = file_data_of(part, models)  # a 400 unless "file" is an object with a data URL
            name = part["file"].get("filename")
            out.append(file(data, name if isinstance(name, str) and name else None))
        else:
            raise ProxyError(
                400,
                f"content part type {kind!r} is not supported for {models} models",
                param="messages",
                code="unsupported_content",
            )
    return out


def message_list(items: Any) -> list:
    """The request's ``messages``: a non-empty array, or a 400."""
    if not isinstance(items, list) or not items:
        raise ProxyError(400, "'messages' must be a non-empty array", param="messages", code="invalid_messages")
    return items


MEDIA_PARTS = ("image_url", "file")  # the chat content parts a tool message cannot hand a provider as text


def attached_note(attached: list[dict]) -> str:
    """A tool result's text when all it holds is what follows it (chat tool messages are text)."""
    follows = "image" if all(p["type"] == "image_url" for p in attached) else "attachment"
    return f"(the result is the {follows} that follows)"


def is_media(part: Any) -> bool:
    """A content part a tool message cannot hand a provider as text (told by its type: comparing
    parts with each other costs the product of their counts)."""
    return isinstance(part, dict) and part.get("type") in MEDIA_PARTS


def tool_media_after(messages: list) -> list:
    """Chat ``messages`` with the images and files of each ``tool`` message (Qwen Code's ``read_file``
    of a PNG or a PDF answers with them) moved into one user message after that run of tool
    messages, the tool message keeping its text (or a note that the result follows): the shape the
    Responses and Messages translations make, which Anthropic and Gemini read as one user turn —
    the tool results, then the media."""
    out: list = []
    attached: list[dict] = []
    for msg in messages:
        role = msg.get("role") if isinstance(msg, dict) else None
        if attached and role != "tool":
            out.append({"role": "user", "content": attached})
            attached = []
        content = msg.get("content") if role == "tool" else None
        parts = content if isinstance(content, list) else []
        media = [p for p in parts if is_media(p)]
        if media:
            texts = [p for p in parts if not is_media(p)] or [{"type": "text", "text": attached_note(media)}]
            msg = {**msg, "content": texts}
            attached += media
        out.append(msg)
    if attached:
        out.append({"role": "user", "content": attached})
    return out


def unsupported_role(role: Any, models: str) -> ProxyError:
    return ProxyError(
        400, f"message role {role!r} is not supported for {models} models", param="messages", code="invalid_role"
    )


def append_turn(turns: list[dict], role: str, items: list[dict], key: str) -> None:
    """Add a turn with ``items`` under ``key``, merged into the previous turn of the same role
    (both providers want roles to alternate); an empty turn is left out (both refuse one)."""
    if not items:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(items)
    else:
        turns.append({"role": role, key: items})


def tool_function(tool: Any) -> dict:
    """The ``function`` of an OpenAI tool entry, with its name, or a 400."""
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(fn, dict) or not fn.get("name"):
        raise ProxyError(
            400,
            "each tool must be {'type': 'function', 'function': {'name': …}}",
            param="tools",
            code="invalid_tools",
        )
    return fn


ALLOWED_MODES = ("auto", "required")


def invalid_choice(param: str, message: str) -> ProxyError:
    return ProxyError(400, message, param=param, code="invalid_tool_choice")


def allowed_tools(body: dict) -> tuple[str, list[str]] | None:
    """A ``tool_choice`` of type ``allowed_tools`` (``{"allowed_tools": {"mode", "tools": [{"type":
    "function", "function": {"name"}}]}}``) → its mode and the names of the allowed functions, in the
    order ``tools`` declares them; None for another tool_choice. Claude and Gemini have no such choice,
    so each adapter offers only these (:func:`only_allowed`); an allowed function the request does not
    declare is a 400 here, naming it, not the provider's own 400 about a name the client never sent."""
    choice = body.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") != "allowed_tools":
        return None
    inner = choice.get("allowed_tools")
    if not isinstance(inner, dict):
        raise invalid_choice("tool_choice.allowed_tools", "tool_choice.allowed_tools must be an object")
    mode, entries = inner.get("mode"), inner.get("tools")
    if mode not in ALLOWED_MODES:
        raise invalid_choice(
            "tool_choice.allowed_tools.mode", "tool_choice.allowed_tools.mode must be auto or required"
        )
    if not isinstance(entries, list) or not entries:
        raise invalid_choice("tool_choice.allowed_tools.tools", "tool_choice.allowed_tools.tools must list a tool")
    declared = [tool_function(tool)["name"] for tool in body.get("tools") or []]
    known = set(declared)  # looked up once per entry: a list was thousands × thousands of comparisons
    wanted = set()
    for i, entry in enumerate(entries):
        kind, fn = (entry.get("type"), entry.get("function")) if isinstance(entry, dict) else (None, None)
        name = fn.get("name") if isinstance(fn, dict) else None
        if kind != "function" or not isinstance(name, str) or name not in known:
            param = f"tool_choice.allowed_tools.tools[{i}]"
            shown = str(name)[:100]
            raise invalid_choice(param, f"{param}: the request declares no function {shown!r} among its tools")
        wanted.add(name)
    return mode, [name for name in declared if name in wanted]


def only_allowed(tools: Any, names: list[str]) -> list:
    """The chat ``tools`` whose function is one of ``names``."""
    allowed = set(names)
    return [tool for tool in tools or [] if tool_function(tool)["name"] in allowed]


def tool_arguments(call: dict) -> dict:
    """The parsed JSON arguments of an assistant tool call (an object, as both APIs need)."""
    raw = (call.get("function") or {}).get("arguments") or "{}"
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        raise ProxyError(
            400,
            "tool_calls[].function.arguments must be a JSON object string",
            param="messages",
            code="invalid_tool_arguments",
        ) from None
    if not isinstance(args, dict):
        raise ProxyError(
            400,
            "tool_calls[].function.arguments must be a JSON object",
            param="messages",
            code="invalid_tool_arguments",
        )
    return args


@contextmanager
def shape_errors(status: int, what: str) -> Iterator[None]:
    """Turn a body of an unexpected shape (a string where an object belongs, …) into a clear
    error instead of a 500: 400 for the client's request, 502 for the provider's answer."""
    try:
        yield
    except (AttributeError, TypeError, KeyError, IndexError, ValueError):
        code = "invalid_request" if status == 400 else "bad_upstream_response"
        raise ProxyError(status, f"{what} has an unexpected shape and cannot be translated", code=code) from None
    except RecursionError:  # JSON nested near the parser's limit, too deep to translate and re-encode
        code = "invalid_request" if status == 400 else "bad_upstream_response"
        raise ProxyError(status, f"{what} is nested too deeply to be translated", code=code) from None


def translated_error(status: int, message: str, code: str | None) -> bytes:
    """An upstream error re-shaped for an OpenAI client, keeping the provider's status."""
    return error_body("openai", status, message, code=code, type_=error_type("openai", status))


def upstream_error(
    ctx: RequestContext, status: int, body: bytes, read: Callable[[Any], tuple[str, str] | None]
) -> bytes:
    """A provider's error body for an OpenAI client: ``read`` finds its (code, message)."""
    try:
        found = read(json.loads(body))
    except ValueError:
        found = None
    if found is None:
        provider = ctx.attempt.provider
        return translated_error(status, f"provider {provider.name if provider else '?'!r} answered {status}", None)
    code, message = found
    return translated_error(status, message, code)


def endpoint_check(ctx: RequestContext, provider: Provider, served: tuple[str, ...] = ("chat",)) -> None:
    """Translating adapters serve chat (Gemini embeddings too): anything else is a clear 400."""
    if ctx.endpoint not in served:
        path = {"completions": "/v1/completions", "embeddings": "/v1/embeddings"}.get(ctx.endpoint, ctx.endpoint)
        raise ProxyError(
            400,
            f"provider {provider.name!r} ({provider.kind}) does not support {path}; use /v1/chat/completions",
            code="unsupported_endpoint",
        )


class CallOrder:
    """A chat stream's tool-call deltas, each call's together: what the APIs that stream one item at
    a time (Messages blocks, Responses items) need. Most providers send each call whole before the
    next; some interleave parallel calls' argument fragments. The current call's deltas pass at once;
    another call's wait until the current one's arguments are a whole JSON object (nothing more can
    come for it) or the answer ends (:meth:`rest`), then pass in the order their calls began. Each
    delta leaves with the call's number in its ``index`` (:meth:`numbered`)."""

    def __init__(self) -> None:
        self.numbers: dict[Any, tuple[Any, int]] = {}  # the provider's index → (its call's id, the call's number)
        self.calls = 0  # calls begun
        self.current: Any = None  # the number of the call whose deltas pass
        self.arguments: list[str] = []  # the current call's argument fragments so far (joined only to check)
        self.closed = False  # its last fragment with text ended in "}": only then may they be whole JSON
        self.waiting: dict[Any, list[dict]] = {}  # chat index → the deltas of a call held back

    def take(self, calls: Any) -> list[dict]:
        """The deltas of one chunk's ``tool_calls`` that may go out now, in order."""
        out: list[dict] = []
        for call in calls if isinstance(calls, list) else []:
            if not isinstance(call, dict):
                continue
            call = self.numbered(call)
            position = call["index"]
            if self.current is None:
                self.current = position
            if position == self.current:
                out += self.passed([call])
            else:
                self.waiting.setdefault(position, []).append(call)
            while self.waiting and self.whole():
                position, held = next(iter(self.waiting.items()))
                del self.waiting[position]
                self.current, self.arguments, self.closed = position, [], False
                out += self.passed(held)
        return out

    def numbered(self, call: dict) -> dict:
        """The delta with its call's number as ``index``: a delta naming an id other than the one its
        index began with starts a call of its own (a provider that sends each call whole with no
        ``index``, or the same one, as some OpenAI-compatible servers do)."""
        index, ident = call.get("index", 0), call.get("id")
        index = index if isinstance(index, (int, str)) else 0  # a key of the table, whatever was sent
        known = self.numbers.get(index)
        if known is None or (ident and known[0] and ident != known[0]):
            known = self.numbers[index] = (ident, self.calls)
            self.calls += 1
        return {**call, "index": known[1]}

    def passed(self, calls: list[dict]) -> list[dict]:
        for call in calls:
            fn = call.get("function")
            fragment = fn.get("arguments") if isinstance(fn, dict) else None
            if isinstance(fragment, str) and (text := fragment.rstrip()):
                self.arguments.append(fragment)
                self.closed = text.endswith("}")
        return calls

    def whole(self) -> bool:
        """Whether the current call's arguments are a whole JSON object (read only while a call waits,
        and parsed only when they end in "}": a long call's fragments are not read again and again)."""
        if not self.closed:
            return False
        try:
            return isinstance(json.loads("".join(self.arguments)), dict)
        except (ValueError, RecursionError):
            return False

    def rest(self) -> list[dict]:
        """At the answer's end: the calls still held back, each one's deltas together."""
        held = [call for calls in self.waiting.values() for call in calls]
        self.waiting.clear()
        return held


def chat_chunks(events: list[bytes]) -> Iterator[dict | None]:
    """The JSON objects in a chat translator's SSE output, in order, and None for ``[DONE]``.

    What the translations over chat (Responses, Messages) read back; a block that carries no
    JSON object is skipped.
    """
    for event in events:
        for block in event.split(b"\n\n"):
            data = sse_data(block)
            if data is None:
                continue
            if data.strip() == b"[DONE]":
                yield None
                continue
            try:
                obj = json.loads(data)
            except (ValueError, RecursionError):  # nested too deep: the inner translator's trace note said so
                continue
            if isinstance(obj, dict):
                yield obj


def chunk_error(obj: dict) -> dict | None:
    """The provider's error when a chat stream event is one (an ``error`` and no ``choices``)."""
    error = obj.get("error")
    return error if isinstance(error, dict) and "choices" not in obj else None


def record_stream_error(ctx: RequestContext, kind: str, message: str) -> None:
    """An error the provider sent inside a stream: the trace says the answer broke."""
    ctx.attempt.outcome = "stream_broken"
    ctx.attempt.error_type = f"upstream_{kind}"
    ctx.attempt.error_message = message


# A chat stream error's code or type that says the provider rate-limited the call (OpenAI's, Anthropic's,
# Gemini's): what the Messages and Responses translations tell their clients, who wait and retry it.
RATE_LIMITED = frozenset({"rate_limit_exceeded", "rate_limit_error", "RESOURCE_EXHAUSTED"})

UNENDED = "the provider's stream ended before its [DONE]"


def unended(ctx: RequestContext) -> str:
    """A chat stream that ended cleanly but without ``[DONE]`` (so maybe mid-answer): the trace says it
    broke, as for the provider's error event; returns the message for the client's error event."""
    record_stream_error(ctx, "incomplete_stream", UNENDED)
    return UNENDED


class ChunkStream(StreamTranslator):
    """A provider's stream → OpenAI ``chat.completion.chunk`` events: what every translator shares.

    :meth:`feed` parses each event's JSON and hands it to :meth:`translate`, which a
    subclass writes for its provider's events; an event of an unexpected shape carries
    nothing and is skipped. After :meth:`fail` nothing more is sent.
    """

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.ident = ctx.trace_id
        self.created = int(time.time())
        self.failed = False

    def translate(self, payload: Any) -> list[bytes]:
        raise NotImplementedError

    def feed(self, event: bytes) -> list[bytes]:
        data = sse_data(event)
        if data is None or self.failed:
            return []
        try:
            payload = json.loads(data)
        except ValueError:
            return []
        except RecursionError:  # the provider's, skipped as a non-JSON event is
            unreadable_event(self.ctx)
            return []
        try:
            return self.translate(payload)
        except (AttributeError, TypeError, KeyError, ValueError):
            return []  # an event of an unexpected shape carries nothing we can translate
        except RecursionError:  # nested just short of the parser's limit, too deep to translate
            unreadable_event(self.ctx)
            return []

    def identify(self, ident: str | None, model: str | None) -> None:
        """Take the answer's id and served model from an event that carries them."""
        self.ident = ident or self.ident
        self.ctx.attempt.serve(model or self.ctx.attempt.served_model or self.ctx.attempt.upstream_model, ident)

    def out(self, delta: dict, finish: str | None = None, index: int = 0) -> bytes:
        """One chunk with one choice's delta."""
        return chunk(
            self.ident, self.created, self.ctx.attempt.served_model or "", [delta_choice(delta, finish, index)]
        )

    def done(self) -> list[bytes]:
        """The end of a complete answer: the usage chunk when the client asked for usage, then [DONE]."""
        out = []
        usage = self.ctx.attempt.total_usage()  # every call's, when the provider paused the turn
        if self.ctx.client_wants_usage and usage is not None:
            out.append(chunk(self.ident, self.created, self.ctx.attempt.served_model or "", [], openai_usage(usage)))
        return out + [done_event()]

    def fail(self, status: int, kind: str, message: str) -> list[bytes]:
        """End the client's stream with an error event (never a made-up [DONE])."""
        self.failed = True
        record_stream_error(self.ctx, kind, message)
        return [sse_error_event("openai", status, message, code=kind)]

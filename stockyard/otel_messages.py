"""Prompt and answer as the GenAI conventions' messages, for ``STOCKYARD_OTLP_CONTENT=true``.

Backends (Langfuse, Phoenix, Datadog, Grafana) draw a conversation from the structure the
OpenTelemetry GenAI conventions define — ``gen_ai.input.messages`` ``[{"role", "parts": [...]}]``,
``gen_ai.output.messages`` (one per choice, with ``finish_reason``) and
``gen_ai.system_instructions`` (a list of parts) — and show a provider's raw body as one blob.
This module turns the client's request and the answer it got, in each dialect Stockyard
speaks (Chat Completions and Completions, Anthropic Messages, the Responses API, Gemini's
generateContent; plain JSON or a captured stream), into that structure, as JSON text (the
conventions' form for spans where structured values are not yet supported).

The readers here are lenient on purpose: the translators in ``providers/`` check a body before
it goes upstream and refuse what they cannot translate, while a pass-through request (server
tools, documents, fields newer than Stockyard) still reached the provider and must still be
shown. What they share with the translators — finish-reason tables, the SSE reader, where chat
messages keep their reasoning — is imported from there.

It runs on the request thread only when content export is on, over the bodies as the trace
stores them (after the redact module), so redaction and the ``scrub`` callable apply to every
string exported. It is bounded: each text is cut at ``PART_CAP`` characters, each attribute at
``ATTRIBUTE_CAP`` (earlier messages are left out first), and both say so in the value. It
never raises to its caller's caller: a body that is not JSON or of an unknown shape is
exported as text, as before this module (:func:`raw_text`).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

from .context import Attempt, RequestContext
from .otel_streams import assembled
from .providers.anthropic import STOP_REASONS as ANTHROPIC_STOPS
from .providers.chatshape import image_url_of
from .providers.gemini import FINISH_REASONS as GEMINI_FINISH
from .providers.responses import reasoning_text

Scrub = Callable[[str], str]

PART_CAP = 4096  # characters of one text, tool arguments or tool result
URI_CAP = 2048  # characters of a URI (a data URL is never exported)
ATTRIBUTE_CAP = 16 * 1024  # characters of one attribute's JSON
PARSE_CAP = 4 * 1024 * 1024  # bytes: a larger body is not parsed, its start is exported as text
SCRUB_SLACK = 1024  # characters past a cut that are scrubbed too: a secret across the cut goes whole
MARKER_ROOM = 256  # characters kept free in an attribute for the note that something was left out
ENDPOINTS = frozenset({"chat", "completions", "messages", "responses", "generate"})
ROLES = {"developer": "system", "model": "assistant", "function": "tool"}
CHAT_FINISH = {  # chat's finish reasons → the conventions' (stop, length, content_filter, tool_call, error)
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_call",
    "function_call": "tool_call",
    "error": "error",
}
INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}  # Responses API


def raw_text(data: bytes | bytearray, scrub: Scrub) -> str:
    """A body as text, scrubbed and cut: what is exported when it cannot be read as messages."""
    return scrub(bytes(data[: ATTRIBUTE_CAP * 4]).decode("utf-8", "replace"))[:ATTRIBUTE_CAP]


def request_body(ctx: RequestContext) -> Any:
    """The request's body as JSON, parsed once for its messages and its tools (``otel_tools``);
    None when it is not JSON, too large, or of an endpoint without messages."""
    if ctx.endpoint not in ENDPOINTS:
        return None
    try:
        return _loads(ctx.raw)
    except Exception:  # not JSON (or absurdly deep): exported as text
        return None


def request_content(ctx: RequestContext, scrub: Scrub, body: Any) -> dict[str, str | None]:
    """``gen_ai.system_instructions`` and ``gen_ai.input.messages`` of the request (``body``: its
    :func:`request_body`)."""
    p = Parts(scrub)
    try:
        found = _request(ctx.endpoint, body, p) if body is not None else None
    except Exception:  # an odd body is exported as text: telemetry never fails a request
        found = None
    if found is None:
        return {"gen_ai.input.messages": raw_text(ctx.raw, scrub) or None}
    system, messages = found
    p.labels(messages)
    return {
        "gen_ai.system_instructions": fit_parts(system, ATTRIBUTE_CAP) if system else None,
        "gen_ai.input.messages": fit(messages, ATTRIBUTE_CAP),
    }


def answer_content(ctx: RequestContext, attempt: Attempt, scrub: Scrub) -> dict[str, str | None]:
    """``gen_ai.output.messages`` and ``gen_ai.response.id`` of one attempt's answer."""
    body, p = attempt.response_body, Parts(scrub)
    try:
        doc = assembled(ctx.endpoint, bytes(body)) if ctx.endpoint in ENDPOINTS and len(body) <= PARSE_CAP else None
        found = _answer(ctx.endpoint, doc, p) if doc is not None else None
    except Exception:  # an odd body is exported as text: telemetry never fails a request
        found = None
    if found is None:
        return {"gen_ai.output.messages": raw_text(body, scrub) or None}
    ident, messages = found
    p.labels(messages)
    if attempt.response_truncated:  # the trace kept the answer's start only
        for message in messages:
            message["parts"].append(Parts.text_part("[the answer was cut here: the trace keeps its start only]"))
    return {
        "gen_ai.output.messages": fit(messages, ATTRIBUTE_CAP),
        "gen_ai.response.id": scrub(ident)[:256] if isinstance(ident, str) and ident else None,
    }


def _loads(data: bytes) -> Any:
    return json.loads(data) if len(data) <= PARSE_CAP else None


# -- parts ---------------------------------------------------------------------------------------


class Parts:
    """Makes the conventions' parts, each string scrubbed and cut as it is made."""

    def __init__(self, scrub: Scrub) -> None:
        self.scrub = scrub

    def cut(self, value: str, cap: int = PART_CAP) -> str:
        if len(value) <= cap:
            return self.scrub(value)
        kept = self.scrub(value[: cap + SCRUB_SLACK])[:cap]
        return f"{kept}…[cut: {len(value) - cap} more characters]"

    def any(self, value: Any) -> Any:
        """Tool arguments or a tool result: JSON when it is JSON and small, else text (cut)."""
        if isinstance(value, str):
            if len(value) > PART_CAP or not value.lstrip().startswith(("{", "[")):
                return self.cut(value)
            try:
                value = json.loads(value)
            except ValueError:
                return self.cut(value)
        if isinstance(value, (dict, list)):
            text = json.dumps(value, ensure_ascii=False)
            return self.cut(text) if len(text) > PART_CAP else self.scrubbed(value)
        return value if isinstance(value, (int, float, bool)) or value is None else self.cut(str(value))

    def labels(self, messages: list[dict]) -> None:
        """Roles and finish reasons are the client's or the provider's words too: scrubbed and cut."""
        for message in messages:
            for key in ("role", "finish_reason"):
                if key in message:
                    message[key] = self.cut(str(message[key]), 64)

    def scrubbed(self, value: Any) -> Any:
        """JSON with every key and string scrubbed, its shape kept (the caller bounds its size)."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, list):
            return [self.scrubbed(v) for v in value]
        if isinstance(value, dict):
            return {self.scrub(str(k)): self.scrubbed(v) for k, v in value.items()}
        return value

    @staticmethod
    def text_part(content: str) -> dict:
        return {"type": "text", "content": content}

    def text(self, content: Any) -> dict:
        return self.text_part(self.cut(content if isinstance(content, str) else str(content)))

    def reasoning(self, content: str) -> dict:
        return {"type": "reasoning", "content": self.cut(content)}

    def tool_call(self, ident: Any, name: Any, arguments: Any) -> dict:
        part = {"type": "tool_call", "id": self._id(ident), "name": self.cut(str(name or ""), 256)}
        if arguments is not None:
            part["arguments"] = self.any(arguments)
        return part

    def tool_response(self, ident: Any, response: Any) -> dict:
        return {"type": "tool_call_response", "id": self._id(ident), "response": self.any(response)}

    def _id(self, ident: Any) -> str | None:
        return self.cut(ident, 256) if isinstance(ident, str) and ident else None

    def media(self, url: Any = None, mime: Any = None, file_id: Any = None, kind: str | None = None) -> dict:
        """An image, audio, video or document: a ``uri`` part for a URL, a ``file`` part for a
        provider's file id, else a ``blob`` part with its type and empty ``content`` (inline
        data, base64 or a data URL, is never exported: the schema requires the field)."""
        if isinstance(url, str) and url.startswith("data:"):
            mime = mime or url[5:].partition(",")[0].partition(";")[0] or None
            url = None
        mime = mime if isinstance(mime, str) and mime else None
        modality = kind or _modality(mime)
        part: dict = {"modality": modality}
        if mime:
            part["mime_type"] = self.cut(mime, 128)
        if isinstance(url, str) and url:
            return {"type": "uri", **part, "uri": self.cut(url, URI_CAP)}
        if isinstance(file_id, str) and file_id:
            return {"type": "file", **part, "file_id": self.cut(file_id, 256)}
        return {"type": "blob", **part, "content": ""}

    def other(self, kind: Any) -> dict:
        """A part of a kind the conventions do not name: its type only (a generic part)."""
        return {"type": self.cut(str(kind or "unknown"), 64)}


def _obj(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _modality(mime: str | None) -> str:
    major = (mime or "").partition("/")[0]
    return major if major in ("image", "audio", "video") else "document"


def _role(role: Any) -> str:
    return ROLES.get(role, role) if isinstance(role, str) and role else "user"


def _message(role: Any, parts: list[dict], **extra: Any) -> dict:
    return {"role": _role(role), "parts": parts, **extra}


# -- requests ------------------------------------------------------------------------------------


def _request(endpoint: str, body: Any, p: Parts) -> tuple[list[dict], list[dict]] | None:
    """(system instructions, input messages) of a request body, None when it is of another shape."""
    if not isinstance(body, dict):
        return None
    if endpoint == "chat" and isinstance(body.get("messages"), list):
        return [], [_chat_message(m, p) for m in body["messages"] if isinstance(m, dict)]
    if endpoint == "completions" and isinstance(body.get("prompt"), (str, list)):
        prompt = body["prompt"]
        texts = [prompt] if isinstance(prompt, str) else [t for t in prompt if isinstance(t, str)]
        return [], [_message("user", [p.text(t) for t in texts])]
    if endpoint == "messages" and isinstance(body.get("messages"), list):
        system = body.get("system")
        system_parts = [p.text(system)] if isinstance(system, str) and system else _anthropic_parts(system, p)
        messages: list[dict] = []
        for m in body["messages"]:
            if isinstance(m, dict):
                messages += _anthropic_turn(m.get("role"), m.get("content"), p)
        return system_parts, messages
    if endpoint == "responses" and isinstance(body.get("input"), (str, list)):
        instructions = body.get("instructions")
        system_parts = [p.text(instructions)] if isinstance(instructions, str) and instructions else []
        return system_parts, _responses_items(body["input"], p)
    if endpoint == "generate" and isinstance(body.get("contents"), list):
        instruction = body.get("systemInstruction") or body.get("system_instruction")
        system_parts = _gemini_parts(instruction.get("parts"), p) if isinstance(instruction, dict) else []
        return system_parts, [_gemini_content(c, p) for c in body["contents"] if isinstance(c, dict)]
    return None


def _chat_message(m: dict, p: Parts, **extra: Any) -> dict:
    """A chat message (a request's or an answer's): text, images, reasoning, tool calls, a tool's result."""
    content = m.get("content")
    if m.get("role") == "tool":
        text = content if not isinstance(content, list) else "".join(_chat_texts(content))
        return _message("tool", [p.tool_response(m.get("tool_call_id"), text)], **extra)
    parts: list[dict] = []
    thinking = reasoning_text(m) or "".join(
        b.get("thinking") or "" for b in m.get("thinking_blocks") or () if isinstance(b, dict)
    )
    if thinking:
        parts.append(p.reasoning(thinking))
    if isinstance(content, str) and content:
        parts.append(p.text(content))
    elif isinstance(content, list):
        parts += [_chat_part(part, p) for part in content if isinstance(part, dict)]
    if isinstance(m.get("refusal"), str) and m["refusal"]:
        parts.append(p.text(m["refusal"]))
    for call in m.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            parts.append(p.tool_call(call.get("id"), fn.get("name"), fn.get("arguments")))
    if isinstance(m.get("name"), str) and m["name"]:
        extra["name"] = p.cut(m["name"], 256)
    return _message(m.get("role"), parts, **extra)


def _chat_texts(parts: list) -> Iterable[str]:
    return (x["text"] for x in parts if isinstance(x, dict) and isinstance(x.get("text"), str))


def _chat_part(part: dict, p: Parts) -> dict:
    kind = part.get("type")
    if kind == "text" and isinstance(part.get("text"), str):
        return p.text(part["text"])
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return p.text(part["refusal"])
    if kind == "image_url":
        return p.media(url=image_url_of(part), kind="image")
    if kind == "input_audio":
        audio_format = _obj(part.get("input_audio")).get("format") or "wav"
        return p.media(mime=f"audio/{audio_format}", kind="audio")
    if kind == "file" and isinstance(part.get("file"), dict):
        file = part["file"]
        return p.media(url=file.get("file_data"), file_id=file.get("file_id"))
    return p.other(kind)


def _anthropic_turn(role: Any, content: Any, p: Parts) -> list[dict]:
    """One Messages turn; a user turn's tool results are a ``tool`` message of their own, first."""
    if isinstance(content, str):
        return [_message(role, [p.text(content)])]
    parts = _anthropic_parts(content, p)
    results = [x for x in parts if x["type"] == "tool_call_response"]
    if role != "user" or not results:
        return [_message(role, parts)]
    rest = [x for x in parts if x["type"] != "tool_call_response"]
    return [_message("tool", results)] + ([_message(role, rest)] if rest else [])


def _anthropic_parts(blocks: Any, p: Parts) -> list[dict]:
    """Anthropic content blocks (system, a turn, an answer) → parts; opaque thinking is left out."""
    out: list[dict] = []
    for block in blocks if isinstance(blocks, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            out.append(p.text(block["text"]))
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            out.append(p.reasoning(block["thinking"]))
        elif kind == "redacted_thinking":
            continue
        elif kind in ("image", "document"):
            out.append(_anthropic_source(block.get("source"), kind, p))
        elif kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
            out.append(p.tool_call(block.get("id"), block.get("name"), block.get("input")))
        elif kind == "tool_result" or (isinstance(kind, str) and kind.endswith("_tool_result")):
            result = block.get("content")
            if isinstance(result, list) and all(isinstance(x, dict) and x.get("type") == "text" for x in result):
                result = "\n".join(_chat_texts(result))
            out.append(p.tool_response(block.get("tool_use_id"), result))
        else:
            out.append(p.other(kind))
    return out


def _anthropic_source(source: Any, kind: str, p: Parts) -> dict:
    source = source if isinstance(source, dict) else {}
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        return p.text(source["data"])
    return p.media(
        url=source.get("url"),
        mime=source.get("media_type"),
        file_id=source.get("file_id"),
        kind="image" if kind == "image" else None,
    )


def _responses_items(items: Any, p: Parts) -> list[dict]:
    """Responses input or output items → messages: a call and the reasoning join the assistant
    message before them (one turn), a call's output is a ``tool`` message."""
    if isinstance(items, str):
        return [_message("user", [p.text(items)])]
    out: list[dict] = []

    def assistant(part: dict) -> None:
        if out and out[-1]["role"] == "assistant":
            out[-1]["parts"].append(part)
        else:
            out.append(_message("assistant", [part]))

    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type") or "message"
        if kind == "message":
            content = item.get("content")
            parts = [p.text(content)] if isinstance(content, str) else _responses_parts(content, p)
            if item.get("role") == "assistant" and out and out[-1]["role"] == "assistant":
                out[-1]["parts"] += parts
            else:
                out.append(_message(item.get("role"), parts))
        elif kind in ("function_call", "custom_tool_call"):
            assistant(p.tool_call(item.get("call_id"), item.get("name"), item.get("arguments", item.get("input"))))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            out.append(_message("tool", [p.tool_response(item.get("call_id"), item.get("output"))]))
        elif kind == "reasoning":
            texts = [s.get("text") for s in item.get("summary") or () if isinstance(s, dict)]
            if any(isinstance(t, str) and t for t in texts):
                assistant(p.reasoning("\n".join(t for t in texts if isinstance(t, str))))
        else:  # built-in tools' calls and outputs, item references
            assistant(p.other(kind))
    return out


def _responses_parts(content: Any, p: Parts) -> list[dict]:
    out: list[dict] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            out.append(p.text(part["text"]))
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            out.append(p.text(part["refusal"]))
        elif kind == "input_image":
            out.append(p.media(url=part.get("image_url"), file_id=part.get("file_id"), kind="image"))
        elif kind == "input_file":
            url = part.get("file_data") or part.get("file_url")
            out.append(p.media(url=url, file_id=part.get("file_id")))
        elif kind == "input_audio":
            out.append(p.media(kind="audio"))
        else:
            out.append(p.other(kind))
    return out


def _gemini_content(content: dict, p: Parts, **extra: Any) -> dict:
    parts = _gemini_parts(content.get("parts"), p)
    role = content.get("role") or "user"
    if parts and all(x["type"] == "tool_call_response" for x in parts):
        role = "tool"
    return _message(role, parts, **extra)


def _gemini_parts(items: Any, p: Parts) -> list[dict]:
    out: list[dict] = []
    for part in items if isinstance(items, list) else ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            out.append(p.reasoning(part["text"]) if part.get("thought") else p.text(part["text"]))
        elif isinstance(part.get("inlineData"), dict):
            out.append(p.media(mime=part["inlineData"].get("mimeType")))
        elif isinstance(part.get("fileData"), dict):
            data = part["fileData"]
            out.append(p.media(url=data.get("fileUri"), mime=data.get("mimeType")))
        elif isinstance(part.get("functionCall"), dict):
            call = part["functionCall"]
            out.append(p.tool_call(call.get("id"), call.get("name"), call.get("args")))
        elif isinstance(part.get("functionResponse"), dict):
            response = part["functionResponse"]
            out.append(p.tool_response(response.get("id"), response.get("response")))
        else:
            named = [k for k in part if k not in ("thought", "thoughtSignature")]
            out.append(p.other(named[0] if named else None))
    return out


# -- answers -------------------------------------------------------------------------------------


def _answer(endpoint: str, doc: dict, p: Parts) -> tuple[Any, list[dict]] | None:
    """(response id, output messages) of an answer, None when it is of another shape (an error)."""
    if endpoint in ("chat", "completions") and isinstance(doc.get("choices"), list):
        messages = []
        for choice in doc["choices"]:
            if not isinstance(choice, dict):
                continue
            finish = _finish(CHAT_FINISH, choice.get("finish_reason"))
            if isinstance(choice.get("message"), dict):
                messages.append(_chat_message({"role": "assistant", **choice["message"]}, p, finish_reason=finish))
            else:
                text = choice.get("text")
                parts = [p.text(text)] if isinstance(text, str) and text else []
                messages.append(_message("assistant", parts, finish_reason=finish))
        return doc.get("id"), messages
    if endpoint == "messages" and doc.get("type") == "message":
        reason = ANTHROPIC_STOPS.get(doc.get("stop_reason") or "", doc.get("stop_reason"))
        finish = _finish(CHAT_FINISH, reason)
        return doc.get("id"), [_message("assistant", _anthropic_parts(doc.get("content"), p), finish_reason=finish)]
    if endpoint == "responses" and isinstance(doc.get("output"), list):
        parts = [x for m in _responses_items(doc["output"], p) for x in m["parts"]]
        return doc.get("id"), [_message("assistant", parts, finish_reason=_responses_finish(doc, parts))]
    if endpoint == "generate" and isinstance(doc.get("candidates"), list):
        messages = []
        for candidate in doc["candidates"]:
            if not isinstance(candidate, dict):
                continue
            message = _gemini_content({**_obj(candidate.get("content")), "role": "model"}, p)
            calls = any(x["type"] == "tool_call" for x in message["parts"])
            reason = candidate.get("finishReason")
            if calls and reason in ("STOP", None):
                message["finish_reason"] = "tool_call"
            else:
                reason = GEMINI_FINISH.get(reason, reason) if isinstance(reason, str) else None
                message["finish_reason"] = _finish(CHAT_FINISH, reason)
            messages.append(message)
        return doc.get("responseId"), messages
    return None


def _finish(table: dict[str, str], reason: Any) -> str:
    """The conventions' finish reason (required on every output message): "unknown" when the
    answer names none (a stream that stopped early, or one cut in the trace)."""
    if not isinstance(reason, str) or not reason:
        return "unknown"
    return table.get(reason, reason[:64])


def _responses_finish(doc: dict, parts: list[dict]) -> str:
    status = doc.get("status")
    if status == "completed":
        return "tool_call" if any(x["type"] == "tool_call" for x in parts) else "stop"
    if status == "incomplete":
        reason = _obj(doc.get("incomplete_details")).get("reason")
        return INCOMPLETE.get(reason, "length") if isinstance(reason, str) else "length"
    return "error" if status in ("failed", "cancelled") else "unknown"


# -- caps ----------------------------------------------------------------------------------------


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def fit(messages: list[dict], cap: int) -> str:
    """Messages as JSON of at most ``cap`` characters: the first message and the newest that fit,
    with a message saying how many were left out between them; a single message too large
    for the cap keeps its first parts (and says so)."""
    texts = [dumps(m) for m in messages]
    if sum(len(t) + 1 for t in texts) + 1 <= cap:
        return "[" + ",".join(texts) + "]"
    room = cap - MARKER_ROOM
    head = texts[:1] if len(texts) > 1 and len(texts[0]) < room // 2 else []
    used = sum(len(t) + 1 for t in head)
    tail: list[str] = []
    for text in reversed(texts[len(head) :]):
        if used + len(text) + 1 > room:
            break
        tail.insert(0, text)
        used += len(text) + 1
    if not tail:  # the newest message alone is over the cap: its first parts
        tail = [dumps(_shrunk(messages[-1], room - used - MARKER_ROOM))]
    left_out = len(texts) - len(head) - len(tail)
    middle = []
    if left_out:
        chars = sum(len(t) for t in texts[len(head) : len(head) + left_out])
        note = f"[{left_out} messages ({chars} characters) left out here: the attribute is capped at {cap} characters]"
        role = messages[len(head)].get("role", "user")
        middle = [dumps(_message(role, [Parts.text_part(note)]))]
    out = "[" + ",".join(head + middle + tail) + "]"
    if len(out) > cap:  # cannot happen with the caps above; still never more than the cap
        return dumps([_message("user", [Parts.text_part(f"[{len(messages)} messages left out: too large]")])])
    return out


def _shrunk(message: dict, room: int) -> dict:
    parts, used = [], 0
    for part in message.get("parts") or ():
        size = len(dumps(part)) + 1
        if used + size > room:
            break
        parts.append(part)
        used += size
    left_out = len(message.get("parts") or ()) - len(parts)
    if left_out:
        parts.append(Parts.text_part(f"[{left_out} more parts left out: the attribute is capped]"))
    return {**message, "parts": parts}


def fit_parts(parts: list[dict], cap: int) -> str:
    """System instructions (a list of parts) as JSON of at most ``cap`` characters."""
    return dumps(_shrunk({"parts": parts}, cap - MARKER_ROOM)["parts"])

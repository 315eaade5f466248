"""The Anthropic Messages API for providers that speak only Chat Completions.

A Messages request becomes a Chat Completions request (:func:`to_chat`), which the
provider's OpenAI-dialect chat adapter carries to its native API (Gemini translates
further); the chat answer comes back as a Messages ``message`` (:func:`from_chat`) and a
chat chunk stream as the Messages event stream (:class:`ChatToMessagesStream`). What the
chat shape cannot carry is refused with a 400 naming the field, never dropped.

Field table (Messages → chat):

- ``system`` (string or text blocks) → a system message; ``messages`` text, image (base64
  and url sources), ``document`` (base64 → a chat ``file`` part, text → text), ``tool_use`` and
  ``tool_result`` blocks → user/assistant/tool messages (a ``tool_result`` with ``is_error`` is sent
  as ``"Error: …"``; its images and documents, which a chat tool message cannot hold, follow in the
  user message); ``thinking`` and
  ``redacted_thinking`` blocks of earlier turns stay behind (they belong to Anthropic), except
  the Gemini thought signatures Stockyard packed into a thinking block's ``signature`` (see
  below), which go back onto their tool calls' ``extra_content`` — for a Gemini provider only.
- ``tools`` (``input_schema``) → function tools; ``tool_choice`` auto/any/tool/none →
  auto/required/function/none, ``disable_parallel_tool_use`` → ``parallel_tool_calls``.
- ``max_tokens``, ``stop_sequences`` → ``stop``, ``temperature``, ``top_p``,
  ``metadata.user_id`` → ``user``, ``thinking.budget_tokens`` → ``reasoning_effort`` (``adaptive``
  and ``between_tools`` thinking leave the effort to the model: none is sent), ``output_config``:
  ``format`` (a JSON schema) → ``response_format`` ``json_schema``, ``effort`` → ``reasoning_effort``.
- ``cache_control`` marks (on blocks, or the top-level one) are hints for Anthropic's cache and
  are ignored, as are ``service_tier`` (Anthropic's priority tier; ``auto`` is its default) and
  ``context_management`` (edits Anthropic makes to the context it keeps between turns; Claude Code
  sends it, and a chat provider has no such context: the conversation goes as the client sent it).
- ``top_k`` → the chat ``top_k`` a Gemini provider takes (``generationConfig.topK``; OpenCode sends
  Gemini models 64); refused for the other kinds, whose chat APIs have no such field.
- ``thread`` (a message thread: Anthropic keeps the conversation) → refused as Anthropic refuses a request
  Threads cannot take (``error.details.error_code`` ``thread_unsupported_request``): the SDK then sends the
  whole conversation without it.
- refused: any other field, block or tool type.

Answers: reasoning text (``reasoning_content``) becomes a ``thinking`` block; a tool call's Gemini
thought signature (``extra_content.google.thought_signature``), which Gemini 3 needs back on the
next request, travels in a ``thinking`` block's ``signature`` (``reasoning.pack``: Stockyard's
own, never a signature Anthropic made) just before the ``tool_use`` — in a stream as a
``signature_delta``, as Anthropic sends it. Anthropic clients echo thinking blocks verbatim.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..errors import ANTHROPIC, ANTHROPIC_TYPES, ProxyError, error_type
from ..httpio import json_bytes
from ..pricing import Usage
from .chatshape import RATE_LIMITED, CallOrder, attached_note
from .reasoning import pack, restorable, sign_call, thought_signature, unpack
from .responses import reasoning_text

CHAT_FIELDS = {"temperature": "temperature", "top_p": "top_p", "stop_sequences": "stop"}
KNOWN_FIELDS = {
    "model",
    "messages",
    "system",
    "max_tokens",
    "stream",
    "tools",
    "tool_choice",
    "thinking",
    "metadata",
    "output_config",
    *CHAT_FIELDS,
}
# Fields a provider kind's chat API takes beyond OpenAI's (Gemini samples with top_k too).
KIND_FIELDS = {"gemini": {"top_k"}}
# Hints for Anthropic's cache, capacity and the context it keeps (``context_management``, which
# Claude Code sends with its beta): the chat providers keep no context to edit, nothing to send.
IGNORED_FIELDS = {"cache_control", "service_tier", "context_management"}
# output_config.effort → reasoning_effort
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}
# The longest ``user`` OpenAI's chat API takes (Anthropic's ``metadata.user_id`` may have 256 characters).
CHAT_USER_CAP = 64
# OpenAI's models that take ``reasoning_effort``: its others (gpt-4.1, gpt-4o…) refuse the field
# (400 "Unsupported parameter"), and Claude Code sends every model it does not know an effort.
EFFORT_MODELS = ("o1", "o3", "o4", "gpt-5", "codex", "gpt-oss")
NO_EFFORT_MODELS = ("o1-mini", "o1-preview", "gpt-5-chat")
# Providers whose chat API wants ``max_completion_tokens`` (their reasoning models refuse ``max_tokens``).
COMPLETION_TOKENS_KINDS = {"openai", "azure"}
# chat finish_reason → Messages stop_reason
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",  # a provider's safety stop (Gemini SAFETY, OpenAI's filter)
}
# a chat stream's error code or type → the Anthropic error type a Messages client acts on (Claude Code
# waits and retries an overloaded or rate-limited answer): OpenAI's codes, Gemini's status names
ERROR_TYPES = {
    **dict.fromkeys(RATE_LIMITED, "rate_limit_error"),
    "UNAVAILABLE": "overloaded_error",
    "server_error": "api_error",
}


def unsupported(param: str, what: str) -> ProxyError:
    """A 400 for what the chat shape cannot carry, naming the field."""
    message = f"{param}: {what} is not supported for this provider (it speaks Chat Completions, not Messages)"
    return ProxyError(400, message, param=param, code="unsupported_parameter")


THREAD_UNSUPPORTED = "thread_unsupported_request"


def thread_unsupported() -> ProxyError:
    """The 400 for a message thread (``thread``: Anthropic keeps the conversation and the client sends
    only its new messages), which a chat provider cannot hold, in the shape Anthropic refuses a request
    Threads cannot take: its ``error.details.error_code`` tells the anthropic SDK (its tool runner threads
    by default) to send the whole conversation again without ``thread``, where a plain 400 ended the run."""
    message = (
        "thread: message threads are not supported for this provider (it speaks Chat Completions, not Messages);"
        " send the full conversation without 'thread'"
    )
    return ProxyError(400, message, param="thread", code=THREAD_UNSUPPORTED, details={"error_code": THREAD_UNSUPPORTED})


def invalid(param: str, message: str) -> ProxyError:
    return ProxyError(400, message, param=param, code="invalid_request")


def present(body: dict, key: str) -> bool:
    return body.get(key) is not None


# --------------------------------------------------------------------------- request


def to_chat(body: dict, kind: str = "openai", provider: str | None = None) -> dict:
    """A Messages request body → the Chat Completions body for provider ``provider`` (a name) of ``kind``."""
    if not isinstance(body, dict):
        raise invalid("body", "the request body must be a JSON object")
    if present(body, "thread"):
        raise thread_unsupported()
    for key in body:
        if key not in KNOWN_FIELDS and key not in IGNORED_FIELDS and present(body, key):
            if key not in KIND_FIELDS.get(kind, ()):
                raise unsupported(key, f"the field '{key}'")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model", "'model' must be a non-empty string")
    messages = system_messages(body.get("system"))
    items = body.get("messages")
    if not isinstance(items, list) or not items:
        raise invalid("messages", "'messages' must be a non-empty array")
    if isinstance(items[0], dict) and items[0].get("role") == "system":  # a system message follows a turn
        raise invalid("messages[0].role", "messages[0].role must be 'user' or 'assistant' (system prompt: 'system')")
    for i, item in enumerate(items):
        messages += chat_messages(item, f"messages[{i}]", kind, provider)
    chat: dict = {"model": model, "messages": messages}
    if present(body, "max_tokens"):
        chat["max_completion_tokens" if kind in COMPLETION_TOKENS_KINDS else "max_tokens"] = body["max_tokens"]
    for ours, theirs in CHAT_FIELDS.items():
        if present(body, ours):
            chat[theirs] = body[ours]
    chat.update({key: body[key] for key in KIND_FIELDS.get(kind, ()) if present(body, key)})
    if present(body, "tools"):
        tools = chat_tools(body["tools"])
        if tools:
            chat["tools"] = tools
    if present(body, "tool_choice"):
        chat.update(chat_tool_choice(body["tool_choice"]))
    if present(body, "thinking"):
        chat.update(chat_thinking(body["thinking"]))
    if present(body, "output_config"):
        chat.update(chat_output_config(body["output_config"]))
    if present(body, "metadata"):
        chat.update(chat_metadata(body["metadata"]))
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def system_messages(system: Any, path: str = "system") -> list[dict]:
    """The top-level ``system`` (or a mid-conversation system message's content at ``path``) → a chat system message."""
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise invalid(path, f"'{path}' must be a string or an array of text blocks")
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise invalid(f"{path}[{i}]", f"{path}[{i}] must be a text block")
        texts.append(block["text"])
    return [{"role": "system", "content": "\n\n".join(texts)}] if texts else []


def chat_messages(item: Any, path: str, provider_kind: str = "openai", provider: str | None = None) -> list[dict]:
    """One Messages turn → chat messages: tool results become ``tool`` messages, placed
    first (chat wants them right after the assistant's calls), the rest one user message."""
    if not isinstance(item, dict):
        raise invalid(path, f"{path} must be an object")
    role, content = item.get("role"), item.get("content")
    if role == "system":  # a mid-conversation system message: Claude Code sends one to a model it does not know
        return system_messages(content, f"{path}.content")
    if role not in ("user", "assistant"):
        raise invalid(f"{path}.role", f"{path}.role must be 'user', 'assistant' or 'system'")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise invalid(f"{path}.content", f"{path}.content must be a string or an array of content blocks")
    if role == "assistant":
        return [assistant_message(content, path, provider_kind, provider)]
    tools: list[dict] = []
    parts: list[dict] = []
    for j, block in enumerate(content):
        where = f"{path}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            message, images = tool_message(block, where)
            tools.append(message)
            parts += images
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            parts.append(content_part(block, where))
    out = tools
    if parts:
        if all(p["type"] == "text" for p in parts) and len(parts) == 1:
            out.append({"role": "user", "content": parts[0]["text"]})
        else:
            out.append({"role": "user", "content": parts})
    return out


def content_part(block: Any, path: str) -> dict:
    """A text or image block → a chat content part."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise invalid(f"{path}.text", f"{path}.text must be a string")
        return {"type": "text", "text": block["text"]}
    if kind == "image":
        source = block.get("source") if isinstance(block.get("source"), dict) else {}
        if source.get("type") == "base64" and isinstance(source.get("data"), str):
            media = source.get("media_type") or "image/png"
            return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{source['data']}"}}
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return {"type": "image_url", "image_url": {"url": source["url"]}}
        raise unsupported(f"{path}.source", f"image source type {source.get('type')!r}")
    if kind == "document":
        return document_part(block, path)
    raise unsupported(f"{path}.type", f"content block type {kind!r}")


def document_part(block: dict, path: str) -> dict:
    """A ``document`` block (Claude Code reads a PDF into one): base64 data → a chat ``file`` part
    (its data URL), plain text → a text part; a document by URL or file id has no chat form."""
    source = obj(block.get("source"))
    kind, data = source.get("type"), source.get("data")
    if kind == "text" and isinstance(data, str):
        return {"type": "text", "text": data}
    if kind == "base64" and isinstance(data, str) and isinstance(source.get("media_type"), str):
        file = {"file_data": f"data:{source['media_type']};base64,{data}"}
        if isinstance(block.get("title"), str):
            file["filename"] = block["title"]
        return {"type": "file", "file": file}
    raise unsupported(f"{path}.source", f"document source type {kind!r} (send base64 data or text)")


def assistant_message(content: list, path: str, provider_kind: str = "openai", provider: str | None = None) -> dict:
    """An assistant turn → one chat assistant message. A thinking block whose signature Stockyard
    packed holds Gemini thought signatures: for the provider that made them (``reasoning.restorable``)
    they go back onto the tool calls they came with (``extra_content``); any other thinking stays behind."""
    texts: list[str] = []
    calls: list[dict] = []
    signatures: dict[str, str] = {}
    for j, block in enumerate(content):
        where = f"{path}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise invalid(where, f"{where} needs an 'id' and a 'name'")
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            call = {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}
            if block["id"] in signatures:
                sign_call(call, signatures[block["id"]])
            calls.append(call)
        elif kind == "thinking":
            state = unpack(block.get("signature"))
            if state is not None and restorable(state, provider, provider_kind):
                signatures.update(state["thought_signatures"])
        elif kind == "redacted_thinking":
            continue
        else:
            raise unsupported(f"{where}.type", f"assistant content block type {kind!r}")
    message: dict = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def tool_message(block: dict, path: str) -> tuple[dict, list[dict]]:
    """A ``tool_result`` → the chat ``tool`` message, and its images and documents as user content
    parts (a chat tool message carries text only, so they follow in the user message)."""
    if not isinstance(block.get("tool_use_id"), str):
        raise invalid(f"{path}.tool_use_id", f"{path}.tool_use_id must be a string")
    content = block.get("content")
    images: list[dict] = []
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        pieces = []
        for k, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("image", "document"):
                images.append(content_part(part, f"{path}.content[{k}]"))
            elif kind == "text":
                pieces.append(str(part.get("text") or ""))
            else:
                raise unsupported(f"{path}.content[{k}].type", f"tool_result block type {kind!r}")
        text = "\n".join(pieces) or (attached_note(images) if images else "")
    else:
        raise invalid(f"{path}.content", f"{path}.content must be a string or an array of content blocks")
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}, images


def chat_tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise invalid("tools", "'tools' must be an array")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise invalid(f"tools[{i}]", f"tools[{i}] must be an object")
        if tool.get("type") not in (None, "custom"):
            raise unsupported(f"tools[{i}].type", f"tool type {tool['type']!r} (only custom tools are)")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise invalid(f"tools[{i}].name", f"tools[{i}].name must be a non-empty string")
        fn: dict = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def chat_tool_choice(choice: Any) -> dict:
    kind = choice.get("type") if isinstance(choice, dict) else None
    out: dict = {}
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise unsupported("tool_choice", f"tool_choice {kind!r}")
    if choice.get("disable_parallel_tool_use") and kind != "none":
        out["parallel_tool_calls"] = False
    return out


def reasoning_effort(budget: int) -> str:
    """A thinking budget as a reasoning effort: under 4k tokens low, under 16k medium, else high."""
    return "low" if budget < 4096 else "medium" if budget < 16384 else "high"


def chat_thinking(thinking: Any) -> dict:
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind in ("disabled", "adaptive", "between_tools"):  # the model decides how much it thinks
        return {}
    if kind != "enabled":
        raise unsupported("thinking.type", f"thinking type {kind!r}")
    budget = thinking.get("budget_tokens")
    if type(budget) is not int or budget < 1:
        raise invalid("thinking.budget_tokens", "thinking.budget_tokens must be a positive integer")
    return {"reasoning_effort": reasoning_effort(budget)}


def chat_output_config(config: Any) -> dict:
    """``output_config``: a JSON schema the answer must follow, and how much effort to spend."""
    if not isinstance(config, dict):
        raise invalid("output_config", "'output_config' must be an object")
    out: dict = {}
    for key, value in config.items():
        if value is None:
            continue
        if key == "effort":
            if not isinstance(value, str) or value not in EFFORTS:  # a list or object is no effort (unhashable)
                raise invalid("output_config.effort", f"output_config.effort must be one of {', '.join(EFFORTS)}")
            out["reasoning_effort"] = EFFORTS[value]
        elif key == "format":
            schema = value.get("schema") if isinstance(value, dict) else None
            if not isinstance(value, dict) or value.get("type") != "json_schema" or not isinstance(schema, dict):
                raise invalid("output_config.format", "output_config.format must be {type: json_schema, schema: {…}}")
            out["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
        else:
            raise unsupported(f"output_config.{key}", f"the field output_config.{key}")
    return out


def takes_effort(kind: str, model: str) -> bool:
    """Whether ``model`` at a provider of ``kind`` is sent the ``reasoning_effort`` that ``thinking`` or
    ``output_config.effort`` became: at an ``openai`` provider only its reasoning models (a name not
    known goes without: the effort is a hint, the answer comes either way); elsewhere always."""
    return kind != "openai" or (model.startswith(EFFORT_MODELS) and not model.startswith(NO_EFFORT_MODELS))


def chat_metadata(metadata: Any) -> dict:
    if not isinstance(metadata, dict):
        raise invalid("metadata", "'metadata' must be an object")
    for key in metadata:
        if key != "user_id" and present(metadata, key):
            raise unsupported(f"metadata.{key}", f"the field metadata.{key}")
    user = metadata.get("user_id")
    return {"user": chat_user(user)} if isinstance(user, str) and user else {}


def chat_user(user_id: str) -> str:
    """``metadata.user_id`` as chat's ``user``: as it is up to ``CHAT_USER_CAP`` characters, else its
    SHA-256 in hex (64 characters: still one id per end user). Claude Code's is a JSON object of about
    150 characters, which OpenAI refuses (400 "Invalid 'user': string too long")."""
    return user_id if len(user_id) <= CHAT_USER_CAP else hashlib.sha256(user_id.encode()).hexdigest()


# --------------------------------------------------------------------------- answer


def obj(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def messages_usage(usage: Any) -> dict:
    """Chat usage → Messages usage: Anthropic counts cache reads and writes apart from ``input_tokens``."""
    counts = Usage.from_openai(usage) if isinstance(usage, dict) else Usage()
    return {
        "input_tokens": counts.prompt_tokens - counts.cached_tokens - counts.cache_write_tokens,
        "output_tokens": counts.completion_tokens,
        "cache_creation_input_tokens": counts.cache_write_tokens,
        "cache_read_input_tokens": counts.cached_tokens,
    }


def stop_reason(choice: dict, request: dict, refused: bool = False) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence): a stop sequence is known only where the provider names it
    (vLLM's ``stop_reason``); otherwise a stop is ``end_turn``. An answer that is a refusal (OpenAI's
    ``refusal``, sent as its text) stops with ``refusal``, as Claude's do."""
    finish = choice.get("finish_reason")
    if refused and finish in ("stop", None):
        return "refusal", None
    matched = choice.get("stop_reason")
    sequences = request.get("stop_sequences") or []
    if finish == "stop" and isinstance(matched, str) and matched in sequences:
        return "stop_sequence", matched
    return STOP_REASONS.get(finish or "stop", "end_turn"), None


def tool_input(arguments: Any) -> dict:
    """Tool call arguments as the ``input`` object (a string that is not a JSON object: empty)."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except (ValueError, RecursionError):  # nested past the parser's depth: the provider's, not the client's 400
        return {}
    return value if isinstance(value, dict) else {}


def message_object(message_id: str, model: str, content: list[dict], usage: dict) -> dict:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }


def signature_block(call_id: str, signature: str, provider: str | None = None) -> dict:
    """A thinking block carrying a Gemini thought signature for the tool call ``call_id``, made by ``provider``."""
    packed = pack({"thought_signatures": {call_id: signature}}, provider)
    return {"type": "thinking", "thinking": "", "signature": packed}


def carry_signature(content: list[dict], call_id: str, signature: str, provider: str | None = None) -> None:
    """Put a tool call's thought signature in the thinking block just before its ``tool_use``:
    the reasoning's own when it is the last block and unsigned, else a new one."""
    last = content[-1] if content else None
    if last is not None and last["type"] == "thinking" and not last["signature"]:
        last["signature"] = signature_block(call_id, signature, provider)["signature"]
    else:
        content.append(signature_block(call_id, signature, provider))


def from_chat(chat: dict, request: dict, message_id: str, provider: str | None = None) -> dict:
    """A ``chat.completion`` (from ``provider``, a name) → the Messages ``message`` for the same turn."""
    choices = chat.get("choices")
    choice = obj(choices[0]) if isinstance(choices, list) and choices else {}
    message = obj(choice.get("message"))
    content: list[dict] = []
    thought = reasoning_text(message)
    if thought:
        content.append({"type": "thinking", "thinking": thought, "signature": ""})
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(str(obj(p).get("text") or "") for p in text)
    refusal = message["refusal"] if isinstance(message.get("refusal"), str) else ""
    text = (text if isinstance(text, str) else "") + refusal
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        fn = obj(obj(call).get("function"))
        ident = obj(call).get("id") or f"toolu_{message_id.removeprefix('msg_')}_{len(content)}"
        signature = thought_signature(call)
        if signature:
            carry_signature(content, ident, signature, provider)
        content.append(
            {"type": "tool_use", "id": ident, "name": fn.get("name") or "", "input": tool_input(fn.get("arguments"))}
        )
    served = chat.get("model")
    model = served if isinstance(served, str) else str(request.get("model") or "")
    out = message_object(message_id, model, content, messages_usage(chat.get("usage")))
    out["stop_reason"], out["stop_sequence"] = stop_reason(choice, request, bool(refusal))
    return out


def error_from_chat(status: int, body: bytes) -> tuple[str, str]:
    """(Anthropic error type, message) of an OpenAI-shaped error body."""
    try:
        error = obj(obj(json.loads(body)).get("error"))
    except ValueError:
        error = {}
    message = error.get("message")
    if not isinstance(message, str):
        message = f"the provider answered {status}"
    return error_type(ANTHROPIC, status), message


def stream_error_type(error: dict) -> str:
    """The Anthropic error type of a chat stream's error event: by its code, else its type where
    Anthropic has the same kind, else ``api_error``."""
    for value in (error.get("code"), error.get("type")):
        if isinstance(value, str) and value in ERROR_TYPES:
            return ERROR_TYPES[value]
        if value in ANTHROPIC_TYPES:
            return str(value)
    return "api_error"


# --------------------------------------------------------------------------- stream


def event(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json_bytes({"type": name, **data}) + b"\n\n"


class ChatToMessagesStream:
    """``chat.completion.chunk`` objects → the Messages event stream, one block open at a time:
    thinking, text and each tool call get a block of their own, in the order they arrive."""

    def __init__(self, request: dict, message_id: str, model: str, provider: str | None = None) -> None:
        self.request, self.message_id, self.model = request, message_id, model
        self.provider = provider  # the provider's name, in the thought signatures packed
        self.started = False
        self.index = -1  # the open block's index (-1: none)
        self.open_kind: str | None = None  # "thinking", "text" or "tool"
        self.open_tool: Any = None  # the open tool block's chat tool_calls index
        self.signed = False  # the open thinking block has its signature
        self.choice: dict = {}
        self.order = CallOrder()  # each call's deltas together, in the order the calls began
        self.unnamed: dict[Any, dict] = {}  # chat index → a call whose name has not come yet (what came of it)
        self.refused = False  # the answer is a refusal (OpenAI's ``refusal``)
        self.usage: Any = None
        self.input_estimate = 0  # message_start's input_tokens, before the provider's count
        self.complete = False
        self.ended = False

    def start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        usage = {**messages_usage(None), "input_tokens": self.input_estimate}
        message = message_object(self.message_id, self.model, [], usage)
        return [event("message_start", {"message": message})]

    def close_block(self) -> list[bytes]:
        if self.open_kind is None:
            return []
        self.open_kind, self.open_tool = None, None
        return [event("content_block_stop", {"index": self.index})]

    def open_block(self, kind: str, block: dict) -> list[bytes]:
        out = self.close_block()
        self.index += 1
        self.open_kind, self.signed = kind, False
        return out + [event("content_block_start", {"index": self.index, "content_block": block})]

    def delta(self, delta: dict) -> bytes:
        return event("content_block_delta", {"index": self.index, "delta": delta})

    def feed(self, chunk: dict) -> list[bytes]:
        if self.ended:
            return []
        out = self.start()
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            choice = obj(choice)
            if choice.get("index", 0) != 0:
                continue
            out += self.on_delta(obj(choice.get("delta")))
            if choice.get("finish_reason"):
                self.choice = choice
        return out

    def on_delta(self, delta: dict) -> list[bytes]:
        out: list[bytes] = []
        thought = reasoning_text(delta)
        if thought:
            if self.open_kind != "thinking":
                out += self.open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self.delta({"type": "thinking_delta", "thinking": thought}))
        text = delta.get("content")
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:  # the text of a refusal (the stop reason says it: finish)
            self.refused, text = True, (text if isinstance(text, str) else "") + refusal
        if isinstance(text, str) and text:
            if self.open_kind != "text":
                out += self.open_block("text", {"type": "text", "text": ""})
            out.append(self.delta({"type": "text_delta", "text": text}))
        return out + self.tool_calls(self.order.take(delta.get("tool_calls")))

    def tool_calls(self, calls: list[dict]) -> list[bytes]:
        """Tool-call deltas, each call's together (``CallOrder``): a block for each call, opened once
        its name has come (some servers send a call's id first, its name in a later delta)."""
        out: list[bytes] = []
        for call in calls:
            fn = obj(call.get("function"))
            position = call.get("index", 0)
            arguments = fn.get("arguments") if isinstance(fn.get("arguments"), str) else ""
            if self.open_kind != "tool" or self.open_tool != position:
                waiting = self.unnamed.setdefault(position, {"id": None, "name": None, "arguments": "", "sig": None})
                waiting["id"] = call.get("id") or waiting["id"]
                waiting["name"] = fn.get("name") or waiting["name"]
                waiting["arguments"] += arguments
                waiting["sig"] = thought_signature(call) or waiting["sig"]
                if not waiting["name"]:
                    continue
                del self.unnamed[position]
                out += self.open_tool_block(position, waiting)
                arguments = waiting["arguments"]
            if arguments:
                out.append(self.delta({"type": "input_json_delta", "partial_json": arguments}))
        return out

    def open_tool_block(self, position: Any, call: dict) -> list[bytes]:
        """A ``tool_use`` block for the chat call at ``position`` (its thought signature first, on a thinking block)."""
        out: list[bytes] = []
        ident = call["id"] or f"toolu_{self.message_id.removeprefix('msg_')}_{self.index + 1}"
        if call["sig"]:
            out += self.signature(ident, call["sig"])
        block: dict = {"type": "tool_use", "id": ident, "name": call["name"], "input": {}}
        out += self.open_block("tool", block)
        self.open_tool = position
        return out

    def signature(self, call_id: str, signature: str) -> list[bytes]:
        """A tool call's thought signature, as a ``signature_delta`` on the thinking block just
        before its ``tool_use``: the open one (the reasoning), else a new empty one."""
        out: list[bytes] = []
        if self.open_kind != "thinking" or self.signed:
            out += self.open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        self.signed = True
        packed = signature_block(call_id, signature, self.provider)["signature"]
        return out + [self.delta({"type": "signature_delta", "signature": packed})]

    def finish(self) -> list[bytes]:
        """After the chat stream's end: close the open block, the stop reason and usage, message_stop."""
        if self.ended:
            return []
        out = self.start() + self.tool_calls(self.order.rest()) + self.close_block()
        reason, sequence = stop_reason(self.choice, self.request, self.refused)
        usage = messages_usage(self.usage)
        out.append(
            event("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage})
        )
        out.append(event("message_stop", {}))
        self.ended = self.complete = True
        return out

    def fail(self, message: str, kind: str = "api_error") -> list[bytes]:
        """End a broken stream with an Anthropic ``error`` event."""
        if self.ended:
            return []
        self.ended = True
        return [event("error", {"error": {"type": kind, "message": message}})]

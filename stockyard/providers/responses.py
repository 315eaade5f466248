"""The OpenAI Responses API for providers that speak only Chat Completions.

A Responses request becomes a Chat Completions request (:func:`to_chat`), which the
provider's OpenAI-dialect chat adapter then carries to its native API; the chat answer
comes back as a Responses ``response`` object (:func:`from_chat`) and a chat stream as
the Responses event stream (:class:`ChatToResponsesStream`). What the chat shape cannot
carry is refused with a 400 naming the field, never dropped.

A custom (freeform) tool — Codex CLI's ``apply_patch`` — goes as a function taking its text as one
string, ``input`` (its grammar in the description, for the model to follow); a call of it comes back
as a ``custom_tool_call`` item with that text, and ``custom_tool_call`` / ``custom_tool_call_output``
items in ``input`` go back as the function call and its result.

The provider's opaque reasoning state (Anthropic's thinking blocks, Gemini's thought signatures:
``reasoning.py``) comes back in a ``reasoning`` item's ``encrypted_content``, before the
``function_call`` items; a reasoning item that holds Stockyard's state, in ``input`` or in a
stored conversation, puts it back on the chat messages (``thinking_blocks``, a tool call's
``extra_content``) of a request to the provider that made it (:func:`reasoning.restorable`).

An image the model drew (a chat answer's ``images``: Gemini's image models, OpenRouter's) comes back as
OpenAI's item for a generated image, ``image_generation_call`` (its base64 as ``result``), where the model
drew it among the text (the image's ``text_offset``); one sent back goes to a Gemini provider as the
model's own image, and is left out for the others (their chat APIs take no image from the assistant).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from functools import cached_property
from typing import Any

from ..errors import ProxyError
from ..httpio import json_bytes
from ..pricing import Usage
from ..toolchoice import allowed_entries
from . import compaction
from .chatshape import ALLOWED_MODES, RATE_LIMITED, CallOrder, attached_note, invalid_choice
from .reasoning import pack, restorable, sign_call, signatures_of, thinking_blocks, thought_signature, unpack

# Request fields the caller handles (stored state, trace) and that never go upstream.
CALLER_FIELDS = {
    "store",
    "previous_response_id",
    "include",
    "truncation",
    "metadata",
    "client_metadata",
    "stream_options",
    "background",
    "conversation",  # Stockyard's: its items are already in ``input`` (conversations.Conversations.join)
}
# Request fields copied into the chat request unchanged (both APIs spell them alike).
SAME_FIELDS = (
    "temperature",
    "top_p",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
    "service_tier",
)
# Hints a chat provider has nothing to do with: ``context_management``'s compaction entries ask OpenAI
# to compact the context once it passes a threshold (the OpenAI Agents SDK's ModelSettings); the
# conversation goes whole, as sent, as under that threshold (``check_context_management``).
IGNORED_FIELDS = {"context_management"}
TRANSLATED_FIELDS = {
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "text",
    "reasoning",
    "max_output_tokens",
    "parallel_tool_calls",
    "stream",
}
KNOWN_FIELDS = CALLER_FIELDS | TRANSLATED_FIELDS | IGNORED_FIELDS | set(SAME_FIELDS)
# ``include`` values a translated answer cannot honour.
REFUSED_INCLUDES = {"message.output_text.logprobs"}
FUNCTION_TOOL_FIELDS = {"type", "name", "description", "parameters", "strict"}
# OpenAI's web search tools: they become the chat body's ``web_search_options`` (Anthropic's web
# search tool, for Claude), and the searches come back as ``web_search_call`` items.
WEB_SEARCH_TOOLS = ("web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11")
WEB_SEARCH_FIELDS = {"type", "search_context_size", "user_location", "external_web_access", "search_content_types"}
CUSTOM_TOOL_FIELDS = {"type", "name", "description", "format"}
# A namespace tool (Codex CLI's ``multi_agent_v1``, its MCP servers) groups function and custom tools:
# chat has no namespaces, so each becomes a chat function named ``<namespace>__<name>`` (:func:`function_name`),
# and a call of one comes back as the item OpenAI makes, its ``name`` and ``namespace`` apart.
NAMESPACE_TOOL_FIELDS = {"type", "name", "description", "tools"}
NAMESPACE_JOIN = "__"
# A function name every provider Stockyard translates for takes: Claude ``^[a-zA-Z0-9_-]{1,64}$``,
# Gemini a letter or ``_`` first (its ``.`` and ``:`` are Claude's 400), OpenAI's chat at most 64.
CHAT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")
NAME_DIGEST = 10  # hex characters of the digest that ends a joined name cut to fit
NAME_ROOM = 64 - 1 - NAME_DIGEST  # what is left of the name before ``_<digest>``


def function_name(namespace: str, name: str) -> str:
    """The chat function name a tool goes under: its own name, or ``<namespace>__<name>`` for a
    namespace's tool (namespace ``""``: none), when every provider takes it. Else (over 64 characters:
    an MCP server's tools; or a character Claude or Gemini refuses: ``docs.search``, a digit first) as
    much of it as fits, in the characters they take, the tool's name kept before the namespace's, then
    ``_`` and a digest of the two: the same name in every turn, never a provider's 400 (the client's
    name comes back in its calls: :attr:`Declared.client_names`)."""
    plain = f"{namespace}{NAMESPACE_JOIN}{name}" if namespace else name
    if CHAT_NAME.fullmatch(plain):
        return plain
    pair = json.dumps([namespace, name], ensure_ascii=False).encode()  # a lone surrogate: the 400 it always was
    digest = hashlib.sha256(pair).hexdigest()[:NAME_DIGEST]
    head, tail = NOT_IN_NAME.sub("_", namespace), NOT_IN_NAME.sub("_", name)
    if not namespace:
        return f"{(tail if CHAT_NAME.match(tail) else '_' + tail)[:NAME_ROOM]}_{digest}"
    if not CHAT_NAME.match(head):  # a digit or ``-`` first: Gemini's 400
        head = "_" + head
    tail = tail[: NAME_ROOM - len(NAMESPACE_JOIN) - 8]  # eight characters of the namespace at least
    head = head[: NAME_ROOM - len(NAMESPACE_JOIN) - len(tail)]
    return f"{head}{NAMESPACE_JOIN}{tail}_{digest}"


# A tool search the client runs (Codex CLI's ``tool_search``, for a model its catalog knows) is a chat
# function of that name; a call of it comes back as a ``tool_search_call`` item, and the tools a
# ``tool_search_output`` item loads join the chat tools of the requests that carry it.
TOOL_SEARCH = "tool_search"
TOOL_SEARCH_FIELDS = {"type", "execution", "description", "parameters"}
CUSTOM_INPUT = "input"  # the one string parameter a custom tool's function takes
CUSTOM_PARAMETERS = {
    "type": "object",
    "properties": {CUSTOM_INPUT: {"type": "string", "description": "the tool's input, as free text"}},
    "required": [CUSTOM_INPUT],
    "additionalProperties": False,
}
MESSAGE_ROLES = {"user", "assistant", "system", "developer"}
TOOL_OUTPUTS = ("function_call_output", "custom_tool_call_output")
IMAGE_DETAILS = {"auto", "low", "high"}
IMAGE_CALL = "image_generation_call"
# an image's media type → the ``output_format`` OpenAI names it by (the SDK's literal), and back
OUTPUT_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/svg+xml": "svg",
}
MEDIA_TYPES = {fmt: mime for mime, fmt in OUTPUT_FORMATS.items()}
# chat finish_reason → Responses incomplete_details.reason
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
# The codes a Responses ``error`` object may carry; others are reported as server_error.
ERROR_CODES = {"server_error", "rate_limit_exceeded", "invalid_prompt"}


def stream_error_code(error: dict) -> str:
    """The ``response.failed`` code of a chat stream's error: ``rate_limit_exceeded`` for a provider's
    rate limit (Codex waits and retries it), else ``server_error``."""
    limited = error.get("code") in RATE_LIMITED or error.get("type") in RATE_LIMITED
    return "rate_limit_exceeded" if limited else "server_error"


def unsupported(param: str, what: str) -> ProxyError:
    """A 400 for what the chat shape cannot carry, naming the field."""
    message = f"{param}: {what} is not supported for this provider (it speaks Chat Completions, not Responses)"
    return ProxyError(400, message, param=param, code="unsupported_parameter")


def invalid(param: str, message: str) -> ProxyError:
    return ProxyError(400, message, param=param, code="invalid_request")


def check_context_management(value: Any) -> None:
    """Compaction entries are hints, not sent; any other kind of context management is refused by name."""
    if not isinstance(value, list):
        raise invalid("context_management", "'context_management' must be an array")
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or entry.get("type") != "compaction":
            raise unsupported(f"context_management[{i}].type", "context management other than compaction")


def obj(value: Any) -> dict:
    """``value`` if it is a JSON object, else an empty one (provider output of an odd shape)."""
    return value if isinstance(value, dict) else {}


def present(body: dict, key: str) -> bool:
    """A field counts as given unless absent or null (clients send null for "default")."""
    return body.get(key) is not None


# --------------------------------------------------------------------------- request


def to_chat(body: dict, history: list[dict] | None = None, provider: str | None = None, kind: str = "openai") -> dict:
    """A Responses request body → the Chat Completions body for the same turn, for provider
    ``provider`` (a name) of ``kind``: the reasoning state packed in reasoning items goes back
    only to the provider that made it (``reasoning.restorable``).

    ``history`` holds the stored conversation (input and output items of earlier turns),
    placed before this turn's ``input``. ``store``, ``previous_response_id``, ``include``,
    ``truncation`` and ``metadata`` are the caller's and do not go upstream."""
    if not isinstance(body, dict):
        raise invalid("body", "the request body must be a JSON object")
    for key in body:
        if key not in KNOWN_FIELDS and present(body, key):
            raise unsupported(key, f"the field '{key}'")
    if present(body, "context_management"):
        check_context_management(body["context_management"])
    if body.get("background"):
        raise unsupported("background", "background mode")
    include = body.get("include") or []
    if not isinstance(include, list) or not all(isinstance(value, str) for value in include):
        raise invalid("include", "'include' must be an array of strings")
    for value in include:
        if value in REFUSED_INCLUDES:
            raise unsupported("include", f"include {value!r}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model", "'model' must be a non-empty string")
    messages = instructions_messages(body.get("instructions"))
    messages += chat_messages(history or [], "previous_response_id", provider, kind)
    if not present(body, "input") and not history:
        raise invalid("input", "'input' is required")
    trigger = compaction.triggered(body)  # the trigger is the summarization instruction (ask_summary)
    messages += chat_messages(body["input"][:-1] if trigger else body.get("input") or [], "input", provider, kind)
    if not messages:
        raise invalid("input", "'input' must not be empty")
    chat: dict = {"model": model, "messages": messages}
    declared = Declared(body, history)
    loaded = searched_tools(history, body.get("input"))
    if present(body, "tools") or loaded:
        tools = chat_tools(body.get("tools") or []) + chat_tools(loaded, "tool_search_output.tools")
        if tools:
            declared.one_name_each()
            tools = once_each(tools)
            chat["tools"] = tools
            if present(body, "parallel_tool_calls"):
                chat["parallel_tool_calls"] = body["parallel_tool_calls"]
        search = web_search_options(body.get("tools") or [])
        if search is not None:
            chat["web_search_options"] = search
    allowed = allowed_entries(body.get("tool_choice"))
    if allowed is not None:
        allow_only(chat, body["tool_choice"].get("mode"), allowed, declared)
    elif present(body, "tool_choice"):
        chat["tool_choice"] = chat_tool_choice(body["tool_choice"], declared)
    if present(body, "text"):
        chat.update(chat_text(body["text"]))
    if present(body, "reasoning"):
        chat.update(chat_reasoning(body["reasoning"]))
    if present(body, "max_output_tokens"):
        chat["max_completion_tokens"] = body["max_output_tokens"]
    for key in SAME_FIELDS:
        if present(body, key):
            chat[key] = body[key]
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return compaction.ask_summary(chat) if trigger else chat


def instructions_messages(instructions: Any) -> list[dict]:
    if instructions is None or instructions == "":
        return []
    if not isinstance(instructions, str):
        raise invalid("instructions", "'instructions' must be a string")
    return [{"role": "system", "content": instructions}]


def chat_messages(items: Any, where: str, provider: str | None = None, provider_kind: str = "openai") -> list[dict]:
    """Responses input (a string or a list of items) → chat messages."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise invalid(where, f"'{where}' must be a string or an array of items")
    out: list[dict] = []
    state: dict | None = None  # reasoning state of a reasoning item, for the assistant items after it
    attached: list[dict] = []  # images and files of the tool outputs just read: one user message after them
    for i, item in enumerate(items):
        path = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise invalid(path, f"{path} must be an object")
        kind = "item_reference" if is_reference(item) else item.get("type") or "message"
        if kind == "web_search_call":
            continue  # what the search found is in the answer's text; the chat shape has no place for it
        if attached and kind not in (*TOOL_OUTPUTS, "reasoning"):  # a reasoning item adds no message
            out.append({"role": "user", "content": attached})  # the tool outputs' files, before what follows
            attached = []
        if kind == IMAGE_CALL:
            message = image_message(item, path)
            if provider_kind == "gemini":  # only Gemini takes an image back as the model's own
                out.append(message)
            continue
        if kind == "message":
            message = chat_message(item, path)
            if message["role"] == "assistant":
                restore_thinking(message, state)
            else:
                state = None
            out.append(message)
        elif kind == "function_call":
            add_tool_call(out, item, path, state)
        elif kind == "custom_tool_call":
            add_tool_call(out, custom_as_function(item, path), path, state)
        elif kind == "tool_search_call":
            add_tool_call(out, search_as_function(item), path, state)
        elif kind == "tool_search_output":
            state = None
            out.append(search_message(item, path))
        elif kind in TOOL_OUTPUTS:
            state = None
            message, parts = tool_message(item, path)
            out.append(message)
            attached += parts
        elif kind == compaction.ITEM:  # a summary Stockyard made, read as a user message (compaction.py)
            state = None
            out.append(compaction.summary_message(item, path))
        elif kind == compaction.TRIGGER:  # a stored turn's own trigger; in this input, only the last item is one
            if where == "input":
                raise invalid(f"{path}.type", f"{path}: a compaction_trigger item must be the last input item")
        elif kind == "item_reference":  # one Stockyard keeps was put in its place (conversations.py)
            raise unknown_item(path, item.get("id"))
        elif kind == "reasoning":
            # the reasoning text is not sent back upstream; the state Stockyard packed is, to
            # the provider that made it
            found = unpack(item.get("encrypted_content"))
            if found is not None and restorable(found, provider, provider_kind):
                if state is not None:
                    found["thinking_blocks"] = state["thinking_blocks"] + found["thinking_blocks"]
                    found["thought_signatures"] = {**state["thought_signatures"], **found["thought_signatures"]}
                state = found
        else:
            raise unsupported(f"{path}.type", f"input item type {kind!r}")
    if attached:
        out.append({"role": "user", "content": attached})
    return out


def chat_message(item: dict, path: str) -> dict:
    role = item.get("role")
    if role not in MESSAGE_ROLES:
        raise invalid(
            f"{path}.role", f"message role {role!r} is not supported; use user, assistant, system or developer"
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise invalid(f"{path}.content", f"{path}.content must be a string or an array of content parts")
    parts = [chat_part(part, f"{path}.content[{j}]") for j, part in enumerate(content)]
    if role != "user" and all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def chat_part(part: Any, path: str) -> dict:
    """One Responses content part → a chat content part."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text"):
        if not isinstance(part.get("text"), str):
            raise invalid(f"{path}.text", f"{path}.text must be a string")
        return {"type": "text", "text": part["text"]}
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.get("refusal") or ""}
    if kind == "input_image":
        return image_part(part, path)
    if kind == "input_file":
        return file_part(part, path)
    raise unsupported(f"{path}.type", f"content part type {kind!r}")


def image_part(part: dict, path: str) -> dict:
    if present(part, "file_id"):
        raise unsupported(f"{path}.file_id", "an image by file_id (send image_url)")
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise invalid(f"{path}.image_url", f"{path}.image_url must be a URL or a data URL")
    image: dict = {"url": url}
    if part.get("detail") in IMAGE_DETAILS:
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def file_part(part: dict, path: str) -> dict:
    """An inline file: an image data URL becomes an image part, any other a chat ``file`` part."""
    for key in ("file_id", "file_url"):
        if present(part, key):
            raise unsupported(f"{path}.{key}", f"a file by {key} (send file_data)")
    data = part.get("file_data")
    if not isinstance(data, str) or not data.startswith("data:") or ";base64," not in data:
        raise invalid(f"{path}.file_data", f"{path}.file_data must be a base64 data URL (data:<type>;base64,<data>)")
    if data.startswith("data:image/"):
        return {"type": "image_url", "image_url": {"url": data}}
    file = {"file_data": data}
    if isinstance(part.get("filename"), str):
        file["filename"] = part["filename"]
    return {"type": "file", "file": file}


def image_message(item: dict, path: str) -> dict:
    """An ``image_generation_call`` item sent back → the assistant message of its image (a data URL
    of its ``output_format``; PNG when it names none), which Gemini takes as the model's image part."""
    result = item.get("result")
    if not isinstance(result, str) or not result:
        raise invalid(f"{path}.result", f"{path}.result must be the image, base64-encoded")
    named = item.get("output_format")
    mime = MEDIA_TYPES.get(named, "image/png") if isinstance(named, str) else "image/png"
    return {
        "role": "assistant",
        "content": [{"type": "image_url", "image_url": {"url": f"data:{mime};base64,{result}"}}],
    }


def restore_thinking(message: dict, state: dict | None) -> None:
    """The thinking blocks of a reasoning item onto the assistant message after it (once)."""
    if state is not None and state["thinking_blocks"]:
        message.setdefault("thinking_blocks", []).extend(state["thinking_blocks"])
        state["thinking_blocks"] = []


def add_tool_call(out: list[dict], item: dict, path: str, state: dict | None = None) -> None:
    """A ``function_call`` item joins the assistant message before it (one chat turn); the
    reasoning state before it goes back on it (its thought signature) and on that message."""
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str):
            raise invalid(f"{path}.{key}", f"{path}.{key} must be a string")
    namespace = item.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise invalid(f"{path}.namespace", f"{path}.namespace must be a string")
    name = function_name(namespace or "", item["name"])
    call = {"id": item["call_id"], "type": "function", "function": {"name": name, "arguments": item["arguments"]}}
    signature = (state or {}).get("thought_signatures", {}).get(item["call_id"])
    if signature:
        sign_call(call, signature)
    if out and out[-1]["role"] == "assistant":
        out[-1].setdefault("tool_calls", []).append(call)
    else:
        out.append({"role": "assistant", "content": None, "tool_calls": [call]})
    restore_thinking(out[-1], state)


def custom_as_function(item: dict, path: str) -> dict:
    """A ``custom_tool_call`` item as the ``function_call`` the provider made: its text as ``input``."""
    if not isinstance(item.get("input"), str):
        raise invalid(f"{path}.input", f"{path}.input must be a string")
    return {**item, "arguments": json.dumps({CUSTOM_INPUT: item["input"]}, ensure_ascii=False)}


def search_as_function(item: dict) -> dict:
    """A ``tool_search_call`` item as the ``tool_search`` function call the provider made."""
    arguments = item.get("arguments")
    text = arguments if isinstance(arguments, str) else json.dumps(arguments or {}, ensure_ascii=False)
    return {**item, "name": TOOL_SEARCH, "arguments": text}


def search_message(item: dict, path: str) -> dict:
    """A ``tool_search_output`` item → the ``tool`` message answering the call: the names of the tools
    it loaded (the tools themselves join the request's chat tools: :func:`searched_tools`)."""
    if not isinstance(item.get("call_id"), str):
        raise invalid(f"{path}.call_id", f"{path}.call_id must be a string")
    names = [name for name, _, _ in request_tools({"tools": item.get("tools")})]
    found = ", ".join(names) if names else "none"
    return {"role": "tool", "tool_call_id": item["call_id"], "content": f"tools loaded: {found}"}


def searched_tools(*item_lists: Any) -> list:
    """The tools the ``tool_search_output`` items among these loaded: deferred no more (a deferred
    tool in the request's own tools stays a 400: chat would show it to the model from the start)."""
    out: list = []
    for items in item_lists:
        for item in items if isinstance(items, list) else []:
            found = item.get("tools") if isinstance(item, dict) and item.get("type") == "tool_search_output" else None
            out += [undeferred(tool) for tool in found] if isinstance(found, list) else []
    return out


def undeferred(tool: Any) -> Any:
    """A loaded tool without its ``defer_loading`` (its namespace's tools too)."""
    if not isinstance(tool, dict):
        return tool
    out = {k: v for k, v in tool.items() if k != "defer_loading"}
    if isinstance(out.get("tools"), list):
        out["tools"] = [undeferred(member) for member in out["tools"]]
    return out


def tool_message(item: dict, path: str) -> tuple[dict, list[dict]]:
    """A tool output item → the chat ``tool`` message, and its images and files as user content
    parts: a chat tool message carries text only, so they follow the run of tool messages in one
    user message (Codex's ``view_image`` answers with an ``input_image``)."""
    if not isinstance(item.get("call_id"), str):
        raise invalid(f"{path}.call_id", f"{path}.call_id must be a string")
    output = item.get("output")
    attached: list[dict] = []
    if isinstance(output, list):
        texts = []
        for j, part in enumerate(output):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "input_text":
                texts.append({"type": "text", "text": str(part.get("text") or "")})
            elif kind in ("input_image", "input_file"):
                attached.append(chat_part(part, f"{path}.output[{j}]"))
            else:
                raise unsupported(f"{path}.output[{j}].type", f"function_call_output part type {kind!r}")
        output = texts or ([{"type": "text", "text": attached_note(attached)}] if attached else [])
    elif not isinstance(output, str):
        raise invalid(f"{path}.output", f"{path}.output must be a string or an array of content parts")
    return {"role": "tool", "tool_call_id": item["call_id"], "content": output}, attached


def chat_tools(tools: Any, where: str = "tools") -> list[dict]:
    if not isinstance(tools, list):
        raise invalid(where, f"'{where}' must be an array")
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind in WEB_SEARCH_TOOLS:
            continue  # web_search_options (:func:`web_search_options`)
        if kind == "namespace":
            out += namespace_functions(tool, f"{where}[{i}]")
        elif kind in ("function", "custom"):
            out.append({"type": "function", "function": chat_function(tool, f"{where}[{i}]")})
        elif kind == TOOL_SEARCH:
            out.append({"type": "function", "function": search_function(tool, f"{where}[{i}]")})
        else:
            raise unsupported(
                f"{where}[{i}].type",
                f"tool type {kind!r} (function, custom, namespace, client tool_search and web search tools are)",
            )
    return out


def search_function(tool: dict, path: str) -> dict:
    """A tool search the client runs → the chat function ``tool_search`` (a search the server would
    run has no provider to run it: a 400)."""
    if tool.get("execution") != "client":
        raise unsupported(f"{path}.execution", f"a tool search run by the server ({tool.get('execution')!r})")
    for key in tool:
        if key not in TOOL_SEARCH_FIELDS and present(tool, key):
            raise unsupported(f"{path}.{key}", f"tool_search field {key!r}")
    fn: dict = {"name": TOOL_SEARCH, "parameters": obj(tool.get("parameters")) or {"type": "object", "properties": {}}}
    if isinstance(tool.get("description"), str) and tool["description"]:
        fn["description"] = tool["description"]
    return fn


def chat_function(tool: dict, path: str, namespace: str = "") -> dict:
    """A function or custom tool (of ``namespace``, ``""`` for none) → the chat ``function`` for it,
    under :func:`function_name`."""
    kind = tool["type"]
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise invalid(f"{path}.name", f"{path}.name must be a non-empty string")
    fields = FUNCTION_TOOL_FIELDS if kind == "function" else CUSTOM_TOOL_FIELDS
    for key in tool:
        if key not in fields and present(tool, key):
            raise unsupported(f"{path}.{key}", f"{kind} tool field {key!r}")
    if kind == "custom":
        fn = custom_function(tool, path)
    else:
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if present(tool, k)}
    fn["name"] = function_name(namespace, tool["name"])
    return fn


def namespace_functions(tool: dict, path: str) -> list[dict]:
    """A namespace tool → a chat function for each of its tools, named ``<namespace>__<name>``,
    the namespace's description before each one's own."""
    for key in tool:
        if key not in NAMESPACE_TOOL_FIELDS and present(tool, key):
            raise unsupported(f"{path}.{key}", f"namespace tool field {key!r}")
    namespace, inner = tool.get("name"), tool.get("tools")
    if not isinstance(namespace, str) or not namespace:
        raise invalid(f"{path}.name", f"{path}.name must be a non-empty string")
    if not isinstance(inner, list):
        raise invalid(f"{path}.tools", f"{path}.tools must be an array")
    about = tool.get("description") if isinstance(tool.get("description"), str) else ""
    out = []
    for j, member in enumerate(inner):
        where = f"{path}.tools[{j}]"
        if not isinstance(member, dict) or member.get("type") not in ("function", "custom"):
            kind = member.get("type") if isinstance(member, dict) else None
            raise unsupported(f"{where}.type", f"namespace member type {kind!r} (function and custom tools are)")
        fn = chat_function(member, where, namespace)
        described = [text for text in (about, fn.get("description")) if text]
        if described:
            fn["description"] = "\n\n".join(described)
        out.append({"type": "function", "function": fn})
    return out


# A trace note for a request whose cached-only web search was left out.
CACHED_SEARCH_LEFT_OUT = (
    "web search left out: the tool asks for cached results only (external_web_access: false, Codex CLI's "
    'default), which no translated provider can keep to (Claude searches live); Codex: web_search = "live"'
)


def cached_search_only(tools: Any) -> bool:
    """A web search tool that may not reach the live web (Codex CLI's default ``web_search =
    "cached"``: OpenAI's index only). Claude's search is live and Gemini has none here, so on a
    translated provider it is left out, noted in the trace: the model answers without searching,
    which keeps to what the client allowed, instead of a 400 on every request of Codex's default
    configuration."""
    return any(tool.get("external_web_access") is False for _, tool in web_search_tools(tools))


def web_search_tools(tools: Any) -> list[tuple[int, dict]]:
    """The request's web search tools, with their places in ``tools``."""
    return [(i, t) for i, t in enumerate(listed(tools)) if isinstance(t, dict) and t.get("type") in WEB_SEARCH_TOOLS]


def web_search_options(tools: list) -> dict | None:
    """A web search tool → chat ``web_search_options`` (None without one): its
    ``search_context_size``, and its ``user_location`` as chat nests it; ``filters`` and any
    other field are a 400 naming them, as is a second web search tool."""
    found = web_search_tools(tools)
    if not found:
        return None
    if len(found) > 1:
        raise unsupported(f"tools[{found[1][0]}]", "a second web search tool")
    i, tool = found[0]
    for key in tool:
        if key not in WEB_SEARCH_FIELDS and present(tool, key):
            raise unsupported(f"tools[{i}].{key}", f"web search tool field {key!r}")
    if tool.get("external_web_access") is False:  # left out: see cached_search_only
        return None
    kinds = tool.get("search_content_types")
    if kinds is not None and (not isinstance(kinds, list) or "text" not in kinds):  # results may be text: Claude's are
        raise unsupported(f"tools[{i}].search_content_types", "a web search whose results may not be text")
    options: dict = {}
    if present(tool, "search_context_size"):
        options["search_context_size"] = tool["search_context_size"]
    location = tool.get("user_location")
    if location is not None:
        if not isinstance(location, dict) or location.get("type") != "approximate":
            raise unsupported(f"tools[{i}].user_location", "a user_location that is not approximate")
        place = {k: v for k, v in location.items() if k != "type" and v is not None}
        options["user_location"] = {"type": "approximate", "approximate": place}
    return options


def custom_function(tool: dict, path: str) -> dict:
    """A custom tool as a chat function: chat has no freeform tools, so the text is one string
    argument, and the format's grammar goes in the description for the model to follow."""
    description = tool.get("description") if isinstance(tool.get("description"), str) else ""
    fmt = obj(tool.get("format"))
    kind = fmt.get("type")
    if kind == "grammar":
        if not isinstance(fmt.get("definition"), str) or fmt.get("syntax") not in ("lark", "regex"):
            raise invalid(f"{path}.format", f"{path}.format needs a 'syntax' (lark or regex) and a 'definition'")
        grammar = f"The input must follow this {fmt['syntax']} grammar:\n{fmt['definition']}"
        description = f"{description}\n\n{grammar}" if description else grammar
    elif present(tool, "format") and kind != "text":
        raise unsupported(f"{path}.format.type", f"custom tool format {kind!r}")
    fn: dict = {"name": tool["name"], "parameters": CUSTOM_PARAMETERS}
    if description:
        fn["description"] = description
    return fn


def request_tools(request: dict, history: list | None = None) -> list[tuple[str, str, dict]]:
    """The request's function and custom tools as (chat function name, namespace, tool): each under
    its :func:`function_name` (namespace "" for a tool of none). With
    the tools the ``tool_search_output`` items of ``history`` (a stored conversation) or ``input`` loaded."""
    tools = request.get("tools")
    out = []
    for tool in [*(tools if isinstance(tools, list) else []), *searched_tools(history, request.get("input"))]:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            continue
        if tool.get("type") == "namespace" and isinstance(tool.get("tools"), list):
            ns = tool["name"]
            out += [
                (function_name(ns, t["name"]), ns, t)
                for t in tool["tools"]
                if isinstance(t, dict) and isinstance(t.get("name"), str)
            ]
        else:
            out.append((function_name("", tool["name"]), "", tool))
    return out


def once_each(tools: list[dict]) -> list[dict]:
    """The chat functions without a second of one name (:meth:`Declared.one_name_each` found it the same tool):
    Claude and Gemini refuse two of one name."""
    names: set[str] = set()
    out = []
    for tool in tools:
        if tool["function"]["name"] not in names:
            names.add(tool["function"]["name"])
            out.append(tool)
    return out


def tool_named(which: tuple[str, str, str]) -> str:
    """A tool as an error message names it: its name, and its namespace's."""
    ns, name, kind = which
    return f"the {str(kind)[:60]} tool {str(name)[:100]!r}" + (f" of namespace {str(ns)[:100]!r}" if ns else "")


def searches(request: dict) -> bool:
    """Whether the request offers a tool search the client runs: a ``tool_search`` call is its."""
    tools = request.get("tools")
    found = tools if isinstance(tools, list) else []
    return any(isinstance(t, dict) and t.get("type") == TOOL_SEARCH and t.get("execution") == "client" for t in found)


def custom_input(arguments: str) -> str:
    """A custom tool's text from the function arguments the provider wrote (as written when they
    are not the one-string object the tool was given as)."""
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):  # nested past the parser's depth: the provider's, not the client's 400
        return arguments
    text = value.get(CUSTOM_INPUT) if isinstance(value, dict) else None
    return text if isinstance(text, str) else arguments


def chat_tool_choice(choice: Any, declared: Declared) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    named = isinstance(choice, dict) and isinstance(choice.get("name"), str)
    if named and choice.get("type") in ("function", "custom"):
        return {"type": "function", "function": {"name": chosen_function(choice, declared)}}
    kind = choice.get("type") if isinstance(choice, dict) else choice
    raise unsupported("tool_choice", f"tool_choice {kind!r}")


def chosen_function(choice: dict, declared: Declared) -> str:
    """The chat function a named ``tool_choice`` forces: the one the tool it names (``name``, and
    ``namespace`` for a namespace's tool, as its calls name it) was declared under. A tool the request
    does not declare is a 400 here: the provider's own would name a function the client never sent."""
    namespace = choice.get("namespace") or ""
    if not isinstance(namespace, str):
        raise invalid_choice("tool_choice.namespace", "tool_choice.namespace must be a string")
    found = declared.by_tool.get((namespace, choice["name"]))
    if found:
        return found[0]
    which = f"{str(choice['name'])[:100]!r}" + (f" of namespace {str(namespace)[:100]!r}" if namespace else "")
    raise invalid_choice("tool_choice", f"tool_choice: the request declares no function or custom tool {which}")


def allow_only(chat: dict, mode: Any, entries: list, declared: Declared) -> None:
    """An ``allowed_tools`` tool_choice (``mode`` auto or required, ``entries`` naming tools as the request
    declares them: :func:`toolchoice.allowed_entries`) → the chat API's, naming the functions they went as;
    the adapters of Claude and Gemini offer the model only those (``chatshape.allowed_tools``). A web search
    the list leaves out is not offered either; a list of the web search alone leaves the functions out."""
    if mode not in ALLOWED_MODES:
        raise invalid_choice("tool_choice.mode", "tool_choice.mode must be auto or required")
    if not entries:
        raise invalid_choice("tool_choice.tools", "tool_choice.tools must list the tools the model may call")
    names: dict[str, None] = {}  # in the order allowed, each once
    search = False
    for i, entry in enumerate(entries):
        found = declared.allowed(entry)
        if found is None:
            which = f"tool_choice.tools[{i}]"
            raise invalid_choice(which, f"{which}: the request declares no tool {allowed_named(entry)}")
        names.update(dict.fromkeys(found))
        search = search or not found
    if not search:
        chat.pop("web_search_options", None)
    if names:
        tools = [{"type": "function", "function": {"name": name}} for name in names]
        chat["tool_choice"] = {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": tools}}
    else:
        chat.pop("tools", None)
        chat.pop("parallel_tool_calls", None)
        chat["tool_choice"] = mode


class Declared:
    """The request's function and custom tools (and those its ``tool_search_output`` items loaded) and the chat
    functions they go as: the one way from its tools to chat names, read once per translation (naming takes a
    digest for some: read once per use, thousands of tools were minutes of CPU). ``to_chat`` checks the names
    and translates ``tool_choice`` by it, ``from_chat`` and the stream name calls back by it. Each table is
    made when first asked for, at the step that read the tools before (a lone surrogate's 400 there)."""

    def __init__(self, request: dict, history: list | None) -> None:
        self.request, self.history = request, history
        self.search = searches(request)  # a ``tool_search`` call is the client's

    @cached_property
    def functions(self) -> list[tuple[str, str, dict]]:
        """(chat function name, namespace, tool) for each tool: :func:`request_tools`."""
        return request_tools(self.request, self.history)

    @cached_property
    def by_tool(self) -> dict[tuple[str, str], list[str]]:
        """(namespace, name) → its chat functions (``""``: no namespace; a tool loaded twice is two)."""
        out: dict[tuple[str, str], list[str]] = {}
        for chat, ns, tool in self.functions:
            out.setdefault((ns, tool["name"]), []).append(chat)
        return out

    @cached_property
    def by_namespace(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for chat, ns, _ in self.functions:
            if ns:
                out.setdefault(ns, []).append(chat)
        return out

    @cached_property
    def custom(self) -> set[str]:
        """The custom tools' chat names: their calls come back as ``custom_tool_call`` items."""
        return {chat for chat, _, tool in self.functions if tool.get("type") == "custom"}

    @cached_property
    def client_names(self) -> dict[str, tuple[str, str]]:
        """Chat names the client named otherwise (a namespace's tools, names cut to fit) → (namespace, name):
        their calls come back as the client named them, the namespace apart, as OpenAI answers."""
        return {chat: (ns, tool["name"]) for chat, ns, tool in self.functions if ns or chat != tool["name"]}

    @cached_property
    def web_search(self) -> bool:
        return bool(web_search_tools(self.request.get("tools")))

    def one_name_each(self) -> None:
        """A 400 naming two tools that would reach the provider under one function name (namespace ``a``'s
        ``b__c`` and ``a__b``'s ``c``; a tool named as a namespace's tool is joined, or as the name another's
        was cut to): a call of that name could not be routed back. The same tool twice (loaded by two
        searches) is one function."""
        seen = {TOOL_SEARCH: ("", TOOL_SEARCH, TOOL_SEARCH)} if self.search else {}
        for name, ns, tool in self.functions:
            which = (ns, tool["name"], str(tool.get("type")))
            other = seen.setdefault(name, which)
            if other != which:
                message = (
                    f"tools: {tool_named(other)} and {tool_named(which)} would both be the function {name!r} for "
                    f"this provider (it has no namespaces: a namespace's tools are named <namespace>__<name>, and a "
                    "name it would refuse is cut to fit, ending in a digest); "
                    "rename one of them"
                )
                raise ProxyError(400, message, param="tools", code="tool_name_collision")

    def allowed(self, entry: Any) -> list[str] | None:
        """The chat functions one ``allowed_tools`` entry allows: a function or custom tool (``name``,
        and ``namespace`` for a namespace's, as its calls name it and a named tool_choice does), a whole
        ``namespace`` tool, the client's ``tool_search``; ``[]`` for the request's web search. None when
        the request declares no such tool (or one the translation has none of: MCP, image generation…)."""
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind in WEB_SEARCH_TOOLS:
            return [] if self.web_search else None
        if kind == TOOL_SEARCH:
            return [TOOL_SEARCH] if self.search else None
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            return None
        if kind == "namespace":
            return self.by_namespace.get(name)
        namespace = entry.get("namespace") or ""
        if kind not in ("function", "custom") or not isinstance(namespace, str):
            return None
        return self.by_tool.get((namespace, name))


def allowed_named(entry: Any) -> str:
    """An ``allowed_tools`` entry as an error message names it."""
    if not isinstance(entry, dict):
        return repr(entry)[:100]
    parts = [f"of type {str(entry.get('type'))[:60]!r}"]
    for key in ("name", "namespace", "server_label"):
        if entry.get(key):
            parts.append(f"{key} {str(entry[key])[:100]!r}")
    return ", ".join(parts) + " (function, custom, namespace, tool_search and web search tools can be allowed)"


def chat_text(text: Any) -> dict:
    """``text`` (format and verbosity) → chat ``response_format`` and ``verbosity``."""
    if not isinstance(text, dict):
        raise invalid("text", "'text' must be an object")
    out: dict = {}
    for key in text:
        if key not in ("format", "verbosity") and present(text, key):
            raise unsupported(f"text.{key}", f"the field text.{key}")
    if present(text, "verbosity"):
        out["verbosity"] = text["verbosity"]
    fmt = text.get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return out
    if kind == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise invalid("text.format", "a json_schema format needs a 'name' and a 'schema' object")
        schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if present(fmt, k)}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        raise unsupported("text.format.type", f"text.format type {kind!r}")
    return out


def chat_reasoning(reasoning: Any) -> dict:
    """``reasoning.effort`` → ``reasoning_effort``; a ``summary`` wish is met where the
    provider returns reasoning text (there is nothing to ask for in the chat shape)."""
    if not isinstance(reasoning, dict):
        raise invalid("reasoning", "'reasoning' must be an object")
    for key in reasoning:
        if key not in ("effort", "summary", "generate_summary") and present(reasoning, key):
            raise unsupported(f"reasoning.{key}", f"the field reasoning.{key}")
    return {"reasoning_effort": reasoning["effort"]} if present(reasoning, "effort") else {}


# --------------------------------------------------------------------------- answer


def item_id(prefix: str, response_id: str, output_index: int) -> str:
    """A deterministic output item id: the same for a plain and a streamed answer."""
    return f"{prefix}_{response_id.removeprefix('resp_')}_{output_index}"


MINTED = re.compile(r"[a-z]+_[0-9a-f]{48}_[0-9]+")  # item_id of a conversations.new_response_id()


def minted(item: Any) -> bool:
    """True for an output item Stockyard made (its id is :func:`item_id`'s), not a provider."""
    return minted_in(item.get("id") if isinstance(item, dict) else None) is not None


def is_reference(item: Any) -> bool:
    """An ``item_reference`` input item: of that type, or of none and no role (OpenAI's
    ``ItemReferenceParam``, whose ``type`` is optional: ``{"id": …}`` alone; a message has a role)."""
    if not isinstance(item, dict):
        return False
    kind = item.get("type")
    return kind == "item_reference" or (kind is None and "role" not in item and "id" in item)


# Output items a provider that keeps responses reads from its store when one comes back by its id
# without the field that carries it: the type → that field.
CARRIED_BY = {
    "reasoning": "encrypted_content",  # OpenAI reads the reasoning it kept under that id
    "image_generation_call": "result",  # OpenAI's multi-turn image editing: the image it kept
}


def stored_name(item: Any) -> Any:
    """The id an input item names a stored item by without carrying it — which a provider that
    keeps responses reads from its store — or None: an ``item_reference``'s, or a provider's
    reasoning item's or image generation call's sent without what carries it (:data:`CARRIED_BY`).
    Items that carry their content name nothing, nor do Stockyard's own (``minted``: a translated
    answer's, which no provider is sent)."""
    if is_reference(item):
        return item.get("id")
    if isinstance(item, dict) and isinstance(item.get("id"), str):
        kind = item.get("type")
        carrier = CARRIED_BY.get(kind) if isinstance(kind, str) else None
        if carrier is not None and not item.get(carrier) and not minted(item):
            return item["id"]
    return None


def unknown_item(path: str, ident: Any) -> ProxyError:
    """The 400 for an input item naming a stored item this key does not hold (``path``: ``input[i]``)."""
    shown = (ident if isinstance(ident, str) else str(ident))[:100]  # a client's id: at most 100 characters
    return invalid(f"{path}.id", f"no item with id {shown!r} is stored for this key")


def minted_in(ident: Any) -> str | None:
    """The response an item id of :func:`item_id`'s was made for (``resp_…``), else None."""
    if not isinstance(ident, str) or MINTED.fullmatch(ident) is None:
        return None
    return "resp_" + ident.split("_")[1]


def text_part(text: str, annotations: list[dict] | None = None) -> dict:
    return {"type": "output_text", "annotations": annotations or [], "logprobs": [], "text": text}


def url_citation(annotation: Any) -> dict | None:
    """A chat ``url_citation`` annotation → the Responses one; None for another kind."""
    cited = obj(obj(annotation).get("url_citation"))
    if obj(annotation).get("type") != "url_citation" or not isinstance(cited.get("url"), str):
        return None
    start, end = cited.get("start_index"), cited.get("end_index")
    return {
        "type": "url_citation",
        "start_index": start if type(start) is int else 0,
        "end_index": end if type(end) is int else 0,
        "url": cited["url"],
        "title": cited.get("title") if isinstance(cited.get("title"), str) else "",
    }


def url_citations(annotations: Any) -> list[dict]:
    found = (url_citation(a) for a in listed(annotations))
    return [a for a in found if a is not None]


def inside(annotation: dict, offset: int, length: int) -> dict:
    """A citation's indices less ``offset`` (where its part starts), inside the part's ``length``
    characters: a provider's indices before or past its text are not passed on."""
    start = min(max(0, annotation["start_index"] - offset), length)
    end = min(max(start, annotation["end_index"] - offset), length)
    return {**annotation, "start_index": start, "end_index": end}


def cited_in(annotations: list[dict], start: int, end: int, last: bool) -> list[dict]:
    """The citations of the text from ``start`` to ``end`` (one message item's, when images cut the
    answer's text into several), their indices into it: those that begin there (the last piece also
    those past the text, the first those before it, whose indices :func:`inside` keeps in the piece)."""
    return [
        inside(a, start, end - start)
        for a in annotations
        if (start == 0 or a["start_index"] >= start) and (last or a["start_index"] < end)
    ]


def listed(value: Any) -> list:
    return value if isinstance(value, list) else []


SOURCES_INCLUDE = "web_search_call.action.sources"


def web_search_item(ident: str, search: Any, request: dict) -> dict:
    """A ``web_search_call`` item for a search the provider ran (a chat message's
    ``web_search_calls`` entry: Claude's query, what it found, whether it failed); its result
    pages as ``action.sources`` when the request's ``include`` asks for them, as OpenAI does."""
    entry = obj(search)
    query = entry.get("query")
    action: dict = {"type": "search", "query": query if isinstance(query, str) else ""}
    if SOURCES_INCLUDE in listed(request.get("include")):
        action["sources"] = [s for s in listed(entry.get("sources")) if isinstance(obj(s).get("url"), str)]
    status = "failed" if entry.get("status") == "failed" else "completed"
    return {"id": ident, "type": "web_search_call", "status": status, "action": action}


def refusal_part(text: str) -> dict:
    return {"type": "refusal", "refusal": text}


def reasoning_item(ident: str, text: str, state: dict | None = None, provider: str | None = None) -> dict:
    """A reasoning item: the reasoning text as its summary, the opaque state (if any) of
    ``provider`` (a name) packed as its ``encrypted_content``."""
    item: dict = {"id": ident, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}] if text else []}
    if state:
        item["encrypted_content"] = pack(state, provider)
    return item


def reasoning_state(message: dict) -> dict:
    """The opaque reasoning state a chat message carries: its thinking blocks (Anthropic), its
    tool calls' thought signatures (Gemini); empty when none."""
    state: dict = {}
    blocks = thinking_blocks(message.get("thinking_blocks"))
    if blocks:
        state["thinking_blocks"] = blocks
    signatures = signatures_of(message.get("tool_calls"))
    if signatures:
        state["thought_signatures"] = signatures
    return state


def sign_before_call(
    output: list[dict], states: dict[int, dict], signatures: dict, response_id: str, provider: str | None
) -> None:
    """A tool call's thought signature into the reasoning item just before the call: the last item
    when it is one, else a new one — where the stream puts it (``ChatToResponsesStream.keep_state``:
    it opens one item at a time, so text between the reasoning and the call closed that item)."""
    if not output or output[-1]["type"] != "reasoning":
        output.append(reasoning_item(item_id("rs", response_id, len(output)), ""))
    state = states.setdefault(len(output) - 1, {})
    state["thought_signatures"] = {**state.get("thought_signatures", {}), **signatures}
    output[-1]["encrypted_content"] = pack(state, provider)


def image_item(ident: str, image: Any) -> dict | None:
    """An image a chat answer carries (an ``images`` entry: a base64 data URL) as OpenAI's output item
    for a generated image, with its ``output_format`` when its media type is one of OpenAI's (its size is
    not known); None for an entry that is not such an image."""
    url = obj(obj(image).get("image_url")).get("url")
    if not isinstance(url, str) or not url.startswith("data:image/"):
        return None
    head, _, data = url.removeprefix("data:").partition(",")
    mime, _, encoding = head.partition(";")
    if not data or encoding.lower() != "base64":
        return None
    item = {"id": ident, "type": IMAGE_CALL, "status": "completed", "result": data}
    if mime.lower() in OUTPUT_FORMATS:
        item["output_format"] = OUTPUT_FORMATS[mime.lower()]
    return item


def text_offset(image: Any, after: int, length: int) -> int:
    """Where in the answer's text (of ``length`` characters) the model drew an image: its ``text_offset``,
    not before ``after`` (the image before it) nor past the text; the text's end when it has none."""
    offset = obj(image).get("text_offset")
    return min(max(offset, after), length) if type(offset) is int else length


def message_item(ident: str, content: list[dict], status: str) -> dict:
    return {"id": ident, "type": "message", "status": status, "role": "assistant", "content": content}


def call_item(
    ident: str, call_id: str, name: str, arguments: str, status: str, names: dict[str, tuple[str, str]] | None = None
) -> dict:
    """A ``function_call`` output item; ``names`` (:attr:`Declared.client_names`) gives back the client's name."""
    item = {"id": ident, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id}
    return {**item, **named(name, names)}


def custom_item(
    ident: str, call_id: str, name: str, text: str, names: dict[str, tuple[str, str]] | None = None
) -> dict:
    """A ``custom_tool_call`` output item (the SDK's type has no status)."""
    return {"id": ident, "type": "custom_tool_call", "call_id": call_id, **named(name, names), "input": text}


def search_item(ident: str, call_id: str, arguments: str, status: str) -> dict:
    """A ``tool_search_call`` output item: its arguments an object, as OpenAI gives them."""
    try:
        value = json.loads(arguments) if arguments else {}
    except (ValueError, RecursionError):  # nested past the parser's depth: the provider's, not the client's 400
        value = {}
    return {
        "id": ident,
        "type": "tool_search_call",
        "call_id": call_id,
        "arguments": value if isinstance(value, dict) else {},
        "execution": "client",
        "status": status,
    }


def named(name: str, names: dict[str, tuple[str, str]] | None) -> dict:
    """A call's ``name`` as the client named the tool, and its ``namespace`` when it has one."""
    ns, own = (names or {}).get(name, ("", name))
    return {"name": own, "namespace": ns} if ns else {"name": own}


def reasoning_text(message: dict) -> str:
    """The reasoning a chat message or delta carries (``reasoning_content`` as DeepSeek
    sends it, ``reasoning`` as vLLM, Groq and OpenRouter do)."""
    value = message.get("reasoning_content") or message.get("reasoning")
    return value if isinstance(value, str) else ""


def responses_usage(usage: Any) -> dict | None:
    """Chat ``usage`` → Responses ``usage``, read the way Stockyard reads any OpenAI usage
    (DeepSeek's cache hits, xAI's reasoning); ``prompt_tokens_details.cache_write_tokens``
    is taken when the chat answer carries it."""
    if not isinstance(usage, dict):
        return None
    counts = Usage.from_openai(usage)
    writes = (usage.get("prompt_tokens_details") or {}).get("cache_write_tokens")
    writes = min(writes, counts.prompt_tokens - counts.cached_tokens) if type(writes) is int and writes > 0 else 0
    return {
        "input_tokens": counts.prompt_tokens,
        "input_tokens_details": {"cache_write_tokens": writes, "cached_tokens": counts.cached_tokens},
        "output_tokens": counts.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": counts.reasoning_tokens},
        "total_tokens": counts.prompt_tokens + counts.completion_tokens,
    }


def response_object(
    request: dict,
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict],
    usage: dict | None,
    finish_reason: str | None = None,
    error: dict | None = None,
) -> dict:
    """A Responses ``response`` object, echoing the request's settings as OpenAI does
    (the fields of the SDK's ``Response`` type: ``store`` is not one of them)."""
    reason = INCOMPLETE.get(finish_reason or "") if status == "incomplete" else None
    out = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": reason} if reason else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True) is not False,
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": request.get("reasoning") or {"effort": None, "summary": None},
        "temperature": echo(request, "temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": echo(request, "tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": echo(request, "top_p", 1.0),
        "truncation": echo(request, "truncation", "disabled"),
        "usage": usage,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
        "conversation": request.get("conversation"),  # {"id": …} when the turn joined one
    }
    for key in ("safety_identifier", "prompt_cache_key", "service_tier"):
        if present(request, key):
            out[key] = request[key]
    if status == "completed":
        out["completed_at"] = int(time.time())
    return out


def echo(request: dict, key: str, default: Any) -> Any:
    return request[key] if present(request, key) else default


def status_of(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason in INCOMPLETE else "completed"


# Why a compaction failed when the model's answer held no text to summarise with.
NO_SUMMARY = "the model answered the compaction request without a summary"


def summary_of(chat: dict) -> str:
    """The text of a chat answer to a compaction request (``compaction.ask_summary``): the summary."""
    message = obj(obj((chat.get("choices") or [{}])[0]).get("message"))
    return message["content"] if isinstance(message.get("content"), str) else ""


def compaction_response(chat: dict, request: dict, response_id: str, created_at: int) -> dict:
    """The answer to a ``/v1/responses`` request ending with a compaction trigger: one ``compaction``
    item holding the model's summary (failed when it wrote none: an empty one would lose the conversation)."""
    finish = obj((chat.get("choices") or [{}])[0]).get("finish_reason")
    status, output, error = status_of(finish), [], None
    summary = summary_of(chat)
    if summary:
        output.append(compaction.compaction_item(item_id("cmp", response_id, 0), summary))
    else:
        status, error = "failed", {"code": "server_error", "message": NO_SUMMARY}
    model = chat.get("model") or request.get("model") or ""
    usage = responses_usage(chat.get("usage"))
    return response_object(request, response_id, created_at, model, status, output, usage, finish, error)


def from_chat(
    chat: dict,
    request: dict,
    response_id: str,
    created_at: int,
    provider: str | None = None,
    *,
    history: list | None = None,
) -> dict:
    """A ``chat.completion`` (from ``provider``, a name) → the Responses ``response`` object for it;
    ``history`` is the stored conversation ``to_chat`` was given (the tools it loaded are called too)."""
    if compaction.triggered(request):
        return compaction_response(chat, request, response_id, created_at)
    choices = chat.get("choices") or [{}]
    choice = obj(choices[0])
    message = obj(choice.get("message"))
    finish = choice.get("finish_reason")
    status = status_of(finish)
    output: list[dict] = []
    reasoning = reasoning_text(message)
    state = reasoning_state(message)
    signatures = state.pop("thought_signatures", {})  # each goes just before its call, below
    states: dict[int, dict] = {}  # output index of a reasoning item → its opaque state
    if reasoning or state:
        output.append(reasoning_item(item_id("rs", response_id, len(output)), reasoning, state, provider))
        states[0] = state
    for search in listed(message.get("web_search_calls")):
        output.append(web_search_item(item_id("ws", response_id, len(output)), search, request))
    text = message["content"] if isinstance(message.get("content"), str) else ""
    annotations = url_citations(message.get("annotations"))
    start = 0  # where the text not yet in a message item begins
    for image in listed(message.get("images")):  # each where the model drew it among the text
        at = text_offset(image, start, len(text))
        item = image_item("", image)
        if item is None:
            continue
        if at > start:
            content = [text_part(text[start:at], cited_in(annotations, start, at, False))]
            output.append(message_item(item_id("msg", response_id, len(output)), content, "completed"))
            start = at
        output.append({**item, "id": item_id("ig", response_id, len(output))})
    content = [text_part(text[start:], cited_in(annotations, start, len(text), True))] if text[start:] else []
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        content.append(refusal_part(message["refusal"]))
    if content:
        output.append(message_item(item_id("msg", response_id, len(output)), content, "completed"))
    declared = Declared(request, history)
    for call in message.get("tool_calls") or []:
        fn = obj(obj(call).get("function"))
        call_id = obj(call).get("id") or item_id("call", response_id, len(output))
        if call_id in signatures:
            sign_before_call(output, states, {call_id: signatures[call_id]}, response_id, provider)
        index = len(output)
        args = fn.get("arguments")
        args = args if isinstance(args, str) else json.dumps(args or {})
        name = fn.get("name") or ""
        if declared.search and name == TOOL_SEARCH:
            output.append(search_item(item_id("ts", response_id, index), call_id, args, "completed"))
        elif name in declared.custom:
            ident = item_id("ctc", response_id, index)
            output.append(custom_item(ident, call_id, name, custom_input(args), declared.client_names))
        else:
            ident = item_id("fc", response_id, index)
            output.append(call_item(ident, call_id, name, args, "completed", declared.client_names))
    if output and "status" in output[-1] and output[-1]["type"] != IMAGE_CALL:
        output[-1]["status"] = status  # only the last item can have been cut short (an image came whole)
    model = chat.get("model") or request.get("model") or ""
    return response_object(
        request, response_id, created_at, model, status, output, responses_usage(chat.get("usage")), finish
    )


# --------------------------------------------------------------------------- stream


class ChatToResponsesStream:
    """A ``chat.completion.chunk`` stream → the Responses event stream, event by event.

    The caller parses each SSE ``data:`` line and hands the chunk to :meth:`feed`, calls
    :meth:`finish` after ``[DONE]`` (the closing events, with usage) or :meth:`fail` when
    the upstream stream broke (a ``response.failed`` event, never a made-up completion).
    Output items open in the order the deltas arrive (reasoning, message text, each tool
    call) and one at a time: a delta for a new item closes the open one first.
    """

    def __init__(
        self,
        request: dict,
        response_id: str,
        created_at: int,
        model: str,
        provider: str | None = None,
        *,
        history: list | None = None,  # the stored conversation, as for :func:`from_chat`
    ) -> None:
        self.request = request
        self.provider = provider  # the provider's name, in the reasoning state packed
        self.response_id = response_id
        self.created_at = created_at
        self.model = model
        self.sequence = 0
        self.output: list[dict] = []  # items as they stand, by output_index
        self.open: list[int] = []  # output index of the open item (none or one)
        self.calls: dict[int, int] = {}  # chat tool_call index → output index
        self.pending: dict[int, dict] = {}  # tool calls whose name has not arrived yet
        self.order = CallOrder()  # each call's deltas together, in the order the calls began
        self.states: dict[int, dict] = {}  # output index of a reasoning item → its opaque state
        self.declared = Declared(request, history)  # its tools: how a call's name goes back
        self.custom_args: dict[int, str] = {}  # output index of a custom tool call → its arguments so far
        self.chars = 0  # characters of chat content so far: where its annotations point
        self.part_start = 0  # where the open output_text part starts in the chat content
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.started = False
        self.ended = False
        self._complete = False
        self._response = self.snapshot("in_progress")

    @property
    def response(self) -> dict:
        """The Responses object as it stands (the final one after finish or fail)."""
        return self._response

    @property
    def complete(self) -> bool:
        """True once the stream ended properly (completed or incomplete), with usage if sent."""
        return self._complete

    def snapshot(self, status: str, error: dict | None = None) -> dict:
        return response_object(
            self.request,
            self.response_id,
            self.created_at,
            self.model,
            status,
            list(self.output),
            self.usage,
            self.finish_reason,
            error,
        )

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + json_bytes(payload, compact=True) + b"\n\n"

    def start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        return [
            self.event("response.created", response=self._response),
            self.event("response.in_progress", response=self._response),
        ]

    # ----------------------------------------------------------------- input

    def feed(self, chunk: dict) -> list[bytes]:
        """One parsed ``chat.completion.chunk`` → the Responses events it makes."""
        if self.ended or not isinstance(chunk, dict):
            return []
        out = self.start()
        if isinstance(chunk.get("usage"), dict):
            self.usage = responses_usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                out += self.choice(choice)
        return out

    def choice(self, choice: dict) -> list[bytes]:
        """The events of one chunk's first choice: its delta, and its finish reason."""
        out: list[bytes] = []
        delta = obj(choice.get("delta"))
        reasoning = reasoning_text(delta)
        if reasoning:
            out += self.reasoning(reasoning)
        blocks = thinking_blocks(delta.get("thinking_blocks"))
        if blocks:
            out += self.keep_state({"thinking_blocks": blocks})
        for search in listed(delta.get("web_search_calls")):
            out += self.web_search(search)
        for kind in ("content", "refusal"):
            if isinstance(delta.get(kind), str) and delta[kind]:
                out += self.text(kind, delta[kind])
        for annotation in url_citations(delta.get("annotations")):
            out += self.annotate(annotation)
        for image in listed(delta.get("images")):
            out += self.image(image)
        for call in self.order.take(delta.get("tool_calls")):
            out += self.tool_call(call)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
            out += self.held_calls() + self.close()
        return out

    def held_calls(self) -> list[bytes]:
        """The tool calls held back (a provider that interleaves parallel calls' fragments: ``CallOrder``)."""
        return [event for call in self.order.rest() for event in self.tool_call(call)]

    def finish(self) -> list[bytes]:
        """After ``[DONE]``: close what is open, then ``response.completed`` (or
        ``response.incomplete`` when the answer hit its length limit or a filter)."""
        if self.ended:
            return []
        return self.start() + self.held_calls() + self.close() + [self.end()]

    def end(self) -> bytes:
        """The event that ends a whole answer, ``response.completed`` or ``.incomplete`` (by its
        finish reason), with the response as it ends."""
        status = status_of(self.finish_reason)
        self._response = self.snapshot(status)
        self.ended = self._complete = True
        return self.event(f"response.{status}", response=self._response)

    def fail(self, message: str, code: str) -> list[bytes]:
        """A broken upstream stream: ``response.failed`` with the output so far, which is the items done.
        An open message or reasoning item is done first as it stands (``incomplete``); an open tool call
        is never done and left out (Codex runs a call once it is done: never half of one)."""
        if self.ended:
            return []
        out = self.start()
        for index in self.open:
            self.output[index]["status"] = "incomplete"
        if self.open and self.output[self.open[-1]]["type"] not in ("message", "reasoning"):
            del self.output[self.open.pop()]
        out += self.close("incomplete")
        error = {"code": code if code in ERROR_CODES else "server_error", "message": message}
        self._response = self.snapshot("failed", error)
        self.ended = True
        return out + [self.event("response.failed", response=self._response)]

    # ----------------------------------------------------------------- items

    def add_item(self, item: dict) -> tuple[int, bytes]:
        index = len(self.output)
        self.output.append(item)
        self.open.append(index)
        return index, self.event("response.output_item.added", output_index=index, item=item)

    def open_reasoning(self) -> list[bytes]:
        """A reasoning item open for text or state: the open one, else a new one."""
        if self.is_open("reasoning"):
            return []
        out = self.close()
        ident = item_id("rs", self.response_id, len(self.output))
        return out + [self.add_item({"id": ident, "type": "reasoning", "summary": []})[1]]

    def reasoning(self, text: str) -> list[bytes]:
        out = self.open_reasoning()
        index = self.open[-1]
        item = self.output[index]
        if not item["summary"]:
            part = {"type": "summary_text", "text": ""}
            item["summary"].append(part)
            out.append(self.event("response.reasoning_summary_part.added", **self.at(index, 0), part=dict(part)))
        item["summary"][0]["text"] += text
        return out + [self.event("response.reasoning_summary_text.delta", **self.at(index, 0), delta=text)]

    def keep_state(self, found: dict) -> list[bytes]:
        """Opaque reasoning state (thinking blocks, a thought signature) into the open reasoning
        item's ``encrypted_content``, or a new reasoning item's."""
        out = self.open_reasoning()
        index = self.open[-1]
        state = self.states.setdefault(index, {})
        if found.get("thinking_blocks"):
            state["thinking_blocks"] = state.get("thinking_blocks", []) + found["thinking_blocks"]
        if found.get("thought_signatures"):
            state["thought_signatures"] = {**state.get("thought_signatures", {}), **found["thought_signatures"]}
        self.output[index]["encrypted_content"] = pack(state, self.provider)
        return out

    def text(self, kind: str, text: str) -> list[bytes]:
        """Message text (``content``) or a refusal, each its own content part."""
        out: list[bytes] = []
        if not self.is_open("message"):
            out += self.close()
            ident = item_id("msg", self.response_id, len(self.output))
            out.append(self.add_item(message_item(ident, [], "in_progress"))[1])
        index = self.open[-1]
        parts = self.output[index]["content"]
        part_type = "output_text" if kind == "content" else "refusal"
        if not parts or parts[-1]["type"] != part_type:
            if parts:
                out += self.close_part(index)
            parts.append(text_part("") if kind == "content" else refusal_part(""))
            self.part_start = self.chars
            out.append(self.event("response.content_part.added", **self.part_at(index), part=parts[-1]))
        where = self.part_at(index)
        if kind == "content":
            self.chars += len(text)
            parts[-1]["text"] += text
            return out + [self.event("response.output_text.delta", **where, delta=text, logprobs=[])]
        parts[-1]["refusal"] += text
        return out + [self.event("response.refusal.delta", **where, delta=text)]

    def web_search(self, search: dict) -> list[bytes]:
        """A search the provider ran, whole (its query known): a ``web_search_call`` item with
        the events OpenAI streams for one, from added to done."""
        out = self.close()
        item = web_search_item(item_id("ws", self.response_id, len(self.output)), search, self.request)
        index, added = self.add_item({**item, "status": "in_progress"})
        out.append(added)
        for step in ("in_progress", "searching", "completed"):
            out.append(self.event(f"response.web_search_call.{step}", **self.at(index)))
        self.output[index] = item
        self.open.remove(index)
        return out + [self.event("response.output_item.done", output_index=index, item=item)]

    def image(self, image: Any) -> list[bytes]:
        """An image the model drew (a chat delta's ``images`` entry, whole): an ``image_generation_call``
        item with the events OpenAI streams for one, from added to done (no partial images: none came)."""
        item = image_item(item_id("ig", self.response_id, len(self.output)), image)
        if item is None:
            return []
        out = self.close()  # the text so far is one message item; text after the image, another
        index, added = self.add_item({"id": item["id"], "type": IMAGE_CALL, "status": "in_progress", "result": None})
        out.append(added)
        for step in ("in_progress", "generating", "completed"):
            out.append(self.event(f"response.image_generation_call.{step}", **self.at(index)))
        self.output[index] = item
        self.open.remove(index)
        return out + [self.event("response.output_item.done", output_index=index, item=item)]

    def annotate(self, annotation: dict) -> list[bytes]:
        """A citation of the text just sent, onto the open output_text part (its indices into
        that part); none open (the cited text was empty), it is left out."""
        if not self.is_open("message"):
            return []
        index = self.open[-1]
        parts = self.output[index]["content"]
        if not parts or parts[-1]["type"] != "output_text":
            return []
        annotation = inside(annotation, self.part_start, len(parts[-1]["text"]))
        parts[-1]["annotations"].append(annotation)
        where = {**self.part_at(index), "annotation_index": len(parts[-1]["annotations"]) - 1}
        return [self.event("response.output_text.annotation.added", **where, annotation=annotation)]

    def tool_call(self, call: dict) -> list[bytes]:
        """A tool-call delta: the first for an index carries id and name, later ones
        argument fragments; the item opens once the name is known."""
        chat_index = call.get("index", 0)
        fn = obj(call.get("function"))
        fragment = fn.get("arguments") if isinstance(fn.get("arguments"), str) else ""
        if chat_index in self.calls:
            index = self.calls[chat_index]
            if index not in self.open or not fragment:
                return []  # arguments after the call closed: upstream broke its own order
            if index in self.custom_args:  # its text is read from the whole arguments at the end
                self.custom_args[index] += fragment
                return []
            self.output[index]["arguments"] += fragment
            return [self.event("response.function_call_arguments.delta", **self.at(index), delta=fragment)]
        waiting = self.pending.setdefault(chat_index, {"id": None, "name": None, "arguments": "", "signature": None})
        waiting["id"] = call.get("id") or waiting["id"]
        waiting["name"] = fn.get("name") or waiting["name"]
        waiting["arguments"] += fragment
        waiting["signature"] = thought_signature(call) or waiting["signature"]
        if not waiting["name"]:
            return []
        del self.pending[chat_index]
        out: list[bytes] = []
        call_id = waiting["id"]
        if waiting["signature"]:  # Gemini's, in the reasoning item before the call
            call_id = call_id or item_id(
                "call", self.response_id, len(self.output) + int(not self.is_open("reasoning"))
            )
            out += self.keep_state({"thought_signatures": {call_id: waiting["signature"]}})
        out += self.close()  # one item at a time, as OpenAI streams them
        position = len(self.output)
        call_id = call_id or item_id("call", self.response_id, position)
        if self.declared.search and waiting["name"] == TOOL_SEARCH:  # its arguments an object: told whole at the end
            ident = item_id("ts", self.response_id, position)
            index, added = self.add_item(search_item(ident, call_id, "", "in_progress"))
            self.calls[chat_index] = index
            self.custom_args[index] = waiting["arguments"]
            return out + [added]
        if waiting["name"] in self.declared.custom:
            ident = item_id("ctc", self.response_id, position)
            index, added = self.add_item(custom_item(ident, call_id, waiting["name"], "", self.declared.client_names))
            self.calls[chat_index] = index
            self.custom_args[index] = waiting["arguments"]
            return out + [added]
        ident = item_id("fc", self.response_id, position)
        item = call_item(ident, call_id, waiting["name"], "", "in_progress", self.declared.client_names)
        index, added = self.add_item(item)
        self.calls[chat_index] = index
        out.append(added)
        if waiting["arguments"]:
            item["arguments"] = waiting["arguments"]
            out.append(self.event("response.function_call_arguments.delta", **self.at(index), delta=item["arguments"]))
        return out

    def is_open(self, kind: str) -> bool:
        return bool(self.open) and self.output[self.open[-1]]["type"] == kind

    def at(self, index: int, summary_index: int | None = None) -> dict:
        where: dict = {"item_id": self.output[index]["id"], "output_index": index}
        if summary_index is not None:
            where["summary_index"] = summary_index
        return where

    def part_at(self, index: int) -> dict:
        return {**self.at(index), "content_index": len(self.output[index]["content"]) - 1}

    def close_part(self, index: int) -> list[bytes]:
        part = self.output[index]["content"][-1]
        where = self.part_at(index)
        if part["type"] == "output_text":
            done = self.event("response.output_text.done", **where, text=part["text"], logprobs=[])
        else:
            done = self.event("response.refusal.done", **where, refusal=part["refusal"])
        return [done, self.event("response.content_part.done", **where, part=part)]

    def close_custom(self, index: int) -> list[bytes]:
        """A custom tool call's text, whole: it is inside the JSON arguments the provider streamed,
        so it is told once they have all come (one delta, then done)."""
        item = self.output[index]
        item["input"] = custom_input(self.custom_args.pop(index))
        delta = [self.event("response.custom_tool_call_input.delta", **self.at(index), delta=item["input"])]
        done = self.event("response.custom_tool_call_input.done", **self.at(index), input=item["input"])
        return (delta if item["input"] else []) + [done]

    def close(self, status: str | None = None) -> list[bytes]:
        """The done events of the open items; their status follows the finish reason (or ``status``)."""
        out: list[bytes] = []
        status = status or status_of(self.finish_reason)
        for index in self.open:
            item = self.output[index]
            if item["type"] == "reasoning":
                if item["summary"]:
                    part = item["summary"][0]
                    where = self.at(index, 0)
                    out.append(self.event("response.reasoning_summary_text.done", **where, text=part["text"]))
                    out.append(self.event("response.reasoning_summary_part.done", **where, part=part))
            elif item["type"] == "message":
                out += self.close_part(index) if item["content"] else []
                item["status"] = status
            elif item["type"] == "custom_tool_call":
                out += self.close_custom(index)
            elif item["type"] == "tool_search_call":
                item.update(search_item(item["id"], item["call_id"], self.custom_args.pop(index), status))
            else:
                args = item["arguments"]
                out.append(self.event("response.function_call_arguments.done", **self.at(index), arguments=args))
                item["status"] = status
            out.append(self.event("response.output_item.done", output_index=index, item=item))
        self.open = []
        return out


class CompactionStream(ChatToResponsesStream):
    """The stream of a request ending with a compaction trigger (Codex CLI's, ``stream: true``): the
    summary's text is collected, not streamed (the client gets it only inside the token), each piece
    of it a ``response.compaction.compacting`` event (progress without content, the SDK's event), and
    the one ``compaction`` item is done at the end, before ``response.completed``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pieces: list[str] = []

    def choice(self, choice: dict) -> list[bytes]:
        """Only the text is read (the summary); tools could not be called."""
        out: list[bytes] = []
        text = obj(choice.get("delta")).get("content")
        if isinstance(text, str) and text:
            self.pieces.append(text)
            out += self.open_item() + [self.event("response.compaction.compacting", **self.at(0))]
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        return out

    def open_item(self) -> list[bytes]:
        """The compaction item, added once (its token is known only at the end)."""
        if self.output:
            return []
        item = {"id": item_id("cmp", self.response_id, 0), "type": compaction.ITEM, "encrypted_content": ""}
        return [self.add_item(item)[1]]

    def finish(self) -> list[bytes]:
        if self.ended:
            return []
        summary = "".join(self.pieces)
        if not summary:
            return self.fail(NO_SUMMARY, "server_error")
        out = self.start() + self.open_item()
        self.output[0]["encrypted_content"] = compaction.mint(summary)
        out.append(self.event("response.output_item.done", output_index=0, item=self.output[0]))
        self.open = []
        return out + [self.end()]

    def fail(self, message: str, code: str) -> list[bytes]:
        self.output, self.open = [], []  # an unfinished compaction item holds nothing the client can use
        return super().fail(message, code)

"""Gemini: OpenAI-dialect chat translated to ``generateContent`` and back.

Plain requests go to ``/v1beta/models/{model}:generateContent``, streams to
``:streamGenerateContent?alt=sse``. The key travels only in the ``x-goog-api-key``
header — never in the URL, where it would end up in logs and error messages.

Gemini streams have no terminal event: a chunk with a ``finishReason`` marks the answer
complete, and ``[DONE]`` is sent only once the upstream stream then ends cleanly.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import re
import secrets
import struct
import time
from typing import Any
from urllib.parse import urlsplit

from ..context import RequestContext
from ..errors import ProxyError
from ..estimate import text_tokens
from ..objectrefs import names_a_file
from ..pricing import Usage
from . import Provider
from .base import Adapter, StreamTranslator, UpstreamCall, loads_object, model_segment
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
    note,
    only_allowed,
    shape_errors,
    text_of,
    tool_arguments,
    tool_function,
    tool_media_after,
    translate_content,
    unsupported_role,
    upstream_error,
)

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "MALFORMED_FUNCTION_CALL": "stop",
}
TOOL_CHOICE = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
# The fields of Gemini's Schema object (an OpenAPI subset): any other JSON-schema keyword is a 400
# from Gemini ("Unknown name ... Cannot find field": Claude Code's tools carry ``propertyNames`` and
# ``exclusiveMinimum``), so clean_schema keeps only these. ``$ref``s are inlined, ``default`` dropped,
# a string ``const`` becomes a one-value ``enum``, and an empty ``properties`` (an empty pydantic model
# inside a tool's arguments or a structured answer) is left out, with an empty ``required``: Gemini
# refuses an object whose properties are empty, and takes ``{"type": "object"}``. A tool that takes
# no arguments (every OpenAI Agents SDK handoff) goes without ``parameters`` (``translate_tools``).
GEMINI_SCHEMA_FIELDS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "items",
        "minimum",
        "maximum",
    }
)
MAX_SCHEMA_DEPTH = 64  # levels of nesting in a tool or response schema
MAX_SCHEMA_REFS = 500  # $refs inlined in one schema (Gemini's Schema has no $ref)
# Parts of a schema made by inlining its $refs: each inlined copy counts its parts, so a large
# definition referenced many times (a small body) cannot expand into a schema of millions of parts.
MAX_SCHEMA_INLINED = 10_000
GENERATION_FIELDS = (
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("top_k", "topK"),
    ("n", "candidateCount"),
    ("seed", "seed"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
)

# reasoning_effort → thinkingConfig: a token budget for Gemini 2.5, a level for Gemini 3 (which
# cannot turn thinking off: "none" asks for the least it has).
THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768}
PRO_HIGH_FOR_MEDIUM = re.compile(r"gemini-3-pro(?:-|$)")  # 3 Pro: low and high only (3.1 Pro adds medium)
THINKING_LEVELS = {
    "none": "minimal",
    "minimal": "minimal",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
}


def _json_format(fmt: Any) -> bool:
    return not isinstance(fmt, dict) or fmt.get("type") in (None, "text", "json_object", "json_schema")


# Every OpenAI chat request field → how it reaches a Gemini model (one place: the CLI, the
# README and the refusals all read this table).
CHAT_FIELDS: dict[str, Field] = {
    **COMMON_FIELDS,
    "messages": Field(TRANSLATED, "system/developer → systemInstruction; tool results → functionResponse; images"),
    "max_tokens": Field(TRANSLATED, "generationConfig.maxOutputTokens"),
    "max_completion_tokens": Field(TRANSLATED, "generationConfig.maxOutputTokens"),
    "temperature": Field(TRANSLATED, "generationConfig.temperature"),
    "top_p": Field(TRANSLATED, "generationConfig.topP"),
    # Not OpenAI's, but Gemini samples with it: the Messages API's top_k arrives here (OpenCode sends
    # Gemini models top_k 64).
    "top_k": Field(TRANSLATED, "generationConfig.topK"),
    "n": Field(TRANSLATED, "generationConfig.candidateCount"),
    "seed": Field(TRANSLATED, "generationConfig.seed"),
    "presence_penalty": Field(TRANSLATED, "generationConfig.presencePenalty"),
    "frequency_penalty": Field(TRANSLATED, "generationConfig.frequencyPenalty"),
    "stop": Field(TRANSLATED, "generationConfig.stopSequences"),
    "tools": Field(TRANSLATED, "functionDeclarations (only the schema keywords Gemini's Schema has)"),
    "tool_choice": Field(
        TRANSLATED,
        "toolConfig.functionCallingConfig; allowed_tools required → ANY with allowedFunctionNames, auto → only"
        " those declared, AUTO",
    ),
    "response_format": Field(
        TRANSLATED, "json_object → responseMimeType application/json; json_schema → + responseSchema", _json_format
    ),
    "reasoning_effort": Field(
        TRANSLATED,
        "thinkingConfig: thinkingLevel for gemini-3*, else thinkingBudget "
        + ", ".join(f"{k} {v}" for k, v in THINKING_BUDGETS.items())
        + "; with includeThoughts (except none): the thought summaries come back as reasoning_content",
        lambda v: v is None or (isinstance(v, str) and v in THINKING_BUDGETS),
    ),
    "parallel_tool_calls": Field(EMULATED, "false: an answer keeps its first tool call only (Gemini has no switch)"),
    "modalities": Field(
        TRANSLATED,
        "generationConfig.responseModalities: text, image (Gemini's image models); no audio",
        lambda v: v is None or _response_modalities(v) is not None,
    ),
    "user": Field(EMULATED, "an end-user id for abuse monitoring; Gemini has none: not sent"),
    "safety_identifier": Field(EMULATED, "an end-user id for abuse monitoring; Gemini has none: not sent"),
}
# OpenAI embeddings request fields → batchEmbedContents.
EMBEDDING_FIELDS: dict[str, Field] = {
    "model": Field(TRANSLATED, "requests[].model"),
    "input": Field(TRANSLATED, "a string or list of strings → requests[].content.parts[].text (token ids refused)"),
    "dimensions": Field(TRANSLATED, "requests[].outputDimensionality"),
    "encoding_format": Field(
        TRANSLATED, "float, or base64 (float32) made here", lambda v: v in (None, "float", "base64")
    ),
    "user": Field(EMULATED, "an end-user id for abuse monitoring; Gemini has none: not sent"),
}


def version_prefix(provider: Provider) -> str:
    """``/v1beta`` unless the configured base URL already ends in an API version."""
    last = urlsplit(provider.base_url).path.rstrip("/").rsplit("/", 1)[-1]
    return "" if last in ("v1beta", "v1", "v1alpha") else "/v1beta"


def api_path(provider: Provider, model: str, stream: bool, action: str = "generateContent") -> str:
    """The model's path for ``action`` (``models/`` prefix accepted; a name that would leave its segment is a 400)."""
    name = model_segment(model.removeprefix("models/"))
    if stream:
        action = "streamGenerateContent?alt=sse"
    return f"{version_prefix(provider)}/models/{name}:{action}"


def auth_headers(provider: Provider) -> dict[str, str]:
    return {"x-goog-api-key": provider.api_key} if provider.api_key else {}


# --------------------------------------------------------------------------- request translation


def clean_schema(schema: Any, param: str = "tools") -> Any:
    """A JSON schema with only the keywords Gemini's Schema has (property names kept), and each
    ``$ref`` to the schema's own ``$defs`` (or ``definitions``) inlined: a nested pydantic model's
    schema refers to its parts, which Gemini's Schema object cannot (a 400 from Gemini before).

    Nesting deeper than MAX_SCHEMA_DEPTH, a ``$ref`` to anything else, a recursive one, more
    than MAX_SCHEMA_REFS of them inlined (parts that refer to parts twice over double at each level)
    and more than MAX_SCHEMA_INLINED parts made by inlining them are the client's error (a 400
    naming ``param``), never a RecursionError or a blow-up.
    """
    defs = schema_defs(schema)
    inlined = copied = 0

    def refused(what: str, code: str = "unsupported_schema") -> ProxyError:
        return ProxyError(400, f"the JSON schema in {param!r} {what}", param=param, code=code)

    def clean(node: Any, depth: int, inlining: tuple[str, ...]) -> Any:
        nonlocal inlined, copied
        if depth > MAX_SCHEMA_DEPTH:
            raise refused(f"is nested deeper than {MAX_SCHEMA_DEPTH} levels", "schema_too_deep")
        if inlining and isinstance(node, (dict, list)):
            copied += 1
            if copied > MAX_SCHEMA_INLINED:
                raise refused(f"expands to more than {MAX_SCHEMA_INLINED} parts once its $refs are inlined")
        if isinstance(node, list):
            return [clean(item, depth + 1, inlining) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1] if ref.startswith(("#/$defs/", "#/definitions/")) else None
            if name is None or name not in defs:
                raise refused(f"has a $ref Gemini cannot follow: {ref[:100]!r}")
            if name in inlining:
                raise refused(f"is recursive ({name[:100]!r} refers to itself): Gemini cannot take it")
            inlined += 1
            if inlined > MAX_SCHEMA_REFS:
                raise refused(f"has more than {MAX_SCHEMA_REFS} $refs to inline")
            return clean({**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}, depth + 1, (*inlining, name))
        out: dict = {}
        const = node.get("const")
        if isinstance(const, str) and "enum" not in node:  # Gemini has no const: its one-value enum
            out.update(type="string", enum=[const])
        for key, value in node.items():
            if key not in GEMINI_SCHEMA_FIELDS:
                continue
            if key == "properties" and isinstance(value, dict):
                out[key] = {name: clean(sub, depth + 1, inlining) for name, sub in value.items()}
            elif key == "enum" and isinstance(value, list):  # Gemini enums are strings; null means nullable
                out[key] = [item for item in value if item is not None]
            elif key == "type" and isinstance(value, list):  # ["string", "null"] → string, nullable
                kinds = [k for k in value if k != "null"]
                out[key] = kinds[0] if len(kinds) == 1 else value
                if "null" in value:
                    out["nullable"] = True
            else:
                out[key] = clean(value, depth + 1, inlining) if isinstance(value, (dict, list)) else value
        if out.get("properties") == {}:  # Gemini: "properties: should be non-empty for OBJECT type"
            out.pop("properties")
            if out.get("required") == []:
                out.pop("required")
        return out

    return clean(schema, 0, ())


def schema_defs(schema: Any) -> dict:
    """The named parts a schema's ``$ref`` may point at: its ``$defs`` and ``definitions``."""
    if not isinstance(schema, dict):
        return {}
    found: dict = {}
    for key in ("definitions", "$defs"):
        if isinstance(schema.get(key), dict):
            found.update(schema[key])
    return found


def image_part(url: str) -> dict:
    inline = data_url(url)
    if inline:
        return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
    if names_a_file(url):  # Google would read another key's upload: named only where it is checked
        raise ProxyError(
            400,
            "a URL naming Google's API host (a Gemini Files API file) is taken only in a Gemini-native "
            "request's fileData.fileUri, where Stockyard checks the file is this key's",
            param="messages",
            code="invalid_image_url",
        )
    if url.startswith(("http://", "https://")):
        mime = mimetypes.guess_type(urlsplit(url).path)[0] or "image/*"
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise ProxyError(400, "image URLs must be http(s) or base64 data URLs", param="messages", code="invalid_image_url")


def content_parts(content: Any) -> list[dict]:
    """OpenAI message content → Gemini parts (text, images, and inline files as ``inlineData``:
    Gemini reads PDFs, text, audio and video the same way as images)."""
    return translate_content(
        content, lambda part, text: {"text": text}, image_part, "Gemini", lambda url, name: image_part(url)
    )


def tool_result(content: Any) -> Any:
    """A tool message's content as Gemini wants it: parsed JSON when it is JSON, else text."""
    text = text_of(content)
    try:
        return json.loads(text)
    except ValueError:
        return text


def function_call_part(call: dict, name: str | None) -> dict:
    """An assistant tool call → a functionCall part, with its thought signature when echoed back."""
    part: dict = {"functionCall": {"name": name, "args": tool_arguments(call)}}
    signature = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
    if isinstance(signature, str) and signature:
        part["thoughtSignature"] = signature
    return part


def translate_messages(items: Any) -> tuple[dict | None, list[dict]]:
    """OpenAI ``messages`` → (``systemInstruction``, ``contents``)."""
    system: list[str] = []
    contents: list[dict] = []
    names: dict[Any, Any] = {}  # tool call id → function name, for the tool results
    for msg in tool_media_after(message_list(items)):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role in ("system", "developer"):
            system.append(text_of(msg.get("content")))
        elif role == "user":
            append_turn(contents, "user", content_parts(msg.get("content")), "parts")
        elif role == "assistant":
            parts = content_parts(msg.get("content"))
            for call in msg.get("tool_calls") or []:
                name = (call.get("function") or {}).get("name")
                names[call.get("id")] = name
                parts.append(function_call_part(call, name))
            append_turn(contents, "model", parts, "parts")
        elif role == "tool":
            name = names.get(msg.get("tool_call_id")) or msg.get("name")
            if not name:
                raise ProxyError(
                    400,
                    "a tool message's tool_call_id matches no earlier assistant tool call",
                    param="messages",
                    code="unknown_tool_call",
                )
            part = {"functionResponse": {"name": name, "response": {"content": tool_result(msg.get("content"))}}}
            append_turn(contents, "user", [part], "parts")
        else:
            raise unsupported_role(role, "Gemini")
    text = "\n\n".join(s for s in system if s)
    return ({"parts": [{"text": text}]} if text else None), contents


def translate_tools(tools: Any) -> list[dict]:
    decls = []
    for tool in tools or []:
        fn = tool_function(tool)
        decl = {"name": fn["name"]}
        if fn.get("description"):
            decl["description"] = fn["description"]
        params = clean_schema(fn.get("parameters"))
        if isinstance(params, dict) and params.get("properties"):  # Gemini refuses an empty object
            decl["parameters"] = params
        decls.append(decl)
    return [{"functionDeclarations": decls}] if decls else []


def with_allowed(body: dict, mode: str, names: list[str]) -> tuple[dict, dict | None]:
    """The body and ``toolConfig`` for an ``allowed_tools`` tool_choice of ``mode`` allowing ``names``.
    ``required``: every function declared, ``ANY`` limited to ``names`` by allowedFunctionNames (the
    declarations, the start of the prompt Gemini caches, as in the other turns). ``auto``: only ``names``
    declared, ``AUTO``: allowedFunctionNames goes with ANY (or the preview VALIDATED) only, as Gemini's
    FunctionCallingConfig says."""
    if mode == "required":
        return body, {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": names}}
    return {**body, "tools": only_allowed(body.get("tools"), names), "tool_choice": "auto"}, None


def translate_tool_choice(choice: Any) -> dict | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in TOOL_CHOICE:
        return {"functionCallingConfig": {"mode": TOOL_CHOICE[choice]}}
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    if not name:
        raise ProxyError(400, "unsupported tool_choice", param="tool_choice", code="invalid_tool_choice")
    return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}


def level_for(model: str, level: str) -> str:
    """The nearest thinking level ``model`` takes: Gemini's Pro models have no ``minimal`` (the
    least is ``low``), and Gemini 3 Pro no ``medium`` either (``high``, its default); the others
    take all four. Gemini refuses a level its model lacks."""
    if "-pro" not in model:
        return level
    if level == "minimal":
        return "low"
    if level == "medium" and PRO_HIGH_FOR_MEDIUM.match(model):
        return "high"
    return level


def gemini3(model: str) -> bool:
    return model.removeprefix("models/").startswith("gemini-3")


def thinking_config(effort: Any, model: str) -> dict | None:
    """reasoning_effort → thinkingConfig for this model (None when the request asks nothing)."""
    if not isinstance(effort, str) or effort not in THINKING_BUDGETS:
        return None
    if gemini3(model):
        config: dict = {"thinkingLevel": level_for(model.removeprefix("models/"), THINKING_LEVELS[effort])}
    else:
        config = {"thinkingBudget": THINKING_BUDGETS[effort]}
    if effort != "none":  # the thoughts' summaries, as Claude's thinking comes back (billed either way)
        config["includeThoughts"] = True
    return config


def user_text_turn(content: dict) -> bool:
    """A user turn that starts a tool loop: text, no function responses."""
    parts = content.get("parts") or []
    return (
        content.get("role") == "user"
        and any("text" in p for p in parts)
        and not any("functionResponse" in p for p in parts)
    )


def sign_active_loop(contents: list[dict]) -> bool:
    """Give the first function call of each model turn since the last user text a thought
    signature where it has none (``SKIP_SIGNATURE``), as Gemini 3 requires and Gemini CLI does;
    True when one was added."""
    start = next((i for i in range(len(contents) - 1, -1, -1) if user_text_turn(contents[i])), None)
    added = False
    for content in contents[start:] if start is not None else []:
        call = next((p for p in content.get("parts") or [] if "functionCall" in p), None)
        if content.get("role") == "model" and call is not None and not call.get("thoughtSignature"):
            call["thoughtSignature"] = SKIP_SIGNATURE
            added = True
    return added


def _response_modalities(value: Any) -> list[str] | None:
    """The chat ``modalities`` (OpenRouter's way to ask an image model for images) as Gemini's
    ``responseModalities``; None unless a non-empty list of ``text`` and ``image``."""
    if not isinstance(value, list) or not value or not all(m in ("text", "image") for m in value):
        return None
    return [m.upper() for m in dict.fromkeys(value)]


def generation_config(body: dict, model: str = "") -> dict:
    config = {theirs: body[ours] for ours, theirs in GENERATION_FIELDS if body.get(ours) is not None}
    modalities = _response_modalities(body.get("modalities"))
    if modalities is not None:
        config["responseModalities"] = modalities
    limit = next((body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None), None)
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" else None
        if isinstance(schema, dict):
            config["responseSchema"] = clean_schema(schema, "response_format")
    thinking = thinking_config(body.get("reasoning_effort"), model)
    if thinking:
        config["thinkingConfig"] = thinking
    return config


# Google's stand-in for a thought signature a tool loop lost (a client that drops the tool call's
# ``extra_content``, or history made on another model): Gemini 3 takes it instead of a 400.
SKIP_SIGNATURE = "skip_thought_signature_validator"
SIGNATURE_SKIPPED = (
    "thought signature skipped: a function call of the tool loop came back without the one Gemini "
    f"gave it; sent with Google's {SKIP_SIGNATURE}"
)


def generate_request(body: dict, model: str = "") -> dict:
    """The whole ``generateContent`` request for an OpenAI chat request."""
    system, contents = translate_messages(body.get("messages"))
    out: dict = {"contents": contents}
    if system:
        out["systemInstruction"] = system
    allowed = allowed_tools(body)
    body, choice = with_allowed(body, *allowed) if allowed is not None else (body, None)
    tools = translate_tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = choice or translate_tool_choice(body.get("tool_choice"))
        if choice:
            out["toolConfig"] = choice
    config = generation_config(body, model)
    if config:
        out["generationConfig"] = config
    return out


def embedding_texts(value: Any) -> list[str]:
    """The embeddings ``input`` as texts: a string or a non-empty list of strings (token ids are a 400)."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ProxyError(
            400,
            "Gemini embeddings take 'input' as a string or a list of strings (not token ids)",
            param="input",
            code="invalid_input",
        )
    return texts


def embedded_tokens(texts: list[str]) -> int:
    """The estimated input tokens of texts Gemini embedded (it reports none): each text's UTF-8
    bytes at four a token, as every estimate here counts (and the budget's hold of the request):
    four characters would bill a CJK text, about a token a character, a quarter token each."""
    return sum(max(1, text_tokens(t.encode("utf-8", "surrogatepass"))) for t in texts)


def embed_request(body: dict, model: str) -> dict:
    """An OpenAI embeddings request → ``batchEmbedContents``: one request per input text."""
    name = "models/" + model.removeprefix("models/")
    requests = []
    for text in embedding_texts(body.get("input")):
        item: dict = {"model": name, "content": {"parts": [{"text": text}]}}
        if body.get("dimensions") is not None:
            item["outputDimensionality"] = body["dimensions"]
        requests.append(item)
    return {"requests": requests}


def embedding_value(values: list, encoding: Any) -> Any:
    """One vector as the client asked: floats, or base64 of little-endian float32 (OpenAI's form)."""
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


def embeddings_answer(doc: dict, body: dict, model: str, usage: Usage) -> bytes:
    """``batchEmbedContents``' ``embeddings[].values`` → an OpenAI embeddings list."""
    data = [
        {"object": "embedding", "index": i, "embedding": embedding_value(e["values"], body.get("encoding_format"))}
        for i, e in enumerate(doc["embeddings"])
    ]
    answer = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    }
    return json.dumps(answer).encode()


# --------------------------------------------------------------------------- answer translation


def call_id(fn: dict) -> str:
    """A tool call's id: Gemini's own when it gives one, else a new random one — unique across the
    conversation, as the other providers' are (a history carried on to Claude must not name one
    tool call twice, and a client may key results by id)."""
    given = fn.get("id")
    return given if isinstance(given, str) and given else f"call_{secrets.token_hex(12)}"


def one_call_only(body: dict) -> bool:
    """The client allows one tool call per answer (``parallel_tool_calls: false``, which Codex CLI
    sends): Gemini cannot be told, so the answer keeps its first call — as OpenAI's would hold one."""
    return body.get("parallel_tool_calls") is False


def first_call_only(ctx: RequestContext, calls: list[dict], made: bool = False) -> list[dict]:
    """With ``parallel_tool_calls: false``: a choice's first call (none once it ``made`` one); the
    trace says how many were left out (the model made them, and they are billed)."""
    kept = [] if made else calls[:1]
    if len(calls) > len(kept):
        note(ctx, f"{len(calls) - len(kept)} more tool call(s) left out (parallel_tool_calls: false)")
    return kept


def candidate_message(candidate: dict, before: int = 0) -> tuple[str | None, list[dict], str, list[dict]]:
    """(text, tool_calls, thought summaries, images) of one candidate; each image says where in the
    text the model drew it (``text_offset``: ``before``, the characters sent earlier, and those of
    this candidate's text before it), so a translation that keeps the order can (a Responses answer)."""
    texts: list[str] = []
    calls: list[dict] = []
    thoughts: list[str] = []
    images: list[dict] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if part.get("thought"):
            thoughts.append(part["text"] if isinstance(part.get("text"), str) else "")
        elif isinstance(part.get("text"), str):
            texts.append(part["text"])
            before += len(part["text"])
        elif (image := drawn_image(part)) is not None:
            images.append({**image, "text_offset": before})
        elif isinstance(part.get("functionCall"), dict):
            fn = part["functionCall"]
            call = {
                "id": call_id(fn),
                "type": "function",
                "function": {"name": fn.get("name"), "arguments": json.dumps(fn.get("args") or {})},
            }
            if part.get("thoughtSignature"):  # Gemini wants it back with the call (as its OpenAI API does)
                call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
            calls.append(call)
    return ("".join(texts) if texts else None), calls, "".join(thoughts), images


def drawn_image(part: dict) -> dict | None:
    """An image model's image (an ``inlineData`` image part) as chat image models send theirs
    (OpenRouter's ``message.images`` item: a data URL), so the image Google bills reaches the client."""
    inline = part.get("inlineData")
    if not isinstance(inline, dict):
        return None
    mime, data = inline.get("mimeType"), inline.get("data")
    if not isinstance(mime, str) or not mime.startswith("image/") or not isinstance(data, str):
        return None
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def image_runs(parts: list) -> list[list]:
    """A chunk's parts cut before and after each image part, so its text, images and calls go out
    in the order the model made them (a chunk's text is one delta, which would go before its images)."""
    runs: list[list] = [[]]
    for part in parts:
        if isinstance(part, dict) and drawn_image(part) is not None:
            runs += [[part], []]
        else:
            runs[-1].append(part)
    return [run for run in runs if run]


def finish_reason(reason: str | None, has_calls: bool) -> str | None:
    if has_calls and reason in ("STOP", None):
        return "tool_calls" if reason else None
    if reason is None:
        return None
    return FINISH_REASONS.get(reason, "stop")


def response_choices(doc: dict, ctx: RequestContext | None = None) -> list[dict]:
    """The chat choices of a GenerateContentResponse (each with its first tool call only when the
    request on ``ctx`` allows one: :func:`one_call_only`)."""
    choices = []
    for position, candidate in enumerate(doc.get("candidates") or []):
        text, calls, thoughts, images = candidate_message(candidate)
        if ctx is not None and one_call_only(ctx.body):
            calls = first_call_only(ctx, calls)
        message: dict = {"role": "assistant", "content": text, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        if images:
            message["images"] = images
        if thoughts:
            message["reasoning_content"] = thoughts
        reason = finish_reason(candidate.get("finishReason") or "STOP", bool(calls))
        choices.append(
            {"index": candidate.get("index", position), "message": message, "logprobs": None, "finish_reason": reason}
        )
    if not choices:  # the prompt itself was blocked (promptFeedback.blockReason)
        choices.append(
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": None},
                "logprobs": None,
                "finish_reason": "content_filter",
            }
        )
    return choices


def status_and_message(payload: Any) -> tuple[str, str] | None:
    """(status name, message) of a Google error object: what an OpenAI error's code and message carry."""
    fields = error_fields(payload)
    return (fields[1], fields[2]) if fields else None


def partial_usage(ctx: RequestContext, complete: bool) -> bool:
    """Whether the usage read so far is a floor, not the answer's count: a chunk before the one
    that ends the answer may hold the prompt's count alone (no ``candidatesTokenCount`` yet), so a
    stream cut there is billed at least the text it relayed (``billing``: ``Attempt.usage_partial``)."""
    return ctx.attempt.usage is not None and not complete


def note_uncounted(ctx: RequestContext, doc: Any) -> None:
    """Keep count of the answer a stream relayed past its latest output count (``Attempt.uncounted_bytes``):
    a chunk whose usage counts the candidates' tokens counts all of their text so far, its own too;
    any other chunk's text and calls are not counted yet. Thoughts are not text here: the usage counts
    them apart (``thoughtsTokenCount``, reported before the text they lead to), and a summary is part
    of them. A cut stream is billed that count, its thoughts included, and this text beside it. Bytes
    of UTF-8, as every estimate of text here (``estimate.relayed_tokens``): in characters, a text that
    is not ASCII read as fewer tokens than that estimate of it alone, and its thoughts went unbilled."""
    if not isinstance(doc, dict):
        return
    meta = doc.get("usageMetadata")
    counted = meta.get("candidatesTokenCount") if isinstance(meta, dict) else None
    if isinstance(counted, int) and counted > 0:
        ctx.attempt.uncounted_bytes = 0
        return
    candidates = doc.get("candidates")
    for candidate in candidates if isinstance(candidates, list) else ():
        content = candidate.get("content") if isinstance(candidate, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():  # a native stream's are the provider's, unchecked
            if not isinstance(part, dict) or part.get("thought"):
                continue
            if isinstance(part.get("text"), str):
                ctx.attempt.uncounted_bytes += utf8_size(part["text"])
            elif isinstance(part.get("functionCall"), dict):
                try:
                    args = json.dumps(part["functionCall"].get("args") or {}, ensure_ascii=False)
                except RecursionError:  # nested past the encoder's depth: the provider's, uncounted
                    continue
                ctx.attempt.uncounted_bytes += utf8_size(args)


def utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (a lone surrogate, which JSON may carry and UTF-8 has not, as three)."""
    return len(text.encode("utf-8", "surrogatepass"))


def error_fields(payload: Any) -> tuple[int, str, str] | None:
    """(HTTP code, status name, message) of a Google error object (or a one-item list of them)."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    err = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("message"), str):
        return None
    raw_code = err.get("code")
    code = raw_code if isinstance(raw_code, int) and 400 <= raw_code <= 599 else 502
    return code, str(err.get("status") or code), err["message"]


GOOGLE_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def retry_delay(payload: Any) -> float | None:
    """Seconds a Google error's ``RetryInfo`` asks a caller to wait (``"retryDelay": "34s"``: Gemini's
    429 says it there, not in a ``Retry-After`` header); None without one."""
    err = payload.get("error") if isinstance(payload, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    for detail in details if isinstance(details, list) else []:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and detail.get("@type") == GOOGLE_RETRY_INFO and delay.endswith("s"):
            try:
                seconds = float(delay[:-1])
            except ValueError:
                return None
            return seconds if 0 <= seconds < 86_400 else None
    return None


def numbered(entries: list[dict], counts: dict[int, int], choice: int) -> list[dict]:
    """A chunk's list entries (images, tool calls) with their ``index`` in the choice's list, which
    goes on from the entries ``counts`` says the choice sent before (and now counts these too)."""
    first = counts.get(choice, 0)
    counts[choice] = first + len(entries)
    return [{"index": first + n, **entry} for n, entry in enumerate(entries)]


# --------------------------------------------------------------------------- adapter


class GeminiAdapter(Adapter):
    """OpenAI-dialect chat and embeddings requests to a Gemini provider, translated both ways."""

    def prepare(self, ctx: RequestContext, provider: Provider, model: str) -> UpstreamCall:
        endpoint_check(ctx, provider, ("chat", "embeddings"))
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if ctx.stream else "application/json",
            **auth_headers(provider),
        }
        if ctx.endpoint == "embeddings":
            with shape_errors(400, "the embeddings request"):
                request = embed_request(honoured_body(ctx, EMBEDDING_FIELDS, "Gemini embedding"), model)
            path = api_path(provider, model, False, "batchEmbedContents")
            return UpstreamCall("POST", path, headers, json.dumps(request, ensure_ascii=False).encode())
        with shape_errors(400, "the chat request"):
            request = generate_request(honoured_body(ctx, CHAT_FIELDS, "Gemini"), model)
        if gemini3(model) and sign_active_loop(request["contents"]):
            note(ctx, SIGNATURE_SKIPPED)
        body = json.dumps(request, ensure_ascii=False).encode()
        return UpstreamCall("POST", api_path(provider, model, ctx.stream), headers, body)

    def parse(self, ctx: RequestContext, body: bytes) -> bytes:
        doc = loads_object(body)
        if ctx.endpoint == "embeddings":
            return self.parse_embeddings(ctx, doc)
        with shape_errors(502, "the provider answer"):
            ctx.attempt.serve(
                doc.get("modelVersion") or ctx.attempt.served_model or ctx.attempt.upstream_model, doc.get("responseId")
            )
            meta = doc.get("usageMetadata")
            ctx.attempt.usage = Usage.from_gemini(meta) if isinstance(meta, dict) else None
            ident = doc.get("responseId") or ctx.trace_id
            return completion(
                ident,
                int(time.time()),
                ctx.attempt.served_model or "",
                response_choices(doc, ctx),
                ctx.attempt.usage,
            )

    def parse_embeddings(self, ctx: RequestContext, doc: dict) -> bytes:
        """Gemini reports no usage for embeddings: the input is estimated (:func:`embedded_tokens`)."""
        texts = embedding_texts(ctx.body.get("input"))
        ctx.attempt.usage = Usage(prompt_tokens=embedded_tokens(texts))
        ctx.attempt.usage_estimated = True
        ctx.attempt.served_model = ctx.attempt.served_model or ctx.attempt.upstream_model
        with shape_errors(502, "the provider answer"):
            return embeddings_answer(doc, ctx.body, ctx.attempt.served_model or "", ctx.attempt.usage)

    def stream(self, ctx: RequestContext) -> StreamTranslator:
        return GeminiStream(ctx)

    def error(self, ctx: RequestContext, status: int, body: bytes) -> bytes:
        return upstream_error(ctx, status, body, status_and_message)


class GeminiStream(ChunkStream):
    """Each GenerateContentResponse chunk → ``chat.completion.chunk`` events."""

    def __init__(self, ctx: RequestContext) -> None:
        super().__init__(ctx)
        self.started: set[int] = set()  # choices whose role chunk went out
        self.calls: dict[int, int] = {}  # choice index → its tool calls so far (each choice's indices from 0)
        self.one_call = one_call_only(ctx.body)
        self.called: set[int] = set()  # choices that made their one call (with one_call)
        self.images: dict[int, int] = {}  # choice index → images sent in it
        self.chars: dict[int, int] = {}  # choice index → characters of its text sent (an image's text_offset)

    def translate(self, doc: Any) -> list[bytes]:
        fields = error_fields(doc)
        if fields is not None:
            return self.fail(*fields)
        if not isinstance(doc, dict):
            return []
        self.identify(doc.get("responseId"), doc.get("modelVersion"))
        if isinstance(doc.get("usageMetadata"), dict):  # cumulative: the latest one counts
            self.ctx.attempt.usage = Usage.from_gemini(doc["usageMetadata"])
        note_uncounted(self.ctx, doc)
        out: list[bytes] = []
        for position, candidate in enumerate(doc.get("candidates") or []):
            out += self.candidate_events(candidate, candidate.get("index", position))
        if not doc.get("candidates") and (doc.get("promptFeedback") or {}).get("blockReason"):
            out += [self.out({"role": "assistant", "content": ""}), self.out({}, "content_filter")]
            self.complete = True
        self.ctx.attempt.usage_partial = partial_usage(self.ctx, self.complete)
        return out

    def candidate_events(self, candidate: dict, index: int) -> list[bytes]:
        out: list[bytes] = []
        if index not in self.started:
            self.started.add(index)
            out.append(self.out({"role": "assistant", "content": ""}, index=index))
        for run in image_runs((candidate.get("content") or {}).get("parts") or []):
            out += self.run_events(run, index)
        reason = candidate.get("finishReason")
        if reason:
            self.complete = True
            out.append(self.out({}, finish_reason(reason, self.calls.get(index, 0) > 0), index=index))
        return out

    def run_events(self, parts: list, index: int) -> list[bytes]:
        """The chunks of one run of a candidate's parts (:func:`image_runs`) for choice ``index``."""
        out: list[bytes] = []
        text, calls, thoughts, images = candidate_message({"content": {"parts": parts}}, self.chars.get(index, 0))
        if self.one_call:
            calls = first_call_only(self.ctx, calls, made=index in self.called)
            self.called.update([index] if calls else [])
        if thoughts:
            out.append(self.out({"reasoning_content": thoughts}, index=index))
        if text:
            self.chars[index] = self.chars.get(index, 0) + len(text)
            out.append(self.out({"content": text}, index=index))
        if images:  # numbered, as list entries sent in pieces are: the SDKs' accumulators merge them by index
            out.append(self.out({"images": numbered(images, self.images, index)}, index=index))
        if calls:
            out.append(self.out({"tool_calls": numbered(calls, self.calls, index)}, index=index))
        return out

    def finish(self) -> list[bytes]:
        """Gemini has no terminal event: the answer ends here, once a finish reason came."""
        if self.failed:
            return []
        if not self.complete:
            return self.fail(502, "incomplete_stream", "the provider's stream ended without a finish reason")
        return self.done()

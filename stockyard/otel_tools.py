"""The tools a request offers the model, as the GenAI conventions' ``gen_ai.tool.definitions``.

The conventions' form (gen-ai-tool-definitions.json) is a list of ``{"type": "function",
"name", "description", "parameters"}`` — ``parameters`` a JSON Schema (draft-07) document —
or, for any other kind of tool, ``{"type", "name"}``. Each dialect offers tools its own way:
chat's ``tools[].function`` (and the older ``functions``), the Responses API's flat
``tools``, Anthropic's ``tools`` (``input_schema``; a server tool has a ``type`` of its own),
Gemini's ``tools[].functionDeclarations`` (its ``parameters`` are Gemini's Schema, whose
types are upper case: made JSON Schema's) beside built-in tools such as ``googleSearch``.
A built-in tool without a name of its own is named by its type.

The attribute is opt-in (the conventions say so: descriptions and schemas are large and may
say what the product does), so it is sent only with ``STOCKYARD_OTLP_CONTENT=true``, read from
the body as the trace keeps it (after redaction), every string scrubbed. It is bounded like
the messages: a description is cut at ``PART_CAP`` characters, a schema larger than that is
replaced by one whose ``$comment`` says so, and the attribute is at most ``ATTRIBUTE_CAP``:
the first tools whole, then names only, then none, with a last entry (type
``stockyard.left_out``) saying how many were shortened or left out.
"""

from __future__ import annotations

from typing import Any

from .otel_messages import ATTRIBUTE_CAP, MARKER_ROOM, PART_CAP, Parts, Scrub, dumps

LEFT_OUT = "stockyard.left_out"  # the type of the entry that says what the cap left out
GEMINI_TYPES = frozenset({"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"})


def tool_definitions(endpoint: str, body: Any, scrub: Scrub) -> str | None:
    """``gen_ai.tool.definitions`` of a request body (None: it offers no tools, or is not JSON)."""
    try:
        tools = offered(endpoint, body, Parts(scrub))
    except Exception:  # telemetry never fails a request; an odd body just has no tools here
        return None
    return fit_tools(tools, ATTRIBUTE_CAP) if tools else None


def offered(endpoint: str, body: Any, p: Parts) -> list[dict]:
    """The tools of a request in the conventions' form, in the order the client gave them."""
    if not isinstance(body, dict):
        return []
    given = body.get("tools")
    tools: list = given if isinstance(given, list) else []
    if endpoint == "generate":
        return [d for tool in tools if isinstance(tool, dict) for d in _gemini(tool, p)]
    read = {"chat": _chat, "responses": _responses, "messages": _anthropic}.get(endpoint)
    if read is None:
        return []
    out = [read(tool, p) for tool in tools if isinstance(tool, dict)]
    if endpoint == "chat" and isinstance(body.get("functions"), list):  # chat's older form
        out += [_function(f, p, f.get("parameters")) for f in body["functions"] if isinstance(f, dict)]
    return out


def _function(fn: dict, p: Parts, schema: Any) -> dict:
    """A function tool: its name, and its description and parameters schema when it has them."""
    out: dict[str, Any] = {"type": "function", "name": p.cut(str(fn.get("name") or ""), 256)}
    if isinstance(fn.get("description"), str) and fn["description"]:
        out["description"] = p.cut(fn["description"])
    if isinstance(schema, dict):
        out["parameters"] = _schema(schema, p)
    return out


def _other(kind: Any, name: Any, p: Parts, description: Any = None) -> dict:
    """A tool that is not a function (a built-in, a custom grammar tool, an MCP server)."""
    kind = p.cut(str(kind or "unknown"), 64)
    out = {"type": kind, "name": p.cut(name, 256) if isinstance(name, str) and name else kind}
    if isinstance(description, str) and description:
        out["description"] = p.cut(description)
    return out


def _schema(schema: dict, p: Parts) -> dict:
    """A parameters schema, scrubbed; over ``PART_CAP`` characters, a schema that says so."""
    size = len(dumps(schema))
    if size > PART_CAP:
        return {"$comment": f"[parameters left out: {size} characters, over the {PART_CAP} cap]"}
    return p.scrubbed(schema)


def _chat(tool: dict, p: Parts) -> dict:
    kind = tool.get("type") or "function"
    found = tool.get(kind)
    inner: dict = found if isinstance(found, dict) else {}
    if kind == "function":
        return _function(inner, p, inner.get("parameters"))
    return _other(kind, inner.get("name"), p, inner.get("description"))  # custom: a free-form input tool


def _responses(tool: dict, p: Parts) -> dict:
    kind = tool.get("type") or "function"
    if kind == "function":
        return _function(tool, p, tool.get("parameters"))
    name = tool.get("server_label") if kind == "mcp" else tool.get("name")
    return _other(kind, name, p, tool.get("description"))


def _anthropic(tool: dict, p: Parts) -> dict:
    kind = tool.get("type")
    if kind in (None, "custom"):  # a client tool; a server or client-defined built-in has its own type
        return _function(tool, p, tool.get("input_schema"))
    return _other(kind, tool.get("name"), p)


def _gemini(tool: dict, p: Parts) -> list[dict]:
    out: list[dict] = []
    for key, value in tool.items():
        if key in ("functionDeclarations", "function_declarations") and isinstance(value, list):
            for fn in value:
                if not isinstance(fn, dict):
                    continue
                schema = fn.get("parametersJsonSchema", fn.get("parameters_json_schema"))
                out.append(_function(fn, p, schema if schema is not None else json_schema(fn.get("parameters"))))
        else:
            out.append(_other(key, None, p))
    return out


def json_schema(schema: Any) -> Any:
    """Gemini's Schema as JSON Schema: its types (``OBJECT``, ``STRING``…) in lower case, through
    ``properties``, ``items`` and ``anyOf``; every other keyword as it is."""
    if not isinstance(schema, dict):
        return schema
    out: dict = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str) and value.upper() in GEMINI_TYPES:
            out[key] = value.lower()
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: json_schema(s) for name, s in value.items()}
        elif key == "items":
            out[key] = json_schema(value)
        elif key == "anyOf" and isinstance(value, list):
            out[key] = [json_schema(s) for s in value]
        else:
            out[key] = value
    return out


def fit_tools(tools: list[dict], cap: int) -> str:
    """Tool definitions as JSON of at most ``cap`` characters: the first tools whole, then by
    their type and name only (the properties the schema requires), then none; the last entry
    says how many were shortened and how many left out."""
    text = dumps(tools)
    if len(text) <= cap:
        return text
    room, kept, used, named = cap - MARKER_ROOM, [], 2, 0
    for tool in tools:
        whole = not named and len(dumps(tool)) + 1 + used <= room
        entry = tool if whole else {"type": tool["type"], "name": tool["name"]}
        size = len(dumps(entry)) + 1
        if used + size > room:
            break
        kept.append(entry)
        used += size
        named += not whole
    left_out = len(tools) - len(kept)
    note = f"[{named} tools named only, {left_out} left out: the attribute is capped at {cap} characters]"
    return dumps([*kept, {"type": LEFT_OUT, "name": note}])

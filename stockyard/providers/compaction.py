"""OpenAI's compaction, emulated for providers that speak only chat (Claude, Gemini, …).

OpenAI compacts a conversation into one ``compaction`` item whose ``encrypted_content`` only its
own models can read: ``POST /v1/responses/compact`` answers the conversation's user messages and
that item (the SDK's ``client.responses.compact``, the OpenAI Agents SDK's compaction session), and
a ``/v1/responses`` request whose ``input`` ends with ``{"type": "compaction_trigger"}`` answers
the item alone (Codex CLI's built-in OpenAI provider, streamed).

For a translated provider Stockyard asks the model itself for the summary (:data:`INSTRUCTION`,
a last user message; tools stay defined, for the calls in the history, but may not be called),
and answers the item the client expects with a token of its own as ``encrypted_content``:
:data:`PREFIX` then base64url of ``{"summary": …}``. The token is plain, not sealed: the summary
is the client's own conversation, it names no provider, key or stored row, and all it can ever
become is that text in a user message (:func:`summary_message`) — which the client could send as
it is. So a forged token gains nothing; a malformed one is a 400 naming it (:func:`read`). Any
provider can read a summary, so a conversation compacted on Claude goes on on Gemini, and on a
provider that speaks the Responses API the item becomes that user message (``as_input_message``).

The summary goes back as a *user* message, where the compacted turns were: as Codex's own local
compaction does, and because Anthropic and Gemini hold system text apart from the turns (a
``system`` message mid-conversation moves to the top, out of its place); it is the conversation's
content, not the operator's instructions, so it gets no more authority than the client's turns.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from ..errors import ProxyError
from ..httpio import json_bytes

TRIGGER = "compaction_trigger"
ITEM = "compaction"
PREFIX = "stockyard-compaction-v1."
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
# The last user message of the summarization request (Stockyard's own words).
INSTRUCTION = (
    "Stop here and write a handoff summary of this conversation instead of answering. It will replace "
    "the earlier messages: whoever continues the work sees only this summary and the user's latest "
    "messages. Cover what the user wants; what has been done and decided so far, and why; the facts "
    "needed to go on (names, paths, commands, values, errors, the user's preferences and constraints); "
    "and what is left to do, in order. Be brief and structured. Reply with the summary only, and call no tools."
)
# What the model reads before a summary that comes back in a later request.
SUMMARY_HEADING = (
    "[Summary of the earlier part of this conversation, written when it was compacted; "
    "the messages it replaces are no longer shown.]\n\n"
)


def mint(summary: str) -> str:
    """The ``encrypted_content`` of a compaction item Stockyard makes: :data:`PREFIX` + base64url JSON.
    A lone UTF-16 surrogate in the model's summary becomes ``?`` (UTF-8's replacement on encoding):
    escaped, it would make a token :func:`read` refuses when the client sends it back, and no
    provider takes it in a request."""
    sendable = summary.encode("utf-8", "replace").decode()
    return PREFIX + base64.urlsafe_b64encode(json_bytes({"summary": sendable}, compact=True)).decode()


def ours(token: Any) -> bool:
    """A compaction token Stockyard made (or one written to look like it): its prefix."""
    return isinstance(token, str) and token.startswith(PREFIX)


def read(token: Any, param: str) -> str:
    """The summary a compaction token carries; a 400 naming ``param`` for anything else: a token not
    Stockyard's (OpenAI's, which only its models read) or one that is not well formed."""
    if not isinstance(token, str) or not token:
        raise ProxyError(400, f"{param} must be a non-empty string", param=param, code="invalid_request")
    if not ours(token):
        raise ProxyError(
            400,
            f"{param}: this compaction item was made by OpenAI, and only OpenAI's models read its encrypted "
            "content; a provider that speaks only chat reads the compaction items Stockyard makes "
            "(compact the conversation with this model)",
            param=param,
            code="unsupported_parameter",
        )
    summary = peek(token)
    if summary is None:
        raise ProxyError(
            400,
            f"{param} is not a compaction Stockyard made (it was changed or cut short); send the item as it came",
            param=param,
            code="invalid_compaction",
        )
    return summary


def peek(token: Any) -> str | None:
    """The summary of a well-formed Stockyard token, else None (never an error): for :func:`read`, and
    for the redact module, which looks inside a token as it looks at any text."""
    if not ours(token):
        return None
    body = token[len(PREFIX) :]
    if not _BASE64URL.fullmatch(body):
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None
    summary = value.get("summary") if isinstance(value, dict) and set(value) == {"summary"} else None
    return summary if isinstance(summary, str) and _encodable(summary) else None


def _encodable(text: str) -> bool:
    """Text a provider can be sent (and a token minted of): no lone UTF-16 surrogate, which JSON's
    ``\\ud800`` escapes can spell but UTF-8 cannot hold. A token written with one is not Stockyard's."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def summary_text(summary: str) -> str:
    """The text the model reads for a compacted part of the conversation."""
    return SUMMARY_HEADING + summary


def summary_message(item: dict, path: str) -> dict:
    """A ``compaction`` input item → the chat message the model reads (a user message: see above)."""
    return {"role": "user", "content": summary_text(read(item.get("encrypted_content"), f"{path}.encrypted_content"))}


def made_here(item: Any) -> bool:
    """A compaction item whose token Stockyard made (:func:`ours`), which no provider's Responses API reads."""
    return isinstance(item, dict) and item.get("type") == ITEM and ours(item.get("encrypted_content"))


def as_input_message(item: Any, path: str) -> Any:
    """For a provider that speaks the Responses API: a compaction item Stockyard made (``path`` names it)
    becomes the user message it stands for (OpenAI cannot read the token); any other item stays as it is."""
    if not made_here(item):
        return item
    text = summary_text(read(item["encrypted_content"], f"{path}.encrypted_content"))
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def triggered(body: Any) -> bool:
    """A ``/v1/responses`` request asking for a compaction: ``input`` ends with a compaction trigger."""
    items = body.get("input") if isinstance(body, dict) else None
    return isinstance(items, list) and bool(items) and is_trigger(items[-1])


def is_trigger(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") == TRIGGER


def with_trigger(body: dict) -> dict:
    """A ``/v1/responses/compact`` body as the ``/v1/responses`` request that asks for the same
    summary: its input (a string is one user message) with a compaction trigger after it."""
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    elif items is None:
        items = []
    if not isinstance(items, list):
        return body  # to_chat names what is wrong with it
    return {**body, "input": [*items, {"type": TRIGGER}]}


def ask_summary(chat: dict) -> dict:
    """The chat request for a compaction: the summarization instruction as the last user message; the
    tools stay (the history may call them) with ``tool_choice`` none; no web search (a summary of the
    conversation needs none: a search is billed, may pause the turn, and what it finds would be summarised
    in the conversation's place); no output format (a summary is text)."""
    chat["messages"].append({"role": "user", "content": INSTRUCTION})
    if chat.get("tools"):
        chat["tool_choice"] = "none"
    else:
        chat.pop("tool_choice", None)
    for key in ("response_format", "verbosity", "web_search_options"):
        chat.pop(key, None)
    return chat


def compaction_item(ident: str, summary: str) -> dict:
    return {"id": ident, "type": ITEM, "encrypted_content": mint(summary)}


def kept_messages(*item_lists: Any) -> list[dict]:
    """The user messages of a conversation, in order, as ``/v1/responses/compact`` answers them before
    the compaction item (OpenAI's: "all user messages, followed by a single compaction item")."""
    out: list[dict] = []
    for items in item_lists:
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict) or (item.get("type") or "message") != "message" or item.get("role") != "user":
                continue
            content = item.get("content")
            if isinstance(content, str):
                content = [{"type": "input_text", "text": content}]
            message = {"type": "message", "role": "user", "status": "completed", "content": content}
            out.append({"id": item["id"], **message} if isinstance(item.get("id"), str) else message)
    return out


def compacted(response_id: str, created_at: int, output: list[dict], usage: dict | None) -> dict:
    """The ``response.compaction`` object ``/v1/responses/compact`` answers."""
    zero = {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }
    return {
        "id": response_id,
        "object": "response.compaction",
        "created_at": created_at,
        "output": output,
        "usage": usage or zero,
    }

"""The providers' opaque reasoning state, carried through the translations.

Two providers want their reasoning state back on the next request of a tool loop:

- Anthropic, with thinking on: the assistant turn that called the tools must start with its
  ``thinking`` blocks (``signature`` intact) or ``redacted_thinking`` blocks (``data``).
  On the chat shape they travel as the assistant message's ``thinking_blocks`` (LiteLLM's
  convention: ``[{"type": "thinking", "thinking", "signature"}, {"type": "redacted_thinking",
  "data"}]``), beside ``reasoning_content`` (the thinking text).
- Gemini 3: a ``functionCall`` part carries a ``thoughtSignature`` that must come back on it.
  On the chat shape it is the tool call's ``extra_content.google.thought_signature`` (Gemini's
  own OpenAI API does the same).

Where the client's API has no such field, Stockyard packs the state into one it echoes back:
a Responses ``reasoning`` item's ``encrypted_content``, an Anthropic ``thinking`` block's
``signature`` (Gemini's signatures, for Anthropic-SDK clients). The packing (:func:`pack`) is
base64 of a JSON object marked ``{"stockyard": 1}``, so Stockyard can tell its own from a
provider's opaque string (:func:`unpack` returns None for anything else). It also names the
provider (by its name) that made the state, and the state is restored only onto a request to
that same provider, whatever its kind (:func:`restorable`; a packing from before names were
kept goes to gemini-kind providers only). The packing itself never goes to any provider:
:func:`thinking_blocks` drops a block it signs, the Anthropic native adapter drops such blocks
from a Messages body, and the Responses pass-through drops the reasoning items Stockyard made.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ..httpio import json_bytes

VERSION = 1
THINKING_TYPES = ("thinking", "redacted_thinking")
# Fields of an assistant chat message that Claude's answers carry and OpenAI's chat API refuses:
# the thinking blocks, and the web searches Claude ran (``anthropic.web_search_call``), which
# the Responses translation turns into ``web_search_call`` items.
STATE_FIELDS = ("thinking_blocks", "web_search_calls")


def thinking_blocks(value: Any) -> list[dict]:
    """Anthropic thinking blocks out of a chat message's ``thinking_blocks`` (or Messages content):
    only whole ones — a ``thinking`` block with its signature, a ``redacted_thinking`` with its
    data — and only their own fields (a stream's ``index`` stays behind). A block whose signature
    is Stockyard's packing is not a provider's, and stays behind too."""
    out: list[dict] = []
    for block in value if isinstance(value, list) else []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "thinking" and isinstance(block.get("signature"), str) and block["signature"]:
            if unpack(block["signature"]) is not None:
                continue  # Stockyard's packing (Gemini's signatures), which no provider can verify
            text = block.get("thinking")
            out.append(
                {"type": "thinking", "thinking": text if isinstance(text, str) else "", "signature": block["signature"]}
            )
        elif kind == "redacted_thinking" and isinstance(block.get("data"), str) and block["data"]:
            out.append({"type": "redacted_thinking", "data": block["data"]})
    return out


def thought_signature(call: Any) -> str | None:
    """The Gemini thought signature a chat tool call carries (``extra_content.google``)."""
    extra = call.get("extra_content") if isinstance(call, dict) else None
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def sign_call(call: dict, signature: str) -> None:
    """Put a Gemini thought signature on a chat tool call."""
    call["extra_content"] = {"google": {"thought_signature": signature}}


def signatures_of(calls: Any) -> dict[str, str]:
    """Tool call id → thought signature, for the calls that carry one."""
    out: dict[str, str] = {}
    for call in calls if isinstance(calls, list) else []:
        signature = thought_signature(call)
        if signature and isinstance(call.get("id"), str):
            out[call["id"]] = signature
    return out


def pack(state: dict, provider: str | None = None) -> str:
    """Reasoning state (``thinking_blocks``, ``thought_signatures``) as one opaque string, naming
    the provider that made it. Written by ``json_bytes``: a lone surrogate in the provider's text
    (valid in its JSON, held by no UTF-8) is escaped, never an encoding error."""
    named = {"provider": provider} if provider else {}
    return base64.b64encode(json_bytes({"stockyard": VERSION, **named, **state}, compact=True)).decode()


def unpack(text: Any) -> dict | None:
    """The state :func:`pack` made (``provider`` None when it names none), or None for any other
    string (a provider's own)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        state = json.loads(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(state, dict) or state.get("stockyard") != VERSION:
        return None
    provider = state.get("provider")
    return {
        "provider": provider if isinstance(provider, str) and provider else None,
        "thinking_blocks": thinking_blocks(state.get("thinking_blocks")),
        "thought_signatures": {
            k: v for k, v in (state.get("thought_signatures") or {}).items() if isinstance(v, str) and v
        }
        if isinstance(state.get("thought_signatures"), dict)
        else {},
    }


def restorable(state: dict, provider: str | None, kind: str) -> bool:
    """Whether unpacked ``state`` goes back onto a request to ``provider`` (a name) of ``kind``:
    only to the provider that made it; a packing that names none (made before names were kept)
    to a gemini-kind provider, the only one that had its state packed then."""
    return state["provider"] == provider if state["provider"] else kind == "gemini"


def plain_messages(messages: Any) -> list | None:
    """Chat messages without the provider fields OpenAI's chat API does not know (an assistant
    message's ``thinking_blocks`` and ``web_search_calls``, a tool call's ``extra_content``), or None when none
    carries them — a conversation that moved to an OpenAI model from Claude or Gemini."""
    if not isinstance(messages, list) or not any(carries_state(msg) for msg in messages):
        return None
    out: list = []
    for msg in messages:
        if carries_state(msg):
            kept = {k: v for k, v in msg.items() if k not in STATE_FIELDS}
            calls = kept.get("tool_calls")
            if isinstance(calls, list) and any(isinstance(c, dict) and "extra_content" in c for c in calls):
                plain = [
                    {k: v for k, v in c.items() if k != "extra_content"} if isinstance(c, dict) else c for c in calls
                ]
                kept = {**kept, "tool_calls": plain}
            msg = kept
        out.append(msg)
    return out


def carries_state(msg: Any) -> bool:
    """An assistant chat message with ``thinking_blocks`` or ``web_search_calls``, or a tool call
    with ``extra_content``."""
    if not isinstance(msg, dict) or msg.get("role") != "assistant":
        return False
    calls = msg.get("tool_calls")
    return any(key in msg for key in STATE_FIELDS) or (
        isinstance(calls, list) and any(isinstance(c, dict) and "extra_content" in c for c in calls)
    )

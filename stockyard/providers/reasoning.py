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
provider's opaque string (:func:`unpack` returns None for anything else), which it never sends
to a provider that did not make it.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

VERSION = 1
THINKING_TYPES = ("thinking", "redacted_thinking")


def thinking_blocks(value: Any) -> list[dict]:
    """Anthropic thinking blocks out of a chat message's ``thinking_blocks`` (or Messages content):
    only whole ones — a ``thinking`` block with its signature, a ``redacted_thinking`` with its
    data — and only their own fields (a stream's ``index`` stays behind)."""
    out: list[dict] = []
    for block in value if isinstance(value, list) else []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "thinking" and isinstance(block.get("signature"), str) and block["signature"]:
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


def pack(state: dict) -> str:
    """Reasoning state (``thinking_blocks``, ``thought_signatures``) as one opaque string."""
    raw = json.dumps({"stockyard": VERSION, **state}, ensure_ascii=False, separators=(",", ":"))
    return base64.b64encode(raw.encode()).decode()


def unpack(text: Any) -> dict | None:
    """The state :func:`pack` made, or None for any other string (a provider's own)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        state = json.loads(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(state, dict) or state.get("stockyard") != VERSION:
        return None
    return {
        "thinking_blocks": thinking_blocks(state.get("thinking_blocks")),
        "thought_signatures": {
            k: v for k, v in (state.get("thought_signatures") or {}).items() if isinstance(v, str) and v
        }
        if isinstance(state.get("thought_signatures"), dict)
        else {},
    }


def for_provider(chat: dict, kind: str) -> dict:
    """A translated chat body with only the reasoning state provider ``kind`` reads: thinking
    blocks for Anthropic, thought signatures for Gemini; an OpenAI-kind provider (its chat
    passed through) gets neither field, which it does not know."""
    messages = chat.get("messages")
    if not isinstance(messages, list):
        return chat
    out: list = []
    changed = False
    for msg in messages:
        if isinstance(msg, dict) and msg.get("role") == "assistant":
            kept = msg
            if "thinking_blocks" in kept and kind != "anthropic":
                kept = {k: v for k, v in kept.items() if k != "thinking_blocks"}
            calls = kept.get("tool_calls")
            if (
                kind != "gemini"
                and isinstance(calls, list)
                and any(isinstance(c, dict) and "extra_content" in c for c in calls)
            ):
                plain = [
                    {k: v for k, v in c.items() if k != "extra_content"} if isinstance(c, dict) else c for c in calls
                ]
                kept = {**kept, "tool_calls": plain}
            changed = changed or kept is not msg
            msg = kept
        out.append(msg)
    return {**chat, "messages": out} if changed else chat

"""Claude's paused turns (``stop_reason: "pause_turn"``), continued for translated clients.

A turn that uses a server tool (web search) and reaches the server-side loop's limit ends with
``pause_turn``. Anthropic's documented handling: send the request again with the answer so far,
unchanged, as the assistant's turn, and Claude goes on with it. A client of the Messages API gets
the pause and does that itself (it is passed through); a chat or Responses client has no way to,
so Stockyard sends the follow-up for it (``proxy.continue_turn``) and the client gets one answer:
:func:`joined` puts the calls' answers together, :class:`MessageBuilder` rebuilds a streamed
answer to send it back.
"""

from __future__ import annotations

import json
from typing import Any

PAUSE_TURN = "pause_turn"
SENT = "anthropic.request"  # ctx.state: the Messages API request the chat adapter made (what a follow-up repeats)
# Why a paused turn whose answer holds a lone UTF-16 surrogate (valid in the provider's JSON, and
# relayed to the client escaped) is not continued: the follow-up would send it back, and the
# Messages API refuses a request holding one ("no low surrogate in string").
UNSENDABLE = (
    "the answer so far holds a lone UTF-16 surrogate, which a follow-up call would send back "
    "and the Messages API refuses"
)


def paused(message: Any) -> bool:
    return isinstance(message, dict) and message.get("stop_reason") == PAUSE_TURN


def content_of(messages: list[dict]) -> list[dict]:
    """Every answer's content blocks, in order: the turn so far."""
    blocks: list[dict] = []
    for message in messages:
        content = message.get("content")
        blocks += content if isinstance(content, list) else []
    return blocks


def follow_up_request(request: dict, answers: list[dict]) -> dict:
    """The request that continues a paused turn: ``request`` as it was sent, with the answers so
    far (each call's content, unchanged and in order) as the assistant's last turn. A request that
    ends in an assistant turn of its own (a prefill) gets them at its end: Anthropic reads
    neighbouring assistant turns as one anyway."""
    messages = list(request.get("messages") or [])
    content = content_of(answers)
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant" and isinstance(last.get("content"), list):
        messages[-1] = {**last, "content": [*last["content"], *content]}
    else:
        messages.append({"role": "assistant", "content": content})
    return {**request, "messages": messages}


def joined(answers: list[dict]) -> dict:
    """The answers of a continued turn as one message: its content in order, the last answer's
    stop reason and usage (each call's usage is billed on its own: ``Attempt.paused_usage``)."""
    return {**answers[-1], "id": answers[0].get("id") or answers[-1].get("id"), "content": content_of(answers)}


# The deltas that add to a block's text field: (the delta's type, the field)
_TEXT_DELTAS = (("text_delta", "text"), ("thinking_delta", "thinking"), ("signature_delta", "signature"))


class MessageBuilder:
    """A streamed Messages API answer put back together from its events, as Anthropic's SDKs
    accumulate one: text with its citations, thinking with its signature, a tool's input from its
    JSON deltas, search results whole. What a follow-up call sends back for a paused stream."""

    def __init__(self) -> None:
        self.message: dict = {}
        self.blocks: dict[int, dict] = {}  # by the stream's block index
        # A block's text, thinking, signature, citations and a tool's input JSON as their deltas
        # came, by block index and field: joined when read (adding each delta to the whole so far
        # made a long answer's every delta copy it: 160,000 deltas took ~40 s of CPU)
        self.pieces: dict[int, dict[str, list]] = {}

    def add(self, payload: dict) -> None:
        kind, index = payload.get("type"), payload.get("index")
        index = index if isinstance(index, int) else -1
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            self.message, self.blocks, self.pieces = dict(payload["message"]), {}, {}
        elif kind == "content_block_start" and isinstance(payload.get("content_block"), dict):
            self.blocks[index], self.pieces[index] = dict(payload["content_block"]), {}
        elif kind == "content_block_delta" and index in self.blocks and isinstance(payload.get("delta"), dict):
            self._delta(self.pieces[index], payload["delta"])
        elif kind == "message_delta":
            self._end(payload)

    @staticmethod
    def _delta(pieces: dict[str, list], delta: dict) -> None:
        kind = delta.get("type")
        for ours, field in _TEXT_DELTAS:
            if kind == ours and isinstance(delta.get(field), str):
                pieces.setdefault(field, []).append(delta[field])
        if kind == "citations_delta":
            pieces.setdefault("citations", []).append(delta.get("citation"))
        elif kind == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            pieces.setdefault("partial_json", []).append(delta["partial_json"])

    def _end(self, payload: dict) -> None:
        delta, usage, start = payload.get("delta"), payload.get("usage"), self.message.get("usage")
        if isinstance(delta, dict):
            self.message.update({k: delta[k] for k in ("stop_reason", "stop_sequence") if k in delta})
        if isinstance(usage, dict):  # message_delta's counts are cumulative
            start = start if isinstance(start, dict) else {}
            self.message["usage"] = {**start, **{k: v for k, v in usage.items() if v is not None}}

    def answer(self) -> dict:
        """The message as it stands, its blocks in the stream's order."""
        return {**self.message, "content": [self._block(i) for i in sorted(self.blocks)]}

    def _block(self, index: int) -> dict:
        """A block as it started, with what its deltas added: text joined, citations after its own,
        a tool's input parsed from its JSON (left as it started when the provider cut or garbled it)."""
        block, pieces = dict(self.blocks[index]), self.pieces.get(index, {})
        for _, field in _TEXT_DELTAS:
            if field in pieces:
                block[field] = str(block.get(field) or "") + "".join(pieces[field])
        if "citations" in pieces:
            own = block.get("citations")
            block["citations"] = [*(own if isinstance(own, list) else []), *pieces["citations"]]
        if pieces.get("partial_json"):
            try:
                block["input"] = json.loads("".join(pieces["partial_json"]))
            except (ValueError, RecursionError):
                pass
        return block

"""A captured answer as its dialect's whole-answer object, for :mod:`stockyard.otel_messages`.

A trace keeps an answer as the client got it: a JSON object, or for a stream the events
(SSE in every dialect; a JSON array for Gemini's streamGenerateContent without ``alt=sse``).
:func:`assembled` folds a stream's events into the object the same answer has when it is not
streamed — a ``chat.completion``, an Anthropic ``message``, a Responses ``response``, a
``GenerateContentResponse`` — so one reader per dialect serves both. It reads the events with
the SSE reader the translators use (``chatshape.chat_chunks``); an event it does not know is
skipped, and a stream that broke gives what arrived, with an ``error`` finish.
"""

from __future__ import annotations

import json
from typing import Any

from .providers.chatshape import chat_chunks, chunk_error

SSE_STARTS = (b"data:", b"event:", b":", b"id:", b"retry:")


def assembled(endpoint: str, body: bytes) -> dict | None:
    """The whole-answer object of a captured answer, None when it is neither JSON nor a stream."""
    start = body.lstrip()[:8]
    if start.startswith(b"{"):
        doc = json.loads(body)
        return doc if isinstance(doc, dict) else None
    if start.startswith(b"["):  # Gemini's JSON-array stream; one that broke has no closing bracket
        text = body.rstrip()
        events = json.loads(text if text.endswith(b"]") else text + b"]")
    elif start.startswith(SSE_STARTS):
        events = [e for e in chat_chunks([body]) if e is not None]
    else:
        return None
    fold = FOLDS.get(endpoint)
    return fold([e for e in events if isinstance(e, dict)]) if fold else None


def _append(target: dict, key: str, more: str) -> None:
    """``target[key] += more`` in linear time over a stream: a string held by a dict is copied
    whole by each ``+=`` (quadratic over thousands of small deltas: ~1 s for a 4 MB capture);
    popped first, it has one reference and CPython grows it in place."""
    text = target.pop(key, "")
    text += more
    target[key] = text


def _chat(events: list[dict]) -> dict:
    """Chat (or completion) chunks → a completion: each choice's text, reasoning and tool calls."""
    doc: dict[str, Any] = {"choices": []}
    choices: dict[int, dict] = {}
    for event in events:
        if chunk_error(event) is not None:
            for choice in choices.values():
                choice["finish_reason"] = "error"
            break
        doc["id"] = doc.get("id") or event.get("id")
        for delta_choice in event.get("choices") or ():
            index = delta_choice.get("index", 0)
            choice = choices.setdefault(index, {"index": index, "message": {}, "finish_reason": None})
            if isinstance(delta_choice.get("text"), str):  # a text completion
                _append(choice, "text", delta_choice["text"])
                choice.pop("message", None)
            _delta(choice.get("message"), delta_choice.get("delta"))
            choice["finish_reason"] = delta_choice.get("finish_reason") or choice["finish_reason"]
    for choice in choices.values():
        _order_calls(choice.get("message"))
    doc["choices"] = [choices[i] for i in sorted(choices)]
    return doc


def _order_calls(message: dict | None) -> None:
    """A message's tool calls, gathered by their delta ``index``, as the list in index order."""
    if message is not None and isinstance(message.get("tool_calls"), dict):
        calls = message["tool_calls"]
        message["tool_calls"] = [calls[i] for i in sorted(calls)]


def _delta(message: dict | None, delta: Any) -> None:
    if message is None or not isinstance(delta, dict):
        return
    for key in ("content", "refusal", "reasoning_content", "reasoning"):
        if isinstance(delta.get(key), str):
            _append(message, key, delta[key])
    # By index, not a list as long as the largest index: a stream naming index 10**9 costs nothing
    calls: dict[int, dict] = message.setdefault("tool_calls", {})
    for piece in delta.get("tool_calls") or ():
        index = piece.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) else len(calls)
        call = calls.setdefault(index, {"id": None, "function": {"name": "", "arguments": ""}})
        fn = piece.get("function") or {}
        call["id"] = piece.get("id") or call["id"]
        _append(call["function"], "name", fn.get("name") or "")
        _append(call["function"], "arguments", fn.get("arguments") or "")


def _anthropic(events: list[dict]) -> dict:
    """Messages stream events → the message: its content blocks, deltas applied, and stop reason."""
    message: dict[str, Any] = {"type": "message", "content": []}
    blocks: dict[int, dict] = {}
    for event in events:
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            message.update({k: v for k, v in event["message"].items() if k != "content"})
        elif kind == "content_block_start" and isinstance(event.get("content_block"), dict):
            blocks[event.get("index", len(blocks))] = dict(event["content_block"])
        elif kind == "content_block_delta" and isinstance(event.get("delta"), dict):
            block, delta = blocks.get(event.get("index", -1)), event["delta"]
            if block is not None:
                for name in ("text", "thinking", "partial_json"):
                    if isinstance(delta.get(name), str):
                        _append(block, name, delta[name])
        elif kind == "message_delta" and isinstance(event.get("delta"), dict):
            message["stop_reason"] = event["delta"].get("stop_reason") or message.get("stop_reason")
        elif kind == "error":
            message["stop_reason"] = "error"
    for index in sorted(blocks):
        block = blocks[index]
        if "partial_json" in block:  # a tool's input arrives as JSON text in pieces
            block["input"] = block.pop("partial_json")
        message["content"].append(block)
    return message


def _responses(events: list[dict]) -> dict:
    """Responses stream events → the response: the final one (completed, incomplete, failed) when
    the stream reached it, else the last snapshot with the output items that were finished."""
    response: dict[str, Any] = {}
    items: list[dict] = []
    for event in events:
        if isinstance(event.get("response"), dict):
            response = event["response"]
        if event.get("type") == "response.output_item.done" and isinstance(event.get("item"), dict):
            items.append(event["item"])
        elif event.get("type") == "error":
            response = {**response, "status": "failed"}
    if not response.get("output"):
        response = {**response, "output": items}
    return response


def _gemini(events: list[dict]) -> dict:
    """GenerateContentResponse chunks → one response: each candidate's parts in order (adjacent
    texts joined), its last finish reason."""
    doc: dict[str, Any] = {"candidates": []}
    candidates: dict[int, dict] = {}
    for event in events:
        if isinstance(event.get("error"), dict):
            for candidate in candidates.values():
                candidate["finishReason"] = "error"
            break
        doc["responseId"] = event.get("responseId") or doc.get("responseId")
        for position, chunk in enumerate(event.get("candidates") or ()):
            index = chunk.get("index", position)
            candidate = candidates.setdefault(index, {"content": {"parts": []}, "finishReason": None})
            parts = candidate["content"]["parts"]
            for part in (chunk.get("content") or {}).get("parts") or ():
                last: dict = parts[-1] if parts else {}
                if "text" in last and "text" in part and bool(last.get("thought")) == bool(part.get("thought")):
                    _append(last, "text", part["text"])
                else:
                    parts.append(dict(part))
            candidate["finishReason"] = chunk.get("finishReason") or candidate["finishReason"]
    doc["candidates"] = [candidates[i] for i in sorted(candidates)]
    return doc


FOLDS = {"chat": _chat, "completions": _chat, "messages": _anthropic, "responses": _responses, "generate": _gemini}

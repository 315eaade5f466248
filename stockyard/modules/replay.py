"""A cached plain answer replayed as the event stream a streaming client expects.

Only needed when a streamed request finds no cached stream but a cached plain answer to the
same request; a cached stream is replayed as it was, byte for byte. Covers the OpenAI chat
and text-completion shapes; anything else returns None (a cache miss).
"""

from __future__ import annotations

import json
from typing import Any


def _event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def to_stream(endpoint: str, dialect: str, body: bytes, with_usage: bool) -> bytes | None:
    """SSE bytes carrying the same answer as ``body`` (ending with ``[DONE]``), or None."""
    if dialect != "openai" or endpoint not in ("chat", "completions"):
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
        return None
    build = _chat_chunks if endpoint == "chat" else _completion_chunks
    chunks = build(answer)
    if chunks is None:
        return None
    usage = answer.get("usage")
    if with_usage:
        for chunk in chunks:
            chunk["usage"] = None
        if isinstance(usage, dict):
            chunks.append(
                {
                    **_head(answer, chunks[0]["object"] if chunks else "chat.completion.chunk"),
                    "choices": [],
                    "usage": usage,
                }
            )
    return b"".join(_event(c) for c in chunks) + b"data: [DONE]\n\n"


def _head(answer: dict, obj: str) -> dict:
    head = {k: answer[k] for k in ("id", "created", "model") if k in answer}
    head["object"] = obj
    if "system_fingerprint" in answer:
        head["system_fingerprint"] = answer["system_fingerprint"]
    return head


def _chat_chunks(answer: dict) -> list[dict] | None:
    head = _head(answer, "chat.completion.chunk")
    chunks = []

    def chunk(index: int, delta: dict, finish: str | None = None) -> None:
        chunks.append(
            {**head, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        )

    for choice in answer["choices"]:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            return None
        index, message = choice.get("index", 0), choice["message"]
        calls = message.get("tool_calls") or []
        chunk(index, {"role": message.get("role", "assistant"), "content": None if calls else ""})
        if message.get("content"):
            chunk(index, {"content": message["content"]})
        if message.get("refusal"):
            chunk(index, {"refusal": message["refusal"]})
        for j, call in enumerate(calls):
            chunk(index, {"tool_calls": [{"index": j, **call}]})
        chunk(index, {}, choice.get("finish_reason"))
    return chunks


def _completion_chunks(answer: dict) -> list[dict] | None:
    head = _head(answer, "text_completion")
    chunks = []
    for choice in answer["choices"]:
        if not isinstance(choice, dict):
            return None
        index = choice.get("index", 0)
        chunks.append(
            {
                **head,
                "choices": [{"text": choice.get("text", ""), "index": index, "logprobs": None, "finish_reason": None}],
            }
        )
        chunks.append(
            {
                **head,
                "choices": [
                    {"text": "", "index": index, "logprobs": None, "finish_reason": choice.get("finish_reason")}
                ],
            }
        )
    return chunks

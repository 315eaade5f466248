"""Gemini-native clients (Google's SDK, REST) to a Gemini provider: the body and the answer pass through.

The URL named the model and the method (``stockyard.gemini_api`` parsed it onto
``ctx.native``); the request body goes upstream as the client sent it, after the checks every
request gets — except the model fields inside it (``requests[].model`` of
``batchEmbedContents``, ``model`` of ``embedContent``, ``generateContentRequest.model`` of
``countTokens``, by its proto spelling ``generate_content_request`` too), which Google requires
to name the URL's model and which are set to the model the request was routed to, so an alias
or an allow-list cannot be stepped around in the body.

Streams are always asked of the provider as SSE (``alt=sse``). A client that asked with
``alt=sse`` gets the events as they came; one that did not gets Google's JSON-array form as it
arrives: ``[{…}``, then ``\\n,\\r\\n{…}`` per chunk, then ``\\n]``. Usage comes from
``usageMetadata`` (cumulative in a stream: the last one counts); the grounding Google bills apart from
it, from each candidate's ``groundingMetadata`` (``toolfees.GroundingTally``: a stream's as it passes,
so a stream cut after its grounding still bills it).
"""

from __future__ import annotations

import json
from typing import Any

from ..context import RequestContext
from ..errors import ProxyError, google_error
from ..estimate import text_tokens
from ..objectrefs import INNER_REQUEST
from ..pricing import Usage
from ..toolfees import GroundingTally
from . import Provider
from .base import Adapter, StreamTranslator, UpstreamCall, model_segment, sse_data
from .chatshape import record_stream_error, unreadable_event
from .gemini import api_path, auth_headers, embedded_tokens, error_fields, note_uncounted, partial_usage

STREAM = "streamGenerateContent"
JSON_ARRAY = "application/json; charset=UTF-8"


def check_model(model: str | None) -> str:
    """The URL's model: a name, or ``provider/name`` (Stockyard's routing to a named provider),
    each part a clean URL segment; anything else is a 400."""
    parts = (model or "").split("/")
    if len(parts) > 2:
        raise ProxyError(
            400, f"model {model!r} names too many parts: use NAME or PROVIDER/NAME", param="model", code="invalid_model"
        )
    for part in parts:
        model_segment(part)
    return model or ""


def pinned(body: dict, action: str, name: str) -> dict | None:
    """``body`` with the model fields inside it set to ``name``; None when none differs."""

    def pin(item: Any) -> dict | None:
        if isinstance(item, dict) and "model" in item and item["model"] != name:
            return {**item, "model": name}
        return None

    if action == "countTokens":  # the inner request by either spelling Google's JSON reads (objectrefs)
        inner = {name: pin(body.get(name)) for name in INNER_REQUEST}
        changed = {name: value for name, value in inner.items() if value}
        return {**body, **changed} if changed else None
    if action != "batchEmbedContents":  # embedContent; generateContent's request has the field too
        return pin(body)
    requests = body.get("requests")
    items = [pin(item) for item in requests] if isinstance(requests, list) else []
    if not any(items):
        return None
    assert isinstance(requests, list)
    return {**body, "requests": [new or old for new, old in zip(items, requests)]}


def record(ctx: RequestContext, doc: Any, grounding: GroundingTally) -> bool:
    """Read the served model, usage and ``grounding`` of one GenerateContentResponse; True when it
    ends the answer."""
    if not isinstance(doc, dict):
        return False
    ctx.attempt.serve(doc.get("modelVersion"), doc.get("responseId"))
    meta = doc.get("usageMetadata")
    if isinstance(meta, dict):
        ctx.attempt.usage = Usage.from_gemini(meta)
    grounding.see(doc)
    model = ctx.attempt.served_model or ctx.attempt.upstream_model or ctx.model or ""
    ctx.attempt.tool_calls = grounding.counts(model)  # billed at their per-call prices (``billing.Pricer``)
    candidates = doc.get("candidates")
    if isinstance(candidates, list) and candidates:
        return any(isinstance(c, dict) and c.get("finishReason") for c in candidates)
    feedback = doc.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))  # the prompt itself was blocked


def embedded_texts(body: dict) -> list[str]:
    """The texts of an embedContent / batchEmbedContents body (their ``content.parts[].text``)."""
    requests = body.get("requests")
    if not isinstance(requests, list):
        requests = [body]
    texts = []
    for item in requests:
        content = item.get("content") if isinstance(item, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    return texts


class GeminiNativeAdapter(Adapter):
    """Gemini-dialect clients to a Gemini provider: bytes pass through, usage is read on the way."""

    def prepare(self, ctx: RequestContext, provider: Provider, model: str) -> UpstreamCall:
        assert ctx.native is not None
        action = ctx.native.action
        stream = action == STREAM
        path = api_path(provider, model, stream, action)
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            **auth_headers(provider),
        }
        changed = pinned(ctx.body, action, "models/" + model.removeprefix("models/"))  # api_path checked it
        body = ctx.raw
        if changed is not None or ctx.body_changed:
            body = json.dumps(changed if changed is not None else ctx.body, ensure_ascii=False).encode()
        return UpstreamCall("POST", path, headers, body)

    def parse(self, ctx: RequestContext, body: bytes) -> bytes:
        if ctx.endpoint == "count_tokens":
            ctx.attempt.usage = Usage()  # counting tokens is free: nothing to bill
            return body
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return body
        if ctx.endpoint == "embeddings":
            self.embedding_usage(ctx, doc)
            return body
        grounding = GroundingTally()
        for item in doc if isinstance(doc, list) else [doc]:  # a JSON-array stream read whole: the last counts
            record(ctx, item, grounding)
        return body

    @staticmethod
    def embedding_usage(ctx: RequestContext, doc: Any) -> None:
        """``usageMetadata`` when the provider sends one; else estimated from the texts (``gemini.embedded_tokens``)."""
        ctx.attempt.served_model = ctx.attempt.served_model or ctx.attempt.upstream_model
        meta = doc.get("usageMetadata") if isinstance(doc, dict) else None
        if isinstance(meta, dict):
            ctx.attempt.usage = Usage.from_gemini(meta)
            return
        texts = embedded_texts(ctx.body)
        tokens = embedded_tokens(texts) if texts else text_tokens(ctx.raw)
        ctx.attempt.usage = Usage(prompt_tokens=tokens)
        ctx.attempt.usage_estimated = True

    def stream(self, ctx: RequestContext) -> StreamTranslator:
        return NativeStream(ctx)


class NativeStream(StreamTranslator):
    """The provider's SSE events, relayed as they are (``alt=sse``) or as a JSON array's elements."""

    def __init__(self, ctx: RequestContext) -> None:
        assert ctx.native is not None
        self.ctx = ctx
        self.sse = ctx.native.sse
        self.content_type = "text/event-stream" if self.sse else JSON_ARRAY
        self.sent = 0  # array elements written
        self.grounding = GroundingTally()

    def element(self, data: bytes) -> bytes:
        prefix = b"\n,\r\n" if self.sent else b"["
        self.sent += 1
        return prefix + data

    def feed(self, event: bytes) -> list[bytes]:
        data = sse_data(event)
        if data is None:  # a comment or keep-alive: meaningful only to an SSE reader
            return [event] if self.sse else []
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):  # not JSON: an SSE reader may judge it; an array must not hold it
            return [event] if self.sse else []
        except RecursionError:  # nested past the parser's depth: the provider's, as a non-JSON event
            unreadable_event(self.ctx)
            return [event] if self.sse else []
        fields = error_fields(doc)
        if fields is not None:
            record_stream_error(self.ctx, fields[1], fields[2])
        elif record(self.ctx, doc, self.grounding):
            self.complete = True
        note_uncounted(self.ctx, doc)
        self.ctx.attempt.usage_partial = partial_usage(self.ctx, self.complete)
        return [event] if self.sse else [self.element(data)]

    def finish(self) -> list[bytes]:
        if self.sse:
            return []
        return [b"\n]" if self.sent else b"[]"]

    def failure(self, message: str, code: str) -> list[bytes] | None:
        """Google's error object as the stream's last event (or last array element)."""
        status = 504 if "timeout" in code or code == "deadline_exceeded" else 502
        error = json.dumps(google_error(status, message, code)).encode()
        if self.sse:
            return [b"data: " + error + b"\n\n"]
        return [self.element(error) + b"\n]"]

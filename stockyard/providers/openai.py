"""OpenAI-compatible providers (OpenAI, Groq, Mistral, Ollama, …) for OpenAI-dialect clients.

Bodies pass through untouched unless routing must change them: the model name when the
client wrote ``provider/model``, ``stream_options.include_usage`` on streams, which
Stockyard always asks for (to cost the stream) and hides again if the client did not, and at
OpenAI's own chat API what it refuses (other providers' reasoning state, ``max_tokens`` for its
reasoning models).
"""

from __future__ import annotations

import json

from ..context import RequestContext
from ..httpio import json_bytes
from ..imagegen import chat_images
from ..pricing import Usage
from ..toolfees import REASONING_MODELS
from . import Provider
from .base import Adapter, StreamTranslator, UpstreamCall, loads_object, sse_data
from .chatshape import chunk_error, record_stream_error, unreadable_event
from .reasoning import STATE_FIELDS, plain_messages

PROVIDER_FIELDS = tuple(f.encode() for f in (*STATE_FIELDS, "extra_content"))  # what plain_messages takes off
PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
# OpenAI's reasoning models (``toolfees.REASONING_MODELS``) refuse chat's ``max_tokens`` (400 "Use
# 'max_completion_tokens' instead"), which clients written for any OpenAI-compatible server send: Qwen
# Code 0.15 on every request. (Their ``-chat`` variants take either: renaming it costs them nothing.)


def renames_cap(body: dict, model: str) -> bool:
    """Whether ``max_tokens`` goes as ``max_completion_tokens`` (the same cap: for a reasoning model
    both count reasoning too): for an OpenAI reasoning model, unless the client named both."""
    named = body.get("max_tokens") is not None and "max_completion_tokens" not in body
    return named and model.startswith(REASONING_MODELS)


def request_body(ctx: RequestContext, model: str, *, force_usage: bool, plain: bool = False) -> bytes:
    """The body to send: the client's own bytes when nothing had to change. ``plain``: OpenAI's
    own chat API (openai, azure), which refuses message fields it does not know ("Additional
    properties are not allowed"): the reasoning state Claude and Gemini answers carry on the chat
    shape (``thinking_blocks``, ``extra_content``) and Claude's searches (``web_search_calls``) stay behind."""
    body = ctx.body
    changes: dict = {}
    dropped: tuple[str, ...] = ()
    if plain and ctx.endpoint == "chat" and any(name in ctx.raw for name in PROVIDER_FIELDS):
        messages = plain_messages(body.get("messages"))  # looked for only when named: the hot path
        if messages is not None:
            changes["messages"] = messages
    if plain and ctx.endpoint == "chat" and renames_cap(body, model):
        changes["max_completion_tokens"], dropped = body["max_tokens"], ("max_tokens",)
    if body.get("model") != model:
        changes["model"] = model
    if force_usage and ctx.stream and ctx.endpoint in ("chat", "completions"):
        options = body.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            changes["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    if not changes and not ctx.body_changed:
        return ctx.raw
    sent = {key: value for key, value in {**body, **changes}.items() if key not in dropped}
    return json_bytes(sent)  # a lone surrogate escape goes on as the client's bytes do, escaped


def auth_headers(provider: Provider) -> dict[str, str]:
    return {"Authorization": f"Bearer {provider.api_key}"} if provider.api_key else {}


class OpenAIAdapter(Adapter):
    def prepare(self, ctx: RequestContext, provider: Provider, model: str) -> UpstreamCall:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if ctx.stream else "application/json",
            **auth_headers(provider),
        }
        plain = provider.kind in ("openai", "azure")
        return UpstreamCall(
            "POST", PATHS[ctx.endpoint], headers, request_body(ctx, model, force_usage=True, plain=plain)
        )

    def parse(self, ctx: RequestContext, body: bytes) -> bytes:
        data = loads_object(body)
        ctx.attempt.serve(data.get("model"), data.get("id"))
        ctx.attempt.serve_openai(data)
        usage = data.get("usage")
        if isinstance(usage, dict):
            ctx.attempt.usage = Usage.from_openai(usage)
        ctx.attempt.own_images = chat_images(data)
        return body

    def stream(self, ctx: RequestContext) -> StreamTranslator:
        return OpenAIStream(ctx)


class OpenAIStream(StreamTranslator):
    """Relays events as they are; takes the usage chunk out when the client did not ask; counts
    the images a chat image model sends (``delta.images``); notes the provider's error event in the
    trace (relayed: the SDK raises it)."""

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx

    def feed(self, event: bytes) -> list[bytes]:
        if not self.ctx.client_wants_usage and b',"usage":null' in event:
            # Upstream adds "usage":null to every chunk only because Stockyard asked for usage.
            event = event.replace(b',"usage":null', b"")
        data = sse_data(event)
        if data is None:
            return [event]
        if data.strip() == b"[DONE]":
            self.complete = True
            return [event]
        plain = b'"usage"' not in data and b'"images"' not in data and b'"error"' not in data
        if plain and self.ctx.attempt.served_model:
            return [event]  # a content chunk without usage: relayed as it is
        try:
            chunk = json.loads(data)
        except ValueError:
            return [event]
        except RecursionError:  # the provider's: relayed unread, as a non-JSON event is
            unreadable_event(self.ctx)
            return [event]
        if not isinstance(chunk, dict):
            return [event]
        if (error := chunk_error(chunk)) is not None:
            message = error.get("message")
            record_stream_error(self.ctx, str(error.get("code") or error.get("type") or "error"), str(message))
            return [event]
        if not self.ctx.attempt.served_model:  # the first chunk: its id and OpenAI's fields too
            self.ctx.attempt.serve(chunk.get("model"), chunk.get("id"))
            self.ctx.attempt.serve_openai(chunk)
        self.ctx.attempt.own_images += chat_images(chunk)  # an image model's (billed if the usage never comes)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.ctx.attempt.usage = Usage.from_openai(usage)
            if not self.ctx.client_wants_usage and chunk.get("choices") == []:
                return []
        return [event]

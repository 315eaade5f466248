"""``/v1/messages`` clients on providers that speak only Chat Completions.

:class:`MessagesOverChat` wraps the provider's own OpenAI-dialect chat adapter (as
``ResponsesOverChat`` does for the Responses API): the Messages request becomes a chat
request (``messages.to_chat``), the inner adapter builds the call (Gemini translates on to
generateContent), and its chat answer or chunk stream becomes a Messages answer or event
stream again. ``count_tokens`` never reaches these providers: :func:`count_estimate`
answers it here. An image the model drew (Gemini's image models) has no Messages block: it is
left out of the answer and said in the trace (:data:`IMAGES_LEFT_OUT`).
"""

from __future__ import annotations

import dataclasses
import json

from ..context import Answer, RequestContext
from ..errors import ANTHROPIC, OPENAI, error_body
from ..estimate import text_tokens
from ..httpio import json_bytes
from . import Provider, messages
from .base import Adapter, StreamTranslator, UpstreamCall, loads_object
from .chatshape import chat_chunks, chunk_error, done_event, note, record_stream_error, unended

_CHAT_BODY = "messages.chat_body"  # ctx.state: the translated body, made once per request
ESTIMATE_HEADER = "x-stockyard-token-count"
# The trace's note for an answer with images (``images`` of a chat message or delta): Anthropic's API
# has no block for an image the model made, and text saying so would be sent back as the model's words.
IMAGES_LEFT_OUT = "image(s) the model drew left out: the Messages API has no image output"


def drew(chat: dict, part: str) -> bool:
    """Whether a chat answer (``part`` ``message``) or chunk (``delta``) carries an image the model drew."""
    choices = chat.get("choices")
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    within = first.get(part)
    return isinstance(within, dict) and bool(within.get("images"))


def message_id(ctx: RequestContext) -> str:
    """The answer's id: the trace id, so a message and its trace are found from each other."""
    return f"msg_{ctx.trace_id}"


def provider_name(ctx: RequestContext) -> str | None:
    """The name of the provider this attempt goes to (it makes the reasoning state packed)."""
    return ctx.attempt.provider.name if ctx.attempt.provider is not None else None


def prompt_estimate(chat: dict) -> int:
    """The input tokens of a translated chat request: its messages and tools at four bytes a
    token (``estimate.text_tokens``)."""
    counted = {"messages": chat.get("messages", []), "tools": chat.get("tools", [])}
    return text_tokens(json.dumps(counted, ensure_ascii=False).encode())


def count_estimate(ctx: RequestContext, provider: Provider) -> None:
    """Answer ``count_tokens`` for a non-Anthropic model: :func:`prompt_estimate` of the
    translated request, marked as an estimate in a header."""
    chat = messages.to_chat({k: v for k, v in ctx.body.items() if k != "stream"}, provider.kind, provider.name)
    tokens = prompt_estimate(chat)
    ctx.answer = Answer(200, json.dumps({"input_tokens": tokens}).encode(), headers={ESTIMATE_HEADER: "estimate"})


class MessagesOverChat(Adapter):
    """A chat-speaking provider behind the Messages API: ``inner`` is its OpenAI-dialect chat adapter."""

    def __init__(self, inner: Adapter) -> None:
        self.inner = inner

    def chat_ctx(self, ctx: RequestContext) -> RequestContext:
        """The request as a Chat Completions request, for the inner adapter (same attempt and state)."""
        chat = ctx.state.get(_CHAT_BODY)
        provider = ctx.attempt.provider
        kind = provider.kind if provider is not None else "openai"
        name = provider.name if provider is not None else None
        if chat is None or chat[0] != (kind, name):  # the reasoning state restored is the provider's own
            chat = ctx.state[_CHAT_BODY] = ((kind, name), messages.to_chat(ctx.body, kind, name))
        body = chat[1]
        raw = json.dumps(body, ensure_ascii=False).encode()
        return dataclasses.replace(
            ctx, endpoint="chat", dialect=OPENAI, body=body, raw=raw, body_changed=True, client_wants_usage=True
        )

    def prepare(self, ctx: RequestContext, provider: Provider, model: str) -> UpstreamCall:
        chat = self.chat_ctx(ctx)
        if "reasoning_effort" in chat.body and not messages.takes_effort(provider.kind, model):
            body = {k: v for k, v in chat.body.items() if k != "reasoning_effort"}
            chat = dataclasses.replace(chat, body=body)
        return self.inner.prepare(chat, provider, model)

    def parse(self, ctx: RequestContext, body: bytes) -> bytes:
        chat = loads_object(self.inner.parse(self.chat_ctx(ctx), body))
        if drew(chat, "message"):
            note(ctx, IMAGES_LEFT_OUT)
        answer = messages.from_chat(chat, ctx.body, message_id(ctx), provider_name(ctx))
        return json_bytes(answer)

    def stream(self, ctx: RequestContext) -> StreamTranslator:
        model = ctx.attempt.upstream_model or ctx.model or ""
        chat = self.chat_ctx(ctx)
        outer = messages.ChatToMessagesStream(ctx.body, message_id(ctx), model, provider_name(ctx))
        # The provider counts the prompt only at the stream's end, but clients that read input
        # tokens from message_start alone (the AI SDK 5's Anthropic provider, LangChain JS) would
        # report none: message_start says the estimate, message_delta the provider's count.
        outer.input_estimate = prompt_estimate(chat.body)
        return MessagesStream(ctx, self.inner.stream(chat), outer)

    def error(self, ctx: RequestContext, status: int, body: bytes) -> bytes:
        chat_error = self.inner.error(self.chat_ctx(ctx), status, body)  # OpenAI's error shape
        kind, message = messages.error_from_chat(status, chat_error)
        return error_body(ANTHROPIC, status, message, type_=kind)


class MessagesStream(StreamTranslator):
    """Chat chunks from the inner translator, fed one by one to the Messages event builder."""

    def __init__(self, ctx: RequestContext, inner: StreamTranslator, outer: messages.ChatToMessagesStream) -> None:
        self.ctx, self.inner, self.outer = ctx, inner, outer
        self.drew = False  # an image came (and was left out: the trace says so once)

    def feed(self, event: bytes) -> list[bytes]:
        return self._convert(self.inner.feed(event))

    def finish(self) -> list[bytes]:
        """The inner stream's end; one that never said ``[DONE]`` (nor failed) ends with an ``error``
        event, never a stream that just stops before its ``message_stop`` — unless its answer finished
        (a ``finish_reason`` came: a lax server that sends no ``[DONE]``), which ends as if it had."""
        out = self._convert(self.inner.finish())
        if self.outer.ended:
            return out
        if self.outer.choice.get("finish_reason"):
            return out + self._convert([done_event()])
        return out + self.outer.fail(unended(self.ctx))

    def failure(self, message: str, code: str) -> list[bytes]:
        return self.outer.fail(message)

    def _convert(self, chat_events: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for obj in chat_chunks(chat_events):
            if self.outer.ended:
                continue
            if obj is None:  # [DONE]
                out += self.outer.finish()
                self.complete = True
                continue
            error = chunk_error(obj)
            if error is not None:
                message = str(error.get("message") or "the provider failed")
                if self.ctx.attempt.outcome != "stream_broken":
                    record_stream_error(self.ctx, str(error.get("code") or "api_error"), message)
                out += self.outer.fail(message, messages.stream_error_type(error))
                continue
            if not self.drew and drew(obj, "delta"):
                self.drew = True
                note(self.ctx, IMAGES_LEFT_OUT)
            out += self.outer.feed(obj)
        return out

"""Adapters for ``/v1/responses`` clients: passed through, or translated over Chat Completions.

Providers that speak the Responses API (``Provider.speaks_responses``: openai, azure, and
openai-compatible ones marked so) get the client's body untouched but for what only Stockyard
knows: ``model`` is rewritten when routing changed it, a ``conversation`` (Stockyard's, its items
already in ``input``) is left out, and so are Stockyard's own reasoning items and the item ids it
minted (``conversations_api.minted_here``), while a compaction item it made goes as the user
message holding its summary. Their event stream is relayed event by event (the answer naming
the ``conversation`` the turn joined); usage comes from ``response.completed`` /
``response.incomplete`` / ``response.failed``, and the hosted tools' calls billed per call from
the output items (``toolfees.CallTally``: the answer's, or a stream's as they pass).

Every other provider is reached through :class:`ResponsesOverChat`: the request becomes a
Chat Completions body (``responses.to_chat``, with the history of a previous response
Stockyard keeps), the provider's own OpenAI-dialect chat adapter does the rest (Anthropic
and Gemini translate further, and continue a turn Claude paused), and the chat answer or
chunk stream becomes a Responses object or event stream again (``responses.from_chat`` /
``ChatToResponsesStream``). ``/v1/responses/compact`` on them is :class:`CompactOverChat`.

Either way the finished response is handed to ``ctx.conversation.keep`` before the client
sees its end, so a next turn's ``previous_response_id`` always finds it (and a turn that
joined a ``conversation`` is appended to it); the writes are the writer's, the client's bytes
wait for them only where another process may take the next turn (``stockyard.conversations``).
"""

from __future__ import annotations

import dataclasses
import json
from urllib.parse import urlencode

from ..context import RequestContext
from ..conversations_api import minted_here, without_minted_id
from ..errors import OPENAI, ProxyError
from ..httpio import json_bytes
from ..imagegen import ImageTally, reported
from ..pricing import Usage
from ..toolfees import CallTally
from . import Provider, compaction, responses
from .base import Adapter, FollowUp, StreamTranslator, UpstreamCall, loads_object, sse_object
from .chatshape import chat_chunks, chunk_error, done_event, note, record_stream_error, unended
from .messages_adapters import provider_name
from .openai import auth_headers, request_body
from .reasoning import unpack

PATHS = {"responses": "/responses", "input_tokens": "/responses/input_tokens", "compact": "/responses/compact"}
AZURE_RESPONSES_VERSION = "2025-04-01-preview"  # the first api-version with /openai/responses
TERMINAL = ("response.completed", "response.incomplete", "response.failed")
ENDED = ("completed", "incomplete", "failed", "cancelled")  # a response's statuses once it ran its course
END_EVENTS = tuple(f"response.{status}".encode() for status in ENDED)
_CHAT_BODY = "responses.chat_body"  # ctx.state: the translated body, made once per request


def upstream_path(provider: Provider, rest: str) -> str:
    """Where a Responses API path lives at this provider (Azure: under /openai, with an api-version)."""
    if provider.kind != "azure":
        return rest
    prefix = "" if provider.base_url.rstrip("/").endswith("/openai") else "/openai"
    version = provider.api_version or ""
    if version < AZURE_RESPONSES_VERSION:  # dated versions sort as text; older ones lack the API
        version = AZURE_RESPONSES_VERSION
    path, _, query = rest.partition("?")
    return f"{prefix}{path}?{urlencode({'api-version': version})}" + (f"&{query}" if query else "")


def upstream_headers(provider: Provider, accept: str = "application/json") -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": accept}
    if provider.kind == "azure":
        if provider.api_key:
            headers["api-key"] = provider.api_key
        return headers
    return {**headers, **auth_headers(provider)}


def ours(item: object) -> bool:
    """A reasoning or web_search_call input item Stockyard made: minted by it (``responses.minted``),
    or holding its packing as ``encrypted_content``. No provider can read one; it never goes to one."""
    if not isinstance(item, dict) or item.get("type") not in ("reasoning", "web_search_call"):
        return False
    return responses.minted(item) or unpack(item.get("encrypted_content")) is not None


def keep(ctx: RequestContext, response: object) -> None:
    """Hand a finished response object to the conversation store (see ``stockyard.conversations``)."""
    conv, provider = ctx.conversation, ctx.attempt.provider
    if conv is not None and provider is not None and isinstance(response, dict):
        conv.keep(provider, response)


def joined(ctx: RequestContext) -> dict | None:
    """``{"id": …}`` of the Stockyard conversation this turn joined (the answer's ``conversation``)."""
    conv = ctx.conversation
    return {"id": conv.conversation_id} if conv is not None and conv.conversation_id else None


def read_response(ctx: RequestContext, data: dict) -> None:
    """What a whole response object says it cost, onto ``ctx.attempt``: the model and tier that
    served it, its usage, the image tool's images and the hosted tools' calls (billed per call).
    ``ctx.body`` prices the image tool: the request's, or the response itself (it echoes its ``tools``)."""
    a = ctx.attempt
    a.serve(data.get("model"), data.get("id"))
    a.serve_openai(data)
    usage = data.get("usage")
    if isinstance(usage, dict):
        a.usage = Usage.from_openai(usage)
    images, calls = ImageTally(ctx.body), CallTally()
    images.see_output(data.get("output"))
    calls.see_output(data.get("output"))
    a.image_usage, a.image_estimate = reported(data), images.estimate()
    a.tool_calls = calls.counts()


def ended_in(events: list[bytes]) -> dict | None:
    """The response an end event among ``events`` (one relayed batch of a stream) carries, if any."""
    for event in events:
        if any(name in event for name in END_EVENTS):
            obj = sse_object(event)
            response = obj.get("response") if obj is not None else None
            if isinstance(response, dict):
                return response
    return None


def with_data(event: bytes, obj: dict) -> bytes:
    """An SSE event with its data replaced by ``obj``'s JSON (its other lines, ``event:``, kept)."""
    head = [line for line in event.split(b"\n") if line and not line.startswith(b"data:")]
    return b"\n".join([*head, b"data: " + json_bytes(obj)]) + b"\n\n"


def response_failed(response: dict, sequence_number: int, message: str) -> bytes:
    """A ``response.failed`` event for a stream that broke: the response so far, failed, with why."""
    failed = {**response, "status": "failed", "error": {"code": "server_error", "message": message}}
    event = {"type": "response.failed", "sequence_number": sequence_number, "response": failed}
    return b"event: response.failed\ndata: " + json_bytes(event) + b"\n\n"


# -- pass-through ------------------------------------------------------------------------------


class ResponsesPassThrough(Adapter):
    """Providers that speak the Responses API: bodies and events as they are, but for what only
    Stockyard knows (the module's docstring)."""

    def prepare(self, ctx: RequestContext, provider: Provider, model: str) -> UpstreamCall:
        conv = ctx.conversation
        if conv is not None and conv.previous_id and conv.previous_provider != provider.name:
            if conv.history is not None or conv.previous_provider is not None:
                answered = (
                    f"provider {conv.previous_provider!r}"
                    if conv.previous_provider
                    else "a model Stockyard translates for (its conversation is kept by Stockyard)"
                )
                raise ProxyError(
                    400,
                    f"previous_response_id {conv.previous_id!r} was answered by {answered}; provider "
                    f"{provider.name!r} keeps its own conversation state and cannot continue it: send the "
                    "conversation as input instead",
                    param="previous_response_id",
                    code="previous_response_elsewhere",
                )
        accept = "text/event-stream" if ctx.stream else "application/json"
        path = upstream_path(provider, PATHS[ctx.endpoint])
        if "conversation" in ctx.body:  # Stockyard's, its items already in input (conversations.join)
            unnamed = {k: v for k, v in ctx.body.items() if k != "conversation"}
            ctx = dataclasses.replace(ctx, body=unnamed, body_changed=True)
        items = ctx.body.get("input")
        if isinstance(items, list) and any(
            ours(item) or compaction.made_here(item) or minted_here(item) for item in items
        ):
            # Stockyard's own reasoning items (a conversation that ran on a translated provider) stay
            # behind; its compaction items go as the user message holding their summary; the ids it
            # gave items (a Stockyard conversation's, as listed or put in front) are left off
            kept = [
                without_minted_id(compaction.as_input_message(item, f"input[{i}]"))
                for i, item in enumerate(items)
                if not ours(item)
            ]
            ctx = dataclasses.replace(ctx, body={**ctx.body, "input": kept}, body_changed=True)
        body = request_body(ctx, model, force_usage=False)
        return UpstreamCall("POST", path, upstream_headers(provider, accept), body)

    def parse(self, ctx: RequestContext, body: bytes) -> bytes:
        data = loads_object(body)
        read_response(ctx, data)
        if ctx.endpoint == "responses" and data.get("object") == "response":
            if joined(ctx) is not None:  # the provider heard of no conversation: the answer names it
                data["conversation"] = joined(ctx)
                body = json_bytes(data)  # the provider's text as it came (a lone surrogate escaped)
            keep(ctx, data)
        return body

    def stream(self, ctx: RequestContext) -> StreamTranslator:
        return PassThroughStream(ctx)


class PassThroughStream(StreamTranslator):
    """Relays each event unchanged; reads the response snapshot, usage and the terminal event (the
    provider's ``error`` event too, for the trace), counts the images the image_generation tool sent
    (billed by them if the stream is cut) and the hosted tools' calls its items showed (billed per
    call, cut or not)."""

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.response: dict = {}
        self.sequence_number = -1
        self.images = ImageTally(ctx.body)
        self.calls = CallTally()

    def feed(self, event: bytes) -> list[bytes]:
        obj = sse_object(event)
        if obj is None:
            return [event]
        if isinstance(obj.get("sequence_number"), int):
            self.sequence_number = obj["sequence_number"]
        if self.images.see(obj):  # an image of the image_generation tool went out
            self.ctx.attempt.image_estimate = self.images.estimate()
        if b"_search_call" in event:  # a search call's item, or a response holding one
            self.calls.see_event(obj)
            self.ctx.attempt.tool_calls = self.calls.counts()
        response = obj.get("response")
        if isinstance(response, dict) and joined(self.ctx) is not None:  # as parse names it
            response["conversation"] = joined(self.ctx)
            event = with_data(event, obj)
        if isinstance(response, dict):
            self.response = response
            self.ctx.attempt.serve(response.get("model"), response.get("id"))
            self.ctx.attempt.serve_openai(response)
            if isinstance(response.get("usage"), dict):
                self.ctx.attempt.usage = Usage.from_openai(response["usage"])
            self.ctx.attempt.image_usage = reported(response) or self.ctx.attempt.image_usage
        kind = obj.get("type")
        if kind == "response.created":  # the id is the client's from now on, even if the stream breaks
            keep(self.ctx, response)
        conv, provider = self.ctx.conversation, self.ctx.attempt.provider
        if kind == "response.output_item.done" and conv is not None and provider is not None:
            conv.see(provider, [obj.get("item")])  # the container it ran code in, before the answer cites it
        if kind in TERMINAL:
            self.complete = kind != "response.failed"
            keep(self.ctx, response)
        elif kind == "error":  # the provider's error event, the client's documented end: the trace says it broke
            record_stream_error(self.ctx, str(obj.get("code") or "error"), str(obj.get("message")))
        return [event]

    def failure(self, message: str, code: str) -> list[bytes]:
        return [response_failed(self.response, self.sequence_number + 1, message)]


# -- translation over Chat Completions ----------------------------------------------------------


class ResponsesOverChat(Adapter):
    """A chat-only provider behind the Responses API: ``inner`` is its OpenAI-dialect chat adapter."""

    def __init__(self, inner: Adapter) -> None:
        self.inner = inner

    def chat_ctx(self, ctx: RequestContext) -> RequestContext:
        """The request as a Chat Completions request, for the inner adapter (same attempt and state)."""
        provider = ctx.attempt.provider  # the reasoning state restored is this provider's own
        name, kind = (provider.name, provider.kind) if provider is not None else (None, "openai")
        made = ctx.state.get(_CHAT_BODY)
        if made is None or made[0] != name:
            conv = ctx.conversation
            made = ctx.state[_CHAT_BODY] = (
                name,
                responses.to_chat(ctx.body, conv.history if conv else None, name, kind),
            )
        chat = made[1]
        raw = json.dumps(chat, ensure_ascii=False).encode()
        return dataclasses.replace(
            ctx, endpoint="chat", dialect=OPENAI, body=chat, raw=raw, body_changed=True, client_wants_usage=True
        )

    def prepare(self, ctx: RequestContext, provider: Provider, model: str) -> UpstreamCall:
        conv = ctx.conversation
        if conv is not None and conv.previous_provider is not None:
            raise ProxyError(
                400,
                f"previous_response_id {conv.previous_id!r} is kept by provider {conv.previous_provider!r}; "
                f"provider {provider.name!r} cannot continue it",
                param="previous_response_id",
                code="previous_response_elsewhere",
            )
        if responses.cached_search_only(ctx.body.get("tools")):
            note(ctx, responses.CACHED_SEARCH_LEFT_OUT)
        return self.inner.prepare(self.chat_ctx(ctx), provider, model)

    def parse(self, ctx: RequestContext, body: bytes) -> bytes:
        return self.parse_turn(ctx, [body])

    def follow_up(self, ctx: RequestContext, answers: list[bytes]) -> FollowUp | None:
        return self.inner.follow_up(self.chat_ctx(ctx), answers)  # Claude paused the turn: its chat adapter goes on

    def parse_turn(self, ctx: RequestContext, answers: list[bytes]) -> bytes:
        chat = loads_object(self.inner.parse_turn(self.chat_ctx(ctx), answers))
        conv = ctx.conversation
        assert conv is not None  # set for every /v1/responses request (stockyard.conversations)
        response = responses.from_chat(
            chat, ctx.body, conv.response_id, conv.created_at, provider_name(ctx), history=conv.history
        )
        keep(ctx, response)
        return json_bytes(response)

    def stream(self, ctx: RequestContext) -> StreamTranslator:
        conv = ctx.conversation
        assert conv is not None
        model = ctx.attempt.upstream_model or ctx.model or ""
        kind = responses.CompactionStream if compaction.triggered(ctx.body) else responses.ChatToResponsesStream
        outer = kind(ctx.body, conv.response_id, conv.created_at, model, provider_name(ctx), history=conv.history)
        return OverChatStream(ctx, self.inner.stream(self.chat_ctx(ctx)), outer)

    def error(self, ctx: RequestContext, status: int, body: bytes) -> bytes:
        return self.inner.error(self.chat_ctx(ctx), status, body)  # a chat error is OpenAI's error shape


class CompactOverChat(ResponsesOverChat):
    """``/v1/responses/compact`` for a chat-only provider: the model summarises the conversation (the
    request with a compaction trigger after its input: ``compaction.with_trigger``), and the answer is
    OpenAI's ``response.compaction`` object: the conversation's user messages, then one compaction item
    whose token carries the summary (``compaction.py``). Not streamed, as OpenAI's is not."""

    def chat_ctx(self, ctx: RequestContext) -> RequestContext:
        return super().chat_ctx(dataclasses.replace(ctx, body=compaction.with_trigger(ctx.body)))

    def parse_turn(self, ctx: RequestContext, answers: list[bytes]) -> bytes:
        chat = loads_object(self.inner.parse_turn(self.chat_ctx(ctx), answers))
        conv = ctx.conversation
        assert conv is not None  # set for every Responses API request (stockyard.conversations)
        summary = responses.summary_of(chat)
        if not summary:
            raise ProxyError(502, responses.NO_SUMMARY, code="bad_upstream_response")
        kept = compaction.kept_messages(conv.history, ctx.body.get("input"))
        item = compaction.compaction_item(responses.item_id("cmp", conv.response_id, len(kept)), summary)
        usage = responses.responses_usage(chat.get("usage"))
        answer = compaction.compacted(conv.response_id, conv.created_at, [*kept, item], usage)
        return json_bytes(answer)


class OverChatStream(StreamTranslator):
    """Chat chunks from the inner translator, fed one by one to the Responses event builder."""

    def __init__(self, ctx: RequestContext, inner: StreamTranslator, outer: responses.ChatToResponsesStream) -> None:
        self.ctx, self.inner, self.outer = ctx, inner, outer
        self.done = False

    def feed(self, event: bytes) -> list[bytes]:
        return self._convert(self.inner.feed(event))

    def finish(self) -> list[bytes]:
        """The inner stream's end; one that never said ``[DONE]`` (nor failed) ends ``response.failed``,
        never a stream that just stops (Codex would wait for its terminal event, or take a part for all)
        — unless its answer finished (a ``finish_reason`` came), which ends as if ``[DONE]`` had."""
        out = self._convert(self.inner.finish())
        if self.done:
            return out
        if self.outer.finish_reason:  # the answer finished; only a lax server's [DONE] is missing
            return out + self._convert([done_event()])
        self.done = True
        return out + self.outer.fail(unended(self.ctx), "server_error")

    def paused_answer(self) -> bytes | None:
        return self.inner.paused_answer()

    def failure(self, message: str, code: str) -> list[bytes]:
        return self.outer.fail(message, code)

    def _convert(self, chat_events: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for obj in chat_chunks(chat_events):
            if self.done:
                continue
            if obj is None:  # [DONE]
                self.done = True
                out += self.outer.finish()
                self.complete = bool(self.outer.complete)
                keep(self.ctx, self.outer.response)
                continue
            error = chunk_error(obj)
            if error is not None:
                self.done = True
                message = str(error.get("message") or "the provider failed")
                out += self.outer.fail(message, responses.stream_error_code(error))
                continue
            out += self.outer.feed(obj)
        return out

"""The OpenAI chat shapes that translating adapters (Anthropic, Gemini) produce.

Answers, stream chunks, usage objects and errors in OpenAI's wire format, the stream
translator both build on, plus reading the OpenAI request parts both translators need
(text, images, tool arguments).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ..context import RequestContext
from ..errors import ProxyError, error_body, error_type, sse_error_event
from ..pricing import Usage
from . import Provider
from .base import StreamTranslator, sse_data


def openai_usage(usage: Usage) -> dict:
    """The OpenAI ``usage`` object for token counts Stockyard normalised."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def chunk(ident: str, created: int, model: str, choices: list[dict], usage: dict | None = None) -> bytes:
    """One ``chat.completion.chunk`` SSE event."""
    payload: dict = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        payload["usage"] = usage
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def delta_choice(delta: dict, finish_reason: str | None = None, index: int = 0) -> dict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def done_event() -> bytes:
    return b"data: [DONE]\n\n"


def completion(ident: str, created: int, model: str, choices: list[dict], usage: Usage | None) -> bytes:
    """A whole ``chat.completion`` object."""
    payload: dict = {"id": ident, "object": "chat.completion", "created": created, "model": model, "choices": choices}
    if usage is not None:
        payload["usage"] = openai_usage(usage)
    return json.dumps(payload, ensure_ascii=False).encode()


def data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a ``data:`` URL, None for other URLs; 400 if not base64."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    media_type, _, encoding = head.partition(";")
    if not sep or encoding.lower() != "base64":
        raise ProxyError(
            400,
            "image data URLs must be base64-encoded (data:<type>;base64,<data>)",
            param="messages",
            code="invalid_image_url",
        )
    return media_type or "application/octet-stream", data


def image_url_of(part: dict) -> str:
    """The URL of an OpenAI ``image_url`` content part (object or bare string form)."""
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise ProxyError(400, "an image_url content part needs a url", param="messages", code="invalid_image_url")
    return url


def _invalid_content() -> ProxyError:
    return ProxyError(
        400, "message content must be a string or an array of content parts", param="messages", code="invalid_content"
    )


def text_of(content: Any) -> str:
    """Plain text of an OpenAI message content (string, or an array of text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise _invalid_content()


def translate_content(
    content: Any, text: Callable[[dict, str], dict], image: Callable[[str], dict], models: str
) -> list[dict]:
    """OpenAI message content → a provider's content parts: ``text(part, text)`` for each
    non-empty text or refusal (``part`` is ``{}`` for string content), ``image(url)`` for each
    image; any other part type is a 400 naming the ``models`` it cannot go to."""
    if content is None:
        return []
    if isinstance(content, str):
        return [text({}, content)] if content else []
    if not isinstance(content, list):
        raise _invalid_content()
    out: list[dict] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            if part.get(kind):
                out.append(text(part, part[kind]))
        elif kind == "image_url":
            out.append(image(image_url_of(part)))
        else:
            raise ProxyError(
                400,
                f"content part type {kind!r} is not supported for {models} models",
                param="messages",
                code="unsupported_content",
            )
    return out


def message_list(items: Any) -> list:
    """The request's ``messages``: a non-empty array, or a 400."""
    if not isinstance(items, list) or not items:
        raise ProxyError(400, "'messages' must be a non-empty array", param="messages", code="invalid_messages")
    return items


def unsupported_role(role: Any, models: str) -> ProxyError:
    return ProxyError(
        400, f"message role {role!r} is not supported for {models} models", param="messages", code="invalid_role"
    )


def append_turn(turns: list[dict], role: str, items: list[dict], key: str) -> None:
    """Add a turn with ``items`` under ``key``, merged into the previous turn of the same role
    (both providers want roles to alternate); an empty turn is left out (both refuse one)."""
    if not items:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(items)
    else:
        turns.append({"role": role, key: items})


def tool_function(tool: Any) -> dict:
    """The ``function`` of an OpenAI tool entry, with its name, or a 400."""
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(fn, dict) or not fn.get("name"):
        raise ProxyError(
            400,
            "each tool must be {'type': 'function', 'function': {'name': …}}",
            param="tools",
            code="invalid_tools",
        )
    return fn


def tool_arguments(call: dict) -> dict:
    """The parsed JSON arguments of an assistant tool call (an object, as both APIs need)."""
    raw = (call.get("function") or {}).get("arguments") or "{}"
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        raise ProxyError(
            400,
            "tool_calls[].function.arguments must be a JSON object string",
            param="messages",
            code="invalid_tool_arguments",
        ) from None
    if not isinstance(args, dict):
        raise ProxyError(
            400,
            "tool_calls[].function.arguments must be a JSON object",
            param="messages",
            code="invalid_tool_arguments",
        )
    return args


@contextmanager
def shape_errors(status: int, what: str) -> Iterator[None]:
    """Turn a body of an unexpected shape (a string where an object belongs, …) into a clear
    error instead of a 500: 400 for the client's request, 502 for the provider's answer."""
    try:
        yield
    except (AttributeError, TypeError, KeyError, IndexError, ValueError):
        code = "invalid_request" if status == 400 else "bad_upstream_response"
        raise ProxyError(status, f"{what} has an unexpected shape and cannot be translated", code=code) from None
    except RecursionError:  # JSON nested near the parser's limit, too deep to translate and re-encode
        code = "invalid_request" if status == 400 else "bad_upstream_response"
        raise ProxyError(status, f"{what} is nested too deeply to be translated", code=code) from None


def translated_error(status: int, message: str, code: str | None) -> bytes:
    """An upstream error re-shaped for an OpenAI client, keeping the provider's status."""
    return error_body("openai", status, message, code=code, type_=error_type("openai", status))


def upstream_error(
    ctx: RequestContext, status: int, body: bytes, read: Callable[[Any], tuple[str, str] | None]
) -> bytes:
    """A provider's error body for an OpenAI client: ``read`` finds its (code, message)."""
    try:
        found = read(json.loads(body))
    except ValueError:
        found = None
    if found is None:
        provider = ctx.attempt.provider
        return translated_error(status, f"provider {provider.name if provider else '?'!r} answered {status}", None)
    code, message = found
    return translated_error(status, message, code)


def endpoint_check(ctx: RequestContext, provider: Provider) -> None:
    """Translating adapters serve chat only: anything else is a clear 400."""
    if ctx.endpoint != "chat":
        path = {"completions": "/v1/completions", "embeddings": "/v1/embeddings"}.get(ctx.endpoint, ctx.endpoint)
        raise ProxyError(
            400,
            f"provider {provider.name!r} ({provider.kind}) does not support {path}; use /v1/chat/completions",
            code="unsupported_endpoint",
        )


def record_stream_error(ctx: RequestContext, kind: str, message: str) -> None:
    """An error the provider sent inside a stream: the trace says the answer broke."""
    ctx.attempt.outcome = "stream_broken"
    ctx.attempt.error_type = f"upstream_{kind}"
    ctx.attempt.error_message = message


class ChunkStream(StreamTranslator):
    """A provider's stream → OpenAI ``chat.completion.chunk`` events: what every translator shares.

    :meth:`feed` parses each event's JSON and hands it to :meth:`translate`, which a
    subclass writes for its provider's events; an event of an unexpected shape carries
    nothing and is skipped. After :meth:`fail` nothing more is sent.
    """

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.ident = ctx.trace_id
        self.created = int(time.time())
        self.failed = False

    def translate(self, payload: Any) -> list[bytes]:
        raise NotImplementedError

    def feed(self, event: bytes) -> list[bytes]:
        data = sse_data(event)
        if data is None or self.failed:
            return []
        try:
            payload = json.loads(data)
        except ValueError:
            return []
        try:
            return self.translate(payload)
        except (AttributeError, TypeError, KeyError, ValueError):
            return []  # an event of an unexpected shape carries nothing we can translate

    def identify(self, ident: str | None, model: str | None) -> None:
        """Take the answer's id and served model from an event that carries them."""
        self.ident = ident or self.ident
        self.ctx.attempt.serve(model or self.ctx.attempt.served_model or self.ctx.attempt.upstream_model)

    def out(self, delta: dict, finish: str | None = None, index: int = 0) -> bytes:
        """One chunk with one choice's delta."""
        return chunk(
            self.ident, self.created, self.ctx.attempt.served_model or "", [delta_choice(delta, finish, index)]
        )

    def done(self) -> list[bytes]:
        """The end of a complete answer: the usage chunk when the client asked for usage, then [DONE]."""
        out = []
        if self.ctx.client_wants_usage and self.ctx.attempt.usage is not None:
            out.append(
                chunk(
                    self.ident,
                    self.created,
                    self.ctx.attempt.served_model or "",
                    [],
                    openai_usage(self.ctx.attempt.usage),
                )
            )
        return out + [done_event()]

    def fail(self, status: int, kind: str, message: str) -> list[bytes]:
        """End the client's stream with an error event (never a made-up [DONE])."""
        self.failed = True
        record_stream_error(self.ctx, kind, message)
        return [sse_error_event("openai", status, message, code=kind)]

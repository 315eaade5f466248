"""OpenAI's media endpoints — audio, images, moderations — passed through to OpenAI-kind providers.

No translation: the body goes as the client sent it (a multipart form re-encoded from its
spool, ``multipart.Upload.encode``, or JSON — an image edit may be either: :func:`is_json_edit`),
with the model name routing chose. Answers come back with their own Content-Type (a transcript
may be text, SRT or VTT; speech is audio, relayed chunk by chunk as it arrives: ``relays_bytes``).
Streamed transcriptions and images (``stream``: :data:`STREAMED`) are relayed event by event
(:class:`MediaStream`, :class:`ImageStream`). What they bill in — images, seconds of audio,
characters of speech, tokens — is read here into ``ctx.attempt`` for ``billing``.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO

from ..context import RequestContext
from ..errors import ProxyError
from ..estimate import images_asked
from ..imagegen import IMAGE_REFERENCE, drawn_tokens, drawn_usage, image_usage, images_api_image
from ..limits import show
from ..pricing import Usage
from . import Provider
from .base import Adapter, StreamTranslator, UpstreamCall, sse_data, sse_object
from .chatshape import record_stream_error, unreadable_event
from .openai import auth_headers, request_body

PATHS = {
    "transcriptions": "/audio/transcriptions",
    "translations": "/audio/translations",
    "speech": "/audio/speech",
    "image_generations": "/images/generations",
    "image_edits": "/images/edits",
    "image_variations": "/images/variations",
    "moderations": "/moderations",
}
ENDPOINTS = tuple(PATHS)
MULTIPART = ("transcriptions", "translations", "image_edits", "image_variations")
IMAGES = ("image_generations", "image_edits", "image_variations")
# What ``stream`` asks of them: Server-Sent Events (a gpt-image model's images; a transcription's text)
STREAMED = ("transcriptions", "image_generations", "image_edits")
IMAGE_PARTIAL = ("image_generation.partial_image", "image_edit.partial_image")
IMAGE_DONE = ("image_generation.completed", "image_edit.completed")  # a streamed image's last event: its usage
AUDIO_IN = ("transcriptions", "translations")
# The model OpenAI uses when a request names none (routing needs one).
DEFAULT_MODELS = {
    "image_generations": "dall-e-2",
    "image_edits": "dall-e-2",
    "image_variations": "dall-e-2",
    "moderations": "omni-moderation-latest",
}
# A JSON image edit (OpenAI's ``EditImageBodyJsonParam``): its images named, not uploaded — GPT image models only.
JSON_EDIT_MODEL = "gpt-image-1.5"  # OpenAI's default for one (the form's, dall-e-2, takes no JSON)
JSON_DEFAULT_MODELS = {**DEFAULT_MODELS, "image_edits": JSON_EDIT_MODEL}  # a JSON body's
JSON_EDIT_IMAGES = 16  # the most ``images`` one names
# What an Azure OpenAI deployment serves of these (its data-plane API has no moderations or variations).
AZURE_ENDPOINTS = ("transcriptions", "translations", "speech", "image_generations", "image_edits")


def upstream_body(ctx: RequestContext, model: str) -> tuple[bytes | BinaryIO, dict[str, str]]:
    """The body and its headers: a multipart form from the spool (fields a module changed, and
    the routed model, written in), or the JSON as the client sent it unless something changed."""
    upload = ctx.upload
    if upload is None:
        return request_body(ctx, model, force_usage=False), {"Content-Type": "application/json"}
    changed = {k: v for k, v in ctx.body.items() if isinstance(v, str) and upload.fields.get(k) != v}
    changed.pop("model", None)
    sent = upload.fields.get("model")
    if sent != model and (sent is not None or model != DEFAULT_MODELS.get(ctx.endpoint)):
        changed["model"] = model  # routing chose another name (provider/model, an alias)
    encoded = upload.encode(changed)
    return encoded, {"Content-Type": encoded.content_type, "Content-Length": str(encoded.length)}


def is_json_edit(endpoint: str, content_type: str | None) -> bool:
    """Whether a request to a multipart endpoint is OpenAI's JSON image edit instead: an image edit
    whose Content-Type is ``application/json``. Any other type but a form's is a 400 naming the two
    it takes (the other endpoints take forms alone: ``multipart.boundary_of`` refuses the rest)."""
    if endpoint != "image_edits":
        return False
    kind = (content_type or "").partition(";")[0].strip().lower()
    if kind == "application/json":
        return True
    if kind != "multipart/form-data":
        raise ProxyError(
            400,
            "/v1/images/edits takes multipart/form-data (its 'image' files) or application/json "
            f"(its 'images' by URL or file id), not {kind[:100] or 'a body without Content-Type'!r}",
            code="invalid_content_type",
        )
    return False


def check_json_edit(body: dict) -> None:
    """A JSON edit's ``images`` (1 to :data:`JSON_EDIT_IMAGES`) and its ``mask`` if any, each an
    object naming exactly one of ``image_url`` and ``file_id`` by a non-empty string, else OpenAI's
    400 naming where: Stockyard reads them (each file must be the key's, each image is held by the
    budget), so a shape it could misread never reaches the provider."""
    images = body.get("images")
    if images is None:
        hint = " ('image' is the multipart form's field: JSON names them in 'images')" if "image" in body else ""
        message = f"'images' is required: 1 to {JSON_EDIT_IMAGES} image references{hint}"
        raise ProxyError(400, message, param="images", code="missing_required_parameter")
    if not isinstance(images, list) or not 1 <= len(images) <= JSON_EDIT_IMAGES:
        got = f"{len(images)} of them" if isinstance(images, list) else show(images)
        message = f"'images' must be an array of 1 to {JSON_EDIT_IMAGES} image references, got {got}"
        raise ProxyError(400, message, param="images", code="invalid_value")
    for i, reference in enumerate(images):
        _check_reference(reference, f"images[{i}]")
    if body.get("mask") is not None:
        _check_reference(body["mask"], "mask")


def _check_reference(reference: object, where: str) -> None:
    """One image reference (OpenAI's ``ImageRefParam``): ``{"image_url": …}`` or ``{"file_id": …}``."""
    if not isinstance(reference, dict) or len(reference) != 1 or not set(reference) <= set(IMAGE_REFERENCE):
        got = show(reference)
        if isinstance(reference, dict):
            got = f"the keys {', '.join(repr(k[:40]) for k in list(reference)[:4])}" if reference else "an empty object"
        message = f"'{where}' must be an object with exactly one of 'image_url' and 'file_id', got {got}"
        raise ProxyError(400, message, param=where, code="invalid_value")
    name, value = next(iter(reference.items()))
    if not isinstance(value, str) or not value:
        message = f"'{where}.{name}' must be a non-empty string, got {show(value)}"
        raise ProxyError(400, message, param=f"{where}.{name}", code="invalid_value")


class MediaAdapter(Adapter):
    """Pass-through to an OpenAI-compatible ``/audio/…``, ``/images/…`` or ``/moderations``."""

    def path(self, ctx: RequestContext, provider: Provider, model: str) -> str:
        return PATHS[ctx.endpoint]

    def auth(self, provider: Provider) -> dict[str, str]:
        return auth_headers(provider)

    def prepare(self, ctx: RequestContext, provider: Provider, model: str) -> UpstreamCall:
        body, headers = upstream_body(ctx, model)
        if ctx.stream:
            headers["Accept"] = "text/event-stream"
        return UpstreamCall("POST", self.path(ctx, provider, model), {**headers, **self.auth(provider)}, body)

    def relays_bytes(self, ctx: RequestContext) -> bool:
        """Speech is audio: relayed as it arrives, never read whole."""
        return ctx.endpoint == "speech"

    def content_type(self, upstream: str | None) -> str:
        return upstream or "application/json"

    def parse(self, ctx: RequestContext, body: bytes) -> bytes:
        """Read what the answer bills (usage, images); a text answer (``response_format=text``,
        srt, vtt) passes as it is."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return body
        if isinstance(data, dict):
            record(ctx, data)
        return body

    def stream(self, ctx: RequestContext) -> StreamTranslator:
        return ImageStream(ctx) if ctx.endpoint in IMAGES else MediaStream(ctx)


def record(ctx: RequestContext, data: dict) -> None:
    """What one answer (or a stream's final event) says was billed: its ``usage`` (seconds of
    audio for whisper-1, else tokens), or for audio without one the ``duration`` a
    ``verbose_json`` answer gives (a whisper translation's only mention of its length)."""
    a = ctx.attempt
    a.serve(data.get("model"))
    usage = data.get("usage")
    if isinstance(usage, dict):
        if usage.get("type") == "duration":
            a.media_seconds = _seconds(usage.get("seconds"))
        elif ctx.endpoint in IMAGES:  # an image model's: its output is images unless split
            a.usage = image_usage(usage)
        else:
            a.usage = Usage.from_openai(usage)
    elif ctx.endpoint in AUDIO_IN:
        a.media_seconds = _seconds(data.get("duration"))
    if ctx.endpoint in IMAGES and isinstance(data.get("data"), list):
        a.media_images = len(data["data"])


def _seconds(value: object) -> float | None:
    """A duration in seconds as an answer states it (a number, not below 0), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return value
    return None


class MediaStream(StreamTranslator):
    """A streamed transcript (``stream=true``): events as they are; usage from ``transcript.text.done``."""

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx

    def feed(self, event: bytes) -> list[bytes]:
        data = sse_data(event)
        if data is not None and b'"usage"' in data:
            try:
                chunk = json.loads(data)
            except ValueError:
                chunk = None
            except RecursionError:  # the provider's: relayed unread, as a non-JSON event is
                unreadable_event(self.ctx)
                chunk = None
            if isinstance(chunk, dict):
                record(self.ctx, chunk)
        if data is not None and (data.strip() == b"[DONE]" or b"transcript.text.done" in data):
            self.complete = True
        return [event]


class ImageStream(StreamTranslator):
    """A streamed images answer (``stream: true``, gpt-image models): each image's
    ``image_generation.partial_image`` events (``image_edit.*`` for an edit), then its
    ``…completed`` event with that image's usage, relayed as they come.

    Billed the sum of the completed events' usage (their partial images in it). The stream is
    complete once as many images completed as the request asked for (``n``: no event ends the
    stream but the last image's, and its end alone does not say every image came). Until then the
    usage is an estimate, which adds the image being drawn when partial images of it went out (the
    partials since the last completed event: OpenAI's events name no image), as the request asked
    for it and its partials 100 tokens each (``imagegen.drawn_usage``, as the image tool's): what a
    stream cut there (the provider broke, the client left, the deadline) is billed. A completed
    event without its usage is billed so too (an estimate). An ``error`` event the provider sends
    is relayed as it is and traced."""

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.asked = images_asked(ctx.body)
        self.reported: Usage | None = None  # the completed images' usage, summed
        self.done = 0  # images completed
        self.drawing = 0  # partial images of the image being drawn
        self.guessed = False  # an image completed without its usage: estimated

    def feed(self, event: bytes) -> list[bytes]:
        obj = sse_object(event)
        if obj is None:
            return [event]
        kind = obj.get("type")
        if kind in IMAGE_PARTIAL:
            self.drawing += 1
        elif kind in IMAGE_DONE:
            usage = obj.get("usage")
            image = image_usage(usage) if isinstance(usage, dict) else self._drawn()
            self.guessed = self.guessed or not isinstance(usage, dict)
            self.reported = image if self.reported is None else self.reported.plus(image)
            self.done, self.drawing = self.done + 1, 0
            self.complete = self.done >= self.asked
        elif (error := stream_error(obj)) is not None:
            code, message = error.get("code") or error.get("type"), error.get("message")
            if not isinstance(message, str) or not message:
                message = "the provider's stream ended with an error"
            record_stream_error(self.ctx, str(code or "error"), message)
            return [event]
        else:
            return [event]
        a = self.ctx.attempt  # what it is billed if the stream ends here
        usage = self.reported
        if self.drawing:
            usage = self._drawn() if usage is None else usage.plus(self._drawn())
        a.usage, a.usage_estimated = usage, self.guessed or not self.complete
        a.media_images = self.done or None
        return [event]

    def _drawn(self) -> Usage:
        """The image being drawn, as the request asked for it (the routed model's table, its
        quality and size), never more than its budget held for it (``imagegen.images_api_image``:
        a model without a table of its own is held at gpt-image-1's largest, an odd size there
        would be scaled past it), with the partial images of it that went out."""
        body, model = self.ctx.body, self.ctx.attempt.upstream_model or ""
        asked = drawn_tokens({"model": model, "quality": body.get("quality"), "size": body.get("size")})
        held = images_api_image(body, model, self.ctx.default_output_cap)
        return drawn_usage(min(asked, held), 1, self.drawing)


def stream_error(obj: dict) -> dict | None:
    """The error an event of the provider's stream carries: OpenAI's ``{"error": {…}}`` or an
    ``error``-typed event (``{"type": "error", "code", "message"}``), else None."""
    error: Any = obj.get("error")
    if isinstance(error, dict):
        return error
    return obj if obj.get("type") == "error" else None


class AzureMediaAdapter(MediaAdapter):
    """The same endpoints under an Azure deployment (``api-key`` header, ``api-version`` query)."""

    def path(self, ctx: RequestContext, provider: Provider, model: str) -> str:
        from .azure import deployment_path

        return deployment_path(provider, model, ctx.endpoint, PATHS[ctx.endpoint])

    def auth(self, provider: Provider) -> dict[str, str]:
        return {"api-key": provider.api_key} if provider.api_key else {}

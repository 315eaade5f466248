"""Images a model generates inside an answer, and what they cost when the answer says nothing.

Two kinds reach a client in a stream:

- The Responses API's hosted ``image_generation`` tool (passed through to OpenAI and Azure).
  OpenAI bills its images apart from the mainline model's ``usage``: the response's
  ``tool_usage.image_gen`` counts them in the image model's tokens (gpt-image-1 unless the tool
  names another), billed at that model's rates (:func:`reported`, :func:`tool_model`).
- A chat model's own images (``choices[].delta.images`` / ``message.images``: OpenRouter's and
  other compatible providers' image models), in its ``usage`` as its own output tokens.

A stream cut before its usage never brings those counts, so the images it relayed are counted as
they pass (:class:`ImageTally`, :func:`chat_images`: a trace keeps only the first 256 KB of an
answer, and one image is ~2 MB of base64) and estimated: each image as the largest one
(:data:`IMAGE_OUTPUT_TOKENS`, what a budget holds for an image), each partial image its 100 tokens
(OpenAI: "each partial image will incur an additional 100 image output tokens"). An image of which
only partials went out is billed as made: it was being drawn, and the last partial can be close to
it. Their events are never billed as text: :func:`image_bytes` (what ``Attempt.capture`` counts of
every relayed byte) and :func:`without_images` (what ``estimate.relayed_tokens`` reads).
"""

from __future__ import annotations

import re
from typing import Any

from .pricing import Usage

IMAGE_OUTPUT_TOKENS = 6240  # gpt-image-1's largest image (high quality, 1024x1536): more than the default cap
IMAGE_TOOL_MODEL = "gpt-image-1"  # the tool's image model when it names none
PARTIAL_IMAGE_TOKENS = 100
CALL = "image_generation_call"
PARTIAL = "response.image_generation_call.partial_image"
# An event that carries images, told by its own JSON (in a text the quotes would be escaped): the
# image tool's (its items' type, its events' types) and a chat chunk's ``images``.
_MARK = b"image"  # in every such event: the cheap test before the split
_IMAGE_EVENT = re.compile(rb'"type"\s*:\s*"(?:response\.)?image_generation_call[."]|"images"\s*:\s*\[\s*\{')


def _events(data: bytes) -> list[bytes]:
    return data.split(b"\n\n")


def image_bytes(data: bytes) -> int:
    """Bytes of the events in ``data`` (whole SSE events: one relayed piece) that carry images."""
    if _MARK not in data:
        return 0
    return sum(len(event) + 2 for event in _events(data) if _IMAGE_EVENT.search(event))


def without_images(data: bytes) -> bytes:
    """``data`` (a captured stream) without the events that carry images."""
    if _MARK not in data:
        return data
    return b"\n\n".join(event for event in _events(data) if _IMAGE_EVENT.search(event) is None)


def tool_model(body: dict) -> str:
    """The image model of the request's first ``image_generation`` tool (its default if unnamed)."""
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") == "image_generation":
            model = tool.get("model")
            return model if isinstance(model, str) and model else IMAGE_TOOL_MODEL
    return IMAGE_TOOL_MODEL


def reported(response: Any) -> Usage | None:
    """``tool_usage.image_gen`` of a response object, when it counts anything."""
    tools = response.get("tool_usage") if isinstance(response, dict) else None
    image_gen = tools.get("image_gen") if isinstance(tools, dict) else None
    if not isinstance(image_gen, dict):
        return None
    usage = Usage.from_openai(image_gen)
    return usage if usage.prompt_tokens or usage.completion_tokens else None


def chat_images(chunk: Any) -> int:
    """Images in a chat chunk's deltas (or a chat answer's messages): ``images`` lists."""
    count = 0
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict):
            for key in ("delta", "message"):
                part = choice.get(key)
                images = part.get("images") if isinstance(part, dict) else None
                count += len(images) if isinstance(images, list) else 0
    return count


class ImageTally:
    """The images a Responses stream relayed: each ``image_generation_call`` of which a partial or
    the final image went out, and the partial images."""

    __slots__ = ("images", "partials")

    def __init__(self) -> None:
        self.images: set[str] = set()
        self.partials = 0

    def see(self, obj: dict) -> bool:
        """Count one relayed event (``obj``, its parsed data); True if it was an image's."""
        item = obj.get("item")
        if obj.get("type") == PARTIAL:
            self.partials += 1
            self.images.add(str(obj.get("item_id") or obj.get("output_index")))
            return True
        if isinstance(item, dict) and item.get("type") == CALL and item.get("result"):
            self.images.add(str(item.get("id") or obj.get("output_index")))
            return True
        return False

    def see_output(self, output: Any) -> None:
        """Count the images of a whole response's ``output`` items."""
        for item in output if isinstance(output, list) else ():
            self.see({"item": item})

    def estimate(self) -> Usage | None:
        """The tool's usage for what went out, when any image did (see the module's docstring)."""
        if not self.images:
            return None
        return Usage(completion_tokens=IMAGE_OUTPUT_TOKENS * len(self.images) + PARTIAL_IMAGE_TOKENS * self.partials)

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
answer, and one image is ~2 MB of base64) and estimated (:func:`drawn_usage`; an Images API
stream's image being drawn too, ``media.ImageStream``): each image as the tool asked for it
(its quality and size in its image model's table, :func:`drawn_tokens`: ``auto`` or unset, the
largest; a chat model's as the largest, :data:`IMAGE_OUTPUT_TOKENS`), each partial image its 100 tokens
(OpenAI: "each partial image will incur an additional 100 image output tokens"). An image of which
only partials went out is billed as made: it was being drawn, and the last partial can be close to
it. Their events are never billed as text: :func:`image_bytes` (what ``Attempt.capture`` counts of
every relayed byte) and :func:`without_images` (what ``estimate.relayed_tokens`` reads).

Before the request goes upstream a budget holds the tool's images (:func:`held_tokens`): as many as
the response may make, each at the largest size and quality the tool's settings allow, in its image
model's tokens (:func:`output_tokens`: gpt-image-1's and gpt-image-1-mini's differ).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .pricing import Usage, key_names
from .toolchoice import allowed_entries

# Image output tokens by quality and size, per image model: what a budget holds for an image (an
# Images API request's and the Responses tool's, by their quality and size) and what a cut stream's
# image is billed as (the tool's quality and size).
# gpt-image-1: OpenAI's image generation guide ("Cost and latency",
# developers.openai.com/api/docs/guides/image-generation; $0.011 to $0.25 an image at $40 per 1M).
GPT_IMAGE_1_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
# gpt-image-1-mini: OpenAI publishes no token table for it, and its per-image prices are not
# gpt-image-1's tokens at its $8 per 1M (low 1024x1024 is $0.005, not 272 tokens' $0.0022), so
# each size is held at the tokens its published per-image price buys at $8 per 1M: the price of
# the image exactly (model page, developers.openai.com/api/docs/models/gpt-image-1-mini: low
# $0.005/$0.006/$0.006, medium $0.011/$0.015/$0.015, high $0.036/$0.052/$0.052). What it is
# billed is what its usage reports; these only bound the hold and a cut stream's estimate.
GPT_IMAGE_1_MINI_TOKENS = {
    "low": {"1024x1024": 625, "1024x1536": 750, "1536x1024": 750},
    "medium": {"1024x1024": 1375, "1024x1536": 1875, "1536x1024": 1875},
    "high": {"1024x1024": 4500, "1024x1536": 6500, "1536x1024": 6500},
}
# gpt-image-1.5: gpt-image-1's tokens. Its published per-image prices are those tokens at its $32
# per 1M image output, each rounded to the tenth of a cent (low $0.009/$0.013/$0.013, medium
# $0.034/$0.051/$0.050, high $0.133/$0.200/$0.199 for 1024x1024/1024x1536/1536x1024: fal.ai's and
# Runware's gpt-image-1.5 pages; 6,240 × $32 per 1M = $0.19968).
# By model name (a dated snapshot of one takes its table); any other image model (one an operator
# prices) takes gpt-image-1's.
OUTPUT_TOKENS = {
    "gpt-image-1": GPT_IMAGE_1_TOKENS,
    "gpt-image-1-mini": GPT_IMAGE_1_MINI_TOKENS,
    "gpt-image-1.5": GPT_IMAGE_1_TOKENS,
}
# gpt-image-1's largest (more than the default cap): a chat image model's image, when its stream is cut
IMAGE_OUTPUT_TOKENS = GPT_IMAGE_1_TOKENS["high"]["1024x1536"]
IMAGE_TOOL_MODEL = "gpt-image-1"  # the tool's image model when it names none
PARTIAL_IMAGE_TOKENS = 100
MAX_PARTIAL_IMAGES = 3  # the tool's ``partial_images``: 0 (its default) to 3
# Images a budget holds for a response that may call the tool when the request sets no
# ``max_tool_calls``: OpenAI bounds the tool's calls in a response by nothing else (a model asked for
# several images calls it once each). 10: the most images the Images API makes for one request (its
# ``n``), the same guess a web search tool without ``max_uses`` is held at; a guess, not a bound (the
# images made settle the hold). A request sets ``max_tool_calls`` to hold fewer.
IMAGE_CALLS_UNCAPPED = 10
_SIZE = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")  # a size the table does not know (gpt-image-2's own)
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


def image_tool(body: Any) -> dict | None:
    """The request's first ``image_generation`` tool (the one its images are priced by), or None."""
    tools = body.get("tools") if isinstance(body, dict) else None
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") == "image_generation":
            return tool
    return None


def own_table(model: Any) -> dict[str, dict[str, int]] | None:
    """The image output tokens by quality and size of the image model ``model`` (a name as a
    request gives it; a dated snapshot of a known model is that model): :data:`OUTPUT_TOKENS`;
    None for a model the tables do not know."""
    name = model.strip().lower() if isinstance(model, str) else ""
    known = [key for key in OUTPUT_TOKENS if key_names(key, name)]
    return OUTPUT_TOKENS[max(known, key=len)] if known else None


def output_tokens(model: Any) -> dict[str, dict[str, int]]:
    """:func:`own_table`, or gpt-image-1's for a model the tables do not know."""
    return own_table(model) or GPT_IMAGE_1_TOKENS


IMAGE_REFERENCE = ("image_url", "file_id")  # a JSON image edit's reference names exactly one


def edit_references(body: Mapping[str, Any]) -> list[dict]:
    """The image references a JSON image edit names, its ``images`` and its ``mask`` (each
    ``{"image_url": …}`` or ``{"file_id": …}``, as ``media.check_json_edit`` lets them through)."""
    images = body.get("images")
    found = [*(images if isinstance(images, list) else []), body.get("mask")]
    return [r for r in found if isinstance(r, dict) and len(r) == 1 and set(r) <= set(IMAGE_REFERENCE)]


FORM_REFERENCE = tuple(f"[{name}]" for name in IMAGE_REFERENCE)  # how a form field names one: mask[file_id]


def form_references(fields: Mapping[str, str | list[str]]) -> int:
    """How many images a form edit names in its text fields, the JSON edit's shape written as a form
    (``images[][image_url]``, ``mask[file_id]``, a list's field once a value): relayed beside its file
    parts, so the provider may read each as an image."""
    named = (value for name, value in fields.items() if name.endswith(FORM_REFERENCE))
    return sum(1 if isinstance(value, str) else len(value) for value in named)


def images_api_tokens(body: dict, model: str, floor: int) -> int:
    """Output tokens one image of an Images API request (generations, edits) may cost:
    :func:`images_api_image` and its partial images (a stream's previews, 100 tokens each)."""
    return images_api_image(body, model, floor) + PARTIAL_IMAGE_TOKENS * partial_images(body)


def images_api_image(body: dict, model: str, floor: int) -> int:
    """Output tokens one image of an Images API request is held at, its partial images aside: as
    one of the tool's (:func:`drawn_tokens`: the request's ``quality`` and ``size``) for a model with
    a table of its own; for any other token-priced image model (one an operator prices)
    gpt-image-1's largest or ``floor`` (the default output cap), whichever is more."""
    if own_table(model) is None:
        return max(floor, largest_image(model))
    return drawn_tokens({"model": model, "quality": body.get("quality"), "size": body.get("size")})


def largest_image(model: Any) -> int:
    """The output tokens of the image model's largest image (any quality, any size it lists)."""
    return max(tokens for sizes in output_tokens(model).values() for tokens in sizes.values())


def tool_model(body: dict) -> str:
    """The image model of the request's first ``image_generation`` tool (its default if unnamed)."""
    model = (image_tool(body) or {}).get("model")
    return model if isinstance(model, str) and model else IMAGE_TOOL_MODEL


def held_tokens(body: Any) -> int:
    """Image output tokens a budget holds for the tool's images: :func:`tool_calls` images, each
    at :func:`image_tokens`; 0 for a request that does not offer the tool or forbids tools."""
    tool = image_tool(body)
    return 0 if tool is None else tool_calls(body) * image_tokens(tool)


def tool_calls(body: dict) -> int:
    """Images a response may make with the tool: 0 when ``tool_choice`` forbids it (``none``, or
    ``allowed_tools`` without it), else ``max_tool_calls`` (a bound on all its hosted tools' calls),
    else :data:`IMAGE_CALLS_UNCAPPED`."""
    choice = body.get("tool_choice")
    if choice == "none":
        return 0
    allowed = allowed_entries(choice)
    if allowed is not None and not any(isinstance(t, dict) and t.get("type") == "image_generation" for t in allowed):
        return 0
    most = body.get("max_tool_calls")
    return most if type(most) is int and most > 0 else IMAGE_CALLS_UNCAPPED


def uncapped(body: Any) -> bool:
    """The request offers the image tool and sets no ``max_tool_calls``: held at
    :data:`IMAGE_CALLS_UNCAPPED` images, which a refusal says how to lower."""
    return isinstance(body, dict) and image_tool(body) is not None and body.get("max_tool_calls") is None


def image_tokens(tool: dict) -> int:
    """Output tokens one of the tool's images may cost: :func:`drawn_tokens` and its partial images."""
    return drawn_tokens(tool) + PARTIAL_IMAGE_TOKENS * partial_images(tool)


def drawn_tokens(tool: dict) -> int:
    """Output tokens of one image the tool (or an Images API request) asks for: its ``quality`` and
    ``size`` as its ``model``'s table counts them (:func:`output_tokens`; ``auto``, unset or unknown:
    the dearest; a size the table lacks: by its area, never below the quality's largest)."""
    table = output_tokens(tool.get("model") or IMAGE_TOOL_MODEL)
    quality = tool.get("quality")
    sizes = table.get(quality) if isinstance(quality, str) else None
    sizes = sizes or table["high"]
    size = tool.get("size")
    tokens = sizes.get(size) if isinstance(size, str) else None
    if tokens is None:
        largest = max(sizes.values())
        found = _SIZE.fullmatch(size) if isinstance(size, str) else None
        by_area = -(-int(found[1]) * int(found[2]) * largest // (1024 * 1536)) if found else 0
        tokens = max(largest, by_area)
    return tokens


def partial_images(tool: dict) -> int:
    """The tool's ``partial_images``: 0 when unset or null (OpenAI's default: none are made), the
    most (:data:`MAX_PARTIAL_IMAGES`) for a value OpenAI does not take."""
    value = tool.get("partial_images")
    if value is None:
        return 0
    return value if type(value) is int and 0 <= value <= MAX_PARTIAL_IMAGES else MAX_PARTIAL_IMAGES


def reported(response: Any) -> Usage | None:
    """``tool_usage.image_gen`` of a response object, when it counts anything."""
    tools = response.get("tool_usage") if isinstance(response, dict) else None
    image_gen = tools.get("image_gen") if isinstance(tools, dict) else None
    if not isinstance(image_gen, dict):
        return None
    usage = image_usage(image_gen)
    return usage if usage.prompt_tokens or usage.completion_tokens else None


def image_usage(usage: Any) -> Usage:
    """An image model's usage (an Images API answer's, the image tool's ``tool_usage.image_gen``):
    its output tokens are its images' (``media_output_tokens``, billed at the image output rate)
    unless ``output_tokens_details`` splits them (gpt-image-1.5 writes text too, billed at its
    text output rate). A model without an image output rate of its own bills both at ``output``:
    gpt-image-1's answers cost what they did."""
    counted = Usage.from_openai(usage)
    details = usage.get("output_tokens_details") if isinstance(usage, Mapping) else None
    if isinstance(details, Mapping) and "image_tokens" in details:
        return counted
    return replace(counted, media_output_tokens=counted.completion_tokens - counted.reasoning_tokens)


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

    __slots__ = ("body", "images", "partials")

    def __init__(self, body: Any) -> None:
        self.body = body  # the request: its tool's image model prices the estimate (read only if an image went out)
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
        return drawn_usage(drawn_tokens(image_tool(self.body) or {}), len(self.images), self.partials)


def drawn_usage(each: int, images: int, partials: int) -> Usage:
    """What ``images`` images of ``each`` output tokens (the image tool's: :func:`drawn_tokens`; an
    Images API request's: ``media.ImageStream``) and ``partials`` partial images relayed are billed
    when no usage counts them (a cut stream): image output tokens, at the image output rate."""
    drawn = each * images + PARTIAL_IMAGE_TOKENS * partials
    return Usage(completion_tokens=drawn, media_output_tokens=drawn)

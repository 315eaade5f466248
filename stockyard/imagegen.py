"""The Responses API's hosted ``image_generation`` tool: what its images cost.

OpenAI bills the tool's images apart from the mainline model's ``usage``: the response's
``tool_usage.image_gen`` counts them in the image model's tokens (gpt-image-1 unless the tool
names another), billed at that model's rates. A stream cut before ``response.completed`` never
brings that count, so the images it relayed are counted as they pass (:class:`ImageTally`: a
trace keeps only the first 256 KB of an answer, and one image is ~2 MB of base64) and estimated:
each image as the largest one (``estimate.IMAGE_OUTPUT_TOKENS``, what a budget holds for an image),
each partial image its 100 tokens (OpenAI: "each partial image will incur an additional 100 image
output tokens"). An image of which only partials went out is billed as made: it was being drawn,
and the last partial can be close to it.
"""

from __future__ import annotations

from typing import Any

from .estimate import IMAGE_OUTPUT_TOKENS
from .pricing import Usage

IMAGE_TOOL_MODEL = "gpt-image-1"  # the tool's image model when it names none
PARTIAL_IMAGE_TOKENS = 100
CALL = "image_generation_call"
PARTIAL = "response.image_generation_call.partial_image"


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


class ImageTally:
    """The images a Responses stream relayed: each ``image_generation_call`` of which a partial or
    the final image went out, the partial images, and the bytes all of it took (which are not text)."""

    __slots__ = ("images", "partials", "bytes")

    def __init__(self) -> None:
        self.images: set[str] = set()
        self.partials = 0
        self.bytes = 0

    def see(self, event: bytes, obj: dict) -> None:
        """Count one relayed event (``obj``, its parsed data) if it is the tool's."""
        kind = obj.get("type")
        item = obj.get("item")
        if kind == PARTIAL:
            self.partials += 1
            self.images.add(str(obj.get("item_id") or obj.get("output_index")))
        elif isinstance(item, dict) and item.get("type") == CALL:
            if item.get("result"):
                self.images.add(str(item.get("id") or obj.get("output_index")))
        elif not (isinstance(kind, str) and kind.startswith("response.image_generation_call.")):
            return
        self.bytes += len(event)

    def see_output(self, output: Any) -> None:
        """Count the images of a whole response's ``output`` items."""
        for item in output if isinstance(output, list) else ():
            self.see(b"", {"item": item})

    def estimate(self) -> Usage | None:
        """The tool's usage for what went out, when any image did (see the module's docstring)."""
        if not self.images:
            return None
        return Usage(completion_tokens=IMAGE_OUTPUT_TOKENS * len(self.images) + PARTIAL_IMAGE_TOKENS * self.partials)

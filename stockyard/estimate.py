"""The worst case of a request before it goes upstream: tokens and cost.

Budgets reserve this cost and rate limits count these tokens at admission; both are
corrected to the real usage when the request ends. This is the one place that works out
the worst case, so the two can never disagree.

Input is estimated from the body length (4 bytes a token, rounded up: a deliberate over-estimate for
English text, and JSON punctuation counts too); the prompt is billed once, however many choices come
back. For a budget, an image or file the body names by URL or file id (its bytes are not in the
body) adds the model's largest image; an image sent inline is held as one such image instead of its
base64, where the model's rule caps an image (:func:`inline_each`; budgets and tpm alike), and a
web search tool its ``max_uses`` searches at Anthropic's
fee per search (passed through to OpenAI, its search tools' calls at OpenAI's per-call prices:
``toolfees.held_fees``); the Responses ``image_generation`` tool the images a response may make with it, each
at the most the tool's quality and size may cost (``imagegen.held_tokens``). Output is the request's
own cap on output tokens (the largest one it sets; when it sets none, ``default_max_tokens`` for
rate limits and, for a budget's hold, the model's own ceiling where the price table knows it) times
the number of outputs the provider generates and bills: ``n`` choices, ``best_of`` completions
generated upstream, Gemini's ``candidateCount``; a Chat Completions ``prediction`` adds its own
tokens to each output (what the model does not use of it is billed as output). The proxy checked
these fields at the edge (``limits.check_request_numbers``): they are whole numbers in range, or
absent. A transcription's or translation's audio is held at the most its upload's bytes can carry
(:func:`audio_cost`). A key's or end user's tpm counts that audio and the image tool's images too
(:func:`limited_tokens`), and is corrected to what the answer reports (:func:`used_tokens`).
"""

from __future__ import annotations

import binascii
import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .context import Attempt, RequestContext
from .errors import RESPONSES
from .httpio import json_bytes
from .imagegen import edit_references, form_references, held_tokens, images_api_tokens, tool_calls, without_images
from .limits import request_numbers
from .objectrefs import hides_names
from .pricing import PER, WEB_SEARCH_UC, Price, long_cache_write_rate, rates_for, unit_cost

NO_OUTPUT = ("embeddings", "count_tokens", "input_tokens", "moderations")
IMAGES = ("image_generations", "image_edits", "image_variations")
# An image named by URL or file id, where the price table gives the model no count of its own:
# Claude's largest (~1,600 at 1.15 megapixels), above GPT-4o's 1,445 (8 tiles at high detail),
# GPT-5's and o-series'. gpt-4o-mini (48,169) and the GPT-4.1 minis have entries of their own.
IMAGE_INPUT_TOKENS = 1600
# Searches held for a web search tool without ``max_uses`` (Anthropic sets no limit of its own;
# the real count settles the hold): a guess, not a bound. Claude Code sets max_uses itself.
WEB_SEARCHES_UNCAPPED = 10
# Chat ``web_search_options.search_context_size`` → the ``max_uses`` of Anthropic's web search tool
# (``anthropic.web_search_tool``): OpenAI's size says how much the model may look up; Claude counts
# searches, each billed (``pricing.WEB_SEARCH_UC``), so the size caps them and budgets hold that many.
WEB_SEARCH_USES = {"low": 3, "medium": 5, "high": 10}
ANTHROPIC_SEARCH = re.compile(r"web_search_\d{8}")  # Anthropic's dated tool types (OpenAI's: web_search_2025_08_26)
MAX_FETCHES, MAX_FETCH_TOKENS = 10**6, 10**7  # bounds on a web fetch tool's numbers (a sane cost)


def runs_after_answer(ctx: RequestContext) -> bool:
    """A background Responses request: the provider works after its answer, which carries no
    usage yet: its real cost comes back only when it is seen ended (``stockyard.background`` bills
    it then; an end user's budget and a streamed one refuse it, tpm keeps its worst case)."""
    return ctx.dialect == RESPONSES and bool(ctx.body.get("background"))


# The response formats whose answer reports what an audio request is billed for, by endpoint:
# a transcript in json (the default), verbose_json or diarized_json carries ``usage`` (seconds of
# audio for whisper-1, tokens for the gpt-4o transcribe models); a translation only its verbose_json
# ``duration`` (its json is ``{"text"}`` alone). A text, srt or vtt answer is the text and nothing else.
PRICED_AUDIO_FORMATS = {
    "transcriptions": ("json", "verbose_json", "diarized_json"),
    "translations": ("verbose_json",),
}


def unpriced_audio_format(ctx: RequestContext) -> str | None:
    """The ``response_format`` of a transcription or translation whose answer will not say what it
    cost (so its cost is never known here: budgets refuse it), else None."""
    priced = PRICED_AUDIO_FORMATS.get(ctx.endpoint)
    if priced is None:
        return None
    form = ctx.body.get("response_format") or "json"
    return None if form in priced else str(form)


def text_tokens(data: bytes) -> int:
    """Tokens in ``data`` at four bytes a token, rounded up (the over-estimate used everywhere here)."""
    return size_tokens(len(data))


def size_tokens(size: int) -> int:
    """:func:`text_tokens` of ``size`` bytes known without the bytes (stored items' kept sizes)."""
    return -(-size // 4)


# A text value a model wrote, in every dialect's answer and stream events: chat's content,
# reasoning_content, refusal, tool arguments and an audio answer's transcript; Messages' text,
# thinking and partial_json; Responses' delta; Gemini's text. Read from the bytes, not parsed: a
# stream's pricing runs on its request's thread, and parsing each event costs ~6 us (~116 us for
# 20 events; this, ~23).
_GENERATED = re.compile(
    rb'"(?:content|text|delta|arguments|partial_json|thinking|reasoning_content|refusal|transcript)"\s*:\s*"((?:[^"\\]|\\.)*)"'
)
# Responses events that repeat the text their deltas carried (a part's, an item's, the whole response's).
_REPEATS = (b'.done"', b'"response.completed"', b'"response.incomplete"', b'"response.failed"')
# The events that frame a stream and hold nothing the model made (a response.created echoes the
# client's own instructions): a stream cut after these alone wrote nothing. Told by an event's first
# "type", which is its own in every dialect's events.
_TYPE = re.compile(rb'"type"\s*:\s*"([^"\\]*)"')
_FRAMES = {
    b"response.created",
    b"response.in_progress",
    b"response.queued",
    b"response.failed",
    b"response.incomplete",
    b"message_start",
    b"ping",
    b"error",
}


def relayed_tokens(captured: bytes | bytearray, total: int) -> int:
    """Output tokens of an answer relayed without its count (a stream cut, or one without its usage
    chunk): the text it carried at about four bytes a token (escapes counted once), scaled up to the
    bytes past the capture (``total`` is every byte relayed but the images'). Not the bytes
    themselves: JSON and SSE framing are most of a stream (a chat chunk is ~150 bytes for a word).
    Bytes / 4 when none of it reads as an answer (no text value: not JSON, or a stream cut inside
    its first event); in a stream of whole events that carried no text yet, the events that only
    frame it (``response.created``, ``message_start``, then the break) wrote nothing, the others
    (a final item's) their bytes / 4. The events that carry images are left out: their images are
    billed as images (``imagegen``)."""
    data = without_images(bytes(captured))
    if _repeats(data):  # a Responses stream: its deltas only
        texts = [t for event in data.split(b"\n\n") if not _repeats(event) for t in _GENERATED.findall(event)]
    else:
        texts = _GENERATED.findall(data)
    if not texts:
        return (total - _framing(data)) // 4 if _whole_events(data) else total // 4
    chars = sum(len(text) - text.count(b"\\") for text in texts)
    scale = total / len(data) if len(data) < total else 1.0
    return -(-int(chars * scale) // 4)


_ERROR_EVENT = re.compile(rb'data: ?\{"error"\s*:')


def _whole_events(data: bytes) -> bool:
    """``data`` starts with a whole SSE event whose data is a JSON object: a stream, read."""
    event, ended, _ = data.partition(b"\n\n")
    lines = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
    if not ended or not lines:
        return False
    try:
        return isinstance(json.loads(b"\n".join(lines)), dict)
    except ValueError:
        return False


def _framing(data: bytes) -> int:
    """The bytes of ``data``'s events that only frame its stream (:data:`_FRAMES`, and the error event
    that ends a broken one in the OpenAI and Gemini shape, ``{"error": …}``: Stockyard's, not the model's)."""
    framing = 0
    for event in data.split(b"\n\n"):
        found = _TYPE.search(event)
        if (found is not None and found.group(1) in _FRAMES) or _ERROR_EVENT.match(event):
            framing += len(event) + 2
    return min(framing, len(data))


def _repeats(event: bytes) -> bool:
    return any(repeat in event for repeat in _REPEATS)


def input_tokens(ctx: RequestContext) -> int:
    """The client's body, and the stored items Stockyard sends with it (``history_tokens``: the
    conversation a Responses ``previous_response_id`` continues, a ``conversation``'s items, the
    items ``item_reference``s name), or that the provider keeps and bills as input with it (the
    message thread an Anthropic ``thread`` continue names: ``thread_tokens``)."""
    history = ctx.conversation.history_tokens if ctx.conversation is not None else 0
    return text_tokens(ctx.raw) + history + ctx.thread_tokens


def held_input_tokens(ctx: RequestContext, each: int | None) -> int:
    """:func:`input_tokens`, with each image the client sent inline held at ``each`` tokens
    instead of its base64 at four bytes a token (:func:`inline_held`); ``each`` None: as text."""
    as_text, held = inline_held(ctx, each)
    return input_tokens(ctx) - as_text + held


def _largest(body: dict) -> tuple[int | None, int | None]:
    """The largest output cap and the largest choice count the body sets (None: none set)."""
    cap = count = None
    for f in request_numbers(body):
        value = f.value
        if type(value) is int and value > 0:
            if f.tokens:
                cap = value if cap is None else max(cap, value)
            else:
                count = value if count is None else max(count, value)
    return cap, count


def output_cap(body: dict, default_max_tokens: int) -> int:
    """Output tokens one choice may produce: the largest cap the body sets, else the default."""
    cap = _largest(body)[0]
    return default_max_tokens if cap is None else cap


def choices(body: dict) -> int:
    """How many outputs the provider generates and bills for this body (at least 1)."""
    return _largest(body)[1] or 1


def predicted_tokens(body: dict) -> int:
    """A Chat Completions ``prediction`` (predicted outputs): the tokens of it the model does not
    use are billed as output, beyond ``max_tokens``, so the worst case counts all of them."""
    prediction = body.get("prediction")
    if not isinstance(prediction, dict) or prediction.get("content") is None:
        return 0
    return text_tokens(json.dumps(prediction["content"], ensure_ascii=False).encode())


def output_tokens(ctx: RequestContext, default_max_tokens: int) -> int:
    """Every output token the request may be billed for: (cap + prediction) per choice × choices."""
    if ctx.endpoint in NO_OUTPUT:
        return 0
    cap, count = _largest(ctx.body)  # one pass over the body's numbers
    per_choice = default_max_tokens if cap is None else cap
    if "prediction" in ctx.body:
        per_choice += predicted_tokens(ctx.body)
    return per_choice * (count or 1)


def relayed_at_most(ctx: RequestContext) -> int | None:
    """The most output tokens an answer relayed without its count can be billed: what the body's cap
    allows (× choices, a prediction too), None when it sets none (the model's own ceiling bounds it).
    Text at four bytes a token is a guess: long tokens (indentation, long words) make it many times
    the tokens the cap let the provider write, past the hold a budget made for them."""
    if ctx.endpoint in NO_OUTPUT or _largest(ctx.body)[0] is None:
        return None
    return output_tokens(ctx, 0)


def used_tokens(ctx: RequestContext) -> int | None:
    """Tokens every attempt reported (a failed one the provider billed used tokens too): what a
    tpm window is corrected to once the request ends. The image tool's images count as their own
    usage (``tool_usage.image_gen``, else the estimate of those relayed); audio billed by duration
    (whisper-1) as ``AUDIO_TOKENS_PER_S`` a second. None when an audio answer reported neither
    usage nor duration (a text, srt or vtt one, or a stream cut before its usage): the window keeps
    the estimate, or such answers would make any audio free of tpm."""
    total = 0
    for a in (*ctx.attempts, ctx.attempt):
        if a.usage is not None:
            total += a.usage.prompt_tokens + a.usage.completion_tokens
        elif a.media_seconds is not None:
            total += math.ceil(a.media_seconds) * AUDIO_TOKENS_PER_S
        elif ctx.endpoint in PRICED_AUDIO_FORMATS and 200 <= a.status < 300:
            return None
        images = a.image_usage or a.image_estimate
        if images is not None:
            total += images.prompt_tokens + images.completion_tokens
    return total


def billed_uc(ctx: RequestContext) -> int:
    """What every attempt cost (a failed one a provider billed too): what settles a budget's hold."""
    return sum(a.cost_uc or 0 for a in (*ctx.attempts, ctx.attempt))


def unpriced_attempt(ctx: RequestContext) -> Attempt | None:
    """The first attempt a provider billed whose cost is unknown (no price for the mode that
    served it, say), or None."""
    return next((a for a in (*ctx.attempts, ctx.attempt) if a.cost_status == "unknown"), None)


def settled_uc(ctx: RequestContext, held: int) -> int:
    """What a budget's hold of ``held`` µ¢ settles to: what the attempts cost, and never less than
    the hold when one of them cannot be priced (its tokens are not free: the hold is the most it
    was allowed to cost)."""
    billed = billed_uc(ctx)
    return max(billed, held) if unpriced_attempt(ctx) is not None else billed


def request_tokens(ctx: RequestContext, default_max_tokens: int, each: int | None = None) -> int:
    """Input estimate + every billable output token of the model asked (a deployment's tpm);
    ``each``: what an inline image is held at (:func:`inline_each`; None: its base64 as text)."""
    return held_input_tokens(ctx, each) + output_tokens(ctx, default_max_tokens)


def limited_tokens(ctx: RequestContext, default_max_tokens: int, each: int | None = None) -> tuple[int, int]:
    """What a key's or an end user's tpm counts at admission: (:func:`request_tokens` + the media,
    the media): a transcription's audio at ``AUDIO_TOKENS_PER_S`` a second for any audio model
    (:func:`held_audio_seconds`; whisper-1's too, priced per second), the image tool's images at
    their held tokens (``imagegen.held_tokens``), as a budget holds them, and the tokens of the Gemini
    context caches it names (:func:`cached_content_tokens`: the provider counts them with the call).
    No further pass for a request with neither (no upload, no ``tools``). ``each``: an inline
    image's tokens, as :func:`request_tokens`."""
    media = 0
    if ctx.upload is not None and ctx.endpoint in PRICED_AUDIO_FORMATS:
        media = held_audio_seconds(ctx, ctx.routed_model or ctx.model or "") * AUDIO_TOKENS_PER_S
    elif "tools" in ctx.body:
        media = held_tokens(ctx.body)
    return request_tokens(ctx, default_max_tokens, each) + media + cached_content_tokens(ctx), media


def worst_case_cost(
    price: Price, inputs: int, outputs: int, long_writes: bool = False, cached: int = 0, most: int | None = None
) -> int:
    """µ¢, rounded up: every input token at the dearest input rate (a cache write can cost
    more than plain input; with ``long_writes``, a long-lived one: Claude's 1-hour, OpenAI's
    12-hour), every output token at the dearest output rate (reasoning; an image model's image
    output, ``media_output``: its cap may be spent on images), and ``cached`` tokens of a Gemini
    context cache at the cached input rate (as they are billed: ``cachedContentTokenCount``). The
    rates are the tier of the whole prompt, the cache's tokens with it (Google counts them in
    ``promptTokenCount``, which picks the tier). ``most``: the most tokens the prompt may be counted
    as (:func:`most_tokens`; else ``inputs``), which picks the tier."""
    price = rates_for(price, (inputs if most is None else most) + cached)  # above a tier's threshold: its rates
    input_rate = max(price.input, price.cached_input, price.cache_write, price.media_input or 0)
    if long_writes:
        input_rate = max(input_rate, long_cache_write_rate(price))
    output_rate = max(price.output, price.reasoning or 0, price.media_output or 0)
    return -(-(inputs * input_rate + cached * price.cached_input + outputs * output_rate) // PER)


def most_tokens(inputs: int, text: int) -> int:
    """``inputs`` with their ``text`` part (counted at four bytes a token) at a token a byte: the most
    a tokenizer may count them (a token writes at least one byte; Claude's writes English at ~3.5),
    which picks a long-context tier's rates — at four bytes a prompt just below the threshold was
    held at the standard rates and billed every token at the tier's."""
    return inputs + 3 * text


def drawn_text_cost(price: Price, images: int, default_max_tokens: int) -> int:
    """µ¢, rounded up, of the text ``images`` images of an image model may come with: none unless
    the model bills text output apart from its images (a ``media_output`` rate: gpt-image-1.5
    writes text beside each image, and OpenAI states no bound on it), else the default output cap
    for each at the text output rate. The images themselves are held at ``media_output``."""
    if price.media_output is None or images <= 0:
        return 0
    return -(-images * output_ceiling(price, default_max_tokens) * price.output // PER)


def output_ceiling(price: Price, default_max_tokens: int) -> int:
    """Output tokens one choice may be billed for when the body sets no cap: the model's own
    ceiling where the price table knows it (OpenAI and Gemini write up to it: gpt-5 128k),
    else the default (which the Anthropic adapter also sends as the cap it requires)."""
    return price.max_output_tokens or default_max_tokens


def referenced_images(body: Any, raw: bytes, walk: bool = False, written: Written | None = None) -> int:
    """Images (and files) the body names by URL or file id rather than carrying them: their
    bytes are not in the body, so the byte count does not see them. Inline ones (a ``data:``
    URL, base64) are in the body's bytes already (an inline image is counted apart where its
    model bounds it: :func:`sent_inline`). Walked only when it may hold one (:func:`may_hold`;
    ``walk``: the body holds what ``raw`` does not, :func:`put_in`; ``written``: :func:`body_written`)."""
    if not may_hold(body, raw, _REFERENCE_MARKS, walk, written):
        return 0
    return sum(by_reference(v) for v in body_values(body) if isinstance(v, dict) and not _PART_KEYS.isdisjoint(v))


def quoted(*names: str) -> re.Pattern[bytes]:
    """One search for any of ``names`` as a JSON string (``"name"``): a single pass over a body,
    where a test per name read it once each (~5x the time on a 100 KB agent body)."""
    return re.compile(b'"(?:' + b"|".join(re.escape(name.encode()) for name in names) + b')"')


def may_hold(
    body: Any, raw: bytes, marks: re.Pattern[bytes], walk: bool = False, written: Written | None = None
) -> bool:
    """Whether a JSON body may hold one of ``marks`` (:func:`quoted` ASCII names or values): seen in
    its bytes, else, where they may spell one otherwise (``objectrefs.hides_names``: an escape,
    ``"\\u0031h"`` is ``"1h"``, or not UTF-8) or ``walk`` (the body holds what ``raw`` does not:
    :func:`put_in`), in the parsed body written out again (:func:`unescaped`). A test on the bytes
    alone let an escaped mark hold less; an escape alone once walked the whole body in Python (three
    walks, 6x the CPU of its parse, for a body refused by its budget). ``written``: that text, once
    an estimate (:func:`body_written`)."""
    if marks.search(raw) is not None:
        return True
    if not (walk or hides_names(raw)):
        return False
    return marks.search(written() if written is not None else unescaped(body)) is not None


def unescaped(body: Any) -> bytes:
    """``body`` as JSON text with no ASCII character escaped but quotes, backslashes and controls:
    what a search of its bytes for a name or value reads, written in C (a walk of the parsed body
    in Python costs several times its parse)."""
    return json_bytes(body, compact=True)


Written = Callable[[], bytes]  # the parsed body written out (:func:`unescaped`), when it is asked for


def body_written(body: Any) -> Written:
    """:func:`unescaped` of ``body``, written at the first call and kept for the next: one estimate
    searches it for three kinds of mark (images, PDFs, long cache writes), and each writing of a
    body of a million short strings costs about what parsing it did. Kept by the estimate, not the
    request: a copy of a large body is not held while the provider answers."""
    kept: list[bytes] = []

    def written() -> bytes:
        if not kept:
            kept.append(unescaped(body))
        return kept[0]

    return written


def body_values(body: Any) -> Iterator[Any]:
    """Every value in a parsed JSON body, objects and lists included (iteratively: any depth)."""
    todo = [body]
    while todo:
        value = todo.pop()
        yield value
        if isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)


_REFERENCE_MARKS = quoted(
    "image_url", "input_image", "input_file", "file", "image", "document", "fileData", "file_data"
)


# What a part :func:`by_reference` has one of: a body's other objects are passed over in one test
_PART_KEYS = frozenset(("type", "fileData", "file_data"))


def by_reference(part: dict) -> bool:
    """A content part that points at an image or file: OpenAI chat ``image_url`` / ``file``,
    Responses ``input_image`` / ``input_file``, Anthropic ``image`` / ``document`` with a url or file
    source, a Gemini ``fileData`` part."""
    kind = part.get("type")
    if kind in ("image_url", "input_image"):
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        return not (isinstance(url, str) and url.startswith("data:"))
    if kind == "input_file":
        return "file_data" not in part  # inline base64 is in the body
    if kind == "file":  # chat: {"file": {"file_id": …}}, or inline {"file": {"file_data": …}}
        file = part.get("file")
        return isinstance(file, dict) and "file_data" not in file
    if kind in ("image", "document"):
        source = part.get("source")
        return isinstance(source, dict) and source.get("type") in ("url", "file")
    return isinstance(part.get("fileData", part.get("file_data")), dict)  # a Gemini part (a URI)


def image_tokens(
    body: Any, raw: bytes, price: Price, walk: bool = False, history: int = 0, written: Written | None = None
) -> int:
    """Input tokens of the images a body names by reference, and the ``history`` it continues
    names (``Conversation.history_images``), each at the model's largest (the price table's
    ``image_input_tokens``, else :data:`IMAGE_INPUT_TOKENS`)."""
    return (referenced_images(body, raw, walk, written) + history) * (price.image_input_tokens or IMAGE_INPUT_TOKENS)


# -- images sent inline ---------------------------------------------------------------------------
# An image sent inline (a ``data:image/…;base64,`` URL, Anthropic's base64 source, Gemini's
# ``inlineData``) is billed as an image, not as its base64: a model that scales every image to fit
# its tiles or pixel budget bills one at most its largest image, however large the file
# (:func:`inline_each`). Not every model does: Gemini 2.x bills 258 tokens a 768-pixel tile and
# tiles a large image whole, Gemini 3 by a ``media_resolution`` a part may raise; the newer OpenAI
# models take ``"detail": "original"`` (up to 10,000 patches) and Claude's high-resolution tier
# (Opus 4.7 and later, Sonnet 5, Haiku 5.5) ~4,800 tokens an image: their images stay at their bytes.
# The image is counted only where a model reads it as an image — a part of a message's ``content``
# (a tool result's too), of a Responses item's ``content`` or a function output's ``output``, of a
# Gemini turn's ``parts`` — never where it is JSON the model reads as text (a tool call's input, a
# schema), and only when its header reads as a PNG, JPEG, GIF or WebP of some size.
INLINE_MARK = b"image/"  # in every inline image's media type; a body without it is not walked
# Provider kinds that serve the models below as themselves (an OpenAI-compatible server's model of
# the same name may bill an image any way it likes).
BOUNDED_KINDS = ("openai", "azure", "anthropic")
# Models whose documented image rule bills an image at most IMAGE_INPUT_TOKENS: Claude before its
# high-resolution tier (scaled to ~1,600 tokens), GPT-4o, GPT-4.1, o1, o3 (8 tiles at high detail:
# 1,445, 1,275), GPT-5 and 5.1 (1,190), dated snapshots too. The patch-billed minis have their own
# ``image_input_tokens`` in the price table (gpt-4o-mini, gpt-4.1-mini/nano, o4-mini) or are left out.
SCALED_IMAGES = re.compile(
    r"(?:claude-3[-.\w]*|claude-(?:opus|sonnet)-4(?:-[0156])?|claude-haiku-4-5"
    r"|gpt-4o|gpt-4\.1|o1|o3|gpt-5(?:\.1)?(?:-chat-latest|-codex|-pro)?)(?:-\d{4}-\d{2}-\d{2}|-\d{8}|-latest)?"
)
JPEG_SEGMENTS = 64  # segments looked through for a JPEG's frame header (EXIF, ICC, XMP come first)
JPEG_FRAMES = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


@dataclass(frozen=True)
class Inline:
    """The images a body sends inline whose header reads: how many, and their base64 characters
    (never more than their bytes in the body, escaped or not)."""

    images: int = 0
    chars: int = 0


def inline_each(price: Price | None, kind: str | None, model: str) -> int | None:
    """What one inline image of ``model`` served by a provider of ``kind`` (None: not routed yet)
    is held at, or None where no constant bounds it (its base64 stays text): the price table's
    ``image_input_tokens``, else :data:`IMAGE_INPUT_TOKENS` for a model of :data:`SCALED_IMAGES`
    at a provider of :data:`BOUNDED_KINDS`. Never on Gemini (tiles: see the section's comment)."""
    if kind == "gemini":
        return None
    if price is not None and price.image_input_tokens:
        return price.image_input_tokens
    if kind is not None and kind not in BOUNDED_KINDS:
        return None
    return IMAGE_INPUT_TOKENS if SCALED_IMAGES.fullmatch(model.lower()) else None


def inline_held(ctx: RequestContext, each: int | None) -> tuple[int, int]:
    """(the tokens the body's inline images count as text in :func:`input_tokens`, what they are
    held at: ``each`` an image); (0, 0) when ``each`` is None or none was found."""
    if each is None:
        return 0, 0
    found = inline_images(ctx)
    if not found.images:
        return 0, 0
    return text_tokens(ctx.raw) - size_tokens(len(ctx.raw) - found.chars), found.images * each


def inline_images(ctx: RequestContext) -> Inline:
    """:func:`sent_inline` of the request's body, read once a request (kept in ``ctx.state``: the
    key's tpm, the end user's and a budget's hold all ask). None when Stockyard put stored items in
    the body (:func:`put_in`): their bytes are counted apart (``history_tokens``), not in ``raw``."""
    if put_in(ctx):
        return Inline()
    kept = ctx.state.get(_INLINE)
    if kept is not None and kept[0] is ctx.raw:
        return kept[1]
    found = sent_inline(ctx.body, ctx.raw)
    ctx.state[_INLINE] = (ctx.raw, found)
    return found


_INLINE = "estimate.inline_images"


def sent_inline(body: Any, raw: bytes) -> Inline:
    """The images ``body`` (parsed from ``raw``) sends inline, in the places a model reads them as
    images, whose header reads (:func:`image_size`). Not walked without :data:`INLINE_MARK` in
    ``raw``: a mark hidden by an escape leaves its image as text, which holds more, never less."""
    if INLINE_MARK not in raw or not isinstance(body, dict):
        return Inline()
    images = chars = 0
    for part in content_parts(body):
        found = inline_image(part)
        if found is not None and image_size(found[1]) is not None:
            images, chars = images + 1, chars + len(found[0])
    return Inline(images, chars)


# The turns whose images a model reads (a Responses function output has no role): an image in an
# assistant's or a system turn may be refused, dropped or sent on as text by a translation.
_IMAGE_ROLES = frozenset((None, "user", "tool", "function"))


def content_parts(body: dict) -> Iterator[dict]:
    """The content parts of a request body's user and tool turns: chat's and Messages'
    ``messages[].content`` (a Claude tool result's ``content`` too), Responses' ``input[].content``
    and a function output's ``output``, Gemini's ``contents[].parts``. Nothing else: JSON a model
    reads as text (a tool call's input, a schema) may look like a part."""
    for turn in (*_items(body.get("messages")), *_items(body.get("input")), *_items(body.get("contents"))):
        if turn.get("role") not in _IMAGE_ROLES:
            continue
        output = turn.get("type") == "function_call_output"
        lists = (turn.get("output"),) if output else (turn.get("content"), turn.get("parts"))
        for part in (part for found in lists for part in _items(found)):
            yield part
            if part.get("type") == "tool_result":
                yield from _items(part.get("content"))


def _items(value: Any) -> Iterator[dict]:
    """The objects in ``value`` when it is a list (nothing otherwise)."""
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, dict))


def inline_image(part: dict) -> tuple[str, str] | None:
    """(the string the part carries its image in, the image's base64) of an image part sent
    inline: chat ``image_url`` and Responses ``input_image`` with a ``data:image/…;base64,`` URL,
    Anthropic ``image`` with a base64 source, Gemini ``inlineData`` of an ``image/`` type; else None."""
    kind = part.get("type")
    if kind in ("image_url", "input_image"):
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if isinstance(url, str) and url.startswith("data:image/"):
            head, comma, data = url.partition(",")
            return (url, data) if comma and head.endswith(";base64") else None
        return None
    if kind == "image":
        source = part.get("source")
        if isinstance(source, dict) and source.get("type") == "base64" and isinstance(source.get("data"), str):
            return source["data"], source["data"]
        return None
    blob = part.get("inlineData", part.get("inline_data"))
    if isinstance(blob, dict):
        mime, found = blob.get("mimeType", blob.get("mime_type")), blob.get("data")
        if isinstance(mime, str) and mime.startswith("image/") and isinstance(found, str):
            return found, found
    return None


def base64_bytes(data: str, start: int, size: int) -> bytes | None:
    """``size`` bytes at ``start`` of what ``data`` (standard base64) decodes to, decoding only the
    characters that carry them; None when they are not there or are not base64."""
    first, last = start // 3 * 4, -(-(start + size) // 3) * 4
    try:
        decoded = binascii.a2b_base64(data[first:last].encode("ascii"), strict_mode=True)
    except (ValueError, binascii.Error):
        return None
    found = decoded[start % 3 : start % 3 + size]
    return found if len(found) == size else None


def image_size(data: str) -> tuple[int, int] | None:
    """(width, height) an image's header states — PNG, JPEG, GIF or WebP, read from the few bytes
    of its base64 that carry them, never the whole image — or None (another format, a header that
    does not read, a size of 0)."""
    head = base64_bytes(data, 0, 30)
    if head is None:
        return None
    size: tuple[int, int] | None = None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        size = struct.unpack(">II", head[16:24])
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        size = struct.unpack("<HH", head[6:10])
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        size = _webp_size(head)
    elif head[:3] == b"\xff\xd8\xff":
        size = _jpeg_size(data)
    return size if size is not None and size[0] > 0 and size[1] > 0 else None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    """A WebP's canvas from its first chunk: lossy ``VP8 ``, lossless ``VP8L``, extended ``VP8X``."""
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _jpeg_size(data: str) -> tuple[int, int] | None:
    """A JPEG's size from its frame header (SOFn), found by stepping over the segments before it
    (at most :data:`JPEG_SEGMENTS`), each read by its 4-byte marker and length alone."""
    at = 2
    for _ in range(JPEG_SEGMENTS):
        mark = base64_bytes(data, at, 4)
        if mark is None or mark[0] != 0xFF:
            return None
        if mark[1] == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if mark[1] in JPEG_FRAMES:
            frame = base64_bytes(data, at + 5, 4)
            return None if frame is None else (frame[2] << 8 | frame[3], frame[0] << 8 | frame[1])
        if 0xD0 <= mark[1] <= 0xD9 or mark[1] == 0x01:  # markers without a length
            at += 2
            continue
        at += 2 + (mark[2] << 8 | mark[3])
    return None


def put_in(ctx: RequestContext) -> bool:
    """Stockyard put stored items in the body (a conversation's, those item references name): its
    marks are not all in the client's bytes, so the parsed body is read for them."""
    return ctx.conversation is not None and ctx.conversation.put_in


def unbounded_server_tools(body: Any) -> str | None:
    """Why a body's provider-run tools could cost what no worst case bounds, or None: Anthropic's
    MCP connector (``mcp_servers``: whatever the servers return is input), code execution (billed
    per container hour, which no usage reports), a web fetch tool without both ``max_uses`` and
    ``max_content_tokens`` (each fetched page is input), and server-side compaction (a step that
    reads the prompt again and writes a summary no ``max_tokens`` bounds, maybe more than once)."""
    if not isinstance(body, dict):
        return None
    if body.get("mcp_servers"):
        return "mcp_servers: what the MCP servers return is billed as input, and nothing bounds it"
    compaction = _compaction(body.get("context_management"))
    if compaction is not None:
        return (
            f"context_management: {compaction[:60]!r} reads the prompt again and writes a summary "
            "that no max_tokens bounds"
        )
    for kind, tool in _server_tools(body, ("code_execution", "web_fetch")):
        if kind.startswith("code_execution"):
            return f"tools: {kind[:60]!r} is billed per container hour, which no usage reports"
        if _fetch_bounds(tool) is None:
            return f"tools: {kind[:60]!r} without max_uses and max_content_tokens fetches pages of any size as input"
    return None


def _compaction(manage: Any) -> str | None:
    """The type of a ``context_management`` edit that compacts (``compact_…``), or None."""
    edits = manage.get("edits") if isinstance(manage, dict) else None
    for edit in edits if isinstance(edits, list) else ():
        kind = edit.get("type") if isinstance(edit, dict) else None
        if isinstance(kind, str) and kind.startswith("compact"):
            return kind
    return None


def _server_tools(body: dict, prefixes: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    """(type, tool) of each tool in the body whose ``type`` starts with one of ``prefixes``."""
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict):
            kind = str(tool.get("type", ""))
            if kind.startswith(prefixes):
                yield kind, tool


def _fetch_bounds(tool: dict) -> tuple[int, int] | None:
    """A web fetch tool's (``max_uses``, ``max_content_tokens``), each a positive whole number, or None."""
    uses, size = tool.get("max_uses"), tool.get("max_content_tokens")
    if type(uses) is int and type(size) is int and uses > 0 and size > 0:
        return uses, size
    return None


def fetched_tokens(body: dict) -> int:
    """Input tokens a request's web fetch tools may bring in: ``max_uses`` pages of at most
    ``max_content_tokens`` each (a tool without both is refused under a budget:
    :func:`unbounded_server_tools`)."""
    found = 0
    for _kind, tool in _server_tools(body, ("web_fetch",)):
        bounds = _fetch_bounds(tool)
        if bounds is not None:
            found += min(bounds[0], MAX_FETCHES) * min(bounds[1], MAX_FETCH_TOKENS)
    return found


def web_search_uses(size: Any) -> int:
    """Searches Claude may run for a ``search_context_size`` (OpenAI's default: medium); 0 for
    a size that is none of them."""
    if size is None:
        return WEB_SEARCH_USES["medium"]
    return WEB_SEARCH_USES.get(size, 0) if isinstance(size, str) else 0


def web_searches(body: dict) -> int:
    """Searches a request lets its model run: each web search tool's ``max_uses`` (Anthropic's
    ``web_search_YYYYMMDD``), else :data:`WEB_SEARCHES_UNCAPPED`; for OpenAI's shapes — a Responses
    ``web_search`` tool, chat ``web_search_options`` — the ``max_uses`` their ``search_context_size``
    gets on Claude (:func:`web_search_uses`; passed through to OpenAI, ``Pricer.held_call_fees``
    holds them at OpenAI's per-call prices instead, ``max_tool_calls`` of them when set)."""
    found = 0
    for kind, tool in _server_tools(body, ("web_search",)):
        uses = tool.get("max_uses")
        if type(uses) is int and uses > 0:
            found += uses
        elif ANTHROPIC_SEARCH.fullmatch(kind):
            found += WEB_SEARCHES_UNCAPPED
        else:
            found += web_search_uses(tool.get("search_context_size")) or WEB_SEARCHES_UNCAPPED
    options = body.get("web_search_options")
    if isinstance(options, dict):
        found += web_search_uses(options.get("search_context_size")) or WEB_SEARCHES_UNCAPPED
    return found


def request_cost(
    ctx: RequestContext,
    price: Price,
    default_max_tokens: int,
    sent_back: int = 0,
    call_fees: int | None = None,
    media: int = 0,
    written: Written | None = None,
    each: int | None = None,
) -> int:
    """The worst-case cost of the request on ``ctx`` at ``price``: what a budget reserves (the
    Gemini context caches it names, :func:`cached_content_tokens`, included), but for the image
    tool's images, which ``Pricer.token_cost`` adds at their own model's price
    (:func:`tool_images_cost`). A follow-up call continuing a paused turn sends ``sent_back`` more
    input tokens (the answer so far). ``call_fees``: what its hosted search tools' calls hold at
    their provider's per-call prices (``Pricer.held_call_fees``), else :func:`web_searches` at
    Anthropic's fee. ``media``: input tokens its media add beyond their bytes (a PDF's pages on
    Gemini: ``pdfpages.held_pdf_tokens``). ``written``: the body written out, if the caller's PDF
    count has it already (:func:`body_written`). ``each``: what an image sent inline is held at
    (:func:`inline_each`; None: its base64 as text)."""
    conv, walk = ctx.conversation, put_in(ctx)
    history = conv.history_images if conv is not None else 0
    written = written or body_written(ctx.body)
    as_text, inline = inline_held(ctx, each)
    images = image_tokens(ctx.body, ctx.raw, price, walk, history, written) + inline
    text = input_tokens(ctx) - as_text - ctx.thread_tokens + sent_back  # a thread's size is a count, not bytes
    inputs = text + ctx.thread_tokens + images + fetched_tokens(ctx.body) + media
    outputs = output_tokens(ctx, output_ceiling(price, default_max_tokens))
    long_writes = asks_long_cache(ctx.body, ctx.raw, walk, written)
    most = most_tokens(inputs, text)
    tokens = worst_case_cost(price, inputs, outputs, long_writes, cached=cached_content_tokens(ctx), most=most)
    return tokens + (web_searches(ctx.body) * WEB_SEARCH_UC if call_fees is None else call_fees)


def cached_content_tokens(ctx: RequestContext) -> int:
    """The tokens of the Gemini context caches the request names (``ctx.caches``; one whose count is
    not known counts 0 here: a budget refuses it, ``budgets.check_countable``)."""
    return sum(tokens or 0 for tokens in ctx.caches.values())


def tool_images_cost(body: dict, tool_price: Price, drawn: int, default_max_tokens: int) -> int:
    """What a budget holds for the Responses ``image_generation`` tool's images: their ``drawn``
    tokens (``imagegen.held_tokens``) at ``tool_price`` (``Pricer.tool_image_price``; its image
    output rate), and the text each image may come with (:func:`drawn_text_cost`)."""
    text = drawn_text_cost(tool_price, tool_calls(body), default_max_tokens)
    return worst_case_cost(tool_price, 0, drawn) + text


# A long-lived cache write is asked for by value: Anthropic's ``"ttl": "1h"`` on a cache mark,
# OpenAI's ``"prompt_cache_retention": "24h"`` (Stockyard turns it into 1-hour marks on Claude).
_LONG_CACHE_MARKS = quoted("1h", "24h")


def asks_long_cache(body: Any, raw: bytes, walk: bool = False, written: Written | None = None) -> bool:
    """Whether the body may ask for long-lived cache writes, which cost up to twice the input
    rate: any string "1h" or "24h", so a stray one elsewhere (a name too) only holds more, never
    less. Seen in the bytes, or in the parsed body's (:func:`may_hold`) when they hold an escape, or
    ``walk``: it holds what the bytes do not (:func:`put_in`)."""
    return may_hold(body, raw, _LONG_CACHE_MARKS, walk, written)


def images_asked(body: dict) -> int:
    """``n`` of an images request (JSON number or form text), at least 1."""
    n = body.get("n")
    if isinstance(n, str) and n.strip().isdigit():
        n = int(n)
    return n if type(n) is int and n > 0 else 1


def media_request_cost(
    ctx: RequestContext, price: Price | None, image_price: Price | None, default_max_tokens: int, model: str = ""
) -> int | None:
    """The worst case of an audio, images or moderations request; None when it cannot be priced.

    Images: ``n`` × the per-image price (DALL·E), or for token-priced models ``n`` images at the
    request's quality and size (``imagegen.images_api_tokens``, as the image tool's are held), at
    the dearest output rate (the image output rate), the images an edit sends
    (:func:`sent_image_tokens`) beside its text (:func:`images_text_tokens`), and for a model that
    bills its text output apart the text each image may come with (:func:`drawn_text_cost`).
    Speech: its characters (tts-1); a speech model priced per token cannot be counted (None).
    Transcriptions and translations: :func:`audio_cost`.
    """
    if ctx.endpoint == "moderations":
        return 0
    if ctx.endpoint in IMAGES:
        n = images_asked(ctx.body)
        if image_price is not None:
            return unit_cost(image_price, n)
        if price is not None and price.unit == "token":
            each = images_api_tokens(ctx.body, model, default_max_tokens)
            written = drawn_text_cost(price, n, default_max_tokens)  # gpt-image-1.5's text, beside its images
            return worst_case_cost(price, images_text_tokens(ctx) + sent_image_tokens(ctx, price), each * n) + written
        return None
    if price is None:
        return None
    if ctx.endpoint == "speech":
        text = ctx.body.get("input")
        chars = len(text) if isinstance(text, str) else 0
        # Only characters: a speech answer is the audio, with no usage to settle a token price by.
        return unit_cost(price, chars) if price.unit == "character" else None
    if ctx.endpoint in PRICED_AUDIO_FORMATS:
        return audio_cost(ctx, price, default_max_tokens, model)
    return worst_case_cost(price, input_tokens(ctx), default_max_tokens) if price.unit == "token" else None


def sent_image_tokens(ctx: RequestContext, price: Price) -> int:
    """Input tokens of the images an edit sends — its form's file parts and reference fields
    (``imagegen.form_references``), or a JSON edit's ``images``
    (``imagegen.edit_references``), a mask too: which ones a provider reads is its own business —
    each as an image named by reference is held (the price table's ``image_input_tokens``, else
    :data:`IMAGE_INPUT_TOKENS`), however it is sent: a form's bytes are not in ``ctx.raw`` (its
    metadata), and a JSON edit's are not counted as its text (:func:`images_text_tokens`)."""
    if ctx.upload is not None:  # its file parts, and the images its fields name as the JSON's do
        sent = len(ctx.upload.files) + form_references(ctx.upload.fields)
    else:
        sent = len(edit_references(ctx.body)) if ctx.endpoint == "image_edits" else 0
    return sent * (price.image_input_tokens or IMAGE_INPUT_TOKENS)


def images_text_tokens(ctx: RequestContext) -> int:
    """:func:`input_tokens` of an Images API request, but for a JSON edit's ``image_url`` values: a
    data URL is the image itself, held as one by :func:`sent_image_tokens` (as text, four bytes a
    token, a 1 MB image would hold 330,000 tokens). A value's characters are never more than its
    bytes in the body, escaped or not."""
    if ctx.upload is not None or ctx.endpoint != "image_edits":
        return input_tokens(ctx)
    urls = sum(len(r["image_url"]) for r in edit_references(ctx.body) if "image_url" in r)
    return size_tokens(len(ctx.raw) - urls)


# -- the most an uploaded audio can cost ------------------------------------------------------------
# A transcription or translation is billed for the audio's length, which only its answer states.
# Its hold is the most the upload's bytes can carry instead. A PCM WAV says its own rate (and a
# decoder plays it at that rate); any other upload is counted at AUDIO_MIN_BYTES_PER_S, below
# the lowest constant bitrate of the codecs OpenAI's accepted containers carry (mp3: MPEG-2.5
# layer III 8 kbps; ogg/webm: Opus 6 kbps, Speex 2.15 kbps; mp4/m4a: HE-AAC ~8 kbps, AMR-NB 4.75
# kbps). What it does not bound: silence coded in next to nothing (FLAC's constant subframes,
# Opus or Speex DTX), which a crafted file can spend its bytes on.
AUDIO_MIN_BYTES_PER_S = 250  # 2 kbps
# Audio input tokens a second (gpt-4o(-mini)-transcribe): OpenAI's own estimate of $0.006 a minute
# at $6 per 1M is ~17 a second, the Realtime API counts 10 (a token per 100 ms): 20 is above both.
AUDIO_TOKENS_PER_S = 20
# The longest audio a model takes (OpenAI refuses longer with a 400 and bills nothing), by the start
# of its name (dated snapshots too; the diarizing model first): its hold is never more.
AUDIO_MAX_SECONDS = (("gpt-4o-transcribe-diarize", 1400), ("gpt-4o-transcribe", 1500), ("gpt-4o-mini-transcribe", 1500))
# The fastest PCM a WAV header is believed to be (192 kHz stereo 32-bit: studio audio at its
# highest): a header claiming more lowers the hold no further.
PCM_MAX_BYTES_PER_S = 192_000 * 2 * 4
WAV_HEAD_BYTES = 64 * 1024  # the chunks before ``fmt `` (LIST, bext, JUNK) are looked through up to here
# ... and at most this many of them (a real file has a few; a crafted head of 8,000 empty chunks
# per file part cost seconds of CPU each time a budget priced it): past it, the lowest bitrate.
WAV_CHUNKS = 32
# Format tags a WAV's rate is exact for: integer PCM, IEEE float, A-law, µ-law (a fixed size a sample).
PCM_TAGS = (1, 3, 6, 7)
EXTENSIBLE, GUID_TAIL = 0xFFFE, bytes.fromhex("000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_*


def audio_cost(ctx: RequestContext, price: Price, default_max_tokens: int, model: str = "") -> int | None:
    """The most a transcription or translation can cost (µ¢): :func:`audio_seconds` of its upload
    (at most what ``model`` takes, ``AUDIO_MAX_SECONDS``) at a price per second, or at a token price
    as ``AUDIO_TOKENS_PER_S`` audio tokens a second on top of its text and output cap; None for
    another unit (its answer reports none)."""
    seconds = held_audio_seconds(ctx, model)
    if price.unit == "second":
        return unit_cost(price, seconds)
    if price.unit == "token":
        return worst_case_cost(price, input_tokens(ctx) + seconds * AUDIO_TOKENS_PER_S, default_max_tokens)
    return None


def held_audio_seconds(ctx: RequestContext, model: str) -> int:
    """:func:`audio_seconds` of the request's upload (0 without one), at most what ``model`` takes
    (``AUDIO_MAX_SECONDS``). Read once a request (kept in ``ctx.state``: the tpm estimate and a
    budget's hold both ask, and a WAV's header is read from the spool; kept with the upload it counts)."""
    if ctx.upload is None:
        return 0
    read = ctx.state.get(_AUDIO_SECONDS)
    if read is None or read[0] is not ctx.upload:
        read = ctx.state[_AUDIO_SECONDS] = (ctx.upload, audio_seconds(ctx.upload))
    seconds = read[1]
    longest = next((most for name, most in AUDIO_MAX_SECONDS if model.startswith(name)), None)
    return seconds if longest is None else min(seconds, longest)


_AUDIO_SECONDS = "estimate.audio_seconds"


def audio_seconds(upload: Any) -> int:
    """The most seconds of audio a ``multipart.Upload``'s files can hold, each rounded up (at
    least one: a provider bills any audio a second), summed over every file part (which one a
    provider reads is its own business). Sizes are the bytes received, never a declared length."""
    total = 0
    for part in upload.files:
        rate = AUDIO_MIN_BYTES_PER_S
        if part.filename.lower().endswith(".wav"):  # the name agrees, so no decoder reads it as another format
            found = wav_bytes_per_second(upload.open(part).read(WAV_HEAD_BYTES))
            rate = rate if found is None else found
        total += max(1, -(-part.size // rate))
    return total


def wav_bytes_per_second(head: bytes) -> int | None:
    """The bytes a second a WAV's header plays its samples at (RIFF/WAVE; its first ``fmt `` chunk,
    before ``data``, as decoders read it), or None: not such a WAV, a compressed format (whose
    rate is a hint), a format past ``WAV_CHUNKS`` chunks, or numbers that are not sane. The
    slowest rate its fields give (a lower rate is longer audio), never above ``PCM_MAX_BYTES_PER_S``."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    at = 12
    for _ in range(WAV_CHUNKS):
        if at + 8 > len(head):
            break
        chunk, size = head[at : at + 4], int.from_bytes(head[at + 4 : at + 8], "little")
        if chunk == b"data":
            return None  # no format before the samples: decoders refuse it
        if chunk == b"fmt ":
            return _pcm_rate(head[at + 8 : at + 8 + size]) if at + 8 + size <= len(head) else None
        at += 8 + size + (size & 1)
    return None


def _pcm_rate(fmt: bytes) -> int | None:
    """Bytes a second of a ``fmt `` chunk of fixed-size samples, else None."""
    if len(fmt) < 16:
        return None
    tag, channels, rate, average, align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == EXTENSIBLE:
        tag = int.from_bytes(fmt[24:26], "little") if len(fmt) >= 40 and fmt[26:40] == GUID_TAIL else 0
    if tag not in PCM_TAGS or 0 in (channels, rate, align, bits):
        return None
    rates = [r for r in (average, rate * align, rate * channels * -(-bits // 8)) if r > 0]
    return min(*rates, PCM_MAX_BYTES_PER_S)

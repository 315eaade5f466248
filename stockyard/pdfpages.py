"""The PDFs a request sends Gemini, held at what Google bills for them: each page as an image.

Gemini reads a PDF page as an image (258 tokens a page on Gemini 2.5 and older; on Gemini 3 by its
media resolution: 560 at the PDF default, medium, up to 2,240 at ``ULTRA_HIGH``), so a PDF of many
pages costs many images' tokens, far more than its bytes at four a token when its pages are small.
An inline PDF (Gemini's ``inlineData``, a ``data:application/pdf`` URL, a Claude ``document``'s base64
source: every dialect Stockyard translates for Gemini) is held at its pages (:func:`pdf_pages`, read
from the PDF), less the bytes the body estimate counted for it already; a PDF Gemini reads by
reference (``fileData``), whose pages Stockyard never sees, at Gemini's limit of
:data:`MAX_PDF_PAGES` pages, less the image the reference is held as already
(``estimate.image_tokens``).
"""

from __future__ import annotations

import binascii
import re
import zlib
from typing import Any

from .estimate import body_values

MAX_PDF_PAGES = 1000  # Gemini reads PDFs of up to 1,000 pages (its document-processing page)
PAGE_TOKENS_25 = 258  # a page on Gemini 2.5 and older
# Gemini 3's media resolutions (per part, or the request's generationConfig.mediaResolution), tokens a
# page; a PDF without one is read at medium.
RESOLUTION_TOKENS = {"LOW": 280, "MEDIUM": 560, "HIGH": 1120, "ULTRA_HIGH": 2240}
PDF_DEFAULT_RESOLUTION = "MEDIUM"
GENERATION = re.compile(r"gemini-(\d+)")
# PDF whitespace (NUL and form feed too) and comments, which stand where whitespace may.
_WS = rb"(?:[\s\x00]|%[^\r\n]*[\r\n])*"
# A page object (``/Type /Page``, not ``/Pages``), and a page tree's count of the pages under it
# (direct; one by reference, ``/Count 5 0 R``, says nothing here: the PDF is then unreadable).
_PAGE = re.compile(rb"/Type" + _WS + rb"/Page(?![A-Za-z])")
_COUNT = re.compile(rb"/Count" + _WS + rb"(\d{1,7})(?![\d.])(?!" + _WS + rb"\d+" + _WS + rb"R)")
_INDIRECT_COUNT = re.compile(rb"/Count" + _WS + rb"\d+" + _WS + rb"\d+" + _WS + rb"R")
_STREAM = re.compile(rb"stream\r?\n")
_NAME_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")  # a name's character by its hex code: /P#61ge is /Page
INFLATE_MAX = 32 << 20  # bytes of compressed object streams inflated for one request's PDFs, at most
_MARK = re.compile(rb"application(?:/|\\/)pdf|\\u00[0-7][0-9A-Fa-f]")  # a PDF's type, or an escape that may spell it


class Inflation:
    """What is left of the bytes one request's PDFs may inflate (:data:`INFLATE_MAX`): many small
    PDFs must not each take all of it."""

    def __init__(self, left: int = INFLATE_MAX) -> None:
        self.left = left


def pdf_pages(data: bytes, inflation: Inflation | None = None) -> int:
    """The pages of a PDF: its page objects, or its page trees' largest count, the larger, in the file's
    bytes and in its object streams (PDF 1.5 keeps objects there, compressed); :data:`MAX_PDF_PAGES`
    when none shows a page or it cannot all be read (an object stream not inflated, a count by
    reference: an encrypted or crafted PDF, which Gemini may still read whole)."""
    streams = _object_streams(data, inflation or Inflation())
    data = _unescaped(data)  # after the streams are cut out: their compressed bytes may hold a '#'
    if streams is None or _INDIRECT_COUNT.search(data) is not None:
        return MAX_PDF_PAGES
    parts = (data, *streams)
    pages = sum(len(_PAGE.findall(part)) for part in parts)  # a writer packs ~100 objects a stream
    found = max([pages, *(int(count) for part in parts for count in _COUNT.findall(part))])
    return min(found, MAX_PDF_PAGES) if found else MAX_PDF_PAGES


def _unescaped(data: bytes) -> bytes:
    """``data`` with PDF names' ``#xx`` escapes read (a string's ``#`` too: a count can only grow)."""
    return _NAME_ESCAPE.sub(lambda m: bytes.fromhex(m[1].decode()), data) if b"#" in data else data


def _object_streams(data: bytes, inflation: Inflation) -> list[bytes] | None:
    """Each compressed object stream of a PDF (``/ObjStm`` in what comes before its ``stream`` since
    the last stream's end) inflated, its names' escapes read; None when one is not Flate, or they inflate to
    more than ``inflation`` has left (a small stream may inflate to gigabytes). One pass through the
    file: each stream's end is looked for once, from its start."""
    out: list[bytes] = []
    pos = 0
    while (start := _STREAM.search(data, pos)) is not None:
        end = data.find(b"endstream", start.end())
        if end < 0:
            end = len(data)
        window = _unescaped(data[pos : start.start()])
        if b"/ObjStm" in window:
            try:
                inflater = zlib.decompressobj()
                inflated = inflater.decompress(data[start.end() : end], max(inflation.left, 1))
            except zlib.error:
                if b"/Filter" not in window:  # a plain one: read with the file's bytes
                    pos = end + len(b"endstream")
                    continue
                return None
            inflation.left -= len(inflated)
            if inflater.unconsumed_tail or inflation.left <= 0:
                return None
            out.append(_unescaped(inflated))
        pos = end + len(b"endstream")
    return out


def page_tokens(model: str, body: Any, part: dict) -> int:
    """Tokens Gemini bills a page of a PDF in ``part`` of a request to ``model``: 258 before Gemini 3;
    on Gemini 3 and later (and a model whose generation the name does not say), its media resolution's
    (the part's or the request's, the larger), else the PDF default's."""
    found = GENERATION.search(model.rsplit("/", 1)[-1].lower())
    if found is not None and int(found[1]) < 3:
        return PAGE_TOKENS_25
    config = body.get("generationConfig") or body.get("generation_config") if isinstance(body, dict) else None
    levels = [_level(part.get("mediaResolution", part.get("media_resolution")))]
    if isinstance(config, dict):
        levels.append(_level(config.get("mediaResolution", config.get("media_resolution"))))
    tokens = [RESOLUTION_TOKENS[level] for level in levels if level is not None]
    return max(tokens, default=RESOLUTION_TOKENS[PDF_DEFAULT_RESOLUTION])


def _level(value: Any) -> str | None:
    """A media resolution (``MEDIA_RESOLUTION_HIGH``, or ``{"level": …}`` per part) as a key of
    :data:`RESOLUTION_TOKENS`; None: unset or unspecified."""
    if isinstance(value, dict):
        value = value.get("level")
    name = value.upper().removeprefix("MEDIA_RESOLUTION_") if isinstance(value, str) else ""
    return name if name in RESOLUTION_TOKENS else None


def held_pdf_tokens(body: Any, raw: bytes, model: str, image_tokens: int) -> int:
    """Input tokens a request's PDFs add to what the body estimate holds (its bytes at four a token,
    and ``image_tokens`` for each file it names by reference): each inline PDF's pages less its
    base64 at four bytes a token, each PDF by reference :data:`MAX_PDF_PAGES` pages less one image."""
    if not isinstance(body, dict) or _MARK.search(raw) is None:
        return 0
    extra, inflation = 0, Inflation()
    for part in body_values(body):
        if not isinstance(part, dict):
            continue
        inline, by_reference = _pdf_of(part)
        if inline is not None:
            per_page, counted = page_tokens(model, body, part), -(-len(inline) // 4)
            if counted < MAX_PDF_PAGES * per_page:  # else its bytes hold more than its pages may cost: not read
                extra += max(0, _inline_pages(inline, inflation) * per_page - counted)
        elif by_reference:
            extra += max(0, MAX_PDF_PAGES * page_tokens(model, body, part) - image_tokens)
    return extra


def _inline_pages(inline: str, inflation: Inflation) -> int:
    """The pages of a base64 PDF (:data:`MAX_PDF_PAGES` when it is not base64: Gemini refuses it,
    unbilled, and it is held as an unreadable PDF all the same)."""
    try:
        return pdf_pages(binascii.a2b_base64(inline.encode("ascii", "ignore")), inflation)
    except binascii.Error:
        return MAX_PDF_PAGES


_DATA_URL = re.compile(r"data:application/pdf(?:;[^,;]*)*;base64,", re.IGNORECASE)


def _pdf_of(part: dict) -> tuple[str | None, bool]:
    """(the base64 of an inline PDF, whether a PDF by reference) of one object of a body: Gemini's
    ``inlineData`` / ``fileData`` (either spelling), a Claude ``document`` source, or any string
    member that is a ``data:application/pdf`` URL (chat's ``file_data``, Responses' ``input_file``)."""
    for key in ("inlineData", "inline_data", "source"):
        inner = part.get(key)
        if isinstance(inner, dict) and _is_pdf(inner) and isinstance(inner.get("data"), str):
            return inner["data"], False
    for key in ("fileData", "file_data"):
        inner = part.get(key)
        if isinstance(inner, dict) and _is_pdf(inner):
            return None, True
    for value in part.values():
        if isinstance(value, str) and value[:5].lower() == "data:":
            found = _DATA_URL.match(value)
            if found is not None:
                return value[found.end() :], False
    return None, False


def _is_pdf(inner: dict) -> bool:
    kind = inner.get("mimeType", inner.get("mime_type", inner.get("media_type")))
    return isinstance(kind, str) and kind.strip().lower() == "application/pdf"

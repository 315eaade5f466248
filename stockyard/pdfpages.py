"""The PDFs a request sends, held at what the provider bills for them: each page as an image (and, on
Claude and OpenAI, its text besides).

Gemini reads a PDF page as an image (258 tokens a page on Gemini 2.5 and older; on Gemini 3 by its
media resolution: 560 at the PDF default, medium, up to 2,240 at ``ULTRA_HIGH``). Claude and OpenAI's
vision models read each page as its extracted text and an image of it (Anthropic's PDF support page:
1,500-3,000 tokens of text a page by its density, and the page's image at the vision rule; OpenAI's
file inputs page: "both the extracted text and an image of each page"), held at
:data:`PAGE_TEXT_TOKENS` and the model's largest image. So a PDF of many pages costs many images'
tokens, far more than its bytes at four a token when its pages are small. An inline PDF (Gemini's
``inlineData``, a ``data:application/pdf`` URL, a Claude ``document``'s base64 source: every dialect
Stockyard translates) is held at its pages (:func:`pdf_pages`, read from the PDF), less the bytes the
body estimate counted for it already; a PDF by reference at the pages Stockyard counted when it was
uploaded through it (:class:`PageCounter` as its bytes passed: a Gemini file, an OpenAI or Anthropic
file, a Gemini file an OpenAI-shaped body names by URL for Google's OpenAI-compatible endpoint;
``RequestContext.pdf_pages``, from ``files_api.Ownership``'s checks of the files a prompt names),
and a Gemini ``fileData`` PDF Stockyard did not count at Gemini's limit of :data:`MAX_PDF_PAGES`
pages, each less the image the reference is held as already (``estimate.image_tokens``).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import dataclasses
import functools
import itertools
import json
import logging
import operator
import re
import zlib
from dataclasses import dataclass
from io import RawIOBase
from typing import IO, Any, Mapping

from .estimate import Written, body_values, by_reference, unescaped
from .objectrefs import URL_FIELDS, hides_names, names_a_file

log = logging.getLogger("stockyard.files")
MAX_PDF_PAGES = 1000  # Gemini reads PDFs of up to 1,000 pages (its document-processing page)
# A page's extracted text on Claude and OpenAI: Anthropic's PDF support page puts it at 1,500-3,000
# tokens by the page's density; the dense end is held (its image comes on top: the model's largest).
PAGE_TEXT_TOKENS = 3000
PAGE_TOKENS_25 = 258  # a page on Gemini 2.5 and older
# Gemini 3's media resolutions (per part, or the request's generationConfig.mediaResolution), tokens a
# page; a PDF without one is read at medium.
RESOLUTION_TOKENS = {"LOW": 280, "MEDIUM": 560, "HIGH": 1120, "ULTRA_HIGH": 2240}
PDF_DEFAULT_RESOLUTION = "MEDIUM"
GENERATION = re.compile(r"gemini-(\d+)")
# PDF whitespace (NUL and form feed too) and comments, which stand where whitespace may.
# A comment here is at most 256 bytes (each mark scanned a longer one to its line's end: 64 KB of "/Type %"
# on one line took 3.5 s of CPU); a name a mark starts with followed by a longer one is _LONG_COMMENT's.
_WS = rb"(?:[\s\x00]|%[^\r\n]{0,256}+[\r\n])*+"
_LONG_COMMENT = re.compile(rb"/(?:Type|Count|First)" + _WS + rb"%[^\r\n]{256}")
# A page object (``/Type /Page``, not ``/Pages``), and a page tree's count of the pages under it
# (direct; one by reference, ``/Count 5 0 R``, says nothing here: the PDF is then unreadable). A count is
# any number a reader takes for one: ``900.0`` (pdf.js's ``Number.isInteger`` holds), ``+900``, ``0900``.
_PAGE = re.compile(rb"/Type" + _WS + rb"/Page(?![A-Za-z])")
# Runs of digits are possessive: tried split in two ("\d+ \d+", no space between), 40 KB of them after a
# /Count took 28 s of CPU; readers never split one either.
_COUNT = re.compile(rb"/Count" + _WS + rb"\+?(\d++(?:\.\d*+)?|\.\d++)(?!" + _WS + rb"\d++" + _WS + rb"R)")
_INDIRECT_COUNT = re.compile(rb"/Count" + _WS + rb"\d++" + _WS + rb"\d++" + _WS + rb"R")
_PDF_SPACE = b"\x00\t\n\x0c\r "  # PDF's white-space characters
_NAME_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")  # a name's character by its hex code: /P#61ge is /Page
INFLATE_MAX = 32 << 20  # bytes of compressed object streams inflated for one request's PDFs (one upload's), at most


class Inflation:
    """What is left of the bytes one request's PDFs may inflate (:data:`INFLATE_MAX`): many small
    PDFs must not each take all of it."""

    def __init__(self, left: int = INFLATE_MAX) -> None:
        self.left = left


def pdf_pages(data: bytes, inflation: Inflation | None = None) -> int:
    """The pages of a PDF: its page objects, or its page trees' largest count, the larger, in the file's
    bytes and in its object streams (PDF 1.5 keeps objects there, compressed); :data:`MAX_PDF_PAGES`
    when none shows a page or it cannot all be read (an object stream not inflated, a count by
    reference: an encrypted or crafted PDF, which Gemini may still read whole), or a page tree's kids
    repeat one (readers walk it each time, whatever the count; not in a later version of one object). Read
    as an upload's pieces are (:class:`PageCounter`), in one piece: one set of rules; an inline PDF is read whatever
    its first bytes (``pdf=True``: no header looked for), from ``inflation``, the request's budget."""
    counter = PageCounter(pdf=True)
    counter.feed(data, final=True, inflation=inflation)
    return counter.pages() or MAX_PDF_PAGES


def _count_value(number: bytes) -> int:
    """A page tree's count as written (digits, maybe a fraction): a fraction rounds up, and a count of
    more than seven digits is past any limit (the number is never made: a 10 MB one would take seconds)."""
    whole, _, fraction = number.partition(b".")
    whole = whole.lstrip(b"0")
    if len(whole) > 7:
        return 10**7
    return int(whole or b"0") + (fraction.strip(b"0") != b"")


def _unescaped(data: bytes) -> bytes:
    """``data`` with PDF names' ``#xx`` escapes read (a string's ``#`` too: a count can only grow)."""
    return _NAME_ESCAPE.sub(lambda m: bytes.fromhex(m[1].decode()), data) if b"#" in data else data


def _inflate(stream: memoryview, inflation: Inflation) -> bytes | None:
    """A Flate stream's bytes inflated; None when it is not Flate or inflates to more than ``inflation``
    has left. What it inflated is spent either way (an error at its end once let each of many streams
    inflate the most for free), and it is fed in blocks: many keywords before one end (each stream's
    bytes running to it) must not copy the rest each time."""
    if not stream:
        return None
    inflater, parts = zlib.decompressobj(), []
    try:
        for at in range(0, len(stream), _BLOCK):
            parts.append(inflater.decompress(stream[at : at + _BLOCK], max(inflation.left, 1)))
            inflation.left -= len(parts[-1])
            if inflater.unconsumed_tail or inflation.left <= 0:
                return None
            if inflater.eof:
                break
    except zlib.error:
        return None
    rest = at + _BLOCK  # the bytes after the block it ended in must be white space too
    if not inflater.eof or inflater.unused_data.strip(_PDF_SPACE) or not _SPACES.fullmatch(stream, rest):
        return None  # cut short by an 'endstream' in its bytes, or bytes after its end: not what a reader inflates
    return b"".join(parts)


def _holds(offsets: list[int], offset: int) -> bool:
    """Whether the sorted ``offsets`` hold ``offset``: a look-up in a list was quadratic over many
    streams (200,000 object streams in 8 MB took minutes)."""
    at = bisect.bisect_left(offsets, offset)
    return at < len(offsets) and offsets[at] == offset


def _name(name: bytes) -> bytes:
    """A pattern of a PDF name (without its '/'), any of its characters written as a ``#xx`` escape."""
    return b"".join(b"(?:%s|#(?i:%02x))" % (re.escape(bytes([c])), c) for c in name)


class _Ends:
    """Where the next ``endstream`` of one buffer is, looked for once for all the keywords before it
    (50,000 keywords before one end each looked for it afresh: ~44 GB scanned)."""

    def __init__(self, buf: bytes) -> None:
        self.buf, self.asked, self.found = buf, -1, -1

    def after(self, at: int) -> int:
        """The offset of the first ``endstream`` at or after ``at``, -1 when there is none."""
        if self.asked < 0 or at < self.asked or 0 <= self.found < at:
            self.asked, self.found = at, self.buf.find(b"endstream", at)
        return self.found


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


def held_pdf_tokens(
    body: Any,
    raw: bytes,
    model: str,
    image_tokens: int,
    gemini: bool = True,
    known: Mapping[str, int] | None = None,
    walk: bool = False,
    written: Written | None = None,
) -> int:
    """Input tokens a request's PDFs add to what the body estimate holds (its bytes at four a token,
    and ``image_tokens`` for each file it names by reference): each inline PDF's pages less its
    base64 at four bytes a token; each by reference that ``known`` counts (file id or Gemini file
    URI → pages) at its pages (a Gemini file's URI also where an OpenAI-shaped part puts a URL:
    :func:`_pages_by_url`), a Gemini ``fileData`` PDF it does not at :data:`MAX_PDF_PAGES`, each
    less one image. A page at Gemini's rate (``gemini``, :func:`page_tokens`), else at its text and
    an image (:data:`PAGE_TEXT_TOKENS` + ``image_tokens``). The body is walked when ``known`` counts
    files, or it may hold a PDF (:func:`may_hold_pdf`; ``walk``: it holds what ``raw`` does not,
    ``estimate.put_in``: a history Stockyard rebuilt, whose PDFs are billed again)."""
    known = known or {}
    if not isinstance(body, dict) or (not known and not may_hold_pdf(raw, body, written, walk)):
        return 0
    extra, inflation = 0, Inflation()
    read: set[int] = set()  # the objects a part's URLs were read from (_pages_by_url), by identity
    for part in body_values(body):
        if not isinstance(part, dict):
            continue
        inline, by_reference = _pdf_of(part)
        if inline is None and (by_reference is None or not gemini) and not known:
            continue  # no PDF of its own, nor one a count names: most of a large body's objects
        pages = _referenced_pages(part, by_reference if gemini else None, known)
        if inline is None and pages is None:
            extra += _pages_by_url(model, body, part, known, image_tokens, read) if known else 0
            continue
        per_page = page_tokens(model, body, part) if gemini else PAGE_TEXT_TOKENS + image_tokens
        if inline is not None:
            counted = -(-len(inline) // 4)
            if counted < MAX_PDF_PAGES * per_page:  # else its bytes hold more than its pages may cost: not read
                extra += max(0, _inline_pages(inline, inflation) * per_page - counted)
        elif pages is not None:
            extra += max(0, pages * per_page - image_tokens)
    return extra


def _referenced_pages(part: dict, uri: str | None, known: Mapping[str, int]) -> int | None:
    """The pages a PDF by reference in ``part`` is held at: a Gemini ``fileData`` PDF's (its ``uri``)
    that ``known`` counts, else :data:`MAX_PDF_PAGES`; a ``file_id`` that ``known`` counts (an OpenAI
    or Anthropic file); None for any other part (one image, held already, or none)."""
    if uri is not None:
        return known.get(uri, MAX_PDF_PAGES)
    file_id = part.get("file_id")
    return known[file_id] if isinstance(file_id, str) and file_id in known else None


def _pages_by_url(
    model: str, body: dict, part: dict, known: Mapping[str, int], image_tokens: int, read: set[int]
) -> int:
    """Input tokens the Gemini files' PDFs an OpenAI-shaped content ``part`` names by URL add
    (``objectrefs.URL_FIELDS``, its own or its object's: a chat ``image_url.url``, a Responses
    ``file_url``; Google's OpenAI-compatible endpoint reads them): the pages ``known`` counts, at
    Gemini's rate (only Google reads its files), less the image the estimate held for a part by
    reference (``estimate.by_reference``). A part has a ``type``; an object whose URLs were counted as
    a part's (``read``, walked parent first: a Claude image's ``source``, which has a ``type`` too) is
    not counted again as a part of its own."""
    if not isinstance(part.get("type"), str) or id(part) in read:
        return 0
    places = [part, *(value for value in part.values() if isinstance(value, dict))]
    named = [v for place in places for v in (place.get(name) for name in URL_FIELDS) if isinstance(v, str)]
    pages = sum(known[uri] for uri in named if uri in known and names_a_file(uri))
    if not pages:
        return 0
    read.update(map(id, places))  # counted here: an object among them is not a part of its own
    return max(0, pages * page_tokens(model, body, part) - (image_tokens if by_reference(part) else 0))


# A PDF's media type (a Gemini part's mimeType, a Claude source's media_type, a data URL's), its
# slash maybe escaped (JSON's ``\/``), in a body written in lower case
_PDF_TYPE = re.compile(rb"application\\?/pdf")


def may_hold_pdf(raw: bytes, body: Any, written: Written | None = None, walk: bool = False) -> bool:
    """Whether a JSON body may hold a PDF that no file count names (:func:`held_pdf_tokens`, with
    ``known`` empty): its media type in its bytes, in any case, or where they may spell it otherwise
    (``objectrefs.hides_names``: ``\\u0070df``, or not UTF-8) or ``walk`` (the body holds what ``raw``
    does not), in the parsed body written out again (``written``: ``estimate.body_written``, else
    ``estimate.unescaped``), in C. A Python function for each escape took 2.5 s on a body of 3.3
    million (30x its parse); "pdf" anywhere (a file's name, a word) walked every object of the body
    (3-4x its parse). A test of the bytes that spares most bodies the walk, made for every provider."""
    if not (walk or hides_names(raw)):
        return _PDF_TYPE.search(raw.lower()) is not None
    return _PDF_TYPE.search((written() if written is not None else unescaped(body)).lower()) is not None


def _inline_pages(inline: str, inflation: Inflation) -> int:
    """The pages of a base64 PDF (:data:`MAX_PDF_PAGES` when it is not base64: Gemini refuses it,
    unbilled, and it is held as an unreadable PDF all the same)."""
    try:
        return pdf_pages(binascii.a2b_base64(inline.encode("ascii", "ignore")), inflation)
    except binascii.Error:
        return MAX_PDF_PAGES


_PDF_KEYS = frozenset(("inlineData", "inline_data", "source", "fileData", "file_data"))  # :func:`_pdf_of`'s
_DATA_URL = re.compile(r"data:application/pdf(?:;[^,;]*)*;base64,", re.IGNORECASE)


def _pdf_of(part: dict) -> tuple[str | None, str | None]:
    """(the base64 of an inline PDF, the URI of a PDF by reference) of one object of a body: Gemini's
    ``inlineData`` / ``fileData`` (either spelling), a Claude ``document`` source, or any string
    member that is a ``data:application/pdf`` URL (chat's ``file_data``, Responses' ``input_file``)."""
    if _PDF_KEYS.isdisjoint(part):  # most objects of a large body: one test, not five
        return _data_url_pdf(part), None
    for key in ("inlineData", "inline_data", "source"):
        inner = part.get(key)
        if isinstance(inner, dict) and _is_pdf(inner) and isinstance(inner.get("data"), str):
            return inner["data"], None
    for key in ("fileData", "file_data"):
        inner = part.get(key)
        if isinstance(inner, dict) and _is_pdf(inner):
            uri = inner.get("fileUri", inner.get("file_uri"))
            return None, uri if isinstance(uri, str) else ""
    return _data_url_pdf(part), None


def _data_url_pdf(part: dict) -> str | None:
    """The base64 of a PDF a string member of ``part`` holds as a ``data:application/pdf`` URL."""
    for value in part.values():
        if isinstance(value, str) and value[:5].lower() == "data:":
            found = _DATA_URL.match(value)
            if found is not None:
                return value[found.end() :]
    return None


def _is_pdf(inner: dict) -> bool:
    kind = inner.get("mimeType", inner.get("mime_type", inner.get("media_type")))
    return isinstance(kind, str) and kind.strip().lower() == "application/pdf"


CARRY = 4096  # bytes of a piece kept for the next: a page's or a count's mark split between two pieces
CARRY_MAX = 1 << 20  # an object stream, string or comment open at a piece's end is carried whole up to this size
_HEADER = b"%PDF-"  # a PDF starts with it, within its first kilobyte
_BLOCK = 1 << 16  # bytes of a stream fed to the inflater at a time
_SPACES = re.compile(rb"[\x00\t\n\x0c\r ]*")
# The lexer (PDF 1.7, 7.2-7.3), which tells the bytes a reader takes for objects from those in strings and
# comments: a literal string's parentheses balance (nested up to 4 deep here; deeper is not read: the
# limit) and a backslash escapes the byte after it; a hex string runs to its '>'; a comment to its line's
# end. What a reader takes for the keyword 'stream' stands after white space or a delimiter (not '/': a name).
_STRING = rb"\((?:[^()\\]++|\\.)*+\)"
for _depth in range(3):
    _STRING = rb"\((?:[^()\\]++|\\.|" + _STRING + rb")*+\)"
_LEXEMES = {
    ord("("): ("string", re.compile(_STRING, re.S)),
    ord("%"): ("comment", re.compile(rb"%[^\r\n]*+[\r\n]")),
    ord("<"): ("hex", re.compile(rb"<<|<[^>]*+>")),  # '<<' a dictionary's start, in the open
}
# bytes in the open, and whole strings, hex strings and comments: skipped in one match up to the next mark
_OPEN = re.compile(rb"(?:[^(<%]++|<<|<[^>]*+>|%[^\r\n]*+[\r\n]|" + _STRING + rb")*+", re.S)
_BOUND = rb"\x00\t\n\x0c\r ()<>\[\]{}%"  # white space and delimiters but '/'
# strings, hex strings and comments in bytes in the open (blanked before a dictionary's brackets are read)
_IN_LEXEMES = re.compile(rb"%[^\r\n]*+[\r\n]|<(?<!<<)(?!<)[^>]*+>|" + _STRING, re.S)
_BRACKET = re.compile(rb"<<|>>")
_UPS = bytes.maketrans(b"<>", b"\x02\x00")
_AFTER_DICTIONARY = re.compile(rb">>[\x00\t\n\x0c\r ]*\Z")  # a stream keyword a reader reads follows one
# A page tree's /Kids: readers walk each reference in them, a repeated one each time (900 references to one
# page are 900 pages to PDFium and pypdf whatever the /Count; a tree of 10 × 10 × 10 repeats, 1,000), so a
# reference repeated in any /Kids (but in a later version of the same object: _R_OBJECTS) holds the PDF at
# the limit, as does a /Kids by reference (its array is not read here), a comment at its start longer than
# _WS reads, or anything but references in it. A token is
# read up to _KID_SPAN bytes (far less than CARRY: one that starts before a piece's cut is whole in it).
_KIDS = re.compile(b"/" + _name(b"Kids") + rb"(?![^" + _BOUND + rb"/])")
_PLAIN_KIDS = re.compile(rb"/Kids(?![^" + _BOUND + rb"/])")  # bytes without '#': a literal is looked for faster
_KIDS_VALUE = re.compile(_WS + rb"(?:(?P<array>\[)|(?P<held>[\d%]))?")
_KID = re.compile(_WS + rb"(?:(?P<kid>\d++)" + _WS + rb"\d++" + _WS + rb"R(?![^" + _BOUND + rb"/])|(?P<end>\]))")
_KID_SPAN = 512
# /Kids arrays and distinct references in them a PDF's state keeps (an ordinary tree of 1,000 pages has
# ~1,200, ~3,000 at two kids a node); past it, the PDF is held at the limit and they are no longer kept.
KIDS_MAX = 4 * MAX_PDF_PAGES
# The object a /Kids belongs to: the nearest header before it (``5 0 obj``, ``5 0obj`` as pdf.js lexes it),
# read backwards in the bytes reversed from each ``obj`` token (``jbo``: the engine skips to it), or an
# ``endobj``. A reference named again in a later version of the same object (an incremental update: Acrobat's
# Save, a signature, a form fill) is no repeat. Only a plain header (white space of at most 64 bytes between
# its words, numbers of at most 12 digits) that follows an ``endobj`` names its object: any other ``obj`` (a
# comment in its header, or a header inside another object's dictionary with no ``endobj`` before it, where
# readers skip it) starts an object not known, whose kids are never a later version. A header is at most
# _OBJECT_SPAN bytes: a piece keeps that many before its cut, so one that ends after it is whole in the next.
_R_SPACE = rb"[\x00\t\n\x0c\r ]"
_R_TOKEN = rb"jbo(?<![^" + _BOUND + rb"/]jbo)"  # 'obj' not followed by a regular character
_R_END = rb"(?P<end>dne)(?![^" + _BOUND + rb"])"  # 'endobj' not after one
# 'obj' after white space, a delimiter or its generation's digits, and a plain header's numbers before it
_R_WORDS = rb"(?=[" + _BOUND + rb"0-9]|\Z)(?:" + _R_SPACE + rb"{0,64}+\d{1,12}+" + _R_SPACE + rb"{1,64}+"
_R_WORDS += rb"(?P<number>\d{1,12}+)(?![^" + _BOUND + rb"]))?"
_R_OBJECTS = re.compile(_R_TOKEN + rb"(?:" + _R_END + rb"|" + _R_WORDS + rb")")
_R_HEADER = re.compile(_R_TOKEN + rb"(?!dne)" + _R_WORDS)  # any but an 'endobj'
_OBJECT_SPAN = 256


def _deeper(depth: int, span: bytes) -> int:
    """The depth of dictionaries after ``span`` (bytes in the open, its strings, hex strings and comments
    whole) from ``depth``: a '>>' with none open closes none (a reader skips it), so this depth is never
    less than that of a reader that starts an object anywhere in the bytes read (a lenient one skips a
    '<<' where a key should be: less still)."""
    if b"<<" not in span and b">>" not in span:
        return depth
    ups = b"".join(_BRACKET.findall(_IN_LEXEMES.sub(b" ", span)))[::2].translate(_UPS)  # 2 a '<<', 0 a '>>'
    if len(ups) <= 16:  # most spans: an object's start or end
        for up in ups:
            depth = depth + 1 if up else max(0, depth - 1)
        return depth
    # the walk that stops at 0 ends at its sum less its lowest point below the start, in C (a step each
    # in Python took 1.5 s for 4 MB of brackets)
    lowest = min(map(operator.sub, itertools.accumulate(ups), itertools.count(1)), default=0)
    return sum(ups) - len(ups) + max(depth, -min(lowest, 0))


_WHITE = rb"[\x00\t\n\x0c\r ]"
# A number in an object's header as readers take one: PDFium reads a generation written as any number
# ("-0", "+0", "0.", ".0", "--0", "0-0"), pdf.js's lexer a number up to its first byte that is none ("0obj" is
# 0 then 'obj'; "0-" 0) and a sign alone as 0 ("- obj"; "-\n0 obj" is then "-", "0", "obj" here, as
# long). Each run tried once.
_NUMBER = rb"[-+.\d]++"
_NUMBER_START = rb"(?<![-+.\d])"
_BEFORE_OBJ = rb"[-.\d\x00\t\n\x0c\r ]"  # what 'obj' follows in a header: white space, or its number's end
# an object's header (white space or comments between its words), each run of digits tried once
_GAP = rb"(?:" + _WHITE + rb"|%[^\r\n()<>]{0,256}+[\r\n])++"  # a comment at most 256 bytes long, as in _WS
# the start of an object's header with a longer comment in it (a reader reads on; looked for to its end
# from each run of digits, 64 KB of "1 %" in a string took 2 s of CPU): held as the header is
_LONG_GAP = _NUMBER_START + _NUMBER + rb"(?:" + _GAP + _NUMBER + rb")?(?:" + _GAP + rb")?%[^\r\n()<>]{256}"
_OBJECT = _NUMBER_START + _NUMBER + _GAP + _NUMBER + rb"(?:" + _GAP + rb")?obj(?![^" + _BOUND + b"/])"
_LINE_OBJECT = (  # in a comment
    _NUMBER_START + _NUMBER + rb"[\x00\t\x0c ]++" + _NUMBER + rb"[\x00\t\x0c ]*+obj(?![^" + _BOUND + b"/])"
)
# An object stream's type: its /Type /ObjStm, or a direct /First (its first object's offset) — pdf.js reads
# an object stream by its /First and /N alone and checks no /Type (PDFium and pypdf refuse one without); an
# outline's /First is by reference, and /FirstChar another name.
_FIRST = _name(b"First") + rb"(?=[\x00\t\n\x0c\r %])" + _WS + rb"[+.\d](?!\d*+" + _WS + rb"\d++" + _WS + rb"R)"
# The marks the lexer looks for, by name: each its first byte, outside its group (the regular expression
# engine then skips to one of those bytes: a pattern of groups read a stream's bytes ten times slower),
# and the rest; 'in_…': an object's header in a string, comment or hex string (in the open).
_MARK_PARTS = {
    "header": (b"o", b"bj(?<=" + _BEFORE_OBJ + b"obj)(?![^" + _BOUND + b"/])"),  # an object's 'obj'
    "keyword": (b"s", b"tream(?<![^" + _BOUND + b"]stream)(?![^" + _BOUND + b"/])"),
    "type": (b"/", b"(?:" + _name(b"ObjStm") + b"|" + _FIRST + b")"),
    "packed": (b"/", _name(b"ObjStm")),  # an object stream's type in a stream's bytes (pypdf and PDFium need it)
    "filter": (b"/", _name(b"Filter")),
    "predictor": (b"/", _name(b"Predictor")),
    "in_string": (rb"\(", rb"[^()]*?(?:" + _OBJECT + b"|" + _LONG_GAP + b")"),
    "in_comment": (
        b"%",
        rb"[^\r\n%]*?" + _LINE_OBJECT,
    ),  # from the line's last % before it: each % tried to the line's end was quadratic
    "in_hex": (b"<", rb"(?<!<<)(?!<)[^<>]*?(?:" + _OBJECT + b"|" + _LONG_GAP + b")"),
}
_HIDDEN = ("in_string", "in_comment", "in_hex")
_OBJECT_NUMBERS = re.compile(_NUMBER + _WS + _NUMBER + _WS + rb"\Z")  # before an object's 'obj'


@functools.cache
def _marks(kind: str, typed: bool, filtered: bool, predicted: bool) -> re.Pattern[bytes]:
    """The pattern of the marks that can still tell something in ``kind`` of bytes. In the open: a stream
    keyword, a type until one is seen, a filter or a predictor until one is seen, and an object's header
    in a string, comment or hex string (one in the open, where readers start objects, tells nothing: a
    step each for nothing). In a string, comment or hex string: an object's header, a keyword once a
    type was seen (before: a run of them took a step each), the names as in the open (a type always in a
    comment or hex string: it holds the PDF at the limit). In a stream's bytes: an object's header (a
    reader keeps in step with this lexer from its object's header on: what else is there tells nothing)
    and an object stream's ``/ObjStm`` (its dictionary there: pypdf starts an object at any two numbers
    and three bytes, which no header pattern can tell from a binary stream's; it holds the PDF at the limit)."""
    if kind == "data":
        names = ["header", "packed"]
    else:
        names = ["keyword"] if kind == "open" or typed else []
        names += ["type"] * (kind in ("comment", "hex") or not typed) + ["filter"] * (not filtered)
        names += ["predictor"] * (not predicted) + (list(_HIDDEN) if kind == "open" else ["header"])
    marks = (b"%s(?P<%s>%s)" % (_MARK_PARTS[name][0], name.encode(), _MARK_PARTS[name][1]) for name in names)
    return re.compile(b"|".join(marks))


def _skip(pattern: re.Pattern[bytes], buf: bytes, pos: int, endpos: int) -> int:
    """Where ``pattern`` (which matches no bytes too) ends, matched at ``pos`` before ``endpos``."""
    found = pattern.match(buf, pos, endpos)
    return pos if found is None else found.end()


_DATA = re.compile(rb"[\x00\t\x0c ]*(?:\r\n|\n|\r)?")  # from a stream keyword to its bytes: readers go to the next line


@dataclass
class PageCounter:
    """The pages of a PDF whose bytes pass in pieces (an upload's chunks, a spooled file read in blocks),
    or whole (:func:`pdf_pages`: one piece) — page objects summed and page-tree counts, in its
    bytes and its object streams, names' escapes read — without holding it: each piece is read with
    the last :data:`CARRY` bytes of the one before (a mark split between two is read once, whole), and
    an object stream open at a piece's end is carried whole (up to :data:`CARRY_MAX`) until it ends. Its
    streams are found by a lexer whose state goes from piece to piece (:meth:`_lex`). Its state is a few
    numbers, the /Kids' object numbers and the carry (:meth:`dumps`), kept between the requests an
    upload's chunks come in.
    :meth:`pages` is None when the bytes are not a PDF; :data:`MAX_PDF_PAGES` when its pages could
    not be counted (no page mark, a piece missing or out of order, an object stream too large to carry or
    not Flate or its type where a reader may not see it, a count by reference, a reference repeated in
    a page tree's /Kids — but in a later version of the object that named it — or one not read:
    :meth:`_count_kids`). Its /Kids' object numbers, and the object and version that named each, are kept
    up to :data:`KIDS_MAX`; past it the PDF is held at the limit."""

    at: int = 0  # bytes read so far: the offset the next piece must start at
    pdf: bool = False  # the PDF header was seen in the first kilobyte
    state: str = "reading"  # reading | done | not_pdf | lost (a piece missing or out of order)
    objects: int = 0  # page objects in the PDF's own bytes
    count: int = 0  # the largest page-tree count in them
    packed: int = 0  # page objects in its object streams, summed
    packed_count: int = 0  # the largest page-tree count in them
    streams: list[int] = dataclasses.field(default_factory=list)  # offsets of the object streams read (once each)
    unread: bool = (
        False  # an object stream went unread (too large to carry or inflate, not Flate), or a count by reference
    )
    inflated: int = 0  # bytes inflated so far (at most INFLATE_MAX for a PDF)
    seen: int = 0  # bytes at the carry's start whose marks were counted already
    lexed: int = 0  # the file offset the lexer goes on from, in the open or in a stream's bytes:
    in_data: bool = False  # ... the bytes of a stream, which end at the next 'endstream'
    depth: int = 0  # dictionaries open in the open at the offset depth_at (read up to a keyword when one
    depth_at: int = 0  # comes, and at a piece's end): a keyword inside one starts no stream
    # The names seen since the last stream keyword that started a stream's bytes (in the open, right after
    # a whole dictionary; the next one's dictionary is in between), read outside streams' bytes: an
    # /ObjStm or a direct /First (in the open or a string), a /Filter, a /Predictor. Every stream keyword,
    # wherever it is (a reader may start an object inside a string), is judged by them; only one that starts
    # a stream's bytes starts a new window, so a false one in a string, a comment or a dictionary cuts none short.
    typed: bool = False
    filtered: bool = False
    predicted: bool = False
    # The /Kids read (:meth:`_count_kids`): the object numbers referenced, sorted, and the /Kids names; the file
    # offset their reading goes on from (a token that starts before a piece's cut is read whole in it), and
    # whether that is inside an array.
    kids: list[int] = dataclasses.field(default_factory=list)
    kids_names: int = 0
    # For each kid, the object whose /Kids named it (-1: not known) and the file offset of that version's header
    # (:meth:`_note_objects`); the object the bytes read belong to, its header's offset, whether an 'endobj'
    # came after it (the next header then starts an object), and the file offset objects are read up to.
    kid_owners: list[int] = dataclasses.field(default_factory=list)
    kid_versions: list[int] = dataclasses.field(default_factory=list)
    owner: int = -1
    owner_at: int = -1
    kids_owner: list[int] = dataclasses.field(default_factory=lambda: [-1, -1])  # the open array's (owner, owner_at)
    closed: bool = True
    objects_at: int = 0
    kids_at: int = 0
    in_kids: bool = False
    carry: bytes = b""

    def feed(
        self, data: bytes, offset: int | None = None, final: bool = False, inflation: Inflation | None = None
    ) -> None:
        """Read the next piece (at ``offset``: one at another than :attr:`at` leaves a gap or reads
        bytes twice, and the count is lost); ``final``: the PDF ends with it. Its object streams inflate
        from ``inflation`` (a request's PDFs share one) besides the PDF's own :data:`INFLATE_MAX`."""
        if self.state != "reading":
            return
        if offset is not None and offset != self.at:
            self.state, self.carry = "lost", b""
            return
        self.at += len(data)
        buf = self.carry + data  # from the file's start while the header is looked for (CARRY > 1 KiB)
        if not self.pdf:
            self.pdf = _HEADER in buf[: 1024 + len(_HEADER)]
            if not self.pdf and (final or self.at >= 1024 + len(_HEADER)):
                self.state, self.carry = "not_pdf", b""
                return
        cut = len(buf) if final else max(0, len(buf) - CARRY)
        self._count_marks(buf, cut)
        base = self.at - len(buf)
        start = max(self.kids_at - base, self.seen)  # the seen bytes: a state from before kids were read
        kids_at, self.in_kids = self._count_kids(buf, start, len(buf) if final else cut, self.in_kids, base)
        self.kids_at = base + kids_at
        resume = cut if self.unread else self._lex(buf, cut, final, inflation)
        self.lexed = self.at - len(buf) + resume
        if not final and not self.in_data and not self.unread:
            self._deepen(buf, resume)  # the carry no longer holds the bytes before it
        # from a byte before the lexer goes on (a keyword's look-behind) and an object's header before the cut
        keep = max(0, min(cut - _OBJECT_SPAN, resume - 1))
        self.carry, self.seen = (b"", 0) if final else (buf[keep:], cut - keep)
        kept = self.at - len(self.carry)  # a stream before the carry is never read again
        del self.streams[: bisect.bisect_left(self.streams, kept)]
        if final:
            self.state = "done"

    def _count_marks(self, buf: bytes, cut: int) -> None:
        """Page objects and page-tree counts that start before ``cut`` (the rest are read with the next
        piece) and not in the :attr:`seen` bytes (read with the last), names' escapes read (the bounds
        moved with them); a count by reference leaves the pages uncounted."""
        seen = self.seen
        if b"#" in buf:
            whole = _unescaped(buf)  # a whole PDF (cut at its end) is unescaped once
            cut = len(whole) if cut == len(buf) else len(_unescaped(buf[:cut]))
            seen, buf = len(_unescaped(buf[:seen])), whole
        self.objects += sum(1 for found in _PAGE.finditer(buf) if seen <= found.start() < cut)
        counts = [_count_value(found[1]) for found in _COUNT.finditer(buf) if seen <= found.start() < cut]
        self.count = max([self.count, *counts])
        if any(seen <= found.start() < cut for found in _INDIRECT_COUNT.finditer(buf)):
            self.unread = True
        if any(seen <= found.start() < cut for found in _LONG_COMMENT.finditer(buf)):
            self.unread = True  # a mark may stand after it: not read

    def _count_kids(self, buf: bytes, pos: int, end: int, in_array: bool, base: int | None = None) -> tuple[int, bool]:
        """Read the /Kids names and the references in their arrays that start in ``buf[pos:end]`` (a
        token may end past ``end``), ``in_array`` if ``pos`` is inside one; returns where to go on from
        and whether that is inside an array. A reference repeated in any of them (a page readers walk
        more than once) but in a later version of the same object, a /Kids by reference or holding
        anything else holds the PDF at the limit. ``base``: ``buf``'s file offset, its objects' headers
        read (:meth:`_note_objects`); None: an object stream's bytes, whose objects are not known here."""
        names = _KIDS if b"#" in buf else _PLAIN_KIDS
        owner = (self.kids_owner[0], self.kids_owner[1]) if base is not None else (-1, -1)
        while pos < end and not self._kids_done():
            if not in_array:
                name = names.search(buf, pos)
                if name is None or name.start() >= end:
                    pos = end
                    break
                if base is not None:
                    self._note_objects(buf, name.start(), base)
                    owner = (self.owner, self.owner_at)
                value = _KIDS_VALUE.match(buf, name.end())
                assert value is not None  # all of it optional: it always matches
                if value["held"] is not None or value.end() - name.end() > _KID_SPAN:
                    self.unread = True  # its array by reference, or past a comment longer than _WS reads
                self.kids_names += 1
                self._bound_kids()
                pos, in_array = value.end(), value["array"] is not None
                continue
            kid = _KID.match(buf, pos)
            if kid is None or kid.end() - pos > _KID_SPAN:
                self.unread = True
                break
            pos, in_array = kid.end(), kid["end"] is None
            if in_array:
                self._note_kid(kid["kid"], owner)
        if base is not None and end < len(buf) and not self._kids_done():  # the next piece goes on from the cut
            self._note_objects(buf, end, base)
            self.kids_owner = list(owner)  # an array open at the cut: its object's
        return pos, in_array

    def _note_objects(self, buf: bytes, to: int, base: int) -> None:
        """Read the objects' headers and 'endobj's whose ``obj`` ends after :attr:`objects_at` and at or before
        ``to`` in ``buf`` (at file offset ``base``), to know the object the bytes at ``to`` belong to: the last
        header, named when an 'endobj' or none came between it and the one before (else, or not plain, or cut
        at the piece's start: -1, not known). Read in those bytes reversed (and the :data:`_OBJECT_SPAN`
        before them, and the byte after: an 'obj' followed by a regular character is none), each once."""
        since = max(0, self.objects_at - base)
        if to <= since:
            return
        start, stop = max(0, since - _OBJECT_SPAN), min(len(buf), to + 1)
        reversed_, last = buf[start:stop][::-1], stop - since  # matches from ``last`` on ended by ``since``
        found = _R_OBJECTS.search(reversed_, stop - to)
        ended = found is not None and found.start() < last and found["end"] is not None
        header = _R_HEADER.search(reversed_, found.end()) if ended and found is not None else found
        header = header if header is not None and header.start() < last else None
        before = None if header is None else _R_OBJECTS.search(reversed_, header.end())
        clean = None if before is None or before.start() >= last else before["end"] is not None
        self.objects_at = base + to
        if header is None:
            self.closed = self.closed or ended
            return
        plain = header["number"] is not None and (header.end() < len(reversed_) or base + start == 0)
        number = int(header["number"][::-1]) if plain else -1
        self.owner = number if (self.closed if clean is None else clean) else -1
        self.owner_at, self.closed = base + stop - header.start(), ended

    def _note_kid(self, digits: bytes, owner: tuple[int, int]) -> None:
        """Note a reference in a /Kids by its object number (readers resolve ``3 0 R`` and ``3 1 R`` alike)
        and the ``owner`` whose /Kids named it (its number, -1 not known, and its header's offset): a repeated
        one holds the PDF at the limit unless named again by a later version of the object that named it
        (an incremental update: readers see one version), and so do more than :data:`KIDS_MAX` kept."""
        number = digits.lstrip(b"0")
        if len(number) > 10:  # no reader's object number
            self.unread = True
            return
        at = bisect.bisect_left(self.kids, key := int(number or b"0"))
        if at < len(self.kids) and self.kids[at] == key:
            later = owner[0] >= 0 and self.kid_owners[at] == owner[0] and self.kid_versions[at] != owner[1]
            self.unread = self.unread or not later
            self.kid_versions[at] = owner[1]
            return
        self.kids.insert(at, key)
        self.kid_owners.insert(at, owner[0])
        self.kid_versions.insert(at, owner[1])
        self._bound_kids()

    def _bound_kids(self) -> None:
        """Past :data:`KIDS_MAX` /Kids names and references (more pages than the limit, or crafted) the PDF
        is held at the limit and its kids are no longer kept: the state between an upload's chunks is small."""
        if len(self.kids) + self.kids_names > KIDS_MAX:
            self.count, self.kids, self.kid_owners, self.kid_versions = max(self.count, MAX_PDF_PAGES), [], [], []

    def _kids_done(self) -> bool:
        """Whether the PDF is held at the limit already: its /Kids can tell no more."""
        return self.unread or max(self.count, self.packed_count) >= MAX_PDF_PAGES

    def _lex(self, buf: bytes, cut: int, final: bool, budget: Inflation | None) -> int:
        """Read ``buf`` from :attr:`lexed` to ``cut`` as a reader lexes a PDF — strings, hex strings and
        comments whole, a stream's bytes to its ``endstream`` — judging each stream keyword by the marks
        since the last one that started a stream's bytes, and inflating the object streams; returns the
        offset in ``buf`` to go on from (a stream, string or comment open at its end starts there:
        carried whole)."""
        pos, ends = self.lexed - (self.at - len(buf)), _Ends(buf)
        while pos < cut and not self.unread:
            if self.in_data:
                end = ends.after(pos)
                before = cut if end < 0 else None  # the bytes' marks from the cut on are read with the next piece
                stop = self._marks_in(buf, pos, len(buf) if end < 0 else end, "data", final, ends, budget, before)
                if stop is not None or end < 0:
                    return cut if stop is None else stop
                pos, self.in_data = end + len(b"endstream"), False
                self.depth, self.depth_at = 0, self.at - len(buf) + pos
                continue
            mark = self._pattern("open").search(buf, pos)
            limit = cut if mark is None else min(mark.start(), cut)
            skipped = _skip(_OPEN, buf, pos, limit)
            if skipped == limit and (mark is None or limit == cut):
                return cut
            if skipped == limit and mark is not None:  # a mark in the open
                stream = mark.lastgroup == "keyword" and self._after_dictionary(buf, mark.start())
                loose = mark.lastgroup == "keyword" and not stream  # inside a dictionary: a reader skips it
                if self._mark(buf, mark, "loose" if loose else "open", final, ends, budget):
                    return mark.start()
                pos = mark.end()
                if stream:  # right after a whole dictionary: a stream's bytes follow, and a new window
                    pos, self.in_data = _skip(_DATA, buf, pos, len(buf)), True
                    self.typed = self.filtered = self.predicted = False
                continue
            kind, lexeme = _LEXEMES[buf[skipped]]  # a string, hex string or comment the next mark or the cut is in
            found = lexeme.match(buf, skipped)
            if found is not None and found[0] == b"<<":
                pos = found.end()
                continue
            if found is None and not final and len(buf) - skipped <= CARRY_MAX:
                return skipped  # open at the end: carried whole
            if found is None and not final:
                self.unread = True  # too long to carry
                return skipped
            end = len(buf) if found is None else found.end()
            if self._marks_in(buf, skipped, end, kind, final, ends, budget) is not None:
                return skipped
            pos = end
        return pos

    def _after_dictionary(self, buf: bytes, keyword: int) -> bool:
        """Whether a stream keyword in the open is one a reader reads: right after a dictionary's end, none
        left open (pdf.js and PDFium skip one inside a dictionary, and its bytes, as a key that is no name)."""
        self._deepen(buf, keyword)
        return self.depth == 0 and _AFTER_DICTIONARY.search(buf, max(0, keyword - 64), keyword) is not None

    def _deepen(self, buf: bytes, to: int) -> None:
        """Read the dictionaries' brackets in the open up to ``to`` in ``buf`` (where the lexer is in the
        open), from :attr:`depth_at`: only where a keyword needs them (most bytes never do)."""
        base = self.at - len(buf)
        self.depth, self.depth_at = _deeper(self.depth, buf[self.depth_at - base : to]), base + to

    def _pattern(self, kind: str) -> re.Pattern[bytes]:
        """The marks that can still tell something in ``kind`` of bytes (:func:`_marks`)."""
        return _marks(kind, self.typed, self.filtered, self.predicted)

    def _marks_in(
        self,
        buf: bytes,
        start: int,
        end: int,
        kind: str,
        final: bool,
        ends: _Ends,
        budget: Inflation | None,
        before: int | None = None,
    ) -> int | None:
        """Note the marks in ``buf[start:end]``, all in ``kind`` of bytes, those that start ``before`` an
        offset when given; the offset of a keyword whose stream is open at ``buf``'s end, else None."""
        while not self.unread and (found := self._pattern(kind).search(buf, start, end)) is not None:
            if before is not None and found.start() >= before:
                return None
            if self._mark(buf, found, kind, final, ends, budget):
                return found.start()
            start = found.end()
        return None

    def _mark(self, buf: bytes, found: re.Match, kind: str, final: bool, ends: _Ends, budget: Inflation | None) -> bool:
        """Note a name found in ``kind`` of bytes (open, string, hex, comment, data; a keyword in the open
        but inside a dictionary is loose), or judge a stream keyword there by the names since the last
        keyword that started a stream's bytes; True: stop, the stream it starts is open at ``buf``'s end.
        An object's header (``N G obj``, its numbers in any shape a reader takes, :data:`_NUMBER`: a reader
        starts an object there, where the cross-reference table says) anywhere but in the open holds the
        PDF at the limit, and so does an object stream's type in a comment, hex string or a stream's
        bytes: the reader may read on in the open where this lexer reads in a string, or count a '<<' it
        does not (and a false keyword then ends its window), or start an object at a header in another
        shape (pypdf: any two numbers and three bytes)."""
        if found.lastgroup in (*_HIDDEN, "packed"):  # a header, or an /ObjStm in a stream's bytes: not in the open
            self.unread = True
            return False
        if found.lastgroup == "header":  # where a reader starts an object: the lexer must be in the open there
            numbers = _OBJECT_NUMBERS.search(buf, max(0, found.start() - 64), found.start())
            self.unread = self.unread or (kind != "open" and numbers is not None)
            return False
        if found.lastgroup != "keyword":
            self.unread = self.unread or (found.lastgroup == "type" and kind in ("comment", "hex"))
            self.typed = self.typed or found.lastgroup == "type"
            self.filtered = self.filtered or found.lastgroup == "filter"
            self.predicted = self.predicted or found.lastgroup == "predictor"
            return False
        if not self.typed:
            return False
        start = _skip(_DATA, buf, found.end(), len(buf))
        return self._read(buf, found.start(), start, final, ends, budget, open_=kind == "open")

    def _read(
        self,
        buf: bytes,
        keyword: int,
        start: int,
        final: bool,
        ends: _Ends,
        budget: Inflation | None,
        open_: bool,
    ) -> bool:
        """Inflate the object stream whose keyword is at ``keyword`` and bytes at ``start`` (to the next
        ``endstream``), once (by its offset in the file: the carry brings some back), from ``budget`` and
        what the PDF has left of its own, and count its marks; True: it is open at ``buf``'s end."""
        base = self.at - len(buf)  # the file offset of buf[0]
        if _holds(self.streams, base + keyword):
            return False
        end = ends.after(start)
        if end < 0:
            if final or len(buf) - keyword > CARRY_MAX:
                self.unread = True
                return False
            return True
        bisect.insort(self.streams, base + keyword)
        if self.predicted:  # inflated, its bytes are a predictor's differences, not its objects
            self.unread = True
            return False
        allowed = INFLATE_MAX - self.inflated
        allowed = allowed if budget is None else min(allowed, budget.left)
        inflation = Inflation(allowed)
        out = _inflate(memoryview(buf)[start:end], inflation)
        self.inflated += allowed - inflation.left
        if budget is not None:
            budget.left -= allowed - inflation.left
        if out is None:
            # not Flate: a plain one's marks are counted with the file's; one with a filter is not read, nor
            # one in the open with a keyword in its bytes (its filter may be among them)
            plain = not self.filtered and not (open_ and buf.find(b"stream", start, end) >= 0)
            self.unread = self.unread or inflation.left <= 0 or not plain
            return False
        out = _unescaped(out)
        self.packed += len(_PAGE.findall(out))
        self.packed_count = max([self.packed_count, *map(_count_value, _COUNT.findall(out))])
        self._count_kids(out, 0, len(out), False)
        if _INDIRECT_COUNT.search(out) is not None or _LONG_COMMENT.search(out) is not None:
            self.unread = True
        return False

    def pages(self) -> int | None:
        """The PDF's pages once its last piece was read (:data:`MAX_PDF_PAGES` when they could not be
        counted: :meth:`counted`); None for bytes that are not a PDF."""
        if self.state == "not_pdf":
            return None
        found = self._found()
        return min(found, MAX_PDF_PAGES) if found else MAX_PDF_PAGES

    def counted(self) -> bool:
        """Whether :meth:`pages` was read from the PDF (else it is :data:`MAX_PDF_PAGES`: :meth:`why_not`)."""
        return self._found() > 0

    def why_not(self) -> str:
        """Why the pages were not counted, for the log."""
        if self.state == "lost":
            return "a chunk came out of order, or one was missing"
        if self.state == "reading":
            return "its last chunk was not read"
        if self.unread:
            return (
                "an object stream could not be read (too large, not Flate, or marked where a reader may not see it),"
                " or a page tree's /Kids repeat a page or could not be read"
            )
        return "no page object or page count in it: encrypted, or damaged"

    def _found(self) -> int:
        """Pages counted once the last piece was read: its page objects in its bytes and object streams
        summed, or its largest page-tree count, the larger; 0: none, or something went unread."""
        if self.state != "done":
            return 0
        if self.unread:
            return 0
        return max(self.objects + self.packed, self.count, self.packed_count)

    def dumps(self) -> str:
        """The state as text, kept between an upload's chunks (``gemini_uploads.pages_state``)."""
        # the fields read as they are (numbers, text, lists of numbers): dataclasses.asdict deep-copied
        # every number of the kids' lists, seconds for a file of thousands of pages fed in small pieces
        numbers = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "carry"}
        return json.dumps({**numbers, "carry": base64.b64encode(self.carry).decode()})

    @classmethod
    def loads(cls, text: str | None) -> "PageCounter":
        """A counter from :meth:`dumps`' text; a new one for None (an upload's first chunk), a lost one for
        text it cannot read."""
        if text is None:
            return cls()
        try:
            state = json.loads(text)
            counter = cls(**{**state, "carry": base64.b64decode(state["carry"])})
        except (ValueError, TypeError, KeyError, binascii.Error):
            return cls(state="lost")
        if len(counter.kid_owners) != len(counter.kids) or len(counter.kid_versions) != len(counter.kids):
            # a state from before the kids' objects were kept: not known, so never a later version
            counter.kid_owners, counter.kid_versions = [-1] * len(counter.kids), [-1] * len(counter.kids)
        return counter


def count_pages(source: IO[bytes] | RawIOBase, block: int = 1 << 20) -> PageCounter:
    """A :class:`PageCounter` that read a whole file from ``source`` in blocks (a spooled upload's part)."""
    counter = PageCounter()
    while counter.state == "reading" and (data := source.read(block)):
        counter.feed(data)
    counter.feed(b"", final=True)
    return counter


def uploaded_pages(counter: PageCounter, name: str) -> int | None:
    """The pages to keep with an uploaded file named ``name`` (None: not a PDF); a PDF whose pages could
    not be counted keeps :data:`MAX_PDF_PAGES`, and the log says so."""
    pages = counter.pages()
    if pages is not None and not counter.counted():
        log.warning(
            "the pages of the PDF uploaded as %r could not be counted (%s): a prompt naming it is held at %d pages",
            name[:200],
            counter.why_not(),
            pages,
        )
    return pages

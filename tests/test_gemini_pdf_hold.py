"""A PDF sent to Gemini is held at its pages, each billed as an image, not at its bytes or as one image.

Gemini reads each page of a PDF as an image: 258 tokens a page on Gemini 2.5 (its document-processing
page), on Gemini 3 by media resolution (560 at the PDF default, medium; 1,120 high; 2,240 ultra high).
A PDF of small pages is far more tokens than its base64 at four bytes a token, which is all a budget
held for it; one named by ``fileData`` was held as a single image. The budget's refusal (a key with
one µ¢) says what the request may cost, the hold.
"""

from __future__ import annotations

import base64
import json
import os
import re
import zlib
from decimal import Decimal

import pytest
from conftest import ServerProcess, mock_env, served, wait_for

GEMINI_KEY = "AIza-pdfhold-0123456789abcdefPROVIDERSECRET"
ADMIN = "admin-key-for-pdf-hold-tests-0123456789"
USD = 10**8
IN_25, OUT_25 = 30, 250  # gemini-2.5-flash, µ¢ a token
IN_3, OUT_3 = 50, 300  # gemini-3-flash-preview
CAP = 16
REFUSAL = r"may cost (?:up to|at least) \$([0-9.]+)"  # at least: a batch refused at its first request


def pdf(pages: int, packed: bool = False) -> bytes:
    """A PDF of ``pages`` empty letter pages; ``packed``: its page tree and pages in a compressed
    object stream (PDF 1.5), as most writers make them now."""
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    objects = [f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode()]
    objects += [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"] * pages
    out = b"%PDF-1.5\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    if packed:
        offsets, body = [], b""
        for number, obj in enumerate(objects, start=2):
            offsets.append(f"{number} {len(body)}")
            body += obj + b"\n"
        head = " ".join(offsets).encode() + b"\n"
        stream = zlib.compress(head + body)
        sizes = f"/N {len(objects)} /First {len(head)} /Length {len(stream)}"
        dictionary = f"<< /Type /ObjStm {sizes} /Filter /FlateDecode >>"
        out += f"{len(objects) + 2} 0 obj\n{dictionary}\nstream\n".encode() + stream + b"\nendstream\nendobj\n"
    else:
        for number, obj in enumerate(objects, start=2):
            out += f"{number} 0 obj\n".encode() + obj + b"\nendobj\n"
    return out + b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=mock.url, STOCKYARD_ADMIN_KEY=ADMIN)
    with served(pyz_path, tmp_path_factory, "pdfhold", env) as srv:
        yield srv


_names = iter(range(1_000_000))


def refused(server: ServerProcess, path: str, body: dict, header: str, prefix: str = "") -> int:
    """What a request may cost, from the 429 a new key with a budget of one µ¢ gets (sent in
    ``header``, after ``prefix``)."""
    fields = {"name": f"pdf{next(_names)}", "budget_usd": "0.00000001", "budget_period": "total"}
    status, _, made = server.request("POST", "/api/keys", fields, headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 201, made
    headers = {header: prefix + json.loads(made)["key"]}
    status, _, raw = wait_for(lambda: (r := server.request("POST", path, body, headers))[0] != 401 and r)
    found = re.search(REFUSAL, json.loads(raw)["error"]["message"])
    assert status == 429 and found, raw
    return int(Decimal(found[1]) * USD)


def held(server: ServerProcess, model: str, body: dict) -> int:
    """What a generateContent may cost (the key as google-genai sends it)."""
    return refused(server, f"/v1beta/models/{model}:generateContent", body, "x-goog-api-key")


def asking(part: dict, **config) -> dict:
    return {
        "contents": [{"role": "user", "parts": [part, {"text": "Summarise this."}]}],
        "generationConfig": {"maxOutputTokens": CAP, **config},
    }


def inline(data: bytes) -> dict:
    return {"inlineData": {"mimeType": "application/pdf", "data": base64.b64encode(data).decode()}}


def bytes_hold(body: dict, rate_in: int, rate_out: int) -> int:
    """The body's bytes at four a token, and the output cap: all a budget held before."""
    return -(-len(json.dumps(body)) // 4) * rate_in + CAP * rate_out


@pytest.mark.parametrize("packed", [False, True])
def test_an_inline_pdf_is_held_at_its_pages(server, packed):
    """40 small pages: ~3 KB of base64 (~800 tokens by its bytes), 10,320 tokens as Gemini 2.5 bills them."""
    data = pdf(40, packed)
    body = asking(inline(data))
    b64 = len(base64.b64encode(data))
    assert -(-b64 // 4) < 40 * 258  # the defect: its bytes hold less than its pages cost
    expected = bytes_hold(body, IN_25, OUT_25) + (40 * 258 - -(-b64 // 4)) * IN_25
    assert held(server, "gemini-2.5-flash", body) == expected


@pytest.mark.parametrize(
    "config, part_level, per_page",
    [
        ({}, None, 560),  # Gemini 3 reads a PDF at medium by default
        ({"mediaResolution": "MEDIA_RESOLUTION_HIGH"}, None, 1120),
        ({}, {"level": "MEDIA_RESOLUTION_ULTRA_HIGH"}, 2240),  # a part's own resolution
    ],
)
def test_gemini_3_holds_a_page_at_its_media_resolution(server, config, part_level, per_page):
    data = pdf(12)
    part = inline(data) | ({"mediaResolution": part_level} if part_level else {})
    body = asking(part, **config)
    b64 = -(-len(base64.b64encode(data)) // 4)
    expected = bytes_hold(body, IN_3, OUT_3) + (12 * per_page - b64) * IN_3
    assert held(server, "gemini-3-flash-preview", body) == expected


def test_a_pdf_by_reference_is_held_at_geminis_page_limit(server):
    """Its pages are not in the body: held at the most Gemini reads (1,000 pages), not as one image."""
    body = asking({"fileData": {"mimeType": "application/pdf", "fileUri": "https://example.com/report.pdf"}})
    image = {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/chart.png"}}
    as_image = asking(image)
    assert held(server, "gemini-2.5-flash", as_image) == bytes_hold(as_image, IN_25, OUT_25) + 1600 * IN_25
    expected = bytes_hold(body, IN_25, OUT_25) + 1000 * 258 * IN_25
    assert held(server, "gemini-2.5-flash", body) == expected


def test_a_pdf_in_a_chat_file_part_is_held_at_its_pages_for_gemini(server):
    """A chat ``file`` part (a data URL) reaches Gemini as inlineData: its pages, as Gemini bills them."""
    data = pdf(40)
    url = "data:application/pdf;base64," + base64.b64encode(data).decode()
    content = [{"type": "file", "file": {"filename": "r.pdf", "file_data": url}}, {"type": "text", "text": "Sum up."}]
    body = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": content}], "max_tokens": CAP}
    hold = refused(server, "/v1/chat/completions", body, "Authorization", "Bearer ")
    b64 = -(-(len(url) - len("data:application/pdf;base64,")) // 4)
    assert hold == bytes_hold(body, IN_25, OUT_25) + (40 * 258 - b64) * IN_25


@pytest.mark.parametrize("spelling", ["APPLICATION/PDF", "application\\u002Fpdf", "utf-16"])
def test_a_pdf_whose_type_is_in_capitals_escaped_or_in_utf16_is_held_at_its_pages(server, spelling):
    """Gemini reads a type in any case, and JSON an escape or UTF-16: the bytes' test must not miss them
    (capitals were held at the bytes alone)."""
    data = pdf(40)
    body = asking(inline(data))
    text = json.dumps(body)
    if spelling == "utf-16":
        sent = text.encode("utf-16")
    else:
        sent = text.replace("application/pdf", spelling).encode()
    fields = {"name": f"pdf{next(_names)}", "budget_usd": "0.00000001", "budget_period": "total"}
    status, _, made = server.request("POST", "/api/keys", fields, headers={"Authorization": f"Bearer {ADMIN}"})
    headers = {"x-goog-api-key": json.loads(made)["key"]}
    status, _, raw = wait_for(
        lambda: (
            (r := server.request("POST", "/v1beta/models/gemini-2.5-flash:generateContent", None, headers, sent))[0]
            != 401
            and r
        )
    )
    found = re.search(REFUSAL, json.loads(raw)["error"]["message"])
    assert status == 429 and found, raw
    b64 = -(-len(base64.b64encode(data)) // 4)
    expected = -(-len(sent) // 4) * IN_25 + CAP * OUT_25 + (40 * 258 - b64) * IN_25
    assert int(Decimal(found[1]) * USD) == expected


def test_a_pdf_of_stream_marks_is_read_in_little_cpu(server):
    """770 KB of ``stream`` keywords and one ``endstream`` at the end (under the size a Gemini 2.5 PDF is
    read at): each mark looked for its end from where it began, 30 CPU seconds on the request path. Read
    once through, and held as an unreadable PDF: Gemini's page limit."""
    data = b"%PDF-1.7\n" + b"stream\n" * 110_000 + b"endstream\n"
    body = asking(inline(data))
    before = server.cpu_seconds()
    hold = held(server, "gemini-2.5-flash", body)
    assert server.cpu_seconds() - before < 2.0
    b64 = -(-len(base64.b64encode(data)) // 4)
    assert hold == bytes_hold(body, IN_25, OUT_25) + (1000 * 258 - b64) * IN_25


def with_decoy(data: bytes) -> bytes:
    """``data`` with one page object in the open besides its own (a comment here: the counter reads bytes)."""
    return data.replace(b"%PDF-1.5\n", b"%PDF-1.5\n% << /Type /Page >>\n", 1)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(with_decoy(pdf(900, packed=True)), id="one-page-in-the-open-the-rest-packed"),
        pytest.param(
            with_decoy(pdf(900).replace(b"/Type /Page ", b"/Type /P#61ge ").replace(b"/Count 900", b"/C#6funt 900")),
            id="escaped-names",
        ),
        pytest.param(
            with_decoy(pdf(900).replace(b"/Type /Page ", b"/Type%x\n/Page ").replace(b"/Count", b"/Count%\n")),
            id="comments-between",
        ),
    ],
)
def test_a_pdf_cannot_show_one_page_and_hide_the_rest(server, data):
    """A PDF of 900 pages made to look like one (a page object in the open while the rest are packed in
    an object stream; its names spelled with ``#`` escapes, as PDF names may be; a comment where
    whitespace goes) is held at least at its 900 pages, not one: a burst would overspend a budget."""
    body = asking(inline(data))
    b64 = -(-len(base64.b64encode(data)) // 4)
    assert held(server, "gemini-2.5-flash", body) >= bytes_hold(body, IN_25, OUT_25) + (900 * 258 - b64) * IN_25


def test_many_small_pdfs_that_inflate_to_much_are_read_in_little_cpu(server):
    """100 PDFs of 31 KB in one 4 MB request, each an object stream inflating to 31 MB (each PDF
    had its own 32 MB to inflate: 7 CPU seconds a worst case, more for a 32 MB body): one budget of
    inflation for the request; the PDFs it does not reach are held as unreadable, at Gemini's limit."""
    stream = zlib.compress(b" " * (31 << 20), 9)
    bomb = b"%PDF-1.5\n3 0 obj\n<< /Type /ObjStm /Filter /FlateDecode >>\nstream\n" + stream + b"\nendstream\n"
    body = asking(inline(bomb))
    body["contents"][0]["parts"] *= 100
    before = server.cpu_seconds()
    hold = held(server, "gemini-2.5-flash", body)
    assert server.cpu_seconds() - before < 2.0
    b64 = -(-len(base64.b64encode(bomb)) // 4)
    assert hold == bytes_hold(body, IN_25, OUT_25) + 100 * (1000 * 258 - b64) * IN_25

"""A prompt naming a PDF uploaded through Stockyard is held at the pages Stockyard counted as it passed.

Gemini's Files API upload comes in chunks (google-genai's resumable protocol, raw HTTP as the SDK sends
it); OpenAI's ``/v1/files`` and Anthropic's Files API take a form (the official SDKs). Stockyard counts
a PDF's pages as the bytes are spooled (``pdfpages.PageCounter``) and keeps them with the owned file
(migration 0035): a ``fileData`` PDF naming it was held at Gemini's 1,000-page limit (258,000 tokens on
Gemini 2.5: ~$0.08, ~$2.24 on Gemini 3 Pro), so a key with a small budget could not use it at all; an
OpenAI ``file_id`` or a Claude ``document`` file source was held as one image, far below what its pages
cost. One whose pages cannot be counted is held at the limit, and the log says so. The hold is read
from the 429 a key with one µ¢ gets.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from decimal import Decimal

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from test_gemini_files import chunk, upload, upload_url
from test_gemini_pdf_hold import CAP, IN_25, OUT_25, REFUSAL, USD, pdf
from test_pdf_readers import CATALOG, PAGE, repeated_kids, updated, with_table

GEMINI_KEY = "AIza-uploadpdf-0123456789abcdefPROVIDERSECRET"
ANTHROPIC_KEY = "sk-ant-uploadpdf-0123456789PROVIDERSECRET"
ADMIN = "admin-key-for-uploaded-pdf-tests-0123456789"
TEXT, CLAUDE_IMAGE, MINI_IMAGE = 3000, 1600, 48169
HAIKU_IN, HAIKU_OUT = 125, 500  # claude-haiku-4-5, µ¢ a token (its dearest input: a cache write)
MINI_IN, MINI_OUT = 15, 60  # gpt-4o-mini


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(
        cache_home,
        mock,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_ADMIN_KEY=ADMIN,
    )
    with served(pyz_path, tmp_path_factory, "uploadpdf", env, never_logged=(GEMINI_KEY,)) as srv:
        yield srv


_names = iter(range(1_000_000))


def tight_key(server: ServerProcess) -> str:
    """A new key with a budget of one µ¢: every priced request is refused, saying what it may cost."""
    fields = {"name": f"up{next(_names)}", "budget_usd": "0.00000001", "budget_period": "total"}
    status, _, made = server.request("POST", "/api/keys", fields, headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 201, made
    return json.loads(made)["key"]


def hold(server: ServerProcess, path: str, body: dict, headers: dict[str, str]) -> int:
    """What a request may cost, from its 429."""
    status, _, raw = server.request("POST", path, body, headers)
    found = re.search(REFUSAL, json.loads(raw)["error"]["message"])
    assert status == 429 and found, raw
    return int(Decimal(found[1]) * USD)


def bytes_hold(body: dict, rate_in: int, rate_out: int) -> int:
    return -(-len(json.dumps(body)) // 4) * rate_in + CAP * rate_out


def gemini_upload(server: ServerProcess, key: str, data: bytes, piece: int) -> dict:
    server.keys = {"k": key}
    return upload(server, "k", data, piece=piece)


def gemini_hold(server: ServerProcess, key: str, made: dict) -> tuple[int, dict]:
    part = {"fileData": {"mimeType": "application/pdf", "fileUri": made["uri"]}}
    body = {
        "contents": [{"role": "user", "parts": [part, {"text": "Summarise this."}]}],
        "generationConfig": {"maxOutputTokens": CAP},
    }
    return hold(server, "/v1beta/models/gemini-2.5-flash:generateContent", body, {"x-goog-api-key": key}), body


@pytest.mark.parametrize("packed", [False, True])
def test_a_gemini_upload_in_chunks_is_held_at_its_pages(server, packed):
    """300 pages sent in 4,000-byte chunks (marks, counts and the object stream split between them):
    held at 300 pages (77,400 tokens), not 1,000 (258,000)."""
    key = tight_key(server)
    data = pdf(300, packed)
    made = gemini_upload(server, key, data, piece=4000 if not packed else 300)
    assert len(data) > 3 * (4000 if not packed else 300)  # it did come in several chunks
    held, body = gemini_hold(server, key, made)
    assert held == bytes_hold(body, IN_25, OUT_25) + 300 * 258 * IN_25


def test_a_gemini_pdf_whose_pages_cannot_be_counted_is_held_at_the_limit_and_the_log_says_so(server):
    key = tight_key(server)
    made = gemini_upload(server, key, b"%PDF-1.7\n" + os.urandom(9000) + b"\n%%EOF\n", piece=4000)
    held, body = gemini_hold(server, key, made)
    assert held == bytes_hold(body, IN_25, OUT_25) + 1000 * 258 * IN_25
    wait_for(lambda: "could not be counted" in server.log and made["name"] in server.log, what="the log line")


def test_a_gemini_upload_whose_page_tree_repeats_a_kid_is_held_at_the_limit(server):
    """900 references to one page in its /Kids, in 1,000-byte chunks (the array split between them, the
    kids read kept in the database): readers walk 900 pages; it was held at the one page object."""
    key = tight_key(server)
    data = repeated_kids(900, b"1")
    made = gemini_upload(server, key, data, piece=1000)
    held, body = gemini_hold(server, key, made)
    assert held == bytes_hold(body, IN_25, OUT_25) + 1000 * 258 * IN_25
    wait_for(lambda: "/Kids repeat a page" in server.log and made["name"] in server.log, what="the log line")


ADDED = {
    2: b"<< /Type /Pages /Kids [%s] /Count 11 >>" % b" ".join(b"%d 0 R" % n for n in [3, *range(4, 14)]),
    **{number: PAGE for number in range(4, 14)},
}


@pytest.mark.parametrize(
    ("objects", "pages"),
    [
        (ADDED, 11),  # the node written again, ten pages added (more than the image the reference is held as)
        ({2: b"<< /Type /Pages /Kids [3 0 R 4 0 R] >>", 4: b"<< /Type /Pages /Kids [3 0 R] >>"}, 1000),
    ],
    ids=["pages-added", "a-second-node-naming-a-page"],
)
def test_a_gemini_upload_of_an_updated_pdf_is_held_at_the_pages_readers_see(server, objects, pages):
    """A PDF saved with an incremental update rewriting its page tree's node (Acrobat's Save), in 100-byte
    chunks: held at its 11 pages (it was held at 1,000: a kid named again); an update adding a second node
    naming a page readers then walk twice is held at the limit."""
    key = tight_key(server)
    data = updated(with_table({1: CATALOG, 2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: PAGE}), objects)
    made = gemini_upload(server, key, data, piece=100)
    held, body = gemini_hold(server, key, made)
    assert held == bytes_hold(body, IN_25, OUT_25) + pages * 258 * IN_25


def test_a_gemini_file_that_is_not_a_pdf_keeps_the_limit(server):
    """A video named as a PDF: Stockyard counted no pages, so it is held as before, at the limit."""
    key = tight_key(server)
    made = gemini_upload(server, key, b"\x00\x00\x00\x18ftypmp42" + bytes(6000), piece=4000)
    held, body = gemini_hold(server, key, made)
    assert held == bytes_hold(body, IN_25, OUT_25) + 1000 * 258 * IN_25


def test_an_openai_file_id_pdf_is_held_at_its_pages(server):
    """Uploaded with the openai SDK; a chat ``file`` part naming it was held as one image (48,169 tokens
    on gpt-4o-mini): now 20 pages of text and image (1,023,380 tokens)."""
    key = tight_key(server)
    made = server.openai(key).files.create(file=("r.pdf", io.BytesIO(pdf(20, packed=True))), purpose="user_data")
    content = [{"type": "file", "file": {"file_id": made.id}}, {"type": "text", "text": "Sum up."}]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": CAP}
    held = hold(server, "/v1/chat/completions", body, {"Authorization": f"Bearer {key}"})
    assert held == bytes_hold(body, MINI_IN, MINI_OUT) + 20 * (TEXT + MINI_IMAGE) * MINI_IN
    item = {"role": "user", "content": [{"type": "input_file", "file_id": made.id}]}
    body = {"model": "gpt-4o-mini", "input": [item], "max_output_tokens": CAP, "store": False}
    held = hold(server, "/v1/responses", body, {"Authorization": f"Bearer {key}"})
    assert held == bytes_hold(body, MINI_IN, MINI_OUT) + 20 * (TEXT + MINI_IMAGE) * MINI_IN


def test_an_openai_file_that_is_not_a_pdf_is_held_as_one_image(server):
    key = tight_key(server)
    made = server.openai(key).files.create(file=("notes.txt", io.BytesIO(b"plain notes")), purpose="user_data")
    content = [{"type": "file", "file": {"file_id": made.id}}, {"type": "text", "text": "Sum up."}]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": CAP}
    held = hold(server, "/v1/chat/completions", body, {"Authorization": f"Bearer {key}"})
    assert held == bytes_hold(body, MINI_IN, MINI_OUT) + MINI_IMAGE * MINI_IN


def test_an_anthropic_file_pdf_is_held_at_its_pages(server):
    """Uploaded with the anthropic SDK; a ``document`` naming it was held as one image (1,600 tokens)."""
    key = tight_key(server)
    made = server.anthropic(key).beta.files.upload(file=("r.pdf", pdf(8), "application/pdf"))
    document = {"type": "document", "source": {"type": "file", "file_id": made.id}}
    content = [document, {"type": "text", "text": "Summarise this."}]
    body = {"model": "claude-haiku-4-5", "max_tokens": CAP, "messages": [{"role": "user", "content": content}]}
    headers = {"x-api-key": key, "anthropic-beta": "files-api-2025-04-14"}
    held = hold(server, "/v1/messages", body, headers)
    assert held == bytes_hold(body, HAIKU_IN, HAIKU_OUT) + 8 * (TEXT + CLAUDE_IMAGE) * HAIKU_IN


def test_an_upload_whose_chunks_go_to_two_replicas_is_counted_whole(pyz_path, cache_home, mock, pg_url):
    """PostgreSQL replicas: the chunks alternate between two servers, each going on from the count
    the other kept (``gemini_uploads.pages_state``); the other replica holds a prompt at the pages."""
    env = mock_env(cache_home, mock, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=mock.url, STOCKYARD_ADMIN_KEY=ADMIN)
    replicas = [ServerProcess(pyz_path, pg_url, env).start() for _ in range(2)]  # type: ignore[arg-type]
    try:
        key = tight_key(replicas[0])
        unknown = {"x-goog-api-key": "sk-sy-unknown"}  # refused once the other replica knows keys exist
        wait_for(lambda: replicas[1].request("GET", "/v1beta/files", headers=unknown)[0] == 401, what="keys")
        wait_for(lambda: replicas[1].request("GET", "/v1beta/files", headers={"x-goog-api-key": key})[0] == 200)
        data = pdf(300, packed=True)
        replicas[0].keys = {"k": key}
        target = upload_url(replicas[0], "k", len(data))
        piece, offset = 250, 0
        while offset < len(data):
            part = data[offset : offset + piece]
            last = offset + len(part) >= len(data)
            status, _, raw = chunk(replicas[(offset // piece + 1) % 2], target, part, offset, last)
            assert status == 200, raw
            offset += len(part)
        made = json.loads(raw)["file"]
        held, body = gemini_hold(replicas[1], key, made)
        assert held == bytes_hold(body, IN_25, OUT_25) + 300 * 258 * IN_25
    finally:
        for replica in replicas:
            replica.stop()
    assert all("Traceback" not in replica.log for replica in replicas)


def test_a_message_batch_holds_its_pdfs_at_their_pages(server):
    """A Claude message batch: an inline 12-page PDF and an uploaded 8-page one, each page its text and an
    image at the batch price (half), where the batch held their bytes and one image."""
    key = tight_key(server)
    uploaded = server.anthropic(key).beta.files.upload(file=("r.pdf", pdf(8), "application/pdf"))
    inline = {"type": "base64", "media_type": "application/pdf", "data": base64.b64encode(pdf(12)).decode()}
    requests = [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": CAP,
                "messages": [{"role": "user", "content": [{"type": "document", "source": source}]}],
            },
        }
        for i, source in enumerate([inline, {"type": "file", "file_id": uploaded.id}])
    ]
    headers = {"x-api-key": key, "anthropic-beta": "files-api-2025-04-14"}
    # one batch each: a batch is refused at the first request its budget cannot take (this one's: the first)
    inline_held, uploaded_held = (hold(server, "/v1/messages/batches", {"requests": [r]}, headers) for r in requests)
    assert inline_held >= 12 * (TEXT + CLAUDE_IMAGE) * HAIKU_IN // 2
    assert uploaded_held >= 8 * (TEXT + CLAUDE_IMAGE) * HAIKU_IN // 2


def test_an_openai_batch_line_naming_an_uploaded_pdf_holds_its_pages(server):
    key = tight_key(server)
    client = server.openai(key)
    made = client.files.create(file=("r.pdf", io.BytesIO(pdf(20, packed=True))), purpose="user_data")
    content = [{"type": "file", "file": {"file_id": made.id}}, {"type": "text", "text": "Sum up."}]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": CAP}
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}
    batch_file = client.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")), purpose="batch")
    fields = {"input_file_id": batch_file.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    held = hold(server, "/v1/batches", fields, {"Authorization": f"Bearer {key}"})
    assert held >= 20 * (TEXT + MINI_IMAGE) * MINI_IN // 2

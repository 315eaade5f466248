"""Two holds that missed what a body names.

1. A Gemini file named by URL in an OpenAI-shaped body (Google's OpenAI-compatible endpoint: a chat
   ``image_url``, a Responses ``input_file``'s ``file_url``, …) is checked to be the key's, but its
   pages (counted as the PDF was uploaded) were not held: a 300-page PDF was held as one image.
2. A batch line naming a conversation item by the id Stockyard minted (``msg_sy…``) went to the
   provider as sent (Stockyard relays a batch file's bytes; it never rewrites a line), which knows no
   such id: such a line is refused when the file is uploaded or the batch made.

One real server over the mock upstream; the official ``openai`` SDK as the client; a budget's 429
says what a request may cost (its hold).
"""

from __future__ import annotations

import io
import json
import re
from decimal import Decimal

import openai
import pytest
from conftest import ServerProcess, mock_env, wait_for
from module_helpers import api, key_traces, new_key
from test_gemini_files import upload
from test_gemini_pdf_hold import CAP, IN_25, OUT_25, REFUSAL, USD, pdf

ADMIN = "admin-key-for-hold37-0123456789abcdef"
GOOGLE = "googlecompat"  # an openai-compatible provider standing for Google's OpenAI-compatible endpoint
MODEL = f"{GOOGLE}/gemini-2.5-flash"
PAGES, PAGE_25, IMAGE = 300, 258, 1600  # Gemini 2.5 bills a PDF page as 258 tokens; a reference is held as an image


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    gemini = {"GEMINI_API_KEY": "AIza-hold37-0123456789abcdef", "GEMINI_BASE_URL": mock.url}
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_BATCH_POLL="off", **gemini)
    env["STOCKYARD_ENCRYPTION_KEY"] = "hold37-encryption-secret-0123456789abcdefghij"
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp("hold37") / "stockyard.db", env)
    added = srv.cli(  # the mock's OpenAI chat answers for Google's OpenAI-compatible endpoint
        *("providers", "add", GOOGLE, "--kind", "openai-compatible", "--base-url", mock.url + "/v1"),
        *("--models", "gemini-", "--key-stdin"),
        input="AIza-hold37-compat-0123456789abcdef",
    )
    assert added.returncode == 0, added.stderr
    srv.keys = srv.create_keys({"alice": []})
    srv.start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log


def budgeted(server: ServerProcess, usd: str) -> tuple[str, str]:
    """A new key with a ``total`` budget of ``usd``: its secret and name."""
    return new_key(server, ADMIN, budget_usd=usd, budget_period="total")


def uploaded_pdf(server: ServerProcess, secret: str) -> dict:
    """A 300-page PDF uploaded through Stockyard's Gemini Files API (google-genai's resumable upload)."""
    return uploaded(server, secret, pdf(PAGES, packed=True), "application/pdf")


def uploaded_notes(server: ServerProcess, secret: str) -> dict:
    """A text file uploaded the same way: no pages."""
    return uploaded(server, secret, b"notes " * 300, "text/plain")


def uploaded(server: ServerProcess, secret: str, data: bytes, kind: str) -> dict:
    server.keys = {**server.keys, secret: secret}
    return upload(server, secret, data, mimeType=kind)


def bodies(made: dict) -> list[tuple[str, dict]]:
    """Each way an OpenAI-shaped body names the Gemini file by URL, with an output cap."""
    chat = [{"type": "image_url", "image_url": {"url": made["uri"]}}, {"type": "text", "text": "Sum up."}]
    named = [{"type": "image_url", "image_url": {"url": made["name"]}}, {"type": "text", "text": "Sum up."}]
    as_file = [{"type": "input_file", "file_url": made["uri"]}, {"type": "input_text", "text": "Sum up."}]
    return [
        ("/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": chat}], "max_tokens": CAP}),
        ("/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": named}], "max_tokens": CAP}),
        (
            "/responses",
            {"model": MODEL, "input": [{"role": "user", "content": as_file}], "max_output_tokens": CAP, "store": False},
        ),
    ]


def hold_of(refusal: openai.RateLimitError) -> int:
    found = re.search(REFUSAL, refusal.body["message"])
    assert found, refusal.body
    return int(Decimal(found[1]) * USD)


def refused_hold(server: ServerProcess, mock, secret: str, path: str, body: dict) -> int:
    """What ``body`` may cost, from the budget's 429, which comes before the provider."""
    before = len(mock.requests)
    with pytest.raises(openai.RateLimitError) as refused:
        server.openai(secret).post(path, body=body, cast_to=object)
    assert refused.value.body["code"] == "budget_exceeded", refused.value.body
    assert len(mock.requests) == before
    return hold_of(refused.value)


def test_a_gemini_pdf_named_by_url_is_held_at_its_pages(server, mock):
    """The hold a one-µ¢ key is refused with: a text file (its URI as long) is held as one image; the
    300-page PDF at its pages at Gemini's rate, less that image — as a native ``fileData`` part naming
    it is held (``test_uploaded_pdf_hold``). Was: as the text file."""
    secret, _ = budgeted(server, "0.00000001")
    made = uploaded_pdf(server, secret)
    other = uploaded_notes(server, secret)
    assert len(other["uri"]) == len(made["uri"]) and len(other["name"]) == len(made["name"])
    for (path, body), (_, plain) in zip(bodies(made), bodies(other), strict=True):
        text = refused_hold(server, mock, secret, path, plain)
        assert refused_hold(server, mock, secret, path, body) == text + (PAGES * PAGE_25 - IMAGE) * IN_25, path


def test_a_budget_for_the_text_but_not_the_pages_is_refused_and_one_for_both_is_served(server, mock):
    """Between what the text costs and what the pages do: refused before the provider (it was served).
    A budget that covers the pages: served, and its spend is the billed cost."""
    tight, _ = budgeted(server, "0.00000001")
    path, plain = bodies(uploaded_notes(server, tight))[0]
    room = refused_hold(server, mock, tight, path, plain) + 1000 * IN_25  # the text and an image, and then some
    secret, name = budgeted(server, str(Decimal(room) / USD))
    made = uploaded_pdf(server, secret)
    path, body = bodies(made)[0]
    assert len(json.dumps(body)) == len(json.dumps(plain))
    refused_hold(server, mock, secret, path, body)  # 300 pages are 77,400 tokens

    secret, name = budgeted(server, "1.00")
    made = uploaded_pdf(server, secret)
    path, body = bodies(made)[0]
    answer = server.openai(secret).post(path, body=body, cast_to=object)
    assert answer["choices"][0]["message"]["content"], answer
    sent = [r for r in mock.requests if r.path == "/v1/chat/completions" and made["uri"].encode() in r.body]
    assert len(sent) == 1
    (trace,) = wait_for(lambda: [t for t in key_traces(server, name) if t["endpoint"] == "chat"], what="its trace")
    assert trace["status"] == 200 and trace["cost_uc"] > 0, trace
    wait_for(lambda: api(server, "GET", f"/api/keys/{name}", admin=ADMIN)[1]["spend_uc"] == trace["cost_uc"])


def test_a_batch_line_naming_a_gemini_pdf_by_url_holds_its_pages(server):
    """A batch line for Google's OpenAI-compatible batches holds the file's pages too (at half price)."""
    secret, _ = budgeted(server, "0.00000001")
    made = uploaded_pdf(server, secret)
    _, body = bodies(made)[0]
    body = {**body, "model": "gemini-2.5-flash"}
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}
    client = server.openai(secret)
    batch_file = client.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")), purpose="batch")
    fields = {"input_file_id": batch_file.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    with pytest.raises(openai.RateLimitError) as refused:
        client.batches.create(**fields)
    assert hold_of(refused.value) >= PAGES * PAGE_25 * IN_25 // 2


# -- 2. a batch line naming a conversation item by the id Stockyard minted ---------------------------


def reference_line(item_id: str) -> bytes:
    """A batch file of one ``/v1/responses`` line sending an ``item_reference`` to ``item_id``."""
    body = {
        "model": "gpt-4o-mini",
        "input": [{"type": "item_reference", "id": item_id}, {"role": "user", "content": "Go on."}],
    }
    return json.dumps({"custom_id": "r", "method": "POST", "url": "/v1/responses", "body": body}).encode() + b"\n"


def test_a_batch_line_naming_a_minted_conversation_item_is_refused_naming_the_line(server, mock):
    """Stockyard relays a batch file's bytes as uploaded (and reads back one uploaded elsewhere at the
    batch's create): it cannot put the stored item in a line, and the provider knows no ``msg_sy…``
    id. The line is refused, at the upload and at the create, the same for the key's own item,
    another key's and one no conversation holds (nothing is looked up: nothing is told)."""
    alice = server.openai("alice")
    conversation = alice.conversations.create(items=[{"role": "user", "content": "alice's note"}])
    own = alice.conversations.items.list(conversation.id).data[0].id
    secret, _ = new_key(server, ADMIN)
    bob = server.openai(secret)
    theirs = bob.conversations.create(items=[{"role": "user", "content": "bob's note"}])
    bobs = bob.conversations.items.list(theirs.id).data[0].id
    for item_id in (own, bobs, "msg_sy" + "0" * 32):
        before = len(mock.requests)
        with pytest.raises(openai.BadRequestError) as refused:
            alice.files.create(file=("in.jsonl", io.BytesIO(reference_line(item_id))), purpose="batch")
        error = refused.value.body
        assert error["code"] == "conversation_item_in_batch" and error["param"] == "file", error
        assert "line 1 of the batch file" in error["message"] and item_id in error["message"], error
        assert "send the item itself" in error["message"], error
        assert not [r for r in mock.requests[before:] if r.path == "/v1/files"]
    listed = alice.conversations.items.list(conversation.id).data[0].model_dump(exclude_none=True)
    carried = {"custom_id": "c", "method": "POST", "url": "/v1/responses", "body": {"model": "gpt-4o-mini"}}
    carried["body"]["input"] = [listed, {"role": "user", "content": "Go on."}]  # the item as listed: its id
    with pytest.raises(openai.BadRequestError) as refused:
        alice.files.create(file=("in.jsonl", io.BytesIO(json.dumps(carried).encode())), purpose="batch")
    error = refused.value.body
    assert error["code"] == "conversation_item_in_batch" and "input[0] carries the id" in error["message"], error
    assert "send the item without its 'id'" in error["message"], error
    unchecked = alice.files.create(file=("in.jsonl", io.BytesIO(reference_line(own))), purpose="user_data")
    before = len(mock.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        alice.batches.create(input_file_id=unchecked.id, endpoint="/v1/responses", completion_window="24h")
    assert refused.value.body["code"] == "conversation_item_in_batch", refused.value.body
    assert not [r for r in mock.requests[before:] if r.method == "POST" and r.path == "/v1/batches"]


def test_a_gemini_pdf_named_by_a_claude_image_url_is_held_at_its_pages(server, mock):
    """A Messages body routed to Google's OpenAI-compatible endpoint is translated to chat, its image
    ``url`` source to an ``image_url`` part Google reads the file from: the PDF's pages are held as in
    an OpenAI-shaped body (its ownership is checked there: test_review37)."""
    import anthropic

    secret, _ = budgeted(server, "0.00000001")
    holds = []
    for made in (uploaded_pdf(server, secret), uploaded_notes(server, secret)):
        image = {"type": "image", "source": {"type": "url", "url": made["uri"]}}
        content = [image, {"type": "text", "text": "Sum up."}]
        before = len(mock.requests)
        with pytest.raises(anthropic.RateLimitError) as refused:
            server.anthropic(secret).messages.create(
                model=MODEL, max_tokens=CAP, messages=[{"role": "user", "content": content}]
            )
        assert len(mock.requests) == before
        found = re.search(REFUSAL, refused.value.body["error"]["message"])
        assert found, refused.value.body
        holds.append(int(Decimal(found[1]) * USD))
    assert holds[0] == holds[1] + (PAGES * PAGE_25 - IMAGE) * IN_25, holds


def test_a_gemini_pdf_named_under_a_camel_case_url_member_is_held_at_its_pages(server, mock):
    """Google's JSON may read ``imageUrl`` as ``image_url`` (proto-JSON rules take both): a PDF named
    there is held at its pages as under ``image_url`` (test_iso37: it is checked to be the key's). Was:
    as the text file."""
    secret, _ = budgeted(server, "0.00000001")
    made, other = uploaded_pdf(server, secret), uploaded_notes(server, secret)
    for path, part in [
        ("/chat/completions", {"type": "image_url", "imageUrl": "URI"}),
        ("/chat/completions", {"type": "file", "file": {"fileData": "URI"}}),
        ("/responses", {"type": "input_file", "fileUrl": "URI"}),
    ]:
        holds = []
        for uri in (made["uri"], other["uri"]):
            named = json.loads(json.dumps(part).replace('"URI"', json.dumps(uri)))
            content = [named, {"type": "text" if path == "/chat/completions" else "input_text", "text": "Sum up."}]
            body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": CAP}
            if path == "/responses":
                body = {"model": MODEL, "input": [{"role": "user", "content": content}], "max_output_tokens": CAP}
            holds.append(refused_hold(server, mock, secret, path, body))
        assert holds[0] - holds[1] >= (PAGES * PAGE_25 - IMAGE) * IN_25, (part, holds)

"""A PDF sent to Claude or an OpenAI model is held at its pages, each its text and an image, not at its bytes.

Claude reads each page of a PDF as its extracted text (1,500-3,000 tokens by the page's density,
Anthropic's PDF support page) and an image of the page; OpenAI's vision models likewise ("both the
extracted text and an image of each page"). A short PDF of small pages was held at its base64 at
four bytes a token: far below what a dense one costs, so a burst of them could overspend a budget.
Now each page holds 3,000 tokens of text and the model's largest image (1,600 on Claude, the price
table's ``image_input_tokens`` where it has one: gpt-4o-mini 48,169). The hold is read from the 429
a key with one µ¢ gets ("may cost up to $…").
"""

from __future__ import annotations

import base64
import json
import re
import threading
from decimal import Decimal

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import Reply
from test_gemini_pdf_hold import CAP, REFUSAL, USD, refused
from test_gemini_pdf_hold import pdf as make_pdf

ANTHROPIC_KEY = "sk-ant-pdfhold-0123456789PROVIDERSECRET"
ADMIN = "admin-key-for-pdf-hold-tests-0123456789"
TEXT, CLAUDE_IMAGE, MINI_IMAGE = 3000, 1600, 48169  # tokens a page's text; a page image on Claude, gpt-4o-mini
HAIKU_IN, HAIKU_OUT = 125, 500  # claude-haiku-4-5, µ¢ a token: its dearest input (a cache write) and output
MINI_IN, MINI_OUT = 15, 60  # gpt-4o-mini


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(
        cache_home, mock, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url, STOCKYARD_ADMIN_KEY=ADMIN
    )
    with served(pyz_path, tmp_path_factory, "pdfpages", env) as srv:
        yield srv


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bytes_hold(body: dict, rate_in: int, rate_out: int) -> int:
    """The body's bytes at four a token, and the output cap: all a budget held for a PDF before."""
    return -(-len(json.dumps(body)) // 4) * rate_in + CAP * rate_out


def claude_body(data: bytes) -> dict:
    document = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": b64(data)}}
    content = [document, {"type": "text", "text": "Summarise this."}]
    return {"model": "claude-haiku-4-5", "max_tokens": CAP, "messages": [{"role": "user", "content": content}]}


def test_a_claude_document_is_held_at_its_pages(server):
    """12 small pages: ~2 KB of base64 (~550 tokens by its bytes), 55,200 tokens as Claude may bill them."""
    data = make_pdf(12)
    body = claude_body(data)
    counted = -(-len(b64(data)) // 4)
    assert counted < 12 * (TEXT + CLAUDE_IMAGE)  # the defect: its bytes hold far less than its pages cost
    expected = bytes_hold(body, HAIKU_IN, HAIKU_OUT) + (12 * (TEXT + CLAUDE_IMAGE) - counted) * HAIKU_IN
    assert refused(server, "/v1/messages", body, "x-api-key") == expected


@pytest.mark.parametrize("packed", [False, True])
def test_a_chat_file_pdf_is_held_at_its_pages_on_openai(server, packed):
    """A chat ``file`` part's data URL, on gpt-4o-mini: each page its text and the model's largest image."""
    data = make_pdf(5, packed)
    url = "data:application/pdf;base64," + b64(data)
    content = [{"type": "file", "file": {"filename": "r.pdf", "file_data": url}}, {"type": "text", "text": "Sum up."}]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": CAP}
    counted = -(-len(b64(data)) // 4)
    expected = bytes_hold(body, MINI_IN, MINI_OUT) + (5 * (TEXT + MINI_IMAGE) - counted) * MINI_IN
    assert refused(server, "/v1/chat/completions", body, "Authorization", "Bearer ") == expected


def test_a_responses_input_file_pdf_is_held_at_its_pages(server):
    data = make_pdf(3)
    part = {"type": "input_file", "filename": "r.pdf", "file_data": "data:application/pdf;base64," + b64(data)}
    item = {"role": "user", "content": [part, {"type": "input_text", "text": "Sum up."}]}
    body = {"model": "gpt-4o-mini", "input": [item], "max_output_tokens": CAP, "store": False}
    counted = -(-len(b64(data)) // 4)
    expected = bytes_hold(body, MINI_IN, MINI_OUT) + (3 * (TEXT + MINI_IMAGE) - counted) * MINI_IN
    assert refused(server, "/v1/responses", body, "Authorization", "Bearer ") == expected


def test_a_pdf_that_is_not_one_is_held_at_its_bytes(server):
    """Another media type is not read as a PDF: the same body with a plain-text document holds its bytes."""
    body = {"model": "claude-haiku-4-5", "max_tokens": CAP, "messages": [{"role": "user", "content": "Hi there."}]}
    assert refused(server, "/v1/messages", body, "x-api-key") == bytes_hold(body, HAIKU_IN, HAIKU_OUT)


def claude_answer(input_tokens: int) -> dict:
    return {
        "id": "msg_pdf",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "A summary."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 5},
    }


def test_a_burst_of_dense_pdfs_cannot_overspend_a_budget(server, mock):
    """Five Claude requests at once, each a 40-page PDF billed as dense pages (40 × 4,600 tokens,
    $0.184 each), under a $0.40 budget. Held at their bytes (~$0.001 each) all five went upstream and
    $0.92 was spent; held at their pages (~$0.23 each) one goes while the others are refused."""
    status, _, made = server.request(
        "POST",
        "/api/keys",
        {"name": "pdf-burst", "budget_usd": "0.40", "budget_period": "total"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert status == 201, made
    secret, key_id = json.loads(made)["key"], json.loads(made)["id"]
    client = server.anthropic(secret)
    data, billed = make_pdf(40), 40 * (TEXT + CLAUDE_IMAGE)
    release = threading.Event()
    replies = [Reply(json=claude_answer(billed), held=release, hang_started=threading.Event()) for _ in range(5)]
    mock.clear_replies()
    mock.enqueue(*replies)
    outcomes: list[str] = []

    def send() -> None:
        import anthropic

        try:
            client.messages.create(**claude_body(data))
            outcomes.append("answered")
        except anthropic.RateLimitError as err:
            assert "budget" in str(err)
            outcomes.append("refused")

    threads = [threading.Thread(target=send) for _ in range(5)]
    try:
        for thread in threads:
            thread.start()
        started = lambda: sum(r.hang_started.is_set() for r in replies)  # noqa: E731
        wait_for(lambda: outcomes.count("refused") + started() == 5, what="each request refused or upstream")
    finally:
        release.set()
        for thread in threads:
            thread.join(30)
        mock.clear_replies()
    assert outcomes.count("answered") == 1, outcomes
    answered = "SELECT count(*) AS n FROM traces WHERE key_id = ? AND outcome = 'ok'"
    wait_for(lambda: server.db_rows(answered, (key_id,))[0]["n"] >= 1, what="the answer's trace")
    rows = server.db_rows("SELECT COALESCE(SUM(cost_uc), 0) AS s FROM traces WHERE key_id = ?", (key_id,))
    assert rows[0]["s"] == billed * 100 + 5 * 500  # one answer's cost: within the $0.40 budget
    assert rows[0]["s"] <= 40_000_000


def test_a_pdf_in_a_conversations_items_is_held_at_its_pages(server):
    """A turn of a conversation Stockyard keeps: its items are put in front of the input (not in the
    client's bytes), and the PDF an earlier item carries is billed again, so held at its pages."""
    status, _, made = server.request(
        "POST",
        "/api/keys",
        {"name": "conv-pdf", "budget_usd": "0.00000001", "budget_period": "total"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    client = server.openai(json.loads(made)["key"])
    url = "data:application/pdf;base64," + b64(make_pdf(12))
    item = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_file", "filename": "r.pdf", "file_data": url}],
    }
    conversation = client.conversations.create(items=[item])
    import openai

    with pytest.raises(openai.RateLimitError) as refused_turn:
        client.responses.create(
            model="claude-haiku-4-5", conversation=conversation.id, input="Sum it up.", max_output_tokens=CAP
        )
    found = re.search(REFUSAL, str(refused_turn.value))
    assert found, str(refused_turn.value)
    assert int(Decimal(found[1]) * USD) >= 12 * (TEXT + CLAUDE_IMAGE) * HAIKU_IN

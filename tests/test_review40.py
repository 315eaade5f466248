"""What one request body can cost the server (review40): bodies within the size and JSON-value limits
whose handling cost many times their parse, refused all the same — by a key whose $0.01 budget
allows none of them. Each is measured in the server process's CPU (``ServerProcess.cpu_seconds``)
against a yardstick: the same body naming ``model`` twice, refused once it is parsed."""

from __future__ import annotations

import json
import random
import sys
import time
import types
from typing import Callable

import pytest
from conftest import ServerProcess
from module_helpers import server_fixture

from stockyard import estimate, pdfpages
from stockyard.httpio import MAX_JSON_VALUES, json_object
from stockyard.modules import redact

server = server_fixture(
    "review40",
    keys={
        "penny": ["--budget-usd", "0.01", "--budget-period", "total"],
        "broke": ["--budget-usd", "0", "--budget-period", "total"],
        "open": [],
    },
    ANTHROPIC_API_KEY="sk-ant-review40-0123456789",
    ANTHROPIC_BASE_URL="http://127.0.0.1:9",  # closed: a batch checked in full is a 502 at its send
)


def cpu_of(server: ServerProcess, raw: bytes, status: int) -> float:
    """The server's CPU for one chat request of ``raw`` by the $0.01 key, answered with ``status``."""
    started = server.cpu_seconds()
    headers = {"Authorization": f"Bearer {server.keys['penny']}"}
    got, _, answer = server.request("POST", "/v1/chat/completions", raw=raw, headers=headers)
    assert got == status, answer[:300]
    return server.cpu_seconds() - started


def against_yardstick(server: ServerProcess, raw: bytes, status: int) -> tuple[float, float]:
    """(the CPU of ``raw``, of the yardstick: ``raw`` naming ``model`` twice, a 400 once parsed), the
    least of two each: a collection of the parser's garbage lands in one or the other."""
    twice = raw[: raw.rindex(b"}")] + b',"model":"gpt-4o-mini"}'
    yardstick = min(cpu_of(server, twice, 400) for _ in range(2))
    return min(cpu_of(server, raw, status) for _ in range(2)), yardstick


@pytest.mark.perf
def test_a_body_of_escapes_is_refused_in_about_its_parse(server):
    """Was: a body holding ``\\u00XX`` escapes had each one decoded by a Python function to see
    whether it spelt "pdf" (``pdfpages.may_hold_pdf``), and one escape anywhere had the budget's
    estimate walk the whole parsed body three times (images by reference, PDFs, long cache marks):
    a 20 MB message of 3.3 million escapes cost 2.7 s of CPU for its 429, its parse 0.05 s. Now the
    parsed body is written out again in C and searched (``estimate.unescaped``)."""
    raw = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + b"\\u0041" * 3_300_000 + b'"}]}'
    taken, yardstick = against_yardstick(server, raw, 429)
    assert taken < yardstick * 3 + 0.3, (taken, yardstick)  # was ~50 times the yardstick


def calls_of(code: types.CodeType, run: Callable[[], object]) -> int:
    """How many times ``run`` entered ``code`` (a generator's every resumption counts)."""
    count = 0

    def seen(frame, event, arg) -> None:
        nonlocal count
        count += event == "call" and frame.f_code is code

    sys.setprofile(seen)
    try:
        run()
    finally:
        sys.setprofile(None)
    return count


def test_an_escape_alone_walks_no_body():
    """Was: one escape (``\\u0031``) anywhere made the budget's estimate walk every value of the parsed
    body in Python, once for images by reference and once for long cache marks: a million numbers in
    a tool's schema cost ~4x their parse for a 429. Now the parsed body is written out again (in C)
    and searched, and walked only when it holds a mark; an escaped mark is still found."""
    schema = {"type": "object", "x": [1] * 1000}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ESCAPED"}], "tools": [schema]}

    def parsed(escaped: str) -> tuple[dict, bytes]:
        raw = json.dumps(body).replace("ESCAPED", escaped).encode()
        return json_object(raw), raw

    def estimates(body: dict, raw: bytes) -> tuple[int, bool, bool]:
        return (
            estimate.referenced_images(body, raw),
            estimate.asks_long_cache(body, raw),
            pdfpages.may_hold_pdf(raw, body),
        )

    walk = estimate.body_values.__code__
    body_, raw = parsed("\\u0031")
    assert calls_of(walk, lambda: estimates(body_, raw)) == 0
    assert estimates(body_, raw) == (0, False, False)
    body_, raw = parsed('", "ttl": "\\u0031h')  # a long cache write asked for in an escape: held
    assert estimates(body_, raw) == (0, True, False)
    body_, raw = parsed('", "x": {"type": "\\u0069mage_url", "image_url": {"url": "https://e.x/a"}}, "y": "')
    assert estimates(body_, raw) == (1, False, False)
    body_, raw = parsed('", "x": {"mimeType": "application/\\u0070df"}, "y": "')
    assert estimates(body_, raw) == (0, False, True)


def test_the_word_pdf_walks_no_body():
    """Was: "pdf" anywhere in a body (a file's name in a URL, a word in a message) had the budget's
    estimate walk every object of it for PDFs (``pdfpages.held_pdf_tokens``): 166,000 documents by
    URL ending ``.pdf`` cost 4-7x their parse. A PDF no file count names has its media type in the
    body, which is what is looked for now (its slash maybe escaped); one so named is still held."""
    parts = [{"type": "document", "source": {"type": "url", "url": "https://e.x/a.pdf"}}] * 1000
    body = {"model": "gemini-2.0-flash", "contents": [{"role": "user", "parts": parts}]}
    raw = json.dumps(body).encode()

    def held(body: dict, raw: bytes) -> int:
        return pdfpages.held_pdf_tokens(body, raw, "gemini-2.0-flash", 258)

    assert calls_of(estimate.body_values.__code__, lambda: held(body, raw)) == 0
    assert held(body, raw) == 0
    part = {"fileData": {"mimeType": "application/pdf", "fileUri": "https://e.x/files/f"}}
    body["contents"][0]["parts"] = [*parts, part]
    raw = json.dumps(body).replace("application/pdf", "APPLICATION\\/PDF").encode()
    assert b"application/pdf" not in raw.lower() and held(json_object(raw), raw) > 0


def test_objects_that_are_no_part_are_passed_over():
    """Was: with an image mark in the body every object of it was read as a content part (four lookups
    each), and with a PDF's media type read five times for a PDF: 500,000 empty objects in a tool's
    schema cost 3.8x their parse for a 429. Now an object with none of a part's members is passed
    over in one test (2.5x). Parts by reference are still counted."""
    part = {"type": "image_url", "image_url": {"url": "https://e.x/a.png"}}
    schema = {"x": [{}] * 1000, "y": [{"z": "application/pdf"}] * 1000}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [part]}], "tools": [schema]}
    raw = json.dumps(body).encode()
    assert calls_of(estimate.by_reference.__code__, lambda: estimate.referenced_images(body, raw)) == 1  # of 2,005
    assert estimate.referenced_images(body, raw) == 1


def test_redaction_stops_looking_for_a_kind_once_found():
    """Was: the redact module checked every candidate of a kind in a text though one was found: a
    16 MB message of a million card numbers ran the Luhn check (in Python) a million times, 17 s of
    CPU with PII on; an email address's replacement was a Python call each. Now a kind found ends
    its pass, the checks loop in C, and an unchecked kind is replaced by text (still 5-8 s there:
    each candidate is still checked once when none is valid, and the stored copy is redacted)."""
    cards = "4111 1111 1111 1111 " * 10_000
    detector = redact.Detector(False, ["card", "phone", "email"])
    assert calls_of(redact.luhn_ok.__code__, lambda: detector.find(cards)) == 1
    assert list(detector.find(cards + "a@b.co")) == ["email", "card"]
    assert list(detector.find("4111 1111 1111 1112 +1 555 123 4567")) == ["phone"]  # not a card (Luhn)
    text = "mail a@b.co or c@d.org, card 4111-1111-1111-1111 not 4111-1111-1111-1112"
    assert detector.sub(text) == (
        "mail [REDACTED:email] or [REDACTED:email], card [REDACTED:card] not 4111-1111-1111-1112"
    )


def spans_by_pairs(detector: redact.Detector, text: str) -> list[tuple[int, int, str]]:
    """``Detector.spans`` as it was: each match tested against every finding before it."""
    found: list[tuple[int, int, str]] = []
    for hint, regex, validated in detector.passes:
        if hint(text):
            for m in regex.finditer(text):
                kind = m.lastgroup or "secret"
                overlaps = any(m.start() < end and start < m.end() for start, end, _ in found)
                if not overlaps and (not validated or redact.VALIDATORS[kind](m.group())):
                    found.append((m.start(), m.end(), kind))
    return sorted(found)


def test_an_answers_findings_are_placed_as_before():
    """The spans found by bisection are those each finding tested against all found before gave."""
    detector = redact.Detector(True, ["email", "card", "phone"])
    pieces = ["a@b.co", "+1 555 123 4567", "4111 1111 1111 1111", "4111 1111 1111 1112", "sk-" + "a" * 40, "x"]
    mixed = " ".join(random.Random(40).choice(pieces) for _ in range(3000))
    assert detector.spans(mixed) == spans_by_pairs(detector, mixed)


@pytest.mark.perf
def test_an_answers_findings_are_placed_in_linear_time():
    """Was: redacting a streamed answer to store it (``Detector.spans``) tested each finding against
    every one before it: an answer of 16,000 findings (270 KB, a long answer's worth) took 7.5 s of
    CPU, 64,000 would take two minutes. Now only its neighbours, found by bisection; the spans are
    the same (cards before phone numbers, none overlapping)."""
    detector = redact.Detector(True, ["email", "card", "phone"])
    text = "write a@b.co and +1 555 123 4567 " * 8000
    started = time.process_time()
    assert len(detector.spans(text)) == 16_000
    assert time.process_time() - started < 1.0  # was 7.5 s; ~0.05 s now


@pytest.mark.perf
def test_a_million_tags_are_refused_before_each_is_checked(server):
    """Was: a chat body's ``metadata`` of 999,000 strings had every one copied and checked as a tag
    before their count was refused (``attribution.body_tags``): 1.6-4x the CPU of its parse. Now the
    count is checked first, and no more than one past the cap is read."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    body["metadata"] = {str(i): "a" for i in range(MAX_JSON_VALUES - 1000)}
    raw = json.dumps(body).encode()
    taken, yardstick = against_yardstick(server, raw, 400)
    assert taken < yardstick * 1.4 + 0.15, (taken, yardstick)  # was 1.6-1.7 times the yardstick here, ~0.95 now


def tiny_batch(requests: int = 90_000) -> bytes:
    """A Message Batch of ``requests`` one-token requests, as JSON."""
    one = {"model": "claude-3-5-haiku-latest", "max_tokens": 1, "messages": [{"role": "user", "content": "a"}]}
    return json.dumps({"requests": [{"custom_id": f"r{i}", "params": one} for i in range(requests)]}).encode()


def batch_against_yardstick(server: ServerProcess, key: str, raw: bytes, status: int) -> tuple[float, float]:
    """(the server's CPU for the batch ``raw`` sent by ``key``, answered ``status``; for the yardstick:
    ``raw`` naming requests twice, a 400 once parsed), the least of two each."""

    def cpu_of_batch(raw: bytes, status: int) -> float:
        started = server.cpu_seconds()
        headers = {"x-api-key": server.keys[key]}
        got, _, answer = server.request("POST", "/v1/messages/batches", raw=raw, headers=headers)
        assert got == status, answer[:300]
        if status == 429:
            error = json.loads(answer)["error"]  # Anthropic's type for a 429, the reason in details
            assert (error["type"], error["details"]["error_code"]) == ("rate_limit_error", "budget_exceeded"), error
        return server.cpu_seconds() - started

    twice = raw[: raw.rindex(b"}")] + b',"requests":[]}'
    yardstick = min(cpu_of_batch(twice, 400) for _ in range(2))
    return min(cpu_of_batch(raw, status) for _ in range(2)), yardstick


@pytest.mark.perf
def test_a_message_batch_under_no_budget_is_not_priced(server):
    """Was: each request of a Message Batch was priced as a budget reserves it (a request context, the
    params written out, the estimate) whether or not a budget counts the key's batches: 90,000 tiny
    requests cost 2.9 s of CPU, 7x their parse, before the batch went anywhere. Now only under a
    budget (1.1 s: each request is still checked and routed)."""
    # checked in full, then its provider is down: a 502
    taken, yardstick = batch_against_yardstick(server, "open", tiny_batch(), 502)
    assert taken < yardstick * 4.5 + 0.3, (taken, yardstick)  # was ~7 times the yardstick


@pytest.mark.perf
def test_a_used_up_budget_refuses_a_message_batch_before_checking_it(server):
    """Was: a key whose budget is used up had each request of its Message Batch checked, routed and
    priced before the 429 that nothing was left (90,000 tiny requests: ~3 s of CPU a refusal, for
    ever). Now that 429 comes first, as a used-up key's /v1/messages call gets it: about the parse."""
    taken, yardstick = batch_against_yardstick(server, "broke", tiny_batch(), 429)
    assert taken < yardstick * 1.5 + 0.2, (taken, yardstick)  # was ~7 times the yardstick


@pytest.mark.perf
def test_a_message_batch_past_what_the_budget_has_left_is_refused_at_that_request(server):
    """Was: a key whose $0.01 budget was not used up had each of its batch's 90,000 requests checked,
    routed and priced before the total was compared with what was left (~3 s of CPU, 7x the parse,
    for each 429). Now the running total is compared as it grows: the 429 comes at the request that
    passes what is left (~1,700 here), at about the parse's cost."""
    taken, yardstick = batch_against_yardstick(server, "penny", tiny_batch(), 429)
    assert taken < yardstick * 1.5 + 0.2, (taken, yardstick)  # was ~7 times the yardstick


def test_too_many_tags_is_a_clear_400(server):
    """The refusal says what to change, in OpenAI's error shape; sixteen tags still pass to the budget."""
    headers = {"Authorization": f"Bearer {server.keys['penny']}"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    status, _, answer = server.request(
        "POST", "/v1/chat/completions", {**body, "metadata": {f"t{i}": "a" for i in range(17)}}, headers
    )
    error = json.loads(answer)["error"]
    assert status == 400 and error["code"] == "invalid_tags" and "at most 16 tags" in error["message"], answer
    status, _, answer = server.request(
        "POST", "/v1/chat/completions", {**body, "metadata": {f"t{i}": "a" for i in range(16)}}, headers
    )
    assert status == 200, answer

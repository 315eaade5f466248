"""An attacker's review of the day-37 changes: what a client key could still reach through the new
paths. One real server process (test_iso37's: two keys, Google's OpenAI-compatible endpoint as an
openai-compatible provider on the mock upstream), the official SDKs as clients."""

from __future__ import annotations

import anthropic
import pytest
from test_iso37 import MODEL, URI, alices, sent_naming, server  # noqa: F401 (fixtures)


def image_by_url(url: str) -> dict:
    """A Messages body's image by URL, which translation to OpenAI's shape turns into an
    ``image_url`` part (a document by URL it refuses for a Chat Completions provider)."""
    return {"type": "image", "source": {"type": "url", "url": url}}


def test_another_keys_gemini_file_in_an_anthropic_body_is_not_found_unasked(server, alices, mock):
    """A Messages body routed to Google's OpenAI-compatible endpoint is translated to chat: its URL
    source becomes an ``image_url`` Google reads the uploaded file from, under the one provider key.
    Another key's Gemini file (or one Stockyard never saw) is the 404 it is in an OpenAI-shaped body,
    in Anthropic's shape, before the provider is asked."""
    bob = server.anthropic("bob")
    for name in (alices["gemini_file"], "files/never-uploaded-here"):
        file_id = name.removeprefix("files/")
        before = len(mock.requests)
        content = [image_by_url(URI + file_id), {"type": "text", "text": "what is in it?"}]
        with pytest.raises(anthropic.NotFoundError) as refused:
            bob.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": content}])
        error = refused.value.body["error"]
        assert error["type"] == "not_found_error" and "File not found" in error["message"], error
        assert not sent_naming(mock, before, file_id)


def test_the_keys_own_gemini_file_in_an_anthropic_body_goes_on(server, alices, mock):
    file_id = alices["gemini_file"].removeprefix("files/")
    before = len(mock.requests)
    content = [image_by_url(URI + file_id), {"type": "text", "text": "what is in it?"}]
    try:
        messages = [{"role": "user", "content": content}]
        server.anthropic("alice").messages.create(model=MODEL, max_tokens=16, messages=messages)
    except anthropic.APIStatusError as answer:  # the mock serves no OpenAI-compatible Google endpoint
        assert "File not found" not in str(answer.body), answer.body
    assert sent_naming(mock, before, file_id) == ["/v1beta/openai/chat/completions"]

"""A translated request that sets no output cap gets the cap budgets and rate limits reserved for it."""

from __future__ import annotations

from module_harness import harness


def test_a_translated_anthropic_request_without_a_cap_is_sent_the_reserved_default(tmp_path, mock):
    """Was: Anthropic got a fixed 4096 while budgets reserved STOCKYARD_DEFAULT_MAX_TOKENS (here 1000),
    so spend could pass what the budget held back."""
    mock.clear()
    env = {"ANTHROPIC_API_KEY": "sk-ant-test-0123456789abcdef", "ANTHROPIC_BASE_URL": mock.url}
    with harness(tmp_path, mock, STOCKYARD_DEFAULT_MAX_TOKENS="1000", **env) as h:
        h.disable_all()
        status, _, body = h.chat(model="claude-haiku-4-5")
        assert status == 200, body
        sent = [r for r in mock.requests if r.path.endswith("/messages")][-1].json
        assert sent["max_tokens"] == 1000
        status, _, body = h.chat(model="claude-haiku-4-5", max_tokens=300)
        assert status == 200, body
        assert [r for r in mock.requests if r.path.endswith("/messages")][-1].json["max_tokens"] == 300

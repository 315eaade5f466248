"""A message batch's result line whose thinking blocks have an odd shape (a number for the text, a
list, a block that is not an object): ``thinking_chars`` read each block as an object holding a
string and raised, so the batch's whole cost was never recorded (every later look raised again)."""

from __future__ import annotations

from stockyard.batch_costs import anthropic_usage_of

THINKING = "x" * 400  # a thinking block that is one: its characters count toward the estimate


def line(content: object) -> dict:
    usage = {"input_tokens": 30, "output_tokens": 40}
    message = {"model": "claude-haiku-4-5", "usage": usage, "content": content}
    return {"custom_id": "odd", "result": {"type": "succeeded", "message": message}}


def test_odd_thinking_blocks_count_nothing_and_the_line_is_billed() -> None:
    plain = anthropic_usage_of(line([{"type": "thinking", "thinking": THINKING, "signature": "s"}]))
    odd = anthropic_usage_of(
        line(
            [
                {"type": "thinking", "thinking": 12345, "signature": "s"},
                {"type": "thinking", "thinking": ["not", "text"]},
                "not-a-block",
                ["nor", "this"],
                {"type": "thinking", "thinking": THINKING, "signature": "s"},
            ]
        )
    )
    assert odd == plain  # only the real thinking block counted, as when it is alone
    assert anthropic_usage_of(line("not a list")) == anthropic_usage_of(line([]))
    assert anthropic_usage_of(line({"type": "thinking", "thinking": THINKING})) == anthropic_usage_of(line([]))

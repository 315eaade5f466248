"""Memory that grows with what a client sends: each bound asserted on its structure or answer, not on RSS.

Measured against the real pyz before these bounds (bench-style, /proc/PID/status): one 32 MiB chat
body of ``{}`` values took the server from 37 MB to a 904 MB peak (872 MB still held after), and
four at once of 16 MiB each to 1.7 GB, 25 s of CPU each — a JSON value costs its parser 64-100
bytes however few bytes it took to send.
"""

from __future__ import annotations

import json

from conftest import ServerProcess

from stockyard.httpio import MAX_JSON_VALUES

CHAT = {"model": "gpt-4o-mini", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


def with_values(body: dict, field: str, item: str, count: int) -> bytes:
    """``body`` plus ``field``: a JSON array of ``count`` copies of ``item`` (raw JSON text)."""
    return (json.dumps(body)[:-1] + f', "{field}": [' + ",".join([item] * count) + "]}").encode()


def test_a_body_of_more_json_values_than_the_limit_is_a_413_before_it_is_parsed(openai_server: ServerProcess):
    """Was: parsed whole (3 MB of ``{}`` is ~1M dicts, ~70 MB; the 32 MiB body limit let one
    request take 900 MB), then relayed."""
    raw = with_values(CHAT, "x", "{}", MAX_JSON_VALUES)
    status, _, body = openai_server.request("POST", "/v1/chat/completions", raw=raw)
    assert status == 413, body[:300]
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and f"{MAX_JSON_VALUES:,}" in error["message"]
    raw = with_values({**CHAT, "model": "claude-x"}, "x", "[]", MAX_JSON_VALUES)
    status, _, body = openai_server.request(
        "POST", "/v1/messages", raw=raw, headers={"anthropic-version": "2023-06-01"}
    )
    assert status == 413 and json.loads(body)["type"] == "error", body[:300]


def test_commas_and_brackets_inside_strings_are_not_values(openai_server: ServerProcess):
    """Prose and code carry many commas and brackets in their strings: only the JSON's own count."""
    text = "a, b, [c], {d}, " * (MAX_JSON_VALUES // 3)
    body = {**CHAT, "messages": [{"role": "user", "content": text}]}
    status, _, answer = openai_server.request("POST", "/v1/chat/completions", body)
    assert status == 200, answer[:300]
    just_under = with_values(CHAT, "x", "1", MAX_JSON_VALUES - 100)
    status, _, answer = openai_server.request("POST", "/v1/chat/completions", raw=just_under)
    assert status == 200, answer[:300]

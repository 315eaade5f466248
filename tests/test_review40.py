"""What one request body can cost the server (review40): bodies within the size and JSON-value limits
whose handling cost many times their parse, refused all the same — by a key whose $0.01 budget
allows none of them. Each is measured in the server process's CPU (``ServerProcess.cpu_seconds``)
against a yardstick: the same body naming ``model`` twice, refused once it is parsed."""

from __future__ import annotations

import json

import pytest
from conftest import ServerProcess
from module_helpers import server_fixture

from stockyard.httpio import MAX_JSON_VALUES

server = server_fixture("review40", keys={"penny": ["--budget-usd", "0.01", "--budget-period", "total"]})


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
def test_a_million_tags_are_refused_before_each_is_checked(server):
    """Was: a chat body's ``metadata`` of 999,000 strings had every one copied and checked as a tag
    before their count was refused (``attribution.body_tags``): 2-4x the CPU of its parse. Now the
    count is checked first, and no more than one past the cap is read."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    body["metadata"] = {str(i): "a" for i in range(MAX_JSON_VALUES - 1000)}
    raw = json.dumps(body).encode()
    taken, yardstick = against_yardstick(server, raw, 400)
    assert taken < yardstick * 1.4 + 0.2, (taken, yardstick)  # was 1.6-4 times the yardstick


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

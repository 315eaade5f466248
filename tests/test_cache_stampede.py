"""The cache under a stampede: many identical requests at once ask the provider once.

Found under load (issue 23): with the cache on, 100 clients asking the same question at once
while the provider took 400 ms to answer made 100 upstream calls, each billed, and the cache
stored the same answer 100 times. Now the first miss asks the provider and the identical
requests that arrive meanwhile wait for its answer (at most ``wait_s``), then are served it as
hits; if it stores nothing (a failure), the next waiting one asks in its place (test_cache_waits).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from conftest import wait_for
from mock_upstream import Reply
from module_helpers import api, chat, fresh, put_module, server_fixture  # noqa: F401

server = server_fixture("cache-stampede")
FOLLOWERS = 20


def waiting(server) -> int:
    """How many requests wait for an identical one's answer now (the module's run-time status)."""
    status, view = api(server, "GET", "/api/modules/cache")
    assert status == 200, view
    return view["status"].get("waiting", 0)


def asked(mock, text: str) -> int:
    """How many requests carrying ``text`` reached the provider."""
    return sum(1 for r in mock.requests if text.encode() in r.body)


def at_once(count: int, call) -> tuple[list[threading.Thread], list[Any]]:
    """``call(i)`` on ``count`` threads, started now; their results land in the list as they end."""
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        results[i] = call(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    return threads, results


@pytest.fixture
def cache_on(fresh, server):
    put_module(server, "cache")


@pytest.mark.usefixtures("cache_on")
@pytest.mark.parametrize("streamed_followers", [False, True])
def test_identical_requests_in_flight_ask_the_provider_once(server, mock, streamed_followers):
    text = f"stampede {uuid.uuid4().hex}"
    messages = [{"role": "user", "content": text}]
    started, release = threading.Event(), threading.Event()
    mock.enqueue(Reply(held=release, hang_started=started))  # the first asker's answer waits for the test
    leader, lead = at_once(1, lambda i: chat(server, messages=messages))
    assert started.wait(10), "the first request reached the provider"
    followers, answers = at_once(FOLLOWERS, lambda i: chat(server, messages=messages, stream=streamed_followers))
    try:
        wait_for(
            lambda: waiting(server) == FOLLOWERS or asked(mock, text) > 1,
            what="the identical requests to wait (or to reach the provider)",
        )
        assert asked(mock, text) == 1, "an identical request in flight went to the provider too"
    finally:
        release.set()
        for t in leader + followers:
            t.join(30)
    status, headers, first = lead[0]
    assert status == 200 and headers["x-stockyard-cache"] == "miss"
    assert [a[0] for a in answers] == [200] * FOLLOWERS
    assert [a[1]["x-stockyard-cache"] for a in answers] == ["hit"] * FOLLOWERS
    if not streamed_followers:
        assert {a[2] for a in answers} == {first}, "each waiting request got the first one's answer"
    else:
        assert all(b"Hello from mock" in a[2] and a[2].rstrip().endswith(b"[DONE]") for a in answers)
    assert asked(mock, text) == 1 and waiting(server) == 0


@pytest.mark.usefixtures("cache_on")
def test_when_the_first_request_fails_one_waiting_request_asks_in_its_place(server, mock):
    text = f"stampede failing {uuid.uuid4().hex}"
    messages = [{"role": "user", "content": text}]
    started, release = threading.Event(), threading.Event()
    mock.enqueue(Reply(status=500, held=release, hang_started=started))  # nothing to store
    leader, lead = at_once(1, lambda i: chat(server, messages=messages))
    assert started.wait(10)
    followers, answers = at_once(5, lambda i: chat(server, messages=messages))
    try:
        wait_for(lambda: waiting(server) == 5 or asked(mock, text) > 1, what="the identical requests to wait")
    finally:
        release.set()
        for t in leader + followers:
            t.join(30)
    assert lead[0][0] == 500
    assert [a[0] for a in answers] == [200] * 5, "none was left with the first one's failure"
    misses = [a[1]["x-stockyard-cache"] for a in answers].count("miss")
    assert misses == 1 and asked(mock, text) == 2, "one asked in the first one's place, the others were its hits"
    assert waiting(server) == 0


@pytest.mark.usefixtures("cache_on")
def test_wait_s_zero_sends_each_identical_request_upstream(server, mock):
    put_module(server, "cache", {"wait_s": 0})
    text = f"stampede unlocked {uuid.uuid4().hex}"
    messages = [{"role": "user", "content": text}]
    started, release = threading.Event(), threading.Event()
    mock.enqueue(Reply(held=release, hang_started=started))
    leader, lead = at_once(1, lambda i: chat(server, messages=messages))
    assert started.wait(10)
    try:
        status, headers, _ = chat(server, messages=messages)  # not held: answered while the first still waits
        assert status == 200 and headers["x-stockyard-cache"] == "miss"
    finally:
        release.set()
        leader[0].join(30)
    assert lead[0][0] == 200 and asked(mock, text) == 2


@pytest.mark.usefixtures("cache_on")
@pytest.mark.parametrize(
    ("leader_fields", "follower_fields"),
    [
        ({"stream": True}, {}),  # a plain request cannot be served a stream's answer
        ({"stream": True, "stream_options": {"include_usage": True}}, {"stream": True}),  # nor one without usage
    ],
    ids=["stream-then-plain", "usage-stream-then-stream"],
)
def test_a_request_does_not_wait_for_a_flight_whose_answer_it_cannot_use(server, mock, leader_fields, follower_fields):
    """Found by attack24: flights were keyed by the cache key alone, so a plain request waited (up to
    ``wait_s``) for a streamed one's answer, which it can never be served, then asked the provider anyway:
    a client streaming slowly held every plain request for the same question for ``wait_s``."""
    put_module(server, "cache", {"wait_s": 600})
    text = f"stampede shapes {uuid.uuid4().hex}"
    messages = [{"role": "user", "content": text}]
    started, release = threading.Event(), threading.Event()
    mock.enqueue(Reply(held=release, hang_started=started))  # the streamed answer waits for the test
    leader, lead = at_once(1, lambda i: chat(server, messages=messages, **leader_fields))
    assert started.wait(10), "the streamed request reached the provider"
    follower, answer = at_once(1, lambda i: chat(server, messages=messages, **follower_fields))
    try:
        wait_for(lambda: asked(mock, text) == 2, what="the other shape's request to ask the provider itself")
        follower[0].join(30)
        assert answer[0] is not None and answer[0][0] == 200 and answer[0][1]["x-stockyard-cache"] == "miss"
    finally:
        release.set()
        for t in leader + follower:
            t.join(30)
    assert lead[0][0] == 200 and waiting(server) == 0

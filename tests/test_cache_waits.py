"""The cache's waits for an identical request in flight, and their edges (cache29).

A request that misses while an identical one is being answered upstream waits for that answer.
The wait is bounded by the request's deadline (the timeout module's 504), ends when its client
leaves, holds no deployment reservation, and when the first request fails the next waiting one
asks the provider in its place (one at a time, not each of them). An answer read to its end for
a client that left is kept too. Real server (the pyz), the scripted mock, real sockets.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import pytest
from conftest import wait_for
from mock_upstream import Reply
from module_helpers import api, chat, disable_all, server_fixture
from test_cache_stampede import asked, at_once, waiting

server = server_fixture("cache-waits")


@pytest.fixture(autouse=True)
def fresh(server, mock):
    """Every test: no models, every module off but the cache (waits of 600 s), empty mock."""
    mock.clear_replies()
    _, listing = api(server, "GET", "/api/models")
    for m in listing["data"]:
        api(server, "DELETE", f"/api/models/{m['name']}")
    disable_all(server)
    put("cache", {"wait_s": 600}, server)
    mock.clear()
    yield
    mock.clear_replies()


def put(name: str, config: dict, server) -> None:
    status, view = api(server, "PUT", f"/api/modules/{name}", {"enabled": True, "config": config})
    assert status == 200, view


def question() -> list[dict]:
    return [{"role": "user", "content": f"cache waits {uuid.uuid4().hex}"}]


def lead(server, mock, messages: list[dict], reply: Reply | None = None, model: str = "gpt-4o-mini"):
    """The first request, held at the provider until the returned event is set."""
    started, release = threading.Event(), threading.Event()
    reply = reply or Reply()
    reply.held, reply.hang_started = release, started
    mock.enqueue(reply)
    threads, results = at_once(1, lambda i: chat(server, model=model, messages=messages))
    assert started.wait(10), "the first request reached the provider"
    return release, threads, results


def send_raw(server, messages: list[dict], model: str = "gpt-4o-mini") -> socket.socket:
    """A chat request written on a socket of our own (so the test can leave without reading)."""
    body = json.dumps({"model": model, "messages": messages}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


def departed(server) -> int:
    return server.db_rows("SELECT count(*) AS n FROM traces WHERE outcome = 'client_disconnected'")[0]["n"]


def test_a_waiting_request_gives_up_at_its_deadline_with_the_timeout_modules_504(server, mock):
    messages = question()
    release, leader, _ = lead(server, mock, messages)  # asked before the deadline was set: it has none
    try:
        put("timeout", {"deadline_s": 1}, server)
        began = time.monotonic()
        follower, answer = at_once(1, lambda i: chat(server, messages=messages))
        follower[0].join(15)
        took = time.monotonic() - began
        assert answer[0] is not None, "the waiting request outlived its 1 s deadline by 15 s"
    finally:
        release.set()
        leader[0].join(30)
    status, _, body = answer[0]
    error = json.loads(body)["error"]
    assert status == 504 and error["code"] == "deadline_exceeded", body
    assert "deadline of 1s" in error["message"]
    assert took < 5, took
    assert asked(mock, messages[0]["content"]) == 1 and waiting(server) == 0


def test_a_client_that_leaves_while_waiting_stops_waiting_and_is_traced_as_departed(server, mock):
    messages = question()
    release, leader, lead_answer = lead(server, mock, messages)
    before = departed(server)
    try:
        sock = send_raw(server, messages)
        wait_for(lambda: waiting(server) == 1, what="the identical request to wait")
        sock.close()
        wait_for(lambda: waiting(server) == 0, what="the departed client's wait to end")
        wait_for(lambda: departed(server) == before + 1, what="the departed request's trace")
    finally:
        release.set()
        leader[0].join(30)
    [row] = server.db_rows(
        "SELECT status, error_message, cache_hit FROM traces WHERE outcome = 'client_disconnected' "
        "ORDER BY id DESC LIMIT 1"
    )
    assert "identical request" in row["error_message"] and row["cache_hit"] == 0, row
    assert lead_answer[0][0] == 200 and asked(mock, messages[0]["content"]) == 1


def deployment_health(server, model: str) -> dict:
    _, listing = api(server, "GET", "/api/models")
    [found] = [m for m in listing["data"] if m["name"] == model]
    [d] = found["deployments"]
    return d["health"]


@pytest.fixture
def limited(server):
    """A model served by one deployment of 3 requests a minute."""
    fields = {"provider": "openai", "model": "gpt-4o-mini", "rpm": 3}
    status, view = api(server, "POST", "/api/models/pool/deployments", fields)
    assert status == 201, view
    return "pool"


def one_by_one(server, count: int, messages: list[dict], model: str) -> tuple[list[threading.Thread], list]:
    """``count`` identical requests, each started once the one before it waits."""
    threads, results = [], [None] * count

    def ask(n: int) -> None:
        results[n] = chat(server, model=model, messages=messages)

    for n in range(count):
        threads.append(threading.Thread(target=ask, args=(n,)))
        threads[-1].start()
        wait_for(lambda n=n: waiting(server) == n + 1 or not threads[-1].is_alive(), what=f"request {n} to wait")
        assert threads[-1].is_alive(), f"request {n} did not wait: {results[n]}"
    return threads, results


def test_waiting_requests_hold_no_deployment_reservation(server, mock, limited):
    messages = question()
    release, leader, lead_answer = lead(server, mock, messages, model=limited)
    followers: list[threading.Thread] = []
    try:
        followers, answers = one_by_one(server, 8, messages, limited)
        assert deployment_health(server, limited)["rpm_used"] == 1, "each waiting request counted"
    finally:
        release.set()
        for t in leader + followers:
            t.join(30)
    assert lead_answer[0][0] == 200
    assert [(a[0], a[1]["x-stockyard-cache"]) for a in answers] == [(200, "hit")] * 8
    seen = deployment_health(server, limited)
    assert (seen["rpm_used"], seen["in_flight"], seen["reserved"]) == (1, 0, 0), seen


def test_a_burst_of_identical_requests_counts_as_one_call_to_the_deployment(server, mock, limited):
    """200 at once against a deployment of 3 a minute: the route step only claims the deployment
    (``Health.claim``), so the requests the cache answers never fill its window — none is a 429."""
    messages = question()
    release, leader, lead_answer = lead(server, mock, messages, model=limited)
    burst, answers = at_once(200, lambda i: chat(server, model=limited, messages=messages))
    try:
        wait_for(lambda: waiting(server) + sum(not t.is_alive() for t in burst) == 200, what="the burst to wait")
        assert deployment_health(server, limited)["rpm_used"] == 1
    finally:
        release.set()
        for t in leader + burst:
            t.join(60)
    assert lead_answer[0][0] == 200
    assert [(a[0], a[1]["x-stockyard-cache"]) for a in answers] == [(200, "hit")] * 200
    seen = deployment_health(server, limited)
    assert (seen["rpm_used"], seen["in_flight"], seen["reserved"]) == (1, 0, 0), seen
    assert asked(mock, messages[0]["content"]) == 1


def test_a_client_that_left_or_a_wait_that_ran_out_leaks_no_reservation(server, mock, limited):
    put("cache", {"wait_s": 1}, server)
    messages = question()
    release, leader, _ = lead(server, mock, messages, model=limited)
    try:
        sock = send_raw(server, messages, model=limited)
        wait_for(lambda: waiting(server) == 1, what="the identical request to wait")
        sock.close()
        wait_for(lambda: waiting(server) == 0, what="the departed client's wait to end")
        seen = deployment_health(server, limited)
        assert (seen["rpm_used"], seen["reserved"]) == (1, 0), seen
        status, headers, _ = chat(server, model=limited, messages=messages)  # waits 1 s, then asks itself
        assert status == 200 and headers["x-stockyard-cache"] == "miss"
        assert deployment_health(server, limited)["rpm_used"] == 2, "its own call counted once"
    finally:
        release.set()
        leader[0].join(30)
    seen = deployment_health(server, limited)
    assert (seen["rpm_used"], seen["in_flight"], seen["reserved"]) == (2, 0, 0), seen


@pytest.mark.parametrize("failure", [500, 400, 504], ids=["5xx", "4xx", "timeout"])
def test_when_the_first_request_fails_the_next_waiting_one_asks_in_its_place(server, mock, failure):
    """Found by cache29: when the first request failed (nothing stored), every request waiting on it
    asked the provider at once — the stampede the wait is there to prevent, against a provider
    that is failing. Now the next one asks in its place and the others wait for its answer."""
    if failure == 504:
        put("timeout", {"read_timeout_s": 0.5}, server)  # the first one's answer is held past it
    messages = question()
    text = messages[0]["content"]
    release, leader, lead_answer = lead(server, mock, messages, reply=Reply(status=200 if failure == 504 else failure))
    followers, answers = at_once(5, lambda i: chat(server, messages=messages))
    try:
        wait_for(lambda: waiting(server) == 5 or asked(mock, text) > 1, what="the identical requests to wait")
        if failure == 504:
            leader[0].join(30)  # its read timeout ends it while the provider still holds the answer
    finally:
        release.set()
        for t in leader + followers:
            t.join(30)
    assert lead_answer[0][0] == failure
    assert [a[0] for a in answers] == [200] * 5
    assert sorted(a[1]["x-stockyard-cache"] for a in answers) == ["hit"] * 4 + ["miss"]
    assert asked(mock, text) == 2, "one call for the failed first, one for the request that took its place"
    assert waiting(server) == 0


def test_an_answer_read_for_a_departed_client_is_cached(server, mock):
    messages = question()
    text = messages[0]["content"]
    started, release, hung_up = threading.Event(), threading.Event(), threading.Event()
    mock.enqueue(Reply(held=release, hang_started=started, hung_up=hung_up))
    before, left = departed(server), server.metric("clients_left_waiting_total")
    sock = send_raw(server, messages)
    assert started.wait(10)
    sock.close()
    wait_for(lambda: server.metric("clients_left_waiting_total") > left, what="the server to see the client leave")
    release.set()
    wait_for(lambda: departed(server) == before + 1, what="the departed request's trace")
    status, headers, body = chat(server, messages=messages)
    assert status == 200 and headers["x-stockyard-cache"] == "hit", headers
    assert b"Hello from mock" in body and asked(mock, text) == 1


def test_the_request_that_asks_in_a_failed_ones_place_counts_once_on_the_deployment(server, mock, limited):
    """The miss after a flight failed (a 4xx: the deployment is not cooled down): the request that asks in
    the first one's place claims the deployment again and is counted once; the others are its hits."""
    messages = question()
    release, leader, lead_answer = lead(server, mock, messages, reply=Reply(status=400), model=limited)
    followers, answers = at_once(3, lambda i: chat(server, model=limited, messages=messages))
    try:
        wait_for(lambda: waiting(server) == 3, what="the identical requests to wait")
    finally:
        release.set()
        for t in leader + followers:
            t.join(30)
    assert lead_answer[0][0] == 400
    assert sorted((a[0], a[1]["x-stockyard-cache"]) for a in answers) == [(200, "hit")] * 2 + [(200, "miss")]
    seen = deployment_health(server, limited)
    assert (seen["rpm_used"], seen["in_flight"], seen["reserved"]) == (2, 0, 0), seen

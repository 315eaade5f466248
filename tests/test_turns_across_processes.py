"""A turn answered by one server process is found by the next request on another one.

Found under load (issue 23): what a Responses turn keeps (the stored response a next turn names
as ``previous_response_id``, a conversation's appended items) was committed by the writer after
the client had its answer. One process found it meanwhile in memory; another did not. With
``serve --workers 2`` a client continuing a chain on a new connection got OpenAI's 404 "No
response found" for the response it had just been given (5 of 5 chains of four turns, one
client), and a conversation's next turn or listing, read on the other worker, lacked the last
turn (20 of 60 conversations); two PostgreSQL replicas behind a balancer: every turn continued
on the other replica was a 404. Now, where another process may serve the next request, the
answer's end waits for those writes' commit (a stream: its last event, held by the relay).
"""

from __future__ import annotations

import http.client
import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ServerProcess, mock_env
from mock_upstream import Reply, responses_stream

TURNS = 4
CHAINS = 24
MODELS = ("claude-haiku-4-5", "gpt-4o-mini")  # translated (kept by Stockyard) and passed through


def call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    """One request on a connection of its own (a balancer, or the kernel, picks the process)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def post(port: int, path: str, body: dict) -> tuple[int, bytes]:
    return call(port, "POST", path, body)


def response_id(answer: bytes) -> str:
    """The response's id, from its JSON or from its stream's events."""
    found = re.search(rb'"id":\s*"(resp_[^"]+)"', answer)
    assert found, answer[:300]
    return found.group(1).decode()


def chain(ports: list[int], n: int) -> list[tuple[int, bytes]]:
    """Chain ``n``'s turns, each on the next port (round-robin), every other one streamed."""
    model, previous, answers = MODELS[n % 2], None, []
    for turn in range(TURNS):
        body = {"model": model, "input": f"turn {turn} of chain {n}", "store": True, "stream": turn % 2 == 1}
        if previous:
            body["previous_response_id"] = previous
        status, answer = post(ports[(n + turn) % len(ports)], "/v1/responses", body)
        answers.append((status, answer[:300]))
        if status != 200:
            break
        previous = response_id(answer)
    return answers


def conversation(ports: list[int], n: int) -> tuple[list[int], int]:
    """A conversation's turns each on the next port, then its items listed on the next: statuses, items."""
    status, made = post(ports[n % len(ports)], "/v1/conversations", {})
    assert status == 200, made
    conv = json.loads(made)["id"]
    statuses = []
    for turn in range(3):
        body = {"model": MODELS[n % 2], "conversation": conv, "input": f"q{turn}", "stream": turn == 1}
        statuses.append(post(ports[(n + turn + 1) % len(ports)], "/v1/responses", body)[0])
    status, listing = call(ports[n % len(ports)], "GET", f"/v1/conversations/{conv}/items?limit=100")
    assert status == 200, listing
    return statuses, len(json.loads(listing)["data"])


def check(ports: list[int]) -> None:
    """Chains and conversations spread over ``ports``: each turn finds the one before it."""
    with ThreadPoolExecutor(CHAINS) as pool:
        chains = list(pool.map(lambda n: chain(ports, n), range(CHAINS)))
        conversations = list(pool.map(lambda n: conversation(ports, n), range(CHAINS)))
    failed = [answers[-1] for answers in chains if answers[-1][0] != 200]
    assert failed == [], f"{len(failed)} of {CHAINS} chains broke, e.g. {failed[0]}"
    assert all(len(answers) == TURNS for answers in chains)
    assert {tuple(statuses) for statuses, _ in conversations} == {(200, 200, 200)}
    assert [items for _, items in conversations] == [6] * CHAINS, "each turn's input and output, listed at once"


def test_a_workers_group_continues_each_turn_on_whichever_worker_takes_it(pyz_path, cache_home, mock, tmp_path):
    server = ServerProcess(pyz_path, tmp_path / "stockyard.db", mock_env(cache_home, mock), ["--workers", "2"])
    server.start()
    try:
        check([server.port])  # each request on a new connection: either worker may take it
    finally:
        server.stop()
    assert "Traceback" not in server.log


@pytest.mark.usefixtures("pg_cluster")
def test_postgresql_replicas_continue_each_other_s_turns(pyz_path, cache_home, mock, pg_url):
    env = mock_env(cache_home, mock)
    replicas = [ServerProcess(pyz_path, pg_url, env).start() for _ in range(2)]  # type: ignore[arg-type]
    try:
        check([r.port for r in replicas])
    finally:
        for r in replicas:
            r.stop()
    assert not any("Traceback" in r.log for r in replicas)


def test_a_stream_whose_turn_commits_slowly_still_ends_with_its_last_event(pyz_path, cache_home, mock, tmp_path):
    """Found by attack24: a streamed turn's last event waits for its commit, and a commit slower than
    the relay's hold limit (the provider's read timeout, at most 30 s: here 1 s, the file locked by
    another process) cut the stream without its ``response.completed`` — an answer the provider was
    paid for, lost — after the request thread had also waited for the commit of its
    ``response.created`` (the first event; the answer's end was still to come). A plain answer in
    the same case goes on after its wait. Now the stream does too: after the hold limit on the relay,
    or once the write is done (or failed) on the request thread, whichever holds it."""
    import sqlite3

    db = tmp_path / "stockyard.db"
    env = mock_env(cache_home, mock, STOCKYARD_UPSTREAM_TIMEOUT="1", STOCKYARD_BUSY_TIMEOUT_MS="3000")
    server = ServerProcess(pyz_path, db, env, ["--workers", "2"]).start()
    body = {"model": "gpt-4o-mini", "input": "a slow commit", "store": True, "stream": True}
    try:
        status, warm = post(server.port, "/v1/responses", body)
        assert status == 200 and b"response.completed" in warm, warm[-300:]
        # its events 0.2 s apart: the stream is the relay's when its last event waits for the commit
        mock.enqueue(Reply(sse=responses_stream(body, 1, "gpt-4o-mini"), sse_delay_ms=200))
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # another process writing (a backup, a shell): the writer waits
        try:
            with ThreadPoolExecutor(1) as pool:
                status, answer = pool.submit(post, server.port, "/v1/responses", body).result(timeout=40)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert status == 200 and answer.rstrip().endswith(b"}") and b"response.completed" in answer, answer[-300:]
    finally:
        server.stop()
    assert "Traceback" not in server.log

"""A message batch's results download (``/v1/messages/batches/{id}/results``) when things go wrong
around it, through a real server and the mock upstream: the database refusing the claims the results
make, more concurrent readers than the server parses at once, a results line too long to read."""

from __future__ import annotations

import json
import re
import socket
import struct
import threading

import pytest
from anthropic import NotFoundError
from conftest import HELD_SAYS, ServerProcess, hold_database, mock_env, served, wait_for
from mock_upstream import CODE_OUTPUT, MESSAGE_BATCHES, Reply
from test_anthropic_batches import CODE_TOOL, PLAIN, results

READERS = 4  # STOCKYARD_MAX_RESULTS_READERS here: a key's share is a quarter of it, one
PAD = "p" * 4000


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-robust-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_BATCH_POLL="off",  # no background retrieves: a scripted reply reaches the call it is for
        STOCKYARD_MAX_RESULTS_READERS=str(READERS),
        STOCKYARD_BUSY_TIMEOUT_MS="1500",  # a claim the held database refuses fails after 1.5 s, not 10
    )
    keys = {name: [] for name in ("alice", "bob", "carol", "dave", "erin")}
    with served(pyz_path, tmp_path_factory, "robust", env, keys, never_logged=("sk-ant-test-robust",)) as srv:
        yield srv


def code_batch(server: ServerProcess, who: str, count: int = 2, filler: int = 500) -> tuple[str, list[str]]:
    """An ended batch of ``who``'s whose ``count`` code execution results are ``filler`` padded lines
    apart (so each is claimed from a chunk of its own); (batch id, its result lines)."""
    client = server.anthropic(who)
    params = {"model": PLAIN, "max_tokens": 16, "tools": [CODE_TOOL], "messages": [{"role": "user", "content": "csv"}]}
    asked = [{"custom_id": f"code-{i}", "params": params} for i in range(count)]
    batch = client.messages.batches.create(requests=asked)
    assert client.messages.batches.retrieve(batch.id).processing_status == "ended"
    costs_settled(server)  # its cost read (which the retrieve started) takes no reply scripted after this
    pads = [json.dumps({"custom_id": f"pad-{i}", "result": {"type": "expired"}, "pad": PAD}) for i in range(filler)]
    lines: list[str] = []
    for line in MESSAGE_BATCHES.results[batch.id]:
        lines += [line, *pads]
    MESSAGE_BATCHES.results[batch.id] = lines
    return batch.id, lines


def costs_settled(server: ServerProcess) -> None:
    """No ended batch's cost is being read, nor waits to be."""
    wait_for(lambda: server.metric("batch_costs_pending") == 0, what="the batch cost reader idle")


def written_files(lines: list[str]) -> list[str]:
    """The files the code execution results among ``lines`` name."""
    found = []
    for line in lines:
        message = json.loads(line)["result"].get("message") or {}
        for block in message.get("content", []):
            if block.get("type") == "bash_code_execution_tool_result":
                found += [c["file_id"] for c in block["content"]["content"]]
    return found


def test_claims_the_database_refuses_are_skipped_and_logged_once_and_the_download_completes(server, mock):
    """Was: when the claim of the files a results line names could not be written (here the database
    is locked by another process past the busy timeout), the download was cut midway — a 500 written
    into the middle of the chunked body — and a traceback printed. Now the results reach the client
    whole: they are the client's data, and an id left unclaimed only answers 404 through Stockyard
    until the results are read again. One log line names the batch and the failure; the claims after
    the first failure are not tried (each would wait out the busy timeout again); other requests are
    served meanwhile."""
    batch_id, lines = code_batch(server, "alice")
    files = written_files(lines)
    assert len(files) == 2
    release = hold_database(server.db)
    try:
        got: dict[str, tuple[int, dict, bytes]] = {}
        reader = threading.Thread(target=lambda: got.setdefault("results", results(server, "alice", batch_id)))
        reader.start()
        wait_for(lambda: mock.last(f"{batch_id}/results"), what="the results asked of the provider")
        other = server.anthropic("bob").messages.create(
            model=PLAIN, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
        assert other.content and reader.is_alive(), "another key served while the claim waits on the lock"
        reader.join(60)
        assert not reader.is_alive()
    finally:
        release()
    status, _, body = got["results"]
    assert status == 200 and body == "".join(line + "\n" for line in lines).encode()
    said = [line for line in server.log.splitlines() if batch_id in line and "claim" in line]
    assert len(said) == 1 and HELD_SAYS in said[0], said
    assert PAD not in server.log and "Traceback" not in server.log
    alice = server.anthropic("alice")
    for file_id in files:  # unclaimed: the 404 of an id no key holds
        with pytest.raises(NotFoundError):
            alice.beta.files.download(file_id)
    status, _, again = results(server, "alice", batch_id)  # read again: claimed now
    assert status == 200 and again == body
    for file_id in files:
        assert alice.beta.files.download(file_id).read() == CODE_OUTPUT


def test_concurrent_results_readers_are_capped_in_all_and_per_key(server, mock):
    """Was: each results reader may hold a line of up to 16 MiB and its parse, and nothing bounded
    how many ran at once: one key could open downloads until the server ran out of memory. Now at
    most ``STOCKYARD_MAX_RESULTS_READERS`` run at once, a quarter of them for one key, as connections
    are capped: past a key's share Anthropic's 429, past the whole 503 ``overloaded_error``, each with
    Retry-After, before the provider is asked, and counted in ``results_readers_refused_total``; a
    slot frees when its download ends."""
    owners = ["alice", "bob", "carol", "dave"]
    batches = {who: code_batch(server, who, count=1, filler=1000) for who in [*owners, "erin"]}
    refused_before = server.metric("results_readers_refused_total")
    gate = threading.Event()
    got: dict[str, tuple[int, dict, bytes]] = {}
    readers = []
    try:
        for who in owners:  # each holds a slot: the provider answers once the gate opens
            started = threading.Event()
            mock.enqueue(Reply(held=gate, hang_started=started))
            batch_id = batches[who][0]
            reader = threading.Thread(target=lambda w=who, b=batch_id: got.setdefault(w, results(server, w, b)))
            reader.start()
            readers.append(reader)
            assert started.wait(10), f"{who}'s results never reached the provider"
            if who == "alice":  # her second download at once: past her share
                status, headers, body = results(server, "alice", batch_id)
                doc = json.loads(body)
                assert status == 429 and headers["retry-after"] == "1", body
                assert doc["type"] == "error" and doc["error"]["type"] == "rate_limit_error"
        status, headers, body = results(server, "erin", batches["erin"][0])  # the whole is in use
        doc = json.loads(body)
        assert status == 503 and headers["retry-after"] == "1", body
        assert doc["error"]["type"] == "overloaded_error" and "results" in doc["error"]["message"]
        assert mock.pending() == 0
        # each refusal counted, as connections past their caps are (the 429 and the 503)
        assert server.metric("results_readers_refused_total") == refused_before + 2
    finally:
        gate.set()
        for reader in readers:
            reader.join(30)
    for who in owners:
        lines = batches[who][1]
        assert got[who][0] == 200 and got[who][2] == "".join(line + "\n" for line in lines).encode()
    status, _, body = results(server, "erin", batches["erin"][0])  # the slots are free again
    assert status == 200 and body == "".join(line + "\n" for line in batches["erin"][1]).encode()


def test_a_results_line_too_long_to_read_is_logged_once_without_its_text(server):
    """Was: a results line over 16 MiB (``files_api.MAX_LINE``) was relayed and claimed nothing,
    silently. It is still relayed whole and claims nothing (holding it would hold 16 MiB and more a
    reader), but one log line names the batch; the lines after it are still claimed."""
    batch_id, lines = code_batch(server, "bob", count=1, filler=0)
    huge = json.dumps({"custom_id": "huge", "result": {"type": "expired"}, "pad": "H" * (17 * 1024 * 1024)})
    lines = MESSAGE_BATCHES.results[batch_id] = [huge, huge, *lines]
    status, _, body = results(server, "bob", batch_id)
    assert status == 200 and body == "".join(line + "\n" for line in lines).encode()
    said = wait_for(
        lambda: [line for line in server.log.splitlines() if batch_id in line and "too long" in line],
        what="the long line logged",
    )
    assert len(said) == 1 and "HHHH" not in server.log, said
    (file_id,) = written_files(lines[2:])
    assert server.anthropic("bob").beta.files.download(file_id).read() == CODE_OUTPUT


def test_ended_batches_costs_are_read_one_at_a_time(server, mock):
    """Was: each ended batch its owner saw started a thread of its own reading the batch's results
    (up to four at once, each holding a line of up to 16 MiB and its parse; a fifth was skipped until
    a later look). Now one reader reads them one after another; the others wait their turn, counted
    in ``batch_costs_pending``, and each is still recorded once."""
    costs_settled(server)
    client = server.anthropic("carol")
    params = {"model": PLAIN, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    first_id, second_id = (
        client.messages.batches.create(requests=[{"custom_id": "one", "params": params}]).id for _ in range(2)
    )
    gates, started = [threading.Event(), threading.Event()], [threading.Event(), threading.Event()]
    try:
        # the retrieve ends the batch at the mock and answers (Reply()); its cost read is then held
        mock.enqueue(Reply(), Reply(held=gates[0], hang_started=started[0]))
        assert client.messages.batches.retrieve(first_id).processing_status == "ended"
        assert started[0].wait(10), "the first batch's results never reached the provider"
        mock.enqueue(Reply(), Reply(held=gates[1], hang_started=started[1]))
        assert client.messages.batches.retrieve(second_id).processing_status == "ended"
        assert server.metric("batch_costs_pending") == 2  # one being read, one waiting for it
        assert not started[1].is_set() and mock.pending() == 1, "a second reader ran beside the first"
        gates[0].set()
        assert started[1].wait(10), "the second batch's results were never read"
    finally:
        for gate in gates:
            gate.set()
    costs_settled(server)
    for batch_id in (first_id, second_id):  # each recorded (its cost trace written with its billed mark)
        wait_for(
            lambda b=batch_id: server.db_rows("SELECT billed FROM owned_objects WHERE id = ?", (b,))[0]["billed"] == 1,
            what=f"{batch_id}'s cost recorded",
        )


def _raw_results(server: ServerProcess, who: str, batch_id: str, *, leave: bool) -> tuple[str, bytes]:
    """A results download over a socket of its own: (its trace id, what came). ``leave``: the client
    resets the connection once the head came; else it reads until the server closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            f"GET /v1/messages/batches/{batch_id}/results HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"x-api-key: {server.keys[who]}\r\nConnection: close\r\n\r\n".encode()
        )
        got = b""
        while (chunk := sock.recv(65536)) and not (leave and b"\r\n\r\n" in got):
            got += chunk
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
        if leave:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, not a close
    (trace_id,) = re.findall(rb"x-stockyard-trace-id: (\S+)", got, re.IGNORECASE)
    return trace_id.decode(), got


@pytest.mark.parametrize("how", ["provider_error", "provider_cut", "provider_reset", "client_gone", "no_such_batch"])
def test_every_failed_results_download_gives_its_readers_slot_back(server, mock, how):
    """A key's share of the results readers is one slot here: a slot kept by a failed download would
    turn every later download of that key away (429) until a restart. More failed downloads than
    there are slots in all — the provider's error, the provider cutting the results midway, the
    provider's connection reset before an answer, the client leaving mid-download, a batch no key
    holds — then a good one: served."""
    batch_id, lines = code_batch(server, "carol", count=1, filler=1000)
    for _ in range(READERS + 1):
        if how in ("client_gone", "provider_cut"):
            if how == "provider_cut":
                mock.enqueue(Reply(cut_after=5000))
            trace_id, got = _raw_results(server, "carol", batch_id, leave=how == "client_gone")
            assert not got.endswith(b"\r\n0\r\n\r\n"), "cut: no chunked end"
            server.trace(trace_id)
            continue
        if how == "no_such_batch":
            status, _, body = results(server, "carol", "msgbatch_nobody_has_this")
            assert status == 404, body
            continue
        mock.enqueue({"provider_error": Reply(status=500), "provider_reset": Reply(reset=True)}[how])  # fmt: skip
        status, headers, body = results(server, "carol", batch_id)
        assert status >= 500, (how, status, body[:300])
        server.trace(headers["x-stockyard-trace-id"])
    status, _, body = results(server, "carol", batch_id)
    assert status == 200 and body == "".join(line + "\n" for line in lines).encode(), (how, status, body[:300])

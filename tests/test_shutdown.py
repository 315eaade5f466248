"""SIGTERM under load: in-flight requests finish, and every answered request has its trace."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import threading
import time

import pytest
import rawhttp
from conftest import ServerProcess, base_env, wait_for
from mock_upstream import MockUpstream, Reply
from openai import APIStatusError

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def shutdown_env(cache_home, upstream: MockUpstream, grace: str) -> dict[str, str]:
    """A server's environment for these tests: OpenAI at ``upstream``, the drain's grace ``grace``."""
    return {
        **base_env(cache_home),
        "OPENAI_API_KEY": "sk-test-shutdown-1234",
        "OPENAI_BASE_URL": upstream.url + "/v1",
        "STOCKYARD_SHUTDOWN_GRACE": grace,
    }


def client_loop(port: int, answered: list[str], stop: threading.Event) -> None:
    """Keep sending on one keep-alive connection until the server stops answering."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while not stop.is_set():
            conn.request("POST", "/v1/chat/completions", BODY, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                return
            answered.append(resp.getheader("x-stockyard-trace-id"))
    except (OSError, http.client.HTTPException):
        return
    finally:
        conn.close()


@pytest.mark.serial
def test_sigterm_under_load_keeps_every_answered_trace(pyz_path, cache_home, tmp_path):
    with MockUpstream(delay_ms=30) as slow:
        env = {**base_env(cache_home), "OPENAI_API_KEY": "sk-test-shutdown-1234", "OPENAI_BASE_URL": slow.url + "/v1"}
        server = ServerProcess(pyz_path, tmp_path / "s.db", env).start()
        answered: list[str] = []
        stop = threading.Event()
        threads = [threading.Thread(target=client_loop, args=(server.port, answered, stop)) for _ in range(16)]
        for t in threads:
            t.start()
        wait_for(lambda: len(answered) >= 100, 30, "100 answered requests")
        assert server.stop(signal.SIGTERM) == 0
        stop.set()
        for t in threads:
            t.join(30)
        stored = {r["id"] for r in server.db_rows("SELECT id FROM traces")}
        missing = [t for t in answered if t not in stored]
        assert not missing, f"{len(missing)} of {len(answered)} answered requests have no trace"
        assert "finishing in-flight requests" in server.log and "database closed" in server.log
        actions = [r["action"] for r in server.db_rows("SELECT action FROM audit_log ORDER BY seq")]
        assert actions[-1] == "server.stop"


def test_requests_still_running_when_the_drain_ends_get_an_error_and_keep_their_traces(pyz_path, cache_home, tmp_path):
    """Was: a stream (or a call waiting for its provider) still running when the drain's time was
    up was cut without an error, and its trace was lost (the writer stopped first). Now each ends
    with `server_shutting_down` in its client's own shape, and its trace is written."""
    with MockUpstream(stream_events=400, sse_delay_ms=50) as slow:  # a stream of ~20 s
        env = shutdown_env(cache_home, slow, "1s")
        server = ServerProcess(pyz_path, tmp_path / "s.db", env).start()
        stream = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        streamed = json.dumps({**json.loads(BODY), "stream": True})
        stream.request("POST", "/v1/chat/completions", streamed, {"Content-Type": "application/json"})
        resp = stream.getresponse()
        assert resp.status == 200
        seen = b""
        while b"data:" not in seen:
            seen += resp.read1(65536)
        hanging = threading.Event()
        slow.enqueue(Reply(hang_s=60, hang_started=hanging))
        answers: list[tuple[int, dict]] = []

        def waiting_call() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            conn.request("POST", "/v1/chat/completions", BODY, {"Content-Type": "application/json"})
            answer = conn.getresponse()
            answers.append((answer.status, json.loads(answer.read())))

        caller = threading.Thread(target=waiting_call)
        caller.start()
        assert hanging.wait(30), "the second call reached the provider"
        assert server.stop(signal.SIGTERM) == 0
        rest = resp.read()  # to the stream's chunked end: read() raises on a cut stream
        last = [line for line in rest.decode().splitlines() if line.startswith("data: {")][-1]
        assert json.loads(last[6:])["error"]["code"] == "server_shutting_down"
        caller.join(30)
        assert answers and answers[0][0] == 503 and answers[0][1]["error"]["code"] == "server_shutting_down"
        rows = server.db_rows(
            "SELECT stream, status, outcome, error_type, prompt_tokens, completion_tokens, cost_uc, cost_status "
            "FROM traces ORDER BY stream"
        )
        assert [(r["stream"], r["error_type"]) for r in rows] == [
            (0, "server_shutting_down"),
            (1, "server_shutting_down"),
        ]
        assert rows[1]["outcome"] == "stream_broken" and rows[0]["status"] == 503
        # the call the drain ended had gone out: the provider may bill its input (gpt-4o-mini, 15 µ¢ a token)
        inputs = -(-len(BODY) // 4)
        assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (inputs, 0)
        assert rows[0]["cost_uc"] == inputs * 15 and rows[0]["cost_status"] == "estimate"
        assert "ending them" in server.log and "Traceback" not in server.log


def test_a_batch_create_ended_by_the_drain_tells_the_client_not_to_send_it_again(pyz_path, cache_home, tmp_path):
    """A batch create still waiting for its provider when the drain ends may have made the batch
    there: like a create whose answer was lost, the client is told not to retry."""
    with MockUpstream() as upstream:
        env = shutdown_env(cache_home, upstream, "1s")
        server = ServerProcess(pyz_path, tmp_path / "s.db", env).start()
        client = server.openai("unused")
        line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": json.loads(BODY)}
        source = client.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch")
        hanging = threading.Event()
        upstream.enqueue(Reply(hang_s=60, hang_started=hanging))
        failures: list[APIStatusError] = []

        def create() -> None:
            try:
                client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
            except APIStatusError as exc:
                failures.append(exc)

        creating = threading.Thread(target=create)
        creating.start()
        assert hanging.wait(30), "the create reached the provider"
        assert server.stop(signal.SIGTERM) == 0
        creating.join(30)
        assert failures and failures[0].status_code == 503
        assert (
            failures[0].response.headers["x-should-retry"] == "false" and "may have been created" in failures[0].message
        )
        assert "send the request again" not in failures[0].message  # it says the opposite too


def test_a_request_writing_to_a_client_that_stopped_reading_still_records_its_trace(pyz_path, cache_home, tmp_path):
    """Was: an answer blocked on a client that stopped reading (each write may wait the idle
    timeout, 30 s) outlasted the drain and its 5 s cut, and its trace was lost when the database
    closed. Now the cut's second half shuts such connections down: the write fails at once."""
    big = "x" * (40 << 20)  # more than the loopback buffers of both ends hold
    answer = {
        "id": "chatcmpl-big",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": big}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }
    with MockUpstream() as upstream:
        upstream.enqueue(Reply(json=answer))
        env = shutdown_env(cache_home, upstream, "1s")
        server = ServerProcess(pyz_path, tmp_path / "s.db", env).start()
        stalled = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
        )
        stalled.sendall(head.encode() + BODY.encode())
        assert stalled.recv(12) == b"HTTP/1.1 200"  # the answer is under way; the client reads no more
        started = time.monotonic()
        assert server.stop(signal.SIGTERM) == 0
        took = time.monotonic() - started
        stalled.close()
        rows = server.db_rows("SELECT outcome FROM traces")
        assert rows == [{"outcome": "client_disconnected"}], server.log
        assert "gave up waiting" not in server.log and "Traceback" not in server.log
        assert took < 1 + 5, f"the stop took {took:.1f} s"  # the grace and the cut, not the idle timeout


def test_connections_queued_when_the_sigterm_comes_each_get_an_answer_and_every_503_is_traced(
    pyz_path, cache_home, tmp_path
):
    """Was: connections still in the listen backlog when the accept loop ended for a SIGTERM were
    reset when the listening socket closed (past one batch of accepts), and the drain's 503s were
    not traced. Now every queued connection is accepted and answered (a 503 in its API's shape
    with ``Connection: close``), and each 503 has its trace."""
    with MockUpstream() as upstream:
        env = shutdown_env(cache_home, upstream, "2s")
        server = ServerProcess(pyz_path, tmp_path / "s.db", env).start()
        assert server.proc is not None
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
        )
        os.kill(server.proc.pid, signal.SIGSTOP)  # nothing is accepted: the connections wait in the backlog
        try:
            clients = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(150)]
            for client in clients:
                client.sendall(head.encode() + BODY.encode())
            os.kill(server.proc.pid, signal.SIGTERM)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        answers = [rawhttp.read_until_close(client, 30) for client in clients]
        for client in clients:
            client.close()
        assert server.proc.wait(30) == 0
    reset = sum(1 for answer in answers if not answer)
    assert not reset, f"{reset} of {len(answers)} queued connections got no answer"
    traced = {r["id"]: r for r in server.db_rows("SELECT id, status, outcome, error_type FROM traces")}
    for answer in answers:
        head_text, _, body = answer.partition(b"\r\n\r\n")
        lines = head_text.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if lines[0].startswith("HTTP/1.1 200"):
            continue  # served within the grace
        assert lines[0].startswith("HTTP/1.1 503") and headers["connection"] == "close", answer[:300]
        assert json.loads(body)["error"]["code"] == "shutting_down"
        row = traced.get(headers.get("x-stockyard-trace-id", "-"))
        assert row is not None, f"a drain's 503 has no trace: {answer[:300]!r}"
        assert (row["status"], row["error_type"]) == (503, "shutting_down"), row
    assert "Traceback" not in server.log


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one process", "a group of 2"])
def test_stop_signals_sent_again_and_again_still_end_in_a_clean_exit(pyz_path, cache_home, tmp_path, workers):
    """Was: a SIGTERM that arrived while the stopped server's interpreter finalised (Python puts its
    handlers back to the default action then) killed it: exit -15, a signal death its supervisor
    sees, though it had stopped cleanly. A supervisor may send its stop signal more than once; the
    server now ignores them once it has stopped, so every one of them ends in exit 0."""
    with MockUpstream() as upstream:
        srv = ServerProcess(pyz_path, tmp_path / "again.db", shutdown_env(cache_home, upstream, "5"), workers).start()
        try:
            sent = 0
            while srv.proc.poll() is None:  # SIGTERM after SIGTERM, the last ones as it finalises
                srv.proc.send_signal(signal.SIGTERM)
                sent += 1
                time.sleep(0.001)  # pacing only: what is waited for is the exit, by poll()
            assert srv.proc.wait(30) == 0 and sent > 1, (srv.proc.returncode, sent)
        finally:
            srv.stop()

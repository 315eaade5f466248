"""An attacker's review, part 3: a client key held to a few requests a minute, against the disk and
the shared provider key, on a real server. Each test names the hole it closes."""

from __future__ import annotations

import json
import re
import secrets
import time
import zlib

import pytest
from conftest import ServerProcess, mock_env, served
from rawhttp import connect, read_response

ADMIN = "review3-admin-key-0123456789abcdef"
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, ANTHROPIC_API_KEY="sk-ant-mock", ANTHROPIC_BASE_URL=mock.url
    )
    keys = {
        "flood": ["--rpm", "3"],
        "big-body": ["--rpm", "1"],
        "plain": [],
        "files": ["--rpm", "3"],
        "files-first": ["--rpm", "2"],
        "upload": ["--rpm", "1"],
        "tokens-only": ["--tpm", "100"],
        "message-batches": ["--rpm", "2"],
    }
    with served(pyz_path, tmp_path_factory, "attack3", env, keys) as srv:
        srv.key_ids = {r["name"]: r["id"] for r in srv.db_rows("SELECT id, name FROM client_keys")}
        yield srv


def raw_request(method: str, path: str, key: str, body: bytes = b"", headers: list[str] | None = None) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {key}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(headers or []),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def call(server: ServerProcess, who: str, method: str, path: str, body: bytes | None = None) -> tuple[int, dict, dict]:
    status, headers, raw = server.request(method, path, raw=body, headers=server.auth(who))
    return status, headers, json.loads(raw)


def committed(server: ServerProcess) -> None:
    """Wait until everything traced so far is in the database: the writer commits in order, so once
    a later request's trace is in, every earlier one is."""
    status, headers, _ = server.request("POST", "/v1/chat/completions", raw=CHAT.encode(), headers=server.auth("plain"))
    assert status == 200
    server.trace(headers["x-stockyard-trace-id"])


# -- refused requests cannot fill the disk -----------------------------------------------------------


def test_a_throttled_keys_refusals_write_a_bounded_number_of_rows_and_are_all_counted(server):
    """Was: a key with rpm 3 sent 2,000 chats, each with 16 made-up tags (~500 characters each) and
    a random end user, on one connection: 1,997 got 429 in 1.9 s, yet each wrote a full trace row, a
    ``rollups_users`` row and 16 ``rollups_tags`` rows (never pruned): +57.5 MB. Now a refusal makes
    no user or tag rollup rows, and a key's refusals are traced at a few a second (the rest only
    counted), like refusals without a key."""
    key_id = server.key_ids["flood"]
    sent, got = 400, []
    before = server.metric("key_refusals_unrecorded_total")
    started = time.monotonic()
    with connect(server) as sock:
        for i in range(sent):
            tags = ",".join(f"{f'{i:04d}-{j:02d}-'.ljust(64, 'n')}={secrets.token_hex(250)}" for j in range(16))
            headers = [f"x-stockyard-tags: {tags}", f"x-stockyard-user: user-{secrets.token_hex(16)}"]
            sock.sendall(raw_request("POST", "/v1/chat/completions", server.keys["flood"], CHAT.encode(), headers))
            status, response_headers, body = read_response(sock)
            got.append(status)
            if status == 429:
                assert json.loads(body)["error"]["code"] == "rate_limit_exceeded" and response_headers["retry-after"]
    elapsed = time.monotonic() - started
    assert got.count(200) == 3 and got.count(429) == sent - 3, got[:10]
    committed(server)
    traces = server.db_rows("SELECT outcome, error_type, end_user, tags FROM traces WHERE key_id = ?", (key_id,))
    refusals = [t for t in traces if t["outcome"] == "rejected"]
    assert len(traces) - len(refusals) == 3
    assert 20 <= len(refusals) <= 20 + 1 * elapsed + 1, (len(refusals), elapsed)  # a burst of 20, then 1 a second
    # What is traced keeps its audit value: who was refused, why, for which user and tags.
    assert all(t["error_type"] == "rate_limit_exceeded" and t["end_user"] and len(json.loads(t["tags"])) == 16
               for t in refusals)  # fmt: skip
    assert server.metric("key_refusals_unrecorded_total") - before == sent - 3 - len(refusals)
    # Rollups: the three answered requests' users and tags; the refusals counted per day and key only.
    assert len(server.db_rows("SELECT * FROM rollups_tags")) == 3 * 16
    users = server.db_rows("SELECT end_user FROM rollups_users WHERE key_id = ?", (key_id,))
    assert len(users) == 3
    daily = server.db_rows(
        "SELECT provider, model, requests, errors, cost_uc FROM rollups_daily WHERE key_id = ? ORDER BY provider",
        (key_id,),
    )
    assert [(d["provider"], d["model"]) for d in daily] == [("", ""), ("openai", "gpt-4o-mini")]
    assert (daily[0]["requests"], daily[0]["errors"], daily[0]["cost_uc"]) == (len(refusals), len(refusals), 0)
    assert sum(d["requests"] for d in daily) == len(traces)  # the reports still equal the traces


def test_a_traced_refusal_keeps_only_the_start_of_its_body(server):
    """A refusal's trace row kept its whole body (up to STOCKYARD_BODY_CAP_BYTES, 256 KB): even at a
    few traced refusals a second, a key sending large refused bodies wrote megabytes a second."""
    assert call(server, "big-body", "POST", "/v1/chat/completions", CHAT.encode())[0] == 200
    big = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": secrets.token_hex(100_000)}]})
    status, headers, _ = call(server, "big-body", "POST", "/v1/chat/completions", big.encode())
    assert status == 429
    trace_id = server.trace(headers["x-stockyard-trace-id"])["id"]
    body = server.db_rows("SELECT request, request_truncated FROM trace_bodies WHERE trace_id = ?", (trace_id,))[0]
    assert len(zlib.decompress(body["request"])) == 4096 and body["request_truncated"] == 1


# -- files and batches are held to the key's rpm -----------------------------------------------------


def test_a_key_past_its_rpm_is_refused_on_the_files_and_batches_routes_too(server, mock):
    """Was: the files and batches routes skipped the module chain, so a key with rpm 3 whose window
    was used up (chat: 429) still got 20 × ``GET /v1/files`` → 200, each sent to the provider under
    the shared provider key: a throttled key could use up the provider's rate limits and storage."""
    for _ in range(3):
        assert call(server, "files", "POST", "/v1/chat/completions", CHAT.encode())[0] == 200
    assert call(server, "files", "POST", "/v1/chat/completions", CHAT.encode())[0] == 429
    mock.clear()
    for method, path in [("GET", "/v1/files")] * 10 + [("GET", "/v1/batches"), ("GET", "/v1/files/file-x/content")]:
        status, headers, body = call(server, "files", method, path)
        assert status == 429, (path, body)
        assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"]
        assert 1 <= int(headers["retry-after"]) <= 60
    assert not [r for r in mock.requests if "/files" in r.path or "/batches" in r.path], "nothing reached the provider"
    committed(server)
    traced = server.db_rows(
        "SELECT provider, status, error_type FROM traces WHERE key_id = ? AND endpoint LIKE 'files.%' "
        "OR key_id = ? AND endpoint LIKE 'batches.%'",
        (server.key_ids["files"], server.key_ids["files"]),
    )
    assert len(traced) == 12 and all(
        (t["provider"], t["status"], t["error_type"]) == (None, 429, "rate_limit_exceeded") for t in traced
    )


def test_files_calls_use_the_same_window_as_the_keys_model_calls(server):
    """A files call is one of the key's requests per minute: two lists use up an rpm of 2."""
    assert call(server, "files-first", "GET", "/v1/files")[0] == 200
    assert call(server, "files-first", "GET", "/v1/batches")[0] == 200
    status, headers, body = call(server, "files-first", "POST", "/v1/chat/completions", CHAT.encode())
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded" and headers["retry-after"]


def test_an_upload_past_the_rpm_is_refused_before_its_body_arrives(server):
    assert call(server, "upload", "GET", "/v1/files")[0] == 200
    head = (
        "POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
        f"Authorization: Bearer {server.keys['upload']}\r\nContent-Length: 900000\r\n\r\n"
    )
    with connect(server) as sock:
        sock.sendall(head.encode())
        status, headers, body = read_response(sock, timeout=5)
    assert status == 429 and headers["connection"] == "close" and headers["retry-after"]
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"


def test_files_calls_use_no_tokens_of_a_tpm(server):
    for _ in range(10):
        assert call(server, "tokens-only", "GET", "/v1/files")[0] == 200


def test_message_batches_calls_are_held_to_the_keys_rpm_too(server):
    """Anthropic's Message Batches routes skip the module chain like OpenAI's files and batches:
    each call is one of the key's requests per minute."""
    headers = {"x-api-key": server.keys["message-batches"], "anthropic-version": "2023-06-01"}
    for _ in range(2):
        assert server.request("GET", "/v1/messages/batches", headers=headers)[0] == 200
    status, answer_headers, raw = server.request("GET", "/v1/messages/batches", headers=headers)
    body = json.loads(raw)
    assert status == 429 and body["type"] == "error" and answer_headers["retry-after"]

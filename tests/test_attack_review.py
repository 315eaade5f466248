"""An attacker's review of what a sender without a key (or with one ordinary client key) can do,
against a real server over raw sockets: each test names the hole it closes."""

from __future__ import annotations

import io
import json

import openai
import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import Reply
from openai import NotFoundError, PermissionDeniedError
from rawhttp import connect, read_until_close, statuses

from stockyard.api.logins import FAILED_LOGIN_LIMIT, LoginThrottle
from stockyard.files_api import MAX_LINE
from stockyard.objectrefs import referenced_files

ADMIN = "attack-admin-key-0123456789abcdef"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    """Behind a trusted load balancer (loopback), with an admin key and two client keys."""
    env = mock_env(
        cache_home,
        mock,
        STOCKYARD_ADMIN_KEY=ADMIN,
        STOCKYARD_TRUSTED_PROXIES="127.0.0.1",
        STOCKYARD_REQUEST_READ_TIMEOUT="1",  # for the whole request to arrive, not for the answer
    )
    keys = {"alice": [], "bob": [], "mini": ["--models", "gpt-4o-mini"]}
    with served(pyz_path, tmp_path_factory, "attack", env, keys) as srv:
        yield srv


def admin_status(server: ServerProcess, token: str, forwarded_for: str) -> int:
    sock = connect(server)
    sock.sendall(
        (
            f"GET /api/keys HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"X-Forwarded-For: {forwarded_for}\r\nConnection: close\r\n\r\n"
        ).encode()
    )
    return statuses(read_until_close(sock))[0]


def test_admin_login_throttle_counts_an_ipv6_sender_by_its_64(server):
    """Was: counted per address, so one IPv6 host (a /64 of its own) took a fresh address for
    every ten guesses of the admin key — unthrottled guessing and an audit row for each."""
    seen = [admin_status(server, f"wrong-{i}", f"2001:db8:1:2::{i + 1:x}") for i in range(FAILED_LOGIN_LIMIT + 2)]
    assert seen[:FAILED_LOGIN_LIMIT] == [401] * FAILED_LOGIN_LIMIT
    assert seen[FAILED_LOGIN_LIMIT:] == [429, 429]
    assert admin_status(server, "wrong", "2001:db8:1:3::1") == 401  # the next /64 is another sender
    assert admin_status(server, ADMIN, "2001:db8:1:2::ff") == 200  # the right key always works


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """The login throttle's clock, moved by the test (``clock[0] += seconds``)."""
    now = [1000.0]
    monkeypatch.setattr("stockyard.api.logins.time.monotonic", lambda: now[0])
    return now


def test_admin_login_throttle_forgets_senders_whose_window_is_empty(clock):
    """Was: every address that ever failed kept an entry for the server's life (a memory leak
    one wrong guess per address long)."""
    throttle = LoginThrottle()
    for i in range(50):
        throttle.fail(f"198.51.100.{i}")
    clock[0] += 61
    assert all(throttle.blocked_for(f"198.51.100.{i}") == 0.0 for i in range(50))
    assert throttle._failures == {}


def test_admin_login_throttle_forgets_senders_that_never_come_back(clock):
    """Was: a sender was forgotten only when it asked again, so every address that failed once
    and went away (a scan of the admin API from many addresses: IPv6 /64s, or the senders a
    trusted proxy names) kept its entry for the server's life."""
    throttle = LoginThrottle()
    for i in range(5000):
        throttle.fail(f"2001:db8:{i:x}::1")
    clock[0] += 61
    for i in range(10):
        throttle.fail(f"198.51.100.{i}")
    assert len(throttle._failures) <= 10 + 1  # the last minute's senders, not the 5,000 gone


# -- a key with a model allow-list and the Batch API --------------------------------------------


def batch_line(model: str, padding: int = 0) -> bytes:
    line = {"custom_id": model, "method": "POST", "url": "/v1/chat/completions"}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    # JSON allows any whitespace between tokens: the provider reads this line as any other
    return (json.dumps(line)[:-1] + ', "body": ' + " " * padding + json.dumps(body) + "}\n").encode()


def test_a_batch_file_uploaded_under_another_purpose_cannot_run_other_models(server):
    """Was: only ``purpose=batch`` uploads were checked against the key's models, so a key limited
    to gpt-4o-mini uploaded its gpt-4o batch as ``user_data`` and started a batch over it (a
    provider that does not insist on the purpose runs it)."""
    mini = server.openai("mini")
    sneaked = mini.files.create(file=("in.jsonl", io.BytesIO(batch_line("gpt-4o"))), purpose="user_data")
    with pytest.raises(PermissionDeniedError) as err:
        mini.batches.create(input_file_id=sneaked.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert "'gpt-4o'" in err.value.body["message"]
    allowed = mini.files.create(file=("ok.jsonl", io.BytesIO(batch_line("gpt-4o-mini"))), purpose="user_data")
    batch = mini.batches.create(input_file_id=allowed.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.id.startswith("batch")


def test_a_batch_line_too_long_to_check_is_refused_not_skipped(server):
    """Was: a line longer than MAX_LINE was skipped by the model check (it is never held whole)
    and went to the provider unchecked: padded with whitespace, any model ran."""
    mini = server.openai("mini")
    data = batch_line("gpt-4o-mini") + batch_line("gpt-4o", padding=MAX_LINE + (1 << 20))
    with pytest.raises(PermissionDeniedError) as err:
        mini.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert "line 2" in err.value.body["message"], err.value.body


def test_a_batch_line_naming_its_model_twice_is_refused(server):
    """The check reads the last of two equal names; the provider's batch runner may read the first."""
    mini = server.openai("mini")
    twice = batch_line("gpt-4o-mini").replace(b'"model": "gpt-4o-mini"', b'"model": "gpt-4o", "model": "gpt-4o-mini"')
    assert twice.count(b'"model"') == 2
    with pytest.raises(openai.BadRequestError) as err:
        mini.files.create(file=("in.jsonl", io.BytesIO(twice)), purpose="batch")
    assert err.value.body["code"] == "duplicate_key" and "line 1" in err.value.body["message"]


# -- provider objects named inside a request body ------------------------------------------------


def chat_with_file(
    server: ServerProcess, who: str, file_id: str, key_name: str = "file_id", encoding: str = "utf-8"
) -> int:
    part = '{"type": "file", "file": {"%s": "%s"}}' % (key_name, file_id)
    body = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [%s]}]}' % part
    status, _, _ = server.request(
        "POST",
        "/v1/chat/completions",
        raw=body.encode(encoding),
        headers=server.auth(who),
    )
    return status


def test_another_keys_file_cannot_be_read_through_a_model_call(server):
    """Was: /v1/files/{id} answered another key's id with a 404, but a chat or Responses body
    naming that id (a ``file`` or ``input_file`` part) went to the provider, which holds every
    key's files under the one provider key: the model read the file for the other key."""
    alice = server.openai("alice")
    secret = alice.files.create(file=("notes.txt", io.BytesIO(b"alice's notes")), purpose="user_data")
    assert chat_with_file(server, "alice", secret.id) == 200
    assert chat_with_file(server, "bob", secret.id) == 404
    assert chat_with_file(server, "bob", secret.id, key_name="file\\u005fid") == 404  # the same key, escaped
    assert chat_with_file(server, "bob", secret.id, encoding="utf-16-le") in (400, 404)  # JSON reads UTF-16 too
    assert chat_with_file(server, "bob", "file-stockyard-never-saw") == 404
    responses = {
        "model": "gpt-4o-mini",
        "input": [{"role": "user", "content": [{"type": "input_file", "file_id": secret.id}]}],
    }
    status, _, raw = server.request("POST", "/v1/responses", responses, headers=server.auth("bob"))
    assert status == 404, raw
    assert secret.id in json.loads(raw)["error"]["message"]


def test_the_file_references_a_body_holds_are_found_wherever_the_provider_reads_them():
    body = {
        "metadata": {"file_id": "the caller's own label"},
        "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-a"}]}],
        "messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-b"}}]}],
        "tools": [{"type": "code_interpreter", "container": {"type": "auto", "file_ids": ["file-c", 5]}}],
    }
    assert referenced_files(body) == {"file-a", "file-b", "file-c"}
    replayed = {  # a stateless client sends earlier output back: its citations name files the provider made
        "input": [
            {
                "type": "message",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": "see",
                        "annotations": [
                            {"type": "container_file_citation", "container_id": "cntr_1", "file_id": "cfile_1"}
                        ],
                    }
                ],
            },
            {"type": "file_search_call", "id": "fs_1", "results": [{"file_id": "file-vs", "text": "…"}]},
        ]
    }
    assert referenced_files(replayed) == set()


# -- the read deadline is for the request, not for the provider's answer -----------------------


@pytest.mark.parametrize("route", ["file", "response"])
def test_a_slow_provider_answer_is_not_cut_by_the_request_read_deadline(server, mock, route):
    """Was: the stored-response routes never read a body, so the read deadline
    (STOCKYARD_REQUEST_READ_TIMEOUT, against slowloris) stayed armed while the provider worked:
    an answer slower than it (a background response's event stream) was cut. The file routes
    escaped only by reading their empty body; the server now ends the deadline for every route
    once the request has arrived whole."""
    alice = server.openai("alice")
    if route == "file":
        made = alice.files.create(file=("notes.txt", io.BytesIO(b"notes")), purpose="user_data").id
    else:
        made = alice.responses.create(model="gpt-4o-mini", input="hi").id
    mock.enqueue(Reply(hang_s=2.5))  # a provider slower than the read deadline (1 s, checked each second)
    got = alice.files.retrieve(made) if route == "file" else alice.responses.retrieve(made)
    assert got.id == made


def responses_line(**body) -> bytes:
    line = {"custom_id": "r", "method": "POST", "url": "/v1/responses", "body": {"model": "gpt-4o-mini", **body}}
    return (json.dumps(line) + "\n").encode()


@pytest.mark.parametrize("purpose", ["batch", "user_data"])
def test_a_batch_cannot_name_another_keys_file_or_response(server, purpose):
    """Was: the batch's lines went to the provider unchecked (but for a limited key's models), so
    a key read another key's file (``input_file``) or continued its conversation
    (``previous_response_id``) through a batch run under the one provider key."""
    alice = server.openai("alice")
    bob = server.openai("bob")
    secret = alice.files.create(file=("notes.txt", io.BytesIO(b"alice's notes")), purpose="user_data").id
    turn = alice.responses.create(model="gpt-4o-mini", input="my secret plan").id
    mine = bob.files.create(file=("mine.txt", io.BytesIO(b"bob's")), purpose="user_data").id
    part = [{"role": "user", "content": [{"type": "input_file", "file_id": secret}]}]
    for line, named in ((responses_line(input=part), secret), (responses_line(previous_response_id=turn), turn)):
        data = responses_line(input="fine") + line
        try:
            uploaded = bob.files.create(file=("in.jsonl", io.BytesIO(data)), purpose=purpose)
        except NotFoundError as refused:  # at the upload
            assert purpose == "batch" and named in refused.body["message"] and "line 2" in refused.body["message"]
            continue
        assert purpose == "user_data"  # only an upload that says it is not a batch file passes unchecked
        with pytest.raises(NotFoundError) as err:
            bob.batches.create(input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h")
        assert named in err.value.body["message"] and "line 2" in err.value.body["message"]
    own = [{"role": "user", "content": [{"type": "input_file", "file_id": mine}]}]
    uploaded = bob.files.create(file=("ok.jsonl", io.BytesIO(responses_line(input=own))), purpose=purpose)
    assert bob.batches.create(input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h").id

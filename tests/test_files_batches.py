"""OpenAI files and batches through Stockyard with the official openai SDK, against the mock upstream:
upload, list, retrieve, content, delete; batch create/retrieve/list/cancel; ownership by client key
(another key gets 404 and cannot batch a file it does not own); a completed batch's cost at the batch
price; no key → 401 before the body is read."""

from __future__ import annotations

import io
import json
import re
import threading
import time

import pytest
from conftest import ServerProcess, admitted_once_billed, mock_env, open_database, served, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st
from mock_upstream import FILES, IMAGE_TEXT_OUTPUT_TOKENS, IMAGE_USAGE, PROMPT_TOKENS, Reply
from openai import (
    APIConnectionError,
    APIStatusError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from rawhttp import connect, read_response, read_until_close

from stockyard.batch_costs import BATCH_PRICE
from stockyard.config import load

ADMIN = "admin-key-for-files-tests-0123456789abcdef"
MINI_RATES = (15_000_000, 60_000_000)  # gpt-4o-mini, µ¢ per 1M tokens (input, output)


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-0123456789abcdef",  # not OpenAI-kind: never serves files
        ANTHROPIC_BASE_URL=mock.url,
        GROQ_API_KEY="gsk-test-0123456789abcdef",  # a second OpenAI-kind provider, chosen by header
        GROQ_BASE_URL=mock.url + "/v1",
        STOCKYARD_ADMIN_KEY=ADMIN,
    )
    keys = {
        "alice": [],
        "bob": [],
        "claude-only": ["--models", "claude-*"],
        "mini": ["--models", "gpt-4o-mini"],
        "broke": ["--budget-usd", "0", "--budget-period", "day"],
        "small": ["--budget-usd", "0.05", "--budget-period", "day"],
        "race": ["--budget-usd", "0.05", "--budget-period", "day"],
        "holder": ["--budget-usd", "0.05", "--budget-period", "day"],
        "drawer": ["--budget-usd", "0.05", "--budget-period", "day"],
        "painter": ["--budget-usd", "0.40", "--budget-period", "day"],
        "tight": ["--budget-usd", "0.05", "--budget-period", "day"],
    }
    with served(pyz_path, tmp_path_factory, "files", env, keys) as srv:
        yield srv


def batch_input(*models: str) -> bytes:
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"hello {i}"}]},
        }
        for i, model in enumerate(models)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def traces(server: ServerProcess, endpoint: str) -> list[dict]:
    return server.db_rows("SELECT * FROM traces WHERE endpoint = ? ORDER BY id", (endpoint,))


# -- before any upload -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/files", "/v1/batches", "/v1/files/file-abc/content"])
def test_no_key_is_refused_before_the_body_arrives(server, path):
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
    with connect(server) as sock:
        sock.sendall((head + "Content-Length: 900000\r\n\r\n").encode())
        status, headers, body = read_response(sock, timeout=5)
        assert status == 401 and headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "missing_api_key"
        assert read_until_close(sock) == b""


def test_a_batch_over_a_file_stockyard_never_saw_is_404_even_if_the_provider_has_it(server, mock):
    mock.clear()  # a batch another file's test made on this shared mock is not this one
    with FILES.lock:
        foreign = FILES.add_file("elsewhere.jsonl", "batch", batch_input("gpt-4o-mini"))["id"]
    with pytest.raises(NotFoundError) as err:
        server.openai("alice").batches.create(
            input_file_id=foreign, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert err.value.body["param"] == "input_file_id"
    assert not [r for r in mock.requests if r.path == "/v1/batches" and r.method == "POST"]
    with pytest.raises(NotFoundError):
        server.openai("alice").files.retrieve(foreign)  # the provider holds it; this key does not own it


def test_lists_show_none_of_the_providers_objects_that_no_key_made(server):
    with FILES.lock:
        FILES.add_file("elsewhere.jsonl", "batch", b"{}\n")
    assert server.openai("bob").files.list().data == []
    assert server.openai("bob").batches.list().data == []


def test_a_provider_id_no_stored_row_can_hold_is_listed_as_no_keys(server):
    """A provider's listing naming an id with a NUL (an OpenAI-compatible server may answer
    anything): on PostgreSQL asking whose it was failed (a 500); no key made it, so it is not listed."""
    with FILES.lock:
        made = FILES.add_file("odd.jsonl", "batch", b"{}\n")
        odd = made["id"] + "\u0000"
        FILES.files[odd], FILES.contents[odd] = (
            {**FILES.files.pop(made["id"]), "id": odd},
            FILES.contents.pop(made["id"]),
        )
    try:
        assert server.openai("bob").files.list().data == []
    finally:
        with FILES.lock:
            FILES.files.pop(odd, None), FILES.contents.pop(odd, None)
    assert "Traceback" not in server.log


def test_a_key_without_an_openai_kind_provider_in_its_allow_list_is_refused(server):
    with pytest.raises(PermissionDeniedError):
        server.openai("claude-only").files.list()
    status, _, body = server.request(
        "GET", "/v1/files", headers={**server.auth("alice"), "x-stockyard-provider": "nope"}
    )
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_provider"


def test_an_upload_to_a_provider_the_key_may_not_use_is_refused_before_the_body_arrives(server):
    head = (
        "POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
        f"Authorization: Bearer {server.keys['claude-only']}\r\nContent-Length: 900000\r\n\r\n"
    )
    with connect(server) as sock:
        sock.sendall(head.encode())
        status, headers, body = read_response(sock, timeout=5)
        assert status == 403 and headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "provider_not_allowed"


def test_wrong_method_is_405_with_allow(server):
    status, headers, _ = server.request("DELETE", "/v1/batches/batch_x", headers=server.auth("alice"))
    assert status == 405 and headers["allow"] == "GET, HEAD"


# -- files -------------------------------------------------------------------------------------


def trace_of(server: ServerProcess, headers) -> dict:
    """The request's trace, once the writer has committed it (it is written after the answer)."""
    path = f"/api/traces/{headers['x-stockyard-trace-id']}"
    found = wait_for(
        lambda: (
            (answer := server.request("GET", path, headers={"Authorization": f"Bearer {ADMIN}"}))[0] == 200 and answer
        ),
        what="the trace written",
    )
    return json.loads(found[2])


def test_upload_list_retrieve_content_delete_and_another_key_sees_none_of_it(server):
    alice, bob = server.openai("alice"), server.openai("bob")
    data = b'{"secret-marker": "the file bytes never reach a trace"}\n' * 3
    raw = alice.files.with_raw_response.create(file=("notes.jsonl", io.BytesIO(data)), purpose="user_data")
    made = raw.parse()
    assert made.id.startswith("file-") and made.bytes == len(data) and made.filename == "notes.jsonl"
    wait_for(lambda: server.db_rows("SELECT 1 FROM traces WHERE id = ?", (raw.headers["x-stockyard-trace-id"],)))
    trace = trace_of(server, raw.headers)
    assert trace["endpoint"] == "files.create" and trace["cost_uc"] == 0 and trace["cost_status"] == "exact"
    assert "secret-marker" not in trace["request_body"]
    form = json.loads(trace["request_body"])
    assert form["files"] == [
        {"name": "file", "filename": "notes.jsonl", "content_type": "application/octet-stream", "size": len(data)}
    ]
    assert form["fields"] == {"purpose": "user_data"}

    assert made.id in [f.id for f in alice.files.list()]
    assert made.id not in [f.id for f in bob.files.list()]
    assert alice.files.retrieve(made.id).filename == "notes.jsonl"
    assert alice.files.content(made.id).content == data
    for call in (bob.files.retrieve, bob.files.content, bob.files.delete):
        with pytest.raises(NotFoundError) as err:
            call(made.id)
        assert err.value.body["message"] == f"No such File object: {made.id}"  # as for an id nobody has
    assert alice.files.delete(made.id).deleted
    with pytest.raises(NotFoundError):
        alice.files.retrieve(made.id)
    assert not server.db_rows("SELECT 1 FROM owned_objects WHERE id = ?", (made.id,))


def test_file_content_is_relayed_as_a_stream_and_its_trace_keeps_only_the_size(server):
    alice = server.openai("alice")
    data = bytes(range(256)) * 4096  # 1 MiB, not text
    made = alice.files.create(file=("blob.bin", io.BytesIO(data)), purpose="user_data")
    raw = alice.files.with_raw_response.content(made.id)
    assert raw.headers["transfer-encoding"] == "chunked" and raw.content == data
    wait_for(lambda: server.db_rows("SELECT 1 FROM traces WHERE id = ?", (raw.headers["x-stockyard-trace-id"],)))
    trace = trace_of(server, raw.headers)
    assert trace["endpoint"] == "files.content" and json.loads(trace["response_body"]) == {"content_bytes": len(data)}


def test_head_on_file_content_is_the_streamed_gets_head_without_its_bytes(server):
    """HEAD on a route whose GET streams: its head (chunked, as the GET), no chunk of the body (nor read),
    and the connection stays usable for the next request."""
    made = server.openai("alice").files.create(file=("head.bin", io.BytesIO(b"x" * 70_000)), purpose="user_data")
    key = server.keys["alice"]
    with connect(server) as sock:
        sock.sendall(
            f"HEAD /v1/files/{made.id}/content HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n"
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        data = read_until_close(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in head, head
    assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b'{"status": "ok"}'), rest[:200]
    trace_id = re.search(rb"x-stockyard-trace-id: (\S+)", head).group(1).decode()
    trace = trace_of(server, {"x-stockyard-trace-id": trace_id})
    assert json.loads(trace["response_body"]) == {"content_bytes": 0}  # not one byte read from the provider


def test_lists_page_honestly_over_the_keys_own_files(server):
    alice, bob = server.openai("alice"), server.openai("bob")
    mine = []
    for n in range(5):  # interleaved with another key's files, which the pages must skip
        mine.append(alice.files.create(file=(f"a{n}.txt", io.BytesIO(b"a")), purpose="fine-tune").id)
        bob.files.create(file=(f"b{n}.txt", io.BytesIO(b"b")), purpose="fine-tune")
    first = alice.files.list(purpose="fine-tune", limit=2)
    assert [f.id for f in first.data] == mine[::-1][:2] and first.has_more
    assert [f.id for f in alice.files.list(purpose="fine-tune", limit=2)] == mine[::-1]  # the SDK follows `after`
    last = alice.files.list(purpose="fine-tune", limit=3, after=mine[2])
    assert [f.id for f in last.data] == [mine[1], mine[0]] and not last.has_more


def test_a_provider_named_by_header_keeps_the_file_and_serves_its_later_calls(server):
    alice = server.openai("alice", default_headers={"x-stockyard-provider": "groq"})
    raw = alice.files.with_raw_response.create(file=("g.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    made = raw.parse()
    assert server.db_rows("SELECT provider FROM owned_objects WHERE id = ?", (made.id,)) == [{"provider": "groq"}]
    again = server.openai("alice").files.with_raw_response.retrieve(made.id)  # no header: the recorded provider
    wait_for(lambda: server.db_rows("SELECT 1 FROM traces WHERE id = ?", (again.headers["x-stockyard-trace-id"],)))
    assert trace_of(server, again.headers)["provider"] == "groq"
    assert trace_of(server, raw.headers)["provider"] == "groq"


def test_a_key_with_a_model_allow_list_cannot_batch_other_models(server):
    mini = server.openai("mini")
    with pytest.raises(PermissionDeniedError) as err:
        mini.files.create(file=("in.jsonl", io.BytesIO(batch_input("gpt-4o-mini", "gpt-4o"))), purpose="batch")
    assert "'gpt-4o' (line 2" in err.value.body["message"]
    ok = mini.files.create(file=("in.jsonl", io.BytesIO(batch_input("gpt-4o-mini"))), purpose="batch")
    assert ok.id.startswith("file-")


# -- batches -----------------------------------------------------------------------------------


def test_batch_lifecycle_ownership_and_its_cost_at_the_batch_price(server):
    alice, bob = server.openai("alice"), server.openai("bob")
    models = ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini", "mock-error-400"]
    source = alice.files.create(file=("in.jsonl", io.BytesIO(batch_input(*models))), purpose="batch")
    with pytest.raises(NotFoundError) as err:
        bob.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert err.value.body["param"] == "input_file_id"

    batch = alice.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "nightly"}
    )
    assert batch.status == "in_progress" and batch.metadata == {"job": "nightly"}
    assert batch.id in [b.id for b in alice.batches.list()]
    assert batch.id not in [b.id for b in bob.batches.list()]
    for call in (bob.batches.retrieve, bob.batches.cancel):
        with pytest.raises(NotFoundError):
            call(batch.id)

    done = alice.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts.completed == 3 and done.request_counts.failed == 1
    lines = alice.files.content(done.output_file_id).content.splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["response"]["body"]["usage"]["prompt_tokens"] == PROMPT_TOKENS
    errors = alice.files.content(done.error_file_id).content.splitlines()
    assert [json.loads(e)["response"]["status_code"] for e in errors] == [400]
    for file_id in (done.output_file_id, done.error_file_id):  # the batch's files are its owner's
        with pytest.raises(NotFoundError):
            bob.files.retrieve(file_id)

    rows = wait_for(lambda: traces(server, "batches.usage"), what="the batch's usage row")
    assert len(rows) == 1
    row = rows[0]
    prompt, completion = 3 * PROMPT_TOKENS, 3 * 5
    numerator = (prompt * MINI_RATES[0] + completion * MINI_RATES[1]) * BATCH_PRICE[0]
    whole = 10**6 * BATCH_PRICE[1]
    expected = (numerator + whole // 2) // whole
    assert BATCH_PRICE == (1, 2)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
    assert row["cost_uc"] == expected and row["cost_status"] == "exact" and row["provider"] == "openai"
    alice_id = server.db_rows("SELECT id FROM client_keys WHERE name = 'alice'")[0]["id"]
    assert row["key_id"] == alice_id and row["model"] == "gpt-4o-mini"
    assert server.db_rows("SELECT billed FROM owned_objects WHERE id = ?", (batch.id,)) == [{"billed": 1}]
    spent = server.db_rows(
        "SELECT SUM(cost_uc) AS c FROM rollups_daily WHERE key_id = ? AND model = 'gpt-4o-mini'", (alice_id,)
    )
    assert spent[0]["c"] >= expected  # cost reports and budgets read the rollups

    alice.batches.retrieve(batch.id)
    alice.batches.list()
    assert len(traces(server, "batches.usage")) == 1  # seen again: already billed, never a second row


def test_a_batch_whose_create_answer_was_lost_is_found_owned_and_answered(server, mock):
    """Was: the provider made the batch but its answer never came back (the connection closed):
    the client got a 502 and the batch ran at the provider unowned and unbilled. The batch is now
    found among the provider's newest (same input file and endpoint, owned by no one), owned, and
    answered; a batch of that file owned already is not taken for it."""
    alice = server.openai("alice")
    source = alice.files.create(file=("in.jsonl", io.BytesIO(batch_input("gpt-4o-mini"))), purpose="batch")
    first = alice.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    mock.clear()
    mock.enqueue(Reply(), Reply(lost=True))  # the input file read back, then the lost create
    batch = alice.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    made = [b for b in FILES.batches.values() if b["input_file_id"] == source.id]
    assert len(made) == 2 and batch.id in {b["id"] for b in made} and batch.id != first.id
    assert [r.method for r in mock.requests if r.path == "/v1/batches"] == ["POST", "GET"]  # never sent twice
    alice_id = server.db_rows("SELECT id FROM client_keys WHERE name = 'alice'")[0]["id"]
    assert server.db_rows("SELECT key_id FROM owned_objects WHERE id = ?", (batch.id,)) == [{"key_id": alice_id}]
    assert alice.batches.retrieve(batch.id).status == "completed"
    assert "was lost" in server.log and "Traceback" not in server.log


def test_a_lost_create_never_takes_the_batch_of_a_create_running_beside_it(server, mock):
    """Was: a create whose answer was lost took the newest batch over its file that no one owned
    yet — which could be the batch of a second create of the same file still on its way back: both
    clients were answered with that one batch (the second's hold given back) and the lost batch ran
    unowned and unbilled. Two candidates are two batches: neither is taken, the first create is a
    502 as before and the second keeps its own batch."""
    alice = server.openai("alice")
    source = alice.files.create(file=("in.jsonl", io.BytesIO(batch_input("gpt-4o-mini"))), purpose="batch")
    listing, list_waits, second_made, second_answer = (threading.Event() for _ in range(4))
    mock.clear()
    mock.enqueue(Reply(), Reply(lost=True), Reply(wait=listing, hang_started=list_waits))
    results: dict[str, object] = {}

    def create(name: str) -> None:
        try:
            results[name] = alice.batches.create(
                input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        except APIStatusError as exc:
            results[name] = exc

    first = threading.Thread(target=create, args=("first",))
    first.start()
    assert list_waits.wait(10), "the lost create looks for its batch"
    mock.enqueue(Reply(), Reply(held=second_answer, hang_started=second_made))
    second = threading.Thread(target=create, args=("second",))
    second.start()
    assert second_made.wait(10), "the second batch is made, its answer not back yet"
    listing.set()
    first.join(10)
    second_answer.set()
    second.join(10)
    made = sorted(b["id"] for b in FILES.batches.values() if b["input_file_id"] == source.id)
    assert len(made) == 2
    answered = [r.id for r in results.values() if not isinstance(r, APIStatusError)]
    assert len(answered) == len(set(answered)), f"one batch answered to two creates: {results}"
    assert isinstance(results["first"], APIStatusError) and results["first"].status_code == 502
    assert results["second"].id == made[1]
    owned = server.db_rows("SELECT id FROM owned_objects WHERE kind = 'batch' AND id IN (?, ?)", tuple(made))
    assert [r["id"] for r in owned] == [made[1]]


def test_a_lost_create_keeps_no_other_keys_batches_in_its_trace(server, mock):
    """Was: when no batch was found, the trace of the failed create kept the provider's whole
    list of batches (other keys' ids, files and metadata) before the error; a key's traces hold
    its own objects only, as its lists do."""
    bob = server.openai("bob")
    theirs = bob.files.create(file=("in.jsonl", io.BytesIO(batch_input("gpt-4o-mini"))), purpose="batch")
    bobs = bob.batches.create(input_file_id=theirs.id, endpoint="/v1/chat/completions", completion_window="24h")
    alice = server.openai("alice")
    source = alice.files.create(file=("in.jsonl", io.BytesIO(batch_input("gpt-4o-mini"))), purpose="batch")
    mock.clear()
    mock.enqueue(Reply(), Reply(reset=True))
    with pytest.raises(APIStatusError) as err:
        alice.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert err.value.status_code == 502 and err.value.response.headers["x-should-retry"] == "false"
    assert "may have been created" in err.value.message  # none was found: the client is told not to retry
    assert not [b for b in FILES.batches.values() if b["input_file_id"] == source.id]
    assert [r.method for r in mock.requests if r.path == "/v1/batches"] == ["POST", "GET"]
    trace = trace_of(server, err.value.response.headers)
    assert bobs.id not in json.dumps(trace) and theirs.id not in json.dumps(trace)


def test_a_cancelled_batch(server):
    alice = server.openai("alice")
    source = alice.files.create(file=("in.jsonl", io.BytesIO(batch_input("gpt-4o-mini"))), purpose="batch")
    batch = alice.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert alice.batches.cancel(batch.id).status == "cancelling"
    assert alice.batches.retrieve(batch.id).status == "cancelled"
    costs = [r for r in server.db_rows("SELECT * FROM traces WHERE endpoint LIKE 'batches.%'") if r["cost_uc"]]
    assert all(r["endpoint"] == "batches.usage" for r in costs)


def test_a_key_whose_budget_is_used_up_starts_no_batch(server, mock):
    broke = server.openai("broke")
    source = broke.files.create(file=("in.jsonl", io.BytesIO(batch_input("gpt-4o-mini"))), purpose="batch")
    mock.clear()
    with pytest.raises(RateLimitError) as err:
        broke.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert err.value.code == "budget_exceeded" and err.value.response.headers["x-should-retry"] == "false"
    assert not mock.requests  # the provider never heard of it
    assert broke.files.retrieve(source.id).id == source.id  # files cost nothing: still served


def capped_batch_input(max_tokens: int) -> bytes:
    line = {
        "custom_id": "req-0",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens},
    }
    return (json.dumps(line) + "\n").encode()


def test_an_unbilled_batch_holds_its_worst_case_until_it_is_billed(server, mock):
    """Was: a batch's worst case was checked, not held: ten batches of $0.04 each all started under
    a $0.05 budget. Each unbilled batch now holds its worst case beside the next one."""
    small = server.openai("small")
    source = small.files.create(file=("in.jsonl", io.BytesIO(capped_batch_input(8000))), purpose="batch")
    first = small.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    (row,) = server.db_rows("SELECT held_uc, billed FROM owned_objects WHERE id = ?", (first.id,))
    assert 3_900_000 < row["held_uc"] < 4_200_000 and row["billed"] == 0  # ~$0.04 at the batch price
    mock.clear()
    with pytest.raises(RateLimitError) as err:
        small.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert err.value.code == "budget_exceeded"
    assert not [r for r in mock.requests if r.method == "POST" and r.path == "/v1/batches"]  # never started
    assert small.batches.retrieve(first.id).status == "completed"  # billed: its hold becomes its cost
    again = admitted_once_billed(
        server,
        first.id,
        lambda: small.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"),
        RateLimitError,
    )
    assert again.id != first.id


def test_a_batch_file_is_refused_at_the_line_that_passes_what_the_budget_has_left(server, mock):
    """Was: every line of a batch's input file was read and priced before its worst case was compared
    with the budget. Now the running worst case is compared with what is left as it grows: a file
    past it is the same 429 at that line, and the lines after it are not read (a malformed one later
    is not reached). Uploaded as ``user_data``, so the upload checked no line."""
    tight = server.openai("tight")
    bad = dict(json.loads(capped_batch_input(100)), custom_id="bad")
    bad["body"]["max_tokens"] = "lots"
    lines = capped_batch_input(8000) * 2 + (json.dumps(bad) + "\n").encode()  # ~$0.04 each: past $0.05
    source = tight.files.create(file=("in.jsonl", io.BytesIO(lines)), purpose="user_data")
    mock.clear()
    with pytest.raises(RateLimitError) as err:
        tight.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert err.value.code == "budget_exceeded" and "$0.05" in err.value.message, err.value.message
    assert "may cost at least $0.0" in err.value.message and "its first 2 requests alone" in err.value.message
    assert not [r for r in mock.requests if r.method == "POST" and r.path == "/v1/batches"]  # never started
    # the malformed line alone, within the budget: its 400 (it was never a reason to refuse above)
    alone = tight.files.create(file=("in.jsonl", io.BytesIO(lines.splitlines(True)[2])), purpose="user_data")
    with pytest.raises(BadRequestError) as err:
        tight.batches.create(input_file_id=alone.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert "line 1 of the batch file" in err.value.message and "max_tokens" in err.value.message


def test_a_running_batch_holds_its_worst_case_against_model_calls_too(server, mock):
    """Was: a batch's hold counted against new batches only: while it ran, the key's model calls
    could spend the whole budget, and the batch's cost came on top of it."""
    holder = server.openai("holder")
    source = holder.files.create(file=("in.jsonl", io.BytesIO(capped_batch_input(8000))), purpose="batch")
    batch = holder.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    hello = [{"role": "user", "content": "hi"}]
    # ~$0.012 at gpt-4o-mini's output rate: more than the ~$0.01 the ~$0.04 batch leaves of $0.05
    with pytest.raises(RateLimitError) as err:
        holder.chat.completions.create(model="gpt-4o-mini", messages=hello, max_tokens=20_000)
    assert err.value.code == "budget_exceeded"
    assert holder.chat.completions.create(model="gpt-4o-mini", messages=hello, max_tokens=100).choices
    assert holder.batches.retrieve(batch.id).status == "completed"  # billed: its cost replaces its hold
    answer = admitted_once_billed(
        server,
        batch.id,
        lambda: holder.chat.completions.create(model="gpt-4o-mini", messages=hello, max_tokens=20_000),
        RateLimitError,
    )
    assert answer.choices


def test_a_batch_line_with_the_image_tool_holds_its_images(server):
    """Was: a Responses line offering the image_generation tool held its text alone (~$0.0002 at
    the batch price), never the image it may make. One low 1024x1024 image (max_tool_calls 1) is
    gpt-image-1's 272 output tokens at $40 per 1M: 1,088,000 µ¢, 544,000 at the batch price."""
    drawer = server.openai("drawer")
    body = {
        "model": "gpt-4o-mini",
        "input": "draw a cat",
        "max_output_tokens": 16,
        "max_tool_calls": 1,
        "tools": [{"type": "image_generation", "quality": "low", "size": "1024x1024"}],
    }
    line = {"custom_id": "req-0", "method": "POST", "url": "/v1/responses", "body": body}
    source = drawer.files.create(file=("in.jsonl", io.BytesIO((json.dumps(line) + "\n").encode())), purpose="batch")
    batch = drawer.batches.create(input_file_id=source.id, endpoint="/v1/responses", completion_window="24h")
    (row,) = server.db_rows("SELECT held_uc FROM owned_objects WHERE id = ?", (batch.id,))
    text = -(-len(json.dumps(line)) // 4) * 15 + 16 * 60  # gpt-4o-mini: the whole line at 15 µ¢ a token, the cap at 60
    assert 544_000 < row["held_uc"] <= 544_000 + -(-text // 2), row["held_uc"]


def image_line(body: dict) -> bytes:
    line = {"custom_id": "img-0", "method": "POST", "url": "/v1/images/generations", "body": body}
    return (json.dumps(line) + "\n").encode()


def test_an_image_batch_is_held_at_its_images_and_costs_their_price(server, mock):
    """Was: a /v1/images/generations line was held as a chat call: four high 1024x1536 images of
    gpt-image-1 (4 × 6,240 tokens at $40 per 1M: $0.4992 at the batch price) held as four choices of
    the 4,096-token cap (~$0.33), which a $0.40 budget covers; and the images answer names no model,
    so the batch's cost was unknown. Now the line holds its images and is refused; a covered one is
    served and costs its answer's usage at gpt-image-1.5's image rates, halved."""
    painter = server.openai("painter")
    four = {"model": "gpt-image-1", "prompt": "a lighthouse", "n": 4, "quality": "high", "size": "1024x1536"}
    source = painter.files.create(file=("in.jsonl", io.BytesIO(image_line(four))), purpose="batch")
    mock.clear()
    with pytest.raises(RateLimitError) as err:
        painter.batches.create(input_file_id=source.id, endpoint="/v1/images/generations", completion_window="24h")
    assert err.value.code == "budget_exceeded"
    assert not [r for r in mock.requests if r.method == "POST" and r.path == "/v1/batches"]  # never started

    one = {"model": "gpt-image-1.5", "prompt": "a lighthouse", "quality": "low", "size": "1024x1024"}
    source = painter.files.create(file=("in.jsonl", io.BytesIO(image_line(one))), purpose="batch")
    batch = painter.batches.create(input_file_id=source.id, endpoint="/v1/images/generations", completion_window="24h")
    (held,) = server.db_rows("SELECT held_uc FROM owned_objects WHERE id = ?", (batch.id,))
    # one low square image: 272 tokens at $32 per 1M, its text (the 4,096 cap at $10), its prompt: ~$0.025
    assert 272 * 3200 // 2 < held["held_uc"] < 2_600_000, held
    done = painter.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts.completed == 1
    rows = wait_for(
        lambda: [r for r in traces(server, "batches.usage") if r["model"] == "gpt-image-1.5"], what="the usage row"
    )
    text_in, image_in = IMAGE_USAGE["input_tokens_details"].values()
    full = text_in * 500 + image_in * 800 + IMAGE_USAGE["output_tokens"] * 3200 + IMAGE_TEXT_OUTPUT_TOKENS * 1000
    assert [(r["cost_uc"], r["cost_status"]) for r in rows] == [(full // 2, "exact")]


def test_a_line_for_an_endpoint_no_hold_counts_is_a_400_naming_it_at_upload(server, mock):
    """Was: a /v1/videos line (OpenAI's batches take them) was held as a chat call; a batch hold here
    cannot count a video, so the file is refused, the provider never sent it."""
    alice = server.openai("alice")
    line = {"custom_id": "v0", "method": "POST", "url": "/v1/videos", "body": {"model": "sora-2", "prompt": "x"}}
    data = image_line({"model": "gpt-image-1", "prompt": "x"}) + (json.dumps(line) + "\n").encode()
    mock.clear()
    with pytest.raises(BadRequestError) as err:
        alice.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert err.value.code == "unsupported_batch_endpoint" and err.value.body["param"] == "file"
    assert err.value.body["message"].startswith("line 2 of the batch file names the url '/v1/videos'")
    assert not [r for r in mock.requests if r.path == "/v1/files"]


def test_batches_started_together_are_held_together(server):
    race = server.openai("race")
    source = race.files.create(file=("in.jsonl", io.BytesIO(capped_batch_input(8000))), purpose="batch")
    results: list[object] = []

    def start() -> None:
        try:
            race.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
            results.append("started")
        except RateLimitError as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=str) == ["budget_exceeded"] * 5 + ["started"]


def test_a_completed_batch_is_answered_at_once_while_its_cost_is_read_in_the_background(server, mock):
    alice = server.openai("alice")
    source = alice.files.create(file=("in.jsonl", io.BytesIO(batch_input("gpt-4o-mini"))), purpose="batch")
    batch = alice.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    before = len(traces(server, "batches.usage"))
    reading, read = threading.Event(), threading.Event()
    mock.enqueue(Reply(), Reply(wait=read, hang_started=reading))  # the retrieve, then a slow output file
    slow = threading.Timer(4, read.set)  # answered 4 s on at the latest, or once the retrieve was
    slow.start()
    try:
        started = time.monotonic()
        assert alice.batches.retrieve(batch.id).status == "completed"
        answered_in = time.monotonic() - started
        assert reading.wait(10)  # the output file is being read ...
        assert answered_in < 4 and not read.is_set()  # ... and the retrieve did not wait for it
    finally:
        read.set()
        slow.cancel()
    wait_for(lambda: len(traces(server, "batches.usage")) == before + 1, timeout=30, what="the batch's usage row")


def test_a_batch_line_may_reference_only_the_keys_own_response_items(server):
    """A batch line runs under the one provider key too: its `item_reference`s (and reasoning items sent
    by their id alone) may name only output items of responses the key holds, at the upload of a batch
    file and again when the batch starts, as its `previous_response_id` may name only its responses."""
    alice, bob = server.openai("alice"), server.openai("bob")
    theirs = alice.responses.create(model="gpt-4o-mini", input="my secret plan").output[0].id
    mine = bob.responses.create(model="gpt-4o-mini", input="my plan").output[0].id

    def line(named: str) -> bytes:
        body = {"model": "gpt-4o-mini", "input": [{"role": "user", "content": "Repeat it"}, {"id": named}]}
        return (json.dumps({"custom_id": "r", "method": "POST", "url": "/v1/responses", "body": body}) + "\n").encode()

    for named in (theirs, "msg_stockyard_never_saw_this"):
        with pytest.raises(APIStatusError) as refused:
            bob.files.create(file=("in.jsonl", io.BytesIO(line(mine) + line(named))), purpose="batch")
        assert refused.value.status_code == 400, refused.value.body
        assert "line 2" in refused.value.body["message"] and "input[1].id" in refused.value.body["message"]
        uploaded = bob.files.create(file=("in.jsonl", io.BytesIO(line(named))), purpose="user_data")
        with pytest.raises(APIStatusError) as refused:
            bob.batches.create(input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h")
        assert refused.value.status_code == 400 and "input[1].id" in refused.value.body["message"]
    uploaded = bob.files.create(file=("ok.jsonl", io.BytesIO(line(mine))), purpose="batch")
    assert bob.batches.create(input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h").id


def test_open_mode_passes_item_references_as_sent(openai_server, mock):
    """No client keys: one user, whose references are not checked (as its file ids are not)."""
    sdk = openai_server.openai("unused")
    items = [{"type": "item_reference", "id": "msg_made_elsewhere"}, {"role": "user", "content": "Go on"}]
    assert sdk.responses.create(model="gpt-4o-mini", input=items).id
    assert mock.last("/v1/responses").json["input"] == items


def test_open_mode_has_one_owner(openai_server):
    sdk = openai_server.openai("unused")
    made = sdk.files.create(file=("open.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    assert made.id in [f.id for f in sdk.files.list()]
    assert openai_server.db_rows("SELECT key_id FROM owned_objects WHERE id = ?", (made.id,)) == [{"key_id": ""}]


# -- the parts, in process -----------------------------------------------------------------------


def test_a_batch_with_a_model_without_a_price_has_an_unknown_cost():
    from stockyard.batch_costs import BatchTotal
    from stockyard.pricing import PriceTable

    table = PriceTable.load()
    total = BatchTotal()
    for model in ("gpt-4o-mini", "no-such-model-anywhere"):
        line = {"response": {"status_code": 200, "body": {"model": model, "usage": {"prompt_tokens": 10}}}}
        total.add(json.dumps(line).encode(), lambda m, mode: table.lookup_mode(m, "openai", mode, "openai"))
    assert total.cost() is None and total.unpriced == {"no-such-model-anywhere"}
    assert total.usage.prompt_tokens == 20 and total.models == ["gpt-4o-mini", "no-such-model-anywhere"]


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=14).map(lambda b: b.replace(b"\n", b"")), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_jsonl_lines_are_the_same_however_the_stream_is_cut(lines, cuts):
    """Every line up to MAX_LINE bytes, stripped, blank ones left out; longer ones skipped."""
    from stockyard import files_api

    data = b"\n".join(lines)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    saved, files_api.MAX_LINE = files_api.MAX_LINE, 10
    try:
        got = list(files_api.lines_of(iter(chunks)))
    finally:
        files_api.MAX_LINE = saved
    assert got == [line.strip() for line in lines if line.strip() and len(line) <= 10]


@pytest.mark.perf
def test_jsonl_lines_take_time_linear_in_the_streams_size():
    """Was: each line was cut off the front of the block it was in (``buf = buf[end + 1:]``),
    copying the rest every time: ~1 s of CPU per MiB of newlines in a batch upload (512 MiB
    allowed). Now 16 MiB of them, and 16 MiB of one-byte lines, take well under a second each."""
    from stockyard import files_api

    for data in (b"\n" * (16 << 20), b"a\n" * (8 << 20)):
        started = time.process_time()
        count = sum(1 for _ in files_api.lines_of(io.BytesIO(data)))
        assert count == data.count(b"a") and time.process_time() - started < 3.0


def test_jsonl_lines_are_read_across_chunks_and_an_oversized_line_is_skipped(monkeypatch):
    from stockyard import files_api

    monkeypatch.setattr(files_api, "MAX_LINE", 10)
    chunks = iter([b'{"a"', b':1}\n\n{"b":2}\n', b"x" * 30, b"y\n", b'{"c":3}'])
    assert list(files_api.lines_of(chunks)) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']

    class Spool(io.RawIOBase):  # like an upload's file part: a reader, which also iterates by lines
        def __init__(self, data: bytes) -> None:
            self.data, self.asked = data, []

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            self.asked.append(size)
            out, self.data = self.data[:size], self.data[size:]
            return out

    spool = Spool(b"one\ntwo\n" * 1000)
    assert len(list(files_api.lines_of(spool, block=4096))) == 2000
    assert set(spool.asked) == {4096}  # read in blocks, never byte by byte through readline


def test_a_line_tap_hands_each_line_over_with_the_chunk_that_completes_it(monkeypatch):
    """A relay feeds each chunk to its tap before the chunk goes on: a line is read before the
    client holds it whole (split across chunks: with the chunk that ends it; the last at the end)."""
    from stockyard import files_api

    monkeypatch.setattr(files_api, "MAX_LINE", 10)
    seen: list[list[bytes]] = []
    tap = files_api.LineTap(seen.append)
    for chunk, after in (
        (b'{"a"', []),
        (b':1}\n\n{"b":2}\n{"c', [[b'{"a":1}', b'{"b":2}']]),
        (b"x" * 30, []),  # a line too long to hold: passed over
        (b'y\n{"d":4}', []),
    ):
        tap.chunk(chunk)
        assert seen == after, chunk
        seen.clear()
    tap.end()
    assert seen == [[b'{"d":4}']]


def test_azure_files_live_under_openai_with_an_api_version_that_has_them():
    from stockyard.files_api import upstream_path
    from stockyard.providers import Provider

    azure = Provider("azure", "azure", "https://r.openai.azure.com", "k", api_version="2024-02-01")
    assert upstream_path(azure, "/files", {"limit": "100"}) == "/openai/files?api-version=2024-10-21&limit=100"
    openai = Provider("openai", "openai", "https://api.openai.com/v1", "k")
    assert upstream_path(openai, "/batches/b1/cancel") == "/batches/b1/cancel"


def test_which_providers_an_allow_list_lets_a_key_use():
    from stockyard.files_api import allowed_providers
    from stockyard.keys import KeyRecord
    from stockyard.providers import Provider, Registry

    registry = Registry(
        [
            Provider("openai", "openai", "http://o", "k", ("gpt-",)),
            Provider("anthropic", "anthropic", "http://a", "k", ("claude-",)),
            Provider("groq", "openai-compatible", "http://g", "k", ("llama-",)),
        ]
    )

    def names(models):
        key = KeyRecord("k1", "n", "sk-sy-x", "h", models=models)
        return [p.name for p in allowed_providers(registry, key)]

    assert names(None) == ["openai", "groq"] and names(("*",)) == ["openai", "groq"]
    assert names(("gpt-4o-mini",)) == ["openai"] and names(("llama-*",)) == ["groq"]
    assert names(("groq/whatever",)) == ["groq"] and names(("claude-*",)) == []


def test_a_download_the_provider_cuts_short_ends_short_for_the_client(server, mock):
    alice = server.openai("alice")
    made = alice.files.create(file=("cut.bin", io.BytesIO(b"z" * 200_000)), purpose="user_data")
    mock.enqueue(Reply(body=b"z" * 200_000, headers={"content-type": "application/octet-stream"}, cut_after=70_000))
    with pytest.raises(APIConnectionError):
        alice.files.content(made.id)
    rows = wait_for(
        lambda: server.db_rows("SELECT * FROM traces WHERE endpoint = 'files.content' AND outcome = 'stream_broken'")
    )
    assert rows[-1]["error_type"] == "upstream_reset"
    assert alice.files.retrieve(made.id).id == made.id  # the server goes on serving


def test_the_chain_tells_whether_a_module_runs_for_a_key():
    from stockyard.chain import Chain
    from stockyard.context import RequestContext
    from stockyard.modules.base import Scoped

    class Budget:
        name = "budget"

        def before(self, ctx) -> None: ...

        def after(self, ctx) -> None: ...

    ctx = RequestContext("batches.create", "openai", "127.0.0.1", {})
    ctx.key_id = "k1"
    assert Chain([Budget()]).runs("budget", ctx) and not Chain([Budget()]).runs("cache", ctx)
    scoped = Chain([Scoped(Budget(), True, {"key:k2": False})])
    assert scoped.runs("budget", ctx)
    ctx.key_id = "k2"
    assert not scoped.runs("budget", ctx)


def test_a_batch_nobody_asks_about_again_is_recorded_by_the_batch_watch(pyz_path, cache_home, mock, tmp_path):
    """A script that starts a batch and never looks again: the watch retrieves it on the owner's
    behalf, and its cost reaches the rollups (and so budgets and reports) all the same."""
    env = mock_env(cache_home, mock, STOCKYARD_BATCH_POLL="0.2s")
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env)
    secret = srv.cli("keys", "create", "--name", "nightly").stdout.strip()
    srv.start()
    try:
        sdk = srv.openai(secret)
        source = sdk.files.create(file=("in.jsonl", io.BytesIO(batch_input("gpt-4o-mini"))), purpose="batch")
        batch = sdk.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
        rows = wait_for(lambda: traces(srv, "batches.usage"), timeout=30, what="the watch's usage row")
        assert len(rows) == 1 and rows[0]["prompt_tokens"] == PROMPT_TOKENS and rows[0]["cost_uc"] > 0
        assert srv.db_rows("SELECT billed FROM owned_objects WHERE id = ?", (batch.id,)) == [{"billed": 1}]
        done = sdk.batches.retrieve(batch.id)  # the owner looks later: the watch made its files the owner's
        assert done.status == "completed" and sdk.files.content(done.output_file_id).content
        assert len(traces(srv, "batches.usage")) == 1  # and it is never recorded twice
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def test_a_cancelled_batch_is_billed_for_the_requests_it_finished(server, mock):
    """OpenAI bills the requests a cancelled or expired batch finished: its output file is read too."""
    alice = server.openai("alice")
    source = alice.files.create(file=("in.jsonl", io.BytesIO(batch_input("gpt-4o-mini"))), purpose="batch")
    batch = alice.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    line = {"custom_id": "req-0", "response": {"status_code": 200, "body": {"model": "gpt-4o-mini", "usage": usage}}}
    output = alice.files.create(file=("out.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")), purpose="user_data")
    before = len(traces(server, "batches.usage"))
    mock.enqueue(Reply(json={**batch.model_dump(), "status": "cancelled", "output_file_id": output.id}))
    assert alice.batches.retrieve(batch.id).status == "cancelled"
    rows = wait_for(lambda: traces(server, "batches.usage")[before:], timeout=30, what="the cancelled batch's row")
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (7, 3) and rows[0]["cost_uc"] > 0


@pytest.mark.parametrize(("value", "seconds"), [(None, 600.0), ("off", 0.0), ("0", 0.0), ("90s", 90.0), ("1h", 3600.0)])
def test_the_batch_watch_interval_setting(value, seconds, tmp_path):
    env = {"STOCKYARD_DB": str(tmp_path / "s.db"), **({"STOCKYARD_BATCH_POLL": value} if value else {})}
    assert load({}, env).batch_poll_s == seconds


def test_a_bad_batch_watch_interval_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="STOCKYARD_BATCH_POLL"):
        load({}, {"STOCKYARD_DB": str(tmp_path / "s.db"), "STOCKYARD_BATCH_POLL": "soon"})


def test_a_batch_whose_lines_name_a_model_with_a_nul_is_billed_and_recorded(server):
    """A batch's lines are relayed as the client wrote them, and its usage row names the models
    its output reports: one with a NUL (``\\u0000`` in the JSONL) made the row one PostgreSQL
    refused, so the batch was never recorded as billed (its usage lost, tried again on every
    look). The row keeps ``?`` for the NUL, on both stores."""
    alice = server.openai("alice")
    source = alice.files.create(file=("nul.jsonl", io.BytesIO(batch_input("gpt-4o-mini\x00"))), purpose="batch")
    batch = alice.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert alice.batches.retrieve(batch.id).status == "completed"
    billed = wait_for(lambda: server.db_rows("SELECT billed FROM owned_objects WHERE id = ?", (batch.id,))[0]["billed"])
    assert billed == 1
    models = [r["model"] for r in traces(server, "batches.usage")]
    assert "gpt-4o-mini?" in models and not any("\x00" in (m or "") for m in models)

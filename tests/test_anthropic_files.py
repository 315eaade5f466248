"""Anthropic's Files API (beta) through Stockyard with the official anthropic SDK, owned per client key.

The SDK calls ``/v1/files`` — the path OpenAI's files use — with ``anthropic-version``: such a call
goes to the key's Anthropic provider, answered in Anthropic's shapes; an OpenAI SDK's call (which
never sends that header) still goes to OpenAI. A file belongs to the key that uploaded it, and the
files the code execution tool writes to the key whose answer names them: another key gets the 404
a missing file gets (unasked), never sees it listed, and cannot name it in a message, a token count
or a message batch (a file holds a prompt).
"""

from __future__ import annotations

import json
import signal
import threading

import anthropic
import openai
import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import CODE_OUTPUT, MockUpstream, Recorded, Reply
from rawhttp import connect, read_until_close

ANTHROPIC_KEY = "sk-ant-test-files-0123456789abcdefANTHROPICSECRET"
MODEL = "claude-files-model"
TOOL = {"type": "code_execution_20250825", "name": "code_execution"}


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url)
    keys = {"alice": [], "bob": [], "carol": [], "dave": [], "openai-only": ["--models", "openai/*"]}
    with served(pyz_path, tmp_path_factory, "afiles", env, keys, never_logged=(ANTHROPIC_KEY,)) as srv:
        yield srv


def files_calls(mock: MockUpstream, since: int) -> list[Recorded]:
    """The calls the mock got on /v1/files… after the first ``since`` it had recorded."""
    return [r for r in mock.requests[since:] if r.path.startswith("/v1/files")]


def message(*blocks: dict) -> list[dict]:
    return [{"role": "user", "content": [*blocks, {"type": "text", "text": "what does it say?"}]}]


def document(file_id: str) -> dict:
    return {"type": "document", "source": {"type": "file", "file_id": file_id}}


def error_of(failure: pytest.ExceptionInfo) -> dict:
    """The error body of an SDK failure, which must be Anthropic's shape."""
    body = failure.value.response.json()
    assert body["type"] == "error" and set(body["error"]) >= {"type", "message"}, body
    return body["error"]


def test_upload_list_retrieve_message_download_delete(server: ServerProcess, mock: MockUpstream) -> None:
    client = server.anthropic("alice")
    before = len(mock.requests)
    uploaded = client.beta.files.upload(file=("notes.txt", b"the secret plan", "text/plain"))
    assert uploaded.id.startswith("file_") and uploaded.type == "file" and uploaded.size_bytes == 15
    sent = files_calls(mock, before)[0]
    assert sent.method == "POST" and sent.headers.get("x-api-key") == ANTHROPIC_KEY  # Anthropic's, not OpenAI's
    assert "files-api-2025-04-14" in sent.headers.get("anthropic-beta", "")  # the beta the API requires

    assert uploaded.id in [f.id for f in client.beta.files.list()]
    assert client.beta.files.retrieve_metadata(uploaded.id).filename == "notes.txt"

    answer = client.messages.create(model=MODEL, max_tokens=16, messages=message(document(uploaded.id)))
    assert answer.content[0].type == "text"
    assert client.messages.count_tokens(model=MODEL, messages=message(document(uploaded.id))).input_tokens > 0

    made = client.messages.create(
        model=MODEL,
        max_tokens=16,
        tools=[TOOL],
        messages=message({"type": "container_upload", "file_id": uploaded.id}),
    )
    result = next(b for b in made.content if b.type == "bash_code_execution_tool_result")
    written = result.content.content[0].file_id
    assert client.beta.files.download(written).read() == CODE_OUTPUT  # what its code wrote is the key's
    assert written in [f.id for f in client.beta.files.list()]

    assert client.beta.files.delete(uploaded.id).id == uploaded.id
    with pytest.raises(anthropic.NotFoundError) as failure:
        client.beta.files.retrieve_metadata(uploaded.id)
    assert error_of(failure)["type"] == "not_found_error"

    wanted = {f"anthropic_files.{name}" for name in ("create", "list", "retrieve", "content", "delete")}

    def traced() -> list[dict]:  # the writer commits traces after the answers: waited for
        rows = server.db_rows("SELECT endpoint, cost_uc FROM traces WHERE endpoint LIKE 'anthropic_files.%'")
        return rows if {r["endpoint"] for r in rows} >= wanted else []

    rows = wait_for(traced, what="every files call traced")
    assert all(r["cost_uc"] in (0, None) for r in rows)


def test_a_streamed_code_execution_answer_gives_its_files_to_the_key(server: ServerProcess) -> None:
    client = server.anthropic("carol")
    with client.messages.stream(
        model=MODEL, max_tokens=16, tools=[TOOL], messages=[{"role": "user", "content": "make a csv"}]
    ) as stream:
        final = stream.get_final_message()
    written = next(b for b in final.content if b.type == "bash_code_execution_tool_result").content.content[0].file_id
    assert client.beta.files.download(written).read() == CODE_OUTPUT
    with pytest.raises(anthropic.NotFoundError):
        server.anthropic("bob").beta.files.download(written)


def test_another_keys_file_is_missing_everywhere_unasked(server: ServerProcess, mock: MockUpstream) -> None:
    theirs = server.anthropic("alice").beta.files.upload(file=("a.txt", b"alice only", "text/plain")).id
    bob = server.anthropic("bob")
    before = len(mock.requests)
    for attempt in (
        lambda: bob.beta.files.retrieve_metadata(theirs),
        lambda: bob.beta.files.download(theirs),
        lambda: bob.beta.files.delete(theirs),
        lambda: bob.messages.create(model=MODEL, max_tokens=8, messages=message(document(theirs))),
        lambda: bob.messages.count_tokens(model=MODEL, messages=message(document(theirs))),
        lambda: bob.messages.create(
            model=MODEL, max_tokens=8, tools=[TOOL], messages=message({"type": "container_upload", "file_id": theirs})
        ),
    ):
        with pytest.raises(anthropic.NotFoundError) as failure:
            attempt()
        assert theirs in error_of(failure)["message"]
    with pytest.raises(anthropic.NotFoundError):
        bob.messages.batches.create(
            requests=[
                {
                    "custom_id": "one",
                    "params": {"model": MODEL, "max_tokens": 8, "messages": message(document(theirs))},
                }
            ]
        )
    assert mock.requests[before:] == []  # not one call reached the provider
    assert theirs not in [f.id for f in bob.beta.files.list()]
    assert server.anthropic("alice").beta.files.retrieve_metadata(theirs).id == theirs  # still there


def test_openai_sdk_files_still_go_to_openai(server: ServerProcess, mock: MockUpstream) -> None:
    before = len(mock.requests)
    made = server.openai("alice").files.create(file=("x.jsonl", b"{}\n"), purpose="assistants")
    assert made.object == "file" and made.purpose == "assistants"
    sent = files_calls(mock, before)[0]
    assert "anthropic-version" not in sent.headers and "x-api-key" not in sent.headers
    theirs = server.anthropic("alice").beta.files.upload(file=("b.txt", b"anthropic's", "text/plain")).id
    with pytest.raises(openai.NotFoundError):  # the OpenAI routes know no Anthropic file, and the other way
        server.openai("alice").files.retrieve(theirs)
    with pytest.raises(anthropic.NotFoundError):
        server.anthropic("alice").beta.files.retrieve_metadata(made.id)
    assert made.id not in [f.id for f in server.anthropic("alice").beta.files.list()]


def test_a_key_without_an_anthropic_provider_is_refused_in_anthropics_shape(server: ServerProcess) -> None:
    client = server.anthropic("openai-only")
    with pytest.raises(anthropic.PermissionDeniedError) as failure:
        client.beta.files.upload(file=("a.txt", b"x", "text/plain"))
    assert "Anthropic" in error_of(failure)["message"]
    with pytest.raises(anthropic.PermissionDeniedError):
        client.beta.files.list()


def test_lists_page_over_the_keys_own_files_both_ways(server: ServerProcess, mock: MockUpstream) -> None:
    dave = "dave"
    client = server.anthropic(dave)
    mine = [client.beta.files.upload(file=(f"{i}.txt", b"x%d" % i, "text/plain")).id for i in range(3)]
    server.anthropic("bob").beta.files.upload(file=("between.txt", b"bob's", "text/plain"))
    newest_first = list(reversed(mine))
    first = client.beta.files.list(extra_query={"limit": 2})
    assert [f.id for f in first.data] == newest_first[:2] and first.has_more  # type: ignore[attr-defined]
    assert (first.first_id, first.last_id) == tuple(newest_first[:2])  # type: ignore[attr-defined]
    assert [f.id for f in client.beta.files.list()] == newest_first
    assert [f.id for f in client.beta.files.list(limit=1)] == newest_first  # the SDK pages on by next_page

    def page(query: str) -> dict:
        status, _, body = server.request(
            "GET", f"/v1/files?{query}", headers={**server.auth(dave), "anthropic-version": "2023-06-01"}
        )
        assert status == 200, body
        return json.loads(body)

    older = page(f"limit=2&after_id={newest_first[1]}")
    assert [f["id"] for f in older["data"]] == newest_first[2:] and older["has_more"] is False
    newer = page(f"limit=1&before_id={newest_first[2]}")
    assert [f["id"] for f in newer["data"]] == [newest_first[1]] and newer["has_more"] is True

    before = len(mock.requests)
    bobs = server.anthropic("bob").beta.files.list().data[0].id
    after_bobs = page(f"after_id={bobs}")
    assert after_bobs["data"] == [] and after_bobs["has_more"] is False
    assert [r for r in files_calls(mock, before) if bobs in json.dumps(r.query)] == []  # unasked

    status, _, body = server.request(
        "GET", "/v1/files?limit=0", headers={**server.auth(dave), "anthropic-version": "2023-06-01"}
    )
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"


def test_a_claude_request_to_another_provider_naming_a_file_is_a_clear_400(server: ServerProcess) -> None:
    client = server.anthropic("alice")
    own = client.beta.files.upload(file=("c.txt", b"words", "text/plain")).id
    with pytest.raises(anthropic.BadRequestError) as failure:
        client.messages.create(model="gpt-4o-mini", max_tokens=8, messages=message(document(own)))
    assert "file" in error_of(failure)["message"]
    theirs = server.anthropic("bob").beta.files.upload(file=("d.txt", b"bob's", "text/plain")).id
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="gpt-4o-mini", max_tokens=8, messages=message(document(theirs)))


# -- errors Stockyard answers before the files handler runs -------------------------------------


def test_refusals_before_the_files_handler_are_in_anthropics_shape(server: ServerProcess) -> None:
    """Was: a refusal the server made before an Anthropic SDK's ``/v1/files…`` call reached its
    handler (a web origin or a host it does not answer for, a path under ``/v1/files`` it has no
    route for; its ``/v1/models`` alike) came in OpenAI's error shape. Now the call's
    ``anthropic-version`` chooses Anthropic's, with the same status, as the handler's own errors (a
    missing or wrong key: 401) always had."""
    origin = server.anthropic("alice", default_headers={"Origin": "http://evil.example"})
    with pytest.raises(anthropic.PermissionDeniedError) as failure:
        origin.beta.files.list()
    refused = error_of(failure)
    assert refused["type"] == "permission_error" and "evil.example" in refused["message"]
    with pytest.raises(anthropic.PermissionDeniedError) as failure:  # the models an Anthropic SDK lists too
        origin.models.list()
    assert error_of(failure)["type"] == "permission_error"

    host = server.anthropic("alice", default_headers={"Host": "evil.example"})
    with pytest.raises(anthropic.APIStatusError) as failure:
        host.beta.files.list()
    assert failure.value.status_code == 421
    assert error_of(failure)["type"] == "invalid_request_error" and "evil.example" in failure.value.api_message

    with pytest.raises(anthropic.NotFoundError) as failure:
        server.anthropic("alice").get("/v1/files/file_x/content/more", cast_to=object)
    assert error_of(failure)["type"] == "not_found_error"
    assert failure.value.api_message == "no route for GET /v1/files/file_x/content/more"

    with pytest.raises(anthropic.AuthenticationError) as failure:
        server.anthropic("sk-sy-not-a-key").beta.files.list()
    assert error_of(failure) == {"type": "authentication_error", "message": "invalid client key"}

    status, _, body = server.request("GET", "/v1/files", headers={"Origin": "http://evil.example"})
    assert status == 403 and json.loads(body)["error"]["code"] == "origin_not_allowed"  # OpenAI's call: OpenAI's


def test_a_files_call_during_the_drain_is_503_in_anthropics_shape(pyz_path, cache_home, tmp_path) -> None:
    """Was: the 503 a call gets once SIGTERM started the drain (on a kept-alive connection) was
    OpenAI's shape for an Anthropic SDK's ``/v1/files``; now it is Anthropic's ``overloaded_error``."""
    with MockUpstream() as upstream:
        env = mock_env(cache_home, upstream, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=upstream.url)
        srv = ServerProcess(pyz_path, tmp_path / "drain.db", env).start()
        release, started = threading.Event(), threading.Event()  # a call held at the provider keeps the drain on
        try:
            client = srv.anthropic("sk-sy-open-mode")  # open mode: any key
            assert client.beta.files.list().data == []  # its connection is kept alive
            upstream.enqueue(Reply(wait=release, hang_started=started))
            waiting = threading.Thread(
                target=lambda: srv.anthropic("sk-sy-open-mode").messages.create(
                    model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
                )
            )
            waiting.start()
            assert started.wait(30), "the held call reached the provider"
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "finishing in-flight requests" in srv.log, what="the drain started")
            with pytest.raises(anthropic.InternalServerError) as failure:
                client.beta.files.list()
            assert failure.value.status_code == 503
            assert error_of(failure) == {"type": "overloaded_error", "message": "server is shutting down"}
            release.set()
            waiting.join(30)
            # The drain ends by itself once the held call is answered. Was: stop() here, racing the end
            # of the drain on a busy machine — its second SIGTERM killed the server mid-exit (-15).
            assert srv.proc.wait(30) == 0
        finally:
            release.set()
            assert srv.stop() == 0
        assert "Traceback" not in srv.log


def test_a_files_call_without_host_or_with_ambiguous_framing_is_400_in_anthropics_shape(server: ServerProcess) -> None:
    """Was: the 400s for a head that is read but cannot be served — an HTTP/1.1 request without
    Host, Content-Length with Transfer-Encoding — came in OpenAI's shape for an Anthropic client's
    ``/v1/files`` (``send_error`` chose by path alone). Now the head's ``anthropic-version`` chooses,
    as for every later refusal; an OpenAI client's call keeps OpenAI's; a head that cannot be read
    at all (a bare CR) says nothing of its client and stays OpenAI's."""
    secret = server.keys["alice"]
    port = f"127.0.0.1:{server.port}"
    heads = {
        "needs a Host": f"GET /v1/files HTTP/1.1\r\nanthropic-version: 2023-06-01\r\nx-api-key: {secret}\r\n\r\n",
        "ambiguous": f"POST /v1/files HTTP/1.1\r\nHost: {port}\r\nanthropic-version: 2023-06-01\r\n"
        "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    }
    for says, head in heads.items():
        status, body = raw_exchange(server, head)
        assert status == 400 and body["type"] == "error", (says, body)
        assert body["error"]["type"] == "invalid_request_error" and says in body["error"]["message"]
        openai_head = head.replace("anthropic-version: 2023-06-01", f"Authorization: Bearer {secret}")
        status, body = raw_exchange(server, openai_head)
        assert status == 400 and body["error"]["type"] == "invalid_request_error" and "type" not in body, says
    unreadable = f"GET /v1/files HTTP/1.1\r\nHost: {port}\r\nanthropic-version: 1\rX: 1\r\n\r\n"
    status, body = raw_exchange(server, unreadable)
    assert status == 400 and "type" not in body and "control character" in body["error"]["message"]


def raw_exchange(server: ServerProcess, head: str) -> tuple[int, dict]:
    """The status and JSON error body of one request sent as raw bytes (the connection closes after)."""
    sock = connect(server)
    try:
        sock.sendall(head.encode("latin-1"))
        data = read_until_close(sock)
    finally:
        sock.close()
    top, _, body = data.partition(b"\r\n\r\n")
    return int(top.split(b" ")[1]), json.loads(body)

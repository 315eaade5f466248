"""OpenAI's Uploads API (``/v1/uploads``) through Stockyard with the official openai SDK.

The real pyz against the mock upstream (``mock_upstream.UploadsState``: parts kept per upload, the
complete makes a File of them in order). An Upload and its Parts are the key's that created it:
another key gets OpenAI's 404 on parts, complete and cancel, the provider unasked; the File the
complete makes is the key's as an uploaded one is. Runs on PostgreSQL too (``STOCKYARD_TEST_STORE``).
"""

from __future__ import annotations

import json
import secrets
import socket
from typing import Iterator

import openai
import pytest
from conftest import ServerProcess, base_env, mock_env, wait_for
from module_helpers import key_traces, new_key

ADMIN = "admin-secret-for-upload-tests-0123456789"
PROVIDER_KEY = "sk-openai-uploads-PROVIDERSECRET-0123456789"
MIB = 1024 * 1024
AZURE_KEY = "az-uploads-0123456789abcdefAZURESECRET"


def running(pyz_path, tmp_path_factory, name: str, env: dict[str, str]) -> Iterator[ServerProcess]:
    """A server on a database of its own for a module's tests; its log has no traceback at the end."""
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp(name) / "stockyard.db", env).start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_BATCH_POLL="off", OPENAI_API_KEY=PROVIDER_KEY)
    yield from running(pyz_path, tmp_path_factory, "uploads", env)


@pytest.fixture(scope="module")
def tight(pyz_path, cache_home, mock, tmp_path_factory):
    """A server whose uploads are 1 MiB at most and whose read deadline is 1 s."""
    limits = {"STOCKYARD_MAX_UPLOAD_BYTES": str(MIB), "STOCKYARD_REQUEST_READ_TIMEOUT": "1"}
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_BATCH_POLL="off", **limits)
    yield from running(pyz_path, tmp_path_factory, "uploads-tight", env)


@pytest.fixture(scope="module")
def azure(pyz_path, cache_home, mock, tmp_path_factory):
    """A server whose one provider is Azure OpenAI (the mock), at an api-version older than its files take."""
    azure_env = {"AZURE_OPENAI_API_KEY": AZURE_KEY, "AZURE_OPENAI_ENDPOINT": mock.url}
    env = {**base_env(cache_home), "STOCKYARD_ADMIN_KEY": ADMIN, "AZURE_OPENAI_API_VERSION": "2024-06-01", **azure_env}
    yield from running(pyz_path, tmp_path_factory, "uploads-azure", env)


def calls_to(mock, upload_id: str) -> list:
    return [r for r in mock.requests if r.path.startswith(f"/v1/uploads/{upload_id}")]


def chunked(client: openai.OpenAI, data: bytes, part_size: int, mime_type: str = "application/octet-stream"):
    """The SDK's ``upload_file_chunked`` of ``data`` in parts of ``part_size`` bytes."""
    name = "r.pdf" if mime_type == "application/pdf" else "big.bin"
    return client.uploads.upload_file_chunked(
        file=data, bytes=len(data), filename=name, mime_type=mime_type, purpose="user_data", part_size=part_size
    )


def test_the_sdks_chunked_upload_makes_a_file_of_the_keys(server, mock):
    """``upload_file_chunked`` in three parts: the parts reach the provider whole and in order, the
    File the complete makes is the key's (retrieved and downloaded byte for byte), and every call is
    traced at cost 0."""
    secret, name = new_key(server, ADMIN)
    client = server.openai(secret)
    data = secrets.token_bytes(250_000)
    upload = chunked(client, data, 100_000)
    assert upload.status == "completed" and upload.file is not None and upload.file.bytes == len(data)
    parts = [r for r in calls_to(mock, upload.id) if r.path.endswith("/parts")]
    assert len(parts) == 3 and all(r.headers.get("authorization") == f"Bearer {PROVIDER_KEY}" for r in parts)
    assert client.files.retrieve(upload.file.id).filename == "big.bin"
    parts_left = "SELECT id FROM owned_objects WHERE kind = 'upload_part' AND id LIKE ?"
    assert server.db_rows(parts_left, (f"{upload.id}/%",)) == []  # an ended upload's parts are no longer kept
    assert client.files.content(upload.file.id).content == data
    rows = wait_for(lambda: (r := key_traces(server, name)) and len(r) >= 7 and r)
    made = [r for r in rows if r["endpoint"].startswith("uploads.")]
    assert [r["endpoint"] for r in made] == ["uploads.create"] + ["uploads.parts"] * 3 + ["uploads.complete"]
    assert all((r["status"], r["cost_uc"], r["cost_status"]) == (200, 0, "exact") for r in made)
    assert PROVIDER_KEY not in server.log


def test_another_keys_upload_parts_and_file_are_openais_404(server, mock):
    """Key B names key A's upload: parts, complete and cancel are OpenAI's 404, the provider unasked;
    nor may B name A's part ids in its own upload's complete, nor read the File A's upload made."""
    a_secret, _ = new_key(server, ADMIN)
    b_secret, _ = new_key(server, ADMIN)
    a, b = server.openai(a_secret), server.openai(b_secret)
    upload = a.uploads.create(bytes=6, filename="a.txt", mime_type="text/plain", purpose="assistants")
    part = a.uploads.parts.create(upload.id, data=b"abcdef")
    asked = len(calls_to(mock, upload.id))
    with pytest.raises(openai.NotFoundError) as caught:
        b.uploads.parts.create(upload.id, data=b"zzzzzz")
    assert caught.value.body["type"] == "invalid_request_error" and upload.id in caught.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        b.uploads.complete(upload.id, part_ids=[part.id])
    with pytest.raises(openai.NotFoundError):
        b.uploads.cancel(upload.id)
    assert len(calls_to(mock, upload.id)) == asked
    theirs = b.uploads.create(bytes=6, filename="b.txt", mime_type="text/plain", purpose="assistants")
    with pytest.raises(openai.BadRequestError) as caught:
        b.uploads.complete(theirs.id, part_ids=[part.id])
    assert caught.value.body["param"] == "part_ids" and not calls_to(mock, theirs.id)
    done = a.uploads.complete(upload.id, part_ids=[part.id])
    assert done.status == "completed" and done.file is not None
    with pytest.raises(openai.NotFoundError):
        b.files.retrieve(done.file.id)
    assert done.file.id not in [f.id for f in b.files.list()]
    assert done.file.id in [f.id for f in a.files.list()]
    with pytest.raises(openai.NotFoundError):
        b.vector_stores.create(name="theirs", file_ids=[done.file.id])
    assert a.vector_stores.create(name="mine", file_ids=[done.file.id]).id


def test_a_cancel_and_a_part_of_another_upload_of_the_same_key(server, mock):
    """A key's own part of another of its uploads is no part of this one (a 400, unasked); a
    cancelled upload is the provider's to refuse parts for, its answer passed through."""
    secret, _ = new_key(server, ADMIN)
    client = server.openai(secret)
    first = client.uploads.create(bytes=3, filename="x.txt", mime_type="text/plain", purpose="assistants")
    second = client.uploads.create(bytes=3, filename="y.txt", mime_type="text/plain", purpose="assistants")
    part = client.uploads.parts.create(first.id, data=b"xyz")
    with pytest.raises(openai.BadRequestError):
        client.uploads.complete(second.id, part_ids=[part.id])
    assert not [r for r in calls_to(mock, second.id) if r.path.endswith("/complete")]
    assert client.uploads.cancel(second.id).status == "cancelled"
    client.uploads.parts.create(first.id, data=b"abc")
    assert client.uploads.cancel(first.id).status == "cancelled"
    parts_left = "SELECT id FROM owned_objects WHERE kind = 'upload_part' AND id LIKE ?"
    assert server.db_rows(parts_left, (f"{first.id}/%",)) == []
    with pytest.raises(openai.BadRequestError):
        client.uploads.parts.create(second.id, data=b"abc")


@pytest.mark.parametrize(
    "body, param",
    [({"part_ids": "part_x"}, "part_ids"), ({"part_ids": [1]}, "part_ids"), ({}, "part_ids")],
)
def test_a_malformed_complete_is_a_400(server, body, param):
    secret, _ = new_key(server, ADMIN)
    upload = server.openai(secret).uploads.create(bytes=1, filename="z", mime_type="text/plain", purpose="assistants")
    status, _, raw = server.request(
        "POST", f"/v1/uploads/{upload.id}/complete", body, headers={"Authorization": f"Bearer {secret}"}
    )
    assert status == 400 and json.loads(raw)["error"]["param"] == param


def test_a_part_over_the_upload_bound_is_a_413_unasked(tight, mock):
    """A part larger than STOCKYARD_MAX_UPLOAD_BYTES is OpenAI's 413 shape, the provider unasked."""
    secret, _ = new_key(tight, ADMIN)
    client = tight.openai(secret)
    upload = client.uploads.create(bytes=2 * MIB, filename="b", mime_type="text/plain", purpose="assistants")
    with pytest.raises(openai.APIStatusError) as caught:
        client.uploads.parts.create(upload.id, data=b"x" * (MIB + 1))
    assert caught.value.status_code == 413 and caught.value.body["code"] == "request_too_large"
    assert not [r for r in calls_to(mock, upload.id) if r.path.endswith("/parts")]


def test_a_part_the_client_never_finishes_is_cut_at_the_read_timeout(tight, mock):
    """Half a part, then silence: the server closes the connection at its read deadline, and nothing
    reaches the provider."""
    secret, _ = new_key(tight, ADMIN)
    upload = tight.openai(secret).uploads.create(bytes=10, filename="s", mime_type="text/plain", purpose="assistants")
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="data"; filename="data"\r\n\r\n'.encode()
    with socket.create_connection(("127.0.0.1", tight.port), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /v1/uploads/{upload.id}/parts HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {secret}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n"
            ).encode()
            + head
            + b"x" * 100
        )
        got = b""
        while chunk := sock.recv(65536):  # until the server closes it
            got += chunk
    assert not [r for r in calls_to(mock, upload.id) if r.path.endswith("/parts")]
    assert b" 500 " not in got.split(b"\r\n", 1)[0]


def test_a_part_over_openais_64_mib_is_a_413_unasked(server, mock):
    """OpenAI's bound on a part (64 MiB, the SDK's part size) is Stockyard's too, under a larger
    STOCKYARD_MAX_UPLOAD_BYTES: the part is refused, the provider unasked."""
    secret, _ = new_key(server, ADMIN)
    client = server.openai(secret)
    size = 64 * MIB + 1
    upload = client.uploads.create(bytes=size, filename="huge", mime_type="text/plain", purpose="assistants")
    with pytest.raises(openai.APIStatusError) as caught:
        client.uploads.parts.create(upload.id, data=bytes(size))
    assert caught.value.status_code == 413 and caught.value.body["param"] == "data"
    assert not [r for r in calls_to(mock, upload.id) if r.path.endswith("/parts")]


def test_a_pdf_uploaded_in_parts_is_held_at_the_page_limit(server):
    """Its pages are not counted across parts: its File keeps MAX_PDF_PAGES, as a PDF whose pages
    could not be counted does (a prompt naming it is held at them), and the log says so."""
    secret, _ = new_key(server, ADMIN)
    client = server.openai(secret)
    data = b"%PDF-1.7\n" + b"x" * 100 + b"\n%%EOF\n"
    made = chunked(client, data, 50, "application/pdf")
    assert made.file is not None
    rows = server.db_rows("SELECT kind, pages FROM owned_objects WHERE id = ?", (made.file.id,))
    assert rows == [{"kind": "file", "pages": 1000}]
    said = f"uploaded in parts as {made.file.id!r} are not counted: held at 1000"
    wait_for(lambda: said in server.log, 10, "the log line (the server's log is written as it flushes)")


def test_bad_input_is_a_clear_error_in_openais_shape(server, mock):
    """A create that is not JSON is a 400, a GET a 405, a part without a ``data`` file part a 400
    (the provider unasked), and a bare upload path no route: never a 500."""
    secret, _ = new_key(server, ADMIN)
    auth = {"Authorization": f"Bearer {secret}"}
    status, _, raw = server.request("POST", "/v1/uploads", raw=b"{not json", headers=auth)
    assert status == 400 and json.loads(raw)["error"]["type"]
    status, _, _ = server.request("GET", "/v1/uploads", headers=auth)
    assert status == 405
    upload = server.openai(secret).uploads.create(bytes=3, filename="t", mime_type="text/plain", purpose="assistants")
    form = b'--xx\r\nContent-Disposition: form-data; name="data"\r\n\r\nabc\r\n--xx--\r\n'
    headers = {**auth, "Content-Type": "multipart/form-data; boundary=xx"}
    status, _, raw = server.request("POST", f"/v1/uploads/{upload.id}/parts", raw=form, headers=headers)
    assert status == 400 and json.loads(raw)["error"]["param"] == "data"
    assert not calls_to(mock, upload.id)
    status, _, _ = server.request("POST", f"/v1/uploads/{upload.id}", {}, headers=auth)
    assert status == 404


def test_an_azure_upload_goes_to_azures_uploads_path_and_its_file_is_the_keys(azure, mock):
    """Azure's Uploads API (``/openai/uploads…`` at api-version 2024-10-21 or later, its ``api-key``):
    the SDK's chunked upload through it, the Upload and the File the key's."""
    secret, _ = new_key(azure, ADMIN)
    data = secrets.token_bytes(3000)
    made = chunked(azure.openai(secret), data, 1000)
    assert made.status == "completed" and made.file is not None
    sent = [r for r in mock.requests if r.path.startswith(f"/openai/uploads/{made.id}")]
    assert len(sent) == 4 and all(r.query.get("api-version") == "2024-10-21" for r in sent)
    assert all(r.headers.get("api-key") == AZURE_KEY for r in sent)
    rows = azure.db_rows("SELECT kind, provider FROM owned_objects WHERE id IN (?, ?)", (made.id, made.file.id))
    assert sorted(r["kind"] for r in rows) == ["file", "upload"]
    other, _ = new_key(azure, ADMIN)
    with pytest.raises(openai.NotFoundError):
        azure.openai(other).uploads.cancel(made.id)


def test_a_parts_trace_keeps_the_forms_metadata_never_its_bytes(server):
    """As a ``/v1/files`` upload's: the part's name, filename, type and size, none of its bytes."""
    secret, _ = new_key(server, ADMIN)
    client = server.openai(secret)
    data = b"secret-marker: the part's bytes never reach a trace\n" * 4
    upload = client.uploads.create(bytes=len(data), filename="p", mime_type="text/plain", purpose="assistants")
    raw = client.uploads.parts.with_raw_response.create(upload.id, data=("p.txt", data, "text/plain"))
    path = f"/api/traces/{raw.headers['x-stockyard-trace-id']}"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    found = wait_for(lambda: (got := server.request("GET", path, headers=admin))[0] == 200 and got)
    trace = json.loads(found[2])
    assert trace["endpoint"] == "uploads.parts" and (trace["cost_uc"], trace["cost_status"]) == (0, "exact")
    assert "secret-marker" not in trace["request_body"]
    form = json.loads(trace["request_body"])
    assert form["files"] == [{"name": "data", "filename": "p.txt", "content_type": "text/plain", "size": len(data)}]


def test_a_batch_file_uploaded_in_parts_runs_for_its_key_and_is_checked_when_the_batch_starts(server, mock):
    """Its lines were not read as it came in parts: the batch reads them back from the provider (a
    line naming another key's file refused, as for any batch), and another key's batch over it is a 404."""
    a_secret, _ = new_key(server, ADMIN)
    b_secret, _ = new_key(server, ADMIN)
    a, b = server.openai(a_secret), server.openai(b_secret)
    line = {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    data = (json.dumps({**line, "body": body}) + "\n").encode()
    made = a.uploads.upload_file_chunked(
        file=data, bytes=len(data), filename="b.jsonl", mime_type="text/jsonl", purpose="batch", part_size=64
    )
    assert made.file is not None
    with pytest.raises(openai.NotFoundError):
        b.batches.create(input_file_id=made.file.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = a.batches.create(input_file_id=made.file.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.input_file_id == made.file.id
    theirs = b.files.create(file=("t.txt", b"theirs"), purpose="user_data")
    named = {"role": "user", "content": [{"type": "file", "file": {"file_id": theirs.id}}]}
    data = (json.dumps({**line, "body": {**body, "messages": [named]}}) + "\n").encode()
    made = a.uploads.upload_file_chunked(
        file=data, bytes=len(data), filename="c.jsonl", mime_type="text/jsonl", purpose="batch", part_size=64
    )
    with pytest.raises(openai.NotFoundError) as caught:
        a.batches.create(input_file_id=made.file.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert theirs.id in caught.value.body["message"]

"""An attacker's look at the Containers API and the container checks of /v1/responses: a client
key (bob) after another's (alice's) containers by every shape the routes and the Responses body
allow, against the mock upstream and a real server process."""

from __future__ import annotations

import http.client
import io
import json
import time

import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import CONTAINERS
from openai import NotFoundError

from stockyard.httpio import MAX_JSON_VALUES

ADMIN = "admin-key-for-attack-containers-0123456789"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN)
    with served(pyz_path, tmp_path_factory, "attack-containers", env, {"alice": [], "bob": []}) as srv:
        yield srv


def alices_container(server: ServerProcess) -> str:
    made = server.openai("alice").containers.create(name="private")
    server.openai("alice").containers.files.create(made.id, file=("secret.txt", io.BytesIO(b"alice's secret")))
    return made.id


def raw_get(server: ServerProcess, method: str, target: str, who: str) -> tuple[int, bytes]:
    """A request with its target sent as written (urllib would not keep every shape)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {server.keys[who]}")
        conn.putheader("Content-Length", "0")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# -- paths ----------------------------------------------------------------------------------------


def test_no_path_shape_reaches_another_keys_container(server, mock):
    target = alices_container(server)
    shapes = [
        f"/v1/containers/{target}/",
        f"/v1/containers//{target}",
        f"/v1/containers/{target}?x=1",
        f"/v1/containers/{target.upper()}",
        f"/v1/containers/%2e%2e/containers/{target}",
        f"/v1/containers/{target}%2Ffiles",
        "/v1/containers/../containers/" + target,
        "/v1/containers/./files",
        "/v1/containers/../files",
        "/v1/containers/" + "a" * 201,
        f"/v1/containers/{target}/files/..",
        f"/v1/containers/{target}/files/../content",
    ]
    before = len(mock.requests)
    for shape in shapes:
        for method in ("GET", "DELETE"):
            status, body = raw_get(server, method, shape, "bob")
            assert status in (400, 404, 405), (method, shape, status, body)
            assert b"alice's secret" not in body and b"Traceback" not in body
    reached = [r.path for r in mock.requests[before:]]
    assert not [p for p in reached if target in p or target.upper() in p], reached
    assert target in CONTAINERS.containers


def test_dot_ids_are_not_sent_to_the_provider(server, mock):
    """A file id of dots under one's own container would be a relative path at the provider
    (``/containers/{id}/files/..`` is the container itself once a proxy normalises it)."""
    own = server.openai("bob").containers.create(name="bobs")
    before = len(mock.requests)
    for method in ("GET", "DELETE"):
        for tail in ("/files/..", "/files/.", "/files/../content"):
            status, body = raw_get(server, method, f"/v1/containers/{own.id}{tail}", "bob")
            assert status in (404, 405), (method, tail, status, body)
    assert [r.path for r in mock.requests[before:]] == []
    assert own.id in CONTAINERS.containers


# -- the Responses body ---------------------------------------------------------------------------


def test_a_shell_tool_may_not_name_another_keys_container(server, mock):
    """The hosted shell tool runs commands in the container its environment names
    (``{"type": "container_reference", "container_id": …}``): another key's is OpenAI's 404."""
    target = alices_container(server)
    before = len(mock.requests)
    status, _, body = server.request(
        "POST",
        "/v1/responses",
        {
            "model": "gpt-4o-mini",
            "input": "cat /mnt/data/secret.txt",
            "tools": [{"type": "shell", "environment": {"type": "container_reference", "container_id": target}}],
        },
        server.auth("bob"),
    )
    assert status == 404, body
    error = json.loads(body)["error"]
    assert target in error["message"] and error["param"] == "tools[0].environment.container_id"
    assert [r for r in mock.requests[before:] if r.path == "/v1/responses"] == []


def test_a_batch_line_may_not_name_another_keys_container_in_a_shell_tool(server, mock):
    target = alices_container(server)
    shell = {"type": "shell", "environment": {"type": "container_reference", "container_id": target}}
    line = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": "gpt-4o-mini", "input": "cat /mnt/data/*", "tools": [shell]},
    }
    before = len(mock.requests)
    with pytest.raises(NotFoundError) as err:
        server.openai("bob").files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch")
    assert target in err.value.body["message"] and "line 1" in err.value.body["message"]
    assert mock.requests[before:] == []


def test_a_file_id_field_beside_an_upload_must_be_the_keys_own(server, mock):
    """A multipart upload into the key's own container that also names another key's file in a
    ``file_id`` text field (OpenAI's form takes either): refused as the JSON ``file_id`` is."""
    alices = server.openai("alice").files.create(file=("a.txt", io.BytesIO(b"alice's")), purpose="user_data")
    own = server.openai("bob").containers.create(name="bobs-upload")
    boundary = "attackboundary"
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file_id"\r\n\r\n{alices.id}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\nbob's\r\n--{boundary}--\r\n"
    ).encode()
    before = len(mock.requests)
    status, _, body = server.request(
        "POST",
        f"/v1/containers/{own.id}/files",
        raw=form,
        headers={**server.auth("bob"), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 404, body
    assert json.loads(body)["error"]["param"] == "file_id" and alices.id in json.loads(body)["error"]["message"]
    assert mock.requests[before:] == []


def test_without_a_key_every_route_is_refused_before_its_body(server, mock):
    """No key (keys are required): a 401 while the promised body has not been sent at all."""
    before = len(mock.requests)
    for method, target in [
        ("POST", "/v1/containers"),
        ("GET", "/v1/containers"),
        ("POST", "/v1/containers/cntr_x/files"),
        ("DELETE", "/v1/containers/cntr_x"),
        ("GET", "/v1/containers/cntr_x/files/cfile_y/content"),
    ]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.putrequest(method, target)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", "1000000")
            conn.endheaders()  # and not a byte of the body: an answer now is one that did not wait for it
            resp = conn.getresponse()
            assert resp.status == 401, (method, target, resp.status)
            assert json.loads(resp.read())["error"]["message"]
        finally:
            conn.close()
    assert mock.requests[before:] == []


# -- resources ------------------------------------------------------------------------------------


def test_a_long_file_ids_list_is_checked_once_per_id(server, mock):
    """``file_ids`` repeating the key's own file a million times, then naming one it does not own:
    each distinct id is looked up once, not once per entry (a 15 MB body held a worker for half a
    minute of database reads, 32 MiB for a minute, before its 404)."""
    own = server.openai("bob").files.create(file=("x.csv", io.BytesIO(b"a\n")), purpose="user_data")
    body = {"name": "many", "file_ids": [own.id] * (MAX_JSON_VALUES - 1000) + ["file-not-bobs"]}  # as many as fit
    before = len(mock.requests)
    started = time.monotonic()
    status, _, answer = server.request("POST", "/v1/containers", body, server.auth("bob"))
    elapsed = time.monotonic() - started
    assert status == 404 and json.loads(answer)["error"]["message"] == "No such File object: file-not-bobs"
    assert elapsed < 6, elapsed  # a million reads took 26 s on the CI's cores
    assert [r for r in mock.requests[before:] if r.path == "/v1/containers"] == []


# -- lists ----------------------------------------------------------------------------------------


def test_paging_after_another_keys_id_says_nothing_of_it(server, mock):
    """``after`` naming another key's container answers as ``after`` naming none that exists: the
    provider's page after it would show whether it exists and where it stands among the key's own."""
    target = alices_container(server)
    own = server.openai("bob").containers.create(name="after-alices")
    pages = {}
    for after in (target, "cntr_never_made"):
        status, _, body = server.request("GET", f"/v1/containers?order=asc&after={after}", None, server.auth("bob"))
        assert status == 200, body
        pages[after] = json.loads(body)
    assert pages[target] == pages["cntr_never_made"]
    status, _, body = server.request("GET", "/v1/containers?order=asc", None, server.auth("bob"))
    assert own.id in [c["id"] for c in json.loads(body)["data"]]  # the key's own are listed still


# -- what is not a reference ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/chat/completions"])
def test_a_tools_own_schema_names_no_container_store_or_file(server, mock, path):
    """A function tool's parameters, and a structured answer's schema, are the client's own
    declarations: a ``container_id``, ``vector_store_id`` or ``file_id`` in their examples or
    defaults (a Docker agent's tool, say) names nothing the provider opens, so the call goes on."""
    examples = [{"container_id": "web-1", "vector_store_id": "kb 1", "file_id": "report.pdf"}]
    schema = {"type": "object", "properties": {"container_id": {"type": "string"}}, "examples": examples}
    if path == "/v1/responses":
        body = {
            "model": "gpt-4o-mini",
            "input": "restart web-1",
            "tools": [{"type": "function", "name": "restart", "parameters": schema}],
            "text": {"format": {"type": "json_schema", "name": "out", "schema": schema}},
        }
    else:
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "restart web-1"}],
            "tools": [{"type": "function", "function": {"name": "restart", "parameters": schema}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}},
        }
    mock.clear()
    status, _, answer = server.request("POST", path, body, server.auth("bob"))
    assert status == 200, answer
    assert [r.path for r in mock.requests] == [path]

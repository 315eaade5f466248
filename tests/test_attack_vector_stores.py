"""An attacker's look at the Vector Stores API and the file_search checks: a client key (bob) after
another's (alice's) stores and their files' text by every shape the routes and the bodies allow,
against the mock upstream and a real server process."""

from __future__ import annotations

import http.client
import io
import json
import time

import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import VECTOR_STORES
from openai import NotFoundError

from stockyard.httpio import MAX_JSON_VALUES

ADMIN = "admin-key-for-attack-vector-stores-0123456789"
SECRET = b"alice's secret recipe"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN)
    with served(pyz_path, tmp_path_factory, "attack-vstores", env, {"alice": [], "bob": []}) as srv:
        yield srv


def alices_store(server: ServerProcess) -> tuple[str, str]:
    """(alice's store, the file in it holding her secret)."""
    alice = server.openai("alice")
    secret = alice.files.create(file=("secret.txt", io.BytesIO(SECRET)), purpose="assistants").id
    return alice.vector_stores.create(name="private", file_ids=[secret]).id, secret


def raw_request(server: ServerProcess, method: str, target: str, who: str, body: bytes = b"") -> tuple[int, bytes]:
    """A request with its target sent as written (urllib would not keep every shape)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {server.keys[who]}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def reached(mock, before: int, *ids: str) -> list[str]:
    """The provider calls since ``before`` whose path or body names one of ``ids``."""
    return [
        f"{r.method} {r.path}"
        for r in mock.requests[before:]
        if any(i in r.path or i in r.query.values() or i.encode() in (r.body or b"") for i in ids)
    ]


# -- paths ----------------------------------------------------------------------------------------


def test_no_path_shape_reaches_another_keys_store_or_its_files(server, mock):
    target, secret = alices_store(server)
    own = server.openai("bob").vector_stores.create(name="bobs").id
    shapes = [
        f"/v1/vector_stores/{target}/",
        f"/v1/vector_stores//{target}",
        f"/v1/vector_stores/{target.upper()}",
        f"/v1/vector_stores/{target}%2Ffiles",
        f"/v1/vector_stores/%2e%2e/vector_stores/{target}",
        "/v1/vector_stores/../vector_stores/" + target,
        f"/v1/vector_stores/{own}/../{target}",
        f"/v1/vector_stores/{own}/files/../../{target}/files/{secret}/content",
        f"/v1/vector_stores/{own}/files/%2e%2e%2f%2e%2e%2f{target}/files/{secret}/content",
        f"/v1/vector_stores/{own}/files/{secret}/content",  # her file, under bob's own store
        f"/v1/vector_stores/{own}/files/{secret}",
        f"/v1/vector_stores/{own}/files/{secret}/cancel",
        f"/v1/vector_stores/{own}/file_batches/{secret}/content",
        f"/v1/vector_stores/{target}/files/{secret}/content",
        f"/v1/vector_stores/{target}/search",
        "/v1/vector_stores/" + "a" * 201,
    ]
    for shape in shapes:
        for method in ("GET", "POST", "DELETE"):
            sent = b'{"query": "recipe"}' if method == "POST" else b""
            status, body = raw_request(server, method, shape, "bob", sent)
            assert status in (400, 404, 405), (method, shape, status, body)
            assert SECRET not in body and b"Traceback" not in body
    assert target in VECTOR_STORES.stores and secret in VECTOR_STORES.files[target]


# -- the file_search tool -------------------------------------------------------------------------


def responses_body(tools: list, **more: object) -> dict:
    return {"model": "gpt-4o-mini", "input": "what is the recipe?", "tools": tools, **more}


def test_every_shape_naming_another_keys_store_is_404(server, mock):
    """A store's id anywhere the provider could read one (a ``vector_store_ids`` that is a string,
    a file_search tool's type written another way, the ids of an ``allowed_tools`` choice) is held
    as the file_search tool's list is: not only ``tools[i].vector_store_ids`` as a list."""
    target, _ = alices_store(server)
    bodies = {
        "a string": responses_body([{"type": "file_search", "vector_store_ids": target}]),
        "in tool_choice": responses_body(
            [{"type": "file_search", "vector_store_ids": ["vs_shared_one"]}],
            tool_choice={
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "file_search", "vector_store_ids": [target]}],
            },
        ),
        "under another type": responses_body([{"type": "file_search_preview", "vector_store_ids": [target]}]),
        "one id": responses_body([{"type": "file_search", "vector_store_id": target}]),
    }
    for shape, body in bodies.items():
        before = len(mock.requests)
        status, _, answer = server.request("POST", "/v1/responses", body, server.auth("bob"))
        assert status == 404, (shape, status, answer)
        assert json.loads(answer)["error"]["message"] == f"No vector store found with id '{target}'.", shape
        assert reached(mock, before, target) == [], shape


def test_an_id_no_row_can_hold_is_not_passed_on_as_no_ones(server, mock):
    """An id the store cannot hold (a NUL, a lone surrogate) is no key's without asking the store:
    it must not go on as a shared store's would, since a provider may read it as the store it
    truncates or repairs to; nor may an id padded with spaces or controls."""
    target, _ = alices_store(server)
    for shape in (target + "\\u0000", target + "\\ud800", " " + target, target + "\\n", target + "\\u200b"):
        raw = (
            '{"model": "gpt-4o-mini", "input": "x", "tools": [{"type": "file_search", "vector_store_ids": ["%s"]}]}'
            % shape
        ).encode()
        before = len(mock.requests)
        status, _, answer = server.request("POST", "/v1/responses", raw=raw, headers=server.auth("bob"))
        assert status == 400, (shape, status, answer)
        error = json.loads(answer)["error"]
        assert error["param"] == "tools[0].vector_store_ids" and error["type"] == "invalid_request_error", error
        assert reached(mock, before, target) == [], shape


def test_the_other_routes_a_responses_body_takes_are_checked_too(server, mock):
    """``/v1/responses/input_tokens``, ``/v1/responses/compact`` and a chat body with a file_search
    tool: another key's store is the same 404 before any provider call."""
    target, _ = alices_store(server)
    tools = [{"type": "file_search", "vector_store_ids": [target]}]
    for path, body in [
        ("/v1/responses/input_tokens", responses_body(tools)),
        ("/v1/responses/compact", responses_body(tools)),
        (
            "/v1/chat/completions",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "tools": tools},
        ),
    ]:
        before = len(mock.requests)
        status, _, answer = server.request("POST", path, body, server.auth("bob"))
        assert status == 404, (path, status, answer)
        assert reached(mock, before, target) == [], path


def test_a_batch_line_naming_another_keys_store_in_any_shape_is_refused(server, mock):
    target, _ = alices_store(server)
    tool = {"type": "file_search", "vector_store_ids": target}  # a string, not a list
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/responses", "body": responses_body([tool])}
    before = len(mock.requests)
    with pytest.raises(NotFoundError) as err:
        server.openai("bob").files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch")
    assert target in err.value.body["message"] and "line 1" in err.value.body["message"]
    assert mock.requests[before:] == []


# -- resources ------------------------------------------------------------------------------------


@pytest.mark.perf  # a bound on time: judged alone (under a loaded CI's other tests it took 15 s)
@pytest.mark.parametrize("distinct", [False, True])
def test_a_long_vector_store_ids_list_is_not_one_database_read_per_entry(server, mock, distinct):
    """A million store ids in a file_search tool, the last another key's: looked up in few reads,
    not one per entry (each id no key owns passes, so the check walked the whole list a row at a
    time before its 404, holding a worker)."""
    target, _ = alices_store(server)
    many = MAX_JSON_VALUES - 1000  # as many as a body may hold
    ids = [f"vs_{i:07d}" for i in range(many)] if distinct else ["vs_shared"] * many
    body = responses_body([{"type": "file_search", "vector_store_ids": [*ids, target]}])
    before = len(mock.requests)
    started = time.monotonic()
    status, _, answer = server.request("POST", "/v1/responses", body, server.auth("bob"))
    elapsed = time.monotonic() - started
    assert status == 404 and target in json.loads(answer)["error"]["message"], answer[:300]
    assert elapsed < 10, elapsed  # 21 s a row at a time on the CI's cores, 4 s in chunks
    assert [r for r in mock.requests[before:] if r.path == "/v1/responses"] == []


# -- headers --------------------------------------------------------------------------------------


def test_the_beta_header_carries_nothing_else(server, mock):
    own = server.openai("bob").vector_stores.create(name="beta").id
    before = len(mock.requests)
    for value in ("assistants=v2\r\nX-Evil: 1", "a" * 65, ",".join(["a"] * 17), "assistants=v2;x"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.putrequest("GET", f"/v1/vector_stores/{own}", skip_accept_encoding=True)
            conn.putheader("Authorization", f"Bearer {server.keys['bob']}")
            conn.putheader("OpenAI-Beta", value.replace("\r\n", "\r\n "))  # folded: the most a client can try
            conn.endheaders()
            resp = conn.getresponse()
            assert resp.status == 400, (value, resp.status)
            resp.read()
        finally:
            conn.close()
    assert [r for r in mock.requests[before:] if r.path.startswith("/v1/vector_stores")] == []


# -- lists ----------------------------------------------------------------------------------------


def test_paging_a_stores_files_by_another_keys_file_says_nothing_of_it(server, mock):
    """``after``/``before`` on the file list of one's own store (or of its file batch) naming another
    key's file answers as naming none that exists, without asking the provider: its page from
    there would say whether her file exists and where it stands among the key's own, as the
    top-level lists' cursors would (every file in the key's store is the key's own file)."""
    _, secret = alices_store(server)
    bob = server.openai("bob")
    mine = bob.files.create(file=("b.txt", io.BytesIO(b"bob's")), purpose="assistants").id
    own = bob.vector_stores.create(name="cursors", file_ids=[mine]).id
    batch = bob.vector_stores.file_batches.create(own, file_ids=[mine]).id
    empty = {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    for listed in (f"/v1/vector_stores/{own}/files", f"/v1/vector_stores/{own}/file_batches/{batch}/files"):
        for cursor in ("after", "before"):
            pages = {}
            for named in (secret, "file-never-made"):
                before = len(mock.requests)
                status, _, body = server.request("GET", f"{listed}?{cursor}={named}", None, server.auth("bob"))
                assert status == 200, body
                pages[named] = json.loads(body)
                assert reached(mock, before, named) == [], (listed, cursor)
            assert pages[secret] == pages["file-never-made"] == empty
            status, _, body = server.request("GET", f"{listed}?{cursor}={mine}", None, server.auth("bob"))
            assert status == 200 and mock.last(listed).query[cursor] == mine  # the key's own file goes on

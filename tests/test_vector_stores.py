"""OpenAI's Vector Stores API through Stockyard with the official openai SDK, against the mock upstream:
stores, their files and file batches owned by the client key that made them (another key gets OpenAI's
404 and never sees them listed), files given to a store held to the key's own, and the file_search tool
of /v1/responses refused another key's store (a store no key owns passes: shared ones are made outside)."""

from __future__ import annotations

import io
import json

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import FILES, VECTOR_STORES
from openai import BadRequestError, NotFoundError, OpenAI, RateLimitError

ADMIN = "admin-key-for-vector-stores-tests-0123456789"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN)
    keys = {"alice": [], "bob": [], "lister": [], "batcher": [], "slow": ["--rpm", "2"]}
    with served(pyz_path, tmp_path_factory, "vstores", env, keys) as srv:
        yield srv


def store_calls(mock) -> list:
    return [r for r in mock.requests if r.path.startswith("/v1/vector_stores")]


def upload(api: OpenAI, text: bytes, name: str = "doc.txt") -> str:
    return api.files.create(file=(name, io.BytesIO(text)), purpose="assistants").id


def file_search(store_ids: list[str]) -> list[dict]:
    return [{"type": "function", "name": "f"}, {"type": "file_search", "vector_store_ids": store_ids}]


# -- the Vector Stores API ------------------------------------------------------------------------


def test_the_sdk_manages_vector_stores_their_files_and_batches(server, mock):
    alice = server.openai("alice")
    cows, sky = upload(alice, b"cows eat grass", "cows.txt"), upload(alice, b"the sky is blue", "sky.txt")
    store = alice.vector_stores.create(name="farm", file_ids=[cows], metadata={"team": "a"})
    assert store.id.startswith("vs_") and store.file_counts.total == 1 and store.metadata == {"team": "a"}
    assert mock.last("/v1/vector_stores").headers["openai-beta"] == "assistants=v2"  # the SDK's, passed on
    assert alice.vector_stores.retrieve(store.id).name == "farm"
    assert alice.vector_stores.update(store.id, name="barn").name == "barn"
    assert store.id in [v.id for v in alice.vector_stores.list()]
    found = alice.vector_stores.search(store.id, query="grass", max_num_results=5).data
    assert [(r.file_id, r.content[0].text) for r in found] == [(cows, "cows eat grass")]

    added = alice.vector_stores.files.create(store.id, file_id=sky, attributes={"kind": "sky"})
    assert added.id == sky and added.vector_store_id == store.id and added.attributes == {"kind": "sky"}
    assert {f.id for f in alice.vector_stores.files.list(store.id, limit=10)} == {cows, sky}
    assert [f.id for f in alice.vector_stores.files.list(store.id, filter="completed", order="asc")] == [cows, sky]
    assert alice.vector_stores.files.update(sky, vector_store_id=store.id, attributes={"k": "v"}).attributes == {
        "k": "v"
    }
    assert alice.vector_stores.files.retrieve(sky, vector_store_id=store.id).attributes == {"k": "v"}
    assert [c.text for c in alice.vector_stores.files.content(sky, vector_store_id=store.id)] == ["the sky is blue"]
    assert alice.vector_stores.files.delete(sky, vector_store_id=store.id).deleted

    batch = alice.vector_stores.file_batches.create(store.id, file_ids=[sky])
    assert batch.object == "vector_store.files_batch" and batch.status == "in_progress"
    listed = alice.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id)
    assert [f.id for f in listed] == [sky]
    assert alice.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id).status == "completed"
    later = alice.vector_stores.file_batches.create(store.id, files=[{"file_id": cows, "attributes": {"a": 1}}])
    assert alice.vector_stores.file_batches.cancel(later.id, vector_store_id=store.id).status == "cancelled"

    assert alice.vector_stores.delete(store.id).deleted
    assert store.id not in VECTOR_STORES.stores
    with pytest.raises(NotFoundError):
        alice.vector_stores.retrieve(store.id)

    wanted = {
        "vector_stores.create",
        "vector_stores.retrieve",
        "vector_stores.update",
        "vector_stores.list",
        "vector_stores.search",
        "vector_stores.delete",
        "vector_stores.files.create",
        "vector_stores.files.list",
        "vector_stores.files.update",
        "vector_stores.files.retrieve",
        "vector_stores.files.content",
        "vector_stores.files.delete",
        "vector_stores.file_batches.create",
        "vector_stores.file_batches.list_files",
        "vector_stores.file_batches.retrieve",
        "vector_stores.file_batches.cancel",
    }
    rows = wait_for(
        lambda: (lambda rows: rows if {r["endpoint"] for r in rows} >= wanted else None)(
            server.db_rows("SELECT endpoint, cost_uc, status FROM traces WHERE endpoint LIKE 'vector_stores.%'")
        ),
        what="a trace of every vector store call",
    )
    assert {r["cost_uc"] for r in rows if r["status"] < 400} == {0}


def test_another_key_gets_404_for_a_store_its_files_and_batches_and_never_sees_it(server, mock):
    alice, bob = server.openai("alice"), server.openai("bob")
    kept = upload(alice, b"alice's notes")
    store = alice.vector_stores.create(name="alices", file_ids=[kept])
    batch = alice.vector_stores.file_batches.create(store.id, file_ids=[kept])
    bobs = upload(bob, b"bob's")
    mock.clear()
    attempts = [
        lambda: bob.vector_stores.retrieve(store.id),
        lambda: bob.vector_stores.update(store.id, name="mine"),
        lambda: bob.vector_stores.delete(store.id),
        lambda: bob.vector_stores.search(store.id, query="notes"),
        lambda: bob.vector_stores.files.list(store.id),
        lambda: bob.vector_stores.files.create(store.id, file_id=bobs),
        lambda: bob.vector_stores.files.retrieve(kept, vector_store_id=store.id),
        lambda: bob.vector_stores.files.update(kept, vector_store_id=store.id, attributes={}),
        lambda: bob.vector_stores.files.content(kept, vector_store_id=store.id),
        lambda: bob.vector_stores.files.delete(kept, vector_store_id=store.id),
        lambda: bob.vector_stores.file_batches.create(store.id, file_ids=[bobs]),
        lambda: bob.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id),
        lambda: bob.vector_stores.file_batches.cancel(batch.id, vector_store_id=store.id),
        lambda: bob.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id),
    ]
    for attempt in attempts:
        with pytest.raises(NotFoundError) as err:
            attempt()
        assert err.value.body["message"] == f"No vector store found with id '{store.id}'."
    missing = "vs_" + "0" * 30
    with pytest.raises(NotFoundError) as err:
        bob.vector_stores.retrieve(missing)
    assert err.value.body["message"] == f"No vector store found with id '{missing}'."  # the same answer
    assert store_calls(mock) == []  # none reached the provider
    assert store.id not in [v.id for v in bob.vector_stores.list(limit=100)]
    assert alice.vector_stores.retrieve(store.id).name == "alices"


def test_a_store_the_provider_has_but_stockyard_never_saw_is_no_keys_here(server):
    with VECTOR_STORES.lock:
        foreign = VECTOR_STORES.add("elsewhere", [])["id"]
    alice = server.openai("alice")
    with pytest.raises(NotFoundError):
        alice.vector_stores.retrieve(foreign)
    assert foreign not in [v.id for v in alice.vector_stores.list(limit=100)]


def test_files_given_to_a_store_must_be_the_keys_own(server, mock):
    alice, bob = server.openai("alice"), server.openai("bob")
    bobs = upload(bob, b"bob's secret")
    alices = alice.vector_stores.create(name="alices")
    with FILES.lock:
        foreign = FILES.add_file("elsewhere.txt", "assistants", b"2\n")["id"]
    mock.clear()
    for file_id in (bobs, foreign):
        attempts = [
            lambda f=file_id: alice.vector_stores.create(name="steal", file_ids=[f]),
            lambda f=file_id: alice.vector_stores.files.create(alices.id, file_id=f),
            lambda f=file_id: alice.vector_stores.file_batches.create(alices.id, file_ids=[f]),
            lambda f=file_id: alice.vector_stores.file_batches.create(alices.id, files=[{"file_id": f}]),
        ]
        for attempt in attempts:
            with pytest.raises(NotFoundError) as err:
                attempt()
            assert err.value.body["message"] == f"No such File object: {file_id}"
    assert store_calls(mock) == []


def test_the_list_is_the_keys_own_stores_paged_honestly(server):
    lister, bob = server.openai("lister"), server.openai("bob")
    mine = []
    for i in range(5):
        mine.append(lister.vector_stores.create(name=f"mine-{i}").id)
        bob.vector_stores.create(name=f"bobs-{i}")
    first = lister.vector_stores.list(limit=2)
    assert [v.id for v in first.data] == mine[::-1][:2] and first.has_more
    assert [v.id for v in lister.vector_stores.list(limit=2)] == mine[::-1]  # every page, by the SDK's cursor
    assert [v.id for v in lister.vector_stores.list(order="asc", limit=100).data] == mine
    with pytest.raises(BadRequestError) as err:  # not a first page passed off as the one asked for
        lister.vector_stores.list(before=mine[0], limit=2)
    assert err.value.body["param"] == "before" and err.value.body["code"] == "unsupported_parameter"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/vector_stores", "GET, HEAD, POST"),
        ("PATCH", "/v1/vector_stores/vs_x", "GET, HEAD, POST, DELETE"),
        ("GET", "/v1/vector_stores/vs_x/search", "POST"),
        ("DELETE", "/v1/vector_stores/vs_x/files", "GET, HEAD, POST"),
        ("PUT", "/v1/vector_stores/vs_x/files/file-x", "GET, HEAD, POST, DELETE"),
        ("POST", "/v1/vector_stores/vs_x/files/file-x/content", "GET, HEAD"),
        ("GET", "/v1/vector_stores/vs_x/file_batches", "POST"),
        ("POST", "/v1/vector_stores/vs_x/file_batches/vsfb_x", "GET, HEAD"),
        ("GET", "/v1/vector_stores/vs_x/file_batches/vsfb_x/cancel", "POST"),
        ("POST", "/v1/vector_stores/vs_x/file_batches/vsfb_x/files", "GET, HEAD"),
    ],
)
def test_a_wrong_method_is_405_naming_those_allowed(server, method, path, allowed):
    status, headers, body = server.request(method, path, {}, headers=server.auth("alice"))
    assert status == 405 and headers["allow"] == allowed
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/vector_stores", b"{not json", None),
        ("/v1/vector_stores", b"[1]", None),
        ("/v1/vector_stores", b'{"file_ids": "file-x"}', "file_ids"),
        ("/v1/vector_stores", b'{"file_ids": [1]}', "file_ids"),
        ("/v1/vector_stores/VS", b"{not json", None),
        ("/v1/vector_stores/VS/search", b"[]", None),
        ("/v1/vector_stores/VS/files", b'{"file_id": 7}', "file_id"),
        ("/v1/vector_stores/VS/files", b"{}", "file_id"),
        ("/v1/vector_stores/VS/file_batches", b'{"file_ids": [""]}', "file_ids"),
        ("/v1/vector_stores/VS/file_batches", b'{"files": [{"id": "file-x"}]}', "files"),
    ],
)
def test_bad_bodies_are_400_in_openais_shape_before_the_provider(server, mock, path, raw, param):
    made = server.openai("alice").vector_stores.create(name="bodies")
    mock.clear()
    status, _, body = server.request("POST", path.replace("VS", made.id), raw=raw, headers=server.auth("alice"))
    error = json.loads(body)["error"]
    assert status == 400 and error["type"] == "invalid_request_error" and error["param"] == param
    assert store_calls(mock) == []


def test_bad_ids_limits_headers_and_providers_are_clear_4xx(server, mock):
    headers = server.auth("alice")
    status, _, body = server.request("GET", "/v1/vector_stores?limit=101", headers=headers)
    assert status == 400 and json.loads(body)["error"]["param"] == "limit"
    status, _, body = server.request("GET", "/v1/vector_stores", headers={**headers, "x-stockyard-provider": "nope"})
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_provider"
    status, _, body = server.request("GET", "/v1/vector_stores/vs%25zz", headers=headers)  # no id: no route
    assert status == 404 and json.loads(body)["error"]["message"] == "no route for GET /v1/vector_stores/vs%25zz"
    mock.clear()
    status, _, body = server.request("GET", "/v1/vector_stores", headers={**headers, "OpenAI-Beta": "a;b"})
    error = json.loads(body)["error"]
    assert status == 400 and error["param"] == "OpenAI-Beta" and error["code"] == "invalid_header"
    assert store_calls(mock) == []
    status, _, body = server.request("GET", "/v1/vector_stores")
    assert status == 401 and json.loads(body)["error"]["code"] == "missing_api_key"
    assert "Traceback" not in server.log


def test_dot_ids_under_ones_own_store_are_not_sent_to_the_provider(server, mock):
    """A file or batch id of dots under one's own store would be a relative path at the provider
    (``/vector_stores/{id}/files/..`` is the store itself once a proxy normalises it: a DELETE
    there would end the store Stockyard still records)."""
    own = server.openai("bob").vector_stores.create(name="bobs")
    mock.clear()
    for method in ("GET", "DELETE", "POST"):
        for tail in ("/files/..", "/files/.", "/files/../content", "/file_batches/..", "/file_batches/../files"):
            status, _, body = server.request(method, f"/v1/vector_stores/{own.id}{tail}", headers=server.auth("bob"))
            assert status in (404, 405), (method, tail, status, body)
    assert store_calls(mock) == []
    for method in ("GET", "DELETE"):
        status, _, body = server.request(method, "/v1/vector_stores/..", headers=server.auth("bob"))
        assert status in (404, 405), (method, status, body)
    assert store_calls(mock) == []


def test_each_call_is_one_of_the_keys_requests_per_minute(server, mock):
    slow = server.openai("slow")
    made = slow.vector_stores.create(name="slow")
    slow.vector_stores.retrieve(made.id)
    mock.clear()
    with pytest.raises(RateLimitError) as err:
        slow.vector_stores.files.list(made.id)
    assert err.value.response.headers.get("retry-after")
    assert store_calls(mock) == []


def test_open_mode_has_one_owner(pyz_path, cache_home, mock, tmp_path):
    """No client keys: every caller is the one owner, as for files; file_search names anything."""
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", mock_env(cache_home, mock)).start()
    try:
        api = srv.openai("anything")
        doc = upload(api, b"open text")
        made = api.vector_stores.create(name="open", file_ids=[doc])
        assert made.id in [v.id for v in api.vector_stores.list(limit=100)]
        assert api.vector_stores.files.retrieve(doc, vector_store_id=made.id).id == doc
        assert api.responses.create(model="gpt-4o-mini", input="find", tools=file_search([made.id])).output
        rows = srv.db_rows("SELECT key_id, kind FROM owned_objects WHERE id = ?", (made.id,))
        assert [(r["key_id"], r["kind"]) for r in rows] == [("", "vector_store")]
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


# -- the file_search tool on /v1/responses --------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_response_searching_another_keys_store_is_404_and_reaches_no_provider_one_no_key_owns_passes(
    server, mock, stream
):
    alices = server.openai("alice").vector_stores.create(name="private").id
    mock.clear()
    with pytest.raises(NotFoundError) as err:
        server.openai("bob").responses.create(
            model="gpt-4o-mini", input="find", tools=file_search(["vs_shared_x", alices]), stream=stream
        )
    assert err.value.body["message"] == f"No vector store found with id '{alices}'."
    assert err.value.body["param"] == "tools[1].vector_store_ids"
    assert mock.requests == []
    server.openai("alice").responses.create(model="gpt-4o-mini", input="find", tools=file_search([alices]))
    assert mock.last("/v1/responses").json["tools"][1]["vector_store_ids"] == [alices]  # its owner searches it
    with VECTOR_STORES.lock:  # operators make shared stores outside Stockyard: an id no key made goes on
        shared = VECTOR_STORES.add("shared", [])["id"]
    mock.clear()
    answer = server.openai("bob").responses.create(
        model="gpt-4o-mini", input="find", tools=file_search([shared]), stream=stream
    )
    assert list(answer) if stream else answer.output
    assert mock.last("/v1/responses").json["tools"][1]["vector_store_ids"] == [shared]


def test_a_batch_line_searching_another_keys_store_is_refused(server, mock):
    alices = server.openai("alice").vector_stores.create(name="alices").id
    with VECTOR_STORES.lock:
        shared = VECTOR_STORES.add("shared", [])["id"]

    def line(store_id: str) -> bytes:
        body = {"model": "gpt-4o-mini", "input": "find", "tools": file_search([store_id])}
        return json.dumps({"custom_id": "r1", "method": "POST", "url": "/v1/responses", "body": body}).encode()

    batcher = server.openai("batcher")
    mock.clear()
    with pytest.raises(NotFoundError) as err:
        batcher.files.create(file=("in.jsonl", io.BytesIO(line(alices))), purpose="batch")
    assert alices in err.value.body["message"] and "line 1" in err.value.body["message"]
    assert mock.requests == []
    assert batcher.files.create(file=("in.jsonl", io.BytesIO(line(shared))), purpose="batch").id

"""OpenAI's Containers API through Stockyard with the official openai SDK, against the mock upstream:
containers and their files owned by the client key that made them (another key gets OpenAI's 404 and
never sees them listed), and the code interpreter of /v1/responses held to the key's own containers
(an auto container the provider made for a key's response becomes that key's)."""

from __future__ import annotations

import io
import json
import zlib

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import CHART, CONTAINERS, FILES, TEXT, Reply, responses_object, responses_stream
from mock_upstream import run_code as mock_run_code
from openai import NotFoundError, RateLimitError

ADMIN = "admin-key-for-containers-tests-0123456789"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-0123456789abcdef",  # not OpenAI-kind: never serves containers
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_ADMIN_KEY=ADMIN,
    )
    keys = {"alice": [], "bob": [], "lister": [], "batcher": [], "slow": ["--rpm", "2"]}
    with served(pyz_path, tmp_path_factory, "containers", env, keys) as srv:
        yield srv


def container_calls(mock) -> list:
    return [r for r in mock.requests if r.path.startswith("/v1/containers")]


def code_tool(container: object) -> list[dict]:
    return [{"type": "code_interpreter", "container": container}]


def run_code(server: ServerProcess, who: str, container: object, stream: bool) -> tuple[str, str]:
    """A Responses call with the code interpreter: (the container it ran in, the file it cited)."""
    api = server.openai(who)
    if stream:
        events = list(api.responses.create(model="gpt-4o-mini", input="plot", tools=code_tool(container), stream=True))
        output = events[-1].response.output
    else:
        output = api.responses.create(model="gpt-4o-mini", input="plot", tools=code_tool(container)).output
    ran, message = output
    cited = message.content[0].annotations[0]
    assert ran.type == "code_interpreter_call" and cited.type == "container_file_citation"
    assert cited.container_id == ran.container_id and message.content[0].text == TEXT
    return ran.container_id, cited.file_id


# -- the Containers API ---------------------------------------------------------------------------


def test_the_sdk_manages_containers_and_their_files(server):
    alice = server.openai("alice")
    uploaded = alice.files.create(file=("data.csv", io.BytesIO(b"a,b\n1,2\n")), purpose="user_data")
    made = alice.containers.create(
        name="analysis", file_ids=[uploaded.id], expires_after={"anchor": "last_active_at", "minutes": 30}
    )
    assert made.id.startswith("cntr_") and made.name == "analysis" and made.expires_after.minutes == 30
    assert alice.containers.retrieve(made.id).id == made.id
    assert made.id in [c.id for c in alice.containers.list()]

    assert [f.path for f in alice.containers.files.list(made.id)] == ["/mnt/data/data.csv"]
    sent = alice.containers.files.create(made.id, file=("notes.txt", io.BytesIO(b"secret notes")))
    assert sent.object == "container.file" and sent.container_id == made.id and sent.bytes == 12
    copied = alice.containers.files.create(made.id, file_id=uploaded.id)
    assert alice.containers.files.retrieve(copied.id, container_id=made.id).path == "/mnt/data/data.csv"
    assert alice.containers.files.content.retrieve(sent.id, container_id=made.id).read() == b"secret notes"
    assert {f.id for f in alice.containers.files.list(made.id, limit=10)} >= {sent.id, copied.id}
    alice.containers.files.delete(sent.id, container_id=made.id)
    with pytest.raises(NotFoundError):
        alice.containers.files.retrieve(sent.id, container_id=made.id)

    alice.containers.delete(made.id)
    assert made.id not in CONTAINERS.containers
    with pytest.raises(NotFoundError):
        alice.containers.retrieve(made.id)

    names = {
        r["endpoint"]
        for r in wait_for(
            lambda: (lambda rows: rows if len({r["endpoint"] for r in rows}) >= 9 else None)(
                server.db_rows("SELECT endpoint, cost_uc, status FROM traces WHERE endpoint LIKE 'containers.%'")
            ),
            what="a trace of every container call",
        )
    }
    assert names >= {
        "containers.create",
        "containers.retrieve",
        "containers.list",
        "containers.delete",
        "containers.files.create",
        "containers.files.list",
        "containers.files.retrieve",
        "containers.files.content",
        "containers.files.delete",
    }
    rows = server.db_rows("SELECT cost_uc, status FROM traces WHERE endpoint LIKE 'containers.%'")
    assert {r["cost_uc"] for r in rows if r["status"] < 400} == {0}
    bodies = server.db_rows(
        "SELECT b.request, b.response FROM trace_bodies b JOIN traces t ON t.id = b.trace_id"
        " WHERE t.endpoint LIKE 'containers.files.%'"
    )
    texts = [zlib.decompress(bytes(v)) for b in bodies for v in (b["request"], b["response"]) if v is not None]
    assert texts and not any(b"secret notes" in text for text in texts)  # metadata only, never file bytes


def test_another_key_gets_404_for_a_container_and_its_files_and_never_sees_it(server, mock):
    alice, bob = server.openai("alice"), server.openai("bob")
    made = alice.containers.create(name="alices")
    kept = alice.containers.files.create(made.id, file=("mine.txt", io.BytesIO(b"alice's")))
    mock.clear()
    attempts = [
        lambda: bob.containers.retrieve(made.id),
        lambda: bob.containers.delete(made.id),
        lambda: bob.containers.files.list(made.id),
        lambda: bob.containers.files.create(made.id, file=("x.txt", io.BytesIO(b"x"))),
        lambda: bob.containers.files.retrieve(kept.id, container_id=made.id),
        lambda: bob.containers.files.content.retrieve(kept.id, container_id=made.id),
        lambda: bob.containers.files.delete(kept.id, container_id=made.id),
    ]
    for attempt in attempts:
        with pytest.raises(NotFoundError) as err:
            attempt()
        assert err.value.body["message"] == f"Container with id '{made.id}' not found."
    missing = "cntr_" + "0" * 40
    with pytest.raises(NotFoundError) as err:
        bob.containers.retrieve(missing)
    assert err.value.body["message"] == f"Container with id '{missing}' not found."  # the same answer
    assert container_calls(mock) == []  # none reached the provider
    assert made.id not in [c.id for c in bob.containers.list()]
    assert alice.containers.files.content.retrieve(kept.id, container_id=made.id).read() == b"alice's"


def test_a_container_the_provider_has_but_stockyard_never_saw_is_no_keys(server):
    with CONTAINERS.lock:
        foreign = CONTAINERS.add("elsewhere", [])["id"]
    alice = server.openai("alice")
    with pytest.raises(NotFoundError):
        alice.containers.retrieve(foreign)
    assert foreign not in [c.id for c in alice.containers.list(limit=100)]


def test_files_copied_into_a_container_must_be_the_keys_own(server, mock):
    alice, bob = server.openai("alice"), server.openai("bob")
    alices = alice.files.create(file=("a.csv", io.BytesIO(b"1\n")), purpose="user_data")
    bobs = bob.containers.create(name="bobs")
    with FILES.lock:
        foreign = FILES.add_file("elsewhere.csv", "user_data", b"2\n")["id"]
    mock.clear()
    for file_id in (alices.id, foreign):
        with pytest.raises(NotFoundError) as err:
            bob.containers.create(name="steal", file_ids=[file_id])
        assert err.value.body["message"] == f"No such File object: {file_id}"
        with pytest.raises(NotFoundError):
            bob.containers.files.create(bobs.id, file_id=file_id)
    assert container_calls(mock) == []


def test_the_list_is_the_keys_own_containers_paged_honestly(server):
    lister, bob = server.openai("lister"), server.openai("bob")
    mine = []
    for i in range(5):
        mine.append(lister.containers.create(name=f"mine-{i}").id)
        bob.containers.create(name=f"bobs-{i}")
    first = lister.containers.list(limit=2)
    assert [c.id for c in first.data] == mine[::-1][:2] and first.has_more
    assert [c.id for c in lister.containers.list(limit=2)] == mine[::-1]  # every page, by the SDK's cursor
    assert [c.id for c in lister.containers.list(order="asc", limit=100).data] == mine
    named = lister.containers.list(name="mine-3").data
    assert [c.id for c in named] == [mine[3]]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/containers", "GET, HEAD, POST"),
        ("POST", "/v1/containers/cntr_x", "GET, HEAD, DELETE"),
        ("PUT", "/v1/containers/cntr_x/files", "GET, HEAD, POST"),
        ("POST", "/v1/containers/cntr_x/files/cfile_x", "GET, HEAD, DELETE"),
        ("DELETE", "/v1/containers/cntr_x/files/cfile_x/content", "GET, HEAD"),
    ],
)
def test_a_wrong_method_is_405_naming_those_allowed(server, method, path, allowed):
    status, headers, body = server.request(method, path, {}, headers=server.auth("alice"))
    assert status == 405 and headers["allow"] == allowed
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/containers", b"{not json", None),
        ("/v1/containers", b"[1]", None),
        ("/v1/containers", b'{"file_ids": "file-x", "name": "n"}', "file_ids"),
        ("/v1/containers", b'{"file_ids": [1], "name": "n"}', "file_ids"),
        ("/v1/containers/CID/files", b'{"file_id": 7}', "file_id"),
        ("/v1/containers/CID/files", b"{}", "file_id"),
    ],
)
def test_bad_bodies_are_400_in_openais_shape_before_the_provider(server, mock, path, raw, param):
    made = server.openai("alice").containers.create(name="bodies")
    mock.clear()
    status, _, body = server.request("POST", path.replace("CID", made.id), raw=raw, headers=server.auth("alice"))
    error = json.loads(body)["error"]
    assert status == 400 and error["type"] == "invalid_request_error" and error["param"] == param
    assert container_calls(mock) == []


def test_bad_ids_limits_and_providers_are_clear_4xx(server, mock):
    headers = server.auth("alice")
    status, _, body = server.request("GET", "/v1/containers?limit=0", headers=headers)
    assert status == 400 and json.loads(body)["error"]["param"] == "limit"
    status, _, body = server.request("GET", "/v1/containers", headers={**headers, "x-stockyard-provider": "nope"})
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_provider"
    status, _, body = server.request(
        "POST", "/v1/containers", {"name": "x"}, headers={**headers, "x-stockyard-provider": "anthropic"}
    )
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_provider"
    status, _, body = server.request("GET", "/v1/containers/cntr%25zz", headers=headers)  # no id: no route
    assert status == 404 and json.loads(body)["error"]["message"] == "no route for GET /v1/containers/cntr%25zz"
    status, _, body = server.request("GET", "/v1/containers")
    assert status == 401 and json.loads(body)["error"]["code"] == "missing_api_key"
    assert "Traceback" not in server.log


def test_each_call_is_one_of_the_keys_requests_per_minute(server, mock):
    slow = server.openai("slow")
    made = slow.containers.create(name="slow")
    slow.containers.retrieve(made.id)
    mock.clear()
    with pytest.raises(RateLimitError) as err:
        slow.containers.files.list(made.id)
    assert err.value.response.headers.get("retry-after")
    assert container_calls(mock) == []


def test_open_mode_has_one_owner(pyz_path, cache_home, mock, tmp_path):
    """No client keys: every caller is the one owner, as for files (its containers, and the auto
    container of its Responses call, are reachable; nothing it names is checked)."""
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", mock_env(cache_home, mock)).start()
    try:
        api = srv.openai("anything")
        made = api.containers.create(name="open")
        assert made.id in [c.id for c in api.containers.list(limit=100)]
        srv.keys = {"open": "anything"}
        container_id, file_id = run_code(srv, "open", {"type": "auto"}, False)
        assert api.containers.files.content.retrieve(file_id, container_id=container_id).read() == CHART[1]
        rows = srv.db_rows("SELECT key_id FROM owned_objects WHERE id IN (?, ?)", (made.id, container_id))
        assert [r["key_id"] for r in rows] == ["", ""]
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


# -- the code interpreter on /v1/responses -------------------------------------------------------


def refused_container(server: ServerProcess, mock, container_id: str, stream: bool) -> None:
    """Bob's Responses call naming ``container_id``: OpenAI's 404, and no provider call of any kind."""
    mock.clear()
    with pytest.raises(NotFoundError) as err:
        server.openai("bob").responses.create(
            model="gpt-4o-mini",
            input="run",
            tools=[{"type": "function", "name": "f"}, *code_tool(container_id)],
            stream=stream,
        )
    assert err.value.body["message"] == f"Container with id '{container_id}' not found."
    assert err.value.body["param"] == "tools[1].container"
    assert mock.requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_a_response_naming_a_container_stockyard_never_saw_is_404_and_reaches_no_provider(server, mock, stream):
    with CONTAINERS.lock:
        foreign = CONTAINERS.add("elsewhere", [])["id"]  # the provider has it; no key made it through Stockyard
    refused_container(server, mock, foreign, stream)


@pytest.mark.parametrize("stream", [False, True])
def test_a_response_naming_another_keys_container_is_404_and_reaches_no_provider(server, mock, stream):
    alices = server.openai("alice").containers.create(name="alices").id
    refused_container(server, mock, alices, stream)
    assert run_code(server, "alice", alices, stream)[0] == alices  # its owner runs code in it


@pytest.mark.parametrize("stream", [False, True])
def test_an_auto_container_is_the_keys_that_asked(server, mock, stream):
    container_id, file_id = run_code(server, "alice", {"type": "auto"}, stream)
    alice, bob = server.openai("alice"), server.openai("bob")
    assert alice.containers.retrieve(container_id).status == "running"
    assert alice.containers.files.content.retrieve(file_id, container_id=container_id).read() == CHART[1]
    assert container_id in [c.id for c in alice.containers.list(limit=100)]
    mock.clear()
    with pytest.raises(NotFoundError):
        bob.containers.files.content.retrieve(file_id, container_id=container_id)
    with pytest.raises(NotFoundError):
        bob.responses.create(model="gpt-4o-mini", input="run", tools=code_tool(container_id))
    assert mock.requests == []
    assert container_id not in [c.id for c in bob.containers.list(limit=100)]
    assert run_code(server, "alice", container_id, not stream)[0] == container_id  # and its key reuses it


def test_earlier_output_sent_back_may_name_only_the_keys_containers(server, mock):
    """An ``auto`` container reuses one a ``code_interpreter_call`` item in the input names: such
    an item naming another key's container is its 404 too; the key's own history goes as sent."""
    alices, _ = run_code(server, "alice", {"type": "auto"}, False)
    history = [
        {"type": "message", "role": "user", "content": "plot"},
        {"type": "code_interpreter_call", "id": "ci_1", "status": "completed", "code": "1", "container_id": alices},
        {"type": "message", "role": "user", "content": "again"},
    ]
    mock.clear()
    with pytest.raises(NotFoundError) as err:
        server.openai("bob").responses.create(
            model="gpt-4o-mini", input=history, tools=code_tool({"type": "auto"}), store=False
        )
    assert err.value.body["param"] == "input[1].container_id" and alices in err.value.body["message"]
    assert mock.requests == []
    assert server.openai("alice").responses.create(model="gpt-4o-mini", input=history, store=False).output


@pytest.mark.parametrize("stream", [False, True])
def test_the_hosted_shells_auto_container_is_the_keys_that_asked(server, mock, stream):
    """The hosted shell tool in a container the provider makes (``container_auto``): its
    ``shell_call`` item names it in its ``environment``, and a stateless client sends that item
    back on the next turn. It is the key's: its next turn goes, its files are the key's to read,
    and another key's turn naming it is the 404."""
    shell = [{"type": "shell", "environment": {"type": "container_auto"}}]
    alice, bob = server.openai("alice"), server.openai("bob")
    if stream:
        with alice.responses.create(model="gpt-4o-mini", input="plot", tools=shell, stream=True) as events:
            output = [e.item for e in events if e.type == "response.output_item.done"]
    else:
        output = alice.responses.create(model="gpt-4o-mini", input="plot", tools=shell, store=False).output
    call = next(item.model_dump(exclude_none=True) for item in output if item.type == "shell_call")
    container_id = call["environment"]["container_id"]
    assert alice.containers.retrieve(container_id).id == container_id
    history = [{"type": "message", "role": "user", "content": "plot"}, call]
    assert alice.responses.create(model="gpt-4o-mini", input=history, tools=shell, store=False).output
    mock.clear()
    with pytest.raises(NotFoundError) as err:
        bob.responses.create(model="gpt-4o-mini", input=history, tools=shell, store=False)
    assert err.value.body["param"] == "input[1].environment.container_id"
    assert mock.requests == []


def test_a_background_responses_container_is_its_keys_once_retrieved(server, mock):
    body = {"model": "gpt-4o-mini", "input": "plot", "tools": code_tool({"type": "auto"})}
    queued = {**responses_object(body, 901, "gpt-4o-mini", "queued"), "id": "resp_bgmock901", "background": True}
    ran = mock_run_code(body, 901)  # the provider runs it later, in a container it makes
    finished = {
        **queued,
        "status": "completed",
        "output": [
            ran[0],
            {
                "type": "message",
                "id": "msg_bg",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": TEXT, "annotations": [ran[1]]}],
            },
        ],
    }
    alice = server.openai("alice")
    mock.enqueue(Reply(json=queued))
    assert alice.responses.create(**body, background=True).status == "queued"
    with pytest.raises(NotFoundError):
        alice.containers.retrieve(ran[0]["container_id"])
    mock.enqueue(Reply(json=finished))
    assert alice.responses.retrieve("resp_bgmock901").status == "completed"
    assert alice.containers.files.content.retrieve(ran[1]["file_id"], container_id=ran[0]["container_id"]).read()
    with pytest.raises(NotFoundError):
        server.openai("bob").containers.retrieve(ran[0]["container_id"])


def test_a_stream_cut_after_the_code_ran_leaves_its_container_the_keys(server, mock):
    """The container is claimed when the stream finishes its code_interpreter_call item, before the
    answer that cites its file: a stream cut before response.completed still leaves it the key's."""
    body = {"model": "gpt-4o-mini", "input": "plot", "tools": code_tool({"type": "auto"}), "stream": True}
    ran = mock_run_code(body, 900)
    events = responses_stream(body, 900, "gpt-4o-mini", ran)
    done = next(i for i, e in enumerate(events) if "response.output_item.done" in e)
    mock.enqueue(Reply(sse=events, cut_after=done + 1))
    seen = [event.type for event in server.openai("alice").responses.create(**body)]
    assert "response.output_item.done" in seen and "response.completed" not in seen
    assert seen[-1] == "response.failed"  # Stockyard's end of a broken stream
    container_id = ran[0]["container_id"]
    assert server.openai("alice").containers.retrieve(container_id).id == container_id
    with pytest.raises(NotFoundError):
        server.openai("bob").containers.retrieve(container_id)


def test_a_batch_line_naming_another_keys_container_is_refused(server, mock):
    alices = server.openai("alice").containers.create(name="alices").id
    line = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": "gpt-4o-mini", "input": "run", "tools": code_tool(alices)},
    }
    mock.clear()
    with pytest.raises(NotFoundError) as err:
        server.openai("batcher").files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch")
    assert alices in err.value.body["message"] and "line 1" in err.value.body["message"]
    assert mock.requests == []

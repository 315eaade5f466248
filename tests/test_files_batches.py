"""OpenAI files and batches through Stockyard with the official openai SDK, against the mock upstream:
upload, list, retrieve, content, delete; batch create/retrieve/list/cancel; ownership by client key
(another key gets 404 and cannot batch a file it does not own); a completed batch's cost at the batch
price; no key → 401 before the body is read."""

from __future__ import annotations

import io
import json

import pytest
from conftest import OPENAI_KEY, ServerProcess, base_env, wait_for
from mock_upstream import FILES, PROMPT_TOKENS, Reply
from openai import NotFoundError, OpenAI, PermissionDeniedError
from rawhttp import connect, read_response, read_until_close

from stockyard.batch_costs import BATCH_PRICE

ADMIN = "admin-key-for-files-tests-0123456789abcdef"
MINI_RATES = (15_000_000, 60_000_000)  # gpt-4o-mini, µ¢ per 1M tokens (input, output)


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = {
        **base_env(cache_home),
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": mock.url + "/v1",
        "ANTHROPIC_API_KEY": "sk-ant-test-0123456789abcdef",  # not OpenAI-kind: never serves files
        "ANTHROPIC_BASE_URL": mock.url,
        "STOCKYARD_ADMIN_KEY": ADMIN,
    }
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp("files") / "stockyard.db", env)
    keys = {}
    for name, extra in (("alice", []), ("bob", []), ("claude-only", ["--models", "claude-*"])):
        made = srv.cli("keys", "create", "--name", name, *extra)
        assert made.returncode == 0, made.stderr
        keys[name] = made.stdout.strip()
    srv.start()
    srv.keys = keys
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log


def client(server: ServerProcess, who: str) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=server.keys[who], max_retries=0)


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
    with FILES.lock:
        foreign = FILES.add_file("elsewhere.jsonl", "batch", batch_input("gpt-4o-mini"))["id"]
    with pytest.raises(NotFoundError) as err:
        client(server, "alice").batches.create(
            input_file_id=foreign, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert err.value.body["param"] == "input_file_id"
    assert not [r for r in mock.requests if r.path == "/v1/batches" and r.method == "POST"]
    with pytest.raises(NotFoundError):
        client(server, "alice").files.retrieve(foreign)  # the provider holds it; this key does not own it


def test_lists_show_none_of_the_providers_objects_that_no_key_made(server):
    with FILES.lock:
        FILES.add_file("elsewhere.jsonl", "batch", b"{}\n")
    assert client(server, "bob").files.list().data == []
    assert client(server, "bob").batches.list().data == []


def test_a_key_without_an_openai_kind_provider_in_its_allow_list_is_refused(server):
    with pytest.raises(PermissionDeniedError):
        client(server, "claude-only").files.list()
    status, _, body = server.request(
        "GET", "/v1/files", headers={"Authorization": f"Bearer {server.keys['alice']}", "x-stockyard-provider": "nope"}
    )
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_provider"


def test_wrong_method_is_405_with_allow(server):
    status, headers, _ = server.request(
        "DELETE", "/v1/batches/batch_x", headers={"Authorization": f"Bearer {server.keys['alice']}"}
    )
    assert status == 405 and headers["allow"] == "GET"

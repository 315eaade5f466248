"""Endpoints of the official SDKs that Stockyard does not serve: each is a clean 404 in the shape of
the client that asked (OpenAI's, Anthropic's, Google's), naming the method and path, and the
provider is never asked. README's "Not served" lists them by family."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import MockUpstream

ANTHROPIC_KEY = "sk-ant-unserved-upstream"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url)
    with served(pyz_path, tmp_path_factory, "unserved", env, {"alice": []}) as srv:
        yield srv


def untouched(mock: MockUpstream, since: int, prefix: str) -> bool:
    """No call on ``prefix`` reached the provider after the first ``since`` the mock recorded."""
    return not [r for r in mock.requests[since:] if r.path.startswith(prefix)]


@pytest.mark.parametrize(
    ("call", "said"),
    [
        (lambda c: c.beta.skills.list(), "no route for GET /v1/skills"),
        (lambda c: c.beta.agents.list(), "no route for GET /v1/agents"),
        (lambda c: c.beta.environments.retrieve("env_1"), "no route for GET /v1/environments/env_1"),
        (lambda c: c.beta.memory_stores.delete("ms_1"), "no route for DELETE /v1/memory_stores/ms_1"),
    ],
)
def test_an_anthropic_sdk_gets_anthropics_404(server: ServerProcess, mock: MockUpstream, call, said: str) -> None:
    """Anthropic's SDK reads its own error shape: an unserved path is its NotFoundError with the
    path in ``api_message``, not OpenAI's ``{"error": {…}}`` it cannot read."""
    since = len(mock.requests)
    with pytest.raises(anthropic.NotFoundError) as failure:
        call(server.anthropic("alice"))
    body = failure.value.response.json()
    assert body == {"type": "error", "error": {"type": "not_found_error", "message": said}}
    assert failure.value.api_message == said
    assert untouched(mock, since, "/v1/" + said.split("/v1/")[1].split("/")[0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Assistants, Evals: deprecated by OpenAI
@pytest.mark.parametrize(
    ("call", "said"),
    [
        (lambda c: c.fine_tuning.jobs.list(), "no route for GET /v1/fine_tuning/jobs"),
        (lambda c: c.beta.assistants.list(), "no route for GET /v1/assistants"),
        (lambda c: c.evals.retrieve("eval_1"), "no route for GET /v1/evals/eval_1"),
        (lambda c: c.beta.threads.runs.create("thread_1", assistant_id="asst_1"), "no route for POST /v1/threads"),
    ],
)
def test_an_openai_sdk_gets_openais_404(server: ServerProcess, mock: MockUpstream, call, said: str) -> None:
    """OpenAI's SDK: the same 404 in OpenAI's shape, naming the path; a model call Stockyard cannot
    price (an Assistants run) never reaches the provider."""
    since = len(mock.requests)
    with pytest.raises(openai.NotFoundError) as failure:
        call(server.openai("alice"))
    error = failure.value.response.json()["error"]
    assert error["code"] == "not_found" and error["message"].startswith(said)
    assert untouched(mock, since, "/v1/" + said.split("/v1/")[1].split("/")[0])


def test_a_google_client_gets_googles_404(server: ServerProcess, mock: MockUpstream) -> None:
    """A Google client (its key as x-goog-api-key) on a /v1/ path Stockyard does not serve (tuned
    models; google-genai's api_version v1) gets Google's error shape, as under /v1beta."""
    since = len(mock.requests)
    headers = {"x-goog-api-key": server.secret("alice")}
    for path in ("/v1/tunedModels", "/v1beta/tunedModels"):
        status, _, body = server.request("GET", path, headers=headers)
        assert status == 404, body
        error = json.loads(body)["error"]
        assert (error["code"], error["status"], error["message"]) == (404, "NOT_FOUND", f"no route for GET {path}")
    assert untouched(mock, since, "/v1")


def test_an_unknown_path_without_sdk_headers_stays_openais(server: ServerProcess) -> None:
    """No Anthropic or Google header: OpenAI's shape, the default, as before."""
    status, _, body = server.request("GET", "/v1/skills", headers=server.auth("alice"))
    assert status == 404
    assert json.loads(body)["error"] == {
        "message": "no route for GET /v1/skills",
        "type": "not_found_error",
        "param": None,
        "code": "not_found",
    }


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.realtime.client_secrets.create(session={"type": "realtime", "model": "gpt-realtime"}),
        lambda c: c.realtime.translations.client_secrets.create(session={"model": "gpt-realtime-translate"}),
    ],
    ids=["client_secrets", "translations/client_secrets"],
)
def test_ephemeral_realtime_keys_are_refused_saying_why(server: ServerProcess, mock: MockUpstream, call) -> None:
    """Every Realtime route that mints an ephemeral key (the translation API's too) is OpenAI's 403
    ``unsupported_endpoint`` saying a browser holding it would bypass metering, never a bare 404 nor
    a key minted on the provider's account."""
    since = len(mock.requests)
    with pytest.raises(openai.PermissionDeniedError) as failure:
        call(server.openai("alice"))
    error = failure.value.response.json()["error"]
    assert error["code"] == "unsupported_endpoint"
    assert error["message"].startswith(failure.value.request.url.path + " is not served: an ephemeral key")
    assert "meter" in error["message"]
    assert untouched(mock, since, "/v1/realtime")

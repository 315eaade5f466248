"""``GET /v1/models`` against real servers: the client key, a cache refreshed in the background,
only the models a key may use, and every configured provider listed even when one fails or hangs.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from conftest import OPENAI_KEY, ServerProcess, base_env, mock_env, served, wait_for
from mock_upstream import MockUpstream, Reply

ADMIN = "admin-key-for-models-0123456789"


def listing(server: ServerProcess, key: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    status, _, body = server.request("GET", "/v1/models", headers=headers)
    return status, json.loads(body)


def ids(server: ServerProcess, key: str | None = None) -> set[str]:
    status, body = listing(server, key)
    assert status == 200, body
    return {m["id"] for m in body["data"]}


def upstream_listings(mock: MockUpstream) -> int:
    """How many times a provider listing was asked of this mock (OpenAI or Anthropic style)."""
    return sum(1 for r in mock.requests if r.method == "GET" and r.path == "/v1/models")


@pytest.fixture(scope="module")
def silent_upstream():
    """A port that accepts connections and never answers (the backlog does the accepting)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture(scope="module")
def refused_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, tmp_path_factory, silent_upstream, refused_url):
    """OpenAI and Anthropic at a mock of their own, Gemini refusing, Mistral hanging."""
    with MockUpstream() as own:
        env = {
            **base_env(cache_home),
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_BASE_URL": own.url + "/v1",
            "ANTHROPIC_API_KEY": "sk-ant-models-0123456789",
            "ANTHROPIC_BASE_URL": own.url,
            "GEMINI_API_KEY": "gemini-models-0123456789",
            "GEMINI_BASE_URL": refused_url,
            "MISTRAL_API_KEY": "mistral-models-0123456789",
            "MISTRAL_BASE_URL": silent_upstream + "/v1",
            "STOCKYARD_ADMIN_KEY": ADMIN,
        }
        with served(pyz_path, tmp_path_factory, "models", env) as srv:
            srv.mock = own
            yield srv


def test_first_listing_waits_briefly_then_answers_from_the_cache(server):
    started = time.monotonic()
    first = ids(server)  # open mode (loopback, no keys yet): no key needed
    assert time.monotonic() - started < 4.5, "the first fill is bounded even with a provider that hangs"
    # every configured provider is listed: the answering ones from their lists, Gemini (refused)
    # and Mistral (hanging) from the models the price table knows for them
    assert {"gpt-4o-mini", "gpt-4o", "anthropic/gpt-4o-mini"} <= first
    assert {"gemini-2.5-flash", "mistral-large-latest"} <= first
    asked = upstream_listings(server.mock)
    started = time.monotonic()
    for _ in range(5):
        assert ids(server) == first
    assert time.monotonic() - started < 2.0, "later requests never wait for a provider"
    assert upstream_listings(server.mock) == asked, "answers come from the cache: no fan-out per request"


def test_keys_required_means_the_listing_needs_a_key_and_shows_only_allowed_models(server):
    status, body = server_admin(
        server, "POST", "/api/keys", {"name": "lister", "models": ["gpt-4o-mini", "anthropic/*"]}
    )
    assert status == 201, body
    secret = body["key"]
    status, body = listing(server)
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    status, body = listing(server, "sk-sy-not-a-real-key")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert ids(server, secret) == {
        "gpt-4o-mini",
        "anthropic/gpt-4o-mini",
        "anthropic/gpt-4o",
        "anthropic/text-embedding-3-small",
        "claude-sonnet-4-5-20250514",
        "claude-sonnet-4-5-20250929",
    }
    status, body = server_admin(server, "POST", "/api/keys", {"name": "everything"})
    assert len(ids(server, body["key"])) > 10


def server_admin(server: ServerProcess, method: str, path: str, body=None) -> tuple[int, dict]:
    status, _, raw = server.request(method, path, body, headers={"Authorization": f"Bearer {ADMIN}"})
    return status, json.loads(raw)


def test_a_provider_that_starts_failing_keeps_its_last_good_list(pyz_path, cache_home, mock, tmp_path):
    with MockUpstream() as groq:
        env = mock_env(
            cache_home,
            mock,
            GROQ_API_KEY="gsk-models-0123456789",
            GROQ_BASE_URL=groq.url + "/v1",
            STOCKYARD_MODELS_REFRESH="1s",
        )
        server = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
        try:
            assert "groq/gpt-4o" in ids(server)
            groq.enqueue(Reply(status=500))  # the next refresh fails, the one after succeeds

            def listed_through_the_failure() -> bool:
                assert "groq/gpt-4o" in ids(server), "a failed refresh emptied the provider's list"
                return upstream_listings(groq) >= 3

            wait_for(listed_through_the_failure, 20, "a failed refresh and the good one after it")
            assert groq.pending() == 0
        finally:
            server.stop()

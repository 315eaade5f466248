"""An attacker's review from outside (review 29): what whoever reaches the port can do through the
file-bearing APIs, the Gemini-shaped endpoints, the URLs Stockyard fetches and the console.

Each test is a hole found (failing before its fix) or a claim checked and found sound, said in
its docstring. Real parts: a server process of the pyz on its own database, the mock upstream,
raw HTTP in the shape each API's clients send.
"""

from __future__ import annotations

import json

import pytest
from conftest import ServerProcess, mock_env
from mock_upstream import MockUpstream
from module_helpers import ADMIN_KEY, put_module

GEMINI_KEY = "AIza-review29-0123456789abcdefPROVIDERSECRET"
DENIED = "gemini-2.5-pro"
CONTENTS = [{"role": "user", "parts": [{"text": "a long handbook " * 50}]}]


@pytest.fixture(scope="module")
def upstream():
    with MockUpstream() as mock:
        yield mock


def start(pyz_path, cache_home, upstream, tmp_path_factory, name: str, keys: bool) -> ServerProcess:
    env = mock_env(
        cache_home, upstream, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=upstream.url, STOCKYARD_ADMIN_KEY=ADMIN_KEY
    )
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp(name) / "stockyard.db", env)
    if keys:
        srv.keys = srv.create_keys({"alice": []})
    return srv.start()


@pytest.fixture(scope="module", params=["keys", "open"])
def server(request, pyz_path, cache_home, upstream, tmp_path_factory):
    srv = start(pyz_path, cache_home, upstream, tmp_path_factory, f"attack29-{request.param}", request.param == "keys")
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log and GEMINI_KEY not in srv.log


def google(server: ServerProcess, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """(status, parsed body) of one request as google-genai sends it (the key in x-goog-api-key)."""
    headers = {"x-goog-api-key": server.keys["alice"]} if server.keys else {}
    status, _, data = server.request(method, path, body, headers=headers)
    return status, json.loads(data) if data else {}


def cache_creates(mock: MockUpstream) -> int:
    return sum(1 for r in mock.requests if r.method == "POST" and r.path.endswith("/cachedContents"))


def test_a_context_cache_for_a_model_guard_denies_is_refused_before_the_provider(server, upstream):
    """Hole: guard's ``deny_models``/``allow_models`` held every route that names a model —
    generateContent, countTokens, batch files, message batches — but not a context cache's create,
    which went to Google under the provider key for a model the operator denied (the cache's
    tokens are written and stored at Google's cost), with keys and without. Now Google's 403,
    the provider unasked; a model the lists allow is still cached."""
    put_module(server, "guard", {"deny_models": [DENIED]})
    try:
        before = cache_creates(upstream)
        for asked in (f"models/{DENIED}", DENIED, f"gemini/{DENIED}", f"models/gemini/{DENIED}"):
            status, doc = google(server, "POST", "/v1beta/cachedContents", {"model": asked, "contents": CONTENTS})
            assert status == 403, (asked, doc)
            assert doc["error"]["status"] == "PERMISSION_DENIED" and DENIED in doc["error"]["message"], doc
        assert cache_creates(upstream) == before
        put_module(server, "guard", {"allow_models": ["gemini-2.5-flash"]})
        status, doc = google(
            server, "POST", "/v1beta/cachedContents", {"model": f"models/{DENIED}", "contents": CONTENTS}
        )
        assert status == 403, doc
        status, doc = google(
            server, "POST", "/v1beta/cachedContents", {"model": "models/gemini-2.5-flash", "contents": CONTENTS}
        )
        assert status == 200, doc
        assert cache_creates(upstream) == before + 1
    finally:
        put_module(server, "guard", {}, enabled=False)

"""An attacker's review of Gemini's context caching (``/v1beta/cachedContents``, ``gemini_cache``).

Key B wanting key A's cache (which holds A's prompt), a budgeted key wanting storage no budget
counts, and anyone making Stockyard misbehave with a forged page token or an odd path. Raw HTTP
in Google's shape, against the built pyz and the mock upstream's Gemini caches.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import MockUpstream
from rawhttp import connect, read_response

GEMINI_KEY = "AIza-attack-0123456789abcdefPROVIDERSECRET"
MODEL = "gemini-attack-model"
CONTENTS = [{"role": "user", "parts": [{"text": "alice's secret handbook " * 50}]}]
QUESTION = [{"role": "user", "parts": [{"text": "What does it say?"}]}]


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=mock.url)
    price = ("prices", "set", MODEL, "--input", "1", "--output", "2", "--cached-input", "0.5")
    keys = {"alice": [], "bob": [], "later": [], "narrow": ["--models", MODEL]}
    with served(pyz_path, tmp_path_factory, "gattack", env, keys, [price], (GEMINI_KEY,)) as srv:
        yield srv


def call(server: ServerProcess, who: str | None, method: str, path: str, body: dict | None = None, raw=None):
    """(status, headers, parsed body) of one request as Google's clients send it."""
    headers = {"x-goog-api-key": server.keys[who]} if who else {}
    status, got, data = server.request(method, path, body, headers=headers, raw=raw)
    return status, got, json.loads(data) if data else {}


def google_error(doc: dict, status: int, name: str) -> str:
    assert set(doc) == {"error"} and doc["error"]["code"] == status and doc["error"]["status"] == name, doc
    return doc["error"]["message"]


def provider_calls(mock: MockUpstream) -> int:
    return sum(1 for r in mock.requests if "cachedContent" in r.path or r.path.startswith("/v1beta/models/"))


def create(server: ServerProcess, who: str) -> dict:
    body = {"model": f"models/{MODEL}", "contents": CONTENTS, "ttl": "300s"}
    status, _, doc = call(server, who, "POST", "/v1beta/cachedContents", body)
    assert status == 200, doc
    return doc


def token(value: object) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_a_forged_deeply_nested_page_token_is_a_400_naming_the_token(server, mock) -> None:
    """A pageToken is base64 of JSON the client can forge: one of nested brackets (within the
    4,096 characters read) made the JSON decoder recurse past Python's limit, a RecursionError
    the token check did not catch. The server's last resort made it a 400 blaming the request
    body ("nests arrays or objects too deeply"), which has none: the token is the one to name."""
    before = provider_calls(mock)
    for forged in (token(b"[" * 3000), token(b'{"a":' * 700)):
        status, _, doc = call(server, "bob", "GET", f"/v1beta/cachedContents?pageToken={forged}")
        assert status == 400, doc
        assert "pageToken" in google_error(doc, 400, "INVALID_ARGUMENT")
    assert provider_calls(mock) == before


def test_a_forged_page_token_never_lists_another_keys_cache(server) -> None:
    """The token carries the provider's page token and a count: any provider token, any count,
    still gives only the key's own caches (the provider's page is filtered each time)."""
    theirs = create(server, "alice")["name"]
    mine = create(server, "bob")["name"]
    seen: list[str] = []
    for forged in (token([None, 0]), token(["0", 0]), token(["1", 0]), token([None, 10**30]), token(["0", 1])):
        status, _, page = call(server, "bob", "GET", f"/v1beta/cachedContents?pageSize=1000&pageToken={forged}")
        assert status == 200, page
        seen += [c["name"] for c in page.get("cachedContents", [])]
    assert theirs not in seen and mine in seen
    for bad in (token([None, True]), token([None, -1]), token([None, 1.5]), token([1, 0]), token([None, 0, 0])):
        status, _, doc = call(server, "bob", "GET", f"/v1beta/cachedContents?pageToken={bad}")
        google_error(doc, 400, "INVALID_ARGUMENT")
    status, _, doc = call(server, "bob", "GET", f"/v1beta/cachedContents?pageToken={'A' * 5000}")
    google_error(doc, 400, "INVALID_ARGUMENT")


def alices_cache_by_other_names(cache_id: str) -> list[object]:
    """Every other way a body could spell the cache ``cachedContents/{cache_id}``."""
    return [
        cache_id,
        f"projects/p/locations/us-central1/cachedContents/{cache_id}",
        f"https://generativelanguage.googleapis.com/v1beta/cachedContents/{cache_id}",
        f"/cachedContents/{cache_id}",
        f"cachedContents/{cache_id} ",
        f" cachedContents/{cache_id}",
        f"cachedContents/{cache_id}\n",
        f"CachedContents/{cache_id}",
        f"cachedContents/{cache_id.upper()}",
        f"cachedContents%2F{cache_id}",
        f"cachedContents/{quote(cache_id[0], safe='')}{cache_id[1:]}",
        f"cachedContents/./{cache_id}",
        f"cachedContents/x/../{cache_id}",
        f"cachedContents/{cache_id}\u0000",
        f"cachedContents/{cache_id}?alt=json",
        f"cachedContents/{cache_id}#x",
        ["cachedContents/" + cache_id],
        {"name": "cachedContents/" + cache_id},
    ]


def test_another_keys_cache_by_any_other_name_reaches_no_provider(server, mock) -> None:
    """The check refuses anything but the key's own ``cachedContents/{id}``: a prefixed resource
    name, a URL, spaces, case, percent-encoding, dot segments, a list or an object are a 404 (or a
    400 for a value that is not a string), never sent on as no one's."""
    cache_id = create(server, "alice")["name"].removeprefix("cachedContents/")
    before = provider_calls(mock)
    for name in alices_cache_by_other_names(cache_id):
        for field in ("cachedContent", "cached_content"):
            body = {"contents": QUESTION, field: name}
            status, _, doc = call(server, "bob", "POST", f"/v1beta/models/{MODEL}:generateContent", body)
            assert status in (400, 404), (name, doc)
            google_error(doc, status, "NOT_FOUND" if status == 404 else "INVALID_ARGUMENT")
    assert provider_calls(mock) == before


def test_escaped_duplicate_and_both_spellings_are_all_checked(server, mock) -> None:
    """A field name written with \\u escapes, named twice (JSON parsers differ on which counts),
    or named by both of Google's spellings at once with the key's own in one: refused, unsent."""
    theirs = create(server, "alice")["name"]
    mine = create(server, "bob")["name"]
    before = provider_calls(mock)
    q = json.dumps(QUESTION)
    escaped = theirs.replace("c", "\\u0063")  # the value's letters as JSON escapes
    bodies = [
        f'{{"contents": {q}, "cached\\u0043ontent": "{theirs}"}}',
        f'{{"contents": {q}, "cached\\u005fcontent": "{theirs}"}}',
        f'{{"contents": {q}, "cachedContent": "{escaped}"}}',
        f'{{"contents": {q}, "cachedContent": "{mine}", "cachedContent": "{theirs}"}}',
        f'{{"contents": {q}, "cachedContent": "{theirs}", "cachedContent": "{mine}"}}',
        f'{{"contents": {q}, "cachedContent": "{mine}", "cached_content": "{theirs}"}}',
        f'{{"contents": {q}, "cachedContent": null, "cached_content": "{theirs}"}}',
    ]
    for text in bodies:
        status, _, doc = call(server, "bob", "POST", f"/v1beta/models/{MODEL}:generateContent", raw=text.encode())
        assert status in (400, 404), (text, doc)
    utf16 = json.dumps({"contents": QUESTION, "cachedContent": theirs}).encode("utf-16")
    status, _, doc = call(server, "bob", "POST", f"/v1beta/models/{MODEL}:generateContent", raw=utf16)
    assert status in (400, 404), doc
    inner = {"generateContentRequest": {"model": f"models/{MODEL}", "contents": QUESTION}}
    inner["generateContentRequest"]["cached_content"] = theirs
    inner["generate_content_request"] = {"model": f"models/{MODEL}", "cachedContent": mine}
    status, _, doc = call(server, "bob", "POST", f"/v1beta/models/{MODEL}:countTokens", inner)
    assert status in (400, 404), doc
    assert provider_calls(mock) == before


def test_the_v1_form_and_a_query_key_are_held_alike(server, mock) -> None:
    """``/v1/models/…`` and ``?key=`` reach the same check; a query key and a header key that
    differ are a 401, not one of them picked."""
    theirs = create(server, "alice")["name"]
    before = provider_calls(mock)
    body = json.dumps({"contents": QUESTION, "cachedContent": theirs}).encode()
    for path in (f"/v1/models/{MODEL}:generateContent", f"/v1beta/models/models%2F{MODEL}:streamGenerateContent"):
        status, _, doc = call(server, None, "POST", f"{path}?key={server.keys['bob']}", raw=body)
        assert status == 404, (path, doc)
    status, _, doc = server.request(
        "GET", f"/v1beta/{theirs}?key={server.keys['alice']}", headers={"x-goog-api-key": server.keys["bob"]}
    )
    assert status == 401
    google_error(json.loads(doc), 401, "UNAUTHENTICATED")
    assert provider_calls(mock) == before


@pytest.mark.parametrize(
    "suffix",
    ["{id}/", "{id}.", ".{id}", "..%2F{id}", "x%2F{id}", "{id}%2Fx", "{id}:generate", "{long}", "%2E%2E", "{id}/x"],
)
def test_odd_cache_paths_are_a_google_404_that_reaches_no_provider(server, mock, suffix) -> None:
    """No path shape reaches a cache but the key's own ``cachedContents/{id}``; under ``/v1`` a
    path with a slash after the id (``{id}/``, ``{id}/x``) was answered in OpenAI's error shape,
    which a Google client does not read."""
    cache_id = create(server, "alice")["name"].removeprefix("cachedContents/")
    before = provider_calls(mock)
    path = suffix.format(id=cache_id, long="a" * 201)
    for prefix in ("/v1beta/cachedContents/", "/v1/cachedContents/"):
        for method in ("GET", "DELETE"):
            status, _, doc = call(server, "bob", method, prefix + path)
            assert status in (404, 405), (prefix + path, doc)
            google_error(doc, status, "NOT_FOUND" if status == 404 else doc["error"]["status"])
    assert provider_calls(mock) == before


def test_a_patch_cannot_move_a_cache_to_another_model_or_name(server, mock) -> None:
    """A PATCH's body goes to the key's own cache only (the URL names it; Stockyard picks the
    provider): a ``name`` in it is the provider's to ignore, and Stockyard forwards only ``updateMask``."""
    made = create(server, "bob")
    path = f"/v1beta/{made['name']}?updateMask=ttl&key=x&pageToken=y"
    status, _, doc = server.request("PATCH", path, {"ttl": "60s"}, headers={"x-goog-api-key": server.keys["bob"]})
    assert status == 401  # the query's key is a key too: two different keys
    status, _, doc = call(server, "bob", "PATCH", f"/v1beta/{made['name']}?updateMask=ttl&pageToken=y", {"ttl": "6s"})
    assert status == 200, doc
    sent = next(r for r in reversed(mock.requests) if r.method == "PATCH")
    assert sent.query == {"updateMask": "ttl"}


def test_a_key_under_a_budget_cannot_extend_its_caches_storage(server, mock) -> None:
    """A create under a budget is refused: Google bills a cache's storage per hour, which no usage
    reports. A PATCH of its ``ttl``/``expireTime`` buys the same storage (a cache made before the
    key had a budget kept for a year), so under a budget it is refused alike, before any provider
    call; a GET and a DELETE (which ends the storage) still work."""
    made = create(server, "later")
    done = server.cli("keys", "update", "later", "--budget-usd", "5", "--budget-period", "day")
    assert done.returncode == 0, done.stderr
    body = {"model": f"models/{MODEL}", "contents": CONTENTS}
    wait_for(lambda: call(server, "later", "POST", "/v1beta/cachedContents", body)[0] == 403, what="the budget")
    before = provider_calls(mock)
    for path in (f"/v1beta/{made['name']}?updateMask=ttl", f"/v1/{made['name']}?updateMask=ttl"):
        status, _, doc = call(server, "later", "PATCH", path, {"ttl": "31536000s"})
        assert status == 403, doc
        assert "budget" in google_error(doc, 403, "PERMISSION_DENIED")
    assert provider_calls(mock) == before
    assert call(server, "later", "GET", f"/v1beta/{made['name']}")[0] == 200
    assert call(server, "later", "DELETE", f"/v1beta/{made['name']}")[0] == 200


def test_a_query_key_is_kept_in_no_trace(server) -> None:
    """``?key=`` is a client key: moved to the header the key check reads, never into a trace."""
    secret = server.keys["bob"]
    status, headers, _ = server.request("GET", f"/v1beta/cachedContents?pageSize=5&key={secret}")
    assert status == 200
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert secret not in json.dumps(trace, default=str)


def test_count_tokens_model_in_snake_case_is_pinned_to_the_routed_model(server, mock) -> None:
    """countTokens' inner request names a model, which Stockyard sets to the one the URL was routed
    to (an allow-list is not stepped around in the body). Google reads the proto spelling
    ``generate_content_request`` too (as for ``cached_content``): its ``model`` went on as sent."""
    for field in ("generateContentRequest", "generate_content_request"):
        body = {field: {"model": "models/gemini-not-allowed", "contents": QUESTION}}
        status, _, doc = call(server, "narrow", "POST", f"/v1beta/models/{MODEL}:countTokens", body)
        assert status == 200, doc
        sent = next(r for r in reversed(mock.requests) if r.path.endswith(":countTokens"))
        assert sent.json[field]["model"] == f"models/{MODEL}", (field, sent.json)


@pytest.mark.parametrize(
    "path",
    [
        "/v1beta/tunedModels/{model}:generateContent",
        "/v1beta/models/{model}:batchGenerateContent",
        "/v1beta/models/{model}:asyncBatchEmbedContent",
        "/v1alpha/models/{model}:generateContent",
        "/v1alpha/cachedContents",
        "/v1beta/cachedContents:batchCreate",
        "/v1beta/batches",
    ],
)
def test_no_other_gemini_route_takes_a_body_naming_a_cache(server, mock, path) -> None:
    """Only generateContent, streamGenerateContent, countTokens and the embeddings methods are
    passed through (``gemini_api.ACTIONS``): a tuned model, a batch, another API version or another
    collection is Google's 404 here, never sent on with the cache unchecked. (``/v1alpha``, which
    google-genai can be set to, was answered in OpenAI's error shape.)"""
    theirs = create(server, "alice")["name"]
    before = provider_calls(mock)
    body = {"model": f"models/{MODEL}", "contents": QUESTION, "cachedContent": theirs}
    status, _, doc = call(server, "bob", "POST", path.format(model=MODEL), body)
    assert status == 404, doc
    google_error(doc, 404, "NOT_FOUND")
    assert provider_calls(mock) == before


def test_a_budgeted_create_by_any_route_is_refused_before_its_body(server, mock) -> None:
    """Both API versions, a query string, a query key: a 403 before a byte of the body is read."""
    done = server.cli("keys", "update", "narrow", "--budget-usd", "5", "--budget-period", "day")
    assert done.returncode == 0, done.stderr
    body = {"model": f"models/{MODEL}", "contents": CONTENTS}
    wait_for(lambda: call(server, "narrow", "POST", "/v1beta/cachedContents", body)[0] == 403, what="the budget")
    before = provider_calls(mock)
    secret = server.keys["narrow"]
    for target, key_header in (
        ("/v1/cachedContents", f"x-goog-api-key: {secret}\r\n"),
        (f"/v1beta/cachedContents?alt=json&key={secret}", ""),
        ("/v1beta/cachedContents", f"Authorization: Bearer {secret}\r\n"),
    ):
        with connect(server) as sock:
            head = (
                f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{key_header}"
                "Content-Type: application/json\r\nContent-Length: 900000\r\n\r\n"
            )
            sock.sendall(head.encode())  # the body never comes: the answer must not wait for it
            status, _, raw = read_response(sock, timeout=5)
        assert status == 403, (target, raw)
        assert "budget" in google_error(json.loads(raw), 403, "PERMISSION_DENIED")
    assert provider_calls(mock) == before


def test_a_patch_body_naming_another_cache_is_refused(server, mock) -> None:
    """The URL names the cache a PATCH is for, and only the key's own gets this far; its body is a
    CachedContent too, with a ``name``, which went upstream as sent. Whichever of the two the
    provider's transcoding keeps, a body naming another cache (another key's) is a 400 here,
    never sent; the URL's own name in it (a client sending the object back) is fine."""
    theirs = create(server, "alice")["name"]
    mine = create(server, "bob")["name"]
    before = provider_calls(mock)
    for name in (theirs, theirs.removeprefix("cachedContents/"), f"projects/p/locations/l/{theirs}", 7, ""):
        status, _, doc = call(server, "bob", "PATCH", f"/v1beta/{mine}?updateMask=ttl", {"ttl": "1s", "name": name})
        assert status == 400, (name, doc)
        assert "name" in google_error(doc, 400, "INVALID_ARGUMENT")
    assert provider_calls(mock) == before
    status, _, doc = call(server, "bob", "PATCH", f"/v1beta/{mine}?updateMask=ttl", {"ttl": "9s", "name": mine})
    assert status == 200, doc

"""Gemini's explicit context caching (``/v1beta/cachedContents``) through Stockyard, owned per client key.

Raw HTTP in Google's shape, as google-genai and LiteLLM's ``gemini/`` prefix send it (the client
key in ``x-goog-api-key``). A cache belongs to the key that made it: another key gets Google's 404
for it, never sees it listed, and cannot name it in a generateContent (a cache holds a prompt).
A create under a budget is refused (storage per hour is billed, which no usage reports); a cache
made before its key had a budget is held at its tokens by every call naming it.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import BIG_CACHE_TOKENS, CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS, MockUpstream
from rawhttp import connect, read_response

GEMINI_KEY = "AIza-cache-0123456789abcdefPROVIDERSECRET"
MODEL = "gemini-cache-model"
OTHER = "gemini-cache-other"
BIG = "gemini-bigcache-model"  # the mock's caches for it hold BIG_CACHE_TOKENS
NOCOUNT = "gemini-nocount-model"  # the mock's create answer for it leaves out the cache's token count
CONTENTS = [{"role": "user", "parts": [{"text": "a very long document " * 50}]}]
QUESTION = [{"role": "user", "parts": [{"text": "What does it say?"}]}]
UC = {"input": 100, "cached": 50, "output": 200}  # $1, $0.50, $2 per 1M tokens, in µ¢ per token


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=mock.url)
    rates = ("--input", "1", "--output", "2", "--cached-input", "0.5")
    prices = [("prices", "set", model, *rates) for model in (MODEL, OTHER, BIG, NOCOUNT)]
    keys = {
        "alice": [],
        "bob": [],
        "budgeted": ["--budget-usd", "5", "--budget-period", "day"],
        "narrow": ["--models", OTHER],
        "burst": [],
        "small-generateContent": [],
        "small-streamGenerateContent": [],
        "unknown": [],
        "patcher": [],
        "limited": ["--tpm", "500000"],
    }
    with served(pyz_path, tmp_path_factory, "gcache", env, keys, prices, (GEMINI_KEY,)) as srv:
        yield srv


def call(server: ServerProcess, who: str | None, method: str, path: str, body: dict | None = None):
    """(status, headers, parsed body) of one request as Google's clients send it."""
    headers = {"x-goog-api-key": server.keys[who]} if who else {}
    status, got, raw = server.request(method, path, body, headers=headers)
    return status, got, json.loads(raw) if raw else {}


def google_error(doc: dict, status: int, name: str) -> str:
    """The message of Google's error shape, after checking its code and status name."""
    assert set(doc) == {"error"} and doc["error"]["code"] == status and doc["error"]["status"] == name, doc
    return doc["error"]["message"]


def cache_calls(mock: MockUpstream) -> int:
    return sum(1 for r in mock.requests if "cachedContent" in r.path)


def provider_calls(mock: MockUpstream) -> int:
    return sum(1 for r in mock.requests if "cachedContent" in r.path or r.path.startswith("/v1beta/models/"))


def create(server: ServerProcess, who: str, **extra) -> dict:
    body = {"model": f"models/{MODEL}", "contents": CONTENTS, "ttl": "300s", **extra}
    status, headers, doc = call(server, who, "POST", "/v1beta/cachedContents", body)
    assert status == 200, doc
    assert doc["name"].startswith("cachedContents/") and doc["model"] == f"models/{MODEL}"
    assert GEMINI_KEY not in json.dumps(headers)
    return doc


def test_a_key_creates_lists_gets_patches_and_deletes_its_cache(server, mock) -> None:
    made = create(server, "alice", displayName="handbook")
    sent = next(r for r in reversed(mock.requests) if r.path == "/v1beta/cachedContents" and r.method == "POST")
    assert sent.headers["x-goog-api-key"] == GEMINI_KEY and sent.json["contents"] == CONTENTS
    assert made["displayName"] == "handbook" and made["usageMetadata"]["totalTokenCount"] == CACHED_TOKENS
    status, _, got = call(server, "alice", "GET", f"/v1beta/{made['name']}")
    assert status == 200 and got == made
    status, _, listed = call(server, "alice", "GET", "/v1beta/cachedContents")
    assert status == 200 and made["name"] in [c["name"] for c in listed["cachedContents"]]
    status, _, listed = call(server, "alice", "GET", "/v1/cachedContents?pageSize=1000")  # google-genai's v1 too
    assert status == 200 and made["name"] in [c["name"] for c in listed["cachedContents"]]
    status, _, doc = call(server, "alice", "PUT", f"/v1/{made['name']}")
    google_error(doc, 405, doc["error"]["status"])
    status, _, patched = call(server, "alice", "PATCH", f"/v1beta/{made['name']}?updateMask=ttl", {"ttl": "7200s"})
    assert status == 200 and patched["expireTime"] != made["expireTime"]
    status, _, _ = call(server, "alice", "DELETE", f"/v1beta/{made['name']}")
    assert status == 200
    status, _, doc = call(server, "alice", "GET", f"/v1beta/{made['name']}")
    google_error(doc, 404, "NOT_FOUND")


def test_the_list_pages_through_only_the_keys_own(server) -> None:
    mine = [create(server, "alice")["name"] for _ in range(3)]
    create(server, "bob")
    names, token = [], ""
    for _ in range(10):
        status, _, page = call(server, "alice", "GET", f"/v1beta/cachedContents?pageSize=2&pageToken={token}")
        assert status == 200 and len(page.get("cachedContents", [])) <= 2
        names += [c["name"] for c in page.get("cachedContents", [])]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert set(mine) <= set(names) and len(names) == len(set(names))
    status, _, doc = call(server, "alice", "GET", "/v1beta/cachedContents?pageToken=not-one-of-ours")
    google_error(doc, 400, "INVALID_ARGUMENT")


def test_another_keys_cache_is_a_404_and_never_listed(server, mock) -> None:
    made = create(server, "alice")
    before = cache_calls(mock)
    for method, body in (("GET", None), ("PATCH", {"ttl": "1s"}), ("DELETE", None)):
        status, _, doc = call(server, "bob", method, f"/v1beta/{made['name']}", body)
        assert status == 404
        google_error(doc, 404, "NOT_FOUND")
    assert cache_calls(mock) == before  # not asked: the provider would say it exists
    status, _, listed = call(server, "bob", "GET", "/v1beta/cachedContents?pageSize=1000")
    assert status == 200 and made["name"] not in [c["name"] for c in listed.get("cachedContents", [])]
    assert call(server, "alice", "GET", f"/v1beta/{made['name']}")[0] == 200  # still there


@pytest.mark.parametrize("method", ["generateContent", "streamGenerateContent", "countTokens"])
def test_naming_another_keys_cache_is_a_404_that_reaches_no_provider(server, mock, method) -> None:
    made = create(server, "alice")
    before = provider_calls(mock)
    body: dict = {"contents": QUESTION, "cachedContent": made["name"]}
    if method == "countTokens":
        body = {"generateContentRequest": {"model": f"models/{MODEL}", **body}}
    suffix = "?alt=sse" if method == "streamGenerateContent" else ""
    status, _, raw = server.request(
        "POST", f"/v1beta/models/{MODEL}:{method}{suffix}", body, headers={"x-goog-api-key": server.keys["bob"]}
    )
    assert status == 404
    assert made["name"].split("/")[1] in google_error(json.loads(raw), 404, "NOT_FOUND")
    assert provider_calls(mock) == before


@pytest.mark.parametrize("method", ["generateContent", "countTokens"])
def test_naming_another_keys_cache_in_snake_case_is_a_404_too(server, mock, method) -> None:
    """Google's JSON takes a field's proto name as well (``cached_content``,
    ``generate_content_request``): the same cache by that spelling is refused alike."""
    made = create(server, "alice")
    before = provider_calls(mock)
    body: dict = {"contents": QUESTION, "cached_content": made["name"]}
    if method == "countTokens":
        body = {"generate_content_request": {"model": f"models/{MODEL}", **body}}
    status, _, raw = server.request(
        "POST", f"/v1beta/models/{MODEL}:{method}", body, headers={"x-goog-api-key": server.keys["bob"]}
    )
    assert status == 404, raw
    assert made["name"].split("/")[1] in google_error(json.loads(raw), 404, "NOT_FOUND")
    assert provider_calls(mock) == before


def test_a_keys_generate_content_with_its_cache_is_costed_with_cached_tokens(server, mock) -> None:
    made = create(server, "alice")
    body = {"contents": QUESTION, "cachedContent": made["name"]}
    status, headers, doc = call(server, "alice", "POST", f"/v1beta/models/{MODEL}:generateContent", body)
    assert status == 200 and doc["usageMetadata"]["cachedContentTokenCount"] == CACHED_TOKENS
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["cached_tokens"] == CACHED_TOKENS and trace["cost_status"] == "exact"
    expected = (PROMPT_TOKENS - CACHED_TOKENS) * UC["input"] + CACHED_TOKENS * UC["cached"] + 5 * UC["output"]
    assert trace["cost_uc"] == expected


def test_a_create_is_traced_at_cost_zero(server) -> None:
    body = {"model": f"models/{MODEL}", "contents": CONTENTS}
    status, headers, _ = call(server, "alice", "POST", "/v1beta/cachedContents", body)
    assert status == 200
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["endpoint"], trace["dialect"], trace["cost_uc"]) == ("cached_contents.create", "gemini", 0)


def test_a_budgeted_keys_create_is_a_403_reaching_no_provider(server, mock) -> None:
    before = cache_calls(mock)
    body = {"model": f"models/{MODEL}", "contents": CONTENTS}
    status, _, doc = call(server, "budgeted", "POST", "/v1beta/cachedContents", body)
    assert status == 403
    assert "budget" in google_error(doc, 403, "PERMISSION_DENIED")
    assert cache_calls(mock) == before


def test_a_create_naming_a_model_the_key_may_not_use_is_refused(server, mock) -> None:
    before = cache_calls(mock)
    body = {"model": f"models/{MODEL}", "contents": CONTENTS}
    status, _, doc = call(server, "narrow", "POST", "/v1beta/cachedContents", body)
    assert status == 403
    assert MODEL in google_error(doc, 403, "PERMISSION_DENIED")
    status, _, doc = call(server, "alice", "POST", "/v1beta/cachedContents", {"contents": CONTENTS})
    google_error(doc, 400, "INVALID_ARGUMENT")
    status, _, doc = call(server, "alice", "POST", "/v1beta/cachedContents", {"model": "gpt-4o-mini"})
    google_error(doc, 400, "INVALID_ARGUMENT")
    assert cache_calls(mock) == before


def test_no_key_is_refused_before_the_body(server) -> None:
    with connect(server) as sock:
        head = (
            "POST /v1beta/cachedContents HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\nContent-Length: 900000\r\n\r\n"
        )
        sock.sendall(head.encode())
        status, _, raw = read_response(sock, timeout=5)
    assert status == 401
    google_error(json.loads(raw), 401, "UNAUTHENTICATED")
    status, _, doc = call(server, None, "GET", "/v1beta/cachedContents")
    google_error(doc, 401, "UNAUTHENTICATED")


def create_for(server: ServerProcess, who: str, model: str) -> dict:
    body = {"model": f"models/{model}", "contents": CONTENTS, "ttl": "300s"}
    status, _, doc = call(server, who, "POST", "/v1beta/cachedContents", body)
    assert status == 200, doc
    return doc


def budget_later(server: ServerProcess, who: str, usd: str) -> None:
    """Give ``who`` a total budget once it has its caches; wait until the server holds it to it."""
    done = server.cli("keys", "update", who, "--budget-usd", usd, "--budget-period", "total")
    assert done.returncode == 0, done.stderr
    body = {"model": f"models/{MODEL}", "contents": CONTENTS}
    wait_for(lambda: call(server, who, "POST", "/v1beta/cachedContents", body)[0] == 403, what="the budget")


def generate(server: ServerProcess, who: str, cache: str, method: str = "generateContent"):
    body = {"contents": QUESTION, "cachedContent": cache}
    return call(server, who, "POST", f"/v1beta/models/{BIG}:{method}", body)


def generate_calls(mock: MockUpstream) -> int:
    return sum(1 for r in mock.requests if r.path.startswith("/v1beta/models/") and "Generate" in r.path)


def test_a_burst_on_a_large_cache_made_before_the_budget_spends_no_more_than_it(server, mock) -> None:
    """Was: a call naming a cache was held at its body alone (~$0.008 here), though the cache's
    1,000,000 tokens are billed with it ($0.50 at the cached rate): a key with a $2 budget had all
    12 concurrent calls admitted and spent $6."""
    made = create_for(server, "burst", BIG)
    assert made["usageMetadata"]["totalTokenCount"] == BIG_CACHE_TOKENS
    budget_later(server, "burst", "2")
    mock.delay_ms = 300  # the calls are in flight together
    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            results = list(pool.map(lambda _: generate(server, "burst", made["name"]), range(12)))
    finally:
        mock.delay_ms = 0
    admitted = [headers["x-stockyard-trace-id"] for status, headers, _ in results if status == 200]
    refused = [doc for status, _, doc in results if status != 200]
    assert admitted, refused[:1]
    assert all("budget exceeded" in google_error(doc, 429, "RESOURCE_EXHAUSTED") for doc in refused), refused[:1]
    one = (
        (PROMPT_TOKENS - CACHED_TOKENS) * UC["input"]
        + BIG_CACHE_TOKENS * UC["cached"]
        + COMPLETION_TOKENS * UC["output"]
    )
    traces = [server.trace(trace_id) for trace_id in admitted]
    assert all(t["cached_tokens"] == BIG_CACHE_TOKENS and t["cost_uc"] == one for t in traces), traces[:1]
    assert sum(t["cost_uc"] for t in traces) <= 200_000_000, len(admitted)  # $2


@pytest.mark.parametrize("method", ["generateContent", "streamGenerateContent"])
def test_a_call_naming_a_cache_is_held_at_the_caches_tokens(server, mock, method) -> None:
    """A budget of $0.40 cannot pay one call on a 1,000,000-token cache ($0.50 at the cached rate):
    a 429 naming what it may cost, before any provider call. countTokens is free: it goes on."""
    who = f"small-{method}"
    made = create_for(server, who, BIG)
    budget_later(server, who, "0.40")
    before = generate_calls(mock)
    status, _, doc = generate(server, who, made["name"], method)
    assert status == 429, doc
    held = re.search(r"may cost up to \$([0-9.]+)", google_error(doc, 429, "RESOURCE_EXHAUSTED"))
    assert held is not None and float(held.group(1)) >= 0.50, doc
    assert generate_calls(mock) == before
    status, _, doc = generate(server, who, made["name"], "countTokens")
    assert status == 200, doc


def test_a_keys_tpm_counts_the_tokens_of_the_cache_a_call_names(server, mock) -> None:
    """Was: a call was counted against the key's tpm by its body alone: a key limited to 500,000
    tokens a minute sent calls on a 1,000,000-token cache, whose tokens the provider counts (and bills)
    with each. Now they count at admission: the call is a 429 before any provider call."""
    made = create_for(server, "limited", BIG)
    before = generate_calls(mock)
    status, _, doc = generate(server, "limited", made["name"])
    assert status == 429 and "tokens per minute" in google_error(doc, 429, "RESOURCE_EXHAUSTED"), doc
    assert generate_calls(mock) == before
    small = create_for(server, "limited", MODEL)  # an 8-token cache: well within the limit
    status, _, doc = call(
        server,
        "limited",
        "POST",
        f"/v1beta/models/{MODEL}:generateContent",
        {"contents": QUESTION, "cachedContent": small["name"]},
    )
    assert status == 200, doc


def test_a_cache_of_unknown_size_is_refused_under_a_budget_until_retrieved(server, mock) -> None:
    """A create answer without ``usageMetadata`` (and a cache recorded before Stockyard kept the
    count) leaves its size unknown: under a budget a call naming it is a 403 that reaches no
    provider; retrieving the cache (Google's answer states its size) lets it through."""
    made = create_for(server, "unknown", NOCOUNT)
    assert "usageMetadata" not in made
    budget_later(server, "unknown", "5")
    before = generate_calls(mock)
    body = {"contents": QUESTION, "cachedContent": made["name"]}
    status, _, doc = call(server, "unknown", "POST", f"/v1beta/models/{NOCOUNT}:generateContent", body)
    assert status == 403, doc
    message = google_error(doc, 403, "PERMISSION_DENIED")
    assert "budget" in message and made["name"] in message
    assert generate_calls(mock) == before
    status, _, got = call(server, "unknown", "GET", f"/v1beta/{made['name']}")
    assert status == 200 and got["usageMetadata"]["totalTokenCount"] == CACHED_TOKENS
    status, _, doc = call(server, "unknown", "POST", f"/v1beta/models/{NOCOUNT}:generateContent", body)
    assert status == 200 and doc["usageMetadata"]["cachedContentTokenCount"] == CACHED_TOKENS


@pytest.mark.parametrize(
    "body, query",
    [
        ({"ttl": "60s", "contents": CONTENTS}, "updateMask=ttl"),
        ({"ttl": "60s", "model": f"models/{OTHER}"}, "updateMask=ttl"),
        ({"expireTime": "2030-01-01T00:00:00Z", "systemInstruction": {"parts": [{"text": "be rude"}]}}, ""),
        ({"ttl": "60s", "tools": [], "toolConfig": {}}, "updateMask=ttl"),
        ({"ttl": "60s", "displayName": "renamed"}, "updateMask=ttl"),
        ({"ttl": "60s"}, "updateMask=ttl,contents"),
    ],
)
def test_a_patch_may_change_only_the_expiry(server, mock, body, query) -> None:
    """Google updates a cache's expiration only (``ttl`` or ``expireTime``); Stockyard relayed the
    rest as sent. Any other field, in the body or the ``updateMask``, is Google's 400 here, never sent."""
    made = create(server, "patcher")
    before = cache_calls(mock)
    status, _, doc = call(server, "patcher", "PATCH", f"/v1beta/{made['name']}?{query}", body)
    assert status == 400, doc
    message = google_error(doc, 400, "INVALID_ARGUMENT")
    assert "ttl" in message and "expireTime" in message
    assert cache_calls(mock) == before
    for allowed, mask in (({"ttl": "60s"}, "ttl"), ({"expire_time": "2030-01-01T00:00:00Z"}, "expire_time")):
        status, _, doc = call(server, "patcher", "PATCH", f"/v1beta/{made['name']}?updateMask={mask}", allowed)
        assert status == 200, doc

"""Models served by deployments: strategies, per-deployment health, context-window fallback.

Real servers against the mock upstream: ``openai`` on the shared mock, ``mistral`` on a slow
mock (every answer 300 ms late). Deployments on the same provider are told apart by their own
keys, which the mock records in the Authorization header. The clock-exact parts (a
cooldown's length, a breaker's half-open probe) are also checked on :class:`Health` with a
fake clock.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import Counter
from urllib.parse import quote

import pytest
from conftest import OPENAI_KEY, ServerProcess, base_env, mock_env, open_database, served, wait_for
from mock_upstream import MockUpstream, Reply
from module_helpers import ADMIN_KEY, api, disable_all, put_module

from stockyard.deployments import BREAKER_COOLDOWN_S, Deployment, Health, ModelRoute
from stockyard.errors import ProxyError
from stockyard.modules.ratelimit import RateLimiter
from stockyard.operations import models as model_ops
from stockyard.providers import Provider, Registry, from_env
from stockyard.proxy import CONTEXT_OVERFLOW

SECRET = "enc-" + secrets.token_hex(16)
KEYS = {name: f"sk-dep-{name}-{secrets.token_hex(8)}" for name in ("a", "b", "c")}
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def slow():
    with MockUpstream(delay_ms=1000) as upstream:  # far above what the local mock takes, even under load
        yield upstream


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, slow, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        MISTRAL_API_KEY="mistral-test-key-0123456789",
        MISTRAL_BASE_URL=slow.url + "/v1",
        STOCKYARD_ADMIN_KEY=ADMIN_KEY,
        STOCKYARD_ENCRYPTION_KEY=SECRET,
    )
    with served(pyz_path, tmp_path_factory, "deployments", env, never_logged=KEYS.values()) as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh(server, mock, slow):
    """Every test starts with no models, no modules on, and empty mocks."""
    mock.clear_replies()
    slow.clear_replies()
    _, listing = api(server, "GET", "/api/models")
    for m in listing["data"]:
        api(server, "DELETE", f"/api/models/{m['name']}")
    disable_all(server)
    mock.clear()
    slow.clear()
    yield
    mock.clear_replies()


def deploy(server, model_name: str, /, **fields) -> dict:
    status, view = api(server, "POST", f"/api/models/{model_name}/deployments", fields)
    assert status == 201, view
    return view


def chat(server, model: str, **body):
    return server.request("POST", "/v1/chat/completions", {"model": model, "messages": HELLO, **body})


def who(mock) -> list[str]:
    """Which deployment key each request the mock received carried (``env`` for the provider's)."""
    by_key = {f"Bearer {k}": name for name, k in KEYS.items()}
    return [by_key.get(r.headers.get("authorization", ""), "env") for r in mock.requests]


def health(server, model: str) -> dict[str, dict]:
    _, listing = api(server, "GET", "/api/models")
    [found] = [m for m in listing["data"] if m["name"] == model]
    return {d["name"]: d["health"] for d in found["deployments"]}


@pytest.mark.parametrize("name", ["caf\u00e9", "50%off"])
def test_a_model_whose_name_needs_percent_encoding_can_be_changed_and_removed(server, name):
    """Was: the models routes did not decode their path (keys and prices did): a model named café
    or 50%off could be made but never changed or removed, from the API or the console."""
    status, body = api(server, "POST", "/api/models", {"name": name})
    assert status == 201, body
    assert api(server, "PATCH", f"/api/models/{quote(name, safe='')}", {"strategy": "latency"})[0] == 200
    assert api(server, "DELETE", f"/api/models/{quote(name, safe='')}")[0] == 200


# -- strategies --------------------------------------------------------------------------------


def test_weights_three_to_one_give_exactly_300_and_100_of_400(server, mock):
    deploy(server, "chat", name="a", provider="openai", model="gpt-4o-mini", weight=3, api_key=KEYS["a"])
    deploy(server, "chat", name="b", provider="openai", model="gpt-4o-mini", weight=1, api_key=KEYS["b"])
    for _ in range(400):
        assert chat(server, "chat")[0] == 200
    assert Counter(who(mock)) == {"a": 300, "b": 100}
    assert who(mock)[:8] == ["a", "a", "b", "a"] * 2, "smooth: b's turns are spread out, not bunched"


def test_least_busy_avoids_the_deployment_with_a_request_in_flight(server, mock, slow):
    deploy(server, "chat", name="slow", provider="mistral", model="mistral-small")
    deploy(server, "chat", name="fast", provider="openai", model="gpt-4o-mini", api_key=KEYS["a"])
    assert api(server, "PATCH", "/api/models/chat", {"strategy": "least-busy"})[0] == 200
    slow.enqueue(Reply(hang_s=2))  # busy for as long as the three requests below may take on a loaded machine
    first = threading.Thread(target=chat, args=(server, "chat"))
    first.start()  # ties go to the first listed: the slow one, which then stays busy
    wait_for(lambda: health(server, "chat")["slow"]["in_flight"] == 1, what="the slow deployment busy")
    for _ in range(3):
        assert chat(server, "chat")[0] == 200
        # The last one leaves "in flight" just after its answer reached us: wait, or a tie could pick slow.
        wait_for(lambda: health(server, "chat")["fast"]["in_flight"] == 0, what="the answer's request to end")
    first.join()
    assert len(slow.requests) == 1 and who(mock) == ["a", "a", "a"]


def test_latency_prefers_the_lowest_time_to_first_byte(server, mock, slow):
    deploy(server, "chat", name="slow", provider="mistral", model="mistral-small")
    deploy(server, "chat", name="fast", provider="openai", model="gpt-4o-mini", api_key=KEYS["a"])
    assert api(server, "PATCH", "/api/models/chat", {"strategy": "latency"})[0] == 200
    served = []
    for _ in range(6):
        status, headers, _ = chat(server, "chat")
        assert status == 200
        served.append(headers["x-stockyard-deployment"])
    # Each one is measured once (the unmeasured first), then the fast one takes every request.
    # (Counted from the answers: an earlier test's request may still be ending at the slow mock.)
    assert served == ["chat/slow"] + ["chat/fast"] * 5
    seen = health(server, "chat")
    assert seen["slow"]["ttfb_ms"] >= 1000 > seen["fast"]["ttfb_ms"]


def test_usage_picks_the_most_headroom(server, mock):
    deploy(server, "chat", name="a", provider="openai", model="gpt-4o-mini", rpm=4, api_key=KEYS["a"])
    deploy(server, "chat", name="b", provider="openai", model="gpt-4o-mini", rpm=2, api_key=KEYS["b"])
    assert api(server, "PATCH", "/api/models/chat", {"strategy": "usage"})[0] == 200
    for _ in range(6):
        assert chat(server, "chat")[0] == 200
    # headroom a 4/4 → a; 3/4 vs b 2/2 → b; 3/4 vs 1/2 → a; 2/4 vs 1/2 → a (first of a tie); …
    assert Counter(who(mock)) == {"a": 4, "b": 2}
    status, _, body = chat(server, "chat")
    assert status == 429 and json.loads(body)["error"]["code"] == "deployments_at_limit"


# -- health per deployment -----------------------------------------------------------------------


def test_a_429_with_retry_after_cools_only_that_deployment(server, mock):
    deploy(server, "chat", name="a", provider="openai", model="gpt-4o-mini", api_key=KEYS["a"])
    deploy(server, "chat", name="b", provider="openai", model="gpt-4o-mini", api_key=KEYS["b"])
    mock.enqueue(Reply(status=429, headers={"retry-after": "2"}))
    status, headers, _ = chat(server, "chat")
    assert status == 200 and who(mock) == ["a", "b"], "the 429 spilled to the next deployment"
    assert headers["x-stockyard-deployment"] == "chat/b"
    seen = health(server, "chat")
    # Retry-After's 2 s, not the 5 s default for a 429 (how much is left depends on the machine's load)
    assert 0 < seen["a"]["cooling_down_s"] <= 2 and seen["b"]["cooling_down_s"] == 0
    mock.clear()
    for _ in range(3):
        assert chat(server, "chat")[0] == 200
    assert who(mock) == ["b", "b", "b"], "a cools down; b takes everything meanwhile"
    wait_for(lambda: health(server, "chat")["a"]["cooling_down_s"] == 0, timeout=3, what="a's 2 s cooldown")
    mock.clear()
    for _ in range(2):
        assert chat(server, "chat")[0] == 200
    assert "a" in who(mock), "a is back once its cooldown ran out"


def test_a_broken_deployment_leaves_another_model_on_the_same_provider_alone(server, mock):
    deploy(server, "big", name="a", provider="openai", model="gpt-4o", api_key=KEYS["a"])
    deploy(server, "small", name="b", provider="openai", model="gpt-4o-mini", api_key=KEYS["b"])
    for _ in range(3):  # Retry-After: 0 — no cooldown, so only the breaker stops it
        mock.enqueue(Reply(status=500, headers={"retry-after": "0"}))
        assert chat(server, "big")[0] == 500
    assert health(server, "big")["a"]["breaker"] == "open"
    mock.clear()
    status, headers, body = chat(server, "big")
    assert status == 503 and json.loads(body)["error"]["code"] == "deployments_unavailable"
    assert int(headers["retry-after"]) >= 25 and mock.requests == [], "an open breaker is not called"
    assert chat(server, "small")[0] == 200 and who(mock) == ["b"]
    assert health(server, "small")["b"]["breaker"] == "closed"


def test_a_breaker_on_one_plain_model_leaves_the_next_model_of_the_provider_alone(server, mock):
    put_module(server, "fallback", {"retries": 0, "breaker_failures": 2, "breaker_cooldown_s": 30})
    for _ in range(2):
        mock.enqueue(Reply(status=500))
        assert chat(server, "gpt-4o")[0] == 500
    status, _, body = chat(server, "gpt-4o")
    assert status == 503 and json.loads(body)["error"]["code"] == "circuit_open"
    assert chat(server, "gpt-4o-mini")[0] == 200, "gpt-4o's breaker does not block gpt-4o-mini"
    _, view = api(server, "GET", "/api/modules/fallback")
    assert view["status"]["breakers"]["openai/gpt-4o"]["state"] == "open"


def test_rpm_spills_to_the_next_priority_instead_of_a_429(server, mock):
    deploy(server, "chat", name="a", provider="openai", model="gpt-4o-mini", rpm=2, api_key=KEYS["a"])
    deploy(server, "chat", name="b", provider="openai", model="gpt-4o-mini", priority=1, api_key=KEYS["b"])
    for _ in range(5):
        assert chat(server, "chat")[0] == 200
    assert who(mock) == ["a", "a", "b", "b", "b"]
    seen = health(server, "chat")
    assert (seen["a"]["rpm_used"], seen["b"]["rpm_used"]) == (2, 3)


# -- fallbacks ------------------------------------------------------------------------------------

CONTEXT_ERROR = {
    "error": {
        "message": "This model's maximum context length is 128000 tokens. "
        "However, your messages resulted in 200000 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


def test_a_context_length_error_moves_to_the_larger_model(server, mock):
    deploy(server, "chat", name="a", provider="openai", model="gpt-4o-mini", api_key=KEYS["a"])
    deploy(server, "big", name="b", provider="openai", model="gpt-4o", api_key=KEYS["b"])  # first: it is named
    assert api(server, "PATCH", "/api/models/chat", {"context_fallback": "big"})[0] == 200
    mock.enqueue(Reply(status=400, json=CONTEXT_ERROR))
    status, headers, _ = chat(server, "chat")
    assert status == 200 and who(mock) == ["a", "b"]
    assert [r.json["model"] for r in mock.requests] == ["gpt-4o-mini", "gpt-4o"]
    assert headers["x-stockyard-routed-model"] == "big"
    assert health(server, "chat")["a"]["cooling_down_s"] == 0, "too long for the model is not the deployment's fault"
    mock.clear()
    mock.enqueue(Reply(status=400))  # another 400 is the client's: passed on, no fallback
    assert chat(server, "chat")[0] == 400 and who(mock) == ["a"]


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(CONTEXT_ERROR).encode(),
        b'{"type":"error","error":{"type":"invalid_request_error",'
        b'"message":"prompt is too long: 210000 tokens > 200000 maximum"}}',
        b'{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number '
        b'of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}',
    ],
)
def test_context_overflow_is_recognised_in_each_dialect(body):
    assert CONTEXT_OVERFLOW.search(body)
    assert not CONTEXT_OVERFLOW.search(b'{"error":{"message":"Invalid value for temperature"}}')


def test_a_stream_falls_back_only_before_its_first_byte(server, mock):
    deploy(server, "chat", name="a", provider="openai", model="gpt-4o-mini", api_key=KEYS["a"])
    deploy(server, "chat", name="b", provider="openai", model="gpt-4o-mini", api_key=KEYS["b"])
    mock.enqueue(Reply(status=503))
    status, _, body = chat(server, "chat", stream=True)
    assert status == 200 and b"[DONE]" in body and who(mock) == ["a", "b"]
    mock.clear()
    chunk = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}
    mock.enqueue(Reply(sse=[json.dumps(chunk)] * 3, cut_after=1))
    status, _, body = chat(server, "chat", stream=True)
    assert status == 200 and b"Hel" in body and b"[DONE]" not in body and b"error" in body
    assert len(mock.requests) == 1, "after the first byte the stream is the answer: no fallback"


def test_model_fallbacks_follow_the_deployments(server, mock):
    deploy(server, "chat", name="a", provider="openai", model="mock-error-500", api_key=KEYS["a"])
    assert api(server, "PATCH", "/api/models/chat", {"fallbacks": ["openai/gpt-4o-mini"]})[0] == 200
    status, _, _ = chat(server, "chat")
    assert status == 200 and [r.json["model"] for r in mock.requests] == ["mock-error-500", "gpt-4o-mini"]


def test_a_model_without_deployments_routes_as_before(server, mock):
    assert api(server, "POST", "/api/models", {"name": "gpt-4o-mini"})[0] == 201
    assert chat(server, "gpt-4o-mini")[0] == 200 and who(mock) == ["env"]


# -- managing them ---------------------------------------------------------------------------------


def test_cli_deploys_with_a_key_that_never_reaches_the_database_in_plain_text(server, mock):
    result = server.cli(
        "models", "deploy", "chat", "--provider", "openai", "--upstream-model", "gpt-4o-mini", "--weight", "2",
        "--key-stdin", input=KEYS["c"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "added deployment 'openai' to model 'chat'" in result.stdout and KEYS["c"][-4:] in result.stdout
    wait_for(lambda: chat(server, "chat")[0] == 200, timeout=2, what="the server to pick up the CLI's change")
    assert who(mock)[-1] == "c"
    listed = server.cli("models", "list", "--json")
    assert json.loads(listed.stdout)["deployments"][0]["key"] == "…" + KEYS["c"][-4:]
    raw = b"".join(p.read_bytes() for p in server.db.parent.iterdir() if p.name.startswith("stockyard.db"))
    assert KEYS["c"].encode() not in raw
    audit = server.db_rows("SELECT details FROM audit_log WHERE action = 'model.deploy'")
    assert audit and all(KEYS["c"] not in row["details"] for row in audit)
    assert server.cli("models", "undeploy", "chat", "openai").returncode == 0


def test_api_refuses_bad_deployments_and_documents_the_routes(server):
    status, body = api(server, "POST", "/api/models/chat/deployments", {"provider": "openai"})
    assert status == 400 and body["error"]["param"] == "model"
    status, body = api(server, "POST", "/api/models", {"name": "chat", "strategy": "random"})
    assert status == 400 and "least-busy" in body["error"]["message"]
    status, body = api(server, "POST", "/api/models", {"name": "chat", "strategies": "random"})  # a typo
    assert status == 400 and body["error"]["param"] == "strategies", body
    assert body["error"]["message"].startswith("unknown field(s) 'strategies'; use name, "), body
    status, body = api(
        server, "POST", "/api/models/chat/deployments", {"provider": "openai", "model": "x", "weight": 0}
    )
    assert status == 400 and body["error"]["param"] == "weight"
    _, doc = api(server, "GET", "/api/openapi.json")
    assert {"/api/models", "/api/models/{name}/deployments/{deployment}"} <= set(doc["paths"])


def test_a_change_that_leaves_a_model_pointing_nowhere_is_refused_naming_it(server):
    """Was accepted: a deployment on a provider that does not exist was left out, and a fallback
    to a model that does not exist skipped, silently, at every request."""
    status, body = api(server, "POST", "/api/models/chat/deployments", {"provider": "opnai", "model": "gpt-4o-mini"})
    assert status == 400 and body["error"]["param"] == "provider" and "'opnai'" in body["error"]["message"], body
    assert api(server, "GET", "/api/models")[1]["data"] == []  # nothing was made, not even the model
    deploy(server, "chat", provider="openai", model="gpt-4o-mini")
    status, body = api(server, "PATCH", "/api/models/chat", {"fallbacks": ["openai/gpt-4o", "backup-pool"]})
    assert status == 400 and body["error"]["param"] == "fallbacks" and "'backup-pool'" in body["error"]["message"]
    status, body = api(server, "PATCH", "/api/models/chat", {"context_fallback": "org9/big"})
    assert status == 400 and "'org9/big'" in body["error"]["message"], body
    deploy(server, "backup-pool", provider="openai", model="gpt-4o")  # once the model exists, it may be named
    assert api(server, "PATCH", "/api/models/chat", {"fallbacks": ["backup-pool"]})[0] == 200
    status, body = api(server, "DELETE", "/api/models/backup-pool")  # and it cannot go while named
    assert status == 400 and "'backup-pool'" in body["error"]["message"], body
    cli = server.cli("models", "set", "chat", "--context-fallback", "huge-pool")
    assert cli.returncode == 1 and "'huge-pool'" in cli.stderr, cli.stderr
    assert api(server, "PATCH", "/api/models/chat", {"fallbacks": []})[0] == 200
    assert api(server, "DELETE", "/api/models/backup-pool")[0] == 200


def test_a_provider_that_deployments_use_cannot_be_removed_under_them(server):
    status, body = api(
        server,
        "POST",
        "/api/providers",
        {"name": "org2", "kind": "openai", "base_url": "https://api.openai.com/v1", "api_key": KEYS["a"]},
    )
    assert status == 201, body
    deploy(server, "chat", provider="org2", model="gpt-4o-mini")
    status, body = api(server, "DELETE", "/api/providers/org2")
    assert status == 400 and "'org2', which does not exist" in body["error"]["message"], body
    api(server, "DELETE", "/api/models/chat")
    assert api(server, "DELETE", "/api/providers/org2")[0] == 200


# -- the clock-exact parts, in process -------------------------------------------------------------


def _route(*deployments: Deployment, strategy: str = "weighted") -> ModelRoute:
    return ModelRoute("m", strategy, deployments)


def _dep(name: str, **kw) -> Deployment:
    return Deployment("m", name, Provider("p", "openai", "http://x"), "up", **kw)


def test_health_cooldown_lasts_exactly_the_retry_after_and_the_breaker_probes_once():
    now = [0.0]
    health = Health(clock=lambda: now[0])
    a, b = _dep("a"), _dep("b")
    route = _route(a, b)
    entry = health.begin(a, tokens=1)
    health.finish(a, entry, ok=False, failed=True, status=429, retry_after=2.0)
    now[0] = 1.999
    assert health.choose(route, 1) == b and health.choose(route, 1) == b
    now[0] = 2.0
    assert a in (health.choose(route, 1), health.choose(route, 1))
    for _ in range(2):  # with the first: three failures in a row open the breaker
        health.finish(a, health.begin(a, tokens=1), ok=False, failed=True, retry_after=0)
    now[0] += BREAKER_COOLDOWN_S - 0.001
    assert {health.choose(route, 1) for _ in range(4)} == {b}
    now[0] += 0.001
    assert health.choose(route, 1, exclude=frozenset({"m/b"})) == a
    probe = health.begin(a, tokens=1)  # half-open: this is the one probe
    with pytest.raises(ProxyError):
        health.choose(route, 1, exclude=frozenset({"m/b"}))
    health.finish(a, probe, ok=True, failed=False)
    assert health.snapshot(a)["breaker"] == "closed" and health.choose(route, 1, exclude=frozenset({"m/b"})) == a


def test_models_list_names_deployed_models(server):
    deploy(server, "chat", provider="openai", model="gpt-4o-mini")
    status, _, body = server.request("GET", "/v1/models")
    ids = [m["id"] for m in json.loads(body)["data"]]
    assert status == 200 and ids[0] == "chat" and "gpt-4o-mini" in ids


def test_every_deployment_unavailable_goes_to_the_models_fallback(server, mock):
    deploy(server, "chat", name="a", provider="openai", model="gpt-4o-mini", rpm=1, api_key=KEYS["a"])
    assert api(server, "PATCH", "/api/models/chat", {"fallbacks": ["openai/gpt-4o"]})[0] == 200
    assert chat(server, "chat")[0] == 200
    status, headers, _ = chat(server, "chat")  # a is at its rpm: the fallback serves it
    assert status == 200 and headers["x-stockyard-routed-model"] == "openai/gpt-4o"
    assert [r.json["model"] for r in mock.requests] == ["gpt-4o-mini", "gpt-4o"]


def test_rotate_secret_re_encrypts_deployment_keys(pyz_path, cache_home, tmp_path):
    db = tmp_path / "s.db"
    env = {**base_env(cache_home), "STOCKYARD_ENCRYPTION_KEY": SECRET, "OPENAI_API_KEY": OPENAI_KEY}
    run = ServerProcess(pyz_path, db, env).cli  # the CLI against this database, no server needed
    deployed = run(
        "models", "deploy", "chat", "--provider", "openai", "--upstream-model", "m", "--key-stdin", input=KEYS["a"]
    )
    assert deployed.returncode == 0, deployed.stderr
    new_secret = "enc-" + secrets.token_hex(16)
    rotated = run("providers", "rotate-secret", input=new_secret)
    assert rotated.returncode == 0 and "re-encrypted 1 provider key" in rotated.stdout, rotated.stderr
    doctor = run("doctor", env={"STOCKYARD_ENCRYPTION_KEY": new_secret}).stdout
    assert "decrypts all 1 stored provider key(s)" in doctor, "doctor checks the deployment's key (no provider has one)"
    conn = open_database(db)
    try:
        registry = Registry(from_env(env))
        [route] = model_ops.load(conn, new_secret, registry)
        assert route.deployments[0].provider.api_key == KEYS["a"]
        [old] = model_ops.load(conn, SECRET, registry)
        assert old.deployments[0].provider.key_error and old.deployments[0].provider.api_key is None
    finally:
        conn.close()


def test_a_reservation_counts_at_once_and_an_unused_one_is_given_back():
    health = Health(clock=lambda: 0.0)
    a, b = _dep("a", rpm=1), _dep("b", priority=1)
    route = _route(a, b)
    first, entry = health.reserve(route, 10)
    assert first == a and health.reserve(route, 10)[0] == b, "a's one request a minute is taken before it is sent"
    health.release(a, entry)  # e.g. the cache answered
    assert health.reserve(route, 10)[0] == a


def test_a_claim_is_busy_at_once_and_counts_against_limits_only_once_confirmed():
    """The route step's claim (cache29): a burst the cache answers must not fill a deployment's rpm,
    yet least-busy must see it; a claim confirmed on a deployment filled meanwhile is given back."""
    health = Health(clock=lambda: 0.0)
    a, b = _dep("a", rpm=1), _dep("b", priority=1)
    route = _route(a, b)
    claims = [health.claim(route, 10) for _ in range(3)]
    assert [d for d, _ in claims] == [a, a, a], "a claim takes nothing from a's one request a minute"
    assert health.snapshot(a)["rpm_used"] == 0
    assert health.confirm(*claims[0]) is not None and health.snapshot(a)["rpm_used"] == 1
    assert health.confirm(*claims[1]) is None, "a is full now: the second is given back"
    health.release(*claims[2])  # e.g. the cache answered
    assert health.snapshot(a)["rpm_used"] == 1 and health.reserve(route, 10)[0] == b
    busy = _route(_dep("x"), _dep("y"), strategy="least-busy")
    assert [health.claim(busy, 1)[0].name for _ in range(2)] == ["x", "y"], "a claim counts as busy"


def test_a_cache_hit_gives_its_deployments_reservation_back(server, mock):
    deploy(server, "chat", name="a", provider="openai", model="gpt-4o-mini", rpm=5, api_key=KEYS["a"])
    put_module(server, "cache", {})
    assert chat(server, "chat")[0] == 200
    # The answer is stored after the client has it: ask again until the cache answers.
    wait_for(lambda: chat(server, "chat")[1]["x-stockyard-cache"] == "hit", timeout=5, what="a cache hit")
    calls = len(mock.requests)
    # Given back when the request ends, which may be just after the client has its answer.
    wait_for(lambda: health(server, "chat")["a"]["rpm_used"] == calls, timeout=2, what="the reservations given back")


def test_a_deployments_limit_holds_across_processes_sharing_its_window():
    """Two servers' health (the workers of a group, replicas) over one set of shared windows (the
    parent's RateLimiter): a's 3 requests a minute are 3 in all, not 3 each; then b takes them,
    and with b full too the answer is a 429 saying when to retry."""
    shared = RateLimiter()
    one, two = Health(clock=lambda: 0.0, shared=shared), Health(clock=lambda: 0.0, shared=shared)
    a, b = _dep("a", rpm=3), _dep("b", priority=1, rpm=2)
    route = _route(a, b)
    chosen = [(one, two)[i % 2].reserve(route, 10)[0].name for i in range(5)]
    assert chosen == ["a", "a", "a", "b", "b"]
    with pytest.raises(ProxyError) as none_left:
        one.reserve(route, 10)
    assert none_left.value.status == 429 and 1 <= int(none_left.value.headers["Retry-After"]) <= 60


def test_a_deployments_shared_tokens_are_corrected_and_given_back():
    shared = RateLimiter()
    one, two = Health(clock=lambda: 0.0, shared=shared), Health(clock=lambda: 0.0, shared=shared)
    a, b = _dep("a", tpm=1000), _dep("b", priority=1)
    route = _route(a, b)
    d, entry = one.reserve(route, 900)
    assert d == a and two.reserve(route, 200)[0] == b, "900 of a's 1000 tokens are counted everywhere"
    one.begin(a, entry)
    one.finish(a, entry, ok=True, failed=False, tokens=100)  # it used 100
    d, entry = one.reserve(route, 800)
    assert d == a
    one.release(a, entry)  # not sent after all: its tokens are given back
    assert one.reserve(route, 850)[0] == a
    # two was told a was full: it leaves a out until the window's Retry-After, not a moment more.
    assert two.reserve(route, 10)[0] == b


def test_health_without_shared_windows_counts_only_its_own():
    one, two = Health(clock=lambda: 0.0), Health(clock=lambda: 0.0)
    route = _route(_dep("a", rpm=1))
    assert one.reserve(route, 1)[0].name == two.reserve(route, 1)[0].name == "a"


# -- under a burst ---------------------------------------------------------------------------------


def test_least_busy_spreads_a_burst_instead_of_herding_onto_the_first(server, slow):
    """60 clients at once on two deployments 1 s slow: ties go to the first listed, so a burst
    whose requests did not see each other in flight would all land on ``a``."""
    for name in ("a", "b"):
        deploy(server, "chat", name=name, provider="mistral", model="mistral-small", api_key=KEYS[name])
    assert api(server, "PATCH", "/api/models/chat", {"strategy": "least-busy"})[0] == 200
    statuses: list[int] = []
    clients = [threading.Thread(target=lambda: statuses.append(chat(server, "chat")[0])) for _ in range(60)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    assert statuses == [200] * 60
    counts = Counter(who(slow))
    assert sum(counts.values()) == 60 and abs(counts["a"] - counts["b"]) <= 6, counts


def test_latency_sends_a_cold_burst_to_the_deployment_measured_first_not_all_to_the_first_listed(server, mock, slow):
    """Both unmeasured at the start of a burst: the slow one (1 s) gets the first request, the
    fast one the next; once the fast one is measured it takes the rest. Before, every request of
    the burst saw both unmeasured and went to the first listed: 60 of 60 on the 1 s deployment."""
    deploy(server, "chat", name="slow", provider="mistral", model="mistral-small")
    deploy(server, "chat", name="fast", provider="openai", model="gpt-4o-mini", api_key=KEYS["a"])
    assert api(server, "PATCH", "/api/models/chat", {"strategy": "latency"})[0] == 200
    served: list[tuple[int, str]] = []

    def one() -> None:
        status, headers, _ = chat(server, "chat")
        served.append((status, headers.get("x-stockyard-deployment", "")))

    clients = [threading.Thread(target=one) for _ in range(60)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    counts = Counter(served)
    assert sum(counts.values()) == 60 and counts[(200, "chat/fast")] >= 40, counts


def test_latency_ranks_unmeasured_idle_then_measured_then_unmeasured_busy():
    health = Health()
    a, b, c = _dep("a"), _dep("b"), _dep("c")
    route = _route(a, b, c, strategy="latency")
    first = health.begin(health.choose(route, 1), tokens=1)
    assert health.choose(route, 1) == b, "a is being measured: b, unmeasured and idle, is next"
    health.finish(a, first, ok=True, failed=False, ttfb_s=0.5)
    health.begin(b, tokens=1)
    health.begin(c, tokens=1)
    assert health.choose(route, 1) == a, "measured beats unmeasured ones already being measured"


def half_open() -> tuple[list[float], Health, Deployment, Deployment, ModelRoute]:
    """Deployments a and b (least-busy) on a clock at a's breaker's half-open moment: three failures
    in a row opened it, a cooldown ago."""
    now = [0.0]
    health = Health(clock=lambda: now[0])
    a, b = _dep("a"), _dep("b")
    route = _route(a, b, strategy="least-busy")
    for _ in range(3):
        health.finish(a, health.begin(a, tokens=1), ok=False, failed=True, retry_after=0)
    now[0] += BREAKER_COOLDOWN_S
    return now, health, a, b, route


def test_a_half_open_breaker_lets_one_reservation_through_not_a_burst():
    """The probe is claimed when the deployment is reserved: concurrent requests that reserved
    before the probe's attempt began would otherwise all probe a deployment that just failed."""
    now, health, a, b, route = half_open()
    probe, entry = health.reserve(route, 1, exclude=frozenset({"m/b"}))
    assert probe == a
    with pytest.raises(ProxyError):  # the probe is out: nobody else probes
        health.reserve(route, 1, exclude=frozenset({"m/b"}))
    assert {health.reserve(route, 1)[0] for _ in range(5)} == {b}
    health.release(a, entry)  # the probe was not sent (a cache hit): the next request may probe
    probe, entry = health.reserve(route, 1, exclude=frozenset({"m/b"}))
    health.finish(a, health.begin(a, entry), ok=True, failed=False)
    assert health.snapshot(a)["breaker"] == "closed" and health.snapshot(a)["in_flight"] == 0


def test_a_lost_probe_claim_expires_after_a_breaker_cooldown():
    """A probe whose request neither finished nor gave its reservation back (its thread died on a
    path that forgot it) must not keep the deployment out for good: the claim expires after a
    breaker cooldown, as the fallback module's does, and the next request probes."""
    now, health, a, b, route = half_open()
    assert health.reserve(route, 1, exclude=frozenset({"m/b"}))[0] == a  # the probe, then lost
    now[0] = 2 * BREAKER_COOLDOWN_S - 0.001
    with pytest.raises(ProxyError):
        health.choose(route, 1, exclude=frozenset({"m/b"}))
    now[0] = 2 * BREAKER_COOLDOWN_S
    probe, entry = health.reserve(route, 1, exclude=frozenset({"m/b"}))
    assert probe == a
    health.finish(a, health.begin(a, entry), ok=True, failed=False)
    assert health.snapshot(a)["breaker"] == "closed"


def test_least_busy_and_latency_count_reservations_not_yet_sent():
    """A burst reserves its deployments before any attempt begins (the request's modules and budget
    run between): least-busy must spread it, not send it all to the first deployment listed, and the
    latency strategy must not send a cold burst to one unmeasured deployment."""
    for strategy in ("least-busy", "latency"):
        health = Health(clock=lambda: 0.0)
        a, b = _dep("a"), _dep("b")
        route = _route(a, b, strategy=strategy)
        reserved = [health.reserve(route, 1) for _ in range(4)]
        assert sorted(d.name for d, _ in reserved) == ["a", "a", "b", "b"], strategy
        d, entry = reserved[0]
        health.release(d, entry)  # given back: no longer busy
        health.begin(reserved[1][0], reserved[1][1])  # sent: busy as before
        assert health.reserve(route, 1)[0] == d, strategy


def test_a_slow_probe_that_was_sent_keeps_its_claim_until_it_ends():
    """Only a reservation never sent expires: a probe on its way (a long answer) is still the one probe
    after a cooldown, so a failing deployment is not probed again every 30 s while it answers slowly."""
    now, health, a, b, route = half_open()
    probe, entry = health.reserve(route, 1, exclude=frozenset({"m/b"}))
    health.begin(a, entry)
    now[0] += 10 * BREAKER_COOLDOWN_S
    with pytest.raises(ProxyError):
        health.choose(route, 1, exclude=frozenset({"m/b"}))
    health.finish(a, entry, ok=True, failed=False)
    assert health.choose(route, 1, exclude=frozenset({"m/b"})) == a

"""``GET /v1/models[/{id}]`` for Anthropic's SDKs: a request carrying ``anthropic-version`` gets
Anthropic's Models API shape (ModelInfo objects, ``limit``/``after_id``/``before_id`` pages, its
error shape); without it OpenAI's, as before. The official ``anthropic`` and ``openai`` SDKs
against a real server whose OpenAI and Anthropic providers are a mock.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import anthropic
import pytest
from conftest import OPENAI_KEY, ServerProcess, base_env, served
from mock_upstream import ANTHROPIC_CREATED_AT, CREATED, MockUpstream, anthropic_display_name

ADMIN = "admin-key-for-anthropic-models-0123456789"
VERSION = {"anthropic-version": "2023-06-01"}
EVERY = [
    "gpt-4o-mini",
    "gpt-4o",
    "text-embedding-3-small",
    "anthropic/gpt-4o-mini",
    "anthropic/gpt-4o",
    "anthropic/text-embedding-3-small",
    "claude-sonnet-4-5-20250514",
    "claude-sonnet-4-5-20250929",
]


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, tmp_path_factory):
    """OpenAI and Anthropic providers at a mock of their own; keys required (two keys made)."""
    with MockUpstream() as own:
        env = {
            **base_env(cache_home),
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_BASE_URL": own.url + "/v1",
            "ANTHROPIC_API_KEY": "sk-ant-anthropic-models-0123456789",
            "ANTHROPIC_BASE_URL": own.url,
            "STOCKYARD_ADMIN_KEY": ADMIN,
        }
        with served(pyz_path, tmp_path_factory, "antmodels", env) as srv:
            restricted = ["gpt-4o", "anthropic/*"]
            srv.keys = {"all": make_key(srv, "all", None), "some": make_key(srv, "some", restricted)}
            yield srv


def make_key(server: ServerProcess, name: str, models: list[str] | None) -> str:
    spec = {"name": name, **({"models": models} if models else {})}
    status, _, raw = server.request("POST", "/api/keys", spec, headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 201, raw
    return json.loads(raw)["key"]


def openai_ids(server: ServerProcess, key: str = "all") -> list[str]:
    client = server.openai(key)
    return [m.id for m in client.models.list()]


def refusal(server: ServerProcess, path: str) -> tuple[int, dict]:
    """A raw GET as an Anthropic client sends it (the key as x-api-key); its status and JSON body."""
    status, _, raw = server.request("GET", path, headers={**VERSION, "x-api-key": server.keys["all"]})
    return status, json.loads(raw)


def test_the_sdk_lists_typed_models_with_the_openai_listing_ids(server):
    page = server.anthropic("all").models.list(limit=1000)
    assert all(isinstance(m, anthropic.types.ModelInfo) for m in page.data)
    assert [m.id for m in page.data] == openai_ids(server) == EVERY
    assert {(m.type, m.lifecycle) for m in page.data} == {("model", "active")}
    made = {m.id: m.created_at for m in page.data}  # the date each provider's listing gave, kept
    assert made["gpt-4o"] == datetime.fromtimestamp(CREATED, timezone.utc)
    assert made["anthropic/gpt-4o"] == datetime.fromisoformat(ANTHROPIC_CREATED_AT)
    names = {m.id: m.display_name for m in page.data}
    assert names["anthropic/gpt-4o"] == anthropic_display_name("gpt-4o"), "the provider's own display name"
    assert names["gpt-4o"] == "gpt-4o", "OpenAI's listing gives no name: the id"
    assert (page.has_more, page.first_id, page.last_id) == (False, EVERY[0], EVERY[-1])
    status, body = refusal(server, "/v1/models")  # the wire: exactly Anthropic's fields
    assert status == 200 and set(body) == {"data", "has_more", "first_id", "last_id"}
    assert len(body["data"]) == len(EVERY), "default limit 20 holds them all"
    assert body["data"][0] == {
        "type": "model",
        "id": "gpt-4o-mini",
        "display_name": "gpt-4o-mini",
        "created_at": "2023-11-14T22:13:20Z",
        "lifecycle": "active",
    }


def test_auto_pagination_visits_every_model_once_both_ways(server):
    client = server.anthropic("all")
    assert [m.id for m in client.models.list(limit=2)] == EVERY
    assert [m.id for m in client.models.list(limit=4)] == EVERY
    first = client.models.list(limit=4)
    assert (first.has_more, first.first_id, first.last_id) == (True, EVERY[0], EVERY[3])
    rest = client.models.list(limit=4, after_id=EVERY[3])
    assert ([m.id for m in rest.data], rest.has_more) == (EVERY[4:], False)
    before = client.models.list(limit=2, before_id=EVERY[5])
    assert ([m.id for m in before.data], before.has_more) == (EVERY[3:5], True)
    backwards = [[m.id for m in page.data] for page in before.iter_pages()]
    assert backwards == [EVERY[3:5], EVERY[1:3], EVERY[:1]], "before_id pages walk back to the start"
    assert client.models.list(before_id=EVERY[0]).data == []


def test_retrieve_one_model_and_an_unknown_one_is_not_found(server):
    client = server.anthropic("all")
    model = client.models.retrieve("anthropic/gpt-4o-mini")  # the SDK sends the / as %2F
    assert isinstance(model, anthropic.types.ModelInfo)
    assert (model.id, model.display_name, model.type) == (
        "anthropic/gpt-4o-mini",
        anthropic_display_name("gpt-4o-mini"),
        "model",
    )
    assert client.models.retrieve("gpt-4o").created_at == datetime.fromtimestamp(CREATED, timezone.utc)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.models.retrieve("claude-nonexistent-9")
    assert missing.value.body["type"] == "error"
    assert missing.value.body["error"]["type"] == "not_found_error"
    assert "claude-nonexistent-9" in missing.value.body["error"]["message"]


def test_retrieve_resolves_an_alias_to_its_newest_snapshot_as_anthropic_does(server):
    """Anthropic's ``GET /v1/models/{id}`` takes an alias (``claude-sonnet-4-5``) and answers the
    newest dated snapshot listed; a prefix that is not a whole name is no alias."""
    client = server.anthropic("all")
    assert client.models.retrieve("claude-sonnet-4-5").id == "claude-sonnet-4-5-20250929"
    assert client.models.retrieve("claude-sonnet-4-5-20250514").id == "claude-sonnet-4-5-20250514"
    for not_an_alias in ("claude-sonnet-4", "claude-sonnet-4-5-2025", "claude-sonnet", "sonnet-4-5"):
        with pytest.raises(anthropic.NotFoundError):
            client.models.retrieve(not_an_alias)
    other = make_key(server, "gpt-4o-only", ["gpt-4o"])
    with pytest.raises(anthropic.NotFoundError):  # a key limited to other models resolves no alias to them
        server.anthropic(other).models.retrieve("claude-sonnet-4-5")


def test_a_restricted_key_sees_only_its_models(server):
    client = server.anthropic("some")
    wanted = ["gpt-4o", *(m for m in EVERY if m.startswith(("anthropic/", "claude-")))]
    assert [m.id for m in client.models.list(limit=3)] == openai_ids(server, "some") == wanted
    assert client.models.retrieve("anthropic/gpt-4o").id == "anthropic/gpt-4o"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("gpt-4o-mini")  # listed for others, not for this key
    with pytest.raises(anthropic.BadRequestError) as hidden:
        client.models.list(after_id="gpt-4o-mini")  # a cursor it cannot see is as unknown as any
    assert "after_id" in hidden.value.body["error"]["message"]


def test_without_a_good_key_it_is_anthropics_401(server):
    with pytest.raises(anthropic.AuthenticationError) as bad:
        server.anthropic("sk-sy-not-a-real-key").models.list()
    assert bad.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        server.anthropic("sk-sy-not-a-real-key").models.retrieve("gpt-4o")
    for path in ("/v1/models", "/v1/models/gpt-4o"):
        status, _, raw = server.request("GET", path, headers=VERSION)  # no key at all
        body = json.loads(raw)
        assert status == 401 and body["type"] == "error", body
        assert body["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    "query, named",
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "limit"),
        ("limit=", "limit"),
        ("limit=2&limit=3", "limit"),
        ("after_id=claude-nope", "after_id"),
        ("before_id=claude-nope", "before_id"),
        ("after_id=gpt-4o&before_id=gpt-4o-mini", "before_id"),
        ("lifecycle[]=ancient", "lifecycle"),
    ],
)
def test_bad_paging_is_anthropics_400_naming_it(server, query, named):
    status, body = refusal(server, "/v1/models?" + query)
    assert status == 400, body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert named in body["error"]["message"]


def test_the_sdk_raises_bad_request_for_a_bad_limit_and_filters_by_lifecycle(server):
    client = server.anthropic("all")
    with pytest.raises(anthropic.BadRequestError):
        client.models.list(limit=1001)
    assert [m.id for m in client.models.list(lifecycle=["active", "deprecated"])] == EVERY
    assert client.models.list(lifecycle=["retired"]).data == [], "every model Stockyard lists is active"


def test_head_and_other_methods(server):
    status, headers, raw = server.request("HEAD", "/v1/models", headers={**VERSION, "x-api-key": server.keys["all"]})
    assert (status, raw) == (200, b"") and headers["content-type"] == "application/json"
    status, _, raw = server.request("HEAD", "/v1/models/gpt-4o", headers={**VERSION, "x-api-key": "sk-sy-wrong"})
    assert (status, raw) == (401, b"")
    status, _, raw = server.request("POST", "/v1/models", {}, headers={**VERSION, "x-api-key": server.keys["all"]})
    assert status == 405 and json.loads(raw)["type"] == "error"


def test_without_the_header_the_openai_listing_is_unchanged(server):
    headers = server.auth("all")
    status, _, raw = server.request("GET", "/v1/models?limit=abc", headers=headers)  # no Anthropic paging here
    body = json.loads(raw)
    assert status == 200 and set(body) == {"object", "data"} and body["object"] == "list"
    anthropic_made = int(datetime.fromisoformat(ANTHROPIC_CREATED_AT).timestamp())
    expected = {"id": "anthropic/gpt-4o-mini", "object": "model", "created": anthropic_made, "owned_by": "anthropic"}
    assert body["data"][3] == expected
    status, _, raw = server.request("GET", "/v1/models/anthropic%2Fgpt-4o", headers=headers)
    assert status == 200 and json.loads(raw) == {
        "id": "anthropic/gpt-4o",
        "object": "model",
        "created": anthropic_made,
        "owned_by": "anthropic",
    }
    status, _, raw = server.request("GET", "/v1/models/claude-nope", headers=headers)
    assert status == 404 and json.loads(raw)["error"]["code"] == "model_not_found"
    status, _, raw = server.request("GET", "/v1/models")
    assert status == 401 and json.loads(raw)["error"]["code"] == "missing_api_key"
    client = server.openai("all")
    assert client.models.retrieve("gpt-4o").owned_by == "openai"


def test_display_names_are_read_from_each_listing_shape():
    from stockyard.models import display_names

    anthropic_doc = {"data": [{"id": "claude-x", "display_name": "Claude X"}, {"id": "bare"}, {"id": 3}, "junk"]}
    assert display_names(anthropic_doc) == {"claude-x": "Claude X"}
    named, empty = {"name": "models/gemini-z", "displayName": "Gemini Z"}, {"name": "models/n", "displayName": ""}
    gemini_doc = {"models": [named, empty]}
    assert display_names(gemini_doc) == {"gemini-z": "Gemini Z"}
    assert display_names({"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]}) == {}


def test_dates_are_read_from_each_listing_shape():
    """OpenAI's ``created`` and Anthropic's ``created_at`` (RFC 3339) as Unix seconds; a date that is
    not one is left out (the listing says 0, the epoch, for it), never a failed listing."""
    from stockyard.models import created_times

    doc = {
        "data": [
            {"id": "gpt-x", "created": 1_700_000_000},
            {"id": "claude-x", "created_at": "2025-09-29T00:00:00Z"},
            {"id": "naive", "created_at": "2025-09-29T00:00:00"},
            {"id": "bad", "created_at": "yesterday"},
            {"id": "flag", "created": True},
            {"id": "huge", "created": 10**30},
            {"id": "none"},
            "junk",
        ]
    }
    assert created_times(doc) == {"gpt-x": 1_700_000_000, "claude-x": 1_759_104_000, "naive": 1_759_104_000}
    assert created_times({"models": [{"name": "models/gemini-z"}]}) == {}

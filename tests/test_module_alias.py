"""The alias module: names mapped to models (any provider), weighted A/B splits, plain and
streamed, the trace keeping the model as asked; switched at run time."""

from __future__ import annotations

import collections
import json

import pytest

from conftest import wait_for
from module_helpers import (api, chat, disable_all, providers_called, put_module, raw_stream, start_server,
                            stream_text)


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    srv = start_server(pyz_path, cache_home, mock, tmp_path_factory, "alias")
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log


@pytest.fixture(autouse=True)
def alias_on(server, mock):
    disable_all(server)
    put_module(server, "alias", {"aliases": {"fast": "groq/llama-3.3-70b", "default": "gpt-4o-mini"},
                                 "splits": {"ab": [{"model": "gpt-4o-mini", "weight": 1},
                                                   {"model": "groq/gpt-4o", "weight": 1}],
                                            "always-a": [{"model": "gpt-4o-mini", "weight": 5},
                                                         {"model": "gpt-4o", "weight": 0}]}})
    mock.clear()


def test_alias_routes_to_its_provider_and_model(server, mock):
    status, headers, _ = chat(server, model="fast")
    assert status == 200 and headers["x-stockyard-routed-model"] == "groq/llama-3.3-70b"
    assert providers_called(mock) == ["groq"] and mock.last("/chat/completions").json["model"] == "llama-3.3-70b"
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["model"], trace["provider"], trace["served_model"]) == ("fast", "groq", "llama-3.3-70b")


def test_alias_on_a_streamed_request(server, mock):
    status, headers, data = raw_stream(server, {"model": "default", "messages": [{"role": "user", "content": "x"}]})
    assert status == 200 and stream_text(data) == "Hello from mock"
    assert mock.last("/chat/completions").json["model"] == "gpt-4o-mini" and providers_called(mock) == ["openai"]
    assert server.trace(headers["x-stockyard-trace-id"])["model"] == "default"


def test_weighted_split_sends_requests_to_every_arm(server, mock):
    seen = collections.Counter(chat(server, model="ab")[1]["x-stockyard-routed-model"] for _ in range(40))
    assert set(seen) == {"gpt-4o-mini", "groq/gpt-4o"} and min(seen.values()) >= 5
    assert {chat(server, model="always-a")[1]["x-stockyard-routed-model"] for _ in range(10)} == {"gpt-4o-mini"}


def test_unknown_names_pass_untouched(server, mock):
    status, headers, _ = chat(server, model="gpt-4o")
    assert status == 200 and "x-stockyard-routed-model" not in headers
    assert mock.last("/chat/completions").json["model"] == "gpt-4o"


def test_disabled_alias_has_no_effect(server):
    assert api(server, "POST", "/api/modules/alias/disable")[0] == 200
    status, _, body = chat(server, model="fast")
    assert status == 400 and json.loads(body)["error"]["code"] == "model_not_routable"


def test_cli_changes_an_alias_at_run_time(server, mock):
    assert server.cli("modules", "set", "alias", "aliases.fast=gpt-4o").returncode == 0

    def routed() -> str | None:
        return chat(server, model="fast")[1].get("x-stockyard-routed-model")

    wait_for(lambda: routed() == "gpt-4o", what="the new alias target")
    assert server.cli("modules", "disable", "alias").returncode == 0
    wait_for(lambda: routed() is None, what="alias off")


def test_bad_split_is_rejected(server):
    status, body = api(server, "PATCH", "/api/modules/alias",
                       {"config": {"splits": {"ab": [{"model": "a", "weight": 0}]}}})
    assert status == 400 and body["error"]["param"] == "alias.splits"
    assert "at least one weight above 0" in body["error"]["message"]

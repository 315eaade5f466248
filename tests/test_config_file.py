"""Configuration as code: `stockyard config export | plan | apply` and `serve --config`.

Real pyz subprocesses against real database files; the provider in the files is the mock.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import clirun
import pytest
from conftest import ServerProcess, base_env, database_arg, open_database, stored_values, wait_for

SECRET = "enc-" + secrets.token_hex(16)
ORG_KEY = f"sk-org2-{secrets.token_hex(12)}"
HELLO = [{"role": "user", "content": "hi"}]


def config_text(mock_url: str) -> str:
    return f"""
# a team's configuration, kept in git
[providers.org2]
kind = "openai"
base_url = "{mock_url}/v1"
models = ["gpt-4o-mini", "gpt-4o"]
api_key_env = "ORG2_KEY"

[modules.alias]
enabled = true
[modules.alias.config.aliases]
fast = "gpt-4o-mini"

[modules.guard]
enabled = true
[modules.guard.config]
max_tokens = 4000
deny_models = ["o1"]

[prices."gpt-4o-mini"]
input = "1.00"
output = "2.00"

[prices."dall-e-3/1024x1024/hd"]
unit = "image"
input = "80000"

[projects.research]
budget_usd = "50.00"
period = "month"
"""


@pytest.fixture
def env(cache_home):
    return {**base_env(cache_home), "STOCKYARD_ENCRYPTION_KEY": SECRET, "ORG2_KEY": ORG_KEY}


def cli(pyz: Path, db: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return clirun.run(pyz, [*args, "--db", database_arg(db)], env)


def write(tmp_path: Path, text: str, name: str = "stockyard.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_export_apply_on_a_fresh_database_reproduces_it(pyz_path, mock, env, tmp_path):
    first, second = tmp_path / "a" / "s.db", tmp_path / "b" / "s.db"
    file = write(tmp_path, config_text(mock.url))
    plan = cli(pyz_path, first, env, "config", "plan", str(file))
    assert plan.returncode == 2 and "+ providers.org2: add" in plan.stdout and "7 changes" in plan.stdout
    applied = cli(pyz_path, first, env, "config", "apply", str(file))
    assert applied.returncode == 0, applied.stderr
    assert cli(pyz_path, first, env, "config", "plan", str(file)).stdout.strip() == "no changes"

    exported = cli(pyz_path, first, env, "config", "export")
    assert exported.returncode == 0, exported.stderr
    assert ORG_KEY not in exported.stdout and 'api_key_env = "ORG2_KEY"' in exported.stdout
    again = write(tmp_path, exported.stdout, "exported.toml")
    assert cli(pyz_path, second, env, "config", "apply", str(again)).returncode == 0
    assert cli(pyz_path, second, env, "config", "plan", str(again)).stdout.strip() == "no changes"
    assert cli(pyz_path, second, env, "config", "export").stdout == exported.stdout

    # The same behaviour: the alias routes to the file's provider with the key from the
    # environment, the guard and the price apply, the project budget exists.
    server = ServerProcess(pyz_path, second, env).start()
    try:
        status, headers, _ = server.request("POST", "/v1/chat/completions", {"model": "fast", "messages": HELLO})
        assert status == 200
        assert mock.last("/chat/completions").headers["authorization"] == f"Bearer {ORG_KEY}"
        trace = server.trace(headers["x-stockyard-trace-id"])
        # 12 prompt × $1.00/1M + 5 completion × $2.00/1M = 12×100 + 5×200 = 2200 µ¢
        assert (trace["provider"], trace["served_model"], trace["cost_uc"]) == ("org2", "gpt-4o-mini", 2200)
        status, _, body = server.request("POST", "/v1/chat/completions", {"model": "o1", "messages": HELLO})
        assert status in (400, 403) and b"o1" in body
    finally:
        server.stop()
    projects = cli(pyz_path, second, env, "projects", "list", "--json")
    assert json.loads(projects.stdout.splitlines()[0])["budget_uc"] == 5_000_000_000


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("[providers.x]\nkind = \n", 2, "not valid TOML"),
        ('[providers.x]\nkind = "openai"\ncolour = "red"\n', 3, "providers.x.colour: unknown field"),
        ('\n[providers.x]\nkind = "martian"\n', 3, "providers.x.kind:"),
        ('[providers.x]\nkind = "openai"\napi_key = "sk-live-abc"\n', 3, "keys are never written"),
        ('[modules.guard]\nenabled = true\n[modules.guard.config]\nmax_tokens = "lots"\n', 4, "max_tokens"),
        ("[modules.teleport]\nenabled = true\n", 1, "no module named 'teleport'"),
        ('[prices."m"]\ninput = "0.1"\n', 1, "output is required"),
        ('[projects.p]\nbudget_usd = "ten"\nperiod = "month"\n', 2, "projects.p.budget_usd"),
        ('[keys.k]\nname = "x"\n', 1, "unknown section"),
    ],
)
def test_a_bad_file_is_refused_with_its_line_and_field(pyz_path, env, tmp_path, text, line, message):
    db = tmp_path / "s.db"
    file = write(tmp_path, text)
    for action in ("plan", "apply"):
        result = cli(pyz_path, db, env, "config", action, str(file))
        assert result.returncode == 1, result.stdout
        assert f"{file}:{line}:" in result.stderr and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert "sk-live-abc" not in result.stderr


def test_a_variable_that_is_not_set_changes_nothing(pyz_path, mock, env, tmp_path):
    db = tmp_path / "s.db"
    file = write(tmp_path, config_text(mock.url))
    result = cli(pyz_path, db, {k: v for k, v in env.items() if k != "ORG2_KEY"}, "config", "apply", str(file))
    assert result.returncode == 1 and "ORG2_KEY" in result.stderr
    assert "[providers" not in cli(pyz_path, db, env, "config", "export").stdout


def test_apply_is_all_or_nothing(pyz_path, mock, env, tmp_path):
    """A failure inside the transaction (here: the audit chain refuses another secret) leaves
    none of the earlier changes of the same file behind."""
    db = tmp_path / "s.db"
    first = write(tmp_path, '[prices."a-model"]\ninput = "1"\noutput = "2"\n', "first.toml")
    assert cli(pyz_path, db, env, "config", "apply", str(first)).returncode == 0
    before = cli(pyz_path, db, env, "config", "export").stdout
    other = {**env, "STOCKYARD_ENCRYPTION_KEY": "enc-" + secrets.token_hex(16)}
    file = write(tmp_path, config_text(mock.url).replace('api_key_env = "ORG2_KEY"\n', ""))
    result = cli(pyz_path, db, other, "config", "apply", str(file))
    assert result.returncode == 1 and "nothing was changed" in result.stderr, result.stderr
    assert cli(pyz_path, db, env, "config", "export").stdout == before
    conn = open_database(db)
    try:
        assert conn.execute("SELECT count(*) AS n FROM providers").fetchone()[0] == 0
    finally:
        conn.close()


def test_a_running_server_picks_up_an_applied_file(pyz_path, mock, env, tmp_path):
    db = tmp_path / "s.db"
    server = ServerProcess(pyz_path, db, env).start()
    try:
        status, _, _ = server.request("POST", "/v1/chat/completions", {"model": "fast", "messages": HELLO})
        assert status != 200  # no provider yet
        file = write(tmp_path, config_text(mock.url))
        assert cli(pyz_path, db, env, "config", "apply", str(file)).returncode == 0

        def served() -> bool:
            return server.request("POST", "/v1/chat/completions", {"model": "fast", "messages": HELLO})[0] == 200

        wait_for(served, timeout=1.5, what="the applied configuration to reach the running server")
    finally:
        server.stop()


def test_serve_config_applies_at_start_and_a_bad_file_stops_it(pyz_path, mock, env, tmp_path):
    db = tmp_path / "s.db"
    file = write(tmp_path, config_text(mock.url))
    server = ServerProcess(pyz_path, db, env, ["--config", str(file)]).start()
    try:
        status, _, _ = server.request("POST", "/v1/chat/completions", {"model": "fast", "messages": HELLO})
        assert status == 200
    finally:
        server.stop()
    bad = write(tmp_path, '[providers.x]\nkind = "martian"\n', "bad.toml")
    result = subprocess.run(
        [sys.executable, str(pyz_path), "serve", "--port", "0", "--db", database_arg(db), "--config", str(bad)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and f"{bad}:2:" in result.stderr and "listening" not in result.stderr


def test_exported_file_never_holds_a_stored_key(pyz_path, mock, env, tmp_path):
    db = tmp_path / "s.db"
    stored_key = f"sk-stored-{secrets.token_hex(12)}"
    added = subprocess.run(
        [
            sys.executable,
            str(pyz_path),
            "providers",
            "add",
            "vaulted",
            "--kind",
            "openai",
            "--base-url",
            mock.url + "/v1",
            "--key-stdin",
            "--db",
            database_arg(db),
        ],
        env=env,
        input=stored_key,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    exported = cli(pyz_path, db, env, "config", "export")
    assert "[providers.vaulted]" in exported.stdout and stored_key not in exported.stdout
    assert stored_key[-4:] not in exported.stdout
    # Applying the export keeps the vaulted key (no api_key_env: "leave it in the vault").
    file = write(tmp_path, exported.stdout)
    assert cli(pyz_path, db, env, "config", "plan", str(file)).stdout.strip() == "no changes"


DEPLOYMENT_KEY = f"sk-dep-{secrets.token_hex(12)}"


def models_text(mock_url: str) -> str:
    return f"""
[providers.org2]
kind = "openai"
base_url = "{mock_url}/v1"
models = ["gpt-4o-mini", "gpt-4o"]
api_key_env = "ORG2_KEY"

[models.chat]
strategy = "least-busy"
fallbacks = ["org2/gpt-4o-mini"]
context_fallback = "big"

[[models.chat.deployments]]
name = "primary"
provider = "org2"
model = "gpt-4o-mini"
weight = 3
rpm = 100
key_env = "DEPLOYMENT_KEY"

[[models.chat.deployments]]
provider = "org2"
model = "gpt-4o"
priority = 1
tpm = 50000

[models.big]
[[models.big.deployments]]
provider = "org2"
model = "gpt-4o"
"""


def test_models_and_deployments_export_apply_and_plan_without_difference(pyz_path, mock, env, tmp_path):
    env = {**env, "DEPLOYMENT_KEY": DEPLOYMENT_KEY}
    first, second = tmp_path / "a" / "s.db", tmp_path / "b" / "s.db"
    file = write(tmp_path, models_text(mock.url))
    plan = cli(pyz_path, first, env, "config", "plan", str(file))
    assert "+ models.chat: add" in plan.stdout and "+ models.chat/primary: add" in plan.stdout, plan.stdout
    assert "+ models.chat/org2: add" in plan.stdout and "+ models.big/org2: add" in plan.stdout
    assert cli(pyz_path, first, env, "config", "apply", str(file)).returncode == 0
    assert cli(pyz_path, first, env, "config", "plan", str(file)).stdout.strip() == "no changes"

    exported = cli(pyz_path, first, env, "config", "export").stdout
    assert DEPLOYMENT_KEY not in exported and 'key_env = "DEPLOYMENT_KEY"' in exported
    assert "[[models.chat.deployments]]" in exported and 'strategy = "least-busy"' in exported
    again = write(tmp_path, exported, "exported.toml")
    assert cli(pyz_path, second, env, "config", "apply", str(again)).returncode == 0
    assert cli(pyz_path, second, env, "config", "plan", str(again)).stdout.strip() == "no changes"
    assert cli(pyz_path, second, env, "config", "export").stdout == exported

    changed = write(tmp_path, models_text(mock.url).replace("weight = 3", "weight = 2"), "changed.toml")
    assert (
        cli(pyz_path, second, env, "config", "plan", str(changed))
        .stdout.splitlines()[0]
        .startswith("~ models.chat/primary: change")
    )
    rotated = {**env, "DEPLOYMENT_KEY": DEPLOYMENT_KEY + "x"}
    assert "~ models.chat/primary: set key" in cli(pyz_path, second, rotated, "config", "plan", str(again)).stdout

    server = ServerProcess(pyz_path, second, env).start()
    try:
        status, _, _ = server.request("POST", "/v1/chat/completions", {"model": "chat", "messages": HELLO})
        assert status == 200
        last = mock.last("/chat/completions")
        assert last.headers["authorization"] == f"Bearer {DEPLOYMENT_KEY}" and last.json["model"] == "gpt-4o-mini"
    finally:
        server.stop()
    raw = b"".join(p.read_bytes() for p in second.parent.glob("s.db*"))
    raw += b"".join(data for _, data in stored_values(second))  # on PostgreSQL the only place
    assert DEPLOYMENT_KEY.encode() not in raw


@pytest.mark.parametrize(
    "text, line, message",
    [
        ('[models.chat]\nstrategy = "random"\n', 2, "models.chat.strategy"),
        ('[models.chat]\n\n[[models.chat.deployments]]\nprovider = "openai"\n', 3, "model"),
        (
            '[models.chat]\n[[models.chat.deployments]]\nprovider = "openai"\nmodel = "m"\napi_key = "sk-x"\n',
            5,
            "never",
        ),
        ('[models.chat]\n[[models.chat.deployments]]\nprovider = "openai"\nmodel = "m"\nweight = 0\n', 5, "weight"),
        # references that lead nowhere (were accepted, then skipped at every request)
        ('[models.chat]\nfallbacks = ["backup-pool"]\n', 2, "fallbacks 'backup-pool' is neither a model"),
        ('[models.chat]\ncontext_fallback = "org9/big"\n', 2, "context_fallback 'org9/big' is neither"),
        ('[models.chat]\n[[models.chat.deployments]]\nprovider = "opnai"\nmodel = "m"\n', 3, "provider 'opnai'"),
    ],
)
def test_a_bad_models_section_is_refused_with_its_line_and_field(pyz_path, env, tmp_path, text, line, message):
    two = {**env, "OPENAI_API_KEY": "sk-test-0123456789", "ANTHROPIC_API_KEY": "sk-ant-test-0123456789"}
    result = cli(pyz_path, tmp_path / "s.db", two, "config", "plan", str(write(tmp_path, text)))
    assert result.returncode == 1 and f":{line}:" in result.stderr and message in result.stderr, result.stderr


def test_with_one_provider_a_bare_fallback_name_is_its_model(pyz_path, env, tmp_path):
    """With one provider every name routes to it (an Ollama-only setup names its models bare):
    a fallback no model prefix claims is not refused there, only beside a second provider."""
    text = (
        '[models.chat]\nfallbacks = ["llama3.2"]\n[[models.chat.deployments]]\nprovider = "ollama"\nmodel = "qwen3"\n'
    )
    file = write(tmp_path, text)
    ollama = {**env, "OLLAMA_BASE_URL": "http://127.0.0.1:9"}
    assert cli(pyz_path, tmp_path / "s.db", ollama, "config", "apply", str(file)).returncode == 0
    two = {**ollama, "OPENAI_API_KEY": "sk-test-0123456789"}
    result = cli(pyz_path, tmp_path / "t.db", two, "config", "apply", str(file))
    assert result.returncode == 1 and "'llama3.2' is neither a model" in result.stderr, result.stderr


def test_exported_strings_are_toml_whatever_they_hold():
    """Was: a DEL (U+007F) was written raw inside a TOML string, where TOML forbids it: `config
    export` wrote a file `config apply` (and any TOML parser) refused."""
    import tomllib

    from stockyard.configfile import _value

    odd = 'odd\x7fname\x01"quoted"\\ café'
    assert tomllib.loads(f"a = {_value(odd)}") == {"a": odd}


def test_a_providers_model_names_are_printable():
    from stockyard.operations import Refused
    from stockyard.operations.providers import check_models

    assert check_models(["gpt-4o", "café*"], "openai-compatible") == ("gpt-4o", "café*")
    for bad in ("odd\x7fname", "a\u2028b", "tab\there"):
        with pytest.raises(Refused, match="printable"):
            check_models([bad], "openai-compatible")


def test_a_file_naming_a_model_or_provider_that_does_not_exist_changes_nothing(pyz_path, mock, env, tmp_path):
    """``config apply`` (and ``serve --config``) refuse a model whose deployment, fallback or
    context fallback leads nowhere, naming it; the configuration in the database stays."""
    db = tmp_path / "s.db"
    env = {**env, "OPENAI_API_KEY": "sk-test-0123456789"}  # a second provider: bare names must be claimed
    good = write(tmp_path, models_text(mock.url))
    assert cli(pyz_path, db, {**env, "DEPLOYMENT_KEY": DEPLOYMENT_KEY}, "config", "apply", str(good)).returncode == 0
    before = cli(pyz_path, db, env, "config", "export").stdout
    dangling = models_text(mock.url).replace('context_fallback = "big"', 'context_fallback = "bigger"')
    bad = write(tmp_path, dangling, "bad.toml")
    result = cli(pyz_path, db, {**env, "DEPLOYMENT_KEY": DEPLOYMENT_KEY}, "config", "apply", str(bad))
    assert result.returncode == 1 and f"{bad}:11: models.chat.context_fallback:" in result.stderr, result.stderr
    assert "'bigger'" in result.stderr
    gone = write(tmp_path, models_text(mock.url).replace("[providers.org2]", "[providers.org3]"), "gone.toml")
    result = cli(pyz_path, db, {**env, "DEPLOYMENT_KEY": DEPLOYMENT_KEY}, "config", "apply", str(gone))
    assert result.returncode == 1 and "provider 'org2', which does not exist" in result.stderr, result.stderr
    result = subprocess.run(
        [sys.executable, str(pyz_path), "serve", "--port", "0", "--db", database_arg(db), "--config", str(bad)],
        env={**env, "DEPLOYMENT_KEY": DEPLOYMENT_KEY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "'bigger'" in result.stderr and "listening" not in result.stderr
    assert cli(pyz_path, db, env, "config", "export").stdout == before

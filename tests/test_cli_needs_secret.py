"""The CLI commands that store a secret encrypted refuse without STOCKYARD_ENCRYPTION_KEY before they
open the database: a refused command leaves no new database behind (no file on SQLite, no tables on
PostgreSQL), and its one line says what to set."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TEST_STORE, base_env, database_arg, open_database
from test_data34 import run

from stockyard.store import db

CONFIG = '[providers.acme]\nkind = "openai"\napi_key_env = "ACME_KEY"\n'
KEY = "sk-needs-secret-0123456789abcdef"
SECRET = "needs-secret-test-encryption-secret-0123456789"

# (command, what its refusal names as stored encrypted); "{dir}" is the test's folder
NEEDS_SECRET = [
    (["webhooks", "add", "https://example.com/hook", "--events", "all"], "a webhook's signing secret"),
    (["providers", "add", "acme", "--kind", "openai", "--key-stdin"], "a provider key"),
    (["providers", "set-key", "acme", "--key-stdin"], "a provider key"),
    (
        ["models", "deploy", "m1", "--provider", "openai", "--upstream-model", "gpt-4o", "--key-stdin"],
        "a deployment's key",
    ),
    (["models", "change-deployment", "m1", "d1", "--key-stdin"], "a deployment's key"),
    (["config", "apply", "{dir}/stockyard.toml"], "a provider key {dir}/stockyard.toml names by api_key_env"),
    (["config", "plan", "{dir}/stockyard.toml"], "a provider key {dir}/stockyard.toml names by api_key_env"),
]


def nothing_made(database: str, folder: Path) -> bool:
    """No database was created: on SQLite no file at all in the folder but the config file; on
    PostgreSQL no Stockyard tables in the (empty) database."""
    if not database.startswith("postgresql://"):
        return sorted(p.name for p in folder.iterdir()) == ["stockyard.toml"]
    conn = open_database(database)
    try:
        return db.schema_version(conn) == 0
    finally:
        conn.close()


@pytest.mark.parametrize("command, what", NEEDS_SECRET, ids=[" ".join(c[:2]) for c, _ in NEEDS_SECRET])
def test_a_command_storing_a_secret_refuses_without_the_key_and_creates_nothing(
    pyz_path, cache_home, tmp_path, command, what
):
    """Was: ``webhooks add --db NEW.db`` (and these others) created the database, its schema
    migrated, and only then refused for want of the secret, leaving a new empty database behind."""
    (tmp_path / "stockyard.toml").write_text(CONFIG)
    database = database_arg(tmp_path / "new.db")
    env = {**base_env(cache_home), "ACME_KEY": KEY}
    args = [part.format(dir=tmp_path) for part in command]
    done = run(pyz_path, [*args, "--db", database], env, KEY)
    assert done.returncode == 1, done.stdout + done.stderr
    said = done.stderr.strip()
    assert said.startswith("stockyard: ") and said.count("\n") == 2, said  # its one line, then how to set it
    assert f"STOCKYARD_ENCRYPTION_KEY is not set, and {what.format(dir=tmp_path)} is stored encrypted with it" in said
    assert "export STOCKYARD_ENCRYPTION_KEY=" in said and "nothing was changed" in said
    assert "Traceback" not in said and KEY not in said + done.stdout
    assert nothing_made(database, tmp_path)


def test_with_the_key_set_the_same_commands_store_their_secrets(pyz_path, cache_home, tmp_path):
    """The refusal above is the missing key's alone: with it, a fresh database takes them."""
    (tmp_path / "stockyard.toml").write_text(CONFIG)
    database = database_arg(tmp_path / "new.db")
    env = {**base_env(cache_home), "ACME_KEY": KEY, "STOCKYARD_ENCRYPTION_KEY": SECRET}
    for command in (
        NEEDS_SECRET[0][0],
        NEEDS_SECRET[3][0],
        ["config", "apply", f"{tmp_path}/stockyard.toml"],
        NEEDS_SECRET[2][0],  # acme exists now (config apply made it)
    ):
        done = run(pyz_path, [*command, "--db", database], env, KEY)
        assert done.returncode == 0, done.stdout + done.stderr
    assert not nothing_made(database, tmp_path)


@pytest.mark.skipif(TEST_STORE == "postgresql", reason="a file's leftovers: SQLite's")
def test_a_config_file_that_does_not_read_is_refused_before_the_database_is_made(pyz_path, cache_home, tmp_path):
    """The file is read first: a broken one on a fresh install leaves no empty database behind either."""
    (tmp_path / "stockyard.toml").write_text("[providers.acme\n")
    done = run(
        pyz_path, ["config", "apply", tmp_path / "stockyard.toml", "--db", tmp_path / "new.db"], base_env(cache_home)
    )
    assert done.returncode == 1 and "stockyard.toml" in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stockyard.toml"]

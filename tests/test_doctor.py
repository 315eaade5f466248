"""``stockyard doctor``: all ok on a healthy installation, a fail line with a fix for each problem."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OPENAI_KEY, base_env

from stockyard import doctor, vault
from stockyard.cli import main
from stockyard.store import db

SECRET = "doctor-test-secret-0123456789abcdef"
UPSTREAM_KEY = "sk-upstream-provider-key-0123456789"
HEALTHY_ENV = {"STOCKYARD_ENCRYPTION_KEY": SECRET, "OPENAI_API_KEY": OPENAI_KEY}


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Path:
    """A migrated database with a keyed audit chain, written the way the CLI writes it."""
    path = tmp_path_factory.mktemp("doctor") / "stockyard.db"
    db.open_and_migrate(path)[0].close()
    env = {
        **base_env(tmp_path_factory.mktemp("cache")),
        "STOCKYARD_ENCRYPTION_KEY": SECRET,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    for note in ("first", "second"):
        subprocess.run(
            [sys.executable, "-m", "stockyard", "audit", "note", note, "--db", str(path)],
            env=env,
            check=True,
            capture_output=True,
        )
    return path


@pytest.fixture
def copy(healthy, tmp_path) -> Path:
    path = tmp_path / "stockyard.db"
    path.write_bytes(healthy.read_bytes())
    return path


def checks(path: Path, env: dict[str, str] | None = None, host: str | None = None) -> dict[str, list]:
    """name → [(status, message, fix)] for one doctor run."""
    found: dict[str, list] = {}
    for c in doctor.run(path, HEALTHY_ENV if env is None else env, host=host):
        found.setdefault(c.name, []).append((c.status, c.message, c.fix))
    return found


def status_of(found: dict[str, list], name: str) -> str:
    statuses = {s for s, _, _ in found[name]}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


def sql(path: Path, statement: str, *args) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(statement, args)
    conn.close()


def test_healthy_installation_is_all_ok(pyz_path, cache_home, healthy):
    before = healthy.read_bytes()
    proc = subprocess.run(
        [sys.executable, str(pyz_path), "doctor", "--db", str(healthy)],
        env={**base_env(cache_home), **HEALTHY_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "all checks passed" and proc.stderr == ""
    names = [line.split()[1] for line in lines[:-1]]
    assert all(line.startswith("ok  ") for line in lines[:-1]), proc.stdout
    assert {"database", "journal", "schema", "disk", "encryption", "audit", "providers", "listen"} <= set(names)
    assert "ok, 2 entries, head " in proc.stdout and "openai (…CRET)" in proc.stdout
    for secret in (SECRET, OPENAI_KEY):
        assert secret not in proc.stdout
    assert healthy.read_bytes() == before  # doctor changes nothing


def test_broken_database_fails_with_fix_and_exit_1(tmp_path, monkeypatch, capsys):
    garbage = tmp_path / "stockyard.db"
    garbage.write_bytes(b"this is not a database, just bytes " * 200)
    monkeypatch.delenv("STOCKYARD_HOST", raising=False)
    for name, value in HEALTHY_ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["doctor", "--db", str(garbage)]) == 1
    out, err = capsys.readouterr()
    first = out.splitlines()[0]
    assert first.startswith("fail  database") and "cannot be read as SQLite" in first and "fix:" in first
    assert "warn  audit chain        not checked" in out and err.strip() == "1 check(s) failed, 1 warning(s)"
    assert main(["doctor", "--json", "--db", str(tmp_path / "missing.db")]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["status"] == "fail" and "no database at" in rows[0]["message"]
    assert "STOCKYARD_DB" in rows[0]["fix"]
    assert not (tmp_path / "missing.db").exists()


def test_tampered_chain(copy):
    sql(copy, "UPDATE audit_log SET actor = 'cli:someone' WHERE seq = 1")
    found = checks(copy)
    assert status_of(found, "audit chain") == "fail"
    assert "entry 1 was altered" in found["audit chain"][0][1] and found["audit chain"][0][2]


def test_secret_missing_or_wrong(copy):
    missing = checks(copy, {"OPENAI_API_KEY": OPENAI_KEY})
    assert status_of(missing, "encryption secret") == "fail"
    assert "audit chain is keyed" in missing["encryption secret"][0][1]
    assert status_of(missing, "audit chain") == "fail"
    wrong = checks(copy, {**HEALTHY_ENV, "STOCKYARD_ENCRYPTION_KEY": "some-other-secret-0123456789"})
    assert status_of(wrong, "encryption secret") == "fail"
    assert "does not match this database" in wrong["encryption secret"][0][1]
    short = checks(copy, {**HEALTHY_ENV, "STOCKYARD_ENCRYPTION_KEY": "short"})
    assert status_of(short, "encryption secret") == "fail"  # a different secret: fail beats warn
    sql(copy, "DELETE FROM audit_log")
    sql(copy, "DELETE FROM meta WHERE key = 'vault_salt'")
    short = checks(copy, {**HEALTHY_ENV, "STOCKYARD_ENCRYPTION_KEY": "short"})
    assert short["encryption secret"][0][0] == "warn" and "only 5 characters" in short["encryption secret"][0][1]


def test_fresh_database_without_secret_only_warns(tmp_path):
    path = tmp_path / "fresh.db"
    db.open_and_migrate(path)[0].close()
    found = checks(path, {"OPENAI_API_KEY": OPENAI_KEY})
    assert (
        status_of(found, "encryption secret") == "warn"
        and "STOCKYARD_ENCRYPTION_KEY=" in found["encryption secret"][0][2]
    )
    assert all(status_of(found, name) != "fail" for name in found)


def test_schema_newer_than_code(copy):
    sql(copy, "INSERT INTO schema_migrations VALUES (9999, 'future', 'x', '2030-01-01')")
    found = checks(copy)
    assert status_of(found, "schema") == "fail" and "newer than this Stockyard" in found["schema"][0][1]


def test_listen_address(copy):
    exposed = checks(copy, {**HEALTHY_ENV, "STOCKYARD_HOST": "0.0.0.0"})
    assert status_of(exposed, "listen address") == "fail"
    assert "STOCKYARD_ADMIN_KEY" in exposed["listen address"][0][2]
    flagged = checks(copy, host="0.0.0.0")
    assert status_of(flagged, "listen address") == "fail"
    keyed = checks(copy, {**HEALTHY_ENV, "STOCKYARD_HOST": "0.0.0.0", "STOCKYARD_ADMIN_KEY": "admin-0123456789abcdef"})
    assert status_of(keyed, "listen address") == "ok"
    assert status_of(checks(copy, {**HEALTHY_ENV, "STOCKYARD_PORT": "http"}), "listen address") == "fail"


def test_providers(copy):
    none = checks(copy, {"STOCKYARD_ENCRYPTION_KEY": SECRET})
    assert status_of(none, "providers") == "warn" and "OPENAI_API_KEY" in none["providers"][0][2]
    bad_url = checks(copy, {**HEALTHY_ENV, "OPENAI_BASE_URL": "api.openai.com/v1"})
    assert status_of(bad_url, "providers") == "fail" and "not an http(s) URL" in bad_url["providers"][0][1]
    plain = checks(copy, {**HEALTHY_ENV, "OPENAI_BASE_URL": "http://proxy.example.com/v1"})
    assert status_of(plain, "providers") == "warn"


def test_stored_provider_keys_are_decrypted(copy):
    conn = db.connect(copy)
    salt = vault.read_salt(conn)
    token = vault.Vault(SECRET, salt).encrypt(UPSTREAM_KEY, vault.aad_for(1, "openai"))
    conn.execute(
        "INSERT INTO providers (id, name, kind, base_url, key_token, key_hint, created_at, updated_at) "
        "VALUES (1, 'openai', 'openai', 'https://api.openai.com/v1', ?, '…abcd', 'now', 'now')",
        (token,),
    )
    conn.close()
    found = checks(copy)
    assert found["encryption secret"] == [("ok", "set; decrypts all 1 stored provider key(s)", "")]
    sql(copy, "UPDATE providers SET name = 'groq'")  # the ciphertext no longer belongs to this row
    moved = checks(copy)
    assert status_of(moved, "encryption secret") == "fail"
    assert "provider 'groq'" in moved["encryption secret"][0][1]
    without = checks(copy, {"OPENAI_API_KEY": OPENAI_KEY})
    assert "1 stored provider key(s)" in without["encryption secret"][0][1]
    assert UPSTREAM_KEY not in json.dumps([moved, without])

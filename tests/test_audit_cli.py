"""``stockyard audit`` against chains a keyed server wrote: verify catches every kind of tampering,
concurrent writers from the API and the CLI leave one chain, and the CLI is pleasant to use."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ServerProcess, base_env, database_arg, open_database, served, wait_for

from stockyard import audit
from stockyard.cli import build_parser, main
from stockyard.store import db

ADMIN_KEY = "audit-cli-admin-key-0123456789abcdef"
SECRET = "audit-cli-test-secret-0123456789abcdef"
NOTES = 6
START = len(db.available_migrations()) + 1  # one migration.apply each, then server.start
REPO = Path(__file__).resolve().parents[1]


def api_note(server: ServerProcess, text: str) -> dict:
    status, _, body = server.request(
        "POST", "/api/audit/note", {"note": text}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert status == 201, body
    return json.loads(body)


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, tmp_path_factory) -> ServerProcess:
    env = {**base_env(cache_home), "STOCKYARD_ADMIN_KEY": ADMIN_KEY, "STOCKYARD_ENCRYPTION_KEY": SECRET}
    with served(pyz_path, tmp_path_factory, "audit-cli", env) as srv:
        yield srv


@pytest.fixture(scope="module")
def template(server, tmp_path_factory) -> Path:
    """A consistent copy of a keyed chain: migration, server start, NOTES notes."""
    for i in range(NOTES):
        api_note(server, f"template note {i}")
    dest = tmp_path_factory.mktemp("template") / "chain.db"
    made = server.cli("backup", str(dest))  # an SQLite file, whichever store the server runs on
    assert made.returncode == 0, made.stderr
    return dest


@pytest.fixture
def chain(template, tmp_path) -> Path:
    path = tmp_path / "chain.db"
    path.write_bytes(template.read_bytes())
    return path


def run(
    pyz: Path,
    *args: str,
    db_path: Path | None = None,
    secret: str | None = SECRET,
    env: dict | None = None,
    cache_home: Path,
) -> subprocess.CompletedProcess:
    """The real thing: ``python stockyard.pyz ARGS --db PATH`` in a fresh process."""
    full_env = {**base_env(cache_home), **(env or {})}
    if secret:
        full_env["STOCKYARD_ENCRYPTION_KEY"] = secret
    cmd = [sys.executable, str(pyz), *args] + (["--db", str(db_path)] if db_path else [])
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def cli(chain, monkeypatch, capsys):
    """``cli("audit", "verify")`` on this test's copy of the chain, in this process (fast).

    The same ``main`` the pyz runs; the environment is cleared of Stockyard variables so
    only what a test passes counts.
    """

    def invoke(
        *args: str, db_path: Path | None = chain, secret: str | None = SECRET, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        for name in ("STOCKYARD_DB", "STOCKYARD_ENCRYPTION_KEY", "STOCKYARD_ADMIN_KEY"):
            monkeypatch.delenv(name, raising=False)
        for name, value in {**(env or {}), **({"STOCKYARD_ENCRYPTION_KEY": secret} if secret else {})}.items():
            monkeypatch.setenv(name, value)
        argv = [*args] + (["--db", str(db_path)] if db_path else [])
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse refusals
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out, err)

    return invoke


def tamper(path: Path, sql: str, *args) -> None:
    """What anyone with the file and Python's sqlite3 module can do."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(sql, args)
    conn.close()


def rows(path: Path) -> dict[int, tuple]:
    conn = sqlite3.connect(path)
    try:
        return {r[0]: tuple(r) for r in conn.execute("SELECT * FROM audit_log ORDER BY seq")}
    finally:
        conn.close()


def assert_broken(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    line = proc.stdout.strip()
    assert line.startswith("audit log does NOT verify: ") and "\n" not in line
    for word in words:
        assert word in line, line
    assert "Traceback" not in proc.stderr


# --- verify on a fresh chain and after tampering ---------------------------------------------


def test_fresh_chain_verifies_and_head_matches(cli):
    total = NOTES + START
    head = cli("audit", "head")
    assert head.returncode == 0 and len(head.stdout.strip()) == 64
    ok = cli("audit", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip() == f"ok, {total} entries, head {head.stdout.strip()}"
    as_json = json.loads(cli("audit", "verify", "--json").stdout)
    assert as_json == {
        "ok": True,
        "count": total,
        "head": head.stdout.strip(),
        "broken_seq": None,
        "reason": ok.stdout.strip(),
    }
    assert json.loads(cli("audit", "head", "--json").stdout) == {"seq": total, "hash": head.stdout.strip()}


def test_edited_field_is_named(cli, chain):
    tamper(chain, 'UPDATE audit_log SET details = \'{"note":"nothing happened"}\' WHERE seq = 4')
    assert_broken(cli("audit", "verify"), "entry 4 was altered")
    result = json.loads(cli("audit", "verify", "--json").stdout)
    assert (result["ok"], result["broken_seq"], result["count"]) == (False, 4, 3)


def test_deleted_middle_entry_is_named(cli, chain):
    tamper(chain, "DELETE FROM audit_log WHERE seq = 5")
    assert_broken(cli("audit", "verify"), "entry 5 is missing")


def test_swapped_entries_are_named(cli, chain):
    r = rows(chain)
    cols = "ts = ?, actor = ?, action = ?, target = ?, details = ?, prev_hash = ?, hash = ?, mac = ?"
    tamper(chain, f"UPDATE audit_log SET {cols} WHERE seq = 3", *r[6][1:])
    tamper(chain, f"UPDATE audit_log SET {cols} WHERE seq = 6", *r[3][1:])
    assert_broken(cli("audit", "verify"), "entry 3 ")


def test_truncated_tail_needs_expect_head(cli, chain):
    published = cli("audit", "head").stdout.strip()
    assert cli("audit", "verify", "--expect-head", published).returncode == 0
    tamper(chain, "DELETE FROM audit_log WHERE seq > 5")
    assert cli("audit", "verify").returncode == 0  # a shorter chain is still a chain...
    assert_broken(cli("audit", "verify", "--expect-head", published), "expected head not found", "truncated")


def _recompute_unkeyed(path: Path) -> None:
    """Edit entry 3, then rebuild every hash as plain sha256: all one can do without the secret."""
    tamper(path, "UPDATE audit_log SET actor = 'cli:innocent' WHERE seq = 3")
    prev = audit.GENESIS
    for seq, (_, ts, actor, action, target, details, _, _, _) in sorted(rows(path).items()):
        h = audit.entry_hash(seq, ts, actor, action, target, details, prev, "sha256", None)
        tamper(path, "UPDATE audit_log SET prev_hash = ?, hash = ?, mac = 'sha256' WHERE seq = ?", prev, h, seq)
        prev = h


def test_chain_recomputed_without_the_key_is_caught(cli, chain):
    _recompute_unkeyed(chain)
    assert cli("audit", "verify", secret=None).returncode == 0  # why the secret matters
    assert_broken(cli("audit", "verify"), "not keyed", "rewritten without the secret")
    tamper(chain, "DELETE FROM meta WHERE key = 'vault_salt'")  # ...and hiding that it was keyed
    assert_broken(cli("audit", "verify"), "no vault salt")


def test_wrong_or_missing_secret(cli):
    assert_broken(
        cli("audit", "verify", secret="another-secret-0123456789abcdef"),
        "entry 1 is keyed with a different STOCKYARD_ENCRYPTION_KEY",
    )
    assert_broken(cli("audit", "verify", secret=None), "set STOCKYARD_ENCRYPTION_KEY")
    refused = cli("audit", "note", "no secret here", secret=None)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "STOCKYARD_ENCRYPTION_KEY" in refused.stderr


# --- list, export, note --------------------------------------------------------------------------


def test_list_export_and_note(cli, chain):
    listed = [json.loads(line) for line in cli("audit", "list", "--json").stdout.splitlines()]
    assert [e["seq"] for e in listed] == list(range(1, NOTES + START + 1))
    assert listed[START - 1]["action"] == "server.start" and listed[START]["details"] == {"note": "template note 0"}
    last_two = cli("audit", "list", "--limit", "2", "--json").stdout.splitlines()
    assert [json.loads(line)["seq"] for line in last_two] == [NOTES + START - 1, NOTES + START]
    assert cli("audit", "list", "--since", "2999-01-01", "--json").stdout == ""
    assert len(cli("audit", "list", "--since", "2000-01-01T00:00:00Z", "--json").stdout.splitlines()) == NOTES + START
    notes_only = cli("audit", "list", "--action", "audit.note", "--json").stdout.splitlines()
    assert len(notes_only) == NOTES
    table = cli("audit", "list", "--limit", "1").stdout.splitlines()
    assert table[0].split() == ["SEQ", "TIME", "(UTC)", "ACTOR", "ACTION", "TARGET", "DETAILS"]
    assert '{"note":"template note 5"}' in table[1] and "admin-api:127.0.0.1" in table[1]

    noted = cli("audit", "note", "maintenance window: upgrading the host")
    assert noted.returncode == 0 and noted.stdout.startswith(f"noted as entry {NOTES + START + 1}, head ")
    export = cli("audit", "export", "--csv")
    assert export.returncode == 0
    parsed = list(csv.reader(io.StringIO(export.stdout)))
    assert parsed[0] == ["seq", "ts", "actor", "action", "target", "details", "prev_hash", "hash", "mac"]
    assert len(parsed) == NOTES + START + 2 and parsed[-1][3] == "audit.note" and parsed[-1][4] == "audit_log"
    assert parsed[-1][2].startswith("cli:")
    assert cli("audit", "verify").returncode == 0


# --- one chain from the API and the CLI at once ----------------------------------------------------

CLI_WORKER = """
import sys
from stockyard.cli import main
db, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()  # start together with the API threads
for i in range(count):
    if main(["audit", "note", f"concurrent cli {name}.{i}", "--db", db]) != 0:
        sys.exit(1)
"""


def test_concurrent_api_and_cli_notes_leave_one_chain(server, cache_home):
    """Two API client threads and two CLI processes add notes at once: one chain, nothing lost."""
    per_thread, per_cli = 15, 10
    start_seq = server.db_rows("SELECT MAX(seq) AS seq FROM audit_log")[0]["seq"]
    env = {**base_env(cache_home), "STOCKYARD_ENCRYPTION_KEY": SECRET, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLI_WORKER, database_arg(server.db), str(n), str(per_cli)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
    errors: list[BaseException] = []
    go = threading.Barrier(2)

    def cli_wrote() -> bool:
        query = "SELECT count(*) AS n FROM audit_log WHERE seq > ? AND actor LIKE 'cli:%'"
        return server.db_rows(query, (start_seq,))[0]["n"] > 0

    def api_writer(n: int) -> None:
        try:
            go.wait()
            for i in range(per_thread):
                api_note(server, f"concurrent api {n}.{i}")
                if i == 0:  # the rest only once a CLI note is in (a CLI process starts slower)
                    wait_for(cli_wrote, 60, "a CLI note")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=api_writer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.close()
    for t in threads:
        t.join()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert not errors, errors

    added = 2 * per_thread + 2 * per_cli
    verified = server.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout
    assert verified.stdout.startswith(f"ok, {start_seq + added} entries, head ")
    status, _, body = server.request("GET", "/api/audit/verify", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert status == 200 and json.loads(body)["ok"] is True
    notes = server.db_rows("SELECT actor, details FROM audit_log WHERE seq > ? ORDER BY seq", (start_seq,))
    texts = [json.loads(n["details"])["note"] for n in notes]
    assert sorted(texts) == sorted(
        [f"concurrent api {n}.{i}" for n in range(2) for i in range(per_thread)]
        + [f"concurrent cli {n}.{i}" for n in range(2) for i in range(per_cli)]
    )
    kinds = [n["actor"].split(":")[0] for n in notes]
    assert sum(a != b for a, b in zip(kinds, kinds[1:])) >= 2  # API and CLI writes really interleaved


# --- the command line itself -----------------------------------------------------------------------


def _all_parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, prefix + (name,))


@pytest.mark.parametrize("command", [p for p, _ in _all_parsers(build_parser())], ids=" ".join)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: stockyard") and len(out.splitlines()) >= 4
    parser = dict(_all_parsers(build_parser()))[command]
    assert parser.description, f"`stockyard {' '.join(command)}` needs a description"
    leaf = not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    if command and command[0] != "version" and leaf:
        assert "--db PATH" in out  # every command that touches the database takes --db


def test_errors_are_one_line(cli, pyz_path, cache_home, tmp_path):
    missing = tmp_path / "nowhere" / "stockyard.db"
    cases = [
        (("audit", "verify"), missing, "there is no database at"),
        (("audit", "list", "--since", "yesterday"), None, "ISO date"),
        (("audit", "verify", "--expect-head", "abc"), None, "64 lowercase hex"),
        (("audit", "note", "key is sk-live-abcdefghijklmnop"), None, "must not contain a secret"),
        (("traces",), missing, "there is no database at"),
        (("reload",), missing, "there is no database at"),
    ]
    for args, path, words in cases:
        proc = cli(*args, **({"db_path": path} if path else {}))
        assert proc.returncode in (1, 2), (args, proc.stderr)
        assert proc.stderr.startswith("stockyard: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert words in proc.stderr and "Traceback" not in proc.stderr
        assert "sk-live-abcdefghijklmnop" not in proc.stderr
    assert not missing.exists()
    # and the same from the real pyz
    proc = run(pyz_path, "audit", "verify", db_path=missing, cache_home=cache_home)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"stockyard: nothing yet: there is no database at {missing}; ")


def test_stockyard_db_variable_works_like_db(cli, chain):
    by_env = cli("audit", "head", db_path=None, env={"STOCKYARD_DB": str(chain)})
    by_flag = cli("audit", "head")
    assert by_env.returncode == 0 and by_env.stdout == by_flag.stdout and len(by_env.stdout.strip()) == 64


def _recompute_live_unkeyed(db_path: Path) -> None:
    """``_recompute_unkeyed`` on a live database, whichever store it is on."""
    conn = open_database(db_path)
    try:
        conn.execute("BEGIN IMMEDIATE")  # a write transaction on either store (PostgreSQL's BEGIN here is read-only)
        found = conn.execute("SELECT seq, ts, actor, action, target, details FROM audit_log ORDER BY seq").fetchall()
        prev = audit.GENESIS
        for seq, ts, actor, action, target, details in (tuple(r) for r in found):
            actor = "cli:innocent" if seq == 3 else actor
            h = audit.entry_hash(seq, ts, actor, action, target, details, prev, audit.MAC_PLAIN, None)
            conn.execute(
                "UPDATE audit_log SET actor = ?, prev_hash = ?, hash = ?, mac = ? WHERE seq = ?",
                (actor, prev, h, audit.MAC_PLAIN, seq),
            )
            prev = h
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_a_chain_rewritten_without_the_secret_stays_broken_after_the_next_audited_event(pyz_path, cache_home, tmp_path):
    """A chain recomputed without the secret is caught, and must stay caught: the next audited event
    (here one anonymous request with a wrong admin key, audited as ``admin.auth_failed``) must not
    seal it with a keyed ``audit.keyed`` entry on a database that already had the secret."""
    env = {**base_env(cache_home), "STOCKYARD_ADMIN_KEY": ADMIN_KEY, "STOCKYARD_ENCRYPTION_KEY": SECRET}
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:

        def verify_api() -> dict:
            status, _, body = srv.request("GET", "/api/audit/verify", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            assert status == 200, body
            return json.loads(body)

        api_note(srv, "before the rewrite")
        assert verify_api()["ok"]
        _recompute_live_unkeyed(srv.db)
        assert not verify_api()["ok"]  # caught here...
        status, _, _ = srv.request("GET", "/api/status", headers={"Authorization": "Bearer not-the-admin-key"})
        assert status == 401
        result = verify_api()
        assert not result["ok"], f"the forged chain now verifies: {result['reason']}"
        assert "not keyed" in result["reason"]
        refused = srv.cli("audit", "note", "after the rewrite")
        assert refused.returncode == 1 and "rewritten without" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        srv.stop()

"""Review 41 of the last stop's changes, as an attacker and as an accountant: batches refused at the
request that passes what a budget has left (``Ledger.tightest``, ``App.batch_room``), the stop
signals' handlers, a new database's schema in one transaction.

Each test here failed before the fix it names (its docstring says what was)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import clirun
import pytest
from conftest import ServerProcess, base_env, mock_env, wait_for
from mock_upstream import Reply
from openai import RateLimitError

from stockyard.budgets import Budget, BudgetExceeded, Ledger, unspent_of
from stockyard.store import db

DAY_MS = 86_400_000
MIDNIGHT = 20_000 * DAY_MS  # a UTC midnight


# -- in process: the ledger ------------------------------------------------------------------------
@pytest.mark.parametrize("read", ["used_up", "tightest"])
def test_a_budgets_state_read_across_midnight_is_never_a_key_error(read):
    """Was: ``used_up`` (asked before every budgeted request's hold) and ``tightest`` (a batch's room)
    looked their period up after loading it without checking it was still there, while a request
    stamped just past midnight dropped the period of one stamped just before (``_ensure`` forgets a
    scope's idle periods as it loads a new one): a KeyError, a 500, for requests around midnight.
    Now they load it again, as ``reserve`` did."""
    budget = Budget("key:k", "key 'k'", 1000, "day")
    ledger = Ledger(lambda b, key: 0)
    failures: list[BaseException] = []
    done = threading.Event()

    def ask(ts_ms: int) -> None:
        ends = time.monotonic() + 2  # before, a KeyError came after 2 to 13,000 reads (in under 0.5 s)
        while time.monotonic() < ends and not done.is_set():
            try:
                found = getattr(ledger, read)([budget], ts_ms)
            except BaseException as exc:  # the failure itself is what is counted
                failures.append(exc)
                done.set()
                return
            if not (read == "used_up" and found is None or found is not None and found.spent == 0):
                failures.append(AssertionError(found))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads take turns often
    try:
        threads = [threading.Thread(target=ask, args=(ts,)) for ts in (MIDNIGHT - 1, MIDNIGHT + 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not failures, failures[:1]


def test_what_a_batch_is_refused_early_past_is_never_less_than_a_reservation_may_take():
    """Checked: with a key, a project and a daily and a monthly window, holds outstanding, what a
    batch is refused early past (``unspent_of(tightest)``) is never less than what a reservation may
    take (a false 429), and with no holds it is exactly that: a budget reached exactly passes, one
    micro-cent more is refused, by the budget ``tightest`` named."""
    budgets = [Budget("key:k", "key 'k'", 10_000, "day"), Budget("project:p", "project 'p'", 50_000, "month")]
    ledger = Ledger(lambda b, key: {"key:k": 1_000, "project:p": 45_000}[b.scope])
    ts = MIDNIGHT + 5
    held = ledger.reserve(budgets, 1_500, ts)  # the project: 5,000 unspent, 3,500 beside the hold
    tight = ledger.tightest(budgets, ts)
    assert tight is not None and tight.budget.scope == "project:p"
    beside_holds = unspent_of(tight) - tight.reserved
    assert (unspent_of(tight), beside_holds) == (5_000, 3_500)
    with pytest.raises(BudgetExceeded):
        ledger.reserve(budgets, beside_holds + 1, ts)
    ledger.settle(held, 0, (), ts)  # the hold ends: what is unspent is what a reservation may take
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve(budgets, unspent_of(tight) + 1, ts)
    assert refused.value.budget.scope == "project:p"
    ledger.settle(ledger.reserve(budgets, unspent_of(tight), ts), 0, (), ts)  # exactly what is left: taken


# -- end to end: an OpenAI batch file read while a hold ends ---------------------------------------
@pytest.fixture(scope="module", params=[[], ["--workers", "2"]], ids=["one process", "a group of 2"])
def server(request, pyz_path, cache_home, mock, tmp_path_factory):
    """A server whose keys have $0.05 a day; also a group, whose budgets its parent holds (``RemoteLedger``)."""
    srv = ServerProcess(
        pyz_path, tmp_path_factory.mktemp("review41") / "stockyard.db", mock_env(cache_home, mock), request.param
    )
    day = ["--budget-usd", "0.05", "--budget-period", "day"]
    srv.keys = srv.create_keys({"waiter": day, "fresh": day, "held": day})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def batch_line(custom_id: str, max_tokens: int) -> bytes:
    line = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens},
    }
    return (json.dumps(line) + "\n").encode()


def unread_from(port: int) -> int:
    """Bytes the kernel holds for this machine's client sockets connected to ``port`` that their
    process has not read yet (``/proc/net/tcp``'s rx_queue)."""
    total = 0
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        if int(fields[2].rsplit(":", 1)[1], 16) == port:
            total += int(fields[4].split(":")[1], 16)
    return total


def test_a_batch_file_that_fits_once_a_hold_ends_during_its_read_is_not_refused(server, mock):
    """Was: what the budget had left was read once, when the batch file's answer began, and every
    line was compared with that: a hold of a request in flight then that ended while the file was
    read still refused the batch at its line (429 'may cost at least'), though the reservation after
    the read had room for it — a false 429. Now what is left is read again before a refusal."""
    waiter = server.openai("waiter")
    padding = b"\n" * 40_000  # blank lines (not priced): more than a read of the headers takes with them
    first, second = batch_line("a", 1000), batch_line("b", 7000)  # ~$0.005 + ~$0.035 at the batch price
    source = waiter.files.create(file=("in.jsonl", io.BytesIO(first + padding + second)), purpose="user_data")
    mock.clear()
    # a request in flight holds ~$0.02 of the $0.05: ~$0.03 left, less than the batch's ~$0.04
    chat_done, chat_held = threading.Event(), threading.Event()
    mock.enqueue(Reply(held=chat_done, hang_started=chat_held))
    answers: list[tuple[int, dict, bytes]] = []
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000}
    chat = threading.Thread(
        target=lambda: answers.append(server.request("POST", "/v1/chat/completions", body, server.auth("waiter")))
    )
    chat.start()
    assert chat_held.wait(10)
    # the file's content: the first line and the padding, then a pause until the hold has ended
    rest, first_sent = threading.Event(), threading.Event()
    mock.enqueue(Reply(held=rest, held_after=len(first + padding), hang_started=first_sent))
    created: list[object] = []

    def create() -> None:
        try:
            created.append(
                waiter.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
            )
        except Exception as exc:  # the answer is what is checked
            created.append(exc)

    batch = threading.Thread(target=create)
    batch.start()
    try:
        assert first_sent.wait(10)
        # the server read the padding, so it read the room first (the read begins after it)
        wait_for(lambda: unread_from(mock.port) == 0, what="the server reading the file's first part")
        chat_done.set()
        chat.join(30)
        status, headers, _ = answers[0]
        assert status == 200
        server.trace(headers["x-stockyard-trace-id"])  # its hold ended (settled before the trace)
    finally:
        chat_done.set()
        rest.set()
        batch.join(30)
    assert len(created) == 1 and not isinstance(created[0], Exception), created
    assert [r for r in mock.requests if r.method == "POST" and r.path == "/v1/batches"]


def test_a_batch_past_what_is_left_after_a_second_read_is_still_refused(server, mock):
    """The second read is no way past the budget: a file whose lines pass what is left with nothing
    held is the same 429 at the line that passes it, naming only the key's own budget."""
    fresh = server.openai("fresh")
    lines = batch_line("a", 8000) + batch_line("b", 8000)  # ~$0.04 each: past the $0.05
    source = fresh.files.create(file=("in.jsonl", io.BytesIO(lines)), purpose="user_data")
    mock.clear()
    with pytest.raises(RateLimitError) as err:
        fresh.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert err.value.code == "budget_exceeded" and "key 'fresh' budget of $0.05" in err.value.message
    assert "$0.00 spent, and" in err.value.message and "waiter" not in err.value.message
    assert "may cost at least $0.0" in err.value.message and "its first 2 requests alone" in err.value.message
    assert not [r for r in mock.requests if r.method == "POST" and r.path == "/v1/batches"]


def test_a_batch_that_can_never_fit_is_not_told_to_retry_because_of_holds_in_flight(server, mock):
    """Was: a batch was refused at the request whose running worst case passed what was left beside
    the holds in flight, and the 429 said only those holds stood in the way (``Retry-After: 1``,
    retried at once by the OpenAI and Anthropic SDKs) whenever that part alone fitted beside the
    spend — though the whole batch did not fit the budget at all: each retry read and priced it again,
    to the same 429. Now a batch is refused early only at the request past what the budget has left
    beside its spend (no hold's end can make room for it): a 429 that says not to retry; one that
    fits but for holds is priced whole and the reservation decides it, as before."""
    held = server.openai("held")
    lines = batch_line("a", 1000) + batch_line("b", 7000) + batch_line("c", 8000)  # ~$0.005, $0.04, $0.08
    source = held.files.create(file=("in.jsonl", io.BytesIO(lines)), purpose="user_data")
    chat_done, chat_held = threading.Event(), threading.Event()
    mock.enqueue(Reply(held=chat_done, hang_started=chat_held))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000}
    chat = threading.Thread(target=lambda: server.request("POST", "/v1/chat/completions", body, server.auth("held")))
    chat.start()
    try:
        assert chat_held.wait(10)  # ~$0.02 held of the $0.05: ~$0.03 left beside it
        with pytest.raises(RateLimitError) as err:
            held.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    finally:
        chat_done.set()
        chat.join(30)
    headers = err.value.response.headers
    assert headers.get("x-should-retry") == "false" and headers.get("retry-after") != "1", dict(headers)
    assert "its first 3 requests alone" in err.value.message, err.value.message


# -- a new database killed while it is made --------------------------------------------------------
def syscalls_of(pyz: Path, args: list[str], env: dict, names: str, log: Path) -> list[str]:
    """The calls ``names`` (strace's ``trace=``) a run of ``python3 stockyard.pyz ARGS`` makes, in order."""
    cmd = ["strace", "-f", "-o", str(log), "-e", f"trace={names}", sys.executable, str(pyz), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [line.split(None, 1)[1] for line in log.read_text().splitlines() if "(" in line and "resumed" not in line]


def test_a_command_killed_while_it_makes_a_new_database_leaves_the_next_command_working(pyz_path, cache_home, tmp_path):
    """Was: a new database is written with a rollback journal until ``db.connect`` makes it WAL (its
    page size, then the switch); a first ``keys create`` killed there (at the journal's sync: strace's
    SIGKILL, the same point every run) left a hot journal, and every later command's read-only look
    at the file (``_needs_upgrade``, ``migrate --check``) failed with "attempt to write a readonly
    database" until a server started and rolled it back. Now a read-only open rolls it back first."""
    env = base_env(cache_home)
    probe = tmp_path / "probe" / "s.db"
    calls = syscalls_of(
        pyz_path, ["keys", "create", "--name", "a", "--db", str(probe)], env, "openat,fdatasync", tmp_path / "log"
    )
    journal = next(i for i, call in enumerate(calls) if call.startswith("openat(") and "s.db-journal" in call)
    syncs = [i for i, call in enumerate(calls) if call.startswith("fdatasync(")]
    first = sum(1 for i in syncs if i < journal) + 1  # the journal's first sync (before the file is changed)
    tried = 0
    for nth in range(first, first + 8):  # each sync while the file is written in rollback mode
        path = tmp_path / f"killed-{nth}" / "s.db"
        cmd = [
            "strace",
            "-f",
            "-o",
            "/dev/null",
            "-e",
            "trace=fdatasync",
            "-e",
            f"inject=fdatasync:signal=KILL:when={nth}",
        ]
        done = subprocess.run(
            [*cmd, sys.executable, str(pyz_path), "keys", "create", "--name", "a", "--db", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != -9 or not path.with_name("s.db-journal").exists():
            continue
        tried += 1
        again = clirun.run(pyz_path, ["keys", "create", "--name", "b", "--db", str(path)], env)
        assert again.returncode == 0, (nth, again.stderr)
        check = clirun.run(pyz_path, ["migrate", "--check", "--db", str(path)], env)
        assert check.returncode == 0, (nth, check.stderr)
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
    assert tried >= 2, "no kill left a journal behind"


# -- stop signals ----------------------------------------------------------------------------------
# Only the traced call stops the process (seccomp-bpf): a full trace stops it at every system call,
# which on a loaded machine took the group's start past the waits below.
STRACE = ["strace", "-f", "--seccomp-bpf", "-o", "/dev/null", "-e", "trace=getrandom"]


def strace_works() -> bool:
    """Whether this machine lets a process trace its child (ptrace may be off in a container)."""
    if not shutil.which("strace"):
        return False
    return subprocess.run([*STRACE, "true"], capture_output=True).returncode == 0


def children_of(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def the_server_under(tracer: int, pyz_path: Path) -> int | None:
    """The traced server: strace's child running the pyz, not one of the short-lived children strace
    forks first to probe what ptrace can do (on a loaded machine the first child seen was one)."""
    for child in children_of(tracer):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [sys.executable.encode(), str(pyz_path).encode()]:  # a probe's is strace's own
            return child
    return None


@pytest.mark.skipif(not strace_works(), reason="needs strace (ptrace) to hold a worker as it is forked")
def test_a_stop_signal_sent_as_a_worker_is_forked_stops_the_group_at_once(pyz_path, cache_home, tmp_path):
    """Was: a group's worker kept its parent's stop handler from ``fork`` until it put the signals
    back to their default action; a SIGTERM sent then — the parent stopping as it forks a worker, at
    start-up or replacing one that died — ran the parent's handler in the worker ('stopping 0
    workers') and was lost: the worker went on to serve, and the group's stop waited for its kill a
    minute later (exit 1, 'did not stop: killing it'). The window is held open here by strace, which
    delays each process's first ``getrandom``: a forked worker's is ``random``'s reseed after fork.
    Now the stop signals wait (blocked) while a worker is forked: it ends at once, before serving."""
    env = {**base_env(cache_home), "STOCKYARD_SHUTDOWN_GRACE": "2s"}
    delay = ["-e", "inject=getrandom:delay_enter=1500000:when=1"]
    args = ["serve", "--db", str(tmp_path / "s.db"), "--port", "0", "--workers", "2"]
    traced = subprocess.Popen(
        [*STRACE, *delay, sys.executable, str(pyz_path), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    parent = None
    try:
        parent = wait_for(lambda: the_server_under(traced.pid, pyz_path), 60, "the group's parent")
        forked = wait_for(lambda: children_of(parent) or traced.poll() is not None, 60, "its first worker")
        assert forked is not True, traced.communicate()[0]  # the group ended before it forked: why
        os.kill(parent, signal.SIGTERM)
        out, _ = traced.communicate(timeout=30)  # was: ~64 s
    finally:
        if traced.poll() is None:
            for pid in [*(children_of(parent) if parent is not None else []), *children_of(traced.pid)]:
                with contextlib.suppress(ProcessLookupError):  # it may end as it is killed
                    os.kill(pid, signal.SIGKILL)
            print(traced.communicate()[0][-3000:])  # what the group said, for the failure
    assert traced.returncode == 0, out
    assert "stopping 0 workers" not in out and "did not stop" not in out, out


@pytest.mark.parametrize("when", ["its second look at the schema", "its BEGIN"])
def test_two_processes_making_the_same_new_database_at_once_both_get_it(tmp_path, when):
    """Was: a second process making the same new file at once (a ``keys create`` beside a starting
    server; 2 of 6 tries of three first commands at once) ran migrations the first had made and
    failed with 'table meta already exists': it read what was pending, then the schema version —
    made meanwhile, so it took the file for an old one and applied the stale list one by one (after
    backing the new file up) — or it read both before the first committed, then waited at its
    ``BEGIN IMMEDIATE`` and ran the whole schema again. The first makes the schema whole at either
    point here (SQLite's statement trace of the second). Now the version is read first, and a new
    schema refused because another process made it is read again: nothing left to apply."""
    path = tmp_path / "new.db"
    first, second = db.connect(path), db.connect(path)
    made: list[list[db.Migration]] = []
    looks: list[str] = []

    def meanwhile(statement: str) -> None:
        if "sqlite_master" in statement:
            looks.append(statement)
        due = len(looks) == 2 if when == "its second look at the schema" else statement.upper().startswith("BEGIN")
        if due and not made:
            made.append(db.migrate(first))

    second.set_trace_callback(meanwhile)
    applied = db.migrate(second)
    second.set_trace_callback(None)
    assert made and [m.version for m in made[0]] == [m.version for m in db.available_migrations()]
    assert applied == []
    assert db.schema_version(second) == db.code_schema_version() and not db.pending_migrations(second)
    first.close()
    second.close()

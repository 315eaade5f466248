"""Budgets of every kind under concurrent traffic in every dialect (review 45).

Review 44 (``test_review44_race.py``) held a key's budget and rpm under OpenAI-dialect traffic. Here
three budgets count one seeded concurrent mix at once: a key's (``budgeted``), its project's (``p45``:
``budgeted`` and ``team``, a key of the project without a budget of its own) and an end user's (the
``userlimits`` module: ``u1``, named by ``x-stockyard-user`` by ``budgeted`` and by ``solo``, a key with
no budget). Clients send raw HTTP in the OpenAI (``/v1/chat/completions``), Anthropic (``/v1/messages``)
and Gemini (``/v1beta/models/…:generateContent`` / ``:streamGenerateContent?alt=sse``) dialects: whole
answers and streams, streams the provider cuts after two events, whole answers it cuts inside the body,
provider errors (500, Anthropic's 529), streams the client leaves after the first event, and background
responses (``background: true`` on ``/v1/responses``: held at their worst case from the create until the
retrieve that sees them completed bills them). The mock chooses each request's fault by the words of
its body (``reply_for``), so the mix does not depend on which request reaches it first. Run on one
process, a ``--workers 2`` group (the parent's ledger) and two replicas on one PostgreSQL database
(the shared ledger), about 35 s for the whole file.

The bound, for each budget B of limit L_B: the cost of the traces B counts is at most L_B plus the
largest amount by which one answer in flight when B was crossed cost more than B held for it. In this
mix that amount is 0: the mock bills at most each request's cap (20 output tokens) and 12 prompt
tokens; a cut or unanswered attempt is billed its input estimate, which the hold counted, and the text
it relayed at most up to the cap (``estimate.relayed_at_most``); a background response is billed its
reported usage, at most its hold. So each budget's traces sum to at most L_B exactly, and any excess is
a hold that did not cover its answer or a request admitted past the limit. Then, when everything settled:

- each budget's ledger spend (read from a refusal of a request too large for any budget, which names
  the budget, its spend and what requests in flight hold) equals the sum of the ``cost_uc`` of the
  traces it counts, exactly (the key's: its traces; the project's: its keys'; the user's: every trace
  naming ``u1``), and nothing is held;
- each budget refused something (the mix reached all three);
- every request a client sent has its trace id; each answered one has exactly one root trace row,
  refused ones too unless only counted (``key_refusals_unrecorded_total``); each background response
  started is billed once (one ``responses.usage`` row).

After it, three money leftovers, each a test that failed before its fix: a batch started without a hold
when a budget was set while its input file was read; a cut Gemini stream billed the larger of its
thoughts and its text, not their sum; a cut streamed transcription billed its text past its hold.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import pytest
from conftest import ServerProcess, mock_env, wait_for
from mock_upstream import MockUpstream, Recorded, Reply
from race_helpers import deployed, leave, ledger_in, rows_of, unrecorded

ADMIN = "admin-key-for-review45-race-0123456789"
SEED = int(os.environ.get("R45_SEED", "1"))
CAP = 20  # every request's output cap (the worst case's output)
KEY_UC, PROJECT_UC, USER_UC = 40_000, 110_000, 95_000  # each crossed in turn, the key's first
PROJECT, USER = "p45", "u1"
CLIENTS = {"budgeted": 4, "team": 4, "solo": 3}  # concurrent clients of each key
EACH = 12  # requests each client sends
PRICES = {"gpt-race": ("1", "2"), "claude-race": ("1", "2"), "gemini-race": ("1", "2")}  # 100 µ¢ in, 200 out
DIALECTS = ("openai", "anthropic", "gemini")
FAULTS = ("plain", "stream", "cut_stream", "cut_plain", "error", "leave")
KINDS = [f"{dialect}_{fault}" for dialect in DIALECTS for fault in FAULTS] + ["background"]
STREAMED = ("stream", "cut_stream", "leave")
REFUSALS = ("budget_exceeded", "rate_limit_exceeded")


def reply_for(req: Recorded) -> Reply | None:
    """The mock's behaviour for one request, from the ``do=…`` word its body carries."""
    found = re.search(rb"do=(\w+)", req.body)
    fault = found.group(1).decode().partition("_")[2] if found else ""  # openai_cut_stream: cut_stream
    if fault in ("plain", "stream"):
        return Reply(hang_s=0.05)  # in flight together with the others
    if fault == "cut_stream":
        return Reply(cut_after=2)
    if fault == "cut_plain":
        return Reply(cut_after=30)  # the head and 30 bytes of the body
    if fault == "error":
        return Reply(status=529 if req.path.endswith("/v1/messages") else 500)
    if fault == "leave":
        return Reply(sse_delay_ms=40)  # paced, so the client is gone before the end
    return None


@dataclass
class Sent:
    """One request a client sent and what came back."""

    key: str
    kind: str
    status: int
    trace_id: str | None
    code: str | None  # the code of Stockyard's refusal, if it was one
    whose: str | None = None  # the budget a budget refusal names
    response_id: str | None = None  # a background response it started


# -- the deployments --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upstream() -> Iterator[MockUpstream]:
    """A mock of this file's own (its ``script`` would answer other files' requests)."""
    with MockUpstream() as mock:
        mock.script = reply_for
        yield mock


def env_of(cache_home: Path, upstream: MockUpstream) -> dict[str, str]:
    """OpenAI, Anthropic and Gemini all at the mock; no batch watch (the clients' retrieves bill)."""
    return mock_env(
        cache_home,
        upstream,
        ANTHROPIC_API_KEY="sk-ant-review45-0123456789abcdef",
        ANTHROPIC_BASE_URL=upstream.url,
        GEMINI_API_KEY="AIza-review45-0123456789abcdefGEMINI",
        GEMINI_BASE_URL=upstream.url,
        STOCKYARD_ADMIN_KEY=ADMIN,
        STOCKYARD_BATCH_POLL="off",
    )


def usd(uc: int) -> str:
    return f"{Decimal(uc) / 10**8:f}"


def prepare(server: ServerProcess) -> dict[str, str]:
    """Prices, the project's and the end users' budgets and the keys, by the CLI before the start:
    every worker starts with them. Returns the keys' secrets by name."""
    for model, (inp, out) in PRICES.items():
        done = server.cli("prices", "set", model, "--input", inp, "--output", out)
        assert done.returncode == 0, done.stderr
    done = server.cli("projects", "budget", PROJECT, "--budget-usd", usd(PROJECT_UC), "--period", "total")
    assert done.returncode == 0, done.stderr
    users = {"budget_usd": usd(USER_UC), "budget_period": "total"}
    assert server.cli("modules", "set", "userlimits", "--config", json.dumps(users)).returncode == 0
    assert server.cli("modules", "enable", "userlimits").returncode == 0
    budget = ["--budget-usd", usd(KEY_UC), "--budget-period", "total"]
    return server.create_keys(
        {
            "budgeted": ["--project", PROJECT, *budget],
            "team": ["--project", PROJECT],
            "solo": [],
            "probe_p": ["--project", PROJECT],  # reads the project's ledger
            "probe_u": [],  # reads the end user's
            "late": ["--project", "p45-late"],  # a project without a budget (yet)
        }
    )


@pytest.fixture(params=["process", "workers", "replicas"])
def deployment(request, pyz_path, cache_home, upstream, tmp_path) -> Iterator[list[ServerProcess]]:
    yield from deployed(request, pyz_path, env_of(cache_home, upstream), tmp_path, prepare)


@pytest.fixture(scope="module")
def alone(pyz_path, cache_home, upstream, tmp_path_factory) -> Iterator[ServerProcess]:
    """One process, prepared as the deployments are, for the leftovers."""
    server = ServerProcess(pyz_path, tmp_path_factory.mktemp("r45") / "stockyard.db", env_of(cache_home, upstream))
    server.keys = prepare(server)
    server.start()
    yield server
    server.stop()
    assert "Traceback" not in server.log, server.log[-3000:]


# -- the clients ------------------------------------------------------------------------------------
def request_of(kind: str, client: int, i: int, secret: str, user: str | None) -> tuple[str, dict[str, str], bytes]:
    """(path, headers, body) of one request of ``kind`` in its dialect."""
    words = f"r45 do={kind} c{client} i{i}"
    headers = {"x-stockyard-user": user} if user else {}
    if kind == "background":
        body: dict = {"model": "gpt-race", "input": words, "background": True, "max_output_tokens": CAP}
        return "/v1/responses", {**headers, "Authorization": f"Bearer {secret}"}, json.dumps(body).encode()
    dialect, _, fault = kind.partition("_")
    stream = fault in STREAMED
    if dialect == "openai":
        body = {"model": "gpt-race", "messages": [{"role": "user", "content": words}], "max_tokens": CAP}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return "/v1/chat/completions", {**headers, "Authorization": f"Bearer {secret}"}, json.dumps(body).encode()
    if dialect == "anthropic":
        body = {"model": "claude-race", "max_tokens": CAP, "messages": [{"role": "user", "content": words}]}
        body |= {"stream": True} if stream else {}
        headers |= {"x-api-key": secret, "anthropic-version": "2023-06-01"}
        return "/v1/messages", headers, json.dumps(body).encode()
    body = {"contents": [{"role": "user", "parts": [{"text": words}]}], "generationConfig": {"maxOutputTokens": CAP}}
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/v1beta/models/gemini-race:{method}", {**headers, "x-goog-api-key": secret}, json.dumps(body).encode()


def refusal_of(data: bytes) -> tuple[str | None, str | None]:
    """(code, whose budget) of Stockyard's refusal in any dialect's error shape: OpenAI's ``code``,
    Anthropic's ``details.error_code``, Google's ErrorInfo ``reason``."""
    try:
        error = json.loads(data).get("error")
    except (ValueError, AttributeError):
        return None, None
    if not isinstance(error, dict):
        return None, None
    codes = [error.get("code"), (error.get("details") or {}).get("error_code") if error.get("type") else None]
    codes += (
        [d.get("reason") for d in error.get("details") or [] if isinstance(d, dict)] if not error.get("type") else []
    )
    code = next((c for c in codes if isinstance(c, str) and c in REFUSALS), None)
    named = re.search(r"the (.+?) budget of", str(error.get("message", "")))
    return code, named.group(1) if code and named else None


def exchange(server: ServerProcess, method: str, path: str, headers: dict[str, str], body: bytes | None):
    """One request over a fresh connection: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **headers})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def send(server: ServerProcess, key: str, kind: str, client: int, i: int) -> list[Sent]:
    """One request of the mix; a background response started is retrieved twice (the mock runs it
    on a step a retrieve: in progress, then completed, which bills it)."""
    user = USER if key != "team" else None
    path, headers, payload = request_of(kind, client, i, server.secret(key), user)
    if kind.endswith("_leave"):
        status, answer, data = leave(server, path, headers, payload)
    else:
        status, answer, data = exchange(server, "POST", path, headers, payload)
    code, whose = refusal_of(data) if status >= 400 else (None, None)
    sent = [Sent(key, kind, status, answer.get("x-stockyard-trace-id"), code, whose)]
    if kind == "background" and status == 200:
        sent[0].response_id = json.loads(data)["id"]
        sent += retrieve(server, key, sent[0].response_id, 2)
    return sent


def retrieve(server: ServerProcess, key: str, response_id: str, times: int) -> list[Sent]:
    sent = []
    for _ in range(times):
        status, answer, data = exchange(server, "GET", f"/v1/responses/{response_id}", server.auth(key), None)
        sent.append(Sent(key, "background_retrieve", status, answer.get("x-stockyard-trace-id"), None))
        assert status == 200, data
    return sent


def traffic(servers: list[ServerProcess]) -> list[Sent]:
    """Every client's seeded mix at once, spread over the servers; what each request got."""
    plans = [(key, number) for key, count in CLIENTS.items() for number in range(count)]
    start = threading.Barrier(len(plans))

    def client(plan: tuple[str, int]) -> list[Sent]:
        key, number = plan
        rng = random.Random(f"{SEED}-{key}-{number}")
        start.wait()
        sent: list[Sent] = []
        for i in range(EACH):
            server = servers[(number + i) % len(servers)]
            sent += send(server, key, rng.choice(KINDS), number, i)
        return sent

    with ThreadPoolExecutor(max_workers=len(plans)) as pool:
        return [sent for each in pool.map(client, plans) for sent in each]


# -- what the servers say afterwards -------------------------------------------------------------
def ledger_of(server: ServerProcess, key: str, user: str | None = None) -> tuple[str, int, int]:
    """(whose, spent, held) of the budget that refuses ``key`` (naming ``user``) a request no
    budget admits (a cap of a million tokens)."""
    body = {"model": "gpt-race", "messages": [{"role": "user", "content": "r45 probe"}], "max_tokens": 1_000_000}
    headers = {**server.auth(key), **({"x-stockyard-user": user} if user else {})}
    status, _, data = server.request("POST", "/v1/chat/completions", body, headers)
    assert status == 429, data
    return ledger_in(json.loads(data)["error"]["message"])


def test_every_budget_holds_under_concurrent_traffic_in_every_dialect(deployment, upstream):
    servers = deployment
    ids = {r["name"]: r["id"] for r in servers[0].db_rows("SELECT id, name FROM client_keys")}
    wait_for(lambda: all(s.requires_keys() for s in servers), what="the keys on every server")
    sent = traffic(servers)
    started = [s.response_id for s in sent if s.response_id]
    for response_id in started:  # those not completed yet (or retrieved before the mock completed them)
        key = next(s.key for s in sent if s.response_id == response_id)

        def billed(response_id: str = response_id, key: str = key) -> bool:
            rows = servers[0].db_rows("SELECT billed FROM owned_objects WHERE id = ?", (response_id,))
            if rows and rows[0]["billed"] == 1:
                return True
            sent.extend(retrieve(servers[-1], key, response_id, 1))
            return False

        wait_for(billed, timeout=20, what=f"background response {response_id} billed")
    assert all(s.trace_id for s in sent), [s for s in sent if not s.trace_id]
    kinds_seen = {s.kind for s in sent}
    assert kinds_seen >= set(KINDS), set(KINDS) - kinds_seen
    # the provider's failures, passed on, never Stockyard's own
    failing = [s for s in sent if s.status >= 500 and not s.kind.endswith(("_error", "_cut_plain", "_cut_stream"))]
    assert not failing, failing
    assert not [s for s in sent if 400 <= s.status < 500 and s.code not in REFUSALS], sent

    refused = [s for s in sent if s.code in REFUSALS]
    answered = {s.trace_id for s in sent if s not in refused}
    everyone = {s.trace_id for s in sent}
    clients = [ids[key] for key in CLIENTS]

    def stored() -> list[dict] | None:
        """Every trace written: each answered request's, and the refusals not only counted."""
        rows = [r for key_id in clients for r in rows_of(servers[0], key_id)]
        roots = {r["id"] for r in rows if r["parent_id"] is None and r["endpoint"] != "responses.usage"}
        untraced = [s for s in refused if s.trace_id not in roots]
        return rows if answered <= roots and len(untraced) == unrecorded(servers, ADMIN) else None

    rows = wait_for(stored, timeout=20, what="every request traced, or its refusal counted")
    roots = [r["id"] for r in rows if r["parent_id"] is None and r["endpoint"] != "responses.usage"]
    assert len(roots) == len(set(roots)), "a request traced twice"
    assert set(roots) <= everyone, set(roots) - everyone  # nothing but what the clients sent
    assert len([r for r in rows if r["endpoint"] == "responses.usage"]) == len(started)  # each billed once

    def spent(where: str, args: tuple) -> int:
        found = servers[0].db_rows(f"SELECT COALESCE(SUM(cost_uc), 0) AS s FROM traces WHERE {where}", args)
        return found[0]["s"]

    budgets = {  # whose (as a refusal names it): (limit, the traces it counts, the probe that reads it)
        "key 'budgeted'": (KEY_UC, spent("key_id = ?", (ids["budgeted"],)), ("budgeted", None)),
        f"project '{PROJECT}'": (
            PROJECT_UC,
            spent("key_id IN (?, ?)", (ids["budgeted"], ids["team"])),
            ("probe_p", None),
        ),
        f"end user '{USER}'": (USER_UC, spent("end_user = ?", (USER,)), ("probe_u", USER)),
    }
    for whose, (limit, by_traces, (probe, user)) in budgets.items():
        for server in servers:

            def settled(server: ServerProcess = server, probe: str = probe, user: str | None = user):
                found = ledger_of(server, probe, user)
                return found if found[2] == 0 else None

            named, in_ledger, _ = wait_for(settled, what="every hold settled")
            assert named == whose, (named, whose)
            assert in_ledger == by_traces, (whose, in_ledger, by_traces, servers[0].log[-3000:])
        assert by_traces <= limit, (whose, by_traces, limit)
        assert [s for s in sent if s.whose == whose], f"the {whose} budget never refused: the test proves little"
    status, _, data = servers[-1].request(
        "GET", f"/api/keys/{ids['budgeted']}", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert status == 200 and json.loads(data)["spend_uc"] == budgets["key 'budgeted'"][1], data


@pytest.fixture
def group(pyz_path, cache_home, upstream, tmp_path) -> Iterator[ServerProcess]:
    """A ``--workers 2`` group, prepared as the deployments are."""
    server = ServerProcess(pyz_path, tmp_path / "stockyard.db", env_of(cache_home, upstream), ["--workers", "2"])
    server.keys = prepare(server)
    server.start()
    yield server
    server.stop()
    assert "Traceback" not in server.log, server.log[-3000:]


def test_a_background_response_is_found_by_the_next_retrieve_on_any_worker(group, upstream):
    """A background response's whole answer (``queued``) went out before its row was committed: the
    end of an answer waits for that commit where another process may take the next request, but a
    ``queued`` one was taken for a stream's ``response.created`` (its end to come). A client that
    retrieved it at once (the SDKs' polling) on the other worker got a 404 (found by the mix above,
    one run in three). Each of 16 retrieves, each at once on a new connection, finds it now."""
    secret = group.secret("solo")

    def create_and_retrieve(i: int) -> int:
        body = {"model": "gpt-race", "input": f"r45 at once {i}", "background": True, "max_output_tokens": CAP}
        status, _, data = exchange(
            group, "POST", "/v1/responses", {"Authorization": f"Bearer {secret}"}, json.dumps(body).encode()
        )
        assert status == 200, data
        status, _, data = exchange(
            group, "GET", f"/v1/responses/{json.loads(data)['id']}", {"Authorization": f"Bearer {secret}"}, None
        )
        return status

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(create_and_retrieve, range(16))) == [200] * 16


# -- the money leftovers ------------------------------------------------------------------------------
def test_a_budget_set_while_a_batch_is_read_holds_or_refuses_the_batch(alone, upstream):
    """A batch is priced while its input file is read only when a budget counts its key as the read
    begins (``App.batch_room``); its reservation then read the budgets again, found the project's
    budget set meanwhile, and reserved the worst case it had: 0 (not priced). The batch ran held at
    nothing (billed later, past the limit). Its input file held by the provider after its first byte,
    the project's budget set and seen by the server, then the file let go: the batch is refused
    (409 ``budget_changed``: send it again), and sent again it is priced and held."""
    sdk = alone.openai("late")
    line = {
        "custom_id": "late-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-race", "messages": [{"role": "user", "content": "r45 late"}], "max_tokens": CAP},
    }
    made = sdk.files.create(file=("b.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")), purpose="batch")
    gate, reading = threading.Event(), threading.Event()
    upstream.enqueue(Reply(held=gate, held_after=1, hang_started=reading))  # the input file's content
    body = {"input_file_id": made.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    with ThreadPoolExecutor(max_workers=1) as pool:
        created = pool.submit(alone.request, "POST", "/v1/batches", body, alone.auth("late"))
        assert reading.wait(10), "the batch's input file was never read"
        admin = {"Authorization": f"Bearer {ADMIN}"}
        status, _, data = alone.request(
            "PUT", "/api/projects/p45-late/budget", {"budget_usd": "1", "period": "total"}, admin
        )
        assert status == 200, data
        wait_for(lambda: ledger_of(alone, "late")[0] == "project 'p45-late'", what="the project's budget applied")
        gate.set()
        status, _, data = created.result(timeout=30)
    assert status == 409 and json.loads(data)["error"]["code"] == "budget_changed", data
    batch = sdk.batches.create(input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h")
    (held,) = alone.db_rows("SELECT held_uc FROM owned_objects WHERE id = ?", (batch.id,))
    assert held["held_uc"] > 0, held


def gemini_cut(thoughts: int, text: str, cap: int) -> list[str]:
    """A Gemini stream whose first chunk reports ``thoughts`` thought tokens (no output count yet,
    a thought summary), then ``text`` under the same count; the provider cuts it after those two."""
    usage = {"promptTokenCount": 12, "thoughtsTokenCount": thoughts, "totalTokenCount": 12 + thoughts}
    summary = {"content": {"parts": [{"text": "Thinking.", "thought": True}], "role": "model"}, "index": 0}
    answer = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    return [json.dumps({"candidates": [part], "usageMetadata": usage}) for part in (summary, answer)]


@pytest.mark.parametrize("cap", [2000, 1200])
def test_a_cut_gemini_stream_bills_its_thoughts_and_the_text_after_them(alone, upstream, cap):
    """A Gemini stream reports its thoughts (``thoughtsTokenCount``) before its text; cut before the
    chunk that counts its output, it was billed the larger of those thoughts and the text relayed
    (four characters a token), never both: 500 thoughts then 4,000 characters (1,000 tokens) of text
    billed 1,000 output tokens, not 1,500. Now the thoughts reported and the text relayed past that
    count, at most what the body's cap allows (1,200) — through the Gemini API and through a chat client."""
    text = "word " * 800
    want = min(500 + 1000, cap)
    key = alone.secret("solo")
    upstream.enqueue(Reply(sse=gemini_cut(500, text, cap), cut_after=2))
    body = {
        "contents": [{"role": "user", "parts": [{"text": "r45 think"}]}],
        "generationConfig": {"maxOutputTokens": cap},
    }
    path = "/v1beta/models/gemini-race:streamGenerateContent?alt=sse"
    status, headers, raw = alone.request("POST", path, body, {"x-goog-api-key": key})
    assert status == 200 and raw.count(b"word") == 800, raw[:300]
    row = alone.trace(headers["x-stockyard-trace-id"])
    assert (row["outcome"], row["cost_status"], row["completion_tokens"]) == ("stream_broken", "estimate", want), row
    assert row["cost_uc"] == 12 * 100 + want * 200
    upstream.enqueue(Reply(sse=gemini_cut(500, text, cap), cut_after=2))
    chat = {
        "model": "gemini-race",
        "messages": [{"role": "user", "content": "r45 think"}],
        "max_tokens": cap,
        "stream": True,
    }
    status, headers, raw = alone.request("POST", "/v1/chat/completions", chat, alone.auth("solo"))
    assert status == 200 and raw.count(b"word") == 800, raw[:300]
    row = alone.trace(headers["x-stockyard-trace-id"])
    assert (row["outcome"], row["completion_tokens"]) == ("stream_broken", want), row


def test_a_cut_transcription_bills_no_more_text_than_its_hold_counted(alone, upstream):
    """A streamed transcription cut before its usage is billed its audio and the text it relayed,
    four bytes a token, with no bound: 25,000 characters (6,250 tokens) were billed past the output
    its hold counted (a transcription sets no cap: the server's default, 4,096 tokens). The estimate
    stops there, as a chat answer's stops at its cap."""
    deltas = [json.dumps({"type": "transcript.text.delta", "delta": "word " * 1000}) for _ in range(5)]
    upstream.enqueue(Reply(sse=deltas, cut_after=5))
    audio = b"ID3" + b"\x00" * 4997  # 20 s held at the lowest bitrate
    form = {"model": "gpt-4o-transcribe", "stream": "true"}
    conn = http.client.HTTPConnection("127.0.0.1", alone.port, timeout=30)
    boundary = "r45boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in form.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\n'
        "Content-Type: audio/mpeg\r\n\r\n".encode()
        + audio
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {**alone.auth("solo"), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    try:
        conn.request("POST", "/v1/audio/transcriptions", body=b"".join(parts), headers=headers)
        answer = conn.getresponse()
        trace_id = answer.getheader("x-stockyard-trace-id")
        relayed = answer.read()
    finally:
        conn.close()
    assert answer.status == 200 and relayed.count(b"word") == 5000, relayed[:300]
    row = alone.trace(trace_id)
    assert (row["outcome"], row["cost_status"]) == ("stream_broken", "estimate"), row
    assert row["completion_tokens"] == 4096, row

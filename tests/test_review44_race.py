"""Budgets and rate limits under concurrent, messy traffic (review 44).

A key with a small ``total`` budget and a key with an rpm limit, each driven by concurrent clients
sending a seeded random mix over raw HTTP: plain and streamed answers, streams the client leaves
mid-way, streams and whole answers the provider cuts, read timeouts, upstream 429s, fallbacks from a
failing model to a dearer and to a cheaper one (after a retry), cache hits, answers billed to their
cap, two choices, malformed JSON, and (the budgeted key) batches uploaded, started and retrieved until
billed. Run on one process, a ``--workers 2`` group (the parent's ledger)
and two replicas on one PostgreSQL database (the shared ledger). The mock upstream picks each
request's behaviour from the words of its message (``MockUpstream.script``), so the mix does not
depend on which request reaches the mock first.

When everything has settled:

- spend ≤ the limit. The general bound is the limit plus the largest worst case in flight when the
  limit is crossed (an answer may cost more than its hold where Stockyard cannot know the cost
  beforehand); in this mix no answer can cost more than its hold (the mock bills at most the caps,
  12 prompt tokens; a cut or timed-out attempt is billed its input estimate, which the hold counted,
  and a retry or fallback after one is held beside that cost, ``proxy.covered_after``), so any spend
  past the limit itself is a hold that did not cover its answer, or a request admitted past the limit.
  (Before that fix each retry spent the input again outside any hold, and a stream cut before its
  usage was billed its text at four bytes a token past its cap: this seed's mix, with long prompts
  capped at 1 token timing out or cut, spent up to 155,100 µ¢ of a 150,000 µ¢ budget; the two tests
  after this one pin each alone);
- the ledger's spend (read from a refusal of a request too large for any budget, which names the
  spend and what requests in flight hold) equals the sum of the key's traces' ``cost_uc``, every
  attempt's row included, exactly, and nothing is held (each hold settled once);
- the rollups' spend (``GET /api/keys/{id}``) equals it too;
- the rpm key's admitted requests (traced, not refused) never pass the rpm in any 60 s window of
  their traces' timestamps, and reach it;
- each batch started is billed exactly once (one ``batches.usage`` row);
- every request a client sent has its trace id; each answered one has exactly one root trace row;
  Stockyard's own refusals beyond the per-key refusal bucket are documented as only counted
  (``key_refusals_unrecorded_total``, ``tracing.RefusalRecorder``): traced plus counted is every
  refusal.
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
from typing import Any, Callable, Iterator

import openai
import pytest
from conftest import ServerProcess, mock_env, wait_for
from mock_upstream import MockUpstream, Recorded, Reply
from race_helpers import deployed, leave, ledger_in, rows_of, unrecorded

ADMIN = "admin-key-for-review44-race-0123456789"
LIMIT_UC = 150_000  # $0.0015: about 60 of this mix's answers, so the budget is crossed mid-run
RPM = 8
SEED = int(os.environ.get("R44_SEED", "2"))  # a mix that overspent before the retry fix (44 did not)
BUDGET_CLIENTS, BUDGET_EACH = 10, 10
RPM_CLIENTS, RPM_EACH = 4, 5
CAP = 20  # max_tokens of every request (the worst case's output)
PRICES = {  # USD per 1M tokens (input, output): 100 and 200 µ¢ a token for the plain model
    "mock-race": ("1", "2"),
    "mock-race-slow": ("1", "2"),
    "mock-race-bill-max": ("1", "2"),
    "mock-race-dear": ("4", "8"),
    "mock-race-cheap": ("0.5", "1"),
    "mock-error-500": ("1", "2"),
    "mock-error-503": ("1", "2"),
}
MODULES = {
    "fallback": {
        "chains": {
            "openai/mock-error-500": ["openai/mock-race-dear"],
            "openai/mock-error-503": ["openai/mock-race-cheap"],
        },
        "retries": 1,
        "backoff_ms": 10,
        "max_backoff_ms": 20,
        "breaker_failures": 0,
    },
    "timeout": {"models": {"mock-race-slow": 0.5}},
    "cache": {},
}
# kind → (model, stream); what the mock does with it is :func:`reply_for`'s
KINDS = {
    "plain": ("mock-race", False),
    "stream": ("mock-race", True),
    "leave": ("mock-race", True),  # the client leaves after the first event
    "cut_stream": ("mock-race", True),  # the provider closes after two events
    "cut_plain": ("mock-race", False),  # the provider closes inside the body
    "timeout": ("mock-race-slow", False),  # the provider hangs past the 0.5 s read timeout
    "upstream_429": ("mock-race", False),
    "fallback_dear": ("mock-error-500", False),
    "fallback_cheap": ("mock-error-503", True),
    "cached": ("mock-race", False),
    "bill_max": ("mock-race-bill-max", True),
    "two": ("mock-race", False),  # n=2
    "bad_json": ("mock-race", False),
    "timeout_big": ("mock-race-slow", False),  # a long prompt and a cap of 1: the input is most of the hold
    "cut_big": ("mock-race", False),
    "long_cut": ("mock-race", True),  # 400 bytes of indentation in one chunk, then the provider cuts
}
LONG_CHUNK = json.dumps(
    {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "mock-race",
        "choices": [{"index": 0, "delta": {"content": " " * 400}, "finish_reason": None}],
    }
)
BIG = "x" * 1200  # ~300 tokens: 30,000 µ¢ of input beside 200 µ¢ of output
# a key without rpm may start batches (a limited key's retrieves, counted in its rpm, may never bill one)
CLIENT_KINDS = {"budgeted": [*KINDS, "batch"], "limited": list(KINDS)}
REFUSAL_CODES = ("budget_exceeded", "rate_limit_exceeded")


def reply_for(req: Recorded) -> Reply | None:
    """The mock's behaviour for one request, from the ``do=…`` word its message carries."""
    body = req.json if isinstance(req.json, dict) else {}
    messages = body.get("messages") or [{}]
    found = re.search(r"do=(\w+)", str(messages[0].get("content", "")))
    kind = found.group(1) if found else ""
    if kind == "leave":
        return Reply(sse_delay_ms=40)  # paced, so the client is gone before the end
    if kind == "cut_stream":
        return Reply(cut_after=2)
    if kind in ("cut_plain", "cut_big"):
        return Reply(cut_after=30)  # the head and 30 bytes of the body
    if kind == "long_cut":  # one chunk of 400 bytes of text (as 25 tokens of indentation would be), then a cut
        return Reply(sse=[LONG_CHUNK], cut_after=1)
    if kind in ("timeout", "timeout_big"):
        return Reply(hang_s=3)
    if kind == "upstream_429":
        return Reply(status=429)
    if kind in ("plain", "stream", "two", "bill_max"):
        return Reply(hang_s=0.05)  # in flight together with the others
    return None


@dataclass
class Sent:
    """One request a client sent and what came back."""

    key: str
    kind: str
    status: int
    trace_id: str | None
    code: str | None  # the error code of Stockyard's refusal, if it was one
    batch_id: str | None = None  # a batch it created


# -- the deployments: one process, a group of two workers, two PostgreSQL replicas -----------------
@pytest.fixture(scope="module")
def upstream() -> Iterator[MockUpstream]:
    """A mock of this file's own (its ``script`` would answer other files' requests)."""
    with MockUpstream() as mock:
        mock.script = reply_for
        yield mock


def prepare(server: ServerProcess) -> dict[str, str]:
    """Prices, modules and the two keys, by the CLI before the start: every worker and replica
    starts with them. Returns the keys' secrets by name."""
    for model, (inp, out) in PRICES.items():
        done = server.cli("prices", "set", model, "--input", inp, "--output", out)
        assert done.returncode == 0, done.stderr
    for name, config in MODULES.items():
        done = server.cli("modules", "set", name, "--config", json.dumps(config))
        assert done.returncode == 0, done.stderr
        assert server.cli("modules", "enable", name).returncode == 0
    budget = f"{Decimal(LIMIT_UC) / 10**8:f}"
    return server.create_keys(
        {"budgeted": ["--budget-usd", budget, "--budget-period", "total"], "limited": ["--rpm", str(RPM)]}
    )


def env_of(cache_home: Path, upstream: MockUpstream) -> dict[str, str]:
    """A server's environment: its OpenAI provider is this file's mock."""
    return {**mock_env(cache_home, upstream), "STOCKYARD_ADMIN_KEY": ADMIN}


@pytest.fixture(params=["process", "workers", "replicas"])
def deployment(request, pyz_path, cache_home, upstream, tmp_path) -> Iterator[list[ServerProcess]]:
    yield from deployed(request, pyz_path, env_of(cache_home, upstream), tmp_path, prepare)


@pytest.fixture
def alone(pyz_path, cache_home, upstream, tmp_path) -> Iterator[ServerProcess]:
    """One process, prepared as the deployments are."""
    env = env_of(cache_home, upstream)
    server = ServerProcess(pyz_path, tmp_path / "stockyard.db", env)
    server.keys = prepare(server)
    server.start()
    yield server
    server.stop()
    assert "Traceback" not in server.log, server.log[-3000:]


# -- the clients ------------------------------------------------------------------------------------
def body_of(kind: str, client: int, i: int) -> bytes:
    """The request of one kind; a cached one is the same for every client of the key (a hit)."""
    if kind == "bad_json":
        return b'{"model": "mock-race", "messages": [{"role": "user", "content": "do=bad_json"'
    model, stream = KINDS[kind]
    words = f"r44 do={kind} a{i % 3}" if kind == "cached" else f"r44 do={kind} c{client} i{i}"
    big = kind.endswith("_big")
    words += f" {BIG}" if big else ""
    body: dict = {"model": model, "messages": [{"role": "user", "content": words}], "max_tokens": 1 if big else CAP}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if kind == "two":
        body["n"] = 2
    return json.dumps(body).encode()


def send(server: ServerProcess, key: str, kind: str, client: int, i: int) -> Sent:
    payload, secret = body_of(kind, client, i), server.secret(key)
    if kind == "leave":
        status, headers, data = leave(server, "/v1/chat/completions", {"Authorization": f"Bearer {secret}"}, payload)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            auth = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
            conn.request("POST", "/v1/chat/completions", body=payload, headers=auth)
            answer = conn.getresponse()
            status, headers, data = answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        finally:
            conn.close()
    code = None
    if status >= 400 and headers.get("content-type", "").startswith("application/json"):
        code = (json.loads(data).get("error") or {}).get("code")
    return Sent(key, kind, status, headers.get("x-stockyard-trace-id"), code)


def sdk_call(key: str, kind: str, call: Callable[[], Any]) -> tuple[Sent, Any]:
    """An OpenAI SDK call made ``with_raw_response``: what came back, and the parsed object (None
    when refused)."""
    try:
        raw = call()
    except openai.APIStatusError as refused:
        code = (refused.body or {}).get("code") if isinstance(refused.body, dict) else None
        return Sent(key, kind, refused.status_code, refused.response.headers.get("x-stockyard-trace-id"), code), None
    return Sent(key, kind, raw.status_code, raw.headers.get("x-stockyard-trace-id"), None), raw.parse()


def start_batch(server: ServerProcess, key: str, client: int, i: int) -> list[Sent]:
    """Upload a batch file of two chat lines and start a batch on it (held at its worst case)."""
    sdk = server.openai(key)
    lines = [
        {
            "custom_id": f"c{client}-i{i}-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "mock-race",
                "messages": [{"role": "user", "content": f"r44 batch {n}"}],
                "max_tokens": CAP,
            },
        }
        for n in range(2)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = lambda: sdk.files.with_raw_response.create(file=("b.jsonl", io.BytesIO(data)), purpose="batch")  # noqa: E731
    uploaded, made = sdk_call(key, "batch_file", upload)
    if made is None:
        return [uploaded]
    create = lambda: sdk.batches.with_raw_response.create(  # noqa: E731
        input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    started, batch = sdk_call(key, "batch", create)
    started.batch_id = batch.id if batch is not None else None
    return [uploaded, started]


def bill(server: ServerProcess, key: str, batch_id: str) -> list[Sent]:
    """Retrieve the batch (each retrieve moves the mock's on a step) until Stockyard billed it."""
    sent: list[Sent] = []

    def billed() -> bool:
        answer, _ = sdk_call(
            key, "batch_retrieve", lambda: server.openai(key).batches.with_raw_response.retrieve(batch_id)
        )
        sent.append(answer)
        return server.db_rows("SELECT billed FROM owned_objects WHERE id = ?", (batch_id,))[0]["billed"] == 1

    wait_for(billed, timeout=20, what=f"batch {batch_id} billed")
    return sent


def traffic(servers: list[ServerProcess], started: str) -> list[Sent]:
    """Every client's seeded mix at once, spread over the servers, and the batch ``started`` before
    retrieved until billed meanwhile; what each request got."""
    plans = [("budgeted", c, BUDGET_EACH) for c in range(BUDGET_CLIENTS)]
    plans += [("limited", BUDGET_CLIENTS + c, RPM_EACH) for c in range(RPM_CLIENTS)]
    start = threading.Barrier(len(plans) + 1)

    def client(plan: tuple[str, int, int]) -> list[Sent]:
        key, number, count = plan
        rng = random.Random(SEED * 1000 + number)
        start.wait()
        sent: list[Sent] = []
        for i in range(count):
            server, kind = servers[(number + i) % len(servers)], rng.choice(CLIENT_KINDS[key])
            sent += start_batch(server, key, number, i) if kind == "batch" else [send(server, key, kind, number, i)]
        return sent

    def billing() -> list[Sent]:
        start.wait()
        return bill(servers[-1], "budgeted", started)

    with ThreadPoolExecutor(max_workers=len(plans) + 1) as pool:
        billed = pool.submit(billing)
        sent = [sent for each in pool.map(client, plans) for sent in each]
        return sent + billed.result()


# -- what the servers say afterwards -------------------------------------------------------------
def ledger_of(server: ServerProcess, key: str) -> tuple[int, int]:
    """(spent, held) of the key's budget in the ledger, from the refusal of a request no budget
    admits (a cap of a million tokens): it names both (no held part when nothing is held)."""
    body = {"model": "mock-race", "messages": [{"role": "user", "content": "r44 probe"}], "max_tokens": 1_000_000}
    status, _, data = server.request("POST", "/v1/chat/completions", body, server.auth(key))
    assert status == 429, data
    _, spent, held = ledger_in(json.loads(data)["error"]["message"])
    return spent, held


def most_in_a_minute(stamps: list[int]) -> int:
    """The most timestamps (ms) in any 60 s window."""
    stamps = sorted(stamps)
    return max((sum(1 for t in stamps[i:] if t < s + 60_000) for i, s in enumerate(stamps)), default=0)


def test_budget_and_rpm_hold_under_concurrent_messy_traffic(deployment, upstream):
    servers = deployment
    ids = {r["name"]: r["id"] for r in servers[0].db_rows("SELECT id, name FROM client_keys")}
    wait_for(lambda: all(s.requires_keys() for s in servers), what="the keys on every server")
    first = start_batch(servers[0], "budgeted", len(ids), 0)  # one batch for sure: billed during the mix
    assert first[-1].batch_id, first
    sent = first + traffic(servers, first[-1].batch_id)
    batches = [s.batch_id for s in sent if s.batch_id]
    for batch_id in batches[1:]:  # those the mix started (when the holds in flight left room)
        sent += bill(servers[-1], "budgeted", batch_id)
    assert all(s.trace_id for s in sent), [s for s in sent if not s.trace_id]
    kinds_seen = {s.kind for s in sent}
    assert kinds_seen >= {*KINDS, "batch"}, {*KINDS, "batch"} - kinds_seen
    # the provider's failures, passed on (a fallback the budget cannot hold is skipped), never Stockyard's own
    failing = ("timeout", "cut_plain", "cut_stream", "fallback_dear", "fallback_cheap", "timeout_big", "cut_big")
    assert not [s for s in sent if s.status >= 500 and s.kind not in failing], sent

    refused = [s for s in sent if s.code in REFUSAL_CODES or s.kind == "bad_json" and s.status == 400]
    answered = {s.trace_id for s in sent if s not in refused}
    everyone = {s.trace_id for s in sent}

    def stored() -> list[dict] | None:
        """Every trace written: each answered request's, and the refusals not only counted."""
        rows = [r for key in ids.values() for r in rows_of(servers[0], key)]
        roots = {r["id"] for r in rows if r["parent_id"] is None and r["endpoint"] != "batches.usage"}
        untraced = [s for s in refused if s.trace_id not in roots]
        return rows if answered <= roots and len(untraced) == unrecorded(servers, ADMIN) else None

    rows = wait_for(stored, timeout=20, what="every request traced, or its refusal counted")
    roots = [r["id"] for r in rows if r["parent_id"] is None and r["endpoint"] != "batches.usage"]
    assert len([r for r in rows if r["endpoint"] == "batches.usage"]) == len(batches)  # each billed once
    assert len(roots) == len(set(roots)), "a request traced twice"
    assert set(roots) <= everyone, set(roots) - everyone  # nothing but what the clients sent

    spent_by_traces = sum(r["cost_uc"] or 0 for r in rows_of(servers[0], ids["budgeted"]))

    def settled(server: ServerProcess) -> tuple[int, int] | None:
        spent, held = ledger_of(server, "budgeted")
        return (spent, held) if held == 0 else None

    for server in servers:
        spent, held = wait_for(lambda server=server: settled(server), what="every hold settled")
        assert spent == spent_by_traces, (spent, spent_by_traces, servers[0].log[-3000:])
    assert spent_by_traces <= LIMIT_UC, spent_by_traces
    assert [s for s in sent if s.code == "budget_exceeded"], "the budget was never reached: the test proves little"
    status, _, data = servers[-1].request(
        "GET", f"/api/keys/{ids['budgeted']}", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert status == 200 and json.loads(data)["spend_uc"] == spent_by_traces, data

    limited = [r for r in rows_of(servers[0], ids["limited"]) if r["parent_id"] is None]
    admitted = [r for r in limited if r["outcome"] != "rejected"]  # past the limiter: not Stockyard's refusal
    assert most_in_a_minute([r["ts_ms"] for r in admitted]) == RPM, sorted(r["ts_ms"] for r in admitted)
    assert [s for s in sent if s.code == "rate_limit_exceeded"]


def test_a_retry_after_a_timeout_is_held_beside_what_the_timeout_cost(alone, upstream):
    """A request that times out is billed its input (the provider may have read it), which its hold
    counted once; its retry was made on the same hold, billed that input again: a large prompt with a
    small cap (input ≈ 112,500 µ¢, worst case ≈ 112,700 µ¢ under a budget of 150,000) spent ≈ 225,000
    µ¢ in two attempts. A retry (or fallback) after a billed failure is now held beside that cost,
    and not made when the budget cannot hold it: one attempt, the 504, spend within the budget."""
    words = "r44 do=timeout big " + "x" * 4400
    body = {"model": "mock-race-slow", "messages": [{"role": "user", "content": words}], "max_tokens": 1}
    before = len(upstream.requests)
    status, headers, data = alone.request("POST", "/v1/chat/completions", body, alone.auth("budgeted"))
    assert status == 504, data
    sent = [r for r in upstream.requests[before:] if b"do=timeout big" in r.body]
    assert len(sent) == 1  # the retry was not made
    row = alone.trace(headers["x-stockyard-trace-id"])
    assert row["cost_status"] == "estimate" and 100_000 < row["cost_uc"] <= LIMIT_UC, row
    key_id = alone.db_rows("SELECT id FROM client_keys WHERE name = 'budgeted'")[0]["id"]
    assert sum(r["cost_uc"] or 0 for r in rows_of(alone, key_id)) == row["cost_uc"]
    assert ledger_of(alone, "budgeted") == (row["cost_uc"], 0)  # settled before the 504 was sent


def test_a_cut_streams_output_is_billed_no_more_than_its_cap_allowed(alone):
    """A stream cut before its usage is billed the text it relayed at four bytes a token; 400 bytes
    of indentation (a few real tokens) under ``max_tokens`` 5 were billed 100 output tokens, 20 times
    what the budget held for them. The estimate stops at what the cap allows."""
    body = {"model": "mock-race", "messages": [{"role": "user", "content": "r44 do=long_cut"}], "max_tokens": 5}
    body["stream"] = True
    status, headers, _ = alone.request("POST", "/v1/chat/completions", body, alone.auth("budgeted"))
    assert status == 200
    row = alone.trace(headers["x-stockyard-trace-id"])
    assert row["outcome"] == "stream_broken" and row["cost_status"] == "estimate", row
    assert row["completion_tokens"] == 5, row
    assert row["cost_uc"] == row["prompt_tokens"] * 100 + 5 * 200
    assert ledger_of(alone, "budgeted") == (row["cost_uc"], 0)

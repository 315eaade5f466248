"""Issue 18: proxy CPU per non-streamed request with everything on, next to a minimal relay.

"Everything on" is what the issue measures: tracing with bodies (always on), a client key
with a budget, an rpm and a tpm limit, and the request log. The minimal pooled relay
(bench/minimal_relay.py: ThreadingHTTPServer + a keep-alive http.client pool, no tracing)
runs in the same rounds, so the ratio between the two is the number to read; the absolute
CPU time moves with the machine's load.
"""

from __future__ import annotations

import http.client
import json
import sys
from pathlib import Path

from common import CHAT, CHAT_BODY, CHAT_PATH, Client, NotAvailable, Target, base_env, cpu_seconds, median, run_pyz
from harness import Bench, Row, added_ms, count_traces, interleaved, interleaved_load, key_setup, latency_rows

CPU_MS = 0.7  # proxy CPU per request, everything on
ADDED_P50_MS = 0.5
ADDED_P99_MS = 2.0
MIN_RATIO = 0.65  # throughput at 64 connections over direct
RELAY = Path(__file__).resolve().parent / "minimal_relay.py"


def relay(b: Bench, upstream: Target) -> Target:
    """A minimal pooled relay process in front of `upstream` (same headers as a direct client)."""
    argv = [sys.executable, str(RELAY), "--upstream", upstream.url, "--port", "0"]
    name = f"minimal-relay-{upstream.port}"
    proc, match, log = b.procs.start(name, argv, base_env(b.procs.workdir), r"listening (http://127\.0\.0\.1:\d+)")
    return Target(name, match.group(1), dict(upstream.headers), log, proc.pid)


def all_on(b: Bench, delay_ms: float, pinned: bool = True) -> Target:
    """A proxy with tracing, a client key with budget + rpm + tpm, and the request log on
    (``pinned`` False: its threads spread over every CPU, as before stockyard.cpupin)."""
    name, env = f"proxy-all-on-{delay_ms:g}ms", None
    if not pinned:
        name, env = f"{name}-spread", {"STOCKYARD_CPU_PIN": "off"}
    return b.proxy(name, delay_ms, log_requests=True, extra_env=env, setup=key_setup(b.pyz))


def cpu_per_request(b: Bench) -> list[Row]:
    """CPU per request under load (64 clients, 20 ms upstream) for the proxy with everything on
    and for the minimal relay, throughput over direct, and added latency at one client."""
    if run_pyz(b.pyz, ["keys", "create", "--help"], base_env(b.procs.workdir)).returncode != 0:
        raise NotAvailable("`keys create` is not in this build")
    a = b.args
    direct, slow = b.mock(0), b.mock(20)
    proxy, proxy_slow = all_on(b, 0), all_on(b, 20)
    floor, floor_slow = relay(b, direct), relay(b, slow)
    spread_slow = all_on(b, 20, pinned=False)

    targets = [slow, floor_slow, proxy_slow, spread_slow]
    runs, cpu = interleaved_load(b, targets)  # CPU seconds of each server
    answered = {name: max(1, sum(x.answered for x in results)) for name, results in runs.items()}
    cpu_ms = {name: 1000 * cpu[name] / answered[name] for name in runs}
    rps = {name: median([x.rps for x in results]) for name, results in runs.items()}
    errors = {name: sum(x.errors for x in results) for name, results in runs.items()}
    traces = count_traces(b.db(proxy_slow), answered[proxy_slow.name])
    ms, floor_ms, spread_ms = cpu_ms[proxy_slow.name], cpu_ms[floor_slow.name], cpu_ms[spread_slow.name]
    ratio = rps[proxy_slow.name] / rps[slow.name]

    rounds = interleaved([direct, floor, proxy], Client.chat, a.requests, a.rounds, a.warmup)
    where = f"{a.clients} clients, 20 ms upstream"
    return [
        Row(
            f"proxy CPU per request, all on ({where})",
            f"{ms:.2f} ms",
            f"<= {CPU_MS:g} ms",
            ms <= CPU_MS and not errors[proxy_slow.name],
            f"{ms / floor_ms:.2f} x the minimal relay; {traces}/{answered[proxy_slow.name]} answers traced"
            + (f"; {errors[proxy_slow.name]} errors" if errors[proxy_slow.name] else ""),
        ),
        Row(
            "minimal pooled relay CPU per request (same rounds)",
            f"{floor_ms:.2f} ms",
            "",
            None,
            f"stdlib ThreadingHTTPServer + http.client pool, no tracing; mock {cpu_ms[slow.name]:.2f} ms"
            + (f"; {errors[floor_slow.name]} errors" if errors[floor_slow.name] else ""),
        ),
        Row(
            "proxy CPU per request, all on, STOCKYARD_CPU_PIN=off (same rounds)",
            f"{spread_ms:.2f} ms",
            "",
            None,
            f"threads spread over every CPU: {spread_ms / ms:.2f} x kept on one; {rps[spread_slow.name]:.0f} req/s",
        ),
        Row(
            "throughput all on / direct",
            f"{ratio:.2f}",
            f">= {MIN_RATIO:g}",
            ratio >= MIN_RATIO,
            f"proxy {rps[proxy_slow.name]:.0f}, relay {rps[floor_slow.name]:.0f}, direct {rps[slow.name]:.0f} req/s",
        ),
        *latency_rows("added latency, all on, 1 client,", rounds, proxy.name, direct.name, ADDED_P50_MS, ADDED_P99_MS),
        Row(
            "added latency, minimal relay, 1 client, p50 (over direct)",
            f"{added_ms(rounds, floor.name, direct.name, 0.5):+.2f} ms",
            "",
            None,
            "the floor for the row above",
        ),
    ]


AGENT_BODY_KB = 100


def agent_body(kb: int = AGENT_BODY_KB) -> bytes:
    """A chat body of about ``kb`` KB as a coding agent sends it: a conversation whose tool results
    are source files (this repository's own, in a fixed order: the same bytes every run)."""
    texts = [p.read_text() for p in sorted((Path(__file__).resolve().parent.parent / "stockyard").glob("*.py"))]
    messages: list[dict] = [{"role": "system", "content": "You are a coding agent. Read the files and answer."}]
    size, turn = 0, 0
    while size < kb * 1000:
        text = texts[turn % len(texts)][:6000]
        messages.append({"role": "user" if turn % 2 == 0 else "assistant", "content": text})
        size, turn = size + len(text), turn + 1
    return json.dumps({**CHAT, "messages": messages}).encode()


def big_body_cpu(b: Bench) -> list[Row]:
    """Information (issue 18): proxy CPU per request for a ~100 KB agent body against a small one,
    both through the proxy with everything on and the minimal relay, one client, interleaved."""
    direct = b.mock(0)
    proxy, floor = all_on(b, 0), relay(b, direct)
    big = agent_body()
    per: dict[tuple[str, str], list[float]] = {}
    for _ in range(b.args.rounds):
        for target in (proxy, floor):
            for name, body in (("small", CHAT_BODY), ("big", big)):
                per.setdefault((target.name, name), []).append(cpu_ms(target, body, 40 if name == "big" else 200))
    ms = {key: median(values) for key, values in per.items()}
    big_ms, small_ms = ms[(proxy.name, "big")], ms[(proxy.name, "small")]
    per_kb = 1000 * (big_ms - small_ms) / (len(big) / 1000)
    return [
        Row(
            f"proxy CPU per request, all on, {len(big) // 1000} KB agent body, 1 client",
            f"{big_ms:.2f} ms",
            "",
            None,
            f"small body {small_ms:.2f} ms in the same rounds ({per_kb:.0f} µs per "
            f"extra KB); minimal relay {ms[(floor.name, 'big')]:.2f} / {ms[(floor.name, 'small')]:.2f} ms",
        )
    ]


def cpu_ms(target: Target, body: bytes, count: int) -> float:
    """The target's CPU milliseconds per answer over ``count`` requests of ``body`` on one connection."""
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
    headers = {"content-type": "application/json", **target.headers}
    try:
        before = cpu_seconds(target.pid)
        for _ in range(count):
            conn.request("POST", CHAT_PATH, body, headers)
            resp = conn.getresponse()
            answer = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{target.name}: HTTP {resp.status}: {answer[:300]!r}")
        return 1000 * (cpu_seconds(target.pid) - before) / count
    finally:
        conn.close()

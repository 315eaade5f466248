"""What an answer settles is settled before the answer leaves: a failed request's reservations
are released, and an attempt's outcome reaches the circuit breaker (and deployment health).

A client (or an SDK) that gets an error and retries at once must not be refused by the failed
request's own worst-case hold: the after hooks (budget settlement, rate-limit release) run
before the failure is written, so by the time any byte of it reaches the client the hold is
gone. Checked in process at the moment the reply is written, so no timing is involved.
"""

from __future__ import annotations

import pytest
from mock_upstream import openai_error
from module_harness import RecordingReply, harness

from stockyard import proxy
from stockyard.budgets import key_budget
from stockyard.context import RequestContext
from stockyard.keys import KeyRing, load_keys
from stockyard.operations import Operations
from stockyard.operations.keys import create_key


class HeldAtSend(RecordingReply):
    """Notes what the key's budget holds at the moment the answer is written."""

    def __init__(self, held) -> None:
        super().__init__()
        self._held = held
        self.held_at_send: int | None = None

    def send(self, status, body, content_type="application/json", headers=None) -> None:
        self.held_at_send = self._held()
        super().send(status, body, content_type, headers)


@pytest.mark.parametrize("failure", ["provider error passed through", "no answer (timeout)"])
def test_a_failure_is_answered_after_its_budget_hold_is_released(tmp_path, mock, failure):
    mock.clear_replies()
    env = {"STOCKYARD_UPSTREAM_TIMEOUT": "0.3"} if failure.startswith("no answer") else {}
    with harness(tmp_path, mock, **env) as h:
        h.disable_all()
        h.configure("budget")
        described, secret = create_key(
            Operations(h.store, "cli:test"), {"name": "k", "budget_usd": "1", "budget_period": "month"}
        )
        h.path.gate.use(KeyRing(load_keys(h.store.read())))
        budget = key_budget(described["id"], "k", 100_000_000, "month")
        assert budget is not None

        def held() -> int:
            usage = h.ledger.usage(budget, ctx.ts_ms)
            return -1 if usage is None else usage[1]

        if failure.startswith("provider"):
            mock.enqueue(openai_error(500))
        else:
            mock.delay_ms = 1000
        ctx = RequestContext(
            "chat",
            "openai",
            "127.0.0.1",
            {"authorization": f"Bearer {secret}"},
            raw=b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}',
        )
        reply = HeldAtSend(held)
        try:
            proxy.handle(h.path, reply, ctx)
        finally:
            mock.delay_ms = 0
        assert ctx.key is not None and reply.status >= 500, reply.body
        assert reply.held_at_send == 0, "the failure left while its worst case was still held"


class BreakerAtSend(RecordingReply):
    """Notes the circuit breaker's failure count at the moment a whole answer is written."""

    def __init__(self, breaker) -> None:
        super().__init__()
        self._breaker = breaker
        self.failures_at_send: int | None = None

    def send(self, status, body, content_type="application/json", headers=None) -> None:
        self.failures_at_send = self._breaker.snapshot(30.0)["openai/gpt-4o-mini"]["failures"]
        super().send(status, body, content_type, headers)


def test_an_answer_leaves_after_its_outcome_reached_the_breaker(tmp_path, mock):
    """The client's next request must find the breaker as this answer left it (a half-open
    breaker closed by a successful probe, here a failure count reset by a success)."""
    mock.clear_replies()
    with harness(tmp_path, mock) as h:
        h.disable_all()
        h.configure("fallback", {"retries": 0, "breaker_failures": 5})
        breaker = next(m for m in h.modules.instances if m.name == "fallback").breaker
        mock.enqueue(openai_error(500))
        assert h.chat()[0] == 500
        assert breaker.snapshot(30.0)["openai/gpt-4o-mini"]["failures"] == 1
        ctx = RequestContext(
            "chat",
            "openai",
            "127.0.0.1",
            {},
            raw=b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}',
        )
        reply = BreakerAtSend(breaker)
        proxy.handle(h.path, reply, ctx)
        assert reply.status == 200 and reply.failures_at_send == 0

"""Review 28: real traffic through today's limits and prices, with the official SDKs and the real pyz.

A maximal Anthropic Message Batch (100,000 short requests, Anthropic's own limit, 16 MB) holds more than
the 1,000,000 JSON values a body may hold elsewhere: it must be served as before, its parse held in
STOCKYARD_REQUEST_BODIES_MB, and a batch past what that bound can parse is a 413 naming the setting."""

from __future__ import annotations

import json

import pytest
from anthropic import APIStatusError
from conftest import ServerProcess, mock_env
from mock_upstream import MESSAGE_BATCHES

PLAIN = "claude-batch-plain"  # the mock's name: priced below
MAX_BATCH = 100_000  # Anthropic's most requests in one batch


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-review28-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_BATCH_POLL="off",
    )  # the default body limits: STOCKYARD_MAX_BODY_BYTES 32 MiB, STOCKYARD_REQUEST_BODIES_MB 256
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp("review28") / "stockyard.db", env)
    done = srv.cli("prices", "set", PLAIN, "--input", "3", "--output", "15")
    assert done.returncode == 0, done.stderr
    srv.keys = srv.create_keys({"alice": [], "budgeted": ["--budget-usd", "100", "--budget-period", "day"]})
    srv.start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log


def ticket_batch(count: int) -> list[dict]:
    """A classification job as people send it: one short labelled ticket a request."""
    return [
        {
            "custom_id": f"ticket-{i}",
            "params": {
                "model": PLAIN,
                "max_tokens": 8,
                "system": "Label the ticket: billing, bug or other.",
                "messages": [{"role": "user", "content": f"Ticket {i}: I was charged twice this month"}],
            },
        }
        for i in range(count)
    ]


@pytest.mark.parametrize("who", ["alice", "budgeted"])
def test_a_batch_of_anthropics_most_requests_is_served(server, mock, who):
    requests = ticket_batch(MAX_BATCH)
    size = len(json.dumps({"requests": requests}).encode())
    assert size < 32 * 1024 * 1024  # within the body size limit: the old server served it
    mock.clear()
    batch = server.anthropic(who, timeout=120).messages.batches.create(requests=requests)
    assert batch.processing_status == "in_progress"
    assert len(MESSAGE_BATCHES.requests[batch.id]) == MAX_BATCH


def test_a_batch_past_what_the_bodies_bound_can_parse_is_a_413_naming_the_setting(pyz_path, cache_home, mock, tmp_path):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-review28-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_BATCH_POLL="off",
        STOCKYARD_REQUEST_BODIES_MB="64",  # room to parse ~670,000 values: the batch's 1,000,002 are not
    )
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env)
    done = srv.cli("prices", "set", PLAIN, "--input", "3", "--output", "15")
    assert done.returncode == 0, done.stderr
    srv.keys = srv.create_keys({"alice": []})
    srv.start()
    try:
        mock.clear()
        with pytest.raises(APIStatusError) as refused:
            srv.anthropic("alice", timeout=120).messages.batches.create(requests=ticket_batch(MAX_BATCH))
        assert refused.value.status_code == 413
        error = refused.value.body["error"]
        assert error["type"] == "request_too_large" and "STOCKYARD_REQUEST_BODIES_MB" in error["message"]
        assert not [r for r in mock.requests if r.path.startswith("/v1/messages/batches")]
    finally:
        srv.stop()
    assert "Traceback" not in srv.log

"""A database lost under load is said in the log at most once a minute per place, not once a request
(a burst at 1,000 requests a second wrote 1,000 lines a second of the same failure)."""

from __future__ import annotations

import logging
import socket

from stockyard.dburl import parse_postgres
from stockyard.loglimit import Throttle
from stockyard.store import Store
from stockyard.store.backends import PostgresBackend
from stockyard.store.shared import SharedRateLimiter


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once it is closed


def test_a_lost_database_under_a_burst_is_said_once_with_the_count_held_back(caplog, monkeypatch):
    from stockyard.store import shared

    for name in ("_NOT_COUNTED", "_NOT_CHECKED"):  # fresh: another test in this process may have said it
        monkeypatch.setattr(shared, name, Throttle())
    url = f"postgresql://stockyard:pw@127.0.0.1:{closed_port()}/gone?sslmode=disable"
    limiter = SharedRateLimiter(Store(PostgresBackend(parse_postgres(url, {}))))
    with caplog.at_level(logging.WARNING, logger="stockyard"):
        for _ in range(200):
            assert not limiter.admit("key_a", 100, None, 1).live  # fails open, uncounted
            limiter.check("key_a", 100, None, 1)
    counted = [r for r in caplog.records if "not counted" in r.getMessage()]
    checked = [r for r in caplog.records if "not checked" in r.getMessage()]
    assert len(counted) == 1 and len(checked) == 1, [r.getMessage() for r in caplog.records][:5]


def test_a_throttle_says_the_first_then_counts_what_it_held_back():
    clock = [0.0]
    throttle = Throttle(60.0, clock=lambda: clock[0])
    assert throttle.due() == 0  # the first is said
    assert [throttle.due() for _ in range(5)] == [None] * 5
    clock[0] = 59.9
    assert throttle.due() is None
    clock[0] = 60.0
    assert throttle.due() == 6  # said again, with the six held back
    assert throttle.due() is None

"""Behind a load balancer: the client's address from X-Forwarded-For, only from trusted proxies."""

from __future__ import annotations

import pytest
from conftest import ServerProcess, mock_env

from stockyard import config
from stockyard.hosts import client_address, parse_trusted_proxies

LB = parse_trusted_proxies("10.0.0.0/8, 127.0.0.1")


@pytest.mark.parametrize(
    "peer, forwarded, expected",
    [
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # not a trusted peer: its header is ignored
        ("10.0.0.5", ["198.51.100.1"], "198.51.100.1"),  # the balancer names the client
        ("10.0.0.5", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # a forged left part is never read
        ("10.0.0.5", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),  # header lines in order
        ("10.0.0.5", ["198.51.100.1, 10.0.0.7"], "198.51.100.1"),  # two trusted hops are walked past
        ("10.0.0.5", ["not-an-ip, 10.0.0.7"], "10.0.0.7"),  # a malformed hop stops at the last good one
        ("10.0.0.5", ["2001:db8::1"], "2001:db8::1"),
        ("10.0.0.5", None, "10.0.0.5"),  # nothing forwarded: the balancer itself
        ("::ffff:10.0.0.5", ["198.51.100.1"], "198.51.100.1"),  # IPv4-mapped peer
    ],
)
def test_client_address(peer, forwarded, expected):
    assert client_address(peer, forwarded, LB) == expected


def test_no_trusted_proxies_means_the_peer():
    assert client_address("10.0.0.5", ["198.51.100.1"], ()) == "10.0.0.5"


def test_a_bad_setting_is_refused_naming_it():
    with pytest.raises(ValueError, match="STOCKYARD_TRUSTED_PROXIES"):
        config.load({}, {"STOCKYARD_TRUSTED_PROXIES": "10.0.0.0/8, lb.example.com"})


@pytest.mark.parametrize("trusted", ["127.0.0.1", ""])
def test_traces_record_the_forwarded_client_only_from_a_trusted_proxy(pyz_path, cache_home, mock, tmp_path, trusted):
    env = mock_env(cache_home, mock, STOCKYARD_TRUSTED_PROXIES=trusted)
    server = ServerProcess(pyz_path, tmp_path / "s.db", env).start()
    try:
        status, headers, _ = server.request(
            "POST",
            "/v1/chat/completions",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.1"},
        )
        assert status == 200
        trace = server.trace(headers["x-stockyard-trace-id"])
        assert trace["client_addr"] == ("198.51.100.1" if trusted else "127.0.0.1")
    finally:
        server.stop()

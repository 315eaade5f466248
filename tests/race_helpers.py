"""What the budget race tests (reviews 44 and 45) share: a raw client that leaves a stream after its
first event, the HTTP head it reads, the money in the refusals' words, the traces and the refusals
only counted."""

from __future__ import annotations

import re
import socket
import struct
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator

import pytest
from conftest import ServerProcess


def head_of(raw: bytes) -> tuple[int, dict[str, str]]:
    """The status and the headers (lower-case names) of a raw HTTP answer."""
    lines = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers


def refusal_read(received: bytes) -> bool:
    """A whole answer that is not a stream (a refusal): its Content-Length of body arrived."""
    status, headers = head_of(received)
    length = headers.get("content-length")
    return status != 200 and length is not None and len(received.split(b"\r\n\r\n", 1)[1]) >= int(length)


def leave(
    server: ServerProcess, path: str, headers: dict[str, str], payload: bytes
) -> tuple[int, dict[str, str], bytes]:
    """Send a streamed request over a raw socket and leave (a reset) after its first event, or
    read a refusal whole."""
    client = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    received = b""
    sent = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    try:
        client.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{sent}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        while b"\r\n\r\n" not in received or (b"data:" not in received and not refusal_read(received)):
            chunk = client.recv(1 << 16)
            assert chunk, received[-300:]
            received += chunk
    finally:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
    status, answer_headers = head_of(received)
    return status, answer_headers, received.split(b"\r\n\r\n", 1)[1]


def to_uc(usd: str) -> int:
    return int(Decimal(usd) * 10**8)


# a refusal's words: what the budget it names has spent, and what requests in flight hold of it
LEDGER = re.compile(
    r"the (.+?) budget of .*? allows no more: \$([\d.]+) spent(?:, \$([\d.]+) held by requests in flight)?"
)


def ledger_in(message: str) -> tuple[str, int, int]:
    """(whose budget, spent, held) from the words of a budget's refusal of a request it can never
    admit (no held part when nothing is held)."""
    found = LEDGER.search(message)
    assert found, message
    return found.group(1), to_uc(found.group(2)), to_uc(found.group(3) or "0")


def rows_of(server: ServerProcess, key_id: str) -> list[dict]:
    """A key's traces: what the race tests compare with the ledger and the clients."""
    sql = (
        "SELECT id, parent_id, endpoint, cost_uc, ts_ms, status, error_type, outcome, end_user"
        " FROM traces WHERE key_id = ?"
    )
    return server.db_rows(sql, (key_id,))


def unrecorded(servers: list[ServerProcess], admin: str) -> int:
    """Refusals of client keys counted but not traced (the refusal bucket), over every process."""
    total = 0.0
    for server in servers:
        status, _, text = server.request("GET", "/metrics", headers={"Authorization": f"Bearer {admin}"})
        assert status == 200
        for value in re.findall(rb"^stockyard_key_refusals_unrecorded_total(?:\{[^}]*\})? (\S+)$", text, re.M):
            total += float(value)
    return int(total)


def deployed(
    request: pytest.FixtureRequest,
    pyz_path: Path,
    env: dict[str, str],
    tmp_path: Path,
    prepare: Callable[[ServerProcess], dict[str, str]],
) -> Iterator[list[ServerProcess]]:
    """The servers of a ``deployment`` fixture's param: one process, a ``--workers 2`` group, or two
    PostgreSQL replicas of one database; ``prepare`` makes the keys (and budgets) on the first before
    any starts. Stopped after the test, their logs free of tracebacks."""
    if request.param == "replicas":
        url = request.getfixturevalue("pg_url")
        servers = [ServerProcess(pyz_path, url, env) for _ in range(2)]
    else:
        args = ["--workers", "2"] if request.param == "workers" else []
        servers = [ServerProcess(pyz_path, tmp_path / "stockyard.db", env, args)]
    secrets = prepare(servers[0])
    for server in servers:
        server.keys = secrets
        server.start()
    yield servers
    for server in servers:
        server.stop()
    for server in servers:
        assert "Traceback" not in server.log, server.log[-3000:]

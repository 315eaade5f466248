"""Raw-socket HTTP for edge tests: bytes exactly as written, answers read without a client library."""

from __future__ import annotations

import re
import socket
import time


def connect(server, source: str | None = None) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", server.port), timeout=5, source_address=(source, 0) if source else None
    )


def read_until_close(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes (which it must do within ``timeout``)."""
    data, deadline = b"", time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"the server kept the connection open: {data[:300]!r}"
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except socket.timeout:
            raise AssertionError(f"the server neither answered nor closed in {timeout}s: {data[:300]!r}") from None
        if not chunk:
            return data
        data += chunk


def read_response(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One response (Content-Length framed) read without waiting for the connection to close."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def statuses(data: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"^HTTP/1\.1 (\d{3}) ", data, re.M)]

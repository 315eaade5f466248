"""pg8000 travels inside stockyard.pyz: a bare ``python3 -I`` (no site packages) connects with it."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from stockyard.dburl import parse_postgres
from stockyard.store.backends import PostgresBackend
from stockyard.store.pg import PgConnection

SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import pg8000.native
assert pg8000.__file__.startswith(sys.argv[1]), pg8000.__file__
url, port, password = sys.argv[2], int(sys.argv[3]), sys.argv[4]
conn = pg8000.native.Connection("stockyard", host="127.0.0.1", port=port, password=password, database=url)
print(conn.run("SELECT 40 + 2")[0][0])
"""


def test_bare_python_imports_bundled_pg8000_and_connects(pyz_path, pg_cluster, pg_url):
    database = pg_url.rsplit("/", 1)[1].split("?")[0]
    done = subprocess.run(
        [sys.executable, "-I", "-c", SCRIPT, str(pyz_path), database, str(pg_cluster.port), pg_cluster.password],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_connections_send_each_message_at_once(pg_cluster, sslmode):
    """TCP_NODELAY, as libpq sets it: with Nagle's algorithm the tail of a large message (a
    multi-row INSERT) waited for the server's delayed ACK, ~0.4 ms of idle time per trace."""
    url = pg_cluster.database().replace("sslmode=disable", f"sslmode={sslmode}")
    conn = PostgresBackend(parse_postgres(url, {})).connect()
    assert isinstance(conn, PgConnection)
    try:
        assert conn._conn._usock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        conn._reopen()  # as after PostgreSQL restarted
        assert conn._conn._usock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        conn.close()

"""pg8000 travels inside stockyard.pyz: a bare ``python3 -I`` (no site packages) connects with it."""

from __future__ import annotations

import subprocess
import sys

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

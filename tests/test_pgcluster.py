"""The test PostgreSQL server: reachable with its password only, one fresh database per test."""

from __future__ import annotations

import pg8000.native
import pytest


def test_fresh_database_per_test_with_password_auth(pg_cluster, pg_url):
    conn = pg_cluster.admin(pg_url.rsplit("/", 1)[1].split("?")[0])
    try:
        assert conn.run("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [[0]]
        conn.run("CREATE TABLE t (x int)")
    finally:
        conn.close()
    with pytest.raises(pg8000.native.DatabaseError, match="password authentication failed"):
        pg8000.native.Connection("stockyard", host="127.0.0.1", port=pg_cluster.port, password="wrong")


def test_another_test_gets_another_database(pg_url, pg_cluster):
    conn = pg_cluster.admin(pg_url.rsplit("/", 1)[1].split("?")[0])
    try:
        assert conn.run("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [[0]]
        assert conn.run("SELECT current_user") == [["stockyard"]]
    finally:
        conn.close()


def test_server_runs_unprivileged_inside_its_folder(pg_cluster):
    import os

    owner = os.stat(pg_cluster.data).st_uid
    assert owner != 0 or os.geteuid() != 0
    assert pg_cluster.data.parent == pg_cluster.folder

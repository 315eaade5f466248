"""A throwaway PgBouncer in front of a throwaway PostgreSQL server (tests/pgcluster.py).

Teams on managed PostgreSQL often reach it through a pooler (PgBouncer, Supabase's on port 6543,
Neon's pooled URL), most often in transaction mode: a client's statements go to whichever server
connection is free, one transaction at a time. This runs the real thing: ``pgbouncer`` (Debian's
package) in a temp folder of its own, as the unprivileged account the cluster runs as (PgBouncer
refuses root), on a free port, every database of the cluster reachable by its own name (the ``*``
entry) in ``pool_mode`` (transaction by default; ``alias`` adds a name in another mode).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pgcluster import RUN_AS, USER, Cluster, free_port


def find_pgbouncer() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )


class Bouncer:
    """One PgBouncer: ``start()``, ``url(cluster_url)`` for the same database through it, ``stop()``."""

    def __init__(self, cluster: Cluster, pool_mode: str = "transaction", pool_size: int = 40) -> None:
        self.cluster = cluster
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.folder = Path(tempfile.mkdtemp(prefix="stockyard-pgbouncer-"))
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._aliases: dict[str, str] = {}  # name → its entry's options

    def _config(self) -> str:
        target = f"host=127.0.0.1 port={self.cluster.port}"
        aliases = "".join(f"{name} = {target} {options}\n" for name, options in self._aliases.items())
        return (
            f"[databases]\n{aliases}* = {target}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {self.folder / 'users.txt'}\n"
            f"pool_mode = {self.pool_mode}\ndefault_pool_size = {self.pool_size}\nmax_client_conn = 1000\n"
            f"logfile = {self.folder / 'log'}\npidfile = {self.folder / 'pid'}\n"
            f"admin_users = {USER}\n"
        )

    def _write_config(self) -> None:
        (self.folder / "pgbouncer.ini").write_text(self._config())

    def start(self) -> "Bouncer":
        binary = find_pgbouncer()
        if binary is None:
            raise RuntimeError("PgBouncer is not installed; `make test` installs it (apt-get install pgbouncer)")
        (self.folder / "users.txt").write_text(f'"{USER}" "{self.cluster.password}"\n')
        as_root = os.geteuid() == 0
        for _ in range(3):  # the free port can be taken between choosing and binding: try another
            self.port = free_port()
            self._write_config()
            if as_root:
                owner = pwd.getpwnam(RUN_AS)
                for path in (self.folder, *self.folder.iterdir()):
                    os.chown(path, owner.pw_uid, owner.pw_gid)
            account = {"user": RUN_AS, "group": pwd.getpwnam(RUN_AS).pw_gid, "extra_groups": []} if as_root else {}
            self._proc = subprocess.Popen(
                [binary, str(self.folder / "pgbouncer.ini")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                **account,  # type: ignore[arg-type]
            )
            if self._listening():
                return self
            self._proc.kill()
            self._proc.wait()
        raise RuntimeError(f"pgbouncer did not start:\n{self.log()}")

    def _listening(self) -> bool:
        """Until PgBouncer accepts connections on its port, or exits."""
        import socket

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.02)  # polling a port that is not open yet: no event to wait on
        return False

    def alias(self, database: str, pool_mode: str = "session", pool_size: int | None = None) -> str:
        """A second name for ``database`` that PgBouncer pools in ``pool_mode`` (in a pool of
        ``pool_size`` server sessions, else the default); reloads PgBouncer."""
        name = f"{database}_{pool_mode}{pool_size or ''}"
        self._aliases[name] = f"dbname={database} pool_mode={pool_mode}" + (
            f" pool_size={pool_size}" if pool_size else ""
        )
        self._write_config()
        self.admin("RELOAD")
        return name

    def admin(self, command: str) -> list:
        """A command on PgBouncer's admin console (SHOW POOLS, RELOAD), its rows."""
        import pg8000.native

        conn = pg8000.native.Connection(
            USER, host="127.0.0.1", port=self.port, password=self.cluster.password, database="pgbouncer"
        )
        try:
            return conn.run(command) or []
        finally:
            conn.close()

    def url(self, cluster_url: str, database: str | None = None) -> str:
        """``cluster_url`` through PgBouncer (optionally under another database name)."""
        parts = urlsplit(cluster_url)
        netloc = parts.netloc.rsplit(":", 1)[0] + f":{self.port}"
        return urlunsplit((parts.scheme, netloc, f"/{database}" if database else parts.path, parts.query, ""))

    def log(self) -> str:
        path = self.folder / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

"""A throwaway PostgreSQL server for the tests: ``initdb`` + ``pg_ctl`` in a temp folder.

The cluster lives entirely inside one ``tempfile.mkdtemp`` folder (data, socket, log,
password file) and is removed with it. PostgreSQL refuses to run as root, so when the
tests run as root the server runs as the existing unprivileged ``nobody`` account
(``runuser``), which owns only that folder. It listens on 127.0.0.1 on a free port with
scram-sha-256 password authentication, like a real deployment.

Measured here: initdb + start take ~0.7 s, so each pytest-xdist worker starts its own
cluster (no cross-process sharing to get wrong); each test gets a fresh database
(``CREATE DATABASE``, ~50 ms). TLS is on, with a certificate for 127.0.0.1 from a test CA
(``ca_file``), so ``sslmode=verify-full`` is tested against a real server.
"""

from __future__ import annotations

import datetime
import glob
import ipaddress
import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pg8000.native
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

USER = "stockyard"
RUN_AS = "nobody"  # an existing account; no system user is created


def find_bin(name: str) -> str | None:
    """``initdb``/``pg_ctl`` from PATH, else the newest Debian install under /usr/lib/postgresql."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return candidates[-1] if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One PostgreSQL server; ``start()``, ``database()`` for a fresh database URL, ``stop()``."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="stockyard-pg-"))
        self.data = self.folder / "data"
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self._options = ""
        self._names = itertools.count(1)
        self._as_root = os.geteuid() == 0
        self.ca_file = self.folder / "ca.pem"

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        if self._as_root:
            cmd = ("runuser", "-u", RUN_AS, "--", *cmd)
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    def start(self) -> "Cluster":
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("PostgreSQL is not installed (no initdb/pg_ctl); `make test` installs it")
        pwfile = self.folder / "pw"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self._as_root:
            owner = pwd.getpwnam(RUN_AS)
            for path in (self.folder, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        done = self._run(
            initdb, "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "-A", "scram-sha-256", "-E", "UTF8",
            "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr}")
        pwfile.unlink()
        self._make_certificates()
        # Durability off: a test database never outlives the run, and fsyncs would dominate.
        options = (
            f"-c listen_addresses=127.0.0.1 -c unix_socket_directories={self.folder} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
            f"-c ssl=on -c ssl_cert_file={self.data / 'server.crt'} -c ssl_key_file={self.data / 'server.key'}"
        )
        self._options = options
        for _ in range(3):  # the free port can be taken between choosing and binding: try another
            self.port = free_port()
            if self.start_server(check=False):
                return self
        raise RuntimeError(f"pg_ctl start failed:\n{self.log()}")

    def start_server(self, check: bool = True) -> bool:
        """Start (again) on the same port and data; True when it runs."""
        done = self._run(
            find_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "-t", "30",
            "-o", f"{self._options} -p {self.port}", "start",
        )  # fmt: skip
        if check and done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}\n{self.log()}")
        return done.returncode == 0

    def stop_server(self) -> None:
        """Stop the server, keeping its data (a database outage in the middle of a test)."""
        self._run(find_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def _make_certificates(self) -> None:
        """A test CA (``ca_file``) and a server certificate for 127.0.0.1 only: TLS clients can
        verify the server, and a client that connects by another name must fail the host check."""
        ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stockyard test PostgreSQL CA")])
        now = datetime.datetime.now(datetime.timezone.utc)

        def cert(subject: x509.Name, key, ca: bool) -> x509.Certificate:
            builder = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            )
            if not ca:
                san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
                builder = builder.add_extension(san, critical=False)
            return builder.sign(ca_key, hashes.SHA256())

        server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        self.ca_file.write_bytes(cert(ca_name, ca_key, True).public_bytes(serialization.Encoding.PEM))
        crt, key = self.data / "server.crt", self.data / "server.key"
        crt.write_bytes(cert(server_name, server_key, False).public_bytes(serialization.Encoding.PEM))
        key.write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key.chmod(0o600)
        if self._as_root:
            owner = pwd.getpwnam(RUN_AS)
            for path in (crt, key):
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def log(self) -> str:
        path = self.folder / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def url(self, database: str, *, password: bool = True) -> str:
        auth = f"{USER}:{self.password}" if password else USER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def admin(self, database: str = "postgres") -> pg8000.native.Connection:
        return pg8000.native.Connection(
            USER, host="127.0.0.1", port=self.port, password=self.password, database=database
        )

    def database(self, icu_locale: str | None = None) -> str:
        """A new, empty database (ordering text by ``icu_locale``, e.g. 'und', instead of the
        cluster's C locale, as a production database in en_US would); returns its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        conn = self.admin()
        icu = f" LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'" if icu_locale else ""
        try:
            conn.run(f"CREATE DATABASE {name} TEMPLATE template0{icu}")
        finally:
            conn.close()
        return self.url(name)

    def stop(self) -> None:
        """Stop at once (``-m immediate``: nothing to keep) and remove the folder."""
        pg_ctl = find_bin("pg_ctl")
        if pg_ctl and (self.data / "postmaster.pid").exists():
            self._run(pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

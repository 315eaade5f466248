"""--db / STOCKYARD_DB: a path is SQLite, a postgresql:// URL is PostgreSQL; the password never prints."""

from __future__ import annotations

import datetime
import sqlite3
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stockyard import config
from stockyard.dburl import PostgresURL, parse_postgres

SECRET = "s3cr%40t-pw"  # URL-encoded: the password is s3cr@t-pw


def test_a_path_stays_sqlite_and_a_url_selects_postgresql(tmp_path):
    settings = config.load({"db": str(tmp_path / "x.db")}, env={})
    assert settings.db_url is None and settings.database == tmp_path / "x.db"
    settings = config.load({}, env={"STOCKYARD_DB": f"postgresql://sy:{SECRET}@db.internal:6543/prod?sslmode=require"})
    url = settings.db_url
    assert isinstance(url, PostgresURL) and settings.database is url
    assert (url.user, url.host, url.port, url.database, url.sslmode) == ("sy", "db.internal", 6543, "prod", "require")
    assert url.password == "s3cr@t-pw"
    assert url.connect_args()["password"] == "s3cr@t-pw"


def test_the_password_is_masked_wherever_the_url_is_shown():
    settings = config.load({"db": f"postgresql://sy:{SECRET}@127.0.0.1/prod"}, env={})
    shown = [str(settings.database), repr(settings.database), repr(settings), f"{settings.db_url}"]
    for text in shown:
        assert "s3cr" not in text, text
    assert str(settings.database) == "postgresql://sy:***@127.0.0.1:5432/prod?sslmode=disable"


def test_password_from_pgpassword_then_from_a_file(tmp_path):
    url = "postgresql://sy@127.0.0.1/prod"
    assert parse_postgres(url, {}).password is None
    assert parse_postgres(url, {"PGPASSWORD": "from-env"}).password == "from-env"
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    assert parse_postgres(url, {"STOCKYARD_DB_PASSWORD_FILE": str(secret_file)}).password == "from-file"
    both = {"PGPASSWORD": "from-env", "STOCKYARD_DB_PASSWORD_FILE": str(secret_file)}
    assert parse_postgres(url, both).password == "from-env"
    assert parse_postgres("postgresql://sy:inurl@127.0.0.1/prod", both).password == "inurl"
    with pytest.raises(ValueError, match="STOCKYARD_DB_PASSWORD_FILE: cannot read"):
        parse_postgres(url, {"STOCKYARD_DB_PASSWORD_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(
    "url, message",
    [
        (f"postgresql://sy:{SECRET}@h/db?sslmode=prefer", "sslmode must be one of"),
        (f"postgresql://sy:{SECRET}@h/db?sslcert=x", "unknown database URL parameter"),
        (f"postgresql://sy:{SECRET}@h/", "needs postgresql://user@host"),
        (f"postgresql://sy:{SECRET}@h:99999/db", "invalid port"),
    ],
)
def test_bad_urls_are_refused_without_echoing_the_password(url, message):
    with pytest.raises(ValueError, match=message) as caught:
        config.load({"db": url}, env={})
    assert "s3cr" not in str(caught.value)


def _ca_file(folder: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stockyard test DB CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_sslmodes_make_the_right_tls_context(tmp_path):
    assert parse_postgres("postgresql://sy@127.0.0.1/db", {}).ssl_context() is None  # loopback: plain by default
    require = parse_postgres("postgresql://sy@db.internal/db?sslmode=require", {}).ssl_context()
    assert require is not None and require.verify_mode == ssl.CERT_NONE and not require.check_hostname
    default = parse_postgres("postgresql://sy@db.internal/db", {})
    assert default.sslmode == "verify-full"  # not loopback and no sslmode: verify
    ca = _ca_file(tmp_path)
    full = parse_postgres(f"postgresql://sy@db.internal/db?sslmode=verify-full&sslrootcert={ca}", {}).ssl_context()
    assert full is not None and full.verify_mode == ssl.CERT_REQUIRED and full.check_hostname
    assert [c["subject"] for c in full.get_ca_certs()] == [((("commonName", "Stockyard test DB CA"),),)]


def test_snapshots_are_for_sqlite_files(tmp_path):
    with pytest.raises(ValueError, match="--snapshot .* copies an SQLite database file"):
        config.load({"db": "postgresql://sy@127.0.0.1/db", "snapshot": str(tmp_path / "snap.db")}, env={})


def test_verify_full_checks_the_servers_certificate_and_name(pg_cluster, pg_url, tmp_path):
    """Against the test server's TLS: its CA verifies, another CA does not, nor another host name."""
    from stockyard.store.backends import PostgresBackend

    database = pg_url.rsplit("/", 1)[1].split("?")[0]
    base = f"postgresql://stockyard:{pg_cluster.password}@{{host}}:{pg_cluster.port}/{database}"
    good = parse_postgres(base.format(host="127.0.0.1") + f"?sslmode=verify-full&sslrootcert={pg_cluster.ca_file}", {})
    conn = PostgresBackend(good).connect()
    try:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is True
    finally:
        conn.close()
    other_ca = _ca_file(tmp_path)
    for url, why in (
        (base.format(host="127.0.0.1") + f"?sslmode=verify-full&sslrootcert={other_ca}", "CERTIFICATE_VERIFY_FAILED"),
        (base.format(host="localhost") + f"?sslmode=verify-full&sslrootcert={pg_cluster.ca_file}", "ostname"),
    ):
        with pytest.raises(sqlite3.OperationalError, match=why) as caught:
            PostgresBackend(parse_postgres(url, {})).connect()
        assert pg_cluster.password not in str(caught.value)
    for mode, encrypted in (("require", True), ("disable", False)):  # require: encrypted, unverified
        url = parse_postgres(base.format(host="127.0.0.1") + f"?sslmode={mode}", {})
        conn = PostgresBackend(url).connect()
        try:
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is encrypted
        finally:
            conn.close()

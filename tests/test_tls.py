"""Upstream TLS: verification is on, against the system store or the CA in SSL_CERT_FILE."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl

import pytest
from conftest import ServerProcess, base_env, wait_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mock_upstream import MockUpstream

HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def tls_mock(tmp_path_factory):
    """A mock provider serving HTTPS with a certificate from a throwaway CA."""
    folder = tmp_path_factory.mktemp("tls")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stockyard test CA")])
    ca = _cert("Stockyard test CA", ca_key, ca_name, ca_key, ca=True)
    leaf = _cert("127.0.0.1", key, ca_name, ca_key, ca=False)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (folder / "leaf.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "leaf.pem", folder / "leaf.key")
    with MockUpstream(tls=context) as upstream:
        yield upstream, folder / "ca.pem"


def run(pyz_path, cache_home, tmp_path, upstream, extra_env: dict) -> tuple[int, dict]:
    env = {
        **base_env(cache_home),
        "OPENAI_API_KEY": "sk-test-tls-123456",
        "OPENAI_BASE_URL": upstream.url + "/v1",
        **extra_env,
    }
    server = ServerProcess(pyz_path, tmp_path / "tls.db", env).start()
    try:
        status, _, body = server.request("POST", "/v1/chat/completions", HELLO)
        return status, json.loads(body)
    finally:
        server.stop()


def test_trusted_ca_from_ssl_cert_file(pyz_path, cache_home, tmp_path, tls_mock):
    upstream, ca_file = tls_mock
    status, body = run(pyz_path, cache_home, tmp_path, upstream, {"SSL_CERT_FILE": str(ca_file)})
    assert status == 200 and body["choices"][0]["message"]["content"] == "Hello from mock"


def test_untrusted_certificate_is_refused(pyz_path, cache_home, tmp_path, tls_mock):
    upstream, _ = tls_mock
    status, body = run(pyz_path, cache_home, tmp_path, upstream, {})
    assert status == 502 and body["error"]["code"] == "upstream_connect" and "TLS" in body["error"]["message"]


def test_a_certificate_naming_another_host_is_refused_and_sni_names_the_provider(
    pyz_path, cache_home, tmp_path, tls_mock
):
    """``Pool._open`` wraps the socket itself: the name in the base URL goes as SNI and is checked
    against the certificate, which a trusted CA issued for 127.0.0.1 only (not for ``localhost``)."""
    upstream, ca_file = tls_mock
    seen: list[str | None] = []
    upstream.tls.sni_callback = lambda sock, name, context: seen.append(name)
    env = {"SSL_CERT_FILE": str(ca_file), "OPENAI_BASE_URL": f"https://localhost:{upstream.port}/v1"}
    try:
        status, body = run(pyz_path, cache_home, tmp_path, upstream, env)
        assert status == 502 and body["error"]["code"] == "upstream_connect", body
        assert "CERTIFICATE_VERIFY_FAILED" in body["error"]["message"] and "localhost" in body["error"]["message"]
        assert seen == ["localhost"]
        seen.clear()
        status, _ = run(pyz_path, cache_home, tmp_path, upstream, {"SSL_CERT_FILE": str(ca_file)})
        assert status == 200 and seen == [None]  # an address: no SNI, checked against the certificate's IP
    finally:
        upstream.tls.sni_callback = None


def trusting_server(pyz_path, cache_home, tmp_path, tls_mock) -> ServerProcess:
    """A server started with the TLS mock as its OpenAI provider and the mock's CA trusted."""
    upstream, ca_file = tls_mock
    env = {
        **base_env(cache_home),
        "OPENAI_API_KEY": "sk-test-tls-123456",
        "OPENAI_BASE_URL": upstream.url + "/v1",
        "SSL_CERT_FILE": str(ca_file),
    }
    return ServerProcess(pyz_path, tmp_path / "tls.db", env).start()


def test_realtime_relayed_over_tls(pyz_path, cache_home, tmp_path, tls_mock):
    """The Realtime API's provider side over wss (TLS read and written by two threads): an audio
    response arrives whole, with its response.done, and is traced with a cost."""
    server = trusting_server(pyz_path, cache_home, tmp_path, tls_mock)
    try:
        with server.openai("any").realtime.connect(model="gpt-realtime") as conn:
            assert conn.recv().type == "session.created"
            conn.response.create(response={"output_modalities": ["audio"]})
            events = [conn.recv()]
            while events[-1].type not in ("response.done", "error"):
                events.append(conn.recv())
        assert events[-1].type == "response.done", events[-1]
        assert sum(e.type == "response.output_audio.delta" for e in events) == 3
        sql = "SELECT cost_uc FROM traces WHERE endpoint = 'realtime'"
        rows = wait_for(lambda: server.db_rows(sql), 10, "the trace")
        assert rows[0]["cost_uc"] > 0
    finally:
        server.stop()


def test_realtime_session_over_tls(pyz_path, cache_home, tmp_path, tls_mock):
    """The Realtime relay to an https provider: the provider's WebSocket over TLS, read on one thread
    while the client's appends are written on another (the SSL object used from both), a dozen audio
    responses each billed, then closed cleanly."""
    from test_realtime import pcm
    from test_responses_websocket import Raw

    server = trusting_server(pyz_path, cache_home, tmp_path, tls_mock)
    try:
        raw = Raw(server, None, path="/v1/realtime?model=gpt-realtime")
        assert raw.status == 101, raw.head
        assert raw.event()["type"] == "session.created"
        for _ in range(12):
            raw.send_json({"type": "input_audio_buffer.append", "audio": pcm(0.5)})
            raw.send_json({"type": "response.create", "response": {"output_modalities": ["audio"]}})
            for _ in range(5):  # written while the provider's answer is read
                raw.send_json({"type": "input_audio_buffer.append", "audio": pcm(0.5)})
            assert raw.until("response.done")[-1]["type"] == "response.done"
        raw.send_frame(0x8, b"\x03\xe8")
        assert raw.close_code() == 1000
        raw.close()
        sql = "SELECT cost_uc FROM traces WHERE endpoint = 'realtime'"
        rows = wait_for(lambda: (found := server.db_rows(sql)) and len(found) >= 12 and found, 10, "billed")
        assert len(rows) == 12 and all(row["cost_uc"] > 0 for row in rows)
    finally:
        server.stop()
    assert "Traceback" not in server.log

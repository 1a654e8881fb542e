"""Key material as operators and remote mail systems see it: files, DNS records, signatures, TLS handshakes."""

import base64
import re
import socket
import ssl
import stat
import threading
from pathlib import Path

import dkim
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from policy.keys import (
    KeyMaterialError,
    check_tls_files,
    dkim_dns_record,
    dkim_public_value,
    generate_dkim_key,
    generate_tls_cert,
    load_private_key,
    server_ssl_context,
    write_private,
)

MESSAGE = (
    b"From: Alice <alice@websofttt.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: Hello\r\n"
    b"Date: Tue, 25 Nov 2025 11:00:00 +0000\r\n"
    b"Message-ID: <1@websofttt.com>\r\n"
    b"\r\n"
    b"Hi Bob.\r\n"
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def spki_der(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def txt_value(record: str) -> str:
    """What a resolver returns for the record: its character-strings concatenated."""
    return "".join(re.findall(r'"([^"]*)"', record))


def write_pem_key(path: Path, key) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


@pytest.fixture
def dkim_key_path(tmp_path):
    path = tmp_path / "var" / "keys" / "dkim.pem"
    generate_dkim_key(path)
    return path


@pytest.fixture
def tls_files(tmp_path):
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    generate_tls_cert(cert, key, "relay.websofttt.com")
    return cert, key


# --- files -------------------------------------------------------------------------------------


def test_generated_dkim_key_is_rsa_2048_pkcs8_private_file(dkim_key_path):
    key = load_private_key(dkim_key_path)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert dkim_key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert mode(dkim_key_path) == 0o600
    assert mode(dkim_key_path.parent) == 0o700
    assert mode(dkim_key_path.parent.parent) == 0o700


def test_generating_twice_keeps_the_published_key(dkim_key_path):
    before = dkim_key_path.read_bytes()
    generate_dkim_key(dkim_key_path)
    assert dkim_key_path.read_bytes() == before


def test_write_private_replaces_a_readable_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert path.read_bytes() == b"new"
    assert mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_failed_write_private_leaves_no_temporary_file(tmp_path):
    (tmp_path / "secret").mkdir()  # the final rename onto a directory fails
    with pytest.raises(IsADirectoryError):
        write_private(tmp_path / "secret", b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


@pytest.mark.parametrize(
    "content, reason",
    [
        (None, "No such file or directory"),
        (b"not a key\n", "not a PEM private key"),
        ("ec", "key type must be RSA or Ed25519"),
    ],
)
def test_unusable_dkim_key_is_named_with_the_reason(tmp_path, content, reason):
    path = tmp_path / "dkim.pem"
    if content == "ec":
        write_pem_key(path, ec.generate_private_key(ec.SECP256R1()))
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(KeyMaterialError) as err:
        load_private_key(path)
    assert str(err.value) == f"{path}: cannot read DKIM key: {reason}"


# --- DKIM DNS record -------------------------------------------------------------------------------


def test_dns_record_is_a_zone_file_line_with_strings_of_at_most_255_chars(dkim_key_path):
    key = load_private_key(dkim_key_path)
    record = dkim_dns_record("s1", "WebSoftTT.com.", key)

    assert re.fullmatch(r'^s1\._domainkey\.websofttt\.com\. IN TXT "[^"]+"( "[^"]+")+$', record), record
    strings = re.findall(r'"([^"]*)"', record)
    assert all(len(s) <= 255 for s in strings)
    assert len(strings[0]) == 255  # split only where needed
    value = "".join(strings)
    prefix = "v=DKIM1; k=rsa; p="
    assert value.startswith(prefix)
    assert base64.b64decode(value[len(prefix) :], validate=True) == spki_der(key)


def test_dkimpy_verifies_a_signature_against_the_published_record(dkim_key_path):
    key = load_private_key(dkim_key_path)
    published = txt_value(dkim_dns_record("s1", "websofttt.com", key)).encode()
    looked_up = []

    def dnsfunc(name, timeout=5):
        looked_up.append(name)
        return published

    signature = dkim.sign(MESSAGE, b"s1", b"websofttt.com", dkim_key_path.read_bytes())
    assert dkim.verify(signature + MESSAGE, dnsfunc=dnsfunc)
    assert looked_up == [b"s1._domainkey.websofttt.com."]


def test_dkimpy_rejects_a_signature_made_with_another_key(dkim_key_path, tmp_path):
    other_path = tmp_path / "other.pem"
    generate_dkim_key(other_path)
    published = txt_value(dkim_dns_record("s1", "websofttt.com", load_private_key(dkim_key_path)))

    signature = dkim.sign(MESSAGE, b"s1", b"websofttt.com", other_path.read_bytes())
    assert not dkim.verify(signature + MESSAGE, dnsfunc=lambda name, timeout=5: published.encode())


def test_ed25519_record_carries_the_raw_32_byte_key(tmp_path):
    path = tmp_path / "ed.pem"
    write_pem_key(path, ed25519.Ed25519PrivateKey.generate())
    key = load_private_key(path)

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert base64.b64decode(dkim_public_value(key)) == raw
    assert len(dkim_public_value(key)) == 44
    assert dkim_dns_record("ed1", "websofttt.com", key) == (
        f'ed1._domainkey.websofttt.com. IN TXT "v=DKIM1; k=ed25519; p={dkim_public_value(key)}"'
    )


# --- TLS -------------------------------------------------------------------------------------------


def test_generated_certificate_is_a_server_leaf_for_the_node(tls_files):
    cert_path, key_path = tls_files
    check_tls_files(cert_path, key_path)
    assert mode(key_path) == 0o600
    assert mode(cert_path) == 0o644

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["relay.websofttt.com", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_generating_the_certificate_twice_keeps_both_files(tls_files):
    cert_path, key_path = tls_files
    before = cert_path.read_bytes(), key_path.read_bytes()
    generate_tls_cert(cert_path, key_path, "other.example")
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before


def test_server_context_requires_tls_1_2(tls_files):
    assert server_ssl_context(*tls_files).minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("server_hostname", ["localhost", "relay.websofttt.com"])
def test_tls_handshake_with_a_client_that_trusts_the_certificate(tls_files, server_hostname):
    cert_path, key_path = tls_files
    server_context = server_ssl_context(cert_path, key_path)
    errors = []

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve_once():
        try:
            conn, _ = listener.accept()
            with server_context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(tls.recv(1024))
        except Exception as e:  # reported to the test below
            errors.append(e)

    thread = threading.Thread(target=serve_once)
    thread.start()
    try:
        client_context = ssl.create_default_context(cafile=cert_path)
        assert client_context.check_hostname
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with client_context.wrap_socket(raw, server_hostname=server_hostname) as tls:
                tls.sendall(b"EHLO client\r\n")
                assert tls.recv(1024) == b"EHLO client\r\n"
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        thread.join(10)
        listener.close()
    assert errors == []


def test_missing_certificate_is_named(tls_files, tmp_path):
    missing = tmp_path / "nowhere" / "cert.pem"
    with pytest.raises(KeyMaterialError) as err:
        check_tls_files(missing, tls_files[1])
    assert str(err.value) == f"{missing}: cannot read TLS certificate: No such file or directory"


def test_missing_key_is_named(tls_files, tmp_path):
    missing = tmp_path / "key-missing.pem"
    with pytest.raises(KeyMaterialError) as err:
        check_tls_files(tls_files[0], missing)
    assert str(err.value) == f"{missing}: cannot read TLS key: No such file or directory"


def test_garbage_certificate_is_named(tls_files):
    cert_path, key_path = tls_files
    cert_path.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(KeyMaterialError) as err:
        check_tls_files(cert_path, key_path)
    assert str(err.value) == f"{cert_path}: cannot read TLS certificate: not a PEM X.509 certificate"


def test_key_of_another_certificate_is_refused(tls_files, tmp_path):
    cert_path, _ = tls_files
    other_cert, other_key = tmp_path / "other" / "cert.pem", tmp_path / "other" / "key.pem"
    generate_tls_cert(other_cert, other_key, "relay.websofttt.com")

    with pytest.raises(KeyMaterialError) as err:
        check_tls_files(cert_path, other_key)
    assert str(err.value) == f"{other_key}: TLS key does not match the certificate in {cert_path}"
    with pytest.raises(KeyMaterialError, match="does not match"):
        server_ssl_context(cert_path, other_key)

"""Key material made by `websofttt init` and checked at start-up: the DKIM key and the TLS certificate.

Everything here fails with a KeyMaterialError whose message names the file and the problem, so the
CLI can print it and exit 2 instead of showing an OpenSSL traceback.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DkimKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

_TXT_STRING_MAX = 255  # RFC 1035: one character-string holds at most 255 octets
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])


class KeyMaterialError(Exception):
    """A key or certificate file is missing, unreadable or unusable; the message names the file."""


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file in the same directory so a crash never leaves a half-written key."""
    _make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _make_dirs(directory: Path) -> None:
    """Create missing directories with mode 0700 (Path.mkdir(parents=True) ignores mode for parents)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically with mode 0600; missing parent directories are created 0700."""
    _write_atomic(path, data, 0o600)


def new_dkim_pem() -> bytes:
    """A new RSA-2048 DKIM key as unencrypted PKCS#8 PEM."""
    return _private_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def generate_dkim_key(path: Path, ed25519_key: bool = False) -> None:
    """Create an RSA-2048 (or Ed25519) PKCS#8 PEM key; an existing key is kept, since replacing it breaks
    the published DNS record."""
    if path.exists():
        return
    write_private(path, _private_pem(ed25519.Ed25519PrivateKey.generate()) if ed25519_key else new_dkim_pem())


def _private_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise KeyMaterialError(f"{path}: cannot read {what}: {e.strerror or e}") from None


def _load_key(path: Path, what: str) -> PrivateKeyTypes:
    data = _read(path, what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        reason = "the key is encrypted; an unencrypted PEM key is required"
    except UnsupportedAlgorithm:
        reason = "unsupported key algorithm"
    except ValueError:
        reason = "not a PEM private key"
    raise KeyMaterialError(f"{path}: cannot read {what}: {reason}")


def load_private_key(path: Path) -> DkimKey:
    """Load the DKIM signing key; only RSA (at least 1024 bits, RFC 8301) and Ed25519 can sign DKIM."""
    key = _load_key(path, "DKIM key")
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:
            raise KeyMaterialError(
                f"{path}: cannot read DKIM key: RSA key of {key.key_size} bits is too short (at least 1024)"
            )
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise KeyMaterialError(f"{path}: cannot read DKIM key: key type must be RSA or Ed25519")


def _key_type(key: DkimKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise TypeError(f"not a DKIM key: {type(key).__name__}")


def dkim_public_value(key: DkimKey) -> str:
    """The p= value: base64 DER SubjectPublicKeyInfo for RSA, the raw 32-byte key for Ed25519 (RFC 8463)."""
    public = key.public_key()
    if _key_type(key) == "rsa":
        der = public.public_bytes(*_SPKI)
    else:
        der = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(der).decode("ascii")


def dkim_dns_record(selector: str, domain: str, key: DkimKey) -> str:
    """Zone-file TXT line; the value is split into quoted strings because one string holds at most 255 characters."""
    value = f"v=DKIM1; k={_key_type(key)}; p={dkim_public_value(key)}"
    chunks = [value[i : i + _TXT_STRING_MAX] for i in range(0, len(value), _TXT_STRING_MAX)]
    quoted = " ".join(f'"{chunk}"' for chunk in chunks)
    return f"{selector}._domainkey.{domain.lower().rstrip('.')}. IN TXT {quoted}"


def generate_tls_cert(cert_path: Path, key_path: Path, hostname: str, days: int = 825) -> None:
    """Self-signed EC P-256 certificate so a fresh node can offer STARTTLS at once; existing files are kept."""
    if cert_path.exists() and key_path.exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    dns_names = dict.fromkeys([hostname, "localhost"])  # ordered, without duplicates
    san = [x509.DNSName(n) for n in dns_names] + [
        x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "::1")
    ]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clients with a slow clock
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _private_pem(key))
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def check_tls_files(cert_path: Path, key_path: Path) -> None:
    """Validate the certificate and key at start-up, so a bad file stops the node with a clear message
    rather than failing later inside a TLS handshake."""
    what = "TLS certificate"
    try:
        certs = x509.load_pem_x509_certificates(_read(cert_path, what))
    except ValueError:
        raise KeyMaterialError(f"{cert_path}: cannot read {what}: not a PEM X.509 certificate") from None
    key = _load_key(key_path, "TLS key")
    if key.public_key().public_bytes(*_SPKI) != certs[0].public_key().public_bytes(*_SPKI):
        raise KeyMaterialError(f"{key_path}: TLS key does not match the certificate in {cert_path}")


def server_ssl_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """The context of every TLS listener, Mozilla's "intermediate" profile: TLS 1.2 and 1.3, and under
    TLS 1.2 only ECDHE with an AEAD cipher (Python's default list also has CBC suites, open to LUCKY13;
    DHE is left out as well). TLS 1.3 keeps OpenSSL's default suites, all AEAD. Raises KeyMaterialError
    like check_tls_files."""
    check_tls_files(cert_path, key_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.load_cert_chain(cert_path, key_path)
    return context

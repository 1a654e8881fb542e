"""Every TLS listener (submission STARTTLS, submission implicit TLS, inbound STARTTLS) offers Mozilla's
"intermediate" profile: TLS 1.2 and 1.3 only, and under TLS 1.2 only ECDHE with an AEAD cipher, so no
CBC suite (LUCKY13), no RSA key exchange (no forward secrecy) and no DHE."""
from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

import pytest
import trustme

from tests.conftest import RunningRelay, make_settings

ROLES = ("submission", "inbound")
LISTENERS = ("submission STARTTLS", "submission implicit TLS", "inbound STARTTLS")
AEAD = {"aes-128-gcm", "aes-256-gcm", "chacha20-poly1305"}
AUTH = {trustme.KeyType.ECDSA: "auth-ecdsa", trustme.KeyType.RSA: "auth-rsa"}


def client(cipher: str = "ALL:COMPLEMENTOFALL", version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> ssl.SSLContext:
    """A client that offers only `version` and `cipher`, even what OpenSSL's security level would hide."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers(f"{cipher}:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = version
    return context


TLS12_CIPHERS = [c for c in client().get_ciphers() if c["protocol"] != "TLSv1.3"]


def handshake(relay: RunningRelay, listener: str, context: ssl.SSLContext) -> tuple[str, str] | None:
    """(TLS version, cipher) that `listener` negotiates with `context`, or None if it refuses."""
    try:
        if listener == "submission implicit TLS":
            smtp = smtplib.SMTP_SSL("127.0.0.1", relay.tls_port, timeout=10, context=context)
        else:
            port = relay.port if listener == "submission STARTTLS" else relay.ports["inbound"][0]
            smtp = smtplib.SMTP("127.0.0.1", port, timeout=10)
            smtp.ehlo("client.example")
            try:
                smtp.starttls(context=context)
            except (ssl.SSLError, OSError):
                smtp.close()
                raise
    except (ssl.SSLError, OSError):
        return None
    negotiated = smtp.sock.version(), smtp.sock.cipher()[0]
    smtp.quit()
    return negotiated


def tls_client_can_offer(version: ssl.TLSVersion, cert: Path, key: Path) -> bool:
    """Whether this Python and OpenSSL can complete a `version` handshake at all, tried in memory against
    a server that accepts anything."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.set_ciphers("ALL:@SECLEVEL=0")
    server.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    server.load_cert_chain(cert, key)
    ends = [(ctx, ssl.MemoryBIO(), ssl.MemoryBIO()) for ctx in (client("DEFAULT", version), server)]
    sides = [ctx.wrap_bio(incoming, outgoing, server_side=ctx is server) for ctx, incoming, outgoing in ends]
    done = [False, False]
    try:
        for _ in range(10):
            for i, side in enumerate(sides):
                try:
                    side.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
                ends[1 - i][1].write(ends[i][2].read())
            if all(done):
                return True
    except ssl.SSLError:
        return False
    return False


@pytest.fixture(params=[trustme.KeyType.ECDSA, trustme.KeyType.RSA], ids=["ecdsa-cert", "rsa-cert"])
def key_type(request) -> trustme.KeyType:
    """The key of the relay's certificate: each makes the server pick from other suites."""
    return request.param


@pytest.fixture
def relay(key_type, relay_factory, tmp_path) -> RunningRelay:
    settings = make_settings(tmp_path / "var")
    settings.tls_cert.parent.mkdir(parents=True)
    leaf = trustme.CA().issue_cert("127.0.0.1", "localhost", key_type=key_type)
    leaf.cert_chain_pems[0].write_to_path(settings.tls_cert)
    leaf.private_key_pem.write_to_path(settings.tls_key)
    return relay_factory(roles=ROLES)


@pytest.mark.parametrize("listener", LISTENERS)
def test_tls12_offers_only_ecdhe_with_aead(relay, key_type, listener):
    accepted = {c["name"] for c in TLS12_CIPHERS if handshake(relay, listener, client(c["name"]))}
    expected = {c["name"] for c in TLS12_CIPHERS
                if c["kea"] == "kx-ecdhe" and c["aead"] and c["symmetric"] in AEAD and c["auth"] == AUTH[key_type]}
    assert expected, "the local OpenSSL knows no ECDHE + AEAD suite for this certificate"
    assert accepted == expected


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"])
def test_tls_before_12_is_refused(relay, listener, version):
    if not tls_client_can_offer(version, relay.settings.tls_cert, relay.settings.tls_key):
        pytest.skip(f"this Python/OpenSSL cannot make a {version.name} handshake even against a permissive server")
    assert handshake(relay, listener, client("DEFAULT", version)) is None


@pytest.mark.parametrize("listener", LISTENERS)
def test_tls13_works(relay, listener):
    negotiated = handshake(relay, listener, client(version=ssl.TLSVersion.TLSv1_3))
    assert negotiated is not None and negotiated[0] == "TLSv1.3"

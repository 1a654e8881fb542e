"""DANE matching (relay/dane.py) on certificate chains from a test CA: the record forms RFC 7672 lets SMTP use,
the ones it does not, and a chain that cannot be read (tests/test_transport_security.py runs it end to end)."""
from __future__ import annotations

import hashlib

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relay import dane

CA = trustme.CA()
INTERMEDIATE = CA.create_child_ca()
LEAF = INTERMEDIATE.issue_cert("mx.example.net")
CHAIN = [x509.load_pem_x509_certificate(b.bytes()).public_bytes(Encoding.DER) for b in LEAF.cert_chain_pems]


def spki(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("record", [
    (3, 1, 1, hashlib.sha256(spki(CHAIN[0])).digest()),
    (3, 1, 2, hashlib.sha512(spki(CHAIN[0])).digest()),
    (3, 0, 0, CHAIN[0]),
    (3, 0, 1, hashlib.sha256(CHAIN[0]).digest()),
    (2, 1, 1, hashlib.sha256(spki(CHAIN[1])).digest()),
    (2, 0, 0, CHAIN[1]),
], ids=["EE-SPKI-SHA256", "EE-SPKI-SHA512", "EE-full-cert", "EE-cert-SHA256", "TA-SPKI-SHA256", "TA-full-cert"])
def test_a_usable_record_matches(record):
    assert dane.matches((record,), CHAIN, "mx.example.net") == ""


def test_dane_ta_checks_the_mx_name_and_dane_ee_does_not():
    ta = (2, 1, 1, hashlib.sha256(spki(CHAIN[1])).digest())
    ee = (3, 1, 1, hashlib.sha256(spki(CHAIN[0])).digest())
    assert dane.matches((ta,), CHAIN, "other.example.net") == "no TLSA record matches the certificate chain"
    assert dane.matches((ee,), CHAIN, "other.example.net") == ""


def test_records_smtp_may_not_use_are_left_out():
    """PKIX-TA (0) and PKIX-EE (1) are unusable for SMTP (RFC 7672 §3.1.3), even when their data matches."""
    pkix = (1, 1, 1, hashlib.sha256(spki(CHAIN[0])).digest())
    assert dane.usable((pkix, (3, 2, 1, b"x"), (3, 1, 9, b"x"))) == ()
    assert dane.matches((pkix,), CHAIN, "mx.example.net") == "no TLSA record matches the certificate chain"


def test_a_chain_that_cannot_be_read_is_no_match_and_says_so():
    record = (3, 1, 1, hashlib.sha256(spki(CHAIN[0])).digest())
    assert dane.matches((record,), [b"not a certificate"], "mx.example.net").startswith(
        "the peer's certificate chain cannot be read")
    assert dane.matches((record,), [], "mx.example.net") == "the peer sent no certificate"

"""DANE for SMTP (RFC 7672): an MX host's TLSA records, looked up only when its MX answer was DNSSEC-secure, and
the peer's certificate chain matched against them.

What a lookup means (RFC 7672 §2.2): secure records → STARTTLS required and the chain must match a usable
one (DANE-TA 2 or DANE-EE 3; records of usage 0 and 1 are unusable for SMTP, §3.1.3), and with none usable,
TLS is still required; a secure denial or an insecure answer → no DANE (opportunistic TLS, or MTA-STS); a
failed lookup (a validating resolver answers SERVFAIL for bogus data) → the host must not be used.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import dns.asyncresolver
import dns.exception
import dns.resolver
from cachetools import TLRUCache
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from policy.settings import Dns
from relay import resolver as relay_dns

DANE_TA, DANE_EE = 2, 3
SPKI = 1
_HASHES: dict[int, Callable[[bytes], bytes]] = {0: lambda b: b, 1: lambda b: hashlib.sha256(b).digest(),
                                                2: lambda b: hashlib.sha512(b).digest()}
CACHE_SECONDS = (60.0, 3600.0)      # a TLSA answer is kept in memory for its TTL, within these bounds
CACHE_SIZE = 100_000                # MX hosts whose answer a worker keeps, at most

Record = tuple[int, int, int, bytes]  # usage, selector, matching type, data


class Bogus(Exception):
    """The TLSA lookup failed: the host cannot be authenticated and is not used (RFC 7672 §2.2)."""


class Tlsa:
    """TLSA answers of MX hosts for one delivery worker, cached for their TTL."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, settings: Dns, clock: Callable[[], float] = time.monotonic):
        self._resolver = resolver
        self._settings = settings
        self._clock = clock
        # (host, port) -> (expiry, records), dropped at its expiry, bounded
        self._cache: TLRUCache[tuple[str, int], tuple[float, tuple[Record, ...] | None]] = TLRUCache(
            CACHE_SIZE, lambda _k, v, _n: v[0], timer=clock)

    async def records(self, host: str, port: int) -> tuple[Record, ...] | None:
        """The host's secure TLSA records, usable or not; None when DANE does not apply; Bogus when the lookup
        failed."""
        cached = self._cache.get((host, port))
        if cached is not None:
            return cached[1]
        try:
            answer = await self._resolver.resolve(f"_{port}._tcp.{host}", "TLSA")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            found, ttl = None, CACHE_SECONDS[0]
        except dns.exception.DNSException as e:
            raise Bogus(f"TLSA lookup for {host} failed: {e}") from None
        else:
            secure = relay_dns.secure(answer, self._settings)
            found = tuple((r.usage, r.selector, r.mtype, r.cert) for r in answer) if secure else None
            ttl = answer.rrset.ttl if answer.rrset else 0
        self._cache[(host, port)] = (self._clock() + min(CACHE_SECONDS[1], max(CACHE_SECONDS[0], ttl)), found)
        return found


def text(record: Record) -> str:
    """A record as TLS-RPT's policy-string gives it: "3 1 1 <hex>"."""
    return f"{record[0]} {record[1]} {record[2]} {record[3].hex()}"


def usable(records: tuple[Record, ...]) -> tuple[Record, ...]:
    return tuple(r for r in records if r[0] in (DANE_TA, DANE_EE) and r[1] in (0, SPKI) and r[2] in _HASHES)


def matches(records: tuple[Record, ...], chain: list[bytes], host: str) -> str:
    """'' when the chain (DER, leaf first, as the peer sent it) matches a usable record; else why not.

    DANE-EE: the leaf alone, no name or date check (RFC 7672 §3.1.1). DANE-TA: a certificate of the chain is the
    trust anchor, and the leaf must chain to it, valid now, for the MX host's name (§3.1.2, §3.2)."""
    if not chain:
        return "the peer sent no certificate"
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
        for usage, selector, mtype, data in usable(records):
            if usage == DANE_EE and _digest(certs[0], selector, mtype) == data:
                return ""
            if usage == DANE_TA:
                for anchor in certs[1:] if len(certs) > 1 else certs:
                    if _digest(anchor, selector, mtype) == data and _chains(certs, anchor, host):
                        return ""
    except (ValueError, UnsupportedAlgorithm) as e:      # a certificate or key cryptography cannot read
        return f"the peer's certificate chain cannot be read ({e})"
    return "no TLSA record matches the certificate chain"


def _digest(cert: x509.Certificate, selector: int, mtype: int) -> bytes:
    data = (cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) if selector == SPKI
            else cert.public_bytes(Encoding.DER))
    return _HASHES[mtype](data)


# The leaf's extensions as SMTP meets them, not the Web PKI's profile (a critical subjectAltName, say, is common
# in private CAs); it must still name the MX host in a subjectAltName.
_LEAF = ExtensionPolicy.permit_all().require_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)


def _chains(certs: list[x509.Certificate], anchor: x509.Certificate, host: str) -> bool:
    verifier = (PolicyBuilder().store(Store([anchor]))
                .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_LEAF)
                .build_server_verifier(x509.DNSName(host)))
    try:
        verifier.verify(certs[0], [c for c in certs[1:] if c != anchor])
    except VerificationError:
        return False
    return True

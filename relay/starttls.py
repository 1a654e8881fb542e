"""STARTTLS on an outbound session, and what it proved.

Opportunistic (RFC 7435): encrypt when the next hop offers it, unverified, and when the handshake fails deliver
in clear on a new session. With a TLS policy (relay/transport.py: MTA-STS or DANE): STARTTLS and the proof the
policy asks for, a certificate valid for the MX name (MTA-STS) or a chain matching the TLSA records (DANE);
without it the session ends after EHLO or the handshake and `TlsRefused` says why, with its RFC 8460 result
type. Under an MTA-STS `testing` policy the failure is only reported, and the copy goes as it would without.
"""
from __future__ import annotations

import _ssl
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable

import aiosmtplib

from policy.settings import Delivery
from policy.tls_reports import SUCCESS
from relay import dane
from relay.pipelining import PipeliningSMTP
from relay.routing import Destination, TlsPolicy

log = logging.getLogger("websofttt.delivery")
Open = Callable[[], Awaitable[PipeliningSMTP]]       # a new session in clear to the destination, greeting read
Session = tuple[PipeliningSMTP, str, str]             # the session, what its TLS is, its TLS-RPT result

# OpenSSL's verify codes (X509_V_ERR_*) and the RFC 8460 §4.3 result types they are reported as
_VERIFY_RESULTS = {10: "certificate-expired", 62: "certificate-host-mismatch", 18: "certificate-not-trusted",
                   19: "certificate-not-trusted", 20: "certificate-not-trusted", 21: "certificate-not-trusted"}


class TlsRefused(Exception):
    """The next hop could not prove what its TLS policy asks; `result` is the RFC 8460 result type."""

    def __init__(self, policy: TlsPolicy, result: str, text: str):
        super().__init__(text)
        self.policy = policy
        self.result = result


class Starttls:
    """The TLS contexts of one courier and the two ways a session gets its TLS."""

    def __init__(self, delivery: Delivery):
        self.timeout = delivery.command_timeout
        self.unverified = ssl.create_default_context()
        self.unverified.check_hostname = False        # opportunistic TLS (RFC 7435): encrypt, do not authenticate
        self.unverified.verify_mode = ssl.CERT_NONE
        ca = delivery.tls_ca_file
        self._named = ssl.create_default_context(cafile=str(ca) if ca else None)   # MTA-STS: valid for the MX name

    async def opportunistic(self, open_session: Open, dest: Destination) -> Session:
        smtp = await open_session()
        await smtp.ehlo(timeout=self.timeout)
        if not smtp.supports_extension("starttls"):
            return smtp, "none", "starttls-not-supported"
        try:
            await smtp.starttls(tls_context=self.unverified, server_hostname=dest.host, timeout=self.timeout)
        except (aiosmtplib.SMTPException, OSError) as e:
            smtp.close()
            log.warning("STARTTLS to %s:%s failed (%s); delivering without TLS", dest.host, dest.port,
                        str(e) or type(e).__name__)
            return await open_session(), "none", "validation-failure"
        return smtp, described(smtp, "not verified"), SUCCESS

    async def proven(self, open_session: Open, dest: Destination) -> Session:
        """STARTTLS with the proof the destination's TLS policy asks for. A failure under an enforced policy
        raises TlsRefused once the session is closed (nothing was sent after EHLO)."""
        policy = dest.tls_policy
        assert policy is not None
        smtp = await open_session()
        await smtp.ehlo(timeout=self.timeout)
        failure = await self._prove(smtp, dest, policy)
        if failure is None:
            proven = policy.kind == "mta-sts" or policy.tlsa
            return smtp, described(smtp, f"verified by {policy.kind}" if proven else "not verified (no usable TLSA)"), SUCCESS
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await smtp.quit(timeout=self.timeout)
        smtp.close()
        if policy.enforce:
            log.warning("%s to %s:%s: %s; not delivered there", policy.kind, dest.host, dest.port, failure)
            raise failure
        log.warning("%s (testing) to %s:%s: %s; delivered as without the policy", policy.kind, dest.host, dest.port,
                    failure)
        smtp, tls, _ = await self.opportunistic(open_session, dest)
        return smtp, f"{tls}; {policy.kind} testing failed: {failure.result}", failure.result

    async def _prove(self, smtp: PipeliningSMTP, dest: Destination, policy: TlsPolicy) -> TlsRefused | None:
        if not smtp.supports_extension("starttls"):
            return TlsRefused(policy, "starttls-not-supported", "STARTTLS not offered")
        context = self._named if policy.kind == "mta-sts" else self.unverified    # DANE: matched below instead
        try:
            await smtp.starttls(tls_context=context, server_hostname=dest.host, timeout=self.timeout)
        except (aiosmtplib.SMTPException, OSError) as e:
            return TlsRefused(policy, *_verify_failure(e))
        why = dane.matches(policy.tlsa, _chain(smtp), dest.host) if policy.tlsa else ""
        return TlsRefused(policy, "validation-failure", why) if why else None


def described(smtp: PipeliningSMTP, proof: str) -> str:
    """"TLSv1.3 TLS_AES_256_GCM_SHA384 verified by dane", or "none" for a session in clear."""
    sslobj = smtp.get_transport_info("ssl_object")
    if sslobj is None:
        return "none"
    return f"{sslobj.version()} {sslobj.cipher()[0]} {proof}"


def _verify_failure(e: BaseException) -> tuple[str, str]:
    """(result type, text) of a failed STARTTLS."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return _VERIFY_RESULTS.get(cause.verify_code, "validation-failure"), cause.verify_message
        cause = cause.__cause__ or cause.__context__
    return "validation-failure", f"STARTTLS failed: {str(e) or type(e).__name__}"


def _chain(smtp: PipeliningSMTP) -> list[bytes]:
    """The certificates the peer sent, leaf first, in DER (CPython's `_sslobj.get_unverified_chain`, public
    from 3.13 as SSLObject.get_unverified_chain)."""
    sslobj = smtp.get_transport_info("ssl_object")
    chain = sslobj._sslobj.get_unverified_chain() if sslobj is not None else None
    return [cert.public_bytes(_ssl.ENCODING_DER) for cert in chain or []]

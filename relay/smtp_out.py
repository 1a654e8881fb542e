"""The courier: hands one signed copy to the next hop over SMTP and says what happened.

Connections are reused per destination (up to `messages_per_connection` copies) and pipeline their commands
where the peer offers it (RFC 2920), held within global and per-destination limits, and every step has a
timeout, so a slow or dead host holds up only its own copies. The answer is an `Outcome`: delivered, or a
failure that is `permanent` (bounce) or not.

An 8-bit copy goes with BODY=8BITMIME where the next hop offers it; where it does not, the copy is replaced,
on that connection, by the 7-bit one that `SevenBit` makes (RFC 6152 §3): the courier learns what the next hop
offers only once connected, and the conversion must come before signing.

A destination with a TLS policy (relay/transport.py: MTA-STS or DANE) gets STARTTLS and a certificate that
proves it, or nothing is sent: the session ends after EHLO or the handshake and the outcome is a `451 4.7.5`
naming the failure (the next MX host is tried). An MTA-STS `testing` policy only reports the failure and
delivers as before. Every outcome says what TLS the copy had (`Outcome.tls`).
"""
from __future__ import annotations

import _ssl
import asyncio
import contextlib
import errno
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from collections import deque
from dataclasses import dataclass, field

import aiosmtplib

from policy import metrics, replies, tls_reports
from policy.egress import DEFAULT_SOURCE, Source
from policy.settings import Delivery
from relay.pipelining import PipeliningSMTP
from relay import dane
from relay.routing import Destination, TlsPolicy
from relay.shaping import Site

_Key = tuple[Destination, Source]          # idle connections are kept per next hop and egress source

log = logging.getLogger("websofttt.delivery")
IDLE_SECONDS = 10.0


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    permanent: bool
    reply: str          # the remote reply, or what went wrong locally
    local: bool = False  # no SMTP answer (refused, dropped, timed out): the next destination may do better
    source_unusable: bool = False     # the egress source's address is not on this host (EADDRNOTAVAIL)
    tls: str = ""                     # the session's TLS: "TLSv1.3 TLS_AES_256_GCM_SHA384 verified by mta-sts", "none"

    @property
    def status(self) -> str:
        """The enhanced status code (RFC 3463) of the reply, '' if it has none."""
        return replies.status(self.reply)


# The copy made 7-bit and signed anew for a next hop without 8BITMIME, or the outcome when it cannot be.
SevenBit = Callable[[], Awaitable[bytes | Outcome]]


@dataclass
class _Connection:
    smtp: PipeliningSMTP
    limit: int                    # copies it carries before it is closed (the site's, else delivery's)
    tls: str = "none"             # what Outcome.tls says of the copies it carries
    used: int = 0
    idle_since: float = field(default_factory=time.monotonic)


class Courier:
    def __init__(self, delivery: Delivery, hostname: str, workers: int = 1,
                 sessions: Callable[[tls_reports.Session], None] | None = None):
        """`workers`: the node's delivery workers, which share a site's per-node limits. `sessions`: told of each
        session opened to an MX host, with its TLS result (TLS-RPT)."""
        self.settings = delivery
        self._sessions = sessions
        self.hostname = hostname
        self.workers = workers
        self._site_slots: dict[str, asyncio.Semaphore] = {}      # a site's max_connections, this worker's share
        self._site_connects: dict[str, deque[float]] = {}       # a site's recent new connections (monotonic)
        self._all = asyncio.Semaphore(delivery.concurrency)
        self._slots: dict[Destination, asyncio.Semaphore] = {}
        self._idle: dict[_Key, list[_Connection]] = {}     # by next hop and egress source
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False           # opportunistic TLS (RFC 7435): encrypt, do not authenticate
        self._tls.verify_mode = ssl.CERT_NONE
        ca = delivery.smarthost_ca_file
        self._verified_tls = ssl.create_default_context(cafile=str(ca) if ca else None)   # required TLS: verify
        mx_ca = delivery.tls_ca_file
        self._mx_tls = ssl.create_default_context(cafile=str(mx_ca) if mx_ca else None)   # MTA-STS: verify the MX name

    async def send(self, destinations: list[Destination], mail_from: str, recipient: str, data: bytes,
                   seven_bit: SevenBit | None = None, source: Source = DEFAULT_SOURCE,
                   site: Site | None = None) -> Outcome:
        """Try each destination in order until one gives an SMTP answer; connection faults move on.
        `seven_bit`: `data` is 8-bit, and this makes the copy for a next hop without 8BITMIME. `source`: the
        egress source the connection leaves from (its address and EHLO name). `site`: its limits on
        connections (relay/shaping.py), shared by the node's workers."""
        outcome = Outcome(False, False, "451 4.4.1 No destination to try", local=True)
        async with self._all, self._site_slot(site):
            for dest in destinations:
                slot = self._slots.setdefault(dest, asyncio.Semaphore(self.settings.per_destination))
                async with slot:
                    outcome = await self._send_to(dest, source, mail_from, recipient, data, seven_bit, site)
                if not outcome.local or outcome.source_unusable:
                    return outcome
        return outcome

    def _site_slot(self, site: Site | None) -> asyncio.Semaphore | contextlib.nullcontext:
        """At most the site's max_connections in use at once on this node (this worker's share of them)."""
        if site is None or site.limits.max_connections is None:
            return contextlib.nullcontext()
        share = max(1, math.ceil(site.limits.max_connections / self.workers))
        return self._site_slots.setdefault(site.name, asyncio.Semaphore(share))

    async def _connection_turn(self, site: Site | None) -> None:
        """Wait until a new connection to the site keeps within its max_connection_rate (this worker's share)."""
        rate = site.limits.max_connection_rate if site else None
        if site is None or rate is None:
            return
        share = max(1, rate.count // self.workers)
        recent = self._site_connects.setdefault(site.name, deque())
        while True:
            now = time.monotonic()
            while recent and now - recent[0] >= rate.period:
                recent.popleft()
            if len(recent) < share:
                recent.append(now)
                return
            await asyncio.sleep(recent[0] + rate.period - now)

    async def _send_to(self, dest: Destination, source: Source, mail_from: str, recipient: str, data: bytes,
                       seven_bit: SevenBit | None, site: Site | None = None) -> Outcome:
        conn = self._reuse((dest, source))
        if conn is not None:
            try:
                return await self._transaction((dest, source), conn, mail_from, recipient, data, seven_bit)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                pass                                  # the idle connection was closed by the peer: a new one
        try:
            await self._connection_turn(site)
            limit = (site.limits.max_messages_per_connection if site else None) or self.settings.messages_per_connection
            smtp, tls, result = await self._connect(dest, source)
            self._session(dest, source, recipient, smtp, result)
            conn = _Connection(smtp, limit, tls)
            return await self._transaction((dest, source), conn, mail_from, recipient, data, seven_bit)
        except TlsRefused as e:
            self._session(dest, source, recipient, None, e.result)
            return Outcome(False, False, f"451 4.7.5 {dest.host}: {e} ({e.policy.kind} policy of {e.policy.domain})",
                           local=True, tls=f"refused: {e.result}")
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as e:
            unusable = _not_here(e)
            where = f"egress source {source.name} ({source.address})" if unusable else f"{dest.host}:{dest.port}"
            return Outcome(False, False, f"451 4.4.1 {where}: {_describe(e)}", local=True, source_unusable=unusable)

    def _session(self, dest: Destination, source: Source, recipient: str, smtp: PipeliningSMTP | None,
                 result: str) -> None:
        """A session opened (or refused) to an MX host: counted in the metrics, and told to TLS-RPT's counter."""
        if not dest.mx:
            return
        policy = dest.tls_policy
        kind = tls_reports.POLICY_TYPES[policy.kind if policy else ""]
        metrics.tls_sessions.labels(kind, result).inc()
        if self._sessions is not None:
            peer = smtp.get_transport_info("peername") if smtp is not None else None
            self._sessions(tls_reports.Session(recipient.rpartition("@")[2].lower(), kind, policy.text if policy else (),
                                               dest.host, dest.address or (peer[0] if peer else ""), result,
                                               source.address or ""))

    async def _connect(self, dest: Destination, source: Source) -> tuple[PipeliningSMTP, str, str]:
        """A ready session, what its TLS is, and its TLS-RPT result: verified where required (the smarthost, a
        TLS policy); otherwise STARTTLS when offered and, when its handshake fails, a new session in clear
        (RFC 7435: encrypt when possible, deliver anyway)."""
        s = self.settings
        if dest.tls_required:
            smtp = await self._open(dest, source, start_tls=True, context=self._verified_tls)
            tls, result = _described(smtp, "verified"), tls_reports.SUCCESS
        elif dest.tls_policy is not None:
            smtp, tls, result = await self._secured(dest, source)
        else:
            smtp, tls = await self._opportunistic(dest, source)
            result = tls_reports.SUCCESS if tls != "none" else "starttls-not-supported"
        if dest.auth:
            try:
                await smtp.login(*dest.auth, timeout=s.command_timeout)
            except BaseException:
                smtp.close()
                raise
        return smtp, tls, result

    async def _opportunistic(self, dest: Destination, source: Source) -> tuple[PipeliningSMTP, str]:
        s = self.settings
        smtp = await self._open(dest, source, start_tls=False, context=self._tls)
        await smtp.ehlo(timeout=s.command_timeout)
        if not smtp.supports_extension("starttls"):
            return smtp, "none"
        try:
            await smtp.starttls(tls_context=self._tls, server_hostname=dest.host, timeout=s.command_timeout)
        except (aiosmtplib.SMTPException, OSError) as e:
            smtp.close()
            log.warning("STARTTLS to %s:%s failed (%s); delivering without TLS", dest.host, dest.port, _describe(e))
            return await self._open(dest, source, start_tls=False, context=self._tls), "none"
        return smtp, _described(smtp, "not verified")

    async def _secured(self, dest: Destination, source: Source) -> tuple[PipeliningSMTP, str, str]:
        """STARTTLS with the proof the destination's TLS policy asks for. A failure under an enforced policy
        raises TlsRefused once the session is closed (nothing was sent after EHLO); under a testing one it is
        logged and the copy goes as it would without the policy."""
        policy = dest.tls_policy
        assert policy is not None
        s = self.settings
        smtp = await self._open(dest, source, start_tls=False, context=self._tls)
        failure: TlsRefused | None = None
        await smtp.ehlo(timeout=s.command_timeout)
        if not smtp.supports_extension("starttls"):
            failure = TlsRefused(policy, "starttls-not-supported", "STARTTLS not offered")
        else:
            context = self._mx_tls if policy.kind == "mta-sts" else self._tls     # DANE: matched below instead
            try:
                await smtp.starttls(tls_context=context, server_hostname=dest.host, timeout=s.command_timeout)
                why = dane.matches(policy.tlsa, _chain(smtp), dest.host) if policy.tlsa else ""
                if why:
                    failure = TlsRefused(policy, "validation-failure", why)
            except (aiosmtplib.SMTPException, OSError) as e:
                failure = TlsRefused(policy, *_verify_failure(e))
        if failure is None:
            proven = policy.kind == "mta-sts" or policy.tlsa
            tls = _described(smtp, f"verified by {policy.kind}" if proven else "not verified (no usable TLSA)")
            return smtp, tls, tls_reports.SUCCESS
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await smtp.quit(timeout=s.command_timeout)
        smtp.close()
        if policy.enforce:
            log.warning("%s to %s:%s: %s; not delivered there", policy.kind, dest.host, dest.port, failure)
            raise failure
        log.warning("%s (testing) to %s:%s: %s; delivered as without the policy", policy.kind, dest.host, dest.port,
                    failure)
        smtp, tls = await self._opportunistic(dest, source)
        return smtp, f"{tls}; {policy.kind} testing failed: {failure.result}", failure.result

    async def _open(self, dest: Destination, source: Source, start_tls: bool, context: ssl.SSLContext) -> PipeliningSMTP:
        s = self.settings
        smtp = PipeliningSMTP(hostname=dest.address or dest.host, port=dest.port, local_hostname=source.ehlo or self.hostname,
                               timeout=s.command_timeout, start_tls=start_tls, tls_context=context,
                               validate_certs=dest.tls_required,
                               source_address=(source.address, 0) if source.address else None)
        await asyncio.wait_for(smtp.connect(), s.connect_timeout + s.command_timeout)
        return smtp

    async def _transaction(self, dest: _Key, conn: _Connection, mail_from: str, recipient: str,
                           data: bytes, seven_bit: SevenBit | None) -> Outcome:
        s, smtp = self.settings, conn.smtp
        try:
            eightbit = seven_bit is not None
            if seven_bit is not None and not await smtp.offers("8bitmime"):
                converted = await seven_bit()
                if isinstance(converted, Outcome):
                    await self._release(dest, conn, reset=False)     # nothing was sent on it
                    return converted
                data, eightbit = converted, False
            response = await smtp.transaction(mail_from, recipient, data, s.command_timeout, s.data_timeout,
                                              eightbit)
        except aiosmtplib.SMTPResponseException as e:
            outcome = Outcome(False, e.code >= 500, f"{e.code} {_one_line(e.message)}")
            if e.code == 421:
                smtp.close()
            else:
                await self._release(dest, conn, reset=True)
            return outcome
        except (TimeoutError, aiosmtplib.SMTPTimeoutError):
            smtp.close()
            raise
        await self._release(dest, conn, reset=False)
        return Outcome(True, False, f"{response.code} {_one_line(response.message)}", tls=conn.tls)

    def _reuse(self, dest: _Key) -> _Connection | None:
        idle = self._idle.get(dest, [])
        while idle:
            conn = idle.pop()
            if conn.smtp.is_connected and time.monotonic() - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.smtp.close()
        return None

    async def _release(self, dest: _Key, conn: _Connection, reset: bool) -> None:
        """Keep the connection for the next copy to this destination, unless it is used up or broken."""
        conn.used += 1
        try:
            if reset:
                await conn.smtp.rset(timeout=self.settings.command_timeout)
            if conn.used >= conn.limit:
                await conn.smtp.quit(timeout=self.settings.command_timeout)
                return
        except (aiosmtplib.SMTPException, OSError):
            conn.smtp.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(dest, []).append(conn)

    async def close(self) -> None:
        """QUIT every idle connection (at shutdown)."""
        for conns in self._idle.values():
            for conn in conns:
                try:
                    await conn.smtp.quit(timeout=5)
                except (aiosmtplib.SMTPException, OSError):
                    conn.smtp.close()
        self._idle.clear()


class TlsRefused(Exception):
    """The next hop could not prove what its TLS policy asks; `result` is the RFC 8460 result type."""

    def __init__(self, policy: TlsPolicy, result: str, text: str):
        super().__init__(text)
        self.policy = policy
        self.result = result


# OpenSSL's verify codes (X509_V_ERR_*) and the RFC 8460 §4.3 result types they are reported as
_VERIFY_RESULTS = {10: "certificate-expired", 62: "certificate-host-mismatch", 18: "certificate-not-trusted",
                   19: "certificate-not-trusted", 20: "certificate-not-trusted", 21: "certificate-not-trusted"}


def _verify_failure(e: BaseException) -> tuple[str, str]:
    """(result type, text) of a failed STARTTLS."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return _VERIFY_RESULTS.get(cause.verify_code, "validation-failure"), cause.verify_message
        cause = cause.__cause__ or cause.__context__
    return "validation-failure", f"STARTTLS failed: {_describe(e)}"


def _chain(smtp: PipeliningSMTP) -> list[bytes]:
    """The certificates the peer sent, leaf first, in DER (CPython's `_sslobj.get_unverified_chain`, public
    from 3.13 as SSLObject.get_unverified_chain)."""
    sslobj = smtp.get_transport_info("ssl_object")
    chain = sslobj._sslobj.get_unverified_chain() if sslobj is not None else None
    return [cert.public_bytes(_ssl.ENCODING_DER) for cert in chain or []]


def _described(smtp: PipeliningSMTP, proof: str) -> str:
    sslobj = smtp.get_transport_info("ssl_object")
    if sslobj is None:
        return "none"
    return f"{sslobj.version()} {sslobj.cipher()[0]} {proof}"


def _not_here(e: BaseException) -> bool:
    """The connection could not bind its egress address: it is not configured on this host (aiosmtplib
    raises SMTPConnectError from the OSError)."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno == errno.EADDRNOTAVAIL:
            return True
        cause = cause.__cause__
    return False


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]


def _describe(e: BaseException) -> str:
    if isinstance(e, (aiosmtplib.SMTPTimeoutError, asyncio.TimeoutError)):
        return "timed out"
    if isinstance(e, aiosmtplib.SMTPResponseException):
        return f"{e.code} {_one_line(e.message)}"
    return _one_line(str(e)) or type(e).__name__

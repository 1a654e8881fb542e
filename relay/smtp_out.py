"""The courier: hands one signed copy to the next hop over SMTP and says what happened.

Connections are reused per destination (up to `messages_per_connection` copies) and pipeline their commands
where the peer offers it (RFC 2920), held within global and per-destination limits, and every step has a
timeout, so a slow or dead host holds up only its own copies. The answer is an `Outcome`: delivered, or a
failure that is `permanent` (bounce) or not.

An 8-bit copy goes with BODY=8BITMIME where the next hop offers it; where it does not, the copy is replaced,
on that connection, by the 7-bit one that `SevenBit` makes (RFC 6152 §3): the courier learns what the next hop
offers only once connected, and the conversion must come before signing.

A session gets its TLS from relay/starttls.py: opportunistic, or the proof a destination's TLS policy asks
(MTA-STS or DANE); when that fails under an enforced policy nothing is sent and the outcome is a `451 4.7.5`
naming the failure (the next MX host is tried). Every outcome says what TLS the copy had (`Outcome.tls`).
"""
from __future__ import annotations

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
from functools import partial

import aiosmtplib

from policy import metrics, replies, tls_reports
from policy.egress import DEFAULT_SOURCE, Source
from policy.settings import Delivery
from relay.pipelining import PipeliningSMTP
from relay.routing import Destination
from relay.starttls import Starttls, TlsRefused, described
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
        self._slots: dict[tuple[str, int], asyncio.Semaphore] = {}     # per_destination: by host and port
        self._idle: dict[_Key, list[_Connection]] = {}     # by next hop and egress source
        self._starttls = Starttls(delivery)        # opportunistic, or what a TLS policy asks (relay/starttls.py)
        ca = delivery.smarthost_ca_file
        self._verified_tls = ssl.create_default_context(cafile=str(ca) if ca else None)   # the smarthost: verify

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
                slot = self._slots.setdefault((dest.host, dest.port), asyncio.Semaphore(self.settings.per_destination))
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
        in_clear = partial(self._open, dest, source, False, self._starttls.unverified)
        if dest.tls_required:
            smtp = await self._open(dest, source, start_tls=True, context=self._verified_tls)
            tls, result = described(smtp, "verified"), tls_reports.SUCCESS
        elif dest.tls_policy is not None:
            smtp, tls, result = await self._starttls.proven(in_clear, dest)
        else:
            smtp, tls, result = await self._starttls.opportunistic(in_clear, dest)
        if dest.auth:
            try:
                await smtp.login(*dest.auth, timeout=s.command_timeout)
            except BaseException:
                smtp.close()
                raise
        return smtp, tls, result

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

"""The submission server: tenants hand us mail over SMTP (STARTTLS or implicit TLS, AUTH or trusted network).

`SubmissionHandler` holds the whole policy of a transaction, one method per SMTP command; the DATA
path reads top to bottom: header policy, trace headers, durable spool, then the 250.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import cast

from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import Envelope, syntax

from policy import logs, metrics, standing, suppression, tenants, terms
from policy.cache import Recent
from policy.groupcommit import GroupCommit
from policy.headers import HeaderCheck, HeaderPolicy, check_headers
from policy.ratelimit import Limits
from policy.settings import Settings
from policy.queue_ids import new_queue_id
from policy.smtp import PROXY_TIMEOUT, Handler, valid_address
from policy.store import Store
from relay.auth import AsyncAuthSMTP, Authenticated, Authenticator, AuthSession, locked
from relay.logins import VerifiedLogins
from relay.spool import Handoff, Message, Spool, SpoolError

log = logging.getLogger("websofttt.submission")

LINE_LIMIT = 1024 * 1024   # aiosmtpd's per-line buffer; over-long header lines get the policy's 554 instead


@dataclass(frozen=True)
class Sender:
    """Who is submitting in this transaction: the tenant and how it was recognised."""
    tenant: tenants.Tenant
    username: str | None    # None: a trusted network


class SubmissionSession(AuthSession):
    sender: Sender          # set at MAIL: absent before the first one


class Tenants:
    """What submission reads of tenants (their trusted networks; each tenant's row at MAIL), trusted for
    `submission.trust_cache_ttl`: changes from the command line reach running workers within it."""

    def __init__(self, store: Store, ttl: float):
        self.store = store
        self._networks: Recent[list] = Recent(ttl, size=1)
        self._rows: Recent[tenants.Tenant | None] = Recent(ttl)
        self._terms: Recent[terms.Book] = Recent(ttl, size=1)

    async def for_address(self, ip: str) -> str | None:
        """The tenant whose trusted network holds `ip`, if any."""
        nets = await self._networks.get("", lambda: self.store.call(tenants.trusted_networks, self.store))
        addr = ipaddress.ip_address(ip)
        return next((tenant for net, tenant in nets if addr in net), None)

    async def get(self, tenant_id: str) -> tenants.Tenant | None:
        return await self._rows.get(tenant_id, lambda: self.store.call(tenants.get, self.store, tenant_id))

    async def terms(self, configured: str) -> terms.Book:
        """The published terms versions: which is in force is decided per MAIL, on the date of that MAIL."""
        return await self._terms.get("", lambda: self.store.call(terms.book, self.store, configured))


class SubmissionHandler(Handler):
    def __init__(self, settings: Settings, store: Store, writes: GroupCommit, spool: Spool,
                 handoff: Handoff | None = None):
        self.settings = settings
        self.store, self.writes = store, writes
        self.spool = spool
        self.handoff = handoff          # this worker's delivery loop, if any: accepted mail goes to it in memory
        self.limits = Limits(store, settings.submission)
        self.tenants = Tenants(store, settings.submission.trust_cache_ttl)
        self.header_policy = HeaderPolicy(settings.provider.domains, settings.provider.hostname)
        self.authenticator = Authenticator(store, writes, self.limits, VerifiedLogins(
            settings.submission.auth_cache_ttl, settings.submission.auth_cache_size),
            settings.submission.trust_cache_ttl)
        self.refusals = _refusals(settings.submission.max_message_size)

    async def handle_PROXY(self, server, session: SubmissionSession, envelope: Envelope, proxy: ProxyData) -> bool:
        server.take_proxy_address(proxy)
        return True

    # MAIL FROM: who is sending, and may they send now?
    async def handle_MAIL(self, server, session: SubmissionSession, envelope: Envelope, address: str, options: list[str]) -> str:
        tenant_id, username = await self.identify(session)
        if tenant_id is None:
            return _refused("mail", "unauthenticated", "530 5.7.0 Authentication required")
        tenant = await self.tenants.get(tenant_id)
        if tenant is None or tenant.removed:
            return _refused("mail", "unknown_tenant", "550 5.7.1 This account no longer exists", tenant_id)
        if not tenant.active:
            return _refused("mail", "suspended", f"550 5.7.1 Sending is suspended for tenant {tenant.id}: "
                                                 f"{tenant.reason}", tenant.id)
        book, today = await self.tenants.terms(self.settings.provider.terms_version), terms.utc_today()
        if not book.satisfied(tenant.terms_version, today):
            version = book.in_force(today)
            return _refused("mail", "terms", f"550 5.7.1 Tenant {tenant.id} has not accepted the terms of service "
                                             f"version {version}, in force now (websofttt tenant accept-terms "
                                             f"{tenant.id} --version {version})", tenant.id)
        rate = tenant.message_rate(self.settings.policy.tenant_rate)
        if not await self.store.call(self.limits.message_allowed, tenant.id, rate):
            return _refused("mail", "rate_limit", f"451 4.7.1 Message rate limit for tenant {tenant.id} reached, "
                                                  f"try again later", tenant.id)
        session.sender = Sender(tenant, username)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Sender OK"

    async def refuses_tls(self, session: SubmissionSession) -> str | None:
        """The reply instead of STARTTLS to an address locked out of AUTH (relay/auth.py), else None; a
        trusted network needs no AUTH and keeps its STARTTLS."""
        ip = session.peer[0]
        if not await self.authenticator.locked_out(ip) or await self.tenants.for_address(ip):
            return None
        return await locked(ip)

    async def identify(self, session: SubmissionSession) -> tuple[str | None, str | None]:
        """(tenant, username) of an authenticated session, (tenant, None) from a trusted network, else Nones."""
        if isinstance(session.auth_data, Authenticated):
            return session.auth_data.tenant, session.auth_data.username
        return await self.tenants.for_address(session.peer[0]), None

    # RCPT TO: a valid address, within limits, not suppressed for this tenant.
    async def handle_RCPT(self, server, session: SubmissionSession, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        limit, tenant_id = self.settings.submission.max_recipients, session.sender.tenant.id
        if len(envelope.rcpt_tos) >= limit:
            return _refused("rcpt", "too_many_recipients", f"452 4.5.3 Too many recipients (at most {limit} per "
                                                           f"message)", tenant_id)
        if not valid_address(address):
            return _refused("rcpt", "bad_address", f"553 5.1.3 Recipient address <{_shown(address)}> is not a valid "
                                                   f"address", tenant_id)
        entry = await self.store.call(suppression.find, self.store, tenant_id, address)
        if entry is not None:
            metrics.suppression_hits.labels("rcpt", entry.cause).inc()
            return _refused("rcpt", "suppressed", f"550 5.7.1 Recipient <{_shown(address)}> {entry.reason}",
                            tenant_id, address)
        if address in envelope.rcpt_tos:      # given twice: one copy, as Postfix's duplicate filter does
            return "250 2.1.5 Recipient OK (duplicate, one copy)"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Recipient OK"

    # DATA: the message path, in order.
    async def handle_DATA(self, server: SubmissionSMTP, session: SubmissionSession, envelope: Envelope) -> str:
        sender, raw, mail_from = session.sender, envelope.original_content, envelope.mail_from
        assert raw is not None and mail_from is not None      # aiosmtpd sets both before DATA reaches the handler
        check = check_headers(raw, self.header_policy, frozenset(sender.tenant.allowed_from), envelope.smtp_utf8)
        if check.reply:
            return _refused("data", "header_policy", check.reply, sender.tenant.id)
        queue_id = new_queue_id(self.settings.node.name)
        logs.event("received", queue_id=queue_id, tenant=sender.tenant.id, size=len(raw), client=session.peer[0])
        data = self._trace_headers(server, session, sender, queue_id, check) + raw
        message = Message(queue_id, sender.tenant.id, mail_from, tuple(envelope.rcpt_tos), data,
                          envelope.smtp_utf8, check.campaign, check.from_domain,
                          "BODY=8BITMIME" in envelope.mail_options)
        try:
            await self.spool.enqueue(message, self.handoff)
        except SpoolError as e:
            log.error("spool write failed for %s: %s", queue_id, e)
            if e.disk_full:
                return _refused("data", "disk_full", "452 4.3.1 Insufficient system storage, try again later",
                                sender.tenant.id)
            return _refused("data", "spool_error", "451 4.3.0 Temporary failure writing the queue, try again later",
                            sender.tenant.id)
        self.writes.later(standing.note, sender.tenant.id, "received")
        metrics.received.labels(sender.tenant.id).inc()
        metrics.queued.labels(sender.tenant.id).inc(len(message.recipients))
        logs.event("queued", queue_id=queue_id, tenant=sender.tenant.id, recipients=len(message.recipients),
                   size=len(data))
        return f"250 2.0.0 queued as {queue_id}"

    def _trace_headers(self, server: SubmissionSMTP, session: SubmissionSession, sender: Sender, queue_id: str,
                       check: HeaderCheck) -> bytes:
        """Received (naming the tenant), plus Message-ID and Date when the tenant sent none."""
        now = format_datetime(datetime.now(UTC))
        tls = server.tls_description()
        protocol = "ESMTP" + ("S" if tls else "") + ("A" if sender.username else "")
        helo = _shown(session.host_name or "unknown")
        lines = [f"Received: from {helo} ([{session.peer[0]}])\r\n"
                 f"\tby {self.settings.provider.hostname} (WebSoftTT Relay) with {protocol} id {queue_id}\r\n"
                 f"\t(tenant {sender.tenant.id}{'; ' + tls if tls else ''}); {now}\r\n"]
        if not check.has_message_id:
            lines.append(f"Message-ID: <{queue_id}@{self.settings.provider.domain}>\r\n")
        if not check.has_date:
            lines.append(f"Date: {now}\r\n")
        return "".join(lines).encode("ascii")


def _refused(stage: str, reason: str, reply: str, tenant: str | None = None, recipient: str | None = None) -> str:
    """Count and log one refused command; returns its reply."""
    metrics.rejected.labels(stage, reason).inc()
    logs.event("rejected", tenant=tenant, recipient=recipient, stage=stage, reason=reason, reply=reply)
    return reply


def _shown(text: str) -> str:
    """Client-supplied text echoed in a reply or header: printable ASCII, bounded."""
    return text.encode("ascii", "backslashreplace").decode()[:200].replace("\r", "").replace("\n", "")


@dataclass(frozen=True)
class Refusal:
    stage: str
    reason: str
    reply: str


# aiosmtpd's own refusals, answered as policy refusals are (our limits named, logged and counted).
def _refusals(max_size: int) -> dict[str, Refusal]:
    too_big = f"552 5.3.4 Message exceeds the maximum size of {max_size} bytes"
    no_dsn = "no DSN (RFC 3461): bounces come back to the relay, which suppresses and reports them"
    return {
        "552 Error: Too much mail data": Refusal("data", "too_big", too_big),
        "552 Error: message size exceeds fixed maximum message size": Refusal("mail", "too_big", too_big),
        "500 Line too long (see RFC5321 4.5.3.1.6)": Refusal("data", "line_too_long",
                                                             f"554 5.6.0 Line longer than {LINE_LIMIT} octets"),
        "553 5.1.3 Error: malformed address": Refusal("mail", "bad_address", "553 5.1.3 Malformed address"),
        "555 MAIL FROM parameters not recognized or not implemented": Refusal(
            "mail", "parameter", f"555 5.5.4 MAIL FROM takes SIZE, BODY and SMTPUTF8 only; RET and ENVID: {no_dsn}"),
        "555 RCPT TO parameters not recognized or not implemented": Refusal(
            "rcpt", "parameter", f"555 5.5.4 RCPT TO takes no parameters; NOTIFY and ORCPT: {no_dsn}"),
    }


class SubmissionSMTP(AsyncAuthSMTP):
    line_length_limit = LINE_LIMIT
    session: SubmissionSession | None       # made by _create_session

    def __init__(self, handler: SubmissionHandler, sessions: Sessions, **kwargs):
        self.sessions = sessions
        self.refusals = handler.refusals
        super().__init__(handler, authenticator=handler.authenticator, **kwargs)

    def _create_session(self) -> SubmissionSession:
        return SubmissionSession(self.loop)

    async def push(self, status: str | bytes) -> None:
        refusal = self.refusals.get(status) if isinstance(status, str) else None
        if refusal is not None:
            sender: Sender | None = getattr(self.session, "sender", None)
            tenant = sender.tenant.id if sender else (await self.event_handler.identify(self.session))[0]
            status = _refused(refusal.stage, refusal.reason, refusal.reply, tenant)
        await super().push(status)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        refused = await self.event_handler.refuses_tls(self.session)
        if refused:
            await self.push(refused)
            return
        await super().smtp_STARTTLS(arg)

    def tls_description(self) -> str | None:
        obj = self.transport.get_extra_info("ssl_object") if self.transport else None
        return f"{obj.version()} {obj.cipher()[0]}" if obj else None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.sessions.opened(self)

    def connection_lost(self, error) -> None:
        self.sessions.closed(self)
        super().connection_lost(error)

    @property
    def idle(self) -> bool:
        """Between transactions: safe to close on shutdown without losing a message."""
        return self.envelope is None or self.envelope.mail_from is None


class Sessions:
    """The live sessions of one worker, so that shutdown can let transactions finish."""

    def __init__(self) -> None:
        self.live: set[SubmissionSMTP] = set()
        self.draining = False
        self.empty = asyncio.Event()
        self.empty.set()

    def opened(self, smtp: SubmissionSMTP) -> None:
        self.live.add(smtp)
        self.empty.clear()
        if self.draining:
            self._close(smtp)

    def closed(self, smtp: SubmissionSMTP) -> None:
        self.live.discard(smtp)
        if not self.live:
            self.empty.set()

    async def drain(self, grace: float) -> None:
        """Close idle sessions now, busy ones as soon as their transaction ends, all after `grace` seconds."""
        self.draining = True
        deadline = time.monotonic() + grace
        while self.live and time.monotonic() < deadline:
            for smtp in list(self.live):
                if smtp.idle:
                    self._close(smtp)
            try:
                await asyncio.wait_for(self.empty.wait(), 0.05)
            except TimeoutError:
                pass
        for smtp in list(self.live):
            self._close(smtp)

    @staticmethod
    def _close(smtp: SubmissionSMTP) -> None:
        transport = cast(asyncio.Transport | None, smtp.transport)     # a socket's: it writes
        if transport is not None and not transport.is_closing():
            transport.write(b"421 4.3.2 Service shutting down, try again later\r\n")
            transport.close()


def protocol_factory(handler: SubmissionHandler, sessions: Sessions, tls: ssl.SSLContext,
                     implicit_tls: bool):
    """One SMTP protocol per connection; implicit-TLS listeners offer AUTH at once and no STARTTLS."""
    sub = handler.settings.submission

    def make() -> SubmissionSMTP:
        return SubmissionSMTP(
            handler, sessions, hostname=handler.settings.provider.hostname, ident="WebSoftTT Relay",
            data_size_limit=sub.max_message_size, enable_SMTPUTF8=True, decode_data=False,
            tls_context=None if implicit_tls else tls, auth_require_tls=not implicit_tls,
            timeout=sub.timeout, proxy_protocol_timeout=PROXY_TIMEOUT if sub.proxy_protocol and not implicit_tls
            else None)
    return make

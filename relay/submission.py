"""The submission server: tenants hand us mail over SMTP (STARTTLS or implicit TLS, AUTH or trusted network).

`SubmissionHandler` is the SMTP front end: one method per SMTP command, each asking the worker's `Intake`
(relay/intake.py), which holds the policy that HTTP submission (relay/api/messages.py) shares; the DATA
path reads top to bottom there: header policy, trace headers, durable spool, then the 250.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import cast

from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import Envelope, syntax

from policy import tenants
from policy.settings import Settings
from policy.smtp import PROXY_TIMEOUT, Handler
from relay.auth import AsyncAuthSMTP, Authenticated, Authenticator, AuthSession, locked
from relay.intake import Intake, refused, shown
from relay.logins import VerifiedLogins

log = logging.getLogger("websofttt.submission")

LINE_LIMIT = 1024 * 1024   # aiosmtpd's per-line buffer; over-long header lines get the policy's 554 instead


@dataclass(frozen=True)
class Sender:
    """Who is submitting in this transaction: the tenant and how it was recognised."""
    tenant: tenants.Tenant
    username: str | None    # None: a trusted network


class SubmissionSession(AuthSession):
    sender: Sender          # set at MAIL: absent before the first one


class SubmissionHandler(Handler):
    """The SMTP front end of the worker's `Intake` (relay/intake.py): sessions, AUTH, trace headers."""

    def __init__(self, settings: Settings, intake: Intake):
        self.settings, self.intake = settings, intake
        self.store, self.tenants = intake.store, intake.tenants
        self.authenticator = Authenticator(intake.store, intake.writes, intake.limits, VerifiedLogins(
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
            return refused("mail", "unauthenticated", "530 5.7.0 Authentication required")
        tenant, reply = await self.intake.sender(tenant_id)
        if tenant is None:
            return reply
        session.sender = Sender(tenant, username)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return reply

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
        reply = await self.intake.recipient(session.sender.tenant.id, address, envelope.rcpt_tos)
        if reply == "250 2.1.5 Recipient OK":
            envelope.rcpt_options.extend(options)
        return reply

    # DATA: the message path, in order (the intake's).
    async def handle_DATA(self, server: SubmissionSMTP, session: SubmissionSession, envelope: Envelope) -> str:
        sender, raw, mail_from = session.sender, envelope.original_content, envelope.mail_from
        assert raw is not None and mail_from is not None      # aiosmtpd sets both before DATA reaches the handler
        return await self.intake.queue(sender.tenant, mail_from, envelope.rcpt_tos, raw,
                                       lambda queue_id, now: self._received(server, session, queue_id, now),
                                       session.peer[0], envelope.smtp_utf8, "BODY=8BITMIME" in envelope.mail_options)

    def _received(self, server: SubmissionSMTP, session: SubmissionSession, queue_id: str, now: str) -> str:
        """The Received header, naming the tenant."""
        tls = server.tls_description()
        sender = session.sender
        protocol = "ESMTP" + ("S" if tls else "") + ("A" if sender.username else "")
        helo = shown(session.host_name or "unknown")
        return (f"Received: from {helo} ([{session.peer[0]}])\r\n"
                f"\tby {self.settings.provider.hostname} (WebSoftTT Relay) with {protocol} id {queue_id}\r\n"
                f"\t(tenant {sender.tenant.id}{'; ' + tls if tls else ''}); {now}\r\n")


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
            status = refused(refusal.stage, refusal.reason, refusal.reply, tenant)
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

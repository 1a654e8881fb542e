"""The inbound listener (the port-25 role): what comes back to the provider's role addresses.

RCPT accepts only role addresses on provider domains (never an open relay). DATA stores the raw
message durably, answers 250, then `process` classifies it, acts, and records both; messages whose
processing a crash cut short are processed at the next start.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import Envelope, Session

from inbound.actions import Actions
from inbound.addresses import Refusal, Role, classify_rcpt
from inbound.classify import classify
from inbound.mailbox import MAX_FAILURES, Mailbox
from policy import logs, metrics
from policy.settings import Settings
from policy.smtp import PROXY_TIMEOUT, Handler, SaferSMTP

log = logging.getLogger("websofttt.inbound")
_EVENTS = {"unsubscribe": "unsubscribe", "bounce": "bounced", "complaint": "complaint_report",
           "human_complaint": "complaint_report"}      # per-copy complaint events come from inbound/abuse


class InboundHandler(Handler):
    def __init__(self, settings: Settings, mailbox: Mailbox, actions: Actions):
        self.settings, self.mailbox, self.actions = settings, mailbox, actions
        self.size = settings.inbound.max_message_size

        self._tasks: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inbound-actions")  # one store connection

    async def handle_PROXY(self, server: InboundSMTP, session: Session, envelope: Envelope,
                           proxy: ProxyData) -> bool:
        server.take_proxy_address(proxy)
        return server.admit(_client(session), server.transport)

    async def handle_RCPT(self, server, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        limit = self.settings.inbound.max_recipients
        if len(envelope.rcpt_tos) >= limit:
            return f"452 4.5.3 Too many recipients (at most {limit} per message)"
        role = classify_rcpt(address, self.settings.provider)
        if isinstance(role, Refusal):
            return role.reply
        envelope.rcpt_tos.append(role.address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server, session: Session, envelope: Envelope) -> str:
        """Keep first, answer, then process: an acknowledged message is never lost."""
        # aiosmtpd calls this after MAIL and RCPT (which needs a sender), with the content received
        assert envelope.mail_from is not None and envelope.original_content is not None
        try:
            inbound_id = await self.mailbox.keep(_client(session), envelope.mail_from, envelope.rcpt_tos,
                                                 envelope.original_content)
        except Exception as e:          # disk full, store locked: the sender retries later
            log.error("cannot store inbound message: %s", e)
            return "451 4.3.0 Temporary failure storing the message, try again later"
        task = asyncio.create_task(self.process(inbound_id, envelope.mail_from, envelope.rcpt_tos,
                                                envelope.original_content))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return f"250 2.0.0 Message accepted as {inbound_id}"

    async def process(self, inbound_id: str, mail_from: str, recipients: list[str] | tuple[str, ...],
                      raw: bytes) -> None:
        """Classify, act, record; an error leaves the row unprocessed for the next start."""
        try:
            roles = [r for r in (classify_rcpt(a, self.settings.provider) for a in recipients) if isinstance(r, Role)]
            loop = asyncio.get_running_loop()      # classify is pure CPU (parsing, flufl.bounce): off the event loop
            found = await loop.run_in_executor(self._executor, classify, raw, [r.kind for r in roles],
                                               [r.token for r in roles])
            action = await loop.run_in_executor(
                self._executor, self.actions.act, inbound_id, raw, mail_from, roles, found)
            await self.mailbox.conclude(inbound_id, found.kind, found.evidence, action)
            metrics.inbound_messages.labels(found.kind).inc()
            logs.event(_EVENTS.get(found.kind, "inbound"), inbound_id=inbound_id, kind=found.kind, action=action)
        except Exception as e:
            await self._failed(inbound_id, e)

    async def _failed(self, inbound_id: str, error: Exception) -> None:
        """Count the failure: the message is tried again at the next start, MAX_FAILURES times in all, then set
        aside (`websofttt inbound aside` lists them, `inbound retry ID` gives one its attempts back)."""
        try:
            failures = await self.mailbox.failed(inbound_id, f"{type(error).__name__}: {error}")
        except Exception as e:          # the mailbox itself fails: the row stays as it was, retried at the next start
            log.error("cannot count the failure of inbound message %s: %s", inbound_id, e)
            failures = 0
        if failures >= MAX_FAILURES:
            log.error("processing inbound message %s failed %d times; set aside (websofttt inbound aside)",
                      inbound_id, failures, exc_info=error)
        else:
            log.error("processing inbound message %s failed; it will be retried at the next start", inbound_id,
                      exc_info=error)

    async def recover(self) -> None:
        """Process what was acknowledged before a stop but not processed."""
        for message in await self.mailbox.pending():
            await self.process(message.id, message.mail_from, message.recipients, message.raw)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)


class InboundSMTP(SaferSMTP):
    """aiosmtpd without AUTH (nobody logs in here), with limits per client address and precise replies."""

    line_length_limit = 64 * 1024
    _ip: str | None = None      # the address this session is counted against

    def __init__(self, handler: InboundHandler, per_ip: PerAddress, **kwargs):
        self.per_ip = per_ip
        too_big = f"552 5.3.4 Message exceeds the maximum size of {handler.size} bytes"
        self.replies = {"552 Error: Too much mail data": too_big,
                        "552 Error: message size exceeds fixed maximum message size": too_big,
                        "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long"}
        super().__init__(handler, auth_exclude_mechanism=["LOGIN", "PLAIN"], **kwargs)

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):      # bytes: AUTH challenges, never sent here
            if status.startswith("250-AUTH"):
                return                   # no mechanisms: do not advertise AUTH at all
            status = self.replies.get(status, status)
        await super().push(status)

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push("502 5.5.1 AUTH not available here")

    def connection_made(self, transport) -> None:
        if self._ip is not None or self._proxy_timeout is not None:
            super().connection_made(transport)        # again after STARTTLS; or behind a balancer: see admit
            return
        peer = transport.get_extra_info("peername")
        if self.admit(peer[0] if peer else "?", transport):
            super().connection_made(transport)

    def admit(self, ip: str, transport) -> bool:
        """Count the session against its client's address (the PROXY header's, behind a balancer); over
        the limit it gets 421 and is closed."""
        if not self.per_ip.enter(ip):
            transport.write(b"421 4.7.0 Too many connections from your address, try again later\r\n")
            transport.close()
            return False
        self._ip = ip
        return True

    def connection_lost(self, error) -> None:
        if self._ip is not None:
            self.per_ip.leave(self._ip)
            self._ip = None
        if self.session is not None:
            super().connection_lost(error)


class PerAddress:
    """Concurrent sessions per client address in this worker."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count: Counter[str] = Counter()

    def enter(self, ip: str) -> bool:
        if self.count[ip] >= self.limit:
            return False
        self.count[ip] += 1
        return True

    def leave(self, ip: str) -> None:
        self.count[ip] -= 1
        if self.count[ip] <= 0:
            del self.count[ip]


def _client(session: Session) -> str:
    """The client's address: aiosmtpd annotates Session.peer as a str, it holds the socket's peername tuple."""
    return cast("tuple[Any, ...]", session.peer)[0]


def protocol_factory(handler: InboundHandler, tls: ssl.SSLContext, workers: int):
    inbound = handler.settings.inbound
    per_ip = PerAddress(max(1, inbound.max_connections_per_ip // workers))

    def make() -> InboundSMTP:
        return InboundSMTP(handler, per_ip, hostname=handler.settings.provider.hostname, ident="WebSoftTT Relay",
                           data_size_limit=inbound.max_message_size, enable_SMTPUTF8=True, decode_data=False,
                           tls_context=tls, timeout=inbound.timeout,
                           proxy_protocol_timeout=PROXY_TIMEOUT if inbound.proxy_protocol else None)
    return make

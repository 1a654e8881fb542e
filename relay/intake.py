"""The submission policy, whatever the front end: SMTP (relay/submission.py) and HTTP (relay/api/messages.py).

One `Intake` per worker decides, in the order SMTP asks: may this tenant send now (`sender`), may it mail
this recipient (`recipient`), then the headers and the durable queue (`queue`). Each answer is an SMTP
reply; the SMTP front end sends it as it is, the HTTP one maps it to a status. Refusals are counted and
logged here, once, whichever front end asked.
"""
from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

from policy import logs, metrics, standing, suppression, tenants, terms
from policy.cache import Recent
from policy.groupcommit import GroupCommit
from policy.headers import HeaderPolicy, check_headers
from policy.queue_ids import new_queue_id
from policy.ratelimit import Limits
from policy.settings import Settings
from policy.smtp import valid_address
from policy.store import Store
from relay.spool import Handoff, Message, Spool, SpoolError

log = logging.getLogger("websofttt.submission")

Received = Callable[[str, str], str]       # (queue id, now) -> the front end's Received header, CRLF-terminated


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


class Intake:
    def __init__(self, settings: Settings, store: Store, writes: GroupCommit, spool: Spool,
                 handoff: Handoff | None = None):
        self.settings = settings
        self.store, self.writes = store, writes
        self.spool = spool
        self.handoff = handoff          # this worker's delivery loop, if any: accepted mail goes to it in memory
        self.limits = Limits(store, settings.submission)
        self.tenants = Tenants(store, settings.submission.trust_cache_ttl)
        self.header_policy = HeaderPolicy(settings.provider.domains, settings.provider.hostname)

    async def sender(self, tenant_id: str) -> tuple[tenants.Tenant | None, str]:
        """MAIL: (the tenant, "250 ...") when it may send now, else (None, the refusal)."""
        tenant = await self.tenants.get(tenant_id)
        if tenant is None or tenant.removed:
            return None, refused("mail", "unknown_tenant", "550 5.7.1 This account no longer exists", tenant_id)
        if not tenant.active:
            return None, refused("mail", "suspended", f"550 5.7.1 Sending is suspended for tenant {tenant.id}: "
                                                      f"{tenant.reason}", tenant.id)
        book, today = await self.tenants.terms(self.settings.provider.terms_version), terms.utc_today()
        if not book.satisfied(tenant.terms_version, today):
            version = book.in_force(today)
            return None, refused("mail", "terms", f"550 5.7.1 Tenant {tenant.id} has not accepted the terms of "
                                                  f"service version {version}, in force now (websofttt tenant "
                                                  f"accept-terms {tenant.id} --version {version})", tenant.id)
        rate = tenant.message_rate(self.settings.policy.tenant_rate)
        if not await self.store.call(self.limits.message_allowed, tenant.id, rate):
            return None, refused("mail", "rate_limit", f"451 4.7.1 Message rate limit for tenant {tenant.id} "
                                                       f"reached, try again later", tenant.id)
        return tenant, "250 2.1.0 Sender OK"

    async def recipient(self, tenant_id: str, address: str, accepted: list[str]) -> str:
        """RCPT: a valid address, within the limit, not suppressed for this tenant; adds it to `accepted`."""
        limit = self.settings.submission.max_recipients
        if len(accepted) >= limit:
            return refused("rcpt", "too_many_recipients", f"452 4.5.3 Too many recipients (at most {limit} per "
                                                          f"message)", tenant_id)
        if not valid_address(address):
            return refused("rcpt", "bad_address", f"553 5.1.3 Recipient address <{shown(address)}> is not a valid "
                                                  f"address", tenant_id)
        entry = await self.store.call(suppression.find, self.store, tenant_id, address)
        if entry is not None:
            metrics.suppression_hits.labels("rcpt", entry.cause).inc()
            return refused("rcpt", "suppressed", f"550 5.7.1 Recipient <{shown(address)}> {entry.reason}",
                           tenant_id, address)
        if address in accepted:      # given twice: one copy, as Postfix's duplicate filter does
            return "250 2.1.5 Recipient OK (duplicate, one copy)"
        accepted.append(address)
        return "250 2.1.5 Recipient OK"

    async def queue(self, tenant: tenants.Tenant, mail_from: str, recipients: list[str], raw: bytes,
                    received: Received, client: str, smtputf8: bool = False, eightbit: bool = False) -> str:
        """DATA: the header policy, a queue id, the trace headers (`received`, then Message-ID and Date when the
        message has none), the durable spool, then `250 2.0.0 queued as ID`."""
        check = check_headers(raw, self.header_policy, frozenset(tenant.allowed_from), smtputf8)
        if check.reply:
            return refused("data", "header_policy", check.reply, tenant.id)
        queue_id, now = new_queue_id(self.settings.node.name), format_datetime(datetime.now(UTC))
        logs.event("received", queue_id=queue_id, tenant=tenant.id, size=len(raw), client=client)
        trace = [received(queue_id, now)]
        if not check.has_message_id:
            trace.append(f"Message-ID: <{queue_id}@{self.settings.provider.domain}>\r\n")
        if not check.has_date:
            trace.append(f"Date: {now}\r\n")
        data = "".join(trace).encode("ascii") + raw
        message = Message(queue_id, tenant.id, mail_from, tuple(recipients), data, smtputf8, check.campaign,
                          check.from_domain, eightbit)
        try:
            await self.spool.enqueue(message, self.handoff)
        except SpoolError as e:
            log.error("spool write failed for %s: %s", queue_id, e)
            if e.disk_full:
                return refused("data", "disk_full", "452 4.3.1 Insufficient system storage, try again later", tenant.id)
            return refused("data", "spool_error", "451 4.3.0 Temporary failure writing the queue, try again later",
                           tenant.id)
        self.writes.later(standing.note, tenant.id, "received")
        metrics.received.labels(tenant.id).inc()
        metrics.queued.labels(tenant.id).inc(len(message.recipients))
        logs.event("queued", queue_id=queue_id, tenant=tenant.id, recipients=len(message.recipients), size=len(data))
        return f"250 2.0.0 queued as {queue_id}"

def refused(stage: str, reason: str, reply: str, tenant: str | None = None, recipient: str | None = None) -> str:
    """Count and log one refused command; returns its reply."""
    metrics.rejected.labels(stage, reason).inc()
    logs.event("rejected", tenant=tenant, recipient=recipient, stage=stage, reason=reason, reply=reply)
    return reply


def shown(text: str) -> str:
    """Client-supplied text echoed in a reply or header: printable ASCII, bounded."""
    return text.encode("ascii", "backslashreplace").decode()[:200].replace("\r", "").replace("\n", "")

"""Notices of new terms to tenants: one to every tenant with a contact address when a version is published,
and a reminder `provider.terms_reminder_business_days` business days before the date to those that have not
accepted it.

Provider mail through the outbox: the delivery role signs it with the provider's key (From the provider's
domain) and sends it with a null envelope sender, `Auto-Submitted: auto-generated` (RFC 3834). Each notice is
recorded once (tenant, version, kind, when, recipient, queue id), under the store's lock, so that the nodes
that all run the reminders (relay/serve) send each one once.
"""
from __future__ import annotations

import email.policy
import email.utils
from datetime import date
from email.message import EmailMessage
from enum import StrEnum

from policy import outbox, tenants
from policy.business_days import Calendar
from policy.settings import Provider
from policy.store import Store, utcnow
from policy.terms import Book, Version, book


class Kind(StrEnum):
    NOTICE = "notice"
    REMINDER = "reminder"


def compose(provider: Provider, tenant: tenants.Tenant, version: Version, kind: Kind, in_force: str) -> bytes:
    """The notice to one tenant: what changes, when, where to read it, how to accept."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = email.utils.formataddr((provider.domain, provider.privacy_address))
    msg["To"] = tenant.contact
    what = "Reminder" if kind is Kind.REMINDER else "Notice"
    msg["Subject"] = f"{what}: our terms of service change on {version.effective} (version {version.version})"
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid(f"terms-{kind}", domain=provider.domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    link = f"The full text: {version.url}\n\n" if version.url else ""
    msg.set_content(
        f"Dear {tenant.name or tenant.id},\n\n"
        f"Version {version.version} of our terms of service takes effect on {version.effective} (00:00 UTC).\n"
        f"Until then, version {in_force} stays in force.\n\n"
        f"What changes:\n{version.summary}\n\n{link}"
        f"How to accept: reply to this message saying that {tenant.id} accepts version {version.version}.\n"
        f"From {version.effective} on, mail that {tenant.id} submits is refused (550 5.7.1) until version "
        f"{version.version} is accepted.\n\n"
        f"-- \n{provider.domain}\n", charset="utf-8")
    return msg.as_bytes()


def send(store: Store, provider: Provider, node: str, current: Book, version: Version, kind: Kind,
         today: date) -> dict[str, list]:
    """Send `kind` of `version` to every tenant with a contact that has not had it (a reminder: only to those
    that have not accepted it); {"sent": [{tenant, recipient, queue_id}], "not_notified": [tenant ids]}."""
    sent, missing = [], []
    for tenant in tenants.all_tenants(store):
        if tenant.removed or (kind is Kind.REMINDER and current.rank(tenant.terms_version) >= current.rank(version.version)):
            continue
        if not tenant.contact:
            missing.append(tenant.id)
            continue
        with store.exclusive():
            if store.one("SELECT 1 AS x FROM terms_notices WHERE tenant = ? AND version = ? AND kind = ?",
                         [tenant.id, version.version, kind.value]):
                continue
            raw = compose(provider, tenant, version, kind, current.in_force(today))
            queue_id = outbox.put(store, node, tenant.contact, raw)
            store.insert("terms_notices", {"tenant": tenant.id, "version": version.version, "kind": kind.value,
                                           "sent": utcnow(), "recipient": tenant.contact, "queue_id": queue_id})
        sent.append({"tenant": tenant.id, "recipient": tenant.contact, "queue_id": queue_id})
    return {"sent": sent, "not_notified": missing}


def remind(store: Store, provider: Provider, node: str, today: date) -> list[dict]:
    """Send the reminders due on `today`: of versions not yet in force whose reminder day has come."""
    calendar = Calendar(provider.holiday_country, provider.holiday_subdivision)
    current, sent = book(store, provider.terms_version), []
    for version in current.versions:
        effective = date.fromisoformat(version.effective)
        if today < effective and calendar.before(effective, provider.terms_reminder_business_days) <= today:
            sent += send(store, provider, node, current, version, Kind.REMINDER, today)["sent"]
    return sent


def of_version(store: Store, version: str) -> dict[str, list]:
    """What `terms show` tells: the notices and reminders sent, and the tenants never notified (no contact)."""
    rows = store.all("SELECT tenant, kind, sent, recipient, queue_id FROM terms_notices WHERE version = ? "
                     "ORDER BY kind, sent, tenant", [version])
    told = {r["tenant"] for r in rows if r["kind"] == Kind.NOTICE}
    accepted = {r["tenant"] for r in store.all("SELECT tenant FROM terms_accepted WHERE version = ?", [version])}
    return {"notices": rows, "accepted": sorted(accepted),
            "not_notified": [t.id for t in tenants.all_tenants(store) if not t.removed and t.id not in told]}

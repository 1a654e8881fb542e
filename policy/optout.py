"""Opting out: turning a token (from a reply or a one-click POST) into a tenant-scoped suppression.

The token decides who is suppressed for whom, not the From of a reply, which may differ (forwarding,
aliases). Forged, altered or expired tokens suppress nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

from policy import events, sent, suppression, tenants
from policy.store import Store
from policy.tokens import TokenKeys


@dataclass(frozen=True)
class Subscription:
    tenant: str
    sender: str          # what the recipient knows the tenant as: its display name, else its id
    recipient: str
    opted_out: bool      # the recipient no longer gets this tenant's mail
    queue_id: str | None = None     # the message whose copy carried the token


def lookup(store: Store, keys: TokenKeys, token: str) -> Subscription | None:
    """The copy a token stands for; None for a token we did not issue or no longer know."""
    if not keys.verify(token):
        return None
    copy = sent.lookup(store, token)
    if copy is None:
        return None
    tenant = tenants.get(store, copy.tenant)
    sender = (tenant.name if tenant and tenant.name else copy.tenant)
    opted_out = suppression.find(store, copy.tenant, copy.recipient) is not None
    return Subscription(copy.tenant, sender, copy.recipient, opted_out, copy.queue_id)


def by_token(store: Store, keys: TokenKeys, token: str, source: str) -> Subscription | None:
    """Suppress the token's recipient for the token's tenant (idempotent); None for an unknown token."""
    found = lookup(store, keys, token)
    if found is None:
        return None
    unsubscribe(store, found.tenant, found.recipient, source, found.queue_id)
    return Subscription(found.tenant, found.sender, found.recipient, True, found.queue_id)


def unsubscribe(store: Store, tenant: str, recipient: str, source: str, queue_id: str | None = None) -> bool:
    """Suppress `recipient` for `tenant` at the recipient's request, and tell the tenant: an `unsubscribed`
    event (its API's /v1/events) the first time. True if it was new."""
    new = suppression.add(store, recipient, tenant, suppression.Cause.UNSUBSCRIBE, source=source)
    if new:
        events.record(store, "unsubscribed", tenant, source, queue_id, recipient)
    return new

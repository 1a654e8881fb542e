"""Retention: what the store keeps about people, and for how long (the privacy policy's "store the minimum").

Run periodically by the delivery role (relay/serve). Bodies go at once after final delivery (the spool),
raw inbound messages after `inbound.retention` (the inbound role); here:
- sent copies (token → tenant, recipient, message) after `delivery.sent_retention` (180 days);
- events, bounce records and hourly counts after `privacy.events_retention` (400 days).
Suppressions stay (they are the opt-out itself); complaints and cases stay for the abuse desk, their
addresses removed on request by `privacy erase`.
"""
from __future__ import annotations

import time

from policy.settings import Settings
from policy.store import Store, utcnow


def purge(store: Store, settings: Settings) -> dict[str, int]:
    """Delete what is past its retention; returns rows deleted per table."""
    cutoff = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - settings.privacy.events_retention))
    return {
        "sent": store.execute("DELETE FROM sent WHERE expires < ?", [utcnow()]).rowcount,
        "events": store.execute("DELETE FROM events WHERE time < ?", [cutoff]).rowcount,
        "bounces": store.execute("DELETE FROM bounces WHERE time < ?", [cutoff]).rowcount,
        "activity": store.execute("DELETE FROM activity WHERE hour < ?", [cutoff[:13]]).rowcount,
    }

"""Aggregates only: what the provider may share (the privacy policy: "shared only in aggregate form").

Per tenant and day: messages received, copies delivered, bounces, complaints and unsubscribes. No
addresses, and every count below `privacy.stats_min_count` (k, default 5) is suppressed, zero included,
so that no cell can single out a person (a tenant with one unsubscribe a day shows "<5", not "1").
"""
from __future__ import annotations

import time

from policy.store import Store

FIELDS = ("received", "delivered", "bounced", "complaints", "unsubscribes")

_SQL = """
SELECT tenant, day, SUM(received) AS received, SUM(delivered) AS delivered, SUM(bounced) AS bounced,
       SUM(complaints) AS complaints, SUM(unsubscribes) AS unsubscribes FROM (
    SELECT tenant, substr(hour, 1, 10) AS day, received, delivered, 0 AS bounced, 0 AS complaints,
           0 AS unsubscribes FROM activity WHERE hour >= :since
    UNION ALL SELECT tenant, substr(time, 1, 10), 0, 0, 1, 0, 0 FROM bounces WHERE time >= :since
    UNION ALL SELECT tenant, substr(received, 1, 10), 0, 0, 0, 1, 0 FROM complaints WHERE received >= :since
    UNION ALL SELECT scope, substr(created, 1, 10), 0, 0, 0, 0, 1 FROM suppressions
              WHERE cause = 'unsubscribe' AND scope != 'global' AND created >= :since) AS counts
GROUP BY tenant, day ORDER BY day, tenant
"""


def daily(store: Store, days: int, min_count: int) -> list[dict]:
    """One row per tenant and day over the last `days` days; counts below `min_count` are None."""
    return between(store, time.strftime("%Y-%m-%d", time.gmtime(time.time() - (days - 1) * 86400)), "9999-12-31",
                   min_count)


def between(store: Store, first: str, last: str, min_count: int, tenant: str | None = None) -> list[dict]:
    """The rows of days `first` to `last` (YYYY-MM-DD, both included), of one tenant or all."""
    rows = store.all(_SQL, {"since": first})
    return [{"tenant": r["tenant"], "day": r["day"], **{f: (r[f] if r[f] >= min_count else None) for f in FIELDS}}
            for r in rows if r["day"] <= last and tenant in (None, r["tenant"])]

"""A tenant's standing: complaint and hard-bounce rates over `policy.complaint_window`, and the automatic
suspension they trigger (the privacy policy: "if we detect or are informed of such usage, we will stop
such usage of our services").

- complaint rate = counted complaints / deliveries; bounce rate = hard bounces / (deliveries + failures);
- either rate above its limit, once the tenant has at least `complaint_min_volume` in the denominator,
  suspends the tenant with the figures as the reason (an event, and `tenant show` says why);
- the window starts at the later of now − window and the tenant's last resume, so resuming gives a
  fresh start instead of an immediate second suspension (complaints and bounces count from the second
  after it; deliveries from the start of its hour, which errs in the tenant's favour).
Deliveries and failures are counted per tenant and hour (table `activity`, one upsert each), so a rate
over seven days sums at most 169 rows whatever the volume; complaints and bounces are rare and counted
from their own rows.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

from policy import events, tenants
from policy.settings import Policy
from policy.store import Store

log = logging.getLogger("websofttt.policy")

OUTCOMES = ("delivered", "failed")
COUNTED = ("received", *OUTCOMES)       # per tenant and hour; `stats` reads them too


def _stamp(seconds: float, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> str:
    return time.strftime(fmt, time.gmtime(seconds))


def note(store: Store, tenant: str, outcome: str) -> None:
    """Count one message received or one final delivery outcome (delivered, failed) in the current hour."""
    if outcome not in COUNTED:
        raise ValueError(f"outcome {outcome!r} is not one of {COUNTED}")
    store.execute(f"INSERT INTO activity (tenant, hour, {outcome}) VALUES (?, ?, 1) ON CONFLICT(tenant, hour) "
                  f"DO UPDATE SET {outcome} = activity.{outcome} + 1", [tenant, _stamp(time.time(), "%Y-%m-%dT%H")])


@dataclass(frozen=True)
class Standing:
    since: str               # start of the window the figures cover
    delivered: int
    failed: int
    complaints: int          # counted complaints (identified by a token or a sent copy)
    hard_bounces: int

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.delivered if self.delivered else 0.0

    @property
    def bounce_rate(self) -> float:
        attempted = self.delivered + self.failed
        return self.hard_bounces / attempted if attempted else 0.0

    def as_json(self) -> dict:
        return asdict(self) | {"complaint_rate": round(self.complaint_rate, 6), "bounce_rate": round(self.bounce_rate, 6)}


def standing(store: Store, rules: Policy, tenant: str) -> Standing:
    start = _stamp(time.time() - rules.complaint_window)
    row = store.one("SELECT resumed FROM tenants WHERE id = ?", [tenant])
    since = max(start, (row or {}).get("resumed") or start)
    volume = store.row("SELECT COALESCE(SUM(delivered), 0) AS delivered, COALESCE(SUM(failed), 0) AS failed "
                       "FROM activity WHERE tenant = ? AND hour >= ?", [tenant, since[:13]])
    complaints = store.row("SELECT COUNT(*) AS n FROM complaints WHERE tenant = ? AND counted = 1 AND received > ?",
                           [tenant, since])["n"]
    hard = store.row("SELECT COUNT(*) AS n FROM bounces WHERE tenant = ? AND class = 'hard' AND time > ?",
                     [tenant, since])["n"]
    return Standing(since, volume["delivered"], volume["failed"], complaints, hard)


def enforce(store: Store, rules: Policy, tenant: str) -> str | None:
    """Suspend `tenant` if a rate is over its limit; returns the reason when it did."""
    current = tenants.get(store, tenant)
    if current is None or not current.active:
        return None
    s = standing(store, rules, tenant)
    reason = None
    if s.delivered >= rules.complaint_min_volume and s.complaint_rate > rules.complaint_rate:
        reason = (f"complaint rate {s.complaint_rate:.2%} is over {rules.complaint_rate:.2%} "
                  f"({s.complaints} complaints for {s.delivered} deliveries since {s.since})")
    elif s.delivered + s.failed >= rules.complaint_min_volume and s.bounce_rate > rules.bounce_rate:
        reason = (f"hard bounce rate {s.bounce_rate:.2%} is over {rules.bounce_rate:.2%} "
                  f"({s.hard_bounces} hard bounces for {s.delivered + s.failed} attempts since {s.since})")
    if reason is None:
        return None
    reason = f"automatically suspended: {reason}"
    tenants.suspend(store, tenant, reason)
    events.record(store, "suspended", tenant, reason)
    log.warning("tenant %s %s", tenant, reason)
    return reason

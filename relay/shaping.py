"""Shaping on the delivery path: which site a copy goes to, whether it may go now, and what its reply
teaches (policy/shaping_rules for the rules, policy/shaping for what the nodes share).

`admit` runs before every attempt and costs no store round trip in the common case: the active actions
are read once a second (`refresh`, from the loop's housekeeping) and a site's message rate is claimed
from the store in blocks of BLOCK_SECONDS of it, on one schedule for all nodes together
(policy/shaping.pace, `pacing`), so that no span of one period, wherever it starts, holds more copies
than the rate (a next hop counting over a sliding minute sees the rate, never a burst at a window's
edge); the schedule runs a few per cent below the rate to leave room for copies sent a little early.
A copy that may not go now waits in the spool without using up an attempt (`Wait`), and is never bounced
for it; `max_queue_lifetime` still applies.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from policy import metrics, replies, shaping
from policy.shaping_rules import Limits, Rules
from policy.store import Store
from policy.values import Rate
from relay.routing import Destination

log = logging.getLogger("websofttt.delivery")
BLOCK_SECONDS = 0.05          # a worker claims a site's rate in blocks of this much of it (at least one copy)
AHEAD = 0.02                  # of a site's period: how far ahead of its schedule claims are granted
LAPSE_BLOCKS = 10             # a claimed block may be used for up to this many blocks' time (at most AHEAD):
                              # a worker sending a share of a fast site's rate uses its block before it lapses
MAX_WAIT = 5.0                # seconds before a copy held by a used-up rate is looked at again


@dataclass(frozen=True)
class Site:
    name: str
    limits: Limits


@dataclass(frozen=True)
class Wait:
    """The copy may not go now: why, and when to look again (epoch seconds)."""
    reason: str
    until: float

    @property
    def reply(self) -> str:
        """What the spool records for the held copy (`waiting` finds the copies a suspension held)."""
        return f"451 4.7.0 Shaped: {self.reason}"


def waiting(site: str) -> str:
    """The start of the reply recorded for the copies that a suspension of `site` holds."""
    return Wait(f"site {site} suspended", 0).reply


def pacing(rate: Rate) -> tuple[int, float, float, float]:
    """(block, interval, ahead, lapse) of a rate: copies per claim, seconds of schedule per copy, how far
    ahead of time a claim may be granted (AHEAD of the period: several workers send at once), and how long a
    claimed copy may wait to be sent. A copy goes out at most `drift` = ahead + lapse away from its place in
    the schedule, so the schedule runs at count copies per period + 2 * drift: no span of one period holds
    more than `count`, wherever it starts, whoever sends."""
    nominal = rate.period / rate.count
    block = max(1, min(rate.count // 2, int(BLOCK_SECONDS / nominal)))
    ahead = AHEAD * rate.period
    lapse = min(ahead, LAPSE_BLOCKS * block * nominal) or block * nominal     # time for a worker to use it
    return block, (rate.period + 2 * (ahead + lapse)) / rate.count, ahead, lapse


class Shaper:
    def __init__(self, rules: Rules, store: Store, call: Callable, clock: Callable[[], float] = time.time):
        self.rules, self.store, self.call, self.clock = rules, store, call, clock
        self._actions: dict[str, list[shaping.Action]] = {}
        self._tokens: dict[str, tuple[int, float]] = {}   # copies claimed from a site's rate, until when
        self._sites: dict[tuple[str, tuple[str, ...]], Site] = {}
        self._limited: dict[str, Site] = {}       # the sites met that have a message rate (for the gauge)

    def site(self, domain: str, destinations: list[Destination], routed: bool) -> Site:
        """The site of a copy: a rule's, else the route's or smarthost's next hop, else the MX set."""
        key = (domain.lower(), tuple(sorted(f"{d.host}:{d.port}" for d in destinations)))
        site = self._sites.get(key)
        if site is None:
            rule = self.rules.site_for(domain, [d.host for d in destinations] + list(key[1]))
            name = rule.name if rule else (key[1][0] if routed and key[1] else
                                           ",".join(sorted({d.host.lower() for d in destinations})) or domain)
            site = self._sites[key] = Site(name, rule.limits if rule else self.rules.default)
            if site.limits.max_message_rate is not None:
                self._limited[name] = site
            if len(self._sites) > 100_000:
                self._sites.clear()
        return site

    def rate(self, site: Site) -> Rate | None:
        """The site's message rate now: its limit times the factors of the reductions in force."""
        rate = site.limits.max_message_rate
        if rate is None:
            return None
        factor = math.prod(a.factor for a in self._actions.get(site.name, ()) if a.kind == shaping.REDUCE)
        return Rate(max(1, int(rate.count * factor)), rate.period) if factor < 1 else rate

    def held_sources(self, site: Site) -> dict[str, float]:
        """The egress sources that may not send to the site now, with when that ends."""
        now = self.clock()
        return {a.source: a.until for a in self._actions.get(site.name, ())
                if a.kind == shaping.SUSPEND and a.source and a.until > now}

    async def admit(self, site: Site) -> Wait | None:
        """None: the copy may go (one copy of the site's rate is used); else why and until when it waits."""
        now = self.clock()
        suspended = [a for a in self._actions.get(site.name, ())
                     if a.kind == shaping.SUSPEND and not a.source and a.until > now]
        if suspended:
            return Wait(f"site {site.name} suspended: {suspended[-1].reason}", max(a.until for a in suspended))
        rate = self.rate(site)
        if rate is None:
            return None
        tokens, until = self._tokens.get(site.name, (0, 0.0))
        if tokens <= 0 or now >= until:   # claimed copies not sent within `lapse` of their claim are lost
            block, interval, ahead, lapse = pacing(rate)
            wait = await self.call(shaping.pace, self.store, site.name, interval, block, ahead, now)
            if wait > 0:
                return self._wait(site, rate, now + min(MAX_WAIT, wait))
            tokens, until = block, now + lapse
        self._tokens[site.name] = (tokens - 1, until)
        metrics.shaping_sent.labels(site.name).inc()
        return None

    def _wait(self, site: Site, rate: Rate, until: float) -> Wait:
        metrics.shaping_waits.labels(site.name).inc()
        return Wait(f"site {site.name} at its rate of {rate.count} per {rate.period:g} s", until)

    async def observe(self, site: Site, reply: str, source: str = "") -> bool:
        """Apply the automation rules that the reply (to a copy sent from egress `source`) matches; True when
        one did (the reply was a throttle: the copy is retried, never bounced for it)."""
        status = replies.status(reply)
        matched = [r for r in self.rules.automation if r.matches(site.name, status, reply)]
        if not matched:
            return False
        metrics.shaping_throttled.labels(site.name).inc()
        now = self.clock()
        for rule in matched:
            kind, only = (shaping.SUSPEND, source) if rule.action == "suspend_source" else (rule.action, "")
            await self.call(shaping.act, self.store, site.name, kind, rule.factor, now + rule.duration,
                            reply[:300], rule.name, only)
            if kind == shaping.SUSPEND:
                metrics.shaping_suspensions.labels(site.name).inc()
            log.warning("shaping: %s on site %s for %g s (rule %s): %s", rule.action, site.name, rule.duration,
                        rule.name, reply[:200])
        await self.refresh()
        return True

    async def refresh(self) -> set[str]:
        """The actions in force, from the store (every node's); unused claimed copies are kept. Returns the
        sites whose suspension ended since the last look (by time or `shaping resume`): their held copies
        are due again."""
        before = {site for site, actions in self._actions.items() if any(a.kind == shaping.SUSPEND for a in actions)}
        actions = await self.call(shaping.active, self.store, self.clock())
        grouped: dict[str, list[shaping.Action]] = {}
        for action in actions:
            grouped.setdefault(action.site, []).append(action)
        self._actions = grouped
        for name, site in self._limited.items():
            rate = self.rate(site)
            if rate is not None:
                metrics.shaping_rate.labels(name).set(rate.count / rate.period * 60)
        return before - {site for site, actions in grouped.items() if any(a.kind == shaping.SUSPEND for a in actions)}

"""Shaping actions and message rates that every node shares through the store.

An action is what automation (or an operator) decided about a site for a while: `reduce` its message
rate by a factor, or `suspend` it, for every egress source or for one. Actions are rows with an end
(`until`, epoch seconds); each node reads the active ones every second. A site's message rate is counted
in the store's counters, in blocks that each worker claims (`claim`), so that all nodes together never
send more than the limit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from policy.store import Store, utcnow
from policy.values import Rate

REDUCE, SUSPEND = "reduce", "suspend"
OPERATOR = "operator"            # the rule name of an action taken by `websofttt shaping suspend`


@dataclass(frozen=True)
class Action:
    site: str
    kind: str                    # REDUCE | SUSPEND
    factor: float                # REDUCE: the rate is multiplied by it
    until: float                 # epoch seconds
    reason: str                  # the reply that triggered it, or the operator's words
    rule: str                    # the automation rule's name, or OPERATOR
    source: str = ""             # SUSPEND for one egress source only ("" : every source)


def act(store: Store, site: str, kind: str, factor: float, until: float, reason: str, rule: str,
        source: str = "") -> None:
    """Record an action; one of the same rule, kind and source on the same site is extended, not stacked."""
    now = time.time()
    row = store.execute("SELECT id FROM shaping_actions WHERE site = ? AND rule = ? AND kind = ? AND source = ? "
                        "AND until > ?", [site, rule, kind, source, now]).fetchone()
    if row:
        store.execute("UPDATE shaping_actions SET until = ?, reason = ? WHERE id = ? AND until < ?",
                      [until, reason[:300], row[0], until])
    else:
        store.execute("INSERT INTO shaping_actions (site, kind, factor, until, reason, rule, created, source) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [site, kind, factor, until, reason[:300], rule, utcnow(), source])


def active(store: Store, now: float | None = None) -> list[Action]:
    """Actions in force, soonest to end first; ended ones are deleted on the way."""
    now = time.time() if now is None else now
    store.execute("DELETE FROM shaping_actions WHERE until <= ?", [now])
    rows = store.all("SELECT site, kind, factor, until, reason, rule, source FROM shaping_actions ORDER BY until")
    return [Action(r["site"], r["kind"], r["factor"], r["until"], r["reason"], r["rule"], r["source"]) for r in rows]


def resume(store: Store, site: str) -> int:
    """End every action on `site`; how many there were."""
    return store.execute("DELETE FROM shaping_actions WHERE site = ?", [site]).rowcount


def claim(store: Store, site: str, rate: Rate, block: int) -> int:
    """Claim up to `block` copies of the site's rate in its current window; how many were granted (0: the
    window is used up). A refused claim still counts, so the window stays used up for every node."""
    count = store.hit(f"shape:{site}", rate.period, n=block)
    return max(0, min(block, rate.count - (count - block)))


def sent_in_window(store: Store, site: str, rate: Rate) -> int:
    """Copies claimed for the site in its current window (for `shaping status`)."""
    return store.count(f"shape:{site}", rate.period)

"""Shaping actions and message rates that every node shares through the store.

An action is what automation (or an operator) decided about a site for a while: `reduce` its message
rate by a factor, or `suspend` it, for every egress source or for one. Actions are rows with an end
(`until`, epoch seconds); each node reads the active ones every second. A site's message rate is paced
through the store (`pace`): workers claim small blocks of one shared schedule, a little ahead of time so
that several send at once, and relay/shaping.py sizes both so that no span of one period ever holds more
copies than the rate allows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from policy.store import Store, utcnow

REDUCE, SUSPEND = "reduce", "suspend"
OPERATOR = "operator"            # the rule name of an action taken by `websofttt shaping suspend`
COUNTED_WINDOW = 60.0            # seconds over which `shaping status` counts the copies let through


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
    store.execute("DELETE FROM shaping_actions WHERE until <= ?", [now])     # ended ones go here, not at every read
    row = store.execute("SELECT id FROM shaping_actions WHERE site = ? AND rule = ? AND kind = ? AND source = ? "
                        "AND until > ?", [site, rule, kind, source, now]).fetchone()
    if row:
        store.execute("UPDATE shaping_actions SET until = ?, reason = ? WHERE id = ? AND until < ?",
                      [until, reason[:300], row[0], until])
    else:
        store.execute("INSERT INTO shaping_actions (site, kind, factor, until, reason, rule, created, source) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [site, kind, factor, until, reason[:300], rule, utcnow(), source])


def active(store: Store, now: float | None = None) -> list[Action]:
    """Actions in force, soonest to end first (a read only: every worker of every node asks each second)."""
    now = time.time() if now is None else now
    rows = store.all("SELECT site, kind, factor, until, reason, rule, source FROM shaping_actions WHERE until > ? "
                     "ORDER BY until", [now])
    return [Action(r["site"], r["kind"], r["factor"], r["until"], r["reason"], r["rule"], r["source"]) for r in rows]


def resume(store: Store, site: str) -> int:
    """End every action on `site`; how many there were."""
    return store.execute("DELETE FROM shaping_actions WHERE site = ?", [site]).rowcount


def pace(store: Store, site: str, interval: float, n: int, ahead: float = 0.0, now: float | None = None) -> float:
    """Claim `n` copies of the site's rate: the site's schedule (its "theoretical arrival time", shared by
    every node: GCRA) moves on by n * `interval`, as long as it is no more than `ahead` seconds in the future;
    0.0 when granted, else the seconds until a claim can be. Granted copies are counted for `shaping status`."""
    now = time.time() if now is None else now
    granted = store.execute(
        "INSERT INTO shaping_pace (site, tat) VALUES (?, ?) ON CONFLICT(site) DO UPDATE SET "
        "tat = CASE WHEN shaping_pace.tat > ? THEN shaping_pace.tat ELSE ? END + ? "
        "WHERE shaping_pace.tat <= ? RETURNING tat",
        [site, now + n * interval, now, now, n * interval, now + ahead]).fetchone()
    if granted is None:
        row = store.one("SELECT tat FROM shaping_pace WHERE site = ?", [site])
        return max(0.001, (row["tat"] if row else now) - ahead - now)
    store.hit(f"shape:{site}", COUNTED_WINDOW, now, n)
    return 0.0


def sent_recently(store: Store, site: str) -> int:
    """Copies let through to the site in its current minute of counting (for `shaping status`)."""
    return store.count(f"shape:{site}", COUNTED_WINDOW)

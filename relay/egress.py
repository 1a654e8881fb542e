"""Which egress source a copy leaves from (policy/egress.py for the configuration): weighted among the
usable sources of its tenant's pool. A source over today's warm-up cap (counted in the store, all nodes
together) is skipped when its pool says `move`, else its copies wait for the next day; a source whose
address is not configured on this host (EADDRNOTAVAIL) is taken out of its pool until the next start,
with one logged error, not retried per copy.
"""
from __future__ import annotations

import datetime
import logging
import random
import time
from collections.abc import Callable

from policy import egress
from policy.settings import Egress
from policy.store import Store
from relay.shaping import Wait

log = logging.getLogger("websofttt.delivery")
DAY = 86400.0


class Sources:
    def __init__(self, settings: Egress, store: Store, call: Callable, clock: Callable[[], float] = time.time):
        self.settings, self.store, self.call, self.clock = settings, store, call, clock
        self._down: dict[str, str] = {}          # source name -> why it was taken out

    def down(self, source: egress.Source, error: str) -> None:
        """Take a source out of every pool on this node (its address is not on this host)."""
        if source.name not in self._down:
            self._down[source.name] = error
            log.error("egress source %s (%s) taken out of its pools until the next start: %s", source.name,
                      source.address, error)

    async def choose(self, pool_name: str | None, held: dict[str, float] | None = None,
                     site: str = "") -> egress.Source | Wait:
        """A source of the pool for one copy, or why the copy waits (every source out, over its cap, or `held`:
        suspended for the copy's `site`, with when that ends)."""
        pool = self.settings.pool(pool_name)
        held = held or {}
        usable = [(self.settings.source(n), w) for n, w in pool.sources if n not in self._down]
        candidates = [(s, w) for s, w in usable if s.name not in held]
        if not candidates and usable:
            return Wait(f"site {site} suspended for every source of egress pool {pool.name}",
                        min(held[s.name] for s, _ in usable))
        if not candidates:
            return Wait(f"no usable source in egress pool {pool.name} ({'; '.join(self._down.values())})",
                        self.clock() + 300)
        if len(candidates) == 1 and not candidates[0][0].warmup:     # the usual pool: no choice, no cap to count
            return candidates[0][0]
        today = datetime.datetime.fromtimestamp(self.clock(), datetime.UTC).date()
        tomorrow = datetime.datetime.combine(today + datetime.timedelta(days=1), datetime.time(), datetime.UTC)
        while candidates:
            source = random.choices([s for s, _ in candidates], [w for _, w in candidates])[0]
            cap = source.cap(today)
            if cap is None:
                return source
            sent = await self.call(self.store.hit, f"egress:{source.name}:{today.isoformat()}", 2 * DAY)
            if sent <= cap:
                return source
            if pool.overflow == "wait":
                return Wait(f"source {source.name} at its warm-up cap of {cap} copies today", tomorrow.timestamp())
            candidates = [(s, w) for s, w in candidates if s.name != source.name]
        return Wait(f"every source of egress pool {pool.name} is at its warm-up cap today", tomorrow.timestamp())

"""What a worker read from the store, trusted for a few seconds: one helper for every such cache.

The store is shared by every worker and node, so what the command line changes (a tenant suspended, a
network added, a DKIM key) must reach running workers without a restart; reading it for every command
costs a round trip on PostgreSQL. `Recent` keeps each value for `ttl` seconds (0: never), bounded in size,
on an injectable clock so tests need not sleep.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from cachetools import TTLCache

V = TypeVar("V")
_MISSING = object()


class Recent(Generic[V]):
    def __init__(self, ttl: float, size: int = 10000, clock: Callable[[], float] = time.monotonic):
        self._values: TTLCache | None = TTLCache(size, ttl, timer=clock) if ttl > 0 else None

    async def get(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        """The value of `key` read within the last ttl seconds, else `await load()` (kept, also if None)."""
        if self._values is not None:
            value = self._values.get(key, _MISSING)
            if value is not _MISSING:
                return value
        value = await load()
        if self._values is not None:
            self._values[key] = value
        return value

    def put(self, key: Hashable, value: V) -> None:
        """What the caller just learnt for certain (a write it made), kept as if read now."""
        if self._values is not None:
            self._values[key] = value

    def clear(self) -> None:
        if self._values is not None:
            self._values.clear()

"""Group commit for the store: the per-message writes of one event-loop turn share one transaction.

A worker writes several rows per message (the sent copy's token, hourly counters, the event row, the
soft-bounce reset), and each was its own commit: in SQLite's WAL mode that is a dozen file locks and a
write per page, about 60-200 µs each, in the event loop's thread. Writes queued here are committed
together at the end of the loop turn (`now`: the caller waits, as for a synchronous write) or within
`DELAY` (`later`: bookkeeping nobody waits for). If the shared transaction fails, each write is
retried on its own, so one bad write never takes another down and each caller sees its own result;
if no transaction can begin (the store is locked past its busy timeout, or down), every write of
the batch fails at once: one wait for the lock, not one per write.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from policy.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

DELAY = 0.05        # seconds a `later` write may wait for company (lost with the process if it is killed)
MAX_PENDING = 500   # writes after which the batch is committed without waiting


class GroupCommit:
    """One per store connection and event loop."""

    def __init__(self, store: Store):
        self.store = store
        self._pending: list[tuple[Callable[..., Any], tuple, asyncio.Future | None]] = []
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._soon = False

    async def now(self, write: Callable[..., T], *args: Any) -> T:
        """Run `write(store, *args)` in this turn's transaction; return its result or raise its error."""
        done = asyncio.get_running_loop().create_future()
        self._pending.append((write, args, done))
        self._schedule(soon=True)
        return await done

    def later(self, write: Callable[..., Any], *args: Any) -> None:
        """Queue `write(store, *args)`; a failure is logged, never raised: the mail path has moved on."""
        self._pending.append((write, args, None))
        self._schedule(soon=len(self._pending) >= MAX_PENDING)

    def flush(self) -> None:
        """Commit what is queued now (also at shutdown, before the store is closed)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._soon = None, False
        batch, self._pending = self._pending, []
        if not batch:
            return
        begun = False
        try:
            with self.store.transaction():
                begun = True
                results = [write(self.store, *args) for write, args, _ in batch]
        except Exception as e:      # a store error or a bug in one write: the transaction is rolled back
            if not begun:           # no transaction at all (the store is locked or down): none can run alone
                log.error("store unavailable, %d writes not made: %s", len(batch), e)
                for _, _, done in batch:
                    _settle(done, e)
                return
            if len(batch) > 1:
                log.warning("group commit of %d writes failed (%s), writing them one by one", len(batch), e)
            for entry in batch:
                self._alone(*entry)
            return
        for (_, _, done), result in zip(batch, results):
            _settle(done, None, result)

    def _alone(self, write: Callable[..., Any], args: tuple, done: asyncio.Future | None) -> None:
        try:
            result = write(self.store, *args)
        except Exception as e:
            if done is None:
                log.error("store bookkeeping failed (%s): %s", getattr(write, "__qualname__", write), e)
            _settle(done, e)
            return
        _settle(done, None, result)

    def _schedule(self, soon: bool) -> None:
        if self._soon or (self._timer is not None and not soon):
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_soon(self.flush) if soon else loop.call_later(DELAY, self.flush)
        self._soon = soon


def _settle(done: asyncio.Future | None, error: Exception | None, result: Any = None) -> None:
    """Hand a write's outcome to the caller waiting for it, if any (and still waiting)."""
    if done is None or done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)

"""Group commit for the store: the per-message writes of one event-loop turn share one transaction.

A worker writes several rows per message (the sent copy's token, hourly counters, the event row, the
soft-bounce reset), and each was its own commit: in SQLite's WAL mode that is a dozen file locks and a
write per page, about 60-200 µs each, in the event loop's thread. Writes queued here are committed
together at the end of the loop turn (`now`: the caller waits, as for a synchronous write) or within
`DELAY` (`later`: bookkeeping nobody waits for), through `store.call`: on PostgreSQL in a thread, the
event loop going on meanwhile. If the shared transaction fails, each write is
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
    """One per store connection and event loop. One batch is committed at a time (through `store.call`, so
    on PostgreSQL the loop goes on meanwhile); what is queued during a commit goes in the next."""

    def __init__(self, store: Store):
        self.store = store
        self._pending: list[Write] = []
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._soon = False
        self._committing: asyncio.Task | None = None

    def submit(self, write: Callable[..., T], *args: Any, soon: bool = True) -> asyncio.Future:
        """Queue `write(store, *args)` for this turn's transaction (`soon`), or within DELAY; the future gets
        its result or its error."""
        done = asyncio.get_running_loop().create_future()
        self._pending.append((write, args, done))
        self._schedule(soon=soon or len(self._pending) >= MAX_PENDING)
        return done

    async def now(self, write: Callable[..., T], *args: Any) -> T:
        """Run `write(store, *args)` in this turn's transaction; return its result or raise its error."""
        return await self.submit(write, *args)

    def later(self, write: Callable[..., Any], *args: Any) -> None:
        """Queue `write(store, *args)`; a failure is logged, never raised: the mail path has moved on."""
        self._pending.append((write, args, None))
        self._schedule(soon=len(self._pending) >= MAX_PENDING)

    def hurry(self) -> None:
        """Commit what is queued as soon as the loop turns, not after DELAY (someone waits for a `later`)."""
        if self._pending:
            self._schedule(soon=True)

    async def drain(self) -> None:
        """Commit everything queued, also what is queued meanwhile (at shutdown, before the store is closed)."""
        while self._pending or self._committing is not None:
            if self._committing is None:
                self._start()
            if self._committing is not None:
                await asyncio.shield(self._committing)

    def _schedule(self, soon: bool) -> None:
        if self._committing is not None or self._soon or (self._timer is not None and not soon):
            return                     # a commit runs: the next starts when it ends
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_soon(self._start) if soon else loop.call_later(DELAY, self._start)
        self._soon = soon

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._soon = None, False
        if self._pending and self._committing is None:
            batch, self._pending = self._pending, []
            self._committing = asyncio.get_running_loop().create_task(self._commit(batch))

    async def _commit(self, batch: list[Write]) -> None:
        try:
            try:
                outcomes = await self.store.call(_run, self.store, batch)
            except Exception as e:     # no transaction at all (the store is locked, down, or no connection)
                log.error("store unavailable, %d writes not made: %s", len(batch), e)
                for _, _, done in batch:
                    _settle(done, e)
                return
            for (write, _, done), (error, result) in zip(batch, outcomes):
                if error is not None and done is None:
                    log.error("store bookkeeping failed (%s): %s", getattr(write, "__qualname__", write), error)
                _settle(done, error, result)
        finally:
            self._committing = None
            if self._pending:
                self._schedule(soon=any(done is not None for _, _, done in self._pending)
                               or len(self._pending) >= MAX_PENDING)


Write = tuple[Callable[..., Any], tuple, "asyncio.Future | None"]


def _run(store: Store, batch: list[Write]) -> list[tuple[Exception | None, Any]]:
    """The batch in one transaction; if that fails after it began, each write alone, so one bad write never
    takes another down. Raises if no transaction can begin: then none of them can run alone either."""
    begun = False
    try:
        with store.transaction():
            begun = True
            return [(None, write(store, *args)) for write, args, _ in batch]
    except Exception as e:      # a store error or a bug in one write: the transaction is rolled back
        if not begun:
            raise
        if len(batch) > 1:
            log.warning("group commit of %d writes failed (%s), writing them one by one", len(batch), e)
    return [_alone(store, write, args) for write, args, _ in batch]


def _alone(store: Store, write: Callable[..., Any], args: tuple) -> tuple[Exception | None, Any]:
    try:
        return None, write(store, *args)
    except Exception as e:
        return e, None


def _settle(done: asyncio.Future | None, error: Exception | None, result: Any = None) -> None:
    """Hand a write's outcome to the caller waiting for it, if any (and still waiting)."""
    if done is None or done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)

"""Fresh mail handed from a worker's submission sessions to its delivery loop in memory (the spool's `Handoff`),
so that it does not go through SQLite on its way out.

`reserve` comes before the spool's commit: the recipients' tokens are issued and their sent rows join the
store's pending writes. `take` comes after the spool's fsync: once the sent rows are committed too (a reply
or bounce names the token), the recipients wait here, in order, for the loop to start them (`next`), the
body shared by all of them and never read back. `release` forgets a message whose commit failed. Room is
bounded (FRESH_RECIPIENTS, FRESH_BYTES): beyond it a message simply waits in the spool for the loop's scan,
which also takes over what waited here longer than the spool's lease.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Callable

from policy import outbox, sent
from policy.groupcommit import GroupCommit
from policy.store import Store
from policy.tokens import TokenKeys
from relay.spool import LEASE, Due, Message, Queued

log = logging.getLogger("websofttt.delivery")

FRESH_RECIPIENTS = 4096       # recipients handed over in memory and not yet started, at most
FRESH_BYTES = 32 * 1024 * 1024    # bodies of those, at most (one copy per message, whatever its recipients)
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(.*?)\r?$", re.I | re.M)


class Fresh:
    """A message handed over in memory: its recipients not yet started, and their tokens."""
    __slots__ = ("message", "queued", "recipients", "tokens", "recorded", "lease_ends")

    def __init__(self, message: Message, tokens: dict[str, str]):
        self.message = message
        self.queued: Queued | None = None                 # set once the spool has committed it
        self.recipients = deque(dict.fromkeys(message.recipients))
        self.tokens = tokens
        self.recorded: asyncio.Future | None = None       # the tokens' sent rows, committed (or the error)
        self.lease_ends = time.time() + LEASE             # the scan sees its rows from then on

    def next_due(self) -> Due:
        recipient = self.recipients.popleft()
        assert self.queued is not None       # only a committed Fresh is queued for its recipients (_queue)
        return self.queued.due(recipient, self.tokens[recipient] if _committed(self.recorded) else None)


class FreshMail:
    """The hand-off of one delivery loop. `ready`: recipients may start (the loop's pump); `missed`: a message
    was not reserved and is in the spool only (the loop looks there now)."""

    def __init__(self, writes: GroupCommit, tokens: TokenKeys, sent_retention: float, ready: Callable[[], None],
                 missed: Callable[[], None]):
        self._writes, self._tokens, self._retention = writes, tokens, sent_retention
        self._ready, self._missed = ready, missed
        self._fresh: deque[Fresh] = deque()               # handed over, in order, recipients not yet started
        self._reserved: dict[str, Fresh] = {}             # handed over, the spool's commit not yet known
        self._keys: set[tuple[str, str]] = set()          # their recipients: the scan leaves them alone
        self._recipients = self._bytes = 0                # of both, against FRESH_RECIPIENTS and FRESH_BYTES
        self.closed = False                               # the loop is stopping: nothing more is taken

    def reserve(self, message: Message) -> bool:
        """Room for `message`? Then its recipients' tokens are issued and their sent rows join the store's
        pending writes (committed by `take`, if not before)."""
        recipients = dict.fromkeys(message.recipients)
        size, count = len(message.data), len(recipients)
        if (self.closed or message.tenant == outbox.PROVIDER
                or self._recipients + count > FRESH_RECIPIENTS or self._bytes + size > FRESH_BYTES):
            return False
        fresh = self._reserved[message.id] = Fresh(message, {r: self._tokens.issue() for r in recipients})
        mid = message_id(message.data)
        fresh.recorded = self._writes.submit(_record_sent, [(t, message.tenant, r, mid, message.id, self._retention)
                                                            for r, t in fresh.tokens.items()], soon=False)
        self._keys.update((message.id, r) for r in recipients)
        self._recipients += count
        self._bytes += size
        return True

    def take(self, queued: Queued) -> None:
        """After the spool's fsync: deliver `queued` from memory, or let the loop find it in the spool.

        A copy leaves only once its token's sent row is committed: if that row still waits in the store's group
        commit, it is committed now, in one transaction with the rows of every message accepted meanwhile."""
        fresh = self._reserved.pop(queued.message.id, None) if queued.leased else None
        if fresh is None:             # no room was reserved for it: the scan finds it
            return self._missed()
        recorded = fresh.recorded
        assert recorded is not None     # set by `reserve` with the Fresh
        if recorded.done():
            return self._queue(fresh, queued)
        self._writes.hurry()
        recorded.add_done_callback(lambda _: self._queue(fresh, queued))

    def release(self, message: Message) -> None:
        """The spool's commit failed: the client is told to try again; forget the tokens."""
        fresh = self._reserved.pop(message.id, None)
        if fresh is not None:
            self._drop(fresh)
            self._writes.later(_forget_sent, list(fresh.tokens.values()))

    def holds(self, key: tuple[str, str]) -> bool:
        """This (queue id, recipient) waits here: the spool's scan must not start it."""
        return key in self._keys

    def expire(self, now: float) -> None:
        """What waited longer than the spool's lease is left to the scan."""
        while self._fresh and self._fresh[0].lease_ends <= now:
            self._drop(self._fresh.popleft())

    def next(self) -> tuple[Due, bytes] | None:
        """The next recipient to start, in order, with the message's body; None when none waits."""
        while self._fresh:
            fresh = self._fresh[0]
            if not fresh.recipients:
                self._fresh.popleft()
                continue
            due = fresh.next_due()
            self._recipients -= 1
            self._keys.discard((due.queue_id, due.recipient))
            if not fresh.recipients:
                self._fresh.popleft()
                self._bytes -= len(fresh.message.data)
            return due, fresh.message.data
        return None

    def _queue(self, fresh: Fresh, queued: Queued) -> None:
        if not _committed(fresh.recorded):     # each copy records a token of its own (or is deferred)
            log.warning("cannot record the tokens of %s, each copy records its own", queued.message.id)
        fresh.queued = queued
        self._fresh.append(fresh)
        self._ready()

    def _drop(self, fresh: Fresh) -> None:
        """Forget what is left of a message in memory (its rows are in the spool for the scan)."""
        self._recipients -= len(fresh.recipients)
        self._bytes -= len(fresh.message.data)
        self._keys.difference_update((fresh.message.id, r) for r in fresh.recipients)
        fresh.recipients.clear()


def message_id(body: bytes) -> str | None:
    """The Message-ID of a message's header, as its sent row keeps it."""
    m = _MESSAGE_ID.search(body.split(b"\r\n\r\n", 1)[0])
    return m.group(1).decode("utf-8", "replace").strip() if m else None


def _record_sent(store: Store, rows: list[tuple]) -> None:
    """The sent rows of one handed-over message, one write of the group commit."""
    for row in rows:
        sent.record(store, *row)


def _committed(write: asyncio.Future | None) -> bool:
    return write is not None and write.done() and not write.cancelled() and write.exception() is None


def _forget_sent(store: Store, tokens: list[str]) -> None:
    """Sent rows of a message the spool did not take: no copy will ever carry these tokens."""
    store.executemany("DELETE FROM sent WHERE token = ?", [(t,) for t in tokens])

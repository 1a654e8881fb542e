"""The delivery loop of one spool shard: each due recipient gets its own signed copy, then a recorded outcome.

`deliver` is the whole outbound path for one recipient, in order: hold, expiry, suppression re-check (for
mail read back from the spool: a retry, or mail that waited there; mail handed over in memory was looked up at
its RCPT a moment before), route and shaping (relay/shaping.py: a copy whose site is suspended or at its rate
waits without using up an attempt), the egress source of the tenant's pool (relay/egress.py), token,
per-recipient headers, DKIM (relay/signer.py), send, what the reply teaches the shaping, record. The route
goes through the domain's transport security (relay/transport.py: MTA-STS and DANE) first.
Everything it decides is recorded in the spool (state, attempts, next attempt) and as an event in the store.

Mail of a suspended tenant is held: not tried, not expired, kept until `tenant resume` (re-checked every
HOLD_RECHECK). Mail of a removed tenant is dropped, its body erased, at its turn on every node. The provider's
own mail (acknowledgements, taken from the store's outbox into the spool) goes the same way without tenant
headers or token, from the null sender (RFC 3834 §3.3).

Fresh mail does not go through SQLite on its way out: this worker's submission sessions hand each message over
in memory (relay/fresh.py), its body shared by all its recipients and never read back. The spool's scan
(`due`, at least every second) finds the rest: retries, the leases left by a previous run, adopted shards, and
mail that did not fit in the hand-off. A recipient is claimed by one attempt at a time (`_inflight`, held until
its outcome is committed) and `delivery.concurrency` copies are on their way at most.
"""
from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from dataclasses import dataclass
from functools import partial

from policy import bounces, events, logs, metrics, outbox, replies, sent, standing, suppression, tenants
from policy.cache import Recent
from policy.groupcommit import GroupCommit
from policy.settings import Settings
from policy.store import Store, StoreError, epoch
from policy.tokens import TokenKeys
from relay.eightbit import ConversionError, to_7bit
from relay.fresh import FreshMail, message_id
from relay.routing import RouteError, Router
from relay.egress import Sources
from relay.shaping import Shaper, Wait, waiting
from relay.signer import Signer
from relay.signing import SigningError
from relay.smtp_out import Courier, Outcome
from relay.transport import Refused, Transport
from relay.spool import LEASE, Due, Message, Spool, SpoolError, State

log = logging.getLogger("websofttt.delivery")

_CAMPAIGN = re.compile(r"[^A-Za-z0-9._-]")
HOUSEKEEPING_INTERVAL = 1.0   # seconds between looks at the outbox, the DKIM keys and the WAL
HOLD_RECHECK = 60.0           # seconds between looks at a suspended tenant's held mail
SHAPED_IN_MEMORY = 1.0        # a copy whose site's rate allows it within this many seconds waits for it here


@dataclass(frozen=True)
class Verdict:
    """What one attempt at one recipient came to; `DeliveryLoop._settle` records it."""
    state: State
    reply: str
    token: str | None
    held: bool = False            # DEFERRED without an attempt: the tenant or the site is held
    until: float = 0.0            # held: when to look again (0: HOLD_RECHECK from now)
    tls: str = ""                 # the session's TLS (Outcome.tls), shown with the event

    @classmethod
    def of(cls, outcome: Outcome, token: str | None) -> Verdict:
        if outcome.delivered:
            return cls(State.DELIVERED, outcome.reply, token, tls=outcome.tls)
        return cls(State.FAILED if outcome.permanent else State.DEFERRED, outcome.reply, token, tls=outcome.tls)

    @property
    def detail(self) -> str:
        """What the event row says: the reply, and the TLS it came over."""
        return f"{self.reply} [TLS: {self.tls}]" if self.tls else self.reply

    @property
    def status(self) -> str:
        """The enhanced status code (RFC 3463) of the reply, '' if it has none."""
        return replies.status(self.reply)


class DeliveryLoop:
    def __init__(self, settings: Settings, store: Store, writes: GroupCommit, spool: Spool, signer: Signer,
                 tokens: TokenKeys, router: Router, transport: Transport, courier: Courier, shaper: Shaper,
                 sources: Sources):
        self.settings = settings
        self.store, self.writes, self.spool = store, writes, spool
        self.signer, self.tokens = signer, tokens
        self.router, self.transport, self.courier, self.shaper, self.sources = router, transport, courier, shaper, sources
        self.wake = asyncio.Event()
        self._inflight: set[tuple[str, str]] = set()     # claimed: an attempt runs, or its outcome is not committed
        # the hand-off from this worker's sessions (the spool's Handoff)
        self.fresh = FreshMail(writes, tokens, settings.delivery.sent_retention, self._pump, self._scan_now)
        self._scan_at = 0.0           # time.time() of the next look at the spool (0: as soon as a copy may start)
        self._scan_waiting = False    # a look is due and waits for a free place (fresh mail does not take it)
        self._started = time.time()   # rows leased before started + LEASE are a previous run's: due now
        self._stopping = False
        self._recording: dict[tuple[str, str], asyncio.Future] = {}
        self._erased = False          # a body was erased since the last WAL checkpoint
        self._tasks: set[asyncio.Task] = set()
        self._tenants: Recent[tenants.Tenant | None] = Recent(settings.submission.trust_cache_ttl)  # suspended: held

    async def run(self, stop: asyncio.Event) -> None:
        """Look at the spool when something there is due (or every second) and start what is due there, up to the
        concurrency limit; fresh mail is started as it is handed over and as places free up. The chores run
        beside it (`_housekeeping`)."""
        chores = asyncio.create_task(self._housekeeping(stop))
        limit = self.settings.delivery.concurrency
        while not stop.is_set():
            self.wake.clear()         # here: a wake-up during this turn's awaits is not lost
            if time.time() >= self._scan_at:
                if len(self._tasks) < limit:
                    self._scan(limit)
                else:
                    self._scan_waiting = True
            self._pump()
            pause = 1.0 if self._scan_waiting else min(1.0, max(0.0, self._scan_at - time.time()))
            await _first(self.wake, stop, timeout=pause)
        await chores
        self._stopping = self.fresh.closed = True     # what is in memory is leased in the spool: the next run takes it
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.delivery.data_timeout)
        await self.courier.close()
        await self.transport.close()

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """Every HOUSEKEEPING_INTERVAL: provider mail from the store's outbox into the spool, the DKIM keys kept
        current, and the spool's WAL folded when bodies were erased. A chore that fails is logged and tried
        again next time; it never stops the deliveries."""
        while not stop.is_set():
            try:
                await self._take_outbox()
                await self.signer.refresh()
                for site in await self.shaper.refresh():      # a suspension ended: its held copies go now
                    await self.spool.wake(waiting(site))
                    self._scan_at = 0.0
                    self.wake.set()
                if self._erased:
                    self._erased = False
                    await asyncio.get_running_loop().run_in_executor(None, self.spool.checkpoint)
            except Exception:
                log.exception("delivery housekeeping failed; trying again in %g s", HOUSEKEEPING_INTERVAL)
            await _first(stop, timeout=HOUSEKEEPING_INTERVAL)

    def _scan(self, limit: int) -> None:
        """Start what is due in the spool and not claimed, oldest first, in the free places."""
        now = time.time()
        self.fresh.expire(now)        # what waited in memory too long: the scan takes it over
        free = limit - len(self._tasks)
        leased_before = self._started + LEASE
        started = 0
        for due in self.spool.due(now, free + len(self._inflight), leased_before):
            key = (due.queue_id, due.recipient)
            if started < free and key not in self._inflight and not self.fresh.holds(key):
                self._start(due)
                started += 1
        self._scan_waiting = False
        if started == free:           # the places ran out first: look again as soon as one is free
            self._scan_at = now
        else:
            next_due = self.spool.next_due()
            self._scan_at = now + (1.0 if next_due is None else min(1.0, max(0.05, next_due - now)))

    def _scan_now(self) -> None:
        """Mail the hand-off had no room for is in the spool: look there now."""
        self._scan_at = 0.0
        self.wake.set()

    def _pump(self) -> None:
        """Start handed-over recipients, in order, in the free places (unless the spool's scan waits for one)."""
        limit = self.settings.delivery.concurrency
        while len(self._tasks) < limit and not self._scan_waiting and not self._stopping:
            handed = self.fresh.next()
            if handed is None:
                return
            due, body = handed
            if (due.queue_id, due.recipient) not in self._inflight:
                self._start(due, body)

    def _start(self, due: Due, body: bytes | None = None) -> None:
        self._inflight.add((due.queue_id, due.recipient))
        task = asyncio.create_task(self._attempt(due, body))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if self._scan_waiting:
            self.wake.set()
        else:
            self._pump()

    async def _attempt(self, due: Due, body: bytes | None = None) -> None:
        key = (due.queue_id, due.recipient)
        try:
            verdict = await self.deliver(due, body)
            if verdict is not None:
                await self._settle(due, verdict)
        except Exception:   # a bug or a damaged key must not kill the loop: retry later, like a 4xx
            log.exception("delivery of %s failed unexpectedly", due.queue_id)
            await self._settle(due, Verdict(State.DEFERRED, "451 4.3.0 Local error, will retry", due.token))
        finally:
            recording = self._recording.pop(key, None)
            if recording is None or recording.done():
                self._inflight.discard(key)
            else:                     # claimed until its outcome is committed: the scan must not try it again
                recording.add_done_callback(lambda _: self._inflight.discard(key))

    async def _take_outbox(self) -> None:
        """Move provider mail from the store's outbox into this shard's spool (durable before it leaves the outbox)."""
        try:
            call = self.store.call
            if not await call(outbox.waiting, self.store):
                return
            for item in await call(outbox.claim, self.store):
                await self.spool.enqueue(Message(item.queue_id, outbox.PROVIDER, "",
                                                 (item.recipient,), item.raw))
                await call(outbox.done, self.store, item.queue_id)
                self._scan_at = 0.0
                self.wake.set()
        except (SpoolError, OSError, RuntimeError, *StoreError) as e:     # the claim lapses; another try takes it
            log.error("cannot take provider mail from the outbox: %s", e)

    async def deliver(self, due: Due, body: bytes | None = None) -> Verdict | None:
        """The outbound path of one recipient, top to bottom (`body`: handed over in memory, else read): what
        it came to, for `_settle` to record; None if there is nothing to record (dropped meanwhile)."""
        tenant = await self._tenant(due.tenant)
        if tenant is not None and tenant.status == tenants.Status.SUSPENDED:
            return Verdict(State.DEFERRED, "451 4.7.1 Held: the tenant is suspended", due.token, held=True)
        if tenant is not None and tenant.removed:
            return Verdict(State.DROPPED, "554 5.7.1 Dropped: the tenant was removed", due.token)
        age = time.time() - epoch(due.received)
        if age > self.settings.delivery.max_queue_lifetime:
            return Verdict(State.EXPIRED, "554 4.4.7 Message expired in the queue", due.token)
        if body is None:              # from the spool; mail handed over in memory was looked up at RCPT just now
            entry = await self.store.call(suppression.find, self.store, due.tenant, due.recipient)
            if entry is not None:
                metrics.suppression_hits.labels("delivery", entry.cause).inc()
                return Verdict(State.SUPPRESSED, f"550 5.7.1 Recipient {entry.reason}", due.token)
            body = self.spool.body(due.queue_id)
            if body is None:
                return None                           # dropped by the operator meanwhile
        domain = due.recipient.rpartition("@")[2]
        try:
            destinations = await self.transport.secure(domain, await self.router.route(domain))
        except RouteError as e:
            return Verdict.of(Outcome(False, e.permanent, f"{'550' if e.permanent else '451'} {e.status} {e.text}"),
                              due.token)
        except Refused as e:          # MTA-STS or DANE leaves no MX host to try: later, never in clear
            return Verdict.of(Outcome(False, False, e.reply), due.token)
        site = self.shaper.site(domain, destinations, self.router.routed(domain))
        wait = await self.shaper.admit(site)
        while wait is not None and wait.until - time.time() <= SHAPED_IN_MEMORY:    # the site's next turn is near
            await asyncio.sleep(max(0.0, wait.until - time.time()))
            wait = await self.shaper.admit(site)
        if wait is not None:          # not an attempt: the copy waits in the spool, never bounced for it
            return Verdict(State.DEFERRED, wait.reply, due.token, held=True, until=wait.until)
        source = await self.sources.choose(tenant.pool if tenant is not None else None, self.shaper.held_sources(site),
                                           site.name)
        if isinstance(source, Wait):
            return Verdict(State.DEFERRED, source.reply, due.token, held=True, until=source.until)
        provider = due.tenant == outbox.PROVIDER
        if provider:
            token, copy = None, body
        else:
            token = due.token or await self._new_token(due, body)
            copy = self._headers(due, token) + body
        try:
            signed = await self.signer.sign(due.tenant, due.from_domain, copy)
        except SigningError as e:
            return Verdict(State.DEFERRED, f"451 4.7.5 DKIM signing failed: {e}", token)
        envelope_from = "" if provider else f"bounce+{token}@{self.settings.provider.bounce_domain}"
        logs.event("attempt", queue_id=due.queue_id, tenant=due.tenant, recipient=due.recipient,
                   attempt=due.attempts + 1, hosts=len(destinations), site=site.name)
        seven_bit = partial(self._seven_bit, due, copy) if due.eightbit or not body.isascii() else None
        outcome = await self.courier.send(destinations, envelope_from, due.recipient, signed, seven_bit, source, site)
        if outcome.source_unusable:   # not this copy's fault: out of the pool, and the copy tries another at once
            self.sources.down(source, outcome.reply)
            return Verdict(State.DEFERRED, outcome.reply, token, held=True, until=time.time() + 1)
        if not outcome.delivered and not outcome.local and await self.shaper.observe(site, outcome.reply, source.name):
            outcome = Outcome(False, False, outcome.reply)         # a throttle: retried, never bounced for it
        return Verdict.of(outcome, token)

    async def _seven_bit(self, due: Due, copy: bytes) -> bytes | Outcome:
        """The copy for a next hop without 8BITMIME: converted, then signed, so the signatures cover what is sent.
        8-bit header fields cannot be converted: 554 5.6.3 (RFC 6152 §3, RFC 3463), a permanent failure."""
        try:
            return await self.signer.sign(due.tenant, due.from_domain, to_7bit(copy))
        except ConversionError as e:
            return Outcome(False, True, f"554 5.6.3 Conversion required but not possible: {e}")
        except SigningError as e:
            return Outcome(False, False, f"451 4.7.5 DKIM signing failed: {e}")

    async def _tenant(self, tenant: str) -> tenants.Tenant | None:
        if tenant == outbox.PROVIDER:
            return None
        return await self._tenants.get(tenant, lambda: self.store.call(tenants.get, self.store, tenant))

    async def _new_token(self, due: Due, body: bytes) -> str:
        """A token for this copy, committed with its sent row before the copy leaves (a reply names it)."""
        token = self.tokens.issue()
        await self.writes.now(sent.record, token, due.tenant, due.recipient, message_id(body), due.queue_id,
                              self.settings.delivery.sent_retention)
        return token

    def _headers(self, due: Due, token: str) -> bytes:
        """Per-recipient headers (List-Unsubscribe, Feedback-ID, the tenant), prepended; the tenant's own
        headers are left as they are."""
        p = self.settings.provider
        campaign = _CAMPAIGN.sub("", due.campaign or "")[:64] or "default"
        return (f"List-Unsubscribe: <mailto:unsubscribe+{token}@{p.domain}?subject=unsubscribe>,\r\n"
                f" <{self.settings.http.public_url}/u/{token}>\r\n"
                f"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
                f"Feedback-ID: {campaign}:{due.tenant}:{p.domain}\r\n"
                f"X-WebSoftTT-Tenant: {due.tenant}\r\n").encode("ascii")

    async def _settle(self, due: Due, verdict: Verdict) -> None:
        """The one place a verdict is recorded: spool state, bounce rules, the tenant's standing, metrics,
        the event row and the log line.

        Once the next hop said 250 the spool records it first; the store's bookkeeping after it may fail
        (a lock held too long) without turning a delivered copy into a retry, that is a duplicate."""
        state, reply, token = verdict.state, verdict.reply, verdict.token
        if verdict.held:              # not an attempt: looked at again later, nothing counted
            await self.spool.record(due.queue_id, due.recipient, state, due.attempts,
                                    verdict.until or time.time() + HOLD_RECHECK, reply, token)
            return
        if state is State.DEFERRED:
            schedule = self.settings.delivery.retry_schedule
            delay = schedule[min(due.attempts, len(schedule) - 1)] * random.uniform(0.9, 1.1)
            await self.spool.record(due.queue_id, due.recipient, state, due.attempts + 1, time.time() + delay,
                                    reply, token)
            metrics.deferred.labels(due.tenant, replies.label(reply)).inc()
            return self._event(state, due, verdict.detail)
        if state is State.FAILED:
            await self.store.call(bounces.record, self.store, self.settings.policy, due.tenant, due.recipient,
                                  verdict.status, True, "", f"delivery {due.queue_id}")
        # A final state is not waited for: it is committed with the spool's next write (an enqueue, usually),
        # the recipient staying claimed until then. A crash before it means one more copy, never a lost one.
        recording = self.spool.record(due.queue_id, due.recipient, state, due.attempts + 1, 0, reply, token,
                                      wait=False)
        recording.add_done_callback(self._recorded)
        self._recording[(due.queue_id, due.recipient)] = recording
        if state in standing.OUTCOMES and due.tenant != outbox.PROVIDER:
            self.writes.later(standing.note, due.tenant, state)
        if state is State.DELIVERED:
            metrics.delivered.labels(due.tenant).inc()
            self.writes.later(bounces.delivered, due.tenant, due.recipient)
        elif state in (State.FAILED, State.EXPIRED):
            kind = "expired" if state is State.EXPIRED else bounces.bounce_class(replies.label(reply), True)
            metrics.bounced.labels(due.tenant, kind).inc()
        self._event(state, due, verdict.detail)

    def _recorded(self, recording: asyncio.Future) -> None:
        if recording.cancelled():
            return
        if recording.exception() is not None:      # still pending in the spool: it will be tried again
            log.error("cannot record a delivery outcome, the recipient will be tried again: %s",
                      recording.exception())
        else:
            self._erased = True       # a body may have been erased: the next checkpoint folds the WAL

    def _event(self, kind: State, due: Due, detail: str) -> None:
        """The event row (queue show) and the log line; a failed or expired copy is logged as `bounced`."""
        self.writes.later(events.record, kind, due.tenant, detail, due.queue_id, due.recipient, due.campaign)
        logs.event("bounced" if kind in (State.FAILED, State.EXPIRED) else kind, queue_id=due.queue_id,
                   tenant=due.tenant, recipient=due.recipient, state=kind, reply=detail)


async def _first(*events: asyncio.Event, timeout: float) -> None:
    """Until one of `events` is set, or `timeout` seconds."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()

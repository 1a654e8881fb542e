"""The delivery loop of one spool shard: each due recipient gets its own signed copy, then a recorded outcome.

`deliver` is the whole outbound path for one recipient, in order: hold, expiry, suppression re-check,
token, per-recipient headers, DKIM, route, send, record. Everything it decides is recorded in the
spool (state, attempts, next attempt) and as an event in the store.

Mail of a suspended tenant is held: not tried, not expired, kept until `tenant resume` (re-checked every
HOLD_RECHECK). The provider's own mail (acknowledgements, taken from the store's outbox into the spool)
goes the same way without tenant headers or token, from the null sender (RFC 3834 §3.3).
"""
from __future__ import annotations

import asyncio
import logging
import random
import re
import time

from policy import bounces, dkimkeys, logs, metrics, outbox, sent, standing, suppression, tenants
from policy.groupcommit import GroupCommit
from policy.settings import Settings
from policy.store import Store, StoreError, epoch, utcnow
from policy.tokens import TokenKeys
from relay.routing import RouteError, Router
from relay.signing import SigningError, SigningKey, provider_keys, sign
from relay.smtp_out import Courier, Outcome
from relay.spool import Due, Message, Spool, SpoolError, new_queue_id

log = logging.getLogger("websofttt.delivery")

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(.*?)\r?$", re.I | re.M)
_CAMPAIGN = re.compile(r"[^A-Za-z0-9._-]")
_ENHANCED = re.compile(r"^[245]\d\d[ -]([245]\.\d{1,3}\.\d{1,3})\b")
TENANT_KEY_TTL = 30.0         # seconds a loop caches a tenant domain's key (or its absence)
CHECKPOINT_INTERVAL = 1.0     # seconds between WAL truncations while bodies are being erased
TENANT_STATUS_TTL = 5.0       # seconds a loop trusts a tenant's status (suspension holds its mail)
HOLD_RECHECK = 60.0           # seconds between looks at a suspended tenant's held mail
OUTBOX_INTERVAL = 1.0         # seconds between looks at the store's outbox
KEY_REFRESH = 60.0            # seconds between re-reads of the provider's keys (a rotation becomes active)
SIGN_IN_THREAD = 256 * 1024   # bytes over which a copy is signed in a thread: hashing megabytes would hold
                              # every session of this worker's event loop


class DeliveryLoop:
    def __init__(self, settings: Settings, store: Store, writes: GroupCommit, spool: Spool, keys: list[SigningKey],
                 tokens: TokenKeys, router: Router, courier: Courier):
        self.settings = settings
        self.store, self.writes, self.spool = store, writes, spool
        self.keys, self.tokens = keys, tokens
        self.router, self.courier = router, courier
        self.wake = asyncio.Event()
        self._inflight: set[tuple[str, str]] = set()
        self._erased = False          # a body was erased since the last WAL checkpoint
        self._checkpointed = 0.0
        self._tasks: set[asyncio.Task] = set()
        self._tenant_keys: dict[tuple[str, str], tuple[float, SigningKey | None]] = {}
        self._suspended: dict[str, tuple[float, bool]] = {}
        self._outbox_checked = 0.0
        self._keys_loaded = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        """Start every due recipient (up to the concurrency limit) and sleep until the next is due or mail arrives."""
        limit = self.settings.delivery.concurrency
        while not stop.is_set():
            if time.monotonic() - self._outbox_checked >= OUTBOX_INTERVAL:
                self._outbox_checked = time.monotonic()
                await self._take_outbox()
            for due in self.spool.due(time.time(), limit + len(self._inflight)):
                key = (due.queue_id, due.recipient)
                if key not in self._inflight and len(self._inflight) < limit:
                    self._inflight.add(key)
                    task = asyncio.create_task(self._attempt(due))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            if time.monotonic() - self._keys_loaded >= KEY_REFRESH:
                try:
                    self.reload_keys()
                except Exception as e:      # a busy store or a damaged key: keep signing with the keys we have
                    log.error("cannot reload DKIM keys, keeping the current ones: %s", e)
                    self._keys_loaded = time.monotonic()
            if self._erased and time.monotonic() - self._checkpointed >= CHECKPOINT_INTERVAL:
                self._erased, self._checkpointed = False, time.monotonic()
                await asyncio.get_running_loop().run_in_executor(None, self.spool.checkpoint)
            self.wake.clear()
            next_due = self.spool.next_due()
            pause = 1.0 if next_due is None else min(1.0, max(0.05, next_due - time.time()))
            waiters = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.delivery.data_timeout)
        await self.courier.close()

    async def _attempt(self, due: Due) -> None:
        try:
            await self.deliver(due)
        except Exception:   # a bug or a damaged key must not kill the loop: retry later, like a 4xx
            log.exception("delivery of %s failed unexpectedly", due.queue_id)
            await self._defer(due, "451 4.3.0 Local error, will retry", due.token)
        finally:
            self._inflight.discard((due.queue_id, due.recipient))

    async def _take_outbox(self) -> None:
        """Move provider mail from the store's outbox into this shard's spool (durable before it leaves the outbox)."""
        try:
            if not outbox.waiting(self.store):
                return
            for item in outbox.claim(self.store):
                await self.spool.enqueue(Message(new_queue_id(self.settings.node.name), outbox.PROVIDER, "",
                                                 (item.recipient,), item.raw))
                outbox.done(self.store, item.id)
        except (SpoolError, OSError, RuntimeError, *StoreError) as e:     # the claim lapses; another try takes it
            log.error("cannot take provider mail from the outbox: %s", e)

    async def deliver(self, due: Due) -> None:
        """The outbound path of one recipient, top to bottom."""
        if self._held(due.tenant):
            return await self.spool.record(due.queue_id, due.recipient, "deferred", due.attempts,
                                           time.time() + HOLD_RECHECK, "451 4.7.1 Held: the tenant is suspended",
                                           due.token)
        age = time.time() - epoch(due.received)
        if age > self.settings.delivery.max_queue_lifetime:
            return await self._finish(due, "expired", "554 4.4.7 Message expired in the queue", due.token)
        entry = suppression.find(self.store, due.tenant, due.recipient)
        if entry is not None:
            metrics.suppression_hits.labels("delivery", entry.cause).inc()
            return await self._finish(due, "suppressed", f"550 5.7.1 Recipient {entry.reason}", due.token)
        body = self.spool.body(due.queue_id)
        if body is None:
            return                                    # dropped by the operator meanwhile
        provider = due.tenant == outbox.PROVIDER
        token = None if provider else due.token or await self._new_token(due, body)
        copy = body if provider else self._headers(due, token) + body
        try:
            keys = self._signing_keys(due)
            with metrics.dkim_signing.time():
                signed = (await asyncio.to_thread(sign, copy, keys) if len(copy) > SIGN_IN_THREAD
                          else sign(copy, keys)) + copy
        except SigningError as e:
            return await self._defer(due, f"451 4.7.5 DKIM signing failed: {e}", token)
        domain = due.recipient.rpartition("@")[2]
        try:
            destinations = await self.router.route(domain)
        except RouteError as e:
            outcome = Outcome(False, e.permanent, f"{'550' if e.permanent else '451'} {e.status} {e.text}")
        else:
            envelope_from = "" if provider else f"bounce+{token}@{self.settings.provider.bounce_domain}"
            logs.event("attempt", queue_id=due.queue_id, tenant=due.tenant, recipient=due.recipient,
                       attempt=due.attempts + 1, hosts=len(destinations))
            outcome = await self.courier.send(destinations, envelope_from, due.recipient, signed)
        await self._record(due, outcome, token)

    def reload_keys(self) -> None:
        """Re-read the provider's DKIM keys (SIGHUP, rotation) and forget cached tenant keys."""
        self.keys = provider_keys(self.settings, self.store)
        self._tenant_keys.clear()
        self._keys_loaded = time.monotonic()

    def _held(self, tenant: str) -> bool:
        if tenant == outbox.PROVIDER:
            return False
        cached = self._suspended.get(tenant)
        if cached is None or time.monotonic() - cached[0] > TENANT_STATUS_TTL:
            found = tenants.get(self.store, tenant)
            cached = self._suspended[tenant] = (time.monotonic(), found is not None and not found.active)
        return cached[1]

    def _signing_keys(self, due: Due) -> list[SigningKey]:
        """The tenant's key for its From domain first (DMARC alignment), then the provider's (identification)."""
        domain = (due.from_domain or "").lower()
        cached = self._tenant_keys.get((due.tenant, domain))
        if cached is None or time.monotonic() - cached[0] > TENANT_KEY_TTL:
            found = dkimkeys.find(self.store, due.tenant, domain) if domain else None
            key = SigningKey(found.domain, found.selector, found.key()) if found else None
            cached = self._tenant_keys[(due.tenant, domain)] = (time.monotonic(), key)
        return [cached[1], *self.keys] if cached[1] else self.keys

    async def _new_token(self, due: Due, body: bytes) -> str:
        """A token for this copy, committed with its sent row before the copy leaves (a reply names it)."""
        token = self.tokens.issue()
        header = body.split(b"\r\n\r\n", 1)[0]
        m = _MESSAGE_ID.search(header)
        message_id = m.group(1).decode("utf-8", "replace").strip() if m else None
        await self.writes.now(sent.record, token, due.tenant, due.recipient, message_id, due.queue_id,
                              self.settings.delivery.sent_retention)
        return token

    def _headers(self, due: Due, token: str) -> bytes:
        """Per-recipient headers (DESIGN §4), prepended; the tenant's own headers are left as they are."""
        p = self.settings.provider
        campaign = _CAMPAIGN.sub("", due.campaign or "")[:64] or "default"
        return (f"List-Unsubscribe: <mailto:unsubscribe+{token}@{p.domain}?subject=unsubscribe>,\r\n"
                f" <{self.settings.http.public_url}/u/{token}>\r\n"
                f"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
                f"Feedback-ID: {campaign}:{due.tenant}:{p.domain}\r\n"
                f"X-WebSoftTT-Tenant: {due.tenant}\r\n").encode("ascii")

    async def _record(self, due: Due, outcome: Outcome, token: str) -> None:
        """One place decides what an outcome means: delivered, bounced (and maybe suppressed), or retried.

        Once the next hop said 250 the spool records it first; the store's bookkeeping after it may fail
        (a lock held too long) without turning a delivered copy into a retry, that is a duplicate."""
        if outcome.delivered:
            await self._finish(due, "delivered", outcome.reply, token)
            return self.writes.later(bounces.delivered, due.tenant, due.recipient)
        if not outcome.permanent:
            return await self._defer(due, outcome.reply, token)
        bounces.record(self.store, self.settings.policy, due.tenant, due.recipient, outcome.status, True, "",
                       source=f"delivery {due.queue_id}")
        await self._finish(due, "failed", outcome.reply, token)

    async def _defer(self, due: Due, reply: str, token: str | None) -> None:
        schedule = self.settings.delivery.retry_schedule
        delay = schedule[min(due.attempts, len(schedule) - 1)] * random.uniform(0.9, 1.1)
        await self.spool.record(due.queue_id, due.recipient, "deferred", due.attempts + 1, time.time() + delay,
                                reply, token)
        metrics.deferred.labels(due.tenant, _status(reply)).inc()
        self._event("deferred", due, reply)

    async def _finish(self, due: Due, state: str, reply: str, token: str | None) -> None:
        await self.spool.record(due.queue_id, due.recipient, state, due.attempts + 1, 0, reply, token)
        if state in standing.OUTCOMES and due.tenant != outbox.PROVIDER:
            self.writes.later(standing.note, due.tenant, state)
        self._erased = True
        if state == "delivered":
            metrics.delivered.labels(due.tenant).inc()
        elif state in ("failed", "expired"):
            kind = "expired" if state == "expired" else bounces.bounce_class(_status(reply), True)
            metrics.bounced.labels(due.tenant, kind).inc()
        self._event(state, due, reply)

    def _event(self, kind: str, due: Due, detail: str) -> None:
        """The event row (queue show) and the log line; a failed or expired copy is logged as `bounced`."""
        self.writes.later(Store.insert, "events", {
            "time": utcnow(), "kind": kind, "tenant": due.tenant, "queue_id": due.queue_id,
            "recipient": due.recipient, "detail": detail})
        logs.event({"failed": "bounced", "expired": "bounced"}.get(kind, kind), queue_id=due.queue_id,
                   tenant=due.tenant, recipient=due.recipient, state=kind, reply=detail)


def _status(reply: str) -> str:
    """The enhanced status of a reply ("451 4.4.1 ..." -> "4.4.1"), else its class ("4.0.0"): a bounded label."""
    m = _ENHANCED.match(reply)
    return m.group(1) if m else f"{reply[:1] or '4'}.0.0"

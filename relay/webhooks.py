"""The webhook dispatcher: worker 0 of the delivery role, on every node, sends tenants' events to their endpoints.

Each round claims the endpoints that are due (policy/webhooks.py: a lease in the store, so one node sends an
endpoint's events at a time), then posts their next events one by one, in order: a 2xx moves the endpoint's
cursor past the event, anything else (another status, a timeout, a closed connection) keeps it there and
schedules the retry. Redirects are not followed, response bodies not read, and unless
`webhooks.allow_private_targets`, the connection goes only to public addresses: the resolver drops private,
loopback and link-local ones (no request into the provider's own network, also after a DNS change).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import replace

import aiohttp

from policy import logs, webhooks
from policy.settings import Settings
from policy.store import Store
from relay.resolver import PublicOnly

log = logging.getLogger("websofttt.webhooks")

LEASE = 120.0           # seconds an endpoint stays claimed by the node sending to it
BATCH = 100             # events read from the store at a time for one endpoint
EVERY = 1.0             # seconds between rounds


def session(settings: Settings) -> aiohttp.ClientSession:
    resolver = None if settings.webhooks.allow_private_targets else PublicOnly(aiohttp.ThreadedResolver(),
                                                                                "webhooks.allow_private_targets")
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver, limit=50),
                                 timeout=aiohttp.ClientTimeout(total=settings.webhooks.timeout))


async def dispatch_loop(settings: Settings, store: Store, stop: asyncio.Event) -> None:
    """Worker 0 of the delivery role, on every node: endpoints are claimed by node (one sends to an endpoint
    at a time, in order); at start the node takes back what its previous run held when it was killed."""
    node = settings.node.name
    with contextlib.suppress(Exception):       # a busy store: the lease ends on its own
        if freed := await store.call(webhooks.release_node, store, node):
            log.info("took back %d webhook endpoint(s) held by this node's previous run", freed)
    async with session(settings) as client:
        while not stop.is_set():
            try:
                due = await store.call(webhooks.claim, store, LEASE, None, node)
                await asyncio.gather(*(_send_due(settings, store, client, hook) for hook in due))
            except Exception:          # a busy store: the next round catches up
                log.exception("webhook round failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), EVERY)


async def _send_due(settings: Settings, store: Store, client: aiohttp.ClientSession, hook: webhooks.Webhook) -> None:
    """The endpoint's events in order, batch after batch while the lease lasts, until none is left or one fails."""
    until = time.monotonic() + LEASE / 2
    while time.monotonic() < until:
        rows = await store.call(webhooks.pending, store, hook, BATCH)
        for row in rows:
            error = await post(client, hook, f"evt_{row['id']}", webhooks.payload(row))
            if error:
                delay = await store.call(webhooks.failed, store, hook, error, settings.webhooks.retry_first)
                logs.event("webhook_failed", tenant=hook.tenant, webhook=hook.id, error=error, retry_in=round(delay, 1))
                return
            await store.call(webhooks.acknowledged, store, hook, row["id"])
        if len(rows) < BATCH:
            break
        hook = replace(hook, cursor=rows[-1]["id"], attempts=0)
    await store.call(webhooks.release, store, hook)


async def post(client: aiohttp.ClientSession, hook: webhooks.Webhook, msg_id: str, payload: dict) -> str | None:
    """POST one signed event; None on 2xx, else what went wrong."""
    body = json.dumps(payload).encode()
    stamp = int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": "WebSoftTT-Relay-Webhooks/1",
               "webhook-id": msg_id, "webhook-timestamp": str(stamp),
               "webhook-signature": webhooks.signature(hook.secrets, msg_id, stamp, body)}
    try:
        async with client.post(hook.url, data=body, headers=headers, allow_redirects=False) as response:
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        return f"{type(e).__name__}: {e}"[:300] if str(e) else type(e).__name__


async def send_test(settings: Settings, hook: webhooks.Webhook) -> str | None:
    """`webhook test`: one signed `test` event now, outside the queue of real ones."""
    async with session(settings) as client:
        return await post(client, hook, f"test_{int(time.time() * 1000)}",
                          {"type": "test", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "data": {"tenant": hook.tenant}})

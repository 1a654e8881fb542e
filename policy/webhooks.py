"""Webhooks: a tenant's endpoints and what each has been sent of its events (the store's side).

The events table is the outbox: each endpoint keeps a cursor, the id of the last event it acknowledged
(2xx), and is sent the tenant's later events of the kinds it chose, in order, at least once. An event's
`webhook-id` is `evt_<id>`, the same at every retry, so receivers can de-duplicate. A failure keeps the
cursor and retries after a delay that doubles (with jitter) up to an hour, for ever; an endpoint failing
for a day is shown as failing. Every node's dispatcher (relay/webhooks.py) claims due endpoints in the
store for a lease, so each event goes out from one node at a time.

Payloads follow the Standard Webhooks specification: HMAC-SHA256 over `id.timestamp.body` with the
endpoint's secret (`whsec_` + base64 of 32 random bytes); after a rotation the old secret signs too for
24 h, the two signatures side by side.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from policy import events
from policy.events import TYPE, TYPES
from policy.store import Store, utcnow
from policy.tenants import TenantError, require

OLD_SECRET_DAYS = 1
FAILING_AFTER = 86400.0
MAX_DELAY = 3600.0


@dataclass(frozen=True)
class Webhook:
    id: int
    tenant: str
    url: str
    events: tuple[str, ...]
    secrets: tuple[str, ...]        # the current one, then the previous one while it is still valid
    cursor: int
    attempts: int
    failing_since: float | None
    last_error: str | None

    def status(self, now: float | None = None) -> str:
        if self.failing_since is None:
            return "ok"
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.failing_since))
        failing = (now or time.time()) - self.failing_since >= FAILING_AFTER
        return f"{'failing' if failing else 'retrying'} since {since}"

    def as_json(self) -> dict:
        return {"id": self.id, "tenant": self.tenant, "url": self.url, "events": list(self.events),
                "status": self.status(), "attempts": self.attempts, "last_error": self.last_error}


def _from_row(row: dict, now: float) -> Webhook:
    valid_old = row["old_secret"] and (row["old_until"] or 0) > now
    return Webhook(int(row["id"]), row["tenant"], row["url"], tuple(json.loads(row["events"])),
                   (row["secret"], row["old_secret"]) if valid_old else (row["secret"],), int(row["cursor"]),
                   int(row["attempts"]), row["failing_since"], row["last_error"])


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def check_url(url: str, allow_private: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme not in (("https", "http") if allow_private else ("https",)) or not parts.hostname:
        raise TenantError(f"URL {url!r} must be https://HOST/... (http:// only with webhooks.allow_private_targets)")
    return url


def add(store: Store, tenant_id: str, url: str, types: list[str], allow_private: bool) -> tuple[Webhook, str]:
    """A new endpoint, sent the events from now on; (it, its secret to show once)."""
    require(store, tenant_id)
    unknown = [t for t in types if t not in TYPES]
    if unknown or not types:
        raise TenantError(f"--events {','.join(unknown) or '(none)'}: choose among {','.join(TYPES)}")
    secret = new_secret()
    with store.exclusive():
        last = (store.one("SELECT MAX(id) AS id FROM events") or {}).get("id") or 0
        [row] = store.all("INSERT INTO webhooks (tenant, url, events, secret, created, cursor) VALUES (?, ?, ?, ?, ?, ?) "
                          "RETURNING *", [tenant_id, check_url(url, allow_private), json.dumps(types), secret, utcnow(),
                                          last])
    return _from_row(row, time.time()), secret


def of_tenant(store: Store, tenant_id: str) -> list[Webhook]:
    require(store, tenant_id)
    now = time.time()
    return [_from_row(r, now) for r in store.all("SELECT * FROM webhooks WHERE tenant = ? ORDER BY id", [tenant_id])]


def get(store: Store, tenant_id: str, hook_id: int) -> Webhook:
    row = store.one("SELECT * FROM webhooks WHERE tenant = ? AND id = ?", [tenant_id, hook_id])
    if row is None:
        raise TenantError(f"tenant {tenant_id} has no webhook {hook_id} (websofttt webhook list {tenant_id})")
    return _from_row(row, time.time())


def remove(store: Store, tenant_id: str, hook_id: int) -> None:
    get(store, tenant_id, hook_id)
    store.execute("DELETE FROM webhooks WHERE id = ?", [hook_id])


def rotate(store: Store, tenant_id: str, hook_id: int) -> str:
    """A new secret; the old one keeps signing beside it for a day, so receivers can switch without a gap."""
    hook, secret = get(store, tenant_id, hook_id), new_secret()
    store.execute("UPDATE webhooks SET old_secret = secret, old_until = ?, secret = ? WHERE id = ?",
                  [time.time() + OLD_SECRET_DAYS * 86400, secret, hook.id])
    return secret


def claim(store: Store, lease: float, now: float | None = None, node: str = "") -> list[Webhook]:
    """The endpoints due now that no node holds, held by the caller (`node`) for `lease` seconds."""
    now = time.time() if now is None else now
    due = "SELECT * FROM webhooks WHERE next_attempt <= ? AND claimed_until <= ? ORDER BY id"
    if not store.one(due, [now, now]):          # the usual case: nothing to send, and no lock taken for it
        return []
    with store.exclusive():
        rows = store.all(due, [now, now])
        for row in rows:
            store.execute("UPDATE webhooks SET claimed_until = ?, claimed_by = ? WHERE id = ?",
                          [now + lease, node, row["id"]])
    return [_from_row(r, now) for r in rows]


def release_node(store: Store, node: str) -> int:
    """At a node's start: the endpoints its previous run still held (killed while sending) are free again,
    without waiting for their lease to end; how many."""
    return store.execute("UPDATE webhooks SET claimed_until = 0 WHERE claimed_by = ? AND claimed_until > 0",
                         [node]).rowcount


def pending(store: Store, hook: Webhook, limit: int = 100) -> list[dict]:
    return events.told_after(store, hook.tenant, hook.cursor, list(hook.events), limit)


def acknowledged(store: Store, hook: Webhook, event_id: int) -> None:
    store.execute("UPDATE webhooks SET cursor = ?, attempts = 0, failing_since = NULL, last_error = NULL "
                  "WHERE id = ? AND cursor < ?", [event_id, hook.id, event_id])


def failed(store: Store, hook: Webhook, error: str, first_delay: float, now: float | None = None) -> float:
    """Keep the cursor and come back later (doubling, with jitter, at most MAX_DELAY); returns the delay."""
    now = time.time() if now is None else now
    delay = min(MAX_DELAY, first_delay * 2 ** hook.attempts) * random.uniform(0.8, 1.2)
    store.execute("UPDATE webhooks SET attempts = attempts + 1, next_attempt = ?, claimed_until = 0, last_error = ?, "
                  "failing_since = COALESCE(failing_since, ?) WHERE id = ?", [now + delay, error[:300], now, hook.id])
    return delay


def release(store: Store, hook: Webhook) -> None:
    store.execute("UPDATE webhooks SET claimed_until = 0 WHERE id = ?", [hook.id])


def payload(row: dict) -> dict:
    """What the receiver gets for one event row: the tenant already holds the recipient's address; no body."""
    return {"type": TYPE[row["kind"]], "timestamp": row["time"],
            "data": {"tenant": row["tenant"], "queue_id": row["queue_id"], "recipient": row["recipient"],
                     "campaign": row["campaign"], "detail": row["detail"]}}


def signature(secrets_: tuple[str, ...], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,<base64 HMAC-SHA256>` per valid secret, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(base64.b64decode(s.removeprefix("whsec_")), signed,
                                                      hashlib.sha256).digest()).decode() for s in secrets_)

"""/v1/events, /v1/messages/{queue_id}, /v1/stats: what became of a tenant's mail, for its app.

Events come from the store's events table (shared by every node): delivery outcomes, complaints and
unsubscribes, in the order they were written, from a cursor an app keeps, so one that missed something
catches up (events younger than events.SETTLE wait, so that a cursor skips none). A message's recipients are read from
this node's spool when it holds the message (its exact state now), else from its events.
"""
from __future__ import annotations

import asyncio
from datetime import date

from aiohttp import web

from policy import events, stats
from policy.events import KIND, TYPE
from relay import spool_files
from relay.api.common import MIN_COUNT, SPOOL_DIR, ApiError, audited, key_of, limit_of, store_of



def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/events", list_events)
    router.add_get("/messages/{queue_id}", get_message)
    router.add_get("/stats", get_stats)


async def list_events(request: web.Request) -> web.Response:
    key, store, limit = key_of(request), store_of(request), limit_of(request)
    after = request.query.get("after", "0")
    if not after.isdigit():
        raise ApiError(400, "bad_cursor", "after must be a next_cursor this API returned (or 0)")
    wanted = request.query.get("type")
    if wanted is not None and wanted not in KIND:
        raise ApiError(400, "bad_type", f"type must be one of: {', '.join(KIND)}")
    rows = await store.call(events.told_after, store, key.tenant, int(after), [wanted] if wanted else list(KIND), limit)
    await audited(request, f"{len(rows)} events")
    return web.json_response({"data": [_event(r) for r in rows], "next_cursor": str(rows[-1]["id"]) if rows else after})


def _event(row: dict) -> dict:
    return {"id": str(row["id"]), "type": TYPE[row["kind"]], "timestamp": row["time"], "queue_id": row["queue_id"],
            "recipient": row["recipient"], "campaign": row["campaign"], "detail": row["detail"]}


async def get_message(request: web.Request) -> web.Response:
    """Per recipient: state, attempts, last reply, when; another tenant's message is not found (404)."""
    key, store, queue_id = key_of(request), store_of(request), request.match_info["queue_id"]
    await audited(request, queue_id)
    held = await asyncio.to_thread(spool_files.message_detail, request.config_dict[SPOOL_DIR], queue_id)
    if held is not None and held["tenant"] == key.tenant:
        recipients = [{"address": r["recipient"], "state": r["state"], "attempts": r["attempts"],
                       "last_reply": r["last_reply"], "updated": r["updated"]} for r in held["recipients"]]
        return web.json_response({"queue_id": queue_id, "received": held["received"], "recipients": recipients})
    rows = await store.call(store.all, "SELECT time, kind, recipient, detail FROM events WHERE tenant = ? AND "
                                       "queue_id = ? AND recipient IS NOT NULL ORDER BY id", [key.tenant, queue_id])
    if not rows:
        raise ApiError(404, "not_found", f"no message {queue_id} of yours is known here")
    by_recipient: dict[str, dict] = {}
    for r in rows:
        seen = by_recipient.setdefault(r["recipient"], {"address": r["recipient"], "attempts": 0})
        attempt = r["kind"] in ("delivered", "deferred", "failed")
        seen.update(state=r["kind"], last_reply=r["detail"], updated=r["time"], attempts=seen["attempts"] + attempt)
    return web.json_response({"queue_id": queue_id, "received": None, "recipients": list(by_recipient.values())})


async def get_stats(request: web.Request) -> web.Response:
    """The tenant's daily aggregates, as `websofttt stats` shows them (counts below k are null)."""
    key, store = key_of(request), store_of(request)
    today = date.today().isoformat()
    first, last = request.query.get("from", today), request.query.get("to", today)
    for name, value in (("from", first), ("to", last)):
        try:
            date.fromisoformat(value)
        except ValueError:
            raise ApiError(400, "bad_date", f"{name} must be a day such as 2027-01-31, got {value[:40]!r}") from None
    if first > last:
        raise ApiError(400, "bad_date", "from must not be after to")
    k = request.config_dict[MIN_COUNT]
    rows = await store.call(stats.between, store, first, last, k, key.tenant)
    return web.json_response({"data": [{f: v for f, v in r.items() if f != "tenant"} for r in rows], "min_count": k})

"""/v1/suppressions: a tenant's own suppression list, read and changed by its app.

Only the tenant's scope: the global list (recipients' opt-outs from every sender, the operator's) is never
shown nor changed here. What the app adds applies at the next RCPT, as an entry the operator adds does.
"""
from __future__ import annotations

import base64
import binascii

from aiohttp import web

from policy import suppression
from policy.addresses import mask, normalise
from policy.smtp import valid_address
from policy.suppression_import import import_lines
from relay.api.common import ApiError, audited, json_body, key_of, limit_of, store_of

MAX_IMPORT = 10_000


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/suppressions", list_entries)
    router.add_post("/suppressions:import", import_entries)
    router.add_get("/suppressions/{address}", get_entry)
    router.add_put("/suppressions/{address}", put_entry)
    router.add_delete("/suppressions/{address}", delete_entry)


def _address(request: web.Request) -> str:
    raw = request.match_info["address"]
    if not valid_address(raw):
        raise ApiError(400, "bad_address", f"{raw[:100]!r} is not an email address")
    return normalise(raw)


def _cursor(request: web.Request) -> str:
    """The opaque cursor is the last address of the previous page (entries are in address order)."""
    raw = request.query.get("cursor", "")
    try:
        return base64.b64decode(raw.encode() + b"=" * (-len(raw) % 4), altchars=b"-_", validate=True).decode() if raw else ""
    except (binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "bad_cursor", "cursor must be a next_cursor this API returned") from None


async def list_entries(request: web.Request) -> web.Response:
    key, store, limit, after = key_of(request), store_of(request), limit_of(request), _cursor(request)
    page = await store.call(suppression.page, store, key.tenant, after, limit + 1)
    await audited(request, f"{min(len(page), limit)} suppressions")
    last = page[limit - 1].address if len(page) > limit else None
    return web.json_response({"data": [_shown(e) for e in page[:limit]], "next_cursor": last and base64.urlsafe_b64encode(
        last.encode()).decode().rstrip("=")})


async def get_entry(request: web.Request) -> web.Response:
    key, store, address = key_of(request), store_of(request), _address(request)
    await audited(request, mask(address))
    entry = await store.call(suppression.get, store, key.tenant, address)
    if entry is None:
        raise ApiError(404, "not_found", f"{address} is not on your suppression list")
    return web.json_response(_shown(entry))


async def put_entry(request: web.Request) -> web.Response:
    key, store, address = key_of(request, write=True), store_of(request), _address(request)
    cause = _cause(await json_body(request))
    await audited(request, mask(address))
    new = await store.call(suppression.add, store, address, key.tenant, cause, f"api:{key.name}")
    entry = await store.call(suppression.get, store, key.tenant, address)
    if entry is None:                       # a DELETE of the same address came in between
        raise ApiError(409, "conflict", f"{address} was removed by another request meanwhile; try again")
    return web.json_response(_shown(entry), status=201 if new else 200)


async def delete_entry(request: web.Request) -> web.Response:
    key, store, address = key_of(request, write=True), store_of(request), _address(request)
    await audited(request, mask(address))
    if not await store.call(suppression.remove, store, address, key.tenant):
        raise ApiError(404, "not_found", f"{address} is not on your suppression list")
    return web.Response(status=204)


async def import_entries(request: web.Request) -> web.Response:
    """A batch: {"addresses": [...], "cause": "..."}; the summary `websofttt suppression import` prints."""
    key, store = key_of(request, write=True), store_of(request)
    body = await json_body(request)
    addresses = body.get("addresses")
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise ApiError(422, "bad_addresses", "addresses must be a list of strings")
    if len(addresses) > MAX_IMPORT:
        raise ApiError(413, "too_many", f"at most {MAX_IMPORT} addresses per import, got {len(addresses)}")
    cause = _cause(body)
    await audited(request, f"import of {len(addresses)} addresses")
    lines = [a.replace("\n", " ") for a in addresses]
    result = await store.call(import_lines, store, lines, key.tenant, cause, f"api:{key.name}")
    return web.json_response(result.as_json())


def _cause(body: dict) -> str:
    cause = body.get("cause", suppression.Cause.MANUAL.value)
    if cause not in suppression.CAUSES:
        raise ApiError(422, "bad_cause", f"cause must be one of: {', '.join(suppression.CAUSES)}")
    return cause


def _shown(entry: suppression.Suppression) -> dict:
    return {"address": entry.address, "cause": entry.cause, "source": entry.source, "created": entry.created,
            "expires": entry.expires}

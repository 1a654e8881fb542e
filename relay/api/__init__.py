"""The tenants' own API, under /v1/ on the HTTP role: JSON over `Authorization: Bearer KEY` (policy/apikeys.py).

A key reaches its own tenant's data only; another tenant's records do not exist for it (404, never 403).
Every read of individual records, and every change, is an audit row naming the key, as `--reason` is for
operators. Errors have one shape, `{"error": {"code", "message"}}`, never a traceback. Wrong keys are
counted per client address like SMTP AUTH failures (`submission.auth_failures` within
`auth_failure_window`, then 429 with Retry-After), and each key may make `http.api_rate` requests. Keys
are never logged. The composition root mounts `make_api` on the HTTP role (relay/cli/node.py).
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from policy import apikeys, tenants
from policy.settings import Settings
from policy.store import Store
from relay.api import activity, messages, openapi, suppressions
from relay.api.common import INTAKE, KEY, MIN_COUNT, SPOOL_DIR, STORE, ApiError, error_response
from relay.intake import Intake

log = logging.getLogger("websofttt.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC = {"/v1/openapi.json"}


def apps(settings: Settings, store: Store, intake: Intake) -> dict[str, web.Application]:
    """What the HTTP role mounts (inbound/service.py start_http)."""
    return {"/v1/": make_api(settings, store, intake)}


def make_api(settings: Settings, store: Store, intake: Intake | None = None) -> web.Application:
    """The /v1/ application; `intake`: the worker's, through which POST /v1/messages submits."""
    api = web.Application(middlewares=[_errors, _authenticate(settings, store)])
    api[STORE], api[SPOOL_DIR], api[MIN_COUNT] = store, settings.spool_dir, settings.privacy.stats_min_count
    if intake is not None:
        api[INTAKE] = intake
    api.router.add_get("/openapi.json", _openapi)
    suppressions.add_routes(api.router)
    activity.add_routes(api.router)
    messages.add_routes(api.router)
    return api


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi.DOCUMENT)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e)
    except web.HTTPException as e:          # aiohttp's own: no such route (404), method not allowed (405), too large
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(e.status, "bad_request")
        return error_response(ApiError(e.status, code, e.reason))
    except Exception:
        log.exception("API request failed: %s %s", request.method, request.path)
        return error_response(ApiError(500, "internal", "the request failed on our side; it may be retried"))


def _authenticate(settings: Settings, store: Store) -> Callable:
    limits = settings.submission

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC:
            return await handler(request)
        ip = request.remote or "unknown"
        if await store.call(store.count, f"api:ip:{ip}", limits.auth_failure_window) >= limits.auth_failures:
            raise ApiError(429, "locked_out", "too many requests with a wrong API key from this address",
                           {"Retry-After": str(int(limits.auth_failure_window))})
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        key = await store.call(apikeys.find, store, presented.strip()) if scheme.lower() == "bearer" else None
        if key is None:
            await store.call(store.hit, f"api:ip:{ip}", limits.auth_failure_window)
            raise ApiError(401, "unauthorized", "a valid API key is required: Authorization: Bearer wst_api_...",
                           {"WWW-Authenticate": 'Bearer realm="websofttt", error="invalid_token"'})
        tenant = await store.call(tenants.get, store, key.tenant)
        if tenant is None or not tenant.active:
            why = f"suspended: {tenant.reason}" if tenant and tenant.status == tenants.Status.SUSPENDED else "removed"
            raise ApiError(403, "tenant_not_active", f"tenant {key.tenant} is {why}")
        rate = settings.http.api_rate
        if await store.call(store.hit, f"api:key:{key.tenant}:{key.name}", rate.period) > rate.count:
            raise ApiError(429, "rate_limited", f"at most {rate.count} requests per {int(rate.period)} s per key",
                           {"Retry-After": str(int(rate.period))})
        request[KEY] = key
        await store.call(apikeys.touch, store, key)
        return await handler(request)
    return authenticate

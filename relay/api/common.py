"""What the API's handlers share: the error shape, the request's key and store, audit rows, JSON bodies."""
from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from policy import apikeys, audit
from policy.store import Store
from relay.intake import Intake

KEY = web.RequestKey("key", apikeys.ApiKey)     # the request's key, set by the authentication middleware
STORE = web.AppKey("store", Store)
SPOOL_DIR = web.AppKey("spool_dir", Path)       # this node's spool: a message's exact state while it holds it
MIN_COUNT = web.AppKey("min_count", int)        # privacy.stats_min_count: smaller counts are shown as null
INTAKE = web.AppKey("intake", Intake)           # the worker's submission policy and spool (POST /v1/messages)
MAX_LIMIT, DEFAULT_LIMIT = 1000, 100


class ApiError(Exception):
    """An answer other than success: its status, a stable code for programs and a message for people."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_response(e: ApiError) -> web.Response:
    return web.json_response({"error": {"code": e.code, "message": e.message}}, status=e.status, headers=e.headers)


def key_of(request: web.Request, write: bool = False) -> apikeys.ApiKey:
    """The request's key; `write`: it must have the write scope (403 otherwise)."""
    key = request[KEY]
    if write and key.scope != apikeys.Scope.WRITE:
        raise ApiError(403, "insufficient_scope", f"API key {key.name} may only read (scope read)")
    return key


def limit_of(request: web.Request) -> int:
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "bad_limit", f"limit must be a number from 1 to {MAX_LIMIT}")
    return int(raw)


def store_of(request: web.Request) -> Store:
    return request.config_dict[STORE]


async def audited(request: web.Request, shown: str) -> None:
    """The audit row of an API read or change: the key stands where an operator's --reason would."""
    key, store = request[KEY], store_of(request)
    await store.call(audit.record, store, f"api {request.method} {request.path}", shown,
                     f"API key {key.tenant}/{key.name}")


async def json_body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "bad_json", "the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the request body must be a JSON object")
    return body

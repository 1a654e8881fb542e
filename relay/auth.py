"""SMTP AUTH for submission: aiosmtpd parses PLAIN/LOGIN, we check the password off the event loop.

aiosmtpd calls its authenticator synchronously, which would block every session of the worker
for the ~0.1 s an scrypt check takes; so the parsed credentials are handed to an async check.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiosmtpd.smtp import AuthResult, LoginPassword

from policy import credentials, logs, metrics
from policy.ratelimit import Limits
from policy.smtp import SaferSMTP
from policy.store import Store

LOCKED = "454 4.7.0 Too many failed authentication attempts, try again later"


@dataclass(frozen=True)
class Authenticated:
    username: str
    tenant: str


class Authenticator:
    def __init__(self, store: Store, limits: Limits):
        self.store = store
        self.limits = limits

    async def check(self, login: LoginPassword, ip: str) -> AuthResult:
        """Lockout first (same answer for every user), then scrypt in a thread, then count the failure."""
        username = login.login.decode("utf-8", "replace")
        if self.limits.auth_locked(username, ip):
            _failed("locked_out", ip)
            return AuthResult(success=False, handled=False, message=LOCKED)
        stored, tenant = credentials.lookup_hash(self.store, username)
        ok = await asyncio.get_running_loop().run_in_executor(
            None, credentials.verify_password, stored, login.password)
        if ok and tenant is not None:
            credentials.touch(self.store, username)
            return AuthResult(success=True, auth_data=Authenticated(username, tenant))
        self.limits.auth_failed(username, ip)
        _failed("bad_credentials", ip)
        return AuthResult(success=False, handled=False)


def _failed(reason: str, ip: str) -> None:
    """The username is not logged: users type passwords into it."""
    metrics.auth_failures.labels(reason).inc()
    logs.event("auth_failure", reason=reason, client=ip)


class AsyncAuthSMTP(SaferSMTP):
    """aiosmtpd's SMTP with PLAIN and LOGIN checked by an async `authenticator.check`."""

    def __init__(self, handler, *, authenticator: Authenticator, **kwargs):
        self.async_authenticator = authenticator
        super().__init__(handler, **kwargs)

    def _authenticate(self, mechanism: str, auth_data: LoginPassword) -> AuthResult:
        # Called synchronously by aiosmtpd's auth_PLAIN/auth_LOGIN: defer the decision to _finish_auth.
        return AuthResult(success=False, handled=False, auth_data=auth_data)

    async def auth_PLAIN(self, _, args: list[str]) -> AuthResult:
        return await self._finish_auth(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _, args: list[str]) -> AuthResult:
        return await self._finish_auth(await super().auth_LOGIN(_, args))

    async def _finish_auth(self, parsed: AuthResult) -> AuthResult:
        if not isinstance(parsed.auth_data, LoginPassword):
            return parsed  # the client aborted or sent bad base64; aiosmtpd has answered
        return await self.async_authenticator.check(parsed.auth_data, self.session.peer[0])

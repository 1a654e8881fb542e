"""SMTP AUTH for submission: aiosmtpd parses PLAIN/LOGIN, we check the secret off the event loop.

aiosmtpd calls its authenticator synchronously, which would block every session of the worker
for the ~0.1 s an scrypt check takes; so the parsed credentials are handed to an async check.
Each worker checks one password at a time, in a thread of its own: a check holds 32 MiB, and the
default executor ran six at once per worker when fifty clients logged in together (500 MiB for the
node). Workers are as many as cores, so one check per worker still uses every core. Generated
credentials (microseconds) and logins already verified (relay/logins.py) never reach that thread.
"""
from __future__ import annotations

import asyncio
import binascii
import os
import random
import threading
import time
from base64 import b64decode, b64encode
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword, Session, _Missing

from policy import credentials, logs, metrics
from policy.cache import Recent
from policy.groupcommit import GroupCommit
from policy.ratelimit import Limits
from policy.smtp import SaferSMTP
from policy.store import Store
from relay.logins import VerifiedLogins

LOCKED = "454 4.7.0 Too many failed authentication attempts, try again later"
TOO_LONG = "500 5.5.6 Authentication exchange line is too long"      # RFC 4954 §4
LOCKOUT_DELAY = 1.0      # seconds a locked-out client waits for its 454
CHECK_NICE = 10          # CPU priority of the password-check thread (0 normal, 19 lowest)


@dataclass(frozen=True)
class Authenticated:
    username: str
    tenant: str


class Authenticator:
    def __init__(self, store: Store, writes: GroupCommit, limits: Limits, logins: VerifiedLogins, trust_ttl: float):
        self.store, self.writes = store, writes
        self.limits = limits
        self.logins = logins
        self._locked_ips: Recent[bool] = Recent(trust_ttl)      # for STARTTLS only; AUTH reads the store
        self._checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="password-check",
                                          initializer=_lower_priority)
        self._turn = asyncio.Lock()     # scrypt checks queue here, in arrival order
        self._durations: deque[float] = deque(maxlen=32)     # of the last real checks

    async def check(self, login: LoginPassword, ip: str) -> AuthResult:
        """In order: the client address's lockout; a login this address already verified; the lockouts
        (same answer for every user, known or not), read when the check's turn comes; the check; the
        failure counted.

        A verified login passes the username's lockout, so a flood of guesses at a username from other
        addresses cannot lock out the app that holds the password; the guessers themselves still meet
        the lockout, and the verified entry answers only the address that proved it, so it is no oracle.
        Guesses queued behind each other are refused once the failures before them reach the limit.
        """
        username, secret = login.login.decode("utf-8", "replace"), login.password
        call = self.store.call
        if await call(self.limits.ip_locked, ip):
            self._locked_ips.put(ip, True)
            return await _locked(ip)
        stored, tenant = await call(credentials.lookup_hash, self.store, username)
        if tenant is not None and self.logins.verified(ip, username, secret, stored):
            return self._accepted(username, tenant, "remembered")
        if credentials.is_slow(secret):
            ok = await self._in_turn(username, ip, tenant, stored, secret)
        elif await call(self.limits.user_locked, username):
            ok = None
        else:
            ok = credentials.verify_password(stored, secret)
        if ok is None:
            return await _locked(ip)
        if ok and tenant is not None:
            self.logins.remember(ip, username, secret, stored)
            return self._accepted(username, tenant, credentials.kind_of(stored).value)
        if await call(self.limits.auth_failed, username, ip):
            self._locked_ips.put(ip, True)
        _failed("bad_credentials", ip)
        return AuthResult(success=False, handled=False)

    async def locked_out(self, ip: str) -> bool:
        """Whether the client address is locked out, for STARTTLS: such a client could only get a 454 after
        the TLS handshake, and the handshake is most of what a guess costs the relay. Read from the store
        at most once per trust_cache_ttl, and kept from this worker's own lockouts, so a lock reaches
        STARTTLS at once in the worker that counted it and within the TTL in the others and on other
        nodes. AUTH reads the store itself, so the lockout rules hold whatever this remembers."""
        return await self._locked_ips.get(ip, lambda: self.store.call(self.limits.ip_locked, ip))

    async def _in_turn(self, username: str, ip: str, tenant: str | None, stored: str, secret: bytes) -> bool | None:
        """The slow check when its turn comes; None if a lockout was reached meanwhile (answered after the
        turn, so that the lockout's delay does not hold the queue)."""
        async with self._turn:
            if await self.store.call(self.limits.either_locked, ip, username):
                return None
            if tenant is None or credentials.kind_of(stored) is credentials.Kind.GENERATED:
                return await self._pretend()
            return await self._scrypt(stored, secret)

    async def _scrypt(self, stored: str, secret: bytes) -> bool:
        started = time.monotonic()
        ok = await asyncio.get_running_loop().run_in_executor(self._checks, credentials.verify_password,
                                                              stored, secret)
        self._durations.append(time.monotonic() - started)
        return ok

    async def _pretend(self) -> bool:
        """Nothing can match (an unknown username, or a person's password for a generated credential):
        hold the turn as long as a real check took, one of the last few picked at random, without its
        CPU. The answer takes as long as for a known username, and a password sprayer, who tries a new
        username each time, costs a sleeping coroutine instead of an scrypt per try."""
        if not self._durations:
            return await self._scrypt(credentials.dummy_hash(), b"")
        await asyncio.sleep(random.choice(self._durations))
        return False

    def _accepted(self, username: str, tenant: str, check: str) -> AuthResult:
        metrics.auth_logins.labels(check).inc()
        self.writes.later(credentials.touch, username)
        return AuthResult(success=True, auth_data=Authenticated(username, tenant))


def _lower_priority() -> None:
    """The check thread runs at nice 10: when guesses and mail compete for the CPU, the sessions get
    about nine tenths of it, and the guesses, not the mail, wait; a busy node still checks passwords."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CHECK_NICE)


async def locked(ip: str) -> str:
    """LOCKED, after LOCKOUT_DELAY: a guesser on a loop slows to one try per delay and connection, for the
    price of a sleeping coroutine here (Postfix's smtpd_error_sleep_time does the same)."""
    _failed("locked_out", ip)
    await asyncio.sleep(LOCKOUT_DELAY)
    return LOCKED


async def _locked(ip: str) -> AuthResult:
    return AuthResult(success=False, handled=False, message=await locked(ip))


def _failed(reason: str, ip: str) -> None:
    """The username is not logged: users type passwords into it."""
    metrics.auth_failures.labels(reason).inc()
    logs.event("auth_failure", reason=reason, client=ip)


class AuthSession(Session):
    """aiosmtpd's session without `login_data`, which it sets at every successful AUTH and answers with a
    deprecation warning in the log each time; the relay reads `auth_data`."""
    login_data = None
    peer: tuple[str, *tuple[object, ...]]  # type: ignore[assignment]  # the peername (address, port, ...); aiosmtpd says str


class AsyncAuthSMTP(SaferSMTP):
    """aiosmtpd's SMTP with PLAIN and LOGIN checked by an async `authenticator.check`, and the customary
    AUTH LOGIN prompts (aiosmtpd's decode to "User Name\\0" and "Password\\0")."""
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"
    session: AuthSession | None       # made by _create_session

    def __init__(self, handler, *, authenticator: Authenticator, **kwargs):
        self.async_authenticator = authenticator
        super().__init__(handler, **kwargs)

    def _create_session(self) -> AuthSession:
        return AuthSession(self.loop)

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
        assert self.session is not None     # made at connection_made, before any command
        return await self.async_authenticator.check(parsed.auth_data, self.session.peer[0])

    async def challenge_auth(self, challenge: str | bytes, encode_to_b64: bool = True,
                             log_client_response: bool = False) -> bytes | _Missing:
        """aiosmtpd's, except for an answer longer than the stream limit: its readline() raised, and the
        session got `451 Local error`; here the answer is read to its end and refused with 500 5.5.6."""
        challenge = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (b64encode(challenge) if encode_to_b64 else challenge))
        line = await self._answer_line()
        if line is None:
            await self.push(TOO_LONG)
            return MISSING
        blob = line.strip()
        if blob == b"*":
            await self.push("501 5.7.0 Auth aborted")
            return MISSING
        try:
            return b64decode(blob, validate=True)
        except binascii.Error:
            await self.push("501 5.5.2 Can't decode base64")
            return MISSING

    async def _answer_line(self) -> bytes | None:
        """The client's next line (b"" at end of stream), or None if it is over the limit: then it is read
        to its end in pieces of at most the limit, so memory stays bounded and the next command is whole."""
        try:
            return await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            return e.partial
        except asyncio.LimitOverrunError as e:
            overrun = e
        while True:
            await self._reader.read(overrun.consumed)
            try:
                await self._reader.readuntil(b"\n")
                return None
            except asyncio.IncompleteReadError:
                return None
            except asyncio.LimitOverrunError as e:
                overrun = e

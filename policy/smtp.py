"""What both SMTP listeners (submission, inbound) share: aiosmtpd made safe against hostile input.

- address parsing never raises: the stdlib parser behind aiosmtpd throws IndexError on some malformed
  paths (`MAIL FROM:<a@`), which aiosmtpd would answer with a Python exception name;
- every reply is one printable line (a client's control characters are never echoed back) and every
  2xx/4xx/5xx but the greeting and the EHLO list carries an enhanced status code (RFC 2034, RFC 3463),
  also aiosmtpd's own ("503 Error: need MAIL command" becomes "503 5.5.1 Error: need MAIL command",
  "250 OK" "250 2.0.0 OK"), so EHLO offers ENHANCEDSTATUSCODES; and PIPELINING (RFC 2920), which
  aiosmtpd's line-by-line reading already serves: each reply is written as its command is handled;
- BDAT (CHUNKING, RFC 3030) is not offered: aiosmtpd reads DATA only, and a client may use BDAT only
  where EHLO offers it; one that does anyway is told to use DATA;
- an unexpected exception is answered 451 4.3.0 (try again), never with its name and message;
- nothing is written to a connection already closing (lines pipelined behind a 421/502 goodbye);
- STARTTLS inside TLS is refused (RFC 3207 §4.2): aiosmtpd would start TLS over TLS, which asyncio's
  SSLProtocol cannot abort (CPython 3.11 raises TypeError in `eof_received`) and which hangs the client;
- a TLS connection is closed once: aiosmtpd closes again for each command pipelined behind a goodbye, and
  asyncio's TLS transport, closed twice, drops its protocol (CPython 3.11 `_SSLProtocolTransport.close`),
  so reading the lines still buffered raised AttributeError;
- a plain `<local@domain>` path is parsed by a regular expression; other paths by aiosmtpd's stdlib parser
  (which costs ~30 µs a call); likewise `valid_address` calls flanker (~100 µs) only for addresses that
  are not plain;
- a client pipelining thousands of commands in one write cannot monopolise the worker: lines already
  buffered are read without a pause, so the server yields to the event loop every `YIELD_EVERY` replies,
  and at every line once the connection is closing, so that the session ends instead of parsing up to
  2 MiB of buffered lines nobody will read the answers to;
- the `GARBAGE_LIMIT`th line that is no command at all (empty, or its verb not ASCII) is answered
  `421 4.7.0` and the connection closed, as Postfix does after `smtpd_hard_error_limit` errors: no SMTP
  client sends such lines, and answering a megabyte of empty lines one by one (2 octets in, 30 out)
  took over 30 s over TLS (aiosmtpd's own budget of five covers unknown verbs only);
- aiosmtpd's `__init__` looks up its command, AUTH and hook methods with `inspect.getmembers` and `dir`
  of the session and its handler on every connection, which evaluates every attribute (~300 µs); `dir()`
  of a session or a `Handler` lists only those methods, computed once per class.
"""
from __future__ import annotations

import re

import asyncio
import ipaddress

from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import SMTP, syntax

from policy import replies
from policy.addressparser import address as flanker_address

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DEFAULT = {"421": "4.3.2", "451": "4.3.0", "452": "4.3.1", "454": "4.7.0", "500": "5.5.2", "501": "5.5.4",
            "502": "5.5.1", "503": "5.5.1", "504": "5.5.4", "530": "5.7.0", "535": "5.7.8", "550": "5.7.1",
            "552": "5.3.4", "553": "5.1.3", "554": "5.6.0", "555": "5.5.4"}
# aiosmtpd's own 2xx replies, with the codes RFC 2034 asks for (its greeting and EHLO list take none)
_NO_BDAT = '500 Error: command "BDAT" not recognized'
_OWN_2XX = {"250 OK": "250 2.0.0 OK", "221 Bye": "221 2.0.0 Bye", "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
            "252 Cannot VRFY user, but will accept message and attempt delivery":
            "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery"}
EXTENSIONS = ("250-PIPELINING", "250-ENHANCEDSTATUSCODES")      # added to aiosmtpd's EHLO list
INTERNAL_ERROR = "451 4.3.0 Local error in processing, try again later"
YIELD_EVERY = 16
BAD_SYNTAX = "500 Error: bad syntax"         # aiosmtpd's answer to a line that is no command
GARBAGE_LIMIT = 100
TOO_MUCH_GARBAGE = "421 4.7.0 Too many lines that are not SMTP commands, closing connection"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# dot-atom@domain, as nearly every MAIL and RCPT path is: aiosmtpd's stdlib parsing builds a class per call
_PLAIN = rf"({_ATOM}(?:\.{_ATOM})*)@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_PATH = re.compile(rf"<({_PLAIN})>")
_PLAIN_ADDRESS = re.compile(_PLAIN)
PROXY_TIMEOUT = 10.0     # seconds a listener with `proxy_protocol` waits for the PROXY header


def plain_address(address: str) -> bool:
    """dot-atom@domain of at most 254 octets: what nearly every address is, and needs no parser."""
    return len(address) <= flanker_address.MAX_ADDRESS_LENGTH and _PLAIN_ADDRESS.fullmatch(address) is not None


def valid_address(address: str) -> bool:
    """An addr-spec that flanker's strict parser accepts; a plain one without calling it (~100 µs)."""
    return plain_address(address) or flanker_address.parse(address, addr_spec_only=True, strict=True) is not None


def clean_reply(status: str) -> str:
    """One printable reply line with an enhanced code where a 4xx/5xx has none."""
    status = _CONTROL.sub("?", status.encode("utf-8", "backslashreplace").decode("utf-8"))   # undecodable bytes
    code, sep, text = status[:3], status[3:4], status[4:]
    if status.startswith("500 Error: ("):
        return INTERNAL_ERROR
    if status == _NO_BDAT:
        return "502 5.5.1 BDAT (CHUNKING) is not offered here: use DATA"
    if code[0] == "2":
        return _OWN_2XX.get(status) or (f"250 2.0.0 {text}" if status.startswith(("250 Supported commands:",
                                                                                    "250 Syntax:")) else status)
    if code in _DEFAULT and sep in (" ", "-") and not replies.enhanced(text):
        return f"{code}{sep}{_DEFAULT[code]} {text}".rstrip()
    return status


_COMMANDS: dict[type, list[str]] = {}


def _command_methods(cls: type) -> list[str]:
    """The smtp_*, auth_* and handle_* methods aiosmtpd's __init__ collects by introspection."""
    names = _COMMANDS.get(cls)
    if names is None:
        names = _COMMANDS[cls] = sorted(name for name in dir(cls) if name.startswith(("smtp_", "auth_", "handle_")))
    return names


class Handler:
    """Base of the listeners' aiosmtpd handlers (see the module doc on `dir`)."""

    async def handle_EHLO(self, server, session, envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname          # aiosmtpd leaves it to a handler that has this hook
        return [*responses[:-1], *EXTENSIONS, responses[-1]]

    def __dir__(self) -> list[str]:
        return _command_methods(type(self))


class SaferSMTP(SMTP):
    _replies = 0
    _garbage = 0
    _continued: list[str] = []          # replaced, never changed in place: each session gets its own
    _proxied: tuple[str, int | None] | None = None

    def __dir__(self) -> list[str]:
        return _command_methods(type(self))

    def take_proxy_address(self, proxy: ProxyData) -> None:
        """Behind HAProxy (PROXY protocol v1 or v2), the session's peer becomes the client the balancer
        accepted, so trusted networks, brute-force counting, per-address limits, Received and the logs see
        the real address, also after STARTTLS. A LOCAL connection (the balancer's health check) keeps
        the balancer's."""
        if isinstance(proxy.src_addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            self._proxied = (str(proxy.src_addr), proxy.src_port)
            assert self.session is not None       # PROXY comes after connection_made
            self.session.peer = self._proxied     # type: ignore[assignment]  # aiosmtpd says str; it is peername

    async def push(self, status: str | bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            await asyncio.sleep(0)      # lines pipelined behind a closing reply: nobody to answer (and TLS
            return                      # would raise); yielding lets connection_lost end the session
        if isinstance(status, str):                                     # bytes: AUTH challenges
            if status == BAD_SYNTAX:
                self._garbage += 1
                if self._garbage >= GARBAGE_LIMIT:
                    await super().push(TOO_MUCH_GARBAGE)
                    self.transport.close()
                    return
            status = clean_reply(status)
            if status[3:4] == "-":      # a continuation line leaves with the reply's last line: one write,
                self._continued = [*self._continued, status]     # one segment, however long the EHLO list
                return
            if self._continued:
                status, self._continued = "\r\n".join([*self._continued, status]), []
        await super().push(status)  # type: ignore[type-var]  # aiosmtpd writes str and bytes alike
        self._replies += 1
        if self._replies % YIELD_EVERY == 0:
            await asyncio.sleep(0)      # let the other sessions of this worker run

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self._proxied is not None and self.session is not None:   # a new session after STARTTLS (RFC 3207):
            self.session.peer = self._proxied  # type: ignore[assignment]  # the same client (aiosmtpd: str)
        tls = self.transport
        if tls is not None and hasattr(tls, "_ssl_protocol") and "close" not in vars(tls):
            close = tls.close
            tls.close = lambda: None if tls.is_closing() else close()  # type: ignore[method-assign]

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        transport = self.transport
        if self._tls_protocol is not None or (transport is not None and transport.get_extra_info("sslcontext")):
            await self.push("554 5.5.1 Error: TLS already active")
            return
        await super().smtp_STARTTLS(arg)

    def _getaddr(self, arg: str):
        plain = _PLAIN_PATH.match(arg)
        if plain and len(plain.group(2)) <= (self.local_part_limit or len(arg)):
            rest = arg[plain.end():]
            if not rest or (rest[0] in " \t" and not rest.lstrip(" \t").startswith("(")):
                return plain.group(1), rest.lstrip(" \t")    # what the stdlib parser says, in 1/30 of the time
        try:
            return super()._getaddr(arg)
        except (IndexError, ValueError, TypeError, AttributeError):   # the stdlib parser's failures on malformed
            # paths; AttributeError: `MAIL FROM:a@[` (a defect in the parsed token list has no .value)
            return None, None

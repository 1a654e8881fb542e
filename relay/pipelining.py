"""aiosmtplib's client with RFC 2920 command pipelining: one write for MAIL, RCPT and DATA, one for the body.

aiosmtplib sends one command and waits for its reply before the next, so a copy costs four round trips
(and four wake-ups of the event loop) where a pipelining peer needs two. Its protocol keeps one reply
and drops data that arrives while that reply awaits pickup, so several replies read in order need a
small protocol subclass; a session is switched to it once connected (it adds no state of its own that
a connected protocol would lack), and its transport is told so: uvloop binds `data_received` once, when
the transport is made, and would go on calling aiosmtplib's, which drops the pipelined replies. Peers that
do not offer PIPELINING get the command-by-command transaction, and the answers are the same exceptions
either way.
"""
from __future__ import annotations

import asyncio
from typing import cast

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH, PERIOD_REGEX, SMTPProtocol, normalize_message_line_endings
from aiosmtplib.response import SMTPResponse

from policy.smtp import plain_address


class PipeliningProtocol(SMTPProtocol):
    _more: asyncio.Future | None = None     # set while `pipeline` waits: data for it wakes it, none is dropped
    _gone: str | None = None                # why nothing more will arrive (EOF, connection lost), once it is so

    def data_received(self, data: bytes) -> None:
        if self._more is None:
            return super().data_received(data)
        self._buffer.extend(data)
        self._wake()

    def eof_received(self) -> bool:
        self._gone = self._gone or "Unexpected EOF received"
        self._wake()
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = self._gone or "Connection lost"
        self._wake()
        super().connection_lost(exc)

    def _wake(self) -> None:
        """`pipeline` reads what came, then sees the end. The end is kept, not only signalled: a loop may
        report data, EOF and the lost connection in one go, before `pipeline` has taken the data."""
        if self._more is not None and not self._more.done():
            self._more.set_result(None)

    async def pipeline(self, data: bytes, replies: int, timeout: float) -> list[SMTPResponse]:
        """Write `data` (commands, or a message body) at once and read `replies` replies, in order; fewer
        when one is 421 (the server closes: nothing follows it)."""
        if self._command_lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        async with self._command_lock:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            self._more = loop.create_future()
            read: list[SMTPResponse] = []
            try:
                self.write(data)
                while len(read) < replies:
                    reply = self._read_response_from_buffer()
                    if reply is not None:
                        read.append(reply)
                        if reply.code == 421:
                            break
                        continue
                    if self._gone is not None:          # the replies that came before the end are read
                        raise aiosmtplib.SMTPServerDisconnected(self._gone)
                    if len(self._buffer) > MAX_RESPONSE_LENGTH:
                        raise aiosmtplib.SMTPResponseException(-1, "Response too long")
                    try:
                        await asyncio.wait_for(self._more, deadline - loop.time())
                    except TimeoutError as e:
                        raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response") from e
                    self._more = loop.create_future()
            finally:
                self._more = None
                del self._buffer[:]     # what a server sent beyond the replies asked for is nobody's answer
        return read


class PipeliningSMTP(aiosmtplib.SMTP):
    async def connect(self, **kwargs) -> SMTPResponse:
        response = await super().connect(**kwargs)
        protocol = cast(SMTPProtocol, self.protocol)     # set by connect(); None only if the peer left meanwhile: raises
        protocol.__class__ = PipeliningProtocol
        cast(asyncio.BaseTransport, protocol.transport).set_protocol(protocol)   # every loop takes its callbacks again
        return response

    async def offers(self, extension: str) -> bool:
        """Whether the peer offers `extension` (asked for again after STARTTLS: the reply to EHLO may differ)."""
        await self._ehlo_or_helo_if_needed()
        return self.supports_extension(extension)

    async def transaction(self, mail_from: str, recipient: str, message: bytes, command_timeout: float,
                          data_timeout: float, eightbit: bool = False) -> SMTPResponse:
        """MAIL, RCPT, DATA and the message; raises what aiosmtplib's mail(), rcpt() and data() raise.

        A non-ASCII address goes with SMTPUTF8 (RFC 6531) to a peer that offers it; to one that does not,
        the recipient is refused here, permanently (553 5.6.7), instead of failing on every retry. An `eightbit`
        message goes with BODY=8BITMIME (RFC 6152), to a peer that `offers` 8BITMIME only."""
        await self._ehlo_or_helo_if_needed()     # after STARTTLS the extensions are asked for again
        utf8 = not (mail_from + recipient).isascii()
        if utf8 and not self.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPRecipientRefused(
                553, "5.6.7 Non-ASCII address, and the next hop does not offer SMTPUTF8", recipient)
        encoding, options = ("utf-8", ["SMTPUTF8"]) if utf8 else ("ascii", [])
        if eightbit:
            options.append("BODY=8BITMIME")
        if not self.supports_extension("pipelining"):
            await self.mail(mail_from, options=options, encoding=encoding, timeout=command_timeout)
            await self.rcpt(recipient, encoding=encoding, timeout=command_timeout)
            return await self.data(message, timeout=data_timeout)
        commands = b"MAIL FROM:%s%s\r\nRCPT TO:%s\r\nDATA\r\n" % (
            _path(mail_from).encode(encoding), "".join(" " + o for o in options).encode(),
            _path(recipient).encode(encoding))
        replies = await self._guarded(commands, 3, command_timeout)
        mail, rcpt, data = (replies + replies[-1:] * 2)[:3]    # a 421 stands for the replies that never came
        if data.code == 354 and (mail.code != 250 or rcpt.code not in (250, 251)):
            await self._guarded(b".\r\n", 1, command_timeout)    # RFC 2920 §3.1: end the data nobody wanted
        if mail.code != 250:
            raise aiosmtplib.SMTPSenderRefused(mail.code, mail.message, mail_from)
        if rcpt.code not in (250, 251):
            raise aiosmtplib.SMTPRecipientRefused(rcpt.code, rcpt.message, recipient)
        if data.code != 354:
            raise aiosmtplib.SMTPDataError(data.code, data.message)
        body = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"
        (done,) = await self._guarded(body, 1, data_timeout)
        if done.code != 250:
            raise aiosmtplib.SMTPDataError(done.code, done.message)
        return done

    async def _guarded(self, data: bytes, replies: int, timeout: float) -> list[SMTPResponse]:
        """A pipelined exchange; a lost connection or a timeout leaves the session unusable, so close it."""
        if self.protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        try:
            return await cast(PipeliningProtocol, self.protocol).pipeline(data, replies, timeout)   # made so by connect
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPResponseException):
            self.close()
            raise


def _path(address: str) -> str:
    """The <path> of MAIL or RCPT. aiosmtplib's quote_address parses every address with email.utils
    (13–44 µs, twice per copy); a plain address or the null sender comes out of it unchanged, so only
    the others go through it."""
    if not address:
        return "<>"
    return f"<{address}>" if plain_address(address) else quote_address(address)

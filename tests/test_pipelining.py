"""The courier pipelines MAIL, RCPT and DATA (RFC 2920) to peers that offer it, and reads every reply in order.

The next hop here is a scripted SMTP server on a real loopback socket: it answers each command from a
script (with an optional pause before every reply, so replies arrive one segment at a time) and records
every chunk it reads, so the tests see what went over the wire in which write. The `Peer` tests run the
client on asyncio's loop and on uvloop alike, against hops that cut their replies anywhere, answer and
close, or close without answering, in clear and after STARTTLS.
"""
from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from dataclasses import dataclass, field

import aiosmtplib
import pytest
import trustme
import uvloop

from policy.settings import Delivery
from relay import eventloop
from relay.pipelining import PipeliningProtocol
from relay.routing import Destination
from relay.smtp_out import Courier

MESSAGE = b"From: a@example.com\r\nSubject: hi\r\n\r\nline one\r\n.starts with a dot\r\n"


@dataclass
class ScriptedHop:
    mail: bytes = b"250 2.1.0 ok"
    rcpt: bytes = b"250 2.1.5 ok"
    data: bytes = b"354 go ahead"
    end: bytes = b"250 2.0.0 queued"
    pipelining: bool = True
    smtputf8: bool = False
    pause: float = 0.0                      # before each reply
    close_after_mail: bool = False
    chunks: list[bytes] = field(default_factory=list)
    sessions: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        pending = b""

        async def reply(line: bytes) -> None:
            await asyncio.sleep(self.pause)
            writer.write(line + b"\r\n")
            await writer.drain()

        async def lines():
            nonlocal pending
            while True:
                while b"\r\n" not in pending:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    self.chunks.append(chunk)
                    pending += chunk
                line, pending = pending.split(b"\r\n", 1)
                yield line

        await reply(b"220 hop ESMTP")
        in_data = False
        async for line in lines():
            verb = line[:4].upper()
            if in_data:
                if line == b".":
                    in_data = False
                    await reply(self.end)
            elif verb == b"EHLO":
                await reply(b"250-hop\r\n" + (b"250-PIPELINING\r\n" if self.pipelining else b"")
                            + (b"250-SMTPUTF8\r\n" if self.smtputf8 else b"") + b"250 8BITMIME")
            elif verb == b"MAIL":
                await reply(self.mail)
                if self.close_after_mail:
                    break
            elif verb == b"RCPT":
                await reply(self.rcpt)
            elif verb == b"DATA":
                await reply(self.data)
                in_data = self.data.startswith(b"354")
            elif verb == b"QUIT":
                await reply(b"221 bye")
                break
            else:
                await reply(b"250 ok")
        writer.close()

    def wire(self) -> bytes:
        return b"".join(self.chunks)


def send(hop: ScriptedHop, copies: int = 1, recipient: str = "to@example.net", sender: str = "bounce@relay.test",
         **delivery) -> list:
    """Deliver `copies` copies through one Courier to the hop; the outcomes, in order."""
    async def main():
        server = await asyncio.start_server(hop.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        courier = Courier(Delivery(**{"command_timeout": 5.0, "data_timeout": 5.0, **delivery}), "relay.test")
        try:
            return [await courier.send([Destination("127.0.0.1", port)], sender, recipient, MESSAGE)
                    for _ in range(copies)]
        finally:
            await courier.close()
            server.close()
    return eventloop.run(main())


def test_mail_rcpt_and_data_go_in_one_write_and_the_copy_is_delivered():
    hop = ScriptedHop()
    (outcome,) = send(hop)
    assert outcome.delivered and outcome.reply == "250 2.0.0 queued"
    assert b"MAIL FROM:<bounce@relay.test>\r\nRCPT TO:<to@example.net>\r\nDATA\r\n" in hop.chunks
    assert b"line one\r\n..starts with a dot\r\n.\r\n" in hop.wire()         # dot-stuffed, then the end


def test_without_pipelining_each_command_waits_for_its_reply():
    hop = ScriptedHop(pipelining=False)
    (outcome,) = send(hop)
    assert outcome.delivered
    assert b"MAIL FROM:<bounce@relay.test>\r\n" in hop.chunks and b"RCPT TO:<to@example.net>\r\n" in hop.chunks


def test_replies_arriving_one_at_a_time_are_all_read():
    hop = ScriptedHop(pause=0.05)
    outcomes = send(hop, copies=2)
    assert [o.reply for o in outcomes] == ["250 2.0.0 queued"] * 2 and hop.sessions == 1


def test_a_refused_recipient_is_permanent_and_the_connection_is_reused():
    hop = ScriptedHop(rcpt=b"550 5.1.1 no such user", data=b"554 5.5.1 no valid recipients")
    first, second = send(hop, copies=2)
    assert (first.delivered, first.permanent, first.reply) == (False, True, "550 5.1.1 no such user")
    assert second.reply == first.reply and hop.sessions == 1
    assert b"RSET\r\n" in hop.wire()


def test_data_accepted_without_a_recipient_is_ended_with_nothing_in_it():
    hop = ScriptedHop(rcpt=b"550 5.1.1 no such user", end=b"554 5.5.1 no valid recipients")
    (outcome,) = send(hop)
    assert outcome.reply == "550 5.1.1 no such user" and outcome.permanent
    assert b"DATA\r\n.\r\n" in hop.wire() and b"line one" not in hop.wire()


def test_a_refused_sender_is_reported_with_its_reply():
    hop = ScriptedHop(mail=b"451 4.7.1 greylisted", rcpt=b"503 5.5.1 need MAIL", data=b"503 5.5.1 need MAIL")
    (outcome,) = send(hop)
    assert (outcome.delivered, outcome.permanent, outcome.local) == (False, False, False)
    assert outcome.reply == "451 4.7.1 greylisted"


def test_a_421_to_mail_ends_the_session_and_is_a_temporary_failure():
    hop = ScriptedHop(mail=b"421 4.3.2 shutting down", close_after_mail=True)
    (outcome,) = send(hop)
    assert (outcome.permanent, outcome.local, outcome.reply) == (False, False, "421 4.3.2 shutting down")


def test_a_hop_that_drops_the_connection_mid_pipeline_is_a_local_failure():
    hop = ScriptedHop(close_after_mail=True)
    (outcome,) = send(hop)
    assert outcome.local and not outcome.delivered and outcome.reply.startswith("451 4.4.1 127.0.0.1:")


def test_a_hop_that_stops_answering_times_out():
    hop = ScriptedHop(pause=3.0)
    (outcome,) = send(hop, connect_timeout=1.0, command_timeout=1.0)
    assert outcome.local and outcome.reply.endswith("timed out")


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("sender, recipient, commands", [
    ("bounce+abcdefgh234567@bounce.relay.test", "to@example.net",
     b"MAIL FROM:<bounce+abcdefgh234567@bounce.relay.test>\r\nRCPT TO:<to@example.net>\r\n"),
    ("", "first.last@sub.example.net", b"MAIL FROM:<>\r\nRCPT TO:<first.last@sub.example.net>\r\n"),
    ("bounce@relay.test", '"john doe"@example.net',
     b'MAIL FROM:<bounce@relay.test>\r\nRCPT TO:<"john doe"@example.net>\r\n'),
])
def test_the_paths_go_on_the_wire_as_given_with_or_without_pipelining(pipelining, sender, recipient, commands):
    """Plain addresses and the null sender are written without a parser, others through aiosmtplib's: the
    same bytes either way."""
    hop = ScriptedHop(pipelining=pipelining)
    (outcome,) = send(hop, sender=sender, recipient=recipient)
    assert outcome.delivered
    assert commands in hop.wire()


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_non_ascii_recipient_goes_with_smtputf8(pipelining):
    hop = ScriptedHop(pipelining=pipelining, smtputf8=True)
    (outcome,) = send(hop, recipient="jösé@exämple.net")
    assert outcome.delivered
    assert b"MAIL FROM:<bounce@relay.test> SMTPUTF8\r\n" in hop.wire()
    assert "RCPT TO:<jösé@exämple.net>\r\n".encode() in hop.wire()


def test_a_non_ascii_recipient_is_refused_for_good_when_the_hop_has_no_smtputf8():
    hop = ScriptedHop()
    first, second = send(hop, copies=2, recipient="jösé@exämple.net")
    assert (first.delivered, first.permanent) == (False, True)
    assert first.reply == "553 5.6.7 Non-ASCII address, and the next hop does not offer SMTPUTF8"
    assert b"MAIL" not in hop.wire() and hop.sessions == 1


# The client on each event loop the relay may run (relay/eventloop.py), whatever WEBSOFTTT_LOOP says: how a loop
# cuts the bytes into reads, and when it tells the protocol of EOF and of the lost connection, must not change
# what the courier concludes. uvloop binds the protocol's data_received once, when the transport is made.
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
OK3 = [b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n"]
QUEUED = [b"250 2.0.0 queued\r\n"]


@pytest.fixture(scope="module")
def hop_tls() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    return context


@dataclass
class Peer:
    """A next hop on a real socket that answers the pipelined MAIL, RCPT and DATA with the segments of
    `commands` and the message with those of `body`, each segment a write of its own `gap` seconds after
    the previous one; `close` ("commands" or "body") ends the session right after those, before any QUIT.
    With `tls` it offers STARTTLS, and the replies go over TLS."""
    commands: list[bytes]
    body: list[bytes] = field(default_factory=lambda: list(QUEUED))
    close: str = ""
    gap: float = 0.0
    tls: ssl.SSLContext | None = None
    sessions: int = field(default=0, init=False)
    open: set = field(default_factory=set, init=False)      # the sessions' tasks

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        self.open.add(asyncio.current_task())

        async def send(segments: list[bytes]) -> None:
            for segment in segments:
                writer.write(segment)
                await writer.drain()
                await asyncio.sleep(self.gap)
        try:
            await send([b"220 hop ESMTP\r\n"])
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    tls = self.tls and writer.get_extra_info("sslcontext") is None
                    await send([b"250-hop\r\n250 STARTTLS\r\n" if tls else b"250-hop\r\n250 PIPELINING\r\n"])
                elif verb == b"STAR":
                    writer.write(b"220 go ahead\r\n")     # and no pause: the handshake must not be read as text
                    await writer.start_tls(self.tls)
                elif verb == b"MAIL":
                    await reader.readline()                  # RCPT and DATA came in the same write:
                    await reader.readline()                  # all three are read before any reply
                    await send(self.commands)
                    if self.close == "commands":
                        break
                    await reader.readuntil(b"\r\n.\r\n")
                    await send(self.body)
                    if self.close == "body":
                        break
                elif verb == b"QUIT":
                    await send([b"221 bye\r\n"])
                    break
                else:
                    await send([b"250 ok\r\n"])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.open.discard(asyncio.current_task())


def through(loop: str, peer: Peer, copies: int = 1) -> list[tuple]:
    """Deliver `copies` copies to `peer` through one Courier on `loop`: (delivered, permanent, local, reply,
    seconds) of each."""
    async def main():
        server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        courier = Courier(Delivery(command_timeout=3.0, data_timeout=3.0), "relay.test")
        results = []
        try:
            for _ in range(copies):
                began = time.monotonic()
                o = await courier.send([Destination("127.0.0.1", port)], "bounce@relay.test", "to@example.net", MESSAGE)
                results.append((o.delivered, o.permanent, o.local, o.reply, time.monotonic() - began))
            return results
        finally:
            await courier.close()
            server.close()
            if peer.open:                                       # the peer's sessions end on this loop
                await asyncio.wait(peer.open, timeout=5)
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(main())


def bytewise(segments: list[bytes]) -> list[bytes]:
    return [bytes([b]) for segment in segments for b in segment]


DELIVERED = {
    "one write": Peer(OK3),
    "a segment per reply": Peer([b"250 2.1.0 ok\r\n", b"250 2.1.5 ok\r\n", b"354 go ahead\r\n"], gap=0.02),
    "lines cut anywhere": Peer([b"25", b"0 2.1.0 ok\r\n250-2.1.5 first", b" line\r\n250 2.1.5 last line\r\n35",
                                b"4 go ahead\r\n"], [b"250 2.0.0 ", b"queued\r\n"], gap=0.02),
    "a byte per segment": Peer(bytewise(OK3), bytewise(QUEUED), gap=0.001),
    "the last reply, then close": Peer(OK3, close="body"),
}


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
@pytest.mark.parametrize("peer", DELIVERED.values(), ids=DELIVERED.keys())
@pytest.mark.parametrize("loop", LOOPS)
def test_replies_however_cut_are_read_on_every_loop(loop, peer, tls, hop_tls):
    peer = dataclasses.replace(peer, tls=hop_tls if tls else None)
    first, second = through(loop, peer, copies=2)
    assert first[:4] == second[:4] == (True, False, False, "250 2.0.0 queued")
    assert peer.sessions == (2 if peer.close else 1)        # a closed session is not reused


ANSWERED = {    # the peer's answer, then it closes: the answer is what counts, at once
    "421 to MAIL": (Peer([b"421 4.3.2 shutting down\r\n"], close="commands"),
                    (False, False, "421 4.3.2 shutting down")),
    "421 to RCPT, a segment later": (Peer([b"250 2.1.0 ok\r\n", b"421 4.3.2 too busy\r\n"], close="commands", gap=0.02),
                                     (False, False, "421 4.3.2 too busy")),
    "550 and 554 in one write": (Peer([b"250 2.1.0 ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n"],
                                      close="commands"), (True, False, "550 5.1.1 no such user")),
    "421 to the message": (Peer(OK3, [b"421 4.3.0 out of disk\r\n"], close="body"),
                           (False, False, "421 4.3.0 out of disk")),
}


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
@pytest.mark.parametrize("name", ANSWERED)
@pytest.mark.parametrize("loop", LOOPS)
def test_an_answer_followed_by_the_close_is_the_outcome_on_every_loop(loop, name, tls, hop_tls):
    peer, (permanent, local, reply) = ANSWERED[name]
    ((delivered, *outcome, seconds),) = through(loop, dataclasses.replace(peer, tls=hop_tls if tls else None))
    assert (delivered, *outcome) == (False, permanent, local, reply)
    assert seconds < 1.5                                    # not the 3 s command timeout


SILENT = {     # the peer closes before every reply came: a local failure, known at once, not after a timeout
    "no reply": Peer([], close="commands"),
    "one reply of three": Peer([b"250 2.1.0 ok\r\n"], close="commands"),
    "one reply and a half": Peer([b"250 2.1.0 ok\r\n25"], close="commands"),
    "two replies, a segment apart": Peer([b"250 2.1.0 ok\r\n", b"250 2.1.5 ok\r\n"], close="commands", gap=0.02),
    "no reply to the message": Peer(OK3, [], close="body"),
}


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
@pytest.mark.parametrize("peer", SILENT.values(), ids=SILENT.keys())
@pytest.mark.parametrize("loop", LOOPS)
def test_a_close_before_the_replies_is_a_local_failure_at_once_on_every_loop(loop, peer, tls, hop_tls):
    peer = dataclasses.replace(peer, tls=hop_tls if tls else None)
    ((delivered, permanent, local, reply, seconds),) = through(loop, peer)
    assert (delivered, permanent, local) == (False, False, True)
    assert reply.endswith(("Unexpected EOF received", "Connection lost")), reply
    assert seconds < 1.5


class Wire(asyncio.Transport):
    """A transport that takes every write and sends nothing: the test plays the loop's part itself."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("arrives, expected", [
    (b"250 2.1.0 ok\r\n", "Unexpected EOF received"),       # then nothing: the peer is gone, say so now
    (b"421 4.3.2 shutting down\r\n", 421),                 # the answer that came before the end counts
])
@pytest.mark.parametrize("loop", LOOPS)
def test_data_eof_and_the_lost_connection_in_one_callback_end_the_pipeline_at_once(loop, arrives, expected):
    """A loop may report the last data, the EOF and the lost connection together, before the waiting
    `pipeline` has run (uvloop's TLS layer calls data_received and eof_received in one go): what came is
    read, and the end is not forgotten, so nothing waits for the command timeout."""
    async def main():
        running = asyncio.get_running_loop()
        protocol = PipeliningProtocol(loop=running)
        protocol.connection_made(Wire())
        running.call_soon(lambda: (protocol.data_received(arrives), protocol.eof_received(),
                                   protocol.connection_lost(None)))
        began = time.monotonic()
        try:
            return [r.code for r in await protocol.pipeline(b"MAIL FROM:<>\r\nRCPT TO:<a@b.c>\r\nDATA\r\n", 3, 2.0)]
        except aiosmtplib.SMTPException as e:
            return str(e)
        finally:
            assert time.monotonic() - began < 1.0
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        assert runner.run(main()) == (expected if isinstance(expected, str) else [expected])

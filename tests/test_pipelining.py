"""The courier pipelines MAIL, RCPT and DATA (RFC 2920) to peers that offer it, and reads every reply in order.

The next hop here is a scripted SMTP server on a real loopback socket: it answers each command from a
script (with an optional pause before every reply, so replies arrive one segment at a time) and records
every chunk it reads, so the tests see what went over the wire in which write.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from policy.settings import Delivery
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
    return asyncio.run(main())


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

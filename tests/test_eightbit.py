"""8-bit mail on the way out (RFC 6152): BODY=8BITMIME where the next hop offers it, quoted-printable or base64
before signing where it does not, 554 5.6.3 where no conversion can help.

Real parts: the relay's submission and delivery, real next hops (aiosmtpd sinks with and without 8BITMIME),
the real spool; signatures checked with dkimpy and, where installed, Perl Mail::DKIM.
"""
from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import sqlite3
import subprocess
import time

import dkim
import pytest

from policy import suppression
from policy.keys import dkim_public_value, load_private_key
from relay import spool
from relay.eightbit import ConversionError, to_7bit
from relay.spool import Message, Spool
from tests.conftest import Sink, serve_sink
from tests.test_delivery import start, wait_states
from tests.test_signing import PERL_VERIFY, _perl_dkim_missing

TEXT = "Schöne Grüße aus Köln, naïve café ☕ \r\nzweite Zeile mit = und\ttab\r\n"
BLOB = bytes(range(128, 256)) * 3
ASCII_PART = (b"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
              b"Plain  ASCII,   left exactly as it was.  \r\n")
MIXED = (b"From: App <app@example.com>\r\nTo: you@example.net\r\nSubject: 8-bit parts\r\n"
         b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
         b"This is a MIME message.\r\n"
         b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
         + TEXT.encode() +
         b"--b1\r\nContent-Type: application/octet-stream\r\n\r\n" + BLOB + b"\r\n"
         + ASCII_PART + b"--b1--\r\n")
PLAIN = (b"From: App <app@example.com>\r\nTo: you@example.net\r\nSubject: seven bits\r\n\r\n"
         b"Nothing but ASCII here.\r\n")


@pytest.fixture
def plain_sink():
    """A next hop that does not offer 8BITMIME."""
    yield from serve_sink(Sink(eightbit=False))


@pytest.fixture
def hop(request):
    """A next hop made with the test's parameter as `Sink` keyword arguments."""
    yield from serve_sink(Sink(**request.param))


def submit(relay, data: bytes, options: tuple[str, ...] = ("BODY=8BITMIME",)) -> str:
    client = relay.connect()
    assert client.mail("app@example.com", list(options))[0] == 250
    assert client.rcpt("you@example.net")[0] == 250
    code, text = client.data(data)
    assert code == 250, text
    client.quit()
    return text.decode().split()[-1]


def parts_of(message: bytes) -> list[email.message.EmailMessage]:
    return list(email.message_from_bytes(message, policy=email.policy.default).iter_parts())


def dkimpy_verifies(relay, data: bytes) -> bool:
    public = dkim_public_value(load_private_key(relay.settings.dkim_key)).encode()
    return dkim.verify(data, dnsfunc=lambda name, timeout=5: b"v=DKIM1; k=rsa; p=" + public)


@pytest.mark.parametrize("options", [("BODY=8BITMIME",), ()], ids=["declared", "undeclared"])
def test_8bit_mail_goes_with_body_8bitmime_and_unchanged_where_offered(relay_factory, sink, options):
    relay = start(relay_factory, sink)
    wait_states(relay, submit(relay, MIXED, options), {"delivered"})
    ((_, _, data),) = sink.received
    assert sink.mail_options == [["BODY=8BITMIME"]]
    assert data.endswith(MIXED) and dkimpy_verifies(relay, data)


@pytest.mark.parametrize("options", [("BODY=8BITMIME",), ()], ids=["declared", "undeclared"])
def test_8bit_parts_are_encoded_and_signed_for_a_hop_without_8bitmime(relay_factory, plain_sink, options):
    relay = start(relay_factory, plain_sink)
    wait_states(relay, submit(relay, MIXED, options), {"delivered"})
    ((_, _, data),) = plain_sink.received
    assert plain_sink.mail_options == [[]] and data.isascii()
    assert ASCII_PART in data                                   # the 7-bit part is left byte for byte
    parts = parts_of(data)
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["quoted-printable", "base64", None]
    assert [p.get_payload(decode=True) for p in parts] == [p.get_payload(decode=True) for p in parts_of(MIXED)]
    assert parts[0].get_payload(decode=True) == TEXT.encode().removesuffix(b"\r\n")   # the CRLF before "--b1"
    assert dkimpy_verifies(relay, data)


@pytest.mark.skipif(_perl_dkim_missing(), reason="Perl Mail::DKIM not installed (apt-get install libmail-dkim-perl)")
def test_the_converted_copy_verifies_with_perl_mail_dkim(relay_factory, plain_sink, tmp_path):
    relay = start(relay_factory, plain_sink)
    wait_states(relay, submit(relay, MIXED), {"delivered"})
    ((_, _, data),) = plain_sink.received
    assert data.isascii()
    path = tmp_path / "copy.eml"
    path.write_bytes(data)
    record = f"v=DKIM1; k=rsa; p={dkim_public_value(load_private_key(relay.settings.dkim_key))}"
    out = subprocess.run(["perl", "-e", PERL_VERIFY, str(path), record], capture_output=True, text=True)
    assert out.stdout.strip() == "websofttt.com=pass", out.stdout + out.stderr


@pytest.mark.parametrize("hop", [{"pipelining": False}], indirect=True)
def test_body_8bitmime_goes_command_by_command_too(relay_factory, hop):
    relay = start(relay_factory, hop)
    wait_states(relay, submit(relay, MIXED), {"delivered"})
    assert hop.mail_options == [["BODY=8BITMIME"]] and hop.received[0][2].endswith(MIXED)


def test_an_8bit_header_for_a_hop_without_8bitmime_fails_for_good_with_5_6_3(relay_factory, plain_sink):
    relay = start(relay_factory, plain_sink)
    data = MIXED.replace(b"Subject: 8-bit parts", "Subject: Grüße".encode())
    ((_, _, reply),) = wait_states(relay, submit(relay, data, ("SMTPUTF8", "BODY=8BITMIME")), {"failed"})
    assert reply.startswith("554 5.6.3 ") and plain_sink.received == []
    assert relay.store.all("SELECT status, class FROM bounces") == [{"status": "5.6.3", "class": "other"}]
    assert suppression.find(relay.store, "acme", "you@example.net") is None      # not the recipient's fault


@pytest.mark.parametrize("hop", [{"eightbit": True}, {"eightbit": False}], ids=["8bitmime", "no-8bitmime"],
                         indirect=True)
def test_a_7bit_message_goes_unchanged_and_without_body(relay_factory, hop):
    relay = start(relay_factory, hop)
    wait_states(relay, submit(relay, PLAIN, ()), {"delivered"})
    assert hop.mail_options == [[]] and hop.received[0][2].endswith(PLAIN)


def test_the_declared_body_type_goes_with_mail_handed_over_in_memory(relay_factory, sink):
    relay = start(relay_factory, sink)
    wait_states(relay, submit(relay, PLAIN), {"delivered"})             # 7-bit bytes, BODY=8BITMIME all the same
    assert sink.mail_options == [["BODY=8BITMIME"]] and sink.received[0][2].endswith(PLAIN)


def test_the_body_type_survives_a_restart(relay_factory, sink):
    relay = start(relay_factory, sink, roles=("submission",))       # nothing is handed over: all waits in the spool
    seven = PLAIN.replace(b"seven bits", b"declared")
    declared = submit(relay, seven)                     # 7-bit bytes, BODY=8BITMIME all the same
    undeclared = submit(relay, MIXED, ())               # 8-bit bytes, no BODY=
    assert sorted(relay.spool_rows("SELECT id, eightbit FROM messages")) == sorted([(declared, 1), (undeclared, 0)])
    relay.stop()
    relay = relay_factory(roles=("submission", "delivery"), delivery={
        "routes": {"example.net": ("127.0.0.1", sink.port)}})
    for queue_id in (declared, undeclared):
        wait_states(relay, queue_id, {"delivered"})
    copies = {b"declared" in data: (options, data) for (_, _, data), options in zip(sink.received, sink.mail_options)}
    assert copies[True][0] == copies[False][0] == ["BODY=8BITMIME"]
    assert copies[True][1].endswith(seven) and copies[False][1].endswith(MIXED)


def test_a_spool_file_from_before_the_column_gets_it(tmp_path):
    path = tmp_path / "shard-0.sqlite"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE messages (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, mail_from TEXT NOT NULL, "
                    "size INTEGER NOT NULL, received TEXT NOT NULL, smtputf8 INTEGER NOT NULL DEFAULT 0, "
                    "campaign TEXT, from_domain TEXT, data BLOB)")
        old.executescript(spool.MIGRATIONS[0][1])  # the first spool files: every table, no eightbit column
        old.execute("INSERT INTO messages (id, tenant, mail_from, size, received, data) "
                    "VALUES ('old', 'acme', 'a@example.com', 4, '2025-01-01T00:00:00Z', x'c3a9')")
        old.execute("INSERT INTO recipients (queue_id, recipient, next_attempt) VALUES ('old', 'b@example.net', 0)")
    old.close()

    async def due() -> dict[str, bool]:
        shard = Spool(path)
        try:
            await shard.enqueue(Message("new", "acme", "a@example.com", ("b@example.net",), b"data", eightbit=True))
            return {d.queue_id: d.eightbit for d in shard.due(time.time() + 1, 10)}
        finally:
            shard.close()
    assert asyncio.run(due()) == {"old": False, "new": True}


NESTED = (b"From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: 8bit\r\n"
          b"Content-Type: multipart/mixed;\r\n boundary=\"outer\"\r\n\r\n"
          b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
          b"--inner\r\nContent-Type: text/plain\r\n\r\nplain ascii\r\n"
          b"--inner\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8BIT\r\n"
          b" \r\n\r\n<p>" + "überall".encode() + b"</p>\r\n--inner--\r\n"
          b"--outer\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
          b"From: b@example.com\r\nSubject: inside\r\n\r\n" + "Grüße".encode() + b"\r\n"
          b"--outer--\r\nepilogue\r\n")


def test_only_the_8bit_leaves_and_their_labels_change():
    converted = to_7bit(NESTED)
    assert converted.isascii()
    assert converted == (NESTED
                         .replace(b"Content-Transfer-Encoding: 8bit\r\nContent-Type: multipart/mixed;\r\n"
                                  b" boundary=\"outer\"\r\n",
                                  b"Content-Type: multipart/mixed;\r\n boundary=\"outer\"\r\n"
                                  b"Content-Transfer-Encoding: 7bit\r\n")
                         .replace(b"Content-Transfer-Encoding: 8BIT\r\n \r\n\r\n<p>\xc3\xbcberall</p>",
                                  b"Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>=C3=BCberall</p>")
                         .replace(b"message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n",
                                  b"message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n")
                         .replace(b"Subject: inside\r\n\r\nGr\xc3\xbc\xc3\x9fe",
                                  b"Subject: inside\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8"
                                  b"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe"))


def test_7bit_mail_is_returned_as_it_is():
    assert to_7bit(PLAIN) is PLAIN


def test_a_message_that_is_not_mime_becomes_mime_text():
    converted = to_7bit(b"From: a@example.com\r\nSubject: hi\r\n\r\nna\xefve caf\xe9\nline two\n")
    message = email.message_from_bytes(converted, policy=email.policy.default)
    assert converted.isascii() and message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "unknown-8bit"                        # not UTF-8: RFC 1428
    assert message.get_payload(decode=True) == b"na\xefve caf\xe9\r\nline two\r\n"


def test_a_multipart_without_close_delimiter_runs_to_the_end():
    converted = to_7bit(MIXED.removesuffix(b"--b1--\r\n").replace(b"\r\n" + ASCII_PART, b"\r\n"))
    assert converted.isascii()
    assert [p.get_payload(decode=True) for p in parts_of(converted)] == [TEXT.encode().removesuffix(b"\r\n"),
                                                                          BLOB + b"\r\n"]


@pytest.mark.parametrize("message", [
    MIXED.replace(b"Subject: 8-bit parts", "Subject: Grüße".encode()),
    MIXED.replace(b"Content-Type: application/octet-stream", "Content-Type: application/octet-stream; name=ä".encode()),
    MIXED.replace(b"This is a MIME message.", "Dies ist eine MIME-Nachricht für Sie.".encode()),
    MIXED.replace(b"Content-Transfer-Encoding: 8bit", b"Content-Transfer-Encoding: base64"),
    NESTED.replace(b"Subject: inside", "Subject: drinnen ä".encode()),
    b"From: a@example.com\r\nContent-Type: multipart/mixed\r\n\r\n\xc3\xa9\r\n",
], ids=["top header", "part header", "preamble", "declared base64", "header inside message/rfc822", "no boundary"])
def test_what_cannot_be_converted_is_refused(message):
    with pytest.raises(ConversionError):
        to_7bit(message)

"""Free-text bounces in many languages and from old mail systems, hard or soft by their meaning,
auto-replies by their text, challenge-response requests and Microsoft JMRP complaints
(inbound/bounce_signs, inbound/auto_reply, inbound/bounce_reason.permanence)."""
from __future__ import annotations

import pytest

from inbound.bounce_reason import failure
from inbound.classify import classify

# (Subject, the explanation's wording): what national providers and old MTAs write, no status code
LANGUAGES = [
    ("Unzustellbar: Ihre Nachricht", "Ihre Nachricht konnte nicht zugestellt werden an a@x.example."),
    ("Non remis : Votre message", "Votre message n'a pas pu être remis à a@x.example."),
    ("No se ha podido entregar", "El mensaje no se pudo entregar a a@x.example."),
    ("Mancato recapito del messaggio", "Non è stato possibile recapitare il messaggio a a@x.example."),
    ("Mensagem não entregue", "A mensagem não pôde ser entregue a a@x.example."),
    ("Onbestelbaar: uw bericht", "Uw bericht kon niet worden afgeleverd bij a@x.example."),
    ("Wiadomość niedostarczona", "Wiadomość nie została dostarczona do a@x.example."),
    ("Недоставленное сообщение", "Ваше сообщение не может быть доставлено a@x.example."),
    ("Nedoručitelné: zpráva", "Zpráva nemohla být doručena a@x.example."),
    ("邮件传输失败！", "邮件无法发送到您指定的地址中。 a@x.example"),
]


def mail(sender: str, subject: str, body: str, extra: str = "") -> bytes:
    return f"From: {sender}\nSubject: {subject}\n{extra}MIME-Version: 1.0\nContent-Type: text/plain; " \
           f"charset=utf-8\n\n{body}\n".encode()


@pytest.mark.parametrize("subject, body", LANGUAGES)
def test_a_bounce_in_another_language_from_a_mail_system(subject, body):
    got = classify(mail("Mail Delivery System <MAILER-DAEMON@mx.example.net>", subject, body,
                        "Precedence: bulk\n"), [], [])
    assert (got.kind, got.recipients) == ("bounce", ("a@x.example",))
    assert got.permanent is True


@pytest.mark.parametrize("subject, body", LANGUAGES)
def test_its_subject_and_wording_make_a_bounce_from_any_sender_but_not_a_forward_of_one(subject, body):
    assert classify(mail("imss@gw.example.net", subject, body), [], []).kind == "bounce"
    assert classify(mail("imss@gw.example.net", subject, "Hello"), [], []).kind == "other"
    assert classify(mail("kim@example.net", f"Fwd: {subject}", body), [], []).kind == "other"
    assert classify(mail("kim@example.net", subject, body), ["abuse"], [None]).kind == "human_complaint"


@pytest.mark.parametrize("sender", ["MDaemon@mx.example.net", '"Jetmail System" <>', "System Administrator <sa@x.example>",
                                    "postmaster@x.example (Automated response from postmaster)"])
def test_mail_systems_senders(sender):
    got = classify(mail(sender, "Notice", "Your message was not delivered to a@x.example: user unknown.",
                        "Auto-Submitted: auto-replied\n"), [], [])
    assert (got.kind, got.permanent, got.recipients) == ("bounce", True, ("a@x.example",))


def test_a_delay_warning_in_free_text():
    got = classify(mail("MAILER-DAEMON@mx.example.net", "Warning: message has not yet been delivered",
                        "a@x.example: connection timed out. Will keep trying for 4 more days."), [], [])
    assert (got.kind, got.permanent, got.failures, got.recipients) == ("bounce", False, (), ("a@x.example",))


def test_a_report_saved_with_blank_lines_before_its_header():
    raw = b"\n   \n" + mail("MAILER-DAEMON@mx.example.net", "Mail delivery failed", "a@x.example: 550 5.1.1 unknown")
    assert classify(raw, [], []).kind == "bounce"


@pytest.mark.parametrize("status, diagnostic, permanent", [
    ("5.7.0", "maildrop: maildir over quota.", False),                 # the text's meaning beats the status
    ("5.2.3", "Sorry, the user's maildir has overdrawn his diskspace quota", False),
    ("5.0.0", "552 Account(s) <a@x.example> does not have enough space", False),
    ("", "550 Mailbox quota usage exceeded. Espacio en casilla de mail agotado.", False),
    ("5.7.1", "550 5.7.1 greylisted, please come back later", False),
    ("5.7.1", "550 5.7.1 rate limit exceeded for this sender", False),
    ("", "Technical details of permanent failure: TEMP_FAILURE: Connection timed out", False),
    ("", "retry timeout exceeded", False),
    ("", "Name service error for domain x.example: Host not found, try again", False),
    ("4.4.7", "550 5.1.1 user unknown", True),                          # a final answer about the mailbox
    ("5.7.1", "550 5.7.1 temporarily blocked for poor reputation", True),
    ("4.7.1", "451 4.7.1 temporarily deferred, try again later", False),
    ("", "You sent mail to a@x.example. That's not a valid user here.", True),
    ("", "No such user", True),
    ("5.1.1", "550 5.1.1 Mailbox temporarily unavailable", False),
    ("5.0.0", "550 Requested action not taken: mailbox unavailable", True),
])
def test_hard_or_soft_by_meaning(status, diagnostic, permanent):
    assert failure("a@x.example", status, diagnostic, True).permanent is permanent


def test_a_challenge_response_request_is_an_auto_reply_even_as_a_report():
    raw = mail("exampleuser@bluebottle.example", "RE: offers", "This account is protected. Please click on the "
               "following link to have your address added to the recipient's allowed list.")
    assert classify(raw, ["bounce"], [None]).kind == "auto_reply"
    report = (b"From: noreply@screen.example\nSubject: Re: offers\nMIME-Version: 1.0\n"
              b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\n"
              b"Content-Type: text/plain\n\nYour message has been waitlisted. Add yourself to my Guest List.\n"
              b"--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; screen.example\n\n"
              b"Final-Recipient: rfc822; a@x.example\nAction: delayed\nStatus: 4.7.0\n--b--\n")
    got = classify(report, [], [])
    assert (got.kind, got.evidence) == ("auto_reply", "challenge-response request: has been waitlisted")


def test_an_out_of_office_text_without_markers_is_an_auto_reply():
    raw = mail("kim@example.net", "Arpus biroja atrasanas automatiska atbilde: offers", "I am out of office.")
    assert classify(raw, [], []).kind == "auto_reply"
    assert classify(mail("kim@example.net", "offers", "Thanks. I am on vacation until May."), [], []).kind == \
        "auto_reply"


def test_microsoft_jmrp_is_a_complaint():
    raw = (b"From: staff@hotmail.example\nSubject: complaint about message from 192.0.2.1\nMIME-Version: 1.0\n"
           b"Content-Type: multipart/mixed; boundary=j\n\n--j\nContent-Type: message/rfc822\n\n"
           b"X-HmXmrOriginalRecipient: <Reader@hotmail.example>\nFrom: news@shop.example\nTo: reader@hotmail.example\n"
           b"Subject: offers\n\nbuy\n--j--\n")
    got = classify(raw, ["abuse"], [None])
    assert (got.kind, got.recipients) == ("complaint", ("reader@hotmail.example",))
    assert got.evidence == "Microsoft JMRP report (X-HmXmrOriginalRecipient)"


# --- recipients --------------------------------------------------------------------------------------

def report(blocks: str, sender: str = "MAILER-DAEMON@mx.example.net", returned: str = "") -> bytes:
    return (f"From: {sender}\nSubject: Delivery Status Notification\nMIME-Version: 1.0\n"
            f"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\n"
            f"Content-Type: text/plain\n\nIt failed.\n--b\nContent-Type: message/delivery-status\n\n"
            f"Reporting-MTA: dns; mx.example.net\n\n{blocks}\n{returned}--b--\n").encode()


@pytest.mark.parametrize("blocks, recipients", [
    ("Final-Recipient: rfc822; <@relay.example,@mx.example:Ann@X.example>\nAction: failed\nStatus: 5.1.1",
     ("ann@x.example",)),                                                       # RFC 5321 source route
    ("Final-Recipient: x400; /C=DE/ADMD=X/S=Ann/\nOriginal-Recipient: rfc822; ann@x.example\nAction: failed\n"
     "Status: 5.1.1", ("ann@x.example",)),                                      # X.400 gateway
    ("Final-Recipient: rfc822; ann.smith@mbox.x.example\nOriginal-Recipient: rfc822; ann@x.example\n"
     "Action: failed\nStatus: 5.1.1", ("ann@x.example",)),                      # the address we sent to, once
    ("Final-Recipient: rfc822; ann@x.example\nAction: failure\nStatus: 553 Exceeded maximum inbound message size",
     ("ann@x.example",)),                                                       # NTMail's Action and Status
    ("Final-Recipient: rfc822; ann@x.example\nAction: error\nStatus: 5.0.0", ("ann@x.example",)),   # OpenSMTPD
])
def test_dsn_recipients(blocks, recipients):
    got = classify(report(blocks), [], [])
    assert (got.kind, got.permanent, got.recipients) == ("bounce", True, recipients)


def test_a_bounce_that_names_no_address_takes_the_returned_messages_recipient():
    returned = ("--b\nContent-Type: message/rfc822\n\nReceived: from a by mx.x.example\n\tfor <ann@x.example>; "
                "Mon, 1 Jun 2026 10:00:00 +0000\nReceived: from b by c for <list@lists.example>; Mon, 1 Jun 2026\n"
                "From: news@shop.example\nTo: list@lists.example\nSubject: hi\n\nhi\n")
    got = classify(report("Final-Recipient: unknown; ann\nAction: failed\nStatus: 5.1.1", returned=returned), [], [])
    assert [f.recipient for f in got.failures] == ["ann@x.example"]
    one_to = returned.replace("\tfor <ann@x.example>;", "\t;").replace("To: list@lists.example", "To: Ann <ann@x.example>")
    got = classify(report("Final-Recipient: unknown; ann\nAction: failed\nStatus: 5.1.1", returned=one_to), [], [])
    assert [f.recipient for f in got.failures] == ["ann@x.example"]
    two_to = one_to.replace("To: Ann <ann@x.example>", "To: ann@x.example, bob@x.example")
    got = classify(report("Final-Recipient: unknown; ann\nAction: failed\nStatus: 5.1.1", returned=two_to), [], [])
    assert [f.recipient for f in got.failures] == [""]


def test_an_alias_is_reported_by_the_address_it_was_sent_to():
    raw = mail("MAILER-DAEMON@mx.example.net", "Returned mail: see transcript for details",
               "   ----- The following addresses had permanent fatal errors -----\nann@mbox.x.example\n"
               "    (expanded from: ann@x.example)\n\n   ----- Transcript of session follows -----\n"
               "554 Too many hops 26 (25 max): to ann@x.example\n")
    assert classify(raw, [], []).recipients == ("ann@x.example",)


def test_the_returned_copy_after_a_first_lines_marker_is_not_the_explanation():
    raw = mail("MAILER-DAEMON@mx.example.net", "failure notice",
               'Delivery of email to this address\n"ann@x.example"\nhas failed due to a full mailbox.\n'
               "The first 50 lines of your original message follow:\n> From: news@shop.example\n"
               "> To: ann@x.example, bob@y.example\n")
    got = classify(raw, [], [])
    assert (got.recipients, got.permanent) == (("ann@x.example",), False)


def test_an_html_only_bounce_is_read():
    raw = (b"From: MAILER-DAEMON@mx.example.net\nSubject: failure notice\nMIME-Version: 1.0\n"
           b"Content-Type: text/html\n\n<p>Sorry, I couldn't deliver your message to <b>ann@x.example</b>:</p>"
           b"<p>550 No such user</p>\n")
    got = classify(raw, [], [])
    assert (got.kind, got.permanent, got.recipients) == ("bounce", True, ("ann@x.example",))


def test_a_dsn_wrapped_by_a_mail_filter_is_read():
    inner = report("Final-Recipient: rfc822; ann@x.example\nAction: failed\nStatus: 5.1.1").decode()
    raw = ("From: postmaster@filter.example\nSubject: Delivery Status Notification (Failure)\nMIME-Version: 1.0\n"
           "Content-Type: multipart/mixed; boundary=w\n\n--w\nContent-Type: text/plain\n\nThis e-mail is "
           "confidential.\n--w\nContent-Type: message/rfc822\n\n" + inner + "\n--w--\n").encode()
    got = classify(raw, [], [])
    assert (got.kind, got.recipients) == ("bounce", ("ann@x.example",))
    assert got.evidence.startswith("message/delivery-status part")

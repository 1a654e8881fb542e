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

"""inbound/classify: what an inbound message is, over a corpus of real-world formats and hostile input."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inbound import dsn
from inbound.classify import KINDS, MAX_BYTES, Classification, classify

CORPUS = Path(__file__).parent / "corpus" / "inbound"
TOKEN_RE = re.compile(r"[a-z2-7]{1,64}")


@dataclass(frozen=True)
class Case:
    file: str
    roles: tuple[str, ...]
    role_tokens: tuple[str | None, ...]
    kind: str
    evidence: str                         # a substring the evidence must contain
    permanent: bool | None = None
    recipients: tuple[str, ...] = ()
    tokens: tuple[str, ...] = ()
    message_ids: tuple[str, ...] = ()


CASES = [
    Case("postfix_dsn_failed.eml", ("bounce",), ("6fzgiermbboc3rvgnwnq6la6vv2dlqeljq",), "bounce",
         "multipart/report; report-type=delivery-status (failed 5.1.1)", True,
         ("alice.nowhere@example.net",), ("6fzgiermbboc3rvgnwnq6la6vv2dlqeljq",)),
    Case("postfix_dsn_delayed.eml", ("bounce",), (None,), "bounce",
         "report-type=delivery-status (delayed 4.4.1)", False,
         ("bob@alias.example.org",), ("kv4ljjgwxlssf7vptdmhmubbowb2ughp2y",)),
    Case("gmail_dsn_failure.eml", ("bounce",), ("LMZGUPSMUR6B64B5DTXO25QQVH35QOQS5A",), "bounce",
         "report-type=delivery-status (failed 5.1.1)", True,
         ("nobody.here@gmail.com",), ("lmzgupsmur6b64b5dtxo25qqvh35qoqs5a",),
         ("<20251118103107.0193a9f0.7@websofttt.com>",)),
    Case("office365_ndr.eml", ("bounce",), (None,), "bounce",
         "report-type=delivery-status (failed 5.1.10)", True,
         ("j.smith@contoso.com",), ("omo4c2izmjt534fhc5i2v4xjfrpfga4sj4",),
         ("<20251120084718.0193c2aa.3@websofttt.com>",)),
    Case("exim_mail_delivery_failed.eml", ("bounce",), (None,), "bounce",
         "non-standard bounce: From MAILER-DAEMON, Subject: Mail delivery failed", True,
         ("ian.w@example.co.uk",), ("foxi4xoprykdzsac3x3vr655r2lpvqv3vy",)),
    Case("qmail_failure_notice.eml", ("postmaster",), (None,), "bounce",
         "non-standard bounce: From MAILER-DAEMON, Subject: failure notice", True,
         ("carol@example.com",), ("njgsy75ywfw37nh2q33aacbiaw27cd7qoy",)),
    Case("arf_abuse_rfc822.eml", ("abuse",), (None,), "complaint", "feedback-report: Feedback-Type abuse",
         None, ("dana.reyes@example-isp.net",), ("abcdefghijklmnopqrstuvwxyz234567ab",)),
    Case("arf_headers_only.eml", ("abuse",), (None,), "complaint", "feedback-report: Feedback-Type abuse",
         None, ("erin@mailbox.example",), ("wefm75fbl5els2ns7ybd6rmyci4hkf6edy",)),
    Case("outlook_automatic_reply.eml", ("unsubscribe",), ("l2zgskan4gncq67tg7nzwhr5q6eg4im6py",), "auto_reply",
         "X-Auto-Response-Suppress: All", tokens=("l2zgskan4gncq67tg7nzwhr5q6eg4im6py",),
         message_ids=("<20251120090133.0193c2b9.8@websofttt.com>",)),
    Case("gmail_vacation.eml", ("unsubscribe",), ("l2zgskan4gncq67tg7nzwhr5q6eg4im6py",), "auto_reply",
         "Auto-Submitted: auto-replied", tokens=("l2zgskan4gncq67tg7nzwhr5q6eg4im6py",),
         message_ids=("<20251120090133.0193c2b9.11@websofttt.com>",)),
    Case("human_unsubscribe_reply.eml", ("unsubscribe",), ("ntz6a4lqi3ojgm7ysbtqf2ewa6xhk5cr3u",), "unsubscribe",
         "addressed to unsubscribe+ntz6a4…", tokens=("ntz6a4lqi3ojgm7ysbtqf2ewa6xhk5cr3u",),
         message_ids=("<20251118101358.0193a7c2.6@websofttt.com>", "<20251101090000.01923f10.4@websofttt.com>")),
    Case("human_abuse_complaint.eml", ("abuse",), (None,), "human_complaint", "addressed to abuse",
         tokens=("ufdzl3pr2m3qkj6nn7hbx4ywd5ocg2tsbe",)),
    Case("privacy_request.eml", ("privacy",), (None,), "privacy_request", "addressed to privacy"),
    Case("garbage.eml", ("postmaster",), (None,), "other", "addressed to postmaster"),
]


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def test_corpus_and_cases_match():
    assert sorted(c.file for c in CASES) == sorted(p.name for p in CORPUS.glob("*.eml"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.file)
def test_corpus(case: Case):
    got = classify(corpus(case.file), list(case.roles), list(case.role_tokens))
    assert got.kind == case.kind
    assert case.evidence in got.evidence
    assert got.permanent is case.permanent
    assert got.recipients == case.recipients
    assert got.tokens == case.tokens
    assert got.message_ids == case.message_ids


# Auto-replies and bounces that reach the unsubscribe address do not unsubscribe anybody.
@pytest.mark.parametrize("name, kind", [
    ("outlook_automatic_reply.eml", "auto_reply"), ("gmail_vacation.eml", "auto_reply"),
    ("postfix_dsn_failed.eml", "bounce"), ("exim_mail_delivery_failed.eml", "bounce"),
    ("qmail_failure_notice.eml", "bounce"), ("office365_ndr.eml", "bounce"),
    ("arf_abuse_rfc822.eml", "complaint"),
])
def test_not_an_unsubscribe(name, kind):
    got = classify(corpus(name), ["unsubscribe"], ["ntz6a4lqi3ojgm7ysbtqf2ewa6xhk5cr3u"])
    assert got.kind == kind
    assert got.tokens[0] == "ntz6a4lqi3ojgm7ysbtqf2ewa6xhk5cr3u"


def test_role_token_comes_first_then_returned_headers_deduplicated():
    got = classify(corpus("postfix_dsn_failed.eml"), ["bounce"], ["omo4c2izmjt534fhc5i2v4xjfrpfga4sj4"])
    assert got.tokens == ("omo4c2izmjt534fhc5i2v4xjfrpfga4sj4", "6fzgiermbboc3rvgnwnq6la6vv2dlqeljq")


def test_tokens_in_document_order_from_each_returned_field():
    one, two, three = ("ntz6a4lqi3ojgm7ysbtqf2ewa6xhk5cr3u", "omo4c2izmjt534fhc5i2v4xjfrpfga4sj4",
                       "wefm75fbl5els2ns7ybd6rmyci4hkf6edy")
    raw = corpus("arf_headers_only.eml").replace(b"Original-Mail-From: bounce+" + three.encode(),
                                                 b"Original-Mail-From: bounce+" + two.encode())
    raw = raw.replace(b"mailto:unsubscribe+" + three.encode(), b"mailto:unsubscribe+" + one.encode())
    got = classify(raw, ["abuse"], [None])
    assert got.tokens == (two, three, one)     # ARF Original-Mail-From, then Return-Path, then List-Unsubscribe


def test_invalid_role_token_is_not_a_token():
    got = classify(corpus("human_unsubscribe_reply.eml"), ["unsubscribe"], ["not-base32!"])
    assert (got.kind, got.tokens, got.evidence) == ("unsubscribe", (), "addressed to unsubscribe@")


def test_unsubscribe_without_token():
    got = classify(corpus("human_unsubscribe_reply.eml"), ["unsubscribe"], [None])
    assert (got.kind, got.evidence) == ("unsubscribe", "addressed to unsubscribe@")


def test_what_reaches_the_bounce_address_without_a_sign_of_a_bounce_is_other():
    for name in ("garbage.eml", "privacy_request.eml", "human_unsubscribe_reply.eml"):
        got = classify(corpus(name), ["bounce"], ["foxi4xoprykdzsac3x3vr655r2lpvqv3vy"])
        assert (got.kind, got.permanent, got.failures) == ("other", None, ()), name
        assert got.evidence == "addressed to bounce+foxi4x…, but no sign of a bounce in it"
        assert got.tokens == ("foxi4xoprykdzsac3x3vr655r2lpvqv3vy",)


def test_a_mail_systems_message_to_the_bounce_address_is_a_bounce_even_without_a_bounce_subject():
    raw = b"From: MAILER-DAEMON@mx.example.net\nSubject: Notice\n\nSomething went wrong.\n"
    got = classify(raw, ["bounce"], ["foxi4xoprykdzsac3x3vr655r2lpvqv3vy"])
    assert (got.kind, [f.recipient for f in got.failures]) == ("bounce", [""])
    assert classify(raw, [], []).kind == "other"


def test_vacation_reply_to_the_bounce_address_is_an_auto_reply():
    # RFC 3834 responders answer the envelope sender, i.e. bounce+TOKEN@: not a bounce.
    got = classify(corpus("gmail_vacation.eml"), ["bounce"], ["foxi4xoprykdzsac3x3vr655r2lpvqv3vy"])
    assert got.kind == "auto_reply"


def test_forwarded_dsn_is_not_a_bounce():
    raw = (b"From: someone@example.net\r\nTo: 4abuse@websofttt.com\r\nSubject: Fwd: look at this\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\n"
           b"Content-Type: text/plain\r\n\r\nWhy do I get this?\r\n--outer\r\nContent-Type: message/rfc822\r\n\r\n"
           + corpus("postfix_dsn_failed.eml").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n--outer--\r\n")
    got = classify(raw, ["abuse"], [None])
    assert got.kind == "human_complaint"


# --- DSN details -------------------------------------------------------------------------------

def dsn_message(*blocks: str, subject: str = "Delivery Status Notification") -> bytes:
    status = "\n\n".join(blocks)
    return (f"From: MAILER-DAEMON@mx.example.net\nSubject: {subject}\nMIME-Version: 1.0\n"
            f"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
            f"--b\nContent-Type: text/plain\n\nDelivery report.\n"
            f"--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n{status}\n"
            f"--b--\n").encode()


@pytest.mark.parametrize("blocks, permanent, summary", [
    (["Final-Recipient: rfc822; a@x.example\nAction: failed\nStatus: 4.4.7"], False, "failed 4.4.7"),
    (["Final-Recipient: rfc822; a@x.example\nAction: failed"], True, "failed"),
    (["Final-Recipient: rfc822; a@x.example\nStatus: 5.7.1"], True, "failed 5.7.1"),
    (["Final-Recipient: rfc822; a@x.example\nAction: delayed\nStatus: 5.0.0"], False, "delayed 5.0.0"),
    (["Final-Recipient: rfc822; a@x.example\nAction: delivered\nStatus: 2.0.0"], None,
     "no failed or delayed recipient"),
    (["Final-Recipient: rfc822; a@x.example\nAction: delayed\nStatus: 4.2.2",
      "Final-Recipient: rfc822; b@x.example\nAction: failed\nStatus: 5.2.1"], True, "delayed 4.2.2, failed 5.2.1"),
    (["Final-Recipient: rfc822; a@x.example\nAction: failed\nDiagnostic-Code: smtp; 550 5.1.1 no such user"],
     True, "failed"),
    (["Final-Recipient: rfc822; a@x.example\nAction: failed\nDiagnostic-Code: smtp; 452 4.2.2 mailbox full"],
     False, "failed"),
])
def test_dsn_actions_and_status(blocks, permanent, summary):
    got = classify(dsn_message(*blocks), ["bounce"], [None])
    assert got.kind == "bounce"
    assert got.permanent is permanent
    assert got.evidence == f"multipart/report; report-type=delivery-status ({summary})"


def test_delivered_blocks_name_no_recipient():
    got = classify(dsn_message("Final-Recipient: rfc822; ok@x.example\nAction: relayed\nStatus: 2.0.0",
                               "Final-Recipient: rfc822; No@X.example\nAction: failed\nStatus: 5.1.1"), [], [])
    assert got.recipients == ("no@x.example",)


def test_dsn_without_per_recipient_fields_falls_back_to_the_text():
    raw = (b"From: MAILER-DAEMON@mx.example.net\nSubject: Undeliverable\nMIME-Version: 1.0\n"
           b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
           b"--b\nContent-Type: text/plain\n\n550 5.1.1 user unknown\n--b--\n")
    got = classify(raw, [], [])
    assert (got.kind, got.permanent) == ("bounce", True)
    assert "no per-recipient fields" in got.evidence


def test_global_delivery_status_is_parsed_from_text():
    raw = dsn_message("Final-Recipient: utf-8; Zoë@Example.org\nAction: failed\nStatus: 5.1.1").replace(
        b"message/delivery-status", b"message/global-delivery-status")
    got = classify(raw, [], [])
    assert (got.kind, got.permanent, got.recipients) == ("bounce", True, ("zoë@example.org",))


@pytest.mark.parametrize("subject, body, permanent", [
    ("Mail delivery failed: returning message to sender", "452 4.2.2 mailbox full, retry timeout exceeded", False),
    ("Returned mail: see transcript for details", "... User unknown", True),
    ("Undeliverable: hello", "The recipient's mailbox does not exist.", True),
    ("Warning: message 1vLa2b-000X delayed 24 hours", "550 would not matter: it is a delay", False),
    ("failure notice", "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)", False),
])
def test_non_standard_bounce_permanence(subject, body, permanent):
    raw = f"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\nSubject: {subject}\n\n{body}\n".encode()
    got = classify(raw, ["unsubscribe"], [None])
    assert (got.kind, got.permanent) == ("bounce", permanent)


def test_null_return_path_marks_a_bounce():
    raw = (b"Return-Path: <>\nFrom: Mail System <noreply@mx.example.net>\n"
           b"Subject: Undelivered Mail Returned to Sender\n\n<a@x.example>: host said: 550 5.1.1 unknown\n")
    got = classify(raw, ["unsubscribe"], [None])
    assert (got.kind, got.permanent) == ("bounce", True)
    assert got.evidence.startswith("non-standard bounce: null Return-Path")


def test_bounce_subject_from_a_person_is_not_a_bounce():
    raw = b"From: Kim <kim@example.net>\nSubject: Undeliverable: your newsletter\n\nPlease stop.\n"
    assert classify(raw, ["unsubscribe"], [None]).kind == "unsubscribe"


def test_returned_copy_after_the_marker_does_not_make_a_bounce_permanent():
    raw = (b"From: MAILER-DAEMON@mx.example.net\nSubject: Mail delivery failed\n\n"
           b"Temporary failure, giving up after 5 days.\n\n"
           b"------ This is a copy of the message, including all the headers. ------\n\n"
           b"Subject: 550 reasons the user unknown does not exist\n\nbody\n")
    assert classify(raw, [], []).permanent is False


# --- auto-replies ----------------------------------------------------------------------------------

@pytest.mark.parametrize("header, evidence", [
    ("Auto-Submitted: auto-generated", "Auto-Submitted: auto-generated"),
    ("X-Autoreply: yes", "X-Autoreply: yes"),
    ("X-Autorespond: Out of office", "X-Autorespond: Out of office"),
    ("X-Auto-Response-Suppress: DR, RN, NRN, OOF", "X-Auto-Response-Suppress: DR, RN, NRN, OOF"),
    ("Precedence: bulk", "Precedence: bulk"),
    ("Precedence: auto_reply", "Precedence: auto_reply"),
    ("Precedence: junk", "Precedence: junk"),
    ("Precedence: list", "Precedence: list"),
    ("X-Autogenerated: Reply", "X-Autogenerated: Reply"),
    ("Subject: Out of Office: Your offers", "Subject: Out of Office: Your offers"),
    ("Subject: Automatic reply: Your offers", "Subject: Automatic reply"),
    ("Subject: Auto: Your offers", "Subject: Auto: Your offers"),
    ("Subject: Abwesenheitsnotiz: Ihre Angebote", "Subject: Abwesenheitsnotiz"),
    ("Subject: Absence du bureau", "Subject: Absence"),
    ("Subject: =?UTF-8?Q?R=C3=A9ponse_automatique=C2=A0:_Vos_offres?=", "Subject: Réponse automatique"),
    ("Subject: On vacation until Monday", "Subject: On vacation"),
    ("Subject: Autoreply: Your offers", "Subject: Autoreply"),
])
def test_auto_reply_markers(header, evidence):
    raw = f"From: someone@example.net\nTo: unsubscribe+x@websofttt.com\n{header}\n\nback soon\n".encode()
    got = classify(raw, ["unsubscribe"], ["ntz6a4lqi3ojgm7ysbtqf2ewa6xhk5cr3u"])
    assert got.kind == "auto_reply"
    assert got.evidence.startswith(evidence)


@pytest.mark.parametrize("header", ["Auto-Submitted: no", "Precedence: first-class", "Subject: Re: Your offers",
                                    "Subject: Re: automatic renewal"])
def test_not_auto_reply_markers(header):
    raw = f"From: someone@example.net\n{header}\n\nplease unsubscribe me\n".encode()
    assert classify(raw, ["unsubscribe"], [None]).kind == "unsubscribe"


def test_read_receipt_is_an_auto_reply():
    raw = (b"From: someone@example.net\nSubject: Read: Your offers\nMIME-Version: 1.0\n"
           b"Content-Type: multipart/report; report-type=disposition-notification; boundary=m\n\n"
           b"--m\nContent-Type: text/plain\n\nYour message was displayed.\n--m\n"
           b"Content-Type: message/disposition-notification\n\n"
           b"Final-Recipient: rfc822; someone@example.net\nDisposition: manual-action/MDN-sent-manually; displayed\n"
           b"--m--\n")
    got = classify(raw, ["unsubscribe"], [None])
    assert (got.kind, got.evidence) == ("auto_reply", "multipart/report; report-type=disposition-notification")


# --- ARF details -----------------------------------------------------------------------------------

def arf(parts: list[tuple[str, str]], outer: str = "multipart/report; report-type=feedback-report") -> bytes:
    body = "".join(f"--a\nContent-Type: {ctype}\n\n{text}\n" for ctype, text in parts)
    return (f"From: fbl@isp.example\nSubject: FW: offers\nMIME-Version: 1.0\nContent-Type: {outer}; boundary=a\n\n"
            f"{body}--a--\n").encode()


FEEDBACK = "Feedback-Type: {}\nUser-Agent: ISP-FBL/1.0\nVersion: 1\nOriginal-Rcpt-To: <Ann@X.example>"
ORIGINAL = "From: news@shop.example\nTo: ann@x.example\nSubject: offers\n\nbuy"


@pytest.mark.parametrize("parts, outer", [
    ([("message/rfc822", ORIGINAL), ("message/feedback-report", FEEDBACK), ("text/plain", "A complaint.")],
     "multipart/report; report-type=feedback-report"),                       # parts out of order
    ([("text/plain", "A complaint."), ("message/feedback-report", FEEDBACK), ("message/rfc822", ORIGINAL)],
     "multipart/mixed"),                                                     # no report-type
    ([("text/plain", "A complaint."), ("text/plain", FEEDBACK), ("message/rfc822", ORIGINAL)],
     "multipart/mixed"),                                                     # the report's fields as text/plain
])
@pytest.mark.parametrize("feedback_type", ["abuse", "auth-failure", "opt-out", "Virus", "dmarc"])
def test_arf_in_unusual_shapes(parts, outer, feedback_type):
    parts = [(c, t.format(feedback_type)) for c, t in parts]
    got = classify(arf(parts, outer), ["abuse"], [None])
    assert (got.kind, got.recipients) == ("complaint", ("ann@x.example",))
    assert got.evidence == f"feedback-report: Feedback-Type {feedback_type.lower()}"


def test_a_person_quoting_a_feedback_type_is_no_arf_report():
    raw = b"From: kim@example.net\nSubject: spam\n\nWhat does Feedback-Type: abuse mean? Stop mailing me.\n"
    assert classify(raw, ["abuse"], [None]).kind == "human_complaint"


def test_arf_feedback_type_in_evidence_and_rfc2231_report_type():
    raw = corpus("arf_headers_only.eml").replace(b"Feedback-Type: abuse", b"Feedback-Type: Fraud").replace(
        b'report-type="feedback-report"', b"report-type*=us-ascii''feedback-report")
    got = classify(raw, ["abuse"], [None])
    assert (got.kind, got.evidence) == ("complaint", "feedback-report: Feedback-Type fraud")


def test_arf_from_a_postmaster_to_the_bounce_address_is_a_complaint():
    raw = corpus("arf_headers_only.eml").replace(b"From: Mailbox.example Complaints <arf-noreply@",
                                                 b"From: Mailbox.example Complaints <postmaster@")
    got = classify(raw, ["bounce"], ["wefm75fbl5els2ns7ybd6rmyci4hkf6edy"])
    assert (got.kind, got.evidence) == ("complaint", "feedback-report: Feedback-Type abuse")


def test_arf_to_the_bounce_address_is_a_complaint():
    got = classify(corpus("arf_abuse_rfc822.eml"), ["bounce"], ["abcdefghijklmnopqrstuvwxyz234567ab"])
    assert (got.kind, got.tokens) == ("complaint", ("abcdefghijklmnopqrstuvwxyz234567ab",))


# --- role order --------------------------------------------------------------------------------------

@pytest.mark.parametrize("roles, kind", [
    (["abuse"], "human_complaint"), (["privacy"], "privacy_request"), (["postmaster"], "other"), ([], "other"),
    (["unsubscribe", "abuse"], "unsubscribe"), (["privacy", "abuse"], "human_complaint"),
])
def test_roles(roles, kind):
    assert classify(corpus("privacy_request.eml"), roles, [None] * len(roles)).kind == kind


# --- hostile input -----------------------------------------------------------------------------------

def well_formed(got: Classification) -> bool:
    return (isinstance(got, Classification) and got.kind in KINDS and not got.evidence.startswith("unclassifiable")
            and got.permanent in (None, True, False) and all(TOKEN_RE.fullmatch(t) for t in got.tokens)
            and all("@" in r for r in got.recipients) and "\n" not in got.evidence
            and bool(got.evidence.encode("utf-8")) and all(r.encode("utf-8") for r in got.recipients))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), st.lists(st.sampled_from(["unsubscribe", "bounce", "abuse", "privacy",
                                                             "postmaster"]), max_size=3))
def test_arbitrary_bytes_never_raise(raw, roles):
    assert well_formed(classify(raw, roles, [None] * len(roles)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(p.name for p in CORPUS.glob("*.eml"))), st.integers(0, 6000),
       st.integers(0, 400), st.binary(max_size=64))
def test_damaged_corpus_messages_never_raise(name, at, cut, noise):
    raw = corpus(name)
    damaged = raw[:at] + noise + raw[at + cut:]
    assert well_formed(classify(damaged, ["unsubscribe"], ["ntz6a4lqi3ojgm7ysbtqf2ewa6xhk5cr3u"]))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.text(max_size=60), st.one_of(st.none(), st.text(max_size=70)))
def test_arbitrary_header_values_and_role_tokens_never_raise(value, charset, token):
    raw = (f"From: MAILER-DAEMON@x\nSubject: =?{charset}?Q?{value}?= {value}\nAuto-Submitted: {value}\n"
           f"Content-Type: multipart/report; report-type={value}; boundary=b\n\n--b\n"
           f"Content-Type: message/delivery-status; charset={charset}\n\nFinal-Recipient: {value}\n"
           f"Action: {value}\nStatus: {value}\n--b\nContent-Type: text/plain; charset=\"{charset}\"\n"
           f"Content-Transfer-Encoding: base64\n\n{value}\n--b--\n").encode("utf-8", "surrogateescape")
    assert well_formed(classify(raw, ["unsubscribe", "bounce"], [token, token]))


@pytest.mark.parametrize("charset", ["x-no-such-charset", "idna", "rot13", "base64", "utf-7", "unknown-8bit"])
def test_bad_charsets(charset):
    raw = (f"From: MAILER-DAEMON@mx.example.net\nSubject: =?{charset}?B?/////w==?= failure notice\n"
           f"Content-Type: text/plain; charset={charset}\nContent-Transfer-Encoding: 8bit\n\n").encode() \
        + b"\xff\xfe\xc3(550 5.1.1 user unknown \x80\x81 xn--\xff.\n"
    got = classify(raw, [], [])
    assert (got.kind, got.permanent) == ("bounce", True)


def test_eight_bit_headers():
    raw = b"From: M\xfcller <m@example.de>\nSubject: Abwesenheitsnotiz \xe4\xf6\xfc\n\n\xff\n"
    got = classify(raw, ["unsubscribe"], [None])
    assert (got.kind, got.evidence) == ("auto_reply", "Subject: Abwesenheitsnotiz äöü")


def test_deeply_nested_multiparts_are_bounded():
    depth = 3000
    body = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth))
    raw = b"From: x@example.net\nAuto-Submitted: auto-replied\n" + body + b"Content-Type: text/plain\n\nhi\n"
    start = time.perf_counter()
    got = classify(raw, ["unsubscribe"], [None])
    assert time.perf_counter() - start < 2
    assert (got.kind, got.evidence) == ("auto_reply", "Auto-Submitted: auto-replied")


def test_nesting_that_would_make_the_parser_quadratic_is_not_parsed():
    depth = 900        # under the recursion limit, but the stdlib parser needs >1 s for it
    body = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth))
    raw = b"From: x@example.net\nSubject: hello\n" + body + b"Content-Type: text/plain\n\nhi\n"
    start = time.perf_counter()
    got = classify(raw, ["privacy"], [None])
    assert time.perf_counter() - start < 0.5
    assert got.kind == "privacy_request"


def test_deeply_nested_messages_fall_back_to_the_header():
    raw = b"From: x@example.net\nX-Autoreply: yes\n" + b"Content-Type: message/rfc822\n\n" * 5000 + b"Subject: y\n\nz\n"
    got = classify(raw, ["unsubscribe"], [None])
    assert (got.kind, got.evidence) == ("auto_reply", "X-Autoreply: yes")


@pytest.mark.parametrize("depth, tokens", [(15, ("ntz6a4lqi3ojgm7ysbtqf2ewa6xhk5cr3u",)), (30, ())])
def test_nesting_is_walked_to_a_bounded_depth(depth, tokens):
    body = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth))
    raw = (b"From: x@example.net\nSubject: complaint\n" + body + b"Content-Type: text/plain\n\n"
           b"List-Unsubscribe: <mailto:unsubscribe+ntz6a4lqi3ojgm7ysbtqf2ewa6xhk5cr3u@websofttt.com>\n"
           + b"".join(b"--b%d--\n" % i for i in reversed(range(depth))))
    assert classify(raw, ["abuse"], [None]).tokens == tokens


def test_huge_message_only_the_first_mebibyte_is_read():
    head = b"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\nSubject: Undelivered Mail Returned to Sender\n\n"
    filler = b"x" * 76 + b"\n"
    raw = head + filler * (MAX_BYTES // len(filler)) + b"550 5.1.1 user unknown\n" + filler * 60000
    start = time.perf_counter()
    got = classify(raw, ["bounce"], [None])
    assert time.perf_counter() - start < 2
    assert (got.kind, got.failures[0].status) == ("bounce", "")    # the 5.1.1 lies beyond the first MiB


def test_parts_beyond_the_first_mebibyte_are_not_read():
    pasted = b"List-Unsubscribe: <mailto:unsubscribe+ntz6a4lqi3ojgm7ysbtqf2ewa6xhk5cr3u@websofttt.com>\n"
    def message(filler: int) -> bytes:
        return (b"From: x@example.net\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
                b"--b\nContent-Type: text/plain\n\n" + b"z" * filler + b"\n--b\nContent-Type: text/plain\n\n"
                + pasted + b"--b--\n")
    assert classify(message(1000), ["abuse"], [None]).tokens == ("ntz6a4lqi3ojgm7ysbtqf2ewa6xhk5cr3u",)
    assert classify(message(MAX_BYTES), ["abuse"], [None]).tokens == ()


def test_helpers_on_odd_values():
    assert dsn.address("rfc822; <User@Example.COM>") == "user@example.com"
    assert dsn.address("rfc822; not an address") == ""
    assert dsn.parse_fields("A: 1\n continued\n\nB: 2\nnot a field\n") == [{"a": ["1 continued"]}, {"b": ["2"]}]
    assert dsn.status_class({"status": ["5.1.1.1"]}) is None          # an IP address is not a status


def test_inbound_never_imports_relay():
    code = ("import sys, inbound.classify, inbound.dsn; "
            "sys.exit(any(m == 'relay' or m.startswith('relay.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent).returncode == 0

"""Bounce classification over a corpus of formats (tests/data/bounces/, expected.toml): per-recipient
failures, enhanced status, permanence and reason; and the rules behind them."""
from __future__ import annotations

import dataclasses
import re
import time
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inbound import bounce_reason
from inbound.bounce_reason import REASONS, Failure
from inbound.classify import Classification, classify

DATA = Path(__file__).parent / "data" / "bounces"
EXPECTED = tomllib.loads((DATA / "expected.toml").read_text(encoding="utf-8"))
PERMANENT = {True: True, False: False, "none": None}


def run(name: str) -> Classification:
    spec = EXPECTED[name]
    roles = spec.get("roles", ["bounce"])
    return classify((DATA / name).read_bytes(), roles, [None] * len(roles))


def wrong(spec: dict, got: Classification) -> list[str]:
    """What the classification got wrong against its table entry (empty: all right)."""
    errors = []
    if got.kind != spec["kind"]:
        errors.append(f"kind {got.kind!r}, expected {spec['kind']!r}")
    if got.permanent is not PERMANENT[spec["permanent"]]:
        errors.append(f"permanent {got.permanent!r}, expected {spec['permanent']!r}")
    want = [(f["recipient"], f["status"], f["permanent"], f["reason"]) for f in spec["failures"]]
    have = [(f.recipient, f.status, f.permanent, f.reason) for f in got.failures]
    if [w[0] for w in want] != [h[0] for h in have]:
        errors.append(f"recipients {[h[0] for h in have]}, expected {[w[0] for w in want]}")
    elif have != want:
        errors.extend(f"{w[0] or '(none)'}: got {h[1:]}, expected {w[1:]}" for w, h in zip(want, have) if w != h)
    return errors


def test_every_sample_has_an_entry_and_every_entry_a_sample():
    assert sorted(EXPECTED) == sorted(p.name for p in DATA.glob("*.eml"))
    assert len(EXPECTED) >= 20


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample(name: str):
    spec, got = EXPECTED[name], run(name)
    assert wrong(spec, got) == [], spec["format"]
    for failure in got.failures:
        assert failure.reason in REASONS
        assert failure.recipient == failure.recipient.lower()
        assert len(failure.diagnostic) <= 300 and "\n" not in failure.diagnostic
    # Classification.permanent agrees with its failures
    if got.failures:
        assert got.permanent is any(f.permanent for f in got.failures)
    # the failed recipients are among the recipients
    assert {f.recipient for f in got.failures if f.recipient} <= set(got.recipients)


def test_accuracy(capsys):
    rows = [(name, EXPECTED[name]["format"], wrong(EXPECTED[name], run(name))) for name in sorted(EXPECTED)]
    right = sum(1 for *_, errors in rows if not errors)
    bounces = [r for r in rows if EXPECTED[r[0]]["kind"] == "bounce"]
    failures = sum(len(EXPECTED[name]["failures"]) for name, *_ in rows)
    with capsys.disabled():
        print(f"\nbounce corpus: {right}/{len(rows)} files right ({right / len(rows):.0%}): kind, recipients, "
              f"status, permanence and reason; {len(bounces)} bounces, {failures} expected failures")
        for name, fmt, errors in rows:
            print(f"  {'ok  ' if not errors else 'FAIL'} {name:36} {fmt[:70]}")
            for error in errors:
                print(f"       {error}")
    assert right == len(rows)


def test_the_scoring_notices_each_kind_of_mistake():
    got = run("exim_two_recipients.eml")
    spec = EXPECTED["exim_two_recipients.eml"]
    assert wrong(spec, got) == []
    assert wrong({**spec, "kind": "auto_reply"}, got)
    assert wrong({**spec, "permanent": False}, got)
    assert wrong({**spec, "failures": spec["failures"][:1]}, got)
    assert wrong({**spec, "failures": list(reversed(spec["failures"]))}, got)
    assert wrong({**spec, "failures": [{**spec["failures"][0], "reason": "policy"}, spec["failures"][1]]}, got)
    assert wrong({**spec, "failures": [{**spec["failures"][0], "status": "5.1.2"}, spec["failures"][1]]}, got)


# --- the API ----------------------------------------------------------------------------------------

def test_failure_and_classification_fields():
    assert [f.name for f in dataclasses.fields(Failure)] == ["recipient", "status", "permanent", "reason",
                                                              "diagnostic"]
    assert [f.name for f in dataclasses.fields(Classification)][-2:] == ["failures", "report"]
    assert Classification("other", "x", None, (), (), ()).failures == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        Failure("a@b.example", "5.1.1", True, "mailbox_unknown", "").permanent = False


def test_flufl_bounce_is_a_declared_dependency():
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert "flufl.bounce>=4.0" in pyproject["project"]["dependencies"]


# --- status, reason, permanence --------------------------------------------------------------------

@pytest.mark.parametrize("status, reason", [
    ("5.1.1", "mailbox_unknown"), ("5.1.0", "mailbox_unknown"), ("5.1.6", "mailbox_unknown"),
    ("5.1.2", "domain_unknown"), ("5.1.10", "domain_unknown"), ("5.4.4", "domain_unknown"),
    ("5.2.2", "mailbox_full"), ("4.2.2", "mailbox_full"), ("5.3.4", "message_too_large"),
    ("5.2.3", "message_too_large"), ("5.7.1", "policy"), ("5.7.26", "policy"), ("4.7.1", "policy"),
    ("5.4.1", "other"), ("4.4.7", "other"),
])
def test_reason_by_status(status, reason):
    assert bounce_reason.reason_of(status, "it failed") == reason


@pytest.mark.parametrize("text, reason", [
    ("550 Requested action not taken: User unknown", "mailbox_unknown"),
    ("550 No such user here", "mailbox_unknown"),
    ("The email account that you tried to reach does not exist", "mailbox_unknown"),
    ("552 Mailbox is over quota", "mailbox_full"), ("452 user quota exceeded", "mailbox_full"),
    ("552 mailbox full", "mailbox_full"),
    ("554 Message rejected as spam", "policy"), ("550 Blocked by Spamhaus", "policy"),
    ("550 IP is on a blacklist", "policy"), ("550 rejected by local policy", "policy"),
    ("550 DMARC check failed", "policy"), ("550 poor sender reputation", "policy"),
    ("552 Message too large", "message_too_large"), ("552 message size exceeds the limit", "message_too_large"),
    ("Host or domain name not found", "domain_unknown"), ("DNS said NXDOMAIN", "domain_unknown"),
    ("domain not found", "domain_unknown"), ("connection timed out", "other"), ("", "other"),
])
def test_reason_by_text(text, reason):
    assert bounce_reason.reason_of("", text) == reason
    assert bounce_reason.reason_of("5.0.0", text) == reason      # a generic status leaves it to the text


@pytest.mark.parametrize("status, text, reason", [
    ("5.1.0", "550 5.1.0 <bounce@x.example> sender rejected. AUP#CDRBL", "policy"),     # about the sender
    ("5.1.1", "550 5.1.1 203.0.113.2 has sent to too many recipients this hour", "policy"),
    ("5.7.13", "525 5.7.13 User account disabled", "other"),                          # X.7.13: no block
    ("5.4.1", "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", "mailbox_unknown"),
    ("5.1.10", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found", "mailbox_unknown"),  # Microsoft
    ("", "550 Your account has been disabled", "other"),
])
def test_reason_refinements(status, text, reason):
    assert bounce_reason.reason_of(status, text) == reason


@pytest.mark.parametrize("status, diagnostic, permanent", [
    ("5.1.1", "", True), ("5.7.1", "", True), ("5.2.2", "", False), ("4.2.2", "", False), ("4.7.1", "", False),
    ("5.0.0", "550 mailbox full", False),           # a full mailbox is soft whatever the class says
    ("", "550 sorry", True), ("", "451 try later", False), ("", "no code at all", True),
])
def test_permanence(status, diagnostic, permanent):
    assert bounce_reason.failure("a@x.example", status, diagnostic, True).permanent is permanent


@pytest.mark.parametrize("field, diagnostic, status", [
    ("5.0.0", "smtp; 550 5.1.1 user unknown", "5.1.1"),      # Courier: generic Status, specific reply
    ("5.1.1", "smtp; 550 5.7.1 blocked", "5.7.1"),           # the remote server's own code wins
    ("5.0.0", "smtp; 452 4.2.2 full", "5.0.0"),              # never across classes
    ("", "smtp; 550 5.1.10 RESOLVER", "5.1.10"), ("2.0.0", "", ""), ("", "192.168.5.1.1 x", ""),
    ("5.01.01", "", "5.1.1"), ("", "Lotus SMTP MTA v4.6.1 said no", ""),
])
def test_status(field, diagnostic, status):
    assert bounce_reason.status_of(field, diagnostic) == status


def test_diagnostic_is_one_line_without_the_repeated_reply_prefixes():
    text = "550-5.1.1 The account\n 550-5.1.1 does not exist. Try 550 5.1.1 https://x.example " + "x" * 400
    got = bounce_reason.one_line(text)
    assert got.startswith("550 5.1.1 The account does not exist. Try https://x.example")
    assert len(got) == 300


# --- DSN details -----------------------------------------------------------------------------------

def report(*blocks: str) -> bytes:
    return (("From: MAILER-DAEMON@mx.example.net\nSubject: Delivery Status Notification\nMIME-Version: 1.0\n"
             "Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\n"
             "Content-Type: text/plain\n\nreport\n--b\nContent-Type: message/delivery-status\n\n"
             "Reporting-MTA: dns; mx.example.net\n\n") + "\n\n".join(blocks) + "\n--b--\n").encode()


def test_delayed_delivered_and_relayed_recipients_are_no_failures():
    got = classify(report("Final-Recipient: rfc822; a@x.example\nAction: delayed\nStatus: 4.4.1",
                          "Final-Recipient: rfc822; b@x.example\nAction: delivered\nStatus: 2.0.0",
                          "Final-Recipient: rfc822; c@x.example\nAction: relayed\nStatus: 2.0.0"), ["bounce"], [None])
    assert (got.kind, got.permanent, got.failures) == ("bounce", False, ())


def test_one_failure_per_failed_recipient_original_recipient_first():
    got = classify(report("Final-Recipient: rfc822; a@mx.x.example\nOriginal-Recipient: rfc822; A@X.example\n"
                          "Action: failed\nStatus: 5.1.1",
                          "Final-Recipient: rfc822; b@x.example\nAction: failed\nStatus: 4.4.7\n"
                          "Diagnostic-Code: smtp; 421 4.4.7 expired"), ["bounce"], [None])
    assert [(f.recipient, f.status, f.permanent, f.reason) for f in got.failures] == [
        ("a@x.example", "5.1.1", True, "mailbox_unknown"), ("b@x.example", "4.4.7", False, "other")]
    assert got.failures[1].diagnostic == "421 4.4.7 expired"


def test_a_report_whose_boundary_is_lost_is_read_from_its_text():
    raw = report("Final-Recipient: rfc822; a@x.example\nAction: failed\nStatus: 5.1.1").replace(
        b"boundary=b", b"boundary=lost")
    got = classify(raw, ["bounce"], [None])
    assert [(f.recipient, f.status, f.reason) for f in got.failures] == [("a@x.example", "5.1.1", "mailbox_unknown")]


@pytest.mark.parametrize("line", ["a@x.example: 550 5.1.1 <a@x.example>: User unknown",          # OpenSMTPD
                                  "550 5.1.1 <a@x.example>... User unknown",                       # Sendmail
                                  "<a@x.example>:\n550 5.1.1 User unknown",                        # qmail
                                  '"a@x.example":\n550 5.1.1 User unknown'])                       # GMX
def test_lines_that_name_a_failed_recipient(line):
    raw = (f"From: MAILER-DAEMON@mx.example.net\nSubject: Mail delivery failed\n\nIt failed.\n\n{line}\n\n"
           f"Contact b@y.example or c@z.example.\n").encode()
    assert [(f.recipient, f.status) for f in classify(raw, ["bounce"], [None]).failures] == [("a@x.example", "5.1.1")]


def test_only_soft_failures_make_the_bounce_not_permanent():
    got = classify(report("Final-Recipient: rfc822; a@x.example\nAction: failed\nStatus: 5.2.2"), [], [])
    assert (got.permanent, [f.reason for f in got.failures]) == (False, ["mailbox_full"])


# --- non-standard bounces and flufl.bounce ----------------------------------------------------------

EXCHANGE_TWO = (DATA / "exchange2003_legacy.eml").read_bytes().replace(
    b"g.romano@oldcorp.example on Thu, 4 Dec 2025 16:05:11 +0100\n",
    b"g.romano@oldcorp.example on Thu, 4 Dec 2025 16:05:11 +0100\n"
    b"    The e-mail account does not exist at the organization this message was sent to.\n"
    b"    <exchange.oldcorp.example #5.1.1>\n\nl.conti@oldcorp.example on Thu, 4 Dec 2025 16:05:11 +0100\n", 1)


def test_recipients_that_only_flufl_bounce_finds(monkeypatch):
    # Exchange 2003's format has no line our own detectors read; with two recipients the explanation
    # names two addresses, so the one-address fallback does not apply either.
    got = classify(EXCHANGE_TWO, ["bounce"], [None])
    assert [(f.recipient, f.status, f.reason) for f in got.failures] == [
        ("g.romano@oldcorp.example", "5.1.1", "mailbox_unknown"),
        ("l.conti@oldcorp.example", "5.1.1", "mailbox_unknown")]
    monkeypatch.setattr(bounce_reason, "flufl_failures", lambda msg, raw: ([], []))
    got = classify(EXCHANGE_TWO, ["bounce"], [None])
    assert (got.kind, got.permanent, [f.recipient for f in got.failures]) == ("bounce", True, [""])


@pytest.mark.parametrize("name", ["domino_not_listed.eml", "exchange2003_legacy.eml"])
def test_the_one_address_an_explanation_names_is_the_recipient_without_flufl_bounce(monkeypatch, name):
    monkeypatch.setattr(bounce_reason, "flufl_failures", lambda msg, raw: ([], []))
    assert [f.recipient for f in run(name).failures] == [f["recipient"] for f in EXPECTED[name]["failures"]]


@pytest.mark.parametrize("named", ["news@shop.example.com", "postmaster@mx.example.net", "a@x.example b@y.example"])
def test_but_not_the_senders_a_mail_systems_or_one_of_several(named):
    raw = (f"From: MAILER-DAEMON@mx.example.net\nSubject: Undeliverable\n\nYour message could not be delivered"
           f" ({named}).\n\n--- Original message follows.\n\nFrom: Shop <news@shop.example.com>\n"
           f"To: a@x.example\nSubject: hello\n\nhi\n").encode()
    assert [f.recipient for f in classify(raw, ["bounce"], [None]).failures] == [""]
    raw = raw.replace(named.encode(), b"a@x.example", 1)
    assert [f.recipient for f in classify(raw, ["bounce"], [None]).failures] == ["a@x.example"]


def test_a_detector_that_raises_does_not_stop_classification(monkeypatch):
    import flufl.bounce

    def broken(msg):
        raise IndexError("detector failed")
    monkeypatch.setattr(flufl.bounce, "all_failures", broken)
    got = classify(EXCHANGE_TWO, ["bounce"], [None])
    assert (got.kind, got.permanent, [f.recipient for f in got.failures], got.failures[0].reason) == \
        ("bounce", True, [""], "mailbox_unknown")
    for name, recipient in [("exim_user_unknown.eml", "priya.n@example.co.uk"),      # X-Failed-Recipients
                            ("yahoo_no_account.eml", "gary_wheeler77@yahoo.com"),    # a <address>: line
                            ("domino_not_listed.eml", "jane.doe@example.com")]:      # the one address named
        assert [f.recipient for f in run(name).failures] == [recipient]


def test_a_failure_report_to_the_bounce_address_from_an_ordinary_sender():
    raw = (b"From: Mail System <noreply@mail.example.com>\nTo: bounce+x@bounces.websofttt.com\n"
           b"Subject: Your message could not be sent\n\nSorry, we were unable to deliver your message to "
           b"the following address.\n\n<zoe@example.com>:\n550 5.1.1 mailbox does not exist\n")
    got = classify(raw, ["bounce"], [None])
    assert [(f.recipient, f.status, f.permanent, f.reason) for f in got.failures] == [
        ("zoe@example.com", "5.1.1", True, "mailbox_unknown")]
    assert got.evidence.startswith("failure report to the bounce address")
    assert classify(raw, ["unsubscribe"], [None]).kind == "unsubscribe"     # elsewhere: no bounce


def test_a_delay_warning_has_no_failures():
    raw = (b"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\nX-Failed-Recipients: a@x.example\n"
           b"Subject: Warning: message 1vLa2b-000X delayed 24 hours\n\n  a@x.example\n    451 4.7.1 later\n")
    got = classify(raw, ["bounce"], [None])
    assert (got.kind, got.permanent, got.failures, got.recipients) == ("bounce", False, (), ("a@x.example",))


def test_the_bounce_address_itself_is_never_a_failed_recipient():
    raw = (b"From: MAILER-DAEMON@mx.example.net\nTo: bounce+abcdefgh@bounces.websofttt.com\n"
           b"X-Failed-Recipients: bounce+abcdefgh@bounces.websofttt.com, a@x.example\n"
           b"Subject: Mail delivery failed\n\n  a@x.example\n    550 5.1.1 unknown\n")
    assert [f.recipient for f in classify(raw, ["bounce"], [None]).failures] == ["a@x.example"]


def test_flufl_bounce_reads_only_the_start_of_a_big_bounce(monkeypatch):
    import flufl.bounce
    seen = []
    real = flufl.bounce.all_failures
    monkeypatch.setattr(flufl.bounce, "all_failures", lambda msg: seen.append(len(msg.as_bytes())) or real(msg))
    raw = (DATA / "domino_not_listed.eml").read_bytes().replace(
        b"The December issue is out.\n", b"The December issue is out.\n" + b"Read it online, or share it.\n" * 30000)
    start = time.perf_counter()
    got = classify(raw, ["bounce"], [None])
    assert time.perf_counter() - start < 2
    assert [f.recipient for f in got.failures] == ["jane.doe@example.com"]
    assert len(seen) == 1 and seen[0] <= bounce_reason.FLUFL_BYTES + 1024 < len(raw)


def test_many_recipients_on_long_lines_stay_fast():
    rcpts = [f"user{i}@example{i}.com" for i in range(150)]
    line = (" ".join(rcpts) + "\n\n").encode()
    raw = (b"From: MAILER-DAEMON@x.example\nSubject: Mail delivery failed\nX-Failed-Recipients: "
           + ", ".join(rcpts).encode() + b"\n\n" + line * 200 + b"x" * 300000)
    start = time.perf_counter()
    got = classify(raw, ["bounce"], [None])
    assert time.perf_counter() - start < 2
    assert len(got.failures) == bounce_reason.MAX_FAILURES


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(EXPECTED)), st.integers(0, 8000), st.integers(0, 600), st.binary(max_size=64))
def test_failures_of_damaged_samples_are_well_formed(name, at, cut, noise):
    raw = (DATA / name).read_bytes()
    got = classify(raw[:at] + noise + raw[at + cut:], ["bounce"], [None])
    for f in got.failures:
        assert f.reason in REASONS and isinstance(f.permanent, bool)
        assert f.recipient == f.recipient.lower() and (f.recipient == "" or "@" in f.recipient)
        assert re.fullmatch(r"|[45]\.\d{1,3}\.\d{1,3}", f.status)
        assert len(f.diagnostic) <= 300 and "\n" not in f.diagnostic and "\r" not in f.diagnostic
    if got.failures:
        assert got.permanent is any(f.permanent for f in got.failures)

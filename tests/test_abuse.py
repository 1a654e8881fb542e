"""The abuse desk end to end over real SMTP: a delivered copy wrapped in an ARF report becomes a complaint,
a suppression, a rate and a suspension; a person's complaint gets exactly one acknowledgement at the sink."""
from __future__ import annotations

import json
import re
import time
from email.message import EmailMessage
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email import message_from_bytes, policy as email_policy

import dkim
import pytest

from policy import cases, complaints, suppression, tenants
from policy.keys import dkim_public_value, load_private_key
from relay import delivery
from tests.conftest import run_cli
from tests.test_delivery import submit, wait_states
from tests.test_inbound import inbound, mailbox_rows

ROLES = ("submission", "delivery", "inbound")


@pytest.fixture
def relay(relay_factory, sink):
    relay = relay_factory(roles=ROLES, delivery={"routes": {"example.net": ("127.0.0.1", sink.port)},
                                                 "retry_schedule": (0.5,)},
                          policy={"complaint_min_volume": 2, "complaint_rate": 0.3})
    relay.add_tenant()
    return relay


def arf(copy: bytes, feedback_type: str = "abuse") -> bytes:
    """A mailbox provider's feedback report (RFC 5965) about `copy`, the recipient redacted."""
    report = MIMEMultipart("report", report_type="feedback-report")
    report["From"] = "feedback@fbl.example.com"
    report["To"] = "4abuse@websofttt.com"
    report["Subject"] = "FW: complaint"
    report["Message-ID"] = f"<fbl.{time.time()}@fbl.example.com>"
    report.attach(MIMEText("This is an email abuse report for an email message received.\r\n"))
    fields = MIMEBase("message", "feedback-report")
    fields.set_payload(f"Feedback-Type: {feedback_type}\r\nUser-Agent: ExampleFBL/1.0\r\nVersion: 1\r\n"
                       "Source-IP: 192.0.2.1\r\nArrival-Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n")
    report.attach(fields)
    returned = message_from_bytes(re.sub(rb"(?m)^To: .*$", b"To: redacted@example.net", copy))
    report.attach(MIMEMessage(returned))
    return report.as_bytes()


def send_inbound(relay, sender: str, rcpt: str, data: bytes) -> None:
    client = inbound(relay)
    client.sendmail(sender, [rcpt], data)
    client.quit()


def wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("condition never became true")


def test_arf_complaint_suppresses_counts_and_suspends(relay, sink):
    queue_id = submit(relay, ("a@example.net", "b@example.net"))
    wait_states(relay, queue_id, {"delivered"})
    copy = next(data for _, rcpts, data in sink.received if rcpts == ["a@example.net"])
    send_inbound(relay, "feedback@fbl.example.com", "4abuse@websofttt.com", arf(copy))
    [(kind, _, action, _)] = mailbox_rows(relay)
    assert kind == "complaint" and "tenant automatically suspended" in action, action
    [row] = complaints.entries(relay.store)
    assert (row["tenant"], row["recipient"], row["feedback_type"], row["identified_by"], row["counted"]) == \
        ("acme", "a@example.net", "abuse", "token", 1)
    assert (row["user_agent"], row["source_ip"]) == ("ExampleFBL/1.0", "192.0.2.1")
    assert suppression.find(relay.store, "acme", "a@example.net").cause == "complaint"
    assert suppression.find(relay.store, "acme", "b@example.net") is None
    tenant = tenants.get(relay.store, "acme")
    assert tenant.status == "suspended"
    assert "complaint rate 50.00% is over 30.00% (1 complaints for 2 deliveries" in tenant.reason
    assert relay.store.one("SELECT detail FROM events WHERE kind = 'suspended'")["detail"] == tenant.reason
    client = relay.connect()
    code, text = client.mail("app@example.com")
    assert code == 550 and text.startswith(b"5.7.1 Sending is suspended for tenant acme: automatically suspended")


def test_not_spam_and_duplicate_reports_do_not_count(relay, sink):
    queue_id = submit(relay, ("a@example.net", "b@example.net"))
    wait_states(relay, queue_id, {"delivered"})
    copy = next(data for _, rcpts, data in sink.received if rcpts == ["a@example.net"])
    send_inbound(relay, "feedback@fbl.example.com", "4abuse@websofttt.com", arf(copy, "not-spam"))
    mailbox_rows(relay)
    assert tenants.get(relay.store, "acme").active
    assert suppression.find(relay.store, "acme", "a@example.net") is None


def test_held_mail_of_a_suspended_tenant_is_kept_and_sent_after_resume(relay, sink, monkeypatch):
    monkeypatch.setattr(delivery, "HOLD_RECHECK", 0.3)
    sink.mode = "defer"
    queue_id = submit(relay, ("a@example.net",))
    wait_states(relay, queue_id, {"deferred"})
    tenants.suspend(relay.store, "acme", "complaints under review")
    sink.mode = "accept"
    time.sleep(2.0)                                   # several rounds of the loop: all held, none sent
    [(_, state, reply)] = wait_states(relay, queue_id, {"deferred"})
    assert sink.received == [] and reply == "451 4.7.1 Held: the tenant is suspended"
    tenants.resume(relay.store, "acme")
    wait_states(relay, queue_id, {"delivered"})
    assert [r for _, r, _ in sink.received] == [["a@example.net"]]


def human_complaint(message_id: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Jane <jane@example.net>"
    msg["To"] = "4abuse@websofttt.com"
    msg["Subject"] = "Spam from your service"
    msg["Message-ID"] = message_id
    msg.set_content("I never signed up for this. Please make it stop.\n")
    return msg.as_bytes(policy=email_policy.SMTP)


def test_a_reply_quoting_a_closed_case_reopens_it_and_opens_no_other(relay, sink):
    send_inbound(relay, "jane@example.net", "4abuse@websofttt.com", human_complaint("<c1@example.net>"))
    case_id = wait_for(lambda: relay.store.one("SELECT id FROM cases"))["id"]
    cases.close(relay.store, case_id, "tenant warned", "maria")
    reply = EmailMessage()
    reply["From"] = "Jane <jane@example.net>"
    reply["To"] = "4abuse@websofttt.com"
    reply["Subject"] = f"Re: Auto: [{case_id}] Spam from your service"
    reply.set_content("It happened again this morning.\n")
    send_inbound(relay, "jane@example.net", "4abuse@websofttt.com", reply.as_bytes(policy=email_policy.SMTP))
    wait_for(lambda: relay.store.one("SELECT status FROM cases WHERE id = ?", [case_id])["status"] == "open")
    assert [h["action"] for h in cases.history(relay.store, case_id)] == ["closed", "reopened by a reply"]
    assert len(relay.store.all("SELECT id FROM cases")) == 1
    assert "added to its history, the case reopened" in mailbox_rows(relay)[-1][2]
    assert relay.store.one("SELECT resolution FROM cases")["resolution"] == "tenant warned"     # history kept


def test_human_complaint_gets_exactly_one_acknowledgement(relay, sink):
    send_inbound(relay, "jane@example.net", "4abuse@websofttt.com", human_complaint("<c1@example.net>"))
    ack = wait_for(lambda: [(f, r, d) for f, r, d in sink.received if r == ["jane@example.net"]])
    [(mail_from, _, data)] = ack
    assert mail_from == "<>"                                   # RFC 3834 §3.3: null envelope sender
    case = relay.store.one("SELECT id, kind, complainant, acknowledged FROM cases")
    assert (case["kind"], case["complainant"], case["acknowledged"]) == ("abuse", "jane@example.net", 1)
    msg = message_from_bytes(data)
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<c1@example.net>" and msg["From"].endswith("<4abuse@websofttt.com>")
    assert case["id"] in msg["Subject"] and case["id"].encode() in data
    assert msg["List-Unsubscribe"] is None and msg["X-WebSoftTT-Tenant"] is None
    public = dkim_public_value(load_private_key(relay.settings.dkim_key)).encode()
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5: b"v=DKIM1; k=rsa; p=" + public)
    send_inbound(relay, "jane@example.net", "4abuse@websofttt.com", human_complaint("<c2@example.net>"))
    rows = mailbox_rows(relay)
    assert len(rows) == 2 and "not acknowledged: already acknowledged" in rows[1][2]
    time.sleep(1.5)                                            # the outbox is read every second
    assert len([r for _, r, _ in sink.received if r == ["jane@example.net"]]) == 1
    assert len(relay.store.all("SELECT id FROM cases")) == 2


def test_inbound_classify_names_the_tenant_of_a_complaint_without_acting(relay, sink, tmp_path):
    queue_id = submit(relay, ("a@example.net",))
    wait_states(relay, queue_id, {"delivered"})
    eml = tmp_path / "report.eml"
    eml.write_bytes(arf(sink.received[-1][2]))
    config = tmp_path / "websofttt.toml"
    config.write_text(f'[paths]\ndata_dir = "{relay.settings.data_dir}"\n')
    out = run_cli("inbound", "classify", str(eml), "--json", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    assert (row["kind"], row["tenant"], row["evidence"]) == ("complaint", "acme", "feedback-report: Feedback-Type abuse")
    assert complaints.entries(relay.store) == [] and tenants.get(relay.store, "acme").active

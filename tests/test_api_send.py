"""POST /v1/messages on a running worker (submission, delivery and http roles), over loopback HTTP, delivered to a
real next hop: the same policy as SMTP, the same signed copies, and an Idempotency-Key that queues nothing twice."""
from __future__ import annotations

import base64
import time
from email import message_from_bytes

import dkim
import pytest

from policy import apikeys, suppression, tenants
from policy.keys import dkim_public_value, load_private_key
from tests.conftest import message
from tests.test_abuse import wait_for
from tests.test_api import call

STRUCTURED = {"from": "App <app@example.com>", "to": ["jane@example.net"], "cc": "joe@example.net",
              "bcc": ["hidden@example.net"], "reply_to": "support@example.com", "subject": "Your receipt",
              "text": "Thank you for your order.", "html": "<p>Thank you for your <b>order</b>.</p>",
              "headers": {"X-Order": "1234"},
              "attachments": [{"filename": "receipt.txt", "content_type": "text/plain",
                               "content": base64.b64encode(b"order 1234: 2 items").decode()}]}


@pytest.fixture
def sender(relay_factory, sink):
    relay = relay_factory(roles=("submission", "delivery", "http"),
                          delivery={"routes": {"example.net": ("127.0.0.1", sink.port)}},
                          max_message_size=100_000)
    relay.add_tenant()
    relay.keys = {"crm": apikeys.add(relay.store, "acme", "crm", "write")[1],
                  "ro": apikeys.add(relay.store, "acme", "ro", "read")[1]}
    relay.http_port = relay.ports["http"][0]
    relay.sink = sink
    return relay


def copies(relay, count: int) -> dict[str, bytes]:
    received = wait_for(lambda: len(relay.sink.received) >= count and relay.sink.received)
    time.sleep(0.3)                                  # nothing more arrives
    assert len(relay.sink.received) == count
    return {rcpt: data for _, rcpts, data in received for rcpt in rcpts}


def test_a_structured_message_is_built_queued_and_delivered_signed_like_smtp_mail(sender):
    status, answer, _ = call(sender, "POST", "/messages", body=STRUCTURED)
    assert status == 202 and answer["queue_id"].endswith(".test")
    assert [(r["address"], r["status"]) for r in answer["recipients"]] == [
        ("jane@example.net", "queued"), ("joe@example.net", "queued"), ("hidden@example.net", "queued")]
    delivered = copies(sender, 3)
    msg = message_from_bytes(delivered["jane@example.net"])
    assert (msg["Subject"], msg["Cc"], msg["Bcc"], msg["X-Order"]) == ("Your receipt", "joe@example.net", None, "1234")
    assert "with HTTP id " + answer["queue_id"] in msg["Received"] and "API key crm" in msg["Received"]
    parts = {p.get_content_type(): p for p in msg.walk()}
    assert "order</b>" in parts["text/html"].get_payload(decode=True).decode()
    attachment = next(p for p in msg.walk() if p.get_filename() == "receipt.txt")
    assert attachment.get_payload(decode=True) == b"order 1234: 2 items"
    public = dkim_public_value(load_private_key(sender.settings.dkim_key)).encode()
    assert dkim.verify(delivered["hidden@example.net"], dnsfunc=lambda name, timeout=5: b"v=DKIM1; k=rsa; p=" + public)


def test_a_raw_message_keeps_its_bytes(sender):
    raw = message(subject="raw over http")
    status, answer, _ = call(sender, "POST", "/messages", body={
        "envelope": {"from": "app@example.com", "to": ["jane@example.net"]}, "raw": base64.b64encode(raw).decode()})
    assert status == 202
    assert copies(sender, 1)["jane@example.net"].endswith(raw.split(b"\r\n\r\n", 1)[1])


def test_the_smtp_policy_decides_with_http_statuses(sender):
    suppression.add(sender.store, "gone@example.net", "acme", suppression.Cause.UNSUBSCRIBE)
    status, answer, _ = call(sender, "POST", "/messages", body={**STRUCTURED, "to": ["gone@example.net", "jane@example.net"],
                                                                "cc": [], "bcc": []})
    assert status == 202 and [(r["address"], r["status"], r["reply"][:9]) for r in answer["recipients"]] == [
        ("gone@example.net", "refused", "550 5.7.1"), ("jane@example.net", "queued", "250 2.1.5")]
    status, answer, _ = call(sender, "POST", "/messages", body={**STRUCTURED, "to": "gone@example.net", "cc": [], "bcc": []})
    assert (status, answer["error"]["code"]) == (422, "no_recipient") and "550 5.7.1" in answer["error"]["message"]
    status, answer, _ = call(sender, "POST", "/messages", body={**STRUCTURED, "from": "App <app@elsewhere.example>"})
    assert status == 422 and answer["error"]["message"].startswith("5")                  # the header policy's reply
    status, answer, _ = call(sender, "POST", "/messages", body={**STRUCTURED, "text": "x" * 200_000})
    assert (status, answer["error"]["code"]) == (413, "too_large")
    assert call(sender, "POST", "/messages", key="ro", body=STRUCTURED)[0] == 403
    tenants.suspend(sender.store, "acme", "complaints under review")
    assert call(sender, "POST", "/messages", body=STRUCTURED)[0] == 403              # the key's check, before the intake
    tenants.resume(sender.store, "acme")
    sent = 3                             # the sends that reached MAIL's decision above count, as MAIL commands do
    tenants.change(sender.store, "acme", tenants.Change(rate=f"{sent + 1}/1h"))
    assert call(sender, "POST", "/messages", body=STRUCTURED)[0] == 202
    status, answer, headers = call(sender, "POST", "/messages", body=STRUCTURED)
    assert (status, headers["Retry-After"]) == (429, "60") and answer["error"]["message"].startswith("451 4.7.1")


def test_an_idempotency_key_answers_a_retry_with_the_first_answer_and_queues_nothing_twice(sender):
    first = call(sender, "POST", "/messages", body=STRUCTURED, headers={"Idempotency-Key": "order-1234"})
    again = call(sender, "POST", "/messages", body=STRUCTURED, headers={"Idempotency-Key": "order-1234"})
    assert first[0] == again[0] == 202 and first[1] == again[1] and again[2].get("Idempotent-Replayed") == "true"
    other = call(sender, "POST", "/messages", body=STRUCTURED, headers={"Idempotency-Key": "order-1235"})
    assert other[1]["queue_id"] != first[1]["queue_id"]
    copies(sender, 6)                                         # 3 recipients, twice: not three times
    refused = call(sender, "POST", "/messages", body={**STRUCTURED, "to": "bad@", "cc": [], "bcc": []},
                   headers={"Idempotency-Key": "order-9"})
    assert refused[0] == 422                                  # a refusal is not kept: the retry is decided afresh
    assert call(sender, "POST", "/messages", body=STRUCTURED, headers={"Idempotency-Key": "order-9"})[0] == 202


@pytest.mark.parametrize("body, raw, status, code", [
    (None, b"[1, 2]", 400, "bad_json"),
    ({"envelope": {"from": "app@example.com", "to": ["jane@example.net"]}, "raw": "not base64!"}, None, 400, "bad_raw"),
    ({"raw": "aGk="}, None, 422, "bad_envelope"),
    ({**STRUCTURED, "headers": {"Bcc": "spy@example.net"}}, None, 422, "bad_header"),
    ({**STRUCTURED, "headers": {"X-Evil": "a\r\nBcc: spy@example.net"}}, None, 422, "bad_header"),
    ({**STRUCTURED, "text": None, "html": None}, None, 422, "no_content"),
    ({"to": "jane@example.net", "text": "hi"}, None, 422, "bad_from"),
])
def test_malformed_sends_are_named(sender, body, raw, status, code):
    got, answer, _ = call(sender, "POST", "/messages", body=body, raw=raw)
    assert (got, answer["error"]["code"]) == (status, code)

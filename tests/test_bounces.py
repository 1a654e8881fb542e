"""The bounce rules, with a real store: hard, soft (counted, then a tenant suppression that expires), policy."""
from __future__ import annotations

import dataclasses

import pytest

from policy import bounces, suppression
from policy.settings import Policy

RULES = dataclasses.replace(Policy(), soft_bounce_limit=3)


@pytest.fixture
def store(any_store):
    return any_store


@pytest.mark.parametrize("status,permanent,reason,expected", [
    ("5.1.1", True, "", "hard"), ("5.1.10", True, "", "hard"), ("5.1.2", True, "", "hard"),
    ("", True, "mailbox_unknown", "hard"), ("5.4.4", True, "domain_unknown", "hard"),
    ("5.2.2", True, "", "soft"), ("4.2.2", False, "", "soft"), ("4.4.1", False, "", "soft"),
    ("5.7.1", True, "", "policy"), ("4.7.1", False, "", "policy"), ("5.7.26", True, "policy", "policy"),
    ("5.1.7", True, "", "other"), ("5.3.4", True, "message_too_large", "other"),
    ("5.7.0", False, "mailbox_full", "soft"),           # the words beat the status: "maildir over quota"
    ("5.1.1", False, "mailbox_unknown", "soft"),        # "550 5.1.1 Mailbox temporarily unavailable"
])
def test_classes(status, permanent, reason, expected):
    assert bounces.bounce_class(status, permanent, reason) == expected


def test_hard_bounce_suppresses_globally_and_is_recorded(store):
    assert bounces.record(store, RULES, "acme", "Gone@Example.net", "5.1.1", True, "", "dsn 1") == \
        "hard bounce: suppressed globally"
    entry = suppression.find(store, "anyone", "gone@example.net")
    assert (entry.scope, entry.cause, entry.source) == ("global", "hard_bounce", "dsn 1")
    assert store.all("SELECT tenant, recipient, status, class FROM bounces") == [
        {"tenant": "acme", "recipient": "gone@example.net", "status": "5.1.1", "class": "hard"}]


def test_soft_bounces_suppress_for_the_tenant_after_the_limit_and_expire(store):
    for n in (1, 2):
        assert bounces.record(store, RULES, "acme", "full@example.net", "4.2.2", False, "", "d") == \
            f"soft bounce {n} of 3"
        assert suppression.find(store, "acme", "full@example.net") is None
    action = bounces.record(store, RULES, "acme", "full@example.net", "5.2.2", True, "", "d")
    assert action.startswith("soft bounce 3 of 3: suppressed for tenant acme until ")
    entry = suppression.find(store, "acme", "full@example.net")
    assert entry.cause == "soft_bounce" and entry.expires is not None
    assert suppression.find(store, "other", "full@example.net") is None          # tenant scope only
    store.execute("UPDATE suppressions SET expires = '2000-01-01T00:00:00Z'")
    assert suppression.find(store, "acme", "full@example.net") is None          # and it expires


def test_a_delivery_in_between_restarts_the_count(store):
    for _ in range(2):
        bounces.record(store, RULES, "acme", "x@example.net", "4.2.2", False, "", "d")
    bounces.delivered(store, "acme", "x@example.net")
    assert bounces.record(store, RULES, "acme", "x@example.net", "4.2.2", False, "", "d") == "soft bounce 1 of 3"


def test_policy_blocks_are_not_the_recipients_fault(store):
    assert bounces.record(store, RULES, "acme", "y@example.net", "5.7.1", True, "", "d").startswith(
        "policy failure: recorded against tenant acme")
    assert suppression.find(store, "acme", "y@example.net") is None

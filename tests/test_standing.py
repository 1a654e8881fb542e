"""Complaint and bounce rates per tenant, and the automatic suspension they trigger (policy/standing)."""
from __future__ import annotations

import dataclasses
import time

import pytest

from policy import bounces, complaints, standing, tenants
from policy.settings import Policy
from policy.store import Store

RULES = Policy(complaint_rate=0.01, complaint_min_volume=100, bounce_rate=0.10)


@pytest.fixture
def store(any_store):
    tenants.add(any_store, "acme", [], [], None)
    tenants.add(any_store, "other", [], [], None)
    return any_store


def deliver(store: Store, tenant: str, n: int, outcome: str = "delivered") -> None:
    for _ in range(n):
        standing.note(store, tenant, outcome)


def complain(store: Store, tenant: str, n: int, by: str = "token", rules: Policy = RULES) -> list[str]:
    return [complaints.record(store, rules, tenant, f"r{i}@example.net", "abuse", by, None, "test")[1]
            for i in range(n)]


def test_rates_over_the_window(store):
    deliver(store, "acme", 200)
    deliver(store, "acme", 50, "failed")
    complain(store, "acme", 1)
    for i in range(5):
        bounces.record(store, RULES, "acme", f"gone{i}@example.net", "5.1.1", True, "mailbox_unknown", "test")
    s = standing.standing(store, RULES, "acme")
    assert (s.delivered, s.failed, s.complaints, s.hard_bounces) == (200, 50, 1, 5)
    assert s.complaint_rate == pytest.approx(0.005) and s.bounce_rate == pytest.approx(0.02)
    assert standing.standing(store, RULES, "other").as_json()["delivered"] == 0      # per tenant
    assert tenants.get(store, "acme").active


def test_complaints_over_the_rate_suspend_with_the_figures(store):
    deliver(store, "acme", 100)
    done = complain(store, "acme", 2)
    assert "suspended" not in done[0]
    assert "tenant automatically suspended: complaint rate 2.00% is over 1.00% (2 complaints for 100 deliveries" in done[1]
    assert tenants.get(store, "acme").status == "suspended"
    assert tenants.get(store, "other").active


def test_below_the_minimum_volume_nothing_is_suspended(store):
    deliver(store, "acme", 99)
    complain(store, "acme", 50)
    assert tenants.get(store, "acme").active


def test_unverified_complaints_never_suspend(store):
    deliver(store, "acme", 100)
    complain(store, "acme", 10, by="header")
    complain(store, "acme", 10, by="recipient")
    assert tenants.get(store, "acme").active
    assert standing.standing(store, RULES, "acme").complaints == 0


def test_hard_bounces_over_the_rate_suspend(store):
    deliver(store, "acme", 90)
    deliver(store, "acme", 10, "failed")
    results = [bounces.record(store, RULES, "acme", f"gone{i}@example.net", "5.1.1", True, "mailbox_unknown", "t")
               for i in range(11)]
    assert "suspended" not in results[9]
    assert "tenant automatically suspended: hard bounce rate 11.00% is over 10.00%" in results[10]


def test_resume_gives_a_fresh_start(store):
    deliver(store, "acme", 100)
    complain(store, "acme", 2)
    tenants.resume(store, "acme")
    time.sleep(1.1)                        # timestamps are in seconds: what follows is after the resume
    deliver(store, "acme", 100)
    done = complain(store, "acme", 1, rules=dataclasses.replace(RULES, complaint_min_volume=50))
    assert "suspended" not in done[0] and tenants.get(store, "acme").active
    assert standing.standing(store, RULES, "acme").complaints == 1


def test_only_outcomes_are_counted(store):
    with pytest.raises(ValueError):
        standing.note(store, "acme", "complaints; DROP TABLE tenants")

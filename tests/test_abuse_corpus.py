"""The abuse and privacy desk over a corpus of complaints (tests/data/complaints/, expected.toml): what each
sample is, how our copy is identified, and what it leaves in the store (complaint, suppression, case,
acknowledgement in the outbox)."""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from inbound.abuse import identify
from inbound.actions import Actions
from inbound.addresses import Role
from inbound.classify import classify
from policy import complaints, outbox, sent, suppression, tenants
from policy.store import Store
from policy.store_sqlite import SqliteStore
from policy.tokens import TokenKeys
from tests.conftest import make_settings, prepare

DATA = Path(__file__).parent / "data" / "complaints"
EXPECTED = tomllib.loads((DATA / "expected.toml").read_text(encoding="utf-8"))
RECIPIENT, MESSAGE_ID = "jane@example.net", "<20261125.7f3a@shop.example>"
ROLE = {"abuse": Role("abuse", None, "4abuse@websofttt.com"), "privacy": Role("privacy", None, "4privacy@websofttt.com")}


@dataclasses.dataclass
class Desk:
    store: Store
    actions: Actions
    keys: TokenKeys
    token: str

    def fill(self, text: str) -> str:
        return (text.replace("%%TOKEN%%", self.token).replace("%%TENANT%%", "acme")
                .replace("%%MESSAGE_ID%%", MESSAGE_ID).replace("%%RECIPIENT%%", RECIPIENT))

    def sample(self, name: str) -> tuple[dict, bytes]:
        spec = {k: self.fill(v) if isinstance(v, str) else v for k, v in EXPECTED[name].items()}
        return spec, self.fill((DATA / name).read_text(encoding="utf-8")).replace("\n", "\r\n").encode()


@pytest.fixture
def desk(tmp_path) -> Desk:
    settings = make_settings(tmp_path / "var")
    prepare(settings)
    store = SqliteStore(settings.store_path)
    tenants.add(store, "acme", [], [], None)
    tenants.add(store, "other", [], [], None)
    keys = TokenKeys.load(store, None)
    token = keys.issue()
    sent.record(store, token, "acme", RECIPIENT, MESSAGE_ID, "q1.test", 86400)
    sent.record(store, keys.issue(), "other", "someone@example.org", "<other@example.org>", "q2.test", 86400)
    yield Desk(store, Actions(store, keys, settings), keys, token)
    store.close()


def test_every_sample_has_an_entry_and_every_entry_a_sample():
    assert sorted(EXPECTED) == sorted(p.name for p in DATA.glob("*.eml"))
    assert len(EXPECTED) >= 25


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_is_classified_and_identified(desk: Desk, name: str):
    spec, raw = desk.sample(name)
    role = ROLE[spec["to"]]
    found = classify(raw, [role.kind], [None])
    assert found.kind == spec["kind"], spec["format"]
    if found.kind == "auto_reply":
        return
    assert found.report is not None
    assert found.report.feedback_type == spec["feedback_type"]
    assert (RECIPIENT in found.report.recipients) is spec["recipient_given"]
    complainant = spec["complainant"] if found.kind != "complaint" else ""
    who = identify(desk.store, desk.keys, found, complainant) if found.kind != "privacy_request" else None
    if found.kind != "privacy_request":
        assert (who.by if who else "none") == spec["identified_by"]
        assert who is None or who.tenant == "acme"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_leaves_the_right_records(desk: Desk, name: str):
    spec, raw = desk.sample(name)
    role = ROLE[spec["to"]]
    found = classify(raw, [role.kind], [None])
    action = desk.actions.act("in1", raw, spec["mail_from"], [role], found)
    rows = complaints.entries(desk.store)
    entry = suppression.find(desk.store, "acme", RECIPIENT)
    cases = desk.store.all("SELECT * FROM cases")
    queued = desk.store.all("SELECT recipient, raw FROM outbox")
    acting = spec["identified_by"] != "none" and spec["kind"] in ("complaint", "human_complaint")
    assert len(rows) == (1 if acting else 0), action
    if acting:
        assert rows[0]["tenant"] == "acme" and rows[0]["source"] == "inbound in1"
        assert rows[0]["feedback_type"] == (spec["feedback_type"] or "abuse")
        assert rows[0]["counted"] == int(spec["identified_by"] in ("token", "message_id")
                                         and rows[0]["feedback_type"] != "not-spam")
    suppressed = acting and spec["feedback_type"] != "not-spam" and spec["identified_by"] in (
        "token", "message_id", "recipient")
    assert (entry is not None and entry.cause == "complaint") is suppressed, action
    assert suppression.find(desk.store, "other", "someone@example.org") is None      # never another tenant's
    expects_case = spec["kind"] in ("human_complaint", "privacy_request")
    assert len(cases) == int(expects_case), action
    if expects_case:
        assert cases[0]["kind"] == ("abuse" if spec["kind"] == "human_complaint" else "privacy")
        assert cases[0]["complainant"] == spec["complainant"] and cases[0]["inbound_id"] == "in1"
        assert cases[0]["acknowledged"] == int(spec["ack"])
    assert len(queued) == int(spec["ack"]), action
    if spec["ack"]:
        ack = bytes(queued[0]["raw"])
        assert queued[0]["recipient"] == spec["mail_from"].lower()
        assert cases[0]["id"].encode() in ack and b"Auto-Submitted: auto-replied" in ack
        assert b"acme" not in ack and RECIPIENT.encode() not in ack.split(b"\r\n\r\n", 1)[1]


def test_a_second_report_about_the_same_copy_is_not_counted_twice(desk: Desk):
    spec, raw = desk.sample("rfc5965_example_abuse.eml")
    found = classify(raw, ["abuse"], [None])
    desk.actions.act("in1", raw, spec["mail_from"], [ROLE["abuse"]], found)
    again = desk.actions.act("in2", raw, spec["mail_from"], [ROLE["abuse"]], found)
    assert "already recorded" in again
    assert len(complaints.entries(desk.store)) == 1


def test_a_forged_token_neither_counts_nor_suppresses(desk: Desk):
    spec, raw = desk.sample("yahoo_style_redacted.eml")
    forged = desk.token[:-4] + ("aaaa" if not desk.token.endswith("aaaa") else "bbbb")
    raw = raw.replace(desk.token.encode(), forged.encode()).replace(MESSAGE_ID.encode(), b"<unrelated@example.com>")
    found = classify(raw, ["abuse"], [None])
    assert forged in found.tokens
    assert identify(desk.store, desk.keys, found).by == "header"      # X-WebSoftTT-Tenant: anyone can write it
    desk.actions.act("in1", raw, spec["mail_from"], [ROLE["abuse"]], found)
    assert [r["counted"] for r in complaints.entries(desk.store)] == [0]
    assert suppression.find(desk.store, "acme", RECIPIENT) is None


def test_acknowledgements_are_limited_per_complainant(desk: Desk):
    spec, raw = desk.sample("human_no_evidence.eml")
    found = classify(raw, ["abuse"], [None])
    first = desk.actions.act("in1", raw, spec["mail_from"], [ROLE["abuse"]], found)
    second = desk.actions.act("in2", raw, spec["mail_from"], [ROLE["abuse"]], found)
    assert "acknowledgement queued" in first
    assert "not acknowledged: already acknowledged within policy.ack_interval" in second
    assert len(desk.store.all("SELECT id FROM outbox")) == 1
    assert "was opened for this message before a restart" in desk.actions.act("in2", raw, spec["mail_from"],
                                                                               [ROLE["abuse"]], found)
    assert len(desk.store.all("SELECT id FROM cases")) == 2
    assert [o.recipient for o in outbox.claim(desk.store)] == [spec["mail_from"].lower()]
    assert outbox.claim(desk.store) == []          # claimed: nobody else takes it within the lease

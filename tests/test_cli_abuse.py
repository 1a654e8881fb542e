"""`complaint list`, `case list|show` and the standing in `tenant show`, as an operator sees them."""
from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from policy import cases, complaints, standing
from policy.settings import Policy
from policy.store_sqlite import SqliteStore
from tests.test_cli import ISO_UTC, acme, config, fails, ok, ok_json, rows  # noqa: F401  (fixtures)


@pytest.fixture
def desk(tmp_path: Path, acme, ok) -> str:
    """acme with 4 deliveries, one counted complaint and one header-only one; `other` with one; a case."""
    ok("tenant", "add", "other")
    with closing(SqliteStore(tmp_path / "var" / "websofttt.sqlite")) as store:
        for _ in range(4):
            standing.note(store, "acme", "delivered")
        case_id = cases.open_case(store, "abuse", "jane@example.net", "Spam from your service",
                                  "addressed to abuse; identified by token", "in1", "acme", "jane@example.net")
        complaints.record(store, Policy(), "acme", "jane@example.net", "abuse", "token", "t1", "inbound in1", case_id)
        complaints.record(store, Policy(), "acme", None, "abuse", "header", None, "inbound in2")
        complaints.record(store, Policy(), "other", "bob@example.org", "fraud", "token", "t2", "inbound in3")
    return case_id


def test_complaint_list_needs_a_reason_and_is_audited(desk, ok_json, fails, rows):
    out, err = fails("complaint", "list", "--json")
    assert "--reason" in err and "jane@example.net" not in out + err
    assert rows("SELECT * FROM audit") == []
    listed = ok_json("complaint", "list", "--tenant", "acme", "--reason", "review of acme")
    assert [(c["tenant"], c["recipient"], c["feedback_type"], c["counted"], c["case"]) for c in listed] == [
        ("acme", None, "abuse", 0, None), ("acme", "jane@example.net", "abuse", 1, desk)]
    assert all(ISO_UTC.match(c["received"]) for c in listed)
    assert len(ok_json("complaint", "list", "--reason", "all of them")) == 3
    assert [(a["command"], a["shown"], a["reason"]) for a in rows("SELECT * FROM audit")] == [
        ("complaint list", "tenant=acme", "review of acme"), ("complaint list", "tenant=all", "all of them")]


def test_case_list_shows_no_addresses_and_case_show_is_audited(desk, ok, ok_json, fails, rows):
    listed = ok("case", "list")
    assert desk in listed and "jane" not in listed and "Spam from" not in listed
    assert [c["id"] for c in ok_json("case", "list", "--kind", "abuse")] == [desk]
    assert ok_json("case", "list", "--kind", "privacy") == []
    fails("case", "show", desk)
    shown = ok_json("case", "show", desk.lower(), "--reason", "answering the complainant")
    assert (shown["complainant"], shown["subject"], shown["tenant"]) == ("jane@example.net", "Spam from your service",
                                                                        "acme")
    assert rows("SELECT command, shown FROM audit") == [{"command": "case show", "shown": desk.lower()}]
    out, err = fails("case", "show", "A-19990101-NOPE00", "--reason", "x")
    assert "A-19990101-NOPE00" in err


def test_tenant_show_includes_the_rates(desk, ok, ok_json):
    s = ok_json("tenant", "show", "acme")["standing"]
    assert (s["delivered"], s["complaints"], s["complaint_rate"], s["complaint_limit"]) == (4, 1, 0.25, 0.003)
    assert "complaint rate 25.00% (1 for 4 deliveries, limit 0.30%)" in ok("tenant", "show", "acme")


def test_a_case_is_worked_to_its_end_with_every_change_audited(desk, ok, ok_json, fails, rows):
    assert [c["id"] for c in ok_json("case", "list", "--open", "--older-than", "0s")] == [desk]
    assert ok_json("case", "list", "--open", "--older-than", "24h") == []          # opened just now: not overdue
    assert "assigned to maria (status open)" in ok("case", "assign", desk, "maria")
    ok("case", "note", desk, "asked acme for the opt-in records")
    assert "closed: acme removed the address (status closed)" in ok("case", "close", desk, "--resolution",
                                                                     "acme removed the address")
    out, err = fails("case", "close", desk, "--resolution", "again")
    assert "already closed" in err
    assert ok_json("case", "list", "--open") == []
    [listed] = ok_json("case", "list")
    assert (listed["status"], listed["assignee"], listed["acknowledged"]) == ("closed", "maria", 0)
    shown = ok_json("case", "show", desk, "--reason", "review")
    assert shown["resolution"] == "acme removed the address" and ISO_UTC.match(shown["closed"])
    assert [(h["action"], h["text"]) for h in shown["history"]] == [
        ("assigned", "maria"), ("note", "asked acme for the opt-in records"), ("closed", "acme removed the address")]
    assert [(a["command"], a["shown"], a["reason"]) for a in rows("SELECT * FROM audit")][:3] == [
        ("case assign", desk, "assigned to maria"), ("case note", desk, "note added"),
        ("case close", desk, "closed: acme removed the address")]
    for args, named in ((("case", "assign", "A-19990101-NOPE00", "x"), "A-19990101-NOPE00"),
                        (("case", "list", "--older-than", "soon"), "--older-than"),
                        (("case", "close", desk), "--resolution")):
        assert named in fails(*args)[1]


def test_a_reply_processed_twice_after_a_crash_is_one_history_row(desk, tmp_path):
    with closing(SqliteStore(tmp_path / "var" / "websofttt.sqlite")) as store:
        cases.close(store, desk, "done", "maria")
        assert cases.replied(store, desk, "in-9") is True
        assert cases.replied(store, desk, "in-9") is False              # the same inbound message again
        assert [h["action"] for h in cases.history(store, desk)] == ["closed", "reopened by a reply"]
        assert cases.quoted(store, f"Re: Auto: [{desk.lower()}] Spam") == desk
        assert cases.quoted(store, "Re: [A-19990101-NOPE22] unknown") is None

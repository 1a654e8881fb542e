"""Legal holds: the retention purge keeps what a standing hold covers (and audits it), `privacy erase` refuses,
and releasing the hold (or its --until passing) lets both go ahead. The purge on both engines; the commands
through the console script's entry point, against a real SQLite store."""
from __future__ import annotations

import json
import sys
import time
from contextlib import closing

import pytest

from policy import audit, holds, retention, sent, tenants
from policy.settings import load_settings
from policy.store import Store
from policy.store_sqlite import SqliteStore
from relay import cli as cli_mod

OLD = "2020-01-01T00:00:00Z"


def old_rows(store: Store, tenant: str, recipient: str) -> None:
    """One row past its retention in each table the purge prunes: a sent copy, an event, a bounce, an hour."""
    store.insert("sent", {"token": f"t-{tenant}-{recipient}", "tenant": tenant, "recipient": recipient,
                          "queue_id": "q", "created": OLD, "expires": OLD})
    store.insert("events", {"time": OLD, "kind": "delivered", "tenant": tenant, "recipient": recipient})
    store.insert("bounces", {"time": OLD, "tenant": tenant, "recipient": recipient, "class": "hard"})
    store.execute("INSERT INTO activity (tenant, hour) VALUES (?, ?) ON CONFLICT DO NOTHING", [tenant, OLD[:13]])


def left(store: Store) -> dict[str, list]:
    """Who the rows left in each pruned table are about."""
    return {"sent": sorted(r["recipient"] for r in store.all("SELECT recipient FROM sent")),
            "events": sorted(r["recipient"] for r in store.all("SELECT recipient FROM events")),
            "bounces": sorted(r["recipient"] for r in store.all("SELECT recipient FROM bounces")),
            "activity": sorted(r["tenant"] for r in store.all("SELECT tenant FROM activity"))}


def test_the_purge_keeps_what_standing_holds_cover_until_they_are_released(any_store):
    store, settings = any_store, load_settings(None)
    for tenant in ("acme", "other"):
        tenants.add(store, tenant, [], [], None)
    old_rows(store, "other", "jane@example.net")       # held as an address
    old_rows(store, "acme", "bob@example.net")         # held as acme's
    old_rows(store, "other", "carl@example.net")       # not held
    jane = holds.place(store, "summons 12", address="Jane@Example.net")
    acme = holds.place(store, "court order 7", tenant="acme")

    assert retention.purge(store, settings) == {"sent": 1, "events": 1, "bounces": 1, "activity": 1, "held": 7, "idempotency": 0}
    assert left(store) == {"sent": ["bob@example.net", "jane@example.net"],
                           "events": ["bob@example.net", "jane@example.net"],
                           "bounces": ["bob@example.net", "jane@example.net"], "activity": ["acme"]}
    assert [(e["command"], e["shown"], e["reason"]) for e in audit.entries(store)] == [
        ("privacy hold", "j***@example.net", "summons 12"), ("privacy hold", "tenant=acme", "court order 7"),
        ("retention purge", f"kept 7 rows under holds {jane.id}, {acme.id}", "legal hold")]

    holds.release(store, jane.id, "summons answered")
    assert retention.purge(store, settings) == {"sent": 1, "events": 1, "bounces": 1, "activity": 0, "held": 4, "idempotency": 0}
    holds.release(store, acme.id, "case closed")
    assert retention.purge(store, settings)["held"] == 0
    assert left(store) == {"sent": [], "events": [], "bounces": [], "activity": []}
    assert [e["shown"] for e in audit.entries(store)][3:] == [     # releases; no row for a purge that kept none
        "j***@example.net", f"kept 4 rows under holds {acme.id}", "tenant=acme"]


def test_a_hold_stands_to_the_end_of_its_until_day(tmp_path):
    with closing(SqliteStore(tmp_path / "store.sqlite")) as store:
        store.migrate()
        lapsed = holds.place(store, "summons 12", address="jane@example.net", until="2020-06-30", today="2020-01-01")
        assert lapsed.stands("2020-06-30") and not lapsed.stands("2020-07-01")
        assert holds.covering(store, address="jane@example.net") == []
        old_rows(store, "acme", "jane@example.net")
        assert retention.purge(store, load_settings(None))["held"] == 0
        assert left(store)["sent"] == []
        with pytest.raises(holds.HoldError, match="--until 2020-06-30 is in the past"):
            holds.place(store, "summons 13", address="jane@example.net", until="2020-06-30")
        assert [h.id for h in holds.all_holds(store)] == [lapsed.id]


@pytest.fixture
def node(tmp_path) -> Store:
    """A node directory with websofttt.toml, its store seeded: tenant acme mailed jane (old rows), and bob."""
    (tmp_path / "websofttt.toml").write_text('[paths]\ndata_dir = "var"\n\n[node]\nname = "t1"\n')
    (tmp_path / "var").mkdir()
    with closing(SqliteStore(tmp_path / "var" / "websofttt.sqlite")) as store:
        store.migrate()
        tenants.add(store, "acme", [], [], None)
        tenants.add(store, "other", [], [], None)
        old_rows(store, "acme", "jane@example.net")
        sent.record(store, "tok-bob", "other", "bob@example.net", None, "Q1", 3600)
    store = SqliteStore(tmp_path / "var" / "websofttt.sqlite")
    yield store
    store.close()


@pytest.fixture
def websofttt(tmp_path, monkeypatch, capsys):
    """`websofttt ARGS --config websofttt.toml` through relay.cli.main (the console script): (exit code, stdout,
    stderr)."""
    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["websofttt", *args, "--config", str(tmp_path / "websofttt.toml")])
        capsys.readouterr()
        try:
            cli_mod.main()
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err
    return run


def test_erase_is_refused_while_a_hold_stands_and_goes_ahead_once_released(node, websofttt):
    code, out, _ = websofttt("privacy", "hold", "Jane@Example.net", "--reason", "summons 12", "--until", "2999-12-31")
    assert (code, out) == (0, "hold 1 on j***@example.net: standing until 2999-12-31; reason: summons 12\n")
    assert websofttt("privacy", "hold", "--tenant", "other", "--reason", "court order 7")[0] == 0

    code, out, err = websofttt("privacy", "erase", "jane@example.net", "--reason", "erasure request")
    assert code == 1 and out == ""
    assert "hold 1 (summons 12)" in err and "websofttt privacy release" in err
    assert node.one("SELECT count(*) AS n FROM sent WHERE recipient = 'jane@example.net'")["n"] == 1
    code, _, err = websofttt("privacy", "erase", "bob@example.net", "--reason", "erasure request")
    assert code == 1 and "hold 2 (court order 7)" in err          # the held tenant's records name bob
    assert node.one("SELECT count(*) AS n FROM sent WHERE recipient = 'bob@example.net'")["n"] == 1

    code, out, _ = websofttt("privacy", "hold", "list", "--json")
    listed = json.loads(out)
    assert [(h["id"], h["address"], h["tenant"], h["until"], h["released"], h["stands"]) for h in listed] == [
        (1, "j***@example.net", None, "2999-12-31", None, True), (2, None, "other", None, None, True)]
    assert listed[0]["reason"] == "summons 12" and listed[0]["created"].startswith(time.strftime("%Y-"))

    code, out, _ = websofttt("privacy", "release", "1", "--reason", "summons answered")
    assert code == 0 and out.startswith("hold 1 on j***@example.net: released ")
    assert "hold 2 on tenant=other: standing; reason: court order 7" in websofttt("privacy", "hold", "list")[1]
    code, out, _ = websofttt("privacy", "erase", "jane@example.net", "--reason", "erasure request", "--json")
    assert code == 0 and json.loads(out)["erased"]["sent"] == 1
    assert [(e["command"], e["shown"]) for e in audit.entries(node)] == [
        ("privacy hold", "j***@example.net"), ("privacy hold", "tenant=other"),
        ("privacy erase", "j***@example.net"), ("privacy erase", "b***@example.net"),
        ("privacy release", "j***@example.net"), ("privacy erase", "j***@example.net")]


@pytest.mark.parametrize("args, named", [
    (("privacy", "hold", "jane@example.net", "--tenant", "acme", "--reason", "r"), "not both"),
    (("privacy", "hold", "--reason", "r"), "ADDRESS or --tenant"),
    (("privacy", "hold", "--tenant", "nobody", "--reason", "r"), "no tenant 'nobody'"),
    (("privacy", "hold", "jane@example.net", "--reason", "r", "--until", "2020-01-01"), "--until 2020-01-01"),
    (("privacy", "hold", "jane@example.net", "--reason", "r", "--until", "31.12.2999"), "--until '31.12.2999'"),
    (("privacy", "hold", "jane@example.net"), "--reason"),
    (("privacy", "release", "9", "--reason", "r"), "HOLD_ID 9"),
    (("privacy", "release", "1", "--reason", "r"), "HOLD_ID 1: already released"),
])
def test_bad_hold_requests_exit_2_naming_what_is_wrong(node, websofttt, args, named):
    websofttt("privacy", "hold", "jane@example.net", "--reason", "summons 12")
    websofttt("privacy", "release", "1", "--reason", "answered")
    code, _, err = websofttt(*args)
    assert code == 2 and named in err, err
    assert len(holds.all_holds(node)) == 1

"""Privacy operations: aggregate-only stats, subject access and erasure across store, queue and inbound
mailbox, and the retention purge."""
from __future__ import annotations

import json
import time
from contextlib import closing


from policy import bounces, complaints, retention, standing, suppression, tenants
from policy.settings import Policy
from policy.store_sqlite import SqliteStore
from relay import eventloop
from relay.spool import Message, Spool
from tests.conftest import make_settings, run_cli
from tests.test_abuse import human_complaint, send_inbound, wait_for
from tests.test_delivery import submit, wait_states
from tests.test_inbound import mailbox_rows


def write_config(tmp_path, data_dir) -> None:
    (tmp_path / "websofttt.toml").write_text(f'[paths]\ndata_dir = "{data_dir}"\n[node]\nname = "test"\n')


def test_stats_are_aggregates_with_small_counts_suppressed(tmp_path):
    settings = make_settings(tmp_path / "var")
    write_config(tmp_path, settings.data_dir)
    with closing(SqliteStore(settings.store_path)) as store:
        store.migrate()
        for tenant in ("acme", "tiny"):
            tenants.add(store, tenant, [], [], None)
        for _ in range(12):
            standing.note(store, "acme", "received")
        for _ in range(9):
            standing.note(store, "acme", "delivered")
        standing.note(store, "tiny", "received")
        for i in range(6):
            bounces.record(store, Policy(), "acme", f"gone{i}@example.net", "5.1.1", True, "mailbox_unknown", "t")
            suppression.add(store, f"u{i}@example.net", "acme", "unsubscribe")
        complaints.record(store, Policy(), "acme", "c@example.net", "abuse", "token", "t1", "t")
    out = run_cli("stats", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {r["tenant"]: r for r in json.loads(out.stdout)}
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert rows["acme"] == {"tenant": "acme", "day": today, "received": 12, "delivered": 9, "bounced": 6,
                            "complaints": None, "unsubscribes": 6}
    assert rows["tiny"]["received"] is None
    text = run_cli("stats", cwd=tmp_path).stdout
    assert "@" not in out.stdout + text and "<5" in text


def test_export_then_erase_keeps_only_the_opt_out(relay_factory, sink, tmp_path):
    relay = relay_factory(roles=("submission", "delivery", "inbound"),
                          delivery={"routes": {"example.net": ("127.0.0.1", sink.port)}, "retry_schedule": (60,)})
    relay.add_tenant()
    write_config(tmp_path, relay.settings.data_dir)
    wait_states(relay, submit(relay, ("jane@example.net",)), {"delivered"})
    sink.mode = "defer"
    pending = submit(relay, ("jane@example.net", "bob@example.net"))
    wait_states(relay, pending, {"deferred"})
    sink.mode = "accept"
    send_inbound(relay, "jane@example.net", "4abuse@websofttt.com", human_complaint("<c1@example.net>"))
    mailbox_rows(relay)
    wait_for(lambda: [r for _, r, _ in sink.received if r == ["jane@example.net"]][1:])   # the acknowledgement

    assert run_cli("privacy", "export", "jane@example.net", cwd=tmp_path).returncode == 2     # no reason
    out = run_cli("privacy", "export", "Jane@Example.net", "--reason", "access request", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)["records"]
    assert [s["cause"] for s in records["suppressions"]] == ["complaint"]
    assert [s["tenant"] for s in records["sent"]] == ["acme", "acme"]          # delivered, deferred
    assert records["cases"][0]["complainant"] == "jane@example.net"
    assert records["complaints"][0]["identified_by"] == "recipient"
    assert {e["kind"] for e in records["events"]} >= {"delivered", "deferred"}
    assert {q["state"] for q in records["queue"]} == {"delivered", "deferred"}
    assert [m["kind"] for m in records["inbound"]] == ["human_complaint"]
    assert [c["key"] for c in records["counters"]] == ["ack:jane@example.net"]

    erased = run_cli("privacy", "erase", "jane@example.net", "--reason", "erasure request", "--json", cwd=tmp_path)
    assert erased.returncode == 0, erased.stderr
    assert json.loads(erased.stdout)["suppressions_kept"] == 1
    after = json.loads(run_cli("privacy", "export", "jane@example.net", "--reason", "check", cwd=tmp_path).stdout)
    assert {table: len(rows) for table, rows in after["records"].items() if rows} == {"suppressions": 1}
    assert "jane" not in json.dumps(relay.store.all("SELECT * FROM cases"))
    assert relay.store.one("SELECT count(*) AS n FROM complaints")["n"] == 1              # still counted
    assert [r for r, _, _ in relay.spool_rows("SELECT recipient, state, 1 FROM recipients WHERE queue_id = ?",
                                              (pending,))] == ["bob@example.net"]        # bob is still queued
    shown = [(a["command"], a["shown"]) for a in relay.store.all("SELECT command, shown FROM audit")]
    assert shown == [("privacy export", "j***@example.net"), ("privacy erase", "j***@example.net"),
                     ("privacy export", "j***@example.net")]


def test_retention_purge_deletes_only_what_is_past_it(tmp_path):
    settings = make_settings(tmp_path / "var")
    old, new = "2020-01-01T00:00:00Z", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with closing(SqliteStore(settings.store_path)) as store:
        store.migrate()
        for when in (old, new):
            store.insert("events", {"time": when, "kind": "delivered", "tenant": "acme"})
            store.insert("bounces", {"time": when, "tenant": "acme", "recipient": "x@example.net", "class": "hard"})
            expires = "2020-06-01T00:00:00Z" if when == old else "2999-01-01T00:00:00Z"
            store.insert("sent", {"token": when, "tenant": "acme", "recipient": "x@example.net", "queue_id": "q",
                                  "created": when, "expires": expires})
        assert retention.purge(store, settings) == {"sent": 1, "events": 1, "bounces": 1, "activity": 0,
                                                 "held": 0, "idempotency": 0}
        assert [r["time"] for r in store.all("SELECT time FROM events")] == [new]


def test_finished_queue_entries_are_purged_with_their_recipients(tmp_path):
    async def scenario() -> tuple[int, int]:
        spool = Spool(tmp_path / "shard-0.sqlite")
        try:
            for queue_id in ("done", "waiting"):
                await spool.enqueue(Message(queue_id, "acme", "a@example.com", ("x@example.net",), b"data"))
            await spool.record("done", "x@example.net", "delivered", 1, 0, "250 ok", None)
            return await spool.purge_finished("2999-01-01T00:00:00Z"), await spool.purge_finished("2000-01-01")
        finally:
            spool.close()
    assert eventloop.run(scenario()) == (1, 0)
    import sqlite3
    with closing(sqlite3.connect(tmp_path / "shard-0.sqlite")) as conn:
        assert conn.execute("SELECT queue_id FROM recipients").fetchall() == [("waiting",)]

"""Group commit (policy/groupcommit), on both engines: the writes of one loop turn share one transaction,
each caller still gets its own result or error, and nothing queued is lost."""
from __future__ import annotations

import asyncio
import logging
import time

from policy import groupcommit, sent, standing, tenants
from policy.groupcommit import GroupCommit
from policy.store import Store, StoreError
from policy.store_sqlite import SqliteStore
from relay import eventloop


def received(store: Store, tenant: str) -> int:
    return (store.one("SELECT received FROM activity WHERE tenant = ?", [tenant]) or {"received": 0})["received"]


def record(store: Store, n: int) -> None:
    sent.record(store, f"token{n:04d}", "acme", f"r{n}@example.net", None, f"q{n}", 3600)


def broken(store: Store) -> None:
    store.execute("INSERT INTO no_such_table VALUES (1)")


def test_the_writes_of_one_turn_share_one_commit_and_each_caller_gets_its_result(any_store):
    tenants.add(any_store, "acme", ["acme.example"], [], None)
    begins = []
    if isinstance(any_store, SqliteStore):
        any_store.conn.set_trace_callback(lambda sql: begins.append(sql) if sql.startswith("BEGIN") else None)
    writes = GroupCommit(any_store)

    async def turn():
        for _ in range(5):
            writes.later(standing.note, "acme", "received")
        return await asyncio.gather(*(writes.now(Store.hit, f"k{n}", 60) for n in range(3)),
                                    *(writes.now(record, n) for n in range(3)))

    assert eventloop.run(turn()) == [1, 1, 1, None, None, None]
    assert received(any_store, "acme") == 5
    assert [sent.lookup(any_store, f"token{n:04d}").recipient for n in range(3)] == \
        [f"r{n}@example.net" for n in range(3)]
    if isinstance(any_store, SqliteStore):
        assert begins == ["BEGIN IMMEDIATE"]       # eleven writes, one transaction


def test_a_later_write_is_committed_within_the_delay_with_nobody_waiting(any_store):
    tenants.add(any_store, "acme", ["acme.example"], [], None)
    writes = GroupCommit(any_store)

    async def main():
        writes.later(standing.note, "acme", "received")
        await asyncio.sleep(0)
        before = received(any_store, "acme")       # still waiting for company
        await asyncio.sleep(groupcommit.DELAY * 3)
        return before, received(any_store, "acme")

    assert eventloop.run(main()) == (0, 1)


def test_drain_commits_what_is_queued_at_once(any_store):
    """What serve calls at shutdown, before the store is closed."""
    tenants.add(any_store, "acme", ["acme.example"], [], None)
    writes = GroupCommit(any_store)

    async def main():
        for _ in range(3):
            writes.later(standing.note, "acme", "received")
        await writes.drain()
        return received(any_store, "acme")

    assert eventloop.run(main()) == 3


def test_a_failing_write_fails_alone(any_store, caplog):
    """The shared transaction is rolled back; each write is then tried on its own: the good ones land, a
    waiting caller gets its own error, a queued one is logged."""
    tenants.add(any_store, "acme", ["acme.example"], [], None)
    writes = GroupCommit(any_store)

    async def turn():
        writes.later(standing.note, "acme", "received")
        writes.later(broken)
        return await asyncio.gather(writes.now(record, 1), writes.now(broken), return_exceptions=True)

    with caplog.at_level(logging.ERROR, logger="policy.groupcommit"):
        good, bad = eventloop.run(turn())
    assert good is None and isinstance(bad, StoreError) and "no_such_table" in str(bad)
    assert received(any_store, "acme") == 1
    assert sent.lookup(any_store, "token0001").recipient == "r1@example.net"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == \
        [f"store bookkeeping failed (broken): {bad}"]


def test_many_writes_do_not_wait_for_the_delay(any_store, monkeypatch):
    tenants.add(any_store, "acme", ["acme.example"], [], None)
    monkeypatch.setattr(groupcommit, "DELAY", 60.0)
    writes = GroupCommit(any_store)

    async def main():
        for _ in range(groupcommit.MAX_PENDING):
            writes.later(standing.note, "acme", "received")
        for _ in range(500):             # committed at once, not after DELAY (on PostgreSQL, in a thread)
            await asyncio.sleep(0.01)
            if received(any_store, "acme"):
                break
        return received(any_store, "acme")

    assert eventloop.run(main()) == groupcommit.MAX_PENDING


def test_a_locked_store_fails_the_whole_batch_after_one_wait(tmp_path, caplog):
    """Another process holds the write lock past the busy timeout: every caller gets the error after one
    wait, not one wait per write."""
    path = tmp_path / "store.sqlite"
    other = SqliteStore(path)
    other.migrate()
    tenants.add(other, "acme", ["acme.example"], [], None)
    store = SqliteStore(path, busy_timeout_ms=200)
    writes = GroupCommit(store)

    async def turn():
        for _ in range(5):
            writes.later(standing.note, "acme", "received")
        return await asyncio.gather(*(writes.now(record, n) for n in range(5)), return_exceptions=True)

    with other.transaction(), caplog.at_level(logging.ERROR, logger="policy.groupcommit"):
        started = time.monotonic()
        outcomes = eventloop.run(turn())
        waited = time.monotonic() - started
    assert all(isinstance(o, StoreError) and "locked" in str(o) for o in outcomes)
    assert 0.2 <= waited < 0.6
    assert [r.getMessage() for r in caplog.records] == [f"store unavailable, 10 writes not made: {outcomes[0]}"]
    assert received(store, "acme") == 0 and sent.lookup(store, "token0000") is None
    store.close()
    other.close()

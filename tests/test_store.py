"""The store's contract, the same tests on both engines (SQLite file, private PostgreSQL server): every
policy/ module that reads or writes the store, the counters, exclusive sections and the migrations."""
from __future__ import annotations

import time

import pytest

from policy import (audit, cases, complaints, credentials, dkimkeys, outbox, privacy, retention, sent, stats,
                    suppression, tenants, terms)
from policy.settings import Policy, Submission, load_settings
from policy.store import Store, StoreError
from policy.store_sqlite import SqliteStore
from policy.ratelimit import Limits
from policy.schema import MIGRATIONS
from policy.suppression_import import import_lines
from policy.tokens import TokenKeys, ensure_secret
from tests.conftest import at_once


@pytest.fixture
def store(any_store: Store) -> Store:
    tenants.add(any_store, "acme", ["acme.example"], ["192.0.2.0/24"], None)
    tenants.add(any_store, "other", [], [], None)
    return any_store


def test_migrations_are_recorded_and_run_once(store):
    assert [r["name"] for r in store.all("SELECT name FROM _migrations ORDER BY name")] == [n for n, _ in MIGRATIONS]
    assert store.migrate() == []


def test_suppression_per_tenant_and_global(store):
    assert suppression.add(store, "Jane@Example.NET", "acme", "unsubscribe")
    assert not suppression.add(store, "jane@example.net", "acme", "complaint")       # the first cause stays
    assert suppression.find(store, "acme", "JANE@example.net").cause == "unsubscribe"
    assert suppression.find(store, "other", "jane@example.net") is None             # another tenant's
    suppression.add(store, "jane@example.net", suppression.GLOBAL, "hard_bounce")
    assert suppression.find(store, "acme", "jane@example.net").scope == suppression.GLOBAL     # global first
    assert suppression.find(store, "other", "jane@example.net").scope == suppression.GLOBAL
    assert [e.scope for e in suppression.entries(store)] == ["acme", "global"]
    assert suppression.remove(store, "jane@example.net", "acme")
    assert not suppression.remove(store, "jane@example.net", "acme")


def test_suppression_import_counts_added_and_present(store):
    suppression.add(store, "b@example.net", "acme", "manual")
    result = import_lines(store, ["a@example.net", "b@example.net", "not an address", "c@example.net"],
                          "acme", "manual", "test", None)
    assert (result.added, result.present, [n for n, _ in result.invalid_lines]) == (2, 1, [3])


def test_tenants_credentials_and_terms(store):
    assert [t.id for t in tenants.all_tenants(store)] == ["acme", "other"]
    assert tenants.suspend(store, "acme", "complaints").status == "suspended"
    assert tenants.resume(store, "acme").active
    assert terms.accept(store, "2026-01", "acme", None) == "2026-01"
    assert tenants.require(store, "acme").terms_version == "2026-01"
    assert [str(net) for net, _ in tenants.trusted_networks(store)] == ["192.0.2.0/24"]
    credentials.add(store, "acme", "app1", "a long password")
    with pytest.raises(tenants.TenantError, match="already exists"):
        credentials.add(store, "acme", "app1", "another password")
    stored, tenant = credentials.lookup_hash(store, "app1")
    assert tenant == "acme" and credentials.verify_password(stored, b"a long password")
    credentials.touch(store, "app1")
    assert credentials.all_credentials(store)[0]["last_used"]
    credentials.remove(store, "app1")
    assert credentials.lookup_hash(store, "app1")[1] is None


def test_a_token_key_is_made_once_and_tokens_resolve(store):
    ensure_secret(store, None)
    ensure_secret(store, None)                    # a second init keeps the first key
    keys = TokenKeys.load(store, None)
    assert list(keys.keys) == [1]
    token = keys.issue()
    sent.record(store, token, "acme", "Jane@example.net", "<m1@acme.example>", "Q1", 3600)
    assert TokenKeys.load(store, None).verify(token)
    assert sent.lookup(store, token).recipient == "jane@example.net"
    assert [c.token for c in sent.by_message_ids(store, ["<m1@acme.example>"])] == [token]
    assert sent.tenants_that_mailed(store, "jane@example.net") == ["acme"]
    assert sent.latest_to(store, "jane@example.net").queue_id == "Q1"


def test_complaints_count_once_per_copy(store):
    rules = Policy(complaint_rate=0.5, complaint_min_volume=1000)
    first = complaints.record(store, rules, "acme", "jane@example.net", "abuse", "token", "tok1", "arf")
    again = complaints.record(store, rules, "acme", "jane@example.net", "abuse", "token", "tok1", "arf")
    assert (first[0], again[0]) == (True, False)
    rows = complaints.entries(store, "acme")
    assert [(r["case"], r["counted"]) for r in rows] == [(None, 1)]
    assert suppression.find(store, "acme", "jane@example.net").cause == "complaint"


def test_cases_outbox_and_audit(store):
    case_id = cases.open_case(store, "abuse", "Reporter@example.org", "spam", "text", "in-1", "acme")
    assert cases.for_inbound(store, "in-1") == case_id
    cases.acknowledged(store, case_id)
    assert cases.get(store, case_id.lower())["acknowledged"] == 1
    assert [c["id"] for c in cases.entries(store, "abuse")] == [case_id]
    outgoing = outbox.put(store, "n1", "reporter@example.org", b"raw \x00\xff bytes")
    claimed = outbox.claim(store)
    assert [(o.queue_id, o.raw) for o in claimed] == [(outgoing, b"raw \x00\xff bytes")]
    assert outgoing.endswith(".n1")                                # the queue id the copy will carry
    assert outbox.claim(store) == []                              # leased
    outbox.done(store, outgoing)
    assert not outbox.waiting(store)
    audit.record(store, "case show", case_id, "ticket 42")
    assert audit.entries(store)[0]["reason"] == "ticket 42"


def test_privacy_export_erase_and_retention(store, tmp_path):
    suppression.add(store, "jane@example.net", "acme", "unsubscribe")
    sent.record(store, "tok", "acme", "jane@example.net", None, "Q1", 3600)
    store.hit("ack:jane@example.net", 60)
    exported = privacy.export(store, "JANE@example.net")
    assert len(exported["suppressions"]) == len(exported["sent"]) == len(exported["counters"]) == 1
    erased = privacy.erase(store, "jane@example.net")
    assert erased["sent"] == erased["counters"] == 1
    assert suppression.find(store, "acme", "jane@example.net")                # the opt-out itself stays
    store.insert("events", {"time": "2000-01-01T00:00:00Z", "kind": "delivered", "tenant": "acme"})
    assert retention.purge(store, load_settings(None))["events"] == 1


def test_stats_sums_are_integers(store):
    for _ in range(6):
        suppression.add(store, f"u{time.monotonic_ns()}@example.net", "acme", "unsubscribe")
    rows = stats.daily(store, 1, 5)
    assert [(r["tenant"], r["unsubscribes"], type(r["unsubscribes"])) for r in rows] == [("acme", 6, int)]


def test_dkim_keys_of_tenants_and_rotations(store):
    key = dkimkeys.add_domain(store, "acme", "acme.example", "s1")
    assert dkimkeys.find(store, "acme", "ACME.example") == key
    with pytest.raises(tenants.TenantError):
        dkimkeys.add_domain(store, "other", "acme.example", "s1")
    dkimkeys.rotate(store, "s2", 0)
    assert dkimkeys.signing_rotation(store).selector == "s2"


def test_counters_windows_and_rate_limits(store):
    assert [store.hit("k", 10, now=100.0 + i) for i in range(3)] == [1, 2, 3]
    assert store.count("k", 10, now=105.0) == 3
    assert store.count("k", 10, now=111.0) == 0
    assert store.hit("k", 10, now=111.0) == 1                     # a new window
    store.reset("k")
    assert store.count("k", 10) == 0
    limits = Limits(store, Submission(auth_failures=2))
    limits.auth_failed("Someone", "192.0.2.1")
    assert not limits.ip_locked("192.0.2.9") and not limits.user_locked("someone")
    limits.auth_failed("other", "192.0.2.1")
    assert limits.ip_locked("192.0.2.1") and not limits.user_locked("nobody")
    limits.auth_failed("SOMEONE", "192.0.2.9")
    assert limits.user_locked("someone")


def test_parameters_next_to_percent_signs_and_quoted_marks(store):
    suppression.add(store, "a%b@example.net", "acme", "manual", source="50% '?' :x")
    row = store.one("SELECT address, source FROM suppressions WHERE address LIKE '%\\%b@%' ESCAPE '\\' "
                    "AND source = :s", {"s": "50% '?' :x"})
    assert row == {"address": "a%b@example.net", "source": "50% '?' :x"}
    assert store.one("SELECT '100%' AS p") == {"p": "100%"}                # no parameters at all


def test_an_exclusive_section_rolls_back_on_error(store):
    with pytest.raises(RuntimeError):
        with store.exclusive():
            suppression.add(store, "gone@example.net", "acme")
            raise RuntimeError("abort")
    assert suppression.find(store, "acme", "gone@example.net") is None


def test_bad_sql_raises_a_store_error(store):
    with pytest.raises(StoreError):
        store.execute("SELECT nothing FROM nowhere")
    assert store.one("SELECT COUNT(*) AS n FROM tenants") == {"n": 2}    # and the store goes on


def test_exclusive_sections_of_two_connections_do_not_interleave(any_store):
    """Read-modify-write from two connections (two workers or nodes): no update is lost."""
    any_store.execute("INSERT INTO counters (key, started, count) VALUES ('n', 0, 0)")
    connections = [_another_connection(any_store) for _ in range(2)]

    def bump(store: Store) -> None:
        for _ in range(25):
            with store.exclusive():
                n = store.one("SELECT count FROM counters WHERE key = 'n'")["count"]
                store.execute("UPDATE counters SET count = ? WHERE key = 'n'", [n + 1])
    at_once(*[lambda s=s: bump(s) for s in connections])
    for s in connections:
        s.close()
    assert any_store.one("SELECT count FROM counters WHERE key = 'n'")["count"] == 50


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_migrations_from_many_connections_at_once_apply_once(request, tmp_path, engine):
    """Nodes (or workers) starting together against a new store: every migration runs exactly once."""
    if engine == "sqlite":
        stores = [SqliteStore(tmp_path / "new.sqlite", other_thread=True) for _ in range(4)]
    else:
        from policy.store_postgres import PostgresStore
        url = request.getfixturevalue("pg_url")
        stores = [PostgresStore(url) for _ in range(4)]
    applied: list[list[str]] = []
    at_once(*[lambda s=s: applied.append(s.migrate()) for s in stores])
    assert sorted(len(a) for a in applied) == [0, 0, 0, len(MIGRATIONS)]
    for s in stores:
        s.close()


def _another_connection(store: Store) -> Store:
    if isinstance(store, SqliteStore):
        return SqliteStore(store.path, other_thread=True)
    from policy.store_postgres import PostgresStore
    return PostgresStore(store.pool.conninfo)

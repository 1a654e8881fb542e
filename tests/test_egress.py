"""Egress sources and pools: each tenant's copies leave from its pool's addresses and EHLO names, a source
whose address is not on this host is taken out of its pool, warm-up caps, and the configuration's checks
(policy/egress.py, relay/egress.py). Loopback aliases (127.0.0.2, 127.0.0.3) need no setup on Linux."""
from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path

import pytest

from policy import credentials, egress, shaping, tenants
from policy.settings import ConfigError, load_settings
from tests.conftest import RunningRelay, Sink, make_settings, message, prepare, run_cli, serve_sink
from tests.test_abuse import wait_for


class Recording(Sink):
    """A next hop that records, per copy, the address it came from and the EHLO name it gave."""

    def __init__(self):
        super().__init__()
        self.origins: list[tuple[str, str, str]] = []       # (recipient, peer address, EHLO name)

    async def handle_DATA(self, server, session, envelope):
        self.origins.append((envelope.rcpt_tos[0], session.peer[0], session.host_name))
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def recording():
    yield from serve_sink(Recording())


def start(tmp_path, sink, sources: dict, pools: dict) -> RunningRelay:
    settings = make_settings(tmp_path / "var", {"routes": {"example.net": ("127.0.0.1", sink.port)},
                                                "retry_schedule": (0.5,), "command_timeout": 2.0})
    settings = dataclasses.replace(settings, egress=dataclasses.replace(
        settings.egress, sources=egress.parse_sources(sources), pools=egress.parse_pools(pools)))
    prepare(settings)
    return RunningRelay(settings, ("submission", "delivery"))


SOURCES = {"mta2": {"address": "127.0.0.2", "ehlo": "mta2.relay.test"},
           "mta3": {"address": "127.0.0.3", "ehlo": "mta3.relay.test"}}


BLAST = ("app2", "pw-blast-123456")        # the login of tenant blast (two_pools)


def send(relay, recipients: list[str], login: tuple[str, str] | None = None) -> None:
    client = relay.connect(login=login) if login else relay.connect()
    client.sendmail("app@example.com", recipients, message())
    client.quit()


def two_pools(tmp_path, sink) -> RunningRelay:
    """Tenant acme (login app1) on pool transactional (mta2, 127.0.0.2), tenant blast (BLAST) on bulk (mta3)."""
    relay = start(tmp_path, sink, SOURCES, {"transactional": {"sources": [{"name": "mta2"}]},
                                            "bulk": {"sources": [{"name": "mta3", "weight": 1}]}})
    names = {"transactional", "bulk", "default"}
    relay.add_tenant("acme", username="app1")
    tenants.change(relay.store, "acme", tenants.Change(pool="transactional", pools=names))
    relay.add_tenant("blast", username=None)
    tenants.change(relay.store, "blast", tenants.Change(pool="bulk", pools=names))
    credentials.add(relay.store, "blast", *BLAST)
    return relay


def test_each_tenant_leaves_from_its_pools_address_and_ehlo_name(tmp_path, recording):
    relay = two_pools(tmp_path, recording)
    try:
        send(relay, ["a1@example.net", "a2@example.net"])
        send(relay, ["b1@example.net"], BLAST)
        wait_for(lambda: len(recording.origins) == 3)
        assert sorted(recording.origins) == [("a1@example.net", "127.0.0.2", "mta2.relay.test"),
                                             ("a2@example.net", "127.0.0.2", "mta2.relay.test"),
                                             ("b1@example.net", "127.0.0.3", "mta3.relay.test")]
    finally:
        relay.stop()


def test_a_source_whose_address_is_not_on_this_host_is_taken_out_of_its_pool(tmp_path, recording, caplog):
    # 192.0.2.1 (TEST-NET-1) is on no interface here: binding to it fails with EADDRNOTAVAIL before any packet
    sources = SOURCES | {"gone": {"address": "192.0.2.1", "ehlo": "gone.relay.test"}}
    relay = start(tmp_path, recording, sources, {"default": {"sources": [{"name": "gone", "weight": 50},
                                                                         {"name": "mta2"}]}})
    try:
        relay.add_tenant()
        send(relay, [f"r{i}@example.net" for i in range(6)])
        wait_for(lambda: len(recording.origins) == 6)
        assert {peer for _, peer, _ in recording.origins} == {"127.0.0.2"}
        rows = wait_for(lambda: (r := relay.spool_rows("SELECT state, attempts FROM recipients"))
                        and {state for state, _ in r} == {"delivered"} and r)
        assert max(a for _, a in rows) == 1                    # the failed bind used up no attempt
        taken_out = [r for r in caplog.records if "egress source gone" in r.getMessage()]
        assert len(taken_out) == 1 and "taken out of its pools" in taken_out[0].getMessage()
    finally:
        relay.stop()


@pytest.mark.parametrize("overflow", ["wait", "move"])
def test_warm_up_caps_a_new_address(tmp_path, recording, overflow):
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    sources = SOURCES | {"mta2": SOURCES["mta2"] | {"warmup": [2, 100], "warmup_start": today}}
    pool = {"sources": [{"name": "mta2"}] + ([{"name": "mta3"}] if overflow == "move" else []),
            "warmup_overflow": overflow}
    relay = start(tmp_path, recording, sources, {"default": pool})
    try:
        relay.add_tenant()
        for i in range(5):
            send(relay, [f"r{i}@example.net"])
        if overflow == "wait":
            wait_for(lambda: len(recording.origins) == 2)
            time.sleep(1.5)
            assert len(recording.origins) == 2
            replies = [r for (r,) in relay.spool_rows("SELECT last_reply FROM recipients WHERE state = 'deferred'")]
            assert replies == ["451 4.7.0 Shaped: source mta2 at its warm-up cap of 2 copies today"] * 3
        else:
            wait_for(lambda: len(recording.origins) == 5)
            assert sum(1 for _, peer, _ in recording.origins if peer == "127.0.0.2") <= 2
    finally:
        relay.stop()


# --- the configuration's checks ------------------------------------------------------------------------

@pytest.mark.parametrize("text, named", [
    ('[egress.sources.a]\naddress = "127.0.0.2"\nehlo = "a.test"\nbind = "x"\n', "[egress.sources.a] unknown key 'bind'"),
    ('[egress.sources.a]\naddress = "mta.example"\nehlo = "a.test"\n', "[egress.sources.a] address: an IPv4 or IPv6"),
    ('[egress.sources.a]\naddress = "127.0.0.2"\nehlo = "not a name"\n', "[egress.sources.a] ehlo: a host name"),
    ('[egress.sources.a]\naddress = "127.0.0.2"\nehlo = "a.test"\nwarmup = [100]\n', "warmup_start: the first day"),
    ('[egress.pools.p]\nsources = [{ name = "nope" }]\n', "[egress.pools.p] sources: no [egress.sources.nope]"),
    ('[egress.sources.a]\naddress = "127.0.0.2"\nehlo = "a.test"\n[egress.pools.p]\nsources = [{ name = "a" }]\n'
     'warmup_overflow = "drop"\n', "[egress.pools.p] warmup_overflow: one of wait, move"),
])
def test_a_bad_egress_configuration_names_the_section_and_key(tmp_path, text, named):
    path = tmp_path / "websofttt.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_settings(path)
    assert str(path) in str(e.value) and named in str(e.value)


def test_an_unknown_pool_is_refused_for_a_tenant_and_at_serve(tmp_path):
    config = tmp_path / "websofttt.toml"
    pools = ('[egress.sources.mta2]\naddress = "127.0.0.2"\nehlo = "mta2.relay.test"\n'
             '[egress.pools.bulk]\nsources = [{ name = "mta2" }]\n')
    config.write_text('[node]\nname = "n1"\n' + pools)
    for args in (["init"], ["tenant", "add", "acme", "--allow-from", "example.com", "--pool", "bulk"]):
        assert run_cli(*args, cwd=tmp_path).returncode == 0
    refused = run_cli("tenant", "set", "acme", "--pool", "nope", cwd=tmp_path)
    assert refused.returncode == 2 and "no egress pool 'nope' is configured" in refused.stderr
    config.write_text('[node]\nname = "n1"\n')                 # the pool removed while acme still uses it
    serve = run_cli("serve", cwd=tmp_path)
    assert serve.returncode == 2 and "[egress.pools.bulk] is not configured, but tenant(s) acme" in serve.stderr
    assert "Traceback" not in serve.stderr


def test_the_example_configuration_loads_its_pools(tmp_path):
    path = Path(tmp_path / "websofttt.toml")
    path.write_text('[egress.sources.mta2]\naddress = "::1"\nehlo = "mta2.relay.test"\nwarmup = [1000, 2500]\n'
                    'warmup_start = 2026-12-01\n[egress.pools.bulk]\nsources = [{ name = "mta2", weight = 3 }]\n')
    settings = load_settings(path)
    source = settings.egress.sources["mta2"]
    assert (source.address, source.cap(datetime.date(2026, 12, 2)), source.cap(datetime.date(2026, 12, 3))) == \
        ("::1", 2500, None)
    assert settings.egress.pool("bulk").sources == (("mta2", 3),)
    assert settings.egress.pool(None) == egress.DEFAULT_POOL


def test_a_site_suspended_for_one_source_does_not_hold_the_other_sources_mail(tmp_path, recording):
    """Automation's `suspend_source` (here by hand, `shaping suspend SITE --source`): the copies of the tenant
    on mta2 wait, those of the tenant on mta3 go; resume releases the held ones."""
    relay = two_pools(tmp_path, recording)
    try:
        site = f"127.0.0.1:{recording.port}"
        shaping.act(relay.store, site, shaping.SUSPEND, 1, time.time() + 3600, "421 4.7.0 mta2 listed", "test", "mta2")
        time.sleep(1.2)                                       # every worker reads the actions each second
        send(relay, ["a1@example.net"])
        send(relay, ["b1@example.net"], BLAST)
        wait_for(lambda: recording.origins)
        time.sleep(1.0)
        assert recording.origins == [("b1@example.net", "127.0.0.3", "mta3.relay.test")]
        held = relay.spool_rows("SELECT recipient, attempts, last_reply FROM recipients WHERE state = 'deferred'")
        assert held == [("a1@example.net", 0, f"451 4.7.0 Shaped: site {site} suspended for every source of "
                                               "egress pool transactional")]
        assert shaping.resume(relay.store, site) == 1
        wait_for(lambda: len(recording.origins) == 2, timeout=15)
        assert recording.origins[1] == ("a1@example.net", "127.0.0.2", "mta2.relay.test")
    finally:
        relay.stop()

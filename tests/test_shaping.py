"""Delivery shaping: the rules file, site rates shared by every worker and node through the store, automation
that reacts to a site's throttling replies, `websofttt shaping`, and a real relay settling under a next hop
that throttles (policy/shaping_rules.py, policy/shaping.py, relay/shaping.py)."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from policy import shaping, shaping_rules
from policy.shaping_rules import RulesError
from policy.values import Rate
from relay.routing import Destination
from relay.shaping import Shaper, pacing
from tests.conftest import Sink, message, run_cli, serve_sink

GMAIL_MX = [Destination("aspmx.l.google.com", 25), Destination("alt1.aspmx.l.google.com", 25)]


def rules_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shaping.toml"
    path.write_text(text)
    return path


# --- the rules file ----------------------------------------------------------------------------------

def test_the_shipped_rules_load_and_roll_up_mx_hosts():
    rules = shaping_rules.load(None)
    assert rules.source.endswith("config/shaping.toml")
    assert rules.site_for("gmail.com", []).name == "gmail"
    assert rules.site_for("corp.example", ["ASPMX.L.GOOGLE.COM."]).name == "gmail"      # Google Workspace
    assert rules.site_for("contoso.example", ["contoso-example.mail.protection.outlook.com"]).name == "microsoft"
    assert rules.site_for("example.net", ["mx.example.net"]) is None
    assert rules.limits("gmail").max_message_rate == Rate(1000, 60.0)
    gmail = next(r for r in rules.automation if r.name == "gmail-rate-limited")
    assert gmail.matches("gmail", "4.7.28", "421 4.7.28 Our system has detected an unusual rate of unsolicited mail")
    assert not gmail.matches("gmail", "4.7.0", "421 4.7.0 Try again later")


@pytest.mark.parametrize("text, named", [
    ('[sites.gmail]\nmatch = ["gmail.com"]\nmax_rate = "1/s"\n', "[sites.gmail] unknown key 'max_rate'"),
    ('[sites.gmail]\nmatch = ["gmail.com"]\nmax_message_rate = "fast"\n', "[sites.gmail] max_message_rate: a rate"),
    ('[sites.gmail]\nmax_message_rate = "5/s"\n', "[sites.gmail] match: a list"),
    ('[default]\nmax_message_rate = "5/fortnight"\n', "[default] max_message_rate: a rate"),
    ('[sitez.gmail]\n', "unknown section [sitez]"),
    ('[[automation]]\nname = "x"\nstatus = "4.7.28"\naction = "reduce"\nfactor = 2\nfor = "1m"\n',
     "[[automation]] x factor: a number between 0 and 1"),
    ('[[automation]]\nname = "x"\ntext = "(unclosed"\naction = "suspend"\nfor = "1m"\n',
     "[[automation]] x text: not a regular expression"),
    ('[[automation]]\nname = "x"\nstatus = "4.7.28"\nsites = ["nowhere"]\naction = "suspend"\nfor = "1m"\n',
     "[[automation]] x sites: names of [sites.*] sections"),
    ('[[automation]]\nname = "x"\nstatus = "4.7.28"\naction = "bounce"\nfor = "1m"\n', "[[automation]] x action:"),
    ('[[automation]]\nname = "x"\nstatus = "4.7.28"\naction = "suspend"\nfor = "soon"\n', "[[automation]] x for:"),
    ('[[automation]]\nname = "x"\naction = "suspend"\nfor = "1m"\n', "status or text is required"),
])
def test_a_bad_rules_file_is_refused_naming_file_section_and_key(tmp_path, text, named):
    path = rules_file(tmp_path, text)
    with pytest.raises(RulesError) as e:
        shaping_rules.load(path)
    assert str(e.value).startswith(str(path)) and named in str(e.value)


def test_the_command_line_exits_2_naming_the_shaping_file(tmp_path):
    bad = rules_file(tmp_path, '[sites.gmail]\nmatch = ["gmail.com"]\nmax_message_rate = "fast"\n')
    config = tmp_path / "websofttt.toml"
    config.write_text(f'[paths]\ndata_dir = "var"\n\n[delivery]\nshaping_file = "{bad}"\n')
    result = run_cli("--config", str(config), "shaping", "status", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"[delivery] shaping_file: {bad}: [sites.gmail] max_message_rate" in result.stderr
    assert "Traceback" not in result.stderr


# --- rates and actions shared through the store --------------------------------------------------------

def test_pace_spaces_the_claims_of_everyone(any_store):
    now = 1_000_000.0
    assert shaping.pace(any_store, "gmail", 0.1, 5, 0.0, now) == 0.0                # 5 copies now ...
    assert shaping.pace(any_store, "gmail", 0.1, 5, 0.0, now) == pytest.approx(0.5)   # ... the next 5 in 0.5 s
    assert shaping.pace(any_store, "gmail", 0.1, 5, 0.0, now + 0.5) == 0.0
    assert shaping.pace(any_store, "gmail", 0.1, 5, 0.0, now + 0.9) == pytest.approx(0.1)
    assert shaping.pace(any_store, "gmail", 0.1, 5, 1.0, now + 0.9) == 0.0           # granted ahead of time ...
    assert shaping.pace(any_store, "gmail", 0.1, 5, 1.0, now + 0.9) == 0.0           # (the schedule at +2.0 s)
    assert shaping.pace(any_store, "gmail", 0.1, 5, 1.0, now + 0.9) == pytest.approx(0.1)   # ... up to 1 s ahead
    assert shaping.pace(any_store, "yahoo", 0.1, 5, 0.0, now + 0.9) == 0.0          # sites are paced apart
    assert shaping.sent_recently(any_store, "gmail") == 0                            # counted long ago
    shaping.pace(any_store, "msn", 0.1, 3)
    assert shaping.sent_recently(any_store, "msn") == 3


@pytest.mark.parametrize("rate, block", [(Rate(100000, 60), 83), (Rate(30, 2), 1), (Rate(1000, 3600), 1)])
def test_pacing_keeps_any_period_under_the_rate(rate, block):
    got_block, interval, ahead, lapse = pacing(rate)
    assert got_block == block
    drift = ahead + lapse
    assert (rate.period + 2 * drift) / interval <= rate.count + 1e-6         # what a period can hold
    assert rate.count * interval / rate.period < 1.12                         # at most ~10 % below the rate


def test_two_nodes_claiming_at_once_share_one_pace(postgres, pg_url):
    """Two engines on one PostgreSQL store, eight threads claiming as fast as they can for a second:
    no more than one claim per interval went through, all of them together."""
    from policy.store_postgres import PostgresStore
    stores = [PostgresStore(pg_url) for _ in range(2)]
    stores[0].migrate()
    interval, granted, lock = 0.02, [], threading.Lock()
    started = time.time()

    def node(store):
        while time.time() < started + 1.0:
            if shaping.pace(store, "yahoo", interval, 1, 0.0) == 0.0:
                with lock:
                    granted.append(time.time())
    threads = [threading.Thread(target=node, args=(stores[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 20 <= len(granted) <= 1 + (max(granted) - started) / interval
    for store in stores:
        store.close()


def test_an_action_is_extended_not_stacked_and_resume_ends_it(any_store):
    now = time.time()
    shaping.act(any_store, "gmail", shaping.REDUCE, 0.5, now + 60, "421 4.7.28 slow down", "gmail-rate-limited")
    shaping.act(any_store, "gmail", shaping.REDUCE, 0.5, now + 120, "421 4.7.28 again", "gmail-rate-limited")
    active = shaping.active(any_store)
    assert [(a.kind, a.factor, round(a.until - now), a.reason) for a in active] == [
        ("reduce", 0.5, 120, "421 4.7.28 again")]
    assert shaping.active(any_store, now + 121) == []                 # ended by then
    shaping.act(any_store, "gmail", shaping.SUSPEND, 1, now + 60, "by hand", shaping.OPERATOR)
    assert shaping.resume(any_store, "gmail") == 2 and shaping.active(any_store) == []    # both were in force


def test_the_shaper_reduces_and_suspends_as_the_rules_say(tmp_path, any_store):
    rules = shaping_rules.load(rules_file(tmp_path, """
[sites.gmail]
match = ["gmail.com", "*.google.com"]
max_message_rate = "100/1h"
[[automation]]
name = "slow"
status = "4.7.28"
action = "reduce"
factor = 0.5
for = "10m"
[[automation]]
name = "stop"
text = "(?i)too many connections"
action = "suspend"
for = "5m"
"""))


    async def scenario():
        shaper = Shaper(rules, any_store, any_store.call)
        site = shaper.site("corp.example", GMAIL_MX, routed=False)
        assert site.name == "gmail" and shaper.rate(site) == Rate(100, 3600)
        assert await shaper.admit(site) is None
        assert await shaper.observe(site, "421 4.7.28 unusual rate of unsolicited mail") is True
        assert shaper.rate(site) == Rate(50, 3600)
        assert await shaper.observe(site, "250 2.0.0 ok") is False
        assert await shaper.observe(site, "421 4.7.0 Too many connections from your IP") is True
        wait = await shaper.admit(site)
        assert wait is not None and "suspended" in wait.reason and wait.until > time.time() + 250
        other = shaper.site("example.net", [Destination("mx.example.net", 25)], routed=False)
        assert other.name == "mx.example.net" and await shaper.admit(other) is None     # no rate: free
    asyncio.run(scenario())


# --- a real relay against a next hop that throttles ----------------------------------------------------

class Throttling(Sink):
    """A next hop that answers 421 4.7.28 once more than `per_window` copies reached it in `window` seconds."""

    def __init__(self, per_window: int, window: float):
        super().__init__()
        self.per_window, self.window = per_window, window
        self.accepted_at: list[float] = []
        self.throttled_at: list[float] = []

    async def handle_DATA(self, server, session, envelope):
        now = time.monotonic()
        with self.lock:
            recent = [t for t in self.accepted_at if now - t < self.window]
            if len(recent) >= self.per_window:
                self.throttled_at.append(now)
                return "421 4.7.28 [127.0.0.1] Our system has detected an unusual rate of unsolicited mail"
            self.accepted_at.append(now)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def throttling():
    yield from serve_sink(Throttling(per_window=25, window=2.0))


@pytest.mark.parametrize("shaped", [True, False])
def test_a_relay_settles_under_a_throttling_next_hop(relay_factory, throttling, tmp_path, shaped):
    """The next hop takes 25 copies per 2 s; the rules start the site at 40 per 2 s and halve its rate on
    421 4.7.28. Without shaping (no rules) the relay sends as fast as it can."""
    site = f"127.0.0.1:{throttling.port}"
    rules = (f'[sites.sink]\nmatch = ["{site}"]\nmax_message_rate = "40/2s"\n[[automation]]\nname = "slow"\n'
             'status = "4.7.28"\naction = "reduce"\nfactor = 0.5\nfor = "1h"\n') if shaped else "[default]\n"
    relay = relay_factory(roles=("submission", "delivery"), delivery={
        "routes": {"example.net": ("127.0.0.1", throttling.port)}, "retry_schedule": (0.5,),
        "command_timeout": 2.0, "data_timeout": 2.0, "shaping_file": rules_file(tmp_path, rules)})
    relay.add_tenant(rate="100000/1h")
    started = time.monotonic()
    client = relay.connect()
    for i in range(12):
        client.mail("app@example.com")
        for n in range(10):
            assert client.rcpt(f"r{i}-{n}@example.net")[0] == 250
        assert client.data(message(subject=f"batch {i}"))[0] == 250
    client.quit()
    deadline = time.monotonic() + 60
    while len(throttling.received) < 120 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(throttling.received) == 120                     # every copy delivered in the end
    bounced = relay.spool_rows("SELECT count(*) FROM recipients WHERE state IN ('failed', 'expired')")
    assert bounced == [(0,)]                                    # none bounced for throttling
    late = started + 4.0                                        # after the first windows: settled or not
    attempts = len([t for t in throttling.accepted_at + throttling.throttled_at if t > late])
    throttled = len([t for t in throttling.throttled_at if t > late])
    if shaped:
        assert throttled / attempts < 0.10, (throttled, attempts)
        status = json.loads(run_cli("--config", str(_config(relay, tmp_path)), "shaping", "status", "--json",
                                    cwd=tmp_path).stdout)
        sink_row = next(r for r in status if r["site"] == "sink")
        assert sink_row["max_message_rate"] == "40/2s" and sink_row["rate_in_force"] in ("20/2s", "10/2s", "5/2s")
        assert sink_row["sent_last_minute"] > 0
        assert sink_row["actions"][0]["rule"] == "slow" and "4.7.28" in sink_row["actions"][0]["reason"]
    else:
        assert throttled / attempts > 0.25, (throttled, attempts)


def _config(relay, tmp_path: Path) -> Path:
    """A config file for the command line that points at the running relay's store and shaping file."""
    path = tmp_path / "cli.toml"
    d = relay.settings.delivery
    path.write_text(f'[paths]\ndata_dir = "{relay.settings.paths.data_dir}"\n\n'
                    f'[delivery]\nshaping_file = "{d.shaping_file}"\n')
    return path


def test_suspend_and_resume_by_hand(relay_factory, sink, tmp_path):
    relay = relay_factory(roles=("submission", "delivery"), delivery={
        "routes": {"example.net": ("127.0.0.1", sink.port)}, "retry_schedule": (0.5,),
        "shaping_file": rules_file(tmp_path, f'[sites.sink]\nmatch = ["127.0.0.1:{sink.port}"]\n')})
    relay.add_tenant()
    config = _config(relay, tmp_path)
    done = run_cli("--config", str(config), "shaping", "suspend", "sink", "--for", "1h", "--reason", "incident 7",
                   cwd=tmp_path)
    assert done.returncode == 0 and "site sink suspended until" in done.stdout
    bad = run_cli("--config", str(config), "shaping", "suspend", "sink", "--for", "soon", cwd=tmp_path)
    assert bad.returncode == 2 and "--for" in bad.stderr
    time.sleep(1.2)                                             # every worker reads the actions each second
    client = relay.connect()
    client.sendmail("app@example.com", ["held@example.net"], message())
    client.quit()
    time.sleep(1.5)
    assert sink.received == []
    rows = relay.spool_rows("SELECT state, attempts, last_reply FROM recipients")
    assert rows == [("deferred", 0, "451 4.7.0 Shaped: site sink suspended: incident 7")]    # no attempt used
    shown = run_cli("--config", str(config), "shaping", "status", cwd=tmp_path).stdout
    assert "sink" in shown and "SUSPENDED until" in shown and "incident 7" in shown
    assert run_cli("--config", str(config), "shaping", "resume", "sink", cwd=tmp_path).stdout.strip() == \
        "site sink: 1 action(s) ended"
    deadline = time.monotonic() + 10
    while not sink.received and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [r[1] for r in sink.received] == [["held@example.net"]]


def test_suspend_source_holds_one_egress_source_only(tmp_path, any_store):
    rules = shaping_rules.load(rules_file(tmp_path, """
[sites.microsoft]
match = ["*.protection.outlook.com"]
[[automation]]
name = "listed"
text = "(?i)blocked using spamhaus"
action = "suspend_source"
for = "1h"
"""))


    async def scenario():
        shaper = Shaper(rules, any_store, any_store.call)
        site = shaper.site("contoso.example", [Destination("contoso.mail.protection.outlook.com", 25)], routed=False)
        assert await shaper.observe(site, "550 5.7.1 Service unavailable; blocked using Spamhaus", "mta2") is True
        assert await shaper.admit(site) is None                     # the site is not suspended as a whole
        held = shaper.held_sources(site)
        assert list(held) == ["mta2"] and held["mta2"] > time.time() + 3500
        [action] = shaping.active(any_store)
        assert (action.kind, action.source, action.rule) == ("suspend", "mta2", "listed")
    asyncio.run(scenario())


class Timing(Sink):
    """A next hop that records when each copy arrived."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    async def handle_DATA(self, server, session, envelope):
        self.times.append(time.monotonic())
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def timing():
    yield from serve_sink(Timing())


def test_two_nodes_of_two_workers_share_a_sites_rate(tmp_path, pg_url, timing):
    """Two `websofttt serve` nodes, two delivery workers each, one PostgreSQL store: 120 copies to a site
    limited to 30 per 2 s. Over any 2 s the next hop never sees more than the rate allows."""
    from tests.conftest import PASSWORD
    from tests.test_nodes import Node
    rules = rules_file(tmp_path, f'[sites.sink]\nmatch = ["127.0.0.1:{timing.port}"]\nmax_message_rate = "30/2s"\n')
    nodes = [Node(tmp_path, name, pg_url, timing.port) for name in ("a", "b")]
    for node in nodes:
        config = node.dir / "websofttt.toml"
        config.write_text(config.read_text().replace("workers = 1", "workers = 2")
                          .replace("[delivery]\n", f'[delivery]\nshaping_file = "{rules}"\n'))
        node.cli("init")
    nodes[0].cli("tenant", "add", "acme", "--allow-from", "example.com", "--rate", "100000/1h")
    nodes[0].cli("tenant", "accept-terms", "acme")
    nodes[0].cli("credential", "add", "acme", "app1", stdin=PASSWORD + "\n")
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            with node.client() as client:
                for batch in range(6):
                    client.sendmail("app@example.com", [f"{node.dir.name}{batch}-{i}@example.net" for i in range(10)],
                                    message())
        deadline = time.monotonic() + 60
        while len(timing.times) < 120 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(timing.times) == 120
        times = sorted(timing.times)
        busiest = max(sum(1 for t in times if start <= t < start + 2.0) for start in times)
        assert busiest <= 30, busiest
        assert times[-1] - times[0] >= 2.0 * (120 / 30 - 1), times[-1] - times[0]
    finally:
        for node in nodes:
            node.stop()


def send_to_shaped_sink(relay_factory, sink, tmp_path, limits: str, n: int) -> float:
    """A relay whose rules make the sink a site with `limits`; one message to `n` recipients, waited for (up to
    20 s) at the sink. Returns when the relay was handed it (time.monotonic)."""
    relay = relay_factory(roles=("submission", "delivery"), delivery={
        "routes": {"example.net": ("127.0.0.1", sink.port)}, "retry_schedule": (0.5,),
        "shaping_file": rules_file(tmp_path, f'[sites.sink]\nmatch = ["127.0.0.1:{sink.port}"]\n{limits}\n')})
    relay.add_tenant()
    started = time.monotonic()
    client = relay.connect()
    client.sendmail("app@example.com", [f"r{i}@example.net" for i in range(n)], message())
    client.quit()
    deadline = time.monotonic() + 20
    while len(sink.received) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return started


@pytest.mark.parametrize("limits, check", [
    ('max_connections = 1', lambda sink, n: sink.peak == 1),
    ('max_connections = 1\nmax_messages_per_connection = 2', lambda sink, n: sink.peak == 1 and sink.sessions == n / 2),
    ('max_connections = 1\nmax_messages_per_connection = 50', lambda sink, n: sink.sessions == 1),
])
def test_a_sites_connection_limits(relay_factory, sink, tmp_path, limits, check):
    """Per site: connections in use at once (per node) and copies per connection, against delivery's own
    per_destination (10) and messages_per_connection (100)."""
    send_to_shaped_sink(relay_factory, sink, tmp_path, limits, 20)
    assert len(sink.received) == 20
    assert check(sink, 20), (sink.peak, sink.sessions)


def test_a_sites_connection_rate(relay_factory, sink, tmp_path):
    started = send_to_shaped_sink(relay_factory, sink, tmp_path,
                                  'max_connection_rate = "2/1s"\nmax_messages_per_connection = 1', 6)
    assert len(sink.received) == 6 and sink.sessions == 6
    assert time.monotonic() - started >= 2.0               # 6 connections at 2 a second: the last after 2 s


def test_connection_limits_are_checked(tmp_path):
    with pytest.raises(RulesError, match=r"\[sites.gmail\] max_connections: a whole number of at least 1, got 0"):
        shaping_rules.load(rules_file(tmp_path, '[sites.gmail]\nmatch = ["gmail.com"]\nmax_connections = 0\n'))
    with pytest.raises(RulesError, match=r"\[default\] max_connection_rate: a rate"):
        shaping_rules.load(rules_file(tmp_path, '[default]\nmax_connection_rate = 5\n'))

"""Transport security with real parts: MTA-STS policies fetched over HTTPS from a test CA, DANE TLSA records in a
zone signed with ldns-signzone and served by Knot, Unbound validating it, and real next hops on loopback
addresses with right, wrong-name, expired, untrusted and no certificates. The relay is pointed at Unbound through
`[dns] nameservers`, with `dnssec = true`."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import email
import email.policy
import gzip
import hashlib
import json
import ssl
import threading
import time

import dkim
import pytest
import trustme
from aiohttp import web
from cryptography import x509
from prometheus_client import REGISTRY
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from policy import events, mta_sts, tls_reports
from policy.keys import dkim_public_value, load_private_key
from policy.settings import Dns, load_settings
from relay import tls_report
from relay.cli.common import migrated_store
from relay.resolver import make_resolver
from tests.conftest import CountingSMTP, RunningRelay, Sink, SinkController, free_port, make_settings, prepare, run_cli
from tests.dns_zone import RealDns, Zone
from tests.test_delivery import submit, wait_states

HOPS = {  # next hop address -> (MX host name, certificate: "ca" for its name, "other-name", "untrusted", None: no STARTTLS)
    "127.0.0.2": ("mx.good.sts.test", "ca"),
    "127.0.0.3": ("mx.plain.sts.test", None),
    "127.0.0.4": ("mx.wrong.sts.test", "other-name"),
    "127.0.0.5": ("mx.dane.test", "untrusted"),
    "127.0.0.6": ("mx.mismatch.dane.test", "untrusted"),
    "127.0.0.7": ("mx.bogus.dane.test", "untrusted"),
    "127.0.0.8": ("mx.insecure.sts.test", "untrusted"),
    "127.0.0.9": ("mx.ta.dane.test", "intermediate"),
    "127.0.0.10": ("mx.expired.sts.test", "expired"),
}
# recipient domain -> its MTA-STS policy (text served at https://mta-sts.DOMAIN/.well-known/mta-sts.txt)
POLICIES = {
    "enforce-plain.sts.test": "mode: enforce\nmx: mx.plain.sts.test",
    "enforce-wrong.sts.test": "mode: enforce\nmx: mx.wrong.sts.test",
    "enforce-expired.sts.test": "mode: enforce\nmx: mx.expired.sts.test",
    "enforce-outside.sts.test": "mode: enforce\nmx: mx.good.sts.test",
    "enforce-good.sts.test": "mode: enforce\nmx: *.good.sts.test\nmx: mx.other.example",
    "testing.sts.test": "mode: testing\nmx: mx.wrong.sts.test",
    "cached.sts.test": "mode: none",
    "rpt.sts.test": "mode: enforce\nmx: mx.wrong.sts.test\nmx: mx.good.sts.test",
}
MX = {"enforce-plain": ["mx.plain"], "enforce-wrong": ["mx.wrong"], "enforce-expired": ["mx.expired"],
      "enforce-outside": ["mx.plain", "mx.good"],
      "enforce-good": ["mx.good"], "testing": ["mx.wrong"], "cached": ["mx.plain"], "insecure": ["mx.insecure"],
      "rpt": ["mx.wrong", "mx.good"], "reports": ["mx.good"]}


YEAR_AGO = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=365)


class Hop(Sink):
    """A next hop that notes every MAIL command: nothing may be sent after EHLO when TLS is refused."""

    def __init__(self) -> None:
        super().__init__()
        self.mails = 0

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.mails += 1
        envelope.mail_from, envelope.mail_options = address, mail_options
        return "250 OK"


class HopController(SinkController):
    def __init__(self, handler, tls: ssl.SSLContext | None, **kw):
        super().__init__(handler, **kw)
        self.tls = tls

    def factory(self):
        return CountingSMTP(self.handler, enable_SMTPUTF8=True, tls_context=self.tls)


def spki_sha256(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """DNS, the policy server and the next hops, shared by the module's tests (each test has its own domain)."""
    root = tmp_path_factory.mktemp("transport")
    ca, untrusted = trustme.CA(), trustme.CA()
    intermediate = untrusted.create_child_ca()
    certs = {"ca": lambda name: ca.issue_cert(name), "other-name": lambda name: ca.issue_cert("someone-else.example"),
             "untrusted": lambda name: untrusted.issue_cert(name), "intermediate": lambda name: intermediate.issue_cert(name),
             "expired": lambda name: ca.issue_cert(name, not_before=YEAR_AGO, not_after=YEAR_AGO + datetime.timedelta(days=30))}
    port = free_port()
    hops, controllers, leaf = {}, [], {}
    for address, (name, kind) in HOPS.items():
        context = None
        if kind:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            issued = certs[kind](name)
            issued.configure_cert(context)
            leaf[name] = issued.cert_chain_pems[0].bytes()
        hops[name] = Hop()
        controller = HopController(hops[name], context, hostname=address, port=port)
        controller.start()
        controllers.append(controller)
    sts = ["mx.good IN A 127.0.0.2", "mx.plain IN A 127.0.0.3", "mx.wrong IN A 127.0.0.4", "mx.insecure IN A 127.0.0.8",
           "mx.expired IN A 127.0.0.10",
           f"_{port}._tcp.mx.insecure IN TLSA 3 1 1 {'00' * 32}"]
    for label, hosts in MX.items():
        sts += [f"{label} IN MX {10 * (i + 1)} {host}" for i, host in enumerate(hosts)]
        if f"{label}.sts.test" in POLICIES:
            sts += [f'_mta-sts.{label} IN TXT "v=STSv1; id=2"', f"mta-sts.{label} IN A 127.0.0.1"]
    policies = PolicyServer(ca, root)
    sts.append(f'_smtp._tls.rpt IN TXT "v=TLSRPTv1; rua=mailto:tls@reports.sts.test,'
               f'https://mta-sts.rpt.sts.test:{policies.port}/tlsrpt"')
    signed = ["@ IN MX 10 mx", "mx IN A 127.0.0.5", f"_{port}._tcp.mx IN TLSA 3 1 1 {spki_sha256(leaf['mx.dane.test'])}",
              "mismatch IN MX 10 mx.mismatch", "mx.mismatch IN A 127.0.0.6",
              f"_{port}._tcp.mx.mismatch IN TLSA 3 1 1 {'ab' * 32}",
              "bogus IN MX 10 mx.bogus", "mx.bogus IN A 127.0.0.7",
              f"_{port}._tcp.mx.bogus IN TLSA 3 1 1 {spki_sha256(leaf['mx.bogus.dane.test'])}",
              "ta IN MX 10 mx.ta", "mx.ta IN A 127.0.0.9",
              f"_{port}._tcp.mx.ta IN TLSA 2 1 1 {spki_sha256(intermediate.cert_pem.bytes())}"]
    dns = RealDns(root / "dns", [Zone("dane.test", signed, signed=True, bogus=[f"_{port}._tcp.mx.bogus"]),
                                 Zone("sts.test", sts)])
    yield dataclasses.make_dataclass("World", ["dns", "hops", "port", "policies", "ca_file", "leaf"])(
        dns, hops, port, policies, root / "ca.pem", leaf)
    policies.stop()
    dns.stop()
    for controller in controllers:
        controller.stop()


class PolicyServer:
    """https://mta-sts.DOMAIN/.well-known/mta-sts.txt for every domain of POLICIES, on one loopback port; a
    domain in `down` answers 503."""

    def __init__(self, ca: trustme.CA, root) -> None:
        ca.cert_pem.write_to_path(str(root / "ca.pem"))
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*[f"mta-sts.{d}" for d in POLICIES]).configure_cert(self.context)
        self.port = free_port()
        self.down: set[str] = set()
        self.fetches: list[str] = []
        self.reports: list[tuple[str, bytes]] = []      # TLS-RPT reports POSTed: (Content-Type, body)
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        assert started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", self._policy)
        app.router.add_post("/tlsrpt", self._report)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.context).start())
        started.set()
        self._loop.run_forever()

    async def _policy(self, request: web.Request) -> web.Response:
        domain = request.host.split(":")[0].removeprefix("mta-sts.")
        self.fetches.append(domain)
        if domain in self.down or domain not in POLICIES:
            return web.Response(status=503, text="down")
        return web.Response(text=f"version: STSv1\n{POLICIES[domain]}\nmax_age: 86400\n")

    async def _report(self, request: web.Request) -> web.Response:
        self.reports.append((request.content_type, await request.read()))
        return web.Response(status=201)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _shutdown(self) -> None:
        """The site, then the handlers of connections the relays kept open."""
        await self._runner.cleanup()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


@pytest.fixture
def relay(world, tmp_path):
    running = start_relay(world, tmp_path)
    yield running
    running.stop()


def start_relay(world, tmp_path, private_hosts: bool = True) -> RunningRelay:
    settings = make_settings(tmp_path / "var", delivery={
        "mx_port": world.port, "tls_ca_file": world.ca_file, "mta_sts_https_port": world.policies.port,
        "https_private_hosts": private_hosts, "retry_schedule": (60.0,), "command_timeout": 5.0})
    settings = dataclasses.replace(settings, dns=Dns(nameservers=(("127.0.0.1", world.dns.port),), dnssec=True))
    prepare(settings)
    running = RunningRelay(settings, ("submission", "delivery"))
    running.add_tenant()
    return running


def test_a_policy_host_on_a_private_address_is_not_asked_unless_allowed(world, tmp_path):
    """The domain's policy host resolves to 127.0.0.1: without https_private_hosts no request goes there, the
    domain has no policy, and its copy goes as it would without one."""
    fetched = len(world.policies.fetches)
    relay = start_relay(world, tmp_path, private_hosts=False)
    try:
        state, detail = outcome(relay, "enforce-plain.sts.test", {"delivered"})
    finally:
        relay.stop()
    assert state == "delivered" and detail.endswith("[TLS: none]")
    assert len(world.policies.fetches) == fetched


def outcome(relay, domain: str, states: set[str]) -> tuple[str, str]:
    """(state, the event detail: reply and TLS) of one copy to you@DOMAIN, once in one of `states`."""
    queue_id = submit(relay, (f"you@{domain}",))
    ((_, state, _),) = wait_states(relay, queue_id, states)
    deadline = time.monotonic() + 5                  # the event row follows the spool's state with the next commit
    while not (rows := events.of_message(relay.store, queue_id)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return state, rows[-1]["detail"]


def test_enforce_without_starttls_defers_and_sends_nothing_after_ehlo(world, relay):
    hop = world.hops["mx.plain.sts.test"]
    before, mails, received = hop.sessions, hop.mails, len(hop.received)     # the hops serve the whole module
    counted = {"policy": "sts", "result": "starttls-not-supported"}
    metric = REGISTRY.get_sample_value("websofttt_tls_sessions_total", counted) or 0
    state, detail = outcome(relay, "enforce-plain.sts.test", {"deferred"})
    assert state == "deferred" and detail.startswith("451 4.7.5 mx.plain.sts.test: STARTTLS not offered")
    assert "starttls-not-supported" in detail and "mta-sts policy of enforce-plain.sts.test" in detail
    assert hop.sessions > before and hop.mails == mails and len(hop.received) == received
    assert REGISTRY.get_sample_value("websofttt_tls_sessions_total", counted) == metric + 1


@pytest.mark.parametrize("domain,host,reply,result", [
    ("enforce-wrong.sts.test", "mx.wrong.sts.test", "Hostname mismatch", "certificate-host-mismatch"),
    ("enforce-expired.sts.test", "mx.expired.sts.test", "certificate has expired", "certificate-expired"),
    ("mismatch.dane.test", "mx.mismatch.dane.test", "no TLSA record matches the certificate chain", "validation-failure"),
], ids=["mta-sts-wrong-name", "mta-sts-expired", "dane-tlsa-mismatch"])
def test_a_certificate_that_proves_nothing_defers_and_sends_nothing(world, relay, domain, host, reply, result):
    mails = world.hops[host].mails
    state, detail = outcome(relay, domain, {"deferred"})
    assert detail.startswith(f"451 4.7.5 {host}: {reply}") and f"[TLS: refused: {result}]" in detail
    assert world.hops[host].mails == mails


def test_enforce_uses_only_the_mx_hosts_its_patterns_match(world, relay):
    plain = world.hops["mx.plain.sts.test"]
    before = plain.sessions
    state, detail = outcome(relay, "enforce-outside.sts.test", {"delivered"})
    assert state == "delivered" and "verified by mta-sts" in detail and "TLSv1.3" in detail
    assert plain.sessions == before                      # the MX host outside the policy is not even connected to
    assert any(r == ["you@enforce-outside.sts.test"] for _, r, _ in world.hops["mx.good.sts.test"].received)


def test_a_wildcard_pattern_matches_one_label(world, relay):
    assert outcome(relay, "enforce-good.sts.test", {"delivered"})[0] == "delivered"


def test_a_verified_connection_serves_every_domain_whose_policy_asks_the_same(world, relay):
    """Two domains with enforce policies that both allow mx.good: the second copy goes over the first's
    connection, already proven (as Workspace domains share Google's MX hosts)."""
    hop = world.hops["mx.good.sts.test"]
    assert outcome(relay, "enforce-good.sts.test", {"delivered"})[0] == "delivered"
    sessions = hop.sessions
    state, detail = outcome(relay, "enforce-outside.sts.test", {"delivered"})
    assert state == "delivered" and "verified by mta-sts" in detail
    assert hop.sessions == sessions


def test_testing_mode_delivers_and_reports_the_failure(world, relay):
    state, detail = outcome(relay, "testing.sts.test", {"delivered"})
    assert state == "delivered" and "mta-sts testing failed: certificate-host-mismatch" in detail
    assert any(r == ["you@testing.sts.test"] for _, r, _ in world.hops["mx.wrong.sts.test"].received)


def test_a_cached_policy_applies_when_the_policy_host_is_down(world, relay):
    """The store holds an enforce policy fetched under an older id; the TXT id changed, the fetch fails: the
    cached policy, still fresh, is the one in force (RFC 8461 §5.1)."""
    import time
    mta_sts.save(relay.store, "cached.sts.test",
                 mta_sts.Policy("enforce", ("mx.plain.sts.test",), 86400, "1", time.time() - 60))
    world.policies.down.add("cached.sts.test")
    state, detail = outcome(relay, "cached.sts.test", {"deferred"})
    assert "cached.sts.test" in world.policies.fetches
    assert detail.startswith("451 4.7.5 mx.plain.sts.test: STARTTLS not offered")
    assert mta_sts.cached(relay.store, "cached.sts.test").policy_id == "1"


def test_dane_ee_match_delivers(world, relay):
    state, detail = outcome(relay, "dane.test", {"delivered"})
    assert state == "delivered" and "verified by dane" in detail


def test_dane_ta_match_delivers(world, relay):
    state, detail = outcome(relay, "ta.dane.test", {"delivered"})
    assert state == "delivered" and "verified by dane" in detail


def test_bogus_tlsa_means_the_host_is_not_used(world, relay):
    hop = world.hops["mx.bogus.dane.test"]
    before = hop.sessions
    state, detail = outcome(relay, "bogus.dane.test", {"deferred"})
    assert detail.startswith("451 4.7.5 TLSA lookup for mx.bogus.dane.test failed")
    assert hop.sessions == before


def test_an_insecure_zone_gets_opportunistic_tls(world, relay):
    """The TLSA record would not match, but the zone is not signed: no DANE, the copy goes with TLS unverified."""
    state, detail = outcome(relay, "insecure.sts.test", {"delivered"})
    assert state == "delivered" and "not verified" in detail


def test_a_tls_rpt_report_of_a_day_with_both_outcomes(world, relay):
    """The first MX host's certificate names someone else, the second's is right: one failed and one successful
    session under one policy. The day's report goes to both of the domain's rua: POSTed gzipped, and mailed
    through the relay itself, DKIM-signed by the provider (RFC 8460 §3, §4, §5)."""
    assert outcome(relay, "rpt.sts.test", {"delivered"})[0] == "delivered"
    day = datetime.datetime.now(datetime.UTC).date().isoformat()
    deadline = time.monotonic() + 5                  # the counts are written with the next group commit
    while len(relay.store.all("SELECT * FROM tls_sessions WHERE domain = 'rpt.sts.test'")) < 2:
        assert time.monotonic() < deadline, "sessions not counted"
        time.sleep(0.02)

    resolver = make_resolver(relay.settings.dns)
    done = asyncio.run(tls_report.send_day(relay.settings, relay.store, relay.store.call, resolver, day))
    assert done == [{"domain": "rpt.sts.test", "day": day, "sent": [
        {"to": "mailto:tls@reports.sts.test", "result": "queued"},
        {"to": f"https://mta-sts.rpt.sts.test:{world.policies.port}/tlsrpt", "result": "HTTP 201"}]}]
    assert asyncio.run(tls_report.send_day(relay.settings, relay.store, relay.store.call, resolver, day)) == []   # once a day

    ((content_type, body),) = world.policies.reports
    assert content_type == "application/tlsrpt+gzip"
    report = json.loads(gzip.decompress(body))
    assert report["organization-name"] == "websofttt.com"
    assert report["date-range"] == {"start-datetime": f"{day}T00:00:00Z", "end-datetime": f"{day}T23:59:59Z"}
    assert report["contact-info"] == "mailto:postmaster@websofttt.com"
    assert report["report-id"] == f"{day}.rpt.sts.test@websofttt.com"
    (entry,) = report["policies"]
    assert entry["policy"] == {"policy-type": "sts", "policy-domain": "rpt.sts.test",
                               "policy-string": ["version: STSv1", "mode: enforce", "mx: mx.wrong.sts.test",
                                                 "mx: mx.good.sts.test", "max_age: 86400"],
                               "mx-host": ["mx.wrong.sts.test", "mx.good.sts.test"]}
    assert entry["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 1}
    assert entry["failure-details"] == [{"result-type": "certificate-host-mismatch", "receiving-mx-hostname":
                                         "mx.wrong.sts.test", "receiving-ip": "127.0.0.4", "failed-session-count": 1}]

    hop = world.hops["mx.good.sts.test"]
    deadline = time.monotonic() + 15                 # the outbox is read every second, then delivered
    while not (mailed := [d for _, r, d in hop.received if r == ["tls@reports.sts.test"]]):
        assert time.monotonic() < deadline, "the mailed report never arrived"
        time.sleep(0.1)
    message = email.message_from_bytes(mailed[0], policy=email.policy.default)
    assert message.get_content_type() == "multipart/report" and message["Content-Type"].params["report-type"] == "tlsrpt"
    assert message["TLS-Report-Domain"] == "rpt.sts.test" and message["TLS-Report-Submitter"] == "websofttt.com"
    (attachment,) = [part for part in message.iter_attachments() if part.get_content_type() == "application/tlsrpt+gzip"]
    assert json.loads(gzip.decompress(attachment.get_content())) == report
    assert attachment.get_filename().startswith("websofttt.com!rpt.sts.test!")
    public = dkim_public_value(load_private_key(relay.settings.dkim_key)).encode()
    assert dkim.verify(mailed[0], dnsfunc=lambda name, timeout=5: b"v=DKIM1; k=rsa; p=" + public)


@pytest.fixture
def config(world, tmp_path):
    """A configuration file for the command line, pointing at Unbound, the next hops and the policy server."""
    path = tmp_path / "websofttt.toml"
    path.write_text(f'[paths]\ndata_dir = "{tmp_path / "var"}"\n'
                    f'[dns]\nnameservers = ["127.0.0.1:{world.dns.port}"]\ndnssec = true\n'
                    f'[delivery]\nmx_port = {world.port}\ntls_ca_file = "{world.ca_file}"\n'
                    f'mta_sts_https_port = {world.policies.port}\nhttps_private_hosts = true\n')
    return path


def test_tls_report_show_and_send_by_hand(world, config, tmp_path):
    """`tls-report show` prints a day's report and where it goes; `tls-report send` sends it once."""
    store = migrated_store(load_settings(config))
    failed = tls_reports.Session("rpt.sts.test", "sts", ("version: STSv1",), "mx.wrong.sts.test", "127.0.0.4",
                                 "certificate-host-mismatch")
    tls_reports.count(store, "2026-12-01", failed)
    tls_reports.count(store, "2026-12-01", dataclasses.replace(failed, domain="enforce-good.sts.test"))  # no TLS-RPT
    store.close()
    done = run_cli("tls-report", "show", "--day", "2026-12-01", "--json", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    no_record, shown = json.loads(done.stdout)
    assert (no_record["domain"], no_record["rua"], no_record["rua_error"]) == ("enforce-good.sts.test", [], None)
    assert shown["domain"] == "rpt.sts.test" and shown["rua"][0] == "mailto:tls@reports.sts.test"
    assert shown["report"]["policies"][0]["summary"] == {"total-successful-session-count": 0,
                                                         "total-failure-session-count": 1}
    sent = run_cli("tls-report", "send", "--day", "2026-12-01", "--config", str(config), cwd=tmp_path)
    assert sent.returncode == 0 and sent.stdout.startswith("rpt.sts.test 2026-12-01: mailto:tls@reports.sts.test queued")
    assert run_cli("tls-report", "send", "--day", "2026-12-01", "--config", str(config), cwd=tmp_path).stdout == \
        "nothing to send\n"
    store = migrated_store(load_settings(config))        # the domain without a record is settled too: not looked up again
    assert tls_reports.domains(store, "2026-12-01") == ["enforce-good.sts.test", "rpt.sts.test"]
    assert tls_reports.domains(store, "2026-12-01", unsent=True) == []
    store.close()
    bad = run_cli("tls-report", "show", "--day", "yesterday", "--config", str(config), cwd=tmp_path)
    assert bad.returncode == 2 and "--day" in bad.stderr and "'yesterday' is not a date" in bad.stderr


def test_dns_check_prints_what_delivery_would_do(world, config, tmp_path):
    """`websofttt dns check` with a configuration pointing at Unbound: a DANE domain, an enforce policy whose
    patterns leave one MX host out, and a domain without MX (exit 0 either way, the error said)."""
    done = run_cli("dns", "check", "dane.test", "--json", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (host,) = json.loads(done.stdout)["hosts"]
    assert host == {"host": "mx.dane.test", "port": world.port, "address": "127.0.0.5", "mx_secure": True,
                    "policy": "dane", "enforce": True, "used": True,
                    "tlsa": [f"3 1 1 {spki_sha256(world.leaf['mx.dane.test'])}"],
                    "verdict": "STARTTLS and a chain matching its TLSA records"}

    done = run_cli("dns", "check", "rpt.sts.test", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "MTA-STS: enforce, mx mx.wrong.sts.test, mx.good.sts.test, max_age 86400 (id 2)" in done.stdout
    assert f"TLS-RPT: mailto:tls@reports.sts.test, https://mta-sts.rpt.sts.test:{world.policies.port}/tlsrpt" in done.stdout
    assert (f"mx.good.sts.test:{world.port} [127.0.0.2]: used: STARTTLS and a certificate valid for its name "
            "(MTA-STS enforce)") in done.stdout

    outside = json.loads(run_cli("dns", "check", "enforce-outside.sts.test", "--json", "--config", str(config),
                                 cwd=tmp_path).stdout)
    assert [(h["host"], h["used"]) for h in outside["hosts"]] == [("mx.plain.sts.test", False), ("mx.good.sts.test", True)]
    assert outside["hosts"][0]["verdict"].startswith("451 4.7.5 MX host mx.plain.sts.test is not in the MTA-STS policy")

    done = run_cli("dns", "check", "nowhere.sts.test", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0 and "no destination: 5.1.2 nowhere.sts.test: domain does not exist" in done.stdout

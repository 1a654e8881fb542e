"""AUTH as web apps use it, one new connection per message: generated credentials checked in microseconds,
people's passwords checked by scrypt once and then remembered, and every change seen at the next login."""
from __future__ import annotations

import base64
import os
import smtplib
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import REGISTRY

from policy import credentials, tenants
from relay.auth import CHECK_NICE, LOCKOUT_DELAY
from relay.logins import VerifiedLogins
from tests.conftest import PASSWORD, message

SLOW = 0.03         # seconds an answer takes at least when scrypt (N=2^15, ~0.1 s) ran or was waited for
NO_SCRYPT = 0.03    # seconds of this process's CPU (client and relay) per login at most when no scrypt ran;
                    # CPU, not time: other tests beside this one (make test runs them in parallel) slow it


def login(relay, user: str, secret: str, source: str = "127.0.0.1") -> tuple[int, str, float]:
    """(code, text, seconds the AUTH took) on a new STARTTLS connection from `source`; or those of the
    STARTTLS, if it was refused."""
    client = smtplib.SMTP("127.0.0.1", relay.port, timeout=30, source_address=(source, 0))
    started = time.perf_counter()
    try:
        client.starttls(context=relay.client_context())
    except smtplib.SMTPResponseException as e:
        client.close()
        return e.smtp_code, e.smtp_error.decode(), time.perf_counter() - started
    client.ehlo("app.example")
    blob = base64.b64encode(f"\0{user}\0{secret}".encode()).decode()
    started = time.perf_counter()
    code, text = client.docmd("AUTH", "PLAIN " + blob)
    seconds = time.perf_counter() - started
    client.close()
    return code, text.decode(), seconds


def median_seconds(relay, user: str, secret: str, times: int = 5) -> float:
    results = [login(relay, user, secret) for _ in range(times)]
    return statistics.median(seconds for _, _, seconds in results)


def cpu_per_login(relay, user: str, secret: str, times: int = 3) -> float:
    cpu = time.process_time()
    for _ in range(times):
        login(relay, user, secret)
    return (time.process_time() - cpu) / times


@pytest.fixture
def generated(relay) -> str:
    return credentials.generate(relay.store, "acme", "app2")


def test_a_generated_credential_logs_in_and_sends_without_scrypt(relay, generated, sink):
    assert login(relay, "app2", generated)[:2] == (235, "2.7.0 Authentication successful")
    assert cpu_per_login(relay, "app2", generated) < NO_SCRYPT
    client = relay.connect(login=("app2", generated))
    assert client.sendmail("app@example.com", ["you@example.net"], message()) == {}


def test_answers_take_as_long_whatever_kind_of_credential_a_username_has(relay_factory):
    """The presented secret decides the cost: the kind and existence of a username stay hidden."""
    relay = relay_factory(auth_failures=1000)
    relay.add_tenant()
    credentials.generate(relay.store, "acme", "app2")
    wrong = "wst_smtp_" + "A" * 43
    assert login(relay, "app2", wrong)[0] == 535 and login(relay, "nobody", wrong)[0] == 535
    assert cpu_per_login(relay, "app2", wrong) < NO_SCRYPT and cpu_per_login(relay, "nobody", wrong) < NO_SCRYPT
    # a secret in the shape of a person's password costs scrypt, for a generated username too
    assert median_seconds(relay, "app2", "not a generated secret", 3) > SLOW
    assert cpu_per_login(relay, "app1", "wst_smtp_guess") < NO_SCRYPT
    assert {login(relay, "app1", "wst_smtp_guess")[0], login(relay, "app2", "a password")[0]} == {535}


def logins_counted(check: str) -> float:
    return REGISTRY.get_sample_value("websofttt_auth_logins_total", {"check": check}) or 0.0


def test_a_verified_password_skips_scrypt_until_the_ttl(relay):
    before = {check: logins_counted(check) for check in ("password", "remembered")}
    first = login(relay, "app1", PASSWORD)
    assert first[0] == 235 and first[2] > SLOW
    assert cpu_per_login(relay, "app1", PASSWORD, 5) < NO_SCRYPT
    assert {check: logins_counted(check) - before[check] for check in before} == {"password": 1, "remembered": 5}
    assert login(relay, "app1", PASSWORD, source="127.0.0.2")[2] > SLOW     # verified for one address only


def test_failures_are_never_remembered(relay):
    for _ in range(3):
        code, _, seconds = login(relay, "app1", "wrong password, again")
        assert code == 535 and seconds > SLOW


def test_with_the_cache_off_every_login_costs_scrypt(relay_factory):
    relay = relay_factory(auth_cache_ttl=0)
    relay.add_tenant()
    assert login(relay, "app1", PASSWORD)[0] == 235
    assert median_seconds(relay, "app1", PASSWORD, 3) > SLOW


def test_a_removed_or_replaced_credential_fails_at_its_next_login(relay):
    assert login(relay, "app1", PASSWORD)[0] == 235 and login(relay, "app1", PASSWORD)[0] == 235
    credentials.remove(relay.store, "app1")
    assert login(relay, "app1", PASSWORD)[0] == 535
    credentials.add(relay.store, "acme", "app1", "a new password for app1")
    assert login(relay, "app1", PASSWORD)[0] == 535
    assert login(relay, "app1", "a new password for app1")[0] == 235


def test_a_suspended_tenant_with_a_remembered_login_cannot_send(relay):
    assert login(relay, "app1", PASSWORD)[0] == 235
    tenants.suspend(relay.store, "acme", "complaints under review")
    client = relay.connect()
    code, text = client.mail("app@example.com")
    assert code == 550 and text.decode().startswith("5.7.1 Sending is suspended for tenant acme")


def test_a_flood_of_guesses_at_a_username_does_not_lock_out_the_app_that_holds_it(relay):
    assert login(relay, "app1", PASSWORD)[0] == 235                       # the app, verified from 127.0.0.1
    for i in range(2, 8):                                                 # guessers, each from its own address
        assert login(relay, "app1", f"guess number {i}", source=f"127.0.0.{i}")[0] in (535, 454)
    assert login(relay, "app1", PASSWORD)[:2] == (235, "2.7.0 Authentication successful")
    # the username is locked for everyone else, the right password included: the lock is no oracle
    locked = (454, "4.7.0 Too many failed authentication attempts, try again later")
    assert login(relay, "app1", PASSWORD, source="127.0.0.9")[:2] == locked
    assert login(relay, "app1", "guess number 10", source="127.0.0.10")[:2] == locked


def test_a_locked_out_address_is_refused_before_the_cache(relay):
    assert login(relay, "app1", PASSWORD)[0] == 235
    for i in range(5):
        login(relay, f"user{i}", "guess guess guess")
    assert login(relay, "app1", PASSWORD)[0] == 454


def test_a_locked_out_address_is_refused_starttls_and_a_trusted_network_is_not(relay):
    """A guess from a locked-out address could only get 454 after a TLS handshake, which is most of what a
    guess costs the relay: it gets that 454 to STARTTLS instead, after the same delay, and stays in clear,
    where AUTH is not offered. Other addresses keep STARTTLS, and so does the locked address once it is
    in a tenant's trusted networks (which need no AUTH)."""
    for i in range(5):
        assert login(relay, f"user{i}", "guess guess guess", source="127.0.0.7")[0] == 535
    client = smtplib.SMTP("127.0.0.1", relay.port, timeout=30, source_address=("127.0.0.7", 0))
    client.ehlo("guesser.example")
    started = time.perf_counter()
    assert client.docmd("STARTTLS") == (454, b"4.7.0 Too many failed authentication attempts, try again later")
    assert time.perf_counter() - started >= LOCKOUT_DELAY
    assert client.ehlo("guesser.example")[0] == 250 and not client.has_extn("auth")
    assert client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0app1\0{PASSWORD}".encode()).decode())[0] == 538
    client.close()
    assert login(relay, "app1", PASSWORD, source="127.0.0.8")[0] == 235
    relay.add_tenant("intranet", networks=("127.0.0.7/32",), username=None)
    client = smtplib.SMTP("127.0.0.1", relay.port, timeout=30, source_address=("127.0.0.7", 0))
    client.starttls(context=relay.client_context())
    assert client.ehlo("intranet.example")[0] == 250
    client.quit()


def test_verified_logins_expire_and_are_bounded():
    now = [0.0]
    logins = VerifiedLogins(ttl=60, size=2, clock=lambda: now[0])
    logins.remember("192.0.2.1", "app1", b"secret one", "scrypt$a")
    assert logins.verified("192.0.2.1", "app1", b"secret one", "scrypt$a")
    for other in (("192.0.2.2", "app1", b"secret one", "scrypt$a"), ("192.0.2.1", "app2", b"secret one", "scrypt$a"),
                  ("192.0.2.1", "app1", b"secret two", "scrypt$a"), ("192.0.2.1", "app1", b"secret one", "scrypt$b")):
        assert not logins.verified(*other)
    now[0] = 61
    assert not logins.verified("192.0.2.1", "app1", b"secret one", "scrypt$a")
    for i in range(3):
        logins.remember("192.0.2.1", f"user{i}", b"s", "h")
    assert [logins.verified("192.0.2.1", f"user{i}", b"s", "h") for i in range(3)] == [False, True, True]
    assert not VerifiedLogins(ttl=0, size=10).verified("192.0.2.1", "app1", b"s", "h")


def test_guesses_queued_together_are_refused_once_the_failures_before_them_reach_the_limit(relay):
    """Ten wrong passwords for one username at once, each from its own address: the username's limit (5)
    is read when each check's turn comes, so only the first five are checked and the rest wait 454."""
    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda i: login(relay, "app1", f"guess number {i}", source=f"127.0.1.{i}")[0],
                              range(1, 11)))
    assert sorted(codes) == [454] * 5 + [535] * 5


def test_a_locked_out_client_waits_for_its_answer(relay):
    for _ in range(5):
        login(relay, "app1", "wrong password, again")
    code, _, seconds = login(relay, "app1", "wrong password, again")
    assert code == 454 and seconds >= LOCKOUT_DELAY


def test_password_checks_run_at_a_lower_cpu_priority(relay):
    """Under a flood of guesses the sessions get the CPU first; the guesses wait."""
    login(relay, "app1", "wrong password, again")
    checks = [t for t in threading.enumerate() if t.name.startswith("password-check")]
    assert checks and {os.getpriority(os.PRIO_PROCESS, t.native_id) for t in checks} == {CHECK_NICE} != {0}


def test_a_password_sprayer_waits_as_long_as_a_check_but_costs_no_scrypt(relay_factory):
    """New unknown usernames each time (no username is locked): each answer takes as long as a real
    check, but the relay spends the time asleep, not hashing."""
    relay = relay_factory(auth_failures=1000)
    relay.add_tenant()
    assert login(relay, "app1", "a wrong password")[0] == 535          # one real check: its duration is known
    cpu = time.process_time()
    results = [login(relay, f"nobody{i}", "a wrong password") for i in range(5)]
    assert {code for code, _, _ in results} == {535}
    assert statistics.median(seconds for _, _, seconds in results) > SLOW
    assert time.process_time() - cpu < 0.2        # five scrypt checks would take ~0.5 s of this process's CPU

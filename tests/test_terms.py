"""Terms of service changed with notice: business days, publication, notices and reminders through the outbox,
and the new version taking effect at MAIL on its date (an injected clock, then a real `serve` under faketime)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import ssl
import subprocess
from datetime import date, timedelta
from email import message_from_bytes

import dkim
import pytest

from policy import terms, terms_notices, tenants
from policy.business_days import Calendar
from policy.keys import dkim_public_value, load_private_key
from policy.settings import ConfigError, load_settings
from tests.conftest import PASSWORD, WEBSOFTTT, free_port, run_cli, serve_sink, Sink, wait_for_port
from tests.test_abuse import wait_for

US = Calendar("US")


def test_business_days_skip_weekends_and_the_us_federal_holidays_of_2027():
    holidays_2027 = [date(2027, 1, 1), date(2027, 1, 18), date(2027, 2, 15), date(2027, 5, 31), date(2027, 6, 18),
                     date(2027, 7, 5), date(2027, 9, 6), date(2027, 10, 11), date(2027, 11, 11), date(2027, 11, 25),
                     date(2027, 12, 24), date(2027, 12, 31)]     # observed days: Juneteenth, July 4th, Christmas on weekends
    assert not any(US.is_business_day(d) for d in holidays_2027)
    assert US.is_business_day(date(2027, 11, 26)) and not US.is_business_day(date(2027, 11, 27))   # Friday, Saturday
    assert US.after(date(2027, 11, 24), 1) == date(2027, 11, 26)           # Thanksgiving skipped
    # counted by hand: 30 business days after Tuesday 1 June 2027 skip 18 June and 5 July, ending on 15 July
    assert US.after(date(2027, 6, 1), 30) == date(2027, 7, 15)
    assert US.earliest_effective(date(2027, 6, 1), 30) == date(2027, 7, 16)
    assert US.before(date(2027, 7, 6), 1) == date(2027, 7, 2)              # back over the weekend and the 5th
    assert Calendar("DE", "BY").is_business_day(date(2027, 1, 6)) is False   # Epiphany in Bavaria ...
    assert Calendar("DE", "BE").is_business_day(date(2027, 1, 6)) is True    # ... not in Berlin


@pytest.mark.parametrize("lines, key", [
    ('holiday_country = "USA"', "holiday_country must be a two-letter country code"),
    ('holiday_country = "XX"', "holiday_country and holiday_subdivision: Country XX not available"),
    ('holiday_country = "DE"\nholiday_subdivision = "ZZ"', "does not have subdivision ZZ"),
    ("terms_notice_business_days = 29", "terms_notice_business_days must be at least 30"),
    ("terms_reminder_business_days = 30", "terms_reminder_business_days must be below"),
])
def test_the_calendar_and_notice_period_are_checked_at_start(tmp_path, lines, key):
    path = tmp_path / "websofttt.toml"
    path.write_text(f"[provider]\n{lines}\n")
    with pytest.raises(ConfigError, match=key):
        load_settings(path)


@pytest.fixture
def store(any_store):
    tenants.add(any_store, "acme", ["example.com"], [], None, "Acme", "ops@acme.example")
    tenants.add(any_store, "beta", ["beta.example"], [], None, None, "ops@beta.example")
    tenants.add(any_store, "quiet", ["quiet.example"], [], None, None, None)        # no contact address
    for t in ("acme", "beta", "quiet"):
        terms.accept(any_store, "2026-01", t, None)
    return any_store


def test_publish_needs_the_notice_period_and_a_date_after_the_last(store):
    june_1 = date(2027, 6, 1)
    with pytest.raises(terms.TermsError, match="earliest date allowed is 2027-07-16"):
        terms.publish(store, US, 30, "2027-07", date(2027, 7, 15), "What changes", None, june_1)
    with pytest.raises(terms.TermsError, match="fewer than 40 business days"):
        terms.publish(store, US, 40, "2027-07", date(2027, 7, 16), "What changes", None, june_1)
    terms.publish(store, US, 30, "2027-07", date(2027, 7, 16), "What changes", None, june_1)
    with pytest.raises(terms.TermsError, match="already published"):
        terms.publish(store, US, 30, "2027-07", date(2027, 9, 1), "Again", None, june_1)
    with pytest.raises(terms.TermsError, match="after 2027-07-16"):
        terms.publish(store, US, 30, "2027-06", date(2027, 7, 16), "Earlier", None, june_1)
    with pytest.raises(terms.TermsError, match="--url"):
        terms.publish(store, US, 30, "2027-09", date(2027, 9, 1), "x", "ftp://x", june_1)


def test_the_version_in_force_changes_on_its_date_and_accepting_a_later_one_covers_it(store):
    terms.publish(store, US, 30, "2027-07", date(2027, 7, 16), "What changes", None, date(2027, 6, 1))
    book = terms.book(store, "2026-01")
    assert [book.in_force(d) for d in (date(2027, 7, 15), date(2027, 7, 16))] == ["2026-01", "2027-07"]
    assert book.satisfied("2026-01", date(2027, 7, 15)) and not book.satisfied("2026-01", date(2027, 7, 16))
    assert book.satisfied("2027-07", date(2027, 7, 15)) and book.satisfied("2027-07", date(2027, 7, 16))
    assert not book.satisfied(None, date(2027, 7, 15))
    assert terms.accept(store, "2026-01", "acme", None) == "2027-07"            # the newest, by default
    assert terms.accept(store, "2026-01", "acme", "2026-01") == "2026-01"      # an older one: recorded, not a step back
    assert tenants.require(store, "acme").terms_version == "2027-07"
    assert {v["version"]: v["accepted"] for v in terms.summary(store, "2026-01")} == {"2026-01": 3, "2027-07": 1}


def test_a_changed_terms_version_without_publication_is_refused(store):
    with pytest.raises(terms.TermsError, match="websofttt terms publish 2027-01"):
        terms.seed(store, "2027-01")


def test_notices_go_to_every_contact_once_and_reminders_only_to_those_that_have_not_accepted(store):
    provider = load_settings(None).provider
    june_1 = date(2027, 6, 1)
    version = terms.publish(store, US, 30, "2027-07", date(2027, 7, 16), "Section 4 changes.", None, june_1)
    told = terms_notices.send(store, provider, "n1", terms.book(store, "2026-01"), version,
                              terms_notices.Kind.NOTICE, june_1)
    assert [n["tenant"] for n in told["sent"]] == ["acme", "beta"] and told["not_notified"] == ["quiet"]
    again = terms_notices.send(store, provider, "n1", terms.book(store, "2026-01"), version,
                               terms_notices.Kind.NOTICE, june_1)
    assert again["sent"] == []                                                  # recorded: never twice
    terms.accept(store, "2026-01", "beta", "2027-07")
    # 5 business days before Friday 16 July: Friday 9 July
    assert terms_notices.remind(store, provider, "n1", date(2027, 7, 8)) == []
    reminded = terms_notices.remind(store, provider, "n1", date(2027, 7, 9))
    assert [(n["tenant"], n["recipient"]) for n in reminded] == [("acme", "ops@acme.example")]
    assert terms_notices.remind(store, provider, "n1", date(2027, 7, 12)) == []        # once
    assert terms_notices.remind(store, provider, "n1", date(2027, 7, 16)) == []        # in force: too late to remind
    shown = terms_notices.of_version(store, "2027-07")
    assert [(n["tenant"], n["kind"]) for n in shown["notices"]] == [("acme", "notice"), ("beta", "notice"),
                                                                    ("acme", "reminder")]
    assert shown["not_notified"] == ["quiet"] and shown["accepted"] == ["beta"]
    queued = {r["id"] for r in store.all("SELECT id FROM outbox")}
    assert queued == {n["queue_id"] for n in shown["notices"]} and all(q.endswith(".n1") for q in queued)


def test_the_notice_is_signed_provider_mail_and_the_new_version_binds_at_mail_on_its_date(relay_factory, monkeypatch):
    """The recording sink receives the notice (DKIM verified with the provider's key); MAIL keeps working
    until the effective date and answers 550 5.7.1 from it, on the same running worker."""
    clock = {"today": date(2027, 6, 1)}
    monkeypatch.setattr(terms, "utc_today", lambda: clock["today"])
    sinks = serve_sink(Sink())
    sink = next(sinks)
    relay = relay_factory(roles=("submission", "delivery"),
                          delivery={"routes": {"acme.example": ("127.0.0.1", sink.port)}, "retry_schedule": (0.5,)})
    relay.add_tenant()
    tenants.change(relay.store, "acme", tenants.Change(contact="ops@acme.example"))
    provider = relay.settings.provider
    version = terms.publish(relay.store, US, 30, "2027-07", date(2027, 7, 16), "Section 4 changes.",
                            "https://websofttt.com/terms/2027-07", clock["today"])
    terms_notices.send(relay.store, provider, "test", terms.book(relay.store, provider.terms_version), version,
                       terms_notices.Kind.NOTICE, clock["today"])
    [(mail_from, rcpts, data)] = wait_for(lambda: sink.received)
    notice = message_from_bytes(data)
    assert (mail_from, rcpts) == ("<>", ["ops@acme.example"])
    assert notice["From"].endswith(f"<{provider.privacy_address}>") and notice["Auto-Submitted"] == "auto-generated"
    body = notice.get_payload(decode=True).decode()
    assert all(s in body for s in ("2027-07", "2027-07-16", "Section 4 changes.", "https://websofttt.com/terms/2027-07",
                                   "acme accepts version 2027-07"))
    public = dkim_public_value(load_private_key(relay.settings.dkim_key)).encode()
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5: b"v=DKIM1; k=rsa; p=" + public)

    client = relay.connect()
    clock["today"] = date(2027, 7, 15)
    assert client.mail("app@example.com")[0] == 250
    client.rset()
    clock["today"] = date(2027, 7, 16)
    code, text = client.mail("app@example.com")
    assert code == 550 and text.decode().startswith("5.7.1") and "version 2027-07" in text.decode()
    assert "websofttt tenant accept-terms acme --version 2027-07" in text.decode()
    terms.accept(relay.store, provider.terms_version, "acme", "2027-07")
    assert client.mail("app@example.com")[0] == 250
    client.quit()
    next(sinks, None)


def test_terms_commands(tmp_path):
    (tmp_path / "websofttt.toml").write_text('[node]\nname = "n1"\n')
    (tmp_path / "summary.txt").write_text("Section 4: we keep logs for 400 days.\n")
    for args in (["init"], ["tenant", "add", "acme", "--allow-from", "example.com", "--contact", "ops@acme.example"],
                 ["tenant", "add", "quiet", "--allow-from", "quiet.example"], ["tenant", "accept-terms", "acme"]):
        assert run_cli(*args, cwd=tmp_path).returncode == 0, args
    today = date.today()
    too_soon = run_cli("terms", "publish", "v2", "--effective", str(today + timedelta(days=20)),
                       "--summary-file", "summary.txt", cwd=tmp_path)
    earliest = US.earliest_effective(today, 30)
    assert too_soon.returncode == 2 and f"earliest date allowed is {earliest}" in too_soon.stderr
    published = run_cli("terms", "publish", "v2", "--effective", str(earliest), "--summary-file", "summary.txt",
                        cwd=tmp_path)
    assert published.returncode == 0, published.stderr
    assert "acme <ops@acme.example> queued as" in published.stdout and "no contact address): quiet" in published.stdout
    listed = run_cli("terms", "list", "--json", cwd=tmp_path)
    assert [(v["version"], v["accepted"], v["notified"]) for v in json.loads(listed.stdout)] == [("2026-01", 1, 0),
                                                                                                ("v2", 0, 1)]
    shown = run_cli("terms", "show", "v2", cwd=tmp_path).stdout
    assert "not notified: quiet" in shown and "Section 4: we keep logs" in shown
    assert run_cli("tenant", "accept-terms", "quiet", "--version", "v9", cwd=tmp_path).returncode == 2
    assert run_cli("tenant", "accept-terms", "quiet", cwd=tmp_path).stdout.strip() == "quiet accepted terms v2"
    (tmp_path / "websofttt.toml").write_text('[node]\nname = "n1"\n[provider]\nterms_version = "v3"\n')
    refused = run_cli("serve", cwd=tmp_path)
    assert refused.returncode == 2 and "websofttt terms publish v3" in refused.stderr


@pytest.mark.skipif(shutil.which("faketime") is None, reason="needs Debian's faketime (.ci/run installs it)")
def test_a_real_serve_reminds_then_enforces_on_the_date_under_faketime(tmp_path):
    """`websofttt serve` run as if on the reminder day, then on the effective date (libfaketime moves its
    clock): the reminder reaches the sink, and the tenant that did not accept is refused from the date on."""
    sinks = serve_sink(Sink())
    sink = next(sinks)
    port = free_port()
    (tmp_path / "websofttt.toml").write_text(
        f'[node]\nname = "n1"\nworkers = 1\n[submission]\nlisten = ["127.0.0.1:{port}"]\n'
        f'[delivery]\nroutes = {{ "acme.example" = "127.0.0.1:{sink.port}", "beta.example" = "127.0.0.1:{sink.port}" }}\n'
        f'[inbound]\nlisten = ["127.0.0.1:{free_port()}"]\n[http]\nlisten = ["127.0.0.1:{free_port()}"]\n')
    (tmp_path / "summary.txt").write_text("Section 4 changes.\n")
    assert run_cli("init", cwd=tmp_path).returncode == 0
    for t in ("acme", "beta"):
        for args in (["tenant", "add", t, "--allow-from", "example.com", "--contact", f"ops@{t}.example"],
                     ["tenant", "accept-terms", t]):
            assert run_cli(*args, cwd=tmp_path).returncode == 0, args
        assert run_cli("credential", "add", t, f"app-{t}", cwd=tmp_path, stdin=PASSWORD + "\n").returncode == 0
    today = terms.utc_today()
    effective = US.earliest_effective(today, 30)
    assert run_cli("terms", "publish", "v2", "--effective", str(effective), "--summary-file", "summary.txt",
                   cwd=tmp_path).returncode == 0
    assert run_cli("tenant", "accept-terms", "beta", "--version", "v2", cwd=tmp_path).returncode == 0

    def serve_on(day: date) -> subprocess.Popen:
        # every clock moves, the monotonic one too: Python's sleep fails (EINVAL) when only the wall clock does
        proc = subprocess.Popen(["faketime", "-f", f"+{(day - today).days}d", WEBSOFTTT, "serve"], cwd=tmp_path,
                                start_new_session=True, stdout=open(tmp_path / "serve.log", "a"), stderr=subprocess.STDOUT)
        wait_for_port(port)
        return proc

    def mail_from(tenant: str) -> tuple[int, str]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            c.starttls(context=ssl.create_default_context(cafile=str(tmp_path / "var/tls/cert.pem")))
            c.login(f"app-{tenant}", PASSWORD)
            code, text = c.mail("app@example.com")
            return code, text.decode()

    def stop(proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        wait_for(lambda: subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).returncode == 1)

    proc = serve_on(US.before(effective, 5))
    try:
        subjects = wait_for(lambda: len(sink.received) >= 3 and sorted(
            (r[0], message_from_bytes(d)["Subject"].split(":")[0]) for _, r, d in sink.received))
        assert subjects == [("ops@acme.example", "Notice"), ("ops@acme.example", "Reminder"), ("ops@beta.example", "Notice")]
        assert mail_from("acme")[0] == 250                   # the old version is still in force
    finally:
        stop(proc)
    proc = serve_on(effective)
    try:
        code, text = mail_from("acme")
        assert code == 550 and text.startswith("5.7.1") and "version v2" in text
        assert mail_from("beta")[0] == 250
    finally:
        stop(proc)
    next(sinks, None)

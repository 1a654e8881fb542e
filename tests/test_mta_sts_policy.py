"""MTA-STS records and policies read as RFC 8461 §3 writes them, and MX hosts matched as §4.1 says."""
from __future__ import annotations

import pytest

from policy import mta_sts
from policy.mta_sts import PolicyError, parse_policy, record_id


def test_the_record_id_of_the_one_sts_record():
    assert record_id(["v=STSv1; id=20160831085700Z;", "some other text"]) == "20160831085700Z"
    assert record_id(["v=STSv1;id=abc"]) == "abc"


@pytest.mark.parametrize("texts,why", [
    ([], "0 TXT records"),
    (["v=STSv1; id=1", "v=STSv1; id=2"], "2 TXT records"),
    (["v=STSv1; id=not-alnum"], "no valid id"),
    (["v=STSv1; id=" + "a" * 33], "no valid id"),
    (["v=STSv1; id"], "malformed"),
    (["v=STSv10; id=1"], "0 TXT records"),
])
def test_a_missing_or_malformed_record_is_no_policy(texts, why):
    with pytest.raises(PolicyError, match=why):
        record_id(texts)


def test_a_policy_with_crlf_lines_repeated_mx_and_unknown_keys():
    policy = parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\n"
                          "max_age: 604800\r\nextension: ignored\r\n", "20160831085700Z", 1000.0)
    assert policy == mta_sts.Policy("enforce", ("mail.example.com", "*.example.net"), 604800, "20160831085700Z", 1000.0)
    assert policy.fresh(1000.0 + 604799) and not policy.fresh(1000.0 + 604800)


@pytest.mark.parametrize("text,why", [
    ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1", "version"),
    ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1", "mode 'strict'"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1", "max_age"),
    ("version: STSv1\nmode: enforce\nmax_age: 86400", "names no mx"),
    ("version: STSv1\nmode: testing\nmx: a.*.example\nmax_age: 86400", "not a host name"),
    ("version: STSv1\nmode enforce", "malformed policy line"),
])
def test_a_malformed_policy_is_refused_saying_why(text, why):
    with pytest.raises(PolicyError, match=why):
        parse_policy(text)


def test_a_none_policy_needs_no_mx():
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 86400").mode == mta_sts.NONE


@pytest.mark.parametrize("host,matched", [
    ("mail.example.com", True), ("MAIL.example.com.", True), ("mx1.example.net", True),
    ("example.net", False), ("a.b.example.net", False), ("mail.example.org", False),
])
def test_mx_patterns_match_exact_names_and_one_wildcard_label(host, matched):
    policy = mta_sts.Policy("enforce", ("mail.example.com", "*.example.net"), 86400)
    assert policy.matches(host) is matched


def test_policies_are_shared_through_the_store(any_store):
    policy = mta_sts.Policy("testing", ("*.example.net",), 3600, "id1", 1234.5)
    mta_sts.save(any_store, "example.net", policy)
    assert mta_sts.cached(any_store, "example.net") == policy
    newer = mta_sts.Policy("enforce", ("mx.example.net",), 7200, "id2", 2000.0)
    mta_sts.save(any_store, "example.net", newer)
    assert mta_sts.cached(any_store, "example.net") == newer
    assert mta_sts.cached(any_store, "example.org") is None


def test_tls_sessions_are_counted_reported_claimed_once_and_purged(any_store):
    """Both engines: counts add up per kind, the report's summary and failures come from them, one node claims
    a day's report, and counts older than KEEP_DAYS go."""
    from datetime import date

    from policy import tls_reports
    from policy.tls_reports import Session
    ok = Session("example.net", "tlsa", ("3 1 1 ab",), "mx.example.net", "192.0.2.1", "success")
    bad = Session("example.net", "tlsa", ("3 1 1 ab",), "mx.example.net", "192.0.2.1", "validation-failure")
    for session in (ok, ok, bad):
        tls_reports.count(any_store, "2026-12-05", session)
    tls_reports.count(any_store, "2026-10-01", ok)
    assert tls_reports.domains(any_store, "2026-12-05") == ["example.net"]
    (entry,) = tls_reports.report(any_store, "2026-12-05", "example.net", "relay.example", "mailto:pm@relay.example")["policies"]
    assert entry["summary"] == {"total-successful-session-count": 2, "total-failure-session-count": 1}
    assert entry["policy"]["mx-host"] == ["mx.example.net"] and entry["policy"]["policy-string"] == ["3 1 1 ab"]
    assert tls_reports.claim(any_store, "2026-12-05", "example.net", "n1")
    assert not tls_reports.claim(any_store, "2026-12-05", "example.net", "n2")
    assert tls_reports.domains(any_store, "2026-12-05", unsent=True) == []
    assert tls_reports.purge(any_store, date(2026, 12, 6)) == 1
    assert tls_reports.domains(any_store, "2026-10-01") == []

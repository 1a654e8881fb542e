"""Tests for the header-integrity policy (policy/headers.py)."""

import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from policy.headers import HeaderCheck, HeaderPolicy, check_headers

POLICY = HeaderPolicy(
    provider_domains=frozenset({"websofttt.com", "bounces.websofttt.com"}),
    provider_hostname="relay.websofttt.com",
)
TENANT_DOMAINS = frozenset({"tenant.example"})
BASE = (
    "From: Alice <alice@tenant.example>",
    "To: bob@example.net",
    "Subject: Hello",
    "Date: Tue, 25 Nov 2025 11:00:00 +0000",
    "Message-ID: <1@tenant.example>",
)
BODY = b"Hi Bob,\r\n\r\nsee you.\r\n"
REPLY = re.compile(r"\A[245]\d\d [245]\.\d{1,3}\.\d{1,3} [ -~]+\Z")


def build(*extra: str | bytes, drop: tuple[str, ...] = (), body: bytes = BODY) -> bytes:
    """BASE headers minus those named in drop, plus extra lines, a blank line, the body."""
    lines = [h.encode() for h in BASE if h.split(":")[0].lower() not in drop]
    lines += [x if isinstance(x, bytes) else x.encode() for x in extra]
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


def check(raw: bytes, smtputf8: bool = False,
          allowed: frozenset[str] = TENANT_DOMAINS) -> HeaderCheck:
    return check_headers(raw, POLICY, allowed, smtputf8)


def reply(raw: bytes, **kwargs) -> str | None:
    return check(raw, **kwargs).reply


# --- accepted messages ------------------------------------------------------

def test_plain_message_is_accepted_with_parsed_facts():
    raw = build()
    result = check(raw)
    assert result == HeaderCheck(reply=None, header_end=len(raw) - len(BODY),
                                 from_domain="tenant.example", has_message_id=True,
                                 has_date=True, campaign=None)
    assert raw[result.header_end:] == BODY


@pytest.mark.parametrize("subject", [
    "=?utf-8?b?SGVsbG8gV8O2cmxk?=",                      # Hello Wörld
    "=?iso-8859-1?q?caf=E9_cr=E8me?=",
    "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus =?utf-8?b?S8O2bG4=?=",
    "=?utf-8?b?4pyT?=\r\n =?utf-8?b?IGRvbmU=?=",         # folded between encoded-words
])
def test_rfc2047_subject_is_accepted(subject):
    assert reply(build(f"Subject: {subject}", drop=("subject",))) is None


@pytest.mark.parametrize("extra", [
    "Subject: a long subject\r\n that continues\r\n\ton a third line",
    "To: bob@example.net,\r\n carol@example.net",
    "From: Alice Example\r\n <alice@tenant.example>",
    "References: <1@x>\r\n <2@x>\r\n <3@x>",
])
def test_folded_headers_are_accepted(extra):
    name = extra.split(":")[0].lower()
    assert reply(build(extra, drop=(name,))) is None


@pytest.mark.parametrize("sender", [
    "Alice Example <alice@tenant.example>",
    '"Example, Alice" <alice@tenant.example>',
    "=?utf-8?q?Al=C3=AFce?= <alice@tenant.example>",
    "alice@tenant.example",
    "<alice@tenant.example>",
    "alice@tenant.example (Alice)",
    "Alice <alice@TENANT.Example>",
])
def test_from_on_allowed_domain_is_accepted(sender):
    result = check(build(f"From: {sender}", drop=("from",)))
    assert (result.reply, result.from_domain) == (None, "tenant.example")


@pytest.mark.parametrize("domain", ["websofttt.com", "bounces.websofttt.com"])
def test_from_on_provider_domain_is_accepted_without_tenant_domains(domain):
    raw = build(f"From: Notices <notices@{domain}>", drop=("from",))
    result = check(raw, allowed=frozenset())
    assert (result.reply, result.from_domain) == (None, domain)


def test_8bit_utf8_subject_needs_smtputf8():
    raw = build("Subject: Grüße aus Köln ✓", drop=("subject",))
    assert reply(raw, smtputf8=True) is None
    assert reply(raw, smtputf8=False) == "554 5.6.0 8-bit header without SMTPUTF8"


def test_8bit_subject_mixing_raw_utf8_and_encoded_words_is_accepted():
    raw = build("Subject: Grüße =?utf-8?q?aus_K=C3=B6ln?=", drop=("subject",))
    assert reply(raw, smtputf8=True) is None


def test_internationalised_from_domain_matches_its_a_label():
    raw = build("From: Jörg <j@münchen.example>", drop=("from",))
    result = check(raw, smtputf8=True, allowed=frozenset({"xn--mnchen-3ya.example"}))
    assert (result.reply, result.from_domain) == (None, "münchen.example")


def test_dkim_signature_of_the_tenant_passes():
    dkim = ("DKIM-Signature: v=1; a=rsa-sha256; d=tenant.example; s=s1;\r\n"
            "\th=from:to:subject; bh=abc=; b=def=")
    assert reply(build(dkim)) is None


@pytest.mark.parametrize("d", ["notwebsofttt.com", "websofttt.com.evil.org", "tenant.example"])
def test_dkim_signature_of_lookalike_domains_passes(d):
    assert reply(build(f"DKIM-Signature: v=1; d={d}; s=s1; b=x")) is None


def test_received_naming_another_host_passes():
    received = ("Received: from laptop (laptop.tenant.example [192.0.2.7])\r\n"
                "\tby mx.tenant.example; Tue, 25 Nov 2025 10:59:00 +0000")
    assert reply(build(received)) is None


# --- header_end and parsed facts --------------------------------------------

@pytest.mark.parametrize("raw,header_end", [
    (b"Subject: x\r\n\r\n", 14),                          # empty body
    (b"Subject: x\r\n\r\nbody\r\n\r\nmore\r\n", 14),      # first blank line counts
    (b"Subject: x\r\nTo: a@b\r\n", 21),                   # no blank line: all header
    (b"\r\nbody\r\n", 2),                                  # empty header block
    (b"", 0),
])
def test_header_end_is_the_body_offset(raw, header_end):
    assert check(raw).header_end == header_end


def test_header_end_splits_off_the_body_exactly():
    raw = build(body=b"line 1\r\n\r\nline 3\r\n")
    assert raw[check(raw).header_end:] == b"line 1\r\n\r\nline 3\r\n"


def test_missing_message_id_and_date_are_reported():
    result = check(build(drop=("message-id", "date")))
    assert result.reply is None
    assert (result.has_message_id, result.has_date) == (False, False)


def test_header_names_match_case_insensitively_for_facts():
    raw = build("MESSAGE-id: <2@tenant.example>", "date: Tue, 25 Nov 2025 11:00:00 +0000",
                drop=("message-id", "date"))
    result = check(raw)
    assert (result.reply, result.has_message_id, result.has_date) == (None, True, True)


@pytest.mark.parametrize("line,campaign", [
    ("X-Campaign:  spring-sale \t", "spring-sale"),
    ("x-campaign: Winter", "Winter"),
    ("X-Campaign:   ", None),
])
def test_campaign_is_the_stripped_x_campaign_value(line, campaign):
    result = check(build(line))
    assert (result.reply, result.campaign) == (None, campaign)


def test_campaign_is_none_without_x_campaign():
    assert check(build()).campaign is None


# --- rule 1: syntax -----------------------------------------------------------

def test_header_line_of_998_octets_is_accepted_and_999_refused():
    prefix = "X-Long: "
    ok = build(prefix + "a" * (998 - len(prefix)))
    too_long = build(prefix + "a" * (999 - len(prefix)))
    assert reply(ok) is None
    assert reply(too_long) == "554 5.6.0 Header line longer than 998 octets"


def test_header_line_length_counts_octets_not_characters():
    prefix = "X-Long: "
    raw = build(prefix + "é" * (998 - len(prefix)))  # 2 octets per character
    assert reply(raw, smtputf8=True) == "554 5.6.0 Header line longer than 998 octets"


def test_long_line_in_body_is_not_a_header_problem():
    assert reply(build(body=b"x" * 5000 + b"\r\n")) is None


@pytest.mark.parametrize("raw", [
    b"Subject: x\nFrom: alice@tenant.example\n\nbody\n",
    build("X-Test: a\nb"),
    build("X-Test: a\rb"),
    build("X-Test: a\r"),
    b"Subject: x\r\r\n\r\n",
    b"Subject: x\r",
])
def test_bare_cr_or_lf_in_header_is_refused(raw):
    assert reply(raw) == "554 5.6.0 Bare CR or LF in message header"


def test_bare_lf_in_body_is_not_a_header_problem():
    assert reply(build(body=b"unix\nline\n")) is None


def test_invalid_utf8_header_is_refused_with_smtputf8():
    raw = build(b"Subject: caf\xe9", drop=("subject",))
    assert reply(raw, smtputf8=True) == "554 5.6.0 Header is not valid UTF-8"
    assert reply(raw, smtputf8=False) == "554 5.6.0 8-bit header without SMTPUTF8"


@pytest.mark.parametrize("raw", [
    b" Subject: starts with a continuation\r\n\r\n",
    build("This line has no colon"),
    build("Sub ject: space in name"),
    build("Subject : space before colon", drop=("subject",)),
    build(": empty name"),
    build("Sübject: non-ASCII name", drop=("subject",)),
])
def test_malformed_header_line_is_refused(raw):
    assert reply(raw, smtputf8=True) == "554 5.6.0 Malformed header line"


def test_syntax_is_checked_before_other_rules():
    raw = b"X-WebSoftTT-Tenant: t1\r\nTo: a@b\r\nTo: c@d\r\nX-Bad: \n\r\n\r\n"
    assert reply(raw) == "554 5.6.0 Bare CR or LF in message header"


# --- rule 5: forged provider identity ----------------------------------------

@pytest.mark.parametrize("line,shown", [
    ("X-WebSoftTT-Tenant: t1", "X-WebSoftTT-Tenant"),
    ("x-websofttt-queue-id: 42", "x-websofttt-queue-id"),
    ("Feedback-ID: spring:t1:websofttt", "Feedback-ID"),
    ("feedback-id: spring:t1:websofttt", "Feedback-ID"),
    ("List-Unsubscribe-Post: List-Unsubscribe=One-Click", "List-Unsubscribe-Post"),
])
def test_provider_header_is_reserved(line, shown):
    assert reply(build(line)) == f"550 5.7.1 Header {shown} is reserved for the provider"


@pytest.mark.parametrize("tags,d", [
    ("v=1; a=rsa-sha256; d=websofttt.com; s=s1; b=x", "websofttt.com"),
    ("v=1; d=mail.websofttt.com; s=s1; b=x", "mail.websofttt.com"),
    ("v=1; d = WebSoftTT.com. ; s=s1; b=x", "websofttt.com"),
    ("v=1; s=s1;\r\n\td=\r\n bounces.\r\n websofttt.com; b=x", "bounces.websofttt.com"),
    ("v=1;d=websofttt.com", "websofttt.com"),
])
def test_dkim_signature_with_provider_domain_is_refused(tags, d):
    assert reply(build(f"DKIM-Signature: {tags}")) == (
        f"550 5.7.1 DKIM-Signature with d={d} forges the provider's signature")


def test_second_dkim_signature_with_provider_domain_is_refused():
    raw = build("DKIM-Signature: v=1; d=tenant.example; s=s1; b=x",
                "DKIM-Signature: v=1; d=websofttt.com; s=s1; b=x")
    assert reply(raw) == (
        "550 5.7.1 DKIM-Signature with d=websofttt.com forges the provider's signature")


@pytest.mark.parametrize("received", [
    "Received: from t1 by relay.websofttt.com with ESMTPSA; Tue, 25 Nov 2025 11:00:00 +0000",
    "Received: from t1\r\n\tby RELAY.WebSoftTT.com; Tue, 25 Nov 2025 11:00:00 +0000",
])
def test_received_naming_the_provider_host_is_refused(received):
    assert reply(build(received)) == "550 5.7.1 Received header names the provider host"


def test_received_is_not_matched_against_an_unset_provider_hostname():
    policy = HeaderPolicy(POLICY.provider_domains, provider_hostname="")
    raw = build("Received: by mx.tenant.example; Tue, 25 Nov 2025 10:59:00 +0000")
    assert check_headers(raw, policy, TENANT_DOMAINS, False).reply is None


def test_provider_hostname_matches_case_insensitively():
    policy = HeaderPolicy(POLICY.provider_domains, provider_hostname="Relay.WebSoftTT.com")
    raw = build("Received: from t1 by relay.websofttt.com; Tue, 25 Nov 2025 11:00:00 +0000")
    assert check_headers(raw, policy, TENANT_DOMAINS, False).reply == (
        "550 5.7.1 Received header names the provider host")


def test_reserved_header_name_is_shortened_in_the_reply():
    name = "X-WebSoftTT-" + "A" * 300
    result = reply(build(f"{name}: x"))
    assert result == f"550 5.7.1 Header {name[:100]}... is reserved for the provider"


def test_forgery_is_checked_before_duplicates_subject_and_from():
    raw = build("To: carol@example.net", "Feedback-ID: a:b:c", drop=("subject", "from"))
    assert reply(raw) == "550 5.7.1 Header Feedback-ID is reserved for the provider"


# --- rule 4: duplicates ---------------------------------------------------------

@pytest.mark.parametrize("first,second,name", [
    ("Date: Tue, 25 Nov 2025 11:00:00 +0000", "DATE: Wed, 26 Nov 2025 11:00:00 +0000", "Date"),
    ("Message-ID: <1@x>", "message-id: <2@x>", "Message-ID"),
    ("To: a@example.net", "to: b@example.net", "To"),
    ("Cc: a@example.net", "CC: b@example.net", "Cc"),
    ("Bcc: a@example.net", "Bcc: b@example.net", "Bcc"),
    ("Reply-To: a@example.net", "reply-to: b@example.net", "Reply-To"),
    ("Sender: a@tenant.example", "Sender: b@tenant.example", "Sender"),
    ("In-Reply-To: <1@x>", "In-Reply-To: <2@x>", "In-Reply-To"),
    ("References: <1@x>", "References: <2@x>", "References"),
])
def test_duplicate_single_fields_are_refused(first, second, name):
    raw = build(first, second, drop=("date", "message-id", "to"))
    assert reply(raw) == f"554 5.6.0 Message has more than one {name} header"


def test_duplicates_are_checked_before_subject_and_from():
    raw = build("To: carol@example.net", drop=("subject", "from"))
    assert reply(raw) == "554 5.6.0 Message has more than one To header"


# --- rule 2: Subject ------------------------------------------------------------

def test_missing_subject_is_refused():
    assert reply(build(drop=("subject",))) == "554 5.6.0 Message has no Subject header"


def test_two_subjects_are_refused():
    raw = build("SUBJECT: again")
    assert reply(raw) == "554 5.6.0 Message has more than one Subject header"


@pytest.mark.parametrize("subject", [
    "=?x-unknown?q?abc?=",           # unknown charset
    "=?utf-8?b?A?=",                 # bad base64
    "=?utf-8?b?/w==?=",              # not UTF-8 after decoding
    "=?rot13?q?abc?=",               # not a text encoding
])
def test_undecodable_subject_is_refused(subject):
    raw = build(f"Subject: {subject}", drop=("subject",))
    assert reply(raw) == "554 5.6.0 Subject cannot be decoded"


@pytest.mark.parametrize("subject", ["", "   ", " \t ", "=?utf-8?q??=", "=?utf-8?b?ICA=?="])
def test_empty_subject_is_refused(subject):
    raw = build(f"Subject:{subject}", drop=("subject",))
    assert reply(raw) == "554 5.6.0 Subject is empty"


@pytest.mark.parametrize("subject", [
    "=?utf-8?q?a=00b?=",             # NUL
    "=?utf-8?q?=1B[31mred?=",        # ESC
    "=?utf-8?q?a=09b?=",             # encoded tab
    "=?utf-8?q?trail=0A?=",          # encoded LF at the edge (not hidden by trimming)
    "=?iso-8859-1?q?del=7F?=",       # DEL
    "=?utf-8?q?nel=C2=85?=",         # C1 (U+0085)
    "=?iso-8859-1?q?c1=9B?=",        # C1 (U+009B)
])
def test_subject_with_control_characters_is_refused(subject):
    raw = build(f"Subject: {subject}", drop=("subject",))
    assert reply(raw) == "554 5.6.0 Subject contains control characters"


def test_raw_c1_character_in_utf8_subject_is_refused():
    raw = build("Subject: a\u0085b", drop=("subject",))
    assert reply(raw, smtputf8=True) == "554 5.6.0 Subject contains control characters"


def test_subject_is_checked_before_from():
    raw = build(drop=("subject", "from"))
    assert reply(raw) == "554 5.6.0 Message has no Subject header"


# --- rule 3: From ---------------------------------------------------------------

def test_missing_from_is_refused():
    assert reply(build(drop=("from",))) == "550 5.7.1 Message has no From header"


def test_two_froms_are_refused():
    raw = build("from: Bob <bob@tenant.example>")
    assert reply(raw) == "550 5.7.1 Message has more than one From header"


@pytest.mark.parametrize("sender", [
    "",
    "not an address",
    "alice@tenant.example, bob@tenant.example",
    "mallory@evil.example, alice@tenant.example",   # lenient parsing would see tenant.example
    "Mallory <m@evil.example> <alice@tenant.example>",
    "Friends: alice@tenant.example, bob@tenant.example;",
    "undisclosed-recipients:;",
    "http://websofttt.com/",
    "alice@tenant.example@evil.example",
    "alice@tenant.example.",
])
def test_unparsable_from_is_refused(sender):
    result = check(build(f"From: {sender}", drop=("from",)))
    assert (result.reply, result.from_domain) == ("550 5.7.1 From header cannot be parsed", "")


@pytest.mark.parametrize("sender,domain", [
    ("Mallory <mallory@evil.example>", "evil.example"),
    ("m@sub.tenant.example", "sub.tenant.example"),
    ('"alice@tenant.example" <m@Evil.Example>', "evil.example"),
    ("m@websofttt.com.evil.example", "websofttt.com.evil.example"),
])
def test_from_domain_not_allowed_is_refused_naming_the_domain(sender, domain):
    result = check(build(f"From: {sender}", drop=("from",)))
    assert result.reply == f"550 5.7.1 From domain {domain} is not allowed for this sender"
    assert result.from_domain == domain


def test_refused_internationalised_from_domain_is_named_in_ascii():
    raw = build("From: j@münchen.example", drop=("from",))
    assert reply(raw, smtputf8=True) == (
        "550 5.7.1 From domain xn--mnchen-3ya.example is not allowed for this sender")


def test_tenant_domains_do_not_leak_between_tenants():
    raw = build()
    assert reply(raw, allowed=frozenset({"other.example"})) == (
        "550 5.7.1 From domain tenant.example is not allowed for this sender")


def test_rejections_leave_parsed_facts_empty_before_from():
    result = check(build("X-WebSoftTT-Tenant: t1"))
    assert result.reply is not None
    assert result.from_domain == ""


# --- robustness -------------------------------------------------------------------

def _assert_well_formed(result: HeaderCheck, raw: bytes) -> None:
    assert isinstance(result, HeaderCheck)
    assert 0 <= result.header_end <= len(raw)
    assert result.reply is None or (REPLY.match(result.reply) and len(result.reply) <= 512)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=2000), smtputf8=st.booleans())
def test_arbitrary_bytes_never_raise(raw, smtputf8):
    _assert_well_formed(check(raw, smtputf8=smtputf8), raw)


_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"),
                max_size=120)
_WORDS = st.lists(st.sampled_from([
    "=?utf-8?q?", "=?utf-8?b?", "=?x?q?", "?=", "<", ">", "@", "@tenant.example",
    "@websofttt.com", '"', ",", ";", ":", "(", ")", " ", "\t", "=C3", "=00", "xn--",
    "a", "é", "\x85", "d=websofttt.com",
]), max_size=20).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=st.one_of(_TEXT, _WORDS), sender=st.one_of(_TEXT, _WORDS))
def test_arbitrary_subject_and_from_never_raise(subject, sender):
    raw = build(f"Subject: {subject}", f"From: {sender}", drop=("subject", "from"))
    _assert_well_formed(check(raw, smtputf8=True), raw)

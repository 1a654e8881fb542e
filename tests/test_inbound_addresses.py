"""The port-25 recipient allow-list: provider role addresses are accepted, nothing is ever relayed."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from inbound.addresses import Refusal, Role, classify_rcpt
from policy.settings import Provider
from policy.tokens import TokenKeys

DEFAULT = Provider()
CUSTOM = Provider(domain="mail.example", bounce_domain="b.mail.example", hostname="relay.mail.example",
                  abuse_address="abuse-desk@mail.example", privacy_address="dpo@b.mail.example")
TOKEN = "mfrggzdfmztwq2lknnwg23tpobyxe43uov"          # 34 characters, as policy.tokens issues them
DENIED, UNKNOWN = "550 5.7.1", "550 5.1.1"
REPLY = re.compile(r"550 5\.(?:7\.1 <[!-~]{0,100}> relaying denied|1\.1 <[!-~]{0,100}> no such user here)")

ACCEPTED = [
    # (provider, address, kind, token, normalised address)
    (DEFAULT, "unsubscribe@websofttt.com", "unsubscribe", None, "unsubscribe@websofttt.com"),
    (DEFAULT, "UnSubscribe@WebSoftTT.COM", "unsubscribe", None, "unsubscribe@websofttt.com"),
    (DEFAULT, f"unsubscribe+{TOKEN}@websofttt.com", "unsubscribe", TOKEN, f"unsubscribe+{TOKEN}@websofttt.com"),
    (DEFAULT, f"UNSUBSCRIBE+{TOKEN.upper()}@WEBSOFTTT.COM", "unsubscribe", TOKEN,
     f"unsubscribe+{TOKEN}@websofttt.com"),
    (DEFAULT, f"<unsubscribe+{TOKEN}@websofttt.com>", "unsubscribe", TOKEN, f"unsubscribe+{TOKEN}@websofttt.com"),
    (DEFAULT, "unsubscribe+A@websofttt.com", "unsubscribe", "a", "unsubscribe+a@websofttt.com"),
    (DEFAULT, "unsubscribe+" + "7" * 64 + "@websofttt.com", "unsubscribe", "7" * 64,
     "unsubscribe+" + "7" * 64 + "@websofttt.com"),
    (DEFAULT, "abuse@websofttt.com", "abuse", None, "abuse@websofttt.com"),
    (DEFAULT, "ABUSE@websofttt.com", "abuse", None, "abuse@websofttt.com"),
    (DEFAULT, "4Abuse@WebSoftTT.com", "abuse", None, "4abuse@websofttt.com"),
    (DEFAULT, "4PRIVACY@websofttt.com", "privacy", None, "4privacy@websofttt.com"),
    (DEFAULT, "postmaster@websofttt.com", "postmaster", None, "postmaster@websofttt.com"),
    (DEFAULT, "PostMaster@Bounces.WebSoftTT.com", "postmaster", None, "postmaster@bounces.websofttt.com"),
    (DEFAULT, "Postmaster", "postmaster", None, "postmaster"),
    (DEFAULT, "<POSTMASTER>", "postmaster", None, "postmaster"),
    (DEFAULT, f"bounce+{TOKEN}@bounces.websofttt.com", "bounce", TOKEN, f"bounce+{TOKEN}@bounces.websofttt.com"),
    (DEFAULT, f"Bounce+{TOKEN.upper()}@BOUNCES.websofttt.COM", "bounce", TOKEN,
     f"bounce+{TOKEN}@bounces.websofttt.com"),
    (DEFAULT, "BOUNCE@bounces.websofttt.com", "bounce", None, "bounce@bounces.websofttt.com"),
    # a custom provider: nothing about websofttt.com is hard-coded
    (CUSTOM, "Abuse-Desk@Mail.Example", "abuse", None, "abuse-desk@mail.example"),
    (CUSTOM, "abuse@mail.example", "abuse", None, "abuse@mail.example"),
    (CUSTOM, "DPO@B.Mail.Example", "privacy", None, "dpo@b.mail.example"),      # privacy on the bounce domain
    (CUSTOM, "unsubscribe+Abc@mail.example", "unsubscribe", "abc", "unsubscribe+abc@mail.example"),
    (CUSTOM, "unsubscribe@MAIL.example", "unsubscribe", None, "unsubscribe@mail.example"),
    (CUSTOM, "bounce+XyZ234@b.mail.example", "bounce", "xyz234", "bounce+xyz234@b.mail.example"),
    (CUSTOM, "postmaster@B.MAIL.EXAMPLE", "postmaster", None, "postmaster@b.mail.example"),
    (CUSTOM, "postMaster", "postmaster", None, "postmaster"),
]


@pytest.mark.parametrize("provider, address, kind, token, normal", ACCEPTED, ids=[a[1][:60] for a in ACCEPTED])
def test_role_addresses_are_accepted(provider, address, kind, token, normal):
    assert classify_rcpt(address, provider) == Role(kind, token, normal)


RELAY_TRICKS = [
    "a%b@websofttt.com",                                  # percent hack
    "unsubscribe%evil.com@websofttt.com",
    "postmaster%evil.com@bounces.websofttt.com",
    "evil.com!user@websofttt.com",                        # bang path
    "evil.com!unsubscribe@websofttt.com",
    '"a@b"@websofttt.com',                                # quoted local parts
    '"unsubscribe"@websofttt.com',
    '"postmaster"@websofttt.com',
    "@websofttt.com:a@b",                                 # source routes
    "<@a,@b:c@d>",
    "@websofttt.com:unsubscribe@websofttt.com",
    "user@[127.0.0.1]",                                   # IP literals
    "postmaster@[127.0.0.1]",
    "unsubscribe@[IPv6:::1]",
    "unsubscribe@websofttt.com.",                         # trailing dots
    "postmaster@bounces.websofttt.com.",
    "unsubscribe@websofttt.com.evil.org",                 # look-alike domains
    "unsubscribe@websofttt.co",
    "unsubscribe@xn--websoftt-9za.com",
    "unsubscribe@websofttt.com@evil.org",
    "unsubscribe@mail.websofttt.com",
    f"bounce+{TOKEN}@evil.bounces.websofttt.com",
    "abuse@websofttt.com@websofttt.com",                  # several @
    "@websofttt.com",                                     # empty local part
    "unsubscribe@",
    "unsubscribe",
    "",
    "<>",
    "unsubscribe @websofttt.com",                         # whitespace
    " unsubscribe@websofttt.com",
    "unsubscribe@websofttt.com ",
    "unsub\tscribe@websofttt.com",
    "unsubscribe\r\n@websofttt.com",                      # control characters, NUL
    "unsubscribe\x00@websofttt.com",
    "unsubscribe@websofttt.com\x00evil.org",
    "postmaster\x7f",
    "a" * 241 + "@websofttt.com",                         # 255 characters; 254 is only unknown (below)
    "unsubscribé@websofttt.com",                          # non-ASCII
    "unsubscribe@websofttт.com",                          # Cyrillic te
    "ｕnsubscribe@websofttt.com",                          # full-width u
    "user@example.org",                                   # other domains
    "postmaster@example.org",
    "abuse@example.org",
]


@pytest.mark.parametrize("address", RELAY_TRICKS, ids=[ascii(a)[:60] for a in RELAY_TRICKS])
def test_relay_tricks_and_other_domains_are_denied(address):
    result = classify_rcpt(address, DEFAULT)
    assert isinstance(result, Refusal) and result.reply.startswith(DENIED + " "), result
    assert REPLY.fullmatch(result.reply)


UNKNOWN_USERS = [
    "nobody@websofttt.com",
    "postmasters@websofttt.com",
    "unsubscribe+@websofttt.com",                         # empty token
    "unsubscribe+abc1@websofttt.com",                     # not base32
    "unsubscribe+abc=@websofttt.com",                     # padding
    "unsubscribe+" + "a" * 65 + "@websofttt.com",         # too long
    "unsubscribe+ab+cd@websofttt.com",
    "unsubscribe+ab.cd@websofttt.com",
    f"bounce+{TOKEN}@websofttt.com",                      # bounce token on the wrong domain
    "bounce@websofttt.com",
    "unsubscribe@bounces.websofttt.com",                  # unsubscribe on the bounce domain
    f"unsubscribe+{TOKEN}@bounces.websofttt.com",
    "abuse@bounces.websofttt.com",
    "4abuse@bounces.websofttt.com",
    "bounce+abc8@bounces.websofttt.com",
    "bounce+@bounces.websofttt.com",
    "a" * 240 + "@websofttt.com",                         # 254 characters: long, but not over the limit
]


@pytest.mark.parametrize("address", UNKNOWN_USERS, ids=[a[:60] for a in UNKNOWN_USERS])
def test_unknown_local_parts_on_provider_domains(address):
    result = classify_rcpt(address, DEFAULT)
    assert isinstance(result, Refusal) and result.reply.startswith(UNKNOWN + " "), result
    assert REPLY.fullmatch(result.reply)


@pytest.mark.parametrize("provider, address, status", [
    (CUSTOM, "4abuse@mail.example", UNKNOWN),             # the default role names are not hard-coded
    (CUSTOM, "4privacy@mail.example", UNKNOWN),
    (CUSTOM, "dpo@mail.example", UNKNOWN),                # privacy address lives on the bounce domain only
    (CUSTOM, "abuse-desk@b.mail.example", UNKNOWN),
    (CUSTOM, f"bounce+{TOKEN}@mail.example", UNKNOWN),
    (CUSTOM, "unsubscribe@b.mail.example", UNKNOWN),
    (CUSTOM, "unsubscribe@websofttt.com", DENIED),        # the default domains are not hard-coded
    (CUSTOM, "postmaster@bounces.websofttt.com", DENIED),
    (CUSTOM, "abuse@mail.example.", DENIED),
    (CUSTOM, "abuse%x@mail.example", DENIED),
    (CUSTOM, "abuse-des\u212a@mail.example", DENIED),   # Kelvin sign: lower() makes it an ASCII "k"
    (Provider(abuse_address="abuse@example.net"), "abuse@example.net", DENIED),   # not a provider domain
    (Provider(abuse_address="abuse@example.net"), "4abuse@websofttt.com", UNKNOWN),
])
def test_refusals_follow_the_configuration(provider, address, status):
    result = classify_rcpt(address, provider)
    assert isinstance(result, Refusal) and result.reply.startswith(status + " "), result


def test_reply_texts_name_the_address():
    assert classify_rcpt("User@Example.org", DEFAULT) == Refusal("550 5.7.1 <User@Example.org> relaying denied")
    assert classify_rcpt("<nobody@websofttt.com>", DEFAULT) == Refusal(
        "550 5.1.1 <nobody@websofttt.com> no such user here")


@pytest.mark.parametrize("address", ["evil\r\n250 ok@x", "a b<c>@x", "\x00é\u2028😀@x", "x" * 500 + "@x"])
def test_echoed_address_is_printable_ascii_and_bounded(address):
    reply = classify_rcpt(address, DEFAULT).reply
    shown = reply[len("550 5.7.1 <"):-len("> relaying denied")]
    assert reply.startswith("550 5.7.1 <") and reply.endswith("> relaying denied")
    assert re.fullmatch(r"[!-~]{1,100}", shown) and "<" not in shown and ">" not in shown, reply


def test_issued_token_survives_case_changes_and_still_verifies():
    keys = TokenKeys({1: b"k" * 32})
    token = keys.issue()
    role = classify_rcpt(f"Unsubscribe+{token.upper()}@WebSoftTT.com", DEFAULT)
    assert isinstance(role, Role) and role.token == token and keys.verify(role.token)
    role = classify_rcpt(f"bounce+{token.upper()}@bounces.websofttt.com", DEFAULT)
    assert isinstance(role, Role) and role.kind == "bounce" and keys.verify(role.token)


def test_inbound_does_not_import_relay():
    code = "import sys, inbound.addresses; print(sorted(m for m in sys.modules if m.split('.')[0] == 'relay'))"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


# ---- properties

def _check(address: str, provider: Provider) -> None:
    """Whatever arrives: no exception, and an acceptance is a role on exactly a provider domain."""
    result = classify_rcpt(address, provider)
    if isinstance(result, Role):
        assert result.kind in {"unsubscribe", "bounce", "abuse", "privacy", "postmaster"}
        assert result.address == result.address.lower()
        local, at, domain = result.address.rpartition("@")
        assert (not at and result.address == "postmaster") or (domain in provider.domains and local)
        assert result.address.count("@") <= 1 and result.address.isascii()
        assert result.token is None or re.fullmatch(r"[a-z2-7]{1,64}", result.token)
    else:
        assert isinstance(result, Refusal) and REPLY.fullmatch(result.reply), result


@settings(max_examples=500)
@given(st.text(max_size=300), st.sampled_from([DEFAULT, CUSTOM]))
def test_arbitrary_text_never_raises_nor_relays(address, provider):
    _check(address, provider)


_LOCALS = ["unsubscribe", "unsubscribe+" + TOKEN, "bounce", "bounce+" + TOKEN, "postmaster", "abuse", "4abuse",
           "4privacy", "abuse-desk", "dpo", "", '"unsubscribe"', "a%b", "x!y"]
_DOMAINS = ["websofttt.com", "bounces.websofttt.com", "mail.example", "b.mail.example", "[127.0.0.1]", "evil.org"]
_JUNK = ["", ".", "@", "%", "!", ":", " ", "\x00", "\n", "<", ">", "é", "evil.", ".evil", "@evil.org"]


@st.composite
def near_misses(draw) -> str:
    """Role addresses with random case, junk spliced in and brackets: where the edge cases live."""
    text = f"{draw(st.sampled_from(_LOCALS))}@{draw(st.sampled_from(_DOMAINS))}"
    text = "".join(c.upper() if draw(st.booleans()) else c for c in text)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(_JUNK)) + text[at:]
    return f"<{text}>" if draw(st.booleans()) else text


@settings(max_examples=1000)
@given(near_misses(), st.sampled_from([DEFAULT, CUSTOM]))
def test_near_misses_never_relay(address, provider):
    _check(address, provider)


@given(st.text("abcdefghijklmnopqrstuvwxyz234567ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=64))
def test_any_token_syntax_in_any_case_is_accepted_lower_cased(token):
    assert classify_rcpt(f"unsubscribe+{token}@websofttt.com", DEFAULT) == Role(
        "unsubscribe", token.lower(), f"unsubscribe+{token.lower()}@websofttt.com")
    assert classify_rcpt(f"BOUNCE+{token}@bounces.websofttt.com", DEFAULT).token == token.lower()

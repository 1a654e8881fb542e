"""Which RCPT TO addresses the port-25 listener accepts: the provider's role addresses, nothing else.

The listener must never be an open relay, so this is an allow-list over exact strings: the local part
must be a plain dot-atom and the domain must equal a configured provider domain, compared without any
DNS. Anything that some MTA could route elsewhere (percent hack, bang path, quoted local part, source
route, IP literal, trailing dot, look-alike or sub-domain) is refused as relaying, never accepted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from policy.settings import Provider

MAX_ADDRESS = 254          # RFC 5321 4.5.3.1.3 path limit minus the angle brackets
MAX_SHOWN = 100            # how much of a client's address is echoed in a reply

# RFC 5321 dot-atom without '%' and '!': those two are atext, but old MTAs route on them.
_DOT_ATOM = re.compile(r"[a-z0-9#$&'*+/=?^_`{|}~-]+(?:\.[a-z0-9#$&'*+/=?^_`{|}~-]+)*")
# RFC 4648 base32 alphabet; any case arrives, the caller verifies the MAC later.
_TOKEN = r"([a-z2-7]{1,64})"


@dataclass(frozen=True)
class Role:
    """An accepted recipient: which role address, its token if it carries one, the address as accepted."""
    kind: str            # "unsubscribe" | "bounce" | "abuse" | "privacy" | "postmaster"
    token: str | None    # lower-cased token of unsubscribe+TOKEN@ / bounce+TOKEN@, else None
    address: str         # the normalised (lower-case) address


@dataclass(frozen=True)
class Refusal:
    """A refused recipient and the full SMTP reply to give."""
    reply: str


def _escaped(c: str) -> str:
    if "!" <= c <= "~" and c not in "<>":
        return c
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _shown(text: str) -> str:
    """A client's address made safe to echo in a reply: printable ASCII, no spaces or brackets, bounded."""
    out = "".join(_escaped(c) for c in text)
    return out if len(out) <= MAX_SHOWN else out[:MAX_SHOWN - 3] + "..."


def _denied(address: str) -> Refusal:
    return Refusal(f"550 5.7.1 <{_shown(address)}> relaying denied")


def _unknown(address: str) -> Refusal:
    return Refusal(f"550 5.1.1 <{_shown(address)}> no such user here")


def _roles(provider: Provider, domain: str) -> tuple[dict[str, str], list[tuple[re.Pattern[str], str]]]:
    """Fixed local parts and token patterns accepted on `domain` (a provider domain, lower case)."""
    fixed: dict[str, str] = {"postmaster": "postmaster"}
    patterns: list[tuple[re.Pattern[str], str]] = []
    if domain == provider.domain.lower():
        fixed |= {"unsubscribe": "unsubscribe", "abuse": "abuse"}
        patterns.append((re.compile(r"unsubscribe\+" + _TOKEN), "unsubscribe"))
    if domain == provider.bounce_domain.lower():
        fixed["bounce"] = "bounce"      # a bounce that lost its VERP token
        patterns.append((re.compile(r"bounce\+" + _TOKEN), "bounce"))
    for kind, configured in (("abuse", provider.abuse_address), ("privacy", provider.privacy_address)):
        local, _, where = configured.lower().rpartition("@")
        if where == domain:
            fixed[local] = kind
    return fixed, patterns


def classify_rcpt(address: str, provider: Provider) -> Role | Refusal:
    """Role for an accepted provider role address, else a 550 Refusal (5.7.1 relaying, 5.1.1 unknown user)."""
    addr = address[1:-1] if address.startswith("<") and address.endswith(">") else address
    if not addr or len(addr) > MAX_ADDRESS or any(not "!" <= c <= "~" for c in addr):
        # whitespace, controls, NUL, non-ASCII: no role address has them
        return _denied(addr)
    normal = addr.lower()
    if normal == "postmaster":                                # RFC 5321 4.5.1: no domain needed
        return Role("postmaster", None, normal)
    if normal.count("@") != 1:                                # source routes, user@ours@evil, no domain
        return _denied(addr)
    local, domain = normal.split("@")
    if domain not in {d.lower() for d in provider.domains} or not _DOT_ATOM.fullmatch(local):
        return _denied(addr)                                  # other domain, or a routing trick
    fixed, patterns = _roles(provider, domain)
    if local in fixed:
        return Role(fixed[local], None, normal)
    for pattern, kind in patterns:
        if m := pattern.fullmatch(local):
            return Role(kind, m.group(1), normal)
    return _unknown(addr)

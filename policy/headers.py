"""Header-integrity policy for submitted mail.

Runs on the SMTP DATA path before a message is queued. It only reads the tenant's
header block (tenant headers are passed through unaltered) and answers with the
first rule that fails, as a complete SMTP reply. Rules, in order: syntax, forged
provider identity, duplicate fields, Subject, From.

The header block is parsed once with bytes/str operations; the email package's
message parser is avoided because this runs for every message.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from email.errors import MessageError
from email.header import decode_header, make_header

from policy.addressparser import EmailAddress, address

MAX_LINE = 998  # RFC 5322 2.1.1, octets excluding CRLF
_CACHED_FROM = 998  # longer From values are parsed every time (the cache holds 4096 values of at most this)

# RFC 5322 ftext: printable ASCII except colon.
_FIELD_NAME = re.compile(r"[!-9;-~]+")
# C0 controls, DEL and C1 controls.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

# Fields that may appear at most once (RFC 5322 3.6); Subject and From have own rules.
_SINGLE = {
    name.lower(): name
    for name in ("Date", "Message-ID", "To", "Cc", "Bcc", "Reply-To", "Sender",
                 "In-Reply-To", "References")
}
# Fields only the relay adds at delivery time.
_PROVIDER_FIELDS = {"feedback-id": "Feedback-ID",
                    "list-unsubscribe-post": "List-Unsubscribe-Post"}
_PROVIDER_PREFIX = "x-websofttt-"

_MALFORMED = "554 5.6.0 Malformed header line"

Fields = list[tuple[str, str]]  # (name as written, unfolded value), in order


@dataclass(frozen=True)
class HeaderPolicy:
    provider_domains: frozenset[str]  # lower-case
    provider_hostname: str


@dataclass(frozen=True)
class HeaderCheck:
    reply: str | None  # None: accepted; else the full SMTP reply
    header_end: int  # offset of the body (after the blank line), len(raw) if none
    from_domain: str  # lower-case; "" when rejected before From was parsed
    has_message_id: bool
    has_date: bool
    campaign: str | None  # tenant's X-Campaign, stripped


def check_headers(raw: bytes, policy: HeaderPolicy,
                  allowed_from_domains: frozenset[str], smtputf8: bool) -> HeaderCheck:
    """Check the header block of a submitted message; the first failing rule wins."""
    block, header_end = _split_header(raw)
    reply = _check_octets(block, smtputf8)
    fields = None if reply else _parse_fields(block.decode())
    if fields is None:  # rule 1, syntax, failed
        return HeaderCheck(reply or _MALFORMED, header_end, "", False, False, None)
    index: dict[str, list[str]] = {}
    for name, value in fields:
        index.setdefault(name.lower(), []).append(value)
    reply = (_check_forgery(fields, policy) or _check_duplicates(index)
             or _check_subject(index.get("subject", [])))
    domain = ""
    if not reply:
        reply, domain = _check_from(index.get("from", []), policy, allowed_from_domains)
    campaign = index.get("x-campaign", [""])[0].strip() or None
    return HeaderCheck(reply, header_end, domain, "message-id" in index,
                       "date" in index, campaign)


def _split_header(raw: bytes) -> tuple[bytes, int]:
    """Header block (each line with its CRLF) and the body offset.

    The block ends at the first empty line; without one the whole message is header.
    """
    if raw.startswith(b"\r\n"):
        return b"", 2
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return raw, len(raw)
    return raw[:end + 2], end + 4


def _check_octets(block: bytes, smtputf8: bool) -> str | None:
    """Line length, line endings and 8-bit content of the raw header block."""
    if any(len(line) > MAX_LINE for line in block.split(b"\r\n")):
        return f"554 5.6.0 Header line longer than {MAX_LINE} octets"
    crlf = block.count(b"\r\n")
    if block.count(b"\r") != crlf or block.count(b"\n") != crlf:
        return "554 5.6.0 Bare CR or LF in message header"
    if block.isascii():
        return None
    if not smtputf8:
        return "554 5.6.0 8-bit header without SMTPUTF8"
    try:
        block.decode()
    except UnicodeDecodeError:
        return "554 5.6.0 Header is not valid UTF-8"
    return None


def _parse_fields(text: str) -> Fields | None:
    """Split into fields and unfold continuation lines; None if a line is malformed.

    Continuations are joined once per field: appending to the value line by line is quadratic, and a
    header folded over megabytes held the worker for seconds."""
    lines = text.split("\r\n")
    if lines[-1] == "":
        lines.pop()
    parts: list[tuple[str, list[str]]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not parts:
                return None
            parts[-1][1].append(line)
            continue
        name, colon, value = line.partition(":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            return None
        parts.append((name, [value]))
    return [(name, "".join(values)) for name, values in parts]


def _check_forgery(fields: Fields, policy: HeaderPolicy) -> str | None:
    """Refuse headers that would pass the tenant's mail off as the provider's own."""
    host = policy.provider_hostname.lower()
    for name, value in fields:
        lname = name.lower()
        if lname.startswith(_PROVIDER_PREFIX) or lname in _PROVIDER_FIELDS:
            shown = _PROVIDER_FIELDS.get(lname) or _shown(name)
            return f"550 5.7.1 Header {shown} is reserved for the provider"
        if lname == "dkim-signature":
            for domain in _dkim_domains(value):
                if _within(domain, policy.provider_domains):
                    return (f"550 5.7.1 DKIM-Signature with d={_shown(domain)} "
                            "forges the provider's signature")
        if lname == "received" and host and host in value.lower():
            return "550 5.7.1 Received header names the provider host"
    return None


def _dkim_domains(value: str) -> list[str]:
    """The d= values of a DKIM-Signature tag list (RFC 6376 3.2: FWS may surround
    tags and fold values; tag names are case-sensitive)."""
    domains = []
    for tag in value.split(";"):
        name, equals, tag_value = tag.partition("=")
        if equals and name.strip() == "d":
            domains.append("".join(tag_value.split()).lower().rstrip("."))
    return domains


def _within(domain: str, parents: frozenset[str]) -> bool:
    """True if domain is one of parents or a subdomain of one."""
    return any(domain == parent or domain.endswith("." + parent) for parent in parents)


def _check_duplicates(index: dict[str, list[str]]) -> str | None:
    """Receivers disagree on which copy of a repeated field counts, so refuse them."""
    for lname, name in _SINGLE.items():
        if len(index.get(lname, ())) > 1:
            return f"554 5.6.0 Message has more than one {name} header"
    return None


def _check_subject(values: list[str]) -> str | None:
    """Exactly one Subject that decodes to non-empty text without control characters."""
    if not values:
        return "554 5.6.0 Message has no Subject header"
    if len(values) > 1:
        return "554 5.6.0 Message has more than one Subject header"
    try:
        text = _decode_words(values[0])
    except (MessageError, LookupError, ValueError):
        return "554 5.6.0 Subject cannot be decoded"
    if _CONTROL.search(text):
        return "554 5.6.0 Subject contains control characters"
    if not text.strip():
        return "554 5.6.0 Subject is empty"
    return None


def _decode_words(value: str) -> str:
    """Decode RFC 2047 encoded-words in an unstructured field value.

    A literal tab is folding white space, not a control character, so it is read as
    a space; a tab inside an encoded-word stays a control character. email.header
    cannot mix raw UTF-8 (RFC 6532) with encoded-words, so it gets the UTF-8 bytes as
    Latin-1 text and unencoded parts are decoded back as UTF-8.
    """
    value = value.replace("\t", " ")
    if "=?" not in value:
        return value
    parts = decode_header(value.encode().decode("latin-1"))
    return str(make_header([
        (part.encode("latin-1") if isinstance(part, str) else part, charset or "utf-8")
        for part, charset in parts
    ]))


def _check_from(values: list[str], policy: HeaderPolicy,
                allowed: frozenset[str]) -> tuple[str | None, str]:
    """Exactly one From mailbox on a domain the tenant may send from.

    Returns the reply and the From domain (lower-case, "" if unparsable). Strict
    parsing: flanker's lenient mode would read "a@x.org, b@y.com" as one mailbox
    on y.com.
    """
    if not values:
        return "550 5.7.1 Message has no From header", ""
    if len(values) > 1:
        return "550 5.7.1 Message has more than one From header", ""
    parse = _from_domain if len(values[0]) <= _CACHED_FROM else _from_domain.__wrapped__
    parsed = parse(values[0])
    if parsed is None:
        return "550 5.7.1 From header cannot be parsed", ""
    domain, ace = parsed
    if {domain, ace} & (allowed | policy.provider_domains):
        return None, domain
    return (f"550 5.7.1 From domain {_shown(ace)} is not allowed for this sender",
            domain)


@functools.lru_cache(maxsize=4096)
def _from_domain(value: str) -> tuple[str, str] | None:
    """The From mailbox's domain and its ASCII form, or None. Cached: flanker's parser takes ~100 µs, and a
    sender's From is the same on every message."""
    mailbox = address.parse(value, strict=True)
    if not isinstance(mailbox, EmailAddress):  # None, or a URL
        return None
    domain = mailbox.hostname  # lower-case; strict parsing refuses a trailing dot
    return domain, domain if domain.isascii() else mailbox.ace_hostname


def _shown(text: str) -> str:
    """Tenant text made safe for an SMTP reply line: escaped ASCII, bounded length."""
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 100 else text[:100] + "..."

"""Reading parsed messages safely: header fields as printable text, parts decoded whatever their charset.

The stdlib parser (compat32) keeps 8-bit bytes as surrogate escapes and raises on broken encoded words
and unknown charsets; these helpers turn all of that into text instead of exceptions.
"""
from __future__ import annotations

import email.errors
import email.header
import re
from email.message import Message

from inbound.dsn import Fields

MAX_TEXT = 256 * 1024        # bytes of one text part decoded
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def fields(msg: Message) -> Fields:
    """Header fields by lower-case name, values unfolded and made printable text."""
    out: Fields = {}
    for name, value in msg.raw_items():
        out.setdefault(text_of(name).strip().lower(), []).append(_FOLD.sub("", text_of(value)).strip())
    return out


def text_of(value) -> str:
    """Text of a raw value: the parser keeps 8-bit bytes as surrogate escapes (UTF-8, else Windows-1252)."""
    text = value if isinstance(value, str) else str(value)
    if text.isascii():
        return text
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:                  # a surrogate that is not an escaped byte
        data = text.encode("utf-8", "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def part_text(part: Message) -> str:
    """A leaf part's body decoded (transfer encoding, then charset; unknown charsets as UTF-8)."""
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    return bytes_text(data[:MAX_TEXT], part.get_content_charset())


def bytes_text(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", "replace")
    except (LookupError, UnicodeError, ValueError, TypeError):   # unknown, or not a text codec
        return data.decode("utf-8", "replace")


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded; the value unchanged when they are broken."""
    if "=?" not in value:
        return value
    try:
        chunks = email.header.decode_header(value)
    except (email.errors.HeaderParseError, ValueError, LookupError):
        return value
    return "".join(bytes_text(c, cs) if isinstance(c, bytes) else c for c, cs in chunks)


def first(fields: Fields, name: str) -> str:
    values = fields.get(name)
    return values[0] if values else ""

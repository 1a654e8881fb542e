"""8-bit mail for a next hop without 8BITMIME (RFC 6152 §3): the 8-bit MIME leaf parts are re-encoded.

A copy is converted before it is signed, so the DKIM signature covers the bytes on the wire. Only the
parts that carry 8-bit bytes change (their Content-Transfer-Encoding field and body, and the 8bit label
of the containers on their way); everything else is kept byte for byte, because re-serialising with
`email` would rewrite untouched parts and headers. `email` only reads the header fields of each part.
Text parts become quoted-printable (still readable as text), the others base64.
"""
from __future__ import annotations

import base64
import binascii
import re
from email.message import Message
from email.parser import BytesHeaderParser

_LINE_END = re.compile(rb"\r\n|\r|\n")       # as SMTP clients send them: CRLF
_CTE = re.compile(rb"^content-transfer-encoding[ \t]*:.*\r\n(?:[ \t].*\r\n)*", re.I | re.M)
_PARSER = BytesHeaderParser()


class ConversionError(Exception):
    """8-bit bytes that no Content-Transfer-Encoding can carry (RFC 6152 §3: the copy is not sent)."""


def to_7bit(message: bytes) -> bytes:
    """`message` with only 7-bit bytes; raises ConversionError where 8-bit bytes are in header fields or
    outside any MIME part."""
    if message.isascii():
        return message
    return _entity(_LINE_END.sub(b"\r\n", message), "text/plain", message=True)


def _entity(entity: bytes, default_type: str, message: bool = False) -> bytes:
    """One MIME entity, its 8-bit content encoded; `message`: the whole message or one encapsulated in it."""
    head, body = _split(entity)
    if not head.isascii():
        raise ConversionError("8-bit header field, which cannot be converted to 7 bits")
    if body is None or body.isascii():
        return entity
    fields = _PARSER.parsebytes(head)
    fields.set_default_type(default_type)
    kind = fields.get_content_type()
    cte = str(fields.get("content-transfer-encoding", "7bit")).strip().lower()
    if cte not in ("7bit", "8bit", "binary"):
        raise ConversionError(f"8-bit bytes in a part declared {cte[:40]}")
    if kind.startswith("multipart/"):
        boundary = fields.get_param("boundary")
        if not isinstance(boundary, str) or not boundary:
            raise ConversionError("8-bit multipart body without a boundary")
        inner = "message/rfc822" if kind == "multipart/digest" else "text/plain"
        return _relabelled(head, cte) + b"\r\n" + _multipart(body, boundary.encode(), inner)
    if kind == "message/rfc822":
        return _relabelled(head, cte) + b"\r\n" + _entity(body, "text/plain", message=True)
    if kind.startswith("message/") and not kind.startswith("message/global"):    # RFC 2046 §5.2, RFC 6532 §3.5
        raise ConversionError(f"8-bit {kind} part, which may not be encoded")
    if fields.get_content_maintype() == "text":
        encoded, name = _quoted_printable(body), b"quoted-printable"
    else:
        encoded, name = _LINE_END.sub(b"\r\n", base64.encodebytes(body)), b"base64"
    if message:
        head += _mime_fields(fields, body)
    return _CTE.sub(b"", head) + b"Content-Transfer-Encoding: " + name + b"\r\n\r\n" + encoded


def _split(entity: bytes) -> tuple[bytes, bytes | None]:
    """(header block, each line with its CRLF; body, None without the empty line)."""
    if entity.startswith(b"\r\n"):
        return b"", entity[2:]
    end = entity.find(b"\r\n\r\n")
    return (entity, None) if end < 0 else (entity[:end + 2], entity[end + 4:])


def _multipart(body: bytes, boundary: bytes, inner: str) -> bytes:
    """Each part between the delimiter lines converted; preamble, epilogue and delimiters left as they are
    (RFC 2046 §5.1.1: the CRLF before a delimiter line belongs to it). Without a close delimiter, the last
    part runs to the end."""
    delimiter = re.compile(rb"^--" + re.escape(boundary) + rb"(--)?[ \t]*\r?$", re.M)
    out: list[bytes] = []
    done, in_part = 0, False          # where the bytes not yet in `out` start; whether they start a part
    for m in delimiter.finditer(body):
        if in_part:
            end = max(done, m.start() - 2)
            out.append(_entity(body[done:end], inner))
            done = end
        out.append(_outside(body[done:m.end() + 1]))
        done, in_part = m.end() + 1, not m.group(1)
        if not in_part:
            break
    out.append(_entity(body[done:], inner) if in_part else _outside(body[done:]))
    return b"".join(out)


def _outside(text: bytes) -> bytes:
    """Preamble, epilogue and delimiter lines: no encoding applies to them."""
    if not text.isascii():
        raise ConversionError("8-bit text outside any MIME part")
    return text


def _relabelled(head: bytes, cte: str) -> bytes:
    """A container's header block, labelled 7bit once its parts are (RFC 2045 §6.4)."""
    return head if cte == "7bit" else _CTE.sub(b"", head) + b"Content-Transfer-Encoding: 7bit\r\n"


def _quoted_printable(body: bytes) -> bytes:
    encoded = binascii.b2a_qp(body, quotetabs=False, istext=True, header=False)
    return _LINE_END.sub(b"\r\n", encoded)


def _mime_fields(fields: Message, body: bytes) -> bytes:
    """What a message that was not MIME needs for its new Content-Transfer-Encoding to be read (RFC 2045 §4)."""
    added = b"" if "mime-version" in fields else b"MIME-Version: 1.0\r\n"
    if "content-type" not in fields:
        try:
            body.decode()
            added += b"Content-Type: text/plain; charset=utf-8\r\n"
        except UnicodeDecodeError:
            added += b"Content-Type: text/plain; charset=unknown-8bit\r\n"     # RFC 1428
    return added

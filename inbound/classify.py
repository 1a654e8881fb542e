"""What an inbound message is: bounce, ARF complaint, auto-reply, unsubscribe, human complaint,
privacy request or other. Pure (bytes in, a Classification out: no store, no network) and total:
garbage, broken MIME, bad charsets, deep nesting and huge messages give an answer, not an exception.

Decision order, first match wins:
1. bounce: a delivery-status report (RFC 3464); or the signs of a free-text bounce (inbound/bounce_signs):
   a mail system's or the null sender with a bounce Subject or wording (or at the bounce address, unless
   it is a null-sender auto-reply), or a bounce Subject with bounce wording;
2. complaint: an ARF feedback report (RFC 5965; its parts in any order, its fields even in a text/plain
   part), or Microsoft's older JMRP format (the reported message carrying X-HmXmrOriginalRecipient);
3. auto_reply (inbound/auto_reply): RFC 3834 Auto-Submitted, Exchange/Lotus markers, Precedence, vacation
   Subjects and texts, MDNs; a challenge-response request before anything else (some come as DSNs);
4. by role address: bounce (failed addresses with a status code near them, else other), unsubscribe,
   abuse -> human_complaint, privacy -> privacy_request, anything else -> other.
An auto-reply or bounce sent to an unsubscribe address is therefore never an unsubscribe, and a
vacation reply sent to bounce+TOKEN@ (RFC 3834 replies go to the envelope sender) is an auto_reply.
"""
from __future__ import annotations

import dataclasses
import email
import email.parser
import email.policy
import email.utils
import html
import re
from dataclasses import dataclass
from enum import StrEnum
from email.message import Message
from collections.abc import Sequence

from inbound import auto_reply, bounce_reason, bounce_signs, dsn, mime
from inbound.bounce_reason import Failure
from inbound.dsn import Fields
from inbound.report import Report, describe

class Kind(StrEnum):
    """What an inbound message is; the values are what the mailbox, the logs and `inbound classify` show."""
    BOUNCE = "bounce"
    COMPLAINT = "complaint"                  # an ARF feedback report
    AUTO_REPLY = "auto_reply"
    UNSUBSCRIBE = "unsubscribe"
    HUMAN_COMPLAINT = "human_complaint"      # written to the abuse address by a person
    PRIVACY_REQUEST = "privacy_request"
    OTHER = "other"


KINDS = tuple(k.value for k in Kind)
_REPORTED = (Kind.COMPLAINT, Kind.HUMAN_COMPLAINT, Kind.PRIVACY_REQUEST)
MAX_BYTES = 1 << 20          # only the first MiB is looked at
MAX_DEPTH = 20               # multipart nesting followed
MAX_PARTS = 500              # parts visited
MAX_BOUNDARIES = 100         # more: parse the header only (the stdlib parser is quadratic in nesting)
MAX_IDS = 50

_TOKEN = r"(?<![\w.+-]){}\+([a-z2-7]{{8,64}})@"
_UNSUB_TOKEN = re.compile(_TOKEN.format("unsubscribe"), re.I)
_BOUNCE_TOKEN = re.compile(_TOKEN.format("bounce"), re.I)
_TOKEN_FIELDS = {"list-unsubscribe": _UNSUB_TOKEN, "return-path": _BOUNCE_TOKEN, "original-mail-from": _BOUNCE_TOKEN}
_ROLE_TOKEN = re.compile(r"[a-z2-7]{1,64}")
_MSGID = re.compile(r"<[^<>\s]{1,250}>")
_PASTED_NAMES = r"(list-unsubscribe|return-path|original-mail-from|message-id|x-websofttt-tenant|feedback-id|to)"
# An indented paste folds nothing: a continuation line that starts another of these fields is not one.
_PASTED = re.compile(rf"^[ \t>]*{_PASTED_NAMES}[ \t]*:([^\r\n]*(?:\r?\n[ \t]+(?![ \t>]*{_PASTED_NAMES}[ \t]*:)[^\r\n]*)*)",
                     re.I | re.M)
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_BREAK = re.compile(r"<br\s*/?>|</(?:p|div|tr|li)>", re.I)
_TAG = re.compile(r"<(?:[a-z/!][^<>]*)>", re.I)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_LEADING_BLANKS = re.compile(rb"\A(?:[ \t]*\r?\n)+")
_ARF_FIELDS = {"feedback-type", "user-agent", "version"}     # RFC 5965 3.1: required in every report
_JMRP = "x-hmxmroriginalrecipient"          # Microsoft JMRP: the complainant's address, in the reported message


@dataclass(frozen=True)
class Classification:
    kind: Kind
    evidence: str                 # which header or part decided
    permanent: bool | None        # bounces: True for 5.x.x, False for 4.x.x / delayed; None otherwise
    recipients: tuple[str, ...]   # bounces: Final/Original-Recipient; complaints: Original-Rcpt-To
    tokens: tuple[str, ...]       # from role addresses, returned headers and ARF fields, in order found
    message_ids: tuple[str, ...]  # In-Reply-To and References ids, angle brackets kept
    failures: tuple[Failure, ...] = ()   # bounces: one per failed copy (none for delays)
    report: Report | None = None         # complaints, human complaints, privacy requests: what they refer to


@dataclass
class _Parts:
    texts: list[str]              # text/plain parts outside returned messages
    html: list[str]               # text/html parts as text, for a message that has no text/plain one
    dsn: list[Fields]             # message/delivery-status field blocks
    feedback: list[Fields]        # message/feedback-report field blocks
    headers: list[Fields]         # returned headers: message/rfc822, text/rfc822-headers, ARF fields, pasted


def classify(raw: bytes, role_kinds: Sequence[str], role_tokens: Sequence[str | None]) -> Classification:
    """Classify one inbound message accepted for these role addresses (kinds, with their tokens)."""
    roles = [str(k).lower() for k in role_kinds]
    found: list[str] = []                    # tokens in the order found, role addresses first
    role_token: dict[str, str] = {}          # the first valid token of each role kind
    for kind, token in zip(roles, role_tokens):
        if kind in ("unsubscribe", "bounce") and isinstance(token, str) and _ROLE_TOKEN.fullmatch(token.lower()):
            found.append(token.lower())
            role_token.setdefault(kind, token.lower())
    try:
        return _classify(bytes(raw[:MAX_BYTES]), roles, found, role_token)
    except Exception as exc:      # last resort: the listener must answer; fuzz tests assert this never runs
        kind = Kind.BOUNCE if "bounce" in roles else Kind.OTHER
        return Classification(kind, f"unclassifiable: {type(exc).__name__}", None, (), tuple(found), ())


class _Read:
    """One message as the decisions see it, parsed once: its parts, the tokens and Message-IDs that every
    answer carries, its report type, Subject and explanatory text."""

    def __init__(self, raw: bytes, found: list[str]):
        raw = _LEADING_BLANKS.sub(b"", raw, count=1)    # saved with blank lines before the header
        self.raw = raw
        self.msg = _parse(raw)
        self.head = mime.fields(self.msg)
        self.sender = bounce_signs.sender(mime.first(self.head, "from"), mime.first(self.head, "return-path"))
        self.parts = _walk(self.msg, wrapper=bool(self.sender) and not _report_type(self.msg))
        for fields in self.parts.headers:             # tokens in returned headers, after the role addresses'
            for name, values in fields.items():
                pattern = _TOKEN_FIELDS.get(name)
                if pattern:
                    for value in values:
                        found.extend(t.lower() for t in pattern.findall(value))
        self.tokens = tuple(dict.fromkeys(found))
        ids = [i for name in ("in-reply-to", "references") for v in self.head.get(name, ()) for i in _MSGID.findall(v)]
        self.message_ids = tuple(dict.fromkeys(ids))[:MAX_IDS]
        self.report = _report_type(self.msg)
        self.jmrp = [v for f in (self.head, *self.parts.headers) for v in f.get(_JMRP, ())][:dsn.MAX_RECIPIENTS]
        self.subject = mime.decode_words(mime.first(self.head, "subject"))
        self.text = dsn.explanation("\n".join(self.parts.texts or self.parts.html))

    def result(self, kind: Kind, evidence: str, permanent: bool | None = None, recipients=(),
               failures=()) -> Classification:
        about = describe(self.parts.feedback, self.parts.headers) if kind in _REPORTED else None
        return Classification(kind, _CONTROL.sub(" ", evidence)[:160], permanent, tuple(recipients), self.tokens,
                              self.message_ids, tuple(failures), about)

    def bounce(self, evidence: str, what: str | None, unparsed: str | None = None) -> Classification:
        """A bounce that is no RFC 3464 report: flufl.bounce and our detectors name the failed copies.
        With `unparsed` (a message at the bounce address that shows no other sign of a bounce), failures
        need a status code near an address, and without one it is no bounce: kind other, that evidence."""
        listed = dsn.text_recipients(self.head.get("x-failed-recipients", ()), self.text)
        failures, delays, recipients = bounce_reason.nonstandard(
            self.msg, self.raw, listed, self.head, self.text, self.subject, what == "delay", unparsed is not None)
        if unparsed is not None and not failures:
            return self.result(Kind.OTHER, f"{unparsed}, but no sign of a bounce in it")
        return self.failed(evidence, failures, delays, recipients)

    def failed(self, evidence: str, failures: list[Failure], delays: int, recipients: tuple[str, ...]) -> Classification:
        """A bounce's classification. One that names no address at all: its one failure takes the returned
        message's recipient, when that shows one."""
        own = bounce_reason.addresses(self.head.get("to", ()))
        if len(failures) == 1 and not failures[0].recipient and not bounce_reason.named(self.text, own) \
                and (rcpt := dsn.returned_recipient(self.parts.headers)) and rcpt not in own:
            failures, recipients = [dataclasses.replace(failures[0], recipient=rcpt)], (*recipients, rcpt)
        return self.result(Kind.BOUNCE, evidence, bounce_reason.overall(failures, delays), recipients, failures)


def _classify(raw: bytes, roles: list[str], found: list[str], role_token: dict[str, str]) -> Classification:
    """The decision order of the module doc, first match wins."""
    m = _Read(raw, found)
    if challenge := auto_reply.challenge(m.head, m.text):     # some come as reports of a delayed message
        return m.result(Kind.AUTO_REPLY, challenge)
    if m.report == "delivery-status" or m.parts.dsn:                                        # 1. bounce
        return _delivery_status(m)
    arf = m.report == "feedback-report" or bool(m.parts.feedback) or m.jmrp
    marker = auto_reply.marker(m.head, m.subject, m.report, m.text, replies_only=bool({"abuse", "privacy"} & set(roles)))
    if not arf and (what := _bounce_signs(m, roles, marker)):
        sender, told = what
        return m.bounce(f"non-standard bounce: {sender or 'its wording'}, Subject: {m.subject}", told)
    if arf:                                                                                 # 2. ARF complaint
        return _feedback_report(m)
    if marker:                                                                              # 3. auto-reply
        return m.result(Kind.AUTO_REPLY, marker)
    return _by_role(m, roles, role_token)                                                   # 4. by role address


def _bounce_signs(m: _Read, roles: list[str], marker: str | None) -> tuple[str | None, str | None] | None:
    """(how the sender shows a mail system, 'failure' | 'delay' | None) when a message that is no report
    is a bounce: a mail system's sender with a bounce Subject or wording, or with neither at the bounce
    address unless it is an auto-reply from the null sender (RFC 3834 replies go there); or, except at
    the abuse and privacy desks (where people forward bounces as evidence), a bounce Subject with bounce
    wording from any sender. None otherwise."""
    sender, by_subject = m.sender, bounce_signs.subject(m.subject)
    if not (sender or by_subject):
        return None
    by_words = bounce_signs.wording(m.text)
    told = by_subject if by_subject == "delay" else by_words or by_subject
    if sender and (told or ("bounce" in roles and not (marker and sender.startswith("null")))):
        return sender, told
    if by_subject and by_words and not {"abuse", "privacy"} & set(roles):
        return None, told
    return None
def _delivery_status(m: _Read) -> Classification:
    where = ("multipart/report; report-type=delivery-status" if m.report == "delivery-status"
             else "message/delivery-status part")
    blocks = dsn.per_recipient(m.parts.dsn) or dsn.per_recipient(dsn.parse_fields(m.text))   # a lost boundary
    if blocks:
        failures, delays, recipients, summary = dsn.summarize(blocks, m.text)
        return m.failed(f"{where} ({summary})", failures, delays, recipients)
    return m.bounce(f"{where} (no per-recipient fields)", None)


def _feedback_report(m: _Read) -> Classification:
    if not (m.report == "feedback-report" or m.parts.feedback):
        return m.result(Kind.COMPLAINT, "Microsoft JMRP report (X-HmXmrOriginalRecipient)", None,
                        [a for v in m.jmrp if (a := dsn.address(v))])
    feedback_type = next((v for b in m.parts.feedback for v in b.get("feedback-type", ())), "") or "unknown"
    reported = dict.fromkeys(a for b in m.parts.feedback for v in b.get("original-rcpt-to", ()) if (a := dsn.address(v)))
    return m.result(Kind.COMPLAINT, f"feedback-report: Feedback-Type {feedback_type.lower()}", None,
                    list(reported)[:dsn.MAX_RECIPIENTS])


def _by_role(m: _Read, roles: list[str], role_token: dict[str, str]) -> Classification:
    if "bounce" in roles:    # failed addresses with a status code near them (flufl.bounce), or other
        return m.bounce(f"failure report to the bounce address, Subject: {m.subject}", None,
                        unparsed=_addressed("bounce", role_token.get("bounce")))
    if "unsubscribe" in roles:
        return m.result(Kind.UNSUBSCRIBE, _addressed("unsubscribe", role_token.get("unsubscribe")))
    if "abuse" in roles:
        return m.result(Kind.HUMAN_COMPLAINT, "addressed to abuse")
    if "privacy" in roles:
        return m.result(Kind.PRIVACY_REQUEST, "addressed to privacy")
    if roles:
        return m.result(Kind.OTHER, f"addressed to {roles[0]}")
    return m.result(Kind.OTHER, "no report, auto-reply marker or role address")


def _parse(raw: bytes) -> Message:
    """compat32 parse; the header only when the body nests too deeply for the stdlib parser."""
    policy = email.policy.compat32
    if raw.lower().count(b"boundary") <= MAX_BOUNDARIES:
        try:
            return email.message_from_bytes(raw, policy=policy)
        except RecursionError:
            pass
    return email.parser.BytesHeaderParser(policy=policy).parsebytes(raw)


def _walk(msg: Message, wrapper: bool) -> _Parts:
    """One pass over the parts in document order, not descending into returned messages; but a `wrapper`
    (a mail system's message that is no report itself: a virus filter's notice around a DSN) is read
    with the DSN it wraps. A report returned inside a report, or forwarded by a person, is evidence."""
    parts = _Parts([], [], [], [], [])
    stack, visited = [(msg, 0)], 0
    while stack and visited < MAX_PARTS:
        part, depth = stack.pop()
        visited += 1
        ctype = part.get_content_type()
        payload = part.get_payload() if part.is_multipart() else None   # a leaf's text: only via _text
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            parts.dsn.extend(_blocks(part, payload))
        elif ctype == "message/feedback-report":
            blocks = _blocks(part, payload)
            parts.feedback.extend(blocks)
            parts.headers.extend(blocks)
        elif ctype in ("message/rfc822", "message/global"):
            inner = payload[0] if isinstance(payload, list) and payload and isinstance(payload[0], Message) else None
            if wrapper and inner is not None and _report_type(inner) == "delivery-status" and depth < MAX_DEPTH:
                stack.append((inner, depth + 1))
            elif inner is not None:
                parts.headers.append(mime.fields(inner))
        elif ctype in ("text/rfc822-headers", "text/global-headers"):
            parts.headers.extend(dsn.parse_fields(mime.part_text(part), max_blocks=1))
        elif isinstance(payload, list):
            if depth < MAX_DEPTH and not ctype.startswith("message/"):
                stack.extend((p, depth + 1) for p in reversed(payload) if isinstance(p, Message))
        elif ctype == "text/plain" or ctype.startswith("multipart/"):     # a multipart whose boundary is lost
            text = mime.part_text(part)
            parts.texts.append(text)
            parts.headers.extend(_pasted(text))
            if "feedback-type" in text[:8192].lower():     # a feedback report sent as text/plain
                blocks = [b for b in dsn.parse_fields(text[:8192], max_blocks=5) if _ARF_FIELDS <= b.keys()]
                parts.feedback.extend(blocks)
                parts.headers.extend(blocks)
        elif ctype == "text/html":          # an HTML-only bounce's text; headers pasted into a webmail reply
            text = _TAG.sub("\n", _BREAK.sub("\n", mime.part_text(part)))
            parts.html.append(html.unescape(text))
            parts.headers.extend(_pasted(text))
    return parts


def _blocks(part: Message, payload) -> list[Fields]:
    """Field blocks of a message/* part: the parser's sub-messages, or its decoded text.

    The parser splits only message/delivery-status into one sub-message per block; other message/*
    types (global-delivery-status, feedback-report) become one sub-message whose body holds the rest.
    """
    if not isinstance(payload, list):
        return dsn.parse_fields(mime.part_text(part))
    blocks = []
    for sub in payload:
        if isinstance(sub, Message):
            blocks.append(mime.fields(sub))
            blocks.extend(dsn.parse_fields(mime.part_text(sub)))
    return blocks


def _pasted(text: str) -> list[Fields]:
    return [{m.group(1).lower(): [html.unescape(_FOLD.sub("", m.group(2))).strip()]} for m in _PASTED.finditer(text)]


def _report_type(msg: Message) -> str:
    if msg.get_content_type() != "multipart/report":
        return ""
    value = msg.get_param("report-type", "")
    return mime.text_of(email.utils.collapse_rfc2231_value(value)).strip().lower()


def _addressed(role: str, token: str | None) -> str:
    return f"addressed to {role}+{token[:6]}…" if token else f"addressed to {role}@"

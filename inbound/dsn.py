"""Delivery status: RFC 3464 per-recipient fields, the explanation of a bounce and the recipients it names.

Pure functions over already-decoded text and field blocks; `inbound/classify` does the MIME walk.
A field block is a dict of lower-case field name -> list of unfolded values, as in a header section.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from inbound import bounce_reason
from inbound.bounce_reason import Failure
from policy import replies

Fields = dict[str, list[str]]

MAX_RECIPIENTS = 100
_FIELD = re.compile(r"([!-9;-~]+)[ \t]*:[ \t]*(.*)")      # RFC 5322 field name, then the value
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_ROUTE = re.compile(r"^(?:@[^:,@\s]+,?)+:")         # RFC 5321 source route: @relay1,@relay2:
# RFC 3464 actions, and what some MTAs write instead (NTMail `failure`, OpenSMTPD `error`)
_ACTIONS = {"failed": "failed", "failure": "failed", "fail": "failed", "error": "failed", "delayed": "delayed",
            "delay": "delayed", "delivered": "delivered", "relayed": "relayed", "expanded": "expanded"}
_RECEIVED_FOR = re.compile(r"\sfor\s+<?([^<>\s;@]+@[^<>\s;]+?)>?\s*(?:;|$)", re.I)

# Where a bounce's own explanation ends and the copy of the returned message begins.
_COPY_MARKER = re.compile(
    r"^[ \t]*-{2,}[ \t]*(?:this is a copy of|below this line is a copy|original message"
    r"|unsent message|forwarded message|the header of the original|message header follows)"
    r"|^[ \t]*(?:the )?first \d+ lines of (?:your |the )?(?:original )?message|^[ \t]*original message follows"
    r"|^[ \t]*(?:your|the) (?:original )?message (?:headers? )?follows", re.I | re.M)
# Lines that name a failed recipient: qmail `<a@b>:`, GMX/1&1 `"a@b":`, OpenSMTPD `a@b: 550 ...`,
# Sendmail's transcript `550 5.1.1 <a@b>... User unknown`.
_RCPT_LINE = re.compile(r'^(?:[<"]([^<>\s@"]+@[^<>\s@"]+)[>"]:[ \t]*$'
                        r'|<?([^<>\s@":]+@[^<>\s@":]+)>?:[ \t]+[45]\d\d[ \t-]'
                        r'|[45]\d\d(?:[ \t]+[45]\.\d{1,3}\.\d{1,3})?[ \t]+<([^<>\s@"]+@[^<>\s@"]+)>\.\.\.[ \t])', re.M)


def parse_fields(text: str, max_blocks: int = 500) -> list[Fields]:
    """Blocks of `Name: value` fields separated by blank lines (continuation lines unfolded)."""
    blocks: list[Fields] = []
    for chunk in re.split(r"\r?\n[ \t]*\r?\n", text):
        if len(blocks) >= max_blocks:
            break
        block: Fields = {}
        for line in _FOLD.sub("", chunk).splitlines():
            m = _FIELD.match(line)
            if m:
                block.setdefault(m.group(1).lower(), []).append(m.group(2).strip())
        if block:
            blocks.append(block)
    return blocks


def address(value: str) -> str:
    """`rfc822; <User@Example.com>` -> `user@example.com`; '' when it holds no Internet address (an X.400
    or other address type, a local name). A source route `<@relay.example:user@host>` gives `user@host`."""
    kind, _, value = value.rpartition(";") if ";" in value else ("rfc822", "", value)
    if kind.strip().lower() not in ("rfc822", "utf-8", ""):
        return ""
    value = _ROUTE.sub("", value.strip().strip("<>").strip()).strip("<>\"'").lower()
    local, at, domain = value.rpartition("@")
    return value if local and at and "." in domain and " " not in value else ""


def status_class(block: Fields) -> str | None:
    """'2', '4' or '5' from Status, else from Diagnostic-Code; None when neither has a code."""
    for name in ("status", "diagnostic-code"):
        for value in block.get(name, ()):
            m = replies.STATUS_FIELD.search(value)
            if m:
                return m.group(1)
    return None


def per_recipient(blocks: Iterable[Fields]) -> list[Fields]:
    """The per-recipient blocks (the per-message block names no recipient, action or status)."""
    keys = ("final-recipient", "original-recipient", "action", "status")
    return [b for b in blocks if any(k in b for k in keys)]


def summarize(blocks: Iterable[Fields], text: str = "") -> tuple[list[Failure], int, tuple[str, ...], str]:
    """(failures, delays, recipients, summary e.g. "failed 5.1.1") from the per-recipient blocks of a DSN.

    Action failed: one Failure each (Original-Recipient, else Final-Recipient; its status from Status, or
    the Diagnostic-Code's of the same class; permanent unless 4.x.x, a full mailbox or a 45x reply). With
    no Diagnostic-Code, the lines of the human-readable part `text` that follow the recipient's mention.
    Action delayed: counted, no Failure. A block without Action takes it from its status class.
    Delivered/relayed/expanded are ignored. Recipients: one per failed or delayed copy (`copy_recipient`).
    """
    blocks = list(blocks)
    everyone = [a for b in blocks for n in ("final-recipient", "original-recipient") for v in b.get(n, ())
                if (a := address(v))]
    failures: list[Failure] = []
    delays = 0
    recipients: list[str] = []
    seen: list[str] = []
    for block in blocks:
        action = _ACTIONS.get((block.get("action") or [""])[0].lower().split("(")[0].strip(), "")
        if not action:
            action = {"5": "failed", "4": "delayed"}.get(status_class(block) or "", "")
        if action not in ("failed", "delayed"):
            continue
        code = replies.STATUS_FIELD.search(" ".join(block.get("status", ())))
        seen.append(f"{action} {code.group(0)}" if code else action)
        rcpt = copy_recipient(block)
        if rcpt and rcpt not in recipients and len(recipients) < MAX_RECIPIENTS:
            recipients.append(rcpt)
        if action == "delayed":
            delays += 1
            continue
        if len(failures) < MAX_RECIPIENTS:
            status_field = " ".join(block.get("status", ()))
            diagnostic = " ".join(d.split(";", 1)[-1] for d in block.get("diagnostic-code", ()))
            if not diagnostic and rcpt:          # the reply as the human-readable part quotes it (OpenSMTPD, ...)
                diagnostic = bounce_reason.window(text, rcpt, everyone)
            if not diagnostic and not replies.STATUS_FIELD.search(status_field):
                diagnostic = status_field        # `Status: 553 Exceeded maximum inbound message size` (NTMail)
            more = "" if diagnostic else f"{status_field}\n{'' if rcpt else text}"
            status = bounce_reason.status_of(status_field, diagnostic)
            failures.append(bounce_reason.failure(rcpt, status, diagnostic, True, more))
    summary = ", ".join(dict.fromkeys(seen)) if seen else "no failed or delayed recipient"
    return failures, delays, tuple(recipients), summary


def copy_recipient(block: Fields) -> str:
    """The address our copy went to: Original-Recipient (the address as the sender gave it, before
    forwarding or aliases) when it is an Internet address, else Final-Recipient; '' when neither is."""
    return next((a for n in ("original-recipient", "final-recipient") for v in block.get(n, ()) if (a := address(v))),
                "")


def explanation(text: str) -> str:
    """The bounce's own text: everything before the copy of the returned message (at most 64 KiB)."""
    m = _COPY_MARKER.search(text, 0, 65536)
    return text[:m.start()] if m else text[:65536]


def returned_recipient(headers: Iterable[Fields]) -> str:
    """The recipient of the returned message, for a bounce that names none: the `for <...>` of its newest
    Received field (the envelope recipient where it failed), else its To when that is one address."""
    for block in headers:
        if not {"received", "message-id", "from"} & block.keys():
            continue                      # a feedback block or a pasted field, not the returned header
        for value in block.get("received", ())[:1]:
            if m := _RECEIVED_FOR.search(value):
                return address(m.group(1))
        to = [a for v in block.get("to", ()) for a in re.findall(r"[^\s<>,;:\"]+@[^\s<>,;:\"]+", v)]
        return address(to[0]) if len(to) == 1 else ""
    return ""


def text_recipients(failed_header: Iterable[str], text: str) -> tuple[str, ...]:
    """X-Failed-Recipients (Exim) and the lines that name a failed recipient (qmail, GMX, OpenSMTPD, Sendmail)."""
    found: list[str] = []
    lines = [next(filter(None, groups)) for groups in _RCPT_LINE.findall(text)]
    candidates = [a for v in failed_header for a in v.split(",")] + lines
    for value in candidates:
        rcpt = address(value)
        if rcpt and rcpt not in found and len(found) < MAX_RECIPIENTS:
            found.append(rcpt)
    return tuple(found)

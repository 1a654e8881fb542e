"""Per-recipient failures of a bounce: enhanced status, permanence and reason of each failed copy.

RFC 3464 reports are read field by field in `inbound/dsn`; for the other formats (Exim, qmail, Yahoo,
Domino, old Exchange, ...) the failed addresses come from flufl.bounce (GNU Mailman's detectors) plus
what it lacks (Exim's X-Failed-Recipients and the recipient lines of qmail, GMX, OpenSMTPD, Sendmail in
`inbound/dsn`; else the one address a bounce's explanation names), and each address's status and
diagnostic from the lines of the bounce's own text that follow its mention. A bounce that names no
address still gives one failure, with recipient "": the token of the bounce address names the copy.

Permanence: 5.x.x permanent, 4.x.x not; a full mailbox (5.2.2, or said so) is soft whatever its class.
Without an enhanced status: the basic reply code (55x / 45x), then what the text says. Reason: from the
status (RFC 3463 subject.detail), else from the diagnostic text, else "other".
"""
from __future__ import annotations

import email
import email.parser
import email.policy
import email.utils
import functools
import logging
import re
from dataclasses import dataclass
from email.message import Message
from collections.abc import Iterable

from policy.bounces import Reason
from policy.replies import FAILURE_REPLY, FAILURE_STATUS, LEADING_REPLY

REASONS = tuple(r.value for r in Reason)
MAX_DIAGNOSTIC = 300
MAX_FAILURES = 100
FLUFL_BYTES = 64 * 1024       # flufl.bounce reads every line many times: give it the start of a bounce only
FLUFL_BOUNDARIES = 100        # more boundaries in that start: its header only (the stdlib parser and flufl's
                              # walk are quadratic in nesting; 1,000 levels held the worker for 0.6-2 s)
WINDOW_LINES = 6              # non-blank lines from an address's mention that may explain its failure
MAX_MENTIONS = 10             # mentions of one address looked at
WINDOW_CHARS = 1000           # of the lines that explain one failure

# flufl.bounce logs a traceback when a detector raises on malformed input; that is caught below.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Failure:
    recipient: str        # lower-case address ("" when only a token identifies the copy)
    status: str           # enhanced status code "5.1.1", "4.2.2", ... ("" when none could be found)
    permanent: bool
    reason: Reason
    diagnostic: str       # the remote reply / diagnostic text, one line, at most 300 chars ("" if none)


_BY_STATUS = {"1.0": Reason.MAILBOX_UNKNOWN, "1.1": Reason.MAILBOX_UNKNOWN, "1.6": Reason.MAILBOX_UNKNOWN,
              "1.2": Reason.DOMAIN_UNKNOWN, "1.10": Reason.DOMAIN_UNKNOWN, "4.4": Reason.DOMAIN_UNKNOWN,
              "2.2": Reason.MAILBOX_FULL, "3.4": Reason.MESSAGE_TOO_LARGE, "2.3": Reason.MESSAGE_TOO_LARGE}
_FULL = (r"over ?quota|quota (?:\w+ )?exceeded|exceed\w* (?:\w+ ){0,3}quota|(?:disk ?space|storage|mailbox) quota"
         r"|(?:mailbox|mail ?folder|maildir|inbox) (?:is )?(?:full|over)|full mailbox|mailbox.{0,20}size limit"
         r"|mailbox exceeds|exceeded (?:its|the) (?:disk|storage|mailbox) (?:space|size)|insufficient (?:system )?storage"
         r"|out of storage|not (?:have )?enough (?:disk |storage )?space|storage space|disk ?quota|overdrawn"
         r"|mailbox (?:space|size) (?:exhausted|exceeded)|casilla .{0,20}(?:llena|agotad)|postfach (?:ist )?voll"
         r"|bo[îi]te (?:aux lettres )?pleine|caixa (?:postal )?(?:cheia|lotada)|ящик переполнен")
# A reply that says the failure is temporary whatever its code: the mailbox may take mail later.
_SOFT = re.compile(_FULL + r"|gr[ae]y ?list|rate limit|too many (?:messages|connections|recipients|emails)|throttl"
                   r"|sending (?:limit|quota)", re.I)
_TEMPORARY_CAUSE = re.compile(r"temp_?failure|temporar(?:y|ily)|timed? ?out|connection (?:dropped|refused|reset|lost|closed)"
                              r"|dropped by remote|(?:not|un)reachable|retry time(?:out)? (?:exceeded|expired)|queue period"
                              r"|\d+ attempts|try (?:again )?later|try again|deferred", re.I)
_FULL_TEXT = re.compile(_FULL, re.I)
_HARD_REASONS = {Reason.MAILBOX_UNKNOWN, Reason.DOMAIN_UNKNOWN, Reason.POLICY}
_BY_TEXT = [(reason, re.compile(pattern, re.I)) for reason, pattern in (
    # a closed mailbox: not unknown, and no block of the sender
    (Reason.OTHER, r"account (?:is |has been )?(?:disabled|suspended|inactive|locked|deactivated|blocked)"
              r"|mailbox (?:is )?(?:disabled|inactive|suspended)|temporar(?:il)?y locked"),
    (Reason.DOMAIN_UNKNOWN, r"host or domain name not found|domain (?:name )?not found|host not found|host unknown"
                       r"|nxdomain|no such domain|domain (?:does not|doesn't) exist|unrouteable (?:address|mail domain)"
                       r"|name service error|null mx|no mx (?:record|host)|host name lookup failure"
                       r"|domain is not reachable"),
    (Reason.MAILBOX_FULL, _FULL),
    (Reason.MESSAGE_TOO_LARGE, r"too (?:large|big)|message size|size limit|size exceeds|exceeds? (?:\S+ ){0,5}size"
                          r"|message length exceeds|maximum (?:message )?size"),
    (Reason.MAILBOX_UNKNOWN, r"user unknown|unknown user|no such (?:user|mailbox|recipient|address)|does(?: not|n't) exist"
                        r"|recipient ?not ?found|unknown recipient|recipient (?:is )?unknown"
                        r"|invalid (?:recipient|mailbox)"
                        r"|mailbox (?:unavailable|not found)|user not found|not listed in|doesn't have an? \S+ account"
                        r"|no mailbox|not a registered|address (?:not found|unknown)|no longer (?:on server|active)"
                        r"|unknown (?:local.part|address)|account (?:does not exist|not found)"
                        r"|recipient address rejected: access denied|name is not recognized|not our (?:user|customer)"
                        r"|address (?:couldn't|could not|can't|cannot) be found"),
    (Reason.POLICY, r"spam|block|blacklist|denylist|policy|dmarc|\bspf\b|\bdkim\b|reputation|unauthenticated|grey ?list"
               r"|gray ?list|\brbl\b|spamhaus|access denied|content rejected|not authori[sz]ed|relay(?:ing)? denied"
               r"|(?:unable to|insecure mail|open) relay|virus|client host rejected|sender (?:address )?rejected"
               r"|\bptr\b|reverse dns|\brdns\b|rate limit|too many (?:recipients|connections|messages)"
               r"|not allowed|forbidden|mismatches client ip|invalid ip|service refused|not accepting connections"))]
# A 5.1.x reply that is about the sending host or address, not the recipient (Cox, GoDaddy, ...).
_ABOUT_THE_SENDER = re.compile(r"sender (?:address )?rejected|in reply to mail from|too many recipients|rate limit"
                               r"|(?:black|block|deny) ?list|spamhaus|blocked using", re.I)
_RECIPIENT_NOT_FOUND = re.compile(r"recipient ?not ?found", re.I)     # Microsoft's 5.1.10: the mailbox, not the domain
_SAYS_PERMANENT = re.compile(r"permanent (?:error|failure)|failed permanently|permanently", re.I)
_SAYS_TEMPORARY = re.compile(r"temporar|retry time|try again later|deferred|timed? ?out|giving up after"
                             r"|could not be delivered for \d+ (?:hours|days)", re.I)
_COPY = re.compile(r"^[ \t]*-{2,}", re.M)
# A pasted header line (the returned message's To, Message-ID, ...): an address there was not reported as failed.
_HEADERISH = re.compile(r"^[ \t>]*(?:to|cc|bcc|from|sender|reply-to|message-id|in-reply-to|references|return-path"
                        r"|delivered-to|envelope-to|received|date|subject)[ \t]*:", re.I)
_SPACE = re.compile(r"\s+")
_ADDRESS = re.compile(r"(?<![\w.+=-])[\w.+=-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")   # linear: starts a token
# Sendmail `a@b\n    (expanded from: c@d)`, Postfix `<a@b> (expanded from <c@d>)`: an alias, c@d was the recipient
_EXPANDED = re.compile(r"<?([\w.+=-]+@[\w.-]+)>?:?\s*\(expanded from:? <?([\w.+=-]+@[\w.-]+)>?\)", re.I)
_SYSTEM = re.compile(r"(?:postmaster|mailer-?daemon|abuse|root|noreply|no-reply)@", re.I)


def status_of(status_field: str, diagnostic: str = "") -> str:
    """The enhanced status: the remote server's own (in the diagnostic) when it has the class of the Status
    field, which reporting MTAs often fill with a generic or translated code; else the Status field's."""
    found = [m for m in (FAILURE_STATUS.search(status_field), FAILURE_STATUS.search(diagnostic)) if m]
    codes = [f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}" for m in found]
    if len(codes) == 2 and codes[0][0] == codes[1][0]:
        return codes[1]
    return codes[0] if codes else ""


def reason_of(status: str, text: str) -> Reason:
    """One of REASONS: by the status's subject.detail (any X.7.X: policy), else by the text."""
    detail = status.partition(".")[2]
    if _FULL_TEXT.search(text) and not detail.startswith("1."):     # a full mailbox whatever the status says
        return Reason.MAILBOX_FULL
    if detail == "7.13":                 # X.7.13 user account disabled: about the mailbox, not a block
        return Reason.OTHER
    if detail.startswith("7.") or (detail.startswith("1.") and _ABOUT_THE_SENDER.search(text)):
        return Reason.POLICY
    by_status = _BY_STATUS.get(detail)
    if detail == "1.10" and _RECIPIENT_NOT_FOUND.search(text):
        return Reason.MAILBOX_UNKNOWN
    if by_status:
        return by_status
    return next((reason for reason, pattern in _BY_TEXT if pattern.search(text)), Reason.OTHER)


def failure(recipient: str, status: str, diagnostic: str, fallback: bool, more_text: str = "") -> Failure:
    """One failed copy; `fallback`: its permanence when neither a status, a reply code nor the reason says."""
    diagnostic = one_line(diagnostic, None)
    text = f"{diagnostic}\n{more_text}" if more_text else diagnostic
    reason = reason_of(status, text)
    reply = FAILURE_REPLY.search(diagnostic)
    codes = (status[:1], reply.group(1)[:1] if reply else "")
    return Failure(recipient, status, permanence(codes, reason, text, fallback), reason, diagnostic[:MAX_DIAGNOSTIC])


def permanence(codes: tuple[str, str], reason: Reason, text: str, fallback: bool) -> bool:
    """Hard or soft, the specific meaning first: a full mailbox, greylisting or a rate limit is soft whatever
    its code; a policy refusal with a 5 code (the status's or the reply's) is hard, and so is an unknown
    mailbox or domain unless the text calls it temporary ("mailbox temporarily unavailable", "host not
    found, try again"); then a temporary cause (time-out, dropped connection, retries exhausted) is soft;
    then the class of the status, else of the reply; then `fallback`, unless the reason is an unknown
    mailbox or domain, which is hard (a report of one is final)."""
    if reason == Reason.MAILBOX_FULL or _SOFT.search(text):
        return False
    temporary = _TEMPORARY_CAUSE.search(text)
    if "5" in codes and (reason == Reason.POLICY or (reason in _HARD_REASONS and not temporary)):
        return True
    code = codes[0] or codes[1]
    if temporary:
        return False
    if code:
        return code == "5"
    return fallback or reason in (Reason.MAILBOX_UNKNOWN, Reason.DOMAIN_UNKNOWN)


def one_line(text: str, limit: int | None = MAX_DIAGNOSTIC) -> str:
    """Whitespace collapsed, a multi-line reply's repeated `550-5.1.1` prefixes dropped, cut to `limit`."""
    text = _SPACE.sub(" ", text).strip()
    m = LEADING_REPLY.match(text)
    if m:
        code, status = m.group(1), m.group(2)
        again = re.compile(rf"\s{code}[- ]{re.escape(status)}(?=\s)" if status else rf"\s{code}-")
        text = f"{code} {status + ' ' if status else ''}" + again.sub("", text[m.end():]).lstrip()
    return text[:limit]


def overall(failures: Iterable[Failure], delayed: int) -> bool | None:
    """Classification.permanent: any failure permanent; False for soft failures or only delays; else None."""
    failures = list(failures)
    if failures:
        return any(f.permanent for f in failures)
    return False if delayed else None


def said_permanence(text: str) -> bool | None:
    """What a bounce's text says in words of its failures: permanent, temporary, or nothing (None)."""
    if _SAYS_PERMANENT.search(text):
        return True
    return False if _SAYS_TEMPORARY.search(text) else None


def window(text: str, address: str, others: Iterable[str] = ()) -> str:
    """The lines that explain an address's failure: from a mention of it, up to the next address listed.

    Of several mentions, the first followed by an enhanced status, else by a reply code, else the first.
    A leading address is left out, and the result starts at the reply when there is one.
    """
    lines, lows, named, coded = _indexed(text)
    others = {o for o in others if o and o != address}
    windows: list[list[int]] = []
    mentions = [i for i, low in enumerate(lows) if address in low]
    for i in ([i for i in mentions if not _HEADERISH.match(lines[i])] or mentions)[:MAX_MENTIONS]:
        taken = [i]
        for j in range(i + 1, min(len(lines), i + 3 * WINDOW_LINES)):
            if _COPY.match(lines[j]) or (address not in lows[j] and named[j] & others) \
                    or (not lows[j].strip() and any(coded[t] for t in taken)):
                break
            taken.append(j)
            if sum(1 for t in taken if lows[t].strip()) >= WINDOW_LINES:
                break
        windows.append(taken)
    if not windows:
        return ""
    chosen = next((w for level in (2, 1) for w in windows if any(coded[t] >= level for t in w)), windows[0])
    start = next((k for k, t in enumerate(chosen) if coded[t]), 0)     # at the reply when there is one
    texts = [lines[t] for t in chosen[start:]]
    head = texts[0].strip().lstrip("<\"")
    if head.lower().startswith(address):          # `<a@b>:`, `a@b: 550 ...`: the address is no diagnostic
        texts = [head[len(address):].lstrip(">\":;, ")] + texts[1:]
    return " ".join(line.strip() for line in texts if line.strip())[:WINDOW_CHARS]


@functools.lru_cache(maxsize=4)
def _indexed(text: str) -> tuple[list[str], list[str], list[set[str]], list[int]]:
    """Per line of a bounce's text (computed once): the line, in lower case, the addresses it names, and
    2 if it has an enhanced status code, 1 a reply code, 0 neither."""
    lines = text.splitlines()
    lows = [line.lower() for line in lines]
    coded = [2 if FAILURE_STATUS.search(line) else 1 if FAILURE_REPLY.search(line) else 0 for line in lines]
    return lines, lows, [set(_ADDRESS.findall(low)) for low in lows], coded


def flufl_failures(msg: Message, raw: bytes) -> tuple[list[str], list[str]]:
    """(temporary, permanent) addresses flufl.bounce reports, lower-case; ([], []) if it fails."""
    try:
        from flufl.bounce import all_failures
        if len(raw) > FLUFL_BYTES:
            head = raw[:FLUFL_BYTES]
            parser = (email.parser.BytesHeaderParser if head.lower().count(b"boundary") > FLUFL_BOUNDARIES
                      else email.parser.BytesParser)
            msg = parser(policy=email.policy.compat32).parsebytes(head)
        temporary, permanent = all_failures(msg)
        return _decoded(temporary), _decoded(permanent)
    except Exception:            # a detector that raises on odd input must not stop classification
        return [], []


def _decoded(found: Iterable[bytes | str]) -> list[str]:
    text = (a.decode("ascii", "replace") if isinstance(a, bytes) else str(a) for a in found)
    return sorted({a.strip().strip("<>").lower() for a in text})


def nonstandard(msg: Message, raw: bytes, listed: tuple[str, ...], head: dict[str, list[str]], text: str,
                subject: str, delay: bool, need_code: bool = False) -> tuple[list[Failure], int, tuple[str, ...]]:
    """(failures, delays, recipients) of a bounce that is not an RFC 3464 report.

    listed: addresses our own detectors found (X-Failed-Recipients, qmail); head: the bounce's header
    fields (its own To addresses are never a failed recipient); text: its explanation; delay: its Subject
    says it is a delay warning. A failure is hard unless its status, its reply or its words say otherwise.
    need_code: only addresses with an enhanced status code near them count (for a message that nothing
    else shows to be a bounce). No address found: one failure with recipient "" (the token names the copy).
    """
    low = text.lower()
    own = set(addresses(v for name in ("to", "envelope-to", "delivered-to") for v in head.get(name, ())))
    temporary, permanent = ([], []) if delay or listed else flufl_failures(msg, raw)
    said = "\n".join(line for line in low.splitlines() if not _HEADERISH.match(line))
    found = sorted((a for a in permanent if a in said), key=said.find)
    candidates = dict.fromkeys(a.lower() for a in [*listed, *found])
    expanded = {m.group(1).lower(): m.group(2).lower() for m in _EXPANDED.finditer(text)}
    candidates = dict.fromkeys(expanded.get(a, a) for a in candidates)     # the address as it was sent to
    valid = [a for a in candidates if "@" in a and not _SPACE.search(a) and a not in own][:MAX_FAILURES]
    if not valid and not need_code:
        valid = _sole_recipient(said, raw, own)
    delayed = [a for a in temporary if a in low and a not in valid and a not in own]
    if delay:
        return [], 1, tuple(valid)
    failures: list[Failure] = []
    words = said_permanence(text)
    fallback = True if words is None else words
    for address in valid:
        near = window(text, address, valid)
        if need_code and not FAILURE_STATUS.search(near):
            continue
        failures.append(failure(address, status_of(near), near, fallback, "" if len(valid) > 1 else subject))
    if not failures and not delayed and not need_code:
        line = next((ln for ln in text.splitlines() if FAILURE_STATUS.search(ln) or FAILURE_REPLY.search(ln)), "")
        failures.append(failure("", status_of(line), line, fallback, f"{text}\n{subject}"))
    recipients = tuple(dict.fromkeys([f.recipient for f in failures if f.recipient] + delayed))
    return failures, len(delayed), recipients


def named(text: str, own: Iterable[str]) -> set[str]:
    """The addresses a bounce's explanation names, but for its own (its To) and mail systems' ones."""
    found = {a.strip(".") for a in _ADDRESS.findall(text.lower())} - set(own)
    return {a for a in found if not _SYSTEM.match(a)}


def _sole_recipient(said: str, raw: bytes, own: set[str]) -> list[str]:
    """Of a bounce no detector understood: the one address its explanation names, unless that is a mail
    system's own or the sender's (the returned message's From, Sender, Reply-To, Return-Path)."""
    named_there = named(said, own)
    if len(named_there) != 1:
        return []
    address = named_there.pop()
    quoted = re.escape(address.encode("utf-8", "replace"))
    sender = re.compile(rb"^[ \t>]*(?:from|sender|reply-to|return-path):.*(?<![\w.+=-])" + quoted
                        + rb"|envelope-from <?" + quoted, re.I | re.M)
    return [] if sender.search(raw) else [address]


def addresses(values: Iterable[str]) -> list[str]:
    """Lower-case addresses of address header values (To, Delivered-To, ...)."""
    try:
        return [a.lower() for _, a in email.utils.getaddresses(list(values)) if "@" in a]
    except Exception:
        return []

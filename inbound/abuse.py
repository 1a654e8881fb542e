"""The abuse and privacy desk: ARF reports, human complaints and privacy requests, from classification to action.

`identify` finds the copy of ours a complaint is about, trying in order:
1. a token (VERP Return-Path or Original-Mail-From, List-Unsubscribe) that verifies and maps to a sent copy;
2. the returned Message-ID among the copies we sent, the recipient picked by Original-Rcpt-To, the
   returned To or the complainant (the tenant alone when the recipient is redacted);
3. the recipient: a hinted address (the same three) that exactly one tenant, or the hinted tenant, mailed;
4. the tenant headers (X-WebSoftTT-Tenant, Feedback-ID) naming an existing tenant: the tenant alone.
`policy/complaints` then decides what the complaint does; people also get a case and an acknowledgement.
"""
from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass
from enum import StrEnum
from email.utils import getaddresses

from inbound import acknowledge, mime
from policy import logs, metrics
from inbound.classify import Classification
from inbound.dsn import Fields
from policy import cases, complaints, outbox, sent, tenants
from policy.settings import Settings
from policy.store import Store
from policy.addresses import mask
from policy.tokens import TokenKeys

MAX_HEADER = 256 * 1024


class By(StrEnum):
    """How a complaint was tied to a copy of ours (the order `identify` tries); stored with the complaint."""
    TOKEN = "token"
    MESSAGE_ID = "message_id"
    RECIPIENT = "recipient"
    HEADER = "header"


@dataclass(frozen=True)
class Identified:
    tenant: str
    recipient: str | None        # None: the recipient was redacted and several copies match
    token: str | None            # the copy's token: one complaint per copy
    by: By


def identify(store: Store, keys: TokenKeys, found: Classification, complainant: str = "") -> Identified | None:
    report = found.report
    if report is None:
        return None
    hints = [*report.recipients, complainant.lower()]
    copies = [c for c in (sent.lookup(store, t) for t in found.tokens if keys.verify(t)) if c]
    if copies:
        copy = _pick(copies, hints) or copies[0]
        return Identified(copy.tenant, copy.recipient, copy.token, By.TOKEN)
    copies = sent.by_message_ids(store, report.message_ids)
    if copies:
        picked = _pick(copies, hints)
        if picked:
            return Identified(picked.tenant, picked.recipient, picked.token, By.MESSAGE_ID)
        if len({c.tenant for c in copies}) == 1:
            return Identified(copies[0].tenant, None, None, By.MESSAGE_ID)
    for hint in filter(None, hints):
        mailed = sent.tenants_that_mailed(store, hint)
        mailed = [t for t in mailed if t in report.tenants] if report.tenants else mailed
        if len(mailed) == 1:
            return Identified(mailed[0], hint, None, By.RECIPIENT)
    known = next((t for t in report.tenants if tenants.get(store, t)), None)
    return Identified(known, None, None, By.HEADER) if known else None


def _pick(copies: list[sent.SentCopy], hints: list[str]) -> sent.SentCopy | None:
    """The copy whose recipient a hint names, else the only one."""
    match = next((c for hint in hints for c in copies if c.recipient == hint), None)
    return match or (copies[0] if len({c.recipient for c in copies}) == 1 else None)


class Desk:
    def __init__(self, store: Store, keys: TokenKeys, settings: Settings):
        self.store, self.keys, self.settings = store, keys, settings

    def feedback_report(self, inbound_id: str, found: Classification) -> str:
        """An ARF report: a complaint against the copy it identifies; reporters are never acknowledged."""
        report = found.report
        feedback_type = (report.feedback_type if report else "") or "unknown"
        who = identify(self.store, self.keys, found)
        if who is None or report is None:         # no report: identify found no copy either
            return f"feedback report ({feedback_type}): no copy of ours identified, recorded only"
        details = complaints.Details(report.user_agent, report.source_ip, report.reported_domain, report.arrival_date)
        return self._complaint(who, feedback_type, inbound_id, None, details)

    def _complaint(self, who: Identified, feedback_type: str, inbound_id: str, case_id: str | None,
                   details: complaints.Details = complaints.Details()) -> str:
        new, done = complaints.record(self.store, self.settings.policy, who.tenant, who.recipient, feedback_type,
                                      who.by, who.token, f"inbound {inbound_id}", case_id, details)
        if new:
            metrics.complaints.labels(who.tenant, feedback_type).inc()
            logs.event("complaint", tenant=who.tenant, recipient=who.recipient, feedback_type=feedback_type,
                       identified_by=who.by, case=case_id, inbound_id=inbound_id)
        return done

    def case(self, inbound_id: str, raw: bytes, envelope_sender: str, found: Classification) -> str:
        """A person wrote to the abuse or privacy address: open a case, act on a complaint, acknowledge."""
        kind = "abuse" if found.kind == "human_complaint" else "privacy"
        if opened := cases.for_inbound(self.store, inbound_id):
            return f"{kind} case {opened} was opened for this message before a restart: nothing more done"
        head = mime.fields(email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw[:MAX_HEADER]))
        subject = mime.decode_words(mime.first(head, "subject"))
        if (existing := cases.quoted(self.store, subject)) is not None:      # "keep the case id in the subject"
            reopened = cases.replied(self.store, existing, inbound_id)
            return f"reply to case {existing}: added to its history" + (", the case reopened" if reopened else "")
        pairs = getaddresses(head.get("from", [])[:1])
        complainant = (pairs[0][1] if pairs and "@" in pairs[0][1] else envelope_sender).strip().lower()
        who = identify(self.store, self.keys, found, complainant) if kind == "abuse" else None
        found_what = (f"identified by {who.by}: tenant {who.tenant}, recipient "
                      f"{mask(who.recipient) if who.recipient else 'unknown'}") if who else "no copy of ours identified"
        case_id = cases.open_case(self.store, kind, complainant, subject,
                                  f"{found.evidence}; {found_what}", inbound_id, who.tenant if who else None,
                                  who.recipient if who else None)
        done = [f"{kind} case {case_id} opened ({found_what})"]
        if who:
            done.append(self._complaint(who, "abuse", inbound_id, case_id))
        done.append(self._acknowledge(kind, case_id, head, envelope_sender))
        return "; ".join(done)

    def _acknowledge(self, kind: str, case_id: str, head: Fields, envelope_sender: str) -> str:
        provider, interval = self.settings.provider, self.settings.policy.ack_interval
        why = acknowledge.refusal(head, envelope_sender, provider)
        to = envelope_sender.strip().strip("<>").lower()     # RFC 3834 §4: reply to the envelope sender
        if why is None and self.store.hit(f"ack:{to}", interval) > 1:
            why = "already acknowledged within policy.ack_interval"
        if why:
            return f"not acknowledged: {why}"
        outbox.put(self.store, self.settings.node.name, to, acknowledge.compose(provider, kind, case_id, to, head, interval))
        cases.acknowledged(self.store, case_id)
        return "acknowledgement queued"

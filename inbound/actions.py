"""What the inbound side does about a classified message: one place decides, the mailbox records it.

Unsubscribe replies suppress the token's recipient for the token's tenant. A reply to the plain
unsubscribe@ address is matched by In-Reply-To/References to a sent copy; failing that, its From is
suppressed for the tenants that mailed it, but only when the reply's DKIM signature verifies for the
From domain (otherwise anyone could unsubscribe anyone). Bounces go to the shared bounce rules
(policy/bounces); ARF reports, human complaints and privacy requests to the desk (inbound/abuse);
auto-replies and anything else are recorded only.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from email.utils import getaddresses

import dkim

from inbound.abuse import Desk
from inbound.addresses import Role
from inbound.classify import Classification
from policy import bounces, optout, sent
from policy.settings import Settings
from policy.addresses import mask
from policy.store import Store
from policy.tokens import TokenKeys

log = logging.getLogger("websofttt.inbound")

DnsFunc = Callable[..., bytes | None]
_FROM = re.compile(rb"^From:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.I | re.M)


class Actions:
    def __init__(self, store: Store, keys: TokenKeys, settings: Settings, dnsfunc: DnsFunc | None = None):
        self.store, self.keys, self.rules = store, keys, settings.policy
        self.desk = Desk(store, keys, settings)
        self.dnsfunc = dnsfunc          # None: dkimpy's own DNS lookups; tests inject a resolver

    def act(self, inbound_id: str, raw: bytes, mail_from: str, roles: list[Role], found: Classification) -> str:
        """The action taken, as recorded in the mailbox row."""
        if found.kind == "bounce":
            return self._bounce(roles, found, f"inbound {inbound_id}")
        if found.kind == "complaint":
            return self.desk.feedback_report(inbound_id, found)
        if found.kind in ("human_complaint", "privacy_request"):
            return self.desk.case(inbound_id, raw, mail_from, found)
        if found.kind != "unsubscribe":
            return "recorded"
        tokens = [r.token for r in roles if r.kind == "unsubscribe" and r.token]
        source = f"inbound {inbound_id}"
        if tokens:
            return "; ".join(self._by_token(token, source) for token in tokens)
        return self._by_reply(raw, found, source)

    def _bounce(self, roles: list[Role], found: Classification, source: str) -> str:
        """The VERP token names the copy (tenant and recipient) even when the report cannot be parsed;
        without one, tokens in the returned headers or, for each failed address, a copy sent to it."""
        if not found.failures:
            return "delay warning or unparseable report: recorded, nothing suppressed"
        tokens = [r.token for r in roles if r.kind == "bounce" and r.token] + list(found.tokens)
        copies = [c for c in (sent.lookup(self.store, t) for t in tokens if self.keys.verify(t)) if c]
        done = []
        for failure in found.failures:
            copy = self._copy_for(failure, copies)
            if copy is None:
                done.append(f"{mask(failure.recipient)}: no copy was sent there, not acted on")
                continue
            action = bounces.record(self.store, self.rules, copy.tenant, copy.recipient, failure.status,
                                    failure.permanent, failure.reason, source)
            done.append(f"{mask(copy.recipient)} ({copy.tenant}): {action}")
        return "; ".join(done)

    def _copy_for(self, failure, copies: list[sent.SentCopy]) -> sent.SentCopy | None:
        """The copy a failure is about: the token's, else the latest copy sent to the failed address."""
        if len(copies) == 1 or (copies and not failure.recipient):
            return copies[0]
        match = next((c for c in copies if c.recipient == failure.recipient), None)
        return match or (sent.latest_to(self.store, failure.recipient) if failure.recipient else None)

    def _by_token(self, token: str, source: str) -> str:
        done = optout.by_token(self.store, self.keys, token, source)
        if done is None:
            log.warning("unsubscribe with a forged, altered or unknown token rejected (%s)", source)
            return "token rejected: not issued by this provider or expired"
        return f"unsubscribed {mask(done.recipient)} from tenant {done.tenant}"

    def _by_reply(self, raw: bytes, found: Classification, source: str) -> str:
        sender = _from_address(raw)
        copies = sent.by_message_ids(self.store, found.message_ids)
        matched = [c for c in copies if c.recipient == sender] or (copies if len(copies) == 1 else [])
        if matched:
            for copy in matched:
                optout.unsubscribe(self.store, copy.tenant, copy.recipient, source, copy.queue_id)
            return "; ".join(f"unsubscribed {mask(c.recipient)} from tenant {c.tenant} (In-Reply-To)" for c in matched)
        if not sender:
            return "no From address and no matching copy: not acted on"
        tenants = sent.tenants_that_mailed(self.store, sender)
        if not tenants:
            return "no copy was sent to the sender: not acted on"
        if not self._dkim_verified(raw, sender.rpartition("@")[2]):
            return "unverified (no valid DKIM signature for the From domain), not acted on"
        for tenant in tenants:
            optout.unsubscribe(self.store, tenant, sender, source)
        return f"unsubscribed {mask(sender)} from tenants {', '.join(tenants)} (DKIM-verified From)"

    def _dkim_verified(self, raw: bytes, from_domain: str) -> bool:
        """True when one DKIM signature verifies with d= the From domain or a parent of it (relaxed alignment)."""
        count = len(re.findall(rb"^DKIM-Signature:", raw.split(b"\r\n\r\n", 1)[0], re.I | re.M))
        for index in range(count):
            checker = dkim.DKIM(raw)
            try:
                kwargs = {"dnsfunc": self.dnsfunc} if self.dnsfunc else {}
                ok = checker.verify(idx=index, **kwargs)
            except Exception:   # dkimpy raises on malformed signatures and DNS failures alike
                continue
            domain = (checker.domain or b"").decode("ascii", "replace").lower()
            if ok and (from_domain == domain or from_domain.endswith("." + domain)):
                return True
        return False


def _from_address(raw: bytes) -> str:
    m = _FROM.search(raw.split(b"\r\n\r\n", 1)[0])
    if not m:
        return ""
    pairs = getaddresses([m.group(1).decode("utf-8", "replace")])
    return pairs[0][1].strip().lower() if pairs and "@" in pairs[0][1] else ""

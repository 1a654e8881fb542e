"""`websofttt inbound classify FILE...`: what the listener would conclude, without acting on it."""
from __future__ import annotations

import re

from inbound.abuse import identify
from inbound.addresses import Role, classify_rcpt
from inbound.classify import classify
from policy import sent
from policy.settings import Provider
from policy.store import Store
from policy.tokens import TokenKeys

# headers that name the envelope recipient once a message sits in a file
_ENVELOPE = re.compile(rb"^(?:Delivered-To|X-Original-To|Envelope-To|To|Cc):[ \t]*(.*(?:\r?\n[ \t].*)*)", re.I | re.M)
_ADDRESS = re.compile(rb"[A-Za-z0-9._%+!-]+@[A-Za-z0-9.-]+")


def roles_from_headers(raw: bytes, provider: Provider) -> list[Role]:
    header = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]
    found = []
    for value in _ENVELOPE.findall(header):
        for address in _ADDRESS.findall(value):
            role = classify_rcpt(address.decode("ascii", "replace"), provider)
            if isinstance(role, Role) and role not in found:
                found.append(role)
    return found


def describe(raw: bytes, provider: Provider, store: Store, keys: TokenKeys, file: str) -> dict:
    """What `inbound classify` prints (kind, evidence, identified tenant and recipient); the store is only
    read, to tell which tenant a token or complaint points to."""
    roles = roles_from_headers(raw, provider)
    found = classify(raw, [r.kind for r in roles], [r.token for r in roles])
    copy = next((c for c in (sent.lookup(store, t) for t in found.tokens if keys.verify(t)) if c), None)
    recipients = list(found.recipients)
    if found.kind == "bounce" and copy is not None:
        recipients = [copy.recipient]           # the token names the copy, whatever the report says
    reason = found.failures[0].reason if found.failures else None
    tenant = copy.tenant if copy else None
    if found.kind in ("complaint", "human_complaint"):
        who = identify(store, keys, found)
        tenant = who.tenant if who else None
    return {"kind": found.kind, "permanent": found.permanent, "recipients": recipients, "tenant": tenant,
            "reason": reason, "evidence": found.evidence, "file": file}

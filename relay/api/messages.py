"""POST /v1/messages: sending over HTTP, on the same path as SMTP (relay/intake.py), not beside it.

The body is either a raw message, `{"envelope": {"from", "to": [...]}, "raw": "<base64>"}`, or a structured
one (`from`, `to`, `cc`, `bcc`, `reply_to`, `subject`, `text`, `html`, `headers`, `attachments`) that is
built with the standard library's EmailMessage. Then the intake decides exactly as for an SMTP session:
the sender (MAIL), each recipient (RCPT), the headers and the durable spool (DATA); its SMTP replies are
mapped to statuses here and nowhere else. 202 comes only once the message is durable, as the 250 does.
"""
from __future__ import annotations

import base64
import binascii
import email.errors
import email.policy
import email.utils
import json
import re
from email.message import EmailMessage

from aiohttp import web

from policy import idempotency
from relay.api.common import INTAKE, ApiError, json_body, key_of, store_of
from relay.intake import shown

_RESERVED = {"from", "to", "cc", "bcc", "reply-to", "subject", "content-type", "content-transfer-encoding",
             "mime-version", "received"}
_NAME = re.compile(r"[!-9;-~]{1,76}")         # a header field name (RFC 5322 §3.6.8), bounded


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/messages", send)


async def send(request: web.Request) -> web.Response:
    key, store = key_of(request, write=True), store_of(request)
    idem = request.headers.get("Idempotency-Key", "").strip()[:200]
    if idem:
        first = await store.call(idempotency.claim, store, key.tenant, idem)
        if isinstance(first, str):
            raise ApiError(409, "in_progress", "a request with this Idempotency-Key is being processed; retry later")
        if first is not None:
            status, body = first
            return web.json_response(text=body, status=status, headers={"Idempotent-Replayed": "true"})
    try:
        answer = await _send(request, key.tenant, key.name)
    except BaseException:
        if idem:
            await store.call(idempotency.release, store, key.tenant, idem)
        raise
    if idem:
        await store.call(idempotency.keep, store, key.tenant, idem, 202, answer)
    return web.json_response(text=answer, status=202)


async def _send(request: web.Request, tenant_id: str, key_name: str) -> str:
    """The intake's decisions in SMTP's order; the 202 body once queued, else an ApiError."""
    intake = request.config_dict[INTAKE]
    mail_from, recipients, raw = _message(await json_body(request))
    limit = intake.settings.submission.max_message_size
    if len(raw) > limit:
        raise ApiError(413, "too_large", f"the message is {len(raw)} bytes; the maximum is {limit}")
    tenant, reply = await intake.sender(tenant_id)
    if tenant is None:
        status, headers = (429, {"Retry-After": "60"}) if reply.startswith("4") else (403, {})
        raise ApiError(status, "refused", reply, headers)
    accepted: list[str] = []
    results = [{"address": r, "reply": await intake.recipient(tenant.id, r, accepted)} for r in recipients]
    for r in results:
        r["status"] = "queued" if r["reply"].startswith("250") else "refused"
    if not accepted:
        raise ApiError(422, "no_recipient", "no recipient was accepted: "
                       + "; ".join(f"{r['address']}: {r['reply']}" for r in results))
    client = request.remote or "unknown"
    reply = await intake.queue(tenant, mail_from, accepted, raw, lambda queue_id, now: (
        f"Received: from api ([{shown(client)}])\r\n\tby {intake.settings.provider.hostname} (WebSoftTT Relay) "
        f"with HTTP id {queue_id}\r\n\t(tenant {tenant.id}; API key {key_name}); {now}\r\n"), client,
        smtputf8=not (mail_from + "".join(accepted)).isascii(), eightbit=any(b > 127 for b in raw))
    if reply.startswith("4"):
        raise ApiError(503, "try_again", reply, {"Retry-After": "60"})
    if not reply.startswith("250"):
        raise ApiError(422, "refused", reply)
    return json.dumps({"queue_id": reply.split()[-1], "recipients": results})


def _message(body: dict) -> tuple[str, list[str], bytes]:
    """(envelope sender, recipients, the RFC 5322 bytes) of either form."""
    if "raw" in body:
        envelope = body.get("envelope")
        if not isinstance(envelope, dict) or not isinstance(envelope.get("from"), str) or not _strings(envelope.get("to")):
            raise ApiError(422, "bad_envelope", 'a raw message needs "envelope": {"from": "...", "to": ["..."]}')
        try:
            raw = base64.b64decode(body["raw"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise ApiError(400, "bad_raw", '"raw" must be the message in base64') from None
        return envelope["from"], list(envelope["to"]), raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return _structured(body)


def _strings(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _structured(body: dict) -> tuple[str, list[str], bytes]:
    sender = body.get("from")
    if not isinstance(sender, str) or not email.utils.parseaddr(sender)[1]:
        raise ApiError(422, "bad_from", '"from" must be an address such as "App <app@example.com>"')
    lists = {}
    for field in ("to", "cc", "bcc"):
        value = body.get(field, [])
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ApiError(422, f"bad_{field}", f'"{field}" must be an address or a list of addresses')
        lists[field] = value
    if not lists["to"] + lists["cc"] + lists["bcc"]:
        raise ApiError(422, "no_recipient", 'give at least one address in "to", "cc" or "bcc"')
    msg = EmailMessage(policy=email.policy.SMTP)
    try:
        msg["From"] = sender
        for field, header in (("to", "To"), ("cc", "Cc")):
            if lists[field]:
                msg[header] = ", ".join(lists[field])
        if body.get("reply_to"):
            msg["Reply-To"] = body["reply_to"]
        msg["Subject"] = body.get("subject", "")
        headers = body.get("headers") or {}
        if not isinstance(headers, dict):
            raise ApiError(422, "bad_header", '"headers" must be an object of names and values')
        for name, value in headers.items():
            if (name.lower() in _RESERVED or not _NAME.fullmatch(name) or not isinstance(value, str)
                    or "\r" in value or "\n" in value):
                raise ApiError(422, "bad_header", f"header {name[:60]!r} cannot be set here")
            msg[name] = value
        _content(msg, body)
    except (TypeError, ValueError, AttributeError, IndexError, email.errors.MessageError) as e:
        raise ApiError(422, "bad_message", f"the message cannot be built: {e}") from None
    recipients = [email.utils.parseaddr(a)[1] for a in lists["to"] + lists["cc"] + lists["bcc"]]
    return email.utils.parseaddr(sender)[1], recipients, msg.as_bytes()


def _content(msg: EmailMessage, body: dict) -> None:
    """The text and HTML alternatives, then the attachments."""
    text, html = body.get("text"), body.get("html")
    if text is None and html is None:
        raise ApiError(422, "no_content", 'give "text", "html" or both')
    msg.set_content(text if text is not None else "")
    if html is not None:
        msg.add_alternative(html, subtype="html") if text is not None else msg.set_content(html, subtype="html")
    for item in body.get("attachments") or []:
        if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
            raise ApiError(422, "bad_attachment", 'an attachment is {"filename", "content_type", "content": "<base64>"}')
        try:
            data = base64.b64decode(item.get("content", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise ApiError(400, "bad_attachment", f"attachment {item['filename'][:60]!r}: content must be base64") from None
        maintype, _, subtype = str(item.get("content_type", "application/octet-stream")).partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream", filename=item["filename"])
